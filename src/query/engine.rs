//! The queries behind the `/v1` endpoints, on one DataFusion session over
//! the lake with `market.trades_live` (the hybrid table) registered. Every
//! value a client passes reaches DataFusion as a typed literal through the
//! DataFrame API, never as SQL text; only `/v1/sql` parses SQL, behind the
//! read-only guard.
//!
//! Every request runs with a `Cancel` (its deadline, checked between
//! planning phases and between batches, and wrapped around every operator
//! of its plan) and an `AnswerMemory` (the rows it collects and the JSON
//! text it writes, counted against `api.max_memory_bytes`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::functions::datetime::expr_fn::date_bin;
use datafusion::functions_aggregate::expr_fn::{count, first_value, last_value, max, min, sum};
use datafusion::logical_expr::utils::conjunction;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, Expr, SessionContext, col, lit};
use futures::StreamExt;
use iceberg::{Catalog, TableIdent};
use iceberg_datafusion::IcebergStaticTableProvider;
use serde_json::{Value, json};

use super::budget::{AnswerMemory, Held};
use super::cancel::Cancel;
use super::hybrid::{HybridTable, Pin, PinnedTable, ScanInfo, kth_newest_timestamp};
use super::json::{JsonRows, json_rows, split_rows};
use super::sql_guard;
use crate::config::ApiConfig;
use crate::lake::commit::OFFSETS_PROPERTY;
use crate::messages::query::{
    Answer, Cursor, InstrumentRecentRequest, OhlcvRequest, QueryError, QueryRequest, RecentRequest,
    TradesRequest,
};
use crate::messages::tail::TailFilter;
use crate::model::now_us;

mod bars;
mod recent;
mod series;
mod share;
mod window;

/// The wall clock in UTC microseconds; tests fix it.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// What one request runs with: its deadline and cancellation, and the
/// memory its answer may hold.
pub(super) struct Request<'a> {
    cancel: &'a Cancel,
    memory: AnswerMemory,
}

/// `v` (an object) as an answer, its text counted on the query memory.
fn answer_of(v: &Value, q: &Request<'_>) -> Result<Answer, QueryError> {
    let text = serde_json::to_string(v).map_err(QueryError::internal)?;
    let held = q.memory.empty();
    q.memory
        .grow(&held, text.capacity(), "the answer's JSON text")?;
    Ok(Answer::from_parts(vec![text.into_bytes()], Some(held)))
}

/// A JSON object of `head`'s fields (an object) plus `key` holding `rows`
/// (a JSON array, in parts): the parts are kept as they are, the head
/// goes in front of them.
fn answer(head: Value, key: &str, rows: JsonRows) -> Result<Answer, QueryError> {
    let mut prefix = serde_json::to_string(&head).map_err(QueryError::internal)?;
    let key = serde_json::to_string(key).map_err(QueryError::internal)?;
    if !head.is_object() || prefix.pop() != Some('}') {
        return Err(QueryError::Internal(
            "an answer's head is not an object".into(),
        ));
    }
    if prefix.len() > 1 {
        prefix.push(',');
    }
    prefix.push_str(&key);
    prefix.push(':');
    let JsonRows {
        parts: rows,
        memory,
    } = rows;
    // Small next to the rows, so counted without a check.
    memory.grow(prefix.capacity() + 1);
    let mut parts = Vec::with_capacity(rows.len() + 2);
    parts.push(prefix.into_bytes());
    parts.extend(rows);
    parts.push(b"}".to_vec());
    Ok(Answer::from_parts(parts, Some(memory)))
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
    /// Where `/v1/sql` statements run, when not in this process.
    sql_workers: Option<Arc<super::isolate::SqlWorkers>>,
    /// Where `/v1/ohlcv` finds the minute bars (`engine::bars`).
    bars: bars::BarsSource,
    /// Per (symbol or instrument, exchange) asked of `/v1/trades/recent`:
    /// the newest timestamp the lake holds at one snapshot (`LakeNewest`).
    lake_newest: Mutex<HashMap<recent::WindowKey, recent::LakeNewest>>,
    /// Per (symbol or instrument, exchange) asked of `/v1/trades/recent`:
    /// the lake's rows of the window, kept between pages (`engine::window`).
    windows: Mutex<window::WindowCache>,
    window_counts: window::WindowCounts,
    /// In a consumer group (`kafka.assignment = group`): the partitions this
    /// daemon reads, whose uncommitted rows are all its tail can add.
    share: Option<Arc<crate::lake::share::Seen>>,
}

