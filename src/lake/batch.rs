//! Records to Arrow, in the exact Arrow schema iceberg derives from the table
//! schema (field-id metadata included, nested fields too), so the Parquet
//! writer can match columns by id.

use std::borrow::Borrow;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Builder, Int64Builder, LargeBinaryBuilder,
    ListArray, MapArray, RecordBatch, StringArray, StringBuilder, StructArray,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Schema as ArrowSchema, SchemaRef, TimestampMicrosecondType};

use super::LakeError;
use crate::model::{DECIMAL_PRECISION, DECIMAL_SCALE, DeadLetter, TradeV2, TradeView};

/// The Arrow schema of an iceberg schema.
pub fn arrow_schema(schema: &iceberg::spec::Schema) -> Result<SchemaRef, LakeError> {
    Ok(Arc::new(iceberg::arrow::schema_to_arrow_schema(schema)?))
}

fn timestamps(values: impl Iterator<Item = i64>, n: usize) -> ArrayRef {
    let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn field_type(schema: &ArrowSchema, name: &str) -> Result<DataType, LakeError> {
    Ok(schema.field_with_name(name)?.data_type().clone())
}

/// The columns of a trades batch, filled row by row: by the consumer from
/// each record read in place (`TradeView`), or from owned trades.
///
/// One pass over the rows, not one per column: a flush converts some
/// 100,000 rows scattered over the heap, and a pass per column followed
/// each row's pointer fifteen times (a cache miss each time once the rows
/// outgrow the cache). Here each row, and each of its strings, is read
/// once, and the builders are written in order.
pub struct TradeColumns {
    message_id: StringBuilder,
    trade_id: StringBuilder,
    symbol: StringBuilder,
    exchange: StringBuilder,
    asset_class: StringBuilder,
    timestamp: TimestampMicrosecondBuilder,
    ingested: TimestampMicrosecondBuilder,
    price: Decimal128Builder,
    quantity: Decimal128Builder,
    currency: StringBuilder,
    side: StringBuilder,
    conditions: StringBuilder,
    condition_counts: Vec<usize>,
    source_sequence: Int64Builder,
    platform_sequence: Int64Builder,
    vendor_keys: StringBuilder,
    vendor_values: StringBuilder,
    vendor_counts: Vec<usize>,
    vendor_valid: Vec<bool>,
    /// `None` for a schema from before `instrument` was added.
    instrument: Option<StringBuilder>,
}

impl TradeColumns {
    /// Sized for `n` rows of typical field lengths (a UUID message id,
    /// short symbols); a longer value only makes a builder grow.
    pub fn new(n: usize, with_instrument: bool) -> Result<Self, LakeError> {
        let text = |bytes: usize| StringBuilder::with_capacity(n, n * bytes);
        let decimal = || {
            Decimal128Builder::with_capacity(n)
                .with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE as i8)
        };
        let time = || TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
        Ok(Self {
            message_id: text(36),
            trade_id: text(24),
            symbol: text(10),
            exchange: text(8),
            asset_class: text(6),
            timestamp: time(),
            ingested: time(),
            price: decimal()?,
            quantity: decimal()?,
            currency: text(4),
            side: text(4),
            conditions: StringBuilder::new(),
            condition_counts: Vec::with_capacity(n),
            source_sequence: Int64Builder::with_capacity(n),
            platform_sequence: Int64Builder::with_capacity(n),
            vendor_keys: StringBuilder::new(),
            vendor_values: StringBuilder::new(),
            vendor_counts: Vec::with_capacity(n),
            vendor_valid: Vec::with_capacity(n),
            instrument: with_instrument.then(|| text(8)),
        })
    }

    /// Sized for `n` rows of `schema` (which may predate `instrument`).
    pub fn for_schema(n: usize, schema: &SchemaRef) -> Result<Self, LakeError> {
        Self::new(n, schema.index_of("instrument").is_ok())
    }

    pub fn len(&self) -> usize {
        self.condition_counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, r: &TradeV2) {
        self.push_view(&r.view());
    }

    pub fn push_view(&mut self, r: &TradeView) {
        self.message_id.append_value(r.message_id);
        self.trade_id.append_value(r.trade_id);
        self.symbol.append_value(r.symbol);
        self.exchange.append_value(r.exchange);
        self.asset_class.append_value(r.asset_class.as_str());
        self.timestamp.append_value(r.timestamp_us);
        self.ingested.append_value(r.ingestion_timestamp_us);
        self.price.append_value(i128::from(r.price.unscaled()));
        self.quantity
            .append_value(i128::from(r.quantity.unscaled()));
        self.currency.append_value(r.currency);
        self.side.append_value(r.side.as_str());
        for c in &r.trade_conditions {
            self.conditions.append_value(c);
        }
        self.condition_counts.push(r.trade_conditions.len());
        self.source_sequence.append_option(r.source_sequence);
        self.platform_sequence.append_option(r.platform_sequence);
        match &r.vendor_data {
            Some(m) => {
                for (k, v) in m {
                    self.vendor_keys.append_value(k);
                    self.vendor_values.append_value(v);
                }
                self.vendor_counts.push(m.len());
                self.vendor_valid.push(true);
            }
            None => {
                self.vendor_counts.push(0);
                self.vendor_valid.push(false);
            }
        }
        if let Some(b) = &mut self.instrument {
            b.append_option(r.instrument);
        }
    }

    pub fn finish(mut self, schema: &SchemaRef) -> Result<RecordBatch, LakeError> {
        let DataType::List(condition) = field_type(schema, "trade_conditions")? else {
            return Err(LakeError::Catalog(
                "column trade_conditions is not a list".into(),
            ));
        };
        let conditions = ListArray::try_new(
            condition,
            OffsetBuffer::from_lengths(self.condition_counts),
            Arc::new(self.conditions.finish()),
            None,
        )?;
        let DataType::Map(entries, sorted) = field_type(schema, "vendor_data")? else {
            return Err(LakeError::Catalog("column vendor_data is not a map".into()));
        };
        let DataType::Struct(kv_fields) = entries.data_type() else {
            return Err(LakeError::Catalog(
                "column vendor_data entries are not a struct".into(),
            ));
        };
        let kv = StructArray::try_new(
            kv_fields.clone(),
            vec![
                Arc::new(self.vendor_keys.finish()),
                Arc::new(self.vendor_values.finish()),
            ],
            None,
        )?;
        let vendor = MapArray::try_new(
            entries,
            OffsetBuffer::from_lengths(self.vendor_counts),
            kv,
            Some(NullBuffer::from(self.vendor_valid)),
            sorted,
        )?;
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.message_id.finish()),
            Arc::new(self.trade_id.finish()),
            Arc::new(self.symbol.finish()),
            Arc::new(self.exchange.finish()),
            Arc::new(self.asset_class.finish()),
            Arc::new(self.timestamp.finish()),
            Arc::new(self.ingested.finish()),
            Arc::new(self.price.finish()),
            Arc::new(self.quantity.finish()),
            Arc::new(self.currency.finish()),
            Arc::new(self.side.finish()),
            Arc::new(conditions),
            Arc::new(self.source_sequence.finish()),
            Arc::new(self.platform_sequence.finish()),
            Arc::new(vendor),
        ];
        if let Some(b) = &mut self.instrument {
            cols.push(Arc::new(b.finish()));
        }
        Ok(RecordBatch::try_new(schema.clone(), cols)?)
    }
}

