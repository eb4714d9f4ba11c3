//! Lake maintenance in a running daemon: while a capture streams in and
//! the writers commit every 300 ms, every two seconds the small files are
//! compacted and snapshots older than a second are expired. Every trade still lands once, the snapshot
//! count stays bounded, `/status` and `/metrics` show the runs, and after
//! a SIGKILL and a restart on the same data directory (the capture is
//! served again from its start) nothing is lost or doubled: the consumer's
//! positions come from the snapshot with offsets that expiry kept.
//! `ticklake maintain` refuses while the daemon holds the data directory
//! and runs once it is gone; pyiceberg then reads the compacted table and
//! gets every trade once. Embedded broker.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn status(env: &Env) -> Value {
    serde_json::from_str(&http_get(env.http_port, "/status").unwrap()).unwrap()
}

fn maintenance(env: &Env) -> Value {
    status(env)["tree"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "maintenance")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Distinct aggTrade ids per symbol in the capture: what the lake must
/// hold, each once.
fn truth_count() -> i64 {
    let mut ids = BTreeSet::new();
    for f in received_frames(&capture("BINANCE-ee25be.0.txt")) {
        let v: Value = serde_json::from_str(&f).unwrap();
        let d = &v["data"];
        if d["e"] == "aggTrade" {
            ids.insert((
                d["s"].as_str().unwrap().to_string(),
                d["a"].as_i64().unwrap(),
            ));
        }
    }
    ids.len() as i64
}

/// First and last trade time (ms) of BTCUSDT in the capture.
fn btc_span() -> (i64, i64) {
    let mut span = (i64::MAX, i64::MIN);
    for f in received_frames(&capture("BINANCE-ee25be.0.txt")) {
        let v: Value = serde_json::from_str(&f).unwrap();
        let d = &v["data"];
        if d["e"] == "aggTrade" && d["s"] == "BTCUSDT" {
            let t = d["T"].as_i64().unwrap();
            span = (span.0.min(t), span.1.max(t));
        }
    }
    span
}

fn lake_counts(env: &Env) -> (i64, i64) {
    let rows =
        env.query("select count(*) as n, count(distinct message_id) as d from market.trades");
    (
        rows[0]["n"].as_i64().unwrap(),
        rows[0]["d"].as_i64().unwrap(),
    )
}

/// The same through the hybrid table, which plans the lake side itself:
/// after compactions and expiry it must still see each trade once.
fn live_counts(env: &Env) -> (i64, i64) {
    let rows =
        env.query("select count(*) as n, count(distinct message_id) as d from market.trades_live");
    (
        rows[0]["n"].as_i64().unwrap(),
        rows[0]["d"].as_i64().unwrap(),
    )
}

fn snapshots(env: &Env) -> usize {
    // The metadata table answers whole rows only.
    env.query("select * from market.\"trades$snapshots\"").len()
}

fn maintain(env: &Env) -> std::process::Output {
    Command::new(bin())
        .args(["maintain", "--json", "--config"])
        .arg(&env.config)
        .env("TICKLAKE_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn expiry_keeps_every_trade_once_across_a_kill_and_bounds_the_snapshots() {
    let want = truth_count();
    let (_replay, url) = start_replay(&[capture("BINANCE-ee25be.0.txt")], &["--rate", "400"]);
    let env = Env::new(
        "embedded",
        Some(&url),
        "[maintenance]\ninterval_secs = 2\nsnapshot_retention = \"1s\"\n\
         compact_min_files = 4\ncompact_min_age = \"0s\"\norphan_min_age = \"1h\"\n",
    );
    env.one_pass_feed();
    let mut daemon = env.start_daemon("first");

    wait_until(
        "two maintenance runs that expired snapshots",
        Duration::from_secs(120),
        || {
            let m = maintenance(&env);
            m["runs"].as_u64().unwrap_or(0) >= 2
                && env.counter(
                    "ticklake_maintenance_snapshots_expired_total",
                    "market.trades",
                ) > 0.0
        },
    );
    let out = maintain(&env);
    assert!(!out.status.success(), "maintain ran beside the daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ticklake.lock"), "{err}");

    wait_until("every trade in the lake", Duration::from_secs(180), || {
        status(&env)["accounting_settled"] == true && lake_counts(&env).0 >= want
    });
    // One more run after the last commit.
    let runs = maintenance(&env)["runs"].as_u64().unwrap();
    wait_until("a run after the stream", Duration::from_secs(30), || {
        maintenance(&env)["runs"].as_u64().unwrap() > runs + 1
    });
    let m = maintenance(&env);
    println!("maintenance: {m}");
    let commits = env.counter(
        "ticklake_writer_commits_total",
        "outcome=\"ok\",table=\"trades\"",
    );
    let kept = snapshots(&env);
    let expired = env.counter(
        "ticklake_maintenance_snapshots_expired_total",
        "market.trades",
    );
    println!("trades commits {commits}, snapshots kept {kept}, expired {expired}");
    let compacted = |kind: &str| {
        env.counter(
            "ticklake_compaction_files_total",
            &format!("kind=\"{kind}\",table=\"market.trades\""),
        )
    };
    // Many runs, one sweep of each table: orphan_sweep_interval is a day.
    let sweeps = env.counter(
        "ticklake_maintenance_orphan_sweeps_total",
        "outcome=\"swept\",table=\"market.trades\"",
    );
    assert_eq!(sweeps, 1.0, "{m}");
    let (replaced, written) = (compacted("replaced"), compacted("written"));
    let data_files = env.counter("ticklake_lake_data_files", "table=\"market.trades\"");
    println!("compaction: {replaced} files replaced by {written}; {data_files} data files now");
    assert!(
        replaced >= 8.0 && written < replaced,
        "replaced {replaced}, written {written}"
    );
    assert!(
        data_files < commits / 2.0,
        "{data_files} data files after {commits} commits"
    );
    assert!(
        commits >= 10.0,
        "only {commits} commits: the stream was too short"
    );
    assert!(expired >= 5.0, "expired {expired}");
    // A second of retention and a two-second interval keep a handful.
    assert!(kept <= 20, "{kept} snapshots kept after {commits} commits");
    assert_eq!(m["failures"], 0, "{m}");
    assert_eq!(lake_counts(&env), (want, want));
    assert_eq!(live_counts(&env), (want, want));

    // SIGKILL once settled, then the same data directory again: the
    // capture is served again from its start, and every trade is a
    // duplicate.
    daemon.kill();
    let mut daemon = env.start_daemon("second");
    wait_until(
        "the replayed capture consumed",
        Duration::from_secs(180),
        || {
            let s = status(&env);
            s["accounting_settled"] == true
                && s["accounting"].as_array().is_some_and(|a| {
                    a.iter()
                        .map(|x| x["received"].as_i64().unwrap_or(0))
                        .sum::<i64>()
                        >= want
                })
        },
    );
    assert_eq!(
        lake_counts(&env),
        (want, want),
        "no trade lost or doubled across the kill"
    );
    // The minute bars summarized every trade once, across the kill too.
    let summarized = || env.count("select cast(sum(trades) as bigint) as n from market.ohlcv_1m");
    wait_until(
        "the bars cover every trade",
        Duration::from_secs(60),
        || summarized() >= want,
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(summarized(), want, "every trade in the minute bars once");
    // `/v1/ohlcv` from the bars (whole minutes) equals the raw way (a
    // start off the minute), for every interval.
    let (first_ms, last_ms) = btc_span();
    let day_ms = 86_400_000;
    let start = first_ms.div_euclid(day_ms) * day_ms;
    let end = (last_ms.div_euclid(day_ms) + 1) * day_ms;
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    for interval in ["1m", "5m", "15m", "1h", "1d"] {
        let bars = |from: i64| {
            let path = format!(
                "/v1/ohlcv?symbol=BTCUSDT&interval={interval}&start={}&end={}",
                iso(from),
                iso(end)
            );
            let (status, body) = http(env.http_port, "GET", &path, None);
            assert_eq!(status, 200, "{path}: {body}");
            body["bars"].clone()
        };
        let (fast, raw) = (bars(start), bars(start - 1));
        assert_eq!(fast, raw, "{interval}");
        if interval == "1d" {
            let n: i64 = fast
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["trades"].as_i64().unwrap())
                .sum();
            assert!(n > 0 && n < want, "{n}");
            println!(
                "ohlcv BTCUSDT 1d from the bars: {n} trades, equal to the raw way on every interval"
            );
        }
    }
    assert!(daemon.terminate().success(), "{}", daemon.log_tail());

    // What a crash between writing a commit's files and committing them
    // leaves: a Parquet file no snapshot references. Then every file of
    // the lake is made two hours old, past orphan_min_age, so only the
    // snapshots' references keep the table's own files from the sweep.
    let warehouse = env.data_dir().join("warehouse");
    let lake_files = || -> Vec<std::path::PathBuf> {
        walkdir::WalkDir::new(&warehouse)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .collect()
    };
    let a_data_file = lake_files()
        .into_iter()
        .find(|p| {
            p.to_string_lossy().contains("/trades/data/")
                && p.extension().is_some_and(|e| e == "parquet")
        })
        .expect("the trades table's data files");
    let orphan = a_data_file.with_file_name("00000-0-crashed-before-its-commit.parquet");
    std::fs::copy(&a_data_file, &orphan).unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for p in lake_files() {
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(two_hours_ago).unwrap();
    }

    // Now the data directory is free: `ticklake maintain` runs.
    let reports = maintain_reports(&env.config);
    println!("ticklake maintain: {reports:?}");
    assert_every_table(&reports);
    assert!(reports[0]["snapshots_after"].as_u64().unwrap() >= 1);
    for r in &reports {
        let o = &r["orphans"];
        assert!(o["refused"].is_null(), "{r}");
        assert_eq!(o["young"], 0, "{r}");
    }
    // The planted file, and any a killed commit left.
    assert!(reports[0]["orphans"]["deleted"].as_u64().unwrap() >= 1);
    assert!(!orphan.exists());
    assert_eq!(lake_counts(&env), (want, want));
    assert_eq!(live_counts(&env), (want, want));

    // Another engine reads the compacted table: every trade once.
    let py = env.pyiceberg(
        "pyiceberg_read.py",
        &[
            "--catalog-name",
            "ticklake",
            "--table",
            "market.trades",
            "--columns",
            "message_id",
        ],
    );
    let ids: BTreeSet<&str> = py["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message_id"].as_str().unwrap())
        .collect();
    println!("pyiceberg: {} rows, {} distinct", py["rows"], ids.len());
    assert_eq!(py["rows"].as_i64().unwrap(), want);
    assert_eq!(ids.len() as i64, want);
}

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} is a number")))
        .unwrap_or(default)
}

