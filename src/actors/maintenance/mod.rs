//! MaintenanceActor: every `maintenance.interval_secs` it compacts its
//! tables (`lake::compact`), then expires old snapshots and deletes the
//! files only they referenced (`lake::maintain`), and once every
//! `maintenance.orphan_sweep_interval` deletes the files no snapshot ever
//! referenced (`lake::orphans`). The work runs on the
//! commit runtime (a low-priority thread, `lake::background`), never on an
//! arbiter; one run at a time.
//! A failed run (a commit conflict with a writer, an IO error) is counted
//! and logged, and the next run tries again: nothing waits on it.
//!
//! Daemons sharing a SQL catalog (PostgreSQL) maintain one at a time: a
//! run first takes the lease in the catalog (`lake::lease`), renews it
//! between tables, and releases it at the end. A run that finds the lease
//! held by another daemon does nothing and says who holds it in `/status`.

use std::time::Duration;

use actix::prelude::*;
use iceberg::{Catalog, TableIdent};
use serde::Serialize;
use std::sync::Arc;

use crate::actors::observe::{Health, ObservableState, Published};
use crate::config::Config;
use crate::lake::compact::{self, CatalogDb, Commits, CompactPolicy};
use crate::lake::lease::{Acquired, Lease, LeaseHandle, LeaseStore};
use crate::lake::maintain::{self, MaintainReport};
use crate::lake::orphans::{self, SweepReport};
use crate::lake::rest_commit::RestCommits;
use crate::lake::{self, LakeError, TableKind};
use crate::messages::query::LakeChanged;

mod metrics;

pub use metrics::MaintenanceMetrics;

/// One table's part in a run: its ident and the columns its rewritten
/// rows are sorted by.
#[derive(Debug, Clone)]
pub struct MaintainedTable {
    pub ident: TableIdent,
    pub sort: Vec<String>,
    pub merge: Option<compact::Merge>,
}

/// Everything a run needs, built once from the config.
#[derive(Clone)]
pub struct Job {
    catalog: Arc<dyn Catalog>,
    /// The catalog's pointer table, when the catalog is a SQL one: the
    /// lease, compaction and retention swap it.
    db: Option<Arc<CatalogDb>>,
    /// The server's commit endpoint, when the catalog is a REST one:
    /// compaction and retention commit through it.
    rest: Option<Arc<RestCommits>>,
    /// The lease's table (`trades`), this daemon's owner id and the TTL.
    lease: LeaseSpec,
    tables: Vec<MaintainedTable>,
    /// `market.ohlcv_1m`, whose coverage keeps trades snapshots from expiry.
    bars: Option<TableIdent>,
    retention: Duration,
    compact: CompactPolicy,
    /// Whether compaction runs (`maintenance.compact`); `db` may be there
    /// for `retention_days` alone.
    compacting: bool,
    retention_days: u32,
    /// This daemon's warehouse; tables located elsewhere are left alone.
    /// `None` with a REST catalog: its server places the tables (and
    /// `lake.warehouse` may name a warehouse rather than a location), and
    /// no copy of a data directory carries the catalog along, so the
    /// location the server gives is the table's own.
    warehouse: Option<String>,
    /// The orphan sweep's minimum age and interval (`maintenance.orphan_*`).
    orphans: Option<(Duration, Duration)>,
    /// When this daemon last swept each table: a sweep lists the whole
    /// table, so it runs once an interval, not once a run.
    swept: Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
}

/// Whether `location` (a table's, from its metadata) lies inside
/// `warehouse`. Iceberg metadata holds absolute paths: a data directory
/// copied elsewhere still names the original's files, and expiring or
/// compacting through the copy would delete the original's.
pub fn within_warehouse(location: &str, warehouse: &str) -> bool {
    let norm = |s: &str| {
        s.strip_prefix("file://")
            .unwrap_or(s)
            .trim_end_matches('/')
            .to_string()
    };
    let (loc, wh) = (norm(location), norm(warehouse));
    loc == wh || loc.starts_with(&format!("{wh}/"))
}

