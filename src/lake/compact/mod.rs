//! Compaction: the small files of closed time ranges rewritten into files
//! of `writer.target_file_size_bytes`, sorted, and swapped in by one
//! atomic `replace` commit that carries the recorded Kafka offsets forward.
//!
//! A writer commits one small file per partition every
//! `writer.max_age_ms`, and one manifest with it; every scan plans from
//! all manifests and opens every file its filters do not prune. A file is
//! a candidate when it is smaller than half the target and the snapshot
//! that added it is older than `maintenance.compact_min_age` (the range
//! it covers is closed: the writers have moved on). Per partition, at
//! least `maintenance.compact_min_files` such files are rewritten, a
//! target's worth at a time, sorted by the table's sort columns.
//!
//! The commit: iceberg 0.10 has no rewrite action, and the parts a new
//! kind of commit needs in it (`TransactionAction`, `TableCommit`'s
//! builder) are crate-private. So the new snapshot is built with its
//! public spec types: one manifest per partition holding every live file
//! (EXISTING, with their sequence numbers), the replaced ones (DELETED)
//! and the new ones (ADDED), a manifest list, a `replace` snapshot with
//! the offsets of the snapshot it replaces, and the next metadata file.
//! Then the catalog's pointer is swapped with the same compare-and-set the
//! SQL catalog's own `update_table` runs, so a writer's append that landed
//! meanwhile makes the swap fail. On a REST catalog no metadata file is
//! written: the snapshot goes to the server as the commit's updates, with
//! `main` still at the base snapshot as its requirement, and the server
//! refuses it the same way (`rest_commit`).
//!
//! On a conflict, when only appends landed since the base (a writer's
//! commits, the usual case), the commit is rebased: its manifests stay,
//! and a manifest list holding them and the appends' manifests, and the
//! next metadata file, are written on the new snapshot. Its added files
//! carry no sequence number of their own (they inherit the snapshot's,
//! assigned in the list), which is what lets the manifests be reused. A
//! retry is then a few small writes whatever the table's size; staging
//! again from scratch reads every manifest, and on a table of many days
//! lost every race to a writer committing more often than that takes.
//! After anything else (a compaction, a delete) it is staged again on the
//! new snapshot, and if a file it replaces is gone, nothing is committed.
//! Neither ever rewrites the data, and an append is never lost.
//!
//! Merging the manifests is part of it: a partition compacted, or spread
//! over several manifests, gets one of its own; a manifest holding only
//! partitions that are neither is carried as it is. After a compaction a
//! scan reads one manifest per partition, and a run writes the manifests
//! of the partitions that changed, not of every day in the table.
//!
//! The replaced files stay readable by the older snapshots (time travel)
//! until those expire (`maintain`), which then deletes them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::SchemaRef;
use iceberg::io::FileIO;
use iceberg::spec::{DataFile, ManifestEntry, ManifestFile, Operation, Snapshot};
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};
use serde::Serialize;

use super::LakeError;
use super::commit::{manifests_with_entries, read_data_file, write_data_files};

mod commits;
mod stage;

pub use commits::{CatalogDb, Commits};
use stage::{rebase, stage_as};

/// Swaps a commit tries, each after rebasing (or staging again) on the
/// commit that won the last one, before the run gives up.
const MAX_ATTEMPTS: usize = 8;

/// What to compact.
#[derive(Debug, Clone)]
pub struct CompactPolicy {
    /// Size of the files written (`writer.target_file_size_bytes`); files
    /// under half of it are small.
    pub target_file_size: usize,
    /// Fewest small files of one partition worth a rewrite.
    pub min_files: usize,
    /// Files added more recently than this are left alone.
    pub min_age: Duration,
    /// Columns the rewritten rows are sorted by.
    pub sort: Vec<String>,
    /// Rows that may be merged first: the minute bars' partial rows of one
    /// minute become one (`bars::merge_partials`).
    pub merge: Option<Merge>,
}

/// Merges the rows of the files being replaced (all of them, read whole),
/// given the table's Arrow schema, into the rows written instead.
pub type Merge = fn(&RecordBatch, &SchemaRef) -> Result<RecordBatch, LakeError>;

/// What one compaction of one table did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CompactReport {
    pub table: String,
    /// Partitions with files rewritten.
    pub partitions: usize,
    pub files_replaced: usize,
    pub files_written: usize,
    pub rows: u64,
    pub bytes_replaced: u64,
    pub bytes_written: u64,
    /// Manifests of the table's current snapshot before and after.
    pub manifests_before: usize,
    pub manifests_after: usize,
    /// The `replace` snapshot, if one was committed.
    pub snapshot_id: Option<i64>,
    /// Commit attempts (more than one: a writer's commit won a race).
    pub attempts: usize,
    pub duration_ms: u64,
}

