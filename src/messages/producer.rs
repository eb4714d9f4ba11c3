//! Messages to the `ProducerActor`. It reads a two-lane mailbox
//! ([`crate::lanes`]): [`ProducerControl`] on the control lane, always served
//! first, and [`Outgoing`] records on one bounded data lane per tier.

use tokio::sync::oneshot;

use crate::degrade::level::Level;
use crate::instruments::Tier;
use crate::lanes::{LaneSender, SendError};
use crate::model::{DeadLetter, TradeV2};

/// A record for Kafka.
#[derive(Debug, Clone)]
pub enum Record {
    Trade(Box<TradeV2>),
    DeadLetter(Box<DeadLetter>),
}

impl Record {
    pub fn exchange(&self) -> &str {
        match self {
            Record::Trade(t) => &t.exchange,
            Record::DeadLetter(d) => &d.exchange,
        }
    }
}

/// A record on a data lane, with the tier that chose the lane. Dead letters
/// travel on the tier-1 lane: they are never shed.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub record: Record,
    pub tier: Tier,
}

impl Outgoing {
    pub fn trade(t: TradeV2, tier: Tier) -> Self {
        Self {
            record: Record::Trade(Box::new(t)),
            tier,
        }
    }

    pub fn dead_letter(d: DeadLetter) -> Self {
        Self {
            record: Record::DeadLetter(Box::new(d)),
            tier: Tier::One,
        }
    }
}

/// Commands on the producer's control lane.
#[derive(Debug)]
pub enum ProducerControl {
    /// The degradation supervisor's decision; changes what each tier gets.
    SetLevel(Level),
    /// Stop reading a data lane (0-based tier index); its senders block once
    /// it is full.
    Pause(usize),
    Resume(usize),
    /// Deliver everything handed to librdkafka; the reply says whether it
    /// all went out within the timeout.
    Flush(oneshot::Sender<Result<(), String>>),
}

/// What a data lane carries: records of one tier, in the order they go
/// out. A feed sends the trades of a run of frames as one batch, so the
/// lane's costs (a queue slot, a wake-up, the actor's dispatch) are paid a
/// batch at a time; on the lane a batch weighs its length, so the lanes'
/// bounds and depths still count records.
pub type Batch = Vec<Outgoing>;

/// The sending half of the producer's mailbox, cloned into every feed.
pub type ProducerLanes = LaneSender<ProducerControl, Batch>;

/// Sends `batch` on the lane of `tier` (all its records are of that tier,
/// or dead letters on tier 1), waiting while the lane has no room for it.
/// A batch larger than the lane goes in pieces of the lane's size, one
/// after another, so that each piece weighs what it holds and the lane's
/// counts stay in records. On an error, what was not sent comes back.
pub async fn send_batch(
    lanes: &ProducerLanes,
    tier: Tier,
    mut batch: Batch,
) -> Result<(), SendError<Batch>> {
    let lane = tier.index();
    let room = lanes.capacity(lane).unwrap_or(usize::MAX).max(1);
    while batch.len() > room {
        let rest = batch.split_off(room);
        let piece = std::mem::replace(&mut batch, rest);
        if let Err(e) = lanes.send_weighted(lane, piece, room).await {
            return Err(with_rest(e, batch));
        }
    }
    let weight = batch.len();
    lanes.send_weighted(lane, batch, weight).await
}

/// `e`'s records followed by `rest`, in their order.
fn with_rest(e: SendError<Batch>, rest: Batch) -> SendError<Batch> {
    let append = move |mut unsent: Batch| {
        unsent.extend(rest);
        unsent
    };
    match e {
        SendError::Closed(b) => SendError::Closed(append(b)),
        SendError::NoSuchTier(mut e) => {
            e.data = append(std::mem::take(&mut e.data));
            SendError::NoSuchTier(e)
        }
    }
}
