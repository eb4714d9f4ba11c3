//! Kraken WebSocket v1 frames: channel messages as arrays of strings,
//! events as objects; the ids of trades derived from their fields (see
//! the parent module's doc).

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Frame, FrameError, ParseCtx, V1_TRADE_NAMESPACE, array, json_error, json_kind,
    kraken_instrument, member, not_object, opening, quote_currency, required, string, trades,
};
use crate::exchanges::fill::{Fill, non_negative};
use crate::model::{Dec8, Side, TradeV2, VendorData};

/// The members of a v1 event (`{"event": ...}`) that are read.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Event<'a> {
    #[serde(borrow, deserialize_with = "member")]
    event: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "member")]
    status: Option<&'a RawValue>,
    #[serde(rename = "errorMessage", borrow, deserialize_with = "member")]
    error_message: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "member")]
    pair: Option<&'a RawValue>,
}

pub(super) fn parse(
    text: &str,
    ctx: &ParseCtx<'_>,
    out: &mut Vec<TradeV2>,
) -> Result<Frame, FrameError> {
    match opening(text)? {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(json_error)?;
            channel(&items, ctx, out)
        }
        Some(b'{') => event(&serde_json::from_str(text).map_err(json_error)?),
        _ => Err(not_object(text)),
    }
}

