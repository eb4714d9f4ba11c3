//! DegradationSupervisor: samples real signals every `degradation.sample_ms`
//! (consumer lag from the Kafka watermarks against the writers' positions,
//! the fullest data lane, process RSS, records in flight in the producer,
//! and Iceberg commit latency), feeds them to the level machine and, on a
//! transition, sends `SetLevel` on the producer's control lane. It shares no
//! mutable state with the actors it steers.
//!
//! It also runs the progress watchdog of the consumer: when the topics hold
//! records the writers have not taken in, and their positions have not moved
//! for `supervision.watchdog_secs`, the consumer is restarted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rdkafka::consumer::BaseConsumer;
use serde::Serialize;
use tokio::sync::watch;

use crate::actors::consumer::{ConsumerActor, RestartConsumer};
use crate::actors::observe::{Health, ObservableState, Published, RestartPolicy, Restarts};
use crate::actors::producer::ProducerState;
use crate::actors::writer::WriterState;
use crate::degrade::lag_time::EndHistory;
use crate::degrade::level::{Level, LevelMachine, LevelSnapshot, Signal, Signals};
use crate::kafka::acks::AckLedger;
use crate::messages::observe::Observe;
use crate::messages::producer::{ProducerControl, ProducerLanes};
use crate::metrics::Metrics;

/// What `/status` shows of the supervisor.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisorState {
    pub level: LevelSnapshot,
    /// Consumer lag per topic and partition (high watermark minus the
    /// writers' position), from the last successful sample.
    pub lag: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Age of the watermarks behind `lag`; the lag is only as fresh as this.
    pub lag_age_ms: Option<u64>,
    /// Consumer lag in time per topic and partition: seconds since the
    /// oldest record the writers have not taken in reached the partition
    /// (`degrade::lag_time`); 0 when nothing waits.
    pub lag_seconds: BTreeMap<String, BTreeMap<i32, f64>>,
    /// Records in transit per topic and partition: high watermark minus
    /// the offset recorded by the writers' last commit (on the broker or in
    /// a writer's buffer), from the same watermarks as `lag`.
    pub in_transit: BTreeMap<String, BTreeMap<i32, i64>>,
    pub samples: u64,
    /// Per-second rates over the last second or so: `feed.received`,
    /// `producer.delivered`, `consumer.records`, `writer.<table>.rows`.
    pub rates: BTreeMap<String, f64>,
    pub watchdog_restarts: u64,
    #[serde(flatten)]
    pub health: Health,
}

impl ObservableState for SupervisorState {
    fn name(&self) -> String {
        "degradation_supervisor".into()
    }

    fn status(&self) -> String {
        "running".into()
    }

    fn health(&self) -> &Health {
        &self.health
    }

    /// Its level, lag and rates are the top of the `/status` document;
    /// the tree shows only its own work.
    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("samples".into(), self.samples.into());
        m.insert("watchdog_restarts".into(), self.watchdog_restarts.into());
        m
    }
}

pub struct DegradationSupervisor {
    machine: LevelMachine,
    sample: Duration,
    lanes: ProducerLanes,
    producer: watch::Receiver<ProducerState>,
    writers: Vec<watch::Receiver<WriterState>>,
    watermarks: Arc<BaseConsumer>,
    topics: Vec<(String, Vec<i32>)>,
    highs: BTreeMap<(String, i32), i64>,
    highs_at: Option<Instant>,
    /// When each partition's end passed which offsets: the time lag.
    ends: BTreeMap<(String, i32), EndHistory>,
    fetching: bool,
    consumer: Option<Addr<ConsumerActor>>,
    watchdog: Duration,
    acks: Arc<AckLedger>,
    /// The partitions this daemon reads (a consumer group shares them).
    owned: Arc<crate::lake::share::Seen>,
    /// Writers' summed positions and when they last moved.
    progress: (i64, Instant),
    blocked_ns: Vec<u64>,
    /// Counter values at the start of the current rate window.
    rate_base: (Instant, BTreeMap<String, f64>),
    epoch: Instant,
    metrics: Metrics,
    state: SupervisorState,
    published: Published<SupervisorState>,
    restarts: Restarts,
}

/// Inputs of the supervisor.
pub struct SupervisorInputs {
    pub lanes: ProducerLanes,
    pub producer: watch::Receiver<ProducerState>,
    pub writers: Vec<watch::Receiver<WriterState>>,
    pub watermarks: Arc<BaseConsumer>,
    pub topics: Vec<(String, Vec<i32>)>,
    pub consumer: Option<Addr<ConsumerActor>>,
    pub watchdog: Duration,
    /// The producer's acknowledgements: their offsets keep the lag fresh
    /// while a busy broker is slow to answer for its watermarks.
    pub acks: Arc<AckLedger>,
    /// Which partitions are this daemon's to read.
    pub owned: Arc<crate::lake::share::Seen>,
}

