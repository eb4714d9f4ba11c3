//! Exchange timestamps in recorded frames, and moving them by a shift so a
//! capture plays as if live.
//!
//! Understood:
//!
//! - Binance: event time `E` and trade time `T` (integer milliseconds), at
//!   the top level or under the combined stream's `data` object;
//! - Kraken v1 trade arrays `[id, [[price, volume, "secs.micros", side,
//!   type, misc], ...], "trade", pair]`: every trade's time string;
//! - Kraken v2 `{"channel":..,"data":[{"timestamp":"RFC 3339"}, ...]}`;
//! - Coinbase Advanced `events[].trades[].time` and the message's own
//!   top-level `timestamp` (RFC 3339);
//! - Coinbase Exchange `{"type":..,"time":"RFC 3339"}` (`match` and
//!   `last_match`, and the other message types that carry a `time`).
//!
//! Only the timestamp values are rewritten, in place in the frame's text:
//! everything else (key order, number spelling, whitespace) stays byte for
//! byte as recorded. A rewritten time keeps its form: milliseconds stay an
//! integer, Kraken's `"secs.micros"` keeps its decimals, an RFC 3339 time
//! its fractional digits (at least milliseconds) and its offset (`Z` or
//! `+hh:mm`). A frame with no such time is sent unchanged.

use std::ops::Range;

use chrono::{DateTime, FixedOffset, TimeDelta};
use serde_json::Value;

/// Binance's time fields, trade time first: the one a frame is dated by.
const BINANCE_FIELDS: [&str; 2] = ["T", "E"];
/// Nesting deeper than this is not scanned (no exchange frame comes near).
const MAX_DEPTH: usize = 64;

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One step of a path into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A timestamp value in a frame, in its recorded form.
#[derive(Debug, Clone, PartialEq)]
enum Stamp {
    /// Integer milliseconds since the epoch (Binance).
    Millis(i64),
    /// A string `"secs.fraction"` (Kraken v1): nanoseconds since the epoch
    /// and the number of decimals written.
    Decimal { nanos: i128, decimals: usize },
    /// An RFC 3339 string: the time, its fractional digits, and whether the
    /// offset was written `Z`.
    Rfc3339 {
        at: DateTime<FixedOffset>,
        digits: usize,
        zulu: bool,
    },
}

struct Target {
    path: Vec<Seg>,
    stamp: Stamp,
}

impl Stamp {
    fn millis(&self) -> i64 {
        match self {
            Stamp::Millis(ms) => *ms,
            Stamp::Decimal { nanos, .. } => {
                i64::try_from(nanos.div_euclid(1_000_000)).unwrap_or(i64::MAX)
            }
            Stamp::Rfc3339 { at, .. } => at.timestamp_millis(),
        }
    }

    /// The value's new JSON text, `shift_ms` later; `None` when it cannot
    /// be written (out of range).
    fn shifted(&self, shift_ms: i64) -> Option<String> {
        match self {
            Stamp::Millis(ms) => Some(ms.saturating_add(shift_ms).to_string()),
            Stamp::Decimal { nanos, decimals } => {
                let nanos = nanos.checked_add(i128::from(shift_ms) * 1_000_000)?;
                if nanos < 0 {
                    return None;
                }
                let digits = (*decimals).clamp(3, 9);
                let secs = nanos / 1_000_000_000;
                let frac = format!("{:09}", nanos % 1_000_000_000);
                Some(format!("\"{secs}.{}\"", &frac[..digits]))
            }
            Stamp::Rfc3339 { at, digits, zulu } => {
                let at = at.checked_add_signed(TimeDelta::try_milliseconds(shift_ms)?)?;
                let digits = (*digits).clamp(3, 9);
                let frac = format!("{:09}", at.timestamp_subsec_nanos().min(999_999_999));
                let offset = if *zulu {
                    "Z".to_string()
                } else {
                    at.format("%:z").to_string()
                };
                Some(format!(
                    "\"{}.{}{offset}\"",
                    at.format("%Y-%m-%dT%H:%M:%S"),
                    &frac[..digits]
                ))
            }
        }
    }
}

