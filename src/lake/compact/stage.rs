//! Staging a compaction's (or a retention's) commit: its manifests, its
//! manifest list, and, for a SQL catalog, its metadata file; and putting
//! it on top of appends that landed first (module docs of `compact`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;

use iceberg::MetadataLocation;
use iceberg::spec::{
    DataFile, MAIN_BRANCH, ManifestContentType, ManifestEntry, ManifestFile, ManifestListWriter,
    ManifestStatus, ManifestWriterBuilder, Operation, Snapshot, SnapshotReference,
    SnapshotRetention, SnapshotSummaryCollector, Summary, TableMetadata, TableMetadataBuilder,
    UNASSIGNED_SEQUENCE_NUMBER,
};
use iceberg::table::Table;

use super::{Loaded, Staged, discard_paths, partition_key};
use crate::lake::LakeError;
use crate::lake::commit::{OFFSETS_PROPERTY, current_offsets};

/// A partition of the base snapshot, as [`stage_as`] sees it.
#[derive(Default)]
struct Part<'a> {
    /// Indices of the base manifests holding live files of it.
    manifests: BTreeSet<usize>,
    live: Vec<&'a ManifestEntry>,
    new: Vec<&'a DataFile>,
    /// Files of it are replaced or added.
    touched: bool,
}

/// Stages a commit of `operation`: `Replace` (compaction) or `Delete`
/// (whole partitions past retention, nothing added). The partitions it
/// touches, and those whose files several manifests share, get one new
/// manifest each (merging a writer's many small manifests); a manifest
/// holding only partitions that are neither is carried as it is, so a
/// table of many days costs the manifests of the days that changed.
/// `loaded` is `table`'s current snapshot as [`current_manifests`] reads
/// it. `None` when a file to remove is not live there: another commit
/// replaced or deleted it.
pub(super) async fn stage_as(
    table: &Table,
    loaded: Loaded,
    replaced: &HashSet<String>,
    added: &[DataFile],
    operation: Operation,
    metadata: bool,
) -> Result<Option<Staged>, LakeError> {
    let meta = table.metadata();
    let base = meta
        .current_snapshot()
        .ok_or_else(|| LakeError::Catalog("compaction of a table without a snapshot".into()))?;
    let snapshot_id = new_snapshot_id(meta);
    let schema = meta.current_schema().clone();
    let spec = meta.default_partition_spec().as_ref().clone();
    let commit = uuid::Uuid::new_v4();

    let mut parts: BTreeMap<String, Part> = BTreeMap::new();
    let mut found = 0;
    for (i, (_, live)) in loaded.iter().enumerate() {
        for e in live {
            let part = parts.entry(partition_key(e)).or_default();
            part.manifests.insert(i);
            part.live.push(e);
            if replaced.contains(e.data_file.file_path()) {
                part.touched = true;
                found += 1;
            }
        }
    }
    if found != replaced.len() {
        return Ok(None);
    }
    for f in added {
        let part = parts.entry(format!("{:?}", f.partition())).or_default();
        part.new.push(f);
        part.touched = true;
    }
    // A manifest is carried when each of its partitions lives in it alone
    // and is untouched; a manifest with no live file is dropped.
    let mut rewritten: HashSet<usize> = HashSet::new();
    for part in parts.values() {
        if part.touched || part.manifests.len() > 1 {
            rewritten.extend(part.manifests.iter().copied());
        }
    }
    let carried: Vec<ManifestFile> = loaded
        .iter()
        .enumerate()
        .filter(|(i, (_, live))| !live.is_empty() && !rewritten.contains(i))
        .map(|(_, (mf, _))| mf.clone())
        .collect();

    let mut summary = SnapshotSummaryCollector::default();
    let mut own: Vec<ManifestFile> = Vec::new();
    let mut written = Vec::new();
    let rewrite_parts = parts
        .into_values()
        .filter(|p| p.manifests.iter().any(|i| rewritten.contains(i)) || !p.new.is_empty());
    for (i, part) in rewrite_parts.enumerate() {
        let path = format!("{}/metadata/{commit}-m{i}.avro", meta.location());
        let mut w = ManifestWriterBuilder::new(
            table.file_io().new_output(&path)?,
            Some(snapshot_id),
            schema.clone(),
            spec.clone(),
        )
        .build_v2_data();
        for e in part.live {
            let data_seq = e.sequence_number.unwrap_or(0);
            let file_seq = e.file_sequence_number.or(e.sequence_number);
            if replaced.contains(e.data_file.file_path()) {
                summary.remove_file(
                    &e.data_file,
                    schema.clone(),
                    meta.default_partition_spec().clone(),
                );
                w.add_delete_file(e.data_file.clone(), data_seq, file_seq)?;
            } else {
                let added_by = e.snapshot_id.unwrap_or(base.snapshot_id());
                w.add_existing_file(e.data_file.clone(), added_by, data_seq, file_seq)?;
            }
        }
        for f in part.new {
            summary.add_file(f, schema.clone(), meta.default_partition_spec().clone());
            w.add_file(f.clone(), UNASSIGNED_SEQUENCE_NUMBER)?;
        }
        written.push(path);
        match w.write_manifest_file().await {
            Ok(m) => own.push(m),
            Err(e) => {
                discard_paths(table.file_io(), written.into_iter()).await;
                return Err(e.into());
            }
        }
    }
    let mut staged = Staged {
        snapshot_id,
        operation,
        base_snapshot_id: base.snapshot_id(),
        base_manifests: loaded
            .iter()
            .map(|(mf, _)| mf.manifest_path.clone())
            .collect(),
        carried,
        own,
        changes: summary.build(),
        manifests: 0,
        location: String::new(),
        snapshot: None,
        top: Vec::new(),
    };
    if let Err(e) = seal(
        table,
        &mut staged,
        Vec::new(),
        replaced.len(),
        added,
        metadata,
    )
    .await
    {
        discard_paths(table.file_io(), staged.written()).await;
        return Err(e);
    }
    Ok(Some(staged))
}

