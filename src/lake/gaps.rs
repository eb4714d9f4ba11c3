//! `market.gaps`: one row per settled gap in a feed's trade ids (which ids
//! were missing, when that was seen, and how it ended), written by the
//! gaps actor (`actors::gaps`) in small fast-appends.
//!
//! The rows do not come from Kafka, so a commit carries no offsets.
//! Instead each commit records an id of its batch of rows
//! ([`BATCH_PROPERTY`]): a commit whose reply was lost (the catalog
//! swapped the pointer, then the connection dropped) is found again by
//! that id on the retry and not appended twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, new_null_array,
};
use arrow::datatypes::{DataType, Field, SchemaRef};
use backon::{BackoffBuilder, ExponentialBuilder};
use iceberg::spec::{NestedField, PrimitiveType, Schema, Transform, Type, UnboundPartitionSpec};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, ErrorKind, NamespaceIdent, TableIdent};
use serde::Serialize;

use super::LakeError;
use super::commit::write_data_files;
use super::schema::GAPS_TABLE;
use crate::config::Config;

/// One gap in a feed's trade ids, as `market.gaps` keeps it: which ids
/// were missing, when that was seen, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GapRecord {
    pub exchange: String,
    /// The venue's symbol, as in the trades (`BTCUSDT`, `BTC/USD`).
    pub symbol: String,
    /// The id space the ids count in: `trade`, or Binance's `aggTrade`.
    pub id_space: String,
    /// First missing id.
    pub from_id: i64,
    /// Last missing id.
    pub to_id: i64,
    /// Trades the gap lacked: `to_id - from_id + 1`.
    pub missing: i64,
    /// Of those, the trades the fill brought in.
    pub filled: i64,
    /// When the gap was seen, µs since the epoch.
    pub detected_at_us: i64,
    /// When its last trade came in; `None` when it was given up.
    pub filled_at_us: Option<i64>,
    /// `rest` (filled from the venue's REST history), `late` (its trades
    /// arrived on a live connection after all), `unrecoverable` (the venue
    /// no longer has them, or refused) or `not_filled` (backfill is off).
    pub how: String,
    /// Why, for `unrecoverable` and partial fills.
    pub detail: Option<String>,
}

/// Commits of one batch that met another writer's, each after Iceberg's
/// own retries (`commit.retry.*`), before the error is returned. A writer
/// loses to each other writer at most once, so this outlasts four writers
/// at once even with Iceberg's retries off.
const CONFLICT_ATTEMPTS: u32 = 5;

/// Snapshot-summary key of a gaps commit: the id of the batch of rows it
/// added.
pub const BATCH_PROPERTY: &str = "ticklake.gaps.batch";

/// `market.gaps`, in the configured namespace.
pub fn ident(cfg: &Config) -> TableIdent {
    TableIdent::new(
        NamespaceIdent::new(cfg.lake.namespace.clone()),
        GAPS_TABLE.to_string(),
    )
}

fn field(id: i32, name: &str, t: PrimitiveType, required: bool) -> Arc<NestedField> {
    Arc::new(NestedField::new(id, name, Type::Primitive(t), required))
}

/// The columns of `market.gaps`, as [`GapRecord`] has them; timestamps are
/// `timestamptz` (UTC µs). Field ids are fixed: readers key on them.
pub fn schema() -> iceberg::Result<Schema> {
    use PrimitiveType::{Long, String as Text, Timestamptz};
    Schema::builder()
        .with_schema_id(0)
        .with_fields(vec![
            field(1, "exchange", Text, true),
            field(2, "symbol", Text, true),
            field(3, "id_space", Text, true),
            field(4, "from_id", Long, true),
            field(5, "to_id", Long, true),
            field(6, "missing", Long, true),
            field(7, "filled", Long, true),
            field(8, "detected_at", Timestamptz, true),
            field(9, "filled_at", Timestamptz, false),
            field(10, "how", Text, true),
            field(11, "detail", Text, false),
        ])
        .build()
}

/// Partitioned by day(detected_at) alone: gaps are few, and an exchange
/// partition would only make more, smaller files.
pub fn partition_spec() -> iceberg::Result<UnboundPartitionSpec> {
    Ok(UnboundPartitionSpec::builder()
        .add_partition_field(8, "detected_at_day", Transform::Day)?
        .build())
}

/// Loads `market.gaps`, creating it (and the namespace) on first use.
pub async fn ensure_table(catalog: &dyn Catalog, cfg: &Config) -> Result<Table, LakeError> {
    super::ensure(catalog, &ident(cfg), schema()?, partition_spec()?).await
}

