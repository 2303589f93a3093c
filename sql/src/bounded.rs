//! Functions whose output is not bounded by their input, bounded by the query memory limit.
//!
//! DataFusion's memory pool counts what operators keep (hash tables, sort buffers, aggregation
//! state), not the values scalar functions build: `repeat('x', 1000000000)` allocates a gigabyte
//! inside one call, before anything could count it, and nested `replace`s multiply a string's
//! size at each level. Every other scalar function builds at most a small multiple of its input,
//! which the pool and the batch size already bound. So the session replaces the functions of this
//! class with [`Bounded`] wrappers:
//!
//! ```text
//! args ─▶ estimate (functions whose size is an argument: repeat, lpad, rpad, array_repeat,
//!         │         array_resize, range, generate_series) ── over the limit ─▶ ResourcesExhausted
//!         ▼
//!      DataFusion's function ─▶ output ─▶ measured ── over the limit ─▶ ResourcesExhausted
//! ```
//! The estimate refuses before allocating, from the argument values (count × size of what is
//! repeated, the span of a range over its step); the measurement catches the rest (`replace`,
//! `regexp_replace`, `overlay`, `concat`) after one call, which at most multiplies an input
//! already under the limit by a factor written in the SQL text. The limit is the query's
//! `--query-memory-bytes`, applied to one function's output for one batch.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, FieldRef, Int32Type, Int64Type, IntervalMonthDayNanoType, TimeUnit,
};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{ExprSchema, Result};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::prelude::SessionContext;

/// How a function's output size follows from its arguments, before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Estimate {
    /// Only measured after the call.
    Measured,
    /// `repeat(string, n)`: n copies of the string.
    Repeat,
    /// `lpad`/`rpad(string, n [, fill])`: n characters.
    Pad,
    /// `array_repeat(element, n)`: a list of n elements.
    ArrayRepeat,
    /// `array_resize(list, n [, value])`: a list of n elements.
    ArrayResize,
    /// `range`/`generate_series([start,] stop [, step])`: a list of (stop - start) / step values.
    Range,
}

/// The functions of the class, with how their size is known.
const FUNCTIONS: &[(&str, Estimate)] = &[
    ("repeat", Estimate::Repeat),
    ("lpad", Estimate::Pad),
    ("rpad", Estimate::Pad),
    ("array_repeat", Estimate::ArrayRepeat),
    ("array_resize", Estimate::ArrayResize),
    ("range", Estimate::Range),
    ("generate_series", Estimate::Range),
    ("replace", Estimate::Measured),
    ("regexp_replace", Estimate::Measured),
    ("overlay", Estimate::Measured),
    ("concat", Estimate::Measured),
    ("concat_ws", Estimate::Measured),
    ("array_concat", Estimate::Measured),
];

/// Replaces the session's functions of the class with wrappers bounded by `limit` bytes, and
/// bounds the size of constants (see [`BoundedConstants`]).
pub fn register(ctx: &SessionContext, limit: usize) {
    ctx.add_optimizer_rule(Arc::new(BoundedConstants::new(limit)));
    let functions = ctx.state().scalar_functions().clone();
    for (name, estimate) in FUNCTIONS {
        if let Some(inner) = functions.get(*name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
                inner: inner.clone(),
                limit,
                estimate: *estimate,
            }));
        }
    }
}

/// Refuses plans holding a constant larger than `limit / batch_size` bytes: DataFusion repeats a
/// constant for every row of a batch wherever it becomes a column (a projected literal, a
/// function argument padded to an array, an aggregate's argument), so a 1 MiB string — written
/// in the SQL or folded from `repeat('x', 1000000)` by the optimizer — would build 8 GiB per
/// batch of 8,192 rows. It runs last among the optimizer rules, on folded constants.
#[derive(Debug)]
pub struct BoundedConstants {
    limit: usize,
}

