//! Supervision: a writer whose commits fail permanently rewinds to its last
//! snapshot in place (the consumer restarts there), the daemon stays up, and
//! every trade still lands exactly once.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn status(env: &Env) -> Value {
    serde_json::from_str(&http_get(env.http_port, "/status").expect("/status answers")).unwrap()
}

#[test]
fn failed_commits_rewind_the_writer_and_lose_or_duplicate_nothing() {
    let cap = capture("BINANCE-ee25be.0.txt");
    let expected = truth(&received_frames(&cap)).len() as i64;
    let (_replay, url) = start_replay(&[cap], &["--rate", "1000"]);
    let env = Env::new(
        "embedded",
        Some(&url),
        r#"
[supervision]
restart_backoff_initial_ms = 100
restart_backoff_max_ms = 500

[chaos]
fail_trade_commits = 2
"#,
    );
    env.set("feeds.binance", "streams", r#"["aggTrade"]"#);
    env.set(
        "feeds.binance",
        "symbols",
        r#"["btcusdt", "ethusdt", "dotusdt"]"#,
    );
    // One pass of the capture: no reconnect once it ends.
    env.set("feeds.binance", "backoff_initial_ms", "600000");
    env.set("feeds.binance", "backoff_max_ms", "600000");
    env.set("writer", "max_rows", "200");
    let mut daemon = env.start_daemon("daemon");

    wait_until("every trade committed", Duration::from_secs(120), || {
        env.count("select count(*) from market.trades") >= expected
    });
    // A late duplicate would show up within a few flushes.
    std::thread::sleep(Duration::from_secs(2));
    let rows =
        env.query("select count(*) as n, count(distinct message_id) as d from market.trades");
    println!("market.trades {} (expected {expected})", rows[0]);
    assert_eq!(
        rows[0]["n"].as_i64().unwrap(),
        expected,
        "{}",
        daemon.log_tail()
    );
    assert_eq!(rows[0]["d"].as_i64().unwrap(), expected);

    let s = status(&env);
    let writer = &s["tree"]["children"][3];
    let consumer = &s["tree"]["children"][2];
    println!("writer {writer}\nconsumer {consumer}");
    assert_eq!(writer["name"], "writer.trades");
    assert_eq!(writer["restarts"], 2);
    assert!(
        writer["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("chaos")),
        "{writer}"
    );
    assert!(consumer["restarts"].as_u64().unwrap() >= 2, "{consumer}");
    assert_eq!(
        env.counter("ticklake_actor_restarts_total", "actor=\"writer.trades\""),
        2.0
    );
    assert_eq!(
        env.counter("ticklake_writer_commits_total", "outcome=\"failed\""),
        2.0
    );
    // Still up, and stops cleanly.
    assert!(daemon.terminate().success());
}
