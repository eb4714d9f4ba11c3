//! The queries behind the `/v1` endpoints, on one DataFusion session over
//! the lake with `market.trades_live` (the hybrid table) registered. Every
//! value a client passes reaches DataFusion as a typed literal through the
//! DataFrame API, never as SQL text; only `/v1/sql` parses SQL, behind the
//! read-only guard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::functions::datetime::expr_fn::date_bin;
use datafusion::functions_aggregate::expr_fn::{count, first_value, last_value, max, min, sum};
use datafusion::logical_expr::utils::conjunction;
use datafusion::prelude::{DataFrame, Expr, SessionContext, col, lit};
use futures::StreamExt;
use iceberg::{Catalog, TableIdent};
use iceberg_datafusion::IcebergStaticTableProvider;
use serde_json::{Value, json};

use super::hybrid::{HybridTable, Pin, PinnedTable, ScanInfo, kth_newest_timestamp};
use super::json::{JsonRows, json_rows, split_rows};
use super::sql_guard;
use crate::config::ApiConfig;
use crate::lake::commit::OFFSETS_PROPERTY;
use crate::messages::query::{
    Answer, Cursor, OhlcvRequest, QueryError, QueryRequest, RecentRequest, TradesRequest,
};
use crate::messages::tail::TailFilter;
use crate::model::now_us;

/// The wall clock in UTC microseconds; tests fix it.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// `v` (an object) as an answer.
fn answer_of(v: &Value) -> Result<Answer, QueryError> {
    serde_json::to_string(v)
        .map(Answer::from_json_text)
        .map_err(QueryError::internal)
}

/// A JSON object of `head`'s fields (an object) plus `key` holding `rows`
/// (a JSON array, as text).
fn answer(head: Value, key: &str, rows: JsonRows) -> Result<Answer, QueryError> {
    let head_text = answer_of(&head)?.into_string();
    let key = serde_json::to_string(key).map_err(QueryError::internal)?;
    // One allocation: the rows can be megabytes.
    let mut text = String::with_capacity(head_text.len() + key.len() + rows.0.len() + 2);
    text.push_str(&head_text);
    if !head.is_object() || text.pop() != Some('}') {
        return Err(QueryError::Internal(
            "an answer's head is not an object".into(),
        ));
    }
    if text.len() > 1 {
        text.push(',');
    }
    text.push_str(&key);
    text.push(':');
    text.push_str(&rows.0);
    text.push('}');
    Ok(Answer::from_json_text(text))
}

fn rows_in(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// The first `n` rows of `batches`.
fn first_rows(batches: Vec<RecordBatch>, n: usize) -> Vec<RecordBatch> {
    split_rows(&batches, n).0
}

pub struct Engine {
    ctx: SessionContext,
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    live: HybridTable,
    pinned: PinnedTable,
    limits: ApiConfig,
    clock: Clock,
    /// Per (symbol, exchange) asked of `/v1/trades/recent`: the newest
    /// timestamp the lake holds at one snapshot (`LakeNewest`).
    lake_newest: Mutex<HashMap<(String, Option<String>), LakeNewest>>,
}

/// The newest timestamp of a symbol's (and exchange's) trades at or after
/// `from` in the lake at one snapshot, `None` when it holds none. The lake
/// at a snapshot never changes, so this stays true for as long as queries
/// pin that snapshot, and it answers the recent page's two questions of the
/// lake (rows at or after t? rows between the window's start and t?)
/// without reading it, unless the lake holds rows at or after t.
#[derive(Debug, Clone, Copy)]
struct LakeNewest {
    snapshot_id: i64,
    from: i64,
    newest: Option<i64>,
}

/// Symbols whose `LakeNewest` is kept before older snapshots' are dropped.
const MAX_LAKE_FACTS: usize = 4096;

fn ts_lit(us: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(us),
        Some("+00:00".into()),
    ))
}

/// A query the user got wrong (unknown column, type mismatch) is theirs
/// to fix; running out of the query memory is a capacity limit; anything
/// else is ours.
fn df_err(e: DataFusionError) -> QueryError {
    match e.find_root() {
        DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::SQL(..)
        | DataFusionError::NotImplemented(_) => QueryError::InvalidQuery(e.find_root().to_string()),
        DataFusionError::ResourcesExhausted(m) => QueryError::Unavailable(m.clone()),
        _ => QueryError::Internal(e.to_string()),
    }
}

