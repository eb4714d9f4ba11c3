//! Kraken spot trades over WebSocket, both versions of the protocol.
//!
//! **v2** (`wss://ws.kraken.com/v2`, <https://docs.kraken.com/api/docs/websocket-v2/trade>):
//! JSON objects; `{"channel":"trade","type":"snapshot"|"update","data":[..]}`
//! carries trades whose `price` and `qty` are JSON *numbers*. They are read
//! as the literal text of the frame (see the `json` module) and never through a
//! float, so `0.1` stays exactly 0.1. `side` is "the side of the taker
//! order" and `ord_type` "the order type of the taker order", so `side` is
//! the aggressor's as it is; `trade_id` is "a sequence number, unique per
//! book", kept as `source_sequence`.
//!
//! The subscription asks for the snapshot (the 50 most recent trades; the
//! documented default): after a reconnect it fills the gap the reconnect
//! left, and because its trades carry Kraken's own ids their message ids
//! repeat exactly, so the feed's dedup (kept across reconnects) and the
//! writer's (read back from the table at start) drop the trades already
//! stored. Without it every trade during a reconnect would be lost.
//!
//! **v1** (`wss://ws.kraken.com`, <https://docs.kraken.com/api/docs/websocket-v1/trade>):
//! arrays `[channelID, [[price, volume, time, side, orderType, misc], ..],
//! "trade", "PAIR"]`, every value a string; `side` (`b`/`s`) is the taker's
//! side and `orderType` (`m`/`l`) the taker's order type. Elements past the
//! sixth of a trade are tolerated and ignored.
//!
//! v1 trades have **no id**. The id of a v1 trade is derived from its
//! fields, deterministically: the v5 UUID (fixed namespace
//! [`V1_TRADE_NAMESPACE`]) of pair, price, volume, time, side, order type
//! and misc, exactly as the frame writes them and joined by U+001F, in
//! hex, then `-` and how many trades with the same fields came before it in
//! the same frame (`…-0` for the first). So two identical fills in one
//! frame stay two trades, while the same frame seen twice (a replay, a
//! recorder overlap) gives the same ids and dedups. What this cannot tell
//! apart: two identical fills that Kraken sent in two frames (they get the
//! same id; their time, to the microsecond, makes that rare), and a
//! snapshot that regroups into one frame identical fills first seen in
//! two (the second gets a new id). v1 trades have no `source_sequence`.
//!
//! Both versions: heartbeats, status, subscription replies and pongs are
//! skipped; a refused subscription or an error event is a venue error, so
//! it reaches the dead letters and is seen. Symbols are `BASE/QUOTE` as the
//! venue writes them (`XBT/USD` on v1, `BTC/USD` on v2); the instrument
//! and currency normalize Kraken's `XBT` to `BTC` and `XDG` to `DOGE`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::{Frame, FrameError, ParseCtx, Protocol};
use crate::config::{FeedConfig, ProtocolKind};
use crate::model::{AssetClass, Dec8, DecimalError, Side, TradeV2, message_id};
use json::Lit;

/// Namespace of the derived ids of v1 trades. Fixed: the same trade must
/// get the same id in every process and every replay.
pub const V1_TRADE_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x4b9d_2f6e_1c3a_5e87_a0b4_7d2c_9e1f_3a58);

/// How often an application ping is sent. Kraken answers `pong`; its own
/// heartbeats come every second on a subscribed connection.
const PING_EVERY: Duration = Duration::from_secs(30);

/// The trade ids of both versions form one id space per symbol (v1's are
/// hex digests, v2's integers; they cannot collide).
const ID_SPACE: &str = "trade";

/// Kraken WebSocket v2: JSON objects, numbers for prices.
pub struct KrakenV2;

/// Kraken WebSocket v1: arrays, strings for prices, no trade ids.
pub struct KrakenV1;

impl Protocol for KrakenV2 {
    fn kind(&self) -> ProtocolKind {
        ProtocolKind::Kraken
    }

    /// One subscription per channel, for every symbol, with the snapshot
    /// (see the module doc for why).
    fn subscribe_frames(&self, feed: &FeedConfig) -> Vec<String> {
        let symbols = json_strings(feed.symbols.iter().map(|s| self.frame_symbol(s)));
        feed.channels
            .iter()
            .map(|channel| {
                format!(
                    r#"{{"method":"subscribe","params":{{"channel":{},"symbol":{symbols},"snapshot":true}}}}"#,
                    serde_json::Value::from(channel.as_str())
                )
            })
            .collect()
    }

