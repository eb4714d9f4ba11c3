//! The accounting proof: per exchange and tier, what the venue offered
//! against what the lake holds (asked by query) and what the daemon says it
//! shed, dead-lettered and dropped as duplicates, each a named check.
//!
//! - **offered** is the venue's ground truth: trades generated per symbol
//!   (each once, however often it was delivered) plus the duplicate frames
//!   it sent on purpose.
//! - **in lake** is `count(distinct message_id)` of `market.trades` per
//!   symbol, by query after the daemon settled; `count(*)` must equal it.
//! - **shed** is the daemon's own count, summed over its runs (a killed
//!   run's from its last sample; the kill happens at NORMAL, when nothing
//!   sheds).
//! - **deduplicated** is the duplicates the venue sent; the daemon's count
//!   must reach it (it is higher by the trades a REST backfill page
//!   repeated, which the venue did not send twice on the stream).
//! - **dead-lettered** is the malformed frames sent, against
//!   `market.dead_letters` by query.
//!
//! So per tier: offered = in lake + shed + deduplicated, and on its own
//! row: malformed = dead-lettered. Tier 1 must lose nothing and shed nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// One row of the table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub exchange: String,
    pub tier: String,
    pub offered: u64,
    pub in_lake: u64,
    pub lake_rows: u64,
    pub shed: u64,
    pub dead_lettered: u64,
    pub deduplicated: u64,
    pub daemon_deduplicated: u64,
    /// offered - (in lake + shed + dead-lettered + deduplicated); 0 when it closes.
    pub unaccounted: i64,
}

/// One named check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Proof {
    pub rows: Vec<Row>,
    pub checks: Vec<Check>,
    pub tier1_loss: i64,
}

impl Proof {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    pub fn failed(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.ok).collect()
    }

    pub fn check(&mut self, name: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        });
    }

    /// The table and the checks, as printed at the end.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "accounting proof: offered = in lake + shed + dead-lettered + deduplicated"
        );
        let _ = writeln!(
            out,
            "{:<10} {:<10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>12}",
            "exchange", "tier", "offered", "in lake", "shed", "dead", "dedup", "unaccounted"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<10} {:<10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>12}",
                r.exchange,
                r.tier,
                r.offered,
                r.in_lake,
                r.shed,
                r.dead_lettered,
                r.deduplicated,
                r.unaccounted
            );
        }
        let _ = writeln!(out, "tier-1 loss: {}", self.tier1_loss);
        for c in &self.checks {
            let _ = writeln!(
                out,
                "  [{}] {}: {}",
                if c.ok { " ok " } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        let failed = self.failed();
        if failed.is_empty() {
            let _ = writeln!(out, "PASS: {} checks", self.checks.len());
        } else {
            let names: Vec<&str> = failed.iter().map(|c| c.name.as_str()).collect();
            let _ = writeln!(out, "FAIL: {}", names.join(", "));
        }
        out
    }
}

/// What the proof is built from.
pub struct Inputs<'a> {
    pub exchange: &'a str,
    /// Trades offered per tier (unique) and duplicates sent per tier.
    pub offered: &'a BTreeMap<String, u64>,
    pub duplicates: &'a BTreeMap<String, u64>,
    /// From the lake by query: per tier (distinct message ids, rows).
    pub lake: &'a BTreeMap<String, (u64, u64)>,
    /// The daemon's counters over its runs, per tier: (shed, deduplicated).
    pub daemon: &'a BTreeMap<String, (u64, u64)>,
    pub malformed_sent: u64,
    pub dead_letters_in_lake: u64,
}

/// Builds the rows and the accounting checks.
pub fn build(i: &Inputs<'_>) -> Proof {
    let mut p = Proof::default();
    for (tier, &offered_unique) in i.offered {
        let dups = i.duplicates.get(tier).copied().unwrap_or(0);
        let (in_lake, lake_rows) = i.lake.get(tier).copied().unwrap_or((0, 0));
        let (shed, daemon_dedup) = i.daemon.get(tier).copied().unwrap_or((0, 0));
        let offered = offered_unique + dups;
        let unaccounted = offered as i64 - (in_lake + shed + dups) as i64;
        let ex = i.exchange;
        p.check(
            format!("{ex}.tier{tier}.identity"),
            unaccounted == 0,
            format!(
                "offered {offered} = in lake {in_lake} + shed {shed} + deduplicated {dups} (unaccounted {unaccounted})"
            ),
        );
        p.check(
            format!("{ex}.tier{tier}.no_second_copy"),
            lake_rows == in_lake,
            format!("{lake_rows} rows for {in_lake} distinct message ids"),
        );
        p.check(
            format!("{ex}.tier{tier}.deduplicated"),
            daemon_dedup >= dups,
            format!("the daemon dropped {daemon_dedup} second copies; the venue sent {dups}"),
        );
        if tier == "1" {
            let loss = offered_unique as i64 - in_lake as i64;
            p.tier1_loss = loss;
            p.check(
                format!("{ex}.tier1.loss"),
                loss == 0 && shed == 0,
                format!("offered {offered_unique}, in lake {in_lake}, shed {shed}: loss {loss}"),
            );
        }
        p.rows.push(Row {
            exchange: ex.into(),
            tier: tier.clone(),
            offered,
            in_lake,
            lake_rows,
            shed,
            dead_lettered: 0,
            deduplicated: dups,
            daemon_deduplicated: daemon_dedup,
            unaccounted,
        });
    }
    let dl_unaccounted = i.malformed_sent as i64 - i.dead_letters_in_lake as i64;
    p.rows.push(Row {
        exchange: i.exchange.into(),
        tier: "malformed".into(),
        offered: i.malformed_sent,
        in_lake: 0,
        dead_lettered: i.dead_letters_in_lake,
        unaccounted: dl_unaccounted,
        ..Row::default()
    });
    p.check(
        format!("{}.dead_letters", i.exchange),
        dl_unaccounted == 0,
        format!(
            "malformed frames sent {} = rows in market.dead_letters {}",
            i.malformed_sent, i.dead_letters_in_lake
        ),
    );
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: &[(&str, u64)]) -> BTreeMap<String, u64> {
        v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn a_closed_account_passes_and_one_missing_tier1_trade_is_named() {
        let offered = map(&[("1", 100), ("3", 50)]);
        let dups = map(&[("1", 2)]);
        let mut lake: BTreeMap<String, (u64, u64)> =
            [("1".into(), (100, 100)), ("3".into(), (40, 40))].into();
        let daemon: BTreeMap<String, (u64, u64)> =
            [("1".into(), (0, 3)), ("3".into(), (10, 0))].into();
        let inputs = Inputs {
            exchange: "BINANCE",
            offered: &offered,
            duplicates: &dups,
            lake: &lake,
            daemon: &daemon,
            malformed_sent: 4,
            dead_letters_in_lake: 4,
        };
        let p = build(&inputs);
        assert!(p.passed(), "{}", p.render());
        assert_eq!(p.tier1_loss, 0);

        lake.insert("1".into(), (99, 99));
        let p = build(&Inputs {
            exchange: "BINANCE",
            offered: &offered,
            duplicates: &dups,
            lake: &lake,
            daemon: &daemon,
            malformed_sent: 4,
            dead_letters_in_lake: 4,
        });
        let failed: Vec<&str> = p.failed().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(failed, vec!["BINANCE.tier1.identity", "BINANCE.tier1.loss"]);
        assert!(
            p.render()
                .contains("FAIL: BINANCE.tier1.identity, BINANCE.tier1.loss")
        );
    }
}
