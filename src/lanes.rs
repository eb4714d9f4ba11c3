//! A two-kind mailbox for the daemon's data actors: one unbounded control
//! lane served before N bounded, prioritised data lanes.
//!
//! actix has no priority mailbox, so a `Stop` or `Pause` queued behind
//! thousands of trades would wait for all of them, and a slow actor could only
//! push back by letting its unbounded actix mailbox grow. This module follows
//! the shape of Quickwit's actor framework (quickwit-actors): commands travel
//! on a lane that is always read first, while data lanes are bounded so a full
//! lane blocks its senders (backpressure) instead of growing memory.
//!
//! A data message takes as many of its lane's slots as its weight
//! ([`LaneSender::send_weighted`]; 1 for [`LaneSender::send_data`]), so a
//! lane that carries batches is bounded by what they hold, and its depth,
//! `sent` and `received` count the batches' records, not the batches.
//!
//! # Tiers
//! Data lanes are addressed by a **0-based tier index**: index `0` is tier 1,
//! the highest priority; index `1` is tier 2, and so on. The same index is used
//! by [`LaneSender::send_data`], [`Envelope::Data`], [`LaneReceiver::pause`]
//! and [`LaneStats::tier`]; add 1 when a human-facing (1-based) label is
//! wanted. An index outside the mailbox is an error, never a panic.
//!
//! # Receive order
//! [`LaneReceiver::recv`] returns, in this order of preference: a control
//! message; else data from the lowest-index lane that is not paused and not
//! empty. Within a lane, messages are FIFO. A paused lane keeps its data queued
//! and, once full, blocks its senders until it is resumed and read.
//!
//! # Closing
//! `recv` returns `None` once no sender is left (or [`LaneReceiver::close`] was
//! called) and the control lane and every *unpaused* data lane are drained.
//! Data still queued on a paused lane is not lost: resume the lane and call
//! `recv` again to drain it (its depth stays visible in the stats).

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError};
use tokio::time::Instant;

/// Largest capacity a data lane may have (tokio's semaphore limit).
pub const MAX_LANE_CAPACITY: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// A message as seen by the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope<C, D> {
    /// A control message; always received before any queued data.
    Control(C),
    /// A data message from the lane at `tier` (0-based: 0 is tier 1).
    Data { tier: usize, data: D },
}

/// A data-lane tier index that the mailbox does not have.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error(
    "no data lane at tier index {tier}: the mailbox has {tiers} data lanes (indexes 0..{tiers})"
)]
pub struct NoSuchTier {
    pub tier: usize,
    pub tiers: usize,
}

/// Why a mailbox could not be built.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum MailboxError {
    #[error("data lane at tier index {tier} has capacity 0; a bounded lane needs at least 1 slot")]
    ZeroCapacity { tier: usize },
    #[error("data lane at tier index {tier} has capacity {capacity}, above the maximum {max}")]
    CapacityTooLarge {
        tier: usize,
        capacity: usize,
        max: usize,
    },
}

/// A failed [`LaneSender::send_data`] or [`LaneSender::send_control`]; the
/// message is handed back so the caller can retry, reroute or log it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SendError<T> {
    #[error("mailbox closed: the receiver was closed or dropped")]
    Closed(T),
    #[error(transparent)]
    NoSuchTier(NoSuchTierWith<T>),
}

/// A failed [`LaneSender::try_send_data`]; the message is handed back.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TrySendError<T> {
    #[error("data lane is full")]
    Full(T),
    #[error("mailbox closed: the receiver was closed or dropped")]
    Closed(T),
    #[error(transparent)]
    NoSuchTier(NoSuchTierWith<T>),
}

/// [`NoSuchTier`] plus the message that could not be sent.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{error}")]
pub struct NoSuchTierWith<T> {
    pub error: NoSuchTier,
    pub data: T,
}

impl<T> SendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            Self::Closed(t) => t,
            Self::NoSuchTier(e) => e.data,
        }
    }
}

impl<T> TrySendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(t) | Self::Closed(t) => t,
            Self::NoSuchTier(e) => e.data,
        }
    }
}

/// Point-in-time counters of one data lane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaneStats {
    /// 0-based tier index (0 is tier 1, the highest priority).
    pub tier: usize,
    pub capacity: usize,
    /// Slots in use: the weights of the messages queued plus of sends that
    /// already hold their slots and are completing. Never above `capacity`.
    /// Messages left when the receiver is dropped are discarded, so depth
    /// drops to 0 then.
    pub depth: u64,
    pub paused: bool,
    /// Slots' worth of messages accepted by the lane since creation (each
    /// message counts its weight).
    pub sent: u64,
    /// Slots' worth of messages handed out by `recv` since creation.
    pub received: u64,
    /// Total time senders spent waiting for room on this lane, in
    /// nanoseconds (a monotonic counter). A wait is added when it ends, so
    /// see `blocked_senders` for senders still waiting.
    pub blocked_ns: u64,
    /// Senders waiting for room right now.
    pub blocked_senders: u64,
}

