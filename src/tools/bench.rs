//! `ticklake bench`: throughput end to end, next to the broker's ceilings.
//! By default over the whole path, from WebSocket frame to committed
//! Iceberg row (`full`); `--from lanes` keeps the older measurement from
//! the producer's lanes (trades built before the clock starts) to the lake,
//! with its search for the sustainable NORMAL rate.
//! Run it on a release build; a debug build measures the compiler.

mod ceiling;
mod full;
mod procstat;
mod report;
mod search;

pub use full::{FullReport, ProducerWaits, generated_frames};
use search::search_normal;
pub use search::{NORMAL_FRACTIONS, NormalProbe, REFINE_STEPS, RISING_FRACTIONS};

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::producer::FutureProducer;
use serde::Serialize;

use crate::config::Config;
use crate::daemon::{self, DaemonError};
use crate::degrade::level::Level;
use crate::instruments::Tier;
use crate::kafka::encoder::{Encoded, enqueue};
use crate::messages::producer::{Outgoing, send_batch};
use crate::model::{Dec8, Side, TradeV2, VendorData, now_us};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaSetupError),
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Avro(#[from] crate::kafka::avro::AvroError),
    #[error(transparent)]
    Registry(#[from] crate::kafka::registry::RegistryError),
    #[error("producer: {0}")]
    Producer(String),
    #[error("{stage} did not finish within {secs} s ({done} of {total})")]
    Timeout {
        stage: &'static str,
        secs: u64,
        done: u64,
        total: u64,
    },
}

/// What one run measured.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub broker: String,
    pub trades: usize,
    pub record_bytes: usize,
    /// Bare rdkafka producer, records of the same size, all delivered.
    pub raw_produce_per_s: f64,
    /// Trades per second from the first publish to the last committed row.
    pub end_to_end_per_s: f64,
    pub ratio: f64,
    pub commits: u64,
    /// Highest degradation level during the unpaced run.
    pub max_level: Level,
    /// The highest paced rate that kept up with the level NORMAL throughout.
    pub sustainable_normal_per_s: Option<f64>,
    /// Sustainable NORMAL rate / raw produce rate.
    pub sustainable_ratio: Option<f64>,
    /// The paced runs, in the order tried.
    pub paced: Vec<PacedStep>,
}

/// One paced run of the search for the sustainable NORMAL rate.
#[derive(Debug, Serialize)]
pub struct PacedStep {
    pub offered_per_s: f64,
    /// What the lanes took (below the offer when they pushed back).
    pub sent_per_s: f64,
    /// First send to last committed row.
    pub committed_per_s: f64,
    /// Last send to last committed row.
    pub tail_secs: f64,
    pub max_level: Level,
    pub sustained: bool,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "broker:                                   {}",
            self.broker
        )?;
        writeln!(
            f,
            "trades:                                   {} (Avro record {} bytes)",
            self.trades, self.record_bytes
        )?;
        writeln!(
            f,
            "raw produce, bare rdkafka (ceiling):      {:.0} records/s",
            self.raw_produce_per_s
        )?;
        writeln!(
            f,
            "end to end, unpaced (maximum):            {:.0} trades/s ({} commits)",
            self.end_to_end_per_s, self.commits
        )?;
        writeln!(
            f,
            "  highest degradation level in that run:  {}",
            self.max_level
        )?;
        for p in &self.paced {
            writeln!(
                f,
                "  offered {:>8.0}/s: sent {:>8.0}/s, committed {:>8.0}/s (last commit {:.2}s after the last send), level at most {}{}",
                p.offered_per_s,
                p.sent_per_s,
                p.committed_per_s,
                p.tail_secs,
                p.max_level,
                if p.sustained { "  <- sustained" } else { "" }
            )?;
        }
        match self.sustainable_normal_per_s {
            Some(r) => writeln!(
                f,
                "sustainable NORMAL end to end:            {r:.0} trades/s (ratio to raw {:.3})",
                self.sustainable_ratio.unwrap_or_default()
            )?,
            None => writeln!(
                f,
                "sustainable NORMAL end to end:            not found (every paced run degraded or fell behind)"
            )?,
        }
        write!(
            f,
            "ratio unpaced end to end / raw:           {:.3}",
            self.ratio
        )
    }
}

