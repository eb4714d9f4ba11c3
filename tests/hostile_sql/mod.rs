//! Hostile SQL for the fuzz target of the SQL guard and the planner.
//!
//! Statements come from a grammar of SQL fragments over the daemon's tables,
//! and take the shapes that break query engines: deep nesting, long flat
//! operator chains, long lists, huge literals, functions called with odd
//! arguments, token soup, and token-level mutations of real queries.
//! Lengths and depths cluster around the guard's limits, so both sides of
//! each limit are exercised.
//!
//! A statement is a function of one `u64`, so a failure is reproduced from
//! the seed proptest prints.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// Real statements: the README's, the golden API requests', the hostile
/// classes of `tests/endpoints.rs` in miniature, and the guard's own cases.
pub const SEEDS: &[&str] = &[
    "select symbol, count(*), min(price), max(price) from market.trades group by symbol",
    "select * from market.trades where symbol = 'BTCUSDT' limit 10",
    "SELECT count(*) FROM market.trades;",
    "with t as (select symbol, price from market.trades) select symbol, max(price) from t group by symbol",
    "select date_bin(interval '1 minute', timestamp) as m, first_value(price order by timestamp) from market.trades_live group by m",
    "select count(*) from market.\"trades$snapshots\"",
    "select * from (select * from market.trades) s join market.dead_letters d on s.exchange = d.exchange",
    "select exchange, symbol, count(*) as trades, count(distinct message_id) as distinct_ids, min(price) as low, max(price) as high, sum(quantity) as volume from market.trades_live group by exchange, symbol order by exchange, symbol",
    "with l as (select count(*) as n from market.trades), h as (select count(*) as n from market.trades_live) select l.n as lake, h.n as live from l, h",
    "select symbol, trade_id, cast(price as varchar) as price, timestamp from market.trades_live where exchange = 'ASX' order by timestamp, message_id",
    "select message_id from market.trades_live",
    "select 1 union all select 2",
    "select * from market.trades where price in (1, 2, 3) or symbol like 'BTC%'",
    "select length(repeat('ab', 3))",
    "select vendor_data['stream'], trade_conditions[1] from market.trades",
    "select reason, octet_length(raw) from market.dead_letters where received_at > now() - interval '1 day'",
    "select symbol, row_number() over (partition by symbol order by timestamp desc) from market.trades",
    "select * from market.trades t where exists (select 1 from market.dead_letters d where d.exchange = t.exchange)",
    "insert into market.trades select * from market.trades",
    "drop table market.trades",
    "copy (select 1) to 'x.csv'",
    "create external table x stored as csv location 'x.csv'",
    "select * from read_parquet('x.parquet')",
    "select 1; select 2",
    "select * into t2 from market.trades",
    "explain select 1",
    "set datafusion.execution.batch_size = 1",
    "select nope from market.trades",
    "select * from market.nope",
    "select ((((1))))",
];

/// Tables and metadata tables a query may name, and some it may not.
const TABLES: &[&str] = &[
    "market.trades",
    "market.trades_live",
    "market.dead_letters",
    "market.\"trades$snapshots\"",
    "market.\"trades$manifests\"",
    "trades",
    "ticklake.market.trades",
    "information_schema.tables",
    "information_schema.columns",
    "information_schema.df_settings",
    "market.nope",
    "nope.trades",
];

/// Columns of `market.trades` and `market.dead_letters`, and a few that
/// exist in neither.
const COLUMNS: &[&str] = &[
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
    "trade_conditions",
    "source_sequence",
    "platform_sequence",
    "vendor_data",
    "dead_letter_id",
    "source",
    "received_at",
    "reason",
    "raw",
    "t.symbol",
    "s.price",
    "c.a",
    "nope",
    "\"Symbol\"",
    "\"\"",
];

/// Functions DataFusion knows (scalar, aggregate, window), file-reading
/// table functions, and names it does not know.
const FUNCTIONS: &[&str] = &[
    "abs",
    "acos",
    "atan2",
    "ceil",
    "floor",
    "round",
    "trunc",
    "sqrt",
    "cbrt",
    "exp",
    "ln",
    "log",
    "log10",
    "power",
    "signum",
    "factorial",
    "gcd",
    "lcm",
    "nanvl",
    "isnan",
    "iszero",
    "random",
    "pi",
    "degrees",
    "ascii",
    "btrim",
    "char_length",
    "chr",
    "concat",
    "concat_ws",
    "initcap",
    "left",
    "length",
    "lower",
    "lpad",
    "ltrim",
    "md5",
    "octet_length",
    "repeat",
    "replace",
    "reverse",
    "right",
    "rpad",
    "split_part",
    "starts_with",
    "strpos",
    "substr",
    "substring",
    "substr_index",
    "find_in_set",
    "to_hex",
    "translate",
    "upper",
    "uuid",
    "levenshtein",
    "overlay",
    "regexp_like",
    "regexp_match",
    "regexp_replace",
    "regexp_count",
    "encode",
    "decode",
    "sha256",
    "sha512",
    "digest",
    "now",
    "current_date",
    "date_bin",
    "date_trunc",
    "date_part",
    "to_timestamp",
    "to_timestamp_seconds",
    "to_timestamp_millis",
    "to_timestamp_micros",
    "to_timestamp_nanos",
    "from_unixtime",
    "to_unixtime",
    "make_date",
    "to_char",
    "to_date",
    "to_local_time",
    "coalesce",
    "nullif",
    "nvl",
    "nvl2",
    "greatest",
    "least",
    "make_array",
    "array_length",
    "array_repeat",
    "range",
    "generate_series",
    "array_concat",
    "array_append",
    "array_slice",
    "array_element",
    "array_has",
    "array_position",
    "array_remove",
    "array_distinct",
    "array_sort",
    "flatten",
    "cardinality",
    "array_to_string",
    "string_to_array",
    "array_resize",
    "struct",
    "named_struct",
    "get_field",
    "map",
    "map_keys",
    "map_extract",
    "arrow_cast",
    "arrow_typeof",
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "first_value",
    "last_value",
    "string_agg",
    "array_agg",
    "median",
    "stddev",
    "var_pop",
    "approx_distinct",
    "approx_percentile_cont",
    "bit_and",
    "bool_and",
    "corr",
    "nth_value",
    "row_number",
    "rank",
    "ntile",
    "lag",
    "lead",
    "cume_dist",
    "read_csv",
    "read_parquet",
    "nope",
];

