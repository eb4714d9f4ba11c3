//! The accounting identity per exchange and tier, read off the
//! `ticklake_messages_total` counters (see [`Outcome`]).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Metrics, Outcome};

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
    /// Refused by the broker for good, kept in the quarantine file.
    pub quarantined: u64,
    /// Committed to the lake (this run's records).
    pub stored: u64,
    /// Second copies the writer dropped (this run's records).
    pub deduplicated_at_writer: u64,
    /// Published and not yet committed: on the broker or in a writer's
    /// buffer, `published - stored - deduplicated_at_writer`. Zero once
    /// the lake has everything this run published.
    pub in_transit: i64,
    /// Committed in this run, published by an earlier one (not part of
    /// this run's identity).
    pub carried_over: u64,
    /// In a lane or waiting for the broker's acknowledgement: the left side
    /// minus the settled terms. Zero once the daemon is idle, when the
    /// identity `received + restored = published + shed + spilled_pending +
    /// dead_lettered + deduplicated + quarantined` holds exactly.
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
            // A quarantined record left the log as a replayed (or
            // restored) one does, so it is no longer pending.
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
                quarantined: g(Outcome::Quarantined),
                stored: g(Outcome::Stored),
                deduplicated_at_writer: g(Outcome::DeduplicatedAtWriter),
                in_transit: 0,
                carried_over: g(Outcome::CarriedOver).saturating_sub(g(Outcome::Reclaimed)),
                in_flight: 0,
            };
            a.in_transit = a.published as i64 - (a.stored + a.deduplicated_at_writer) as i64;
            let left = (a.received + a.restored) as i64;
            let settled = (a.published
                + a.shed
                + a.spilled_pending
                + a.dead_lettered
                + a.deduplicated
                + a.quarantined) as i64;
            a.in_flight = left - settled;
            a
        })
        .collect()
}