/// Where a consumed record was read: its topic, partition and offset.
pub type RecordAt = (Arc<str>, i32, i64);

/// Trades read from one run of consumed records: one Arrow batch in the
/// trades table's schema, in the order read, and each row's message-id key
/// (`dedup::key`). The consumer builds it once; the tail and the writer
/// share its buffers, and a commit interleaves the chunks it covers into
/// one sorted batch: one conversion per row, where there were two.
#[derive(Debug, Clone)]
pub struct TradeChunk {
    pub batch: RecordBatch,
    pub keys: Vec<u128>,
}

/// A trades batch's text column, or why there is none.
pub fn text_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray, LakeError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| LakeError::Catalog(format!("trades batch without a text column {name}")))
}

/// A trades batch's timestamp column (`timestamp`, `ingestion_timestamp`),
/// or why there is none.
pub fn time_column<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a TimestampMicrosecondArray, LakeError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or_else(|| {
            LakeError::Catalog(format!("trades batch without a timestamp column {name}"))
        })
}

impl TradeChunk {
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows whose `keep` is true.
    pub fn filter(&self, keep: &[bool]) -> Result<TradeChunk, LakeError> {
        let mask = BooleanArray::from(keep.to_vec());
        Ok(TradeChunk {
            batch: arrow::compute::filter_record_batch(&self.batch, &mask)?,
            keys: self
                .keys
                .iter()
                .zip(keep)
                .filter(|(_, k)| **k)
                .map(|(key, _)| *key)
                .collect(),
        })
    }
}

