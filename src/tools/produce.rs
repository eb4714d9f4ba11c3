//! `ticklake produce`: parse recorded frames with the same parser the feed
//! uses and publish them to Kafka exactly as the daemon would. Used to
//! backfill from recordings and to load a broker for tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::config::Config;
use crate::exchanges::{Frame, ParseCtx};
use crate::kafka::encoder::{Encoder, enqueue};
use crate::kafka::registry::Registry;
use crate::messages::producer::Record;
use crate::model::{DeadLetter, now_us};
use crate::tools::capture;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error(
        "`produce` needs a real broker; kafka.brokers is `embedded`, whose data ends with the process"
    )]
    Embedded,
    #[error(transparent)]
    Capture(#[from] capture::CaptureError),
    #[error(transparent)]
    Registry(#[from] crate::kafka::registry::RegistryError),
    #[error(transparent)]
    Avro(#[from] crate::kafka::avro::AvroError),
    #[error(transparent)]
    Setup(#[from] crate::kafka::KafkaSetupError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{failed} records were not delivered; first error: {first}")]
    Delivery { failed: usize, first: String },
    #[error(transparent)]
    Locked(#[from] crate::daemon::lock::LockError),
    #[error(transparent)]
    Instruments(#[from] crate::instruments::InstrumentsError),
    #[error("--feed {0}: no such feed in the config (feeds.{0})")]
    NoFeed(String),
}

/// What was published.
#[derive(Debug, Default, Serialize)]
pub struct ProduceReport {
    pub frames: usize,
    pub trades: usize,
    pub dead_letters: usize,
    pub skipped: BTreeMap<&'static str, usize>,
}

/// Publishes the frames of `captures` as feed `feed` (its protocol and
/// exchange) would have.
pub async fn produce(
    cfg: &Config,
    feed: &str,
    captures: &[PathBuf],
) -> Result<ProduceReport, ProduceError> {
    let feed = cfg
        .feeds
        .get(feed)
        .ok_or_else(|| ProduceError::NoFeed(feed.to_string()))?;
    let protocol = crate::exchanges::protocol(feed.protocol());
    if cfg.kafka.is_embedded() {
        return Err(ProduceError::Embedded);
    }
    let _lock = crate::daemon::lock::DataDirLock::acquire(&cfg.data_dir_abs())?;
    let frames = capture::read_captures(captures)?;
    let registry = Registry::open(cfg)?;
    let codec = Arc::new(crate::kafka::registry::codec(registry.as_dyn(), cfg)?);
    let mut encoder = Encoder::new(codec, &cfg.kafka);
    let exchange = feed.exchange.clone();
    // The feed's symbol rule: a recorded frame passes or fails as it would live.
    let instruments = cfg.instruments()?;
    let symbols = instruments.symbol_rule(&exchange)?;
    let topics = vec![
        cfg.kafka.trades_topic(&exchange),
        cfg.kafka.dead_letter_topic.clone(),
    ];
    crate::kafka::ensure_topics(
        &cfg.kafka,
        &cfg.kafka.brokers,
        &topics,
        cfg.kafka.embedded_partitions,
    )
    .await?;
    let producer: rdkafka::producer::FutureProducer =
        crate::kafka::producer_config(&cfg.kafka, &cfg.kafka.brokers).create()?;
    let source = captures
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",");

    let mut report = ProduceReport {
        frames: frames.len(),
        ..ProduceReport::default()
    };
    let mut deliveries = Vec::new();
    let mut trades = Vec::new();
    for f in &frames {
        // The recording's receive time stands in for ingestion time, so the
        // same capture always produces the same records.
        let received = f.ts.map(|t| (t * 1e6) as i64).unwrap_or_else(now_us);
        let ctx = ParseCtx {
            exchange: &exchange,
            symbols,
            received_us: received,
        };
        trades.clear();
        let record = match protocol.parse(&f.data, &ctx, &mut trades) {
            Ok(Frame::Trades(_)) => {
                for t in trades.drain(..) {
                    report.trades += 1;
                    let enc = encoder.encode(&Record::Trade(Box::new(t)))?;
                    deliveries.push(enqueue(&producer, &enc).await?);
                }
                continue;
            }
            Ok(Frame::Skipped(kind)) => {
                *report.skipped.entry(kind).or_default() += 1;
                continue;
            }
            Err(e) => {
                report.dead_letters += 1;
                Record::DeadLetter(Box::new(DeadLetter::new(
                    &exchange,
                    &source,
                    received,
                    e.to_string(),
                    f.data.as_bytes().to_vec(),
                )))
            }
        };
        let enc = encoder.encode(&record)?;
        deliveries.push(enqueue(&producer, &enc).await?);
    }
    let mut failed = 0;
    let mut first = String::new();
    let mut results = futures::stream::iter(deliveries).buffered(1024);
    while let Some(r) = results.next().await {
        let err = match r {
            Ok(Ok(_)) => continue,
            Ok(Err((e, _))) => e.to_string(),
            Err(_) => "producer dropped".to_string(),
        };
        if failed == 0 {
            first = err;
        }
        failed += 1;
    }
    if failed > 0 {
        return Err(ProduceError::Delivery { failed, first });
    }
    Ok(report)
}
