//! The lake side of the accounting identity, matched record by record: a
//! trade counts against this run's `published` once the broker acknowledged
//! it at an offset, and as `stored` (or `deduplicated_at_writer`) once a
//! commit of the trades table covered that same offset. The two halves meet
//! here, in whichever order they arrive (a commit can cover a record
//! before its acknowledgement reaches the producer).
//!
//! What a commit covers and no acknowledgement of this run names was
//! published by someone else: an earlier run (below a partition's end at
//! start, at once; or a killed run's last batch that the broker appended
//! after the restart), another producer, or a second physical copy of a
//! record whose first write's acknowledgement was lost. Those rows are
//! `carried_over`, outside this run's identity: at once below the start
//! end, else after [`UNMATCHED_AFTER`] without an acknowledgement.
//!
//! An idempotent producer's retry of a batch the broker had already written
//! is acknowledged with no offset (librdkafka's DUPLICATE_SEQUENCE_NUMBER:
//! persisted, offset unknown), which happens around a broker restart. Such
//! an acknowledgement cannot meet its commit by offset; a committed row
//! that waited [`UNMATCHED_AFTER`] in vain is matched to one of them of the
//! same partition, exchange and tier before it would count as carried over.
//!
//! A broker can also acknowledge a record at an offset it is not at: seen
//! on Tansu around a restart, where the topic held every record once, the
//! lake every trade once, and one acknowledgement named an offset no
//! commit ever covered while its record's row waited in vain. The trades
//! writer commits a partition in offset order, so an acknowledged offset
//! below the highest committed one that no commit covered is such an
//! orphan; it is matched like an acknowledgement without an offset.
//!
//! A row counted carried over after waiting is remembered (the newest
//! [`MAX_LATE_CARRIED`] per partition): an acknowledgement that comes later
//! after all, as a retry held up by a broker outage does, claims it then
//! (its own offset, or any of the same exchange and tier when it has none
//! or is an orphan), counted as stored (or a copy) and as `reclaimed`,
//! which takes it back out of `carried_over`.
//!
//! So, exactly: `published = stored + deduplicated_at_writer + in_transit`,
//! where in transit is acknowledged and not yet covered by a commit.
//!
//! The ledger also knows each partition's highest acknowledged offset,
//! which is fresh when the broker is too busy to answer a watermark
//! request quickly; the degradation supervisor's lag uses it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fastmap::FastMap;
use crate::instruments::Tier;
use crate::metrics::{Metrics, Outcome};

/// How long a committed row at or past the start end waits for this run's
/// acknowledgement of its offset before it counts as someone else's. Acks
/// arrive within the broker's round trip; this is far beyond it.
pub const UNMATCHED_AFTER: Duration = Duration::from_secs(30);

/// What the trades writer did with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Stored,
    Duplicate,
}

impl Fate {
    fn outcome(self) -> Outcome {
        match self {
            Fate::Stored => Outcome::Stored,
            Fate::Duplicate => Outcome::DeduplicatedAtWriter,
        }
    }
}

/// A committed row: where it was and what became of it.
#[derive(Debug, Clone)]
pub struct CommittedRow {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub exchange: Arc<str>,
    pub tier: Tier,
    pub fate: Fate,
}

/// A committed row as the trades writer notes it: its topic and exchange
/// by their index into the writer's [`RowNames`]. It holds no references,
/// so noting one costs no reference counts: cloning the exchange's `Arc`
/// into every row was most of the writer's per-row accounting in a profile
/// of `ticklake bench` (`perf annotate`: 80 % of `Tally::note` on that one
/// locked increment; likely paying too for the stores of the row before,
/// which a locked instruction waits to drain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotedRow {
    pub names: u32,
    pub partition: i32,
    pub offset: i64,
    pub tier: Tier,
    pub fate: Fate,
}

/// The (topic, exchange) pairs [`NotedRow`]s name, each once.
#[derive(Debug, Default)]
pub struct RowNames {
    pairs: Vec<(Arc<str>, Arc<str>)>,
    /// The last pair asked for: a chunk's rows are one topic's, which is
    /// one exchange's, so nearly every row asks for it again.
    last: Option<u32>,
}

