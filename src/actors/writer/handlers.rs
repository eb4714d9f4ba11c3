//! The writer's handlers: rows taken in, flushes asked for, partitions
//! assigned, and what the rest of the daemon asks of it.

use std::time::Instant;

use actix::prelude::*;

use super::{Fate, WriterActor, WriterState};
use crate::lake::batch::text_column;
use crate::ledger::LossCause;
use crate::messages::observe::Observe;
use crate::messages::writer::{
    AddCommitListener, Assigned, Consumed, Flush, GetPositions, Rows, SetRestarter, WriterError,
};

impl Handler<Consumed> for WriterActor {
    type Result = ();

    fn handle(&mut self, msg: Consumed, ctx: &mut Self::Context) {
        if msg.generation < self.min_generation {
            // Sent by a consumer loop from before a rewind.
            return;
        }
        for span in &msg.positions {
            // Offsets run on without holes; one the consumer went past
            // without handing it over is a lost record (an offset reset
            // after the broker deleted it), counted and shown, never
            // silently skipped.
            if let Some(expected) = self.positions.get(&span.topic, span.partition)
                && span.first > expected
            {
                self.metrics.losses.record(
                    &span.topic,
                    span.partition,
                    expected,
                    span.first,
                    LossCause::Skipped,
                );
            }
            self.positions.set(&span.topic, span.partition, span.next);
        }
        if let Some(seen) = &self.seen {
            seen.held(&msg.positions);
        }
        if !msg.positions.is_empty() {
            self.dirty = true;
            self.oldest.get_or_insert_with(Instant::now);
        }
        match (&mut self.buffer, msg.rows) {
            (Rows::Trades(b), Rows::Trades(chunks)) => {
                let committed = &self.committed_ids;
                let in_commit = &self.in_commit_ids;
                let buffered = &mut self.buffered_ids;
                let mut tally = self.tally.as_mut();
                let mut at = msg.at.into_iter();
                let buffer_at = &mut self.buffer_at;
                let mut dropped = 0;
                for chunk in chunks {
                    let names = match (
                        text_column(&chunk.batch, "exchange"),
                        text_column(&chunk.batch, "symbol"),
                    ) {
                        (Ok(e), Ok(s)) => Some((e, s)),
                        (Err(e), _) | (_, Err(e)) => {
                            // The consumer builds every chunk on the trades
                            // schema, so this is a bug; the rows are still
                            // stored, but the accounting cannot name them
                            // and would go short: say so, loudly.
                            if tally.is_some() {
                                tracing::error!(table = self.kind.name(), rows = chunk.len(), error = %e, "a chunk without exchange and symbol columns: its rows are stored but left out of the accounting");
                            }
                            None
                        }
                    };
                    let mut keep = Vec::with_capacity(chunk.len());
                    let stored = committed.contains_keys(&chunk.keys);
                    for (i, k) in chunk.keys.iter().enumerate() {
                        let first = !stored[i] && !in_commit.contains(k) && buffered.insert(*k);
                        let a = at.next();
                        if let (Some(tally), Some(a), Some((e, s))) =
                            (tally.as_deref_mut(), a.as_ref(), names)
                        {
                            let fate = if first { Fate::Stored } else { Fate::Duplicate };
                            tally.note(e.value(i), s.value(i), a, fate);
                        }
                        if first && let Some(a) = a {
                            buffer_at.push(a);
                        }
                        keep.push(first);
                    }
                    let kept = keep.iter().filter(|k| **k).count();
                    dropped += chunk.len() - kept;
                    if kept == chunk.len() {
                        b.push(chunk);
                    } else if kept > 0 {
                        match chunk.filter(&keep) {
                            Ok(c) => b.push(c),
                            // Cannot happen on the chunk's own batch; were
                            // it to, a second copy stored beats a row lost.
                            Err(e) => {
                                tracing::error!(table = self.kind.name(), error = %e, "could not leave second copies out of a chunk; keeping them");
                                b.push(chunk);
                            }
                        }
                    }
                }
                if dropped > 0 {
                    tracing::warn!(
                        table = self.kind.name(),
                        dropped,
                        "second copies of trades dropped (a record reached kafka twice)"
                    );
                    self.state.duplicates_dropped += dropped as u64;
                    self.metrics
                        .writer_duplicates
                        .with_label_values(&[self.kind.name()])
                        .inc_by(dropped as u64);
                }
            }
            (Rows::DeadLetters(b), Rows::DeadLetters(r)) => b.extend(r),
            (_, other) if other.is_empty() => {}
            _ => {
                tracing::error!(table = self.table(), "rows of the wrong kind routed here");
            }
        }
        self.metrics
            .writer_buffered_rows
            .with_label_values(&[self.table()])
            .set(self.buffer.len() as i64);
        self.publish_state();
        if self.buffer.len() >= self.policy.max_rows
            && !self.start_flush(ctx)
            && self.buffer.len() >= 2 * self.policy.max_rows
        {
            // A commit runs and a second full buffer waits: stop reading
            // until it ends. The consumer blocks and the rest stays in
            // Kafka, so memory stays bounded at two buffers.
            ctx.wait(self.flush_done().into_actor(self).map(|_, act, ctx| {
                act.finish_flush(ctx);
            }));
        }
    }
}

impl Handler<Flush> for WriterActor {
    type Result = AtomicResponse<Self, Result<Option<i64>, WriterError>>;

    /// Commits everything taken in so far: waits for a running commit, then
    /// commits the rest; nothing else is read meanwhile.
    fn handle(&mut self, _: Flush, _ctx: &mut Self::Context) -> Self::Result {
        AtomicResponse::new(Box::pin(self.flush_done().into_actor(self).then(
            |_, act, ctx| {
                let earlier = act.finish_flush(ctx);
                act.start_flush(ctx);
                act.flush_done().into_actor(act).map(move |_, act, ctx| {
                    match act.finish_flush(ctx) {
                        Some(r) => r,
                        None => earlier.unwrap_or(Ok(None)),
                    }
                })
            },
        )))
    }
}

impl Handler<Assigned> for WriterActor {
    type Result = ();

    /// A partition's next run begins where it was assigned. Rows of it still
    /// buffered from an earlier ownership stay: a commit leaves out what the
    /// partition's other owner committed meanwhile (`commit::plan`).
    fn handle(&mut self, msg: Assigned, _ctx: &mut Self::Context) {
        for (topic, p, next) in msg.0 {
            // Each writer follows its own topics only.
            if !self.origin.topics.contains_key(&topic) {
                continue;
            }
            self.positions.set(&topic, p, next);
            self.run_start.set(&topic, p, next);
        }
        self.publish_state();
    }
}

impl Handler<SetRestarter> for WriterActor {
    type Result = ();

    fn handle(&mut self, msg: SetRestarter, _ctx: &mut Self::Context) {
        self.restarter = Some(msg.0);
    }
}

impl Handler<AddCommitListener> for WriterActor {
    type Result = ();

    fn handle(&mut self, msg: AddCommitListener, _ctx: &mut Self::Context) {
        self.listeners.push(msg.0);
    }
}

impl Handler<Observe<WriterState>> for WriterActor {
    type Result = MessageResult<Observe<WriterState>>;

    fn handle(&mut self, _: Observe<WriterState>, _ctx: &mut Self::Context) -> Self::Result {
        self.publish_state();
        MessageResult(self.state.clone())
    }
}

impl Handler<GetPositions> for WriterActor {
    type Result = MessageResult<GetPositions>;

    fn handle(&mut self, _: GetPositions, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.positions.clone())
    }
}
