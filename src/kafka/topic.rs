//! A producer's topic handles, made once per topic.
//!
//! rdkafka's `BaseProducer::send` names a record's topic by its text: it
//! makes a C string of it per record, and librdkafka looks the topic up
//! under the client's lock taken for *writing* (`rd_kafka_topic_new0`,
//! which the broker threads take for reading). In a profile of
//! `ticklake bench` that, with the C string, was about a fifth of the
//! producer's send on the feed's thread. A handle made once
//! (`rd_kafka_topic_new`) and passed with each record
//! (`RD_KAFKA_VTYPE_RKT`) costs librdkafka a reference count instead.
//!
//! librdkafka requires every topic handle to be destroyed before its
//! client is; a handle holds the producer, so it cannot outlive it. The
//! handles are kept by the producer actor, never inside a record in
//! flight: a record's delivery opaque that held the producer could make
//! the delivery callback, on the producer's own polling thread, drop the
//! last reference and join that thread.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use rdkafka::bindings as rdsys;
use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::IntoOpaque;

/// librdkafka's `RD_KAFKA_PARTITION_UA` (a macro the bindings do not
/// carry): the partitioner picks the partition, by key.
const PARTITION_UNASSIGNED: i32 = -1;

/// One topic of a producer's.
pub struct TopicHandle<C: ProducerContext + 'static> {
    rkt: NonNull<rdsys::rd_kafka_topic_t>,
    name: Arc<str>,
    producer: Arc<ThreadedProducer<C>>,
}

// SAFETY: librdkafka's topic handles may be used from any thread (its
// produce calls are thread-safe), and this one is only read after it is
// made; the producer it holds is itself `Send + Sync`.
unsafe impl<C: ProducerContext> Send for TopicHandle<C> {}
unsafe impl<C: ProducerContext> Sync for TopicHandle<C> {}

