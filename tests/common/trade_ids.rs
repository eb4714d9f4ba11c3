//! Trade ids on both sides of a gap test: the capture's, read without
//! ticklake's parser, and the lake's, with repeats.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use super::{Env, capture, http_get, received_frames, wait_until};

/// The aggTrade ids per symbol of a Binance capture in
/// `tests/fixtures/captures/`: ground truth.
pub fn aggtrade_ids(name: &str) -> BTreeMap<String, BTreeSet<i64>> {
    let mut ids: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for f in received_frames(&capture(name)) {
        let v: Value = serde_json::from_str(&f).unwrap();
        let d = &v["data"];
        if d["e"] == "aggTrade" {
            ids.entry(d["s"].as_str().unwrap().to_string())
                .or_default()
                .insert(d["a"].as_i64().unwrap());
        }
    }
    ids
}

/// Every stored trade as (symbol, id), with repeats.
pub fn lake_ids(env: &Env) -> Vec<(String, i64)> {
    env.query("select symbol, source_sequence from market.trades")
        .iter()
        .map(|r| {
            (
                r["symbol"].as_str().unwrap().to_string(),
                r["source_sequence"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The `gaps` object of the Binance feed's `/status` node; `None` while
/// the daemon does not answer or has no such feed.
pub fn binance_feed_gaps(env: &Env) -> Option<Value> {
    let s: Value = serde_json::from_str(&http_get(env.http_port, "/status")?).ok()?;
    fn find(v: &Value) -> Option<Value> {
        if v["name"] == "feed.binance" {
            return Some(v.clone());
        }
        v["children"].as_array()?.iter().find_map(find)
    }
    find(&s["tree"]).map(|f| f["gaps"].clone())
}

/// The capture's trades (`truth`, per symbol) from the first one stored
/// per symbol on: what a daemon that joined mid-stream must hold.
pub fn from_first_stored(
    truth: &BTreeMap<String, BTreeSet<i64>>,
    stored: &BTreeSet<(String, i64)>,
) -> BTreeSet<(String, i64)> {
    let mut want = BTreeSet::new();
    for (s, ids) in truth {
        let first = stored
            .iter()
            .filter(|(x, _)| x == s)
            .map(|(_, i)| *i)
            .min()
            .unwrap_or_else(|| panic!("nothing of {s} stored"));
        want.extend(ids.range(first..).map(|i| (s.clone(), *i)));
    }
    want
}

/// Whether `stored` holds the capture's last trade of every symbol. It
/// comes over the WebSocket at the replay's end: until the lake holds it,
/// a quiet lake may be a restarted daemon still starting on a loaded
/// machine, not a settled one.
pub fn holds_last_trades(
    truth: &BTreeMap<String, BTreeSet<i64>>,
    stored: &BTreeSet<(String, i64)>,
) -> bool {
    truth.iter().all(|(s, t)| {
        t.last()
            .is_some_and(|last| stored.contains(&(s.clone(), *last)))
    })
}

/// Every stored trade as (symbol, id), with repeats, once the replay has
/// ended and the lake has settled: it holds the capture's last trade of
/// every symbol, the Binance feed has no gap open, and the count has not
/// moved for 12 polls (3 s), as the last backfill may still be landing
/// when its gap closes.
pub fn settled_lake_ids(
    env: &Env,
    truth: &BTreeMap<String, BTreeSet<i64>>,
    timeout: Duration,
) -> Vec<(String, i64)> {
    let mut stored = Vec::new();
    let mut last = None;
    let mut same = 0;
    wait_until("the replay to end and the gaps to settle", timeout, || {
        stored = lake_ids(env);
        same = if last == Some(stored.len()) {
            same + 1
        } else {
            0
        };
        last = Some(stored.len());
        let ids: BTreeSet<_> = stored.iter().cloned().collect();
        holds_last_trades(truth, &ids)
            && binance_feed_gaps(env).is_some_and(|g| g["open"] == 0)
            && same >= 12
    });
    stored
}
