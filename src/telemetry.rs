//! Telemetry as typed events, as Vector's `internal_events`: each event
//! logs and counts in one place, with the standard labels, so an actor says
//! what happened (`feed.malformed(&error, bytes)`) instead of making five
//! metric calls and a log line.
//!
//! Counters on the hot path are looked up once per label set and kept:
//! `with_label_values` hashes the label strings and takes a lock on every
//! call. They are looked up on first use, not up front, so a series appears
//! on `/metrics` (and a row in the accounting) only once something
//! happened, exactly as before.

use std::cell::RefCell;

use prometheus::IntCounter;

use crate::degrade::level::Level;
use crate::exchanges::FrameError;
use crate::fastmap::FastMap;
use crate::instruments::Tier;
use crate::metrics::{Metrics, Outcome};

/// The accounting label of a message without a tier (a dead letter).
const NO_TIER: &str = "none";

/// Counters kept per label set, looked up on first use. foldhash, as the
/// other maps of the hot path (`fastmap`): these are consulted once or
/// twice a trade, and SipHash was ~1,000 instructions a trade across them
/// (callgrind).
struct Kept<K> {
    counters: RefCell<FastMap<K, IntCounter>>,
}

impl<K: std::hash::Hash + Eq + Copy> Kept<K> {
    fn new() -> Self {
        Self {
            counters: RefCell::new(FastMap::default()),
        }
    }

    fn inc(&self, key: K, look_up: impl FnOnce() -> IntCounter) {
        self.counters
            .borrow_mut()
            .entry(key)
            .or_insert_with(look_up)
            .inc();
    }
}

/// Counters kept per exchange, then per key, looked up on first use; the
/// exchange is looked up by `&str`, so a hit allocates nothing.
struct PerExchange<K> {
    counters: RefCell<FastMap<String, FastMap<K, IntCounter>>>,
}

impl<K: std::hash::Hash + Eq + Copy> PerExchange<K> {
    fn new() -> Self {
        Self {
            counters: RefCell::new(FastMap::default()),
        }
    }

    fn inc(&self, exchange: &str, key: K, look_up: impl FnOnce() -> IntCounter) {
        let mut kept = self.counters.borrow_mut();
        // One lookup on a hit; the exchange is copied only the first time.
        if let Some(by_key) = kept.get_mut(exchange) {
            by_key.entry(key).or_insert_with(look_up).inc();
            return;
        }
        kept.entry(exchange.to_string())
            .or_default()
            .entry(key)
            .or_insert_with(look_up)
            .inc();
    }
}

/// The events of one exchange feed. Lives on the feed's thread.
pub struct FeedEvents {
    metrics: Metrics,
    exchange: String,
    frames: Kept<&'static str>,
    accounts: Kept<(&'static str, Outcome)>,
    duplicates: Kept<()>,
    dead_letters: Kept<&'static str>,
}

impl FeedEvents {
    pub fn new(metrics: Metrics, exchange: &str) -> Self {
        Self {
            metrics,
            exchange: exchange.to_string(),
            frames: Kept::new(),
            accounts: Kept::new(),
            duplicates: Kept::new(),
            dead_letters: Kept::new(),
        }
    }

    fn frame(&self, kind: &'static str) {
        self.frames.inc(kind, || {
            self.metrics
                .feed_frames
                .with_label_values(&[&self.exchange, kind])
        });
    }

    fn account(&self, tier: &'static str, outcome: Outcome) {
        self.accounts.inc((tier, outcome), || {
            self.metrics
                .messages
                .with_label_values(&[&self.exchange, tier, outcome.as_str()])
        });
    }

    /// A trade frame (`kind`: its stream, `trade` or `aggTrade`) arrived
    /// for a symbol of `tier`: received, in the accounting identity.
    pub fn trade_received(&self, kind: &'static str, tier: Tier) {
        self.frame(kind);
        self.account(tier.label(), Outcome::Received);
    }

    /// A trade already seen (a reconnect overlap): deduplicated.
    pub fn duplicate(&self, tier: Tier) {
        self.duplicates.inc((), || {
            self.metrics
                .feed_duplicates
                .with_label_values(&[&self.exchange])
        });
        self.account(tier.label(), Outcome::Deduplicated);
    }

    /// A well-formed frame of a kind the feed does not store.
    pub fn skipped(&self, kind: &'static str) {
        self.frame(kind);
    }

    /// A frame that could not be parsed: it goes to the dead-letter topic
    /// with its raw bytes, so it is received and dead-lettered at once.
    pub fn malformed(&self, error: &FrameError, bytes: usize) {
        self.frame("malformed");
        self.dead_letters.inc(error.class(), || {
            self.metrics
                .feed_dead_letters
                .with_label_values(&[&self.exchange, error.class()])
        });
        self.account(NO_TIER, Outcome::Received);
        self.account(NO_TIER, Outcome::DeadLettered);
        tracing::warn!(exchange = %self.exchange, reason = %error, bytes, "malformed frame dead-lettered");
    }

