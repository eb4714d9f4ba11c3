//! Messages to the `ConsumerActor`.

use actix::Message;
use arrow::array::RecordBatch;

use crate::lake::commit::KafkaOffsets;

/// A writer committed a snapshot covering `offsets`; the consumer commits
/// them to the Kafka group too, so lag tools see real lag.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Committed {
    pub table: &'static str,
    pub snapshot_id: i64,
    pub offsets: KafkaOffsets,
    /// The trades table: the rows the snapshot added, for the bars.
    pub rows: Option<CommittedRows>,
}

/// The rows of a commit, shared (Arrow buffers are reference counted);
/// shown by their count, not their contents.
#[derive(Clone)]
pub struct CommittedRows(pub RecordBatch);

impl std::fmt::Debug for CommittedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CommittedRows({} rows)", self.0.num_rows())
    }
}

/// Stop the consumer loop; its supervisor restarts it at the writers'
/// positions. The reply is the generation the restarted loop stamps on its
/// `Consumed` messages, so a writer that rewound can drop what the old loop
/// still had in flight. Sent by the watchdog (no progress) and by a writer
/// recovering from a failed commit.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "u64")]
pub struct RestartConsumer;
