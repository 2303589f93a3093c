//! Every principal's SQL session, the per-tenant query limits, and the audit of queries.
//!
//! ```text
//! Principal {tenant, role} ─▶ Sessions::session ─▶ SqlEngine (one per tenant and view, cached)
//! query start ─▶ Sessions::admit ─▶ permit (at most `concurrent` running per tenant)
//! query end   ─▶ Sessions::audit ─▶ the tenant's audit_log
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use vigie_engine::Engine;
use vigie_engine::audit::AuditEvent;
use vigie_engine::auth::{Principal, Role};
use vigie_engine::store::TenantName;

use crate::{Error, Result, SessionOptions, SqlEngine};

/// The bounds every query runs within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Memory one query may hold (spilling operators spill beyond it, the others fail).
    pub memory_bytes: usize,
    /// A query still running after this long is cancelled.
    pub timeout: Duration,
    /// Queries of one tenant running at once; more are refused until one ends.
    pub concurrent_per_tenant: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 2 << 30,
            timeout: Duration::from_secs(300),
            concurrent_per_tenant: 8,
        }
    }
}

/// The SQL sessions of every tenant.
#[derive(Debug)]
pub struct Sessions {
    engine: Arc<Engine>,
    limits: QueryLimits,
    /// By (tenant, whether the view includes `audit_log`).
    sessions: tokio::sync::Mutex<HashMap<(TenantName, bool), SqlEngine>>,
    running: Mutex<HashMap<TenantName, Arc<Semaphore>>>,
}

impl Sessions {
    /// Sessions over `engine`'s tenants, bounded by `limits`.
    pub fn new(engine: Arc<Engine>, limits: QueryLimits) -> Self {
        Self {
            engine,
            limits,
            sessions: tokio::sync::Mutex::default(),
            running: Mutex::default(),
        }
    }

    /// The limits queries run within.
    pub fn limits(&self) -> QueryLimits {
        self.limits
    }

    /// The session `principal` sees: its tenant's tables, and `audit_log` for admins.
    pub async fn session(&self, principal: &Principal) -> Result<SqlEngine> {
        let admin = principal.role == Role::Admin;
        let key = (principal.tenant.clone(), admin);
        let mut sessions = self.sessions.lock().await;
        if let Some(session) = sessions.get(&key) {
            return Ok(session.clone());
        }
        let tenant = self.engine.tenant(&principal.tenant).ok_or_else(|| {
            Error::Unavailable(format!(
                "tenant {} is not open on this server yet: retry in a few seconds",
                principal.tenant
            ))
        })?;
        let session = SqlEngine::with_options(
            tenant,
            self.engine.lake(),
            SessionOptions {
                audit_log: admin,
                memory_limit: Some(self.limits.memory_bytes),
            },
        )
        .await?;
        sessions.insert(key, session.clone());
        Ok(session)
    }

    /// A permit to run one query of `tenant`, held until the query ends.
    pub fn admit(&self, tenant: &TenantName) -> Result<OwnedSemaphorePermit> {
        let semaphore = self
            .running
            .lock()
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.concurrent_per_tenant)))
            .clone();
        semaphore.try_acquire_owned().map_err(|_| {
            Error::Busy(format!(
                "{} queries of tenant {tenant} are already running (the limit): retry when one ends",
                self.limits.concurrent_per_tenant
            ))
        })
    }

    /// Records a query in its tenant's audit log.
    pub fn audit(
        &self,
        principal: &Principal,
        sql: &str,
        rows: Option<usize>,
        duration: Duration,
        outcome: std::result::Result<(), String>,
    ) {
        let Some(tenant) = self.engine.tenant(&principal.tenant) else {
            return;
        };
        let mut event = AuditEvent::now(principal, "query");
        event.detail = Some(sql.to_string());
        event.rows = rows.map(|r| i64::try_from(r).unwrap_or(i64::MAX));
        event.duration = Some(duration);
        event.outcome = match outcome {
            Ok(()) => "ok".into(),
            Err(e) => format!("error: {e}"),
        };
        tenant.audit(&event);
    }
}
