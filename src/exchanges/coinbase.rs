//! Coinbase trades over WebSocket: Advanced Trade (`market_trades`) and the
//! legacy Exchange feed (`matches`). Product ids are `BASE-QUOTE` in upper
//! case on both; prices and sizes are decimal strings, read exactly.
//!
//! **Advanced Trade** (`wss://advanced-trade-ws.coinbase.com`, public market
//! data, no authentication): one subscription per channel,
//! `market_trades` and `heartbeats` (most channels close after 60 to 90
//! seconds without updates; heartbeats keep an illiquid product's
//! subscription open). Frames are `{"channel":..,"events":[..]}`; a
//! `market_trades` event is `{"type":"snapshot"|"update","trades":[..]}`,
//! and both kinds carry trades (a snapshot repeats recent ones, which
//! dedup drops). An `{"type":"error","message":..}` frame is a venue error.
//! <https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels>
//!
//! The side of a `market_trades` trade: the channel pages (that one and
//! <https://docs.cdp.coinbase.com/api-reference/advanced-trade-api/websocket/market-trades>)
//! show `side` as `BUY` or `SELL` and, in what could be read of them, do
//! not say whose side it is. The schema of the same public trade object in
//! Coinbase's Advanced Trade REST API (public market trades,
//! `GET /api/v3/brokerage/market/products/{product_id}/ticker`) describes
//! it as the "taker side of the trade", and the open-source clients of
//! this channel checked (cryptofeed, NautilusTrader's Coinbase adapter)
//! use it as the aggressor's side. So it is the aggressor's side here, as
//! is: unlike the Exchange feed's `side`, which Coinbase documents as the
//! maker's. (One published build of that adapter's API docs says the
//! opposite; should that prove right, it is the one match in
//! `advanced_trade` to flip.)
//!
//! **Exchange** (`wss://ws-feed.exchange.coinbase.com`): one subscription
//! for `matches` and `heartbeat`. `match` frames, and the `last_match` sent
//! right after subscribing (the product's most recent trade, which dedup
//! drops when it was already stored), are trades. "The side field
//! indicates the maker order side. If the side is sell this indicates the
//! maker was a sell order and the match is considered an up-tick"
//! (<https://docs.cdp.coinbase.com/exchange/websocket-feed/channels#match>):
//! the aggressor is the opposite side.

use serde_json::{Map, Value};

use super::fill::{Fill, all_or_nothing, non_negative, rfc3339_us};
use super::rest::RestHistory;
use super::{Frame, FrameError, ParseCtx, Protocol};
use crate::config::{FeedConfig, ProtocolKind};
use crate::model::{Dec8, Side, TradeV2, VendorData};

/// Longest trade id kept as text. Coinbase's are decimal integers; a
/// longer one is not a trade id but a hostile frame.
const MAX_ID_LEN: usize = 64;

/// Coinbase Advanced Trade: `market_trades`, kept open by `heartbeats`.
pub struct CoinbaseAdvanced;

/// The legacy Coinbase Exchange feed: `matches`.
pub struct CoinbaseExchange;

impl Protocol for CoinbaseAdvanced {
    fn kind(&self) -> ProtocolKind {
        ProtocolKind::Coinbase
    }

    /// One subscription per channel (Advanced Trade takes one channel per
    /// message), and `heartbeats` for the same products.
    fn subscribe_frames(&self, feed: &FeedConfig) -> Vec<String> {
        let products = product_ids(self, feed);
        let mut channels: Vec<&str> = feed.channels.iter().map(String::as_str).collect();
        if !channels.contains(&"heartbeats") {
            channels.push("heartbeats");
        }
        channels
            .into_iter()
            .map(|channel| {
                format!(
                    r#"{{"type":"subscribe","product_ids":{products},"channel":{}}}"#,
                    Value::from(channel)
                )
            })
            .collect()
    }

    fn frame_symbol(&self, configured: &str) -> String {
        coinbase_symbol(configured)
    }

    fn instrument(&self, symbol: &str) -> Option<String> {
        coinbase_instrument(symbol)
    }

    fn parse(
        &self,
        text: &str,
        ctx: &ParseCtx<'_>,
        out: &mut Vec<TradeV2>,
    ) -> Result<Frame, FrameError> {
        all_or_nothing(out, |out| parse_advanced(text, ctx, out))
    }

    /// Numeric trade ids run one by one per product.
    fn contiguous_ids(&self) -> bool {
        true
    }

    /// The public market trades, paged by time (`coinbase_rest`).
    fn rest(&self) -> Option<&dyn RestHistory> {
        Some(self)
    }
}