    fn keepalive(&self) -> Option<(Duration, String)> {
        Some((PING_EVERY, r#"{"method":"ping"}"#.to_string()))
    }

    fn frame_symbol(&self, configured: &str) -> String {
        kraken_symbol(configured)
    }

    fn instrument(&self, symbol: &str) -> Option<String> {
        kraken_instrument(symbol)
    }

    fn parse(
        &self,
        text: &str,
        ctx: &ParseCtx<'_>,
        out: &mut Vec<TradeV2>,
    ) -> Result<Frame, FrameError> {
        all_or_nothing(out, |out| parse_v2(text, ctx, out))
    }
}

impl Protocol for KrakenV1 {
    fn kind(&self) -> ProtocolKind {
        ProtocolKind::KrakenV1
    }

    /// One subscription per channel (`trade`), for every pair.
    fn subscribe_frames(&self, feed: &FeedConfig) -> Vec<String> {
        let pairs = json_strings(feed.symbols.iter().map(|s| self.frame_symbol(s)));
        feed.channels
            .iter()
            .map(|channel| {
                format!(
                    r#"{{"event":"subscribe","pair":{pairs},"subscription":{{"name":{}}}}}"#,
                    serde_json::Value::from(channel.as_str())
                )
            })
            .collect()
    }

    fn keepalive(&self) -> Option<(Duration, String)> {
        Some((PING_EVERY, r#"{"event":"ping"}"#.to_string()))
    }

    fn frame_symbol(&self, configured: &str) -> String {
        kraken_symbol(configured)
    }

    fn instrument(&self, symbol: &str) -> Option<String> {
        kraken_instrument(symbol)
    }

    fn parse(
        &self,
        text: &str,
        ctx: &ParseCtx<'_>,
        out: &mut Vec<TradeV2>,
    ) -> Result<Frame, FrameError> {
        all_or_nothing(out, |out| parse_v1(text, ctx, out))
    }
}

/// Runs `parse`, which pushes a frame's trades one by one; when it fails
/// part way, the trades it pushed are taken back, so a bad frame adds
/// nothing.
fn all_or_nothing(
    out: &mut Vec<TradeV2>,
    parse: impl FnOnce(&mut Vec<TradeV2>) -> Result<Frame, FrameError>,
) -> Result<Frame, FrameError> {
    let start = out.len();
    let result = parse(out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// `n` trades pushed; a trade message with none is well-formed but empty.
fn trades(n: usize) -> Frame {
    if n == 0 {
        Frame::Skipped("empty")
    } else {
        Frame::Trades(n)
    }
}

/// A JSON array of strings, for the subscription frames.
fn json_strings(items: impl Iterator<Item = String>) -> String {
    serde_json::Value::from(items.collect::<Vec<_>>()).to_string()
}

/// Kraken writes pairs in upper case with a slash; a configured
/// `btc-usd` is the same pair.
fn kraken_symbol(configured: &str) -> String {
    configured.trim().to_ascii_uppercase().replace('-', "/")
}

/// `BASE` and `QUOTE` of `BASE/QUOTE`, both non-empty.
fn pair_parts(symbol: &str) -> Option<(&str, &str)> {
    let (base, quote) = symbol.split_once('/')?;
    (!base.is_empty() && !quote.is_empty() && !quote.contains('/')).then_some((base, quote))
}

/// Kraken's own codes for two assets, as everyone else writes them.
fn normalize_asset(code: &str) -> String {
    match code.to_ascii_uppercase().as_str() {
        "XBT" => "BTC".to_string(),
        "XDG" => "DOGE".to_string(),
        other => other.to_string(),
    }
}

fn kraken_instrument(symbol: &str) -> Option<String> {
    let (base, quote) = pair_parts(symbol)?;
    Some(format!(
        "{}-{}",
        normalize_asset(base),
        normalize_asset(quote)
    ))
}

/// The quote currency of a pair, normalized; "" when it has none.
fn quote_currency(symbol: &str) -> String {
    pair_parts(symbol)
        .map(|(_, quote)| normalize_asset(quote))
        .unwrap_or_default()
}

/// The parsed frame, or why it is not JSON.
fn document(text: &str) -> Result<Lit<'_>, FrameError> {
    if text.trim().is_empty() {
        return Err(FrameError::Empty);
    }
    json::parse(text).map_err(FrameError::Json)
}

// ---------------------------------------------------------------- v2

fn parse_v2(text: &str, ctx: &ParseCtx<'_>, out: &mut Vec<TradeV2>) -> Result<Frame, FrameError> {
    let doc = document(text)?;
    let Lit::Obj(obj) = &doc else {
        return Err(FrameError::NotObject);
    };
    if let Some(method) = field(obj, "method")? {
        return v2_reply(string(method, "method")?, obj);
    }
    let channel = match field(obj, "channel")? {
        Some(c) => string(c, "channel")?,
        None => {
            // A reply to a request the venue could not even read names no
            // method; it still says what went wrong.
            if let Some(error) = field(obj, "error")? {
                return Err(FrameError::Venue(string(error, "error")?.to_string()));
            }
            return Err(FrameError::Missing("channel"));
        }
    };
    match channel {
        "trade" => v2_trades(obj, ctx, out),
        "heartbeat" => Ok(Frame::Skipped("heartbeat")),
        "status" => Ok(Frame::Skipped("status")),
        "book" | "level3" => Ok(Frame::Skipped("book")),
        "ticker" => Ok(Frame::Skipped("ticker")),
        "ohlc" => Ok(Frame::Skipped("ohlc")),
        _ => Ok(Frame::Skipped("other")),
    }
}

/// A reply to a request: `subscribe` / `unsubscribe` acknowledgements
/// (`success` true or false with an `error`), `pong`.
fn v2_reply(method: &str, obj: &Fields<'_>) -> Result<Frame, FrameError> {
    let success = match field(obj, "success")? {
        Some(Lit::Bool(b)) => Some(*b),
        Some(other) => return Err(wrong_type("success", "bool", other)),
        None => None,
    };
    let subscription = matches!(method, "subscribe" | "unsubscribe");
    match success {
        Some(false) => {
            let error = match field(obj, "error")? {
                Some(e) => string(e, "error")?,
                None => "no error message",
            };
            let symbol = match field(obj, "symbol")? {
                Some(Lit::Str(s)) => format!(" ({s})"),
                _ => String::new(),
            };
            Err(FrameError::Venue(format!(
                "{method} refused{symbol}: {error}"
            )))
        }
        None if subscription => Err(FrameError::Missing("success")),
        _ if subscription => Ok(Frame::Skipped("subscription")),
        _ if method == "pong" => Ok(Frame::Skipped("pong")),
        _ => Ok(Frame::Skipped("other")),
    }
}

fn v2_trades(
    obj: &Fields<'_>,
    ctx: &ParseCtx<'_>,
    out: &mut Vec<TradeV2>,
) -> Result<Frame, FrameError> {
    let kind = match string(required(obj, "type")?, "type")? {
        "snapshot" => "snapshot",
        "update" => "update",
        other => {
            return Err(FrameError::Invalid {
                field: "type",
                reason: format!("{other:?} is neither \"snapshot\" nor \"update\""),
            });
        }
    };
    let data = match required(obj, "data")? {
        Lit::Arr(items) => items,
        other => return Err(wrong_type("data", "array", other)),
    };
    let start = out.len();
    for item in data {
        let Lit::Obj(t) = item else {
            return Err(wrong_type("data", "array of objects", item));
        };
        out.push(v2_trade(t, kind, ctx)?);
    }
    Ok(trades(out.len() - start))
}

fn v2_trade(t: &Fields<'_>, kind: &'static str, ctx: &ParseCtx<'_>) -> Result<TradeV2, FrameError> {
    let symbol = string(required(t, "symbol")?, "symbol")?;
    ctx.symbols
        .check(symbol)
        .map_err(|source| FrameError::Symbol {
            field: "symbol",
            source,
        })?;
    let side = match string(required(t, "side")?, "side")? {
        "buy" => Side::Buy,
        "sell" => Side::Sell,
        other => {
            return Err(FrameError::Invalid {
                field: "side",
                reason: format!("{other:?} is neither \"buy\" nor \"sell\""),
            });
        }
    };
    let price = number(t, "price")?;
    let quantity = number(t, "qty")?;
    let order_type = word(string(required(t, "ord_type")?, "ord_type")?, "ord_type")?;
    let id = match required(t, "trade_id")? {
        Lit::Num(n) => *n,
        other => return Err(wrong_type("trade_id", "integer", other)),
    };
    let sequence = sequence_number(id).ok_or_else(|| FrameError::Invalid {
        field: "trade_id",
        reason: format!("{id} is not a non-negative 64-bit integer"),
    })?;
    let timestamp_us = rfc3339_us(string(required(t, "timestamp")?, "timestamp")?, "timestamp")?;
    Ok(Fill {
        symbol,
        id,
        sequence: Some(sequence),
        price,
        quantity,
        timestamp_us,
        side,
        order_type,
        vendor: BTreeMap::from([("type".to_string(), kind.to_string())]),
    }
    .into_trade(ctx))
}

/// A JSON integer literal that is a sequence number: digits only (JSON
/// allows no leading zeros), within `i64`.
fn sequence_number(literal: &str) -> Option<i64> {
    if literal.is_empty() || !literal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    literal.parse().ok()
}

/// A price or quantity sent as a JSON number, from the literal's text.
fn number(obj: &Fields<'_>, name: &'static str) -> Result<Dec8, FrameError> {
    match required(obj, name)? {
        Lit::Num(literal) => exact_decimal(literal, name),
        other => Err(wrong_type(name, "number", other)),
    }
}

/// The exact value of a JSON number literal. A float printer writes small
/// quantities in exponent form (`1e-8`); the point is moved in the text,
/// so those are exact too.
fn exact_decimal(literal: &str, name: &'static str) -> Result<Dec8, FrameError> {
    let plain = plain_decimal(literal).map_err(|source| FrameError::Decimal {
        field: name,
        source,
    })?;
    non_negative(
        Dec8::parse(&plain).map_err(|source| FrameError::Decimal {
            field: name,
            source,
        })?,
        name,
    )
}

/// A JSON number literal without its exponent: `1.5e-5` is `0.000015`,
/// `2E+3` is `2000`. The literal is one the JSON grammar accepted.
fn plain_decimal(literal: &str) -> Result<Cow<'_, str>, DecimalError> {
    let Some(e_at) = literal.find(['e', 'E']) else {
        return Ok(Cow::Borrowed(literal));
    };
    let (mantissa, exponent) = literal.split_at(e_at);
    let exponent: i32 = exponent
        .get(1..)
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| DecimalError::Invalid(literal.to_string()))?;
    // Beyond this no decimal(18,8) can come out: say which way it fails.
    if exponent > 40 {
        return Err(DecimalError::Overflow(literal.to_string()));
    }
    if exponent < -40 {
        return Err(DecimalError::TooManyPlaces(literal.to_string()));
    }
    let (negative, unsigned) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = format!("{int}{frac}");
    // Where the point falls among `digits` once the exponent is applied.
    let point = i64::try_from(int.len()).unwrap_or(i64::MAX) + i64::from(exponent);
    let mut out = String::with_capacity(digits.len() + 48);
    if negative {
        out.push('-');
    }
    match usize::try_from(point) {
        Err(_) | Ok(0) => {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', point.unsigned_abs() as usize));
            out.push_str(&digits);
        }
        Ok(p) if p >= digits.len() => {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', p - digits.len()));
        }
        Ok(p) => {
            let (whole, part) = digits.split_at(p);
            out.push_str(whole);
            out.push('.');
            out.push_str(part);
        }
    }
    Ok(Cow::Owned(out))
}

// ---------------------------------------------------------------- v1

fn parse_v1(text: &str, ctx: &ParseCtx<'_>, out: &mut Vec<TradeV2>) -> Result<Frame, FrameError> {
    match document(text)? {
        Lit::Arr(items) => v1_channel(&items, ctx, out),
        Lit::Obj(obj) => v1_event(&obj),
        _ => Err(FrameError::NotObject),
    }
}

/// `[channelID, payload.., channelName, pair]`: book updates carry two
/// payloads, everything else one.
fn v1_channel(
    items: &[Lit<'_>],
    ctx: &ParseCtx<'_>,
    out: &mut Vec<TradeV2>,
) -> Result<Frame, FrameError> {
    let n = items.len();
    if n < 4 {
        return Err(too_short(n));
    }
    let (Some(payload), Some(name), Some(pair)) = (items.get(1), items.get(n - 2), items.last())
    else {
        return Err(too_short(n));
    };
    let name = string(name, "channelName")?;
    let pair = string(pair, "pair")?;
    match name {
        "trade" => {}
        _ if name.starts_with("book") => return Ok(Frame::Skipped("book")),
        "ticker" => return Ok(Frame::Skipped("ticker")),
        "spread" => return Ok(Frame::Skipped("spread")),
        _ if name.starts_with("ohlc") => return Ok(Frame::Skipped("ohlc")),
        _ => return Ok(Frame::Skipped("other")),
    }
    ctx.symbols
        .check(pair)
        .map_err(|source| FrameError::Symbol {
            field: "pair",
            source,
        })?;
    let Lit::Arr(fills) = payload else {
        return Err(wrong_type("trades", "array", payload));
    };
    // How many trades with the same fields came earlier in this frame.
    let mut seen: HashMap<uuid::Uuid, u32> = HashMap::new();
    let start = out.len();
    for fill in fills {
        out.push(v1_trade(fill, pair, &mut seen, ctx)?);
    }
    Ok(trades(out.len() - start))
}

fn too_short(n: usize) -> FrameError {
    FrameError::Invalid {
        field: "frame",
        reason: format!("a channel message has at least 4 elements, this one {n}"),
    }
}

/// The `i`th element of a v1 trade, a string.
fn element<'l>(fields: &'l [Lit<'_>], i: usize, name: &'static str) -> Result<&'l str, FrameError> {
    string(fields.get(i).ok_or(FrameError::Missing(name))?, name)
}

fn v1_trade(
    fill: &Lit<'_>,
    pair: &str,
    seen: &mut HashMap<uuid::Uuid, u32>,
    ctx: &ParseCtx<'_>,
) -> Result<TradeV2, FrameError> {
    let Lit::Arr(fields) = fill else {
        return Err(wrong_type("trades", "array of arrays", fill));
    };
    let price_text = element(fields, 0, "price")?;
    let volume_text = element(fields, 1, "volume")?;
    let time_text = element(fields, 2, "time")?;
    let side_text = element(fields, 3, "side")?;
    let order_text = element(fields, 4, "orderType")?;
    let misc = element(fields, 5, "misc")?;
    // Kept in the record: a short note, never a payload.
    if misc.len() > 64 || misc.chars().any(char::is_control) {
        return Err(FrameError::Invalid {
            field: "misc",
            reason: format!("{} bytes, or a control character", misc.len()),
        });
    }
    let price = non_negative(decimal(price_text, "price")?, "price")?;
    let quantity = non_negative(decimal(volume_text, "volume")?, "volume")?;
    let timestamp_us = epoch_seconds_us(time_text).ok_or_else(|| FrameError::Invalid {
        field: "time",
        reason: format!("{time_text:?} is not seconds since the epoch (digits, up to 9 decimals)"),
    })?;
    let side = match side_text {
        "b" => Side::Buy,
        "s" => Side::Sell,
        other => {
            return Err(FrameError::Invalid {
                field: "side",
                reason: format!("{other:?} is neither \"b\" nor \"s\""),
            });
        }
    };
    let order_type = match order_text {
        "m" => "market",
        "l" => "limit",
        other => {
            return Err(FrameError::Invalid {
                field: "orderType",
                reason: format!("{other:?} is neither \"m\" nor \"l\""),
            });
        }
    };
    let digest = v1_digest(&[
        pair,
        price_text,
        volume_text,
        time_text,
        side_text,
        order_text,
        misc,
    ]);
    let count = seen.entry(digest).or_insert(0);
    let id = format!("{}-{count}", digest.simple());
    *count += 1;
    let mut vendor = BTreeMap::new();
    if !misc.is_empty() {
        vendor.insert("misc".to_string(), misc.to_string());
    }
    Ok(Fill {
        symbol: pair,
        id: &id,
        sequence: None,
        price,
        quantity,
        timestamp_us,
        side,
        order_type,
        vendor,
    }
    .into_trade(ctx))
}

/// The v5 UUID of a v1 trade's fields joined by U+001F. The join is
/// unambiguous: the fields before the last (misc) are checked numbers,
/// letters and a pair, none of which holds the separator.
fn v1_digest(parts: &[&str]) -> uuid::Uuid {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            key.push(0x1f);
        }
        key.extend_from_slice(p.as_bytes());
    }
    uuid::Uuid::new_v5(&V1_TRADE_NAMESPACE, &key)
}

/// `"1618678142.557535"` seconds as microseconds, from the text: whole
/// seconds, then up to 9 decimals (digits past the sixth are below a
/// microsecond and dropped).
fn epoch_seconds_us(text: &str) -> Option<i64> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if secs.is_empty() || !digits(secs) || !digits(frac) || frac.len() > 9 {
        return None;
    }
    if text.contains('.') && frac.is_empty() {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut micros: i64 = 0;
    for i in 0..6 {
        let d = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        micros = micros * 10 + d;
    }
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// `{"event": ...}` objects.
fn v1_event(obj: &Fields<'_>) -> Result<Frame, FrameError> {
    let event = string(required(obj, "event")?, "event")?;
    match event {
        "heartbeat" => Ok(Frame::Skipped("heartbeat")),
        "systemStatus" => Ok(Frame::Skipped("status")),
        "pong" => Ok(Frame::Skipped("pong")),
        "subscriptionStatus" => match string(required(obj, "status")?, "status")? {
            "subscribed" | "unsubscribed" => Ok(Frame::Skipped("subscription")),
            "error" => Err(FrameError::Venue(v1_error(obj)?)),
            other => Err(FrameError::Invalid {
                field: "status",
                reason: format!("{other:?} is not a subscription status"),
            }),
        },
        "error" => Err(FrameError::Venue(v1_error(obj)?)),
        _ => Ok(Frame::Skipped("other")),
    }
}

/// `errorMessage`, with the pair it is about when there is one.
fn v1_error(obj: &Fields<'_>) -> Result<String, FrameError> {
    let message = match field(obj, "errorMessage")? {
        Some(m) => string(m, "errorMessage")?,
        None => "no error message",
    };
    Ok(match field(obj, "pair")? {
        Some(Lit::Str(pair)) => format!("{pair}: {message}"),
        _ => message.to_string(),
    })
}

// ---------------------------------------------------------------- both

/// One trade of either version, checked, before it becomes a record.
struct Fill<'a> {
    symbol: &'a str,
    /// The trade id as text: v2's integer, v1's derived id.
    id: &'a str,
    sequence: Option<i64>,
    price: Dec8,
    quantity: Dec8,
    timestamp_us: i64,
    side: Side,
    /// `market` or `limit`, the taker's order type.
    order_type: &'a str,
    vendor: BTreeMap<String, String>,
}

impl Fill<'_> {
    fn into_trade(self, ctx: &ParseCtx<'_>) -> TradeV2 {
        TradeV2 {
            message_id: message_id(ctx.exchange, ID_SPACE, self.symbol, self.id),
            trade_id: format!("{}-{}", ctx.exchange, self.id),
            symbol: self.symbol.to_string(),
            exchange: ctx.exchange.to_string(),
            asset_class: AssetClass::Crypto,
            timestamp_us: self.timestamp_us,
            ingestion_timestamp_us: ctx.received_us,
            price: self.price,
            quantity: self.quantity,
            currency: quote_currency(self.symbol),
            side: self.side,
            trade_conditions: vec![self.order_type.to_string()],
            source_sequence: self.sequence,
            platform_sequence: None,
            vendor_data: (!self.vendor.is_empty()).then_some(self.vendor),
            instrument: kraken_instrument(self.symbol),
        }
    }
}

