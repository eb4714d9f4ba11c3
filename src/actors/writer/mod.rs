//! WriterActor: one per Iceberg table. It buffers consumed rows and commits
//! them as one fast-append on a row or age limit, recording in the snapshot
//! the next Kafka offset of every partition it has taken in. One commit
//! runs at a time, on the tokio pool; meanwhile the actor keeps taking rows
//! into a second buffer, and only when that one is full too does it stop
//! reading, which pushes the consumer back (the rest waits in Kafka).
//!
//! The writer is also where a loss shows: the offsets it takes in must run
//! on without a hole from where it started, so a record the consumer went
//! past without handing over is counted as lost (see `ledger`), and the
//! trades writer counts what it stored per exchange and tier (`tally`).

mod flush;
mod handlers;
mod tally;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use actix::prelude::*;
use arrow::datatypes::SchemaRef;
use iceberg::{Catalog, TableIdent};
use serde::Serialize;
use tokio::sync::watch;

use crate::actors::observe::{Health, ObservableState, Published, RestartPolicy, Restarts};
use crate::dedup::{self, Dedup};
use crate::degrade::breaker::{BreakerConfig, BreakerSnapshot, CircuitBreaker};
use crate::lake::TableKind;
use crate::lake::commit::{self, KafkaOffsets};
use crate::messages::consumer::RestartConsumer;
use crate::messages::consumer::{Committed, CommittedRows};
use crate::messages::writer::{Rows, WriterError};
use crate::metrics::Metrics;
use flush::{CommitTarget, FlushOutcome, Landed, SharedBreaker, commit_with_retries};
use tally::{Fate, Tally};

/// Message-id keys (UUIDs) in the buffer or the running commit: looked up
/// and added once per row on the ingest arbiter.
type IdSet = crate::fastmap::FastSet<u128>;

/// Ids of a landed commit remembered per turn of the writer: a few
/// milliseconds of Bloom filter inserts.
const REMEMBER_PER_TURN: usize = 4096;

/// Flush limits.
#[derive(Debug, Clone)]
pub struct FlushPolicy {
    pub max_rows: usize,
    pub max_age: Duration,
    pub target_file_size: usize,
    /// Chaos: µs added per committed row (a slow object store); shared with `/chaos/writer`.
    pub delay_us_per_row: Arc<std::sync::atomic::AtomicU64>,
    /// The breaker around the commit.
    pub breaker: BreakerConfig,
    /// Delay before rewinding after a permanent commit failure; grows per
    /// failure in a row.
    pub restart: RestartPolicy,
    /// Chaos: this many commits fail permanently (as a broken catalog
    /// would), to exercise the recovery; shared like the delay.
    pub fail_commits: Arc<std::sync::atomic::AtomicU32>,
    /// Committed trades' ids remembered (and their Bloom filter's rate) to
    /// drop a record that reaches Kafka twice ([`WriterActor::seed_committed`]).
    pub dedup: dedup::Sizing,
    /// How long committed ids are remembered (`writer.dedup_window_secs`).
    pub dedup_window: Duration,
}

/// What `/status` and the degradation supervisor see of a writer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriterState {
    pub table: &'static str,
    pub buffered_rows: usize,
    /// Next offset of every partition in the last commit (where the writer
    /// started until it commits).
    #[serde(skip)]
    pub committed: KafkaOffsets,
    /// Next offset of every partition taken in (committed or buffered).
    pub positions: KafkaOffsets,
    pub commits: u64,
    pub rows_committed: u64,
    pub last_snapshot_id: Option<i64>,
    pub last_commit_ms: Option<u64>,
    /// When the last commit ended.
    #[serde(skip)]
    pub last_commit_end: Option<Instant>,
    /// When the running commit started; `None` while none runs.
    #[serde(skip)]
    pub commit_started: Option<Instant>,
    /// Trades dropped because their message id was already committed or
    /// buffered.
    pub duplicates_dropped: u64,
    /// Rows left out of commits because another owner of their partition
    /// (a daemon of the same consumer group) had committed them.
    pub rows_committed_elsewhere: u64,
    /// Committed ids forgotten for room while inside the dedup window.
    pub dedup_forgotten_early: u64,
    pub breaker: Option<BreakerSnapshot>,
    /// Its restarts are in-place rewinds to the last snapshot after a
    /// failed commit.
    #[serde(flatten)]
    pub health: Health,
}