/// SQL types, Arrow type names (for `arrow_cast`) among the strings.
const TYPES: &[&str] = &[
    "int",
    "bigint",
    "smallint",
    "tinyint",
    "int unsigned",
    "double",
    "real",
    "decimal(38, 10)",
    "decimal(18, 8)",
    "decimal(76, 38)",
    "decimal(39, 40)",
    "decimal(1, 0)",
    "varchar",
    "text",
    "bytea",
    "boolean",
    "date",
    "time",
    "timestamp",
    "timestamp with time zone",
    "interval",
    "int[]",
    "nope",
];

/// Numbers at the edges of every integer and float width, and past them.
/// No value here is a valid size of a few hundred MiB or more: a size that
/// large makes `repeat` or `lpad` allocate it while the optimizer folds
/// constants, which is a memory limit's business (the daemon bounds what
/// a query may use), not a parser's fault, and it would make this fuzzer
/// measure the allocator.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "7",
    "255",
    "256",
    "1000",
    "65536",
    "2147483648",
    "-2147483648",
    "-2147483649",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "99999999999999999999999999999999999999",
    "999999999999999999999999999999999999999999999999999999999999999999999999999999",
    "0.00000000000000000000000000000000000001",
    "3.14159",
    "1e308",
    "-1e308",
    "1e309",
    "4.9e-324",
    "0.0",
    "-0.0",
    "1.5e-10",
    "'NaN'::double",
    "'inf'::double",
    "'-inf'::double",
];

const STRINGS: &[&str] = &[
    "''",
    "' '",
    "'x'",
    "'BTCUSDT'",
    "'%'",
    "'_'",
    "'\\'",
    "''''",
    "'ü'",
    "'🚀'",
    "'\u{0}'",
    "'.*'",
    "'(a+)+$'",
    "'['",
    "'(?P<'",
    "'\\d{99999}'",
    "'1970-01-01'",
    "'2024-02-30'",
    "'+275760-09-13'",
    "'-infinity'",
    "'262143-12-31T23:59:59Z'",
    "'9999-12-31 23:59:59.999999999'",
    "'1 year'",
    "'99999999 years'",
    "'-1 millisecond'",
    "'1 minute'",
    "'P1Y'",
    "'hex'",
    "'base64'",
    "'sha256'",
    "'Utf8'",
    "'Int64'",
    "'Decimal128(38, 10)'",
    "'Decimal256(76, 76)'",
    "'Timestamp(Nanosecond, None)'",
    "'List(Int64)'",
    "'Dictionary(Int32, Utf8)'",
    "'FixedSizeBinary(0)'",
    "'Utf8View'",
    "'Europe/Nowhere'",
    "'+99:99'",
    "'YYYY-MM-DD'",
    "'%Y-%m-%d %H:%M:%S%.9f %z'",
    "'%'",
    "'stream'",
];

const BINARY_OPS: &[&str] = &[
    " + ",
    " - ",
    " * ",
    " / ",
    " % ",
    " || ",
    " = ",
    " <> ",
    " != ",
    " < ",
    " <= ",
    " > ",
    " >= ",
    " and ",
    " or ",
    " & ",
    " | ",
    " # ",
    " << ",
    " >> ",
    " ~ ",
    " !~ ",
    " ~* ",
    " like ",
    " ilike ",
    " is distinct from ",
    " @> ",
    " <@ ",
    " -> ",
    " ->> ",
];

