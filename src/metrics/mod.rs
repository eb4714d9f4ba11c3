//! Prometheus metrics. One registry per daemon, passed to every actor (no
//! globals), so tests can run several daemons in one process. The
//! accounting identity (`accounts`) is read from the counters.

mod accounts;

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub use accounts::{Account, accounts};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Frames received by a feed, by kind (trade, aggTrade, depth, ...).
    pub feed_frames: IntCounterVec,
    /// Frames that failed to parse, by reason class.
    pub feed_dead_letters: IntCounterVec,
    /// Trades dropped as already seen (reconnect overlap, replay).
    pub feed_duplicates: IntCounterVec,
    /// Gaps in a feed's trade ids (trade-id continuity).
    pub feed_gaps: IntCounterVec,
    /// Trades of those gaps: `missing` when seen, then `rest` (filled from
    /// the venue), `late` (came on a live connection after all) or `lost`.
    pub feed_gap_trades: IntCounterVec,
    /// Trade ids at or below the newest that filled no gap.
    pub feed_id_regressions: IntCounterVec,
    /// REST requests of gap fills, by outcome.
    pub feed_backfill_requests: IntCounterVec,
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
    /// Time from a trade's arrival at the feed to its row in the tail.
    pub queryable_lag_seconds: HistogramVec,
    /// SQL worker processes lost, by cause (`query::isolate`).
    pub query_workers_lost: IntCounterVec,
    pub query_recent_windows: IntCounterVec,
    /// The accounting identity's counters; see [`Outcome`].
    pub messages: IntCounterVec,
    pub shed: IntCounterVec,
    pub spill_quarantined: IntCounterVec,
    pub degradation_level: IntGaugeVec,
    pub level_transitions: IntCounterVec,
    pub signals: GaugeVec,
    pub signal_thresholds: GaugeVec,
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub spill_pending: IntGaugeVec,
    pub spill_pending_bytes: IntGaugeVec,
    pub lane_depth: IntGaugeVec,
    pub lane_blocked_seconds: CounterVec,
    pub actor_restarts: IntCounterVec,
    pub actor_errors: IntCounterVec,
    pub actor_panics: IntCounterVec,
    pub writer_duplicates: IntCounterVec,
    pub writer_rows_committed_elsewhere: IntCounterVec,
    /// Committed ids the writer forgot for room while still inside
    /// `writer.dedup_window_secs`.
    pub writer_dedup_forgotten_early: IntCounterVec,
    pub resident_memory: IntGaugeVec,
    /// Records that left the producer and can no longer reach the lake,
    /// by topic and partition; the ranges are in `losses`.
    pub records_lost: IntCounterVec,
    pub losses: crate::ledger::Losses,
    /// Rows committed to `market.gaps` (`actors::gaps`).
    pub gaps_rows_written: IntCounterVec,
    /// Failed `market.gaps` commits (their rows are kept and retried).
    pub gaps_commit_failures: IntCounterVec,
    /// Settled gaps dropped because the gaps writer held its bound of
    /// uncommitted rows already.
    pub gaps_rows_dropped: IntCounterVec,
    /// Memory of a message-id dedup (`dedup`), its Bloom filter and exact
    /// window, by owner (`feed.<exchange>`, `writer.trades`).
    pub dedup_memory_bytes: IntGaugeVec,
    /// Fraction of the bits set in a dedup's Bloom filter, by owner.
    pub dedup_bloom_fill_ratio: GaugeVec,
    /// Bloom positives a dedup's exact window did not confirm, by owner.
    pub dedup_false_positives: IntCounterVec,
    /// Redis calls of the shared dedup (`dedup.redis_url`) that failed or
    /// were skipped after a failure, by operation; each batch concerned
    /// fell back to in-process behaviour.
    pub dedup_redis_errors: IntCounterVec,
    /// Trades another daemon had taken and died before publishing for
    /// sure, published by this one instead, by exchange.
    pub dedup_redis_takeovers: IntCounterVec,
    /// Set at each scrape from the states `/status` reads (`status::export`):
    /// feed connections, age of the last trade, consumer lag and its age.
    pub feed_connected: IntGaugeVec,
    pub feed_last_trade_age_seconds: GaugeVec,
    pub consumer_lag_records: IntGaugeVec,
    pub consumer_lag_seconds: GaugeVec,
    pub consumer_lag_age_seconds: GaugeVec,
    /// Wall time of a `/v1/*` request until its answer's head, by route
    /// and status class.
    pub query_duration_seconds: HistogramVec,
}

