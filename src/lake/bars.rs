//! Minute bars kept at write time: `market.ohlcv_1m`.
//!
//! The bars are a summary of `market.trades`, kept by following its
//! snapshots rather than Kafka: each bars commit summarizes the rows that
//! the trades snapshots after the last summarized one added, and records
//! the sequence number of the newest trades snapshot it covers
//! ([`COVERED_PROPERTY`]). A crash before a bars commit leaves that number
//! where it was, and the next run summarizes the same snapshots again; a
//! crash after it, the next run starts past them. So every trade is
//! summarized exactly once, whichever the order of the two commits, with
//! no second consumer and no offsets of its own to keep in step.
//!
//! A row is a partial bar: the trades of one (exchange, symbol, minute)
//! that one bars commit saw. A minute whose trades came over several
//! trades commits, or a trade that arrived after its minute was
//! summarized (late), gives the minute another row, a correction; readers
//! merge a minute's rows (`bars_schema` says how), which gives exactly
//! what computing from the raw trades gives.
//!
//! Compaction merges a minute's partial rows into one (`merge_partials`).
//! Snapshots that add no rows (`replace`, from compaction) are skipped;
//! deletes by another engine are not reflected (ticklake never deletes).
//! A first run over a lake with history summarizes the current snapshot
//! whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use iceberg::spec::{ManifestStatus, Operation, SnapshotRef};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableIdent};
use serde::Serialize;

use super::LakeError;
use super::commit::{live_entries, read_data_file_columns, write_data_files};

/// Snapshot-summary key of a bars commit: the sequence number of the
/// newest trades snapshot it covers.
pub const COVERED_PROPERTY: &str = "ticklake.ohlcv.trades_sequence";

const MINUTE_US: i64 = 60_000_000;

/// Where a trade sits in the order bars take trades in: timestamp, then
/// source sequence (none first), then message id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub ts: i64,
    pub seq: Option<i64>,
    pub id: String,
}

/// Some trades of one (exchange, symbol, minute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    pub open: i128,
    pub high: i128,
    pub low: i128,
    pub close: i128,
    pub volume: i128,
    pub trades: i64,
    pub open_key: Key,
    pub close_key: Key,
    pub first_trade_id: String,
    pub last_trade_id: String,
}

impl Partial {
    /// Takes in another partial bar of the same minute: the two as one
    /// (its strings copied only where they win).
    fn absorb(&mut self, o: &Partial) {
        self.high = self.high.max(o.high);
        self.low = self.low.min(o.low);
        self.volume += o.volume;
        self.trades += o.trades;
        if o.open_key < self.open_key {
            self.open = o.open;
            self.first_trade_id.clone_from(&o.first_trade_id);
            self.open_key.clone_from(&o.open_key);
        }
        if o.close_key > self.close_key {
            self.close = o.close;
            self.last_trade_id.clone_from(&o.last_trade_id);
            self.close_key.clone_from(&o.close_key);
        }
    }

    /// Heap and inline bytes, for a cache's budget.
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.open_key.id.len()
            + self.close_key.id.len()
            + self.first_trade_id.len()
            + self.last_trade_id.len()
    }
}

/// Loads `market.ohlcv_1m`, creating it (and the namespace) on first use.
pub async fn ensure_table(
    catalog: &dyn Catalog,
    cfg: &crate::config::Config,
) -> Result<Table, LakeError> {
    super::ensure(
        catalog,
        &super::bars_ident(cfg),
        super::schema::bars_schema()?,
        super::schema::bars_partition_spec()?,
    )
    .await
}

