//! What the daemon's bars actor and maintenance do to the lake of
//! `ticklake bench-api latency`: the minute bars kept as the trades are
//! committed, and, with `--maintain`, compaction and expiry.

use std::sync::Arc;
use std::time::Instant;

use iceberg::{Catalog, TableIdent};

use super::BenchApiError;
use crate::config::Config;
use crate::lake;

fn err(e: lake::LakeError) -> BenchApiError {
    BenchApiError::Poll(format!("maintenance: {e}"))
}

/// The minute-bars table, created when missing.
pub(super) async fn ensure_bars(
    cfg: &Config,
    catalog: &dyn Catalog,
) -> Result<TableIdent, BenchApiError> {
    lake::bars::ensure_table(catalog, cfg).await.map_err(err)?;
    Ok(lake::bars_ident(cfg))
}

/// One run of the daemon's bars actor: the trades commits the bars do not
/// cover yet, summarized into one bars commit (none when covered).
pub(super) async fn summarize_bars(
    cfg: &Config,
    catalog: &dyn Catalog,
    trades: &TableIdent,
) -> Result<lake::bars::CatchUp, BenchApiError> {
    let bars = ensure_bars(cfg, catalog).await?;
    let started = Instant::now();
    let summary = lake::bars::catch_up(catalog, trades, &bars, cfg.writer.target_file_size_bytes)
        .await
        .map_err(err)?;
    tracing::debug!(
        bars = summary.bars,
        rows = summary.trades_rows,
        seconds = started.elapsed().as_secs_f64(),
        "bench lake: minute bars summarized"
    );
    Ok(summary)
}

/// What the daemon's bars actor and maintenance leave of a lake, done at
/// once: the minute bars summarized, then every table compacted (files of
/// any age, two or more per partition) and its history expired.
pub(super) async fn maintain_lake(
    cfg: &Config,
    catalog: &Arc<dyn iceberg::Catalog>,
    trades: &iceberg::TableIdent,
) -> Result<Vec<crate::lake::maintain::MaintainReport>, BenchApiError> {
    lake::ensure_table(catalog.as_ref(), cfg, lake::TableKind::DeadLetters)
        .await
        .map_err(err)?;
    summarize_bars(cfg, catalog.as_ref(), trades).await?;
    let mut mcfg = cfg.clone();
    mcfg.maintenance.compact_min_age = "0s".into();
    mcfg.maintenance.compact_min_files = 2;
    mcfg.maintenance.snapshot_retention = "0s".into();
    let job = crate::actors::maintenance::Job::from_config(&mcfg, catalog.clone())
        .await
        .map_err(err)?;
    let reports = job
        .run()
        .await
        .results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    for r in &reports {
        tracing::info!(report = %serde_json::to_string(r).unwrap_or_default(), "bench lake: maintained");
    }
    Ok(reports)
}
