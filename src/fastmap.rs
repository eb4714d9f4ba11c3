//! Maps and sets looked up per trade.
//!
//! foldhash, not the standard library's SipHash: a callgrind profile of the
//! full path counted about 20 SipHash runs a trade across the hot path's
//! maps, some 5,800 instructions. foldhash's `RandomState` is seeded per
//! process, so keys that arrive from outside (an exchange's symbols) still
//! cannot be aimed at one bucket. Maps off the hot path keep the standard
//! library's.

pub type FastMap<K, V> = foldhash::HashMap<K, V>;
pub type FastSet<K> = foldhash::HashSet<K>;
