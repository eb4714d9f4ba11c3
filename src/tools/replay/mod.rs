//! `ticklake replay`: a WebSocket server that plays a recorded capture to its
//! clients, standing in for an exchange feed in demos, tests and load runs.
//!
//! Only the frames the exchange sent are played. Whatever a client sends
//! (subscriptions and the like) is read and ignored, so any exchange client
//! can connect with its usual URL, path and query included.
//!
//! By default every client gets its own copy of the capture from the start.
//! In live mode one timeline runs from server start and every client sees it
//! from the moment it connects, as on a real exchange.
//!
//! One process may run several servers, each with its own capture on its
//! own address ([`ServeSpec`], [`run_all`]), e.g. one per exchange.
//!
//! With [`RestOptions`] a server also answers plain HTTP on its port with
//! the venue's REST trade history, and can leave trades out of the stream
//! (`rest`).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::{debug, error, info, warn};

use crate::tools::capture::CapturedFrame;
use plan::{Pacer, Plan};
pub use rest::{IdSpace, RestArgError, RestOptions, TradeRange, parse_rest_protocol};
use rest::{Opening, RestService};

mod plan;
mod rest;
mod retime;

/// Longest recorded silence, in seconds, that [`Pacing::Speed`] reproduces.
const MAX_RECORDED_GAP_SECS: f64 = 5.0;
/// Frames a live client may fall behind the shared timeline before it is
/// disconnected. Socket buffers hold more on top of this.
const LIVE_CLIENT_BUFFER: usize = 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing session waits to deliver its Close and for the reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `run` waits for sessions to close after shutdown is signalled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept, so that running out of file descriptors
/// does not turn the accept loop into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Clients only send small control messages; this bounds what one can make
/// the server buffer.
const MAX_CLIENT_MESSAGE: usize = 1 << 20;
/// Frames sent back to back before yielding, so that unpaced or catching-up
/// sends do not starve other tasks on the same worker.
const BURST_BEFORE_YIELD: u32 = 256;

type WsSink = SplitSink<WebSocketStream<TcpStream>, Message>;
type WsSource = SplitStream<WebSocketStream<TcpStream>>;
type WsError = tokio_tungstenite::tungstenite::Error;

/// What to play and how.
#[derive(Clone)]
pub struct ReplayOptions {
    pub frames: Arc<Vec<CapturedFrame>>,
    pub pacing: Pacing,
    /// Start over after the last frame, forever.
    pub looped: bool,
    /// One shared timeline from server start instead of a fresh replay per client.
    pub live: bool,
    /// Rewrite exchange timestamps so the capture plays as if live: the first
    /// timestamped frame becomes "now" at the start of each pass, and the
    /// recorded gaps between exchange timestamps are kept.
    pub retime: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// Send each frame as soon as the client's connection takes it.
    AsFastAsPossible,
    /// Reproduce the recorded gaps between frames divided by this factor
    /// (1.0 is real time, 10.0 ten times faster).
    ///
    /// Each recorded gap is capped at 5 seconds before dividing, so a long
    /// silence in a recording does not stall a demo. A gap next to a frame
    /// without a timestamp (plain captures), and a negative gap where
    /// concatenated captures go back in time, counts as zero.
    Speed(f64),
    /// This many frames per second, evenly spaced, whatever the recorded times.
    Rate(f64),
}

/// Totals for one `run`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Clients that completed the WebSocket handshake.
    pub clients: u64,
    /// Frames handed to client connections, summed over clients.
    pub frames_sent: u64,
    /// HTTP requests answered by the REST history (`RestOptions::rest`).
    pub rest_requests: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot listen for replay clients on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the capture has no received frames to replay")]
    EmptyCapture,
    #[error("invalid replay pacing {pacing:?}: {reason}")]
    InvalidPacing {
        pacing: Pacing,
        reason: &'static str,
    },
}

/// One server of `ticklake replay --serve ADDR=FILE[,FILE...]`: where it
/// listens and the capture files it plays, one after another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeSpec {
    pub addr: SocketAddr,
    pub captures: Vec<PathBuf>,
}

impl FromStr for ServeSpec {
    type Err = String;