impl DegradationSupervisor {
    pub fn new(
        machine: LevelMachine,
        inputs: SupervisorInputs,
        metrics: Metrics,
    ) -> (Self, watch::Receiver<SupervisorState>) {
        let state = SupervisorState {
            level: machine.snapshot(),
            lag: BTreeMap::new(),
            lag_age_ms: None,
            lag_seconds: BTreeMap::new(),
            in_transit: BTreeMap::new(),
            samples: 0,
            rates: BTreeMap::new(),
            watchdog_restarts: 0,
            health: Health::default(),
        };
        let published = Published::new(state.clone());
        let rx = published.subscribe();
        let sample = Duration::from_millis(machine.config().sample_ms.max(10));
        for signal in Signal::ALL {
            for (i, t) in machine.config().thresholds.get(signal).iter().enumerate() {
                let level = Level::ALL[i + 1];
                metrics
                    .signal_thresholds
                    .with_label_values(&[signal.as_str(), level.as_str()])
                    .set(*t);
            }
        }
        let lanes_n = inputs.lanes.tiers();
        (
            Self {
                machine,
                sample,
                lanes: inputs.lanes,
                producer: inputs.producer,
                writers: inputs.writers,
                watermarks: inputs.watermarks,
                topics: inputs.topics,
                highs: BTreeMap::new(),
                highs_at: None,
                ends: BTreeMap::new(),
                fetching: false,
                consumer: inputs.consumer,
                watchdog: inputs.watchdog,
                acks: inputs.acks,
                owned: inputs.owned,
                progress: (0, Instant::now()),
                blocked_ns: vec![0; lanes_n],
                rate_base: (Instant::now(), BTreeMap::new()),
                epoch: Instant::now(),
                metrics,
                state,
                published,
                // A restart only re-arms the sampling timer: no wait.
                restarts: Restarts::new("degradation_supervisor", RestartPolicy::IMMEDIATE),
            },
            rx,
        )
    }

