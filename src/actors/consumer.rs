//! ConsumerActor: reads the trade and dead-letter topics from the positions
//! recorded in the lake, decodes Avro and routes rows to the table writers.
//! After each Iceberg commit it commits the same offsets to the Kafka group.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::*;
use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::actors::observe::{Health, ObservableState, Published, RestartPolicy, Restarts};
use crate::actors::writer::WriterActor;
use crate::kafka::avro::Codec;
use crate::kafka::window::{self, BrokerWindow};
use crate::messages::consumer::Committed;
pub use crate::messages::consumer::RestartConsumer;
use crate::messages::observe::Observe;
use crate::messages::tail::{TailRow, Tailed};
use crate::messages::writer::{Consumed, GetPositions, Rows};
use crate::metrics::Metrics;
use crate::model::{DeadLetter, TradeV2, now_us};

/// Where consumed records go.
#[derive(Clone)]
pub struct Routes {
    pub trades_topics: HashSet<String>,
    pub dead_letter_topic: String,
    pub trades: Addr<WriterActor>,
    pub dead_letters: Addr<WriterActor>,
    /// Also gets every trade with its offset, before the writer does, for
    /// hybrid queries.
    pub tail: Option<Recipient<Tailed>>,
    /// The embedded broker's window, told of every record read.
    pub window: Option<Arc<BrokerWindow>>,
    /// Chaos (`chaos.lose`): records treated as deleted before they were
    /// read, by topic, partition and offsets.
    pub lose: Option<(String, i32, std::ops::Range<i64>)>,
}

/// What `/status` shows for the consumer.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConsumerState {
    pub running: bool,
    #[serde(flatten)]
    pub health: Health,
}

impl ObservableState for ConsumerState {
    fn name(&self) -> String {
        "consumer".into()
    }

    fn status(&self) -> String {
        if self.running {
            "running"
        } else {
            "restarting"
        }
        .into()
    }

    fn health(&self) -> &Health {
        &self.health
    }

    fn throughput_key(&self) -> Option<String> {
        Some("consumer.records".into())
    }
}

pub struct ConsumerActor {
    consumer: Arc<StreamConsumer>,
    codec: Arc<Codec>,
    routes: Routes,
    /// Set by a restart: seek to what the writers hold before reading on.
    reseek: bool,
    restarts: Restarts,
    state: ConsumerState,
    published: Published<ConsumerState>,
    cluster_id: String,
    metrics: Metrics,
    /// Records per routed message; at most the writer's row limit, so a
    /// flush is never larger than `writer.max_rows` plus one chunk.
    chunk: usize,
}

impl ConsumerActor {
    pub fn new(
        consumer: Arc<StreamConsumer>,
        codec: Arc<Codec>,
        routes: Routes,
        cluster_id: String,
        metrics: Metrics,
        max_rows: usize,
        restart: RestartPolicy,
    ) -> Self {
        Self {
            consumer,
            codec,
            routes,
            reseek: false,
            restarts: Restarts::new("consumer", restart),
            state: ConsumerState::default(),
            published: Published::new(ConsumerState::default()),
            cluster_id,
            metrics,
            chunk: max_rows.clamp(1, MAX_CHUNK),
        }
    }
}

impl ConsumerActor {
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<ConsumerState> {
        self.published.subscribe()
    }
}

/// Positions to resume from after a restart: exactly what the writers have
/// taken in, so nothing is read twice or skipped.
async fn reseek(consumer: &StreamConsumer, routes: &Routes) -> Result<(), String> {
    let a = routes
        .trades
        .send(GetPositions)
        .await
        .map_err(|e| e.to_string())?;
    let b = routes
        .dead_letters
        .send(GetPositions)
        .await
        .map_err(|e| e.to_string())?;
    let assignment = consumer.assignment().map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for el in assignment.elements() {
        let (t, p) = (el.topic(), el.partition());
        if let Some(next) = a.get(t, p).or(b.get(t, p)) {
            tpl.add_partition_offset(t, p, Offset::Offset(next))
                .map_err(|e| e.to_string())?;
        }
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())
}

