//! QueryActor: owns the DataFusion session over the lake and the tail
//! (`market.trades_live`), answers the API's requests, and re-pins the
//! newest snapshot after every commit so scans rarely need the catalog.
//! Queries run on the query runtime (`crate::query::pool`); the actor
//! itself never waits on one.
//!
//! A query holds one of `api.max_concurrent` slots from the moment it is
//! taken in until its work has stopped, which for a query past its
//! deadline is after its 504 went out: the answer does not wait for the
//! work to notice the deadline, the slot does.

use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;

use crate::actors::observe::{Health, ObservableState, Published};
use crate::lake::schema::{BARS_TABLE, TRADES_TABLE};
use crate::messages::consumer::Committed;
use crate::messages::observe::Observe;
use crate::messages::query::{Answer, LakeChanged, QueryDone, QueryError, RunQuery};
use crate::messages::tail::QueryPinned;
use crate::query::cancel::Cancel;
use crate::query::engine::Engine;

/// How long a query's work may take to stop after it was cancelled before
/// its slot is given back anyway (and a warning logged). Work stops at its
/// next batch or phase; this only guards against a stream that never ends.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// What `/status` shows of the query actor.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryState {
    /// Requests taken in.
    pub queries: u64,
    /// Of those, refused because every slot was taken (429).
    pub refused_busy: u64,
    /// Queries holding a slot: running, or stopping after their deadline.
    pub running: usize,
    /// Queries that ran past `api.timeout_ms` (504).
    pub timed_out: u64,
    /// Commits of `market.trades` heard of, each a re-pin.
    pub commits_seen: u64,
    /// The newest of them.
    pub last_snapshot_id: Option<i64>,
    #[serde(flatten)]
    pub health: Health,
}

impl ObservableState for QueryState {
    fn name(&self) -> String {
        "query".into()
    }

    fn status(&self) -> String {
        "running".into()
    }

    fn health(&self) -> &Health {
        &self.health
    }
}

pub struct QueryActor {
    engine: Arc<Engine>,
    /// Told when a commit's snapshot is pinned (`TailActor::with_query_pins`).
    tail: Option<Recipient<QueryPinned>>,
    /// One permit per query allowed to run at once (`api.max_concurrent`).
    slots: Arc<tokio::sync::Semaphore>,
    state: QueryState,
    published: Published<QueryState>,
}

impl QueryActor {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(engine.max_concurrent())),
            engine,
            tail: None,
            state: QueryState::default(),
            published: Published::new(QueryState::default()),
        }
    }

    /// Tells `tail` when each commit's snapshot is pinned.
    pub fn with_tail(mut self, tail: Recipient<QueryPinned>) -> Self {
        self.tail = Some(tail);
        self
    }

    /// The state this actor publishes after every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<QueryState> {
        self.published.subscribe()
    }
}

impl Actor for QueryActor {
    type Context = Context<Self>;
}

/// A query's hold on its slot: given back, and the actor told, when
/// dropped, whether the query ended, failed or panicked.
struct Slot {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    actor: Addr<QueryActor>,
    timed_out: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Free before the actor hears of it, so a caller that saw the
        // query done finds its slot free.
        drop(self.permit.take());
        self.actor.do_send(QueryDone {
            timed_out: self.timed_out,
        });
    }
}

impl Handler<RunQuery> for QueryActor {
    type Result = ResponseFuture<Result<Answer, QueryError>>;

    fn handle(&mut self, msg: RunQuery, ctx: &mut Self::Context) -> Self::Result {
        self.state.queries += 1;
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.state.refused_busy += 1;
            self.published.publish(&self.state);
            let max = self.engine.max_concurrent();
            return Box::pin(async move { Err(QueryError::TooBusy(max)) });
        };
        self.state.running += 1;
        self.published.publish(&self.state);
        let mut slot = Slot {
            permit: Some(permit),
            actor: ctx.address(),
            timed_out: false,
        };
        let engine = self.engine.clone();
        let cancel = Cancel::after(engine.timeout_ms());
        let work = cancel.clone();
        // On the query runtime: its own threads and stacks, and a panic
        // there fails this query only (see `query::pool`).
        let task = crate::query::pool::handle().spawn(async move {
            let answer = engine.run_until(msg.0, &work).await;
            slot.timed_out = matches!(answer, Err(QueryError::Timeout(_)));
            // Streams of the query may still run in DataFusion's tasks;
            // the slot waits for them.
            if tokio::time::timeout(STOP_GRACE, work.stopped())
                .await
                .is_err()
            {
                tracing::warn!(
                    live_streams = work.live_streams(),
                    "query: work still running {} s after the query ended; its slot is given back",
                    STOP_GRACE.as_secs()
                );
            }
            drop(slot);
            answer
        });
        Box::pin(async move {
            tokio::select! {
                joined = task => match joined {
                    Ok(answer) => answer,
                    Err(e) if e.is_panic() => Err(QueryError::Internal(
                        "the query failed inside the engine (a panic, logged and counted in ticklake_actor_panics_total); the daemon carries on".into(),
                    )),
                    Err(e) => Err(QueryError::Internal(format!("query task failed: {e}"))),
                },
                // Answered at the deadline, wherever the work is; the task
                // stops at its next check and keeps its slot until then.
                _ = tokio::time::sleep_until(cancel.deadline()) => {
                    cancel.cancel();
                    Err(QueryError::Timeout(cancel.timeout_ms()))
                }
            }
        })
    }
}

