//! Binance spot (and Binance.US, same protocol) `trade` and `aggTrade` frames,
//! raw or wrapped by the combined stream as `{"stream":..,"data":{..}}`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{FrameError, Parsed};
use crate::instruments::SymbolRule;
use crate::model::{AssetClass, Dec8, Side, TradeV2, message_id};

/// Quote currencies, longest first so `FDUSD` wins over `USD`.
const QUOTES: &[&str] = &[
    "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "DAI", "BTC", "ETH", "BNB", "EUR", "GBP",
    "TRY", "BRL", "AUD", "JPY", "USD", "XRP", "TRX", "DOT",
];

/// The quote currency a Binance symbol is priced in, or "" when unknown.
pub fn quote_currency(symbol: &str) -> &'static str {
    QUOTES
        .iter()
        .find(|q| symbol.len() > q.len() && symbol.ends_with(*q))
        .copied()
        .unwrap_or("")
}

/// Parses one text frame received from a Binance WebSocket. A trade's
/// symbol must pass `symbols`, the exchange's rule from the instruments file.
pub fn parse_frame(
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
    // The maker bought, so the aggressor sold.
    let side = if buyer_is_maker {
        Side::Sell
    } else {
        Side::Buy
    };

    let mut vendor = BTreeMap::new();
    vendor.insert("stream".to_string(), kind.to_string());
    if let Some(e) = optional_integer(obj, "E")? {
        vendor.insert("event_time_ms".to_string(), e.to_string());
    }
    if kind == "aggTrade" {
        if let Some(f) = optional_integer(obj, "f")? {
            vendor.insert("first_trade_id".to_string(), f.to_string());
        }
        if let Some(l) = optional_integer(obj, "l")? {
            vendor.insert("last_trade_id".to_string(), l.to_string());
        }
    }

    let id_text = id.to_string();
    Ok(TradeV2 {
        message_id: message_id(exchange, kind, symbol, &id_text),
        trade_id: format!("{exchange}-{id_text}"),
        symbol: symbol.to_string(),
        exchange: exchange.to_string(),
        asset_class: AssetClass::Crypto,
        timestamp_us,
        ingestion_timestamp_us: received_us,
        price,
        quantity,
        currency: quote_currency(symbol).to_string(),
        side,
        trade_conditions: Vec::new(),
        source_sequence: Some(id),
        platform_sequence: None,
        vendor_data: Some(vendor),
    })
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
        assert_eq!(t.source_sequence, Some(668_497_736));
        let v = t.vendor_data.unwrap();
        assert_eq!(v["stream"], "aggTrade");
        assert_eq!(v["first_trade_id"], "756431580");
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
