//! No gaps: trade-id continuity and REST backfill, end to end on the
//! embedded broker, against `ticklake replay` serving the recorded Binance
//! capture over WebSocket and its REST trade history (`--rest`) on the
//! same 127.0.0.1 listener.
//!
//! - Ranges of aggTrade ids cut out of the WebSocket stream (`--cut`) are
//!   seen as gaps, filled from REST, and every trade is in the lake once;
//!   `market.gaps` lists each cut as filled, and the counters agree.
//! - A venue that no longer has a range (`--rest-gone`) or answers 429
//!   leaves the gap `unrecoverable`, counted, and the daemon goes on.
//! - SIGKILL mid-replay loses what the in-process broker held; the restart
//!   fills it from REST, from the lake's last ids (`TICKLAKE_TEST_GAP_KILLS`
//!   times, default 2; the long form is 10).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

const CAPTURE: &str = "BINANCE-ee25be.0.txt";

/// The daemon on the replay, one pass, gaps due after half a second.
fn env_on(url: &str) -> Env {
    let env = Env::new("embedded", Some(url), "");
    env.one_pass_feed();
    env.set("feeds.binance", "gap_grace_ms", "500");
    env.set("feeds.binance", "rest_requests_per_sec", "50");
    env
}

fn wait_settled(env: &Env, stored: usize) {
    wait_until(
        "the lake to hold the trades and the gaps to settle",
        Duration::from_secs(180),
        || {
            let g = binance_feed_gaps(env).unwrap_or(Value::Null);
            g["open"] == 0 && lake_ids(env).len() >= stored
        },
    );
}

/// `market.gaps` once it holds `n` rows (its writer commits every 2 s).
fn gap_rows_when(env: &Env, n: usize) -> Vec<Value> {
    wait_until(
        "market.gaps to hold the settled gaps",
        Duration::from_secs(60),
        || gap_rows(env).len() >= n,
    );
    gap_rows(env)
}

fn gap_rows(env: &Env) -> Vec<Value> {
    env.query(
        "select symbol, id_space, from_id, to_id, missing, filled, how, detail, \
         filled_at is not null as has_filled_at from market.gaps order by symbol, from_id",
    )
}

/// Cuts `(symbol, from, to)` as replay's `--cut` arguments.
fn cut_args(flag: &str, cuts: &[(&str, i64, i64)]) -> Vec<String> {
    cuts.iter()
        .flat_map(|(s, a, b)| [flag.to_string(), format!("{s}:{a}-{b}:aggTrade")])
        .collect()
}

