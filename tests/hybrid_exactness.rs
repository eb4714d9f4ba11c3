//! Acceptance A: hybrid reads are exact while data streams in. A recorded
//! capture plays at a steady rate into the daemon on the real Tansu broker,
//! the writer commits every second, and queries over `market.trades_live`
//! (`/v1/trades` and `/v1/sql`) run throughout. Every answer must equal the
//! ground truth read straight from the capture: per symbol exactly the
//! first k recorded trades (each symbol is one Kafka partition, so what the
//! daemon has consumed of it is a prefix), nothing twice, nothing skipped,
//! every value equal, and never fewer than an earlier answer had.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// One trade as the API returns it, in the ground truth's terms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    trade_id: String,
    price: String,
    quantity: String,
    time_us: i64,
}

fn truth_row(t: &TruthTrade) -> Row {
    Row {
        trade_id: format!("BINANCE-{}", t.id),
        price: dec8(&t.price),
        quantity: dec8(&t.quantity),
        time_us: t.time_ms * 1000,
    }
}

fn api_row(v: &Value) -> Row {
    let ts = v["timestamp"].as_str().unwrap();
    Row {
        trade_id: v["trade_id"].as_str().unwrap().to_string(),
        price: v["price"].as_str().unwrap().to_string(),
        quantity: v["quantity"].as_str().unwrap().to_string(),
        time_us: chrono::DateTime::parse_from_rfc3339(ts)
            .unwrap()
            .timestamp_micros(),
    }
}

/// `(status, body)` of one request on loopback.
/// Checks one symbol's answer against its recorded trades: the answer is
/// exactly the first k of them (for a range query: the first k that fall
/// in the range), with no duplicate. Returns k.
fn check_prefix(
    what: &str,
    symbol: &str,
    got: &[Row],
    truth: &[Row],
    range: Option<(i64, i64)>,
) -> usize {
    let unique: BTreeSet<&Row> = got.iter().collect();
    assert_eq!(
        unique.len(),
        got.len(),
        "{what}: {symbol}: duplicate rows in {got:?}"
    );
    let in_range = |r: &Row| range.is_none_or(|(s, e)| r.time_us >= s && r.time_us < e);
    // The longest prefix of the recording whose in-range part the answer
    // holds; everything in the answer must lie inside that prefix.
    let mut k = 0;
    let mut matched = 0;
    for (i, t) in truth.iter().enumerate() {
        if !in_range(t) {
            continue;
        }
        if unique.contains(t) {
            matched += 1;
            k = i + 1;
        }
    }
    assert_eq!(
        matched,
        got.len(),
        "{what}: {symbol}: rows not in the recording (or with other values): {:?}",
        got.iter()
            .filter(|r| !truth.contains(r))
            .collect::<Vec<_>>()
    );
    let expected: Vec<&Row> = truth[..k].iter().filter(|r| in_range(r)).collect();
    let missing: Vec<&&Row> = expected.iter().filter(|r| !unique.contains(**r)).collect();
    assert!(
        missing.is_empty(),
        "{what}: {symbol}: gap: {} recorded trades before the last one returned are missing: {missing:?}",
        missing.len()
    );
    k
}

