//! Drops trades already seen, by message id: a reconnect that overlaps the
//! previous connection, or a source that starts over, must not store a trade
//! twice. Memory is bounded; the oldest ids are forgotten first.
//!
//! Two parts. The exact window (`window`) holds the most recent ids: at
//! most `capacity` of them, and, for a caller that gives times (the
//! writer), none seen before the cutoff it last passed to `forget_before`.
//! It alone decides what is a duplicate. In front of it, a Bloom filter
//! (`bloom`), sized from the capacity and `dedup.false_positive_rate`: a
//! negative is new for certain and skips the window; a positive is looked
//! up, and one the window does not hold is a false-positive confirmation,
//! counted, and the id is new. Nearly every id is new, so nearly none is
//! looked up in the window, which is what matters once the window is not in
//! this process's memory but a shared store.
//!
//! Memory, for a capacity of `n` ids: the window takes 16 bytes a key plus
//! an index of 5 bytes a bucket (a power of two, up to twice what `n`
//! needs after much churn); the filter, two generations of `n` keys each at
//! half the rate, split-block filters of `bloom::bits_per_key(rate / 2)`
//! bits a key each: 11.75 bytes a key in all at 1e-5, 18.75 at 1e-6.
//! `ticklake bench-dedup` measures it.

mod bloom;
mod gauges;
pub mod shared;
mod window;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::Metrics;
use bloom::Generations;
use gauges::Gauges;
use window::Window;

pub use crate::config::DEFAULT_FALSE_POSITIVE_RATE;

pub use crate::config::sizing::{MIN_FALSE_POSITIVE_RATE, memory_at_capacity};

/// How many keys ahead the batch calls hint the filter's blocks: enough
/// to cover a miss's latency with the work of the keys between, few enough
/// that the hinted lines are still cached when asked.
const PREFETCH_AHEAD: usize = 8;

/// Keys whose slots in the window's index the inserting batch calls read
/// into the cache together, a block ahead of inserting them: 256 lines
/// of control bytes, 16 KiB, stay in the core's own caches until used.
const TOUCH_BLOCK: usize = 256;

/// New ids between two updates of the memory and fill gauges.
const REPORT_EVERY: u32 = 1_000;

/// The compact key of a message id: ids are UUIDs, and their 128-bit value
/// keeps entries small; anything else is hashed into one.
pub fn key(message_id: &str) -> u128 {
    uuid::Uuid::parse_str(message_id)
        .map(|u| u.as_u128())
        .unwrap_or_else(|_| {
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, message_id.as_bytes()).as_u128()
        })
}

/// How many ids a dedup remembers, and its Bloom filter's rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizing {
    pub capacity: usize,
    pub false_positive_rate: f64,
}

impl Sizing {
    pub const fn new(capacity: usize, false_positive_rate: f64) -> Self {
        Self {
            capacity,
            false_positive_rate,
        }
    }
}

/// What a dedup costs and how its filter does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DedupStats {
    /// Both generations of the Bloom filter (0 until the first id).
    pub bloom_bytes: usize,
    /// The exact window: keys, index and times.
    pub exact_bytes: usize,
    /// Fraction of the filter's bits set (estimated from the ids taken).
    pub bloom_fill_ratio: f64,
    /// Bloom positives the window did not hold, in all: false positives,
    /// and ids the window forgot while the filter still holds them.
    pub false_positives: u64,
    /// The chance that an id never seen is a Bloom positive now.
    pub expected_false_positive_rate: f64,
}

impl DedupStats {
    pub fn memory_bytes(&self) -> usize {
        self.bloom_bytes + self.exact_bytes
    }
}

pub struct Dedup {
    window: Window,
    bloom: Generations,
    false_positive_rate: f64,
    /// Atomic only so that `contains` can count through `&self`.
    false_positives: AtomicU64,
    /// Keys forgotten for room while younger than the window the caller
    /// promised to remember (`forget_before`'s cutoff): a second copy of
    /// one of them would no longer be recognised.
    forgotten_early: u64,
    /// The newest cutoff given to `forget_before`.
    cutoff: i64,
    gauges: Option<Gauges>,
    /// New ids since the gauges were last set.
    unreported: u32,
}

impl Dedup {
    /// At [`DEFAULT_FALSE_POSITIVE_RATE`].
    pub fn new(capacity: usize) -> Self {
        Self::with_rate(capacity, DEFAULT_FALSE_POSITIVE_RATE)
    }

    /// Remembers up to `capacity` ids (1 to `u32::MAX`), with a Bloom filter
    /// whose false-positive rate is at most `false_positive_rate` (from
    /// [`MIN_FALSE_POSITIVE_RATE`] up to 0.5; outside, the default). Its
    /// hashes are keyed at random.
    pub fn with_rate(capacity: usize, false_positive_rate: f64) -> Self {
        Self::seeded(capacity, false_positive_rate, rand::random())
    }

