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
    order: VecDeque<u128>,
    capacity: usize,
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// True when `message_id` is new (and remembers it).
    pub fn first_time(&mut self, message_id: &str) -> bool {
        self.first_time_key(key(message_id))
    }

    /// Whether `message_id` is remembered (without remembering it).
    pub fn contains(&self, message_id: &str) -> bool {
        self.seen.contains(&key(message_id))
    }

    /// [`first_time`](Self::first_time) on a key from [`key`].
    pub fn first_time_key(&mut self, key: u128) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
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
}
