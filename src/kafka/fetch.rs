//! Fetched records read from the consumer's queue many at a time.
//!
//! rdkafka's stream hands over one message per poll, and each poll is a
//! `rd_kafka_queue_poll`: the queue's lock, three or four clock readings
//! (`rd_kafka_app_poll_start`, `rd_kafka_app_polled`, the stream's own
//! `Instant::now`) and an `Arc` around the event. In a profile of
//! `ticklake bench` that was about a quarter of the lake arbiter.
//! `rd_kafka_consume_batch_queue` takes what is ready in one call, with one
//! clock reading for all of it.
//!
//! The batch call serves every other op it meets on the queue itself, and
//! hands an op it cannot serve to `rd_kafka_message_get`, which asserts:
//! the process would abort. Two kinds could reach the consumer's queue:
//! - a group's rebalances: with rdkafka's event API and no rebalance
//!   callback, the batch call would unassign every partition. So only a
//!   consumer that assigns its own partitions (`kafka.assignment = all`)
//!   reads in batches; a group member keeps the stream.
//! - the results of librdkafka's own offset commits, which carry no
//!   callback: `consumer_config` turns auto-commit off whatever
//!   `kafka.properties` say. The writers' manual asynchronous commits get
//!   no reply at all (`rd_kafka_commit` sets no reply queue for them).
//!
//! Everything else on that queue (fetched records, consumer errors as
//! messages, errors, logs, statistics) the batch call serves or returns.

use std::any::Any;
use std::ffi::CStr;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

use rdkafka::Message;
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;

/// A handle on a consumer's own queue, where its fetched records arrive.
/// It holds the consumer, so the client outlives the handle, and records
/// read through it borrow it, so they cannot outlive either.
pub struct ConsumerQueue {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    _consumer: Arc<dyn Any + Send + Sync>,
}

// SAFETY: a librdkafka queue handle may be used and destroyed from any
// thread; the handle itself is never written after it is made.
unsafe impl Send for ConsumerQueue {}
unsafe impl Sync for ConsumerQueue {}

impl ConsumerQueue {
    /// The queue of `consumer`; `None` for a client that is not one.
    pub fn of<C, T>(consumer: &Arc<T>) -> Option<Self>
    where
        C: ConsumerContext,
        T: Consumer<C> + Send + Sync + 'static,
    {
        // SAFETY: the client pointer is live for as long as `consumer` is,
        // which the handle holds; the call returns a new reference to the
        // queue (or null), which `Drop` gives back.
        let queue = unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        NonNull::new(queue).map(|queue| Self {
            queue,
            _consumer: consumer.clone(),
        })
    }

    /// Appends up to `max` records that are ready now to `out`, without
    /// waiting; returns how many.
    pub fn read_ready<'q>(&'q self, max: usize, out: &mut Vec<Fetched<'q>>) -> usize {
        if max == 0 {
            return 0;
        }
        let mut raw: Vec<*mut rdsys::rd_kafka_message_t> = Vec::with_capacity(max);
        // SAFETY: `raw` has room for `max` pointers; the call writes at most
        // that many and returns how many it wrote (or -1 on error, with
        // none written). Each written pointer is a message we now own.
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(self.queue.as_ptr(), 0, raw.as_mut_ptr(), max)
        };
        let n = usize::try_from(n).unwrap_or(0).min(max);
        // SAFETY: the first `n` slots were written by the call above.
        unsafe { raw.set_len(n) };
        out.reserve(n);
        out.extend(
            raw.into_iter()
                .filter_map(NonNull::new)
                .map(|m| Fetched(m, PhantomData)),
        );
        n
    }
}

impl Drop for ConsumerQueue {
    fn drop(&mut self) {
        // SAFETY: the reference taken in `of`, given back once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue.as_ptr()) }
    }
}

/// One record (or consumer error) read by [`ConsumerQueue::read_ready`];
/// freed when dropped.
pub struct Fetched<'q>(
    NonNull<rdsys::rd_kafka_message_t>,
    PhantomData<&'q ConsumerQueue>,
);

impl Fetched<'_> {
    fn raw(&self) -> &rdsys::rd_kafka_message_t {
        // SAFETY: owned and live until `Drop`.
        unsafe { self.0.as_ref() }
    }

    /// The consumer error this stands for, if it is one rather than a
    /// record.
    pub fn error(&self) -> Option<KafkaError> {
        let err = self.raw().err;
        (err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| KafkaError::MessageConsumption(RDKafkaErrorCode::from(err)))
    }

    /// The record's topic ("" when librdkafka gives none, as for some
    /// errors, or a name that is not UTF-8, which no topic of ours is).
    pub fn topic(&self) -> &str {
        let rkt = self.raw().rkt;
        if rkt.is_null() {
            return "";
        }
        // SAFETY: a message holds a reference on its topic, so the name
        // lives as long as the message; librdkafka's names end in NUL.
        unsafe { CStr::from_ptr(rdsys::rd_kafka_topic_name(rkt)) }
            .to_str()
            .unwrap_or("")
    }

    pub fn partition(&self) -> i32 {
        self.raw().partition
    }

    pub fn offset(&self) -> i64 {
        self.raw().offset
    }

    pub fn payload(&self) -> Option<&[u8]> {
        let m = self.raw();
        // SAFETY: `payload` points at `len` bytes owned by the message.
        (!m.payload.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(m.payload.cast::<u8>(), m.len) })
    }

    pub fn key(&self) -> Option<&[u8]> {
        let m = self.raw();
        // SAFETY: `key` points at `key_len` bytes owned by the message.
        (!m.key.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(m.key.cast::<u8>(), m.key_len) })
    }
}