impl Protocol for CoinbaseExchange {
    fn kind(&self) -> ProtocolKind {
        ProtocolKind::CoinbaseExchange
    }

    /// One subscription for every channel, with `heartbeat` so a quiet
    /// product still shows the connection alive.
    fn subscribe_frames(&self, feed: &FeedConfig) -> Vec<String> {
        let products = product_ids(self, feed);
        let mut channels: Vec<&str> = feed.channels.iter().map(String::as_str).collect();
        if !channels.contains(&"heartbeat") {
            channels.push("heartbeat");
        }
        vec![format!(
            r#"{{"type":"subscribe","product_ids":{products},"channels":{}}}"#,
            Value::from(channels)
        )]
    }

    fn frame_symbol(&self, configured: &str) -> String {
        coinbase_symbol(configured)
    }

    fn instrument(&self, symbol: &str) -> Option<String> {
        coinbase_instrument(symbol)
    }

    fn parse(
        &self,
        text: &str,
        ctx: &ParseCtx<'_>,
        out: &mut Vec<TradeV2>,
    ) -> Result<Frame, FrameError> {
        // One trade per frame: nothing is pushed unless it all checked out.
        let obj = object(text)?;
        match string(&obj, "type")? {
            "match" | "last_match" => {
                out.push(exchange_match(&obj, ctx)?);
                Ok(Frame::Trades(1))
            }
            "subscriptions" => Ok(Frame::Skipped("subscription")),
            "heartbeat" => Ok(Frame::Skipped("heartbeat")),
            "error" => Err(FrameError::Venue(error_text(&obj))),
            "ticker" | "ticker_batch" => Ok(Frame::Skipped("ticker")),
            "snapshot" | "l2update" => Ok(Frame::Skipped("book")),
            "status" => Ok(Frame::Skipped("status")),
            _ => Ok(Frame::Skipped("other")),
        }
    }

    /// `trade_id` runs one by one per product.
    fn contiguous_ids(&self) -> bool {
        true
    }

    /// `GET /products/{id}/trades`, paged by id (`coinbase_rest`).
    fn rest(&self) -> Option<&dyn RestHistory> {
        Some(self)
    }
}

/// The configured products as a JSON array, in the form frames use.
fn product_ids(protocol: &dyn Protocol, feed: &FeedConfig) -> String {
    let ids: Vec<String> = feed
        .symbols
        .iter()
        .map(|s| protocol.frame_symbol(s))
        .collect();
    Value::from(ids).to_string()
}

/// Coinbase writes product ids in upper case with a dash; a configured
/// `btc/usd` is the same product.
fn coinbase_symbol(configured: &str) -> String {
    configured.trim().to_ascii_uppercase().replace('/', "-")
}

/// `BASE` and `QUOTE` of a spot product id `BASE-QUOTE`. Futures ids have
/// more parts (`BIT-31JAN25-CDE`) and no quote currency.
fn product_parts(symbol: &str) -> Option<(&str, &str)> {
    let (base, quote) = symbol.split_once('-')?;
    (!base.is_empty() && !quote.is_empty() && !quote.contains('-')).then_some((base, quote))
}

/// The quote currency of a product, "" when it has none.
fn currency(symbol: &str) -> String {
    product_parts(symbol)
        .map(|(_, quote)| quote.to_ascii_uppercase())
        .unwrap_or_default()
}

fn coinbase_instrument(symbol: &str) -> Option<String> {
    let (base, quote) = product_parts(symbol)?;
    Some(format!(
        "{}-{}",
        base.to_ascii_uppercase(),
        quote.to_ascii_uppercase()
    ))
}

// ------------------------------------------------------- Advanced Trade

fn parse_advanced(
    text: &str,
    ctx: &ParseCtx<'_>,
    out: &mut Vec<TradeV2>,
) -> Result<Frame, FrameError> {
    let obj = object(text)?;
    if obj.get("type").is_some_and(|t| t == "error") {
        return Err(FrameError::Venue(error_text(&obj)));
    }
    let channel = match obj.get("channel") {
        Some(Value::String(c)) => c.as_str(),
        Some(other) => return Err(wrong_type("channel", "string", other)),
        None => return Err(FrameError::Missing("channel")),
    };
    match channel {
        "market_trades" => advanced_trades(&obj, ctx, out),
        "heartbeats" => Ok(Frame::Skipped("heartbeat")),
        "subscriptions" => Ok(Frame::Skipped("subscription")),
        "l2_data" | "level2" => Ok(Frame::Skipped("book")),
        "ticker" | "ticker_batch" => Ok(Frame::Skipped("ticker")),
        "candles" => Ok(Frame::Skipped("candles")),
        "status" => Ok(Frame::Skipped("status")),
        _ => Ok(Frame::Skipped("other")),
    }
}