/// Compacts `ident` by `policy`.
pub async fn compact<'a>(
    catalog: &dyn Catalog,
    db: impl Into<Commits<'a>>,
    ident: &TableIdent,
    policy: &CompactPolicy,
) -> Result<CompactReport, LakeError> {
    let started = Instant::now();
    let table = catalog.load_table(ident).await?;
    // Read once: the plan and the first stage both work from it.
    let loaded = current_manifests(&table).await?;
    let mut report = CompactReport {
        table: ident.to_string(),
        manifests_before: loaded.len(),
        ..CompactReport::default()
    };
    let chunks = plan(&table, loaded.iter().flat_map(|(_, live)| live), policy);
    if chunks.is_empty() {
        report.manifests_after = report.manifests_before;
        report.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }
    let mut replaced = HashSet::new();
    let mut added = Vec::new();
    let mut partitions = HashSet::new();
    for chunk in &chunks {
        let files = rewrite(&table, chunk, policy).await?;
        for e in chunk {
            replaced.insert(e.data_file.file_path().to_string());
            report.bytes_replaced += e.data_file.file_size_in_bytes();
            report.rows += e.data_file.record_count();
            partitions.insert(partition_key(e));
        }
        report.bytes_written += files.iter().map(|f| f.file_size_in_bytes()).sum::<u64>();
        added.extend(files);
    }
    report.partitions = partitions.len();
    report.files_replaced = replaced.len();
    report.files_written = added.len();

    let io = table.file_io().clone();
    match swap_in(
        catalog,
        db.into(),
        ident,
        (table, loaded),
        &replaced,
        &added,
        Operation::Replace,
    )
    .await?
    {
        Swapped::Committed {
            snapshot_id,
            manifests,
            attempts,
        } => {
            report.attempts = attempts;
            report.snapshot_id = Some(snapshot_id);
            report.manifests_after = manifests;
            report.duration_ms = started.elapsed().as_millis() as u64;
            Ok(report)
        }
        lost => {
            // Nothing references the rewritten files.
            discard_paths(&io, added.iter().map(|f| f.file_path().to_string())).await;
            Err(LakeError::Catalog(match lost {
                Swapped::Changed => format!(
                    "{ident}: the files to replace changed under the compaction; nothing committed"
                ),
                _ => format!(
                    "{ident}: writers committed first {MAX_ATTEMPTS} times in a row; compaction gave up this run"
                ),
            }))
        }
    }
}

/// What dropping old partitions did to one table.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RetireReport {
    pub table: String,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    /// The `delete` snapshot, if one was committed.
    pub snapshot_id: Option<i64>,
}

/// Drops from `ident` the data files of day partitions more than
/// `retention_days` days before today (the first partition field, a day
/// transform), in one `delete` commit swapped in like a compaction's. The
/// files themselves go when the snapshots that still read them expire.
pub async fn retire<'a>(
    catalog: &dyn Catalog,
    db: impl Into<Commits<'a>>,
    ident: &TableIdent,
    retention_days: u32,
) -> Result<RetireReport, LakeError> {
    let today = chrono::Utc::now().timestamp().div_euclid(86_400);
    let first_kept = today - i64::from(retention_days);
    let mut report = RetireReport {
        table: ident.to_string(),
        ..RetireReport::default()
    };
    let table = catalog.load_table(ident).await?;
    let loaded = current_manifests(&table).await?;
    let old: Vec<ManifestEntry> = loaded
        .iter()
        .flat_map(|(_, live)| live)
        .filter(|e| day_of(e).is_some_and(|d| d < first_kept))
        .cloned()
        .collect();
    if old.is_empty() {
        return Ok(report);
    }
    let gone: HashSet<String> = old
        .iter()
        .map(|e| e.data_file.file_path().to_string())
        .collect();
    match swap_in(
        catalog,
        db.into(),
        ident,
        (table, loaded),
        &gone,
        &[],
        Operation::Delete,
    )
    .await?
    {
        Swapped::Committed { snapshot_id, .. } => {
            report.files = old.len();
            report.rows = old.iter().map(|e| e.data_file.record_count()).sum();
            report.bytes = old.iter().map(|e| e.data_file.file_size_in_bytes()).sum();
            report.snapshot_id = Some(snapshot_id);
            Ok(report)
        }
        Swapped::Changed => Err(LakeError::Catalog(format!(
            "{ident}: the old partitions changed under the delete; they stay until the next run"
        ))),
        Swapped::GaveUp => Err(LakeError::Catalog(format!(
            "{ident}: writers committed first {MAX_ATTEMPTS} times in a row; old partitions stay until the next run"
        ))),
    }
}

/// The day (since the Unix epoch) of an entry's partition, when its first
/// partition field is a day.
fn day_of(e: &ManifestEntry) -> Option<i64> {
    match e
        .data_file
        .partition()
        .fields()
        .first()?
        .as_ref()?
        .as_primitive_literal()?
    {
        iceberg::spec::PrimitiveLiteral::Int(d) => Some(i64::from(d)),
        _ => None,
    }
}

fn partition_key(e: &ManifestEntry) -> String {
    format!("{:?}", e.data_file.partition())
}