impl ObservableState for WriterState {
    fn name(&self) -> String {
        format!("writer.{}", self.table)
    }

    fn status(&self) -> String {
        if self.commit_started.is_some() {
            "committing"
        } else {
            "buffering"
        }
        .into()
    }

    fn health(&self) -> &Health {
        &self.health
    }

    fn throughput_key(&self) -> Option<String> {
        Some(format!("writer.{}.rows", self.table))
    }

    fn breaker(&self) -> Option<&BreakerSnapshot> {
        self.breaker.as_ref()
    }

    /// The positions as topic → partition → next offset (the cluster id is
    /// the consumer's, shown once in the logs).
    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = crate::actors::observe::fields_of(self);
        m.insert(
            "positions".into(),
            serde_json::to_value(&self.positions.topics).unwrap_or_default(),
        );
        m
    }
}

impl WriterState {
    /// Commit latency as the supervisor sees it: the running commit's age,
    /// else the last commit's duration while it is recent (10 s), else 0 so
    /// that an idle writer does not hold the level up.
    pub fn commit_latency_ms(&self) -> f64 {
        if let Some(s) = self.commit_started {
            return s.elapsed().as_secs_f64() * 1000.0;
        }
        match (self.last_commit_ms, self.last_commit_end) {
            (Some(ms), Some(end)) if end.elapsed() < Duration::from_secs(10) => ms as f64,
            _ => 0.0,
        }
    }
}

/// Where a commit task leaves its outcome for the actor.
type OutcomeSlot = Arc<std::sync::Mutex<Option<FlushOutcome>>>;

/// A commit running on the tokio pool.
struct InFlight {
    /// Turns true when the task has ended and its outcome is in `slot`.
    done: watch::Receiver<bool>,
    slot: OutcomeSlot,
}

pub struct WriterActor {
    kind: TableKind,
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    schema: SchemaRef,
    policy: FlushPolicy,
    buffer: Rows,
    /// Each buffered trade's topic, partition and offset, in row order: a
    /// commit leaves out by them the rows another owner of a partition
    /// committed first (one consumer group, several daemons).
    buffer_at: Vec<(Arc<str>, i32, i64)>,
    /// Offsets of everything taken in, committed or buffered.
    positions: KafkaOffsets,
    /// `positions` when the last commit started (or where a partition was
    /// assigned): each partition's run of the next commit begins there.
    run_start: KafkaOffsets,
    /// The tables' offsets as last seen, shared with the consumer, which
    /// starts a partition assigned to it there (`kafka.assignment = group`).
    seen: Option<Arc<crate::lake::share::Seen>>,
    /// Whether `positions` moved since the last commit.
    dirty: bool,
    oldest: Option<Instant>,
    /// Told about every commit.
    listeners: Vec<Recipient<Committed>>,
    /// Told about a permanent failure, so the daemon exits non-zero; only
    /// used when no consumer can be restarted (nothing to rewind with).
    fatal: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// Where the writer started; a rewind falls back to it for partitions
    /// its table has no snapshot offsets for.
    origin: KafkaOffsets,
    restarter: Option<Recipient<RestartConsumer>>,
    /// `Consumed` from an older consumer loop than this is dropped: after a
    /// rewind it lies beyond the positions the writer went back to.
    min_generation: u64,
    restarts: Restarts,
    /// Failures in a row, for the restart delay.
    failures_in_row: u32,
    chaos_failures: Arc<std::sync::atomic::AtomicU32>,
    /// Trades only: ids committed (bounded, oldest forgotten first) and ids
    /// in the buffer. A trade whose id is in either is a second copy.
    committed_ids: Dedup,
    buffered_ids: IdSet,
    /// Ids of the rows in the running commit, and of the last commit until
    /// all of them are remembered in `committed_ids`.
    in_commit_ids: IdSet,
    /// Ids of the last commit still to go into `committed_ids`, with the
    /// commit's time (`remember_committed`).
    remembering: Vec<u128>,
    remembering_at: i64,
    /// Trades only: stored, deduplicated and carried-over rows per exchange
    /// and tier, counted at commit.
    tally: Option<Tally>,
    /// The running commit, if any.
    in_flight: Option<InFlight>,
    metrics: Metrics,
    breaker: SharedBreaker,
    epoch: Instant,
    state: WriterState,
    published: Published<WriterState>,
}