/// What a token soup is made of.
const TOKENS: &[&str] = &[
    "select",
    "from",
    "where",
    "group",
    "by",
    "having",
    "order",
    "limit",
    "offset",
    "union",
    "all",
    "intersect",
    "except",
    "with",
    "as",
    "join",
    "left",
    "right",
    "full",
    "outer",
    "inner",
    "cross",
    "on",
    "using",
    "natural",
    "lateral",
    "case",
    "when",
    "then",
    "else",
    "end",
    "cast",
    "try_cast",
    "and",
    "or",
    "not",
    "in",
    "is",
    "null",
    "true",
    "false",
    "between",
    "like",
    "distinct",
    "over",
    "partition",
    "rows",
    "range",
    "preceding",
    "following",
    "unbounded",
    "current",
    "row",
    "filter",
    "within",
    "interval",
    "exists",
    "any",
    "values",
    "asc",
    "desc",
    "nulls",
    "first",
    "last",
    "unnest",
    "struct",
    "at",
    "time",
    "zone",
    "extract",
    "insert",
    "into",
    "copy",
    "to",
    "create",
    "drop",
    "table",
    "external",
    "stored",
    "location",
    "set",
    "explain",
    "analyze",
    "describe",
    "show",
    "+",
    "-",
    "*",
    "/",
    "%",
    "||",
    "=",
    "<>",
    "<",
    ">",
    "::",
    ".",
    ",",
    "(",
    ")",
    "[",
    "]",
    ";",
    "?",
    "$1",
    "'",
    "\"",
    "--",
    "/*",
    "*/",
    "{",
    "}",
    "@",
    "\\",
];

/// Sizes of chains, nestings and lists: small, at the guard's limits of
/// 256 levels and terms (one either side), and far past them.
const SIZES: &[usize] = &[2, 10, 100, 200, 255, 256, 257, 300, 1_000, 5_000, 20_000];

/// Most tokens a mutated statement grows to: past the guard's 256 KiB.
const MAX_MUTATED_TOKENS: usize = 50_000;

/// Lengths of huge literals: up to the guard's 256 KiB and past it.
const LENGTHS: &[usize] = &[0, 1, 1_000, 65_536, 200_000, 262_143, 262_144, 300_000];

/// A table the typed grammar queries, by the type of each column, so
/// most of its statements plan and reach the optimizer, the physical
/// planner and the Iceberg scan's filter conversion.
struct Typed {
    table: &'static str,
    numbers: &'static [&'static str],
    strings: &'static [&'static str],
    times: &'static [&'static str],
}

const TRADES_COLUMNS: Typed = Typed {
    table: "market.trades",
    numbers: &["price", "quantity", "source_sequence", "platform_sequence"],
    strings: &[
        "symbol",
        "exchange",
        "message_id",
        "trade_id",
        "asset_class",
        "currency",
        "side",
        "vendor_data['stream']",
        "trade_conditions[1]",
    ],
    times: &["timestamp", "ingestion_timestamp"],
};

const TYPED: &[Typed] = &[
    TRADES_COLUMNS,
    Typed {
        table: "market.trades_live",
        ..TRADES_COLUMNS
    },
    Typed {
        table: "market.dead_letters",
        numbers: &["octet_length(reason)", "length(reason)"],
        strings: &[
            "dead_letter_id",
            "exchange",
            "source",
            "reason",
            "encode(raw, 'hex')",
        ],
        times: &["received_at"],
    },
];

/// Times as strings, at the edges of what each timestamp width holds.
const TIMES: &[&str] = &[
    "'2024-01-01T00:00:00Z'",
    "'2024-03-10T23:59:59.999999Z'",
    "'1970-01-01'",
    "'1969-12-31T23:59:59.999999999Z'",
    "'0001-01-01T00:00:00Z'",
    "'9999-12-31 23:59:59.999999999'",
    "'262143-12-31T23:59:59Z'",
    "'+275760-09-13'",
    "'-infinity'",
    "'2024-02-30'",
    "'2024-01-01T00:00:00+99:00'",
    "'now'",
    "''",
];

const INTERVALS: &[&str] = &[
    "interval '1 minute'",
    "interval '15 minutes'",
    "interval '1 day'",
    "interval '0 seconds'",
    "interval '-1 millisecond'",
    "interval '1 nanosecond'",
    "interval '99999999 years'",
    "interval '2147483647 months'",
    "interval '9223372036854775807 microseconds'",
];

pub struct Hostile {
    rng: StdRng,
    /// Expression nesting left to the recursive grammar; the deep shapes
    /// are built flat, by `nested`.
    depth: u32,
}

