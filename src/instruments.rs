//! The instruments file (`config/instruments.toml`): per exchange, the
//! pattern its symbols must match and the symbol priority tiers. Under
//! overload the daemon keeps tier 1 always and degrades tier 3 first.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use regex::Regex;
use serde::Deserialize;

use crate::fastmap::{FastMap, FastSet};

/// Longest symbol any exchange's pattern may allow, in bytes. The symbol is
/// a partition value of the lake and a key of every index over the tail;
/// no venue's tickers come near it.
pub const MAX_SYMBOL_LEN: usize = 32;

/// Most characters of a refused symbol quoted in its dead letter's reason:
/// the frame's raw bytes keep the whole of it.
const SHOWN_SYMBOL_CHARS: usize = 40;

/// Most symbols a rule remembers as accepted. Far above any venue's list;
/// past it, a stream of ever-new symbols is matched by the pattern each
/// time and takes no more memory.
const REMEMBERED_SYMBOLS: usize = 8192;

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
    #[error("instruments file {path}: key `{key}`: {reason}")]
    Key {
        path: String,
        key: String,
        reason: String,
    },
    #[error(
        "instruments file {path}: no section `[exchanges.{exchange}]`, so no `symbol_pattern` for the symbols of exchange {exchange}"
    )]
    NoExchange { path: String, exchange: String },
}

/// A symbol its exchange's `symbol_pattern` refuses. The text is the dead
/// letter's reason, so it names the key to look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("symbol {shown} does not match exchanges.{exchange}.symbol_pattern `{pattern}`")]
pub struct SymbolError {
    pub exchange: String,
    pub pattern: String,
    /// The symbol quoted, cut to `SHOWN_SYMBOL_CHARS` characters.
    pub shown: String,
}

/// The symbols one exchange may send: `exchanges.<name>.symbol_pattern`,
/// matched against the whole symbol. It bounds length and charset before a
/// symbol becomes a record key and a partition of the lake.
#[derive(Debug, Clone)]
pub struct SymbolRule {
    exchange: String,
    pattern: String,
    /// `pattern` anchored at both ends, so `[A-Z]{3}` cannot match inside
    /// a longer symbol whatever the file says.
    regex: Regex,
    /// Symbols the pattern accepted. A feed sends the same few symbols over
    /// and over, and matching each trade's symbol again was 2.4 % of the
    /// feed thread's samples in a profile of `ticklake bench`, about three
    /// times what the same match costs in a loop of its own (40 ns; a
    /// lookup here 29 ns): the regex's code and tables compete with the
    /// parse's for the cache. Only accepted symbols are kept, so a refused
    /// one always meets the pattern (and its error). Shared by the rule's
    /// clones: the same pattern gives the same answers.
    accepted: Arc<RwLock<FastSet<Box<str>>>>,
}

