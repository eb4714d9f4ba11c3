//! Coinbase's public REST trade histories, what a gap in a product's trade
//! ids is filled from. Each page's trades become records through the
//! WebSocket parsers' own functions (`coinbase::exchange_match`,
//! `coinbase::advanced_trade`), so they are the same records, message ids
//! and sides included; what only a WebSocket frame carries is absent and
//! `vendor_data` is `{"source":"rest"}`.
//!
//! **Exchange**: `GET /products/{id}/trades?limit=..&after=..`
//! (<https://docs.cdp.coinbase.com/exchange/rest-api/pagination>) lists
//! trades newest first, `[{"time":..,"trade_id":74,"price":..,"size":..,
//! "side":"buy"}]`, at most 1000; `after=X` lists those with ids below X.
//! `side` is the maker's, as in `match` frames. Paged by id: the first
//! page ends at the gap's last id, each next one below the previous
//! page's lowest id.
//!
//! **Advanced Trade**: the public (unauthenticated) market trades,
//! `GET /api/v3/brokerage/market/products/{id}/ticker?limit=..&start=..&end=..`
//! (start and end in Unix seconds), `{"trades":[{"trade_id":"512346",
//! "product_id":"BTC-USD","price":..,"size":..,"time":..,"side":"BUY",..}],
//! "best_bid":..,"best_ask":..}`: the newest `limit` trades of the window,
//! newest first. A window holding more trades than a page gives only its
//! newest, so the windows cannot simply step forward; and `parse_page` is
//! not told which window it reads, so an empty window could not be stepped
//! past. Every page therefore starts at the second of the last trade seen
//! before the gap, and the pages walk back from now: each next one ends at
//! the second of the previous page's oldest trade, until a page reaches
//! the gap's first id. A quick fill (the usual, a gap found seconds after
//! it opened) is one page.

use serde_json::{Map, Value};

use super::coinbase::{CoinbaseAdvanced, CoinbaseExchange, advanced_trade, exchange_match};
use super::rest::{GapSpan, RestHistory, check_trade_gap};
use super::{FrameError, ParseCtx};
use crate::model::{TradeV2, VendorData};

/// Coinbase serves at most this many trades a page.
const MAX_PAGE: u32 = 1000;

const MICROS: i64 = 1_000_000;

impl RestHistory for CoinbaseExchange {
    /// The trades below the gap's last id plus one, then below the
    /// previous page's lowest id.
    fn page_path(&self, gap: &GapSpan, cursor: Option<&str>, limit: u32) -> String {
        let after = match cursor {
            Some(c) => c.to_string(),
            None => gap.to_id.saturating_add(1).to_string(),
        };
        format!(
            "/products/{}/trades?limit={}&after={}",
            segment(&gap.symbol),
            limit.clamp(1, MAX_PAGE),
            segment(&after)
        )
    }

    /// The next page is below this one's lowest id, until a page reaches
    /// the gap's first id or holds nothing.
    fn parse_page(
        &self,
        body: &str,
        gap: &GapSpan,
        ctx: &ParseCtx<'_>,
        out: &mut Vec<TradeV2>,
    ) -> Result<Option<String>, FrameError> {
        check_trade_gap(gap, ctx, "Coinbase")?;
        let items = match json(body)? {
            Value::Array(items) => items,
            Value::Object(obj) => return Err(venue_error(&obj)),
            other => return Err(wrong_type("page", "array", &other)),
        };
        // Read whole before any is pushed: a bad page adds nothing.
        let mut trades = Vec::new();
        let mut lowest = None;
        for item in items {
            let Value::Object(mut obj) = item else {
                return Err(wrong_type("page", "array of objects", &item));
            };
            // The page is the product's: its trades do not name it.
            if !of_product(&mut obj, gap)? {
                continue;
            }
            let t = from_rest(exchange_match(&obj, ctx)?);
            if let Some(id) = t.source_sequence {
                lowest = Some(lowest.map_or(id, |l: i64| l.min(id)));
            }
            trades.push(t);
        }
        out.append(&mut trades);
        Ok(match lowest {
            Some(id) if id > gap.from_id => Some(id.to_string()),
            _ => None,
        })
    }
}

