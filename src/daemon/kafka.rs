//! The Kafka stage of the wiring: the embedded cluster or the brokers, the
//! topics, the cluster id, partitions and watermarks, and where each table
//! starts reading (the offsets recorded in its latest snapshot).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::actors::consumer::{LakeConsumer, LakeContext, Seen};
use crate::config::Assignment;
use rdkafka::{Offset, TopicPartitionList};

use super::DaemonError;
use crate::config::Config;
use crate::kafka::window::BrokerWindow;
use crate::kafka::{self, EmbeddedCluster};
use crate::lake::commit::KafkaOffsets;
use crate::ledger::{LossCause, Losses};

/// The Kafka side, ready for the actors.
pub struct KafkaReady {
    /// Kept alive for the daemon's lifetime when embedded.
    pub embedded: Option<EmbeddedCluster>,
    /// Bootstrap servers in use (the embedded cluster's when embedded).
    pub bootstrap: String,
    pub cluster_id: String,
    pub dead_letter_topic: String,
    /// Every topic the daemon reads, with its partitions.
    pub topics: Vec<(String, Vec<i32>)>,
    /// Low and high watermark of each partition at start.
    pub watermarks: BTreeMap<(String, i32), (i64, i64)>,
    /// A client for watermark reads (degradation lag, shutdown drain).
    pub watermark_client: Arc<BaseConsumer>,
    /// The embedded cluster's window (see `kafka::window`); `None` on a
    /// real broker.
    pub window: Option<Arc<BrokerWindow>>,
}

impl KafkaReady {
    /// The topics of one table: the dead-letter topic, or all the others.
    pub fn topics_of(&self, dead_letters: bool) -> Vec<(String, Vec<i32>)> {
        self.topics
            .iter()
            .filter(|(t, _)| (*t == self.dead_letter_topic) == dead_letters)
            .cloned()
            .collect()
    }

    /// Each partition's end at start, by topic.
    pub fn start_ends(&self) -> HashMap<String, HashMap<i32, i64>> {
        let mut ends: HashMap<String, HashMap<i32, i64>> = HashMap::new();
        for ((t, p), (_, hi)) in &self.watermarks {
            ends.entry(t.clone()).or_default().insert(*p, *hi);
        }
        ends
    }
}

/// Starts the embedded cluster or makes sure the brokers have the topics,
/// then reads the cluster id, partitions and watermarks.
pub async fn prepare(cfg: &Config) -> Result<KafkaReady, DaemonError> {
    // A topic per feed's exchange, and the equities topic: the topics
    // whose subjects the schema registry holds.
    let mut topic_names = crate::kafka::registry::trade_topics(cfg);
    let dl_topic = cfg.kafka.dead_letter_topic.clone();
    topic_names.push(dl_topic.clone());

    let embedded = if cfg.kafka.is_embedded() {
        let created: Vec<String> = topic_names
            .iter()
            .chain(&cfg.kafka.extra_topics)
            .cloned()
            .collect();
        let c = EmbeddedCluster::start(&created, cfg.kafka.embedded_partitions)?;
        tracing::info!(bootstrap = c.bootstrap(), "embedded kafka cluster started");
        Some(c)
    } else {
        None
    };
    let bootstrap = match &embedded {
        Some(c) => c.bootstrap().to_string(),
        None => cfg.kafka.brokers.clone(),
    };
    if embedded.is_none() {
        kafka::ensure_topics(
            &cfg.kafka,
            &bootstrap,
            &topic_names,
            cfg.kafka.embedded_partitions,
        )
        .await?;
    }

    // Blocking librdkafka calls.
    let kcfg = cfg.kafka.clone();
    let boot = bootstrap.clone();
    let (cluster_id, topics, watermarks, watermark_client) =
        tokio::task::spawn_blocking(move || -> Result<_, DaemonError> {
            let mut cluster = String::new();
            let mut topics = Vec::new();
            for t in &topic_names {
                let (id, parts) = kafka::cluster_and_partitions(&kcfg, &boot, t)?;
                cluster = id;
                topics.push((t.clone(), parts));
            }
            let client: BaseConsumer = kafka::base_config(&kcfg, &boot).create()?;
            let mut wm = BTreeMap::new();
            for (t, parts) in &topics {
                for p in parts {
                    wm.insert(
                        (t.clone(), *p),
                        client.fetch_watermarks(t, *p, Duration::from_secs(30))?,
                    );
                }
            }
            Ok((cluster, topics, wm, Arc::new(client)))
        })
        .await
        .map_err(|e| DaemonError::Join(e.to_string()))??;
    tracing::info!(cluster_id = %cluster_id, bootstrap = %bootstrap, "kafka ready");
    let window = embedded
        .is_some()
        .then(|| Arc::new(BrokerWindow::new(&topics)));
    Ok(KafkaReady {
        window,
        embedded,
        bootstrap,
        cluster_id,
        dead_letter_topic: dl_topic,
        topics,
        watermarks,
        watermark_client,
    })
}