/// Compaction's merge of the bars table's rows: a minute's partial bars,
/// however many commits and corrections gave them, become one row, so a
/// day's bars stay 1,440 rows a symbol however often the trades commit.
/// Readers merge partials the same way, so their answers do not change.
pub fn merge_partials(rows: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, LakeError> {
    let mut a = Aggregator::default();
    a.add_partials(rows, |_, _, _| true)?;
    a.into_batch(schema)
}

/// Partial bars by (exchange, symbol, minute start in µs).
#[derive(Debug, Default)]
pub struct Aggregator {
    bars: BTreeMap<(String, String, i64), Partial>,
}

fn strings(b: &RecordBatch, name: &str) -> Result<StringArray, LakeError> {
    let c = column(b, name)?;
    let c = arrow::compute::cast(c, &DataType::Utf8)?;
    Ok(c.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .unwrap_or_else(|| StringArray::from(Vec::<Option<String>>::new())))
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, LakeError> {
    b.column_by_name(name)
        .ok_or_else(|| LakeError::Parquet(format!("trades rows without column {name}")))
}

/// A timestamp column as microseconds without a zone.
fn micros(b: &RecordBatch, name: &str) -> Result<TimestampMicrosecondArray, LakeError> {
    let c = arrow::compute::cast(
        column(b, name)?,
        &DataType::Timestamp(TimeUnit::Microsecond, None),
    )?;
    c.as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .cloned()
        .ok_or_else(|| LakeError::Parquet(format!("{name} is not in microseconds")))
}

/// Unscaled decimals as a column of the trades' scale.
fn decimals(values: impl Iterator<Item = i128>, precision: u8) -> Result<ArrayRef, LakeError> {
    let a = Decimal128Array::from_iter_values(values)
        .with_precision_and_scale(precision, crate::model::DECIMAL_SCALE as i8)?;
    Ok(Arc::new(a))
}

fn typed<T: Clone + 'static>(b: &RecordBatch, name: &str) -> Result<T, LakeError> {
    column(b, name)?
        .as_any()
        .downcast_ref::<T>()
        .cloned()
        .ok_or_else(|| LakeError::Parquet(format!("column {name} has an unexpected type")))
}

impl Aggregator {
    /// The trades columns [`add`](Self::add) reads.
    pub const TRADE_COLUMNS: [&'static str; 8] = [
        "exchange",
        "symbol",
        "message_id",
        "trade_id",
        "timestamp",
        "price",
        "quantity",
        "source_sequence",
    ];

    /// Adds trades rows (the trades table's columns), those for which
    /// `keep(exchange, symbol, timestamp)` holds.
    pub fn add(
        &mut self,
        b: &RecordBatch,
        keep: impl Fn(&str, &str, i64) -> bool,
    ) -> Result<(), LakeError> {
        let exchange = strings(b, "exchange")?;
        let symbol = strings(b, "symbol")?;
        let message_id = strings(b, "message_id")?;
        let trade_id = strings(b, "trade_id")?;
        let ts = micros(b, "timestamp")?;
        let price: Decimal128Array = typed(b, "price")?;
        let quantity: Decimal128Array = typed(b, "quantity")?;
        let seq: Int64Array = typed(b, "source_sequence")?;
        // Where row i sits in the order bars take trades in, borrowed: the
        // same order as `Key`'s (timestamp, sequence, message id).
        let key_at = |i: usize| {
            (
                ts.value(i),
                seq.is_valid(i).then(|| seq.value(i)),
                message_id.value(i),
            )
        };
        let owned_key = |i: usize| Key {
            ts: ts.value(i),
            seq: seq.is_valid(i).then(|| seq.value(i)),
            id: message_id.value(i).to_string(),
        };
        // Rows come sorted by (symbol, timestamp), as the writer lays them
        // out, so a symbol's minute is one run of rows. Each run is folded
        // on borrowed values and taken into the map once: copying the
        // strings of every row into lookup keys was most of this
        // function's cost, on the commit thread, once per trade.
        let n = b.num_rows();
        let mut i = 0;
        while i < n {
            let (x, s) = (exchange.value(i), symbol.value(i));
            let minute = ts.value(i).div_euclid(MINUTE_US) * MINUTE_US;
            // (open row, close row, high, low, volume, trades)
            let mut run: Option<(usize, usize, i128, i128, i128, i64)> = None;
            let mut j = i;
            while j < n
                && exchange.value(j) == x
                && symbol.value(j) == s
                && ts.value(j).div_euclid(MINUTE_US) * MINUTE_US == minute
            {
                if keep(x, s, ts.value(j)) {
                    let (p, q) = (price.value(j), quantity.value(j));
                    run = Some(match run {
                        None => (j, j, p, p, q, 1),
                        Some((o, c, high, low, volume, trades)) => (
                            if key_at(j) < key_at(o) { j } else { o },
                            if key_at(j) > key_at(c) { j } else { c },
                            high.max(p),
                            low.min(p),
                            volume + q,
                            trades + 1,
                        ),
                    });
                }
                j += 1;
            }
            i = j;
            let Some((o, c, high, low, volume, trades)) = run else {
                continue;
            };
            let part = Partial {
                open: price.value(o),
                high,
                low,
                close: price.value(c),
                volume,
                trades,
                open_key: owned_key(o),
                close_key: owned_key(c),
                first_trade_id: trade_id.value(o).to_string(),
                last_trade_id: trade_id.value(c).to_string(),
            };
            let k = (x.to_string(), s.to_string(), minute);
            match self.bars.get_mut(&k) {
                Some(bar) => bar.absorb(&part),
                None => {
                    self.bars.insert(k, part);
                }
            }
        }
        Ok(())
    }

    /// Adds partial bars (rows of the bars table), those for which
    /// `keep(exchange, symbol, minute)` holds, merging them with those of
    /// the same (exchange, symbol, minute) as readers do.
    pub fn add_partials(
        &mut self,
        b: &RecordBatch,
        keep: impl Fn(&str, &str, i64) -> bool,
    ) -> Result<(), LakeError> {
        let exchange = strings(b, "exchange")?;
        let symbol = strings(b, "symbol")?;
        let first = strings(b, "first_trade_id")?;
        let last = strings(b, "last_trade_id")?;
        let open_id = strings(b, "open_id")?;
        let close_id = strings(b, "close_id")?;
        let (minute, open_ts, close_ts) = (
            micros(b, "minute")?,
            micros(b, "open_ts")?,
            micros(b, "close_ts")?,
        );
        let dec = |name: &str| typed::<Decimal128Array>(b, name);
        let (open, high, low, close, volume) = (
            dec("open")?,
            dec("high")?,
            dec("low")?,
            dec("close")?,
            dec("volume")?,
        );
        let trades: Int64Array = typed(b, "trades")?;
        let open_seq: Int64Array = typed(b, "open_seq")?;
        let close_seq: Int64Array = typed(b, "close_seq")?;
        let seq = |a: &Int64Array, i: usize| a.is_valid(i).then(|| a.value(i));
        for i in 0..b.num_rows() {
            if !keep(exchange.value(i), symbol.value(i), minute.value(i)) {
                continue;
            }
            let p = Partial {
                open: open.value(i),
                high: high.value(i),
                low: low.value(i),
                close: close.value(i),
                volume: volume.value(i),
                trades: trades.value(i),
                open_key: Key {
                    ts: open_ts.value(i),
                    seq: seq(&open_seq, i),
                    id: open_id.value(i).to_string(),
                },
                close_key: Key {
                    ts: close_ts.value(i),
                    seq: seq(&close_seq, i),
                    id: close_id.value(i).to_string(),
                },
                first_trade_id: first.value(i).to_string(),
                last_trade_id: last.value(i).to_string(),
            };
            let k = (
                exchange.value(i).to_string(),
                symbol.value(i).to_string(),
                minute.value(i),
            );
            match self.bars.get_mut(&k) {
                Some(bar) => bar.absorb(&p),
                None => {
                    self.bars.insert(k, p);
                }
            }
        }
        Ok(())
    }

    /// Adds `other`'s partial bars, those for which `keep(exchange,
    /// symbol, minute)` holds.
    pub fn merge_from(&mut self, other: &Aggregator, keep: impl Fn(&str, &str, i64) -> bool) {
        for ((x, s, m), p) in &other.bars {
            if !keep(x, s, *m) {
                continue;
            }
            match self.bars.get_mut(&(x.clone(), s.clone(), *m)) {
                Some(bar) => bar.absorb(p),
                None => {
                    self.bars.insert((x.clone(), s.clone(), *m), p.clone());
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.bars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bars.is_empty()
    }

    /// These partial bars rolled up into bars of `step` microseconds (a
    /// whole number of minutes), every (exchange, symbol) of them together,
    /// as `/v1/ohlcv` answers: columns time, open, high, low, close, volume
    /// and trades, oldest first. A bar starts where DataFusion's
    /// `date_bin(step, minute, 0)` puts it, and its open and close are
    /// those of its first and last trade in the bars' order (`Key`), as
    /// the answer computed from the raw trades takes them.
    pub fn roll_up(self, step: i64) -> Result<RecordBatch, LakeError> {
        use std::collections::btree_map::Entry;
        let mut out: BTreeMap<i64, Partial> = BTreeMap::new();
        for ((_, _, minute), p) in self.bars {
            match out.entry(minute - minute.rem_euclid(step.max(1))) {
                Entry::Vacant(e) => {
                    e.insert(p);
                }
                Entry::Occupied(mut e) => e.get_mut().absorb(&p),
            }
        }
        let rows: Vec<(i64, Partial)> = out.into_iter().collect();
        let dec = |f: fn(&Partial) -> i128, precision: u8| {
            decimals(rows.iter().map(|r| f(&r.1)), precision)
        };
        let p = crate::model::DECIMAL_PRECISION;
        let decimal =
            |precision| DataType::Decimal128(precision, crate::model::DECIMAL_SCALE as i8);
        let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("time", utc, false),
            arrow::datatypes::Field::new("open", decimal(p), false),
            arrow::datatypes::Field::new("high", decimal(p), false),
            arrow::datatypes::Field::new("low", decimal(p), false),
            arrow::datatypes::Field::new("close", decimal(p), false),
            arrow::datatypes::Field::new("volume", decimal(38), false),
            arrow::datatypes::Field::new("trades", DataType::Int64, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.0))
                    .with_timezone("+00:00"),
            ),
            dec(|b| b.open, p)?,
            dec(|b| b.high, p)?,
            dec(|b| b.low, p)?,
            dec(|b| b.close, p)?,
            dec(|b| b.volume, 38)?,
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.1.trades),
            )),
        ];
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    /// The partial bars as rows of `schema` (the bars table's Arrow schema).
    pub fn into_batch(self, schema: &SchemaRef) -> Result<RecordBatch, LakeError> {
        type Row = ((String, String, i64), Partial);
        let rows: Vec<Row> = self.bars.into_iter().collect();
        let text = |f: fn(&Row) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
        };
        let time = |f: fn(&Row) -> i64| -> ArrayRef {
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(f))
                    .with_timezone("+00:00"),
            )
        };
        let long = |f: fn(&Row) -> Option<i64>| -> ArrayRef {
            Arc::new(Int64Array::from_iter(rows.iter().map(f)))
        };
        let dec = |f: fn(&Row) -> i128, precision: u8| decimals(rows.iter().map(f), precision);
        let p = crate::model::DECIMAL_PRECISION;
        let columns: Vec<ArrayRef> = vec![
            text(|r| &r.0.0),
            text(|r| &r.0.1),
            time(|r| r.0.2),
            dec(|r| r.1.open, p)?,
            dec(|r| r.1.high, p)?,
            dec(|r| r.1.low, p)?,
            dec(|r| r.1.close, p)?,
            dec(|r| r.1.volume, 38)?,
            long(|r| Some(r.1.trades)),
            text(|r| &r.1.first_trade_id),
            text(|r| &r.1.last_trade_id),
            time(|r| r.1.open_key.ts),
            long(|r| r.1.open_key.seq),
            text(|r| &r.1.open_key.id),
            time(|r| r.1.close_key.ts),
            long(|r| r.1.close_key.seq),
            text(|r| &r.1.close_key.id),
        ];
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