/// `"1618678142.557535"`: digits, one dot, digits.
fn parse_decimal(s: &str) -> Option<Stamp> {
    let (secs, frac) = s.split_once('.')?;
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(secs) || !all_digits(frac) || frac.len() > 9 || secs.len() > 12 {
        return None;
    }
    let secs: i128 = secs.parse().ok()?;
    let frac_nanos: i128 = format!("{frac:0<9}").parse().ok()?;
    Some(Stamp::Decimal {
        nanos: secs * 1_000_000_000 + frac_nanos,
        decimals: frac.len(),
    })
}

fn parse_rfc3339(s: &str) -> Option<Stamp> {
    let at = DateTime::parse_from_rfc3339(s).ok()?;
    // The fraction runs from the dot after the seconds to the offset.
    let digits = match s.get(19..) {
        Some(rest) if rest.starts_with('.') => {
            rest[1..].bytes().take_while(u8::is_ascii_digit).count()
        }
        _ => 0,
    };
    let zulu = s.ends_with(['Z', 'z']);
    Some(Stamp::Rfc3339 { at, digits, zulu })
}

/// Every exchange timestamp of a frame, the one it is dated by first.
fn targets(v: &Value) -> Vec<Target> {
    let mut out = Vec::new();
    match v {
        Value::Object(top) => {
            // Binance: the combined stream's `data` object, else the frame.
            let (body, prefix) = match top.get("data") {
                Some(Value::Object(data)) => (data, Some(Seg::Key("data"))),
                _ => (top, None),
            };
            for field in BINANCE_FIELDS {
                if let Some(ms) = body.get(field).and_then(Value::as_i64) {
                    let mut path: Vec<Seg> = prefix.iter().cloned().collect();
                    path.push(Seg::Key(field));
                    out.push(Target {
                        path,
                        stamp: Stamp::Millis(ms),
                    });
                }
            }
            // Kraken v2: `data` is an array of records with `timestamp`.
            if top.get("channel").is_some_and(Value::is_string)
                && let Some(Value::Array(data)) = top.get("data")
            {
                for (i, record) in data.iter().enumerate() {
                    if let Some(stamp) = record
                        .get("timestamp")
                        .and_then(Value::as_str)
                        .and_then(parse_rfc3339)
                    {
                        out.push(Target {
                            path: vec![Seg::Key("data"), Seg::Index(i), Seg::Key("timestamp")],
                            stamp,
                        });
                    }
                }
            }
            // Coinbase Advanced: trades inside events.
            if let Some(Value::Array(events)) = top.get("events") {
                for (i, event) in events.iter().enumerate() {
                    let Some(Value::Array(trades)) = event.get("trades") else {
                        continue;
                    };
                    for (j, trade) in trades.iter().enumerate() {
                        if let Some(stamp) = trade
                            .get("time")
                            .and_then(Value::as_str)
                            .and_then(parse_rfc3339)
                        {
                            out.push(Target {
                                path: vec![
                                    Seg::Key("events"),
                                    Seg::Index(i),
                                    Seg::Key("trades"),
                                    Seg::Index(j),
                                    Seg::Key("time"),
                                ],
                                stamp,
                            });
                        }
                    }
                }
            }
            // Coinbase Exchange: `time` of a typed message (`match`,
            // `last_match`, and the book and ticker messages alike).
            if top.get("type").is_some_and(Value::is_string)
                && let Some(stamp) = top
                    .get("time")
                    .and_then(Value::as_str)
                    .and_then(parse_rfc3339)
            {
                out.push(Target {
                    path: vec![Seg::Key("time")],
                    stamp,
                });
            }
            // Coinbase Advanced: the message's own send time.
            if top.get("channel").is_some_and(Value::is_string)
                && let Some(stamp) = top
                    .get("timestamp")
                    .and_then(Value::as_str)
                    .and_then(parse_rfc3339)
            {
                out.push(Target {
                    path: vec![Seg::Key("timestamp")],
                    stamp,
                });
            }
        }
        // Kraken v1: `[channel id, [trade, ...], "trade", pair]`, each trade
        // `[price, volume, "secs.micros", side, type, misc]`.
        Value::Array(items)
            if items.len() >= 4 && items[items.len() - 2].as_str() == Some("trade") =>
        {
            if let Some(Value::Array(trades)) = items.get(1) {
                for (i, trade) in trades.iter().enumerate() {
                    if let Some(stamp) =
                        trade.get(2).and_then(Value::as_str).and_then(parse_decimal)
                    {
                        out.push(Target {
                            path: vec![Seg::Index(1), Seg::Index(i), Seg::Index(2)],
                            stamp,
                        });
                    }
                }
            }
        }
        _ => {}
    }
    out
}

