//! Running SQL for a console caller, exactly like a Flight SQL query: admitted under the
//! tenant's limits, on the query runtime, bounded in time and memory, and audited.
//!
//! ```text
//! POST /api/sql {sql} ─▶ ConsoleState::query ─▶ Sessions::admit ─▶ session ─▶ plan (+ bind)
//!      ─▶ execute_stream ─▶ up to the row cap ─▶ JSON {columns, rows, truncated, elapsed_ms}
//! POST /api/sql + Accept: text/csv ─▶ Sessions::stream ─▶ CSV, every row, as it is produced
//! the pages' own reads (map, feed, overview) ─▶ the same path, SQL text tagged `/* console: … */`
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use vigie_auth::Principal;
use vigie_sql::{Outcome, Purpose, SqlEngine, cast_batch, plain_schema};

use crate::session::Caller;
use crate::{ConsoleState, Error, Result};

/// A result as the pages read it: column names and types, rows as arrays in column order.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// `(name, Arrow type)` of each column.
    pub columns: Vec<(String, String)>,
    /// The rows, values as JSON (timestamps as RFC 3339 strings, lists as arrays).
    pub rows: Vec<Vec<Value>>,
    /// Whether rows beyond the cap were left out.
    pub truncated: bool,
    /// Planning and running time.
    pub elapsed: Duration,
}

impl Rows {
    /// The JSON the pages get.
    pub fn to_json(&self) -> Value {
        json!({
            "columns": self.columns.iter().map(|(name, ty)| json!({"name": name, "type": ty})).collect::<Vec<_>>(),
            "rows": self.rows,
            "row_count": self.rows.len(),
            "truncated": self.truncated,
            "elapsed_ms": self.elapsed.as_secs_f64() * 1e3,
        })
    }

    /// The rows as objects keyed by column name (the pages' own reads name distinct columns).
    pub fn objects(&self) -> Vec<Value> {
        self.rows
            .iter()
            .map(|row| {
                let object: Map<String, Value> = self
                    .columns
                    .iter()
                    .map(|(name, _)| name.clone())
                    .zip(row.iter().cloned())
                    .collect();
                Value::Object(object)
            })
            .collect()
    }
}

/// The physical plan of `sql` (with `params` bound), and the context to run it in (the
/// session's memory limit).
async fn physical(
    session: &SqlEngine,
    sql: &str,
    params: Vec<ScalarValue>,
) -> vigie_sql::Result<(Arc<dyn ExecutionPlan>, Arc<TaskContext>)> {
    let frame: DataFrame = if params.is_empty() {
        session.plan(sql).await?
    } else {
        session.statement(sql).await?.bind(params)?
    };
    let task = session.task_context(&frame)?;
    Ok((frame.create_physical_plan().await?, task))
}

impl ConsoleState {
    /// Runs `sql` (with `params` bound to its `$n` placeholders) for `who`: at most `cap` rows.
    pub async fn query(
        &self,
        who: &Principal,
        sql: &str,
        params: Vec<ScalarValue>,
        cap: usize,
    ) -> Result<Rows> {
        let started = Instant::now();
        let (query, session) = self.sessions.start(who, sql, Purpose::Run).await?;
        let counter = query.row_counter();
        let text = sql.to_string();
        let (schema, batches, truncated) = self
            .sessions
            .run(&query, async move {
                let (plan, task) = physical(&session, &text, params).await?;
                let schema = plain_schema(&plan.schema());
                let mut stream = execute_stream(plan, task)?;
                let (mut batches, mut rows, mut truncated) = (Vec::new(), 0, false);
                while let Some(batch) = stream.try_next().await? {
                    let take = batch.num_rows().min(cap - rows);
                    if take < batch.num_rows() {
                        truncated = true;
                    }
                    rows += take;
                    batches.push(cast_batch(&batch.slice(0, take), &schema)?);
                    if rows == cap {
                        // One more row tells whether the cap cut the result.
                        truncated |= stream.try_next().await?.is_some_and(|b| b.num_rows() > 0);
                        break;
                    }
                }
                counter.fetch_add(rows, Ordering::Relaxed);
                Ok((schema, batches, truncated))
            })
            .await?;
        query.end(Outcome::Ok);
        Ok(Rows {
            columns: schema
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().to_string()))
                .collect(),
            rows: json_rows(&schema, &batches)?,
            truncated,
            elapsed: started.elapsed(),
        })
    }

    /// [`ConsoleState::query`] of the pages' own reads, tagged in the audit log.
    pub(crate) async fn read(
        &self,
        who: &Principal,
        what: &str,
        sql: &str,
        params: Vec<ScalarValue>,
        cap: usize,
    ) -> Result<Rows> {
        self.query(who, &format!("/* console: {what} */ {sql}"), params, cap)
            .await
    }
}

