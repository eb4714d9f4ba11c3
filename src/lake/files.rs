//! Which data files of a snapshot a query must read, planned from an index
//! kept in memory instead of from the manifests at every query.
//!
//! A daemon commits every few seconds, and each fast-append adds one
//! manifest. Iceberg's planner reads the manifest list and every manifest
//! it cannot prune by partition (all of today's) at every scan, and a table
//! loaded after a commit starts with an empty manifest cache, so planning
//! grew with the number of commits: about 10,000 manifests a day. Manifests
//! are immutable files, so their live data files are indexed once, by
//! path; a new snapshot reads its manifest list and only the manifests not
//! indexed yet (after an append: one). A query then prunes the snapshot's
//! files in memory by their column bounds on symbol, exchange and
//! timestamp, the columns every ticklake query filters on; the Parquet
//! reader prunes row groups and pages further, and DataFusion filters the
//! rows again, so pruning only has to be conservative.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use futures::{StreamExt, TryStreamExt};
use iceberg::spec::{
    DataContentType, DataFileFormat, Datum, ManifestContentType, ManifestFile, PrimitiveLiteral,
};
use iceberg::table::Table;

fn ext(e: iceberg::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The time column of the trades table, which planners prune by unless
/// told another (`Planner::for_time_column`).
const TIMESTAMP: &str = "timestamp";

/// Snapshots whose file lists are kept: the newest, and the ones queries
/// still running may have pinned before a commit.
const SNAPSHOTS_KEPT: usize = 4;

/// Manifests read at once when many are new (a daemon's first query).
///
/// Twice `lake::commit::CONCURRENT_READS` (maintenance's and the writers'
/// reads) because someone waits on this one: an object store answers each
/// GET after a round trip of tens of milliseconds whatever its size, so a
/// thousand new manifests behind 25 ms take about 3 s at 8 and 1.6 s at
/// 16. The others run in the background on the low-priority commit thread,
/// beside the writers' own commits to the same store. On the test S3 server,
/// which answers one GET at a time, 8, 16 and 32 planned 1,000 manifests
/// alike (`docs/performance.md`, "Session of 7 December, eighth").
const MANIFEST_READS: usize = 16;

/// What a filter says about the columns files are pruned by: the values of
/// symbol and exchange it allows and its range of timestamps (inclusive
/// microseconds). `None` allows anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bounds {
    pub symbols: Option<BTreeSet<String>>,
    pub exchanges: Option<BTreeSet<String>>,
    pub start_us: Option<i64>,
    pub end_us: Option<i64>,
}

impl Bounds {
    /// What `filters` (a conjunction) allow: equality and IN on symbol and
    /// exchange, ranges on timestamp, in conjunctions. Anything else is
    /// ignored: the bounds are then wider than the filters, never narrower.
    pub fn of(filters: &[Expr]) -> Self {
        Self::of_table(filters, TIMESTAMP)
    }

