//! The command line as a user meets it: config errors, env overrides, the
//! embedded default, and `ticklake replay` serving a real capture.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn run_expect_failure(args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut c = Command::new(bin());
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(!out.status.success(), "expected failure for {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn config_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "[kafka]\nbrokers = 42\n").unwrap();
    let err = run_expect_failure(&["run", "--config", f.to_str().unwrap()], &[]);
    assert!(
        err.contains("kafka.brokers") && err.contains(f.to_str().unwrap()),
        "{err}"
    );

    std::fs::write(&f, "[writer]\nmax_age_ms = 0\n").unwrap();
    let err = run_expect_failure(&["query", "--config", f.to_str().unwrap(), "select 1"], &[]);
    assert!(
        err.contains("writer.max_age_ms") && err.contains(f.to_str().unwrap()),
        "{err}"
    );

    let err = run_expect_failure(&["run"], &[("TICKLAKE_WRITER__MAX_ROWS", "lots")]);
    assert!(
        err.contains("writer.max_rows") && err.contains("TICKLAKE_WRITER__MAX_ROWS"),
        "{err}"
    );
}

#[test]
fn run_with_no_config_comes_up_on_the_embedded_default() {
    // Only the data directory, the HTTP port and (offline) the feed URL are
    // overridden, through the documented environment variables.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let dead_port = free_port();
    let log = dir.path().join("run.log");
    let child = Command::new(bin())
        .arg("run")
        .env("TICKLAKE_DATA_DIR", dir.path().join("data"))
        .env("TICKLAKE_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "TICKLAKE_FEEDS__BINANCE__URL",
            format!("ws://127.0.0.1:{dead_port}"),
        )
        .env("TICKLAKE_FEEDS__BINANCE__BACKOFF_INITIAL_MS", "50")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut p = Proc { child, log };
    p.wait_http(port, Duration::from_secs(60));
    // the feed keeps retrying a dead endpoint instead of dying
    wait_until("reconnect attempts", Duration::from_secs(30), || {
        let m = http_get(port, "/metrics").unwrap_or_default();
        metric_sum(&m, "ticklake_feed_connections_total", "outcome=\"failed\"") >= 3.0
    });
    assert!(dir.path().join("data/catalog.db").exists());
    // A second daemon on the same data directory would overwrite this
    // one's offsets and spill log: it refuses at once, naming the lock.
    let second = Command::new(bin())
        .arg("run")
        .env("TICKLAKE_DATA_DIR", dir.path().join("data"))
        .env(
            "TICKLAKE_HTTP__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second daemon started: {err}");
    assert!(
        err.contains("ticklake.lock") && err.contains("in use by another ticklake process"),
        "{err}"
    );
    // The daemon's query engine made its spill directory when it started.
    let spill = dir.path().join("data").join("query-spill");
    let own = spill.join(p.child.id().to_string());
    assert!(own.is_dir(), "no {}", own.display());
    let status = p.terminate();
    assert!(status.success(), "exit {status}:\n{}", p.log_tail());
    // A graceful stop takes it, and its SQL workers', with it.
    let left = entries(&spill);
    assert!(left.is_empty(), "left under {}: {left:?}", spill.display());
}

#[test]
fn replay_sends_only_received_frames_of_a_real_capture() {
    let cap = capture("BINANCE_US.ws.1.0.txt");
    let expected = received_frames(&cap);
    assert!(expected.len() > 100);
    let (_replay, url) = start_replay(&[cap], &[]);
    let got = collect_text_frames(&format!("{url}/stream?streams=compusdt@aggTrade"));
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
}

#[test]
fn replay_retime_plays_the_capture_as_if_live() {
    let cap = capture("BINANCE_US.ws.1.0.txt");
    let trade_times = |frames: &[String]| -> Vec<i64> {
        frames
            .iter()
            .filter_map(|f| serde_json::from_str::<serde_json::Value>(f).ok())
            .filter(|v| v["data"]["e"] == "aggTrade")
            .map(|v| v["data"]["T"].as_i64().unwrap())
            .collect()
    };
    let recorded = received_frames(&cap);
    let (_replay, url) = start_replay(&[cap], &["--retime"]);
    let started_ms = chrono::Utc::now().timestamp_millis();
    let got = collect_text_frames(&url);
    let (old, new) = (trade_times(&recorded), trade_times(&got));
    assert_eq!(old.len(), new.len());
    assert!(!new.is_empty());
    // The capture's first timestamped frame (a depth update, just before the
    // first trade) became "now"; the trade times moved by one common shift.
    let shift = new[0] - old[0];
    assert!(
        (new[0] - started_ms).abs() < 60_000,
        "first trade at {} is not near now {started_ms}",
        new[0]
    );
    for (o, n) in old.iter().zip(&new) {
        assert_eq!(n - o, shift, "gaps between trades are kept");
    }
}