impl RowNames {
    /// The index of (`topic`, `exchange`), added the first time.
    pub fn index(&mut self, topic: &Arc<str>, exchange: &str) -> u32 {
        let same = |(t, e): &(Arc<str>, Arc<str>)| {
            (Arc::ptr_eq(t, topic) || **t == **topic) && **e == *exchange
        };
        if let Some(i) = self.last
            && same(&self.pairs[i as usize])
        {
            return i;
        }
        let i = match self.pairs.iter().position(same) {
            Some(i) => i,
            None => {
                self.pairs.push((topic.clone(), Arc::from(exchange)));
                self.pairs.len() - 1
            }
        };
        // Pairs are few (topics times exchanges), never near u32::MAX.
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        self.last = Some(i);
        i
    }

    /// The topic and exchange of index `i` (from [`index`](Self::index)).
    pub fn get(&self, i: u32) -> &(Arc<str>, Arc<str>) {
        &self.pairs[i as usize]
    }
}

/// Entries by offset, kept in offset order: a `BTreeMap`'s interface for
/// what this ledger does with it, on a sorted deque. A partition's
/// acknowledgements arrive in offset order and its commits cover offsets
/// in order, so nearly every insert is at the back and nearly every
/// removal at the front, each a few instructions; a `BTreeMap` paid a tree
/// search, and a node allocation now and then, for each (callgrind: about
/// 1,400 instructions an acknowledgement and 1,000 a committed row, the
/// two maps' work most of it). Out of order, an insert or a removal is a
/// binary search and a shift, as in a sorted vector.
struct OffsetMap<V> {
    entries: VecDeque<(i64, V)>,
}

impl<V> Default for OffsetMap<V> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
        }
    }
}

impl<V> OffsetMap<V> {
    fn find(&self, offset: i64) -> Result<usize, usize> {
        // Past the newest, as a new acknowledgement nearly always is.
        if self.entries.back().is_none_or(|(last, _)| *last < offset) {
            return Err(self.entries.len());
        }
        self.entries.binary_search_by_key(&offset, |(o, _)| *o)
    }

