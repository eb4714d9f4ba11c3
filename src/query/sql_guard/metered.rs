//! The parser's work, metered. sqlparser 0.61 (what DataFusion 53 parses
//! with) backtracks: where an expression could start several ways it tries
//! one, rewinds on failure and tries the next, and a statement that fails
//! deep inside a chain of such places is re-parsed once per way at every
//! level. `case -` twenty times took 1.2 s to refuse, `interval` 22 times
//! 1.5 s, each level more doubles it, and 200 bytes of either never return.
//! Upstream fixed these one shape at a time after 0.61
//! (apache/datafusion-sqlparser-rs#2344, #2350, #2352, #2372, #2392).
//!
//! [`Metered`] is `GenericDialect`, the dialect DataFusion parses with,
//! plus a count of the expressions the parser starts (its dialect hook
//! runs first in every one). Past the budget it fails every further one at
//! once, so the backtracking collapses, and the guard refuses the
//! statement whatever the parse returned.

use std::any::TypeId;
use std::cell::Cell;

use datafusion::sql::sqlparser::ast::Expr;
use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect};
use datafusion::sql::sqlparser::parser::{Parser, ParserError};

/// Expressions the parser may start per token of the statement, and in
/// all. A well-formed statement starts about one per operand and a few
/// more where it tries a typed literal first (see the test below, which
/// measures the real statements); the backtracking runs to millions.
pub const STEPS_PER_TOKEN: usize = 16;
pub const MIN_STEPS: usize = 10_000;

/// `GenericDialect` with a budget on the expressions the parser starts.
#[derive(Debug)]
pub struct Metered {
    budget: usize,
    steps: Cell<usize>,
}

impl Metered {
    /// A budget for a statement of `tokens` tokens.
    pub fn for_tokens(tokens: usize) -> Self {
        Self {
            budget: tokens.saturating_mul(STEPS_PER_TOKEN).max(MIN_STEPS),
            steps: Cell::new(0),
        }
    }

    /// Whether the parse went past its budget.
    pub fn exhausted(&self) -> bool {
        self.steps.get() > self.budget
    }

    /// Expressions started so far.
    pub fn steps(&self) -> usize {
        self.steps.get()
    }
}

/// Delegates the methods `GenericDialect` overrides, so the parser makes
/// the same choices as with it (a test parses real statements with both
/// and compares).
macro_rules! like_generic {
    ($($name:ident,)*) => {
        $(fn $name(&self) -> bool {
            GenericDialect.$name()
        })*
    };
}

impl Dialect for Metered {
    /// The parser asks `dialect_of!(self is GenericDialect)` in places;
    /// this answers as `GenericDialect` does.
    fn dialect(&self) -> TypeId {
        TypeId::of::<GenericDialect>()
    }

    fn parse_prefix(&self, _parser: &mut Parser) -> Option<Result<Expr, ParserError>> {
        self.steps.set(self.steps.get().saturating_add(1));
        if self.exhausted() {
            return Some(Err(ParserError::ParserError(
                "the statement takes the parser too long".into(),
            )));
        }
        None
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        GenericDialect.is_delimited_identifier_start(ch)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        GenericDialect.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        GenericDialect.is_identifier_part(ch)
    }

