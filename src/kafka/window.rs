//! The embedded broker's window: how much may wait on a partition of the
//! in-process cluster before the consumer has read it.
//!
//! librdkafka's in-process cluster keeps at most 5 MiB of record batches
//! and 100,000 batches per partition, compiled in and not configurable,
//! and deletes the oldest batches beyond that. A consumer behind that point
//! has its position reset past the deleted records, which are gone for
//! good. So on the embedded default the producer holds a record back (it
//! waits, then spills it to the on-disk log, which replays later) unless it
//! fits under a budget well inside both limits, counted from what was
//! handed to librdkafka and not yet read by the consumer. Lag is thereby a
//! backpressure signal that acts before eviction, never after.
//!
//! A real broker keeps records by time or size as its operator set; the
//! window is not used there, and a record deleted before it was read shows
//! as a loss (see `ledger`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Bytes per partition the window admits: 4 MiB of the cluster's 5 MiB,
/// counted by [`estimate`], which is never below a record's real share of
/// a batch, so the cluster's own count stays under its limit.
pub const BUDGET_BYTES: i64 = 4 * 1024 * 1024;
/// Records per partition the window admits; each batch holds at least one
/// record, so the cluster's 100,000-batch limit is never reached.
pub const BUDGET_RECORDS: i64 = 60_000;
/// Added to key and value per record: the record's own header (at most
/// about 20 bytes of varints and attributes), the batch header (61 bytes)
/// in the worst case of a batch of one, and compression framing, which can
/// only make a batch of random prices a little larger than its input.
pub const RECORD_OVERHEAD: i64 = 96;

/// A record's worst-case share of the cluster's per-partition bytes.
pub fn estimate(key_len: usize, value_len: usize) -> i64 {
    i64::try_from(key_len + value_len).unwrap_or(i64::MAX / 2) + RECORD_OVERHEAD
}

/// [`estimate`] of a message librdkafka hands back (a delivery report).
pub fn message_estimate(m: &impl rdkafka::Message) -> i64 {
    estimate(
        m.key().map_or(0, <[u8]>::len),
        m.payload().map_or(0, <[u8]>::len),
    )
}

#[derive(Debug, Default)]
struct Part {
    /// Delivered to this partition and not yet read.
    bytes: AtomicI64,
    records: AtomicI64,
    /// One past the highest offset read (a re-read after a consumer restart
    /// is not counted twice).
    read_end: AtomicI64,
}

/// Shared by the producer (which asks for room and reports deliveries) and
/// the consumer (which reports what it read).
#[derive(Debug)]
pub struct BrokerWindow {
    /// Only the topics the consumer reads; a record to any other topic is
    /// never held back.
    parts: crate::fastmap::FastMap<String, Vec<Part>>,
    /// Handed to librdkafka with no delivery report yet: its partition is
    /// not known, so it counts against every partition.
    pending_bytes: AtomicI64,
    pending_records: AtomicI64,
    /// Times a record was held back.
    refusals: AtomicU64,
}

/// What `/status` shows of the window.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WindowSnapshot {
    pub budget_bytes: i64,
    pub budget_records: i64,
    /// The fullest partition's unread bytes and records.
    pub fullest_bytes: i64,
    pub fullest_records: i64,
    pub pending_records: i64,
    pub refusals: u64,
}

impl BrokerWindow {
    /// A window over `topics` (each with its partition ids).
    pub fn new(topics: &[(String, Vec<i32>)]) -> Self {
        let parts = topics
            .iter()
            .map(|(t, ps)| {
                let n = ps
                    .iter()
                    .copied()
                    .max()
                    .map_or(0, |m| m.max(0) as usize + 1);
                (t.clone(), (0..n).map(|_| Part::default()).collect())
            })
            .collect();
        Self {
            parts,
            pending_bytes: AtomicI64::new(0),
            pending_records: AtomicI64::new(0),
            refusals: AtomicU64::new(0),
        }
    }

    fn part(&self, topic: &str, partition: i32) -> Option<&Part> {
        self.parts
            .get(topic)
            .and_then(|ps| ps.get(usize::try_from(partition).ok()?))
    }

    /// The fullest partition of `topic`: unread bytes and records.
    fn fullest(&self, topic: &str) -> Option<(i64, i64)> {
        let ps = self.parts.get(topic)?;
        Some(ps.iter().fold((0, 0), |(b, r), p| {
            (
                b.max(p.bytes.load(Ordering::Relaxed)),
                r.max(p.records.load(Ordering::Relaxed)),
            )
        }))
    }

    /// Whether a record of `est` bytes to `topic` may go to librdkafka now.
    /// A record always may when nothing waits, so one larger than the
    /// budget is not held back for ever (the broker's size limit judges it).
    pub fn has_room(&self, topic: &str, est: i64) -> bool {
        let Some((bytes, records)) = self.fullest(topic) else {
            return true;
        };
        let pb = self.pending_bytes.load(Ordering::Relaxed);
        let pr = self.pending_records.load(Ordering::Relaxed);
        if pr <= 0 && bytes <= 0 && records <= 0 {
            return true;
        }
        let room = bytes + pb + est <= BUDGET_BYTES && records + pr < BUDGET_RECORDS;
        if !room {
            self.refusals.fetch_add(1, Ordering::Relaxed);
        }
        room
    }

    /// Handed to librdkafka.
    pub fn enqueued(&self, est: i64) {
        self.pending_bytes.fetch_add(est, Ordering::Relaxed);
        self.pending_records.fetch_add(1, Ordering::Relaxed);
    }

