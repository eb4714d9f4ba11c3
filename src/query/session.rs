//! SQL over the lake with DataFusion: the Iceberg catalog is registered as
//! catalog `ticklake`, so `market.trades` resolves without qualification.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};
use iceberg_datafusion::IcebergCatalogProvider;

use super::engine::Engine;
use super::hybrid::{HybridTable, LiveCatalog, PinnedTable, RemotePin};
use super::tail::TailView;
use crate::config::Config;
use crate::lake::{self, LakeError, TableKind};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("formatting: {0}")]
    Format(#[from] arrow::error::ArrowError),
    /// Refused by the read-only guard: nothing here writes to the lake.
    #[error("refused: {0}")]
    Rejected(#[from] super::sql_guard::GuardError),
    #[error("the query task failed: {0}")]
    Task(String),
    #[error("the query spill directory {0}: {1}")]
    Spill(std::path::PathBuf, std::io::Error),
    #[error(transparent)]
    Limits(#[from] super::limits::LimitError),
}

/// Name under which the Iceberg catalog is registered in DataFusion.
pub const CATALOG: &str = "ticklake";

/// Output formats of `ticklake query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

/// A DataFusion session over the lake. The tables are created if missing,
/// so a query on a fresh data directory answers with zero rows, not an error.
/// `market.trades_live` is the lake alone here (no tail in this process).
pub async fn session(cfg: &Config) -> Result<SessionContext, SessionError> {
    Ok(engine(cfg, None).await?.context().clone())
}

/// The query engine over the lake, with `market.trades_live` reading the
/// given tail beside the lake (the daemon's), or the lake alone.
pub async fn engine(cfg: &Config, tail: Option<TailView>) -> Result<Engine, SessionError> {
    build(cfg, tail, None).await
}

/// The query engine of a SQL worker: `market.trades_live` pins through the
/// daemon that started the worker (`query::isolate`).
pub async fn engine_pinned_by(
    cfg: &Config,
    remote: Arc<dyn RemotePin>,
) -> Result<Engine, SessionError> {
    build(cfg, None, Some(remote)).await
}

async fn build(
    cfg: &Config,
    tail: Option<TailView>,
    remote: Option<Arc<dyn RemotePin>>,
) -> Result<Engine, SessionError> {
    let catalog = lake::open_catalog(cfg).await?;
    let trades = lake::ensure_table(catalog.as_ref(), cfg, TableKind::Trades).await?;
    lake::ensure_table(catalog.as_ref(), cfg, TableKind::DeadLetters).await?;
    lake::gaps::ensure_table(catalog.as_ref(), cfg).await?;
    let config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG, &cfg.lake.namespace)
        .with_information_schema(true)
        // Filters run inside the Parquet reader: rows are decoded only for
        // the columns of rows that pass (a symbol's rows are a small run of
        // each file, which is sorted by symbol and time).
        .set_bool("datafusion.execution.parquet.pushdown_filters", true)
        .set_bool("datafusion.execution.parquet.reorder_filters", true);
    // Bounded: a user query that needs more memory than this fails with
    // "resources exhausted" instead of growing the daemon (it shares the
    // process with ingestion). DataFusion's own Parquet scans (`lake::scan`)
    // read a bucket's files through the client the catalog's FileIO uses
    // (one connection pool a bucket), the warehouse's or a table's own.
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_limit(cfg.api.max_memory_bytes, 1.0)
        .with_disk_manager_builder(disk_manager(cfg)?)
        .with_object_store_registry(Arc::new(lake::scan::LakeObjectStores::new(
            cfg.lake.s3.clone(),
        )))
        .build_arc()?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    // Functions that build their result from an argument's value are
    // bounded before they allocate (an allocation that fails aborts).
    super::limits::register(&ctx, cfg.api.max_memory_bytes)?;
    let pinned = PinnedTable::default();
    let ident = lake::table_ident(cfg, TableKind::Trades);
    let mut live = HybridTable::new(
        catalog.clone(),
        ident.clone(),
        lake::batch::arrow_schema(trades.metadata().current_schema())?,
        tail,
        pinned.clone(),
    );
    if let Some(remote) = remote {
        live = live.with_remote(remote);
    }
    pinned.set(trades);
    // The provider snapshots the table list at construction, so it is
    // built after the tables are ensured.
    let provider = IcebergCatalogProvider::try_new(catalog.clone()).await?;
    ctx.register_catalog(
        CATALOG,
        Arc::new(LiveCatalog::new(
            Arc::new(provider),
            &cfg.lake.namespace,
            live.clone(),
        )),
    );
    Ok(Engine::new(
        ctx,
        catalog,
        ident,
        live,
        pinned,
        cfg.api.clone(),
    ))
}

/// What the session may run: queries only. The guard (`sql_guard`) refuses
/// anything else first; these options refuse it again, so a guard bug
/// cannot turn into a write.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Runs one query, read-only, as `POST /v1/sql` does (an `INSERT` or a
/// `COPY` here would commit a snapshot without Kafka offsets), and on the
/// query runtime, whose stacks the guard's limits are sized for.
pub async fn run_sql(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, SessionError> {
    let ctx = ctx.clone();
    let sql = sql.to_string();
    super::pool::handle()
        .spawn(async move {
            super::sql_guard::check(&sql)?;
            let df = ctx
                .sql_with_options(&sql, read_only())
                .await
                .map_err(refusal_or)?;
            df.collect().await.map_err(refusal_or)
        })
        .await
        .map_err(|e| SessionError::Task(e.to_string()))?
}

/// A function's size limit by its own message (it travels wrapped in
/// DataFusion's errors), anything else as DataFusion's.
fn refusal_or(e: datafusion::error::DataFusionError) -> SessionError {
    match super::limits::LimitError::find(&e) {
        Some(l) => SessionError::Limits(l.clone()),
        None => SessionError::DataFusion(e),
    }
}

/// Renders batches as an ASCII table, CSV with a header, or JSON lines.
pub fn format(batches: &[RecordBatch], fmt: OutputFormat) -> Result<String, SessionError> {
    match fmt {
        OutputFormat::Table => Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string()),
        OutputFormat::Csv => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut buf);
                for b in batches {
                    w.write(b)?;
                }
            }
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        OutputFormat::Json => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
    }
}

