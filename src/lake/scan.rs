//! Reading one snapshot of an Iceberg table with DataFusion's own Parquet
//! engine. Iceberg plans the scan (manifest and partition pruning, file
//! metrics) and DataFusion reads the files it kept: in parallel across the
//! session's target partitions, with row-group and page-index pruning, late
//! materialization of filtered rows, and footers cached between queries.
//! `iceberg-datafusion`'s own scan decodes every file on one stream, which
//! left the lake side at a fraction of what the same files give DuckDB.
//!
//! The fast path reads columns by name, so it is taken only where that is
//! exact: a table whose schema never changed, data files in Parquet on the
//! local file system or in a bucket this process has a client of
//! (`store`: the warehouse's, or a table's own), and no delete files.
//! Anything else returns `None`, and the caller falls back to the Iceberg
//! reader.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use iceberg::table::Table;
use iceberg_datafusion::IcebergStaticTableProvider;

use super::files::{PlannedFile, Planner};
use crate::config::S3Config;

/// Where DataFusion finds a data file: the object store URL it is
/// registered under and the key in it. Local files are under DataFusion's
/// built-in local store; a bucket's under the client this process built
/// for it (`store::bucket`), which the query session's runtime finds
/// through [`LakeObjectStores`]. `None` for any other location.
fn file_location(location: &str) -> Option<(ObjectStoreUrl, String)> {
    if let Some(p) = super::store::local_path(location) {
        let p = p.to_str()?;
        return p.starts_with('/').then(|| {
            (
                ObjectStoreUrl::local_filesystem(),
                p.trim_start_matches('/').to_string(),
            )
        });
    }
    let w = super::store::for_location(location)?;
    let key = w.path(location).ok()?;
    Some((ObjectStoreUrl::parse(w.root()).ok()?, key.to_string()))
}

/// The object stores of a query session: DataFusion's own (the local file
/// system) and, for any `s3://` bucket, this process's client of it
/// (`store::bucket`, with the warehouse's settings): the warehouse's, or
/// that of a bucket a REST catalog placed a table in (S3 Tables gives each
/// table a bucket of its own), found when a scan first asks for it.
#[derive(Debug)]
pub struct LakeObjectStores {
    registered: DefaultObjectStoreRegistry,
    s3: S3Config,
}

impl LakeObjectStores {
    pub fn new(s3: S3Config) -> Self {
        Self {
            registered: DefaultObjectStoreRegistry::new(),
            s3,
        }
    }
}

impl ObjectStoreRegistry for LakeObjectStores {
    fn register_store(
        &self,
        url: &url::Url,
        store: Arc<dyn object_store::ObjectStore>,
    ) -> Option<Arc<dyn object_store::ObjectStore>> {
        self.registered.register_store(url, store)
    }

    fn deregister_store(&self, url: &url::Url) -> DFResult<Arc<dyn object_store::ObjectStore>> {
        self.registered.deregister_store(url)
    }

    fn get_store(&self, url: &url::Url) -> DFResult<Arc<dyn object_store::ObjectStore>> {
        let missing = match self.registered.get_store(url) {
            Ok(found) => return Ok(found),
            Err(e) => e,
        };
        let Some(root) = super::store::bucket_root(url.as_str()) else {
            return Err(missing);
        };
        let w = super::store::bucket(&root, &self.s3)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        self.registered.register_store(url, w.store());
        Ok(w.store())
    }
}

/// An empty scan with the projected schema: no snapshot, or no file left
/// after pruning.
pub fn empty_plan(
    schema: &SchemaRef,
    projection: Option<&Vec<usize>>,
) -> DFResult<Arc<dyn ExecutionPlan>> {
    let projected = match projection {
        Some(p) => Arc::new(schema.project(p)?),
        None => schema.clone(),
    };
    Ok(Arc::new(EmptyExec::new(projected)))
}

/// The data files of `table` at `snapshot_id` that can hold rows matching
/// `filters`, when the fast path applies to them (see the module comment),
/// else `None`.
pub async fn local_files(
    planner: &Planner,
    table: &Table,
    snapshot_id: i64,
    filters: &[Expr],
) -> DFResult<Option<Vec<PlannedFile>>> {
    if !only_columns_added(table.metadata()) {
        return Ok(None);
    }
    let Some(planned) = planner.plan(table, snapshot_id, filters).await? else {
        return Ok(None);
    };
    if planned.iter().any(|f| file_location(&f.path).is_none()) {
        return Ok(None);
    }
    Ok(Some(planned))
}

/// Whether every schema `meta` ever had is its current one less columns
/// added since (same ids, names and types). A file written under any of
/// them then reads, column by column by name, as the current schema, with
/// nulls for the columns it predates: DataFusion's schema adapter does
/// that. Any other change (a rename, a drop, a new type) leaves the table
/// to Iceberg's own reader.
pub fn only_columns_added(meta: &iceberg::spec::TableMetadata) -> bool {
    let current = meta.current_schema();
    meta.schemas_iter().all(|s| {
        s.as_struct().fields().iter().all(|f| {
            current
                .field_by_id(f.id)
                .is_some_and(|c| c.name == f.name && c.field_type == f.field_type)
        })
    })
}

