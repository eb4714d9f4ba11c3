//! Acceptance E: malformed frames between valid ones. Nothing panics, each
//! bad frame is counted and dead-lettered with its reason and raw bytes, and
//! every valid frame around them is stored. Runs on the embedded cluster,
//! which also proves `ticklake run` works on the shipped default.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn valid(id: i64) -> String {
    format!(
        r#"{{"stream":"btcusdt@trade","data":{{"e":"trade","E":1700000000000,"s":"BTCUSDT","t":{id},"p":"3650{id}.12345678","q":"0.0{id}","T":{},"m":{}}}}}"#,
        1_700_000_000_000i64 + id,
        id % 2 == 0
    )
}

/// (frame, expected reason fragment)
fn bad_frames() -> Vec<(Message, &'static str)> {
    vec![
        (
            Message::text(
                r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":9"#,
            ),
            "invalid json",
        ),
        (
            Message::text(
                r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":10,"p":36500.5,"q":"1","T":1,"m":true}}"#,
            ),
            "field `p`: expected string, got number",
        ),
        (
            Message::text(
                r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":11,"p":"1","q":"1","T":"yesterday","m":true}}"#,
            ),
            "field `T`: expected integer, got string",
        ),
        (
            Message::text(
                r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":12,"p":"12345678901.5","q":"1","T":1,"m":true}}"#,
            ),
            "overflows decimal(18,8)",
        ),
        (
            Message::text(
                r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":13,"p":"1","q":"99999999999999999999999999999999.1","T":1,"m":true}}"#,
            ),
            "overflows decimal(18,8)",
        ),
        (Message::text(""), "empty frame"),
        (
            Message::binary(vec![0xde, 0xad, 0xbe, 0xef]),
            "binary frame",
        ),
    ]
}

/// A WebSocket server that sends the mixed frames to its first client and
/// then holds every connection open without sending anything.
fn serve(frames: Vec<Message>) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            let mut first = Some(frames);
            loop {
                let Ok((sock, _)) = l.accept().await else {
                    return;
                };
                let frames = first.take().unwrap_or_default();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else {
                        return;
                    };
                    for f in frames {
                        if ws.send(f).await.is_err() {
                            return;
                        }
                    }
                    while let Some(Ok(_)) = ws.next().await {}
                });
            }
        });
    });
    format!("ws://{}", rx.recv().unwrap())
}

#[test]
fn malformed_frames_are_dead_lettered_and_valid_frames_stored() {
    let bad = bad_frames();
    let mut frames = Vec::new();
    let mut valid_ids = Vec::new();
    let mut id = 100;
    frames.push(Message::text(valid(id)));
    valid_ids.push(id);
    for (b, _) in &bad {
        frames.push(b.clone());
        id += 1;
        frames.push(Message::text(valid(id)));
        valid_ids.push(id);
    }
    // a frame of a kind the feed skips (counted, not stored, not dead)
    frames.push(Message::text(
        r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[],"a":[]}}"#,
    ));
    let url = serve(frames);

    let env = Env::new("embedded", Some(&url), "");
    let mut daemon = env.start_daemon("daemon");
    let expected_dead = bad.len() as f64;
    wait_until("dead letters counted", Duration::from_secs(60), || {
        env.counter("ticklake_feed_dead_letters_total", "") >= expected_dead
    });
    wait_until("rows committed", Duration::from_secs(60), || {
        env.counter("ticklake_writer_rows_total", "table=\"trades\"") >= valid_ids.len() as f64
            && env.counter("ticklake_writer_rows_total", "table=\"dead_letters\"") >= expected_dead
    });
    assert_eq!(
        env.counter("ticklake_feed_dead_letters_total", ""),
        expected_dead
    );
    assert_eq!(
        env.counter("ticklake_feed_frames_total", "kind=\"depth\""),
        1.0
    );
    assert_eq!(
        env.counter("ticklake_feed_frames_total", "kind=\"trade\""),
        valid_ids.len() as f64
    );
    // the daemon survived all of it
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "daemon died:\n{}",
        daemon.log_tail()
    );

    let stored = env.query(
        "select trade_id, cast(price as varchar) as price from market.trades order by trade_id",
    );
    let ids: Vec<String> = stored
        .iter()
        .map(|r| r["trade_id"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = valid_ids.iter().map(|i| format!("BINANCE-{i}")).collect();
    assert_eq!(ids, want);
    assert_eq!(stored[0]["price"].as_str().unwrap(), "3650100.12345678");

    let dead = env.query(
        "select reason, raw, exchange, source from market.dead_letters order by received_at",
    );
    assert_eq!(dead.len(), bad.len(), "{dead:?}");
    for ((msg, fragment), row) in bad.iter().zip(&dead) {
        let reason = row["reason"].as_str().unwrap();
        assert!(
            reason.contains(fragment),
            "reason {reason:?} lacks {fragment:?}"
        );
        // the JSON output renders binary as hex
        let hex: String = msg
            .clone()
            .into_data()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            row["raw"].as_str(),
            Some(hex.as_str()),
            "raw bytes kept for {reason}: {row}"
        );
        assert_eq!(row["exchange"].as_str().unwrap(), "BINANCE");
        assert!(row["source"].as_str().unwrap().starts_with(&url));
    }

    println!(
        "stored {} valid trades; dead-lettered {} frames: {:?}",
        ids.len(),
        dead.len(),
        dead.iter()
            .map(|r| r["reason"].as_str().unwrap_or_default())
            .collect::<Vec<_>>()
    );
    let status = daemon.terminate();
    assert!(status.success(), "exit {status}:\n{}", daemon.log_tail());
}

