//! Binance's public REST trade history, what a gap in the ids of a `trade`
//! or `aggTrade` stream is filled from.
//!
//! - `aggTrade`: `GET /api/v3/aggTrades?symbol=..&fromId=..&limit=..`,
//!   `[{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,
//!   "T":1498793709153,"m":true,"M":true}]`.
//! - `trade`: `GET /api/v3/historicalTrades?symbol=..&fromId=..&limit=..`,
//!   `[{"id":28457,"price":"4.00000100","qty":"12.00000000",
//!   "quoteQty":"48.000012","time":1499865549590,"isBuyerMaker":true,
//!   "isBestMatch":true}]`. Binance's current documentation asks no API
//!   key for it; Binance.US still documents it as MARKET_DATA (key
//!   required), so there a `trade` gap may come back refused.
//!
//! Both list trades in ascending id order from `fromId` (inclusive), at
//! most `limit` (1000) a page
//! (<https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints>).
//! A page's trades become records through the WebSocket parser's own
//! `binance::assemble`, so they are the same records, message ids
//! included; what only a WebSocket event carries (`E`, the event time) is
//! absent, and `vendor_data.source` is `rest`.

use serde_json::{Map, Value};

use super::binance::{Assembled, Binance, assemble};
// The JSON field readers the Coinbase parser already has.
use super::coinbase::{integer, wrong_type};
use super::fill::non_negative;
use super::rest::{GapSpan, RestHistory};
use super::{FrameError, ParseCtx};
use crate::model::{Dec8, TradeV2};

/// Binance serves at most this many trades a page.
const MAX_PAGE: u32 = 1000;

/// An id space's endpoint and the names its trades' fields go by there.
struct Space {
    /// The id space, which is also the WebSocket event type (`e`).
    kind: &'static str,
    path: &'static str,
    id: &'static str,
    price: &'static str,
    quantity: &'static str,
    time_ms: &'static str,
    buyer_is_maker: &'static str,
    /// The first and last raw trade ids an aggregate trade covers.
    covers: Option<(&'static str, &'static str)>,
}

const AGG_TRADE: Space = Space {
    kind: "aggTrade",
    path: "/api/v3/aggTrades",
    id: "a",
    price: "p",
    quantity: "q",
    time_ms: "T",
    buyer_is_maker: "m",
    covers: Some(("f", "l")),
};

const TRADE: Space = Space {
    kind: "trade",
    path: "/api/v3/historicalTrades",
    id: "id",
    price: "price",
    quantity: "qty",
    time_ms: "time",
    buyer_is_maker: "isBuyerMaker",
    covers: None,
};

fn space(name: &str) -> Result<&'static Space, FrameError> {
    match name {
        "aggTrade" => Ok(&AGG_TRADE),
        "trade" => Ok(&TRADE),
        other => Err(FrameError::Invalid {
            field: "space",
            reason: format!("{other:?} is neither \"trade\" nor \"aggTrade\""),
        }),
    }
}

impl RestHistory for Binance {
    /// From the gap's first id on; then from the id after the last page's
    /// highest.
    fn page_path(&self, gap: &GapSpan, cursor: Option<&str>, limit: u32) -> String {
        // An unknown space cannot be asked for; its page is refused by
        // `parse_page`, which can say so.
        let space = space(&gap.space).unwrap_or(&TRADE);
        let from = match cursor {
            Some(c) => c.to_string(),
            None => gap.from_id.to_string(),
        };
        format!(
            "{}?symbol={}&fromId={}&limit={}",
            space.path,
            query(&gap.symbol),
            query(&from),
            limit.clamp(1, MAX_PAGE)
        )
    }

    /// The next page starts after this one's highest id, until a page
    /// reaches the gap's last id or holds nothing (the history's end).
    /// Whether a page was full is not known here (the limit is not); a
    /// short page before the gap's end means the history ended, and the
    /// page after it is empty, which ends the paging one request later.
    fn parse_page(
        &self,
        body: &str,
        gap: &GapSpan,
        ctx: &ParseCtx<'_>,
        out: &mut Vec<TradeV2>,
    ) -> Result<Option<String>, FrameError> {
        let space = space(&gap.space)?;
        ctx.symbols
            .check(&gap.symbol)
            .map_err(|source| FrameError::Symbol {
                field: "symbol",
                source,
            })?;
        // Read whole before any is pushed: a bad page adds nothing.
        let mut trades = Vec::new();
        let mut highest = None;
        for item in page(body)? {
            let Value::Object(obj) = item else {
                return Err(wrong_type("page", "array of objects", &item));
            };
            let t = trade(&obj, space, gap, ctx)?;
            highest = highest.max(t.source_sequence);
            trades.push(t);
        }
        out.append(&mut trades);
        Ok(match highest {
            Some(id) if id < gap.to_id => Some((id + 1).to_string()),
            _ => None,
        })
    }
}

