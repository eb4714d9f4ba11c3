//! Size limits for the SQL functions whose result grows with an argument's
//! value rather than with their input.
//!
//! The query memory pool (`api.max_memory_bytes`) counts what DataFusion's
//! operators hold (sorts, joins, aggregations) and the answer, not what a
//! scalar function builds. `range(1, 2000000000)` asks for 16 GB in one
//! allocation, and Rust aborts the process when an allocation fails: stable
//! Rust cannot turn that into an error. `repeat`, `lpad`, `array_repeat` and
//! the others in [`BOUNDED`] take a count or a length from the statement,
//! so a statement of a few bytes could ask for any amount of memory, and
//! for any amount of synchronous work that the query timeout cannot
//! interrupt.
//!
//! So each of them is registered again under its own name and aliases,
//! wrapping DataFusion's own. Before delegating, the wrapper bounds from
//! the arguments alone what every row's result would take (`size`) and
//! refuses the call, with an error naming the function and the limit:
//! - when one value would take more than `api.max_memory_bytes /`
//!   [`VALUE_SHARE`] (1 MiB by default): a large value is copied whole by
//!   every row a join or a projection repeats it into, so one value stays
//!   small;
//! - when the batch's results would take more than `api.max_memory_bytes`.
//!
//! Then it reserves the batch's bytes in the query pool, and the result's
//! buffers hold that reservation until the last of them is dropped: many
//! calls in one statement, and the queries running at once, share the one
//! budget, and a call that finds it spent fails with "resources exhausted"
//! (503) instead of allocating.
//!
//! The wrappers are volatile. A call with constant arguments would
//! otherwise be folded into a literal at planning, and every batch would
//! then copy that literal into each of its rows without asking anyone
//! (`select range(0, 100000) from market.trades` is 6.5 GB per batch); here
//! the call runs per batch, and its result is counted for every row it
//! stands for.
//!
//! The table functions `generate_series` and `range` (refused by the SQL
//! guard, bounded here all the same) stream their rows, so they are capped
//! at as many rows as one Int64 column of `api.max_memory_bytes` holds.
//!
//! Functions checked and left alone, because their result is at most a
//! small multiple of their input, or of fixed size: substrings and trims
//! (`substr`, `left`, `right`, `split_part`, `substr_index`, `btrim`, …),
//! `translate` and case mapping (at most 4× and 3× the bytes), `overlay`,
//! `reverse`, `encode`/`decode` (2×), `string_to_array` (one element per
//! character at most), `to_hex`, `chr`, `uuid`, hashes, every number and
//! time function; and on arrays `array_slice`, `array_element`,
//! `array_pop_*`, `array_remove*`, `array_distinct`, `array_sort`,
//! `array_reverse`, `flatten`, the set operations, `array_positions`,
//! `cardinality` and the other measures, `map*`. Functions whose result is
//! the sum of their inputs (`concat`, `concat_ws`, `||`, `make_array` and
//! `[…]`, `array_concat`, `array_append`, `struct`) are not bounded here:
//! what they copy already exists, at most as many times as the statement
//! names it. Aggregates grow inside operators that count against the pool.

mod contained;
mod size;