/// Puts `staged` on top of `table`'s current snapshot again, when all
/// that was committed since its base is appends: their manifests join its
/// list. `false` when something else landed (a compaction, a delete, a
/// commit by another engine) and it must be staged again.
pub(super) async fn rebase(
    table: &Table,
    staged: &mut Staged,
    replaced: usize,
    added: &[DataFile],
    metadata: bool,
) -> Result<bool, LakeError> {
    let meta = table.metadata();
    let Some(current) = meta.current_snapshot() else {
        return Ok(false);
    };
    if meta.snapshot_by_id(staged.snapshot_id).is_some() {
        return Ok(false);
    }
    // Appends add files and remove none: what this commit removes is
    // still there, and its manifests still describe the base's files.
    let mut s = current;
    while s.snapshot_id() != staged.base_snapshot_id {
        if s.summary().operation != Operation::Append {
            return Ok(false);
        }
        match s.parent_snapshot_id().and_then(|p| meta.snapshot_by_id(p)) {
            Some(parent) => s = parent,
            None => return Ok(false),
        }
    }
    let list = table.manifest_list_reader(current).load().await?;
    let mut appended = Vec::new();
    for mf in list.entries() {
        if staged.base_manifests.contains(&mf.manifest_path) {
            continue;
        }
        if mf.content != ManifestContentType::Data {
            return Ok(false);
        }
        let manifest = mf.load_manifest(table.file_io()).await?;
        if manifest
            .entries()
            .iter()
            .any(|e| e.status() != ManifestStatus::Added)
        {
            return Ok(false);
        }
        appended.push(mf.clone());
    }
    seal(table, staged, appended, replaced, added, metadata).await?;
    Ok(true)
}

