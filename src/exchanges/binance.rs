//! Binance spot (and Binance.US, same protocol) `trade` and `aggTrade` frames,
//! raw or wrapped by the combined stream as `{"stream":..,"data":{..}}`.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

use super::rest::RestHistory;
use super::{Frame, FrameError, ParseCtx, Parsed, Protocol};
use crate::config::{FeedConfig, ProtocolKind};
use crate::instruments::SymbolRule;
use crate::model::{AssetClass, Dec8, Side, TradeV2, VendorData, message_id};

/// Quote currencies, longest first so `FDUSD` wins over `USD`.
const QUOTES: &[&str] = &[
    "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "DAI", "BTC", "ETH", "BNB", "EUR", "GBP",
    "TRY", "BRL", "AUD", "JPY", "USD", "XRP", "TRX", "DOT",
];

/// `BASE-QUOTE` of a Binance symbol (`BTCUSDT` is `BTC-USDT`), when its
/// quote currency is one of the known ones.
fn instrument_of(symbol: &str) -> Option<String> {
    let quote = quote_currency(symbol);
    let base = symbol.strip_suffix(quote).filter(|_| !quote.is_empty())?;
    // Pushed, not `format!`: once per trade on the feed's thread, where
    // `fmt`'s machinery cost ~700 instructions (callgrind).
    let mut instrument = String::with_capacity(symbol.len() + 1);
    instrument.push_str(base);
    instrument.push('-');
    instrument.push_str(quote);
    Some(instrument)
}

/// The quote currency a Binance symbol is priced in, or "" when unknown.
pub fn quote_currency(symbol: &str) -> &'static str {
    QUOTES
        .iter()
        .find(|q| symbol.len() > q.len() && symbol.ends_with(*q))
        .copied()
        .unwrap_or("")
}

/// The Binance protocol: streams named in the URL, no subscription frames,
/// WebSocket pings answered by the connection.
pub struct Binance;

impl Protocol for Binance {
    fn kind(&self) -> ProtocolKind {
        ProtocolKind::Binance
    }

    /// The combined-stream URL for the configured symbols and streams.
    fn connect_url(&self, feed: &FeedConfig) -> String {
        let streams: Vec<String> = feed
            .symbols
            .iter()
            .flat_map(|s| {
                feed.channels
                    .iter()
                    .map(move |k| format!("{}@{}", s.to_ascii_lowercase(), k))
            })
            .collect();
        format!(
            "{}/stream?streams={}",
            feed.url.trim_end_matches('/'),
            streams.join("/")
        )
    }

    fn subscribe_frames(&self, _feed: &FeedConfig) -> Vec<String> {
        Vec::new()
    }

    /// Binance sends symbols in upper case, whatever case subscribed.
    fn frame_symbol(&self, configured: &str) -> String {
        configured.to_ascii_uppercase()
    }

    fn instrument(&self, symbol: &str) -> Option<String> {
        instrument_of(symbol)
    }

    fn parse(
        &self,
        text: &str,
        ctx: &ParseCtx<'_>,
        out: &mut Vec<TradeV2>,
    ) -> Result<Frame, FrameError> {
        // The fast path's record goes straight into `out`: through
        // `parse_frame` it was boxed, to be moved out of the box again.
        if let Some(t) = fast_trade(text, ctx.exchange, ctx.symbols, ctx.received_us) {
            out.push(t);
            return Ok(Frame::Trades(1));
        }
        match parse_general(text, ctx.exchange, ctx.symbols, ctx.received_us)? {
            Parsed::Trade(t) => {
                out.push(*t);
                Ok(Frame::Trades(1))
            }
            Parsed::Skipped(kind) => Ok(Frame::Skipped(kind)),
        }
    }

    /// `trade` and `aggTrade` ids each run one by one per symbol.
    fn contiguous_ids(&self) -> bool {
        true
    }

    /// `aggTrades` and `historicalTrades` (`binance_rest`).
    fn rest(&self) -> Option<&dyn RestHistory> {
        Some(self)
    }
}

