//! Acceptance D: every `/v1` endpoint answers a fixed input exactly as its
//! golden file says. The input (tests/fixtures/golden/trades.csv) is laid
//! out as two real Iceberg commits with Kafka offsets plus an uncommitted
//! tail that overlaps the last commit (setup.json); requests.json lists the
//! requests, expected/<name>.json the status and body of each. The first
//! commit lands on the trades table as a build before `instrument` made it;
//! the table then gains the column by schema evolution, so its rows read
//! `instrument` null while the later rows carry theirs. Two exchanges
//! (BINANCE and COINBASE) trade one instrument (BTC-USDT).
//!
//! Runs in-process on the real catalog, Parquet files, tail actor, query
//! actor and actix-web app; no network. Regenerate the expected files with
//! `TICKLAKE_UPDATE_GOLDEN=1 cargo test --test api_golden` and review the diff.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::Actor;
use actix_web::App;
use actix_web::test as web_test;
use serde_json::{Value, json};
use ticklake::actors::query::QueryActor;
use ticklake::actors::tail::TailActor;
use ticklake::api::{self, ApiState};
use ticklake::config::Config;
use ticklake::lake::commit::{self, KafkaOffsets};
use ticklake::lake::{self, TableKind};
use ticklake::messages::tail::{TailRow, Tailed};
use ticklake::model::{AssetClass, Dec8, Side, TradeV2};

const TOPIC: &str = "golden.trades";
const CLUSTER: &str = "golden-cluster";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

fn micros(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_micros()
}

struct Input {
    partition: i32,
    offset: i64,
    trade: TradeV2,
}

/// The trades table's schema before `instrument`: what the first commit
/// lands under.
fn schema_before_instrument() -> iceberg::spec::Schema {
    lake::schema::trades_schema_v1().unwrap()
}

fn read_input() -> Vec<Input> {
    let text = std::fs::read_to_string(golden_dir().join("trades.csv")).unwrap();
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    assert_eq!(
        lines.next(),
        Some("partition,offset,symbol,exchange,timestamp,price,quantity,side,trade_id,instrument")
    );
    lines
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            assert_eq!(c.len(), 10, "{l}");
            let (exchange, symbol, trade_id) = (c[3], c[2], c[8]);
            // Empty: a trade without instrument (stored before it existed).
            let instrument = Some(c[9]).filter(|i| !i.is_empty());
            let equity = exchange == "ASX";
            let ts = micros(c[4]);
            Input {
                partition: c[0].parse().unwrap(),
                offset: c[1].parse().unwrap(),
                trade: TradeV2::builder(exchange, symbol, trade_id, ts)
                    .trade_id(trade_id)
                    .asset_class(if equity {
                        AssetClass::Equities
                    } else {
                        AssetClass::Crypto
                    })
                    .price(Dec8::parse(c[5]).unwrap())
                    .quantity(Dec8::parse(c[6]).unwrap())
                    .currency(if equity { "AUD" } else { "USDT" })
                    .side(match c[7] {
                        "BUY" => Side::Buy,
                        "SELL" => Side::Sell,
                        _ => Side::Unknown,
                    })
                    .source_sequence(trade_id.rsplit('-').next().and_then(|s| s.parse().ok()))
                    .instrument(instrument)
                    .build(),
            }
        })
        .collect()
}

fn partition_map(v: &Value) -> BTreeMap<i32, i64> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v.as_i64().unwrap()))
        .collect()
}

/// Snapshot ids are random: each becomes `<snapshot:N>` (N = commit order)
/// or `<snapshot:evolved>` (the one schema evolution may commit), and
/// commit times become a placeholder.
fn normalize(v: &mut Value, snapshots: &[i64], evolved: Option<i64>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "committed_at" && x.is_string() {
                    *x = json!("<committed_at>");
                } else if k.ends_with("snapshot_id")
                    && let Some(id) = x.as_i64()
                {
                    *x = match snapshots.iter().position(|s| *s == id) {
                        Some(i) => json!(format!("<snapshot:{i}>")),
                        None if evolved == Some(id) => json!("<snapshot:evolved>"),
                        None => json!("<unknown snapshot>"),
                    };
                } else {
                    normalize(x, snapshots, evolved);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| normalize(x, snapshots, evolved)),
        _ => {}
    }
}

