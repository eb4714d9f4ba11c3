//! `market.trades_live`: the committed lake at one pinned snapshot S plus
//! the tail rows at or past S's recorded Kafka offsets (UNION ALL). The
//! split is by offset, not by time, so the union has no overlap and no gap.
//!
//! Pinning: a scan takes a snapshot S (the newest the query side knows),
//! reads S's offsets, and reads the tail rows at or past them from the
//! tail's newest published snapshot, on the query's own thread (the tail
//! actor is not asked). The tail drops rows only after a commit is
//! visible; if it already dropped rows S does not hold (a newer commit
//! landed in between), the read answers `Stale` and the scan pins the
//! table's current snapshot instead.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};
use serde::Serialize;

use crate::lake::commit::current_offsets;
use crate::lake::files::{Bounds, Planner};
use crate::messages::tail::{TailError, TailFilter};
use crate::query::tail::TailView;

/// Name of the hybrid table in the lake's namespace.
pub const LIVE_TABLE: &str = "trades_live";

/// Times a scan re-pins after the tail answered `Stale`. Each retry loads
/// the catalog's current snapshot, which the tail can only be behind of, so
/// more than one retry means commits landing back to back.
const MAX_PIN_ATTEMPTS: usize = 8;

/// The snapshot queries pin unless the tail says it is too old. The query
/// actor refreshes it after every commit, so most scans skip the catalog.
#[derive(Clone, Default)]
pub struct PinnedTable(Arc<RwLock<Option<Table>>>);

impl PinnedTable {
    pub fn get(&self) -> Option<Table> {
        self.0.read().ok().and_then(|t| t.clone())
    }

    /// Replaces the pinned table unless the one held is newer (two loads can
    /// finish out of order).
    pub fn set(&self, table: Table) {
        let seq = |t: &Table| t.metadata().last_sequence_number();
        if let Ok(mut held) = self.0.write()
            && held.as_ref().is_none_or(|h| seq(h) <= seq(&table))
        {
            *held = Some(table);
        }
    }
}

/// What one scan of the hybrid table read: the snapshot it pinned and how
/// many tail rows it added (before the query's own filters). The API
/// reports it; SQL users see only the rows.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ScanInfo {
    pub snapshot_id: Option<i64>,
    pub tail_rows: usize,
}

/// Pins taken by another process: a SQL worker (`query::isolate`) has no
/// tail of its own, and asks the daemon that started it, which pins as its
/// own scans do and sends the snapshot id and the tail rows.
#[async_trait]
pub trait RemotePin: Send + Sync {
    async fn pin(&self, filter: &TailFilter) -> DFResult<(Option<i64>, Vec<RecordBatch>)>;
}

/// The hybrid table provider.
#[derive(Clone)]
pub struct HybridTable {
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    schema: SchemaRef,
    tail: Option<TailView>,
    /// Set in a SQL worker: pins come from the daemon.
    remote: Option<Arc<dyn RemotePin>>,
    pinned: PinnedTable,
    info: Option<Arc<Mutex<ScanInfo>>>,
    /// A pin taken before planning (`pin_now`), which scans use instead of
    /// pinning themselves.
    pin: Option<Pin>,
    /// Plans the lake side's files; shared by every clone of the table.
    planner: Planner,
}

/// One consistent pin: a snapshot of the lake, and the tail rows at or past
/// its offsets that match the filter it was taken with.
#[derive(Clone)]
pub struct Pin {
    table: Table,
    snapshot_id: Option<i64>,
    rows: Vec<RecordBatch>,
}

impl Pin {
    /// The tail rows, exactly those matching the filter the pin was taken
    /// with (`TailStore::scan`).
    pub fn rows(&self) -> &[RecordBatch] {
        &self.rows
    }

    pub fn snapshot_id(&self) -> Option<i64> {
        self.snapshot_id
    }

    /// The trades table the pin read its snapshot from.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The current snapshot of `table`, without the tail: a table `at` it
    /// is the lake alone.
    pub fn lake_at(table: Table) -> Self {
        let snapshot_id = table.metadata().current_snapshot().map(|s| s.snapshot_id());
        Self {
            table,
            snapshot_id,
            rows: Vec::new(),
        }
    }

    /// The same pin with each batch of its tail rows narrowed by `keep`,
    /// for a query whose predicates the tail filter could not say all of
    /// (`instrument`): its rows then match them exactly. `keep` may drop
    /// only rows the query's own predicates reject, since a table `at` the
    /// pin reads these rows as the whole tail.
    pub fn narrowed<E>(
        self,
        mut keep: impl FnMut(&RecordBatch) -> Result<RecordBatch, E>,
    ) -> Result<Self, E> {
        let mut rows = Vec::with_capacity(self.rows.len());
        for b in &self.rows {
            let kept = keep(b)?;
            if kept.num_rows() > 0 {
                rows.push(kept);
            }
        }
        Ok(Self { rows, ..self })
    }