    /// `ADDR=FILE[,FILE...]`, split at the first `=` (an address has none)
    /// and the files at each `,`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, files) = s
            .split_once('=')
            .ok_or_else(|| format!("expected ADDR=FILE[,FILE...], got {s:?}"))?;
        let addr = addr
            .trim()
            .parse()
            .map_err(|e| format!("{addr:?} is not a listen address (e.g. 127.0.0.1:9001): {e}"))?;
        let captures: Vec<PathBuf> = files.split(',').map(PathBuf::from).collect();
        if captures.iter().any(|p| p.as_os_str().is_empty()) {
            return Err(format!("an empty capture file name in {s:?}"));
        }
        Ok(Self { addr, captures })
    }
}

/// Runs bound servers side by side until `shutdown` completes, then stops
/// them all; their stats, in the order given.
pub async fn run_all(
    servers: Vec<ReplayServer>,
    shutdown: impl Future<Output = ()> + Send,
) -> Vec<Result<ReplayStats, ReplayError>> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let runs = servers.into_iter().map(|server| {
        let mut stop = stop_rx.clone();
        server.run(async move { stopped(&mut stop).await })
    });
    let signal = async move {
        shutdown.await;
        // Ignored: every server may have ended already.
        let _ = stop_tx.send(true);
    };
    let (stats, ()) = tokio::join!(futures::future::join_all(runs), signal);
    stats
}

/// A bound replay server; [`ReplayServer::run`] serves clients.
pub struct ReplayServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    plan: Arc<Plan>,
    rest: Option<RestService>,
}

impl fmt::Debug for ReplayServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayServer")
            .field("local_addr", &self.local_addr)
            .field("frames", &self.plan.frames.len())
            .field("looped", &self.plan.looped)
            .field("live", &self.plan.live)
            .field("rest", &self.rest.is_some())
            .finish_non_exhaustive()
    }
}

impl ReplayServer {
    /// Checks the options and binds the listening socket; port 0 picks a
    /// free port, see [`ReplayServer::local_addr`].
    pub async fn bind(addr: SocketAddr, opts: ReplayOptions) -> Result<Self, ReplayError> {
        Self::bind_with_rest(addr, opts, RestOptions::default()).await
    }

