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
        let label = match &outcome {
            Ok(()) => "ok",
            Err(e) if e.starts_with("cancelled") => "cancelled",
            Err(_) => "error",
        };
        metrics::counter!("vigie_queries_total", "tenant" => principal.tenant.to_string(), "outcome" => label)
            .increment(1);
        metrics::histogram!("vigie_query_seconds", "tenant" => principal.tenant.to_string())
            .record(duration.as_secs_f64());
        event.outcome = match outcome {
            Ok(()) => "ok".into(),
            Err(e) => format!("error: {e}"),
        };
        tenant.audit(&event);
    }
}

#[cfg(test)]
mod tests {
    use datafusion::error::DataFusionError;
    use futures::TryStreamExt;
    use vigie_engine::store::Lake;
    use vigie_engine::{EngineArgs, TenantSettings, WalMode};

    use super::*;

    async fn sessions(limits: QueryLimits) -> Sessions {
        let lake = Lake::open(&url::Url::parse("memory:///lake").unwrap()).unwrap();
        let tenants = ["north", "south"]
            .map(|t| TenantSettings::named(TenantName::new(t).unwrap()))
            .to_vec();
        let engine = Engine::open(
            EngineArgs {
                flush_interval: Duration::from_secs(3600),
                ..EngineArgs::new(lake, WalMode::Off)
            },
            tenants,
        )
        .await
        .unwrap();
        Sessions::new(Arc::new(engine), limits)
    }

    fn principal(tenant: &str, role: Role) -> Principal {
        Principal {
            tenant: TenantName::new(tenant).unwrap(),
            role,
            name: "user:test".into(),
        }
    }

    async fn tables(sessions: &Sessions, who: &Principal) -> Vec<String> {
        let session = sessions.session(who).await.unwrap();
        let mut names = session
            .context()
            .catalog("vigie")
            .unwrap()
            .schema("public")
            .unwrap()
            .table_names();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_repeated_statement_sees_new_data_and_the_current_time() {
        use datafusion::arrow::array::{AsArray, RecordBatch};
        use datafusion::arrow::datatypes::{Int64Type, TimestampNanosecondType};
        use vigie_proto::Timestamp;
        use vigie_proto::v1::{DroneReport, WriteRequest};

        let sessions = sessions(QueryLimits::default()).await;
        let session = sessions
            .session(&principal("north", Role::Analyst))
            .await
            .unwrap();
        let sql = "SELECT count(*) AS n, now() AS t FROM reports";
        let run = async || -> (i64, i64) {
            let batches: Vec<RecordBatch> =
                session.plan(sql).await.unwrap().collect().await.unwrap();
            (
                batches[0].column(0).as_primitive::<Int64Type>().value(0),
                batches[0]
                    .column(1)
                    .as_primitive::<TimestampNanosecondType>()
                    .value(0),
            )
        };
        let (n1, t1) = run().await;
        let tenant = sessions
            .engine
            .tenant(&TenantName::new("north").unwrap())
            .unwrap();
        let report = DroneReport {
            drone_id: "d".into(),
            seq: 1,
            time: Some(Timestamp {
                seconds: 1_767_225_600,
                nanos: 0,
            }),
            latitude: 1.0,
            longitude: 2.0,
            citizens: Vec::new(),
            words: Vec::new(),
        };
        let written = tenant
            .write(&WriteRequest {
                reports: vec![report],
            })
            .await
            .unwrap();
        assert_eq!(written.accepted, 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (n2, t2) = run().await;
        assert_eq!((n1, n2), (0, 1), "the second run sees the new report");
        assert!(t2 > t1, "now() is the time of each run: {t1} then {t2}");
        assert_eq!(session.plans.lock().len(), 1, "one parsed plan, reused");
    }

    #[tokio::test]
    async fn views_admission_and_memory_limit() {
        let limits = QueryLimits {
            memory_bytes: 8 << 20,
            timeout: Duration::from_secs(60),
            concurrent_per_tenant: 2,
        };
        let sessions = sessions(limits).await;
        let analyst = principal("north", Role::Analyst);
        assert!(
            !tables(&sessions, &analyst)
                .await
                .contains(&"audit_log".into())
        );
        assert!(
            tables(&sessions, &principal("north", Role::Admin))
                .await
                .contains(&"audit_log".into())
        );
        assert!(matches!(
            sessions.session(&principal("west", Role::Analyst)).await,
            Err(Error::Unavailable(_))
        ));

        let north = TenantName::new("north").unwrap();
        let first = sessions.admit(&north).unwrap();
        let _second = sessions.admit(&north).unwrap();
        assert!(matches!(sessions.admit(&north), Err(Error::Busy(m)) if m.contains("2 queries")));
        // Another tenant has its own limit.
        let _south = sessions.admit(&TenantName::new("south").unwrap()).unwrap();
        drop(first);
        let _third = sessions.admit(&north).unwrap();

        // Over the per-query pool: a clean ResourcesExhausted; the session still answers.
        let session = sessions.session(&analyst).await.unwrap();
        let run = |sql: &'static str| {
            let session = session.clone();
            async move {
                let frame = session.plan(sql).await?;
                let task = session.task_context(&frame)?;
                let plan = frame.create_physical_plan().await?;
                let batches: Vec<_> = datafusion::physical_plan::execute_stream(plan, task)?
                    .try_collect()
                    .await?;
                Ok::<_, Error>(batches)
            }
        };
        let err = run("SELECT array_agg(value) FROM generate_series(1, 5000000)")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::DataFusion(e) if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_))),
            "{err}"
        );
        let ok = run("SELECT count(*) FROM generate_series(1, 5000000)")
            .await
            .unwrap();
        assert_eq!(ok[0].num_rows(), 1);
    }
}
