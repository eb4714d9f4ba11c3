//! WriterActor: one per Iceberg table. It buffers consumed rows and commits
//! them as one fast-append on a row or age limit, recording in the snapshot
//! the next Kafka offset of every partition it has taken in. While a commit
//! runs the actor reads no messages, so the consumer is pushed back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use arrow::datatypes::SchemaRef;
use backon::{BackoffBuilder, ExponentialBuilder};
use iceberg::{Catalog, TableIdent};

use crate::lake::commit::{self, KafkaOffsets};
use crate::lake::{LakeError, TableKind, batch};
use crate::messages::consumer::Committed;
use crate::messages::writer::{Consumed, Flush, GetPositions, Rows};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("table {table}: {source}")]
    Lake {
        table: &'static str,
        source: Box<LakeError>,
    },
    #[error("flush task failed: {0}")]
    Join(String),
}

/// Flush limits.
#[derive(Debug, Clone)]
pub struct FlushPolicy {
    pub max_rows: usize,
    pub max_age: Duration,
    pub target_file_size: usize,
}

pub struct WriterActor {
    kind: TableKind,
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    schema: SchemaRef,
    policy: FlushPolicy,
    buffer: Rows,
    /// Offsets of everything taken in, committed or buffered.
    positions: KafkaOffsets,
    /// Whether `positions` moved since the last commit.
    dirty: bool,
    oldest: Option<Instant>,
    consumer: Option<Recipient<Committed>>,
    /// Also told about every commit (the tail and the query actor).
    listeners: Vec<Recipient<Committed>>,
    /// Told about a permanent failure, so the daemon exits non-zero.
    fatal: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    metrics: Metrics,
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
    ) -> Self {
        Self {
            kind,
            catalog,
            ident,
            schema,
            policy,
            buffer: empty_rows(kind),
            positions: start,
            dirty: false,
            oldest: None,
            consumer: None,
            listeners: Vec::new(),
            fatal: None,
            metrics,
        }
    }

    pub fn with_consumer(mut self, consumer: Recipient<Committed>) -> Self {
        self.consumer = Some(consumer);
        self
    }

    pub fn with_listener(mut self, listener: Recipient<Committed>) -> Self {
        self.listeners.push(listener);
        self
    }

    pub fn with_fatal(mut self, fatal: tokio::sync::mpsc::UnboundedSender<String>) -> Self {
        self.fatal = Some(fatal);
        self
    }

    fn table(&self) -> &'static str {
        self.kind.name()
    }

    /// Takes everything buffered into a flush future; callers make the
    /// actor wait on it (`ctx.wait`), so flushes never overlap.
    fn flush(&mut self) -> Option<Pin<Box<dyn Future<Output = FlushOutcome>>>> {
        if !self.dirty && self.buffer.is_empty() {
            return None;
        }
        let rows = std::mem::replace(&mut self.buffer, empty_rows(self.kind));
        let offsets = self.positions.clone();
        self.dirty = false;
        self.oldest = None;
        let n = rows.len();
        let table = self.table();
        let catalog = self.catalog.clone();
        let ident = self.ident.clone();
        let schema = self.schema.clone();
        let target = self.policy.target_file_size;
        let metrics = self.metrics.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let batch = match rows {
                Rows::Trades(mut r) => batch::trades_batch(&schema, &mut r),
                Rows::DeadLetters(r) => batch::dead_letters_batch(&schema, &r),
            }
            .map_err(|source| WriterError::Lake {
                table,
                source: Box::new(source),
            })?;
            // Retry transient failures forever with capped backoff: the rows
            // are still in Kafka, but giving up here would stall the table.
            let mut backoff = ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter()
                .without_max_times()
                .build();
            loop {
                match commit::append(catalog.as_ref(), &ident, Some(&batch), &offsets, target).await
                {
                    Ok(c) => {
                        metrics
                            .writer_commit_seconds
                            .with_label_values(&[table])
                            .observe(started.elapsed().as_secs_f64());
                        return Ok((c, offsets));
                    }
                    Err(e) if e.is_retryable() => {
                        metrics
                            .writer_commits
                            .with_label_values(&[table, "retry"])
                            .inc();
                        let d = backoff.next().unwrap_or(Duration::from_secs(10));
                        tracing::warn!(table, error = %e, retry_in_ms = d.as_millis() as u64, "iceberg commit failed; retrying");
                        tokio::time::sleep(d).await;
                    }
                    Err(source) => {
                        return Err(WriterError::Lake {
                            table,
                            source: Box::new(source),
                        });
                    }
                }
            }
        });
        tracing::debug!(table, rows = n, "flushing");
        Some(Box::pin(async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(WriterError::Join(e.to_string())),
            }
        }))
    }

    fn after_flush(&mut self, res: FlushOutcome) -> Result<Option<i64>, WriterError> {
        let table = self.table();
        self.metrics
            .writer_buffered_rows
            .with_label_values(&[table])
            .set(self.buffer.len() as i64);
        match res {
            Ok((c, offsets)) => {
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
                let msg = Committed {
                    table,
                    snapshot_id: c.snapshot_id,
                    offsets,
                };
                for l in &self.listeners {
                    l.do_send(msg.clone());
                }
                if let Some(consumer) = &self.consumer {
                    consumer.do_send(msg);
                }
                Ok(Some(c.snapshot_id))
            }
            Err(e) => {
                self.metrics
                    .writer_commits
                    .with_label_values(&[table, "failed"])
                    .inc();
                // A permanent failure cannot be skipped without losing rows;
                // stop the daemon so it restarts from the last snapshot.
                tracing::error!(table, error = %e, "iceberg commit failed permanently; stopping");
                if let Some(f) = &self.fatal {
                    let _ = f.send(e.to_string());
                }
                Err(e)
            }
        }
    }
}