use std::any::Any;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayData, ArrayRef, make_array};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, FieldRef};
use datafusion::catalog::{TableFunctionImpl, TableProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

use size::{Args, series_len};
pub use size::{Bound, Times};

/// One value a bounded function builds may take at most
/// `api.max_memory_bytes / VALUE_SHARE` bytes.
pub const VALUE_SHARE: usize = 1024;

/// Bytes per row of the table functions' single Int64 column.
const SERIES_ROW_BYTES: usize = 8;

/// Every bounded scalar function, by its DataFusion name (its aliases,
/// such as `list_repeat` or `date_format`, are bounded with it).
pub const BOUNDED: &[(&str, Bound)] = &[
    ("range", Bound::Series { inclusive: false }),
    ("generate_series", Bound::Series { inclusive: true }),
    ("array_repeat", Bound::ArrayRepeat),
    ("array_resize", Bound::ArrayResize),
    ("repeat", Bound::Repeat),
    ("lpad", Bound::Pad),
    ("rpad", Bound::Pad),
    ("replace", Bound::Replace),
    ("regexp_replace", Bound::RegexpReplace),
    ("regexp_match", Bound::RegexpMatch),
    ("array_to_string", Bound::ArrayToString),
    ("array_replace", Bound::ArrayReplace(Times::First)),
    ("array_replace_n", Bound::ArrayReplace(Times::N)),
    ("array_replace_all", Bound::ArrayReplace(Times::All)),
    ("to_char", Bound::ToChar),
];

/// The bounded table functions, and whether their stop is included.
const BOUNDED_TABLES: &[(&str, bool)] = &[("generate_series", true), ("range", false)];

/// Why a call was refused before it ran. It travels inside DataFusion's
/// error (`External`); [`LimitError::find`] gets it back out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "{function} would build a value of {bytes} bytes; one value may take at most {limit} bytes (api.max_memory_bytes / {VALUE_SHARE})"
    )]
    Value {
        function: String,
        bytes: u64,
        limit: usize,
    },
    #[error(
        "{function} would build {bytes} bytes for {rows} rows; the query memory is {limit} bytes (api.max_memory_bytes)"
    )]
    Batch {
        function: String,
        bytes: u64,
        rows: usize,
        limit: usize,
    },
    #[error(
        "{function} would generate {rows} rows; at most {limit} are allowed (api.max_memory_bytes / {SERIES_ROW_BYTES})"
    )]
    Rows {
        function: String,
        rows: u64,
        limit: u64,
    },
    #[error("{function} cannot be bounded: {reason}")]
    Unbounded {
        function: String,
        reason: &'static str,
    },
    #[error("function {0} is not in this DataFusion build, so it cannot be bounded")]
    Missing(String),
}

impl LimitError {
    /// The refusal that made `e` fail, if a size limit did.
    pub fn find(e: &DataFusionError) -> Option<&LimitError> {
        match e.find_root() {
            DataFusionError::External(x) => x.downcast_ref(),
            _ => None,
        }
    }

    fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }
}

/// Replaces every function of [`BOUNDED`] and the table functions
/// `generate_series` and `range` in `ctx` with their bounded wrappers,
/// counting against `ctx`'s memory pool of `max_memory_bytes`.
pub fn register(ctx: &SessionContext, max_memory_bytes: usize) -> Result<(), LimitError> {
    let limits = Limits {
        value_bytes: (max_memory_bytes / VALUE_SHARE).max(1),
        memory_bytes: max_memory_bytes,
        pool: ctx.runtime_env().memory_pool.clone(),
    };
    let state = ctx.state();
    for (name, bound) in BOUNDED {
        let inner = state
            .scalar_functions()
            .get(*name)
            .cloned()
            .ok_or_else(|| LimitError::Missing(name.to_string()))?;
        let mut signature = inner.signature().clone();
        signature.volatility = Volatility::Volatile;
        ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
            inner,
            signature,
            bound: *bound,
            limits: limits.clone(),
        }));
    }
    for (name, inclusive) in BOUNDED_TABLES {
        let inner = state
            .table_functions()
            .get(*name)
            .ok_or_else(|| LimitError::Missing(name.to_string()))?
            .function()
            .clone();
        ctx.register_udtf(
            name,
            Arc::new(BoundedSeries {
                name,
                inner,
                inclusive: *inclusive,
                max_rows: (max_memory_bytes / SERIES_ROW_BYTES) as u128,
            }),
        );
    }
    contained::register(ctx)?;
    Ok(())
}

/// `n`, or `u64::MAX` past it: estimates are computed wide so that no
/// argument can overflow them, and reported narrow.
fn saturated(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The limits of one session, and the pool they count against.
#[derive(Clone)]
struct Limits {
    value_bytes: usize,
    memory_bytes: usize,
    pool: Arc<dyn MemoryPool>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("value_bytes", &self.value_bytes)
            .field("memory_bytes", &self.memory_bytes)
            .finish()
    }
}

/// A DataFusion scalar function, run only when its result fits.
#[derive(Debug, Clone)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    /// The inner function's, made volatile (see the module's doc).
    signature: Signature,
    bound: Bound,
    limits: Limits,
}

