//! What each degradation level does to each tier, and the spill log's record
//! format. Pure functions, so the producer actor only dispatches.

use crate::degrade::level::Level;
use crate::instruments::Tier;

/// The fate of one record at the current level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    /// Dropped on purpose and counted.
    Shed,
    /// Written to the on-disk spill log, replayed when the level drops.
    Spill,
}

/// NORMAL and SOFT keep everything (SOFT only skips enrichment), GRACEFUL
/// sheds tier 3, AGGRESSIVE spills tier 3 and keeps tiers 1–2, and
/// CIRCUIT_BREAK keeps tier 1 only. Tier 1 is kept at every level.
pub fn action(level: Level, tier: Tier) -> Action {
    match (level, tier) {
        (_, Tier::One) => Action::Publish,
        (Level::CircuitBreak, _) => Action::Shed,
        (Level::Aggressive, Tier::Three) => Action::Spill,
        (Level::Graceful, Tier::Three) => Action::Shed,
        _ => Action::Publish,
    }
}

/// SOFT and above skip enrichment: the exchange's extra fields
/// (`vendor_data`) are not carried into Kafka and the lake.
pub fn skips_enrichment(level: Level) -> bool {
    level >= Level::Soft
}

/// The spill log may drain once the broker path is healthy and the level is
/// below AGGRESSIVE (where tier 3 is being spilled, not published).
pub fn may_replay(level: Level) -> bool {
    level < Level::Aggressive
}

/// One spilled record: what the producer needs to send it later, plus the
/// exchange and tier for the accounting. Dead letters have no tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpillEntry {
    pub exchange: String,
    pub tier: Option<Tier>,
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
}

const FORMAT: u8 = 1;
const NO_TIER: u8 = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("spill entry: unknown format {0}")]
    Format(u8),
    #[error("spill entry: truncated at byte {0}")]
    Truncated(usize),
    #[error("spill entry: tier byte {0} is not 0, 1, 2 or 255")]
    Tier(u8),
    #[error("spill entry: {0} is not UTF-8")]
    Utf8(&'static str),
    #[error("spill entry: {field} is {len} bytes, more than 65535")]
    TooLong { field: &'static str, len: usize },
}

impl SpillEntry {
    /// `[format][tier][u16 len, exchange][u16 len, topic][u16 len, key][payload]`,
    /// lengths big-endian. The spill log adds its own length and CRC.
    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        let mut out = Vec::with_capacity(
            8 + self.exchange.len() + self.topic.len() + self.key.len() + self.payload.len(),
        );
        out.push(FORMAT);
        out.push(self.tier.map_or(NO_TIER, |t| t.index() as u8));
        for (field, s) in [
            ("exchange", &self.exchange),
            ("topic", &self.topic),
            ("key", &self.key),
        ] {
            let len = u16::try_from(s.len()).map_err(|_| EntryError::TooLong {
                field,
                len: s.len(),
            })?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        let format = *bytes.first().ok_or(EntryError::Truncated(0))?;
        if format != FORMAT {
            return Err(EntryError::Format(format));
        }
        let tier = match *bytes.get(1).ok_or(EntryError::Truncated(1))? {
            NO_TIER => None,
            b => Some(*Tier::ALL.get(b as usize).ok_or(EntryError::Tier(b))?),
        };
        let mut at = 2;
        let mut field = |name: &'static str| -> Result<String, EntryError> {
            let len_bytes = bytes.get(at..at + 2).ok_or(EntryError::Truncated(at))?;
            let len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
            let start = at + 2;
            let s = bytes
                .get(start..start + len)
                .ok_or(EntryError::Truncated(start))?;
            at = start + len;
            String::from_utf8(s.to_vec()).map_err(|_| EntryError::Utf8(name))
        };
        let exchange = field("exchange")?;
        let topic = field("topic")?;
        let key = field("key")?;
        Ok(Self {
            exchange,
            tier,
            topic,
            key,
            payload: bytes[at..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_one_is_kept_at_every_level() {
        for level in Level::ALL {
            assert_eq!(action(level, Tier::One), Action::Publish, "{level}");
        }
    }

    #[test]
    fn each_level_treats_tiers_two_and_three_as_specified() {
        let table = [
            (Level::Normal, Action::Publish, Action::Publish),
            (Level::Soft, Action::Publish, Action::Publish),
            (Level::Graceful, Action::Publish, Action::Shed),
            (Level::Aggressive, Action::Publish, Action::Spill),
            (Level::CircuitBreak, Action::Shed, Action::Shed),
        ];
        for (level, two, three) in table {
            assert_eq!(action(level, Tier::Two), two, "{level} tier 2");
            assert_eq!(action(level, Tier::Three), three, "{level} tier 3");
        }
        assert!(!skips_enrichment(Level::Normal));
        assert!(skips_enrichment(Level::Soft));
        assert!(may_replay(Level::Graceful));
        assert!(!may_replay(Level::Aggressive));
    }

    #[test]
    fn entries_round_trip_and_bad_bytes_are_errors() {
        for tier in [None, Some(Tier::One), Some(Tier::Three)] {
            let e = SpillEntry {
                exchange: "BINANCE".into(),
                tier,
                topic: "market.crypto.trades.binance".into(),
                key: "BTCUSDT".into(),
                payload: vec![0, 0, 0, 0, 1, 2, 3],
            };
            let bytes = e.encode().unwrap_or_default();
            assert_eq!(SpillEntry::decode(&bytes), Ok(e.clone()));
            for cut in [0, 1, 3, 10] {
                assert!(SpillEntry::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        assert_eq!(SpillEntry::decode(&[9, 0]), Err(EntryError::Format(9)));
        assert_eq!(
            SpillEntry::decode(&[1, 7, 0, 0, 0, 0, 0, 0]),
            Err(EntryError::Tier(7))
        );
        let long = SpillEntry {
            exchange: "x".repeat(70_000),
            tier: None,
            topic: String::new(),
            key: String::new(),
            payload: Vec::new(),
        };
        assert!(matches!(
            long.encode(),
            Err(EntryError::TooLong {
                field: "exchange",
                ..
            })
        ));
    }
}