/// The capture's aggTrade frames, renumbered copy after copy until
/// `total` trades, with trade times from now on at `rate` a second, so the
/// daemon sees a live market: "the last 15 minutes" holds them.
fn live_capture(dir: &std::path::Path, total: u64, rate: u64) -> std::path::PathBuf {
    let frames: Vec<Value> = received_frames(&capture("BINANCE-ee25be.0.txt"))
        .iter()
        .map(|f| serde_json::from_str::<Value>(f).unwrap())
        .filter(|v| v["data"]["e"] == "aggTrade")
        .collect();
    let start_ms = chrono::Utc::now().timestamp_millis();
    let mut out = String::new();
    for i in 0..total {
        let mut v = frames[(i as usize) % frames.len()].clone();
        let copy = (i as usize / frames.len()) as i64;
        let d = v.get_mut("data").unwrap();
        for k in ["a", "f", "l"] {
            d[k] = Value::from(d[k].as_i64().unwrap() + copy * 10_000_000_000);
        }
        let t = start_ms + (i * 1000 / rate) as i64;
        d["T"] = Value::from(t);
        d["E"] = Value::from(t);
        out.push_str(&v.to_string());
        out.push('\n');
    }
    let path = dir.join("live.txt");
    std::fs::write(&path, out).unwrap();
    path
}