/// An exchange and symbol, and its bars by minute start, in order.
type Group = (Arc<str>, Arc<str>, Vec<(i64, Partial)>);

/// One bars file's partial bars, decoded once: grouped by (exchange,
/// symbol), each group's bars in minute order. A request for one symbol
/// over a time range then takes a slice of a group per file instead of
/// decoding and filtering every row of every file: between compactions
/// a day's bars sit in about a thousand small files.
#[derive(Debug, Default)]
pub struct FileBars {
    groups: Vec<Group>,
    bytes: usize,
}

impl FileBars {
    /// The bars of a file's decoded `batches`, its partial rows of one
    /// minute merged as readers merge them.
    pub fn decode(batches: &[RecordBatch]) -> Result<Self, LakeError> {
        let mut all = Aggregator::default();
        for b in batches {
            all.add_partials(b, |_, _, _| true)?;
        }
        let mut out = FileBars::default();
        // The aggregator's order is (exchange, symbol, minute).
        for ((x, s, m), p) in all.bars {
            out.bytes += p.bytes() + std::mem::size_of::<i64>();
            match out.groups.last_mut() {
                Some((gx, gs, bars)) if **gx == *x && **gs == *s => bars.push((m, p)),
                _ => {
                    out.bytes += x.len() + s.len();
                    out.groups.push((x.into(), s.into(), vec![(m, p)]));
                }
            }
        }
        Ok(out)
    }

