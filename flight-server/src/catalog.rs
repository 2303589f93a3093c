//! The catalog listings of Flight SQL (catalogs, schemas, tables, table types), from the
//! caller's session: each tenant lists only its own tables, and `audit_log` only for admins.

use arrow_flight::Ticket;
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetTableTypes, CommandGetTables,
};
use datafusion::datasource::TableType;
use tonic::{Request, Response, Status};
use vigie_sql::plain_schema;

use crate::stream::{DoGetStream, one_batch};
use crate::{Error, VigieFlightSql};

impl VigieFlightSql {
    pub(crate) async fn catalogs(
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

    pub(crate) async fn schemas(
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

    pub(crate) async fn tables(
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
                        .map_err(|e| Error::Sql(e.into()))?;
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
                        .map_err(|e| Error::Encode(format!("the table list: {e}")))?;
                }
            }
        }
        let schema = builder.schema();
        one_batch(schema, builder.build())
    }

    pub(crate) fn table_types(
        &self,
        query: CommandGetTableTypes,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for table_type in ["TABLE", "VIEW"] {
            builder.append(table_type);
        }
        let schema = builder.schema();
        one_batch(schema, builder.build())
    }
}