/// Median wall time of `n` GETs of `path`, in ms (reported, not judged).
fn latency_ms(env: &Env, path: &str, n: usize) -> f64 {
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let s = std::time::Instant::now();
            let (status, body) = http(env.http_port, "GET", path, None);
            assert_eq!(status, 200, "{path}: {body}");
            s.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[n / 2]
}

/// A daemon that lives: trades stream in at `TICKLAKE_TEST_SOAK_RATE` a
/// second (default 500) for `TICKLAKE_TEST_SOAK_SECS` (default 20; the
/// long form is 600 s at 2,000), the writer commits every 100 ms, and
/// maintenance runs every twentieth of the run (at least 5 s). Query
/// latency near the start and at the end, and the snapshot and file
/// counts, are printed; the counts must stay bounded by what retention and
/// compaction allow. Then SIGKILL and a restart: every trade once, in the
/// trades and in the minute bars.
#[test]
fn a_living_daemon_keeps_its_lake_bounded_and_exact() {
    let secs = knob("TICKLAKE_TEST_SOAK_SECS", 20);
    let rate = knob("TICKLAKE_TEST_SOAK_RATE", 500);
    let total = secs * rate;
    let dir = tempfile::tempdir().unwrap();
    let file = live_capture(dir.path(), total, rate);
    let (_replay, url) = start_replay(std::slice::from_ref(&file), &["--rate", &rate.to_string()]);
    let interval = (secs / 20).max(5);
    let retention = interval * 2;
    let env = Env::new(
        "embedded",
        Some(&url),
        &format!(
            "[maintenance]\ninterval_secs = {interval}\nsnapshot_retention = \"{retention}s\"\n\
             compact_min_files = 8\ncompact_min_age = \"{interval}s\"\n"
        ),
    );
    env.one_pass_feed();
    env.set("writer", "max_age_ms", "100");
    env.set("writer", "max_rows", "100000");
    let mut daemon = env.start_daemon("soak");
    // One minute back: once the first minute has streamed in, the window
    // holds as many trades at the start as at the end, so the two
    // latencies compare the lake's age, not the window's volume.
    let recent = "/v1/trades/recent?symbol=BTCUSDT&minutes=1&limit=1000";
    let day = |now_ms: i64| {
        let d = 86_400_000;
        let iso = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        format!(
            "/v1/ohlcv?symbol=BTCUSDT&interval=1m&start={}&end={}",
            iso(now_ms.div_euclid(d) * d),
            iso((now_ms.div_euclid(d) + 1) * d)
        )
    };
    let received = || {
        status(&env)["accounting"].as_array().map_or(0, |a| {
            a.iter()
                .map(|x| x["received"].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
    };
    // Both measured while the trades stream in: after the first minute
    // (or a tenth of a short run), and near the end.
    wait_until(
        "the first minute of trades",
        Duration::from_secs(secs * 3 + 60),
        || received() >= (rate * 70).min(total / 10),
    );
    let now = chrono::Utc::now().timestamp_millis();
    let start = (
        latency_ms(&env, recent, 11),
        latency_ms(&env, &day(now), 11),
    );
    wait_until(
        "nine tenths of the trades",
        Duration::from_secs(secs * 3 + 120),
        || received() >= total * 9 / 10,
    );
    let end = (
        latency_ms(&env, recent, 11),
        latency_ms(&env, &day(now), 11),
    );
    wait_until(
        "every trade in the lake",
        Duration::from_secs(secs * 3 + 120),
        || status(&env)["accounting_settled"] == true && lake_counts(&env).0 >= total as i64,
    );
    let gauge = |name: &str| env.counter(name, "table=\"market.trades\"");
    let commits = env.counter(
        "ticklake_writer_commits_total",
        "outcome=\"ok\",table=\"trades\"",
    );
    let (snaps, files) = (
        gauge("ticklake_lake_snapshots"),
        gauge("ticklake_lake_data_files"),
    );
    println!(
        "soak {secs} s at {rate}/s: {commits} trades commits; at the last maintenance run {snaps} snapshots, {files} data files; \
         recent 1 min (limit 1000) p50 {:.1} ms -> {:.1} ms, 1 day of 1m OHLCV p50 {:.1} ms -> {:.1} ms ({} build)",
        start.0,
        end.0,
        start.1,
        end.1,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    // What the runs cost the commit runtime, beside the ingest.
    let runs = env.counter(
        "ticklake_maintenance_duration_seconds_count",
        "table=\"market.trades\"",
    );
    let spent = env.counter(
        "ticklake_maintenance_duration_seconds_sum",
        "table=\"market.trades\"",
    );
    let m = maintenance(&env);
    println!(
        "maintenance of market.trades: {runs} runs, {spent:.2} s in all; compaction in all {} files replaced by {}; last run {}",
        env.counter(
            "ticklake_compaction_files_total",
            "kind=\"replaced\",table=\"market.trades\""
        ),
        env.counter(
            "ticklake_compaction_files_total",
            "kind=\"written\",table=\"market.trades\""
        ),
        m["tables"]
    );
    // What retention, the interval and compaction leave, with room for a
    // run's lag: commits every 100 ms over retention plus two intervals.
    let bound = ((retention + 2 * interval) * 10 + 50) as f64;
    assert!(
        snaps <= bound,
        "{snaps} snapshots kept (bound {bound}) after {commits} commits"
    );
    assert!(
        files <= bound,
        "{files} data files (bound {bound}) after {commits} commits"
    );
    assert_eq!(lake_counts(&env), (total as i64, total as i64));
    assert_eq!(live_counts(&env), (total as i64, total as i64));

    // SIGKILL, then the same data directory, served the trades again
    // quickly: nothing lost, nothing doubled.
    daemon.kill();
    let (_again, url) = start_replay(&[file], &["--rate", &(rate * 5).to_string()]);
    env.set("feeds.binance", "url", &format!("\"{url}\""));
    let mut daemon = env.start_daemon("soak-restarted");
    wait_until(
        "the trades served again",
        Duration::from_secs(secs + 120),
        || received() >= total && status(&env)["accounting_settled"] == true,
    );
    assert_eq!(
        lake_counts(&env),
        (total as i64, total as i64),
        "exactly once across the kill"
    );
    let summarized = || env.count("select cast(sum(trades) as bigint) as n from market.ohlcv_1m");
    wait_until(
        "the bars cover every trade",
        Duration::from_secs(60),
        || summarized() >= total as i64,
    );
    assert_eq!(
        summarized(),
        total as i64,
        "every trade in the minute bars once"
    );
    assert!(daemon.terminate().success(), "{}", daemon.log_tail());
}
