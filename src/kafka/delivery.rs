//! Delivery reports: a record handed to librdkafka is counted in flight
//! until its report arrives; an acknowledgement counts it as published, a
//! failure sends it back to the producer actor for the spill log. Reports
//! are handled in librdkafka's producer context, on its polling thread:
//! no task, channel or wake-up per record.

use crate::fastmap::FastMap as HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::IntCounter;
use rdkafka::ClientContext;
use rdkafka::Message as _;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{ProducerContext, ThreadedProducer};
use tokio::sync::mpsc;

use crate::degrade::policy::SpillEntry;
use crate::instruments::Tier;
use crate::kafka::acks::AckLedger;
use crate::kafka::topic::TopicHandle;
use crate::kafka::window::{self, BrokerWindow};
use crate::metrics::{Metrics, Outcome};

/// Delivery progress, shared with the tasks that await librdkafka's
/// delivery reports (they run on other threads).
#[derive(Debug, Default)]
pub struct Deliveries {
    /// Records handed to librdkafka and not yet acknowledged or failed.
    pub in_flight: AtomicU64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

/// A record librdkafka gave back as undeliverable; it goes to the spill log.
pub struct Undelivered {
    pub entry: SpillEntry,
    pub error: String,
    /// The broker will never take it (see [`refused_for_good`]).
    pub refused_for_good: bool,
}

/// Whether the broker (or librdkafka on its behalf) will never take this
/// record, however often it is sent: too large for the topic, or
/// malformed. Such a record is quarantined, not spilled again, or it would
/// stand at the head of the spill log forever.
pub fn refused_for_good(e: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        e,
        KafkaError::MessageProduction(
            C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidMessage | C::InvalidRecord
        )
    )
}

/// What one record's delivery report settles: its counters, and the
/// exchange and tier its acknowledgement is credited to. One per (topic,
/// exchange, tier), looked up once by [`DeliveryCounters`]; each record
/// carries a reference to it through librdkafka as its delivery opaque, so
/// a record costs a reference count here, not an allocation or a label
/// lookup.
pub struct RecordCounters {
    enqueued: IntCounter,
    delivered: IntCounter,
    failed: IntCounter,
    /// The accounting's `published`; dead letters have no tier and none.
    published: Option<IntCounter>,
    /// The names the ack ledger keeps its books under: a delivery report
    /// hands over references, instead of the ledger looking the text up
    /// (two lookups, ~480 instructions a record, callgrind) and of reading
    /// librdkafka's C string of the topic.
    topic: Arc<str>,
    exchange: Arc<str>,
    tier: Option<Tier>,
}

/// One exchange's counters by tier (index 3: dead letters, no tier).
type ByTier = [Option<Arc<RecordCounters>>; 4];

/// What a record is sent with: its topic's handle and its counters.
#[derive(Clone)]
pub struct Sending {
    pub topic: Arc<TopicHandle<DeliveryContext>>,
    pub counters: Arc<RecordCounters>,
}

/// One topic's handle, and its [`RecordCounters`] by exchange and tier.
struct TopicEntry {
    handle: Arc<TopicHandle<DeliveryContext>>,
    by_exchange: HashMap<String, ByTier>,
}

/// What records are sent with ([`Sending`]), made once per topic,
/// exchange and tier: a record costs a lookup here, not a label lookup,
/// an allocation, or librdkafka's lookup of its topic by name.
pub struct DeliveryCounters {
    metrics: Metrics,
    producer: Arc<KafkaProducer>,
    kept: HashMap<String, TopicEntry>,
    /// The last answer: a feed's batch is one topic, exchange and tier, so
    /// nearly every record is sent with the same. Compared, not looked up,
    /// it saves two hashes of names and two reference counts a record.
    last: Option<Sending>,
}

impl DeliveryCounters {
    pub fn new(metrics: Metrics, producer: Arc<KafkaProducer>) -> Self {
        Self {
            metrics,
            producer,
            kept: HashMap::default(),
            last: None,
        }
    }

    /// What a record of `topic`, `exchange` and `tier` is sent with. Fails
    /// only if librdkafka cannot make a handle on `topic`.
    pub fn of(
        &mut self,
        topic: &str,
        exchange: &str,
        tier: Option<Tier>,
    ) -> Result<&Sending, KafkaError> {
        let same = |s: &Sending| {
            s.counters.tier == tier
                && *s.counters.topic == *topic
                && *s.counters.exchange == *exchange
        };
        if !self.last.as_ref().is_some_and(same) {
            let found = self.find(topic, exchange, tier)?;
            self.last = Some(found);
        }
        Ok(self.last.as_ref().expect("set above"))
    }

