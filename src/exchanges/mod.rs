//! Exchange protocols: each module turns one venue's frames into `TradeV2`.
//!
//! A protocol is what a venue speaks (its URL form, subscription frames,
//! keep-alive and frame format); a feed is one configured instance of it
//! (`[feeds.<name>]`), with the exchange name stored in its records. Binance
//! and Binance.US are two feeds of one protocol.

pub mod binance;
mod binance_rest;
pub mod coinbase;
mod coinbase_rest;
mod fill;
pub mod kraken;
pub mod rest;

use std::time::Duration;

use crate::config::{FeedConfig, ProtocolKind};
use crate::instruments::SymbolRule;
use crate::model::TradeV2;

/// The exchange name of equities loaded by `ticklake load asx`; the daemon
/// reads their topic too, so they land like any live trade.
pub const ASX: &str = "ASX";

/// What the feed knows when it parses a frame.
#[derive(Debug, Clone, Copy)]
pub struct ParseCtx<'a> {
    /// The exchange name stored in every record (`feeds.<name>.exchange`).
    pub exchange: &'a str,
    /// The exchange's symbol rule from the instruments file: a trade whose
    /// symbol it refuses makes the frame a dead letter.
    pub symbols: &'a SymbolRule,
    /// When the frame arrived, microseconds since the epoch.
    pub received_us: i64,
}

/// What one frame held, once its trades (if any) are in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// This many trades were pushed (at least one).
    Trades(usize),
    /// A well-formed frame of a kind the feed does not store (heartbeat,
    /// subscription reply, book ...). A small fixed label for metrics.
    Skipped(&'static str),
}

/// One exchange protocol. Implementations are stateless: a frame is parsed
/// on its own, so the same protocol value serves every connection.
pub trait Protocol: Send + Sync {
    fn kind(&self) -> ProtocolKind;

    /// The URL to connect to. Binance names its streams in the URL; the
    /// others subscribe with frames and connect to `feed.url` as it is.
    fn connect_url(&self, feed: &FeedConfig) -> String {
        feed.url.clone()
    }

    /// Text frames sent right after the handshake, in order.
    fn subscribe_frames(&self, feed: &FeedConfig) -> Vec<String>;

    /// An application-level ping and how often to send it, for venues that
    /// want one besides WebSocket pings.
    fn keepalive(&self) -> Option<(Duration, String)> {
        None
    }

    /// A configured symbol (`feeds.<name>.symbols`) as it appears in the
    /// venue's frames, which is the form the symbol rule checks.
    fn frame_symbol(&self, configured: &str) -> String;

    /// The normalized instrument, `BASE-QUOTE` in upper case (`BTC-USDT`,
    /// `BTC-USD`; Kraken's `XBT` is `BTC`), of a symbol as the venue writes
    /// it in frames; `None` when it cannot be told. `parse` sets it in every
    /// trade it makes.
    fn instrument(&self, symbol: &str) -> Option<String>;

    /// Parses one text frame: its trades are pushed onto `out` (which may
    /// hold earlier frames' trades; only push). A frame that is bad in any
    /// part pushes nothing and is an error, so it goes whole to the
    /// dead-letter table.
    fn parse(
        &self,
        text: &str,
        ctx: &ParseCtx<'_>,
        out: &mut Vec<TradeV2>,
    ) -> Result<Frame, FrameError>;

    /// Whether the venue numbers the trades of each symbol (per id space)
    /// one by one, so that a skipped id is a missed trade. The id is the
    /// trade's `source_sequence`; its space, the `stream` in its vendor
    /// data (`trade` when there is none).
    fn contiguous_ids(&self) -> bool {
        false
    }

    /// The venue's REST trade history, when gaps can be filled from it.
    fn rest(&self) -> Option<&dyn rest::RestHistory> {
        None
    }
}

/// The protocol a feed speaks.
pub fn protocol(kind: ProtocolKind) -> Box<dyn Protocol> {
    match kind {
        ProtocolKind::Binance => Box::new(binance::Binance),
        ProtocolKind::Kraken => Box::new(kraken::KrakenV2),
        ProtocolKind::KrakenV1 => Box::new(kraken::KrakenV1),
        ProtocolKind::Coinbase => Box::new(coinbase::CoinbaseAdvanced),
        ProtocolKind::CoinbaseExchange => Box::new(coinbase::CoinbaseExchange),
    }
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
    /// The symbol field, against the exchange's configured pattern
    /// (`instruments::SymbolRule`).
    /// The venue said something went wrong (a refused subscription, an
    /// error event). Kept as a dead letter so it is seen, not only logged.
    #[error("the exchange reported an error: {0}")]
    Venue(String),
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
            FrameError::Venue(_) => "venue_error",
        }
    }
}
