//! Hot standby on Tansu: two daemons hold the same feed (`ticklake replay
//! --rest --live` of the recorded Binance capture, one shared timeline)
//! and publish to the same topic, sharing their dedup and last trade ids
//! through a real `redis-server` (`dedup.redis_url`). Daemon A writes the
//! lake; daemon B has its writers off (`writer.enabled = false`).
//!
//! B is SIGKILLed mid-replay; A carries on, and publishes the trades B had
//! taken and may not have handed to Kafka. The lake must hold every
//! aggTrade of the capture from the first one stored per symbol to the
//! last, exactly once, and the topic each of them once, but for the trades
//! A took over from B (`ticklake_dedup_redis_takeovers_total`), which the
//! trades writer stores once.
//!
//! Long form (`TICKLAKE_TEST_STANDBY_LONG=1`): a slower replay, and A is
//! SIGKILLed too while B (restarted) holds the feed, then restarted.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const CAPTURE: &str = "BINANCE-ee25be.0.txt";

/// A `redis-server` of the test's own on a free port, killed on drop.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: it is the Debian package `redis-server` (.ci/run installs it)");
        wait_until("redis-server to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records on the trades topic (all partitions), from the broker.
fn topic_records(env: &Env, brokers: &str) -> i64 {
    let out = Command::new(python())
        .arg(scripts_dir().join("kafka_check.py"))
        .args(["produce-count", brokers])
        .arg(format!("{}.trades.binance", env.run))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "produce-count: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["records"].as_i64().unwrap()
}

/// B: A's config (same brokers, topics, feed and Redis) with a data
/// directory and HTTP port of its own, and its writers off.
fn standby_of(a: &Env) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let text = std::fs::read_to_string(&a.config).unwrap();
    let text = text
        .replace(
            &format!("data_dir = \"{}\"", a.data_dir().display()),
            &format!("data_dir = \"{}\"", dir.path().join("data").display()),
        )
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", a.http_port),
            &format!("listen = \"127.0.0.1:{http_port}\""),
        );
    let config = dir.path().join("ticklake.toml");
    std::fs::write(&config, text).unwrap();
    let b = Env {
        dir,
        config,
        http_port,
        run: a.run.clone(),
    };
    b.set("writer", "enabled", "false");
    b
}

#[test]
fn two_daemons_on_one_feed_store_each_trade_once_through_a_kill() {
    let brokers = tansu();
    let long = std::env::var("TICKLAKE_TEST_STANDBY_LONG").is_ok_and(|v| v == "1");
    let redis = Redis::start();
    let truth = aggtrade_ids(CAPTURE);
    let rate = if long { "50" } else { "150" };
    // Both daemons start first, on the address the replay will take: the
    // live timeline starts with the replay, and a daemon that came up after
    // it ended would wait for frames that never come. Until the replay
    // listens, and after its timeline ends (a late client is closed at
    // once), the feeds retry at most half a second apart.
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("ws://{listen}");
    let a = Env::new(
        &brokers,
        Some(&url),
        &format!("\n[dedup]\nredis_url = \"{}\"\n", redis.url),
    );
    a.one_pass_feed();
    a.set("feeds.binance", "backoff_initial_ms", "100");
    a.set("feeds.binance", "backoff_max_ms", "500");
    a.set("feeds.binance", "gap_grace_ms", "500");
    a.set("feeds.binance", "rest_requests_per_sec", "50");
    let b = standby_of(&a);
    let mut daemon_a = a.start_daemon("a");
    let mut daemon_b = b.start_daemon("b");
    let (_replay, replay_url) = start_replay_on(
        &listen,
        &[capture(CAPTURE)],
        &["--rest", "--live", "--retime", "--rate", rate],
    );
    assert_eq!(replay_url, url);
    wait_until("every symbol in the lake", Duration::from_secs(60), || {
        let l = lake_ids(&a);
        l.iter().map(|(s, _)| s).collect::<BTreeSet<_>>().len() == truth.len() && l.len() > 300
    });
    let b_published = b.counter("ticklake_producer_records_total", "");
    assert!(
        b_published > 0.0,
        "the standby published nothing before its kill; log:\n{}",
        daemon_b.log_tail()
    );
    daemon_b.kill();
    let at_kill = lake_ids(&a).len();
    println!("B killed after publishing {b_published} records; {at_kill} trades in the lake");
    if long {
        // B back, then A killed while B alone holds the feed, then A back.
        std::thread::sleep(Duration::from_secs(5));
        daemon_b = b.start_daemon("b2");
        std::thread::sleep(Duration::from_secs(5));
        daemon_a.kill();
        println!("A killed; B holds the feed");
        std::thread::sleep(Duration::from_secs(8));
        daemon_a = a.start_daemon("a2");
    }
    let stored = settled_lake_ids(
        &a,
        &truth,
        Duration::from_secs(if long { 300 } else { 120 }),
    );
    let distinct: BTreeSet<_> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), distinct.len(), "a trade stored twice");
    let want = from_first_stored(&truth, &distinct);
    let lost: Vec<_> = want.difference(&distinct).take(10).collect();
    assert!(
        lost.is_empty(),
        "lost {} trades, e.g. {lost:?}; log of A:\n{}",
        want.difference(&distinct).count(),
        daemon_a.log_tail()
    );
    assert_eq!(distinct, want);
    // Kafka: each trade once, but for those taken over from a killed
    // daemon (which that daemon may have published already).
    let records = topic_records(&a, &brokers);
    let taken_over = a.counter("ticklake_dedup_redis_takeovers_total", "")
        + b.counter("ticklake_dedup_redis_takeovers_total", "");
    let extra = records - i64::try_from(distinct.len()).unwrap();
    assert!(
        extra >= 0,
        "{records} records on the topic for {} trades stored",
        distinct.len()
    );
    if long {
        // A's counter restarted with it: the bound is looser there.
        assert!(extra as f64 <= taken_over + 2000.0, "{extra} extra records");
    } else {
        assert!(
            extra as f64 <= taken_over,
            "{extra} records twice on the topic, {taken_over} taken over"
        );
    }
    let errors = a.counter("ticklake_dedup_redis_errors_total", "");
    assert_eq!(errors, 0.0, "redis errors on A");
    println!(
        "hot standby: {} trades stored once ({at_kill} at B's kill); topic {records} records, \
         {extra} twice, {taken_over} taken over from the killed daemon",
        stored.len()
    );
    drop(daemon_b);
    drop(daemon_a);
}
