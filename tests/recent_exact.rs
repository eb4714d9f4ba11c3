//! `/v1/trades/recent` is exact at any page size. The query bounds its time
//! from below by the tail's own newest trades when the tail alone fills the
//! page (`kth_newest_timestamp`), so the lake side reads only what can make
//! the page. This test checks the answer against brute force over a lake
//! and a tail whose times interleave: late tail trades older than lake
//! trades, many trades sharing one timestamp (ties at the bound, broken by
//! message id), symbols dense and sparse, and pages from 1 row to more
//! than the window holds.

use std::sync::Arc;

use actix::Actor;
use serde_json::Value;
use ticklake::actors::tail::TailActor;
use ticklake::config::Config;
use ticklake::lake::commit::{self, KafkaOffsets};
use ticklake::lake::schema::TRADES_TABLE;
use ticklake::lake::{self, TableKind};
use ticklake::messages::consumer::Committed;
use ticklake::messages::observe::Observe;
use ticklake::messages::query::{QueryRequest, RecentRequest};
use ticklake::messages::tail::{QueryPinned, TailRow, TailState, Tailed};
use ticklake::model::{Dec8, Side, TradeV2};
use ticklake::query::engine::Engine;

const NOW: i64 = 1_800_000_000_000_000;
const MINUTE: i64 = 60_000_000;

fn trade(i: usize, symbol: &str, exchange: &str, ts: i64) -> TradeV2 {
    TradeV2::builder(exchange, symbol, &i.to_string(), ts)
        .price(Dec8::from_unscaled(1_000_000_000 + i as i64).unwrap())
        .quantity(Dec8::from_unscaled(1 + i as i64).unwrap())
        .side(if i.is_multiple_of(2) {
            Side::Buy
        } else {
            Side::Sell
        })
        .source_sequence(Some(i as i64))
        .build()
}

/// Trade `i`: symbol, exchange and time. Times fall on a coarse grid (so
/// many trades share one), over the last 20 minutes; `late` shifts a tail
/// trade back by up to 10 minutes, behind trades already in the lake.
fn shape(i: usize, tail: bool) -> (&'static str, &'static str, i64) {
    let symbol = if i % 50 == 9 {
        "RARE"
    } else if i % 10 >= 7 {
        "ETHUSDT"
    } else {
        "BTCUSDT"
    };
    let exchange = if i.is_multiple_of(3) {
        "KRAKEN"
    } else {
        "BINANCE"
    };
    // 2,000 lake trades over minutes -20..-5, the tail over -5..0.
    let grid = 250_000; // four timestamps a second
    let ts = if tail {
        let base = NOW - 5 * MINUTE + (i as i64 % 1000) * (5 * MINUTE / 1000);
        let late = if i.is_multiple_of(7) { 10 * MINUTE } else { 0 };
        base - late
    } else {
        NOW - 20 * MINUTE + (i as i64 % 2000) * (15 * MINUTE / 2000)
    };
    (symbol, exchange, ts / grid * grid)
}

struct Fixture {
    engine: Engine,
    catalog: Arc<dyn iceberg::Catalog>,
    ident: iceberg::TableIdent,
    schema: arrow::datatypes::SchemaRef,
    tail: actix::Addr<TailActor>,
    all: Vec<TradeV2>,
    /// How many of `all` (the first ones) are in the lake.
    lake_n: usize,
    cfg: Config,
    _dir: tempfile::TempDir,
}

/// `cache_bytes`: `api.recent_cache_bytes` (0: the lake is read at every
/// page).
async fn fixture(cache_bytes: usize) -> Fixture {
    fixture_with(cache_bytes, None).await
}