impl PartialEq for Bounded {
    fn eq(&self, o: &Self) -> bool {
        self.inner == o.inner
            && self.bound == o.bound
            && self.limits.value_bytes == o.limits.value_bytes
            && self.limits.memory_bytes == o.limits.memory_bytes
            && std::ptr::addr_eq(Arc::as_ptr(&self.limits.pool), Arc::as_ptr(&o.limits.pool))
    }
}

impl Eq for Bounded {}

impl Hash for Bounded {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.inner.hash(h);
        self.bound.hash(h);
        self.limits.value_bytes.hash(h);
        self.limits.memory_bytes.hash(h);
    }
}

impl Bounded {
    /// The bytes the call's results would take in all, or why it may not
    /// run at all.
    fn admit(&self, args: &[ColumnarValue], rows: usize) -> Result<u128, LimitError> {
        let function = || self.name().to_string();
        // All constants: the function builds one value, which stands for
        // every row of the batch.
        let constant = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let columns = args
            .iter()
            .map(|a| a.to_array(1))
            .collect::<DfResult<Vec<_>>>()
            .and_then(Args::new)
            .map_err(|_| LimitError::Unbounded {
                function: function(),
                reason: "its arguments cannot be read",
            })?;
        let mut total = 0u128;
        for row in 0..if constant { 1 } else { rows } {
            let bytes =
                self.bound
                    .row_bytes(&columns, row)
                    .map_err(|reason| LimitError::Unbounded {
                        function: function(),
                        reason,
                    })?;
            if bytes > self.limits.value_bytes as u128 {
                return Err(LimitError::Value {
                    function: function(),
                    bytes: saturated(bytes),
                    limit: self.limits.value_bytes,
                });
            }
            total = total.saturating_add(bytes);
        }
        if constant {
            total = total.saturating_mul(rows as u128);
        }
        if total > self.limits.memory_bytes as u128 {
            return Err(LimitError::Batch {
                function: function(),
                bytes: saturated(total),
                rows,
                limit: self.limits.memory_bytes,
            });
        }
        Ok(total)
    }

    fn exhausted(&self, bytes: usize) -> DataFusionError {
        DataFusionError::ResourcesExhausted(format!(
            "{} needs {bytes} bytes of the query memory ({} bytes, api.max_memory_bytes), and the queries running now hold the rest",
            self.name(),
            self.limits.memory_bytes
        ))
    }
}

impl ScalarUDFImpl for Bounded {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> DfResult<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Bounded {
            inner: Arc::new(inner),
            ..self.clone()
        }))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let bytes = self
            .admit(&args.args, rows)
            .map_err(LimitError::into_datafusion)? as usize;
        let reservation =
            MemoryConsumer::new(format!("function {}", self.name())).register(&self.limits.pool);
        reservation
            .try_grow(bytes)
            .map_err(|_| self.exhausted(bytes))?;
        let result = self.inner.invoke_with_args(args)?.into_array(rows)?;
        // From here the reservation follows what the result takes, not the
        // estimate (an upper bound), for as long as the result lives.
        let actual = result.get_array_memory_size();
        if actual > bytes {
            reservation
                .try_grow(actual - bytes)
                .map_err(|_| self.exhausted(actual))?;
        } else {
            reservation.shrink(bytes - actual);
        }
        let claim = Arc::new(reservation);
        Ok(ColumnarValue::Array(make_array(held(
            result.to_data(),
            &claim,
        )?)))
    }
}

/// `data` with every buffer also holding `claim`, so the reservation is
/// freed when the last buffer of the result is dropped, wherever the
/// result went (a batch, a sort's buffer, an answer).
fn held(data: ArrayData, claim: &Arc<MemoryReservation>) -> DfResult<ArrayData> {
    let buffers = data
        .buffers()
        .iter()
        .map(|b| {
            if b.is_empty() {
                // Kept as is: an empty buffer holds nothing to count, and
                // its pointer keeps the alignment arrow checks.
                b.clone()
            } else {
                Buffer::from(bytes::Bytes::from_owner(Held {
                    buffer: b.clone(),
                    _claim: claim.clone(),
                }))
            }
        })
        .collect();
    let children = data
        .child_data()
        .iter()
        .map(|c| held(c.clone(), claim))
        .collect::<DfResult<Vec<_>>>()?;
    Ok(data
        .into_builder()
        .buffers(buffers)
        .child_data(children)
        .build()?)
}