/// Parses one text frame received from a Binance WebSocket. A trade's
/// symbol must pass `symbols`, the exchange's rule from the instruments file.
pub fn parse_frame(
    text: &str,
    exchange: &str,
    symbols: &SymbolRule,
    received_us: i64,
) -> Result<Parsed, FrameError> {
    match fast_trade(text, exchange, symbols, received_us) {
        Some(t) => Ok(boxed(t)),
        None => parse_general(text, exchange, symbols, received_us),
    }
}

/// Any frame, through a `serde_json::Value`: the kinds that are not
/// trades, and the precise reason a bad frame is bad.
fn parse_general(
    text: &str,
    exchange: &str,
    symbols: &SymbolRule,
    received_us: i64,
) -> Result<Parsed, FrameError> {
    if text.trim().is_empty() {
        return Err(FrameError::Empty);
    }
    let v: Value = serde_json::from_str(text).map_err(|e| FrameError::Json(e.to_string()))?;
    let outer = match v {
        Value::Object(m) => m,
        // `!ticker@arr` style streams send arrays; nothing here is a trade.
        Value::Array(_) => return Ok(Parsed::Skipped("array")),
        _ => return Err(FrameError::NotObject),
    };
    let (stream, obj) = match (outer.get("stream"), outer.get("data")) {
        (Some(Value::String(s)), Some(Value::Object(d))) => (Some(s.as_str()), d),
        (Some(_), Some(Value::Array(_))) => return Ok(Parsed::Skipped("array")),
        (Some(_), Some(_)) => {
            return Err(FrameError::WrongType {
                field: "data",
                expected: "object",
                got: kind_of(&outer["data"]),
            });
        }
        _ => (None, &outer),
    };
    match obj.get("e") {
        Some(Value::String(e)) => match e.as_str() {
            "trade" => trade(obj, exchange, symbols, received_us, "trade", "t").map(boxed),
            "aggTrade" => trade(obj, exchange, symbols, received_us, "aggTrade", "a").map(boxed),
            "depthUpdate" => Ok(Parsed::Skipped("depth")),
            "kline" => Ok(Parsed::Skipped("kline")),
            "24hrTicker" | "24hrMiniTicker" => Ok(Parsed::Skipped("ticker")),
            _ => Ok(Parsed::Skipped("other")),
        },
        Some(other) => Err(FrameError::WrongType {
            field: "e",
            expected: "string",
            got: kind_of(other),
        }),
        None => Ok(Parsed::Skipped(classify_untyped(stream, obj))),
    }
}

/// The fields of a well-formed `trade` or `aggTrade` event, borrowed from
/// the frame. Reading them typed costs no `serde_json::Value` tree and no
/// key strings; it is the path of nearly every frame.
#[derive(Deserialize)]
struct TradeFields<'a> {
    e: &'a str,
    #[serde(rename = "E")]
    event_time_ms: Option<i64>,
    s: &'a str,
    t: Option<i64>,
    a: Option<i64>,
    p: &'a str,
    q: &'a str,
    #[serde(rename = "T")]
    time_ms: i64,
    m: bool,
    f: Option<i64>,
    l: Option<i64>,
    /// Present only in a combined-stream envelope, which is read as one.
    stream: Option<IgnoredAny>,
    data: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Combined<'a> {
    /// Never read: it is here so that only an envelope whose `stream` is a
    /// string reads as one, as the general parser requires.
    #[allow(dead_code)]
    stream: &'a str,
    #[serde(borrow)]
    data: TradeFields<'a>,
}

/// The fast path: a frame that reads typed as a trade and passes every
/// check. Anything else (another kind, a wrong type, an escaped string, a
/// duplicate key, a bad value) returns `None`, and the general parser
/// below answers, with the precise reason when the frame is bad; so both
/// paths give the same result for every frame.
fn fast_trade(
    text: &str,
    exchange: &str,
    symbols: &SymbolRule,
    received_us: i64,
) -> Option<TradeV2> {
    let f = if text.trim_start().starts_with(r#"{"stream""#) {
        serde_json::from_str::<Combined<'_>>(text).ok()?.data
    } else {
        serde_json::from_str::<TradeFields<'_>>(text).ok()?
    };
    if f.stream.is_some() || f.data.is_some() {
        return None;
    }
    let (kind, id) = match f.e {
        "trade" => ("trade", f.t?),
        "aggTrade" => ("aggTrade", f.a?),
        _ => return None,
    };
    symbols.check(f.s).ok()?;
    let price = Dec8::parse(f.p).ok()?;
    let quantity = Dec8::parse(f.q).ok()?;
    if f.time_ms < 0 {
        return None;
    }
    let timestamp_us = f.time_ms.checked_mul(1000)?;
    let (first, last) = if kind == "aggTrade" {
        (f.f, f.l)
    } else {
        (None, None)
    };
    Some(assemble(Assembled {
        exchange,
        kind,
        symbol: f.s,
        id,
        price,
        quantity,
        timestamp_us,
        received_us,
        buyer_is_maker: f.m,
        event_time_ms: f.event_time_ms,
        first_trade_id: first,
        last_trade_id: last,
    }))
}

