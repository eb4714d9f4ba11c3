//! What the Kraken and Coinbase parsers share: a trade checked field by
//! field before it becomes a record, and the readings of a trade's time and
//! amounts each of them needs.

use super::{Frame, FrameError, ParseCtx};
use crate::model::{AssetClass, Dec8, Side, TradeV2, VendorData, message_id};

/// The id space of the venues whose trade ids form one sequence per
/// symbol.
const ID_SPACE: &str = "trade";

/// One trade, checked, before it becomes a record.
pub(crate) struct Fill<'a> {
    /// The venue's symbol, as in the frame.
    pub symbol: &'a str,
    /// The venue's trade id as text (a derived one where it has none).
    pub id: &'a str,
    pub sequence: Option<i64>,
    pub price: Dec8,
    pub quantity: Dec8,
    pub timestamp_us: i64,
    /// The aggressor's side.
    pub side: Side,
    pub conditions: Vec<String>,
    pub vendor: VendorData,
}

impl Fill<'_> {
    /// The record, with `currency` the quote currency and `instrument`
    /// the normalized pair of its symbol, as the venue's protocol reads
    /// them.
    pub fn into_trade(
        self,
        ctx: &ParseCtx<'_>,
        currency: String,
        instrument: Option<String>,
    ) -> TradeV2 {
        TradeV2 {
            message_id: message_id(ctx.exchange, ID_SPACE, self.symbol, self.id),
            trade_id: format!("{}-{}", ctx.exchange, self.id),
            symbol: self.symbol.to_string(),
            exchange: ctx.exchange.to_string(),
            asset_class: AssetClass::Crypto,
            timestamp_us: self.timestamp_us,
            ingestion_timestamp_us: ctx.received_us,
            price: self.price,
            quantity: self.quantity,
            currency,
            side: self.side,
            trade_conditions: self.conditions,
            source_sequence: self.sequence,
            platform_sequence: None,
            vendor_data: (!self.vendor.is_empty()).then_some(self.vendor),
            instrument,
        }
    }
}

/// An RFC 3339 time as microseconds since the epoch (digits below a
/// microsecond dropped); times before the epoch are refused.
pub(crate) fn rfc3339_us(text: &str, field: &'static str) -> Result<i64, FrameError> {
    let t = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| FrameError::Invalid {
        field,
        reason: format!("{text:?} is not an RFC 3339 time: {e}"),
    })?;
    let us = t.timestamp_micros();
    if us < 0 {
        return Err(FrameError::Invalid {
            field,
            reason: format!("{text:?} is before the epoch"),
        });
    }
    Ok(us)
}

/// Prices and quantities of a trade are never below zero.
pub(crate) fn non_negative(value: Dec8, field: &'static str) -> Result<Dec8, FrameError> {
    if value.unscaled() < 0 {
        return Err(FrameError::Invalid {
            field,
            reason: format!("{value} is negative"),
        });
    }
    Ok(value)
}

/// Runs `parse`, which pushes a frame's trades one by one; when it fails
/// part way, the trades it pushed are taken back, so a bad frame adds
/// nothing.
pub(crate) fn all_or_nothing(
    out: &mut Vec<TradeV2>,
    parse: impl FnOnce(&mut Vec<TradeV2>) -> Result<Frame, FrameError>,
) -> Result<Frame, FrameError> {
    let start = out.len();
    let result = parse(out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}