/// A string's first 8 bytes as a big-endian number, zero-padded: two
/// strings whose prefixes differ compare as their prefixes do (a shorter
/// string pads with zeros, below any byte a longer one has there but 0,
/// and a 0 there ties, leaving the order to the whole strings).
fn id_prefix(s: &str) -> u64 {
    let mut b = [0u8; 8];
    let n = s.len().min(8);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
    u64::from_be_bytes(b)
}

/// The rows of `chunks` (taken in order, numbered from 0 across them) that
/// `keep` keeps, as one batch in the order files are written in: by
/// symbol, then timestamp, then message id, then as read.
pub fn sorted_trades(
    schema: &SchemaRef,
    chunks: &[RecordBatch],
    keep: impl Fn(usize) -> bool,
) -> Result<RecordBatch, LakeError> {
    let mut cols = Vec::with_capacity(chunks.len());
    for b in chunks {
        cols.push((
            text_column(b, "symbol")?,
            time_column(b, "timestamp")?,
            text_column(b, "message_id")?,
        ));
    }
    let mut ranks: hashbrown::HashMap<&str, u32> = hashbrown::HashMap::new();
    for (symbol, _, _) in &cols {
        for s in symbol.iter().flatten() {
            let next = ranks.len() as u32;
            ranks.entry(s).or_insert(next);
        }
    }
    let mut by_name: Vec<(&str, u32)> = ranks.iter().map(|(s, i)| (*s, *i)).collect();
    by_name.sort_unstable();
    let mut rank_of = vec![0u32; by_name.len()];
    for (rank, (_, first_seen)) in by_name.iter().enumerate() {
        rank_of[*first_seen as usize] = rank as u32;
    }
    // (rank, timestamp, the message id's first 8 bytes, chunk, row): small
    // keys in one array. The whole message id is read only when the first
    // 8 bytes tie: trades of a symbol in one millisecond are common, and
    // following each to its id in the chunks' columns was a sixth of the
    // commit thread's samples in a profile of `ticklake bench`.
    let mut keys: Vec<(u32, i64, u64, u32, u32)> = Vec::new();
    let mut g = 0;
    for (c, (symbol, time, id)) in cols.iter().enumerate() {
        keys.reserve(symbol.len());
        for i in 0..symbol.len() {
            if keep(g) {
                let rank = rank_of[ranks[symbol.value(i)] as usize];
                keys.push((
                    rank,
                    time.value(i),
                    id_prefix(id.value(i)),
                    c as u32,
                    i as u32,
                ));
            }
            g += 1;
        }
    }
    drop(ranks);
    if keys.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    // Symbols first, by counting: one pass, where a comparison sort of all
    // the rows was a third of this function's time. Then each symbol's rows
    // by time: they come in the order the venue sent them, so a symbol's
    // run is usually sorted already, which the sort finds in one pass.
    let mut starts = vec![0usize; by_name.len() + 1];
    for k in &keys {
        starts[k.0 as usize + 1] += 1;
    }
    for r in 1..starts.len() {
        starts[r] += starts[r - 1];
    }
    let mut next = starts.clone();
    let mut by_symbol = vec![(0u32, 0i64, 0u64, 0u32, 0u32); keys.len()];
    for k in keys {
        let at = &mut next[k.0 as usize];
        by_symbol[*at] = k;
        *at += 1;
    }
    for run in starts.windows(2) {
        by_symbol[run[0]..run[1]].sort_unstable_by(|a, b| {
            (a.1, a.2).cmp(&(b.1, b.2)).then_with(|| {
                let id = |k: &(u32, i64, u64, u32, u32)| cols[k.3 as usize].2.value(k.4 as usize);
                id(a).cmp(id(b)).then((a.3, a.4).cmp(&(b.3, b.4)))
            })
        });
    }
    let order: Vec<(usize, usize)> = by_symbol
        .into_iter()
        .map(|k| (k.3 as usize, k.4 as usize))
        .collect();
    let refs: Vec<&RecordBatch> = chunks.iter().collect();
    gather_rows(schema, &refs, &order)
}

