//! One flush = Parquet files + one atomic fast-append whose snapshot summary
//! records the next Kafka offset of every partition the table has consumed.
//! That property is the single source of truth for exactly-once restarts.

use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::RecordBatch;
use iceberg::spec::{DataFileFormat, ManifestContentType, ManifestEntry, ManifestFile};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::{Catalog, TableIdent};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use super::LakeError;

/// Offsets of one partition of topic `t` on cluster `c`, for tests.
#[cfg(test)]
pub(crate) fn one_partition(next: i64) -> KafkaOffsets {
    let mut o = KafkaOffsets {
        cluster_id: "c".into(),
        ..Default::default()
    };
    o.set("t", 0, next);
    o
}

/// Snapshot-summary key holding the offsets as JSON.
pub const OFFSETS_PROPERTY: &str = "ticklake.kafka.offsets";

/// Next offset to consume, per topic and partition, on one Kafka cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaOffsets {
    /// Offsets only mean something on the cluster that assigned them; the
    /// embedded cluster is new at every start.
    pub cluster_id: String,
    pub topics: BTreeMap<String, BTreeMap<i32, i64>>,
}

impl KafkaOffsets {
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.topics
            .get(topic)
            .and_then(|p| p.get(&partition))
            .copied()
    }

    pub fn set(&mut self, topic: &str, partition: i32, next: i64) {
        // The name is copied only for a topic not yet held.
        match self.topics.get_mut(topic) {
            Some(parts) => {
                parts.insert(partition, next);
            }
            None => {
                self.topics
                    .entry(topic.to_string())
                    .or_default()
                    .insert(partition, next);
            }
        }
    }
}

/// A run of consecutive offsets of one partition that a consumer handed
/// over: records `first ..= next - 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub topic: Arc<str>,
    pub partition: i32,
    pub first: i64,
    pub next: i64,
}

impl Span {
    /// Adds a record to `spans`: to the last span of its partition when it
    /// follows that span's last offset, else as a new span.
    ///
    /// One span per run, not one entry per record: the writer checks and
    /// records positions per entry, and per record that was two map
    /// updates and a topic-name allocation each time.
    pub fn push(spans: &mut Vec<Span>, topic: &Arc<str>, partition: i32, offset: i64) {
        match spans.last_mut() {
            Some(last) if last.followed_by(topic, partition, offset) => last.next = offset + 1,
            _ => spans.push(Span::of(topic, partition, offset)),
        }
    }

    /// The span of the one record at `offset`.
    pub fn of(topic: &Arc<str>, partition: i32, offset: i64) -> Span {
        Span {
            topic: topic.clone(),
            partition,
            first: offset,
            next: offset + 1,
        }
    }

    /// Whether the record at `offset` of `topic`'s `partition` comes right
    /// after this span.
    pub fn followed_by(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.partition == partition && self.next == offset && *self.topic == *topic
    }
}

/// The offsets recorded by the newest snapshot that carries them, walking
/// back from the current one through its parents. A snapshot without them
/// was written by someone else (another engine appending, a maintenance
/// job); it holds no Kafka records, so the positions are still those of the
/// newest ticklake commit below it. Reading `None` there instead would send
/// the consumer back to the start of every partition.
pub fn current_offsets(table: &Table) -> Result<Option<(i64, KafkaOffsets)>, LakeError> {
    let meta = table.metadata();
    let mut next = meta.current_snapshot();
    while let Some(snap) = next {
        if let Some(json) = snap.summary().additional_properties.get(OFFSETS_PROPERTY) {
            return serde_json::from_str(json)
                .map(|o| Some((snap.snapshot_id(), o)))
                .map_err(|e| LakeError::Offsets {
                    snapshot_id: snap.snapshot_id(),
                    reason: e.to_string(),
                });
        }
        // Debug only: every hybrid query pins, and so walks, again.
        tracing::debug!(
            snapshot_id = snap.snapshot_id(),
            "snapshot carries no kafka offsets (written by another engine?); taking its parent's"
        );
        next = snap
            .parent_snapshot_id()
            .and_then(|id| meta.snapshot_by_id(id));
    }
    Ok(None)
}

