//! TailActor: the trades consumed past the latest commit, in memory, so a
//! query can read them beside the lake. It is told about every commit and
//! then drops what that commit covers; it never drops anything else. When
//! it holds `tail.max_rows` rows it asks the writer to commit early, which
//! is what bounds its memory.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;

use crate::lake::commit::KafkaOffsets;
use crate::lake::schema::TRADES_TABLE;
use crate::messages::consumer::Committed;
use crate::messages::tail::{ObserveTail, TailFilter, TailRow, TailScan, Tailed};
use crate::messages::writer::Flush;
use crate::model::TradeV2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TailError {
    /// The tail already dropped rows the pinned snapshot does not hold: a
    /// newer snapshot is visible, and the reader must pin that one instead.
    /// Retrying with a freshly loaded table always succeeds eventually,
    /// because the tail only learns of a commit after it is visible.
    #[error(
        "tail pruned {topic}/{partition} to {pruned}, past the pinned snapshot's {since}; reload the table"
    )]
    Stale {
        topic: String,
        partition: i32,
        pruned: i64,
        since: i64,
    },
}

/// One buffered row.
#[derive(Debug, Clone)]
struct Entry {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    trade: TradeV2,
}

/// The rows themselves, indexed by symbol (every API query names one), and
/// the offsets they were pruned to. Kept apart from the actor so it can be
/// tested without a running system.
#[derive(Debug, Default)]
pub struct TailStore {
    cluster_id: String,
    by_symbol: HashMap<String, Vec<Entry>>,
    rows: usize,
    /// Highest committed offsets seen, i.e. everything below is gone.
    pruned: KafkaOffsets,
    /// Highest offset taken in per partition. A partition is read in
    /// offset order, so anything at or below it is a re-read (a consumer
    /// restart or a writer rewinding to its last snapshot) of a row the
    /// tail already holds or has pruned.
    newest: HashMap<(Arc<str>, i32), i64>,
}

/// What the tail holds, for observers.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TailState {
    pub rows: usize,
    pub symbols: usize,
    pub max_rows: usize,
    /// Offsets of the newest commit the tail has pruned to.
    pub pruned: KafkaOffsets,
}

impl TailStore {
    pub fn new(cluster_id: &str) -> Self {
        Self {
            cluster_id: cluster_id.to_string(),
            by_symbol: HashMap::new(),
            rows: 0,
            pruned: KafkaOffsets {
                cluster_id: cluster_id.to_string(),
                topics: Default::default(),
            },
            newest: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Adds consumed rows. A row the tail has seen before (a re-read) or
    /// that lies below the pruned offsets (already in the lake) is not kept
    /// twice.
    pub fn push(&mut self, rows: Vec<TailRow>) {
        for r in rows {
            if self
                .pruned
                .get(&r.topic, r.partition)
                .is_some_and(|p| r.offset < p)
            {
                continue;
            }
            let newest = self
                .newest
                .entry((r.topic.clone(), r.partition))
                .or_insert(i64::MIN);
            if r.offset <= *newest {
                continue;
            }
            *newest = r.offset;
            self.rows += 1;
            self.by_symbol
                .entry(r.trade.symbol.clone())
                .or_default()
                .push(Entry {
                    topic: r.topic,
                    partition: r.partition,
                    offset: r.offset,
                    trade: r.trade,
                });
        }
    }

    /// Drops every row a commit covers. Offsets of another cluster (the
    /// embedded one of an earlier run) say nothing about these rows.
    pub fn prune(&mut self, committed: &KafkaOffsets) {
        if committed.cluster_id != self.cluster_id {
            return;
        }
        for (topic, parts) in &committed.topics {
            for (p, next) in parts {
                if self.pruned.get(topic, *p).is_none_or(|old| *next > old) {
                    self.pruned.set(topic, *p, *next);
                }
            }
        }
        let pruned = &self.pruned;
        let mut kept = 0;
        self.by_symbol.retain(|_, rows| {
            rows.retain(|e| {
                pruned
                    .get(&e.topic, e.partition)
                    .is_none_or(|p| e.offset >= p)
            });
            kept += rows.len();
            !rows.is_empty()
        });
        self.rows = kept;
    }

    /// The rows at or past `since` that match `filter`, or `Stale` when rows
    /// past `since` were already dropped.
    pub fn scan(
        &self,
        since: &KafkaOffsets,
        filter: &TailFilter,
    ) -> Result<Vec<TradeV2>, TailError> {
        // A snapshot recorded on another cluster covers none of these rows.
        let same_cluster = since.cluster_id == self.cluster_id;
        let from = |topic: &str, p: i32| {
            if same_cluster {
                since.get(topic, p).unwrap_or(0)
            } else {
                0
            }
        };
        for (topic, parts) in &self.pruned.topics {
            for (p, pruned) in parts {
                let s = from(topic, *p);
                if *pruned > s {
                    return Err(TailError::Stale {
                        topic: topic.clone(),
                        partition: *p,
                        pruned: *pruned,
                        since: s,
                    });
                }
            }
        }
        let keep = |e: &Entry| {
            let t = &e.trade;
            e.offset >= from(&e.topic, e.partition)
                && filter
                    .exchanges
                    .as_ref()
                    .is_none_or(|x| x.contains(&t.exchange))
                && filter.start_us.is_none_or(|s| t.timestamp_us >= s)
                && filter.end_us.is_none_or(|s| t.timestamp_us <= s)
        };
        let mut out = Vec::new();
        match &filter.symbols {
            Some(symbols) => {
                for s in symbols {
                    if let Some(rows) = self.by_symbol.get(s) {
                        out.extend(rows.iter().filter(|e| keep(e)).map(|e| e.trade.clone()));
                    }
                }
            }
            None => {
                for rows in self.by_symbol.values() {
                    out.extend(rows.iter().filter(|e| keep(e)).map(|e| e.trade.clone()));
                }
            }
        }
        Ok(out)
    }

    fn state(&self, max_rows: usize) -> TailState {
        TailState {
            rows: self.rows,
            symbols: self.by_symbol.len(),
            max_rows,
            pruned: self.pruned.clone(),
        }
    }
}

pub struct TailActor {
    store: TailStore,
    max_rows: usize,
    /// The trades writer, asked to commit early when the tail is full.
    writer: Option<Recipient<Flush>>,
    /// Whether an early flush was asked for and no commit arrived since, so
    /// a full tail asks once, not on every consumed chunk.
    flush_requested: bool,
}

impl TailActor {
    pub fn new(cluster_id: &str, max_rows: usize) -> Self {
        Self {
            store: TailStore::new(cluster_id),
            max_rows,
            writer: None,
            flush_requested: false,
        }
    }

    pub fn with_writer(mut self, writer: Recipient<Flush>) -> Self {
        self.writer = Some(writer);
        self
    }
}

impl Actor for TailActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Queries and commits must not wait behind a long queue of data.
        ctx.set_mailbox_capacity(64);
    }
}