/// Point-in-time counters of a whole mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MailboxStats {
    /// The receiver was closed or dropped: further sends fail.
    pub closed: bool,
    /// Control messages sent and not yet returned by `recv`.
    pub control_depth: u64,
    pub control_sent: u64,
    pub control_received: u64,
    /// One entry per data lane, in tier order.
    pub lanes: Vec<LaneStats>,
}

// Counters are kept outside the channels so both halves can snapshot them
// without locking and so depth stays exact even while messages move.
struct LaneCounters {
    capacity: usize,
    /// The lane's free slots. A message takes as many as its weight (a
    /// batch of trades weighs its length), so the bound is on what the lane
    /// holds, not on how it is packed; the receiver gives them back as it
    /// takes each message out.
    room: Semaphore,
    paused: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    blocked_ns: AtomicU64,
    blocked_senders: AtomicU64,
}

struct Shared {
    closed: AtomicBool,
    /// The receiver was dropped: what the lanes held is gone with it.
    dropped: AtomicBool,
    control_sent: AtomicU64,
    control_received: AtomicU64,
    lanes: Box<[LaneCounters]>,
}

/// Reads `(sent, received)` so that `received <= sent` always holds.
///
/// `sent` is bumped before the message becomes visible to the receiver and
/// `received` (Release) after it was taken, so loading `received` (Acquire)
/// first can never observe a receive whose send it misses.
fn sent_received(sent: &AtomicU64, received: &AtomicU64) -> (u64, u64) {
    let received = received.load(Ordering::Acquire);
    let sent = sent.load(Ordering::Acquire);
    (sent, received)
}

/// Slots in use on a lane, from its semaphore rather than `sent -
/// received`: the slots are given back before `received` is bumped, so the
/// counter difference could briefly read above the capacity.
fn slots_in_use(lane: &LaneCounters) -> u64 {
    u64::try_from(lane.capacity.saturating_sub(lane.room.available_permits())).unwrap_or(u64::MAX)
}

impl Shared {
    fn snapshot(&self) -> MailboxStats {
        let dropped = self.dropped.load(Ordering::Relaxed);
        let (control_sent, control_received) =
            sent_received(&self.control_sent, &self.control_received);
        let lanes = self
            .lanes
            .iter()
            .enumerate()
            .map(|(tier, lane)| {
                let (sent, received) = sent_received(&lane.sent, &lane.received);
                LaneStats {
                    tier,
                    capacity: lane.capacity,
                    depth: if dropped { 0 } else { slots_in_use(lane) },
                    paused: lane.paused.load(Ordering::Relaxed),
                    sent,
                    received,
                    blocked_ns: lane.blocked_ns.load(Ordering::Relaxed),
                    blocked_senders: lane.blocked_senders.load(Ordering::Relaxed),
                }
            })
            .collect();
        MailboxStats {
            closed: self.closed.load(Ordering::Relaxed),
            control_depth: control_sent.saturating_sub(control_received),
            control_sent,
            control_received,
            lanes,
        }
    }

    fn no_such_tier(&self, tier: usize) -> NoSuchTier {
        NoSuchTier {
            tier,
            tiers: self.lanes.len(),
        }
    }
}

/// Accounts a sender's wait on a full lane when dropped, so the time counts
/// whether the send completes, fails on close, or its future is cancelled
/// (e.g. by a timeout in the caller).
struct BlockedTimer<'a> {
    lane: &'a LaneCounters,
    start: Instant,
}

impl<'a> BlockedTimer<'a> {
    fn start(lane: &'a LaneCounters) -> Self {
        lane.blocked_senders.fetch_add(1, Ordering::Relaxed);
        Self {
            lane,
            // tokio's clock, so tests under paused virtual time see the wait.
            start: Instant::now(),
        }
    }
}

impl Drop for BlockedTimer<'_> {
    fn drop(&mut self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.lane.blocked_ns.fetch_add(ns, Ordering::Relaxed);
        self.lane.blocked_senders.fetch_sub(1, Ordering::Relaxed);
    }
}

struct SenderChannels<C, D> {
    control: mpsc::UnboundedSender<C>,
    /// Each message with its weight, which the receiver gives back as room.
    /// Unbounded: the lane's semaphore is its bound.
    data: Box<[mpsc::UnboundedSender<(D, u32)>]>,
}

/// The two halves returned by [`mailbox`].
pub type Mailbox<C, D> = (LaneSender<C, D>, LaneReceiver<C, D>);

