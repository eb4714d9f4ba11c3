//! Trade-id continuity per (symbol, id space) of one feed: venues that
//! number each symbol's trades one by one (Binance `t` and `a`, Kraken v2
//! and Coinbase `trade_id`) make a skipped id a missed trade, so the feed
//! can tell when it lost some (a reconnect, a crash, a slow consumer the
//! venue dropped) and fill them in from the venue's REST history.
//!
//! A gap is first *pending*: ids arriving late on a live connection (a
//! rotation's old connection still draining, frames out of order) fill it
//! in, and only what is still missing after the grace period is *due* for a
//! fill. A gap whose ids all came late settles as `late`; otherwise its
//! fill (`backfill`) brings the rest, or it settles `unrecoverable` with
//! what is still missing.
//!
//! The tracker is fed trades after dedup, so a second copy of a trade never
//! reaches it; an id at or below the newest one that fills no gap is a
//! regression (a venue that restarted its numbering, or a copy dedup had
//! forgotten), counted and otherwise ignored.

use serde::Serialize;

use crate::exchanges::rest::GapSpan;
use crate::fastmap::FastMap;
use crate::messages::gaps::GapRecord;

/// Where a symbol's ids stand.
#[derive(Debug, Clone)]
struct Track {
    /// The newest id seen.
    last: i64,
    /// The exchange time of that trade, µs.
    last_us: i64,
}

/// A run of missing ids, and what came of it so far.
#[derive(Debug, Clone)]
struct Open {
    span: GapSpan,
    /// The ids still missing, as inclusive ranges in order.
    missing: Vec<(i64, i64)>,
    detected_at_us: i64,
    /// When it stops waiting for late ids.
    due_at_us: i64,
    /// Handed to a fill.
    filling: bool,
    /// Spans of it handed out whose fill has not reported back.
    outstanding: usize,
    /// Why a span's fill fell short, the first one that did.
    why: Option<(String, String)>,
    /// Ids that came on a live connection after it opened.
    late: u64,
    /// Ids its fill brought.
    filled: u64,
    /// When its last id came in.
    last_in_us: Option<i64>,
}

impl Open {
    fn remaining(&self) -> u64 {
        self.missing.iter().map(|(a, b)| (b - a + 1) as u64).sum()
    }

    /// Takes `id` out of the missing ranges; whether it was missing.
    fn take(&mut self, id: i64) -> bool {
        let Some(i) = self.missing.iter().position(|&(a, b)| a <= id && id <= b) else {
            return false;
        };
        let (a, b) = self.missing[i];
        match (a == id, b == id) {
            (true, true) => {
                self.missing.remove(i);
            }
            (true, false) => self.missing[i].0 = id + 1,
            (false, true) => self.missing[i].1 = id - 1,
            (false, false) => {
                self.missing[i].1 = id - 1;
                self.missing.insert(i + 1, (id + 1, b));
            }
        }
        true
    }
}

/// How a trade stood against its symbol's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next id, or the first of a symbol not seen before.
    Next,
    /// Ids were skipped: a gap of this many trades opened before it.
    Skipped(u64),
    /// It filled in a missing id of an open gap.
    Filled,
    /// At or below the newest id, and missing from no gap.
    Regression,
}

/// What `/status` shows of a feed's continuity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContinuityStats {
    /// Symbols (per id space) tracked.
    pub tracked: usize,
    /// Gaps opened in all.
    pub gaps: u64,
    /// Trades those gaps lacked.
    pub gap_trades: u64,
    /// Gaps still open (waiting for late ids, or being filled).
    pub open: usize,
    /// Trades still missing from the open gaps.
    pub missing_now: u64,
    /// Settled gaps by how: filled from REST, late, unrecoverable, not
    /// filled (backfill off).
    pub filled_rest: u64,
    pub late: u64,
    pub unrecoverable: u64,
    pub not_filled: u64,
    /// Trades brought by fills, and trades that came late.
    pub backfilled_trades: u64,
    pub late_trades: u64,
    /// Trades never recovered.
    pub lost_trades: u64,
    /// Ids at or below the newest that filled no gap.
    pub regressions: u64,
}

