//! `ticklake cost`: what running ticklake costs a month, from figures
//! measured on this build and this lake, priced by a sheet the user edits
//! (`config/prices.toml`).
//!
//! The measured figures are the ones a guess gets most wrong: the bytes a
//! trade takes in the lake's Parquet (the trades table's live data files
//! over their rows, read from the Iceberg manifests), and the CPU a trade
//! costs (`ticklake bench --json`'s `cpu_us_per_trade`, given as an
//! argument because the bench does not keep its result). Commits and
//! files per day follow from the writer and maintenance keys of the
//! config. Everything is a formula over those inputs (`estimate`), so
//! `docs/cost-model.md` can state the same formulas and a test can check
//! them; the command only gathers the inputs and prints.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::lake::{self, LakeError, TableKind};

mod prices;

pub use prices::Prices;

/// Hours in a billing month, as AWS counts them (365 × 24 / 12).
pub const HOURS_PER_MONTH: f64 = 730.0;
/// Days in a month, on average.
pub const DAYS_PER_MONTH: f64 = 365.0 / 12.0;
/// AWS bills storage by the GB of 2^30 bytes.
const GIB: f64 = (1u64 << 30) as f64;
/// Files every Iceberg commit writes besides its data files: the new
/// manifest, the manifest list and the table metadata JSON.
pub const METADATA_FILES_PER_COMMIT: f64 = 3.0;
/// Objects a commit reads: the current table metadata and the previous
/// manifest list (a fast append carries the old manifests over by name).
pub const READS_PER_COMMIT: f64 = 2.0;
/// Bytes a Kafka record adds to its key and value in record format v2:
/// the length, attributes, timestamp and offset deltas, key and value
/// lengths (varints) and the header count, about 8 bytes, plus the
/// batch's 61-byte header shared by the records of a batch (a few at
/// ticklake's 5 ms linger). Compression (lz4 by default) is left out, so
/// the topic's size is an upper bound.
pub const KAFKA_RECORD_OVERHEAD: f64 = 16.0;

#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error("price sheet {file} does not exist (give another with --prices)")]
    PricesMissing { file: PathBuf },
    #[error("price sheet {file}: {reason}")]
    PricesFile { file: PathBuf, reason: String },
    #[error("price sheet {file}: key `{key}`: {reason}")]
    PriceKey {
        file: PathBuf,
        key: String,
        reason: String,
    },
    #[error(
        "no lake to measure bytes per trade: {reason}; run the daemon first, point --config at a data directory that has trades, or give --bytes-per-trade"
    )]
    NoLake { reason: String },
    #[error(
        "no trade rate: give --rate EXCHANGE=TRADES_PER_S, once for each exchange (e.g. --rate BINANCE=1000)"
    )]
    NoRate,
    #[error(
        "no CPU figure: give --cpu-us-per-trade; `ticklake bench --json` (a release build) prints it as cpu_us_per_trade"
    )]
    NoCpu,
    #[error("--{arg}: {reason}")]
    Argument { arg: &'static str, reason: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reading the lake: {0}")]
    Lake(#[from] LakeError),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl CostError {
    /// Only reading the lake can succeed on a second try; every other
    /// error is in the arguments, the config or the price sheet.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CostError::Lake(e) if e.is_retryable())
    }
}

