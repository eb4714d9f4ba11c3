//! FeedActor: one WebSocket connection to one venue, speaking any exchange
//! protocol (`exchanges::Protocol`), run under an actix `Supervisor`. Any
//! failure of the connection (error, close, stale feed) stops the actor; the
//! supervisor restarts it on the same address and `started` reconnects after
//! a capped, jittered exponential backoff, then subscribes again. The
//! planned rotation does not stop it: the new connection is made first.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::{FutureExt, SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::actors::intake::{GapsChanged, Intake, fill_gaps, release_held_loop};
use crate::actors::observe::{Health, ObservableState, Published, RestartPolicy, Restarts};
use crate::config::FeedConfig;
use crate::continuity::{Continuity, ContinuityStats};
use crate::dedup::shared::SharedIds;
use crate::dedup::{DEFAULT_FALSE_POSITIVE_RATE, Dedup};
use crate::exchanges::{Frame, FrameError, ParseCtx, Protocol};
use crate::instruments::{Instruments, InstrumentsError, SymbolError, SymbolRule, TierCache};
use crate::messages::gaps::GapSettled;
use crate::messages::observe::Observe;
use crate::messages::producer::{Outgoing, ProducerLanes};
use crate::metrics::Metrics;
use crate::model::{DeadLetter, TradeV2, now_us};
use crate::telemetry::FeedEvents;

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("server closed the connection: {0}")]
    Closed(String),
    #[error("no data frame for {0:?}; feed is stale")]
    Stale(Duration),
    #[error(transparent)]
    Producer(#[from] crate::actors::intake::ProducerGone),
    /// The feed's exchange has no symbol rule in the instruments file.
    #[error(transparent)]
    Instruments(#[from] InstrumentsError),
    /// A subscribed symbol its exchange's rule refuses: every frame of it
    /// would be a dead letter.
    #[error("{key}: {source}")]
    Subscription { key: String, source: SymbolError },
    /// `StopFeed`: the connection ended where it held no trade.
    #[error("the feed was stopped")]
    Stopped,
}

/// How long the connection a rotation replaced is still read after the
/// new one delivered: frames in its buffers may be from before the new
/// one's subscription began.
const ROTATION_OVERLAP: Duration = Duration::from_secs(2);

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type WsSink = futures::stream::SplitSink<WsStream, WsMessage>;
type WsRead = futures::stream::SplitStream<WsStream>;

/// Most frames handled in a row from what the socket already holds,
/// before the timers and the other connections are looked at again.
const READY_RUN: u32 = 64;

/// Most trades a run of ready frames hands the producer in one batch (a
/// venue's frame may carry many). Public for the stages bench, which asks
/// the dedup in batches of this size as the feed does.
pub const MAX_BATCH: usize = 256;

/// Which connection a message came from, during a rotation.
#[derive(Debug, Clone, Copy)]
enum Conn {
    /// The feed's connection.
    Current,
    /// A rotation's new connection, until it delivers.
    Incoming,
    /// The connection a rotation replaced, until it is closed.
    Outgoing,
}

/// The next message of a connection that may not be there (never, then).
async fn next_of(
    conn: &mut Option<(WsSink, WsRead)>,
) -> Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>> {
    match conn {
        Some((_, read)) => read.next().await,
        None => futures::future::pending().await,
    }
}

/// What `/status` shows for a feed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FeedState {
    /// The feed's table name (`binance_us` in `[feeds.binance_us]`).
    pub feed: String,
    /// Its exchange protocol (`binance`, `kraken`, `coinbase` ...).
    pub protocol: String,
    pub exchange: String,
    pub url: String,
    pub connected: bool,
    /// Trade-id continuity: gaps seen, filled and lost (`None` for venues
    /// whose ids do not run one by one).
    pub gaps: Option<ContinuityStats>,
    #[serde(flatten)]
    pub health: Health,
}

impl ObservableState for FeedState {
    fn name(&self) -> String {
        format!("feed.{}", self.exchange.to_ascii_lowercase())
    }

    fn status(&self) -> String {
        if self.connected {
            "connected"
        } else {
            "connecting"
        }
        .into()
    }

    fn health(&self) -> &Health {
        &self.health
    }

    fn throughput_key(&self) -> Option<String> {
        Some("feed.received".into())
    }
}

