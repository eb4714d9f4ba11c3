//! Orphan files: data files and manifests under a table's location that no
//! snapshot in its metadata references, left there by a write that never
//! committed.
//!
//! Expiry (`maintain`) deletes what expired snapshots referenced, but a
//! file that no snapshot ever referenced is invisible to it. Such files
//! come from:
//! - a daemon killed between writing a commit's Parquet files and the
//!   catalog's answer (a crash, an OOM kill, a host gone);
//! - a compaction whose run failed on I/O after it wrote its files, so
//!   that it could not delete them either;
//! - every commit attempt that lost a race with another commit: iceberg
//!   writes the attempt's manifest and manifest list before the catalog
//!   refuses it.
//!
//! Each is small, but a daemon that runs for months keeps paying for them,
//! and nothing else would ever take them away. So maintenance
//! lists the table's `data/` and `metadata/` directories (where every
//! Iceberg writer puts a table's files unless told otherwise) and deletes
//! the Parquet and Avro files in them that nothing references and that
//! are older than `maintenance.orphan_min_age`. Nothing else under the
//! location is listed: a table placed at the root of a bucket other data
//! lives in would otherwise take the whole bucket for its own.
//!
//! Why the age: a file being written, or written and waiting for its
//! commit, is referenced by nothing yet. The writers never offer a commit
//! files older than [`WRITTEN_MAX_AGE`] (they write them again from the
//! rows they hold), and compaction's files live for one run. So a
//! minimum age far above both ([`MIN_AGE_FLOOR`], enforced by the config)
//! leaves every write in flight alone, whichever daemon of the group
//! makes it.
//!
//! And refusals, since deleting a referenced file, or another table's,
//! loses rows. Each stops the sweep before it deletes anything:
//! - a referenced file that the listing does not show (the listing is
//!   incomplete, or the two name files differently);
//! - a referenced file outside the two directories: the table's files are
//!   then laid out in a way this sweep does not know to be safe;
//! - another table's metadata in them: a table whose location lies inside
//!   this one's, or one given the same location (its metadata files name
//!   it, `owned`). Its files reference nothing of this table's, so all of
//!   them would look like orphans.
//!
//! Metadata JSON files are expiry's (`maintain::expire`, which keeps the
//! metadata log's); any other file (a marker another tool left) is not
//! touched.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};
use serde::Serialize;

use super::commit::{load_manifests, manifest_lists};
use super::{LakeError, owned, store};

/// A writer holding files for a commit that keeps failing writes them
/// again once they are this old, so no commit ever offers an older file.
pub const WRITTEN_MAX_AGE: Duration = Duration::from_secs(600);

/// The least `maintenance.orphan_min_age` (the config enforces it).
pub const MIN_AGE_FLOOR: Duration = crate::config::ORPHAN_MIN_AGE_FLOOR;

/// What one sweep of one table found and did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SweepReport {
    /// Parquet and Avro files under the table's location.
    pub listed: usize,
    /// Files the table's snapshots reference: manifest lists, manifests,
    /// data and delete files, statistics files.
    pub referenced: usize,
    /// Unreferenced files younger than the minimum age: left, since a
    /// write may be about to commit them.
    pub young: usize,
    pub deleted: usize,
    pub bytes_deleted: u64,
    /// Why nothing was deleted, when the sweep refused (module docs).
    pub refused: Option<String>,
    pub duration_ms: u64,
}

