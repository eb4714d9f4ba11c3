//! `/status` and `ticklake status`: the supervision tree with each actor's
//! state, restarts, last error, lanes and throughput; the degradation level
//! with its history, signals and thresholds; the breakers; and the
//! accounting identity per exchange and tier.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::actors::degradation::SupervisorState;
use crate::actors::observe::StatusNode;
use crate::actors::producer::ProducerState;
use crate::metrics::{Metrics, accounts};

/// Where `/status` reads from: the actors' published states (no locks on
/// the actors themselves, so a busy actor never stalls the endpoint).
#[derive(Clone)]
pub struct StatusSources {
    pub started: Instant,
    /// Every actor's observed state, in the order of the tree.
    pub actors: Vec<Arc<dyn StatusNode>>,
    /// Also read for the document's top level: the spill log.
    pub producer: watch::Receiver<ProducerState>,
    /// Also read for the top level: level, lag and the rates.
    pub supervisor: watch::Receiver<SupervisorState>,
    pub metrics: Metrics,
    /// Per exchange, the received count seen at the last scrape and when
    /// it last grew (`export`).
    pub last_trades: Arc<Mutex<BTreeMap<String, (u64, Instant)>>>,
    /// Which schema registry assigns the ids (`Registry::status`).
    pub schema_registry: Value,
    /// Which catalog holds the tables (`lake::catalog_status`).
    pub catalog: Value,
}

/// Sets the gauges `/metrics` shows from the actors' states rather than
/// from counters kept on the hot path: each feed's connection and the age
/// of its last trade, the consumer lag and its age. Called on every scrape,
/// so they are as fresh as the scrape; the states are read without
/// touching the actors.
pub fn export(src: &StatusSources) {
    let m = &src.metrics;
    let now = Instant::now();
    let mut received: BTreeMap<String, u64> = BTreeMap::new();
    for a in accounts(m) {
        *received.entry(a.exchange).or_default() += a.received;
    }
    let mut last = src.last_trades.lock().unwrap_or_else(|p| p.into_inner());
    for node in src.actors.iter().map(|a| a.node(&BTreeMap::new())) {
        // Feeds are the nodes with an exchange; a disabled feed has none.
        let (Some(exchange), Some(connected)) =
            (node["exchange"].as_str(), node["connected"].as_bool())
        else {
            continue;
        };
        m.feed_connected
            .with_label_values(&[exchange])
            .set(i64::from(connected));
        let count = received.get(exchange).copied().unwrap_or(0);
        let seen = last.entry(exchange.to_string()).or_insert((0, src.started));
        if count > seen.0 {
            *seen = (count, now);
        }
        m.feed_last_trade_age_seconds
            .with_label_values(&[exchange])
            .set(now.duration_since(seen.1).as_secs_f64());
    }
    drop(last);
    let sup = src.supervisor.borrow();
    for (topic, partitions) in &sup.lag {
        for (partition, lag) in partitions {
            m.consumer_lag_records
                .with_label_values(&[topic, &partition.to_string()])
                .set(*lag);
        }
    }
    for (topic, partitions) in &sup.lag_seconds {
        for (partition, secs) in partitions {
            m.consumer_lag_seconds
                .with_label_values(&[topic, &partition.to_string()])
                .set(*secs);
        }
    }
    let age = match sup.lag_age_ms {
        Some(ms) => ms as f64 / 1000.0,
        // No watermarks read yet: the lag is as old as the daemon.
        None => src.started.elapsed().as_secs_f64(),
    };
    m.consumer_lag_age_seconds
        .with_label_values::<&str>(&[])
        .set(age);
}

/// The whole `/status` document.
pub async fn collect(src: &StatusSources) -> Value {
    let sup = src.supervisor.borrow().clone();
    let children: Vec<Value> = src.actors.iter().map(|a| a.node(&sup.rates)).collect();
    let breakers: Vec<Value> = src.actors.iter().filter_map(|a| a.breaker()).collect();
    let spill = src.producer.borrow().spill.clone();
    let accounting = accounts(&src.metrics);
    let losses = src.metrics.losses.report();
    let balanced = settled(
        &accounting,
        &sup.in_transit,
        sup.lag_age_ms.is_some(),
        losses.lost_records,
    );
    json!({
        "uptime_secs": src.started.elapsed().as_secs(),
        "level": sup.level.level,
        "degradation": sup.level,
        "lag": sup.lag,
        "lag_age_ms": sup.lag_age_ms,
        "lag_seconds": sup.lag_seconds,
        "breakers": breakers,
        "spill": spill,
        "accounting": accounting,
        "lake": {
            "catalog": src.catalog,
            "in_transit": sup.in_transit,
            "lost_records": losses.lost_records,
            "lost_ranges": losses.ranges,
            "older_lost_ranges_not_listed": losses.older_ranges_not_listed,
        },
        "accounting_settled": balanced,
        "schema_registry": src.schema_registry,
        "tree": {"name": "ticklake", "state": "running", "children": children},
    })
}

