//! Vigie's Arrow Flight SQL service: analysts' SQL over all history and the live buffer.
//!
//! ```text
//! CreatePreparedStatement(sql) ─▶ handle {sql}, dataset + parameter schemas
//! DoPut(handle, parameter rows) ─▶ handle {sql, rows}            (stateless: see `handle`)
//! GetFlightInfo(statement | handle) ─▶ SqlEngine::statement ─▶ bind ─▶ physical plan ─▶ PlanCache
//!                                   ─▶ FlightInfo { ticket = handle + plan id }
//! DoGet(ticket) ─▶ PlanCache::take (or plan again from the SQL) ─▶ execute_stream
//!               ─▶ plain Arrow batches as they come ─▶ FlightData stream
//! ```
//! Metadata commands (SqlInfo, XdbcTypeInfo, catalogs, schemas, tables, keys) answer from the
//! session's catalog and `metadata`. Errors become statuses in [`status_of`]: user mistakes
//! `INVALID_ARGUMENT`, overload `RESOURCE_EXHAUSTED`, unsupported commands `UNIMPLEMENTED` naming
//! the command, the rest `INTERNAL`.

mod cache;
mod handle;
mod metadata;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::error::ArrowError;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginSavepointRequest, ActionBeginSavepointResult, ActionBeginTransactionRequest,
    ActionBeginTransactionResult, ActionCancelQueryRequest, ActionCancelQueryResult,
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, ActionCreatePreparedSubstraitPlanRequest,
    ActionEndSavepointRequest, ActionEndTransactionRequest, Command, CommandGetCatalogs,
    CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementIngest, CommandStatementQuery, CommandStatementSubstraitPlan,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use std::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{debug, info};
use vigie_auth::{Access, Authenticator, Principal};
use vigie_sql::{
    Error as SqlError, Outcome, Purpose, Sessions, SqlEngine, cast_batch, plain_schema,
};

use crate::cache::TtlCache;
use crate::handle::Handle;

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

/// The status a Flight SQL client sees for a SQL error.
pub fn status_of(error: &SqlError) -> Status {
    match error {
        SqlError::ReadOnly(m) | SqlError::Parameters(m) => Status::invalid_argument(m.clone()),
        SqlError::Busy(m) => Status::resource_exhausted(m.clone()),
        SqlError::Unavailable(m) | SqlError::ShuttingDown(m) => Status::unavailable(m.clone()),
        SqlError::Timeout(m) => Status::deadline_exceeded(m.clone()),
        SqlError::Internal(m) => Status::internal(m.clone()),
        SqlError::DataFusion(e) => datafusion_status(e),
    }
}

fn datafusion_status(error: &DataFusionError) -> Status {
    let root = error.find_root();
    let message = root.to_string();
    match root {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Configuration(_) => Status::invalid_argument(message),
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(message),
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            ArrowError::CastError(_)
            | ArrowError::ParseError(_)
            | ArrowError::DivideByZero
            | ArrowError::ComputeError(_)
            | ArrowError::InvalidArgumentError(_)
            | ArrowError::ArithmeticOverflow(_) => Status::invalid_argument(message),
            _ => Status::internal(message),
        },
        DataFusionError::Execution(_) => Status::invalid_argument(message),
        _ => Status::internal(message),
    }
}

/// The Flight SQL service: each caller sees its own tenant's session.
#[derive(Clone)]
pub struct VigieFlightSql {
    sessions: Arc<Sessions>,
    auth: Arc<Authenticator>,
    sql_info: Arc<SqlInfoData>,
    xdbc_types: Arc<XdbcTypeInfoData>,
    /// Physical plans waiting for their DoGet, by plan id, with the principal and statement key
    /// they are for (a ticket only runs for the principal that planned it).
    plans: Arc<TtlCache<u64, (Principal, Bytes, Planned)>>,
    next_plan: Arc<AtomicU64>,
    /// Parameters bound through DoPut, by principal and the handle CreatePreparedStatement
    /// returned.
    bindings: Arc<TtlCache<(Principal, Bytes), Bytes>>,
}