/// Largest number of records decoded and routed as one message.
const MAX_CHUNK: usize = 2048;

/// What the loop knows of a topic it has read from.
struct TopicInfo {
    name: Arc<str>,
    records: prometheus::IntCounter,
    kind: TopicKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TopicKind {
    Trades,
    DeadLetters,
    Other,
}

impl Actor for ConsumerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let routes = self.routes.clone();
        let reseek_first = std::mem::take(&mut self.reseek);
        let generation = self.state.health.restarts;
        // Restarts wait a capped, jittered, growing delay so a consumer that
        // fails at once does not spin.
        let delay = self.restarts.delay(&self.state.health);
        self.state.running = true;
        self.published.publish(&self.state);
        let consumer = self.consumer.clone();
        let codec = self.codec.clone();
        let metrics = self.metrics.clone();
        let chunk_size = self.chunk;
        // The loop runs on the actor's arbiter: rdkafka's borrowed messages
        // are not Send, and decoding is cheap next to the Iceberg commit.
        let fut = async move {
            tokio::time::sleep(delay).await;
            if reseek_first && let Err(e) = reseek(&consumer, &routes).await {
                tracing::error!(error = %e, "consumer could not seek to the writers' positions");
                return Some(e);
            }
            let mut stream = consumer.stream().ready_chunks(chunk_size);
            // Looked up once per topic, not per record.
            // Per topic, looked up once: its shared name, its records
            // counter, and whether it holds trades or dead letters.
            let mut topics: HashMap<String, TopicInfo> = HashMap::new();
            while let Some(chunk) = stream.next().await {
                // Sized to the chunk once: grown push by push, each vector
                // was reallocated a dozen times per chunk, every new block
                // fresh memory for the kernel to zero (a sixth of this
                // thread's samples in a profile of `ticklake bench`).
                let n = chunk.len();
                let mut trades: Vec<Arc<TradeV2>> = Vec::with_capacity(n);
                let mut dead: Vec<DeadLetter> = Vec::new();
                let mut trade_pos = Vec::with_capacity(n);
                let mut dead_pos = Vec::new();
                let mut tail_rows = Vec::with_capacity(if routes.tail.is_some() { n } else { 0 });
                let mut at = Vec::with_capacity(n);
                for m in chunk {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "kafka consumer error");
                            continue;
                        }
                    };
                    if let Some((t, p, range)) = &routes.lose
                        && m.partition() == *p
                        && range.contains(&m.offset())
                        && m.topic() == t
                    {
                        continue;
                    }
                    let info = match topics.get(m.topic()) {
                        Some(i) => i,
                        None => {
                            let t = m.topic();
                            let info = TopicInfo {
                                name: Arc::from(t),
                                records: metrics.consumer_records.with_label_values(&[t]),
                                kind: if t == routes.dead_letter_topic {
                                    TopicKind::DeadLetters
                                } else if routes.trades_topics.iter().any(|x| x == t) {
                                    TopicKind::Trades
                                } else {
                                    TopicKind::Other
                                },
                            };
                            topics.entry(t.to_string()).or_insert(info)
                        }
                    };
                    let topic = &info.name;
                    let pos = (topic.clone(), m.partition(), m.offset() + 1);
                    let payload = m.payload().unwrap_or_default();
                    if let Some(w) = &routes.window {
                        let key = m.key().map_or(0, <[u8]>::len);
                        let est = window::estimate(key, payload.len());
                        w.consumed(topic, m.partition(), m.offset(), est);
                    }
                    info.records.inc();
                    let is_dead_topic = info.kind == TopicKind::DeadLetters;
                    let decoded = match info.kind {
                        TopicKind::DeadLetters => codec.decode_dead_letter(payload).map(|d| {
                            dead.push(d);
                        }),
                        TopicKind::Trades => codec.decode_trade(payload).map(|t| {
                            // One row, shared by the tail and the writer.
                            let t = Arc::new(t);
                            at.push((topic.clone(), m.partition(), m.offset()));
                            if routes.tail.is_some() {
                                tail_rows.push(TailRow {
                                    topic: topic.clone(),
                                    partition: m.partition(),
                                    offset: m.offset(),
                                    trade: t.clone(),
                                });
                            }
                            trades.push(t)
                        }),
                        TopicKind::Other => continue,
                    };
                    if let Err(e) = decoded {
                        // Never skip silently: the undecodable record itself
                        // becomes a dead letter, with where it came from.
                        metrics
                            .consumer_decode_errors
                            .with_label_values(&[&**topic])
                            .inc();
                        tracing::warn!(topic = %topic, partition = m.partition(), offset = m.offset(), error = %e, "undecodable kafka record dead-lettered");
                        dead.push(DeadLetter::new(
                            "",
                            &format!("kafka:{topic}/{}@{}", m.partition(), m.offset()),
                            now_us(),
                            format!("undecodable record: {e}"),
                            payload.to_vec(),
                        ));
                    }
                    if is_dead_topic {
                        dead_pos.push(pos);
                    } else {
                        trade_pos.push(pos);
                    }
                }
                // The tail first: a commit can then never cover a row the
                // tail has not seen, which hybrid reads rely on.
                if let Some(tail) = &routes.tail
                    && !tail_rows.is_empty()
                    && let Err(e) = tail.send(Tailed(tail_rows)).await
                {
                    tracing::warn!(error = %e, "tail unavailable; hybrid reads miss uncommitted rows");
                }
                if !trades.is_empty() || !trade_pos.is_empty() {
                    let msg = Consumed {
                        rows: Rows::Trades(trades),
                        positions: trade_pos,
                        generation,
                        at,
                    };
                    if routes.trades.send(msg).await.is_err() {
                        break;
                    }
                }
                if !dead.is_empty() || !dead_pos.is_empty() {
                    let msg = Consumed {
                        rows: Rows::DeadLetters(dead),
                        positions: dead_pos,
                        generation,
                        at: Vec::new(),
                    };
                    if routes.dead_letters.send(msg).await.is_err() {
                        break;
                    }
                }
            }
            tracing::warn!("consumer loop ended");
            Some("consumer loop ended".to_string())
        };
        ctx.spawn(fut.into_actor(self).map(|end, act, ctx| {
            act.state.running = false;
            act.state.health.last_error = end;
            act.published.publish(&act.state);
            // The supervisor restarts it (see `restarting`).
            ctx.stop();
        }));
    }
}

