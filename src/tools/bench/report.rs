//! What `ticklake bench` measured over the whole path, and how it prints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::procstat::ThreadCpu;
use crate::degrade::level::Level;

/// What the full-path run measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct FullReport {
    pub broker: String,
    pub trades: usize,
    pub symbols: usize,
    pub frame_bytes: usize,
    /// Frames a second the server offered (`None`: as fast as read).
    pub offered_per_s: Option<f64>,
    pub record_bytes: usize,
    pub partitions: i32,
    /// First frame received to last trade committed.
    pub seconds: f64,
    /// First frame received to the last frame received.
    pub received_secs: f64,
    /// Trades stored in the lake per second of that.
    pub end_to_end_per_s: f64,
    /// Process CPU (less the exchange's thread) per trade, in µs.
    pub cpu_us_per_trade: f64,
    /// Bare rdkafka producer, same record size and partition count.
    pub produce_ceiling_per_s: f64,
    /// Bare producer and bare consumer moving the same records.
    pub round_trip_ceiling_per_s: f64,
    /// Process CPU per record while the produce-only ceiling ran, in µs
    /// (0 without ceilings).
    pub produce_ceiling_cpu_us: f64,
    /// Process CPU per record while the produce-plus-consume ceiling ran,
    /// in µs (0 without ceilings): librdkafka's own cost of moving a record
    /// there and back, beside the full path's `cpu_us_per_trade`.
    pub round_trip_ceiling_cpu_us: f64,
    /// Every run of each ceiling, in records/s; the ceilings above are the
    /// fastest of them, and their CPU that run's (empty without ceilings).
    #[serde(default)]
    pub produce_ceiling_runs_per_s: Vec<f64>,
    #[serde(default)]
    pub round_trip_ceiling_runs_per_s: Vec<f64>,
    pub ratio_to_produce: f64,
    pub ratio_to_round_trip: f64,
    pub commits: u64,
    pub max_level: Level,
    /// Of `seconds`, how long the degradation level was above NORMAL (by
    /// samples every 2 ms).
    pub above_normal_secs: f64,
    /// The first rise of the level during the run: which signal, its
    /// value and the threshold.
    pub raised_by: Option<String>,
    /// Trades published without `vendor_data`: SOFT and above skip the
    /// enrichment, which makes those trades cheaper to carry; a run that
    /// spent time there did not do all of the NORMAL work.
    pub enrichment_skipped: u64,
    /// Times the producer stopped reading its lanes to wait for room: the
    /// embedded broker's window full (the consumer behind), or
    /// librdkafka's queue full. While it waits the lanes fill, which is
    /// what raises the level on `lane_depth`.
    pub producer_waits: ProducerWaits,
    /// Outcomes of the trades by the accounting's counters.
    pub outcomes: BTreeMap<String, u64>,
    /// Resident memory at its highest during the end-to-end run.
    pub peak_rss_bytes: u64,
    /// Resident memory just before the daemon started: the bench's own,
    /// most of it the generated frames (about 200 bytes each), which the
    /// peak includes and a deployment does not have.
    pub rss_before_daemon_bytes: u64,
    /// Where the process's CPU went during the end-to-end run.
    pub threads: Vec<ThreadCpu>,
    /// The process that ran it: a paced run of the NORMAL search runs in a
    /// process of its own (`bench::ProbeCommand`).
    pub pid: u32,
}

impl std::fmt::Display for FullReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "mode:                         full path (WebSocket frame -> committed Iceberg row)"
        )?;
        writeln!(f, "broker:                       {}", self.broker)?;
        writeln!(
            f,
            "trades:                       {} over {} symbols, all tier 1 (frame {} bytes, Avro record {} bytes, {} partitions)",
            self.trades, self.symbols, self.frame_bytes, self.record_bytes, self.partitions
        )?;
        match self.offered_per_s {
            Some(r) => writeln!(f, "offered:                      {r:.0} frames/s")?,
            None => writeln!(f, "offered:                      as fast as the feed reads")?,
        }
        writeln!(
            f,
            "end to end:                   {:.0} trades/s stored ({:.2} s, {} commits, level at most {})",
            self.end_to_end_per_s, self.seconds, self.commits, self.max_level
        )?;
        writeln!(
            f,
            "above NORMAL:                 {:.2} s of {:.2} s; {} trades published without vendor_data (skipped at SOFT and above)",
            self.above_normal_secs, self.seconds, self.enrichment_skipped
        )?;
        if let Some(why) = &self.raised_by {
            writeln!(f, "first raised by:              {why}")?;
        }
        writeln!(f, "producer waited for room:     {}", self.producer_waits)?;
        writeln!(
            f,
            "CPU per trade:                {:.2} µs (process, less the exchange's thread)",
            self.cpu_us_per_trade
        )?;
        writeln!(
            f,
            "ceiling, produce only:        {:.0} records/s (ratio {:.3}), {:.2} CPU-µs per record{}",
            self.produce_ceiling_per_s,
            self.ratio_to_produce,
            self.produce_ceiling_cpu_us,
            runs(&self.produce_ceiling_runs_per_s)
        )?;
        writeln!(
            f,
            "ceiling, produce + consume:   {:.0} records/s (ratio {:.3}), {:.2} CPU-µs per record{}",
            self.round_trip_ceiling_per_s,
            self.ratio_to_round_trip,
            self.round_trip_ceiling_cpu_us,
            runs(&self.round_trip_ceiling_runs_per_s)
        )?;
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "outcomes:                     {}", outcomes.join(", "))?;
        writeln!(
            f,
            "peak resident memory:         {:.1} MiB ({:.1} MiB before the daemon started: the bench's frames and its own)",
            self.peak_rss_bytes as f64 / (1024.0 * 1024.0),
            self.rss_before_daemon_bytes as f64 / (1024.0 * 1024.0)
        )?;
        write!(f, "CPU by thread (end to end):")?;
        for t in &self.threads {
            write!(
                f,
                "\n  {:<28} {:>3} thread(s) {:>8.2} s  {:>5.1} %",
                t.name,
                t.threads,
                t.cpu_secs,
                t.share * 100.0
            )?;
        }
        Ok(())
    }
}

/// What the producer waited for, by cause (see [`FullReport::producer_waits`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProducerWaits {
    pub window: u64,
    pub queue: u64,
}

impl std::fmt::Display for ProducerWaits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} times for the broker window (consumer behind), {} for librdkafka's queue",
            self.window, self.queue
        )
    }
}

/// `; fastest of N: a, b, c` when a ceiling ran more than once.
fn runs(per_s: &[f64]) -> String {
    if per_s.len() < 2 {
        return String::new();
    }
    let each: Vec<String> = per_s.iter().map(|r| format!("{r:.0}")).collect();
    format!("; fastest of {}: {}", per_s.len(), each.join(", "))
}