/// Rows of `batches` as JSON arrays, in column order (duplicate column names included).
fn json_rows(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<Vec<Value>>> {
    let internal = |e: arrow::error::ArrowError| Error::Internal(format!("encoding a result: {e}"));
    // Unique names, so that no column hides another in the writer's objects.
    let renamed: Arc<Schema> = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let mut out = Vec::new();
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let batch =
            RecordBatch::try_new(renamed.clone(), batch.columns().to_vec()).map_err(internal)?;
        let mut writer = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(Vec::new());
        writer.write(&batch).map_err(internal)?;
        writer.finish().map_err(internal)?;
        let objects: Vec<Map<String, Value>> = serde_json::from_slice(&writer.into_inner())
            .map_err(|e| Error::Internal(format!("encoding a result: {e}")))?;
        for mut object in objects {
            out.push(
                (0..schema.fields().len())
                    .map(|i| object.remove(&format!("c{i}")).unwrap_or(Value::Null))
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// What `POST /api/sql` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SqlRequest {
    sql: String,
    /// Fewer rows than the console's cap.
    limit: Option<usize>,
}

/// `POST /api/sql`: JSON (up to the row cap), or every row as CSV with `Accept: text/csv`.
pub(crate) async fn sql(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
    headers: HeaderMap,
    Json(request): Json<SqlRequest>,
) -> Result<Response> {
    if request.sql.trim().is_empty() {
        return Err(Error::BadRequest("the SQL text is empty".into()));
    }
    let csv = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"));
    if csv {
        return csv_response(&state, &caller.0, request.sql).await;
    }
    let cap = request
        .limit
        .unwrap_or(state.settings.max_rows)
        .clamp(1, state.settings.max_rows);
    let rows = state
        .query(&caller.0, &request.sql, Vec::new(), cap)
        .await?;
    Ok(Json(rows.to_json()).into_response())
}

async fn csv_response(state: &ConsoleState, who: &Principal, sql: String) -> Result<Response> {
    let (query, session) = state.sessions.start(who, &sql, Purpose::Run).await?;
    let (plan, task) = state
        .sessions
        .run(
            &query,
            async move { physical(&session, &sql, Vec::new()).await },
        )
        .await?;
    let schema = plain_schema(&plan.schema());
    let counter = query.row_counter();
    let batches = futures::stream::once(async move { execute_stream(plan, task) })
        .map_ok(|stream| stream.map_err(vigie_sql::Error::from))
        .map_err(vigie_sql::Error::from)
        .try_flatten();
    let encoded = state
        .sessions
        .stream(query, batches)
        .enumerate()
        .map(move |(i, batch)| {
            let batch = batch.map_err(|e| std::io::Error::other(e.to_string()))?;
            counter.fetch_add(batch.num_rows(), Ordering::Relaxed);
            let batch =
                cast_batch(&batch, &schema).map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(i == 0)
                .build(Vec::new());
            writer
                .write(&batch)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok::<_, std::io::Error>(bytes::Bytes::from(writer.into_inner()))
        });
    let mut response = Body::from_stream(encoded).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    headers.insert(
        CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"vigie-result.csv\""),
    );
    Ok(response)
}

/// `GET /api/schema`: the tables and columns the caller's session shows.
pub(crate) async fn schema(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
) -> Result<Json<Value>> {
    let rows = state
        .read(
            &caller.0,
            "schema",
            "SELECT table_name, column_name, data_type FROM information_schema.columns \
             WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
            Vec::new(),
            10_000,
        )
        .await?;
    let mut tables: Vec<(String, Vec<Value>)> = Vec::new();
    for row in rows.rows {
        let text = |i: usize| {
            row.get(i)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (table, column, ty) = (text(0), text(1), text(2));
        match tables.last_mut() {
            Some((name, columns)) if *name == table => {
                columns.push(json!({"name": column, "type": ty}))
            }
            _ => tables.push((table, vec![json!({"name": column, "type": ty})])),
        }
    }
    Ok(Json(json!({
        "tables": tables.into_iter().map(|(name, columns)| json!({"name": name, "columns": columns})).collect::<Vec<_>>()
    })))
}
