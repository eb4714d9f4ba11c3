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
//! A record handed to librdkafka and not yet acknowledged counts against
//! the partition it goes to. The producer names that partition itself,
//! with librdkafka's own default partitioner (the key's CRC-32 modulo the
//! partition count, `rd_kafka_msg_partitioner_consistent`), so the record
//! lands exactly where librdkafka would have put it. A record whose
//! partition is not known before the send (no key, or a `partitioner`
//! set in `kafka.properties`) counts against every partition, as all did
//! before: with 3 partitions, about 100 ms of acknowledgements in flight
//! on a loaded 2-core machine took the whole budget of every partition
//! while the consumer was not behind at all, and held the feed back.
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
    /// Handed to librdkafka for this partition, with no delivery report
    /// yet.
    pending_bytes: AtomicI64,
    pending_records: AtomicI64,
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
    /// Whether the producer names a keyed record's partition itself
    /// ([`BrokerWindow::partition_for`]): only when librdkafka's own
    /// partitioner is the default, so the choice is the one it would make.
    assigns: bool,
    /// Handed to librdkafka with no delivery report yet and no partition
    /// named: it counts against every partition.
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
    /// The fullest partition's unread bytes and records, with those sent
    /// to it and not yet acknowledged.
    pub fullest_bytes: i64,
    pub fullest_records: i64,
    /// Sent and not yet acknowledged, on every partition.
    pub pending_records: i64,
    pub refusals: u64,
}

/// Whether a producer configured with `properties` partitions keyed
/// records as [`BrokerWindow::partition_for`] does: librdkafka's default
/// partitioner (`consistent_random`) and `consistent` both take the key's
/// CRC-32 modulo the partition count; any other is left to librdkafka,
/// and its records count against every partition.
pub fn default_partitioner(properties: &std::collections::BTreeMap<String, String>) -> bool {
    properties
        .get("partitioner")
        .is_none_or(|p| matches!(p.trim(), "consistent_random" | "consistent"))
}

