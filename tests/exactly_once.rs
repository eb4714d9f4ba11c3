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