    /// Starts a watermark fetch off the actor's thread unless one runs; the
    /// lag signal uses the newest highs that arrived.
    fn fetch_highs(&mut self, ctx: &mut Context<Self>) {
        if self.fetching {
            return;
        }
        self.fetching = true;
        let client = self.watermarks.clone();
        let topics = self.topics.clone();
        // Generous: a busy broker answers slowly, and the sample does not
        // wait for this; the lag just ages (shown as `lag_age_ms`).
        let timeout = Duration::from_secs(5);
        let asked = Instant::now();
        ctx.spawn(
            async move {
                tokio::task::spawn_blocking(move || {
                    match crate::kafka::high_watermarks(&client, &topics, timeout) {
                        (highs, None) => Ok(highs),
                        (_, Some(e)) => Err(e.to_string()),
                    }
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
            }
            .into_actor(self)
            .map(move |res, act, _| {
                act.fetching = false;
                match res {
                    Ok(h) => {
                        act.highs = h;
                        act.highs_at = Some(asked);
                    }
                    Err(e) => act.state.health.last_error = Some(format!("watermarks: {e}")),
                }
            }),
        );
    }

    fn sample(&mut self, ctx: &mut Context<Self>) {
        self.fetch_highs(ctx);
        // A partition's end is at least one past the newest record the
        // broker acknowledged; the watermarks can be seconds old when the
        // broker is busy, the acknowledgements are not.
        for (topic, p, high) in self.acks.acked_highs() {
            if let Some(h) = self.highs.get_mut(&(topic.to_string(), p))
                && *h < high
            {
                *h = high;
            }
        }
        let writers: Vec<WriterState> = self.writers.iter().map(|w| w.borrow().clone()).collect();
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut lag_seconds = BTreeMap::<String, BTreeMap<i32, f64>>::new();
        let mut lag_total = 0i64;
        let mut lag = BTreeMap::<String, BTreeMap<i32, i64>>::new();
        let mut position_sum = 0i64;
        let mut in_transit = BTreeMap::<String, BTreeMap<i32, i64>>::new();
        for ((topic, p), hi) in &self.highs {
            // Another daemon of the group reads it: its lag is that one's.
            if !self.owned.owns(topic, *p) {
                continue;
            }
            let pos = writers
                .iter()
                .find_map(|w| w.positions.get(topic, *p))
                .unwrap_or(0);
            let l = (hi - pos).max(0);
            let ends = self.ends.entry((topic.clone(), *p)).or_default();
            ends.record(*hi, now_ms);
            let ms = ends.lag_ms(pos, now_ms);
            // The same sample as the lag in records: none waiting, no age.
            let secs = if l > 0 { ms as f64 / 1000.0 } else { 0.0 };
            lag_seconds
                .entry(topic.clone())
                .or_default()
                .insert(*p, secs);
            lag_total += l;
            position_sum += pos;
            lag.entry(topic.clone()).or_default().insert(*p, l);
            let committed = writers
                .iter()
                .find_map(|w| w.committed.get(topic, *p))
                .unwrap_or(0);
            // A commit newer than the watermarks reads as nothing waiting.
            in_transit
                .entry(topic.clone())
                .or_default()
                .insert(*p, (hi - committed).max(0));
        }
        let stats = self.lanes.stats();
        let mut fill: f64 = 0.0;
        for lane in &stats.lanes {
            let tier = (lane.tier + 1).to_string();
            self.metrics
                .lane_depth
                .with_label_values(&["producer", &tier])
                .set(i64::try_from(lane.depth).unwrap_or(i64::MAX));
            if let Some(prev) = self.blocked_ns.get_mut(lane.tier) {
                let delta = lane.blocked_ns.saturating_sub(*prev);
                *prev = lane.blocked_ns;
                self.metrics
                    .lane_blocked_seconds
                    .with_label_values(&["producer", &tier])
                    .inc_by(delta as f64 / 1e9);
            }
            if lane.capacity > 0 {
                fill = fill.max(lane.depth as f64 / lane.capacity as f64);
            }
        }
        let rss = memory_stats::memory_stats()
            .map(|m| m.physical_mem as f64)
            .unwrap_or(0.0);
        self.metrics
            .resident_memory
            .with_label_values::<&str>(&[])
            .set(rss as i64);
        let in_flight = self.producer.borrow().in_flight as f64;
        let commit_ms = writers
            .iter()
            .map(WriterState::commit_latency_ms)
            .fold(0.0, f64::max);
        let signals = Signals {
            consumer_lag: lag_total as f64,
            lane_depth: fill,
            rss_bytes: rss,
            producer_queue: in_flight,
            commit_latency_ms: commit_ms,
        };
        for s in Signal::ALL {
            self.metrics
                .signals
                .with_label_values(&[s.as_str()])
                .set(signals.get(s));
        }
        if let Some(t) = self.machine.observe(&signals, now_ms) {
            tracing::warn!(from = %t.from, to = %t.to, reason = %t.reason, "degradation level changed");
            self.metrics
                .level_transitions
                .with_label_values(&[t.to.as_str()])
                .inc();
            if self
                .lanes
                .send_control(ProducerControl::SetLevel(t.to))
                .is_err()
            {
                self.state.health.last_error = Some("producer mailbox closed".into());
            }
        }
        self.metrics
            .degradation_level
            .with_label_values::<&str>(&[])
            .set(i64::from(self.machine.level().as_u8()));

        // Watchdog: work waiting, no progress.
        if position_sum != self.progress.0 || lag_total == 0 {
            self.progress = (position_sum, Instant::now());
        } else if self.progress.1.elapsed() >= self.watchdog
            && let Some(c) = &self.consumer
        {
            tracing::error!(
                lag = lag_total,
                stalled_secs = self.watchdog.as_secs(),
                "consumer made no progress; restarting it"
            );
            self.metrics
                .actor_errors
                .with_label_values(&["consumer", "stalled"])
                .inc();
            c.do_send(RestartConsumer);
            self.state.watchdog_restarts += 1;
            self.progress = (position_sum, Instant::now());
        }

        let mut counts = BTreeMap::new();
        counts.insert(
            "producer.delivered".to_string(),
            self.producer.borrow().delivered as f64,
        );
        counts.insert("consumer.records".to_string(), position_sum as f64);
        for w in &writers {
            counts.insert(format!("writer.{}.rows", w.table), w.rows_committed as f64);
        }
        let window = self.rate_base.0.elapsed();
        if window >= Duration::from_secs(1) {
            // Feed messages received, all exchanges (read once per window).
            let received: u64 = crate::metrics::accounts(&self.metrics)
                .iter()
                .map(|a| a.received)
                .sum();
            counts.insert("feed.received".to_string(), received as f64);
            let secs = window.as_secs_f64();
            self.state.rates = counts
                .iter()
                .filter_map(|(k, v)| {
                    let base = self.rate_base.1.get(k)?;
                    Some((k.clone(), ((v - base) / secs).max(0.0)))
                })
                .collect();
            self.rate_base = (Instant::now(), counts);
        }

        self.state.level = self.machine.snapshot();
        self.state.lag = lag;
        self.state.lag_seconds = lag_seconds;
        self.state.in_transit = in_transit;
        self.state.lag_age_ms = self
            .highs_at
            .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        self.state.samples += 1;
        self.published.publish(&self.state);
    }
}

impl Actor for DegradationSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.sample(ctx);
        ctx.run_interval(self.sample, |act, ctx| act.sample(ctx));
    }
}

impl Supervised for DegradationSupervisor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // The level machine and its history survive a restart (same value).
        self.fetching = false;
        self.restarts.count(&mut self.state.health, &self.metrics);
    }
}

impl Handler<Observe<SupervisorState>> for DegradationSupervisor {
    type Result = MessageResult<Observe<SupervisorState>>;

    fn handle(&mut self, _: Observe<SupervisorState>, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.clone())
    }
}