/// Columns whose values differ from row to row (ids, arrival times, the
/// venue's event time in `vendor_data`): written plain, not dictionary
/// encoded. Parquet's writer would intern every value of a row group
/// into a dictionary, give up once the dictionary passes its page limit,
/// and still compress and write that page; measured on 65,536 bench rows
/// (release, `ArrowWriter`, zstd), leaving these five out cut the write
/// from 0.81 to 0.66 µs a row (the fastest of eight rounds each) and the
/// file from 36.0 to 30.0 bytes a row. Columns of few values (symbol,
/// exchange, side, price levels) keep their dictionaries. A path that a
/// table does not have (bars, gaps) is ignored.
const UNIQUE_COLUMNS: &[&[&str]] = &[
    &["message_id"],
    &["trade_id"],
    &["source_sequence"],
    &["ingestion_timestamp"],
    &["vendor_data", "key_value", "value"],
];

/// Writes `batch` as Parquet files of the table, split by its partition
/// spec and rolled at `target_file_size`, and returns them for a commit.
/// Nothing references them until a commit does.
pub async fn write_data_files(
    table: &Table,
    batch: &RecordBatch,
    target_file_size: usize,
) -> Result<Vec<iceberg::spec::DataFile>, LakeError> {
    let md = table.metadata();
    // Rows arrive sorted by (symbol, timestamp); row groups of 64k rows
    // give each symbol its own groups, whose statistics let a query on
    // one symbol skip the rest of the file. (Pages of 8k rows with page
    // statistics were tried for "the last minutes" of a symbol: on the
    // compacted 3,000-commit bench lake the recent query's p50 rose from
    // 7.6 to 11-17 ms, so pages stay at the writer's default.)
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(64 * 1024));
    for path in UNIQUE_COLUMNS {
        props = props.set_column_dictionary_enabled(
            ColumnPath::new(path.iter().map(|p| p.to_string()).collect()),
            false,
        );
    }
    // A message id is a UUID v5, a hash: the smallest and largest of a
    // file span nearly the whole range, so their bounds never prune a file
    // or a page, and keeping them compared every id with two others (its
    // share of the commit thread's samples: see docs/performance.md).
    props = props.set_column_statistics_enabled(
        ColumnPath::new(vec!["message_id".to_string()]),
        EnabledStatistics::None,
    );
    let props = props.build();
    let parquet = ParquetWriterBuilder::new(props, md.current_schema().clone());
    let rolling = RollingFileWriterBuilder::new(
        parquet,
        target_file_size,
        table.file_io().clone(),
        DefaultLocationGenerator::new(md)?,
        // a fresh prefix per flush: names never collide across restarts
        DefaultFileNameGenerator::new(
            format!("ticklake-{}", uuid::Uuid::new_v4()),
            None,
            DataFileFormat::Parquet,
        ),
    );
    let mut writer = FanoutWriter::new(DataFileWriterBuilder::new(rolling));
    for (key, part) in
        super::partition::split(md.current_schema(), md.default_partition_spec(), batch)?
    {
        writer.write(key, part).await?;
    }
    Ok(writer.close().await?)
}

/// The live entries of the current snapshot's data manifests. A table
/// with delete files (another engine's) is refused: ticklake's readers of
/// these entries do not apply them.
pub async fn live_entries(table: &Table) -> Result<Vec<ManifestEntry>, LakeError> {
    let Some(snapshot) = table.metadata().current_snapshot() else {
        return Ok(Vec::new());
    };
    Ok(manifests_with_entries(table, snapshot)
        .await?
        .into_iter()
        .flat_map(|(_, live)| live)
        .collect())
}

/// Manifests and manifest lists read at once. Each is one GET, and an
/// object store answers a GET in tens of milliseconds however small the
/// file: one at a time, a table of a thousand manifests (three venues, a
/// year of day partitions) takes most of a minute to plan.
pub(crate) const CONCURRENT_READS: usize = 8;

