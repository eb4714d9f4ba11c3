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
    /// Files held this long for a commit that keeps failing are written
    /// again before the next attempt (`lake::orphans::WRITTEN_MAX_AGE`):
    /// the orphan sweep takes unreferenced files past an age for
    /// abandoned, so no commit may offer files near that age.
    pub rewrite_after: Duration,
}

/// A commit's data files, written once and kept across its attempts.
struct Written {
    files: Vec<iceberg::spec::DataFile>,
    /// Rows left out, committed by another owner.
    left_out: usize,
    /// The other owners' commits the files were written around.
    below: std::collections::BTreeMap<(String, i32), i64>,
    /// The rows, to write the files again from.
    batch: arrow::array::RecordBatch,
    at: Instant,
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
    let is_trades = matches!(rows, Rows::Trades(_));
    let mut rows = Some(rows);
    let mut written: Option<Written> = None;
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
            match &mut written {
                Some(w) if w.below != plan.committed_below => {
                    // Another owner committed rows of these partitions after
                    // the files were written from them: only a rewind to the
                    // table can sort that out.
                    return Ok(Err(plan.committed_below));
                }
                Some(w) if w.at.elapsed() >= to.rewrite_after => {
                    // The old files are left where they are: nothing
                    // references them, and the orphan sweep takes them.
                    w.files = if w.batch.num_rows() > 0 {
                        commit::write_data_files(&t, &w.batch, to.target).await?
                    } else {
                        Vec::new()
                    };
                    w.at = Instant::now();
                    metrics
                        .writer_commits
                        .with_label_values(&[table, "rewritten"])
                        .inc();
                    tracing::warn!(
                        table,
                        files = w.files.len(),
                        "iceberg commit still failing; its data files written again, so none grows old enough for the orphan sweep"
                    );
                }
                Some(_) => {}
                None => {
                    let below = plan.committed_below.clone();
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
                    written = Some(Written {
                        files,
                        left_out: offered - batch.num_rows(),
                        below,
                        batch,
                        at: Instant::now(),
                    });
                }
            }
            let files = written
                .as_ref()
                .map(|w| w.files.clone())
                .unwrap_or_default();
            commit::append_on(to.catalog.as_ref(), &t, files, &plan.offsets)
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
                let left_out = written.as_ref().map_or(0, |w| w.left_out);
                return Ok(Landed {
                    committed: c,
                    offsets: plan.offsets,
                    committed_below: plan.committed_below,
                    left_out,
                    trades: written.filter(|_| is_trades).map(|w| w.batch),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::degrade::breaker::CircuitBreaker;
    use crate::lake::batch::TradeChunk;
    use crate::lake::commit::Run;
    use crate::model::TradeV2;

    fn parquet_files(dir: &std::path::Path) -> usize {
        crate::lake::files_under(dir)
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .count()
    }

    /// A commit whose catalog refuses it (a trigger on the SQL catalog's
    /// table: reads work, commits fail, as with a catalog that went read
    /// only) is retried, and with `rewrite_after` at zero its data files
    /// are written again before every attempt. When the catalog takes
    /// commits again, the rows land once, from the newest files; the
    /// older ones are unreferenced, and the orphan sweep takes them and
    /// nothing the table reads.
    #[tokio::test]
    async fn a_commit_that_keeps_failing_writes_its_files_again_and_the_sweep_takes_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, catalog, _, ident, schema) = crate::lake::test_lake(dir.path()).await;
        let db = sqlx::SqlitePool::connect(&cfg.catalog_uri()).await.unwrap();
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE UPDATE ON iceberg_tables \
             BEGIN SELECT RAISE(ABORT, 'the catalog refuses commits'); END",
        )
        .execute(&db)
        .await
        .unwrap();
        let trades: Vec<TradeV2> = (0..50)
            .map(|i| {
                TradeV2::builder("X", "BTCUSDT", &i.to_string(), 1_700_000_000_000_000 + i).build()
            })
            .collect();
        let chunk = TradeChunk {
            batch: crate::lake::batch::trades_batch(&schema, &trades).unwrap(),
            keys: trades
                .iter()
                .map(|t| crate::dedup::key(&t.message_id))
                .collect(),
        };
        let pending = Pending {
            rows: Rows::Trades(vec![chunk]),
            at: Vec::new(),
            runs: commit::Runs::from([(("t.trades".into(), 0), Run { from: None, to: 50 })]),
            cluster_id: "c".into(),
            known: KafkaOffsets {
                cluster_id: "c".into(),
                ..Default::default()
            },
        };
        let to = CommitTarget {
            catalog: catalog.clone(),
            ident: ident.clone(),
            table: "trades",
            target: 1 << 20,
            schema,
            rewrite_after: Duration::ZERO,
        };
        let breaker: SharedBreaker = Arc::new(std::sync::Mutex::new(
            CircuitBreaker::new("commit.trades", cfg.breaker.commit.clone()).unwrap(),
        ));
        let metrics = Metrics::new().unwrap();
        let m = metrics.clone();
        let commit = tokio::spawn(async move {
            let now = Instant::now();
            commit_with_retries(&to, pending, &breaker, &m, now, now).await
        });
        let rewritten = || {
            metrics
                .writer_commits
                .with_label_values(&["trades", "rewritten"])
                .get()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while rewritten() < 2 {
            assert!(
                Instant::now() < deadline,
                "no rewrite while the commits failed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sqlx::query("DROP TRIGGER refuse")
            .execute(&db)
            .await
            .unwrap();
        let landed = commit.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(landed.committed.rows, 50);

        let read = || crate::lake::rows_of(catalog.as_ref(), &ident);
        assert_eq!(read().await, 50);
        let written = parquet_files(dir.path());
        assert!(written >= 3, "a first write and two rewrites: {written}");
        let r = crate::lake::orphans::sweep(catalog.as_ref(), &ident, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(r.refused, None, "{r:?}");
        // The old data files, and the manifests and manifest lists the
        // refused attempts wrote.
        assert_eq!(r.deleted, r.listed - r.referenced, "{r:?}");
        assert!(r.deleted > written - 1, "{r:?}");
        assert_eq!(parquet_files(dir.path()), 1);
        assert_eq!(read().await, 50);
        let again = crate::lake::orphans::sweep(catalog.as_ref(), &ident, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            (again.listed, again.deleted),
            (again.referenced, 0),
            "{again:?}"
        );
    }
}
