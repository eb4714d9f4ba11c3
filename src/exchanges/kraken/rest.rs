//! Kraken's public REST trade history for the v2 feed
//! (<https://docs.kraken.com/api/docs/rest-api/get-recent-trades>):
//! `GET /0/public/Trades?pair=XBTUSD&since=<ns>&count=<n>` answers
//! `{"error":[],"result":{"XXBTZUSD":[[price, volume, time, side,
//! ordertype, misc, trade_id], ..],"last":"<ns>"}}`, at most 1000 trades
//! in time order after `since` (a Unix time in nanoseconds); `last` is the
//! `since` of the next page. Prices and volumes are strings, the time is
//! seconds as a JSON number (read from its text, never through a float),
//! `side` (`b`/`s`) the taker's and `ordertype` (`m`/`l`) the taker's
//! order's, as v2's `side` and `ord_type`; `trade_id` is the id v2 sends.
//!
//! The pair: REST takes Kraken's own pair names (the `altname` `XBTUSD`,
//! or `XXBTZUSD`), not v2's `BTC/USD`. A v1 `wsname` without its slash is
//! the `altname` of every pair Kraken lists (see the test on the recorded
//! AssetPairs reply), and v2 names differ from v1's only in writing `BTC`
//! and `DOGE` for Kraken's `XBT` and `XDG`. The reply is keyed by yet
//! another name (`XXBTZUSD`), so the one member besides `last` is read,
//! whatever its name.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    KrakenV2, array, json_error, json_kind, kraken_instrument, member, object, pair_parts,
    quote_currency, required, string, wrong_type,
};
use crate::exchanges::fill::{Fill, non_negative};
use crate::exchanges::rest::{GapSpan, RestHistory, check_trade_gap};
use crate::exchanges::{FrameError, ParseCtx};
use crate::model::{Dec8, Side, TradeV2, VendorData};

/// Kraken serves at most this many trades a page.
const MAX_PAGE: u32 = 1000;

/// How long before the last trade seen the first page starts. `since` is
/// exclusive and compared with Kraken's own clock, finer than the
/// microseconds v2 shows (and the REST time's float), so a gap's first
/// trade at the very time of the one before it could fall just before a
/// `since` of exactly that time. The trades of this millisecond that are
/// not the gap's cost nothing: the caller keeps the gap's ids only.
const LOOK_BACK_NS: i64 = 1_000_000;

/// The members of a reply that are read.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Reply<'a> {
    #[serde(borrow, deserialize_with = "member")]
    error: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "member")]
    result: Option<&'a RawValue>,
}

/// The members of a trade, in order; a trade of more is read up to these.
const TRADE_FIELDS: [&str; 7] = [
    "price",
    "volume",
    "time",
    "side",
    "ordertype",
    "misc",
    "trade_id",
];

impl RestHistory for KrakenV2 {
    /// From just before the last trade seen before the gap (or, when its
    /// time is unknown, the latest trades), then from the previous page's
    /// `last`.
    fn page_path(&self, gap: &GapSpan, cursor: Option<&str>, limit: u32) -> String {
        let since = match cursor {
            Some(c) => format!("&since={}", query(c)),
            None if gap.after_us > 0 => format!(
                "&since={}",
                gap.after_us
                    .saturating_mul(1000)
                    .saturating_sub(LOOK_BACK_NS)
                    .max(0)
            ),
            None => String::new(),
        };
        format!(
            "/0/public/Trades?pair={}{since}&count={}",
            query(&rest_pair(&gap.symbol)),
            limit.clamp(1, MAX_PAGE)
        )
    }