    /// A connection attempt ended as `outcome` (`connected`, `failed`,
    /// `restart`).
    pub fn connection(&self, outcome: &str) {
        self.metrics
            .feed_connections
            .with_label_values(&[&self.exchange, outcome])
            .inc();
    }
}

/// The producer's events. Lives on the producer's thread. Only trades
/// carry a tier; a dead letter's outcomes are not in the accounting (its
/// frame was counted as dead-lettered when it arrived).
pub struct ProducerEvents {
    metrics: Metrics,
    accounts: PerExchange<(Tier, Outcome)>,
    /// `ticklake_shed_total`.
    shed: PerExchange<(Tier, Level)>,
}

impl ProducerEvents {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            accounts: PerExchange::new(),
            shed: PerExchange::new(),
        }
    }

    fn account(&self, exchange: &str, tier: Option<Tier>, outcome: Outcome) {
        let Some(tier) = tier else {
            return;
        };
        self.accounts.inc(exchange, (tier, outcome), || {
            self.metrics
                .messages
                .with_label_values(&[exchange, tier.label(), outcome.as_str()])
        });
    }

    /// A trade dropped on purpose at `level`.
    pub fn shed(&self, exchange: &str, tier: Tier, level: Level) {
        self.account(exchange, Some(tier), Outcome::Shed);
        self.shed.inc(exchange, (tier, level), || {
            self.metrics
                .shed
                .with_label_values(&[exchange, tier.label(), level.as_str()])
        });
    }

    /// A record that could not be encoded: a bug, not an overload. It goes
    /// on as a dead letter, so a trade counts as dead-lettered.
    pub fn unencodable(&self, exchange: &str, tier: Option<Tier>, error: &dyn std::fmt::Display) {
        tracing::error!(exchange, error = %error, "record could not be encoded; dead-lettering it");
        self.account(exchange, tier, Outcome::DeadLettered);
    }

    /// A record written to the spill log.
    pub fn spilled(&self, exchange: &str, tier: Option<Tier>) {
        self.account(exchange, tier, Outcome::Spilled);
    }

    /// A record the spill log could not take: lost, and said as loudly as
    /// possible.
    pub fn spill_failed(&self, exchange: &str, error: &dyn std::fmt::Display) {
        tracing::error!(error = %error, exchange, "spill log append failed; record lost");
        self.metrics
            .actor_errors
            .with_label_values(&["producer", "spill"])
            .inc();
    }

    /// A record the broker refuses for good, moved to the quarantine file.
    pub fn quarantined(&self, exchange: &str, tier: Option<Tier>, error: &dyn std::fmt::Display) {
        tracing::error!(exchange, error = %error, "the broker refuses this record for good; moved to the quarantine file");
        self.account(exchange, tier, Outcome::Quarantined);
        self.metrics
            .spill_quarantined
            .with_label_values(&[exchange])
            .inc();
    }

    /// A record replayed from the spill log: one this run spilled, or one
    /// an earlier run left there (restored).
    pub fn replayed(&self, exchange: &str, tier: Option<Tier>, from_earlier_run: bool) {
        let outcome = if from_earlier_run {
            Outcome::Restored
        } else {
            Outcome::Replayed
        };
        self.account(exchange, tier, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
        m.registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|s| {
                labels.iter().all(|(k, v)| {
                    s.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|s| s.get_counter().get_value() as u64)
            .sum()
    }

    #[test]
    fn a_malformed_frame_is_counted_everywhere_it_belongs() {
        let m = Metrics::new().unwrap();
        let events = FeedEvents::new(m.clone(), "BINANCE");
        events.malformed(&FrameError::Empty, 0);
        events.malformed(&FrameError::Empty, 0);
        assert_eq!(
            value(&m, "ticklake_feed_frames_total", &[("kind", "malformed")]),
            2
        );
        assert_eq!(value(&m, "ticklake_feed_dead_letters_total", &[]), 2);
        let accounts = crate::metrics::accounts(&m);
        assert_eq!(accounts.len(), 1);
        assert_eq!(accounts[0].tier, "none");
        assert_eq!(
            (
                accounts[0].received,
                accounts[0].dead_lettered,
                accounts[0].in_flight
            ),
            (2, 2, 0)
        );
    }

    #[test]
    fn series_appear_only_once_something_happened() {
        let m = Metrics::new().unwrap();
        let events = FeedEvents::new(m.clone(), "BINANCE");
        assert!(crate::metrics::accounts(&m).is_empty());
        events.trade_received("trade", Tier::Two);
        events.trade_received("trade", Tier::Two);
        events.duplicate(Tier::Two);
        events.skipped("depthUpdate");
        let accounts = crate::metrics::accounts(&m);
        assert_eq!(accounts.len(), 1, "only tier 2 saw traffic");
        assert_eq!((accounts[0].received, accounts[0].deduplicated), (2, 1));
        assert_eq!(value(&m, "ticklake_feed_duplicates_total", &[]), 1);
        assert_eq!(
            value(&m, "ticklake_feed_frames_total", &[("kind", "trade")]),
            2
        );
        assert_eq!(
            value(&m, "ticklake_feed_frames_total", &[("kind", "depthUpdate")]),
            1
        );
    }

    #[test]
    fn producer_outcomes_count_for_trades_only() {
        let m = Metrics::new().unwrap();
        let events = ProducerEvents::new(m.clone());
        events.shed("BINANCE", Tier::Three, Level::Graceful);
        events.spilled("BINANCE", Some(Tier::Three));
        events.spilled("BINANCE", None);
        events.replayed("BINANCE", Some(Tier::Three), false);
        events.replayed("BINANCE", Some(Tier::Three), true);
        events.unencodable("BINANCE", None, &"bad");
        let a = crate::metrics::accounts(&m);
        assert_eq!(a.len(), 1, "a dead letter's outcomes are not accounted");
        assert_eq!((a[0].tier.as_str(), a[0].shed, a[0].restored), ("3", 1, 1));
        // spilled 1, replayed 1: nothing pending
        assert_eq!(a[0].spilled_pending, 0);
        assert_eq!(
            value(
                &m,
                "ticklake_shed_total",
                &[("tier", "3"), ("level", "GRACEFUL")]
            ),
            1
        );
    }
}