    /// The same snapshot without the tail: a table `at` it is the lake
    /// alone, at exactly the snapshot these tail rows complement.
    pub fn lake_only(&self) -> Self {
        Self {
            table: self.table.clone(),
            snapshot_id: self.snapshot_id,
            rows: Vec::new(),
        }
    }
}

impl fmt::Debug for HybridTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridTable")
            .field("ident", &self.ident)
            .field("tail", &self.tail.is_some())
            .finish()
    }
}

impl HybridTable {
    /// `tail` is `None` when no daemon runs in this process: the table is
    /// then the lake alone.
    pub fn new(
        catalog: Arc<dyn Catalog>,
        ident: TableIdent,
        schema: SchemaRef,
        tail: Option<TailView>,
        pinned: PinnedTable,
    ) -> Self {
        Self {
            catalog,
            ident,
            schema,
            tail,
            remote: None,
            pinned,
            info: None,
            pin: None,
            planner: Planner::default(),
        }
    }

    /// Plans the lake side's files (`lake::files`).
    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    /// The same table, pinning through `remote` (in a SQL worker).
    pub fn with_remote(mut self, remote: Arc<dyn RemotePin>) -> Self {
        self.remote = Some(remote);
        self
    }

    /// The same table, recording what its scans read into `info`.
    pub fn with_info(&self, info: Arc<Mutex<ScanInfo>>) -> Self {
        let mut t = self.clone();
        t.info = Some(info);
        t
    }

    /// Pins now, for a query that wants to look at the tail rows before it
    /// is planned. `filter` must be at least as wide as the query's own
    /// predicates: the scans of a table made with `at` use these rows.
    pub async fn pin_now(&self, filter: &TailFilter) -> DFResult<Pin> {
        let (table, snapshot_id, rows) = self.pin(filter).await?;
        Ok(Pin {
            table,
            snapshot_id,
            rows,
        })
    }

    /// The same table, reading `pin` instead of pinning at scan time.
    pub fn at(&self, pin: Pin) -> Self {
        let mut t = self.clone();
        t.pin = Some(pin);
        t
    }

    async fn load(&self) -> DFResult<Table> {
        let t = self
            .catalog
            .load_table(&self.ident)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        self.pinned.set(t.clone());
        Ok(t)
    }

    /// Indexes the files of `table`'s current snapshot for the scans to
    /// come, so the first query after a commit does not pay for it.
    pub async fn prepare(&self, table: &Table) -> DFResult<()> {
        self.planner.prepare(table).await
    }

    /// The pinned snapshot and the tail rows past its offsets, consistent.
    async fn pin(&self, filter: &TailFilter) -> DFResult<(Table, Option<i64>, Vec<RecordBatch>)> {
        if let Some(remote) = &self.remote {
            let (snapshot_id, rows) = remote.pin(filter).await?;
            // The daemon's pin came from the catalog, so the catalog's
            // table holds that snapshot (older ones are only expired long
            // after any pin of them).
            let table = self.load().await?;
            if let Some(id) = snapshot_id
                && table.metadata().snapshot_by_id(id).is_none()
            {
                return Err(DataFusionError::Execution(format!(
                    "snapshot {id} pinned by the daemon is not in {}",
                    self.ident
                )));
            }
            return Ok((table, snapshot_id, rows));
        }
        // Without a tail nobody refreshes the pinned table: always load.
        let mut fresh = self.tail.is_none();
        for _ in 0..MAX_PIN_ATTEMPTS {
            let table = match (fresh, self.pinned.get()) {
                (false, Some(t)) => t,
                _ => self.load().await?,
            };
            let snapshot_id = table.metadata().current_snapshot().map(|s| s.snapshot_id());
            // The offsets of the newest ticklake commit at or below it: a
            // snapshot another engine wrote on top holds no Kafka record.
            // No offsets at all: the lake covers no tail row.
            let since = current_offsets(&table)
                .map_err(|e| DataFusionError::External(Box::new(e)))?
                .map(|(_, o)| o)
                .unwrap_or_default();
            let Some(tail) = &self.tail else {
                return Ok((table, snapshot_id, Vec::new()));
            };
            // Synchronous and on this (query) thread: the tail's newest
            // snapshot shares its rows, and ingest goes on meanwhile.
            match tail.scan(&since, filter) {
                Ok(rows) => return Ok((table, snapshot_id, rows)),
                Err(TailError::Stale { .. }) => fresh = true,
                Err(e) => return Err(DataFusionError::Execution(e.to_string())),
            }
        }
        Err(DataFusionError::Execution(format!(
            "could not pin a snapshot consistent with the tail after {MAX_PIN_ATTEMPTS} attempts"
        )))
    }
}

