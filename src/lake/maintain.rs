//! Lake maintenance: snapshot expiry, and the files that only expired
//! snapshots referenced.
//!
//! The writers commit every `writer.max_age_ms`: at 5 s that is 17,000
//! snapshots a day per table. Every snapshot stays in the table's metadata
//! file, which every reader loads whole (a planning query, a commit, the
//! query side's re-pin after each commit), and every commit writes a new
//! metadata file holding all of them: both grow without bound.
//!
//! So snapshots older than `maintenance.snapshot_retention` are expired
//! (iceberg's `expire_snapshots`), except:
//! - the current snapshot (iceberg keeps branch heads);
//! - the newest snapshot that carries the recorded Kafka offsets: the
//!   consumer's start positions and the hybrid split are read from it
//!   (`commit::current_offsets`), and a snapshot another engine wrote on
//!   top carries none. The cutoff is moved back to it, so it stays.
//!
//! Then the files nothing references any more are deleted:
//! - each expired snapshot's manifest list (one file per snapshot, never
//!   shared);
//! - metadata files that are neither the current one nor in its metadata
//!   log, and older than [`METADATA_GRACE`]: a writer's commit writes its
//!   new metadata file before the catalog points at it, and such a file
//!   must not be taken for garbage. Nor is one that names another table
//!   (`owned`): two tables given one location each keep theirs there.
//!
//! The writers only append, so every manifest and data file of an expired
//! snapshot is still referenced by the current one; compaction, which
//! replaces files, is what will free them. Expiry commits through the
//! catalog like any writer: a conflict with a concurrent append fails this
//! run (retried at the next), never the append.
//!
//! Files are listed and sized through `store`, so all of this works the
//! same on a local warehouse and on an object store.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use iceberg::spec::ManifestFile;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableIdent};
use serde::Serialize;

use super::commit::{current_offsets, load_manifests, manifest_lists};
use super::{LakeError, owned, store};

/// Metadata files younger than this are never deleted (see the module
/// docs): far longer than any commit takes.
pub const METADATA_GRACE: Duration = Duration::from_secs(600);

/// What one maintenance run did to one table.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MaintainReport {
    pub table: String,
    pub duration_ms: u64,
    pub snapshots_before: usize,
    pub snapshots_after: usize,
    pub expired: usize,
    /// The newest snapshot carrying Kafka offsets, kept whatever its age.
    pub offsets_snapshot: Option<i64>,
    pub manifest_lists_deleted: usize,
    /// Manifests and data files only expired snapshots referenced: those
    /// a compaction replaced.
    pub manifests_deleted: usize,
    pub data_files_deleted: usize,
    pub metadata_files_deleted: usize,
    /// Stale metadata files left because they name another table (which
    /// shares this table's location) or could not be read (`owned`).
    pub metadata_files_not_ours: usize,
    pub bytes_deleted: u64,
    /// Data files of the current snapshot (from its summary).
    pub data_files: u64,
    /// Size of the current metadata file, which every reader loads.
    pub metadata_bytes: u64,
    /// Old partitions dropped before the compaction (`retention_days`).
    pub retired: Option<super::compact::RetireReport>,
    /// The compaction that ran before the expiry, if any.
    pub compaction: Option<super::compact::CompactReport>,
    pub compaction_error: Option<String>,
    /// The orphan sweep after the expiry, when one was due.
    pub orphans: Option<super::orphans::SweepReport>,
    pub orphans_error: Option<String>,
}

