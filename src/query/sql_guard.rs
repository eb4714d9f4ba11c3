//! The read-only SQL guard for user queries (`POST /v1/sql`): exactly one
//! SELECT or WITH query; no DDL, DML, COPY, external tables, `SELECT INTO`,
//! or table functions (which can read arbitrary files). It parses with
//! DataFusion's own parser, so what it accepts is what DataFusion would run.
//!
//! It also bounds the work a statement can ask of the planner: its size,
//! and how deep its expressions nest. Planning, optimizing and evaluating
//! recurse once per level, and a flat chain such as `a OR b OR c …` is a
//! left-deep tree, as deep as it is long; the parser's own nesting limit
//! only counts parentheses. Run it on a query thread (`query::pool`): a
//! deep tree takes stack to visit and to drop.

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    Expr, Query, SetExpr, Statement as SqlStatement, TableFactor, Visit, Visitor,
};

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
    let statements = DFParser::parse_sql(sql).map_err(|e| GuardError::Parse(e.to_string()))?;
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
    let mut v = ReadOnly { depth: 0 };
    match query.visit(&mut v) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
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
/// as expressions nest deeper than `MAX_EXPR_DEPTH`.
struct ReadOnly {
    depth: usize,
}

impl Visitor for ReadOnly {
    type Break = GuardError;

    fn pre_visit_expr(&mut self, _e: &Expr) -> ControlFlow<GuardError> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return ControlFlow::Break(GuardError::TooDeep);
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

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<GuardError> {
        match t {
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
}
