//! The read-only SQL guard for user queries (`POST /v1/sql`): exactly one
//! SELECT or WITH query; no DDL, DML, COPY, external tables, `SELECT INTO`,
//! or table functions (which can read arbitrary files). It parses with
//! DataFusion's own parser, so what it accepts is what DataFusion would run.
//!
//! It also bounds the work a statement can ask of the planner: its size,
//! how deep its expressions nest, and how many tables its plan holds.
//! Planning, optimizing and evaluating recurse once per level, and a flat
//! chain such as `a OR b OR c …` is a left-deep tree, as deep as it is
//! long; the parser's own nesting limit only counts parentheses. A CTE is
//! planned again at every reference, so a few hundred bytes of
//! `WITH c1 AS (SELECT … FROM c0 x, c0 y), c2 AS (… c1 x, c1 y) …` make a
//! plan that doubles with each CTE (14 took 2.5 s to plan, and each two
//! more take four times as long). Run it on a query thread (`query::pool`):
//! a deep tree takes stack to visit and to drop.
//!
//! Before any of that, a scan of the tokens (`shape`) refuses what would
//! make the parser recurse without limit and overflow its stack, and the
//! parse itself runs on a budget (`metered`): the parser backtracks, and
//! some short statements would otherwise keep it busy for hours.

mod metered;

use std::collections::HashMap;
use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    Expr, Ident, ObjectNamePart, Query, SetExpr, Statement as SqlStatement, TableFactor, Visit,
    Visitor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// Longest statement accepted, in bytes: far beyond any hand-written query
/// (a 1,000-symbol `IN` list is about 12 KiB).
pub const MAX_SQL_BYTES: usize = 256 * 1024;

/// Deepest nesting of expressions accepted: an `OR` chain of this many
/// terms, or this many levels of parentheses and operators.
pub const MAX_EXPR_DEPTH: usize = 256;

/// Most `UNION`/`INTERSECT`/`EXCEPT` terms in one query body. A chain of
/// 5,000 took the planner 20 s, past any timeout (planning cannot be
/// interrupted).
pub const MAX_SET_TERMS: usize = 256;

/// Most table scans the plan of one query may hold: every table named,
/// with a CTE counted once where it is defined and again, with all it
/// reads, at every reference. Planning took about 60 µs per table in an
/// unoptimized build (a chain of 400 CTEs, each reading the one before:
/// 80,000 tables, 1.5 s), and planning cannot be interrupted.
pub const MAX_PLANNED_TABLES: usize = 4096;

/// Deepest nesting of brackets (`(`, `[`, `{`) accepted. The parser
/// refuses about 50 levels anyway; refusing here is cheaper and certain.
pub const MAX_NESTING: usize = 64;

/// Most parts of a dotted name in an expression: catalog, schema, table,
/// column and a struct field. Longer ones that match no column panic
/// DataFusion 53's planner, and the tables here have no deeper structs.
pub const MAX_NAME_PARTS: usize = 5;

/// Longest run of words and `<` with nothing else between them. SQL has no
/// such run longer than a few words, but `INTERVAL INTERVAL … 1` and
/// `ARRAY<ARRAY<…>>` recurse in the parser or in the guard's walk without
/// any limit: 25,000 `INTERVAL`s or 30,000 `ARRAY<` (200 KiB) overflowed a
/// 64 MiB query stack, which aborts the process.
pub const MAX_WORD_RUN: usize = 256;

