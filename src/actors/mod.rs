//! The daemon's actors, one per file.

pub mod binance_feed;
pub mod consumer;
pub mod degradation;
pub mod producer;
pub mod query;
pub mod tail;
pub mod writer;