fn ts_lit(us: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(us),
        Some("+00:00".into()),
    ))
}

/// The order bars take trades in, by the names of its columns: timestamp,
/// then source sequence (none first), then message id.
fn bar_order(ts: &str, seq: &str, id: &str) -> Vec<datafusion::logical_expr::SortExpr> {
    vec![
        col(ts).sort(true, false),
        col(seq).sort(true, true),
        col(id).sort(true, false),
    ]
}

/// The start of the bar of `step` microseconds, from the Unix epoch, that
/// the timestamp `column` falls in, as `time`.
fn time_bucket(step: i64, column: &str) -> Expr {
    let stride = lit(ScalarValue::new_interval_mdn(0, 0, step * 1000));
    date_bin(stride, col(column), ts_lit(0)).alias("time")
}

/// A query the user got wrong (unknown column, type mismatch) or one that
/// asks a function for more than its size limit is theirs to fix; running
/// out of the query memory is a capacity limit; anything else is ours.
fn df_err(e: DataFusionError) -> QueryError {
    if let Some(l) = super::limits::LimitError::find(&e) {
        return QueryError::Rejected(l.to_string());
    }
    match e.find_root() {
        DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::SQL(..)
        | DataFusionError::NotImplemented(_) => QueryError::InvalidQuery(e.find_root().to_string()),
        DataFusionError::ResourcesExhausted(m) => QueryError::OverMemory(format!(
            "the query's operators need more memory than is left of api.max_memory_bytes \
             (the queries running at once share it); narrow the query: {m}"
        )),
        _ => QueryError::Internal(e.to_string()),
    }
}

/// `df`'s physical plan, tracked by `q`'s cancellation, with the task
/// context to run it in. Optimizing and planning are synchronous and can
/// be long for a large statement: the deadline is checked before, between
/// and after them.
async fn physical(
    df: DataFrame,
    q: &Request<'_>,
) -> Result<
    (
        Arc<dyn ExecutionPlan>,
        Arc<datafusion::execution::TaskContext>,
    ),
    QueryError,
> {
    q.cancel.check()?;
    let (state, plan) = df.into_parts();
    let plan = state.optimize(&plan).map_err(df_err)?;
    q.cancel.check()?;
    let physical = state
        .query_planner()
        .create_physical_plan(&plan, &state)
        .await
        .map_err(df_err)?;
    q.cancel.check()?;
    let task = Arc::new(datafusion::execution::TaskContext::from(&state));
    Ok((q.cancel.track(physical).map_err(df_err)?, task))
}

/// Runs `plan` and keeps its rows, at most `max_rows` of them (then
/// `true`: more were cut), each batch counted on `q`'s answer memory
/// before it is kept; stops with `Timeout` between batches once the
/// query is cancelled.
async fn run_plan(
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<datafusion::execution::TaskContext>,
    q: &Request<'_>,
    max_rows: Option<usize>,
) -> Result<(Held, bool), QueryError> {
    let mut stream = datafusion::physical_plan::execute_stream(plan, task).map_err(df_err)?;
    let held = q.memory.empty();
    let mut batches = Vec::new();
    let mut n = 0;
    let mut truncated = false;
    while let Some(b) = stream.next().await {
        q.cancel.check()?;
        let b = b.map_err(df_err)?;
        let b = match max_rows {
            Some(max) if n + b.num_rows() > max => {
                truncated = true;
                b.slice(0, max - n)
            }
            _ => b,
        };
        q.memory.hold_batch(&held, &b)?;
        n += b.num_rows();
        batches.push(b);
        if truncated {
            break;
        }
    }
    Ok((Held::new(batches, held), truncated))
}

/// `df` planned and run (`physical`, `run_plan`).
async fn collect(
    df: DataFrame,
    q: &Request<'_>,
    max_rows: Option<usize>,
) -> Result<(Held, bool), QueryError> {
    let (plan, task) = physical(df, q).await?;
    run_plan(plan, task, q, max_rows).await
}

