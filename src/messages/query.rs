//! Messages to the `QueryActor`: one typed request per `/v1` endpoint, and
//! the reply: an [`Answer`] or a [`QueryError`] that says whose fault it was
//! (the HTTP layer maps it to a status code).

use actix::Message;
use datafusion::execution::memory_pool::MemoryReservation;

/// `GET /v1/trades`.
#[derive(Debug, Clone, Default)]
pub struct TradesRequest {
    pub symbol: Option<String>,
    /// The normalized `BASE-QUOTE` pair (`TradeV2::instrument`), on every
    /// exchange unless `exchange` narrows it. With `symbol` too, both apply.
    pub instrument: Option<String>,
    pub exchange: Option<String>,
    /// Inclusive, UTC microseconds.
    pub start_us: Option<i64>,
    /// Exclusive, UTC microseconds.
    pub end_us: Option<i64>,
    pub limit: Option<usize>,
    pub cursor: Option<Cursor>,
    /// Time travel: read this snapshot of the lake only.
    pub snapshot_id: Option<i64>,
}

/// `GET /v1/trades/recent?symbol=`: one venue symbol.
#[derive(Debug, Clone)]
pub struct RecentRequest {
    pub symbol: String,
    pub exchange: Option<String>,
    pub minutes: i64,
    /// At most this many of the newest trades (default and cap
    /// `api.max_rows`).
    pub limit: Option<usize>,
}

/// `GET /v1/trades/recent?instrument=`: one normalized instrument, on
/// every exchange unless `exchange` narrows it (and one venue symbol too,
/// when `symbol` is given: both apply). The same window and page as
/// [`RecentRequest`].
#[derive(Debug, Clone)]
pub struct InstrumentRecentRequest {
    pub instrument: String,
    pub symbol: Option<String>,
    pub exchange: Option<String>,
    pub minutes: i64,
    pub limit: Option<usize>,
}

/// `GET /v1/ohlcv?symbol=`: one series of bars, over every exchange that
/// trades the symbol unless `exchange` narrows it.
#[derive(Debug, Clone)]
pub struct OhlcvRequest {
    pub symbol: String,
    pub exchange: Option<String>,
    pub interval: Interval,
    pub start_us: i64,
    pub end_us: i64,
}

/// `GET /v1/ohlcv?instrument=`: one series of bars per exchange trading
/// the instrument (only `exchange`'s when given), side by side, never
/// blended; `symbol`, when given, narrows the trades too.
#[derive(Debug, Clone)]
pub struct InstrumentOhlcvRequest {
    pub instrument: String,
    pub symbol: Option<String>,
    pub exchange: Option<String>,
    pub interval: Interval,
    pub start_us: i64,
    pub end_us: i64,
}

#[derive(Debug, Clone)]
pub enum QueryRequest {
    Trades(TradesRequest),
    Recent(RecentRequest),
    InstrumentRecent(InstrumentRecentRequest),
    Ohlcv(OhlcvRequest),
    InstrumentOhlcv(InstrumentOhlcvRequest),
    Symbols,
    Snapshots,
    /// `POST /v1/sql`: checked by the read-only guard before it is planned.
    Sql(String),
}

/// Runs one request; the reply is the endpoint's JSON body.
#[derive(Debug, Message)]
#[rtype(result = "Result<Answer, QueryError>")]
pub struct RunQuery(pub QueryRequest);

/// Maintenance committed to `table` (a compaction, a partition drop, an
/// expiry): re-pin its newest snapshot. A pin older than the commit may
/// be expired, and its files deleted, by the time a query reads it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct LakeChanged {
    pub table: &'static str,
}

/// A query's work has stopped and its slot is free again (sent by the
/// query's own task, which may end after its answer, e.g. a timeout).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct QueryDone {
    pub timed_out: bool,
}

/// Where the next page starts: after the row with this (timestamp,
/// message_id), the order `/v1/trades` pages in. Rendered as
/// `<timestamp µs>:<message_id>`; clients pass it back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub timestamp_us: i64,
    pub message_id: String,
}

