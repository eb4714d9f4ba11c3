//! What a daemon of a consumer group (`kafka.assignment = group`) knows
//! of its share: the partitions the group gave it, and where the lake and
//! its writers left each partition. The consumer, the writers, the
//! degradation supervisor and the query engine all read it.

use std::collections::HashSet;

use super::commit::{KafkaOffsets, Span};

/// Where a daemon of a consumer group starts a partition the group gives
/// it: past everything the table holds and everything its writers hold,
/// as last seen. The table's offsets may be older than the table (another
/// owner committed since); the rows read again are then left out at commit
/// (`lake::commit::plan`), so a stale start costs reading, never a copy.
#[derive(Debug, Default)]
pub struct Seen {
    inner: std::sync::Mutex<(KafkaOffsets, KafkaOffsets)>,
    /// The partitions the group gave this daemon; `None` when it reads every
    /// partition (`kafka.assignment = all`).
    owned: std::sync::RwLock<Option<HashSet<(String, i32)>>>,
}

impl Seen {
    /// Whether this daemon reads `topic`/`partition` now.
    pub fn owns(&self, topic: &str, partition: i32) -> bool {
        match &*self.owned.read().unwrap_or_else(|p| p.into_inner()) {
            None => true,
            Some(o) => o.contains(&(topic.to_string(), partition)),
        }
    }

    /// The partitions this daemon reads, as `topic/partition`, sorted;
    /// `None` when it reads them all.
    pub fn owned_list(&self) -> Option<Vec<String>> {
        self.owned
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|o| {
                let mut v: Vec<String> = o.iter().map(|(t, p)| format!("{t}/{p}")).collect();
                v.sort();
                v
            })
    }

    /// The group's share of this daemon, from now on.
    pub fn set_owned(&self, owned: HashSet<(String, i32)>) {
        *self.owned.write().unwrap_or_else(|p| p.into_inner()) = Some(owned);
    }

    /// Offsets a commit of this daemon recorded (the table's, merged).
    pub fn committed(&self, o: &KafkaOffsets) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (t, parts) in &o.topics {
            for (p, next) in parts {
                let cur = g.0.get(t, *p).unwrap_or(i64::MIN);
                g.0.set(t, *p, cur.max(*next));
            }
        }
    }

    /// Positions a writer took in.
    pub fn held(&self, positions: &[Span]) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for s in positions {
            g.1.set(&s.topic, s.partition, s.next);
        }
    }

    /// A writer went back to these positions (a rewind): what it held past
    /// them is gone.
    pub fn rewound(&self, positions: &KafkaOffsets) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (t, parts) in &positions.topics {
            for (p, next) in parts {
                g.1.set(t, *p, *next);
            }
        }
    }

    /// Where to read `topic`/`partition` from, if anything is known of it.
    pub fn start(&self, topic: &str, partition: i32) -> Option<i64> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match (g.0.get(topic, partition), g.1.get(topic, partition)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}