#[test]
fn cut_ranges_are_filled_from_rest_and_stored_once() {
    let truth = aggtrade_ids(CAPTURE);
    let total: usize = truth.values().map(BTreeSet::len).sum();
    let cuts = [
        ("BTCUSDT", 665_077_000, 665_077_099),
        ("BTCUSDT", 665_077_500, 665_077_501),
        ("ETHUSDT", 291_477_200, 291_477_249),
        ("DOTUSDT", 54_605_700, 54_605_709),
    ];
    let mut args = vec!["--rest".to_string(), "--rate".into(), "1000".into()];
    args.extend(cut_args("--cut", &cuts));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_replay, url) = start_replay(&[capture(CAPTURE)], &args);
    let env = env_on(&url);
    let _daemon = env.start_daemon("cuts");
    wait_settled(&env, total);

    let stored = lake_ids(&env);
    let distinct: BTreeSet<_> = stored.iter().cloned().collect();
    let want: BTreeSet<(String, i64)> = truth
        .iter()
        .flat_map(|(s, ids)| ids.iter().map(move |i| (s.clone(), *i)))
        .collect();
    assert_eq!(stored.len(), distinct.len(), "a trade stored twice");
    assert_eq!(distinct, want, "the lake differs from the capture");

    let missing: i64 = cuts.iter().map(|(_, a, b)| b - a + 1).sum();
    let rows = gap_rows_when(&env, cuts.len());
    let got: Vec<(String, i64, i64, i64, i64, String)> = rows
        .iter()
        .map(|r| {
            (
                r["symbol"].as_str().unwrap().to_string(),
                r["from_id"].as_i64().unwrap(),
                r["to_id"].as_i64().unwrap(),
                r["missing"].as_i64().unwrap(),
                r["filled"].as_i64().unwrap(),
                r["how"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut expect: Vec<_> = cuts
        .iter()
        .map(|(s, a, b)| {
            (
                s.to_string(),
                *a,
                *b,
                b - a + 1,
                b - a + 1,
                "rest".to_string(),
            )
        })
        .collect();
    expect.sort();
    assert_eq!(got, expect, "market.gaps: {rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["has_filled_at"] == true && r["id_space"] == "aggTrade")
    );

    let m = |name: &str, filter: &str| env.counter(name, filter) as i64;
    let detected = m("ticklake_feed_gaps_total", "event=\"detected\"");
    let filled = m("ticklake_feed_gaps_total", "event=\"rest\"");
    let gap_trades = m("ticklake_feed_gap_trades_total", "outcome=\"missing\"");
    let from_rest = m("ticklake_feed_gap_trades_total", "outcome=\"rest\"");
    let lost = m("ticklake_feed_gap_trades_total", "outcome=\"lost\"");
    let requests = m(
        "ticklake_feed_backfill_requests_total",
        "exchange=\"BINANCE\"",
    );
    assert_eq!((detected, filled), (cuts.len() as i64, cuts.len() as i64));
    assert_eq!((gap_trades, from_rest, lost), (missing, missing, 0));
    let status = binance_feed_gaps(&env).unwrap_or(Value::Null);
    assert_eq!(status["gaps"], cuts.len());
    assert_eq!(status["backfilled_trades"], missing);
    assert_eq!(status["lost_trades"], 0);
    println!(
        "{} trades once; {} gaps of {missing} trades cut, {filled} filled from {requests} REST requests; /status gaps {status}",
        stored.len(),
        cuts.len()
    );
}

#[test]
fn a_venue_that_lacks_the_range_or_refuses_leaves_the_gap_unrecoverable() {
    let truth = aggtrade_ids(CAPTURE);
    let total: usize = truth.values().map(BTreeSet::len).sum();
    let gone = ("BTCUSDT", 665_077_000, 665_077_019);
    let served = ("ETHUSDT", 291_477_200, 291_477_209);
    // The venue pruned BTC's range; ETH's is there.
    let mut args = vec!["--rest".to_string(), "--rate".into(), "1000".into()];
    args.extend(cut_args("--cut", &[gone, served]));
    args.extend(cut_args("--rest-gone", &[gone]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_replay, url) = start_replay(&[capture(CAPTURE)], &args);
    let env = env_on(&url);
    let _daemon = env.start_daemon("gone");
    wait_settled(&env, total - 20);
    let rows = gap_rows_when(&env, 2);
    let how: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["symbol"].as_str().unwrap().into(),
                r["how"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        how,
        [
            ("BTCUSDT".into(), "unrecoverable".into()),
            ("ETHUSDT".into(), "rest".into())
        ]
    );
    assert!(
        rows[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("20 of 20 trades not recovered"),
        "{rows:?}"
    );
    let gone_detail = rows[0]["detail"].as_str().unwrap().to_string();
    // The daemon went on: everything else is stored, once.
    let stored = lake_ids(&env);
    let distinct: BTreeSet<_> = stored.iter().cloned().collect();
    assert_eq!((stored.len(), distinct.len()), (total - 20, total - 20));
    assert_eq!(
        env.counter("ticklake_feed_gap_trades_total", "outcome=\"lost\""),
        20.0
    );
    assert_eq!(
        env.counter("ticklake_feed_gaps_total", "event=\"unrecoverable\""),
        1.0
    );

    // A venue that answers 429 to every request: retried, then given up.
    let cut = ("BTCUSDT", 665_077_100, 665_077_104);
    let mut args = vec![
        "--rest".to_string(),
        "--rate".into(),
        "1000".into(),
        "--rest-status".into(),
        "429".into(),
    ];
    args.extend(cut_args("--cut", &[cut]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_replay, url) = start_replay(&[capture(CAPTURE)], &args);
    let env = env_on(&url);
    let _daemon = env.start_daemon("429");
    wait_settled(&env, total - 5);
    let rows = gap_rows_when(&env, 1);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["how"], "unrecoverable");
    let detail = rows[0]["detail"].as_str().unwrap();
    assert!(detail.contains("429"), "{detail}");
    assert_eq!(lake_ids(&env).len(), total - 5);
    let requests = env.counter(
        "ticklake_feed_backfill_requests_total",
        "exchange=\"BINANCE\"",
    );
    assert!(requests >= 2.0, "tried again before giving up: {requests}");
    println!(
        "gone: BTCUSDT unrecoverable ({gone_detail}), ETHUSDT rest; \
         429: {detail}, after {requests} requests"
    );
}

#[test]
fn a_kill_on_the_embedded_broker_is_refilled_from_rest() {
    let kills: usize = std::env::var("TICKLAKE_TEST_GAP_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let truth = aggtrade_ids(CAPTURE);
    for round in 0..kills {
        // The daemon starts first, on the address the replay will take:
        // the live timeline (about 30 s) starts with the replay, and a
        // daemon slow to start on a loaded machine would otherwise join
        // it too late to see every symbol. It retries every half second
        // until the replay listens.
        let listen = format!("127.0.0.1:{}", free_port());
        let env = env_on(&format!("ws://{listen}"));
        env.set("feeds.binance", "backoff_initial_ms", "100");
        env.set("feeds.binance", "backoff_max_ms", "500");
        // Each connection for as long as the replay plays.
        let mut daemon = env.start_daemon(&format!("kill{round}"));
        // One shared timeline, as on a live venue: what plays while the
        // daemon is down is gone from the WebSocket, and only REST has it.
        let (_replay, url) = start_replay_on(
            &listen,
            &[capture(CAPTURE)],
            &["--rest", "--live", "--retime", "--rate", "150"],
        );
        assert_eq!(url, format!("ws://{listen}"));
        wait_until("every symbol in the lake", Duration::from_secs(120), || {
            let l = lake_ids(&env);
            l.iter().map(|(s, _)| s).collect::<BTreeSet<_>>().len() == truth.len() && l.len() > 300
        });
        daemon.kill();
        let before = lake_ids(&env).len();
        let _daemon = env.start_daemon(&format!("kill{round}b"));
        // What the lake must hold: every capture trade from the first one
        // the daemon saw (it joined a running timeline) to the last.
        let stored = settled_lake_ids(&env, &truth, Duration::from_secs(240));
        let distinct: BTreeSet<_> = stored.iter().cloned().collect();
        assert_eq!(
            stored.len(),
            distinct.len(),
            "round {round}: a trade stored twice"
        );
        let want = from_first_stored(&truth, &distinct);
        let lost: Vec<_> = want.difference(&distinct).take(10).collect();
        // The gap figures go with a loss: they tell a gap settled as
        // unrecoverable (counted) from trades no gap saw (silent).
        let g = binance_feed_gaps(&env).unwrap_or(Value::Null);
        assert!(
            lost.is_empty(),
            "round {round}: lost {} trades, e.g. {lost:?}; {before} in the lake at the kill; gaps {g}",
            want.len() - distinct.len().min(want.len())
        );
        assert_eq!(distinct, want, "round {round}");
        assert!(
            g["gaps"].as_u64().unwrap() >= 1,
            "round {round}: the restart saw no gap: {g}"
        );
        println!(
            "round {round}: {before} trades in the lake at the kill, {} after the restart, all once; restart gaps {g}",
            stored.len()
        );
    }
}
