//! Saved SQL queries, shared by a tenant's analysts, and the admins' audit page.
//!
//! ```text
//! GET    /api/queries        ─▶ <lake>/tenants/<tenant>/console/saved_queries.json
//! POST   /api/queries {name, sql}   ─▶ replaces the query of that name (or adds it)
//! DELETE /api/queries/{name}
//! GET    /api/audit?limit=N  ─▶ the newest audit_log rows (admins only)
//! ```
//! The file lives in the lake, so every node of a cluster shows the same list. Writes are
//! read-modify-write: two analysts saving at the same instant may lose one save (the last wins).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use vigie_engine::store::TenantName;

use crate::session::Caller;
use crate::{ConsoleState, Error, Result};

/// Saved queries one tenant may keep.
const MAX_SAVED: usize = 500;
/// The longest saved SQL text, in bytes.
const MAX_SQL_BYTES: usize = 64 * 1024;

/// One saved query.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Saved {
    name: String,
    sql: String,
    saved_by: String,
    saved_at: String,
}

impl ConsoleState {
    fn saved_path(&self, tenant: &TenantName) -> object_store::path::Path {
        let lake = self.engine.lake();
        lake.prefix
            .parts()
            .chain(
                object_store::path::Path::from_iter([
                    "tenants",
                    tenant.as_str(),
                    "console",
                    "saved_queries.json",
                ])
                .parts(),
            )
            .collect()
    }

    async fn load_saved(&self, tenant: &TenantName) -> Result<Vec<Saved>> {
        let store = &self.engine.lake().root_store;
        match store.get(&self.saved_path(tenant)).await {
            Ok(found) => {
                let bytes = found.bytes().await.map_err(storage)?;
                serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Internal(format!(
                        "the saved queries of tenant {tenant} are unreadable: {e}"
                    ))
                })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(storage(e)),
        }
    }

    async fn store_saved(&self, tenant: &TenantName, saved: &[Saved]) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(saved).map_err(|e| Error::Internal(e.to_string()))?;
        self.engine
            .lake()
            .root_store
            .put(&self.saved_path(tenant), PutPayload::from(bytes))
            .await
            .map_err(storage)?;
        Ok(())
    }
}

fn storage(e: object_store::Error) -> Error {
    Error::Unavailable(format!(
        "the saved queries cannot be read or written: {e}; retry"
    ))
}

/// `GET /api/queries`.
pub(crate) async fn list(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
) -> Result<Json<Value>> {
    Ok(Json(
        json!({ "queries": state.load_saved(&caller.0.tenant).await? }),
    ))
}

/// `POST /api/queries` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SaveRequest {
    name: String,
    sql: String,
}

/// `POST /api/queries`: saves (or replaces) a named query for the whole tenant.
pub(crate) async fn save(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
    Json(request): Json<SaveRequest>,
) -> Result<Json<Value>> {
    let name = request.name.trim().to_string();
    if name.is_empty() || name.len() > 200 {
        return Err(Error::BadRequest(
            "a saved query needs a name of 1 to 200 bytes".into(),
        ));
    }
    if request.sql.trim().is_empty() || request.sql.len() > MAX_SQL_BYTES {
        return Err(Error::BadRequest(format!(
            "a saved query needs SQL text of at most {MAX_SQL_BYTES} bytes"
        )));
    }
    let tenant = &caller.0.tenant;
    let mut saved = state.load_saved(tenant).await?;
    saved.retain(|s| s.name != name);
    if saved.len() >= MAX_SAVED {
        return Err(Error::BadRequest(format!(
            "tenant {tenant} keeps {MAX_SAVED} saved queries already: delete some first"
        )));
    }
    saved.push(Saved {
        name,
        sql: request.sql,
        saved_by: caller.0.name.clone(),
        saved_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    saved.sort_by(|a, b| a.name.cmp(&b.name));
    state.store_saved(tenant, &saved).await?;
    Ok(Json(json!({ "queries": saved })))
}

/// `DELETE /api/queries/{name}`.
pub(crate) async fn delete(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    let tenant = &caller.0.tenant;
    let mut saved = state.load_saved(tenant).await?;
    let before = saved.len();
    saved.retain(|s| s.name != name);
    if saved.len() == before {
        return Err(Error::NotFound(format!("no saved query is named {name:?}")));
    }
    state.store_saved(tenant, &saved).await?;
    Ok(Json(json!({ "queries": saved })))
}

/// `GET /api/audit` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
    limit: Option<usize>,
}

/// `GET /api/audit`: the newest rows of the tenant's audit log (admins only).
pub(crate) async fn audit(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
    Query(params): Query<AuditParams>,
) -> Result<Json<Value>> {
    caller.admin()?;
    let limit = params.limit.unwrap_or(200).clamp(1, 5000);
    let rows = state
        .read(
            &caller.0,
            "audit",
            &format!(
                "SELECT time, principal, role, action, detail, rows, duration_ms, outcome \
                 FROM audit_log ORDER BY time DESC LIMIT {limit}"
            ),
            Vec::new(),
            limit,
        )
        .await?;
    Ok(Json(rows.to_json()))
}