impl Handler<Tailed> for TailActor {
    type Result = ();

    fn handle(&mut self, msg: Tailed, _ctx: &mut Self::Context) {
        self.store.push(msg.0);
        if self.store.len() >= self.max_rows
            && !self.flush_requested
            && let Some(w) = &self.writer
        {
            tracing::debug!(
                rows = self.store.len(),
                max_rows = self.max_rows,
                "tail full; asking the writer to commit early"
            );
            self.flush_requested = true;
            w.do_send(Flush);
        }
    }
}

impl Handler<Committed> for TailActor {
    type Result = ();

    fn handle(&mut self, msg: Committed, _ctx: &mut Self::Context) {
        if msg.table != TRADES_TABLE {
            return;
        }
        self.store.prune(&msg.offsets);
        self.flush_requested = false;
    }
}

impl Handler<TailScan> for TailActor {
    type Result = Result<Vec<TradeV2>, TailError>;

    fn handle(&mut self, msg: TailScan, _ctx: &mut Self::Context) -> Self::Result {
        self.store.scan(&msg.since, &msg.filter)
    }
}

impl Handler<ObserveTail> for TailActor {
    type Result = MessageResult<ObserveTail>;

    fn handle(&mut self, _: ObserveTail, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.store.state(self.max_rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AssetClass, Dec8, Side};

    fn trade(symbol: &str, ts: i64) -> TradeV2 {
        TradeV2 {
            message_id: format!("{symbol}-{ts}"),
            trade_id: format!("X-{ts}"),
            symbol: symbol.into(),
            exchange: "X".into(),
            asset_class: AssetClass::Crypto,
            timestamp_us: ts,
            ingestion_timestamp_us: ts,
            price: Dec8::from_unscaled(1).unwrap(),
            quantity: Dec8::from_unscaled(1).unwrap(),
            currency: "USDT".into(),
            side: Side::Buy,
            trade_conditions: vec![],
            source_sequence: None,
            platform_sequence: None,
            vendor_data: None,
        }
    }

    fn row(p: i32, offset: i64, symbol: &str) -> TailRow {
        TailRow {
            topic: Arc::from("t"),
            partition: p,
            offset,
            trade: trade(symbol, offset),
        }
    }

    fn offsets(cluster: &str, parts: &[(i32, i64)]) -> KafkaOffsets {
        let mut o = KafkaOffsets {
            cluster_id: cluster.into(),
            ..Default::default()
        };
        for (p, n) in parts {
            o.set("t", *p, *n);
        }
        o
    }

    fn ids(rows: &[TradeV2]) -> Vec<i64> {
        let mut v: Vec<i64> = rows.iter().map(|t| t.timestamp_us).collect();
        v.sort();
        v
    }

    #[test]
    fn scan_splits_exactly_at_the_snapshot_offsets() {
        let mut s = TailStore::new("c");
        s.push((0..10).map(|o| row(0, o, "A")).collect());
        s.push((0..5).map(|o| row(1, 100 + o, "B")).collect());
        let since = offsets("c", &[(0, 4), (1, 102)]);
        let all = s.scan(&since, &TailFilter::default()).unwrap();
        assert_eq!(ids(&all), vec![4, 5, 6, 7, 8, 9, 102, 103, 104]);
        // another cluster's snapshot covers nothing here
        let other = s.scan(&offsets("old", &[(0, 9)]), &TailFilter::default());
        assert_eq!(other.unwrap().len(), 15);
    }

    #[test]
    fn prune_drops_only_committed_rows_and_scans_behind_it_are_stale() {
        let mut s = TailStore::new("c");
        s.push((0..10).map(|o| row(0, o, "A")).collect());
        s.prune(&offsets("c", &[(0, 6)]));
        assert_eq!(s.len(), 4);
        let e = s
            .scan(&offsets("c", &[(0, 4)]), &TailFilter::default())
            .unwrap_err();
        assert!(
            matches!(
                e,
                TailError::Stale {
                    pruned: 6,
                    since: 4,
                    ..
                }
            ),
            "{e}"
        );
        let rows = s
            .scan(&offsets("c", &[(0, 6)]), &TailFilter::default())
            .unwrap();
        assert_eq!(ids(&rows), vec![6, 7, 8, 9]);
        // a commit of another cluster prunes nothing, an older one neither
        s.prune(&offsets("x", &[(0, 100)]));
        s.prune(&offsets("c", &[(0, 2)]));
        assert_eq!(s.len(), 4);
        // a re-read of committed rows is not kept twice, nor one of rows
        // still held (a consumer seeking back after a restart)
        s.push(vec![row(0, 3, "A")]);
        assert_eq!(s.len(), 4);
        s.push((5..12).map(|o| row(0, o, "A")).collect());
        assert_eq!(s.len(), 6, "only offsets 10 and 11 are new");
        s.prune(&offsets("c", &[(0, 12)]));
        assert!(s.is_empty());
    }

    /// Counts the early flushes the tail asks for.
    struct FakeWriter(usize);

    impl Actor for FakeWriter {
        type Context = Context<Self>;
    }

    impl Handler<Flush> for FakeWriter {
        type Result = Result<Option<i64>, crate::actors::writer::WriterError>;

        fn handle(&mut self, _: Flush, _ctx: &mut Self::Context) -> Self::Result {
            self.0 += 1;
            Ok(None)
        }
    }

    /// How many flushes arrived; answered after every earlier message.
    #[derive(Message)]
    #[rtype(result = "usize")]
    struct Count;

    impl Handler<Count> for FakeWriter {
        type Result = usize;

        fn handle(&mut self, _: Count, _ctx: &mut Self::Context) -> usize {
            self.0
        }
    }

    #[actix_rt::test]
    async fn a_full_tail_asks_for_one_early_commit_and_keeps_every_row() {
        let writer = FakeWriter(0).start();
        let tail = TailActor::new("c", 5)
            .with_writer(writer.clone().recipient())
            .start();
        let observe = || async { tail.send(ObserveTail).await.unwrap() };
        tail.send(Tailed((0..4).map(|o| row(0, o, "A")).collect()))
            .await
            .unwrap();
        tail.send(Tailed((4..8).map(|o| row(0, o, "A")).collect()))
            .await
            .unwrap();
        tail.send(Tailed((8..9).map(|o| row(0, o, "A")).collect()))
            .await
            .unwrap();
        assert_eq!(
            writer.send(Count).await.unwrap(),
            1,
            "asked once, not per chunk"
        );
        assert_eq!(observe().await.rows, 9, "nothing is dropped over the bound");
        tail.send(Committed {
            table: TRADES_TABLE,
            snapshot_id: 1,
            offsets: offsets("c", &[(0, 7)]),
        })
        .await
        .unwrap();
        let state = observe().await;
        assert_eq!(state.rows, 2);
        assert_eq!(state.pruned.get("t", 0), Some(7));
        tail.send(Tailed((9..14).map(|o| row(0, o, "A")).collect()))
            .await
            .unwrap();
        assert_eq!(
            writer.send(Count).await.unwrap(),
            2,
            "asked again after a commit"
        );
    }

    #[test]
    fn filters_narrow_by_symbol_exchange_and_time() {
        let mut s = TailStore::new("c");
        s.push(
            (0..10)
                .map(|o| row(0, o, if o % 2 == 0 { "A" } else { "B" }))
                .collect(),
        );
        let since = offsets("c", &[]);
        let f = TailFilter {
            symbols: Some(["A".to_string()].into()),
            start_us: Some(2),
            end_us: Some(6),
            ..Default::default()
        };
        assert_eq!(ids(&s.scan(&since, &f).unwrap()), vec![2, 4, 6]);
        let f = TailFilter {
            exchanges: Some(["Y".to_string()].into()),
            ..Default::default()
        };
        assert!(s.scan(&since, &f).unwrap().is_empty());
    }
}
