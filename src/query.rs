//! SQL over the lake with DataFusion: the Iceberg catalog is registered as
//! catalog `ticklake`, so `market.trades` resolves without qualification.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::prelude::{SessionConfig, SessionContext};
use iceberg_datafusion::IcebergCatalogProvider;

use crate::config::Config;
use crate::lake::{self, LakeError, TableKind};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("formatting: {0}")]
    Format(#[from] arrow::error::ArrowError),
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
pub async fn session(cfg: &Config) -> Result<SessionContext, QueryError> {
    let catalog = lake::open_catalog(cfg).await?;
    for kind in [TableKind::Trades, TableKind::DeadLetters] {
        lake::ensure_table(catalog.as_ref(), cfg, kind).await?;
    }
    let config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG, &cfg.lake.namespace)
        .with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    // The provider snapshots the table list at construction, so it is
    // built after the tables are ensured.
    let provider = IcebergCatalogProvider::try_new(catalog).await?;
    ctx.register_catalog(CATALOG, Arc::new(provider));
    Ok(ctx)
}

pub async fn run_sql(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// Renders batches as an ASCII table, CSV with a header, or JSON lines.
pub fn format(batches: &[RecordBatch], fmt: OutputFormat) -> Result<String, QueryError> {
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
