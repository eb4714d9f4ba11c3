//! Wires the actors together and runs them until a signal arrives:
//! feed → producer → Kafka → consumer → writers → Iceberg, with the tail
//! and the query actor beside the writers.
//!
//! One stage at a time, the last stage first, each earlier one handed the
//! next one's address (as Quickwit spawns its indexing pipeline): Kafka
//! set-up and start positions (`kafka`), then the lake side (writers, tail,
//! query), the consumer, the producer, the degradation supervisor, the
//! feed and HTTP (`stages`). `shutdown` runs and stops the daemon.

mod kafka;
pub mod lock;
mod panics;
mod shutdown;
mod stages;

use std::time::Instant;

use actix::prelude::*;
use rdkafka::consumer::BaseConsumer;
use std::sync::Arc;

use crate::actors::feed::FeedActor;
use crate::actors::observe::{Disabled, StatusNode};
use crate::actors::producer::ProducerHandle;
use crate::actors::query::QueryActor;
use crate::actors::tail::TailActor;
use crate::actors::writer::WriterActor;
use crate::config::Config;
use crate::kafka::registry::{Registry, RegistryError};
use crate::kafka::{EmbeddedCluster, KafkaSetupError};
use crate::lake::LakeError;
use crate::lake::TableKind;
use crate::metrics::{Metrics, MetricsError};
use crate::status::StatusSources;
pub use shutdown::wait_for_signal;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error("kafka: {0}")]
    KafkaClient(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Avro(#[from] crate::kafka::avro::AvroError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("http server on {listen}: {source}")]
    Http {
        listen: String,
        source: std::io::Error,
    },
    #[error("background task failed: {0}")]
    Join(String),
    #[error("actor mailbox closed: {0}")]
    Mailbox(#[from] MailboxError),
    #[error(transparent)]
    Query(#[from] crate::query::session::SessionError),
    #[error("SQL workers (api.sql_isolation): {0}")]
    SqlWorkers(String),
    #[error(transparent)]
    Producer(#[from] crate::actors::producer::ProducerError),
    #[error("spill log: {0}")]
    Spill(#[from] crate::degrade::spill::SpillError),
    #[error(transparent)]
    Instruments(#[from] crate::instruments::InstrumentsError),
    #[error(transparent)]
    Feed(#[from] crate::actors::feed::FeedError),
    #[error("config: {0}")]
    Config(String),
    #[error(transparent)]
    Writer(#[from] crate::messages::writer::WriterError),
    #[error(transparent)]
    Locked(#[from] lock::LockError),
    #[error("shared dedup (dedup.redis_url): {0}")]
    Shared(#[from] crate::dedup::shared::SharedError),
}

/// Running daemon handles, for shutdown.
pub struct Daemon {
    feeds: Vec<Addr<FeedActor>>,
    /// The producer's mailbox and state, for in-process publishers
    /// (`ticklake bench`).
    pub producer: ProducerHandle,
    /// Everything `/status` reads.
    pub status: StatusSources,
    /// Bootstrap servers in use (the embedded cluster's when embedded).
    pub bootstrap: String,
    trades: Addr<WriterActor>,
    dead_letters: Addr<WriterActor>,
    watermark_client: Arc<BaseConsumer>,
    topics: Vec<(String, Vec<i32>)>,
    _embedded: Option<EmbeddedCluster>,
    fatal: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub metrics: Metrics,
    pub http_addr: Option<std::net::SocketAddr>,
    /// The uncommitted trades, and the queries over them and the lake.
    pub tail: Addr<TailActor>,
    pub query: Addr<QueryActor>,
    /// The consumer's, the tail's and the writers' thread.
    lake_arbiter: actix::Arbiter,
    /// The writer of `market.gaps`, flushed at shutdown.
    gaps: Addr<crate::actors::gaps::GapsActor>,
    /// This process's claim on the data directory, released at exit.
    _lock: lock::DataDirLock,
    /// What a panic in the process reaches while this daemon runs.
    _panics: panics::PanicSink,
}

/// Builds and starts every actor. Must run inside an actix `System`.
pub async fn start(cfg: Config) -> Result<Daemon, DaemonError> {
    let lock = lock::DataDirLock::acquire(&cfg.data_dir_abs())?;
    let metrics = Metrics::new()?;
    preregister(&cfg, &metrics);
    let registry = Registry::open(&cfg)?;
    let codec = Arc::new(crate::kafka::registry::codec(registry.as_dyn(), &cfg)?);
    tracing::info!(
        kind = registry.kind(),
        registry = %registry.status(cfg.http.enabled),
        "schema registry ready"
    );
    let mut kafka = kafka::prepare(&cfg).await?;

    let (fatal_tx, fatal) = tokio::sync::mpsc::unbounded_channel();
    let panics = panics::register(metrics.clone(), fatal_tx.clone());
    let lake = stages::lake(&cfg, &kafka, &metrics, fatal_tx).await?;
    let consumer = stages::consumer(&cfg, &kafka, &lake, codec.clone(), &metrics)?;
    let producer = stages::producer(&cfg, &kafka, lake.ledger.clone(), codec, &metrics)?;
    let supervisor = stages::supervisor(
        &cfg,
        &kafka,
        &lake,
        &producer,
        consumer.as_ref().map(|c| c.addr.clone()),
        &metrics,
    )?;
    let shared = stages::shared(&cfg, &metrics)?;
    let feeds = stages::feeds(&cfg, &producer, &lake, shared.as_ref(), &metrics).await?;

    let mut actors: Vec<Arc<dyn StatusNode>> = Vec::new();
    if feeds.is_empty() {
        actors.push(Arc::new(Disabled("feed")));
    }
    actors.extend(feeds.iter().map(|f| f.state.clone()));
    actors.push(Arc::new(producer.state.clone()));
    actors.push(match consumer {
        Some(c) => c.state,
        None => Arc::new(Disabled("consumer")),
    });
    actors.extend(lake.states);
    actors.extend([lake.tail_state, lake.query_state]);
    actors.push(Arc::new(supervisor.clone()));
    let status = StatusSources {
        started: Instant::now(),
        actors,
        producer: producer.state.clone(),
        supervisor,
        metrics: metrics.clone(),
        last_trades: Default::default(),
        schema_registry: registry.status(cfg.http.enabled),
        catalog: crate::lake::catalog_status(&cfg),
    };
    let admin = cfg.chaos.admin.then(|| crate::api::admin::ChaosControls {
        broker: kafka.embedded.as_ref().and_then(EmbeddedCluster::faults),
        writer: lake.writer_faults.clone(),
    });
    let http_addr = stages::http(&cfg, &metrics, &status, &lake.query, admin, &registry)?;

    Ok(Daemon {
        feeds: feeds.into_iter().map(|f| f.addr).collect(),
        producer,
        status,
        bootstrap: kafka.bootstrap.clone(),
        trades: lake.trades,
        dead_letters: lake.dead_letters,
        watermark_client: kafka.watermark_client.clone(),
        // What shutdown waits for the writers to have read: nothing
        // without them.
        topics: if cfg.writer.enabled {
            kafka.topics.clone()
        } else {
            Vec::new()
        },
        _embedded: kafka.embedded.take(),
        fatal,
        metrics,
        http_addr,
        tail: lake.tail,
        query: lake.query,
        gaps: lake.gaps.clone(),
        lake_arbiter: lake.arbiter,
        _lock: lock,
        _panics: panics,
    })
}

/// The series an alert or a dashboard needs before their first event, for
/// what this config runs: its feeds' exchanges, the producer's breaker and
/// each writer's commit breaker (named as `actors::writer` names them).
fn preregister(cfg: &Config, metrics: &Metrics) {
    let exchanges: Vec<&str> = cfg.feeds.enabled().map(|f| f.exchange.as_str()).collect();
    let tables = [TableKind::Trades.name(), TableKind::DeadLetters.name()];
    let commit: Vec<String> = tables.iter().map(|t| format!("commit.{t}")).collect();
    let mut breakers = vec!["producer"];
    breakers.extend(commit.iter().map(String::as_str));
    metrics.preregister(&exchanges, &breakers, &tables);
}

/// Why the daemon stopped.
#[derive(Debug)]
pub enum Exit {
    /// SIGINT or SIGTERM, after a graceful shutdown.
    Signal,
    /// A permanent failure; the lake is consistent, restart resumes.
    Fatal(String),
}
