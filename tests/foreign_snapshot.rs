//! Acceptance D of the hostile-input work, on the real broker: a snapshot
//! another engine appends to `market.trades` (pyiceberg here, through the
//! same SQL catalog, with no `ticklake.kafka.offsets`) does not reset the
//! consumer. The daemon restarted on top of it resumes from the offsets of
//! the newest snapshot that carries them, reads only what is new, and the
//! table ends with every trade once and the foreign rows beside them.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;

/// The "consumer start position" lines of a daemon's log for `topic`:
/// partition → offset. The log is tracing's: plain when redirected to a
/// file, but colours are stripped should a terminal ever have asked for them.
fn start_positions(log: &Path, topic: &str) -> BTreeMap<i64, i64> {
    let text = std::fs::read_to_string(log).unwrap();
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let mut out = BTreeMap::new();
    for line in plain
        .lines()
        .filter(|l| l.contains("consumer start position"))
    {
        let field = |name: &str| -> Option<&str> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
        };
        if field("topic") == Some(topic) {
            let p = field("partition").unwrap().parse().unwrap();
            let o = field("offset").unwrap().parse().unwrap();
            assert!(out.insert(p, o).is_none(), "partition {p} twice: {line}");
        }
    }
    out
}

/// The feed on every symbol and stream kind of both captures, one
/// connection per run: a reconnect would be served the capture again.
fn capture_env(brokers: &str, url: &str) -> Env {
    let env = Env::new(brokers, Some(url), "");
    env.set("feeds.binance", "streams", r#"["trade", "aggTrade"]"#);
    env.set(
        "feeds.binance",
        "symbols",
        r#"["btcusdt", "ethusdt", "dotusdt", "compusdt", "crvusdt", "omgbusd", "zrxusdt"]"#,
    );
    env.set("feeds.binance", "backoff_initial_ms", "600000");
    env.set("feeds.binance", "backoff_max_ms", "600000");
    env.set("feeds.binance", "stale_after_secs", "600");
    // The writer remembers the ids it committed in this window and drops a
    // trade that comes back; that would hide a consumer sent back to the
    // start of the topic. Without it, a reset shows as duplicates.
    env.set("writer", "dedup_window_secs", "0");
    env
}

fn trades_of(capture_name: &str) -> i64 {
    truth(&received_frames(&capture(capture_name))).len() as i64
}

#[test]
fn a_foreign_snapshot_does_not_reset_the_consumer() {
    let brokers = tansu();
    // Fails loudly when the test's Python is missing.
    let _ = python();
    let first = trades_of("BINANCE-ee25be.0.txt");
    let second = trades_of("BINANCE_US.ws.1.0.txt");
    assert!(first > 1000 && second > 0, "captures: {first}, {second}");

    // 1. The daemon lands the first capture and stops gracefully.
    let (mut replay, url) = start_replay(&[capture("BINANCE-ee25be.0.txt")], &[]);
    let env = capture_env(&brokers, &url);
    let topic = format!("{}.trades.binance", env.run);
    let mut daemon = env.start_daemon("first");
    wait_until(
        "the first capture committed",
        Duration::from_secs(180),
        || env.count("select count(*) from market.trades") >= first,
    );
    let status = daemon.terminate();
    assert!(status.success(), "exit {status}:\n{}", daemon.log_tail());
    replay.kill();
    assert_eq!(
        start_positions(&daemon.log, &topic).values().sum::<i64>(),
        0,
        "a fresh lake starts at the beginning"
    );

    // 2. Another engine appends to market.trades.
    let foreign = env.pyiceberg(
        "pyiceberg_append.py",
        &["--table", "market.trades", "--rows", "5"],
    );
    println!("pyiceberg appended: {foreign}");
    let foreign_rows = foreign["appended"].as_i64().unwrap();
    assert!(
        foreign["summary"].get("ticklake.kafka.offsets").is_none(),
        "{foreign}"
    );
    // The daemon's own last snapshot is right below the foreign one, and
    // its offsets cover exactly the first capture's records.
    assert_eq!(
        foreign["offsets_snapshot_id"], foreign["parent_snapshot_id"],
        "{foreign}"
    );
    let recorded: BTreeMap<i64, i64> = foreign["offsets"]["topics"][&topic]
        .as_object()
        .unwrap_or_else(|| panic!("no offsets for {topic}: {foreign}"))
        .iter()
        .map(|(p, o)| (p.parse().unwrap(), o.as_i64().unwrap()))
        .collect();
    assert_eq!(recorded.values().sum::<i64>(), first, "{recorded:?}");

    // 3. The daemon restarts on the same data directory and broker, on top
    //    of the foreign snapshot, and lands the second capture.
    let (mut replay, url) = start_replay(&[capture("BINANCE_US.ws.1.0.txt")], &[]);
    env.set("feeds.binance", "url", &format!("\"{url}\""));
    let mut daemon = env.start_daemon("second");
    let expected = first + foreign_rows + second;
    wait_until(
        "the second capture committed",
        Duration::from_secs(180),
        || env.count("select count(*) from market.trades") >= expected,
    );
    let consumed = env.counter(
        "ticklake_consumer_records_total",
        &format!("topic=\"{topic}\""),
    );
    let status = daemon.terminate();
    assert!(status.success(), "exit {status}:\n{}", daemon.log_tail());
    replay.kill();

    // It started where the daemon's own newest snapshot had left off, and
    // said that it skipped a snapshot without offsets.
    let started = start_positions(&daemon.log, &topic);
    println!("recorded {recorded:?}, second start {started:?}, consumed {consumed}");
    assert_eq!(started, recorded);
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("the newest snapshot carries no kafka offsets"),
        "{}",
        daemon.log_tail()
    );
    // It read only the second capture's records: none of the first again.
    assert_eq!(consumed, second as f64);

    // Every trade once, the foreign rows beside them.
    let rows = env.query(
        "select exchange, count(*) as n, count(distinct message_id) as d \
         from market.trades group by exchange order by exchange",
    );
    println!("market.trades after the restart: {rows:?} (expected {expected})");
    let by_exchange: BTreeMap<&str, (i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["exchange"].as_str().unwrap(),
                (r["n"].as_i64().unwrap(), r["d"].as_i64().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        by_exchange.get("BINANCE"),
        Some(&(first + second, first + second)),
        "{rows:?}"
    );
    assert_eq!(
        by_exchange.get("FOREIGN"),
        Some(&(foreign_rows, foreign_rows)),
        "{rows:?}"
    );
    assert_eq!(env.count("select count(*) from market.trades"), expected);
}
