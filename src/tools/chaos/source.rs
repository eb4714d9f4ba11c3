//! The venue `ticklake chaos` plays: generated Binance `trade` frames on one
//! live timeline at a rate the orchestrator changes while it runs, and the
//! venue's REST trade history of the same trades, so that a daemon that
//! was killed fills what it missed as it would from Binance.
//!
//! Trade `i` of the timeline is symbol `i % S`, trade id `ID_BASE + i / S`:
//! every frame is a function of its index (and of the time its tick was
//! generated), so the history costs one time entry per tick, not a copy of
//! each frame, and the orchestrator knows exactly what was offered.
//!
//! A client that reads slower than the timeline falls behind and catches up
//! later (its cursor lags; nothing is dropped): the daemon's push-back is
//! visible as the gap between offered and delivered. A client that connects
//! starts at the timeline's head, as on a real exchange.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use super::ChaosError;

/// The first trade id of every symbol.
pub const ID_BASE: u64 = 5_000_000_000;
/// The generator's tick: the rate is spread over ticks of this length.
const TICK: Duration = Duration::from_millis(10);
/// Frames a client is sent per flush.
const BURST: u64 = 256;
/// While the extras are on, every `MALFORMED_EVERY`th trade is followed by
/// a frame that does not parse (a dead letter) and every `DUPLICATE_EVERY`th
/// by the previous trade of its symbol again (a duplicate).
const MALFORMED_EVERY: u64 = 499;
const DUPLICATE_EVERY: u64 = 251;

/// The state the generator, the clients, REST and the orchestrator share.
pub struct Timeline {
    pub symbols: Vec<String>,
    /// Trades generated so far: indices `0..head`.
    head: AtomicU64,
    /// Frames per second the generator offers; 0 pauses it.
    rate: AtomicU64,
    /// (first index of a tick, its trade time in ms), ascending.
    ticks: RwLock<Vec<(u64, i64)>>,
    /// Extras (malformed frames, duplicates) are sent for trades below this.
    extras_until: AtomicU64,
    /// The trade left out of the stream and of REST while counted as
    /// offered (`--drop-one-tier1`, a check that must fail).
    dropped: Option<u64>,
    /// What clients were sent: trades, malformed frames, duplicates.
    pub sent_trades: AtomicU64,
    pub sent_malformed: AtomicU64,
    pub sent_duplicates: AtomicU64,
    duplicates_by_symbol: Vec<AtomicU64>,
    /// The newest client's position: the trades before it are delivered.
    pub cursor: AtomicU64,
    pub connected: AtomicBool,
    pub rest_requests: AtomicU64,
}

impl Timeline {
    pub fn new(symbols: Vec<String>, dropped: Option<u64>) -> Self {
        Self {
            head: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            ticks: RwLock::new(Vec::new()),
            extras_until: AtomicU64::new(u64::MAX),
            dropped,
            sent_trades: AtomicU64::new(0),
            sent_malformed: AtomicU64::new(0),
            sent_duplicates: AtomicU64::new(0),
            duplicates_by_symbol: symbols.iter().map(|_| AtomicU64::new(0)).collect(),
            cursor: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            rest_requests: AtomicU64::new(0),
            symbols,
        }
    }

