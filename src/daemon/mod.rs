//! Wires the actors together and runs them until a signal arrives:
//! feed → producer → Kafka → consumer → writers → Iceberg.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

use crate::actors::binance_feed::{BinanceFeedActor, StopFeed};
use crate::actors::consumer::{ConsumerActor, Routes};
use crate::actors::degradation::{DegradationSupervisor, SupervisorInputs};
use crate::actors::producer::{ProducerActor, ProducerHandle, ProducerSettings};
use crate::kafka::encoder::Encoder;
use crate::actors::query::QueryActor;
use crate::actors::tail::TailActor;
use crate::actors::writer::{FlushPolicy, WriterActor};
use crate::config::Config;
use crate::degrade::level::LevelMachine;
use crate::degrade::spill::SpillLog;
use crate::kafka::{self, EmbeddedCluster, KafkaSetupError};
use crate::lake::commit::{KafkaOffsets, current_offsets};
use crate::lake::{self, LakeError, TableKind};
use crate::messages::producer::ProducerControl;
use crate::messages::writer::{AddCommitListener, Flush, GetPositions, SetRestarter};
use crate::metrics::{Metrics, MetricsError};
use crate::kafka::registry::{LocalRegistry, RegistryError};
use crate::status::StatusSources;

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
    #[error(transparent)]
    Producer(#[from] crate::actors::producer::ProducerError),
    #[error("spill log: {0}")]
    Spill(#[from] crate::degrade::spill::SpillError),
    #[error(transparent)]
    Instruments(#[from] crate::instruments::InstrumentsError),
    #[error("config: {0}")]
    Config(String),
    #[error(transparent)]
    Writer(#[from] crate::messages::writer::WriterError),
}

/// Where every table starts reading: its snapshot's offsets when they were
/// recorded on this cluster and still lie within the partitions, else the
/// beginning of each partition (logged, never silent).
fn start_positions(
    table: &str,
    recorded: Option<(i64, KafkaOffsets)>,
    cluster_id: &str,
    topics: &[(String, Vec<i32>)],
    watermarks: &BTreeMap<(String, i32), (i64, i64)>,
) -> KafkaOffsets {
    let mut start = KafkaOffsets {
        cluster_id: cluster_id.to_string(),
        topics: BTreeMap::new(),
    };
    let recorded = match recorded {
        Some((snap, o)) if o.cluster_id == cluster_id => Some((snap, o)),
        Some((snap, o)) => {
            tracing::warn!(table, snapshot_id = snap, recorded_cluster = %o.cluster_id, cluster = cluster_id,
                "snapshot offsets belong to another kafka cluster; reading from the beginning");
            None
        }
        None => None,
    };
    for (topic, parts) in topics {
        for p in parts {
            let (lo, hi) = watermarks
                .get(&(topic.clone(), *p))
                .copied()
                .unwrap_or((0, 0));
            let next = match recorded.as_ref().and_then(|(_, o)| o.get(topic, *p)) {
                Some(n) if n <= hi => n.max(lo),
                Some(n) => {
                    tracing::warn!(table, topic = %topic, partition = p, recorded = n, high = hi,
                        "recorded offset lies past the partition end; reading from the beginning");
                    lo
                }
                None => lo,
            };
            start.set(topic, *p, next);
        }
    }
    start
}

/// Running daemon handles, for shutdown.
pub struct Daemon {
    feed: Option<Addr<BinanceFeedActor>>,
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
}

/// Builds and starts every actor. Must run inside an actix `System`.
pub async fn start(cfg: Config) -> Result<Daemon, DaemonError> {
    let metrics = Metrics::new()?;
    let data_dir = cfg.data_dir_abs();
    let registry = LocalRegistry::open(&data_dir)?;
    let codec = Arc::new(crate::kafka::registry::codec(&registry)?);

    let exchange = cfg.feeds.binance.exchange.clone();
    let trades_topic = cfg.kafka.trades_topic(&exchange);
    let dl_topic = cfg.kafka.dead_letter_topic.clone();
    // Equities loaded by `ticklake load asx` travel on their own topic.
    let asx_topic = cfg.kafka.trades_topic(crate::exchanges::ASX);
    let mut topic_names = vec![trades_topic.clone(), dl_topic.clone()];
    if !topic_names.contains(&asx_topic) {
        topic_names.insert(1, asx_topic);
    }

    let embedded = if cfg.kafka.is_embedded() {
        let c = EmbeddedCluster::start(&topic_names, cfg.kafka.embedded_partitions)?;
        tracing::info!(bootstrap = c.bootstrap(), "embedded kafka cluster started");
        Some(c)
    } else {
        None
    };
    let bootstrap = match &embedded {
        Some(c) => c.bootstrap().to_string(),
        None => cfg.kafka.brokers.clone(),
    };
    if embedded.is_none() {
        kafka::ensure_topics(
            &cfg.kafka,
            &bootstrap,
            &topic_names,
            cfg.kafka.embedded_partitions,
        )
        .await?;
    }

    // Cluster id, partitions and watermarks (blocking librdkafka calls).
    let (cluster_id, topics, watermarks, watermark_client) = {
        let kcfg = cfg.kafka.clone();
        let bootstrap = bootstrap.clone();
        let names = topic_names.clone();
        tokio::task::spawn_blocking(move || -> Result<_, DaemonError> {
            let mut cluster = String::new();
            let mut topics = Vec::new();
            for t in &names {
                let (id, parts) = kafka::cluster_and_partitions(&kcfg, &bootstrap, t)?;
                cluster = id;
                topics.push((t.clone(), parts));
            }
            let client: BaseConsumer = kafka::base_config(&kcfg, &bootstrap).create()?;
            let mut wm = BTreeMap::new();
            for (t, parts) in &topics {
                for p in parts {
                    wm.insert(
                        (t.clone(), *p),
                        client.fetch_watermarks(t, *p, Duration::from_secs(30))?,
                    );
                }
            }
            Ok((cluster, topics, wm, Arc::new(client)))
        })
        .await
        .map_err(|e| DaemonError::Join(e.to_string()))??
    };
    tracing::info!(cluster_id = %cluster_id, bootstrap = %bootstrap, "kafka ready");

    let catalog = lake::open_catalog(&cfg).await?;
    let trades_table = lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades).await?;
    let dl_table = lake::ensure_table(catalog.as_ref(), &cfg, TableKind::DeadLetters).await?;

    let trade_topics: Vec<_> = topics
        .iter()
        .filter(|(t, _)| *t != dl_topic)
        .cloned()
        .collect();
    let dl_topics: Vec<_> = topics
        .iter()
        .filter(|(t, _)| *t == dl_topic)
        .cloned()
        .collect();
    let trades_start = start_positions(
        "trades",
        current_offsets(&trades_table)?,
        &cluster_id,
        &trade_topics,
        &watermarks,
    );
    let dl_start = start_positions(
        "dead_letters",
        current_offsets(&dl_table)?,
        &cluster_id,
        &dl_topics,
        &watermarks,
    );

    let consumer: StreamConsumer = kafka::consumer_config(&cfg.kafka, &bootstrap).create()?;
    let mut tpl = TopicPartitionList::new();
    for start in [&trades_start, &dl_start] {
        for (t, parts) in &start.topics {
            for (p, off) in parts {
                tpl.add_partition_offset(t, *p, Offset::Offset(*off))?;
                tracing::info!(topic = %t, partition = p, offset = off, "consumer start position");
            }
        }
    }
    consumer.assign(&tpl)?;
    let consumer = Arc::new(consumer);

    let sup = &cfg.supervision;
    let restart_backoff = backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(sup.restart_backoff_initial_ms))
        .with_max_delay(Duration::from_millis(sup.restart_backoff_max_ms))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    let policy = FlushPolicy {
        max_rows: cfg.writer.max_rows,
        max_age: Duration::from_millis(cfg.writer.max_age_ms),
        target_file_size: cfg.writer.target_file_size_bytes,
        delay_per_row: Duration::from_micros(cfg.chaos.writer_delay_us_per_row),
        breaker: cfg.breaker.commit.clone(),
        restart_backoff,
        fail_commits: 0,
        dedup_capacity: cfg.writer.dedup_capacity,
    };
    let window_us = i64::try_from(cfg.writer.dedup_window_secs)
        .unwrap_or(i64::MAX / 2_000_000)
        .saturating_mul(1_000_000);
    let recent = lake::commit::recent_message_ids(
        &trades_table,
        crate::model::now_us().saturating_sub(window_us),
    )
    .await?;
    tracing::info!(
        ids = recent.len(),
        window_secs = cfg.writer.dedup_window_secs,
        "recent trade ids read back for de-duplication"
    );
    if cfg.chaos.writer_delay_us_per_row > 0 {
        tracing::warn!(
            us_per_row = cfg.chaos.writer_delay_us_per_row,
            "chaos: the iceberg writer is slowed on purpose"
        );
    }
    let (fatal_tx, fatal) = tokio::sync::mpsc::unbounded_channel();
    install_panic_hook(metrics.clone(), fatal_tx.clone());
    if cfg.chaos.fail_trade_commits > 0 {
        tracing::warn!(
            commits = cfg.chaos.fail_trade_commits,
            "chaos: market.trades commits will fail on purpose"
        );
    }
    let trades = WriterActor::new(
        TableKind::Trades,
        catalog.clone(),
        lake::table_ident(&cfg, TableKind::Trades),
        lake::batch::arrow_schema(trades_table.metadata().current_schema())?,
        FlushPolicy {
            fail_commits: cfg.chaos.fail_trade_commits,
            ..policy.clone()
        },
        trades_start,
        metrics.clone(),
    )?
    .seed_committed(&recent)
    .with_fatal(fatal_tx.clone());
    let trades_state = trades.subscribe();
    let trades = trades.start();
    let dead_letters = WriterActor::new(
        TableKind::DeadLetters,
        catalog.clone(),
        lake::table_ident(&cfg, TableKind::DeadLetters),
        lake::batch::arrow_schema(dl_table.metadata().current_schema())?,
        policy,
        dl_start,
        metrics.clone(),
    )?
    .with_fatal(fatal_tx);
    let dl_state = dead_letters.subscribe();
    let dead_letters = dead_letters.start();
    // The tail and the query actor hear of every trades commit; told before
    // any row can reach the writer, so none is missed.
    let tail_ctx = Context::<TailActor>::new();
    let tail = tail_ctx.address();
    let engine = crate::query::session::engine(&cfg, Some(tail.clone().recipient())).await?;
    let trades_schema = engine.trades_schema();
    let query = QueryActor::new(Arc::new(engine)).start();
    trades.do_send(AddCommitListener(tail.clone().recipient()));
    trades.do_send(AddCommitListener(query.clone().recipient()));
    tail_ctx.run(
        TailActor::new(&cluster_id, cfg.tail.max_rows, trades_schema)
            .with_writer(trades.clone().recipient())
            .with_metrics(metrics.clone()),
    );
    let consumer_actor = ConsumerActor::new(
        consumer,
        codec.clone(),
        Routes {
            trades_topics: trade_topics
                .iter()
                .map(|(t, _)| t.clone())
                .collect::<HashSet<_>>(),
            dead_letter_topic: dl_topic.clone(),
            trades: trades.clone(),
            dead_letters: dead_letters.clone(),
            tail: Some(tail.clone().recipient()),
        },
        cluster_id.clone(),
        metrics.clone(),
        cfg.writer.max_rows,
        restart_backoff,
    );
    let consumer_state = consumer_actor.subscribe();
    // Supervised: a consumer whose loop ends, or that the watchdog stops,
    // is restarted at the writers' positions.
    let consumer_addr = Supervisor::start(move |_| consumer_actor);
    for w in [&trades, &dead_letters] {
        // Sent before any rows can reach the writer, so no commit misses it.
        w.do_send(AddCommitListener(consumer_addr.clone().recipient()));
        w.do_send(SetRestarter(consumer_addr.clone().recipient()));
    }

    let spill = SpillLog::open(&cfg.spill_dir(), cfg.spill.segment_bytes)?;
    let rdk: FutureProducer = kafka::producer_config(&cfg.kafka, &bootstrap).create()?;
    let (producer_actor, producer) = ProducerActor::new(
        rdk,
        Encoder::new(codec, &cfg.kafka),
        metrics.clone(),
        &cfg.lanes.capacity,
        spill,
        ProducerSettings {
            breaker: cfg.breaker.producer.clone(),
            stall: Duration::from_millis(cfg.breaker.stall_ms),
            replay_batch: cfg.spill.replay_batch,
        },
    )?;
    let _producer_addr = Supervisor::start(move |_| producer_actor);

    let machine = LevelMachine::new(cfg.degradation.clone())
        .map_err(|e| DaemonError::Config(e.to_string()))?;
    let (supervisor, supervisor_state) = DegradationSupervisor::new(
        machine,
        SupervisorInputs {
            lanes: producer.lanes.clone(),
            producer: producer.state.clone(),
            writers: vec![trades_state.clone(), dl_state.clone()],
            watermarks: watermark_client.clone(),
            topics: topics.clone(),
            consumer: Some(consumer_addr),
            watchdog: Duration::from_secs(cfg.supervision.watchdog_secs),
        },
        metrics.clone(),
    );
    Supervisor::start(move |_| supervisor);

    let instruments = Arc::new(cfg.instruments()?);
    let feed = if cfg.feeds.binance.enabled {
        let fcfg = cfg.feeds.binance.clone();
        let lanes = producer.lanes.clone();
        let m = metrics.clone();
        Some(Supervisor::start(move |_| {
            BinanceFeedActor::new(fcfg, lanes, instruments, m)
        }))
    } else {
        tracing::info!("binance feed disabled");
        None
    };

    let status = StatusSources {
        started: Instant::now(),
        feed: feed.clone(),
        producer: producer.state.clone(),
        consumer: consumer_state,
        writers: vec![trades_state, dl_state],
        supervisor: supervisor_state,
        metrics: metrics.clone(),
    };

    let http_addr = if cfg.http.enabled {
        let api = crate::api::ApiState {
            query: query.clone().recipient(),
        };
        let a = crate::http::start(&cfg.http.listen, metrics.clone(), status.clone(), Some(api))
            .map_err(|source| DaemonError::Http {
                listen: cfg.http.listen.clone(),
                source,
            })?;
        tracing::info!(addr = %a, "http endpoints up");
        Some(a)
    } else {
        None
    };

    Ok(Daemon {
        feed,
        producer,
        status,
        bootstrap,
        trades,
        dead_letters,
        watermark_client,
        topics,
        _embedded: embedded,
        fatal,
        metrics,
        http_addr,
        tail,
        query,
    })
}

/// A panic inside an actor kills that actor's task, where no supervisor
/// can see it. Count it, and stop the daemon non-zero so the process
/// supervisor (systemd) restarts it: the restart resumes exactly once from
/// the snapshots' offsets and the spill log.
fn install_panic_hook(metrics: Metrics, fatal: tokio::sync::mpsc::UnboundedSender<String>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        metrics.actor_panics.with_label_values(&[&thread]).inc();
        let _ = fatal.send(format!("panic in thread {thread}: {info}"));
        previous(info);
    }));
}

