//! `ticklake bench-dedup`: what the message-id dedup (`crate::dedup`) costs
//! in memory and how its Bloom filter does, at a given number of ids and
//! false-positive rate. Ids are message ids as the exchanges' parsers make
//! them (`model::message_id`, UUIDs), taken as the feed takes them
//! (`Dedup::first_time` on the string). Then as many ids never inserted are
//! probed (`Dedup::contains`, as the writer asks): each Bloom positive among
//! them is a false positive, and the exact check must refuse every one.
//! Last, the most recent ids are sent again and must all be caught. Ids are
//! made in batches outside the timed part. Use a release build.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::dedup::Dedup;
use crate::model::message_id;

/// Ids made (and timed) at a time: small next to the ids themselves.
const BATCH: usize = 65_536;

/// Recent ids sent again, at most.
const RESENT: usize = 100_000;

/// Ids timed together when looking for the slowest moment: a clock read
/// per id would cost a fifth of an insert, one per 64 next to nothing.
const CHUNK: usize = 64;

/// The hashes are keyed alike in every run, so a run repeats exactly.
const SEED: u128 = 0x0062_656e_6368_2d64_6564_7570;

#[derive(Debug, thiserror::Error)]
pub enum BenchDedupError {
    #[error("--ids and --capacity must be at least 1")]
    Empty,
    #[error("--capacity must be at most {max}", max = u32::MAX)]
    Capacity,
    #[error("--rate must be greater than 0 and less than 0.5, not {0}")]
    Rate(f64),
}

#[derive(Debug, Serialize)]
pub struct BenchDedupReport {
    pub ids: usize,
    pub capacity: usize,
    pub false_positive_rate: f64,
    pub bloom_bytes: usize,
    pub exact_bytes: usize,
    pub memory_bytes: usize,
    pub bytes_per_id: f64,
    /// Fraction of the filter's bits set, counted.
    pub bloom_fill_ratio: f64,
    /// The same, estimated from the ids taken (what the gauge shows).
    pub bloom_fill_estimated: f64,
    /// Ids never inserted that were Bloom positives.
    pub bloom_positives: u64,
    pub measured_false_positive_rate: f64,
    /// What the filter's fill predicts.
    pub expected_false_positive_rate: f64,
    /// Fresh ids the exact check took for duplicates: must be 0.
    pub exact_confirmed: u64,
    /// Positives the exact check refused (the dedup's own count).
    pub false_positive_confirmations: u64,
    pub insert_ids_per_s: f64,
    pub probe_ids_per_s: f64,
    /// The longest time 64 consecutive inserts took: where the window's
    /// storage grows, the caller (a feed's or a writer's thread) stalls.
    pub slowest_insert_chunk_us: f64,
    pub recent_resent: usize,
    pub recent_caught: usize,
}

impl std::fmt::Display for BenchDedupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |b: usize| b as f64 / 1e6;
        writeln!(
            f,
            "{} ids into a dedup of capacity {}, false-positive rate {:e}",
            self.ids, self.capacity, self.false_positive_rate
        )?;
        writeln!(
            f,
            "memory: Bloom filter {:.1} MB + exact window {:.1} MB = {:.1} MB, {:.1} bytes/id",
            mb(self.bloom_bytes),
            mb(self.exact_bytes),
            mb(self.memory_bytes),
            self.bytes_per_id
        )?;
        writeln!(
            f,
            "Bloom fill: {:.4} of its bits set (estimated {:.4})",
            self.bloom_fill_ratio, self.bloom_fill_estimated
        )?;
        writeln!(
            f,
            "{} fresh ids probed: {} Bloom positives, a rate of {:.3e} (expected {:.3e}); \
             the exact check confirmed {} and refused {}",
            self.ids,
            self.bloom_positives,
            self.measured_false_positive_rate,
            self.expected_false_positive_rate,
            self.exact_confirmed,
            self.false_positive_confirmations
        )?;
        writeln!(
            f,
            "throughput: insert {:.0} ids/s, probe {:.0} ids/s",
            self.insert_ids_per_s, self.probe_ids_per_s
        )?;
        writeln!(
            f,
            "longest stall: {:.1} µs for {CHUNK} consecutive inserts",
            self.slowest_insert_chunk_us
        )?;
        write!(
            f,
            "{} most recent ids sent again: {} caught as duplicates",
            self.recent_resent, self.recent_caught
        )
    }
}