    /// What the decoded bars hold in memory, about.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Merges into `into` the bars of `symbol` (of `exchange` only, when
    /// given) whose minute is in `[start_us, end_us)`.
    pub fn merge_into(
        &self,
        into: &mut Aggregator,
        symbol: &str,
        exchange: Option<&str>,
        (start_us, end_us): (i64, i64),
    ) {
        for (x, s, bars) in &self.groups {
            if **s != *symbol || exchange.is_some_and(|e| e != &**x) {
                continue;
            }
            let from = bars.partition_point(|(m, _)| *m < start_us);
            let to = bars.partition_point(|(m, _)| *m < end_us);
            for (m, p) in &bars[from..to] {
                match into.bars.get_mut(&(x.to_string(), s.to_string(), *m)) {
                    Some(bar) => bar.absorb(p),
                    None => {
                        into.bars
                            .insert((x.to_string(), s.to_string(), *m), p.clone());
                    }
                }
            }
        }
    }
}

/// The sequence number of the newest trades snapshot the bars cover, from
/// the newest bars snapshot that records it (walking back), with that
/// snapshot's id.
pub fn covered(bars: &Table) -> Option<(i64, i64)> {
    covered_at_most(bars, i64::MAX)
}

/// The newest bars snapshot that covers at most trades sequence `upto`,
/// with what it covers: what a reader pinned at that trades snapshot
/// merges with the rows after it.
pub fn covered_at_most(bars: &Table, upto: i64) -> Option<(i64, i64)> {
    let meta = bars.metadata();
    let mut next = meta.current_snapshot();
    while let Some(s) = next {
        if let Some(seq) = s
            .summary()
            .additional_properties
            .get(COVERED_PROPERTY)
            .and_then(|v| v.parse::<i64>().ok())
            && seq <= upto
        {
            return Some((s.snapshot_id(), seq));
        }
        next = s
            .parent_snapshot_id()
            .and_then(|id| meta.snapshot_by_id(id));
    }
    None
}