/// Deletes the orphan files of `ident` older than `min_age` (module docs).
pub async fn sweep(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    min_age: Duration,
) -> Result<SweepReport, LakeError> {
    let started = std::time::Instant::now();
    // The table first, the listing second: a file committed in between is
    // not in the referenced set, but it is young, so it stays.
    let table = catalog.load_table(ident).await?;
    let referenced = referenced(&table).await?;
    let location = table.metadata().location().trim_end_matches('/');
    let root = format!("{}/", store::normalized(location));
    let (data, metadata) = (format!("{root}data/"), format!("{root}metadata/"));
    let mut all = store::list_tree(&format!("{location}/data")).await?;
    all.extend(store::list_tree(&format!("{location}/metadata")).await?);
    let names: HashSet<String> = all.iter().map(|f| store::normalized(&f.location)).collect();
    let iceberg_file =
        |f: &store::Listed| f.location.ends_with(".parquet") || f.location.ends_with(".avro");
    let mut report = SweepReport {
        listed: all.iter().filter(|f| iceberg_file(f)).count(),
        referenced: referenced.len(),
        ..SweepReport::default()
    };
    let in_table_dirs = |r: &String| r.starts_with(&data) || r.starts_with(&metadata);
    let in_metadata_dir = |n: &str| n.strip_prefix(&metadata).is_some_and(|f| !f.contains('/'));
    let metadata_jsons = || names.iter().filter(|n| n.ends_with(".metadata.json"));
    if let Some(out) = referenced.iter().find(|r| !in_table_dirs(r)) {
        report.refused = Some(format!(
            "{out} is referenced but lies outside the table's data and metadata directories under {root}"
        ));
    } else if let Some(gone) = referenced.iter().find(|r| !names.contains(*r)) {
        report.refused = Some(format!(
            "{gone} is referenced but the listing of {root} does not show it"
        ));
    } else if let Some(nested) = metadata_jsons().find(|n| !in_metadata_dir(n)) {
        report.refused = Some(format!(
            "{nested} is another table's metadata, under this table's location {root}: its files would look unreferenced"
        ));
    } else {
        report.refused = others_here(&table, &all).await;
    }
    if report.refused.is_some() {
        report.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }
    let listed: Vec<_> = all.into_iter().filter(iceberg_file).collect();
    let now = SystemTime::now();
    let mut orphans = Vec::new();
    for f in listed {
        if referenced.contains(&store::normalized(&f.location)) {
            continue;
        }
        if super::maintain::older_than(f.modified, now, min_age) {
            orphans.push(f);
        } else {
            report.young += 1;
        }
    }
    let orphans: Vec<(String, u64)> = orphans.into_iter().map(|f| (f.location, f.size)).collect();
    (report.deleted, report.bytes_deleted) =
        super::maintain::delete_files(table.file_io(), &orphans).await;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Why the sweep must not run when another table keeps its metadata in
/// this table's metadata directory (both were given one location): its
/// data files and manifests would look like this table's orphans. The
/// metadata files neither current nor in the metadata log are read for
/// the table they name (`owned`); after expiry, those are the few
/// written since (a commit's that lost a race, say).
async fn others_here(table: &Table, listed: &[store::Listed]) -> Option<String> {
    let meta = table.metadata();
    let known = super::maintain::known_metadata_files(table);
    let unknown: Vec<&store::Listed> = listed
        .iter()
        .filter(|f| f.location.ends_with(".metadata.json"))
        .filter(|f| !known.contains(&store::normalized(&f.location)))
        .collect();
    let files: Vec<(String, u64)> = unknown
        .iter()
        .map(|f| (f.location.clone(), f.size))
        .collect();
    let owners = owned::owners(table.file_io(), meta.uuid(), &files).await;
    let now = SystemTime::now();
    unknown
        .iter()
        .zip(owners)
        .find_map(|(f, owner)| match owner {
            owned::Owner::Ours => None,
            owned::Owner::Other(u) => Some(format!(
                "{} is table {u}'s metadata, in this table's metadata directory: two tables share the location {}",
                f.location,
                meta.location()
            )),
            // A file being written reads short for a moment (on a local
            // disk); another table's has older files beside it.
            owned::Owner::Unknown(why) => super::maintain::older_than(
                f.modified,
                now,
                super::maintain::METADATA_GRACE,
            )
            .then(|| {
                format!(
                    "a metadata file in this table's metadata directory names no table this sweep can read ({why})"
                )
            }),
        })
}

/// Every file the snapshots of `table` reference, normalized: each
/// manifest list, each manifest in them, each file alive in those, and
/// the statistics files.
async fn referenced(table: &Table) -> Result<HashSet<String>, LakeError> {
    let meta = table.metadata();
    let mut out = HashSet::new();
    let mut manifests = Vec::new();
    for s in meta.snapshots().filter(|s| !s.manifest_list().is_empty()) {
        out.insert(store::normalized(s.manifest_list()));
    }
    for list in manifest_lists(table, meta.snapshots()).await? {
        for m in list.entries() {
            if out.insert(store::normalized(&m.manifest_path)) {
                manifests.push(m.clone());
            }
        }
    }
    for m in load_manifests(table.file_io(), manifests.iter()).await? {
        for e in m.entries() {
            // A DELETED entry records the file's removal by this snapshot;
            // a kept snapshot that still reads the file lists it alive in
            // its own manifests. Expiry deletes such a file once no kept
            // snapshot does.
            if e.is_alive() {
                out.insert(store::normalized(e.data_file.file_path()));
            }
        }
    }
    out.extend(
        meta.statistics_iter()
            .map(|s| store::normalized(&s.statistics_path)),
    );
    out.extend(
        meta.partition_statistics_iter()
            .map(|s| store::normalized(&s.statistics_path)),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::lake;
    use crate::lake::commit::write_data_files;
    use crate::model::TradeV2;

    const DAY_US: i64 = 86_400_000_000;

    /// Trades `from..to` over two day partitions.
    fn trades(from: i64, to: i64) -> Vec<TradeV2> {
        (from..to)
            .map(|i| {
                TradeV2::builder(
                    "X",
                    "BTCUSDT",
                    &i.to_string(),
                    1_700_000_000_000_000 + (i % 2) * DAY_US,
                )
                .build()
            })
            .collect()
    }

    /// Sets every file under `dir` back `age`, as if written that long ago.
    fn age_all(dir: &Path, age: Duration) {
        let then = SystemTime::now() - age;
        for p in lake::files_under(dir) {
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(then)
                .unwrap();
        }
    }

    /// Why a sweep of `ident` at no minimum age refused; it deleted nothing.
    async fn refusal(catalog: &dyn Catalog, ident: &TableIdent) -> String {
        let r = sweep(catalog, ident, Duration::ZERO).await.unwrap();
        assert_eq!(r.deleted, 0, "{r:?}");
        r.refused.expect("refused")
    }

    /// A table of three commits, with what a crash leaves behind: a
    /// commit's Parquet files written and never committed, and a manifest
    /// of a compaction that failed. All of it two hours old, so only the
    /// references keep the table's own files. The sweep at one hour
    /// deletes exactly the old orphans, leaves a young one, every
    /// referenced file, the metadata JSON and a file that is not Iceberg's;
    /// every row still reads. A sweep at zero then takes the young one.
    #[tokio::test]
    async fn a_sweep_deletes_the_old_unreferenced_files_and_nothing_a_snapshot_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (_, catalog, _, ident, schema) = lake::test_lake(dir.path()).await;
        for c in 0..3i64 {
            let t = trades(c * 10, c * 10 + 10);
            lake::append_trades(catalog.as_ref(), &ident, &schema, &t, c + 1).await;
        }
        let table = catalog.load_table(&ident).await.unwrap();
        let crashed = lake::batch::trades_batch(&schema, &trades(100, 110)).unwrap();
        let crashed: Vec<PathBuf> = write_data_files(&table, &crashed, 1 << 20)
            .await
            .unwrap()
            .iter()
            .map(|f| store::local_path(f.file_path()).unwrap())
            .collect();
        assert_eq!(crashed.len(), 2, "one file per day partition");
        let a_manifest = lake::files_under(dir.path())
            .into_iter()
            .find(|p| p.to_string_lossy().ends_with("-m0.avro"))
            .expect("the commits' manifests");
        let failed_compaction = a_manifest.with_file_name("0000-failed-compaction-m0.avro");
        std::fs::copy(&a_manifest, &failed_compaction).unwrap();
        let foreign = dir.path().join("foreign-marker.txt");
        std::fs::write(&foreign, "another tool's").unwrap();
        let table_dir = store::local_path(table.metadata().location()).unwrap();
        let foreign_in_table = table_dir.join("data").join("README.txt");
        std::fs::write(&foreign_in_table, "not iceberg's").unwrap();
        // Another tool's Parquet under the location, outside the table's
        // two directories (as beside a table at a shared bucket's root).
        let export = table_dir.join("exports").join("day.parquet");
        std::fs::create_dir_all(export.parent().unwrap()).unwrap();
        std::fs::copy(&crashed[0], &export).unwrap();
        age_all(dir.path(), Duration::from_secs(7200));
        let young = write_data_files(
            &table,
            &lake::batch::trades_batch(&schema, &trades(200, 201)).unwrap(),
            1 << 20,
        )
        .await
        .unwrap();
        let young = store::local_path(young[0].file_path()).unwrap();
        let before = lake::files_under(dir.path());
        let metadata_json = |fs: &[PathBuf]| {
            fs.iter()
                .filter(|p| p.to_string_lossy().ends_with(".metadata.json"))
                .count()
        };

        let r = sweep(catalog.as_ref(), &ident, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(r.refused, None, "{r:?}");
        // 3 manifest lists, 3 manifests, 6 data files (2 days a commit).
        assert_eq!(r.referenced, 12, "{r:?}");
        assert_eq!(r.listed, 12 + 2 + 1 + 1, "{r:?}");
        assert_eq!((r.deleted, r.young), (3, 1), "{r:?}");
        assert!(r.bytes_deleted > 0);
        for p in crashed.iter().chain([&failed_compaction]) {
            assert!(!p.exists(), "{} is an orphan", p.display());
        }
        let after = lake::files_under(dir.path());
        assert_eq!(after.len(), before.len() - 3);
        assert!(young.exists() && foreign.exists() && foreign_in_table.exists() && export.exists());
        assert_eq!(metadata_json(&after), metadata_json(&before));
        assert_eq!(lake::rows_of(catalog.as_ref(), &ident).await, 30);

        let r = sweep(catalog.as_ref(), &ident, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!((r.deleted, r.young, r.referenced), (1, 0, 12), "{r:?}");
        assert!(!young.exists());
        assert_eq!(lake::rows_of(catalog.as_ref(), &ident).await, 30);
    }

    /// After a compaction, its snapshot's manifests list the files it
    /// replaced as DELETED, and expiry deletes those files once no kept
    /// snapshot reads them: such an entry is no reference, so the sweep
    /// neither refuses for the missing file nor counts it. Before the
    /// expiry, the older snapshot still reads them, and they stay.
    #[tokio::test]
    async fn files_a_compaction_replaced_are_referenced_until_their_snapshots_expire() {
        use crate::lake::compact::{CatalogDb, CompactPolicy, compact};
        let dir = tempfile::tempdir().unwrap();
        let (cfg, catalog, _, ident, schema) = lake::test_lake(dir.path()).await;
        for c in 0..4i64 {
            let one_day: Vec<_> = trades(c * 10, c * 10 + 10)
                .into_iter()
                .filter(|t| t.timestamp_us < 1_700_000_000_000_000 + DAY_US)
                .collect();
            lake::append_trades(catalog.as_ref(), &ident, &schema, &one_day, c + 1).await;
        }
        let db = CatalogDb::open(&cfg).await.unwrap().unwrap();
        let policy = CompactPolicy {
            target_file_size: 1 << 20,
            min_files: 4,
            min_age: Duration::ZERO,
            sort: vec!["symbol".into(), "timestamp".into()],
            merge: None,
        };
        let c = compact(catalog.as_ref(), &db, &ident, &policy)
            .await
            .unwrap();
        assert_eq!((c.files_replaced, c.files_written), (4, 1), "{c:?}");

        let r = sweep(catalog.as_ref(), &ident, Duration::ZERO)
            .await
            .unwrap();
        // 5 manifest lists, 4 appends' manifests and the compaction's, 4
        // small files read by the older snapshots and the one that
        // replaced them.
        assert_eq!((r.refused.as_deref(), r.deleted), (None, 0), "{r:?}");
        assert_eq!(r.referenced, 5 + 5 + 5, "{r:?}");

        let before = lake::sizes_under(dir.path());
        let e = super::super::maintain::expire(
            catalog.as_ref(),
            &ident,
            Duration::ZERO,
            Duration::ZERO,
            None,
        )
        .await
        .unwrap();
        assert_eq!(e.data_files_deleted, 4, "{e:?}");
        // Data files and manifests counted at their sizes in the metadata.
        assert_eq!(
            e.bytes_deleted,
            lake::bytes_gone(&before, dir.path()),
            "{e:?}"
        );
        let r = sweep(catalog.as_ref(), &ident, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(r.refused, None, "{r:?}");
        assert_eq!((r.referenced, r.deleted), (3, 0), "{r:?}");
        assert_eq!(lake::rows_of(catalog.as_ref(), &ident).await, 20);
    }

    /// A referenced file missing from the listing stops the sweep before
    /// it deletes anything: the orphan beside it stays.
    #[tokio::test]
    async fn a_referenced_file_the_listing_lacks_stops_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let (_, catalog, _, ident, schema) = lake::test_lake(dir.path()).await;
        lake::append_trades(catalog.as_ref(), &ident, &schema, &trades(0, 10), 1).await;
        let batch = lake::batch::trades_batch(&schema, &trades(0, 10)).unwrap();
        let table = catalog.load_table(&ident).await.unwrap();
        let orphans: Vec<PathBuf> = write_data_files(&table, &batch, 1 << 20)
            .await
            .unwrap()
            .iter()
            .map(|f| store::local_path(f.file_path()).unwrap())
            .collect();
        let lost = lake::files_under(dir.path())
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "parquet") && !orphans.contains(p))
            .unwrap();
        std::fs::remove_file(&lost).unwrap();

        let why = refusal(catalog.as_ref(), &ident).await;
        assert!(why.contains(&*lost.to_string_lossy()), "{why}");
        assert!(orphans.iter().all(|p| p.exists()));
    }

    /// A table named `name` in the test lake's namespace at `location`, as
    /// a REST catalog places one where its `location` property says.
    async fn table_at(catalog: &dyn Catalog, name: &str, location: &str) -> TableIdent {
        let creation = iceberg::TableCreation::builder()
            .name(name.to_string())
            .schema(lake::schema::trades_schema().unwrap())
            .partition_spec(lake::schema::trades_partition_spec().unwrap())
            .location(location.to_string())
            .build();
        let ns = iceberg::NamespaceIdent::new("market".into());
        let t = catalog.create_table(&ns, creation).await.unwrap();
        assert_eq!(t.metadata().location(), location);
        t.identifier().clone()
    }

    /// A table whose location lies in another's data directory: the outer
    /// table's sweep sees the inner one's files, referenced by nothing of
    /// its own, and refuses, naming the inner table's metadata; every row
    /// of both still reads. The inner table's own sweep runs.
    #[tokio::test]
    async fn a_table_inside_another_tables_location_stops_the_outer_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let (_, catalog, table, ident, schema) = lake::test_lake(dir.path()).await;
        let outer = table
            .metadata()
            .location()
            .trim_end_matches('/')
            .to_string();
        let inner = table_at(catalog.as_ref(), "inner", &format!("{outer}/data/inner")).await;
        lake::append_trades(catalog.as_ref(), &ident, &schema, &trades(0, 10), 1).await;
        lake::append_trades(catalog.as_ref(), &inner, &schema, &trades(10, 30), 1).await;
        age_all(dir.path(), Duration::from_secs(7200));
        let before = lake::files_under(dir.path()).len();

        let why = refusal(catalog.as_ref(), &ident).await;
        assert!(
            why.contains("/data/inner/metadata/") && why.contains("another table's metadata"),
            "{why}"
        );
        assert_eq!(lake::files_under(dir.path()).len(), before);
        assert_eq!(lake::rows_of(catalog.as_ref(), &ident).await, 10);
        assert_eq!(lake::rows_of(catalog.as_ref(), &inner).await, 20);

        let r = sweep(catalog.as_ref(), &inner, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!((r.refused.as_deref(), r.deleted), (None, 0), "{r:?}");
    }

    /// Two tables given one location: each one's metadata files name it.
    /// The first table's sweep refuses, naming the other; its expiry deletes
    /// a stale metadata file of its own table and leaves every one of the
    /// other's, which still loads and reads every row.
    #[tokio::test]
    async fn two_tables_at_one_location_keep_each_others_files() {
        use super::super::maintain::expire;
        let dir = tempfile::tempdir().unwrap();
        let (_, catalog, table, ident, schema) = lake::test_lake(dir.path()).await;
        let location = table.metadata().location().to_string();
        let twin = table_at(catalog.as_ref(), "twin", &location).await;
        for c in 0..2i64 {
            let t = trades(c * 10, c * 10 + 10);
            lake::append_trades(catalog.as_ref(), &ident, &schema, &t, c + 1).await;
            lake::append_trades(catalog.as_ref(), &twin, &schema, &t, c + 1).await;
        }
        let twins_uuid = catalog.load_table(&twin).await.unwrap().metadata().uuid();
        // A metadata file of the table's own that no commit references.
        let current = catalog.load_table(&ident).await.unwrap();
        let current = store::local_path(current.metadata_location().unwrap()).unwrap();
        let stale = current.with_file_name("99999-stale.metadata.json");
        std::fs::copy(&current, &stale).unwrap();
        age_all(dir.path(), Duration::from_secs(7200));
        let before = lake::files_under(dir.path()).len();

        let why = refusal(catalog.as_ref(), &ident).await;
        assert!(
            why.contains(&twins_uuid.to_string()) && why.contains("two tables share"),
            "{why}"
        );
        assert_eq!(lake::files_under(dir.path()).len(), before);

        let e = expire(
            catalog.as_ref(),
            &ident,
            Duration::from_secs(86_400),
            Duration::ZERO,
            None,
        )
        .await
        .unwrap();
        // The twin's: its creation's metadata and one a commit.
        assert_eq!(
            (e.metadata_files_deleted, e.metadata_files_not_ours),
            (1, 3),
            "{e:?}"
        );
        assert!(!stale.exists());
        assert_eq!(lake::files_under(dir.path()).len(), before - 1);
        assert_eq!(lake::rows_of(catalog.as_ref(), &twin).await, 20);
        assert_eq!(lake::rows_of(catalog.as_ref(), &ident).await, 20);
    }

    /// A metadata file that names no table (not Iceberg's, or cut short)
    /// cannot be vouched for: once older than a write takes, it stops the
    /// sweep, naming it; while young (being written), it does not.
    #[tokio::test]
    async fn a_metadata_file_naming_no_table_stops_the_sweep_once_old() {
        let dir = tempfile::tempdir().unwrap();
        let (_, catalog, table, ident, schema) = lake::test_lake(dir.path()).await;
        lake::append_trades(catalog.as_ref(), &ident, &schema, &trades(0, 10), 1).await;
        let current = store::local_path(table.metadata_location().unwrap()).unwrap();
        let odd = current.with_file_name("99998-odd.metadata.json");
        std::fs::write(&odd, r#"{"format-version":2,"#).unwrap();

        let r = sweep(catalog.as_ref(), &ident, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(r.refused, None, "{r:?}");

        age_all(dir.path(), Duration::from_secs(7200));
        let why = refusal(catalog.as_ref(), &ident).await;
        assert!(
            why.contains("names no table") && why.contains("99998-odd.metadata.json"),
            "{why}"
        );
        assert_eq!(lake::rows_of(catalog.as_ref(), &ident).await, 10);
    }
}
