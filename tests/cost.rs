//! `ticklake cost` on a real lake: the daemon (embedded broker) stores a
//! recorded Binance capture played by `ticklake replay`, stops, and the
//! command's bytes per trade must be the table's Parquet bytes over its
//! rows, both found here without ticklake's Iceberg code: the files by
//! walking the warehouse, the rows by `ticklake query`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Every `.parquet` file under `dir`: how many, and their bytes.
fn parquet_files(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                files += 1;
                bytes += std::fs::metadata(&p).unwrap().len();
            }
        }
    }
    (files, bytes)
}

fn cost(env: &Env, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("cost")
        .arg("--config")
        .arg(&env.config)
        .arg("--prices")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prices.toml"))
        .args(args)
        .env("TICKLAKE_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn cost_reads_bytes_per_trade_from_the_lakes_files() {
    let capture = capture("BINANCE-ee25be.0.txt");
    let want = truth(&received_frames(&capture)).len();
    assert!(want > 0);
    let (_replay, url) = start_replay(&[capture], &[]);
    let env = Env::new("embedded", Some(&url), "");
    env.one_pass_feed();

    // Before the daemon has made a lake, the command says there is none.
    let out = cost(
        &env,
        &["--rate", "BINANCE=1000", "--cpu-us-per-trade", "10"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--bytes-per-trade"),
        "{err}"
    );

    let mut daemon = env.start_daemon("daemon");
    wait_until("the capture committed", Duration::from_secs(120), || {
        env.counter("ticklake_writer_rows_total", "table=\"trades\"") >= want as f64
    });
    assert!(daemon.terminate().success(), "{}", daemon.log_tail());

    let rows = env.count("select count(*) from market.trades");
    assert_eq!(rows, want as i64);
    // No maintenance ran (its first run is 10 minutes after the start),
    // so every Parquet file of the trades table is live.
    let (files, bytes) = parquet_files(&env.data_dir().join("warehouse/market/trades"));
    assert!(files > 0 && bytes > 0);

    let out = cost(
        &env,
        &[
            "--rate",
            "BINANCE=1000",
            "--rate",
            "kraken=500",
            "--cpu-us-per-trade",
            "10",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let from = &report["bytes_per_trade_from"];
    assert_eq!(from["from"], "lake", "{report}");
    assert_eq!(from["rows"].as_u64(), Some(rows as u64), "{report}");
    assert_eq!(from["files"].as_u64(), Some(files), "{report}");
    assert_eq!(from["bytes"].as_u64(), Some(bytes), "{report}");
    let per_trade = report["inputs"]["bytes_per_trade"].as_f64().unwrap();
    assert!(per_trade > 0.0);
    // Equal but for the last bit JSON's decimal form may round away.
    let expected = bytes as f64 / rows as f64;
    assert!(
        (per_trade - expected).abs() <= expected * 1e-12,
        "{per_trade} {expected}"
    );
    let e = &report["estimate"];
    assert_eq!(e["trades_per_sec"].as_f64(), Some(1500.0));
    assert_eq!(e["exchanges"].as_u64(), Some(2));
    let total: f64 = e["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["per_month"].as_f64().unwrap())
        .sum();
    assert!(total > 0.0 && (total - e["total_per_month"].as_f64().unwrap()).abs() < 1e-6);
    assert!(report["prices"]["as_of"].is_string());

    // The table a person reads names the measured figure and the sheet.
    let out = cost(
        &env,
        &["--rate", "BINANCE=1000", "--cpu-us-per-trade", "10"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        format!("{bytes} bytes in {files} files / {rows} rows"),
        "as listed on".to_string(),
        "Kafka retention".to_string(),
        "total".to_string(),
    ] {
        assert!(text.contains(&needle), "{needle:?} not in\n{text}");
    }
}
