//! QueryActor: owns the DataFusion session over the lake and the tail
//! (`market.trades_live`), answers the API's requests, and re-pins the
//! newest snapshot after every commit so scans rarely need the catalog.
//! Queries run on the tokio pool; the actor itself never waits on one.

use std::sync::Arc;

use actix::prelude::*;

use crate::lake::schema::TRADES_TABLE;
use crate::messages::consumer::Committed;
use crate::messages::query::{Answer, QueryError, RunQuery};
use crate::query::engine::Engine;

pub struct QueryActor {
    engine: Arc<Engine>,
}

impl QueryActor {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

impl Actor for QueryActor {
    type Context = Context<Self>;
}

impl Handler<RunQuery> for QueryActor {
    type Result = ResponseFuture<Result<Answer, QueryError>>;

    fn handle(&mut self, msg: RunQuery, _ctx: &mut Self::Context) -> Self::Result {
        let engine = self.engine.clone();
        let task = tokio::spawn(async move { engine.run(msg.0).await });
        Box::pin(async move {
            task.await
                .unwrap_or_else(|e| Err(QueryError::Internal(format!("query task failed: {e}"))))
        })
    }
}

impl Handler<Committed> for QueryActor {
    type Result = ();

    fn handle(&mut self, msg: Committed, _ctx: &mut Self::Context) {
        if msg.table != TRADES_TABLE {
            return;
        }
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
