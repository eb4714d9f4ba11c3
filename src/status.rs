//! `/status` and `ticklake status`: the supervision tree with each actor's
//! state, restarts, last error, lanes and throughput; the degradation level
//! with its history, signals and thresholds; the breakers; and the
//! accounting identity per exchange and tier.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use actix::Addr;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::actors::binance_feed::{BinanceFeedActor, ObserveFeed};
use crate::actors::consumer::ConsumerState;
use crate::actors::degradation::SupervisorState;
use crate::actors::producer::ProducerState;
use crate::actors::writer::WriterState;
use crate::metrics::{Metrics, Outcome};

/// Where `/status` reads from: the actors' published states (no locks on
/// the actors themselves, so a busy actor never stalls the endpoint).
#[derive(Clone)]
pub struct StatusSources {
    pub started: Instant,
    pub feed: Option<Addr<BinanceFeedActor>>,
    pub producer: watch::Receiver<ProducerState>,
    pub consumer: watch::Receiver<ConsumerState>,
    pub writers: Vec<watch::Receiver<WriterState>>,
    pub supervisor: watch::Receiver<SupervisorState>,
    pub metrics: Metrics,
}

/// One exchange and tier of the accounting identity.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Account {
    pub exchange: String,
    pub tier: String,
    pub received: u64,
    /// Found in the spill log at start and replayed in this run.
    pub restored: u64,
    pub published: u64,
    pub shed: u64,
    pub spilled_pending: u64,
    pub dead_lettered: u64,
    pub deduplicated: u64,
    /// In a lane or waiting for the broker's acknowledgement: the left side
    /// minus the settled terms. Zero once the daemon is idle, when the
    /// identity `received + restored = published + shed + spilled_pending +
    /// dead_lettered + deduplicated` holds exactly.
    pub in_flight: i64,
}

/// The accounting identity per exchange and tier, from the counters.
pub fn accounts(metrics: &Metrics) -> Vec<Account> {
    let mut by_key: BTreeMap<(String, String), BTreeMap<&'static str, u64>> = BTreeMap::new();
    for family in metrics.registry.gather() {
        if family.name() != "ticklake_messages_total" {
            continue;
        }
        for m in family.get_metric() {
            let mut exchange = String::new();
            let mut tier = String::new();
            let mut outcome = String::new();
            for l in m.get_label() {
                match l.name() {
                    "exchange" => exchange = l.value().to_string(),
                    "tier" => tier = l.value().to_string(),
                    "outcome" => outcome = l.value().to_string(),
                    _ => {}
                }
            }
            let Some(o) = Outcome::ALL.iter().find(|o| o.as_str() == outcome) else {
                continue;
            };
            let v = m.get_counter().get_value() as u64;
            *by_key
                .entry((exchange, tier))
                .or_default()
                .entry(o.as_str())
                .or_default() += v;
        }
    }
    by_key
        .into_iter()
        .map(|((exchange, tier), c)| {
            let g = |o: Outcome| c.get(o.as_str()).copied().unwrap_or(0);
            let spilled_pending = g(Outcome::Spilled).saturating_sub(g(Outcome::Replayed));
            let mut a = Account {
                exchange,
                tier,
                received: g(Outcome::Received),
                restored: g(Outcome::Restored),
                published: g(Outcome::Published),
                shed: g(Outcome::Shed),
                spilled_pending,
                dead_lettered: g(Outcome::DeadLettered),
                deduplicated: g(Outcome::Deduplicated),
                in_flight: 0,
            };
            let left = (a.received + a.restored) as i64;
            let settled =
                (a.published + a.shed + a.spilled_pending + a.dead_lettered + a.deduplicated)
                    as i64;
            a.in_flight = left - settled;
            a
        })
        .collect()
}

