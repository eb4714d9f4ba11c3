//! Acceptance D: records produced once to Tansu land exactly once even when
//! the daemon is SIGKILLed mid-write again and again.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn sigkill_during_writes_never_duplicates_or_loses() {
    let brokers = tansu();
    let env = Env::new(&brokers, None, "");
    // small, frequent commits so kills land between and during commits
    env.set("writer", "max_rows", "25");
    env.set("writer", "max_age_ms", "150");

    let report = produce(&env.config, &capture("BINANCE-ee25be.0.txt"));
    let produced = report["trades"].as_i64().unwrap();
    assert!(produced > 1900, "produced {report}");
    println!("produced {report}");

    let mut committed_at_kill = Vec::new();
    for round in 0..6u32 {
        let mut d = env.start_daemon(&format!("daemon{round}"));
        // Kill after a varying number of this process's commits, plus a
        // varying delay, so the kill lands in different phases of a flush.
        let commits_before_kill = 2.0 + f64::from(round);
        let start = Instant::now();
        while env.counter(
            "ticklake_writer_commits_total",
            "outcome=\"ok\",table=\"trades\"",
        ) < commits_before_kill
            && start.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(u64::from(round) * 7 % 25));
        d.kill();
        let n = env.count("select count(*) from market.trades");
        committed_at_kill.push(n);
        // nothing committed is ever lost or doubled, even mid-run
        assert_eq!(
            n,
            env.count("select count(distinct message_id) from market.trades")
        );
    }
    println!("rows committed at each SIGKILL: {committed_at_kill:?}");
    assert!(
        committed_at_kill.iter().any(|n| *n < produced),
        "every kill came after the end; the test did not kill mid-write"
    );

    let d = env.start_daemon("final");
    wait_until("every record committed", Duration::from_secs(120), || {
        env.count("select count(*) from market.trades") >= produced
    });
    std::thread::sleep(Duration::from_secs(1));
    let rows =
        env.query("select count(*) as n, count(distinct message_id) as d from market.trades");
    println!(
        "after {} kills: {} (produced {produced})",
        committed_at_kill.len(),
        rows[0]
    );
    assert_eq!(
        rows[0]["n"].as_i64().unwrap(),
        produced,
        "log:\n{}",
        d.log_tail()
    );
    assert_eq!(rows[0]["d"].as_i64().unwrap(), produced);
}