type Fields<'a> = [(Cow<'a, str>, Lit<'a>)];

/// A field of an object; one written twice is refused rather than one of
/// its values picked.
fn field<'l, 'a>(
    obj: &'l Fields<'a>,
    name: &'static str,
) -> Result<Option<&'l Lit<'a>>, FrameError> {
    let mut found = None;
    for (key, value) in obj {
        if key == name {
            if found.is_some() {
                return Err(FrameError::Invalid {
                    field: name,
                    reason: "the field appears twice".into(),
                });
            }
            found = Some(value);
        }
    }
    Ok(found)
}

fn required<'l, 'a>(obj: &'l Fields<'a>, name: &'static str) -> Result<&'l Lit<'a>, FrameError> {
    field(obj, name)?.ok_or(FrameError::Missing(name))
}

fn string<'l>(value: &'l Lit<'_>, name: &'static str) -> Result<&'l str, FrameError> {
    match value {
        Lit::Str(s) => Ok(s),
        other => Err(wrong_type(name, "string", other)),
    }
}

/// A short plain word (`limit`), the form of Kraken's enumerations.
fn word<'s>(value: &'s str, name: &'static str) -> Result<&'s str, FrameError> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if value.is_empty() || value.len() > 32 || !value.bytes().all(plain) {
        return Err(FrameError::Invalid {
            field: name,
            reason: format!("{value:?} is not an order type"),
        });
    }
    Ok(value)
}

