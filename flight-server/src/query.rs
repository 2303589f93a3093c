//! Running a statement: planning on the query runtime, the plan kept for DoGet, and the run
//! admitted, bounded in time and memory, audited, and encoded as it streams.
//!
//! ```text
//! GetFlightInfo ─▶ planning(): admitted (Purpose::Plan) ─▶ physical() ─▶ plans cache ─▶ ticket
//! DoGet(ticket) ─▶ run(): the cached plan (or plan again), admitted (Purpose::Run) with the
//!   planning time already spent ─▶ execute_stream per parameter row ─▶ cast to plain types
//!   ─▶ encode() ─▶ Sessions::stream (timeout, shutdown, audit when it ends or is dropped)
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, FlightInfo};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status};
use tracing::{debug, info};
use vigie_auth::Principal;
use vigie_sql::{Error as SqlError, Outcome, Purpose, SqlEngine, cast_batch};

use crate::VigieFlightSql;
use crate::error::status_of;
use crate::handle::Handle;
use crate::stream::DoGetStream;

/// A statement's physical plans (one per bound parameter row) and the context to run them.
#[derive(Clone)]
pub(crate) struct Planned {
    /// The result columns in the plain types sent to clients.
    schema: SchemaRef,
    plans: Vec<Arc<dyn ExecutionPlan>>,
    task: Arc<TaskContext>,
    /// How long planning took: it counts against the statement's time limit when it runs (the
    /// time a client waits between GetFlightInfo and DoGet does not).
    planning: Duration,
}

impl VigieFlightSql {
    /// Runs `work` over `who`'s session on the query runtime, admitted and bounded in time like
    /// a query; a refusal or failure is audited (success is audited by the run that follows).
    pub(crate) async fn planning<T, F, Fut>(
        &self,
        who: &Principal,
        sql: &str,
        work: F,
    ) -> Result<T, Status>
    where
        F: FnOnce(SqlEngine) -> Fut,
        Fut: Future<Output = Result<T, SqlError>> + Send + 'static,
        T: Send + 'static,
    {
        let (query, session) = self
            .sessions
            .start(who, sql, Purpose::Plan)
            .await
            .map_err(|e| status_of(&e))?;
        let result = self.sessions.run(&query, work(session)).await;
        if result.is_ok() {
            query.end(Outcome::Ok);
        }
        result.map_err(|e| status_of(&e))
    }

    /// GetFlightInfo for a statement: plans it once and names the plan in the ticket.
    pub(crate) async fn statement_info(
        &self,
        handle: Handle,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let who = Principal::of(&request)?;
        let descriptor = request.into_inner();
        let handle = self.with_bindings(&who, handle);
        let rows = self.parameter_rows(&who, &handle)?;
        let text = handle.sql.clone();
        // From the call's start: the time spent waiting for a query thread (busy with other
        // statements, or with one just cancelled) counts too.
        let begun = Instant::now();
        let mut planned = self
            .planning(&who, &handle.sql, |sql| physical(sql, text, rows))
            .await?;
        planned.planning = begun.elapsed();
        let schema = planned.schema.clone();
        let plan = self.next_plan.fetch_add(1, Ordering::Relaxed).max(1);
        self.plans
            .insert(plan, (who, handle.statement_key(), planned));
        let ticket = TicketStatementQuery {
            statement_handle: Handle { plan, ..handle }.to_bytes(),
        }
        .as_any()
        .encode_to_vec();
        self.flight_info(&schema, ticket, descriptor)
            .map(Response::new)
    }

    /// The handle's bound parameter rows; a handle that cannot be read is audited as refused.
    pub(crate) fn parameter_rows(
        &self,
        who: &Principal,
        handle: &Handle,
    ) -> Result<Option<Vec<Vec<ScalarValue>>>, Status> {
        handle.parameter_rows().inspect_err(|status| {
            let outcome = Outcome::Failed(status.message().to_string());
            self.sessions
                .audit(who, &handle.sql, Duration::ZERO, outcome);
        })
    }

