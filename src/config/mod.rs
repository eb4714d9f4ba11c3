//! Daemon configuration: TOML in `config/`, every field documented, unknown
//! keys refused, and `TICKLAKE_<SECTION>__<KEY>` environment overrides.
//! Validation does no IO; connectivity is checked when the daemon starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub mod catalog;
mod dedup;
mod feeds;
mod s3;
pub mod sizing;
mod validate;

pub use dedup::{DEFAULT_FALSE_POSITIVE_RATE, DedupConfig, DedupConfigError};
pub use feeds::{FeedConfig, FeedsConfig, ProtocolKind};
pub use s3::{S3Config, WarehouseUrl, WarehouseUrlError};

/// A config problem, always naming the key and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("config error: key `{key}` in {source_name}: {reason}")]
    Key {
        key: String,
        source_name: String,
        reason: String,
    },
}

/// Top level of `config/ticklake.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the Iceberg catalog, the warehouse, the schema registry
    /// and the spill log. Relative paths are taken from the working directory.
    pub data_dir: PathBuf,
    pub kafka: KafkaConfig,
    /// Left out of the serialized defaults: figment would merge the default
    /// Binance feed into a file's own `[feeds.*]`; a missing `feeds` takes
    /// the default through `serde(default)` instead.
    #[serde(skip_serializing)]
    pub feeds: FeedsConfig,
    pub lake: LakeConfig,
    pub writer: WriterConfig,
    pub http: HttpConfig,
    /// Symbol patterns and priority tiers per exchange (see
    /// `config/instruments.toml`). Empty: the file built into the binary,
    /// which is that file's contents.
    pub instruments_file: String,
    pub lanes: LanesConfig,
    pub degradation: crate::degrade::level::DegradationConfig,
    pub breaker: BreakersConfig,
    pub spill: SpillConfig,
    pub supervision: SupervisionConfig,
    pub chaos: ChaosConfig,
    pub tail: TailConfig,
    pub api: ApiConfig,
    pub maintenance: MaintenanceConfig,
    pub dedup: DedupConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            kafka: KafkaConfig::default(),
            feeds: FeedsConfig::default(),
            lake: LakeConfig::default(),
            writer: WriterConfig::default(),
            http: HttpConfig::default(),
            instruments_file: String::new(),
            lanes: LanesConfig::default(),
            degradation: crate::degrade::level::DegradationConfig::default(),
            breaker: BreakersConfig::default(),
            spill: SpillConfig::default(),
            supervision: SupervisionConfig::default(),
            chaos: ChaosConfig::default(),
            tail: TailConfig::default(),
            api: ApiConfig::default(),
            maintenance: MaintenanceConfig::default(),
            dedup: DedupConfig::default(),
        }
    }
}

/// `[kafka]`: the broker and topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `embedded` starts librdkafka's in-process cluster (no setup; data is
    /// gone when the daemon stops, the lake keeps what was committed).
    /// Otherwise a bootstrap list such as `127.0.0.1:9092`.
    pub brokers: String,
    /// Partitions of each topic on the embedded cluster.
    pub embedded_partitions: i32,
    /// Trades topics are `<trades_topic_prefix>.<exchange in lower case>`.
    pub trades_topic_prefix: String,
    /// Topic for frames that failed to parse, on their way to `dead_letters`.
    pub dead_letter_topic: String,
    /// Consumer group of the lake writer; offsets are committed here after
    /// each Iceberg commit so lag tools see real lag.
    pub consumer_group: String,
    /// How the lake consumer gets its partitions: `all` reads every
    /// partition (one daemon per table); `group` joins `consumer_group` and
    /// shares the partitions with the other daemons in it, which write the
    /// same table (see the README, "Beyond one machine").
    pub assignment: Assignment,
    /// With `assignment = group`: seconds a partition may have records
    /// waiting while nobody commits it before this daemon rejoins the group
    /// so that it is assigned again.
    pub group_orphan_secs: u64,
    /// Producer compression: `auto` (the default: none on the embedded
    /// cluster, lz4 on a real broker), none, gzip, snappy or lz4.
    pub compression: String,
    /// Producer batching delay in milliseconds.
    pub linger_ms: u32,
    /// Extra librdkafka properties for producer and consumer (security etc.).
    pub properties: BTreeMap<String, String>,
    /// A Confluent-compatible Schema Registry (`http(s)://host:port`, with
    /// a path prefix if it has one) that assigns the schema ids. Empty: the
    /// local file in the data directory, which the daemon serves itself
    /// under `/schema-registry` on `http.listen`.
    pub schema_registry_url: String,
    /// Basic-auth user for `schema_registry_url`; empty for none.
    pub schema_registry_user: String,
    /// Basic-auth password for `schema_registry_url`.
    pub schema_registry_password: String,
    /// Further topics the embedded cluster creates at start, with the same
    /// partition count (`ticklake bench`'s ceilings); not a config key.
    #[serde(skip)]
    pub extra_topics: Vec<String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "embedded".into(),
            embedded_partitions: 3,
            trades_topic_prefix: "market.crypto.trades".into(),
            dead_letter_topic: "market.dead_letters".into(),
            consumer_group: "ticklake-lake".into(),
            assignment: Assignment::All,
            group_orphan_secs: 30,
            compression: "auto".into(),
            linger_ms: 5,
            properties: BTreeMap::new(),
            schema_registry_url: String::new(),
            schema_registry_user: String::new(),
            schema_registry_password: String::new(),
            extra_topics: Vec::new(),
        }
    }
}