impl BoundedConstants {
    /// A rule for queries of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl OptimizerRule for BoundedConstants {
    fn name(&self) -> &str {
        "vigie_bounded_constants"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let rows = usize::from(config.options().execution.batch_size);
        let largest = self.limit / rows;
        plan.apply_with_subqueries(|node| {
            node.apply_expressions(|expr| {
                expr.apply(|e| {
                    if let Expr::Literal(value, _) = e
                        && value.size() > largest
                    {
                        return Err(DataFusionError::ResourcesExhausted(format!(
                            "a constant of {} repeated over a batch of {rows} rows would build {}, \
                             more than the query memory limit of {} (--query-memory-bytes); \
                             constants may hold {} at most (for a long list of values, use \
                             `IN (…)`)",
                            human_bytes(value.size() as f64),
                            human_bytes(value.size() as f64 * rows as f64),
                            human_bytes(self.limit as f64),
                            human_bytes(largest as f64),
                        )));
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })
        })?;
        Ok(Transformed::no(plan))
    }
}

/// A scalar function whose output for one batch may not exceed `limit` bytes.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Bounded {
    inner: Arc<ScalarUDF>,
    limit: usize,
    estimate: Estimate,
}

impl Bounded {
    fn refuse(&self, bytes: f64, when: &str) -> DataFusionError {
        DataFusionError::ResourcesExhausted(format!(
            "{}(…) {when} {} in one batch, more than the query memory limit of {} \
             (--query-memory-bytes)",
            self.inner.name(),
            human_bytes(bytes),
            human_bytes(self.limit as f64)
        ))
    }

    /// An upper bound of the output size in bytes, from the arguments.
    fn estimate(&self, args: &[ColumnarValue], rows: usize) -> Result<f64> {
        let arrays = args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<Vec<_>>>()?;
        Ok(match (self.estimate, arrays.as_slice()) {
            (Estimate::Repeat, [string, n, ..]) => {
                let lengths = byte_lengths(string)?;
                let counts = integers(n);
                (0..rows).map(|i| lengths[i] * counts[i].max(0.0)).sum()
            }
            (Estimate::Pad, [string, n, rest @ ..]) => {
                let lengths = byte_lengths(string)?;
                let counts = integers(n);
                // Each added character is one of the fill's: at most its widest, at most 4 bytes.
                let width = match rest.first() {
                    None => 1.0,
                    Some(fill) => max_char_bytes(fill),
                };
                (0..rows)
                    .map(|i| lengths[i] + counts[i].max(0.0) * width)
                    .sum()
            }
            (Estimate::ArrayRepeat, [element, n, ..]) => {
                let size = value_bytes(element);
                integers(n).iter().map(|c| c.max(0.0) * size).sum()
            }
            (Estimate::ArrayResize, [list, n, ..]) => {
                let size = match list.data_type() {
                    DataType::List(_) => value_bytes(list.as_list::<i32>().values()),
                    DataType::LargeList(_) => value_bytes(list.as_list::<i64>().values()),
                    _ => 8.0,
                };
                integers(n).iter().map(|c| c.max(0.0) * size).sum()
            }
            (Estimate::Range, arrays) => range_elements(arrays, rows)? * 8.0,
            _ => 0.0,
        })
    }
}

/// Each row's length in bytes (0 for nulls).
fn byte_lengths(array: &ArrayRef) -> Result<Vec<f64>> {
    let lengths = length(array)?;
    let values = integers(&lengths);
    Ok(values.into_iter().map(|v| v.max(0.0)).collect())
}

/// Each row of an integer array as f64 (0 for nulls and non-integers).
fn integers(array: &ArrayRef) -> Vec<f64> {
    let n = array.len();
    let get = |i: usize| -> f64 {
        if array.is_null(i) {
            return 0.0;
        }
        match array.data_type() {
            DataType::Int64 => array.as_primitive::<Int64Type>().value(i) as f64,
            DataType::Int32 => f64::from(array.as_primitive::<Int32Type>().value(i)),
            _ => 0.0,
        }
    };
    (0..n).map(get).collect()
}

/// The widest character of a string array, in bytes (4 when it is not a string array).
fn max_char_bytes(array: &ArrayRef) -> f64 {
    let ascii = match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().is_ascii(),
        DataType::LargeUtf8 => array.as_string::<i64>().is_ascii(),
        DataType::Utf8View => array.as_string_view().is_ascii(),
        _ => false,
    };
    if ascii { 1.0 } else { 4.0 }
}

/// The average size of one value of `array`, at least 8 bytes.
fn value_bytes(array: &ArrayRef) -> f64 {
    let len = array.len().max(1) as f64;
    (array.get_array_memory_size() as f64 / len).max(8.0)
}

/// An upper bound of the number of values `range`/`generate_series` makes, over all rows.
fn range_elements(arrays: &[ArrayRef], rows: usize) -> Result<f64> {
    let (start, stop, step) = match arrays {
        [stop] => (None, stop, None),
        [start, stop] => (Some(start), stop, None),
        [start, stop, step, ..] => (Some(start), stop, Some(step)),
        [] => return Ok(0.0),
    };
    let positions = |a: &ArrayRef| positions(a);
    let stops = positions(stop);
    let starts = start.map_or_else(|| vec![Some(0.0); rows], positions);
    let steps = match step {
        None => vec![Some(1.0); rows],
        Some(step) => match step.data_type() {
            DataType::Interval(_) => smallest_steps(step)?,
            _ => positions(step),
        },
    };
    // Dates count in days, timestamps in their unit: an interval step is in nanoseconds.
    let scale = match stop.data_type() {
        DataType::Date32 => 86_400e9,
        DataType::Timestamp(unit, _) => match unit {
            TimeUnit::Second => 1e9,
            TimeUnit::Millisecond => 1e6,
            TimeUnit::Microsecond => 1e3,
            TimeUnit::Nanosecond => 1.0,
        },
        _ => 1.0,
    };
    Ok((0..rows)
        .map(|i| match (starts[i], stops[i], steps[i]) {
            (Some(a), Some(b), Some(s)) if s != 0.0 => ((b - a) * scale / s).abs() + 1.0,
            _ => 0.0,
        })
        .sum())
}

/// Each row of an integer, date or timestamp array as f64, `None` for nulls.
fn positions(array: &ArrayRef) -> Vec<Option<f64>> {
    (0..array.len())
        .map(|i| {
            if array.is_null(i) {
                return None;
            }
            match array.data_type() {
                DataType::Int64 => Some(array.as_primitive::<Int64Type>().value(i) as f64),
                DataType::Int32 => Some(f64::from(array.as_primitive::<Int32Type>().value(i))),
                DataType::Date32 => Some(f64::from(array.as_primitive::<Date32Type>().value(i))),
                DataType::Timestamp(..) => {
                    datafusion::arrow::compute::cast(&array.slice(i, 1), &DataType::Int64)
                        .ok()
                        .map(|v| v.as_primitive::<Int64Type>().value(0) as f64)
                }
                _ => None,
            }
        })
        .collect()
}

/// The shortest each interval step can be, in nanoseconds (a month at least 28 days, a day at
/// least 23 hours across a daylight-saving change).
fn smallest_steps(step: &ArrayRef) -> Result<Vec<Option<f64>>> {
    let step = datafusion::arrow::compute::cast(
        step,
        &DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano),
    )?;
    let step = step.as_primitive::<IntervalMonthDayNanoType>();
    Ok((0..step.len())
        .map(|i| {
            (!step.is_null(i)).then(|| {
                let v = step.value(i);
                let hour = 3_600e9;
                f64::from(v.months) * 28.0 * 24.0 * hour
                    + f64::from(v.days) * 23.0 * hour
                    + v.nanoseconds as f64
            })
        })
        .collect())
}