/// Build a mailbox with one data lane per entry of `data_capacities`, in tier
/// order (entry 0 is tier 1, the highest priority), plus the control lane.
///
/// Capacities usually come from configuration, so a zero or oversized one is
/// reported instead of panicking inside tokio.
pub fn mailbox<C, D>(data_capacities: &[usize]) -> Result<Mailbox<C, D>, MailboxError> {
    for (tier, &capacity) in data_capacities.iter().enumerate() {
        if capacity == 0 {
            return Err(MailboxError::ZeroCapacity { tier });
        }
        if capacity > MAX_LANE_CAPACITY {
            return Err(MailboxError::CapacityTooLarge {
                tier,
                capacity,
                max: MAX_LANE_CAPACITY,
            });
        }
    }
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (data_tx, data_rx): (Vec<_>, Vec<_>) = data_capacities
        .iter()
        .map(|_| mpsc::unbounded_channel())
        .unzip();
    let shared = Arc::new(Shared {
        closed: AtomicBool::new(false),
        dropped: AtomicBool::new(false),
        control_sent: AtomicU64::new(0),
        control_received: AtomicU64::new(0),
        lanes: data_capacities
            .iter()
            .map(|&capacity| LaneCounters {
                capacity,
                room: Semaphore::new(capacity),
                paused: AtomicBool::new(false),
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
                blocked_ns: AtomicU64::new(0),
                blocked_senders: AtomicU64::new(0),
            })
            .collect(),
    });
    let sender = LaneSender {
        channels: Arc::new(SenderChannels {
            control: control_tx,
            data: data_tx.into_boxed_slice(),
        }),
        shared: Arc::clone(&shared),
    };
    let receiver = LaneReceiver {
        control: control_rx,
        data: data_rx.into_boxed_slice(),
        shared,
    };
    Ok((sender, receiver))
}

/// The sending half; cheap to clone (one `Arc`). The mailbox closes for the
/// receiver when the last clone is dropped.
pub struct LaneSender<C, D> {
    channels: Arc<SenderChannels<C, D>>,
    shared: Arc<Shared>,
}

// Manual impl: deriving would wrongly require `C: Clone, D: Clone`.
impl<C, D> Clone for LaneSender<C, D> {
    fn clone(&self) -> Self {
        Self {
            channels: Arc::clone(&self.channels),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C, D> std::fmt::Debug for LaneSender<C, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneSender")
            .field("tiers", &self.tiers())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<C, D> LaneSender<C, D> {
    /// Queue a control message. The control lane is unbounded so that a
    /// command can always get through, even to an actor whose data lanes are
    /// full or paused; it never blocks.
    pub fn send_control(&self, control: C) -> Result<(), SendError<C>> {
        // Counted before the send so a concurrent snapshot never sees more
        // received than sent; undone if the receiver is gone.
        self.shared.control_sent.fetch_add(1, Ordering::Relaxed);
        self.channels.control.send(control).map_err(|e| {
            self.shared.control_sent.fetch_sub(1, Ordering::Relaxed);
            SendError::Closed(e.0)
        })
    }

    /// Queue a data message on lane `tier` (0-based: 0 is tier 1), waiting
    /// while the lane is full. The wait is added to the lane's `blocked_ns`.
    ///
    /// Cancel safe in the sense that dropping the future before it completes
    /// never enqueues the message.
    pub async fn send_data(&self, tier: usize, data: D) -> Result<(), SendError<D>> {
        self.send_weighted(tier, data, 1).await
    }

    /// [`send_data`](Self::send_data) for a message that takes `weight`
    /// slots (a batch, its length): it waits until the lane has that much
    /// room. A weight above the lane's capacity takes the whole lane, and
    /// 0 counts as 1.
    pub async fn send_weighted(
        &self,
        tier: usize,
        data: D,
        weight: usize,
    ) -> Result<(), SendError<D>> {
        let (Some(tx), Some(lane)) = (self.channels.data.get(tier), self.shared.lanes.get(tier))
        else {
            return Err(SendError::NoSuchTier(NoSuchTierWith {
                error: self.shared.no_such_tier(tier),
                data,
            }));
        };
        let weight = slots_for(lane, weight);
        // Try first so only real waits touch the clock and the blocked gauge.
        let permit = match lane.room.try_acquire_many(weight) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(SendError::Closed(data)),
            Err(TryAcquireError::NoPermits) => {
                let _timer = BlockedTimer::start(lane);
                match lane.room.acquire_many(weight).await {
                    Ok(permit) => permit,
                    Err(_) => return Err(SendError::Closed(data)),
                }
            }
        };
        self.enqueue(tx, lane, permit, data, weight)
            .map_err(SendError::Closed)
    }

    /// Queue a data message on lane `tier` if it has room right now.
    pub fn try_send_data(&self, tier: usize, data: D) -> Result<(), TrySendError<D>> {
        let (Some(tx), Some(lane)) = (self.channels.data.get(tier), self.shared.lanes.get(tier))
        else {
            return Err(TrySendError::NoSuchTier(NoSuchTierWith {
                error: self.shared.no_such_tier(tier),
                data,
            }));
        };
        match lane.room.try_acquire_many(1) {
            Ok(permit) => self
                .enqueue(tx, lane, permit, data, 1)
                .map_err(TrySendError::Closed),
            Err(TryAcquireError::NoPermits) => Err(TrySendError::Full(data)),
            Err(TryAcquireError::Closed) => Err(TrySendError::Closed(data)),
        }
    }

    /// Puts a message whose room is taken on its lane; the receiver gives
    /// the room back when it takes the message out.
    fn enqueue(
        &self,
        tx: &mpsc::UnboundedSender<(D, u32)>,
        lane: &LaneCounters,
        permit: SemaphorePermit<'_>,
        data: D,
        weight: u32,
    ) -> Result<(), D> {
        // Counted before the message becomes visible to the receiver, so a
        // snapshot never sees more received than sent; undone if the
        // receiver is gone (its drop closed the room, so this is a race
        // with that drop only).
        lane.sent.fetch_add(u64::from(weight), Ordering::Relaxed);
        permit.forget();
        tx.send((data, weight)).map_err(|e| {
            lane.sent.fetch_sub(u64::from(weight), Ordering::Relaxed);
            e.0.0
        })
    }

    /// Number of data lanes.
    pub fn tiers(&self) -> usize {
        self.shared.lanes.len()
    }

    /// The most slots lane `tier` holds, if there is such a lane.
    pub fn capacity(&self, tier: usize) -> Option<usize> {
        self.shared.lanes.get(tier).map(|l| l.capacity)
    }

    /// True once the receiver was closed or dropped.
    pub fn is_closed(&self) -> bool {
        self.channels.control.is_closed()
    }

    pub fn stats(&self) -> MailboxStats {
        self.shared.snapshot()
    }
}

/// The receiving half, owned by the actor (or the loop that drives it).
pub struct LaneReceiver<C, D> {
    control: mpsc::UnboundedReceiver<C>,
    data: Box<[mpsc::UnboundedReceiver<(D, u32)>]>,
    shared: Arc<Shared>,
}

impl<C, D> std::fmt::Debug for LaneReceiver<C, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneReceiver")
            .field("tiers", &self.tiers())
            .finish()
    }
}

