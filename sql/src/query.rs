//! One admitted query: the permits it holds, when it must end, and its audit record.
//!
//! ```text
//! Sessions::admit ─▶ Query { tenant permit, memory reservation, deadline, cancel token }
//!   planning (Purpose::Plan): audited only when it fails
//!   execution (Purpose::Run): audited when dropped, with rows, duration and its Outcome
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use vigie_auth::Principal;
use vigie_engine::Tenant;
use vigie_engine::audit::AuditEvent;

use crate::Error;

/// How a query ended, as the audit log and the metrics tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every batch was produced.
    Ok,
    /// Refused or failed: bad SQL, a limit, a storage error.
    Failed(String),
    /// Stopped before its end: its time limit, the client going away, the server shutting down.
    Cancelled(String),
}

impl Outcome {
    /// The outcome of a query that ended with `error`.
    pub fn of(error: &Error) -> Self {
        match error {
            Error::Timeout(m) | Error::ShuttingDown(m) => Self::Cancelled(m.clone()),
            Error::DataFusion(_)
            | Error::ReadOnly(_)
            | Error::Parameters(_)
            | Error::Busy(_)
            | Error::Unavailable(_)
            | Error::Internal(_) => Self::Failed(error.to_string()),
        }
    }

    /// The metrics label: `ok`, `error` or `cancelled`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed(_) => "error",
            Self::Cancelled(_) => "cancelled",
        }
    }

    /// The audit log's text: `ok`, `error: …` or `cancelled: …`.
    pub fn text(&self) -> String {
        match self {
            Self::Ok => "ok".into(),
            Self::Failed(m) => format!("error: {m}"),
            Self::Cancelled(m) => format!("cancelled: {m}"),
        }
    }
}

/// What an admission is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Planning only (GetFlightInfo): audited only when it fails, since the run is audited.
    Plan,
    /// Running to the last batch: always audited.
    Run,
}

/// An admitted query. Dropping it releases its permits and writes its audit record.
#[derive(Debug)]
pub struct Query {
    pub(crate) principal: Principal,
    pub(crate) sql: String,
    pub(crate) purpose: Purpose,
    pub(crate) started: Instant,
    pub(crate) deadline: tokio::time::Instant,
    pub(crate) timeout: Duration,
    pub(crate) cancel: CancellationToken,
    pub(crate) rows: Arc<AtomicUsize>,
    pub(crate) outcome: Mutex<Option<Outcome>>,
    /// Where the audit record goes (`None`: the tenant closed meanwhile).
    pub(crate) tenant: Option<Arc<Tenant>>,
    pub(crate) _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

impl Query {
    /// Who runs it.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// A counter the producer of result batches adds their rows to (the audit's row count).
    pub fn row_counter(&self) -> Arc<AtomicUsize> {
        self.rows.clone()
    }

    /// Records that the query ended with `error` (the first outcome recorded wins).
    pub fn fail(&self, error: &Error) {
        self.end(Outcome::of(error));
    }

    /// Records how the query ended, unless an outcome is recorded already.
    pub fn end(&self, outcome: Outcome) {
        self.outcome.lock().get_or_insert(outcome);
    }

    /// The error of a query past its deadline.
    pub(crate) fn timed_out(&self) -> Error {
        Error::Timeout(format!(
            "the query ran longer than the limit of {} (--query-timeout) and was cancelled",
            humantime::format_duration(self.timeout)
        ))
    }
}

impl Drop for Query {
    fn drop(&mut self) {
        let outcome = self.outcome.lock().take().unwrap_or_else(|| {
            Outcome::Cancelled("the client stopped reading before the last batch".into())
        });
        if self.purpose == Purpose::Plan && outcome == Outcome::Ok {
            return;
        }
        let rows = (outcome == Outcome::Ok).then(|| self.rows.load(Ordering::Relaxed));
        if let Some(tenant) = &self.tenant {
            record(
                tenant,
                &self.principal,
                &self.sql,
                rows,
                self.started.elapsed(),
                &outcome,
            );
        }
    }
}

/// Writes a query's audit record to its tenant's `audit_log`, and counts it in the metrics.
pub(crate) fn record(
    tenant: &Tenant,
    principal: &Principal,
    sql: &str,
    rows: Option<usize>,
    duration: Duration,
    outcome: &Outcome,
) {
    let mut event = AuditEvent::now(&principal.name, principal.role.as_str(), "query");
    event.detail = Some(sql.to_string());
    event.rows = rows.map(|r| i64::try_from(r).unwrap_or(i64::MAX));
    event.duration = Some(duration);
    event.outcome = outcome.text();
    let tenant_label = principal.tenant.to_string();
    metrics::counter!("vigie_queries_total", "tenant" => tenant_label.clone(), "outcome" => outcome.label())
        .increment(1);
    metrics::histogram!("vigie_query_seconds", "tenant" => tenant_label)
        .record(duration.as_secs_f64());
    tenant.audit(&event);
}
