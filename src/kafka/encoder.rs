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
    /// Exchange → its trades topic, made once: a record takes a reference.
    trades_topics: HashMap<String, Arc<str>>,
    topic_prefix: String,
    dead_letter_topic: Arc<str>,
}

/// A record ready for Kafka.
pub struct Encoded {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
}

impl Encoded {
    pub fn borrowed(&self) -> EncodedRef<'_> {
        EncodedRef {
            topic: &self.topic,
            key: &self.key,
            payload: &self.payload,
        }
    }
}

/// A record ready for Kafka, borrowed: what the producer hands librdkafka
/// (which copies it). Only a record that does not go out at once (to the
/// spill log, or to wait for room) is copied into an owned one.
#[derive(Clone, Copy)]
pub struct EncodedRef<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub payload: &'a [u8],
}

impl Encoder {
    pub fn new(codec: Arc<Codec>, kafka: &crate::config::KafkaConfig) -> Self {
        Self {
            codec,
            trades_topics: HashMap::default(),
            topic_prefix: kafka.trades_topic_prefix.clone(),
            dead_letter_topic: Arc::from(kafka.dead_letter_topic.as_str()),
        }
    }

    pub fn encode(&mut self, record: &Record) -> Result<Encoded, AvroError> {
        let mut payload = Vec::new();
        let (topic, key) = self.encode_into(record, &mut payload)?;
        Ok(Encoded {
            topic: topic.to_string(),
            key: key.to_string(),
            payload,
        })
    }

    /// Appends the record's bytes to `payload` and gives its topic and key
    /// (the key borrowed from the record). The producer reuses one buffer:
    /// a topic, a key and a payload allocated and freed per trade were
    /// three of the feed thread's allocations.
    pub fn encode_into<'r>(
        &mut self,
        record: &'r Record,
        payload: &mut Vec<u8>,
    ) -> Result<(Arc<str>, &'r str), AvroError> {
        Ok(match record {
            Record::Trade(t) => {
                // Looked up before `entry`, which takes an owned key: a
                // copy of the exchange's name per trade otherwise.
                let topic = match self.trades_topics.get(&t.exchange) {
                    Some(topic) => topic.clone(),
                    None => {
                        let topic: Arc<str> = Arc::from(format!(
                            "{}.{}",
                            self.topic_prefix,
                            t.exchange.to_ascii_lowercase()
                        ));
                        self.trades_topics.insert(t.exchange.clone(), topic.clone());
                        topic
                    }
                };
                self.codec.encode_trade_into(payload, t);
                // keyed by symbol: one symbol's trades stay in order on one partition
                (topic, t.symbol.as_str())
            }
            Record::DeadLetter(d) => {
                payload.extend_from_slice(&self.codec.encode_dead_letter(d)?);
                (self.dead_letter_topic.clone(), d.exchange.as_str())
            }
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
