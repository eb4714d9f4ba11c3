//! ConsumerActor: reads the trade and dead-letter topics from the positions
//! recorded in the lake, decodes Avro and routes rows to the table writers.
//! After each Iceberg commit it commits the same offsets to the Kafka group.

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;
use arrow::datatypes::SchemaRef;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::actors::observe::{Health, ObservableState, Published, RestartPolicy, Restarts};
use crate::actors::writer::WriterActor;
use crate::kafka::avro::Codec;
use crate::kafka::fetch::{ConsumerQueue, Read};
use crate::kafka::window::{self, BrokerWindow};
use crate::lake::batch::{TradeChunk, TradeColumns};
pub use crate::lake::share::Seen;
use crate::messages::consumer::Committed;
pub use crate::messages::consumer::RestartConsumer;
use crate::messages::observe::Observe;
use crate::messages::tail::Tailed;
use crate::messages::writer::{Assigned, Consumed, GetPositions, Rows, Span};
use crate::metrics::Metrics;
use crate::model::{DeadLetter, now_us};

/// The lake consumer: its context follows the group's rebalances when
/// `kafka.assignment = group`.
pub type LakeConsumer = StreamConsumer<LakeContext>;

/// The consumer's context. In a consumer group it answers an assignment by
/// starting each partition where the lake left it ([`Seen`]), never at the
/// group's committed offsets (which trail the lake), and tells the consumer
/// loop, which tells the writers before any record of the new assignment.
pub struct LakeContext {
    seen: Arc<Seen>,
    events: std::sync::Mutex<Vec<Vec<(String, i32, i64)>>>,
}

impl LakeContext {
    pub fn new(seen: Arc<Seen>) -> Self {
        Self {
            seen,
            events: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn take_events(&self) -> Vec<Vec<(String, i32, i64)>> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn has_events(&self) -> bool {
        !self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

impl ClientContext for LakeContext {}

impl ConsumerContext for LakeContext {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::*;
        match err {
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut starts = Vec::new();
                for el in tpl.elements() {
                    let (t, p) = (el.topic().to_string(), el.partition());
                    let at = self.seen.start(&t, p);
                    starts.push((t, p, at));
                }
                let mut assigned = Vec::new();
                for (t, p, at) in starts {
                    let offset = at.map_or(Offset::Beginning, Offset::Offset);
                    if let Err(e) = tpl.set_partition_offset(&t, p, offset) {
                        tracing::error!(topic = %t, partition = p, error = %e, "cannot set the start of an assigned partition");
                    }
                    tracing::info!(topic = %t, partition = p, offset = ?at, "partition assigned to this daemon");
                    // A partition the lake knows nothing of starts at its
                    // beginning; the writer learns that offset from the
                    // first record.
                    if let Some(at) = at {
                        assigned.push((t, p, at));
                    }
                }
                if let Err(e) = base.assign(tpl) {
                    tracing::error!(error = %e, "assigning the group's partitions failed");
                }
                self.seen.set_owned(
                    tpl.elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), e.partition()))
                        .collect(),
                );
                self.events
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(assigned);
            }
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let gone: Vec<String> = tpl
                    .elements()
                    .iter()
                    .map(|e| format!("{}/{}", e.topic(), e.partition()))
                    .collect();
                tracing::info!(partitions = ?gone, "partitions revoked from this daemon");
                if let Err(e) = base.unassign() {
                    tracing::error!(error = %e, "giving the group's partitions back failed");
                }
                self.seen.set_owned(HashSet::new());
            }
            other => {
                tracing::error!(error = ?other, "consumer group rebalance failed");
                let _ = base.unassign();
            }
        }
    }
}

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
    /// The trades table's Arrow schema: each chunk of trades read is
    /// decoded straight into one batch of it, which the tail and the
    /// writer share.
    pub trades_schema: SchemaRef,
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
    /// In a consumer group: the partitions this daemon reads now (as of the
    /// last few seconds), `topic/partition`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<String>>,
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
    consumer: Arc<LakeConsumer>,
    /// Whether partitions come from the group (`kafka.assignment = group`).
    group: bool,
    /// In a group: every partition of the topics, and how long one may
    /// have records waiting with no owner committing before this daemon
    /// rejoins the group to have it assigned again.
    watch: Option<GroupWatch>,
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
    /// Outside a group: the consumer's queue, read many records a call
    /// (`kafka::fetch`). Made when the loop first starts.
    queue: Option<Arc<ConsumerQueue>>,
}

