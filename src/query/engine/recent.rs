//! `/v1/trades/recent`: the newest trades of one symbol or one instrument
//! since a start, read from the tail alone when it can fill the page, with
//! what the lake holds at the pinned snapshot learned once per snapshot
//! (`LakeNewest`) and the lake's rows of the window kept between pages
//! (`engine::window`); both by symbol and by instrument.

use super::*;

/// The newest timestamp of a window's trades (its symbol or instrument,
/// and exchange) at or after `from` in the lake at one snapshot, `None`
/// when it holds none. The lake at a snapshot never changes, so this stays
/// true for as long as queries pin that snapshot, and it answers the recent
/// page's two questions of the lake (rows at or after t? rows between the
/// window's start and t?) without reading it, unless the lake holds rows at
/// or after t.
#[derive(Debug, Clone, Copy)]
pub(super) struct LakeNewest {
    snapshot_id: i64,
    from: i64,
    newest: Option<i64>,
}

/// Windows whose `LakeNewest` is kept before older snapshots' are dropped.
const MAX_LAKE_FACTS: usize = 4096;

/// Which trades a recent window is about: a symbol, a normalized
/// instrument (across exchanges), or both; maybe one exchange. The key of
/// the engine's caches (`lake_newest`, `engine::window`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct WindowKey {
    pub(super) symbol: Option<String>,
    pub(super) instrument: Option<String>,
    pub(super) exchange: Option<String>,
}

/// A `/v1/trades/recent` request, by symbol or by instrument.
pub(super) struct RecentAsk {
    symbol: Option<String>,
    instrument: Option<String>,
    exchange: Option<String>,
    minutes: i64,
    limit: Option<usize>,
}

impl From<RecentRequest> for RecentAsk {
    fn from(r: RecentRequest) -> Self {
        Self {
            symbol: Some(r.symbol),
            instrument: None,
            exchange: r.exchange,
            minutes: r.minutes,
            limit: r.limit,
        }
    }
}

impl From<InstrumentRecentRequest> for RecentAsk {
    fn from(r: InstrumentRecentRequest) -> Self {
        Self {
            symbol: r.symbol,
            instrument: Some(r.instrument),
            exchange: r.exchange,
            minutes: r.minutes,
            limit: r.limit,
        }
    }
}

/// What `/v1/trades/recent` asks of the trades: one symbol or one
/// instrument (or both), maybe one exchange, from `start` on.
///
/// The tail is indexed by symbol only, so a window by instrument picks
/// the tail rows of every symbol in its time range (`tail_filter`) and
/// narrows them to the instrument exactly (`exact_tail`) before anything
/// counts them: the page logic below (the k-th newest tail timestamp, the
/// lake side read from it, the windows kept between pages) needs the
/// window's tail rows exactly, whatever names it.
pub(super) struct RecentWindow<'a> {
    symbol: Option<&'a str>,
    instrument: Option<&'a str>,
    exchange: Option<&'a str>,
    pub(super) start: i64,
}

impl<'a> RecentWindow<'a> {
    pub(super) fn new(key: &'a WindowKey, start: i64) -> Self {
        Self {
            symbol: key.symbol.as_deref(),
            instrument: key.instrument.as_deref(),
            exchange: key.exchange.as_deref(),
            start,
        }
    }

    /// Which window of the engine's caches this is.
    pub(super) fn key(&self) -> WindowKey {
        WindowKey {
            symbol: self.symbol.map(str::to_string),
            instrument: self.instrument.map(str::to_string),
            exchange: self.exchange.map(str::to_string),
        }
    }

    pub(super) fn preds(&self) -> Vec<Expr> {
        self.preds_from(self.start)
    }