/// `ticklake bench ARGS --json` on the embedded cluster, in a fresh
/// directory: its report.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .arg("bench")
        .args(args)
        .arg("--json")
        .current_dir(dir.path())
        .env("TICKLAKE_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The whole path: generated frames through the feed actor into the lake,
/// with both ceilings, the CPU per trade and where it went.
#[test]
fn bench_from_the_feed_commits_every_frame_and_reports_its_costs() {
    let r = bench_json(&["--trades", "3000", "--symbols", "20"]);
    assert_eq!(r["trades"], 3000);
    assert_eq!(r["symbols"], 20);
    let o = &r["outcomes"];
    assert_eq!(o["received"], 3000, "{r}");
    let settled = ["stored", "shed", "dead_lettered"]
        .iter()
        .map(|k| o[k].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert_eq!(settled, 3000, "every frame accounted for: {r}");
    assert_eq!(o["dead_lettered"].as_u64().unwrap_or(0), 0, "{r}");
    for k in [
        "end_to_end_per_s",
        "cpu_us_per_trade",
        "produce_ceiling_per_s",
        "round_trip_ceiling_per_s",
        "produce_ceiling_cpu_us",
        "round_trip_ceiling_cpu_us",
    ] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r}");
    }
    // On the embedded cluster each ceiling runs three times and keeps its
    // fastest run.
    for k in ["produce_ceiling", "round_trip_ceiling"] {
        let runs: Vec<f64> = r[format!("{k}_runs_per_s")]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(runs.len(), 3, "{k}: {r}");
        let fastest = runs.iter().copied().fold(0.0, f64::max);
        assert_eq!(
            r[format!("{k}_per_s")].as_f64().unwrap(),
            fastest,
            "{k}: {r}"
        );
    }
    let peak = r["peak_rss_bytes"].as_u64().unwrap();
    let before = r["rss_before_daemon_bytes"].as_u64().unwrap();
    assert!(before > 0 && before <= peak, "{r}");
    let threads = r["threads"].as_array().unwrap();
    let shares: f64 = threads.iter().map(|t| t["share"].as_f64().unwrap()).sum();
    assert!((shares - 1.0).abs() < 1e-6, "{r}");
    assert!(
        threads.iter().all(|t| t["name"] != "bench-exchange"),
        "the exchange's thread is not ours: {r}"
    );
    // Unpaced, then paced at falling fractions until one stays NORMAL.
    let search = r["normal_search"].as_array().unwrap();
    assert!(!search.is_empty(), "an unpaced run searches: {r}");
    let unpaced = r["end_to_end_per_s"].as_f64().unwrap();
    for run in std::iter::once(&r).chain(search) {
        let waits = &run["producer_waits"];
        assert!(
            waits["window"].is_u64() && waits["queue"].is_u64(),
            "the producer's waits by cause: {run}"
        );
    }
    let (falling_fractions, rising_fractions) = (
        ticklake::tools::bench::NORMAL_FRACTIONS,
        ticklake::tools::bench::RISING_FRACTIONS,
    );
    let top = rising_fractions[rising_fractions.len() - 1];
    let mut pids = std::collections::BTreeSet::from([r["pid"].as_u64().unwrap()]);
    for p in search {
        let offered = p["offered_per_s"].as_f64().unwrap();
        assert!(
            offered > 0.0 && offered <= unpaced * top * (1.0 + 1e-9),
            "{p}"
        );
        assert_eq!(p["trades"], 1500, "half the trades: {p}");
        // Each paced run in a fresh process, with no earlier daemon's
        // remains beside it.
        assert!(
            pids.insert(p["pid"].as_u64().unwrap()),
            "a process of its own: {r}"
        );
    }
    // Stepped fractions (falling, or rising when the first kept up) until
    // one changes the verdict, then the refining runs.
    let (stepped, refining): (Vec<_>, Vec<_>) = search.iter().partition(|p| p["refine"] == false);
    assert!(
        search[..stepped.len()].iter().all(|p| p["refine"] == false),
        "the refining runs come last: {r}"
    );
    let fraction = |p: &serde_json::Value| p["fraction"].as_f64().unwrap();
    let kept = |p: &serde_json::Value| p["sustained"] == true;
    let first_kept = kept(stepped[0]);
    let expected: Vec<f64> = if first_kept {
        std::iter::once(falling_fractions[0])
            .chain(rising_fractions)
            .collect()
    } else {
        falling_fractions.to_vec()
    };
    assert!(stepped.len() <= expected.len(), "{r}");
    for (p, f) in stepped.iter().zip(&expected) {
        assert_eq!(fraction(p), *f, "{p}");
    }
    // Every stepped run but the last agrees with the first: the steps stop
    // at the first whose verdict differs.
    let (last, before) = stepped.split_last().unwrap();
    assert!(
        before.iter().all(|p| kept(p) == first_kept),
        "the steps stop at the first verdict that differs: {r}"
    );
    if kept(last) != first_kept {
        // Halving the step between the highest that kept up and the lowest
        // that did not: each refining run inside what is known so far.
        assert_eq!(refining.len(), ticklake::tools::bench::REFINE_STEPS, "{r}");
        let (a, b) = (fraction(last), fraction(before.last().unwrap()));
        let (mut low, mut high) = if kept(last) { (a, b) } else { (b, a) };
        for q in &refining {
            let f = fraction(q);
            assert!(
                (f - (low + high) / 2.0).abs() < 1e-12,
                "halves the step: {r}"
            );
            if kept(q) {
                low = f;
            } else {
                high = f;
            }
        }
    } else {
        // Every step kept up, or none did: each was tried, and there is
        // nothing to refine.
        assert_eq!(stepped.len(), expected.len(), "no step left untried: {r}");
        assert!(refining.is_empty(), "{r}");
    }
    let best = search
        .iter()
        .filter(|p| p["sustained"] == true)
        .max_by(|a, b| fraction(a).total_cmp(&fraction(b)));
    match (r["sustained_normal_per_s"].as_f64(), best) {
        (Some(rate), Some(p)) => {
            assert_eq!(p["max_level"], "NORMAL", "{p}");
            assert_eq!(p["enrichment_skipped"], 0, "{p}");
            assert_eq!(rate, p["received_per_s"].as_f64().unwrap(), "{r}");
        }
        (None, None) => assert_eq!(
            search.len(),
            falling_fractions.len(),
            "every fraction tried: {r}"
        ),
        _ => panic!("the rate and the sustained runs disagree: {r}"),
    }
    println!("bench --from feed (debug build, 3000 trades): {r}");
}