impl ConsumerActor {
    pub fn new(
        consumer: Arc<LakeConsumer>,
        codec: Arc<Codec>,
        routes: Routes,
        cluster_id: String,
        metrics: Metrics,
        max_rows: usize,
        restart: RestartPolicy,
    ) -> Self {
        Self {
            consumer,
            group: false,
            watch: None,
            codec,
            routes,
            reseek: false,
            restarts: Restarts::new("consumer", restart),
            state: ConsumerState::default(),
            published: Published::new(ConsumerState::default()),
            cluster_id,
            metrics,
            chunk: max_rows.clamp(1, MAX_CHUNK),
            queue: None,
        }
    }
}

/// The watch on a consumer group's partitions (see [`ConsumerActor::watching`]).
struct GroupWatch {
    partitions: Vec<(String, Vec<i32>)>,
    after: std::time::Duration,
    /// Per partition: the group's committed offset and since when it is.
    since: crate::fastmap::FastMap<(String, i32), (i64, std::time::Instant)>,
    checking: bool,
}

impl ConsumerActor {
    /// In a consumer group, checks every few seconds that each partition
    /// with records waiting is being committed by someone; one that is not
    /// for `after` (its owner died and the group did not hand it on, which
    /// a broker's coordinator has been seen to do) makes this daemon leave
    /// and rejoin the group, which assigns every partition again.
    /// Partitions come from the consumer group (`kafka.assignment = group`).
    pub fn in_group(mut self, group: bool) -> Self {
        self.group = group;
        self
    }

    pub fn watching(
        mut self,
        partitions: Vec<(String, Vec<i32>)>,
        after: std::time::Duration,
    ) -> Self {
        if self.group {
            self.watch = Some(GroupWatch {
                partitions,
                after,
                since: Default::default(),
                checking: false,
            });
        }
        self
    }

    fn check_group(&mut self, ctx: &mut Context<Self>) {
        let Some(w) = &mut self.watch else {
            return;
        };
        if w.checking {
            return;
        }
        w.checking = true;
        let consumer = self.consumer.clone();
        let partitions = w.partitions.clone();
        let blocking =
            tokio::task::spawn_blocking(move || -> Result<Vec<(String, i32, i64, i64)>, String> {
                let timeout = std::time::Duration::from_secs(5);
                let mut tpl = TopicPartitionList::new();
                for (t, ps) in &partitions {
                    for p in ps {
                        tpl.add_partition(t, *p);
                    }
                }
                let committed = consumer
                    .committed_offsets(tpl, timeout)
                    .map_err(|e| e.to_string())?;
                let mut out = Vec::new();
                for el in committed.elements() {
                    let (_, hi) = consumer
                        .fetch_watermarks(el.topic(), el.partition(), timeout)
                        .map_err(|e| e.to_string())?;
                    let c = match el.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    };
                    out.push((el.topic().to_string(), el.partition(), c, hi));
                }
                Ok(out)
            });
        ctx.spawn(
            async move { blocking.await.map_err(|e| e.to_string()).and_then(|r| r) }
                .into_actor(self)
                .map(|res, act, _ctx| {
                    let Some(w) = &mut act.watch else {
                        return;
                    };
                    w.checking = false;
                    let rows = match res {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::debug!(error = %e, "consumer group check failed");
                            return;
                        }
                    };
                    let now = std::time::Instant::now();
                    let mut orphans = Vec::new();
                    for (t, p, committed, hi) in rows {
                        let entry = w.since.entry((t.clone(), p)).or_insert((committed, now));
                        if entry.0 != committed || hi <= committed {
                            *entry = (committed, now);
                        } else if now.duration_since(entry.1) >= w.after {
                            orphans.push(format!("{t}/{p} ({} waiting)", hi - committed));
                        }
                    }
                    if orphans.is_empty() {
                        return;
                    }
                    tracing::warn!(partitions = ?orphans, waiting_secs = w.after.as_secs(),
                        "partitions with records waiting and no owner committing; rejoining the consumer group");
                    act.metrics
                        .actor_errors
                        .with_label_values(&["consumer", "orphaned_partitions"])
                        .inc();
                    for v in w.since.values_mut() {
                        v.1 = now;
                    }
                    let topics: Vec<String> = w.partitions.iter().map(|(t, _)| t.clone()).collect();
                    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                    act.consumer.unsubscribe();
                    if let Err(e) = act.consumer.subscribe(&topics) {
                        tracing::error!(error = %e, "rejoining the consumer group failed");
                    }
                }),
        );
    }
}

impl ConsumerActor {
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<ConsumerState> {
        self.published.subscribe()
    }
}

