//! The embedded default under a flood with a slow writer: librdkafka's
//! in-process cluster deletes the oldest records of a partition past 5 MiB,
//! so without backpressure before that point a consumer that falls behind
//! loses records for good. Every published record must reach the lake, and
//! the lake-side identity must say so; and a loss forced on purpose
//! (`chaos.lose`) must be reported, never balanced away.
//!
//! `TICKLAKE_TEST_FLOOD_TRADES` sets the flood's size (default 100,000, enough
//! to pass the cluster's limit on one partition several times over; the
//! long form is 400,000).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use rand::Rng;
use serde_json::Value;

fn status(env: &Env) -> Value {
    let body = http_get(env.http_port, "/status").expect("/status answers");
    serde_json::from_str(&body).unwrap()
}

/// Tier-1 trades with random prices and quantities (so batches compress
/// badly, as real ones of a busy symbol do), one aggTrade frame per line.
fn flood(dir: &Path, trades: u64) -> PathBuf {
    let mut rng = rand::rng();
    let start_ms = 1_700_000_000_000i64;
    let mut text = String::with_capacity(trades as usize * 260);
    for i in 0..trades {
        let ms = start_ms + (i / 20) as i64;
        let price = rng.random_range(20_000.0..90_000.0f64);
        let qty = rng.random_range(0.00001..5.0f64);
        let frame = serde_json::json!({
            "stream": "btcusdt@aggTrade",
            "data": {
                "e": "aggTrade", "E": ms, "s": "BTCUSDT", "a": i + 1,
                "p": format!("{price:.2}"), "q": format!("{qty:.8}"),
                "f": i + 1, "l": i + 1, "T": ms, "m": rng.random_bool(0.5), "M": true
            }
        });
        text.push_str(&frame.to_string());
        text.push('\n');
    }
    let path = dir.join("flood.txt");
    std::fs::write(&path, text).unwrap();
    path
}

fn tier1(s: &Value) -> Value {
    s["accounting"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["exchange"] == "BINANCE" && a["tier"] == "1")
        .cloned()
        .unwrap_or(Value::Null)
}