/// The manifest lists of `snapshots` (those that have one), read
/// [`CONCURRENT_READS`] at a time, in order.
pub(crate) async fn manifest_lists<'a>(
    table: &Table,
    snapshots: impl Iterator<Item = &'a iceberg::spec::SnapshotRef>,
) -> Result<Vec<iceberg::spec::ManifestList>, LakeError> {
    // The reads are made before they are streamed: the compiler cannot
    // prove a stream mapped by a closure over borrowed items `Send` (its
    // lifetimes become higher-ranked), and this runs on spawned tasks.
    let reads: Vec<_> = snapshots
        .filter(|s| !s.manifest_list().is_empty())
        .map(|s| async move { Ok::<_, LakeError>(table.manifest_list_reader(s).load().await?) })
        .collect();
    futures::stream::iter(reads)
        .buffered(CONCURRENT_READS)
        .try_collect()
        .await
}

/// `manifests`, each read whole, [`CONCURRENT_READS`] at a time, in order.
pub(crate) async fn load_manifests<'a>(
    io: &iceberg::io::FileIO,
    manifests: impl Iterator<Item = &'a ManifestFile>,
) -> Result<Vec<iceberg::spec::Manifest>, LakeError> {
    let reads: Vec<_> = manifests
        .map(|m| async move { Ok::<_, LakeError>(m.load_manifest(io).await?) })
        .collect();
    futures::stream::iter(reads)
        .buffered(CONCURRENT_READS)
        .try_collect()
        .await
}

/// The data manifests of `snapshot`, each with its live entries, in the
/// list's order.
pub(crate) async fn manifests_with_entries(
    table: &Table,
    snapshot: &iceberg::spec::SnapshotRef,
) -> Result<Vec<(ManifestFile, Vec<ManifestEntry>)>, LakeError> {
    let list = table.manifest_list_reader(snapshot).load().await?;
    if list
        .entries()
        .iter()
        .any(|mf| mf.content != ManifestContentType::Data)
    {
        return Err(LakeError::Catalog(format!(
            "{} has delete files (written by another engine); they are not applied here",
            table.identifier()
        )));
    }
    let manifests = load_manifests(table.file_io(), list.entries().iter()).await?;
    Ok(list
        .entries()
        .iter()
        .zip(manifests)
        .map(|(mf, manifest)| {
            let live = manifest
                .entries()
                .iter()
                .filter(|e| e.is_alive())
                .map(|e| (**e).clone())
                .collect();
            (mf.clone(), live)
        })
        .collect())
}

/// The rows of a Parquet data file of `table`, with the columns of the
/// table's current schema the file predates added as nulls, so files
/// written before and after a schema change concatenate.
pub async fn read_data_file(table: &Table, path: &str) -> Result<Vec<RecordBatch>, LakeError> {
    let bytes = table.file_io().new_input(path)?.read().await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| LakeError::Parquet(format!("{path}: {e}")))?;
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    let current = super::batch::arrow_schema(table.metadata().current_schema())?;
    batches
        .into_iter()
        .map(|b| with_added_columns(b, &current))
        .collect()
}

/// Only the named columns of a Parquet data file of `table`, as the file
/// has them (no columns added for a newer schema: ask for columns every
/// version has). Skipping the rest skips decoding them: the bars read
/// eight of the trades' columns back after every commit, and not the
/// `vendor_data` map or the instrument among the others.
pub async fn read_data_file_columns(
    table: &Table,
    path: &str,
    columns: &[&str],
) -> Result<Vec<RecordBatch>, LakeError> {
    let bytes = table.file_io().new_input(path)?.read().await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| {
            let mask = ProjectionMask::columns(b.parquet_schema(), columns.iter().copied());
            b.with_projection(mask).build()
        })
        .map_err(|e| LakeError::Parquet(format!("{path}: {e}")))?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// `batch` with the columns of `schema` it lacks appended as nulls, in
/// `schema`'s order; the columns it has keep their own fields. Columns are
/// only ever added to ticklake's tables, and only optional ones.
pub fn with_added_columns(
    batch: RecordBatch,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, LakeError> {
    if schema
        .fields()
        .iter()
        .all(|f| batch.schema().column_with_name(f.name()).is_some())
    {
        return Ok(batch);
    }
    let have = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        match have.column_with_name(f.name()) {
            Some((i, _)) => {
                fields.push(have.fields()[i].clone());
                columns.push(batch.column(i).clone());
            }
            None => {
                fields.push(f.clone());
                columns.push(arrow::array::new_null_array(
                    f.data_type(),
                    batch.num_rows(),
                ));
            }
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
    )?)
}

