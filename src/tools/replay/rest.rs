//! `ticklake replay --rest`: the venue's public REST trade history, served
//! on the replay's own port and built from the capture's own trades, so a
//! feed can fill a gap in the trade ids offline; and the faults tests
//! inject (`--cut`, `--rest-gone`, `--rest-status`).
//!
//! A connection whose request head asks for `Upgrade: websocket` goes on
//! to the WebSocket handshake as before; any other HTTP request is answered
//! here, one request per connection (`Connection: close`).
//!
//! The protocol a capture speaks (`--rest-protocol`, else guessed: the
//! protocol whose parser reads the most of its first trade frames) decides
//! the endpoints. Trades are read with the project's own parsers, so the
//! ids, sides and times served are those the feed makes of the frames:
//!
//! - Binance: `GET /api/v3/aggTrades` (`aggTrade` stream), `GET
//!   /api/v3/historicalTrades` and `GET /api/v3/trades` (`trade` stream);
//! - Kraken (v2): `GET /0/public/Trades`. Kraken v1 trades have no ids, so
//!   a v1 capture serves no endpoint and cannot be cut;
//! - Coinbase Exchange: `GET /products/<ID>/trades`;
//! - Coinbase Advanced: `GET /api/v3/brokerage/market/products/<ID>/ticker`
//!   (and the same without `market/`).
//!
//! Times follow `--retime`: the whole capture is indexed once with its
//! recorded times, and each answer adds the shift of the pass that started
//! last (the live timeline's, or the newest client's), which is the shift
//! the WebSocket is playing with. So REST also knows the trades the
//! timeline has not played yet, as a venue would not; a gap is always
//! behind the stream, so filling one never meets them.
//!
//! `--cut` leaves trades out of the WebSocket stream by dropping the frames
//! that hold them: a frame with several trades (Kraken v2, Coinbase
//! Advanced) goes whole, so its other trades are missing from the stream
//! too (REST still has them all); how many is logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tracing::{debug, info, warn};

use crate::config::ProtocolKind;
use crate::exchanges::{Frame, ParseCtx, Protocol};
use crate::instruments::{Instruments, SymbolRule};
use crate::model::{Dec8, Side, TradeV2};
use crate::tools::capture::CapturedFrame;

mod venues;

/// A request head longer than this is left to the WebSocket handshake,
/// which refuses it.
const MAX_HEAD: usize = 16 * 1024;
/// `peek` returns at once while unread bytes wait, so a head that arrives
/// in pieces is peeked again after this pause, not in a busy loop.
const PEEK_PAUSE: Duration = Duration::from_millis(5);
/// Reading the head, writing the answer, and waiting for the client to
/// close after it.
const HTTP_IO_TIMEOUT: Duration = Duration::from_secs(5);
const LINGER: Duration = Duration::from_secs(1);
/// What a client may still send after its request is drained, at most.
const MAX_DRAIN: usize = 64 * 1024;
/// Trade frames read to guess a capture's protocol.
const GUESS_FRAMES: usize = 64;

/// A trade id sequence of a venue: Binance numbers its `trade` and
/// `aggTrade` streams apart; the others have only `trade`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdSpace {
    Trade,
    AggTrade,
}

impl IdSpace {
    pub fn as_str(self) -> &'static str {
        match self {
            IdSpace::Trade => "trade",
            IdSpace::AggTrade => "aggTrade",
        }
    }

    /// As the parsers record it: the `stream` of the vendor data.
    fn of(trade: &TradeV2) -> Self {
        let stream = trade.vendor_data.as_ref().and_then(|v| v.get("stream"));
        match stream.map(String::as_str) {
            Some("aggTrade") => IdSpace::AggTrade,
            _ => IdSpace::Trade,
        }
    }
}

/// `SYMBOL:FROM-TO[:SPACE]`: the trades of one symbol and id space with
/// ids `FROM..=TO` (`SYMBOL:ID` is one trade).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeRange {
    /// As the venue writes it in frames (`BTCUSDT`, `BTC/USD`, `BTC-USD`);
    /// matched without regard to ASCII case.
    pub symbol: String,
    pub from: i64,
    pub to: i64,
    pub space: IdSpace,
}

#[derive(Debug, thiserror::Error)]
pub enum RestArgError {
    #[error("expected SYMBOL:FROM-TO[:SPACE], got {0:?}")]
    Form(String),
    #[error("{0:?} is not an id range FROM-TO of non-negative integers with FROM <= TO")]
    Range(String),
    #[error("id space {0:?}: expected trade or aggTrade")]
    Space(String),
    #[error("protocol {0:?}: expected binance, kraken, coinbase or coinbase_exchange")]
    Protocol(String),
}

impl TradeRange {
    fn holds(&self, symbol: &str, space: IdSpace, id: i64) -> bool {
        self.space == space
            && (self.from..=self.to).contains(&id)
            && self.symbol.eq_ignore_ascii_case(symbol)
    }
}

impl FromStr for TradeRange {
    type Err = RestArgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let (symbol, range, space) = match parts[..] {
            [symbol, range] => (symbol, range, IdSpace::Trade),
            [symbol, range, space] => {
                let space = match space.to_ascii_lowercase().as_str() {
                    "trade" => IdSpace::Trade,
                    "aggtrade" => IdSpace::AggTrade,
                    _ => return Err(RestArgError::Space(space.to_string())),
                };
                (symbol, range, space)
            }
            _ => return Err(RestArgError::Form(s.to_string())),
        };
        if symbol.trim().is_empty() {
            return Err(RestArgError::Form(s.to_string()));
        }
        let (from, to) = range.split_once('-').unwrap_or((range, range));
        match (digits(from.trim()), digits(to.trim())) {
            (Some(from), Some(to)) if from <= to => Ok(Self {
                symbol: symbol.trim().to_string(),
                from,
                to,
                space,
            }),
            _ => Err(RestArgError::Range(range.to_string())),
        }
    }
}