/// `query_grace`: the tail keeps a commit's rows until told the query side
/// pins the new snapshot, as in the daemon (`TailActor::with_query_pins`).
async fn fixture_with(cache_bytes: usize, query_grace: Option<std::time::Duration>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default().under(dir.path());
    cfg.api.max_rows = 1000;
    cfg.api.recent_cache_bytes = cache_bytes;
    let catalog = lake::open_catalog(&cfg).await.unwrap();
    let table = lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
        .await
        .unwrap();
    let schema = lake::batch::arrow_schema(table.metadata().current_schema()).unwrap();
    let ident = lake::table_ident(&cfg, TableKind::Trades);
    let topic = "t.trades";
    let lake_n = 2000;
    let mut all = Vec::new();
    // Two commits, as the writer makes them.
    for (from, to) in [(0, 1200), (1200, lake_n)] {
        let rows: Vec<TradeV2> = (from..to)
            .map(|i| {
                let (s, x, ts) = shape(i, false);
                trade(i, s, x, ts)
            })
            .collect();
        all.extend(rows.iter().cloned());
        let mut offsets = KafkaOffsets {
            cluster_id: "test".into(),
            ..Default::default()
        };
        offsets.set(topic, 0, to as i64);
        let batch = lake::batch::trades_batch(&schema, &rows).unwrap();
        commit::append(catalog.as_ref(), &ident, Some(&batch), &offsets, 128 << 20)
            .await
            .unwrap();
    }
    let view = ticklake::query::tail::TailView::default();
    let mut tail = TailActor::new("test", 1_000_000, schema.clone(), view.clone());
    if let Some(grace) = query_grace {
        tail = tail.with_query_pins(grace);
    }
    let tail = tail.start();
    let rows: Vec<TailRow> = (lake_n..lake_n + 3000)
        .map(|i| {
            let (s, x, ts) = shape(i, true);
            let t = trade(i, s, x, ts);
            all.push(t.clone());
            TailRow {
                topic: Arc::from(topic),
                partition: 0,
                offset: i as i64,
                trade: Arc::new(t),
            }
        })
        .collect();
    tail.send(Tailed::Rows(rows)).await.unwrap();
    let engine = ticklake::query::session::engine(&cfg, Some(view))
        .await
        .unwrap()
        .with_clock(Arc::new(|| NOW));
    Fixture {
        engine,
        catalog,
        ident,
        schema,
        tail,
        all,
        lake_n,
        cfg,
        _dir: dir,
    }
}

/// What the answer must be: the newest `limit` trades of the window, by
/// (timestamp, message_id) descending, and whether more matched.
fn truth(
    all: &[TradeV2],
    symbol: &str,
    exchange: Option<&str>,
    minutes: i64,
    limit: usize,
) -> (Vec<String>, bool) {
    let mut m: Vec<&TradeV2> = all
        .iter()
        .filter(|t| {
            t.symbol == symbol
                && exchange.is_none_or(|x| t.exchange == x)
                && t.timestamp_us >= NOW - minutes * MINUTE
        })
        .collect();
    m.sort_by(|a, b| (b.timestamp_us, &b.message_id).cmp(&(a.timestamp_us, &a.message_id)));
    let truncated = m.len() > limit;
    (
        m.into_iter()
            .take(limit)
            .map(|t| t.message_id.clone())
            .collect(),
        truncated,
    )
}

/// Asks every page size of every window and compares with brute force;
/// returns how many answers, and the snapshot they pinned.
async fn check_every_page(f: &Fixture) -> (usize, Option<i64>) {
    let mut checked = 0;
    let mut snapshot = None;
    for symbol in ["BTCUSDT", "ETHUSDT", "RARE"] {
        for exchange in [None, Some("KRAKEN")] {
            // Widest first: with the window cache on, later pages of a
            // symbol are served from what the widest one read.
            for minutes in [30, 15, 6, 1] {
                // Pages the tail fills exactly, or misses by one: then only
                // the lake can say whether the window holds more.
                let in_tail = truth(&f.all[f.lake_n..], symbol, exchange, minutes, usize::MAX)
                    .0
                    .len();
                let mut limits = vec![1, 2, 7, 100, 333, 999, 1000];
                limits.extend([in_tail.saturating_sub(1), in_tail, in_tail + 1]);
                limits.retain(|l| (1..=1000).contains(l));
                for limit in limits {
                    snapshot = check_page(f, symbol, exchange, minutes, limit).await;
                    checked += 1;
                }
            }
        }
    }
    (checked, snapshot)
}

/// Asks one page and compares it with brute force; returns the snapshot
/// it pinned.
async fn check_page(
    f: &Fixture,
    symbol: &str,
    exchange: Option<&str>,
    minutes: i64,
    limit: usize,
) -> Option<i64> {
    let req = QueryRequest::Recent(RecentRequest {
        symbol: symbol.into(),
        exchange: exchange.map(str::to_string),
        minutes,
        limit: Some(limit),
    });
    let a = f.engine.run(req).await.unwrap();
    let v: Value = serde_json::from_str(&a.text()).unwrap();
    let got: Vec<String> = v["trades"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["message_id"].as_str().unwrap().to_string())
        .collect();
    let (want, truncated) = truth(&f.all, symbol, exchange, minutes, limit);
    let what = format!("{symbol} {exchange:?} {minutes} min, limit {limit}");
    assert_eq!(got, want, "{what}");
    assert_eq!(v["truncated"], Value::Bool(truncated), "{what}");
    assert_eq!(v["count"].as_u64(), Some(want.len() as u64), "{what}");
    v["snapshot_id"].as_i64()
}

/// How pages found their lake side, by outcome (`engine::window`).
fn window_counts(f: &Fixture) -> std::collections::HashMap<&'static str, u64> {
    f.engine.recent_window_counts().into_iter().collect()
}

