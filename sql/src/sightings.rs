//! `sightings`: one row per citizen recognised in a report, flattened from `reports` without
//! copying the citizens.
//!
//! ```text
//! SightingsTable::scan ─▶ reports scan: the report columns the query needs + `citizens`
//!                         ─▶ filters on report columns (DataFusion pushes them into the scan:
//!                            day pruning, row groups, pages)
//!                              ─▶ FlattenSightingsExec, per batch:
//!                                   citizen, score = the citizens list's values, sliced (no copy)
//!                                   report columns = repeated once per citizen (`take`),
//!                                                    only those the query reads
//! ```
//! This replaces a view over `unnest(citizens)`, which copied every citizen's name and score
//! before any filter ran, and could push no filter on report columns into the scan of `reports`.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;
use vigie_engine::alert::ListItems;

/// The report columns a sighting carries, in the table's order (then `citizen`, `score`, `day`).
const REPORT_COLUMNS: [&str; 5] = ["drone_id", "seq", "time", "latitude", "longitude"];
/// The partition column, also a report column.
const DAY: &str = "day";
/// The list of (name, score) structs in `reports`.
const CITIZENS: &str = "citizens";

/// Where an output column of [`FlattenSightingsExec`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Column `i` of the reports batch, repeated once per citizen of its row.
    Report(usize),
    /// Field `i` of the citizens' structs (0: name, 1: score).
    Citizen(usize),
}

/// The `sightings` table: a flattening of a `reports` provider (files and buffer alike).
#[derive(Debug)]
pub struct SightingsTable {
    reports: Arc<dyn TableProvider>,
    schema: SchemaRef,
    /// For each column of `schema`: where it comes from in the reports schema.
    sources: Vec<Source>,
}

impl SightingsTable {
    /// The sightings of `reports`, whose schema must have the report columns, `citizens` (a list
    /// of structs whose first two fields are the name and the score) and `day`.
    pub fn try_new(reports: Arc<dyn TableProvider>) -> Result<Self> {
        let from = reports.schema();
        let mut fields = Vec::with_capacity(REPORT_COLUMNS.len() + 3);
        let mut sources = Vec::with_capacity(REPORT_COLUMNS.len() + 3);
        for name in REPORT_COLUMNS {
            let (i, field) = from.column_with_name(name).ok_or_else(|| missing(name))?;
            fields.push(field.clone());
            sources.push(Source::Report(i));
        }
        let (_, citizens) = from
            .column_with_name(CITIZENS)
            .ok_or_else(|| missing(CITIZENS))?;
        let DataType::List(item) = citizens.data_type() else {
            return Err(missing("citizens as a list"));
        };
        let DataType::Struct(people) = item.data_type() else {
            return Err(missing("citizens as a list of structs"));
        };
        for (i, name) in ["citizen", "score"].into_iter().enumerate() {
            let field = people
                .get(i)
                .ok_or_else(|| missing("citizen name and score"))?;
            // A null list item is a missing citizen: its fields are then nullable.
            let nullable = field.is_nullable() || item.is_nullable();
            fields.push(Field::new(name, field.data_type().clone(), nullable));
            sources.push(Source::Citizen(i));
        }
        let (i, day) = from.column_with_name(DAY).ok_or_else(|| missing(DAY))?;
        fields.push(day.clone());
        sources.push(Source::Report(i));
        Ok(Self {
            reports,
            schema: Arc::new(Schema::new(fields)),
            sources,
        })
    }

    /// Whether `expr` reads report columns only (it can then filter the scan of `reports`).
    fn on_reports_only(&self, expr: &Expr) -> bool {
        expr.column_refs().iter().all(|c| {
            self.schema
                .index_of(c.name())
                .is_ok_and(|i| matches!(self.sources[i], Source::Report(_)))
        })
    }
}

fn missing(what: &str) -> DataFusionError {
    DataFusionError::Internal(format!("the reports table has no {what} for sightings"))
}

