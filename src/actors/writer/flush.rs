//! The commit task of a flush: one Iceberg fast-append of the batch with
//! the Kafka offsets it covers, retried through transient failures behind
//! the commit breaker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use iceberg::{Catalog, TableIdent};

use crate::degrade::breaker::CircuitBreaker;
use crate::lake::commit::{self, KafkaOffsets};
use crate::messages::writer::WriterError;
use crate::metrics::Metrics;

/// The commit breaker, shared between the actor (for its state) and the
/// flush task that calls Iceberg.
pub(super) type SharedBreaker = Arc<std::sync::Mutex<CircuitBreaker>>;

pub(super) type FlushOutcome = Result<(commit::Committed, KafkaOffsets), WriterError>;

/// Runs `f` on the commit breaker and records a state change it caused.
pub(super) fn breaker_call<T>(
    breaker: &SharedBreaker,
    metrics: &Metrics,
    epoch: Instant,
    f: impl FnOnce(&mut CircuitBreaker, u64) -> T,
) -> T {
    let now = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
    // A poisoned lock only means another thread panicked mid-call; the
    // breaker's state is still a valid state.
    let mut b = breaker.lock().unwrap_or_else(|p| p.into_inner());
    metrics.breaker_call(&mut b, now, f)
}

/// Where a commit goes.
pub(super) struct CommitTarget {
    pub catalog: Arc<dyn Catalog>,
    pub ident: TableIdent,
    pub table: &'static str,
    pub target: usize,
}

/// Commits `batch` with `offsets`, retrying transient failures.
pub(super) async fn commit_with_retries(
    to: &CommitTarget,
    batch: &arrow::record_batch::RecordBatch,
    offsets: KafkaOffsets,
    breaker: &SharedBreaker,
    metrics: &Metrics,
    epoch: Instant,
    started: Instant,
) -> FlushOutcome {
    let table = to.table;
    // Retry transient failures forever with capped backoff: the rows
    // are still in Kafka, but giving up here would stall the table.
    let mut backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        // While the breaker is open, wait out its open time instead
        // of hammering the catalog; the rows stay buffered and the
        // consumer, blocked behind this commit, leaves the rest in
        // Kafka, which is the on-disk log for this path.
        loop {
            let wait = breaker_call(breaker, metrics, epoch, |b, now| {
                if b.allow(now) {
                    None
                } else {
                    Some(Duration::from_millis(b.config().open_ms.clamp(10, 1000)))
                }
            });
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => break,
            }
        }
        match commit::append(
            to.catalog.as_ref(),
            &to.ident,
            Some(batch),
            &offsets,
            to.target,
        )
        .await
        {
            Ok(c) => {
                breaker_call(breaker, metrics, epoch, |b, now| b.on_success(now));
                metrics
                    .writer_commit_seconds
                    .with_label_values(&[table])
                    .observe(started.elapsed().as_secs_f64());
                return Ok((c, offsets));
            }
            Err(e) if e.is_retryable() => {
                breaker_call(breaker, metrics, epoch, |b, now| b.on_failure(now));
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
}
