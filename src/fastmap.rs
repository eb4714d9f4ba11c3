//! Maps and sets looked up per trade, and names kept once.
//!
//! foldhash, not the standard library's SipHash: a callgrind profile of the
//! full path counted about 20 SipHash runs a trade across the hot path's
//! maps, some 5,800 instructions. foldhash's `RandomState` is seeded per
//! process, so keys that arrive from outside (an exchange's symbols) still
//! cannot be aimed at one bucket. Maps off the hot path keep the standard
//! library's.

use std::sync::Arc;

pub type FastMap<K, V> = foldhash::HashMap<K, V>;
pub type FastSet<K> = foldhash::HashSet<K>;

/// Each name once (a topic, an exchange): a record that carries one takes
/// a reference, not a fresh allocation; one lookup per call.
#[derive(Debug, Default)]
pub struct Names {
    held: FastSet<Arc<str>>,
}

impl Names {
    /// The shared copy of `name`, made the first time it is asked for.
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.held.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        self.held.insert(n.clone());
        n
    }

    /// Names held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_made_once_and_shared_after() {
        let mut names = Names::default();
        let a = names.get("BINANCE");
        let b = names.get("BINANCE");
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second ask must share the first copy"
        );
        let c = names.get("KRAKEN");
        assert_eq!(&*c, "KRAKEN");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(names.len(), 2);
    }
}