/// `count` valid aggTrade frames for BTCUSDT with ids from `first`, as
/// lines of a capture.
fn agg_lines(first: i64, count: i64) -> Vec<String> {
    (first..first + count)
        .map(|id| {
            format!(
                r#"{{"stream":"btcusdt@aggTrade","data":{{"e":"aggTrade","E":{t},"s":"BTCUSDT","a":{id},"p":"4{:04}.{:02}","q":"0.{:06}","f":{id},"l":{id},"T":{t},"m":{},"M":true}}}}"#,
                id % 9973,
                id % 97,
                id % 999_983,
                id % 3 == 0,
                t = 1_700_000_000_000i64 + id,
            )
        })
        .collect()
}

fn tier1_account(env: &Env) -> (serde_json::Value, serde_json::Value) {
    let s: serde_json::Value =
        serde_json::from_str(&http_get(env.http_port, "/status").expect("/status")).unwrap();
    let a = s["accounting"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["exchange"] == "BINANCE" && a["tier"] == "1")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    (s, a)
}

/// Acceptance B of the hostile-input work: a 2 MB malformed frame in a
/// replay is dead-lettered capped (its size and checksum in the reason), it
/// neither reaches the broker's size limit nor stalls anything behind it;
/// after a SIGTERM and a restart on the same data directory the table keeps
/// growing and the identity, quarantine term included, settles down to the
/// lake.
#[test]
fn a_two_megabyte_frame_then_a_restart_keeps_ingesting_and_settles() {
    let work = tempfile::tempdir().unwrap();
    let huge = format!(
        r#"{{"stream":"btcusdt@aggTrade","data":{{"e":"aggTrade","s":"BTCUSDT","p":"{}"#,
        "9".repeat(2 << 20)
    );
    let mut first = agg_lines(1, 500);
    first.push(huge.clone());
    first.extend(agg_lines(501, 500));
    let first_path = work.path().join("first.txt");
    std::fs::write(&first_path, first.join("\n") + "\n").unwrap();
    let second_path = work.path().join("second.txt");
    std::fs::write(&second_path, agg_lines(1001, 500).join("\n") + "\n").unwrap();

    let (mut replay1, url1) = start_replay(&[first_path], &["--rate", "2000"]);
    let env = Env::new("embedded", Some(&url1), "");
    env.one_pass_feed();
    env.set("feeds.binance", "symbols", r#"["btcusdt"]"#);
    let tiers = env.dir.path().join("instruments.toml");
    std::fs::write(
        &tiers,
        "[exchanges.BINANCE]\nsymbol_pattern = \"[A-Z0-9]{4,20}\"\ntier1 = [\"BTCUSDT\"]\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("instruments_file = \"{}\"\n{text}", tiers.display()),
    )
    .unwrap();

    let mut daemon = env.start_daemon("first");
    wait_until(
        "first run: 1,000 trades stored, the huge frame dead-lettered, settled",
        Duration::from_secs(120),
        || {
            let (s, a) = tier1_account(&env);
            !a.is_null()
                && a["stored"] == 1000
                && s["accounting_settled"] == true
                && env.counter("ticklake_writer_rows_total", "table=\"dead_letters\"") >= 1.0
        },
    );
    let dl = env.query(
        "select reason, length(raw) as kept from market.dead_letters where reason like '%frame of%'",
    );
    println!("dead letter of the huge frame: {}", dl[0]);
    assert_eq!(dl.len(), 1);
    let reason = dl[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("frame of {} bytes", huge.len())) && reason.contains("crc32"),
        "{reason}"
    );
    assert_eq!(dl[0]["kept"].as_i64().unwrap(), 256 * 1024);
    assert!(
        daemon.terminate().success(),
        "SIGTERM ends the daemon cleanly"
    );
    replay1.kill();

    // The same data directory, a second capture.
    let (mut replay2, url2) = start_replay(&[second_path], &["--rate", "2000"]);
    env.set("feeds.binance", "url", &format!("\"{url2}\""));
    let mut daemon = env.start_daemon("second");
    let mut last = serde_json::Value::Null;
    wait_until(
        "second run: 500 more trades stored, settled",
        Duration::from_secs(120),
        || {
            let (s, a) = tier1_account(&env);
            let done = !a.is_null() && a["stored"] == 500 && s["accounting_settled"] == true;
            last = a;
            done
        },
    );
    println!("second run, tier 1: {last}");
    assert_eq!(last["quarantined"], 0);
    assert_eq!(last["in_flight"], 0);
    assert_eq!(last["in_transit"], 0);
    let rows =
        env.query("select count(*) as n, count(distinct message_id) as d from market.trades");
    println!("market.trades after the restart: {}", rows[0]);
    assert_eq!(rows[0]["n"].as_i64().unwrap(), 1500);
    assert_eq!(rows[0]["d"].as_i64().unwrap(), 1500);
    assert!(daemon.terminate().success());
    replay2.kill();
}