#[test]
fn bench_reports_end_to_end_and_raw_rates_on_the_embedded_cluster() {
    let r = bench_json(&["--from", "lanes", "--trades", "3000"]);
    assert_eq!(r["trades"], 3000);
    assert!(r["record_bytes"].as_u64().unwrap() > 50, "{r}");
    assert!(r["raw_produce_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["end_to_end_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["commits"].as_u64().unwrap() >= 1, "{r}");
    println!("bench (debug build, 3000 trades): {r}");
}

#[test]
fn query_without_a_daemon_is_read_only() {
    // No daemon answers on the port, so `ticklake query` reads the lake
    // itself: an INSERT there would commit a snapshot without Kafka offsets,
    // a COPY would write files. Both are refused; a SELECT still answers.
    let dir = tempfile::tempdir().unwrap();
    let envs = [
        ("TICKLAKE_DATA_DIR", dir.path().join("data")),
        (
            "TICKLAKE_HTTP__LISTEN",
            format!("127.0.0.1:{}", free_port()).into(),
        ),
    ];
    let query = |sql: &str| {
        let mut c = Command::new(bin());
        c.args(["query", "--format", "json", sql])
            .current_dir(dir.path());
        for (k, v) in &envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let rows = |sql: &str| {
        let out = query(sql);
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    // The metadata table, whole: its provider ignores a projection.
    let snapshots = || rows("select * from market.\"trades$snapshots\"").len();
    let before = snapshots();
    let abs = dir.path().join("abs.csv");
    let parquet = dir.path().join("trades.parquet");
    for (sql, kind) in [
        ("insert into market.trades (symbol) values ('X')", "INSERT"),
        (
            "insert into market.trades select * from market.trades",
            "INSERT",
        ),
        ("copy (select 1) to 'out.csv'", "COPY"),
        (&format!("copy (select 1) to '{}'", abs.display()), "COPY"),
        (
            &format!("copy market.trades to '{}'", parquet.display()),
            "COPY",
        ),
        ("create table market.evil as select 1", "CREATE TABLE"),
        ("select 1; drop table market.trades", "only one statement"),
    ] {
        let out = query(sql);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sql:?} was not refused");
        let said = err.lines().find(|l| l.contains("refused")).unwrap_or("");
        println!("{sql} -> exit {:?}: {said}", out.status.code());
        assert!(
            err.contains("refused") && err.contains(kind),
            "{sql:?}: {err}"
        );
    }
    let n = rows("select count(*) as n from market.trades");
    assert_eq!(n[0]["n"], 0, "{n:?}");
    assert_eq!(
        snapshots(),
        before,
        "a refused statement committed a snapshot"
    );
    for f in [dir.path().join("out.csv"), abs, parquet] {
        assert!(!f.exists(), "COPY wrote {}", f.display());
    }
    // Every `ticklake query` above has exited, and each took its spill
    // directory (and its SQL worker's) with it.
    let spill = dir.path().join("data").join("query-spill");
    let left = entries(&spill);
    assert!(left.is_empty(), "left under {}: {left:?}", spill.display());
}

/// The names in `dir` (none when it does not exist).
fn entries(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect()
}