/// The command line of `ticklake cost`.
#[derive(Debug, Clone, clap::Args)]
pub struct CostArgs {
    /// Config file (TOML); its lake is measured and its writer and
    /// maintenance keys give the commits and files per day.
    #[arg(long, env = "TICKLAKE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The price sheet: dated prices, each with its source.
    #[arg(long, default_value = "config/prices.toml")]
    pub prices: PathBuf,
    /// Trades a second on one exchange, e.g. `--rate BINANCE=1000`;
    /// repeat for each exchange.
    #[arg(long = "rate", value_name = "EXCHANGE=TRADES_PER_S", value_parser = parse_rate)]
    pub rates: Vec<(String, f64)>,
    /// Days of trades the lake keeps; storage is priced at this horizon.
    #[arg(long, default_value_t = 365)]
    pub retention_days: u32,
    /// Hours the trades topics keep their records (Kafka's default
    /// `retention.ms` is 7 days).
    #[arg(long, default_value_t = 168.0)]
    pub kafka_retention_hours: f64,
    /// Copies of each topic partition the brokers keep.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: u32,
    /// CPU-µs per trade, end to end (`ticklake bench --json`:
    /// `cpu_us_per_trade`).
    #[arg(long)]
    pub cpu_us_per_trade: Option<f64>,
    /// Bytes per trade in the lake's Parquet; without it, measured from
    /// the configured lake's trades table.
    #[arg(long)]
    pub bytes_per_trade: Option<f64>,
    /// Bytes per record on the trades topics; without it, a typical trade
    /// encoded as the producer encodes it, plus Kafka's record overhead.
    #[arg(long)]
    pub record_bytes: Option<f64>,
    /// The share of its vCPUs the daemon may use: the rest is headroom for
    /// bursts, commits and queries.
    #[arg(long, default_value_t = 0.5)]
    pub cpu_utilization: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_rate(s: &str) -> Result<(String, f64), String> {
    let (exchange, rate) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not EXCHANGE=TRADES_PER_S"))?;
    let rate: f64 = rate
        .trim()
        .parse()
        .map_err(|_| format!("{rate:?} is not a number of trades a second"))?;
    if exchange.trim().is_empty() || !(rate.is_finite() && rate > 0.0) {
        return Err(format!("{s:?}: needs an exchange name and a positive rate"));
    }
    Ok((exchange.trim().to_ascii_uppercase(), rate))
}

/// What the config says about commits and maintenance.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LakeShape {
    pub writer_max_rows: f64,
    pub writer_max_age_secs: f64,
    pub target_file_size_bytes: f64,
    pub bars: bool,
    /// Seconds between maintenance runs; `None` when maintenance is off.
    pub maintenance_interval_secs: Option<f64>,
    pub compact: bool,
    /// How long replaced files outlive their replacement
    /// (`maintenance.snapshot_retention`).
    pub snapshot_retention_secs: f64,
}

impl LakeShape {
    pub fn of(cfg: &Config) -> Self {
        Self {
            writer_max_rows: cfg.writer.max_rows as f64,
            writer_max_age_secs: cfg.writer.max_age_ms as f64 / 1000.0,
            target_file_size_bytes: cfg.writer.target_file_size_bytes as f64,
            bars: cfg.lake.bars,
            maintenance_interval_secs: cfg
                .maintenance
                .enabled
                .then_some(cfg.maintenance.interval_secs as f64),
            compact: cfg.maintenance.compact,
            snapshot_retention_secs: cfg.maintenance.retention().as_secs_f64(),
        }
    }
}

/// The load and the measured figures the estimate is made from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Inputs {
    /// Trades a second by exchange.
    pub rates: BTreeMap<String, f64>,
    pub retention_days: f64,
    pub kafka_retention_hours: f64,
    pub replication_factor: f64,
    pub cpu_us_per_trade: f64,
    pub bytes_per_trade: f64,
    pub record_bytes: f64,
    pub cpu_utilization: f64,
}

/// Object-store requests a day, by who makes them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Requests {
    pub writer_puts: f64,
    pub writer_gets: f64,
    pub bars_puts: f64,
    pub bars_gets: f64,
    pub maintenance_puts: f64,
    pub maintenance_gets: f64,
}

impl Requests {
    pub fn puts(&self) -> f64 {
        self.writer_puts + self.bars_puts + self.maintenance_puts
    }

    pub fn gets(&self) -> f64 {
        self.writer_gets + self.bars_gets + self.maintenance_gets
    }
}

/// One line of the bill.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Line {
    pub item: &'static str,
    pub quantity: f64,
    pub unit: String,
    pub unit_price: f64,
    pub per_month: f64,
}