    /// Duplicate frames sent per symbol.
    pub fn duplicates_per_symbol(&self) -> Vec<(String, u64)> {
        self.symbols
            .iter()
            .zip(&self.duplicates_by_symbol)
            .map(|(s, n)| (s.clone(), n.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }
    pub fn set_rate(&self, per_sec: u64) {
        self.rate.store(per_sec, Ordering::Relaxed);
    }
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }
    /// No more malformed frames or duplicates from the timeline's head on.
    pub fn stop_extras(&self) {
        self.extras_until.store(self.head(), Ordering::Relaxed);
    }
    pub fn dropped(&self) -> Option<u64> {
        self.dropped
    }

    /// Trades offered per symbol: `0..head`, each counted once (the
    /// dropped one too: that is the point of the switch).
    pub fn offered_per_symbol(&self) -> Vec<(String, u64)> {
        let head = self.head();
        let s = self.symbols.len() as u64;
        self.symbols
            .iter()
            .enumerate()
            .map(|(k, sym)| {
                let k = k as u64;
                (sym.clone(), head / s + u64::from(head % s > k))
            })
            .collect()
    }

    fn symbol_of(&self, i: u64) -> &str {
        &self.symbols[(i % self.symbols.len() as u64) as usize]
    }
    fn trade_id(&self, i: u64) -> u64 {
        ID_BASE + i / self.symbols.len() as u64
    }
    fn time_ms(&self, i: u64) -> i64 {
        let ticks = self.ticks.read().unwrap_or_else(|p| p.into_inner());
        let at = ticks.partition_point(|(first, _)| *first <= i);
        at.checked_sub(1)
            .and_then(|t| ticks.get(t))
            .map_or_else(|| crate::model::now_us() / 1000, |(_, ms)| *ms)
    }
    /// Price and quantity of trade `i`, in units of 1e-8.
    fn price_qty(i: u64) -> (u64, u64) {
        (
            6_500_000_000_000 + (i * 7919) % 100_000_000,
            100_000 + (i * 104_729) % 99_000_000,
        )
    }

    /// The WebSocket frame of trade `i`.
    pub fn frame(&self, i: u64) -> String {
        let sym = self.symbol_of(i);
        let ms = self.time_ms(i);
        let (p, q) = Self::price_qty(i);
        format!(
            r#"{{"stream":"{}@trade","data":{{"e":"trade","E":{},"s":"{sym}","t":{},"p":"{}.{:08}","q":"{}.{:08}","T":{ms},"m":{},"M":true}}}}"#,
            sym.to_ascii_lowercase(),
            ms + 1,
            self.trade_id(i),
            p / 100_000_000,
            p % 100_000_000,
            q / 100_000_000,
            q % 100_000_000,
            i.is_multiple_of(3),
        )
    }

    /// Trade `i` as Binance's `historicalTrades` lists it.
    fn rest_entry(&self, i: u64) -> String {
        let (p, q) = Self::price_qty(i);
        format!(
            r#"{{"id":{},"price":"{}.{:08}","qty":"{}.{:08}","quoteQty":"0","time":{},"isBuyerMaker":{},"isBestMatch":true}}"#,
            self.trade_id(i),
            p / 100_000_000,
            p % 100_000_000,
            q / 100_000_000,
            q % 100_000_000,
            self.time_ms(i),
            i.is_multiple_of(3),
        )
    }

    /// `GET /api/v3/historicalTrades?symbol=S&fromId=N&limit=L` over the
    /// trades generated so far; `None` for an unknown symbol.
    fn history(&self, symbol: &str, from_id: Option<u64>, limit: u64) -> Option<String> {
        let k = self.symbols.iter().position(|s| s == symbol)? as u64;
        let s = self.symbols.len() as u64;
        let head = self.head();
        // The symbol's trades are k, k + s, k + 2s, ... below head.
        let count = head / s + u64::from(head % s > k);
        let limit = limit.clamp(1, 1000);
        let first = match from_id {
            Some(id) => id.saturating_sub(ID_BASE),
            None => count.saturating_sub(limit),
        };
        let entries: Vec<String> = (first..count.min(first.saturating_add(limit)))
            .map(|n| n * s + k)
            .filter(|i| Some(*i) != self.dropped)
            .map(|i| self.rest_entry(i))
            .collect();
        Some(format!("[{}]", entries.join(",")))
    }
}

/// Generates the timeline at its current rate until the process ends.
async fn generate(tl: Arc<Timeline>) {
    let mut budget = 0.0f64;
    let mut last = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let rate = tl.rate() as f64;
        budget += rate * now.duration_since(last).as_secs_f64();
        last = now;
        if rate == 0.0 {
            budget = 0.0;
            continue;
        }
        let n = budget.floor() as u64;
        if n == 0 {
            continue;
        }
        budget -= n as f64;
        let head = tl.head();
        if let Ok(mut ticks) = tl.ticks.write() {
            ticks.push((head, crate::model::now_us() / 1000));
        }
        tl.head.store(head + n, Ordering::Release);
    }
}