/// Everything a trade record is made of, checked. The REST history
/// (`binance_rest`) builds its records through it too, so both ways give
/// the same record of a trade.
pub(crate) struct Assembled<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) kind: &'static str,
    pub(crate) symbol: &'a str,
    pub(crate) id: i64,
    pub(crate) price: Dec8,
    pub(crate) quantity: Dec8,
    pub(crate) timestamp_us: i64,
    pub(crate) received_us: i64,
    pub(crate) buyer_is_maker: bool,
    pub(crate) event_time_ms: Option<i64>,
    pub(crate) first_trade_id: Option<i64>,
    pub(crate) last_trade_id: Option<i64>,
}

pub(crate) fn assemble(a: Assembled<'_>) -> TradeV2 {
    // The maker bought, so the aggressor sold.
    let side = if a.buyer_is_maker {
        Side::Sell
    } else {
        Side::Buy
    };
    // itoa, not `to_string`: this runs per trade on the feed's thread, and
    // `fmt`'s machinery cost ~1,500 instructions a trade here.
    let mut digits = itoa::Buffer::new();
    // Sized to its entries: one allocation, no growth.
    let entries = 1
        + usize::from(a.event_time_ms.is_some())
        + usize::from(a.first_trade_id.is_some())
        + usize::from(a.last_trade_id.is_some());
    let mut vendor = VendorData::with_capacity(entries);
    vendor.insert("stream".to_string(), a.kind.to_string());
    if let Some(e) = a.event_time_ms {
        vendor.insert("event_time_ms".to_string(), digits.format(e).to_string());
    }
    if let Some(f) = a.first_trade_id {
        vendor.insert("first_trade_id".to_string(), digits.format(f).to_string());
    }
    if let Some(l) = a.last_trade_id {
        vendor.insert("last_trade_id".to_string(), digits.format(l).to_string());
    }
    let mut id_buf = itoa::Buffer::new();
    let id_text = id_buf.format(a.id);
    let mut trade_id = String::with_capacity(a.exchange.len() + 1 + id_text.len());
    trade_id.push_str(a.exchange);
    trade_id.push('-');
    trade_id.push_str(id_text);
    TradeV2 {
        message_id: message_id(a.exchange, a.kind, a.symbol, id_text),
        trade_id,
        symbol: a.symbol.to_string(),
        exchange: a.exchange.to_string(),
        asset_class: AssetClass::Crypto,
        timestamp_us: a.timestamp_us,
        ingestion_timestamp_us: a.received_us,
        price: a.price,
        quantity: a.quantity,
        currency: quote_currency(a.symbol).to_string(),
        side,
        trade_conditions: Vec::new(),
        source_sequence: Some(a.id),
        platform_sequence: None,
        vendor_data: Some(vendor),
        instrument: instrument_of(a.symbol),
    }
}

fn boxed(t: TradeV2) -> Parsed {
    Parsed::Trade(Box::new(t))
}

/// Frames without an event type: book tickers, partial depth snapshots and
/// replies to SUBSCRIBE requests.
fn classify_untyped(stream: Option<&str>, obj: &Map<String, Value>) -> &'static str {
    if obj.contains_key("result") && obj.contains_key("id") {
        "subscription_reply"
    } else if obj.contains_key("code") && obj.contains_key("msg") {
        "error_reply"
    } else if stream.is_some_and(|s| s.ends_with("@bookTicker"))
        || (obj.contains_key("u") && obj.contains_key("B") && obj.contains_key("A"))
    {
        "bookTicker"
    } else if obj.contains_key("lastUpdateId") {
        "depth"
    } else {
        "other"
    }
}