    /// [`ReplayServer::bind`], with the REST history and the faults of
    /// `rest` (the frames `--cut` names are left out of `opts.frames`).
    pub async fn bind_with_rest(
        addr: SocketAddr,
        mut opts: ReplayOptions,
        rest: RestOptions,
    ) -> Result<Self, ReplayError> {
        let prepared = rest::prepare(&opts.frames, &rest);
        if let Some(frames) = prepared.frames {
            opts.frames = Arc::new(frames);
        }
        let plan = Plan::new(opts)?;
        let bind_error = |source| ReplayError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            listener,
            local_addr,
            plan: Arc::new(plan),
            rest: prepared.rest,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves clients until `shutdown` completes, then sends every client a
    /// Close and waits (briefly) for the sessions to end.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<ReplayStats, ReplayError> {
        let Self {
            listener,
            local_addr,
            plan,
            rest,
        } = self;
        info!(
            addr = %local_addr,
            frames = plan.frames.len(),
            looped = plan.looped,
            live = plan.live,
            rest = rest.is_some(),
            "replay server listening"
        );
        let hub = plan.live.then(|| Arc::new(Hub::default()));
        // The live timeline starts with the server, not with the first client.
        let timeline = hub
            .clone()
            .map(|hub| tokio::spawn(run_timeline(plan.clone(), hub)));
        let shared = Arc::new(Shared {
            plan,
            hub,
            rest,
            clients: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut sessions = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);

        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        sessions.spawn(serve_connection(tcp, peer, shared.clone(), stop_rx.clone()));
                    }
                    Err(e) => {
                        warn!(error = %e, "accepting a replay connection failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
            while let Some(done) = sessions.try_join_next() {
                report_session_panic(done);
            }
        }

        drop(listener);
        // Ignored: every receiver may already be gone, which is the goal anyway.
        let _ = stop_tx.send(true);
        let drained = timeout(SHUTDOWN_GRACE, async {
            while let Some(done) = sessions.join_next().await {
                report_session_panic(done);
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                clients = sessions.len(),
                "clients did not finish closing in time; dropping their connections"
            );
            sessions.abort_all();
        }
        if let Some(timeline) = timeline {
            timeline.abort();
        }
        Ok(ReplayStats {
            clients: shared.clients.load(Ordering::Relaxed),
            frames_sent: shared.frames_sent.load(Ordering::Relaxed),
            rest_requests: shared.rest.as_ref().map_or(0, RestService::served),
        })
    }
}

fn report_session_panic(done: Result<(), JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        error!(error = %e, "replay session panicked");
    }
}

/// State every connection task shares.
struct Shared {
    plan: Arc<Plan>,
    hub: Option<Arc<Hub>>,
    rest: Option<RestService>,
    clients: AtomicU64,
    frames_sent: AtomicU64,
}

/// Live mode's fan-out: each client gets its own bounded queue, so one that
/// falls behind can be told so and dropped without the others noticing or
/// the timeline waiting for it.
#[derive(Default)]
struct Hub {
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    subscribers: Vec<Subscriber>,
    /// The timeline played its last frame; later clients get only a Close.
    ended: bool,
}

struct Subscriber {
    peer: SocketAddr,
    frames: mpsc::Sender<Utf8Bytes>,
    /// Fired when the client falls behind; its session then closes at once
    /// instead of first playing out the backlog.
    lagged: Option<oneshot::Sender<()>>,
}

type Subscription = (mpsc::Receiver<Utf8Bytes>, oneshot::Receiver<()>);

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HubState> {
        // Nothing done under the lock can leave the state half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `None` once the timeline has ended.
    fn subscribe(&self, peer: SocketAddr) -> Option<Subscription> {
        let mut state = self.lock();
        if state.ended {
            return None;
        }
        let (frames, frames_rx) = mpsc::channel(LIVE_CLIENT_BUFFER);
        let (lagged, lagged_rx) = oneshot::channel();
        state.subscribers.push(Subscriber {
            peer,
            frames,
            lagged: Some(lagged),
        });
        Some((frames_rx, lagged_rx))
    }

    fn publish(&self, frame: &Utf8Bytes) {
        self.lock()
            .subscribers
            .retain_mut(|sub| match sub.frames.try_send(frame.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    // Skipping frames would hand the client a silently broken
                    // stream (gaps in book updates, missing trades).
                    warn!(
                        client = %sub.peer,
                        behind_frames = LIVE_CLIENT_BUFFER,
                        "live client fell behind the timeline; disconnecting it"
                    );
                    if let Some(lagged) = sub.lagged.take() {
                        // Ignored: the session may have ended already.
                        let _ = lagged.send(());
                    }
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            });
    }

    fn end(&self) {
        let mut state = self.lock();
        state.ended = true;
        // Dropping the senders lets each session play out its queue and
        // then close normally.
        state.subscribers.clear();
    }
}

async fn run_timeline(plan: Arc<Plan>, hub: Arc<Hub>) {
    let mut pacer = Pacer::new(&plan.clock);
    loop {
        let shift = plan.pass_shift();
        for (index, frame) in plan.frames.iter().enumerate() {
            // Cannot fail: there is no sink to flush.
            let _ = pacer.wait(index, None).await;
            hub.publish(&Plan::frame_for_pass(frame, shift));
        }
        if !plan.looped {
            break;
        }
    }
    hub.end();
    info!("live timeline reached the end of the capture");
}

/// Why a client session ended.
enum SessionEnd {
    /// The capture (or the live timeline) ran out.
    Finished,
    /// A live client fell too far behind.
    Lagged,
    Shutdown,
    /// The client sent a Close.
    ClientClosed,
    /// The connection failed or dropped without a Close.
    ClientGone(Option<WsError>),
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Finished => f.write_str("end of capture"),
            Self::Lagged => f.write_str("fell behind the live timeline"),
            Self::Shutdown => f.write_str("server shutting down"),
            Self::ClientClosed => f.write_str("closed by client"),
            Self::ClientGone(Some(e)) => write!(f, "connection lost: {e}"),
            Self::ClientGone(None) => f.write_str("connection lost"),
        }
    }
}

impl SessionEnd {
    /// Classifies a failed send. tungstenite refuses sends once the client's
    /// Close has been read, and that close still deserves its reply.
    fn lost(error: WsError) -> Self {
        match error {
            WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Protocol(ProtocolError::SendAfterClosing) => Self::ClientClosed,
            error => Self::ClientGone(Some(error)),
        }
    }

