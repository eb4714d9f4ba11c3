//! Symbol priority tiers (`config/instruments.toml`). Under overload the
//! daemon keeps tier 1 always and degrades tier 3 first.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

/// Priority tier of a symbol; lower is more important.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Tier {
    #[serde(rename = "1")]
    One,
    #[serde(rename = "2")]
    Two,
    #[serde(rename = "3")]
    Three,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::One, Tier::Two, Tier::Three];

    /// 0-based lane index (tier 1 is lane 0).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        match self {
            Tier::One => "1",
            Tier::Two => "2",
            Tier::Three => "3",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstrumentsError {
    #[error("instruments file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("instruments file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error(
        "instruments file {path}: key `exchanges.{exchange}`: symbol {symbol} is in both tier1 and tier2"
    )]
    Overlap {
        path: String,
        exchange: String,
        symbol: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    exchanges: BTreeMap<String, ExchangeTiers>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeTiers {
    /// Always kept.
    #[serde(default)]
    tier1: Vec<String>,
    /// Kept up to AGGRESSIVE.
    #[serde(default)]
    tier2: Vec<String>,
}

/// Tier lookup for every exchange; unknown symbols are tier 3.
#[derive(Debug, Clone, Default)]
pub struct Instruments {
    tiers: HashMap<(String, String), Tier>,
}

impl Instruments {
    pub fn load(path: &Path) -> Result<Self, InstrumentsError> {
        let text = std::fs::read_to_string(path).map_err(|source| InstrumentsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The tiers shipped in `config/instruments.toml`, built in so the
    /// daemon degrades sensibly with no file at all.
    pub fn builtin() -> Result<Self, InstrumentsError> {
        Self::parse(
            include_str!("../config/instruments.toml"),
            "config/instruments.toml (built in)",
        )
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, InstrumentsError> {
        let file: File = toml::from_str(text).map_err(|e| InstrumentsError::Parse {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        let mut tiers = HashMap::new();
        for (exchange, t) in file.exchanges {
            let ex = exchange.to_ascii_uppercase();
            for s in &t.tier1 {
                tiers.insert((ex.clone(), s.to_ascii_uppercase()), Tier::One);
            }
            for s in &t.tier2 {
                if tiers
                    .insert((ex.clone(), s.to_ascii_uppercase()), Tier::Two)
                    .is_some()
                {
                    return Err(InstrumentsError::Overlap {
                        path: path.to_string(),
                        exchange,
                        symbol: s.clone(),
                    });
                }
            }
        }
        Ok(Self { tiers })
    }

    pub fn tier(&self, exchange: &str, symbol: &str) -> Tier {
        self.tiers
            .get(&(exchange.to_ascii_uppercase(), symbol.to_ascii_uppercase()))
            .copied()
            .unwrap_or(Tier::Three)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_tiers_load_and_rank_symbols() {
        let i = Instruments::builtin().unwrap();
        assert_eq!(i.tier("BINANCE", "btcusdt"), Tier::One);
        assert_eq!(i.tier("binance", "DOTUSDT"), Tier::Two);
        assert_eq!(i.tier("BINANCE", "NOSUCHCOIN"), Tier::Three);
        assert_eq!(i.tier("KRAKEN", "BTCUSDT"), Tier::Three);
        // the file on disk is the one built in
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/instruments.toml");
        assert_eq!(
            Instruments::load(&path)
                .unwrap()
                .tier("BINANCE_US", "COMPUSDT"),
            Tier::Two
        );
    }

    #[test]
    fn overlap_and_unknown_keys_are_named() {
        let e = Instruments::parse("[exchanges.X]\ntier1=[\"A\"]\ntier2=[\"a\"]\n", "f.toml")
            .unwrap_err();
        assert!(
            e.to_string().contains("exchanges.X") && e.to_string().contains("f.toml"),
            "{e}"
        );
        let e = Instruments::parse("[exchanges.X]\ntier4=[\"A\"]\n", "f.toml").unwrap_err();
        assert!(
            e.to_string().contains("tier4") && e.to_string().contains("f.toml"),
            "{e}"
        );
    }
}
