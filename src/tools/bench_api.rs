//! `ticklake bench-api freshness`: how long a trade takes from the feed
//! actor to an answer of `/v1/trades/recent`. A WebSocket server in this
//! process plays synthetic Binance trade frames at a fixed rate, re-timed
//! to the wall clock; the daemon ingests them through the configured broker
//! (embedded by default); a poller asks `/v1/trades/recent` back to back.
//! A trade's freshness is the time its first answer arrived minus its
//! `ingestion_timestamp`, which the feed actor stamps when the frame
//! arrives. Run on a release build; a debug build measures the compiler.
//!
//! `ticklake bench-api latency` is in [`latency`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::daemon::{self, DaemonError};
use crate::model::now_us;
use crate::tools::capture::CapturedFrame;
use crate::tools::replay::{Pacing, ReplayOptions, ReplayServer};

mod history;
mod latency;
mod poll;
mod upkeep;

pub use history::PlanProfile;
pub use latency::{AfterCommitReport, LatencyOptions, LatencyReport, latency};
use poll::{Page, PageLimit, get, write_trades_csv};

#[derive(Debug, thiserror::Error)]
pub enum BenchApiError {
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Replay(#[from] crate::tools::replay::ReplayError),
    #[error("the daemon serves no http endpoint")]
    NoHttp,
    #[error("poll: {0}")]
    Poll(String),
    #[error("writing {0}: {1}")]
    TradesCsv(std::path::PathBuf, std::io::Error),
    #[error("bench lake {0}: {1}")]
    LakeDir(std::path::PathBuf, String),
    #[error("bench lake table {0}: {1}")]
    LakeTable(String, String),
    #[error("--warehouse {0}: {1}")]
    Warehouse(String, String),
}

/// The symbols of the synthetic stream; freshness is measured on the first.
const SYMBOLS: [&str; 10] = [
    "BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "TRXUSDT",
    "AVAXUSDT", "LINKUSDT",
];

#[derive(Debug, Serialize)]
pub struct FreshnessReport {
    pub broker: String,
    pub rate_per_s: f64,
    pub seconds: u64,
    /// Trades of the measured symbol that were sent.
    pub measured_sent: usize,
    /// Of those, how many an answer returned (a trade can fall out of the
    /// newest-`limit` page between two polls).
    pub measured_seen: usize,
    pub polls: usize,
    /// Rows a poll asked for at the start and at the end: a full page
    /// that reached no trade seen before doubled it.
    pub page_rows_first: usize,
    pub page_rows_last: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub poll_p50_ms: f64,
    /// A slow poll delays every trade that arrives during it: the tail of
    /// the freshness figures is often here, not in the pipeline.
    pub poll_p99_ms: f64,
    pub poll_max_ms: f64,
    /// The first part of that path for every trade of the run, feed to
    /// tail (queryable), from the daemon's `ticklake_queryable_lag_seconds`
    /// histogram: the upper bounds of the buckets holding the p50 and p99.
    pub queryable_p50_ms_at_most: Option<f64>,
    pub queryable_p99_ms_at_most: Option<f64>,
}

impl std::fmt::Display for FreshnessReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "freshness at {:.0} trades/s for {} s ({}): feed → /v1/trades/recent p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
             ({} of {} measured trades seen, {} polls of {} to {} rows, poll p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms)",
            self.rate_per_s,
            self.seconds,
            self.broker,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.measured_seen,
            self.measured_sent,
            self.polls,
            self.page_rows_first,
            self.page_rows_last,
            self.poll_p50_ms,
            self.poll_p99_ms,
            self.poll_max_ms
        )?;
        if let (Some(a), Some(b)) = (self.queryable_p50_ms_at_most, self.queryable_p99_ms_at_most) {
            write!(
                f,
                "; of that, feed → tail (queryable) p50 ≤ {a} ms, p99 ≤ {b} ms (histogram buckets)"
            )?;
        }
        Ok(())
    }
}

/// The upper bounds (in ms) of the buckets of Prometheus histogram `name`
/// (all series summed) that hold quantiles `qs`, read from a scrape.
fn histogram_quantiles_ms(scrape: &str, name: &str, qs: &[f64]) -> Vec<Option<f64>> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: std::collections::BTreeMap<u64, f64> = Default::default();
    for line in scrape.lines().filter(|l| l.starts_with(&prefix)) {
        let (Some(le), Some(n)) = (
            line.split("le=\"").nth(1).and_then(|r| r.split('"').next()),
            line.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()),
        ) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        *buckets.entry(le.to_bits()).or_default() += n;
    }
    let mut sorted: Vec<(f64, f64)> = buckets
        .into_iter()
        .map(|(b, n)| (f64::from_bits(b), n))
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = sorted.last().map(|b| b.1).unwrap_or(0.0);
    qs.iter()
        .map(|q| {
            if total == 0.0 {
                return None;
            }
            sorted
                .iter()
                .find(|(_, n)| *n >= q * total)
                .map(|(le, _)| le * 1000.0)
        })
        .collect()
}