/// What a commit produced.
#[derive(Debug, Clone)]
pub struct Committed {
    pub snapshot_id: i64,
    pub rows: usize,
    pub files: usize,
}

/// Writes `batch` (possibly empty) as Parquet and commits it with `offsets`
/// in one fast-append. Files written by a commit that then fails are never
/// referenced, so a crash at any point leaves the table as it was.
pub async fn append(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    batch: Option<&RecordBatch>,
    offsets: &KafkaOffsets,
    target_file_size: usize,
) -> Result<Committed, LakeError> {
    let table = catalog.load_table(ident).await?;
    let mut data_files = Vec::new();
    let mut rows = 0;
    if let Some(batch) = batch.filter(|b| b.num_rows() > 0) {
        rows = batch.num_rows();
        data_files = write_data_files(&table, batch, target_file_size).await?;
    }
    let files = data_files.len();
    let json = serde_json::to_string(offsets).map_err(|e| LakeError::Catalog(e.to_string()))?;
    let tx = Transaction::new(&table);
    let tx = tx
        .fast_append()
        .with_check_duplicate(false)
        .add_data_files(data_files)
        .set_snapshot_properties(HashMap::from([(OFFSETS_PROPERTY.to_string(), json)]))
        .apply(tx)?;
    let table = tx.commit(catalog).await?;
    let snapshot_id = table
        .metadata()
        .current_snapshot()
        .map(|s| s.snapshot_id())
        .ok_or_else(|| LakeError::Catalog("commit left no current snapshot".into()))?;
    Ok(Committed {
        snapshot_id,
        rows,
        files,
    })
}

/// One partition's uncommitted run in a writer: from the offset where its
/// reading began (its last commit, or where the partition was assigned to
/// it) to the next offset it has taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub from: Option<i64>,
    pub to: i64,
}

/// The runs of a commit, by topic and partition.
pub type Runs = BTreeMap<(String, i32), Run>;

/// A commit planned on one state of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The offsets the snapshot records: the table's, with the partitions
    /// this writer read advanced to where its runs end.
    pub offsets: KafkaOffsets,
    /// Partitions whose rows below the given offset another owner committed
    /// after this writer began its run (a partition that moved between
    /// daemons of one consumer group): those rows must be left out.
    pub committed_below: BTreeMap<(String, i32), i64>,
}

/// Plans a commit of `runs` on `table` as it is now. Only the partitions
/// the writer read move; every other partition keeps the offset the table
/// holds, so daemons sharing a table through one consumer group never move
/// each other's partitions.
///
/// Partitions of `known` (the writer's positions) the table has no offset
/// for are recorded at the writer's position too, even with nothing read:
/// a restart then starts them there, and records the broker deleted below
/// that before anyone read them show as a loss, not as nothing.
pub fn plan(
    table: &Table,
    cluster_id: &str,
    runs: &Runs,
    known: &KafkaOffsets,
) -> Result<Plan, LakeError> {
    let mut offsets = match current_offsets(table)? {
        Some((_, o)) if o.cluster_id == cluster_id => o,
        // Offsets of another cluster (the embedded one is new at every
        // start) say nothing about this one's partitions.
        _ => KafkaOffsets {
            cluster_id: cluster_id.to_string(),
            topics: BTreeMap::new(),
        },
    };
    let mut committed_below = BTreeMap::new();
    for ((topic, p), run) in runs {
        let held = offsets.get(topic, *p);
        if let (Some(held), Some(from)) = (held, run.from)
            && held > from
        {
            committed_below.insert((topic.clone(), *p), held);
        }
        let next = held.map_or(run.to, |h| h.max(run.to));
        offsets.set(topic, *p, next);
    }
    if known.cluster_id == cluster_id {
        for (topic, parts) in &known.topics {
            for (p, next) in parts {
                if offsets.get(topic, *p).is_none() {
                    offsets.set(topic, *p, *next);
                }
            }
        }
    }
    Ok(Plan {
        offsets,
        committed_below,
    })
}

