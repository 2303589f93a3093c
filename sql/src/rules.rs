//! `alert_rules`: the tenant's alert rules and how many alerts each raised since start.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use vigie_engine::Tenant;

/// A table over the live rule set (read at each scan).
pub struct AlertRulesTable {
    tenant: Arc<Tenant>,
    schema: SchemaRef,
}

impl fmt::Debug for AlertRulesTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertRulesTable").finish()
    }
}

impl AlertRulesTable {
    /// The rules of `tenant`.
    pub fn new(tenant: Arc<Tenant>) -> Self {
        Self {
            tenant,
            schema: Arc::new(Schema::new(vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("expression", DataType::Utf8, false),
                Field::new("raised_since_start", DataType::Int64, false),
            ])),
        }
    }
}

#[async_trait]
impl TableProvider for AlertRulesTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let rules = self.tenant.rules().rules();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rules.iter().map(|r| r.name.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rules.iter().map(|r| r.expression.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                rules.iter().map(|r| r.raised() as i64),
            )),
        ];
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}