/// The estimate: the derived quantities and the bill.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Estimate {
    pub trades_per_sec: f64,
    pub exchanges: usize,
    pub commit_interval_secs: f64,
    pub commits_per_day: f64,
    pub data_files_per_commit: f64,
    pub requests_per_day: Requests,
    pub vcpus_needed: f64,
    pub instances: f64,
    pub lake_gib: f64,
    pub kafka_gib: f64,
    pub lines: Vec<Line>,
    pub total_per_month: f64,
}

/// Prices the load of `inputs` on a lake shaped as `shape` says.
///
/// - compute: `rate × cpu_us / 1e6 / utilization` vCPUs, rounded up to
///   whole instances of the sheet's type (at least one), for 730 hours;
/// - object storage: `bytes_per_trade × rate × 86,400 × retention_days`,
///   the steady state once the lake holds the whole retention (it grows
///   linearly to it), plus the files that compaction replaced and expiry
///   has not deleted yet (`snapshot_retention + interval` of trades);
/// - requests: per commit its data files and 3 metadata files written and
///   2 objects read, a bars commit after each trades commit, and per
///   maintenance run the compaction's reads and writes;
/// - Kafka: `record_bytes × rate × retention × replication` on the
///   brokers' disks.
pub fn estimate(inputs: &Inputs, shape: &LakeShape, prices: &Prices) -> Estimate {
    let rate: f64 = inputs.rates.values().sum();
    let exchanges = inputs.rates.values().filter(|r| **r > 0.0).count();
    let e = exchanges as f64;
    // The writer flushes at max_rows rows or when its oldest row is
    // max_age old, whichever comes first.
    let interval = shape
        .writer_max_age_secs
        .min(shape.writer_max_rows / rate.max(f64::MIN_POSITIVE));
    let commits = 86_400.0 / interval;
    // One data file per (day, exchange) partition a commit touches, more
    // when a partition's share of the commit passes the target size.
    let files_per_commit: f64 = inputs
        .rates
        .values()
        .filter(|r| **r > 0.0)
        .map(|r| (inputs.bytes_per_trade * r * interval / shape.target_file_size_bytes).ceil())
        .map(|f| f.max(1.0))
        .sum();
    let mut req = Requests {
        writer_puts: commits * (files_per_commit + METADATA_FILES_PER_COMMIT),
        writer_gets: commits * READS_PER_COMMIT,
        ..Requests::default()
    };
    if shape.bars {
        // The bars summarize each trades commit from the rows its writer
        // hands them (its files are read back only after a restart, or for
        // another daemon's commits), read both tables' metadata and write
        // one small file per exchange partition in a commit of their own.
        req.bars_puts = commits * (e + METADATA_FILES_PER_COMMIT);
        req.bars_gets = commits * (READS_PER_COMMIT + READS_PER_COMMIT);
    }
    if let Some(every) = shape.maintenance_interval_secs {
        let runs = 86_400.0 / every;
        // Expiry reads the manifest list of each snapshot it expires and
        // writes one metadata file per table (deletes are free on S3).
        let tables = if shape.bars { 2.0 } else { 1.0 };
        req.maintenance_puts += runs * tables;
        req.maintenance_gets += commits * tables;
        if shape.compact {
            // Every small file is read once by the compaction that
            // replaces it; each run writes each partition's files anew.
            let per_run: f64 = inputs
                .rates
                .values()
                .filter(|r| **r > 0.0)
                .map(|r| (inputs.bytes_per_trade * r * every / shape.target_file_size_bytes).ceil())
                .sum();
            let bars_files = if shape.bars { commits * e } else { 0.0 };
            req.maintenance_gets += commits * files_per_commit + bars_files;
            req.maintenance_puts += runs * (per_run + METADATA_FILES_PER_COMMIT);
            if shape.bars {
                req.maintenance_puts += runs * (e + METADATA_FILES_PER_COMMIT);
            }
        }
    }

    let vcpus_needed = rate * inputs.cpu_us_per_trade / 1e6 / inputs.cpu_utilization;
    let instances = (vcpus_needed / prices.compute_vcpus).ceil().max(1.0);
    let overhang = shape.snapshot_retention_secs + shape.maintenance_interval_secs.unwrap_or(0.0);
    let lake_gib = inputs.bytes_per_trade
        * rate
        * (86_400.0 * inputs.retention_days + if shape.compact { overhang } else { 0.0 })
        / GIB;
    let kafka_gib = inputs.record_bytes
        * rate
        * inputs.kafka_retention_hours
        * 3600.0
        * inputs.replication_factor
        / GIB;
    let puts_month = req.puts() * DAYS_PER_MONTH;
    let gets_month = req.gets() * DAYS_PER_MONTH;
    let lines = vec![
        Line {
            item: "compute",
            quantity: instances * HOURS_PER_MONTH,
            unit: format!("{}-hours", prices.compute_instance),
            unit_price: prices.compute_per_hour,
            per_month: instances * HOURS_PER_MONTH * prices.compute_per_hour,
        },
        Line {
            item: "object storage",
            quantity: lake_gib,
            unit: "GB-month".into(),
            unit_price: prices.storage_per_gb_month,
            per_month: lake_gib * prices.storage_per_gb_month,
        },
        Line {
            item: "PUT requests",
            quantity: puts_month,
            unit: "requests".into(),
            unit_price: prices.put_per_1000 / 1000.0,
            per_month: puts_month / 1000.0 * prices.put_per_1000,
        },
        Line {
            item: "GET requests",
            quantity: gets_month,
            unit: "requests".into(),
            unit_price: prices.get_per_1000 / 1000.0,
            per_month: gets_month / 1000.0 * prices.get_per_1000,
        },
        Line {
            item: "Kafka retention",
            quantity: kafka_gib,
            unit: "GB-month".into(),
            unit_price: prices.kafka_storage_per_gb_month,
            per_month: kafka_gib * prices.kafka_storage_per_gb_month,
        },
    ];
    Estimate {
        trades_per_sec: rate,
        exchanges,
        commit_interval_secs: interval,
        commits_per_day: commits,
        data_files_per_commit: files_per_commit,
        requests_per_day: req,
        vcpus_needed,
        instances,
        lake_gib,
        kafka_gib,
        total_per_month: lines.iter().map(|l| l.per_month).sum(),
        lines,
    }
}