    /// Sets the entry at `offset`, returning the one it replaces.
    fn insert(&mut self, offset: i64, value: V) -> Option<V> {
        if self.entries.back().is_none_or(|(last, _)| *last < offset) {
            self.entries.push_back((offset, value));
            return None;
        }
        match self.find(offset) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (offset, value));
                None
            }
        }
    }

    fn remove(&mut self, offset: i64) -> Option<V> {
        if self
            .entries
            .front()
            .is_some_and(|(first, _)| *first == offset)
        {
            return self.entries.pop_front().map(|(_, v)| v);
        }
        let i = self.find(offset).ok()?;
        self.entries.remove(i).map(|(_, v)| v)
    }

    fn get(&self, offset: i64) -> Option<&V> {
        self.find(offset).ok().map(|i| &self.entries[i].1)
    }

    fn contains_key(&self, offset: i64) -> bool {
        self.find(offset).is_ok()
    }

    /// The entries below `end`, in offset order.
    fn below(&self, end: i64) -> impl Iterator<Item = (i64, &V)> {
        self.entries
            .iter()
            .take_while(move |(o, _)| *o < end)
            .map(|(o, v)| (*o, v))
    }

    fn iter(&self) -> impl Iterator<Item = (i64, &V)> {
        self.entries.iter().map(|(o, v)| (*o, v))
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[derive(Default)]
struct Part {
    /// Acknowledged, no commit yet: offset → (exchange, tier).
    acked: OffsetMap<(Arc<str>, Tier)>,
    /// Acknowledged without an offset, no commit matched yet.
    unknown: Vec<(Arc<str>, Tier)>,
    /// Committed at or past the start end, no acknowledgement yet.
    waiting: OffsetMap<(CommittedRow, Instant)>,
    /// One past the highest acknowledged offset.
    high: i64,
    /// One past the highest offset a commit covered: an acknowledged
    /// offset below it that no commit covered is an orphan (module doc).
    committed_high: i64,
    /// Rows counted carried over after waiting in vain, oldest first:
    /// their acknowledgement may still come (a retry held up by a broker
    /// outage), and then reclaims them.
    late_carried: VecDeque<CommittedRow>,
}

impl Part {
    /// Settles the committed rows that waited too long for their own
    /// acknowledgement: one acknowledged without an offset (same exchange
    /// and tier) claims each if there is one, else the row was someone
    /// else's.
    fn settle_stale(&mut self, now: Instant, counts: &mut Counts) {
        if self.waiting.is_empty() {
            return;
        }
        let stale: Vec<i64> = self
            .waiting
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= UNMATCHED_AFTER)
            .map(|(o, _)| o)
            .collect();
        for o in stale {
            let Some((row, _)) = self.waiting.remove(o) else {
                continue;
            };
            let same = |e: &Arc<str>, t: &Tier| *t == row.tier && **e == *row.exchange;
            let unknown = self.unknown.iter().position(|(e, t)| same(e, t));
            let orphan = || {
                self.acked
                    .below(self.committed_high)
                    .find(|(_, (e, t))| same(e, t))
                    .map(|(o, _)| o)
            };
            let outcome = if let Some(i) = unknown {
                self.unknown.swap_remove(i);
                row.fate.outcome()
            } else if let Some(acked_at) = orphan() {
                self.acked.remove(acked_at);
                tracing::warn!(
                    topic = %row.topic,
                    partition = row.partition,
                    committed_at = row.offset,
                    acknowledged_at = acked_at,
                    "the broker acknowledged a record at an offset no commit covered; matched to a committed row that waited for its acknowledgement in vain"
                );
                row.fate.outcome()
            } else {
                tracing::debug!(
                    topic = %row.topic,
                    partition = row.partition,
                    offset = row.offset,
                    "a committed row waited in vain for this run's acknowledgement: carried over"
                );
                if self.late_carried.len() >= MAX_LATE_CARRIED {
                    self.late_carried.pop_front();
                }
                self.late_carried.push_back(row.clone());
                Outcome::CarriedOver
            };
            *counts.entry((row.exchange, row.tier, outcome)).or_default() += 1;
        }
    }

    /// Orphaned acknowledgements (below the committed high, no commit
    /// covered them) reclaim rows counted carried over, of the same
    /// exchange and tier.
    fn reclaim_orphans(&mut self, counts: &mut Counts) {
        if self.late_carried.is_empty() {
            return;
        }
        let orphans: Vec<i64> = self
            .acked
            .below(self.committed_high)
            .map(|(o, _)| o)
            .collect();
        for o in orphans {
            let Some((exchange, tier)) = self.acked.get(o).cloned() else {
                continue;
            };
            if let Some(fate) = self.reclaim(o, &exchange, tier) {
                self.acked.remove(o);
                tracing::warn!(
                    acknowledged_at = o,
                    "the broker acknowledged a record at an offset no commit covered; it reclaims a row counted carried over"
                );
                *counts
                    .entry((exchange.clone(), tier, fate.outcome()))
                    .or_default() += 1;
                *counts
                    .entry((exchange, tier, Outcome::Reclaimed))
                    .or_default() += 1;
            }
        }
    }

    /// A late acknowledgement (at `offset`, or without one: negative)
    /// claims a row counted carried over: its own offset's, else, when it
    /// has no offset or an orphaned one, any of the same exchange and tier.
    /// Returns its fate, which the caller counts with `reclaimed`.
    fn reclaim(&mut self, offset: i64, exchange: &str, tier: Tier) -> Option<Fate> {
        let exact = (offset >= 0)
            .then(|| self.late_carried.iter().position(|r| r.offset == offset))
            .flatten();
        let any = || {
            (offset < self.committed_high)
                .then(|| {
                    self.late_carried
                        .iter()
                        .position(|r| r.tier == tier && *r.exchange == *exchange)
                })
                .flatten()
        };
        let i = exact.or_else(any)?;
        self.late_carried.remove(i).map(|r| r.fate)
    }
}

/// What a settled row counts under: its exchange, tier and outcome.
type CountKey = (Arc<str>, Tier, Outcome);
type Counts = FastMap<CountKey, u64>;

/// [`Counts`] made from a long list whose neighbours mostly share a key
/// (one exchange, tier and outcome): a run is added up here and goes into
/// the map once, not a hash of the exchange's name per row.
#[derive(Default)]
struct RunCounts {
    counts: Counts,
    run: Option<(CountKey, u64)>,
}

impl RunCounts {
    fn add(&mut self, exchange: &Arc<str>, tier: Tier, outcome: Outcome) {
        if let Some(((e, t, o), n)) = &mut self.run
            && *t == tier
            && *o == outcome
            && (Arc::ptr_eq(e, exchange) || **e == **exchange)
        {
            *n += 1;
            return;
        }
        self.flush();
        self.run = Some(((exchange.clone(), tier, outcome), 1));
    }

    fn flush(&mut self) {
        if let Some((key, n)) = self.run.take() {
            *self.counts.entry(key).or_default() += n;
        }
    }

    fn done(mut self) -> Counts {
        self.flush();
        self.counts
    }
}

/// Most rows a partition remembers as carried over after waiting, for a
/// late acknowledgement to reclaim; beyond, the oldest are let go (they
/// stay carried over).
const MAX_LATE_CARRIED: usize = 100_000;

