//! Drops trades already seen, by message id: a reconnect that overlaps the
//! previous connection, or a source that starts over, must not store a trade
//! twice. Memory is bounded; the oldest ids are forgotten first.

use std::collections::{HashSet, VecDeque};

/// The compact key of a message id: ids are UUIDs, and their 128-bit value
/// keeps entries small; anything else is hashed into one.
pub fn key(message_id: &str) -> u128 {
    uuid::Uuid::parse_str(message_id)
        .map(|u| u.as_u128())
        .unwrap_or_else(|_| {
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, message_id.as_bytes()).as_u128()
        })
}

pub struct Dedup {
    seen: HashSet<u128>,
    /// Keys in the order they were remembered, with when (µs; 0 for
    /// callers that keep no time): the oldest are forgotten first.
    order: VecDeque<(u128, i64)>,
    capacity: usize,
    /// Keys forgotten for room while younger than the window the caller
    /// promised to remember (`forget_before`'s cutoff): a second copy of
    /// one of them would no longer be recognised.
    forgotten_early: u64,
    /// The newest cutoff given to `forget_before`.
    cutoff: i64,
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            forgotten_early: 0,
            cutoff: i64::MIN,
        }
    }

    /// True when `message_id` is new (and remembers it, with no time: only
    /// room forgets it).
    pub fn first_time(&mut self, message_id: &str) -> bool {
        self.first_time_key_at(key(message_id), 0)
    }

    /// Whether `message_id` is remembered (without remembering it).
    pub fn contains(&self, message_id: &str) -> bool {
        self.seen.contains(&key(message_id))
    }

    /// [`first_time`](Self::first_time) on a key from [`key`], remembering
    /// it as seen at `at_us` for [`forget_before`](Self::forget_before).
    pub fn first_time_key_at(&mut self, key: u128, at_us: i64) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back((key, at_us));
        if self.order.len() > self.capacity
            && let Some((old, at)) = self.order.pop_front()
        {
            self.seen.remove(&old);
            if self.cutoff > i64::MIN && at >= self.cutoff {
                self.forgotten_early += 1;
            }
        }
        true
    }

    /// Forgets the keys seen before `cutoff_us` (in the order they came,
    /// which callers keep close to time order), and from then on counts a
    /// key forgotten for room while seen at or after the newest cutoff.
    pub fn forget_before(&mut self, cutoff_us: i64) {
        self.cutoff = self.cutoff.max(cutoff_us);
        while let Some(&(k, at)) = self.order.front() {
            if at >= cutoff_us {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&k);
        }
    }

    /// Keys forgotten for room while still inside the window (see
    /// [`forget_before`](Self::forget_before)), in all.
    pub fn forgotten_early(&self) -> u64 {
        self.forgotten_early
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_repeats_and_forgets_oldest() {
        let ids: Vec<String> = (0..3)
            .map(|i| uuid::Uuid::from_u128(i).to_string())
            .collect();
        let mut d = Dedup::new(2);
        assert!(d.first_time(&ids[0]));
        assert!(!d.first_time(&ids[0]));
        assert!(d.first_time(&ids[1]));
        assert!(d.first_time(&ids[2]));
        assert_eq!(d.len(), 2);
        // ids[0] was evicted, so it counts as new again
        assert!(d.first_time(&ids[0]));
        assert!(!d.first_time(&ids[2]));
    }

    /// Keys older than the window go first; one forgotten for room while
    /// inside it is counted, since its second copy would pass.
    #[test]
    fn forgets_by_time_and_counts_what_room_forced_out_early() {
        let mut d = Dedup::new(3);
        for (k, at) in [(1u128, 10), (2, 20), (3, 30)] {
            assert!(d.first_time_key_at(k, at));
        }
        d.forget_before(15);
        assert_eq!(d.len(), 2);
        assert!(d.first_time_key_at(1, 40), "1 was older than the window");
        assert_eq!(d.forgotten_early(), 0);
        // Full (2, 3, 1): room for 4 forces 2 out, seen at 20 >= 15.
        assert!(d.first_time_key_at(4, 50));
        assert_eq!(d.forgotten_early(), 1);
        assert!(!d.first_time_key_at(3, 60));
        assert!(d.first_time_key_at(2, 60), "2 was forgotten");
    }
}