/// `n` Binance trade frames at `rate`, round robin over `SYMBOLS`, each
/// symbol's ids rising by one as the exchange's do. Ids shared across the
/// symbols would open a gap on every trade, and the daemon measured would
/// spend the run logging, tracking and trying to backfill them.
fn frames(n: usize, rate: f64) -> Vec<CapturedFrame> {
    let start_ms = 1_700_000_000_000i64;
    (0..n)
        .map(|i| {
            let symbol = SYMBOLS[i % SYMBOLS.len()];
            let t = start_ms + (i as f64 * 1000.0 / rate) as i64;
            let data = format!(
                r#"{{"stream":"{lower}@trade","data":{{"e":"trade","E":{t},"s":"{symbol}","t":{id},"p":"{price}.{frac:02}","q":"0.{qty:04}","T":{t},"m":{m},"M":true}}}}"#,
                lower = symbol.to_ascii_lowercase(),
                id = i / SYMBOLS.len(),
                price = 100 + i % 50,
                frac = i % 100,
                qty = 1 + i % 9999,
                m = i.is_multiple_of(2),
            );
            CapturedFrame {
                ts: Some(t as f64 / 1000.0),
                data,
            }
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs one measurement. Must run inside an actix `System`.
pub async fn freshness(
    base: &Config,
    rate: f64,
    seconds: u64,
    trades_csv: Option<&std::path::Path>,
) -> Result<FreshnessReport, BenchApiError> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("ticklake-bench-api-{run_id}"));
    let n = (rate * seconds as f64) as usize;
    let server = ReplayServer::bind(
        "127.0.0.1:0".parse().map_err(|_| BenchApiError::NoHttp)?,
        ReplayOptions {
            frames: Arc::new(frames(n, rate)),
            pacing: Pacing::Rate(rate),
            looped: false,
            // Each client from the first frame: the feed connects after the
            // server starts, and no measured trade may be skipped.
            live: false,
            retime: true,
        },
    )
    .await?;
    let ws = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let replay = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    let mut cfg = base.under(&dir);
    cfg.http.enabled = true;
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.kafka.trades_topic_prefix = format!("bench{run_id}.trades");
    cfg.kafka.dead_letter_topic = format!("bench{run_id}.dead_letters");
    cfg.kafka.consumer_group = format!("bench{run_id}-lake");
    cfg.feeds.clear();
    let feed = cfg.feeds.named("binance");
    feed.url = format!("ws://{ws}");
    feed.symbols = SYMBOLS.iter().map(|s| s.to_ascii_lowercase()).collect();
    let d = daemon::start(cfg.clone()).await?;
    let http = d.http_addr.ok_or(BenchApiError::NoHttp)?;

    // Poll on a thread of its own so the daemon's runtime is not disturbed.
    let measured = n.div_ceil(SYMBOLS.len());
    let deadline = Duration::from_secs(seconds + 60);
    let first_limit = PageLimit::new(rate / SYMBOLS.len() as f64, cfg.api.max_rows);
    let poller = tokio::task::spawn_blocking(move || {
        let mut limit = first_limit;
        // Per trade: when the feed stamped it, and when an answer first
        // held it (UTC microseconds).
        let mut first_seen: std::collections::HashMap<String, (i64, i64)> = Default::default();
        let mut poll_ms = Vec::new();
        let started = Instant::now();
        while first_seen.len() < measured && started.elapsed() < deadline {
            let t0 = Instant::now();
            let body = get(
                http,
                // The newest trades, as many as `limit` says.
                &format!(
                    "/v1/trades/recent?symbol={}&minutes=5&limit={}",
                    SYMBOLS[0],
                    limit.rows()
                ),
            )?;
            let arrived = now_us();
            poll_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            let page: Page<'_> = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            // Newest first: the last is the oldest.
            if let Some(oldest) = page.trades.last().filter(|_| !first_seen.is_empty()) {
                limit.after(
                    page.truncated,
                    !first_seen.contains_key(oldest.message_id.as_ref()),
                );
            }
            for t in page.trades {
                if first_seen.contains_key(t.message_id.as_ref()) {
                    continue;
                }
                let ingested = t
                    .ingestion_timestamp
                    .as_deref()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .map(|d| d.timestamp_micros())
                    .ok_or("a trade without ingestion_timestamp")?;
                first_seen.insert(t.message_id.into_owned(), (ingested, arrived));
            }
        }
        Ok::<_, String>((
            first_seen.into_values().collect::<Vec<_>>(),
            poll_ms,
            limit.rows(),
        ))
    });
    let (mut seen, mut poll_ms, last_rows) = poller
        .await
        .map_err(|e| BenchApiError::Poll(e.to_string()))?
        .map_err(BenchApiError::Poll)?;
    seen.sort_unstable();
    if let Some(path) = trades_csv {
        write_trades_csv(path, &seen).map_err(|e| BenchApiError::TradesCsv(path.into(), e))?;
    }
    let mut lat: Vec<f64> = seen
        .iter()
        .map(|(ingested, arrived)| (arrived - ingested) as f64 / 1000.0)
        .collect();
    let scrape = tokio::task::spawn_blocking(move || get(http, "/metrics"))
        .await
        .map_err(|e| BenchApiError::Poll(e.to_string()))?
        .map_err(BenchApiError::Poll)?;
    let queryable = histogram_quantiles_ms(&scrape, "ticklake_queryable_lag_seconds", &[0.5, 0.99]);
    let _ = stop_tx.send(());
    let _ = replay.await;
    d.shutdown(Duration::from_secs(30)).await?;
    let _ = std::fs::remove_dir_all(&dir);
    lat.sort_by(f64::total_cmp);
    poll_ms.sort_by(f64::total_cmp);
    Ok(FreshnessReport {
        broker: if cfg.kafka.is_embedded() {
            "embedded".into()
        } else {
            cfg.kafka.brokers.clone()
        },
        rate_per_s: rate,
        seconds,
        measured_sent: measured,
        measured_seen: lat.len(),
        polls: poll_ms.len(),
        page_rows_first: first_limit.rows(),
        page_rows_last: last_rows,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        poll_p50_ms: percentile(&poll_ms, 0.5),
        poll_p99_ms: percentile(&poll_ms, 0.99),
        poll_max_ms: poll_ms.last().copied().unwrap_or(f64::NAN),
        queryable_p50_ms_at_most: queryable[0],
        queryable_p99_ms_at_most: queryable[1],
    })
}

/// `ticklake bench-api latency`: query latency over a large lake plus a
/// tail. Builds a lake of `lake_trades` synthetic trades (10 symbols, one
/// day up to five minutes ago, committed in time slices like the writer
/// does) and a tail of `tail_trades` for the last five minutes, then times
/// "last 15 minutes of one symbol" (`/v1/trades/recent`'s query) and one
/// day of 1-minute OHLCV (`/v1/ohlcv`'s), both hybrid, through the query
/// engine (no HTTP). With `duckdb_python`, times the same OHLCV in DuckDB on
/// the lake's Parquet files (scripts/bench_duckdb.py) for the ratio.
#[cfg(test)]
mod tests {
    use super::*;

    /// The stream opens no gap: every symbol's ids follow on, as a live
    /// feed's do, so the run measures the daemon and not its gap handling.
    #[test]
    fn frames_follow_on_per_symbol() {
        use crate::continuity::{Continuity, Seen};
        let mut c = Continuity::new("BINANCE", 1_000);
        let f = frames(1_000, 10_000.0);
        for frame in &f {
            let v: serde_json::Value = serde_json::from_str(&frame.data).unwrap();
            let d = &v["data"];
            let seen = c.observe(
                d["s"].as_str().unwrap(),
                "trade",
                d["t"].as_i64().unwrap(),
                d["T"].as_i64().unwrap() * 1000,
                0,
            );
            assert!(matches!(seen, Seen::Next), "{seen:?} at {}", frame.data);
        }
        assert_eq!(c.stats().gaps, 0);
        assert_eq!(c.stats().tracked, SYMBOLS.len());
    }

    #[test]
    fn quantiles_are_the_bounds_of_the_buckets_holding_them() {
        // Two series; summed: 10 at ≤1ms, 90 at ≤5ms, 99 at ≤20ms, 100 in all.
        let scrape = r#"# TYPE h histogram
h_bucket{exchange="A",le="0.001"} 10
h_bucket{exchange="A",le="0.005"} 60
h_bucket{exchange="A",le="0.02"} 69
h_bucket{exchange="A",le="+Inf"} 70
h_bucket{exchange="B",le="0.001"} 0
h_bucket{exchange="B",le="0.005"} 30
h_bucket{exchange="B",le="0.02"} 30
h_bucket{exchange="B",le="+Inf"} 30
h_sum{exchange="A"} 1
other_bucket{le="0.001"} 1000
"#;
        let q = histogram_quantiles_ms(scrape, "h", &[0.1, 0.5, 0.99, 1.0]);
        assert_eq!(
            q,
            vec![Some(1.0), Some(5.0), Some(20.0), Some(f64::INFINITY)]
        );
        assert_eq!(histogram_quantiles_ms("", "h", &[0.5]), vec![None]);
    }
}
