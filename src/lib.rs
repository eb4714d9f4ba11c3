//! ticklake: market-data capture daemon. Exchange WebSocket feeds are
//! normalized into TradeV2, published to Kafka as Avro (Confluent wire
//! format) and landed exactly once in Apache Iceberg tables.

pub mod actors;
pub mod api;
pub mod backfill;
pub mod config;
pub mod continuity;
pub mod daemon;
pub mod dedup;
pub mod degrade;
pub mod exchanges;
pub mod fastmap;
pub mod instruments;
pub mod kafka;
pub mod lake;
pub mod lanes;
pub mod ledger;
pub mod messages;
pub mod metrics;
pub mod model;
pub mod query;
pub mod status;
pub mod telemetry;
pub mod tools;
