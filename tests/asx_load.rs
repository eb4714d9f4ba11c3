//! Acceptance E: `ticklake load asx` lands every ASX trade of the sample
//! through Avro, the real Tansu broker and the lake writer, as exchange ASX
//! and asset class equities, with prices and times equal to the CSV rows.
//! The expected values are read from the CSV files here, independently of
//! the loader.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use common::*;

/// The ASX sample shipped in `tests/fixtures/asx`, or where
/// `TICKLAKE_TEST_ASX_DIR` says. Missing data fails the test.
fn asx_dir() -> PathBuf {
    let dir = std::env::var("TICKLAKE_TEST_ASX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/asx"));
    assert!(
        dir.join("trades").is_dir(),
        "ASX sample not found at {}: set TICKLAKE_TEST_ASX_DIR",
        dir.display()
    );
    dir
}

/// One CSV row as the lake should hold it: Sydney time is UTC+11 on every
/// day of the sample (10–14 March 2014, daylight saving).
struct Expected {
    trade_id: String,
    symbol: String,
    price: String,
    quantity: String,
    time_us: i64,
}

fn expected(symbol: &str, row: &str, line: usize) -> Expected {
    let c: Vec<&str> = row.split(',').collect();
    let local = chrono::NaiveDateTime::parse_from_str(
        &format!("{} {}", c[0], c[1]),
        "%m/%d/%Y %H:%M:%S%.f",
    )
    .unwrap();
    Expected {
        trade_id: format!("ASX-{symbol}-{}-{line}", c[0].replace('/', "")),
        symbol: symbol.to_string(),
        price: dec8(c[2]),
        quantity: dec8(c[3]),
        time_us: local.and_utc().timestamp_micros() - 11 * 3_600_000_000,
    }
}

#[test]
fn load_asx_lands_every_trade_exactly_once() {
    let brokers = tansu();
    let dir = asx_dir();
    let companies: HashMap<String, String> =
        std::fs::read_to_string(dir.join("reference-data/company_info.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut c = l.split(',');
                Some((c.next()?.to_string(), c.next()?.to_string()))
            })
            .collect();
    let mut rows = 0usize;
    let mut spot = Vec::new();
    for entry in std::fs::read_dir(dir.join("trades")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "csv") {
            continue;
        }
        let symbol = &companies[path.file_stem().unwrap().to_str().unwrap()];
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<(usize, &str)> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, l))
            .collect();
        rows += lines.len();
        // first, middle and last row of every file
        for idx in [0, lines.len() / 2, lines.len() - 1] {
            let (line, row) = lines[idx];
            spot.push(expected(symbol, row, line));
        }
    }
    assert!(rows > 200_000, "{rows} CSV rows");

    let env = Env::new(&brokers, None, "");
    env.set("writer", "max_rows", "100000");
    env.set("writer", "max_age_ms", "1000");
    let load = || {
        Command::new(bin())
            .args(["load", "asx", "--config"])
            .arg(&env.config)
            .arg("--dir")
            .arg(&dir)
            .env("TICKLAKE_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = load();
    assert!(
        out.status.success(),
        "load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("load report: {report}");
    assert_eq!(report["trades"].as_u64(), Some(rows as u64));

    let counts = env.query(
        "select count(*) as n, count(distinct message_id) as ids, \
         count(*) filter (where asset_class = 'equities' and currency = 'AUD') as equities \
         from market.trades where exchange = 'ASX'",
    );
    println!("market.trades where exchange = 'ASX': {}", counts[0]);
    assert_eq!(counts[0]["n"].as_u64(), Some(rows as u64));
    assert_eq!(counts[0]["ids"].as_u64(), Some(rows as u64));
    assert_eq!(counts[0]["equities"].as_u64(), Some(rows as u64));
    assert_eq!(env.count("select count(*) from market.trades"), rows as i64);

    let ids: Vec<String> = spot.iter().map(|e| format!("'{}'", e.trade_id)).collect();
    let stored = env.query(&format!(
        "select trade_id, symbol, cast(price as varchar) as price, cast(quantity as varchar) as quantity, \
         cast(\"timestamp\" as bigint) as ts from market.trades where trade_id in ({})",
        ids.join(",")
    ));
    assert_eq!(stored.len(), spot.len(), "{stored:?}");
    for e in &spot {
        let r = stored
            .iter()
            .find(|r| r["trade_id"].as_str() == Some(&e.trade_id))
            .unwrap_or_else(|| panic!("{} missing", e.trade_id));
        assert_eq!(
            r["symbol"].as_str(),
            Some(e.symbol.as_str()),
            "{}",
            e.trade_id
        );
        assert_eq!(
            r["price"].as_str(),
            Some(e.price.as_str()),
            "{}",
            e.trade_id
        );
        assert_eq!(
            r["quantity"].as_str(),
            Some(e.quantity.as_str()),
            "{}",
            e.trade_id
        );
        assert_eq!(r["ts"].as_i64(), Some(e.time_us), "{}", e.trade_id);
    }
    println!("{} spot-checked rows match their CSV lines", spot.len());

    // A second load would store every trade twice; it is refused.
    let again = load();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already holds"), "{err}");
    assert_eq!(env.count("select count(*) from market.trades"), rows as i64);
}
