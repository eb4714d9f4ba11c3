//! The exact part of a dedup: the most recent keys, in the order they came,
//! with when each was seen. Leaner than a `HashSet<u128>` beside a queue of
//! `(u128, i64)`: each key is stored once (16 bytes, in the queue), the
//! index holds only its 4-byte sequence number, and times are kept as runs
//! (the feed passes none, a commit one for all its ids).

use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::HashTable;

/// Keys seen at one time: those with sequence numbers below `end`, back to
/// the previous run's end (or the window's oldest).
#[derive(Debug, Clone, Copy)]
struct Run {
    at: i64,
    end: u64,
}

pub(super) struct Window {
    /// Keys oldest first; the front one has sequence number `head`.
    keys: VecDeque<u128>,
    /// Every held key's sequence number, cut to 32 bits, found by the key's
    /// hash. The window holds fewer than 2^32 keys, so a number's wrapping
    /// distance from `head` is its exact place in `keys`.
    index: HashTable<u32>,
    times: VecDeque<Run>,
    head: u64,
    capacity: usize,
    /// Keyed per dedup, so that nobody who picks message ids can aim them at
    /// one bucket; the Bloom filter takes the same hash. foldhash's quality
    /// variant, not SipHash: the filter derives all its bit positions from
    /// this one 64-bit hash, so it must mix well, but the keys are UUIDs
    /// (SHA-1 output for the venues' ids), so a keyed fold is enough and
    /// costs a few nanoseconds where SipHash cost tens, twice per insert.
    hasher: foldhash::quality::FixedState,
}

impl Window {
    /// At most `capacity` keys (1 to `u32::MAX`).
    pub(super) fn new(capacity: usize, seed: u128) -> Self {
        Self {
            keys: VecDeque::new(),
            index: HashTable::new(),
            times: VecDeque::new(),
            head: 0,
            capacity: capacity.clamp(1, u32::MAX as usize),
            hasher: foldhash::quality::FixedState::with_seed((seed as u64) ^ ((seed >> 64) as u64)),
        }
    }

    pub(super) fn hash(&self, key: u128) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Sequence number of the oldest key held.
    pub(super) fn head(&self) -> u64 {
        self.head
    }