/// Where a feed message ended up. Per exchange and tier, at any moment:
/// `received + restored = published + shed + spilled - replayed +
/// dead_lettered + deduplicated + in flight`, where in flight is what sits in
/// a lane or waits for the broker's acknowledgement. Down to the lake:
/// `published = stored + deduplicated_at_writer + in transit`, where in
/// transit is on the broker or in a writer's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Received,
    Published,
    Shed,
    Spilled,
    Replayed,
    Restored,
    DeadLettered,
    Deduplicated,
    /// Refused by the broker for good and moved to the quarantine file.
    Quarantined,
    /// Committed to the lake by a writer (counted at commit).
    Stored,
    /// A second copy of a committed trade, dropped by the writer (counted
    /// at the commit that covers its offset).
    DeduplicatedAtWriter,
    /// Committed (or dropped as a copy) in this run at an offset no
    /// acknowledgement of this run names: published by an earlier run,
    /// another producer, or a second physical copy of a record whose first
    /// acknowledgement was lost. Outside this run's identity, shown so
    /// nothing goes uncounted (see `kafka::acks`).
    CarriedOver,
    /// A row counted `carried_over` after it waited in vain, whose own
    /// acknowledgement came later after all (a retry held up by a broker
    /// outage): counted then as stored (or a copy), and taken back out of
    /// `carried_over`.
    Reclaimed,
}

