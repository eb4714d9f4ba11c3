//! `ticklake chaos` end to end, on the embedded default: every fault with
//! short phases must end with the proof passing (tier-1 loss 0) and the
//! report written; and with one tier-1 trade withheld by the venue
//! (`--drop-one-tier1`) the proof must fail, exit non-zero and name the
//! check. The two runs are serialized: each measures the sustainable rate
//! of the machine, which a second daemon beside it would change.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn chaos(report: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ticklake"))
        .arg("chaos")
        .arg("--report")
        .arg(report)
        .arg("--quiet")
        .args(args)
        .env_remove("TICKLAKE_CONFIG")
        .env_remove("TICKLAKE_KAFKA__BROKERS")
        .output()
        .expect("running ticklake chaos")
}

fn secs() -> String {
    std::env::var("TICKLAKE_TEST_CHAOS_SECS").unwrap_or_else(|_| "5".into())
}

#[test]
fn every_fault_ends_with_the_proof_passing_and_the_report_written() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let out = chaos(&report, &["--scenario", "all", "--seconds", &secs()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("tier-1 loss: 0"), "{stdout}");
    assert!(stdout.contains("PASS:"), "{stdout}");

    let json: Value =
        serde_json::from_slice(&std::fs::read(report.join("timeline.json")).unwrap()).unwrap();
    assert_eq!(json["passed"], true);
    assert_eq!(json["proof"]["tier1_loss"], 0);
    assert_eq!(
        json["daemon_runs"], 2,
        "the kill step restarts the daemon once"
    );
    let faults: Vec<&str> = json["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for f in [
        "overload",
        "broker down",
        "broker +",
        "slow store",
        "failing commits",
        "kill -9",
    ] {
        assert!(
            faults.iter().any(|n| n.starts_with(f)),
            "{f} not in {faults:?}"
        );
    }
    // Overload was real: the level rose (how far, and so whether tiers 2-3
    // shed, depends on the machine and the phase's length; the proof
    // counts whatever was shed), and tier 1 was never shed.
    let samples = json["samples"].as_array().unwrap();
    assert!(samples.iter().any(|s| s["level_n"].as_u64().unwrap() >= 1));
    let rows = json["proof"]["rows"].as_array().unwrap();
    let shed = |tier: &str| {
        rows.iter()
            .find(|r| r["tier"] == tier)
            .map_or(0, |r| r["shed"].as_u64().unwrap())
    };
    assert_eq!(shed("1"), 0);
    println!("shed: tier 2 {}, tier 3 {}", shed("2"), shed("3"));

    let svg = std::fs::read_to_string(report.join("timeline.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<polyline") && svg.contains("kill -9"));
}

#[test]
fn a_withheld_tier1_trade_fails_the_proof_and_names_the_check() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let out = chaos(
        &report,
        &[
            "--scenario",
            "none",
            "--seconds",
            "2",
            "--max-rate",
            "1000",
            "--drop-one-tier1",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("tier-1 loss: 1"), "{stdout}");
    assert!(
        stdout.contains("[FAIL] BINANCE.tier1.loss") && stdout.contains("FAIL: "),
        "{stdout}"
    );
    let json: Value =
        serde_json::from_slice(&std::fs::read(report.join("timeline.json")).unwrap()).unwrap();
    assert_eq!(json["passed"], false);
    assert_eq!(json["proof"]["tier1_loss"], 1);
}