impl WriterActor {
    pub fn new(
        kind: TableKind,
        catalog: Arc<dyn Catalog>,
        ident: TableIdent,
        schema: SchemaRef,
        policy: FlushPolicy,
        start: KafkaOffsets,
        metrics: Metrics,
    ) -> Result<Self, WriterError> {
        let restarts = Restarts::new(format!("writer.{}", kind.name()), policy.restart);
        let committed_ids =
            Dedup::sized(policy.dedup).reporting(&metrics, &format!("writer.{}", kind.name()));
        // The trades writer's first commit would otherwise build its filter
        // on the ingest arbiter, holding up the tail for ~100 ms.
        let committed_ids = match kind {
            TableKind::Trades => committed_ids.prepared(),
            TableKind::DeadLetters => committed_ids,
        };
        let chaos_failures = policy.fail_commits.clone();
        let breaker =
            CircuitBreaker::new(format!("commit.{}", kind.name()), policy.breaker.clone())
                .map_err(|e| WriterError::Config(format!("breaker.commit: {e}")))?;
        let state = WriterState {
            table: kind.name(),
            positions: start.clone(),
            committed: start.clone(),
            breaker: Some(breaker.snapshot()),
            ..WriterState::default()
        };
        Ok(Self {
            kind,
            catalog,
            ident,
            schema,
            policy,
            buffer: empty_rows(kind),
            buffer_at: Vec::new(),
            origin: start.clone(),
            run_start: start.clone(),
            seen: None,
            positions: start,
            dirty: false,
            oldest: None,
            listeners: Vec::new(),
            fatal: None,
            restarter: None,
            min_generation: 0,
            restarts,
            failures_in_row: 0,
            chaos_failures,
            committed_ids,
            buffered_ids: IdSet::default(),
            in_commit_ids: IdSet::default(),
            remembering: Vec::new(),
            remembering_at: 0,
            tally: None,
            in_flight: None,
            metrics,
            breaker: Arc::new(std::sync::Mutex::new(breaker)),
            epoch: Instant::now(),
            published: Published::new(state.clone()),
            state,
        })
    }

    /// Remembers the ids of trades the table already holds (the recent
    /// ones, read at start), so that a record that reached Kafka twice is
    /// stored once. That happens when a broker wrote a record but its
    /// acknowledgement was lost with the connection: the producer cannot
    /// know, and sends it again (from the spill log, or after a restart).
    pub fn seed_committed(mut self, ids: &[(String, i64)]) -> Self {
        for (id, at) in ids {
            self.committed_ids.first_time_key_at(dedup::key(id), *at);
        }
        self
    }

    /// Starts remembering the ids of the commit that just landed: a slice
    /// now, and a slice per turn after (`remember_later`), so that the
    /// consumer's chunks and the tail, on this thread too, go on between
    /// them. At once, the 50,000 ids of a commit held up the tail for
    /// 40 to 55 ms (Bloom filter inserts), and every trade arriving then
    /// with it. Until the last slice, the ids stay in `in_commit_ids`,
    /// which every lookup consults, so they are duplicates throughout.
    fn remember_committed(&mut self, ctx: &mut Context<Self>) {
        // `start_flush` finished the last commit's slices before this
        // commit took over `in_commit_ids`, so `remembering` is empty.
        self.remembering = self.in_commit_ids.iter().copied().collect();
        self.remembering_at = crate::model::now_us();
        if self.remembering.is_empty() {
            self.remembered();
            return;
        }
        self.remember(REMEMBER_PER_TURN);
        self.remember_later(ctx);
    }

    /// The next slice on a timer, not a message: the writer handles every
    /// message queued for it before it lets the thread go, so only a timer
    /// lets the consumer and the tail run between two slices.
    fn remember_later(&mut self, ctx: &mut Context<Self>) {
        if self.remembering.is_empty() {
            return;
        }
        ctx.run_later(Duration::ZERO, |writer, ctx| {
            writer.remember(REMEMBER_PER_TURN);
            writer.remember_later(ctx);
        });
    }

    /// Remembers up to `n` more of the last commit's ids.
    fn remember(&mut self, n: usize) {
        if self.remembering.is_empty() {
            return;
        }
        let from = self.remembering.len().saturating_sub(n);
        self.committed_ids
            .first_time_keys_at(&self.remembering[from..], self.remembering_at);
        self.remembering.truncate(from);
        if self.remembering.is_empty() {
            self.remembered();
        }
    }