/// Whether the whole chain balances, from the feed down to the lake: no
/// message in a lane or waiting for the broker, everything this run
/// published committed (or dropped as a second copy), nothing on any
/// partition past the last commit (as of watermarks that were read at all),
/// and nothing lost.
pub fn settled(
    accounting: &[crate::metrics::Account],
    in_transit: &std::collections::BTreeMap<String, std::collections::BTreeMap<i32, i64>>,
    watermarks_read: bool,
    lost_records: i64,
) -> bool {
    accounting
        .iter()
        .all(|a| a.in_flight == 0 && a.in_transit == 0)
        && watermarks_read
        && in_transit
            .values()
            .flat_map(|p| p.values())
            .all(|n| *n == 0)
        && lost_records == 0
}

/// `ticklake status`: the same document as an indented tree.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let _ = writeln!(
        out,
        "ticklake  up {}s  level {}",
        s(&v["uptime_secs"]),
        s(&v["level"])
    );
    if let Some(children) = v["tree"]["children"].as_array() {
        let n = children.len();
        for (i, c) in children.iter().enumerate() {
            let branch = if i + 1 == n { "└─" } else { "├─" };
            let _ = writeln!(
                out,
                "{branch} {:<24} {:<30} restarts {}  throughput {}/s  last error {}",
                s(&c["name"]),
                s(&c["state"]),
                s(&c["restarts"]),
                c["throughput_per_sec"]
                    .as_f64()
                    .map_or("-".into(), |r| format!("{r:.0}")),
                s(&c["last_error"]),
            );
            if let Some(lanes) = c["lanes"]["lanes"].as_array() {
                let depths: Vec<String> = lanes
                    .iter()
                    .map(|l| {
                        format!(
                            "t{} {}/{}{}",
                            l["tier"].as_u64().unwrap_or(0) + 1,
                            s(&l["depth"]),
                            s(&l["capacity"]),
                            if l["paused"].as_bool() == Some(true) {
                                " paused"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect();
                let pipe = if i + 1 == n { " " } else { "│" };
                let _ = writeln!(out, "{pipe}    lanes: {}", depths.join(", "));
            }
        }
    }
    let d = &v["degradation"];
    let _ = writeln!(out, "degradation level {}", s(&d["level"]));
    if let Some(sig) = d["last_signals"].as_object() {
        for (name, value) in sig {
            let t = &d["thresholds"][name];
            let _ = writeln!(out, "  signal {name:<18} {:>14}  triggers {}", s(value), t);
        }
    }
    if let Some(h) = d["history"].as_array() {
        for t in h.iter().rev().take(10) {
            let _ = writeln!(
                out,
                "  transition at {}ms {} -> {}: {}",
                s(&t["at_ms"]),
                s(&t["from"]),
                s(&t["to"]),
                s(&t["reason"])
            );
        }
    }
    if let Some(bs) = v["breakers"].as_array() {
        for b in bs {
            let _ = writeln!(
                out,
                "breaker {:<22} {:<10} opens {}",
                s(&b["name"]),
                s(&b["state"]),
                s(&b["counters"]["opens"])
            );
        }
    }
    let _ = writeln!(
        out,
        "spill log: {} pending records",
        s(&v["spill"]["pending"])
    );
    let _ = writeln!(
        out,
        "accounting (received + restored = published + shed + spilled_pending + dead_lettered + deduplicated + in_flight + quarantined)"
    );
    if let Some(accts) = v["accounting"].as_array() {
        for a in accts {
            let _ = writeln!(
                out,
                "  {:<12} tier {:<4} {} + {} = {} + {} + {} + {} + {} + {} + {}",
                s(&a["exchange"]),
                s(&a["tier"]),
                s(&a["received"]),
                s(&a["restored"]),
                s(&a["published"]),
                s(&a["shed"]),
                s(&a["spilled_pending"]),
                s(&a["dead_lettered"]),
                s(&a["deduplicated"]),
                s(&a["in_flight"]),
                s(&a["quarantined"]),
            );
        }
    }
    let c = &v["lake"]["catalog"];
    if c.is_object() {
        let _ = writeln!(
            out,
            "catalog {} {} at {}, {}{}",
            s(&c["kind"]),
            s(&c["name"]),
            s(&c["uri"]),
            match c["warehouse"].as_str() {
                Some(w) => format!("warehouse {w}"),
                None => "tables where the server places them".into(),
            },
            match (c["catalog_warehouse"].as_str(), c["auth"].as_str()) {
                (Some(w), Some(a)) => format!(" (asked for {w}; auth {a})"),
                (None, Some(a)) => format!(" (auth {a})"),
                _ => String::new(),
            }
        );
    }
    let _ = writeln!(
        out,
        "lake (published = stored + deduplicated_at_writer + in_transit; carried over from an earlier run shown apart)"
    );
    if let Some(accts) = v["accounting"].as_array() {
        for a in accts {
            let _ = writeln!(
                out,
                "  {:<12} tier {:<4} {} = {} + {} + {}   carried over {}",
                s(&a["exchange"]),
                s(&a["tier"]),
                s(&a["published"]),
                s(&a["stored"]),
                s(&a["deduplicated_at_writer"]),
                s(&a["in_transit"]),
                s(&a["carried_over"]),
            );
        }
    }
    let _ = writeln!(
        out,
        "lost records: {}   settled: {}",
        s(&v["lake"]["lost_records"]),
        s(&v["accounting_settled"])
    );
    if let Some(ranges) = v["lake"]["lost_ranges"].as_array() {
        for r in ranges {
            let _ = writeln!(
                out,
                "  lost {}[{}] offsets {}..{} ({} records, {})",
                s(&r["topic"]),
                s(&r["partition"]),
                s(&r["from"]),
                s(&r["to"]),
                s(&r["records"]),
                s(&r["cause"]),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Outcome;

    #[test]
    fn accounts_balance_only_when_every_message_is_settled() {
        let m = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        m.account("BINANCE", "1", Outcome::Received, 10);
        m.account("BINANCE", "1", Outcome::Published, 6);
        m.account("BINANCE", "1", Outcome::Deduplicated, 1);
        m.account("BINANCE", "3", Outcome::Received, 5);
        m.account("BINANCE", "3", Outcome::Spilled, 4);
        m.account("BINANCE", "3", Outcome::Replayed, 1);
        m.account("BINANCE", "3", Outcome::Published, 1);
        m.account("BINANCE", "3", Outcome::Shed, 1);
        let a = accounts(&m);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].tier.as_str(), a[0].in_flight), ("1", 3));
        assert_eq!(a[1].spilled_pending, 3);
        // 5 = 1 published + 1 shed + 3 pending, nothing in flight
        assert_eq!(a[1].in_flight, 0);
        // Not settled: tier 1 has messages in flight.
        let none = std::collections::BTreeMap::new();
        assert!(!settled(&a, &none, true, 0));
        let rendered = render(&json!({"accounting": a, "level": "NORMAL"}));
        assert!(
            rendered.contains("tier 3    5 + 0 = 1 + 1 + 3 + 0 + 0 + 0"),
            "{rendered}"
        );
    }

    #[test]
    fn settled_only_when_the_lake_has_everything_published() {
        let m = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        m.account("BINANCE", "1", Outcome::Received, 10);
        m.account("BINANCE", "1", Outcome::Published, 10);
        let mut in_transit = std::collections::BTreeMap::new();
        in_transit.insert("t".to_string(), [(0, 0i64)].into_iter().collect());
        // Published, not yet committed.
        let a = accounts(&m);
        assert_eq!(a[0].in_transit, 10);
        assert!(!settled(&a, &in_transit, true, 0));
        m.account("BINANCE", "1", Outcome::Stored, 8);
        m.account("BINANCE", "1", Outcome::DeduplicatedAtWriter, 2);
        let a = accounts(&m);
        assert_eq!(a[0].in_transit, 0);
        assert!(settled(&a, &in_transit, true, 0));
        // Unknown watermarks, a partition with records past the last
        // commit, or a loss: not settled.
        assert!(!settled(&a, &in_transit, false, 0));
        assert!(!settled(&a, &in_transit, true, 3));
        in_transit.get_mut("t").unwrap().insert(1, 4);
        assert!(!settled(&a, &in_transit, true, 0));
        let text = render(&json!({"accounting": a, "lake": {"lost_records": 3,
            "lost_ranges": [{"topic": "t", "partition": 1, "from": 5, "to": 8, "records": 3, "cause": "skipped"}]}}));
        assert!(
            text.contains("BINANCE      tier 1    10 = 8 + 2 + 0"),
            "{text}"
        );
        assert!(
            text.contains("lost t[1] offsets 5..8 (3 records, skipped)"),
            "{text}"
        );
    }
}