/// `--rest-protocol`: the protocols whose trades have ids.
pub fn parse_rest_protocol(s: &str) -> Result<ProtocolKind, RestArgError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "binance" => Ok(ProtocolKind::Binance),
        "kraken" => Ok(ProtocolKind::Kraken),
        "coinbase" => Ok(ProtocolKind::Coinbase),
        "coinbase_exchange" => Ok(ProtocolKind::CoinbaseExchange),
        _ => Err(RestArgError::Protocol(s.to_string())),
    }
}

/// REST history and injected faults of `ticklake replay`, for every server
/// of the process.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct RestOptions {
    /// Also answer plain HTTP on the same port with the venue's REST trade
    /// history, built from the capture's trades.
    #[arg(long)]
    pub rest: bool,
    /// The protocol the captures speak (binance, kraken, coinbase,
    /// coinbase_exchange); it decides the REST endpoints and how --cut reads
    /// trade ids. Default: guessed from the frames.
    #[arg(long, value_name = "PROTOCOL", value_parser = parse_rest_protocol)]
    pub rest_protocol: Option<ProtocolKind>,
    /// Leave the trades with ids FROM..=TO of SYMBOL (id space trade, or
    /// aggTrade) out of the WebSocket stream, dropping the frames that hold
    /// them; REST still serves them. Repeatable.
    #[arg(long, value_name = "SYMBOL:FROM-TO[:SPACE]")]
    pub cut: Vec<TradeRange>,
    /// Leave these trades out of REST answers too, as a venue that pruned
    /// its history. Repeatable.
    #[arg(long, value_name = "SYMBOL:FROM-TO[:SPACE]", requires = "rest")]
    pub rest_gone: Vec<TradeRange>,
    /// Answer every REST request with this HTTP status (429 adds
    /// `Retry-After: 1`).
    #[arg(long, value_name = "CODE", requires = "rest",
          value_parser = clap::value_parser!(u16).range(100..=599))]
    pub rest_status: Option<u16>,
}

impl RestOptions {
    fn is_off(&self) -> bool {
        !self.rest && self.cut.is_empty()
    }
}

/// One trade of the history, with its recorded exchange time.
#[derive(Debug, Clone, PartialEq)]
struct Fill {
    id: i64,
    price: Dec8,
    qty: Dec8,
    time_us: i64,
    side: Side,
    /// Binance aggTrade: its first and last trade ids.
    first_last: Option<(i64, i64)>,
    /// Kraken: the taker's order was a limit order.
    limit: bool,
}

impl Fill {
    fn of(trade: &TradeV2, id: i64) -> Self {
        let vendor_id = |key: &str| {
            let value = trade.vendor_data.as_ref()?.get(key)?;
            value.parse::<i64>().ok()
        };
        Self {
            id,
            price: trade.price,
            qty: trade.quantity,
            time_us: trade.timestamp_us,
            side: trade.side,
            first_last: vendor_id("first_trade_id").zip(vendor_id("last_trade_id")),
            limit: trade.trade_conditions.first().is_some_and(|c| c == "limit"),
        }
    }

    /// Exchange time in µs as played with `shift_ms`.
    fn time_us(&self, shift_ms: i64) -> i64 {
        self.time_us.saturating_add(shift_ms.saturating_mul(1000))
    }

    fn time_ns(&self, shift_ms: i64) -> i128 {
        i128::from(self.time_us(shift_ms)) * 1000
    }
}

/// A protocol's parser with what it needs to read a frame.
struct Reader {
    protocol: Box<dyn Protocol>,
    exchange: &'static str,
    rule: SymbolRule,
}

impl Reader {
    fn new(kind: ProtocolKind, instruments: &Instruments) -> Option<Self> {
        let exchange = match kind {
            ProtocolKind::Binance => "BINANCE",
            ProtocolKind::Kraken | ProtocolKind::KrakenV1 => "KRAKEN",
            ProtocolKind::Coinbase | ProtocolKind::CoinbaseExchange => "COINBASE",
        };
        let rule = instruments.symbol_rule(exchange).ok()?.clone();
        Some(Self {
            protocol: crate::exchanges::protocol(kind),
            exchange,
            rule,
        })
    }

    /// The frame's trades into `out` (cleared first); none for a frame that
    /// is not trades or does not parse.
    fn trades(&self, text: &str, out: &mut Vec<TradeV2>) -> bool {
        out.clear();
        let ctx = ParseCtx {
            exchange: self.exchange,
            symbols: &self.rule,
            received_us: 0,
        };
        matches!(self.protocol.parse(text, &ctx, out), Ok(Frame::Trades(_)))
    }
}

/// The protocol whose parser reads the most of the capture's first trade
/// frames; `None` when no frame reads as trades.
fn guess_protocol(frames: &[CapturedFrame], instruments: &Instruments) -> Option<ProtocolKind> {
    let readers: Vec<(ProtocolKind, Reader)> = ProtocolKind::ALL
        .into_iter()
        .filter_map(|kind| Some((kind, Reader::new(kind, instruments)?)))
        .collect();
    let mut votes = vec![0usize; readers.len()];
    let mut out = Vec::new();
    let mut counted = 0;
    for frame in frames {
        if let Some(i) = readers
            .iter()
            .position(|(_, r)| r.trades(&frame.data, &mut out))
        {
            votes[i] += 1;
            counted += 1;
            if counted >= GUESS_FRAMES {
                break;
            }
        }
    }
    let (best, &count) = votes.iter().enumerate().max_by_key(|&(_, n)| *n)?;
    (count > 0).then(|| readers[best].0)
}

