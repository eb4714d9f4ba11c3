//! Kraken spot trades over WebSocket, both versions of the protocol.
//!
//! **v2** (`wss://ws.kraken.com/v2`, <https://docs.kraken.com/api/docs/websocket-v2/trade>):
//! JSON objects; `{"channel":"trade","type":"snapshot"|"update","data":[..]}`
//! carries trades whose `price` and `qty` are JSON *numbers*. They are read
//! as the literal text of the frame (serde_json's `RawValue`) and never
//! through a float, so `0.1` stays exactly 0.1. `side` is "the side of the
//! taker order" and `ord_type` "the order type of the taker order", so
//! `side` is the aggressor's as it is; `trade_id` is "a sequence number,
//! unique per book", kept as `source_sequence`.
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
//! and misc, exactly as the frame writes them (JSON escapes undone) and
//! joined by U+001F, in hex, then `-` and how many trades with the same
//! fields came before it in the same frame (`…-0` for the first). So two
//! identical fills in one frame stay two trades, while the same frame seen
//! twice (a replay, a recorder overlap) gives the same ids and dedups. What
//! this cannot tell apart: two identical fills that Kraken sent in two
//! frames (they get the same id; their time, to the microsecond, makes
//! that rare), and a snapshot that regroups into one frame identical fills
//! first seen in two (the second gets a new id). v1 trades have no
//! `source_sequence`.
//!
//! Both versions: heartbeats, status, subscription replies and pongs are
//! skipped; a refused subscription or an error event is a venue error, so
//! it reaches the dead letters and is seen. Symbols are `BASE/QUOTE` as the
//! venue writes them (`XBT/USD` on v1, `BTC/USD` on v2); the instrument
//! and currency normalize Kraken's `XBT` to `BTC` and `XDG` to `DOGE`.
//!
//! Frames are read with serde_json: the members a parser reads are
//! borrowed `&RawValue`s (the JSON text of each value), taken apart one by
//! one so that every refusal names its field. A member the parser reads
//! that is written twice refuses the frame (serde's `duplicate field`, as
//! invalid JSON); members it does not read are not checked for that.

mod rest;
mod v1;
mod v2;

use std::borrow::Cow;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::fill::all_or_nothing;
use super::rest::RestHistory;
use super::{Frame, FrameError, ParseCtx, Protocol};
use crate::config::{FeedConfig, ProtocolKind};
use crate::model::TradeV2;

/// Namespace of the derived ids of v1 trades. Fixed: the same trade must
/// get the same id in every process and every replay.
pub const V1_TRADE_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x4b9d_2f6e_1c3a_5e87_a0b4_7d2c_9e1f_3a58);

/// How often an application ping is sent. Kraken answers `pong`; its own
/// heartbeats come every second on a subscribed connection.
const PING_EVERY: Duration = Duration::from_secs(30);

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
        all_or_nothing(out, |out| v2::parse(text, ctx, out))
    }

    /// `trade_id` is "a sequence number, unique per book".
    fn contiguous_ids(&self) -> bool {
        true
    }

    /// `GET /0/public/Trades` (`rest`).
    fn rest(&self) -> Option<&dyn RestHistory> {
        Some(self)
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
        all_or_nothing(out, |out| v1::parse(text, ctx, out))
    }
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

// ------------------------------------------------------- JSON, read

/// The first byte of the frame's value (after JSON whitespace), which
/// tells an object from an array; an empty frame is refused here.
fn opening(text: &str) -> Result<Option<u8>, FrameError> {
    if text.trim().is_empty() {
        return Err(FrameError::Empty);
    }
    Ok(text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .bytes()
        .next())
}

/// Why a frame whose value is not one the parser reads (an object; on v1
/// also an array) was refused: it is not JSON, or it is JSON of another
/// kind.
fn not_object(text: &str) -> FrameError {
    match serde_json::from_str::<IgnoredAny>(text) {
        Ok(_) => FrameError::NotObject,
        Err(e) => json_error(e),
    }
}

/// The frame's object as `T`, a struct of the members a parser reads.
fn object<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, FrameError> {
    match opening(text)? {
        Some(b'{') => serde_json::from_str(text).map_err(json_error),
        _ => Err(not_object(text)),
    }
}

