//! The trades writer's share of the accounting identity: rows stored,
//! second copies dropped, and rows carried over from an earlier run, per
//! exchange and tier. They are counted when the commit that covers them
//! succeeds, never before: a failed commit rewinds and reads the same
//! records again, and counting them twice would hide a loss.

use std::collections::HashMap;
use std::sync::Arc;

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
const OUTCOMES: [Outcome; 3] = [
    Outcome::Stored,
    Outcome::DeduplicatedAtWriter,
    Outcome::CarriedOver,
];

/// Per tier, counts in the order of [`OUTCOMES`].
type Counts = [[u64; 3]; 3];

pub struct Tally {
    instruments: Arc<Instruments>,
    /// exchange → symbol → tier, filled on first sight; the instruments'
    /// own lookup allocates, and this runs per row.
    tiers: HashMap<String, HashMap<String, Tier>>,
    /// Rows taken in since the last commit started.
    pending: HashMap<String, Counts>,
    /// Rows of the running commit.
    in_commit: HashMap<String, Counts>,
}

impl Tally {
    pub fn new(instruments: Arc<Instruments>) -> Self {
        Self {
            instruments,
            tiers: HashMap::new(),
            pending: HashMap::new(),
            in_commit: HashMap::new(),
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

    /// One consumed trade. `carried`: published by an earlier run.
    pub fn note(&mut self, t: &TradeV2, fate: Fate, carried: bool) {
        let tier = self.tier(&t.exchange, &t.symbol);
        let slot = match (carried, fate) {
            (true, _) => 2,
            (false, Fate::Stored) => 0,
            (false, Fate::Duplicate) => 1,
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
    }

    /// The running commit succeeded: its rows count now.
    pub fn committed(&mut self, metrics: &Metrics) {
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
        let mut t = Tally::new(Arc::new(Instruments::builtin().unwrap()));
        let btc = trade("BTCUSDT");
        t.note(&btc, Fate::Stored, false);
        t.note(&btc, Fate::Stored, false);
        t.note(&btc, Fate::Duplicate, false);
        t.note(&btc, Fate::Stored, true);
        t.begin_commit();
        // Taken in while the commit runs: belongs to the next one.
        t.note(&btc, Fate::Stored, false);
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
    }
}