#[test]
fn hybrid_reads_are_exact_while_trades_stream_and_commits_land() {
    let brokers = tansu();
    let cap = capture("BINANCE-ee25be.0.txt");
    let truth_all = truth(&received_frames(&cap));
    let mut truth: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for t in &truth_all {
        truth
            .entry(t.symbol.clone())
            .or_default()
            .push(truth_row(t));
    }
    assert!(
        truth_all.len() > 1800,
        "capture holds {} trades",
        truth_all.len()
    );

    // ~4,700 frames at 250/s: about 19 s of streaming, ~100 trades/s.
    let (_replay, url) = start_replay(std::slice::from_ref(&cap), &["--rate", "250"]);
    let env = Env::new(&brokers, Some(&url), "");
    env.capture_feed();
    env.set("writer", "max_rows", "1000000");
    env.set("writer", "max_age_ms", "1000");
    let mut daemon = env.start_daemon("daemon");
    let port = env.http_port;

    let symbols: Vec<String> = truth.keys().cloned().collect();
    let mut best: BTreeMap<String, usize> = BTreeMap::new();
    let mut snapshots = BTreeSet::new();
    let (mut queries, mut mixed, mut with_tail) = (0, 0, 0);
    let started = Instant::now();
    let mut done = false;
    let mut round = 0usize;
    while !done {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "not every trade arrived: {best:?}; log:\n{}",
            daemon.log_tail()
        );
        round += 1;
        let symbol = &symbols[round % symbols.len()];
        let t = &truth[symbol];

        // 1. One symbol through /v1/trades.
        let (body, got) = get_trades(port, &format!("/v1/trades?symbol={symbol}&limit=10000"));
        let k = check_prefix("/v1/trades", symbol, &got, t, None);
        let prev = best.entry(symbol.clone()).or_default();
        assert!(
            k >= *prev,
            "{symbol}: an answer went back from {prev} to {k} trades"
        );
        *prev = k;
        queries += 1;
        if let Some(s) = body["snapshot_id"].as_i64() {
            snapshots.insert(s);
            if body["tail_rows_scanned"].as_u64().unwrap_or(0) > 0 {
                mixed += 1;
            }
        }
        if body["tail_rows_scanned"].as_u64().unwrap_or(0) > 0 {
            with_tail += 1;
        }

        // 2. A time range of the same symbol: the middle third of its
        // recorded trades, start inclusive, end exclusive.
        let (s_us, e_us) = (t[t.len() / 3].time_us, t[2 * t.len() / 3].time_us);
        let fmt = |us: i64| {
            chrono::DateTime::from_timestamp_micros(us)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        let (_, got) = get_trades(
            port,
            &format!(
                "/v1/trades?symbol={symbol}&start={}&end={}&limit=10000",
                fmt(s_us),
                fmt(e_us)
            ),
        );
        check_prefix("/v1/trades range", symbol, &got, t, Some((s_us, e_us)));
        queries += 1;

        // 3. Every symbol at once through SQL on market.trades_live.
        let sql = json!({"sql": "select symbol, trade_id, cast(price as varchar) as price, \
            cast(quantity as varchar) as quantity, \"timestamp\" from market.trades_live"});
        let (status, body) = http(port, "POST", "/v1/sql", Some(&sql));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["truncated"], json!(false));
        let mut by_symbol: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        for r in body["rows"].as_array().unwrap() {
            by_symbol
                .entry(r["symbol"].as_str().unwrap().to_string())
                .or_default()
                .push(api_row(r));
        }
        assert!(
            by_symbol.keys().all(|s| truth.contains_key(s)),
            "unexpected symbols {:?}",
            by_symbol.keys()
        );
        let mut complete = true;
        for (s, t) in &truth {
            let got = by_symbol.remove(s).unwrap_or_default();
            let k = check_prefix("/v1/sql trades_live", s, &got, t, None);
            let prev = best.entry(s.clone()).or_default();
            assert!(
                k >= *prev,
                "{s}: an answer went back from {prev} to {k} trades"
            );
            *prev = k;
            complete &= k == t.len();
        }
        queries += 1;
        done = complete;
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "{queries} exact hybrid answers; {} snapshots pinned; {with_tail} answers used the tail, {mixed} of them lake and tail together",
        snapshots.len()
    );
    // The run must have exercised what it claims to: many commits during
    // the queries, and answers made of both sides.
    assert!(
        snapshots.len() >= 5,
        "only {} snapshots were pinned",
        snapshots.len()
    );
    assert!(mixed >= 3, "only {mixed} answers combined lake and tail");

    // Once everything is committed the lake alone holds the same rows.
    wait_until("everything committed", Duration::from_secs(60), || {
        env.count("select count(*) from market.trades") == truth_all.len() as i64
    });
    // `ticklake query` runs on the daemon while it answers, on the lake
    // alone (and says so) once it is gone.
    let cli = |sql: &str| {
        let out = env.query_output(sql);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (v, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (v, err) = cli("select count(*) as n from market.trades_live");
    assert_eq!(v["n"].as_i64(), Some(truth_all.len() as i64));
    assert!(!err.contains("lake only"), "{err}");
    let status = daemon.terminate();
    assert!(
        status.success(),
        "daemon exit {status}; log:\n{}",
        daemon.log_tail()
    );
    let (v, err) = cli("select count(*) as n from market.trades_live");
    assert_eq!(v["n"].as_i64(), Some(truth_all.len() as i64));
    assert!(err.contains("committed lake only"), "{err}");
}

/// `GET path` on `/v1/trades`: must answer 200; the body and its rows.
fn get_trades(port: u16, path: &str) -> (Value, Vec<Row>) {
    let (status, body) = http(port, "GET", path, None);
    assert_eq!(status, 200, "{body}");
    let rows = body["trades"]
        .as_array()
        .unwrap()
        .iter()
        .map(api_row)
        .collect();
    (body, rows)
}