impl<C: ProducerContext> TopicHandle<C> {
    /// A handle on `name` for `producer`. librdkafka learns the topic's
    /// partitions from the broker in the background, as it does for a
    /// topic first named by a record.
    pub fn new(producer: &Arc<ThreadedProducer<C>>, name: &str) -> Result<Self, KafkaError> {
        let text = CString::new(name)
            .map_err(|_| KafkaError::MessageProduction(RDKafkaErrorCode::InvalidTopic))?;
        // SAFETY: the client pointer is live for as long as `producer` is,
        // which the handle holds; a null configuration takes the client's
        // topic defaults. The call returns a new reference (or null, with
        // the reason in the thread's last error), which `Drop` gives back.
        let rkt = unsafe {
            rdsys::rd_kafka_topic_new(
                producer.client().native_ptr(),
                text.as_ptr(),
                std::ptr::null_mut(),
            )
        };
        match NonNull::new(rkt) {
            Some(rkt) => Ok(Self {
                rkt,
                name: Arc::from(name),
                producer: producer.clone(),
            }),
            // SAFETY: reads this thread's last librdkafka error.
            None => Err(KafkaError::MessageProduction(
                unsafe { rdsys::rd_kafka_last_error() }.into(),
            )),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hands one record to librdkafka, which copies `key` and `payload`
    /// and partitions it by key as `BaseProducer::send` does. `opaque`
    /// reaches the context's delivery callback with the record's report;
    /// a record librdkafka refuses gives it back here, dropped.
    pub fn produce(
        &self,
        key: &[u8],
        payload: &[u8],
        opaque: C::DeliveryOpaque,
    ) -> Result<(), KafkaError> {
        let opaque = opaque.into_ptr();
        // SAFETY: the client and topic handles are live (held by `self`);
        // the argument list pairs each tag with a value of the type
        // librdkafka reads for it, and ends with `END`. With `MSG_F_COPY`
        // librdkafka copies key and payload before returning. On success
        // the opaque pointer is librdkafka's until the delivery callback
        // takes it back; on failure it was not kept.
        let err = unsafe {
            rdsys::rd_kafka_producev(
                self.producer.client().native_ptr(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_RKT,
                self.rkt.as_ptr(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_PARTITION,
                PARTITION_UNASSIGNED,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
                rdsys::RD_KAFKA_MSG_F_COPY,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
                payload.as_ptr() as *mut std::ffi::c_void,
                payload.len(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY,
                key.as_ptr() as *const std::ffi::c_void,
                key.len(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_OPAQUE,
                opaque,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_END,
            )
        };
        if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Ok(());
        }
        // SAFETY: made by `into_ptr` above and not kept by librdkafka.
        drop(unsafe { C::DeliveryOpaque::from_ptr(opaque) });
        Err(KafkaError::MessageProduction(err.into()))
    }
}

impl<C: ProducerContext> Drop for TopicHandle<C> {
    fn drop(&mut self) {
        // SAFETY: the reference `new` got, given back once; the client is
        // still live (`self.producer` is dropped after this).
        unsafe { rdsys::rd_kafka_topic_destroy(self.rkt.as_ptr()) }
    }
}

impl<C: ProducerContext> std::fmt::Debug for TopicHandle<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicHandle")
            .field("name", &self.name)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::DeliveryResult;
    use rdkafka::producer::{BaseProducer, BaseRecord};
    use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};

    use super::*;
    use crate::kafka::EmbeddedCluster;

    /// A delivery report: (record number, partition, offset), or the
    /// error's text.
    type Report = Result<(usize, i32, i64), String>;

    #[derive(Default)]
    struct Reports(Mutex<Vec<Report>>);

    impl ClientContext for Reports {}

    impl ProducerContext for Reports {
        type DeliveryOpaque = Arc<usize>;

        fn delivery(&self, report: &DeliveryResult<'_>, n: Arc<usize>) {
            let r = match report {
                Ok(m) => Ok((*n, m.partition(), m.offset())),
                Err((e, _)) => Err(e.to_string()),
            };
            self.0.lock().unwrap().push(r);
        }
    }

    fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> Arc<ThreadedProducer<Reports>> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", bootstrap);
        for (k, v) in extra {
            cfg.set(*k, *v);
        }
        Arc::new(cfg.create_with_context(Reports::default()).unwrap())
    }

    /// Every record (partition, key, payload) of `topic`, read from the
    /// beginning until `want` have arrived.
    fn read_all(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        want: usize,
    ) -> Vec<(i32, String, String)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "topic-handle-test")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.len() < want && Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                let text = |b: Option<&[u8]>| String::from_utf8(b.unwrap().to_vec()).unwrap();
                out.push((m.partition(), text(m.key()), text(m.payload())));
            }
        }
        out
    }

    /// Records produced through a handle arrive on its topic with their
    /// keys and payloads, each once; a key's records share a partition with
    /// the records `BaseProducer::send` gives the same key (the same
    /// partitioner); each delivery report brings back its own opaque; and
    /// the handle keeps the client alive after the producer's owner lets
    /// it go.
    #[test]
    fn a_handle_produces_as_send_does_and_keeps_its_client() {
        let topic = "topic-handles";
        let cluster = EmbeddedCluster::start(&[topic.to_string()], 3).unwrap();
        let p = producer(cluster.bootstrap(), &[]);
        let handle = TopicHandle::new(&p, topic).unwrap();
        assert_eq!(handle.name(), topic);
        let n = 300;
        for i in 0..n {
            let key = format!("sym{}", i % 7);
            handle
                .produce(
                    key.as_bytes(),
                    format!("handle {i}").as_bytes(),
                    Arc::new(i),
                )
                .unwrap();
        }
        // The same keys by name, as rdkafka's own `send` names them.
        let by_name: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap())
            .create()
            .unwrap();
        for k in 0..7 {
            let key = format!("sym{k}");
            by_name
                .send(BaseRecord::to(topic).key(&key).payload("by name"))
                .unwrap();
        }
        by_name.flush(Duration::from_secs(10)).unwrap();
        p.flush(Duration::from_secs(10)).unwrap();

        // Let the producer's owner go: the handle still produces.
        let reports_of = p.clone();
        drop(p);
        handle
            .produce(b"sym0", b"after the owner let go", Arc::new(n))
            .unwrap();
        reports_of.flush(Duration::from_secs(10)).unwrap();

        let got = read_all(cluster.bootstrap(), topic, 3, n + 8);
        assert_eq!(got.len(), n + 8, "every record arrived");
        let mut partition_of: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
        let mut payloads = BTreeSet::new();
        for (partition, key, payload) in &got {
            partition_of
                .entry(key.clone())
                .or_default()
                .insert(*partition);
            if payload != "by name" {
                assert!(payloads.insert(payload.clone()), "{payload} arrived twice");
            }
        }
        assert_eq!(payloads.len(), n + 1);
        assert_eq!(partition_of.len(), 7);
        for (key, parts) in &partition_of {
            assert_eq!(parts.len(), 1, "{key} on partitions {parts:?}");
        }
        let used: BTreeSet<i32> = partition_of.values().flatten().copied().collect();
        assert!(used.len() > 1, "keys spread over partitions: {used:?}");

        let reports = reports_of.context().0.lock().unwrap().clone();
        let mut ids: Vec<usize> = reports
            .iter()
            .map(|r| r.as_ref().expect("delivered").0)
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..=n).collect::<Vec<_>>());
        drop(handle);
        drop(reports_of);
    }

    /// A record librdkafka refuses at once is an error, and its opaque is
    /// given back (dropped), not leaked nor reported later.
    #[test]
    fn a_refused_record_gives_its_opaque_back() {
        let topic = "topic-handle-refusals";
        let cluster = EmbeddedCluster::start(&[topic.to_string()], 1).unwrap();
        let p = producer(cluster.bootstrap(), &[("message.max.bytes", "2000")]);
        let handle = TopicHandle::new(&p, topic).unwrap();
        let opaque = Arc::new(7usize);
        let err = handle
            .produce(b"k", &[b'x'; 5000], opaque.clone())
            .unwrap_err();
        assert!(
            matches!(
                err,
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
            ),
            "{err:?}"
        );
        assert_eq!(
            Arc::strong_count(&opaque),
            1,
            "the refused opaque was dropped"
        );
        handle.produce(b"k", b"small", opaque.clone()).unwrap();
        p.flush(Duration::from_secs(10)).unwrap();
        assert_eq!(
            Arc::strong_count(&opaque),
            1,
            "the delivered opaque was dropped"
        );
        assert_eq!(*p.context().0.lock().unwrap(), vec![Ok((7, 0, 0))]);
    }
}
