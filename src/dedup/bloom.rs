//! The Bloom filter in front of the exact window. A Bloom filter cannot
//! forget, so it is kept as two generations: new keys go to the current
//! one; when it has taken a window's capacity of keys, or when the window
//! has forgotten every key of the older one (`forget_before`'s time
//! window), the older one is cleared and becomes the current.
//!
//! Why that is exact enough: the window holds at most `capacity` keys, the
//! newest; each generation takes `capacity` keys, so when the current one
//! is full the window's keys are all in it and the older one holds none of
//! them. So every key the window holds is in one of the two filters: a
//! negative from both is new for certain.

use fastbloom::BloomFilter;

pub(super) struct Generations {
    /// `[a, b]`; `current` says which takes new keys. Built at the first
    /// key, so a dedup that never sees one (the dead-letter writer's)
    /// costs nothing.
    filters: Option<[BloomFilter; 2]>,
    current: usize,
    /// Keys one generation takes: the window's capacity.
    per_generation: u64,
    /// Each generation's false-positive rate when full: half the
    /// configured one, since a probe asks both.
    rate: f64,
    /// Sequence numbers: the older generation holds keys
    /// `older_start..current_start`, the current one from `current_start`.
    older_start: u64,
    current_start: u64,
}

impl Generations {
    pub(super) fn new(capacity: usize, false_positive_rate: f64) -> Self {
        Self {
            filters: None,
            current: 0,
            per_generation: capacity.max(1) as u64,
            rate: false_positive_rate / 2.0,
            older_start: 0,
            current_start: 0,
        }
    }

    /// False: the key is new for certain. True: it may have been seen.
    pub(super) fn may_contain(&self, hash: u64) -> bool {
        self.filters
            .as_ref()
            .is_some_and(|f| f.iter().any(|g| g.contains_hash(hash)))
    }

    /// Adds the key numbered `seq` while the window's oldest is `head`;
    /// true when this built the filters (their memory is new).
    pub(super) fn insert(&mut self, hash: u64, seq: u64, head: u64) -> bool {
        // The older generation is cleared only once the window holds none
        // of its keys: always so when the current one is full (see the
        // module's doc); were it not, the current one takes more keys than
        // it was sized for, which raises false positives, not misses.
        if seq.saturating_sub(self.current_start) >= self.per_generation
            && self.current_start <= head
        {
            self.rotate(seq);
        }
        let built = self.build();
        if let Some(filters) = &mut self.filters {
            filters[self.current].insert_hash(hash);
        }
        built
    }

    /// Builds the filters if they are not yet; true when this built them.
    /// Building writes every word of both (30 MB for 4 million keys at
    /// 1e-6): a caller on a latency path builds them before its first key.
    pub(super) fn build(&mut self) -> bool {
        if self.filters.is_some() {
            return false;
        }
        let (rate, n) = (self.rate, self.per_generation as usize);
        // Their own hasher is never used (keys come hashed by the window's
        // keyed one), so a fixed seed spares a random draw.
        let build = || BloomFilter::with_false_pos(rate).seed(&0).expected_items(n);
        self.filters = Some([build(), build()]);
        true
    }

    /// After the window forgot keys by time: its oldest is now `head`, the
    /// next key gets `tail`. A generation whose keys the window no longer
    /// holds would only send probes to it for nothing.
    pub(super) fn forgotten(&mut self, head: u64, tail: u64) {
        if head >= tail {
            if self.older_start < tail {
                self.clear_all(tail);
            }
        } else if self.current_start <= head && self.current_start < tail {
            self.rotate(tail);
        }
    }

    /// The older generation is cleared and takes new keys from `next`.
    fn rotate(&mut self, next: u64) {
        self.current = 1 - self.current;
        if let Some(f) = &mut self.filters {
            f[self.current].clear();
        }
        self.older_start = self.current_start;
        self.current_start = next;
    }

    fn clear_all(&mut self, next: u64) {
        if let Some(f) = &mut self.filters {
            f.iter_mut().for_each(BloomFilter::clear);
        }
        self.older_start = next;
        self.current_start = next;
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.filters
            .as_ref()
            .map_or(0, |f| f.iter().map(|g| g.num_bits() / 8).sum())
    }

    /// Keys each generation took, older first, with its filter.
    fn loads(&self, tail: u64) -> impl Iterator<Item = (&BloomFilter, u64)> {
        let counts = [
            self.current_start.saturating_sub(self.older_start),
            tail.saturating_sub(self.current_start),
        ];
        let older = 1 - self.current;
        self.filters
            .iter()
            .flat_map(move |f| [(&f[older], counts[0]), (&f[1 - older], counts[1])])
    }

    /// The fraction of all bits set, estimated from the keys each
    /// generation took (exact enough, and O(1): counting the bits of a
    /// 10-million-key filter takes milliseconds).
    pub(super) fn fill_ratio(&self, tail: u64) -> f64 {
        let (mut set, mut bits) = (0.0, 0.0);
        for (f, n) in self.loads(tail) {
            let b = f.num_bits() as f64;
            set += fastbloom::expected_density(f.num_hashes(), f.num_bits(), n as usize) * b;
            bits += b;
        }
        if bits > 0.0 { set / bits } else { 0.0 }
    }

    /// The chance that a key never seen is a Bloom positive now, from the
    /// keys each generation took.
    pub(super) fn expected_false_positive_rate(&self, tail: u64) -> f64 {
        self.loads(tail)
            .map(|(f, n)| f.expected_false_pos(n as usize))
            .sum()
    }

    /// The bits set, counted (reads every word: for benchmarks and tests).
    pub(super) fn bits_set(&self) -> (u64, u64) {
        self.filters.as_ref().map_or((0, 0), |f| {
            f.iter().fold((0, 0), |(set, all), g| {
                let ones: u64 = g.as_slice().iter().map(|w| u64::from(w.count_ones())).sum();
                (set + ones, all + g.num_bits() as u64)
            })
        })
    }
}
