//! The HTTP query API under `/v1`, and its OpenAPI document at
//! `/openapi.json`. HTTP only: handlers parse and validate parameters, the
//! `QueryActor` runs every query (`crate::query` answers it), and a
//! [`QueryError`] becomes a status code here. Every error is JSON
//! `{error, detail}`.

pub mod admin;
pub mod client;
pub mod openapi;
pub mod params;
pub mod schema_registry;
pub mod server;

use std::collections::HashMap;

use actix::Recipient;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError, web};
use serde::Deserialize;

use crate::messages::query::{
    InstrumentOhlcvRequest, InstrumentRecentRequest, OhlcvRequest, QueryError, QueryRequest,
    RecentRequest, RunQuery, TradesRequest,
};
use params::Params;

/// Why a request failed: the query side's verdict (or the handler's, for
/// a parameter), which says whose fault it was and so which status code it
/// gets. `error` in the body is its code, `detail` its message.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ApiError(#[from] pub QueryError);

impl ApiError {
    pub fn bad(param: &str, reason: impl Into<String>) -> Self {
        ApiError(QueryError::bad(param, reason))
    }

    pub fn code(&self) -> &'static str {
        self.0.code()
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match &self.0 {
            QueryError::BadParam { .. } | QueryError::Rejected(_) | QueryError::InvalidQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            QueryError::NotFound(_) => StatusCode::NOT_FOUND,
            QueryError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            // The server cannot hold what the request needs (RFC 4918):
            // the answer or the query's operators outgrew the query memory.
            QueryError::OverMemory(_) => StatusCode::INSUFFICIENT_STORAGE,
            QueryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            QueryError::TooBusy(_) => StatusCode::TOO_MANY_REQUESTS,
            QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if matches!(self.0, QueryError::Internal(_)) {
            tracing::warn!(error = %self, "api request failed");
        }
        HttpResponse::build(self.status_code())
            .json(serde_json::json!({"error": self.code(), "detail": self.to_string()}))
    }
}

/// What the handlers need: where queries run.
#[derive(Clone)]
pub struct ApiState {
    pub query: Recipient<RunQuery>,
}

/// Adds `/openapi.json` and `/v1/*` to an actix-web app.
pub fn configure(cfg: &mut web::ServiceConfig, state: ApiState) {
    let json = web::JsonConfig::default()
        .limit(1 << 20)
        .error_handler(|e, _| ApiError::bad("body", e.to_string()).into());
    let query = web::QueryConfig::default()
        .error_handler(|e, _| ApiError::bad("query string", e.to_string()).into());
    cfg.route("/openapi.json", web::get().to(openapi::serve))
        .service(
            web::scope("/v1")
                .app_data(web::Data::new(state))
                .app_data(json)
                .app_data(query)
                .service(
                    web::resource("/trades")
                        .route(web::get().to(trades))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/trades/recent")
                        .route(web::get().to(recent))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/ohlcv")
                        .route(web::get().to(ohlcv))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/symbols")
                        .route(web::get().to(symbols))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/snapshots")
                        .route(web::get().to(snapshots))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    web::resource("/sql")
                        .route(web::post().to(sql))
                        .default_service(web::to(method_not_allowed)),
                )
                .default_service(web::to(not_found)),
        );
}

type Query = web::Query<HashMap<String, String>>;

async fn run(state: &ApiState, req: QueryRequest) -> Result<HttpResponse, ApiError> {
    let answer = state
        .query
        .send(RunQuery(req))
        .await
        .map_err(|e| QueryError::Unavailable(format!("query actor: {e}")))??;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(AnswerBody::new(answer)))
}

/// An answer as a response body: its parts in order, no copy, each
/// released from the query memory as it is handed to the connection.
struct AnswerBody {
    parts: std::vec::IntoIter<Vec<u8>>,
    size: u64,
    memory: Option<datafusion::execution::memory_pool::MemoryReservation>,
}

impl AnswerBody {
    fn new(answer: crate::messages::query::Answer) -> Self {
        let size = answer.len() as u64;
        let (parts, memory) = answer.into_parts();
        Self {
            parts: parts.into_iter(),
            size,
            memory,
        }
    }
}

impl actix_web::body::MessageBody for AnswerBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> actix_web::body::BodySize {
        actix_web::body::BodySize::Sized(self.size)
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<web::Bytes, Self::Error>>> {
        let this = self.get_mut();
        let next = this.parts.next().map(|part| {
            if let Some(m) = &this.memory {
                m.shrink(part.capacity().min(m.size()));
            }
            Ok(web::Bytes::from(part))
        });
        std::task::Poll::Ready(next)
    }
}

/// Upper bound of `limit`; the engine also caps it at `api.max_rows`.
const MAX_LIMIT: i64 = 1_000_000;