fn wrong_type(field: &'static str, expected: &'static str, got: &Lit<'_>) -> FrameError {
    FrameError::WrongType {
        field,
        expected,
        got: got.kind().to_string(),
    }
}

fn decimal(text: &str, name: &'static str) -> Result<Dec8, FrameError> {
    Dec8::parse(text).map_err(|source| FrameError::Decimal {
        field: name,
        source,
    })
}

/// Prices and quantities of a trade are never below zero.
fn non_negative(value: Dec8, name: &'static str) -> Result<Dec8, FrameError> {
    if value.unscaled() < 0 {
        return Err(FrameError::Invalid {
            field: name,
            reason: format!("{value} is negative"),
        });
    }
    Ok(value)
}

/// An RFC 3339 time as microseconds since the epoch (digits below a
/// microsecond dropped); times before the epoch are refused.
fn rfc3339_us(text: &str, name: &'static str) -> Result<i64, FrameError> {
    let t = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| FrameError::Invalid {
        field: name,
        reason: format!("{text:?} is not an RFC 3339 time: {e}"),
    })?;
    let us = t.timestamp_micros();
    if us < 0 {
        return Err(FrameError::Invalid {
            field: name,
            reason: format!("{text:?} is before the epoch"),
        });
    }
    Ok(us)
}

/// A JSON reader that keeps every number as the text it was written as.
///
/// serde_json reads numbers into `u64`, `i64` or `f64` unless built with
/// `arbitrary_precision`, and a price that went through an `f64` is no
/// longer the price Kraken sent. This reads the JSON grammar (RFC 8259) in
/// full, strings borrowed where they hold no escapes, numbers as slices of
/// the frame, with serde_json's nesting limit.
mod json {
    use std::borrow::Cow;

    /// Deepest nesting read, as serde_json's default: a hostile frame of
    /// `[[[[…` must not exhaust the stack.
    const MAX_DEPTH: usize = 128;

    #[derive(Debug, Clone, PartialEq)]
    pub enum Lit<'a> {
        Null,
        Bool(bool),
        /// The literal as written, e.g. `0.5147` or `1e-8`.
        Num(&'a str),
        Str(Cow<'a, str>),
        Arr(Vec<Lit<'a>>),
        /// Members in order, duplicates kept (the caller decides).
        Obj(Vec<(Cow<'a, str>, Lit<'a>)>),
    }

    impl Lit<'_> {
        pub fn kind(&self) -> &'static str {
            match self {
                Lit::Null => "null",
                Lit::Bool(_) => "bool",
                Lit::Num(_) => "number",
                Lit::Str(_) => "string",
                Lit::Arr(_) => "array",
                Lit::Obj(_) => "object",
            }
        }
    }