/// The whole `/status` document.
pub async fn collect(src: &StatusSources) -> Value {
    let feed = match &src.feed {
        Some(addr) => {
            match tokio::time::timeout(Duration::from_secs(1), addr.send(ObserveFeed)).await {
                Ok(Ok(s)) => json!({
                    "name": format!("feed.{}", s.exchange.to_ascii_lowercase()),
                    "state": if s.connected { "connected" } else { "connecting" },
                    "restarts": s.restarts,
                    "last_error": s.last_error,
                    "url": s.url,
                    "throughput_per_sec": src.supervisor.borrow().rates.get("feed.received"),
                }),
                _ => json!({"name": "feed", "state": "unresponsive"}),
            }
        }
        None => json!({"name": "feed", "state": "disabled"}),
    };
    let p = src.producer.borrow().clone();
    let c = src.consumer.borrow().clone();
    let sup = src.supervisor.borrow().clone();
    let writers: Vec<WriterState> = src.writers.iter().map(|w| w.borrow().clone()).collect();
    let rates = &sup.rates;
    let mut children = vec![feed];
    children.push(json!({
        "name": "producer",
        "state": match p.breaker.as_ref().map(|b| b.state.as_str()) {
            Some("CLOSED") | None => "running",
            Some(_) => "broker unavailable: spilling",
        },
        "restarts": p.restarts,
        "last_error": p.last_error,
        "level": p.level,
        "lanes": p.lanes,
        "in_flight": p.in_flight,
        "enqueued": p.enqueued,
        "delivered": p.delivered,
        "spilled": p.spilled,
        "replayed": p.replayed,
        "shed": p.shed,
        "throughput_per_sec": rates.get("producer.delivered"),
    }));
    children.push(json!({
        "name": "consumer",
        "state": if c.running { "running" } else { "restarting" },
        "restarts": c.restarts,
        "last_error": c.last_error,
        "throughput_per_sec": rates.get("consumer.records"),
    }));
    for w in &writers {
        children.push(json!({
            "name": format!("writer.{}", w.table),
            "state": if w.commit_started.is_some() { "committing" } else { "buffering" },
            "restarts": w.restarts,
            "duplicates_dropped": w.duplicates_dropped,
            "last_error": w.last_error,
            "buffered_rows": w.buffered_rows,
            "commits": w.commits,
            "rows_committed": w.rows_committed,
            "last_snapshot_id": w.last_snapshot_id,
            "last_commit_ms": w.last_commit_ms,
            "positions": w.positions.topics,
            "throughput_per_sec": rates.get(&format!("writer.{}.rows", w.table)),
        }));
    }
    children.push(json!({
        "name": "degradation_supervisor",
        "state": "running",
        "restarts": sup.restarts,
        "last_error": sup.last_error,
        "samples": sup.samples,
        "watchdog_restarts": sup.watchdog_restarts,
    }));
    let mut breakers = Vec::new();
    if let Some(b) = &p.breaker {
        breakers.push(serde_json::to_value(b).unwrap_or(Value::Null));
    }
    for w in &writers {
        if let Some(b) = &w.breaker {
            breakers.push(serde_json::to_value(b).unwrap_or(Value::Null));
        }
    }
    let accounting = accounts(&src.metrics);
    let balanced = accounting.iter().all(|a| a.in_flight == 0);
    json!({
        "uptime_secs": src.started.elapsed().as_secs(),
        "level": sup.level.level,
        "degradation": sup.level,
        "lag": sup.lag,
        "lag_age_ms": sup.lag_age_ms,
        "breakers": breakers,
        "spill": p.spill,
        "accounting": accounting,
        "accounting_settled": balanced,
        "tree": {"name": "ticklake", "state": "running", "children": children},
    })
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
        "accounting (received + restored = published + shed + spilled_pending + dead_lettered + deduplicated + in_flight)"
    );
    if let Some(accts) = v["accounting"].as_array() {
        for a in accts {
            let _ = writeln!(
                out,
                "  {:<12} tier {:<4} {} + {} = {} + {} + {} + {} + {} + {}",
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
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let rendered = render(&json!({"accounting": a, "level": "NORMAL"}));
        assert!(
            rendered.contains("tier 3    5 + 0 = 1 + 1 + 3 + 0 + 0 + 0"),
            "{rendered}"
        );
    }
}