/// The chunks to rewrite: per partition, the small files old enough, in
/// the order they were added, a target's worth at a time; a chunk of fewer
/// than `min_files` is left for a later run.
fn plan<'a>(
    table: &Table,
    entries: impl IntoIterator<Item = &'a ManifestEntry>,
    policy: &CompactPolicy,
) -> Vec<Vec<ManifestEntry>> {
    let meta = table.metadata();
    let cutoff = chrono::Utc::now().timestamp_millis()
        - i64::try_from(policy.min_age.as_millis()).unwrap_or(i64::MAX);
    let added_at: HashMap<i64, i64> = meta
        .snapshots()
        .map(|s| (s.snapshot_id(), s.timestamp_ms()))
        .collect();
    let small = (policy.target_file_size / 2) as u64;
    let mut groups: BTreeMap<String, Vec<&ManifestEntry>> = BTreeMap::new();
    for e in entries {
        // A snapshot already expired is older than any cutoff.
        let old = e
            .snapshot_id
            .and_then(|id| added_at.get(&id))
            .is_none_or(|t| *t < cutoff);
        if old && e.data_file.file_size_in_bytes() < small {
            groups.entry(partition_key(e)).or_default().push(e);
        }
    }
    let mut chunks = Vec::new();
    for (_, mut files) in groups {
        files.sort_by_key(|e| e.sequence_number);
        let mut chunk: Vec<ManifestEntry> = Vec::new();
        let mut bytes = 0u64;
        for e in files {
            chunk.push(e.clone());
            bytes += e.data_file.file_size_in_bytes();
            if bytes >= policy.target_file_size as u64 {
                if chunk.len() >= policy.min_files {
                    chunks.push(std::mem::take(&mut chunk));
                } else {
                    chunk.clear();
                }
                bytes = 0;
            }
        }
        if chunk.len() >= policy.min_files {
            chunks.push(chunk);
        }
    }
    chunks
}

/// Reads a chunk's files, sorts their rows and writes them as new files.
async fn rewrite(
    table: &Table,
    chunk: &[ManifestEntry],
    policy: &CompactPolicy,
) -> Result<Vec<DataFile>, LakeError> {
    let mut batches = Vec::new();
    for e in chunk {
        batches.extend(read_data_file(table, e.data_file.file_path()).await?);
    }
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let all = concat_batches(&first.schema(), &batches)?;
    let want: u64 = chunk.iter().map(|e| e.data_file.record_count()).sum();
    if all.num_rows() as u64 != want {
        return Err(LakeError::Parquet(format!(
            "read {} rows from files whose manifests say {want}",
            all.num_rows()
        )));
    }
    let all = match policy.merge {
        Some(merge) => merge(
            &all,
            &super::batch::arrow_schema(table.metadata().current_schema())?,
        )?,
        None => all,
    };
    let sorted = sort(&all, &policy.sort)?;
    write_data_files(table, &sorted, policy.target_file_size).await
}

fn sort(batch: &RecordBatch, columns: &[String]) -> Result<RecordBatch, LakeError> {
    let keys = columns
        .iter()
        .filter_map(|c| batch.column_by_name(c))
        .map(|values| SortColumn {
            values: values.clone(),
            options: None,
        })
        .collect::<Vec<_>>();
    if keys.is_empty() {
        return Ok(batch.clone());
    }
    let order = lexsort_to_indices(&keys, None)?;
    Ok(take_record_batch(batch, &order)?)
}

/// A replace (or delete) commit written and not yet swapped in.
struct Staged {
    snapshot_id: i64,
    operation: Operation,
    /// The snapshot it was first built on, and the manifests of that
    /// snapshot's list: whatever a later snapshot lists beyond those, a
    /// commit landed after it, and a rebase takes over.
    base_snapshot_id: i64,
    base_manifests: HashSet<String>,
    /// The base's manifests kept as they are: their partitions are neither
    /// touched by this commit nor spread over other manifests.
    carried: Vec<ManifestFile>,
    /// The manifests this commit wrote, one per partition it rewrote. The
    /// files it adds carry no sequence number of their own: they inherit
    /// the snapshot's, assigned in the manifest list, so a rebase reuses
    /// these manifests under a later sequence number.
    own: Vec<ManifestFile>,
    /// What it removes and adds, as snapshot summary properties (without
    /// the running totals, which depend on the base).
    changes: HashMap<String, String>,
    /// Manifests in the snapshot's list.
    manifests: usize,
    /// The metadata file to swap in (SQL catalogs).
    location: String,
    /// The snapshot sealed: what a REST catalog is sent.
    snapshot: Option<Snapshot>,
    /// Its manifest list and metadata file: written again by a rebase, and
    /// deleted when their swap loses.
    top: Vec<String>,
}

impl Staged {
    /// Every file it wrote.
    fn written(&self) -> impl Iterator<Item = String> + '_ {
        self.own
            .iter()
            .map(|m| m.manifest_path.clone())
            .chain(self.top.iter().cloned())
    }
}

/// How swapping a staged commit in ended.
enum Swapped {
    Committed {
        snapshot_id: i64,
        /// Manifests in its list.
        manifests: usize,
        attempts: usize,
    },
    /// Files it was to remove are no longer live: another commit replaced
    /// or deleted them. Nothing was committed.
    Changed,
    /// Writers committed first every time.
    GaveUp,
}

