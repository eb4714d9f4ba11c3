//! The daemon's stages, spawned last stage first: each function starts one
//! stage and returns the addresses and observed states the earlier stages
//! and `/status` need.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::DaemonError;
use super::kafka::{KafkaReady, assigned_consumer, start_positions};
use crate::actors::consumer::{ConsumerActor, Routes};
use crate::actors::degradation::{DegradationSupervisor, SupervisorInputs, SupervisorState};
use crate::actors::feed::FeedActor;
use crate::actors::maintenance::{MaintenanceActor, MaintenanceMetrics};
use crate::actors::observe::{RestartPolicy, StatusNode};
use crate::actors::producer::{ProducerActor, ProducerHandle, ProducerSettings};
use crate::actors::query::QueryActor;
use crate::actors::tail::TailActor;
use crate::actors::writer::{FlushPolicy, WriterActor, WriterState};
use crate::config::Config;
use crate::dedup::shared::SharedIds;
use crate::degrade::level::LevelMachine;
use crate::degrade::spill::SpillLog;
use crate::kafka;
use crate::kafka::acks::AckLedger;
use crate::kafka::avro::Codec;
use crate::kafka::encoder::Encoder;
use crate::lake::commit::{KafkaOffsets, current_offsets};
use crate::lake::{self, TableKind};
use crate::messages::writer::{AddCommitListener, SetRestarter};
use crate::metrics::Metrics;
use crate::status::StatusSources;

/// The lake side: a writer per table, the tail and the query actor.
pub struct LakeStage {
    pub trades: Addr<WriterActor>,
    pub dead_letters: Addr<WriterActor>,
    pub writer_states: Vec<tokio::sync::watch::Receiver<WriterState>>,
    /// The writers' states, for `/status`.
    pub states: Vec<Arc<dyn StatusNode>>,
    pub trades_start: KafkaOffsets,
    pub dl_start: KafkaOffsets,
    /// Where the consumer starts a partition its group gives it.
    pub seen: Arc<crate::lake::share::Seen>,
    pub tail: Addr<TailActor>,
    pub tail_state: Arc<dyn StatusNode>,
    /// The trades table's Arrow schema, which the consumer decodes into.
    pub trades_schema: arrow::datatypes::SchemaRef,
    pub query: Addr<QueryActor>,
    pub query_state: Arc<dyn StatusNode>,
    /// Where the producer's acknowledgements meet the trades commits.
    pub ledger: Arc<AckLedger>,
    /// Where the lake left each symbol's trade ids, for the feeds to fill
    /// from (`feeds.<name>.backfill_max_age` back at most).
    pub last_ids: Vec<crate::lake::last_ids::LastId>,
    /// The writer of `market.gaps`, which the feeds send settled gaps to.
    pub gaps: Addr<crate::actors::gaps::GapsActor>,
    /// The writers' slowness and the trades writer's failures, which
    /// `[chaos] admin` changes at run time.
    pub writer_faults: crate::api::admin::WriterFaults,
    /// The thread the consumer, the tail and the writers run on, apart
    /// from the feed and the producer (on the system's thread): decoding,
    /// the tail and the writers' buffers no longer share a core with
    /// parsing and encoding.
    pub arbiter: Arbiter,
}