fn advanced_trades(
    obj: &Map<String, Value>,
    ctx: &ParseCtx<'_>,
    out: &mut Vec<TradeV2>,
) -> Result<Frame, FrameError> {
    let start = out.len();
    for event in array(obj, "events")? {
        let Value::Object(event) = event else {
            return Err(wrong_type("events", "array of objects", event));
        };
        let kind = match string(event, "type")? {
            "snapshot" => "snapshot",
            "update" => "update",
            other => {
                return Err(FrameError::Invalid {
                    field: "type",
                    reason: format!("{other:?} is neither \"snapshot\" nor \"update\""),
                });
            }
        };
        for trade in array(event, "trades")? {
            let Value::Object(trade) = trade else {
                return Err(wrong_type("trades", "array of objects", trade));
            };
            out.push(advanced_trade(trade, kind, ctx)?);
        }
    }
    let n = out.len() - start;
    Ok(if n == 0 {
        Frame::Skipped("empty")
    } else {
        Frame::Trades(n)
    })
}

pub(super) fn advanced_trade(
    t: &Map<String, Value>,
    kind: &'static str,
    ctx: &ParseCtx<'_>,
) -> Result<TradeV2, FrameError> {
    let symbol = product(t, ctx)?;
    let id = id_text(string(t, "trade_id")?, "trade_id")?;
    // The taker's side, as is (see the module doc).
    let side = match string(t, "side")? {
        "BUY" => Side::Buy,
        "SELL" => Side::Sell,
        other => {
            return Err(FrameError::Invalid {
                field: "side",
                reason: format!("{other:?} is neither \"BUY\" nor \"SELL\""),
            });
        }
    };
    Ok(Fill {
        symbol,
        id,
        // Numeric ids are the product's trade sequence.
        sequence: id
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| id.parse().ok())
            .flatten(),
        price: decimal(t, "price")?,
        quantity: decimal(t, "size")?,
        timestamp_us: rfc3339_us(string(t, "time")?, "time")?,
        side,
        conditions: Vec::new(),
        vendor: VendorData::from_iter([("event".to_string(), kind.to_string())]),
    }
    .into_trade(ctx, currency(symbol), coinbase_instrument(symbol)))
}

// ------------------------------------------------------------- Exchange

pub(super) fn exchange_match(
    obj: &Map<String, Value>,
    ctx: &ParseCtx<'_>,
) -> Result<TradeV2, FrameError> {
    let symbol = product(obj, ctx)?;
    let id = integer(obj, "trade_id")?.ok_or(FrameError::Missing("trade_id"))?;
    if id < 0 {
        return Err(FrameError::Invalid {
            field: "trade_id",
            reason: format!("{id} is negative"),
        });
    }
    // The maker's side: the aggressor took the other one.
    let side = match string(obj, "side")? {
        "buy" => Side::Sell,
        "sell" => Side::Buy,
        other => {
            return Err(FrameError::Invalid {
                field: "side",
                reason: format!("{other:?} is neither \"buy\" nor \"sell\""),
            });
        }
    };
    let mut vendor = VendorData::new();
    if let Some(sequence) = integer(obj, "sequence")? {
        vendor.insert("sequence".to_string(), sequence.to_string());
    }
    for name in ["maker_order_id", "taker_order_id"] {
        match obj.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                vendor.insert(name.to_string(), id_text(s, name)?.to_string());
            }
            Some(other) => return Err(wrong_type(name, "string", other)),
        }
    }
    let id_digits = id.to_string();
    Ok(Fill {
        symbol,
        id: &id_digits,
        sequence: Some(id),
        price: decimal(obj, "price")?,
        quantity: decimal(obj, "size")?,
        timestamp_us: rfc3339_us(string(obj, "time")?, "time")?,
        side,
        conditions: Vec::new(),
        vendor,
    }
    .into_trade(ctx, currency(symbol), coinbase_instrument(symbol)))
}

/// `message`, and `reason` when the venue gave one.
fn error_text(obj: &Map<String, Value>) -> String {
    let message = obj
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no error message");
    match obj.get("reason").and_then(Value::as_str) {
        Some(reason) if !reason.is_empty() => format!("{message}: {reason}"),
        _ => message.to_string(),
    }
}

// ----------------------------------------------------------------- both