/// `kafka.assignment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Assignment {
    /// Every partition of every topic, assigned by this daemon.
    All,
    /// The consumer group's share, rebalanced as daemons come and go.
    Group,
}

impl KafkaConfig {
    pub fn is_embedded(&self) -> bool {
        self.brokers == "embedded"
    }

    /// The producer's `compression.type`. `auto` compresses only for a real
    /// broker: the embedded cluster is in this process, so compressing
    /// saves no network or disk, and lz4's compression on librdkafka's
    /// broker threads was 3 % of the process's CPU in a profile of
    /// `ticklake bench` (the window counts records at their uncompressed
    /// size, so the cluster's per-partition limit holds either way).
    pub fn compression_type(&self) -> &str {
        match self.compression.as_str() {
            "auto" if self.is_embedded() => "none",
            "auto" => "lz4",
            named => named,
        }
    }

    pub fn trades_topic(&self, exchange: &str) -> String {
        format!(
            "{}.{}",
            self.trades_topic_prefix,
            exchange.to_ascii_lowercase()
        )
    }
}

/// `[lake]`: the Iceberg catalog and warehouse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// Catalog kind: `sql` (SQLite or PostgreSQL, by `catalog_uri`) or
    /// `rest` (an Iceberg REST catalog server at `catalog_uri`).
    pub catalog: CatalogKind,
    /// Catalog name recorded in the SQL catalog's tables (readers use it too).
    pub catalog_name: String,
    /// Catalog URI. `sql`: `sqlite:…` or `postgres://…`; empty means
    /// `sqlite:<data_dir>/catalog.db?mode=rwc`. `rest`: the server's base
    /// URL, required.
    pub catalog_uri: String,
    /// Further properties handed to the catalog as they are. `sql`: only
    /// `pool.max-connections`, `pool.idle-timeout` (seconds) and
    /// `pool.test-before-acquire`. `rest`: e.g. `credential`, `token`,
    /// `oauth2-server-uri`, `scope`, `prefix`.
    pub catalog_properties: BTreeMap<String, String>,
    /// Warehouse location. Empty means `file://<data_dir>/warehouse`.
    /// `s3://bucket/prefix` puts the lake in object storage (`[lake.s3]`).
    /// With a REST catalog, where the server puts the tables: the daemon's
    /// storage client is built for it.
    pub warehouse: String,
    /// `rest` only: the warehouse asked of the server (`/v1/config`'s
    /// `warehouse`), which servers such as Polaris and Lakekeeper name
    /// rather than locate. Empty means `warehouse`, when that is set.
    pub catalog_warehouse: String,
    /// Iceberg namespace of the tables.
    pub namespace: String,
    /// Keep minute bars (`market.ohlcv_1m`) as trades commit, and answer
    /// `/v1/ohlcv` from them (`lake::bars`).
    pub bars: bool,
    /// The client of an `s3://` warehouse.
    pub s3: S3Config,
}

impl Default for LakeConfig {
    fn default() -> Self {
        Self {
            catalog: CatalogKind::Sql,
            catalog_name: "ticklake".into(),
            catalog_uri: String::new(),
            catalog_properties: BTreeMap::new(),
            warehouse: String::new(),
            catalog_warehouse: String::new(),
            namespace: "market".into(),
            bars: true,
            s3: S3Config::default(),
        }
    }
}

/// `lake.catalog`: which Iceberg catalog client the daemon uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogKind {
    /// iceberg-catalog-sql: SQLite or PostgreSQL (Iceberg's JDBC catalog).
    Sql,
    /// iceberg-catalog-rest: a server speaking Iceberg's REST protocol.
    Rest,
}

/// `[writer]`: when buffered rows become an Iceberg commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// Flush when this many rows are buffered.
    pub max_rows: usize,
    /// Flush when the oldest buffered row is this old (milliseconds).
    pub max_age_ms: u64,
    /// Target Parquet file size in bytes before a file rolls over.
    pub target_file_size_bytes: usize,
    /// Message ids of committed trades the writer remembers, to store a
    /// record that reached Kafka twice only once.
    pub dedup_capacity: usize,
    /// At start, the ids of trades ingested in this many seconds before are
    /// read back from the table into that memory.
    pub dedup_window_secs: u64,
    /// Run the consumer and the writers. Off, the daemon publishes its
    /// feeds to Kafka and stores nothing: the hot standby beside a daemon
    /// that writes (with `dedup.redis_url`, so they publish each trade once).
    pub enabled: bool,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_rows: 100_000,
            max_age_ms: 5_000,
            target_file_size_bytes: 128 << 20,
            dedup_capacity: 4_000_000,
            dedup_window_secs: 900,
            enabled: true,
        }
    }
}

/// `[http]`: status, metrics, health and the query API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve `/status`, `/metrics`, `/healthz`, `/readyz`, the `/v1` query
    /// API and `/openapi.json`.
    pub enabled: bool,
    /// Listen address; loopback by default so nothing is exposed by accident.
    pub listen: String,
    /// Host names a request may carry in its Host header besides IP
    /// literals and `localhost` (e.g. the name a proxy or a scraper uses).
    /// Any other name is refused with 421, so a web page cannot reach the
    /// API by rebinding its own domain to this address.
    pub allowed_hosts: Vec<String>,
    /// Open connections per HTTP worker (there are two); more wait in the
    /// listen backlog.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9464".into(),
            allowed_hosts: Vec::new(),
            max_connections: 256,
        }
    }
}