    /// After the last of a commit's ids: forgets those older than the
    /// window, and says so loudly when room forced out ids still inside it.
    fn remembered(&mut self) {
        self.in_commit_ids.clear();
        let window = i64::try_from(self.policy.dedup_window.as_micros()).unwrap_or(i64::MAX);
        self.committed_ids
            .forget_before(self.remembering_at.saturating_sub(window));
        let early = self.committed_ids.forgotten_early();
        let new = early.saturating_sub(self.state.dedup_forgotten_early);
        if new > 0 {
            tracing::warn!(
                table = self.kind.name(),
                ids = new,
                capacity = self.policy.dedup.capacity,
                "committed ids forgotten inside writer.dedup_window_secs for lack of room: a second copy of one would be stored; raise writer.dedup_capacity"
            );
            self.state.dedup_forgotten_early = early;
            self.metrics
                .writer_dedup_forgotten_early
                .with_label_values(&[self.kind.name()])
                .inc_by(new);
        }
    }

    /// Counts stored rows per exchange and tier for the accounting
    /// identity (the trades table), with tiers from `instruments`.
    pub fn with_tally(
        mut self,
        instruments: Arc<crate::instruments::Instruments>,
        ledger: Arc<crate::kafka::acks::AckLedger>,
    ) -> Self {
        self.tally = Some(Tally::new(instruments, ledger));
        self
    }

    /// The state this writer publishes after every change.
    pub fn subscribe(&self) -> watch::Receiver<WriterState> {
        self.published.subscribe()
    }

    fn publish_state(&mut self) {
        self.state.buffered_rows = self.buffer.len();
        self.state.positions = self.positions.clone();
        if let Ok(b) = self.breaker.lock() {
            self.state.breaker = Some(b.snapshot());
        }
        self.published.publish(&self.state);
    }

    /// Shares the offsets of every commit with the consumer (`seen`).
    pub fn with_seen_offsets(mut self, seen: Arc<crate::lake::share::Seen>) -> Self {
        self.seen = Some(seen);
        self
    }

    pub fn with_fatal(mut self, fatal: tokio::sync::mpsc::UnboundedSender<String>) -> Self {
        self.fatal = Some(fatal);
        self
    }