#[async_trait]
impl TableProvider for HybridTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let (table, snapshot_id, rows) = match &self.pin {
            Some(p) => (p.table.clone(), p.snapshot_id, p.rows.clone()),
            None => self.pin(&tail_filter(filters)).await?,
        };
        if let Some(info) = &self.info
            && let Ok(mut i) = info.lock()
        {
            *i = ScanInfo {
                snapshot_id,
                tail_rows: rows.iter().map(|b| b.num_rows()).sum(),
            };
        }
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::with_capacity(2);
        match snapshot_id {
            // The lake side gets the same filters: Iceberg prunes partitions
            // (day, exchange) and files, the Parquet reader row groups and pages.
            Some(id) => inputs.push(
                crate::lake::scan::snapshot_plan(
                    state,
                    &self.planner,
                    &table,
                    id,
                    &self.schema,
                    projection,
                    filters,
                    limit,
                )
                .await?,
            ),
            None => inputs.push(crate::lake::scan::empty_plan(&self.schema, projection)?),
        }
        if !rows.is_empty() {
            inputs.push(MemorySourceConfig::try_new_exec(
                &[rows],
                self.schema.clone(),
                projection.cloned(),
            )?);
        }
        UnionExec::try_new(inputs)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        // Both sides only prune with the filters; DataFusion re-applies them
        // above the union, which keeps the answer exact whatever was pruned.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

/// What the tail's index can use from the pushed-down filters: equality and
/// IN on symbol and exchange, ranges on timestamp, in conjunctions
/// (`Bounds::of`). Anything else is ignored (the tail then returns more
/// rows, never fewer).
pub fn tail_filter(filters: &[Expr]) -> TailFilter {
    let Bounds {
        symbols,
        exchanges,
        start_us,
        end_us,
    } = Bounds::of(filters);
    TailFilter {
        symbols,
        exchanges,
        start_us,
        end_us,
    }
}

/// The `k`-th newest timestamp of `rows`, when they hold at least `k`.
///
/// A query for the newest `k` rows of the hybrid table matching a filter
/// can then add `timestamp >= t`, where `t` is taken over the tail rows
/// matching that filter exactly (a tail scan with a filter that says
/// precisely what the query asks): at least `k` rows at or after
/// `t` exist (rows only move from the tail into the lake, never out of the
/// union), so no row before `t` can be among the newest `k`. The lake side
/// then skips every file and row group that ends before `t`, which for "the
/// last minutes of a symbol" is usually all of them.
pub fn kth_newest_timestamp(rows: &[RecordBatch], k: usize) -> DFResult<Option<i64>> {
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampMicrosecondType;
    if k == 0 {
        return Ok(None);
    }
    let mut ts: Vec<i64> = Vec::with_capacity(rows.iter().map(|b| b.num_rows()).sum());
    for b in rows {
        let Some(time) = b
            .column_by_name("timestamp")
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        else {
            return Err(DataFusionError::Internal(
                "tail rows of another schema".into(),
            ));
        };
        ts.extend(time.iter().flatten());
    }
    if ts.len() < k {
        return Ok(None);
    }
    let (_, kth, _) = ts.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
    Ok(Some(*kth))
}

/// The lake's catalog with `trades_live` added to its namespace. Iceberg's
/// own schema provider would turn a registered table into a new Iceberg
/// table, so the live table is served by this wrapper instead.
#[derive(Debug)]
pub struct LiveCatalog {
    inner: Arc<dyn CatalogProvider>,
    namespace: String,
    schema: Arc<LiveSchema>,
}

impl LiveCatalog {
    pub fn new(inner: Arc<dyn CatalogProvider>, namespace: &str, live: HybridTable) -> Self {
        let schema = Arc::new(LiveSchema {
            inner: inner.schema(namespace),
            extra: HashMap::from([(
                LIVE_TABLE.to_string(),
                Arc::new(live) as Arc<dyn TableProvider>,
            )]),
        });
        Self {
            inner,
            namespace: namespace.to_string(),
            schema,
        }
    }
}

impl CatalogProvider for LiveCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema_names(&self) -> Vec<String> {
        let mut names = self.inner.schema_names();
        if !names.contains(&self.namespace) {
            names.push(self.namespace.clone());
        }
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == self.namespace {
            Some(self.schema.clone())
        } else {
            self.inner.schema(name)
        }
    }
}

