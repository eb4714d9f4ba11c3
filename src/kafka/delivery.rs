//! Delivery reports: a record handed to librdkafka is counted in flight
//! until its report arrives; an acknowledgement counts it as published, a
//! failure sends it back to the producer actor for the spill log.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus::IntCounter;
use rdkafka::Message as _;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;

use crate::degrade::policy::SpillEntry;
use crate::instruments::Tier;
use crate::kafka::acks::AckLedger;
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
    /// Milliseconds since the actor's epoch of the last acknowledgement.
    pub last_delivery_ms: AtomicU64,
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

/// The counters one record's delivery touches. Looked up once per (topic,
/// exchange, tier) by [`DeliveryCounters`] and cloned per record (a few
/// reference counts) instead of a label lookup per record.
#[derive(Clone)]
pub struct RecordCounters {
    enqueued: IntCounter,
    delivered: IntCounter,
    failed: IntCounter,
    /// The accounting's `published`; dead letters have no tier and none.
    published: Option<IntCounter>,
}

/// [`RecordCounters`] kept per topic, exchange and tier.
pub struct DeliveryCounters {
    metrics: Metrics,
    kept: HashMap<String, HashMap<String, [Option<RecordCounters>; 4]>>,
}

impl DeliveryCounters {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            kept: HashMap::new(),
        }
    }

    pub fn of(&mut self, topic: &str, exchange: &str, tier: Option<Tier>) -> RecordCounters {
        if let Some(c) = self
            .kept
            .get(topic)
            .and_then(|e| e.get(exchange))
            .and_then(|t| t[tier.map_or(3, Tier::index)].as_ref())
        {
            return c.clone();
        }
        let records = |outcome: &str| {
            self.metrics
                .producer_records
                .with_label_values(&[topic, outcome])
        };
        let c = RecordCounters {
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
        };
        self.kept
            .entry(topic.to_string())
            .or_default()
            .entry(exchange.to_string())
            .or_default()[tier.map_or(3, Tier::index)] = Some(c.clone());
        c
    }
}

/// Where a record goes and what it reports to.
pub struct Route<'a> {
    pub producer: &'a FutureProducer,
    pub deliveries: &'a Arc<Deliveries>,
    pub undelivered: &'a mpsc::UnboundedSender<Undelivered>,
    /// The embedded broker's window; `None` on a real broker.
    pub window: Option<&'a Arc<BrokerWindow>>,
    /// Where acknowledged trades meet the lake's commits.
    pub ledger: Option<&'a Arc<AckLedger>>,
    pub epoch: Instant,
}

/// Whether `entry` is held back by the embedded broker's window (the
/// consumer is too far behind for the cluster to keep more).
pub fn window_full(window: Option<&Arc<BrokerWindow>>, entry: &SpillEntry) -> bool {
    window.is_some_and(|w| {
        !w.has_room(
            &entry.topic,
            window::estimate(entry.key.len(), entry.payload.len()),
        )
    })
}

/// Hands one record to librdkafka and arranges for its delivery report:
/// an acknowledgement counts as published, a failure sends the record back
/// to the actor for the spill log. A record the embedded broker's window
/// holds back is refused as `QueueFull`, as librdkafka refuses one when its
/// own queue is full, and handled the same way.
pub fn dispatch(
    route: &Route<'_>,
    entry: &SpillEntry,
    counters: RecordCounters,
) -> Result<(), KafkaError> {
    let est = window::estimate(entry.key.len(), entry.payload.len());
    if window_full(route.window, entry) {
        return Err(KafkaError::MessageProduction(
            rdkafka::types::RDKafkaErrorCode::QueueFull,
        ));
    }
    let fr = FutureRecord::to(&entry.topic)
        .key(&entry.key)
        .payload(&entry.payload);
    let delivery = route.producer.send_result(fr).map_err(|(e, _)| e)?;
    let window = route.window.cloned();
    let ledger = route.ledger.cloned();
    if let Some(w) = &window {
        w.enqueued(est);
    }
    let (deliveries, undelivered, epoch) = (route.deliveries, route.undelivered, route.epoch);
    deliveries.in_flight.fetch_add(1, Ordering::Relaxed);
    let deliveries = deliveries.clone();
    let undelivered = undelivered.clone();
    let exchange = entry.exchange.clone();
    let tier = entry.tier;
    let topic = entry.topic.clone();
    counters.enqueued.inc();
    tokio::spawn(async move {
        let outcome = delivery.await;
        let ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        match outcome {
            Ok(Ok(d)) => {
                if let Some(w) = &window {
                    w.delivered(&topic, d.partition, est);
                }
                if let (Some(l), Some(t)) = (&ledger, tier) {
                    l.acked(&topic, d.partition, d.offset, &exchange, t);
                }
                deliveries.delivered.fetch_add(1, Ordering::Relaxed);
                deliveries.last_delivery_ms.fetch_max(ms, Ordering::Relaxed);
                deliveries.in_flight.fetch_sub(1, Ordering::Relaxed);
                counters.delivered.inc();
                if let Some(p) = &counters.published {
                    p.inc();
                }
            }
            Ok(Err((e, msg))) => {
                if let Some(w) = &window {
                    w.failed(est);
                }
                deliveries.failed.fetch_add(1, Ordering::Relaxed);
                deliveries.in_flight.fetch_sub(1, Ordering::Relaxed);
                counters.failed.inc();
                tracing::warn!(topic = %topic, error = %e, "delivery failed; record goes to the spill log");
                let entry = SpillEntry {
                    exchange,
                    tier,
                    topic,
                    key: msg
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                    payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                };
                let _ = undelivered.send(Undelivered {
                    entry,
                    refused_for_good: refused_for_good(&e),
                    error: e.to_string(),
                });
            }
            Err(_) => {
                if let Some(w) = &window {
                    w.failed(est);
                }
                // The producer went away (shutdown); the record may or may
                // not have been written and cannot be resent from here.
                deliveries.failed.fetch_add(1, Ordering::Relaxed);
                deliveries.in_flight.fetch_sub(1, Ordering::Relaxed);
                tracing::error!(topic = %topic, "producer dropped before delivery");
            }
        }
    });
    Ok(())
}