/// Positions to resume from after a restart: exactly what the writers have
/// taken in, so nothing is read twice or skipped.
async fn reseek(consumer: &LakeConsumer, group: bool, routes: &Routes) -> Result<(), String> {
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
    if group {
        // In a group the assignment is the group's: move within it.
        consumer
            .seek_partitions(tpl, std::time::Duration::from_secs(10))
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        consumer.assign(&tpl).map_err(|e| e.to_string())
    }
}

/// Largest number of records decoded and routed as one message.
const MAX_CHUNK: usize = 2048;

/// Consecutive offsets read from one partition, with their estimates
/// summed, told to the broker window as one update when the run ends (see
/// `BrokerWindow::consumed_run`).
#[derive(Default)]
struct ReadRun(Option<(Span, i64)>);

impl ReadRun {
    fn add(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        offset: i64,
        est: i64,
        w: Option<&BrokerWindow>,
    ) {
        if let Some((span, sum)) = &mut self.0
            && span.followed_by(topic, partition, offset)
        {
            span.next = offset + 1;
            *sum += est;
            return;
        }
        self.flush(w);
        self.0 = Some((Span::of(topic, partition, offset), est));
    }

    fn flush(&mut self, w: Option<&BrokerWindow>) {
        if let (Some((s, est)), Some(w)) = (self.0.take(), w) {
            w.consumed_run(&s.topic, s.partition, s.first, s.next - 1, est);
        }
    }
}

