//! Where the lake left each symbol's trade ids: the point a restarted feed
//! fills from. Whatever was published and not committed when the process
//! died (the embedded broker's contents die with it) lies between this and
//! the first live trade, and the venue still has it.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, MapArray};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use futures::TryStreamExt;
use iceberg::expr::Reference;
use iceberg::spec::Datum;
use iceberg::table::Table;

use super::LakeError;

/// The newest stored trade of one (exchange, symbol, id space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastId {
    pub exchange: String,
    pub symbol: String,
    /// `trade`, or Binance's `aggTrade` (the trade's vendor `stream`).
    pub space: String,
    pub id: i64,
    /// Its exchange time, µs.
    pub at_us: i64,
}

/// The newest id of every (exchange, symbol, id space) among trades whose
/// exchange time is at or after `since_us` and that carry an id
/// (`source_sequence`).
pub async fn last_ids(table: &Table, since_us: i64) -> Result<Vec<LastId>, LakeError> {
    if table.metadata().current_snapshot().is_none() {
        return Ok(Vec::new());
    }
    let scan = table
        .scan()
        .select([
            "exchange",
            "symbol",
            "source_sequence",
            "timestamp",
            "vendor_data",
        ])
        .with_filter(
            Reference::new("timestamp")
                .greater_than_or_equal_to(Datum::timestamptz_micros(since_us))
                .and(Reference::new("source_sequence").is_not_null()),
        )
        .build()?;
    let mut stream = scan.to_arrow().await?;
    let mut last: BTreeMap<(String, String, String), (i64, i64)> = BTreeMap::new();
    while let Some(batch) = stream.try_next().await? {
        let bad = || {
            LakeError::Catalog(format!(
                "market.trades columns read back with unexpected types: {:?}",
                batch.schema()
            ))
        };
        let exchange = batch.column(0).as_string_opt::<i32>().ok_or_else(bad)?;
        let symbol = batch.column(1).as_string_opt::<i32>().ok_or_else(bad)?;
        let seq = batch
            .column(2)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(bad)?;
        let ts = batch
            .column(3)
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(bad)?;
        let vendor = batch.column(4).as_map_opt().ok_or_else(bad)?;
        for i in 0..batch.num_rows() {
            if !seq.is_valid(i) {
                continue;
            }
            let key = (
                exchange.value(i).to_string(),
                symbol.value(i).to_string(),
                stream_of(vendor, i).unwrap_or("trade").to_string(),
            );
            let (id, at) = (seq.value(i), ts.value(i));
            let e = last.entry(key).or_insert((id, at));
            if id > e.0 {
                *e = (id, at);
            }
        }
    }
    Ok(last
        .into_iter()
        .map(|((exchange, symbol, space), (id, at_us))| LastId {
            exchange,
            symbol,
            space,
            id,
            at_us,
        })
        .collect())
}

/// Row `i`'s vendor `stream`, if it has one.
fn stream_of(vendor: &MapArray, i: usize) -> Option<&str> {
    if !vendor.is_valid(i) {
        return None;
    }
    let keys = vendor.keys().as_string_opt::<i32>()?;
    let values = vendor.values().as_string_opt::<i32>()?;
    let offsets = vendor.value_offsets();
    let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
    (start..end)
        .find(|&j| keys.value(j) == "stream")
        .map(|j| values.value(j))
}