    /// Sequence number the next key gets.
    pub(super) fn tail(&self) -> u64 {
        self.head + self.keys.len() as u64
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries in the index: always `len()`, which a test checks.
    #[cfg(test)]
    pub(super) fn index_len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn is_full(&self) -> bool {
        self.keys.len() >= self.capacity
    }

    /// `key`, with its `hash` from [`hash`](Self::hash), is held.
    pub(super) fn contains(&self, key: u128, hash: u64) -> bool {
        let head = self.head as u32;
        self.index
            .find(hash, |&seq| {
                self.keys.get(seq.wrapping_sub(head) as usize) == Some(&key)
            })
            .is_some()
    }

    /// Reads the index's slots for `hash` (the group of control bytes a
    /// lookup or an insert of it starts at) into the cache, for a batch
    /// call to do for all its keys before it asks or inserts any. The
    /// index is megabytes across, so each key's first touch is a miss; in
    /// a loop of these reads alone the CPU has many misses in flight at
    /// once, where the inserts, each behind its key's other work, waited
    /// for theirs one after another (the trades writer's dedup went from
    /// 0.25 to 0.10 µs an id in `cargo bench --bench stages`). hashbrown
    /// offers no prefetch hint, so this is a lookup whose answer is thrown
    /// away.
    pub(super) fn touch(&self, hash: u64) {
        std::hint::black_box(self.index.find(hash, |_| false));
    }

    /// Takes the room for all `capacity` keys now: the queue's and the
    /// index's. Grown as keys come, each doubling of the index rehashes
    /// every key held, at a random place in memory each, on the caller's
    /// thread: the step to the writer's default 4 million keys stopped
    /// ingest for about a fifth of a second (`ticklake bench-dedup` prints the
    /// longest stall). An empty index's pages are written now as well
    /// ([`touch_index`](Self::touch_index)); the queue's are written in
    /// order as keys come, a page at a time.
    pub(super) fn reserve_all(&mut self) {
        let more = self.capacity.saturating_sub(self.keys.len());
        self.keys.reserve_exact(more);
        let more = self.capacity.saturating_sub(self.index.len());
        let rehash = rehasher(&self.keys, &self.hasher, self.head);
        self.index.reserve(more, rehash);
        self.touch_index();
    }

    /// Writes to every page of an empty index's buckets, so the kernel
    /// maps and zeroes them now and not under the first keys. The
    /// allocator hands a table this large over fresh from the OS, and only
    /// its control bytes are written when it is made; keys land at random
    /// across the buckets, so the first commit's ids on the trades
    /// writer (tens of thousands in one go, on the ingest arbiter) faulted
    /// in the whole 32 MB of the default's buckets at once: the tail took
    /// no rows for about 100 ms, the slowest 1 % of `ticklake bench-api
    /// freshness --rate 10000` (the kernel's page zeroing was 144 of the
    /// 178 samples of that thread in that window).
    ///
    /// In an empty table a hash lands in the bucket its low bits name, so
    /// one entry every `STEP` buckets writes every page; `clear` then
    /// empties the table and keeps its memory. Should the table's layout
    /// differ, fewer pages are touched: nothing else changes.
    fn touch_index(&mut self) {
        /// Buckets of 4 bytes: a 4 KiB page holds 1,024, so every 512th
        /// lands at least twice in each whole page (the table's ends may
        /// share a page with other memory).
        const STEP: usize = 512;
        if !self.index.is_empty() {
            return;
        }
        let rehash = rehasher(&self.keys, &self.hasher, self.head);
        for bucket in (0..self.index_buckets()).step_by(STEP) {
            self.index.insert_unique(bucket as u64, 0, &rehash);
        }
        self.index.clear();
    }

    /// Holds `key` (not held yet), seen at `at`; returns its sequence
    /// number. The caller makes room first ([`evict_oldest`]).
    ///
    /// [`evict_oldest`]: Self::evict_oldest
    pub(super) fn push(&mut self, key: u128, hash: u64, at: i64) -> u64 {
        let seq = self.tail();
        reserve_within(&mut self.keys, self.capacity);
        self.keys.push_back(key);
        let rehash = rehasher(&self.keys, &self.hasher, self.head);
        self.index.insert_unique(hash, seq as u32, rehash);
        match self.times.back_mut() {
            Some(run) if run.at == at => run.end = seq + 1,
            _ => {
                reserve_within(&mut self.times, self.capacity);
                self.times.push_back(Run { at, end: seq + 1 });
            }
        }
        seq
    }

    /// Forgets the oldest key; returns when it was seen.
    pub(super) fn evict_oldest(&mut self) -> Option<i64> {
        let key = self.keys.pop_front()?;
        let seq = self.head as u32;
        if let Ok(entry) = self.index.find_entry(self.hash(key), |&s| s == seq) {
            entry.remove();
        }
        self.head += 1;
        let at = self.times.front().map(|r| r.at);
        if self.times.front().is_some_and(|r| r.end <= self.head) {
            self.times.pop_front();
        }
        at
    }

    /// Forgets the keys seen before `cutoff`, oldest first, up to the first
    /// seen at or after it (callers keep arrival close to time order).
    pub(super) fn forget_before(&mut self, cutoff: i64) {
        while self.times.front().is_some_and(|r| r.at < cutoff) {
            if self.evict_oldest().is_none() {
                // No key left for the runs to describe.
                self.times.clear();
            }
        }
    }

    /// The index's buckets, from its capacity: hashbrown keeps a
    /// power-of-two bucket count at most 7/8 full (none before its first
    /// allocation).
    fn index_buckets(&self) -> usize {
        match self.index.capacity() {
            0 => 0,
            items => (items * 8 / 7).next_power_of_two(),
        }
    }

    /// Bytes allocated: the keys, the index (4 bytes and a control byte a
    /// bucket, estimated from its capacity) and the runs.
    pub(super) fn memory_bytes(&self) -> usize {
        let index = match self.index_buckets() {
            0 => 0,
            // plus one group of control bytes
            buckets => buckets * (size_of::<u32>() + 1) + 16,
        };
        self.keys.capacity() * size_of::<u128>() + index + self.times.capacity() * size_of::<Run>()
    }
}

/// The index's hasher for when its table grows: a sequence number's key
/// is found in `keys`, whose front is `head`. Every held key is there, so
/// the fallback hash is never used.
fn rehasher<'a>(
    keys: &'a VecDeque<u128>,
    hasher: &'a foldhash::quality::FixedState,
    head: u64,
) -> impl Fn(&u32) -> u64 + 'a {
    let head = head as u32;
    move |seq| {
        keys.get(seq.wrapping_sub(head) as usize)
            .map_or(0, |k| hasher.hash_one(k))
    }
}

/// Room for one more element, growing by doubling but never past `bound`
/// elements: a window of 10 million keys takes 160 MB, not the 268 MB that
/// plain doubling reaches.
fn reserve_within<T>(queue: &mut VecDeque<T>, bound: usize) {
    let len = queue.len();
    if len < queue.capacity() {
        return;
    }
    let more = len.max(1024).min(bound.saturating_sub(len)).max(1);
    queue.reserve_exact(more);
}