/// A catalog that gives a transaction back the table it was planned on.
/// `Transaction::commit` reloads the table and, when someone committed in
/// between, applies its actions again on the newer state: harmless for
/// data files, wrong for offsets merged from the older state (a partition
/// another daemon advanced meanwhile would go back, and rows it committed
/// could be committed twice). Handed the planned table, the transaction
/// asks the catalog to commit on that snapshot only; the catalog refuses
/// when the table has moved, and the writer plans again on the new state.
#[derive(Debug)]
struct Pinned<'a> {
    inner: &'a dyn Catalog,
    table: Table,
}

#[async_trait::async_trait]
impl Catalog for Pinned<'_> {
    async fn list_namespaces(
        &self,
        parent: Option<&iceberg::NamespaceIdent>,
    ) -> iceberg::Result<Vec<iceberg::NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &iceberg::NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<iceberg::Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(
        &self,
        namespace: &iceberg::NamespaceIdent,
    ) -> iceberg::Result<iceberg::Namespace> {
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &iceberg::NamespaceIdent) -> iceberg::Result<bool> {
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &iceberg::NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &iceberg::NamespaceIdent) -> iceberg::Result<()> {
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(
        &self,
        namespace: &iceberg::NamespaceIdent,
    ) -> iceberg::Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }
    async fn create_table(
        &self,
        namespace: &iceberg::NamespaceIdent,
        creation: iceberg::TableCreation,
    ) -> iceberg::Result<Table> {
        self.inner.create_table(namespace, creation).await
    }
    async fn load_table(&self, ident: &TableIdent) -> iceberg::Result<Table> {
        if ident == self.table.identifier() {
            return Ok(self.table.clone());
        }
        self.inner.load_table(ident).await
    }
    async fn drop_table(&self, ident: &TableIdent) -> iceberg::Result<()> {
        self.inner.drop_table(ident).await
    }
    async fn purge_table(&self, ident: &TableIdent) -> iceberg::Result<()> {
        self.inner.purge_table(ident).await
    }
    async fn table_exists(&self, ident: &TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(ident).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(
        &self,
        ident: &TableIdent,
        metadata_location: String,
    ) -> iceberg::Result<Table> {
        self.inner.register_table(ident, metadata_location).await
    }
    async fn update_table(&self, commit: iceberg::TableCommit) -> iceberg::Result<Table> {
        // A conflict is answered by planning again, not by the
        // transaction's own retry (which would only meet the same pinned
        // table again).
        self.inner.update_table(commit).await.map_err(|e| {
            if e.kind() == iceberg::ErrorKind::CatalogCommitConflicts {
                e.with_retryable(false)
            } else {
                e
            }
        })
    }
}

/// Commits `tx`, planned on `table`, on exactly that state: a conflict
/// ([`is_conflict`]) when anyone committed since, and nothing committed.
pub async fn commit_pinned(
    catalog: &dyn Catalog,
    table: &Table,
    tx: Transaction,
) -> Result<Table, LakeError> {
    let pinned = Pinned {
        inner: catalog,
        table: table.clone(),
    };
    Ok(tx.commit(&pinned).await?)
}

/// Whether `e` says the table moved since it was loaded.
pub fn is_conflict(e: &LakeError) -> bool {
    matches!(e, LakeError::Iceberg(e) if e.kind() == iceberg::ErrorKind::CatalogCommitConflicts)
}