/// Which lease a job takes, as whom.
#[derive(Debug, Clone)]
struct LeaseSpec {
    /// The trades table: the lease's on a SQL catalog, and whose
    /// namespace holds the lease table on REST.
    ident: TableIdent,
    owner: String,
    ttl: Duration,
}

/// What became of the lease in one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LeaseOutcome {
    /// No lease to take: a catalog with neither a pointer table nor a
    /// commit endpoint (not one ticklake opens: SQL swaps the pointer, REST
    /// keeps the lease in a table of its own); the run goes ahead.
    None,
    /// Ours for the run; `released` unless giving it back failed (it
    /// then expires).
    Taken { lease: Lease, released: bool },
    /// Another daemon's: this run did nothing.
    HeldElsewhere { lease: Lease },
    /// It expired during the run and another daemon took it, or renewing
    /// it failed: the run stopped after `tables_done` tables.
    Lost { tables_done: usize, reason: String },
    /// Taking it failed: this run did nothing.
    Failed { error: String },
}

impl LeaseOutcome {
    fn label(&self) -> &'static str {
        match self {
            LeaseOutcome::None => "none",
            LeaseOutcome::Taken { .. } => "taken",
            LeaseOutcome::HeldElsewhere { .. } => "held_elsewhere",
            LeaseOutcome::Lost { .. } => "lost",
            LeaseOutcome::Failed { .. } => "failed",
        }
    }
}

/// One run: a result per table maintained (in `Job::tables` order, fewer
/// when the lease was not ours), and the lease's outcome.
#[derive(Debug)]
pub struct Run {
    pub results: Vec<Result<MaintainReport, LakeError>>,
    pub lease: LeaseOutcome,
}

impl Job {
    /// Both tables of `cfg`, maintained by its `[maintenance]` keys.
    pub async fn from_config(cfg: &Config, catalog: Arc<dyn Catalog>) -> Result<Self, LakeError> {
        let db = CatalogDb::open(cfg).await?;
        let rest = RestCommits::open(cfg)?.map(Arc::new);
        let db = db.map(Arc::new);
        Ok(Self {
            lease: LeaseSpec {
                ident: lake::table_ident(cfg, TableKind::Trades),
                owner: crate::lake::lease::owner_id(&cfg.data_dir_abs()),
                ttl: cfg.maintenance.lease_ttl(),
            },
            warehouse: (cfg.lake.catalog == crate::config::CatalogKind::Sql)
                .then(|| cfg.warehouse()),
            catalog,
            db,
            rest,
            tables: vec![
                MaintainedTable {
                    ident: lake::table_ident(cfg, TableKind::Trades),
                    sort: vec!["symbol".into(), "timestamp".into()],
                    merge: None,
                },
                MaintainedTable {
                    ident: lake::table_ident(cfg, TableKind::DeadLetters),
                    sort: vec!["received_at".into()],
                    merge: None,
                },
                MaintainedTable {
                    ident: lake::gaps::ident(cfg),
                    sort: vec!["detected_at".into()],
                    merge: None,
                },
            ]
            .into_iter()
            .chain(cfg.lake.bars.then(|| MaintainedTable {
                ident: lake::bars_ident(cfg),
                sort: vec!["exchange".into(), "symbol".into(), "minute".into()],
                merge: Some(lake::bars::merge_partials),
            }))
            .collect(),
            bars: cfg.lake.bars.then(|| lake::bars_ident(cfg)),
            retention: cfg.maintenance.retention(),
            compact: CompactPolicy {
                target_file_size: cfg.writer.target_file_size_bytes,
                min_files: cfg.maintenance.compact_min_files,
                min_age: cfg.maintenance.compact_min_age(),
                sort: Vec::new(),
                merge: None,
            },
            compacting: cfg.maintenance.compact,
            retention_days: cfg.maintenance.retention_days,
            orphans: cfg.maintenance.orphans(),
            swept: Arc::default(),
        })
    }