impl RestHistory for CoinbaseAdvanced {
    /// From the second of the last trade before the gap, up to now; then
    /// up to the end the previous page pointed to.
    fn page_path(&self, gap: &GapSpan, cursor: Option<&str>, limit: u32) -> String {
        let end = match cursor {
            Some(c) => c.to_string(),
            // The current second whole.
            None => (chrono::Utc::now().timestamp() + 1).to_string(),
        };
        format!(
            "/api/v3/brokerage/market/products/{}/ticker?limit={}&start={}&end={}",
            segment(&gap.symbol),
            limit.clamp(1, MAX_PAGE),
            window_start(gap),
            segment(&end)
        )
    }

    /// The next page ends at this one's oldest trade, until a page
    /// reaches the gap's first id or holds nothing.
    fn parse_page(
        &self,
        body: &str,
        gap: &GapSpan,
        ctx: &ParseCtx<'_>,
        out: &mut Vec<TradeV2>,
    ) -> Result<Option<String>, FrameError> {
        check_trade_gap(gap, ctx, "Coinbase")?;
        let mut obj = match json(body)? {
            Value::Object(obj) => obj,
            other => return Err(wrong_type("page", "object", &other)),
        };
        let items = match obj.remove("trades") {
            Some(Value::Array(items)) => items,
            Some(other) => return Err(wrong_type("trades", "array", &other)),
            None if is_error(&obj) => return Err(venue_error(&obj)),
            None => return Err(FrameError::Missing("trades")),
        };
        // Read whole before any is pushed: a bad page adds nothing.
        let mut trades = Vec::new();
        for item in items {
            let Value::Object(mut t) = item else {
                return Err(wrong_type("trades", "array of objects", &item));
            };
            // Another product's trades are not the gap's.
            if of_product(&mut t, gap)? {
                // The frame's event kind is replaced by `from_rest`.
                trades.push(from_rest(advanced_trade(&t, "snapshot", ctx)?));
            }
        }
        let next = earlier_window(&trades, gap);
        out.append(&mut trades);
        Ok(next)
    }
}

/// Where every Advanced Trade window starts: the second of the last trade
/// seen before the gap.
fn window_start(gap: &GapSpan) -> i64 {
    gap.after_us.div_euclid(MICROS).max(0)
}

/// The end (Unix seconds) of the window before a page's trades, or `None`
/// when the page reached the gap's first id, or is empty, or the window
/// would end before it starts.
///
/// It is the second after the oldest trade's, so that second's older
/// trades come too. It must fall before the page's newest trade, whether
/// the venue's `end` is inclusive or not, so each page's newest trade is
/// older than the last's and the paging ends; when every trade of the page
/// lies within one second, the rest of that second is given up (more
/// trades in one second than a page holds; they stay missing).
fn earlier_window(trades: &[TradeV2], gap: &GapSpan) -> Option<String> {
    let oldest_us = trades.iter().map(|t| t.timestamp_us).min()?;
    let newest_us = trades.iter().map(|t| t.timestamp_us).max()?;
    let lowest_id = trades.iter().filter_map(|t| t.source_sequence).min();
    if lowest_id.is_some_and(|id| id <= gap.from_id) {
        return None;
    }
    let after_oldest = oldest_us.div_euclid(MICROS) + 1;
    let end = if after_oldest.saturating_mul(MICROS) < newest_us {
        after_oldest
    } else {
        (newest_us - 1).div_euclid(MICROS)
    };
    (end >= window_start(gap)).then(|| end.to_string())
}

/// The record of a page's trade: the WebSocket one, its frame's vendor
/// data replaced by where it came from.
fn from_rest(mut t: TradeV2) -> TradeV2 {
    t.vendor_data = Some(VendorData::from_iter([(
        "source".to_string(),
        "rest".to_string(),
    )]));
    t
}

/// Whether a trade is of the gap's product; one that does not say is
/// given it (an Exchange page's trades do not), for the WebSocket parser
/// to check against the symbol rule.
fn of_product(obj: &mut Map<String, Value>, gap: &GapSpan) -> Result<bool, FrameError> {
    match obj.get("product_id") {
        None => {
            obj.insert("product_id".into(), Value::from(gap.symbol.as_str()));
            Ok(true)
        }
        Some(Value::String(p)) => Ok(*p == gap.symbol),
        Some(other) => Err(wrong_type("product_id", "string", other)),
    }
}

/// A path segment or query value, percent-encoded but for the characters
/// that never need it.
fn segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn json(body: &str) -> Result<Value, FrameError> {
    if body.trim().is_empty() {
        return Err(FrameError::Empty);
    }
    serde_json::from_str(body).map_err(|e| FrameError::Json(e.to_string()))
}

fn is_error(obj: &Map<String, Value>) -> bool {
    ["message", "error", "error_details"]
        .iter()
        .any(|k| obj.contains_key(*k))
}