/// `[channelID, payload.., channelName, pair]`: book updates carry two
/// payloads, everything else one.
fn channel(
    items: &[&RawValue],
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
    match name.as_ref() {
        "trade" => {}
        name if name.starts_with("book") => return Ok(Frame::Skipped("book")),
        "ticker" => return Ok(Frame::Skipped("ticker")),
        "spread" => return Ok(Frame::Skipped("spread")),
        name if name.starts_with("ohlc") => return Ok(Frame::Skipped("ohlc")),
        _ => return Ok(Frame::Skipped("other")),
    }
    ctx.symbols
        .check(&pair)
        .map_err(|source| FrameError::Symbol {
            field: "pair",
            source,
        })?;
    let fills = array(payload, "trades", "array")?;
    // How many trades with the same fields came earlier in this frame.
    let mut seen: HashMap<uuid::Uuid, u32> = HashMap::new();
    let start = out.len();
    for fill in fills {
        out.push(trade(fill, &pair, &mut seen, ctx)?);
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
fn element<'a>(
    fields: &[&'a RawValue],
    i: usize,
    name: &'static str,
) -> Result<Cow<'a, str>, FrameError> {
    string(fields.get(i).ok_or(FrameError::Missing(name))?, name)
}

fn trade(
    fill: &RawValue,
    pair: &str,
    seen: &mut HashMap<uuid::Uuid, u32>,
    ctx: &ParseCtx<'_>,
) -> Result<TradeV2, FrameError> {
    let fields = array(fill, "trades", "array of arrays")?;
    let price_text = element(&fields, 0, "price")?;
    let volume_text = element(&fields, 1, "volume")?;
    let time_text = element(&fields, 2, "time")?;
    let side_text = element(&fields, 3, "side")?;
    let order_text = element(&fields, 4, "orderType")?;
    let misc = element(&fields, 5, "misc")?;
    // Kept in the record: a short note, never a payload.
    if misc.len() > 64 || misc.chars().any(char::is_control) {
        return Err(FrameError::Invalid {
            field: "misc",
            reason: format!("{} bytes, or a control character", misc.len()),
        });
    }
    let price = non_negative(decimal(&price_text, "price")?, "price")?;
    let quantity = non_negative(decimal(&volume_text, "volume")?, "volume")?;
    let timestamp_us = epoch_seconds_us(&time_text).ok_or_else(|| FrameError::Invalid {
        field: "time",
        reason: format!("{time_text:?} is not seconds since the epoch (digits, up to 9 decimals)"),
    })?;
    let side = match side_text.as_ref() {
        "b" => Side::Buy,
        "s" => Side::Sell,
        other => {
            return Err(FrameError::Invalid {
                field: "side",
                reason: format!("{other:?} is neither \"b\" nor \"s\""),
            });
        }
    };
    let order_type = match order_text.as_ref() {
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
        &price_text,
        &volume_text,
        &time_text,
        &side_text,
        &order_text,
        &misc,
    ]);
    let count = seen.entry(digest).or_insert(0);
    let id = format!("{}-{count}", digest.simple());
    *count += 1;
    let mut vendor = VendorData::new();
    if !misc.is_empty() {
        vendor.insert("misc".to_string(), misc.into_owned());
    }
    Ok(Fill {
        symbol: pair,
        id: &id,
        sequence: None,
        price,
        quantity,
        timestamp_us,
        side,
        conditions: vec![order_type.to_string()],
        vendor,
    }
    .into_trade(ctx, quote_currency(pair), kraken_instrument(pair)))
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

fn decimal(text: &str, name: &'static str) -> Result<Dec8, FrameError> {
    Dec8::parse(text).map_err(|source| FrameError::Decimal {
        field: name,
        source,
    })
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
fn event(obj: &Event<'_>) -> Result<Frame, FrameError> {
    let event = string(required(obj.event, "event")?, "event")?;
    match event.as_ref() {
        "heartbeat" => Ok(Frame::Skipped("heartbeat")),
        "systemStatus" => Ok(Frame::Skipped("status")),
        "pong" => Ok(Frame::Skipped("pong")),
        "subscriptionStatus" => match string(required(obj.status, "status")?, "status")?.as_ref() {
            "subscribed" | "unsubscribed" => Ok(Frame::Skipped("subscription")),
            "error" => Err(FrameError::Venue(error(obj)?)),
            other => Err(FrameError::Invalid {
                field: "status",
                reason: format!("{other:?} is not a subscription status"),
            }),
        },
        "error" => Err(FrameError::Venue(error(obj)?)),
        _ => Ok(Frame::Skipped("other")),
    }
}

/// `errorMessage`, with the pair it is about when there is one.
fn error(obj: &Event<'_>) -> Result<String, FrameError> {
    let message = match obj.error_message {
        Some(m) => string(m, "errorMessage")?,
        None => Cow::Borrowed("no error message"),
    };
    Ok(match obj.pair {
        Some(pair) if json_kind(pair) == "string" => {
            format!("{}: {message}", string(pair, "pair")?)
        }
        _ => message.into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::KrakenV1;
    use super::super::tests::{capture, kraken, parse_with, v1};
    use super::{epoch_seconds_us, v1_digest};
    use crate::exchanges::{Frame, FrameError};
    use crate::model::{AssetClass, Dec8, Side, TradeV2, message_id};

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
        assert_eq!(
            out[0].vendor_data.as_ref().unwrap().get("misc").unwrap(),
            "l"
        );
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

    /// The derived ids of two frames, as the parser first derived them:
    /// what a store holds must keep deduplicating. Escapes are undone
    /// before the fields are hashed.
    #[test]
    fn v1_ids_are_pinned() {
        let escaped = r#"[0,[["5541.2000\u0030","0.15850568","1534614057.321597","s","l","\u0041"],["6060.00000","0.02455000","1534614057.324998","b","l","\/x"]],"trade","XBT\/USD"]"#;
        for (frame, want) in [
            (
                V1_TRADE,
                [
                    (
                        "KRAKEN-ed6234ab37c05f659f59bc3f9dd27cb2-0",
                        "15780f75-87a4-5f6e-978f-5706755f906d",
                    ),
                    (
                        "KRAKEN-bde3f756d18653a18fa1f6f7ced3ef78-0",
                        "bc849b3e-9c0b-5219-9d85-d6a88b4acc04",
                    ),
                ],
            ),
            (
                escaped,
                [
                    (
                        "KRAKEN-b2543be44f9352f9a88937af20b9836c-0",
                        "18cf3540-c042-5cc6-a467-eb1f47d8a298",
                    ),
                    (
                        "KRAKEN-cee80a7d66345b0da3484494843c8f27-0",
                        "7b56a0f3-9303-5be5-b52a-040f46c8de52",
                    ),
                ],
            ),
        ] {
            let (r, out) = v1(frame);
            assert_eq!(r, Ok(Frame::Trades(2)), "{frame}");
            let ids: Vec<_> = out
                .iter()
                .map(|t| (t.trade_id.as_str(), t.message_id.as_str()))
                .collect();
            assert_eq!(ids, want, "{frame}");
            assert_eq!(out[0].symbol, "XBT/USD");
        }
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
}