/// The writers, each starting at its snapshot's offsets, then the tail and
/// the query actor, which hear of every trades commit.
pub async fn lake(
    cfg: &Config,
    kafka: &KafkaReady,
    metrics: &Metrics,
    fatal: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<LakeStage, DaemonError> {
    // Every partition's loss series exists from the start at 0, so that
    // Prometheus sees the first loss as an increase and the alert fires.
    for (topic, parts) in &kafka.topics {
        for p in parts {
            metrics
                .records_lost
                .with_label_values(&[topic.as_str(), &p.to_string()]);
        }
    }
    for f in cfg.feeds.values() {
        metrics
            .spill_quarantined
            .with_label_values(&[f.exchange.as_str()]);
    }
    let catalog = lake::open_catalog(cfg).await?;
    let trades_table = lake::ensure_table(catalog.as_ref(), cfg, TableKind::Trades).await?;
    let dl_table = lake::ensure_table(catalog.as_ref(), cfg, TableKind::DeadLetters).await?;
    // Before the query engine is built: its catalog lists the tables once.
    lake::gaps::ensure_table(catalog.as_ref(), cfg).await?;
    let trades_start = start_positions(
        "trades",
        recorded_offsets("trades", &trades_table)?,
        &kafka.cluster_id,
        &kafka.topics_of(false),
        &kafka.watermarks,
        &metrics.losses,
    );
    let dl_start = start_positions(
        "dead_letters",
        recorded_offsets("dead_letters", &dl_table)?,
        &kafka.cluster_id,
        &kafka.topics_of(true),
        &kafka.watermarks,
        &metrics.losses,
    );

    let policy = flush_policy(cfg);
    let writer_faults = crate::api::admin::WriterFaults {
        delay_us_per_row: policy.delay_us_per_row.clone(),
        fail_commits: Arc::new(cfg.chaos.fail_trade_commits.into()),
    };
    let recent = recent_trade_ids(cfg, &trades_table).await?;
    let last_ids = last_trade_ids(cfg, &trades_table).await?;
    let ledger = Arc::new(AckLedger::new(metrics.clone(), kafka.start_ends()));
    let seen = Arc::new(crate::lake::share::Seen::default());
    warn_of_chaos(cfg);
    let trades_schema = lake::batch::arrow_schema(trades_table.metadata().current_schema())?;
    let trades = WriterActor::new(
        TableKind::Trades,
        catalog.clone(),
        lake::table_ident(cfg, TableKind::Trades),
        trades_schema.clone(),
        FlushPolicy {
            fail_commits: writer_faults.fail_commits.clone(),
            ..policy.clone()
        },
        trades_start.clone(),
        metrics.clone(),
    )?
    .seed_committed(&recent)
    .with_tally(Arc::new(cfg.instruments()?), ledger.clone())
    .with_seen_offsets(seen.clone())
    .with_fatal(fatal.clone());
    let arbiter = Arbiter::new();
    let lake_thread = arbiter.handle();
    let trades_state = trades.subscribe();
    let trades = WriterActor::start_in_arbiter(&lake_thread, move |_| trades);
    let dead_letters = WriterActor::new(
        TableKind::DeadLetters,
        catalog.clone(),
        lake::table_ident(cfg, TableKind::DeadLetters),
        lake::batch::arrow_schema(dl_table.metadata().current_schema())?,
        policy,
        dl_start.clone(),
        metrics.clone(),
    )?
    .with_seen_offsets(seen.clone())
    .with_fatal(fatal);
    let dl_state = dead_letters.subscribe();
    let dead_letters = WriterActor::start_in_arbiter(&lake_thread, move |_| dead_letters);

    let QuerySide {
        tail,
        tail_state,
        query,
        query_state,
    } = tail_and_query(cfg, kafka, &trades, metrics, &lake_thread, &seen).await?;
    let bars_state = bars(cfg, catalog.clone(), &trades, &query).await?;
    let mut states: Vec<Arc<dyn StatusNode>> =
        vec![Arc::new(trades_state.clone()), Arc::new(dl_state.clone())];
    states.extend(bars_state);
    let gaps_actor = crate::actors::gaps::GapsActor::new(
        catalog.clone(),
        lake::gaps::ident(cfg),
        cfg.writer.target_file_size_bytes,
        metrics.clone(),
    );
    states.push(Arc::new(gaps_actor.subscribe()));
    let gaps = gaps_actor.start();
    states.push(maintenance(cfg, catalog, metrics, &query).await?);
    Ok(LakeStage {
        seen,
        trades,
        dead_letters,
        writer_states: vec![trades_state, dl_state],
        states,
        trades_start,
        dl_start,
        tail,
        tail_state,
        trades_schema,
        query,
        query_state,
        ledger,
        last_ids,
        gaps,
        writer_faults,
        arbiter,
    })
}

/// The newest stored trade id of each symbol of the enabled feeds, as far
/// back as the longest `backfill_max_age` of those that fill gaps.
async fn last_trade_ids(
    cfg: &Config,
    trades: &iceberg::table::Table,
) -> Result<Vec<crate::lake::last_ids::LastId>, DaemonError> {
    let Some(age) = cfg
        .feeds
        .enabled()
        .filter(|f| f.backfill)
        .map(|f| f.backfill_max_age())
        .max()
    else {
        return Ok(Vec::new());
    };
    let age_us = i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
    let since = crate::model::now_us().saturating_sub(age_us);
    let last = crate::lake::last_ids::last_ids(trades, since).await?;
    tracing::info!(
        symbols = last.len(),
        "the lake's last trade ids read back, for the feeds to fill from"
    );
    Ok(last)
}

/// The offsets of the newest snapshot that carries them, said loudly when
/// that is not the current one (another engine wrote on top).
fn recorded_offsets(
    table: &str,
    t: &iceberg::table::Table,
) -> Result<Option<(i64, KafkaOffsets)>, DaemonError> {
    let recorded = current_offsets(t)?;
    let current = t.metadata().current_snapshot().map(|s| s.snapshot_id());
    if let Some((id, _)) = &recorded
        && current != Some(*id)
    {
        tracing::warn!(table, current_snapshot = ?current, offsets_snapshot = id,
            "the newest snapshot carries no kafka offsets (written by another engine?); resuming from an older one's");
    }
    Ok(recorded)
}

/// The writers' flush limits and restart policy.
fn flush_policy(cfg: &Config) -> FlushPolicy {
    FlushPolicy {
        max_rows: cfg.writer.max_rows,
        max_age: Duration::from_millis(cfg.writer.max_age_ms),
        target_file_size: cfg.writer.target_file_size_bytes,
        delay_us_per_row: Arc::new(cfg.chaos.writer_delay_us_per_row.into()),
        breaker: cfg.breaker.commit.clone(),
        restart: restart_policy(cfg),
        fail_commits: Arc::new(0.into()),
        dedup: crate::dedup::Sizing::new(cfg.writer.dedup_capacity, cfg.dedup.false_positive_rate),
        dedup_window: Duration::from_secs(cfg.writer.dedup_window_secs),
    }
}

/// The message ids of the trades committed in the last
/// `writer.dedup_window_secs`, oldest first, with their ingestion times, so
/// a trade that reaches Kafka twice across a restart is still recognised.
async fn recent_trade_ids(
    cfg: &Config,
    trades: &iceberg::table::Table,
) -> Result<Vec<(String, i64)>, DaemonError> {
    let window_us = i64::try_from(cfg.writer.dedup_window_secs)
        .unwrap_or(i64::MAX / 2_000_000)
        .saturating_mul(1_000_000);
    let recent =
        lake::commit::recent_message_ids(trades, crate::model::now_us().saturating_sub(window_us))
            .await?;
    tracing::info!(
        ids = recent.len(),
        window_secs = cfg.writer.dedup_window_secs,
        "recent trade ids read back for de-duplication"
    );
    Ok(recent)
}

/// Faults injected on purpose are said at start, loudly.
fn warn_of_chaos(cfg: &Config) {
    if cfg.chaos.writer_delay_us_per_row > 0 {
        tracing::warn!(
            us_per_row = cfg.chaos.writer_delay_us_per_row,
            "chaos: the iceberg writer is slowed on purpose"
        );
    }
    if cfg.chaos.fail_trade_commits > 0 {
        tracing::warn!(
            commits = cfg.chaos.fail_trade_commits,
            "chaos: market.trades commits will fail on purpose"
        );
    }
}

/// The tail and the query actor, with their observed states.
struct QuerySide {
    tail: Addr<TailActor>,
    tail_state: Arc<dyn StatusNode>,
    query: Addr<QueryActor>,
    query_state: Arc<dyn StatusNode>,
}

/// How long the tail keeps a commit's rows at most while the query actor
/// pins the new snapshot: it takes milliseconds, but runs behind queries.
const QUERY_PIN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The tail and the query actor. Both hear of every trades commit; they
/// are told before any row can reach the writer, so none is missed.
async fn tail_and_query(
    cfg: &Config,
    kafka: &KafkaReady,
    trades: &Addr<WriterActor>,
    metrics: &Metrics,
    lake_thread: &ArbiterHandle,
    seen: &Arc<crate::lake::share::Seen>,
) -> Result<QuerySide, DaemonError> {
    // Hybrid scans read the tail's published snapshots, not the actor.
    let tail_view = crate::query::tail::TailView::default();
    let mut engine = crate::query::session::engine(cfg, Some(tail_view.clone()))
        .await?
        .with_window_metric(metrics.query_recent_windows.clone());
    if cfg.kafka.assignment == crate::config::Assignment::Group {
        engine = engine.sharing(seen.clone());
    }
    if cfg.api.sql_isolation {
        engine = engine.with_sql_workers(sql_workers(cfg, metrics).await?);
    }
    if cfg.lake.bars {
        // The bars actor tells the query actor of each bars commit.
        engine = engine.with_bars_cached();
    }
    let trades_schema = engine.trades_schema();
    let tail_actor = TailActor::new(
        &kafka.cluster_id,
        cfg.tail.max_rows,
        trades_schema,
        tail_view,
    )
    .with_writer(trades.clone().recipient())
    .with_metrics(metrics.clone())
    .with_query_pins(QUERY_PIN_GRACE);
    let tail_state = tail_actor.subscribe();
    let tail = TailActor::start_in_arbiter(lake_thread, move |_| tail_actor);
    let query_actor = QueryActor::new(Arc::new(engine)).with_tail(tail.clone().recipient());
    let query_state = query_actor.subscribe();
    let query = query_actor.start();
    trades.do_send(AddCommitListener(tail.clone().recipient()));
    trades.do_send(AddCommitListener(query.clone().recipient()));
    Ok(QuerySide {
        tail,
        tail_state: Arc::new(tail_state),
        query,
        query_state: Arc::new(query_state),
    })
}

/// The bars actor (`lake.bars`): `market.ohlcv_1m` follows every trades
/// commit.
async fn bars(
    cfg: &Config,
    catalog: Arc<dyn iceberg::Catalog>,
    trades: &Addr<WriterActor>,
    query: &Addr<QueryActor>,
) -> Result<Option<Arc<dyn StatusNode>>, DaemonError> {
    if !cfg.lake.bars {
        return Ok(None);
    }
    let ident = lake::bars_ident(cfg);
    lake::bars::ensure_table(catalog.as_ref(), cfg).await?;
    let actor = crate::actors::bars::BarsActor::new(
        catalog,
        lake::table_ident(cfg, TableKind::Trades),
        ident,
        cfg.writer.target_file_size_bytes,
    )
    .notify(query.clone().recipient());
    let state = actor.subscribe();
    let addr = actor.start();
    trades.do_send(AddCommitListener(addr.recipient()));
    Ok(Some(Arc::new(state)))
}

/// The maintenance actor (`maintenance.enabled`) over both tables.
async fn maintenance(
    cfg: &Config,
    catalog: Arc<dyn iceberg::Catalog>,
    metrics: &Metrics,
    query: &Addr<QueryActor>,
) -> Result<Arc<dyn StatusNode>, DaemonError> {
    if !cfg.maintenance.enabled {
        return Ok(Arc::new(crate::actors::observe::Disabled("maintenance")));
    }
    let m = MaintenanceMetrics::register(&metrics.registry)
        .map_err(|e| DaemonError::Metrics(e.into()))?;
    let job = crate::actors::maintenance::Job::from_config(cfg, catalog).await?;
    let actor = MaintenanceActor::new(job, &cfg.maintenance, m).notify(query.clone().recipient());
    let state = actor.subscribe();
    actor.start();
    Ok(Arc::new(state))
}

/// The worker processes `/v1/sql` runs in (`query::isolate`): this very
/// binary, with one spare started now.
async fn sql_workers(
    cfg: &Config,
    metrics: &Metrics,
) -> Result<Arc<crate::query::isolate::SqlWorkers>, DaemonError> {
    let exe = std::env::current_exe().map_err(|e| DaemonError::SqlWorkers(e.to_string()))?;
    let workers =
        crate::query::isolate::SqlWorkers::new(exe, cfg, Some(metrics.query_workers_lost.clone()))
            .map_err(|e| DaemonError::SqlWorkers(e.to_string()))?;
    let workers = Arc::new(workers);
    workers.warm().await;
    Ok(workers)
}

/// `chaos.lose`, said loudly when set.
fn chaos_loss(cfg: &Config) -> Option<(String, i32, std::ops::Range<i64>)> {
    let l = &cfg.chaos.lose;
    if l.count <= 0 {
        return None;
    }
    let topic = if l.topic.is_empty() {
        // the first feed's, in name order
        let exchange = cfg.feeds.values().next().map(|f| f.exchange.as_str());
        cfg.kafka.trades_topic(exchange.unwrap_or("BINANCE"))
    } else {
        l.topic.clone()
    };
    tracing::warn!(topic = %topic, partition = l.partition, from = l.from, count = l.count,
        "chaos: the consumer acts as if these records had been deleted before it read them");
    Some((topic, l.partition, l.from..l.from.saturating_add(l.count)))
}

/// How every supervised actor backs off between restarts.
fn restart_policy(cfg: &Config) -> RestartPolicy {
    RestartPolicy::from_millis(
        cfg.supervision.restart_backoff_initial_ms,
        cfg.supervision.restart_backoff_max_ms,
    )
}

pub struct ConsumerStage {
    pub addr: Addr<ConsumerActor>,
    pub state: Arc<dyn StatusNode>,
}

/// The consumer, supervised: a consumer whose loop ends, or that the
/// watchdog stops, is restarted at the writers' positions.
pub fn consumer(
    cfg: &Config,
    kafka: &KafkaReady,
    lake: &LakeStage,
    codec: Arc<Codec>,
    metrics: &Metrics,
) -> Result<Option<ConsumerStage>, DaemonError> {
    if !cfg.writer.enabled {
        // The writers stay idle: nothing reads the topics here.
        tracing::info!("writer.enabled is false: no consumer, nothing is stored by this daemon");
        return Ok(None);
    }
    let consumer = assigned_consumer(
        cfg,
        kafka,
        &[&lake.trades_start, &lake.dl_start],
        lake.seen.clone(),
    )?;
    let actor = ConsumerActor::new(
        consumer,
        codec,
        Routes {
            trades_topics: kafka
                .topics_of(false)
                .into_iter()
                .map(|(t, _)| t)
                .collect::<HashSet<_>>(),
            dead_letter_topic: kafka.dead_letter_topic.clone(),
            trades: lake.trades.clone(),
            dead_letters: lake.dead_letters.clone(),
            tail: Some(lake.tail.clone().recipient()),
            trades_schema: lake.trades_schema.clone(),
            lose: chaos_loss(cfg),
            window: kafka.window.clone(),
        },
        kafka.cluster_id.clone(),
        metrics.clone(),
        cfg.writer.max_rows,
        restart_policy(cfg),
    )
    .in_group(cfg.kafka.assignment == crate::config::Assignment::Group)
    .watching(
        kafka.topics.clone(),
        Duration::from_secs(cfg.kafka.group_orphan_secs.max(1)),
    );
    let state = actor.subscribe();
    let addr = Supervisor::start_in_arbiter(&lake.arbiter.handle(), move |_| actor);
    for w in [&lake.trades, &lake.dead_letters] {
        // Sent before any rows can reach the writer, so no commit misses it.
        w.do_send(AddCommitListener(addr.clone().recipient()));
        w.do_send(SetRestarter(addr.clone().recipient()));
    }
    Ok(Some(ConsumerStage {
        addr,
        state: Arc::new(state),
    }))
}

/// The producer, supervised, with the spill log it replays first.
pub fn producer(
    cfg: &Config,
    kafka: &KafkaReady,
    ledger: Arc<AckLedger>,
    codec: Arc<Codec>,
    metrics: &Metrics,
) -> Result<ProducerHandle, DaemonError> {
    let spill = SpillLog::open(&cfg.spill_dir(), cfg.spill.segment_bytes)?;
    let (actor, handle) = ProducerActor::new(
        kafka::producer_config(&cfg.kafka, &kafka.bootstrap),
        Encoder::new(codec, &cfg.kafka),
        metrics.clone(),
        &cfg.lanes.capacity,
        spill,
        ProducerSettings {
            breaker: cfg.breaker.producer.clone(),
            stall: Duration::from_millis(cfg.breaker.stall_ms),
            replay_batch: cfg.spill.replay_batch,
            window: kafka.window.clone(),
            // Without writers no commit would ever settle an acknowledged
            // record: the ledger would only grow.
            ledger: cfg.writer.enabled.then_some(ledger),
        },
    )?;
    Supervisor::start(move |_| actor);
    Ok(handle)
}

/// The degradation supervisor, steering the producer's lanes and watching
/// the consumer's progress.
pub fn supervisor(
    cfg: &Config,
    kafka: &KafkaReady,
    lake: &LakeStage,
    producer: &ProducerHandle,
    consumer: Option<Addr<ConsumerActor>>,
    metrics: &Metrics,
) -> Result<tokio::sync::watch::Receiver<SupervisorState>, DaemonError> {
    // Without a consumer the writers' positions never move: the topics'
    // ends would read as lag and raise the level. No topics, no lag.
    let topics = if consumer.is_some() {
        kafka.topics.clone()
    } else {
        Vec::new()
    };
    let machine = LevelMachine::new(cfg.degradation.clone())
        .map_err(|e| DaemonError::Config(e.to_string()))?;
    let (supervisor, state) = DegradationSupervisor::new(
        machine,
        SupervisorInputs {
            lanes: producer.lanes.clone(),
            producer: producer.state.clone(),
            writers: lake.writer_states.clone(),
            watermarks: kafka.watermark_client.clone(),
            topics,
            consumer,
            watchdog: Duration::from_secs(cfg.supervision.watchdog_secs),
            acks: lake.ledger.clone(),
            owned: lake.seen.clone(),
        },
        metrics.clone(),
    );
    Supervisor::start(move |_| supervisor);
    Ok(state)
}

pub struct FeedStage {
    pub addr: Addr<FeedActor>,
    pub state: Arc<dyn StatusNode>,
}

/// Every enabled feed, each supervised on its own.
pub async fn feeds(
    cfg: &Config,
    producer: &ProducerHandle,
    lake: &LakeStage,
    shared: Option<&Arc<SharedIds>>,
    metrics: &Metrics,
) -> Result<Vec<FeedStage>, DaemonError> {
    let mut stages = Vec::new();
    if cfg.feeds.enabled().next().is_none() {
        tracing::info!("no feed enabled");
        return Ok(stages);
    }
    let instruments = Arc::new(cfg.instruments()?);
    for f in cfg.feeds.enabled() {
        let actor = FeedActor::new(
            f.clone(),
            producer.lanes.clone(),
            instruments.clone(),
            metrics.clone(),
        )?
        .with_dedup_rate(cfg.dedup.false_positive_rate);
        let age_us = i64::try_from(f.backfill_max_age().as_micros()).unwrap_or(i64::MAX);
        let since = crate::model::now_us().saturating_sub(age_us);
        let mut last: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
        let lake_last = lake
            .last_ids
            .iter()
            .filter(|l| l.exchange == f.exchange)
            .map(|l| (l.symbol.clone(), l.space.clone(), l.id, l.at_us));
        let shared_last = match shared {
            Some(s) => shared_last_ids(s, &f.exchange).await,
            None => Vec::new(),
        };
        // The furthest of the lake's and the other daemons' (Redis), so a
        // daemon that starts while another holds the feed knows where it is.
        for (symbol, space, id, at) in lake_last.chain(shared_last) {
            if !f.backfill || at < since {
                continue;
            }
            let e = last.entry((symbol, space)).or_insert((id, at));
            if id > e.0 {
                *e = (id, at);
            }
        }
        let last: Vec<_> = last
            .into_iter()
            .map(|((symbol, space), (id, at))| (symbol, space, id, at))
            .collect();
        let mut actor = actor
            .with_last_ids(&last)
            .with_gaps_table(lake.gaps.clone().recipient());
        if let Some(s) = shared {
            actor = actor.with_shared(s.clone());
        }
        let state = actor.subscribe();
        let addr = Supervisor::start(move |_| actor);
        stages.push(FeedStage {
            addr,
            state: Arc::new(state),
        });
    }
    Ok(stages)
}

/// The other daemons' last ids of `exchange` in Redis; none when Redis
/// does not answer (counted and logged: the lake's alone then).
async fn shared_last_ids(shared: &SharedIds, exchange: &str) -> Vec<(String, String, i64, i64)> {
    match shared.last_ids(exchange).await {
        Ok(l) => {
            tracing::info!(
                exchange,
                symbols = l.len(),
                "shared last trade ids read from Redis"
            );
            l.into_iter()
                .map(|l| (l.symbol, l.space, l.id, l.at_us))
                .collect()
        }
        Err(e) => {
            shared.failed(&e);
            Vec::new()
        }
    }
}

/// The store shared with the other daemons on the same feeds
/// (`dedup.redis_url`), beating from now on; `None` without one.
pub fn shared(cfg: &Config, metrics: &Metrics) -> Result<Option<Arc<SharedIds>>, DaemonError> {
    let Some(url) = &cfg.dedup.redis_url else {
        return Ok(None);
    };
    let ids = Arc::new(SharedIds::open(
        &cfg.dedup,
        url,
        metrics.dedup_redis_errors.clone(),
    )?);
    tracing::info!(instance = %ids.instance, prefix = %cfg.dedup.redis_key_prefix,
        "dedup and last trade ids shared through Redis");
    crate::dedup::shared::keep_alive(ids.clone());
    Ok(Some(ids))
}

/// `/status`, `/metrics` and the query API, when enabled.
pub fn http(
    cfg: &Config,
    metrics: &Metrics,
    status: &StatusSources,
    query: &Addr<QueryActor>,
    admin: Option<crate::api::admin::ChaosControls>,
    registry: &crate::kafka::registry::Registry,
) -> Result<Option<std::net::SocketAddr>, DaemonError> {
    if !cfg.http.enabled {
        return Ok(None);
    }
    // Without writers this daemon's lake holds nothing: the query API is
    // off (404) rather than answering empty; the writing daemon answers.
    let api = cfg.writer.enabled.then(|| crate::api::ApiState {
        query: query.clone().recipient(),
    });
    if admin.is_some() {
        tracing::warn!(
            "chaos: the admin endpoint /chaos/* is on; anyone who reaches http.listen can inject faults"
        );
    }
    // The local registry is served for Confluent consumers; an external
    // one serves itself.
    let local = registry.local();
    let addr = crate::api::server::start(
        &cfg.http,
        metrics.clone(),
        status.clone(),
        api,
        admin,
        local,
    )
    .map_err(|source| DaemonError::Http {
        listen: cfg.http.listen.clone(),
        source,
    })?;
    tracing::info!(addr = %addr, "http endpoints up");
    if registry.local().is_some() {
        tracing::info!(
            url = %format!("http://{addr}{}", crate::api::schema_registry::PREFIX),
            "confluent schema registry api serves the local registry"
        );
    }
    Ok(Some(addr))
}
