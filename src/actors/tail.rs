//! TailActor: owns the tail store (`crate::query::tail`), the trades
//! consumed past the latest commit. It is told about every commit and then
//! drops what that commit covers; it never drops anything else. When it
//! holds `tail.max_rows` rows it asks the writer to commit early, which is
//! what bounds its memory.
//!
//! With a query side (`with_query_pins`), it drops a commit's rows once
//! the query side pins the new snapshot (`QueryPinned`), or after a grace
//! if it never says so. Dropped at the commit itself, the rows were gone
//! while the query side still pinned the snapshot before it: the next
//! query had to load the new snapshot and read its new files itself, and
//! every trade arriving meanwhile waited for that answer (up to 80 ms at
//! 10,000 trades/s on two cores).
//!
//! It runs on the ingest arbiter and never scans for a query: after every
//! change it publishes a snapshot of the store to its `TailView`, which
//! hybrid scans read on the query runtime, so a big scan cannot hold up
//! the consumer, which awaits every hand-over to this actor.

use actix::prelude::*;
use arrow::datatypes::SchemaRef;
use prometheus::local::LocalHistogram;

use crate::actors::observe::{Health, ObservableState, Published};
use crate::lake::batch::{text_column, time_column};
use crate::lake::schema::TRADES_TABLE;
use crate::messages::consumer::Committed;
use crate::messages::observe::Observe;
use crate::messages::tail::{QueryPinned, TailState, Tailed};
use crate::messages::writer::Flush;
use crate::metrics::Metrics;
use crate::model::now_us;
use crate::query::tail::{TailStore, TailView};

impl ObservableState for TailState {
    fn name(&self) -> String {
        "tail".into()
    }

    fn status(&self) -> String {
        if self.rows >= self.max_rows {
            "full: commit asked for"
        } else {
            "running"
        }
        .into()
    }

    fn health(&self) -> &Health {
        &self.health
    }
}

pub struct TailActor {
    store: TailStore,
    /// Where scans read the store, published after every change.
    view: TailView,
    published: Published<TailState>,
    /// When the state was last published from the data path.
    published_at: std::time::Instant,
    max_rows: usize,
    /// The trades writer, asked to commit early when the tail is full.
    writer: Option<Recipient<Flush>>,
    /// Whether an early flush was asked for and no commit arrived since, so
    /// a full tail asks once, not on every consumed chunk.
    flush_requested: bool,
    metrics: Option<Metrics>,
    /// With a query side: how long a commit's rows stay at most while
    /// waiting for its `QueryPinned`. `None`: dropped at the commit.
    query_grace: Option<std::time::Duration>,
}

impl TailActor {
    /// `schema` is the trades table's Arrow schema (the hybrid table's);
    /// `view` is where the hybrid table reads the rows.
    pub fn new(cluster_id: &str, max_rows: usize, schema: SchemaRef, view: TailView) -> Self {
        let store = TailStore::new(cluster_id, schema);
        view.publish(store.snapshot());
        Self {
            published: Published::new(store.state(max_rows)),
            published_at: std::time::Instant::now(),
            store,
            view,
            max_rows,
            writer: None,
            flush_requested: false,
            metrics: None,
            query_grace: None,
        }
    }

    /// Keeps a commit's rows until the query side pins the new snapshot
    /// (`QueryPinned`), or for `grace` at most.
    pub fn with_query_pins(mut self, grace: std::time::Duration) -> Self {
        self.query_grace = Some(grace);
        self
    }

    /// Observes each row's feed-to-queryable lag into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn with_writer(mut self, writer: Recipient<Flush>) -> Self {
        self.writer = Some(writer);
        self
    }

    /// The state this tail publishes after every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<TailState> {
        self.published.subscribe()
    }

    fn publish_state(&mut self) {
        self.published.publish(&self.store.state(self.max_rows));
        self.published_at = std::time::Instant::now();
    }

    /// Drops the rows `offsets` covers (a later call with older offsets
    /// drops nothing more).
    fn prune(&mut self, offsets: &crate::lake::commit::KafkaOffsets) {
        self.store.prune(offsets);
        self.view.publish(self.store.snapshot());
        self.flush_requested = false;
        self.publish_state();
    }
}

