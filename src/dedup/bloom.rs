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
//!
//! Each generation is a split-block Bloom filter (the layout of Parquet's,
//! from the `sbbf-rs-safe` crate): a key sets one bit in each of the eight
//! 32-bit words of one 32-byte block, so an insert or a probe touches one
//! cache line. The classic filter it replaced set ~21 bits anywhere in tens
//! of megabytes at 1e-6: 21 cache misses per insert, and the feed's and the
//! writer's dedups together took 11 % of the whole path's CPU in
//! `ticklake bench`. A split-block filter needs more bits for the same
//! rate, which [`bits_per_key`] finds from its exact false-positive rate.

use sbbf_rs_safe::Filter as BloomFilter;

use crate::config::sizing::{BLOCK_BITS, WORD_BITS, bits_per_key, false_positive};

/// Bytes of one block: `Filter::new` rounds its size up to whole blocks.
const BLOCK_BYTES: usize = 32;
/// The crate picks a key's block with 32 bits of its hash.
const MAX_BLOCKS: usize = u32::MAX as usize;

/// Writes a zero to every page of `bytes`. The filter's memory comes
/// zeroed from the allocator, fresh from the OS for a large one, so no
/// page is mapped until written: without this, the first keys (on the
/// writer, the first commit's ids, on the ingest arbiter) would fault in
/// tens of megabytes at random, a stall on the freshness path
/// (`ticklake bench-api freshness --rate 10000`, three alternating runs:
/// p99 62.6, 43.1 and 40.2 ms untouched, 34.9, 33.2 and 26.4 touched).
/// Volatile, so the compiler cannot drop stores into memory it knows is
/// zero.
fn touch_pages(bytes: &mut [u8]) {
    const PAGE: usize = 4096;
    for i in (0..bytes.len()).step_by(PAGE) {
        // SAFETY: `i` is within `bytes`, a live, exclusive slice.
        unsafe { std::ptr::write_volatile(bytes.as_mut_ptr().add(i), 0) };
    }
}

/// The block of `filter` that `hash` falls on, loaded into the cache
/// (a hint: it does nothing on other architectures).
fn prefetch_block(filter: &BloomFilter, hash: u64) {
    let block = block_of(filter, hash);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let line = filter.as_bytes()[block * BLOCK_BYTES..]
            .as_ptr()
            .cast::<i8>();
        // SAFETY: a prefetch is a hint that never faults, and `line` points
        // into the filter's own bytes (`block_of` is below the block count).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = block;
}

/// The block `hash` sets or probes in `filter`, as the crate picks it.
pub(super) fn block_of(filter: &BloomFilter, hash: u64) -> usize {
    let blocks = (filter.as_bytes().len() / BLOCK_BYTES) as u64;
    (((hash >> 32) * blocks) >> 32) as usize
}

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
    /// The older generation is asked only when it took keys: until the
    /// first rotation (a writer's first 4 million ids) it holds none, and a
    /// probe of it is a cache miss that can only answer no.
    pub(super) fn may_contain(&self, hash: u64) -> bool {
        let Some(f) = &self.filters else {
            return false;
        };
        f[self.current].contains_hash(hash)
            || (self.older_holds_keys() && f[1 - self.current].contains_hash(hash))
    }

    fn older_holds_keys(&self) -> bool {
        self.older_start < self.current_start
    }

    /// Asks the CPU to load the blocks `may_contain(hash)` will read, so
    /// that a caller with many keys at hand (the writer, a consumed chunk's
    /// ids) overlaps their cache misses instead of waiting on each in turn.
    /// The block is found as the crate finds it (`sbbf-rs`: the hash's high
    /// 32 bits scaled to the block count); were that to change, the hint
    /// would go to the wrong line and cost a wasted load, never an answer.
    pub(super) fn prefetch(&self, hash: u64) {
        let Some(f) = &self.filters else {
            return;
        };
        prefetch_block(&f[self.current], hash);
        if self.older_holds_keys() {
            prefetch_block(&f[1 - self.current], hash);
        }
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
    /// Building allocates both (47 MB for 4 million keys at 1e-5) and
    /// touches every page, so the kernel maps and zeroes them now rather
    /// than at the first keys: a caller on a latency path builds them
    /// before its first key.
    pub(super) fn build(&mut self) -> bool {
        if self.filters.is_some() {
            return false;
        }
        let n = self.per_generation as usize;
        // Keys come hashed by the window's keyed hasher; the filter takes
        // the 64-bit hash as it is.
        // At least 1 bit a key (`bits_per_key`), and the cap that keeps the
        // blocks within `MAX_BLOCKS` is at least 256, since the window's
        // capacity (`n`) is at most `MAX_BLOCKS`.
        let bits = bits_per_key(self.rate).min(MAX_BLOCKS / n.max(1) * BLOCK_BITS as usize);
        // The crate does not check its allocation: a size the allocator
        // refuses (a capacity far beyond the machine) would be a null
        // pointer later. Asked first, it fails as any other allocation
        // does, naming its size.
        let bytes = (bits * n / 8).div_ceil(BLOCK_BYTES).max(1) * BLOCK_BYTES;
        if Vec::<u8>::new().try_reserve_exact(bytes).is_err() {
            let layout = std::alloc::Layout::from_size_align(bytes, 64)
                .unwrap_or_else(|_| std::alloc::Layout::new::<[u8; 64]>());
            std::alloc::handle_alloc_error(layout);
        }
        let build = || {
            let mut f = BloomFilter::new(bits, n);
            touch_pages(f.as_bytes_mut());
            f
        };
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
            f[self.current].reset();
        }
        self.older_start = self.current_start;
        self.current_start = next;
    }

    fn clear_all(&mut self, next: u64) {
        if let Some(f) = &mut self.filters {
            f.iter_mut().for_each(BloomFilter::reset);
        }
        self.older_start = next;
        self.current_start = next;
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.filters
            .as_ref()
            .map_or(0, |f| f.iter().map(|g| g.as_bytes().len()).sum())
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
        // Each key sets a given bit of its block's word with chance 1/32,
        // and falls in a given block with chance 1/blocks.
        let (mut set, mut bits) = (0.0, 0.0);
        for (f, n) in self.loads(tail) {
            let b = (f.as_bytes().len() * 8) as f64;
            let per_bit = WORD_BITS * b / BLOCK_BITS;
            set += (1.0 - (1.0 - 1.0 / per_bit).powf(n as f64)) * b;
            bits += b;
        }
        if bits > 0.0 { set / bits } else { 0.0 }
    }

    /// The chance that a key never seen is a Bloom positive now, from the
    /// keys each generation took.
    pub(super) fn expected_false_positive_rate(&self, tail: u64) -> f64 {
        self.loads(tail)
            .map(|(f, n)| false_positive(n as f64, (f.as_bytes().len() / BLOCK_BYTES) as f64))
            .sum()
    }

    /// The bits set, counted (reads every word: for benchmarks and tests).
    pub(super) fn bits_set(&self) -> (u64, u64) {
        self.filters.as_ref().map_or((0, 0), |f| {
            f.iter().fold((0, 0), |(set, all), g| {
                let ones: u64 = g.as_bytes().iter().map(|w| u64::from(w.count_ones())).sum();
                (set + ones, all + (g.as_bytes().len() * 8) as u64)
            })
        })
    }
}