/// What `prepare` made of a capture.
pub(super) struct Prepared {
    /// The REST service, with `--rest`.
    pub(super) rest: Option<RestService>,
    /// The frames left to play, when `--cut` dropped any.
    pub(super) frames: Option<Vec<CapturedFrame>>,
}

/// Reads the capture's trades for REST and drops the frames `--cut` names.
pub(super) fn prepare(frames: &[CapturedFrame], opts: &RestOptions) -> Prepared {
    if opts.is_off() {
        return Prepared {
            rest: None,
            frames: None,
        };
    }
    let instruments = match Instruments::builtin() {
        Ok(instruments) => Some(instruments),
        Err(e) => {
            warn!(
                error = %e,
                "replay: no symbol rules; REST serves nothing and --cut cuts nothing"
            );
            None
        }
    };
    let kind = opts
        .rest_protocol
        .or_else(|| guess_protocol(frames, instruments.as_ref()?));
    let reader = match (kind, &instruments) {
        (Some(ProtocolKind::KrakenV1), _) => {
            warn!(
                "replay: Kraken v1 trades have no ids; REST serves nothing and --cut cuts nothing"
            );
            None
        }
        (Some(kind), Some(instruments)) => Reader::new(kind, instruments),
        (None, _) => {
            warn!(
                "replay: no frame reads as trades of a known protocol (say --rest-protocol); \
                 REST serves nothing and --cut cuts nothing"
            );
            None
        }
        _ => None,
    };
    let mut series: HashMap<(String, IdSpace), Vec<Fill>> = HashMap::new();
    let mut keep = Vec::with_capacity(frames.len());
    let mut cut_trades = vec![0usize; opts.cut.len()];
    let mut collateral = 0usize;
    let mut out = Vec::new();
    for frame in frames {
        let Some(reader) = &reader else { break };
        if !reader.trades(&frame.data, &mut out) {
            keep.push(true);
            continue;
        }
        let mut cut = false;
        let mut uncut = 0;
        for trade in &out {
            let Some(id) = trade.source_sequence else {
                continue;
            };
            let space = IdSpace::of(trade);
            let mut hit = false;
            for (n, range) in cut_trades.iter_mut().zip(&opts.cut) {
                if range.holds(&trade.symbol, space, id) {
                    *n += 1;
                    hit = true;
                }
            }
            cut |= hit;
            uncut += usize::from(!hit);
            series
                .entry((trade.symbol.clone(), space))
                .or_default()
                .push(Fill::of(trade, id));
        }
        if cut {
            collateral += uncut;
        }
        keep.push(!cut);
    }
    for series in series.values_mut() {
        // Ids ascending, each once: the first time it was seen wins (a
        // reconnect's snapshot repeats trades already played).
        series.sort_by_key(|fill| fill.id);
        series.dedup_by_key(|fill| fill.id);
    }
    for (range, n) in opts.cut.iter().zip(&cut_trades) {
        if *n == 0 {
            warn!(
                symbol = %range.symbol,
                from = range.from,
                to = range.to,
                space = range.space.as_str(),
                "--cut matches no trade of the capture"
            );
        }
    }
    let dropped = keep.iter().filter(|k| !**k).count();
    let frames = (dropped > 0).then(|| {
        info!(
            frames = dropped,
            trades = cut_trades.iter().sum::<usize>(),
            other_trades_in_those_frames = collateral,
            "--cut: frames left out of the WebSocket stream"
        );
        frames
            .iter()
            .zip(keep.iter().chain(std::iter::repeat(&true)))
            .filter(|(_, keep)| **keep)
            .map(|(frame, _)| frame.clone())
            .collect()
    });
    let rest = opts.rest.then(|| {
        let kind = reader.as_ref().map(|r| r.protocol.kind());
        info!(
            protocol = kind.map_or("none", ProtocolKind::as_str),
            series = series.len(),
            trades = series.values().map(Vec::len).sum::<usize>(),
            "replay serves REST trade history"
        );
        RestService {
            kind,
            series,
            gone: opts.rest_gone.clone(),
            status: opts.rest_status,
            served: AtomicU64::new(0),
        }
    });
    Prepared { rest, frames }
}

/// The REST side of one replay server.
pub(super) struct RestService {
    /// `None`: no endpoint is served.
    kind: Option<ProtocolKind>,
    /// Every trade of the capture by symbol and id space, ids ascending.
    series: HashMap<(String, IdSpace), Vec<Fill>>,
    gone: Vec<TradeRange>,
    status: Option<u16>,
    served: AtomicU64,
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) body: String,
}

impl Reply {
    fn json(status: u16, body: impl ToString) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    fn ok(body: &impl Serialize) -> Self {
        // Serializing plain structs, strings and numbers cannot fail.
        Self::json(200, serde_json::to_string(body).unwrap_or_default())
    }