/// The partitions' books.
#[derive(Default)]
struct Ledger {
    parts: FastMap<(Arc<str>, i32), Part>,
}

/// Shared by the producer's delivery reports and the trades writer.
pub struct AckLedger {
    metrics: Metrics,
    /// Each partition's end when the daemon started: below it, nothing is
    /// this run's. Read once per committed row, so foldhash, not SipHash
    /// (callgrind: ~340 instructions a row).
    start_ends: FastMap<String, FastMap<i32, i64>>,
    ledger: Mutex<Ledger>,
}

impl AckLedger {
    pub fn new(metrics: Metrics, start_ends: HashMap<String, HashMap<i32, i64>>) -> Self {
        let start_ends = start_ends
            .into_iter()
            .map(|(topic, ends)| (topic, ends.into_iter().collect()))
            .collect();
        Self {
            metrics,
            start_ends,
            ledger: Mutex::new(Ledger::default()),
        }
    }

    fn start_end(&self, topic: &str, partition: i32) -> i64 {
        self.start_ends
            .get(topic)
            .and_then(|p| p.get(&partition))
            .copied()
            .unwrap_or(0)
    }

    /// The broker acknowledged a trade of `exchange` and `tier` at
    /// `offset` (it is already counted as published).
    /// A negative `offset` is an acknowledgement without one (see the
    /// module doc).
    /// `topic` and `exchange` are the shared names the producer's
    /// counters hold: one reference each, no lookup by text.
    pub fn acked(
        &self,
        topic: &Arc<str>,
        partition: i32,
        offset: i64,
        exchange: &Arc<str>,
        tier: Tier,
    ) {
        let (matched, reclaimed) = {
            let mut guard = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            let ledger = &mut *guard;
            let exchange = exchange.clone();
            let part = match ledger.parts.get_mut(&(topic.clone(), partition)) {
                Some(p) => p,
                None => ledger.parts.entry((topic.clone(), partition)).or_default(),
            };
            if offset >= 0 {
                part.high = part.high.max(offset + 1);
            }
            match part.waiting.remove(offset) {
                Some((row, _)) => (Some(row.fate), false),
                None => match part.reclaim(offset, &exchange, tier) {
                    Some(fate) => (Some(fate), true),
                    // Without an offset, or at one already acknowledged
                    // (two acknowledgements cannot both be right about
                    // it): matched like one without an offset.
                    None if offset < 0 || part.acked.contains_key(offset) => {
                        part.unknown.push((exchange, tier));
                        (None, false)
                    }
                    None => {
                        part.acked.insert(offset, (exchange, tier));
                        (None, false)
                    }
                },
            }
        };
        if let Some(fate) = matched {
            self.metrics
                .account(exchange, tier.label(), fate.outcome(), 1);
        }
        if reclaimed {
            self.metrics
                .account(exchange, tier.label(), Outcome::Reclaimed, 1);
        }
    }

    /// A commit of the trades table succeeded with these rows: the tests'
    /// way in, rows with their names; the writer notes its rows by index
    /// and calls [`committed_noted`](Self::committed_noted).
    #[cfg(test)]
    pub fn committed(&self, rows: Vec<CommittedRow>) {
        let mut names = RowNames::default();
        let noted: Vec<NotedRow> = rows
            .iter()
            .map(|r| NotedRow {
                names: names.index(&r.topic, &r.exchange),
                partition: r.partition,
                offset: r.offset,
                tier: r.tier,
                fate: r.fate,
            })
            .collect();
        self.committed_noted(&names, &noted);
    }