    pub fn sized(s: Sizing) -> Self {
        Self::with_rate(s.capacity, s.false_positive_rate)
    }

    /// [`with_rate`](Self::with_rate) with the hashes keyed by `seed`, so
    /// that which ids are false positives repeats (tests, benchmarks).
    pub fn seeded(capacity: usize, false_positive_rate: f64, seed: u128) -> Self {
        let rate = crate::config::sizing::effective_rate(false_positive_rate);
        let window = Window::new(capacity, seed);
        Self {
            bloom: Generations::new(window.capacity(), rate),
            window,
            false_positive_rate: rate,
            false_positives: AtomicU64::new(0),
            forgotten_early: 0,
            cutoff: i64::MIN,
            gauges: None,
            unreported: 0,
        }
    }

    /// Publishes its memory, fill and false positives as `owner`
    /// (`feed.binance`, `writer.trades`): the false positives as they
    /// happen, the gauges every 1,000 new ids and at every `forget_before`.
    pub fn reporting(mut self, metrics: &Metrics, owner: &str) -> Self {
        self.gauges = Some(Gauges::new(metrics, owner));
        self.report();
        self
    }

    /// Builds the Bloom filter now rather than at the first id. The first
    /// id would otherwise pay for writing all of it (tens of megabytes for
    /// a writer's capacity: a stall of the ingest path at the first commit
    /// after every start); a dedup that may never see an id (the
    /// dead-letter writer's) stays lazy and costs nothing. The exact
    /// window takes its room for the whole capacity too, so that it never
    /// grows (and rehashes) under the ingest path either.
    pub fn prepared(mut self) -> Self {
        self.prepare();
        self
    }

    /// [`prepared`](Self::prepared) in place; again, it does nothing.
    pub fn prepare(&mut self) {
        self.window.reserve_all();
        if self.bloom.build() {
            self.report();
        }
    }

    /// True when `message_id` is new (and remembers it, with no time: only
    /// room forgets it).
    pub fn first_time(&mut self, message_id: &str) -> bool {
        self.first_time_key_at(key(message_id), 0)
    }

    /// Whether `message_id` is remembered (without remembering it).
    pub fn contains(&self, message_id: &str) -> bool {
        self.contains_key(key(message_id))
    }

    /// [`contains`](Self::contains) on a key from [`key`].
    pub fn contains_key(&self, key: u128) -> bool {
        self.seen(key, self.window.hash(key))
    }

    /// [`contains_key`](Self::contains_key) for each of `keys`, in order.
    /// The filter's blocks are tens of megabytes away from the cache: each
    /// key's is hinted to the CPU `PREFETCH_AHEAD` keys before it is asked,
    /// so the misses overlap instead of coming one after another.
    pub fn contains_keys(&self, keys: &[u128]) -> Vec<bool> {
        let hashes = self.hinted_hashes(keys);
        (0..keys.len())
            .map(|i| {
                self.hint(&hashes, i + PREFETCH_AHEAD);
                self.seen(keys[i], hashes[i])
            })
            .collect()
    }

    /// [`first_time_key_at`](Self::first_time_key_at) for each of `keys`,
    /// in order, all seen at `at_us`, hinted ahead as
    /// [`contains_keys`](Self::contains_keys) does. The number of new ones.
    pub fn first_time_keys_at(&mut self, keys: &[u128], at_us: i64) -> usize {
        let mut new = 0;
        self.first_time_hinted(keys, at_us, |first| new += usize::from(first));
        new
    }

    /// [`first_time`](Self::first_time) for each of `keys`, in order (a
    /// repeat within `keys` is not new the second time), hinted ahead as
    /// [`contains_keys`](Self::contains_keys) does. The feed asks this for
    /// its batch of trades: one id at a time, it waited on one cache miss
    /// after another.
    pub fn first_time_each(&mut self, keys: &[u128]) -> Vec<bool> {
        let mut firsts = Vec::with_capacity(keys.len());
        self.first_time_hinted(keys, 0, |first| firsts.push(first));
        firsts
    }

    /// The batch calls' one loop: each of `keys` remembered as seen at
    /// `at_us`, in order, whether it was new handed to `answer`; the
    /// filter's blocks hinted `PREFETCH_AHEAD` keys ahead and the window's
    /// index slots read a block ahead, so the misses overlap.
    fn first_time_hinted(&mut self, keys: &[u128], at_us: i64, mut answer: impl FnMut(bool)) {
        let hashes = self.hinted_hashes(keys);
        self.touch_block(&hashes, 0);
        for (i, (&key, &hash)) in keys.iter().zip(&hashes).enumerate() {
            self.hint_for_insert(&hashes, i + PREFETCH_AHEAD);
            answer(self.first_time_hashed(key, hash, at_us));
        }
    }