    /// One JSON value filling the whole text (whitespace around it aside).
    pub fn parse(text: &str) -> Result<Lit<'_>, String> {
        let mut p = Parser {
            text,
            bytes: text.as_bytes(),
            at: 0,
        };
        p.skip_ws();
        let value = p.value(0)?;
        p.skip_ws();
        if p.at != p.bytes.len() {
            return Err(p.error("trailing characters"));
        }
        Ok(value)
    }

    struct Parser<'a> {
        text: &'a str,
        bytes: &'a [u8],
        at: usize,
    }

    impl<'a> Parser<'a> {
        fn error(&self, what: &str) -> String {
            format!("{what} at byte {}", self.at)
        }

        fn peek(&self) -> Option<u8> {
            self.bytes.get(self.at).copied()
        }

        fn eat(&mut self, b: u8) -> bool {
            let here = self.peek() == Some(b);
            if here {
                self.at += 1;
            }
            here
        }

        fn skip_ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.at += 1;
            }
        }

        /// The text between two positions the parser stopped at; both are
        /// at ASCII bytes, so on character boundaries.
        fn slice(&self, from: usize, to: usize) -> Result<&'a str, String> {
            self.text
                .get(from..to)
                .ok_or_else(|| self.error("internal error: not a character boundary"))
        }

        fn value(&mut self, depth: usize) -> Result<Lit<'a>, String> {
            match self.peek() {
                None => Err(self.error("EOF while parsing a value")),
                Some(b'{') => self.object(depth + 1),
                Some(b'[') => self.array(depth + 1),
                Some(b'"') => self.string().map(Lit::Str),
                Some(b't') => self.keyword("true", Lit::Bool(true)),
                Some(b'f') => self.keyword("false", Lit::Bool(false)),
                Some(b'n') => self.keyword("null", Lit::Null),
                Some(b'-' | b'0'..=b'9') => self.number(),
                Some(_) => Err(self.error("expected value")),
            }
        }

        fn keyword(&mut self, word: &str, value: Lit<'a>) -> Result<Lit<'a>, String> {
            if self
                .bytes
                .get(self.at..)
                .is_some_and(|rest| rest.starts_with(word.as_bytes()))
            {
                self.at += word.len();
                Ok(value)
            } else {
                Err(self.error("expected value"))
            }
        }

        fn digits(&mut self) -> usize {
            let from = self.at;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.at += 1;
            }
            self.at - from
        }

        fn number(&mut self) -> Result<Lit<'a>, String> {
            let from = self.at;
            self.eat(b'-');
            match self.peek() {
                Some(b'0') => self.at += 1,
                Some(b'1'..=b'9') => {
                    self.digits();
                }
                _ => return Err(self.error("invalid number")),
            }
            if self.eat(b'.') && self.digits() == 0 {
                return Err(self.error("invalid number: no digit after the point"));
            }
            if matches!(self.peek(), Some(b'e' | b'E')) {
                self.at += 1;
                if matches!(self.peek(), Some(b'+' | b'-')) {
                    self.at += 1;
                }
                if self.digits() == 0 {
                    return Err(self.error("invalid number: no digit in the exponent"));
                }
            }
            Ok(Lit::Num(self.slice(from, self.at)?))
        }

        fn string(&mut self) -> Result<Cow<'a, str>, String> {
            self.at += 1; // the opening quote
            let from = self.at;
            loop {
                match self.peek() {
                    None => return Err(self.error("EOF while parsing a string")),
                    Some(b'"') => {
                        let s = self.slice(from, self.at)?;
                        self.at += 1;
                        return Ok(Cow::Borrowed(s));
                    }
                    Some(b'\\') => break,
                    Some(0x00..=0x1f) => return Err(self.error("control character in a string")),
                    Some(_) => self.at += 1,
                }
            }
            let mut out = self.slice(from, self.at)?.to_string();
            loop {
                match self.peek() {
                    None => return Err(self.error("EOF while parsing a string")),
                    Some(b'"') => {
                        self.at += 1;
                        return Ok(Cow::Owned(out));
                    }
                    Some(b'\\') => {
                        self.at += 1;
                        out.push(self.escape()?);
                    }
                    Some(0x00..=0x1f) => return Err(self.error("control character in a string")),
                    Some(_) => {
                        let run = self.at;
                        while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20)
                        {
                            self.at += 1;
                        }
                        out.push_str(self.slice(run, self.at)?);
                    }
                }
            }
        }

        fn escape(&mut self) -> Result<char, String> {
            let c = self
                .peek()
                .ok_or_else(|| self.error("EOF while parsing a string"))?;
            self.at += 1;
            Ok(match c {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let first = self.hex4()?;
                    if (0xD800..0xDC00).contains(&first) {
                        if !(self.eat(b'\\') && self.eat(b'u')) {
                            return Err(self.error("lone leading surrogate in hex escape"));
                        }
                        let second = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&second) {
                            return Err(self.error("invalid low surrogate in hex escape"));
                        }
                        char::from_u32(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00))
                            .ok_or_else(|| self.error("invalid surrogate pair"))?
                    } else {
                        char::from_u32(first)
                            .ok_or_else(|| self.error("lone trailing surrogate in hex escape"))?
                    }
                }
                _ => return Err(self.error("invalid escape")),
            })
        }

        fn hex4(&mut self) -> Result<u32, String> {
            let mut v = 0;
            for _ in 0..4 {
                let d = self
                    .peek()
                    .and_then(|b| char::from(b).to_digit(16))
                    .ok_or_else(|| self.error("invalid \\u escape"))?;
                v = v * 16 + d;
                self.at += 1;
            }
            Ok(v)
        }

        fn array(&mut self, depth: usize) -> Result<Lit<'a>, String> {
            if depth > MAX_DEPTH {
                return Err(self.error("recursion limit exceeded"));
            }
            self.at += 1;
            self.skip_ws();
            let mut items = Vec::new();
            if self.eat(b']') {
                return Ok(Lit::Arr(items));
            }
            loop {
                items.push(self.value(depth)?);
                self.skip_ws();
                if self.eat(b',') {
                    self.skip_ws();
                } else if self.eat(b']') {
                    return Ok(Lit::Arr(items));
                } else {
                    return Err(self.error("expected `,` or `]`"));
                }
            }
        }

        fn object(&mut self, depth: usize) -> Result<Lit<'a>, String> {
            if depth > MAX_DEPTH {
                return Err(self.error("recursion limit exceeded"));
            }
            self.at += 1;
            self.skip_ws();
            let mut members = Vec::new();
            if self.eat(b'}') {
                return Ok(Lit::Obj(members));
            }
            loop {
                if self.peek() != Some(b'"') {
                    return Err(self.error("expected a string key"));
                }
                let key = self.string()?;
                self.skip_ws();
                if !self.eat(b':') {
                    return Err(self.error("expected `:`"));
                }
                self.skip_ws();
                members.push((key, self.value(depth)?));
                self.skip_ws();
                if self.eat(b',') {
                    self.skip_ws();
                } else if self.eat(b'}') {
                    return Ok(Lit::Obj(members));
                } else {
                    return Err(self.error("expected `,` or `}`"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::instruments::{Instruments, SymbolRule};

    /// The shipped Kraken rule, as the feed gets it.
    fn kraken() -> SymbolRule {
        Instruments::builtin()
            .unwrap()
            .symbol_rule("KRAKEN")
            .unwrap()
            .clone()
    }

    fn parse_with(
        p: &dyn Protocol,
        text: &str,
        out: &mut Vec<TradeV2>,
    ) -> Result<Frame, FrameError> {
        let rule = kraken();
        let ctx = ParseCtx {
            exchange: "KRAKEN",
            symbols: &rule,
            received_us: 77,
        };
        p.parse(text, &ctx, out)
    }

    fn v2(text: &str) -> (Result<Frame, FrameError>, Vec<TradeV2>) {
        let mut out = Vec::new();
        let r = parse_with(&KrakenV2, text, &mut out);
        (r, out)
    }

    fn v1(text: &str) -> (Result<Frame, FrameError>, Vec<TradeV2>) {
        let mut out = Vec::new();
        let r = parse_with(&KrakenV1, text, &mut out);
        (r, out)
    }

    fn feed(symbols: &[&str]) -> FeedConfig {
        FeedConfig {
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
            channels: vec!["trade".to_string()],
            ..FeedConfig::default()
        }
    }

    /// A recorded capture of the repository's fixtures.
    fn capture(name: &str) -> PathBuf {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/captures")
            .join(name);
        assert!(p.exists(), "missing capture fixture {}", p.display());
        p
    }

    // Frames of https://docs.kraken.com/api/docs/websocket-v2/trade (the
    // snapshot example), /heartbeat, /status and /ping.
    const V2_SNAPSHOT: &str = r#"{
        "channel": "trade",
        "type": "snapshot",
        "data": [
            {
                "symbol": "MATIC/USD",
                "side": "buy",
                "price": 0.5147,
                "qty": 6423.46326,
                "ord_type": "limit",
                "trade_id": 4665846,
                "timestamp": "2023-09-25T07:48:36.925533Z"
            },
            {
                "symbol": "MATIC/USD",
                "side": "sell",
                "price": 0.5147,
                "qty": 1136.19677815,
                "ord_type": "market",
                "trade_id": 4665847,
                "timestamp": "2023-09-25T07:49:36.925603Z"
            }
        ]
    }"#;
    const V2_UPDATE: &str = r#"{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"sell","price":26958.7,"qty":0.00012345,"ord_type":"market","trade_id":67592453,"timestamp":"2023-09-25T09:04:31.742648Z"}]}"#;
    const V2_SUB_ACK: &str = r#"{"method":"subscribe","result":{"channel":"trade","snapshot":true,"symbol":"MATIC/USD"},"success":true,"time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z"}"#;
    const V2_SUB_ERROR: &str = r#"{"error":"Currency pair not supported","method":"subscribe","success":false,"symbol":"MATIC/XYZ","time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z"}"#;
    const V2_HEARTBEAT: &str = r#"{"channel":"heartbeat"}"#;
    const V2_STATUS: &str = r#"{"channel":"status","data":[{"api_version":"v2","connection_id":12393906104898154338,"system":"online","version":"2.0.4"}],"type":"update"}"#;
    const V2_PONG: &str = r#"{"method":"pong","req_id":101,"time_in":"2023-09-24T14:10:23.799685Z","time_out":"2023-09-24T14:10:23.799703Z"}"#;

    #[test]
    fn v2_snapshot_gives_every_field() {
        let (r, out) = v2(V2_SNAPSHOT);
        assert_eq!(r, Ok(Frame::Trades(2)));
        let want = TradeV2 {
            message_id: message_id("KRAKEN", "trade", "MATIC/USD", "4665846"),
            trade_id: "KRAKEN-4665846".into(),
            symbol: "MATIC/USD".into(),
            exchange: "KRAKEN".into(),
            asset_class: AssetClass::Crypto,
            timestamp_us: 1_695_628_116_925_533,
            ingestion_timestamp_us: 77,
            price: Dec8::parse("0.5147").unwrap(),
            quantity: Dec8::parse("6423.46326").unwrap(),
            currency: "USD".into(),
            side: Side::Buy,
            trade_conditions: vec!["limit".into()],
            source_sequence: Some(4_665_846),
            platform_sequence: None,
            vendor_data: Some(BTreeMap::from([("type".into(), "snapshot".into())])),
            instrument: Some("MATIC-USD".into()),
        };
        assert_eq!(out[0], want);
        assert_eq!(out[0].price.to_string(), "0.51470000");
        assert_eq!(out[0].quantity.to_string(), "6423.46326000");
        let second = &out[1];
        assert_eq!(
            (second.side, second.trade_conditions.as_slice()),
            (Side::Sell, ["market".to_string()].as_slice())
        );
        assert_eq!(second.quantity.to_string(), "1136.19677815");
        assert_eq!(second.timestamp_us, 1_695_628_176_925_603);
        assert_eq!(second.trade_id, "KRAKEN-4665847");
    }

    #[test]
    fn v2_update_is_exact_where_a_float_is_not() {
        let (r, out) = v2(V2_UPDATE);
        assert_eq!(r, Ok(Frame::Trades(1)));
        let t = &out[0];
        assert_eq!(t.price.unscaled(), 2_695_870_000_000);
        assert_eq!(t.quantity.unscaled(), 12_345);
        assert_eq!(t.currency, "USD");
        assert_eq!(t.instrument.as_deref(), Some("BTC-USD"));
        assert_eq!(t.vendor_data.as_ref().unwrap()["type"], "update");
        // 0.1 + 0.2 as floats is 0.30000000000000004; as text it is not.
        let frame = V2_UPDATE
            .replace("26958.7", "0.30000000000000004")
            .replace("0.00012345", "0.3");
        assert_eq!(v2(&frame).0.unwrap_err().class(), "decimal");
        let frame = V2_UPDATE.replace("0.00012345", "0.30000000");
        assert_eq!(v2(&frame).1[0].quantity.unscaled(), 30_000_000);
        // Exponent forms, as float printers write small numbers.
        for (literal, unscaled) in [
            ("1e-8", 1),
            ("1.5E-5", 1_500),
            ("2e+3", 200_000_000_000),
            ("0.25e1", 250_000_000),
            ("123.456e-2", 123_456_000),
            ("-0e0", 0),
        ] {
            let frame = V2_UPDATE.replace("0.00012345", literal);
            let (r, out) = v2(&frame);
            assert_eq!(r, Ok(Frame::Trades(1)), "{literal}");
            assert_eq!(out[0].quantity.unscaled(), unscaled, "{literal}");
        }
        for literal in ["1e-9", "1e11", "1e99", "1e-99"] {
            let frame = V2_UPDATE.replace("0.00012345", literal);
            assert_eq!(v2(&frame).0.unwrap_err().class(), "decimal", "{literal}");
        }
    }

    #[test]
    fn v2_replies_and_other_channels_are_skipped() {
        for (frame, kind) in [
            (V2_SUB_ACK, "subscription"),
            (V2_HEARTBEAT, "heartbeat"),
            (V2_STATUS, "status"),
            (V2_PONG, "pong"),
            (r#"{"method":"unsubscribe","success":true}"#, "subscription"),
            (r#"{"channel":"book","type":"update","data":[]}"#, "book"),
            (
                r#"{"channel":"ticker","type":"update","data":[]}"#,
                "ticker",
            ),
            (r#"{"channel":"instrument","data":{}}"#, "other"),
            (
                r#"{"channel":"trade","type":"snapshot","data":[]}"#,
                "empty",
            ),
        ] {
            assert_eq!(v2(frame), (Ok(Frame::Skipped(kind)), vec![]), "{frame}");
        }
    }

    #[test]
    fn v2_refusals_and_errors_are_venue_errors() {
        let e = v2(V2_SUB_ERROR).0.unwrap_err();
        assert_eq!(
            e,
            FrameError::Venue("subscribe refused (MATIC/XYZ): Currency pair not supported".into())
        );
        assert_eq!(e.class(), "venue_error");
        let e = v2(r#"{"error":"Malformed request"}"#).0.unwrap_err();
        assert_eq!(e, FrameError::Venue("Malformed request".into()));
        let e = v2(r#"{"method":"subscribe","success":false}"#)
            .0
            .unwrap_err();
        assert_eq!(e.class(), "venue_error");
        let e = v2(r#"{"method":"subscribe"}"#).0.unwrap_err();
        assert_eq!(e, FrameError::Missing("success"));
    }

    #[test]
    fn v2_one_bad_trade_refuses_the_whole_frame() {
        let rule = kraken();
        let ctx = ParseCtx {
            exchange: "KRAKEN",
            symbols: &rule,
            received_us: 1,
        };
        // Earlier frames' trades stay; this frame's good first trade goes.
        let mut out = Vec::new();
        KrakenV2.parse(V2_UPDATE, &ctx, &mut out).unwrap();
        let before = out.clone();
        let bad = V2_SNAPSHOT.replace("1136.19677815", "\"1136.19677815\"");
        let e = KrakenV2.parse(&bad, &ctx, &mut out).unwrap_err();
        assert_eq!(e.to_string(), "field `qty`: expected number, got string");
        assert_eq!(out, before);
    }

    #[test]
    fn v2_malformed_trades_get_precise_reasons() {
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            (r#"{"channel":"trade","#, "invalid_json"),
            (r#"[1,2]"#, "not_object"),
            (r#"{"type":"update"}"#, "missing_field"),
            (r#"{"channel":5}"#, "wrong_type"),
        ];
        for (frame, class) in cases {
            assert_eq!(v2(frame).0.unwrap_err().class(), class, "{frame:?}");
        }
        let field_cases = [
            (
                r#""price":26958.7"#,
                r#""price":"26958.7""#,
                "field `price`: expected number, got string",
            ),
            (
                r#""trade_id":67592453"#,
                r#""trade_id":"67592453""#,
                "field `trade_id`: expected integer, got string",
            ),
            (
                r#""trade_id":67592453"#,
                r#""trade_id":6759.5"#,
                "field `trade_id`: 6759.5 is not a non-negative 64-bit integer",
            ),
            (
                r#""trade_id":67592453"#,
                r#""trade_id":-1"#,
                "field `trade_id`: -1 is not a non-negative 64-bit integer",
            ),
            (
                r#""side":"sell""#,
                r#""side":"s""#,
                "field `side`: \"s\" is neither \"buy\" nor \"sell\"",
            ),
            (r#""qty":0.00012345,"#, "", "missing field `qty`"),
            (
                r#""qty":0.00012345"#,
                r#""qty":-1"#,
                "field `qty`: -1.00000000 is negative",
            ),
            (
                r#""qty":0.00012345"#,
                r#""qty":0.000000001"#,
                "field `qty`: \"0.000000001\" has more than 8 decimal places",
            ),
            (
                r#""ord_type":"market""#,
                r#""ord_type":"a b""#,
                "field `ord_type`: \"a b\" is not an order type",
            ),
            (
                r#""type":"update""#,
                r#""type":"delta""#,
                "field `type`: \"delta\" is neither \"snapshot\" nor \"update\"",
            ),
            (
                r#""data":["#,
                r#""data":{"x":["#,
                "invalid json: expected `,` or `}` at byte",
            ),
            (
                r#"[{"symbol""#,
                r#"[5,{"symbol""#,
                "field `data`: expected array of objects, got number",
            ),
            (
                r#""side":"sell""#,
                r#""side":"sell","side":"buy""#,
                "field `side`: the field appears twice",
            ),
        ];
        for (from, to, reason) in field_cases {
            assert!(V2_UPDATE.contains(from), "{from}");
            let bad = V2_UPDATE.replacen(from, to, 1);
            let (r, out) = v2(&bad);
            let e = r.unwrap_err().to_string();
            assert!(e.starts_with(reason), "{bad}: {e}");
            assert!(out.is_empty());
        }
        let e = v2(&V2_UPDATE.replace("2023-09-25T09:04:31.742648Z", "yesterday"))
            .0
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("field `timestamp`: \"yesterday\" is not an RFC 3339 time"),
            "{e}"
        );
    }

    #[test]
    fn v2_symbols_the_rule_refuses_are_malformed_frames() {
        for bad in ["BTCUSD", "btc/usd", "BTC/USD/EUR", "", &"X".repeat(40)] {
            let frame = V2_UPDATE.replace("BTC/USD", bad);
            let (r, out) = v2(&frame);
            let e = r.unwrap_err();
            assert_eq!(e.class(), "bad_symbol", "{bad:?}: {e}");
            assert!(
                e.to_string().starts_with("field `symbol`: symbol ")
                    && e.to_string().contains("exchanges.KRAKEN.symbol_pattern"),
                "{e}"
            );
            assert!(out.is_empty());
        }
    }

    #[test]
    fn subscriptions_keepalives_and_symbols() {
        let f = feed(&["btc/usd", "ETH-USD"]);
        assert_eq!(
            KrakenV2.subscribe_frames(&f),
            vec![
                r#"{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD","ETH/USD"],"snapshot":true}}"#
            ]
        );
        assert_eq!(
            KrakenV1.subscribe_frames(&f),
            vec![
                r#"{"event":"subscribe","pair":["BTC/USD","ETH/USD"],"subscription":{"name":"trade"}}"#
            ]
        );
        assert_eq!(
            KrakenV2.keepalive(),
            Some((Duration::from_secs(30), r#"{"method":"ping"}"#.to_string()))
        );
        assert_eq!(
            KrakenV1.keepalive(),
            Some((Duration::from_secs(30), r#"{"event":"ping"}"#.to_string()))
        );
        assert_eq!(KrakenV1.frame_symbol(" xbt/usd "), "XBT/USD");
        assert_eq!(
            (KrakenV2.kind(), KrakenV1.kind()),
            (ProtocolKind::Kraken, ProtocolKind::KrakenV1)
        );
        for (symbol, instrument) in [
            ("XBT/USD", Some("BTC-USD")),
            ("XDG/USD", Some("DOGE-USD")),
            ("BTC/USD", Some("BTC-USD")),
            ("ETH/XBT", Some("ETH-BTC")),
            ("1INCH/USD", Some("1INCH-USD")),
            ("BTCUSD", None),
            ("/USD", None),
            ("BTC/", None),
            ("A/B/C", None),
        ] {
            assert_eq!(
                KrakenV2.instrument(symbol).as_deref(),
                instrument,
                "{symbol}"
            );
            assert_eq!(
                KrakenV1.instrument(symbol).as_deref(),
                instrument,
                "{symbol}"
            );
        }
        assert_eq!(quote_currency("ETH/XBT"), "BTC");
        assert_eq!(quote_currency("XDG/USDT"), "USDT");
    }

    // v1 frames as in https://docs.kraken.com/api/docs/websocket-v1/trade,
    // /heartbeat, /systemstatus, /subscriptionstatus and /ping.
    const V1_TRADE: &str = r#"[0,[["5541.20000","0.15850568","1534614057.321597","s","l",""],["6060.00000","0.02455000","1534614057.324998","b","l",""]],"trade","XBT/USD"]"#;

    #[test]
    fn v1_trade_gives_every_field() {
        let (r, out) = v1(V1_TRADE);
        assert_eq!(r, Ok(Frame::Trades(2)));
        let id = format!(
            "{}-0",
            v1_digest(&[
                "XBT/USD",
                "5541.20000",
                "0.15850568",
                "1534614057.321597",
                "s",
                "l",
                ""
            ])
            .simple()
        );
        let want = TradeV2 {
            message_id: message_id("KRAKEN", "trade", "XBT/USD", &id),
            trade_id: format!("KRAKEN-{id}"),
            symbol: "XBT/USD".into(),
            exchange: "KRAKEN".into(),
            asset_class: AssetClass::Crypto,
            timestamp_us: 1_534_614_057_321_597,
            ingestion_timestamp_us: 77,
            price: Dec8::parse("5541.2").unwrap(),
            quantity: Dec8::parse("0.15850568").unwrap(),
            currency: "USD".into(),
            side: Side::Sell,
            trade_conditions: vec!["limit".into()],
            source_sequence: None,
            platform_sequence: None,
            vendor_data: None,
            instrument: Some("BTC-USD".into()),
        };
        assert_eq!(out[0], want);
        assert_eq!(out[1].side, Side::Buy);
        assert_eq!(id.len(), 34);
        // misc, when there is one, is kept; a market order says so.
        let frame = V1_TRADE.replacen(r#""s","l","""#, r#""b","m","l""#, 1);
        let (_, out) = v1(&frame);
        assert_eq!(out[0].vendor_data.as_ref().unwrap()["misc"], "l");
        assert_eq!(
            (out[0].side, out[0].trade_conditions[0].as_str()),
            (Side::Buy, "market")
        );
    }

    #[test]
    fn v1_ids_are_deterministic_and_count_repeats_within_a_frame() {
        let (_, first) = v1(V1_TRADE);
        let (_, again) = v1(V1_TRADE);
        assert_eq!(first, again);
        assert_ne!(first[0].trade_id, first[1].trade_id);
        // Two identical fills in one frame are two trades.
        let fill = r#"["5541.20000","0.15850568","1534614057.321597","s","l",""]"#;
        let twice = format!(r#"[0,[{fill},{fill}],"trade","XBT/USD"]"#);
        let (r, out) = v1(&twice);
        assert_eq!(r, Ok(Frame::Trades(2)));
        assert!(out[0].trade_id.ends_with("-0") && out[1].trade_id.ends_with("-1"));
        assert_eq!(out[0].trade_id, first[0].trade_id);
        assert_ne!(out[0].message_id, out[1].message_id);
        // The pair is part of the id; so is each field.
        let other_pair = twice.replace("XBT/USD", "ETH/USD");
        assert_ne!(v1(&other_pair).1[0].trade_id, out[0].trade_id);
        let other_misc = V1_TRADE.replacen(r#""s","l","""#, r#""s","l","x""#, 1);
        assert_ne!(v1(&other_misc).1[0].trade_id, first[0].trade_id);
        // Newer fields after the sixth are tolerated.
        let longer = V1_TRADE.replacen(r#""s","l","""#, r#""s","l","",12345"#, 1);
        assert_eq!(v1(&longer).1, first);
    }

    #[test]
    fn v1_times_are_read_exactly() {
        for (text, us) in [
            ("1618678142.557535", Some(1_618_678_142_557_535)),
            ("1618678142", Some(1_618_678_142_000_000)),
            ("1618678142.5", Some(1_618_678_142_500_000)),
            ("1618678142.000001", Some(1_618_678_142_000_001)),
            ("1618678142.123456789", Some(1_618_678_142_123_456)),
            ("0.000001", Some(1)),
            ("1618678142.", None),
            (".5", None),
            ("-1.5", None),
            ("1e9", None),
            ("1.1234567890", None),
            ("1.2.3", None),
            ("", None),
            ("99999999999999999999", None),
            ("9223372036854.775807", Some(i64::MAX)),
            ("9223372036854.775808", None),
        ] {
            assert_eq!(epoch_seconds_us(text), us, "{text:?}");
        }
    }

    #[test]
    fn v1_events_and_other_channels() {
        for (frame, kind) in [
            (r#"{"event":"heartbeat"}"#, "heartbeat"),
            (
                r#"{"connectionID":8628615390848610000,"event":"systemStatus","status":"online","version":"1.0.0"}"#,
                "status",
            ),
            (
                r#"{"channelID":10001,"channelName":"trade","event":"subscriptionStatus","pair":"XBT/USD","status":"subscribed","subscription":{"name":"trade"}}"#,
                "subscription",
            ),
            (r#"{"event":"pong","reqid":42}"#, "pong"),
            (r#"[1360,{"as":[],"bs":[]},"book-1000","ADA/XBT"]"#, "book"),
            (
                r#"[1920,{"a":[["0.042990","364630.28272081","1618678145.920470"]]},{"b":[],"c":"4105471083"},"book-1000","SC/EUR"]"#,
                "book",
            ),
            (
                r#"[340,{"a":["5525.40000",1,"1.000"]},"ticker","XBT/USD"]"#,
                "ticker",
            ),
            (
                r#"[0,["5698.40000","5700.00000"],"spread","XBT/USD"]"#,
                "spread",
            ),
            (r#"[42,["1542057314.748456"],"ohlc-5","XBT/USD"]"#, "ohlc"),
            (r#"{"event":"somethingNew"}"#, "other"),
            (r#"[0,[],"trade","XBT/USD"]"#, "empty"),
        ] {
            assert_eq!(v1(frame), (Ok(Frame::Skipped(kind)), vec![]), "{frame}");
        }
        let e = v1(r#"{"channelName":"book-42","errorMessage":"Subscription depth not supported","event":"subscriptionStatus","pair":"XBT/USD","status":"error","subscription":{"depth":42,"name":"book"}}"#).0.unwrap_err();
        assert_eq!(
            e,
            FrameError::Venue("XBT/USD: Subscription depth not supported".into())
        );
        let e = v1(r#"{"errorMessage":"Malformed request","event":"error"}"#)
            .0
            .unwrap_err();
        assert_eq!(e, FrameError::Venue("Malformed request".into()));
    }

    #[test]
    fn v1_malformed_frames_get_precise_reasons() {
        let cases = [
            ("", "empty frame"),
            ("7", "frame is not a json object"),
            (r#"{"status":"online"}"#, "missing field `event`"),
            (
                r#"[0,"trade","XBT/USD"]"#,
                "field `frame`: a channel message has at least 4 elements, this one 3",
            ),
            (
                r#"[0,[],5,"XBT/USD"]"#,
                "field `channelName`: expected string, got number",
            ),
            (
                r#"[0,{},"trade","XBT/USD"]"#,
                "field `trades`: expected array, got object",
            ),
            (
                r#"[0,[{}],"trade","XBT/USD"]"#,
                "field `trades`: expected array of arrays, got object",
            ),
            (
                r#"[0,[["1","2","3","b","l"]],"trade","XBT/USD"]"#,
                "missing field `misc`",
            ),
            (
                r#"[0,[[1.5,"2","3","b","l",""]],"trade","XBT/USD"]"#,
                "field `price`: expected string, got number",
            ),
            (
                r#"[0,[["1","2","3","x","l",""]],"trade","XBT/USD"]"#,
                "field `side`: \"x\" is neither \"b\" nor \"s\"",
            ),
            (
                r#"[0,[["1","2","3","b","q",""]],"trade","XBT/USD"]"#,
                "field `orderType`: \"q\" is neither \"m\" nor \"l\"",
            ),
            (
                r#"[0,[["1","2","3.x","b","l",""]],"trade","XBT/USD"]"#,
                "field `time`: \"3.x\" is not seconds since the epoch (digits, up to 9 decimals)",
            ),
            (
                r#"[0,[["1,5","2","3","b","l",""]],"trade","XBT/USD"]"#,
                "field `price`: not a decimal number: \"1,5\"",
            ),
            (
                r#"[0,[["1","2","3","b","l",""]],"trade","XBTUSD"]"#,
                "field `pair`: symbol \"XBTUSD\" does not match exchanges.KRAKEN.symbol_pattern",
            ),
            (
                r#"{"event":"subscriptionStatus","status":"maybe"}"#,
                "field `status`: \"maybe\" is not a subscription status",
            ),
            (
                r#"[0,[["1","2","3","b","l","\u0007"]],"trade","XBT/USD"]"#,
                "field `misc`: 1 bytes, or a control character",
            ),
        ];
        for (frame, reason) in cases {
            let (r, out) = v1(frame);
            let e = r.unwrap_err().to_string();
            assert!(e.starts_with(reason), "{frame}: {e}");
            assert!(out.is_empty());
        }
        // One bad trade among good ones: nothing of the frame is kept.
        let bad = V1_TRADE.replace("6060.00000", "6060.000000001");
        let (r, out) = v1(&bad);
        assert_eq!(r.unwrap_err().class(), "decimal");
        assert!(out.is_empty());
    }

    /// The v1 trades of a capture counted from the raw lines, apart from
    /// the parser: the inner arrays of every `"trade"` channel message.
    fn count_trades(frames: &[String]) -> Vec<Vec<String>> {
        let mut fills = Vec::new();
        for f in frames {
            let Ok(serde_json::Value::Array(items)) = serde_json::from_str(f) else {
                continue;
            };
            if items.len() == 4 && items[2] == "trade" {
                for fill in items[1].as_array().unwrap() {
                    let fields = fill.as_array().unwrap();
                    fills.push(
                        fields[..3]
                            .iter()
                            .map(|v| v.as_str().unwrap().to_string())
                            .collect(),
                    );
                }
            }
        }
        fills
    }

    /// Every frame of the recorded Kraken v1 captures parses (trades or
    /// skipped, never an error), with the trades counted independently.
    #[test]
    fn recorded_v1_captures_parse_whole() {
        let mut totals = Vec::new();
        for name in ["KRAKEN.ws.48.0.txt", "KRAKEN.ws.50.0.txt"] {
            let (_, captured) = crate::tools::capture::read_capture(&capture(name)).unwrap();
            let frames: Vec<String> = captured.into_iter().map(|f| f.data).collect();
            let want = count_trades(&frames);
            let mut out = Vec::new();
            let mut skipped = 0;
            for f in &frames {
                match parse_with(&KrakenV1, f, &mut out) {
                    Ok(Frame::Trades(_)) => {}
                    Ok(Frame::Skipped(_)) => skipped += 1,
                    Err(e) => panic!("{name}: {e}: {f}"),
                }
            }
            assert_eq!(out.len(), want.len(), "{name}");
            for (t, fields) in out.iter().zip(&want) {
                assert_eq!(t.price, Dec8::parse(&fields[0]).unwrap());
                assert_eq!(t.quantity, Dec8::parse(&fields[1]).unwrap());
                let time = format!(
                    "{}.{:06}",
                    t.timestamp_us / 1_000_000,
                    t.timestamp_us % 1_000_000
                );
                assert_eq!(time, fields[2]);
                assert!(t.trade_id.starts_with("KRAKEN-"));
                assert_eq!(kraken().check(&t.symbol), Ok(()));
            }
            let ids: std::collections::HashSet<_> = out.iter().map(|t| &t.message_id).collect();
            assert_eq!(ids.len(), out.len(), "{name}: derived ids collide");
            totals.push((name, frames.len(), out.len(), skipped));
        }
        assert_eq!(
            totals,
            [
                ("KRAKEN.ws.48.0.txt", 49, 10, 41),
                ("KRAKEN.ws.50.0.txt", 4321, 0, 4321)
            ]
        );
    }

    /// Every pair Kraken listed when the captures were recorded (the
    /// `wsname`s of the AssetPairs reply in KRAKEN.jsonl) passes the
    /// shipped pattern and has an instrument.
    #[test]
    fn shipped_pattern_accepts_every_listed_pair() {
        let text = std::fs::read_to_string(capture("KRAKEN.jsonl")).unwrap();
        let rule = kraken();
        let mut seen = 0;
        for line in text.lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let url = record["url"].as_str().unwrap_or("");
            if record["t"] != "http" || !url.contains("AssetPairs") {
                continue;
            }
            let reply: serde_json::Value =
                serde_json::from_str(record["data"].as_str().unwrap()).unwrap();
            for pair in reply["result"].as_object().unwrap().values() {
                if let Some(ws) = pair["wsname"].as_str() {
                    assert_eq!(rule.check(ws), Ok(()), "{ws}");
                    assert!(kraken_instrument(ws).is_some(), "{ws}");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 293);
    }

    #[test]
    fn json_reader_keeps_literals_and_follows_the_grammar() {
        use json::{Lit, parse};
        assert_eq!(
            parse(r#" {"a":[1.50,-0,2e-3,true,false,null,"x\"\u00e9\ud83d\ude00\n"]} "#).unwrap(),
            Lit::Obj(vec![(
                Cow::Borrowed("a"),
                Lit::Arr(vec![
                    Lit::Num("1.50"),
                    Lit::Num("-0"),
                    Lit::Num("2e-3"),
                    Lit::Bool(true),
                    Lit::Bool(false),
                    Lit::Null,
                    Lit::Str(Cow::Owned("x\"é😀\n".into())),
                ])
            )])
        );
        assert_eq!(
            parse(r#""plain""#).unwrap(),
            Lit::Str(Cow::Borrowed("plain"))
        );
        assert_eq!(parse("[]").unwrap(), Lit::Arr(vec![]));
        assert_eq!(parse("{ }").unwrap(), Lit::Obj(vec![]));
        for bad in [
            "",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "[1,]",
            "{\"a\":1,}",
            "{a:1}",
            "[1 2]",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\u12\"",
            "\"a\u{1}\"",
            "\"open",
            "tru",
            "nul",
            "[",
            "{\"a\"",
            "{\"a\":",
            "1 2",
            "NaN",
            "Infinity",
            "\u{feff}1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        let deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(parse(&deep).is_ok());
        let deeper = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert!(parse(&deeper).unwrap_err().contains("recursion limit"));
        // Everything serde_json reads, this reads alike (strings, nesting).
        for text in [
            r#"{"k":"v","n":[{"m":{}}],"e":"\/\b\f\r\t"}"#,
            r#"["\u0041\u00DF\u6771\uD834\uDD1E"]"#,
        ] {
            let ours = parse(text).unwrap();
            let theirs: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(format!("{:?}", to_value(&ours)), format!("{theirs:?}"));
        }
    }

    /// The reader accepts exactly what serde_json accepts, and reads the
    /// same value, on frames mutated byte by byte (a small deterministic
    /// fuzzer; tests/fuzz.rs runs the parsers on many more).
    #[test]
    fn json_reader_agrees_with_serde_json_on_mutated_frames() {
        let mut seeds: Vec<String> = [V2_SNAPSHOT, V2_UPDATE, V2_SUB_ERROR, V2_STATUS, V1_TRADE]
            .iter()
            .map(|s| s.to_string())
            .collect();
        seeds.push(r#"{"a":"\u00e9\ud83d\ude00\n","b":[-0.5e+3,true,null,{}]}"#.to_string());
        let alphabet = b"{}[]\",:.-+eE0123456789\\u \tntfalsrx\x01\xc3\xa9";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut agreed = (0, 0);
        for seed in &seeds {
            for _ in 0..2_000 {
                let mut bytes = seed.as_bytes().to_vec();
                for _ in 0..1 + next() % 3 {
                    let at = (next() % bytes.len() as u64) as usize;
                    let b = alphabet[(next() % alphabet.len() as u64) as usize];
                    match next() % 3 {
                        0 => bytes[at] = b,
                        1 => bytes.insert(at, b),
                        _ => {
                            bytes.remove(at);
                        }
                    }
                }
                let Ok(text) = String::from_utf8(bytes) else {
                    continue;
                };
                let theirs = serde_json::from_str::<serde_json::Value>(&text);
                match (json::parse(&text), theirs) {
                    (Ok(ours), Ok(theirs)) => {
                        assert_eq!(to_value(&ours), theirs, "{text}");
                        agreed.0 += 1;
                    }
                    (Err(_), Err(_)) => agreed.1 += 1,
                    // serde_json reads numbers into f64 and refuses what
                    // overflows it; the text of such a number is fine.
                    (Ok(_), Err(e)) if e.to_string().contains("number out of range") => {}
                    (ours, theirs) => panic!("{text}: ours {ours:?}, serde_json {theirs:?}"),
                }
            }
        }
        assert!(agreed.0 > 500 && agreed.1 > 5_000, "{agreed:?}");
    }

    fn to_value(l: &Lit<'_>) -> serde_json::Value {
        match l {
            Lit::Null => serde_json::Value::Null,
            Lit::Bool(b) => (*b).into(),
            Lit::Num(n) => serde_json::from_str(n).unwrap(),
            Lit::Str(s) => s.to_string().into(),
            Lit::Arr(a) => a.iter().map(to_value).collect(),
            Lit::Obj(o) => o
                .iter()
                .map(|(k, v)| (k.to_string(), to_value(v)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }
}
