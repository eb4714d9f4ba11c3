//! Historical data sets turned into `TradeV2`, for `ticklake load`.

pub mod asx;
pub mod load;
