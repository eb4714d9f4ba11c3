//! GapsActor: writes the gaps the feeds settle in their trade ids to
//! `market.gaps` (`lake::gaps`).
//!
//! Settled gaps are buffered and committed every [`FLUSH`] when there are
//! any, one commit at a time, on the commit runtime (`lake::background`),
//! as the bars actor's runs are. A commit that fails keeps its rows as
//! they are (same batch id, so a commit that landed without its reply is
//! not written twice) and the next tick tries it again before newer rows.
//! [`FlushGaps`] commits what is held and answers once it is committed;
//! the daemon's shutdown sends it after the feeds stop. Stopping the actor
//! (`ctx.stop()`) also tries one last commit of what it holds.
//!
//! What it holds is bounded ([`MAX_HELD`] rows). Gaps are rare, so the
//! bound is only reached when the catalog is unreachable for long; past
//! it, new gaps are dropped, counted in `ticklake_gaps_rows_dropped_total`
//! and logged.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use iceberg::{Catalog, TableIdent};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::actors::observe::{Health, ObservableState, Published};
use crate::lake::LakeError;
use crate::lake::gaps::{self, Appended};
use crate::messages::gaps::{GapRecord, GapSettled};
use crate::messages::observe::Observe;
use crate::metrics::Metrics;

/// How often held gaps are committed (and a failed commit retried).
pub const FLUSH: Duration = Duration::from_secs(2);

/// Rows held at most: buffered, committing, or waiting for a retry.
pub const MAX_HELD: usize = 100_000;

/// Consecutive failed commits between two warnings: one a minute at
/// [`FLUSH`], so a long catalog outage does not flood the log.
const WARN_EVERY: u64 = 30;

/// Why a flush of the gaps did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GapsError {
    /// The rows are kept; the next tick tries again.
    #[error("market.gaps commit of {rows} rows failed: {reason}")]
    Commit { rows: usize, reason: String },
    #[error("the gaps writer stopped before the flush was done")]
    Stopped,
}

/// Commit everything held so far; answered once it is committed, or with
/// the error of the first commit tried for it that failed.
#[derive(Message, Debug, Clone, Copy, Default)]
#[rtype(result = "Result<(), GapsError>")]
pub struct FlushGaps;

/// What `/status` shows of the gaps writer.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GapsState {
    /// Rows committed in all.
    pub rows_written: u64,
    pub commits: u64,
    /// Failed commits in all.
    pub failures: u64,
    /// Rows held and not yet committed (buffered, committing or waiting
    /// for a retry).
    pub buffered: usize,
    /// Gaps dropped because [`MAX_HELD`] rows were held already.
    pub dropped: u64,
    pub committing: bool,
    #[serde(flatten)]
    pub health: Health,
}

impl ObservableState for GapsState {
    fn name(&self) -> String {
        "gaps".into()
    }

    fn status(&self) -> String {
        if self.committing {
            "committing"
        } else if self.buffered > 0 {
            "buffering"
        } else {
            "idle"
        }
        .into()
    }

    fn health(&self) -> &Health {
        &self.health
    }
}

/// Rows handed to one commit. Its id goes with it through retries.
struct Batch {
    id: String,
    rows: Vec<GapRecord>,
    /// Rows accepted up to and including this batch's last: batches
    /// commit in the order their rows came, so once it is committed,
    /// so are the first `end` rows ever accepted.
    end: u64,
}

/// A [`FlushGaps`] waiting for its rows.
struct Waiter {
    /// Answered `Ok` once the first `upto` rows accepted are committed.
    upto: u64,
    /// The first commit started for it: a failure of that commit or a
    /// later one answers it with the error. A commit already running when
    /// the flush came is not its own, so its failure gives another try.
    first_commit: u64,
    tx: oneshot::Sender<Result<(), GapsError>>,
}

