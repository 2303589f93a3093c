//! Vigie's SQL layer: a DataFusion session per tenant over its live tables.
//!
//! ```text
//! SQL ─▶ SqlEngine::plan (read-only checks) ─▶ DataFrame ─▶ execute_stream ─▶ plain Arrow batches
//!            catalog vigie.public: reports, alerts (LiveTableProvider: Delta files ∪ buffer)
//!                                  sightings (one row per citizen of a report, flattened
//!                                             from reports at query time: see `sightings`)
//!                                  alert_rules (the rules and their counts since start)
//!                                  audit_log (admins only)
//! ```
//! The tenant's admins also see `audit_log`. [`Sessions`] hands each principal its tenant's session,
//! admits queries under the per-tenant concurrency limit and records them in the audit log.
//!
//! Inside queries, strings are views (`Utf8View`: faster to hash and compare, read straight from
//! Parquet; see [`view_schema`]). Results use plain Arrow types (Utf8, not Utf8View or
//! dictionaries) because Flight SQL clients such as the JDBC driver do not read the others: see
//! [`plain_schema`].

pub mod bounded;
pub mod query;
pub mod rules;
pub mod runtime;
pub mod sessions;
pub mod sightings;
pub mod statement;
pub mod table;
pub mod udf;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan, ScalarUDF, Volatility};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use std::num::NonZeroUsize;
use vigie_engine::Tenant;
use vigie_engine::schema::TableKind;
use vigie_engine::store::Lake;

pub use crate::query::{Outcome, Purpose, Query};
pub use crate::sessions::{QueryLimits, Sessions};
pub use crate::statement::Statement;
use crate::table::LiveTableProvider;

/// The catalog every tenant's session shows.
pub const CATALOG: &str = "vigie";
/// The schema holding the tables.
pub const SCHEMA: &str = "public";

/// Errors of the SQL layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Planning or running a query failed; [`DataFusionError::find_root`] tells whose fault.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// The statement is not a query: Vigie's SQL is read-only.
    #[error("{0}")]
    ReadOnly(String),
    /// Parameter values do not fit the statement's placeholders (count or type).
    #[error("{0}")]
    Parameters(String),
    /// The tenant runs as many queries as it may: retry when one ends.
    #[error("{0}")]
    Busy(String),
    /// The tenant's tables are not open on this server (yet).
    #[error("{0}")]
    Unavailable(String),
    /// The query ran longer than its time limit and was cancelled.
    #[error("{0}")]
    Timeout(String),
    /// The server is shutting down: the query was cancelled or refused.
    #[error("{0}")]
    ShuttingDown(String),
    /// A bug: a query task panicked, a result could not be encoded.
    #[error("{0}")]
    Internal(String),
}

/// The SQL layer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One tenant's SQL session, as one role sees it.
#[derive(Clone)]
pub struct SqlEngine {
    ctx: SessionContext,
    /// The same session without logical analyzer and optimizer rules: it turns plans that
    /// [`SqlEngine::statement`] already optimized into physical plans without redoing that work.
    optimized_ctx: SessionContext,
    /// Each query gets its own memory pool of this size (`None`: unbounded).
    memory_limit: Option<usize>,
    /// Plans by SQL text (see [`SqlEngine::statement`]).
    plans: Arc<parking_lot::Mutex<HashMap<String, CachedPlan>>>,
    /// The tenant whose tables the session shows (in cluster mode a takeover replaces it).
    tenant: Arc<Tenant>,
}

/// A statement's plan as a session keeps it between runs.
#[derive(Clone)]
enum CachedPlan {
    /// Checked, not optimized: the optimizer must run for every execution (placeholders, or
    /// functions whose value depends on the moment such as `now()`, or `EXPLAIN`).
    Checked(LogicalPlan),
    /// Optimized once: the same at any moment (tables are read at physical planning).
    Optimized(LogicalPlan),
}

/// Statements whose parsed plans a session keeps; beyond, it forgets them all and starts again.
const CACHED_PLANS: usize = 256;

/// What a session shows and allows beyond the tenant's data tables.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionOptions {
    /// Whether `audit_log` is in the catalog (the tenant's admins only).
    pub audit_log: bool,
    /// Memory one query may use before spilling or failing; `None`: unbounded.
    pub memory_limit: Option<usize>,
}

impl std::fmt::Debug for SqlEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlEngine")
            .field("session_id", &self.ctx.session_id())
            .finish()
    }
}

impl SqlEngine {
    /// An analyst's session over `tenant`'s tables in `lake`, without limits.
    pub async fn new(tenant: Arc<Tenant>, lake: &Lake) -> Result<Self> {
        Self::with_options(tenant, lake, SessionOptions::default()).await
    }

