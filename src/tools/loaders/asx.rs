//! The ASX equity trades sample (BHP, RIO, MWR, DVN; 10–14 March 2014).
//!
//! `trades/<company id>.csv` rows are `Date,Time,Price,Volume,Qualifiers,
//! Venue,BuyerID` with no header, in Sydney local time;
//! `reference-data/company_info.csv` maps company ids to symbols. The files
//! carry no trade ids, so a trade's id is its symbol, day and line number:
//! stable across loads, so a reload produces the same message ids.
//!
//! A company's symbol is checked against the ASX `symbol_pattern` of the
//! instruments file before any of its rows becomes a trade; the rows of a
//! company it refuses become dead letters, one per row, with the reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use chrono_tz::Australia::Sydney;

use crate::instruments::SymbolRule;
use crate::model::{AssetClass, DeadLetter, Dec8, Side, TradeV2, VendorData, message_id};

pub const EXCHANGE: &str = crate::exchanges::ASX;

#[derive(Debug, thiserror::Error)]
pub enum AsxError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Row {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: company id {id} is not in reference-data/company_info.csv")]
    UnknownCompany { path: PathBuf, id: String },
}

fn read(path: &Path) -> Result<String, AsxError> {
    std::fs::read_to_string(path).map_err(|source| AsxError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Company id → symbol, from `reference-data/company_info.csv` (with header).
pub fn companies(dir: &Path) -> Result<HashMap<String, String>, AsxError> {
    let path = dir.join("reference-data/company_info.csv");
    let text = read(&path)?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut cols = line.split(',');
        match (cols.next(), cols.next()) {
            (Some(id), Some(sym)) if !id.is_empty() && !sym.is_empty() => {
                out.insert(id.trim().to_string(), sym.trim().to_string());
            }
            _ => {
                return Err(AsxError::Row {
                    path,
                    line: i + 1,
                    reason: "expected company_id,symbol,...".into(),
                });
            }
        }
    }
    Ok(out)
}

/// Sydney local date and time to UTC microseconds. Ambiguous or missing
/// local times (daylight-saving changes) take the earlier instant.
fn sydney_micros(date: &str, time: &str) -> Result<i64, String> {
    let d =
        NaiveDate::parse_from_str(date, "%m/%d/%Y").map_err(|e| format!("date {date:?}: {e}"))?;
    let t = NaiveTime::parse_from_str(time, "%H:%M:%S%.f")
        .map_err(|e| format!("time {time:?}: {e}"))?;
    let local = NaiveDateTime::new(d, t);
    Sydney
        .from_local_datetime(&local)
        .earliest()
        .map(|dt| dt.timestamp_micros())
        .ok_or_else(|| format!("{date} {time} does not exist in Sydney time"))
}

/// One CSV row as a trade. `line` is 1-based.
pub fn parse_row(
    symbol: &str,
    row: &str,
    line: usize,
    ingested_us: i64,
) -> Result<TradeV2, String> {
    let cols: Vec<&str> = row.split(',').map(str::trim).collect();
    if cols.len() < 4 {
        return Err(format!("expected at least 4 columns, found {}", cols.len()));
    }
    let timestamp_us = sydney_micros(cols[0], cols[1])?;
    let price = Dec8::parse(cols[2]).map_err(|e| format!("price: {e}"))?;
    let quantity = Dec8::parse(cols[3]).map_err(|e| format!("volume: {e}"))?;
    let date = cols[0].replace('/', "");
    let trade_id = format!("{EXCHANGE}-{symbol}-{date}-{line}");
    let mut vendor = VendorData::new();
    for (name, idx) in [("venue", 5), ("buyer_id", 6)] {
        if let Some(v) = cols.get(idx).filter(|v| !v.is_empty()) {
            vendor.insert(name.to_string(), v.to_string());
        }
    }
    let conditions = cols
        .get(4)
        .filter(|q| !q.is_empty())
        .map(|q| q.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    Ok(TradeV2 {
        message_id: message_id(EXCHANGE, "trade", symbol, &trade_id),
        trade_id,
        symbol: symbol.to_string(),
        exchange: EXCHANGE.to_string(),
        asset_class: AssetClass::Equities,
        timestamp_us,
        ingestion_timestamp_us: ingested_us,
        price,
        quantity,
        currency: "AUD".to_string(),
        side: Side::Unknown,
        trade_conditions: conditions,
        source_sequence: Some(line as i64),
        platform_sequence: None,
        vendor_data: (!vendor.is_empty()).then_some(vendor),
        instrument: None,
    })
}

/// What a directory holds, ready to publish.
#[derive(Debug, Default)]
pub struct Loaded {
    pub trades: Vec<TradeV2>,
    /// One per row of a company whose symbol `symbols` refuses.
    pub dead_letters: Vec<DeadLetter>,
}

/// Every row in `dir/trades/*.csv`, files in name order, rows in order: a
/// trade, or a dead letter when its company's symbol fails `symbols`.
pub fn load(dir: &Path, ingested_us: i64, symbols: &SymbolRule) -> Result<Loaded, AsxError> {
    let ids = companies(dir)?;
    let trades_dir = dir.join("trades");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&trades_dir)
        .map_err(|source| AsxError::Io {
            path: trades_dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    let mut out = Loaded::default();
    for path in files {
        let id = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let symbol = ids.get(&id).ok_or_else(|| AsxError::UnknownCompany {
            path: path.clone(),
            id: id.clone(),
        })?;
        let refused = symbols.check(symbol).err();
        for (i, row) in read(&path)?.lines().enumerate() {
            if row.trim().is_empty() {
                continue;
            }
            if let Some(e) = &refused {
                out.dead_letters.push(DeadLetter::new(
                    EXCHANGE,
                    &format!("{}:{}", path.display(), i + 1),
                    ingested_us,
                    format!("company {id}: {e}"),
                    row.as_bytes().to_vec(),
                ));
                continue;
            }
            let t = parse_row(symbol, row, i + 1, ingested_us).map_err(|reason| AsxError::Row {
                path: path.clone(),
                line: i + 1,
                reason,
            })?;
            out.trades.push(t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_trades_in_utc_with_exact_prices() {
        let t = parse_row("BHP", "03/10/2014,10:05:44.516,37.51,40000,3,X,", 7, 1).unwrap();
        // 10 March 2014 is daylight-saving time in Sydney (UTC+11)
        let utc = chrono::DateTime::from_timestamp_micros(t.timestamp_us).unwrap();
        assert_eq!(utc.to_rfc3339(), "2014-03-09T23:05:44.516+00:00");
        assert_eq!(t.price.to_string(), "37.51000000");
        assert_eq!(t.quantity.to_string(), "40000.00000000");
        assert_eq!(t.trade_id, "ASX-BHP-03102014-7");
        assert_eq!(t.trade_conditions, vec!["3".to_string()]);
        assert_eq!(t.vendor_data.unwrap().get("venue").unwrap(), "X");
        assert_eq!(t.asset_class, AssetClass::Equities);
        assert_eq!(t.side, Side::Unknown);
        // the same row on the same line always gets the same id
        let again = parse_row("BHP", "03/10/2014,10:05:44.516,37.51,40000,3,X,", 7, 2).unwrap();
        assert_eq!(
            again.message_id,
            parse_row("BHP", "03/10/2014,10:05:44.516,37.51,40000,3,X,", 7, 1)
                .unwrap()
                .message_id
        );
    }

    #[test]
    fn bad_rows_say_what_is_wrong() {
        assert!(
            parse_row("BHP", "03/10/2014,10:05", 1, 0)
                .unwrap_err()
                .contains("4 columns")
        );
        assert!(
            parse_row("BHP", "13/40/2014,10:05:44.516,1,1", 1, 0)
                .unwrap_err()
                .contains("date")
        );
        assert!(
            parse_row("BHP", "03/10/2014,10:05:44.516,abc,1", 1, 0)
                .unwrap_err()
                .contains("price")
        );
    }

    fn asx_rule() -> SymbolRule {
        crate::instruments::Instruments::builtin()
            .unwrap()
            .symbol_rule(EXCHANGE)
            .unwrap()
            .clone()
    }

    fn trades(dir: &Path) -> Result<Vec<TradeV2>, AsxError> {
        let loaded = load(dir, 0, &asx_rule())?;
        assert!(loaded.dead_letters.is_empty());
        Ok(loaded.trades)
    }

    #[test]
    fn a_directory_loads_with_company_symbols_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("reference-data")).unwrap();
        std::fs::create_dir_all(dir.path().join("trades")).unwrap();
        std::fs::write(
            dir.path().join("reference-data/company_info.csv"),
            "company_id,symbol,company_name\n7078,BHP,BHP BILLITON LTD\n7458,RIO,RIO TINTO LTD\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("trades/7078.csv"),
            "03/10/2014,10:05:44.516,37.51,40000,3,X,\n03/10/2014,10:05:45.000,37.52,100,,X,\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("trades/7458.csv"),
            "03/11/2014,11:00:00.000,60.10,5,,,\n",
        )
        .unwrap();
        let t = trades(dir.path()).unwrap();
        assert_eq!(
            t.iter().map(|t| t.symbol.as_str()).collect::<Vec<_>>(),
            ["BHP", "BHP", "RIO"]
        );
        std::fs::write(
            dir.path().join("trades/7458.csv"),
            "03/11/2014,11:00:00.000,x,5,,,\n",
        )
        .unwrap();
        let e = trades(dir.path()).unwrap_err().to_string();
        assert!(e.contains("7458.csv:1") && e.contains("price"), "{e}");
        std::fs::remove_file(dir.path().join("trades/7458.csv")).unwrap();
        std::fs::write(dir.path().join("trades/9999.csv"), "").unwrap();
        assert!(matches!(
            trades(dir.path()),
            Err(AsxError::UnknownCompany { .. })
        ));
    }

    #[test]
    fn rows_of_a_symbol_outside_the_pattern_become_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("reference-data")).unwrap();
        std::fs::create_dir_all(dir.path().join("trades")).unwrap();
        std::fs::write(
            dir.path().join("reference-data/company_info.csv"),
            "company_id,symbol,company_name\n7078,BHP,BHP BILLITON LTD\n9,B H'P,HOSTILE\n",
        )
        .unwrap();
        let row = "03/10/2014,10:05:44.516,37.51,40000,3,X,";
        std::fs::write(dir.path().join("trades/7078.csv"), format!("{row}\n")).unwrap();
        std::fs::write(dir.path().join("trades/9.csv"), format!("{row}\n\n{row}\n")).unwrap();
        let loaded = load(dir.path(), 5, &asx_rule()).unwrap();
        assert_eq!(loaded.trades.len(), 1);
        assert_eq!(loaded.trades[0].symbol, "BHP");
        assert_eq!(loaded.dead_letters.len(), 2, "one per row, none dropped");
        for (d, line) in loaded.dead_letters.iter().zip([1, 3]) {
            assert_eq!(d.exchange, EXCHANGE);
            assert_eq!(d.raw, row.as_bytes());
            assert!(d.source.ends_with(&format!("9.csv:{line}")), "{}", d.source);
            assert!(
                d.reason.contains("company 9")
                    && d.reason.contains("\"B H'P\"")
                    && d.reason.contains("exchanges.ASX.symbol_pattern"),
                "{}",
                d.reason
            );
        }
        assert_ne!(
            loaded.dead_letters[0].dead_letter_id,
            loaded.dead_letters[1].dead_letter_id
        );
    }
}
