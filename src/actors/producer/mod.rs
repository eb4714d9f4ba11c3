//! ProducerActor: reads the two-lane mailbox the feeds send on, applies the
//! degradation level per tier (publish, shed or spill), encodes records as
//! Avro in the Confluent wire format and hands them to an idempotent rdkafka
//! producer, keyed by symbol.
//!
//! A circuit breaker watches the broker path. Records that wait for the
//! broker with no delivery for `breaker.stall_ms` count as failures; once it
//! opens, new records go to the on-disk spill log instead of memory. Records
//! already inside librdkafka stay there (the idempotent producer delivers
//! them once the broker is back, without duplicates), and the log is
//! replayed in order behind them when the breaker closes.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, PurgeConfig};
use tokio::sync::{mpsc, watch};

use crate::actors::observe::{Published, RestartPolicy, Restarts};

use crate::degrade::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use crate::degrade::level::Level;
use crate::degrade::policy::{self, Action, SpillEntry};
use crate::degrade::quarantine::Quarantine;
use crate::degrade::spill::{ReplayError, SpillLog};
use crate::instruments::Tier;
use crate::kafka::acks::AckLedger;
use crate::kafka::avro::AvroError;
use crate::kafka::delivery::{
    Deliveries, DeliveryContext, DeliveryCounters, KafkaProducer, Route, Undelivered, dispatch,
    refused_for_good, send, window_full,
};
use crate::kafka::encoder::{EncodedRef, Encoder};
use crate::kafka::window::BrokerWindow;
use crate::lanes::Envelope;
use crate::messages::observe::Observe;
use crate::messages::producer::{Outgoing, ProducerControl, ProducerLanes, Record};
use crate::metrics::Metrics;
use crate::model::{DeadLetter, now_us};
use crate::telemetry::ProducerEvents;

mod records;
mod state;
use records::Records;
pub use state::ProducerState;

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("encoding record: {0}")]
    Encode(#[from] AvroError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("producer task failed: {0}")]
    Join(String),
    #[error("producer mailbox: {0}")]
    Mailbox(#[from] crate::lanes::MailboxError),
    #[error("producer config: {0}")]
    Config(String),
}

impl ProducerError {
    /// Encoding failures are bugs in the record, retrying cannot help;
    /// broker errors may pass.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProducerError::Kafka(_) | ProducerError::Join(_))
    }
}

/// The producer's handles for other actors: the mailbox to send on and the
/// state it publishes.
#[derive(Clone)]
pub struct ProducerHandle {
    pub lanes: ProducerLanes,
    pub state: watch::Receiver<ProducerState>,
}

pub struct ProducerActor {
    /// Shared with the flush task, which blocks on it off the actor.
    producer: Arc<KafkaProducer>,
    encoder: Encoder,
    /// The record being sent, encoded: one buffer reused, as librdkafka
    /// copies what it is given.
    scratch: Vec<u8>,
    metrics: Metrics,
    /// Shared with the stream that polls it, so control messages can pause
    /// and resume lanes. Both run on this actor's thread, never at once.
    rx: Rc<RefCell<Records>>,
    level: Level,
    breaker: CircuitBreaker,
    stall: Duration,
    probing: bool,
    spill: SpillLog,
    spill_dirty: bool,
    replay_batch: usize,
    /// Records of each tier (index 3: dead letters) spilled in this run and
    /// not replayed yet. While a tier has any, its new records go to the log
    /// behind them, so one symbol's records never overtake each other.
    spilled_by_tier: [u64; 4],
    /// Records found in the log at start; while any are left every record
    /// goes to the log: a restarted daemon replays it first.
    carried: u64,
    deliveries: Arc<Deliveries>,
    counters: DeliveryCounters,
    events: ProducerEvents,
    /// Beside the spill log: records the broker refuses for good.
    quarantine: Quarantine,
    /// When `in_flight` last rose from zero, for the stall check.
    busy_since_ms: u64,
    delivered_at_last_tick: u64,
    /// The tick that last saw `delivered` move: the time of the last
    /// acknowledgement, to a tick's precision, for the stall check.
    progress_ms: u64,
    /// The embedded broker's window (`None` on a real broker).
    window: Option<Arc<BrokerWindow>>,
    undelivered_rx: Rc<RefCell<mpsc::UnboundedReceiver<Undelivered>>>,
    epoch: Instant,
    state: ProducerState,
    published: Published<ProducerState>,
    restarts: Restarts,
}