fn n(v: &Value, k: &str) -> i64 {
    v[k].as_i64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// The producer's node of the supervision tree.
fn producer(s: &Value) -> Value {
    s["tree"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "producer")
        .cloned()
        .unwrap()
}

fn embedded_env(url: &str, extra: &str) -> Env {
    // librdkafka's consumer fetches ahead of the application, up to 100,000
    // records by default, and a record it holds cannot be evicted any more;
    // a small read-ahead lets a flood of this size reach the cluster's
    // limit, as a larger one would with the default.
    let extra = format!(
        r#"{extra}
[kafka.properties]
"queued.min.messages" = "1000"
"queued.max.messages.kbytes" = "1024"
"#
    );
    let env = Env::new("embedded", Some(url), &extra);
    env.one_pass_feed();
    env.set("feeds.binance", "symbols", r#"["btcusdt"]"#);
    // One partition takes the whole flood: the cluster's limit is per
    // partition.
    env.set("kafka", "embedded_partitions", "1");
    env.set("writer", "max_rows", "5000");
    env
}

#[test]
fn a_flood_with_a_slow_writer_loses_nothing_in_the_embedded_broker() {
    let trades: u64 = std::env::var("TICKLAKE_TEST_FLOOD_TRADES")
        .ok()
        .map(|v| v.parse().expect("TICKLAKE_TEST_FLOOD_TRADES is a number"))
        .unwrap_or(100_000);
    let work = tempfile::tempdir().unwrap();
    let capture = flood(work.path(), trades);
    let (mut replay, url) = start_replay(&[capture], &["--rate", "20000"]);
    let env = embedded_env(
        &url,
        r#"
[chaos]
writer_delay_us_per_row = 400
"#,
    );
    let mut daemon = env.start_daemon("daemon");
    let started = Instant::now();

    let mut fullest = 0i64;
    let mut last = Value::Null;
    wait_until(
        "the lake holds everything published, settled",
        Duration::from_secs(900),
        || {
            let s = status(&env);
            if let Some(w) = producer(&s)["window"].as_object() {
                fullest = fullest.max(w["fullest_bytes"].as_i64().unwrap_or(0));
            }
            let a = tier1(&s);
            let done = !a.is_null()
                && n(&a, "received") == trades as i64
                && s["accounting_settled"] == true;
            last = s;
            if !done {
                std::thread::sleep(Duration::from_millis(500));
            }
            done
        },
    );
    let secs = started.elapsed().as_secs_f64();
    replay.kill();
    let s = last;
    let a = tier1(&s);
    let p = producer(&s);
    println!(
        "flood of {trades} settled in {secs:.0}s: accounting {a}\nwindow {} (fullest seen {fullest} bytes), spilled for the window {}\nlake {}",
        p["window"], p["window_spilled"], s["lake"]
    );
    // The window did hold records back: without it the cluster would have
    // been asked to keep more than it can.
    assert!(
        p["window"]["refusals"].as_u64().unwrap() > 0,
        "the flood never filled the window; it proves nothing: {p}"
    );
    assert!(fullest <= p["window"]["budget_bytes"].as_i64().unwrap());
    // Each refusal made the producer wait, and the wait is put down to
    // the window, not to librdkafka's queue.
    assert!(
        p["window_waits"].as_u64().unwrap() > 0,
        "the producer's waits name the window: {p}"
    );
    assert_eq!(n(&a, "published"), trades as i64);
    assert_eq!(n(&a, "stored"), trades as i64);
    assert_eq!(n(&a, "in_transit"), 0);
    assert_eq!(s["lake"]["lost_records"], 0);
    let rows =
        env.query("select count(*) as n, count(distinct message_id) as d from market.trades");
    println!("market.trades: {}", rows[0]);
    assert_eq!(rows[0]["n"].as_i64().unwrap(), trades as i64);
    assert_eq!(rows[0]["d"].as_i64().unwrap(), trades as i64);
    // And the log never saw librdkafka reset an offset.
    let log = std::fs::read_to_string(env.log_path("daemon")).unwrap();
    assert!(!log.contains("offset reset"), "{}", daemon.log_tail());
    assert!(daemon.terminate().success());
}

#[test]
fn a_forced_loss_is_reported_by_partition_and_range_and_never_settles() {
    const TRADES: u64 = 3000;
    const FROM: i64 = 1000;
    const COUNT: i64 = 250;
    let work = tempfile::tempdir().unwrap();
    let capture = flood(work.path(), TRADES);
    let (mut replay, url) = start_replay(&[capture], &["--rate", "20000"]);
    let env = embedded_env(
        &url,
        &format!(
            r#"
[chaos.lose]
partition = 0
from = {FROM}
count = {COUNT}
"#
        ),
    );
    let mut daemon = env.start_daemon("daemon");
    let topic = format!("{}.trades.binance", env.run);
    let kept = TRADES as i64 - COUNT;
    wait_until(
        "every record but the lost ones committed",
        Duration::from_secs(120),
        || {
            let a = tier1(&status(&env));
            !a.is_null() && n(&a, "received") == TRADES as i64 && n(&a, "stored") == kept
        },
    );
    // Long enough for watermarks and commits to settle if they could.
    std::thread::sleep(Duration::from_secs(2));
    replay.kill();
    let s = status(&env);
    let a = tier1(&s);
    println!("accounting {a}\nlake {}", s["lake"]);
    assert_eq!(n(&a, "published"), TRADES as i64);
    assert_eq!(
        n(&a, "in_transit"),
        COUNT,
        "the lost records stay in transit"
    );
    assert_eq!(s["accounting_settled"], false);
    assert_eq!(s["lake"]["lost_records"], COUNT);
    let r = &s["lake"]["lost_ranges"][0];
    assert_eq!(r["topic"], topic.as_str());
    assert_eq!(r["partition"], 0);
    assert_eq!((n(r, "from"), n(r, "to")), (FROM, FROM + COUNT));
    assert_eq!(r["cause"], "skipped");
    let metric = metric_sum(
        &env.metrics(),
        "ticklake_records_lost_total",
        &format!("partition=\"0\",topic=\"{topic}\""),
    );
    assert_eq!(metric, COUNT as f64);
    assert_eq!(env.count("select count(*) from market.trades"), kept);
    // The partition view agrees: everything on the broker is committed
    // (the hole is behind the recorded offset), so only the identity and
    // the loss say something is missing.
    assert_eq!(s["lake"]["in_transit"][&topic]["0"], 0);
    assert!(daemon.terminate().success());
}