/// Why a query was refused. The message is what the API returns as `detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("the query is empty")]
    Empty,
    #[error("the query does not parse: {0}")]
    Parse(String),
    #[error("only one statement is allowed, found {0}")]
    Multiple(usize),
    #[error("only SELECT or WITH queries are allowed, found {0}")]
    NotAQuery(String),
    #[error("SELECT INTO creates a table and is not allowed")]
    SelectInto,
    #[error("table function {0} is not allowed: it can read files outside the lake")]
    TableFunction(String),
    #[error("the query is {bytes} bytes; at most {MAX_SQL_BYTES} are accepted")]
    TooLong { bytes: usize },
    #[error(
        "expressions nest deeper than {MAX_EXPR_DEPTH} levels (a long chain of AND, OR or arithmetic is as deep as it is long); use IN (…) or split the query"
    )]
    TooDeep,
    #[error("more than {MAX_SET_TERMS} UNION, INTERSECT or EXCEPT terms in one query")]
    TooManySetTerms,
    #[error(
        "the plan would scan more than {MAX_PLANNED_TABLES} tables (a CTE is planned again, with all it reads, at every reference); simplify the query or split it"
    )]
    TooManyTables,
    #[error("the query nests {what} deeper than {limit} levels")]
    TooNested { what: &'static str, limit: usize },
    #[error(
        "the statement makes the parser backtrack past {steps} steps (CASE, NOT, INTERVAL or CAST nested in a chain that fails inside); simplify it"
    )]
    TooComplex { steps: usize },
    /// DataFusion 53's planner panics on these (apache/datafusion#21431).
    #[error("a typed literal needs a quoted string after its type, found `{0}`")]
    TypedLiteral(String),
    /// DataFusion 53's planner unwraps an error on a name of more parts
    /// that matches no column (`datafusion-sql` `expr/identifier.rs`).
    #[error(
        "the name `{0}` has more than {MAX_NAME_PARTS} parts; a column is at most catalog.schema.table.column.field"
    )]
    LongName(String),
}

impl GuardError {
    /// A short fixed label per rejected class (metrics, tests).
    pub fn class(&self) -> &'static str {
        match self {
            GuardError::Empty => "empty",
            GuardError::Parse(_) => "parse",
            GuardError::Multiple(_) => "multiple_statements",
            GuardError::NotAQuery(_) => "not_a_query",
            GuardError::SelectInto => "select_into",
            GuardError::TableFunction(_) => "table_function",
            GuardError::TooLong { .. } => "too_long",
            GuardError::TooDeep => "too_deep",
            GuardError::TooManySetTerms => "too_many_set_terms",
            GuardError::TooManyTables => "too_many_tables",
            GuardError::TooNested { .. } => "too_nested",
            GuardError::TypedLiteral(_) => "typed_literal",
            GuardError::TooComplex { .. } => "too_complex",
            GuardError::LongName(_) => "long_name",
        }
    }
}

/// Accepts `sql` only when it is one read-only query.
pub fn check(sql: &str) -> Result<(), GuardError> {
    if sql.trim().trim_matches(';').trim().is_empty() {
        return Err(GuardError::Empty);
    }
    if sql.len() > MAX_SQL_BYTES {
        return Err(GuardError::TooLong { bytes: sql.len() });
    }
    let tokens = shape(sql)?;
    let dialect = metered::Metered::for_tokens(tokens);
    let parsed = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .build()
        .and_then(|mut p| p.parse_statements());
    if dialect.exhausted() {
        return Err(GuardError::TooComplex {
            steps: dialect.steps(),
        });
    }
    let statements = parsed.map_err(|e| GuardError::Parse(e.to_string()))?;
    if statements.len() != 1 {
        return Err(GuardError::Multiple(statements.len()));
    }
    let Some(statement) = statements.front() else {
        return Err(GuardError::Empty);
    };
    let query = match statement {
        DfStatement::Statement(s) => match s.as_ref() {
            SqlStatement::Query(q) => q,
            other => return Err(GuardError::NotAQuery(statement_kind(other))),
        },
        DfStatement::CreateExternalTable(_) => {
            return Err(GuardError::NotAQuery("CREATE EXTERNAL TABLE".into()));
        }
        DfStatement::CopyTo(_) => return Err(GuardError::NotAQuery("COPY".into())),
        DfStatement::Explain(_) => return Err(GuardError::NotAQuery("EXPLAIN".into())),
        DfStatement::Reset(_) => return Err(GuardError::NotAQuery("RESET".into())),
    };
    let mut v = ReadOnly::default();
    match query.visit(&mut v) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Refuses, from the tokens alone and in one pass, the shapes that make
/// the parser's recursion deep or unbounded: brackets nested past
/// `MAX_NESTING` and runs of words past `MAX_WORD_RUN`. The tokenizer does
/// not recurse. Answers the number of tokens, whitespace aside.
fn shape(sql: &str) -> Result<usize, GuardError> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| GuardError::Parse(e.to_string()))?;
    let mut depth = 0usize;
    let mut run = 0usize;
    let mut count = 0usize;
    for t in &tokens {
        if matches!(t, Token::Whitespace(_)) {
            continue;
        }
        count += 1;
        match t {
            Token::LParen | Token::LBracket | Token::LBrace => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(GuardError::TooNested {
                        what: "brackets",
                        limit: MAX_NESTING,
                    });
                }
            }
            // An unbalanced close is the parser's to report.
            Token::RParen | Token::RBracket | Token::RBrace => depth = depth.saturating_sub(1),
            _ => {}
        }
        if matches!(t, Token::Word(_) | Token::Lt) {
            run += 1;
            if run > MAX_WORD_RUN {
                return Err(GuardError::TooNested {
                    what: "a run of words or `<` (INTERVAL INTERVAL …, ARRAY<ARRAY<…)",
                    limit: MAX_WORD_RUN,
                });
            }
        } else {
            run = 0;
        }
    }
    Ok(count)
}