pub struct FeedActor {
    cfg: FeedConfig,
    protocol: Arc<dyn Protocol>,
    /// The exchange's `symbol_pattern`: every trade's symbol is checked
    /// against it before the trade becomes a record.
    symbols: SymbolRule,
    metrics: Metrics,
    restarts: Restarts,
    state: FeedState,
    published: Published<FeedState>,
    /// Set by `StopFeed`: the supervisor still restarts the actor, but it
    /// stays idle instead of reconnecting.
    stopping: bool,
    /// Shared with the connection task and the gap filler; kept across
    /// restarts, which is exactly when overlaps and gaps happen.
    intake: Rc<Intake>,
    /// Where settled gaps are written (`market.gaps`), when the daemon
    /// keeps them.
    gaps_table: Option<Recipient<GapSettled>>,
    /// The gap filler, started with the first connection.
    filler: Option<tokio::task::JoinHandle<()>>,
    /// With a shared store: resolves the trades held for another daemon.
    releaser: Option<tokio::task::JoinHandle<()>>,
    /// Tells the running connection to end at its next wait for a frame,
    /// where it holds no trade (`StopFeed`).
    stop: Rc<tokio::sync::Notify>,
    /// A connection task is running.
    reading: bool,
    /// `StopFeed`'s answer, sent once the connection has ended.
    stopped: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Longest a `StopFeed` waits for the connection to reach a point where
/// it holds no trade: a send blocked on a full lane waits for the
/// producer, which gives up on a stalled broker (to its spill log) well
/// within this.
const STOP_WAIT: Duration = Duration::from_secs(30);

impl FeedActor {
    /// Fails when the instruments file has no symbol rule for the feed's
    /// exchange, or the rule refuses a symbol the feed subscribes to (in
    /// the form the venue writes it in frames).
    pub fn new(
        cfg: FeedConfig,
        producer: ProducerLanes,
        instruments: Arc<Instruments>,
        metrics: Metrics,
    ) -> Result<Self, FeedError> {
        let protocol: Arc<dyn Protocol> = crate::exchanges::protocol(cfg.protocol()).into();
        let symbols = instruments.symbol_rule(&cfg.exchange)?.clone();
        for s in &cfg.symbols {
            symbols
                .check(&protocol.frame_symbol(s))
                .map_err(|source| FeedError::Subscription {
                    key: cfg.key("symbols"),
                    source,
                })?;
        }
        let exchange = cfg.exchange.clone();
        let intake = Rc::new(Intake {
            exchange: exchange.clone(),
            producer,
            dedup: RefCell::new(Self::dedup(&cfg, &metrics, DEFAULT_FALSE_POSITIVE_RATE)),
            tiers: RefCell::new(TierCache::new(instruments.clone())),
            events: Rc::new(FeedEvents::new(metrics.clone(), &exchange)),
            continuity: protocol
                .contiguous_ids()
                .then(|| RefCell::new(Continuity::new(&exchange, cfg.gap_grace_ms))),
            gap_opened: tokio::sync::Notify::new(),
            metrics: metrics.clone(),
            shared: None,
            held: RefCell::new(std::collections::VecDeque::new()),
            held_checked: std::cell::Cell::new(None),
        });
        let restarts = Restarts::new(
            format!("feed.{}", cfg.exchange.to_ascii_lowercase()),
            RestartPolicy::from_millis(cfg.backoff_initial_ms, cfg.backoff_max_ms),
        );
        let state = FeedState {
            feed: cfg.name.clone(),
            protocol: cfg.protocol().as_str().to_string(),
            exchange: cfg.exchange.clone(),
            url: protocol.connect_url(&cfg),
            ..FeedState::default()
        };
        Ok(Self {
            cfg,
            protocol,
            symbols,
            metrics,
            restarts,
            published: Published::new(state.clone()),
            state,
            stopping: false,
            intake,
            gaps_table: None,
            filler: None,
            releaser: None,
            stop: Rc::new(tokio::sync::Notify::new()),
            reading: false,
            stopped: None,
        })
    }

    /// Settled gaps go to this writer of `market.gaps`.
    pub fn with_gaps_table(mut self, to: Recipient<GapSettled>) -> Self {
        self.gaps_table = Some(to);
        self
    }

    /// Where the lake left each symbol: `(symbol, id space, last id, its
    /// exchange time µs)`. The first live trade past it opens a gap for
    /// what lies between, which is filled from the venue.
    pub fn with_last_ids(self, last: &[(String, String, i64, i64)]) -> Self {
        if let Some(c) = &self.intake.continuity {
            let mut c = c.borrow_mut();
            for (symbol, space, id, at) in last {
                c.seed(symbol, space, *id, *at);
            }
        }
        self
    }

    /// Shares its dedup and last ids with the other daemons on this feed
    /// (`dedup.redis_url`).
    pub fn with_shared(mut self, ids: Arc<SharedIds>) -> Self {
        match Rc::get_mut(&mut self.intake) {
            Some(intake) => intake.shared = Some(ids),
            // Only before the feed starts is the intake its own.
            None => {
                tracing::error!(exchange = %self.cfg.exchange, "shared dedup set on a running feed; ignored")
            }
        }
        self
    }

    /// Its dedup at `dedup.false_positive_rate` (`new` takes the default
    /// rate; the daemon calls this before the feed starts).
    pub fn with_dedup_rate(self, false_positive_rate: f64) -> Self {
        *self.intake.dedup.borrow_mut() =
            Self::dedup(&self.cfg, &self.metrics, false_positive_rate);
        self
    }

    /// `feeds.<name>.dedup_capacity` ids, its figures in the metrics as
    /// `feed.<exchange>` (like the feed's name in `/status`). Prepared when
    /// the actor starts: the daemon replaces the one `new` made (at the
    /// default rate) before that, and building both cost a Bloom filter's
    /// pages for nothing.
    fn dedup(cfg: &FeedConfig, metrics: &Metrics, false_positive_rate: f64) -> Dedup {
        let owner = format!("feed.{}", cfg.exchange.to_ascii_lowercase());
        Dedup::with_rate(cfg.dedup_capacity, false_positive_rate).reporting(metrics, &owner)
    }
}

impl FeedActor {
    /// The state this feed publishes after every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<FeedState> {
        self.published.subscribe()
    }