/// The trades table's live data files, as its current snapshot's
/// manifests list them.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct LakeFiles {
    pub files: u64,
    pub bytes: u64,
    pub rows: u64,
}

impl LakeFiles {
    pub fn bytes_per_trade(&self) -> f64 {
        self.bytes as f64 / self.rows as f64
    }
}

/// Reads the trades table's files of `cfg`'s lake, without creating a
/// catalog or a table where there is none.
pub async fn measure_lake(cfg: &Config) -> Result<LakeFiles, CostError> {
    let no_lake = |reason: String| CostError::NoLake { reason };
    if cfg.lake.catalog_uri.is_empty() {
        let db = cfg.data_dir_abs().join("catalog.db");
        if !db.exists() {
            return Err(no_lake(format!("{} does not exist", db.display())));
        }
    }
    let catalog = lake::open_catalog(cfg).await?;
    let ident = lake::table_ident(cfg, TableKind::Trades);
    if !catalog
        .table_exists(&ident)
        .await
        .map_err(LakeError::from)?
    {
        return Err(no_lake(format!("the catalog has no table {ident}")));
    }
    let table = catalog.load_table(&ident).await.map_err(LakeError::from)?;
    let entries = lake::commit::live_entries(&table).await?;
    let files = LakeFiles {
        files: entries.len() as u64,
        bytes: entries
            .iter()
            .map(|e| e.data_file.file_size_in_bytes())
            .sum(),
        rows: entries.iter().map(|e| e.data_file.record_count()).sum(),
    };
    if files.rows == 0 {
        return Err(no_lake(format!("{ident} holds no rows")));
    }
    Ok(files)
}