    /// A session over `tenant`'s tables in `lake`, showing and allowing what `options` say.
    pub async fn with_options(
        tenant: Arc<Tenant>,
        lake: &Lake,
        view: SessionOptions,
    ) -> Result<Self> {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_information_schema(true);
        let options = config.options_mut();
        options.execution.parquet.schema_force_view_types = false;
        options.execution.parquet.pushdown_filters = true;
        options.execution.parquet.reorder_filters = true;
        options.sql_parser.map_string_types_to_utf8view = false;
        let ctx = SessionContext::new_with_config(config);
        ctx.register_udf(ScalarUDF::new_from_impl(udf::UtcDateTrunc::default()));
        if let Some(limit) = view.memory_limit {
            bounded::register(&ctx, limit);
        }
        let store_url = ObjectStoreUrl::parse(lake.root_url().as_str())?;
        ctx.register_object_store(store_url.as_ref(), lake.root_store.clone());
        for (name, table) in tenant.tables() {
            if table.kind() == TableKind::Audit && !view.audit_log {
                continue;
            }
            let provider = Arc::new(LiveTableProvider::new(table.clone(), store_url.clone()));
            if table.kind() == TableKind::Reports {
                ctx.register_table(
                    "sightings",
                    Arc::new(sightings::SightingsTable::try_new(provider.clone())?),
                )?;
            }
            ctx.register_table(name, provider)?;
        }
        ctx.register_table(
            "alert_rules",
            Arc::new(rules::AlertRulesTable::new(tenant.clone())),
        )?;
        let mut optimized_state = SessionStateBuilder::new_from_existing(ctx.state());
        if let Some(analyzer) = optimized_state.analyzer() {
            // Function rewrites stay: physical expressions made during planning use them.
            analyzer.rules.clear();
        }
        if let Some(optimizer) = optimized_state.optimizer() {
            optimizer.rules.clear();
        }
        let optimized_ctx = SessionContext::new_with_state(optimized_state.build());
        Ok(Self {
            ctx,
            optimized_ctx,
            memory_limit: view.memory_limit,
            plans: Arc::default(),
            tenant,
        })
    }

    /// The tenant whose tables the session shows.
    pub fn tenant(&self) -> &Arc<Tenant> {
        &self.tenant
    }

    /// The context to run one query's plans in: the session's, with a memory pool of its own when
    /// the session has a memory limit (operators that can spill do; the others fail the query
    /// with `ResourcesExhausted`, leaving other queries alone).
    pub fn task_context(&self, frame: &DataFrame) -> Result<Arc<TaskContext>> {
        let task = frame.task_ctx();
        let Some(limit) = self.memory_limit else {
            return Ok(Arc::new(task));
        };
        let pool = TrackConsumersPool::new(
            FairSpillPool::new(limit),
            NonZeroUsize::new(3).expect("3 is not zero"),
        );
        let runtime = RuntimeEnvBuilder::from_runtime_env(&task.runtime_env())
            .with_memory_pool(Arc::new(pool))
            .build_arc()?;
        Ok(Arc::new(task.with_runtime(runtime)))
    }

    /// The underlying DataFusion session.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Plans a read-only statement (queries, `EXPLAIN`, `SHOW`, `DESCRIBE`) without parameters.
    pub async fn plan(&self, sql: &str) -> Result<DataFrame> {
        self.statement(sql).await?.into_frame()
    }

    /// Plans a read-only statement whose `?` or `$n` placeholders get values later
    /// ([`Statement::bind`]).
    ///
    /// Dashboards and prepared statements send the same text again and again: its plan is kept,
    /// so a repeat skips parsing and name resolution and, when the plan is the same at any moment,
    /// the analyzer and optimizer too (together half of a small query's planning, measured).
    /// Plans with placeholders or with functions whose value depends on the moment (`now()`,
    /// which the optimizer fixes to the query's start, `random()`) are optimized at every run.
    /// The physical plan is always made anew: it reads the tables' current files and buffer.
    pub async fn statement(&self, sql: &str) -> Result<Statement> {
        let sql = statement::number_placeholders(sql);
        let cached = self.plans.lock().get(&sql).cloned();
        let plan = match cached {
            Some(plan) => plan,
            None => {
                let checked = self.checked_plan(&sql).await?;
                let plan = if same_at_any_moment(&checked) {
                    CachedPlan::Optimized(self.ctx.state().optimize(&checked)?)
                } else {
                    CachedPlan::Checked(checked)
                };
                let mut plans = self.plans.lock();
                if plans.len() >= CACHED_PLANS {
                    plans.clear();
                }
                plans.insert(sql, plan.clone());
                plan
            }
        };
        let frame = match plan {
            CachedPlan::Checked(plan) => self.ctx.execute_logical_plan(plan).await?,
            CachedPlan::Optimized(plan) => self.optimized_ctx.execute_logical_plan(plan).await?,
        };
        Statement::new(frame)
    }