    fn publish_state(&mut self) {
        self.state.gaps = self.intake.continuity.as_ref().map(|c| c.borrow().stats());
        self.published.publish(&self.state);
    }
}

impl Actor for FeedActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.stopping {
            return;
        }
        // Before the first frame (a restart finds it prepared already).
        self.intake.dedup.borrow_mut().prepare();
        let delay = self.restarts.delay(&self.state.health);
        let url = self.state.url.clone();
        tracing::info!(exchange = %self.cfg.exchange, url = %url, delay_ms = delay.as_millis() as u64, "feed connecting");
        if self.filler.is_none() && self.intake.continuity.is_some() {
            self.filler = Some(actix::spawn(fill_gaps(
                self.intake.clone(),
                self.cfg.clone(),
                self.protocol.clone(),
                self.symbols.clone(),
                self.gaps_table.clone(),
                ctx.address().recipient(),
            )));
        }
        if self.releaser.is_none() && self.intake.shared.is_some() {
            self.releaser = Some(actix::spawn(release_held_loop(self.intake.clone())));
        }
        let conn = Connection {
            cfg: self.cfg.clone(),
            protocol: self.protocol.clone(),
            url,
            symbols: self.symbols.clone(),
            addr: ctx.address(),
            intake: self.intake.clone(),
            parsed: RefCell::new(Vec::new()),
            stop: self.stop.clone(),
        };
        self.reading = true;
        ctx.spawn(conn.run(delay).into_actor(self).map(|res, act, ctx| {
            act.state.connected = false;
            act.reading = false;
            // A planned rotation happens inside the connection's run:
            // only a failure, or a stop, ends it.
            match res {
                Err(FeedError::Stopped) => {
                    tracing::info!(exchange = %act.cfg.exchange, "feed stopped");
                }
                Err(e) => {
                    tracing::warn!(exchange = %act.cfg.exchange, error = %e, "feed connection ended");
                    act.state.health.last_error = Some(e.to_string());
                }
            }
            act.publish_state();
            match act.stopped.take() {
                // The stop's answer stops the actor, once it has answered.
                Some(answer) => {
                    let _ = answer.send(());
                }
                None => ctx.stop(),
            }
        }));
    }
}

impl Supervised for FeedActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        if self.stopping {
            return;
        }
        self.restarts.count(&mut self.state.health, &self.metrics);
        self.intake.events.connection("restart");
        self.publish_state();
    }
}

/// Sent by the connection task once frames flow, so a healthy connection
/// resets the backoff.
#[derive(Message)]
#[rtype(result = "()")]
struct Connected;

impl Handler<Connected> for FeedActor {
    type Result = ();
    fn handle(&mut self, _: Connected, _ctx: &mut Self::Context) {
        self.state.connected = true;
        self.restarts.reset();
        self.publish_state();
    }
}

/// Close the connection and stay idle (daemon shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopFeed;

impl Handler<StopFeed> for FeedActor {
    type Result = ResponseActFuture<Self, ()>;

