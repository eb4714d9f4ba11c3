//! The read-only SQL guard for user queries (`POST /v1/sql`): exactly one
//! SELECT or WITH query; no DDL, DML, COPY, external tables, `SELECT INTO`,
//! or table functions (which can read arbitrary files). It parses with
//! DataFusion's own parser, so what it accepts is what DataFusion would run.

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    Query, SetExpr, Statement as SqlStatement, TableFactor, Visit, Visitor,
};

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
        }
    }
}

/// Accepts `sql` only when it is one read-only query.
pub fn check(sql: &str) -> Result<(), GuardError> {
    if sql.trim().trim_matches(';').trim().is_empty() {
        return Err(GuardError::Empty);
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
    let mut v = ReadOnly;
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

/// Walks the whole query, subqueries and CTEs included.
struct ReadOnly;

impl Visitor for ReadOnly {
    type Break = GuardError;

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<GuardError> {
        if let SetExpr::Select(s) = q.body.as_ref()
            && s.into.is_some()
        {
            return ControlFlow::Break(GuardError::SelectInto);
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
        ];
        for (sql, class, fragment) in cases {
            let e = check(sql).expect_err(sql);
            assert_eq!(e.class(), *class, "{sql}: {e}");
            assert!(e.to_string().contains(fragment), "{sql}: {e}");
        }
    }
}