impl Cursor {
    pub fn render(&self) -> String {
        format!("{}:{}", self.timestamp_us, self.message_id)
    }
}

/// OHLCV bar widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    M1,
    M5,
    M15,
    H1,
    D1,
}

impl Interval {
    /// `1m`, `5m`, `15m`, `1h` or `1d`.
    pub fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "1m" => Interval::M1,
            "5m" => Interval::M5,
            "15m" => Interval::M15,
            "1h" => Interval::H1,
            "1d" => Interval::D1,
            _ => return None,
        })
    }

    pub fn micros(self) -> i64 {
        const MIN: i64 = 60_000_000;
        match self {
            Interval::M1 => MIN,
            Interval::M5 => 5 * MIN,
            Interval::M15 => 15 * MIN,
            Interval::H1 => 60 * MIN,
            Interval::D1 => 24 * 60 * MIN,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Interval::M1 => "1m",
            Interval::M5 => "5m",
            Interval::M15 => "15m",
            Interval::H1 => "1h",
            Interval::D1 => "1d",
        }
    }
}

/// An answer: one JSON object, as text in parts that follow each other.
/// Rows are written straight from Arrow into the text, part by part
/// (`crate::query::json`); the parts are sent as they are, never joined.
/// `memory` counts them on the query memory (`api.max_memory_bytes`) until
/// they are sent or dropped.
pub struct Answer {
    parts: Vec<Vec<u8>>,
    memory: Option<MemoryReservation>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("parts", &self.parts.len())
            .field("bytes", &self.len())
            .finish()
    }
}

impl Answer {
    /// `text` must be one JSON object.
    pub fn from_json_text(text: String) -> Self {
        Self::from_parts(vec![text.into_bytes()], None)
    }

    /// `parts`, one after the other, must be one JSON object.
    pub fn from_parts(parts: Vec<Vec<u8>>, memory: Option<MemoryReservation>) -> Self {
        Self { parts, memory }
    }

    /// Bytes of the text.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole text in one string: a copy, for the CLI, tests and tools.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.parts.concat()).into_owned()
    }

    /// The parts, and what counts them on the query memory.
    pub fn into_parts(self) -> (Vec<Vec<u8>>, Option<MemoryReservation>) {
        (self.parts, self.memory)
    }
}

/// Why a query failed, and so whose fault it was: the caller's (a bad
/// parameter, a rejected or invalid query, something that does not exist),
/// the daemon's capacity (timeout, unavailable: retry later) or ours
/// (internal). `code()` is the stable name clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("parameter `{param}`: {reason}")]
    BadParam { param: String, reason: String },
    /// Refused by the read-only SQL guard before planning.
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the query ran longer than the limit of {0} ms")]
    Timeout(u64),
    /// The query's operators or its answer need more of the query memory
    /// (`api.max_memory_bytes`, shared by the queries running at once)
    /// than is left; the message says what and how much.
    #[error("{0}")]
    OverMemory(String),
    #[error("{0}")]
    Unavailable(String),
    /// Every query slot (`api.max_concurrent`) is taken: retry shortly.
    #[error("{0} queries are running, the most this daemon runs at once; retry shortly")]
    TooBusy(usize),
    #[error("{0}")]
    Internal(String),
}

impl QueryError {
    pub fn bad(param: &str, reason: impl Into<String>) -> Self {
        QueryError::BadParam {
            param: param.to_string(),
            reason: reason.into(),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        QueryError::Internal(e.to_string())
    }

    /// The stable name of the error that clients see.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::BadParam { .. } => "bad_parameter",
            QueryError::Rejected(_) => "rejected_query",
            QueryError::InvalidQuery(_) => "invalid_query",
            QueryError::NotFound(_) => "not_found",
            QueryError::Timeout(_) => "timeout",
            QueryError::OverMemory(_) => "memory_limit",
            QueryError::Unavailable(_) => "unavailable",
            QueryError::TooBusy(_) => "too_busy",
            QueryError::Internal(_) => "internal",
        }
    }

    /// Whether the same query may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            QueryError::Timeout(_) | QueryError::Unavailable(_) | QueryError::TooBusy(_)
        )
    }
}