    /// Where compaction and retention commit: the SQL catalog's pointer
    /// table or the REST server.
    fn commits(&self) -> Option<Commits<'_>> {
        match (&self.db, &self.rest) {
            (Some(db), _) => Some(Commits::Sql(db)),
            (None, Some(rest)) => Some(Commits::Rest(rest)),
            (None, None) => None,
        }
    }

    /// For the trades table: the trades sequence the bars cover.
    async fn bars_cover(&self, table: &TableIdent) -> Option<i64> {
        let bars = self.bars.as_ref()?;
        if table.name() != crate::lake::schema::TRADES_TABLE {
            return None;
        }
        let t = self.catalog.load_table(bars).await.ok()?;
        crate::lake::bars::covered(&t).map(|(_, seq)| seq)
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableIdent> {
        self.tables.iter().map(|t| &t.ident)
    }

    /// This job's owner id in the lease.
    pub fn owner(&self) -> &str {
        &self.lease.owner
    }

    /// One run under the lease: taken first (or the run does nothing),
    /// renewed before each table after the first, released at the end.
    pub async fn run(&self) -> Run {
        // On the trades table where the pointer can be swapped; with no
        // pointer table (REST), in a table of its own (`lease`).
        let (store, ident) = match (self.db.as_deref(), &self.rest) {
            (Some(db), _) => (LeaseStore::Pointer(db), self.lease.ident.clone()),
            (None, Some(_)) => (
                LeaseStore::Table,
                crate::lake::lease::lease_table(self.lease.ident.namespace()),
            ),
            (None, None) => {
                return Run {
                    results: self.run_tables(|_| async { Ok(()) }).await,
                    lease: LeaseOutcome::None,
                };
            }
        };
        let handle = LeaseHandle {
            catalog: self.catalog.as_ref(),
            store,
            ident: &ident,
            owner: &self.lease.owner,
            ttl: self.lease.ttl,
        };
        let lease = match handle.acquire().await {
            Ok(Acquired::Taken(l)) => {
                // With its end below, the span this daemon maintained in:
                // daemons sharing a table can be seen never to overlap.
                tracing::info!(owner = %self.lease.owner, at_ms = crate::model::now_us() / 1000,
                    "maintenance: lease taken; run starts");
                l
            }
            Ok(Acquired::HeldBy(lease)) => {
                return Run {
                    results: Vec::new(),
                    lease: LeaseOutcome::HeldElsewhere { lease },
                };
            }
            Err(e) => {
                return Run {
                    results: Vec::new(),
                    lease: LeaseOutcome::Failed {
                        error: e.to_string(),
                    },
                };
            }
        };
        let lost = std::sync::Mutex::new(None::<String>);
        let results = self
            .run_tables(|i| {
                let (handle, lost) = (&handle, &lost);
                async move {
                    if i == 0 {
                        return Ok(());
                    }
                    let reason = match handle.renew().await {
                        Ok(true) => return Ok(()),
                        Ok(false) => "it expired and another daemon took it".to_string(),
                        Err(e) => format!("renewing it failed: {e}"),
                    };
                    if let Ok(mut l) = lost.lock() {
                        *l = Some(reason);
                    }
                    Err(())
                }
            })
            .await;
        let lost = lost.into_inner().ok().flatten();
        // Logged before the lease is given back, so that no other daemon's
        // "lease taken" can come before it.
        tracing::info!(owner = %self.lease.owner, at_ms = crate::model::now_us() / 1000,
            "maintenance: run ends");
        let lease = match lost {
            Some(reason) => LeaseOutcome::Lost {
                tables_done: results.len(),
                reason,
            },
            None => {
                if let Err(e) = handle.tidy().await {
                    tracing::warn!(error = %e, "maintenance: expiring the lease table's snapshots failed; the next run tries again");
                }
                let released = match handle.release().await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "maintenance: releasing the lease failed; it expires by itself");
                        false
                    }
                };
                LeaseOutcome::Taken { lease, released }
            }
        };
        Run { results, lease }
    }

    /// Per table, compaction (when on), then expiry; one result each, in
    /// order. A failed compaction is in its table's report, and expiry
    /// still runs. `before(i)` runs before table `i`; an `Err` stops the
    /// run there (the lease is no longer ours).
    async fn run_tables<F, Fut>(&self, before: F) -> Vec<Result<MaintainReport, LakeError>>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Result<(), ()>>,
    {
        let mut out = Vec::with_capacity(self.tables.len());
        for (i, t) in self.tables.iter().enumerate() {
            if before(i).await.is_err() {
                break;
            }
            if let Some(warehouse) = &self.warehouse
                && let Ok(table) = self.catalog.load_table(&t.ident).await
                && !within_warehouse(table.metadata().location(), warehouse)
            {
                out.push(Err(LakeError::Catalog(format!(
                    "{} is located at {}, outside this data directory's warehouse {warehouse}; maintenance deletes files, so it leaves another warehouse's alone (a copied data directory still names the original's files)",
                    t.ident,
                    table.metadata().location(),
                ))));
                continue;
            }
            let mut compaction = None;
            let mut compaction_error = None;
            let mut retired = None;
            let commits = self.commits();
            if let Some(db) = commits.filter(|_| self.retention_days > 0) {
                match compact::retire(self.catalog.as_ref(), db, &t.ident, self.retention_days)
                    .await
                {
                    Ok(r) => retired = Some(r),
                    Err(e) => compaction_error = Some(format!("retention: {e}")),
                }
            }
            if let Some(db) = commits.filter(|_| self.compacting) {
                let policy = CompactPolicy {
                    sort: t.sort.clone(),
                    merge: t.merge,
                    ..self.compact.clone()
                };
                match compact::compact(self.catalog.as_ref(), db, &t.ident, &policy).await {
                    Ok(c) => compaction = Some(c),
                    Err(e) => compaction_error = Some(e.to_string()),
                }
            }
            let keep_after = self.bars_cover(&t.ident).await;
            let r = maintain::expire(
                self.catalog.as_ref(),
                &t.ident,
                self.retention,
                maintain::METADATA_GRACE,
                keep_after,
            )
            .await
            .map(|mut r| {
                r.compaction = compaction;
                r.retired = retired;
                r.compaction_error = compaction_error;
                r
            });
            let r = match r {
                Ok(mut r) => {
                    (r.orphans, r.orphans_error) = self.sweep(&t.ident).await;
                    Ok(r)
                }
                e => e,
            };
            out.push(r);
        }
        out
    }
}