/// The rows of `batches` in the order of the `(batch, row)` pairs, as one
/// batch in `schema` (which every batch must have).
///
/// arrow's `interleave` for every column but maps, which it gathers row by
/// row through its generic path (about 2,200 instructions a row, counted
/// with callgrind); a map's entries are interleaved here as its two plain
/// columns, under new offsets. (`take` after `concat` avoids that path too,
/// but builds a batch per source when the sources are many small chunks.)
pub fn gather_rows(
    schema: &SchemaRef,
    batches: &[&RecordBatch],
    order: &[(usize, usize)],
) -> Result<RecordBatch, LakeError> {
    if order.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    let width = schema.fields().len();
    if let Some(b) = batches.iter().find(|b| b.num_columns() != width) {
        return Err(LakeError::Catalog(format!(
            "rows of {} columns gathered into a schema of {width}",
            b.num_columns()
        )));
    }
    let mut cols = Vec::with_capacity(width);
    for c in 0..width {
        let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
        cols.push(match arrays.first().map(|a| a.data_type()) {
            Some(DataType::Map(..)) => interleave_maps(&arrays, order)?,
            _ => arrow::compute::interleave(&arrays, order)?,
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// `interleave` for map arrays: the rows' entries gathered as two plain
/// columns, with the offsets and validity rebuilt.
fn interleave_maps(arrays: &[&dyn Array], order: &[(usize, usize)]) -> Result<ArrayRef, LakeError> {
    let not_a_map =
        || LakeError::Catalog("a map column gathered from a column of another type".into());
    let maps = arrays
        .iter()
        .map(|a| a.as_map_opt().ok_or_else(not_a_map))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(DataType::Map(field, ordered)) = maps.first().map(|m| m.data_type().clone()) else {
        return Err(not_a_map());
    };
    let DataType::Struct(fields) = field.data_type() else {
        return Err(not_a_map());
    };
    let mut offsets = Vec::with_capacity(order.len() + 1);
    offsets.push(0i32);
    let mut entries: Vec<(usize, usize)> = Vec::new();
    let mut valid = Vec::with_capacity(order.len());
    for &(a, r) in order {
        let m = maps[a];
        let o = m.value_offsets();
        entries.extend((o[r]..o[r + 1]).map(|e| (a, e as usize)));
        offsets.push(
            i32::try_from(entries.len()).map_err(|_| {
                LakeError::Catalog("more map entries than an i32 offset holds".into())
            })?,
        );
        valid.push(m.is_valid(r));
    }
    let keys: Vec<&dyn Array> = maps.iter().map(|m| m.keys().as_ref()).collect();
    let values: Vec<&dyn Array> = maps.iter().map(|m| m.values().as_ref()).collect();
    let kv = StructArray::try_new(
        fields.clone(),
        vec![
            arrow::compute::interleave(&keys, &entries)?,
            arrow::compute::interleave(&values, &entries)?,
        ],
        None,
    )?;
    Ok(Arc::new(MapArray::try_new(
        field,
        OffsetBuffer::new(offsets.into()),
        kv,
        Some(NullBuffer::from(valid)),
        ordered,
    )?))
}

/// Trades to one batch, in the order files are written in (by symbol,
/// then timestamp, then message id) so files prune well. One sort serves
/// this and the writer's commits: the rows go to columns as given, and
/// `sorted_trades` orders those.
pub fn trades_batch<R: Borrow<TradeV2>>(
    schema: &SchemaRef,
    rows: &[R],
) -> Result<RecordBatch, LakeError> {
    let batch = trades_batch_as_is(schema, rows)?;
    sorted_trades(schema, &[batch], |_| true)
}

/// Trades to one batch, in the order given.
///
/// `rows` may be trades or references to them: the tail converts rows it
/// shares with published snapshots without copying them first.
pub fn trades_batch_as_is<R: Borrow<TradeV2>>(
    schema: &SchemaRef,
    rows: &[R],
) -> Result<RecordBatch, LakeError> {
    // A table evolved to carry `instrument` (every table this build opens);
    // a schema without it is written without it.
    let mut cols = TradeColumns::new(rows.len(), schema.index_of("instrument").is_ok())?;
    for r in rows {
        cols.push(r.borrow());
    }
    cols.finish(schema)
}

pub fn dead_letters_batch(
    schema: &SchemaRef,
    rows: &[DeadLetter],
) -> Result<RecordBatch, LakeError> {
    let n = rows.len();
    let mut raw = LargeBinaryBuilder::with_capacity(n, rows.iter().map(|r| r.raw.len()).sum());
    for r in rows {
        raw.append_value(&r.raw);
    }
    let cols: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.dead_letter_id.as_str())),
        strings(rows.iter().map(|r| r.exchange.as_str())),
        strings(rows.iter().map(|r| r.source.as_str())),
        timestamps(rows.iter().map(|r| r.received_at_us), n),
        strings(rows.iter().map(|r| r.reason.as_str())),
        Arc::new(raw.finish()),
    ];
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::schema::{dead_letters_schema, trades_schema};
    use crate::model::*;
    use arrow::array::Array;

    fn trade(sym: &str, ts: i64, vendor: bool) -> TradeV2 {
        TradeV2::builder("X", sym, &ts.to_string(), ts)
            .ingested_at(ts + 1)
            .price(Dec8::parse("1.5").unwrap())
            .quantity(Dec8::parse("2").unwrap())
            .conditions(vec!["a".into()])
            .source_sequence(Some(ts))
            .vendor_data(vendor.then(|| VendorData::from_iter([("k".into(), "v".into())])))
            .build()
    }

    /// The order files are written in, the plain way: a stable sort of
    /// the rows on (symbol, timestamp, message id), ties as given.
    fn sorted_by_hand(mut rows: Vec<TradeV2>) -> Vec<TradeV2> {
        rows.sort_by(|a, b| {
            (a.symbol.as_str(), a.timestamp_us, a.message_id.as_str()).cmp(&(
                b.symbol.as_str(),
                b.timestamp_us,
                b.message_id.as_str(),
            ))
        });
        rows
    }

    #[test]
    fn trades_batch_matches_iceberg_arrow_schema_and_sorts() {
        let schema = arrow_schema(&trades_schema().unwrap()).unwrap();
        let rows = vec![
            trade("B", 2, true),
            trade("A", 3, false),
            trade("A", 1, true),
        ];
        let b = trades_batch(&schema, &rows).unwrap();
        assert_eq!(b.num_rows(), 3);
        let sym = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            sym.iter().flatten().collect::<Vec<_>>(),
            vec!["A", "A", "B"]
        );
        assert_eq!(b.column(14).null_count(), 1);
    }

    /// The key sort and the one-pass columns give what sorting the rows
    /// themselves and reading each field back gives, on rows with ties in
    /// symbol and time, conditions, vendor data and missing values.
    #[test]
    fn sorted_columns_hold_each_row_as_given() {
        let schema = arrow_schema(&trades_schema().unwrap()).unwrap();
        let rows: Vec<TradeV2> = (0..500i64)
            .map(|i| {
                let sym = ["ETHUSDT", "BTCUSDT", "SOLUSDT", "ADAUSDT"][(i * 7 % 4) as usize];
                let mut t = trade(sym, 1_000 + (i * 13) % 9, i % 3 == 0);
                t.message_id = format!("{:04}", (i * 389) % 500);
                t.trade_conditions = (0..(i % 3)).map(|c| format!("c{c}")).collect();
                t.source_sequence = (i % 5 != 0).then_some(i);
                t.instrument = (i % 2 == 0).then(|| format!("I{i}"));
                t
            })
            .collect();
        let expected = sorted_by_hand(rows.clone());
        let b = trades_batch(&schema, &rows).unwrap();
        let text = |c: usize| {
            b.column(c)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .iter()
                .map(|v| v.map(str::to_string))
                .collect::<Vec<_>>()
        };
        let some =
            |f: fn(&TradeV2) -> String| expected.iter().map(|r| Some(f(r))).collect::<Vec<_>>();
        assert_eq!(text(0), some(|r| r.message_id.clone()));
        assert_eq!(text(2), some(|r| r.symbol.clone()));
        assert_eq!(text(10), some(|r| r.side.as_str().to_string()));
        let instrument = b.schema().index_of("instrument").unwrap();
        assert_eq!(
            text(instrument),
            expected
                .iter()
                .map(|r| r.instrument.clone())
                .collect::<Vec<_>>()
        );
        let seq = b
            .column(12)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(
            seq.iter().collect::<Vec<_>>(),
            expected
                .iter()
                .map(|r| r.source_sequence)
                .collect::<Vec<_>>()
        );
        let conditions = b.column(11).as_any().downcast_ref::<ListArray>().unwrap();
        for (i, r) in expected.iter().enumerate() {
            let got = conditions.value(i);
            let got = got.as_any().downcast_ref::<StringArray>().unwrap();
            let got: Vec<&str> = got.iter().flatten().collect();
            assert_eq!(got, r.trade_conditions, "row {i}");
        }
        let vendor = b.column(14).as_any().downcast_ref::<MapArray>().unwrap();
        for (i, r) in expected.iter().enumerate() {
            assert_eq!(vendor.is_valid(i), r.vendor_data.is_some(), "row {i}");
        }
    }

    /// Chunks built by the consumer's path (one `TradeColumns` each, rows
    /// in the order read), interleaved at a commit, give exactly the batch
    /// that sorting the rows themselves gives; with rows left out by their
    /// number across the chunks, the batch of the rows kept.
    #[test]
    fn sorted_chunks_are_the_sorted_rows() {
        let schema = arrow_schema(&trades_schema().unwrap()).unwrap();
        let rows: Vec<TradeV2> = (0..300i64)
            .map(|i| {
                let sym = ["ETHUSDT", "BTCUSDT", "SOLUSDT"][(i * 5 % 3) as usize];
                let mut t = trade(sym, 1_000 + (i * 11) % 7, i % 4 == 0);
                // Half the ids share their first 8 bytes: the sort then
                // reads the whole ids.
                t.message_id = match i % 2 {
                    0 => format!("{:04}", (i * 97) % 300),
                    _ => format!("same-pre-{:04}", (i * 97) % 300),
                };
                t.trade_conditions = (0..(i % 3)).map(|c| format!("c{c}")).collect();
                t.instrument = (i % 2 == 0).then(|| format!("I{i}"));
                t
            })
            .collect();
        let mut chunks = Vec::new();
        let mut at = 0;
        for n in [1usize, 0, 57, 120, 122] {
            let mut cols = TradeColumns::for_schema(n, &schema).unwrap();
            for t in &rows[at..at + n] {
                cols.push_view(&t.view());
            }
            assert_eq!(cols.len(), n);
            chunks.push(cols.finish(&schema).unwrap());
            at += n;
        }
        assert_eq!(at, rows.len());
        // Held to the rows sorted by hand, not to `trades_batch`, which is
        // this same sort on one chunk.
        let all = sorted_trades(&schema, &chunks, |_| true).unwrap();
        let want = sorted_by_hand(rows.clone());
        assert_eq!(all, trades_batch_as_is(&schema, &want).unwrap());
        let kept = sorted_trades(&schema, &chunks, |i| i % 3 != 1).unwrap();
        let expected: Vec<TradeV2> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 1)
            .map(|(_, t)| t.clone())
            .collect();
        assert_eq!(kept.num_rows(), 200);
        assert_eq!(
            kept,
            trades_batch_as_is(&schema, &sorted_by_hand(expected)).unwrap()
        );
        let none = sorted_trades(&schema, &chunks, |_| false).unwrap();
        assert_eq!((none.num_rows(), none.schema()), (0, schema.clone()));
        assert_eq!(sorted_trades(&schema, &[], |_| true).unwrap().num_rows(), 0);
    }

    proptest::proptest! {
        /// Where two prefixes differ, they order their strings as the
        /// strings order themselves (short ones and zero bytes included).
        #[test]
        fn id_prefixes_order_as_their_strings(a in "[\\x00ab-]{0,10}", b in "[\\x00ab-]{0,10}") {
            let (x, y) = (id_prefix(&a), id_prefix(&b));
            if x != y {
                proptest::prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            }
        }
    }

    #[test]
    fn a_chunk_filtered_keeps_its_rows_and_their_keys() {
        let schema = arrow_schema(&trades_schema().unwrap()).unwrap();
        let rows: Vec<TradeV2> = (0..5).map(|i| trade("A", i, false)).collect();
        let chunk = TradeChunk {
            batch: trades_batch_as_is(&schema, &rows).unwrap(),
            keys: (10..15).collect(),
        };
        let kept = chunk.filter(&[true, false, false, true, true]).unwrap();
        assert_eq!(kept.keys, vec![10, 13, 14]);
        let picked = [&rows[0], &rows[3], &rows[4]];
        assert_eq!(kept.batch, trades_batch_as_is(&schema, &picked).unwrap());
    }

    #[test]
    fn dead_letters_batch_matches_schema() {
        let schema = arrow_schema(&dead_letters_schema().unwrap()).unwrap();
        let d = DeadLetter::new("X", "s", 1, "r".into(), vec![1, 2]);
        assert_eq!(dead_letters_batch(&schema, &[d]).unwrap().num_rows(), 1);
    }
}