/// Continuity of one feed's symbols.
#[derive(Debug)]
pub struct Continuity {
    exchange: String,
    grace_us: i64,
    /// Symbol, then id space (`trade`, `aggTrade`). Looked up per trade by
    /// borrowed names: a key of two owned strings cost two allocations a
    /// trade on the feed's thread (callgrind: ~660 instructions).
    tracks: FastMap<String, FastMap<String, Track>>,
    open: Vec<Open>,
    stats: ContinuityStats,
}

impl Continuity {
    pub fn new(exchange: &str, grace_ms: u64) -> Self {
        Self {
            exchange: exchange.to_string(),
            grace_us: i64::try_from(grace_ms.saturating_mul(1000)).unwrap_or(i64::MAX),
            tracks: FastMap::default(),
            open: Vec::new(),
            stats: ContinuityStats::default(),
        }
    }

    /// Starts a symbol where the lake left it: its newest stored id and
    /// that trade's time. The first live trade past it opens a gap for
    /// whatever lies between (the trades a crash lost). A symbol already
    /// tracked keeps what it has.
    pub fn seed(&mut self, symbol: &str, space: &str, last: i64, last_us: i64) {
        self.tracks
            .entry(symbol.to_string())
            .or_default()
            .entry(space.to_string())
            .or_insert(Track { last, last_us });
    }

    /// Takes in trade `id` of `symbol` (exchange time `ts_us`), seen at
    /// `now_us`.
    pub fn observe(&mut self, symbol: &str, space: &str, id: i64, ts_us: i64, now_us: i64) -> Seen {
        let Some(track) = self.tracks.get_mut(symbol).and_then(|s| s.get_mut(space)) else {
            self.tracks.entry(symbol.to_string()).or_default().insert(
                space.to_string(),
                Track {
                    last: id,
                    last_us: ts_us,
                },
            );
            return Seen::Next;
        };
        if id == track.last + 1 {
            track.last = id;
            track.last_us = ts_us;
            return Seen::Next;
        }
        if id > track.last {
            let span = GapSpan {
                symbol: symbol.to_string(),
                space: space.to_string(),
                from_id: track.last + 1,
                to_id: id - 1,
                after_us: track.last_us,
            };
            track.last = id;
            track.last_us = ts_us;
            let n = span.trades();
            self.stats.gaps += 1;
            self.stats.gap_trades += n;
            self.open.push(Open {
                missing: vec![(span.from_id, span.to_id)],
                span,
                detected_at_us: now_us,
                due_at_us: now_us.saturating_add(self.grace_us),
                filling: false,
                outstanding: 0,
                why: None,
                late: 0,
                filled: 0,
                last_in_us: None,
            });
            return Seen::Skipped(n);
        }
        match self.take(symbol, space, id, now_us) {
            Some(false) => {
                self.stats.late_trades += 1;
                Seen::Filled
            }
            Some(true) => {
                self.stats.backfilled_trades += 1;
                Seen::Filled
            }
            None => {
                self.stats.regressions += 1;
                Seen::Regression
            }
        }
    }

    /// Takes `id` out of the open gap that misses it: `Some(true)` when
    /// the gap is being filled (a fill brought it), `Some(false)` when it
    /// came late, `None` when no gap misses it.
    fn take(&mut self, symbol: &str, space: &str, id: i64, now_us: i64) -> Option<bool> {
        let g = self.open.iter_mut().find(|g| {
            g.span.symbol == symbol
                && g.span.space == space
                && g.span.from_id <= id
                && id <= g.span.to_id
        })?;
        if !g.take(id) {
            return None;
        }
        g.last_in_us = Some(now_us);
        if g.filling {
            g.filled += 1;
        } else {
            g.late += 1;
        }
        Some(g.filling)
    }