impl Handler<QueryDone> for QueryActor {
    type Result = ();

    fn handle(&mut self, msg: QueryDone, _ctx: &mut Self::Context) {
        self.state.running = self.state.running.saturating_sub(1);
        if msg.timed_out {
            self.state.timed_out += 1;
        }
        self.published.publish(&self.state);
    }
}

impl Handler<Committed> for QueryActor {
    type Result = ();

    fn handle(&mut self, msg: Committed, _ctx: &mut Self::Context) {
        if msg.table != TRADES_TABLE {
            return;
        }
        self.state.commits_seen += 1;
        self.state.last_snapshot_id = Some(msg.snapshot_id);
        self.published.publish(&self.state);
        let engine = self.engine.clone();
        let tail = self.tail.clone();
        let offsets = msg.offsets;
        tokio::spawn(async move {
            // On the query runtime, as the queries waiting for it would.
            let e = engine.clone();
            let pinned = crate::query::pool::handle().spawn(async move { e.refresh().await });
            if let Err(e) = pinned.await {
                tracing::warn!(error = %e, "query: pinning the new snapshot failed");
            }
            // Pinned or not, the tail may now let the committed rows go: a
            // query that cannot pin the older snapshot loads the new one.
            if let Some(tail) = tail {
                tail.do_send(QueryPinned { offsets });
            }
            // Off the pool: nobody waits on it.
            let learn = crate::lake::background::handle()
                .spawn(async move { engine.learn_lake_facts().await });
            if let Err(e) = learn.await {
                tracing::debug!(error = %e, "query: learning the lake's newest trades failed");
            }
        });
    }
}

impl Handler<LakeChanged> for QueryActor {
    type Result = ();

    fn handle(&mut self, msg: LakeChanged, _ctx: &mut Self::Context) {
        let engine = self.engine.clone();
        match msg.table {
            TRADES_TABLE => {
                tokio::spawn(async move { engine.refresh().await });
            }
            BARS_TABLE => {
                tokio::spawn(async move { engine.refresh_bars().await });
            }
            _ => {}
        }
    }
}

impl Handler<Observe<QueryState>> for QueryActor {
    type Result = MessageResult<Observe<QueryState>>;

    fn handle(&mut self, _: Observe<QueryState>, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::messages::query::QueryRequest;

    /// A query actor over an empty lake, and its published state.
    async fn actor(
        cfg: &Config,
        setup: impl FnOnce(&Engine),
    ) -> (Addr<QueryActor>, tokio::sync::watch::Receiver<QueryState>) {
        let engine = crate::query::session::engine(cfg, None).await.unwrap();
        setup(&engine);
        let actor = QueryActor::new(Arc::new(engine));
        let state = actor.subscribe();
        (actor.start(), state)
    }

    fn sql(q: &str) -> RunQuery {
        RunQuery(QueryRequest::Sql(q.into()))
    }

    /// `(values (0), …, (n-1))`.
    fn values(n: usize) -> String {
        format!(
            "(values {}) ",
            (0..n)
                .map(|i| format!("({i})"))
                .collect::<Vec<_>>()
                .join(",")
        )
    }

    /// With one slot, a second query while the first runs is refused at
    /// once (429), and the slot is free again once the first has stopped.
    #[actix_rt::test]
    async fn queries_beyond_the_slots_are_refused_not_queued() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default().under(dir.path());
        cfg.api.max_concurrent = 1;
        cfg.api.timeout_ms = 2_000;
        let (actor, mut state) = actor(&cfg, |_| {}).await;
        // A cartesian product of 10^12 rows: runs until the timeout.
        let v = values(1000);
        let slow = format!(
            "select sum(a.column1 * b.column1 + c.column1 - d.column1) \
             from {v} a, {v} b, {v} c, {v} d"
        );
        let first = actor.send(sql(&slow));
        let second = actor.send(sql("select 1"));
        let (first, second) = futures::join!(first, second);
        assert_eq!(second.unwrap().unwrap_err(), QueryError::TooBusy(1));
        assert_eq!(first.unwrap().unwrap_err(), QueryError::Timeout(2_000));
        // The slot comes back once the first query's work has stopped.
        state.wait_for(|s| s.running == 0).await.unwrap();
        let third = actor.send(sql("select 1")).await.unwrap();
        assert!(third.is_ok(), "{third:?}");
        let state = actor.send(Observe::<QueryState>::new()).await.unwrap();
        assert_eq!(
            (state.queries, state.refused_busy, state.timed_out),
            (3, 1, 1)
        );
    }