/// Commits the tail's trades `from..to` (indexes into `all`) as the writer
/// does and tells the tail; returns the new snapshot.
async fn commit_tail(f: &Fixture, from: usize, to: usize) -> i64 {
    let rows = f.all[from..to].to_vec();
    let mut offsets = KafkaOffsets {
        cluster_id: "test".into(),
        ..Default::default()
    };
    offsets.set("t.trades", 0, to as i64);
    let batch = lake::batch::trades_batch(&f.schema, &rows).unwrap();
    let c = commit::append(
        f.catalog.as_ref(),
        &f.ident,
        Some(&batch),
        &offsets,
        128 << 20,
    )
    .await
    .unwrap();
    f.tail
        .send(Committed {
            table: TRADES_TABLE,
            snapshot_id: c.snapshot_id,
            offsets,
            rows: None,
        })
        .await
        .unwrap();
    c.snapshot_id
}

/// Every page, then again after each way the lake changes under the query
/// side: an append it learns of at once (as the query actor does after a
/// commit), an append it meets only at the next query, and a compaction
/// that replaces the files the kept windows were read from.
async fn every_page_through_lake_changes(cache_bytes: usize) {
    let f = fixture(cache_bytes).await;
    // The fixture must reach the cases it is about: a page the tail fills
    // alone, one it cannot, and windows reaching into the lake.
    let (full, _) = truth(&f.all, "BTCUSDT", None, 30, 1000);
    assert_eq!(full.len(), 1000);
    let (rare, _) = truth(&f.all, "RARE", None, 30, 1000);
    assert!(!rare.is_empty() && rare.len() < 1000, "{}", rare.len());
    let (mut checked, pinned) = check_every_page(&f).await;
    let counts = window_counts;
    let cached = cache_bytes > 0;
    let c1 = counts(&f);
    if cached {
        assert!(c1["read"] > 0 && c1["kept"] > 0, "{c1:?}");
    }

    // Part of the tail committed; the union is the same, so every answer
    // must be too.
    let first = commit_tail(&f, f.lake_n, f.lake_n + 1000).await;
    f.engine.refresh().await;
    f.engine.learn_lake_facts().await;
    let (n, after) = check_every_page(&f).await;
    assert_ne!(pinned, after, "the second round must pin the new snapshot");
    assert_eq!(after, Some(first));
    checked += n;
    let c2 = counts(&f);
    if cached {
        // Carried to the new snapshot right after the commit: no page of
        // this round read the lake's window whole.
        assert!(c2["carried"] > c1["carried"], "{c2:?}");
        assert_eq!(c2["read"], c1["read"], "{c2:?}");
    }

    // Another commit, and the next query is the first to see it.
    let second = commit_tail(&f, f.lake_n + 1000, f.lake_n + 1500).await;
    f.engine.refresh().await;
    let (n, after) = check_every_page(&f).await;
    assert_eq!(after, Some(second));
    checked += n;
    let c3 = counts(&f);
    if cached {
        // Carried by the first page of each window after the commit (a
        // window wider than any kept is read: the tail that filled it
        // before is smaller now), the later pages served from memory.
        assert!(c3["carried"] > c2["carried"], "{c3:?}");
        assert!(c3["kept"] > c2["kept"], "{c3:?}");
    }

    // Compaction rewrites every file: no window kept can be carried over.
    let db = ticklake::lake::compact::CatalogDb::open(&f.cfg)
        .await
        .unwrap()
        .expect("the test catalog is SQLite");
    let policy = ticklake::lake::compact::CompactPolicy {
        target_file_size: 128 << 20,
        min_files: 2,
        min_age: std::time::Duration::ZERO,
        sort: vec!["symbol".into(), "timestamp".into()],
        merge: None,
    };
    let report = ticklake::lake::compact::compact(f.catalog.as_ref(), &db, &f.ident, &policy)
        .await
        .unwrap();
    assert!(report.files_replaced >= 4, "{report:?}");
    f.engine.refresh().await;
    let (n, after) = check_every_page(&f).await;
    assert_eq!(after, report.snapshot_id);
    checked += n;
    let c4 = counts(&f);
    if cached {
        // The files the windows were read from are gone: read again.
        assert!(c4["read"] > c3["read"], "{c4:?}");
    } else {
        assert!(c4.values().all(|&n| n == 0), "{c4:?}");
    }
    println!("api.recent_cache_bytes = {cache_bytes}: {checked} recent answers equal brute force");
}

#[actix_rt::test]
async fn recent_pages_equal_brute_force_at_every_size() {
    every_page_through_lake_changes(64 << 20).await;
}