    /// Answers once the connection has ended, at its next wait for a
    /// frame: the trades it holds then (a batch on its way to a full lane,
    /// the frames its socket had ready) have gone to the producer, not
    /// been dropped with the task. The shutdown drains the lanes after.
    fn handle(&mut self, _: StopFeed, _ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        for task in [self.filler.take(), self.releaser.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        if !self.reading {
            return Box::pin(ActorFutureExt::map(
                actix::fut::ready(()),
                |(), _, ctx: &mut Context<Self>| ctx.stop(),
            ));
        }
        self.stop.notify_one();
        let (answer, ended) = tokio::sync::oneshot::channel();
        self.stopped = Some(answer);
        Box::pin(
            async move { tokio::time::timeout(STOP_WAIT, ended).await }
                .into_actor(self)
                .map(|ended, act, ctx| {
                    if ended.is_err() {
                        tracing::error!(exchange = %act.cfg.exchange, wait = ?STOP_WAIT,
                            "feed stop: the connection did not end in time; trades it held are dropped");
                    }
                    ctx.stop();
                }),
        )
    }
}

impl Handler<GapsChanged> for FeedActor {
    type Result = ();
    fn handle(&mut self, _: GapsChanged, _ctx: &mut Self::Context) {
        self.publish_state();
    }
}

impl Handler<Observe<FeedState>> for FeedActor {
    type Result = MessageResult<Observe<FeedState>>;
    fn handle(&mut self, _: Observe<FeedState>, _ctx: &mut Self::Context) -> Self::Result {
        self.publish_state();
        MessageResult(self.state.clone())
    }
}

struct Connection {
    cfg: FeedConfig,
    protocol: Arc<dyn Protocol>,
    url: String,
    symbols: SymbolRule,
    addr: Addr<FeedActor>,
    intake: Rc<Intake>,
    /// The trades of the frames being handled; kept to reuse its room.
    parsed: RefCell<Vec<TradeV2>>,
    /// `StopFeed` asks the connection to end.
    stop: Rc<tokio::sync::Notify>,
}

impl Connection {
    /// Connects and subscribes.
    async fn open(&self) -> Result<(WsSink, WsRead), FeedError> {
        let exchange = self.cfg.exchange.as_str();
        let connect = tokio::time::timeout(
            Duration::from_secs(15),
            tokio_tungstenite::connect_async(self.url.as_str()),
        )
        .await;
        let ws = match connect {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                self.intake.events.connection("failed");
                return Err(FeedError::Connect {
                    url: self.url.clone(),
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                self.intake.events.connection("failed");
                return Err(FeedError::Connect {
                    url: self.url.clone(),
                    reason: "timed out after 15s".into(),
                });
            }
        };
        self.intake.events.connection("connected");
        tracing::info!(exchange, url = %self.url, "feed connected");
        let (mut sink, stream) = ws.split();
        for frame in self.protocol.subscribe_frames(&self.cfg) {
            tracing::debug!(exchange, %frame, "feed subscribing");
            sink.send(WsMessage::text(frame)).await?;
        }
        Ok((sink, stream))
    }

    /// Runs the connection until it fails or `StopFeed` ends it. The
    /// planned rotation makes the new connection before it breaks the old
    /// one: at `rotate_at` a second
    /// connection is opened and subscribed; once it delivers its first data
    /// frame it becomes the feed's, and the old one is read for
    /// `ROTATION_OVERLAP` more (its buffers may still hold frames the new
    /// one started after) and then closed. Both deliver the overlap; dedup
    /// keeps one copy. So a rotation loses nothing.
    async fn run(self, delay: Duration) -> Result<std::convert::Infallible, FeedError> {
        let end = self.read(delay).await;
        // Trades of a run of frames whose next message ended the connection
        // (an error, a close) still go out.
        let mut trades = std::mem::take(&mut *self.parsed.borrow_mut());
        if !trades.is_empty()
            && let Err(e) = self.intake.send_trades(&mut trades, now_us()).await
        {
            tracing::warn!(exchange = %self.cfg.exchange, error = %e, "the producer refused the last trades of a connection");
        }
        end
    }

    /// Reads the connection until it ends.
    async fn read(&self, delay: Duration) -> Result<std::convert::Infallible, FeedError> {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.stop.notified() => return Err(FeedError::Stopped),
        }
        let exchange = self.cfg.exchange.as_str();
        let (mut sink, mut stream) = tokio::select! {
            opened = self.open() => opened?,
            _ = self.stop.notified() => return Err(FeedError::Stopped),
        };
        // A venue that wants an application ping gets one on its interval;
        // the others never wake this timer.
        let keepalive = self.protocol.keepalive();
        let mut ping_at = keepalive
            .as_ref()
            .map(|(every, _)| tokio::time::Instant::now() + *every);
        let stale = Duration::from_secs(self.cfg.stale_after_secs);
        let lifetime = Duration::from_secs(self.cfg.max_connection_secs);
        let mut rotate_at = tokio::time::Instant::now() + lifetime;
        // The connection that will replace this one, until it delivers.
        let mut incoming: Option<(WsSink, WsRead)> = None;
        // The one it replaced, read until `retire_at`.
        let mut outgoing: Option<(WsSink, WsRead)> = None;
        let mut retire_at: Option<tokio::time::Instant> = None;
        let mut announced = false;
        // Only data frames prove the feed alive: a server that answers
        // pings but sends no data is as stale as a silent one.
        let mut stale_at = tokio::time::Instant::now() + stale;
        // A data frame arrived since `stale_at` was last set. It is moved on
        // when the loop next waits, not per frame: a run of ready frames
        // then reads the clock once, and the deadline is later by at most
        // the run's handling time (ms against `stale_after_secs`).
        let mut fresh = false;
        // A message the current connection had ready, read without a
        // select (see the end of the loop), and how many ran so.
        let mut ready = None;
        let mut run = 0;
        loop {
            let (next, from) = if let Some(n) = ready.take() {
                (n, Conn::Current)
            } else {
                run = 0;
                if fresh {
                    fresh = false;
                    stale_at = tokio::time::Instant::now() + stale;
                }
                tokio::select! {
                // Here nothing is in hand: the trades of the frames before
                // have gone to the producer.
                _ = self.stop.notified() => return Err(FeedError::Stopped),
                n = stream.next() => (n, Conn::Current),
                n = next_of(&mut incoming) => (n, Conn::Incoming),
                n = next_of(&mut outgoing) => (n, Conn::Outgoing),
                _ = tokio::time::sleep_until(stale_at) => return Err(FeedError::Stale(stale)),
                _ = tokio::time::sleep_until(rotate_at), if incoming.is_none() && outgoing.is_none() => {
                    match self.open().await {
                        Ok(c) => {
                            tracing::info!(exchange, "feed rotating: the new connection is open");
                            incoming = Some(c);
                        }
                        Err(e) => tracing::warn!(exchange, error = %e, "feed rotation: the new connection failed; the old one carries on"),
                    }
                    // Whether it opened or not, the next try is a lifetime away
                    // unless it takes over first.
                    rotate_at = tokio::time::Instant::now() + lifetime;
                    continue;
                }
                _ = sleep_until_some(retire_at) => {
                    if let Some((mut old, _)) = outgoing.take() {
                        let _ = old.send(WsMessage::Close(None)).await;
                    }
                    retire_at = None;
                    self.intake.events.connection("rotated");
                    tracing::info!(exchange, "feed rotated: the old connection is closed");
                    continue;
                }
                _ = sleep_until_some(ping_at) => {
                    if let Some((every, frame)) = &keepalive {
                        sink.send(WsMessage::text(frame.clone())).await?;
                        ping_at = Some(tokio::time::Instant::now() + *every);
                    }
                    continue;
                }
                }
            };
            let msg = match (next, from) {
                (Some(Ok(m)), _) => m,
                (None, Conn::Current) => return Err(FeedError::Closed("stream ended".into())),
                (Some(Err(e)), Conn::Current) => return Err(e.into()),
                // A rotation's connection that fails is dropped; the current
                // one carries on, and a new rotation is tried in time.
                (end, Conn::Incoming) => {
                    tracing::warn!(exchange, end = ?end.map(|r| r.err()), "feed rotation: the new connection ended before it delivered");
                    incoming = None;
                    continue;
                }
                (_, Conn::Outgoing) => {
                    outgoing = None;
                    retire_at = None;
                    continue;
                }
            };
            if !announced {
                announced = true;
                self.addr.do_send(Connected);
            }
            let data = matches!(msg, WsMessage::Text(_) | WsMessage::Binary(_));
            fresh |= data;
            // Frames the socket already holds are taken one after another,
            // without a select per frame: that round (six futures, timers
            // entered into the wheel and taken out again) cost more than
            // the frame's parse in a profile of a flood. The select runs
            // again after READY_RUN of them, so the timers and a rotation's
            // connection wait at most that long. The next frame is taken
            // before this one is handled, so that this one's trades can
            // wait for it and go to the producer with it.
            if data
                && matches!(from, Conn::Current)
                && run < READY_RUN
                && let Some(n) = stream.next().now_or_never()
            {
                ready = Some(n);
                run += 1;
            }
            let more = matches!(
                &ready,
                Some(Some(Ok(WsMessage::Text(_) | WsMessage::Binary(_))))
            );
            match msg {
                WsMessage::Text(t) => self.on_frame(t.as_bytes(), Some(t.as_str()), more).await?,
                WsMessage::Binary(b) => self.on_frame(&b, None, more).await?,
                WsMessage::Ping(p) => {
                    let to = match from {
                        Conn::Current => &mut sink,
                        Conn::Incoming => &mut incoming.as_mut().expect("read from it").0,
                        Conn::Outgoing => &mut outgoing.as_mut().expect("read from it").0,
                    };
                    // A failed pong on a rotation's connection ends it on its
                    // next read, handled above.
                    let sent = to.send(WsMessage::Pong(p)).await;
                    if matches!(from, Conn::Current) {
                        sent?;
                    }
                }
                WsMessage::Pong(_) | WsMessage::Frame(_) => {}
                WsMessage::Close(f) => {
                    let why = f
                        .map(|f| format!("{} {}", f.code, f.reason))
                        .unwrap_or_else(|| "no reason".into());
                    match from {
                        Conn::Current => return Err(FeedError::Closed(why)),
                        Conn::Incoming => incoming = None,
                        Conn::Outgoing => {
                            outgoing = None;
                            retire_at = None;
                        }
                    }
                }
            }
            // The new connection delivers: it takes over; the old one is
            // read a while longer, then closed.
            if data
                && matches!(from, Conn::Incoming)
                && let Some((new_sink, new_stream)) = incoming.take()
            {
                let old_sink = std::mem::replace(&mut sink, new_sink);
                let old_stream = std::mem::replace(&mut stream, new_stream);
                outgoing = Some((old_sink, old_stream));
                retire_at = Some(tokio::time::Instant::now() + ROTATION_OVERLAP);
                rotate_at = tokio::time::Instant::now() + lifetime;
            }
        }
    }

