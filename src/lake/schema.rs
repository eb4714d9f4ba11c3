//! Iceberg schemas and partition specs of the `market` tables. Field ids are
//! fixed here, because readers (and schema evolution) key on them.

use std::sync::Arc;

use iceberg::spec::{
    ListType, MapType, NestedField, PrimitiveType, Schema, Transform, Type, UnboundPartitionSpec,
};

use crate::model::{DECIMAL_PRECISION, DECIMAL_SCALE};

pub const TRADES_TABLE: &str = "trades";
pub const DEAD_LETTERS_TABLE: &str = "dead_letters";
pub const BARS_TABLE: &str = "ohlcv_1m";
/// Settled gaps in the feeds' trade ids (`lake::gaps`).
pub const GAPS_TABLE: &str = "gaps";

fn string(id: i32, name: &str, required: bool) -> Arc<NestedField> {
    Arc::new(NestedField::new(
        id,
        name,
        Type::Primitive(PrimitiveType::String),
        required,
    ))
}

fn prim(id: i32, name: &str, t: PrimitiveType, required: bool) -> Arc<NestedField> {
    Arc::new(NestedField::new(id, name, Type::Primitive(t), required))
}

fn decimal() -> PrimitiveType {
    PrimitiveType::Decimal {
        precision: DECIMAL_PRECISION as u32,
        scale: DECIMAL_SCALE,
    }
}

/// TradeV2 as an Iceberg table. Timestamps are `timestamptz` (UTC micros).
pub fn trades_schema() -> iceberg::Result<Schema> {
    Schema::builder()
        .with_schema_id(0)
        .with_identifier_field_ids(vec![1])
        .with_fields(vec![
            string(1, "message_id", true),
            string(2, "trade_id", true),
            string(3, "symbol", true),
            string(4, "exchange", true),
            string(5, "asset_class", true),
            prim(6, "timestamp", PrimitiveType::Timestamptz, true),
            prim(7, "ingestion_timestamp", PrimitiveType::Timestamptz, true),
            prim(8, "price", decimal(), true),
            prim(9, "quantity", decimal(), true),
            string(10, "currency", true),
            string(11, "side", true),
            Arc::new(NestedField::new(
                12,
                "trade_conditions",
                Type::List(ListType::new(string(16, "element", true))),
                true,
            )),
            prim(13, "source_sequence", PrimitiveType::Long, false),
            prim(14, "platform_sequence", PrimitiveType::Long, false),
            Arc::new(NestedField::new(
                15,
                "vendor_data",
                Type::Map(MapType::new(
                    string(17, "key", true),
                    string(18, "value", true),
                )),
                false,
            )),
            // Added by schema evolution (`lake::evolve`) on tables made
            // before it: rows committed before have none.
            string(19, "instrument", false),
        ])
        .build()
}

/// `market.trades` as builds before `instrument` made it (version 1 of
/// TradeV2): the tables this build finds on an upgrade, for the tests of
/// schema evolution.
pub fn trades_schema_v1() -> iceberg::Result<Schema> {
    let current = trades_schema()?;
    Schema::builder()
        .with_schema_id(0)
        .with_identifier_field_ids(vec![1])
        .with_fields(
            current
                .as_struct()
                .fields()
                .iter()
                .filter(|f| f.name != "instrument")
                .cloned()
                .collect::<Vec<_>>(),
        )
        .build()
}

/// Partitioned by day(timestamp) and exchange, as queries filter on both.
pub fn trades_partition_spec() -> iceberg::Result<UnboundPartitionSpec> {
    Ok(UnboundPartitionSpec::builder()
        .add_partition_field(6, "timestamp_day", Transform::Day)?
        .add_partition_field(4, "exchange", Transform::Identity)?
        .build())
}

pub fn dead_letters_schema() -> iceberg::Result<Schema> {
    Schema::builder()
        .with_schema_id(0)
        .with_identifier_field_ids(vec![1])
        .with_fields(vec![
            string(1, "dead_letter_id", true),
            string(2, "exchange", true),
            string(3, "source", true),
            prim(4, "received_at", PrimitiveType::Timestamptz, true),
            string(5, "reason", true),
            prim(6, "raw", PrimitiveType::Binary, true),
        ])
        .build()
}

pub fn dead_letters_partition_spec() -> iceberg::Result<UnboundPartitionSpec> {
    Ok(UnboundPartitionSpec::builder()
        .add_partition_field(4, "received_at_day", Transform::Day)?
        .build())
}

/// Sums of quantities: room for any number of trades' decimals.
fn volume_decimal() -> PrimitiveType {
    PrimitiveType::Decimal {
        precision: 38,
        scale: DECIMAL_SCALE,
    }
}

/// `market.ohlcv_1m`: one row per (exchange, symbol, minute) and per
/// summarizing commit (`lake::bars`). A minute whose trades arrived over
/// several commits, or late, has several rows; readers merge them:
/// `open` is that of the row with the least (`open_ts`, `open_seq`,
/// `open_id`), `close` of the greatest (`close_ts`, `close_seq`,
/// `close_id`), high, low, volume and trades combine. That is the order
/// `/v1/ohlcv` takes trades in (timestamp, source sequence, message id).
pub fn bars_schema() -> iceberg::Result<Schema> {
    Schema::builder()
        .with_schema_id(0)
        .with_fields(vec![
            string(1, "exchange", true),
            string(2, "symbol", true),
            prim(3, "minute", PrimitiveType::Timestamptz, true),
            prim(4, "open", decimal(), true),
            prim(5, "high", decimal(), true),
            prim(6, "low", decimal(), true),
            prim(7, "close", decimal(), true),
            prim(8, "volume", volume_decimal(), true),
            prim(9, "trades", PrimitiveType::Long, true),
            string(10, "first_trade_id", true),
            string(11, "last_trade_id", true),
            prim(12, "open_ts", PrimitiveType::Timestamptz, true),
            prim(13, "open_seq", PrimitiveType::Long, false),
            string(14, "open_id", true),
            prim(15, "close_ts", PrimitiveType::Timestamptz, true),
            prim(16, "close_seq", PrimitiveType::Long, false),
            string(17, "close_id", true),
        ])
        .build()
}

/// Partitioned like the trades: day(minute) and exchange.
pub fn bars_partition_spec() -> iceberg::Result<UnboundPartitionSpec> {
    Ok(UnboundPartitionSpec::builder()
        .add_partition_field(3, "minute_day", Transform::Day)?
        .add_partition_field(1, "exchange", Transform::Identity)?
        .build())
}
