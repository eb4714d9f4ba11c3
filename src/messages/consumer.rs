//! Messages to the `ConsumerActor`.

use actix::Message;

use crate::lake::commit::KafkaOffsets;

/// A writer committed a snapshot covering `offsets`; the consumer commits
/// them to the Kafka group too, so lag tools see real lag.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Committed {
    pub table: &'static str,
    pub snapshot_id: i64,
    pub offsets: KafkaOffsets,
}
