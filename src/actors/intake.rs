//! Where a feed's trades enter the pipeline, whichever way they came (a
//! live WebSocket frame, or a page of the venue's REST history filling a
//! gap): dedup, trade-id continuity, tiers and the producer's lanes, with
//! the same accounting. And the feed's gap filler, which fills the gaps
//! the continuity finds (`continuity`, `backfill`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::backfill::{Fetcher, space_of};
use crate::config::FeedConfig;
use crate::continuity::{Continuity, Seen};
use crate::dedup::shared::{ALIVE_TTL, BEAT_EVERY, Claim, SharedIds};
use crate::dedup::{self, Dedup};
use crate::exchanges::Protocol;
use crate::instruments::{SymbolRule, Tier, TierCache};
use crate::messages::gaps::{GapRecord, GapSettled};
use crate::messages::producer::{Outgoing, ProducerLanes, send_batch};
use crate::metrics::Metrics;
use crate::model::{TradeV2, now_us};
use crate::telemetry::FeedEvents;

/// The producer's lanes are closed: the daemon is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("producer unavailable: {0}")]
pub struct ProducerGone(pub String);

/// One feed's way into the pipeline. Shared by its connections and its gap
/// filler, on the feed's thread; kept across restarts, which is exactly
/// when overlaps and gaps happen.
pub struct Intake {
    pub exchange: String,
    pub producer: ProducerLanes,
    pub dedup: RefCell<Dedup>,
    pub tiers: RefCell<TierCache>,
    pub events: Rc<FeedEvents>,
    /// `None` for venues whose ids do not run one by one.
    pub continuity: Option<RefCell<Continuity>>,
    /// Wakes the gap filler when a gap opens.
    pub gap_opened: tokio::sync::Notify,
    pub metrics: Metrics,
    /// The store shared with the other daemons on this feed
    /// (`dedup.redis_url`), when configured.
    pub shared: Option<Arc<SharedIds>>,
    /// Trades another daemon took, held until it has surely published
    /// them, to be published here should it die first.
    pub held: RefCell<VecDeque<Held>>,
    /// When the held trades' owners were last looked at.
    pub held_checked: Cell<Option<Instant>>,
}

/// Records bound for the producer, a batch per tier, each in its order.
#[derive(Default)]
struct TierBatches([Vec<Outgoing>; Tier::ALL.len()]);

impl TierBatches {
    fn push(&mut self, out: Outgoing) {
        self.0[out.tier.index()].push(out);
    }
}

/// A trade another daemon claimed first.
pub struct Held {
    pub since: Instant,
    pub owner: String,
    pub trade: TradeV2,
    pub tier: Tier,
}

/// How long a trade another daemon took is held: past its owner's
/// heartbeat lifetime (a dead owner is seen by then) with room for the
/// owner's producer to have handed it to Kafka, or spilled it to disk.
const HOLD: Duration = Duration::from_secs(10);
/// Most trades held; beyond, the oldest are let go (counted duplicates).
const MAX_HELD: usize = 500_000;

impl Intake {
    /// Each of `trades`' message ids asked of the dedup, in order, for
    /// [`admit`](Self::admit). Asked for the whole batch at once: the
    /// dedup hints each id's place in its filter to the CPU ahead of
    /// asking, and reads the batch's slots in its index before inserting,
    /// so the cache misses of a batch overlap. One id at a time, the
    /// feed's dedup took 0.26 µs an id; by batch, 0.07 (`cargo bench
    /// --bench stages`, `feed/dedup`).
    fn first_times(&self, trades: &[TradeV2]) -> Vec<bool> {
        let keys: Vec<u128> = trades.iter().map(|t| dedup::key(&t.message_id)).collect();
        self.dedup.borrow_mut().first_time_each(&keys)
    }