/// The statement's leading keywords, e.g. `INSERT`, `CREATE TABLE`.
fn statement_kind(s: &SqlStatement) -> String {
    let text = s.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.as_slice() {
        [first, second]
            if ["CREATE", "DROP", "ALTER"].contains(&first.to_ascii_uppercase().as_str()) =>
        {
            format!(
                "{} {}",
                first.to_ascii_uppercase(),
                second.to_ascii_uppercase()
            )
        }
        [first, ..] => first.to_ascii_uppercase(),
        [] => "an empty statement".into(),
    }
}

/// Walks the whole query, subqueries and CTEs included, and stops as soon
/// as expressions nest deeper than `MAX_EXPR_DEPTH` or the plan would hold
/// more than `MAX_PLANNED_TABLES` tables.
#[derive(Default)]
struct ReadOnly {
    depth: usize,
    /// Tables the plan holds so far.
    tables: usize,
    /// CTE bodies announced by a WITH and not yet entered, by address
    /// (the visitor walks this very tree), with the CTE's name.
    announced: HashMap<usize, String>,
    /// CTE bodies being walked, innermost last: address, name, and the
    /// tables its plan holds so far.
    open: Vec<(usize, String, usize)>,
    /// Tables in the plan of each CTE walked, by name.
    cte_tables: HashMap<String, usize>,
}

/// A table name as the planner resolves it: unquoted names fold to lower
/// case.
fn normalized(ident: &Ident) -> String {
    match ident.quote_style {
        None => ident.value.to_lowercase(),
        Some(_) => ident.value.clone(),
    }
}

impl ReadOnly {
    /// Counts `n` tables in the plan, and in the CTE being walked.
    fn plan_tables(&mut self, n: usize) -> ControlFlow<GuardError> {
        self.tables = self.tables.saturating_add(n);
        if let Some((_, _, in_cte)) = self.open.last_mut() {
            *in_cte = in_cte.saturating_add(n);
        }
        if self.tables > MAX_PLANNED_TABLES {
            return ControlFlow::Break(GuardError::TooManyTables);
        }
        ControlFlow::Continue(())
    }
}