/// Settings of the producer actor beyond the Kafka client.
pub struct ProducerSettings {
    pub breaker: BreakerConfig,
    pub stall: Duration,
    pub replay_batch: usize,
    /// Holds records back while the embedded broker's window is full
    /// (`None` on a real broker).
    pub window: Option<Arc<BrokerWindow>>,
    /// Told of every acknowledged trade, for the lake's accounting.
    pub ledger: Option<Arc<AckLedger>>,
}

fn tier_slot(tier: Option<Tier>) -> usize {
    tier.map_or(3, Tier::index)
}

impl ProducerActor {
    /// Builds the actor, its librdkafka producer (from `client`) and its
    /// mailbox; the spill log must be open already (records left in it are
    /// replayed before anything new goes out).
    pub fn new(
        client: rdkafka::ClientConfig,
        encoder: Encoder,
        metrics: Metrics,
        lane_capacity: &[usize],
        spill: SpillLog,
        settings: ProducerSettings,
    ) -> Result<(Self, ProducerHandle), ProducerError> {
        let (lanes, rx) = crate::lanes::mailbox(lane_capacity)?;
        let breaker = CircuitBreaker::new("producer", settings.breaker)
            .map_err(|e| ProducerError::Config(e.to_string()))?;
        let (undelivered_tx, undelivered_rx) = mpsc::unbounded_channel();
        let deliveries = Arc::new(Deliveries::default());
        let epoch = Instant::now();
        let producer: Arc<KafkaProducer> =
            Arc::new(client.create_with_context(DeliveryContext {
                deliveries: deliveries.clone(),
                undelivered: undelivered_tx,
                window: settings.window.clone(),
                ledger: settings.ledger.clone(),
            })?);
        let published = Published::new(ProducerState::default());
        let state = published.subscribe();
        let carried = spill.pending();
        if carried > 0 {
            tracing::info!(records = carried, dir = %spill.dir().display(), "spill log holds records from an earlier run; replaying them first");
        }
        let counters = DeliveryCounters::new(metrics.clone(), producer.clone());
        let events = ProducerEvents::new(metrics.clone());
        let quarantine = Quarantine::new(spill.dir());
        let actor = Self {
            producer,
            encoder,
            scratch: Vec::new(),
            metrics,
            rx: Rc::new(RefCell::new(Records::new(rx))),
            level: Level::Normal,
            breaker,
            stall: settings.stall,
            probing: false,
            spill,
            spill_dirty: false,
            replay_batch: settings.replay_batch.max(1),
            spilled_by_tier: [0; 4],
            carried,
            deliveries,
            counters,
            events,
            quarantine,
            busy_since_ms: 0,
            delivered_at_last_tick: 0,
            progress_ms: 0,
            window: settings.window,
            undelivered_rx: Rc::new(RefCell::new(undelivered_rx)),
            epoch,
            state: ProducerState::default(),
            published,
            // A restart only re-arms the streams and the tick: no wait.
            restarts: Restarts::new("producer", RestartPolicy::IMMEDIATE),
        };
        Ok((actor, ProducerHandle { lanes, state }))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs a breaker call and records any state change it caused.
    fn with_breaker(&mut self, f: impl FnOnce(&mut CircuitBreaker, u64)) {
        let now = self.now_ms();
        self.metrics.breaker_call(&mut self.breaker, now, f);
    }

    fn handle_data(&mut self, out: Outgoing, ctx: &mut Context<Self>) {
        let tier = match &out.record {
            Record::Trade(_) => Some(out.tier),
            Record::DeadLetter(_) => None,
        };
        let mut record = out.record;
        let act = match tier {
            Some(t) => policy::action(self.level, t),
            None => Action::Publish,
        };
        if act == Action::Shed {
            self.state.shed += 1;
            if let Some(t) = tier {
                self.events.shed(record.exchange(), t, self.level);
            }
            return;
        }
        if policy::skips_enrichment(self.level)
            && let Record::Trade(t) = &mut record
            && t.vendor_data.take().is_some()
        {
            self.state.enrichment_skipped += 1;
        }
        // Borrowed from the record, not copied: a String per trade here
        // was one of the feed thread's allocations.
        let exchange = record.exchange();
        let mut payload = std::mem::take(&mut self.scratch);
        payload.clear();
        let (topic, key) = match self.encoder.encode_into(&record, &mut payload) {
            Ok(e) => e,
            Err(e) => {
                // A record that cannot be encoded is a bug, not an overload;
                // keep it as a dead letter with its JSON form.
                self.events.unencodable(exchange, tier, &e);
                let raw = match &record {
                    Record::Trade(t) => serde_json::to_vec(t).unwrap_or_default(),
                    Record::DeadLetter(d) => d.raw.clone(),
                };
                let dl =
                    DeadLetter::new(exchange, "producer", now_us(), format!("encode: {e}"), raw);
                if tier.is_some() {
                    // It was counted as received; the dead letter replaces it.
                    self.state.health.last_error = Some(format!("encode: {e}"));
                }
                match self.encoder.encode(&Record::DeadLetter(Box::new(dl))) {
                    Ok(enc) => self.route(enc.borrowed(), exchange, None, Action::Publish, ctx),
                    Err(e) => {
                        tracing::error!(error = %e, "dead letter could not be encoded either")
                    }
                }
                self.scratch = payload;
                return;
            }
        };
        let enc = EncodedRef {
            topic: &topic,
            key,
            payload: &payload,
        };
        self.route(enc, exchange, tier, act, ctx);
        self.scratch = payload;
    }

    /// Sends to the broker, or to the spill log when the level says so, the
    /// breaker is not closed, or older records of the tier wait in the log.
    fn route(
        &mut self,
        enc: EncodedRef<'_>,
        exchange: &str,
        tier: Option<Tier>,
        act: Action,
        ctx: &mut Context<Self>,
    ) {
        let must_spill = act == Action::Spill
            || self.breaker.state() != BreakerState::Closed
            || self.carried > 0
            || self.spilled_by_tier[tier_slot(tier)] > 0;
        // Built only for a record that does not go out at once.
        let entry = |enc: EncodedRef<'_>| SpillEntry {
            exchange: exchange.to_string(),
            tier,
            topic: enc.topic.to_string(),
            key: enc.key.to_string(),
            payload: enc.payload.to_vec(),
        };
        if must_spill {
            self.spill_entry(entry(enc));
            return;
        }
        let sending = match self.counters.of(enc.topic, exchange, tier) {
            Ok(s) => s,
            Err(e) => return self.spill_after_failure(&e, entry(enc)),
        };
        // The route by its fields: `sending` still borrows `self.counters`.
        let route = Route {
            deliveries: &self.deliveries,
            window: self.window.as_ref(),
        };
        match send(&route, sending, enc.key, enc.payload) {
            Ok(()) => self.note_enqueued(),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                let sending = sending.clone();
                let entry = entry(enc);
                // Which room it waits for: what fills the lanes meanwhile.
                if window_full(self.window.as_ref(), &entry) {
                    self.state.window_waits += 1;
                } else {
                    self.state.queue_waits += 1;
                }
                // Wait for room, in order (nothing else is read meanwhile, so
                // the lanes fill and push back on the feeds). Give up after
                // the stall time: a queue that does not drain is a broker
                // problem, and the record is safer in the spill log.
                let deliveries = self.deliveries.clone();
                let (window, stall) = (self.window.clone(), self.stall);
                ctx.wait(
                    async move {
                        let deadline = Instant::now() + stall;
                        let route = Route {
                            deliveries: &deliveries,
                            window: window.as_ref(),
                        };
                        loop {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            match dispatch(&route, &entry, &sending) {
                                Ok(()) => return Ok(()),
                                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                                    if Instant::now() < deadline => {}
                                Err(e) => return Err((entry, e.to_string())),
                            }
                        }
                    }
                    .into_actor(self)
                    .map(|res, act, _| match res {
                        Ok(()) => act.note_enqueued(),
                        // The embedded broker is fine, its consumer is behind:
                        // to the spill log, which replays as the window opens.
                        Err((entry, _)) if window_full(act.window.as_ref(), &entry) => {
                            act.state.window_spilled += 1;
                            act.spill_entry(entry);
                        }
                        Err((entry, error)) => {
                            act.state.health.last_error = Some(format!("produce: {error}"));
                            act.with_breaker(|b, now| b.on_failure(now));
                            act.spill_entry(entry);
                        }
                    }),
                );
            }
            Err(e) if refused_for_good(&e) => self.quarantine_entry(entry(enc), &e.to_string()),
            Err(e) => self.spill_after_failure(&e, entry(enc)),
        }
    }

    /// librdkafka did not take a record (or no handle on its topic could
    /// be made): it goes to the spill log, and counts against the breaker.
    fn spill_after_failure(&mut self, e: &KafkaError, entry: SpillEntry) {
        tracing::warn!(error = %e, topic = %entry.topic, "produce failed; record spilled");
        self.state.health.last_error = Some(format!("produce: {e}"));
        self.with_breaker(|b, now| b.on_failure(now));
        self.spill_entry(entry);
    }

    fn note_enqueued(&mut self) {
        self.state.enqueued += 1;
        // in_flight was raised by `dispatch`; 1 means it just left zero
        if self.deliveries.in_flight.load(Ordering::Relaxed) == 1 {
            self.busy_since_ms = self.now_ms();
        }
    }

    /// A record the broker will never take: to the quarantine file, counted,
    /// so that it neither stands at the head of the spill log nor is lost.
    /// It does not count against the breaker: the broker is fine.
    fn quarantine_entry(&mut self, entry: SpillEntry, error: &str) {
        let put = entry
            .encode()
            .map_err(|e| e.to_string())
            .and_then(|b| self.quarantine.put(&b).map_err(|e| e.to_string()));
        match put {
            Ok(()) => {
                self.events.quarantined(&entry.exchange, entry.tier, &error);
                self.state.quarantined += 1;
            }
            Err(e) => {
                // Without the quarantine file the spill log is the next
                // best place; replay will meet the record again.
                self.state.health.last_error = Some(format!("quarantine: {e}"));
                self.spill_entry(entry);
            }
        }
    }

    /// A record librdkafka gave back.
    fn take_back(&mut self, u: Undelivered) {
        if u.refused_for_good {
            self.quarantine_entry(u.entry, &u.error);
            return;
        }
        self.state.health.last_error = Some(format!("delivery: {}", u.error));
        self.with_breaker(|b, now| b.on_failure(now));
        self.spill_entry(u.entry);
    }

    fn spill_entry(&mut self, entry: SpillEntry) {
        let bytes = match entry.encode() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "record cannot be spilled");
                self.state.health.last_error = Some(e.to_string());
                return;
            }
        };
        if let Err(e) = self.spill.append(&bytes) {
            // The disk is the last resort; without it the record is lost.
            self.events.spill_failed(&entry.exchange, &e);
            self.state.health.last_error = Some(format!("spill: {e}"));
            return;
        }
        self.spill_dirty = true;
        self.spilled_by_tier[tier_slot(entry.tier)] += 1;
        self.state.spilled += 1;
        self.events.spilled(&entry.exchange, entry.tier);
    }

    /// Drains up to one batch of the spill log into librdkafka, in order.
    fn replay_some(&mut self) {
        if self.spill.pending() == 0
            || self.breaker.state() != BreakerState::Closed
            || !policy::may_replay(self.level)
        {
            return;
        }
        let mut budget = self.replay_batch;
        let route = Route {
            deliveries: &self.deliveries,
            window: self.window.as_ref(),
        };
        let counters = &mut self.counters;
        let quarantine = &mut self.quarantine;
        // Records that left the log, in log order: replayed, or moved to
        // the quarantine file (with the broker's refusal).
        let mut left_log: Vec<(String, Option<Tier>, Option<String>)> = Vec::new();
        let result = self.spill.replay(|bytes| -> Result<(), ReplayStop> {
            if budget == 0 {
                return Err(ReplayStop::Budget);
            }
            let entry = match SpillEntry::decode(bytes) {
                Ok(e) => e,
                Err(e) => return Err(ReplayStop::Corrupt(e.to_string())),
            };
            let sending = counters
                .of(&entry.topic, &entry.exchange, entry.tier)
                .map_err(|e| ReplayStop::Kafka(format!("topic {}: {e}", entry.topic)))?;
            match dispatch(&route, &entry, sending) {
                Ok(()) => {
                    budget -= 1;
                    left_log.push((entry.exchange, entry.tier, None));
                    Ok(())
                }
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    Err(ReplayStop::QueueFull)
                }
                Err(e) if refused_for_good(&e) => match quarantine.put(bytes) {
                    Ok(()) => {
                        left_log.push((entry.exchange, entry.tier, Some(e.to_string())));
                        Ok(())
                    }
                    Err(q) => Err(ReplayStop::Kafka(format!("{e}; quarantine: {q}"))),
                },
                Err(e) => Err(ReplayStop::Kafka(e.to_string())),
            }
        });
        for (exchange, tier, refused) in left_log {
            let from_earlier_run = self.carried > 0;
            if from_earlier_run {
                self.carried -= 1;
            } else {
                let slot = &mut self.spilled_by_tier[tier_slot(tier)];
                *slot = slot.saturating_sub(1);
            }
            // Out of the log either way; a quarantined record is then
            // settled as quarantined instead of in flight.
            self.events.replayed(&exchange, tier, from_earlier_run);
            match refused {
                None => {
                    self.state.replayed += 1;
                    self.note_enqueued();
                }
                Some(error) => {
                    self.events.quarantined(&exchange, tier, &error);
                    self.state.quarantined += 1;
                }
            }
        }
        match result {
            Ok(_) => {}
            Err(ReplayError::Callback { source, .. }) => match source {
                ReplayStop::Budget | ReplayStop::QueueFull => {}
                ReplayStop::Corrupt(e) | ReplayStop::Kafka(e) => {
                    tracing::error!(error = %e, "spill replay stopped");
                    self.state.health.last_error = Some(format!("spill replay: {e}"));
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "spill replay failed");
                self.state.health.last_error = Some(format!("spill replay: {e}"));
            }
        }
        if self.spill.pending() == 0 {
            self.spilled_by_tier = [0; 4];
            self.carried = 0;
            if let Err(e) = self.spill.truncate() {
                tracing::warn!(error = %e, "spill log truncate failed");
            } else {
                tracing::info!("spill log replayed and truncated");
            }
        }
    }

    /// Every 50 ms: judge the broker path, drain the spill log when allowed,
    /// make appended records durable and publish the state.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = self.now_ms();
        let in_flight = self.deliveries.in_flight.load(Ordering::Relaxed);
        let delivered = self.deliveries.delivered.load(Ordering::Relaxed);
        let progressed = delivered > self.delivered_at_last_tick;
        self.delivered_at_last_tick = delivered;
        if progressed {
            self.progress_ms = now;
        }
        let last_progress = self.progress_ms.max(self.busy_since_ms);
        let stall_ms = u64::try_from(self.stall.as_millis()).unwrap_or(u64::MAX);
        let stalled = in_flight > 0 && now.saturating_sub(last_progress) >= stall_ms;
        match self.breaker.state() {
            BreakerState::Closed => {
                if stalled {
                    self.state.health.last_error = Some(format!(
                        "{in_flight} records without a delivery for {stall_ms} ms"
                    ));
                    self.with_breaker(|b, now| b.on_failure(now));
                } else if progressed || in_flight == 0 {
                    self.with_breaker(|b, now| b.on_success(now));
                }
            }
            BreakerState::Open => {
                // `allow` turns the breaker HALF_OPEN once open_ms passed.
                self.with_breaker(|b, now| {
                    b.allow(now);
                });
            }
            BreakerState::HalfOpen => {
                if in_flight > 0 {
                    // The records held since the outage are the probe.
                    if progressed {
                        self.with_breaker(|b, now| b.on_success(now));
                    } else if stalled {
                        self.with_breaker(|b, now| b.on_failure(now));
                    }
                } else if !self.probing {
                    self.probe(ctx);
                }
            }
        }
        self.replay_some();
        if self.spill_dirty {
            if let Err(e) = self.spill.sync() {
                tracing::warn!(error = %e, "spill log sync failed");
            }
            self.spill_dirty = false;
        }
        self.publish_state();
    }

    /// With nothing in flight, ask the broker for metadata to decide whether
    /// it is back.
    fn probe(&mut self, ctx: &mut Context<Self>) {
        self.probing = true;
        let producer = self.producer.clone();
        ctx.spawn(
            async move {
                tokio::task::spawn_blocking(move || {
                    producer
                        .client()
                        .fetch_metadata(None, Duration::from_secs(1))
                        .map(|m| !m.brokers().is_empty())
                })
                .await
            }
            .into_actor(self)
            .map(|res, act, _| {
                act.probing = false;
                match res {
                    Ok(Ok(true)) => act.with_breaker(|b, now| b.on_success(now)),
                    _ => act.with_breaker(|b, now| b.on_failure(now)),
                }
            }),
        );
    }

    fn publish_state(&mut self) {
        self.state.level = Some(self.level);
        self.state.in_flight = self.deliveries.in_flight.load(Ordering::Relaxed);
        self.state.delivered = self.deliveries.delivered.load(Ordering::Relaxed);
        self.state.failed_deliveries = self.deliveries.failed.load(Ordering::Relaxed);
        self.state.carried_over_pending = self.carried;
        self.state.window = self.window.as_ref().map(|w| w.snapshot());
        self.state.breaker = Some(self.breaker.snapshot());
        let spill = self.spill.snapshot();
        self.metrics
            .spill_pending
            .with_label_values::<&str>(&[])
            .set(i64::try_from(spill.pending).unwrap_or(i64::MAX));
        self.metrics
            .spill_pending_bytes
            .with_label_values::<&str>(&[])
            .set(i64::try_from(spill.pending_bytes).unwrap_or(i64::MAX));
        self.state.spill = Some(spill);
        self.state.lanes = Some(self.rx.borrow().stats());
        self.published.publish(&self.state);
    }
}