    /// The next page starts at `last`, until a page reaches the gap's last
    /// id or holds nothing (the history's end).
    fn parse_page(
        &self,
        body: &str,
        gap: &GapSpan,
        ctx: &ParseCtx<'_>,
        out: &mut Vec<TradeV2>,
    ) -> Result<Option<String>, FrameError> {
        check_trade_gap(gap, ctx, "Kraken")?;
        let reply: Reply<'_> = object(body)?;
        if let Some(error) = reply.error {
            let errors = array(error, "error", "array of strings")?;
            if !errors.is_empty() {
                let texts = errors
                    .iter()
                    .map(|e| string(e, "error").map(|s| s.into_owned()))
                    .collect::<Result<Vec<_>, _>>()?;
                return Err(FrameError::Venue(texts.join("; ")));
            }
        }
        let result = required(reply.result, "result")?;
        if json_kind(result) != "object" {
            return Err(wrong_type("result", "object", result));
        }
        let members: BTreeMap<String, &RawValue> =
            serde_json::from_str(result.get()).map_err(json_error)?;
        let next = cursor(required(members.get("last").copied(), "last")?)?;
        let mut pairs = members.iter().filter(|(name, _)| *name != "last");
        let (_, items) = pairs.next().ok_or(FrameError::Missing("trades"))?;
        if let Some((name, _)) = pairs.next() {
            return Err(FrameError::Invalid {
                field: "result",
                reason: format!("holds the trades of more than one pair ({name:?})"),
            });
        }
        // Read whole before any is pushed: a bad page adds nothing.
        let mut trades = Vec::new();
        let mut highest = None;
        for item in array(items, "trades", "array of trades")? {
            let (t, id) = trade(item, gap, ctx)?;
            highest = highest.max(Some(id));
            trades.push(t);
        }
        out.append(&mut trades);
        Ok(match highest {
            Some(id) if id < gap.to_id => Some(next),
            _ => None,
        })
    }
}

/// The pair as REST names it: `BTC/USD` is `XBTUSD`.
fn rest_pair(symbol: &str) -> String {
    let kraken = |code: &str| match code {
        "BTC" => "XBT".to_string(),
        "DOGE" => "XDG".to_string(),
        other => other.to_string(),
    };
    match pair_parts(symbol) {
        Some((base, quote)) => format!("{}{}", kraken(base), kraken(quote)),
        None => symbol.replace('/', ""),
    }
}

/// A value for a query string, percent-encoded.
fn query(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// `last`, a time in nanoseconds (a string of digits; a number is taken
/// too), which goes into the next page's URL as it is.
fn cursor(last: &RawValue) -> Result<String, FrameError> {
    let text = match json_kind(last) {
        "string" => string(last, "last")?.into_owned(),
        "number" => last.get().to_string(),
        _ => return Err(wrong_type("last", "string of digits", last)),
    };
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FrameError::Invalid {
            field: "last",
            reason: format!("{text:?} is not a time in nanoseconds"),
        });
    }
    Ok(text)
}

/// One trade as v2 would give it, and its id.
fn trade(item: &RawValue, gap: &GapSpan, ctx: &ParseCtx<'_>) -> Result<(TradeV2, i64), FrameError> {
    let fields = array(item, "trades", "array of trades")?;
    let field = |i: usize| {
        fields
            .get(i)
            .copied()
            .ok_or(FrameError::Missing(TRADE_FIELDS[i]))
    };
    let price = decimal(field(0)?, "price")?;
    let quantity = decimal(field(1)?, "volume")?;
    let time = field(2)?;
    if json_kind(time) != "number" {
        return Err(wrong_type("time", "number", time));
    }
    let timestamp_us = seconds_us(time.get(), "time")?;
    let side = match string(field(3)?, "side")?.as_ref() {
        "b" => Side::Buy,
        "s" => Side::Sell,
        other => {
            return Err(FrameError::Invalid {
                field: "side",
                reason: format!("{other:?} is neither \"b\" nor \"s\""),
            });
        }
    };
    // v2's `ord_type` words.
    let order_type = match string(field(4)?, "ordertype")?.as_ref() {
        "m" => "market",
        "l" => "limit",
        other => {
            return Err(FrameError::Invalid {
                field: "ordertype",
                reason: format!("{other:?} is neither \"m\" nor \"l\""),
            });
        }
    };
    string(field(5)?, "misc")?;
    let id_value = field(6)?;
    if json_kind(id_value) != "number" {
        return Err(wrong_type("trade_id", "integer", id_value));
    }
    // JSON writes an integer without leading zeros, so its text is the id
    // v2 writes.
    let id_text = id_value.get();
    let id = id_text
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| id_text.parse::<i64>().ok())
        .flatten()
        .ok_or_else(|| FrameError::Invalid {
            field: "trade_id",
            reason: format!("{id_text} is not a non-negative 64-bit integer"),
        })?;
    let t = Fill {
        symbol: &gap.symbol,
        id: id_text,
        sequence: Some(id),
        price,
        quantity,
        timestamp_us,
        side,
        conditions: vec![order_type.to_string()],
        vendor: VendorData::from_iter([("source".to_string(), "rest".to_string())]),
    }
    .into_trade(
        ctx,
        quote_currency(&gap.symbol),
        kraken_instrument(&gap.symbol),
    );
    Ok((t, id))
}

