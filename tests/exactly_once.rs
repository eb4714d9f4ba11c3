//! Acceptance D: records produced once to Tansu land exactly once even when
//! the daemon is SIGKILLed mid-write again and again.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn sigkill_during_writes_never_duplicates_or_loses() {
    let brokers = tansu();
    let env = Env::new(&brokers, None, "");
    // small, frequent commits so kills land between and during commits
    env.set("writer", "max_rows", "25");
    env.set("writer", "max_age_ms", "150");

    let out = Command::new(bin())
        .args(["produce", "--config"])
        .arg(&env.config)
        .arg("--capture")
        .arg(capture("BINANCE-ee25be.0.txt"))
        .env("TICKLAKE_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "produce: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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

/// Item 9's kill loop: the daemon is SIGKILLed at random points while a
/// capture streams in from a replay server and while the topic drains, and
/// started again on the same data directory each time. Every connection is
/// served the whole capture again, so a trade may reach the broker several
/// times; the lake must end with every trade of the capture exactly once,
/// and hold no second copy at any kill. `TICKLAKE_TEST_KILLS` sets the number of
/// kills (default 8; the long form is 50), `TICKLAKE_TEST_KILL_SEED` the seed of
/// the random kill points (printed, so a failure can be replayed).
#[test]
fn sigkill_at_random_points_while_streaming_and_draining_loses_and_doubles_nothing() {
    use rand::{Rng, SeedableRng};
    let brokers = tansu();
    let kills: u32 = std::env::var("TICKLAKE_TEST_KILLS")
        .ok()
        .map(|v| v.parse().expect("TICKLAKE_TEST_KILLS is a number"))
        .unwrap_or(8);
    let seed: u64 = std::env::var("TICKLAKE_TEST_KILL_SEED")
        .ok()
        .map(|v| v.parse().expect("TICKLAKE_TEST_KILL_SEED is a number"))
        .unwrap_or_else(rand::random);
    println!("kills {kills}, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let path = capture("BINANCE-ee25be.0.txt");
    let truth = truth(&received_frames(&path));
    let distinct: std::collections::BTreeSet<(String, i64)> =
        truth.iter().map(|t| (t.symbol.clone(), t.id)).collect();
    let expected = distinct.len() as i64;
    // A pass of the capture's frames takes several seconds.
    let (mut replay, url) = start_replay(&[path], &["--rate", "1000"]);
    let env = Env::new(&brokers, Some(&url), "");
    env.capture_feed();
    env.set("writer", "max_rows", "50");
    env.set("writer", "max_age_ms", "200");

    let mut log = Vec::new();
    for round in 0..kills {
        let mut d = env.start_daemon(&format!("daemon{round}"));
        // From the first frames of a pass to well after it ended (the
        // topic draining, commits running).
        let after = Duration::from_millis(rng.random_range(0..6000));
        std::thread::sleep(after);
        d.kill();
        let rows =
            env.query("select count(*) as n, count(distinct message_id) as d from market.trades");
        let (n, dn) = (
            rows[0]["n"].as_i64().unwrap(),
            rows[0]["d"].as_i64().unwrap(),
        );
        log.push((after.as_millis(), n));
        assert_eq!(n, dn, "a second copy committed after kill {round}");
    }
    println!("kill points (ms after start) and rows committed: {log:?}");
    assert!(
        log.iter().any(|(_, n)| *n < expected),
        "every kill came after the end; nothing was killed mid-stream"
    );

    let d = env.start_daemon("final");
    wait_until(
        "every trade of the capture committed",
        Duration::from_secs(120),
        || env.count("select count(*) from market.trades") >= expected,
    );
    std::thread::sleep(Duration::from_secs(1));
    replay.kill();
    let rows =
        env.query("select count(*) as n, count(distinct message_id) as d from market.trades");
    println!(
        "after {kills} kills: {} (capture holds {expected} trades)",
        rows[0]
    );
    assert_eq!(rows[0]["n"].as_i64().unwrap(), expected, "{}", d.log_tail());
    assert_eq!(rows[0]["d"].as_i64().unwrap(), expected);
}
