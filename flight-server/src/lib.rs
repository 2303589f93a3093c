//! Vigie's Arrow Flight SQL service: analysts' SQL over all history and the live buffer.
//!
//! ```text
//! client ─GetFlightInfo(CommandStatementQuery)─▶ plan (schema) ─▶ FlightInfo{ticket = statement}
//! client ─DoGet(ticket)──▶ SqlEngine::plan ─▶ execute_stream ─▶ plain Arrow ─▶ FlightData stream
//! ```
//! Errors become statuses in [`status_of`]: user mistakes `INVALID_ARGUMENT`, overload
//! `RESOURCE_EXHAUSTED`, the rest `INTERNAL`.

use std::pin::Pin;
use std::sync::Arc;

use arrow::error::ArrowError;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status};
use tracing::{debug, info};
use vigie_sql::{Error as SqlError, SqlEngine, plain_schema, to_plain};

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

/// The status a Flight SQL client sees for a SQL error.
pub fn status_of(error: &SqlError) -> Status {
    match error {
        SqlError::ReadOnly(m) => Status::invalid_argument(m.clone()),
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

/// The Flight SQL service over one tenant's SQL session.
#[derive(Clone)]
pub struct VigieFlightSql {
    sql: SqlEngine,
    sql_info: Arc<SqlInfoData>,
}

impl std::fmt::Debug for VigieFlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VigieFlightSql")
            .field("sql", &self.sql)
            .finish()
    }
}

impl VigieFlightSql {
    /// A service answering with `sql`.
    pub fn new(sql: SqlEngine) -> Result<Self, FlightError> {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "Vigie");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "59.3.2");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        Ok(Self {
            sql,
            sql_info: Arc::new(info.build()?),
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
}

/// The SQL text of a (stateless) prepared statement handle.
fn handle_sql(handle: &[u8]) -> Result<String, Status> {
    String::from_utf8(handle.to_vec())
        .map_err(|_| Status::invalid_argument("the prepared statement handle is not Vigie's"))
}

/// The user name of an `authorization: Basic …` header; the base64 may lack its padding.
fn basic_user(header: &str) -> Result<String, Status> {
    use base64::Engine as _;
    let encoded = header
        .strip_prefix("Basic ")
        .ok_or_else(|| Status::unauthenticated("the handshake expects Basic credentials"))?
        .trim();
    let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| Status::unauthenticated("Basic credentials are not valid base64"))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| Status::unauthenticated("Basic credentials are not UTF-8"))?;
    let (user, _password) = text
        .split_once(':')
        .ok_or_else(|| Status::unauthenticated("Basic credentials must be user:password"))?;
    Ok(user.to_string())
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

    /// Basic credentials (base64 with or without padding: ADBC's Go driver omits it, pyarrow
    /// keeps it) give a Bearer token, in the `authorization` header and the payload. In the open
    /// single-tenant mode any well-formed credentials are accepted.
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
        let user = match header {
            Some(h) => Some(basic_user(h)?),
            None => None,
        };
        let token = uuid::Uuid::new_v4().simple().to_string();
        info!(
            user = user.as_deref().unwrap_or("<none>"),
            "Flight SQL handshake"
        );
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
        let frame = self
            .sql
            .plan(&query.query)
            .await
            .map_err(|e| status_of(&e))?;
        let schema = plain_schema(frame.schema().as_arrow());
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        }
        .as_any()
        .encode_to_vec();
        self.flight_info(&schema, ticket, request.into_inner())
            .map(Response::new)
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("statement handle is not UTF-8 SQL"))?;
        let frame = self.sql.plan(&sql).await.map_err(|e| status_of(&e))?;
        let schema = plain_schema(frame.schema().as_arrow());
        let stream = frame
            .execute_stream()
            .await
            .map_err(|e| datafusion_status(&e))?;
        let out_schema = schema.clone();
        let batches = stream.map(move |batch| {
            batch
                .map_err(|e| FlightError::Tonic(Box::new(datafusion_status(&e))))
                .and_then(|b| {
                    to_plain(&b, &out_schema)
                        .map_err(|e| FlightError::Tonic(Box::new(status_of(&e))))
                })
        });
        info!(%sql, "query");
        Ok(Response::new(stream_batches(schema, batches)))
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

    /// Stateless handles: the handle is the SQL text, planned again on execution (the JDBC driver
    /// prepares every query). Parameters (`?` bound through DoPut) are not supported yet.
    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let frame = self
            .sql
            .plan(&query.query)
            .await
            .map_err(|e| status_of(&e))?;
        let schema = plain_schema(frame.schema().as_arrow());
        let encode = |schema: &arrow::datatypes::Schema| -> Result<bytes::Bytes, Status> {
            let message: Result<IpcMessage, ArrowError> =
                SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into();
            message
                .map(|IpcMessage(bytes)| bytes)
                .map_err(|e| Status::internal(format!("cannot encode a schema: {e}")))
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema: encode(&schema)?,
            parameter_schema: encode(&arrow::datatypes::Schema::empty())?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Stateless handles: nothing to free.
        Ok(())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let sql = handle_sql(&query.prepared_statement_handle)?;
        let frame = self.sql.plan(&sql).await.map_err(|e| status_of(&e))?;
        let schema = plain_schema(frame.schema().as_arrow());
        self.command_info(&schema, &query, request)
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let sql = handle_sql(&query.prepared_statement_handle)?;
        self.do_get_statement(
            TicketStatementQuery {
                statement_handle: sql.into_bytes().into(),
            },
            request,
        )
        .await
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
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for catalog in self.sql.context().catalog_names() {
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
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let ctx = self.sql.context();
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
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let ctx = self.sql.context();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_with_and_without_padding() {
        // "ana:pw" is "YW5hOnB3" (no padding needed); "bo:pw1" is "Ym86cHcx"; "al:p" needs "==".
        assert_eq!(basic_user("Basic YW5hOnB3").unwrap(), "ana");
        assert_eq!(basic_user("Basic YWw6cA==").unwrap(), "al");
        assert_eq!(basic_user("Basic YWw6cA").unwrap(), "al");
        assert_eq!(
            basic_user("Bearer x").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            basic_user("Basic !!!").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