/// An error reply: `{"message":"NotFound"}` (Exchange),
/// `{"error":"NOT_FOUND","error_details":..,"message":..}` (Advanced).
fn venue_error(obj: &Map<String, Value>) -> FrameError {
    let text = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let message = text("message")
        .or_else(|| text("error_details"))
        .or_else(|| text("error"))
        .unwrap_or("no error message");
    match text("error") {
        Some(code) if code != message => FrameError::Venue(format!("{code}: {message}")),
        _ => FrameError::Venue(message.to_string()),
    }
}

fn wrong_type(field: &'static str, expected: &'static str, got: &Value) -> FrameError {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    FrameError::WrongType {
        field,
        expected,
        got: kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchanges::rest::testing;
    use crate::exchanges::{Frame, Protocol};
    use crate::instruments::{Instruments, SymbolRule};
    use crate::model::{Side, message_id};

    // The example of the Exchange's Get product trades page, and the same
    // trade as a `match` frame.
    const EXCHANGE_PAGE: &str = r#"[{"time":"2020-03-20T00:36:59.860Z","trade_id":86327327,"price":"6225.32000000","size":"0.06469797","side":"sell"}]"#;
    const MATCH: &str = r#"{"type":"match","trade_id":86327327,"sequence":50,"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","time":"2020-03-20T00:36:59.860Z","product_id":"BTC-USD","size":"0.06469797","price":"6225.32000000","side":"sell"}"#;
    // A page of the public market trades, in its format, and the same
    // trades as a `market_trades` frame.
    const ADVANCED_PAGE: &str = r#"{"trades":[{"trade_id":"512347","product_id":"BTC-USD","price":"21921.73","size":"0.00000001","time":"2023-02-09T20:19:35.384436Z","side":"BUY","bid":"","ask":"","exchange":"coinbase"},{"trade_id":"512346","product_id":"BTC-USD","price":"21921.74","size":"0.06317609","time":"2023-02-09T20:19:35.384436Z","side":"SELL","bid":"","ask":"","exchange":"coinbase"}],"best_bid":"21921.73","best_ask":"21921.74"}"#;
    const MARKET_TRADES: &str = r#"{"channel":"market_trades","client_id":"","timestamp":"2023-02-09T20:19:35.39625135Z","sequence_num":4,"events":[{"type":"update","trades":[{"trade_id":"512347","product_id":"BTC-USD","price":"21921.73","size":"0.00000001","side":"BUY","time":"2023-02-09T20:19:35.384436Z"},{"trade_id":"512346","product_id":"BTC-USD","price":"21921.74","size":"0.06317609","side":"SELL","time":"2023-02-09T20:19:35.384436Z"}]}]}"#;
    const T0: i64 = 1_700_000_000;

    fn rule() -> SymbolRule {
        Instruments::builtin()
            .unwrap()
            .symbol_rule("COINBASE")
            .unwrap()
            .clone()
    }

    fn parse(
        p: &dyn RestHistory,
        body: &str,
        gap: &GapSpan,
        out: &mut Vec<TradeV2>,
    ) -> Result<Option<String>, FrameError> {
        testing::parse(p, "COINBASE", 99, body, gap, out)
    }

    /// What the WebSocket parser makes of a frame, with the vendor data a
    /// page's trades carry instead of the frame's.
    fn ws_as_rest(p: &dyn Protocol, frame: &str) -> Vec<TradeV2> {
        let rule = rule();
        let ctx = ParseCtx {
            exchange: "COINBASE",
            symbols: &rule,
            received_us: 99,
        };
        let mut out = Vec::new();
        assert!(matches!(
            p.parse(frame, &ctx, &mut out),
            Ok(Frame::Trades(_))
        ));
        out.into_iter().map(from_rest).collect()
    }

    fn gap(from_id: i64, to_id: i64, after_us: i64) -> GapSpan {
        testing::gap("BTC-USD", "trade", from_id, to_id, after_us)
    }

    /// An Exchange page of these ids, in the order given.
    fn exchange_page(ids: impl Iterator<Item = i64>) -> String {
        let items: Vec<String> = ids
            .map(|id| {
                format!(
                    r#"{{"time":"2024-01-01T00:00:00.123456Z","trade_id":{id},"price":"10.00000000","size":"0.01000000","side":"buy"}}"#
                )
            })
            .collect();
        format!("[{}]", items.join(","))
    }

    /// An Advanced Trade page of these (id, time in µs) trades.
    fn advanced_page(trades: &[(i64, i64)]) -> String {
        let items: Vec<String> = trades
            .iter()
            .map(|(id, us)| {
                let time = chrono::DateTime::from_timestamp_micros(*us)
                    .unwrap()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                format!(
                    r#"{{"trade_id":"{id}","product_id":"BTC-USD","price":"10","size":"1","time":"{time}","side":"SELL","bid":"","ask":"","exchange":"coinbase"}}"#
                )
            })
            .collect();
        format!(
            r#"{{"trades":[{}],"best_bid":"9","best_ask":"11"}}"#,
            items.join(",")
        )
    }

    #[test]
    fn exchange_page_gives_the_websocket_record() {
        let mut out = Vec::new();
        let g = gap(86_327_327, 86_327_327, 0);
        assert_eq!(
            parse(&CoinbaseExchange, EXCHANGE_PAGE, &g, &mut out),
            Ok(None)
        );
        assert_eq!(out, ws_as_rest(&CoinbaseExchange, MATCH));
        let t = &out[0];
        assert_eq!(
            t.message_id,
            message_id("COINBASE", "trade", "BTC-USD", "86327327")
        );
        // The maker sold: the aggressor bought.
        assert_eq!(t.side, Side::Buy);
        assert_eq!(t.timestamp_us, 1_584_664_619_860_000);
        assert_eq!(t.source_sequence, Some(86_327_327));
        assert_eq!(t.instrument.as_deref(), Some("BTC-USD"));
        assert_eq!(
            t.vendor_data.as_ref().unwrap().get("source").unwrap(),
            "rest"
        );
    }

    #[test]
    fn exchange_pages_walk_down_by_id() {
        let g = gap(100, 2500, 0);
        let ex = &CoinbaseExchange;
        assert_eq!(
            ex.page_path(&g, None, 1000),
            "/products/BTC-USD/trades?limit=1000&after=2501"
        );
        let mut out = Vec::new();
        let next = parse(ex, &exchange_page((1501..=2500).rev()), &g, &mut out).unwrap();
        assert_eq!(next.as_deref(), Some("1501"));
        assert_eq!(
            ex.page_path(&g, next.as_deref(), 5000),
            "/products/BTC-USD/trades?limit=1000&after=1501"
        );
        let next = parse(ex, &exchange_page((501..=1500).rev()), &g, &mut out).unwrap();
        assert_eq!(next.as_deref(), Some("501"));
        // This page reaches below the gap's first id: the last one.
        assert_eq!(
            parse(ex, &exchange_page((1..=500).rev()), &g, &mut out),
            Ok(None)
        );
        assert_eq!(out.len(), 2500);
        // A gap inside one page, and the history's end.
        assert_eq!(
            parse(ex, &exchange_page((1..=20).rev()), &gap(5, 7, 0), &mut out),
            Ok(None)
        );
        assert_eq!(parse(ex, "[]", &g, &mut out), Ok(None));
        assert_eq!(out.len(), 2520);
        assert_eq!(
            ex.page_path(
                &GapSpan {
                    symbol: "A B/C".into(),
                    ..g
                },
                None,
                0
            ),
            "/products/A%20B%2FC/trades?limit=1&after=2501"
        );
    }

    #[test]
    fn exchange_bad_pages_and_errors() {
        let ex = &CoinbaseExchange;
        let g = gap(1, 10, 0);
        let mut out = ws_as_rest(ex, MATCH);
        let before = out.clone();
        let good = exchange_page((1..=3).rev());
        let cases = [
            ("".to_string(), "empty frame"),
            ("[".to_string(), "invalid json: "),
            ("5".to_string(), "field `page`: expected array, got number"),
            (
                "[1]".to_string(),
                "field `page`: expected array of objects, got number",
            ),
            (
                good.replacen(r#""side":"buy""#, r#""side":"BUY""#, 2),
                "field `side`: \"BUY\" is neither",
            ),
            (
                good.replacen(r#""trade_id":2"#, r#""trade_id":"2""#, 1),
                "field `trade_id`: expected integer, got string",
            ),
            (
                good.replacen(r#""trade_id":2,"#, "", 1),
                "missing field `trade_id`",
            ),
            (
                good.replacen(r#""price":"10.00000000""#, r#""price":10"#, 3),
                "field `price`: expected string, got number",
            ),
            (
                good.replacen(r#""size":"0.01000000""#, r#""size":"-1""#, 3),
                "field `size`: -1.00000000 is negative",
            ),
            (
                good.replacen("2024-01-01T00:00:00.123456Z", "yesterday", 3),
                "field `time`: \"yesterday\" is not an RFC 3339 time",
            ),
            (
                good.replacen(r#""side""#, r#""product_id":5,"side""#, 1),
                "field `product_id`: expected string, got number",
            ),
        ];
        for (body, reason) in cases {
            let e = parse(ex, &body, &g, &mut out).unwrap_err().to_string();
            assert!(e.starts_with(reason), "{body}: {e}");
        }
        let e = parse(ex, r#"{"message":"NotFound"}"#, &g, &mut out).unwrap_err();
        assert_eq!(e, FrameError::Venue("NotFound".into()));
        assert_eq!(e.class(), "venue_error");
        let e = parse(
            ex,
            "[]",
            &GapSpan {
                space: "aggTrade".into(),
                ..g.clone()
            },
            &mut out,
        );
        assert_eq!(e.unwrap_err().class(), "invalid_value");
        let lower = GapSpan {
            symbol: "btc-usd".into(),
            ..g.clone()
        };
        assert_eq!(
            parse(ex, &good, &lower, &mut out).unwrap_err().class(),
            "bad_symbol"
        );
        assert_eq!(out, before);
        // Another product's trade is not the gap's.
        let other = good.replacen(r#""side""#, r#""product_id":"ETH-USD","side""#, 1);
        let mut out = Vec::new();
        assert_eq!(parse(ex, &other, &g, &mut out), Ok(None));
        assert_eq!(
            out.iter().map(|t| t.source_sequence).collect::<Vec<_>>(),
            [Some(2), Some(1)]
        );
    }

    #[test]
    fn advanced_page_gives_the_websocket_records() {
        let mut out = Vec::new();
        let g = gap(512_346, 512_347, 1_675_973_975_000_000);
        assert_eq!(
            parse(&CoinbaseAdvanced, ADVANCED_PAGE, &g, &mut out),
            Ok(None)
        );
        assert_eq!(out, ws_as_rest(&CoinbaseAdvanced, MARKET_TRADES));
        assert_eq!(
            out[1].message_id,
            message_id("COINBASE", "trade", "BTC-USD", "512346")
        );
        // The taker's side, as is.
        assert_eq!((out[0].side, out[1].side), (Side::Buy, Side::Sell));
        assert_eq!(out[1].quantity.unscaled(), 6_317_609);
        assert_eq!(out[1].timestamp_us, 1_675_973_975_384_436);
        assert_eq!(out[1].source_sequence, Some(512_346));
    }

    #[test]
    fn advanced_pages_walk_back_from_now() {
        let adv = &CoinbaseAdvanced;
        let g = gap(1000, 5000, T0 * MICROS + 250_000);
        let first = adv.page_path(&g, None, 1000);
        let prefix =
            format!("/api/v3/brokerage/market/products/BTC-USD/ticker?limit=1000&start={T0}&end=");
        let end: i64 = first.strip_prefix(&prefix).unwrap().parse().unwrap();
        assert!(end > chrono::Utc::now().timestamp() - 5, "{first}");
        // 100 trades a second from the gap's start on; a page holds the
        // newest 1000 of its window.
        let at = |id: i64| T0 * MICROS + (id - 999) * 10_000;
        let window = |ids: std::ops::RangeInclusive<i64>| {
            advanced_page(&ids.rev().map(|id| (id, at(id))).collect::<Vec<_>>())
        };
        let mut out = Vec::new();
        let next = parse(adv, &window(4001..=5000), &g, &mut out).unwrap();
        // The oldest trade (4001) is at T0 + 30.02 s: its second whole.
        assert_eq!(next, Some((T0 + 31).to_string()));
        assert_eq!(
            adv.page_path(&g, next.as_deref(), 1000),
            format!("{prefix}{}", T0 + 31)
        );
        let next = parse(adv, &window(3100..=4099), &g, &mut out).unwrap();
        assert_eq!(next, Some((T0 + 22).to_string()));
        // This page reaches the gap's first id: the last one.
        assert_eq!(parse(adv, &window(999..=1998), &g, &mut out), Ok(None));
        assert_eq!(out.len(), 3000);
        assert_eq!(parse(adv, r#"{"trades":[]}"#, &g, &mut out), Ok(None));
    }

    #[test]
    fn advanced_windows_always_shrink() {
        let adv = &CoinbaseAdvanced;
        let g = gap(1, 100, T0 * MICROS);
        let mut out = Vec::new();
        // A page all within one second (more trades than a page in it):
        // the next window ends before the page's newest trade.
        let s = T0 + 50;
        let page = advanced_page(&[(60, s * MICROS + 900_000), (50, s * MICROS + 100_000)]);
        assert_eq!(
            parse(adv, &page, &g, &mut out).unwrap(),
            Some(s.to_string())
        );
        let page = advanced_page(&[(60, s * MICROS), (50, s * MICROS)]);
        assert_eq!(
            parse(adv, &page, &g, &mut out).unwrap(),
            Some((s - 1).to_string())
        );
        // A window that would end before it starts.
        let page = advanced_page(&[(60, T0 * MICROS), (50, T0 * MICROS)]);
        assert_eq!(parse(adv, &page, &g, &mut out), Ok(None));
        // Ids that are not numbers: the time alone pages.
        let page = advanced_page(&[(60, s * MICROS + 900_000), (50, (s - 3) * MICROS)])
            .replace(r#""60""#, r#""a-60""#)
            .replace(r#""50""#, r#""a-50""#);
        assert_eq!(
            parse(adv, &page, &g, &mut out).unwrap(),
            Some((s - 2).to_string())
        );
        // Another product's trades are not the gap's.
        let page = advanced_page(&[(60, s * MICROS)]).replace("BTC-USD", "ETH-USD");
        let before = out.len();
        assert_eq!(parse(adv, &page, &g, &mut out), Ok(None));
        assert_eq!(out.len(), before);
    }

    #[test]
    fn advanced_bad_pages_and_errors() {
        let adv = &CoinbaseAdvanced;
        let g = gap(512_346, 512_347, 0);
        let mut out = ws_as_rest(adv, MARKET_TRADES);
        let before = out.clone();
        let cases = [
            ("".to_string(), "empty frame"),
            ("[]".to_string(), "field `page`: expected object, got array"),
            (r#"{"best_bid":"1"}"#.to_string(), "missing field `trades`"),
            (
                r#"{"trades":{}}"#.to_string(),
                "field `trades`: expected array, got object",
            ),
            (
                r#"{"trades":[1]}"#.to_string(),
                "field `trades`: expected array of objects",
            ),
            (
                ADVANCED_PAGE.replacen(r#""side":"SELL""#, r#""side":"sell""#, 1),
                "field `side`: \"sell\" is neither",
            ),
            (
                ADVANCED_PAGE.replacen(r#""trade_id":"512346""#, r#""trade_id":512346"#, 1),
                "field `trade_id`: expected string, got number",
            ),
            (
                ADVANCED_PAGE.replacen(r#""price":"21921.74""#, r#""price":21921.74"#, 1),
                "field `price`: expected string, got number",
            ),
            (
                ADVANCED_PAGE.replacen("2023-02-09T20:19:35.384436Z", "1675973975", 1),
                "field `time`: \"1675973975\" is not an RFC 3339 time",
            ),
            (
                ADVANCED_PAGE.replacen(r#""product_id":"BTC-USD""#, r#""product_id":null"#, 1),
                "field `product_id`: expected string, got null",
            ),
        ];
        for (body, reason) in cases {
            let e = parse(adv, &body, &g, &mut out).unwrap_err().to_string();
            assert!(e.starts_with(reason), "{body}: {e}");
        }
        let e = parse(
            adv,
            r#"{"error":"NOT_FOUND","error_details":"ProductID not found","message":"ProductID not found"}"#,
            &g,
            &mut out,
        )
        .unwrap_err();
        assert_eq!(
            e,
            FrameError::Venue("NOT_FOUND: ProductID not found".into())
        );
        let e = parse(adv, r#"{"error":"unknown"}"#, &g, &mut out).unwrap_err();
        assert_eq!(e, FrameError::Venue("unknown".into()));
        let lower = GapSpan {
            symbol: "btc-usd".into(),
            ..g
        };
        let e = parse(
            adv,
            &ADVANCED_PAGE.replace("BTC-USD", "btc-usd"),
            &lower,
            &mut out,
        );
        assert_eq!(e.unwrap_err().class(), "bad_symbol");
        assert_eq!(out, before);
    }

    #[test]
    fn both_protocols_offer_their_history() {
        assert!(CoinbaseExchange.contiguous_ids() && CoinbaseExchange.rest().is_some());
        assert!(CoinbaseAdvanced.contiguous_ids() && CoinbaseAdvanced.rest().is_some());
    }
}