type FlushOutcome = Result<(commit::Committed, KafkaOffsets), WriterError>;

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
            if due && let Some(f) = act.flush() {
                ctx.wait(f.into_actor(act).map(|res, act, _| {
                    let _ = act.after_flush(res);
                }));
            }
        });
    }
}

impl Handler<Consumed> for WriterActor {
    type Result = ();

    fn handle(&mut self, msg: Consumed, ctx: &mut Self::Context) {
        for (topic, partition, next) in &msg.positions {
            self.positions.set(topic, *partition, *next);
        }
        if !msg.positions.is_empty() {
            self.dirty = true;
            self.oldest.get_or_insert_with(Instant::now);
        }
        match (&mut self.buffer, msg.rows) {
            (Rows::Trades(b), Rows::Trades(r)) => b.extend(r),
            (Rows::DeadLetters(b), Rows::DeadLetters(r)) => b.extend(r),
            (_, other) if other.is_empty() => {}
            _ => {
                tracing::error!(table = self.table(), "rows of the wrong kind routed here");
            }
        }
        self.metrics
            .writer_buffered_rows
            .with_label_values(&[self.table()])
            .set(self.buffer.len() as i64);
        if self.buffer.len() >= self.policy.max_rows
            && let Some(f) = self.flush()
        {
            ctx.wait(f.into_actor(self).map(|res, act, _| {
                let _ = act.after_flush(res);
            }));
        }
    }
}

impl Handler<Flush> for WriterActor {
    type Result = AtomicResponse<Self, Result<Option<i64>, WriterError>>;

    fn handle(&mut self, _: Flush, _ctx: &mut Self::Context) -> Self::Result {
        match self.flush() {
            None => AtomicResponse::new(Box::pin(actix::fut::ready(Ok(None)))),
            Some(f) => AtomicResponse::new(Box::pin(
                f.into_actor(self).map(|res, act, _| act.after_flush(res)),
            )),
        }
    }
}

impl Handler<GetPositions> for WriterActor {
    type Result = MessageResult<GetPositions>;

    fn handle(&mut self, _: GetPositions, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.positions.clone())
    }
}