impl BrokerWindow {
    /// A window over `topics` (each with its partition ids, numbered from
    /// 0 as Kafka numbers them). `assigns`: see [`default_partitioner`].
    pub fn new(topics: &[(String, Vec<i32>)], assigns: bool) -> Self {
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
            assigns,
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

    /// What a partition holds against its budget: unread, and in flight
    /// to it.
    fn load(p: &Part) -> (i64, i64) {
        (
            p.bytes.load(Ordering::Relaxed) + p.pending_bytes.load(Ordering::Relaxed),
            p.records.load(Ordering::Relaxed) + p.pending_records.load(Ordering::Relaxed),
        )
    }

    /// The fullest partition of `topic`: unread bytes and records, with
    /// those in flight to it.
    fn fullest(&self, topic: &str) -> Option<(i64, i64)> {
        let ps = self.parts.get(topic)?;
        Some(
            ps.iter()
                .map(Self::load)
                .fold((0, 0), |(b, r), (b2, r2)| (b.max(b2), r.max(r2))),
        )
    }

    /// The partition librdkafka's default partitioner gives a record of
    /// `topic` with `key`, for the producer to name in its send; `None`
    /// when the window does not assign (see [`default_partitioner`]), the
    /// key is empty (librdkafka would pick at random), or the topic is not
    /// one the consumer reads.
    pub fn partition_for(&self, topic: &str, key: &[u8]) -> Option<i32> {
        if !self.assigns || key.is_empty() {
            return None;
        }
        let count = i32::try_from(self.parts.get(topic)?.len()).ok()?;
        if count == 0 {
            return None;
        }
        // SAFETY: a pure function of the key bytes (their CRC-32 modulo
        // `count`); it reads `keylen` bytes from `key` and neither the
        // topic handle nor the opaques, which are null.
        let p = unsafe {
            rdkafka::bindings::rd_kafka_msg_partitioner_consistent(
                std::ptr::null(),
                key.as_ptr().cast(),
                key.len(),
                count,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        (0..count).contains(&p).then_some(p)
    }

    /// Whether a record with `key` to `topic` was given its partition by
    /// [`Self::partition_for`]: the delivery report, which carries the
    /// key, settles it where it was counted.
    pub fn assigned(&self, topic: &str, key: Option<&[u8]>) -> bool {
        self.assigns && key.is_some_and(|k| !k.is_empty()) && self.parts.contains_key(topic)
    }

    /// Whether a record of `est` bytes to `topic` may go to librdkafka now,
    /// to `partition` if it is named (else to any). A record always may
    /// when nothing waits, so one larger than the budget is not held back
    /// for ever (the broker's size limit judges it).
    pub fn has_room(&self, topic: &str, partition: Option<i32>, est: i64) -> bool {
        let held = match partition {
            Some(p) => self.part(topic, p).map(Self::load),
            None => self.fullest(topic),
        };
        let Some((bytes, records)) = held else {
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

    /// In flight on `topic`, to `partition` if named.
    fn pending(&self, topic: &str, partition: Option<i32>) -> (&AtomicI64, &AtomicI64) {
        match partition.and_then(|p| self.part(topic, p)) {
            Some(p) => (&p.pending_bytes, &p.pending_records),
            None => (&self.pending_bytes, &self.pending_records),
        }
    }

    /// Handed to librdkafka, for `partition` if the send named it.
    pub fn enqueued(&self, topic: &str, partition: Option<i32>, est: i64) {
        let (bytes, records) = self.pending(topic, partition);
        bytes.fetch_add(est, Ordering::Relaxed);
        records.fetch_add(1, Ordering::Relaxed);
    }

    /// Acknowledged on `partition`; `assigned` as [`Self::assigned`] says
    /// of the record.
    pub fn delivered(&self, topic: &str, partition: i32, assigned: bool, est: i64) {
        self.failed(topic, assigned.then_some(partition), est);
        if let Some(p) = self.part(topic, partition) {
            p.bytes.fetch_add(est, Ordering::Relaxed);
            p.records.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Given back by librdkafka: it never reached the broker. `partition`:
    /// the one the send named, if it named one.
    pub fn failed(&self, topic: &str, partition: Option<i32>, est: i64) {
        let (bytes, records) = self.pending(topic, partition);
        bytes.fetch_sub(est, Ordering::Relaxed);
        records.fetch_sub(1, Ordering::Relaxed);
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
            pending_records: self.pending_records.load(Ordering::Relaxed)
                + self
                    .parts
                    .values()
                    .flatten()
                    .map(|p| p.pending_records.load(Ordering::Relaxed))
                    .sum::<i64>(),
            refusals: self.refusals.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> BrokerWindow {
        BrokerWindow::new(&[("t".to_string(), vec![0, 1])], true)
    }

    #[test]
    fn holds_back_at_the_budget_and_opens_as_the_consumer_reads() {
        let w = window();
        let est = estimate(8, 4000);
        let mut offset = 0;
        // Everything to partition 0: the budget is per partition.
        while w.has_room("t", None, est) {
            w.enqueued("t", None, est);
            w.delivered("t", 0, false, est);
            offset += 1;
        }
        assert_eq!(offset, BUDGET_BYTES / est);
        assert!(w.snapshot().fullest_bytes <= BUDGET_BYTES);
        assert_eq!(w.snapshot().refusals, 1);
        // Other topics are never held back.
        assert!(w.has_room("elsewhere", None, est));
        w.consumed("t", 0, 0, est);
        assert!(w.has_room("t", None, est));
        // A re-read after a consumer restart frees nothing twice.
        let before = w.snapshot();
        w.consumed("t", 0, 0, est);
        assert_eq!(w.snapshot().fullest_bytes, before.fullest_bytes);
    }

    #[test]
    fn records_in_flight_count_against_every_partition() {
        let w = window();
        let est = estimate(0, 1000);
        w.enqueued("t", None, est);
        w.delivered("t", 1, false, est);
        let mut n = 0;
        while w.has_room("t", None, est) {
            w.enqueued("t", None, est);
            n += 1;
        }
        assert!(n > 0 && (n + 1) * est <= BUDGET_BYTES);
        // Given back without reaching the broker: room again.
        w.failed("t", None, est);
        assert!(w.has_room("t", None, est));
    }

    #[test]
    fn a_hole_in_the_offsets_empties_its_share_and_a_lone_giant_passes() {
        let w = window();
        let est = estimate(0, 100);
        for _ in 0..10 {
            w.enqueued("t", None, est);
            w.delivered("t", 0, false, est);
        }
        // Offsets 0..9 on the broker; the consumer jumps to 9.
        w.consumed("t", 0, 9, est);
        let s = w.snapshot();
        assert_eq!((s.fullest_records, s.fullest_bytes), (0, 0));
        // Nothing waits: a record over the budget is not held for ever.
        assert!(w.has_room("t", None, BUDGET_BYTES * 2));
    }

    #[test]
    fn a_run_of_offsets_leaves_the_window_as_its_records_one_by_one_do() {
        let (by_run, by_record) = (window(), window());
        let est = estimate(0, 100);
        for w in [&by_run, &by_record] {
            for _ in 0..20 {
                w.enqueued("t", None, est);
                w.delivered("t", 0, false, est);
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

    /// Two keys that librdkafka's default partitioner puts on different
    /// partitions of `t` (of 2).
    fn keys_apart(w: &BrokerWindow) -> (&'static [u8], &'static [u8]) {
        let keys: [&'static [u8]; 4] = [b"BTCUSDT", b"ETHUSDT", b"SOLUSDT", b"XRPUSDT"];
        let first = keys[0];
        let p0 = w.partition_for("t", first).expect("assigned");
        let other = keys
            .into_iter()
            .find(|k| w.partition_for("t", k) != Some(p0))
            .expect("a key on the other partition");
        (first, other)
    }

    #[test]
    fn a_keyed_record_goes_where_librdkafka_would_put_it() {
        let w = window();
        // rd_kafka_msg_partitioner_consistent: CRC-32 (IEEE) modulo count.
        for key in [&b"BTCUSDT"[..], b"ETHUSDT", b"a", b"BINANCE:SOLUSDT"] {
            let crc = crc32fast::hash(key);
            assert_eq!(w.partition_for("t", key), Some((crc % 2) as i32));
            assert!(w.assigned("t", Some(key)));
        }
        // No key (librdkafka picks at random), a topic the consumer does
        // not read, or another partitioner: not named.
        assert_eq!(w.partition_for("t", b""), None);
        assert!(!w.assigned("t", Some(b"")) && !w.assigned("t", None));
        assert_eq!(w.partition_for("elsewhere", b"BTCUSDT"), None);
        let other = BrokerWindow::new(&[("t".to_string(), vec![0, 1])], false);
        assert_eq!(other.partition_for("t", b"BTCUSDT"), None);
        assert!(!other.assigned("t", Some(b"BTCUSDT")));
    }

    #[test]
    fn the_partitioner_setting_decides_whether_the_window_assigns() {
        let props = |v: Option<&str>| {
            v.map(|v| ("partitioner".to_string(), v.to_string()))
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        assert!(default_partitioner(&props(None)));
        assert!(default_partitioner(&props(Some("consistent_random"))));
        assert!(default_partitioner(&props(Some("consistent"))));
        assert!(!default_partitioner(&props(Some("murmur2_random"))));
        assert!(!default_partitioner(&props(Some("random"))));
    }

    #[test]
    fn records_in_flight_to_a_named_partition_hold_back_that_partition_only() {
        let w = window();
        let (a, b) = keys_apart(&w);
        let (pa, pb) = (w.partition_for("t", a), w.partition_for("t", b));
        let est = estimate(a.len(), 1000);
        // Partition a fills with records in flight (no report yet).
        let mut n = 0;
        while w.has_room("t", pa, est) {
            w.enqueued("t", pa, est);
            n += 1;
        }
        assert_eq!(n, BUDGET_BYTES / est);
        // The other partition still takes records; a send that names
        // none (it could land on a) does not.
        assert!(w.has_room("t", pb, est));
        assert!(!w.has_room("t", None, est));
        assert_eq!(w.snapshot().pending_records, n);
        // Acknowledged, they stay unread on a: still held back.
        for _ in 0..n {
            w.delivered("t", pa.unwrap(), w.assigned("t", Some(a)), est);
        }
        let s = w.snapshot();
        assert_eq!((s.pending_records, s.fullest_records), (0, n));
        assert!(!w.has_room("t", pa, est));
        // Read: room again. One given back unsent leaves its partition too.
        w.consumed_run("t", pa.unwrap(), 0, n - 1, est * n);
        w.enqueued("t", pa, est);
        w.failed("t", pa, est);
        let s = w.snapshot();
        assert_eq!(
            (s.pending_records, s.fullest_records, s.fullest_bytes),
            (0, 0, 0)
        );
    }

    #[test]
    fn records_of_unknown_partition_in_flight_count_against_a_named_one() {
        let w = window();
        let (a, _) = keys_apart(&w);
        let pa = w.partition_for("t", a);
        let est = estimate(0, 1000);
        let mut n = 0;
        while w.has_room("t", None, est) {
            w.enqueued("t", None, est);
            n += 1;
        }
        // Any partition might hold them: a named one is full too.
        assert!(!w.has_room("t", pa, est));
        w.delivered("t", 1, false, est);
        assert_eq!(w.snapshot().pending_records, n - 1);
    }
}