impl<C, D> LaneReceiver<C, D> {
    /// Next message: control first, then data by tier among unpaused lanes.
    /// `None` once every sender is gone (or [`close`](Self::close) was called)
    /// and the control lane and all unpaused data lanes are empty.
    ///
    /// Cancel safe: dropping the future never loses a message, so it can sit
    /// in a `tokio::select!` next to timers or shutdown signals.
    pub async fn recv(&mut self) -> Option<Envelope<C, D>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Poll form of [`recv`](Self::recv), for wrapping the receiver in a
    /// `Stream` (e.g. `futures::stream::poll_fn`) or a hand-written future.
    ///
    /// A `select! { biased; }` cannot be written over a lane count chosen at
    /// run time, so this polls the lanes in priority order by hand. Each
    /// pending lane registers the waker, so an idle mailbox parks the task
    /// instead of spinning. Paused lanes are skipped entirely: they cannot be
    /// resumed while the receiver is borrowed here, so there is nothing to
    /// wait for on them.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Envelope<C, D>>> {
        let mut may_yield_more = false;
        match self.control.poll_recv(cx) {
            Poll::Ready(Some(control)) => {
                self.shared.control_received.fetch_add(1, Ordering::Release);
                return Poll::Ready(Some(Envelope::Control(control)));
            }
            Poll::Ready(None) => {}
            Poll::Pending => may_yield_more = true,
        }
        for ((tier, rx), lane) in self
            .data
            .iter_mut()
            .enumerate()
            .zip(self.shared.lanes.iter())
        {
            if lane.paused.load(Ordering::Relaxed) {
                continue;
            }
            match rx.poll_recv(cx) {
                Poll::Ready(Some((data, weight))) => {
                    lane.room.add_permits(weight as usize);
                    lane.received
                        .fetch_add(u64::from(weight), Ordering::Release);
                    return Poll::Ready(Some(Envelope::Data { tier, data }));
                }
                Poll::Ready(None) => {}
                Poll::Pending => may_yield_more = true,
            }
        }
        if may_yield_more {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    }

    /// Stop reading lane `tier`. Its messages stay queued in order; once it is
    /// full its senders wait, which is how an actor pushes back on one class
    /// of traffic while still taking control messages and other tiers.
    pub fn pause(&mut self, tier: usize) -> Result<(), NoSuchTier> {
        self.set_paused(tier, true)
    }

