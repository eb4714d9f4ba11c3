//! Fetching a gap's trades from the venue's public REST history
//! (`exchanges::rest`), page by page, within the venue's rate limit.
//!
//! Requests are spaced by a `governor` rate limiter
//! (`feeds.<name>.rest_requests_per_sec`). A page that fails for a reason
//! that passes (429 or 418 rate limiting, a 5xx, a dropped connection) is
//! tried again with capped exponential backoff (`backon`), waiting at least
//! what the venue's `Retry-After` asks; when the tries run out the fill ends
//! `unrecoverable` and says why, and the feed goes on. HTTP runs on
//! tokio's blocking pool: `ureq` is the project's HTTP client, and a fill
//! is a few requests a minute at most, not worth a second async stack.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::FeedConfig;
use crate::exchanges::rest::GapSpan;
use crate::exchanges::{FrameError, ParseCtx, Protocol};
use crate::instruments::SymbolRule;
use crate::model::{TradeV2, now_us};

/// Tries of one page before the fill gives up.
const PAGE_TRIES: usize = 5;
/// Longest wait between two tries, whatever `Retry-After` says.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Pages of one span at most: a bound on a venue that keeps pointing on.
const MAX_PAGES: usize = 10_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackfillError {
    /// The venue kept refusing for its rate limit (429, or 418 after
    /// ignored 429s).
    #[error("rate limited by the venue (HTTP {status}) after {tries} tries")]
    RateLimited { status: u16, tries: usize },
    #[error("HTTP {status} from {url}: {body}")]
    Http {
        status: u16,
        url: String,
        body: String,
    },
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("a page from {url} is not what the venue sends: {source}")]
    Page { url: String, source: FrameError },
    #[error("the protocol has no REST history")]
    NoHistory,
}

impl BackfillError {
    /// Worth another try: the venue may answer differently in a while.
    fn passes(&self) -> bool {
        match self {
            BackfillError::Http { status, .. } => *status >= 500,
            BackfillError::RateLimited { .. } | BackfillError::Transport { .. } => true,
            BackfillError::Page { .. } | BackfillError::NoHistory => false,
        }
    }
}

/// A failed try, and how long the venue asked to wait.
struct Failed {
    error: BackfillError,
    retry_after: Option<Duration>,
}

/// One feed's REST client.
pub struct Fetcher {
    protocol: Arc<dyn Protocol>,
    agent: ureq::Agent,
    base: String,
    exchange: String,
    symbols: SymbolRule,
    page_size: u32,
    limiter: DefaultDirectRateLimiter,
    /// Requests made, by outcome, for `/status` and the metrics.
    pub requests: std::cell::Cell<u64>,
}

impl Fetcher {
    pub fn new(cfg: &FeedConfig, protocol: Arc<dyn Protocol>, symbols: SymbolRule) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .user_agent("ticklake")
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .provider(ureq::tls::TlsProvider::NativeTls)
                    .build(),
            )
            .build()
            .into();
        let per_sec = NonZeroU32::new(cfg.rest_requests_per_sec).unwrap_or(NonZeroU32::MIN);
        Self {
            protocol,
            agent,
            base: cfg.rest_url.trim_end_matches('/').to_string(),
            exchange: cfg.exchange.clone(),
            symbols,
            page_size: cfg.rest_page_size.max(1),
            limiter: RateLimiter::direct(Quota::per_second(per_sec)),
            requests: std::cell::Cell::new(0),
        }
    }

    /// All of `span`'s trades the venue still has, in pages handed to
    /// `on_page` (only trades inside the span) as they come.
    pub async fn fill<F, Fut>(&self, span: &GapSpan, mut on_page: F) -> Result<(), BackfillError>
    where
        F: FnMut(Vec<TradeV2>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let history = self.protocol.rest().ok_or(BackfillError::NoHistory)?;
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let path = history.page_path(span, cursor.as_deref(), self.page_size);
            let url = format!("{}{}", self.base, path);
            let body = self.get_with_retries(&url).await?;
            let ctx = ParseCtx {
                exchange: &self.exchange,
                symbols: &self.symbols,
                received_us: now_us(),
            };
            let mut trades = Vec::new();
            let next = history
                .parse_page(&body, span, &ctx, &mut trades)
                .map_err(|source| BackfillError::Page {
                    url: url.clone(),
                    source,
                })?;
            let got_any = !trades.is_empty();
            trades.retain(|t| {
                let id = t.source_sequence.unwrap_or(i64::MIN);
                t.symbol == span.symbol
                    && span.from_id <= id
                    && id <= span.to_id
                    && space_of(t) == span.space
            });
            if !trades.is_empty() {
                on_page(trades).await;
            }
            match next {
                Some(n) if got_any && Some(&n) != cursor.as_ref() => cursor = Some(n),
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// One page, tried again while the failure is one that passes.
    async fn get_with_retries(&self, url: &str) -> Result<String, BackfillError> {
        let tries = std::cell::Cell::new(0usize);
        let attempt = || async {
            tries.set(tries.get() + 1);
            self.limiter.until_ready().await;
            self.get(url).await
        };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(500))
                    .with_max_delay(Duration::from_secs(10))
                    .with_max_times(PAGE_TRIES - 1)
                    .with_jitter(),
            )
            .when(|f: &Failed| f.error.passes())
            .adjust(|f: &Failed, d| {
                d.map(|d| d.max(f.retry_after.unwrap_or_default()).min(MAX_WAIT))
            })
            .notify(|f: &Failed, d| {
                tracing::warn!(exchange = %self.exchange, url, error = %f.error, retry_in_ms = d.as_millis() as u64, "backfill page failed; trying again")
            })
            .await
            .map_err(|f| match f.error {
                BackfillError::RateLimited { status, .. } => BackfillError::RateLimited {
                    status,
                    tries: tries.get(),
                },
                e => e,
            })
    }

    async fn get(&self, url: &str) -> Result<String, Failed> {
        self.requests.set(self.requests.get() + 1);
        let agent = self.agent.clone();
        let owned = url.to_string();
        let done = tokio::task::spawn_blocking(move || {
            let mut resp = agent.get(&owned).call()?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = resp.body_mut().read_to_string()?;
            Ok::<_, ureq::Error>((status, retry_after, body))
        })
        .await;
        let transport = |reason: String| Failed {
            error: BackfillError::Transport {
                url: url.to_string(),
                reason,
            },
            retry_after: None,
        };
        let (status, retry_after, body) = match done {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(transport(e.to_string())),
            Err(e) => return Err(transport(e.to_string())),
        };
        match status {
            200..=299 => Ok(body),
            429 | 418 => Err(Failed {
                error: BackfillError::RateLimited { status, tries: 0 },
                retry_after,
            }),
            _ => Err(Failed {
                error: BackfillError::Http {
                    status,
                    url: url.to_string(),
                    body: body.chars().take(200).collect(),
                },
                retry_after,
            }),
        }
    }
}

/// A trade's id space: its `stream` (Binance's `trade` or `aggTrade`), or
/// `trade` for venues with one.
pub fn space_of(t: &TradeV2) -> &str {
    t.vendor_data
        .as_ref()
        .and_then(|v| v.get("stream"))
        .map_or("trade", String::as_str)
}