    fn table(&self) -> &'static str {
        self.kind.name()
    }

    /// Takes everything buffered into a commit task on the commit runtime
    /// (`lake::background`).
    /// Only [`start_flush`](Self::start_flush) calls it, so that commits
    /// never overlap.
    fn flush(&mut self) -> Option<tokio::task::JoinHandle<FlushOutcome>> {
        if !self.dirty && self.buffer.is_empty() {
            return None;
        }
        let rows = std::mem::replace(&mut self.buffer, empty_rows(self.kind));
        let at = std::mem::take(&mut self.buffer_at);
        let mut runs = commit::Runs::new();
        for (topic, parts) in &self.positions.topics {
            for (p, to) in parts {
                let from = self.run_start.get(topic, *p);
                if from != Some(*to) {
                    runs.insert((topic.clone(), *p), commit::Run { from, to: *to });
                }
            }
        }
        let pending = flush::Pending {
            rows,
            at,
            runs,
            cluster_id: self.positions.cluster_id.clone(),
            known: self.positions.clone(),
        };
        self.run_start = self.positions.clone();
        self.dirty = false;
        self.oldest = None;
        let n = pending.rows.len();
        let table = self.table();
        let catalog = self.catalog.clone();
        let ident = self.ident.clone();
        let schema = self.schema.clone();
        let target = self.policy.target_file_size;
        let us = self.policy.delay_us_per_row.load(Relaxed);
        let delay = Duration::from_micros(us).saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
        let metrics = self.metrics.clone();
        let breaker = self.breaker.clone();
        let epoch = self.epoch;
        let chaos = self.chaos_failures.clone();
        self.state.commit_started = Some(Instant::now());
        self.publish_state();
        let task = crate::lake::background::handle().spawn(async move {
            let started = Instant::now();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let injected = chaos
                .fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |n| n.checked_sub(1),
                )
                .is_ok();
            if injected {
                return Err(WriterError::Chaos);
            }
            let to = CommitTarget {
                catalog,
                ident,
                table,
                target,
                schema,
                rewrite_after: crate::lake::orphans::WRITTEN_MAX_AGE,
            };
            commit_with_retries(&to, pending, &breaker, &metrics, epoch, started).await
        });
        tracing::debug!(table, rows = n, "flushing");
        Some(task)
    }

    /// Starts a commit of what is buffered unless one is running. The actor
    /// keeps taking rows into a fresh buffer meanwhile, so the consumer (and
    /// the tail in front of the writer) do not stall for the commit's
    /// duration.
    fn start_flush(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        let Some(task) = self.flush() else {
            return false;
        };
        // The last commit's ids all remembered before its set is reused.
        self.remember(usize::MAX);
        // The rows now being committed: still duplicates for new arrivals.
        std::mem::swap(&mut self.buffered_ids, &mut self.in_commit_ids);
        self.buffered_ids.clear();
        if let Some(t) = &mut self.tally {
            t.begin_commit();
        }
        let (done_tx, done) = watch::channel(false);
        let slot: OutcomeSlot = Arc::new(std::sync::Mutex::new(None));
        let filled = slot.clone();
        tokio::spawn(async move {
            let outcome = match task.await {
                Ok(r) => r,
                Err(e) => Err(WriterError::Join(e.to_string())),
            };
            *filled.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
            let _ = done_tx.send(true);
        });
        let mut wait = done.clone();
        self.in_flight = Some(InFlight { done, slot });
        ctx.spawn(
            async move {
                let _ = wait.wait_for(|d| *d).await;
            }
            .into_actor(self)
            .map(|_, act, ctx| {
                act.finish_flush(ctx);
            }),
        );
        true
    }

    /// Completes the running commit if its outcome is in; whichever of the
    /// waiters gets here first does it, the others find nothing to do.
    fn finish_flush(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> Option<Result<Option<i64>, WriterError>> {
        let outcome = self
            .in_flight
            .as_ref()?
            .slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        self.in_flight = None;
        let out = self.after_flush(outcome, ctx);
        if self.buffer.len() >= self.policy.max_rows {
            self.start_flush(ctx);
        }
        Some(out)
    }

    /// A future that resolves when the running commit (if any) has ended.
    fn flush_done(&self) -> impl Future<Output = ()> + use<> {
        let done = self.in_flight.as_ref().map(|i| i.done.clone());
        async move {
            if let Some(mut d) = done {
                let _ = d.wait_for(|x| *x).await;
            }
        }
    }

    fn after_flush(
        &mut self,
        res: FlushOutcome,
        ctx: &mut Context<Self>,
    ) -> Result<Option<i64>, WriterError> {
        let table = self.table();
        if let Some(s) = self.state.commit_started.take() {
            self.state.last_commit_ms =
                Some(u64::try_from(s.elapsed().as_millis()).unwrap_or(u64::MAX));
            self.state.last_commit_end = Some(Instant::now());
        }
        match &res {
            Ok(l) => {
                self.state.committed = l.offsets.clone();
                self.state.commits += 1;
                self.state.rows_committed += l.committed.rows as u64;
                self.state.last_snapshot_id = Some(l.committed.snapshot_id);
                self.state.rows_committed_elsewhere += l.left_out as u64;
                if let Some(seen) = &self.seen {
                    seen.committed(&l.offsets);
                }
            }
            // Not a fault: the group moved a partition mid-commit, and the
            // writer reads on from the table (below).
            Err(WriterError::Overlap { .. }) if self.restarter.is_some() => {}
            Err(e) => self.state.health.last_error = Some(e.to_string()),
        }
        self.publish_state();
        self.metrics
            .writer_buffered_rows
            .with_label_values(&[table])
            .set(self.buffer.len() as i64);
        match res {
            Ok(Landed {
                committed: c,
                offsets,
                committed_below,
                left_out,
                trades,
            }) => {
                if left_out > 0 {
                    tracing::info!(
                        table,
                        rows = left_out,
                        partitions = ?committed_below,
                        "rows left out of the commit: another owner of their partitions committed them"
                    );
                    self.metrics
                        .writer_rows_committed_elsewhere
                        .with_label_values(&[table])
                        .inc_by(left_out as u64);
                }
                self.metrics
                    .writer_commits
                    .with_label_values(&[table, "ok"])
                    .inc();
                self.metrics
                    .writer_rows
                    .with_label_values(&[table])
                    .inc_by(c.rows as u64);
                tracing::info!(
                    table,
                    snapshot_id = c.snapshot_id,
                    rows = c.rows,
                    files = c.files,
                    "committed"
                );
                self.failures_in_row = 0;
                self.remember_committed(ctx);
                if let Some(t) = &mut self.tally {
                    t.committed_except(&committed_below);
                }
                let rows = trades.map(CommittedRows);
                for l in &self.listeners {
                    l.do_send(Committed {
                        table,
                        snapshot_id: c.snapshot_id,
                        offsets: offsets.clone(),
                        rows: rows.clone(),
                    });
                }
                Ok(Some(c.snapshot_id))
            }
            // Another owner of a partition committed the same rows while
            // this commit was written: nothing failed, and nothing is lost
            // (the table holds the rows once). Counted as its own outcome,
            // not as an error, and read again from the table's offsets.
            Err(e @ WriterError::Overlap { .. }) if self.restarter.is_some() => {
                self.metrics
                    .writer_commits
                    .with_label_values(&[table, "overlap"])
                    .inc();
                tracing::warn!(table, detail = %e, "commit overlapped another owner's; rewinding to the table");
                self.rewind(ctx);
                Err(e)
            }
            Err(e) => {
                self.metrics
                    .writer_commits
                    .with_label_values(&[table, "failed"])
                    .inc();
                self.metrics
                    .actor_errors
                    .with_label_values(&[&format!("writer.{table}"), "commit"])
                    .inc();
                // The rows of the failed commit are gone from memory but not
                // from Kafka: rewind to the last snapshot and read them again.
                if self.restarter.is_some() {
                    tracing::error!(table, error = %e, "iceberg commit failed permanently; rewinding to the last snapshot");
                    self.rewind(ctx);
                } else {
                    tracing::error!(table, error = %e, "iceberg commit failed permanently; stopping");
                    if let Some(f) = &self.fatal {
                        let _ = f.send(e.to_string());
                    }
                }
                Err(e)
            }
        }
    }
}