/// The capture's aggTrade frames with every id moved by `copy × 10^10`,
/// so each copy is new trades; returns the file and its trade count.
fn renumbered(dir: &std::path::Path, copy: i64) -> (std::path::PathBuf, i64) {
    let mut lines = Vec::new();
    for f in received_frames(&capture("BINANCE-ee25be.0.txt")) {
        let mut v: serde_json::Value = serde_json::from_str(&f).unwrap();
        let d = v.get_mut("data").unwrap();
        if d["e"] != "aggTrade" {
            continue;
        }
        for k in ["a", "f", "l"] {
            let id = d[k].as_i64().unwrap();
            d[k] = serde_json::Value::from(id + copy * 10_000_000_000);
        }
        lines.push(serde_json::to_string(&v).unwrap());
    }
    let path = dir.join(format!("copy{copy}.txt"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (path, lines.len() as i64)
}

/// Item 9's kill loop: the daemon is SIGKILLed at random points while a
/// capture streams in from a replay server and while the topic drains, and
/// started again on the same data directory each time. Round `k` streams
/// copy `k - 1` of the capture again, then copy `k`, new trades. What a
/// killed run had received and not yet handed to the broker dies with it,
/// as it would with a live exchange; the last run is served every copy
/// again, as a backfill would, and must store exactly what is missing. So:
/// the committed rows never shrink from one kill to the next, never hold a
/// second copy, and end as every trade of every copy exactly once.
/// `TICKLAKE_TEST_KILLS` sets the number of kills (default 8; the long form
/// is 50), `TICKLAKE_TEST_KILL_SEED` the seed of the random kill points
/// (printed, so a failure can be replayed).
#[test]
fn sigkill_at_random_points_while_streaming_and_draining_loses_and_doubles_nothing() {
    use rand::{Rng, SeedableRng};
    let brokers = tansu();
    let kills: i64 = std::env::var("TICKLAKE_TEST_KILLS")
        .ok()
        .map(|v| v.parse().expect("TICKLAKE_TEST_KILLS is a number"))
        .unwrap_or(8);
    let seed: u64 = std::env::var("TICKLAKE_TEST_KILL_SEED")
        .ok()
        .map(|v| v.parse().expect("TICKLAKE_TEST_KILL_SEED is a number"))
        .unwrap_or_else(rand::random);
    println!("kills {kills}, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let work = tempfile::tempdir().unwrap();

    // This test is about kills, not overload: the degradation levels never
    // shed or spill here (a full lane makes the feed wait instead), so
    // every trade a run received either reaches the broker or dies with it.
    let env = Env::new(
        &brokers,
        Some("ws://127.0.0.1:9/unused"),
        r#"
[degradation.thresholds]
consumer_lag = [1.0e12, 2.0e12, 3.0e12, 4.0e12]
lane_depth = [2.0, 3.0, 4.0, 5.0]
producer_queue = [1.0e12, 2.0e12, 3.0e12, 4.0e12]
"#,
    );
    // Each run connects once: a pass of its replay, then no reconnect.
    env.one_pass_feed();
    // Commits every 200 ms, so kills land before, during and after them;
    // rows enough per commit that the backlog the kills leave in the topic
    // (mostly copies already committed) drains at a useful pace.
    env.set("writer", "max_rows", "1000");
    env.set("writer", "max_age_ms", "200");

    // A round's replay: the previous copy again, then a new one, at a rate
    // where a pass of both takes several seconds.
    let replay_copies = |copies: std::ops::Range<i64>, rate: &str| {
        let mut files = Vec::new();
        let mut trades = 0;
        for c in copies {
            let (p, n) = renumbered(work.path(), c);
            files.push(p);
            trades = n;
        }
        let (replay, url) = start_replay(&files, &["--rate", rate]);
        env.set("feeds.binance", "url", &format!("\"{url}\""));
        (replay, trades)
    };

    let mut log = Vec::new();
    let mut per_copy = 0;
    let mut mid_stream = 0;
    for round in 0..kills {
        let (mut replay, n_copy) = replay_copies((round - 1).max(0)..round + 1, "500");
        per_copy = n_copy;
        let mut d = env.start_daemon(&format!("daemon{round}"));
        let after = Duration::from_millis(rng.random_range(0..6000));
        std::thread::sleep(after);
        d.kill();
        replay.kill();
        let rows =
            env.query("select count(*) as n, count(distinct message_id) as d from market.trades");
        let (n, dn) = (
            rows[0]["n"].as_i64().unwrap(),
            rows[0]["d"].as_i64().unwrap(),
        );
        if n < (round + 1) * per_copy {
            mid_stream += 1;
        }
        let before = log.last().map_or(0, |(_, n)| *n);
        log.push((after.as_millis(), n));
        assert_eq!(n, dn, "a second copy committed after kill {round}");
        assert!(n >= before, "committed rows went from {before} to {n}");
    }
    println!("kill points (ms after start) and rows committed: {log:?}");
    println!("{mid_stream} of {kills} kills came before the round's trades were all committed");
    assert!(mid_stream > 0, "no kill came mid-stream");

    // The last run: every copy again, quickly, and no kill.
    let (mut replay, _) = replay_copies(0..kills, "5000");
    let expected = kills * per_copy;
    let d = env.start_daemon("final");
    wait_until(
        "every trade of every copy committed",
        Duration::from_secs(600),
        || env.count("select count(*) from market.trades") >= expected,
    );
    std::thread::sleep(Duration::from_secs(1));
    let rows =
        env.query("select count(*) as n, count(distinct message_id) as d from market.trades");
    println!(
        "after {kills} kills: {} ({kills} copies of {per_copy} trades)",
        rows[0]
    );
    assert_eq!(rows[0]["n"].as_i64().unwrap(), expected, "{}", d.log_tail());
    assert_eq!(rows[0]["d"].as_i64().unwrap(), expected);
    // The last run's own account, down to the lake: what it published is
    // stored or dropped as a second copy; rows the killed runs published
    // and it committed are carried over; nothing is lost.
    let started = Instant::now();
    let s = loop {
        let s: serde_json::Value =
            serde_json::from_str(&http_get(env.http_port, "/status").unwrap_or_default())
                .unwrap_or_default();
        if s["accounting_settled"] == true {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the last run's accounting did not settle: {}\nlake {}",
            s["accounting"],
            s["lake"]
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    for a in s["accounting"].as_array().unwrap() {
        println!("last run: {a}");
        assert_eq!(
            a["published"].as_i64(),
            Some(a["stored"].as_i64().unwrap() + a["deduplicated_at_writer"].as_i64().unwrap())
        );
    }
    assert_eq!(s["lake"]["lost_records"], 0);
    replay.kill();
}