/// Why a replay step stopped early.
#[derive(Debug, thiserror::Error)]
enum ReplayStop {
    #[error("batch done")]
    Budget,
    #[error("librdkafka queue full")]
    QueueFull,
    #[error("corrupt entry: {0}")]
    Corrupt(String),
    #[error("kafka: {0}")]
    Kafka(String),
}

impl Actor for ProducerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Added on every (re)start: a restart drops the context's streams,
        // while the receivers themselves, and what they hold, live on.
        let rx = self.rx.clone();
        ctx.add_stream(futures::stream::poll_fn(move |cx| {
            rx.borrow_mut().poll_next(cx)
        }));
        let undelivered = self.undelivered_rx.clone();
        ctx.add_stream(futures::stream::poll_fn(move |cx| {
            undelivered.borrow_mut().poll_recv(cx)
        }));
        self.with_breaker(|_, _| {});
        self.publish_state();
        ctx.run_interval(Duration::from_millis(50), |act, ctx| act.tick(ctx));
    }
}

impl Supervised for ProducerActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.restarts.count(&mut self.state.health, &self.metrics);
    }
}

impl Handler<Observe<ProducerState>> for ProducerActor {
    type Result = MessageResult<Observe<ProducerState>>;

    fn handle(&mut self, _: Observe<ProducerState>, _ctx: &mut Self::Context) -> Self::Result {
        self.publish_state();
        MessageResult(self.state.clone())
    }
}

