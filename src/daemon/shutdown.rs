//! Running and stopping: wait for a signal or a fatal error, then the
//! graceful shutdown that lands what was produced before the process ends.

use std::time::{Duration, Instant};

use super::{Daemon, DaemonError, Exit};
use crate::actors::feed::StopFeed;
use crate::kafka;
use crate::messages::producer::ProducerControl;
use crate::messages::writer::{Flush, GetPositions};

impl Daemon {
    /// Runs until a signal (then shuts down gracefully) or a fatal error.
    pub async fn run_until_stopped(mut self) -> Result<Exit, DaemonError> {
        let fatal = tokio::select! {
            _ = wait_for_signal() => None,
            r = self.fatal.recv() => Some(r.unwrap_or_else(|| "writers stopped".into())),
        };
        match fatal {
            Some(reason) => Ok(Exit::Fatal(reason)),
            None => {
                tracing::info!("shutting down");
                self.shutdown(Duration::from_secs(30)).await?;
                Ok(Exit::Signal)
            }
        }
    }

    /// Graceful stop: close the feed, deliver what the producer holds, let
    /// the consumer catch up with the topics (bounded), then commit what the
    /// writers buffer. With the embedded cluster this is what keeps a clean
    /// shutdown from losing records that were produced but not yet landed.
    pub async fn shutdown(self, drain_timeout: Duration) -> Result<(), DaemonError> {
        self.stop_feeds().await?;
        self.drain_and_flush(drain_timeout).await?;
        // The feeds are stopped: no gap settles any more.
        match self.gaps.send(crate::actors::gaps::FlushGaps).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "market.gaps: the last gaps were not committed")
            }
            Err(e) => tracing::error!(error = %e, "market.gaps: the writer went away"),
        }
        // Everything is committed; the ingest thread can go (a bench or a
        // test starts daemons one after another in one process).
        self.lake_arbiter.stop();
        // Everything is committed. The Kafka clients inside the actors only
        // go away when the process exits; tearing the embedded cluster down
        // before them would just make them log connection errors.
        std::mem::forget(self._embedded);
        Ok(())
    }

    /// Closes every feed's connection and leaves the feed idle (it does not
    /// reconnect), once the trades it holds have reached the producer's
    /// lanes. The first step of [`Daemon::shutdown`]; a second call finds
    /// the feeds idle and returns at once.
    pub async fn stop_feeds(&self) -> Result<(), DaemonError> {
        // All at once: a feed waits (up to its `STOP_WAIT`) for the batch it
        // holds to reach the producer's lanes, and one after another those
        // waits would add up.
        let stops = self.feeds.iter().map(|feed| feed.send(StopFeed));
        for stopped in futures::future::join_all(stops).await {
            stopped?;
        }
        Ok(())
    }

    /// Delivers what the producer holds, waits (bounded) until the writers
    /// have taken in every record up to the topics' high watermarks, then
    /// commits what they buffer.
    pub async fn drain_and_flush(&self, drain_timeout: Duration) -> Result<(), DaemonError> {
        let deadline = Instant::now() + drain_timeout;
        // Control overtakes data, so wait for the lanes to empty before
        // asking for the flush.
        while self
            .producer
            .lanes
            .stats()
            .lanes
            .iter()
            .any(|l| l.depth > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .producer
            .lanes
            .send_control(ProducerControl::Flush(tx))
            .is_ok()
        {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "producer flush failed"),
                Err(_) => tracing::error!("producer went away during flush"),
            }
        }
        loop {
            let client = self.watermark_client.clone();
            let topics = self.topics.clone();
            // Stops at the first error: with the broker away there is
            // nothing more to drain from it.
            let (highs, _) = tokio::task::spawn_blocking(move || {
                kafka::high_watermarks(&client, &topics, Duration::from_secs(5))
            })
            .await
            .map_err(|e| DaemonError::Join(e.to_string()))?;
            let a = self.trades.send(GetPositions).await?;
            let b = self.dead_letters.send(GetPositions).await?;
            let behind = highs
                .iter()
                .filter(|((t, p), hi)| a.get(t, *p).or(b.get(t, *p)).unwrap_or(0) < **hi)
                .count();
            if behind == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    partitions_behind = behind,
                    "shutdown drain timed out; the rest stays in kafka"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for w in [&self.trades, &self.dead_letters] {
            if let Err(e) = w.send(Flush).await? {
                tracing::error!(error = %e, "final flush failed");
            }
        }
        Ok(())
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