/// `[lanes]`: the producer's two-lane mailbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LanesConfig {
    /// Capacity of the data lanes of tier 1, 2 and 3 (records). A full lane
    /// blocks the feed that sends on it: that is the backpressure.
    pub capacity: [usize; 3],
}

impl Default for LanesConfig {
    fn default() -> Self {
        Self {
            capacity: [8192, 8192, 8192],
        }
    }
}

/// `[breaker.producer]` and `[breaker.commit]`: the circuit breakers around
/// the broker produce path and the Iceberg commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakersConfig {
    /// Records waiting for the broker with no delivery for this long count
    /// as one failure per check (every 50 ms).
    pub stall_ms: u64,
    pub producer: crate::degrade::breaker::BreakerConfig,
    pub commit: crate::degrade::breaker::BreakerConfig,
}

impl Default for BreakersConfig {
    fn default() -> Self {
        Self {
            stall_ms: 2_000,
            producer: crate::degrade::breaker::BreakerConfig::default(),
            commit: crate::degrade::breaker::BreakerConfig::default(),
        }
    }
}

/// `[spill]`: the on-disk log that takes records the broker cannot (breaker
/// open) or should not (AGGRESSIVE) take now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpillConfig {
    /// Directory of the log. Empty: `<data_dir>/spill`.
    pub dir: String,
    /// Segment size (bytes) at which the log rolls to a new file.
    pub segment_bytes: u64,
    /// Records replayed per step (every 50 ms) once the log may drain, so a
    /// replay never starves live traffic.
    pub replay_batch: usize,
}

impl Default for SpillConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            segment_bytes: 64 << 20,
            replay_batch: 2_000,
        }
    }
}

/// `[supervision]`: restarts and the progress watchdog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// An actor with work waiting and no progress for this long is restarted.
    pub watchdog_secs: u64,
    /// First restart delay (ms); doubles per restart, with jitter.
    pub restart_backoff_initial_ms: u64,
    /// Cap of the restart delay (ms).
    pub restart_backoff_max_ms: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            watchdog_secs: 60,
            restart_backoff_initial_ms: 500,
            restart_backoff_max_ms: 30_000,
        }
    }
}

/// `[chaos]`: faults injected on purpose, for demos and overload tests.
/// All off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ChaosConfig {
    /// Extra time the Iceberg writer spends per committed row
    /// (microseconds), as a slow object store would.
    pub writer_delay_us_per_row: u64,
    /// The first this many commits of `market.trades` fail permanently, as
    /// a broken catalog would; the writer rewinds to its last snapshot and
    /// the consumer re-reads from there.
    pub fail_trade_commits: u32,
    /// Serve `/chaos/*` on `http.listen`: take the embedded broker down
    /// and up, add round-trip time, and change the two faults above at run
    /// time (`ticklake chaos`). Off by default: anyone who reaches the
    /// endpoint could stop the pipeline.
    pub admin: bool,
    /// A range of records the consumer acts as if the broker had deleted
    /// before it read them (what an eviction or retention does), to show
    /// that the loss is detected and reported. Off while `count` is 0.
    pub lose: LoseRecords,
}

/// `[chaos.lose]`: offsets `from .. from + count` of one partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoseRecords {
    /// Empty: the trades topic of the first feed's exchange, in name order.
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub count: i64,
}

/// `[tail]`: the uncommitted trades held in memory for hybrid queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailConfig {
    /// Rows the tail holds before it asks the trades writer to commit early
    /// (which lets it drop them). Rows are never dropped otherwise, so this
    /// bounds memory only as long as commits succeed.
    pub max_rows: usize,
}

impl Default for TailConfig {
    fn default() -> Self {
        Self { max_rows: 200_000 }
    }
}

/// `[api]`: limits of the `/v1` query API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Most rows one answer carries: `/v1/sql` results are cut here (and
    /// marked truncated), `/v1/trades` pages and OHLCV bar counts are capped.
    pub max_rows: usize,
    /// Page size of `/v1/trades` when the request gives no `limit`.
    pub default_limit: usize,
    /// Wall-time limit of one query in milliseconds; past it the API
    /// answers 504 at once, and the query stops at its next phase or batch,
    /// holding its `max_concurrent` slot until it has.
    pub timeout_ms: u64,
    /// Memory one query engine may use for sorts, joins and aggregations,
    /// for the results of the functions that size them from an argument
    /// (`query::limits`), and for the answers it builds (the result rows
    /// it holds and their JSON text, until sent), in bytes, shared by the
    /// queries running at once; a query that needs more fails (507)
    /// instead of growing the daemon.
    pub max_memory_bytes: usize,
    /// Queries that may run at once; one more is answered 429 at once
    /// instead of queuing behind them.
    pub max_concurrent: usize,
    /// Run each `POST /v1/sql` statement in a worker process of its own
    /// (`ticklake sql-worker`), so that no statement can end the daemon:
    /// DataFusion's operators copy values without asking the memory pool
    /// (a cross join repeats a value into every row of a batch), and an
    /// allocation that fails aborts the whole process. The `/v1` endpoints
    /// with a fixed shape run in the daemon.
    pub sql_isolation: bool,
    /// Address space one SQL worker process may map, in bytes. An
    /// allocation past it fails and ends that worker alone; the query is
    /// answered 507. Counts the binary, stacks and allocator reservations
    /// besides the query's data, so keep it well above `max_memory_bytes`.
    pub sql_worker_memory_bytes: u64,
    /// Memory for the lake's rows of the windows `/v1/trades/recent` was
    /// asked for, kept decoded between pages and carried to each new
    /// snapshot by reading only the files it added, in bytes; 0 reads the
    /// lake at every page. One window may take a quarter of it.
    pub recent_cache_bytes: usize,
    /// Disk one query engine (each SQL worker, and the daemon's own) may
    /// fill with the data of sorts, joins and aggregations that outgrow
    /// `max_memory_bytes`, in bytes, under `<data_dir>/query-spill`; a
    /// query that needs more fails (507). 0: no spilling, such a query
    /// fails at the memory limit.
    pub max_spill_bytes: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_rows: 10_000,
            default_limit: 1_000,
            timeout_ms: 10_000,
            max_memory_bytes: 1 << 30,
            max_concurrent: 8,
            sql_isolation: true,
            sql_worker_memory_bytes: 4 << 30,
            recent_cache_bytes: 64 << 20,
            max_spill_bytes: 4 << 30,
        }
    }
}

