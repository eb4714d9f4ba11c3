//! The commit task of a flush: one Iceberg fast-append of the batch with
//! the Kafka offsets it covers, retried through transient failures behind
//! the commit breaker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use iceberg::{Catalog, TableIdent};

use crate::degrade::breaker::CircuitBreaker;
use crate::lake::LakeError;
use crate::lake::batch;
use crate::lake::commit::{self, KafkaOffsets};
use crate::messages::writer::Rows;
use crate::messages::writer::WriterError;
use crate::metrics::Metrics;

/// The commit breaker, shared between the actor (for its state) and the
/// flush task that calls Iceberg.
pub(super) type SharedBreaker = Arc<std::sync::Mutex<CircuitBreaker>>;

pub(super) type FlushOutcome = Result<Landed, WriterError>;

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
    pub schema: arrow::datatypes::SchemaRef,
}

/// What one flush commits: the rows taken in since the last one, each
/// trade's topic, partition and offset (in row order), and the run of
/// every partition read.
pub(super) struct Pending {
    pub rows: Rows,
    pub at: Vec<(Arc<str>, i32, i64)>,
    pub runs: commit::Runs,
    pub cluster_id: String,
    /// The writer's positions, for partitions the table has none of.
    pub known: KafkaOffsets,
}

/// What a successful flush committed.
pub(super) struct Landed {
    pub committed: commit::Committed,
    pub offsets: KafkaOffsets,
    /// Partitions whose rows below the offset were left out, committed by
    /// another owner of the partition.
    pub committed_below: std::collections::BTreeMap<(String, i32), i64>,
    /// How many rows that was.
    pub left_out: usize,
    /// The trades the commit added, as written: the bars summarize these
    /// rather than read the new files back (`lake::bars::Known`).
    pub trades: Option<arrow::array::RecordBatch>,
}

/// Commits `pending`, planned on the table as it is at each attempt:
/// transient failures are retried behind the breaker, and a commit that
/// lost a race with another writer of the table is planned again at once.
pub(super) async fn commit_with_retries(
    to: &CommitTarget,
    pending: Pending,
    breaker: &SharedBreaker,
    metrics: &Metrics,
    epoch: Instant,
    started: Instant,
) -> FlushOutcome {
    let table = to.table;
    let lake = |source| WriterError::Lake {
        table,
        source: Box::new(source),
    };
    let Pending {
        rows,
        at,
        runs,
        cluster_id,
        known,
    } = pending;
    let offered = rows.len();
    // Retry transient failures forever with capped backoff: the rows
    // are still in Kafka, but giving up here would stall the table.
    let mut backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build();
    let mut rows = Some(rows);
    // The data files, written once, and what they leave out.
    let mut written: Option<(Vec<iceberg::spec::DataFile>, usize, _)> = None;
    let mut trades = None;
    let mut conflicts = 0u32;
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
        let attempt = async {
            let t = to.catalog.load_table(&to.ident).await?;
            let plan = commit::plan(&t, &cluster_id, &runs, &known)?;
            match &written {
                Some((_, _, below)) if *below != plan.committed_below => {
                    // Another owner committed rows of these partitions after
                    // the files were written from them: only a rewind to the
                    // table can sort that out.
                    return Ok(Err(plan.committed_below));
                }
                Some(_) => {}
                None => {
                    let below = plan.committed_below.clone();
                    let is_trades = matches!(rows, Some(Rows::Trades(_)));
                    let batch = match rows.take() {
                        // Rows taken in without their offsets cannot be told
                        // apart: rewind instead.
                        Some(Rows::Trades(r))
                            if !below.is_empty()
                                && at.len() != r.iter().map(|c| c.len()).sum::<usize>() =>
                        {
                            return Ok(Err(below));
                        }
                        Some(Rows::Trades(r)) => {
                            let chunks: Vec<_> = r.into_iter().map(|c| c.batch).collect();
                            // Leaves out the trades another owner committed,
                            // by their offsets.
                            let keep = |i: usize| {
                                below.is_empty() || {
                                    let (t, p, o) = &at[i];
                                    below.get(&(t.to_string(), *p)).is_none_or(|b| o >= b)
                                }
                            };
                            batch::sorted_trades(&to.schema, &chunks, keep)?
                        }
                        // Dead letters carry no offsets of their own to leave
                        // rows out by.
                        Some(Rows::DeadLetters(_)) if !below.is_empty() => {
                            return Ok(Err(below));
                        }
                        Some(Rows::DeadLetters(r)) => batch::dead_letters_batch(&to.schema, &r)?,
                        None => return Err(LakeError::Catalog("rows already taken".into())),
                    };
                    let files = if batch.num_rows() > 0 {
                        commit::write_data_files(&t, &batch, to.target).await?
                    } else {
                        Vec::new()
                    };
                    written = Some((files, offered - batch.num_rows(), below));
                    if is_trades {
                        trades = Some(batch);
                    }
                }
            }
            let (files, _, _) = written.as_ref().expect("written above");
            commit::append_on(to.catalog.as_ref(), &t, files.clone(), &plan.offsets)
                .await
                .map(|c| Ok((c, plan)))
        };
        match attempt.await {
            Ok(Ok((c, plan))) => {
                breaker_call(breaker, metrics, epoch, |b, now| b.on_success(now));
                metrics
                    .writer_commit_seconds
                    .with_label_values(&[table])
                    .observe(started.elapsed().as_secs_f64());
                let left_out = written.as_ref().map_or(0, |w| w.1);
                return Ok(Landed {
                    committed: c,
                    offsets: plan.offsets,
                    committed_below: plan.committed_below,
                    left_out,
                    trades,
                });
            }
            Ok(Err(below)) => return Err(WriterError::Overlap { table, below }),
            Err(e) if commit::is_conflict(&e) && conflicts < 100 => {
                // Another writer of the table (a daemon of the same group,
                // a maintenance run) committed first: plan again on what it
                // left, after a short pause so two writers do not collide in
                // step.
                conflicts += 1;
                metrics
                    .writer_commits
                    .with_label_values(&[table, "conflict"])
                    .inc();
                tracing::debug!(table, conflicts, "iceberg commit conflict; planning again");
                let jitter = rand::random::<u64>() % (5 * u64::from(conflicts.min(20)) + 1);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
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
            Err(source) => return Err(lake(source)),
        }
    }
}
