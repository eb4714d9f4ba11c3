//! The lake side of the accounting: records that left the producer and can
//! no longer arrive in the lake. A Kafka offset is one record (the producer
//! is idempotent and never transactional, so offsets carry no control
//! batches and no gaps of their own); a range of offsets the writers never
//! saw is therefore a range of lost records, whatever removed it: an offset
//! reset after retention or eviction deleted them, a partition truncated
//! under the daemon, or a recorded position that already lies below the
//! log's start when the daemon starts.
//!
//! Losses are kept as ranges (bounded in number) for `/status` and counted
//! per topic and partition in `ticklake_records_lost_total`, which the
//! shipped alert rules page on.

use std::sync::{Arc, Mutex};

use serde::Serialize;

/// How many ranges `/status` lists; older ones are folded into a count so
/// that a partition losing records over and over cannot grow memory.
const MAX_RANGES: usize = 256;

/// Why the records of a range cannot arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossCause {
    /// The consumer went on past offsets the writers never received.
    Skipped,
    /// At start, the offset recorded in the lake lay below the partition's
    /// first offset: the records between were deleted before being read.
    BelowLogStart,
}

/// Offsets `[from, to)` of one partition that will never reach the lake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LostRange {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
    pub records: i64,
    pub cause: LossCause,
    /// Wall clock, milliseconds since the Unix epoch.
    pub detected_at_ms: i64,
}

/// Everything lost since start, shared by the writers (which detect it)
/// and `/status` (which shows it).
#[derive(Clone)]
pub struct Losses {
    inner: Arc<Mutex<Kept>>,
    /// `ticklake_records_lost_total`, by topic and partition.
    counter: prometheus::IntCounterVec,
}

#[derive(Debug, Default)]
struct Kept {
    ranges: Vec<LostRange>,
    folded_ranges: u64,
    records: i64,
}

/// What `/status` shows of the losses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LossReport {
    pub lost_records: i64,
    pub ranges: Vec<LostRange>,
    /// Ranges no longer listed (the oldest go first); their records are
    /// still in `lost_records`.
    pub older_ranges_not_listed: u64,
}

impl Losses {
    pub fn new(counter: prometheus::IntCounterVec) -> Self {
        Self {
            inner: Arc::default(),
            counter,
        }
    }

    /// Notes a lost range, counts it and logs it.
    pub fn record(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
        cause: LossCause,
    ) -> Option<LostRange> {
        if to <= from {
            return None;
        }
        let range = LostRange {
            topic: topic.to_string(),
            partition,
            from,
            to,
            records: to - from,
            cause,
            detected_at_ms: crate::model::now_us() / 1000,
        };
        self.counter
            .with_label_values(&[topic, &partition.to_string()])
            .inc_by(u64::try_from(range.records).unwrap_or(0));
        tracing::error!(
            topic,
            partition,
            from,
            to,
            records = range.records,
            cause = ?cause,
            "records lost: they left the producer and can no longer reach the lake"
        );
        let mut k = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        k.records += range.records;
        if k.ranges.len() >= MAX_RANGES {
            k.ranges.remove(0);
            k.folded_ranges += 1;
        }
        k.ranges.push(range.clone());
        Some(range)
    }

    pub fn report(&self) -> LossReport {
        let k = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        LossReport {
            lost_records: k.records,
            ranges: k.ranges.clone(),
            older_ranges_not_listed: k.folded_ranges,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_counted_listed_and_bounded() {
        let m = crate::metrics::Metrics::new().unwrap();
        let l = m.losses.clone();
        assert!(l.record("t", 0, 5, 5, LossCause::Skipped).is_none());
        let r = l.record("t", 2, 100, 150, LossCause::Skipped).unwrap();
        assert_eq!(r.records, 50);
        for i in 0..MAX_RANGES as i64 {
            l.record("t", 1, i * 10, i * 10 + 1, LossCause::BelowLogStart);
        }
        let rep = l.report();
        assert_eq!(rep.lost_records, 50 + MAX_RANGES as i64);
        assert_eq!(rep.ranges.len(), MAX_RANGES);
        assert_eq!(rep.older_ranges_not_listed, 1);
        // The oldest range went first.
        assert!(rep.ranges.iter().all(|r| r.partition == 1));
        let text = m.render();
        assert!(text.contains("ticklake_records_lost_total{partition=\"2\",topic=\"t\"} 50"));
    }
}