    /// The Close frame the server sends, if it still can and should.
    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Self::Finished => (CloseCode::Normal, "end of capture"),
            Self::Lagged => (CloseCode::Policy, "too slow: fell behind the live timeline"),
            Self::Shutdown => (CloseCode::Away, "server shutting down"),
            Self::ClientClosed | Self::ClientGone(_) => return None,
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    // Frames are small and latency-sensitive; Nagle would hold them back.
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(client = %peer, error = %e, "cannot disable nagle");
    }
    // Only with REST on is the request head looked at first, so without it
    // every connection goes to the handshake exactly as it always did.
    if let Some(rest) = &shared.rest {
        let opening = tokio::select! {
            opening = timeout(HANDSHAKE_TIMEOUT, rest::opening(&tcp)) => opening,
            () = stopped(&mut stop) => return,
        };
        match opening {
            Ok(Opening::WebSocket) => {}
            Ok(Opening::Http(head_len)) => {
                let shift = shared.plan.current_shift();
                rest::serve_http(tcp, peer, head_len, rest, shift).await;
                return;
            }
            Ok(Opening::Closed) | Err(_) => {
                debug!(client = %peer, "connection closed or idle before a request");
                return;
            }
        }
    }
    let mut path = String::new();
    // Any path and query is accepted: clients keep their exchange URL.
    // The signature is tungstenite's handshake `Callback`.
    #[allow(clippy::result_large_err)]
    let record_path = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        path = request.uri().to_string();
        Ok(response)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE));
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(tcp, record_path, Some(config));
    let ws = tokio::select! {
        done = timeout(HANDSHAKE_TIMEOUT, handshake) => match done {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                debug!(client = %peer, error = %e, "websocket handshake failed");
                return;
            }
            Err(_) => {
                debug!(client = %peer, "websocket handshake timed out");
                return;
            }
        },
        () = stopped(&mut stop) => return,
    };
    shared.clients.fetch_add(1, Ordering::Relaxed);
    info!(client = %peer, path = %path, "client connected");

    let (mut sink, mut stream) = ws.split();
    let mut sent = 0u64;
    let total = &shared.frames_sent;
    let end = match &shared.hub {
        None => {
            let writer = play_own(&mut sink, &shared.plan, &mut sent, total);
            drive(peer, &mut stream, &mut stop, writer, std::future::pending()).await
        }
        Some(hub) => match hub.subscribe(peer) {
            Some((frames, lagged)) => {
                let writer = play_live(&mut sink, frames, &mut sent, total);
                let lagged = async move { lagged.await.is_ok() };
                drive(peer, &mut stream, &mut stop, writer, lagged).await
            }
            None => SessionEnd::Finished,
        },
    };

    // Closing needs the whole socket: the sink half may still hold a frame
    // from a send that was cut short, which it would try to push out first.
    match stream.reunite(sink) {
        Ok(mut ws) => close_session(peer, &mut ws, &end).await,
        Err(e) => debug!(client = %peer, error = %e, "cannot reunite websocket halves"),
    }
    info!(client = %peer, frames_sent = sent, reason = %end, "client disconnected");
}

async fn close_session(peer: SocketAddr, ws: &mut WebSocketStream<TcpStream>, end: &SessionEnd) {
    if let Some(frame) = end.close_frame() {
        // Best effort: a client that stopped reading cannot take the Close,
        // and waiting for it forever would pin this task.
        let sent = timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
        if matches!(sent, Ok(Ok(()))) {
            // The client's reply completes the close handshake.
            let _ = timeout(CLOSE_TIMEOUT, read_until_close(peer, ws)).await;
        }
    } else if matches!(end, SessionEnd::ClientClosed) {
        // Flushes the Close reply tungstenite queued on receipt. Not
        // `WebSocketStream::close`, which refuses to send after a Close.
        let _ = timeout(CLOSE_TIMEOUT, SinkExt::close(ws)).await;
    }
}

/// Runs a session's writer while reading from the client, so that pings are
/// answered and a Close is noticed even while the writer waits.
async fn drive(
    peer: SocketAddr,
    stream: &mut WsSource,
    stop: &mut watch::Receiver<bool>,
    writer: impl Future<Output = SessionEnd>,
    lagged: impl Future<Output = bool>,
) -> SessionEnd {
    tokio::select! {
        end = writer => end,
        end = read_until_close(peer, stream) => end,
        true = lagged => SessionEnd::Lagged,
        () = stopped(stop) => SessionEnd::Shutdown,
    }
}