/// The least `maintenance.orphan_min_age`: six times the age at which a
/// writer writes its files again for a commit that keeps failing
/// (`lake::orphans::WRITTEN_MAX_AGE`), so a commit attempt begun with files
/// just under that age has most of an hour to finish before they could be
/// taken for orphans.
pub const ORPHAN_MIN_AGE_FLOOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// `[maintenance]`: what the daemon does to keep its tables small
/// (`lake::maintain`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Whether the daemon runs maintenance on a schedule.
    pub enabled: bool,
    /// Seconds between runs; the first runs this long after the start.
    pub interval_secs: u64,
    /// Snapshots older than this are expired (`1h`, `30m`, `7d`): time
    /// travel reaches this far back. The current snapshot and the newest
    /// one carrying Kafka offsets are always kept.
    pub snapshot_retention: String,
    /// Whether runs also compact: the small files of each partition,
    /// rewritten sorted into files of `writer.target_file_size_bytes` in
    /// one `replace` commit (`lake::compact`), on every catalog kind (a
    /// REST catalog's commit goes to its server: `lake::rest_commit`).
    pub compact: bool,
    /// Fewest small files of one partition worth a rewrite.
    pub compact_min_files: usize,
    /// Files added more recently than this are left alone: the writers
    /// may still add to their time range (`10m`, `1h`).
    pub compact_min_age: String,
    /// Day partitions older than this many days are dropped from the
    /// tables (a `delete` commit; the files go when the snapshots that
    /// read them expire). 0 keeps everything.
    pub retention_days: u32,
    /// How long a run's lease lasts unless renewed (`5m`): daemons sharing
    /// a SQL catalog maintain one at a time (`lake::lease`), and a daemon
    /// that died holding the lease blocks the others this long at most.
    /// Renewed between tables, so it must outlast one table's compaction.
    pub lease_ttl: String,
    /// Whether runs also delete orphan files: Parquet and Avro files under
    /// a table's location that no snapshot references, left by writes
    /// that never committed (`lake::orphans`).
    pub orphan_sweep: bool,
    /// Unreferenced files younger than this are left (`3d`; at least
    /// `1h`): a write of any daemon may be about to commit them.
    pub orphan_min_age: String,
    /// Least time between two sweeps of a table by this daemon (`1d`): a
    /// sweep lists the table's location and reads every manifest.
    pub orphan_sweep_interval: String,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 600,
            snapshot_retention: "1h".into(),
            compact: true,
            compact_min_files: 8,
            compact_min_age: "10m".into(),
            retention_days: 0,
            lease_ttl: "10m".into(),
            orphan_sweep: true,
            orphan_min_age: "3d".into(),
            orphan_sweep_interval: "1d".into(),
        }
    }
}

impl MaintenanceConfig {
    /// `lease_ttl` as a duration; `validate` has checked it.
    pub fn lease_ttl(&self) -> std::time::Duration {
        humantime::parse_duration(&self.lease_ttl).unwrap_or(std::time::Duration::from_secs(600))
    }

    /// `snapshot_retention` as a duration; `validate` has checked it.
    pub fn retention(&self) -> std::time::Duration {
        humantime::parse_duration(&self.snapshot_retention)
            .unwrap_or(std::time::Duration::from_secs(3600))
    }

    /// `orphan_min_age` and `orphan_sweep_interval` as durations when
    /// sweeps are on; `validate` has checked them.
    pub fn orphans(&self) -> Option<(std::time::Duration, std::time::Duration)> {
        let d = |s: &str| humantime::parse_duration(s).ok();
        self.orphan_sweep
            .then(|| Some((d(&self.orphan_min_age)?, d(&self.orphan_sweep_interval)?)))
            .flatten()
    }

    /// `compact_min_age` as a duration; `validate` has checked it.
    pub fn compact_min_age(&self) -> std::time::Duration {
        humantime::parse_duration(&self.compact_min_age)
            .unwrap_or(std::time::Duration::from_secs(600))
    }
}

/// Environment variables under this prefix override config keys.
pub const ENV_PREFIX: &str = "TICKLAKE_";

