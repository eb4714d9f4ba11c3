//! The trades writer's share of the accounting identity: rows stored,
//! second copies dropped, and rows carried over from an earlier run, per
//! exchange and tier. They are counted when the commit that covers them
//! succeeds, never before: a failed commit rewinds and reads the same
//! records again, and counting them twice would hide a loss.
//!
//! `published` counts acknowledgements, one per trade the run sent (the
//! feed drops repeats before they are sent). A trade can still reach the
//! broker twice: a write whose acknowledgement was lost and that the
//! producer sent again, or a broker's own retry. Only the first copy of a
//! message id of this run counts against `published`; the others are
//! `extra_copies`, shown apart, so the identity stays exact.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::dedup::Dedup;
use crate::instruments::{Instruments, Tier};
use crate::metrics::{Metrics, Outcome};
use crate::model::TradeV2;

/// What became of one consumed trade at the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Stored,
    Duplicate,
}

/// Outcomes in the order of a count slot.
const OUTCOMES: [Outcome; 4] = [
    Outcome::Stored,
    Outcome::DeduplicatedAtWriter,
    Outcome::CarriedOver,
    Outcome::ExtraCopy,
];

/// Per tier, counts in the order of [`OUTCOMES`].
type Counts = [[u64; 4]; 3];

pub struct Tally {
    instruments: Arc<Instruments>,
    /// exchange → symbol → tier, filled on first sight; the instruments'
    /// own lookup allocates, and this runs per row.
    tiers: HashMap<String, HashMap<String, Tier>>,
    /// Rows taken in since the last commit started.
    pending: HashMap<String, Counts>,
    /// Rows of the running commit.
    in_commit: HashMap<String, Counts>,
    /// Message ids of this run's trades seen so far: committed (bounded,
    /// oldest forgotten first), in the running commit, and since.
    run_committed: Dedup,
    run_in_commit: HashSet<u128>,
    run_pending: HashSet<u128>,
}

impl Tally {
    pub fn new(instruments: Arc<Instruments>, capacity: usize) -> Self {
        Self {
            instruments,
            tiers: HashMap::new(),
            pending: HashMap::new(),
            in_commit: HashMap::new(),
            run_committed: Dedup::new(capacity),
            run_in_commit: HashSet::new(),
            run_pending: HashSet::new(),
        }
    }

    fn tier(&mut self, exchange: &str, symbol: &str) -> Tier {
        if let Some(t) = self.tiers.get(exchange).and_then(|s| s.get(symbol)) {
            return *t;
        }
        let t = self.instruments.tier(exchange, symbol);
        self.tiers
            .entry(exchange.to_string())
            .or_default()
            .insert(symbol.to_string(), t);
        t
    }

    /// One consumed trade with its message-id key. `carried`: published
    /// by an earlier run or another producer.
    pub fn note(&mut self, t: &TradeV2, key: u128, fate: Fate, carried: bool) {
        let tier = self.tier(&t.exchange, &t.symbol);
        let slot = if carried {
            2
        } else if self.run_pending.contains(&key)
            || self.run_in_commit.contains(&key)
            || self.run_committed.contains_key(key)
        {
            3
        } else {
            self.run_pending.insert(key);
            match fate {
                Fate::Stored => 0,
                Fate::Duplicate => 1,
            }
        };
        let counts = match self.pending.get_mut(t.exchange.as_str()) {
            Some(c) => c,
            None => self.pending.entry(t.exchange.clone()).or_default(),
        };
        counts[tier.index()][slot] += 1;
    }

    /// A commit of everything taken in so far starts.
    pub fn begin_commit(&mut self) {
        // One commit runs at a time; anything left from an earlier one was
        // settled or forgotten already.
        self.in_commit = std::mem::take(&mut self.pending);
        self.run_in_commit = std::mem::take(&mut self.run_pending);
    }

    /// The running commit succeeded: its rows count now.
    pub fn committed(&mut self, metrics: &Metrics) {
        for k in self.run_in_commit.drain() {
            self.run_committed.first_time_key(k);
        }
        for (exchange, counts) in self.in_commit.drain() {
            for tier in Tier::ALL {
                for (slot, outcome) in OUTCOMES.iter().enumerate() {
                    let n = counts[tier.index()][slot];
                    if n > 0 {
                        metrics.account(&exchange, tier.label(), *outcome, n);
                    }
                }
            }
        }
    }

    /// A rewind: every row not committed is read again from Kafka.
    pub fn forget(&mut self) {
        self.pending.clear();
        self.in_commit.clear();
        self.run_pending.clear();
        self.run_in_commit.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::accounts;

    fn trade(symbol: &str) -> TradeV2 {
        TradeV2::builder("BINANCE", symbol, "1", 1).build()
    }

    #[test]
    fn counts_land_only_with_their_commit() {
        let m = Metrics::new().unwrap();
        let mut t = Tally::new(Arc::new(Instruments::builtin().unwrap()), 100);
        let btc = trade("BTCUSDT");
        t.note(&btc, 1, Fate::Stored, false);
        t.note(&btc, 2, Fate::Stored, false);
        // An earlier run's copy of trade 3 is in the lake already.
        t.note(&btc, 3, Fate::Duplicate, false);
        t.note(&btc, 4, Fate::Stored, true);
        t.begin_commit();
        // Taken in while the commit runs: belongs to the next one.
        t.note(&btc, 5, Fate::Stored, false);
        assert!(accounts(&m).is_empty(), "nothing counts before the commit");
        t.committed(&m);
        let a = accounts(&m);
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].stored, a[0].deduplicated_at_writer, a[0].carried_over),
            (2, 1, 1)
        );
        // A rewind forgets the uncommitted row; the next commit counts none.
        t.forget();
        t.begin_commit();
        t.committed(&m);
        assert_eq!(accounts(&m)[0].stored, 2);
        // A second copy of this run's trade 1 (its first write's
        // acknowledgement was lost): an extra copy, not a second publish.
        t.note(&btc, 1, Fate::Duplicate, false);
        t.begin_commit();
        t.committed(&m);
        let a = accounts(&m);
        assert_eq!((a[0].deduplicated_at_writer, a[0].extra_copies), (1, 1));
    }
}
