//! Messages to a `WriterActor`.

use std::sync::Arc;

use actix::Message;

use crate::lake::LakeError;
use crate::lake::batch::TradeChunk;
use crate::lake::commit::KafkaOffsets;
pub use crate::lake::commit::Span;
use crate::model::DeadLetter;

/// Rows for one table, decoded from Kafka.
#[derive(Debug, Clone)]
pub enum Rows {
    /// Chunks as the consumer read them; their buffers are shared with the
    /// tail, which holds the same rows until they commit.
    Trades(Vec<TradeChunk>),
    DeadLetters(Vec<DeadLetter>),
}

impl Rows {
    pub fn len(&self) -> usize {
        match self {
            Rows::Trades(r) => r.iter().map(TradeChunk::len).sum(),
            Rows::DeadLetters(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Consumed records: the rows plus the runs of offsets they came from.
/// A record that became no row (undecodable, routed elsewhere) still
/// advances its offset here; one skipped leaves a hole between two spans.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Consumed {
    pub rows: Rows,
    pub positions: Vec<Span>,
    /// The consumer loop's generation (its restart count).
    pub generation: u64,
    /// Trades only: each row's topic, partition and offset, in row order,
    /// for the lake's accounting (empty for rows that need none).
    pub at: Vec<(Arc<str>, i32, i64)>,
}

/// Partitions the consumer group gave this daemon (`kafka.assignment =
/// group`), each with the offset it reads on from; sent before any record
/// read under the new assignment.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Assigned(pub Vec<(String, i32, i64)>);

/// Commit whatever is buffered now.
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<i64>, WriterError>")]
pub struct Flush;

/// The offsets this writer has taken in (committed or buffered).
#[derive(Debug, Message)]
#[rtype(result = "KafkaOffsets")]
pub struct GetPositions;

/// Tell `0` about every commit from now on (the consumer, for Kafka group
/// offsets; the query side, for the tail).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddCommitListener(pub actix::Recipient<crate::messages::consumer::Committed>);

/// Where to ask for a consumer restart when this writer rewinds to its last
/// snapshot after a failed commit.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetRestarter(pub actix::Recipient<crate::messages::consumer::RestartConsumer>);

/// Why a flush (a commit) failed; the reply to [`Flush`].
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("table {table}: {source}")]
    Lake {
        table: &'static str,
        source: Box<LakeError>,
    },
    #[error("flush task failed: {0}")]
    Join(String),
    #[error("writer config: {0}")]
    Config(String),
    #[error("commit failed on purpose (chaos.fail_commits)")]
    Chaos,
    /// Rows of a partition that moved between daemons of one consumer
    /// group were committed by its other owner while this commit was being
    /// written; the writer rewinds to the table and reads on from there.
    #[error(
        "table {table}: another owner committed rows of partitions {below:?} (below the offsets shown) meanwhile"
    )]
    Overlap {
        table: &'static str,
        below: std::collections::BTreeMap<(String, i32), i64>,
    },
}
