//! A venue's public trade history over REST, page by page: what a gap in
//! the trade ids is filled from (`backfill`). Each protocol whose trade
//! ids run contiguously per symbol says how to ask for a page and how to
//! read one; the trades it reads are the very records its WebSocket parser
//! makes of the same trades (message ids included), so dedup and the lake
//! see one trade, whichever way it came.

use super::{FrameError, ParseCtx};
use crate::model::TradeV2;

/// The trades a gap lacks, and what was seen just before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapSpan {
    /// The symbol as the venue writes it in frames (`TradeV2::symbol`).
    pub symbol: String,
    /// The id space: `trade`, or Binance's `aggTrade`.
    pub space: String,
    /// First missing id.
    pub from_id: i64,
    /// Last missing id.
    pub to_id: i64,
    /// The exchange time (µs) of the last trade before the gap, for venues
    /// that page by time (Kraken).
    pub after_us: i64,
}

impl GapSpan {
    pub fn trades(&self) -> u64 {
        (self.to_id - self.from_id + 1).max(0) as u64
    }
}

/// For venues with one id space, `trade`: the gap must be in it, and its
/// symbol must pass the exchange's symbol rule, as a frame's does.
pub(super) fn check_trade_gap(
    gap: &GapSpan,
    ctx: &ParseCtx<'_>,
    venue: &str,
) -> Result<(), FrameError> {
    if gap.space != "trade" {
        return Err(FrameError::Invalid {
            field: "space",
            reason: format!("{:?} is not {venue}'s id space \"trade\"", gap.space),
        });
    }
    ctx.symbols
        .check(&gap.symbol)
        .map_err(|source| FrameError::Symbol {
            field: "symbol",
            source,
        })
}

/// One page of a venue's trade history.
pub trait RestHistory: Send + Sync {
    /// The path and query, after the feed's `rest_url`, of a page of
    /// `gap`'s trades: the first page when `cursor` is `None`, else the
    /// page the previous one's `parse_page` pointed to.
    fn page_path(&self, gap: &GapSpan, cursor: Option<&str>, limit: u32) -> String;

    /// Reads a page: pushes every trade of the gap's symbol and id space it
    /// holds (in or out of the gap: the caller keeps the gap's), and
    /// returns the cursor of the next page toward the gap's far end, or
    /// `None` when there is none (the page reached past the gap, or the
    /// history ends). A page that is bad anywhere pushes nothing and is an
    /// error, as a bad frame is.
    fn parse_page(
        &self,
        body: &str,
        gap: &GapSpan,
        ctx: &ParseCtx<'_>,
        out: &mut Vec<TradeV2>,
    ) -> Result<Option<String>, FrameError>;
}

/// What the venues' REST tests share: a gap, and a page read with an
/// exchange's built-in symbol rule.
#[cfg(test)]
pub(super) mod testing {
    use super::*;
    use crate::instruments::Instruments;

    pub fn gap(symbol: &str, space: &str, from_id: i64, to_id: i64, after_us: i64) -> GapSpan {
        GapSpan {
            symbol: symbol.into(),
            space: space.into(),
            from_id,
            to_id,
            after_us,
        }
    }

    /// `p` reads `body` for `gap` as `exchange` would, received at
    /// `received_us`.
    pub fn parse(
        p: &dyn RestHistory,
        exchange: &str,
        received_us: i64,
        body: &str,
        gap: &GapSpan,
        out: &mut Vec<TradeV2>,
    ) -> Result<Option<String>, FrameError> {
        let instruments = Instruments::builtin().unwrap();
        let ctx = ParseCtx {
            exchange,
            symbols: instruments.symbol_rule(exchange).unwrap(),
            received_us,
        };
        p.parse_page(body, gap, &ctx, out)
    }
}