/// One WebSocket client: from the head at connect on, every trade in order.
async fn serve_ws(tcp: TcpStream, tl: Arc<Timeline>) {
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let closed = Arc::new(AtomicBool::new(false));
    let reader_closed = closed.clone();
    // Subscriptions and pings are read (tungstenite answers the pings on
    // the next write); a close or an error ends the session.
    tokio::spawn(async move {
        while let Some(Ok(m)) = source.next().await {
            if m.is_close() {
                break;
            }
        }
        reader_closed.store(true, Ordering::Relaxed);
    });
    let mut cursor = tl.head();
    tl.cursor.store(cursor, Ordering::Relaxed);
    tl.connected.store(true, Ordering::Relaxed);
    let mut idle_since = Instant::now();
    while !closed.load(Ordering::Relaxed) {
        let head = tl.head();
        if cursor >= head {
            // An idle flush sends the pongs tungstenite queued for the
            // client's pings.
            if idle_since.elapsed() > Duration::from_millis(500) {
                if sink.flush().await.is_err() {
                    break;
                }
                idle_since = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let end = head.min(cursor + BURST);
        let extras = tl.extras_until.load(Ordering::Relaxed);
        let s = tl.symbols.len() as u64;
        let mut sent = 0;
        for i in cursor..end {
            if Some(i) == tl.dropped {
                continue;
            }
            if sink.feed(Message::text(tl.frame(i))).await.is_err() {
                break;
            }
            sent += 1;
            if i < extras && i % MALFORMED_EVERY == MALFORMED_EVERY - 1 {
                let bad = format!(
                    r#"{{"stream":"x@trade","data":{{"e":"trade","s":"{}","t":"not a number"}}}}"#,
                    tl.symbol_of(i)
                );
                if sink.feed(Message::text(bad)).await.is_ok() {
                    tl.sent_malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
            if i < extras && i >= s && i % DUPLICATE_EVERY == DUPLICATE_EVERY - 1 {
                let again = i - s;
                if Some(again) != tl.dropped
                    && sink.feed(Message::text(tl.frame(again))).await.is_ok()
                {
                    tl.sent_duplicates.fetch_add(1, Ordering::Relaxed);
                    tl.duplicates_by_symbol[(again % s) as usize].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if sink.flush().await.is_err() {
            break;
        }
        tl.sent_trades.fetch_add(sent, Ordering::Relaxed);
        cursor = end;
        tl.cursor.store(cursor, Ordering::Relaxed);
    }
    tl.connected.store(false, Ordering::Relaxed);
}

/// One REST request (HTTP/1.1, `Connection: close`).
async fn serve_rest(mut tcp: TcpStream, tl: Arc<Timeline>) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let target = text.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |k: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
    };
    tl.rest_requests.fetch_add(1, Ordering::Relaxed);
    let body = match path {
        "/api/v3/historicalTrades" | "/api/v3/trades" => {
            let symbol = param("symbol").unwrap_or_default();
            let from = param("fromId").and_then(|v| v.parse().ok());
            let limit = param("limit").and_then(|v| v.parse().ok()).unwrap_or(500);
            tl.history(&symbol, from, limit)
        }
        _ => None,
    };
    let (status, body) = match body {
        Some(b) => ("200 OK", b),
        None => (
            "400 Bad Request",
            r#"{"code":-1121,"msg":"Invalid symbol."}"#.to_string(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(reply.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// Binds the WebSocket and REST listeners and starts the generator on the
/// current tokio runtime. Returns (WebSocket address, REST address).
pub async fn start(tl: Arc<Timeline>) -> Result<(SocketAddr, SocketAddr), ChaosError> {
    let bind = |what| move |source| ChaosError::Io { what, source };
    let ws = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(bind("binding the venue's WebSocket"))?;
    let rest = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(bind("binding the venue's REST"))?;
    let addrs = (
        ws.local_addr().map_err(bind("venue address"))?,
        rest.local_addr().map_err(bind("venue address"))?,
    );
    tokio::spawn(generate(tl.clone()));
    let t = tl.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = ws.accept().await {
            tokio::spawn(serve_ws(tcp, t.clone()));
        }
    });
    tokio::spawn(async move {
        while let Ok((tcp, _)) = rest.accept().await {
            tokio::spawn(serve_rest(tcp, tl.clone()));
        }
    });
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_lists_a_symbols_trades_from_an_id_without_the_dropped_one() {
        let tl = Timeline::new(vec!["AAAUSDT".into(), "BBBUSDT".into()], Some(2));
        tl.head.store(7, Ordering::Relaxed);
        // AAAUSDT: indices 0, 2, 4, 6 → ids base..base+3; index 2 dropped.
        let page = tl.history("AAAUSDT", Some(ID_BASE), 10).unwrap();
        let v: serde_json::Value = serde_json::from_str(&page).unwrap();
        let ids: Vec<u64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, vec![ID_BASE, ID_BASE + 2, ID_BASE + 3]);
        assert_eq!(
            tl.offered_per_symbol(),
            vec![("AAAUSDT".into(), 4), ("BBBUSDT".into(), 3)]
        );
        assert!(tl.history("NOPE", None, 10).is_none());
    }
}
