//! BarsActor: keeps `market.ohlcv_1m` in step with `market.trades`
//! (`lake::bars`). It hears of every trades commit and summarizes what the
//! bars do not cover yet, on the commit runtime, one run at a time; a
//! commit heard while a run is on starts another when it ends. It also
//! runs once at the start, which after a crash summarizes the trades
//! commits the bars missed. A failed run is logged and counted, and the
//! next commit (or the next 30 s) tries again: `/v1/ohlcv` reads the raw
//! trades for whatever the bars do not cover, so answers never wait on it.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use iceberg::{Catalog, TableIdent};
use serde::Serialize;

use crate::actors::observe::{Health, ObservableState, Published};
use crate::lake::LakeError;
use crate::lake::bars::{self, CatchUp};
use crate::lake::schema::{BARS_TABLE, TRADES_TABLE};
use crate::messages::consumer::Committed;
use crate::messages::observe::Observe;
use crate::messages::query::LakeChanged;

/// How often a run is tried with no commit heard (after a failure).
const RETRY: Duration = Duration::from_secs(30);

/// What `/status` shows of the bars.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BarsState {
    pub runs: u64,
    pub failures: u64,
    pub running: bool,
    /// Partial bars written in all.
    pub bars_written: u64,
    /// Trades rows summarized in all.
    pub trades_summarized: u64,
    /// The trades sequence number the bars cover.
    pub covered: Option<i64>,
    pub last: Option<CatchUp>,
    #[serde(flatten)]
    pub health: Health,
}

impl ObservableState for BarsState {
    fn name(&self) -> String {
        "bars".into()
    }

    fn status(&self) -> String {
        if self.running { "running" } else { "idle" }.into()
    }

    fn health(&self) -> &Health {
        &self.health
    }
}

pub struct BarsActor {
    catalog: Arc<dyn Catalog>,
    trades: TableIdent,
    bars: TableIdent,
    target_file_size: usize,
    /// A commit was heard while a run was on.
    again: bool,
    /// Told of every bars commit (the query actor, which keeps the bars
    /// table loaded).
    listeners: Vec<Recipient<LakeChanged>>,
    state: BarsState,
    published: Published<BarsState>,
}

impl BarsActor {
    pub fn new(
        catalog: Arc<dyn Catalog>,
        trades: TableIdent,
        bars: TableIdent,
        target_file_size: usize,
    ) -> Self {
        Self {
            catalog,
            trades,
            bars,
            target_file_size,
            again: false,
            listeners: Vec::new(),
            state: BarsState::default(),
            published: Published::new(BarsState::default()),
        }
    }

    /// Tells `r` of every bars commit.
    pub fn notify(mut self, r: Recipient<LakeChanged>) -> Self {
        self.listeners.push(r);
        self
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<BarsState> {
        self.published.subscribe()
    }

    fn run(&mut self, ctx: &mut Context<Self>) {
        if self.state.running {
            self.again = true;
            return;
        }
        self.state.running = true;
        self.again = false;
        let (catalog, trades, bars, size) = (
            self.catalog.clone(),
            self.trades.clone(),
            self.bars.clone(),
            self.target_file_size,
        );
        let job = crate::lake::background::handle()
            .spawn(async move { bars::catch_up(catalog.as_ref(), &trades, &bars, size).await });
        ctx.spawn(
            async move {
                job.await
                    .unwrap_or_else(|e| Err(LakeError::Catalog(format!("bars task: {e}"))))
            }
            .into_actor(self)
            .map(|result, a, ctx| a.finished(result, ctx)),
        );
    }

    fn finished(&mut self, result: Result<CatchUp, LakeError>, ctx: &mut Context<Self>) {
        self.state.running = false;
        self.state.runs += 1;
        match result {
            Ok(c) => {
                self.state.bars_written += c.bars as u64;
                self.state.trades_summarized += c.trades_rows;
                self.state.covered = c.covered;
                if c.snapshot_id.is_some() {
                    for l in &self.listeners {
                        l.do_send(LakeChanged { table: BARS_TABLE });
                    }
                    tracing::debug!(
                        trades_snapshots = c.trades_snapshots,
                        rows = c.trades_rows,
                        bars = c.bars,
                        covered = c.covered,
                        "bars: trades summarized"
                    );
                }
                self.state.last = Some(c);
            }
            Err(e) => {
                tracing::warn!(error = %e, "bars: summarizing the trades failed; /v1/ohlcv reads the raw trades for what the bars miss");
                self.state.failures += 1;
                self.state.health.last_error = Some(e.to_string());
            }
        }
        self.published.publish(&self.state);
        if self.again {
            self.run(ctx);
        }
    }
}

impl Actor for BarsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.run(ctx);
        ctx.run_interval(RETRY, |a, ctx| {
            if a.state.failures > 0 && !a.state.running {
                a.run(ctx);
            }
        });
    }
}

impl Handler<Committed> for BarsActor {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Self::Context) {
        if msg.table == TRADES_TABLE {
            self.run(ctx);
        }
    }
}

impl Handler<Observe<BarsState>> for BarsActor {
    type Result = MessageResult<Observe<BarsState>>;

    fn handle(&mut self, _: Observe<BarsState>, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.clone())
    }
}