impl Drop for Fetched<'_> {
    fn drop(&mut self) {
        // SAFETY: the message was handed to us by the batch call and is
        // destroyed once.
        unsafe { rdsys::rd_kafka_message_destroy(self.0.as_ptr()) }
    }
}

/// A record read by the consumer loop: polled from rdkafka's stream (the
/// first of a chunk, and every one in a group), or read with the rest of
/// what was ready (see the module doc).
pub enum Read<'q> {
    Polled(KafkaResult<BorrowedMessage<'q>>),
    Batched(Fetched<'q>),
}

impl Read<'_> {
    pub fn error(&self) -> Option<KafkaError> {
        match self {
            Read::Polled(Err(e)) => Some(e.clone()),
            Read::Polled(Ok(_)) => None,
            Read::Batched(f) => f.error(),
        }
    }

    pub fn topic(&self) -> &str {
        match self {
            Read::Polled(Ok(m)) => m.topic(),
            Read::Polled(Err(_)) => "",
            Read::Batched(f) => f.topic(),
        }
    }

    /// Which of librdkafka's topic objects the record belongs to (its
    /// address; 0 for none), to tell a run of one topic's records without
    /// reading the name each time. Records that are alive at once share
    /// the value exactly when they share a topic: each holds a reference
    /// on its topic object, so no other can take that address meanwhile.
    pub fn topic_id(&self) -> usize {
        match self {
            // SAFETY: `ptr` is the live message this value borrows.
            Read::Polled(Ok(m)) => unsafe { (*m.ptr()).rkt as usize },
            Read::Polled(Err(_)) => 0,
            Read::Batched(f) => f.raw().rkt as usize,
        }
    }

    pub fn partition(&self) -> i32 {
        match self {
            Read::Polled(Ok(m)) => m.partition(),
            Read::Polled(Err(_)) => -1,
            Read::Batched(f) => f.partition(),
        }
    }

    pub fn offset(&self) -> i64 {
        match self {
            Read::Polled(Ok(m)) => m.offset(),
            Read::Polled(Err(_)) => -1,
            Read::Batched(f) => f.offset(),
        }
    }

    pub fn payload(&self) -> Option<&[u8]> {
        match self {
            Read::Polled(Ok(m)) => m.payload(),
            Read::Polled(Err(_)) => None,
            Read::Batched(f) => f.payload(),
        }
    }

    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Read::Polled(Ok(m)) => m.key(),
            Read::Polled(Err(_)) => None,
            Read::Batched(f) => f.key(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use rdkafka::consumer::{BaseConsumer, CommitMode};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use super::*;
    use crate::kafka::EmbeddedCluster;

    /// Records read in batches are the ones produced, each once, in order,
    /// with their topic, partition, offset, key and payload; asynchronous
    /// offset commits made meanwhile, as the writers make them, leave
    /// nothing on the queue the batch read cannot serve, and reach the
    /// group.
    #[test]
    fn batches_read_every_record_once_while_offsets_are_committed() {
        let topic = "fetch-batches";
        let cluster = EmbeddedCluster::start(&[topic.to_string()], 2).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap())
            .create()
            .unwrap();
        let total = 600;
        for i in 0..total {
            let key = format!("k{i}");
            let payload = format!("record {i}");
            producer
                .send(
                    BaseRecord::to(topic)
                        .partition(i % 2)
                        .key(&key)
                        .payload(&payload),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let consumer: Arc<BaseConsumer> = Arc::new(
            ClientConfig::new()
                .set("bootstrap.servers", cluster.bootstrap())
                .set("group.id", "fetch-test")
                .set("enable.auto.commit", "false")
                .create()
                .unwrap(),
        );
        let mut tpl = TopicPartitionList::new();
        for p in 0..2 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let queue = ConsumerQueue::of(&consumer).unwrap();

        let mut seen: BTreeMap<(i32, i64), (String, String)> = BTreeMap::new();
        let mut next = [0i64; 2];
        let mut commits = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.len() < total as usize && Instant::now() < deadline {
            let mut batch = Vec::new();
            if queue.read_ready(64, &mut batch) == 0 {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            for m in &batch {
                assert!(m.error().is_none(), "{:?}", m.error());
                assert_eq!(m.topic(), topic);
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                let payload = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
                let p = m.partition();
                assert_eq!(m.offset(), next[p as usize], "in order, none skipped");
                next[p as usize] += 1;
                assert!(
                    seen.insert((p, m.offset()), (key, payload)).is_none(),
                    "read twice"
                );
            }
            // Commit what was read, so replies keep arriving on the queue
            // the batch read serves.
            let mut offsets = TopicPartitionList::new();
            for (p, n) in next.iter().enumerate() {
                if *n > 0 {
                    offsets
                        .add_partition_offset(topic, p as i32, Offset::Offset(*n))
                        .unwrap();
                }
            }
            consumer.commit(&offsets, CommitMode::Async).unwrap();
            commits += 1;
        }
        assert_eq!(seen.len(), total as usize, "every record read");
        assert!(commits > 1, "commits made while reading: {commits}");
        for (key, payload) in seen.values() {
            assert_eq!(payload, &format!("record {}", &key[1..]));
        }
        // The group holds every offset once the last commit lands.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut rest = Vec::new();
            queue.read_ready(16, &mut rest);
            assert!(rest.is_empty(), "nothing more to read");
            let committed = consumer
                .committed(Duration::from_secs(5))
                .unwrap()
                .elements()
                .iter()
                .map(|e| e.offset())
                .collect::<Vec<_>>();
            if committed == [Offset::Offset(next[0]), Offset::Offset(next[1])] {
                break;
            }
            assert!(Instant::now() < deadline, "group offsets: {committed:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(next, [300, 300]);
    }
}