impl Job {
    /// The orphan sweep of `ident`, when sweeps are on and this daemon's
    /// last one of it is an interval old; a failed sweep is tried again
    /// at the next run.
    async fn sweep(&self, ident: &TableIdent) -> (Option<SweepReport>, Option<String>) {
        let Some((min_age, every)) = self.orphans else {
            return (None, None);
        };
        let key = ident.to_string();
        let due = |swept: &std::collections::HashMap<_, std::time::Instant>| {
            swept.get(&key).is_none_or(|t| t.elapsed() >= every)
        };
        if !self.swept.lock().map(|s| due(&s)).unwrap_or(true) {
            return (None, None);
        }
        match orphans::sweep(self.catalog.as_ref(), ident, min_age).await {
            Ok(r) => {
                if let Ok(mut s) = self.swept.lock() {
                    s.insert(key, std::time::Instant::now());
                }
                (Some(r), None)
            }
            Err(e) => (None, Some(e.to_string())),
        }
    }
}

/// What `/status` shows of maintenance.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MaintenanceState {
    pub runs: u64,
    pub failures: u64,
    pub running: bool,
    pub interval_secs: u64,
    pub snapshot_retention: String,
    /// End of the last run, RFC 3339.
    pub last_run: Option<String>,
    /// The last run's report per table.
    pub tables: Vec<MaintainReport>,
    /// This daemon's owner id in the maintenance lease.
    pub lease_owner: String,
    /// The lease at the last run: ours (taken, then released), another
    /// daemon's (with its owner and expiry), lost, or none (REST).
    pub lease: Option<LeaseOutcome>,
    /// Runs that did nothing because another daemon held the lease.
    pub runs_held_elsewhere: u64,
    #[serde(flatten)]
    pub health: Health,
}