    /// A commit of the trades table succeeded with these rows, whose
    /// names are in `names`.
    pub fn committed_noted(&self, names: &RowNames, rows: &[NotedRow]) {
        let now = Instant::now();
        let mut counts = RunCounts::default();
        {
            let mut guard = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            let parts = &mut guard.parts;
            // A commit's rows come in runs of one partition (a fetched
            // chunk), so its start end and its books are looked up once a
            // run, not once a row (a hash of the topic's name each).
            let mut rows = rows.iter().peekable();
            while let Some(first) = rows.peek() {
                let (pair, partition) = (first.names, first.partition);
                let (topic, exchange) = names.get(pair);
                let start = self.start_end(topic, partition);
                let same = |r: &&NotedRow| r.partition == partition && r.names == pair;
                // Rows below the start end first: a run that is all carried
                // over leaves no books behind, as row by row.
                while let Some(row) = rows.next_if(|r| same(r) && r.offset < start) {
                    counts.add(exchange, row.tier, Outcome::CarriedOver);
                }
                if !rows.peek().is_some_and(same) {
                    continue;
                }
                let part = parts.entry((topic.clone(), partition)).or_default();
                while let Some(row) = rows.next_if(same) {
                    if row.offset < start {
                        counts.add(exchange, row.tier, Outcome::CarriedOver);
                        continue;
                    }
                    part.committed_high = part.committed_high.max(row.offset + 1);
                    match part.acked.remove(row.offset) {
                        Some((acked_by, tier)) => {
                            counts.add(&acked_by, tier, row.fate.outcome());
                        }
                        // Only a row that waits is written out with its
                        // names (rare: acknowledgements come within the
                        // broker's round trip, commits seconds later).
                        None => {
                            let waits = CommittedRow {
                                topic: topic.clone(),
                                partition,
                                offset: row.offset,
                                exchange: exchange.clone(),
                                tier: row.tier,
                                fate: row.fate,
                            };
                            part.waiting.insert(row.offset, (waits, now));
                        }
                    }
                }
            }
        }
        self.count(counts.done());
        // Rows no acknowledgement of this run claimed in time.
        self.sweep_at(now);
    }

    /// Settles committed rows that waited [`UNMATCHED_AFTER`] in vain. The
    /// trades writer calls this on its timer, so a daemon that has stopped
    /// committing still settles its last rows.
    pub fn sweep(&self) {
        self.sweep_at(Instant::now());
    }

    fn sweep_at(&self, now: Instant) {
        let mut counts = Counts::default();
        {
            let mut guard = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            for part in guard.parts.values_mut() {
                part.settle_stale(now, &mut counts);
                part.reclaim_orphans(&mut counts);
            }
        }
        self.count(counts);
    }

    fn count(&self, counts: Counts) {
        for ((exchange, tier, outcome), n) in counts {
            self.metrics.account(&exchange, tier.label(), outcome, n);
        }
    }

    /// One past the highest offset acknowledged, per topic and partition.
    pub fn acked_highs(&self) -> Vec<(Arc<str>, i32, i64)> {
        let guard = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .parts
            .iter()
            .filter(|(_, p)| p.high > 0)
            .map(|((t, p), part)| (t.clone(), *p, part.high))
            .collect()
    }