/// Why the daemon stopped.
#[derive(Debug)]
pub enum Exit {
    /// SIGINT or SIGTERM, after a graceful shutdown.
    Signal,
    /// A permanent failure; the lake is consistent, restart resumes.
    Fatal(String),
}

impl Daemon {
    /// Runs until a signal (then shuts down gracefully) or a fatal error.
    pub async fn run_until_stopped(mut self) -> Result<Exit, DaemonError> {
        let fatal = tokio::select! {
            _ = wait_for_signal() => None,
            r = self.fatal.recv() => Some(r.unwrap_or_else(|| "writers stopped".into())),
        };
        match fatal {
            Some(reason) => Ok(Exit::Fatal(reason)),
            None => {
                tracing::info!("shutting down");
                self.shutdown(Duration::from_secs(30)).await?;
                Ok(Exit::Signal)
            }
        }
    }

    /// Graceful stop: close the feed, deliver what the producer holds, let
    /// the consumer catch up with the topics (bounded), then commit what the
    /// writers buffer. With the embedded cluster this is what keeps a clean
    /// shutdown from losing records that were produced but not yet landed.
    pub async fn shutdown(self, drain_timeout: Duration) -> Result<(), DaemonError> {
        if let Some(feed) = &self.feed {
            feed.send(StopFeed).await?;
        }
        self.drain_and_flush(drain_timeout).await?;
        // Everything is committed. The Kafka clients inside the actors only
        // go away when the process exits; tearing the embedded cluster down
        // before them would just make them log connection errors.
        std::mem::forget(self._embedded);
        Ok(())
    }