async fn read_until_close<S>(peer: SocketAddr, stream: &mut S) -> SessionEnd
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    // Reading is also what makes tungstenite send Pongs and Close replies.
    while let Some(message) = stream.next().await {
        match message {
            Ok(Message::Close(_)) => return SessionEnd::ClientClosed,
            Ok(Message::Text(text)) => {
                debug!(client = %peer, message = %text.as_str(), "ignoring client message");
            }
            Ok(_) => {}
            Err(e) => return SessionEnd::ClientGone(Some(e)),
        }
    }
    SessionEnd::ClientGone(None)
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stop.wait_for(|&stop| stop).await;
}

async fn send_frame(
    sink: &mut WsSink,
    frame: &Utf8Bytes,
    sent: &mut u64,
    total: &AtomicU64,
) -> Result<(), WsError> {
    // `feed` rather than `send`: flushing per frame would cost a syscall per
    // frame at high rates. Pacer flushes before it sleeps, callers at the end.
    sink.feed(Message::Text(frame.clone())).await?;
    *sent += 1;
    total.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// A client's own replay, paced from when it connected.
async fn play_own(sink: &mut WsSink, plan: &Plan, sent: &mut u64, total: &AtomicU64) -> SessionEnd {
    let mut pacer = Pacer::new(&plan.clock);
    loop {
        let shift = plan.pass_shift();
        for (index, frame) in plan.frames.iter().enumerate() {
            if let Err(e) = pacer.wait(index, Some(&mut *sink)).await {
                return SessionEnd::lost(e);
            }
            let frame = Plan::frame_for_pass(frame, shift);
            if let Err(e) = send_frame(sink, &frame, sent, total).await {
                return SessionEnd::lost(e);
            }
        }
        if !plan.looped {
            break;
        }
    }
    match sink.flush().await {
        Ok(()) => SessionEnd::Finished,
        Err(e) => SessionEnd::lost(e),
    }
}

/// A client's view of the shared live timeline.
async fn play_live(
    sink: &mut WsSink,
    mut frames: mpsc::Receiver<Utf8Bytes>,
    sent: &mut u64,
    total: &AtomicU64,
) -> SessionEnd {
    loop {
        let frame = match frames.try_recv() {
            Ok(frame) => frame,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                // Caught up with the timeline: push out what is buffered
                // before waiting for the next frame.
                if let Err(e) = sink.flush().await {
                    return SessionEnd::lost(e);
                }
                match frames.recv().await {
                    Some(frame) => frame,
                    None => break,
                }
            }
        };
        if let Err(e) = send_frame(sink, &frame, sent, total).await {
            return SessionEnd::lost(e);
        }
    }
    match sink.flush().await {
        Ok(()) => SessionEnd::Finished,
        Err(e) => SessionEnd::lost(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;
    use tokio_tungstenite::MaybeTlsStream;

    type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

    const STEP: Duration = Duration::from_secs(10);

    struct Running {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        handle: JoinHandle<Result<ReplayStats, ReplayError>>,
    }

    impl Running {
        async fn stop(self) -> ReplayStats {
            let _ = self.stop.send(());
            timeout(STEP, self.handle)
                .await
                .expect("server stops in time")
                .expect("server task did not panic")
                .expect("server ran")
        }
    }

    fn numbered(count: usize) -> Vec<CapturedFrame> {
        (0..count)
            .map(|i| CapturedFrame {
                ts: Some(1_700_000_000.0 + i as f64 * 0.01),
                data: format!(r#"{{"i":{i}}}"#),
            })
            .collect()
    }

    fn options(frames: Vec<CapturedFrame>, pacing: Pacing) -> ReplayOptions {
        ReplayOptions {
            frames: Arc::new(frames),
            pacing,
            looped: false,
            live: false,
            retime: false,
        }
    }

    fn localhost() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    async fn start(opts: ReplayOptions) -> Running {
        let server = ReplayServer::bind(localhost(), opts).await.expect("binds");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Running { addr, stop, handle }
    }

    async fn connect(addr: SocketAddr) -> Client {
        let url = format!("ws://{addr}/stream?streams=btcusdt@trade/ethusdt@aggTrade");
        let (ws, _) = timeout(STEP, tokio_tungstenite::connect_async(url))
            .await
            .expect("connects in time")
            .expect("handshake succeeds");
        ws
    }

    async fn next_message(ws: &mut Client) -> Message {
        timeout(STEP, ws.next())
            .await
            .expect("message in time")
            .expect("connection open")
            .expect("message ok")
    }

    fn index_of(message: &Message) -> u64 {
        let Message::Text(text) = message else {
            panic!("expected a text frame, got {message:?}");
        };
        let value: serde_json::Value = serde_json::from_str(text.as_str()).expect("frame is json");
        value["i"].as_u64().expect("frame has an index")
    }

    /// Frame indices up to the server's Close, and that Close. Reads on to
    /// the end of the stream, which is what sends the client's Close reply.
    async fn read_to_close(ws: &mut Client) -> (Vec<u64>, Option<CloseFrame>) {
        let mut indices = Vec::new();
        loop {
            match next_message(ws).await {
                Message::Close(frame) => {
                    expect_stream_end(ws).await;
                    return (indices, frame);
                }
                message @ Message::Text(_) => indices.push(index_of(&message)),
                _ => {}
            }
        }
    }

    /// Closes from the client side and checks the server completes the
    /// close handshake.
    async fn hang_up(ws: &mut Client) {
        ws.close(None).await.expect("close sent");
        // Frames already in flight still arrive before the Close reply.
        loop {
            match timeout(STEP, ws.next()).await.expect("ends in time") {
                Some(Ok(Message::Text(_))) => {}
                Some(Ok(Message::Close(_))) | None | Some(Err(WsError::ConnectionClosed)) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn expect_stream_end(ws: &mut Client) {
        let end = timeout(STEP, ws.next()).await.expect("ends in time");
        assert!(
            matches!(end, None | Some(Err(WsError::ConnectionClosed))),
            "expected the connection to end, got {end:?}"
        );
    }

    #[tokio::test]
    async fn plays_capture_in_order_then_closes() {
        let server = start(options(numbered(5), Pacing::AsFastAsPossible)).await;
        let mut ws = connect(server.addr).await;
        ws.send(Message::text(
            r#"{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}"#,
        ))
        .await
        .expect("subscription sent");

        let (indices, close) = read_to_close(&mut ws).await;
        assert_eq!(indices, vec![0, 1, 2, 3, 4]);
        let close = close.expect("close carries a frame");
        assert_eq!(close.code, CloseCode::Normal);
        assert_eq!(close.reason.as_str(), "end of capture");

        let stats = server.stop().await;
        assert_eq!(
            stats,
            ReplayStats {
                clients: 1,
                frames_sent: 5,
                rest_requests: 0,
            }
        );
    }

    #[tokio::test]
    async fn each_client_gets_the_whole_capture() {
        let server = start(options(numbered(3), Pacing::Rate(100.0))).await;
        let mut first = connect(server.addr).await;
        let mut second = connect(server.addr).await;
        assert_eq!(read_to_close(&mut first).await.0, vec![0, 1, 2]);
        assert_eq!(read_to_close(&mut second).await.0, vec![0, 1, 2]);
        assert_eq!(server.stop().await.clients, 2);
    }

    #[tokio::test]
    async fn looped_replay_wraps_around() {
        let mut opts = options(numbered(3), Pacing::AsFastAsPossible);
        opts.looped = true;
        let server = start(opts).await;
        let mut ws = connect(server.addr).await;
        for expected in 0..10u64 {
            assert_eq!(index_of(&next_message(&mut ws).await), expected % 3);
        }
        hang_up(&mut ws).await;
        let stats = server.stop().await;
        assert_eq!(stats.clients, 1);
        assert!(stats.frames_sent >= 10, "{stats:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_clients_share_one_timeline() {
        let mut opts = options(numbered(60), Pacing::Rate(100.0));
        opts.live = true;
        let server = start(opts).await;

        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut early = connect(server.addr).await;
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(index_of(&next_message(&mut early).await));
        }
        assert_ne!(seen[0], 0, "a late client must not see the start");
        assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
        hang_up(&mut early).await;

        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut late = connect(server.addr).await;
        let (indices, close) = read_to_close(&mut late).await;
        let first = *indices.first().expect("frames after reconnecting");
        let last_seen = *seen.last().expect("frames seen");
        assert!(
            first > last_seen + 1,
            "reconnected client got {first} after {last_seen}: it must miss the frames played meanwhile"
        );
        assert!(indices.windows(2).all(|w| w[1] == w[0] + 1), "{indices:?}");
        assert_eq!(indices.last(), Some(&59));
        assert_eq!(close.map(|c| c.code), Some(CloseCode::Normal));

        // Once the timeline is over a newcomer gets just the Close.
        let mut after = connect(server.addr).await;
        let (indices, close) = read_to_close(&mut after).await;
        assert!(indices.is_empty(), "{indices:?}");
        assert_eq!(close.map(|c| c.code), Some(CloseCode::Normal));

        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lagging_live_client_is_closed_not_skipped() {
        // Large frames fill the socket buffers quickly, so the client's queue
        // overflows while it is not reading.
        let frames = (0..4)
            .map(|i| CapturedFrame {
                ts: None,
                data: format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(64 * 1024)),
            })
            .collect();
        let mut opts = options(frames, Pacing::Rate(20_000.0));
        opts.looped = true;
        opts.live = true;
        let server = start(opts).await;
        let mut ws = connect(server.addr).await;

        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (indices, close) = read_to_close(&mut ws).await;
        assert!(!indices.is_empty());
        assert!(
            indices.windows(2).all(|w| w[1] == (w[0] + 1) % 4),
            "frames were skipped"
        );
        let close = close.expect("close carries a reason");
        assert_eq!(close.code, CloseCode::Policy);
        assert!(close.reason.as_str().contains("fell behind"), "{close:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn rate_pacing_spaces_frames() {
        let server = start(options(numbered(20), Pacing::Rate(200.0))).await;
        let started = std::time::Instant::now();
        let mut ws = connect(server.addr).await;
        let (indices, _) = read_to_close(&mut ws).await;
        let elapsed = started.elapsed();
        assert_eq!(indices, (0..20).collect::<Vec<_>>());
        // 19 gaps of 5ms.
        assert!(elapsed >= Duration::from_millis(80), "{elapsed:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn speed_pacing_caps_long_recorded_gaps() {
        let frames = [0.0, 0.05, 1000.05]
            .into_iter()
            .enumerate()
            .map(|(i, ts)| CapturedFrame {
                ts: Some(ts),
                data: format!(r#"{{"i":{i}}}"#),
            })
            .collect();
        let server = start(options(frames, Pacing::Speed(10.0))).await;
        let started = std::time::Instant::now();
        let mut ws = connect(server.addr).await;
        let (indices, _) = read_to_close(&mut ws).await;
        let elapsed = started.elapsed();
        assert_eq!(indices, vec![0, 1, 2]);
        // 0.05s/10 + min(1000s, 5s)/10; uncapped it would be 100s.
        assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn speed_without_timestamps_is_unpaced() {
        let frames = (0..3)
            .map(|i| CapturedFrame {
                ts: None,
                data: format!(r#"{{"i":{i}}}"#),
            })
            .collect();
        let server = start(options(frames, Pacing::Speed(0.001))).await;
        let mut ws = connect(server.addr).await;
        assert_eq!(read_to_close(&mut ws).await.0, vec![0, 1, 2]);
        server.stop().await;
    }

    #[tokio::test]
    async fn ping_gets_pong_while_frames_flow() {
        let mut opts = options(numbered(3), Pacing::Rate(20.0));
        opts.looped = true;
        let server = start(opts).await;
        let mut ws = connect(server.addr).await;
        ws.send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .expect("ping sent");
        loop {
            match next_message(&mut ws).await {
                Message::Pong(payload) => {
                    assert_eq!(&payload[..], b"are you there");
                    break;
                }
                Message::Text(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        hang_up(&mut ws).await;
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_closes_clients_as_going_away() {
        let mut opts = options(numbered(3), Pacing::Rate(50.0));
        opts.looped = true;
        let server = start(opts).await;
        let mut ws = connect(server.addr).await;
        index_of(&next_message(&mut ws).await);

        let Running {
            addr: _,
            stop,
            handle,
        } = server;
        let _ = stop.send(());
        let (_, close) = read_to_close(&mut ws).await;
        assert_eq!(close.map(|c| c.code), Some(CloseCode::Away));
        let stats = timeout(STEP, handle)
            .await
            .expect("stops in time")
            .expect("no panic")
            .expect("ran");
        assert_eq!(stats.clients, 1);
    }

    #[tokio::test]
    async fn failed_handshake_leaves_server_serving() {
        let server = start(options(numbered(2), Pacing::AsFastAsPossible)).await;
        let mut tcp = TcpStream::connect(server.addr).await.expect("connects");
        tcp.write_all(b"hello there\r\n\r\n").await.expect("writes");
        let mut reply = Vec::new();
        // The server answers or hangs up; either way the read ends.
        let _ = timeout(STEP, tcp.read_to_end(&mut reply))
            .await
            .expect("server does not hang on garbage");

        let mut ws = connect(server.addr).await;
        assert_eq!(read_to_close(&mut ws).await.0, vec![0, 1]);
        assert_eq!(server.stop().await.clients, 1);
    }

    #[tokio::test]
    async fn invalid_options_are_rejected() {
        let err = ReplayServer::bind(localhost(), options(Vec::new(), Pacing::AsFastAsPossible))
            .await
            .expect_err("empty capture");
        assert!(matches!(err, ReplayError::EmptyCapture));

        for pacing in [
            Pacing::Rate(0.0),
            Pacing::Rate(-5.0),
            Pacing::Rate(f64::INFINITY),
            Pacing::Rate(1e-300),
            Pacing::Speed(f64::NAN),
            Pacing::Speed(0.0),
            Pacing::Speed(1e-300),
        ] {
            let err = ReplayServer::bind(localhost(), options(numbered(1), pacing))
                .await
                .expect_err("bad pacing");
            assert!(
                matches!(err, ReplayError::InvalidPacing { .. }),
                "{pacing:?}"
            );
        }
    }

    #[test]
    fn serve_specs_parse_address_and_files() {
        let spec: ServeSpec = "127.0.0.1:9001=a.txt,dir/b.jsonl.zst".parse().unwrap();
        assert_eq!(spec.addr, SocketAddr::from(([127, 0, 0, 1], 9001)));
        assert_eq!(
            spec.captures,
            vec![PathBuf::from("a.txt"), PathBuf::from("dir/b.jsonl.zst")]
        );
        let v6: ServeSpec = "[::1]:0=x=y.txt".parse().unwrap();
        assert_eq!(v6.captures, vec![PathBuf::from("x=y.txt")]);
        for bad in [
            "127.0.0.1:9001",
            "nowhere=a.txt",
            "127.0.0.1:1=",
            "127.0.0.1:1=a,,b",
        ] {
            assert!(bad.parse::<ServeSpec>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn run_all_serves_each_capture_on_its_own_address_and_stops_all() {
        let first = ReplayServer::bind(localhost(), options(numbered(2), Pacing::AsFastAsPossible))
            .await
            .expect("binds");
        let frames = (10..13)
            .map(|i| CapturedFrame {
                ts: None,
                data: format!(r#"{{"i":{i}}}"#),
            })
            .collect();
        let second = ReplayServer::bind(localhost(), options(frames, Pacing::AsFastAsPossible))
            .await
            .expect("binds");
        let (a, b) = (first.local_addr(), second.local_addr());
        assert_ne!(a, b);
        let (stop, stopped) = oneshot::channel::<()>();
        let all = tokio::spawn(run_all(vec![first, second], async move {
            let _ = stopped.await;
        }));
        let mut ws = connect(a).await;
        assert_eq!(read_to_close(&mut ws).await.0, vec![0, 1]);
        let mut ws = connect(b).await;
        assert_eq!(read_to_close(&mut ws).await.0, vec![10, 11, 12]);
        let _ = stop.send(());
        let stats = timeout(STEP, all).await.expect("stops").expect("no panic");
        let sent: Vec<u64> = stats
            .into_iter()
            .map(|s| s.expect("ran").frames_sent)
            .collect();
        assert_eq!(sent, vec![2, 3]);
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let taken = TcpListener::bind(localhost()).await.expect("binds");
        let addr = taken.local_addr().expect("has an address");
        let err = ReplayServer::bind(addr, options(numbered(1), Pacing::AsFastAsPossible))
            .await
            .expect_err("address in use");
        assert!(matches!(err, ReplayError::Bind { .. }));
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