/// The trades snapshots after sequence `after` up to `upto` that added
/// rows, oldest first; `None` when one of them is gone (expired), so the
/// rows between cannot be told.
pub fn snapshots_between(trades: &Table, after: i64, upto: i64) -> Option<Vec<SnapshotRef>> {
    let meta = trades.metadata();
    let mut out: Vec<SnapshotRef> = Vec::new();
    let mut next = meta.current_snapshot();
    let mut oldest_seen = None;
    // Walk back from the current snapshot to the one at `after`.
    while let Some(s) = next {
        if s.sequence_number() <= after {
            break;
        }
        if s.sequence_number() <= upto && adds_rows(s) {
            out.push(s.clone());
        }
        oldest_seen = Some(s.sequence_number());
        next = s
            .parent_snapshot_id()
            .and_then(|id| meta.snapshot_by_id(id));
    }
    // Each commit takes the next sequence number, so the walk is whole if
    // it reached `after`, or if the history it ran out of stops right
    // above `after` (that snapshot itself expired).
    let whole = match next {
        Some(s) => s.sequence_number() == after,
        None => oldest_seen.is_none_or(|o| o == after + 1),
    };
    if !whole {
        return None;
    }
    out.reverse();
    Some(out)
}

fn adds_rows(s: &SnapshotRef) -> bool {
    matches!(
        s.summary().operation,
        Operation::Append | Operation::Overwrite
    )
}