fn trade(
    obj: &Map<String, Value>,
    exchange: &str,
    symbols: &SymbolRule,
    received_us: i64,
    kind: &'static str,
    id_field: &'static str,
) -> Result<TradeV2, FrameError> {
    let symbol = string(obj, "s")?;
    symbols
        .check(symbol)
        .map_err(|source| FrameError::Symbol { field: "s", source })?;
    let id = integer(obj, id_field)?;
    let price = decimal(obj, "p")?;
    let quantity = decimal(obj, "q")?;
    let time_ms = integer(obj, "T")?;
    let timestamp_us = time_ms.checked_mul(1000).ok_or(FrameError::Invalid {
        field: "T",
        reason: format!("{time_ms} is out of range for a millisecond timestamp"),
    })?;
    if time_ms < 0 {
        return Err(FrameError::Invalid {
            field: "T",
            reason: format!("{time_ms} is before the epoch"),
        });
    }
    let buyer_is_maker = match obj.get("m") {
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(FrameError::WrongType {
                field: "m",
                expected: "bool",
                got: kind_of(other),
            });
        }
        None => return Err(FrameError::Missing("m")),
    };
    let event_time_ms = optional_integer(obj, "E")?;
    let (first_trade_id, last_trade_id) = if kind == "aggTrade" {
        (optional_integer(obj, "f")?, optional_integer(obj, "l")?)
    } else {
        (None, None)
    };
    Ok(assemble(Assembled {
        exchange,
        kind,
        symbol,
        id,
        price,
        quantity,
        timestamp_us,
        received_us,
        buyer_is_maker,
        event_time_ms,
        first_trade_id,
        last_trade_id,
    }))
}

fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
    .to_string()
}

fn string<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, FrameError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(FrameError::WrongType {
            field,
            expected: "string",
            got: kind_of(other),
        }),
        None => Err(FrameError::Missing(field)),
    }
}

fn integer(obj: &Map<String, Value>, field: &'static str) -> Result<i64, FrameError> {
    optional_integer(obj, field)?.ok_or(FrameError::Missing(field))
}

fn optional_integer(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<i64>, FrameError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| FrameError::Invalid {
            field,
            reason: format!("{n} is not a 64-bit integer"),
        }),
        Some(other) => Err(FrameError::WrongType {
            field,
            expected: "integer",
            got: kind_of(other),
        }),
    }
}