    /// The window's predicates, with its start at `from`.
    pub(super) fn preds_from(&self, from: i64) -> Vec<Expr> {
        let mut preds = Vec::with_capacity(4);
        if let Some(s) = self.symbol {
            preds.push(col("symbol").eq(lit(s)));
        }
        if let Some(i) = self.instrument {
            preds.push(col("instrument").eq(lit(i)));
        }
        preds.push(col("timestamp").gt_eq(ts_lit(from)));
        if let Some(x) = self.exchange {
            preds.push(col("exchange").eq(lit(x)));
        }
        preds
    }

    /// The same, for picking tail rows (exact, inclusive bounds), but for
    /// the instrument, which the tail cannot pick by (`exact_tail`).
    fn tail_filter(&self) -> TailFilter {
        TailFilter {
            symbols: self.symbol.map(|s| [s.to_string()].into()),
            exchanges: self.exchange.map(|x| [x.to_string()].into()),
            start_us: Some(self.start),
            end_us: None,
        }
    }

    /// `pin` with its tail rows (picked by `tail_filter`) narrowed to the
    /// window's instrument, so that they are exactly the window's.
    fn exact_tail(&self, pin: Pin) -> Result<Pin, QueryError> {
        match self.instrument {
            None => Ok(pin),
            Some(i) => pin.narrowed(|b| rows_of_instrument(b, i)),
        }
    }
}

/// The rows of `batch` (trades) whose instrument is `instrument`; none
/// when the batch has no instrument column (rows from before it).
pub(super) fn rows_of_instrument(
    batch: &RecordBatch,
    instrument: &str,
) -> Result<RecordBatch, QueryError> {
    use arrow::array::StringArray;
    use arrow::compute::kernels::cmp::eq;
    let Some(column) = batch.column_by_name("instrument") else {
        return Ok(batch.slice(0, 0));
    };
    let mask = eq(column, &StringArray::new_scalar(instrument)).map_err(QueryError::internal)?;
    // A null (no instrument) is not a match: the filter drops it.
    arrow::compute::filter_record_batch(batch, &mask).map_err(QueryError::internal)
}

/// The first `n` of `batches` (trade rows of one schema) by (timestamp,
/// message_id) descending, the order of `trades_in_order(.., false, ..)`.
fn newest_first(batches: &[RecordBatch], n: usize) -> Result<Vec<RecordBatch>, QueryError> {
    use arrow::compute::{
        SortColumn, SortOptions, concat_batches, lexsort_to_indices, take_record_batch,
    };
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let schema = first.schema();
    // Lake rows come from DataFusion; give them the tail's field metadata.
    let rows: Vec<RecordBatch> = batches
        .iter()
        .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(QueryError::internal)?;
    let all = concat_batches(&schema, &rows).map_err(QueryError::internal)?;
    let desc = SortOptions {
        descending: true,
        nulls_first: false,
    };
    let key = |name: &str| -> Result<SortColumn, QueryError> {
        Ok(SortColumn {
            values: all
                .column_by_name(name)
                .ok_or_else(|| QueryError::Internal(format!("no {name} column")))?
                .clone(),
            options: Some(desc),
        })
    };
    let order = lexsort_to_indices(&[key("timestamp")?, key("message_id")?], Some(n))
        .map_err(QueryError::internal)?;
    Ok(vec![
        take_record_batch(&all, &order).map_err(QueryError::internal)?,
    ])
}

/// The newest `limit + 1` of `rows` (trade projections), held on the
/// answer memory; the sort's copy counts on it while it runs.
fn page_of(rows: &[RecordBatch], limit: usize, q: &Request<'_>) -> Result<Held, QueryError> {
    let sorting = q.memory.empty();
    q.memory.grow(
        &sorting,
        rows.iter().map(RecordBatch::get_array_memory_size).sum(),
        "sorting the page",
    )?;
    let page = newest_first(rows, limit + 1)?;
    drop(sorting);
    let held = q.memory.empty();
    for b in &page {
        q.memory.hold_batch(&held, b)?;
    }
    Ok(Held::new(page, held))
}