fn json_error(e: serde_json::Error) -> FrameError {
    FrameError::Json(e.to_string())
}

/// A member of an object as it is written, `null` included: with a plain
/// `Option`, serde_json reads a `null` as an absent member, which would
/// make `"price":null` a missing price instead of one of the wrong type.
/// Fields using this are `#[serde(default)]`, `None` when absent.
fn member<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The member `name`, which must be there.
fn required<'a>(
    value: Option<&'a RawValue>,
    name: &'static str,
) -> Result<&'a RawValue, FrameError> {
    value.ok_or(FrameError::Missing(name))
}

/// What a JSON value is. A `RawValue` holds one valid value with no
/// whitespace around it, so its first byte tells.
fn json_kind(value: &RawValue) -> &'static str {
    match value.get().as_bytes().first() {
        Some(b'"') => "string",
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b't' | b'f') => "bool",
        Some(b'n') => "null",
        _ => "number",
    }
}

/// A JSON string, borrowed from the frame unless it holds escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// A string member, its escapes undone.
fn string<'a>(value: &'a RawValue, name: &'static str) -> Result<Cow<'a, str>, FrameError> {
    if json_kind(value) != "string" {
        return Err(wrong_type(name, "string", value));
    }
    // Still fails on a lone surrogate (`"\ud800"`), which a raw value
    // holds as text.
    let Text(s) = serde_json::from_str(value.get()).map_err(json_error)?;
    Ok(s)
}

/// The items of an array member, each as its JSON text.
fn array<'a>(
    value: &'a RawValue,
    name: &'static str,
    expected: &'static str,
) -> Result<Vec<&'a RawValue>, FrameError> {
    if json_kind(value) != "array" {
        return Err(wrong_type(name, expected, value));
    }
    serde_json::from_str(value.get()).map_err(json_error)
}

fn wrong_type(field: &'static str, expected: &'static str, got: &RawValue) -> FrameError {
    FrameError::WrongType {
        field,
        expected,
        got: json_kind(got).to_string(),
    }
}

#[cfg(test)]
mod tests {
    //! What both versions share, and the helpers of every Kraken test.

    use std::path::{Path, PathBuf};

    use super::*;
    use crate::instruments::{Instruments, SymbolRule};

    /// The shipped Kraken rule, as the feed gets it.
    pub(super) fn kraken() -> SymbolRule {
        Instruments::builtin()
            .unwrap()
            .symbol_rule("KRAKEN")
            .unwrap()
            .clone()
    }

    pub(super) fn parse_with(
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

    pub(super) fn v2(text: &str) -> (Result<Frame, FrameError>, Vec<TradeV2>) {
        let mut out = Vec::new();
        let r = parse_with(&KrakenV2, text, &mut out);
        (r, out)
    }

    pub(super) fn v1(text: &str) -> (Result<Frame, FrameError>, Vec<TradeV2>) {
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
    pub(super) fn capture(name: &str) -> PathBuf {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/captures")
            .join(name);
        assert!(p.exists(), "missing capture fixture {}", p.display());
        p
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

    /// What a value is, told from its text, for every kind of value.
    #[test]
    fn json_kinds_and_strings() {
        for (text, kind) in [
            (r#""x""#, "string"),
            ("{}", "object"),
            ("[1]", "array"),
            ("true", "bool"),
            ("false", "bool"),
            ("null", "null"),
            ("-0.5e3", "number"),
            ("7", "number"),
        ] {
            let value: &RawValue = serde_json::from_str(text).unwrap();
            assert_eq!(json_kind(value), kind, "{text}");
        }
        let plain: &RawValue = serde_json::from_str(r#""BTC/USD""#).unwrap();
        assert!(matches!(string(plain, "s"), Ok(Cow::Borrowed("BTC/USD"))));
        let escaped: &RawValue = serde_json::from_str(r#""BTC\/USD\u00e9""#).unwrap();
        assert_eq!(string(escaped, "s").unwrap(), "BTC/USDé");
        let lone: &RawValue = serde_json::from_str(r#""\ud800""#).unwrap();
        assert_eq!(string(lone, "s").unwrap_err().class(), "invalid_json");
    }
}