#[async_trait]
impl TableProvider for SightingsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Nothing is stored under this name: it is computed from `reports` at query time.
    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters on report columns are applied to the reports before flattening (and pushed
        // into their scan from there: day pruning, row groups, pages); the others above.
        Ok(filters
            .iter()
            .map(|f| {
                if self.on_reports_only(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>, // a report gives any number of sightings: no limit below
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        // The reports columns to read: those projected, then the citizens (always: they say how
        // many sightings each report gives).
        let mut read: Vec<usize> = Vec::new();
        // The position of reports column `column` among those read (added if new).
        let mut at = |column: usize| match read.iter().position(|&c| c == column) {
            Some(at) => at,
            None => {
                read.push(column);
                read.len() - 1
            }
        };
        let sources: Vec<Source> = wanted
            .iter()
            .map(|&i| match self.sources[i] {
                Source::Report(column) => Source::Report(at(column)),
                citizen => citizen,
            })
            .collect();
        // Filters on report columns are applied here (`Exact`): the columns they read too.
        let reports = self.reports.schema();
        let filters: Vec<Expr> = filters
            .iter()
            .filter(|f| self.on_reports_only(f))
            .cloned()
            .collect();
        for filter in &filters {
            for column in filter.column_refs() {
                at(reports.index_of(column.name())?);
            }
        }
        let citizens = at(reports.index_of(CITIZENS)?);
        let mut input = self
            .reports
            .scan(state, Some(&read), &filters, None)
            .await?;
        if let Some(predicate) = conjunction(filters) {
            let schema = DFSchema::try_from(input.schema().as_ref().clone())?;
            let predicate = state.create_physical_expr(predicate, &schema)?;
            input = Arc::new(FilterExec::try_new(predicate, input)?);
        }
        Ok(Arc::new(FlattenSightingsExec::new(
            input,
            citizens,
            sources,
            Arc::new(self.schema.project(&wanted)?),
        )))
    }
}

/// One row per citizen of each input report row: see the module documentation.
#[derive(Debug)]
pub struct FlattenSightingsExec {
    input: Arc<dyn ExecutionPlan>,
    /// The input column holding the citizens list.
    citizens: usize,
    /// Where each output column comes from (`Report(i)`: input column `i`).
    sources: Vec<Source>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl FlattenSightingsExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        citizens: usize,
        sources: Vec<Source>,
        schema: SchemaRef,
    ) -> Self {
        // As many partitions as the input; no ordering survives (rows multiply).
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            input.pipeline_behavior(),
            input.boundedness(),
        );
        Self {
            input,
            citizens,
            sources,
            schema,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for FlattenSightingsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        write!(f, "FlattenSightingsExec: columns=[{}]", columns.join(", "))
    }
}

impl ExecutionPlan for FlattenSightingsExec {
    fn name(&self) -> &str {
        "FlattenSightingsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children).map_err(|c| {
            DataFusionError::Internal(format!(
                "FlattenSightingsExec takes 1 child, not {}",
                c.len()
            ))
        })?;
        Ok(Arc::new(Self::new(
            input,
            self.citizens,
            self.sources.clone(),
            self.schema.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let (citizens, sources, schema) =
            (self.citizens, self.sources.clone(), self.schema.clone());
        let out = schema.clone();
        let stream = input.map(move |batch| {
            let _timer = metrics.elapsed_compute().timer();
            let flat = flatten(&batch?, citizens, &sources, &out)?;
            metrics.record_output(flat.num_rows());
            Ok(flat)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// The sightings of one reports batch.
fn flatten(
    batch: &RecordBatch,
    citizens: usize,
    sources: &[Source],
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let list = batch
        .column(citizens)
        .as_list_opt::<i32>()
        .ok_or_else(|| missing("citizens list in the scanned batch"))?;
    let items = ListItems::of(list, sources.iter().any(|s| matches!(s, Source::Report(_))));
    let people = items
        .values(list)
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let people = people
        .as_struct_opt()
        .ok_or_else(|| missing("citizens as structs"))?;
    let columns = sources
        .iter()
        .map(|source| -> Result<ArrayRef> {
            Ok(match *source {
                Source::Report(i) => take(batch.column(i), &items.rows, None)?,
                Source::Citizen(i) => people.column(i).clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(items.len)),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, ListArray, StringArray, StructArray};
    use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
    use datafusion::arrow::datatypes::Fields;
    use datafusion::arrow::util::pretty::pretty_format_batches;

    fn reports() -> RecordBatch {
        let people = Fields::from(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("score", DataType::Float64, false),
        ]);
        let values = StructArray::new(
            people.clone(),
            vec![
                Arc::new(StringArray::from(vec!["Ana", "Bruno", "junk", "Chloé"])),
                Arc::new(Float64Array::from(vec![12.5, 80.0, 1.0, 55.0])),
            ],
            None,
        );
        // Row 0: Ana, Bruno; row 1: none; row 2: a null list over "junk"; row 3: Chloé.
        let list = ListArray::new(
            Arc::new(Field::new("item", DataType::Struct(people), true)),
            OffsetBuffer::new(vec![0, 2, 2, 3, 4].into()),
            Arc::new(values),
            Some(NullBuffer::from(vec![true, true, false, true])),
        );
        RecordBatch::try_from_iter(vec![
            (
                "seq",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
            ),
            ("citizens", Arc::new(list) as ArrayRef),
        ])
        .unwrap()
    }

    fn schema(names: &[(&str, DataType)]) -> SchemaRef {
        Arc::new(Schema::new(
            names
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn one_row_per_citizen_skipping_null_lists() {
        let out = flatten(
            &reports(),
            1,
            &[Source::Report(0), Source::Citizen(0), Source::Citizen(1)],
            &schema(&[
                ("seq", DataType::Int64),
                ("citizen", DataType::Utf8),
                ("score", DataType::Float64),
            ]),
        )
        .unwrap();
        assert_eq!(
            pretty_format_batches(&[out]).unwrap().to_string(),
            "+-----+---------+-------+\n\
             | seq | citizen | score |\n\
             +-----+---------+-------+\n\
             | 1   | Ana     | 12.5  |\n\
             | 1   | Bruno   | 80.0  |\n\
             | 4   | Chloé   | 55.0  |\n\
             +-----+---------+-------+"
        );
    }

    #[test]
    fn sliced_batches_and_no_columns() {
        // A slice starting inside the values (offsets not from 0), without the null list.
        let batch = reports().slice(3, 1);
        let out = flatten(
            &batch,
            1,
            &[Source::Citizen(0), Source::Report(0)],
            &schema(&[("citizen", DataType::Utf8), ("seq", DataType::Int64)]),
        )
        .unwrap();
        assert_eq!(
            pretty_format_batches(&[out]).unwrap().to_string(),
            "+---------+-----+\n| citizen | seq |\n+---------+-----+\n| Chloé   | 4   |\n+---------+-----+"
        );
        // count(*): no column, only the number of sightings.
        let out = flatten(&reports().slice(0, 2), 1, &[], &schema(&[])).unwrap();
        assert_eq!(out.num_rows(), 2);
    }
}
