//! The freshness poller's side of the wire: one `GET` on loopback, what it
//! reads of an answer, and the per-trade CSV it can write.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// `GET path` on loopback; the body.
pub(super) fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let (head, body) = buf.split_once("\r\n\r\n").ok_or("no header end")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{head}\n{body}"));
    }
    Ok(body.to_string())
}

/// One line per measured trade, in the order the feed stamped them: when
/// it was stamped and when an answer first held it (UTC microseconds), and
/// the difference in milliseconds; to line the slow ones up with the
/// daemon's log (its commits, say).
pub(super) fn write_trades_csv(path: &std::path::Path, seen: &[(i64, i64)]) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(w, "ingestion_us,answered_us,freshness_ms")?;
    for (ingested, arrived) in seen {
        writeln!(
            w,
            "{ingested},{arrived},{:.3}",
            (arrived - ingested) as f64 / 1000.0
        )?;
    }
    w.flush()
}

/// What the poller reads of an answer of `/v1/trades/recent`: borrowed,
/// and nothing else kept. The poller shares the two cores with the daemon
/// it measures; read into `serde_json::Value` trees, its parsing of
/// 500-row pages took about a third of the process's CPU samples.
#[derive(serde::Deserialize)]
pub(super) struct Page<'a> {
    #[serde(borrow)]
    pub(super) trades: Vec<SeenTrade<'a>>,
    /// More trades matched than the page holds.
    #[serde(default)]
    pub(super) truncated: bool,
}

/// How many rows a poll asks for (`limit`). A page holds the newest
/// trades, so a trade the poller never saw is one that fell out of the
/// page before a poll found it: a fixed 500 missed 0.4 to 2.3 % of the
/// measured trades at 100,000 trades/s. So the limit starts at a quarter
/// second of the measured symbol's trades (never under 500), and doubles,
/// up to the API's cap, whenever a full page reaches no trade an earlier
/// answer held: the trades between the two pages may be lost, and the
/// next page must reach further back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PageLimit {
    rows: usize,
    cap: usize,
}

impl PageLimit {
    const FLOOR: usize = 500;

    pub(super) fn new(measured_per_s: f64, cap: usize) -> Self {
        let quarter_second = (measured_per_s / 4.0).ceil() as usize;
        Self {
            rows: quarter_second.max(Self::FLOOR).min(cap.max(1)),
            cap: cap.max(1),
        }
    }

    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    /// After a page (not the first): whether it was full, and whether its
    /// oldest trade was new to the poller.
    pub(super) fn after(&mut self, truncated: bool, oldest_was_new: bool) {
        if truncated && oldest_was_new {
            self.rows = (self.rows * 2).min(self.cap);
        }
    }
}

#[derive(serde::Deserialize)]
pub(super) struct SeenTrade<'a> {
    #[serde(borrow)]
    pub(super) message_id: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    pub(super) ingestion_timestamp: Option<std::borrow::Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The poller's reading of an answer: every trade's id and stamp,
    /// whatever else the answer holds; escaped text read right.
    #[test]
    fn the_poller_reads_ids_and_stamps_of_an_answer() {
        let body = r#"{"source":"hybrid","snapshot_id":7,"count":2,"truncated":false,"trades":[
            {"message_id":"a\"b","symbol":"BTCUSDT","price":"1.00000000","vendor_data":{"k":"v"},"ingestion_timestamp":"2026-12-04T14:03:01.000366Z"},
            {"message_id":"c","ingestion_timestamp":null}]}"#;
        let page: Page<'_> = serde_json::from_str(body).unwrap();
        assert_eq!(page.trades.len(), 2);
        assert_eq!(page.trades[0].message_id, "a\"b");
        assert_eq!(
            page.trades[0].ingestion_timestamp.as_deref(),
            Some("2026-12-04T14:03:01.000366Z")
        );
        assert_eq!(page.trades[1].ingestion_timestamp, None);
        assert!(!page.truncated);
    }

    /// The page's size: a quarter second of trades, at least 500, at most
    /// the cap; doubled only when a full page may have left trades unseen.
    #[test]
    fn the_page_grows_when_a_full_page_reaches_nothing_seen() {
        assert_eq!(PageLimit::new(1_000.0, 100_000).rows(), 500);
        assert_eq!(PageLimit::new(10_000.0, 100_000).rows(), 2_500);
        assert_eq!(PageLimit::new(10_000.0, 1_000).rows(), 1_000);
        let mut l = PageLimit::new(10_000.0, 6_000);
        // A page that was not full, or whose oldest trade an earlier
        // answer held, lost nothing.
        l.after(false, true);
        l.after(true, false);
        assert_eq!(l.rows(), 2_500);
        l.after(true, true);
        assert_eq!(l.rows(), 5_000);
        l.after(true, true);
        assert_eq!(l.rows(), 6_000);
        l.after(true, true);
        assert_eq!(l.rows(), 6_000);
    }
}
