//! Messages to the `TailActor`.

use std::collections::BTreeSet;
use std::sync::Arc;

use actix::Message;
use arrow::array::RecordBatch;
use serde::Serialize;

use crate::lake::commit::KafkaOffsets;
use crate::messages::observe::Health;
use crate::model::TradeV2;

/// A consumed trade with the Kafka position it was read from. The position
/// is what splits a hybrid read exactly: rows at or past a snapshot's
/// recorded offsets are not in that snapshot, all others are.
#[derive(Debug, Clone)]
pub struct TailRow {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// The writer holds the same row.
    pub trade: Arc<TradeV2>,
}

/// Trades the consumer has just read, in Kafka order per partition. Sent
/// (and awaited) before the same trades go to the writer, so the tail always
/// holds a row before any commit can cover it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum Tailed {
    /// The consumer's: a chunk's batch (shared with the writer) and each
    /// row's topic, partition and offset, in row order.
    Chunk {
        batch: RecordBatch,
        at: Vec<(Arc<str>, i32, i64)>,
    },
    /// Owned trades, which the tail converts (tools and tests).
    Rows(Vec<TailRow>),
}

/// From the query side, after a trades commit: it now pins the snapshot of
/// `offsets` (or gave up trying), so the rows below them may go. Until
/// then queries still pin the snapshot before it, which needs those rows
/// from the tail.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct QueryPinned {
    pub offsets: KafkaOffsets,
}

/// Which tail rows a query can use. Every field narrows; `None` means no
/// restriction. Bounds are inclusive, in UTC microseconds. The tail returns
/// exactly the rows that match; a query still re-applies its own predicates
/// on them, since `hybrid::tail_filter` widens what it cannot express.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TailFilter {
    pub symbols: Option<BTreeSet<String>>,
    pub exchanges: Option<BTreeSet<String>>,
    pub start_us: Option<i64>,
    pub end_us: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TailError {
    /// The tail already dropped rows the pinned snapshot does not hold: a
    /// newer snapshot is visible, and the reader must pin that one instead.
    /// Retrying with a freshly loaded table always succeeds eventually,
    /// because the tail only learns of a commit after it is visible.
    #[error(
        "tail pruned {topic}/{partition} to {pruned}, past the pinned snapshot's {since}; reload the table"
    )]
    Stale {
        topic: String,
        partition: i32,
        pruned: i64,
        since: i64,
    },
    /// Rows could not be converted to Arrow (they are kept; the query fails).
    #[error("tail rows to arrow: {0}")]
    Arrow(String),
}

/// What the tail holds, for observers (`Observe<TailState>`, `/status`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TailState {
    pub rows: usize,
    pub symbols: usize,
    pub max_rows: usize,
    /// Offsets of the newest commit the tail has pruned to.
    pub pruned: KafkaOffsets,
    #[serde(flatten)]
    pub health: Health,
}
