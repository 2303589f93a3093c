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
//! session's catalog (`catalog`) and `metadata`. Rooms: `query` (planning, the bounded and
//! audited run), `catalog`, `stream` (FlightData answers), `handle` (stateless prepared
//! statements), `error` ([`Error`] and the one mapping to statuses: user mistakes
//! `INVALID_ARGUMENT`, overload `RESOURCE_EXHAUSTED`, unsupported commands `UNIMPLEMENTED` naming
//! the command, the rest `INTERNAL`); this file holds the service and delegates.

mod cache;
mod catalog;
mod error;
mod handle;
mod metadata;
mod query;
mod stream;

pub use error::{Error, status_of};

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use arrow_flight::decode::FlightRecordBatchStream;
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
    Ticket,
};
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status};
use tracing::{debug, info};
use vigie_auth::{Access, Authenticator, Principal};
use vigie_sql::{Error as SqlError, Sessions, SqlEngine};

use crate::cache::TtlCache;
use crate::handle::Handle;
use crate::query::{Planned, frames};
use crate::stream::{DoGetStream, empty_answer, one_batch, schema_bytes};

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
            .map_err(|e| Error::Encode(format!("the result schema: {e}")).into())
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

    /// The SQL session of `who`.
    async fn session(&self, who: &Principal) -> Result<SqlEngine, Status> {
        self.sessions.session(who).await.map_err(|e| status_of(&e))
    }

    /// The SQL session of the request's principal.
    async fn session_of<T>(&self, request: &Request<T>) -> Result<SqlEngine, Status> {
        self.session(&Principal::of(request)?).await
    }
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
                v.to_str().map_err(|_| {
                    Error::Auth(vigie_auth::Error::Unauthenticated(
                        "authorization header is not ASCII".into(),
                    ))
                })
            })
            .transpose()?;
        let header = header.map(str::to_string);
        let auth = self.auth.clone();
        // Password hashing is slow on purpose: keep it off the async workers.
        let (who, token) = tokio::task::spawn_blocking(move || auth.login(header.as_deref()))
            .await
            .map_err(|e| Error::Internal(format!("login task failed: {e}")))?
            .and_then(|(who, token)| who.may(Access::Read).map(|()| (who, token)))
            .map_err(Error::Auth)?;
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
            .map_err(|_| Error::Encode("the session token".into()))?;
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
            other => status_of(&SqlError::Parameters(format!(
                "cannot read the parameters: {other}"
            ))),
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
        Err(Error::unsupported("CommandStatementSubstraitPlan", "send SQL instead").into())
    }

    async fn do_put_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(Error::unsupported("CommandStatementSubstraitPlan", "send SQL instead").into())
    }

    async fn do_action_create_prepared_substrait_plan(
        &self,
        _query: ActionCreatePreparedSubstraitPlanRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        Err(Error::unsupported(
            "ActionCreatePreparedSubstraitPlanRequest",
            "send SQL instead",
        )
        .into())
    }

    async fn do_put_statement_update(
        &self,
        _query: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(Error::ReadOnly("updates (CommandStatementUpdate)").into())
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(Error::ReadOnly("updates (CommandPreparedStatementUpdate)").into())
    }

    async fn do_put_statement_ingest(
        &self,
        _query: CommandStatementIngest,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(Error::ReadOnly("bulk ingestion (CommandStatementIngest)").into())
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        Err(Error::no_transactions("ActionBeginTransactionRequest").into())
    }

    async fn do_action_end_transaction(
        &self,
        _query: ActionEndTransactionRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(Error::no_transactions("ActionEndTransactionRequest").into())
    }

    async fn do_action_begin_savepoint(
        &self,
        _query: ActionBeginSavepointRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginSavepointResult, Status> {
        Err(Error::no_transactions("ActionBeginSavepointRequest").into())
    }

    async fn do_action_end_savepoint(
        &self,
        _query: ActionEndSavepointRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(Error::no_transactions("ActionEndSavepointRequest").into())
    }

    async fn do_action_cancel_query(
        &self,
        _query: ActionCancelQueryRequest,
        _request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        Err(Error::unsupported(
            "ActionCancelQueryRequest",
            "a query stops when its client drops the DoGet stream",
        )
        .into())
    }

    async fn get_flight_info_fallback(
        &self,
        command: Command,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Error::unsupported(
            format!("GetFlightInfo for {}", command.type_url()),
            "not a Flight SQL command Vigie knows",
        )
        .into())
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: arrow_flight::sql::Any,
    ) -> Result<Response<DoGetStream>, Status> {
        Err(Error::unsupported(
            format!("DoGet for {}", message.type_url),
            "not a Flight SQL ticket Vigie knows",
        )
        .into())
    }

    async fn do_put_fallback(
        &self,
        _request: Request<PeekableFlightDataStream>,
        message: arrow_flight::sql::Any,
    ) -> Result<Response<<Self as FlightService>::DoPutStream>, Status> {
        Err(Error::unsupported(
            format!("DoPut for {}", message.type_url),
            "not a Flight SQL command Vigie knows",
        )
        .into())
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
        self.catalogs(query, request).await
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
        self.schemas(query, request).await
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
        self.tables(query, request).await
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
        self.table_types(query)
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