/// Commits `data_files` with `offsets` as one fast-append on exactly the
/// state `table` was loaded in: if anyone committed since, this fails with
/// a conflict ([`is_conflict`]) and nothing is committed.
pub async fn append_on(
    catalog: &dyn Catalog,
    table: &Table,
    data_files: Vec<iceberg::spec::DataFile>,
    offsets: &KafkaOffsets,
) -> Result<Committed, LakeError> {
    let rows = data_files
        .iter()
        .map(|f| usize::try_from(f.record_count()).unwrap_or(usize::MAX))
        .sum();
    let files = data_files.len();
    let json = serde_json::to_string(offsets).map_err(|e| LakeError::Catalog(e.to_string()))?;
    let tx = Transaction::new(table);
    let tx = tx
        .fast_append()
        .with_check_duplicate(false)
        .add_data_files(data_files)
        .set_snapshot_properties(HashMap::from([(OFFSETS_PROPERTY.to_string(), json)]))
        .apply(tx)?;
    let pinned = Pinned {
        inner: catalog,
        table: table.clone(),
    };
    let table = tx.commit(&pinned).await?;
    let snapshot_id = table
        .metadata()
        .current_snapshot()
        .map(|s| s.snapshot_id())
        .ok_or_else(|| LakeError::Catalog("commit left no current snapshot".into()))?;
    Ok(Committed {
        snapshot_id,
        rows,
        files,
    })
}