/// How stale the tail's published size (`/status`) may get on the data
/// path. The rows themselves are published at once.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

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
        let (batch, at) = match msg {
            Tailed::Chunk { batch, at } => (batch, at),
            Tailed::Rows(rows) => match self.store.chunk_of(&rows) {
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::error!(error = %e, rows = rows.len(), "tail: trades not convertible to its schema");
                    return;
                }
            },
        };
        if let Some(m) = &self.metrics
            && let (Ok(exchange), Ok(ingested)) = (
                text_column(&batch, "exchange"),
                time_column(&batch, "ingestion_timestamp"),
            )
        {
            // Rows come in runs of one exchange: look its series up once
            // per run, not per row. A run is observed into a local copy
            // that the series takes in one go when the run ends, not with
            // three atomic additions per row (2 % of the lake arbiter's
            // samples in a profile of `ticklake bench`).
            let now = now_us();
            let mut series: Option<(&str, LocalHistogram)> = None;
            for i in 0..batch.num_rows() {
                let (e, t) = (exchange.value(i), ingested.value(i));
                if t <= 0 {
                    continue;
                }
                let h = match &series {
                    Some((x, h)) if *x == e => h,
                    _ => {
                        // The run before is taken in as it is dropped here
                        // (a local histogram flushes on drop).
                        let h = m.queryable_lag_seconds.with_label_values(&[e]).local();
                        &series.insert((e, h)).1
                    }
                };
                h.observe((now - t).max(0) as f64 / 1e6);
            }
        }
        self.store.push_chunk(&batch, &at);
        // Queryable from here on; a snapshot shares the rows, so this costs
        // a pointer pair per symbol.
        self.view.publish(self.store.snapshot());
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
        // The consumer awaits this handler before the writer gets the rows:
        // publish (a copy of the pruned offsets) at most every
        // `PUBLISH_EVERY`, not per chunk. `Observe` answers exactly.
        if self.published_at.elapsed() >= PUBLISH_EVERY {
            self.publish_state();
        }
    }
}

impl Handler<Committed> for TailActor {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Self::Context) {
        if msg.table != TRADES_TABLE {
            return;
        }
        match self.query_grace {
            None => self.prune(&msg.offsets),
            // Normally the query side's `QueryPinned` comes first, and this
            // drops nothing more.
            Some(grace) => {
                ctx.run_later(grace, move |tail, _| tail.prune(&msg.offsets));
            }
        }
    }
}

impl Handler<QueryPinned> for TailActor {
    type Result = ();

    fn handle(&mut self, msg: QueryPinned, _ctx: &mut Self::Context) {
        self.prune(&msg.offsets);
    }
}

impl Handler<Observe<TailState>> for TailActor {
    type Result = MessageResult<Observe<TailState>>;