/// Where a query engine's spill files go: `<data_dir>/query-spill/<pid>`,
/// one directory a process. DataFusion's default, a directory of the OS
/// temp dir removed when the engine drops, outlives a SQL worker that was
/// killed (at its memory limit or its deadline), and a sort that spilled
/// leaves its gigabytes there; the daemon removes a worker's directory
/// when it drops the worker ([`spill_dir_of`]), and each engine removes
/// those of processes no longer running when it starts.
pub fn spill_root(cfg: &Config) -> std::path::PathBuf {
    cfg.data_dir_abs().join("query-spill")
}

/// The spill directory of the process `pid`, under `root`
/// ([`spill_root`]).
pub fn spill_dir_of(root: &std::path::Path, pid: u32) -> std::path::PathBuf {
    root.join(pid.to_string())
}

/// This process's spill directory ([`spill_dir_of`]), removed when the
/// guard drops: by `ticklake query` once it has answered, and by
/// `ticklake run` once the daemon has stopped. Hold it for as long as the
/// process's engine may spill. Without it each run left its directory
/// behind until the next engine started on the data directory
/// ([`remove_stale_spills`]).
pub struct OwnSpill(std::path::PathBuf);

impl OwnSpill {
    pub fn of(cfg: &Config) -> Self {
        Self(spill_dir_of(&spill_root(cfg), std::process::id()))
    }
}

impl Drop for OwnSpill {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.0.display(), error = %e, "query: could not remove the spill directory")
            }
        }
    }
}

/// DataFusion's disk manager for `cfg`: spill files in this process's
/// directory (made now, stale siblings removed), at most
/// `api.max_spill_bytes` of them; none when that is 0.
fn disk_manager(
    cfg: &Config,
) -> Result<datafusion::execution::disk_manager::DiskManagerBuilder, SessionError> {
    use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
    if cfg.api.max_spill_bytes == 0 {
        return Ok(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled));
    }
    let root = spill_root(cfg);
    remove_stale_spills(&root);
    let dir = spill_dir_of(&spill_root(cfg), std::process::id());
    std::fs::create_dir_all(&dir).map_err(|e| SessionError::Spill(dir.clone(), e))?;
    Ok(DiskManagerBuilder::default()
        .with_mode(DiskManagerMode::Directories(vec![dir]))
        .with_max_temp_directory_size(cfg.api.max_spill_bytes))
}

/// Removes the spill directories under `root` of processes that are no
/// longer running (named by pid): a daemon or worker killed while it
/// spilled.
fn remove_stale_spills(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let alive = e
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive && let Err(err) = std::fs::remove_dir_all(e.path()) {
            tracing::warn!(dir = %e.path().display(), error = %err, "query: could not remove a stale spill directory");
        }
    }
}