    /// Calls of `busy` under way and made, across every thread.
    static BUSY_NOW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static BUSY_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// `busy(x)`: x, after a while of arithmetic per row, counted.
    fn busy_udf() -> datafusion::logical_expr::ScalarUDF {
        use arrow::array::{Array, Int64Array};
        use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
        use std::sync::atomic::Ordering;
        create_udf(
            "busy",
            vec![arrow::datatypes::DataType::Int64],
            arrow::datatypes::DataType::Int64,
            Volatility::Volatile,
            Arc::new(|args: &[ColumnarValue]| {
                BUSY_NOW.fetch_add(1, Ordering::SeqCst);
                let out = args[0].to_array(1).and_then(|a| {
                    let a = a.as_any().downcast_ref::<Int64Array>().ok_or_else(|| {
                        datafusion::error::DataFusionError::Internal("busy takes an i64".into())
                    })?;
                    // Work whose result is discarded: busy(x) = x.
                    for v in a.iter().flatten() {
                        let mut h = v;
                        for _ in 0..20_000 {
                            h = std::hint::black_box(h.wrapping_mul(31).wrapping_add(7));
                        }
                    }
                    Ok(ColumnarValue::Array(Arc::new(a.clone())))
                });
                BUSY_CALLS.fetch_add(1, Ordering::SeqCst);
                BUSY_NOW.fetch_sub(1, Ordering::SeqCst);
                out
            }),
        )
    }

    /// A query past its deadline is answered with a timeout (504) while its
    /// work may still be under way, and keeps its slot until that work has
    /// stopped everywhere (DataFusion's own tasks included): when the slot
    /// is back, nothing of the query runs, and nothing runs later.
    #[actix_rt::test]
    async fn a_query_past_its_deadline_stops_its_work_before_its_slot_returns() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default().under(dir.path());
        cfg.api.max_concurrent = 2;
        cfg.api.timeout_ms = 500;
        let (actor, mut state) = actor(&cfg, |e| e.context().register_udf(busy_udf())).await;
        let v = values(1000);
        let slow =
            format!("select sum(busy(a.column1 + b.column1 + c.column1)) from {v} a, {v} b, {v} c");
        let answer = actor.send(sql(&slow)).await.unwrap();
        assert_eq!(answer.unwrap_err(), QueryError::Timeout(500));
        state.wait_for(|s| s.running == 0).await.unwrap();
        assert_eq!(
            BUSY_NOW.load(Ordering::SeqCst),
            0,
            "work ran on without a slot"
        );
        let calls = BUSY_CALLS.load(Ordering::SeqCst);
        assert!(calls > 0, "the query was at work when it timed out");
        // A query through the same runtime, after which no call of the
        // first one has happened either.
        assert!(actor.send(sql("select 1")).await.unwrap().is_ok());
        assert_eq!(BUSY_CALLS.load(Ordering::SeqCst), calls);
        assert_eq!(state.borrow().timed_out, 1);
    }

    /// An answer that needs more than `api.max_memory_bytes` (its rows, or
    /// its JSON text) is refused with the limit named, gives its memory
    /// back, and the next query runs.
    #[actix_rt::test]
    async fn answers_past_the_memory_limit_are_refused_and_the_daemon_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default().under(dir.path());
        cfg.api.max_memory_bytes = 4 << 20;
        let pool = std::sync::Mutex::new(None);
        let (actor, _) = actor(&cfg, |e| {
            *pool.lock().unwrap() = Some(e.context().runtime_env().memory_pool.clone());
        })
        .await;
        let pool = pool.into_inner().unwrap().unwrap();
        // 20 MB of rows. Literals, not `repeat`: a function that builds
        // large values is refused before the answer (`query::limits`).
        let x = |n: usize| "x".repeat(n);
        let rows = actor
            .send(sql(&format!(
                "select '{}' as s from {}",
                x(200_000),
                values(100)
            )))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&rows, QueryError::OverMemory(m) if m.contains("rows") && m.contains("4194304 bytes of api.max_memory_bytes")),
            "{rows:?}"
        );
        // 720 KB of rows whose JSON text (every byte escaped as \u0001)
        // would take six times that.
        let text = actor
            .send(sql(&format!(
                "select translate('{}', 'x', chr(1)) as s from {}",
                x(240_000),
                values(3)
            )))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&text, QueryError::OverMemory(m) if m.contains("JSON text")),
            "{text:?}"
        );
        assert_eq!(pool.reserved(), 0, "refused answers hold nothing");
        let fits = actor
            .send(sql(&format!("select '{}' as s", x(250_000))))
            .await
            .unwrap()
            .unwrap();
        assert!(fits.len() > 250_000);
        assert!(pool.reserved() >= 250_000, "an answer counts until sent");
        drop(fits);
        assert_eq!(pool.reserved(), 0);
    }
}
