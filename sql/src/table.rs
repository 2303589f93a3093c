//! [`LiveTableProvider`]: a DataFusion table over a [`LiveTable`]'s consistent snapshot.
//!
//! ```text
//! scan() ─ snapshot ─┬─ committed files ─ day pruning ─▶ DataSourceExec(Parquet, partition column
//!                    │                                     `day`; filters pushed by DataFusion:
//!                    │                                     row groups, pages, bloom filters)
//!                    └─ buffered batches ─▶ DataSourceExec(memory)
//!                                  both ─▶ UnionExec (same schema)
//! ```
//! Day pruning: a file holds one `day`, so its `day` is known exactly and its `time` lies within
//! that UTC day; DataFusion's `PruningPredicate` over those bounds drops the files a filter on
//! `day` or `time` excludes before any of them is opened.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray, Date32Array, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{Field, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::Column;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::{DFSchema, ScalarValue, Statistics};
use datafusion::datasource::TableProvider;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use tracing::debug;
use vigie_engine::schema::{DAY_COLUMN, MICROS_PER_DAY, file_schema};
use vigie_engine::table::{DataFile, LiveTable};

/// The column whose values lie within their file's `day` (UTC).
const TIME_COLUMN: &str = "time";

/// What the `day` partition tells about each file: its `day`, and bounds of its `time`.
struct DayStatistics<'a> {
    files: &'a [&'a DataFile],
}

impl DayStatistics<'_> {
    fn bounds(&self, column: &Column, end: bool) -> Option<ArrayRef> {
        match column.name.as_str() {
            DAY_COLUMN => Some(Arc::new(Date32Array::from_iter_values(
                self.files.iter().map(|f| f.day),
            ))),
            TIME_COLUMN => Some(Arc::new(
                TimestampMicrosecondArray::from_iter_values(self.files.iter().map(|f| {
                    let start = i64::from(f.day) * MICROS_PER_DAY;
                    if end {
                        start + MICROS_PER_DAY - 1
                    } else {
                        start
                    }
                }))
                .with_timezone("UTC"),
            )),
            _ => None,
        }
    }
}

impl PruningStatistics for DayStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bounds(column, false)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bounds(column, true)
    }

    fn num_containers(&self) -> usize {
        self.files.len()
    }

    fn null_counts(&self, _column: &Column) -> Option<ArrayRef> {
        None
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        None
    }

    fn contained(
        &self,
        _column: &Column,
        _values: &std::collections::HashSet<ScalarValue>,
    ) -> Option<BooleanArray> {
        None
    }
}

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
            // Strings as views inside queries: see `view_type`.
            schema: crate::view_schema(&table.kind().schema()),
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
            let files_schema = file_schema(&self.schema);
            let table_schema = TableSchema::builder(files_schema.clone())
                .with_table_partition_cols(vec![Arc::new(Field::new(
                    DAY_COLUMN,
                    day.data_type().clone(),
                    false,
                ))])
                .build();
            let options = state.table_options().parquet.clone();
            // Footers and page indexes are cached across queries (Delta files never change).
            let runtime = state.runtime_env();
            let readers = CachedParquetFileReaderFactory::new(
                runtime.object_store(&self.store_url)?,
                runtime.cache_manager.get_file_metadata_cache(),
            );
            let source = ParquetSource::new(table_schema)
                .with_parquet_file_reader_factory(Arc::new(readers))
                .with_table_parquet_options(options);
            let mut files: Vec<&DataFile> = snapshot.files.iter().collect();
            if let Some(predicate) = conjunction(filters.iter().cloned()) {
                let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
                let predicate = state.create_physical_expr(predicate, &df_schema)?;
                // `None`: nothing to prune with (no bound on `day` or `time`).
                let pruning = PruningPredicateBuilder::new()
                    .with_file_schema(self.schema.clone())
                    .build(predicate);
                if let Some(pruning) = pruning {
                    let keep = pruning.prune(&DayStatistics { files: &files })?;
                    let mut keep = keep.into_iter();
                    files.retain(|_| keep.next().unwrap_or(true));
                    debug!(
                        table = self.table.kind().name(),
                        kept = files.len(),
                        pruned = snapshot.files.len() - files.len(),
                        "day pruning"
                    );
                }
                // Not given to the Parquet source: the filters stay above the scan (`Inexact`)
                // and DataFusion's filter pushdown hands them to it for row-group, page and
                // bloom-filter pruning (giving them here too made every file evaluate them twice).
            }
            // Spread the files over the session's target partitions.
            let partitions = state.config().target_partitions().max(1);
            let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
            for (i, f) in files.iter().enumerate() {
                let file = PartitionedFile::new(f.path.to_string(), f.size)
                    .with_partition_values(vec![ScalarValue::Date32(Some(f.day))]);
                groups[i % partitions].push(file);
            }
            let groups: Vec<FileGroup> = groups
                .into_iter()
                .filter(|g| !g.is_empty())
                .map(FileGroup::new)
                .collect();
            // The scan's statistics, from the Delta log's row counts (DataFusion does not add up
            // files' own): the join planner builds its hash table on the smaller side (alerts, not
            // reports), and `count(*)` needs no scan. No per-file statistics: nothing uses them
            // with row counts alone, and attaching them cost a tenth of the planning time.
            let mut total = Statistics::new_unknown(&self.schema);
            let rows: Option<usize> = files.iter().map(|f| f.num_rows).sum();
            if let Some(rows) = rows {
                total.num_rows = Precision::Exact(rows);
            }
            total.total_byte_size = Precision::Inexact(files.iter().map(|f| f.size as usize).sum());
            if !groups.is_empty() {
                let config = FileScanConfigBuilder::new(self.store_url.clone(), Arc::new(source))
                    .with_statistics(total)
                    .with_file_groups(groups)
                    .with_projection_indices(projection.cloned())?
                    .with_limit(limit)
                    .build();
                inputs.push(DataSourceExec::from_data_source(config));
            }
        }

        if !snapshot.buffered.is_empty() {
            // The buffer holds plain strings; views share their bytes (no copy of the data).
            let buffered = snapshot
                .buffered
                .iter()
                .map(|b| crate::cast_batch(b, &self.schema))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| match e {
                    crate::Error::DataFusion(e) => e,
                    other => datafusion::error::DataFusionError::External(Box::new(other)),
                })?;
            inputs.push(MemorySourceConfig::try_new_exec(
                &[buffered],
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
