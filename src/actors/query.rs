//! QueryActor: owns the DataFusion session over the lake and the tail
//! (`market.trades_live`), answers the API's requests, and re-pins the
//! newest snapshot after every commit so scans rarely need the catalog.
//! Queries run on the tokio pool; the actor itself never waits on one.

use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;

use crate::actors::observe::{Health, ObservableState, Published};
use crate::lake::schema::TRADES_TABLE;
use crate::messages::consumer::Committed;
use crate::messages::observe::Observe;
use crate::messages::query::{Answer, QueryError, RunQuery};
use crate::query::engine::Engine;

/// What `/status` shows of the query actor.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryState {
    /// Requests taken in.
    pub queries: u64,
    /// Of those, refused because every slot was taken (429).
    pub refused_busy: u64,
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
            state: QueryState::default(),
            published: Published::new(QueryState::default()),
        }
    }

    /// The state this actor publishes after every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<QueryState> {
        self.published.subscribe()
    }
}

impl Actor for QueryActor {
    type Context = Context<Self>;
}

impl Handler<RunQuery> for QueryActor {
    type Result = ResponseFuture<Result<Answer, QueryError>>;

    fn handle(&mut self, msg: RunQuery, _ctx: &mut Self::Context) -> Self::Result {
        self.state.queries += 1;
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.state.refused_busy += 1;
            self.published.publish(&self.state);
            let max = self.engine.max_concurrent();
            return Box::pin(async move { Err(QueryError::TooBusy(max)) });
        };
        self.published.publish(&self.state);
        let engine = self.engine.clone();
        // On the query runtime: its own threads and stacks, and a panic
        // there fails this query only (see `query::pool`).
        let task = crate::query::pool::handle().spawn(async move {
            let _slot = slot;
            engine.run(msg.0).await
        });
        Box::pin(async move {
            match task.await {
                Ok(answer) => answer,
                Err(e) if e.is_panic() => Err(QueryError::Internal(
                    "the query failed inside the engine (a panic, logged and counted in ticklake_actor_panics_total); the daemon carries on".into(),
                )),
                Err(e) => Err(QueryError::Internal(format!("query task failed: {e}"))),
            }
        })
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
        tokio::spawn(async move {
            engine.refresh().await;
            // Off the pool: nobody waits on it.
            let learn = crate::lake::background::handle()
                .spawn(async move { engine.learn_lake_facts().await });
            if let Err(e) = learn.await {
                tracing::debug!(error = %e, "query: learning the lake's newest trades failed");
            }
        });
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

    /// With one slot, a second query while the first runs is refused at
    /// once (429), and the slot is free again once the first ends.
    #[actix_rt::test]
    async fn queries_beyond_the_slots_are_refused_not_queued() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default().under(dir.path());
        cfg.api.max_concurrent = 1;
        cfg.api.timeout_ms = 2_000;
        let engine = crate::query::session::engine(&cfg, None).await.unwrap();
        let actor = QueryActor::new(Arc::new(engine)).start();
        // A cartesian product of 10^12 rows: runs until the timeout.
        let values = format!(
            "(values {}) ",
            (0..1000)
                .map(|i| format!("({i})"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let slow = format!(
            "select sum(a.column1 * b.column1 + c.column1 - d.column1) \
             from {values} a, {values} b, {values} c, {values} d"
        );
        let first = actor.send(RunQuery(QueryRequest::Sql(slow)));
        let second = actor.send(RunQuery(QueryRequest::Sql("select 1".into())));
        let (first, second) = futures::join!(first, second);
        assert_eq!(second.unwrap().unwrap_err(), QueryError::TooBusy(1));
        assert_eq!(first.unwrap().unwrap_err(), QueryError::Timeout(2_000));
        // The slot came back with the first query.
        let third = actor
            .send(RunQuery(QueryRequest::Sql("select 1".into())))
            .await
            .unwrap();
        assert!(third.is_ok(), "{third:?}");
        let state = actor.send(Observe::<QueryState>::new()).await.unwrap();
        assert_eq!((state.queries, state.refused_busy), (3, 1));
    }
}
