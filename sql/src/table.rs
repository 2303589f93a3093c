//! [`LiveTableProvider`]: a DataFusion table over a [`LiveTable`]'s consistent snapshot.
//!
//! ```text
//! scan() ─ snapshot ─┬─ committed files ─▶ DataSourceExec(Parquet, partition column `day`, predicate)
//!                    └─ buffered batches ─▶ DataSourceExec(memory)
//!                                  both ─▶ UnionExec (same schema)
//! ```

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Field, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::TableProvider;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use vigie_engine::schema::{DAY_COLUMN, file_schema};
use vigie_engine::table::LiveTable;

/// A Vigie table as DataFusion sees it: Delta files and buffer, read at one consistent point.
pub struct LiveTableProvider {
    table: Arc<LiveTable>,
    schema: SchemaRef,
    store_url: ObjectStoreUrl,
}

impl fmt::Debug for LiveTableProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveTableProvider")
            .field("table", &self.table.kind().name())
            .finish()
    }
}

impl LiveTableProvider {
    /// A provider reading `table`; its files are read through the store registered at `store_url`.
    pub fn new(table: Arc<LiveTable>, store_url: ObjectStoreUrl) -> Self {
        Self {
            schema: table.kind().schema(),
            table,
            store_url,
        }
    }
}

#[async_trait]
impl TableProvider for LiveTableProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used to prune files and row groups; DataFusion still applies every filter on top.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let snapshot = self.table.snapshot();
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::with_capacity(2);

        if !snapshot.files.is_empty() {
            let day = self.schema.field_with_name(DAY_COLUMN)?;
            let table_schema = TableSchema::builder(file_schema(&self.schema))
                .with_table_partition_cols(vec![Arc::new(Field::new(
                    DAY_COLUMN,
                    day.data_type().clone(),
                    false,
                ))])
                .build();
            let options = state.table_options().parquet.clone();
            let mut source = ParquetSource::new(table_schema).with_table_parquet_options(options);
            if let Some(predicate) = conjunction(filters.iter().cloned()) {
                let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
                source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
            }
            // Spread the files over the session's target partitions.
            let partitions = state.config().target_partitions().max(1);
            let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
            for (i, f) in snapshot.files.iter().enumerate() {
                groups[i % partitions].push(
                    PartitionedFile::new(f.path.to_string(), f.size)
                        .with_partition_values(vec![ScalarValue::Date32(Some(f.day))]),
                );
            }
            let groups = groups
                .into_iter()
                .filter(|g| !g.is_empty())
                .map(FileGroup::new)
                .collect();
            let config = FileScanConfigBuilder::new(self.store_url.clone(), Arc::new(source))
                .with_file_groups(groups)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
            inputs.push(DataSourceExec::from_data_source(config));
        }

        if !snapshot.buffered.is_empty() {
            inputs.push(MemorySourceConfig::try_new_exec(
                &[snapshot.buffered],
                self.schema.clone(),
                projection.cloned(),
            )?);
        }

        if inputs.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        UnionExec::try_new(inputs)
    }
}