    /// DoGet for a statement: runs the plan GetFlightInfo made, or plans again when it is gone,
    /// and streams the batches as they are produced.
    ///
    /// The query is admitted (its tenant's concurrency and its memory reservation), runs on the
    /// query runtime, is cancelled at its time limit or at shutdown, and is recorded in the audit
    /// log with its outcome and row count when its stream ends or is dropped.
    pub(crate) async fn run<T>(
        &self,
        handle: Handle,
        request: &Request<T>,
    ) -> Result<Response<DoGetStream>, Status> {
        let who = Principal::of(request)?;
        let handle = self.with_bindings(&who, handle);
        let cached = match self.plans.take(&handle.plan) {
            Some((planner, key, planned)) if planner == who && key == handle.statement_key() => {
                Some(planned)
            }
            _ => None,
        };
        let now = Instant::now();
        let started = cached
            .as_ref()
            .and_then(|p| now.checked_sub(p.planning))
            .unwrap_or(now);
        let query = self
            .sessions
            .admit_at(&who, &handle.sql, Purpose::Run, started)
            .map_err(|e| status_of(&e))?;
        let planned = match cached {
            Some(planned) => planned,
            None => {
                // The admitted query audits the failure (not parameter_rows: one record a query).
                let rows = handle.parameter_rows().inspect_err(|status| {
                    query.end(Outcome::Failed(status.message().to_string()));
                })?;
                let session = self
                    .sessions
                    .session(&who)
                    .await
                    .inspect_err(|e| query.fail(e));
                let work = physical(
                    session.map_err(|e| status_of(&e))?,
                    handle.sql.clone(),
                    rows,
                );
                self.sessions
                    .run(&query, work)
                    .await
                    .map_err(|e| status_of(&e))?
            }
        };
        info!(principal = %who.name, tenant = %who.tenant, sql = %handle.sql, "query");
        let Planned {
            schema,
            plans,
            task,
            planning: _,
        } = planned;
        let out_schema = schema.clone();
        let rows = query.row_counter();
        let batches = futures::stream::iter(plans)
            .flat_map(move |plan| match execute_stream(plan, task.clone()) {
                Ok(stream) => stream.boxed(),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            })
            .map(move |batch| {
                let batch = cast_batch(&batch?, &out_schema)?;
                rows.fetch_add(batch.num_rows(), Ordering::Relaxed);
                Ok(batch)
            });
        let encoded = encode(schema, batches);
        let answered = self
            .sessions
            .stream(query, encoded)
            .map_err(|e| status_of(&e));
        Ok(Response::new(Box::pin(answered)))
    }
}

/// Plans `sql` to physical plans, one per bound parameter row (or one), with the result schema
/// and the context to run them in.
async fn physical(
    session: SqlEngine,
    sql: String,
    rows: Option<Vec<Vec<ScalarValue>>>,
) -> Result<Planned, SqlError> {
    let started = Instant::now();
    let (schema, frames) = frames(&session, &sql, rows).await?;
    let logical = started.elapsed();
    let task = session.task_context(&frames[0])?;
    let mut plans = Vec::with_capacity(frames.len());
    for frame in frames {
        plans.push(frame.create_physical_plan().await?);
    }
    debug!(
        logical_us = logical.as_micros() as u64,
        physical_us = (started.elapsed() - logical).as_micros() as u64,
        "planned"
    );
    Ok(Planned {
        schema,
        plans,
        task,
        planning: started.elapsed(),
    })
}

/// Plans `sql` and binds its parameter rows: one frame per row, or one; with the result schema.
pub(crate) async fn frames(
    session: &SqlEngine,
    sql: &str,
    rows: Option<Vec<Vec<ScalarValue>>>,
) -> Result<(SchemaRef, Vec<DataFrame>), SqlError> {
    let statement = session.statement(sql).await?;
    let schema = statement.schema();
    let frames = match rows {
        None => vec![statement.into_frame()?],
        Some(rows) => rows
            .into_iter()
            .map(|row| statement.clone().bind(row))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok((schema, frames))
}

/// Arrow IPC encoding of a query's batches (on the query runtime, like the query itself).
fn encode(
    schema: SchemaRef,
    batches: impl Stream<Item = Result<arrow::array::RecordBatch, SqlError>> + Send + 'static,
) -> impl Stream<Item = Result<arrow_flight::FlightData, SqlError>> + Send + 'static {
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches.map_err(|e| FlightError::ExternalError(Box::new(e))))
        .map_err(|e| match e {
            FlightError::ExternalError(inner) => match inner.downcast::<SqlError>() {
                Ok(e) => *e,
                Err(other) => SqlError::Internal(other.to_string()),
            },
            other => SqlError::Internal(format!("cannot encode the result: {other}")),
        })
}