/// Writes the manifest list of `staged` on top of `table`'s current
/// snapshot (its own and carried manifests, and `appended`: the manifests
/// of appends since its base), and with `metadata` the next metadata file.
pub(super) async fn seal(
    table: &Table,
    staged: &mut Staged,
    appended: Vec<ManifestFile>,
    replaced: usize,
    added: &[DataFile],
    metadata: bool,
) -> Result<(), LakeError> {
    let meta = table.metadata();
    let base = meta
        .current_snapshot()
        .ok_or_else(|| LakeError::Catalog("compaction of a table without a snapshot".into()))?;
    let snapshot_id = staged.snapshot_id;
    let seq = meta.next_sequence_number();
    let manifests: Vec<ManifestFile> = staged
        .own
        .iter()
        .chain(&staged.carried)
        .cloned()
        .chain(appended)
        .collect();
    let manifest_count = manifests.len();

    let list_path = format!(
        "{}/metadata/snap-{snapshot_id}-{seq}-{}.avro",
        meta.location(),
        uuid::Uuid::new_v4()
    );
    let mut list = ManifestListWriter::v2(
        table.file_io().new_output(&list_path)?.writer().await?,
        snapshot_id,
        Some(base.snapshot_id()),
        seq,
    );
    list.add_manifests(manifests.into_iter())?;
    list.close().await?;
    staged.top.push(list_path.clone());

    let mut properties = staged.changes.clone();
    totals(&mut properties, base.summary(), replaced, added);
    // The rows are the same, so the Kafka positions are too; a snapshot
    // without them would make readers walk back to an older one.
    if let Some((_, offsets)) = current_offsets(table)? {
        let json =
            serde_json::to_string(&offsets).map_err(|e| LakeError::Catalog(e.to_string()))?;
        properties.insert(OFFSETS_PROPERTY.to_string(), json);
    }
    // Likewise what the minute bars cover (`bars`): without it the bars
    // would summarize every trade again.
    if let Some((_, seq)) = crate::lake::bars::covered(table) {
        properties.insert(
            crate::lake::bars::COVERED_PROPERTY.to_string(),
            seq.to_string(),
        );
    }
    let snapshot = Snapshot::builder()
        .with_manifest_list(list_path)
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(Some(base.snapshot_id()))
        .with_sequence_number(seq)
        .with_summary(Summary {
            operation: staged.operation.clone(),
            additional_properties: properties,
        })
        .with_schema_id(meta.current_schema_id())
        .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
        .build();
    staged.manifests = manifest_count;
    if !metadata {
        staged.snapshot = Some(snapshot);
        return Ok(());
    }
    let current_location = table
        .metadata_location()
        .ok_or_else(|| LakeError::Catalog("the table has no metadata file".into()))?;
    let next =
        TableMetadataBuilder::new_from_metadata(meta.clone(), Some(current_location.to_string()))
            .add_snapshot(snapshot)?
            .set_ref(
                MAIN_BRANCH,
                SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
            )?
            .build()?
            .metadata;
    let location = MetadataLocation::from_str(current_location)?.with_next_version();
    next.write_to(table.file_io(), &location).await?;
    let location = location.to_string();
    staged.top.push(location.clone());
    staged.location = location;
    staged.manifests = manifest_count;
    Ok(())
}

/// The snapshot's running totals: the base's, less what was replaced,
/// plus what was written.
fn totals(
    properties: &mut HashMap<String, String>,
    base: &Summary,
    replaced_files: usize,
    added: &[DataFile],
) {
    let get = |k: &str| -> u64 {
        base.additional_properties
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let add = |k: &str, p: &HashMap<String, String>| -> u64 {
        p.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let deleted_records = add("deleted-records", properties);
    let removed_size = add("removed-files-size", properties);
    let added_records: u64 = added.iter().map(|f| f.record_count()).sum();
    let added_size: u64 = added.iter().map(|f| f.file_size_in_bytes()).sum();
    // Saturating: a base written by another engine may lack its totals.
    let files =
        (get("total-data-files") + added.len() as u64).saturating_sub(replaced_files as u64);
    let records = (get("total-records") + added_records).saturating_sub(deleted_records);
    let size = (get("total-files-size") + added_size).saturating_sub(removed_size);
    for (k, v) in [
        ("total-data-files", files),
        ("total-records", records),
        ("total-files-size", size),
        ("total-delete-files", get("total-delete-files")),
        ("total-position-deletes", get("total-position-deletes")),
        ("total-equality-deletes", get("total-equality-deletes")),
    ] {
        properties.insert(k.to_string(), v.to_string());
    }
}

/// A snapshot id no snapshot of the table has.
fn new_snapshot_id(meta: &TableMetadata) -> i64 {
    loop {
        let id = (uuid::Uuid::new_v4().as_u128() as i64).wrapping_abs();
        if id > 0 && meta.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}