impl Engine {
    /// What a request (or background work with a request's limits) runs
    /// with: `cancel`, and answer memory within `api.max_memory_bytes`.
    pub(super) fn request<'a>(&self, cancel: &'a Cancel) -> Request<'a> {
        Request {
            cancel,
            memory: AnswerMemory::new(
                &self.ctx.runtime_env().memory_pool,
                self.limits.max_memory_bytes,
            ),
        }
    }

    /// Learns, at the pinned snapshot, what `/v1/trades/recent` knew of the
    /// lake at an older one (the newest trade of each symbol asked so far),
    /// so that a poller's first page after a commit need not read the lake
    /// for it. Background work: the query actor runs it on the commit
    /// runtime, below the ingest path.
    pub async fn learn_lake_facts(&self) {
        let Some(table) = self.pinned.get() else {
            return;
        };
        let pin = Pin::lake_at(table);
        let Some(id) = pin.snapshot_id() else {
            return;
        };
        let known: Vec<(WindowKey, i64)> = match self.lake_newest.lock() {
            Ok(c) => c
                .iter()
                .filter(|(_, k)| k.snapshot_id != id)
                .map(|(key, k)| (key.clone(), k.from))
                .collect(),
            Err(_) => return,
        };
        let lake = Arc::new(self.live.at(pin.clone()));
        // Background work, with a request's limits all the same.
        let cancel = Cancel::after(self.limits.timeout_ms);
        let q = self.request(&cancel);
        // The kept windows were carried to this snapshot before it was
        // pinned (`Engine::refresh`).
        for (key, from) in known {
            let window = RecentWindow::new(&key, from);
            // A window kept for these pages answers them (`recent`), so
            // what the lake's newest trade is would not be asked.
            if self.limits.recent_cache_bytes > 0 && self.window_kept(&window) {
                continue;
            }
            if let Err(e) = self.lake_newest(lake.clone(), id, &window, &q).await {
                tracing::debug!(window = ?key, error = %e, "query: could not learn the lake's newest trade");
            }
        }
    }

    pub(super) async fn recent(&self, r: RecentAsk, q: &Request<'_>) -> Result<Answer, QueryError> {
        let now = (self.clock)();
        let start = now - r.minutes * 60_000_000;
        let limit = r
            .limit
            .unwrap_or(self.limits.max_rows)
            .min(self.limits.max_rows);
        let key = WindowKey {
            symbol: r.symbol,
            instrument: r.instrument,
            exchange: r.exchange,
        };
        let window = RecentWindow::new(&key, start);
        let started = std::time::Instant::now();
        let pin = self
            .live
            .pin_now(&window.tail_filter())
            .await
            .map_err(df_err)?;
        let pin = window.exact_tail(pin)?;
        let scanned = rows_in(pin.rows());
        let snapshot_id = pin.snapshot_id();
        tracing::debug!(
            pin_ms = started.elapsed().as_secs_f64() * 1000.0,
            scanned,
            "recent: pinned, tail rows picked"
        );
        q.cancel.check()?;
        let kth = kth_newest_timestamp(pin.rows(), limit).map_err(df_err)?;
        // The lake's rows kept from an earlier page, carried to this
        // snapshot (`engine::window`); or read now and kept, when the tail
        // cannot fill the page alone.
        let from_window =
            if self.limits.recent_cache_bytes > 0 && (kth.is_none() || self.window_kept(&window)) {
                self.recent_with_window(&pin, &window, limit, q).await?
            } else {
                None
            };
        let (rows, truncated) = match (from_window, kth) {
            (Some(page), _) => page,
            (None, Some(t)) => self.recent_from_tail(pin, window, t, limit, q).await?,
            (None, None) => {
                // The tail cannot fill the page: the whole window, hybrid.
                let (df, _) = self.pinned_source(pin)?;
                // Newest first, so a cut at the row limit keeps the latest trades.
                let rows = trades_in_order(df, window.preds(), false, limit + 1, q).await?;
                let truncated = rows_in(&rows.batches) > limit;
                (rows, truncated)
            }
        };
        let batches = first_rows(rows.batches.clone(), limit);
        let head = json!({
            "source": "hybrid",
            "snapshot_id": snapshot_id,
            "tail_rows_scanned": scanned,
            "since": rfc3339(start),
            "count": rows_in(&batches),
            "truncated": truncated,
        });
        self.answer_shared(head, "trades", json_rows(&batches, &q.memory, q.cancel)?)
    }

    /// The page from the tail rows of `pin` and the lake's rows of the
    /// window (`lake_window`), sorted in memory: `None` when the lake's
    /// files cannot be read so (the caller reads the hybrid table).
    async fn recent_with_window(
        &self,
        pin: &Pin,
        window: &RecentWindow<'_>,
        limit: usize,
        q: &Request<'_>,
    ) -> Result<Option<(Held, bool)>, QueryError> {
        let started = std::time::Instant::now();
        let Some((lake, complete)) = self.lake_window(pin, window, pin.rows(), limit, q).await?
        else {
            return Ok(None);
        };
        q.cancel.check()?;
        let t1 = std::time::Instant::now();
        let rows = pin
            .rows()
            .iter()
            .chain(lake.iter())
            .map(trade_projection)
            .collect::<Result<Vec<_>, _>>()?;
        let page = page_of(&rows, limit, q)?;
        let truncated = rows_in(&page.batches) > limit || !complete;
        tracing::debug!(
            lake_ms = (t1 - started).as_secs_f64() * 1000.0,
            merge_ms = t1.elapsed().as_secs_f64() * 1000.0,
            tail_rows = rows_in(pin.rows()),
            lake_rows = rows_in(&lake),
            "recent page from the lake window"
        );
        Ok(Some((page, truncated)))
    }

    /// The newest `limit` rows of the window when the tail alone holds at
    /// least `limit` of them (`pin`'s rows, matching exactly), `t` being the
    /// timestamp of the `limit`-th newest: every row of the page is at or
    /// after `t` (see `kth_newest_timestamp`). So the page is the newest of
    /// the tail rows plus the lake rows at or after `t`, which the lake
    /// side usually prunes to nothing, and the window holds more than the
    /// page if that union does or the lake has a row before `t`. Both
    /// questions to the lake are answered by `lake_newest` unless the lake
    /// holds rows at or after `t`; then the two reads run together. The
    /// rows are sorted in memory, which counts on the answer memory; the
    /// page (at most `limit + 1` rows, the first `limit` of them the
    /// answer) is returned held.
    async fn recent_from_tail(
        &self,
        pin: Pin,
        window: RecentWindow<'_>,
        t: i64,
        limit: usize,
        q: &Request<'_>,
    ) -> Result<(Held, bool), QueryError> {
        let started = std::time::Instant::now();
        let lake = Arc::new(self.live.at(pin.lake_only()));
        // The window's predicates and one more on the timestamp.
        let with = |extra: Expr| {
            let mut p = window.preds();
            p.push(extra);
            p
        };
        // Whether the lake has rows between the start and t, when it is
        // known to hold none at or after t.
        let known: Option<bool> = match pin.snapshot_id() {
            // No snapshot: the lake holds nothing.
            None => Some(false),
            Some(id) => match self.lake_newest(lake.clone(), id, &window, q).await? {
                Some(None) => Some(false),
                Some(Some(m)) if m < t => Some(m >= window.start),
                // Unknown, or the lake has rows at or after t: read them.
                _ => None,
            },
        };
        let (newer, older) = match known {
            Some(older) => (Vec::new(), older),
            None => {
                let newer_lake = lake.clone();
                let newer = async {
                    let df = self.ctx.read_table(newer_lake).map_err(df_err)?;
                    trades_in_order(
                        df,
                        with(col("timestamp").gt_eq(ts_lit(t))),
                        false,
                        limit + 1,
                        q,
                    )
                    .await
                };
                let older = async {
                    let df = self.ctx.read_table(lake).map_err(df_err)?;
                    let df = filtered(df, with(col("timestamp").lt(ts_lit(t))))?
                        .limit(0, Some(1))
                        .and_then(|d| d.select(vec![col("timestamp")]))
                        .map_err(df_err)?;
                    let (rows, _) = collect(df, q, None).await?;
                    Ok::<_, QueryError>(rows_in(&rows.batches) > 0)
                };
                let (newer, older) = futures::try_join!(newer, older)?;
                (vec![newer], older)
            }
        };
        q.cancel.check()?;
        let t1 = std::time::Instant::now();
        let tail = pin.rows();
        let mut rows = Vec::new();
        for b in tail.iter().chain(newer.iter().flat_map(|h| &h.batches)) {
            rows.push(trade_projection(b)?);
        }
        let page = page_of(&rows, limit, q)?;
        let truncated = rows_in(&page.batches) > limit || older;
        // Where a slow page spent its time, for `RUST_LOG=ticklake::api=debug`.
        tracing::debug!(
            lake_ms = (t1 - started).as_secs_f64() * 1000.0,
            merge_ms = t1.elapsed().as_secs_f64() * 1000.0,
            tail_rows = rows_in(tail),
            lake_rows = newer.iter().map(|h| rows_in(&h.batches)).sum::<usize>(),
            lake_read = known.is_none(),
            "recent page from the tail"
        );
        Ok((page, truncated))
    }

    /// `LakeNewest` of the window's symbol at `snapshot_id`, read from the
    /// lake (`lake`, pinned there) unless known. `None` if it cannot be
    /// read as a timestamp (the caller then reads the lake itself).
    async fn lake_newest(
        &self,
        lake: Arc<HybridTable>,
        snapshot_id: i64,
        window: &RecentWindow<'_>,
        q: &Request<'_>,
    ) -> Result<Option<Option<i64>>, QueryError> {
        let key = window.key();
        let cached = self
            .lake_newest
            .lock()
            .ok()
            .and_then(|c| c.get(&key).copied())
            .filter(|k| k.snapshot_id == snapshot_id && k.from <= window.start);
        if let Some(k) = cached {
            // Rows at or after `from` include every row at or after start.
            return Ok(Some(k.newest.filter(|&m| m >= window.start)));
        }
        // A window kept at this snapshot knows it without a read, which
        // after a commit competed with the polls for the cores. Either
        // way it is learned from the window's start, where a later
        // `learn_lake_facts` asks it again.
        let newest = match self.kept_newest(&key, snapshot_id) {
            Some((from, newest)) if from <= window.start => newest.filter(|&m| m >= window.start),
            _ => {
                let df = self.ctx.read_table(lake).map_err(df_err)?;
                let df = filtered(df, window.preds())?
                    .aggregate(vec![], vec![max(col("timestamp")).alias("newest")])
                    .map_err(df_err)?;
                let (rows, _) = collect(df, q, None).await?;
                match rows.batches.first().map(|b| b.column(0)) {
                    Some(c) if c.len() == 1 => match ScalarValue::try_from_array(c, 0) {
                        Ok(ScalarValue::TimestampMicrosecond(v, _)) => v,
                        _ => return Ok(None),
                    },
                    _ => return Ok(None),
                }
            }
        };
        if let Ok(mut c) = self.lake_newest.lock() {
            // One entry per symbol asked for, the latest learned; many
            // symbols: keep those of this snapshot only.
            if c.len() >= MAX_LAKE_FACTS {
                c.retain(|_, k| k.snapshot_id == snapshot_id);
            }
            c.insert(
                key,
                LakeNewest {
                    snapshot_id,
                    from: window.start,
                    newest,
                },
            );
        }
        Ok(Some(newest))
    }

    /// Forgets what `/v1/trades/recent` learned of the lake; for
    /// `ticklake bench-api latency`'s cold runs.
    pub fn forget_lake_facts(&self) {
        if let Ok(mut c) = self.lake_newest.lock() {
            c.clear();
        }
        if let Ok(mut c) = self.windows.lock() {
            c.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use actix::Actor;

    use super::*;
    use crate::actors::tail::TailActor;
    use crate::config::Config;
    use crate::lake::commit::{KafkaOffsets, append};
    use crate::lake::schema::TRADES_TABLE;
    use crate::lake::{self, TableKind};
    use crate::messages::consumer::Committed;
    use crate::messages::query::{InstrumentRecentRequest, QueryRequest};
    use crate::messages::tail::{TailRow, Tailed};
    use crate::model::{Dec8, TradeV2};

    const NOW: i64 = 1_800_000_000_000_000;
    const MINUTE: i64 = 60_000_000;
    const TOPIC: &str = "t.trades";
    const LAKE: usize = 600;
    const TAIL: usize = 900;
    const MAX_ROWS: usize = 400;

    /// Trade `i`: three exchanges, Kraken naming BTC-USDT by two symbols,
    /// one trade in eleven without instrument (from before it). Times on a
    /// coarse grid (ties, broken by message id), the lake over minutes
    /// -20..-5 and the tail over -5..0, one tail trade in seven late, behind
    /// trades already in the lake.
    fn trade(i: usize, tail: bool) -> TradeV2 {
        let btc = i % 5 < 3;
        let (exchange, symbol) = match (i % 3, btc) {
            (0, true) => ("BINANCE", "BTCUSDT"),
            (0, false) => ("BINANCE", "ETHUSDT"),
            (1, true) if i.is_multiple_of(2) => ("KRAKEN", "XBT/USDT"),
            (1, true) => ("KRAKEN", "BTC/USDT"),
            (1, false) => ("KRAKEN", "ETH/USDT"),
            (_, true) => ("COINBASE", "BTC-USDT"),
            (_, false) => ("COINBASE", "ETH-USDT"),
        };
        let instrument =
            (!i.is_multiple_of(11)).then_some(if btc { "BTC-USDT" } else { "ETH-USDT" });
        let grid = 500_000;
        let ts = if tail {
            let k = (i - LAKE) as i64;
            let late = if k % 7 == 0 { 10 * MINUTE } else { 0 };
            NOW - 5 * MINUTE + k * (5 * MINUTE / TAIL as i64) - late
        } else {
            NOW - 20 * MINUTE + i as i64 * (15 * MINUTE / LAKE as i64)
        };
        TradeV2::builder(exchange, symbol, &i.to_string(), ts / grid * grid)
            .price(Dec8::from_unscaled(1_000_000 + i as i64).unwrap())
            .quantity(Dec8::from_unscaled(1).unwrap())
            .instrument(instrument)
            .build()
    }

    /// The newest `limit` message ids of the window by brute force, and
    /// whether more matched.
    fn truth(
        all: &[TradeV2],
        instrument: &str,
        exchange: Option<&str>,
        minutes: i64,
        limit: usize,
    ) -> (Vec<String>, bool) {
        let mut m: Vec<&TradeV2> = all
            .iter()
            .filter(|t| {
                t.instrument.as_deref() == Some(instrument)
                    && exchange.is_none_or(|x| t.exchange == x)
                    && t.timestamp_us >= NOW - minutes * MINUTE
            })
            .collect();
        m.sort_by(|a, b| (b.timestamp_us, &b.message_id).cmp(&(a.timestamp_us, &a.message_id)));
        let truncated = m.len() > limit;
        let ids = m.into_iter().take(limit).map(|t| t.message_id.clone());
        (ids.collect(), truncated)
    }

    struct Fixture {
        engine: Engine,
        catalog: Arc<dyn iceberg::Catalog>,
        schema: arrow::datatypes::SchemaRef,
        tail: actix::Addr<TailActor>,
        all: Vec<TradeV2>,
        cfg: Config,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        async fn new(cache_bytes: usize) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = Config::default().under(dir.path());
            cfg.api.max_rows = MAX_ROWS;
            cfg.api.recent_cache_bytes = cache_bytes;
            let catalog = lake::open_catalog(&cfg).await.unwrap();
            let table = lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
                .await
                .unwrap();
            let schema = lake::batch::arrow_schema(table.metadata().current_schema()).unwrap();
            let all: Vec<TradeV2> = (0..LAKE + TAIL).map(|i| trade(i, i >= LAKE)).collect();
            let view = crate::query::tail::TailView::default();
            let tail = TailActor::new("test", 1_000_000, schema.clone(), view.clone()).start();
            let rows = (LAKE..LAKE + TAIL)
                .map(|i| TailRow {
                    topic: TOPIC.into(),
                    partition: 0,
                    offset: i as i64,
                    trade: Arc::new(all[i].clone()),
                })
                .collect();
            tail.send(Tailed::Rows(rows)).await.unwrap();
            let engine = crate::query::session::engine(&cfg, Some(view))
                .await
                .unwrap()
                .with_clock(Arc::new(|| NOW));
            let f = Self {
                engine,
                catalog,
                schema,
                tail,
                all,
                cfg,
                _dir: dir,
            };
            // Two commits, as the writer makes them.
            f.commit(0, LAKE / 2).await;
            f.commit(LAKE / 2, LAKE).await;
            f.engine.refresh().await;
            f
        }

        /// Commits trades `from..to` as the writer does and tells the tail.
        async fn commit(&self, from: usize, to: usize) {
            let rows = self.all[from..to].to_vec();
            let mut offsets = KafkaOffsets {
                cluster_id: "test".into(),
                ..Default::default()
            };
            offsets.set(TOPIC, 0, to as i64);
            let batch = lake::batch::trades_batch(&self.schema, &rows).unwrap();
            let ident = lake::table_ident(&self.cfg, TableKind::Trades);
            let c = append(
                self.catalog.as_ref(),
                &ident,
                Some(&batch),
                &offsets,
                1 << 27,
            )
            .await
            .unwrap();
            self.tail
                .send(Committed {
                    table: TRADES_TABLE,
                    snapshot_id: c.snapshot_id,
                    offsets,
                    rows: None,
                })
                .await
                .unwrap();
        }

        /// Every page size of every window against brute force; how many.
        async fn check_every_page(&self, tail_from: usize) -> usize {
            let mut checked = 0;
            for instrument in ["BTC-USDT", "ETH-USDT"] {
                for exchange in [None, Some("KRAKEN")] {
                    // Widest first: later windows are served from what the
                    // widest one kept.
                    for minutes in [30, 6, 1] {
                        let in_tail = truth(
                            &self.all[tail_from..],
                            instrument,
                            exchange,
                            minutes,
                            usize::MAX,
                        )
                        .0
                        .len();
                        let mut limits = vec![1, 2, 7, 100, MAX_ROWS];
                        limits.extend([in_tail.saturating_sub(1), in_tail, in_tail + 1]);
                        limits.retain(|l| (1..=MAX_ROWS).contains(l));
                        for limit in limits {
                            let req = QueryRequest::InstrumentRecent(InstrumentRecentRequest {
                                instrument: instrument.into(),
                                symbol: None,
                                exchange: exchange.map(str::to_string),
                                minutes,
                                limit: Some(limit),
                            });
                            let a = self.engine.run(req).await.unwrap();
                            let v: Value = serde_json::from_str(&a.text()).unwrap();
                            let trades = v["trades"].as_array().unwrap();
                            let got: Vec<&str> = trades
                                .iter()
                                .map(|t| t["message_id"].as_str().unwrap())
                                .collect();
                            let (want, truncated) =
                                truth(&self.all, instrument, exchange, minutes, limit);
                            let what =
                                format!("{instrument} {exchange:?} {minutes} min, limit {limit}");
                            assert_eq!(got, want, "{what}");
                            assert_eq!(v["truncated"], Value::Bool(truncated), "{what}");
                            assert!(
                                trades.iter().all(|t| t["instrument"] == instrument),
                                "{what}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
            checked
        }
    }

    /// `/v1/trades/recent?instrument=` is exact at every page size, across
    /// exchanges and symbols, with and without the kept windows, and after
    /// commits move tail rows into the lake (learned at once, and met at
    /// the next page).
    async fn instrument_pages_equal_brute_force(cache_bytes: usize) {
        let f = Fixture::new(cache_bytes).await;
        // The fixture reaches the cases it is about: pages the tail fills
        // alone, pages it cannot, windows reaching into the lake, and rows
        // without instrument among them.
        let (full, _) = truth(&f.all, "BTC-USDT", None, 30, MAX_ROWS);
        assert_eq!(full.len(), MAX_ROWS);
        let (kraken, _) = truth(&f.all, "ETH-USDT", Some("KRAKEN"), 30, MAX_ROWS);
        assert!(!kraken.is_empty() && kraken.len() < MAX_ROWS);
        assert!(f.all.iter().any(|t| t.instrument.is_none()));
        let mut checked = f.check_every_page(LAKE).await;
        let counts = |f: &Fixture| -> HashMap<&'static str, u64> {
            f.engine.recent_window_counts().into_iter().collect()
        };
        let c1 = counts(&f);
        if cache_bytes > 0 {
            assert!(c1["read"] > 0 && c1["kept"] > 0, "{c1:?}");
        } else {
            assert!(c1.values().all(|&n| n == 0), "{c1:?}");
        }
        // Part of the tail committed, learned of at once.
        f.commit(LAKE, LAKE + 400).await;
        f.engine.refresh().await;
        f.engine.learn_lake_facts().await;
        checked += f.check_every_page(LAKE + 400).await;
        let c2 = counts(&f);
        if cache_bytes > 0 {
            // The kept windows were carried to the new snapshot (a window
            // the tail filled alone before may now be read: the tail is
            // smaller).
            assert!(c2["carried"] > c1["carried"], "{c2:?}");
        }
        // Another, met at the next page.
        f.commit(LAKE + 400, LAKE + 700).await;
        f.engine.refresh().await;
        checked += f.check_every_page(LAKE + 700).await;
        assert!(checked > 100, "{checked}");
    }

    #[actix_rt::test]
    async fn instrument_pages_equal_brute_force_with_kept_windows() {
        instrument_pages_equal_brute_force(64 << 20).await;
    }

    #[actix_rt::test]
    async fn instrument_pages_equal_brute_force_without_kept_windows() {
        instrument_pages_equal_brute_force(0).await;
    }

    /// Tail rows picked for a window by instrument are narrowed to it
    /// exactly: other instruments and rows without one are dropped.
    #[test]
    fn rows_of_an_instrument_are_exactly_those() {
        let schema = crate::query::tail::test_rows::schema();
        let trades: Vec<TradeV2> = [Some("BTC-USD"), None, Some("ETH-USD"), Some("BTC-USD")]
            .iter()
            .enumerate()
            .map(|(i, inst)| {
                TradeV2::builder("X", "S", &i.to_string(), i as i64)
                    .instrument(*inst)
                    .build()
            })
            .collect();
        let refs: Vec<&TradeV2> = trades.iter().collect();
        let batch = crate::lake::batch::trades_batch_as_is(&schema, &refs).unwrap();
        let kept = rows_of_instrument(&batch, "BTC-USD").unwrap();
        let ids = kept
            .column_by_name("trade_id")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap()
            .iter()
            .flatten()
            .map(str::to_string)
            .collect::<Vec<_>>();
        assert_eq!(ids, ["X-0", "X-3"]);
        assert_eq!(
            rows_of_instrument(&batch, "DOGE-USD").unwrap().num_rows(),
            0
        );
        // Rows of a schema without the column have no instrument.
        let old = batch.project(&[0, 1, 2]).unwrap();
        assert_eq!(rows_of_instrument(&old, "BTC-USD").unwrap().num_rows(), 0);
    }
}