/// Stages a `operation` commit of `replaced` and `added` on `table` and
/// swaps it in. When another commit lands first and everything committed
/// since the base is an append, the staged manifests stay and only a new
/// manifest list (with the appends' manifests) and metadata file are
/// written: a few small files, not one per partition, so the window for
/// the next writer's commit is short however large the table. Otherwise it
/// is staged again on the new snapshot.
async fn swap_in(
    catalog: &dyn Catalog,
    db: Commits<'_>,
    ident: &TableIdent,
    (mut table, loaded): (Table, Loaded),
    replaced: &HashSet<String>,
    added: &[DataFile],
    operation: Operation,
) -> Result<Swapped, LakeError> {
    let metadata = db.writes_metadata();
    let first = stage_as(&table, loaded, replaced, added, operation.clone(), metadata).await?;
    let Some(mut staged) = first else {
        return Ok(Swapped::Changed);
    };
    for attempt in 1..=MAX_ATTEMPTS {
        if db.commit(ident, &table, &staged).await? {
            return Ok(Swapped::Committed {
                snapshot_id: staged.snapshot_id,
                manifests: staged.manifests,
                attempts: attempt,
            });
        }
        // Another commit landed first: build again on its snapshot.
        discard_paths(table.file_io(), staged.top.drain(..)).await;
        table = catalog.load_table(ident).await?;
        if rebase(&table, &mut staged, replaced.len(), added, metadata).await? {
            continue;
        }
        discard_paths(table.file_io(), staged.written()).await;
        let loaded = current_manifests(&table).await?;
        match stage_as(&table, loaded, replaced, added, operation.clone(), metadata).await? {
            Some(again) => staged = again,
            None => return Ok(Swapped::Changed),
        }
    }
    discard_paths(table.file_io(), staged.written()).await;
    Ok(Swapped::GaveUp)
}

/// Writes the manifests, manifest list and metadata file of a `replace`
/// snapshot on top of `table`'s current one.
#[cfg(test)]
async fn stage(
    table: &Table,
    replaced: &HashSet<String>,
    added: &[DataFile],
) -> Result<Option<Staged>, LakeError> {
    let loaded = current_manifests(table).await?;
    stage_as(table, loaded, replaced, added, Operation::Replace, true).await
}

/// The data manifests of a table's current snapshot with their live
/// entries (none without a snapshot).
type Loaded = Vec<(ManifestFile, Vec<ManifestEntry>)>;

async fn current_manifests(table: &Table) -> Result<Loaded, LakeError> {
    match table.metadata().current_snapshot() {
        Some(s) => manifests_with_entries(table, s).await,
        None => Ok(Vec::new()),
    }
}

