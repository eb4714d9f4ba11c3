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

/// Most memory the rows of commits not yet summarized may hold. A run
/// normally takes them within a second of their commit; while runs fail,
/// the oldest are let go and read from their files when one succeeds.
const KNOWN_BYTES: usize = 64 << 20;

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
    /// The rows of this daemon's trades commits not summarized yet, oldest
    /// first, as their writer handed them over (`bars::Known`): reading
    /// the files just written back was about a seventh of the commit
    /// thread in a profile of `ticklake bench`, and on object storage a
    /// GET per file.
    known: Vec<(i64, arrow::array::RecordBatch)>,
    /// The snapshots whose rows the running run was given.
    in_run: Vec<i64>,
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
            known: Vec::new(),
            in_run: Vec::new(),
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
        let known: bars::Known = self.known.iter().cloned().collect();
        self.in_run = known.keys().copied().collect();
        let job = crate::lake::background::handle().spawn(async move {
            bars::catch_up_to(catalog.as_ref(), &trades, &bars, size, None, &known).await
        });
        ctx.spawn(
            async move {
                job.await
                    .unwrap_or_else(|e| Err(LakeError::Catalog(format!("bars task: {e}"))))
            }
            .into_actor(self)
            .map(|result, a, ctx| a.finished(result, ctx)),
        );
    }

    /// Keeps the rows of a trades commit for the next run, within
    /// [`KNOWN_BYTES`].
    fn remember(&mut self, snapshot_id: i64, rows: arrow::array::RecordBatch) {
        self.known.push((snapshot_id, rows));
        let mut bytes: usize = self
            .known
            .iter()
            .map(|(_, b)| b.get_array_memory_size())
            .sum();
        while bytes > KNOWN_BYTES && self.known.len() > 1 {
            let (_, b) = self.known.remove(0);
            bytes -= b.get_array_memory_size();
        }
    }

    fn finished(&mut self, result: Result<CatchUp, LakeError>, ctx: &mut Context<Self>) {
        self.state.running = false;
        self.state.runs += 1;
        match result {
            Ok(c) => {
                // The rows the run was given are summarized now, or were
                // already; those of commits heard during the run stay for
                // the next (which `again` starts).
                let done = std::mem::take(&mut self.in_run);
                self.known.retain(|(id, _)| !done.contains(id));
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
                // Their rows stay kept for the next run.
                self.in_run.clear();
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
            if let Some(rows) = msg.rows {
                self.remember(msg.snapshot_id, rows.0);
            }
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