fn rfc3339(us: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

/// Columns `/v1/trades` returns. Prices and quantities are written as JSON
/// strings (`super::json`), so they stay exact: a JSON number would be read
/// as a float by most clients. `instrument` is null on rows from before it
/// (`TradeV2::instrument`).
const TRADE_COLUMNS: [&str; 12] = [
    "message_id",
    "trade_id",
    "symbol",
    "instrument",
    "exchange",
    "asset_class",
    "timestamp",
    "ingestion_timestamp",
    "price",
    "quantity",
    "currency",
    "side",
];

fn trade_columns() -> Vec<Expr> {
    TRADE_COLUMNS.iter().map(|c| col(*c)).collect()
}

/// `batch` (tail rows, or an answer's rows) with the columns of
/// `TRADE_COLUMNS`, in that order; `instrument` null throughout when the
/// batch predates it (rows of a schema without the column).
fn trade_projection(batch: &RecordBatch) -> Result<RecordBatch, QueryError> {
    let schema = batch.schema();
    if schema.index_of(INSTRUMENT).is_err() {
        let mut fields: Vec<arrow::datatypes::FieldRef> = schema.fields().iter().cloned().collect();
        fields.push(Arc::new(arrow::datatypes::Field::new(
            INSTRUMENT,
            DataType::Utf8,
            true,
        )));
        let mut columns = batch.columns().to_vec();
        columns.push(arrow::array::new_null_array(
            &DataType::Utf8,
            batch.num_rows(),
        ));
        let schema = arrow::datatypes::Schema::new_with_metadata(fields, schema.metadata().clone());
        let padded =
            RecordBatch::try_new(Arc::new(schema), columns).map_err(QueryError::internal)?;
        return trade_projection(&padded);
    }
    let indices = TRADE_COLUMNS
        .iter()
        .map(|c| schema.index_of(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(QueryError::internal)?;
    batch.project(&indices).map_err(QueryError::internal)
}

/// The normalized pair column of the trades (`TradeV2::instrument`), added
/// to `market.trades` by schema evolution.
const INSTRUMENT: &str = "instrument";

/// `df` with an `instrument` column: its own, or nulls throughout when it
/// reads a snapshot from before the column was added (time travel), whose
/// rows have none.
fn with_instrument(df: DataFrame) -> Result<DataFrame, QueryError> {
    if df.schema().has_column_with_unqualified_name(INSTRUMENT) {
        return Ok(df);
    }
    df.with_column(INSTRUMENT, lit(ScalarValue::Utf8(None)))
        .map_err(df_err)
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
            sql_workers: None,
            bars: bars::BarsSource::default(),
            lake_newest: Mutex::new(HashMap::new()),
            windows: Mutex::default(),
            window_counts: window::WindowCounts::default(),
            share: None,
        }
    }

    /// The same engine computing `/v1/ohlcv` from the raw trades only.
    pub fn without_bars(mut self) -> Self {
        self.bars.enabled = false;
        self
    }

    /// The same engine keeping the bars table loaded between requests;
    /// whoever builds it this way calls `refresh_bars` after every bars
    /// commit (the daemon's query actor, told by the bars actor).
    pub fn with_bars_cached(mut self) -> Self {
        self.bars.cached = Some(PinnedTable::default());
        self
    }

    /// The same engine running `/v1/sql` statements in worker processes.
    pub fn with_sql_workers(mut self, workers: Arc<super::isolate::SqlWorkers>) -> Self {
        self.sql_workers = Some(workers);
        self
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

    /// How many queries may run at once (`api.max_concurrent`).
    pub fn max_concurrent(&self) -> usize {
        self.limits.max_concurrent
    }

    /// The time limit of one query (`api.timeout_ms`).
    pub fn timeout_ms(&self) -> u64 {
        self.limits.timeout_ms
    }

    /// The session, for the CLI and tests.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Loads the table's newest snapshot for later scans to pin.
    pub async fn refresh(&self) {
        match self.catalog.load_table(&self.ident).await {
            Ok(t) => {
                // Before the table is pinned: a query on it finds its files
                // indexed (the new manifest read once, here).
                if let Err(e) = self.live.prepare(&t).await {
                    tracing::debug!(error = %e, "query: indexing the new snapshot's files failed; the first scan retries");
                }
                // And the recent windows kept carried to it, so that its
                // first pages come from memory. Until it is pinned, queries
                // pin the snapshot before, with the tail rows past that,
                // which the tail keeps until told (`QueryPinned`).
                self.carry_windows_to(&t).await;
                self.pinned.set(t)
            }
            Err(e) => tracing::warn!(error = %e, "query: reloading the trades table failed"),
        }
    }

    /// Runs one request within the configured time limit, and returns
    /// once its work has stopped.
    pub async fn run(&self, req: QueryRequest) -> Result<Answer, QueryError> {
        let cancel = Cancel::after(self.limits.timeout_ms);
        let answer = self.run_until(req, &cancel).await;
        cancel.stopped().await;
        answer
    }

    /// Runs one request until `cancel` stops it (its deadline, or a call to
    /// `Cancel::cancel`). It returns at the next check after that; streams
    /// of its plan still running in DataFusion's tasks end at their next
    /// batch, and `cancel.stopped()` says when they all have.
    pub async fn run_until(
        &self,
        req: QueryRequest,
        cancel: &Cancel,
    ) -> Result<Answer, QueryError> {
        let q = self.request(cancel);
        let fut = async {
            match req {
                QueryRequest::Trades(r) => self.trades(r, &q).await,
                QueryRequest::Recent(r) => self.recent(r.into(), &q).await,
                QueryRequest::InstrumentRecent(r) => self.recent(r.into(), &q).await,
                QueryRequest::Ohlcv(r) => self.ohlcv(r, &q).await,
                QueryRequest::InstrumentOhlcv(r) => self.ohlcv_by_exchange(r, &q).await,
                QueryRequest::Symbols => self.symbols(&q).await,
                QueryRequest::Snapshots => self.snapshots(&q).await,
                QueryRequest::Sql(sql) => match &self.sql_workers {
                    Some(workers) => {
                        // Refused here without a worker: the guard is cheap
                        // and has been fuzzed not to hang or crash.
                        sql_guard::check(&sql).map_err(|e| QueryError::Rejected(e.to_string()))?;
                        workers.run(&sql, &self.live, &q.memory).await
                    }
                    None => self.sql(&sql, &q).await,
                },
            }
        };
        let timeout = QueryError::Timeout(cancel.timeout_ms());
        match tokio::time::timeout_at(cancel.deadline(), fut).await {
            Ok(Ok(answer)) => Ok(answer),
            // A stream cut short by the cancellation fails with an error of
            // its own; the query timed out.
            Ok(Err(_)) if cancel.is_cancelled() => Err(timeout),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(timeout),
        }
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
        let df = with_instrument(self.ctx.read_table(provider).map_err(df_err)?)?;
        Ok((df, info, source))
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

    async fn trades(&self, r: TradesRequest, q: &Request<'_>) -> Result<Answer, QueryError> {
        let limit = r
            .limit
            .unwrap_or(self.limits.default_limit)
            .min(self.limits.max_rows);
        let (df, info, source) = self.source(r.snapshot_id).await?;
        let mut preds = Vec::new();
        if let Some(s) = &r.symbol {
            preds.push(col("symbol").eq(lit(s.as_str())));
        }
        if let Some(i) = &r.instrument {
            preds.push(col(INSTRUMENT).eq(lit(i.as_str())));
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
        let rows = trades_in_order(df, preds, true, limit + 1, q).await?;
        let next_cursor = if rows_in(&rows.batches) > limit {
            cursor_at(&rows.batches, limit - 1)?.map(|c| c.render())
        } else {
            None
        };
        let batches = first_rows(rows.batches.clone(), limit);
        let i = Self::read_info(&info);
        let head = json!({
            "source": source,
            "snapshot_id": i.snapshot_id,
            "tail_rows_scanned": i.tail_rows,
            "count": rows_in(&batches),
            "next_cursor": next_cursor,
        });
        self.answer_shared(head, "trades", json_rows(&batches, &q.memory, q.cancel)?)
    }

    async fn ohlcv(&self, r: OhlcvRequest, q: &Request<'_>) -> Result<Answer, QueryError> {
        let step = r.interval.micros();
        self.check_bar_count(r.interval, r.start_us, r.end_us)?;
        if let Some(answer) = self.ohlcv_from_bars(&r, q).await? {
            return Ok(answer);
        }
        let (df, info, source) = self.source(None).await?;
        let preds = ohlcv_filters(&r, "timestamp");
        let df = filtered(df, preds)?
            .aggregate(vec![time_bucket(step, "timestamp")], bar_aggregates())
            .and_then(|d| d.sort(vec![col("time").sort(true, false)]))
            .map_err(df_err)?;
        let (rows, _) = collect(df, q, None).await?;
        let batches = &rows.batches;
        let i = Self::read_info(&info);
        let head = json!({
            "source": source,
            "snapshot_id": i.snapshot_id,
            "tail_rows_scanned": i.tail_rows,
            "symbol": r.symbol,
            "interval": r.interval.as_str(),
            "count": rows_in(batches),
        });
        self.answer_shared(head, "bars", json_rows(batches, &q.memory, q.cancel)?)
    }

    async fn symbols(&self, q: &Request<'_>) -> Result<Answer, QueryError> {
        let (df, info, source) = self.source(None).await?;
        let df = df
            .aggregate(
                vec![col("exchange"), col("symbol")],
                vec![
                    // The instrument of the symbol's rows that carry one
                    // (null when none does: rows from before the column).
                    // A venue names one pair by one symbol, so they agree.
                    max(col(INSTRUMENT)).alias(INSTRUMENT),
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
            .map_err(df_err)?;
        let (rows, _) = collect(df, q, None).await?;
        let batches = &rows.batches;
        let i = Self::read_info(&info);
        let head = json!({
            "source": source,
            "snapshot_id": i.snapshot_id,
            "count": rows_in(batches),
        });
        answer(head, "symbols", json_rows(batches, &q.memory, q.cancel)?)
    }

    async fn snapshots(&self, q: &Request<'_>) -> Result<Answer, QueryError> {
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
        answer_of(
            &json!({
                "table": self.ident.to_string(),
                "current_snapshot_id": md.current_snapshot().map(|s| s.snapshot_id()),
                "count": list.len(),
                "snapshots": list,
            }),
            q,
        )
    }

    async fn sql(&self, sql: &str, q: &Request<'_>) -> Result<Answer, QueryError> {
        q.cancel.check()?;
        sql_guard::check(sql).map_err(|e| QueryError::Rejected(e.to_string()))?;
        q.cancel.check()?;
        // Parsing and the logical plan; then `collect` optimizes, plans and
        // runs it, checking the deadline between each.
        let df = self
            .ctx
            .sql_with_options(sql, super::session::read_only())
            .await
            .map_err(df_err)?;
        let schema = df.schema().as_arrow().clone();
        let (rows, truncated) = collect(df, q, Some(self.limits.max_rows)).await?;
        let batches = &rows.batches;
        let columns: Vec<Value> = schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
            .collect();
        let head = json!({
            "columns": columns,
            "count": rows_in(batches),
            "truncated": truncated,
        });
        answer(head, "rows", json_rows(batches, &q.memory, q.cancel)?)
    }
}

/// What a bar is of the trades in it (the raw way, `time` grouped by the
/// caller): open and close by the trades order (`bar_order`), high, low,
/// volume and the trade count.
fn bar_aggregates() -> Vec<Expr> {
    let order = || bar_order("timestamp", "source_sequence", "message_id");
    vec![
        first_value(col("price"), order()).alias("open"),
        max(col("price")).alias("high"),
        min(col("price")).alias("low"),
        last_value(col("price"), order()).alias("close"),
        sum(col("quantity")).alias("volume"),
        count(lit(1)).alias("trades"),
    ]
}

/// The rows an OHLCV request covers: its symbol, its exchange if given,
/// and `time_column` in [start, end).
fn ohlcv_filters(r: &OhlcvRequest, time_column: &str) -> Vec<Expr> {
    let mut preds = vec![
        col("symbol").eq(lit(r.symbol.as_str())),
        col(time_column).gt_eq(ts_lit(r.start_us)),
        col(time_column).lt(ts_lit(r.end_us)),
    ];
    if let Some(x) = &r.exchange {
        preds.push(col("exchange").eq(lit(x.as_str())));
    }
    preds
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
    q: &Request<'_>,
) -> Result<Held, QueryError> {
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
    let (plan, task) = physical(df, q).await?;
    let t1 = std::time::Instant::now();
    let (rows, _) = run_plan(plan.clone(), task, q, None).await?;
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
        rows = rows_in(&rows.batches),
        "trades query"
    );
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_the_head_plus_the_rows_as_one_object() {
        use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer, MemoryPool};
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1 << 20));
        let rows = || JsonRows {
            parts: vec![br#"[{"a":1},"#.to_vec(), br#"{"a":"x"}]"#.to_vec()],
            memory: MemoryConsumer::new("test").register(&pool),
        };
        let a = answer(json!({"count": 2, "s": "}"}), "rows", rows()).unwrap();
        let v: Value = serde_json::from_str(&a.text()).unwrap();
        assert_eq!(
            v,
            json!({"count": 2, "s": "}", "rows": [{"a": 1}, {"a": "x"}]})
        );
        let a = answer(json!({}), "rows", rows()).unwrap();
        let v: Value = serde_json::from_str(&a.text()).unwrap();
        assert_eq!(v, json!({"rows": [{"a": 1}, {"a": "x"}]}));
        assert!(answer(json!([1]), "rows", rows()).is_err());
    }
}