impl ObservableState for MaintenanceState {
    fn name(&self) -> String {
        "maintenance".into()
    }

    fn status(&self) -> String {
        if self.running { "running" } else { "idle" }.into()
    }

    fn health(&self) -> &Health {
        &self.health
    }
}

pub struct MaintenanceActor {
    job: Job,
    /// Told after every run, so queries re-pin past what the run replaced.
    listeners: Vec<Recipient<LakeChanged>>,
    interval: Duration,
    metrics: MaintenanceMetrics,
    state: MaintenanceState,
    published: Published<MaintenanceState>,
}

impl MaintenanceActor {
    pub fn new(
        job: Job,
        cfg: &crate::config::MaintenanceConfig,
        metrics: MaintenanceMetrics,
    ) -> Self {
        let state = MaintenanceState {
            lease_owner: job.owner().to_string(),
            interval_secs: cfg.interval_secs,
            snapshot_retention: cfg.snapshot_retention.clone(),
            ..MaintenanceState::default()
        };
        metrics.init_tables(job.tables().map(|t| t.to_string()));
        Self {
            job,
            listeners: Vec::new(),
            interval: Duration::from_secs(cfg.interval_secs),
            metrics,
            published: Published::new(state.clone()),
            state,
        }
    }

    /// Tells `r` after every run which tables it committed to.
    pub fn notify(mut self, r: Recipient<LakeChanged>) -> Self {
        self.listeners.push(r);
        self
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<MaintenanceState> {
        self.published.subscribe()
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.state.running {
            return;
        }
        self.state.running = true;
        self.published.publish(&self.state);
        let work = self.job.clone();
        let job = crate::lake::background::handle().spawn(async move { work.run().await });
        ctx.spawn(
            async move {
                job.await.unwrap_or_else(|e| Run {
                    results: vec![Err(LakeError::Catalog(format!("maintenance task: {e}")))],
                    lease: LeaseOutcome::Failed {
                        error: e.to_string(),
                    },
                })
            }
            .into_actor(self)
            .map(|run, a, _| a.finished(run)),
        );
    }

    fn finished(&mut self, run: Run) {
        let Run { results, lease } = run;
        self.state.running = false;
        self.state.runs += 1;
        self.state.last_run = Some(chrono::Utc::now().to_rfc3339());
        self.metrics.lease.with_label_values(&[lease.label()]).inc();
        match &lease {
            LeaseOutcome::HeldElsewhere { lease } => {
                self.state.runs_held_elsewhere += 1;
                tracing::info!(
                    holder = %lease.owner,
                    expires_ms = lease.expires_ms,
                    "maintenance: another daemon holds the lease; this run does nothing"
                );
            }
            LeaseOutcome::Lost {
                tables_done,
                reason,
            } => {
                tracing::warn!(tables_done, reason = %reason, "maintenance: lost the lease; run stopped");
                self.state.health.last_error = Some(format!("maintenance lease lost: {reason}"));
            }
            LeaseOutcome::Failed { error } => {
                tracing::warn!(error = %error, "maintenance: taking the lease failed; the next run tries again");
                self.state.failures += 1;
                self.state.health.last_error = Some(format!("maintenance lease: {error}"));
            }
            LeaseOutcome::None | LeaseOutcome::Taken { .. } => {}
        }
        self.state.lease = Some(lease);
        // A run that did nothing leaves the last reports shown.
        let ran = !results.is_empty();
        let mut reports = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(report) => {
                    if let Some(c) = report.compaction.as_ref().filter(|c| c.files_replaced > 0) {
                        tracing::info!(
                            table = %c.table,
                            partitions = c.partitions,
                            files_replaced = c.files_replaced,
                            files_written = c.files_written,
                            rows = c.rows,
                            attempts = c.attempts,
                            ms = c.duration_ms,
                            "maintenance: small files compacted"
                        );
                    }
                    if let Some(o) = &report.orphans {
                        if let Some(why) = &o.refused {
                            tracing::warn!(table = %report.table, reason = %why, "maintenance: orphan sweep refused; nothing deleted");
                        } else if o.deleted > 0 {
                            tracing::info!(table = %report.table, deleted = o.deleted, bytes = o.bytes_deleted,
                                young = o.young, "maintenance: orphan files deleted");
                        }
                    }
                    if let Some(e) = &report.orphans_error {
                        tracing::warn!(table = %report.table, error = %e, "maintenance: orphan sweep failed; the next run tries again");
                    }
                    if let Some(e) = &report.compaction_error {
                        tracing::warn!(table = %report.table, error = %e, "maintenance: compaction failed; the next run tries again");
                        self.state.health.last_error =
                            Some(format!("{}: compaction: {e}", report.table));
                    }
                    tracing::info!(
                        table = %report.table,
                        expired = report.expired,
                        snapshots = report.snapshots_after,
                        files_deleted = report.manifest_lists_deleted
                            + report.manifests_deleted
                            + report.data_files_deleted
                            + report.metadata_files_deleted,
                        bytes_deleted = report.bytes_deleted,
                        ms = report.duration_ms,
                        "maintenance: snapshots expired"
                    );
                    self.metrics.record(&report);
                    let changed = report.expired > 0
                        || report
                            .retired
                            .as_ref()
                            .is_some_and(|r| r.snapshot_id.is_some())
                        || report
                            .compaction
                            .as_ref()
                            .is_some_and(|c| c.snapshot_id.is_some());
                    if changed {
                        use crate::lake::schema::{BARS_TABLE, TRADES_TABLE};
                        let table = match report.table.rsplit('.').next() {
                            Some(TRADES_TABLE) => TRADES_TABLE,
                            Some(BARS_TABLE) => BARS_TABLE,
                            _ => "",
                        };
                        for l in &self.listeners {
                            l.do_send(LakeChanged { table });
                        }
                    }
                    reports.push(report);
                }
                Err(e) => {
                    let table = self
                        .job
                        .tables()
                        .nth(i)
                        .map(|t| t.to_string())
                        .unwrap_or_default();
                    tracing::warn!(table, error = %e, "maintenance failed; the next run tries again");
                    self.metrics
                        .runs
                        .with_label_values(&[&table, "failed"])
                        .inc();
                    self.state.failures += 1;
                    self.state.health.last_error = Some(format!("{table}: {e}"));
                }
            }
        }
        if ran {
            self.state.tables = reports;
        }
        self.published.publish(&self.state);
    }
}