/// `rows` as a batch of `schema` (the table's Arrow schema, field ids
/// included), column by column by name, so the order of the table's
/// columns does not matter. A column this build does not know (added by a
/// later one) is written null if it may be, refused if it is required.
pub fn to_batch(rows: &[GapRecord], schema: &SchemaRef) -> Result<RecordBatch, LakeError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| column(rows, f))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn column(rows: &[GapRecord], f: &Field) -> Result<ArrayRef, LakeError> {
    let text = |g: fn(&GapRecord) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(g)))
    };
    let long = |g: fn(&GapRecord) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(g)))
    };
    // The zone the table's Arrow type has (`+00:00`), so the batch matches.
    let zone = match f.data_type() {
        DataType::Timestamp(_, zone) => zone.clone(),
        _ => None,
    };
    let time = |g: fn(&GapRecord) -> Option<i64>| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter(rows.iter().map(g))
                .with_timezone_opt(zone.clone()),
        )
    };
    Ok(match f.name().as_str() {
        "exchange" => text(|r| &r.exchange),
        "symbol" => text(|r| &r.symbol),
        "id_space" => text(|r| &r.id_space),
        "from_id" => long(|r| r.from_id),
        "to_id" => long(|r| r.to_id),
        "missing" => long(|r| r.missing),
        "filled" => long(|r| r.filled),
        "detected_at" => time(|r| Some(r.detected_at_us)),
        "filled_at" => time(|r| r.filled_at_us),
        "how" => text(|r| &r.how),
        "detail" => Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.detail.as_deref()),
        )),
        _ if f.is_nullable() => new_null_array(f.data_type(), rows.len()),
        other => {
            return Err(LakeError::Catalog(format!(
                "{GAPS_TABLE}: required column {other} is unknown to this build"
            )));
        }
    })
}

/// The snapshot that added batch `batch_id`, if one did.
pub fn committed_batch(table: &Table, batch_id: &str) -> Option<i64> {
    table
        .metadata()
        .snapshots()
        .find(|s| {
            s.summary()
                .additional_properties
                .get(BATCH_PROPERTY)
                .is_some_and(|v| v == batch_id)
        })
        .map(|s| s.snapshot_id())
}

/// What [`append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub snapshot_id: i64,
    pub rows: usize,
    /// Data files written (0 when the batch was found committed already).
    pub files: usize,
    /// An earlier attempt had committed the batch; nothing was added.
    pub already: bool,
}