#[test]
fn every_endpoint_matches_its_golden_file() {
    let setup: Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("setup.json")).unwrap())
            .unwrap();
    let requests: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("requests.json")).unwrap())
            .unwrap();
    let input = read_input();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    cfg.feeds.clear();
    cfg.http.enabled = false;
    let update = std::env::var("TICKLAKE_UPDATE_GOLDEN").is_ok_and(|v| v == "1");

    let sys = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    });
    let failures = sys.block_on(async move {
        // The lake: one commit per entry of setup.commits, each with the
        // rows below its offsets and the offsets in its snapshot summary.
        // The first on the table as a build before instrument made it, the
        // others after this build opened (and so evolved) it.
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        let ident = lake::table_ident(&cfg, TableKind::Trades);
        let old = lake::ensure(
            catalog.as_ref(),
            &ident,
            schema_before_instrument(),
            lake::schema::trades_partition_spec().unwrap(),
        )
        .await
        .unwrap();
        let mut schema = lake::batch::arrow_schema(old.metadata().current_schema()).unwrap();
        assert!(schema.index_of("instrument").is_err());
        let mut snapshots = Vec::new();
        // The snapshot the schema update may commit (carrying the offsets
        // unchanged, no rows), when it does.
        let mut evolved = None;
        let mut below: BTreeMap<i32, i64> = BTreeMap::new();
        for (n, c) in setup["commits"].as_array().unwrap().iter().enumerate() {
            if n == 1 {
                let table = lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
                    .await
                    .unwrap();
                schema = lake::batch::arrow_schema(table.metadata().current_schema()).unwrap();
                assert!(schema.index_of("instrument").is_ok(), "the table evolved");
                evolved = table
                    .metadata()
                    .current_snapshot()
                    .map(|s| s.snapshot_id())
                    .filter(|id| !snapshots.contains(id));
            }
            let upto = partition_map(c);
            let rows: Vec<TradeV2> = input
                .iter()
                .filter(|r| {
                    r.offset >= below.get(&r.partition).copied().unwrap_or(0)
                        && r.offset < upto.get(&r.partition).copied().unwrap_or(0)
                })
                .map(|r| r.trade.clone())
                .collect();
            if n == 0 {
                assert!(
                    rows.iter().all(|t| t.instrument.is_none()),
                    "the first commit's rows predate instrument: leave it empty in trades.csv"
                );
            }
            let mut offsets = KafkaOffsets {
                cluster_id: CLUSTER.into(),
                topics: BTreeMap::new(),
            };
            for (p, o) in &upto {
                offsets.set(TOPIC, *p, *o);
            }
            let batch = lake::batch::trades_batch(&schema, &rows).unwrap();
            let done = commit::append(catalog.as_ref(), &ident, Some(&batch), &offsets, 1 << 27)
                .await
                .unwrap();
            snapshots.push(done.snapshot_id);
            below = upto;
        }
        // The tail: every row from tail_from on, overlapping the last commit.
        let from = partition_map(&setup["tail_from"]);
        let view = ticklake::query::tail::TailView::default();
        let tail = TailActor::new(CLUSTER, 10_000, schema.clone(), view.clone()).start();
        let tail_rows: Vec<TailRow> = input
            .iter()
            .filter(|r| r.offset >= from[&r.partition])
            .map(|r| TailRow {
                topic: Arc::from(TOPIC),
                partition: r.partition,
                offset: r.offset,
                trade: std::sync::Arc::new(r.trade.clone()),
            })
            .collect();
        tail.send(Tailed::Rows(tail_rows)).await.unwrap();

        let now = micros(setup["now"].as_str().unwrap());
        let engine = ticklake::query::session::engine(&cfg, Some(view))
            .await
            .unwrap()
            .with_clock(Arc::new(move || now));
        let engine = Arc::new(engine);

        // Filters reach the lake side of trades_live: Iceberg plans the
        // files with them (partition and file pruning) and the Parquet scan
        // gets them as its predicate (row-group and page pruning, filtering
        // inside the reader).
        let explain = engine
            .context()
            .sql(
                "explain select trade_id from market.trades_live \
                 where symbol = 'BTCUSDT' and exchange = 'BINANCE' \
                 and \"timestamp\" >= '2021-04-04T20:03:00Z'",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let plan = arrow::util::pretty::pretty_format_batches(&explain)
            .unwrap()
            .to_string();
        let scan = plan
            .lines()
            .find(|l| l.contains("file_type=parquet"))
            .unwrap_or_else(|| panic!("no parquet scan in\n{plan}"));
        for needle in [
            "symbol@2 = BTCUSDT",
            "exchange@3 = BINANCE",
            "timestamp@5 >= 1617566580000000",
            "pruning_predicate=",
        ] {
            assert!(scan.contains(needle), "{needle} not pushed down: {scan}");
        }

        let query = QueryActor::new(engine.clone()).start();
        let state = ApiState {
            query: query.recipient(),
        };
        let app = web_test::init_service(App::new().configure(|c| api::configure(c, state))).await;

        // Independent of the golden files: the hybrid table holds every
        // input row exactly once.
        let req = web_test::TestRequest::post()
            .uri("/v1/sql")
            .set_json(json!({"sql": "select message_id from market.trades_live"}))
            .to_request();
        let body: Value = web_test::call_and_read_body_json(&app, req).await;
        let mut got: Vec<&str> = body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["message_id"].as_str().unwrap())
            .collect();
        got.sort();
        let mut want: Vec<&str> = input.iter().map(|r| r.trade.message_id.as_str()).collect();
        want.sort();
        assert_eq!(got, want, "trades_live must hold each input row once");

        // And each row's instrument, through SQL over both tables: null on
        // the rows committed before the column, the input's on the others.
        let want: BTreeMap<&str, Option<&str>> = input
            .iter()
            .map(|r| (r.trade.message_id.as_str(), r.trade.instrument.as_deref()))
            .collect();
        assert!(want.values().any(Option::is_none) && want.values().any(Option::is_some));
        for table in ["market.trades_live", "market.trades"] {
            let req = web_test::TestRequest::post()
                .uri("/v1/sql")
                .set_json(json!({"sql": format!("select message_id, instrument from {table}")}))
                .to_request();
            let body: Value = web_test::call_and_read_body_json(&app, req).await;
            let rows = body["rows"].as_array().unwrap();
            assert!(!rows.is_empty(), "{table}: {body}");
            for r in rows {
                let id = r["message_id"].as_str().unwrap();
                assert_eq!(r["instrument"].as_str(), want[id], "{table}, {id}");
            }
        }

        let openapi: Value = web_test::call_and_read_body_json(
            &app,
            web_test::TestRequest::get()
                .uri("/openapi.json")
                .to_request(),
        )
        .await;

        let mut failures = Vec::new();
        let mut next_cursor = String::new();
        for r in &requests {
            let name = r["name"].as_str().unwrap();
            let mut path = r["path"].as_str().unwrap().to_string();
            path = path.replace("{next_cursor}", &next_cursor);
            for (i, s) in snapshots.iter().enumerate() {
                path = path.replace(&format!("{{snapshot:{i}}}"), &s.to_string());
            }
            let method = r["method"].as_str().unwrap_or("GET");
            let req = match method {
                "POST" => web_test::TestRequest::post()
                    .uri(&path)
                    .set_json(r["body"].clone())
                    .to_request(),
                _ => web_test::TestRequest::get().uri(&path).to_request(),
            };
            let resp = web_test::call_service(&app, req).await;
            let status = resp.status().as_u16();
            let bytes = web_test::read_body(resp).await;
            let mut body: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {bytes:?}"));
            if let Some(c) = body.get("next_cursor").and_then(Value::as_str) {
                next_cursor = c.to_string();
            }
            if status >= 400 {
                // Every error is {error, detail}.
                assert!(
                    body["error"].is_string() && body["detail"].is_string(),
                    "{name}: {body}"
                );
            }
            let documented = path.split('?').next().unwrap();
            if !name.starts_with("error_unknown") {
                assert!(
                    openapi["paths"][documented].is_object(),
                    "{documented} is not in /openapi.json"
                );
            }
            normalize(&mut body, &snapshots, evolved);
            let actual = json!({
                "request": {"method": method, "path": r["path"], "body": r.get("body")},
                "status": status,
                "body": body,
            });
            let file = golden_dir().join("expected").join(format!("{name}.json"));
            let rendered = serde_json::to_string_pretty(&actual).unwrap() + "\n";
            if update {
                std::fs::write(&file, &rendered).unwrap();
                continue;
            }
            match std::fs::read_to_string(&file) {
                Ok(expected) => {
                    let expected: Value = serde_json::from_str(&expected).unwrap();
                    if expected != actual {
                        failures.push(format!(
                            "{name}: expected\n{}\ngot\n{rendered}",
                            serde_json::to_string_pretty(&expected).unwrap()
                        ));
                    }
                }
                Err(e) => {
                    failures.push(format!("{name}: {} ({e})\ngot\n{rendered}", file.display()))
                }
            }
        }
        // The OHLCV answers again from the minute bars (`market.ohlcv_1m`):
        // first with bars of the first commit only, so the later commits'
        // rows and the tail are summarized at query time and merged with
        // them; then with every commit summarized. Either way the answers
        // must be the golden ones, computed from the raw trades.
        let bars_ident = lake::bars_ident(&cfg);
        lake::bars::ensure_table(catalog.as_ref(), &cfg)
            .await
            .unwrap();
        let first_seq = catalog
            .load_table(&ident)
            .await
            .unwrap()
            .metadata()
            .snapshot_by_id(snapshots[0])
            .unwrap()
            .sequence_number();
        for (phase, upto) in [
            ("bars of the first commit", Some(first_seq)),
            ("bars of every commit", None),
        ] {
            let done = lake::bars::catch_up_to(
                catalog.as_ref(),
                &ident,
                &bars_ident,
                1 << 27,
                upto,
                &lake::bars::Known::new(),
            )
            .await
            .unwrap();
            assert!(done.bars > 0, "{phase}: {done:?}");
            for r in requests
                .iter()
                .filter(|r| r["name"].as_str().unwrap().starts_with("ohlcv_"))
            {
                let name = r["name"].as_str().unwrap();
                let path = r["path"].as_str().unwrap();
                let resp = web_test::call_service(
                    &app,
                    web_test::TestRequest::get().uri(path).to_request(),
                )
                .await;
                let status = resp.status().as_u16();
                let mut body: Value =
                    serde_json::from_slice(&web_test::read_body(resp).await).unwrap();
                normalize(&mut body, &snapshots, evolved);
                let file = golden_dir().join("expected").join(format!("{name}.json"));
                let expected: Value =
                    serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
                if expected["status"] != json!(status) || expected["body"] != body {
                    failures.push(format!(
                        "{name} ({phase}): expected\n{}\ngot {status}\n{}",
                        serde_json::to_string_pretty(&expected["body"]).unwrap(),
                        serde_json::to_string_pretty(&body).unwrap()
                    ));
                }
            }
        }

        let mut names: HashMap<&str, usize> = HashMap::new();
        for r in &requests {
            *names.entry(r["name"].as_str().unwrap()).or_default() += 1;
        }
        assert!(
            names.values().all(|n| *n == 1),
            "request names must be unique"
        );
        failures
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