/// Expires `ident`'s snapshots older than `retention` and deletes the
/// files only they referenced; metadata files only once older than
/// `metadata_grace` ([`METADATA_GRACE`] outside tests).
///
/// Snapshots with a sequence number past `keep_after` are kept whatever
/// their age: the minute bars have not summarized them yet (`bars`), and
/// they are how the bars find the rows they added.
pub async fn expire(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    retention: Duration,
    metadata_grace: Duration,
    keep_after: Option<i64>,
) -> Result<MaintainReport, LakeError> {
    let started = Instant::now();
    let table = catalog.load_table(ident).await?;
    let before = table.clone();
    let meta = before.metadata();
    let mut report = MaintainReport {
        table: ident.to_string(),
        snapshots_before: meta.snapshots().count(),
        ..MaintainReport::default()
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut cutoff =
        now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    // A snapshot is readable for as long as it is current, and for the
    // retention after that: keep the one that was current at the cutoff
    // (a query that pinned it just before a compaction replaced it reads
    // its files), not only those taken after it.
    if let Some(t) = meta
        .snapshots()
        .map(|s| s.timestamp_ms())
        .filter(|t| *t < cutoff)
        .max()
    {
        cutoff = t;
    }
    if let Some((id, _)) = current_offsets(&table)? {
        report.offsets_snapshot = Some(id);
    }
    // The newest snapshots carrying what readers walk back for: the Kafka
    // offsets, and what the minute bars cover (`bars`).
    let carriers = [
        report.offsets_snapshot,
        super::bars::covered(&table).map(|(id, _)| id),
    ];
    for id in carriers.into_iter().flatten() {
        if let Some(s) = meta.snapshot_by_id(id) {
            // Expiry takes snapshots strictly older than the cutoff.
            cutoff = cutoff.min(s.timestamp_ms());
        }
    }
    if let Some(seq) = keep_after
        && let Some(first) = meta
            .snapshots()
            .filter(|s| s.sequence_number() > seq)
            .map(|s| s.timestamp_ms())
            .min()
    {
        cutoff = cutoff.min(first);
    }
    let current = meta.current_snapshot_id();
    let due = meta
        .snapshots()
        .filter(|s| s.timestamp_ms() < cutoff && Some(s.snapshot_id()) != current)
        .count();
    let table = if due == 0 {
        table
    } else {
        let tx = Transaction::new(&table);
        let tx = tx
            .expire_snapshots()
            .expire_older_than_ms(cutoff)
            .retain_last(1)
            .apply(tx)?;
        tx.commit(catalog).await?
    };
    let after = table.metadata();
    let kept: HashSet<i64> = after.snapshots().map(|s| s.snapshot_id()).collect();
    let kept_lists: HashSet<&str> = after.snapshots().map(|s| s.manifest_list()).collect();
    report.snapshots_after = kept.len();
    let expired: Vec<_> = meta
        .snapshots()
        .filter(|s| !kept.contains(&s.snapshot_id()))
        .cloned()
        .collect();
    report.expired = expired.len();
    // Manifests and data files reachable only from expired snapshots:
    // read before their manifest lists go.
    let (manifests, data_files) = unreachable(&before, &table, &expired).await?;
    // One listing of the metadata directory gives the sizes of the
    // manifest lists and finds the stale metadata files: a HEAD a file
    // costs a round trip each on an object store.
    let listed = list_metadata(after.location()).await;
    let size_of = |loc: &str| listed.get(&store::normalized(loc)).map_or(0, |f| f.size);
    let mut lists = Vec::new();
    for s in &expired {
        if !s.manifest_list().is_empty() && !kept_lists.contains(s.manifest_list()) {
            lists.push((s.manifest_list().to_string(), size_of(s.manifest_list())));
        }
    }
    let (n, bytes) = delete_files(table.file_io(), &data_files).await;
    report.data_files_deleted = n;
    report.bytes_deleted += bytes;
    let (n, bytes) = delete_files(table.file_io(), &manifests).await;
    report.manifests_deleted = n;
    report.bytes_deleted += bytes;
    let (n, bytes) = delete_files(table.file_io(), &lists).await;
    report.manifest_lists_deleted = n;
    report.bytes_deleted += bytes;

    if let Some(current) = table.metadata_location() {
        report.metadata_bytes = match listed.get(&store::normalized(current)) {
            Some(f) => f.size,
            // Written by this expiry, after the listing.
            None => store::size(current).await.unwrap_or(0),
        };
        let keep = known_metadata_files(&table);
        let stale = stale_metadata_files(listed.values(), &keep, metadata_grace);
        // Only files that name this table: another table given the same
        // location keeps its metadata there too (`owned`).
        let owners = owned::owners(table.file_io(), after.uuid(), &stale).await;
        let (stale, not_ours): (Vec<_>, Vec<_>) = stale
            .into_iter()
            .zip(owners)
            .partition(|(_, o)| *o == owned::Owner::Ours);
        let stale: Vec<_> = stale.into_iter().map(|(f, _)| f).collect();
        report.metadata_files_not_ours = not_ours.len();
        if let Some(((location, _), owner)) = not_ours.first() {
            tracing::warn!(table = %ident, location = %location, owner = ?owner, left = not_ours.len(),
                "maintenance: metadata files at this table's location that are not its own were left");
        }
        let (n, bytes) = delete_files(table.file_io(), &stale).await;
        report.metadata_files_deleted = n;
        report.bytes_deleted += bytes;
    }
    report.data_files = after
        .current_snapshot()
        .and_then(|s| s.summary().additional_properties.get("total-data-files"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The manifests and data files that `expired` (snapshots of `before`)
/// referenced and no snapshot of `after` does. With appends only, every
/// manifest is carried into the next snapshot and this reads just the
/// manifest lists; after a compaction it also reads the manifests.
async fn unreachable(
    before: &Table,
    after: &Table,
    expired: &[iceberg::spec::SnapshotRef],
) -> Result<(Vec<(String, u64)>, Vec<(String, u64)>), LakeError> {
    if expired.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut kept: HashMap<String, ManifestFile> = HashMap::new();
    for list in manifest_lists(after, after.metadata().snapshots()).await? {
        for m in list.entries() {
            kept.entry(m.manifest_path.clone())
                .or_insert_with(|| m.clone());
        }
    }
    let mut gone: HashMap<String, ManifestFile> = HashMap::new();
    for list in manifest_lists(before, expired.iter()).await? {
        for m in list.entries() {
            if !kept.contains_key(&m.manifest_path) {
                gone.entry(m.manifest_path.clone())
                    .or_insert_with(|| m.clone());
            }
        }
    }
    if gone.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut live = HashSet::new();
    for m in load_manifests(after.file_io(), kept.values()).await? {
        // A DELETED entry records a file's removal; a kept snapshot that
        // still reads the file lists it alive in its own manifests.
        for e in m.entries() {
            if e.is_alive() {
                live.insert(e.data_file.file_path().to_string());
            }
        }
    }
    let mut files = HashMap::new();
    for m in load_manifests(before.file_io(), gone.values()).await? {
        for e in m.entries() {
            if !live.contains(e.data_file.file_path()) {
                files.insert(
                    e.data_file.file_path().to_string(),
                    e.data_file.file_size_in_bytes(),
                );
            }
        }
    }
    let manifests = gone
        .into_iter()
        .map(|(path, m)| (path, u64::try_from(m.manifest_length).unwrap_or(0)))
        .collect();
    Ok((manifests, files.into_iter().collect()))
}

/// The files of `table_location`/metadata, on whichever store holds the
/// table (`store::list`), by normalized location; none (logged) when it
/// cannot be listed, which leaves their sizes unknown (0) and stale
/// metadata files for the next run.
async fn list_metadata(table_location: &str) -> HashMap<String, store::Listed> {
    let dir = format!("{}/metadata", table_location.trim_end_matches('/'));
    match store::list(&dir).await {
        Ok(l) => l
            .into_iter()
            .map(|f| (store::normalized(&f.location), f))
            .collect(),
        Err(e) => {
            tracing::warn!(dir = %dir, error = %e, "maintenance: could not list metadata files");
            HashMap::new()
        }
    }
}

/// The metadata files `table` lists as its own, normalized: the current
/// one and those of its metadata log.
pub(super) fn known_metadata_files(table: &Table) -> HashSet<String> {
    let mut known: HashSet<String> = table
        .metadata()
        .metadata_log()
        .iter()
        .map(|m| store::normalized(&m.metadata_file))
        .collect();
    known.extend(table.metadata_location().map(store::normalized));
    known
}

/// Metadata files among `listed` that are not in `keep` (normalized
/// locations) and older than `grace`, with their sizes.
fn stale_metadata_files<'a>(
    listed: impl Iterator<Item = &'a store::Listed>,
    keep: &HashSet<String>,
    grace: Duration,
) -> Vec<(String, u64)> {
    let now = SystemTime::now();
    listed
        .filter(|f| f.location.ends_with(".metadata.json"))
        .filter(|f| !keep.contains(&store::normalized(&f.location)))
        .filter(|f| older_than(f.modified, now, grace))
        .map(|f| (f.location.clone(), f.size))
        .collect()
}

pub(super) fn older_than(modified: Option<SystemTime>, now: SystemTime, age: Duration) -> bool {
    modified
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|d| d >= age)
}

/// Files deleted a request at a time: S3's DeleteObjects takes 1,000
/// keys. Expiry after an hour of commits a second deletes thousands of
/// manifest lists, and a sweep after days of lost commit races tens of
/// thousands of files: one DELETE each (and a HEAD for its size, before)
/// would take minutes behind an object store's round trip.
const DELETE_BATCH: usize = 1000;

/// Deletes `files` (location and size) in batches, returning how many went
/// and their bytes. A batch that fails is deleted one file at a time, so
/// one file that will not go does not keep the rest; it is logged and
/// left for the next run.
pub(super) async fn delete_files(
    io: &iceberg::io::FileIO,
    files: &[(String, u64)],
) -> (usize, u64) {
    let (mut n, mut bytes) = (0, 0);
    for batch in files.chunks(DELETE_BATCH) {
        // Owned: the stream must be 'static.
        let paths: Vec<String> = batch.iter().map(|(p, _)| p.clone()).collect();
        match io.delete_stream(futures::stream::iter(paths)).await {
            Ok(()) => {
                n += batch.len();
                bytes += batch.iter().map(|(_, s)| s).sum::<u64>();
            }
            Err(e) => {
                tracing::warn!(error = %e, files = batch.len(),
                    "maintenance: a batch delete failed; deleting its files one at a time");
                for (loc, size) in batch {
                    match io.delete(loc).await {
                        Ok(()) => {
                            n += 1;
                            bytes += size;
                        }
                        Err(e) => {
                            tracing::warn!(file = %loc, error = %e, "maintenance: could not delete")
                        }
                    }
                }
            }
        }
    }
    (n, bytes)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use std::collections::HashMap;

    use super::*;
    use crate::lake;
    use crate::lake::commit::KafkaOffsets;
    use crate::model::TradeV2;

    fn offsets(next: i64) -> KafkaOffsets {
        crate::lake::commit::one_partition(next)
    }

    fn manifest_lists(dir: &Path) -> usize {
        lake::files_under(dir)
            .iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("snap-"))
            })
            .count()
    }

    fn metadata_files(dir: &Path) -> usize {
        lake::files_under(dir)
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(".metadata.json"))
            .count()
    }

    /// Ten commits of one trade each, then expiry with no retention: one
    /// snapshot is left, every row still reads, the offsets are the newest,
    /// and the manifest lists and metadata files of the others are gone.
    /// With a foreign snapshot on top, the newest ticklake commit stays.
    #[tokio::test]
    async fn expiry_keeps_the_rows_and_the_newest_offsets_and_deletes_what_only_expired_snapshots_held()
     {
        let dir = tempfile::tempdir().unwrap();
        let (_, catalog, _, ident, schema) = lake::test_lake(dir.path()).await;
        for i in 0..10i64 {
            let trade =
                [
                    TradeV2::builder("X", "BTCUSDT", &i.to_string(), 1_700_000_000_000_000 + i)
                        .build(),
                ];
            lake::append_trades(catalog.as_ref(), &ident, &schema, &trade, i + 1).await;
        }
        let warehouse = dir.path().to_path_buf();
        assert_eq!(manifest_lists(&warehouse), 10);
        // A metadata file no commit references (one a failed commit left
        // behind): young, it is kept; past the grace, it goes.
        let table = catalog.load_table(&ident).await.unwrap();
        let current = store::local_path(table.metadata_location().unwrap()).unwrap();
        let orphan = current.with_file_name("99999-orphan.metadata.json");
        std::fs::copy(&current, &orphan).unwrap();
        let metadata_before = metadata_files(&warehouse);

        // A long retention expires nothing.
        let r = expire(
            catalog.as_ref(),
            &ident,
            Duration::from_secs(3600),
            METADATA_GRACE,
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            (r.snapshots_before, r.snapshots_after, r.expired),
            (10, 10, 0)
        );
        assert_eq!(r.metadata_files_deleted, 0);
        assert!(orphan.exists());

        let before = lake::sizes_under(&warehouse);
        let r = expire(
            catalog.as_ref(),
            &ident,
            Duration::ZERO,
            Duration::ZERO,
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            (r.snapshots_before, r.expired, r.snapshots_after),
            (10, 9, 1),
            "{r:?}"
        );
        // The bytes counted are those of the files gone, taken from the
        // manifests and one listing rather than a HEAD a file.
        assert_eq!(
            r.bytes_deleted,
            lake::bytes_gone(&before, &warehouse),
            "{r:?}"
        );
        assert_eq!(r.manifest_lists_deleted, 9);
        // The commits' own metadata files are in the metadata log, which
        // keeps the last 100.
        assert_eq!(r.metadata_files_deleted, 1, "{r:?}");
        assert!(!orphan.exists());
        assert_eq!(r.data_files, 10);
        assert_eq!(manifest_lists(&warehouse), 1);
        assert_eq!(metadata_files(&warehouse), metadata_before);
        assert_eq!(
            lake::rows_of(catalog.as_ref(), &ident).await,
            10,
            "every row still reads"
        );
        let table = catalog.load_table(&ident).await.unwrap();
        let (id, o) = current_offsets(&table).unwrap().unwrap();
        assert_eq!(o, offsets(10));
        assert_eq!(r.offsets_snapshot, Some(id));

        // A foreign snapshot on top: the newest one with offsets is kept.
        let tx = Transaction::new(&table);
        let tx = tx
            .fast_append()
            .set_snapshot_properties(HashMap::from([("engine".to_string(), "other".to_string())]))
            .apply(tx)
            .unwrap();
        tx.commit(catalog.as_ref()).await.unwrap();
        let r = expire(
            catalog.as_ref(),
            &ident,
            Duration::ZERO,
            Duration::ZERO,
            None,
        )
        .await
        .unwrap();
        assert_eq!((r.expired, r.snapshots_after), (0, 2), "{r:?}");
        let table = catalog.load_table(&ident).await.unwrap();
        assert_eq!(current_offsets(&table).unwrap(), Some((id, offsets(10))));
        assert_eq!(lake::rows_of(catalog.as_ref(), &ident).await, 10);
    }
}
