//! Kafka plumbing shared by the producer and consumer actors: client
//! configuration, the embedded in-process cluster, topics and cluster ids
//! (here), the Avro codec and the schema registry, the encoder that turns
//! a record into topic, key and payload, and delivery reports.

pub mod acks;
pub mod avro;
pub mod avro_direct;
pub mod delivery;
pub mod encoder;
pub mod fetch;
pub mod registry;
pub mod topic;
pub mod window;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("embedded kafka cluster: {0}")]
    Embedded(String),
    #[error("creating topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("no cluster id from {0} (is the broker reachable?)")]
    NoClusterId(String),
    #[error("topic {0} has no partitions")]
    NoPartitions(String),
    #[error("creating topics on {bootstrap} failed (is the broker reachable?): {source}")]
    Admin {
        bootstrap: String,
        source: KafkaError,
    },
}

/// librdkafka's in-process cluster. It is `!Send`, so it lives on its own
/// thread for the daemon's lifetime; dropping this handle shuts it down.
pub struct EmbeddedCluster {
    bootstrap: String,
    stop: Option<mpsc::Sender<BrokerFault>>,
    thread: Option<JoinHandle<()>>,
}

/// What the embedded cluster's thread is told: a fault for its broker
/// (`[chaos] admin`), or to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerFault {
    Down,
    Up,
    RoundTrip(Duration),
    Stop,
}

/// Takes the embedded broker down and up, or slows it (`[chaos] admin`).
/// `Err` when the cluster is gone.
#[derive(Debug, Clone)]
pub struct EmbeddedFaults(mpsc::Sender<BrokerFault>);

impl EmbeddedFaults {
    pub fn broker_down(&self) -> Result<(), KafkaSetupError> {
        self.send(BrokerFault::Down)
    }
    pub fn broker_up(&self) -> Result<(), KafkaSetupError> {
        self.send(BrokerFault::Up)
    }
    pub fn round_trip(&self, rtt: Duration) -> Result<(), KafkaSetupError> {
        self.send(BrokerFault::RoundTrip(rtt))
    }
    fn send(&self, f: BrokerFault) -> Result<(), KafkaSetupError> {
        self.0
            .send(f)
            .map_err(|_| KafkaSetupError::Embedded("cluster stopped".into()))
    }
}