pub struct GapsActor {
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    target_file_size: usize,
    metrics: Metrics,
    flush_every: Duration,
    max_held: usize,
    /// Rows not yet handed to a commit, oldest first.
    buffer: Vec<GapRecord>,
    /// The batch whose commit failed, tried again before `buffer`.
    failed: Option<Batch>,
    /// Rows of the running commit.
    in_flight: usize,
    /// Rows accepted and, of them, committed, in all.
    accepted: u64,
    committed: u64,
    /// Commits started in all (the number of the running one).
    started: u64,
    /// Failed commits in a row.
    failing: u64,
    /// Gaps are being dropped (logged once per episode).
    dropping: bool,
    /// The actor is stopping: one last commit, then stop.
    stopping: bool,
    waiters: Vec<Waiter>,
    state: GapsState,
    published: Published<GapsState>,
}

impl GapsActor {
    /// A writer of `ident` (`lake::gaps::ident(cfg)`, made by
    /// `lake::gaps::ensure_table`), committing every [`FLUSH`].
    pub fn new(
        catalog: Arc<dyn Catalog>,
        ident: TableIdent,
        target_file_size: usize,
        metrics: Metrics,
    ) -> Self {
        Self {
            catalog,
            ident,
            target_file_size,
            metrics,
            flush_every: FLUSH,
            max_held: MAX_HELD,
            buffer: Vec::new(),
            failed: None,
            in_flight: 0,
            accepted: 0,
            committed: 0,
            started: 0,
            failing: 0,
            dropping: false,
            stopping: false,
            waiters: Vec::new(),
            state: GapsState::default(),
            published: Published::new(GapsState::default()),
        }
    }

    /// Commits every `every` instead of [`FLUSH`].
    pub fn with_flush_every(mut self, every: Duration) -> Self {
        self.flush_every = every;
        self
    }