impl Hostile {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            depth: 0,
        }
    }

    /// One statement of a randomly chosen shape.
    pub fn statement(&mut self) -> String {
        match self.rng.random_range(0..100) {
            0..30 => self.typed(),
            30..40 => self.query(),
            40..48 => self.chain(),
            48..56 => self.nested(),
            56..63 => self.long_list(),
            63..68 => self.huge_literal(),
            68..84 => self.mutated(),
            84..91 => self.token_soup(),
            _ => self.odd_calls(),
        }
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items
            .choose(&mut self.rng)
            .expect("a non-empty list")
            .clone()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// A well-typed query over one of the daemon's tables, with hostile
    /// values where values go: it usually plans, so the optimizer folds
    /// its constants and the scan converts its filters.
    pub fn typed(&mut self) -> String {
        let t = self.rng.random_range(0..TYPED.len());
        let table = TYPED[t].table;
        let q = match self.rng.random_range(0..6) {
            0 | 1 => {
                let n = self.rng.random_range(1..4);
                let proj: Vec<String> = (0..n).map(|_| self.t_any(t, 2)).collect();
                format!("select {} from {table}", proj.join(", "))
            }
            2 => {
                let key = self.pick(TYPED[t].strings);
                let agg = self.t_aggregate(t);
                let mut q = format!("select {key}, {agg} from {table}");
                if self.chance(0.5) {
                    let p = self.t_pred(t, 2);
                    q += &format!(" where {p}");
                }
                q += &format!(" group by {key}");
                if self.chance(0.3) {
                    let (a, n) = (self.t_aggregate(t), self.number());
                    q += &format!(" having {a} > {n}");
                }
                return q;
            }
            3 => {
                let (p, o) = (self.pick(TYPED[t].strings), self.pick(TYPED[t].times));
                let (n, col) = (self.number(), self.pick(TYPED[t].numbers));
                let f = self.pick(&[
                    "row_number()".to_string(),
                    "rank()".to_string(),
                    format!("lag({o}, {n})"),
                    format!("sum({col})"),
                    format!("first_value({o})"),
                ]);
                let frame = self.pick(&[
                    "",
                    " rows between unbounded preceding and current row",
                    " rows between 9223372036854775807 preceding and 1 following",
                    " range between interval '1 minute' preceding and current row",
                    " rows between 5 following and 2 preceding",
                ]);
                format!("select {p}, {f} over (partition by {p} order by {o}{frame}) from {table}")
            }
            4 => {
                let other = TYPED[self.rng.random_range(0..TYPED.len())].table;
                let p = self.t_pred(t, 2);
                return format!(
                    "select a.exchange, count(*) from (select * from {table} where {p}) a join {other} b on a.exchange = b.exchange group by a.exchange"
                );
            }
            _ => {
                let p = self.t_pred(t, 2);
                let ts = self.pick(TYPED[t].times);
                return format!(
                    "with c as (select * from {table} where {p}) select count(*), min({ts}) from c"
                );
            }
        };
        let mut q = q;
        if self.chance(0.6) {
            let p = self.t_pred(t, 3);
            q += &format!(" where {p}");
        }
        if self.chance(0.3) {
            let o = self.t_any(t, 1);
            q += &format!(" order by {o}");
        }
        if self.chance(0.3) {
            let n = self.number();
            q += &format!(" limit {n}");
        }
        q
    }

    fn t_any(&mut self, t: usize, depth: u32) -> String {
        match self.rng.random_range(0..3) {
            0 => self.t_num(t, depth),
            1 => self.t_str(t, depth),
            _ => self.t_time(t, depth),
        }
    }

    fn t_num(&mut self, t: usize, depth: u32) -> String {
        let leaf = |h: &mut Self| {
            if h.chance(0.5) {
                h.pick(TYPED[t].numbers).to_string()
            } else {
                h.number()
            }
        };
        if depth == 0 {
            return leaf(self);
        }
        let d = depth - 1;
        match self.rng.random_range(0..12) {
            0..3 => leaf(self),
            3 | 4 => {
                let (a, b) = (self.t_num(t, d), self.t_num(t, d));
                let op = self.pick(&[" + ", " - ", " * ", " / ", " % "]);
                format!("({a}{op}{b})")
            }
            5 => {
                let f = self.pick(&[
                    "abs",
                    "round",
                    "trunc",
                    "ceil",
                    "floor",
                    "sqrt",
                    "ln",
                    "log10",
                    "signum",
                    "exp",
                    "factorial",
                ]);
                format!("{f}({})", self.t_num(t, d))
            }
            6 => {
                let (a, b) = (self.t_num(t, d), self.t_num(t, d));
                let f = self.pick(&["power", "round", "log", "gcd", "atan2", "nanvl"]);
                format!("{f}({a}, {b})")
            }
            7 => {
                let ty = self.pick(&[
                    "decimal(38, 10)",
                    "decimal(18, 8)",
                    "double",
                    "bigint",
                    "int",
                    "smallint",
                ]);
                format!("cast({} as {ty})", self.t_num(t, d))
            }
            8 => format!("length({})", self.t_str(t, d)),
            9 => {
                let part = self.pick(&["'year'", "'epoch'", "'microsecond'", "'nope'"]);
                format!("date_part({part}, {})", self.t_time(t, d))
            }
            10 => {
                let (p, a, b) = (self.t_pred(t, d), self.t_num(t, d), self.t_num(t, d));
                format!("case when {p} then {a} else {b} end")
            }
            _ => {
                let (a, b) = (self.t_num(t, d), self.t_num(t, d));
                let f = self.pick(&["coalesce", "greatest", "least", "nullif"]);
                format!("{f}({a}, {b})")
            }
        }
    }

    fn t_str(&mut self, t: usize, depth: u32) -> String {
        let leaf = |h: &mut Self| {
            if h.chance(0.5) {
                h.pick(TYPED[t].strings).to_string()
            } else {
                h.pick(STRINGS).to_string()
            }
        };
        if depth == 0 {
            return leaf(self);
        }
        let d = depth - 1;
        match self.rng.random_range(0..10) {
            0..3 => leaf(self),
            3 => format!("{} || {}", self.t_str(t, d), self.t_str(t, d)),
            4 => {
                let f = self.pick(&["upper", "lower", "trim", "reverse", "md5", "initcap"]);
                format!("{f}({})", self.t_str(t, d))
            }
            5 => {
                let (s, a, b) = (self.t_str(t, d), self.number(), self.number());
                let f = self.pick(&["substr", "split_part", "substring"]);
                match f {
                    "split_part" => format!("split_part({s}, '-', {a})"),
                    _ => format!("{f}({s}, {a}, {b})"),
                }
            }
            6 => {
                let (s, n) = (self.t_str(t, d), self.number());
                let f = self.pick(&["left", "right", "lpad", "rpad", "repeat"]);
                format!("{f}({s}, {n})")
            }
            7 => {
                let (s, p, r) = (self.t_str(t, d), self.pick(STRINGS), self.pick(STRINGS));
                let f = self.pick(&["replace", "regexp_replace", "translate"]);
                format!("{f}({s}, {p}, {r})")
            }
            8 => format!("cast({} as varchar)", self.t_any(t, d)),
            _ => {
                let (ts, fmt) = (self.t_time(t, d), self.pick(STRINGS));
                format!("to_char({ts}, {fmt})")
            }
        }
    }

    fn t_time(&mut self, t: usize, depth: u32) -> String {
        let leaf = |h: &mut Self| match h.rng.random_range(0..4) {
            0 | 1 => h.pick(TYPED[t].times).to_string(),
            2 => format!("timestamp {}", h.pick(TIMES)),
            _ => "now()".to_string(),
        };
        if depth == 0 {
            return leaf(self);
        }
        let d = depth - 1;
        match self.rng.random_range(0..8) {
            0..3 => leaf(self),
            3 => {
                let op = self.pick(&[" + ", " - "]);
                format!("{}{op}{}", self.t_time(t, d), self.pick(INTERVALS))
            }
            4 => {
                let unit = self.pick(&["'day'", "'hour'", "'minute'", "'nope'", "'week'"]);
                format!("date_trunc({unit}, {})", self.t_time(t, d))
            }
            5 => {
                let (i, ts) = (self.pick(INTERVALS), self.t_time(t, d));
                format!("date_bin({i}, {ts})")
            }
            6 => {
                let f = self.pick(&[
                    "to_timestamp",
                    "to_timestamp_millis",
                    "to_timestamp_micros",
                    "from_unixtime",
                ]);
                format!("{f}({})", self.t_num(t, d))
            }
            _ => format!("to_timestamp({})", self.t_str(t, d)),
        }
    }

    fn t_pred(&mut self, t: usize, depth: u32) -> String {
        let cmp = |h: &mut Self| h.pick(&[" = ", " <> ", " < ", " <= ", " > ", " >= "]);
        let d = depth.saturating_sub(1);
        match self.rng.random_range(0..14) {
            0 | 1 => {
                let (a, op, b) = (self.t_num(t, d), cmp(self), self.t_num(t, d));
                format!("{a}{op}{b}")
            }
            2 | 3 => {
                let (a, op, b) = (self.t_str(t, d), cmp(self), self.t_str(t, d));
                format!("{a}{op}{b}")
            }
            4 | 5 => {
                let (a, op, b) = (self.t_time(t, d), cmp(self), self.t_time(t, d));
                format!("{a}{op}{b}")
            }
            6 => {
                let c = self.pick(TYPED[t].strings);
                let n = self.pick(&[1usize, 3, 50, 1_000]);
                let items: Vec<String> = (0..n).map(|_| self.pick(STRINGS).to_string()).collect();
                let not = self.pick(&["", " not"]);
                format!("{c}{not} in ({})", items.join(", "))
            }
            7 => {
                let (c, a, b) = (self.t_num(t, d), self.number(), self.number());
                format!("{c} between {a} and {b}")
            }
            8 => {
                let (c, p) = (self.t_str(t, d), self.pick(STRINGS));
                let op = self.pick(&[" like ", " not like ", " ilike "]);
                format!("{c}{op}{p}")
            }
            9 => {
                let is = self.pick(&[" is null", " is not null"]);
                format!("{}{is}", self.t_any(t, d))
            }
            10 if depth > 0 => {
                let (a, b) = (self.t_pred(t, d), self.t_pred(t, d));
                let op = self.pick(&[" and ", " or "]);
                format!("({a}{op}{b})")
            }
            11 if depth > 0 => format!("not ({})", self.t_pred(t, d)),
            12 => {
                let (c, p) = (self.t_str(t, d), self.pick(STRINGS));
                let f = self.pick(&["regexp_like", "starts_with", "ends_with"]);
                format!("{f}({c}, {p})")
            }
            _ => {
                let c = self.pick(TYPED[t].strings);
                let other = TYPED[self.rng.random_range(0..TYPED.len())].table;
                format!("{c} in (select exchange from {other})")
            }
        }
    }

    /// An aggregate over a typed column, some with odd parameters.
    fn t_aggregate(&mut self, t: usize) -> String {
        let n = self.pick(TYPED[t].numbers);
        let s = self.pick(TYPED[t].strings);
        let ts = self.pick(TYPED[t].times);
        let p = self.pick(&["0.5", "0", "1", "1.5", "-1", "'NaN'::double"]);
        self.pick(&[
            "count(*)".to_string(),
            format!("sum({n})"),
            format!("avg({n})"),
            format!("min({ts})"),
            format!("max({s})"),
            format!("count(distinct {s})"),
            format!("first_value({n} order by {ts})"),
            format!("approx_percentile_cont({p}) within group (order by {n})"),
            format!("string_agg({s}, ',')"),
            format!("array_agg({n} order by {ts} desc)"),
            format!("median({n})"),
            format!("stddev({n})"),
            format!("approx_distinct({s})"),
        ])
    }

    /// A query: SELECTs, maybe under a WITH, joined by a set operation,
    /// ordered and limited.
    pub fn query(&mut self) -> String {
        self.depth = self.rng.random_range(1..5);
        let mut q = String::new();
        if self.chance(0.15) {
            q += &format!("with c as ({}) ", self.select());
        }
        q += &self.select();
        if self.chance(0.15) {
            let op = self.pick(&[" union ", " union all ", " intersect ", " except "]);
            q += op;
            q += &self.select();
        }
        if self.chance(0.3) {
            let e = self.expr();
            let dir = self.pick(&["", " asc", " desc nulls first", " desc nulls last"]);
            q += &format!(" order by {e}{dir}");
        }
        if self.chance(0.3) {
            let n = self.number();
            q += &format!(" limit {n}");
        }
        if self.chance(0.1) {
            let n = self.number();
            q += &format!(" offset {n}");
        }
        q
    }

    fn select(&mut self) -> String {
        let mut s = String::from("select ");
        if self.chance(0.1) {
            s += "distinct ";
        }
        let n = self.rng.random_range(1..5);
        let items: Vec<String> = (0..n)
            .map(|i| match self.rng.random_range(0..10) {
                0 => "*".to_string(),
                1 => "t.*".to_string(),
                2 => format!("{} as a{i}", self.expr()),
                _ => self.expr(),
            })
            .collect();
        s += &items.join(", ");
        if self.chance(0.85) {
            s += " from ";
            s += &self.table_expr(2);
        }
        if self.chance(0.5) {
            s += " where ";
            s += &self.expr();
        }
        if self.chance(0.25) {
            let g = self.expr();
            s += &format!(" group by {g}");
            if self.chance(0.3) {
                let h = self.expr();
                s += &format!(" having {h}");
            }
        }
        s
    }

    /// A SELECT inside an expression or a FROM, one level shallower, so
    /// the grammar's recursion ends.
    fn sub_select(&mut self) -> String {
        if self.depth == 0 {
            return "select 1".into();
        }
        self.depth -= 1;
        let s = self.select();
        self.depth += 1;
        s
    }

    fn table_expr(&mut self, depth: u32) -> String {
        let choice = if depth == 0 {
            0
        } else {
            self.rng.random_range(0..8)
        };
        match choice {
            0..4 => {
                let t = self.pick(TABLES);
                let alias = self.pick(&["", " t", " s", " as c"]);
                format!("{t}{alias}")
            }
            4 => format!("({}) s", self.sub_select()),
            5 => {
                let (l, r) = (self.table_expr(depth - 1), self.table_expr(depth - 1));
                let kind = self.pick(&[
                    " join ",
                    " left join ",
                    " full outer join ",
                    " inner join ",
                    " right join ",
                ]);
                let on = self.expr();
                format!("{l}{kind}{r} on {on}")
            }
            6 => {
                let (l, r) = (self.table_expr(depth - 1), self.table_expr(depth - 1));
                format!("{l} cross join {r}")
            }
            _ => {
                let (a, b) = (self.literal(), self.literal());
                format!("(values ({a}, {b})) as v(a, b)")
            }
        }
    }

    /// An expression of the recursive grammar, as deep as `self.depth`.
    pub fn expr(&mut self) -> String {
        if self.depth == 0 {
            return self.leaf();
        }
        self.depth -= 1;
        let e = match self.rng.random_range(0..20) {
            0..4 => self.leaf(),
            4..7 => {
                let (a, b) = (self.expr(), self.expr());
                let op = self.pick(BINARY_OPS);
                format!("{a}{op}{b}")
            }
            7 => {
                let a = self.expr();
                let op = self.pick(&["not ", "-", "+", "~"]);
                format!("{op}({a})")
            }
            8 => {
                let a = self.expr();
                let is = self.pick(&[" is null", " is not null", " is true", " is unknown"]);
                format!("{a}{is}")
            }
            9..12 => self.call(),
            12 => {
                let (w, t, e) = (self.expr(), self.expr(), self.expr());
                format!("case when {w} then {t} else {e} end")
            }
            13 => {
                let (a, t) = (self.expr(), self.pick(TYPES));
                match self.rng.random_range(0..3) {
                    0 => format!("cast({a} as {t})"),
                    1 => format!("try_cast({a} as {t})"),
                    _ => format!("({a})::{t}"),
                }
            }
            14 => {
                let a = self.expr();
                let n = self.rng.random_range(0..6);
                let items: Vec<String> = (0..n).map(|_| self.literal()).collect();
                format!("{a} not in ({})", items.join(", "))
            }
            15 => {
                let (a, t) = (self.expr(), self.pick(TABLES));
                let c = self.pick(COLUMNS);
                format!("{a} in (select {c} from {t})")
            }
            16 => {
                let (a, lo, hi) = (self.expr(), self.expr(), self.expr());
                format!("{a} between {lo} and {hi}")
            }
            17 => {
                let s = self.sub_select();
                self.pick(&["exists", "not exists", ""]).to_string() + &format!(" ({s})")
            }
            18 => {
                let f = self.pick(&["row_number()", "rank()", "sum(price)", "lag(price, 2)"]);
                let (p, o) = (self.pick(COLUMNS), self.pick(COLUMNS));
                let frame = self.pick(&[
                    "",
                    " rows between unbounded preceding and current row",
                    " range between 9223372036854775807 preceding and 1 following",
                    " rows between 5 following and 2 preceding",
                ]);
                format!("{f} over (partition by {p} order by {o}{frame})")
            }
            _ => {
                let (a, i) = (self.expr(), self.number());
                format!("{a}[{i}]")
            }
        };
        self.depth += 1;
        e
    }

    fn leaf(&mut self) -> String {
        match self.rng.random_range(0..3) {
            0 => self.pick(COLUMNS).to_string(),
            _ => self.literal(),
        }
    }

    fn number(&mut self) -> String {
        self.pick(NUMBERS).to_string()
    }

    fn literal(&mut self) -> String {
        match self.rng.random_range(0..10) {
            0..4 => self.number(),
            4..8 => self.pick(STRINGS).to_string(),
            8 => {
                let s = self.pick(STRINGS);
                let kind = self.pick(&["interval", "timestamp", "date", "time"]);
                format!("{kind} {s}")
            }
            _ => self
                .pick(&[
                    "null",
                    "true",
                    "false",
                    "X'00ff'",
                    "X'F'",
                    "[]",
                    "[1, null]",
                ])
                .to_string(),
        }
    }

    /// A function of any kind with zero to five arguments of any type.
    fn call(&mut self) -> String {
        let f = self.pick(FUNCTIONS);
        let n = self.rng.random_range(0..6);
        let args: Vec<String> = (0..n).map(|_| self.expr()).collect();
        let distinct = if self.chance(0.05) { "distinct " } else { "" };
        format!("{f}({distinct}{})", args.join(", "))
    }

    /// Functions on odd arguments only, a few deep.
    pub fn odd_calls(&mut self) -> String {
        self.depth = 0;
        let n = self.rng.random_range(1..4);
        let calls: Vec<String> = (0..n)
            .map(|_| {
                let mut e = self.call();
                for _ in 0..self.rng.random_range(0..3) {
                    let (f, lit) = (self.pick(FUNCTIONS), self.literal());
                    e = format!("{f}({e}, {lit})");
                }
                e
            })
            .collect();
        let from = self.pick(TABLES);
        format!("select {} from {from}", calls.join(", "))
    }

    /// A long flat chain of one operator: as deep as it is long.
    pub fn chain(&mut self) -> String {
        self.depth = 0;
        let n = self.pick(SIZES);
        let op = self.pick(BINARY_OPS);
        let terms: Vec<String> = (0..n).map(|_| self.leaf()).collect();
        let chain = terms.join(op);
        self.place(&chain)
    }

    /// An expression put where expressions go.
    fn place(&mut self, e: &str) -> String {
        let t = self.pick(TABLES);
        match self.rng.random_range(0..7) {
            0 => format!("select * from {t} where {e}"),
            1 => format!("select {e} from {t}"),
            2 => format!("select symbol from {t} group by symbol having {e}"),
            3 => format!("select * from {t} order by {e}"),
            4 => format!("select * from {t} a join {t} b on {e}"),
            5 => format!("select coalesce({e}) from {t}"),
            _ => format!("select case when {e} then 1 end"),
        }
    }

    /// One construct nested `n` levels, balanced or not.
    pub fn nested(&mut self) -> String {
        self.depth = 0;
        let n = self.pick(SIZES);
        // Now and then one side is cut short or runs over.
        let m = match self.rng.random_range(0..10) {
            0 => n.saturating_sub(1),
            1 => n + 1,
            _ => n,
        };
        let leaf = self.leaf();
        let e = match self.rng.random_range(0..10) {
            0 => format!("{}{leaf}{}", "(".repeat(n), ")".repeat(m)),
            1 => {
                let f = self.pick(FUNCTIONS);
                format!("{}{leaf}{}", format!("{f}(").repeat(n), ")".repeat(m))
            }
            2 => format!("{}{leaf}", "not ".repeat(n)),
            3 => format!("{}{leaf}{}", "(-".repeat(n), ")".repeat(m)),
            4 => format!(
                "{}{leaf}{}",
                "case when true then ".repeat(n),
                " end".repeat(m)
            ),
            5 => format!("{}{leaf}{}", "(select ".repeat(n), ")".repeat(m)),
            6 => format!("{}{leaf}{}", "[".repeat(n), "]".repeat(m)),
            7 => format!("{}{leaf}{}", "cast(".repeat(n), " as bigint)".repeat(m)),
            8 => {
                // Subqueries in FROM: a statement of its own.
                let t = self.pick(TABLES);
                return format!(
                    "select * from {}{t}{}",
                    "(select * from ".repeat(n),
                    ") s".repeat(m)
                );
            }
            _ => {
                // A chain of CTEs, each reading the one before.
                let mut q = String::from("with c0 as (select 1 as a)");
                for i in 1..n.min(2_000) {
                    q += &format!(", c{i} as (select a + 1 as a from c{})", i - 1);
                }
                return format!("{q} select * from c{}", n.min(2_000) - 1);
            }
        };
        self.place(&e)
    }

    /// A long list where lists go.
    pub fn long_list(&mut self) -> String {
        self.depth = 0;
        let n = self.pick(SIZES);
        let items: Vec<String> = (0..n).map(|_| self.leaf()).collect();
        let list = items.join(", ");
        let t = self.pick(TABLES);
        match self.rng.random_range(0..8) {
            0 => format!("select * from {t} where price in ({list})"),
            1 => format!("select * from {t} where symbol not in ({list})"),
            2 => format!("select {list} from {t}"),
            3 => format!("select count(*) from {t} group by {list}"),
            4 => format!("select * from {t} order by {list}"),
            5 => format!("select concat({list})"),
            6 => format!("select make_array({list})"),
            _ => {
                let rows: Vec<String> = items.iter().map(|i| format!("({i})")).collect();
                format!("select * from (values {}) as v(a)", rows.join(", "))
            }
        }
    }

    /// One literal or name of a huge size.
    pub fn huge_literal(&mut self) -> String {
        let n = self.pick(LENGTHS);
        let digits = self.pick(&[20usize, 39, 77, 400, 5_000]);
        let e = match self.rng.random_range(0..8) {
            0 => format!("'{}'", "x".repeat(n)),
            1 => format!("'{}'", "🚀".repeat(n / 4)),
            2 => "9".repeat(digits),
            3 => format!("0.{}", "1".repeat(digits)),
            4 => format!("1e{}", "9".repeat(digits.min(40))),
            5 => format!("X'{}'", "ab".repeat(n / 2)),
            6 => format!("\"{}\"", "c".repeat(n)),
            _ => format!("interval '{} years'", "9".repeat(digits)),
        };
        self.place(&e)
    }

    /// A real statement with its tokens deleted, repeated, swapped or
    /// replaced by fragments of the grammar.
    pub fn mutated(&mut self) -> String {
        let seed = self.pick(SEEDS);
        let mut tokens = tokenize(seed);
        for _ in 0..self.rng.random_range(1..8) {
            if tokens.is_empty() {
                tokens.push("select".into());
            }
            let i = self.rng.random_range(0..tokens.len());
            match self.rng.random_range(0..7) {
                0 => {
                    tokens.remove(i);
                }
                1 => {
                    let j = self.rng.random_range(i..tokens.len());
                    let span: Vec<String> = tokens[i..=j].to_vec();
                    // Repeated spans compound over the ops; past the cap
                    // a statement is only refused for its size, and the
                    // growth would be exponential in memory.
                    let room = MAX_MUTATED_TOKENS.saturating_sub(tokens.len()) / span.len();
                    let times = self.pick(&[1usize, 2, 10, 300]).min(room);
                    let block: Vec<String> = span
                        .iter()
                        .cycle()
                        .take(span.len() * times)
                        .cloned()
                        .collect();
                    tokens.splice(i..i, block);
                }
                2 => {
                    let j = self.rng.random_range(0..tokens.len());
                    tokens.swap(i, j);
                }
                3 => {
                    self.depth = 2;
                    tokens[i] = self.expr();
                }
                4 => tokens[i] = self.pick(TOKENS).to_string(),
                5 => {
                    let t = self.pick(TOKENS).to_string();
                    tokens.insert(i, t);
                }
                _ => tokens[i] = self.literal(),
            }
        }
        tokens.join(" ")
    }

    /// Tokens of SQL in any order, mostly after a SELECT.
    pub fn token_soup(&mut self) -> String {
        let n = self.rng.random_range(1..200);
        let mut out = Vec::with_capacity(n + 1);
        if self.chance(0.7) {
            out.push("select".to_string());
        }
        for _ in 0..n {
            let t = match self.rng.random_range(0..6) {
                0..3 => self.pick(TOKENS).to_string(),
                3 => self.pick(COLUMNS).to_string(),
                4 => self.pick(FUNCTIONS).to_string(),
                _ => self.literal(),
            };
            out.push(t);
        }
        let sep = self.pick(&[" ", "", "\n"]);
        out.join(sep)
    }
}

/// Splits SQL into words, quoted strings and single punctuation marks.
fn tokenize(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        let mut t = String::from(c);
        if c == '\'' || c == '"' {
            for d in chars.by_ref() {
                t.push(d);
                if d == c {
                    break;
                }
            }
        } else if c.is_alphanumeric() || c == '_' {
            while let Some(&d) = chars.peek() {
                if !(d.is_alphanumeric() || d == '_' || d == '$') {
                    break;
                }
                t.push(d);
                chars.next();
            }
        }
        out.push(t);
    }
    out
}