/// What the loop knows of a topic it has read from.
#[derive(Clone)]
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
        let group = self.group;
        // A group's rebalances arrive on the consumer's queue, which the
        // batch read cannot serve (`kafka::fetch`): a member keeps the
        // stream, one record a poll.
        if !group && self.queue.is_none() {
            self.queue = ConsumerQueue::of(&self.consumer).map(Arc::new);
        }
        let queue = self.queue.clone();
        if self.watch.is_some() {
            self.state.partitions = self.consumer.context().seen.owned_list();
            ctx.run_interval(std::time::Duration::from_secs(5), |act, ctx| {
                act.state.partitions = act.consumer.context().seen.owned_list();
                act.published.publish(&act.state);
                act.check_group(ctx);
            });
        }
        // The loop runs on the actor's arbiter: rdkafka's borrowed messages
        // are not Send, and decoding is cheap next to the Iceberg commit.
        let fut = async move {
            tokio::time::sleep(delay).await;
            if reseek_first && let Err(e) = reseek(&consumer, group, &routes).await {
                tracing::error!(error = %e, "consumer could not seek to the writers' positions");
                return Some(e);
            }
            let mut stream = consumer.stream();
            let context = consumer.context().clone();
            // A record polled after a rebalance, which must reach the writers
            // after the news of it, so it opens the next chunk.
            let mut carried = None;
            // Per topic, looked up once: its shared name, its records
            // counter, and whether it holds trades or dead letters.
            let mut topics: crate::fastmap::FastMap<String, TopicInfo> = Default::default();
            loop {
                let first = match carried.take() {
                    Some(m) => m,
                    None => match stream.next().await {
                        Some(m) => m,
                        None => break,
                    },
                };
                // A rebalance is served inside a poll, so one seen now came
                // before `first`; the writers hear of it before its records.
                for assigned in context.take_events() {
                    let msg = Assigned(assigned);
                    if routes.trades.send(msg.clone()).await.is_err()
                        || routes.dead_letters.send(msg).await.is_err()
                    {
                        return Some("writers gone".to_string());
                    }
                }
                // What is ready now, up to a chunk: cut short by a rebalance.
                let mut chunk = Vec::with_capacity(chunk_size);
                chunk.push(Read::Polled(first));
                match &queue {
                    Some(q) => {
                        let mut batch = Vec::new();
                        q.read_ready(chunk_size - 1, &mut batch);
                        chunk.extend(batch.into_iter().map(Read::Batched));
                    }
                    None => {
                        while chunk.len() < chunk_size {
                            match stream.next().now_or_never() {
                                Some(Some(m)) if group && context.has_events() => {
                                    carried = Some(m);
                                    break;
                                }
                                Some(Some(m)) => chunk.push(Read::Polled(m)),
                                _ => break,
                            }
                        }
                    }
                }
                // Sized to the chunk once: grown push by push, each vector
                // was reallocated a dozen times per chunk, every new block
                // fresh memory for the kernel to zero (a sixth of this
                // thread's samples in a profile of `ticklake bench`).
                let n = chunk.len();
                // Trades are read in place straight into the chunk's
                // columns: no row of its own, no text copied twice.
                let mut cols = match TradeColumns::for_schema(n, &routes.trades_schema) {
                    Ok(c) => c,
                    Err(e) => return Some(format!("trades columns: {e}")),
                };
                let mut keys: Vec<u128> = Vec::with_capacity(n);
                let mut dead: Vec<DeadLetter> = Vec::new();
                let mut trade_pos = Vec::new();
                let mut dead_pos = Vec::new();
                let mut at = Vec::with_capacity(n);
                let mut read = ReadRun::default();
                // The topic of the record before, by librdkafka's topic
                // object: a chunk comes in long runs of one topic, and its
                // name was read and looked up per record (`strlen`, a
                // UTF-8 check, a hash; the check alone 1.2 % of this
                // thread). Per chunk, and the chunk is read by reference,
                // so every record of it is alive while the loop runs and a
                // topic id stays that topic's.
                let mut last: Option<(usize, TopicInfo)> = None;
                for m in &chunk {
                    if let Some(e) = m.error() {
                        tracing::warn!(error = %e, "kafka consumer error");
                        continue;
                    }
                    if let Some((t, p, range)) = &routes.lose
                        && m.partition() == *p
                        && range.contains(&m.offset())
                        && m.topic() == t
                    {
                        continue;
                    }
                    let id = m.topic_id();
                    let info = match &mut last {
                        Some((at, info)) if id != 0 && *at == id => &*info,
                        slot => {
                            let t = m.topic();
                            let info = match topics.get(t) {
                                Some(i) => i,
                                None => {
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
                            &slot.insert((id, info.clone())).1
                        }
                    };
                    let topic = &info.name;
                    let payload = m.payload().unwrap_or_default();
                    if routes.window.is_some() {
                        let key = m.key().map_or(0, <[u8]>::len);
                        let est = window::estimate(key, payload.len());
                        read.add(
                            topic,
                            m.partition(),
                            m.offset(),
                            est,
                            routes.window.as_deref(),
                        );
                    }
                    info.records.inc();
                    let is_dead_topic = info.kind == TopicKind::DeadLetters;
                    let decoded = match info.kind {
                        TopicKind::DeadLetters => codec.decode_dead_letter(payload).map(|d| {
                            dead.push(d);
                        }),
                        TopicKind::Trades => codec.decode_trade_view(payload).map(|t| {
                            keys.push(crate::dedup::key(t.message_id));
                            cols.push_view(&t);
                            at.push((topic.clone(), m.partition(), m.offset()));
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
                    let spans = if is_dead_topic {
                        &mut dead_pos
                    } else {
                        &mut trade_pos
                    };
                    Span::push(spans, topic, m.partition(), m.offset());
                }
                read.flush(routes.window.as_deref());
                let trades = if keys.is_empty() {
                    Vec::new()
                } else {
                    match cols.finish(&routes.trades_schema) {
                        Ok(batch) => vec![TradeChunk { batch, keys }],
                        // The columns are built for this schema: this is a
                        // bug, and the loop ends rather than skip the rows
                        // (a restart reads them again).
                        Err(e) => return Some(format!("trades to arrow: {e}")),
                    }
                };
                // The tail first: a commit can then never cover a row the
                // tail has not seen, which hybrid reads rely on.
                if let Some(tail) = &routes.tail
                    && let Some(chunk) = trades.first()
                    && let Err(e) = tail
                        .send(Tailed::Chunk {
                            batch: chunk.batch.clone(),
                            at: at.clone(),
                        })
                        .await
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
        // In a group, only the partitions this daemon owns: the others'
        // offsets are their owners' to commit.
        let owned: Option<HashSet<(String, i32)>> = if self.group {
            match self.consumer.assignment() {
                Ok(a) => Some(
                    a.elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), e.partition()))
                        .collect(),
                ),
                Err(_) => return,
            }
        } else {
            None
        };
        let mut tpl = TopicPartitionList::new();
        for (topic, parts) in &msg.offsets.topics {
            for (p, off) in parts {
                if owned
                    .as_ref()
                    .is_some_and(|o| !o.contains(&(topic.clone(), *p)))
                {
                    continue;
                }
                if tpl
                    .add_partition_offset(topic, *p, Offset::Offset(*off))
                    .is_err()
                {
                    return;
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        // Async: the lake already holds the truth; this is for lag tools.
        // librdkafka sends no reply to an asynchronous manual commit, so
        // nothing lands on the queue the batched read serves.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(table = msg.table, error = %e, "kafka offset commit failed");
        }
    }
}