/// The frame as a JSON object, or why it is not one.
fn object(text: &str) -> Result<Map<String, Value>, FrameError> {
    if text.trim().is_empty() {
        return Err(FrameError::Empty);
    }
    match serde_json::from_str(text).map_err(|e| FrameError::Json(e.to_string()))? {
        Value::Object(m) => Ok(m),
        _ => Err(FrameError::NotObject),
    }
}

/// `product_id`, passed by the exchange's symbol rule.
fn product<'a>(obj: &'a Map<String, Value>, ctx: &ParseCtx<'_>) -> Result<&'a str, FrameError> {
    let symbol = string(obj, "product_id")?;
    ctx.symbols
        .check(symbol)
        .map_err(|source| FrameError::Symbol {
            field: "product_id",
            source,
        })?;
    Ok(symbol)
}

/// An id kept as text: short and printable, so it cannot bloat or garble
/// a record.
fn id_text<'a>(id: &'a str, field: &'static str) -> Result<&'a str, FrameError> {
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        let shown: String = id.chars().take(MAX_ID_LEN).collect();
        return Err(FrameError::Invalid {
            field,
            reason: format!(
                "{shown:?} is not an id (1 to {MAX_ID_LEN} printable ASCII characters)"
            ),
        });
    }
    Ok(id)
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

pub(super) fn wrong_type(field: &'static str, expected: &'static str, got: &Value) -> FrameError {
    FrameError::WrongType {
        field,
        expected,
        got: kind_of(got),
    }
}

fn string<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, FrameError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(wrong_type(field, "string", other)),
        None => Err(FrameError::Missing(field)),
    }
}

fn array<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<&'a [Value], FrameError> {
    match obj.get(field) {
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(wrong_type(field, "array", other)),
        None => Err(FrameError::Missing(field)),
    }
}

pub(super) fn integer(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<i64>, FrameError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| FrameError::Invalid {
            field,
            reason: format!("{n} is not a 64-bit integer"),
        }),
        Some(other) => Err(wrong_type(field, "integer", other)),
    }
}