/// Synthetic trades over ten symbols, with distinct ids and exact prices.
fn synthetic(n: usize) -> Vec<TradeV2> {
    synthetic_from(0, n)
}

/// `n` synthetic trades numbered from `first` (distinct ids per phase).
fn synthetic_from(first: usize, n: usize) -> Vec<TradeV2> {
    let symbols = [
        "BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "TRXUSDT",
        "AVAXUSDT", "LINKUSDT",
    ];
    let start = now_us();
    (first..first + n)
        .map(|i| {
            let symbol = symbols[i % symbols.len()];
            let id = (i / symbols.len()).to_string();
            TradeV2::builder("BENCH", symbol, &id, start + i as i64)
                .price(
                    Dec8::from_unscaled(6_500_000_000_000 + (i as i64 % 100_000))
                        .unwrap_or_default(),
                )
                .quantity(Dec8::from_unscaled(1_000_000 + (i as i64 % 997)).unwrap_or_default())
                .side(if i % 2 == 0 { Side::Buy } else { Side::Sell })
                .source_sequence(Some(i as i64))
                .vendor_data(Some(VendorData::from_iter([(
                    "stream".to_string(),
                    "trade".to_string(),
                )])))
                .build()
        })
        .collect()
}

/// The configuration of one bench run: a throw-away data directory, no
/// HTTP server, topics and consumer group of its own.
fn bench_config(base: &Config) -> (Config, std::path::PathBuf) {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("ticklake-bench-{run_id}"));
    let mut cfg = base.under(&dir);
    cfg.http.enabled = false;
    cfg.kafka.trades_topic_prefix = format!("bench{run_id}.trades");
    cfg.kafka.dead_letter_topic = format!("bench{run_id}.dead_letters");
    cfg.kafka.consumer_group = format!("bench{run_id}-lake");
    (cfg, dir)
}

/// `ticklake bench` over the whole path: the run, and for an unpaced run
/// the search for the highest rate it sustains at NORMAL.
#[derive(Debug, Serialize)]
pub struct FullBench {
    #[serde(flatten)]
    pub run: FullReport,
    /// Paced runs at falling fractions of the unpaced rate until one kept
    /// up (rising ones, when the first did, until one fell behind), then
    /// the runs that halve the step between, in the order tried; empty
    /// for a run with `--rate`.
    pub normal_search: Vec<NormalProbe>,
    /// Frames a second received by the paced run offered the most of
    /// those that kept up with the level NORMAL throughout.
    pub sustained_normal_per_s: Option<f64>,
}

impl std::fmt::Display for FullBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.run)?;
        if self.normal_search.is_empty() {
            return Ok(());
        }
        write!(f, "\npaced, for the highest rate at NORMAL:")?;
        for p in &self.normal_search {
            write!(
                f,
                "\n  {}offered {:>7.0}/s ({:.4} of unpaced, {} trades): received {:>7.0}/s, stored {:>7.0}/s, last commit {:.2} s after the last frame, {:.2} µs/trade, peak {:.0} MiB, level at most {} ({:.2} s above NORMAL){}",
                if p.refine { "refine: " } else { "" },
                p.offered_per_s,
                p.fraction,
                p.trades,
                p.received_per_s,
                p.stored_per_s,
                p.tail_secs,
                p.cpu_us_per_trade,
                p.peak_rss_bytes as f64 / (1024.0 * 1024.0),
                p.max_level,
                p.above_normal_secs,
                if p.sustained { "  <- sustained" } else { "" }
            )?;
            if let Some(why) = &p.raised_by {
                write!(f, "\n    first raised by {why}")?;
            }
            write!(f, "\n    producer waited for room {}", p.producer_waits)?;
        }
        match self.sustained_normal_per_s {
            Some(r) => write!(
                f,
                "\nsustained at NORMAL end to end: {r:.0} trades/s (ratio {:.3} to the produce + consume ceiling)",
                full::ratio(r, self.run.round_trip_ceiling_per_s)
            ),
            None => write!(
                f,
                "\nsustained at NORMAL end to end: not found (every paced run left NORMAL or fell behind)"
            ),
        }
    }
}

