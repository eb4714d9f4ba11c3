//! The lake of `ticklake bench-api latency`, built either in a few large
//! commits (time slices of at most 500k rows) or, with `--commits N`, as a
//! daemon builds it: N small commits through the writer's commit path
//! (`lake::commit::append`, one Parquet file per partition and one
//! fast-append carrying the Kafka offsets each), and what planning a query
//! over it costs, stage by stage.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use datafusion::prelude::{col, lit};
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};
use serde::Serialize;

use super::BenchApiError;
use super::latency::synthetic_trade;
use crate::lake::commit::{self, KafkaOffsets};
use crate::lake::{self, LakeError, store};

fn lake_err(e: LakeError) -> BenchApiError {
    BenchApiError::Poll(e.to_string())
}

fn ice_err(e: iceberg::Error) -> BenchApiError {
    BenchApiError::Poll(e.to_string())
}

/// What a lake kept with `--lake-dir` was built with, in
/// `bench-lake.json` beside it: a later run reuses it only for the same
/// sizes and warehouse, and with the same clock.
#[derive(Debug, Serialize, serde::Deserialize)]
pub(super) struct Built {
    pub now_us: i64,
    pub lake_trades: usize,
    pub commits: Option<usize>,
    /// `--warehouse`, when the lake's files are not under the directory
    /// (absent from a file written before the option was).
    #[serde(default)]
    pub warehouse: Option<String>,
}

const BUILT_FILE: &str = "bench-lake.json";

impl Built {
    /// What `dir` holds, `None` when it holds no finished bench lake.
    pub fn read(dir: &std::path::Path) -> Result<Option<Self>, BenchApiError> {
        let path = dir.join(BUILT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| BenchApiError::LakeDir(path, e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BenchApiError::LakeDir(path, e.to_string())),
        }
    }

    /// Marks `dir`'s lake finished, after its last commit.
    pub fn write(&self, dir: &std::path::Path) -> Result<(), BenchApiError> {
        let path = dir.join(BUILT_FILE);
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| BenchApiError::LakeDir(path.clone(), e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| BenchApiError::LakeDir(path, e.to_string()))
    }
}

/// Where the synthetic trades go: `trades` of them, trade `i` at
/// `start + i * span / trades`, on `topic` partition 0 at offset `i`.
pub(super) struct Shape<'a> {
    pub trades: usize,
    pub start: i64,
    pub span: i64,
    pub topic: &'a str,
}

impl Shape<'_> {
    fn ts(&self, i: usize) -> i64 {
        self.start + (i as i128 * self.span as i128 / self.trades as i128) as i64
    }
}

/// Commits `rows` with the offsets a writer records after them (`next`
/// on partition 0 of `topic`).
pub(super) async fn commit_trades(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    schema: &arrow::datatypes::SchemaRef,
    topic: &str,
    rows: Vec<crate::model::TradeV2>,
    next: i64,
) -> Result<(), BenchApiError> {
    let mut offsets = KafkaOffsets {
        cluster_id: "bench".into(),
        ..Default::default()
    };
    offsets.set(topic, 0, next);
    let batch = lake::batch::trades_batch(schema, &rows).map_err(lake_err)?;
    commit::append(catalog, ident, Some(&batch), &offsets, 128 << 20)
        .await
        .map_err(lake_err)?;
    Ok(())
}

/// A kept lake's table as a run found it, so that the run can put it back
/// after the commits it adds to time what a commit costs the query side:
/// left in, they made every later run on the same `--lake-dir` measure a
/// lake a few commits larger (and its files from the tail's trades, which
/// DuckDB's glob then read too). On whichever store holds the table: a
/// local directory or an object-store prefix (`--warehouse`).
pub(super) struct Found {
    /// The metadata file the catalog pointed at.
    metadata: String,
    /// The table's location, and every file under it then (as
    /// [`store::normalized`] writes them).
    root: String,
    files: HashSet<String>,
}

impl Found {
    /// `ident` now.
    pub async fn note(catalog: &dyn Catalog, ident: &TableIdent) -> Result<Self, BenchApiError> {
        let table = catalog.load_table(ident).await.map_err(ice_err)?;
        let root = table.metadata().location().to_string();
        let metadata = table
            .metadata_location()
            .ok_or_else(|| BenchApiError::LakeTable(root.clone(), "no metadata file".into()))?
            .to_string();
        let files = files_under(&root).await?;
        Ok(Self {
            metadata,
            root,
            files,
        })
    }