impl Actor for MaintenanceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.interval, |a, ctx| a.tick(ctx));
    }
}

/// Runs maintenance now (tests, and `ticklake maintain` in-process).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RunNow;

impl Handler<RunNow> for MaintenanceActor {
    type Result = ();

    fn handle(&mut self, _: RunNow, ctx: &mut Self::Context) {
        self.tick(ctx);
    }
}

impl Handler<crate::messages::observe::Observe<MaintenanceState>> for MaintenanceActor {
    type Result = MessageResult<crate::messages::observe::Observe<MaintenanceState>>;

    fn handle(
        &mut self,
        _: crate::messages::observe::Observe<MaintenanceState>,
        _ctx: &mut Self::Context,
    ) -> Self::Result {
        MessageResult(self.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::within_warehouse;

    #[test]
    fn only_tables_inside_the_warehouse_are_maintained() {
        let wh = "file:///data/warehouse";
        assert!(within_warehouse("file:///data/warehouse/market/trades", wh));
        assert!(within_warehouse("/data/warehouse/market/trades/", wh));
        assert!(within_warehouse("file:///data/warehouse/", wh));
        // A copy's metadata still names the original's directory.
        assert!(!within_warehouse(
            "file:///orig/warehouse/market/trades",
            wh
        ));
        // A sibling whose name merely starts the same is outside.
        assert!(!within_warehouse(
            "file:///data/warehouse2/market/trades",
            wh
        ));
    }
}