/// The consumer: with `kafka.assignment = all`, assigned every table's
/// start position; with `group`, subscribed to the topics in the consumer
/// group, each partition the group gives it started where `seen` says.
pub fn assigned_consumer(
    cfg: &Config,
    kafka: &KafkaReady,
    starts: &[&KafkaOffsets],
    seen: Arc<Seen>,
) -> Result<Arc<LakeConsumer>, DaemonError> {
    let mut ccfg = kafka::consumer_config(&cfg.kafka, &kafka.bootstrap);
    if cfg.kafka.assignment == Assignment::Group {
        for start in starts {
            seen.committed(start);
        }
        // Nothing is this daemon's until the group says so.
        seen.set_owned(std::collections::HashSet::new());
        // A daemon killed outright is noticed when its session times out;
        // librdkafka's 45 s would leave its partitions unread that long.
        if !cfg.kafka.properties.contains_key("session.timeout.ms") {
            ccfg.set("session.timeout.ms", "10000");
            ccfg.set("heartbeat.interval.ms", "1000");
        }
        let consumer: LakeConsumer = ccfg.create_with_context(LakeContext::new(seen))?;
        let topics: Vec<&str> = kafka.topics.iter().map(|(t, _)| t.as_str()).collect();
        consumer.subscribe(&topics)?;
        tracing::info!(group = %cfg.kafka.consumer_group, topics = ?topics, "consumer joined its group; partitions come from the group");
        return Ok(Arc::new(consumer));
    }
    let consumer: LakeConsumer = ccfg.create_with_context(LakeContext::new(seen))?;
    let mut tpl = TopicPartitionList::new();
    for start in starts {
        for (t, parts) in &start.topics {
            for (p, off) in parts {
                tpl.add_partition_offset(t, *p, Offset::Offset(*off))?;
                tracing::info!(topic = %t, partition = p, offset = off, "consumer start position");
            }
        }
    }
    consumer.assign(&tpl)?;
    Ok(Arc::new(consumer))
}

/// Where every table starts reading: its snapshot's offsets when they were
/// recorded on this cluster and still lie within the partitions, else the
/// beginning of each partition (logged, never silent). A recorded offset
/// below a partition's first one means the records between were deleted
/// before the lake had them: a loss, recorded in `losses`.
pub fn start_positions(
    table: &str,
    recorded: Option<(i64, KafkaOffsets)>,
    cluster_id: &str,
    topics: &[(String, Vec<i32>)],
    watermarks: &BTreeMap<(String, i32), (i64, i64)>,
    losses: &Losses,
) -> KafkaOffsets {
    let mut start = KafkaOffsets {
        cluster_id: cluster_id.to_string(),
        topics: BTreeMap::new(),
    };
    let recorded = match recorded {
        Some((snap, o)) if o.cluster_id == cluster_id => Some((snap, o)),
        Some((snap, o)) => {
            tracing::warn!(table, snapshot_id = snap, recorded_cluster = %o.cluster_id, cluster = cluster_id,
                "snapshot offsets belong to another kafka cluster; reading from the beginning");
            None
        }
        None => None,
    };
    for (topic, parts) in topics {
        for p in parts {
            let (lo, hi) = watermarks
                .get(&(topic.clone(), *p))
                .copied()
                .unwrap_or((0, 0));
            let next = match recorded.as_ref().and_then(|(_, o)| o.get(topic, *p)) {
                Some(n) if n <= hi => {
                    losses.record(topic, *p, n, lo, LossCause::BelowLogStart);
                    n.max(lo)
                }
                Some(n) => {
                    tracing::warn!(table, topic = %topic, partition = p, recorded = n, high = hi,
                        "recorded offset lies past the partition end; reading from the beginning");
                    lo
                }
                None => lo,
            };
            start.set(topic, *p, next);
        }
    }
    start
}