    /// Read lane `tier` again, from its oldest queued message.
    pub fn resume(&mut self, tier: usize) -> Result<(), NoSuchTier> {
        self.set_paused(tier, false)
    }

    pub fn is_paused(&self, tier: usize) -> Result<bool, NoSuchTier> {
        self.shared
            .lanes
            .get(tier)
            .map(|lane| lane.paused.load(Ordering::Relaxed))
            .ok_or_else(|| self.shared.no_such_tier(tier))
    }

    fn set_paused(&mut self, tier: usize, paused: bool) -> Result<(), NoSuchTier> {
        let lane = self
            .shared
            .lanes
            .get(tier)
            .ok_or_else(|| self.shared.no_such_tier(tier))?;
        // Only the receiver writes this flag (behind `&mut self`); it is atomic
        // so that senders' stats snapshots can read it.
        let was = lane.paused.swap(paused, Ordering::Relaxed);
        if was != paused {
            tracing::debug!(tier, paused, "mailbox lane pause state changed");
        }
        Ok(())
    }

    /// Refuse new messages on every lane. Already queued messages can still be
    /// received (paused lanes only after a resume); senders waiting on a full
    /// lane get their message back as [`SendError::Closed`].
    pub fn close(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.control.close();
        for (rx, lane) in self.data.iter_mut().zip(self.shared.lanes.iter()) {
            rx.close();
            // Wakes the senders waiting for room; they get their message back.
            lane.room.close();
        }
        tracing::debug!("mailbox closed by its receiver");
    }

    /// Number of data lanes.
    pub fn tiers(&self) -> usize {
        self.shared.lanes.len()
    }

    pub fn stats(&self) -> MailboxStats {
        self.shared.snapshot()
    }
}

impl<C, D> Drop for LaneReceiver<C, D> {
    fn drop(&mut self) {
        // The channels close themselves, but a sender waiting for room
        // waits on the semaphore: closing it gives the sender its message
        // back. What the lanes held is discarded, so their depth reads 0.
        self.shared.dropped.store(true, Ordering::Relaxed);
        self.shared.closed.store(true, Ordering::Relaxed);
        for lane in self.shared.lanes.iter() {
            lane.room.close();
        }
    }
}