#[actix_rt::test]
async fn recent_pages_equal_brute_force_without_the_window_cache() {
    every_page_through_lake_changes(0).await;
}

/// A poller's pattern: windows far larger than their page, asked again and
/// again while the tail is too small to fill the page alone, as right
/// after a commit. The lake's newest rows of each window are read once
/// per page size that needs more of them, kept, served to the pages after,
/// and carried through a commit that empties the tail; every answer equals
/// brute force.
#[actix_rt::test]
async fn windows_far_larger_than_their_page_are_read_once_and_served_through_commits() {
    let mut f = fixture(64 << 20).await;
    // All but the last 100 tail trades committed: the tail holds fewer
    // than a page of any window.
    commit_tail(&f, f.lake_n, f.lake_n + 2900).await;
    f.lake_n += 2900;
    f.engine.refresh().await;
    let windows = [
        ("BTCUSDT", None),
        ("BTCUSDT", Some("KRAKEN")),
        ("ETHUSDT", None),
    ];
    let limits = [100, 333];
    for (symbol, exchange) in windows {
        let in_tail = truth(&f.all[f.lake_n..], symbol, exchange, 30, usize::MAX).0;
        let all = truth(&f.all, symbol, exchange, 30, usize::MAX).0;
        assert!(
            in_tail.len() < 100,
            "{symbol} {exchange:?}: {} in the tail",
            in_tail.len()
        );
        assert!(
            all.len() > 2 * (333 + 1),
            "{symbol} {exchange:?}: {} in all",
            all.len()
        );
    }
    let mut answers = 0;
    for _ in 0..3 {
        for (symbol, exchange) in windows {
            for limit in limits {
                check_page(&f, symbol, exchange, 30, limit).await;
                answers += 1;
            }
        }
    }
    let c1 = window_counts(&f);
    let reads = c1["read"] + c1["not_kept"];
    assert!(c1["read"] > 0, "{c1:?}");
    assert!(
        reads <= (windows.len() * limits.len()) as u64,
        "a window is read at most once per page size that needs more of it: {c1:?}"
    );
    assert!(c1["kept"] >= answers - reads, "{c1:?}");

    // The rest committed: the tail is empty, and the kept rows are carried
    // to the new snapshot right after the commit, as the query actor does.
    let snapshot = commit_tail(&f, f.lake_n, f.lake_n + 100).await;
    f.lake_n += 100;
    f.engine.refresh().await;
    f.engine.learn_lake_facts().await;
    for (symbol, exchange) in windows {
        for limit in limits {
            assert_eq!(
                check_page(&f, symbol, exchange, 30, limit).await,
                Some(snapshot)
            );
            answers += 1;
        }
    }
    let c2 = window_counts(&f);
    assert!(c2["carried"] > c1["carried"], "{c2:?}");
    assert_eq!(c2["read"] + c2["not_kept"], reads, "{c2:?}");
    println!("{answers} recent answers equal brute force; {c2:?}");
}

/// As in the daemon, the tail keeps a commit's rows until the query side
/// pins the new snapshot. Every page is exact at each step: before the
/// engine learns of the commit (the older snapshot, and the tail rows past
/// it, the committed ones among them), once it pins the new snapshot while
/// the tail still holds the committed rows, and after the tail lets them
/// go.
#[actix_rt::test]
async fn recent_pages_stay_exact_while_the_tail_waits_for_the_query_side() {
    let f = fixture_with(64 << 20, Some(std::time::Duration::from_secs(600))).await;
    let tail_rows = || async { f.tail.send(Observe::<TailState>::new()).await.unwrap().rows };
    let (mut checked, before) = check_every_page(&f).await;
    assert!(before.is_some());
    let snapshot = commit_tail(&f, f.lake_n, f.lake_n + 1000).await;
    assert_eq!(tail_rows().await, 3000, "kept after the commit");
    let (n, pinned) = check_every_page(&f).await;
    checked += n;
    assert_eq!(
        pinned, before,
        "the older snapshot until the engine pins the new one"
    );
    f.engine.refresh().await;
    let (n, pinned) = check_every_page(&f).await;
    checked += n;
    assert_eq!(pinned, Some(snapshot));
    let mut offsets = KafkaOffsets {
        cluster_id: "test".into(),
        ..Default::default()
    };
    offsets.set("t.trades", 0, (f.lake_n + 1000) as i64);
    f.tail.send(QueryPinned { offsets }).await.unwrap();
    assert_eq!(tail_rows().await, 2000, "let go once the query side pins");
    let (n, pinned) = check_every_page(&f).await;
    checked += n;
    assert_eq!(pinned, Some(snapshot));
    println!("{checked} recent answers equal brute force");
}