    /// Acknowledged on `partition`.
    pub fn delivered(&self, topic: &str, partition: i32, est: i64) {
        self.pending_bytes.fetch_sub(est, Ordering::Relaxed);
        self.pending_records.fetch_sub(1, Ordering::Relaxed);
        if let Some(p) = self.part(topic, partition) {
            p.bytes.fetch_add(est, Ordering::Relaxed);
            p.records.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Given back by librdkafka: it never reached the broker.
    pub fn failed(&self, est: i64) {
        self.pending_bytes.fetch_sub(est, Ordering::Relaxed);
        self.pending_records.fetch_sub(1, Ordering::Relaxed);
    }

    /// Read by the consumer. Records skipped over (a hole in the offsets,
    /// which the writers report as a loss) leave the window too, at the
    /// partition's average size, or it would stay full for ever.
    pub fn consumed(&self, topic: &str, partition: i32, offset: i64, est: i64) {
        self.consumed_run(topic, partition, offset, offset, est);
    }

    /// Read by the consumer: the records `first ..= last` of one partition,
    /// `est` their estimates summed. One update per run of offsets, not
    /// per record: these counters are written by the producer's thread and
    /// librdkafka's too, and each write takes the line from the others.
    pub fn consumed_run(&self, topic: &str, partition: i32, first: i64, last: i64, est: i64) {
        let Some(p) = self.part(topic, partition) else {
            return;
        };
        let before = p.read_end.fetch_max(last + 1, Ordering::Relaxed);
        if last < before {
            return;
        }
        // Offsets below `before` were read already (a re-read after a
        // restart): only the rest leave the window, at their share of `est`.
        let new_from = first.max(before);
        let count = last - first + 1;
        let new = last - new_from + 1;
        let est = if new == count { est } else { est / count * new };
        let skipped = new_from - before;
        if skipped > 0 {
            let records = p.records.load(Ordering::Relaxed);
            if records > 0 {
                let take = skipped.min(records);
                let bytes = p.bytes.load(Ordering::Relaxed);
                p.records.fetch_sub(take, Ordering::Relaxed);
                p.bytes.fetch_sub(bytes / records * take, Ordering::Relaxed);
            }
        }
        p.bytes.fetch_sub(est, Ordering::Relaxed);
        p.records.fetch_sub(new, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> WindowSnapshot {
        let (fullest_bytes, fullest_records) = self
            .parts
            .keys()
            .filter_map(|t| self.fullest(t))
            .fold((0, 0), |(b, r), (b2, r2)| (b.max(b2), r.max(r2)));
        WindowSnapshot {
            budget_bytes: BUDGET_BYTES,
            budget_records: BUDGET_RECORDS,
            fullest_bytes,
            fullest_records,
            pending_records: self.pending_records.load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> BrokerWindow {
        BrokerWindow::new(&[("t".to_string(), vec![0, 1])])
    }

    #[test]
    fn holds_back_at_the_budget_and_opens_as_the_consumer_reads() {
        let w = window();
        let est = estimate(8, 4000);
        let mut offset = 0;
        // Everything to partition 0: the budget is per partition.
        while w.has_room("t", est) {
            w.enqueued(est);
            w.delivered("t", 0, est);
            offset += 1;
        }
        assert_eq!(offset, BUDGET_BYTES / est);
        assert!(w.snapshot().fullest_bytes <= BUDGET_BYTES);
        assert_eq!(w.snapshot().refusals, 1);
        // Other topics are never held back.
        assert!(w.has_room("elsewhere", est));
        w.consumed("t", 0, 0, est);
        assert!(w.has_room("t", est));
        // A re-read after a consumer restart frees nothing twice.
        let before = w.snapshot();
        w.consumed("t", 0, 0, est);
        assert_eq!(w.snapshot().fullest_bytes, before.fullest_bytes);
    }

    #[test]
    fn records_in_flight_count_against_every_partition() {
        let w = window();
        let est = estimate(0, 1000);
        w.enqueued(est);
        w.delivered("t", 1, est);
        let mut n = 0;
        while w.has_room("t", est) {
            w.enqueued(est);
            n += 1;
        }
        assert!(n > 0 && (n + 1) * est <= BUDGET_BYTES);
        // Given back without reaching the broker: room again.
        w.failed(est);
        assert!(w.has_room("t", est));
    }

    #[test]
    fn a_hole_in_the_offsets_empties_its_share_and_a_lone_giant_passes() {
        let w = window();
        let est = estimate(0, 100);
        for _ in 0..10 {
            w.enqueued(est);
            w.delivered("t", 0, est);
        }
        // Offsets 0..9 on the broker; the consumer jumps to 9.
        w.consumed("t", 0, 9, est);
        let s = w.snapshot();
        assert_eq!((s.fullest_records, s.fullest_bytes), (0, 0));
        // Nothing waits: a record over the budget is not held for ever.
        assert!(w.has_room("t", BUDGET_BYTES * 2));
    }

    #[test]
    fn a_run_of_offsets_leaves_the_window_as_its_records_one_by_one_do() {
        let (by_run, by_record) = (window(), window());
        let est = estimate(0, 100);
        for w in [&by_run, &by_record] {
            for _ in 0..20 {
                w.enqueued(est);
                w.delivered("t", 0, est);
            }
        }
        // 0..=4, a hole (5, 6), 7..=9, then a re-read of 8..=11 after a
        // restart: 8 and 9 are not counted twice.
        for (first, last) in [(0, 4), (7, 9), (8, 11)] {
            by_run.consumed_run("t", 0, first, last, est * (last - first + 1));
            for o in first..=last {
                by_record.consumed("t", 0, o, est);
            }
            let (a, b) = (by_run.snapshot(), by_record.snapshot());
            assert_eq!(
                (a.fullest_records, a.fullest_bytes),
                (b.fullest_records, b.fullest_bytes),
                "after {first}..={last}"
            );
        }
        assert_eq!(by_run.snapshot().fullest_records, 20 - 12);
    }
}
