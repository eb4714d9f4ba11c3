//! Query-string parameters of the `/v1` endpoints, parsed by hand so every
//! refusal names the parameter and says why.

use std::collections::HashMap;

use chrono::DateTime;

use super::ApiError;
use crate::messages::query::{Cursor, Interval};

/// A validated instrument or exchange name: letters, digits and `._-`,
/// at most 64 characters. Matched exactly (case-sensitive), as stored.
fn name(param: &'static str, v: &str) -> Result<String, ApiError> {
    if v.is_empty() || v.len() > 64 {
        return Err(ApiError::bad(param, "must be 1 to 64 characters"));
    }
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(ApiError::bad(
            param,
            format!("{v:?} may only contain letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(v.to_string())
}

/// Longest base or quote of an instrument (Binance symbols are at most 20
/// characters, so neither part of one is longer).
const MAX_INSTRUMENT_PART: usize = 20;

/// A validated normalized instrument: `BASE-QUOTE`, each part 1 to
/// `MAX_INSTRUMENT_PART` upper-case letters or digits (`BTC-USD`,
/// `1INCH-USDT`), as `TradeV2::instrument` stores it on every venue.
/// Matched exactly.
fn instrument(param: &'static str, v: &str) -> Result<String, ApiError> {
    let part_ok = |p: &str| {
        (1..=MAX_INSTRUMENT_PART).contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    };
    match v.split_once('-') {
        Some((base, quote)) if part_ok(base) && part_ok(quote) => Ok(v.to_string()),
        _ => {
            let shown: String = v.chars().take(64).collect();
            let more = if v.chars().count() > 64 { "…" } else { "" };
            Err(ApiError::bad(
                param,
                format!(
                    "{shown:?}{more} is not an instrument: BASE-QUOTE, each 1 to \
                     {MAX_INSTRUMENT_PART} upper-case letters or digits, e.g. BTC-USD"
                ),
            ))
        }
    }
}

/// RFC 3339 (e.g. `2014-03-10T00:00:00Z`) to UTC microseconds.
fn time(param: &'static str, v: &str) -> Result<i64, ApiError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_micros())
        .map_err(|e| {
            ApiError::bad(
                param,
                format!("{v:?} is not an RFC 3339 time such as 2014-03-10T00:00:00Z ({e})"),
            )
        })
}

fn int(param: &'static str, v: &str, min: i64, max: i64) -> Result<i64, ApiError> {
    let n: i64 = v
        .parse()
        .map_err(|_| ApiError::bad(param, format!("{v:?} is not an integer")))?;
    if n < min || n > max {
        return Err(ApiError::bad(
            param,
            format!("{n} is outside {min}..={max}"),
        ));
    }
    Ok(n)
}

/// A cursor as `/v1/trades` rendered it (`Cursor::render`).
fn cursor(param: &'static str, v: &str) -> Result<Cursor, ApiError> {
    let bad = || ApiError::bad(param, format!("{v:?} is not a cursor returned by this API"));
    let (ts, id) = v.split_once(':').ok_or_else(bad)?;
    let timestamp_us = ts.parse().map_err(|_| bad())?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(bad());
    }
    Ok(Cursor {
        timestamp_us,
        message_id: id.to_string(),
    })
}

/// The query string, refusing parameters an endpoint does not know (a typo
/// such as `symbl=` would otherwise silently return everything).
pub struct Params<'a> {
    map: &'a HashMap<String, String>,
}

impl<'a> Params<'a> {
    pub fn new(map: &'a HashMap<String, String>, known: &[&str]) -> Result<Self, ApiError> {
        let mut unknown: Vec<&String> = map
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .collect();
        unknown.sort();
        if let Some(k) = unknown.first() {
            return Err(ApiError::bad(
                k,
                format!(
                    "unknown parameter; this endpoint takes {}",
                    known.join(", ")
                ),
            ));
        }
        Ok(Self { map })
    }

    fn get(&self, k: &str) -> Option<&'a str> {
        self.map.get(k).map(String::as_str)
    }

    pub fn name(&self, k: &'static str) -> Result<Option<String>, ApiError> {
        self.get(k).map(|v| name(k, v)).transpose()
    }

    pub fn required_name(&self, k: &'static str) -> Result<String, ApiError> {
        self.name(k)?.ok_or_else(|| ApiError::bad(k, "is required"))
    }

    /// A normalized instrument (`BASE-QUOTE`), if given.
    pub fn instrument(&self, k: &'static str) -> Result<Option<String>, ApiError> {
        self.get(k).map(|v| instrument(k, v)).transpose()
    }

    pub fn time(&self, k: &'static str) -> Result<Option<i64>, ApiError> {
        self.get(k).map(|v| time(k, v)).transpose()
    }

    pub fn required_time(&self, k: &'static str) -> Result<i64, ApiError> {
        self.time(k)?.ok_or_else(|| ApiError::bad(k, "is required"))
    }

    pub fn int(&self, k: &'static str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        self.get(k).map(|v| int(k, v, min, max)).transpose()
    }

    pub fn cursor(&self, k: &'static str) -> Result<Option<Cursor>, ApiError> {
        self.get(k).map(|v| cursor(k, v)).transpose()
    }

    pub fn interval(&self, k: &'static str) -> Result<Interval, ApiError> {
        let v = self.get(k).ok_or_else(|| ApiError::bad(k, "is required"))?;
        Interval::parse(v)
            .ok_or_else(|| ApiError::bad(k, format!("{v:?} is not one of 1m, 5m, 15m, 1h, 1d")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn refusals_name_the_parameter() {
        let m = map(&[("symbl", "X")]);
        let e = Params::new(&m, &["symbol"]).err().unwrap();
        assert!(e.to_string().contains("symbl"), "{e}");
        let m = map(&[
            ("symbol", "BTC USDT"),
            ("start", "yesterday"),
            ("limit", "0"),
        ]);
        let p = Params::new(&m, &["symbol", "start", "limit"]).unwrap();
        assert!(p.name("symbol").unwrap_err().to_string().contains("symbol"));
        assert!(p.time("start").unwrap_err().to_string().contains("start"));
        assert!(
            p.int("limit", 1, 10)
                .unwrap_err()
                .to_string()
                .contains("limit")
        );
        assert!(p.required_name("exchange").is_err());
    }

    #[test]
    fn instruments_are_base_dash_quote_in_upper_case() {
        for ok in [
            "BTC-USD",
            "BTC-USDT",
            "1INCH-USDT",
            "A-B",
            "ABCDEFGHIJKLMNOPQRST-USD",
        ] {
            let m = map(&[("instrument", ok)]);
            let p = Params::new(&m, &["instrument"]).unwrap();
            assert_eq!(p.instrument("instrument").unwrap().as_deref(), Some(ok));
        }
        for bad in [
            "",
            "BTCUSD",
            "btc-usd",
            "BTC-usd",
            "BTC/USD",
            "BTC-",
            "-USD",
            "BTC-USD-X",
            "BTC_USD",
            "BTC USD",
            "BTC-USD'",
            "ABCDEFGHIJKLMNOPQRSTU-USD",
            "BTC-ÜSD",
        ] {
            let m = map(&[("instrument", bad)]);
            let p = Params::new(&m, &["instrument"]).unwrap();
            let e = p.instrument("instrument").unwrap_err().to_string();
            assert!(e.starts_with("parameter `instrument`:"), "{bad:?}: {e}");
            assert!(e.contains("BASE-QUOTE"), "{bad:?}: {e}");
        }
        let m = map(&[]);
        let p = Params::new(&m, &["instrument"]).unwrap();
        assert_eq!(p.instrument("instrument").unwrap(), None);
    }

    #[test]
    fn values_parse() {
        let m = map(&[
            ("start", "2014-03-10T00:00:00+11:00"),
            ("cursor", "5:ab-12"),
            ("interval", "15m"),
        ]);
        let p = Params::new(&m, &["start", "cursor", "interval"]).unwrap();
        assert_eq!(p.time("start").unwrap(), Some(1_394_370_000_000_000));
        let c = p.cursor("cursor").unwrap().unwrap();
        assert_eq!(c.render(), "5:ab-12");
        assert_eq!(p.interval("interval").unwrap().micros(), 900_000_000);
    }
}
