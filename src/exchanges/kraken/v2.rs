//! Kraken WebSocket v2 frames: JSON objects, prices and quantities as JSON
//! numbers, read from their literal text.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Frame, FrameError, ParseCtx, array, json_error, json_kind, kraken_instrument, member, object,
    quote_currency, required, string, trades, wrong_type,
};
use crate::exchanges::fill::{Fill, non_negative, rfc3339_us};
use crate::model::{Dec8, DecimalError, Side, TradeV2, VendorData};

/// The members of a v2 frame that are read, each as its JSON text.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Message<'a> {
    #[serde(borrow, deserialize_with = "member")]
    method: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "member")]
    channel: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "member")]
    error: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "member")]
    success: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "member")]
    symbol: Option<&'a RawValue>,
    #[serde(rename = "type", borrow, deserialize_with = "member")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "member")]
    data: Option<&'a RawValue>,
}

/// The members of one trade of a `trade` message.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Trade<'a> {
    #[serde(borrow, deserialize_with = "member")]
    symbol: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "member")]
    side: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "member")]
    price: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "member")]
    qty: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "member")]
    ord_type: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "member")]
    trade_id: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "member")]
    timestamp: Option<&'a RawValue>,
}

pub(super) fn parse(
    text: &str,
    ctx: &ParseCtx<'_>,
    out: &mut Vec<TradeV2>,
) -> Result<Frame, FrameError> {
    let msg: Message<'_> = object(text)?;
    if let Some(method) = msg.method {
        return reply(&string(method, "method")?, &msg);
    }
    let channel = match msg.channel {
        Some(c) => string(c, "channel")?,
        None => {
            // A reply to a request the venue could not even read names no
            // method; it still says what went wrong.
            if let Some(error) = msg.error {
                return Err(FrameError::Venue(string(error, "error")?.into_owned()));
            }
            return Err(FrameError::Missing("channel"));
        }
    };
    match channel.as_ref() {
        "trade" => trade_message(&msg, ctx, out),
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
fn reply(method: &str, msg: &Message<'_>) -> Result<Frame, FrameError> {
    let success = match msg.success {
        Some(b) if json_kind(b) == "bool" => {
            Some(serde_json::from_str::<bool>(b.get()).map_err(json_error)?)
        }
        Some(other) => return Err(wrong_type("success", "bool", other)),
        None => None,
    };
    let subscription = matches!(method, "subscribe" | "unsubscribe");
    match success {
        Some(false) => {
            let error = match msg.error {
                Some(e) => string(e, "error")?,
                None => Cow::Borrowed("no error message"),
            };
            let symbol = match msg.symbol {
                Some(s) if json_kind(s) == "string" => format!(" ({})", string(s, "symbol")?),
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

fn trade_message(
    msg: &Message<'_>,
    ctx: &ParseCtx<'_>,
    out: &mut Vec<TradeV2>,
) -> Result<Frame, FrameError> {
    let kind = match string(required(msg.kind, "type")?, "type")?.as_ref() {
        "snapshot" => "snapshot",
        "update" => "update",
        other => {
            return Err(FrameError::Invalid {
                field: "type",
                reason: format!("{other:?} is neither \"snapshot\" nor \"update\""),
            });
        }
    };
    let data = array(required(msg.data, "data")?, "data", "array")?;
    let start = out.len();
    for item in data {
        if json_kind(item) != "object" {
            return Err(wrong_type("data", "array of objects", item));
        }
        let t: Trade<'_> = serde_json::from_str(item.get()).map_err(json_error)?;
        out.push(trade(&t, kind, ctx)?);
    }
    Ok(trades(out.len() - start))
}

fn trade(t: &Trade<'_>, kind: &'static str, ctx: &ParseCtx<'_>) -> Result<TradeV2, FrameError> {
    let symbol = string(required(t.symbol, "symbol")?, "symbol")?;
    ctx.symbols
        .check(&symbol)
        .map_err(|source| FrameError::Symbol {
            field: "symbol",
            source,
        })?;
    let side = match string(required(t.side, "side")?, "side")?.as_ref() {
        "buy" => Side::Buy,
        "sell" => Side::Sell,
        other => {
            return Err(FrameError::Invalid {
                field: "side",
                reason: format!("{other:?} is neither \"buy\" nor \"sell\""),
            });
        }
    };
    let price = number(t.price, "price")?;
    let quantity = number(t.qty, "qty")?;
    let order_type = string(required(t.ord_type, "ord_type")?, "ord_type")?;
    word(&order_type, "ord_type")?;
    let id = match required(t.trade_id, "trade_id")? {
        n if json_kind(n) == "number" => n.get(),
        other => return Err(wrong_type("trade_id", "integer", other)),
    };
    let sequence = sequence_number(id).ok_or_else(|| FrameError::Invalid {
        field: "trade_id",
        reason: format!("{id} is not a non-negative 64-bit integer"),
    })?;
    let timestamp = string(required(t.timestamp, "timestamp")?, "timestamp")?;
    let timestamp_us = rfc3339_us(&timestamp, "timestamp")?;
    Ok(Fill {
        symbol: &symbol,
        id,
        sequence: Some(sequence),
        price,
        quantity,
        timestamp_us,
        side,
        conditions: vec![order_type.to_string()],
        vendor: VendorData::from_iter([("type".to_string(), kind.to_string())]),
    }
    .into_trade(ctx, quote_currency(&symbol), kraken_instrument(&symbol)))
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
fn number(value: Option<&RawValue>, name: &'static str) -> Result<Dec8, FrameError> {
    match required(value, name)? {
        n if json_kind(n) == "number" => exact_decimal(n.get(), name),
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

/// A short plain word (`limit`), the form of Kraken's enumerations.
fn word(value: &str, name: &'static str) -> Result<(), FrameError> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if value.is_empty() || value.len() > 32 || !value.bytes().all(plain) {
        return Err(FrameError::Invalid {
            field: name,
            reason: format!("{value:?} is not an order type"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{kraken, v2};
    use super::super::{KrakenV2, ParseCtx};
    use crate::exchanges::{Frame, FrameError, Protocol};
    use crate::model::{AssetClass, Dec8, Side, TradeV2, VendorData, message_id};

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
            vendor_data: Some(VendorData::from_iter([("type".into(), "snapshot".into())])),
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
        assert_eq!(
            t.vendor_data.as_ref().unwrap().get("type").unwrap(),
            "update"
        );
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
            // The frame's outer object is left open: serde_json's wording.
            (
                r#""data":["#,
                r#""data":{"x":["#,
                "invalid json: EOF while parsing an object at line 1 column",
            ),
            (
                r#"[{"symbol""#,
                r#"[5,{"symbol""#,
                "field `data`: expected array of objects, got number",
            ),
            // A member read twice: serde's derived struct refuses it, as
            // invalid JSON rather than a refusal of the field.
            (
                r#""side":"sell""#,
                r#""side":"sell","side":"buy""#,
                "invalid json: duplicate field `side`",
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

    /// Strings are read with their escapes undone, and a `null` is a value
    /// of the wrong type, not a missing member.
    #[test]
    fn v2_escapes_and_nulls() {
        let frame = V2_UPDATE
            .replace(r#""BTC/USD""#, r#""BTC\/USD""#)
            .replace(r#""market""#, r#""m\u0061rket""#);
        let (r, out) = v2(&frame);
        assert_eq!(r, Ok(Frame::Trades(1)), "{frame}");
        assert_eq!(out, v2(V2_UPDATE).1);
        for (from, to, reason) in [
            (
                r#""price":26958.7"#,
                r#""price":null"#,
                "field `price`: expected number, got null",
            ),
            (
                r#""symbol":"BTC/USD""#,
                r#""symbol":null"#,
                "field `symbol`: expected string, got null",
            ),
            (r#""side":"sell""#, r#""side":"\ud800""#, "invalid json: "),
        ] {
            let (r, out) = v2(&V2_UPDATE.replacen(from, to, 1));
            let e = r.unwrap_err().to_string();
            assert!(e.starts_with(reason), "{to}: {e}");
            assert!(out.is_empty());
        }
        let e = v2(r#"{"method":"subscribe","success":null}"#)
            .0
            .unwrap_err();
        assert_eq!(e.to_string(), "field `success`: expected bool, got null");
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
}