    /// Each key's hash, once, with the first `PREFETCH_AHEAD` hinted.
    fn hinted_hashes(&self, keys: &[u128]) -> Vec<u64> {
        let hashes: Vec<u64> = keys.iter().map(|k| self.window.hash(*k)).collect();
        (0..PREFETCH_AHEAD).for_each(|i| self.hint(&hashes, i));
        hashes
    }

    /// Hints the filter's blocks for `hashes[i]`, if there is one.
    fn hint(&self, hashes: &[u64], i: usize) {
        if let Some(h) = hashes.get(i) {
            self.bloom.prefetch(*h);
        }
    }

    /// [`hint`](Self::hint), and for calls that insert: when `i` starts a
    /// block of `TOUCH_BLOCK` keys, the window's index slots of the whole
    /// block read into the cache ([`Window::touch`]). A new key's first
    /// touch of the index is its insert (the filter answers the probe), so
    /// only the inserting calls do it.
    fn hint_for_insert(&self, hashes: &[u64], i: usize) {
        self.hint(hashes, i);
        self.touch_block(hashes, i);
    }

    /// The window's index slots of `hashes[i..i + TOUCH_BLOCK]` read into
    /// the cache, when `i` starts a block.
    fn touch_block(&self, hashes: &[u64], i: usize) {
        if i.is_multiple_of(TOUCH_BLOCK) {
            let block = hashes.get(i..).unwrap_or_default();
            for h in &block[..block.len().min(TOUCH_BLOCK)] {
                self.window.touch(*h);
            }
        }
    }

    /// [`first_time`](Self::first_time) on a key from [`key`], remembering
    /// it as seen at `at_us` for [`forget_before`](Self::forget_before).
    pub fn first_time_key_at(&mut self, key: u128, at_us: i64) -> bool {
        self.first_time_hashed(key, self.window.hash(key), at_us)
    }

    /// [`first_time_key_at`](Self::first_time_key_at) with the key's hash
    /// already taken.
    fn first_time_hashed(&mut self, key: u128, hash: u64, at_us: i64) -> bool {
        if self.seen(key, hash) {
            return false;
        }
        if self.window.is_full()
            && let Some(at) = self.window.evict_oldest()
            && self.cutoff > i64::MIN
            && at >= self.cutoff
        {
            self.forgotten_early += 1;
        }
        let seq = self.window.push(key, hash, at_us);
        let built = self.bloom.insert(hash, seq, self.window.head());
        self.unreported += 1;
        if built || self.unreported >= REPORT_EVERY {
            self.report();
        }
        true
    }

    /// The filter first; only its positives are looked up in the window.
    fn seen(&self, key: u128, hash: u64) -> bool {
        if !self.bloom.may_contain(hash) {
            return false;
        }
        if self.window.contains(key, hash) {
            return true;
        }
        self.false_positives.fetch_add(1, Ordering::Relaxed);
        if let Some(g) = &self.gauges {
            g.false_positive();
        }
        false
    }

    /// Forgets the keys seen before `cutoff_us` (in the order they came,
    /// which callers keep close to time order), and from then on counts a
    /// key forgotten for room while seen at or after the newest cutoff.
    pub fn forget_before(&mut self, cutoff_us: i64) {
        self.cutoff = self.cutoff.max(cutoff_us);
        self.window.forget_before(cutoff_us);
        self.bloom.forgotten(self.window.head(), self.window.tail());
        self.report();
    }

    /// Keys forgotten for room while still inside the window (see
    /// [`forget_before`](Self::forget_before)), in all.
    pub fn forgotten_early(&self) -> u64 {
        self.forgotten_early
    }

    pub fn len(&self) -> usize {
        self.window.len()
    }

    pub fn is_empty(&self) -> bool {
        self.window.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.window.capacity()
    }

    /// The rate the filter is built for (the one asked, within bounds).
    pub fn false_positive_rate(&self) -> f64 {
        self.false_positive_rate
    }

    /// Its figures; O(1).
    pub fn stats(&self) -> DedupStats {
        let tail = self.window.tail();
        DedupStats {
            bloom_bytes: self.bloom.memory_bytes(),
            exact_bytes: self.window.memory_bytes(),
            bloom_fill_ratio: self.bloom.fill_ratio(tail),
            false_positives: self.false_positives.load(Ordering::Relaxed),
            expected_false_positive_rate: self.bloom.expected_false_positive_rate(tail),
        }
    }

    /// The filter's bits set and all its bits, counted one by one (reads
    /// all of it: for benchmarks and tests).
    pub fn bloom_bits_set(&self) -> (u64, u64) {
        self.bloom.bits_set()
    }

    fn report(&mut self) {
        self.unreported = 0;
        if let Some(g) = &self.gauges {
            let memory = self.bloom.memory_bytes() + self.window.memory_bytes();
            g.set(memory, self.bloom.fill_ratio(self.window.tail()));
        }
    }
}

#[cfg(test)]
mod tests;
