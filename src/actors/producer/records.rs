//! The producer's mailbox, read a record at a time.

use std::task::{Context, Poll};

use crate::lanes::{Envelope, LaneReceiver, MailboxStats, NoSuchTier};
use crate::messages::producer::{Batch, Outgoing, ProducerControl};

/// The lanes carry batches; the actor handles records. A batch taken off a
/// lane is handed out record by record before anything else is read, so a
/// record that makes the actor wait (librdkafka's queue full) holds back
/// the rest of its batch as it held back the lanes before. A control
/// message waits at most for the rest of one batch; a pause takes effect
/// after it.
///
/// Kept by the actor across restarts, with the batch in hand: a restart
/// drops the context's streams, not what they were reading.
pub struct Records {
    lanes: LaneReceiver<ProducerControl, Batch>,
    batch: std::vec::IntoIter<Outgoing>,
    tier: usize,
}

impl Records {
    pub fn new(lanes: LaneReceiver<ProducerControl, Batch>) -> Self {
        Self {
            lanes,
            batch: Vec::new().into_iter(),
            tier: 0,
        }
    }

    /// The next record of the batch in hand, else the next message off the
    /// lanes (control first, as [`LaneReceiver::poll_recv`] orders them).
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Envelope<ProducerControl, Outgoing>>> {
        loop {
            if let Some(data) = self.batch.next() {
                return Poll::Ready(Some(Envelope::Data {
                    tier: self.tier,
                    data,
                }));
            }
            match self.lanes.poll_recv(cx) {
                Poll::Ready(Some(Envelope::Data { tier, data })) => {
                    // An empty batch is read past.
                    self.batch = data.into_iter();
                    self.tier = tier;
                }
                Poll::Ready(Some(Envelope::Control(c))) => {
                    return Poll::Ready(Some(Envelope::Control(c)));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    pub fn pause(&mut self, tier: usize) -> Result<(), NoSuchTier> {
        self.lanes.pause(tier)
    }

    pub fn resume(&mut self, tier: usize) -> Result<(), NoSuchTier> {
        self.lanes.resume(tier)
    }

    pub fn stats(&self) -> MailboxStats {
        self.lanes.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instruments::Tier;
    use crate::messages::producer::{ProducerLanes, send_batch};
    use crate::model::DeadLetter;
    use futures::StreamExt;

    fn letter(n: u8) -> Outgoing {
        Outgoing::dead_letter(DeadLetter::new("X", "test", 0, format!("{n}"), vec![n]))
    }

    fn reason(env: &Envelope<ProducerControl, Outgoing>) -> String {
        match env {
            Envelope::Data { data, .. } => letter_reason(data),
            Envelope::Control(c) => format!("control {c:?}"),
        }
    }

    fn letter_reason(out: &Outgoing) -> String {
        match &out.record {
            crate::messages::producer::Record::DeadLetter(d) => d.reason.clone(),
            other => panic!("not a dead letter: {other:?}"),
        }
    }

    /// Batches come out record by record, in order; a control message sent
    /// meanwhile comes after the batch in hand and before the next one;
    /// empty batches are read past; the lane's counts are the records'.
    #[tokio::test]
    async fn batches_come_out_a_record_at_a_time() {
        let (tx, rx): (ProducerLanes, _) = crate::lanes::mailbox(&[16, 16]).unwrap();
        let mut records = Records::new(rx);
        send_batch(&tx, Tier::One, vec![letter(1), letter(2), letter(3)])
            .await
            .unwrap();
        send_batch(&tx, Tier::One, Vec::new()).await.unwrap();
        send_batch(&tx, Tier::One, vec![letter(4)]).await.unwrap();
        assert_eq!(records.stats().lanes[0].depth, 5, "3 + 1 for the empty + 1");
        let mut stream = futures::stream::poll_fn(|cx| records.poll_next(cx));
        let first = stream.next().await.unwrap();
        assert_eq!(reason(&first), "1");
        tx.send_control(ProducerControl::Pause(1)).unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(reason(&stream.next().await.unwrap()));
        }
        assert_eq!(got, ["2", "3", "control Pause(1)", "4"]);
        drop(tx);
        assert!(stream.next().await.is_none());
        drop(stream);
        let lane = &records.stats().lanes[0];
        assert_eq!((lane.sent, lane.received, lane.depth), (5, 5, 0));
    }

    /// A batch larger than its lane goes in pieces of the lane's size, each
    /// waiting for room, so the lane's counts are its records; a closed
    /// lane hands back every record not sent, in order.
    #[tokio::test]
    async fn a_batch_larger_than_its_lane_goes_in_pieces() {
        let (tx, rx): (ProducerLanes, _) = crate::lanes::mailbox(&[3]).unwrap();
        let mut records = Records::new(rx);
        let batch: Vec<_> = (1..=7).map(letter).collect();
        let sender = tokio::spawn({
            let tx = tx.clone();
            async move { send_batch(&tx, Tier::One, batch).await }
        });
        let mut stream = futures::stream::poll_fn(|cx| records.poll_next(cx));
        let mut got = Vec::new();
        for _ in 0..7 {
            got.push(reason(&stream.next().await.unwrap()));
        }
        assert_eq!(got, ["1", "2", "3", "4", "5", "6", "7"]);
        sender.await.unwrap().unwrap();
        drop(stream);
        let lane = &records.stats().lanes[0];
        assert_eq!((lane.sent, lane.received, lane.depth), (7, 7, 0));
        drop(records);
        let unsent = send_batch(&tx, Tier::One, (1..=5).map(letter).collect())
            .await
            .unwrap_err()
            .into_inner();
        let unsent: Vec<_> = unsent.iter().map(letter_reason).collect();
        assert_eq!(unsent, ["1", "2", "3", "4", "5"]);
    }
}
