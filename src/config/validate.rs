//! Validation of a loaded config: every value in range, every error naming
//! its key and where it came from. No IO: whether the brokers or the
//! exchange answer is a health check, not a config error.

use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;

use super::{Config, ConfigError, source_of};

/// The longest time any setting may name: 366 days.
const MAX_DURATION_MS: u64 = 366 * 24 * 3600 * 1000;

impl Config {
    /// `lake.catalog*`: a URI the chosen catalog can open, and only the
    /// SQL catalog's properties it parses (it panics on a bad number).
    fn validate_catalog(
        &self,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        use super::CatalogKind;
        let lake = &self.lake;
        match lake.catalog {
            CatalogKind::Sql => {
                if !lake.catalog_warehouse.is_empty() {
                    return Err(err(
                        "lake.catalog_warehouse",
                        "is for a REST catalog (lake.catalog = \"rest\"); a SQL catalog's \
                         tables go in lake.warehouse"
                            .into(),
                    ));
                }
                let uri = self.catalog_uri();
                if super::catalog::sql_backend(&uri).is_none() {
                    return Err(err(
                        "lake.catalog_uri",
                        format!(
                            "{:?} is neither sqlite:… nor postgres://… (lake.catalog = \"sql\")",
                            super::catalog::redact(&uri)
                        ),
                    ));
                }
                for (k, v) in &lake.catalog_properties {
                    let ok = match k.as_str() {
                        "pool.max-connections" => v.parse::<u32>().is_ok_and(|n| n > 0),
                        "pool.idle-timeout" => v.parse::<u64>().is_ok(),
                        "pool.test-before-acquire" => v.parse::<bool>().is_ok(),
                        _ => {
                            return Err(err(
                                &format!("lake.catalog_properties.{k}"),
                                "the SQL catalog knows only pool.max-connections, \
                                 pool.idle-timeout and pool.test-before-acquire"
                                    .into(),
                            ));
                        }
                    };
                    if !ok {
                        return Err(err(
                            &format!("lake.catalog_properties.{k}"),
                            format!("{v:?} is not a valid value"),
                        ));
                    }
                }
            }
            CatalogKind::Rest => match url::Url::parse(&lake.catalog_uri) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
                    for (k, instead) in [
                        ("uri", "lake.catalog_uri"),
                        ("warehouse", "lake.catalog_warehouse"),
                    ] {
                        if lake.catalog_properties.contains_key(k) {
                            return Err(err(
                                &format!("lake.catalog_properties.{k}"),
                                format!("set {instead} instead"),
                            ));
                        }
                    }
                    if let Err((key, why)) = super::catalog::sigv4_props(&lake.catalog_properties) {
                        return Err(err(&key, why));
                    }
                }
                Ok(u) => {
                    return Err(err(
                        "lake.catalog_uri",
                        format!(
                            "scheme {:?} is not http or https (lake.catalog = \"rest\")",
                            u.scheme()
                        ),
                    ));
                }
                Err(e) => {
                    return Err(err(
                        "lake.catalog_uri",
                        format!(
                            "{:?}: {e}; lake.catalog = \"rest\" needs the server's http(s) URL",
                            lake.catalog_uri
                        ),
                    ));
                }
            },
        }
        Ok(())
    }

    /// The message-id dedups (each enabled feed's and the trades writer's)
    /// fill to their capacity and stay there, so together they must fit
    /// below the resident memory at which the daemon breaks the circuit
    /// (`degradation.thresholds.rss_bytes`, the last trigger): a capacity
    /// past it would take the daemon there, or to the kernel's OOM killer,
    /// by itself. The error names the largest one.
    fn validate_dedup_memory(
        &self,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let rate = self.dedup.false_positive_rate;
        let mut dedups: Vec<(String, usize)> = self
            .feeds
            .values()
            .filter(|f| f.enabled)
            .map(|f| (f.key("dedup_capacity"), f.dedup_capacity))
            .collect();
        if self.writer.enabled {
            dedups.push(("writer.dedup_capacity".into(), self.writer.dedup_capacity));
        }
        let window_max = u32::MAX as usize;
        if let Some((key, _)) = dedups.iter().find(|(_, c)| *c > window_max) {
            return Err(err(key, format!("must be at most {window_max} ids")));
        }
        let bytes = |c: usize| super::sizing::memory_at_capacity(c, rate);
        let total: f64 = dedups.iter().map(|(_, c)| bytes(*c)).sum();
        let limit = self.degradation.thresholds.rss_bytes[3];
        let Some((key, capacity)) = dedups.into_iter().max_by_key(|(_, c)| *c) else {
            return Ok(());
        };
        if total > limit {
            const GIB: f64 = (1u64 << 30) as f64;
            return Err(err(
                &key,
                format!(
                    "{capacity} ids take about {:.2} GiB once full (exact window and Bloom filter at dedup.false_positive_rate {rate:e}), and all the dedups {:.2} GiB: more than the resident memory at which the daemon breaks the circuit (degradation.thresholds.rss_bytes, last trigger: {:.2} GiB)",
                    bytes(capacity) / GIB,
                    total / GIB,
                    limit / GIB
                ),
            ));
        }
        Ok(())
    }

    /// Every feed: a ws URL, symbols and channels its protocol knows, sane
    /// timers (none beyond a year), and no two enabled feeds storing the same exchange name
    /// (they would share a topic and a dedup window).
    fn validate_feeds(&self, err: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        let mut exchanges: std::collections::BTreeMap<&str, &str> = Default::default();
        for f in self.feeds.values() {
            let key = |k: &str| f.key(k);
            let name_ok = !f.name.is_empty()
                && f.name.len() <= 32
                && f.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !name_ok {
                return Err(err(
                    &format!("feeds.{}", f.name),
                    "a feed's name is 1 to 32 of a-z, 0-9 and _".into(),
                ));
            }
            let kind = f.protocol();
            match url::Url::parse(&f.url) {
                Ok(u) if u.scheme() == "ws" || u.scheme() == "wss" => {}
                Ok(u) => {
                    return Err(err(
                        &key("url"),
                        format!("scheme {:?} is not ws or wss", u.scheme()),
                    ));
                }
                Err(e) => return Err(err(&key("url"), format!("{:?}: {e}", f.url))),
            }
            match url::Url::parse(&f.rest_url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                Ok(u) => {
                    return Err(err(
                        &key("rest_url"),
                        format!("scheme {:?} is not http or https", u.scheme()),
                    ));
                }
                Err(e) => return Err(err(&key("rest_url"), format!("{:?}: {e}", f.rest_url))),
            }
            if let Err(e) = humantime::parse_duration(&f.backfill_max_age) {
                return Err(err(
                    &key("backfill_max_age"),
                    format!("{:?} is not a duration (30m, 1h): {e}", f.backfill_max_age),
                ));
            }
            if f.rest_requests_per_sec == 0 || f.rest_requests_per_sec > 1000 {
                return Err(err(
                    &key("rest_requests_per_sec"),
                    "must be 1 to 1000".into(),
                ));
            }
            if !(1..=1000).contains(&f.rest_page_size) {
                return Err(err(&key("rest_page_size"), "must be 1 to 1000".into()));
            }
            if f.gap_grace_ms > 600_000 {
                return Err(err(
                    &key("gap_grace_ms"),
                    "must be at most 600000 (10 min)".into(),
                ));
            }
            let ex = f.exchange.as_str();
            if ex.trim().is_empty()
                || ex.len() > 32
                || !ex
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(err(
                    &key("exchange"),
                    format!("{ex:?} is not an exchange name (1 to 32 of A-Z, 0-9 and _)"),
                ));
            }
            if f.enabled
                && let Some(other) = exchanges.insert(ex, &f.name)
            {
                return Err(err(
                    &key("exchange"),
                    format!(
                        "{ex} is also the exchange of feeds.{other}; each enabled feed stores its own"
                    ),
                ));
            }
            if f.enabled && f.symbols.is_empty() {
                return Err(err(&key("symbols"), "needs at least one symbol".into()));
            }
            if let Some(s) = f.symbols.iter().find(|s| {
                s.is_empty()
                    || s.len() > 32
                    || !s
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'))
            }) {
                return Err(err(
                    &key("symbols"),
                    format!("{s:?} is not a symbol (1 to 32 letters, digits and / - _ .)"),
                ));
            }
            let known = kind.channels();
            if f.enabled && f.channels.is_empty() {
                return Err(err(
                    &key("channels"),
                    format!("needs one of {}", known.join(", ")),
                ));
            }
            if let Some(c) = f.channels.iter().find(|c| !known.contains(&c.as_str())) {
                return Err(err(
                    &key("channels"),
                    format!(
                        "{c:?} is not a trade channel of protocol {}; one of {}",
                        kind.as_str(),
                        known.join(", ")
                    ),
                ));
            }
            if f.backoff_initial_ms == 0 || f.backoff_max_ms < f.backoff_initial_ms {
                return Err(err(
                    &key("backoff_max_ms"),
                    "backoff_initial_ms must be > 0 and <= backoff_max_ms".into(),
                ));
            }
            if f.stale_after_secs == 0 {
                return Err(err(&key("stale_after_secs"), "must be > 0".into()));
            }
            if f.max_connection_secs == 0 {
                return Err(err(&key("max_connection_secs"), "must be > 0".into()));
            }
            if f.dedup_capacity == 0 {
                return Err(err(&key("dedup_capacity"), "must be > 0".into()));
            }
            let secs = |s: u64| s.saturating_mul(1000);
            for (k, ms) in [
                ("backoff_initial_ms", f.backoff_initial_ms),
                ("backoff_max_ms", f.backoff_max_ms),
                ("stale_after_secs", secs(f.stale_after_secs)),
                ("max_connection_secs", secs(f.max_connection_secs)),
            ] {
                if ms > MAX_DURATION_MS {
                    return Err(err(&key(k), "must be at most 366 days".into()));
                }
            }
        }
        Ok(())
    }

    /// `kafka.schema_registry_*`: a URL the client can use, credentials only
    /// with one. Whether it answers is checked at start, not here.
    fn validate_schema_registry(
        &self,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let k = &self.kafka;
        if !k.schema_registry_url.is_empty() {
            match url::Url::parse(&k.schema_registry_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
                Ok(_) => {
                    return Err(err(
                        "kafka.schema_registry_url",
                        "must be an http:// or https:// URL with a host".into(),
                    ));
                }
                Err(e) => return Err(err("kafka.schema_registry_url", format!("not a URL: {e}"))),
            }
        } else if !k.schema_registry_user.is_empty() || !k.schema_registry_password.is_empty() {
            let key = if k.schema_registry_user.is_empty() {
                "kafka.schema_registry_password"
            } else {
                "kafka.schema_registry_user"
            };
            return Err(err(key, "needs kafka.schema_registry_url".into()));
        }
        if k.schema_registry_user.is_empty() && !k.schema_registry_password.is_empty() {
            return Err(err(
                "kafka.schema_registry_password",
                "needs kafka.schema_registry_user".into(),
            ));
        }
        Ok(())
    }

    pub(super) fn validate(&self, fig: &Figment, file: Option<&Path>) -> Result<(), ConfigError> {
        let err = |key: &str, reason: String| ConfigError::Key {
            key: key.to_string(),
            source_name: source_of(fig, key, file),
            reason,
        };
        if self.kafka.brokers.trim().is_empty() {
            return Err(err(
                "kafka.brokers",
                "must be `embedded` or a bootstrap list".into(),
            ));
        }
        if !(1..=1024).contains(&self.kafka.embedded_partitions) {
            return Err(err(
                "kafka.embedded_partitions",
                "must be between 1 and 1024".into(),
            ));
        }
        if !["auto", "none", "gzip", "snappy", "lz4"].contains(&self.kafka.compression.as_str()) {
            return Err(err(
                "kafka.compression",
                format!(
                    "{:?} is not one of auto, none, gzip, snappy, lz4",
                    self.kafka.compression
                ),
            ));
        }
        self.validate_schema_registry(&err)?;
        for (k, v) in [
            ("kafka.trades_topic_prefix", &self.kafka.trades_topic_prefix),
            ("kafka.dead_letter_topic", &self.kafka.dead_letter_topic),
            ("kafka.consumer_group", &self.kafka.consumer_group),
            ("lake.namespace", &self.lake.namespace),
            ("lake.catalog_name", &self.lake.catalog_name),
        ] {
            if v.trim().is_empty() {
                return Err(err(k, "must not be empty".into()));
            }
        }
        self.validate_catalog(&err)?;
        let lose = &self.chaos.lose;
        for (k, v) in [
            ("chaos.lose.partition", i64::from(lose.partition)),
            ("chaos.lose.from", lose.from),
            ("chaos.lose.count", lose.count),
        ] {
            if v < 0 {
                return Err(err(k, format!("{v} is negative")));
            }
        }
        self.validate_feeds(&err)?;
        if self.writer.max_rows == 0 {
            return Err(err("writer.max_rows", "must be > 0".into()));
        }
        if self.writer.dedup_capacity == 0 {
            return Err(err("writer.dedup_capacity", "must be > 0".into()));
        }
        if let Err(e) = self.dedup.validate() {
            return Err(err(e.key(), e.to_string()));
        }
        self.validate_dedup_memory(&err)?;
        if let Err(e) = super::WarehouseUrl::parse(&self.warehouse()) {
            return Err(err("lake.warehouse", e.to_string()));
        }
        if let Err((key, reason)) = self.lake.s3.validate() {
            return Err(err(key, reason));
        }
        // Nobody would read the in-process cluster: the producer's window
        // would fill and hold the feeds back for good.
        if !self.writer.enabled && self.kafka.is_embedded() {
            return Err(err(
                "writer.enabled",
                "false needs a real broker (kafka.brokers), which another daemon's writers read"
                    .into(),
            ));
        }
        if self.writer.max_age_ms == 0 {
            return Err(err("writer.max_age_ms", "must be > 0".into()));
        }
        if self.writer.target_file_size_bytes < 1 << 20 {
            return Err(err(
                "writer.target_file_size_bytes",
                "must be at least 1 MiB".into(),
            ));
        }
        if let Some(t) = self.lanes.capacity.iter().position(|c| *c == 0) {
            return Err(err(
                &format!("lanes.capacity.{t}"),
                "every lane needs a capacity > 0".into(),
            ));
        }
        if let Err(e) = self.degradation.validate() {
            return Err(err(e.key(), e.to_string()));
        }
        if self.degradation.sample_ms == 0 {
            return Err(err("degradation.sample_ms", "must be > 0".into()));
        }
        for (name, b) in [
            ("producer", &self.breaker.producer),
            ("commit", &self.breaker.commit),
        ] {
            if let Err(crate::degrade::breaker::BreakerConfigError::Zero { key }) = b.validate() {
                return Err(err(
                    &format!("breaker.{name}.{key}"),
                    "must be at least 1".into(),
                ));
            }
        }
        if self.breaker.stall_ms == 0 {
            return Err(err("breaker.stall_ms", "must be > 0".into()));
        }
        if self.spill.segment_bytes < 4096 {
            return Err(err("spill.segment_bytes", "must be at least 4096".into()));
        }
        if self.spill.replay_batch == 0 {
            return Err(err("spill.replay_batch", "must be > 0".into()));
        }
        let s = &self.supervision;
        if s.watchdog_secs == 0 {
            return Err(err("supervision.watchdog_secs", "must be > 0".into()));
        }
        if s.restart_backoff_initial_ms == 0
            || s.restart_backoff_max_ms < s.restart_backoff_initial_ms
        {
            return Err(err(
                "supervision.restart_backoff_max_ms",
                "restart_backoff_initial_ms must be > 0 and <= restart_backoff_max_ms".into(),
            ));
        }
        if self.tail.max_rows == 0 {
            return Err(err("tail.max_rows", "must be > 0".into()));
        }
        if self.api.max_rows == 0 {
            return Err(err("api.max_rows", "must be > 0".into()));
        }
        if self.api.default_limit == 0 || self.api.default_limit > self.api.max_rows {
            return Err(err(
                "api.default_limit",
                "must be > 0 and <= api.max_rows".into(),
            ));
        }
        if self.api.timeout_ms == 0 {
            return Err(err("api.timeout_ms", "must be > 0".into()));
        }
        if !(1..=1024).contains(&self.api.max_concurrent) {
            return Err(err(
                "api.max_concurrent",
                "must be between 1 and 1024".into(),
            ));
        }
        // The worker maps its binary, stacks and allocator arenas besides
        // the query's data: 256 MiB on top of the query memory is the least
        // that leaves a query any room.
        let least = self.api.max_memory_bytes as u64 + (256 << 20);
        if self.api.sql_isolation && self.api.sql_worker_memory_bytes < least {
            return Err(err(
                "api.sql_worker_memory_bytes",
                format!("must be at least api.max_memory_bytes + 256 MiB ({least})"),
            ));
        }
        if let Err(e) = humantime::parse_duration(&self.maintenance.snapshot_retention) {
            return Err(err(
                "maintenance.snapshot_retention",
                format!(
                    "{:?} is not a duration like 1h or 30m: {e}",
                    self.maintenance.snapshot_retention
                ),
            ));
        }
        if let Err(e) = humantime::parse_duration(&self.maintenance.compact_min_age) {
            return Err(err(
                "maintenance.compact_min_age",
                format!(
                    "{:?} is not a duration like 10m or 1h: {e}",
                    self.maintenance.compact_min_age
                ),
            ));
        }
        // Durations with a floor, each checked the same way.
        for (key, value, least) in [
            (
                "maintenance.lease_ttl",
                &self.maintenance.lease_ttl,
                std::time::Duration::from_secs(1),
            ),
            (
                "maintenance.orphan_min_age",
                &self.maintenance.orphan_min_age,
                super::ORPHAN_MIN_AGE_FLOOR,
            ),
            (
                "maintenance.orphan_sweep_interval",
                &self.maintenance.orphan_sweep_interval,
                std::time::Duration::from_secs(60),
            ),
        ] {
            match humantime::parse_duration(value) {
                Ok(d) if d >= least && d.as_millis() <= MAX_DURATION_MS.into() => {}
                Ok(_) => {
                    return Err(err(
                        key,
                        format!(
                            "must be at least {} and at most 366 days",
                            humantime::format_duration(least)
                        ),
                    ));
                }
                Err(e) => {
                    return Err(err(
                        key,
                        format!("{value:?} is not a duration like 3d or 12h: {e}"),
                    ));
                }
            }
        }
        if self.maintenance.compact_min_files < 2 {
            return Err(err(
                "maintenance.compact_min_files",
                "must be at least 2".into(),
            ));
        }
        if self.maintenance.interval_secs == 0 {
            return Err(err("maintenance.interval_secs", "must be > 0".into()));
        }
        if let Err(e) = self.http.listen.parse::<SocketAddr>() {
            return Err(err("http.listen", format!("{:?}: {e}", self.http.listen)));
        }
        if !(1..=65_536).contains(&self.http.max_connections) {
            return Err(err(
                "http.max_connections",
                "must be between 1 and 65536".into(),
            ));
        }
        if let Some(h) = self
            .http
            .allowed_hosts
            .iter()
            .find(|h| h.is_empty() || h.contains([':', '/', ' ']))
        {
            return Err(err(
                "http.allowed_hosts",
                format!("{h:?} is not a host name (no port, no scheme)"),
            ));
        }
        // A time beyond a year is a typo, and the clock plus such a value
        // overflows (a panic at start, not an error naming the key).
        for (key, ms) in self.durations_ms() {
            if ms > MAX_DURATION_MS {
                return Err(err(key, "must be at most 366 days".into()));
            }
        }
        Ok(())
    }

    /// Every time-valued setting outside the feeds, in milliseconds
    /// (saturating).
    fn durations_ms(&self) -> [(&'static str, u64); 12] {
        let secs = |s: u64| s.saturating_mul(1000);
        [
            ("writer.max_age_ms", self.writer.max_age_ms),
            (
                "writer.dedup_window_secs",
                secs(self.writer.dedup_window_secs),
            ),
            ("degradation.sample_ms", self.degradation.sample_ms),
            ("degradation.cooldown_ms", self.degradation.cooldown_ms),
            ("breaker.stall_ms", self.breaker.stall_ms),
            ("breaker.producer.open_ms", self.breaker.producer.open_ms),
            ("breaker.commit.open_ms", self.breaker.commit.open_ms),
            (
                "supervision.watchdog_secs",
                secs(self.supervision.watchdog_secs),
            ),
            (
                "supervision.restart_backoff_initial_ms",
                self.supervision.restart_backoff_initial_ms,
            ),
            (
                "supervision.restart_backoff_max_ms",
                self.supervision.restart_backoff_max_ms,
            ),
            ("api.timeout_ms", self.api.timeout_ms),
            (
                "chaos.writer_delay_us_per_row",
                self.chaos.writer_delay_us_per_row / 1000,
            ),
        ]
    }
}
