//! Where a feed's trades enter the pipeline, whichever way they came (a
//! live WebSocket frame, or a page of the venue's REST history filling a
//! gap): dedup, trade-id continuity, tiers and the producer's lanes, with
//! the same accounting. And the feed's gap filler, which fills the gaps
//! the continuity finds (`continuity`, `backfill`).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::backfill::{Fetcher, space_of};
use crate::config::FeedConfig;
use crate::continuity::{Continuity, Seen};
use crate::dedup::Dedup;
use crate::exchanges::Protocol;
use crate::instruments::{SymbolRule, TierCache};
use crate::messages::gaps::{GapRecord, GapSettled};
use crate::messages::producer::{Outgoing, ProducerLanes};
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
}

impl Intake {
    /// The trades, past dedup, onto their tiers' lanes; each new one is
    /// checked against its symbol's ids.
    pub async fn send_trades(&self, trades: &mut Vec<TradeV2>) -> Result<(), ProducerGone> {
        let now = now_us();
        for t in trades.drain(..) {
            // The parser names the stream; anything else is a plain trade.
            let kind = match space_of(&t) {
                "aggTrade" => "aggTrade",
                _ => "trade",
            };
            let tier = self.tiers.borrow_mut().tier(&t.exchange, &t.symbol);
            self.events.trade_received(kind, tier);
            if !self.dedup.borrow_mut().first_time(&t.message_id) {
                self.events.duplicate(tier);
                continue;
            }
            if let (Some(c), Some(id)) = (&self.continuity, t.source_sequence) {
                let seen = c
                    .borrow_mut()
                    .observe(&t.symbol, kind, id, t.timestamp_us, now);
                self.note(seen);
            }
            self.send(Outgoing::trade(t, tier)).await?;
        }
        Ok(())
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

    pub async fn send(&self, out: Outgoing) -> Result<(), ProducerGone> {
        let lane = out.tier.index();
        self.producer
            .send_data(lane, out)
            .await
            .map_err(|e| ProducerGone(e.to_string()))
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
                            if let Err(e) = sink.send_trades(&mut trades).await {
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