/// Summarizes every trade in `files` (data files of `trades`) into `agg`;
/// returns the rows read.
pub async fn summarize_files(
    trades: &Table,
    files: &[String],
    agg: &mut Aggregator,
) -> Result<u64, LakeError> {
    let mut rows = 0;
    for f in files {
        for b in read_data_file_columns(trades, f, &Aggregator::TRADE_COLUMNS).await? {
            rows += b.num_rows() as u64;
            agg.add(&b, |_, _, _| true)?;
        }
    }
    Ok(rows)
}

/// The data files `snapshot` added, from its own manifests: they stay
/// readable there after a compaction replaced them, until the snapshot
/// expires.
pub async fn added_files(table: &Table, snapshot: &SnapshotRef) -> Result<Vec<String>, LakeError> {
    let list = table.manifest_list_reader(snapshot).load().await?;
    let mut files = Vec::new();
    for m in list
        .entries()
        .iter()
        .filter(|m| m.added_snapshot_id == snapshot.snapshot_id())
    {
        for e in m.load_manifest(table.file_io()).await?.entries() {
            if e.status() == ManifestStatus::Added
                && e.snapshot_id() == Some(snapshot.snapshot_id())
            {
                files.push(e.file_path().to_string());
            }
        }
    }
    Ok(files)
}

/// What one catch-up did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CatchUp {
    /// Trades snapshots summarized.
    pub trades_snapshots: usize,
    /// Of those, the ones summarized from the rows their writer handed
    /// over ([`Known`]), with no file of theirs read back.
    pub trades_snapshots_in_memory: usize,
    pub trades_rows: u64,
    /// Partial bars written.
    pub bars: usize,
    /// The trades sequence number covered now.
    pub covered: Option<i64>,
    pub snapshot_id: Option<i64>,
}

/// The rows trades snapshots added, by snapshot id, as the writer that
/// committed them handed them over: a catch-up summarizes these rows
/// rather than read the snapshot's files back (the files hold exactly these
/// rows). Snapshots not here, another daemon's or ones committed before a
/// restart, are read from their files.
pub type Known = std::collections::BTreeMap<i64, RecordBatch>;

/// Summarizes the trades snapshots the bars do not cover yet into one bars
/// commit. Nothing to do: no commit.
pub async fn catch_up(
    catalog: &dyn Catalog,
    trades_ident: &TableIdent,
    bars_ident: &TableIdent,
    target_file_size: usize,
) -> Result<CatchUp, LakeError> {
    catch_up_to(
        catalog,
        trades_ident,
        bars_ident,
        target_file_size,
        None,
        &Known::new(),
    )
    .await
}