/// A statement's physical plans (one per bound parameter row) and the context to run them.
#[derive(Clone)]
struct Planned {
    /// The result columns in the plain types sent to clients.
    schema: SchemaRef,
    plans: Vec<Arc<dyn ExecutionPlan>>,
    task: Arc<TaskContext>,
    /// How long planning took: it counts against the statement's time limit when it runs (the
    /// time a client waits between GetFlightInfo and DoGet does not).
    planning: Duration,
}

impl std::fmt::Debug for VigieFlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VigieFlightSql")
            .field("sessions", &self.sessions)
            .field("waiting_plans", &self.plans.len())
            .field("bindings", &self.bindings.len())
            .finish()
    }
}

/// How many physical plans may wait for their DoGet, and for how long. A waiting plan holds a
/// snapshot of the buffer, hence the short life.
const PLAN_CACHE_CAPACITY: usize = 256;
const PLAN_CACHE_TTL: Duration = Duration::from_secs(60);
/// How many prepared statements' bound parameters are remembered, and for how long.
const BINDINGS_CAPACITY: usize = 4096;
const BINDINGS_TTL: Duration = Duration::from_secs(3600);

impl VigieFlightSql {
    /// A service answering from `sessions`, logging users in with `auth`.
    pub fn new(sessions: Arc<Sessions>, auth: Arc<Authenticator>) -> Result<Self, FlightError> {
        let sql_info = metadata::sql_info(
            &datafusion::prelude::SessionContext::new().state(),
            sessions.limits().timeout,
        )?;
        Ok(Self {
            sessions,
            auth,
            sql_info: Arc::new(sql_info),
            xdbc_types: Arc::new(metadata::xdbc_type_info()?),
            plans: Arc::new(TtlCache::new(PLAN_CACHE_CAPACITY, PLAN_CACHE_TTL)),
            // Plan ids differ across restarts, so an old ticket rarely names a new plan (and a
            // plan is only used when its statement key matches too).
            next_plan: Arc::new(AtomicU64::new(u64::from(
                uuid::Uuid::new_v4().as_fields().0,
            ))),
            bindings: Arc::new(TtlCache::new(BINDINGS_CAPACITY, BINDINGS_TTL)),
        })
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> FlightServiceServer<Self> {
        FlightServiceServer::new(self)
    }

    /// The FlightInfo of a command answered by DoGet with the command itself as ticket.
    fn command_info(
        &self,
        schema: &arrow::datatypes::Schema,
        command: &impl ProstMessageExt,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.flight_info(
            schema,
            command.as_any().encode_to_vec(),
            request.into_inner(),
        )
        .map(Response::new)
    }

    fn flight_info(
        &self,
        schema: &arrow::datatypes::Schema,
        ticket: Vec<u8>,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("cannot encode the result schema: {e}")))
            .map(|info| {
                info.with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
                    .with_descriptor(descriptor)
            })
    }

    /// `handle` with the parameters DoPut bound to it, when the client sent back the handle
    /// CreatePreparedStatement made rather than the one DoPut returned.
    fn with_bindings(&self, who: &Principal, mut handle: Handle) -> Handle {
        if handle.parameters.is_empty()
            && !handle.id.is_empty()
            && let Some(parameters) = self.bindings.get(&(who.clone(), handle.binding_key()))
        {
            handle.parameters = parameters;
        }
        handle
    }

    /// Runs `work` over `who`'s session on the query runtime, admitted and bounded in time like
    /// a query; a refusal or failure is audited (success is audited by the run that follows).
    async fn planning<T, F, Fut>(&self, who: &Principal, sql: &str, work: F) -> Result<T, Status>
    where
        F: FnOnce(SqlEngine) -> Fut,
        Fut: Future<Output = Result<T, SqlError>> + Send + 'static,
        T: Send + 'static,
    {
        let query = self
            .sessions
            .admit(who, sql, Purpose::Plan)
            .map_err(|e| status_of(&e))?;
        let session = self
            .sessions
            .session(who)
            .await
            .inspect_err(|e| query.fail(e));
        let result = match session {
            Ok(session) => self.sessions.run(&query, work(session)).await,
            Err(e) => Err(e),
        };
        if result.is_ok() {
            query.end(Outcome::Ok);
        }
        result.map_err(|e| status_of(&e))
    }

    /// GetFlightInfo for a statement: plans it once and names the plan in the ticket.
    async fn statement_info(
        &self,
        handle: Handle,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let who = Principal::of(&request)?;
        let descriptor = request.into_inner();
        let handle = self.with_bindings(&who, handle);
        let rows = self.parameter_rows(&who, &handle)?;
        let text = handle.sql.clone();
        let planned = self
            .planning(&who, &handle.sql, |sql| physical(sql, text, rows))
            .await?;
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
    fn parameter_rows(
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
    async fn run<T>(
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

    /// The SQL session of `who`.
    async fn session(&self, who: &Principal) -> Result<SqlEngine, Status> {
        self.sessions.session(who).await.map_err(|e| status_of(&e))
    }

    /// The SQL session of the request's principal.
    async fn session_of<T>(&self, request: &Request<T>) -> Result<SqlEngine, Status> {
        self.session(&Principal::of(request)?).await
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
async fn frames(
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

/// A schema as the IPC message prepared-statement results carry.
fn schema_bytes(schema: &arrow::datatypes::Schema) -> Result<bytes::Bytes, Status> {
    let message: Result<IpcMessage, ArrowError> =
        SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into();
    message
        .map(|IpcMessage(bytes)| bytes)
        .map_err(|e| Status::internal(format!("cannot encode a schema: {e}")))
}

/// The status for a command Vigie does not implement, naming it.
fn unsupported(command: &str, why: &str) -> Status {
    Status::unimplemented(format!("Vigie does not implement {command}: {why}"))
}

fn one_batch<E: std::fmt::Display>(
    schema: arrow::datatypes::SchemaRef,
    batch: Result<arrow::array::RecordBatch, E>,
) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|e| Status::internal(format!("cannot build the answer: {e}")))?;
    Ok(Response::new(stream_batches(
        schema,
        futures::stream::once(async { Ok(batch) }),
    )))
}

/// DoGet of a metadata command whose answer is always `batch` (the empty key listings).
fn empty_answer(batch: arrow::array::RecordBatch) -> Result<Response<DoGetStream>, Status> {
    one_batch::<ArrowError>(batch.schema(), Ok(batch))
}

fn stream_batches(
    schema: arrow::datatypes::SchemaRef,
    batches: impl Stream<Item = Result<arrow::array::RecordBatch, FlightError>> + Send + 'static,
) -> DoGetStream {
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map_err(|e| match e {
            FlightError::Tonic(status) => *status,
            other => Status::internal(other.to_string()),
        });
    Box::pin(data)
}

#[tonic::async_trait]
impl FlightSqlService for VigieFlightSql {
    type FlightService = VigieFlightSql;

    /// Logs in: Basic credentials (base64 with or without padding: ADBC's Go driver omits it,
    /// pyarrow keeps it) or a Bearer API key give a session token, in the `authorization` header
    /// and the payload, that expires. In the open single-tenant mode anyone gets one.
    async fn do_handshake(
        &self,
        request: Request<tonic::Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| {
                v.to_str()
                    .map_err(|_| Status::unauthenticated("authorization header is not ASCII"))
            })
            .transpose()?;
        let header = header.map(str::to_string);
        let auth = self.auth.clone();
        // Password hashing is slow on purpose: keep it off the async workers.
        let (who, token) = tokio::task::spawn_blocking(move || auth.login(header.as_deref()))
            .await
            .map_err(|e| Status::internal(format!("login task failed: {e}")))?
            .and_then(|(who, token)| who.may(Access::Read).map(|()| (who, token)))?;
        info!(principal = %who.name, tenant = %who.tenant, "Flight SQL login");
        let answer = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into_bytes().into(),
        };
        let mut response: Response<
            Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>,
        > = Response::new(Box::pin(futures::stream::iter([Ok(answer)])));
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("cannot encode the token"))?;
        response.metadata_mut().insert("authorization", value);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        debug!(sql = %query.query, "GetFlightInfo statement");
        self.statement_info(Handle::new(query.query), request).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.run(Handle::from_bytes(&ticket.statement_handle)?, &request)
            .await
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.command_info(&schema, &query, request)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let builder = query.into_builder(&self.sql_info);
        let schema = builder.schema();
        one_batch(schema, builder.build())
    }

    /// Stateless handles (see `handle`): the handle carries the SQL, and the parameter rows once
    /// DoPut binds them. The JDBC driver prepares every query.
    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let who = Principal::of(&request)?;
        let text = query.query.clone();
        let (schema, parameters) = self
            .planning(&who, &query.query, |sql| async move {
                let statement = sql.statement(&text).await?;
                Ok((statement.schema(), statement.parameters().clone()))
            })
            .await?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: Handle::prepared(query.query).to_bytes(),
            dataset_schema: schema_bytes(&schema)?,
            parameter_schema: schema_bytes(&parameters)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        // Stateless handles: only parameters remembered for old clients to forget.
        if let Ok(handle) = Handle::from_bytes(&query.prepared_statement_handle) {
            self.bindings
                .remove(&(Principal::of(&request)?, handle.binding_key()));
        }
        Ok(())
    }

    /// Binds the parameter rows sent through DoPut: each row is one execution, and the results
    /// follow each other. Returns the handle that carries them (Flight SQL 15+ clients use it).
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = Handle::from_bytes(&query.prepared_statement_handle)?;
        let who = Principal::of(&request)?;
        let batches: Vec<_> = FlightRecordBatchStream::new_from_flight_data(
            request
                .into_inner()
                .map_err(|e| FlightError::Tonic(Box::new(e))),
        )
        .try_collect()
        .await
        .map_err(|e| match e {
            FlightError::Tonic(status) => *status,
            other => Status::invalid_argument(format!("cannot read the parameters: {other}")),
        })?;
        let handle = handle.with_parameters(&batches)?;
        // Bind now (logical plans only: execution makes the physical ones), so that a wrong
        // count or type fails here rather than at execution.
        let rows = self.parameter_rows(&who, &handle)?;
        let text = handle.sql.clone();
        self.planning(&who, &handle.sql, |sql| async move {
            frames(&sql, &text, rows).await.map(|_| ())
        })
        .await?;
        self.bindings
            .insert((who, handle.binding_key()), handle.parameters.clone());
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.to_bytes()),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = Handle::from_bytes(&query.prepared_statement_handle)?;
        self.statement_info(handle, request).await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.run(
            Handle::from_bytes(&query.prepared_statement_handle)?,
            &request,
        )
        .await
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&self.xdbc_types).schema();
        self.command_info(&schema, &query, request)
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let builder = query.into_builder(&self.xdbc_types);
        let schema = builder.schema();
        one_batch(schema, builder.build())
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.command_info(&metadata::primary_keys().schema(), &query, request)
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        empty_answer(metadata::primary_keys())
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.command_info(&metadata::foreign_keys().schema(), &query, request)
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        empty_answer(metadata::foreign_keys())
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.command_info(&metadata::foreign_keys().schema(), &query, request)
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        empty_answer(metadata::foreign_keys())
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.command_info(&metadata::foreign_keys().schema(), &query, request)
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        empty_answer(metadata::foreign_keys())
    }

    async fn get_flight_info_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(unsupported(
            "CommandStatementSubstraitPlan",
            "send SQL instead",
        ))
    }

    async fn do_put_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(unsupported(
            "CommandStatementSubstraitPlan",
            "send SQL instead",
        ))
    }

    async fn do_action_create_prepared_substrait_plan(
        &self,
        _query: ActionCreatePreparedSubstraitPlanRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        Err(unsupported(
            "ActionCreatePreparedSubstraitPlanRequest",
            "send SQL instead",
        ))
    }

    async fn do_put_statement_update(
        &self,
        _query: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(Status::invalid_argument(
            "Vigie's SQL is read-only: updates (CommandStatementUpdate) are refused; \
             data arrives through the ingest service",
        ))
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(Status::invalid_argument(
            "Vigie's SQL is read-only: updates (CommandPreparedStatementUpdate) are refused; \
             data arrives through the ingest service",
        ))
    }

    async fn do_put_statement_ingest(
        &self,
        _query: CommandStatementIngest,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(Status::invalid_argument(
            "Vigie's SQL is read-only: bulk ingestion (CommandStatementIngest) is refused; \
             data arrives through the ingest service",
        ))
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        Err(unsupported(
            "ActionBeginTransactionRequest",
            "Vigie is read-only and has no transactions",
        ))
    }

    async fn do_action_end_transaction(
        &self,
        _query: ActionEndTransactionRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(unsupported(
            "ActionEndTransactionRequest",
            "Vigie is read-only and has no transactions",
        ))
    }

    async fn do_action_begin_savepoint(
        &self,
        _query: ActionBeginSavepointRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginSavepointResult, Status> {
        Err(unsupported(
            "ActionBeginSavepointRequest",
            "Vigie is read-only and has no transactions",
        ))
    }

    async fn do_action_end_savepoint(
        &self,
        _query: ActionEndSavepointRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(unsupported(
            "ActionEndSavepointRequest",
            "Vigie is read-only and has no transactions",
        ))
    }

    async fn do_action_cancel_query(
        &self,
        _query: ActionCancelQueryRequest,
        _request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        Err(unsupported(
            "ActionCancelQueryRequest",
            "a query stops when its client drops the DoGet stream",
        ))
    }

    async fn get_flight_info_fallback(
        &self,
        command: Command,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(unsupported(
            &format!("GetFlightInfo for {}", command.type_url()),
            "not a Flight SQL command Vigie knows",
        ))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: arrow_flight::sql::Any,
    ) -> Result<Response<DoGetStream>, Status> {
        Err(unsupported(
            &format!("DoGet for {}", message.type_url),
            "not a Flight SQL ticket Vigie knows",
        ))
    }

    async fn do_put_fallback(
        &self,
        _request: Request<PeekableFlightDataStream>,
        message: arrow_flight::sql::Any,
    ) -> Result<Response<<Self as FlightService>::DoPutStream>, Status> {
        Err(unsupported(
            &format!("DoPut for {}", message.type_url),
            "not a Flight SQL command Vigie knows",
        ))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.command_info(&schema, &query, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let sql = self.session_of(&request).await?;
        for catalog in sql.context().catalog_names() {
            builder.append(catalog);
        }
        let schema = builder.schema();
        one_batch(schema, builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.command_info(&schema, &query, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let sql = self.session_of(&request).await?;
        let ctx = sql.context();
        for catalog_name in ctx.catalog_names() {
            if let Some(catalog) = ctx.catalog(&catalog_name) {
                for schema_name in catalog.schema_names() {
                    builder.append(&catalog_name, schema_name);
                }
            }
        }
        let schema = builder.schema();
        one_batch(schema, builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.command_info(&schema, &query, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let sql = self.session_of(&request).await?;
        let ctx = sql.context();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table_name in schema.table_names() {
                    let table = schema
                        .table(&table_name)
                        .await
                        .map_err(|e| datafusion_status(&e))?;
                    let Some(table) = table else { continue };
                    let table_type = match table.table_type() {
                        TableType::Base => "TABLE",
                        TableType::View => "VIEW",
                        TableType::Temporary => "LOCAL TEMPORARY",
                    };
                    builder
                        .append(
                            &catalog_name,
                            &schema_name,
                            &table_name,
                            table_type,
                            &plain_schema(&table.schema()),
                        )
                        .map_err(|e| Status::internal(format!("cannot list tables: {e}")))?;
                }
            }
        }
        let schema = builder.schema();
        one_batch(schema, builder.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.command_info(&schema, &query, request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for table_type in ["TABLE", "VIEW"] {
            builder.append(table_type);
        }
        let schema = builder.schema();
        one_batch(schema, builder.build())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