impl Config {
    /// Loads defaults, then the file (when given), then `TICKLAKE_*` env vars,
    /// and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Missing(f.to_path_buf()));
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        // TICKLAKE_TEST_* belongs to the test harness and TICKLAKE_LOG and
        // TICKLAKE_CONFIG to the CLI; none of them are config keys.
        fig = fig.merge(Env::prefixed(ENV_PREFIX).split("__").filter(|k| {
            // keys arrive in the variable's own case
            let k = k.as_str().to_ascii_lowercase();
            !k.starts_with("test_") && k != "log" && k != "config"
        }));
        let mut cfg: Config = fig.extract().map_err(|e| from_figment(e, file))?;
        cfg.feeds
            .resolve()
            .map_err(|(key, reason)| ConfigError::Key {
                source_name: source_of(&fig, &key, file),
                key,
                reason,
            })?;
        cfg.validate(&fig, file)?;
        Ok(cfg)
    }

    /// This config with every file under `dir`: the data directory, and
    /// the catalog and warehouse derived from it (an explicit
    /// `lake.catalog_uri` or `lake.warehouse` is dropped). For benchmarks
    /// and tests that need a lake of their own.
    pub fn under(&self, dir: &Path) -> Config {
        let mut c = self.clone();
        c.data_dir = dir.to_path_buf();
        c.lake.catalog_uri = String::new();
        c.lake.warehouse = String::new();
        c
    }

    /// The data directory as an absolute path.
    pub fn data_dir_abs(&self) -> PathBuf {
        if self.data_dir.is_absolute() {
            self.data_dir.clone()
        } else {
            std::env::current_dir()
                .map(|d| d.join(&self.data_dir))
                .unwrap_or_else(|_| self.data_dir.clone())
        }
    }

    /// Directory of the spill log.
    pub fn spill_dir(&self) -> PathBuf {
        if self.spill.dir.is_empty() {
            self.data_dir_abs().join("spill")
        } else {
            PathBuf::from(&self.spill.dir)
        }
    }

    /// The instruments (symbol patterns and tiers): the configured file,
    /// else the built-in defaults.
    pub fn instruments(
        &self,
    ) -> Result<crate::instruments::Instruments, crate::instruments::InstrumentsError> {
        if self.instruments_file.is_empty() {
            crate::instruments::Instruments::builtin()
        } else {
            crate::instruments::Instruments::load(Path::new(&self.instruments_file))
        }
    }

    pub fn catalog_uri(&self) -> String {
        if self.lake.catalog_uri.is_empty() {
            format!(
                "sqlite:{}/catalog.db?mode=rwc",
                self.data_dir_abs().display()
            )
        } else {
            self.lake.catalog_uri.clone()
        }
    }

    /// The warehouse asked of a REST catalog server, if any:
    /// `lake.catalog_warehouse`, else `lake.warehouse` when set.
    pub fn catalog_warehouse(&self) -> Option<String> {
        [&self.lake.catalog_warehouse, &self.lake.warehouse]
            .into_iter()
            .find(|w| !w.is_empty())
            .cloned()
    }

    pub fn warehouse(&self) -> String {
        if self.lake.warehouse.is_empty() {
            format!("file://{}/warehouse", self.data_dir_abs().display())
        } else {
            self.lake.warehouse.clone()
        }
    }

    /// [`Self::warehouse`] where the daemon has one: always with the SQL
    /// catalog; behind a REST catalog only when `lake.warehouse` is set,
    /// since the server places every table and the default directory
    /// under `data_dir` would stay empty.
    pub fn own_warehouse(&self) -> Option<String> {
        (self.lake.catalog != CatalogKind::Rest || !self.lake.warehouse.is_empty())
            .then(|| self.warehouse())
    }
}

/// The environment variable that sets `key` (figment's own rendering does
/// not know about the `__` split).
fn env_var_name(key: &str) -> String {
    // array indexes (`streams.0`) are part of the value, not the name
    let name: Vec<String> = key
        .split('.')
        .filter(|p| !p.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_ascii_uppercase)
        .collect();
    format!("environment variable {ENV_PREFIX}{}", name.join("__"))
}

/// Where a key's value came from: the file, an env var, or the defaults.
fn source_of(fig: &Figment, key: &str, file: Option<&Path>) -> String {
    match fig.find_metadata(key) {
        Some(md) => match &md.source {
            Some(figment::Source::File(p)) => p.display().to_string(),
            _ if md.name.contains("environment") => env_var_name(key),
            _ => file
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "built-in defaults".into()),
        },
        None => file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "built-in defaults".into()),
    }
}

fn from_figment(e: figment::Error, file: Option<&Path>) -> ConfigError {
    let mut key = e.path.join(".");
    // figment's path of an unknown field sometimes ends with the field
    // already: `[lake] data_dir` was named `lake.data_dir.data_dir`.
    if let figment::error::Kind::UnknownField(field, _) = &e.kind
        && e.path.last() != Some(field)
    {
        key = if key.is_empty() {
            field.clone()
        } else {
            format!("{key}.{field}")
        };
    }
    let source_name = match e.metadata.as_ref() {
        Some(md) => match &md.source {
            Some(figment::Source::File(p)) => p.display().to_string(),
            _ if md.name.contains("environment") => env_var_name(&key),
            _ => md.name.to_string(),
        },
        None => file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "configuration".into()),
    };
    ConfigError::Key {
        key,
        source_name,
        reason: e.kind.to_string(),
    }
}

