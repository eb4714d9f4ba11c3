//! Encodes records for Kafka: the Avro body in the Confluent wire format,
//! the topic (one per exchange, plus the dead-letter topic) and the key.
//! Shared by the producer actor and the offline `produce` and `bench`
//! verbs, so all of them write byte-identical records.

use crate::fastmap::FastMap as HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::kafka::avro::{AvroError, Codec};
use crate::messages::producer::Record;

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
            trades_topics: HashMap::default(),
            topic_prefix: kafka.trades_topic_prefix.clone(),
            dead_letter_topic: kafka.dead_letter_topic.clone(),
        }
    }

    pub fn encode(&mut self, record: &Record) -> Result<Encoded, AvroError> {
        Ok(match record {
            Record::Trade(t) => {
                // Looked up before `entry`, which takes an owned key: a
                // copy of the exchange's name per trade otherwise.
                let topic = match self.trades_topics.get(&t.exchange) {
                    Some(topic) => topic.clone(),
                    None => {
                        let topic =
                            format!("{}.{}", self.topic_prefix, t.exchange.to_ascii_lowercase());
                        self.trades_topics.insert(t.exchange.clone(), topic.clone());
                        topic
                    }
                };
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