impl StreamHandler<Envelope<ProducerControl, Outgoing>> for ProducerActor {
    fn handle(&mut self, env: Envelope<ProducerControl, Outgoing>, ctx: &mut Self::Context) {
        match env {
            Envelope::Data { data, .. } => self.handle_data(data, ctx),
            Envelope::Control(ProducerControl::SetLevel(level)) => {
                if level != self.level {
                    tracing::info!(from = %self.level, to = %level, "producer applies degradation level");
                }
                self.level = level;
            }
            Envelope::Control(ProducerControl::Pause(tier)) => {
                if let Err(e) = self.rx.borrow_mut().pause(tier) {
                    tracing::warn!(error = %e, "pause ignored");
                }
            }
            Envelope::Control(ProducerControl::Resume(tier)) => {
                if let Err(e) = self.rx.borrow_mut().resume(tier) {
                    tracing::warn!(error = %e, "resume ignored");
                }
            }
            Envelope::Control(ProducerControl::Flush(reply)) => {
                let producer = self.producer.clone();
                let deliveries = self.deliveries.clone();
                // With the breaker open the broker is known to be away: do
                // not wait long for it.
                let wait = if self.breaker.state() == BreakerState::Closed {
                    Duration::from_secs(30)
                } else {
                    Duration::from_secs(1)
                };
                ctx.spawn(
                    async move {
                        let r = tokio::task::spawn_blocking(move || {
                            let r = producer.flush(wait);
                            if r.is_err() {
                                // Whatever librdkafka still holds would die
                                // with the process: take it back, so each
                                // record comes back as undelivered and goes
                                // to the spill log.
                                producer.purge(PurgeConfig::default().queue().inflight());
                            }
                            r
                        })
                        .await;
                        let r = match r {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        // Purged records report back within moments.
                        let until = Instant::now() + Duration::from_secs(10);
                        while deliveries.in_flight.load(Ordering::Relaxed) > 0
                            && Instant::now() < until
                        {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        r
                    }
                    .into_actor(self)
                    .map(move |r, act, _| {
                        // Spill what came back before answering: the caller
                        // may be about to exit.
                        let mut back = Vec::new();
                        while let Ok(u) = act.undelivered_rx.borrow_mut().try_recv() {
                            back.push(u);
                        }
                        let spilled = back.len();
                        for u in back {
                            act.take_back(u);
                        }
                        if let Err(e) = act.spill.sync() {
                            tracing::error!(error = %e, "spill log sync failed at flush");
                        }
                        act.publish_state();
                        let r = match r {
                            Err(e) if spilled > 0 => {
                                tracing::warn!(records = spilled, error = %e, "broker unavailable at flush; undelivered records kept in the spill log");
                                Ok(())
                            }
                            other => other,
                        };
                        let _ = reply.send(r);
                    }),
                );
            }
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // Every sender is gone; the actor stays up for deliveries and replay.
        tracing::debug!("producer mailbox closed");
    }
}

impl StreamHandler<Undelivered> for ProducerActor {
    fn handle(&mut self, u: Undelivered, _ctx: &mut Self::Context) {
        self.take_back(u);
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KafkaConfig;
    use crate::kafka::EmbeddedCluster;
    use crate::kafka::avro::Codec;

    /// A spill log from an earlier run holds a record too large for the
    /// producer, then a normal one. The large one goes to the quarantine
    /// file, replay goes on behind it, and the accounting balances.
    #[actix_rt::test]
    async fn a_record_refused_for_good_is_quarantined_and_replay_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let topic = "q.trades".to_string();
        let cluster = EmbeddedCluster::start(std::slice::from_ref(&topic), 1).unwrap();
        let entry = |payload: Vec<u8>| SpillEntry {
            exchange: "X".into(),
            tier: Some(Tier::One),
            topic: topic.clone(),
            key: "k".into(),
            payload,
        };
        {
            let mut log = SpillLog::open(dir.path(), 1 << 20).unwrap();
            log.append(&entry(vec![1; 200_000]).encode().unwrap())
                .unwrap();
            log.append(&entry(vec![2; 100]).encode().unwrap()).unwrap();
            log.sync().unwrap();
        }
        let spill = SpillLog::open(dir.path(), 1 << 20).unwrap();
        let kafka = KafkaConfig::default();
        let mut rdk = crate::kafka::producer_config(&kafka, cluster.bootstrap());
        rdk.set("message.max.bytes", "100000");
        let metrics = Metrics::new().unwrap();
        let (actor, _handle) = ProducerActor::new(
            rdk,
            Encoder::new(Arc::new(Codec::new(1, 2).unwrap()), &kafka),
            metrics.clone(),
            &[8, 8, 8],
            spill,
            ProducerSettings {
                breaker: BreakerConfig::default(),
                stall: Duration::from_secs(10),
                replay_batch: 10,
                window: None,
                ledger: None,
            },
        )
        .unwrap();
        let addr = actor.start();
        let deadline = Instant::now() + Duration::from_secs(20);
        let state = loop {
            let s = addr.send(Observe::<ProducerState>::new()).await.unwrap();
            let drained = s.spill.as_ref().is_some_and(|p| p.pending == 0);
            if (drained && s.delivered == 1) || Instant::now() > deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            (state.quarantined, state.replayed, state.delivered),
            (1, 1, 1)
        );
        let kept = crate::degrade::quarantine::read(
            &dir.path().join(crate::degrade::quarantine::QUARANTINE_FILE),
        )
        .unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(SpillEntry::decode(&kept[0]).unwrap().payload.len(), 200_000);
        let a = crate::metrics::accounts(&metrics);
        assert_eq!(a.len(), 1);
        assert_eq!(
            (
                a[0].restored,
                a[0].published,
                a[0].quarantined,
                a[0].in_flight
            ),
            (2, 1, 1, 0),
            "{a:?}"
        );
        assert_eq!(metrics.spill_quarantined.with_label_values(&["X"]).get(), 1);
    }
}
