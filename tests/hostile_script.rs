//! Acceptance A of the hostile-input work: `scripts/hostile_sql.py`, the
//! script an operator fires at any running daemon, against the real binary
//! while a recorded capture streams in. Every class must be answered with
//! its refusal or failure, `/healthz` must answer after each, the process
//! must be the same one throughout, and ingest must go on.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn received(env: &Env) -> u64 {
    let s: Value =
        serde_json::from_str(&http_get(env.http_port, "/status").expect("/status answers"))
            .unwrap();
    s["accounting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["received"].as_u64().unwrap())
        .sum()
}

#[test]
fn the_hostile_sql_script_passes_against_an_ingesting_daemon() {
    let python = python();
    // Looped and live, so frames keep arriving while the requests land.
    let (_replay, url) = start_replay(
        &[capture("BINANCE-ee25be.0.txt")],
        &["--live", "--loop", "--rate", "500"],
    );
    // Two query slots and a 5 s limit keep the slow classes short on a
    // small machine; the script finds the slots' edge with its flood.
    let env = Env::new(
        "embedded",
        Some(&url),
        "[api]\ntimeout_ms = 5000\nmax_concurrent = 2\n",
    );
    env.capture_feed();
    let mut daemon = env.start_daemon("daemon");
    wait_until("frames received", Duration::from_secs(60), || {
        received(&env) > 0
    });

    let out = Command::new(&python)
        .arg(scripts_dir().join("hostile_sql.py"))
        .args(["--url", &format!("http://127.0.0.1:{}", env.http_port)])
        .args(["--pid", &daemon.child.id().to_string()])
        .args(["--flood", "8"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "hostile_sql.py exited {:?}\n{stdout}\n{}\ndaemon log:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        daemon.log_tail()
    );
    let passed = stdout.lines().filter(|l| l.starts_with("PASS ")).count();
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(passed >= 20, "only {passed} classes ran:\n{stdout}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("summary: "))
        .unwrap_or_else(|| panic!("no summary line:\n{stdout}"));
    assert!(
        summary.starts_with(&format!(
            "summary: classes={passed} passed={passed} failed checks=0;"
        )),
        "{summary}"
    );
    // The copying classes ended SQL workers, not the daemon: each such
    // statement ran out of its worker's address space and was counted.
    let lost_to_memory = env.counter("ticklake_query_workers_lost_total", "cause=\"memory\"");
    assert!(
        lost_to_memory >= 4.0,
        "the copying statements should each end a worker on memory; lost: {lost_to_memory}"
    );
    // The workers killed mid-spill (the sort past the memory limit spills
    // until its deadline) left no spill files: each worker's directory
    // under the data directory went with it, and what is left belongs to
    // processes still running (the daemon's own engine, idle workers).
    let spill = env.data_dir().join("query-spill");
    wait_until_explained(
        || spill_of_the_dead(&spill).is_empty(),
        Duration::from_secs(10),
        || {
            format!(
                "spill left by dead processes: {:?}",
                spill_of_the_dead(&spill)
            )
        },
    );
    let left: u64 = walkdir::WalkDir::new(&spill)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    println!("spill files left under {}: {left} bytes", spill.display());
    assert_eq!(left, 0, "spill files outlived their queries");
    // The daemon that took all of it is the one that was started, and it
    // still stops gracefully.
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon exited:\n{}",
        daemon.log_tail()
    );
    let status = daemon.terminate();
    assert!(status.success(), "exit {status}:\n{}", daemon.log_tail());
}

/// The spill directories under `root` whose process (named by pid) is gone.
fn spill_of_the_dead(root: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        .collect()
}