    /// Holds at most `rows` instead of [`MAX_HELD`].
    pub fn with_max_held(mut self, rows: usize) -> Self {
        self.max_held = rows.max(1);
        self
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<GapsState> {
        self.published.subscribe()
    }

    fn held(&self) -> usize {
        self.buffer.len() + self.in_flight + self.failed.as_ref().map_or(0, |b| b.rows.len())
    }

    fn publish(&mut self) {
        self.state.buffered = self.held();
        self.state.committing = self.in_flight > 0;
        self.published.publish(&self.state);
    }

    fn accept(&mut self, row: GapRecord) {
        if self.held() >= self.max_held {
            self.state.dropped += 1;
            self.metrics
                .gaps_rows_dropped
                .with_label_values::<&str>(&[])
                .inc();
            if !self.dropping {
                self.dropping = true;
                tracing::error!(held = self.held(), exchange = %row.exchange, symbol = %row.symbol,
                    from_id = row.from_id, to_id = row.to_id,
                    "gaps: market.gaps commits are failing and the writer holds its bound of rows; \
                     settled gaps are dropped (counted in ticklake_gaps_rows_dropped_total)");
            }
            return;
        }
        self.accepted += 1;
        self.buffer.push(row);
    }

    /// Starts a commit of the failed batch, else of the buffer, unless one
    /// runs already or nothing is held. Whether one is running now.
    fn start_commit(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.in_flight > 0 {
            return true;
        }
        let batch = match self.failed.take() {
            Some(b) => b,
            None if self.buffer.is_empty() => return false,
            None => Batch {
                id: uuid::Uuid::new_v4().to_string(),
                rows: std::mem::take(&mut self.buffer),
                end: self.accepted,
            },
        };
        self.started += 1;
        let number = self.started;
        self.in_flight = batch.rows.len();
        let (catalog, ident, size) = (
            self.catalog.clone(),
            self.ident.clone(),
            self.target_file_size,
        );
        let batch = Arc::new(batch);
        let job = {
            let batch = batch.clone();
            crate::lake::background::handle().spawn(async move {
                gaps::append(catalog.as_ref(), &ident, &batch.id, &batch.rows, size).await
            })
        };
        ctx.spawn(
            async move {
                job.await
                    .unwrap_or_else(|e| Err(LakeError::Catalog(format!("gaps commit task: {e}"))))
            }
            .into_actor(self)
            .map(move |result, a, ctx| a.finished(batch, number, result, ctx)),
        );
        self.publish();
        true
    }

    fn finished(
        &mut self,
        batch: Arc<Batch>,
        number: u64,
        result: Result<Appended, LakeError>,
        ctx: &mut Context<Self>,
    ) {
        self.in_flight = 0;
        // The task is done, so this is the only reference left; a copy
        // would only be made if that ever changed.
        let batch = Arc::try_unwrap(batch).unwrap_or_else(|b| Batch {
            id: b.id.clone(),
            rows: b.rows.clone(),
            end: b.end,
        });
        let error = match result {
            Ok(a) => {
                self.committed = batch.end;
                self.failing = 0;
                self.dropping = false;
                self.state.commits += 1;
                self.state.rows_written += a.rows as u64;
                self.metrics
                    .gaps_rows_written
                    .with_label_values::<&str>(&[])
                    .inc_by(a.rows as u64);
                tracing::debug!(
                    rows = a.rows,
                    files = a.files,
                    snapshot_id = a.snapshot_id,
                    found_committed = a.already,
                    "gaps: committed"
                );
                None
            }
            Err(e) => {
                self.failing += 1;
                self.state.failures += 1;
                self.state.health.last_error = Some(e.to_string());
                self.metrics
                    .gaps_commit_failures
                    .with_label_values::<&str>(&[])
                    .inc();
                if self.failing == 1 || self.failing.is_multiple_of(WARN_EVERY) {
                    tracing::warn!(error = %e, rows = batch.rows.len(), failed_in_a_row = self.failing,
                        "gaps: market.gaps commit failed; the rows are kept and retried");
                }
                let error = GapsError::Commit {
                    rows: batch.rows.len(),
                    reason: e.to_string(),
                };
                self.failed = Some(batch);
                Some(error)
            }
        };
        self.answer(number, error.as_ref());
        // Flushes that came while this commit ran want another; so does
        // a stop, until nothing is held or a commit fails.
        let more = !self.waiters.is_empty() || (self.stopping && error.is_none());
        if more && !self.start_commit(ctx) {
            self.answer_all_done();
        }
        if self.stopping && self.in_flight == 0 {
            if self.held() > 0 {
                tracing::error!(
                    rows = self.held(),
                    "gaps: stopping with rows market.gaps did not take; they are lost"
                );
            }
            ctx.stop();
        }
        self.publish();
    }

    /// Answers the flushes this commit settles: those whose rows are all
    /// committed now, and, when it failed, those it was started for.
    fn answer(&mut self, number: u64, error: Option<&GapsError>) {
        let committed = self.committed;
        let mut waiting = Vec::new();
        for w in std::mem::take(&mut self.waiters) {
            if w.upto <= committed {
                let _ = w.tx.send(Ok(()));
            } else if let Some(e) = error.filter(|_| w.first_commit <= number) {
                let _ = w.tx.send(Err(e.clone()));
            } else {
                waiting.push(w);
            }
        }
        self.waiters = waiting;
    }

    /// Nothing is left to commit: every flush waiting is done.
    fn answer_all_done(&mut self) {
        for w in self.waiters.drain(..) {
            let _ = w.tx.send(Ok(()));
        }
    }
}

impl Actor for GapsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.publish();
        ctx.run_interval(self.flush_every, |a, ctx| {
            a.start_commit(ctx);
        });
    }

    /// One last commit of what is held before the actor goes.
    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        if self.stopping || self.held() == 0 {
            return Running::Stop;
        }
        self.stopping = true;
        self.start_commit(ctx);
        Running::Continue
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for w in self.waiters.drain(..) {
            let _ = w.tx.send(Err(GapsError::Stopped));
        }
    }
}

