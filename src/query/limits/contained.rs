//! Functions that panic on some values in DataFusion 53, made to fail
//! instead.
//!
//! `date_bin` and `date_trunc` overflow or unwrap on timestamps near the
//! ends of the range (`date_bin(interval '1 day', to_timestamp(-1e308))`,
//! `date_trunc('day', to_timestamp('-inf'::double))`); upstream fixed them
//! later (apache/datafusion#22209, #22210, #22211, #22214, #22610,
//! #25129). A query thread contains such a panic (a 500), and a SQL
//! worker would be lost for it; here the call fails with an error that
//! says why, and the query gets its 400 like any other bad argument.
//! Each is registered again under its own name, wrapping DataFusion's
//! own; everything but the call is delegated.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

use super::LimitError;

/// The functions wrapped, by their DataFusion name.
pub const CONTAINED: &[&str] = &["date_bin", "date_trunc"];

pub fn register(ctx: &SessionContext) -> Result<(), LimitError> {
    let state = ctx.state();
    for name in CONTAINED {
        let inner = state
            .scalar_functions()
            .get(*name)
            .cloned()
            .ok_or_else(|| LimitError::Missing(name.to_string()))?;
        ctx.register_udf(ScalarUDF::new_from_impl(Contained { inner }));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Contained {
    inner: Arc<ScalarUDF>,
}

impl ScalarUDFImpl for Contained {
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
        self.inner.signature()
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
        Some(ScalarUDF::new_from_impl(Contained {
            inner: Arc::new(inner),
        }))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        // The inner function holds no state a panic could leave broken:
        // it reads its arguments and builds a new array.
        catch_unwind(AssertUnwindSafe(|| self.inner.invoke_with_args(args))).unwrap_or_else(|_| {
            Err(DataFusionError::Execution(format!(
                "{} failed on a value out of its range (a timestamp near the ends of the range, \
                 or an interval too large to add to it)",
                self.name()
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What panicked DataFusion 53's functions now fails as an error, and
    /// ordinary calls answer as before.
    #[tokio::test]
    async fn out_of_range_calls_fail_instead_of_panicking() {
        let ctx = SessionContext::new();
        register(&ctx).unwrap();
        // Inputs the SQL fuzz target found panicking DataFusion 53.
        for sql in [
            "select date_trunc('day', to_timestamp('-inf'::double))",
            "select date_bin(interval '1 day', to_timestamp(-1e308))",
        ] {
            let r = match ctx.sql(sql).await {
                Ok(df) => df.collect().await.map(|_| ()),
                Err(e) => Err(e),
            };
            let msg = r.expect_err(sql).to_string();
            println!("{sql}: {msg}");
            assert!(
                msg.contains("failed on a value out of its range"),
                "{sql}: {msg}"
            );
        }
        let b = ctx
            .sql("select date_trunc('day', timestamp '2024-03-05T12:34:56') as d")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let s = arrow::util::pretty::pretty_format_batches(&b)
            .unwrap()
            .to_string();
        assert!(s.contains("2024-03-05T00:00:00"), "{s}");
    }
}
