//! The `audit_log` table: every Flight SQL query and every admin action, per tenant.
//!
//! ```text
//! Flight SQL query ends ─▶ Tenant::audit(event) ─▶ audit_log buffer ─▶ committed within a second
//!                                                  (Engine::start_flusher's audit tick)
//! vigie admin …        ─▶ append_committed(lake, tenant, events) ─▶ one Delta commit, at once
//! ```
//! Only the tenant's admins can query it (see `vigie-sql`). Retention applies to it like to the
//! other tables: SQL text may name citizens.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use arrow::array::{
    Date32Builder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};

use crate::Result;
use crate::schema::{TableKind, day_of_micros};
use crate::store::{Lake, TenantName};
use crate::table::LiveTable;

/// One audited action.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// When it happened, in microseconds since the epoch.
    pub time_micros: i64,
    /// Who did it: `user:<name>`, `key:<id>`, `anonymous` or `admin-cli:<os user>`.
    pub principal: String,
    /// The principal's role.
    pub role: String,
    /// `query`, `create-tenant`, `create-user`, `create-key`, `revoke-key`.
    pub action: String,
    /// The SQL text, or what the admin action concerned.
    pub detail: Option<String>,
    /// Rows returned (queries).
    pub rows: Option<i64>,
    /// How long it took (queries).
    pub duration: Option<Duration>,
    /// `ok`, or `error: <message>`.
    pub outcome: String,
}

impl AuditEvent {
    /// An event happening now, by the principal `name` acting as `role` (the engine stores who
    /// acted; how they proved it is `vigie-auth`'s business).
    pub fn now(name: &str, role: &str, action: &str) -> Self {
        Self {
            time_micros: chrono::Utc::now().timestamp_micros(),
            principal: name.to_string(),
            role: role.to_string(),
            action: action.to_string(),
            detail: None,
            rows: None,
            duration: None,
            outcome: "ok".into(),
        }
    }
}

/// The events as a batch of the `audit_log` schema.
pub fn audit_batch(events: &[AuditEvent]) -> Result<RecordBatch> {
    // Sized to the events: one is recorded per query, and the builders' default capacity (1,024
    // values) made each of those allocate and zero about 60 kB.
    let n = events.len();
    let strings = |len: fn(&AuditEvent) -> usize| {
        StringBuilder::with_capacity(n, events.iter().map(len).sum())
    };
    let mut time = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut principal = strings(|e| e.principal.len());
    let mut role = strings(|e| e.role.len());
    let mut action = strings(|e| e.action.len());
    let mut detail = strings(|e| e.detail.as_ref().map_or(0, String::len));
    let mut rows = Int64Builder::with_capacity(n);
    let mut duration = Float64Builder::with_capacity(n);
    let mut outcome = strings(|e| e.outcome.len());
    let mut day = Date32Builder::with_capacity(n);
    for e in events {
        time.append_value(e.time_micros);
        principal.append_value(&e.principal);
        role.append_value(&e.role);
        action.append_value(&e.action);
        detail.append_option(e.detail.as_deref());
        rows.append_option(e.rows);
        duration.append_option(e.duration.map(|d| d.as_secs_f64() * 1e3));
        outcome.append_value(&e.outcome);
        day.append_value(day_of_micros(e.time_micros));
    }
    Ok(RecordBatch::try_new(
        TableKind::Audit.schema(),
        vec![
            Arc::new(time.finish()),
            Arc::new(principal.finish()),
            Arc::new(role.finish()),
            Arc::new(action.finish()),
            Arc::new(detail.finish()),
            Arc::new(rows.finish()),
            Arc::new(duration.finish()),
            Arc::new(outcome.finish()),
            Arc::new(day.finish()),
        ],
    )?)
}

/// Appends `events` to `tenant`'s audit log as one Delta commit, now (for `vigie admin`, which
/// runs beside a server: Delta's optimistic concurrency orders the commits).
pub async fn append_committed(
    lake: &Lake,
    tenant: &TenantName,
    events: &[AuditEvent],
) -> Result<()> {
    let table = LiveTable::open(
        lake,
        tenant,
        TableKind::Audit,
        Arc::new(AtomicUsize::new(0)),
    )
    .await?;
    table.push(audit_batch(events)?, 0);
    table.flush(lake, "vigie-admin").await?;
    Ok(())
}