impl WriterActor {
    /// The in-place restart after a permanent commit failure: wait a capped,
    /// jittered, growing delay; take the positions of the table's latest
    /// snapshot (or where the writer started); drop the buffer; and restart
    /// the consumer there, ignoring what its old loop still sends. Nothing
    /// is lost (it is all in Kafka) and nothing is committed twice.
    fn rewind(&mut self, ctx: &mut Context<Self>) {
        let table = self.table();
        self.failures_in_row += 1;
        self.restarts.count(&mut self.state.health, &self.metrics);
        let delay = self.restarts.next_delay();
        self.buffer = empty_rows(self.kind);
        self.buffer_at.clear();
        self.buffered_ids.clear();
        // A landed commit's ids are remembered whatever comes after it.
        self.remember(usize::MAX);
        self.in_commit_ids.clear();
        if let Some(t) = &mut self.tally {
            t.forget();
        }
        self.dirty = false;
        self.oldest = None;
        let catalog = self.catalog.clone();
        let ident = self.ident.clone();
        let restarter = self.restarter.clone();
        ctx.wait(
            async move {
                tokio::time::sleep(delay).await;
                let loaded = catalog
                    .load_table(&ident)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|t| commit::current_offsets(&t).map_err(|e| e.to_string()));
                (loaded, restarter)
            }
            .into_actor(self)
            .then(move |(loaded, restarter), act, ctx| {
                let mut positions = act.origin.clone();
                match loaded {
                    Ok(Some((snapshot, o))) if o.cluster_id == act.origin.cluster_id => {
                        for (t, parts) in &o.topics {
                            for (p, next) in parts {
                                positions.set(t, *p, *next);
                            }
                        }
                        tracing::info!(table, snapshot_id = snapshot, "writer rewound to its last snapshot");
                    }
                    Ok(_) => {
                        tracing::info!(table, "no snapshot of this cluster; writer rewound to where it started")
                    }
                    Err(e) => {
                        // Cannot know what is committed: try the whole
                        // rewind again later rather than guess.
                        tracing::error!(table, error = %e, "cannot load the table to rewind; retrying");
                        act.state.health.last_error = Some(format!("rewind: {e}"));
                        act.rewind(ctx);
                        return futures::future::Either::Left(actix::fut::ready(()));
                    }
                }
                act.run_start = positions.clone();
                if let Some(seen) = &act.seen {
                    seen.rewound(&positions);
                }
                act.positions = positions;
                act.publish_state();
                let ask = async move {
                    match restarter {
                        Some(r) => r.send(RestartConsumer).await.ok(),
                        None => None,
                    }
                };
                futures::future::Either::Right(ask.into_actor(act).map(|generation, act, _| {
                    if let Some(g) = generation {
                        act.min_generation = g;
                    }
                }))
            }),
        );
    }
}