/// The frame's exchange time in milliseconds: Binance's trade time, else
/// its event time; the first trade's time (Kraken, Coinbase); else the
/// message's time.
pub fn exchange_time_ms(text: &str) -> Option<i64> {
    let v: Value = serde_json::from_str(text).ok()?;
    targets(&v).first().map(|t| t.stamp.millis())
}

/// The frame with every exchange timestamp moved by `shift_ms`, or None
/// when it has none (and is sent as recorded).
pub fn shift_frame(text: &str, shift_ms: i64) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    let targets = targets(&v);
    if targets.is_empty() {
        return None;
    }
    let mut replacements = Vec::with_capacity(targets.len());
    for target in &targets {
        let spans = value_spans(text, &target.path)?;
        // A key spelled with escapes is not found by its plain name; such a
        // frame is sent as recorded rather than half shifted.
        if spans.is_empty() {
            return None;
        }
        let new = target.stamp.shifted(shift_ms)?;
        replacements.extend(spans.into_iter().map(|span| (span, new.clone())));
    }
    replacements.sort_by_key(|(span, _)| span.start);
    let mut out = String::with_capacity(text.len() + 16);
    let mut at = 0;
    for (span, new) in replacements {
        if span.start < at {
            // The same value reached twice (cannot happen with distinct
            // paths); keep the first replacement.
            continue;
        }
        out.push_str(&text[at..span.start]);
        out.push_str(&new);
        at = span.end;
    }
    out.push_str(&text[at..]);
    Some(out)
}

/// The byte ranges of every scalar value at `path` in `text` (a key may
/// repeat), or `None` when the text is not JSON.
fn value_spans(text: &str, path: &[Seg]) -> Option<Vec<Range<usize>>> {
    let mut scanner = Scanner {
        text,
        pos: 0,
        path: Vec::new(),
        want: path,
        found: Vec::new(),
    };
    scanner.value(0)?;
    Some(scanner.found)
}

/// A path step while scanning: keys as written (without their quotes).
#[derive(Debug, Clone, Copy)]
enum SegRef<'a> {
    Key(&'a str),
    Index(usize),
}

/// A minimal JSON scanner that only tracks where each value is.
struct Scanner<'a, 'p> {
    text: &'a str,
    pos: usize,
    path: Vec<SegRef<'a>>,
    want: &'p [Seg],
    found: Vec<Range<usize>>,
}