/// [`catch_up`], covering at most the trades snapshots up to sequence
/// `upto` (tests leave the rest to the readers), with the rows of the
/// snapshots in `known` taken from memory.
pub async fn catch_up_to(
    catalog: &dyn Catalog,
    trades_ident: &TableIdent,
    bars_ident: &TableIdent,
    target_file_size: usize,
    upto: Option<i64>,
    known: &Known,
) -> Result<CatchUp, LakeError> {
    let bars = catalog.load_table(bars_ident).await?;
    let trades = catalog.load_table(trades_ident).await?;
    let Some(current) = trades.metadata().current_snapshot() else {
        return Ok(CatchUp::default());
    };
    let upto = upto.map_or(current.sequence_number(), |u| {
        u.min(current.sequence_number())
    });
    let after = covered(&bars).map(|(_, seq)| seq);
    let mut report = CatchUp {
        covered: after,
        ..CatchUp::default()
    };
    if after.is_some_and(|a| a >= upto) {
        return Ok(report);
    }
    // From the start of the history when nothing is covered yet; a history
    // that lost its start to expiry is summarized from the current
    // snapshot's files, whole.
    let mut in_memory = Vec::new();
    let files = match snapshots_between(&trades, after.unwrap_or(0), upto) {
        Some(snapshots) => {
            report.trades_snapshots = snapshots.len();
            let mut files = Vec::new();
            for s in &snapshots {
                match known.get(&s.snapshot_id()) {
                    Some(rows) => in_memory.push(rows),
                    None => files.extend(added_files(&trades, s).await?),
                }
            }
            report.trades_snapshots_in_memory = in_memory.len();
            files
        }
        None if after.is_none() && upto == current.sequence_number() => {
            report.trades_snapshots = 1;
            live_entries(&trades)
                .await?
                .iter()
                .map(|e| e.data_file.file_path().to_string())
                .collect()
        }
        None => {
            return Err(LakeError::Catalog(format!(
                "trades snapshots after sequence {} were expired before the bars summarized them; \
                 /v1/ohlcv reads the raw trades for them",
                after.unwrap_or(0)
            )));
        }
    };
    let mut agg = Aggregator::default();
    report.trades_rows = summarize_files(&trades, &files, &mut agg).await?;
    for rows in in_memory {
        report.trades_rows += rows.num_rows() as u64;
        agg.add(rows, |_, _, _| true)?;
    }
    report.bars = agg.len();
    let schema = super::batch::arrow_schema(bars.metadata().current_schema())?;
    let batch = agg.into_batch(&schema)?;
    let data_files = if batch.num_rows() > 0 {
        write_data_files(&bars, &batch, target_file_size).await?
    } else {
        Vec::new()
    };
    let tx = Transaction::new(&bars);
    let tx = tx
        .fast_append()
        .with_check_duplicate(false)
        .add_data_files(data_files)
        .set_snapshot_properties(std::collections::HashMap::from([(
            COVERED_PROPERTY.to_string(),
            upto.to_string(),
        )]))
        .apply(tx)?;
    let table = tx.commit(catalog).await?;
    report.covered = Some(upto);
    report.snapshot_id = table.metadata().current_snapshot_id();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(price: i128, ts: i64, id: &str) -> Partial {
        let key = Key {
            ts,
            seq: None,
            id: id.to_string(),
        };
        Partial {
            open: price,
            high: price,
            low: price,
            close: price,
            volume: 1,
            trades: 1,
            open_key: key.clone(),
            close_key: key,
            first_trade_id: id.to_string(),
            last_trade_id: id.to_string(),
        }
    }

    /// A file's bars decoded once and sliced per request merge as the
    /// rows filtered one by one do: by symbol, exchange and minute range,
    /// with a minute's several partial rows merged.
    #[test]
    fn a_decoded_file_merges_as_its_rows_filtered_do() {
        let schema =
            crate::lake::batch::arrow_schema(&crate::lake::schema::bars_schema().unwrap()).unwrap();
        // Two partial rows per (exchange, symbol, minute): a file that
        // holds a minute seen by two commits.
        let batch = |from: i64| {
            let mut a = Aggregator::default();
            for (k, x) in ["BINANCE", "KRAKEN"].into_iter().enumerate() {
                for s in ["BTCUSDT", "ETHUSDT"] {
                    for m in 0..6 {
                        let ts = m * MINUTE_US + from;
                        let id = format!("{x}{s}{m}{from}");
                        a.bars.insert(
                            (x.into(), s.into(), m * MINUTE_US),
                            partial(100 + m as i128 + k as i128 + from as i128, ts, &id),
                        );
                    }
                }
            }
            a.into_batch(&schema).unwrap()
        };
        let batches = [batch(1), batch(2)];
        let file = FileBars::decode(&batches).unwrap();
        assert!(file.bytes() > 0);
        for (exchange, range) in [
            (None, (0, 6 * MINUTE_US)),
            (Some("KRAKEN"), (MINUTE_US, 4 * MINUTE_US)),
            (Some("BINANCE"), (5 * MINUTE_US, 9 * MINUTE_US)),
        ] {
            let mut want = Aggregator::default();
            for b in &batches {
                want.add_partials(b, |x, s, m| {
                    s == "ETHUSDT" && exchange.is_none_or(|e| e == x) && m >= range.0 && m < range.1
                })
                .unwrap();
            }
            let mut got = Aggregator::default();
            file.merge_into(&mut got, "ETHUSDT", exchange, range);
            assert!(!got.is_empty());
            assert_eq!(got.bars, want.bars, "{exchange:?} {range:?}");
        }
    }

    #[test]
    fn runs_of_rows_make_the_bars_row_by_row_makes() {
        use crate::model::{Dec8, TradeV2};
        // Two exchanges, three symbols, minutes interleaved, equal
        // timestamps (decided by sequence, then id), some rows without a
        // sequence, and a filter that drops rows inside runs.
        let mut rows = Vec::new();
        for i in 0..600i64 {
            let x = ["BINANCE", "KRAKEN"][(i % 2) as usize];
            let s = ["BTCUSDT", "ETHUSDT", "DOTUSDT"][(i % 3) as usize];
            let ts = (i * 7919 % 300) * 1_000_000 + (i % 4) * 10;
            let mut t = TradeV2::builder(x, s, &format!("{}", i * 37 % 101), ts)
                .price(Dec8::parse(&format!("{}.5", 100 + (i * 13) % 17)).unwrap())
                .quantity(Dec8::parse(&format!("0.{:03}", 1 + i % 9)).unwrap())
                .build();
            t.source_sequence = (i % 5 != 0).then_some(i % 11);
            rows.push(t);
        }
        let schema =
            crate::lake::batch::arrow_schema(&crate::lake::schema::trades_schema().unwrap())
                .unwrap();
        let keep = |_: &str, s: &str, t: i64| s != "DOTUSDT" || t % 3 != 0;
        for sorted in [false, true] {
            let batch = if sorted {
                crate::lake::batch::trades_batch(&schema, &rows).unwrap()
            } else {
                crate::lake::batch::trades_batch_as_is(&schema, &rows).unwrap()
            };
            let mut runs = Aggregator::default();
            runs.add(&batch, keep).unwrap();
            // One row at a time: every run is one row long.
            let mut one_by_one = Aggregator::default();
            for i in 0..batch.num_rows() {
                one_by_one.add(&batch.slice(i, 1), keep).unwrap();
            }
            assert!(runs.bars.len() > 20, "{}", runs.bars.len());
            assert_eq!(runs.bars, one_by_one.bars, "sorted: {sorted}");
        }
    }
}