/// A value for a query string, percent-encoded.
fn query(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The page's trades; an error reply (`{"code":-1121,"msg":"Invalid
/// symbol."}`) is the venue's error.
fn page(body: &str) -> Result<Vec<Value>, FrameError> {
    if body.trim().is_empty() {
        return Err(FrameError::Empty);
    }
    match serde_json::from_str(body).map_err(|e| FrameError::Json(e.to_string()))? {
        Value::Array(items) => Ok(items),
        Value::Object(obj) if obj.contains_key("code") || obj.contains_key("msg") => {
            let msg = obj
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("no error message");
            Err(FrameError::Venue(match obj.get("code") {
                Some(code) => format!("{msg} (code {code})"),
                None => msg.to_string(),
            }))
        }
        other => Err(wrong_type("page", "array", &other)),
    }
}

/// One trade of the page, as the WebSocket parser would make it.
fn trade(
    obj: &Map<String, Value>,
    space: &Space,
    gap: &GapSpan,
    ctx: &ParseCtx<'_>,
) -> Result<TradeV2, FrameError> {
    let id = integer(obj, space.id)?.ok_or(FrameError::Missing(space.id))?;
    if id < 0 {
        return Err(FrameError::Invalid {
            field: space.id,
            reason: format!("{id} is negative"),
        });
    }
    let price = decimal(obj, space.price)?;
    let quantity = decimal(obj, space.quantity)?;
    let time_ms = integer(obj, space.time_ms)?.ok_or(FrameError::Missing(space.time_ms))?;
    if time_ms < 0 {
        return Err(FrameError::Invalid {
            field: space.time_ms,
            reason: format!("{time_ms} is before the epoch"),
        });
    }
    let timestamp_us = time_ms.checked_mul(1000).ok_or(FrameError::Invalid {
        field: space.time_ms,
        reason: format!("{time_ms} is out of range for a millisecond timestamp"),
    })?;
    let buyer_is_maker = match obj.get(space.buyer_is_maker) {
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(wrong_type(space.buyer_is_maker, "bool", other)),
        None => return Err(FrameError::Missing(space.buyer_is_maker)),
    };
    let (first_trade_id, last_trade_id) = match space.covers {
        Some((first, last)) => (integer(obj, first)?, integer(obj, last)?),
        None => (None, None),
    };
    let mut t = assemble(Assembled {
        exchange: ctx.exchange,
        kind: space.kind,
        symbol: &gap.symbol,
        id,
        price,
        quantity,
        timestamp_us,
        received_us: ctx.received_us,
        buyer_is_maker,
        event_time_ms: None,
        first_trade_id,
        last_trade_id,
    });
    t.vendor_data
        .get_or_insert_default()
        .insert("source".to_string(), "rest".to_string());
    Ok(t)
}

/// A price or quantity: a decimal string, as on the WebSocket.
fn decimal(obj: &Map<String, Value>, field: &'static str) -> Result<Dec8, FrameError> {
    let text = match obj.get(field) {
        Some(Value::String(s)) => s,
        Some(other) => return Err(wrong_type(field, "string", other)),
        None => return Err(FrameError::Missing(field)),
    };
    let value = Dec8::parse(text).map_err(|source| FrameError::Decimal { field, source })?;
    non_negative(value, field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchanges::binance::parse_frame;
    use crate::exchanges::rest::testing;
    use crate::exchanges::{Parsed, Protocol};
    use crate::instruments::{Instruments, SymbolRule};
    use crate::model::{Side, message_id};

    // The response examples of the market-data endpoints page.
    const AGG_PAGE: &str = r#"[{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true,"M":true}]"#;
    const TRADE_PAGE: &str = r#"[{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012","time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}]"#;
    // The same trades as WebSocket events.
    const AGG_FRAME: &str = r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1498793709160,"s":"BTCUSDT","a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true,"M":true}}"#;
    const TRADE_FRAME: &str = r#"{"e":"trade","E":1499865549600,"s":"BTCUSDT","t":28457,"p":"4.00000100","q":"12.00000000","T":1499865549590,"m":true,"M":true}"#;

    fn rule() -> SymbolRule {
        Instruments::builtin()
            .unwrap()
            .symbol_rule("BINANCE")
            .unwrap()
            .clone()
    }

    fn gap(space: &str, from_id: i64, to_id: i64) -> GapSpan {
        testing::gap("BTCUSDT", space, from_id, to_id, 0)
    }

    fn parse(
        body: &str,
        gap: &GapSpan,
        out: &mut Vec<TradeV2>,
    ) -> Result<Option<String>, FrameError> {
        testing::parse(&Binance, "BINANCE", 7, body, gap, out)
    }

    fn ws(frame: &str) -> TradeV2 {
        match parse_frame(frame, "BINANCE", &rule(), 7).unwrap() {
            Parsed::Trade(t) => *t,
            other => panic!("{other:?}"),
        }
    }

    /// `n` aggregate trades with ids from `first` on.
    fn agg_page(first: i64, n: i64) -> String {
        let items: Vec<String> = (first..first + n)
            .map(|a| {
                format!(
                    r#"{{"a":{a},"p":"1.5","q":"2","f":{a},"l":{a},"T":1700000000000,"m":false,"M":true}}"#
                )
            })
            .collect();
        format!("[{}]", items.join(","))
    }

    /// The REST record is the WebSocket record, but for the event time
    /// only an event has and the `source` only a page has.
    fn as_rest(mut t: TradeV2) -> TradeV2 {
        let vendor = t.vendor_data.as_mut().unwrap();
        vendor.remove("event_time_ms");
        vendor.insert("source".into(), "rest".into());
        t
    }

    #[test]
    fn pages_give_the_websocket_records() {
        for (space, page, frame) in [
            ("aggTrade", AGG_PAGE, AGG_FRAME),
            ("trade", TRADE_PAGE, TRADE_FRAME),
        ] {
            let mut out = Vec::new();
            let id = if space == "trade" { 28457 } else { 26129 };
            assert_eq!(parse(page, &gap(space, id, id), &mut out), Ok(None));
            assert_eq!(out, vec![as_rest(ws(frame))], "{space}");
            let t = &out[0];
            assert_eq!(
                t.message_id,
                message_id("BINANCE", space, "BTCUSDT", &id.to_string())
            );
            // The buyer was the maker: the aggressor sold.
            assert_eq!(t.side, Side::Sell);
            assert_eq!(t.source_sequence, Some(id));
            assert_eq!(t.instrument.as_deref(), Some("BTC-USDT"));
            assert_eq!(t.ingestion_timestamp_us, 7);
        }
        let mut out = Vec::new();
        parse(AGG_PAGE, &gap("aggTrade", 1, 1), &mut out).unwrap();
        let vendor = out[0].vendor_data.as_ref().unwrap();
        assert_eq!(
            (
                vendor.get("stream").unwrap().as_str(),
                vendor.get("first_trade_id").unwrap().as_str()
            ),
            ("aggTrade", "27781")
        );
        assert!(!vendor.contains_key("event_time_ms"));
    }

    #[test]
    fn page_paths_follow_the_cursor() {
        let g = gap("aggTrade", 100, 2500);
        assert_eq!(
            Binance.page_path(&g, None, 1000),
            "/api/v3/aggTrades?symbol=BTCUSDT&fromId=100&limit=1000"
        );
        let mut out = Vec::new();
        let next = parse(&agg_page(100, 1000), &g, &mut out).unwrap();
        assert_eq!(next.as_deref(), Some("1100"));
        assert_eq!(
            Binance.page_path(&g, next.as_deref(), 1000),
            "/api/v3/aggTrades?symbol=BTCUSDT&fromId=1100&limit=1000"
        );
        let next = parse(&agg_page(1100, 1000), &g, &mut out).unwrap();
        assert_eq!(next.as_deref(), Some("2100"));
        // This page reaches past the gap's end: the last one.
        assert_eq!(parse(&agg_page(2100, 1000), &g, &mut out), Ok(None));
        assert_eq!(out.len(), 3000);
        assert_eq!(out[2999].source_sequence, Some(3099));

        let t = gap("trade", 5, 9);
        assert_eq!(
            Binance.page_path(&t, Some("7"), 5000),
            "/api/v3/historicalTrades?symbol=BTCUSDT&fromId=7&limit=1000"
        );
        assert_eq!(
            Binance.page_path(&t, None, 0),
            "/api/v3/historicalTrades?symbol=BTCUSDT&fromId=5&limit=1"
        );
        let odd = GapSpan {
            symbol: "A&B C".into(),
            ..t
        };
        assert_eq!(
            Binance.page_path(&odd, None, 10),
            "/api/v3/historicalTrades?symbol=A%26B+C&fromId=5&limit=10"
        );
    }

    #[test]
    fn a_page_past_the_gap_or_empty_is_the_last() {
        let mut out = Vec::new();
        // A small gap inside one page: every trade is pushed, the caller
        // keeps the gap's.
        assert_eq!(
            parse(&agg_page(5, 16), &gap("aggTrade", 5, 7), &mut out),
            Ok(None)
        );
        assert_eq!(out.len(), 16);
        // A short page before the gap's end: the next starts after it.
        let next = parse(&agg_page(5, 3), &gap("aggTrade", 5, 50), &mut out).unwrap();
        assert_eq!(next.as_deref(), Some("8"));
        // The history's end.
        assert_eq!(parse("[]", &gap("aggTrade", 8, 50), &mut out), Ok(None));
        assert_eq!(out.len(), 19);
    }

    #[test]
    fn bad_pages_push_nothing() {
        let mut out = vec![ws(TRADE_FRAME)];
        let before = out.clone();
        let g = gap("aggTrade", 1, 10);
        let good = agg_page(1, 3);
        let cases = [
            ("".to_string(), "empty frame"),
            ("[{".to_string(), "invalid json: "),
            ("{}".to_string(), "field `page`: expected array, got object"),
            (
                "[1]".to_string(),
                "field `page`: expected array of objects, got number",
            ),
            (
                good.replacen(r#""p":"1.5""#, r#""p":1.5"#, 2),
                "field `p`: expected string, got number",
            ),
            (
                good.replacen(r#""q":"2""#, r#""q":"-2""#, 3),
                "field `q`: -2.00000000 is negative",
            ),
            (
                good.replacen(r#""p":"1.5""#, r#""p":"1.000000001""#, 3),
                "field `p`: ",
            ),
            (good.replacen(r#""a":3,"#, "", 1), "missing field `a`"),
            (
                good.replacen(r#""a":3"#, r#""a":-3"#, 1),
                "field `a`: -3 is negative",
            ),
            (
                good.replacen(r#""a":3"#, r#""a":"3""#, 1),
                "field `a`: expected integer, got string",
            ),
            (
                good.replacen("1700000000000", "-1", 3),
                "field `T`: -1 is before the epoch",
            ),
            (
                good.replacen("1700000000000", "99999999999999999", 3),
                "field `T`: 99999999999999999 is out of range",
            ),
            (
                good.replacen(r#""m":false"#, r#""m":0"#, 3),
                "field `m`: expected bool, got number",
            ),
            (good.replacen(r#""m":false,"#, "", 3), "missing field `m`"),
        ];
        for (body, reason) in cases {
            let e = parse(&body, &g, &mut out).unwrap_err().to_string();
            assert!(e.starts_with(reason), "{body}: {e}");
            assert_eq!(out, before, "{body}");
        }
        let e = parse(TRADE_PAGE, &gap("depth", 1, 2), &mut out).unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `space`: \"depth\" is neither \"trade\" nor \"aggTrade\""
        );
        let bad_symbol = GapSpan {
            symbol: "btcusdt".into(),
            ..gap("trade", 1, 2)
        };
        let e = parse(TRADE_PAGE, &bad_symbol, &mut out).unwrap_err();
        assert_eq!(e.class(), "bad_symbol");
        assert_eq!(out, before);
    }

    #[test]
    fn venue_errors_are_reported() {
        let mut out = Vec::new();
        let e = parse(
            r#"{"code":-1121,"msg":"Invalid symbol."}"#,
            &gap("trade", 1, 2),
            &mut out,
        )
        .unwrap_err();
        assert_eq!(e, FrameError::Venue("Invalid symbol. (code -1121)".into()));
        assert_eq!(e.class(), "venue_error");
        let e = parse(r#"{"code":-2014}"#, &gap("trade", 1, 2), &mut out).unwrap_err();
        assert_eq!(e, FrameError::Venue("no error message (code -2014)".into()));
        assert!(out.is_empty());
    }

    #[test]
    fn the_protocol_offers_its_history() {
        assert!(Binance.contiguous_ids());
        assert!(Binance.rest().is_some());
    }
}