impl Visitor for ReadOnly {
    type Break = GuardError;

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<GuardError> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return ControlFlow::Break(GuardError::TooDeep);
        }
        // `TIMESTAMP 7`, `INT 7`, `x[1] 7`: the parser takes a type and a
        // number for a typed literal, which the planner expects to hold a
        // string and unwraps.
        if let Expr::TypedString(t) = e
            && t.value.clone().into_string().is_none()
        {
            return ControlFlow::Break(GuardError::TypedLiteral(t.value.to_string()));
        }
        if let Expr::CompoundIdentifier(parts) = e
            && parts.len() > MAX_NAME_PARTS
        {
            let name: Vec<&str> = parts.iter().map(|p| p.value.as_str()).collect();
            return ControlFlow::Break(GuardError::LongName(name.join(".")));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _e: &Expr) -> ControlFlow<GuardError> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<GuardError> {
        if let SetExpr::Select(s) = q.body.as_ref()
            && s.into.is_some()
        {
            return ControlFlow::Break(GuardError::SelectInto);
        }
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let body: &Query = &cte.query;
                self.announced
                    .insert(body as *const Query as usize, normalized(&cte.alias.name));
            }
        }
        let at = q as *const Query as usize;
        if let Some(name) = self.announced.remove(&at) {
            // A CTE's plan is at least its own projection.
            self.open.push((at, name, 0));
            self.plan_tables(1)?;
        }
        // Counted before the visit descends into the terms, and without
        // recursion: a chain is as deep as it is long.
        let mut terms = 0usize;
        let mut open = vec![q.body.as_ref()];
        while let Some(e) = open.pop() {
            match e {
                SetExpr::SetOperation { left, right, .. } => {
                    open.push(left);
                    open.push(right);
                }
                // `WITH t AS (…) INSERT …` parses as a query whose body is
                // the statement (and so can a subquery or a CTE's body):
                // refused like the statement on its own.
                SetExpr::Insert(s)
                | SetExpr::Update(s)
                | SetExpr::Delete(s)
                | SetExpr::Merge(s) => {
                    return ControlFlow::Break(GuardError::NotAQuery(statement_kind(s)));
                }
                _ => terms += 1,
            }
            if terms > MAX_SET_TERMS {
                return ControlFlow::Break(GuardError::TooManySetTerms);
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, q: &Query) -> ControlFlow<GuardError> {
        let at = q as *const Query as usize;
        if self.open.last().is_some_and(|(open, _, _)| *open == at)
            && let Some((_, name, tables)) = self.open.pop()
        {
            self.cte_tables.insert(name, tables);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<GuardError> {
        match t {
            // A reference to a CTE plans the CTE again; any other name is
            // one scan.
            TableFactor::Table {
                name, args: None, ..
            } => {
                let cte = match name.0.as_slice() {
                    [ObjectNamePart::Identifier(id)] => self.cte_tables.get(&normalized(id)),
                    _ => None,
                };
                let n = cte.copied().unwrap_or(1);
                self.plan_tables(n)
            }
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => ControlFlow::Break(GuardError::TableFunction(name.to_string())),
            TableFactor::TableFunction { expr, .. } => {
                ControlFlow::Break(GuardError::TableFunction(expr.to_string()))
            }
            TableFactor::Function { name, .. } => {
                ControlFlow::Break(GuardError::TableFunction(name.to_string()))
            }
            _ => ControlFlow::Continue(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_queries_pass() {
        for sql in [
            "select * from market.trades where symbol = 'BTCUSDT' limit 10",
            "SELECT count(*) FROM market.trades;",
            "with t as (select symbol, price from market.trades) select symbol, max(price) from t group by symbol",
            "select * from (select * from market.trades) s join market.dead_letters d on s.exchange = d.exchange",
            "select 1 union all select 2",
            "select * from market.trades where timestamp > timestamp '2024-01-01T00:00:00Z'",
        ] {
            assert_eq!(check(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn every_rejected_class_is_refused_with_a_reason() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "empty", "empty"),
            ("  ;  ", "empty", "empty"),
            ("selec * from t", "parse", "does not parse"),
            ("select 1; select 2", "multiple_statements", "found 2"),
            (
                "select 1; drop table market.trades",
                "multiple_statements",
                "found 2",
            ),
            ("create table x (a int)", "not_a_query", "CREATE TABLE"),
            ("create view v as select 1", "not_a_query", "CREATE VIEW"),
            ("drop table market.trades", "not_a_query", "DROP TABLE"),
            (
                "alter table market.trades add column x int",
                "not_a_query",
                "ALTER TABLE",
            ),
            (
                "insert into market.trades values (1)",
                "not_a_query",
                "INSERT",
            ),
            (
                "update market.trades set price = 0",
                "not_a_query",
                "UPDATE",
            ),
            ("delete from market.trades", "not_a_query", "DELETE"),
            (
                "create external table x stored as parquet location '/etc/passwd'",
                "not_a_query",
                "CREATE EXTERNAL TABLE",
            ),
            ("copy (select 1) to '/tmp/x.csv'", "not_a_query", "COPY"),
            ("explain select 1", "not_a_query", "EXPLAIN"),
            (
                "set datafusion.execution.batch_size = 1",
                "not_a_query",
                "SET",
            ),
            (
                "select * into t2 from market.trades",
                "select_into",
                "SELECT INTO",
            ),
            (
                "select * from read_parquet('/etc/x.parquet')",
                "table_function",
                "read_parquet",
            ),
            (
                "select * from read_csv('/etc/passwd')",
                "table_function",
                "read_csv",
            ),
            (
                "with a as (select * from read_json('/x.json')) select * from a",
                "table_function",
                "read_json",
            ),
            (
                "select * from market.trades where symbol in (select s from generate_series(1, 3) g(s))",
                "table_function",
                "generate_series",
            ),
            (
                "with t as (select 1) insert into market.trades (symbol) values ('X')",
                "not_a_query",
                "INSERT",
            ),
            (
                "with t as (select 1) update market.trades set price = 0",
                "not_a_query",
                "UPDATE",
            ),
            (
                "with t as (select 1) delete from market.trades",
                "not_a_query",
                "DELETE",
            ),
            (
                "with a as (select 1), b as (select 2) insert into market.trades select * from a",
                "not_a_query",
                "INSERT",
            ),
            ("select timestamp 7", "typed_literal", "found `7`"),
            (
                "select * from market.trades s join market.dead_letters d on s.exchange = d.d.d.d.d.d.exchange",
                "long_name",
                "d.d.d.d.d.d.exchange",
            ),
            (
                "select trade_conditions[1] 7 from market.trades",
                "typed_literal",
                "found `7`",
            ),
        ];
        for (sql, class, fragment) in cases {
            let e = check(sql).expect_err(sql);
            assert_eq!(e.class(), *class, "{sql}: {e}");
            assert!(e.to_string().contains(fragment), "{sql}: {e}");
        }
    }

    /// Run as queries run: on a thread with the query pool's stack.
    fn on_query_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn long_chains_and_huge_statements_are_refused_before_planning() {
        on_query_stack(|| {
            let chain = |n: usize, op: &str| {
                let terms: Vec<String> = (0..n).map(|i| format!("price = {i}")).collect();
                format!("select * from market.trades where {}", terms.join(op))
            };
            // A chain of n terms nests n - 1 levels, plus the comparisons.
            assert_eq!(check(&chain(100, " or ")), Ok(()));
            for (sql, what) in [
                (chain(5_000, " or "), "OR chain"),
                (chain(5_000, " and "), "AND chain"),
                (
                    format!("select {} from market.trades", vec!["1"; 5_000].join(" + ")),
                    "arithmetic chain",
                ),
            ] {
                let e = check(&sql).unwrap_err();
                assert_eq!(e.class(), "too_deep", "{what}: {e}");
            }
            // The same test as a list is flat, and fine.
            let list: Vec<String> = (0..5_000).map(|i| i.to_string()).collect();
            let sql = format!(
                "select * from market.trades where price in ({})",
                list.join(", ")
            );
            assert_eq!(check(&sql), Ok(()));
            let unions = |n: usize| vec!["select 1"; n].join(" union all ");
            assert_eq!(check(&unions(MAX_SET_TERMS)), Ok(()));
            assert_eq!(
                check(&unions(5_000)).unwrap_err().class(),
                "too_many_set_terms"
            );
            let huge = format!("select '{}'", "x".repeat(MAX_SQL_BYTES));
            assert_eq!(check(&huge).unwrap_err().class(), "too_long");
        });
    }

    /// What would overflow a query thread's stack in the parser or in the
    /// guard's walk is refused from the tokens, before the parser sees it;
    /// the same shapes a few levels shallower still parse.
    #[test]
    fn shapes_that_recurse_without_limit_are_refused_from_the_tokens() {
        on_query_stack(|| {
            let nested = |n: usize, open: &str, inner: &str, close: &str| {
                format!("select {}{inner}{}", open.repeat(n), close.repeat(n))
            };
            let too_nested = |sql: &str, what: &str| {
                let e = check(sql).unwrap_err();
                assert_eq!(e.class(), "too_nested", "{e}");
                assert!(e.to_string().contains(what), "{e}");
            };
            // Special forms nest like any call (the parse budget, not a
            // depth, stops their backtracking: see `metered`).
            let casts = |n: usize, inner: &str| nested(n, "cast(", inner, " as bigint)");
            assert_eq!(check(&casts(12, "price")), Ok(()));
            assert_eq!(check(&nested(30, "abs(", "price", ")")), Ok(()));
            too_nested(&nested(MAX_NESTING + 1, "(", "1", ")"), "brackets");
            too_nested(&nested(MAX_NESTING + 1, "[", "1", "]"), "brackets");
            // Runs that recurse without a limit, within the size limit.
            let intervals = nested(25_000, "interval ", "1", "");
            assert!(intervals.len() < MAX_SQL_BYTES);
            too_nested(&intervals, "INTERVAL");
            let arrays = format!("select cast(1 as {})", nested(30_000, "array<", "int", ">"));
            assert!(arrays.len() < MAX_SQL_BYTES);
            too_nested(&arrays, "ARRAY<");
            assert_eq!(
                check("select cast(price as array<array<int>>) from market.trades"),
                Ok(())
            );
            // An unterminated string is a parse error, from the tokenizer.
            assert_eq!(check("select 'abc").unwrap_err().class(), "parse");
        });
    }

    /// CTEs are planned again at every reference: a chain of them grows the
    /// plan quadratically, two references each double it per CTE.
    #[test]
    fn ctes_that_multiply_the_plan_are_refused_before_planning() {
        on_query_stack(|| {
            let ctes = |n: usize, body: &dyn Fn(usize) -> String| {
                let mut q = String::from("with c0 as (select 1 as a)");
                for i in 1..n {
                    q += &format!(", c{i} as ({})", body(i - 1));
                }
                format!("{q} select * from c{}", n - 1)
            };
            let chain = |prev: usize| format!("select a + 1 as a from c{prev}");
            let double = |prev: usize| format!("select x.a from c{prev} x, C{prev} y");
            // A chain of n CTEs holds 1 + 2 + … + n tables.
            assert_eq!(check(&ctes(80, &chain)), Ok(()));
            assert_eq!(
                check(&ctes(100, &chain)).unwrap_err().class(),
                "too_many_tables"
            );
            // Doubling: 2^n tables; the name matches as DataFusion resolves
            // it (`C5` is `c5`).
            assert_eq!(check(&ctes(10, &double)), Ok(()));
            let e = check(&ctes(14, &double)).unwrap_err();
            assert_eq!(e.class(), "too_many_tables", "{e}");
            assert!(e.to_string().contains("CTE"), "{e}");
            // A quoted name is another name: no CTE, one table each.
            let quoted = |prev: usize| format!("select x.a from \"C{prev}\" x, \"C{prev}\" y");
            assert_eq!(check(&ctes(40, &quoted)), Ok(()));
            // Plain tables count one each, wherever they are named.
            let joins = |n: usize| {
                let tables = vec!["market.trades"; n].join(", ");
                format!("select count(*) from {tables}")
            };
            assert_eq!(check(&joins(MAX_PLANNED_TABLES)), Ok(()));
            assert_eq!(
                check(&joins(MAX_PLANNED_TABLES + 1)).unwrap_err().class(),
                "too_many_tables"
            );
            let sub = format!(
                "select * from market.trades where symbol in (select symbol from {})",
                vec!["market.trades"; MAX_PLANNED_TABLES].join(", ")
            );
            assert_eq!(check(&sub).unwrap_err().class(), "too_many_tables");
        });
    }
}