fn rfc3339(us: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

/// Columns `/v1/trades` returns. Prices and quantities are written as JSON
/// strings (`super::json`), so they stay exact: a JSON number would be read
/// as a float by most clients.
const TRADE_COLUMNS: [&str; 11] = [
    "message_id",
    "trade_id",
    "symbol",
    "exchange",
    "asset_class",
    "timestamp",
    "ingestion_timestamp",
    "price",
    "quantity",
    "currency",
    "side",
];

/// What `/v1/trades/recent` asks of the trades: one symbol, maybe one
/// exchange, from `start` on.
struct RecentWindow<'a> {
    symbol: &'a str,
    exchange: Option<&'a str>,
    start: i64,
}

impl RecentWindow<'_> {
    fn preds(&self) -> Vec<Expr> {
        let mut preds = vec![
            col("symbol").eq(lit(self.symbol)),
            col("timestamp").gt_eq(ts_lit(self.start)),
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

fn trade_columns() -> Vec<Expr> {
    TRADE_COLUMNS.iter().map(|c| col(*c)).collect()
}

/// `batch` (tail rows, or an answer's rows) with the columns of
/// `TRADE_COLUMNS`, in that order.
fn trade_projection(batch: &RecordBatch) -> Result<RecordBatch, QueryError> {
    let schema = batch.schema();
    let indices = TRADE_COLUMNS
        .iter()
        .map(|c| schema.index_of(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(QueryError::internal)?;
    batch.project(&indices).map_err(QueryError::internal)
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

impl Engine {
    pub fn new(
        ctx: SessionContext,
        catalog: Arc<dyn Catalog>,
        ident: TableIdent,
        live: HybridTable,
        pinned: PinnedTable,
        limits: ApiConfig,
    ) -> Self {
        Self {
            ctx,
            catalog,
            ident,
            live,
            pinned,
            limits,
            clock: Arc::new(now_us),
            lake_newest: Mutex::new(HashMap::new()),
        }
    }

    /// The same engine reading "now" (for `/v1/trades/recent`) from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The Arrow schema of `market.trades_live` (the trades table's).
    pub fn trades_schema(&self) -> arrow::datatypes::SchemaRef {
        self.live.schema()
    }

    /// The session, for the CLI and tests.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Loads the table's newest snapshot for later scans to pin.
    pub async fn refresh(&self) {
        match self.catalog.load_table(&self.ident).await {
            Ok(t) => self.pinned.set(t),
            Err(e) => tracing::warn!(error = %e, "query: reloading the trades table failed"),
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
        let known: Vec<((String, Option<String>), i64)> = match self.lake_newest.lock() {
            Ok(c) => c
                .iter()
                .filter(|(_, k)| k.snapshot_id != id)
                .map(|(key, k)| (key.clone(), k.from))
                .collect(),
            Err(_) => return,
        };
        let lake = Arc::new(self.live.at(pin));
        for ((symbol, exchange), from) in known {
            let window = RecentWindow {
                symbol: &symbol,
                exchange: exchange.as_deref(),
                start: from,
            };
            if let Err(e) = self.lake_newest(lake.clone(), id, &window).await {
                tracing::debug!(symbol, error = %e, "query: could not learn the lake's newest trade");
            }
        }
    }

    /// Runs one request within the configured time limit.
    pub async fn run(&self, req: QueryRequest) -> Result<Answer, QueryError> {
        let ms = self.limits.timeout_ms;
        let fut = async {
            match req {
                QueryRequest::Trades(r) => self.trades(r).await,
                QueryRequest::Recent(r) => self.recent(r).await,
                QueryRequest::Ohlcv(r) => self.ohlcv(r).await,
                QueryRequest::Symbols => self.symbols().await,
                QueryRequest::Snapshots => self.snapshots().await,
                QueryRequest::Sql(sql) => self.sql(&sql).await,
            }
        };
        tokio::time::timeout(Duration::from_millis(ms), fut)
            .await
            .unwrap_or(Err(QueryError::Timeout(ms)))
    }

    /// The hybrid table, recording what its scan read, or the lake at one
    /// snapshot (time travel).
    async fn source(
        &self,
        snapshot_id: Option<i64>,
    ) -> Result<(DataFrame, Arc<Mutex<ScanInfo>>, &'static str), QueryError> {
        let info = Arc::new(Mutex::new(ScanInfo::default()));
        let (provider, source): (Arc<dyn TableProvider>, _) = match snapshot_id {
            None => (Arc::new(self.live.with_info(info.clone())), "hybrid"),
            Some(id) => {
                let table = self
                    .catalog
                    .load_table(&self.ident)
                    .await
                    .map_err(QueryError::internal)?;
                if table.metadata().snapshot_by_id(id).is_none() {
                    return Err(QueryError::NotFound(format!(
                        "snapshot {id} does not exist in {}",
                        self.ident
                    )));
                }
                if let Ok(mut i) = info.lock() {
                    i.snapshot_id = Some(id);
                }
                let p = IcebergStaticTableProvider::try_new_from_table_snapshot(table, id)
                    .await
                    .map_err(QueryError::internal)?;
                (Arc::new(p), "lake")
            }
        };
        Ok((self.ctx.read_table(provider).map_err(df_err)?, info, source))
    }

    /// The hybrid table at a pin taken beforehand.
    fn pinned_source(&self, pin: Pin) -> Result<(DataFrame, Arc<Mutex<ScanInfo>>), QueryError> {
        let info = Arc::new(Mutex::new(ScanInfo::default()));
        let provider = Arc::new(self.live.with_info(info.clone()).at(pin));
        Ok((self.ctx.read_table(provider).map_err(df_err)?, info))
    }

    fn read_info(info: &Mutex<ScanInfo>) -> ScanInfo {
        info.lock().map(|i| i.clone()).unwrap_or_default()
    }

    async fn trades(&self, r: TradesRequest) -> Result<Answer, QueryError> {
        let limit = r
            .limit
            .unwrap_or(self.limits.default_limit)
            .min(self.limits.max_rows);
        let (df, info, source) = self.source(r.snapshot_id).await?;
        let mut preds = Vec::new();
        if let Some(s) = &r.symbol {
            preds.push(col("symbol").eq(lit(s.as_str())));
        }
        if let Some(x) = &r.exchange {
            preds.push(col("exchange").eq(lit(x.as_str())));
        }
        if let Some(s) = r.start_us {
            preds.push(col("timestamp").gt_eq(ts_lit(s)));
        }
        if let Some(e) = r.end_us {
            preds.push(col("timestamp").lt(ts_lit(e)));
        }
        if let Some(c) = &r.cursor {
            preds.push(
                col("timestamp")
                    .gt(ts_lit(c.timestamp_us))
                    .or(col("timestamp")
                        .eq(ts_lit(c.timestamp_us))
                        .and(col("message_id").gt(lit(c.message_id.as_str())))),
            );
        }
        let batches = trades_in_order(df, preds, true, limit + 1).await?;
        let next_cursor = if rows_in(&batches) > limit {
            cursor_at(&batches, limit - 1)?.map(|c| c.render())
        } else {
            None
        };
        let batches = first_rows(batches, limit);
        let i = Self::read_info(&info);
        let head = json!({
            "source": source,
            "snapshot_id": i.snapshot_id,
            "tail_rows_scanned": i.tail_rows,
            "count": rows_in(&batches),
            "next_cursor": next_cursor,
        });
        answer(head, "trades", json_rows(&batches)?)
    }

    async fn recent(&self, r: RecentRequest) -> Result<Answer, QueryError> {
        let now = (self.clock)();
        let start = now - r.minutes * 60_000_000;
        let limit = r
            .limit
            .unwrap_or(self.limits.max_rows)
            .min(self.limits.max_rows);
        let window = RecentWindow {
            symbol: &r.symbol,
            exchange: r.exchange.as_deref(),
            start,
        };
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
        let (batches, truncated) = match kth_newest_timestamp(pin.rows(), limit).map_err(df_err)? {
            Some(t) => self.recent_from_tail(pin, window, t, limit).await?,
            None => {
                // The tail cannot fill the page: the whole window, hybrid.
                let (df, _) = self.pinned_source(pin)?;
                // Newest first, so a cut at the row limit keeps the latest trades.
                let batches = trades_in_order(df, window.preds(), false, limit + 1).await?;
                let truncated = rows_in(&batches) > limit;
                (first_rows(batches, limit), truncated)
            }
        };
        let head = json!({
            "source": "hybrid",
            "snapshot_id": snapshot_id,
            "tail_rows_scanned": scanned,
            "since": rfc3339(start),
            "count": rows_in(&batches),
            "truncated": truncated,
        });
        answer(head, "trades", json_rows(&batches)?)
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
    /// rows are sorted in memory.
    async fn recent_from_tail(
        &self,
        pin: Pin,
        window: RecentWindow<'_>,
        t: i64,
        limit: usize,
    ) -> Result<(Vec<RecordBatch>, bool), QueryError> {
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
            Some(id) => match self.lake_newest(lake.clone(), id, &window).await? {
                Some(None) => Some(false),
                Some(Some(m)) if m < t => Some(m >= window.start),
                // Unknown, or the lake has rows at or after t: read them.
                _ => None,
            },
        };
        let (newer, older) = match known {
            Some(older) => (Vec::new(), older),
            None => {
                let newer = {
                    let df = self.ctx.read_table(lake.clone()).map_err(df_err)?;
                    trades_in_order(
                        df,
                        with(col("timestamp").gt_eq(ts_lit(t))),
                        false,
                        limit + 1,
                    )
                };
                let older = async {
                    let df = self.ctx.read_table(lake).map_err(df_err)?;
                    let batches = filtered(df, with(col("timestamp").lt(ts_lit(t))))?
                        .limit(0, Some(1))
                        .and_then(|d| d.select(vec![col("timestamp")]))
                        .map_err(df_err)?
                        .collect()
                        .await
                        .map_err(df_err)?;
                    Ok::<_, QueryError>(rows_in(&batches) > 0)
                };
                futures::try_join!(newer, older)?
            }
        };
        let t1 = std::time::Instant::now();
        let tail = pin.rows();
        let mut rows = Vec::with_capacity(tail.len() + newer.len());
        for b in tail.iter().chain(&newer) {
            rows.push(trade_projection(b)?);
        }
        let page = newest_first(&rows, limit + 1)?;
        let truncated = rows_in(&page) > limit || older;
        // Where a slow page spent its time, for `RUST_LOG=ticklake::api=debug`.
        tracing::debug!(
            lake_ms = (t1 - started).as_secs_f64() * 1000.0,
            merge_ms = t1.elapsed().as_secs_f64() * 1000.0,
            tail_rows = rows_in(tail),
            lake_rows = rows_in(&newer),
            lake_read = known.is_none(),
            "recent page from the tail"
        );
        Ok((first_rows(page, limit), truncated))
    }

    /// `LakeNewest` of the window's symbol at `snapshot_id`, read from the
    /// lake (`lake`, pinned there) unless known. `None` if it cannot be
    /// read as a timestamp (the caller then reads the lake itself).
    async fn lake_newest(
        &self,
        lake: Arc<HybridTable>,
        snapshot_id: i64,
        window: &RecentWindow<'_>,
    ) -> Result<Option<Option<i64>>, QueryError> {
        let key = (
            window.symbol.to_string(),
            window.exchange.map(str::to_string),
        );
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
        let batches = filtered(df, window.preds())?
            .aggregate(vec![], vec![max(col("timestamp")).alias("newest")])
            .map_err(df_err)?
            .collect()
            .await
            .map_err(df_err)?;
        let newest = match batches.first().map(|b| b.column(0)) {
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
    }

    async fn ohlcv(&self, r: OhlcvRequest) -> Result<Answer, QueryError> {
        let step = r.interval.micros();
        let bars = r.end_us.saturating_sub(r.start_us).saturating_add(step - 1) / step;
        if bars > self.limits.max_rows as i64 {
            return Err(QueryError::bad(
                "interval",
                format!(
                    "{} bars of {} between start and end exceed the limit of {}",
                    bars,
                    r.interval.as_str(),
                    self.limits.max_rows
                ),
            ));
        }
        let (df, info, source) = self.source(None).await?;
        let mut preds = vec![
            col("symbol").eq(lit(r.symbol.as_str())),
            col("timestamp").gt_eq(ts_lit(r.start_us)),
            col("timestamp").lt(ts_lit(r.end_us)),
        ];
        if let Some(x) = &r.exchange {
            preds.push(col("exchange").eq(lit(x.as_str())));
        }
        let order = || {
            vec![
                col("timestamp").sort(true, false),
                col("source_sequence").sort(true, true),
                col("message_id").sort(true, false),
            ]
        };
        let stride = lit(ScalarValue::new_interval_mdn(0, 0, step * 1000));
        let bucket = date_bin(stride, col("timestamp"), ts_lit(0)).alias("time");
        let batches = filtered(df, preds)?
            .aggregate(
                vec![bucket],
                vec![
                    first_value(col("price"), order()).alias("open"),
                    max(col("price")).alias("high"),
                    min(col("price")).alias("low"),
                    last_value(col("price"), order()).alias("close"),
                    sum(col("quantity")).alias("volume"),
                    count(lit(1)).alias("trades"),
                ],
            )
            .and_then(|d| d.sort(vec![col("time").sort(true, false)]))
            .map_err(df_err)?
            .collect()
            .await
            .map_err(df_err)?;
        let i = Self::read_info(&info);
        let head = json!({
            "source": source,
            "snapshot_id": i.snapshot_id,
            "tail_rows_scanned": i.tail_rows,
            "symbol": r.symbol,
            "interval": r.interval.as_str(),
            "count": rows_in(&batches),
        });
        answer(head, "bars", json_rows(&batches)?)
    }

    async fn symbols(&self) -> Result<Answer, QueryError> {
        let (df, info, source) = self.source(None).await?;
        let batches = df
            .aggregate(
                vec![col("exchange"), col("symbol")],
                vec![
                    count(lit(1)).alias("trades"),
                    min(col("timestamp")).alias("first_trade"),
                    max(col("timestamp")).alias("last_trade"),
                ],
            )
            .and_then(|d| {
                d.sort(vec![
                    col("exchange").sort(true, false),
                    col("symbol").sort(true, false),
                ])
            })
            .map_err(df_err)?
            .collect()
            .await
            .map_err(df_err)?;
        let i = Self::read_info(&info);
        let head = json!({
            "source": source,
            "snapshot_id": i.snapshot_id,
            "count": rows_in(&batches),
        });
        answer(head, "symbols", json_rows(&batches)?)
    }

    async fn snapshots(&self) -> Result<Answer, QueryError> {
        let table = self
            .catalog
            .load_table(&self.ident)
            .await
            .map_err(QueryError::internal)?;
        let md = table.metadata();
        let mut snaps: Vec<_> = md.snapshots().collect();
        snaps.sort_by_key(|s| s.sequence_number());
        let list: Vec<Value> = snaps
            .iter()
            .map(|s| {
                let props = &s.summary().additional_properties;
                let offsets = props
                    .get(OFFSETS_PROPERTY)
                    .and_then(|j| serde_json::from_str::<Value>(j).ok());
                let num = |k: &str| props.get(k).and_then(|v| v.parse::<i64>().ok());
                json!({
                    "snapshot_id": s.snapshot_id(),
                    "parent_snapshot_id": s.parent_snapshot_id(),
                    "sequence_number": s.sequence_number(),
                    "committed_at": rfc3339(s.timestamp_ms() * 1000),
                    "operation": s.summary().operation.as_str(),
                    "added_records": num("added-records"),
                    "total_records": num("total-records"),
                    "kafka_offsets": offsets,
                })
            })
            .collect();
        answer_of(&json!({
            "table": self.ident.to_string(),
            "current_snapshot_id": md.current_snapshot().map(|s| s.snapshot_id()),
            "count": list.len(),
            "snapshots": list,
        }))
    }

    async fn sql(&self, sql: &str) -> Result<Answer, QueryError> {
        sql_guard::check(sql).map_err(|e| QueryError::Rejected(e.to_string()))?;
        // The guard already refused these; the session refuses them again
        // so a guard bug cannot turn into a write.
        let opts = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = self.ctx.sql_with_options(sql, opts).await.map_err(df_err)?;
        let schema = df.schema().as_arrow().clone();
        let max_rows = self.limits.max_rows;
        let mut stream = df.execute_stream().await.map_err(df_err)?;
        let mut batches = Vec::new();
        let mut n = 0;
        let mut truncated = false;
        while let Some(b) = stream.next().await {
            let b = b.map_err(df_err)?;
            if n + b.num_rows() > max_rows {
                batches.push(b.slice(0, max_rows - n));
                truncated = true;
                break;
            }
            n += b.num_rows();
            batches.push(b);
        }
        let columns: Vec<Value> = schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
            .collect();
        let head = json!({
            "columns": columns,
            "count": rows_in(&batches),
            "truncated": truncated,
        });
        answer(head, "rows", json_rows(&batches)?)
    }
}

/// The cursor after row `i` of `batches` (trade rows).
fn cursor_at(batches: &[RecordBatch], mut i: usize) -> Result<Option<Cursor>, QueryError> {
    for b in batches {
        if i >= b.num_rows() {
            i -= b.num_rows();
            continue;
        }
        let column = |name: &str, to: &DataType| {
            let c = b
                .column_by_name(name)
                .ok_or_else(|| QueryError::Internal(format!("no {name} column")))?;
            cast(&c.slice(i, 1), to).map_err(QueryError::internal)
        };
        let ts = column("timestamp", &DataType::Int64)?;
        let id = column("message_id", &DataType::Utf8)?;
        let (Some(ts), Some(id)) = (
            ts.as_any().downcast_ref::<arrow::array::Int64Array>(),
            id.as_any().downcast_ref::<arrow::array::StringArray>(),
        ) else {
            return Err(QueryError::Internal(
                "cursor columns of another type".into(),
            ));
        };
        if ts.is_null(0) || id.is_null(0) {
            return Ok(None);
        }
        return Ok(Some(Cursor {
            timestamp_us: ts.value(0),
            message_id: id.value(0).to_string(),
        }));
    }
    Ok(None)
}

/// `df`'s rows matching every predicate.
fn filtered(df: DataFrame, preds: Vec<Expr>) -> Result<DataFrame, QueryError> {
    match conjunction(preds) {
        Some(p) => df.filter(p).map_err(df_err),
        None => Ok(df),
    }
}

/// The trades of `df` matching every predicate, ordered by (timestamp,
/// message_id) ascending or descending, at most `limit`.
async fn trades_in_order(
    df: DataFrame,
    preds: Vec<Expr>,
    ascending: bool,
    limit: usize,
) -> Result<Vec<RecordBatch>, QueryError> {
    let df = filtered(df, preds)?;
    let t0 = std::time::Instant::now();
    let df = df
        .sort(vec![
            col("timestamp").sort(ascending, false),
            col("message_id").sort(ascending, false),
        ])
        .and_then(|d| d.limit(0, Some(limit)))
        .and_then(|d| d.select(trade_columns()))
        .map_err(df_err)?;
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await.map_err(df_err)?;
    let t1 = std::time::Instant::now();
    let batches = datafusion::physical_plan::collect(plan.clone(), task)
        .await
        .map_err(df_err)?;
    // The executed plan with each operator's metrics, for
    // `RUST_LOG=ticklake::api=trace`.
    tracing::trace!(
        plan = %datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref()).indent(true),
        "trades query plan"
    );
    // Where a slow answer spent its time, for `RUST_LOG=ticklake::api=debug`.
    tracing::debug!(
        plan_ms = (t1 - t0).as_secs_f64() * 1000.0,
        execute_ms = t1.elapsed().as_secs_f64() * 1000.0,
        rows = rows_in(&batches),
        "trades query"
    );
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_the_head_plus_the_rows_as_one_object() {
        let rows = || JsonRows(r#"[{"a":1},{"a":"x"}]"#.to_string());
        let a = answer(json!({"count": 2, "s": "}"}), "rows", rows()).unwrap();
        let v: Value = serde_json::from_str(a.as_str()).unwrap();
        assert_eq!(
            v,
            json!({"count": 2, "s": "}", "rows": [{"a": 1}, {"a": "x"}]})
        );
        let a = answer(json!({}), "rows", rows()).unwrap();
        let v: Value = serde_json::from_str(a.as_str()).unwrap();
        assert_eq!(v, json!({"rows": [{"a": 1}, {"a": "x"}]}));
        assert!(answer(json!([1]), "rows", rows()).is_err());
    }
}
