//! Messages to the `ProducerActor`.

use actix::Message;

use crate::model::{DeadLetter, TradeV2};

/// A record for Kafka.
#[derive(Debug, Clone)]
pub enum Record {
    Trade(Box<TradeV2>),
    DeadLetter(Box<DeadLetter>),
}

/// Publish one record. The reply comes once librdkafka has queued it (not on
/// delivery), so a feed can pipeline while a full queue still pushes back.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), crate::actors::producer::ProducerError>")]
pub struct Publish(pub Record);

/// Wait until every queued record is delivered (used at shutdown).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), crate::actors::producer::ProducerError>")]
pub struct FlushProducer;
