//! The venues' REST trade-history endpoints, in their own formats, as
//! [`RestService`] answers them (see the parent module for which).

use serde::Serialize;
use serde_json::json;

use super::{Fill, IdSpace, Page, Query, Reply, RestService, digits};
use crate::model::{Dec8, Side};

/// The venues' own page limits.
const BINANCE_DEFAULT_LIMIT: usize = 500;
const PAGE_MAX: usize = 1000;

impl RestService {
    pub(super) fn binance(&self, q: &Query, shift_ms: i64) -> Option<Reply> {
        let space = match q.path.as_str() {
            "/api/v3/aggTrades" => IdSpace::AggTrade,
            "/api/v3/historicalTrades" | "/api/v3/trades" => IdSpace::Trade,
            _ => return None,
        };
        let error =
            |code: i32, msg: String| Some(Reply::json(400, json!({"code": code, "msg": msg})));
        let illegal = |name: &str, range: &str| {
            error(
                -1100,
                format!(
                    "Illegal characters found in parameter '{name}'; legal range is '{range}'."
                ),
            )
        };
        let symbol = match q.get("symbol") {
            None | Some("") => {
                return error(
                    -1102,
                    "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
                        .into(),
                );
            }
            Some(s) => s,
        };
        let legal = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b"-_.".contains(&b);
        if symbol.len() > 20 || !symbol.bytes().all(legal) {
            return illegal("symbol", "^[A-Z0-9-_.]{1,20}$");
        }
        let mut numbers = [None; 4];
        for (slot, name) in numbers
            .iter_mut()
            .zip(["limit", "fromId", "startTime", "endTime"])
        {
            if let Some(v) = q.get(name) {
                *slot = digits(v);
                if slot.is_none() {
                    return illegal(name, "^[0-9]{1,20}$");
                }
            }
        }
        let [limit, from_id, start, end] = numbers;
        let limit = limit.map_or(BINANCE_DEFAULT_LIMIT, page_limit);
        // `/api/v3/trades` is the newest trades only; the time window is
        // aggTrades' alone, and Binance refuses it next to fromId.
        let from_id = from_id.filter(|_| q.path != "/api/v3/trades");
        let window = space == IdSpace::AggTrade && (start.is_some() || end.is_some());
        if window && from_id.is_some() {
            return error(-1128, "Combination of optional parameters invalid.".into());
        }
        let Some((_, all)) = self.series(|s| s == symbol, space) else {
            return error(-1121, "Invalid symbol.".into());
        };
        let time_ms = |f: &Fill| f.time_us(shift_ms).div_euclid(1000);
        let page: Page<'_> = if let Some(from) = from_id {
            all.into_iter()
                .filter(|f| f.id >= from)
                .take(limit)
                .collect()
        } else if window {
            let (start, end) = (start.unwrap_or(0), end.unwrap_or(i64::MAX));
            all.into_iter()
                .filter(|f| (start..=end).contains(&time_ms(f)))
                .take(limit)
                .collect()
        } else {
            newest(all, limit)
        };
        // The parser's side is the aggressor's: a selling aggressor means
        // the buyer was the maker.
        let buyer_maker = |f: &Fill| matches!(f.side, Side::Sell | Side::SellShort);
        Some(if space == IdSpace::AggTrade {
            Reply::ok(
                &page
                    .iter()
                    .map(|f| BinanceAgg {
                        a: f.id,
                        p: f.price.to_string(),
                        q: f.qty.to_string(),
                        f: f.first_last.map_or(f.id, |(first, _)| first),
                        l: f.first_last.map_or(f.id, |(_, last)| last),
                        time: time_ms(f),
                        m: buyer_maker(f),
                        best: true,
                    })
                    .collect::<Vec<_>>(),
            )
        } else {
            Reply::ok(
                &page
                    .iter()
                    .map(|f| BinanceTrade {
                        id: f.id,
                        price: f.price.to_string(),
                        qty: f.qty.to_string(),
                        quote_qty: quote_qty(f.price, f.qty),
                        time: time_ms(f),
                        is_buyer_maker: buyer_maker(f),
                        is_best_match: true,
                    })
                    .collect::<Vec<_>>(),
            )
        })
    }

    pub(super) fn kraken(&self, q: &Query, shift_ms: i64) -> Option<Reply> {
        if q.path != "/0/public/Trades" {
            return None;
        }
        // Kraken answers its errors with HTTP 200 and the `error` list.
        let error = |msg: &str| Some(Reply::json(200, json!({"error": [msg]})));
        let Some(pair) = q.get("pair").filter(|p| !p.is_empty()) else {
            return error("EGeneral:Invalid arguments");
        };
        let since = match q.get("since") {
            Some(s) => match kraken_since_ns(s) {
                Some(ns) => Some(ns),
                None => return error("EGeneral:Invalid arguments"),
            },
            None => None,
        };
        let count = match q.get("count") {
            Some(c) => match digits(c) {
                Some(c) => page_limit(c),
                None => return error("EGeneral:Invalid arguments"),
            },
            None => PAGE_MAX,
        };
        let wanted = kraken_pair_key(pair);
        let Some((_, all)) = self.series(|s| kraken_pair_key(s) == wanted, IdSpace::Trade) else {
            return error("EQuery:Unknown asset pair");
        };
        let page: Page<'_> = match since {
            Some(since) => all
                .into_iter()
                .filter(|f| f.time_ns(shift_ms) > since)
                .take(count)
                .collect(),
            None => newest(all, count),
        };
        let rows: Vec<String> = page
            .iter()
            .map(|f| {
                let us = f.time_us(shift_ms);
                format!(
                    r#"["{}","{}",{}.{:06},"{}","{}","",{}]"#,
                    f.price,
                    f.qty,
                    us.div_euclid(1_000_000),
                    us.rem_euclid(1_000_000),
                    if f.side == Side::Buy { "b" } else { "s" },
                    if f.limit { "l" } else { "m" },
                    f.id
                )
            })
            .collect();
        let last = page
            .last()
            .map(|f| f.time_ns(shift_ms))
            .or(since)
            .unwrap_or(0);
        let key = serde_json::Value::from(pair).to_string();
        Some(Reply::json(
            200,
            format!(
                r#"{{"error":[],"result":{{{key}:[{}],"last":"{last}"}}}}"#,
                rows.join(",")
            ),
        ))
    }

    pub(super) fn coinbase_exchange(&self, q: &Query, shift_ms: i64) -> Option<Reply> {
        let product = match q.path.split('/').collect::<Vec<_>>()[..] {
            ["", "products", product, "trades"] => product,
            _ => return None,
        };
        let error = |status: u16, msg: &str| Some(Reply::json(status, json!({"message": msg})));
        let mut numbers = [None; 3];
        for (slot, name) in numbers.iter_mut().zip(["limit", "after", "before"]) {
            if let Some(v) = q.get(name) {
                *slot = digits(v);
                if slot.is_none() {
                    return error(400, &format!("Invalid {name}"));
                }
            }
        }
        let [limit, after, before] = numbers;
        let limit = limit.map_or(PAGE_MAX, page_limit);
        let Some((_, all)) = self.series(|s| s.eq_ignore_ascii_case(product), IdSpace::Trade)
        else {
            return error(404, "NotFound");
        };
        let mut page: Page<'_> = match (after, before) {
            // Older than `after`: the nearest ones.
            (Some(after), _) => newest(all.into_iter().filter(|f| f.id < after).collect(), limit),
            (None, Some(before)) => all
                .into_iter()
                .filter(|f| f.id > before)
                .take(limit)
                .collect(),
            (None, None) => newest(all, limit),
        };
        page.reverse();
        let mut reply = Reply::ok(
            &page
                .iter()
                .map(|f| ExchangeTrade {
                    time: rfc3339(f.time_us(shift_ms)),
                    trade_id: f.id,
                    price: f.price.to_string(),
                    size: f.qty.to_string(),
                    // The Exchange's `side` is the maker's: the parser's (the
                    // aggressor's) turned around.
                    side: if f.side == Side::Buy { "sell" } else { "buy" },
                })
                .collect::<Vec<_>>(),
        );
        if let (Some(newest), Some(oldest)) = (page.first(), page.last()) {
            reply.headers.push(("CB-BEFORE", newest.id.to_string()));
            reply.headers.push(("CB-AFTER", oldest.id.to_string()));
        }
        Some(reply)
    }

    pub(super) fn coinbase_advanced(&self, q: &Query, shift_ms: i64) -> Option<Reply> {
        let product = match q.path.split('/').collect::<Vec<_>>()[..] {
            [
                "",
                "api",
                "v3",
                "brokerage",
                "market",
                "products",
                product,
                "ticker",
            ]
            | ["", "api", "v3", "brokerage", "products", product, "ticker"] => product,
            _ => return None,
        };
        let error = |status: u16, error: &str, msg: String| {
            Some(Reply::json(
                status,
                json!({"error": error, "error_details": msg, "message": msg}),
            ))
        };
        let limit = match q.get("limit").map(digits) {
            Some(Some(limit)) => page_limit(limit),
            Some(None) => return error(400, "INVALID_ARGUMENT", "invalid limit".into()),
            None => return error(400, "INVALID_ARGUMENT", "limit is required".into()),
        };
        let mut bounds = [None; 2];
        for (slot, name) in bounds.iter_mut().zip(["start", "end"]) {
            if let Some(v) = q.get(name).filter(|v| !v.is_empty()) {
                *slot = decimal_ns(v, false);
                if slot.is_none() {
                    return error(400, "INVALID_ARGUMENT", format!("invalid {name}: {v:?}"));
                }
            }
        }
        let [start, end] = bounds;
        let Some((symbol, all)) = self.series(|s| s.eq_ignore_ascii_case(product), IdSpace::Trade)
        else {
            return error(404, "NOT_FOUND", "ProductID is invalid".into());
        };
        let in_window = |f: &&Fill| {
            let t = f.time_ns(shift_ms);
            start.is_none_or(|s| t >= s) && end.is_none_or(|e| t < e)
        };
        let mut page = newest(all.into_iter().filter(in_window).collect(), limit);
        page.reverse();
        Some(Reply::ok(&AdvancedPage {
            trades: page
                .iter()
                .map(|f| AdvancedTrade {
                    trade_id: f.id.to_string(),
                    product_id: symbol,
                    price: f.price.to_string(),
                    size: f.qty.to_string(),
                    time: rfc3339(f.time_us(shift_ms)),
                    // Advanced's `side` is the aggressor's, as the parser keeps it.
                    side: if f.side == Side::Buy { "BUY" } else { "SELL" },
                    bid: "",
                    ask: "",
                    exchange: "coinbase",
                })
                .collect(),
            best_bid: "",
            best_ask: "",
        }))
    }
}

