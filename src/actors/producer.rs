//! ProducerActor: encodes records as Avro in the Confluent wire format and
//! hands them to an idempotent rdkafka producer, keyed by symbol.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::avro::{AvroError, Codec};
use crate::messages::producer::{FlushProducer, Publish, Record};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("encoding record: {0}")]
    Encode(#[from] AvroError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("producer task failed: {0}")]
    Join(String),
}

impl ProducerError {
    /// Encoding failures are bugs in the record, retrying cannot help;
    /// broker errors may pass.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProducerError::Kafka(_) | ProducerError::Join(_))
    }
}

/// Encodes a record and picks its topic and key. Shared with the offline
/// `ticklake produce` path so both write byte-identical records.
pub struct Encoder {
    codec: Arc<Codec>,
    trades_topics: HashMap<String, String>,
    topic_prefix: String,
    dead_letter_topic: String,
}

/// A record ready for Kafka.
pub struct Encoded {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
}

impl Encoder {
    pub fn new(codec: Arc<Codec>, kafka: &crate::config::KafkaConfig) -> Self {
        Self {
            codec,
            trades_topics: HashMap::new(),
            topic_prefix: kafka.trades_topic_prefix.clone(),
            dead_letter_topic: kafka.dead_letter_topic.clone(),
        }
    }

    pub fn encode(&mut self, record: &Record) -> Result<Encoded, AvroError> {
        Ok(match record {
            Record::Trade(t) => {
                let prefix = &self.topic_prefix;
                let topic = self
                    .trades_topics
                    .entry(t.exchange.clone())
                    .or_insert_with(|| format!("{prefix}.{}", t.exchange.to_ascii_lowercase()))
                    .clone();
                Encoded {
                    topic,
                    // keyed by symbol: one symbol's trades stay in order on one partition
                    key: t.symbol.clone(),
                    payload: self.codec.encode_trade(t)?,
                }
            }
            Record::DeadLetter(d) => Encoded {
                topic: self.dead_letter_topic.clone(),
                key: d.exchange.clone(),
                payload: self.codec.encode_dead_letter(d)?,
            },
        })
    }
}

/// Enqueues one record, waiting while librdkafka's queue is full; returns
/// the delivery future. Waiting here is the backpressure to the feeds.
pub async fn enqueue(
    producer: &FutureProducer,
    rec: &Encoded,
) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
    loop {
        let fr = FutureRecord::to(&rec.topic)
            .key(&rec.key)
            .payload(&rec.payload);
        match producer.send_result(fr) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

pub struct ProducerActor {
    producer: FutureProducer,
    encoder: Encoder,
    metrics: Metrics,
}

impl ProducerActor {
    pub fn new(producer: FutureProducer, encoder: Encoder, metrics: Metrics) -> Self {
        Self {
            producer,
            encoder,
            metrics,
        }
    }
}

impl Actor for ProducerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // bounded: a slow broker pushes back on the feeds instead of growing memory
        ctx.set_mailbox_capacity(1024);
    }
}

impl Handler<Publish> for ProducerActor {
    type Result = AtomicResponse<Self, Result<(), ProducerError>>;

    fn handle(&mut self, msg: Publish, _ctx: &mut Self::Context) -> Self::Result {
        let encoded = match self.encoder.encode(&msg.0) {
            Ok(e) => e,
            Err(e) => {
                return AtomicResponse::new(Box::pin(
                    async move { Err(e.into()) }.into_actor(self),
                ));
            }
        };
        let producer = self.producer.clone();
        let metrics = self.metrics.clone();
        // Atomic: records are enqueued strictly in arrival order even when
        // the queue is full and we have to wait.
        AtomicResponse::new(Box::pin(
            async move {
                let delivery = enqueue(&producer, &encoded).await?;
                metrics
                    .producer_records
                    .with_label_values(&[&encoded.topic, "enqueued"])
                    .inc();
                let topic = encoded.topic;
                tokio::spawn(async move {
                    let outcome = match delivery.await {
                        Ok(Ok(_)) => "delivered",
                        Ok(Err((e, _))) => {
                            tracing::error!(topic = %topic, error = %e, "record delivery failed");
                            "failed"
                        }
                        Err(_) => {
                            tracing::error!(topic = %topic, "producer dropped before delivery");
                            "failed"
                        }
                    };
                    metrics
                        .producer_records
                        .with_label_values(&[&topic, outcome])
                        .inc();
                });
                Ok(())
            }
            .into_actor(self),
        ))
    }
}

impl Handler<FlushProducer> for ProducerActor {
    type Result = ResponseFuture<Result<(), ProducerError>>;

    fn handle(&mut self, _: FlushProducer, _ctx: &mut Self::Context) -> Self::Result {
        let producer = self.producer.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30)))
                .await
                .map_err(|e| ProducerError::Join(e.to_string()))??;
            Ok(())
        })
    }
}
