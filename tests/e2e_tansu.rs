//! Acceptance B and C: recorded Binance captures are replayed over a real
//! WebSocket, ingested by the daemon through the real Tansu broker, and land
//! in Iceberg with every value equal to its frame; pyiceberg reads the same.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn replayed_captures_land_in_iceberg_exactly() {
    let brokers = tansu();
    let (truth, replay, url) = replay_two_captures();
    let expected = truth.len() as i64;
    let env = Env::new(&brokers, Some(&url), "");
    let mut daemon = store_two_captures(&env, replay, expected);
    let rows =
        env.query("select count(*) as n, count(distinct message_id) as d from market.trades");
    println!("market.trades: {} (expected {expected})", rows[0]);
    assert_eq!(
        rows[0]["n"].as_i64().unwrap(),
        expected,
        "log:\n{}",
        daemon.log_tail()
    );
    assert_eq!(rows[0]["d"].as_i64().unwrap(), expected);
    assert_eq!(env.count("select count(*) from market.dead_letters"), 0);

    // Every row's symbol, price, quantity, side and timestamp equals its frame.
    assert_lake_holds_frames(&env, &truth);

    // Lag tools see the lake's position: after each Iceberg commit the group
    // committed the same offsets, so its lag drains to zero.
    let mut lag = serde_json::Value::Null;
    wait_until("group lag at zero", Duration::from_secs(30), || {
        lag = env.group_lag(&brokers);
        lag["lag"].as_i64() == Some(0)
    });
    let high: i64 = lag["partitions"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p["high"].as_i64().unwrap())
        .sum();
    assert_eq!(high, expected, "records on the topic: {lag}");
    println!("consumer group lag: {lag}");
    let status = daemon.terminate();
    assert!(
        status.success(),
        "daemon exit {status}; log:\n{}",
        daemon.log_tail()
    );

    // C: an independent reader gets the same rows.
    let py = env.pyiceberg(
        "pyiceberg_read.py",
        &[
            "--catalog-name",
            "ticklake",
            "--table",
            "market.trades",
            "--columns",
            "message_id,symbol,price,quantity,side,timestamp",
        ],
    );
    assert_eq!(py["rows"].as_i64().unwrap(), expected);
    let ours = env.query(
        "select message_id, symbol, cast(price as varchar) as price, cast(quantity as varchar) as quantity, \
         side, cast(\"timestamp\" as bigint) as ts from market.trades order by message_id",
    );
    let theirs = py["data"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(theirs) {
        for col in ["message_id", "symbol", "price", "quantity", "side"] {
            assert_eq!(a[col].as_str(), b[col].as_str(), "{col}: {a} vs {b}");
        }
        assert_eq!(a["ts"].as_i64(), b["timestamp"].as_i64(), "{a} vs {b}");
    }
    println!("pyiceberg read {} identical rows", theirs.len());
}