fn decimal(obj: &Map<String, Value>, field: &'static str) -> Result<Dec8, FrameError> {
    // Binance sends prices as strings precisely so they stay exact; a JSON
    // number here means the frame is not what the protocol promises.
    let s = string(obj, field)?;
    Dec8::parse(s).map_err(|source| FrameError::Decimal { field, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGG: &str = r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1617566591400,"s":"BTCUSDT","a":668497736,"p":"58792.76000000","q":"0.00170000","f":756431580,"l":756431580,"T":1617566591399,"m":true,"M":true}}"#;
    const RAW_TRADE: &str = r#"{"e":"trade","E":1,"s":"ETHUSDT","t":12345,"p":"2000.10","q":"1.5","T":1700000000123,"m":false,"M":true}"#;

    /// The shipped Binance rule, as the feed gets it.
    fn binance() -> SymbolRule {
        crate::instruments::Instruments::builtin()
            .unwrap()
            .symbol_rule("BINANCE")
            .unwrap()
            .clone()
    }

    fn parse(text: &str, exchange: &str, received_us: i64) -> Result<Parsed, FrameError> {
        parse_frame(text, exchange, &binance(), received_us)
    }

    fn trade_of(p: Parsed) -> TradeV2 {
        match p {
            Parsed::Trade(t) => *t,
            other => panic!("expected a trade, got {other:?}"),
        }
    }

    /// Every frame the fast path accepts, the general parser turns into the
    /// same trade: the recorded captures, the test frames, and variants a
    /// fast path could get wrong.
    #[test]
    fn the_fast_path_agrees_with_the_general_parser() {
        let rule = binance();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/captures");
        let mut frames: Vec<String> = Vec::new();
        for name in ["BINANCE-ee25be.0.txt", "BINANCE_US.ws.1.0.txt"] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            // Capture lines are `<receive time>: <frame>`.
            frames.extend(
                text.lines()
                    .filter_map(|l| l.split_once(": ").map(|(_, f)| f.to_string())),
            );
        }
        let variants = [
            AGG.to_string(),
            RAW_TRADE.to_string(),
            AGG.replace(r#""E":1617566591400,"#, ""),
            AGG.replace(r#""E":1617566591400"#, r#""E":null"#),
            AGG.replace(r#""s":"BTCUSDT""#, r#""s":"BTC\u0055SDT""#),
            AGG.replace(r#""m":true"#, r#""m":1"#),
            AGG.replace(r#""a":668497736"#, r#""a":668497736.0"#),
            AGG.replace(r#""p":"58792.76000000""#, r#""p":"58792.76000000","p":"1""#),
            AGG.replace(r#""s":"BTCUSDT""#, r#""s":"btcusdt""#),
            AGG.replace(r#""T":1617566591399"#, r#""T":-1"#),
            AGG.replace(r#""p":"58792.76000000""#, r#""p":"5e3""#),
            AGG.replace(r#""e":"aggTrade""#, r#""e":"trade""#),
            RAW_TRADE.replace(r#""e":"trade""#, r#""e":"aggTrade""#),
            format!(r#"{{"stream":"x","data":{RAW_TRADE},"extra":1}}"#),
            format!(r#"{{"data":{RAW_TRADE},"stream":"x"}}"#),
            RAW_TRADE.replace(r#""e":"trade","#, r#""e":"trade","data":{},"#),
        ];
        frames.extend(variants);
        let (mut fast, mut general) = (0, 0);
        for f in &frames {
            let want = parse_general(f, "BINANCE", &rule, 7);
            match fast_trade(f, "BINANCE", &rule, 7) {
                Some(t) => {
                    fast += 1;
                    assert_eq!(want, Ok(Parsed::Trade(Box::new(t))), "{f}");
                }
                None => {
                    general += 1;
                    assert_eq!(parse(f, "BINANCE", 7), want, "{f}");
                }
            }
        }
        assert!(
            fast > 100 && general > 100,
            "fast {fast}, general {general}"
        );
    }

    #[test]
    fn parses_combined_agg_trade() {
        let t = trade_of(parse(AGG, "BINANCE", 7).unwrap());
        assert_eq!(t.symbol, "BTCUSDT");
        assert_eq!(t.trade_id, "BINANCE-668497736");
        assert_eq!(t.price.to_string(), "58792.76000000");
        assert_eq!(t.quantity.to_string(), "0.00170000");
        assert_eq!(t.timestamp_us, 1_617_566_591_399_000);
        assert_eq!(t.ingestion_timestamp_us, 7);
        assert_eq!(t.side, Side::Sell);
        assert_eq!(t.currency, "USDT");
        assert_eq!(t.instrument.as_deref(), Some("BTC-USDT"));
        assert_eq!(t.source_sequence, Some(668_497_736));
        let v = t.vendor_data.unwrap();
        assert_eq!(v.get("stream").unwrap(), "aggTrade");
        assert_eq!(v.get("first_trade_id").unwrap(), "756431580");
    }

    #[test]
    fn parses_raw_trade_with_buyer_aggressor() {
        let t = trade_of(parse(RAW_TRADE, "BINANCE", 0).unwrap());
        assert_eq!(t.side, Side::Buy);
        assert_eq!(t.price.to_string(), "2000.10000000");
        assert_eq!(
            t.message_id,
            message_id("BINANCE", "trade", "ETHUSDT", "12345")
        );
    }

    #[test]
    fn skips_what_is_not_a_trade_by_kind() {
        let cases = [
            (
                r#"{"stream":"x@depth@100ms","data":{"e":"depthUpdate","s":"X","b":[],"a":[]}}"#,
                "depth",
            ),
            (
                r#"{"stream":"x@kline_1m","data":{"e":"kline","s":"X","k":{}}}"#,
                "kline",
            ),
            (
                r#"{"stream":"x@bookTicker","data":{"u":1,"s":"X","b":"1","B":"1","a":"1","A":"1"}}"#,
                "bookTicker",
            ),
            (r#"{"result":null,"id":1}"#, "subscription_reply"),
            (r#"{"code":2,"msg":"Invalid request"}"#, "error_reply"),
            (r#"{"lastUpdateId":1,"bids":[],"asks":[]}"#, "depth"),
            (r#"[{"e":"24hrTicker"}]"#, "array"),
        ];
        for (frame, kind) in cases {
            assert_eq!(
                parse(frame, "BINANCE", 0),
                Ok(Parsed::Skipped(kind)),
                "{frame}"
            );
        }
    }

    #[test]
    fn malformed_frames_get_precise_reasons() {
        let cases: [(&str, &str); 9] = [
            ("", "empty"),
            (
                r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTr"#,
                "invalid_json",
            ),
            ("42", "not_object"),
            (
                r#"{"e":"trade","s":"XRPUSDT","t":1,"p":58.1,"q":"1","T":1,"m":true}"#,
                "wrong_type",
            ),
            (
                r#"{"e":"trade","s":"XRPUSDT","t":"1","p":"1","q":"1","T":1,"m":true}"#,
                "wrong_type",
            ),
            (
                r#"{"e":"trade","s":"XRPUSDT","t":1,"p":"99999999999.5","q":"1","T":1,"m":true}"#,
                "decimal",
            ),
            (
                r#"{"e":"trade","s":"XRPUSDT","t":1,"p":"1","q":"1","T":1}"#,
                "missing_field",
            ),
            (
                r#"{"e":"trade","s":"XRPUSDT","t":1,"p":"1","q":"1","T":1,"m":"yes"}"#,
                "wrong_type",
            ),
            (
                r#"{"e":"trade","s":"XRPUSDT","t":1,"p":"1","q":"1","T":99999999999999999,"m":true}"#,
                "invalid_value",
            ),
        ];
        for (frame, class) in cases {
            let err = parse(frame, "BINANCE", 0).unwrap_err();
            assert_eq!(err.class(), class, "{frame}: {err}");
        }
        let err = parse(
            r#"{"e":"trade","s":"XRPUSDT","t":1,"p":58.1,"q":"1","T":1,"m":true}"#,
            "B",
            0,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "field `p`: expected string, got number");
    }

    #[test]
    fn quote_currency_prefers_longest_suffix() {
        assert_eq!(quote_currency("BTCFDUSD"), "FDUSD");
        assert_eq!(quote_currency("OMGBUSD"), "BUSD");
        assert_eq!(quote_currency("ETHBTC"), "BTC");
        assert_eq!(quote_currency("USDT"), "");
        assert_eq!(instrument_of("BTCFDUSD").as_deref(), Some("BTC-FDUSD"));
        assert_eq!(instrument_of("USDT"), None);
    }

    #[test]
    fn symbols_out_of_pattern_are_malformed_frames() {
        let frame = |s: &str| {
            format!(
                r#"{{"e":"trade","E":1,"s":{},"t":1,"p":"1.0","q":"1.0","T":1,"m":true}}"#,
                serde_json::Value::from(s)
            )
        };
        assert!(parse(&frame("BTCUSDT"), "BINANCE", 1).is_ok());
        for bad in [
            "",
            "A\u{0}B",
            "BTC USDT",
            "BTC'--",
            "btcusdt",
            &"X".repeat(33),
        ] {
            let e = parse(&frame(bad), "BINANCE", 1).unwrap_err();
            assert_eq!(e.class(), "bad_symbol", "{bad:?}: {e}");
            assert!(
                e.to_string().starts_with("field `s`: symbol ")
                    && e.to_string().contains("exchanges.BINANCE.symbol_pattern"),
                "{bad:?}: {e}"
            );
        }
        // The rule is the configured one, not a fixed charset.
        let dashed = SymbolRule::new("COINBASE", "[A-Z]{2,6}-[A-Z]{2,6}").unwrap();
        assert!(parse_frame(&frame("BTC-USD"), "COINBASE", &dashed, 1).is_ok());
        assert!(parse_frame(&frame("BTCUSD"), "COINBASE", &dashed, 1).is_err());
    }
}