    /// The logical plan of a read-only statement.
    async fn checked_plan(&self, sql: &str) -> Result<LogicalPlan> {
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let plan = self
            .ctx
            .state()
            .create_logical_plan(sql)
            .await
            .map_err(Error::DataFusion)?;
        options.verify_plan(&plan).map_err(|e| {
            Error::ReadOnly(format!(
                "Vigie's SQL is read-only: only queries are allowed ({})",
                e.find_root()
            ))
        })?;
        Ok(plan)
    }
}

/// Whether optimizing `plan` gives the same plan at any moment, so that it can be optimized once
/// and kept: a query without placeholders whose functions are all immutable (`now()` is folded
/// to the query's start by the optimizer; volatile functions are left alone, but excluded
/// too for simplicity), and not an `EXPLAIN`, which shows the optimizer's work.
fn same_at_any_moment(plan: &LogicalPlan) -> bool {
    if matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)) {
        return false;
    }
    let mut same = true;
    let walked = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                let volatility = match e {
                    Expr::Placeholder(_) => Volatility::Volatile,
                    Expr::ScalarFunction(f) => f.func.signature().volatility,
                    Expr::AggregateFunction(f) => f.func.signature().volatility,
                    Expr::WindowFunction(w) => w.fun.signature().volatility,
                    _ => Volatility::Immutable,
                };
                same = volatility == Volatility::Immutable;
                Ok(if same {
                    TreeNodeRecursion::Continue
                } else {
                    TreeNodeRecursion::Stop
                })
            })
        })
    });
    walked.is_ok() && same
}

/// The type a column has inside queries: strings and binaries as views (`Utf8View`), recursively
/// inside lists and structs. DataFusion hashes and compares views faster (group-bys and joins on
/// names); [`plain_type`] turns results back at the Flight edge.
pub fn view_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 => DataType::Utf8View,
        DataType::Binary | DataType::LargeBinary => DataType::BinaryView,
        DataType::List(f) => DataType::List(map_field(f, view_type)),
        DataType::Struct(fields) => {
            DataType::Struct(fields.iter().map(|f| map_field(f, view_type)).collect())
        }
        other => other.clone(),
    }
}

/// The schema of `schema` with [`view_type`] applied to each column.
pub fn view_schema(schema: &Schema) -> SchemaRef {
    map_schema(schema, view_type)
}

/// The type a result column is sent as: view and large strings become Utf8, dictionaries their
/// values, recursively inside lists and structs.
pub fn plain_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Dictionary(_, value) => plain_type(value),
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) => {
            DataType::List(map_field(f, plain_type))
        }
        DataType::Struct(fields) => {
            DataType::Struct(fields.iter().map(|f| map_field(f, plain_type)).collect())
        }
        other => other.clone(),
    }
}

/// The schema of `schema` with [`plain_type`] applied to each column.
pub fn plain_schema(schema: &Schema) -> SchemaRef {
    map_schema(schema, plain_type)
}

/// `field` with its type mapped by `to` (name, nullability and metadata kept).
fn map_field(field: &FieldRef, to: fn(&DataType) -> DataType) -> FieldRef {
    Arc::new(
        Field::new(field.name(), to(field.data_type()), field.is_nullable())
            .with_metadata(field.metadata().clone()),
    )
}

fn map_schema(schema: &Schema, to: fn(&DataType) -> DataType) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| map_field(f, to))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

/// Casts `batch` to `schema` (made by [`plain_schema`] or [`view_schema`] from the batch's own
/// schema).
pub fn cast_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(DataFusionError::from)?;
    Ok(RecordBatch::try_new(schema.clone(), columns).map_err(DataFusionError::from)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn kept(sql: &str) -> bool {
        let plan = SessionContext::new()
            .state()
            .create_logical_plan(sql)
            .await
            .unwrap();
        same_at_any_moment(&plan)
    }

    #[tokio::test]
    async fn plans_that_depend_on_the_moment_are_not_kept_optimized() {
        assert!(kept("SELECT 1 + 1").await);
        assert!(kept("SELECT x, count(*) FROM (VALUES (1), (2)) t(x) GROUP BY x").await);
        assert!(kept("SELECT date_trunc('hour', TIMESTAMP '2026-01-01T10:20:00Z')").await);
        assert!(!kept("SELECT now()").await);
        assert!(
            !kept("SELECT x FROM (VALUES (1)) t(x) WHERE x < extract(year FROM current_date)")
                .await
        );
        assert!(!kept("SELECT (SELECT max(random()) FROM (VALUES (1)) u(y))").await);
        assert!(!kept("SELECT x FROM (VALUES (1)) t(x) WHERE EXISTS (SELECT 1 WHERE now() > TIMESTAMP '2000-01-01')").await);
        assert!(!kept("SELECT $1 + 1").await);
        assert!(!kept("EXPLAIN SELECT 1").await);
    }
}