impl Supervised for ConsumerActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.reseek = true;
        self.restarts.count(&mut self.state.health, &self.metrics);
    }
}

impl Handler<RestartConsumer> for ConsumerActor {
    type Result = MessageResult<RestartConsumer>;

    fn handle(&mut self, _: RestartConsumer, ctx: &mut Self::Context) -> Self::Result {
        self.state.health.last_error =
            Some("restart requested (watchdog or a rewinding writer)".into());
        ctx.stop();
        // `restarting` bumps the count; the new loop stamps that number.
        MessageResult(self.state.health.restarts + 1)
    }
}

impl Handler<Observe<ConsumerState>> for ConsumerActor {
    type Result = MessageResult<Observe<ConsumerState>>;

    fn handle(&mut self, _: Observe<ConsumerState>, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.clone())
    }
}

impl Handler<Committed> for ConsumerActor {
    type Result = ();

    fn handle(&mut self, msg: Committed, _ctx: &mut Self::Context) {
        if msg.offsets.cluster_id != self.cluster_id {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, parts) in &msg.offsets.topics {
            for (p, off) in parts {
                if tpl
                    .add_partition_offset(topic, *p, Offset::Offset(*off))
                    .is_err()
                {
                    return;
                }
            }
        }
        // Async: the lake already holds the truth; this is for lag tools.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(table = msg.table, error = %e, "kafka offset commit failed");
        }
    }
}