#[derive(Serialize)]
struct BinanceAgg {
    a: i64,
    p: String,
    q: String,
    f: i64,
    l: i64,
    #[serde(rename = "T")]
    time: i64,
    m: bool,
    #[serde(rename = "M")]
    best: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BinanceTrade {
    id: i64,
    price: String,
    qty: String,
    quote_qty: String,
    time: i64,
    is_buyer_maker: bool,
    is_best_match: bool,
}

#[derive(Serialize)]
struct ExchangeTrade {
    time: String,
    trade_id: i64,
    price: String,
    size: String,
    side: &'static str,
}

#[derive(Serialize)]
struct AdvancedPage<'a> {
    trades: Vec<AdvancedTrade<'a>>,
    best_bid: &'static str,
    best_ask: &'static str,
}

#[derive(Serialize)]
struct AdvancedTrade<'a> {
    trade_id: String,
    product_id: &'a str,
    price: String,
    size: String,
    time: String,
    side: &'static str,
    bid: &'static str,
    ask: &'static str,
    exchange: &'static str,
}

/// The last `limit` of an ascending page.
fn newest(mut page: Page<'_>, limit: usize) -> Page<'_> {
    let skip = page.len().saturating_sub(limit);
    page.drain(..skip);
    page
}

/// A page size asked for, within the venues' 1..=1000.
fn page_limit(asked: i64) -> usize {
    usize::try_from(asked)
        .unwrap_or(PAGE_MAX)
        .clamp(1, PAGE_MAX)
}

/// Unix seconds, possibly with a fraction (`1616663618.7592`), as ns; with
/// `big_is_ns`, an integer above 1e12 is already nanoseconds.
fn decimal_ns(text: &str, big_is_ns: bool) -> Option<i128> {
    let (secs, frac) = match text.split_once('.') {
        Some((_, "")) => return None,
        Some((secs, frac)) if frac.bytes().all(|b| b.is_ascii_digit()) => (secs, frac),
        Some(_) => return None,
        None => (text, ""),
    };
    let secs = i128::from(digits(secs)?);
    if big_is_ns && frac.is_empty() && secs > 1_000_000_000_000 {
        return Some(secs);
    }
    // Digits below a nanosecond are dropped.
    let nanos: i128 = format!("{:0<9}", &frac[..frac.len().min(9)]).parse().ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

/// Kraken's `since`: seconds (possibly fractional) or nanoseconds.
fn kraken_since_ns(text: &str) -> Option<i128> {
    decimal_ns(text, true)
}

/// A Kraken pair as compared: upper case, no `/`, `XBT` as `BTC` and `XDG`
/// as `DOGE`, so `XBTUSD`, `BTC/USD` and `xbt/usd` are one pair.
fn kraken_pair_key(pair: &str) -> String {
    pair.to_ascii_uppercase()
        .replace('/', "")
        .replace("XBT", "BTC")
        .replace("XDG", "DOGE")
}

/// Price times quantity at 8 decimals (truncated), as Binance's `quoteQty`.
fn quote_qty(price: Dec8, qty: Dec8) -> String {
    let product = i128::from(price.unscaled()) * i128::from(qty.unscaled()) / 100_000_000;
    i64::try_from(product)
        .ok()
        .and_then(|p| Dec8::from_unscaled(p).ok())
        .map_or_else(String::new, |d| d.to_string())
}

/// `2024-01-01T00:00:00.123456Z`.
fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_default()
}
