//! Prometheus metrics. One registry per daemon, passed to every actor (no
//! globals), so tests can run several daemons in one process.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Frames received by a feed, by kind (trade, aggTrade, depth, ...).
    pub feed_frames: IntCounterVec,
    /// Frames that failed to parse, by reason class.
    pub feed_dead_letters: IntCounterVec,
    /// Trades dropped as already seen (reconnect overlap, replay).
    pub feed_duplicates: IntCounterVec,
    /// Connection attempts by outcome.
    pub feed_connections: IntCounterVec,
    /// Records handed to the producer, by topic and outcome.
    pub producer_records: IntCounterVec,
    /// Records consumed, by topic.
    pub consumer_records: IntCounterVec,
    /// Records on Kafka that could not be decoded.
    pub consumer_decode_errors: IntCounterVec,
    /// Iceberg commits, by table and outcome.
    pub writer_commits: IntCounterVec,
    /// Rows committed, by table.
    pub writer_rows: IntCounterVec,
    /// Rows buffered and not yet committed, by table.
    pub writer_buffered_rows: IntGaugeVec,
    /// Wall time of an Iceberg flush (Parquet write and commit), by table.
    pub writer_commit_seconds: HistogramVec,
}

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let feed_frames = counter(
            "ticklake_feed_frames_total",
            "Frames received from an exchange feed, by kind.",
            &["exchange", "kind"],
        )?;
        let feed_dead_letters = counter(
            "ticklake_feed_dead_letters_total",
            "Frames that failed to parse and went to the dead-letter table.",
            &["exchange", "reason"],
        )?;
        let feed_duplicates = counter(
            "ticklake_feed_duplicates_total",
            "Trades dropped because their message id was already seen.",
            &["exchange"],
        )?;
        let feed_connections = counter(
            "ticklake_feed_connections_total",
            "Feed connection attempts, by outcome.",
            &["exchange", "outcome"],
        )?;
        let producer_records = counter(
            "ticklake_producer_records_total",
            "Records handed to the Kafka producer, by topic and outcome.",
            &["topic", "outcome"],
        )?;
        let consumer_records = counter(
            "ticklake_consumer_records_total",
            "Records consumed from Kafka, by topic.",
            &["topic"],
        )?;
        let consumer_decode_errors = counter(
            "ticklake_consumer_decode_errors_total",
            "Kafka records that could not be decoded (sent to dead letters).",
            &["topic"],
        )?;
        let writer_commits = counter(
            "ticklake_writer_commits_total",
            "Iceberg commits, by table and outcome.",
            &["table", "outcome"],
        )?;
        let writer_rows = counter(
            "ticklake_writer_rows_total",
            "Rows committed to Iceberg, by table.",
            &["table"],
        )?;
        let writer_buffered_rows = IntGaugeVec::new(
            Opts::new(
                "ticklake_writer_buffered_rows",
                "Rows buffered in a writer and not yet committed.",
            ),
            &["table"],
        )?;
        registry.register(Box::new(writer_buffered_rows.clone()))?;
        let writer_commit_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ticklake_writer_commit_seconds",
                "Time to write Parquet and commit one Iceberg snapshot.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["table"],
        )?;
        registry.register(Box::new(writer_commit_seconds.clone()))?;
        Ok(Self {
            registry,
            feed_frames,
            feed_dead_letters,
            feed_duplicates,
            feed_connections,
            producer_records,
            consumer_records,
            consumer_decode_errors,
            writer_commits,
            writer_rows,
            writer_buffered_rows,
            writer_commit_seconds,
        })
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