    /// Points the catalog back at the metadata noted and deletes the files
    /// written under the table since; returns how many.
    pub async fn restore(
        self,
        cfg: &crate::config::Config,
        catalog: &dyn Catalog,
        ident: &TableIdent,
    ) -> Result<usize, BenchApiError> {
        let kept = |why: String| BenchApiError::LakeTable(self.root.clone(), why);
        let table = catalog.load_table(ident).await.map_err(ice_err)?;
        let current = table
            .metadata_location()
            .ok_or_else(|| kept("the table has no metadata file".into()))?
            .to_string();
        if current != self.metadata {
            let db = lake::compact::CatalogDb::open(cfg)
                .await
                .map_err(lake_err)?
                .ok_or_else(|| kept("a kept lake needs a SQL catalog".into()))?;
            if !db
                .swap(ident, &current, &self.metadata)
                .await
                .map_err(lake_err)?
            {
                return Err(kept(format!(
                    "the catalog moved from {current} while the bench put the table back"
                )));
            }
        }
        let mut removed = 0;
        for location in list_tree(&self.root).await? {
            if !self.files.contains(&store::normalized(&location)) {
                table
                    .file_io()
                    .delete(&location)
                    .await
                    .map_err(|e| kept(format!("{location}: {e}")))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Every file under the table location `root`, at any depth, on whichever
/// store holds it, named as the store lists it (so that the table's FileIO
/// can delete it).
async fn list_tree(root: &str) -> Result<Vec<String>, BenchApiError> {
    let listed = store::list_tree(root)
        .await
        .map_err(|e| BenchApiError::LakeTable(root.to_string(), e.to_string()))?;
    Ok(listed.into_iter().map(|l| l.location).collect())
}

/// [`list_tree`], each written one way, to compare.
async fn files_under(root: &str) -> Result<HashSet<String>, BenchApiError> {
    Ok(list_tree(root)
        .await?
        .iter()
        .map(|l| store::normalized(l))
        .collect())
}

/// Deletes the `metadata.json` files of `dir` (a table's metadata
/// directory, on whichever store holds it) but the newest two. Each commit
/// writes a new one holding every snapshot, and nothing reads the old ones
/// again (other engines delete them after a commit with
/// `write.metadata.delete-after-commit`), so kept they grow with the square
/// of the commits: about 13 GB at 6,000 commits, too much for a lake of
/// 10,000 to fit on a small disk, or in a test object store's memory. Best
/// effort: a file that cannot be listed or removed stays.
async fn drop_superseded_metadata(file_io: &iceberg::io::FileIO, dir: &str) {
    let listed = match store::list(dir).await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(dir, error = %e, "bench: could not list the table's metadata");
            return;
        }
    };
    // Named `<version>-<uuid>.metadata.json`.
    let version = |location: &str| {
        location
            .rsplit('/')
            .next()
            .filter(|n| n.ends_with(".metadata.json"))
            .and_then(|n| n.split('-').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let mut names: Vec<(u64, String)> = listed
        .into_iter()
        .filter_map(|l| version(&l.location).map(|v| (v, l.location)))
        .collect();
    names.sort();
    let keep = names.len().saturating_sub(2);
    for (_, location) in &names[..keep] {
        if let Err(e) = file_io.delete(location).await {
            tracing::debug!(location, error = %e, "bench: could not remove old table metadata");
        }
    }
}

/// With `--commits`, the bars actor's runs: one per this many trades
/// commits. The daemon runs it after each commit it hears of, one run at a
/// time, so a run that takes longer than the commit interval covers
/// several; ten keeps a 10,000-commit build within minutes of the trades'
/// own, and the bars are the same rows either way (partial bars per run,
/// merged when read).
pub(super) const BARS_EVERY: usize = 10;

/// Builds the lake: `commits` commits of equal size (the sizes a daemon
/// committing every `span / commits` makes at `trades / span` trades per
/// second), or time slices of at most 500k rows when `commits` is `None`.
///
/// The minute bars are kept as the daemon's bars actor keeps them, from
/// the trades commits: a run after every [`BARS_EVERY`]th commit (each
/// slice without `--commits`), so OHLCV on the lake as built reads what a
/// daemon's would, before any maintenance.
pub(super) async fn build(
    cfg: &crate::config::Config,
    catalog: &dyn Catalog,
    ident: &TableIdent,
    schema: &arrow::datatypes::SchemaRef,
    shape: &Shape<'_>,
    commits: Option<usize>,
) -> Result<(), BenchApiError> {
    let n = commits
        .unwrap_or_else(|| shape.trades.div_ceil(500_000))
        .max(1);
    let started = Instant::now();
    let table = catalog.load_table(ident).await.map_err(ice_err)?;
    // `<warehouse>/<namespace>/<table>/metadata`: the bars table's is its
    // sibling.
    let metadata_dirs: Vec<String> = table
        .metadata_location()
        .and_then(|l| l.rsplit_once('/'))
        .and_then(|(dir, _)| {
            let (tables, _) = dir.strip_suffix("/metadata")?.rsplit_once('/')?;
            let bars = format!("{tables}/{}/metadata", crate::lake::schema::BARS_TABLE);
            Some(vec![dir.to_string(), bars])
        })
        .unwrap_or_default();
    let file_io = table.file_io().clone();
    let bars_every = if commits.is_some() { BARS_EVERY } else { 1 };
    for c in 0..n {
        if c % 100 == 99 {
            for dir in &metadata_dirs {
                drop_superseded_metadata(&file_io, dir).await;
            }
        }
        let from = c * shape.trades / n;
        let to = (c + 1) * shape.trades / n;
        let rows = (from..to)
            .map(|i| synthetic_trade(i, shape.ts(i)))
            .collect();
        commit_trades(catalog, ident, schema, shape.topic, rows, to as i64).await?;
        if (c + 1) % bars_every == 0 || c + 1 == n {
            super::upkeep::summarize_bars(cfg, catalog, ident).await?;
        }
        if (c + 1) % 500 == 0 || c + 1 == n {
            tracing::info!(
                commits = c + 1,
                of = n,
                rows = to,
                seconds = started.elapsed().as_secs_f64(),
                "bench lake built so far"
            );
        }
    }
    Ok(())
}

/// The lake's size in the units planning pays for, and the time each
/// planning stage takes on it (medians over the runs).
#[derive(Debug, Serialize)]
pub struct PlanProfile {
    pub snapshots: usize,
    pub data_files: usize,
    /// Manifests in the current snapshot's manifest list.
    pub manifests: usize,
    /// Size of the current `metadata.json` (every snapshot is in it).
    pub metadata_bytes: u64,
    /// `catalog.load_table`: the catalog row, then `metadata.json` read and
    /// parsed. The daemon pays it after every commit (the query actor's
    /// refresh), off the query path.
    pub table_load_ms: f64,
    /// The current snapshot's manifest list read and parsed.
    pub manifest_list_ms: f64,
    /// Planning the files of "last 15 minutes of one symbol" on a table
    /// just loaded, by a planner that has read nothing yet (a daemon's
    /// first query after it starts): manifest list, manifests, pruning.
    /// After a commit the query actor's refresh indexes the new snapshot
    /// instead (`AfterCommitReport::refresh_ms`).
    pub plan_recent_cold_ms: f64,
    /// The same again with the same planner (what it indexed).
    pub plan_recent_warm_ms: f64,
    pub recent_files: usize,
    /// Planning the files of one day of one symbol (the OHLCV query).
    pub plan_ohlcv_warm_ms: f64,
    pub ohlcv_files: usize,
}

impl std::fmt::Display for PlanProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "lake: {} snapshots, {} data files, {} manifests, metadata.json {:.1} MB",
            self.snapshots,
            self.data_files,
            self.manifests,
            self.metadata_bytes as f64 / 1e6
        )?;
        write!(
            f,
            "planning: table load {:.1} ms, manifest list {:.1} ms; files of the last 15 minutes \
             ({} kept) {:.1} ms cold, {:.1} ms warm; files of one day ({} kept) {:.1} ms warm",
            self.table_load_ms,
            self.manifest_list_ms,
            self.recent_files,
            self.plan_recent_cold_ms,
            self.plan_recent_warm_ms,
            self.ohlcv_files,
            self.plan_ohlcv_warm_ms
        )
    }
}

/// How many files a plan kept.
fn count(
    plan: datafusion::error::Result<Option<Vec<crate::lake::files::PlannedFile>>>,
) -> Result<usize, BenchApiError> {
    match plan {
        Ok(Some(files)) => Ok(files.len()),
        Ok(None) => Err(BenchApiError::Poll(
            "the bench lake has files only Iceberg's reader can read".into(),
        )),
        Err(e) => Err(BenchApiError::Poll(e.to_string())),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    super::percentile(&v, 0.5)
}

async fn ms<T, F: std::future::Future<Output = T>>(f: F) -> (f64, T) {
    let t = Instant::now();
    let v = f.await;
    (t.elapsed().as_secs_f64() * 1000.0, v)
}

/// Times the planning stages of the two benchmark queries on the lake as
/// it is now (`runs` times each).
pub(super) async fn profile(
    catalog: &Arc<dyn Catalog>,
    ident: &TableIdent,
    symbol: &str,
    now: i64,
    day: i64,
    runs: usize,
) -> Result<PlanProfile, BenchApiError> {
    let ts_literal = |us: i64| {
        lit(datafusion::common::ScalarValue::TimestampMicrosecond(
            Some(us),
            Some("+00:00".into()),
        ))
    };
    let recent = [
        col("symbol").eq(lit(symbol)),
        col("timestamp").gt_eq(ts_literal(now - 15 * 60_000_000)),
    ];
    let ohlcv = [
        col("symbol").eq(lit(symbol)),
        col("timestamp").gt_eq(ts_literal(now - day)),
        col("timestamp").lt(ts_literal(now)),
    ];
    let runs = runs.max(1);
    let (mut load, mut list, mut cold, mut warm, mut day_warm) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut recent_files, mut ohlcv_files) = (0, 0);
    let mut last: Option<Table> = None;
    for _ in 0..runs {
        let (t, table) = ms(catalog.load_table(ident)).await;
        let table = table.map_err(ice_err)?;
        load.push(t);
        let Some(snap) = table.metadata().current_snapshot().cloned() else {
            return Err(BenchApiError::Poll("the bench lake has no snapshot".into()));
        };
        let id = snap.snapshot_id();
        // A new planner each run: nothing indexed.
        let planner = crate::lake::files::Planner::default();
        let (t, files) = ms(planner.plan(&table, id, &recent)).await;
        cold.push(t);
        recent_files = count(files)?;
        let (t, files) = ms(planner.plan(&table, id, &recent)).await;
        warm.push(t);
        drop(files);
        let (t, files) = ms(planner.plan(&table, id, &ohlcv)).await;
        day_warm.push(t);
        ohlcv_files = count(files)?;
        let (t, manifests) = ms(table.manifest_list_reader(&snap).load()).await;
        list.push(t);
        manifests.map_err(ice_err)?;
        last = Some(table);
    }
    let Some(table) = last else {
        return Err(BenchApiError::Poll("no profile run".into()));
    };
    let md = table.metadata();
    let snap = md
        .current_snapshot()
        .ok_or_else(|| BenchApiError::Poll("the bench lake has no snapshot".into()))?;
    let manifests = table
        .manifest_list_reader(snap)
        .load()
        .await
        .map_err(ice_err)?;
    let data_files = count(
        crate::lake::files::Planner::default()
            .plan(&table, snap.snapshot_id(), &[])
            .await,
    )?;
    let metadata_bytes = match table.metadata_location() {
        Some(l) => store::size(l).await.unwrap_or(0),
        None => 0,
    };
    Ok(PlanProfile {
        snapshots: md.snapshots().count(),
        data_files,
        manifests: manifests.entries().len(),
        metadata_bytes,
        table_load_ms: median(load),
        manifest_list_ms: median(list),
        plan_recent_cold_ms: median(cold),
        plan_recent_warm_ms: median(warm),
        recent_files,
        plan_ohlcv_warm_ms: median(day_warm),
        ohlcv_files,
    })
}