/// Runs the benchmark; `rate` is `dedup.false_positive_rate`.
pub fn run(ids: usize, rate: f64, capacity: usize) -> Result<BenchDedupReport, BenchDedupError> {
    if ids == 0 || capacity == 0 {
        return Err(BenchDedupError::Empty);
    }
    if capacity > u32::MAX as usize {
        return Err(BenchDedupError::Capacity);
    }
    if !(rate > 0.0 && rate < 0.5) {
        return Err(BenchDedupError::Rate(rate));
    }
    // Prepared, as the feeds and the writer have theirs.
    let mut dedup = Dedup::seeded(capacity, rate, SEED).prepared();
    let (inserting, slowest) = timed_batches(0..ids, "trade", |id| {
        dedup.first_time(id);
    });
    let stats = dedup.stats();
    let (set, bits) = dedup.bloom_bits_set();
    let mut confirmed = 0u64;
    let (probing, _) = timed_batches(0..ids, "probe", |id| {
        confirmed += u64::from(dedup.contains(id));
    });
    let refused = dedup.stats().false_positives - stats.false_positives;
    let recent = ids.min(capacity).min(RESENT);
    let mut caught = 0;
    timed_batches(ids - recent..ids, "trade", |id| {
        caught += usize::from(!dedup.first_time(id));
    });
    let per_s = |d: Duration| ids as f64 / d.as_secs_f64().max(1e-9);
    Ok(BenchDedupReport {
        ids,
        capacity,
        false_positive_rate: rate,
        bloom_bytes: stats.bloom_bytes,
        exact_bytes: stats.exact_bytes,
        memory_bytes: stats.memory_bytes(),
        bytes_per_id: stats.memory_bytes() as f64 / ids.min(capacity) as f64,
        bloom_fill_ratio: set as f64 / bits.max(1) as f64,
        bloom_fill_estimated: stats.bloom_fill_ratio,
        bloom_positives: confirmed + refused,
        measured_false_positive_rate: (confirmed + refused) as f64 / ids as f64,
        expected_false_positive_rate: stats.expected_false_positive_rate,
        exact_confirmed: confirmed,
        false_positive_confirmations: refused,
        insert_ids_per_s: per_s(inserting),
        probe_ids_per_s: per_s(probing),
        slowest_insert_chunk_us: slowest.as_secs_f64() * 1e6,
        recent_resent: recent,
        recent_caught: caught,
    })
}

/// Makes the message ids of trades `numbers` in id space `space`, a batch
/// at a time, and passes each to `f`; returns the time spent in `f` alone,
/// and the longest any `CHUNK` consecutive calls took.
fn timed_batches(
    numbers: std::ops::Range<usize>,
    space: &str,
    mut f: impl FnMut(&str),
) -> (Duration, Duration) {
    let mut spent = Duration::ZERO;
    let mut slowest = Duration::ZERO;
    let mut batch = Vec::with_capacity(BATCH.min(numbers.len()));
    let mut number = itoa::Buffer::new();
    let mut start = numbers.start;
    while start < numbers.end {
        let end = numbers.end.min(start + BATCH);
        batch.clear();
        batch.extend((start..end).map(|i| message_id("BENCH", space, "BTCUSDT", number.format(i))));
        for chunk in batch.chunks(CHUNK) {
            let t = Instant::now();
            chunk.iter().for_each(|id| f(id));
            let took = t.elapsed();
            spent += took;
            slowest = slowest.max(took);
        }
        start = end;
    }
    (spent, slowest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statistical, and the same at every run (the hashes are keyed by a
    /// fixed seed): the measured rate is where the configured one puts it.
    /// With the capacity at the ids, one generation is full, at half the
    /// configured rate; with half of it, both are.
    #[test]
    fn bench_dedup_measures_the_configured_false_positive_rate() {
        let (ids, rate) = (40_000, 0.01);
        for (capacity, expected) in [(ids, rate / 2.0), (ids / 2, rate)] {
            let r = run(ids, rate, capacity).unwrap();
            let measured = r.measured_false_positive_rate;
            assert!(
                measured > expected / 2.0 && measured < expected * 2.0,
                "capacity {capacity}: {measured} against {expected}\n{r}"
            );
            assert!(measured < rate * 2.0, "{r}");
            assert_eq!(r.exact_confirmed, 0, "{r}");
            assert_eq!(r.bloom_positives, r.false_positive_confirmations);
            assert_eq!(r.recent_caught, r.recent_resent);
            // The slowest chunk is a part of all the inserts' time.
            let inserting_us = ids as f64 / r.insert_ids_per_s * 1e6;
            assert!(
                r.slowest_insert_chunk_us > 0.0 && r.slowest_insert_chunk_us <= inserting_us,
                "{r}"
            );
            assert!(
                (r.bloom_fill_ratio - r.bloom_fill_estimated).abs() < 0.02,
                "{r}"
            );
        }
    }

    #[test]
    fn bench_dedup_refuses_bad_arguments() {
        assert!(matches!(run(0, 0.01, 1), Err(BenchDedupError::Empty)));
        assert!(matches!(run(1, 0.5, 1), Err(BenchDedupError::Rate(_))));
        assert!(matches!(run(1, f64::NAN, 1), Err(BenchDedupError::Rate(_))));
    }
}