impl SymbolRule {
    /// Compiles `pattern`; the error is the reason, for the caller to name
    /// the key and the file. A pattern must refuse the empty symbol and
    /// bound the length at `MAX_SYMBOL_LEN` bytes: an unbounded pattern
    /// (`[A-Z]+`) would let a hostile frame choose the key's size.
    pub fn new(exchange: &str, pattern: &str) -> Result<Self, String> {
        // Parsed alone first, so an error quotes the pattern as written;
        // the anchors added below match no characters and change no length.
        let hir = regex_syntax::Parser::new()
            .parse(pattern)
            .map_err(|e| format!("not a regular expression: {e}"))?;
        let props = hir.properties();
        if props.minimum_len() == Some(0) {
            return Err(format!("`{pattern}` matches the empty symbol"));
        }
        match props.maximum_len() {
            None => {
                return Err(format!(
                    "`{pattern}` matches symbols of any length; bound it (e.g. `[A-Z0-9]{{4,20}}`) to at most {MAX_SYMBOL_LEN} bytes"
                ));
            }
            Some(n) if n > MAX_SYMBOL_LEN => {
                return Err(format!(
                    "`{pattern}` matches symbols of up to {n} bytes; at most {MAX_SYMBOL_LEN} are stored"
                ));
            }
            Some(_) => {}
        }
        let regex = Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| format!("not a regular expression: {e}"))?;
        Ok(Self {
            exchange: exchange.to_string(),
            pattern: pattern.to_string(),
            regex,
            accepted: Arc::default(),
        })
    }

    /// Whether `symbol` is one this exchange may send.
    pub fn check(&self, symbol: &str) -> Result<(), SymbolError> {
        // A poisoned lock only means a panic elsewhere mid-insert: the
        // pattern still answers.
        if self.accepted.read().is_ok_and(|a| a.contains(symbol)) {
            return Ok(());
        }
        if self.regex.is_match(symbol) {
            if let Ok(mut a) = self.accepted.write()
                && a.len() < REMEMBERED_SYMBOLS
            {
                a.insert(symbol.into());
            }
            return Ok(());
        }
        let mut shown = format!(
            "{:?}",
            symbol.chars().take(SHOWN_SYMBOL_CHARS).collect::<String>()
        );
        if symbol.chars().nth(SHOWN_SYMBOL_CHARS).is_some() {
            shown = format!("{shown}… ({} bytes)", symbol.len());
        }
        Err(SymbolError {
            exchange: self.exchange.clone(),
            pattern: self.pattern.clone(),
            shown,
        })
    }
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
    /// Required; optional here only so that its absence is reported with
    /// the key and the file rather than as serde's bare "missing field".
    symbol_pattern: Option<String>,
    /// Always kept.
    #[serde(default)]
    tier1: Vec<String>,
    /// Kept up to AGGRESSIVE.
    #[serde(default)]
    tier2: Vec<String>,
}

/// Symbol rules and tier lookup for every exchange; unknown symbols are
/// tier 3.
#[derive(Debug, Clone)]
pub struct Instruments {
    /// Where the file came from, for errors found after loading.
    path: String,
    tiers: HashMap<(String, String), Tier>,
    /// Keyed by the upper-cased exchange name.
    rules: HashMap<String, SymbolRule>,
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
        let mut rules = HashMap::new();
        for (exchange, t) in file.exchanges {
            let ex = exchange.to_ascii_uppercase();
            let key = format!("exchanges.{exchange}.symbol_pattern");
            let key_err = |key: String, reason: String| InstrumentsError::Key {
                path: path.to_string(),
                key,
                reason,
            };
            let pattern = t.symbol_pattern.as_deref().ok_or_else(|| {
                key_err(
                    key.clone(),
                    "missing: every exchange needs the pattern its symbols must match".into(),
                )
            })?;
            let rule = SymbolRule::new(&exchange, pattern).map_err(|r| key_err(key.clone(), r))?;
            // A listed symbol the pattern refuses could never arrive: a typo
            // in either, told now rather than found as dead letters. Tiers
            // match case-insensitively, so the upper-cased form counts too.
            for (tier, list) in [("tier1", &t.tier1), ("tier2", &t.tier2)] {
                for s in list {
                    rule.check(s)
                        .or_else(|_| rule.check(&s.to_ascii_uppercase()))
                        .map_err(|e| {
                            key_err(format!("exchanges.{exchange}.{tier}"), e.to_string())
                        })?;
                }
            }
            if rules.insert(ex.clone(), rule).is_some() {
                return Err(key_err(
                    format!("exchanges.{exchange}"),
                    "the exchange is listed twice (names are case-insensitive)".into(),
                ));
            }
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
        Ok(Self {
            path: path.to_string(),
            tiers,
            rules,
        })
    }

    /// The symbol rule of `exchange` (case-insensitive). An exchange the
    /// file does not list has none: its feed or loader refuses to start.
    pub fn symbol_rule(&self, exchange: &str) -> Result<&SymbolRule, InstrumentsError> {
        self.rules
            .get(&exchange.to_ascii_uppercase())
            .ok_or_else(|| InstrumentsError::NoExchange {
                path: self.path.clone(),
                exchange: exchange.to_string(),
            })
    }

