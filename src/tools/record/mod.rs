//! `ticklake record`: connects to the configured feeds as the daemon would
//! and writes every frame exactly as received, with its receive time, in
//! recorder format 2 (JSON lines), zstd-compressed: the captures that
//! `ticklake replay` and `ticklake produce` read back.
//!
//! One file series per feed, `<dir>/<EXCHANGE>.<yyyymmddThhmmssZ>.jsonl.zst`
//! (UTC, when the file was opened; a name already taken gets `_0001`,
//! `_0002` ... before `.jsonl`), rotated when a file passes a size
//! (uncompressed) or an age. Every file opens with its own header:
//!
//! ```text
//! {"t":"header","format":2,"exchange":"BINANCE","feed":"binance","recorded":1700000000.123456,"seq":0,"protocol":"binance","url":"wss://…","config":{"channels":[…],"symbols":[…]},"recorder":"ticklake 0.1.0"}
//! {"t":"connect","conn":"binance.ws.1","ts":1700000000.200000,"addr":"wss://…"}
//! {"t":"send","conn":"binance.ws.1","ts":1700000000.210000,"data":"<frame sent>"}
//! {"t":"recv","conn":"binance.ws.1","ts":1700000000.250000,"data":"<text frame received>"}
//! {"t":"recv","conn":"binance.ws.1","ts":1700000000.260000,"b64":"<binary frame, base64>"}
//! {"t":"disconnect","conn":"binance.ws.1","ts":1700000100.000000,"reason":"…"}
//! ```
//!
//! `ts` is the wall-clock receive (or send) time in unix seconds with six
//! decimals; `data` is the frame's text as a JSON string, so it reads back
//! byte for byte; `conn` numbers the connections of the run. `send` records
//! the subscription frames and the protocol's keep-alive pings.
//!
//! A file is a sequence of independent zstd frames: the lines gathered are
//! compressed and written as one frame at least every `flush_every` (one
//! second by default) and every MiB, so a recorder killed outright loses at
//! most the last frame's worth, and the capture reader reads the rest (it
//! says when a file ends inside a frame).

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use tracing::{info, warn};

use crate::actors::feed::sleep_until_some;
use crate::actors::observe::{RestartPolicy, Restarts};
use crate::config::{Config, FeedConfig};
use crate::exchanges::Protocol;
use crate::model::now_us;

mod files;
use files::SeriesWriter;

/// The recorder format written (`"format"` in the header).
pub const FORMAT: u32 = 2;
/// Default `--rotate-bytes`: 256 MiB of uncompressed lines per file.
pub const DEFAULT_ROTATE_BYTES: u64 = 256 * 1024 * 1024;
/// Default `--rotate-secs`: one file per hour.
pub const DEFAULT_ROTATE_SECS: u64 = 3600;
/// Default `--flush-ms`: the longest a received frame waits in memory.
pub const DEFAULT_FLUSH_MS: u64 = 1000;
/// Uncompressed lines that make a zstd frame at the latest.
const CHUNK_BYTES: usize = 1 << 20;
/// zstd's default level: about 10× on exchange JSON at hundreds of MB/s.
const ZSTD_LEVEL: i32 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle writer looks at its flush and rotation clocks.
const TICK: Duration = Duration::from_millis(100);

/// What to record and how.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// Directory of the recordings; created when missing.
    pub out: PathBuf,
    /// Feeds (`[feeds.<name>]`) to record; empty means every enabled feed.
    /// A feed named here is recorded even when it is disabled.
    pub feeds: Vec<String>,
    /// Stop after this long; `None` runs until the shutdown future.
    pub duration: Option<Duration>,
    /// Start a new file once one holds this many uncompressed bytes.
    pub rotate_bytes: u64,
    /// Start a new file once one is this old.
    pub rotate_after: Duration,
    /// Compress and write what was received at least this often.
    pub flush_every: Duration,
}