/// The memory a function's result holds once it is a column of `rows` values (a scalar result
/// is repeated for every row of the batch by the operator that uses it).
fn output_bytes(value: &ColumnarValue, rows: usize) -> usize {
    match value {
        ColumnarValue::Array(array) => array.get_array_memory_size(),
        ColumnarValue::Scalar(scalar) => scalar.size().saturating_mul(rows.max(1)),
    }
}

/// `1.5 GiB`, `256 MiB`, `12 KiB`, `100 B`.
fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        #[expect(deprecated)]
        self.inner.inner().display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        #[expect(deprecated)]
        self.inner.inner().is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if self.estimate != Estimate::Measured {
            let bytes = self.estimate(&args.args, args.number_rows)?;
            if bytes > self.limit as f64 {
                return Err(self.refuse(bytes, "would build"));
            }
        }
        let rows = args.number_rows;
        let output = self.inner.invoke_with_args(args)?;
        let bytes = output_bytes(&output, rows);
        if bytes > self.limit {
            return Err(self.refuse(bytes as f64, "built"));
        }
        Ok(output)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Self {
            inner: Arc::new(inner),
            limit: self.limit,
            estimate: self.estimate,
        }))
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.inner.inner().preimage(args, lit_expr, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.inner().placement(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(ctx: &SessionContext, sql: &str) -> Result<usize> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    fn bounded(limit: usize) -> SessionContext {
        let ctx = SessionContext::new();
        register(&ctx, limit);
        ctx
    }

    #[tokio::test]
    async fn functions_that_would_build_too_much_are_refused_before_they_run() {
        let ctx = bounded(64 << 20);
        for sql in [
            "SELECT repeat('x', 1000000000)",
            "SELECT repeat('ab', 40000000)",
            "SELECT lpad('x', 1000000000)",
            "SELECT rpad('x', 1000000000, 'é')",
            "SELECT array_repeat(1, 100000000)",
            "SELECT array_repeat('some text', 10000000)",
            "SELECT array_resize([1, 2], 100000000)",
            "SELECT range(1000000000)",
            "SELECT generate_series(1, 1000000000000)",
            "SELECT range(DATE '0001-01-01', DATE '9999-12-31', INTERVAL '1 second')",
            "SELECT range(TIMESTAMP '2000-01-01', TIMESTAMP '2100-01-01', INTERVAL '1 second')",
            "SELECT repeat('x', 1000000) FROM generate_series(1, 1000)",
            "SELECT length(repeat(repeat('x', 100000), 100000))",
            // Constants repeated over a batch: written, or folded by the optimizer.
            "SELECT repeat('x', 100000), value FROM generate_series(1, 10)",
            "SELECT lpad(CAST(value AS VARCHAR), 100000) FROM generate_series(1, 1000)",
            "SELECT concat(value, repeat('x', 100000)) FROM generate_series(1, 10)",
            "SELECT range(100000), value FROM generate_series(1, 10)",
        ] {
            let Err(err) = run(&ctx, sql).await else {
                panic!("{sql}: answered");
            };
            assert!(
                matches!(err.find_root(), DataFusionError::ResourcesExhausted(m)
                    if m.contains("the query memory limit of 64 MiB")),
                "{sql}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn amplification_is_stopped_after_one_call_over_the_limit() {
        let ctx = bounded(16 << 20);
        // Each replace makes the string 10 times longer: 1 KB, 10 KB, ..., 100 MB (from a column,
        // so that the optimizer does not fold it into a constant first).
        let mut sql = "s".to_string();
        for _ in 0..5 {
            sql = format!("replace({sql}, '1', '1111111111')");
        }
        let err = run(
            &ctx,
            &format!(
                "SELECT length({sql}) FROM (SELECT repeat(CAST(value AS VARCHAR), 1000) AS s \
                 FROM generate_series(1, 1))"
            ),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err.find_root(), DataFusionError::ResourcesExhausted(m) if m.starts_with("replace(…) built")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn functions_under_the_limit_answer_as_datafusion_does() {
        let ctx = bounded(64 << 20);
        let plain = SessionContext::new();
        for sql in [
            "SELECT repeat('ab', 3) AS v",
            "SELECT lpad('7', 3, '0') AS v",
            "SELECT rpad('a', 4) AS v",
            "SELECT array_repeat(2, 3) AS v",
            "SELECT array_resize([1], 3, 0) AS v",
            "SELECT range(3) AS v",
            "SELECT generate_series(1, 7, 3) AS v",
            "SELECT range(DATE '2026-01-01', DATE '2026-01-04', INTERVAL '1 day') AS v",
            "SELECT replace('abc', 'b', 'xyz') AS v",
            "SELECT length(repeat('x', 1000000)) AS v",
            "SELECT repeat('ab', 1000) AS v, value FROM generate_series(1, 3)",
            "SELECT repeat(NULL, 3) AS v",
            "SELECT repeat('x', -1) AS v",
        ] {
            let got = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            let want = plain.sql(sql).await.unwrap().collect().await.unwrap();
            assert_eq!(got, want, "{sql}");
        }
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(64.0 * 1024.0 * 1024.0), "64 MiB");
        assert_eq!(human_bytes(1.5 * 1024.0 * 1024.0 * 1024.0), "1.5 GiB");
        assert_eq!(human_bytes(100.0), "100 B");
    }
}