    /// Settles the gaps that filled in on their own, and hands out those
    /// past their grace: what is still missing of each, to fill. A gap
    /// handed out is not handed out again until [`finish`](Self::finish).
    pub fn due(&mut self, now_us: i64) -> (Vec<GapRecord>, Vec<GapSpan>) {
        let mut settled = Vec::new();
        let mut i = 0;
        while i < self.open.len() {
            let g = &self.open[i];
            if !g.filling && g.missing.is_empty() {
                let g = self.open.remove(i);
                self.stats.late += 1;
                settled.push(self.record(&g, "late", None));
                continue;
            }
            i += 1;
        }
        let mut fills = Vec::new();
        for g in self.open.iter_mut() {
            if !g.filling && g.due_at_us <= now_us {
                g.filling = true;
                g.outstanding = g.missing.len();
                for &(a, b) in &g.missing {
                    fills.push(GapSpan {
                        from_id: a,
                        to_id: b,
                        ..g.span.clone()
                    });
                }
            }
        }
        (settled, fills)
    }

    /// When the next pending gap falls due, if any waits.
    pub fn next_due_us(&self) -> Option<i64> {
        self.open
            .iter()
            .filter(|g| !g.filling)
            .map(|g| g.due_at_us)
            .min()
    }

    /// The fill of `span` (handed out by [`due`](Self::due)) is over,
    /// whatever it brought having gone through [`observe`](Self::observe).
    /// Once every span of its gap is over, the gap is settled: `rest` when
    /// nothing is missing, else `how` (`unrecoverable`, `not_filled`) with
    /// `why`.
    pub fn finish(&mut self, span: &GapSpan, how: &str, why: Option<String>) -> Option<GapRecord> {
        let i = self.open.iter().position(|g| {
            g.filling
                && g.span.symbol == span.symbol
                && g.span.space == span.space
                && g.span.from_id <= span.from_id
                && span.to_id <= g.span.to_id
        })?;
        let g = &mut self.open[i];
        if g.why.is_none()
            && g.missing
                .iter()
                .any(|&(a, b)| a <= span.to_id && b >= span.from_id)
        {
            g.why = Some((
                how.to_string(),
                why.unwrap_or_else(|| "the venue's history lacks them".into()),
            ));
        }
        g.outstanding = g.outstanding.saturating_sub(1);
        if g.outstanding > 0 {
            return None;
        }
        let g = self.open.remove(i);
        let record = match &g.why {
            None => {
                self.stats.filled_rest += 1;
                self.record(&g, "rest", None)
            }
            Some((how, why)) => {
                let lost = g.remaining();
                self.stats.lost_trades += lost;
                match how.as_str() {
                    "not_filled" => self.stats.not_filled += 1,
                    _ => self.stats.unrecoverable += 1,
                }
                let detail = format!("{lost} of {} trades not recovered: {why}", g.span.trades());
                self.record(&g, how, Some(detail))
            }
        };
        Some(record)
    }

    fn record(&self, g: &Open, how: &str, detail: Option<String>) -> GapRecord {
        GapRecord {
            exchange: self.exchange.clone(),
            symbol: g.span.symbol.clone(),
            id_space: g.span.space.clone(),
            from_id: g.span.from_id,
            to_id: g.span.to_id,
            missing: g.span.trades() as i64,
            filled: (g.filled + g.late) as i64,
            detected_at_us: g.detected_at_us,
            filled_at_us: if g.missing.is_empty() {
                g.last_in_us
            } else {
                None
            },
            how: how.to_string(),
            detail,
        }
    }

