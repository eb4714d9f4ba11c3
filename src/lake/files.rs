//! Which data files of a snapshot a query must read.

use std::sync::Arc;

use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::Expr;
use futures::TryStreamExt;
use iceberg::spec::DataFileFormat;
use iceberg::table::Table;
use iceberg_datafusion::physical_plan::convert_filters_to_predicate;

fn ext(e: iceberg::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// One data file a scan reads, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub path: Arc<str>,
    pub size: u64,
}

/// Plans the data files of a snapshot for a set of filters.
#[derive(Debug, Default, Clone)]
pub struct Planner {}

impl Planner {
    /// The Parquet files of `snapshot_id` that can hold rows matching
    /// `filters` (which only prune: the caller filters again), or `None`
    /// when the snapshot has delete files or files in another format,
    /// which only Iceberg's own reader applies.
    pub async fn plan(
        &self,
        table: &Table,
        snapshot_id: i64,
        filters: &[Expr],
    ) -> DFResult<Option<Vec<PlannedFile>>> {
        let mut scan = table.scan().snapshot_id(snapshot_id).select_all();
        if let Some(p) = convert_filters_to_predicate(filters) {
            scan = scan.with_filter(p);
        }
        let tasks: Vec<_> = scan
            .build()
            .map_err(ext)?
            .plan_files()
            .await
            .map_err(ext)?
            .try_collect()
            .await
            .map_err(ext)?;
        let mut files = Vec::with_capacity(tasks.len());
        for t in tasks {
            if !t.deletes.is_empty() || t.data_file_format != DataFileFormat::Parquet {
                return Ok(None);
            }
            files.push(PlannedFile {
                path: t.data_file_path.into(),
                size: t.file_size_in_bytes,
            });
        }
        Ok(Some(files))
    }
}