    fn find(
        &mut self,
        topic: &str,
        exchange: &str,
        tier: Option<Tier>,
    ) -> Result<Sending, KafkaError> {
        let slot = tier.map_or(3, Tier::index);
        if let Some(entry) = self.kept.get(topic)
            && let Some(c) = entry
                .by_exchange
                .get(exchange)
                .and_then(|t| t[slot].as_ref())
        {
            return Ok(Sending {
                topic: entry.handle.clone(),
                counters: c.clone(),
            });
        }
        if !self.kept.contains_key(topic) {
            let handle = Arc::new(TopicHandle::new(&self.producer, topic)?);
            self.kept.insert(
                topic.to_string(),
                TopicEntry {
                    handle,
                    by_exchange: HashMap::default(),
                },
            );
        }
        let records = |outcome: &str| {
            self.metrics
                .producer_records
                .with_label_values(&[topic, outcome])
        };
        let c = Arc::new(RecordCounters {
            enqueued: records("enqueued"),
            delivered: records("delivered"),
            failed: records("failed"),
            published: tier.map(|t| {
                self.metrics.messages.with_label_values(&[
                    exchange,
                    t.label(),
                    Outcome::Published.as_str(),
                ])
            }),
            topic: Arc::from(topic),
            exchange: Arc::from(exchange),
            tier,
        });
        let entry = self
            .kept
            .get_mut(topic)
            .expect("the topic's entry was made above");
        entry.by_exchange.entry(exchange.to_string()).or_default()[slot] = Some(c.clone());
        Ok(Sending {
            topic: entry.handle.clone(),
            counters: c,
        })
    }
}

/// What every delivery report needs besides its record's counters; the
/// producer's librdkafka context. Reports arrive on librdkafka's polling
/// thread: an acknowledgement is counted there and then, and only a
/// failure sends anything anywhere (the record, back to the producer
/// actor for the spill log).
pub struct DeliveryContext {
    pub deliveries: Arc<Deliveries>,
    pub undelivered: mpsc::UnboundedSender<Undelivered>,
    /// The embedded broker's window; `None` on a real broker.
    pub window: Option<Arc<BrokerWindow>>,
    /// Where acknowledged trades meet the lake's commits.
    pub ledger: Option<Arc<AckLedger>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<RecordCounters>;

    fn delivery(&self, report: &DeliveryResult<'_>, counters: Arc<RecordCounters>) {
        let (msg, error) = match report {
            Ok(m) => (m, None),
            Err((e, m)) => (m, Some(e)),
        };
        let est = window::message_estimate(msg);
        let d = &self.deliveries;
        match error {
            None => {
                // The record's own topic, named by its counters: reading
                // librdkafka's C string measures and checks it (~240
                // instructions, callgrind).
                let topic = &counters.topic;
                if let Some(w) = &self.window {
                    w.delivered(topic, msg.partition(), est);
                }
                if let (Some(l), Some(t)) = (&self.ledger, counters.tier) {
                    l.acked(topic, msg.partition(), msg.offset(), &counters.exchange, t);
                }
                // No clock read here: the producer's tick sees `delivered`
                // move and takes that as the time of progress. Reading the
                // clock per report was 18 % of this thread's samples.
                d.delivered.fetch_add(1, Ordering::Relaxed);
                d.in_flight.fetch_sub(1, Ordering::Relaxed);
                counters.delivered.inc();
                if let Some(p) = &counters.published {
                    p.inc();
                }
            }
            Some(e) => {
                if let Some(w) = &self.window {
                    w.failed(est);
                }
                d.failed.fetch_add(1, Ordering::Relaxed);
                d.in_flight.fetch_sub(1, Ordering::Relaxed);
                counters.failed.inc();
                tracing::warn!(topic = %msg.topic(), error = %e, "delivery failed; record goes to the spill log");
                let entry = SpillEntry {
                    exchange: counters.exchange.to_string(),
                    tier: counters.tier,
                    topic: msg.topic().to_string(),
                    key: msg
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                    payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                };
                // The actor gone (shutdown): the record was purged with
                // the producer and cannot be resent from here.
                let _ = self.undelivered.send(Undelivered {
                    entry,
                    refused_for_good: refused_for_good(e),
                    error: e.to_string(),
                });
            }
        }
    }
}