impl RecordOptions {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            feeds: Vec::new(),
            duration: None,
            rotate_bytes: DEFAULT_ROTATE_BYTES,
            rotate_after: Duration::from_secs(DEFAULT_ROTATE_SECS),
            flush_every: Duration::from_millis(DEFAULT_FLUSH_MS),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("no feed named {name:?} in the config; configured feeds: {known}")]
    UnknownFeed { name: String, known: String },
    #[error("no feed to record: every configured feed is disabled (name one with --feed)")]
    NoFeeds,
    #[error("{0}")]
    Invalid(&'static str),
    #[error("cannot write recording {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One feed's totals for the run, printed as a JSON line at the end.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FeedSummary {
    pub feed: String,
    pub exchange: String,
    /// Frames received, text and binary.
    pub frames: u64,
    /// Of which binary (recorded as base64).
    pub binary_frames: u64,
    /// Payload bytes of the frames received.
    pub bytes: u64,
    /// Frames sent: subscriptions and keep-alive pings.
    pub sent: u64,
    /// Files written.
    pub files: u64,
    /// Connections made.
    pub connects: u64,
    /// Connection attempts after the first, successful or not.
    pub reconnects: u64,
    /// Attempts that did not connect.
    pub failed_connects: u64,
    /// Lines written, before compression.
    pub uncompressed_bytes: u64,
    /// Bytes on disk.
    pub compressed_bytes: u64,
    /// The files, in the order they were written.
    pub paths: Vec<PathBuf>,
    /// Why the feed's recording stopped early, if it did.
    pub error: Option<String>,
}

/// Records the selected feeds until `opts.duration` passes or `shutdown`
/// completes, then closes the connections and finishes the files. Returns
/// one summary per feed, in feed-name order; a feed whose files could not
/// be written has its `error` set.
pub async fn record(
    cfg: &Config,
    opts: &RecordOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<Vec<FeedSummary>, RecordError> {
    if opts.rotate_bytes == 0 {
        return Err(RecordError::Invalid("--rotate-bytes must be positive"));
    }
    if opts.rotate_after.is_zero() {
        return Err(RecordError::Invalid("--rotate-secs must be positive"));
    }
    if opts.flush_every.is_zero() {
        return Err(RecordError::Invalid("--flush-ms must be positive"));
    }
    let feeds = select_feeds(cfg, &opts.feeds)?;
    std::fs::create_dir_all(&opts.out).map_err(|source| RecordError::Io {
        path: opts.out.clone(),
        source,
    })?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut writers = Vec::with_capacity(feeds.len());
    let mut summaries = Vec::with_capacity(feeds.len());
    for (index, feed) in feeds.into_iter().enumerate() {
        let protocol = crate::exchanges::protocol(feed.protocol());
        let url = protocol.connect_url(&feed);
        let writer = SeriesWriter::new(opts, &feed, &url)?;
        let (tx, rx) = mpsc::channel();
        writers.push(tokio::task::spawn_blocking(move || writer.run(rx)));
        summaries.push(FeedSummary {
            feed: feed.name.clone(),
            exchange: feed.exchange.clone(),
            ..FeedSummary::default()
        });
        info!(feed = %feed.name, exchange = %feed.exchange, %url, "recording feed");
        let stop = stop_rx.clone();
        conns.spawn(async move {
            let stats = run_feed(&feed, protocol.as_ref(), &url, &tx, stop).await;
            (index, stats)
        });
    }

    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut done = Vec::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = sleep_until_some(deadline) => break,
            joined = conns.join_next() => match joined {
                Some(joined) => done.push(joined),
                // Every feed ended on its own (their writers failed).
                None => break,
            },
        }
    }
    // Ignored: the receivers may all be gone, which is the goal anyway.
    let _ = stop_tx.send(true);
    while let Some(joined) = conns.join_next().await {
        done.push(joined);
    }
    for joined in done {
        match joined {
            Ok((index, stats)) => stats.fill(&mut summaries[index]),
            Err(e) => warn!(error = %e, "a feed's recording task failed"),
        }
    }
    // The connection tasks are gone and with them the senders: each writer
    // finishes its file and returns.
    for (summary, writer) in summaries.iter_mut().zip(writers) {
        match writer.await {
            Ok(Ok(written)) => written.fill(summary),
            Ok(Err(e)) => {
                summary.error = Some(e.to_string());
            }
            Err(e) => summary.error = Some(format!("the file writer failed: {e}")),
        }
        if let Some(error) = &summary.error {
            warn!(feed = %summary.feed, %error, "recording stopped early");
        }
    }
    Ok(summaries)
}