/// Message ids of the rows ingested at or after `since_us` (UTC µs), read
/// from the current snapshot. Files whose ingestion times all lie before it
/// are pruned by their column statistics, so this reads only recent files.
pub async fn recent_message_ids(
    table: &Table,
    since_us: i64,
) -> Result<Vec<(String, i64)>, LakeError> {
    use arrow::array::{Array as _, AsArray};
    use arrow::datatypes::TimestampMicrosecondType;
    use futures::TryStreamExt;
    use iceberg::expr::Reference;
    use iceberg::spec::Datum;

    if table.metadata().current_snapshot().is_none() {
        return Ok(Vec::new());
    }
    let scan = table
        .scan()
        .select(["message_id", "ingestion_timestamp"])
        .with_filter(
            Reference::new("ingestion_timestamp")
                .greater_than_or_equal_to(Datum::timestamptz_micros(since_us)),
        )
        .build()?;
    let mut stream = scan.to_arrow().await?;
    let mut ids = Vec::new();
    while let Some(batch) = stream.try_next().await? {
        let (Some(id), Some(at)) = (
            batch.column(0).as_string_opt::<i32>(),
            batch
                .column(1)
                .as_primitive_opt::<TimestampMicrosecondType>(),
        ) else {
            return Err(LakeError::Catalog(format!(
                "message_id and ingestion_timestamp have types {} and {}",
                batch.column(0).data_type(),
                batch.column(1).data_type()
            )));
        };
        for i in 0..batch.num_rows() {
            if id.is_valid(i) {
                let t = if at.is_valid(i) {
                    at.value(i)
                } else {
                    since_us
                };
                ids.push((id.value(i).to_string(), t));
            }
        }
    }
    // Oldest first: the writer forgets in the order it remembers, and
    // compacted files are sorted by symbol, not by time.
    ids.sort_by_key(|(_, t)| *t);
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::lake::{self, TableKind};

    fn offsets(next: i64) -> KafkaOffsets {
        one_partition(next)
    }

    #[test]
    fn a_span_runs_while_offsets_follow_on_in_one_partition() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut spans = Vec::new();
        for (t, p, o) in [
            (&a, 0, 5),
            (&a, 0, 6),
            (&a, 0, 7),
            (&a, 1, 8),  // another partition
            (&a, 0, 8),  // back again: a new span, not a merge across
            (&a, 0, 10), // a hole
            (&b, 0, 11), // another topic
            (&b, 0, 12),
        ] {
            Span::push(&mut spans, t, p, o);
        }
        let got: Vec<_> = spans
            .iter()
            .map(|s| (&*s.topic, s.partition, s.first, s.next))
            .collect();
        assert_eq!(
            got,
            [
                ("a", 0, 5, 8),
                ("a", 1, 8, 9),
                ("a", 0, 8, 9),
                ("a", 0, 10, 11),
                ("b", 0, 11, 13),
            ]
        );
    }

    /// A snapshot another engine appends carries no offsets; the positions
    /// are still those of the newest ticklake commit below it, never "none"
    /// (which would send the consumer back to offset 0).
    #[tokio::test]
    async fn offsets_come_from_the_newest_snapshot_that_carries_them() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::default().under(dir.path());
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        let table = lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
            .await
            .unwrap();
        assert_eq!(current_offsets(&table).unwrap(), None, "no snapshot yet");
        let ident = lake::table_ident(&cfg, TableKind::Trades);
        append(catalog.as_ref(), &ident, None, &offsets(5), 1 << 20)
            .await
            .unwrap();
        let ours = append(catalog.as_ref(), &ident, None, &offsets(9), 1 << 20)
            .await
            .unwrap();
        // Two foreign snapshots on top, with properties of their own (as
        // Spark records its app id) but not ours.
        for _ in 0..2 {
            let table = catalog.load_table(&ident).await.unwrap();
            let tx = Transaction::new(&table);
            let tx = tx
                .fast_append()
                .set_snapshot_properties(HashMap::from([(
                    "spark.app.id".to_string(),
                    "another-engine".to_string(),
                )]))
                .apply(tx)
                .unwrap();
            tx.commit(catalog.as_ref()).await.unwrap();
        }
        let table = catalog.load_table(&ident).await.unwrap();
        assert_ne!(
            table.metadata().current_snapshot().map(|s| s.snapshot_id()),
            Some(ours.snapshot_id),
            "the foreign snapshots are current"
        );
        assert_eq!(
            current_offsets(&table).unwrap(),
            Some((ours.snapshot_id, offsets(9)))
        );
    }

    /// The per-row columns are written plain; columns of few values keep
    /// their dictionaries (what readers and file sizes rely on). Every
    /// column but the message id keeps its statistics.
    #[tokio::test]
    async fn unique_columns_are_written_without_a_dictionary() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        let (_, _, table, _, schema) = lake::test_lake(dir.path()).await;
        let rows: Vec<_> = (0..500)
            .map(|i| {
                let mut vendor = crate::model::VendorData::new();
                vendor.insert("event_time_ms".into(), (1_000 + i).to_string());
                crate::model::TradeV2::builder("BINANCE", "BTCUSDT", &i.to_string(), 1_000 * i)
                    .message_id(format!("m-{i}"))
                    .source_sequence(Some(i))
                    .vendor_data(Some(vendor))
                    .build()
            })
            .collect();
        let batch = crate::lake::batch::trades_batch(&schema, &rows).unwrap();
        let files = write_data_files(&table, &batch, 1 << 30).await.unwrap();
        assert_eq!(files.len(), 1);
        let bytes = table
            .file_io()
            .new_input(files[0].file_path())
            .unwrap()
            .read()
            .await
            .unwrap();
        let reader = SerializedFileReader::new(bytes).unwrap();
        let group = reader.metadata().row_group(0);
        let dictionary: BTreeMap<String, bool> = group
            .columns()
            .iter()
            .map(|c| {
                let path = c.column_path().string();
                (path, c.dictionary_page_offset().is_some())
            })
            .collect();
        for plain in [
            "message_id",
            "trade_id",
            "source_sequence",
            "ingestion_timestamp",
            "vendor_data.key_value.value",
        ] {
            assert_eq!(dictionary.get(plain), Some(&false), "{plain}");
        }
        for kept in ["symbol", "exchange", "side", "price", "timestamp"] {
            assert_eq!(dictionary.get(kept), Some(&true), "{kept}");
        }
        // The message id alone goes without statistics, in the file and
        // so in the table's bounds; the columns queries prune by keep both.
        let stats: BTreeMap<String, bool> = group
            .columns()
            .iter()
            .map(|c| (c.column_path().string(), c.statistics().is_some()))
            .collect();
        assert_eq!(stats.get("message_id"), Some(&false));
        for kept in ["symbol", "exchange", "timestamp", "trade_id"] {
            assert_eq!(stats.get(kept), Some(&true), "{kept}");
        }
        let iceberg_schema = table.metadata().current_schema();
        let id_of = |name: &str| iceberg_schema.field_by_name(name).unwrap().id;
        let bounds = files[0].lower_bounds();
        assert!(!bounds.contains_key(&id_of("message_id")));
        assert!(bounds.contains_key(&id_of("symbol")));
        assert!(bounds.contains_key(&id_of("timestamp")));
    }

    /// The run of partition `p` of topic `t`.
    fn run_of(p: i32, from: i64, to: i64) -> Runs {
        Runs::from([(
            ("t".to_string(), p),
            Run {
                from: Some(from),
                to,
            },
        )])
    }

    fn two_partitions(a: i64, b: i64) -> KafkaOffsets {
        let mut o = one_partition(a);
        o.set("t", 1, b);
        o
    }

    /// A commit moves only the partitions its writer read; rows below what
    /// another owner committed since the writer's run began are left out.
    #[tokio::test]
    async fn a_plan_moves_only_the_partitions_read_and_leaves_out_what_another_owner_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (_cfg, catalog, _table, ident, _schema) = lake::test_lake(dir.path()).await;
        append(
            catalog.as_ref(),
            &ident,
            None,
            &two_partitions(100, 50),
            1 << 20,
        )
        .await
        .unwrap();
        let table = catalog.load_table(&ident).await.unwrap();
        let runs = run_of(0, 100, 150);
        let p = plan(&table, "c", &runs, &KafkaOffsets::default()).unwrap();
        assert_eq!(
            p.offsets,
            two_partitions(150, 50),
            "partition 1 is not ours to move"
        );
        assert!(p.committed_below.is_empty());
        // Partition 1 read from 40 while its other owner had committed to 50.
        let runs = run_of(1, 40, 45);
        let p = plan(&table, "c", &runs, &KafkaOffsets::default()).unwrap();
        assert_eq!(p.offsets, two_partitions(100, 50), "never moved back");
        assert_eq!(
            p.committed_below,
            BTreeMap::from([(("t".to_string(), 1), 50)])
        );
        // Partitions the table has no offset for are recorded where the
        // writer knows them to start; the table's own are never moved back.
        let mut known = two_partitions(90, 0);
        known.set("t", 2, 7);
        let p = plan(&table, "c", &Runs::new(), &known).unwrap();
        let mut want = two_partitions(100, 50);
        want.set("t", 2, 7);
        assert_eq!(p.offsets, want);
        // Offsets of another cluster say nothing of this one.
        let p = plan(&table, "other", &runs, &KafkaOffsets::default()).unwrap();
        assert_eq!(p.offsets.cluster_id, "other");
        assert_eq!(p.offsets.get("t", 0), None);
        assert!(p.committed_below.is_empty());
    }

    /// A commit planned on a table someone has committed to since fails as
    /// a conflict and commits nothing; planned again, it lands.
    #[tokio::test]
    async fn a_commit_on_a_table_that_moved_conflicts_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_cfg, catalog, _table, ident, _schema) = lake::test_lake(dir.path()).await;
        append(
            catalog.as_ref(),
            &ident,
            None,
            &two_partitions(10, 10),
            1 << 20,
        )
        .await
        .unwrap();
        let planned_on = catalog.load_table(&ident).await.unwrap();
        let theirs = append(
            catalog.as_ref(),
            &ident,
            None,
            &two_partitions(10, 20),
            1 << 20,
        )
        .await
        .unwrap();
        let stale = plan(
            &planned_on,
            "c",
            &run_of(0, 10, 30),
            &KafkaOffsets::default(),
        )
        .unwrap();
        let err = append_on(catalog.as_ref(), &planned_on, Vec::new(), &stale.offsets)
            .await
            .unwrap_err();
        assert!(is_conflict(&err), "{err}");
        let now = catalog.load_table(&ident).await.unwrap();
        assert_eq!(
            now.metadata().current_snapshot().map(|s| s.snapshot_id()),
            Some(theirs.snapshot_id)
        );
        let fresh = plan(&now, "c", &run_of(0, 10, 30), &KafkaOffsets::default()).unwrap();
        append_on(catalog.as_ref(), &now, Vec::new(), &fresh.offsets)
            .await
            .unwrap();
        let now = catalog.load_table(&ident).await.unwrap();
        assert_eq!(
            current_offsets(&now).unwrap().map(|(_, o)| o),
            Some(two_partitions(30, 20)),
            "both owners' partitions as each left them"
        );
    }
}
