//! Messages to a `WriterActor`.

use std::sync::Arc;

use actix::Message;

use crate::lake::LakeError;
use crate::lake::commit::KafkaOffsets;
use crate::model::{DeadLetter, TradeV2};

/// Rows for one table, decoded from Kafka.
#[derive(Debug, Clone)]
pub enum Rows {
    /// Shared with the tail, which holds the same rows until they commit.
    Trades(Vec<Arc<TradeV2>>),
    DeadLetters(Vec<DeadLetter>),
}

impl Rows {
    pub fn len(&self) -> usize {
        match self {
            Rows::Trades(r) => r.len(),
            Rows::DeadLetters(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A run of consecutive offsets of one partition that a consumer handed
/// over: records `first ..= next - 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub topic: Arc<str>,
    pub partition: i32,
    pub first: i64,
    pub next: i64,
}

impl Span {
    /// Adds a record to `spans`: to the last span of its partition when it
    /// follows that span's last offset, else as a new span.
    ///
    /// One span per run, not one entry per record: the writer checks and
    /// records positions per entry, and per record that was two map
    /// updates and a topic-name allocation each time.
    pub fn push(spans: &mut Vec<Span>, topic: &Arc<str>, partition: i32, offset: i64) {
        if let Some(last) = spans.last_mut()
            && last.partition == partition
            && last.next == offset
            && *last.topic == **topic
        {
            last.next = offset + 1;
            return;
        }
        spans.push(Span {
            topic: topic.clone(),
            partition,
            first: offset,
            next: offset + 1,
        });
    }
}

/// Consumed records: the rows plus the runs of offsets they came from.
/// A record that became no row (undecodable, routed elsewhere) still
/// advances its offset here; one skipped leaves a hole between two spans.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Consumed {
    pub rows: Rows,
    pub positions: Vec<Span>,
    /// The consumer loop's generation (its restart count).
    pub generation: u64,
    /// Trades only: each row's topic, partition and offset, in row order,
    /// for the lake's accounting (empty for rows that need none).
    pub at: Vec<(Arc<str>, i32, i64)>,
}

/// Partitions the consumer group gave this daemon (`kafka.assignment =
/// group`), each with the offset it reads on from; sent before any record
/// read under the new assignment.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Assigned(pub Vec<(String, i32, i64)>);

/// Commit whatever is buffered now.
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<i64>, WriterError>")]
pub struct Flush;

/// The offsets this writer has taken in (committed or buffered).
#[derive(Debug, Message)]
#[rtype(result = "KafkaOffsets")]
pub struct GetPositions;

/// Tell `0` about every commit from now on (the consumer, for Kafka group
/// offsets; the query side, for the tail).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddCommitListener(pub actix::Recipient<crate::messages::consumer::Committed>);

/// Where to ask for a consumer restart when this writer rewinds to its last
/// snapshot after a failed commit.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetRestarter(pub actix::Recipient<crate::messages::consumer::RestartConsumer>);

/// Why a flush (a commit) failed; the reply to [`Flush`].
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("table {table}: {source}")]
    Lake {
        table: &'static str,
        source: Box<LakeError>,
    },
    #[error("flush task failed: {0}")]
    Join(String),
    #[error("writer config: {0}")]
    Config(String),
    #[error("commit failed on purpose (chaos.fail_commits)")]
    Chaos,
    /// Rows of a partition that moved between daemons of one consumer
    /// group were committed by its other owner while this commit was being
    /// written; the writer rewinds to the table and reads on from there.
    #[error(
        "table {table}: another owner committed rows of partitions {below:?} (below the offsets shown) meanwhile"
    )]
    Overlap {
        table: &'static str,
        below: std::collections::BTreeMap<(String, i32), i64>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_runs_while_offsets_follow_on_in_one_partition() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut spans = Vec::new();
        for (t, p, o) in [
            (&a, 0, 5),
            (&a, 0, 6),
            (&a, 0, 7),
            (&a, 1, 8),  // another partition
            (&a, 0, 8),  // back again: a new span, not a merge across
            (&a, 0, 10), // a hole
            (&b, 0, 11), // another topic
            (&b, 0, 12),
        ] {
            Span::push(&mut spans, t, p, o);
        }
        let got: Vec<_> = spans
            .iter()
            .map(|s| (&*s.topic, s.partition, s.first, s.next))
            .collect();
        assert_eq!(
            got,
            [
                ("a", 0, 5, 8),
                ("a", 1, 8, 9),
                ("a", 0, 8, 9),
                ("a", 0, 10, 11),
                ("b", 0, 11, 13),
            ]
        );
    }
}