impl Outcome {
    pub const ALL: [Outcome; 13] = [
        Outcome::Received,
        Outcome::Published,
        Outcome::Shed,
        Outcome::Spilled,
        Outcome::Replayed,
        Outcome::Restored,
        Outcome::DeadLettered,
        Outcome::Deduplicated,
        Outcome::Quarantined,
        Outcome::Stored,
        Outcome::DeduplicatedAtWriter,
        Outcome::CarriedOver,
        Outcome::Reclaimed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Received => "received",
            Outcome::Published => "published",
            Outcome::Shed => "shed",
            Outcome::Spilled => "spilled",
            Outcome::Replayed => "replayed",
            Outcome::Restored => "restored",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Deduplicated => "deduplicated",
            Outcome::Quarantined => "quarantined",
            Outcome::Stored => "stored",
            Outcome::DeduplicatedAtWriter => "deduplicated_at_writer",
            Outcome::CarriedOver => "carried_over",
            Outcome::Reclaimed => "reclaimed",
        }
    }
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
        let feed_gaps = counter(
            "ticklake_feed_gaps_total",
            "Gaps in a feed's trade ids: detected, then settled as rest, late, unrecoverable or not_filled.",
            &["exchange", "event"],
        )?;
        let feed_gap_trades = counter(
            "ticklake_feed_gap_trades_total",
            "Trades of the gaps in a feed's trade ids: missing when seen; rest, late or lost once settled.",
            &["exchange", "outcome"],
        )?;
        let feed_id_regressions = counter(
            "ticklake_feed_id_regressions_total",
            "Trade ids at or below the newest seen that filled no gap.",
            &["exchange"],
        )?;
        let feed_backfill_requests = counter(
            "ticklake_feed_backfill_requests_total",
            "REST requests made to fill gaps in a feed's trade ids.",
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
        let queryable_lag_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ticklake_queryable_lag_seconds",
                "Time from a trade's arrival at the feed actor (its ingestion \
                 timestamp) to its row being queryable in the tail, by exchange.",
            )
            .buckets(vec![
                0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 30.0,
            ]),
            &["exchange"],
        )?;
        registry.register(Box::new(queryable_lag_seconds.clone()))?;
        let messages = counter(
            "ticklake_messages_total",
            "Feed messages by exchange, tier and outcome: received, published \
             (acknowledged by the broker), shed, spilled, replayed (from the \
             spill log), restored (found in the spill log at start), \
             dead_lettered, deduplicated, quarantined; and down in the lake: \
             stored, deduplicated_at_writer, carried_over (committed now, \
             published by an earlier run or another producer), reclaimed \
             (counted carried_over, then claimed by this run's late \
             acknowledgement: stored, and out of carried_over).",
            &["exchange", "tier", "outcome"],
        )?;
        let shed = counter(
            "ticklake_shed_total",
            "Messages shed on purpose, by exchange, tier and the level that shed them.",
            &["exchange", "tier", "level"],
        )?;
        let spill_quarantined = counter(
            "ticklake_spill_quarantined_total",
            "Records the broker refused for good, moved from the spill log to its quarantine file, by exchange.",
            &["exchange"],
        )?;
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, MetricsError> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let fgauge = |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, MetricsError> {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let degradation_level = gauge(
            "ticklake_degradation_level",
            "Current degradation level: 0 NORMAL, 1 SOFT, 2 GRACEFUL, 3 AGGRESSIVE, 4 CIRCUIT_BREAK.",
            &[],
        )?;
        let level_transitions = counter(
            "ticklake_degradation_transitions_total",
            "Degradation level changes, by the level entered.",
            &["to"],
        )?;
        let signals = fgauge(
            "ticklake_degradation_signal",
            "Last sampled value of each degradation signal.",
            &["signal"],
        )?;
        let signal_thresholds = fgauge(
            "ticklake_degradation_signal_threshold",
            "The value of a signal that triggers each level.",
            &["signal", "level"],
        )?;
        let breaker_state = gauge(
            "ticklake_breaker_state",
            "Circuit breaker state: 0 CLOSED, 1 HALF_OPEN, 2 OPEN.",
            &["breaker"],
        )?;
        let breaker_transitions = counter(
            "ticklake_breaker_transitions_total",
            "Circuit breaker state changes, by the state entered.",
            &["breaker", "to"],
        )?;
        let spill_pending = gauge(
            "ticklake_spill_pending_records",
            "Records in the spill log not yet replayed.",
            &[],
        )?;
        let spill_pending_bytes = gauge(
            "ticklake_spill_pending_bytes",
            "Bytes in the spill log not yet replayed.",
            &[],
        )?;
        let lane_depth = gauge(
            "ticklake_lane_depth",
            "Messages queued in a data lane of an actor's mailbox.",
            &["actor", "tier"],
        )?;
        let lane_blocked_seconds = Self::float_counter(
            &registry,
            "ticklake_lane_blocked_seconds_total",
            "Time senders spent blocked on a full or paused data lane.",
            &["actor", "tier"],
        )?;
        let actor_restarts = counter(
            "ticklake_actor_restarts_total",
            "Actor restarts by its supervisor.",
            &["actor"],
        )?;
        let actor_errors = counter(
            "ticklake_actor_errors_total",
            "Errors that ended an actor's run (connection lost, stall, failure).",
            &["actor", "kind"],
        )?;
        let writer_duplicates = counter(
            "ticklake_writer_duplicates_total",
            "Rows dropped by a writer because their message id was already committed or buffered.",
            &["table"],
        )?;
        let writer_rows_committed_elsewhere = counter(
            "ticklake_writer_rows_committed_elsewhere_total",
            "Rows a writer read but left out of its commit because another daemon of the consumer group, which owned their partition, had committed them (kafka.assignment = group).",
            &["table"],
        )?;
        let writer_dedup_forgotten_early = counter(
            "ticklake_writer_dedup_forgotten_early_total",
            "Committed message ids a writer forgot for room (writer.dedup_capacity) while still inside writer.dedup_window_secs; a second copy of one of them would be stored again. Raise writer.dedup_capacity if this grows.",
            &["table"],
        )?;
        let actor_panics = counter(
            "ticklake_actor_panics_total",
            "Panics, by thread; a panic stops the daemon for a clean restart, except on a query thread, where it fails that query only.",
            &["thread"],
        )?;
        let resident_memory = gauge(
            "ticklake_process_resident_memory_bytes",
            "Resident set size of the daemon, as sampled by the degradation supervisor.",
            &[],
        )?;
        let query_workers_lost = counter(
            "ticklake_query_workers_lost_total",
            "SQL worker processes that died running a statement, by cause \
             (memory: past api.sql_worker_memory_bytes; crash; protocol); \
             each failed its statement alone.",
            &["cause"],
        )?;
        for cause in crate::query::isolate::CAUSES {
            query_workers_lost.with_label_values(&[cause]).inc_by(0);
        }
        let query_recent_windows = counter(
            "ticklake_query_recent_windows_total",
            "Pages of /v1/trades/recent by how their committed rows were found \
             (kept: decoded rows of this snapshot kept from an earlier page; \
             carried: kept rows carried to a new snapshot by reading only the \
             files it added; read: read from the lake, then kept; not_kept: \
             read, too large to keep under api.recent_cache_bytes).",
            &["outcome"],
        )?;
        let records_lost = counter(
            "ticklake_records_lost_total",
            "Records that left the producer and can no longer reach the lake \
             (offsets the writers never received), by topic and partition.",
            &["topic", "partition"],
        )?;
        // Unlabelled series exist from the start, so a scrape before the
        // first sample still shows them (at 0).
        for g in [
            &degradation_level,
            &spill_pending,
            &spill_pending_bytes,
            &resident_memory,
        ] {
            g.with_label_values::<&str>(&[]).set(0);
        }
        let gaps_rows_written = counter(
            "ticklake_gaps_rows_written_total",
            "Settled trade-id gaps committed to market.gaps.",
            &[],
        )?;
        let gaps_commit_failures = counter(
            "ticklake_gaps_commit_failures_total",
            "Failed market.gaps commits; their rows are kept and retried.",
            &[],
        )?;
        let gaps_rows_dropped = counter(
            "ticklake_gaps_rows_dropped_total",
            "Settled trade-id gaps dropped because the gaps writer already held its bound of uncommitted rows.",
            &[],
        )?;
        // Shown from the start at 0, so an alert sees the first increase.
        for c in [
            &gaps_rows_written,
            &gaps_commit_failures,
            &gaps_rows_dropped,
        ] {
            c.with_label_values::<&str>(&[]).inc_by(0);
        }
        let dedup_memory_bytes = gauge(
            "ticklake_dedup_memory_bytes",
            "Memory of a message-id dedup (its Bloom filter and exact window), by owner (feed.<exchange>, writer.trades).",
            &["owner"],
        )?;
        let dedup_bloom_fill_ratio = fgauge(
            "ticklake_dedup_bloom_fill_ratio",
            "Fraction of the bits set in a dedup's Bloom filter (both generations), by owner.",
            &["owner"],
        )?;
        let dedup_false_positives = counter(
            "ticklake_dedup_false_positives_total",
            "Bloom filter positives a dedup's exact window did not confirm (the id was new): false positives, and ids the window forgot while the filter still held them, by owner.",
            &["owner"],
        )?;
        let dedup_redis_errors = counter(
            "ticklake_dedup_redis_errors_total",
            "Calls to the shared Redis of dedup.redis_url that failed, or were skipped in the 5 s after a failure, by operation (first_time, advance_last, last_ids, alive, take_over); each batch concerned went on with the daemon's own dedup and continuity.",
            &["op"],
        )?;
        let dedup_redis_takeovers = counter(
            "ticklake_dedup_redis_takeovers_total",
            "Trades another daemon on the same feed had taken (dedup.redis_url) and that this one published after that daemon stopped beating, by exchange; such a trade may be in Kafka twice (the trades writer stores it once).",
            &["exchange"],
        )?;
        let feed_connected = gauge(
            "ticklake_feed_connected",
            "1 while a feed holds a connection to its exchange, 0 while it connects or backs off, by exchange.",
            &["exchange"],
        )?;
        let feed_last_trade_age_seconds = fgauge(
            "ticklake_feed_last_trade_age_seconds",
            "Seconds since a feed's count of received trades last grew (since the start when it never did), by exchange; read at scrape time.",
            &["exchange"],
        )?;
        let consumer_lag_records = gauge(
            "ticklake_consumer_lag_records",
            "Records on a partition past the writers' position (high watermark minus position), from the degradation supervisor's last watermark sample.",
            &["topic", "partition"],
        )?;
        let consumer_lag_seconds = fgauge(
            "ticklake_consumer_lag_seconds",
            "Seconds since the oldest record on a partition past the writers' position reached the partition (0 when none waits), estimated from when the supervisor saw the partition's end pass it; late by at most a sample and the watermarks' age.",
            &["topic", "partition"],
        )?;
        let consumer_lag_age_seconds = fgauge(
            "ticklake_consumer_lag_age_seconds",
            "Age of the watermarks behind ticklake_consumer_lag_records (since the start while none was read): the lag is only as fresh as this.",
            &[],
        )?;
        let query_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ticklake_query_duration_seconds",
                "Wall time of a query API request (/v1/*) until its answer's head, by route and status class.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route", "status"],
        )?;
        registry.register(Box::new(query_duration_seconds.clone()))?;
        // Every level's transition counter is shown from the start at 0: an
        // alert on the first entry into a level needs the series before it.
        for level in crate::degrade::level::Level::ALL {
            level_transitions
                .with_label_values(&[level.as_str()])
                .inc_by(0);
        }
        Ok(Self {
            feed_connected,
            feed_last_trade_age_seconds,
            consumer_lag_records,
            consumer_lag_seconds,
            consumer_lag_age_seconds,
            query_duration_seconds,
            losses: crate::ledger::Losses::new(records_lost.clone()),
            records_lost,
            messages,
            shed,
            spill_quarantined,
            degradation_level,
            level_transitions,
            signals,
            signal_thresholds,
            breaker_state,
            breaker_transitions,
            spill_pending,
            spill_pending_bytes,
            lane_depth,
            lane_blocked_seconds,
            actor_restarts,
            actor_errors,
            actor_panics,
            writer_duplicates,
            writer_rows_committed_elsewhere,
            writer_dedup_forgotten_early,
            resident_memory,
            registry,
            feed_frames,
            feed_dead_letters,
            feed_duplicates,
            feed_gaps,
            feed_gap_trades,
            feed_id_regressions,
            feed_backfill_requests,
            feed_connections,
            producer_records,
            consumer_records,
            consumer_decode_errors,
            writer_commits,
            writer_rows,
            writer_buffered_rows,
            writer_commit_seconds,
            queryable_lag_seconds,
            query_workers_lost,
            query_recent_windows,
            gaps_rows_written,
            gaps_commit_failures,
            gaps_rows_dropped,
            dedup_memory_bytes,
            dedup_bloom_fill_ratio,
            dedup_false_positives,
            dedup_redis_errors,
            dedup_redis_takeovers,
        })
    }

    /// Shows at 0 from the start the series that otherwise appear only
    /// with their first event, for label values known at start: an alert
    /// sees the first increase of a series that exists (`increase()` of a
    /// series born at 1 is 0), and a dashboard has a line to draw.
    /// `exchanges` are the enabled feeds' exchange labels, `breakers` and
    /// `tables` those of the running producer and writers.
    pub fn preregister(&self, exchanges: &[&str], breakers: &[&str], tables: &[&str]) {
        use crate::degrade::breaker::BreakerState;
        use crate::degrade::level::Level;
        use crate::instruments::Tier;
        for exchange in exchanges {
            // Every tier at every level, tier 1 included although no level
            // sheds it: that series is what the "tier 1 shed" alert watches.
            for tier in [Tier::One, Tier::Two, Tier::Three] {
                for level in Level::ALL {
                    self.shed
                        .with_label_values(&[exchange, tier.label(), level.as_str()])
                        .inc_by(0);
                }
            }
            self.feed_connected.with_label_values(&[exchange]).set(0);
            self.feed_last_trade_age_seconds
                .with_label_values(&[exchange])
                .set(0.0);
        }
        for breaker in breakers {
            // A breaker starts CLOSED.
            self.breaker_state.with_label_values(&[breaker]).set(0);
            for to in [
                BreakerState::Closed,
                BreakerState::HalfOpen,
                BreakerState::Open,
            ] {
                self.breaker_transitions
                    .with_label_values(&[breaker, to.as_str()])
                    .inc_by(0);
            }
        }
        for table in tables {
            for outcome in ["ok", "retry", "failed", "conflict", "overlap"] {
                self.writer_commits
                    .with_label_values(&[table, outcome])
                    .inc_by(0);
            }
        }
    }

    fn float_counter(
        registry: &Registry,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<CounterVec, MetricsError> {
        let c = CounterVec::new(Opts::new(name, help), labels)?;
        registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    /// Counts one message outcome for the accounting identity.
    pub fn account(&self, exchange: &str, tier: &str, outcome: Outcome, n: u64) {
        self.messages
            .with_label_values(&[exchange, tier, outcome.as_str()])
            .inc_by(n);
    }

    /// Runs `f` on `breaker` at `now_ms` and records what it leaves: the
    /// state gauge always, and a change of state as a counter and a log line.
    pub fn breaker_call<T>(
        &self,
        breaker: &mut crate::degrade::breaker::CircuitBreaker,
        now_ms: u64,
        f: impl FnOnce(&mut crate::degrade::breaker::CircuitBreaker, u64) -> T,
    ) -> T {
        use crate::degrade::breaker::BreakerState;
        let before = breaker.state();
        let out = f(breaker, now_ms);
        let after = breaker.state();
        let name = breaker.name();
        if before != after {
            tracing::warn!(breaker = %name, from = %before, to = %after, "circuit breaker changed state");
            self.breaker_transitions
                .with_label_values(&[name, after.as_str()])
                .inc();
        }
        self.breaker_state
            .with_label_values(&[name])
            .set(match after {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            });
        out
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