/// A DataFusion plan reading `files` (from `local_files`) of a table whose
/// Arrow schema is `schema`.
pub async fn files_plan(
    state: &dyn Session,
    files: &[PlannedFile],
    schema: &SchemaRef,
    projection: Option<&Vec<usize>>,
    limit: Option<usize>,
) -> DFResult<Arc<dyn ExecutionPlan>> {
    let mut parts = Vec::with_capacity(files.len());
    let mut store: Option<ObjectStoreUrl> = None;
    for f in files {
        let Some((url, key)) = file_location(&f.path) else {
            return Err(DataFusionError::Internal(format!(
                "{} is on no store this process reads",
                f.path
            )));
        };
        // One scan reads one store; a table's files are all in its
        // warehouse.
        match &store {
            Some(s) if *s != url => {
                return Err(DataFusionError::Internal(format!(
                    "{} is on {}, the scan's other files on {}",
                    f.path,
                    url.as_str(),
                    s.as_str()
                )));
            }
            Some(_) => {}
            None => store = Some(url),
        }
        parts.push(PartitionedFile::new(key, f.size));
    }
    let Some(store) = store else {
        return empty_plan(schema, projection);
    };
    // The filters reach the Parquet source through DataFusion's own filter
    // pushdown (through the union above), so they are not set here too.
    let source = ParquetSource::new(schema.clone());
    // One group per target partition, as a listing table splits its files;
    // the physical optimizer may split large files further by byte range.
    let groups = FileGroup::new(parts).split_files(state.config().target_partitions());
    let config = FileScanConfigBuilder::new(store, Arc::new(source))
        .with_file_groups(groups)
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .build();
    // Through ParquetFormat so the session's Parquet options apply and its
    // footer cache serves the reads.
    let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
    format.create_physical_plan(state, config).await
}

/// A plan reading `table` at `snapshot_id`: the fast path where it applies
/// (`local_files`, `files_plan`), else Iceberg's own reader. `schema` is
/// the table's Arrow schema; `filters` only prune, the caller filters
/// again.
#[allow(clippy::too_many_arguments)]
pub async fn snapshot_plan(
    state: &dyn Session,
    planner: &Planner,
    table: &Table,
    snapshot_id: i64,
    schema: &SchemaRef,
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
    limit: Option<usize>,
) -> DFResult<Arc<dyn ExecutionPlan>> {
    if let Some(files) = local_files(planner, table, snapshot_id, filters).await? {
        return files_plan(state, &files, schema, projection, limit).await;
    }
    let slow = IcebergStaticTableProvider::try_new_from_table_snapshot(table.clone(), snapshot_id)
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    slow.scan(state, projection, filters, limit).await
}

/// One snapshot of a table as a DataFusion table, read through the fast
/// path where it applies and Iceberg's reader where it does not. The
/// minute bars are read so: their files planned from the planner's index,
/// not from the manifests at every request. Or some of the snapshot's
/// files, chosen by the caller (`local_files`): the files a newer snapshot
/// added to those whose rows a query engine already holds
/// (`query::engine::window`).
pub struct SnapshotTable {
    table: Table,
    snapshot_id: i64,
    planner: Planner,
    schema: SchemaRef,
    /// The files read instead of all that the filters keep.
    files: Option<Vec<PlannedFile>>,
}

impl fmt::Debug for SnapshotTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotTable")
            .field("table", self.table.identifier())
            .field("snapshot_id", &self.snapshot_id)
            .finish_non_exhaustive()
    }
}

impl SnapshotTable {
    pub fn new(table: Table, snapshot_id: i64, planner: Planner) -> Result<Self, super::LakeError> {
        let schema = super::batch::arrow_schema(table.metadata().current_schema())?;
        Ok(Self {
            table,
            snapshot_id,
            planner,
            schema,
            files: None,
        })
    }

    /// `files` of `table` at `snapshot_id` (from `local_files`), and no
    /// other.
    pub fn of_files(
        table: Table,
        snapshot_id: i64,
        files: Vec<PlannedFile>,
    ) -> Result<Self, super::LakeError> {
        let mut t = Self::new(table, snapshot_id, Planner::default())?;
        t.files = Some(files);
        Ok(t)
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if let Some(files) = &self.files {
            return files_plan(state, files, &self.schema, projection, limit).await;
        }
        snapshot_plan(
            state,
            &self.planner,
            &self.table,
            self.snapshot_id,
            &self.schema,
            projection,
            filters,
            limit,
        )
        .await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        // They only prune; DataFusion filters the rows again.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_and_known_buckets_take_the_fast_path() {
        let local = |l| file_location(l).map(|(u, k)| (u.as_str().to_string(), k));
        assert_eq!(
            local("file:///w/a.parquet"),
            Some(("file:///".to_string(), "w/a.parquet".to_string()))
        );
        assert_eq!(
            local("/w/a.parquet"),
            Some(("file:///".to_string(), "w/a.parquet".to_string()))
        );
        // No client for this bucket in the process: Iceberg's reader.
        assert_eq!(local("s3://no-such-bucket-here/a.parquet"), None);
    }
}