#[derive(Debug)]
struct LiveSchema {
    inner: Option<Arc<dyn SchemaProvider>>,
    extra: HashMap<String, Arc<dyn TableProvider>>,
}

#[async_trait]
impl SchemaProvider for LiveSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.extra.keys().cloned().collect();
        if let Some(i) = &self.inner {
            names.extend(i.table_names());
        }
        names
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = self.extra.get(name) {
            return Ok(Some(t.clone()));
        }
        match &self.inner {
            Some(i) => i.table(name).await,
            None => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.extra.contains_key(name) || self.inner.as_ref().is_some_and(|i| i.table_exist(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::common::ScalarValue;
    use datafusion::prelude::{col, lit};
    use std::collections::BTreeSet;

    fn ts(us: i64) -> Expr {
        Expr::Literal(
            ScalarValue::TimestampMicrosecond(Some(us), Some("+00:00".into())),
            None,
        )
    }

    #[test]
    fn filters_on_symbol_exchange_and_time_reach_the_tail() {
        let f = tail_filter(&[
            col("symbol").eq(lit("BTCUSDT")),
            col("exchange")
                .in_list(vec![lit("BINANCE"), lit("ASX")], false)
                .and(col("timestamp").gt_eq(ts(10))),
            ts(50).gt(col("timestamp")),
        ]);
        assert_eq!(f.symbols, Some(BTreeSet::from(["BTCUSDT".to_string()])));
        assert_eq!(
            f.exchanges,
            Some(BTreeSet::from(["ASX".to_string(), "BINANCE".to_string()]))
        );
        assert_eq!((f.start_us, f.end_us), (Some(10), Some(50)));
    }

    #[test]
    fn unusable_filters_never_narrow() {
        let f = tail_filter(&[
            col("symbol").eq(lit("A")).or(col("symbol").eq(lit("B"))),
            col("price").gt(lit(5)),
            col("symbol").in_list(vec![lit("A")], true),
            col("timestamp").not_eq(ts(3)),
        ]);
        assert_eq!(f, TailFilter::default());
        // two different symbols in one conjunction match nothing
        let f = tail_filter(&[col("symbol").eq(lit("A")), col("symbol").eq(lit("B"))]);
        assert_eq!(f.symbols, Some(BTreeSet::new()));
    }

    fn rows(n: usize) -> RecordBatch {
        use arrow::array::{StringArray, TimestampMicrosecondArray};
        let sym = ["A", "B", "C"];
        let exch = ["X", "Y"];
        RecordBatch::try_from_iter(vec![
            (
                "symbol",
                Arc::new(StringArray::from_iter_values((0..n).map(|i| sym[i % 3])))
                    as arrow::array::ArrayRef,
            ),
            (
                "exchange",
                Arc::new(StringArray::from_iter_values((0..n).map(|i| exch[i % 2]))),
            ),
            (
                "timestamp",
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        (0..n).map(|i| ((i * 7919) % 1000) as i64),
                    )
                    .with_timezone("+00:00"),
                ),
            ),
        ])
        .unwrap()
    }

    #[test]
    fn exactly_the_matching_rows_and_their_kth_newest_timestamp() {
        let batches = vec![rows(600), rows(400).slice(100, 300)];
        let filter = TailFilter {
            symbols: Some(["A".to_string()].into()),
            exchanges: Some(["Y".to_string()].into()),
            start_us: Some(100),
            end_us: Some(900),
        };
        // The same by brute force.
        let mut want: Vec<i64> = Vec::new();
        for b in &batches {
            let s = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            let x = b
                .column(1)
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            let t = b
                .column(2)
                .as_any()
                .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
                .unwrap();
            for i in 0..b.num_rows() {
                if s.value(i) == "A" && x.value(i) == "Y" && (100..=900).contains(&t.value(i)) {
                    want.push(t.value(i));
                }
            }
        }
        want.sort_unstable_by(|a, b| b.cmp(a));
        assert!(want.len() > 20, "the fixture must match some rows");
        let matching: Vec<RecordBatch> = batches
            .iter()
            .map(|b| crate::query::tail::rows_matching(b, &filter).unwrap())
            .collect();
        assert_eq!(
            matching.iter().map(|b| b.num_rows()).sum::<usize>(),
            want.len()
        );
        for k in [1, 2, 10, want.len()] {
            assert_eq!(
                kth_newest_timestamp(&matching, k).unwrap(),
                Some(want[k - 1]),
                "k = {k}"
            );
        }
        assert_eq!(
            kth_newest_timestamp(&matching, want.len() + 1).unwrap(),
            None
        );
        assert_eq!(kth_newest_timestamp(&matching, 0).unwrap(), None);
        assert_eq!(kth_newest_timestamp(&[], 1).unwrap(), None);
    }
}