    fn handle(&mut self, _: Observe<TailState>, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.store.state(self.max_rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::tail::TailError;
    use crate::query::tail::test_rows::{offsets, row, schema};

    /// Counts the early flushes the tail asks for.
    struct FakeWriter(usize);

    impl Actor for FakeWriter {
        type Context = Context<Self>;
    }

    impl Handler<Flush> for FakeWriter {
        type Result = Result<Option<i64>, crate::messages::writer::WriterError>;

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

    /// Every row with an arrival time is observed once into its exchange's
    /// lag series, across runs of one exchange and another.
    #[actix_rt::test]
    async fn each_row_is_observed_into_its_exchanges_lag() {
        let metrics = Metrics::new().unwrap();
        let tail = TailActor::new("c", 1_000, schema(), TailView::default())
            .with_metrics(metrics.clone())
            .start();
        let on = |exchange: &str, offset: i64| {
            let mut r = row(0, offset, "A");
            let mut t = (*r.trade).clone();
            t.exchange = exchange.to_string();
            r.trade = std::sync::Arc::new(t);
            r
        };
        // Offset 0 is a row without an arrival time: not observed.
        let rows = [("X", 0), ("X", 1), ("X", 2), ("Y", 3), ("Y", 4), ("X", 5)]
            .into_iter()
            .map(|(e, o)| on(e, o))
            .collect();
        tail.send(Tailed::Rows(rows)).await.unwrap();
        let count = |e: &str| {
            metrics
                .queryable_lag_seconds
                .with_label_values(&[e])
                .get_sample_count()
        };
        assert_eq!((count("X"), count("Y")), (3, 2));
    }

    #[actix_rt::test]
    async fn a_full_tail_asks_for_one_early_commit_and_keeps_every_row() {
        let writer = FakeWriter(0).start();
        let view = TailView::default();
        let tail = TailActor::new("c", 5, schema(), view.clone())
            .with_writer(writer.clone().recipient())
            .start();
        let all = crate::messages::tail::TailFilter::default();
        let observe = || async { tail.send(Observe::<TailState>::new()).await.unwrap() };
        tail.send(Tailed::Rows((0..4).map(|o| row(0, o, "A")).collect()))
            .await
            .unwrap();
        tail.send(Tailed::Rows((4..8).map(|o| row(0, o, "A")).collect()))
            .await
            .unwrap();
        tail.send(Tailed::Rows((8..9).map(|o| row(0, o, "A")).collect()))
            .await
            .unwrap();
        assert_eq!(
            writer.send(Count).await.unwrap(),
            1,
            "asked once, not per chunk"
        );
        assert_eq!(observe().await.rows, 9, "nothing is dropped over the bound");
        let rows = |since| -> usize {
            view.scan(&since, &all)
                .unwrap()
                .iter()
                .map(|b| b.num_rows())
                .sum()
        };
        assert_eq!(rows(offsets("c", &[])), 9, "published with each chunk");
        tail.send(Committed {
            table: TRADES_TABLE,
            snapshot_id: 1,
            offsets: offsets("c", &[(0, 7)]),
            rows: None,
        })
        .await
        .unwrap();
        let state = observe().await;
        assert_eq!(state.rows, 2);
        assert_eq!(rows(offsets("c", &[(0, 7)])), 2, "published with the prune");
        assert!(
            view.scan(&offsets("c", &[(0, 6)]), &all).is_err(),
            "a scan pinned below the commit is told it is stale"
        );
        assert_eq!(state.pruned.get("t", 0), Some(7));
        tail.send(Tailed::Rows((9..14).map(|o| row(0, o, "A")).collect()))
            .await
            .unwrap();
        assert_eq!(
            writer.send(Count).await.unwrap(),
            2,
            "asked again after a commit"
        );
    }

    /// With a query side, a commit's rows stay until the query side pins
    /// the new snapshot, so a scan pinned below the commit still finds
    /// them; without word from the query side they go after the grace.
    #[actix_rt::test]
    async fn with_a_query_side_a_commits_rows_stay_until_it_pins_or_the_grace_ends() {
        let view = TailView::default();
        let grace = std::time::Duration::from_millis(300);
        let tail = TailActor::new("c", 1000, schema(), view.clone())
            .with_query_pins(grace)
            .start();
        let all = crate::messages::tail::TailFilter::default();
        let rows = |since| -> Result<usize, TailError> {
            Ok(view.scan(&since, &all)?.iter().map(|b| b.num_rows()).sum())
        };
        tail.send(Tailed::Rows((0..10).map(|o| row(0, o, "A")).collect()))
            .await
            .unwrap();
        let commit = |snapshot_id, upto| Committed {
            table: TRADES_TABLE,
            snapshot_id,
            offsets: offsets("c", &[(0, upto)]),
            rows: None,
        };
        tail.send(commit(1, 4)).await.unwrap();
        assert_eq!(rows(offsets("c", &[])), Ok(10), "kept after the commit");
        tail.send(QueryPinned {
            offsets: offsets("c", &[(0, 4)]),
        })
        .await
        .unwrap();
        assert_eq!(rows(offsets("c", &[(0, 4)])), Ok(6));
        assert!(
            rows(offsets("c", &[])).is_err(),
            "pruned once the query side pins"
        );
        // No word from the query side: pruned after the grace all the same.
        let started = std::time::Instant::now();
        tail.send(commit(2, 7)).await.unwrap();
        assert_eq!(rows(offsets("c", &[(0, 4)])), Ok(6));
        while rows(offsets("c", &[(0, 4)])).is_ok() {
            assert!(
                started.elapsed() < grace * 20,
                "not pruned {:?} after the commit",
                started.elapsed()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(started.elapsed() >= grace, "{:?}", started.elapsed());
        assert_eq!(rows(offsets("c", &[(0, 7)])), Ok(3));
        // The first commit's own timer, long passed, dropped nothing more.
        assert_eq!(
            tail.send(Observe::<TailState>::new()).await.unwrap().rows,
            3
        );
    }
}