/// A result's buffer together with the reservation that counts it.
struct Held {
    buffer: Buffer,
    _claim: Arc<MemoryReservation>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_slice()
    }
}

/// The table functions `generate_series` and `range`, bounded in rows.
#[derive(Debug)]
struct BoundedSeries {
    name: &'static str,
    inner: Arc<dyn TableFunctionImpl>,
    inclusive: bool,
    max_rows: u128,
}

impl TableFunctionImpl for BoundedSeries {
    fn call(&self, args: &[Expr]) -> DfResult<Arc<dyn TableProvider>> {
        // The inner function takes literals only and refuses anything else.
        let literals = args
            .iter()
            .map(|e| match e {
                Expr::Literal(v, _) => v.to_array().ok(),
                _ => None,
            })
            .collect::<Option<Vec<ArrayRef>>>();
        if let Some(columns) = literals {
            let rows = series_len(&Args::new(columns)?, 0, self.inclusive).map_err(|reason| {
                LimitError::Unbounded {
                    function: self.name.to_string(),
                    reason,
                }
                .into_datafusion()
            })?;
            if rows > self.max_rows {
                return Err(LimitError::Rows {
                    function: self.name.to_string(),
                    rows: saturated(rows),
                    limit: saturated(self.max_rows),
                }
                .into_datafusion());
            }
        }
        self.inner.call(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::messages::query::{QueryError, QueryRequest};
    use crate::query::session::{self, OutputFormat, SessionError};

    /// An inline table of n rows (column1 = 0..n-1).
    fn values(n: usize) -> String {
        let rows: Vec<String> = (0..n).map(|i| format!("({i})")).collect();
        format!("(values {})", rows.join(","))
    }

    /// The daemon's session (`ticklake query`'s) on a fresh lake, with the
    /// default `api.max_memory_bytes` (1 GiB).
    async fn context(dir: &tempfile::TempDir) -> SessionContext {
        session::session(&Config::default().under(dir.path()))
            .await
            .unwrap()
    }

    /// How `sql` fails on `ticklake query`'s path (guard, then DataFusion
    /// on the query runtime).
    async fn failure(ctx: &SessionContext, sql: &str) -> SessionError {
        match session::run_sql(ctx, sql).await {
            Err(e) => e,
            Ok(b) => panic!("{sql}: ran, {} batches", b.len()),
        }
    }

    async fn refusal(ctx: &SessionContext, sql: &str) -> LimitError {
        match failure(ctx, sql).await {
            SessionError::Limits(l) => l,
            e => panic!("{sql}: not refused by a limit: {e}"),
        }
    }

    /// Statements that abort the process without the bounds (a failed
    /// allocation of gigabytes, or a loop that never ends) are refused
    /// before anything is allocated, each naming its function.
    #[tokio::test]
    async fn hostile_sizes_are_refused_before_they_allocate() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&dir).await;
        let v1k = values(1000);
        let cases: Vec<(String, &str, &str)> = vec![
            // 16 GB in one allocation.
            ("select cardinality(range(1, 2000000000))".into(), "value", "range"),
            // 8 GB of take indices.
            ("select array_repeat(null, 1000000000)".into(), "value", "array_repeat"),
            // 50 MB of bits, but minutes of work no timeout interrupts.
            ("select array_repeat(false, 400000000)".into(), "value", "array_repeat"),
            // 300 KB per row, 2.4 GB per batch of the cross join.
            (
                format!("select max(length(s)) from (select repeat(a.column1::varchar, 100000) s from {v1k} a, {v1k} b)"),
                "batch",
                "repeat",
            ),
            // One 800 KB constant for every row of every batch.
            ("select range(0, 100000) from (select unnest(range(0, 10000)))".into(), "batch", "range"),
            (
                "select generate_series(timestamp '1970-01-01 00:00:00', timestamp '2100-01-01 00:00:00', interval '1 second')".into(),
                "value",
                "generate_series",
            ),
            // February 1st plus a month less 28 days is February 1st: a
            // series that never ends.
            (
                "select range(date '2023-02-01', date '2022-01-01', interval '1 month -28 days')".into(),
                "unbounded",
                "range",
            ),
            ("select lpad('x', 2000000000)".into(), "value", "lpad"),
            ("select rpad('x', 2000000000, 'é')".into(), "value", "rpad"),
            ("select array_resize([1], 1000000000)".into(), "value", "array_resize"),
            ("select list_repeat(1, 1000000000)".into(), "value", "array_repeat"),
            // Small arguments, a product of gigabytes.
            ("select length(replace(repeat('a', 100000), 'a', repeat('b', 100000)))".into(), "value", "replace"),
            (
                "select length(regexp_replace(repeat('a', 100000), 'a', repeat('b', 100000), 'g'))".into(),
                "value",
                "regexp_replace",
            ),
            (
                "select length(array_to_string(range(0, 100000), repeat(',', 100000)))".into(),
                "value",
                "array_to_string",
            ),
            (
                "select cardinality(array_replace_all(array_repeat([1], 50000), [1], range(0, 50000)))".into(),
                "value",
                "array_replace_all",
            ),
            ("select to_char(now(), repeat('%+', 100000))".into(), "value", "to_char"),
            (
                "select regexp_match(repeat('a', 500000), repeat('(', 200) || 'a*' || repeat(')', 200))".into(),
                "value",
                "regexp_match",
            ),
        ];
        for (sql, kind, function) in &cases {
            let e = refusal(&ctx, sql).await;
            let (k, f) = match &e {
                LimitError::Value { function, .. } => ("value", function),
                LimitError::Batch { function, .. } => ("batch", function),
                LimitError::Unbounded { function, .. } => ("unbounded", function),
                other => panic!("{sql}: {other}"),
            };
            assert_eq!((k, f.as_str()), (*kind, *function), "{sql}: {e}");
            if *kind != "unbounded" {
                assert!(e.to_string().contains("api.max_memory_bytes"), "{e}");
            }
        }
        // Nothing stays reserved after a refusal.
        assert_eq!(ctx.runtime_env().memory_pool.reserved(), 0);
    }