/// The size on a trades topic of a typical trade (a Binance BTCUSDT trade
/// as the feed makes it), encoded by the producer's own encoder, with its
/// key (the symbol) and Kafka's per-record overhead.
pub fn typical_record_bytes() -> f64 {
    use crate::model::{Dec8, Side, TradeV2};
    let dec = |s: &str| Dec8::parse(s).unwrap_or_default();
    let ts = 1_750_000_000_000_000;
    let trade = TradeV2::builder("BINANCE", "BTCUSDT", "4987654321", ts)
        .ingested_at(ts + 1_500)
        .price(dec("104321.12000000"))
        .quantity(dec("0.00213000"))
        .side(Side::Sell)
        .source_sequence(Some(4_987_654_321))
        .instrument(Some("BTC-USDT"))
        .build();
    let mut buf = Vec::new();
    crate::kafka::avro_direct::encode_trade_into(&mut buf, 1, &trade);
    (buf.len() + trade.symbol.len()) as f64 + KAFKA_RECORD_OVERHEAD
}

/// Where the bytes per trade came from.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum BytesSource {
    Lake(LakeFiles),
    Argument,
}

/// Everything `ticklake cost` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CostReport {
    pub inputs: Inputs,
    pub bytes_per_trade_from: BytesSource,
    pub record_bytes_from: &'static str,
    pub lake: LakeShape,
    pub prices: Prices,
    pub estimate: Estimate,
}

/// Gathers the inputs of `args` (measuring the lake when asked to) and
/// prices them.
pub async fn report(args: &CostArgs, cfg: &Config) -> Result<CostReport, CostError> {
    let prices = Prices::load(&args.prices)?;
    if args.rates.is_empty() {
        return Err(CostError::NoRate);
    }
    let mut rates = BTreeMap::new();
    for (exchange, rate) in &args.rates {
        if rates.insert(exchange.clone(), *rate).is_some() {
            return Err(CostError::Argument {
                arg: "rate",
                reason: format!("{exchange} is given twice"),
            });
        }
    }
    let cpu = args.cpu_us_per_trade.ok_or(CostError::NoCpu)?;
    positive("cpu-us-per-trade", cpu)?;
    positive("kafka-retention-hours", args.kafka_retention_hours)?;
    positive("replication-factor", f64::from(args.replication_factor))?;
    positive("retention-days", f64::from(args.retention_days))?;
    if !(args.cpu_utilization > 0.0 && args.cpu_utilization <= 1.0) {
        return Err(CostError::Argument {
            arg: "cpu-utilization",
            reason: format!("{} is not in (0, 1]", args.cpu_utilization),
        });
    }
    let (bytes_per_trade, bytes_from) = match args.bytes_per_trade {
        Some(b) => {
            positive("bytes-per-trade", b)?;
            (b, BytesSource::Argument)
        }
        None => {
            let files = measure_lake(cfg).await?;
            (files.bytes_per_trade(), BytesSource::Lake(files))
        }
    };
    let (record_bytes, record_from) = match args.record_bytes {
        Some(b) => {
            positive("record-bytes", b)?;
            (b, "argument")
        }
        None => (typical_record_bytes(), "typical trade, producer's encoder"),
    };
    let inputs = Inputs {
        rates,
        retention_days: f64::from(args.retention_days),
        kafka_retention_hours: args.kafka_retention_hours,
        replication_factor: f64::from(args.replication_factor),
        cpu_us_per_trade: cpu,
        bytes_per_trade,
        record_bytes,
        cpu_utilization: args.cpu_utilization,
    };
    let lake = LakeShape::of(cfg);
    let estimate = estimate(&inputs, &lake, &prices);
    Ok(CostReport {
        inputs,
        bytes_per_trade_from: bytes_from,
        record_bytes_from: record_from,
        lake,
        prices,
        estimate,
    })
}

fn positive(arg: &'static str, v: f64) -> Result<(), CostError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(CostError::Argument {
            arg,
            reason: format!("{v} is not a positive number"),
        })
    }
}

