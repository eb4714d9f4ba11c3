//! The planned rotation makes the new connection before it breaks the old
//! one (issue "No gaps", item 3, acceptance C): a feed rotating every 2 s
//! while a live exchange streams trades at 1,000 a second stores every
//! trade once. The exchange is a WebSocket server in this test on
//! 127.0.0.1 with one shared timeline, as a real venue: a client sees the
//! frames sent while it is connected, and none from before.
//!
//! `TICKLAKE_TEST_ROTATION_SECS` sets how long the stream runs (default 10;
//! 60 is the long form, rotating every 5 s there).

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

const RATE: u64 = 1000;

fn frame(id: u64, ts_ms: i64) -> String {
    format!(
        r#"{{"e":"trade","E":{ts_ms},"s":"BTCUSDT","t":{id},"p":"60000.{:02}","q":"0.001","T":{ts_ms},"m":{}}}"#,
        id % 100,
        id.is_multiple_of(2)
    )
}

/// Serves one timeline of `n` trade frames at `RATE` a second, starting at
/// the first client's connect, to every client connected at the time.
async fn exchange(listener: tokio::net::TcpListener, n: u64) {
    let (tx, _) = broadcast::channel::<Message>(1 << 20);
    let mut started = false;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let mut rx = tx.subscribe();
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            let (mut sink, mut read) = ws.split();
            // Drain what the client sends (subscriptions, pongs, a close).
            let reader = tokio::spawn(async move { while read.next().await.is_some() {} });
            loop {
                match rx.recv().await {
                    Ok(m) => {
                        if sink.send(m).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(k)) => {
                        panic!("a client fell {k} frames behind the exchange")
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            reader.abort();
        });
        if !started {
            started = true;
            let tx = tx.clone();
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                let t0 = chrono::Utc::now().timestamp_millis();
                for id in 0..n {
                    let due = start + Duration::from_micros(id * 1_000_000 / RATE);
                    tokio::time::sleep_until(due).await;
                    let _ = tx.send(Message::text(frame(id, t0 + (id * 1000 / RATE) as i64)));
                }
                // Keep the timeline (and its connections) open afterwards.
                std::future::pending::<()>().await;
            });
        }
    }
}

#[test]
fn rotating_every_few_seconds_loses_and_doubles_nothing() {
    let secs: u64 = std::env::var("TICKLAKE_TEST_ROTATION_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rotate_every = if secs >= 60 { 5 } else { 2 };
    let n = secs * RATE;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    rt.spawn(exchange(listener, n));

    let env = Env::new("embedded", Some(&url), "");
    env.set("feeds.binance", "channels", r#"["trade"]"#);
    env.set("feeds.binance", "symbols", r#"["btcusdt"]"#);
    env.set(
        "feeds.binance",
        "max_connection_secs",
        &rotate_every.to_string(),
    );
    let mut daemon = env.start_daemon("daemon");
    wait_until(
        "every streamed trade stored",
        Duration::from_secs(secs + 120),
        || env.count("select count(*) from market.trades") >= n as i64,
    );
    // a late second copy, if any, has the time to land
    std::thread::sleep(Duration::from_secs(3));
    let rows = env.query(
        "select count(*) as n, count(distinct trade_id) as d, min(source_sequence) as lo, \
         max(source_sequence) as hi from market.trades",
    );
    let rotated = env.counter("ticklake_feed_connections_total", "outcome=\"rotated\"");
    let duplicates = env.counter("ticklake_feed_duplicates_total", "");
    println!(
        "{secs} s at {RATE}/s, rotating every {rotate_every} s: {} ; {rotated} rotations, {duplicates} overlap copies dropped by dedup",
        rows[0]
    );
    assert_eq!(
        rows[0]["n"].as_i64(),
        Some(n as i64),
        "log:\n{}",
        daemon.log_tail()
    );
    assert_eq!(
        rows[0]["d"].as_i64(),
        Some(n as i64),
        "a trade stored twice"
    );
    assert_eq!(rows[0]["lo"].as_i64(), Some(0));
    assert_eq!(rows[0]["hi"].as_i64(), Some(n as i64 - 1));
    assert!(
        rotated >= (secs / rotate_every).saturating_sub(2) as f64,
        "the feed rotated {rotated} times in {secs} s"
    );
    let status = daemon.terminate();
    assert!(status.success(), "daemon exit {status}");
}