impl<'a> Scanner<'a, '_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_ws();
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// A string token; returns its contents as written.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.pos;
        loop {
            match self.peek()? {
                b'\\' => self.pos += 2,
                b'"' => break,
                _ => self.pos += 1,
            }
        }
        let contents = self.text.get(start..self.pos)?;
        self.pos += 1;
        Some(contents)
    }

    fn at_wanted(&self) -> bool {
        self.path.len() == self.want.len()
            && self
                .path
                .iter()
                .zip(self.want)
                .all(|(have, want)| match (have, want) {
                    (SegRef::Key(a), Seg::Key(b)) => a == b,
                    (SegRef::Index(a), Seg::Index(b)) => a == b,
                    _ => false,
                })
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_ws();
        let start = self.pos;
        match self.peek()? {
            b'{' => {
                self.pos += 1;
                self.skip_ws();
                if self.peek()? == b'}' {
                    self.pos += 1;
                    return Some(());
                }
                loop {
                    let key = self.string()?;
                    self.expect(b':')?;
                    self.path.push(SegRef::Key(key));
                    self.value(depth + 1)?;
                    self.path.pop();
                    self.skip_ws();
                    match self.peek()? {
                        b',' => self.pos += 1,
                        b'}' => {
                            self.pos += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                self.skip_ws();
                if self.peek()? == b']' {
                    self.pos += 1;
                    return Some(());
                }
                let mut index = 0;
                loop {
                    self.path.push(SegRef::Index(index));
                    self.value(depth + 1)?;
                    self.path.pop();
                    index += 1;
                    self.skip_ws();
                    match self.peek()? {
                        b',' => self.pos += 1,
                        b']' => {
                            self.pos += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'"' => {
                self.string()?;
                if self.at_wanted() {
                    self.found.push(start..self.pos);
                }
                Some(())
            }
            _ => {
                // A number, true, false or null: up to the next delimiter.
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.pos += 1;
                }
                if self.pos == start {
                    return None;
                }
                if self.at_wanted() {
                    self.found.push(start..self.pos);
                }
                Some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_trade_and_event_time_in_combined_and_raw_frames() {
        let combined = r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1000,"s":"BTCUSDT","T":990,"p":"1.0"}}"#;
        assert_eq!(exchange_time_ms(combined), Some(990));
        let out: Value = serde_json::from_str(&shift_frame(combined, 10).unwrap()).unwrap();
        assert_eq!(out["data"]["T"], 1000);
        assert_eq!(out["data"]["E"], 1010);
        assert_eq!(out["data"]["p"], "1.0");
        let raw = r#"{"e":"depthUpdate","E":5,"s":"X"}"#;
        assert_eq!(exchange_time_ms(raw), Some(5));
        let out: Value = serde_json::from_str(&shift_frame(raw, -5).unwrap()).unwrap();
        assert_eq!(out["E"], 0);
    }

    #[test]
    fn only_the_times_change_byte_for_byte() {
        // Key order, spacing and number spelling are kept.
        let frame = r#"{"stream":"x","data":{"s":"BTCUSDT", "E": 1000 ,"q":1.50e0,"T":990}}"#;
        assert_eq!(
            shift_frame(frame, 10).unwrap(),
            r#"{"stream":"x","data":{"s":"BTCUSDT", "E": 1010 ,"q":1.50e0,"T":1000}}"#
        );
    }

    #[test]
    fn frames_without_timestamps_pass_unchanged() {
        assert_eq!(shift_frame(r#"{"result":null,"id":1}"#, 10), None);
        assert_eq!(shift_frame("not json", 10), None);
        assert_eq!(exchange_time_ms(r#"[1,2]"#), None);
        // Kraken heartbeats and subscription replies, a Coinbase
        // subscription reply.
        assert_eq!(shift_frame(r#"{"event":"heartbeat"}"#, 10), None);
        assert_eq!(
            shift_frame(
                r#"{"channelID":993,"channelName":"trade","event":"subscriptionStatus","pair":"XMR/USD","status":"subscribed","subscription":{"name":"trade"}}"#,
                10
            ),
            None
        );
        assert_eq!(
            shift_frame(
                r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD"]}]}"#,
                10
            ),
            None
        );
        // A Kraken v1 book frame is not a trade array.
        assert_eq!(
            shift_frame(
                r#"[1234,{"a":[["5541.30000","2.50700000","1534614248.456738"]]},"book-10","XBT/USD"]"#,
                10
            ),
            None
        );
    }

    #[test]
    fn kraken_v1_trade_arrays_shift_every_trade_keeping_six_decimals() {
        // Real frame from cryptofeed's KRAKEN.ws.48.0.txt, with a second
        // trade added.
        let frame = r#"[993,[["354.11000000","0.89594024","1618678142.557535","s","l",""],["354.12000000","0.1","1618678142.999999","b","m",""]],"trade","XMR/USD"]"#;
        assert_eq!(exchange_time_ms(frame), Some(1_618_678_142_557));
        assert_eq!(
            shift_frame(frame, 1_500).unwrap(),
            r#"[993,[["354.11000000","0.89594024","1618678144.057535","s","l",""],["354.12000000","0.1","1618678144.499999","b","m",""]],"trade","XMR/USD"]"#
        );
        // Backwards across a second boundary.
        let one = r#"[1,[["1.0","2.0","1618678142.000100","b","l",""]],"trade","XBT/USD"]"#;
        assert_eq!(
            shift_frame(one, -1).unwrap(),
            r#"[1,[["1.0","2.0","1618678141.999100","b","l",""]],"trade","XBT/USD"]"#
        );
    }

    #[test]
    fn kraken_v2_trade_timestamps_shift() {
        let frame = r#"{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy","price":97338.9,"qty":0.00012345,"ord_type":"market","trade_id":1,"timestamp":"2024-11-25T07:49:37.708706Z"},{"symbol":"BTC/USD","side":"sell","price":97339.0,"qty":1e-8,"ord_type":"limit","trade_id":2,"timestamp":"2024-11-25T07:49:37.709000Z"}]}"#;
        assert_eq!(
            exchange_time_ms(frame),
            Some(
                DateTime::parse_from_rfc3339("2024-11-25T07:49:37.708Z")
                    .unwrap()
                    .timestamp_millis()
            )
        );
        let shifted = shift_frame(frame, 86_400_000 + 300).unwrap();
        assert_eq!(
            shifted,
            frame
                .replace("2024-11-25T07:49:37.708706Z", "2024-11-26T07:49:38.008706Z")
                .replace("2024-11-25T07:49:37.709000Z", "2024-11-26T07:49:38.009000Z")
        );
    }

    #[test]
    fn coinbase_exchange_match_and_last_match_times_shift() {
        for kind in ["match", "last_match"] {
            let frame = format!(
                r#"{{"type":"{kind}","trade_id":10,"sequence":50,"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","time":"2014-11-07T08:19:27.028459Z","product_id":"BTC-USD","size":"5.23512","price":"400.23","side":"sell"}}"#
            );
            assert_eq!(
                exchange_time_ms(&frame),
                Some(
                    DateTime::parse_from_rfc3339("2014-11-07T08:19:27.028Z")
                        .unwrap()
                        .timestamp_millis()
                )
            );
            assert_eq!(
                shift_frame(&frame, 1_000).unwrap(),
                frame.replace("2014-11-07T08:19:27.028459Z", "2014-11-07T08:19:28.028459Z")
            );
        }
        // An offset other than Z is kept, and a time without fraction gets
        // milliseconds.
        let frame = r#"{"type":"match","time":"2014-11-07T08:19:27+02:00"}"#;
        assert_eq!(
            shift_frame(frame, 250).unwrap(),
            r#"{"type":"match","time":"2014-11-07T08:19:27.250+02:00"}"#
        );
    }

    #[test]
    fn coinbase_advanced_trade_times_and_message_time_shift() {
        let frame = r#"{"channel":"market_trades","client_id":"","timestamp":"2023-02-09T20:32:50.714964855Z","sequence_num":0,"events":[{"type":"snapshot","trades":[{"trade_id":"000000000","product_id":"ETH-USD","price":"1260.01","size":"0.3","side":"BUY","time":"2019-08-14T20:42:27.265Z"},{"trade_id":"000000001","product_id":"ETH-USD","price":"1260.02","size":"0.1","side":"SELL","time":"2019-08-14T20:42:27.266Z"}]}]}"#;
        // Dated by its first trade, not by when the message was sent.
        assert_eq!(
            exchange_time_ms(frame),
            Some(
                DateTime::parse_from_rfc3339("2019-08-14T20:42:27.265Z")
                    .unwrap()
                    .timestamp_millis()
            )
        );
        assert_eq!(
            shift_frame(frame, 2_000).unwrap(),
            frame
                .replace(
                    "2023-02-09T20:32:50.714964855Z",
                    "2023-02-09T20:32:52.714964855Z"
                )
                .replace("2019-08-14T20:42:27.265Z", "2019-08-14T20:42:29.265Z")
                .replace("2019-08-14T20:42:27.266Z", "2019-08-14T20:42:29.266Z")
        );
        // A heartbeat's `current_time` is not RFC 3339 and stays.
        let heartbeat = r#"{"channel":"heartbeats","client_id":"","timestamp":"2023-06-23T20:31:56.121961769Z","sequence_num":0,"events":[{"current_time":"2023-06-23 20:31:56.121961769 +0000 UTC m=+91717.525857105","heartbeat_counter":"3049"}]}"#;
        assert_eq!(
            shift_frame(heartbeat, 1_000).unwrap(),
            heartbeat.replace("20:31:56.121961769Z", "20:31:57.121961769Z")
        );
    }

    #[test]
    fn escaped_strings_do_not_confuse_the_scanner() {
        let frame = r#"{"note":"a \"T\": 5, }]","T":7,"nested":{"T":9}}"#;
        assert_eq!(
            shift_frame(frame, 1).unwrap(),
            r#"{"note":"a \"T\": 5, }]","T":8,"nested":{"T":9}}"#
        );
    }
}
