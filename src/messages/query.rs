//! Messages to the `QueryActor`: one typed request per `/v1` endpoint.

use actix::Message;

use crate::api::params::{Cursor, Interval};

/// `GET /v1/trades`.
#[derive(Debug, Clone, Default)]
pub struct TradesRequest {
    pub symbol: Option<String>,
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

/// `GET /v1/trades/recent`.
#[derive(Debug, Clone)]
pub struct RecentRequest {
    pub symbol: String,
    pub exchange: Option<String>,
    pub minutes: i64,
    /// At most this many of the newest trades (default and cap
    /// `api.max_rows`).
    pub limit: Option<usize>,
}

/// `GET /v1/ohlcv`.
#[derive(Debug, Clone)]
pub struct OhlcvRequest {
    pub symbol: String,
    pub exchange: Option<String>,
    pub interval: Interval,
    pub start_us: i64,
    pub end_us: i64,
}

#[derive(Debug, Clone)]
pub enum QueryRequest {
    Trades(TradesRequest),
    Recent(RecentRequest),
    Ohlcv(OhlcvRequest),
    Symbols,
    Snapshots,
    /// `POST /v1/sql`: checked by the read-only guard before it is planned.
    Sql(String),
}

/// Runs one request; the reply is the endpoint's JSON body.
#[derive(Debug, Message)]
#[rtype(result = "Result<crate::api::engine::Answer, crate::api::ApiError>")]
pub struct RunQuery(pub QueryRequest);