    fn bytes(&self) -> Vec<u8> {
        let reason = StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Status");
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

/// A request's path and query parameters (decoded; the first of a repeated
/// name counts).
struct Query {
    path: String,
    params: Vec<(String, String)>,
}

impl Query {
    fn parse(target: &str) -> Option<Self> {
        let url = if target.starts_with('/') {
            url::Url::parse(&format!("http://replay{target}")).ok()?
        } else {
            url::Url::parse(target).ok()?
        };
        Some(Self {
            path: url.path().to_string(),
            params: url
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Trades of one series, ids ascending (a page before it is cut to size).
type Page<'a> = Vec<&'a Fill>;

impl RestService {
    /// REST requests answered so far.
    pub(super) fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The answer to one request, with trade times as played with `shift_ms`.
    pub(super) fn answer(&self, method: &str, target: &str, shift_ms: i64) -> Reply {
        if let Some(status) = self.status {
            return self.forced(status);
        }
        if method != "GET" {
            return Reply::json(
                405,
                json!({
                    "error": "method not allowed",
                    "message": format!("ticklake replay answers GET only, not {method}"),
                }),
            );
        }
        let Some(query) = Query::parse(target) else {
            return Reply::json(
                400,
                json!({"error": "bad request", "message": "unreadable request target"}),
            );
        };
        let reply = match self.kind {
            Some(ProtocolKind::Binance) => self.binance(&query, shift_ms),
            Some(ProtocolKind::Kraken) => self.kraken(&query, shift_ms),
            Some(ProtocolKind::CoinbaseExchange) => self.coinbase_exchange(&query, shift_ms),
            Some(ProtocolKind::Coinbase) => self.coinbase_advanced(&query, shift_ms),
            Some(ProtocolKind::KrakenV1) | None => None,
        };
        reply.unwrap_or_else(|| {
            let message = format!("ticklake replay serves no {}", query.path);
            Reply::json(404, json!({"error": "not found", "message": message}))
        })
    }

    /// `--rest-status`: the venue's own body for the status where it has one.
    fn forced(&self, status: u16) -> Reply {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let limited = matches!(status, 418 | 429);
        let body = match self.kind {
            Some(ProtocolKind::Kraken | ProtocolKind::KrakenV1) if limited => {
                json!({"error": ["EGeneral:Too many requests"]})
            }
            Some(ProtocolKind::Kraken | ProtocolKind::KrakenV1) => {
                json!({"error": ["EService:Unavailable"]})
            }
            Some(ProtocolKind::CoinbaseExchange) => json!({"message": reason}),
            Some(ProtocolKind::Coinbase) => {
                json!({"error": reason, "error_details": reason, "message": reason})
            }
            _ if limited => json!({"code": -1003, "msg": "Too many requests"}),
            _ => json!({"code": -1000, "msg": reason}),
        };
        let mut reply = Reply::json(status, body);
        if status == 429 {
            reply.headers.push(("Retry-After", "1".into()));
        }
        reply
    }

    /// The series of a symbol (as the venue writes it, or as `same` says)
    /// and space, without the `--rest-gone` trades; `None` when the symbol
    /// has no trades in any space.
    fn series<'a>(
        &'a self,
        same: impl Fn(&str) -> bool,
        space: IdSpace,
    ) -> Option<(&'a str, Page<'a>)> {
        let mut known = None;
        let mut page = Vec::new();
        for ((symbol, s), fills) in &self.series {
            if !same(symbol) {
                continue;
            }
            known = Some(symbol.as_str());
            if *s == space {
                page = fills
                    .iter()
                    .filter(|f| !self.gone.iter().any(|g| g.holds(symbol, space, f.id)))
                    .collect();
            }
        }
        Some((known?, page))
    }
}

/// A non-negative integer written in plain digits.
fn digits(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// What a connection opens with.
pub(super) enum Opening {
    /// A WebSocket upgrade, or something only the handshake can refuse.
    WebSocket,
    /// A plain HTTP request whose head is this many bytes.
    Http(usize),
    /// The client went away first.
    Closed,
}

/// Peeks at the request head, leaving it unread for the handshake.
pub(super) async fn opening(tcp: &TcpStream) -> Opening {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut seen = 0;
    loop {
        let n = match tcp.peek(&mut buf).await {
            Ok(0) | Err(_) => return Opening::Closed,
            Ok(n) => n,
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..n]) {
            Ok(httparse::Status::Complete(len)) => {
                let upgrade = request.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("upgrade")
                        && String::from_utf8_lossy(h.value)
                            .to_ascii_lowercase()
                            .contains("websocket")
                });
                return if upgrade {
                    Opening::WebSocket
                } else {
                    Opening::Http(len)
                };
            }
            Ok(httparse::Status::Partial) if n < buf.len() => {}
            _ => return Opening::WebSocket,
        }
        if n == seen {
            sleep(PEEK_PAUSE).await;
        }
        seen = n;
    }
}

/// Answers the HTTP request whose head (`head_len` bytes) waits on `tcp`,
/// then closes the connection.
pub(super) async fn serve_http(
    mut tcp: TcpStream,
    peer: SocketAddr,
    head_len: usize,
    rest: &RestService,
    shift_ms: i64,
) {
    let mut head = vec![0u8; head_len];
    if !matches!(
        timeout(HTTP_IO_TIMEOUT, tcp.read_exact(&mut head)).await,
        Ok(Ok(_))
    ) {
        debug!(client = %peer, "http request cut short");
        return;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let (method, target) = match request.parse(&head) {
        Ok(httparse::Status::Complete(_)) => (
            request.method.unwrap_or("GET").to_string(),
            request.path.unwrap_or("/").to_string(),
        ),
        _ => (String::new(), String::new()),
    };
    let reply = rest.answer(&method, &target, shift_ms);
    let served = rest.served.fetch_add(1, Ordering::Relaxed) + 1;
    info!(
        client = %peer,
        method = %method,
        target = %target,
        status = reply.status,
        rest_requests = served,
        "rest request served"
    );
    let written = timeout(HTTP_IO_TIMEOUT, async {
        tcp.write_all(&reply.bytes()).await?;
        tcp.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        debug!(client = %peer, "http answer not delivered");
        return;
    }
    // Closing with unread bytes would reset the connection, and a reset can
    // destroy the answer before the client reads it: wait for its close.
    let _ = timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while let Ok(n) = tcp.read(&mut sink).await {
            drained += n;
            if n == 0 || drained > MAX_DRAIN {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use futures::StreamExt;
    use serde_json::Value;
    use tokio_tungstenite::tungstenite::Message;

    use super::*;
    use crate::tools::replay::{Pacing, ReplayOptions, ReplayServer};

    fn frames(texts: impl IntoIterator<Item = String>) -> Vec<CapturedFrame> {
        texts
            .into_iter()
            .enumerate()
            .map(|(i, data)| CapturedFrame {
                ts: Some(1_700_000_000.0 + i as f64 * 0.01),
                data,
            })
            .collect()
    }

    /// Binance aggTrade `id` at `1_617_566_591_000 + id` ms; even ids are
    /// buyer-maker.
    fn agg(id: i64) -> String {
        format!(
            r#"{{"stream":"btcusdt@aggTrade","data":{{"e":"aggTrade","E":{t},"s":"BTCUSDT","a":{id},"p":"58001.03000000","q":"0.08620500","f":{f},"l":{l},"T":{t},"m":{m},"M":true}}}}"#,
            t = 1_617_566_591_000 + id,
            f = id * 10,
            l = id * 10 + 2,
            m = id % 2 == 0
        )
    }

    fn trade(id: i64) -> String {
        format!(
            r#"{{"e":"trade","E":1499865549591,"s":"BTCUSDT","t":{id},"p":"4.00000100","q":"12.00000000","T":1499865549590,"m":true,"M":true}}"#
        )
    }

    fn options(rest: bool) -> RestOptions {
        RestOptions {
            rest,
            ..RestOptions::default()
        }
    }

    fn service(frames: &[CapturedFrame], opts: &RestOptions) -> RestService {
        prepare(frames, opts).rest.expect("rest is on")
    }

    /// Status and JSON body of a GET.
    fn get(rest: &RestService, target: &str) -> (u16, Value) {
        let reply = rest.answer("GET", target, 0);
        let body = serde_json::from_str(&reply.body).expect("json body");
        (reply.status, body)
    }

    fn ids(body: &Value, key: &str) -> Vec<i64> {
        body.as_array()
            .expect("array")
            .iter()
            .map(|t| t[key].as_i64().expect("id"))
            .collect()
    }

    #[test]
    fn trade_ranges_and_protocols_parse() {
        let r: TradeRange = "BTCUSDT:100-120:aggTrade".parse().unwrap();
        assert_eq!(
            (r.symbol.as_str(), r.from, r.to, r.space),
            ("BTCUSDT", 100, 120, IdSpace::AggTrade)
        );
        let r: TradeRange = "BTC-USD:7".parse().unwrap();
        assert_eq!(
            (r.symbol.as_str(), r.from, r.to, r.space),
            ("BTC-USD", 7, 7, IdSpace::Trade)
        );
        let r: TradeRange = "BTC/USD:1-2:trade".parse().unwrap();
        assert_eq!(r.symbol, "BTC/USD");
        for bad in [
            "BTCUSDT",
            "BTCUSDT:5-1",
            "BTCUSDT:a-b",
            ":1-2",
            "X:1-2:book",
            "X:1-2:trade:x",
            "X:-1-2",
        ] {
            assert!(bad.parse::<TradeRange>().is_err(), "{bad}");
        }
        assert_eq!(
            parse_rest_protocol("coinbase_exchange").unwrap(),
            ProtocolKind::CoinbaseExchange
        );
        assert!(parse_rest_protocol("kraken_v1").is_err());
    }

    #[test]
    fn protocols_are_guessed_from_the_fixture_captures() {
        let instruments = Instruments::builtin().unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/captures");
        for (file, kind) in [
            ("BINANCE-ee25be.0.txt", ProtocolKind::Binance),
            ("COINBASE.ws.28.0.txt", ProtocolKind::CoinbaseExchange),
            ("KRAKEN.ws.48.0.txt", ProtocolKind::KrakenV1),
        ] {
            let (_, frames) = crate::tools::capture::read_capture(&dir.join(file)).unwrap();
            assert_eq!(guess_protocol(&frames, &instruments), Some(kind), "{file}");
        }
        assert_eq!(
            guess_protocol(&frames([r#"{"i":1}"#.to_string()]), &instruments),
            None
        );
    }

    #[test]
    fn binance_agg_trades_page_from_id_or_newest() {
        let rest = service(&frames((100..=110).map(agg)), &options(true));
        let (status, body) = get(&rest, "/api/v3/aggTrades?symbol=BTCUSDT&fromId=103&limit=3");
        assert_eq!(status, 200);
        assert_eq!(ids(&body, "a"), vec![103, 104, 105]);
        assert_eq!(
            body[0],
            json!({"a":103,"p":"58001.03000000","q":"0.08620500","f":1030,"l":1032,"T":1_617_566_591_103_i64,"m":false,"M":true})
        );
        assert_eq!(body[1]["m"], true, "buyer-maker as the frame said");
        let reply = rest.answer(
            "GET",
            "/api/v3/aggTrades?symbol=BTCUSDT&fromId=103&limit=1",
            0,
        );
        assert!(
            reply.body.starts_with(r#"[{"a":103,"p":"#),
            "venue's key order: {}",
            reply.body
        );
        // Without fromId: the newest; the default limit is 500, the most 1000.
        assert_eq!(
            ids(
                &get(&rest, "/api/v3/aggTrades?symbol=BTCUSDT&limit=2").1,
                "a"
            ),
            vec![109, 110]
        );
        assert_eq!(
            get(&rest, "/api/v3/aggTrades?symbol=BTCUSDT")
                .1
                .as_array()
                .unwrap()
                .len(),
            11
        );
        assert_eq!(
            ids(
                &get(
                    &rest,
                    "/api/v3/aggTrades?symbol=BTCUSDT&fromId=109&limit=5000"
                )
                .1,
                "a"
            ),
            vec![109, 110]
        );
        assert_eq!(
            get(&rest, "/api/v3/aggTrades?symbol=BTCUSDT&fromId=111").1,
            json!([])
        );
        // The time window (inclusive), aggTrades only.
        let window =
            "/api/v3/aggTrades?symbol=BTCUSDT&startTime=1617566591104&endTime=1617566591105";
        assert_eq!(ids(&get(&rest, window).1, "a"), vec![104, 105]);
        // The trade stream was not recorded: known symbol, empty history.
        assert_eq!(
            get(&rest, "/api/v3/historicalTrades?symbol=BTCUSDT").1,
            json!([])
        );
        for (target, code) in [
            ("/api/v3/aggTrades", -1102),
            ("/api/v3/aggTrades?symbol=btcusdt", -1100),
            ("/api/v3/aggTrades?symbol=ETHUSDT", -1121),
            ("/api/v3/aggTrades?symbol=BTCUSDT&fromId=-1", -1100),
            ("/api/v3/aggTrades?symbol=BTCUSDT&limit=ten", -1100),
            (
                "/api/v3/aggTrades?symbol=BTCUSDT&fromId=1&startTime=2",
                -1128,
            ),
        ] {
            let (status, body) = get(&rest, target);
            assert_eq!(
                (status, body["code"].as_i64()),
                (400, Some(code)),
                "{target}: {body}"
            );
            assert!(body["msg"].is_string());
        }
        assert_eq!(get(&rest, "/api/v3/depth?symbol=BTCUSDT").0, 404);
        assert_eq!(
            rest.answer("POST", "/api/v3/aggTrades?symbol=BTCUSDT", 0)
                .status,
            405
        );
    }

    #[test]
    fn binance_historical_trades_invert_the_side_back() {
        let rest = service(&frames((28457..28460).map(trade)), &options(true));
        let (status, body) = get(
            &rest,
            "/api/v3/historicalTrades?symbol=BTCUSDT&fromId=28457&limit=1",
        );
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!([{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.00001200","time":1499865549590_i64,"isBuyerMaker":true,"isBestMatch":true}])
        );
        assert_eq!(
            ids(&get(&rest, "/api/v3/trades?symbol=BTCUSDT&limit=2").1, "id"),
            vec![28458, 28459]
        );
        // `/api/v3/trades` has no fromId: the newest whatever it says.
        assert_eq!(
            ids(
                &get(&rest, "/api/v3/trades?symbol=BTCUSDT&fromId=1&limit=1").1,
                "id"
            ),
            vec![28459]
        );
    }

    #[test]
    fn cut_frames_leave_the_stream_and_gone_ones_leave_rest() {
        let all = frames((100..=110).map(agg));
        let mut opts = options(true);
        opts.cut = vec![
            "BTCUSDT:103-104:aggTrade".parse().unwrap(),
            "BTCUSDT:105".parse().unwrap(),
        ];
        opts.rest_gone = vec!["btcusdt:108-109:aggTrade".parse().unwrap()];
        let prepared = prepare(&all, &opts);
        let kept: Vec<i64> = prepared
            .frames
            .expect("frames were cut")
            .iter()
            .map(|f| {
                serde_json::from_str::<Value>(&f.data).unwrap()["data"]["a"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        // `BTCUSDT:105` is the trade id space, which an aggTrade capture lacks.
        assert_eq!(kept, vec![100, 101, 102, 105, 106, 107, 108, 109, 110]);
        let rest = prepared.rest.unwrap();
        let (_, body) = get(
            &rest,
            "/api/v3/aggTrades?symbol=BTCUSDT&fromId=102&limit=10",
        );
        assert_eq!(ids(&body, "a"), vec![102, 103, 104, 105, 106, 107, 110]);
        // A gone range right at fromId: the page starts after it.
        let (_, body) = get(&rest, "/api/v3/aggTrades?symbol=BTCUSDT&fromId=108&limit=2");
        assert_eq!(ids(&body, "a"), vec![110]);

        // Cutting works without --rest, and nothing is prepared without both.
        let cut_only = RestOptions {
            cut: opts.cut.clone(),
            ..RestOptions::default()
        };
        let prepared = prepare(&all, &cut_only);
        assert!(prepared.rest.is_none());
        assert_eq!(prepared.frames.map(|f| f.len()), Some(9));
        let nothing = prepare(&all, &RestOptions::default());
        assert!(nothing.rest.is_none() && nothing.frames.is_none());
    }

    fn kraken(trades: &[(i64, &str, &str, &str)]) -> String {
        let data: Vec<String> = trades
            .iter()
            .map(|(id, side, ord, ts)| {
                format!(
                    r#"{{"symbol":"BTC/USD","side":"{side}","price":30243.4,"qty":0.34507674,"ord_type":"{ord}","trade_id":{id},"timestamp":"{ts}"}}"#
                )
            })
            .collect();
        format!(
            r#"{{"channel":"trade","type":"update","data":[{}]}}"#,
            data.join(",")
        )
    }

    #[test]
    fn kraken_trades_after_since_with_the_pair_as_asked() {
        let capture = frames([
            kraken(&[(121466, "buy", "limit", "2021-03-25T09:13:37.000000Z")]),
            kraken(&[
                (121467, "sell", "market", "2021-03-25T09:13:38.759219Z"),
                (121468, "buy", "market", "2021-03-25T09:13:39.000001Z"),
            ]),
            kraken(&[(121469, "buy", "market", "2021-03-25T09:13:40.5Z")]),
        ]);
        let mut opts = options(true);
        opts.cut = vec!["BTC/USD:121468".parse().unwrap()];
        let prepared = prepare(&capture, &opts);
        // The frame that holds the cut trade goes whole, 121467 with it.
        assert_eq!(prepared.frames.as_ref().map(Vec::len), Some(2));
        let rest = prepared.rest.unwrap();

        let reply = rest.answer(
            "GET",
            "/0/public/Trades?pair=XBTUSD&since=1616663617&count=2",
            0,
        );
        assert_eq!(
            reply.body,
            r#"{"error":[],"result":{"XBTUSD":[["30243.40000000","0.34507674",1616663618.759219,"s","m","",121467],["30243.40000000","0.34507674",1616663619.000001,"b","m","",121468]],"last":"1616663619000001000"}}"#
        );
        // The cursor `last` pages on; nanoseconds and fractional seconds both.
        let (_, body) = get(
            &rest,
            "/0/public/Trades?pair=BTC%2FUSD&since=1616663619000001000",
        );
        assert_eq!(body["result"]["BTC/USD"][0][6], 121469);
        assert_eq!(body["result"]["BTC/USD"].as_array().unwrap().len(), 1);
        let (_, body) = get(
            &rest,
            "/0/public/Trades?pair=btcusd&since=1616663618.759219",
        );
        assert_eq!(body["result"]["btcusd"][0][6], 121468);
        // Without since: the newest `count`; limit orders are `l`.
        let (_, body) = get(&rest, "/0/public/Trades?pair=XBT/USD&count=4");
        assert_eq!(
            body["result"]["XBT/USD"][0],
            json!([
                "30243.40000000",
                "0.34507674",
                1616663617.0,
                "b",
                "l",
                "",
                121466
            ])
        );
        assert_eq!(body["result"]["last"], "1616663620500000000");
        let (_, body) = get(&rest, "/0/public/Trades?pair=XBTUSD&since=1616663999");
        assert_eq!(body["result"]["XBTUSD"], json!([]));
        assert_eq!(body["result"]["last"], "1616663999000000000");
        for (target, error) in [
            ("/0/public/Trades", "EGeneral:Invalid arguments"),
            (
                "/0/public/Trades?pair=XBTUSD&since=yesterday",
                "EGeneral:Invalid arguments",
            ),
            (
                "/0/public/Trades?pair=XBTUSD&count=-1",
                "EGeneral:Invalid arguments",
            ),
            ("/0/public/Trades?pair=ETHUSD", "EQuery:Unknown asset pair"),
        ] {
            assert_eq!(
                get(&rest, target),
                (200, json!({"error": [error]})),
                "{target}"
            );
        }
    }

    fn coinbase_match(id: i64, side: &str) -> String {
        format!(
            r#"{{"type":"match","trade_id":{id},"sequence":{id}0,"time":"2024-01-01T00:00:{id:02}.123456Z","product_id":"BTC-USD","size":"0.01","price":"10","side":"{side}"}}"#
        )
    }

    #[test]
    fn coinbase_exchange_pages_older_after_a_trade_id() {
        let rest = service(
            &frames((1..=9).map(|id| coinbase_match(id, if id == 8 { "sell" } else { "buy" }))),
            &options(true),
        );
        let reply = rest.answer("GET", "/products/BTC-USD/trades?limit=3&after=9", 0);
        assert_eq!(reply.status, 200);
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(ids(&body, "trade_id"), vec![8, 7, 6]);
        // The maker's side, as the frame wrote it.
        assert_eq!(
            body[0],
            json!({"time":"2024-01-01T00:00:08.123456Z","trade_id":8,"price":"10.00000000","size":"0.01000000","side":"sell"})
        );
        assert_eq!(body[1]["side"], "buy");
        assert!(
            reply.headers.contains(&("CB-AFTER", "6".into())),
            "{:?}",
            reply.headers
        );
        assert!(reply.headers.contains(&("CB-BEFORE", "8".into())));
        assert_eq!(
            ids(
                &get(&rest, "/products/BTC-USD/trades?limit=2").1,
                "trade_id"
            ),
            vec![9, 8]
        );
        assert_eq!(
            ids(
                &get(&rest, "/products/BTC-USD/trades?limit=2&after=3").1,
                "trade_id"
            ),
            vec![2, 1]
        );
        assert_eq!(
            ids(
                &get(&rest, "/products/BTC-USD/trades?limit=2&before=3").1,
                "trade_id"
            ),
            vec![5, 4]
        );
        assert_eq!(
            ids(&get(&rest, "/products/BTC-USD/trades").1, "trade_id").len(),
            9
        );
        let empty = rest.answer("GET", "/products/BTC-USD/trades?after=1", 0);
        assert_eq!((empty.body.as_str(), empty.headers.len()), ("[]", 0));
        assert_eq!(
            get(&rest, "/products/ETH-USD/trades"),
            (404, json!({"message": "NotFound"}))
        );
        assert_eq!(get(&rest, "/products/BTC-USD/trades?after=x").0, 400);
    }

    fn advanced(id: i64, second: i64, side: &str) -> String {
        format!(
            r#"{{"channel":"market_trades","client_id":"","timestamp":"2021-05-31T09:59:59.5Z","sequence_num":{id},"events":[{{"type":"update","trades":[{{"trade_id":"{id}","product_id":"BTC-USD","price":"140.91","size":"4","side":"{side}","time":"2021-05-31T10:00:{second:02}.000Z"}}]}}]}}"#
        )
    }

    #[test]
    fn coinbase_advanced_serves_a_time_window_newest_first() {
        // 2021-05-31T10:00:00Z is 1622455200.
        let rest = service(
            &frames((1..=6).map(|id| advanced(id, id * 10, if id == 5 { "SELL" } else { "BUY" }))),
            &options(true),
        );
        let (status, body) = get(
            &rest,
            "/api/v3/brokerage/market/products/BTC-USD/ticker?limit=10&start=1622455220&end=1622455250",
        );
        assert_eq!(status, 200);
        let trades = body["trades"].as_array().unwrap();
        let got: Vec<&str> = trades
            .iter()
            .map(|t| t["trade_id"].as_str().unwrap())
            .collect();
        assert_eq!(got, vec!["4", "3", "2"], "start inclusive, end exclusive");
        assert_eq!(
            trades[0],
            json!({"trade_id":"4","product_id":"BTC-USD","price":"140.91000000","size":"4.00000000","time":"2021-05-31T10:00:40.000000Z","side":"BUY","bid":"","ask":"","exchange":"coinbase"})
        );
        assert_eq!(
            (body["best_bid"].as_str(), body["best_ask"].as_str()),
            (Some(""), Some(""))
        );
        let (_, body) = get(&rest, "/api/v3/brokerage/products/BTC-USD/ticker?limit=2");
        let got: Vec<&str> = body["trades"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["trade_id"].as_str().unwrap())
            .collect();
        assert_eq!(got, vec!["6", "5"]);
        assert_eq!(body["trades"][1]["side"], "SELL");
        assert_eq!(
            get(&rest, "/api/v3/brokerage/market/products/BTC-USD/ticker").1["error"],
            "INVALID_ARGUMENT"
        );
        assert_eq!(
            get(
                &rest,
                "/api/v3/brokerage/market/products/BTC-USD/ticker?limit=1&start=x"
            )
            .0,
            400
        );
        assert_eq!(
            get(
                &rest,
                "/api/v3/brokerage/market/products/ETH-USD/ticker?limit=1"
            )
            .0,
            404
        );
    }

    #[test]
    fn forced_status_answers_every_request_and_shift_moves_times() {
        let capture = frames((100..=101).map(agg));
        let mut opts = options(true);
        opts.rest_status = Some(429);
        let rest = service(&capture, &opts);
        for target in ["/api/v3/aggTrades?symbol=BTCUSDT", "/nowhere"] {
            let reply = rest.answer("GET", target, 0);
            assert_eq!(reply.status, 429);
            assert_eq!(reply.headers, vec![("Retry-After", "1".to_string())]);
            assert_eq!(reply.body, r#"{"code":-1003,"msg":"Too many requests"}"#);
        }
        let bytes = String::from_utf8(rest.answer("GET", "/", 0).bytes()).unwrap();
        assert!(
            bytes.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{bytes}"
        );
        assert!(
            bytes.contains("Content-Length: 40\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{"),
            "{bytes}"
        );

        let rest = service(&capture, &options(true));
        let reply = rest.answer("GET", "/api/v3/aggTrades?symbol=BTCUSDT&limit=1", 60_000);
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body[0]["T"], 1_617_566_591_101_i64 + 60_000);
    }

    /// One real server on 127.0.0.1: HTTP and WebSocket on one port, the
    /// stream without the cut trades, REST with them, at the played times.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_port_serves_rest_and_websocket() {
        let mut opts = options(true);
        opts.cut = vec!["BTCUSDT:103-104:aggTrade".parse().unwrap()];
        let server = ReplayServer::bind_with_rest(
            "127.0.0.1:0".parse().unwrap(),
            ReplayOptions {
                frames: Arc::new(frames((100..=106).map(agg))),
                pacing: Pacing::AsFastAsPossible,
                looped: false,
                live: false,
                retime: true,
            },
            opts,
        )
        .await
        .expect("binds");
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let step = Duration::from_secs(10);

        let (mut ws, _) = timeout(
            step,
            tokio_tungstenite::connect_async(format!(
                "ws://{addr}/stream?streams=btcusdt@aggTrade"
            )),
        )
        .await
        .expect("connects in time")
        .expect("handshake");
        let mut played = Vec::new();
        while let Some(Ok(message)) = timeout(step, ws.next()).await.expect("in time") {
            match message {
                Message::Text(text) => played
                    .push(serde_json::from_str::<Value>(text.as_str()).unwrap()["data"].clone()),
                Message::Close(_) => break,
                _ => {}
            }
        }
        let played_ids: Vec<i64> = played.iter().map(|t| t["a"].as_i64().unwrap()).collect();
        assert_eq!(played_ids, vec![100, 101, 102, 105, 106]);

        let url = format!("http://{addr}/api/v3/aggTrades?symbol=BTCUSDT&fromId=102&limit=4");
        let missing = format!("http://{addr}/api/v3/nothing");
        let (status, body, not_found) = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut reply = agent.get(&url).call().expect("http answer");
            let status = reply.status().as_u16();
            let body: Value = reply.body_mut().read_json().expect("json");
            let not_found = agent
                .get(&missing)
                .call()
                .expect("http answer")
                .status()
                .as_u16();
            (status, body, not_found)
        })
        .await
        .expect("no panic");
        assert_eq!((status, not_found), (200, 404));
        assert_eq!(ids(&body, "a"), vec![102, 103, 104, 105]);
        // Retimed: REST gives the times the stream played.
        assert_eq!(body[0]["T"], played[2]["T"]);
        assert_eq!(body[3]["T"], played[3]["T"]);
        assert_ne!(body[0]["T"], 1_617_566_591_102_i64, "times follow --retime");

        // A head in two pieces is waited for; garbage goes to the handshake,
        // which refuses it, and the server serves on.
        let mut tcp = TcpStream::connect(addr).await.expect("connects");
        tcp.write_all(b"GET /api/v3/trades?symbol=BTCUSDT HTTP/1.1\r\nHost: x")
            .await
            .expect("writes");
        sleep(Duration::from_millis(50)).await;
        tcp.write_all(b"\r\n\r\n").await.expect("writes");
        let mut answer = String::new();
        timeout(step, tcp.read_to_string(&mut answer))
            .await
            .expect("in time")
            .expect("reads");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("Content-Type: application/json\r\n"));
        assert!(answer.ends_with("\r\n\r\n[]"), "{answer}");
        let mut tcp = TcpStream::connect(addr).await.expect("connects");
        tcp.write_all(b"hello there\r\n\r\n").await.expect("writes");
        let mut refused = Vec::new();
        let _ = timeout(step, tcp.read_to_end(&mut refused))
            .await
            .expect("no hang");

        let _ = stop.send(());
        let stats = timeout(step, running)
            .await
            .expect("stops")
            .expect("no panic")
            .expect("ran");
        assert_eq!(
            (stats.clients, stats.frames_sent, stats.rest_requests),
            (1, 5, 3)
        );
    }
}
