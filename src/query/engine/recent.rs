//! `/v1/trades/recent`: the newest trades of one symbol since a start,
//! read from the tail alone when it can fill the page, with what the lake
//! holds at the pinned snapshot learned once per snapshot (`LakeNewest`).

use super::*;

/// The newest timestamp of a symbol's (and exchange's) trades at or after
/// `from` in the lake at one snapshot, `None` when it holds none. The lake
/// at a snapshot never changes, so this stays true for as long as queries
/// pin that snapshot, and it answers the recent page's two questions of the
/// lake (rows at or after t? rows between the window's start and t?)
/// without reading it, unless the lake holds rows at or after t.
#[derive(Debug, Clone, Copy)]
pub(super) struct LakeNewest {
    snapshot_id: i64,
    from: i64,
    newest: Option<i64>,
}

/// Symbols whose `LakeNewest` is kept before older snapshots' are dropped.
const MAX_LAKE_FACTS: usize = 4096;

/// What `/v1/trades/recent` asks of the trades: one symbol, maybe one
/// exchange, from `start` on.
pub(super) struct RecentWindow<'a> {
    symbol: &'a str,
    exchange: Option<&'a str>,
    pub(super) start: i64,
}

impl<'a> RecentWindow<'a> {
    pub(super) fn new(symbol: &'a str, exchange: Option<&'a str>, start: i64) -> Self {
        Self {
            symbol,
            exchange,
            start,
        }
    }

    /// Which window of the engine's caches this is: (symbol, exchange).
    pub(super) fn key(&self) -> (String, Option<String>) {
        (self.symbol.to_string(), self.exchange.map(str::to_string))
    }

    pub(super) fn preds(&self) -> Vec<Expr> {
        self.preds_from(self.start)
    }

    /// The window's predicates, with its start at `from`.
    pub(super) fn preds_from(&self, from: i64) -> Vec<Expr> {
        let mut preds = vec![
            col("symbol").eq(lit(self.symbol)),
            col("timestamp").gt_eq(ts_lit(from)),
        ];
        if let Some(x) = self.exchange {
            preds.push(col("exchange").eq(lit(x)));
        }
        preds
    }

    /// The same, for picking tail rows (exact, inclusive bounds).
    fn tail_filter(&self) -> TailFilter {
        TailFilter {
            symbols: Some([self.symbol.to_string()].into()),
            exchanges: self.exchange.map(|x| [x.to_string()].into()),
            start_us: Some(self.start),
            end_us: None,
        }
    }
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
        let known: Vec<((String, Option<String>), i64)> = match self.lake_newest.lock() {
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
        let q = Request {
            cancel: &cancel,
            memory: AnswerMemory::new(
                &self.ctx.runtime_env().memory_pool,
                self.limits.max_memory_bytes,
            ),
        };
        self.refresh_windows(&pin, &q).await;
        for ((symbol, exchange), from) in known {
            let window = RecentWindow::new(&symbol, exchange.as_deref(), from);
            // A window kept for these pages answers them (`recent`), so
            // what the lake's newest trade is would not be asked.
            if self.limits.recent_cache_bytes > 0 && self.window_kept(&window) {
                continue;
            }
            if let Err(e) = self.lake_newest(lake.clone(), id, &window, &q).await {
                tracing::debug!(symbol, error = %e, "query: could not learn the lake's newest trade");
            }
        }
    }

    pub(super) async fn recent(
        &self,
        r: RecentRequest,
        q: &Request<'_>,
    ) -> Result<Answer, QueryError> {
        let now = (self.clock)();
        let start = now - r.minutes * 60_000_000;
        let limit = r
            .limit
            .unwrap_or(self.limits.max_rows)
            .min(self.limits.max_rows);
        let window = RecentWindow::new(&r.symbol, r.exchange.as_deref(), start);
        let started = std::time::Instant::now();
        let pin = self
            .live
            .pin_now(&window.tail_filter())
            .await
            .map_err(df_err)?;
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
        answer(head, "trades", json_rows(&batches, &q.memory, q.cancel)?)
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
        let Some((lake, complete)) = self.lake_window(pin, window, limit, q).await? else {
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
        let df = self.ctx.read_table(lake).map_err(df_err)?;
        let df = filtered(df, window.preds())?
            .aggregate(vec![], vec![max(col("timestamp")).alias("newest")])
            .map_err(df_err)?;
        let (rows, _) = collect(df, q, None).await?;
        let newest = match rows.batches.first().map(|b| b.column(0)) {
            Some(c) if c.len() == 1 => match ScalarValue::try_from_array(c, 0) {
                Ok(ScalarValue::TimestampMicrosecond(v, _)) => v,
                _ => return Ok(None),
            },
            _ => return Ok(None),
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