impl EmbeddedCluster {
    pub fn start(topics: &[String], partitions: i32) -> Result<Self, KafkaSetupError> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<BrokerFault>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                for t in &topics {
                    if let Err(e) = cluster.create_topic(t, partitions, 1) {
                        let _ = ready_tx.send(Err(format!("topic {t}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Serve faults until the handle is dropped; the cluster dies with us.
                while let Ok(fault) = stop_rx.recv() {
                    let done = match fault {
                        BrokerFault::Stop => break,
                        BrokerFault::Down => cluster.broker_down(1),
                        BrokerFault::Up => cluster.broker_up(1),
                        BrokerFault::RoundTrip(d) => cluster.broker_round_trip_time(1, d),
                    };
                    if let Err(e) = done {
                        tracing::warn!(?fault, error = %e, "embedded broker fault not applied");
                    }
                }
            })
            .map_err(|e| KafkaSetupError::Embedded(e.to_string()))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| KafkaSetupError::Embedded("cluster thread exited".into()))?
            .map_err(KafkaSetupError::Embedded)?;
        Ok(Self {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// A handle that takes the broker down and up, or slows it.
    pub fn faults(&self) -> Option<EmbeddedFaults> {
        self.stop.clone().map(EmbeddedFaults)
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        // Told, not just dropped: a fault handle may still hold a sender.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(BrokerFault::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Base client config shared by every client the daemon creates.
pub fn base_config(cfg: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// Producer settings: idempotent, acks from every in-sync replica, batched,
/// and compressed for a real broker (`KafkaConfig::compression_type`).
/// Delivery never times out on its own: a broker outage fills the queue
/// and pushes back instead of dropping records.
pub fn producer_config(cfg: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut c = base_config(cfg, bootstrap);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", cfg.compression_type())
        .set("linger.ms", cfg.linger_ms.to_string())
        .set("message.timeout.ms", "0")
        .set("queue.buffering.max.messages", "200000");
    // librdkafka's idempotent producer sends a partition's next batch only
    // once fewer than 5 of its *messages* are in flight, so in practice one
    // request per partition. With the connection allowing 5, the broker
    // thread still marks each ready batch it may not send as due now and
    // polls its socket with a zero timeout until the answer comes: a whole
    // core while the broker is the bottleneck (on Tansu, 31 CPU-µs per
    // record at 22,000 records/s, against 5 CPU-µs at 21,000 with 1). One
    // request per connection keeps the batch in the send queue instead,
    // and the thread sleeps on the socket. The cost: partitions led by one
    // broker share that request, which matters only at high round-trip
    // times; `kafka.properties` can set it back.
    if !cfg
        .properties
        .contains_key("max.in.flight.requests.per.connection")
    {
        c.set("max.in.flight.requests.per.connection", "1");
    }
    c
}

/// The consumer's `fetch.wait.max.ms` unless `kafka.properties` sets it
/// (see `consumer_config`).
pub const FETCH_WAIT_MS: u32 = 10;

/// Consumer settings: no auto commit (the lake's snapshot is the truth),
/// and read only committed data.
pub fn consumer_config(cfg: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut c = base_config(cfg, bootstrap);
    c.set("group.id", &cfg.consumer_group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    // librdkafka waits up to 500 ms for a fetch to fill; hybrid reads
    // promise trades within tens of milliseconds, so wait far less unless
    // kafka.properties says otherwise. A real broker answers a waiting
    // fetch as soon as a record arrives, so there the wait only paces the
    // fetches of an idle topic. The embedded cluster does not cut the wait
    // short (librdkafka's mock broker holds an empty fetch for all of it),
    // so there it adds to every record's way to the tail, and 2 ms took
    // `bench-api freshness --rate 10000` from a p50 of 12 to 8 ms. But it
    // also cost 1 to 2 CPU-µs a trade at full load in `ticklake bench`
    // (more, smaller fetches: the mock's thread alone took 0.46 to 0.55 s
    // against 0.21 to 0.38 s), and freshness holds its bound at 10 ms
    // (p99 25 to 29 ms), so the default is 10 ms on both.
    if !cfg.properties.contains_key("fetch.wait.max.ms") {
        c.set("fetch.wait.max.ms", FETCH_WAIT_MS.to_string());
    }
    c
}

/// Creates the topics if they do not exist yet.
pub async fn ensure_topics(
    cfg: &KafkaConfig,
    bootstrap: &str,
    topics: &[String],
    partitions: i32,
) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = base_config(cfg, bootstrap).create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        admin
            .create_topics(&new, &opts)
            .await
            .map_err(|source| KafkaSetupError::Admin {
                bootstrap: bootstrap.to_string(),
                source,
            })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaSetupError::Topic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Cluster id and partition ids of `topic`. Blocking: call from
/// `spawn_blocking`.
pub fn cluster_and_partitions(
    cfg: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
) -> Result<(String, Vec<i32>), KafkaSetupError> {
    let c: BaseConsumer = base_config(cfg, bootstrap).create()?;
    let timeout = Duration::from_secs(30);
    let id = c
        .client()
        .fetch_cluster_id(timeout)
        .ok_or_else(|| KafkaSetupError::NoClusterId(bootstrap.to_string()))?;
    let md = c.fetch_metadata(Some(topic), timeout)?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if parts.is_empty() {
        return Err(KafkaSetupError::NoPartitions(topic.to_string()));
    }
    Ok((id, parts))
}

/// The high watermark of every partition of `topics`, asked partition by
/// partition (blocking). It stops at the first error, because a broker that
/// is away would only add one timeout per partition, and returns what it
/// got with that error.
pub fn high_watermarks(
    client: &BaseConsumer,
    topics: &[(String, Vec<i32>)],
    timeout: Duration,
) -> (BTreeMap<(String, i32), i64>, Option<KafkaError>) {
    let mut highs = BTreeMap::new();
    for (t, parts) in topics {
        for p in parts {
            match client.fetch_watermarks(t, *p, timeout) {
                Ok((_, hi)) => {
                    highs.insert((t.clone(), *p), hi);
                }
                Err(e) => return (highs, Some(e)),
            }
        }
    }
    (highs, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_keeps_one_request_in_flight_unless_the_properties_say_otherwise() {
        let mut cfg = KafkaConfig::default();
        let c = producer_config(&cfg, "127.0.0.1:9092");
        assert_eq!(c.get("max.in.flight.requests.per.connection"), Some("1"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        cfg.properties
            .insert("max.in.flight.requests.per.connection".into(), "5".into());
        let c = producer_config(&cfg, "127.0.0.1:9092");
        assert_eq!(c.get("max.in.flight.requests.per.connection"), Some("5"));
    }

    /// `auto` compresses for a real broker only; a named codec is used on
    /// either (anything else is a config error: `config` tests).
    #[test]
    fn compression_is_none_on_the_embedded_cluster_and_lz4_on_a_broker_by_default() {
        let mut cfg = KafkaConfig::default();
        assert_eq!(cfg.compression, "auto");
        for (brokers, want) in [("embedded", "none"), ("127.0.0.1:9092", "lz4")] {
            cfg.brokers = brokers.into();
            let c = producer_config(&cfg, "127.0.0.1:9092");
            assert_eq!(c.get("compression.type"), Some(want), "{brokers}");
        }
        for brokers in ["embedded", "127.0.0.1:9092"] {
            cfg.brokers = brokers.into();
            cfg.compression = "snappy".into();
            let c = producer_config(&cfg, "127.0.0.1:9092");
            assert_eq!(c.get("compression.type"), Some("snappy"), "{brokers}");
        }
    }

    /// The lake consumer reads in batches (`kafka::fetch`), which would
    /// abort on the result of an offset commit librdkafka makes itself:
    /// auto-commit stays off, whatever the properties say.
    #[test]
    fn auto_commit_stays_off_whatever_the_properties_say() {
        let mut cfg = KafkaConfig::default();
        for (k, v) in [
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "true"),
        ] {
            cfg.properties.insert(k.into(), v.into());
        }
        let c = consumer_config(&cfg, "127.0.0.1:9092");
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
    }

    #[test]
    fn consumers_wait_10_ms_for_a_fetch_unless_the_properties_say_otherwise() {
        let mut cfg = KafkaConfig::default();
        for brokers in ["embedded", "127.0.0.1:9092"] {
            cfg.brokers = brokers.into();
            let c = consumer_config(&cfg, "127.0.0.1:9092");
            assert_eq!(c.get("fetch.wait.max.ms"), Some("10"), "{brokers}");
        }
        cfg.properties
            .insert("fetch.wait.max.ms".into(), "2".into());
        let c = consumer_config(&cfg, "127.0.0.1:9092");
        assert_eq!(c.get("fetch.wait.max.ms"), Some("2"));
    }
}