    /// Parses one frame; trades go to the producer on their tier's lane,
    /// malformed frames (a symbol outside the exchange's pattern among them)
    /// to the dead-letter topic with their raw bytes (on the tier-1 lane:
    /// they are never shed). Waiting on a full lane here is
    /// deliberate: it is the backpressure path.
    ///
    /// With `more` (the next frame is already in hand) the frame's trades
    /// wait for the next frame's, up to [`MAX_BATCH`], and go with them: a
    /// batch costs the lane and the producer's dispatch once. Nothing waits
    /// on anything else meanwhile, so no trade is held past the frames the
    /// socket had ready.
    async fn on_frame(&self, raw: &[u8], text: Option<&str>, more: bool) -> Result<(), FeedError> {
        let exchange = self.cfg.exchange.as_str();
        let received = now_us();
        let ctx = ParseCtx {
            exchange,
            symbols: &self.symbols,
            received_us: received,
        };
        // Taken out of its cell: the sends below await, and nothing else
        // touches the buffer meanwhile, but a borrow must not span them.
        let mut trades = std::mem::take(&mut *self.parsed.borrow_mut());
        let before = trades.len();
        let parsed = match text {
            Some(t) => self.protocol.parse(t, &ctx, &mut trades),
            None => Err(FrameError::Binary(raw.len())),
        };
        let letter = match parsed {
            Ok(Frame::Trades(_)) => None,
            Ok(Frame::Skipped(kind)) => {
                self.intake.events.skipped(kind);
                None
            }
            Err(e) => {
                if let FrameError::Venue(reason) = &e {
                    tracing::warn!(exchange, %reason, "the exchange reported an error");
                }
                // Whatever the parser pushed before it failed is not sent:
                // the frame goes whole to the dead letters.
                trades.truncate(before);
                self.intake.events.malformed(&e, raw.len());
                Some(Outgoing::dead_letter(DeadLetter::new(
                    exchange,
                    &self.url,
                    received,
                    e.to_string(),
                    raw.to_vec(),
                )))
            }
        };
        // The trades before a dead letter go first, as they came.
        if !trades.is_empty() && (!more || letter.is_some() || trades.len() >= MAX_BATCH) {
            self.intake.send_trades(&mut trades, received).await?;
        }
        if let Some(out) = letter {
            self.intake.send(out).await?;
        }
        *self.parsed.borrow_mut() = trades;
        Ok(())
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
pub(crate) async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binance() -> FeedConfig {
        FeedConfig::named("binance")
    }

    /// A feed of the test server on `port` that goes stale after a second
    /// of silence and waits `backoff_ms` before each reconnect.
    fn stale_after_a_second(port: u16, backoff_ms: u64) -> FeedConfig {
        FeedConfig {
            url: format!("ws://127.0.0.1:{port}"),
            stale_after_secs: 1,
            backoff_initial_ms: backoff_ms,
            backoff_max_ms: backoff_ms,
            ..binance()
        }
    }

    #[test]
    fn combined_stream_url_lists_every_symbol_and_stream() {
        let cfg = FeedConfig {
            url: "wss://stream.binance.com:9443/".into(),
            symbols: vec!["BTCUSDT".into(), "ethusdt".into()],
            channels: vec!["trade".into(), "aggTrade".into()],
            ..binance()
        };
        assert_eq!(
            crate::exchanges::binance::Binance.connect_url(&cfg),
            "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/btcusdt@aggTrade/ethusdt@trade/ethusdt@aggTrade"
        );
    }

    /// A server that answers the handshake and then only pings: the feed
    /// must call it stale after `stale_after_secs`, not stay connected.
    #[actix_rt::test]
    async fn pings_alone_do_not_keep_a_feed_alive() {
        use tokio_tungstenite::tungstenite::Bytes;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if ws
                    .send(WsMessage::Ping(Bytes::from_static(b"p")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let cfg = stale_after_a_second(port, 60_000);
        let (lanes, _rx) = crate::lanes::mailbox(&[8, 8, 8]).unwrap();
        let instruments = Arc::new(Instruments::builtin().unwrap());
        let metrics = Metrics::new().unwrap();
        let actor = FeedActor::new(cfg, lanes, instruments, metrics).unwrap();
        let feed = Supervisor::start(move |_| actor);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let state = loop {
            let s = feed.send(Observe::<FeedState>::new()).await.unwrap();
            let restarted = s.health.last_error.is_some() && s.health.restarts > 0;
            if restarted || std::time::Instant::now() > deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let error = state.health.last_error.unwrap_or_default();
        assert!(error.contains("stale"), "{error}");
        assert_eq!(
            state.health.restarts, 1,
            "restarted once, waiting out its backoff"
        );
        server.abort();
    }

    /// `StopFeed` closes the connection and leaves the feed idle: it does
    /// not connect again, not after `stale_after_secs` nor after its
    /// backoff (the shutdown relies on this, and `ticklake bench` stops its
    /// feed so before it times the broker alone).
    #[actix_rt::test]
    async fn a_stopped_feed_closes_its_connection_and_stays_idle() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        let server = {
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let mut closed_tx = Some(closed_tx);
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        continue;
                    };
                    let closed = closed_tx.take();
                    tokio::spawn(async move {
                        // A trade every 100 ms keeps the connection fresh
                        // until the client closes it.
                        for id in 1.. {
                            let frame = trade_frame("BTCUSDT", id);
                            if ws.send(WsMessage::Text(frame.into())).await.is_err() {
                                break;
                            }
                            match tokio::time::timeout(Duration::from_millis(100), ws.next()).await
                            {
                                Ok(Some(Ok(m))) if !m.is_close() => {}
                                Ok(_) => break,
                                Err(_) => {}
                            }
                        }
                        if let Some(tx) = closed {
                            let _ = tx.send(());
                        }
                    });
                }
            })
        };
        let cfg = stale_after_a_second(port, 50);
        // Room for every trade the test sends, so no send waits on a lane.
        let (lanes, _rx) = crate::lanes::mailbox(&[100_000; 3]).unwrap();
        let instruments = Arc::new(Instruments::builtin().unwrap());
        let actor = FeedActor::new(cfg, lanes, instruments, Metrics::new().unwrap()).unwrap();
        let feed = Supervisor::start(move |_| actor);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !feed
            .send(Observe::<FeedState>::new())
            .await
            .unwrap()
            .connected
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the feed never connected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        feed.send(StopFeed).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), closed_rx)
            .await
            .expect("the connection was not closed")
            .unwrap();
        // Past the stale deadline and many backoffs: a feed that came back
        // would have connected again by now.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "connected again");
        let state = feed.send(Observe::<FeedState>::new()).await.unwrap();
        assert!(!state.connected, "{:?}", state.health);
        // A second stop (the shutdown after a bench's) finds it idle.
        tokio::time::timeout(Duration::from_secs(5), feed.send(StopFeed))
            .await
            .expect("a second stop waited")
            .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "connected again");
        server.abort();
    }

    /// A Binance `trade` frame of `symbol` with trade id `id`.
    fn trade_frame(symbol: &str, id: u32) -> String {
        format!(
            r#"{{"e":"trade","E":1,"s":"{symbol}","t":{id},"p":"1.0","q":"1.0","T":1,"m":true}}"#
        )
    }

    type TestLanes = crate::lanes::LaneReceiver<
        crate::messages::producer::ProducerControl,
        crate::messages::producer::Batch,
    >;

    /// A BINANCE feed, its lanes `capacity` records each, against a
    /// server on 127.0.0.1 that runs `serve` on its first connection and
    /// then keeps it open until the test ends.
    async fn feed_against<F, Fut>(
        capacity: usize,
        serve: F,
    ) -> (Addr<FeedActor>, TestLanes, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            serve(tokio_tungstenite::accept_async(tcp).await.unwrap()).await;
            futures::future::pending::<()>().await;
        });
        let cfg = FeedConfig {
            url: format!("ws://127.0.0.1:{port}"),
            ..binance()
        };
        let (lanes, rx) = crate::lanes::mailbox(&[capacity; 3]).unwrap();
        let instruments = Arc::new(Instruments::builtin().unwrap());
        let actor = FeedActor::new(cfg, lanes, instruments, Metrics::new().unwrap()).unwrap();
        (Supervisor::start(move |_| actor), rx, server)
    }

    /// A feed's dedup is prepared when the actor starts, before any frame
    /// (its Bloom filter built and its window's room taken, which the
    /// memory gauge reads), and only then: not for the dedup at the
    /// default rate that the daemon replaces before the start.
    #[actix_rt::test]
    async fn a_feed_prepares_its_dedup_when_it_starts() {
        let metrics = Metrics::new().unwrap();
        let cfg = FeedConfig {
            // Nothing listens there: the feed backs off until it is stopped.
            url: "ws://127.0.0.1:9".into(),
            dedup_capacity: 10_000,
            ..binance()
        };
        let (lanes, _rx): (ProducerLanes, _) = crate::lanes::mailbox(&[8; 3]).unwrap();
        let instruments = Arc::new(Instruments::builtin().unwrap());
        let actor = FeedActor::new(cfg, lanes, instruments, metrics.clone())
            .unwrap()
            .with_dedup_rate(1e-4);
        let memory = || {
            metrics
                .dedup_memory_bytes
                .with_label_values(&["feed.binance"])
                .get()
        };
        assert_eq!(memory(), 0, "nothing built before the start");
        let feed = Supervisor::start(move |_| actor);
        // Handled after `started`.
        feed.send(StopFeed).await.unwrap();
        // The keys alone take 16 bytes an id of capacity.
        assert!(memory() >= 10_000 * 16, "{}", memory());
    }

    /// A trade whose symbol the exchange's pattern refuses reaches the
    /// producer as a dead letter, with the frame's bytes and the reason;
    /// the good trade behind it still arrives as a trade.
    #[actix_rt::test]
    async fn a_symbol_outside_the_pattern_becomes_a_dead_letter() {
        use crate::lanes::Envelope;
        use crate::messages::producer::Record;

        let bad = trade_frame("BTC'--USDT", 1);
        let good = trade_frame("BTCUSDT", 2);
        let frames = [bad.clone(), good];
        let (feed, mut rx, server) = feed_against(8, |mut ws| async move {
            for frame in frames {
                ws.send(WsMessage::text(frame)).await.unwrap();
            }
        })
        .await;
        let mut next = async || {
            // A bound on a hung test, not a timing assertion.
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some(Envelope::Data { tier, mut data })) if data.len() == 1 => {
                    (tier, data.remove(0).record)
                }
                other => panic!("expected a batch of one record, got {other:?}"),
            }
        };
        match next().await {
            (0, Record::DeadLetter(d)) => {
                assert_eq!(d.raw, bad.as_bytes());
                assert_eq!(d.exchange, "BINANCE");
                assert!(
                    d.reason.contains(r#"symbol "BTC'--USDT""#)
                        && d.reason.contains("exchanges.BINANCE.symbol_pattern"),
                    "{}",
                    d.reason
                );
            }
            other => panic!("expected a dead letter on the tier-1 lane, got {other:?}"),
        }
        match next().await {
            (_, Record::Trade(t)) => assert_eq!(t.symbol, "BTCUSDT"),
            other => panic!("expected the good trade, got {other:?}"),
        }
        feed.do_send(StopFeed);
        server.abort();
    }

    /// Frames the socket holds together reach the producer as batches:
    /// the trades of a run of frames in one, in order, a dead letter on
    /// its own after the trades before it, and the lane counts records.
    #[actix_rt::test]
    async fn a_run_of_ready_frames_goes_to_the_producer_in_batches() {
        use crate::lanes::Envelope;
        use crate::messages::producer::Record;

        let trade = |id| trade_frame("BTCUSDT", id);
        let frames = [
            trade(1),
            trade(2),
            "{not json".to_string(),
            trade(3),
            trade(4),
        ];
        let (feed, mut rx, server) = feed_against(8, |mut ws| async move {
            // Written out in one go: the feed finds them all ready.
            for frame in frames {
                ws.feed(WsMessage::text(frame)).await.unwrap();
            }
            ws.flush().await.unwrap();
        })
        .await;
        let mut batches = Vec::new();
        while batches.len() < 3 {
            // A bound on a hung test, not a timing assertion.
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some(Envelope::Data { tier: 0, data })) => batches.push(
                    data.into_iter()
                        .map(|o| match o.record {
                            Record::Trade(t) => t.source_sequence.unwrap_or(-1).to_string(),
                            Record::DeadLetter(d) => format!("dead letter {}", d.raw.len()),
                        })
                        .collect::<Vec<_>>(),
                ),
                other => panic!("expected a batch on the tier-1 lane, got {other:?}"),
            }
        }
        assert_eq!(
            batches,
            [vec!["1", "2"], vec!["dead letter 9"], vec!["3", "4"]]
        );
        let lane = &rx.stats().lanes[0];
        assert_eq!((lane.sent, lane.received), (5, 5), "records, not batches");
        feed.do_send(StopFeed);
        server.abort();
    }

    /// A stop while the feed waits on a full lane with a batch in hand
    /// waits for the batch to go, rather than dropping trades already
    /// counted as received; then the feed ends.
    #[actix_rt::test]
    async fn a_stop_lets_the_batch_in_hand_reach_the_lane() {
        use crate::lanes::Envelope;
        use crate::messages::producer::Record;

        let trade = |id| trade_frame("BTCUSDT", id);
        // Room for the first trade and two more: the batch of three waits.
        let (feed, mut rx, server) = feed_against(3, move |mut ws| async move {
            ws.send(WsMessage::text(trade(1))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            for id in 2..=4 {
                ws.feed(WsMessage::text(trade(id))).await.unwrap();
            }
            ws.flush().await.unwrap();
        })
        .await;
        // Bounds on a hung test, not timing assertions.
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while rx.stats().lanes[0].blocked_senders == 0 {
            assert!(
                tokio::time::Instant::now() < until,
                "the feed never blocked"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stop = tokio::spawn(feed.send(StopFeed));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!stop.is_finished(), "the stop waits for the batch in hand");
        let mut ids = Vec::new();
        while ids.len() < 4 {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some(Envelope::Data { data, .. })) => {
                    for o in data {
                        match o.record {
                            Record::Trade(t) => ids.push(t.source_sequence.unwrap_or(-1)),
                            other => panic!("expected trades, got {other:?}"),
                        }
                    }
                }
                other => panic!("expected a batch, got {other:?}"),
            }
        }
        assert_eq!(ids, [1, 2, 3, 4]);
        tokio::time::timeout(Duration::from_secs(30), stop)
            .await
            .expect("the stop answers once the batch went")
            .expect("task")
            .expect("the feed answered");
        let lane = &rx.stats().lanes[0];
        assert_eq!((lane.sent, lane.received, lane.blocked_senders), (4, 4, 0));
        server.abort();
    }

    #[test]
    fn a_feed_needs_a_rule_for_its_exchange_that_passes_its_symbols() {
        let instruments = Arc::new(Instruments::builtin().unwrap());
        let start = |cfg: FeedConfig| {
            let (lanes, _rx) = crate::lanes::mailbox(&[8, 8, 8]).unwrap();
            FeedActor::new(cfg, lanes, instruments.clone(), Metrics::new().unwrap())
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(start(binance()), None);
        let e = start(FeedConfig {
            exchange: "NOWHERE".into(),
            ..binance()
        })
        .unwrap();
        assert!(
            e.contains("[exchanges.NOWHERE]") && e.contains("symbol_pattern"),
            "{e}"
        );
        let e = start(FeedConfig {
            symbols: vec!["btcusdt".into(), "x".into()],
            ..binance()
        })
        .unwrap();
        assert!(
            e.starts_with("feeds.binance.symbols: symbol \"X\"")
                && e.contains("exchanges.BINANCE.symbol_pattern"),
            "{e}"
        );
    }
}
