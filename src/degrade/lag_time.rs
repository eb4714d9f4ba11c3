//! Consumer lag in time: how long ago the oldest record the writers have
//! not yet taken in was appended to its partition.
//!
//! Lag in records means different things at different rates: 50,000
//! records are a fifth of a second on a busy path and an hour on a quiet
//! venue. What a user of a capture daemon alerts on is how stale the lake
//! is. Kafka records carry a timestamp, but reading it would cost the hot
//! path; instead the supervisor keeps, per partition, when it saw the end
//! of the partition (its high watermark) pass which offset, and reads the
//! time a position was passed off that history, interpolating between two
//! samples (the way kafka-lag-exporter estimates time lag). The estimate
//! is late by at most one sampling period and the watermarks' age, never
//! early: a record is known appended only once a sample shows it.

use std::collections::VecDeque;

/// Samples kept per partition. When full, every other one of the older
/// half goes: recent samples stay exact, older ones get coarser, and the
/// history reaches back as far as the lag does at bounded memory.
const CAP: usize = 1024;

/// When a partition's end passed which offsets.
#[derive(Debug, Clone, Default)]
pub struct EndHistory {
    /// `(end, at_ms)`: the end (next offset) seen at `at_ms`, increasing in
    /// both.
    samples: VecDeque<(i64, u64)>,
}

impl EndHistory {
    /// Records that the partition's end was `end` at `at_ms`. Only a
    /// growth is recorded: the time an offset was first seen is its time.
    pub fn record(&mut self, end: i64, at_ms: u64) {
        if self.samples.back().is_some_and(|&(e, _)| e >= end) {
            return;
        }
        if self.samples.len() >= CAP {
            let half = self.samples.len() / 2;
            let mut i = 0;
            self.samples.retain(|_| {
                i += 1;
                // The oldest is kept: the history reaches back as far.
                i > half || i % 2 == 1
            });
        }
        self.samples.push_back((end, at_ms));
    }

    /// How long ago, at `now_ms`, the record at `position` (the next one
    /// the writers take in) was appended: zero when nothing is past
    /// `position`. A record older than the history reads as old as the
    /// history (a lower bound: the daemon had not seen the partition
    /// before). Samples the position has passed are forgotten, but for
    /// the last one, which interpolation needs.
    pub fn lag_ms(&mut self, position: i64, now_ms: u64) -> u64 {
        while self.samples.len() >= 2 && self.samples[1].0 <= position {
            self.samples.pop_front();
        }
        let Some(i) = self.samples.iter().position(|&(e, _)| e > position) else {
            return 0;
        };
        let (end, at) = self.samples[i];
        let appended = match i.checked_sub(1).map(|p| self.samples[p]) {
            None => at,
            Some((before, was)) => {
                // The record is the (position - before + 1)th of the
                // (end - before) appended between the two samples.
                let share = (position - before + 1) as f64 / (end - before) as f64;
                was + (share * at.saturating_sub(was) as f64) as u64
            }
        };
        now_ms.saturating_sub(appended)
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_past_the_position_is_no_lag() {
        let mut h = EndHistory::default();
        assert_eq!(h.lag_ms(0, 1_000), 0, "no samples");
        h.record(100, 1_000);
        assert_eq!(h.lag_ms(100, 5_000), 0);
        assert_eq!(h.lag_ms(150, 5_000), 0, "a position past the end");
    }

    #[test]
    fn the_lag_is_the_age_of_the_first_record_not_taken_in() {
        let mut h = EndHistory::default();
        h.record(100, 1_000);
        h.record(200, 2_000);
        h.record(300, 3_000);
        // Offset 249 is the 50th of the 100 appended between 2 s and 3 s.
        assert_eq!(h.lag_ms(249, 10_000), 10_000 - 2_500);
        // The first of them.
        assert_eq!(h.lag_ms(200, 10_000), 10_000 - 2_010);
        // The last: appended by the 3 s sample.
        assert_eq!(h.lag_ms(299, 10_000), 10_000 - 3_000);
    }

    #[test]
    fn a_record_older_than_the_history_reads_as_old_as_it() {
        let mut h = EndHistory::default();
        h.record(1_000, 5_000);
        h.record(1_100, 6_000);
        // The backlog below 1,000 was there when the daemon first looked.
        assert_eq!(h.lag_ms(10, 9_000), 4_000);
    }

    #[test]
    fn a_quiet_partition_with_one_record_waiting_ages() {
        let mut h = EndHistory::default();
        h.record(7, 1_000);
        h.record(8, 60_000);
        for now in [60_000, 120_000, 600_000] {
            h.record(8, now);
            assert_eq!(h.lag_ms(7, now), now - 60_000, "at {now}");
        }
        assert_eq!(h.lag_ms(8, 600_000), 0, "taken in");
    }

    #[test]
    fn samples_passed_are_forgotten_and_the_cap_holds() {
        let mut h = EndHistory::default();
        for i in 0..10_000u64 {
            h.record(i as i64 * 10, i * 100);
        }
        assert!(h.len() <= CAP, "{}", h.len());
        // The oldest sample is kept: the history still reaches back (to
        // within the coarse samples' interpolation).
        let oldest = h.lag_ms(0, 1_000_000);
        assert!((999_000..=1_000_000).contains(&oldest), "{oldest}");
        // Recent ones stay exact: offset 99,985 is the 6th of the 10
        // appended between 999.8 s and 999.9 s.
        assert_eq!(h.lag_ms(99_985, 1_000_000), 1_000_000 - 999_860);
        // A position near the end forgets what lies below it.
        assert_eq!(h.lag_ms(99_990, 1_000_000), 0);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn an_end_seen_again_or_lower_is_not_a_new_sample() {
        let mut h = EndHistory::default();
        h.record(50, 1_000);
        h.record(50, 2_000);
        h.record(40, 3_000);
        assert_eq!(h.len(), 1);
        assert_eq!(h.lag_ms(49, 4_000), 3_000);
    }
}
