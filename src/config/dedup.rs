//! `[dedup]`: the message-id dedup of the feeds and of the trades writer
//! (`crate::dedup`). How many ids each remembers is its own setting
//! (`feeds.<name>.dedup_capacity`, `writer.dedup_capacity`); what is shared
//! is here.

use serde::{Deserialize, Serialize};

/// `dedup.false_positive_rate` when not configured.
pub const DEFAULT_FALSE_POSITIVE_RATE: f64 = 1e-5;

/// `[dedup]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// Chance that an id never seen passes the Bloom filter in front of the
    /// exact window and is looked up there for nothing (it is still taken
    /// as new: the window decides). Each id of capacity costs 11.75 bytes
    /// of filter at the default 1e-5 (5 at 1e-3, 18.75 at 1e-6), against
    /// 16 or more in the window, and 10 lookups in 1,000,000 new ids are
    /// negligible even when the window is a remote store. Greater than 0
    /// and less than 0.5; the filter is never built for less than 1e-9.
    pub false_positive_rate: f64,
    /// A Redis server (`redis://127.0.0.1:6379/0`) shared by the daemons
    /// that hold the same feed (hot standby): the recent message ids and
    /// each symbol's last trade id live there, so they keep one continuity
    /// and publish each trade once. Unset: everything stays in-process.
    pub redis_url: Option<String>,
    /// Every key this daemon writes in Redis starts with `<prefix>:`.
    pub redis_key_prefix: String,
    /// How long Redis remembers a message id (seconds).
    pub redis_window_secs: u64,
}

/// `dedup.redis_window_secs` when not configured.
pub const DEFAULT_REDIS_WINDOW_SECS: u64 = 900;

/// The longest `dedup.redis_window_secs`: 366 days, as every time setting.
const MAX_REDIS_WINDOW_SECS: u64 = 366 * 24 * 3600;

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            false_positive_rate: DEFAULT_FALSE_POSITIVE_RATE,
            redis_url: None,
            redis_key_prefix: "ticklake".into(),
            redis_window_secs: DEFAULT_REDIS_WINDOW_SECS,
        }
    }
}

/// A `[dedup]` value out of range.
#[derive(Debug, thiserror::Error)]
pub enum DedupConfigError {
    #[error("{0} is not a rate greater than 0 and less than 0.5")]
    FalsePositiveRate(f64),
    #[error("{0:?} is not a Redis URL: {1}")]
    RedisUrl(String, String),
    #[error("{0:?} must be 1 to 64 characters, none of them a space, `:` or `*`")]
    RedisKeyPrefix(String),
    #[error("{0} must be from 1 second to 366 days")]
    RedisWindow(u64),
}

impl DedupConfigError {
    /// The key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            DedupConfigError::FalsePositiveRate(_) => "dedup.false_positive_rate",
            DedupConfigError::RedisUrl(..) => "dedup.redis_url",
            DedupConfigError::RedisKeyPrefix(_) => "dedup.redis_key_prefix",
            DedupConfigError::RedisWindow(_) => "dedup.redis_window_secs",
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
        if let Some(url) = &self.redis_url {
            // Parsing only; whether the server answers is seen at start.
            if let Err(e) = redis::Client::open(url.as_str()) {
                return Err(DedupConfigError::RedisUrl(url.clone(), e.to_string()));
            }
        }
        let p = &self.redis_key_prefix;
        // `:` separates the key's parts and `*` would match other keys in
        // a SCAN; both would mix one prefix's keys with another's.
        if p.is_empty() || p.len() > 64 || p.contains([' ', ':', '*']) {
            return Err(DedupConfigError::RedisKeyPrefix(p.clone()));
        }
        let w = self.redis_window_secs;
        if w == 0 || w > MAX_REDIS_WINDOW_SECS {
            return Err(DedupConfigError::RedisWindow(w));
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
        assert_eq!(cfg.dedup.false_positive_rate, 1e-5);
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

    /// A dedup capacity the daemon could not hold names its key: past what
    /// the window takes, or, with the other dedups, past the memory at
    /// which the daemon breaks the circuit.
    #[test]
    fn dedup_capacities_that_cannot_fit_name_their_key() {
        load("[writer]\ndedup_capacity = 100000000\n").unwrap();
        let e = load("[writer]\ndedup_capacity = 4000000000\n").unwrap_err();
        assert!(e.contains("writer.dedup_capacity"), "{e}");
        assert!(e.contains("degradation.thresholds.rss_bytes"), "{e}");
        let e = load("[writer]\ndedup_capacity = 5000000000\n").unwrap_err();
        assert!(e.contains("writer.dedup_capacity"), "{e}");
        assert!(e.contains("at most 4294967295"), "{e}");
        // A lower rate costs more bits an id: 100 million ids fit at 1e-5
        // (about 3.2 GiB), not at 1e-9 (about 11 GiB).
        let e = load("[dedup]\nfalse_positive_rate = 1e-9\n[writer]\ndedup_capacity = 100000000\n")
            .unwrap_err();
        assert!(e.contains("writer.dedup_capacity"), "{e}");
        // The limit is the operator's: raised, the same capacity loads.
        load("[dedup]\nfalse_positive_rate = 1e-9\n[writer]\ndedup_capacity = 100000000\n[degradation.thresholds]\nrss_bytes = [2e9, 3e9, 4e9, 3e10]\n").unwrap();
        let feed = "[feeds.binance]\ndedup_capacity = 3000000000\n";
        let e = load(feed).unwrap_err();
        assert!(e.contains("feeds.binance.dedup_capacity"), "{e}");
    }

    /// The standby's half of hot standby: writers off, on a real broker only.
    #[test]
    fn writers_off_need_a_real_broker() {
        assert!(load("").unwrap().writer.enabled);
        let e = load("[writer]\nenabled = false\n").unwrap_err();
        assert!(e.contains("writer.enabled"), "{e}");
        let cfg =
            load("[kafka]\nbrokers = \"127.0.0.1:9092\"\n[writer]\nenabled = false\n").unwrap();
        assert!(!cfg.writer.enabled);
    }

    #[test]
    fn redis_keys_default_load_and_are_checked() {
        let cfg = load("").unwrap();
        assert_eq!(cfg.dedup.redis_url, None);
        assert_eq!(cfg.dedup.redis_key_prefix, "ticklake");
        assert_eq!(cfg.dedup.redis_window_secs, 900);
        let cfg = load(
            "[dedup]\nredis_url = \"redis://127.0.0.1:6379/0\"\nredis_key_prefix = \"a\"\nredis_window_secs = 60\n",
        )
        .unwrap();
        assert_eq!(
            cfg.dedup.redis_url.as_deref(),
            Some("redis://127.0.0.1:6379/0")
        );
        assert_eq!(cfg.dedup.redis_window_secs, 60);
        for (body, key) in [
            ("redis_url = \"http://x\"", "dedup.redis_url"),
            ("redis_url = \"\"", "dedup.redis_url"),
            ("redis_key_prefix = \"\"", "dedup.redis_key_prefix"),
            ("redis_key_prefix = \"a:b\"", "dedup.redis_key_prefix"),
            ("redis_window_secs = 0", "dedup.redis_window_secs"),
            ("redis_window_secs = 999999999", "dedup.redis_window_secs"),
        ] {
            let e = load(&format!("[dedup]\n{body}\n")).unwrap_err();
            assert!(e.contains(key), "{body}: {e}");
        }
    }
}
