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
