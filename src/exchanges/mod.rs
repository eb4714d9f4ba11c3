//! Exchange protocols: each module turns one venue's frames into `TradeV2`.

pub mod binance;

/// The exchange name of equities loaded by `ticklake load asx`; the daemon
/// reads their topic too, so they land like any live trade.
pub const ASX: &str = "ASX";

/// What a frame turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// One normalized trade.
    Trade(Box<crate::model::TradeV2>),
    /// A well-formed frame of a kind this feed does not store (depth, kline,
    /// a subscription reply ...). The kind is a small fixed label for metrics.
    Skipped(&'static str),
}

/// Why a frame could not be parsed. The text becomes the dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("binary frame of {0} bytes; the protocol is text JSON")]
    Binary(usize),
    #[error("invalid json: {0}")]
    Json(String),
    #[error("frame is not a json object")]
    NotObject,
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("field `{field}`: expected {expected}, got {got}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error("field `{field}`: {source}")]
    Decimal {
        field: &'static str,
        source: crate::model::DecimalError,
    },
    #[error("field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The symbol field, against the exchange's configured pattern
    /// (`instruments::SymbolRule`).
    #[error("field `{field}`: {source}")]
    Symbol {
        field: &'static str,
        source: crate::instruments::SymbolError,
    },
}

impl FrameError {
    /// A short fixed label for the metric, where the full text would explode
    /// the label cardinality.
    pub fn class(&self) -> &'static str {
        match self {
            FrameError::Empty => "empty",
            FrameError::Binary(_) => "binary",
            FrameError::Json(_) => "invalid_json",
            FrameError::NotObject => "not_object",
            FrameError::Missing(_) => "missing_field",
            FrameError::WrongType { .. } => "wrong_type",
            FrameError::Decimal { .. } => "decimal",
            FrameError::Invalid { .. } => "invalid_value",
            FrameError::Symbol { .. } => "bad_symbol",
        }
    }
}