    like_generic! {
        supports_unicode_string_literal,
        supports_group_by_expr,
        supports_group_by_with_modifier,
        supports_left_associative_joins_without_parens,
        supports_connect_by,
        supports_match_recognize,
        supports_pipe_operator,
        supports_start_transaction_modifier,
        supports_window_function_null_treatment_arg,
        supports_dictionary_syntax,
        supports_window_clause_named_window_reference,
        supports_parenthesized_set_variables,
        supports_select_wildcard_except,
        support_map_literal_syntax,
        allow_extract_custom,
        allow_extract_single_quotes,
        supports_extract_comma_syntax,
        supports_create_view_comment_syntax,
        supports_parens_around_table_factor,
        supports_values_as_table_factor,
        supports_create_index_with_clause,
        supports_explain_with_utility_options,
        supports_limit_comma,
        supports_from_first_select,
        supports_projection_trailing_commas,
        supports_asc_desc_in_column_definition,
        supports_try_convert,
        supports_bitwise_shift_operators,
        supports_comment_on,
        supports_load_extension,
        supports_named_fn_args_with_assignment_operator,
        supports_struct_literal,
        supports_empty_projections,
        supports_nested_comments,
        supports_multiline_comment_hints,
        supports_user_host_grantee,
        supports_string_escape_constant,
        supports_array_typedef_with_brackets,
        supports_match_against,
        supports_set_names,
        supports_comma_separated_set_assignments,
        supports_filter_during_aggregation,
        supports_select_wildcard_exclude,
        supports_data_type_signed_suffix,
        supports_interval_options,
        supports_quote_delimited_string,
        supports_lambda_functions,
        supports_select_wildcard_replace,
        supports_select_wildcard_ilike,
        supports_select_wildcard_rename,
        supports_optimize_table,
        supports_install,
        supports_detach,
        supports_prewhere,
        supports_with_fill,
        supports_limit_by,
        supports_interpolate,
        supports_settings,
        supports_select_format,
        supports_comment_optimizer_hint,
        supports_constraint_keyword_without_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::sql_guard::check;
    use datafusion::sql::parser::{DFParser, DFParserBuilder};

    /// Real statements: the guard's own cases, the README's, every SQL of
    /// the golden API requests, and the largest shapes the guard accepts.
    fn real_statements() -> Vec<String> {
        let mut out: Vec<String> = [
            "select symbol, count(*), min(price), max(price) from market.trades group by symbol",
            "select * from market.trades where symbol = 'BTCUSDT' limit 10",
            "with t as (select symbol, price from market.trades) select symbol, max(price) from t group by symbol",
            "select date_bin(interval '1 minute', timestamp) as m, first_value(price order by timestamp) from market.trades_live group by m",
            "select count(*) from market.\"trades$snapshots\"",
            "select * from (select * from market.trades) s join market.dead_letters d on s.exchange = d.exchange",
            "select * from market.trades where timestamp > timestamp '2024-01-01T00:00:00Z' and timestamp < now() - interval '1 day'",
            "select case when price > 1 then 'a' when price < 0 then 'b' else 'c' end, not (symbol like 'B%') from market.trades",
            "select extract(year from timestamp), cast(price as double), substring(symbol from 1 for 3), trim(both ' ' from side) from market.trades",
            "select symbol, row_number() over (partition by symbol order by timestamp desc rows between unbounded preceding and current row) from market.trades",
            "select vendor_data['stream'], trade_conditions[1] from market.trades where exists (select 1 from market.dead_letters)",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/golden/requests.json");
        let requests: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(golden).unwrap()).unwrap();
        let sql_in_golden = requests
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["body"]["sql"].as_str().map(String::from));
        out.extend(sql_in_golden);
        let list: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
        out.push(format!(
            "select * from market.trades where price in ({})",
            list.join(", ")
        ));
        let terms: Vec<String> = (0..250).map(|i| format!("price = {i}")).collect();
        out.push(format!(
            "select * from market.trades where {}",
            terms.join(" or ")
        ));
        out.push(format!(
            "select {}price{} from market.trades",
            "cast(".repeat(6),
            " as double)".repeat(6)
        ));
        out.push(vec!["select 1"; 250].join(" union all "));
        out.push(format!(
            "select {} from market.trades",
            vec!["case when price > 1 then not (price < 2) else interval '1 day' > interval '2 days' end"; 200].join(", ")
        ));
        out
    }

    fn tokens(sql: &str) -> usize {
        datafusion::sql::sqlparser::tokenizer::Tokenizer::new(&GenericDialect {}, sql)
            .tokenize()
            .unwrap()
            .iter()
            .filter(|t| {
                !matches!(
                    t,
                    datafusion::sql::sqlparser::tokenizer::Token::Whitespace(_)
                )
            })
            .count()
    }

    #[test]
    fn real_statements_parse_as_with_generic_and_well_within_budget() {
        let mut worst = 0.0f64;
        let statements = real_statements();
        assert!(statements.len() > 20, "golden requests not found");
        for sql in &statements {
            let generic = DFParser::parse_sql(sql).unwrap();
            let metered = Metered::for_tokens(tokens(sql));
            let parsed = DFParserBuilder::new(sql.as_str())
                .with_dialect(&metered)
                .build()
                .and_then(|mut p| p.parse_statements())
                .unwrap();
            assert_eq!(parsed, generic, "{sql}");
            assert!(!metered.exhausted(), "{sql}");
            worst = worst.max(metered.steps() as f64 / tokens(sql) as f64);
        }
        println!("most steps per token: {worst:.2}");
        // A margin of four over the worst real statement.
        assert!(worst * 4.0 < STEPS_PER_TOKEN as f64, "{worst}");
    }

    /// Each of these took seconds at 20 repetitions and doubles per one
    /// more; at 40 they would not return in a lifetime.
    #[test]
    fn backtracking_chains_are_cut_short() {
        for sql in [
            format!("select {}", "case -".repeat(40)),
            format!("select 1 - {})", "interval ".repeat(40)),
            format!("select {}", "x-not-b.".repeat(40)),
            // Nested CASTs failing inside, and well-formed ones past the
            // parser's recursion limit (which it then backtracks from).
            format!(
                "select {}1 as ){}",
                "cast(".repeat(30),
                " as int)".repeat(29)
            ),
            format!("select {}1{}", "cast(".repeat(60), " as int)".repeat(60)),
        ] {
            let e = check(&sql).unwrap_err();
            assert_eq!(e.class(), "too_complex", "{sql}: {e}");
        }
    }
}