    /// A hundred calls of 100 MB each fit one by one, not together: the
    /// results of one batch share the query memory, so the call that
    /// finds it spent fails instead of allocating (10 GB in all).
    #[tokio::test]
    async fn many_calls_share_the_query_memory() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&dir).await;
        let columns: Vec<String> = (0..100)
            .map(|k| format!("repeat('x', 1000000 + i + {k}) c{k}"))
            .collect();
        let sql = format!(
            "select {} from (select unnest(range(0, 100)) i)",
            columns.join(", ")
        );
        let SessionError::DataFusion(e) = failure(&ctx, &sql).await else {
            panic!("not DataFusion's refusal");
        };
        let DataFusionError::ResourcesExhausted(m) = e.find_root() else {
            panic!("not a memory refusal: {e}");
        };
        assert!(
            m.contains("repeat") && m.contains("api.max_memory_bytes"),
            "{m}"
        );
        assert_eq!(ctx.runtime_env().memory_pool.reserved(), 0);
    }

    /// The table forms are refused by the SQL guard; bounded anyway.
    #[tokio::test]
    async fn table_series_are_bounded_in_rows() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&dir).await;
        let e = ctx
            .sql("select count(*) from generate_series(1, 1000000000000)")
            .await
            .unwrap_err();
        assert!(
            matches!(LimitError::find(&e), Some(LimitError::Rows { function, .. }) if function == "generate_series"),
            "{e}"
        );
        let n = ctx
            .sql("select count(*) as n from range(0, 1000)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = session::format(&n, OutputFormat::Csv).unwrap();
        assert_eq!(text, "n\n1000\n");
    }

    /// Everyday uses answer as DataFusion's own functions do.
    #[tokio::test]
    async fn normal_use_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&dir).await;
        let sql = "select \
            cardinality(generate_series(1, 1000)) as g, \
            array_to_string(range(0, 10), ',') as r, \
            repeat('ab', 3) as rep, \
            lpad('7', 3, '0') as lp, \
            rpad('ab', 4, 'é') as rp, \
            replace('BTCUSDT', 'USDT', '') as rl, \
            regexp_replace('BTCUSDT', '(.*)USDT', '\\1') as rr, \
            array_to_string(regexp_match('BTCUSDT', '(BTC)(USDT)'), '+') as rm, \
            to_char(date '2024-01-02', '%Y/%m/%d') as tc, \
            array_to_string(array_repeat('x', 3), '-') as ar, \
            array_to_string(array_resize([1, 2], 4, 0), ',') as rs, \
            array_to_string(array_replace_all([1, 2, 1], 1, 9), ',') as ra, \
            cardinality(range(date '1992-09-01', date '1993-03-01', interval '1' month)) as dr, \
            cardinality(generate_series(timestamp '2024-01-01 00:00:00', timestamp '2024-01-02 00:00:00', interval '1 hour')) as tr";
        let batches = session::run_sql(&ctx, sql).await.unwrap();
        assert_eq!(
            session::format(&batches, OutputFormat::Csv).unwrap(),
            "g,r,rep,lp,rp,rl,rr,rm,tc,ar,rs,ra,dr,tr\n\
             1000,\"0,1,2,3,4,5,6,7,8,9\",ababab,007,abéé,BTC,BTC,BTC+USDT,2024/01/02,x-x-x,\"1,2,0,0\",\"9,2,9\",6,25\n"
        );
        // Rows from a series, and arguments from a column.
        let batches = session::run_sql(
            &ctx,
            "select count(*) as n, sum(i) as s from (select unnest(generate_series(1, 1000)) i)",
        )
        .await
        .unwrap();
        assert_eq!(
            session::format(&batches, OutputFormat::Csv).unwrap(),
            "n,s\n1000,500500\n"
        );
        let batches = session::run_sql(
            &ctx,
            "select repeat(column1, 2) as s from (values ('a'), ('bc')) order by 1",
        )
        .await
        .unwrap();
        assert_eq!(
            session::format(&batches, OutputFormat::Csv).unwrap(),
            "s\naa\nbcbc\n"
        );
    }

    /// A result counts against the query memory for as long as it lives.
    #[tokio::test]
    async fn a_result_holds_its_memory_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&dir).await;
        let pool = ctx.runtime_env().memory_pool.clone();
        let batches = session::run_sql(
            &ctx,
            "select repeat('x', 1000 + i) s from (select unnest(range(0, 100)) i)",
        )
        .await
        .unwrap();
        let held: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
        assert!(held >= 100 * 1000, "{held}");
        assert!(pool.reserved() >= 100 * 1000, "{}", pool.reserved());
        drop(batches);
        assert_eq!(pool.reserved(), 0);
    }

    /// Every name and alias of a bounded function is the wrapper.
    #[tokio::test]
    async fn every_name_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&dir).await;
        let state = ctx.state();
        let functions = state.scalar_functions();
        for (name, _) in BOUNDED {
            let f = &functions[*name];
            assert!(f.inner().as_any().is::<Bounded>(), "{name}");
            assert_eq!(f.signature().volatility, Volatility::Volatile, "{name}");
            for alias in f.aliases() {
                assert!(functions[alias].inner().as_any().is::<Bounded>(), "{alias}");
            }
        }
        assert!(functions["date_format"].inner().as_any().is::<Bounded>());
        assert!(functions["list_resize"].inner().as_any().is::<Bounded>());
    }

    /// `/v1/sql` answers a refusal as the caller's fault: 400
    /// `rejected_query`, with the function and the limit.
    #[tokio::test]
    async fn the_api_answers_a_refusal_as_a_rejected_query() {
        let dir = tempfile::tempdir().unwrap();
        let engine = session::engine(&Config::default().under(dir.path()), None)
            .await
            .unwrap();
        let e = engine
            .run(QueryRequest::Sql(
                "select cardinality(range(1, 2000000000))".into(),
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "rejected_query", "{e}");
        let QueryError::Rejected(m) = e else {
            unreachable!()
        };
        assert!(
            m.contains("range") && m.contains("api.max_memory_bytes"),
            "{m}"
        );
    }
}