/// Appends `rows` to `ident` in one fast-append recording `batch_id`.
/// A retry of a batch (same id) that an earlier attempt committed adds
/// nothing. A commit that meets another writer's (a conflict on the
/// catalog's compare-and-swap) is retried on the reloaded table, by
/// Iceberg's transaction (the table's `commit.retry.*`), as every commit
/// path here is, then up to [`CONFLICT_ATTEMPTS`] times here with the
/// same files; any other error is returned at once, and the caller keeps
/// the rows for a later try.
pub async fn append(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    batch_id: &str,
    rows: &[GapRecord],
    target_file_size: usize,
) -> Result<Appended, LakeError> {
    let mut table = catalog.load_table(ident).await?;
    if let Some(snapshot_id) = committed_batch(&table, batch_id) {
        return Ok(Appended {
            snapshot_id,
            rows: rows.len(),
            files: 0,
            already: true,
        });
    }
    let schema = super::batch::arrow_schema(table.metadata().current_schema())?;
    let batch = to_batch(rows, &schema)?;
    let data_files = if batch.num_rows() > 0 {
        write_data_files(&table, &batch, target_file_size).await?
    } else {
        Vec::new()
    };
    let files = data_files.len();
    let mut backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build();
    let mut attempt = 1;
    let table = loop {
        let tx = Transaction::new(&table);
        let tx = tx
            .fast_append()
            .with_check_duplicate(false)
            .add_data_files(data_files.clone())
            .set_snapshot_properties(HashMap::from([(
                BATCH_PROPERTY.to_string(),
                batch_id.to_string(),
            )]))
            .apply(tx)?;
        match tx.commit(catalog).await {
            Ok(t) => break t,
            // The files written stay valid: they are committed again on
            // the table as the other writer left it.
            Err(e)
                if e.kind() == ErrorKind::CatalogCommitConflicts && attempt < CONFLICT_ATTEMPTS =>
            {
                let wait = backoff.next().unwrap_or(Duration::from_secs(2));
                tracing::debug!(error = %e, attempt, retry_in_ms = wait.as_millis() as u64,
                    "gaps: commit met another writer's; retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
                table = catalog.load_table(ident).await?;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let snapshot_id = table
        .metadata()
        .current_snapshot_id()
        .ok_or_else(|| LakeError::Catalog("commit left no current snapshot".into()))?;
    Ok(Appended {
        snapshot_id,
        rows: rows.len(),
        files,
        already: false,
    })
}

/// Every row of `market.gaps` as records, in (exchange, symbol, from_id)
/// order: for tests and tools that check what was written.
pub async fn read_all(table: &Table) -> Result<Vec<GapRecord>, LakeError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
    use futures::TryStreamExt;

    if table.metadata().current_snapshot().is_none() {
        return Ok(Vec::new());
    }
    let batches: Vec<RecordBatch> = table
        .scan()
        .build()?
        .to_arrow()
        .await?
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for b in &batches {
        let col = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| LakeError::Parquet(format!("{GAPS_TABLE} rows without {name}")))
        };
        let wrong =
            |name: &str| LakeError::Parquet(format!("{GAPS_TABLE}.{name}: unexpected type"));
        let text = |name: &str| col(name)?.as_string_opt::<i32>().ok_or_else(|| wrong(name));
        let long = |name: &str| {
            col(name)?
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| wrong(name))
        };
        let time = |name: &str| {
            col(name)?
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(|| wrong(name))
        };
        let (exchange, symbol, id_space, how, detail) = (
            text("exchange")?,
            text("symbol")?,
            text("id_space")?,
            text("how")?,
            text("detail")?,
        );
        let (from_id, to_id, missing, filled) = (
            long("from_id")?,
            long("to_id")?,
            long("missing")?,
            long("filled")?,
        );
        let (detected_at, filled_at) = (time("detected_at")?, time("filled_at")?);
        for i in 0..b.num_rows() {
            out.push(GapRecord {
                exchange: exchange.value(i).to_string(),
                symbol: symbol.value(i).to_string(),
                id_space: id_space.value(i).to_string(),
                from_id: from_id.value(i),
                to_id: to_id.value(i),
                missing: missing.value(i),
                filled: filled.value(i),
                detected_at_us: detected_at.value(i),
                filled_at_us: filled_at.is_valid(i).then(|| filled_at.value(i)),
                how: how.value(i).to_string(),
                detail: detail.is_valid(i).then(|| detail.value(i).to_string()),
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.exchange, &a.symbol, a.from_id).cmp(&(&b.exchange, &b.symbol, b.from_id))
    });
    Ok(out)
}

/// Records for tests: `n` gaps of `exchange`, the first filled from REST,
/// the second given up (no fill time, a reason), the rest arrived late.
#[cfg(test)]
pub(crate) fn sample(exchange: &str, n: usize, first_id: i64) -> Vec<GapRecord> {
    // 2026-03-01T10:00:00Z, then a day apart: rows in several partitions.
    const T0: i64 = 1_772_359_200_000_000;
    const DAY: i64 = 86_400_000_000;
    (0..n as i64)
        .map(|i| {
            let from_id = first_id + i * 100;
            let detected_at_us = T0 + i * DAY;
            let (how, filled_at_us, detail, filled) = match i {
                0 => ("rest", Some(detected_at_us + 1_500_000), None, 5),
                1 => (
                    "unrecoverable",
                    None,
                    Some("HTTP 451 from the venue".to_string()),
                    0,
                ),
                _ => ("late", Some(detected_at_us + 20_000), None, 5),
            };
            GapRecord {
                exchange: exchange.to_string(),
                symbol: "BTCUSDT".to_string(),
                id_space: "trade".to_string(),
                from_id,
                to_id: from_id + 4,
                missing: 5,
                filled,
                detected_at_us,
                filled_at_us,
                how: how.to_string(),
                detail,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake;

    async fn lake_with_gaps(dir: &std::path::Path) -> (Config, Arc<dyn Catalog>, TableIdent) {
        let cfg = Config::default().under(dir);
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        ensure_table(catalog.as_ref(), &cfg).await.unwrap();
        let ident = ident(&cfg);
        (cfg, catalog, ident)
    }

    #[tokio::test]
    async fn gaps_round_trip_with_every_field_and_a_second_batch_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, catalog, ident) = lake_with_gaps(dir.path()).await;
        assert_eq!(ident.to_string(), format!("{}.gaps", cfg.lake.namespace));
        let table = catalog.load_table(&ident).await.unwrap();
        let spec = table.metadata().default_partition_spec();
        assert_eq!(spec.fields().len(), 1);
        assert_eq!(spec.fields()[0].transform, Transform::Day);
        assert_eq!(read_all(&table).await.unwrap(), vec![], "empty at first");

        let first = sample("BINANCE", 3, 1000);
        let a = append(catalog.as_ref(), &ident, "b1", &first, 1 << 20)
            .await
            .unwrap();
        assert_eq!((a.rows, a.already), (3, false));
        assert_eq!(a.files, 3, "one file per day partition");
        let table = catalog.load_table(&ident).await.unwrap();
        assert_eq!(read_all(&table).await.unwrap(), first);

        let second = sample("KRAKEN", 2, 7);
        append(catalog.as_ref(), &ident, "b2", &second, 1 << 20)
            .await
            .unwrap();
        let table = catalog.load_table(&ident).await.unwrap();
        let mut want = first.clone();
        want.extend(second);
        assert_eq!(read_all(&table).await.unwrap(), want);
        assert_eq!(table.metadata().snapshots().count(), 2);
    }

    /// A retry of a batch whose commit landed (its reply lost) adds nothing.
    #[tokio::test]
    async fn a_batch_committed_already_is_not_appended_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (_cfg, catalog, ident) = lake_with_gaps(dir.path()).await;
        let rows = sample("BINANCE", 2, 1);
        let a = append(catalog.as_ref(), &ident, "same", &rows, 1 << 20)
            .await
            .unwrap();
        let b = append(catalog.as_ref(), &ident, "same", &rows, 1 << 20)
            .await
            .unwrap();
        assert!(b.already);
        assert_eq!(b.snapshot_id, a.snapshot_id);
        let table = catalog.load_table(&ident).await.unwrap();
        assert_eq!(read_all(&table).await.unwrap(), rows);
        assert_eq!(committed_batch(&table, "same"), Some(a.snapshot_id));
        assert_eq!(committed_batch(&table, "other"), None);
    }

    /// Writers committing at the same time meet on the catalog's
    /// compare-and-swap; the losers retry on the new table and every batch
    /// lands once. Iceberg's own retries are off here, so this is
    /// `append`'s loop at work (they conflict in most runs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let (_cfg, catalog, ident) = lake_with_gaps(dir.path()).await;
        let table = catalog.load_table(&ident).await.unwrap();
        let tx = Transaction::new(&table);
        let tx = tx
            .update_table_properties()
            .set("commit.retry.num-retries".into(), "0".into())
            .apply(tx)
            .unwrap();
        tx.commit(catalog.as_ref()).await.unwrap();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (catalog, ident) = (catalog.clone(), ident.clone());
                tokio::spawn(async move {
                    let rows = sample(&format!("X{w}"), 3, 10);
                    append(catalog.as_ref(), &ident, &format!("w{w}"), &rows, 1 << 20).await
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap().unwrap();
        }
        let table = catalog.load_table(&ident).await.unwrap();
        let rows = read_all(&table).await.unwrap();
        assert_eq!(rows.len(), 12);
        assert_eq!(table.metadata().snapshots().count(), 4);
    }

    /// SQL sees `market.gaps` through the catalog provider, which lists the
    /// namespace's tables when the session is made.
    #[tokio::test]
    async fn sql_selects_from_market_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, catalog, ident) = lake_with_gaps(dir.path()).await;
        append(
            catalog.as_ref(),
            &ident,
            "b",
            &sample("BINANCE", 3, 1),
            1 << 20,
        )
        .await
        .unwrap();
        let ctx = crate::query::session::session(&cfg).await.unwrap();
        let batches = crate::query::session::run_sql(
            &ctx,
            "select how, count(*) as n, count(filled_at) as timed, count(detail) as why \
             from market.gaps group by how order by how",
        )
        .await
        .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        for line in [
            "| late          | 1 | 1     | 0   |",
            "| rest          | 1 | 1     | 0   |",
            "| unrecoverable | 1 | 0     | 1   |",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        // The README's example runs (its answer depends on today).
        crate::query::session::run_sql(
            &ctx,
            "SELECT exchange, symbol, how, count(*) AS gaps, sum(missing - filled) AS lost \
             FROM market.gaps WHERE detected_at >= now() - INTERVAL '1 day' \
             GROUP BY exchange, symbol, how ORDER BY lost DESC",
        )
        .await
        .unwrap();
    }
}
