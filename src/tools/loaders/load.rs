//! `ticklake load`: historical trades through the daemon's own path —
//! ProducerActor (Avro, Confluent framing) → Kafka → ConsumerActor →
//! WriterActor → Iceberg commits with offsets — run in this process with
//! the feeds and HTTP off, so exactly-once holds for loads as for live data.

use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::Config;
use crate::daemon::{self, DaemonError};
use crate::instruments::Tier;
use crate::messages::producer::{Outgoing, ProducerLanes, send_batch};
use crate::model::now_us;
use crate::tools::loaders::asx::{self, AsxError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Asx(#[from] AsxError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Query(#[from] crate::query::session::SessionError),
    #[error(
        "a ticklake daemon answers on {0}: stop it first (two writers on one table would record each other's offsets)"
    )]
    DaemonRunning(String),
    #[error("the lake already holds {0} {1} trades; loading again would store them twice")]
    AlreadyLoaded(i64, &'static str),
    #[error("publishing: {0}")]
    Publish(String),
    #[error("only {committed} of {total} trades and dead letters were committed within {secs} s")]
    Incomplete {
        committed: u64,
        total: u64,
        secs: u64,
    },
    #[error(transparent)]
    Instruments(#[from] crate::instruments::InstrumentsError),
}

#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub exchange: &'static str,
    pub trades: usize,
    pub committed: u64,
    /// Rows whose symbol the ASX `symbol_pattern` refuses, stored in
    /// `dead_letters` instead.
    pub dead_letters: usize,
    pub seconds: f64,
}

/// Whether something answers `/healthz` on the daemon's listen address.
fn daemon_running(cfg: &Config) -> bool {
    if !cfg.http.enabled {
        return false;
    }
    let Ok(addr) = cfg.http.listen.parse::<std::net::SocketAddr>() else {
        return false;
    };
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

async fn already_loaded(cfg: &Config, exchange: &'static str) -> Result<i64, LoadError> {
    let ctx = crate::query::session::session(cfg).await?;
    let df = ctx
        .table("trades")
        .await
        .and_then(|t| {
            t.filter(datafusion::prelude::col("exchange").eq(datafusion::prelude::lit(exchange)))
        })
        .map_err(crate::query::session::SessionError::from)?;
    Ok(df
        .count()
        .await
        .map_err(crate::query::session::SessionError::from)? as i64)
}

/// Loads every ASX trade under `dir`. Must run inside an actix `System`.
pub async fn asx(cfg: &Config, dir: &Path, timeout: Duration) -> Result<LoadReport, LoadError> {
    if daemon_running(cfg) {
        return Err(LoadError::DaemonRunning(cfg.http.listen.clone()));
    }
    let existing = already_loaded(cfg, asx::EXCHANGE).await?;
    if existing > 0 {
        return Err(LoadError::AlreadyLoaded(existing, asx::EXCHANGE));
    }
    let instruments = cfg.instruments()?;
    let asx::Loaded {
        trades,
        dead_letters,
    } = asx::load(dir, now_us(), instruments.symbol_rule(asx::EXCHANGE)?)?;
    let n = trades.len();
    let n_dead = dead_letters.len();
    let mut cfg = cfg.clone();
    for f in cfg.feeds.values_mut() {
        f.enabled = false;
    }
    cfg.http.enabled = false;
    let started = Instant::now();
    let d = daemon::start(cfg).await?;
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {pos}/{len} trades ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message("publishing");
    // Tier 1: a historical load is never shed.
    let lanes = &d.producer.lanes;
    let trades = trades.into_iter().map(|t| Outgoing::trade(t, Tier::One));
    publish(lanes, trades, |n| pb.inc(n)).await?;
    publish(
        lanes,
        dead_letters.into_iter().map(Outgoing::dead_letter),
        |_| {},
    )
    .await?;
    pb.set_message("committing");
    pb.set_position(0);
    let committed = || d.metrics.writer_rows.with_label_values(&["trades"]).get();
    let dead_committed = || {
        d.metrics
            .writer_rows
            .with_label_values(&["dead_letters"])
            .get()
    };
    d.drain_and_flush(timeout).await?;
    while (committed() < n as u64 || dead_committed() < n_dead as u64)
        && started.elapsed() < timeout
    {
        pb.set_position(committed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pb.set_position(committed());
    pb.finish_with_message("committed");
    let (done, dead_done) = (committed(), dead_committed());
    d.shutdown(Duration::from_secs(30)).await?;
    if done < n as u64 || dead_done < n_dead as u64 {
        return Err(LoadError::Incomplete {
            committed: done + dead_done,
            total: (n + n_dead) as u64,
            secs: timeout.as_secs(),
        });
    }
    Ok(LoadReport {
        exchange: asx::EXCHANGE,
        trades: n,
        committed: done,
        dead_letters: n_dead,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Records a load hands the producer at a time.
const LOAD_BATCH: usize = 256;

/// `records` onto the producer's tier-1 lane in batches, as a feed sends a
/// run of frames (the lane and the producer's dispatch are paid once a
/// batch); `sent` hears each batch's size.
async fn publish(
    lanes: &ProducerLanes,
    records: impl IntoIterator<Item = Outgoing>,
    mut sent: impl FnMut(u64),
) -> Result<(), LoadError> {
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let batch: Vec<Outgoing> = records.by_ref().take(LOAD_BATCH).collect();
        let n = batch.len() as u64;
        send_batch(lanes, Tier::One, batch)
            .await
            .map_err(|e| LoadError::Publish(e.to_string()))?;
        sent(n);
    }
    Ok(())
}