/// The feeds to record: the named ones, else every enabled one.
fn select_feeds(cfg: &Config, names: &[String]) -> Result<Vec<FeedConfig>, RecordError> {
    if names.is_empty() {
        let feeds: Vec<FeedConfig> = cfg.feeds.enabled().cloned().collect();
        return if feeds.is_empty() {
            Err(RecordError::NoFeeds)
        } else {
            Ok(feeds)
        };
    }
    let mut picked: Vec<FeedConfig> = Vec::with_capacity(names.len());
    for name in names {
        if picked.iter().any(|f| &f.name == name) {
            continue;
        }
        let feed = cfg
            .feeds
            .get(name)
            .cloned()
            .ok_or_else(|| RecordError::UnknownFeed {
                name: name.clone(),
                known: cfg.feeds.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
        picked.push(feed);
    }
    picked.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(picked)
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stop.wait_for(|&stop| stop).await;
}

/// What the connection side hands the file writer, in order.
enum Event {
    Connect {
        conn: Arc<str>,
        ts: i64,
        addr: Arc<str>,
    },
    Send {
        conn: Arc<str>,
        ts: i64,
        data: String,
    },
    Text {
        conn: Arc<str>,
        ts: i64,
        data: Utf8Bytes,
    },
    Binary {
        conn: Arc<str>,
        ts: i64,
        data: Bytes,
    },
    Disconnect {
        conn: Arc<str>,
        ts: i64,
        reason: String,
    },
}

/// The connection side's totals.
#[derive(Debug, Default)]
struct ConnStats {
    frames: u64,
    binary_frames: u64,
    bytes: u64,
    sent: u64,
    connects: u64,
    attempts: u64,
    failed_connects: u64,
}

impl ConnStats {
    fn fill(&self, s: &mut FeedSummary) {
        s.frames = self.frames;
        s.binary_frames = self.binary_frames;
        s.bytes = self.bytes;
        s.sent = self.sent;
        s.connects = self.connects;
        s.reconnects = self.attempts.saturating_sub(1);
        s.failed_connects = self.failed_connects;
    }
}

/// How one connection ended.
enum End {
    /// The run is over.
    Stopped,
    /// `max_connection_secs` passed: reconnect at once.
    Rotated,
    /// The connection failed, went stale or was closed by the server.
    Lost(String),
    /// The file writer stopped (it failed); nothing more can be recorded.
    WriterGone,
}

/// One feed's connections, one after another, until stopped: reconnects
/// with the feed's capped, jittered backoff (`backoff_initial_ms`,
/// `backoff_max_ms`), which starts over after a connection that delivered
/// frames.
async fn run_feed(
    feed: &FeedConfig,
    protocol: &dyn Protocol,
    url: &str,
    tx: &mpsc::Sender<Event>,
    mut stop: watch::Receiver<bool>,
) -> ConnStats {
    let mut stats = ConnStats::default();
    let mut backoff = Restarts::new(
        format!("record.{}", feed.name),
        RestartPolicy::from_millis(feed.backoff_initial_ms, feed.backoff_max_ms),
    );
    let addr: Arc<str> = url.into();
    loop {
        if *stop.borrow() {
            break;
        }
        stats.attempts += 1;
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url));
        let connected = tokio::select! {
            connected = connect => connected,
            () = stopped(&mut stop) => break,
        };
        let delay = match connected {
            Ok(Ok((ws, _))) => {
                stats.connects += 1;
                let conn: Arc<str> = format!("{}.ws.{}", feed.name, stats.connects).into();
                let connect = Event::Connect {
                    conn: conn.clone(),
                    ts: now_us(),
                    addr: addr.clone(),
                };
                if tx.send(connect).is_err() {
                    break;
                }
                info!(feed = %feed.name, %conn, "connected");
                let frames_before = stats.frames;
                let end = session(ws, &conn, feed, protocol, tx, &mut stop, &mut stats).await;
                let reason = match &end {
                    End::Stopped => "recorder stopped".to_string(),
                    End::Rotated => "planned reconnect (max_connection_secs)".to_string(),
                    End::Lost(reason) => reason.clone(),
                    End::WriterGone => break,
                };
                let disconnect = Event::Disconnect {
                    conn: conn.clone(),
                    ts: now_us(),
                    reason,
                };
                if tx.send(disconnect).is_err() {
                    break;
                }
                match end {
                    End::Stopped | End::WriterGone => break,
                    End::Rotated => {
                        backoff.reset();
                        Duration::ZERO
                    }
                    End::Lost(reason) => {
                        if stats.frames > frames_before {
                            backoff.reset();
                        }
                        let delay = backoff.next_delay();
                        warn!(feed = %feed.name, %conn, %reason, ?delay, "connection lost; reconnecting");
                        delay
                    }
                }
            }
            Ok(Err(e)) => {
                stats.failed_connects += 1;
                let delay = backoff.next_delay();
                warn!(feed = %feed.name, %url, error = %e, ?delay, "cannot connect; retrying");
                delay
            }
            Err(_) => {
                stats.failed_connects += 1;
                let delay = backoff.next_delay();
                warn!(feed = %feed.name, %url, ?delay, "connect timed out after {CONNECT_TIMEOUT:?}; retrying");
                delay
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(&mut stop) => break,
        }
    }
    stats
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection: subscribes, then records every frame until it ends.
async fn session(
    ws: Ws,
    conn: &Arc<str>,
    feed: &FeedConfig,
    protocol: &dyn Protocol,
    tx: &mpsc::Sender<Event>,
    stop: &mut watch::Receiver<bool>,
    stats: &mut ConnStats,
) -> End {
    let (mut sink, mut stream) = ws.split();
    for frame in protocol.subscribe_frames(feed) {
        let ts = now_us();
        if let Err(e) = sink.send(Message::text(frame.clone())).await {
            return End::Lost(format!("sending a subscription failed: {e}"));
        }
        stats.sent += 1;
        let sent = Event::Send {
            conn: conn.clone(),
            ts,
            data: frame,
        };
        if tx.send(sent).is_err() {
            return End::WriterGone;
        }
    }
    let keepalive = protocol.keepalive();
    let now = tokio::time::Instant::now();
    let mut ping_at = keepalive.as_ref().map(|(every, _)| now + *every);
    let stale = Duration::from_secs(feed.stale_after_secs);
    let mut stale_at = now + stale;
    let rotate_at = now + Duration::from_secs(feed.max_connection_secs);
    let close = |code: CloseCode, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    loop {
        tokio::select! {
            () = stopped(stop) => {
                let _ = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    sink.send(close(CloseCode::Away, "recorder stopping")),
                )
                .await;
                return End::Stopped;
            }
            next = stream.next() => {
                let ts = now_us();
                let message = match next {
                    None => return End::Lost("the connection ended".into()),
                    Some(Err(e)) => return End::Lost(e.to_string()),
                    Some(Ok(message)) => message,
                };
                let event = match message {
                    Message::Text(data) => {
                        stats.frames += 1;
                        stats.bytes += data.len() as u64;
                        Event::Text { conn: conn.clone(), ts, data }
                    }
                    Message::Binary(data) => {
                        stats.frames += 1;
                        stats.binary_frames += 1;
                        stats.bytes += data.len() as u64;
                        Event::Binary { conn: conn.clone(), ts, data }
                    }
                    Message::Ping(payload) => {
                        if let Err(e) = sink.send(Message::Pong(payload)).await {
                            return End::Lost(format!("answering a ping failed: {e}"));
                        }
                        continue;
                    }
                    Message::Pong(_) | Message::Frame(_) => continue,
                    Message::Close(frame) => {
                        // Sends the Close reply tungstenite queued.
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
                        return End::Lost(match frame {
                            Some(f) => format!("closed by the server: {} {}", f.code, f.reason),
                            None => "closed by the server".into(),
                        });
                    }
                };
                // Only data proves the feed alive, as in the daemon.
                stale_at = tokio::time::Instant::now() + stale;
                if tx.send(event).is_err() {
                    return End::WriterGone;
                }
            }
            () = tokio::time::sleep_until(stale_at) => {
                let _ = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    sink.send(close(CloseCode::Away, "stale")),
                )
                .await;
                return End::Lost(format!("no frame for {}s (stale_after_secs)", stale.as_secs()));
            }
            () = tokio::time::sleep_until(rotate_at) => {
                let _ = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    sink.send(close(CloseCode::Normal, "planned reconnect")),
                )
                .await;
                return End::Rotated;
            }
            () = sleep_until_some(ping_at) => {
                if let Some((every, frame)) = &keepalive {
                    let ts = now_us();
                    if let Err(e) = sink.send(Message::text(frame.clone())).await {
                        return End::Lost(format!("sending a keep-alive failed: {e}"));
                    }
                    stats.sent += 1;
                    let sent = Event::Send { conn: conn.clone(), ts, data: frame.clone() };
                    if tx.send(sent).is_err() {
                        return End::WriterGone;
                    }
                    ping_at = Some(tokio::time::Instant::now() + *every);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::files::{encode, encode_header};
    use super::*;
    use crate::tools::capture::{CaptureFormat, read_capture_report};

    fn options(dir: &Path) -> RecordOptions {
        RecordOptions::new(dir)
    }

    fn feed() -> FeedConfig {
        let mut f = FeedConfig::named("binance");
        f.symbols = vec!["btcusdt".into()];
        f
    }

    fn text(conn: &Arc<str>, ts: i64, data: &str) -> Event {
        Event::Text {
            conn: conn.clone(),
            ts,
            data: Utf8Bytes::from(data),
        }
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    #[test]
    fn lines_are_format_2_with_exact_data_and_microsecond_times() {
        let conn: Arc<str> = "binance.ws.1".into();
        let mut out = Vec::new();
        encode(
            &mut out,
            &text(&conn, 1_700_000_000_000_042, "{\"a\":\"é\\\"\"}\t"),
        );
        let line = std::str::from_utf8(&out).unwrap();
        assert_eq!(
            line,
            "{\"t\":\"recv\",\"conn\":\"binance.ws.1\",\"ts\":1700000000.000042,\"data\":\"{\\\"a\\\":\\\"é\\\\\\\"\\\"}\\t\"}\n"
        );
        let back: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(back["data"], "{\"a\":\"é\\\"\"}\t");

        out.clear();
        encode(
            &mut out,
            &Event::Binary {
                conn: conn.clone(),
                ts: 5,
                data: Bytes::from_static(&[0, 1, 2, 255]),
            },
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "{\"t\":\"recv\",\"conn\":\"binance.ws.1\",\"ts\":0.000005,\"b64\":\"AAEC/w==\"}\n"
        );

        out.clear();
        let header = SeriesWriter::new(&options(Path::new(".")), &feed(), "ws://x/stream")
            .unwrap()
            .header;
        encode_header(&mut out, &header, 1_700_000_000_100_000, 3);
        let line = std::str::from_utf8(&out).unwrap();
        assert!(
            line.starts_with(
                r#"{"t":"header","format":2,"exchange":"BINANCE","feed":"binance","recorded":1700000000.100000,"seq":3,"protocol":"binance","url":"ws://x/stream","config":"#
            ),
            "{line}"
        );
    }

    #[test]
    fn a_series_reads_back_and_rotates_by_size_with_a_header_each() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path());
        opts.rotate_bytes = 2_000;
        let writer = SeriesWriter::new(&opts, &feed(), "ws://x").unwrap();
        let (tx, rx) = mpsc::channel();
        let conn: Arc<str> = "binance.ws.1".into();
        tx.send(Event::Connect {
            conn: conn.clone(),
            ts: 1_000_000,
            addr: "ws://x".into(),
        })
        .unwrap();
        let frames: Vec<String> = (0..100)
            .map(|i| format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(i)))
            .collect();
        for (i, f) in frames.iter().enumerate() {
            tx.send(text(&conn, 2_000_000 + i as i64, f)).unwrap();
        }
        tx.send(Event::Binary {
            conn: conn.clone(),
            ts: 3_000_000,
            data: Bytes::from_static(b"\x00\x01"),
        })
        .unwrap();
        drop(tx);
        let written = writer.run(rx).unwrap();
        let paths = files(dir.path());
        assert_eq!(written.paths.len(), paths.len());
        assert!(paths.len() > 3, "{paths:?}");
        let mut got = Vec::new();
        let mut binary = 0;
        for path in &written.paths {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(
                name.starts_with("BINANCE.") && name.ends_with(".jsonl.zst"),
                "{name}"
            );
            let bytes = std::fs::read(path).unwrap();
            let text = zstd::stream::decode_all(&bytes[..]).unwrap();
            assert!(text.starts_with(br#"{"t":"header","format":2,"#));
            let report = read_capture_report(path).unwrap();
            assert_eq!(report.format, CaptureFormat::Recorder2);
            assert!(report.compressed && report.truncated.is_none());
            binary += report.binary_skipped;
            got.extend(report.frames);
        }
        assert_eq!(binary, 1);
        assert_eq!(
            got.iter().map(|f| f.data.clone()).collect::<Vec<_>>(),
            frames
        );
        assert_eq!(got[0].ts, Some(2.0));
    }

    #[test]
    fn a_killed_writer_leaves_every_flushed_frame_readable() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path());
        // Frames only where the test flushes.
        opts.flush_every = Duration::from_secs(3600);
        let mut writer = SeriesWriter::new(&opts, &feed(), "ws://x").unwrap();
        let conn: Arc<str> = "binance.ws.1".into();
        let frames: Vec<String> = (0..300).map(|i| format!(r#"{{"i":{i}}}"#)).collect();
        for (i, f) in frames.iter().enumerate() {
            writer.write(&text(&conn, i as i64, f)).unwrap();
            if i % 100 == 99 {
                writer.flush_chunk().unwrap();
            }
        }
        // Not closed: as if killed after three flushes.
        let path = writer.written.paths[0].clone();
        let whole = std::fs::read(&path).unwrap();
        let report = read_capture_report(&path).unwrap();
        assert_eq!(report.frames.len(), 300);
        // Cut inside the last of the three zstd frames.
        let first = zstd::zstd_safe::find_frame_compressed_size(&whole).unwrap();
        let second = zstd::zstd_safe::find_frame_compressed_size(&whole[first..]).unwrap();
        let cut = first + second + (whole.len() - first - second) / 2;
        std::fs::write(&path, &whole[..cut]).unwrap();
        let report = read_capture_report(&path).unwrap();
        let truncated = report.truncated.expect("the cut is reported");
        assert_eq!(truncated.offset, (first + second) as u64);
        assert!(truncated.to_string().contains("truncated"), "{truncated}");
        assert!(report.frames.len() >= 200, "{}", report.frames.len());
        for (got, want) in report.frames.iter().zip(&frames) {
            assert_eq!(&got.data, want);
        }
        drop(writer);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_text_and_binary_frames_and_answers_pings() {
        use tokio::net::TcpListener;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            ws.send(Message::text("first")).await.unwrap();
            ws.send(Message::Binary(Bytes::from_static(&[7, 8, 9])))
                .await
                .unwrap();
            ws.send(Message::Ping(Bytes::from_static(b"hi")))
                .await
                .unwrap();
            let pong = loop {
                match ws.next().await {
                    Some(Ok(Message::Pong(p))) => break p.to_vec(),
                    Some(Ok(_)) => {}
                    other => panic!("no pong: {other:?}"),
                }
            };
            ws.send(Message::text("second")).await.unwrap();
            ws.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = done_tx.send(pong);
            // Hold the connection until the recorder closes it.
            while let Some(Ok(_)) = ws.next().await {}
        });

        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        let f = cfg.feeds.named("binance");
        f.url = format!("ws://{addr}");
        f.symbols = vec!["btcusdt".into()];
        f.backoff_initial_ms = 600_000;
        f.backoff_max_ms = 600_000;
        let mut opts = options(dir.path());
        opts.duration = Some(Duration::from_secs(30));
        let pong = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = pong.clone();
        let summaries = record(&cfg, &opts, async move {
            let p = done_rx.await.unwrap_or_default();
            *seen.lock().unwrap() = p;
        })
        .await
        .unwrap();
        server.await.unwrap();
        assert_eq!(*pong.lock().unwrap(), b"hi");
        assert_eq!(summaries.len(), 1);
        let s = &summaries[0];
        assert_eq!((s.frames, s.binary_frames, s.connects), (3, 1, 1), "{s:?}");
        assert_eq!(s.bytes, 5 + 3 + 6);
        assert_eq!(s.files, 1);
        assert!(s.error.is_none(), "{s:?}");
        let report = read_capture_report(&s.paths[0]).unwrap();
        assert_eq!(report.binary_skipped, 1);
        let data: Vec<&str> = report.frames.iter().map(|f| f.data.as_str()).collect();
        assert_eq!(data, ["first", "second"]);
        let text = zstd::stream::decode_all(&std::fs::read(&s.paths[0]).unwrap()[..]).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains(r#""b64":"BwgJ""#), "{text}");
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with(r#"{"t":"connect","conn":"binance.ws.1","#),
            "{text}"
        );
        assert!(
            text.lines()
                .last()
                .unwrap()
                .starts_with(r#"{"t":"disconnect","conn":"binance.ws.1","#),
            "{text}"
        );
    }

    #[test]
    fn unknown_and_disabled_feeds() {
        let mut cfg = Config::default();
        let err = select_feeds(&cfg, &["nope".into()]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        cfg.feeds.named("binance").enabled = false;
        assert!(matches!(select_feeds(&cfg, &[]), Err(RecordError::NoFeeds)));
        let named = select_feeds(&cfg, &["binance".into()]).unwrap();
        assert_eq!(named.len(), 1);
    }
}
