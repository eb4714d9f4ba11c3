//! The ceilings `ticklake bench` sets the full path against: a bare
//! rdkafka producer alone, and a bare producer with a bare consumer
//! reading the records back, on the daemon's broker with its settings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::BenchError;
use super::full::CeilingRecords;
use super::procstat;
use crate::config::Config;
use crate::kafka::window::{BrokerWindow, estimate, message_estimate};

/// How many times each ceiling runs; the report keeps the fastest run.
/// On the embedded cluster, on two cores, the same round trip settles
/// either with the reader close behind the producer, fetching little at a
/// time, or further behind, fetching much: the first did twice the CPU
/// work a record (4.0 to 5.1 µs against 2.2 to 2.6, per-thread CPU alike
/// in every thread, five times the system time) and read 280,000 to
/// 355,000 records/s against 500,000 and more, in about half the default
/// runs. One run let that chance set the ratio. A real broker's runs take
/// as long as the daemon's run each; there one run is kept.
pub(super) fn ceiling_runs(cfg: &Config) -> usize {
    if cfg.kafka.is_embedded() { 3 } else { 1 }
}

/// One ceiling's fastest run, of a few on topics of their own.
pub(super) struct Ceiling {
    /// The fastest run's seconds and the process's CPU during it (the
    /// daemon beside it idle): what librdkafka alone costs a record, the
    /// budget against which the full path's CPU per trade is read.
    pub(super) secs: f64,
    pub(super) cpu_secs: f64,
    /// Every run's seconds, in order.
    pub(super) runs_secs: Vec<f64>,
}

impl Ceiling {
    pub(super) fn none() -> Self {
        Self {
            secs: f64::INFINITY,
            cpu_secs: 0.0,
            runs_secs: Vec::new(),
        }
    }

    pub(super) fn best_of(
        topics: &[String],
        mut run: impl FnMut(&str) -> Result<f64, BenchError>,
    ) -> Result<Self, BenchError> {
        let mut best = Self::none();
        for topic in topics {
            let before = procstat::process_cpu();
            let secs = run(topic)?;
            let cpu_secs = procstat::process_cpu().saturating_sub(before).as_secs_f64();
            best.runs_secs.push(secs);
            if secs < best.secs {
                (best.secs, best.cpu_secs) = (secs, cpu_secs);
            }
        }
        Ok(best)
    }
}

/// Counts delivery reports; the bare producer's whole context. With a
/// reader behind it on the embedded cluster, it also tells the broker
/// window (and its topic) what was delivered where.
#[derive(Default)]
struct Counting {
    delivered: AtomicU64,
    failed: AtomicU64,
    window: Option<(Arc<BrokerWindow>, String)>,
}

impl rdkafka::ClientContext for Counting {}