impl Handler<GapSettled> for GapsActor {
    type Result = ();

    fn handle(&mut self, msg: GapSettled, _ctx: &mut Self::Context) {
        self.accept(msg.0);
        self.publish();
    }
}

impl Handler<FlushGaps> for GapsActor {
    type Result = ResponseFuture<Result<(), GapsError>>;

    fn handle(&mut self, _: FlushGaps, ctx: &mut Self::Context) -> Self::Result {
        if self.committed >= self.accepted {
            return Box::pin(async { Ok(()) });
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push(Waiter {
            upto: self.accepted,
            first_commit: self.started + 1,
            tx,
        });
        self.start_commit(ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(GapsError::Stopped)) })
    }
}

impl Handler<Observe<GapsState>> for GapsActor {
    type Result = MessageResult<Observe<GapsState>>;

    fn handle(&mut self, _: Observe<GapsState>, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::lake::{self, gaps::sample};

    struct Lake {
        _dir: tempfile::TempDir,
        cfg: Config,
        catalog: Arc<dyn Catalog>,
    }

    /// A fresh lake; `market.gaps` made only if `with_table`.
    async fn lake(with_table: bool) -> Lake {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::default().under(dir.path());
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        if with_table {
            gaps::ensure_table(catalog.as_ref(), &cfg).await.unwrap();
        }
        Lake {
            _dir: dir,
            cfg,
            catalog,
        }
    }

    fn actor(l: &Lake, metrics: &Metrics) -> GapsActor {
        GapsActor::new(
            l.catalog.clone(),
            gaps::ident(&l.cfg),
            1 << 20,
            metrics.clone(),
        )
        // Only the flushes of the test commit, unless it says otherwise.
        .with_flush_every(Duration::from_secs(3600))
    }

    async fn table_rows(l: &Lake) -> Vec<GapRecord> {
        let t = l.catalog.load_table(&gaps::ident(&l.cfg)).await.unwrap();
        gaps::read_all(&t).await.unwrap()
    }

    fn counter(c: &prometheus::IntCounterVec) -> u64 {
        c.with_label_values::<&str>(&[]).get()
    }

    #[actix_rt::test]
    async fn settled_gaps_are_committed_on_flush_and_read_back_whole() {
        let l = lake(true).await;
        let metrics = Metrics::new().unwrap();
        let addr = actor(&l, &metrics).start();
        assert_eq!(addr.send(FlushGaps).await.unwrap(), Ok(()), "nothing held");

        let first = sample("BINANCE", 3, 1000);
        assert!(first[0].filled_at_us.is_some() && first[0].detail.is_none());
        assert!(first[1].filled_at_us.is_none() && first[1].detail.is_some());
        for g in &first {
            addr.do_send(GapSettled(g.clone()));
        }
        let s = addr.send(Observe::<GapsState>::new()).await.unwrap();
        assert_eq!((s.buffered, s.commits), (3, 0), "held until a flush");
        addr.send(FlushGaps).await.unwrap().unwrap();
        assert_eq!(table_rows(&l).await, first);

        // A second batch is a second commit, appended.
        let second = sample("KRAKEN", 2, 5);
        for g in &second {
            addr.do_send(GapSettled(g.clone()));
        }
        addr.send(FlushGaps).await.unwrap().unwrap();
        let mut want = first;
        want.extend(second);
        assert_eq!(table_rows(&l).await, want);
        let t = l.catalog.load_table(&gaps::ident(&l.cfg)).await.unwrap();
        assert_eq!(t.metadata().snapshots().count(), 2);

        let s = addr.send(Observe::<GapsState>::new()).await.unwrap();
        assert_eq!(
            (s.rows_written, s.commits, s.failures, s.buffered, s.dropped),
            (5, 2, 0, 0, 0)
        );
        assert_eq!(s.health.last_error, None);
        assert_eq!(counter(&metrics.gaps_rows_written), 5);
        assert_eq!(counter(&metrics.gaps_commit_failures), 0);
        assert!(
            metrics
                .render()
                .contains("ticklake_gaps_rows_written_total 5")
        );
    }

    #[actix_rt::test]
    async fn the_tick_commits_without_a_flush() {
        let l = lake(true).await;
        let metrics = Metrics::new().unwrap();
        let a = actor(&l, &metrics).with_flush_every(Duration::from_millis(50));
        let mut state = a.subscribe();
        let addr = a.start();
        let rows = sample("COINBASE", 2, 1);
        for g in &rows {
            addr.do_send(GapSettled(g.clone()));
        }
        tokio::time::timeout(
            Duration::from_secs(30),
            state.wait_for(|s| s.rows_written == 2),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(table_rows(&l).await, rows);
    }

    /// A failed commit keeps its rows: the flush says so, `/status` and the
    /// metric count it, and the next tick commits them once the table is
    /// there.
    #[actix_rt::test]
    async fn a_failed_commit_keeps_the_rows_for_the_next_tick() {
        let l = lake(false).await;
        let metrics = Metrics::new().unwrap();
        let a = actor(&l, &metrics).with_flush_every(Duration::from_millis(200));
        let mut state = a.subscribe();
        let addr = a.start();
        let rows = sample("BINANCE", 3, 1);
        for g in &rows {
            addr.do_send(GapSettled(g.clone()));
        }
        let err = addr.send(FlushGaps).await.unwrap().unwrap_err();
        assert!(matches!(err, GapsError::Commit { rows: 3, .. }), "{err}");
        let s = addr.send(Observe::<GapsState>::new()).await.unwrap();
        assert!(s.failures >= 1 && s.health.last_error.is_some(), "{s:?}");
        assert_eq!((s.buffered, s.rows_written), (3, 0));
        assert!(counter(&metrics.gaps_commit_failures) >= 1);

        gaps::ensure_table(l.catalog.as_ref(), &l.cfg)
            .await
            .unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            state.wait_for(|s| s.rows_written == 3),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(table_rows(&l).await, rows);
        let s = addr.send(Observe::<GapsState>::new()).await.unwrap();
        assert_eq!((s.buffered, s.commits), (0, 1));
        assert_eq!(counter(&metrics.gaps_rows_written), 3);
    }

    /// Past the bound, new gaps are dropped and counted; what is held is
    /// still committed.
    #[actix_rt::test]
    async fn beyond_the_bound_gaps_are_dropped_and_counted() {
        let l = lake(true).await;
        let metrics = Metrics::new().unwrap();
        let addr = actor(&l, &metrics).with_max_held(3).start();
        let rows = sample("BINANCE", 5, 1);
        for g in &rows {
            addr.do_send(GapSettled(g.clone()));
        }
        let s = addr.send(Observe::<GapsState>::new()).await.unwrap();
        assert_eq!((s.buffered, s.dropped), (3, 2));
        assert_eq!(counter(&metrics.gaps_rows_dropped), 2);
        addr.send(FlushGaps).await.unwrap().unwrap();
        assert_eq!(table_rows(&l).await, rows[..3].to_vec());
    }

    /// Stopping the actor commits what it holds first.
    #[actix_rt::test]
    async fn stopping_commits_what_is_held() {
        struct Stop;
        impl Message for Stop {
            type Result = ();
        }
        impl Handler<Stop> for GapsActor {
            type Result = ();
            fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
                ctx.stop();
            }
        }
        let l = lake(true).await;
        let metrics = Metrics::new().unwrap();
        let a = actor(&l, &metrics);
        let mut state = a.subscribe();
        let addr = a.start();
        let rows = sample("KRAKEN", 2, 1);
        for g in &rows {
            addr.do_send(GapSettled(g.clone()));
        }
        addr.send(Stop).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            state.wait_for(|s| s.rows_written == 2),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(table_rows(&l).await, rows);
    }
}