/// `ticklake cost`: loads the config, prices the load, prints the table
/// or the JSON.
pub fn run(args: &CostArgs) -> Result<(), CostError> {
    let cfg = Config::load(args.config.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CostError::Runtime)?;
    let report = rt.block_on(report(args, &cfg))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// `1234567.8` as `1,234,568`; small numbers keep `decimals` places.
fn grouped(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    let (int, frac) = s.split_once('.').map_or((s.as_str(), ""), |(i, f)| (i, f));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if frac.is_empty() {
        format!("{sign}{out}")
    } else {
        format!("{sign}{out}.{frac}")
    }
}

impl fmt::Display for CostReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (i, e, p) = (&self.inputs, &self.estimate, &self.prices);
        let venues: Vec<String> = i
            .rates
            .iter()
            .map(|(x, r)| format!("{x} {}/s", grouped(*r, 0)))
            .collect();
        writeln!(
            f,
            "load: {} trades/s ({}); lake retention {} days, priced at that horizon (steady state); Kafka retention {} h x{}",
            grouped(e.trades_per_sec, 0),
            venues.join(", "),
            i.retention_days,
            i.kafka_retention_hours,
            i.replication_factor
        )?;
        let from = match &self.bytes_per_trade_from {
            BytesSource::Lake(l) => format!(
                "the lake's trades table: {} bytes in {} files / {} rows",
                l.bytes, l.files, l.rows
            ),
            BytesSource::Argument => "--bytes-per-trade".into(),
        };
        writeln!(f, "bytes per trade: {:.2} ({from})", i.bytes_per_trade)?;
        writeln!(
            f,
            "bytes per Kafka record: {:.0} ({}); CPU-us per trade: {} at {:.0} % utilization -> {:.3} vCPU",
            i.record_bytes,
            self.record_bytes_from,
            i.cpu_us_per_trade,
            i.cpu_utilization * 100.0,
            e.vcpus_needed
        )?;
        writeln!(
            f,
            "commits: every {:.2} s, {} a day, {} data files each; requests a day: {} PUT, {} GET",
            e.commit_interval_secs,
            grouped(e.commits_per_day, 0),
            e.data_files_per_commit,
            grouped(e.requests_per_day.puts(), 0),
            grouped(e.requests_per_day.gets(), 0)
        )?;
        writeln!(
            f,
            "prices: {}, as listed on {} ({}, {})",
            p.file.display(),
            p.as_of,
            p.region,
            p.currency
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<16} {:>16} {:<20} {:>12} {:>12}",
            "item", "quantity", "unit", "unit price", "per month"
        )?;
        for l in &e.lines {
            let (q, price) = if l.unit == "requests" {
                (grouped(l.quantity, 0), format!("{:.7}", l.unit_price))
            } else {
                (grouped(l.quantity, 1), format!("{:.4}", l.unit_price))
            };
            writeln!(
                f,
                "{:<16} {:>16} {:<20} {:>12} {:>12}",
                l.item,
                q,
                l.unit,
                price,
                grouped(l.per_month, 2)
            )?;
        }
        writeln!(
            f,
            "{:<16} {:>16} {:<20} {:>12} {:>12}",
            "total",
            "",
            "",
            "",
            grouped(e.total_per_month, 2)
        )?;
        writeln!(f)?;
        writeln!(f, "sources:")?;
        writeln!(f, "  compute: {}", p.compute_source)?;
        writeln!(f, "  object storage: {}", p.storage_source)?;
        writeln!(f, "  requests: {}", p.requests_source)?;
        writeln!(f, "  Kafka storage: {}", p.kafka_storage_source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sheet shipped in `config/`, which the docs' worked example uses.
    use super::prices::tests::shipped_prices;

    fn inputs(rates: &[(&str, f64)]) -> Inputs {
        Inputs {
            rates: rates.iter().map(|(x, r)| (x.to_string(), *r)).collect(),
            retention_days: 365.0,
            kafka_retention_hours: 168.0,
            replication_factor: 3.0,
            cpu_us_per_trade: 10.0,
            bytes_per_trade: 40.0,
            record_bytes: typical_record_bytes(),
            cpu_utilization: 0.5,
        }
    }

    fn line<'a>(e: &'a Estimate, item: &str) -> &'a Line {
        e.lines.iter().find(|l| l.item == item).unwrap()
    }

    #[test]
    fn doubling_the_rate_doubles_storage_kafka_and_the_cpu_needed() {
        let (shape, prices) = (LakeShape::of(&Config::default()), shipped_prices());
        let one = estimate(&inputs(&[("A", 500.0), ("B", 700.0)]), &shape, &prices);
        let two = estimate(&inputs(&[("A", 1000.0), ("B", 1400.0)]), &shape, &prices);
        let ratio = |item| line(&two, item).per_month / line(&one, item).per_month;
        assert!((ratio("object storage") - 2.0).abs() < 1e-9);
        assert!((ratio("Kafka retention") - 2.0).abs() < 1e-9);
        assert!((two.vcpus_needed / one.vcpus_needed - 2.0).abs() < 1e-9);
        // Below max_rows per max_age the writer commits on age: the same
        // commits, whatever the rate.
        assert_eq!(one.commits_per_day, two.commits_per_day);
        let total: f64 = two.lines.iter().map(|l| l.per_month).sum();
        assert!((two.total_per_month - total).abs() < 1e-9);
    }

    #[test]
    fn the_commit_interval_is_max_rows_over_the_rate_once_that_is_shorter() {
        let cfg = Config::default();
        let shape = LakeShape::of(&cfg);
        let fast = estimate(&inputs(&[("A", 200_000.0)]), &shape, &shipped_prices());
        let want = cfg.writer.max_rows as f64 / 200_000.0;
        assert!(want < cfg.writer.max_age_ms as f64 / 1000.0);
        assert!((fast.commit_interval_secs - want).abs() < 1e-12);
        assert!((fast.commits_per_day - 86_400.0 / want).abs() < 1e-6);
    }

    #[test]
    fn compute_is_whole_instances_of_the_sheet_with_headroom() {
        let (shape, prices) = (LakeShape::of(&Config::default()), shipped_prices());
        let mut i = inputs(&[("A", 30_000.0)]);
        i.cpu_us_per_trade = 100.0;
        let e = estimate(&i, &shape, &prices);
        let vcpus = 30_000.0 * 100e-6 / i.cpu_utilization;
        assert!((e.vcpus_needed - vcpus).abs() < 1e-9);
        assert_eq!(e.instances, (vcpus / prices.compute_vcpus).ceil());
        let c = line(&e, "compute");
        assert!(
            (c.per_month - e.instances * HOURS_PER_MONTH * prices.compute_per_hour).abs() < 1e-9
        );
        // A trickle still needs one machine.
        let small = estimate(&inputs(&[("A", 1.0)]), &shape, &prices);
        assert_eq!(small.instances, 1.0);
    }

    /// The docs' worked example (3 venues × 1,000 trades/s, a year), each
    /// term recomputed here from the shipped sheet and the default config.
    #[test]
    fn the_worked_example_follows_from_the_sheet_and_the_config() {
        let cfg = Config::default();
        let prices = shipped_prices();
        let i = inputs(&[
            ("BINANCE", 1000.0),
            ("KRAKEN", 1000.0),
            ("COINBASE", 1000.0),
        ]);
        let e = estimate(&i, &LakeShape::of(&cfg), &prices);
        let rate = 3000.0;
        let age = cfg.writer.max_age_ms as f64 / 1000.0;
        assert_eq!(e.commit_interval_secs, age);
        let commits = 86_400.0 / age;
        // Each venue's 5 s of trades is far below the target file size.
        assert_eq!(e.data_files_per_commit, 3.0);
        let runs = 86_400.0 / cfg.maintenance.interval_secs as f64;
        let writer = commits * (3.0 + 3.0);
        let bars = commits * (3.0 + 3.0);
        let compaction = runs * (3.0 + 3.0) + runs * (3.0 + 3.0);
        let expiry = runs * 2.0;
        let puts = writer + bars + compaction + expiry;
        assert!((e.requests_per_day.puts() - puts).abs() < 1e-6, "{e:?}");
        let gets = commits * 2.0 + commits * 4.0 + commits * 2.0 + commits * 3.0 * 2.0;
        assert!((e.requests_per_day.gets() - gets).abs() < 1e-6, "{e:?}");
        let put_line = line(&e, "PUT requests");
        assert!(
            (put_line.per_month - puts * DAYS_PER_MONTH / 1000.0 * prices.put_per_1000).abs()
                < 1e-9
        );
        let overhang =
            cfg.maintenance.retention().as_secs_f64() + cfg.maintenance.interval_secs as f64;
        let gib = 40.0 * rate * (86_400.0 * 365.0 + overhang) / (1u64 << 30) as f64;
        assert!(
            (line(&e, "object storage").per_month - gib * prices.storage_per_gb_month).abs() < 1e-9
        );
        let kafka = i.record_bytes * rate * 168.0 * 3600.0 * 3.0 / (1u64 << 30) as f64;
        assert!(
            (line(&e, "Kafka retention").per_month - kafka * prices.kafka_storage_per_gb_month)
                .abs()
                < 1e-9
        );
    }

    #[test]
    fn rates_are_exchange_equals_a_positive_number() {
        assert_eq!(
            parse_rate("binance=1000").unwrap(),
            ("BINANCE".into(), 1000.0)
        );
        assert_eq!(parse_rate("KRAKEN = 2.5").unwrap(), ("KRAKEN".into(), 2.5));
        for bad in [
            "binance",
            "=5",
            "binance=0",
            "binance=-1",
            "binance=lots",
            "binance=inf",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_typical_record_is_the_encoded_trade_plus_key_and_overhead() {
        let b = typical_record_bytes();
        // The Confluent header, a UUID message id, ids, times, decimals.
        assert!((100.0..300.0).contains(&b), "{b}");
        assert_eq!(b.fract(), 0.0);
    }

    #[tokio::test]
    async fn no_lake_is_a_clear_error_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::default().under(&dir.path().join("data"));
        let err = measure_lake(&cfg).await.unwrap_err();
        assert!(matches!(err, CostError::NoLake { .. }), "{err}");
        assert!(err.to_string().contains("--bytes-per-trade"), "{err}");
        assert!(!dir.path().join("data").exists());
        // A catalog with an empty table is no lake either.
        let (cfg, ..) = lake::test_lake(dir.path()).await;
        let err = measure_lake(&cfg).await.unwrap_err();
        assert!(err.to_string().contains("holds no rows"), "{err}");
    }

    /// The measured figure is the table's live files over their rows: the
    /// Parquet files on disk (no maintenance ran, so all are live) summed
    /// here by walking the warehouse.
    #[tokio::test]
    async fn bytes_per_trade_is_the_live_files_over_their_rows() {
        use crate::model::TradeV2;
        let dir = tempfile::tempdir().unwrap();
        let (cfg, catalog, _, ident, schema) = lake::test_lake(dir.path()).await;
        let mut next = 0;
        for (n, exchange) in [(300, "BINANCE"), (200, "KRAKEN"), (100, "BINANCE")] {
            let trades: Vec<TradeV2> = (next..next + n)
                .map(|i| {
                    TradeV2::builder(
                        exchange,
                        "BTCUSDT",
                        &i.to_string(),
                        1_700_000_000_000_000 + i,
                    )
                    .build()
                })
                .collect();
            next += n;
            let batch = lake::batch::trades_batch(&schema, &trades).unwrap();
            lake::commit::append(
                catalog.as_ref(),
                &ident,
                Some(&batch),
                &lake::commit::one_partition(next),
                1 << 20,
            )
            .await
            .unwrap();
        }
        let files = measure_lake(&cfg).await.unwrap();
        let mut on_disk = (0u64, 0u64);
        let mut stack = vec![dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(d).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    on_disk.0 += 1;
                    on_disk.1 += std::fs::metadata(&p).unwrap().len();
                }
            }
        }
        assert_eq!(files.rows, 600);
        assert_eq!((files.files, files.bytes), on_disk);
        assert_eq!(files.bytes_per_trade(), on_disk.1 as f64 / 600.0);
    }
}