    /// Counts `t` as received and, when its message id is new (`first`,
    /// from [`first_times`](Self::first_times)), checks it against its
    /// symbol's ids and gives its tier; `None` for a duplicate.
    fn admit(&self, t: &TradeV2, first: bool, now: i64) -> Option<Tier> {
        // The parser names the stream; anything else is a plain trade.
        let kind = match space_of(t) {
            "aggTrade" => "aggTrade",
            _ => "trade",
        };
        let tier = self.tiers.borrow_mut().tier(&t.exchange, &t.symbol);
        self.events.trade_received(kind, tier);
        if !first {
            self.events.duplicate(tier);
            return None;
        }
        // Every trade the feed delivered counts for continuity, whoever
        // publishes it: the ids are not missing.
        if let (Some(c), Some(id)) = (&self.continuity, t.source_sequence) {
            let seen = c
                .borrow_mut()
                .observe(&t.symbol, kind, id, t.timestamp_us, now);
            self.note(seen);
        }
        Some(tier)
    }

    /// The trades, past dedup, onto their tiers' lanes; each new one is
    /// checked against its symbol's ids. `now` (µs since the epoch) is when
    /// they arrived: the feed passes the time it read the (last) frame at,
    /// so a run of frames costs one reading of the clock, not two a frame.
    /// The trades of each tier go as one batch, in their order.
    pub async fn send_trades(
        &self,
        trades: &mut Vec<TradeV2>,
        now: i64,
    ) -> Result<(), ProducerGone> {
        let mut batches = TierBatches::default();
        let firsts = self.first_times(trades);
        let Some(shared) = &self.shared else {
            for (t, first) in trades.drain(..).zip(firsts) {
                if let Some(tier) = self.admit(&t, first, now) {
                    batches.push(Outgoing::trade(t, tier));
                }
            }
            return self.send_batches(batches).await;
        };
        let mut fresh = Vec::with_capacity(trades.len());
        for (t, first) in trades.drain(..).zip(firsts) {
            if let Some(tier) = self.admit(&t, first, now) {
                fresh.push((t, tier));
            }
        }
        let ids: Vec<&str> = fresh.iter().map(|(t, _)| t.message_id.as_str()).collect();
        let claims = match shared.claim(&ids).await {
            Ok(c) => c,
            Err(e) => {
                // Published here: the writers' own dedup still stores it once.
                shared.failed(&e);
                Vec::new()
            }
        };
        let mut last = BTreeMap::<(String, String), (i64, i64)>::new();
        for (i, (t, tier)) in fresh.into_iter().enumerate() {
            if let Some(Claim::Taken(owner)) = claims.get(i) {
                self.hold(owner.clone(), t, tier);
                continue;
            }
            if let Some(id) = t.source_sequence {
                let e = last
                    .entry((t.symbol.clone(), space_of(&t).to_string()))
                    .or_insert((id, t.timestamp_us));
                if id > e.0 {
                    *e = (id, t.timestamp_us);
                }
            }
            batches.push(Outgoing::trade(t, tier));
        }
        self.send_batches(batches).await?;
        if let Err(e) = shared.advance_last(&self.exchange, &last).await {
            shared.failed(&e);
        }
        self.release_held().await
    }

    /// A trade another daemon took, held until that daemon has surely
    /// published it.
    fn hold(&self, owner: String, trade: TradeV2, tier: Tier) {
        let mut held = self.held.borrow_mut();
        if held.len() >= MAX_HELD
            && let Some(h) = held.pop_front()
        {
            self.events.duplicate(h.tier);
        }
        held.push_back(Held {
            since: Instant::now(),
            owner,
            trade,
            tier,
        });
    }

