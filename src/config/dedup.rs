//! `[dedup]`: the message-id dedup of the feeds and of the trades writer
//! (`crate::dedup`). How many ids each remembers is its own setting
//! (`feeds.<name>.dedup_capacity`, `writer.dedup_capacity`); what is shared
//! is here.

use serde::{Deserialize, Serialize};

/// `dedup.false_positive_rate` when not configured.
pub const DEFAULT_FALSE_POSITIVE_RATE: f64 = 1e-6;

/// `[dedup]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// Chance that an id never seen passes the Bloom filter in front of the
    /// exact window and is looked up there for nothing (it is still taken
    /// as new: the window decides). Each remembered id costs
    /// `2.9 * log2(2 / rate)` bits of filter: 7.6 bytes at the default
    /// 1e-6, against 16 or more in the window, and a lookup in 1,000,000
    /// new ids is negligible even when the window is a remote store.
    /// Greater than 0 and less than 0.5; the filter is never built for less
    /// than 1e-12.
    pub false_positive_rate: f64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            false_positive_rate: DEFAULT_FALSE_POSITIVE_RATE,
        }
    }
}

/// A `[dedup]` value out of range.
#[derive(Debug, thiserror::Error)]
pub enum DedupConfigError {
    #[error("{0} is not a rate greater than 0 and less than 0.5")]
    FalsePositiveRate(f64),
}

impl DedupConfigError {
    /// The key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            DedupConfigError::FalsePositiveRate(_) => "dedup.false_positive_rate",
        }
    }
}

impl DedupConfig {
    /// The first value out of range, if any.
    pub fn validate(&self) -> Result<(), DedupConfigError> {
        let r = self.false_positive_rate;
        // Written so that NaN fails too.
        if !(r > 0.0 && r < 0.5) {
            return Err(DedupConfigError::FalsePositiveRate(r));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use std::io::Write;

    use crate::config::Config;

    fn load(body: &str) -> Result<Config, String> {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(body.as_bytes()).unwrap();
        let mut out = Err(String::new());
        figment::Jail::expect_with(|_| {
            out = Config::load(Some(f.path())).map_err(|e| {
                let e = e.to_string();
                assert!(e.contains(&f.path().display().to_string()), "{e}");
                e
            });
            Ok(())
        });
        out
    }

    #[test]
    fn dedup_rate_defaults_and_loads() {
        let cfg = load("").unwrap();
        assert_eq!(cfg.dedup.false_positive_rate, 1e-6);
        let cfg = load("[dedup]\nfalse_positive_rate = 0.001\n").unwrap();
        assert_eq!(cfg.dedup.false_positive_rate, 0.001);
    }

    #[test]
    fn dedup_rate_out_of_range_names_key_and_file() {
        for bad in ["0.0", "0.5", "-1e-6", "1.0", "nan", "inf"] {
            let e = load(&format!("[dedup]\nfalse_positive_rate = {bad}\n")).unwrap_err();
            assert!(e.contains("dedup.false_positive_rate"), "{bad}: {e}");
        }
        let e = load("[dedup]\nfalse_positive_rat = 0.1\n").unwrap_err();
        assert!(e.contains("dedup.false_positive_rat"), "{e}");
    }
}