    /// Delivers what the producer holds, waits (bounded) until the writers
    /// have taken in every record up to the topics' high watermarks, then
    /// commits what they buffer.
    pub async fn drain_and_flush(&self, drain_timeout: Duration) -> Result<(), DaemonError> {
        let deadline = Instant::now() + drain_timeout;
        // Control overtakes data, so wait for the lanes to empty before
        // asking for the flush.
        while self
            .producer
            .lanes
            .stats()
            .lanes
            .iter()
            .any(|l| l.depth > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .producer
            .lanes
            .send_control(ProducerControl::Flush(tx))
            .is_ok()
        {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "producer flush failed"),
                Err(_) => tracing::error!("producer went away during flush"),
            }
        }
        loop {
            let client = self.watermark_client.clone();
            let topics = self.topics.clone();
            // Stops at the first error: with the broker away there is
            // nothing more to drain from it.
            let (highs, _) = tokio::task::spawn_blocking(move || {
                kafka::high_watermarks(&client, &topics, Duration::from_secs(5))
            })
            .await
            .map_err(|e| DaemonError::Join(e.to_string()))?;
            let a = self.trades.send(GetPositions).await?;
            let b = self.dead_letters.send(GetPositions).await?;
            let behind = highs
                .iter()
                .filter(|((t, p), hi)| a.get(t, *p).or(b.get(t, *p)).unwrap_or(0) < **hi)
                .count();
            if behind == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    partitions_behind = behind,
                    "shutdown drain timed out; the rest stays in kafka"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for w in [&self.trades, &self.dead_letters] {
            if let Err(e) = w.send(Flush).await? {
                tracing::error!(error = %e, "final flush failed");
            }
        }
        Ok(())
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