/// The daemon's Kafka producer: librdkafka's own threads, and delivery
/// reports handled by [`DeliveryContext`].
pub type KafkaProducer = ThreadedProducer<DeliveryContext>;

/// Where a record's progress is counted.
pub struct Route<'a> {
    pub deliveries: &'a Arc<Deliveries>,
    /// The embedded broker's window; `None` on a real broker.
    pub window: Option<&'a Arc<BrokerWindow>>,
}

/// Whether `entry` is held back by the embedded broker's window (the
/// consumer is too far behind for the cluster to keep more).
pub fn window_full(window: Option<&Arc<BrokerWindow>>, entry: &SpillEntry) -> bool {
    room_short(window, &entry.topic, entry.key.len(), entry.payload.len())
}

fn room_short(
    window: Option<&Arc<BrokerWindow>>,
    topic: &str,
    key_len: usize,
    payload_len: usize,
) -> bool {
    window.is_some_and(|w| !w.has_room(topic, window::estimate(key_len, payload_len)))
}

/// Hands one record to librdkafka; its delivery report settles it
/// ([`DeliveryContext`]). A record the embedded broker's window holds
/// back is refused as `QueueFull`, as librdkafka refuses one when its own
/// queue is full, and handled the same way.
pub fn dispatch(
    route: &Route<'_>,
    entry: &SpillEntry,
    sending: &Sending,
) -> Result<(), KafkaError> {
    send(route, sending, &entry.key, &entry.payload)
}

/// [`dispatch`] on borrowed parts: the hot path builds a [`SpillEntry`]
/// (owning the exchange's name) only for a record that does not go out.
pub fn send(
    route: &Route<'_>,
    sending: &Sending,
    key: &str,
    payload: &[u8],
) -> Result<(), KafkaError> {
    let topic = sending.topic.name();
    let est = window::estimate(key.len(), payload.len());
    if room_short(route.window, topic, key.len(), payload.len()) {
        return Err(KafkaError::MessageProduction(
            rdkafka::types::RDKafkaErrorCode::QueueFull,
        ));
    }
    // Counted before the send: the report may arrive (on librdkafka's
    // thread) before `send` returns here.
    route.deliveries.in_flight.fetch_add(1, Ordering::Relaxed);
    if let Some(w) = route.window {
        w.enqueued(est);
    }
    match sending
        .topic
        .produce(key.as_bytes(), payload, sending.counters.clone())
    {
        Ok(()) => {
            sending.counters.enqueued.inc();
            Ok(())
        }
        Err(e) => {
            route.deliveries.in_flight.fetch_sub(1, Ordering::Relaxed);
            if let Some(w) = route.window {
                w.failed(est);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::ClientConfig;

    fn counters() -> DeliveryCounters {
        let (undelivered, _) = mpsc::unbounded_channel();
        // Nothing is sent: librdkafka connects only when there is work.
        let producer: KafkaProducer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .create_with_context(DeliveryContext {
                deliveries: Arc::default(),
                undelivered,
                window: None,
                ledger: None,
            })
            .unwrap();
        DeliveryCounters::new(Metrics::new().unwrap(), Arc::new(producer))
    }

    /// The remembered answer is given only for the same topic, exchange
    /// and tier; any change looks the right counters up, and going back
    /// finds the ones made before.
    #[test]
    fn counters_follow_topic_exchange_and_tier() {
        let mut c = counters();
        let key = |s: &Sending| {
            (
                s.topic.name().to_string(),
                s.counters.exchange.to_string(),
                s.counters.tier,
            )
        };
        let first = c.of("t.a", "A", Some(Tier::One)).unwrap().clone();
        assert_eq!(key(&first), ("t.a".into(), "A".into(), Some(Tier::One)));
        let again = c.of("t.a", "A", Some(Tier::One)).unwrap();
        assert!(Arc::ptr_eq(&again.counters, &first.counters));
        for (topic, exchange, tier) in [
            ("t.a", "B", Some(Tier::One)),
            ("t.a", "A", Some(Tier::Two)),
            ("t.a", "A", None),
            ("t.b", "A", Some(Tier::One)),
        ] {
            let s = c.of(topic, exchange, tier).unwrap();
            assert_eq!(key(s), (topic.into(), exchange.into(), tier));
            assert!(!Arc::ptr_eq(&s.counters, &first.counters));
        }
        let back = c.of("t.a", "A", Some(Tier::One)).unwrap();
        assert!(Arc::ptr_eq(&back.counters, &first.counters));
    }
}