fn empty_rows(kind: TableKind) -> Rows {
    match kind {
        TableKind::Trades => Rows::Trades(Vec::new()),
        TableKind::DeadLetters => Rows::DeadLetters(Vec::new()),
    }
}

impl Actor for WriterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        // The age limit is checked often enough that a flush is never late
        // by more than a tenth of it.
        let tick =
            (self.policy.max_age / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
        ctx.run_interval(tick, |act, ctx| {
            let due = act
                .oldest
                .is_some_and(|t| t.elapsed() >= act.policy.max_age);
            if due {
                act.start_flush(ctx);
            }
            if let Some(t) = &mut act.tally {
                t.sweep();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::lake::batch::TradeChunk;
    use crate::messages::observe::Observe;
    use crate::messages::writer::{Consumed, Flush, Span};
    use crate::model::{Dec8, TradeV2};

    /// A commit's ids are remembered a slice per turn; a second copy of
    /// any of them is dropped at every point of that, and after it.
    #[actix_rt::test]
    async fn a_commits_ids_stay_duplicates_while_they_are_remembered_a_slice_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::default().under(dir.path());
        let catalog = crate::lake::open_catalog(&cfg).await.unwrap();
        let table = crate::lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
            .await
            .unwrap();
        let schema = crate::lake::batch::arrow_schema(table.metadata().current_schema()).unwrap();
        let ident = crate::lake::table_ident(&cfg, TableKind::Trades);
        let policy = FlushPolicy {
            max_rows: 1_000_000,
            max_age: Duration::from_secs(3600),
            target_file_size: 128 << 20,
            delay_us_per_row: Arc::default(),
            breaker: cfg.breaker.commit.clone(),
            restart: RestartPolicy::IMMEDIATE,
            fail_commits: Arc::default(),
            dedup: dedup::Sizing::new(100_000, 0.001),
            dedup_window: Duration::from_secs(3600),
        };
        let topic: Arc<str> = Arc::from("t.trades");
        let start = KafkaOffsets {
            cluster_id: "c".into(),
            ..Default::default()
        };
        let writer = WriterActor::new(
            TableKind::Trades,
            catalog,
            ident,
            schema.clone(),
            policy,
            start,
            Metrics::new().unwrap(),
        )
        .unwrap()
        .start();
        let n = 3 * REMEMBER_PER_TURN + 5;
        let trades: Vec<TradeV2> = (0..n)
            .map(|i| {
                TradeV2::builder("BINANCE", "BTCUSDT", &i.to_string(), 1_700_000_000_000_000)
                    .price(Dec8::from_unscaled(1_000 + i as i64).unwrap())
                    .quantity(Dec8::from_unscaled(1).unwrap())
                    .build()
            })
            .collect();
        let chunk = TradeChunk {
            batch: crate::lake::batch::trades_batch(&schema, &trades).unwrap(),
            keys: trades.iter().map(|t| dedup::key(&t.message_id)).collect(),
        };
        // The same trades, read again at the next offsets.
        let consumed = |round: i64| Consumed {
            rows: Rows::Trades(vec![chunk.clone()]),
            positions: vec![Span {
                topic: topic.clone(),
                partition: 0,
                first: round * n as i64,
                next: (round + 1) * n as i64,
            }],
            generation: 0,
            at: Vec::new(),
        };
        let state = || async { writer.send(Observe::<WriterState>::new()).await.unwrap() };
        writer.send(consumed(0)).await.unwrap();
        writer.send(Flush).await.unwrap().unwrap();
        // Right after the commit: part of its ids remembered, the rest
        // still in the set of the commit.
        writer.send(consumed(1)).await.unwrap();
        writer.send(Flush).await.unwrap().unwrap();
        writer.send(consumed(2)).await.unwrap();
        writer.send(Flush).await.unwrap().unwrap();
        let s = state().await;
        assert_eq!(s.rows_committed, n as u64);
        assert_eq!(s.duplicates_dropped, 2 * n as u64);
        assert_eq!(s.commits, 3);
    }
}