/// A price or volume: a decimal string.
fn decimal(value: &RawValue, field: &'static str) -> Result<Dec8, FrameError> {
    let text = string(value, field)?;
    let d = Dec8::parse(&text).map_err(|source| FrameError::Decimal { field, source })?;
    non_negative(d, field)
}

/// Seconds since the epoch, as a plain JSON number literal
/// (`1616663618.7592`), in microseconds; digits below a microsecond are
/// dropped, as for v2's RFC 3339 times.
fn seconds_us(literal: &str, field: &'static str) -> Result<i64, FrameError> {
    let invalid = |why: &str| FrameError::Invalid {
        field,
        reason: format!("{literal} {why}"),
    };
    let (whole, fraction) = literal.split_once('.').unwrap_or((literal, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) {
        return Err(invalid("is not a time in seconds since the epoch"));
    }
    let micros: i64 = format!("{:0<6}", &fraction[..fraction.len().min(6)])
        .parse()
        .map_err(|_| invalid("is not a time in seconds since the epoch"))?;
    whole
        .parse::<i64>()
        .ok()
        .and_then(|s| s.checked_mul(1_000_000))
        .and_then(|us| us.checked_add(micros))
        .ok_or_else(|| invalid("is out of range"))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{capture, v2};
    use super::super::{KrakenV1, normalize_asset};
    use super::*;
    use crate::exchanges::Protocol;
    use crate::exchanges::rest::testing;
    use crate::model::message_id;

    // The example of the Get Recent Trades page (two of its trades), and
    // the same trades as a v2 `trade` message.
    const PAGE: &str = r#"{"error":[],"result":{"XXBTZUSD":[["30243.40000","0.34507674",1688669597.8277369,"b","m","",61044952],["30243.30000","0.00376960",1688669598.2804112,"s","l","",61044953]],"last":"1688671969993150842"}}"#;
    const V2_FRAME: &str = r#"{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy","price":30243.4,"qty":0.34507674,"ord_type":"market","trade_id":61044952,"timestamp":"2023-07-06T18:53:17.827736Z"},{"symbol":"BTC/USD","side":"sell","price":30243.3,"qty":0.0037696,"ord_type":"limit","trade_id":61044953,"timestamp":"2023-07-06T18:53:18.280411Z"}]}"#;
    const AFTER_US: i64 = 1_688_669_597_000_000;

    fn gap(from_id: i64, to_id: i64) -> GapSpan {
        testing::gap("BTC/USD", "trade", from_id, to_id, AFTER_US)
    }

    fn parse(
        body: &str,
        gap: &GapSpan,
        out: &mut Vec<TradeV2>,
    ) -> Result<Option<String>, FrameError> {
        testing::parse(&KrakenV2, "KRAKEN", 77, body, gap, out)
    }

    /// A page of `n` trades with ids from `first` on.
    fn page(first: i64, n: i64, last: &str) -> String {
        let trades: Vec<String> = (first..first + n)
            .map(|id| format!(r#"["1.5","2",1688669597.5,"s","l","",{id}]"#))
            .collect();
        format!(
            r#"{{"error":[],"result":{{"XXBTZUSD":[{}],"last":"{last}"}}}}"#,
            trades.join(",")
        )
    }

    #[test]
    fn a_page_gives_the_v2_records() {
        let mut out = Vec::new();
        assert_eq!(
            parse(PAGE, &gap(61_044_952, 61_044_953), &mut out),
            Ok(None)
        );
        let (r, mut want) = v2(V2_FRAME);
        assert_eq!(r.unwrap(), crate::exchanges::Frame::Trades(2));
        for t in &mut want {
            t.vendor_data = Some(VendorData::from_iter([("source".into(), "rest".into())]));
        }
        assert_eq!(out, want);
        assert_eq!(
            out[0].message_id,
            message_id("KRAKEN", "trade", "BTC/USD", "61044952")
        );
        assert_eq!(
            (out[0].side, out[1].side),
            (Side::Buy, Side::Sell),
            "the taker's side"
        );
        assert_eq!(out[0].trade_conditions, ["market"]);
        assert_eq!(out[0].timestamp_us, 1_688_669_597_827_736);
        assert_eq!(out[1].quantity.to_string(), "0.00376960");
        assert_eq!(out[0].instrument.as_deref(), Some("BTC-USD"));
        assert_eq!(out[0].source_sequence, Some(61_044_952));
    }

    #[test]
    fn pages_follow_last() {
        let g = gap(100, 2500);
        assert_eq!(
            KrakenV2.page_path(&g, None, 1000),
            "/0/public/Trades?pair=XBTUSD&since=1688669596999000000&count=1000"
        );
        let mut out = Vec::new();
        let next = parse(&page(99, 1000, "1688669600000000001"), &g, &mut out).unwrap();
        assert_eq!(next.as_deref(), Some("1688669600000000001"));
        assert_eq!(
            KrakenV2.page_path(&g, next.as_deref(), 5000),
            "/0/public/Trades?pair=XBTUSD&since=1688669600000000001&count=1000"
        );
        let next = parse(&page(1099, 1000, "1688669700000000000"), &g, &mut out).unwrap();
        assert_eq!(next.as_deref(), Some("1688669700000000000"));
        // This page reaches past the gap's end: the last one.
        assert_eq!(
            parse(&page(2099, 1000, "1688669800000000000"), &g, &mut out),
            Ok(None)
        );
        assert_eq!(out.len(), 3000);
        // A gap inside one page, and the history's end.
        assert_eq!(parse(&page(5, 10, "1"), &gap(6, 7), &mut out), Ok(None));
        assert_eq!(parse(&page(5, 0, "1"), &gap(6, 7), &mut out), Ok(None));
        // No time before the gap: the latest trades.
        let unknown = GapSpan {
            after_us: 0,
            ..gap(1, 2)
        };
        assert_eq!(
            KrakenV2.page_path(&unknown, None, 0),
            "/0/public/Trades?pair=XBTUSD&count=1"
        );
        let doge = GapSpan {
            symbol: "DOGE/BTC".into(),
            ..gap(1, 2)
        };
        assert!(
            KrakenV2
                .page_path(&doge, None, 10)
                .starts_with("/0/public/Trades?pair=XDGXBT&")
        );
    }

    /// The REST name of every pair Kraken listed (the recorded AssetPairs
    /// reply), from its v2 name, is its `altname`.
    #[test]
    fn rest_pairs_are_the_altnames() {
        let text = std::fs::read_to_string(capture("KRAKEN.jsonl")).unwrap();
        let mut seen = 0;
        for line in text.lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            if record["t"] != "http" || !record["url"].as_str().unwrap_or("").contains("AssetPairs")
            {
                continue;
            }
            let reply: serde_json::Value =
                serde_json::from_str(record["data"].as_str().unwrap()).unwrap();
            for pair in reply["result"].as_object().unwrap().values() {
                let Some(ws) = pair["wsname"].as_str() else {
                    continue;
                };
                let (base, quote) = pair_parts(ws).unwrap();
                let v2_name = format!("{}/{}", normalize_asset(base), normalize_asset(quote));
                assert_eq!(rest_pair(&v2_name), pair["altname"], "{ws}");
                seen += 1;
            }
        }
        assert_eq!(seen, 293);
    }

    #[test]
    fn bad_pages_push_nothing() {
        let g = gap(1, 2);
        let mut out = v2(V2_FRAME).1;
        let before = out.clone();
        let cases = [
            ("", "empty frame"),
            ("[]", "frame is not a json object"),
            ("{", "invalid json: "),
            (r#"{"error":[]}"#, "missing field `result`"),
            (
                r#"{"error":[],"result":[]}"#,
                "field `result`: expected object, got array",
            ),
            (
                r#"{"error":[],"result":{"last":"1"}}"#,
                "missing field `trades`",
            ),
            (
                r#"{"error":[],"result":{"XXBTZUSD":[]}}"#,
                "missing field `last`",
            ),
            (
                r#"{"error":[],"result":{"XXBTZUSD":[],"XETHZUSD":[],"last":"1"}}"#,
                "field `result`: holds the trades of more than one pair",
            ),
            (
                r#"{"error":[],"result":{"XXBTZUSD":{},"last":"1"}}"#,
                "field `trades`: expected array of trades, got object",
            ),
            (
                r#"{"error":[],"result":{"XXBTZUSD":[],"last":"1&x"}}"#,
                "field `last`: ",
            ),
            (
                r#"{"error":[],"result":{"XXBTZUSD":[],"last":true}}"#,
                "field `last`: expected",
            ),
            (
                r#"{"error":"x","result":{}}"#,
                "field `error`: expected array of strings, got string",
            ),
        ];
        for (body, reason) in cases {
            let e = parse(body, &g, &mut out).unwrap_err().to_string();
            assert!(e.starts_with(reason), "{body}: {e}");
        }
        let good = page(1, 3, "9");
        let trade_cases = [
            (r#""",1]"#, r#"""]"#, "missing field `trade_id`"),
            (
                r#""1.5","2""#,
                r#"1.5,"2""#,
                "field `price`: expected string, got number",
            ),
            (
                r#""1.5","2""#,
                r#""1.5","-2""#,
                "field `volume`: -2.00000000 is negative",
            ),
            (r#""1.5","2""#, r#""1.5","0.000000001""#, "field `volume`: "),
            (
                "1688669597.5",
                r#""1688669597.5""#,
                "field `time`: expected number, got string",
            ),
            ("1688669597.5", "-1.5", "field `time`: -1.5 is not a time"),
            (
                "1688669597.5",
                "1.6886695975e9",
                "field `time`: 1.6886695975e9 is not a time",
            ),
            (
                "1688669597.5",
                "99999999999999999999",
                "field `time`: 99999999999999999999 is out of range",
            ),
            (r#""s","l""#, r#""x","l""#, "field `side`: \"x\" is neither"),
            (
                r#""s","l""#,
                r#""s","limit""#,
                "field `ordertype`: \"limit\" is neither",
            ),
            (
                r#""l","""#,
                r#""l",null"#,
                "field `misc`: expected string, got null",
            ),
            (
                r#""",2]"#,
                r#""","2"]"#,
                "field `trade_id`: expected integer, got string",
            ),
            (
                r#""",2]"#,
                r#""",-2]"#,
                "field `trade_id`: -2 is not a non-negative",
            ),
            (
                r#""",2]"#,
                r#""",2.5]"#,
                "field `trade_id`: 2.5 is not a non-negative",
            ),
            (
                r#":[["1.5""#,
                r#":[5,["1.5""#,
                "field `trades`: expected array of trades, got number",
            ),
        ];
        for (from, to, reason) in trade_cases {
            assert!(good.contains(from), "{from}");
            // The bad trade is one among good ones: the page goes whole.
            let body = good.replacen(from, to, 1);
            let e = parse(&body, &g, &mut out).unwrap_err().to_string();
            assert!(e.starts_with(reason), "{body}: {e}");
        }
        let e = parse(
            PAGE,
            &GapSpan {
                space: "aggTrade".into(),
                ..g.clone()
            },
            &mut out,
        )
        .unwrap_err();
        assert_eq!(e.class(), "invalid_value");
        let e = parse(
            PAGE,
            &GapSpan {
                symbol: "XBTUSD".into(),
                ..g
            },
            &mut out,
        )
        .unwrap_err();
        assert_eq!(e.class(), "bad_symbol");
        assert_eq!(out, before);
    }

    #[test]
    fn venue_errors_are_reported() {
        let mut out = Vec::new();
        let e = parse(
            r#"{"error":["EQuery:Unknown asset pair"]}"#,
            &gap(1, 2),
            &mut out,
        )
        .unwrap_err();
        assert_eq!(e, FrameError::Venue("EQuery:Unknown asset pair".into()));
        let e = parse(
            r#"{"error":["EGeneral:Too many requests","EAPI:Rate limit exceeded"],"result":{}}"#,
            &gap(1, 2),
            &mut out,
        )
        .unwrap_err();
        assert_eq!(
            e,
            FrameError::Venue("EGeneral:Too many requests; EAPI:Rate limit exceeded".into())
        );
        assert_eq!(e.class(), "venue_error");
        assert!(out.is_empty());
    }

    #[test]
    fn v2_offers_its_history_and_v1_has_no_ids() {
        assert!(KrakenV2.contiguous_ids());
        assert!(KrakenV2.rest().is_some());
        assert!(!KrakenV1.contiguous_ids());
        assert!(KrakenV1.rest().is_none());
    }
}
