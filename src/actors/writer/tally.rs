//! The trades writer's share of the accounting identity: each row taken
//! in, with where it came from and whether it was stored or dropped as a
//! second copy, goes to the acknowledgement ledger (`kafka::acks`) when
//! the commit that covers it succeeds, never before: a failed commit
//! rewinds and reads the same records again, and counting them twice would
//! hide a loss.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::instruments::{Instruments, TierCache};
pub use crate::kafka::acks::Fate;
use crate::kafka::acks::{AckLedger, NotedRow, RowNames};

pub struct Tally {
    ledger: Arc<AckLedger>,
    tiers: TierCache,
    /// The topics and exchanges the rows name, each once.
    names: RowNames,
    /// Rows taken in since the last commit started.
    pending: Vec<NotedRow>,
    /// Rows of the running commit.
    in_commit: Vec<NotedRow>,
    swept: Instant,
}

impl Tally {
    pub fn new(instruments: Arc<Instruments>, ledger: Arc<AckLedger>) -> Self {
        Self {
            ledger,
            tiers: TierCache::new(instruments),
            names: RowNames::default(),
            pending: Vec::new(),
            in_commit: Vec::new(),
            swept: Instant::now(),
        }
    }

    /// One consumed trade of `exchange` and `symbol`, read at `at`
    /// (topic, partition, offset).
    pub fn note(&mut self, exchange: &str, symbol: &str, at: &(Arc<str>, i32, i64), fate: Fate) {
        let tier = self.tiers.tier(exchange, symbol);
        self.pending.push(NotedRow {
            names: self.names.index(&at.0, exchange),
            partition: at.1,
            offset: at.2,
            tier,
            fate,
        });
    }

    /// A commit of everything taken in so far starts.
    pub fn begin_commit(&mut self) {
        // One commit runs at a time; anything left from an earlier one was
        // settled or forgotten already.
        // The next commit's list starts at this one's size: grown from
        // empty, its reallocations took fresh memory the kernel zeroed,
        // a tenth of the consumer thread's page faults in a profile.
        let next = Vec::with_capacity(self.pending.len());
        self.in_commit = std::mem::replace(&mut self.pending, next);
    }

    /// The running commit succeeded: its rows count now.
    pub fn committed(&mut self) {
        let rows = std::mem::take(&mut self.in_commit);
        self.ledger.committed_noted(&self.names, &rows);
    }

    /// Settles rows that waited too long for an acknowledgement (the
    /// ledger's `sweep`), at most once a second: the wait is 30 s.
    pub fn sweep(&mut self) {
        if self.swept.elapsed() >= Duration::from_secs(1) {
            self.swept = Instant::now();
            self.ledger.sweep();
        }
    }

    /// The running commit succeeded, without the rows of the partitions in
    /// `below` under the offset given: another owner of those partitions
    /// committed them, and counts them.
    pub fn committed_except(&mut self, below: &std::collections::BTreeMap<(String, i32), i64>) {
        if !below.is_empty() {
            let names = &self.names;
            self.in_commit.retain(|r| {
                below
                    .get(&(names.get(r.names).0.to_string(), r.partition))
                    .is_none_or(|b| r.offset >= *b)
            });
        }
        self.committed();
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
    use crate::instruments::Tier;
    use crate::metrics::{Metrics, Outcome, accounts};

    #[test]
    fn rows_reach_the_ledger_only_with_their_commit() {
        let m = Metrics::new().unwrap();
        let ledger = Arc::new(AckLedger::new(m.clone(), std::collections::HashMap::new()));
        let mut t = Tally::new(Arc::new(Instruments::builtin().unwrap()), ledger.clone());
        let btc = ("BINANCE", "BTCUSDT");
        let topic: Arc<str> = Arc::from("t");
        m.account("BINANCE", "1", Outcome::Published, 3);
        for o in 0..3 {
            ledger.acked(&"t".into(), 0, o, &"BINANCE".into(), Tier::One);
        }
        t.note(btc.0, btc.1, &(topic.clone(), 0, 0), Fate::Stored);
        t.note(btc.0, btc.1, &(topic.clone(), 0, 1), Fate::Duplicate);
        t.begin_commit();
        // Taken in while the commit runs: belongs to the next one.
        t.note(btc.0, btc.1, &(topic.clone(), 0, 2), Fate::Stored);
        assert_eq!(
            accounts(&m)[0].in_transit,
            3,
            "nothing counts before the commit"
        );
        t.committed();
        let a = &accounts(&m)[0];
        assert_eq!(
            (a.stored, a.deduplicated_at_writer, a.in_transit),
            (1, 1, 1)
        );
        // A rewind forgets the uncommitted row; the next commit counts none.
        t.forget();
        t.begin_commit();
        t.committed();
        assert_eq!(accounts(&m)[0].in_transit, 1);
    }
}