async fn trades(state: web::Data<ApiState>, q: Query) -> Result<HttpResponse, ApiError> {
    let p = Params::new(
        &q,
        &[
            "symbol",
            "instrument",
            "exchange",
            "start",
            "end",
            "limit",
            "cursor",
            "snapshot_id",
        ],
    )?;
    let req = TradesRequest {
        symbol: p.name("symbol")?,
        instrument: p.instrument("instrument")?,
        exchange: p.name("exchange")?,
        start_us: p.time("start")?,
        end_us: p.time("end")?,
        limit: p.int("limit", 1, MAX_LIMIT)?.map(|n| n as usize),
        cursor: p.cursor("cursor")?,
        snapshot_id: p.int("snapshot_id", i64::MIN, i64::MAX)?,
    };
    if let (Some(s), Some(e)) = (req.start_us, req.end_us)
        && e <= s
    {
        return Err(ApiError::bad("end", "must be after start"));
    }
    run(&state, QueryRequest::Trades(req)).await
}

/// What a single-market endpoint (`/v1/trades/recent`, `/v1/ohlcv`) is
/// about: a venue's symbol, or a normalized instrument across exchanges
/// (narrowed to one symbol too when both are given).
enum Market {
    Symbol(String),
    Instrument {
        instrument: String,
        symbol: Option<String>,
    },
}

impl Market {
    /// `symbol` or `instrument`, at least one of them.
    fn of(p: &Params<'_>) -> Result<Self, ApiError> {
        let symbol = p.name("symbol")?;
        match (p.instrument("instrument")?, symbol) {
            (Some(instrument), symbol) => Ok(Market::Instrument { instrument, symbol }),
            (None, Some(symbol)) => Ok(Market::Symbol(symbol)),
            (None, None) => Err(ApiError::bad(
                "symbol",
                "is required unless instrument is given (e.g. symbol=BTCUSDT or instrument=BTC-USDT)",
            )),
        }
    }
}

async fn recent(state: web::Data<ApiState>, q: Query) -> Result<HttpResponse, ApiError> {
    let p = Params::new(
        &q,
        &["symbol", "instrument", "exchange", "minutes", "limit"],
    )?;
    let market = Market::of(&p)?;
    let exchange = p.name("exchange")?;
    let minutes = p.int("minutes", 1, 7 * 24 * 60)?.unwrap_or(15);
    let limit = p.int("limit", 1, MAX_LIMIT)?.map(|n| n as usize);
    let req = match market {
        Market::Symbol(symbol) => QueryRequest::Recent(RecentRequest {
            symbol,
            exchange,
            minutes,
            limit,
        }),
        Market::Instrument { instrument, symbol } => {
            QueryRequest::InstrumentRecent(InstrumentRecentRequest {
                instrument,
                symbol,
                exchange,
                minutes,
                limit,
            })
        }
    };
    run(&state, req).await
}

async fn ohlcv(state: web::Data<ApiState>, q: Query) -> Result<HttpResponse, ApiError> {
    let p = Params::new(
        &q,
        &[
            "symbol",
            "instrument",
            "exchange",
            "interval",
            "start",
            "end",
        ],
    )?;
    let market = Market::of(&p)?;
    let exchange = p.name("exchange")?;
    let interval = p.interval("interval")?;
    let start_us = p.required_time("start")?;
    let end_us = p.required_time("end")?;
    if end_us <= start_us {
        return Err(ApiError::bad("end", "must be after start"));
    }
    let req = match market {
        Market::Symbol(symbol) => QueryRequest::Ohlcv(OhlcvRequest {
            symbol,
            exchange,
            interval,
            start_us,
            end_us,
        }),
        // One series per exchange, side by side.
        Market::Instrument { instrument, symbol } => {
            QueryRequest::InstrumentOhlcv(InstrumentOhlcvRequest {
                instrument,
                symbol,
                exchange,
                interval,
                start_us,
                end_us,
            })
        }
    };
    run(&state, req).await
}

async fn symbols(state: web::Data<ApiState>, q: Query) -> Result<HttpResponse, ApiError> {
    Params::new(&q, &[])?;
    run(&state, QueryRequest::Symbols).await
}

async fn snapshots(state: web::Data<ApiState>, q: Query) -> Result<HttpResponse, ApiError> {
    Params::new(&q, &[])?;
    run(&state, QueryRequest::Snapshots).await
}

/// Body of `POST /v1/sql`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlBody {
    pub sql: String,
}

async fn sql(
    state: web::Data<ApiState>,
    body: web::Json<SqlBody>,
) -> Result<HttpResponse, ApiError> {
    run(&state, QueryRequest::Sql(body.into_inner().sql)).await
}

async fn not_found(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(QueryError::NotFound(format!("no endpoint {}; see /openapi.json", req.path())).into())
}

async fn method_not_allowed(req: actix_web::HttpRequest) -> HttpResponse {
    let e = serde_json::json!({
        "error": "method_not_allowed",
        "detail": format!("{} is not allowed on {}; see /openapi.json", req.method(), req.path()),
    });
    HttpResponse::MethodNotAllowed().json(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_limits_have_status_codes_of_their_own() {
        let status = |e: QueryError| (ApiError(e.clone()).status_code(), e.code());
        assert_eq!(
            status(QueryError::Timeout(10)),
            (StatusCode::GATEWAY_TIMEOUT, "timeout")
        );
        assert_eq!(
            status(QueryError::OverMemory("the answer".into())),
            (StatusCode::INSUFFICIENT_STORAGE, "memory_limit")
        );
        assert_eq!(
            status(QueryError::TooBusy(8)),
            (StatusCode::TOO_MANY_REQUESTS, "too_busy")
        );
    }
}