// figment's `Jail` fixes the closure's error type to its own large error.
#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Every test that loads config runs inside a figment `Jail`: jails are
    /// serialized, so one test's environment variables never leak into
    /// another's load.
    fn jailed(f: impl FnOnce()) {
        figment::Jail::expect_with(|_| {
            f();
            Ok(())
        });
    }

    fn write(body: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(body.as_bytes()).unwrap();
        f
    }

    #[test]
    fn shipped_config_matches_the_built_in_defaults() {
        jailed(|| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ticklake.toml");
            let cfg = Config::load(Some(&path)).unwrap();
            assert_eq!(cfg, Config::default());
        });
    }

    #[test]
    fn compression_outside_the_list_names_the_key() {
        jailed(|| {
            let f = write("[kafka]\ncompression = \"zip\"\n");
            let e = Config::load(Some(f.path())).unwrap_err().to_string();
            assert!(e.contains("kafka.compression") && e.contains("zip"), "{e}");
            for ok in ["auto", "none", "lz4"] {
                let f = write(&format!("[kafka]\ncompression = \"{ok}\"\n"));
                assert_eq!(Config::load(Some(f.path())).unwrap().kafka.compression, ok);
            }
        });
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        jailed(|| {
            let f = write("[kafka]\nbrokerz = \"x\"\n");
            let e = Config::load(Some(f.path())).unwrap_err().to_string();
            assert!(e.contains("key `kafka.brokerz` in"), "{e}");
            assert!(e.contains(&f.path().display().to_string()), "{e}");
            // A top-level key put under a section.
            let f = write("[lake]\ndata_dir = \"x\"\n");
            let e = Config::load(Some(f.path())).unwrap_err().to_string();
            assert!(e.contains("key `lake.data_dir` in"), "{e}");
        });
    }

    #[test]
    fn wrong_type_names_key_and_file() {
        jailed(|| {
            let f = write("[writer]\nmax_rows = \"many\"\n");
            let e = Config::load(Some(f.path())).unwrap_err().to_string();
            assert!(e.contains("writer.max_rows"), "{e}");
            assert!(e.contains(&f.path().display().to_string()), "{e}");
        });
    }

    #[test]
    fn bad_value_names_key_and_file() {
        jailed(|| {
            let f = write("[feeds.binance]\nurl = \"http://example.com\"\n");
            let e = Config::load(Some(f.path())).unwrap_err().to_string();
            assert!(e.contains("feeds.binance.url"), "{e}");
            assert!(e.contains(&f.path().display().to_string()), "{e}");
            let f = write("[feeds.binance]\nstreams = [\"depth\"]\n");
            let e = Config::load(Some(f.path())).unwrap_err().to_string();
            assert!(e.contains("feeds.binance.channels"), "{e}");
            assert!(e.contains("trade, aggTrade"), "{e}");
        });
    }

    #[test]
    fn schema_registry_keys_are_checked_without_io() {
        jailed(|| {
            let f = write("[kafka]\nschema_registry_url = \"ftp://registry\"\n");
            let e = Config::load(Some(f.path())).unwrap_err().to_string();
            assert!(e.contains("kafka.schema_registry_url"), "{e}");
            assert!(e.contains(&f.path().display().to_string()), "{e}");
            let f = write("[kafka]\nschema_registry_user = \"u\"\n");
            let e = Config::load(Some(f.path())).unwrap_err().to_string();
            assert!(e.contains("kafka.schema_registry_user"), "{e}");
            assert!(e.contains("needs kafka.schema_registry_url"), "{e}");
            // Nobody listens there; a config check does no IO, so it loads.
            let f = write(
                "[kafka]\nschema_registry_url = \"http://127.0.0.1:1/sr\"\nschema_registry_user = \"u\"\nschema_registry_password = \"p\"\n",
            );
            let cfg = Config::load(Some(f.path())).unwrap();
            assert_eq!(cfg.kafka.schema_registry_url, "http://127.0.0.1:1/sr");
        });
    }

    /// A file that names feeds runs exactly those, each with its
    /// protocol's defaults; the protocol comes from the name when left out.
    #[test]
    fn the_catalog_kind_and_its_uri_are_checked() {
        jailed(|| {
            let cfg = Config::load(None).unwrap();
            assert_eq!(cfg.lake.catalog, CatalogKind::Sql);
            let f = write(
                "[lake]\ncatalog = \"rest\"\ncatalog_uri = \"https://cat.example:8181/api\"\n\
                 catalog_properties = { credential = \"id:secret\", scope = \"PRINCIPAL_ROLE:ALL\" }\n",
            );
            let cfg = Config::load(Some(f.path())).unwrap();
            assert_eq!(cfg.lake.catalog, CatalogKind::Rest);
            assert_eq!(cfg.lake.catalog_properties["credential"], "id:secret");
            assert_eq!(cfg.catalog_warehouse(), None);
            // A named warehouse for the server, a bucket for the storage.
            let f = write(
                "[lake]\ncatalog = \"rest\"\ncatalog_uri = \"https://cat.example:8181/api\"\n\
                 warehouse = \"s3://lake-bucket/tables\"\ncatalog_warehouse = \"analytics\"\n",
            );
            let cfg = Config::load(Some(f.path())).unwrap();
            assert_eq!(cfg.catalog_warehouse().as_deref(), Some("analytics"));
            assert_eq!(cfg.warehouse(), "s3://lake-bucket/tables");
            let f = write(
                "[lake]\ncatalog = \"rest\"\ncatalog_uri = \"https://cat.example:8181/api\"\n\
                 warehouse = \"s3://lake-bucket/tables\"\n",
            );
            let cfg = Config::load(Some(f.path())).unwrap();
            assert_eq!(
                cfg.catalog_warehouse().as_deref(),
                Some("s3://lake-bucket/tables")
            );
            let f = write(
                "[lake]\ncatalog_uri = \"postgres://u:pw@db:5432/lake\"\n\
                 catalog_properties = { \"pool.max-connections\" = \"4\" }\n",
            );
            Config::load(Some(f.path())).unwrap();
            for (body, key, says) in [
                ("catalog = \"hive\"", "lake.catalog", "hive"),
                ("catalog = \"rest\"", "lake.catalog_uri", "http(s)"),
                (
                    "catalog = \"rest\"\ncatalog_uri = \"ftp://x\"",
                    "lake.catalog_uri",
                    "not http or https",
                ),
                (
                    "catalog_uri = \"mysql://u:secret@db/lake\"",
                    "lake.catalog_uri",
                    "neither sqlite",
                ),
                (
                    "catalog_properties = { \"pool.max-connections\" = \"many\" }",
                    "lake.catalog_properties.pool.max-connections",
                    "not a valid value",
                ),
                (
                    "catalog_properties = { token = \"t\" }",
                    "lake.catalog_properties.token",
                    "only pool.",
                ),
                (
                    "catalog = \"rest\"\ncatalog_uri = \"http://x\"\ncatalog_properties = { uri = \"http://y\" }",
                    "lake.catalog_properties.uri",
                    "lake.catalog_uri instead",
                ),
                (
                    "catalog = \"rest\"\ncatalog_uri = \"http://x\"\ncatalog_properties = { warehouse = \"w\" }",
                    "lake.catalog_properties.warehouse",
                    "lake.catalog_warehouse instead",
                ),
                (
                    "catalog_warehouse = \"analytics\"",
                    "lake.catalog_warehouse",
                    "REST catalog",
                ),
                (
                    "catalog = \"rest\"\ncatalog_uri = \"http://x\"\n\
                     catalog_properties = { \"rest.sigv4-enabled\" = \"yes\" }",
                    "lake.catalog_properties.\"rest.sigv4-enabled\"",
                    "neither \"true\" nor \"false\"",
                ),
                (
                    "catalog = \"rest\"\ncatalog_uri = \"http://x\"\n\
                     catalog_properties = { \"rest.signing-name\" = \"glue\" }",
                    "lake.catalog_properties.\"rest.signing-name\"",
                    "no effect unless rest.sigv4-enabled",
                ),
                (
                    "catalog = \"rest\"\ncatalog_uri = \"http://x\"\n\
                     catalog_properties = { \"rest.sigv4-enabled\" = \"true\", token = \"t\" }",
                    "lake.catalog_properties.\"rest.sigv4-enabled\"",
                    "cannot be combined with token",
                ),
                (
                    "catalog = \"rest\"\ncatalog_uri = \"http://x\"\n\
                     catalog_properties = { \"rest.sigv4-enabled\" = \"true\", \
                     \"rest.access-key-id\" = \"AKID\" }",
                    "lake.catalog_properties.\"rest.secret-access-key\"",
                    "is needed with rest.access-key-id",
                ),
                (
                    "catalog = \"rest\"\ncatalog_uri = \"http://x\"\n\
                     catalog_properties = { \"rest.sigv4-enabled\" = \"true\", \
                     \"rest.secret-access-key\" = \"hidden\" }",
                    "lake.catalog_properties.\"rest.access-key-id\"",
                    "is needed with",
                ),
                (
                    "catalog = \"rest\"\ncatalog_uri = \"http://x\"\n\
                     catalog_properties = { \"rest.sigv4-enabled\" = \"true\", \
                     \"rest.signing-region\" = \" \" }",
                    "lake.catalog_properties.\"rest.signing-region\"",
                    "must not be empty",
                ),
            ] {
                let f = write(&format!("[lake]\n{body}\n"));
                let e = Config::load(Some(f.path())).unwrap_err().to_string();
                assert!(e.contains(key) && e.contains(says), "{body}: {e}");
                assert!(e.contains(&f.path().display().to_string()), "{e}");
                // The table's two secrets: a URI's password, a secret key.
                assert!(
                    !e.contains(":secret@") && !e.contains("hidden"),
                    "a secret in an error: {e}"
                );
            }
            let f = write("[maintenance]\nlease_ttl = \"soon\"\n");
            let e = Config::load(Some(f.path())).unwrap_err().to_string();
            assert!(e.contains("maintenance.lease_ttl"), "{e}");
            let f = write("[maintenance]\nlease_ttl = \"0s\"\n");
            let e = Config::load(Some(f.path())).unwrap_err().to_string();
            assert!(e.contains("maintenance.lease_ttl"), "{e}");
            for (body, key, says) in [
                (
                    "orphan_min_age = \"30m\"",
                    "maintenance.orphan_min_age",
                    "at least 1h",
                ),
                (
                    "orphan_min_age = \"later\"",
                    "maintenance.orphan_min_age",
                    "not a duration",
                ),
                (
                    "orphan_sweep_interval = \"0s\"",
                    "maintenance.orphan_sweep_interval",
                    "at least 1m",
                ),
            ] {
                let f = write(&format!("[maintenance]\n{body}\n"));
                let e = Config::load(Some(f.path())).unwrap_err().to_string();
                assert!(e.contains(key) && e.contains(says), "{body}: {e}");
                assert!(e.contains(&f.path().display().to_string()), "{e}");
            }
            // Off, the two durations are still checked, but not used.
            let f = write("[maintenance]\norphan_sweep = false\norphan_min_age = \"2h\"\n");
            assert_eq!(
                Config::load(Some(f.path())).unwrap().maintenance.orphans(),
                None
            );
            let f = write("[maintenance]\norphan_min_age = \"2h\"\n");
            assert_eq!(
                Config::load(Some(f.path())).unwrap().maintenance.orphans(),
                Some((
                    std::time::Duration::from_secs(7200),
                    std::time::Duration::from_secs(86_400)
                ))
            );
        });
    }

    #[test]
    fn feeds_are_named_tables_with_their_protocols_defaults() {
        jailed(|| {
            let cfg = Config::load(None).unwrap();
            assert_eq!(cfg.feeds.keys().collect::<Vec<_>>(), ["binance"]);
            let f = write(
                "[feeds.kraken]\n\
                 [feeds.binance_us]\n\
                 [feeds.coinbase]\nsymbols = [\"ETH-USD\"]\n\
                 [feeds.cb_legacy]\nprotocol = \"coinbase_exchange\"\nexchange = \"COINBASE_EX\"\n",
            );
            let cfg = Config::load(Some(f.path())).unwrap();
            assert_eq!(
                cfg.feeds.keys().collect::<Vec<_>>(),
                ["binance_us", "cb_legacy", "coinbase", "kraken"],
                "the default Binance feed is not merged into a file's own feeds"
            );
            let k = &cfg.feeds["kraken"];
            assert_eq!(k.protocol(), ProtocolKind::Kraken);
            assert_eq!(
                (k.exchange.as_str(), k.url.as_str()),
                ("KRAKEN", "wss://ws.kraken.com/v2")
            );
            assert_eq!(k.channels, ["trade"]);
            let us = &cfg.feeds["binance_us"];
            assert_eq!(us.protocol(), ProtocolKind::Binance);
            assert_eq!(
                (us.exchange.as_str(), us.url.as_str()),
                ("BINANCE_US", "wss://stream.binance.us:9443")
            );
            let cb = &cfg.feeds["coinbase"];
            assert_eq!(cb.symbols, ["ETH-USD"]);
            assert_eq!(cb.channels, ["market_trades"]);
            let legacy = &cfg.feeds["cb_legacy"];
            assert_eq!(legacy.protocol(), ProtocolKind::CoinbaseExchange);
            assert_eq!(legacy.exchange, "COINBASE_EX");
            assert_eq!(legacy.url, "wss://ws-feed.exchange.coinbase.com");
        });
    }

    #[test]
    fn a_feed_error_names_the_feeds_key() {
        jailed(|| {
            for (text, key, says) in [
                ("[feeds.mine]\n", "feeds.mine.protocol", "names no protocol"),
                (
                    "[feeds.kraken]\nchannels = [\"book\"]\n",
                    "feeds.kraken.channels",
                    "not a trade channel of protocol kraken",
                ),
                (
                    "[feeds.binance]\n[feeds.binance_2]\nexchange = \"BINANCE\"\n",
                    "feeds.binance_2.exchange",
                    "also the exchange of feeds.binance",
                ),
                (
                    "[feeds.coinbase]\nsymbols = [\"BTC USD\"]\n",
                    "feeds.coinbase.symbols",
                    "is not a symbol",
                ),
                (
                    "[feeds.kraken]\nprotocol = \"krakn\"\n",
                    "feeds.kraken.protocol",
                    "krakn",
                ),
            ] {
                let f = write(text);
                let e = Config::load(Some(f.path())).unwrap_err().to_string();
                assert!(e.contains(key) && e.contains(says), "{text}: {e}");
                assert!(e.contains(&f.path().display().to_string()), "{e}");
            }
            // Two feeds of one exchange are fine when only one runs.
            let f = write(
                "[feeds.binance]\n[feeds.binance_2]\nexchange = \"BINANCE\"\nenabled = false\n",
            );
            Config::load(Some(f.path())).unwrap();
        });
    }

    #[test]
    fn out_of_range_times_name_the_key_instead_of_panicking() {
        jailed(|| {
            for (section, key) in [
                ("feeds.binance", "max_connection_secs"),
                ("writer", "max_age_ms"),
                ("breaker.commit", "open_ms"),
                ("api", "timeout_ms"),
            ] {
                // The largest integer TOML holds.
                let f = write(&format!("[{section}]\n{key} = 9223372036854775807\n"));
                let e = Config::load(Some(f.path())).unwrap_err().to_string();
                assert!(e.contains(&format!("{section}.{key}")), "{e}");
                assert!(e.contains("366 days"), "{e}");
            }
            let f = write("[feeds.binance]\nmax_connection_secs = 31622400\n");
            Config::load(Some(f.path())).expect("366 days is allowed");
        });
    }

    #[test]
    fn env_overrides_keys_and_ignores_reserved_variables() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TICKLAKE_FEEDS__BINANCE__URL", "ws://127.0.0.1:9000");
            jail.set_env("TICKLAKE_DATA_DIR", "/var/lib/x");
            jail.set_env("TICKLAKE_TEST_BROKERS", "127.0.0.1:1");
            jail.set_env("TICKLAKE_LOG", "debug");
            let cfg = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.feeds["binance"].url, "ws://127.0.0.1:9000");
            assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/x"));
            jail.set_env("TICKLAKE_KAFKA__BROKERZ", "x");
            let e = Config::load(None).unwrap_err().to_string();
            assert!(e.contains("kafka.brokerz"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        jailed(|| {
            let e = Config::load(Some(Path::new("/nonexistent/x.toml"))).unwrap_err();
            assert!(e.to_string().contains("/nonexistent/x.toml"));
        });
    }
}