/// A price or size: Coinbase sends them as strings precisely so they stay
/// exact; a JSON number is not what the protocol promises.
fn decimal(obj: &Map<String, Value>, field: &'static str) -> Result<Dec8, FrameError> {
    let value =
        Dec8::parse(string(obj, field)?).map_err(|source| FrameError::Decimal { field, source })?;
    non_negative(value, field)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::instruments::{Instruments, SymbolRule};
    use crate::model::{AssetClass, message_id};

    /// The shipped Coinbase rule, as the feed gets it.
    fn coinbase() -> SymbolRule {
        Instruments::builtin()
            .unwrap()
            .symbol_rule("COINBASE")
            .unwrap()
            .clone()
    }

    fn parse_with(p: &dyn Protocol, text: &str) -> (Result<Frame, FrameError>, Vec<TradeV2>) {
        let rule = coinbase();
        let ctx = ParseCtx {
            exchange: "COINBASE",
            symbols: &rule,
            received_us: 99,
        };
        let mut out = Vec::new();
        let r = p.parse(text, &ctx, &mut out);
        (r, out)
    }

    fn advanced(text: &str) -> (Result<Frame, FrameError>, Vec<TradeV2>) {
        parse_with(&CoinbaseAdvanced, text)
    }

    fn exchange(text: &str) -> (Result<Frame, FrameError>, Vec<TradeV2>) {
        parse_with(&CoinbaseExchange, text)
    }

    /// A recorded capture of the repository's fixtures.
    fn capture(name: &str) -> PathBuf {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/captures")
            .join(name);
        assert!(p.exists(), "missing capture fixture {}", p.display());
        p
    }

    // Frames of
    // https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels
    // (market trades, heartbeats and subscriptions messages; the page's
    // trade example ends in a trailing comma, dropped here) and of
    // .../websocket/websocket-overview (the error message).
    const MARKET_TRADES: &str = r#"{
        "channel": "market_trades",
        "client_id": "",
        "timestamp": "2023-02-09T20:19:35.39625135Z",
        "sequence_num": 0,
        "events": [
            {
                "type": "snapshot",
                "trades": [
                    {
                        "trade_id": "000000000",
                        "product_id": "ETH-USD",
                        "price": "1260.01",
                        "size": "0.3",
                        "side": "BUY",
                        "time": "2019-08-14T20:42:27.265Z"
                    }
                ]
            }
        ]
    }"#;
    const MARKET_UPDATE: &str = r#"{"channel":"market_trades","client_id":"","timestamp":"2023-02-09T20:19:35.39625135Z","sequence_num":4,"events":[{"type":"update","trades":[{"trade_id":"512346","product_id":"BTC-USD","price":"21921.74","size":"0.06317609","side":"SELL","time":"2023-02-09T20:19:35.384436Z"},{"trade_id":"512347","product_id":"BTC-USD","price":"21921.73","size":"0.00000001","side":"BUY","time":"2023-02-09T20:19:35.384436Z"}]},{"type":"update","trades":[{"trade_id":"99","product_id":"ETH-USDT","price":"1600","size":"2","side":"BUY","time":"2023-02-09T20:19:35Z"}]}]}"#;
    const HEARTBEATS: &str = r#"{"channel":"heartbeats","client_id":"","timestamp":"2023-06-23T20:31:26.122969572Z","sequence_num":0,"events":[{"current_time":"2023-06-23 20:31:56.121961769 +0000 UTC m=+91717.525857105","heartbeat_counter":"3049"}]}"#;
    const SUBSCRIPTIONS: &str = r#"{"channel":"subscriptions","client_id":"","timestamp":"2023-02-09T20:32:58.036498466Z","sequence_num":1,"events":[{"subscriptions":{"market_trades":["ETH-USD"],"heartbeats":["heartbeats"]}}]}"#;
    const ADVANCED_ERROR: &str = r#"{"type":"error","message":"failure to subscribe"}"#;

    // https://docs.cdp.coinbase.com/exchange/websocket-feed/channels
    // (match and heartbeat messages).
    const MATCH: &str = r#"{"type":"match","trade_id":10,"sequence":50,"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","time":"2014-11-07T08:19:27.028459Z","product_id":"BTC-USD","size":"5.23512","price":"400.23","side":"sell"}"#;
    const EXCHANGE_HEARTBEAT: &str = r#"{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD","time":"2014-11-07T08:19:28.464459Z"}"#;

    #[test]
    fn advanced_market_trades_give_every_field() {
        let (r, out) = advanced(MARKET_TRADES);
        assert_eq!(r, Ok(Frame::Trades(1)));
        let want = TradeV2 {
            message_id: message_id("COINBASE", "trade", "ETH-USD", "000000000"),
            trade_id: "COINBASE-000000000".into(),
            symbol: "ETH-USD".into(),
            exchange: "COINBASE".into(),
            asset_class: AssetClass::Crypto,
            timestamp_us: 1_565_815_347_265_000,
            ingestion_timestamp_us: 99,
            price: Dec8::parse("1260.01").unwrap(),
            quantity: Dec8::parse("0.3").unwrap(),
            currency: "USD".into(),
            side: Side::Buy,
            trade_conditions: vec![],
            source_sequence: Some(0),
            platform_sequence: None,
            vendor_data: Some(VendorData::from_iter([("event".into(), "snapshot".into())])),
            instrument: Some("ETH-USD".into()),
        };
        assert_eq!(out, vec![want]);

        let (r, out) = advanced(MARKET_UPDATE);
        assert_eq!(r, Ok(Frame::Trades(3)));
        assert_eq!(
            out.iter()
                .map(|t| (t.trade_id.as_str(), t.side, t.quantity.unscaled()))
                .collect::<Vec<_>>(),
            [
                ("COINBASE-512346", Side::Sell, 6_317_609),
                ("COINBASE-512347", Side::Buy, 1),
                ("COINBASE-99", Side::Buy, 200_000_000),
            ]
        );
        assert_eq!(out[2].currency, "USDT");
        assert_eq!(out[2].timestamp_us, 1_675_973_975_000_000);
        assert_eq!(out[0].source_sequence, Some(512_346));
        assert_eq!(
            out[0].vendor_data.as_ref().unwrap().get("event").unwrap(),
            "update"
        );
        // A trade id that is not a number is kept as text, with no sequence.
        let (_, out) = advanced(&MARKET_UPDATE.replace("\"99\"", "\"a-99\""));
        assert_eq!(
            (out[2].trade_id.as_str(), out[2].source_sequence),
            ("COINBASE-a-99", None)
        );
        let (_, out) = advanced(&MARKET_UPDATE.replace("\"99\"", "\"+99\""));
        assert_eq!(
            (out[2].trade_id.as_str(), out[2].source_sequence),
            ("COINBASE-+99", None)
        );
    }

    #[test]
    fn advanced_control_frames_are_skipped_and_errors_reported() {
        for (frame, kind) in [
            (HEARTBEATS, "heartbeat"),
            (SUBSCRIPTIONS, "subscription"),
            (r#"{"channel":"l2_data","events":[]}"#, "book"),
            (r#"{"channel":"ticker","events":[]}"#, "ticker"),
            (r#"{"channel":"candles","events":[]}"#, "candles"),
            (r#"{"channel":"status","events":[]}"#, "status"),
            (
                r#"{"channel":"futures_balance_summary","events":[]}"#,
                "other",
            ),
            (
                r#"{"channel":"market_trades","events":[{"type":"update","trades":[]}]}"#,
                "empty",
            ),
        ] {
            assert_eq!(
                advanced(frame),
                (Ok(Frame::Skipped(kind)), vec![]),
                "{frame}"
            );
        }
        let e = advanced(ADVANCED_ERROR).0.unwrap_err();
        assert_eq!(e, FrameError::Venue("failure to subscribe".into()));
        assert_eq!(e.class(), "venue_error");
    }

    #[test]
    fn advanced_malformed_frames_get_precise_reasons() {
        let cases = [
            ("", "empty frame"),
            ("[1]", "frame is not a json object"),
            ("{\"channel\":", "invalid json: "),
            (r#"{"events":[]}"#, "missing field `channel`"),
            (
                r#"{"channel":["market_trades"]}"#,
                "field `channel`: expected string, got array",
            ),
            (r#"{"channel":"market_trades"}"#, "missing field `events`"),
            (
                r#"{"channel":"market_trades","events":[1]}"#,
                "field `events`: expected array of objects, got number",
            ),
            (
                r#"{"channel":"market_trades","events":[{"type":"partial","trades":[]}]}"#,
                "field `type`: \"partial\" is neither",
            ),
            (
                r#"{"channel":"market_trades","events":[{"type":"update","trades":{}}]}"#,
                "field `trades`: expected array, got object",
            ),
        ];
        for (frame, reason) in cases {
            let e = advanced(frame).0.unwrap_err().to_string();
            assert!(e.starts_with(reason), "{frame}: {e}");
        }
        let field_cases = [
            (
                r#""price":"21921.73""#,
                r#""price":21921.73"#,
                "field `price`: expected string, got number",
            ),
            (
                r#""size":"0.00000001""#,
                r#""size":"0.000000001""#,
                "field `size`: \"0.000000001\" has more than 8 decimal places",
            ),
            (
                r#""size":"0.00000001""#,
                r#""size":"-1""#,
                "field `size`: -1.00000000 is negative",
            ),
            (
                r#""side":"BUY""#,
                r#""side":"buy""#,
                "field `side`: \"buy\" is neither \"BUY\" nor \"SELL\"",
            ),
            (
                r#""trade_id":"512347""#,
                r#""trade_id":512347"#,
                "field `trade_id`: expected string, got number",
            ),
            (
                r#""trade_id":"512347""#,
                r#""trade_id":"""#,
                "field `trade_id`: \"\" is not an id",
            ),
            (
                r#""trade_id":"512347""#,
                r#""trade_id":"5 7""#,
                "field `trade_id`: \"5 7\" is not an id",
            ),
            (
                r#","time":"2023-02-09T20:19:35Z""#,
                "",
                "missing field `time`",
            ),
            (
                r#""time":"2023-02-09T20:19:35Z""#,
                r#""time":"1675973975""#,
                "field `time`: \"1675973975\" is not an RFC 3339 time",
            ),
            (
                r#""time":"2023-02-09T20:19:35Z""#,
                r#""time":"1969-12-31T23:59:59Z""#,
                "field `time`: \"1969-12-31T23:59:59Z\" is before the epoch",
            ),
        ];
        for (from, to, reason) in field_cases {
            assert!(MARKET_UPDATE.contains(from), "{from}");
            // The bad trade is one among good ones: the frame goes whole.
            let (r, out) = advanced(&MARKET_UPDATE.replacen(from, to, 1));
            let e = r.unwrap_err().to_string();
            assert!(e.starts_with(reason), "{to}: {e}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn symbols_the_rule_refuses_are_malformed_frames() {
        for bad in ["ETHUSD", "eth-usd", "BIT-31JAN25-CDE", "", &"X".repeat(40)] {
            type Parse = fn(&str) -> (Result<Frame, FrameError>, Vec<TradeV2>);
            for (parse, frame) in [
                (advanced as Parse, MARKET_TRADES.replace("ETH-USD", bad)),
                (exchange, MATCH.replace("BTC-USD", bad)),
            ] {
                let (r, out) = parse(&frame);
                let e = r.unwrap_err();
                assert_eq!(e.class(), "bad_symbol", "{bad:?}: {e}");
                assert!(
                    e.to_string().starts_with("field `product_id`: symbol ")
                        && e.to_string().contains("exchanges.COINBASE.symbol_pattern"),
                    "{e}"
                );
                assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn exchange_match_gives_every_field_with_the_taker_side() {
        let (r, out) = exchange(MATCH);
        assert_eq!(r, Ok(Frame::Trades(1)));
        let want = TradeV2 {
            message_id: message_id("COINBASE", "trade", "BTC-USD", "10"),
            trade_id: "COINBASE-10".into(),
            symbol: "BTC-USD".into(),
            exchange: "COINBASE".into(),
            asset_class: AssetClass::Crypto,
            timestamp_us: 1_415_348_367_028_459,
            ingestion_timestamp_us: 99,
            price: Dec8::parse("400.23").unwrap(),
            quantity: Dec8::parse("5.23512").unwrap(),
            currency: "USD".into(),
            // The maker sold: the aggressor bought.
            side: Side::Buy,
            trade_conditions: vec![],
            source_sequence: Some(10),
            platform_sequence: None,
            vendor_data: Some(VendorData::from_iter([
                ("sequence".into(), "50".into()),
                (
                    "maker_order_id".into(),
                    "ac928c66-ca53-498f-9c13-a110027a60e8".into(),
                ),
                (
                    "taker_order_id".into(),
                    "132fb6ae-456b-4654-b4e0-d681ac05cea1".into(),
                ),
            ])),
            instrument: Some("BTC-USD".into()),
        };
        assert_eq!(out, vec![want.clone()]);
        let (_, out) = exchange(&MATCH.replace(r#""side":"sell""#, r#""side":"buy""#));
        assert_eq!(out[0].side, Side::Sell);
        // last_match is the same trade: same ids, so dedup drops a repeat.
        let (r, out) = exchange(&MATCH.replace(r#""type":"match""#, r#""type":"last_match""#));
        assert_eq!(r, Ok(Frame::Trades(1)));
        assert_eq!(out, vec![want]);
    }

    #[test]
    fn exchange_control_frames_and_errors() {
        for (frame, kind) in [
            (EXCHANGE_HEARTBEAT, "heartbeat"),
            (
                r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD"]}]}"#,
                "subscription",
            ),
            (r#"{"type":"ticker","product_id":"BTC-USD"}"#, "ticker"),
            (
                r#"{"type":"l2update","product_id":"BTC-USD","changes":[]}"#,
                "book",
            ),
            (
                r#"{"type":"snapshot","product_id":"BTC-USD","bids":[],"asks":[]}"#,
                "book",
            ),
            (r#"{"type":"received"}"#, "other"),
        ] {
            assert_eq!(
                exchange(frame),
                (Ok(Frame::Skipped(kind)), vec![]),
                "{frame}"
            );
        }
        let e = exchange(r#"{"type":"error","message":"Failed to subscribe","reason":"BTC-XYZ is not a valid product"}"#).0.unwrap_err();
        assert_eq!(
            e,
            FrameError::Venue("Failed to subscribe: BTC-XYZ is not a valid product".into())
        );
        let cases = [
            ("", "empty frame"),
            ("\"match\"", "frame is not a json object"),
            (r#"{"product_id":"BTC-USD"}"#, "missing field `type`"),
            (r#"{"type":1}"#, "field `type`: expected string, got number"),
        ];
        for (frame, reason) in cases {
            assert_eq!(
                exchange(frame).0.unwrap_err().to_string(),
                reason,
                "{frame}"
            );
        }
        let field_cases = [
            (
                r#""trade_id":10"#,
                r#""trade_id":"10""#,
                "field `trade_id`: expected integer, got string",
            ),
            (r#""trade_id":10,"#, "", "missing field `trade_id`"),
            (
                r#""trade_id":10"#,
                r#""trade_id":-10"#,
                "field `trade_id`: -10 is negative",
            ),
            (
                r#""trade_id":10"#,
                r#""trade_id":1.5"#,
                "field `trade_id`: 1.5 is not a 64-bit integer",
            ),
            (
                r#""price":"400.23""#,
                r#""price":400.23"#,
                "field `price`: expected string, got number",
            ),
            (
                r#""size":"5.23512""#,
                r#""size":"5,2""#,
                "field `size`: not a decimal number",
            ),
            (
                r#""side":"sell""#,
                r#""side":"SELL""#,
                "field `side`: \"SELL\" is neither",
            ),
            (
                r#""sequence":50"#,
                r#""sequence":"50""#,
                "field `sequence`: expected integer, got string",
            ),
            (
                r#""maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8""#,
                r#""maker_order_id":7"#,
                "field `maker_order_id`: expected string, got number",
            ),
            (
                r#""time":"2014-11-07T08:19:27.028459Z""#,
                r#""time":"2014-11-07 08:19""#,
                "field `time`: ",
            ),
        ];
        for (from, to, reason) in field_cases {
            assert!(MATCH.contains(from), "{from}");
            let (r, out) = exchange(&MATCH.replacen(from, to, 1));
            let e = r.unwrap_err().to_string();
            assert!(e.starts_with(reason), "{to}: {e}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn subscriptions_and_symbols() {
        let feed = FeedConfig {
            symbols: vec!["btc-usd".into(), "ETH/USD".into()],
            channels: vec!["market_trades".into()],
            ..FeedConfig::default()
        };
        assert_eq!(
            CoinbaseAdvanced.subscribe_frames(&feed),
            [
                r#"{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channel":"market_trades"}"#,
                r#"{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channel":"heartbeats"}"#,
            ]
        );
        let feed = FeedConfig {
            channels: vec!["matches".into()],
            ..feed
        };
        assert_eq!(
            CoinbaseExchange.subscribe_frames(&feed),
            [
                r#"{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channels":["matches","heartbeat"]}"#
            ]
        );
        assert_eq!(
            (CoinbaseAdvanced.keepalive(), CoinbaseExchange.keepalive()),
            (None, None)
        );
        assert_eq!(
            (CoinbaseAdvanced.kind(), CoinbaseExchange.kind()),
            (ProtocolKind::Coinbase, ProtocolKind::CoinbaseExchange)
        );
        assert_eq!(CoinbaseExchange.frame_symbol(" sol-usd"), "SOL-USD");
        for (symbol, instrument) in [
            ("BTC-USD", Some("BTC-USD")),
            ("1INCH-USDT", Some("1INCH-USDT")),
            ("BTCUSD", None),
            ("BIT-31JAN25-CDE", None),
            ("-USD", None),
        ] {
            assert_eq!(
                CoinbaseAdvanced.instrument(symbol).as_deref(),
                instrument,
                "{symbol}"
            );
            assert_eq!(
                CoinbaseExchange.instrument(symbol).as_deref(),
                instrument,
                "{symbol}"
            );
        }
    }

    /// Every frame of the recorded Exchange capture parses: each `match`
    /// and `last_match` a trade, everything else skipped, never an error.
    #[test]
    fn recorded_exchange_capture_parses_whole() {
        let (_, frames) =
            crate::tools::capture::read_capture(&capture("COINBASE.ws.28.0.txt")).unwrap();
        let mut want = Vec::new();
        for f in &frames {
            let v: Value = serde_json::from_str(&f.data).unwrap();
            if v["type"] == "match" || v["type"] == "last_match" {
                want.push(v);
            }
        }
        let matches = want.iter().filter(|v| v["type"] == "match").count();
        assert_eq!((matches, want.len() - matches), (97, 10));
        let mut trades = Vec::new();
        let mut skipped = BTreeMap::new();
        for f in &frames {
            match exchange(&f.data) {
                (Ok(Frame::Trades(1)), mut out) => trades.append(&mut out),
                (Ok(Frame::Skipped(kind)), out) if out.is_empty() => {
                    *skipped.entry(kind).or_insert(0) += 1
                }
                (other, _) => panic!("{other:?}: {}", f.data),
            }
        }
        assert_eq!(trades.len(), want.len());
        for (t, v) in trades.iter().zip(&want) {
            assert_eq!(t.trade_id, format!("COINBASE-{}", v["trade_id"]));
            assert_eq!(t.symbol, v["product_id"]);
            assert_eq!(t.price, Dec8::parse(v["price"].as_str().unwrap()).unwrap());
            assert_eq!(
                t.quantity,
                Dec8::parse(v["size"].as_str().unwrap()).unwrap()
            );
            let time = chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap();
            assert_eq!(t.timestamp_us, time.timestamp_micros());
            let maker_bought = v["side"] == "buy";
            assert_eq!(t.side, if maker_bought { Side::Sell } else { Side::Buy });
            assert_eq!(
                *t.vendor_data.as_ref().unwrap().get("sequence").unwrap(),
                v["sequence"].to_string()
            );
        }
        assert_eq!(
            skipped,
            BTreeMap::from([("book", 9_729), ("subscription", 3), ("ticker", 107)])
        );
    }
}