    /// The same, with the table's time column named `time` (the minute
    /// bars' `minute`).
    pub fn of_table(filters: &[Expr], time: &str) -> Self {
        let mut f = Bounds::default();
        let narrow = |set: &mut Option<BTreeSet<String>>, values: BTreeSet<String>| {
            *set = Some(match set.take() {
                Some(old) => old.intersection(&values).cloned().collect(),
                None => values,
            });
        };
        for e in filters.iter().flat_map(split_conjunction) {
            match e {
                Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                    let (col, op, value) = match (left.as_ref(), right.as_ref()) {
                        (Expr::Column(c), Expr::Literal(v, _)) => (c, *op, v),
                        (Expr::Literal(v, _), Expr::Column(c)) => match op.swap() {
                            Some(op) => (c, op, v),
                            None => continue,
                        },
                        _ => continue,
                    };
                    match (col.name.as_str(), op) {
                        (name, op) if name == time => {
                            let Some((lo, hi)) = micros_bounds(value) else {
                                continue;
                            };
                            // Bounds are widened to whole microseconds: a row
                            // too many is filtered later, one too few is lost.
                            match op {
                                Operator::Gt | Operator::GtEq => {
                                    f.start_us = Some(f.start_us.map_or(lo, |s| s.max(lo)));
                                }
                                Operator::Lt | Operator::LtEq => {
                                    f.end_us = Some(f.end_us.map_or(hi, |s| s.min(hi)));
                                }
                                Operator::Eq => {
                                    f.start_us = Some(f.start_us.map_or(lo, |s| s.max(lo)));
                                    f.end_us = Some(f.end_us.map_or(hi, |s| s.min(hi)));
                                }
                                _ => {}
                            }
                        }
                        ("symbol", Operator::Eq) => {
                            if let Some(s) = string_value(value) {
                                narrow(&mut f.symbols, BTreeSet::from([s]));
                            }
                        }
                        ("exchange", Operator::Eq) => {
                            if let Some(s) = string_value(value) {
                                narrow(&mut f.exchanges, BTreeSet::from([s]));
                            }
                        }
                        _ => {}
                    }
                }
                Expr::InList(il) if !il.negated => {
                    let Expr::Column(c) = il.expr.as_ref() else {
                        continue;
                    };
                    let values: Option<BTreeSet<String>> = il
                        .list
                        .iter()
                        .map(|e| match e {
                            Expr::Literal(v, _) => string_value(v),
                            _ => None,
                        })
                        .collect();
                    match (c.name.as_str(), values) {
                        ("symbol", Some(v)) => narrow(&mut f.symbols, v),
                        ("exchange", Some(v)) => narrow(&mut f.exchanges, v),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        f
    }
}

/// One data file and its column bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IndexedFile {
    path: Arc<str>,
    size: u64,
    parquet: bool,
    timestamp: Option<(i64, i64)>,
    symbol: Option<(String, String)>,
    exchange: Option<(String, String)>,
}

fn within(set: &Option<BTreeSet<String>>, range: &Option<(String, String)>) -> bool {
    match (set, range) {
        (Some(set), Some((lo, hi))) => set.iter().any(|v| lo <= v && v <= hi),
        _ => true,
    }
}

impl IndexedFile {
    /// Whether the file can hold a row within `b`, by its bounds (a file
    /// without bounds for a column can hold anything there).
    fn may_match(&self, b: &Bounds) -> bool {
        if let Some((lo, hi)) = self.timestamp
            && (b.start_us.is_some_and(|s| hi < s) || b.end_us.is_some_and(|e| lo > e))
        {
            return false;
        }
        within(&b.symbols, &self.symbol) && within(&b.exchanges, &self.exchange)
    }
}

/// The live files of one manifest; `None` for a manifest of delete files,
/// which the fast path does not apply.
type ManifestFiles = Option<Arc<Vec<IndexedFile>>>;

/// The field ids of the columns files are pruned by.
#[derive(Debug, Clone, Copy)]
struct Columns {
    timestamp: Option<i32>,
    symbol: Option<i32>,
    exchange: Option<i32>,
}

fn long_bounds(f: &iceberg::spec::DataFile, id: Option<i32>) -> Option<(i64, i64)> {
    let id = id?;
    let long = |d: &Datum| match d.literal() {
        PrimitiveLiteral::Long(v) => Some(*v),
        PrimitiveLiteral::Int(v) => Some(i64::from(*v)),
        _ => None,
    };
    Some((
        long(f.lower_bounds().get(&id)?)?,
        long(f.upper_bounds().get(&id)?)?,
    ))
}

fn string_bounds(f: &iceberg::spec::DataFile, id: Option<i32>) -> Option<(String, String)> {
    let id = id?;
    let string = |d: &Datum| match d.literal() {
        PrimitiveLiteral::String(v) => Some(v.clone()),
        _ => None,
    };
    Some((
        string(f.lower_bounds().get(&id)?)?,
        string(f.upper_bounds().get(&id)?)?,
    ))
}

/// Reads one manifest: its live data files with their bounds.
async fn read_manifest(
    table: &Table,
    manifest: &ManifestFile,
    columns: Columns,
) -> DFResult<ManifestFiles> {
    if manifest.content == ManifestContentType::Deletes {
        return Ok(None);
    }
    let m = manifest.load_manifest(table.file_io()).await.map_err(ext)?;
    let mut files = Vec::with_capacity(m.entries().len());
    for e in m.entries().iter().filter(|e| e.is_alive()) {
        if e.content_type() != DataContentType::Data {
            return Ok(None);
        }
        let f = e.data_file();
        files.push(IndexedFile {
            path: f.file_path().into(),
            size: f.file_size_in_bytes(),
            parquet: f.file_format() == DataFileFormat::Parquet,
            timestamp: long_bounds(f, columns.timestamp),
            symbol: string_bounds(f, columns.symbol),
            exchange: string_bounds(f, columns.exchange),
        });
    }
    Ok(Some(Arc::new(files)))
}

/// The files of one snapshot, manifest by manifest (shared with the index
/// of manifests); `None` when one of them holds delete files.
type SnapshotFiles = Option<Arc<Vec<Arc<Vec<IndexedFile>>>>>;

#[derive(Default)]
struct Index {
    /// Manifest path → its live files.
    manifests: HashMap<String, ManifestFiles>,
    /// (table uuid, snapshot id) → its files, newest last.
    snapshots: VecDeque<((uuid::Uuid, i64), SnapshotFiles)>,
}

/// One data file a scan reads, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub path: Arc<str>,
    pub size: u64,
}

/// Plans the data files of a snapshot for a set of filters, from an index
/// of the table's manifests kept across snapshots; clones share it.
#[derive(Clone)]
pub struct Planner {
    /// The timestamp column files are pruned by.
    time: Arc<str>,
    index: Arc<Mutex<Index>>,
    /// Held while a snapshot is indexed, so the queries arriving right
    /// after a commit wait for one reading of the new manifests instead of
    /// each reading them.
    indexing: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Planner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planner").finish_non_exhaustive()
    }
}

