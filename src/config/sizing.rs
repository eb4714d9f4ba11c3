//! How big a message-id dedup (`crate::dedup`) is: its split-block Bloom
//! filter's exact false-positive rate and the bits a key that rate needs,
//! and a full dedup's memory. Here rather than in `dedup`, because the
//! config check of the capacities (`validate_dedup_memory`) needs the same
//! figures and `dedup` already reads the config.

use super::DEFAULT_FALSE_POSITIVE_RATE;

/// A block's bits, and its words' (a key sets one bit in each of 8 words).
pub const BLOCK_BITS: f64 = 256.0;
pub const WORD_BITS: f64 = 32.0;

/// The filter is never built for a lower rate: it already takes 96 bytes a
/// key there (a split-block filter needs ever more bits as the rate falls),
/// to save lookups that cost nothing measurable at 1e-5, and a typo
/// (`1e-60`) would size it at gigabytes.
pub const MIN_FALSE_POSITIVE_RATE: f64 = 1e-9;

/// The chance that a key never inserted is a positive in a split-block
/// filter holding `keys` keys in `blocks` blocks. Keys fall on blocks as a
/// Poisson draw of mean `keys / blocks`; in a block holding `c` keys a
/// probe is positive when each of its 8 bits is set, `(1 - (31/32)^c)^8`.
pub fn false_positive(keys: f64, blocks: f64) -> f64 {
    let mean = if blocks > 0.0 { keys / blocks } else { 0.0 };
    if mean <= 0.0 {
        return 0.0;
    }
    let positive = |c: f64| (1.0 - (1.0 - 1.0 / WORD_BITS).powf(c)).powi(8);
    if mean > 500.0 {
        // exp(-mean) underflows; this full, every probe is about positive.
        return positive(mean);
    }
    let (mut p, mut sum, mut c) = ((-mean).exp(), 0.0, 0.0);
    // Terms past mean + 12 sigma (and at least 60) add nothing visible.
    let last = mean + 12.0 * mean.sqrt() + 60.0;
    while c <= last {
        sum += p * positive(c);
        c += 1.0;
        p *= mean / c;
    }
    sum.min(1.0)
}

/// The fewest bits a key of capacity that keep a full split-block filter
/// within `rate`.
pub fn bits_per_key(rate: f64) -> usize {
    (1..=4096)
        .find(|&b| false_positive(1.0, b as f64 / BLOCK_BITS) <= rate)
        .unwrap_or(4096)
}

/// Bytes a dedup of `capacity` ids takes once full, with its Bloom filter
/// built for `false_positive_rate` (within the bounds [`effective_rate`]
/// applies): the window's keys and index as `Window::memory_bytes` counts
/// them, and both generations of the filter. The window's runs of times
/// are left out (one a commit). In `f64`, since a capacity from a config
/// file can be far past what fits in memory.
pub fn memory_at_capacity(capacity: usize, false_positive_rate: f64) -> f64 {
    let rate = effective_rate(false_positive_rate);
    let n = capacity.clamp(1, u32::MAX as usize) as f64;
    // hashbrown: a power-of-two bucket count at most 7/8 full, 4 bytes and
    // a control byte a bucket.
    let buckets = (n * 8.0 / 7.0).log2().ceil().exp2();
    let window = n * size_of::<u128>() as f64 + buckets * (size_of::<u32>() + 1) as f64;
    let filter = 2.0 * n * bits_per_key(rate / 2.0) as f64 / 8.0;
    window + filter
}

/// The rate a filter is built for, given the one asked.
pub fn effective_rate(false_positive_rate: f64) -> f64 {
    if false_positive_rate > 0.0 && false_positive_rate < 0.5 {
        false_positive_rate.max(MIN_FALSE_POSITIVE_RATE)
    } else {
        DEFAULT_FALSE_POSITIVE_RATE
    }
}
