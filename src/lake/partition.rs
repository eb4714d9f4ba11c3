//! Splitting a flush's rows by the table's partition spec.
//!
//! iceberg's `RecordBatchPartitionSplitter` turns every row's partition
//! value into a `Literal` struct, groups the rows in a hash map and copies
//! each group out with a filter. A flush of the trades table almost always
//! falls in one partition (one day, one exchange), and there that work is
//! all waste: a profile of `ticklake bench` put the splitter at 3.8 % of
//! the whole process's CPU, on the commit thread. So the partition values
//! are computed column-wise first (the same calculator the splitter uses),
//! and when every row has the first row's values the batch goes out whole,
//! under the key the splitter would have given it. Anything else (a flush
//! across midnight, several exchanges) takes the splitter.

use arrow::array::{Array, ArrayRef, RecordBatch, Scalar, StructArray};
use iceberg::arrow::{PartitionValueCalculator, RecordBatchPartitionSplitter};
use iceberg::spec::{Literal, PartitionKey, PartitionSpecRef, SchemaRef};

use super::LakeError;

/// The parts of `batch` by partition, each with its key.
pub fn split(
    schema: &SchemaRef,
    spec: &PartitionSpecRef,
    batch: &RecordBatch,
) -> Result<Vec<(PartitionKey, RecordBatch)>, LakeError> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    if !spec.is_unpartitioned() {
        let calculator = PartitionValueCalculator::try_new(spec, schema)?;
        let values = calculator.calculate(batch)?;
        if all_as_first(&values)? {
            let first = iceberg::arrow::arrow_struct_to_literal(
                &values.slice(0, 1),
                calculator.partition_type(),
            )?;
            if let Some(Some(Literal::Struct(value))) = first.into_iter().next() {
                let key = PartitionKey::new(spec.as_ref().clone(), schema.clone(), value);
                return Ok(vec![(key, batch.clone())]);
            }
        }
    }
    let splitter =
        RecordBatchPartitionSplitter::try_new_with_computed_values(schema.clone(), spec.clone())?;
    Ok(splitter.split(batch)?)
}

/// Whether every row of the struct array `values` equals its first, field
/// by field, with no nulls anywhere (a null takes the splitter's way, which
/// knows what a null partition value means).
fn all_as_first(values: &ArrayRef) -> Result<bool, LakeError> {
    let Some(values) = values.as_any().downcast_ref::<StructArray>() else {
        return Ok(false);
    };
    if values.null_count() > 0 {
        return Ok(false);
    }
    for column in values.columns() {
        if column.null_count() > 0 {
            return Ok(false);
        }
        let first = Scalar::new(column.slice(0, 1));
        let same = arrow::compute::kernels::cmp::eq(column, &first)?;
        if same.true_count() != column.len() {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::lake::batch::{arrow_schema, trades_batch};
    use crate::lake::schema::{trades_partition_spec, trades_schema};
    use crate::model::TradeV2;

    fn table() -> (SchemaRef, PartitionSpecRef) {
        let schema = Arc::new(trades_schema().unwrap());
        let spec = trades_partition_spec()
            .unwrap()
            .bind(schema.clone())
            .unwrap();
        (schema, Arc::new(spec))
    }

    fn trade(exchange: &str, symbol: &str, ts_us: i64) -> TradeV2 {
        TradeV2::builder(exchange, symbol, &ts_us.to_string(), ts_us).build()
    }

    /// The splitter's parts, keyed by partition value, with their rows.
    fn by_splitter(
        schema: &SchemaRef,
        spec: &PartitionSpecRef,
        batch: &RecordBatch,
    ) -> Vec<(String, usize)> {
        let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(
            schema.clone(),
            spec.clone(),
        )
        .unwrap();
        described(splitter.split(batch).unwrap())
    }

    fn described(parts: Vec<(PartitionKey, RecordBatch)>) -> Vec<(String, usize)> {
        let mut out: Vec<_> = parts
            .into_iter()
            .map(|(k, b)| (format!("{:?}", k.data()), b.num_rows()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn one_partition_goes_out_whole_under_the_splitters_key() {
        let (schema, spec) = table();
        let day = 1_764_720_000_000_000; // 2025-12-03T00:00:00Z
        let rows: Vec<TradeV2> = (0..500)
            .map(|i| {
                trade(
                    "BINANCE",
                    ["BTCUSDT", "ETHUSDT"][i % 2],
                    day + i as i64 * 1_000_000,
                )
            })
            .collect();
        let batch = trades_batch(&arrow_schema(&schema).unwrap(), &rows).unwrap();
        let ours = split(&schema, &spec, &batch).unwrap();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].1.num_rows(), 500);
        assert_eq!(described(ours), by_splitter(&schema, &spec, &batch));
    }

    #[test]
    fn rows_across_days_or_exchanges_take_the_splitters_parts() {
        let (schema, spec) = table();
        let day = 1_764_720_000_000_000;
        let mut rows = Vec::new();
        for i in 0..300i64 {
            // Across midnight, and two exchanges.
            let ts = day - 150_000_000 + i * 1_000_000;
            rows.push(trade(
                ["BINANCE", "KRAKEN"][(i % 2) as usize],
                "BTCUSDT",
                ts,
            ));
        }
        let batch = trades_batch(&arrow_schema(&schema).unwrap(), &rows).unwrap();
        let ours = described(split(&schema, &spec, &batch).unwrap());
        assert_eq!(ours.len(), 4, "{ours:?}");
        assert_eq!(ours.iter().map(|p| p.1).sum::<usize>(), 300);
        assert_eq!(ours, by_splitter(&schema, &spec, &batch));
    }

    #[test]
    fn an_empty_batch_has_no_parts() {
        let (schema, spec) = table();
        let batch = trades_batch::<TradeV2>(&arrow_schema(&schema).unwrap(), &[]).unwrap();
        assert!(split(&schema, &spec, &batch).unwrap().is_empty());
    }
}