impl Default for Planner {
    fn default() -> Self {
        Self::for_time_column(TIMESTAMP)
    }
}

impl Planner {
    /// A planner for a table whose time column is `time` (the trades':
    /// `timestamp`, the default).
    pub fn for_time_column(time: &str) -> Self {
        Self {
            time: time.into(),
            index: Arc::default(),
            indexing: Arc::default(),
        }
    }

    fn cached(&self, key: (uuid::Uuid, i64)) -> Option<SnapshotFiles> {
        let index = self.index.lock().ok()?;
        index
            .snapshots
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, f)| f.clone())
    }

    /// The files of `snapshot_id`, indexed now unless they are already.
    async fn files(&self, table: &Table, snapshot_id: i64) -> DFResult<SnapshotFiles> {
        let md = table.metadata();
        let key = (md.uuid(), snapshot_id);
        if let Some(f) = self.cached(key) {
            return Ok(f);
        }
        let _indexing = self.indexing.lock().await;
        if let Some(f) = self.cached(key) {
            return Ok(f);
        }
        let snapshot = md.snapshot_by_id(snapshot_id).ok_or_else(|| {
            DataFusionError::Execution(format!("snapshot {snapshot_id} is not in the table"))
        })?;
        let schema = snapshot.schema(md).map_err(ext)?;
        let id = |name: &str| schema.field_by_name(name).map(|f| f.id);
        let columns = Columns {
            timestamp: id(&self.time),
            symbol: id("symbol"),
            exchange: id("exchange"),
        };
        let list = table
            .manifest_list_reader(snapshot)
            .load()
            .await
            .map_err(ext)?;
        let known: HashMap<String, ManifestFiles> = match self.index.lock() {
            Ok(index) => list
                .entries()
                .iter()
                .filter_map(|m| {
                    index
                        .manifests
                        .get(&m.manifest_path)
                        .map(|f| (m.manifest_path.clone(), f.clone()))
                })
                .collect(),
            Err(_) => HashMap::new(),
        };
        // Owned, so the reads' futures borrow nothing (they must be Send
        // for any lifetime, which borrowed stream items are not).
        let missing: Vec<ManifestFile> = list
            .entries()
            .iter()
            .filter(|m| !known.contains_key(&m.manifest_path))
            .cloned()
            .collect();
        let new: Vec<(String, ManifestFiles)> = futures::stream::iter(missing)
            .map(|m| {
                let table = table.clone();
                async move {
                    let files = read_manifest(&table, &m, columns).await?;
                    Ok::<_, DataFusionError>((m.manifest_path, files))
                }
            })
            .buffer_unordered(MANIFEST_READS)
            .try_collect()
            .await?;
        let mut all = known;
        all.extend(new);
        let files: SnapshotFiles = list
            .entries()
            .iter()
            .map(|m| all.get(&m.manifest_path).cloned().flatten())
            .collect::<Option<Vec<_>>>()
            .map(Arc::new);
        if let Ok(mut index) = self.index.lock() {
            // Keep the manifests of this snapshot: a newer one shares all
            // of them after an append, most of them after a compaction.
            let live: HashSet<&str> = list
                .entries()
                .iter()
                .map(|m| m.manifest_path.as_str())
                .collect();
            index.manifests.retain(|p, _| live.contains(p.as_str()));
            index.manifests.extend(all);
            index.snapshots.push_back((key, files.clone()));
            while index.snapshots.len() > SNAPSHOTS_KEPT {
                index.snapshots.pop_front();
            }
        }
        Ok(files)
    }

    /// Indexes `table`'s current snapshot ahead of the queries on it (after
    /// a commit: its manifest list and the one new manifest).
    pub async fn prepare(&self, table: &Table) -> DFResult<()> {
        if let Some(s) = table.metadata().current_snapshot() {
            self.files(table, s.snapshot_id()).await?;
        }
        Ok(())
    }

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
        let Some(manifests) = self.files(table, snapshot_id).await? else {
            return Ok(None);
        };
        let bounds = Bounds::of_table(filters, &self.time);
        let mut files = Vec::new();
        for f in manifests.iter().flat_map(|m| m.iter()) {
            if !f.parquet {
                return Ok(None);
            }
            if f.may_match(&bounds) {
                files.push(PlannedFile {
                    path: f.path.clone(),
                    size: f.size,
                });
            }
        }
        Ok(Some(files))
    }
}