/// Hands the memory the last run freed back to the OS. The runs share one
/// process, which a deployment never does: the daemon keeps freed memory
/// for 10 s (`main.rs`), and glibc's malloc (librdkafka's) keeps its own,
/// so the next run's resident memory, which its daemon watches
/// (`degradation.thresholds.rss_bytes`), began with the last run's, and
/// the ceilings' records: paced runs went SOFT on `rss_bytes` above
/// 2 GiB while their own peak was under 1 GiB.
fn release_freed_memory() {
    // SAFETY: both only return free memory to the OS; nothing allocated
    // is touched, and both are safe to call from any thread at any time.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        libc::malloc_trim(0);
    }
}

/// One paced run of the full path without its ceilings: what the NORMAL
/// search runs at each rate, and what `ticklake bench --probe` prints (as
/// JSON) for the search of a parent process. Must run inside an actix
/// `System`.
pub async fn probe(
    base: &Config,
    trades: usize,
    symbols: usize,
    rate: f64,
    timeout: Duration,
) -> Result<FullReport, BenchError> {
    measure_full(base, trades, symbols, Some(rate), timeout, false).await
}

/// One full-path measurement in a throw-away data directory of its own.
async fn measure_full(
    base: &Config,
    trades: usize,
    symbols: usize,
    rate: Option<f64>,
    timeout: Duration,
    ceilings: bool,
) -> Result<FullReport, BenchError> {
    let (cfg, dir) = bench_config(base);
    let result = full::measure(&cfg, trades, symbols, rate, timeout, ceilings).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// How the NORMAL search runs each paced run: in a child process of its
/// own, `EXE bench --probe`, with the parent's configuration file (the
/// environment, and with it any `TICKLAKE_*` key, is inherited).
///
/// Not in this process: a daemon's shutdown leaves its Kafka clients, its
/// idle actors and the embedded cluster to the process's exit, which for
/// `ticklake run` comes next. Run one after another in one process, each
/// paced run had every earlier daemon's remains beside it: in a run of
/// the search the CPU per trade rose from 8.98 to 12.56 µs over seven
/// runs, and its broker window closed 15 to 19 times a run, where a fresh
/// process at the last run's rate took 10.64 µs and never waited.
#[derive(Debug, Clone)]
pub struct ProbeCommand {
    pub exe: std::path::PathBuf,
    pub config: Option<std::path::PathBuf>,
}

impl ProbeCommand {
    async fn run(
        &self,
        trades: usize,
        symbols: usize,
        rate: f64,
        timeout: Duration,
    ) -> Result<FullReport, BenchError> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("bench")
            .arg("--probe")
            .args(["--trades", &trades.to_string()])
            .args(["--symbols", &symbols.to_string()])
            .args(["--rate", &rate.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        let failed = |reason: String| {
            BenchError::Producer(format!(
                "paced run at {rate:.0}/s in {}: {reason}",
                self.exe.display()
            ))
        };
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| BenchError::Timeout {
                stage: "paced run",
                secs: timeout.as_secs(),
                done: 0,
                total: trades as u64,
            })?
            .map_err(|e| failed(e.to_string()))?;
        if !out.status.success() {
            return Err(failed(format!(
                "it exited with {} (its log is above)",
                out.status
            )));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| failed(format!("its report: {e}")))
    }
}

/// The full path (`bench::full`) against the configured broker. Must run
/// inside an actix `System`.
///
/// Unpaced, the feed outruns the pipeline by design: the lanes fill, the
/// level rises, and from SOFT up the trades go without `vendor_data`. So
/// an unpaced run is the path's maximum, not its NORMAL rate; that is
/// searched for after it, offering falling fractions of the maximum
/// (each run a fresh daemon in a process of its own, `ProbeCommand`, half
/// the trades) until one keeps up (`NormalProbe::judged`), or rising ones
/// when the first does, then halving the step between the highest that
/// kept up and the lowest that did not `REFINE_STEPS` times.
pub async fn run_full(
    base: &Config,
    trades: usize,
    symbols: usize,
    rate: Option<f64>,
    timeout: Duration,
    probes: &ProbeCommand,
) -> Result<FullBench, BenchError> {
    let run = measure_full(base, trades, symbols, rate, timeout, true).await;
    // What the run freed goes back to the OS while the paced runs, in
    // processes of their own, need the memory.
    release_freed_memory();
    let run = run?;
    let (search, sustained) = match rate {
        Some(_) => (Vec::new(), None),
        None => {
            let n = (trades / 2).max(1_000);
            let unpaced = run.end_to_end_per_s;
            search_normal(|fraction, refine| async move {
                let offered = unpaced * fraction;
                let r = probes.run(n, symbols, offered, timeout).await?;
                Ok(NormalProbe::judged(r, n, fraction, offered, refine))
            })
            .await?
        }
    };
    Ok(FullBench {
        run,
        normal_search: search,
        sustained_normal_per_s: sustained,
    })
}

/// Runs both measurements against the configured broker. Must run inside an
/// actix `System`. Uses a throw-away data directory and topics of its own.
pub async fn run(
    base: &Config,
    trades: usize,
    timeout: Duration,
) -> Result<BenchReport, BenchError> {
    let (mut cfg, dir) = bench_config(base);
    // the synthetic trades carry exchange BENCH, so the consumer reads that
    // topic: a feed of that exchange that never runs
    cfg.feeds.clear();
    let feed = cfg.feeds.named("binance");
    feed.enabled = false;
    feed.exchange = "BENCH".to_string();
    let result = measure(&cfg, trades, timeout).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(cfg: &Config, n: usize, timeout: Duration) -> Result<BenchReport, BenchError> {
    let rows = synthetic(n);
    let d = daemon::start(cfg.clone()).await?;

    // The ceiling: the same encoded bytes, straight into rdkafka.
    let registry = crate::kafka::registry::Registry::open(cfg)?;
    let codec = Arc::new(crate::kafka::registry::codec(registry.as_dyn(), cfg)?);
    let raw_topic = format!("{}.raw", cfg.kafka.trades_topic_prefix);
    // The embedded cluster creates topics on first use (and has no admin
    // API); a real broker may not, so create it there.
    if !cfg.kafka.is_embedded() {
        crate::kafka::ensure_topics(
            &cfg.kafka,
            &d.bootstrap,
            std::slice::from_ref(&raw_topic),
            cfg.kafka.embedded_partitions,
        )
        .await?;
    }
    let payloads: Vec<Encoded> = rows
        .iter()
        .map(|t| {
            Ok(Encoded {
                topic: raw_topic.clone(),
                key: t.symbol.clone(),
                payload: codec.encode_trade(t)?,
            })
        })
        .collect::<Result<_, crate::kafka::avro::AvroError>>()?;
    let record_bytes = payloads.first().map(|p| p.payload.len()).unwrap_or(0);
    let producer: FutureProducer =
        crate::kafka::producer_config(&cfg.kafka, &d.bootstrap).create()?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(n);
    for p in &payloads {
        deliveries.push(enqueue(&producer, p).await?);
    }
    let mut acked = futures::stream::iter(deliveries).buffer_unordered(4096);
    while let Some(r) = acked.next().await {
        match r {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(BenchError::Client(e)),
            Err(_) => return Err(BenchError::Producer("delivery dropped".into())),
        }
    }
    let raw_secs = started.elapsed().as_secs_f64();
    drop(payloads);

    // End to end through the daemon's own actors, as fast as the lanes
    // take them: the pipeline's maximum, whatever the level.
    let commits_before = trades_commits(&d);
    let max = phase(&d, rows, None, timeout).await?;
    let commits_max = trades_commits(&d) - commits_before;

    // The sustainable NORMAL rate: offered at falling fractions of the
    // maximum until a run keeps up with the level NORMAL throughout.
    // Keeping up: the lanes did not slow the sender (it sent at >= 95 % of
    // the offered rate) and the last commit followed the last send within
    // a bounded tail (one final flush, not a growing backlog).
    // Each paced run lasts about 5 s (or n/4 trades if that is more), long
    // enough that one final flush does not dominate.
    let mut steps = Vec::new();
    let mut sustainable = None;
    for (i, fraction) in [0.9, 0.75, 0.6, 0.45, 0.3, 0.15].into_iter().enumerate() {
        wait_for_normal(&d, timeout).await?;
        let offered = max.per_s * fraction;
        let per_phase = (n / 4).max((offered * 5.0) as usize).max(500);
        let rows = synthetic_from(n * 100 * (i + 1), per_phase);
        let r = phase(&d, rows, Some(offered), timeout).await?;
        let sent_per_s = per_phase as f64 / r.send_secs;
        let ok = r.max_level == Level::Normal
            && sent_per_s >= 0.95 * offered
            && r.tail_secs <= (0.25 * r.send_secs).max(2.0);
        steps.push(PacedStep {
            offered_per_s: offered,
            sent_per_s,
            committed_per_s: r.per_s,
            tail_secs: r.tail_secs,
            max_level: r.max_level,
            sustained: ok,
        });
        if ok {
            sustainable = Some(sent_per_s);
            break;
        }
    }
    let report = BenchReport {
        broker: if cfg.kafka.is_embedded() {
            "embedded (librdkafka in-process cluster)".to_string()
        } else {
            cfg.kafka.brokers.clone()
        },
        trades: n,
        record_bytes,
        raw_produce_per_s: n as f64 / raw_secs,
        end_to_end_per_s: max.per_s,
        ratio: max.per_s / (n as f64 / raw_secs),
        commits: commits_max,
        max_level: max.max_level,
        sustainable_normal_per_s: sustainable,
        sustainable_ratio: sustainable.map(|s| s / (n as f64 / raw_secs)),
        paced: steps,
    };
    d.shutdown(Duration::from_secs(10)).await?;
    Ok(report)
}

/// The trades writer's successful commits so far.
fn trades_commits(d: &daemon::Daemon) -> u64 {
    d.metrics
        .writer_commits
        .with_label_values(&["trades", "ok"])
        .get()
}

/// One end-to-end run.
struct PhaseResult {
    /// Trades per second from the first send to the last committed row.
    per_s: f64,
    /// Seconds spent sending (longer than planned when the lanes pushed back).
    send_secs: f64,
    /// Seconds from the last send to the last committed row.
    tail_secs: f64,
    max_level: Level,
}

/// Sends `rows` on the tier-1 lane (at `rate` per second when given, else
/// as fast as the lane takes them) and waits until all are committed.
async fn phase(
    d: &daemon::Daemon,
    rows: Vec<TradeV2>,
    rate: Option<f64>,
    timeout: Duration,
) -> Result<PhaseResult, BenchError> {
    let committed = || d.metrics.writer_rows.with_label_values(&["trades"]).get();
    let target = committed() + rows.len() as u64;
    let n = rows.len();
    let mut max_level = d.status.supervisor.borrow().level.level;
    let mut level_rx = d.status.supervisor.clone();
    let started = tokio::time::Instant::now();
    // Paced in 10 ms slices so the offered rate is smooth.
    let per_slice = rate.map(|r| ((r / 100.0).ceil() as usize).max(1));
    for (sent, t) in rows.into_iter().enumerate() {
        if let (Some(slice), Some(r)) = (per_slice, rate)
            && sent.is_multiple_of(slice)
            && sent > 0
        {
            let due = started + Duration::from_secs_f64(sent as f64 / r);
            tokio::time::sleep_until(due).await;
        }
        // Tier 1: the rate is measured for what is never shed.
        send_batch(
            &d.producer.lanes,
            Tier::One,
            vec![Outgoing::trade(t, Tier::One)],
        )
        .await
        .map_err(|e| BenchError::Producer(e.to_string()))?;
        if level_rx.has_changed().unwrap_or(false) {
            max_level = max_level.max(level_rx.borrow_and_update().level.level);
        }
    }
    let send_secs = started.elapsed().as_secs_f64();
    // Commit the tail now instead of waiting out writer.max_age_ms, which
    // would measure the age limit rather than the pipeline.
    d.drain_and_flush(timeout).await?;
    while committed() < target {
        if started.elapsed() > timeout {
            return Err(BenchError::Timeout {
                stage: "end-to-end",
                secs: timeout.as_secs(),
                done: committed(),
                total: target,
            });
        }
        max_level = max_level.max(d.status.supervisor.borrow().level.level);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    max_level = max_level.max(d.status.supervisor.borrow().level.level);
    Ok(PhaseResult {
        per_s: n as f64 / secs,
        send_secs,
        tail_secs: secs - send_secs,
        max_level,
    })
}

/// Waits until the degradation level is back at NORMAL (after the
/// unpaced run it may have risen; it drops one level per cooldown).
async fn wait_for_normal(d: &daemon::Daemon, timeout: Duration) -> Result<(), BenchError> {
    let started = tokio::time::Instant::now();
    while d.status.supervisor.borrow().level.level != Level::Normal {
        if started.elapsed() > timeout {
            return Err(BenchError::Producer(
                "degradation level did not return to NORMAL".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