    /// At most once per heartbeat period: the held trades past [`HOLD`]
    /// were published by their owner (duplicates here); those whose owner
    /// died (its heartbeat gone) are taken over and published here.
    pub async fn release_held(&self) -> Result<(), ProducerGone> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        if self
            .held_checked
            .get()
            .is_some_and(|at| at.elapsed() < BEAT_EVERY)
        {
            return Ok(());
        }
        self.held_checked.set(Some(Instant::now()));
        let owners: Vec<String> = {
            let mut held = self.held.borrow_mut();
            while held.front().is_some_and(|h| h.since.elapsed() >= HOLD) {
                if let Some(h) = held.pop_front() {
                    self.events.duplicate(h.tier);
                }
            }
            let set: BTreeSet<&str> = held.iter().map(|h| h.owner.as_str()).collect();
            set.into_iter().map(str::to_string).collect()
        };
        if owners.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = owners.iter().map(String::as_str).collect();
        let alive = match shared.alive(&names).await {
            Ok(a) => a,
            Err(e) => {
                // Held on and asked again next period; at HOLD they go as
                // duplicates, as with a live owner.
                shared.failed(&e);
                return Ok(());
            }
        };
        for (owner, alive) in owners.iter().zip(alive) {
            if !alive {
                self.take_over(shared, owner).await?;
            }
        }
        Ok(())
    }

    /// Publishes the held trades of the dead `owner` whose claims this
    /// daemon moves to itself (another survivor may have moved some first).
    async fn take_over(&self, shared: &SharedIds, owner: &str) -> Result<(), ProducerGone> {
        let mine: Vec<Held> = {
            let mut held = self.held.borrow_mut();
            let (mine, rest): (VecDeque<Held>, VecDeque<Held>) =
                held.drain(..).partition(|h| h.owner == owner);
            *held = rest;
            mine.into()
        };
        let ids: Vec<&str> = mine.iter().map(|h| h.trade.message_id.as_str()).collect();
        let taken = match shared.take_over(owner, &ids).await {
            Ok(t) => t,
            Err(e) => {
                // Published: better twice in Kafka than lost.
                shared.failed(&e);
                vec![true; ids.len()]
            }
        };
        tracing::warn!(exchange = %self.exchange, dead = owner, trades = mine.len(),
            taken = taken.iter().filter(|t| **t).count(),
            "shared dedup: a daemon stopped beating; publishing the trades it had taken");
        self.metrics
            .dedup_redis_takeovers
            .with_label_values(&[&self.exchange])
            .inc_by(taken.iter().filter(|t| **t).count() as u64);
        let mut batches = TierBatches::default();
        for (h, taken) in mine.into_iter().zip(taken) {
            if taken {
                batches.push(Outgoing::trade(h.trade, h.tier));
            } else {
                self.events.duplicate(h.tier);
            }
        }
        self.send_batches(batches).await
    }

    fn note(&self, seen: Seen) {
        let ex = self.exchange.as_str();
        match seen {
            Seen::Next | Seen::Filled => {}
            Seen::Skipped(n) => {
                tracing::warn!(exchange = ex, trades = n, "gap in the trade ids");
                self.metrics
                    .feed_gaps
                    .with_label_values(&[ex, "detected"])
                    .inc();
                self.metrics
                    .feed_gap_trades
                    .with_label_values(&[ex, "missing"])
                    .inc_by(n);
                self.gap_opened.notify_one();
            }
            Seen::Regression => self
                .metrics
                .feed_id_regressions
                .with_label_values(&[ex])
                .inc(),
        }
    }

    /// One record (a dead letter) on its lane.
    pub async fn send(&self, out: Outgoing) -> Result<(), ProducerGone> {
        let tier = out.tier;
        send_batch(&self.producer, tier, vec![out])
            .await
            .map_err(|e| ProducerGone(e.to_string()))
    }

    /// Each tier's batch on its lane, tier 1 first.
    async fn send_batches(&self, batches: TierBatches) -> Result<(), ProducerGone> {
        for (tier, batch) in Tier::ALL.into_iter().zip(batches.0) {
            if !batch.is_empty() {
                send_batch(&self.producer, tier, batch)
                    .await
                    .map_err(|e| ProducerGone(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// A settled gap: counted, logged, and sent to `market.gaps`.
    fn settled(&self, r: GapRecord, to: Option<&Recipient<GapSettled>>) {
        let ex = self.exchange.as_str();
        let m = &self.metrics;
        m.feed_gaps.with_label_values(&[ex, &r.how]).inc();
        let brought = u64::try_from(r.filled).unwrap_or(0);
        let lost = u64::try_from(r.missing - r.filled).unwrap_or(0);
        let outcome = if r.how == "late" { "late" } else { "rest" };
        m.feed_gap_trades
            .with_label_values(&[ex, outcome])
            .inc_by(brought);
        m.feed_gap_trades
            .with_label_values(&[ex, "lost"])
            .inc_by(lost);
        if r.how == "rest" || r.how == "late" {
            tracing::info!(exchange = ex, symbol = %r.symbol, from = r.from_id, to = r.to_id, how = %r.how, "gap filled");
        } else {
            tracing::error!(exchange = ex, symbol = %r.symbol, from = r.from_id, to = r.to_id, how = %r.how, detail = ?r.detail, "gap not filled: trades lost");
        }
        if let Some(to) = to {
            to.do_send(GapSettled(r));
        }
    }
}

/// Tells the feed actor its gap figures changed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GapsChanged;

/// The feed's gap filler: settles gaps whose ids all came late, and fills
/// the others, past their grace, from the venue's REST history, one span
/// at a time (the venue's rate limit is per client, not per symbol). Runs
/// for the feed's life, across its reconnects.
pub async fn fill_gaps(
    intake: Rc<Intake>,
    cfg: FeedConfig,
    protocol: Arc<dyn Protocol>,
    symbols: SymbolRule,
    gaps_table: Option<Recipient<GapSettled>>,
    feed: Recipient<GapsChanged>,
) {
    let Some(cont) = intake.continuity.as_ref() else {
        return;
    };
    let fetcher = Fetcher::new(&cfg, protocol.clone(), symbols);
    let can_fill = cfg.backfill && protocol.rest().is_some();
    loop {
        let (settled, fills) = cont.borrow_mut().due(now_us());
        for r in settled {
            intake.settled(r, gaps_table.as_ref());
        }
        for span in fills {
            let end = if !can_fill {
                let why = if cfg.backfill {
                    "the protocol has no REST history"
                } else {
                    "backfill is off"
                };
                cont.borrow_mut()
                    .finish(&span, "not_filled", Some(why.into()))
            } else {
                tracing::info!(exchange = %intake.exchange, symbol = %span.symbol, from = span.from_id, to = span.to_id, "filling a gap from the venue's REST history");
                let before = fetcher.requests.get();
                let sink = intake.clone();
                let result = fetcher
                    .fill(&span, move |mut trades| {
                        let sink = sink.clone();
                        async move {
                            if let Err(e) = sink.send_trades(&mut trades, now_us()).await {
                                tracing::warn!(error = %e, "gap fill: the producer refused trades");
                            }
                        }
                    })
                    .await;
                intake
                    .metrics
                    .feed_backfill_requests
                    .with_label_values(&[&intake.exchange])
                    .inc_by(fetcher.requests.get() - before);
                let why = result.err().map(|e| e.to_string());
                cont.borrow_mut().finish(&span, "unrecoverable", why)
            };
            if let Some(r) = end {
                intake.settled(r, gaps_table.as_ref());
            }
        }
        // Gaps opened, filled or settled since the last round.
        feed.do_send(GapsChanged);
        let next = cont.borrow().next_due_us();
        let sleep = match next {
            Some(at) => Duration::from_micros(u64::try_from(at - now_us()).unwrap_or(0)),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = intake.gap_opened.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Resolves the held trades while no frame comes (a quiet feed, or a
/// replay that ended just as the other daemon died). Runs for the feed's
/// life.
pub async fn release_held_loop(intake: Rc<Intake>) {
    let mut tick = tokio::time::interval(BEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = intake.release_held().await {
            tracing::warn!(error = %e, "shared dedup: the producer refused held trades");
        }
    }
}

// A dead owner is seen well before its trades would go as duplicates.
const _: () = assert!(ALIVE_TTL.as_millis() + 2 * BEAT_EVERY.as_millis() < HOLD.as_millis());