fn string_value(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

/// A timestamp literal as the whole microseconds just below and above it.
fn micros_bounds(v: &ScalarValue) -> Option<(i64, i64)> {
    match v {
        ScalarValue::TimestampMicrosecond(Some(x), _) => Some((*x, *x)),
        ScalarValue::TimestampMillisecond(Some(x), _) => {
            let us = x.checked_mul(1000)?;
            Some((us, us))
        }
        ScalarValue::TimestampSecond(Some(x), _) => {
            let us = x.checked_mul(1_000_000)?;
            Some((us, us))
        }
        ScalarValue::TimestampNanosecond(Some(x), _) => {
            Some((x.div_euclid(1000), x.div_euclid(1000) + 1))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::{self, commit};
    use crate::model::{Dec8, TradeV2};
    use datafusion::prelude::{col, lit};

    fn ts(us: i64) -> Expr {
        lit(ScalarValue::TimestampMicrosecond(
            Some(us),
            Some("+00:00".into()),
        ))
    }

    fn file(t: (i64, i64), s: (&str, &str)) -> IndexedFile {
        IndexedFile {
            path: "f".into(),
            size: 1,
            parquet: true,
            timestamp: Some(t),
            symbol: Some((s.0.into(), s.1.into())),
            exchange: None,
        }
    }

    #[test]
    fn a_file_is_kept_when_its_bounds_overlap_the_filters() {
        let f = file((100, 200), ("B", "D"));
        let b = |filters: &[Expr]| f.may_match(&Bounds::of(filters));
        assert!(b(&[]));
        assert!(b(&[col("timestamp").gt_eq(ts(200))]));
        // Strict bounds are widened to inclusive ones: never too narrow.
        assert!(b(&[col("timestamp").gt(ts(200))]));
        assert!(!b(&[col("timestamp").gt_eq(ts(201))]));
        assert!(b(&[col("timestamp").lt_eq(ts(100))]));
        assert!(!b(&[col("timestamp").lt(ts(99))]));
        assert!(b(&[col("symbol").eq(lit("C"))]));
        assert!(b(&[col("symbol").eq(lit("D"))]));
        assert!(!b(&[col("symbol").eq(lit("E"))]));
        assert!(b(&[col("symbol").in_list(vec![lit("A"), lit("B")], false)]));
        // Unusable filters never prune.
        assert!(b(&[col("symbol").eq(lit("E")).or(col("price").gt(lit(1)))]));
        assert!(b(&[col("exchange").eq(lit("X"))]), "no exchange bounds");
        let no_bounds = IndexedFile {
            timestamp: None,
            symbol: None,
            ..f.clone()
        };
        assert!(no_bounds.may_match(&Bounds::of(&[
            col("symbol").eq(lit("Z")),
            col("timestamp").lt(ts(0))
        ])));
    }

    fn trade(i: i64, symbol: &str, t: i64) -> TradeV2 {
        TradeV2::builder("X", symbol, &i.to_string(), t)
            .price(Dec8::from_unscaled(100).unwrap_or_default())
            .quantity(Dec8::from_unscaled(1).unwrap_or_default())
            .build()
    }

    /// The index, extended commit by commit, plans what a fresh one plans
    /// and keeps every file Iceberg's own planner keeps.
    #[tokio::test]
    async fn the_index_extended_by_commits_keeps_what_iceberg_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let (_, catalog, _, ident, schema) = lake::test_lake(dir.path()).await;
        let planner = Planner::default();
        let hour = 3_600_000_000i64;
        let day0 = 1_700_000_000_000_000i64 - 1_700_000_000_000_000i64 % (24 * hour);
        let symbols = ["AAA", "BBB", "CCC"];
        let filters: Vec<Vec<Expr>> = vec![
            vec![],
            vec![col("symbol").eq(lit("BBB"))],
            vec![
                col("symbol").eq(lit("AAA")),
                col("timestamp").gt_eq(ts(day0 + 5 * hour)),
            ],
            vec![
                col("timestamp").gt_eq(ts(day0 + 20 * hour)),
                col("timestamp").lt(ts(day0 + 30 * hour)),
            ],
        ];
        for c in 0..12i64 {
            // Each commit one symbol, an hour apart, crossing a day.
            let symbol = symbols[(c % 3) as usize];
            let rows: Vec<TradeV2> = (0..5)
                .map(|k| trade(c * 10 + k, symbol, day0 + c * 3 * hour + k * 1000))
                .collect();
            let batch = lake::batch::trades_batch(&schema, &rows).unwrap();
            let mut offsets = commit::KafkaOffsets::default();
            offsets.set("t", 0, c + 1);
            commit::append(catalog.as_ref(), &ident, Some(&batch), &offsets, 1 << 20)
                .await
                .unwrap();
            let table = catalog.load_table(&ident).await.unwrap();
            let id = table.metadata().current_snapshot().unwrap().snapshot_id();
            if c % 2 == 0 {
                planner.prepare(&table).await.unwrap();
            }
            for f in &filters {
                let paths = |files: Option<Vec<PlannedFile>>| {
                    let mut p: Vec<String> =
                        files.unwrap().iter().map(|f| f.path.to_string()).collect();
                    p.sort();
                    p
                };
                let ours = paths(planner.plan(&table, id, f).await.unwrap());
                let fresh = paths(Planner::default().plan(&table, id, f).await.unwrap());
                assert_eq!(ours, fresh, "commit {c}, filters {f:?}");
                let mut scan = table.scan().snapshot_id(id).select_all();
                if let Some(p) = iceberg_datafusion::physical_plan::convert_filters_to_predicate(f)
                {
                    scan = scan.with_filter(p);
                }
                let iceberg: Vec<String> = scan
                    .build()
                    .unwrap()
                    .plan_files()
                    .await
                    .unwrap()
                    .map_ok(|t| t.data_file_path)
                    .try_collect()
                    .await
                    .unwrap();
                for p in &iceberg {
                    assert!(ours.contains(p), "commit {c}, filters {f:?}: {p} pruned");
                }
            }
        }
        let table = catalog.load_table(&ident).await.unwrap();
        let id = table.metadata().current_snapshot().unwrap().snapshot_id();
        let all = planner.plan(&table, id, &[]).await.unwrap().unwrap();
        assert_eq!(all.len(), 12, "one file per commit");
        let bbb = planner
            .plan(&table, id, &[col("symbol").eq(lit("BBB"))])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            bbb.len(),
            4,
            "the symbol bounds prune the other symbols' files"
        );
    }
}
