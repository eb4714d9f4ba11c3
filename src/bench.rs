//! `ticklake bench`: the sustainable NORMAL throughput end to end (producer →
//! Kafka → consumer → committed Iceberg), next to the broker's ceiling: a
//! bare rdkafka producer sending records of the same size to the same broker.
//! Run it on a release build; a debug build measures the compiler.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::producer::FutureProducer;
use serde::Serialize;

use crate::actors::producer::{Encoded, enqueue};
use crate::config::Config;
use crate::daemon::{self, DaemonError};
use crate::instruments::Tier;
use crate::messages::producer::Outgoing;
use crate::model::{AssetClass, Dec8, Side, TradeV2, message_id, now_us};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaSetupError),
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Avro(#[from] crate::avro::AvroError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
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
    /// Highest degradation level during the end-to-end run.
    pub max_level: crate::degrade::level::Level,
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
            "end to end into committed Iceberg:        {:.0} trades/s ({} commits)",
            self.end_to_end_per_s, self.commits
        )?;
        writeln!(
            f,
            "degradation level during the run:         {} at most{}",
            self.max_level,
            if self.max_level == crate::degrade::level::Level::Normal {
                " (the rate above is the sustainable NORMAL rate)"
            } else {
                " (above NORMAL: the rate is not a NORMAL rate)"
            }
        )?;
        write!(
            f,
            "ratio end-to-end / raw:                   {:.3}",
            self.ratio
        )
    }
}

/// Synthetic trades over ten symbols, with distinct ids and exact prices.
fn synthetic(n: usize) -> Vec<TradeV2> {
    let symbols = [
        "BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "TRXUSDT",
        "AVAXUSDT", "LINKUSDT",
    ];
    let start = now_us();
    (0..n)
        .map(|i| {
            let symbol = symbols[i % symbols.len()];
            let id = (i / symbols.len()).to_string();
            TradeV2 {
                message_id: message_id("BENCH", "trade", symbol, &id),
                trade_id: format!("BENCH-{id}"),
                symbol: symbol.to_string(),
                exchange: "BENCH".to_string(),
                asset_class: AssetClass::Crypto,
                timestamp_us: start + i as i64,
                ingestion_timestamp_us: start + i as i64,
                price: Dec8::from_unscaled(6_500_000_000_000 + (i as i64 % 100_000))
                    .unwrap_or_default(),
                quantity: Dec8::from_unscaled(1_000_000 + (i as i64 % 997)).unwrap_or_default(),
                currency: "USDT".to_string(),
                side: if i % 2 == 0 { Side::Buy } else { Side::Sell },
                trade_conditions: Vec::new(),
                source_sequence: Some(i as i64),
                platform_sequence: None,
                vendor_data: Some(BTreeMap::from([(
                    "stream".to_string(),
                    "trade".to_string(),
                )])),
            }
        })
        .collect()
}

/// Runs both measurements against the configured broker. Must run inside an
/// actix `System`. Uses a throw-away data directory and topics of its own.
pub async fn run(
    base: &Config,
    trades: usize,
    timeout: Duration,
) -> Result<BenchReport, BenchError> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("ticklake-bench-{run_id}"));
    let mut cfg = base.clone();
    cfg.data_dir = dir.clone();
    cfg.lake.catalog_uri = String::new();
    cfg.lake.warehouse = String::new();
    cfg.http.enabled = false;
    cfg.feeds.binance.enabled = false;
    // the synthetic trades carry exchange BENCH, so the consumer reads that topic
    cfg.feeds.binance.exchange = "BENCH".to_string();
    cfg.kafka.trades_topic_prefix = format!("bench{run_id}.trades");
    cfg.kafka.dead_letter_topic = format!("bench{run_id}.dead_letters");
    cfg.kafka.consumer_group = format!("bench{run_id}-lake");
    let result = measure(&cfg, trades, timeout).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(cfg: &Config, n: usize, timeout: Duration) -> Result<BenchReport, BenchError> {
    let rows = synthetic(n);
    let d = daemon::start(cfg.clone()).await?;

    // The ceiling: the same encoded bytes, straight into rdkafka.
    let registry = crate::registry::LocalRegistry::open(&cfg.data_dir_abs())?;
    let codec = Arc::new(crate::registry::codec(&registry)?);
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
        .collect::<Result<_, crate::avro::AvroError>>()?;
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

    // End to end through the daemon's own actors.
    let committed = || d.metrics.writer_rows.with_label_values(&["trades"]).get();
    let commits = || {
        d.metrics
            .writer_commits
            .with_label_values(&["trades", "ok"])
            .get()
    };
    let commits_before = commits();
    let started = Instant::now();
    let transitions_before = d.status.supervisor.borrow().level.history.len();
    for t in rows {
        // Tier 1: the sustainable rate is measured for what is never shed.
        d.producer
            .lanes
            .send_data(Tier::One.index(), Outgoing::trade(t, Tier::One))
            .await
            .map_err(|e| BenchError::Producer(e.to_string()))?;
    }
    // Commit the tail now instead of waiting out writer.max_age_ms, which
    // would measure the age limit rather than the pipeline.
    d.drain_and_flush(timeout).await?;
    while committed() < n as u64 {
        if started.elapsed() > timeout {
            return Err(BenchError::Timeout {
                stage: "end-to-end",
                secs: timeout.as_secs(),
                done: committed(),
                total: n as u64,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e2e_secs = started.elapsed().as_secs_f64();
    // The highest degradation level reached during the run: the figure is
    // the NORMAL rate only if this stayed NORMAL.
    let max_level = {
        let sup = d.status.supervisor.borrow();
        sup.level
            .history
            .iter()
            .skip(transitions_before)
            .map(|t| t.to)
            .chain(std::iter::once(sup.level.level))
            .max()
            .unwrap_or(crate::degrade::level::Level::Normal)
    };
    let report = BenchReport {
        broker: if cfg.kafka.is_embedded() {
            "embedded (librdkafka in-process cluster)".to_string()
        } else {
            cfg.kafka.brokers.clone()
        },
        trades: n,
        record_bytes,
        raw_produce_per_s: n as f64 / raw_secs,
        end_to_end_per_s: n as f64 / e2e_secs,
        ratio: raw_secs / e2e_secs,
        commits: commits() - commits_before,
        max_level,
    };
    d.shutdown(Duration::from_secs(10)).await?;
    Ok(report)
}
