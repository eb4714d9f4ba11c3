//! `ticklake bench-api tail-scans`: does a big hybrid scan make ingest
//! wait? The consumer hands every chunk of trades to the tail actor and
//! awaits it before the writer gets them, so the time that hand-over takes
//! is ingest latency. This measures it at a steady rate, first with no
//! query running, then while queries over `market.trades_live` scan the
//! whole tail back to back on the query runtime. The tail actor runs on
//! the actix arbiter of the caller, as the daemon's does on the ingest
//! arbiter. Use a release build.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::bench_api::BenchApiError;
use crate::config::Config;
use crate::messages::query::QueryRequest;
use crate::messages::tail::{TailRow, Tailed};
use crate::model::now_us;

/// Latencies of one phase's chunks, from falling due to being in the tail.
#[derive(Debug, Serialize)]
pub struct Handovers {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Handovers {
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        Self {
            count: ms.len(),
            p50_ms: percentile(&ms, 0.5),
            p99_ms: percentile(&ms, 0.99),
            max_ms: ms.last().copied().unwrap_or(f64::NAN),
        }
    }
}

impl std::fmt::Display for Handovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} chunks)",
            self.p50_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

#[derive(Debug, Serialize)]
pub struct TailScansReport {
    pub tail_trades: usize,
    pub symbols: usize,
    pub rate_per_s: f64,
    pub chunk_rows: usize,
    pub seconds: u64,
    /// Chunk hand-overs with no query running.
    pub idle: Handovers,
    /// The same while whole-tail scans run back to back.
    pub scanning: Handovers,
    pub scans: usize,
    pub scan_p50_ms: f64,
}

impl std::fmt::Display for TailScansReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "tail of {} trades over {} symbols; ingest at {:.0} trades/s in chunks of {}, {} s per phase",
            self.tail_trades, self.symbols, self.rate_per_s, self.chunk_rows, self.seconds
        )?;
        writeln!(f, "chunk due → in the tail, no query:      {}", self.idle)?;
        writeln!(
            f,
            "chunk due → in the tail, while scanning: {}",
            self.scanning
        )?;
        write!(
            f,
            "whole-tail scans meanwhile: {} (p50 {:.1} ms each)",
            self.scans, self.scan_p50_ms
        )
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

const TOPIC: &str = "bench.tail";

/// Trade `i` of the synthetic stream: symbols in turn, so every symbol
/// holds an open run of rows not yet sealed as Arrow.
fn row(i: usize, symbols: usize, now: i64) -> TailRow {
    use crate::model::{Dec8, TradeV2};
    let symbol = format!("S{:04}USDT", i % symbols);
    let trade = TradeV2::builder("BENCH", &symbol, &i.to_string(), now - 1_000_000 + i as i64)
        .price(Dec8::from_unscaled(6_500_000_000_000 + (i as i64 % 100_000)).unwrap_or_default())
        .quantity(Dec8::from_unscaled(1_000_000 + (i as i64 % 997)).unwrap_or_default())
        .source_sequence(Some(i as i64))
        .build();
    TailRow {
        topic: Arc::from(TOPIC),
        partition: 0,
        offset: i as i64,
        trade: Arc::new(trade),
    }
}

/// Runs the measurement. Must run inside an actix `System`.
pub async fn tail_scans(
    base: &Config,
    tail_trades: usize,
    symbols: usize,
    rate: f64,
    chunk_rows: usize,
    seconds: u64,
) -> Result<TailScansReport, BenchApiError> {
    use crate::actors::tail::TailActor;
    use actix::Actor;

    let err = |e: &dyn std::fmt::Display| BenchApiError::Poll(e.to_string());
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("ticklake-bench-tail-{run_id}"));
    let mut cfg = base.under(&dir);
    // A scan of the whole tail must finish, however slow the build.
    cfg.api.timeout_ms = 600_000;
    let schema = {
        let catalog = crate::lake::open_catalog(&cfg).await.map_err(|e| err(&e))?;
        let table =
            crate::lake::ensure_table(catalog.as_ref(), &cfg, crate::lake::TableKind::Trades)
                .await
                .map_err(|e| err(&e))?;
        crate::lake::batch::arrow_schema(table.metadata().current_schema()).map_err(|e| err(&e))?
    };
    // Nothing commits here, so nothing is pruned: the tail only grows.
    let view = crate::query::tail::TailView::default();
    let tail = TailActor::new("bench", usize::MAX, schema, view.clone()).start();
    let engine = Arc::new(
        crate::query::session::engine(&cfg, Some(view))
            .await
            .map_err(|e| err(&e))?,
    );
    let now = now_us();
    let mut next = 0;
    while next < tail_trades {
        let end = (next + 10_000).min(tail_trades);
        let rows = (next..end).map(|i| row(i, symbols, now)).collect();
        tail.send(Tailed::Rows(rows)).await.map_err(|e| err(&e))?;
        next = end;
    }
    let period = Duration::from_secs_f64(chunk_rows as f64 / rate);
    // One phase: a chunk falls due every `period` for `seconds`, as trades
    // arrive from a feed whatever the consumer is doing; each is timed from
    // when it fell due to when the tail has it. A stalled arbiter (this
    // task shares it with the tail actor, as the consumer does) shows as
    // chunks handed over late, in a burst.
    let ingest = async |next: &mut usize| -> Result<Vec<f64>, BenchApiError> {
        let mut ms = Vec::new();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
        loop {
            let due = tick.tick().await;
            if due >= end {
                return Ok(ms);
            }
            let rows = (*next..*next + chunk_rows)
                .map(|i| row(i, symbols, now))
                .collect();
            *next += chunk_rows;
            tail.send(Tailed::Rows(rows)).await.map_err(|e| err(&e))?;
            ms.push(due.elapsed().as_secs_f64() * 1000.0);
        }
    };
    let idle = ingest(&mut next).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let scanner = {
        let (engine, stop) = (engine.clone(), stop.clone());
        crate::query::pool::handle().spawn(async move {
            let mut ms = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let sql =
                    "select symbol, count(*), max(price) from market.trades_live group by symbol";
                engine
                    .run(QueryRequest::Sql(sql.into()))
                    .await
                    .map_err(|e| BenchApiError::Poll(format!("scan: {e}")))?;
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, BenchApiError>(ms)
        })
    };
    let scanning = ingest(&mut next).await?;
    stop.store(true, Ordering::Relaxed);
    let mut scans = scanner.await.map_err(|e| err(&e))??;
    scans.sort_by(f64::total_cmp);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(TailScansReport {
        tail_trades,
        symbols,
        rate_per_s: rate,
        chunk_rows,
        seconds,
        idle: Handovers::of(idle),
        scanning: Handovers::of(scanning),
        scans: scans.len(),
        scan_p50_ms: percentile(&scans, 0.5),
    })
}