    pub fn stats(&self) -> ContinuityStats {
        ContinuityStats {
            tracked: self.tracks.values().map(FastMap::len).sum(),
            open: self.open.len(),
            missing_now: self.open.iter().map(Open::remaining).sum(),
            ..self.stats.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "BTCUSDT";
    const T: &str = "trade";

    fn feed(c: &mut Continuity, ids: impl IntoIterator<Item = i64>, now: i64) -> Vec<Seen> {
        ids.into_iter()
            .map(|i| c.observe(S, T, i, i * 10, now))
            .collect()
    }

    #[test]
    fn a_skip_opens_a_gap_that_falls_due_after_the_grace() {
        let mut c = Continuity::new("BINANCE", 1);
        let seen = feed(&mut c, [1, 2, 3, 7, 8], 0);
        assert_eq!(seen[3], Seen::Skipped(3));
        assert_eq!(c.stats().missing_now, 3);
        assert_eq!(c.due(999), (vec![], vec![]), "not due inside the grace");
        let (settled, fills) = c.due(1_000);
        assert!(settled.is_empty());
        assert_eq!(
            fills,
            vec![GapSpan {
                symbol: S.into(),
                space: T.into(),
                from_id: 4,
                to_id: 6,
                after_us: 30
            }]
        );
        assert!(c.due(5_000).1.is_empty(), "handed out once");
        // The fill brings 4..=6.
        assert!(
            feed(&mut c, [4, 5, 6], 2_000)
                .iter()
                .all(|s| *s == Seen::Filled)
        );
        let r = c
            .finish(&fills[0], "unrecoverable", Some("never said".into()))
            .unwrap();
        assert_eq!((r.how.as_str(), r.missing, r.filled), ("rest", 3, 3));
        assert_eq!(r.filled_at_us, Some(2_000));
        let s = c.stats();
        assert_eq!(
            (
                s.gaps,
                s.gap_trades,
                s.filled_rest,
                s.backfilled_trades,
                s.open
            ),
            (1, 3, 1, 3, 0)
        );
    }

    #[test]
    fn ids_that_come_late_settle_the_gap_as_late() {
        let mut c = Continuity::new("BINANCE", 1);
        feed(&mut c, [1, 4], 0);
        // The old connection of a rotation delivers 2 and 3 after 4.
        assert_eq!(feed(&mut c, [3, 2], 10), vec![Seen::Filled, Seen::Filled]);
        let (settled, fills) = c.due(10);
        assert!(fills.is_empty());
        assert_eq!(settled.len(), 1);
        assert_eq!((settled[0].how.as_str(), settled[0].filled), ("late", 2));
        assert_eq!(c.stats().late_trades, 2);
    }

    #[test]
    fn a_fill_that_brings_part_is_unrecoverable_with_what_is_lost() {
        let mut c = Continuity::new("KRAKEN", 0);
        feed(&mut c, [10, 20], 0);
        let (_, fills) = c.due(0);
        assert_eq!(fills.len(), 1);
        feed(&mut c, [11, 12, 19], 5);
        let r = c
            .finish(&fills[0], "unrecoverable", Some("429".into()))
            .unwrap();
        assert_eq!(r.how, "unrecoverable");
        assert_eq!(r.filled_at_us, None);
        assert!(
            r.detail
                .unwrap()
                .starts_with("6 of 9 trades not recovered: 429")
        );
        let s = c.stats();
        assert_eq!(
            (s.unrecoverable, s.lost_trades, s.backfilled_trades),
            (1, 6, 3)
        );
    }

    #[test]
    fn a_late_id_splits_a_gap_and_both_parts_are_filled() {
        let mut c = Continuity::new("BINANCE", 1);
        feed(&mut c, [1, 10], 0);
        assert_eq!(feed(&mut c, [5], 1), vec![Seen::Filled]);
        let (_, fills) = c.due(1_000);
        assert_eq!(
            fills
                .iter()
                .map(|f| (f.from_id, f.to_id))
                .collect::<Vec<_>>(),
            vec![(2, 4), (6, 9)]
        );
        feed(&mut c, [2, 3, 4], 2);
        assert_eq!(
            c.finish(&fills[0], "unrecoverable", None),
            None,
            "the other part is still out"
        );
        feed(&mut c, [6, 7, 8, 9], 3);
        let r = c.finish(&fills[1], "unrecoverable", None).unwrap();
        assert_eq!(
            (r.how.as_str(), r.from_id, r.to_id, r.filled),
            ("rest", 2, 9, 8)
        );
    }

    #[test]
    fn a_seed_from_the_lake_makes_the_first_live_trade_a_gap() {
        let mut c = Continuity::new("BINANCE", 0);
        c.seed(S, T, 100, 1_000);
        assert_eq!(c.observe(S, T, 150, 2_000, 0), Seen::Skipped(49));
        let (_, fills) = c.due(0);
        assert_eq!(
            (fills[0].from_id, fills[0].to_id, fills[0].after_us),
            (101, 149, 1_000)
        );
        // Another symbol's first trade opens nothing; old ids are regressions.
        assert_eq!(c.observe("ETHUSDT", T, 5, 0, 0), Seen::Next);
        assert_eq!(c.observe(S, T, 100, 0, 0), Seen::Regression);
        assert_eq!(c.stats().regressions, 1);
    }
}
