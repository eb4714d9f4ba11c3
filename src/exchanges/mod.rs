//! Exchange protocols: each module turns one venue's frames into `TradeV2`.

pub mod binance;

/// The exchange name of equities loaded by `ticklake load asx`; the daemon
/// reads their topic too, so they land like any live trade.
pub const ASX: &str = "ASX";

/// Longest instrument symbol stored.
pub const MAX_SYMBOL_LEN: usize = 32;

/// Checks a symbol from a frame before it reaches a record: 1 to
/// `MAX_SYMBOL_LEN` ASCII letters, digits and `-_/.` (the separators
/// venues use: `BTC-USD`, `XBT/USD`). Anything else is a malformed frame,
/// dead-lettered, not a row keyed by arbitrary bytes.
pub fn check_symbol(symbol: &str) -> Result<(), FrameError> {
    let reason = if symbol.is_empty() {
        "empty symbol".to_string()
    } else if symbol.len() > MAX_SYMBOL_LEN {
        format!("symbol of {} bytes; at most {MAX_SYMBOL_LEN}", symbol.len())
    } else if let Some(c) = symbol
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | '.')))
    {
        format!("symbol contains {c:?}; only letters, digits and -_/. are allowed")
    } else {
        return Ok(());
    };
    Err(FrameError::Invalid { field: "s", reason })
}

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
        }
    }
}