/// The slots a message of `weight` takes on `lane`: at least 1, at most
/// the lane (so that a message larger than the lane still goes, alone).
fn slots_for(lane: &LaneCounters, weight: usize) -> u32 {
    let slots = weight.clamp(1, lane.capacity);
    u32::try_from(slots).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ctl {
        Pause(usize),
        Stop,
    }

    type Env = Envelope<Ctl, u32>;

    fn data(tier: usize, data: u32) -> Env {
        Envelope::Data { tier, data }
    }

    fn new_mailbox(caps: &[usize]) -> (LaneSender<Ctl, u32>, LaneReceiver<Ctl, u32>) {
        mailbox(caps).expect("valid capacities")
    }

    /// `None` if `recv` is still waiting after `ms` of (virtual) time.
    /// Paused time only jumps ahead once every task is idle, so a `recv` that
    /// spun instead of parking would hang this helper rather than time out.
    async fn recv_within(rx: &mut LaneReceiver<Ctl, u32>, ms: u64) -> Option<Option<Env>> {
        tokio::time::timeout(Duration::from_millis(ms), rx.recv())
            .await
            .ok()
    }

    fn lane(rx: &LaneReceiver<Ctl, u32>, tier: usize) -> LaneStats {
        rx.stats().lanes[tier].clone()
    }

    #[tokio::test(start_paused = true)]
    async fn control_overtakes_queued_data() {
        let (tx, mut rx) = new_mailbox(&[200, 200, 200]);
        for i in 0..100 {
            tx.send_data(i % 3, i as u32).await.expect("send");
        }
        tx.send_control(Ctl::Stop).expect("send control");
        assert_eq!(rx.recv().await, Some(Envelope::Control(Ctl::Stop)));
        assert_eq!(rx.stats().control_depth, 0);
        let total: u64 = rx.stats().lanes.iter().map(|l| l.depth).sum();
        assert_eq!(total, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn tiers_are_served_in_priority_order_fifo_within_tier() {
        let (tx, mut rx) = new_mailbox(&[8, 8, 8]);
        for tier in [2, 1, 0] {
            for seq in 0..3 {
                tx.send_data(tier, (tier as u32) * 10 + seq)
                    .await
                    .expect("send");
            }
        }
        let mut got = Vec::new();
        for _ in 0..9 {
            got.push(rx.recv().await.expect("message"));
        }
        let want: Vec<Env> = [0usize, 1, 2]
            .into_iter()
            .flat_map(|tier| (0..3).map(move |seq| data(tier, tier as u32 * 10 + seq)))
            .collect();
        assert_eq!(got, want);
        assert_eq!(recv_within(&mut rx, 50).await, None, "nothing left");
    }

    #[tokio::test(start_paused = true)]
    async fn full_lane_blocks_sender_and_records_blocked_time() {
        let (tx, mut rx) = new_mailbox(&[4, 2, 4]);
        tx.send_data(0, 100).await.expect("immediate send");
        tx.send_data(1, 1).await.expect("send 1");
        tx.send_data(1, 2).await.expect("send 2");
        assert_eq!(lane(&rx, 1).blocked_ns, 0, "immediate sends do not count");

        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send_data(1, 3).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!blocked.is_finished(), "third send must wait for room");
        assert_eq!(lane(&rx, 1).blocked_senders, 1);
        assert_eq!(lane(&rx, 1).depth, 2);

        // Tier 0 is read first and frees nothing on tier 1.
        assert_eq!(rx.recv().await, Some(data(0, 100)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!blocked.is_finished());

        assert_eq!(rx.recv().await, Some(data(1, 1)));
        tokio::time::timeout(Duration::from_millis(10), blocked)
            .await
            .expect("send completes once there is room")
            .expect("task")
            .expect("send ok");

        let stats = rx.stats();
        assert!(
            stats.lanes[1].blocked_ns >= 110_000_000,
            "blocked_ns {}",
            stats.lanes[1].blocked_ns
        );
        assert_eq!(stats.lanes[1].blocked_senders, 0);
        assert_eq!(stats.lanes[0].blocked_ns, 0);
        assert_eq!(stats.lanes[2].blocked_ns, 0);
        assert_eq!(rx.recv().await, Some(data(1, 2)));
        assert_eq!(rx.recv().await, Some(data(1, 3)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_its_weight_in_slots() {
        let (tx, mut rx) = new_mailbox(&[10]);
        tx.send_weighted(0, 1, 4).await.expect("room");
        tx.send_weighted(0, 2, 4).await.expect("room");
        assert_eq!((lane(&rx, 0).depth, lane(&rx, 0).sent), (8, 8));
        assert_eq!(
            tx.try_send_data(0, 9),
            Ok(()),
            "one slot of weight 1 still fits"
        );
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send_weighted(0, 3, 4).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished(), "4 slots wanted, 1 free");
        assert_eq!(lane(&rx, 0).blocked_senders, 1);

        assert_eq!(rx.recv().await, Some(data(0, 1)));
        // The freed slots go straight to the waiting batch.
        let after = lane(&rx, 0);
        assert_eq!((after.received, after.depth), (4, 9));
        tokio::time::timeout(Duration::from_millis(10), blocked)
            .await
            .expect("room for the batch once one was read")
            .expect("task")
            .expect("send ok");
        assert_eq!(lane(&rx, 0).depth, 9);
        for want in [2, 9, 3] {
            assert_eq!(rx.recv().await, Some(data(0, want)));
        }
        let end = lane(&rx, 0);
        assert_eq!((end.depth, end.sent, end.received), (0, 13, 13));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_larger_than_its_lane_goes_alone() {
        let (tx, mut rx) = new_mailbox(&[4]);
        tx.send_weighted(0, 1, 10)
            .await
            .expect("an empty lane takes it");
        assert_eq!(lane(&rx, 0).depth, 4, "it fills the lane, no more");
        assert_eq!(tx.try_send_data(0, 2), Err(TrySendError::Full(2)));
        assert_eq!(rx.recv().await, Some(data(0, 1)));
        tx.send_weighted(0, 0, 0).await.expect("room");
        assert_eq!(lane(&rx, 0).depth, 1, "weight 0 counts as 1");
        assert_eq!(rx.recv().await, Some(data(0, 0)));
        let end = lane(&rx, 0);
        assert_eq!((end.depth, end.sent, end.received), (0, 5, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn paused_lane_holds_data_until_resumed() {
        let (tx, mut rx) = new_mailbox(&[8, 8, 8]);
        rx.pause(2).expect("tier exists");
        assert_eq!(rx.is_paused(2), Ok(true));
        for i in 0..5 {
            tx.send_data(2, i).await.expect("send while paused");
        }
        tx.send_data(0, 42).await.expect("send");
        tx.send_control(Ctl::Pause(2)).expect("send control");

        assert_eq!(rx.recv().await, Some(Envelope::Control(Ctl::Pause(2))));
        assert_eq!(rx.recv().await, Some(data(0, 42)));
        assert_eq!(
            recv_within(&mut rx, 100).await,
            None,
            "paused lane is not read"
        );
        let before = lane(&rx, 2);
        assert_eq!((before.depth, before.sent, before.received), (5, 5, 0));
        assert!(before.paused);
        assert!(tx.stats().lanes[2].paused, "sender sees the pause too");

        rx.resume(2).expect("tier exists");
        for i in 0..5 {
            assert_eq!(rx.recv().await, Some(data(2, i)));
        }
        let after = lane(&rx, 2);
        assert_eq!((after.depth, after.sent, after.received), (0, 5, 5));
        assert!(!after.paused);
    }

    #[tokio::test(start_paused = true)]
    async fn paused_full_lane_pushes_back_until_resumed_and_read() {
        let (tx, mut rx) = new_mailbox(&[4, 4, 2]);
        rx.pause(2).expect("tier exists");
        tx.send_data(2, 0).await.expect("send");
        tx.send_data(2, 1).await.expect("send");
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send_data(2, 2).await }
        });
        assert_eq!(recv_within(&mut rx, 100).await, None);
        assert!(!blocked.is_finished(), "full paused lane pushes back");

        rx.resume(2).expect("tier exists");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished(), "resume alone frees no room");

        assert_eq!(rx.recv().await, Some(data(2, 0)));
        tokio::time::timeout(Duration::from_millis(10), blocked)
            .await
            .expect("send completes after a read")
            .expect("task")
            .expect("send ok");
        assert_eq!(rx.recv().await, Some(data(2, 1)));
        assert_eq!(rx.recv().await, Some(data(2, 2)));
        assert!(lane(&rx, 2).blocked_ns >= 150_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_senders_drains_then_returns_none() {
        let (tx, mut rx) = new_mailbox(&[4, 4]);
        let tx2 = tx.clone();
        tx.send_data(1, 1).await.expect("send");
        tx2.send_data(0, 0).await.expect("send");
        tx.send_control(Ctl::Stop).expect("send control");
        drop(tx);
        assert_eq!(rx.recv().await, Some(Envelope::Control(Ctl::Stop)));
        assert_eq!(rx.recv().await, Some(data(0, 0)));
        assert_eq!(recv_within(&mut rx, 50).await, Some(Some(data(1, 1))));
        assert_eq!(recv_within(&mut rx, 50).await, None, "a clone still lives");
        tx2.send_data(1, 2).await.expect("send");
        tx2.send_data(0, 3).await.expect("send");
        drop(tx2);
        assert_eq!(rx.recv().await, Some(data(0, 3)), "queued data drains");
        assert_eq!(rx.recv().await, Some(data(1, 2)));
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.recv().await, None, "stays closed");
    }

    #[tokio::test(start_paused = true)]
    async fn data_on_a_paused_lane_survives_close_and_drains_after_resume() {
        let (tx, mut rx) = new_mailbox(&[4, 4]);
        rx.pause(1).expect("tier exists");
        tx.send_data(1, 7).await.expect("send");
        drop(tx);
        // Nothing can ever resume the lane from inside recv, so waiting on it
        // would hang the actor; recv ends and the data stays queued.
        assert_eq!(rx.recv().await, None);
        assert_eq!(lane(&rx, 1).depth, 1);
        rx.resume(1).expect("tier exists");
        assert_eq!(rx.recv().await, Some(data(1, 7)));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn try_send_on_full_lane_returns_the_item() {
        let (tx, mut rx) = new_mailbox(&[1]);
        tx.try_send_data(0, 1).expect("room");
        assert_eq!(tx.try_send_data(0, 2), Err(TrySendError::Full(2)));
        assert_eq!(lane(&rx, 0).blocked_ns, 0, "try_send never blocks");
        assert_eq!(rx.recv().await, Some(data(0, 1)));
        tx.try_send_data(0, 3).expect("room again");
    }

    #[tokio::test(start_paused = true)]
    async fn sending_to_a_dropped_receiver_returns_the_item() {
        let (tx, rx) = new_mailbox(&[1]);
        drop(rx);
        assert!(tx.is_closed());
        assert!(tx.stats().closed);
        assert_eq!(tx.send_data(0, 5).await, Err(SendError::Closed(5)));
        assert_eq!(tx.try_send_data(0, 6), Err(TrySendError::Closed(6)));
        assert_eq!(
            tx.send_control(Ctl::Stop).map_err(SendError::into_inner),
            Err(Ctl::Stop)
        );
        let stats = tx.stats();
        assert_eq!((stats.control_sent, stats.control_depth), (0, 0));
        assert_eq!(stats.lanes[0].sent, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn close_refuses_new_messages_wakes_blocked_senders_and_drains() {
        let (tx, mut rx) = new_mailbox(&[1]);
        tx.send_data(0, 1).await.expect("send");
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send_data(0, 2).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        rx.close();
        let res = tokio::time::timeout(Duration::from_millis(10), blocked)
            .await
            .expect("close wakes the blocked sender")
            .expect("task");
        assert_eq!(res, Err(SendError::Closed(2)));
        assert!(lane(&rx, 0).blocked_ns >= 20_000_000);
        assert_eq!(lane(&rx, 0).blocked_senders, 0);
        assert_eq!(
            tx.send_control(Ctl::Stop),
            Err(SendError::Closed(Ctl::Stop))
        );
        assert_eq!(
            rx.recv().await,
            Some(data(0, 1)),
            "queued data survives close"
        );
        assert_eq!(rx.recv().await, None, "closed even though a sender lives");
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_blocked_send_still_counts_and_enqueues_nothing() {
        let (tx, rx) = new_mailbox(&[1]);
        tx.send_data(0, 1).await.expect("send");
        let res = tokio::time::timeout(Duration::from_millis(30), tx.send_data(0, 2)).await;
        assert!(res.is_err(), "send stays blocked until the timeout");
        let stats = lane(&rx, 0);
        assert!(stats.blocked_ns >= 30_000_000);
        assert_eq!((stats.blocked_senders, stats.depth, stats.sent), (0, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_range_tier_is_an_error_not_a_panic() {
        let (tx, mut rx) = new_mailbox(&[1, 1]);
        let want = NoSuchTier { tier: 2, tiers: 2 };
        assert_eq!(
            tx.send_data(2, 9).await,
            Err(SendError::NoSuchTier(NoSuchTierWith {
                error: want,
                data: 9
            }))
        );
        assert_eq!(
            tx.try_send_data(usize::MAX, 9)
                .map_err(TrySendError::into_inner),
            Err(9)
        );
        assert_eq!(rx.pause(2), Err(want));
        assert_eq!(rx.resume(2), Err(want));
        assert_eq!(rx.is_paused(2), Err(want));
        assert_eq!(
            want.to_string(),
            "no data lane at tier index 2: the mailbox has 2 data lanes (indexes 0..2)"
        );
    }

    #[test]
    fn invalid_capacities_are_rejected() {
        assert_eq!(
            mailbox::<Ctl, u32>(&[4, 0]).map(|_| ()),
            Err(MailboxError::ZeroCapacity { tier: 1 })
        );
        assert_eq!(
            mailbox::<Ctl, u32>(&[MAX_LANE_CAPACITY + 1]).map(|_| ()),
            Err(MailboxError::CapacityTooLarge {
                tier: 0,
                capacity: MAX_LANE_CAPACITY + 1,
                max: MAX_LANE_CAPACITY
            })
        );
        assert!(mailbox::<Ctl, u32>(&[MAX_LANE_CAPACITY]).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn stats_serialize_to_json() {
        let (tx, mut rx) = new_mailbox(&[2, 3]);
        rx.pause(1).expect("tier exists");
        tx.send_data(1, 1).await.expect("send");
        tx.send_data(0, 1).await.expect("send");
        tx.send_control(Ctl::Stop).expect("send control");
        assert_eq!(rx.recv().await, Some(Envelope::Control(Ctl::Stop)));
        let json = serde_json::to_value(tx.stats()).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "closed": false,
                "control_depth": 0,
                "control_sent": 1,
                "control_received": 1,
                "lanes": [
                    {"tier": 0, "capacity": 2, "depth": 1, "paused": false, "sent": 1,
                     "received": 0, "blocked_ns": 0, "blocked_senders": 0},
                    {"tier": 1, "capacity": 3, "depth": 1, "paused": true, "sent": 1,
                     "received": 0, "blocked_ns": 0, "blocked_senders": 0},
                ]
            })
        );
    }

    /// Real threads, no virtual time: counters stay exact and per-producer
    /// FIFO holds under contention on small lanes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_producers_keep_fifo_and_exact_counters() {
        const PER_PRODUCER: u32 = 2_000;
        let (tx, mut rx) = new_mailbox(&[2, 3]);
        let producers: Vec<_> = (0..2u32)
            .map(|p| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for i in 0..PER_PRODUCER {
                        tx.send_data(p as usize, p * 1_000_000 + i)
                            .await
                            .expect("send");
                        if i % 500 == 0 {
                            tx.send_control(Ctl::Pause(p as usize)).expect("control");
                        }
                        let stats = tx.stats();
                        for lane in &stats.lanes {
                            assert!(lane.depth <= lane.capacity as u64);
                            assert!(lane.received <= lane.sent);
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut next = [0u32; 2];
        let mut controls = 0;
        while let Some(env) = rx.recv().await {
            match env {
                Envelope::Control(_) => controls += 1,
                Envelope::Data { tier, data } => {
                    assert_eq!(data, tier as u32 * 1_000_000 + next[tier], "FIFO per lane");
                    next[tier] += 1;
                }
            }
        }
        for p in producers {
            p.await.expect("producer");
        }
        assert_eq!(next, [PER_PRODUCER; 2]);
        assert_eq!(controls, 8);
        let stats = rx.stats();
        assert_eq!(stats.control_depth, 0);
        for lane in stats.lanes {
            assert_eq!((lane.depth, lane.sent, lane.received), (0, 2_000, 2_000));
        }
    }
}