impl rdkafka::producer::ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        match r {
            Ok(m) => {
                if let Some((window, topic)) = &self.window {
                    window.delivered(topic, m.partition(), message_estimate(m));
                }
                self.delivered.fetch_add(1, Ordering::Relaxed)
            }
            Err((_, m)) => {
                if let Some((window, _)) = &self.window {
                    window.failed(message_estimate(m));
                }
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Seconds for a bare producer (librdkafka's own threads, a counter for
/// delivery reports, nothing per record) to have every record
/// acknowledged. Blocking. The producer never times a record out
/// (`message.timeout.ms = 0`, as the daemon's), so the wait has its own
/// deadline: a broker that stops acknowledging fails the bench, naming the
/// stage, instead of parking it for good.
/// `window`: the broker window a reader empties, if a reader follows.
pub(super) fn produce_all(
    cfg: &Config,
    bootstrap: &str,
    topic: &str,
    records: &CeilingRecords,
    stage: &'static str,
    timeout: Duration,
    window: Option<&Arc<BrokerWindow>>,
) -> Result<f64, BenchError> {
    use rdkafka::producer::{Producer, ThreadedProducer};
    let counting = Counting {
        window: window.map(|w| (w.clone(), topic.to_string())),
        ..Counting::default()
    };
    let producer: Arc<ThreadedProducer<Counting>> = Arc::new(
        crate::kafka::producer_config(&cfg.kafka, bootstrap).create_with_context(counting)?,
    );
    if records.is_empty() {
        return Ok(f64::MIN_POSITIVE);
    }
    // The daemon's own produce call: a topic handle made once, not the
    // topic's name per record (`kafka::topic`).
    let handle = crate::kafka::topic::TopicHandle::new(&producer, topic)?;
    let started = Instant::now();
    for (i, (key, payload)) in records.iter().enumerate() {
        let est = estimate(key.len(), payload.len());
        if let Some(window) = window {
            while !window.has_room(topic, est) {
                if started.elapsed() > timeout {
                    return Err(BenchError::Timeout {
                        stage,
                        secs: timeout.as_secs(),
                        done: i as u64,
                        total: records.len() as u64,
                    });
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        loop {
            match handle.produce(key.as_bytes(), payload, ()) {
                Ok(()) => {
                    if let Some(window) = window {
                        window.enqueued(est);
                    }
                    break;
                }
                Err(rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                )) => std::thread::sleep(Duration::from_micros(200)),
                Err(e) => return Err(BenchError::Client(e)),
            }
        }
    }
    let want = records.len() as u64;
    let ctx = producer.context();
    while ctx.delivered.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed) < want {
        if started.elapsed() > timeout {
            // Whatever is still queued dies with this producer.
            producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
            return Err(BenchError::Timeout {
                stage,
                secs: timeout.as_secs(),
                done: ctx.delivered.load(Ordering::Relaxed),
                total: want,
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let secs = started.elapsed().as_secs_f64();
    if ctx.failed.load(Ordering::Relaxed) > 0 {
        return Err(BenchError::Producer(format!(
            "{} ceiling records were not delivered",
            ctx.failed.load(Ordering::Relaxed)
        )));
    }
    Ok(secs)
}

/// Seconds from the first record sent to the last one read back by a bare
/// consumer, assigned every partition from the start before the first
/// send (no group join inside the measurement). Blocking.
pub(super) fn produce_and_consume(
    cfg: &Config,
    bootstrap: &str,
    topic: &str,
    records: &CeilingRecords,
    partitions: i32,
    timeout: Duration,
    embedded: bool,
) -> Result<f64, BenchError> {
    use rdkafka::{Offset, TopicPartitionList};
    if records.is_empty() {
        return Ok(f64::MIN_POSITIVE);
    }
    let mut kafka = cfg.kafka.clone();
    kafka.consumer_group = format!("{}-ceiling", cfg.kafka.consumer_group);
    let consumer: BaseConsumer = crate::kafka::consumer_config(&kafka, bootstrap).create()?;
    // Every partition, or the reader can never reach `want`: a topic
    // whose metadata is still settling may list fewer for a moment.
    let mut assignment = TopicPartitionList::new();
    let asked = Instant::now();
    loop {
        let meta = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let ids: Vec<i32> = meta
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if ids.len() >= partitions as usize || asked.elapsed() > Duration::from_secs(10) {
            if ids.len() < partitions as usize {
                return Err(BenchError::Producer(format!(
                    "{topic} lists {} of its {partitions} partitions after 10 s",
                    ids.len()
                )));
            }
            for id in ids {
                assignment.add_partition_offset(topic, id, Offset::Beginning)?;
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    consumer.assign(&assignment)?;
    let want = records.len();
    let started = Instant::now();
    // Set once every record is acknowledged: from then on a reader that
    // reads nothing for `STALL` has stalled, and says where, instead of
    // waiting out the whole timeout.
    const STALL: Duration = Duration::from_secs(30);
    let all_sent = Arc::new(AtomicBool::new(false));
    let reader_sent = all_sent.clone();
    // The embedded cluster keeps a few MiB a partition: a reader that
    // falls further behind loses records to its retention and never reads
    // them all (a run in ten timed out so). The producer is held by the
    // daemon's own broker window, per partition, as the daemon is, not by
    // a tighter hold of its own (one partition's budget across all of
    // them, as before). The slow runs `ceiling_runs` describes happen
    // with either hold.
    let window = embedded.then(|| {
        let ids: Vec<i32> = assignment
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        Arc::new(BrokerWindow::new(&[(topic.to_string(), ids)]))
    });
    let reader_window = window.clone();
    let reader_topic = topic.to_string();
    let reader = std::thread::spawn(move || -> Result<Instant, BenchError> {
        let mut read = 0usize;
        let mut last_read = Instant::now();
        while read < want {
            let stalled = reader_sent.load(Ordering::Acquire) && last_read.elapsed() > STALL;
            if started.elapsed() > timeout || stalled {
                let positions = consumer
                    .position()
                    .map(|tpl| {
                        tpl.elements()
                            .iter()
                            .map(|e| format!("{}:{:?}", e.partition(), e.offset()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_else(|e| e.to_string());
                tracing::warn!(
                    read,
                    want,
                    stalled,
                    positions,
                    "round-trip ceiling reader gave up"
                );
                return Err(BenchError::Timeout {
                    stage: "round-trip ceiling",
                    secs: started.elapsed().as_secs(),
                    done: read as u64,
                    total: want as u64,
                });
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    std::hint::black_box(m.payload().map(<[u8]>::len));
                    if let Some(window) = &reader_window {
                        let est = message_estimate(&m);
                        window.consumed(&reader_topic, m.partition(), m.offset(), est);
                    }
                    read += 1;
                    last_read = Instant::now();
                }
                Some(Err(e)) => return Err(BenchError::Client(e)),
                None => {}
            }
        }
        Ok(Instant::now())
    });
    let sent = produce_all(
        cfg,
        bootstrap,
        topic,
        records,
        "round-trip ceiling (produce)",
        timeout,
        window.as_ref(),
    );
    all_sent.store(true, Ordering::Release);
    let done = reader
        .join()
        .map_err(|_| BenchError::Producer("round-trip reader panicked".into()))??;
    sent?;
    Ok(done.duration_since(started).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ceiling_keeps_its_fastest_run_and_every_run_in_order() {
        let topics: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let secs = [3.0, 1.5, 2.0];
        let mut asked = Vec::new();
        let best = Ceiling::best_of(&topics, |topic| {
            asked.push(topic.to_string());
            Ok(secs[asked.len() - 1])
        })
        .unwrap();
        assert_eq!(asked, topics, "each run on a topic of its own");
        assert_eq!(best.runs_secs, secs.to_vec());
        assert_eq!(best.secs, 1.5);
        // A failed run fails the ceiling: no figure from the runs before.
        let failed = Ceiling::best_of(&topics, |_| {
            Err(BenchError::Producer(
                "ceiling records were not delivered".into(),
            ))
        });
        assert!(failed.is_err());
    }
}