    pub fn tier(&self, exchange: &str, symbol: &str) -> Tier {
        self.tiers
            .get(&(exchange.to_ascii_uppercase(), symbol.to_ascii_uppercase()))
            .copied()
            .unwrap_or(Tier::Three)
    }
}

/// Tiers as the hot path asks for them, per trade: each (exchange, symbol)
/// is looked up in the instruments once, without the case-folded copies
/// [`Instruments::tier`] makes.
pub struct TierCache {
    instruments: Arc<Instruments>,
    known: FastMap<String, FastMap<String, Tier>>,
}

impl TierCache {
    pub fn new(instruments: Arc<Instruments>) -> Self {
        Self {
            instruments,
            known: Default::default(),
        }
    }

    pub fn tier(&mut self, exchange: &str, symbol: &str) -> Tier {
        if let Some(t) = self.known.get(exchange).and_then(|s| s.get(symbol)) {
            return *t;
        }
        let t = self.instruments.tier(exchange, symbol);
        self.known
            .entry(exchange.to_string())
            .or_default()
            .insert(symbol.to_string(), t);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_tiers_load_and_rank_symbols() {
        let i = Instruments::builtin().unwrap();
        let mut cache = TierCache::new(Arc::new(i.clone()));
        for (e, s) in [
            ("BINANCE", "btcusdt"),
            ("binance", "DOTUSDT"),
            ("KRAKEN", "BTCUSDT"),
        ] {
            assert_eq!(cache.tier(e, s), i.tier(e, s), "{e} {s}");
            assert_eq!(cache.tier(e, s), i.tier(e, s), "{e} {s}, cached");
        }
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
        let e = Instruments::parse(
            "[exchanges.X]\nsymbol_pattern=\"[A-Z]{1,8}\"\ntier1=[\"A\"]\ntier2=[\"a\"]\n",
            "f.toml",
        )
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

    /// Every symbol in the recorded captures and the ASX sample, and every
    /// tier symbol, passes the shipped patterns.
    #[test]
    fn shipped_patterns_accept_real_symbols() {
        let i = Instruments::builtin().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut seen = 0;
        for (exchange, capture) in [
            ("BINANCE", "captures/BINANCE-ee25be.0.txt"),
            ("BINANCE_US", "captures/BINANCE_US.ws.1.0.txt"),
        ] {
            let text = std::fs::read_to_string(fixtures.join(capture)).unwrap();
            let rule = i.symbol_rule(exchange).unwrap();
            for s in text.split("\"s\":\"").skip(1) {
                let symbol = &s[..s.find('"').unwrap()];
                assert_eq!(rule.check(symbol), Ok(()), "{exchange} {symbol}");
                seen += 1;
            }
        }
        let companies =
            std::fs::read_to_string(fixtures.join("asx/reference-data/company_info.csv")).unwrap();
        for line in companies.lines().skip(1) {
            let symbol = line.split(',').nth(1).unwrap();
            assert_eq!(i.symbol_rule("asx").unwrap().check(symbol), Ok(()));
            seen += 1;
        }
        assert!(seen > 1_000, "only {seen} symbols found in the fixtures");
    }

    #[test]
    fn symbols_outside_the_pattern_are_refused_with_the_key() {
        let i = Instruments::builtin().unwrap();
        let rule = i.symbol_rule("Binance").unwrap();
        for bad in [
            "",
            "btcusdt",
            "BTC USDT",
            "BTC-USDT",
            "BTC'--",
            "A\u{0}BCD",
            "ÄBCDEF",
            &"X".repeat(21),
        ] {
            let e = rule.check(bad).unwrap_err();
            assert!(
                e.to_string()
                    .contains("exchanges.BINANCE.symbol_pattern `[A-Z0-9]{4,20}`"),
                "{bad:?}: {e}"
            );
        }
        // The reason quotes a huge symbol only in part: the raw frame keeps it.
        let huge = "Y".repeat(1 << 20);
        let e = rule.check(&huge).unwrap_err().to_string();
        assert!(
            e.len() < 200 && e.contains(&format!("{} bytes", 1 << 20)),
            "{e}"
        );
        // Anchored: a pattern matching part of a symbol does not pass it.
        let three = SymbolRule::new("X", "[A-Z]{3}").unwrap();
        assert_eq!(three.check("BHP"), Ok(()));
        assert!(three.check("BHPX").is_err() && three.check("xBHP").is_err());
        // Asked again, from the remembered symbols: the same answers, and
        // a refused symbol is never remembered.
        assert_eq!(three.check("BHP"), Ok(()));
        assert!(three.check("BHPX").is_err() && three.check("BHPX").is_err());
        assert_eq!(three.accepted.read().unwrap().len(), 1);
        assert!(
            i.symbol_rule("ASX").unwrap().check("BHP").is_ok()
                && i.symbol_rule("ASX").unwrap().check("BHPBILLITON").is_err()
        );
    }

    /// The remembered symbols stop at their bound; symbols past it are
    /// still answered by the pattern.
    #[test]
    fn remembered_symbols_are_bounded() {
        let rule = SymbolRule::new("X", "[A-Z0-9]{1,8}").unwrap();
        for i in 0..REMEMBERED_SYMBOLS + 50 {
            assert_eq!(rule.check(&format!("S{i}")), Ok(()));
        }
        assert_eq!(rule.accepted.read().unwrap().len(), REMEMBERED_SYMBOLS);
        let past = format!("S{}", REMEMBERED_SYMBOLS + 49);
        assert!(!rule.accepted.read().unwrap().contains(past.as_str()));
        assert_eq!(rule.check(&past), Ok(()));
        assert!(rule.check("s1").is_err());
        // A clone shares them.
        assert!(rule.clone().accepted.read().unwrap().contains("S0"));
    }

    #[test]
    fn bad_or_missing_patterns_name_the_key_and_the_file() {
        let cases = [
            ("tier1 = [\"A\"]", "missing"),
            ("symbol_pattern = \"[A-Z\"", "not a regular expression"),
            ("symbol_pattern = \"[A-Z]+\"", "any length"),
            ("symbol_pattern = \"[A-Z]{1,33}\"", "up to 33 bytes"),
            ("symbol_pattern = \"[A-Z]{0,8}\"", "empty symbol"),
            ("symbol_pattern = \"A|\"", "empty symbol"),
        ];
        for (body, why) in cases {
            let text = format!("[exchanges.KRAKEN]\n{body}\n");
            let e = Instruments::parse(&text, "conf/instruments.toml")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("conf/instruments.toml")
                    && e.contains("`exchanges.KRAKEN.symbol_pattern`")
                    && e.contains(why),
                "{body}: {e}"
            );
        }
        // A tier symbol its pattern refuses would never be seen.
        let e = Instruments::parse(
            "[exchanges.KRAKEN]\nsymbol_pattern = \"[A-Z]{3}/[A-Z]{3}\"\ntier1 = [\"XBT/USD\", \"ETHUSD\"]\n",
            "k.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("k.toml") && e.contains("`exchanges.KRAKEN.tier1`") && e.contains("ETHUSD"),
            "{e}"
        );
        // Names are case-insensitive, so one exchange cannot get two rules.
        let e = Instruments::parse(
            "[exchanges.asx]\nsymbol_pattern = \"[A-Z]{3}\"\n[exchanges.ASX]\nsymbol_pattern = \"[A-Z]{4}\"\n",
            "a.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a.toml") && e.contains("listed twice"), "{e}");
        // An exchange without a section has no rule, and says where to add it.
        let i = Instruments::parse(
            "[exchanges.KRAKEN]\nsymbol_pattern = \"[A-Z]{3}/[A-Z]{3}\"\n",
            "k.toml",
        )
        .unwrap();
        assert!(i.symbol_rule("kraken").is_ok());
        let e = i.symbol_rule("COINBASE").unwrap_err().to_string();
        assert!(
            e.contains("k.toml")
                && e.contains("[exchanges.COINBASE]")
                && e.contains("symbol_pattern"),
            "{e}"
        );
    }
}
