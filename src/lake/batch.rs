//! Records to Arrow, in the exact Arrow schema iceberg derives from the table
//! schema (field-id metadata included, nested fields too), so the Parquet
//! writer can match columns by id.

use std::borrow::Borrow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Builder, Int64Builder, LargeBinaryBuilder, ListArray, MapArray,
    RecordBatch, StringArray, StringBuilder, StructArray, TimestampMicrosecondBuilder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Schema as ArrowSchema, SchemaRef};

use super::LakeError;
use crate::model::{DECIMAL_PRECISION, DECIMAL_SCALE, DeadLetter, TradeV2};

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

fn decimals(values: impl Iterator<Item = i64>, n: usize) -> Result<ArrayRef, LakeError> {
    let mut b = Decimal128Builder::with_capacity(n)
        .with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE as i8)?;
    for v in values {
        b.append_value(v as i128);
    }
    Ok(Arc::new(b.finish()))
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn longs(values: impl Iterator<Item = Option<i64>>, n: usize) -> ArrayRef {
    let mut b = Int64Builder::with_capacity(n);
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn field_type(schema: &ArrowSchema, name: &str) -> Result<DataType, LakeError> {
    Ok(schema.field_with_name(name)?.data_type().clone())
}

/// `rows` as trades, whether they are trades or references to them.
fn trades<R: Borrow<TradeV2>>(rows: &[R]) -> impl Iterator<Item = &TradeV2> + Clone {
    rows.iter().map(Borrow::borrow)
}

fn list_of_strings<R: Borrow<TradeV2>>(
    schema: &ArrowSchema,
    name: &str,
    rows: &[R],
) -> Result<ArrayRef, LakeError> {
    let DataType::List(elem) = field_type(schema, name)? else {
        return Err(LakeError::Catalog(format!("column {name} is not a list")));
    };
    let mut values = StringBuilder::new();
    for c in trades(rows).flat_map(|r| r.trade_conditions.iter()) {
        values.append_value(c);
    }
    let values = values.finish();
    let offsets = OffsetBuffer::from_lengths(trades(rows).map(|r| r.trade_conditions.len()));
    Ok(Arc::new(ListArray::try_new(
        elem,
        offsets,
        Arc::new(values),
        None,
    )?))
}

fn map_of_strings<R: Borrow<TradeV2>>(
    schema: &ArrowSchema,
    name: &str,
    rows: &[R],
) -> Result<ArrayRef, LakeError> {
    let DataType::Map(entries, sorted) = field_type(schema, name)? else {
        return Err(LakeError::Catalog(format!("column {name} is not a map")));
    };
    let DataType::Struct(kv_fields) = entries.data_type() else {
        return Err(LakeError::Catalog(format!(
            "column {name} entries are not a struct"
        )));
    };
    let mut keys = StringBuilder::new();
    let mut vals = StringBuilder::new();
    let mut lengths = Vec::with_capacity(rows.len());
    let mut valid = Vec::with_capacity(rows.len());
    for r in trades(rows) {
        match &r.vendor_data {
            Some(m) => {
                for (k, v) in m {
                    keys.append_value(k);
                    vals.append_value(v);
                }
                lengths.push(m.len());
                valid.push(true);
            }
            None => {
                lengths.push(0);
                valid.push(false);
            }
        }
    }
    let kv = StructArray::try_new(
        kv_fields.clone(),
        vec![Arc::new(keys.finish()), Arc::new(vals.finish())],
        None,
    )?;
    Ok(Arc::new(MapArray::try_new(
        entries,
        OffsetBuffer::from_lengths(lengths),
        kv,
        Some(NullBuffer::from(valid)),
        sorted,
    )?))
}

/// Trades to one batch, sorted by (symbol, timestamp) so files prune well.
pub fn trades_batch<R: Borrow<TradeV2>>(
    schema: &SchemaRef,
    rows: &mut [R],
) -> Result<RecordBatch, LakeError> {
    rows.sort_by(|a, b| {
        let (a, b) = (a.borrow(), b.borrow());
        (a.symbol.as_str(), a.timestamp_us, a.message_id.as_str()).cmp(&(
            b.symbol.as_str(),
            b.timestamp_us,
            b.message_id.as_str(),
        ))
    });
    trades_batch_as_is(schema, rows)
}

/// Trades to one batch, in the order given.
///
/// `rows` may be trades or references to them: the tail converts rows it
/// shares with published snapshots without copying them first.
pub fn trades_batch_as_is<R: Borrow<TradeV2>>(
    schema: &SchemaRef,
    rows: &[R],
) -> Result<RecordBatch, LakeError> {
    let n = rows.len();
    let cols: Vec<ArrayRef> = vec![
        strings(trades(rows).map(|r| r.message_id.as_str())),
        strings(trades(rows).map(|r| r.trade_id.as_str())),
        strings(trades(rows).map(|r| r.symbol.as_str())),
        strings(trades(rows).map(|r| r.exchange.as_str())),
        strings(trades(rows).map(|r| r.asset_class.as_str())),
        timestamps(trades(rows).map(|r| r.timestamp_us), n),
        timestamps(trades(rows).map(|r| r.ingestion_timestamp_us), n),
        decimals(trades(rows).map(|r| r.price.unscaled()), n)?,
        decimals(trades(rows).map(|r| r.quantity.unscaled()), n)?,
        strings(trades(rows).map(|r| r.currency.as_str())),
        strings(trades(rows).map(|r| r.side.as_str())),
        list_of_strings(schema, "trade_conditions", rows)?,
        longs(trades(rows).map(|r| r.source_sequence), n),
        longs(trades(rows).map(|r| r.platform_sequence), n),
        map_of_strings(schema, "vendor_data", rows)?,
    ];
    let mut cols = cols;
    // A table evolved to carry `instrument` (every table this build opens);
    // a schema without it is written without it.
    if schema.index_of("instrument").is_ok() {
        cols.push(Arc::new(
            trades(rows)
                .map(|r| r.instrument.as_deref())
                .collect::<StringArray>(),
        ));
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
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
    use std::collections::BTreeMap;

    fn trade(sym: &str, ts: i64, vendor: bool) -> TradeV2 {
        TradeV2::builder("X", sym, &ts.to_string(), ts)
            .ingested_at(ts + 1)
            .price(Dec8::parse("1.5").unwrap())
            .quantity(Dec8::parse("2").unwrap())
            .conditions(vec!["a".into()])
            .source_sequence(Some(ts))
            .vendor_data(vendor.then(|| BTreeMap::from([("k".into(), "v".into())])))
            .build()
    }

    #[test]
    fn trades_batch_matches_iceberg_arrow_schema_and_sorts() {
        let schema = arrow_schema(&trades_schema().unwrap()).unwrap();
        let mut rows = vec![
            trade("B", 2, true),
            trade("A", 3, false),
            trade("A", 1, true),
        ];
        let b = trades_batch(&schema, &mut rows).unwrap();
        assert_eq!(b.num_rows(), 3);
        let sym = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            sym.iter().flatten().collect::<Vec<_>>(),
            vec!["A", "A", "B"]
        );
        assert_eq!(b.column(14).null_count(), 1);
    }

    #[test]
    fn dead_letters_batch_matches_schema() {
        let schema = arrow_schema(&dead_letters_schema().unwrap()).unwrap();
        let d = DeadLetter::new("X", "s", 1, "r".into(), vec![1, 2]);
        assert_eq!(dead_letters_batch(&schema, &[d]).unwrap().num_rows(), 1);
    }
}