async fn discard_paths(io: &FileIO, paths: impl Iterator<Item = String>) {
    for p in paths {
        if let Err(e) = io.delete(&p).await {
            tracing::warn!(file = %p, error = %e, "compaction: could not delete a file it wrote");
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;
    use crate::config::Config;
    use crate::lake::commit::current_offsets;
    use crate::lake::commit::{KafkaOffsets, append, live_entries};
    use crate::lake::{self, TableKind};
    use crate::model::TradeV2;

    fn offsets(next: i64) -> KafkaOffsets {
        crate::lake::commit::one_partition(next)
    }

    fn policy() -> CompactPolicy {
        CompactPolicy {
            target_file_size: 1 << 20,
            min_files: 4,
            min_age: Duration::ZERO,
            sort: vec!["symbol".into(), "timestamp".into()],
            merge: None,
        }
    }

    /// A column of `b` as text, null as `None`.
    fn texts(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
        use arrow::array::Array;
        let c = arrow::compute::cast(
            b.column_by_name(name).unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let c = c
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        (0..c.len())
            .map(|i| (!c.is_null(i)).then(|| c.value(i).to_string()))
            .collect()
    }

    /// (symbol, trade id) of every row, in file order.
    async fn rows(catalog: &dyn Catalog, ident: &TableIdent) -> Vec<(String, String)> {
        let table = catalog.load_table(ident).await.unwrap();
        let stream = table.scan().build().unwrap().to_arrow().await.unwrap();
        let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
        let mut out = Vec::new();
        for b in batches {
            let pairs = texts(&b, "symbol").into_iter().zip(texts(&b, "trade_id"));
            out.extend(pairs.map(|(s, t)| (s.unwrap(), t.unwrap())));
        }
        out
    }

    async fn commit_trades(cfg: &Config, catalog: &dyn Catalog, n: i64, from: i64) {
        let ident = lake::table_ident(cfg, TableKind::Trades);
        let table = catalog.load_table(&ident).await.unwrap();
        let schema = lake::batch::arrow_schema(table.metadata().current_schema()).unwrap();
        for i in from..from + n {
            // Alternate symbols, so sorting has work to do.
            let sym = if i % 2 == 0 { "ETHUSDT" } else { "BTCUSDT" };
            let t = [TradeV2::builder("X", sym, &i.to_string(), 1_700_000_000_000_000 + i).build()];
            let batch = lake::batch::trades_batch(&schema, &t).unwrap();
            append(catalog, &ident, Some(&batch), &offsets(i + 1), 1 << 20)
                .await
                .unwrap();
        }
    }

    /// A table made before `instrument` existed: this build adds the column
    /// through Iceberg's schema update, old rows read null and new ones
    /// their instrument, through Iceberg's reader, the fast path and a
    /// compaction that merges files of both schemas.
    #[tokio::test]
    async fn a_table_made_before_instrument_gains_it_and_old_rows_read_null() {
        use datafusion::prelude::SessionContext;

        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::default().under(dir.path());
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        let ident = lake::table_ident(&cfg, TableKind::Trades);
        let old = lake::schema::trades_schema_v1().unwrap();
        let spec = lake::schema::trades_partition_spec().unwrap();
        lake::ensure(catalog.as_ref(), &ident, old, spec)
            .await
            .unwrap();
        commit_trades(&cfg, catalog.as_ref(), 6, 0).await;
        let before = catalog.load_table(&ident).await.unwrap();
        let old_offsets = crate::lake::commit::current_offsets(&before)
            .unwrap()
            .unwrap()
            .1;

        let table = lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
            .await
            .unwrap();
        assert_eq!(table.metadata().schemas_iter().count(), 2);
        // The current snapshot is one of the new schema, with the same
        // offsets: Iceberg's reader selects the new column at once.
        let current = table.metadata().current_snapshot().unwrap();
        assert_eq!(
            current.schema_id(),
            Some(table.metadata().current_schema_id())
        );
        assert_eq!(
            crate::lake::commit::current_offsets(&table)
                .unwrap()
                .unwrap()
                .1,
            old_offsets
        );
        let selected = table
            .scan()
            .select(["trade_id", "instrument"])
            .build()
            .unwrap()
            .to_arrow()
            .await
            .unwrap()
            .try_collect::<Vec<RecordBatch>>()
            .await
            .unwrap();
        assert_eq!(selected.iter().map(|b| b.num_rows()).sum::<usize>(), 6);
        let added = table
            .metadata()
            .current_schema()
            .field_by_name("instrument");
        assert!(
            added.is_some_and(|f| !f.required && f.id == 19),
            "{added:?}"
        );
        // opening it again changes nothing
        let again = lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
            .await
            .unwrap();
        assert_eq!(again.metadata().schemas_iter().count(), 2);

        let schema = lake::batch::arrow_schema(table.metadata().current_schema()).unwrap();
        for i in 6..12i64 {
            let t = [
                TradeV2::builder("X", "BTCUSDT", &i.to_string(), 1_700_000_000_000_000 + i)
                    .instrument(Some("BTC-USDT"))
                    .build(),
            ];
            let batch = lake::batch::trades_batch(&schema, &t).unwrap();
            append(
                catalog.as_ref(),
                &ident,
                Some(&batch),
                &offsets(i + 1),
                1 << 20,
            )
            .await
            .unwrap();
        }

        // (trade id, instrument) of every row, sorted.
        let instruments = |batches: Vec<RecordBatch>| {
            let mut out = Vec::new();
            for b in batches {
                let pairs = texts(&b, "trade_id")
                    .into_iter()
                    .zip(texts(&b, "instrument"));
                out.extend(pairs.map(|(t, i)| (t.unwrap(), i)));
            }
            out.sort();
            out
        };
        let want: Vec<(String, Option<String>)> = {
            let mut w: Vec<_> = (0..12i64)
                .map(|i| (format!("X-{i}"), (i >= 6).then(|| "BTC-USDT".to_string())))
                .collect();
            w.sort();
            w
        };
        let iceberg_rows = |table: iceberg::table::Table| async move {
            let stream = table.scan().build().unwrap().to_arrow().await.unwrap();
            stream.try_collect::<Vec<RecordBatch>>().await.unwrap()
        };
        let table = catalog.load_table(&ident).await.unwrap();
        assert_eq!(instruments(iceberg_rows(table.clone()).await), want);

        // The fast path reads both schemas' files as the current schema.
        let snapshot = table.metadata().current_snapshot().unwrap().snapshot_id();
        let planner = crate::lake::files::Planner::default();
        let files = crate::lake::scan::local_files(&planner, &table, snapshot, &[])
            .await
            .unwrap()
            .expect("a table that only gained columns keeps the fast path");
        let ctx = SessionContext::new();
        let plan = crate::lake::scan::files_plan(&ctx.state(), &files, &schema, None, None)
            .await
            .unwrap();
        let fast = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .unwrap();
        assert_eq!(instruments(fast), want);

        // Compaction merges old files (no instrument) with new ones.
        let db = CatalogDb::open(&cfg).await.unwrap().unwrap();
        let r = compact(catalog.as_ref(), &db, &ident, &policy())
            .await
            .unwrap();
        assert_eq!(r.files_replaced, 12, "{r:?}");
        let table = catalog.load_table(&ident).await.unwrap();
        assert_eq!(instruments(iceberg_rows(table).await), want);
    }

    /// Twelve one-row commits become one sorted file in one `replace`
    /// snapshot that carries the offsets; a writer's append that wins the
    /// race is kept; expiry then deletes what only old snapshots held.
    #[tokio::test]
    async fn small_files_become_one_sorted_file_and_no_append_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, catalog, _, ident, _) = lake::test_lake(dir.path()).await;
        let db = CatalogDb::open(&cfg).await.unwrap().unwrap();
        commit_trades(&cfg, catalog.as_ref(), 12, 0).await;
        let mut before = rows(catalog.as_ref(), &ident).await;
        before.sort();

        // Too few files for the policy: nothing happens.
        let r = compact(
            catalog.as_ref(),
            &db,
            &ident,
            &CompactPolicy {
                min_files: 13,
                ..policy()
            },
        )
        .await
        .unwrap();
        assert_eq!((r.files_replaced, r.snapshot_id), (0, None));

        let r = compact(catalog.as_ref(), &db, &ident, &policy())
            .await
            .unwrap();
        assert_eq!(
            (r.files_replaced, r.files_written, r.rows),
            (12, 1, 12),
            "{r:?}"
        );
        assert_eq!(
            (r.manifests_before, r.manifests_after, r.attempts),
            (12, 1, 1)
        );
        let table = catalog.load_table(&ident).await.unwrap();
        let snap = table.metadata().current_snapshot().unwrap();
        assert_eq!(Some(snap.snapshot_id()), r.snapshot_id);
        assert_eq!(snap.summary().operation, Operation::Replace);
        // And so readers see it: the metadata table through SQL.
        let ctx = crate::query::session::session(&cfg).await.unwrap();
        let ops = crate::query::session::run_sql(&ctx, "select * from market.\"trades$snapshots\"")
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&ops)
            .unwrap()
            .to_string();
        assert!(text.contains("| replace"), "{text}");
        assert_eq!(
            snap.summary().additional_properties.get("total-data-files"),
            Some(&"1".to_string())
        );
        assert_eq!(
            snap.summary().additional_properties.get("total-records"),
            Some(&"12".to_string())
        );
        assert_eq!(current_offsets(&table).unwrap().unwrap().1, offsets(12));
        let after = rows(catalog.as_ref(), &ident).await;
        let mut sorted = after.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(after, sorted, "the new file is sorted by symbol");
        let mut after_all = after.clone();
        after_all.sort();
        assert_eq!(after_all, before, "the same rows");

        // A replace commit staged on this snapshot, then a writer's append
        // lands first: the swap must fail, and a new run keeps the append.
        commit_trades(&cfg, catalog.as_ref(), 4, 100).await;
        let table = catalog.load_table(&ident).await.unwrap();
        let (added, replaced) = rewrite_the_one_chunk(&table).await;
        let staged = stage(&table, &replaced, &added).await.unwrap().unwrap();
        commit_trades(&cfg, catalog.as_ref(), 1, 200).await;
        let old = table.metadata_location().unwrap();
        assert!(
            !db.swap(&ident, old, &staged.location).await.unwrap(),
            "a stale swap must lose"
        );
        discard_paths(table.file_io(), staged.written()).await;
        discard_paths(
            table.file_io(),
            added.iter().map(|f| f.file_path().to_string()),
        )
        .await;
        let r = compact(catalog.as_ref(), &db, &ident, &policy())
            .await
            .unwrap();
        assert_eq!(r.files_replaced, 6, "{r:?}");
        let got = rows(catalog.as_ref(), &ident).await;
        assert_eq!(got.len(), 17, "every append is still there");
        let ids: HashSet<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(ids.len(), 17);
        assert!(ids.contains("X-200"));
        let table = catalog.load_table(&ident).await.unwrap();
        assert_eq!(current_offsets(&table).unwrap().unwrap().1, offsets(201));

        // Expiry deletes the replaced files once no snapshot holds them.
        let files_before = count_parquet(dir.path());
        let e = crate::lake::maintain::expire(
            catalog.as_ref(),
            &ident,
            Duration::ZERO,
            Duration::ZERO,
            None,
        )
        .await
        .unwrap();
        assert_eq!(e.snapshots_after, 1, "{e:?}");
        // The 12 first files, the first compaction's, the 4 and the 1
        // appended after it: all replaced by the second compaction.
        assert_eq!(e.data_files_deleted, 18, "{e:?}");
        assert_eq!(count_parquet(dir.path()), files_before - 18);
        assert_eq!(count_parquet(dir.path()), 1);
        assert!(e.manifests_deleted > 0, "{e:?}");
        assert_eq!(rows(catalog.as_ref(), &ident).await.len(), 17);
    }

    /// Partitions older than the retention go in one `delete` commit that
    /// keeps the offsets; today's rows stay.
    #[tokio::test]
    async fn partitions_past_retention_are_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, catalog, _, ident, schema) = lake::test_lake(dir.path()).await;
        let db = CatalogDb::open(&cfg).await.unwrap().unwrap();
        let now = chrono::Utc::now().timestamp_micros();
        let day = 86_400_000_000i64;
        for (i, ts) in [now - 10 * day, now - 3 * day, now - 3 * day + 1, now]
            .iter()
            .enumerate()
        {
            let t = [TradeV2::builder("X", "BTCUSDT", &i.to_string(), *ts).build()];
            let batch = lake::batch::trades_batch(&schema, &t).unwrap();
            append(
                catalog.as_ref(),
                &ident,
                Some(&batch),
                &offsets(i as i64 + 1),
                1 << 20,
            )
            .await
            .unwrap();
        }
        let r = retire(catalog.as_ref(), &db, &ident, 30).await.unwrap();
        assert_eq!((r.files, r.snapshot_id), (0, None), "nothing is that old");
        let r = retire(catalog.as_ref(), &db, &ident, 2).await.unwrap();
        assert_eq!((r.files, r.rows), (3, 3), "{r:?}");
        let table = catalog.load_table(&ident).await.unwrap();
        let snap = table.metadata().current_snapshot().unwrap();
        assert_eq!(snap.summary().operation, Operation::Delete);
        assert_eq!(current_offsets(&table).unwrap().unwrap().1, offsets(4));
        let left = rows(catalog.as_ref(), &ident).await;
        assert_eq!(left, vec![("BTCUSDT".to_string(), "X-3".to_string())]);
    }

    /// Plans `table` by [`policy`], which must give one chunk, and writes
    /// it: the files written and the paths of those they replace.
    async fn rewrite_the_one_chunk(table: &Table) -> (Vec<DataFile>, HashSet<String>) {
        let entries = live_entries(table).await.unwrap();
        let chunks = plan(table, &entries, &policy());
        assert_eq!(chunks.len(), 1);
        let added = rewrite(table, &chunks[0], &policy()).await.unwrap();
        let replaced = chunks[0]
            .iter()
            .map(|e| e.data_file.file_path().to_string())
            .collect();
        (added, replaced)
    }

    /// Appends `rounds` batches of one trade per day over `days` days,
    /// ending today: `days` partitions, each spread over `rounds`
    /// manifests.
    async fn many_days(catalog: &dyn Catalog, ident: &TableIdent, days: i64, rounds: i64) {
        let table = catalog.load_table(ident).await.unwrap();
        let schema = lake::batch::arrow_schema(table.metadata().current_schema()).unwrap();
        let now = chrono::Utc::now().timestamp_micros();
        let day = 86_400_000_000i64;
        for r in 0..rounds {
            let t: Vec<TradeV2> = (0..days)
                .map(|d| {
                    TradeV2::builder("X", "BTCUSDT", &format!("{r}-{d}"), now - d * day).build()
                })
                .collect();
            let batch = lake::batch::trades_batch(&schema, &t).unwrap();
            append(catalog, ident, Some(&batch), &offsets(r + 1), 1 << 20)
                .await
                .unwrap();
        }
    }

    /// The manifests of the current snapshot's list: (written by it,
    /// carried from older snapshots).
    async fn own_and_carried(catalog: &dyn Catalog, ident: &TableIdent) -> (usize, usize) {
        let table = catalog.load_table(ident).await.unwrap();
        let snap = table.metadata().current_snapshot().unwrap();
        let list = table.manifest_list_reader(snap).load().await.unwrap();
        let own = list
            .entries()
            .iter()
            .filter(|m| m.added_snapshot_id == snap.snapshot_id())
            .count();
        (own, list.entries().len() - own)
    }

    /// A compaction rewrites the manifests of the partitions it touches and
    /// of those spread over several manifests; a partition already in one
    /// manifest of its own keeps it. A table of many days then costs the
    /// manifests of the days that changed, not one per day.
    #[tokio::test]
    async fn only_the_manifests_of_changed_partitions_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, catalog, _, ident, _) = lake::test_lake(dir.path()).await;
        let db = CatalogDb::open(&cfg).await.unwrap().unwrap();
        let days = 40;
        many_days(catalog.as_ref(), &ident, days, 3).await;
        commit_trades(&cfg, catalog.as_ref(), 8, 1000).await;
        // `days` partitions of three files each (too few to compact), each
        // spread over the three rounds' manifests, and the one partition of
        // `commit_trades`' trades (of November 2023): all merged, one
        // manifest per partition, the 2023 files compacted.
        let partitions = days as usize + 1;
        let r = compact(catalog.as_ref(), &db, &ident, &policy())
            .await
            .unwrap();
        assert_eq!((r.files_replaced, r.files_written), (8, 1), "{r:?}");
        assert_eq!(r.manifests_before, 3 + 8);
        assert_eq!(r.manifests_after, partitions, "{r:?}");
        assert_eq!(
            own_and_carried(catalog.as_ref(), &ident).await,
            (partitions, 0)
        );

        // Later appends touch the 2023 partition alone.
        commit_trades(&cfg, catalog.as_ref(), 8, 2000).await;
        let r = compact(catalog.as_ref(), &db, &ident, &policy())
            .await
            .unwrap();
        assert_eq!((r.files_replaced, r.files_written), (8 + 1, 1), "{r:?}");
        assert_eq!(r.manifests_after, partitions, "{r:?}");
        assert_eq!(
            own_and_carried(catalog.as_ref(), &ident).await,
            (1, days as usize),
            "only the compacted partition's manifest is new"
        );
        let got = rows(catalog.as_ref(), &ident).await;
        assert_eq!(got.len(), (3 * days + 16) as usize);
        let ids: HashSet<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(ids.len(), got.len());
        let table = catalog.load_table(&ident).await.unwrap();
        let snap = table.metadata().current_snapshot().unwrap();
        assert_eq!(
            snap.summary().additional_properties.get("total-records"),
            Some(&(3 * days + 16).to_string())
        );
        assert_eq!(
            snap.summary().additional_properties.get("total-data-files"),
            Some(&(3 * days + 1).to_string())
        );
    }

    /// A writer's append landing between staging and the swap: the staged
    /// manifests stay, and only a manifest list (with the append's
    /// manifest) and a metadata file are written again on top of it.
    #[tokio::test]
    async fn an_append_that_lands_first_is_taken_over_by_a_rebase() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, catalog, _, ident, _) = lake::test_lake(dir.path()).await;
        let db = CatalogDb::open(&cfg).await.unwrap().unwrap();
        many_days(catalog.as_ref(), &ident, 20, 1).await;
        commit_trades(&cfg, catalog.as_ref(), 6, 0).await;
        let table = catalog.load_table(&ident).await.unwrap();
        let (added, replaced) = rewrite_the_one_chunk(&table).await;
        let mut staged = stage(&table, &replaced, &added).await.unwrap().unwrap();
        let own: Vec<String> = staged.own.iter().map(|m| m.manifest_path.clone()).collect();
        assert_eq!(own.len(), 1, "one partition rewritten");
        assert_eq!(staged.carried.len(), 1, "the 20 days' manifest is kept");

        // Two appends land: the stale swap loses.
        commit_trades(&cfg, catalog.as_ref(), 2, 100).await;
        let old = table.metadata_location().unwrap().to_string();
        assert!(!db.swap(&ident, &old, &staged.location).await.unwrap());
        discard_paths(table.file_io(), staged.top.drain(..)).await;
        let table = catalog.load_table(&ident).await.unwrap();
        assert!(
            rebase(&table, &mut staged, replaced.len(), &added, true)
                .await
                .unwrap()
        );
        let same: Vec<String> = staged.own.iter().map(|m| m.manifest_path.clone()).collect();
        assert_eq!(same, own, "the manifests are not written again");
        assert_eq!(staged.top.len(), 2, "a manifest list and a metadata file");
        assert_eq!(staged.manifests, 1 + 1 + 2);
        let old = table.metadata_location().unwrap().to_string();
        assert!(db.swap(&ident, &old, &staged.location).await.unwrap());

        let table = catalog.load_table(&ident).await.unwrap();
        let snap = table.metadata().current_snapshot().unwrap();
        assert_eq!(snap.summary().operation, Operation::Replace);
        assert_eq!(current_offsets(&table).unwrap().unwrap().1, offsets(102));
        assert_eq!(
            snap.summary().additional_properties.get("total-records"),
            Some(&(20 + 6 + 2).to_string())
        );
        // The compacted file inherits the rebased snapshot's sequence
        // number, after the appends'.
        let parent = table
            .metadata()
            .snapshot_by_id(snap.parent_snapshot_id().unwrap())
            .unwrap();
        assert!(snap.sequence_number() > parent.sequence_number());
        let compacted = live_entries(&table)
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.data_file.file_path() == added[0].file_path())
            .unwrap();
        assert_eq!(compacted.sequence_number, Some(snap.sequence_number()));
        let got = rows(catalog.as_ref(), &ident).await;
        assert_eq!(got.len(), 20 + 6 + 2);
        let ids: HashSet<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(ids.len(), got.len());
        assert!(ids.contains("X-100") && ids.contains("X-101"));
    }

    /// A replace landing first is not an append: the staged commit cannot
    /// be rebased, and its files are found replaced.
    #[tokio::test]
    async fn a_replace_that_lands_first_is_not_rebased_over() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, catalog, _, ident, _) = lake::test_lake(dir.path()).await;
        let db = CatalogDb::open(&cfg).await.unwrap().unwrap();
        commit_trades(&cfg, catalog.as_ref(), 6, 0).await;
        let table = catalog.load_table(&ident).await.unwrap();
        let (added, replaced) = rewrite_the_one_chunk(&table).await;
        let mut staged = stage(&table, &replaced, &added).await.unwrap().unwrap();
        let r = compact(catalog.as_ref(), &db, &ident, &policy())
            .await
            .unwrap();
        assert_eq!(r.files_replaced, 6);
        let now = catalog.load_table(&ident).await.unwrap();
        assert!(
            !rebase(&now, &mut staged, replaced.len(), &added, true)
                .await
                .unwrap()
        );
        discard_paths(now.file_io(), staged.written()).await;
        // Staged on the table it was planned on, its swap loses, and the
        // files it would replace are gone.
        match swap_in(
            catalog.as_ref(),
            (&db).into(),
            &ident,
            (table.clone(), current_manifests(&table).await.unwrap()),
            &replaced,
            &added,
            Operation::Replace,
        )
        .await
        .unwrap()
        {
            Swapped::Changed => {}
            Swapped::Committed { .. } => panic!("replaced twice"),
            Swapped::GaveUp => panic!("gave up instead of seeing the change"),
        }
        assert_eq!(rows(catalog.as_ref(), &ident).await.len(), 6);
        // Nor can it be staged on the new snapshot.
        assert!(
            stage(&now, &replaced, &added).await.unwrap().is_none(),
            "staged with its files already replaced"
        );
    }

    /// A writer committing every few milliseconds while a table of many
    /// days is compacted: before rebasing, each attempt staged one
    /// manifest per day and lost every race to the writer. Now the
    /// compaction commits, and every append is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_commits_while_a_writer_commits_every_few_milliseconds() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, catalog, _, ident, _) = lake::test_lake(dir.path()).await;
        let db = CatalogDb::open(&cfg).await.unwrap().unwrap();
        let days = 150;
        many_days(catalog.as_ref(), &ident, days, 1).await;
        commit_trades(&cfg, catalog.as_ref(), 8, 0).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (cfg, catalog, stop) = (cfg.clone(), catalog.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    commit_trades(&cfg, catalog.as_ref(), 1, 10_000 + n).await;
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                n
            })
        };
        // Let the writer get going.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = compact(catalog.as_ref(), &db, &ident, &policy()).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let appended = writer.await.unwrap();
        let r = r.unwrap();
        assert!(r.snapshot_id.is_some(), "{r:?}");
        assert!(r.files_replaced >= 8, "{r:?}");
        eprintln!("compaction: {r:?}; {appended} appends meanwhile");
        let got = rows(catalog.as_ref(), &ident).await;
        assert_eq!(got.len(), days as usize + 8 + appended as usize);
        let ids: HashSet<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(ids.len(), got.len());
        let table = catalog.load_table(&ident).await.unwrap();
        assert_eq!(
            current_offsets(&table).unwrap().unwrap().1,
            offsets(10_000 + appended)
        );
    }

    fn count_parquet(dir: &std::path::Path) -> usize {
        walkdir::WalkDir::new(dir)
            .into_iter()
            .flatten()
            .filter(|e| !e.file_type().is_dir())
            .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
            .count()
    }
}