    /// Acknowledged and not yet covered by a commit, and committed rows
    /// still waiting for an acknowledgement.
    pub fn pending(&self) -> (usize, usize) {
        let guard = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        guard.parts.values().fold((0, 0), |(a, w), p| {
            (a + p.acked.len() + p.unknown.len(), w + p.waiting.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::accounts;

    fn row(offset: i64, fate: Fate) -> CommittedRow {
        CommittedRow {
            topic: Arc::from("t"),
            partition: 0,
            offset,
            exchange: Arc::from("BINANCE"),
            tier: Tier::One,
            fate,
        }
    }

    /// The offset map answers as a `BTreeMap` would, whatever the order of
    /// inserts and removals: mostly in order, as acknowledgements and
    /// commits come, with some out of order, repeated and missing offsets.
    #[test]
    fn the_offset_map_answers_as_a_btree_map() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut map = OffsetMap::default();
        let mut reference = std::collections::BTreeMap::new();
        let (mut next_in, mut next_out) = (0i64, 0i64);
        for step in 0..20_000u32 {
            let offset = match rng.random_range(0..10) {
                0..=5 => {
                    next_in += 1;
                    next_in
                }
                6 | 7 => {
                    next_out += 1;
                    next_out
                }
                _ => rng.random_range(0..next_in.max(1) + 5),
            };
            if rng.random_bool(0.55) {
                assert_eq!(map.insert(offset, step), reference.insert(offset, step));
            } else {
                assert_eq!(map.remove(offset), reference.remove(&offset));
            }
            let probe = rng.random_range(0..next_in.max(1) + 5);
            assert_eq!(map.get(probe), reference.get(&probe));
            assert_eq!(map.contains_key(probe), reference.contains_key(&probe));
            assert_eq!(map.len(), reference.len());
            assert_eq!(map.is_empty(), reference.is_empty());
            if step % 97 == 0 {
                let got: Vec<_> = map.below(probe).map(|(o, v)| (o, *v)).collect();
                let want: Vec<_> = reference.range(..probe).map(|(o, v)| (*o, *v)).collect();
                assert_eq!(got, want);
                let all: Vec<_> = map.iter().map(|(o, v)| (o, *v)).collect();
                let want: Vec<_> = reference.iter().map(|(o, v)| (*o, *v)).collect();
                assert_eq!(all, want);
            }
        }
        assert!(reference.len() > 100, "the run kept entries to compare");
    }

    /// Each (topic, exchange) pair has one index, whichever `Arc` names
    /// the topic, and asking again after other pairs finds it again.
    #[test]
    fn row_names_give_each_pair_one_index() {
        let mut n = RowNames::default();
        let (t, same_text, u): (Arc<str>, Arc<str>, Arc<str>) =
            (Arc::from("t"), Arc::from("t"), Arc::from("u"));
        let a = n.index(&t, "BINANCE");
        assert_eq!(n.index(&t, "BINANCE"), a);
        assert_eq!(n.index(&same_text, "BINANCE"), a);
        let b = n.index(&t, "KRAKEN");
        let c = n.index(&u, "BINANCE");
        assert!(a != b && b != c && a != c);
        assert_eq!(n.index(&t, "BINANCE"), a);
        let text = |i| {
            let (t, e) = n.get(i);
            (t.to_string(), e.to_string())
        };
        assert_eq!(text(b), ("t".to_string(), "KRAKEN".to_string()));
        assert_eq!(text(c), ("u".to_string(), "BINANCE".to_string()));
    }

    #[test]
    fn acknowledgements_and_commits_meet_in_either_order() {
        let m = Metrics::new().unwrap();
        let mut ends = HashMap::new();
        ends.insert("t".to_string(), [(0, 10i64)].into_iter().collect());
        let l = AckLedger::new(m.clone(), ends);
        m.account("BINANCE", "1", Outcome::Published, 3);
        // Offset 10: acked, then committed. 11: committed, then acked.
        // 12: acked, not committed yet. 5: below the start end.
        l.acked(&"t".into(), 0, 10, &"BINANCE".into(), Tier::One);
        l.acked(&"t".into(), 0, 12, &"BINANCE".into(), Tier::One);
        l.committed(vec![
            row(10, Fate::Stored),
            row(11, Fate::Duplicate),
            row(5, Fate::Stored),
        ]);
        assert_eq!(l.pending(), (1, 1));
        l.acked(&"t".into(), 0, 11, &"BINANCE".into(), Tier::One);
        let a = &accounts(&m)[0];
        assert_eq!(
            (
                a.stored,
                a.deduplicated_at_writer,
                a.carried_over,
                a.in_transit
            ),
            (1, 1, 1, 1)
        );
        l.committed(vec![row(12, Fate::Stored)]);
        let a = &accounts(&m)[0];
        assert_eq!((a.stored, a.in_transit), (2, 0));
        assert_eq!(l.pending(), (0, 0));
        assert_eq!(l.acked_highs(), vec![(Arc::from("t"), 0, 13)]);
    }

    /// A commit's rows count by exchange, tier and fate, and meet their
    /// acknowledgements, whatever their order over topics and partitions:
    /// runs of one partition, interleaved ones, and rows below a start end
    /// between rows past it. Checked against the rule applied row by row.
    #[test]
    fn rows_interleaved_over_partitions_count_as_row_by_row() {
        use rand::{Rng, SeedableRng};
        use std::collections::{BTreeMap, BTreeSet};
        let mut rng = rand::rngs::StdRng::seed_from_u64(44);
        let m = Metrics::new().unwrap();
        let mut ends = HashMap::new();
        ends.insert("t".to_string(), [(1, 40i64)].into_iter().collect());
        let l = AckLedger::new(m.clone(), ends);
        let names: Vec<Arc<str>> = ["t", "u"].into_iter().map(Arc::from).collect();
        let exchanges: Vec<Arc<str>> = ["BINANCE", "KRAKEN"].into_iter().map(Arc::from).collect();
        let tiers = [Tier::One, Tier::Two];
        // (topic, partition) → its next offset.
        let mut next: BTreeMap<(usize, i32), i64> = BTreeMap::new();
        let mut rows = Vec::new();
        while rows.len() < 3_000 {
            let (t, p) = (rng.random_range(0..2usize), rng.random_range(0..2i32));
            // Runs of a few rows of one partition, as fetched chunks come.
            for _ in 0..rng.random_range(1..40) {
                let offset = next.entry((t, p)).or_default();
                // The exchange and tier follow the partition: a topic's
                // partition carries one symbol's trades here.
                let (e, tier) = (t, tiers[p as usize]);
                let fate = if rng.random_bool(0.1) {
                    Fate::Duplicate
                } else {
                    Fate::Stored
                };
                rows.push(CommittedRow {
                    topic: names[t].clone(),
                    partition: p,
                    offset: *offset,
                    exchange: exchanges[e].clone(),
                    tier,
                    fate,
                });
                *offset += 1;
            }
        }
        let below_start = |r: &CommittedRow| &*r.topic == "t" && r.partition == 1 && r.offset < 40;
        // Most rows acknowledged before the commit; the rest after. Rows
        // below the start end were published by an earlier run: this one
        // neither published nor acknowledges them.
        let (mut now_acked, mut later) = (BTreeSet::new(), Vec::new());
        for (i, r) in rows.iter().enumerate() {
            if below_start(r) {
                continue;
            }
            m.account(&r.exchange, r.tier.label(), Outcome::Published, 1);
            let key = (r.topic.to_string(), r.partition, r.offset);
            if i % 5 == 0 {
                later.push(r.clone());
            } else {
                now_acked.insert(key);
                l.acked(&r.topic, r.partition, r.offset, &r.exchange, r.tier);
            }
        }
        // The rule, row by row.
        let mut want: BTreeMap<(String, String), (u64, u64, u64)> = BTreeMap::new();
        let mut waiting = 0;
        for r in &rows {
            let w = want
                .entry((r.exchange.to_string(), r.tier.label().to_string()))
                .or_default();
            if below_start(r) {
                w.2 += 1;
            } else if now_acked.contains(&(r.topic.to_string(), r.partition, r.offset)) {
                match r.fate {
                    Fate::Stored => w.0 += 1,
                    Fate::Duplicate => w.1 += 1,
                }
            } else {
                waiting += 1;
            }
        }
        l.committed(rows.clone());
        let got = |m: &Metrics| -> BTreeMap<(String, String), (u64, u64, u64)> {
            accounts(m)
                .into_iter()
                .map(|a| {
                    (
                        (a.exchange, a.tier),
                        (a.stored, a.deduplicated_at_writer, a.carried_over),
                    )
                })
                .collect()
        };
        assert_eq!(got(&m), want);
        let carried = rows.iter().filter(|r| below_start(r)).count();
        assert_eq!(l.pending(), (0, waiting));
        assert!(waiting > 100 && carried == 40, "the run covers every case");
        // The late acknowledgements meet the rows left waiting.
        for r in &later {
            l.acked(&r.topic, r.partition, r.offset, &r.exchange, r.tier);
        }
        let settled: u64 = got(&m).values().map(|(s, d, c)| s + d + c).sum();
        assert_eq!(settled as usize, rows.len());
        assert_eq!(l.pending(), (0, 0));
    }

    #[test]
    fn an_acknowledgement_without_offset_claims_a_row_left_waiting() {
        let m = Metrics::new().unwrap();
        let l = AckLedger::new(m.clone(), HashMap::new());
        m.account("BINANCE", "1", Outcome::Published, 2);
        // A retry the broker had written already: acknowledged, offset -1.
        l.acked(&"t".into(), 0, -1, &"BINANCE".into(), Tier::One);
        l.acked(&"t".into(), 0, 1, &"BINANCE".into(), Tier::One);
        l.committed(vec![row(0, Fate::Stored), row(1, Fate::Stored)]);
        assert_eq!(l.pending(), (1, 1));
        let a = &accounts(&m)[0];
        assert_eq!((a.stored, a.in_transit), (1, 1));
        // Too early: its own acknowledgement may still come.
        let t0 = Instant::now();
        l.sweep_at(t0);
        assert_eq!(accounts(&m)[0].in_transit, 1);
        // Past the wait, the offset-less acknowledgement claims it: stored,
        // not carried over, and nothing stays in transit.
        l.sweep_at(t0 + UNMATCHED_AFTER + Duration::from_secs(1));
        let a = &accounts(&m)[0];
        assert_eq!((a.stored, a.carried_over, a.in_transit), (2, 0, 0));
        assert_eq!(l.pending(), (0, 0));
        // With none left to claim it, a row waiting in vain is carried over.
        l.committed(vec![row(7, Fate::Stored)]);
        l.sweep_at(Instant::now() + UNMATCHED_AFTER + Duration::from_secs(1));
        let a = &accounts(&m)[0];
        assert_eq!((a.stored, a.carried_over, a.in_transit), (2, 1, 0));
        assert_eq!(l.acked_highs(), vec![(Arc::from("t"), 0, 2)]);
    }

    /// A broker outage can hold a retry's acknowledgement past the wait:
    /// the rows counted carried over are claimed back when it comes, with
    /// or without an offset, and nothing stays in transit.
    #[test]
    fn a_late_acknowledgement_reclaims_a_row_carried_over() {
        let m = Metrics::new().unwrap();
        let l = AckLedger::new(m.clone(), HashMap::new());
        m.account("BINANCE", "1", Outcome::Published, 2);
        l.committed(vec![row(3, Fate::Stored), row(4, Fate::Duplicate)]);
        l.sweep_at(Instant::now() + UNMATCHED_AFTER + Duration::from_secs(1));
        let a = &accounts(&m)[0];
        assert_eq!((a.stored, a.carried_over, a.in_transit), (0, 2, 2));
        l.acked(&"t".into(), 0, 4, &"BINANCE".into(), Tier::One);
        let a = &accounts(&m)[0];
        assert_eq!(
            (
                a.stored,
                a.deduplicated_at_writer,
                a.carried_over,
                a.in_transit
            ),
            (0, 1, 1, 1)
        );
        l.acked(&"t".into(), 0, -1, &"BINANCE".into(), Tier::One);
        let a = &accounts(&m)[0];
        assert_eq!((a.stored, a.carried_over, a.in_transit), (1, 0, 0));
        assert_eq!(l.pending(), (0, 0));
        // Nothing left to reclaim: a later acknowledgement waits for its
        // commit as usual.
        l.acked(&"t".into(), 0, -1, &"BINANCE".into(), Tier::One);
        assert_eq!(l.pending(), (1, 0));
    }

    /// An acknowledgement at an offset its record is not at (no commit
    /// covers it, though the writer committed past it) is matched to the
    /// row that waited in vain, whichever of the two is settled first.
    #[test]
    fn an_acknowledgement_at_the_wrong_offset_meets_its_row() {
        let m = Metrics::new().unwrap();
        let l = AckLedger::new(m.clone(), HashMap::new());
        let late = || Instant::now() + UNMATCHED_AFTER + Duration::from_secs(1);
        m.account("BINANCE", "1", Outcome::Published, 2);
        // Record at 5 acknowledged as 7; 9 acknowledged as itself.
        l.acked(&"t".into(), 0, 7, &"BINANCE".into(), Tier::One);
        l.acked(&"t".into(), 0, 9, &"BINANCE".into(), Tier::One);
        l.committed(vec![row(5, Fate::Stored), row(9, Fate::Stored)]);
        l.sweep_at(late());
        let a = &accounts(&m)[0];
        assert_eq!((a.stored, a.carried_over, a.in_transit), (2, 0, 0));
        assert_eq!(l.pending(), (0, 0));
        // Record at 10 acknowledged as 12, while the writer has committed
        // only up to 10: the row waits in vain and is carried over; once
        // a commit passes 12 without it, the acknowledgement reclaims it.
        m.account("BINANCE", "1", Outcome::Published, 2);
        l.acked(&"t".into(), 0, 12, &"BINANCE".into(), Tier::One);
        l.committed(vec![row(10, Fate::Duplicate)]);
        l.sweep_at(late());
        let a = &accounts(&m)[0];
        assert_eq!((a.deduplicated_at_writer, a.carried_over), (0, 1));
        l.acked(&"t".into(), 0, 13, &"BINANCE".into(), Tier::One);
        l.committed(vec![row(13, Fate::Stored)]);
        let a = &accounts(&m)[0];
        assert_eq!(
            (
                a.stored,
                a.deduplicated_at_writer,
                a.carried_over,
                a.in_transit
            ),
            (3, 1, 0, 0)
        );
        assert_eq!(l.pending(), (0, 0));
    }

    /// Two acknowledgements naming one offset: neither is lost, the second
    /// is matched like one without an offset.
    #[test]
    fn two_acknowledgements_of_one_offset_both_count() {
        let m = Metrics::new().unwrap();
        let l = AckLedger::new(m.clone(), HashMap::new());
        m.account("BINANCE", "1", Outcome::Published, 2);
        l.acked(&"t".into(), 0, 3, &"BINANCE".into(), Tier::One);
        l.acked(&"t".into(), 0, 3, &"BINANCE".into(), Tier::One);
        l.committed(vec![row(2, Fate::Stored), row(3, Fate::Stored)]);
        l.sweep_at(Instant::now() + UNMATCHED_AFTER + Duration::from_secs(1));
        let a = &accounts(&m)[0];
        assert_eq!((a.stored, a.carried_over, a.in_transit), (2, 0, 0));
        assert_eq!(l.pending(), (0, 0));
    }
}
