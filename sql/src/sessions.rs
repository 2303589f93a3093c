//! Every principal's SQL session, admission under the query limits, where queries run, and their
//! audit.
//!
//! ```text
//! Principal {tenant, role} ─▶ Sessions::session ─▶ SqlEngine (one per tenant and view, cached)
//! Sessions::admit ─▶ Query: a tenant permit (at most `concurrent_per_tenant` running) and a
//!                   memory reservation (`memory_bytes` of the `total_memory_bytes` all share)
//! Sessions::run(query, planning)   ─▶ query runtime ─▶ result | DEADLINE_EXCEEDED | shutting down
//! Sessions::stream(query, batches) ─▶ query runtime ─▶ channel of 2 ─▶ the RPC's response stream
//! Query dropped ─▶ the tenant's audit_log (ok / error: … / cancelled: …)
//! ```
//! Every running query has reserved its memory limit, so all of them together never hold more than
//! `total_memory_bytes` of operator state: with the buffer limit, that bounds the process.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use vigie_auth::{Principal, Role};
use vigie_engine::Engine;
use vigie_engine::store::TenantName;

use crate::query::{Outcome, Purpose, Query};
use crate::runtime::QueryRuntime;
use crate::{Error, Result, SessionOptions, SqlEngine};

/// The bounds every query runs within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Memory one query may hold (spilling operators spill beyond it, the others fail), and the
    /// largest value one function may build.
    pub memory_bytes: usize,
    /// Memory all running queries may hold together: a query is admitted only when its
    /// `memory_bytes` still fits.
    pub total_memory_bytes: usize,
    /// A query still running after this long is cancelled.
    pub timeout: Duration,
    /// Queries of one tenant running at once; more are refused until one ends.
    pub concurrent_per_tenant: usize,
}

impl QueryLimits {
    /// The default memory of one query: 1 GiB.
    pub const DEFAULT_MEMORY_BYTES: usize = 1 << 30;
    /// The default time limit: 5 minutes.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
    /// The default number of queries one tenant runs at once.
    pub const DEFAULT_CONCURRENT_PER_TENANT: usize = 8;

    /// The default memory of all queries together: a quarter of the machine's memory (4 GiB
    /// when unknown), and at least one query's.
    pub fn default_total_memory_bytes(memory_bytes: usize) -> usize {
        vigie_engine::host::memory_share(4, 4 << 30).max(memory_bytes)
    }

    /// Whether the limits make sense, naming the setting that does not.
    pub fn check(&self) -> Result<(), String> {
        if self.concurrent_per_tenant == 0 {
            return Err("--max-concurrent-queries must be at least 1".into());
        }
        if self.memory_bytes < 1 << 20 {
            return Err("--query-memory-bytes must be at least 1048576 (1 MiB)".into());
        }
        if self.total_memory_bytes < self.memory_bytes {
            return Err(format!(
                "--queries-memory-bytes ({}) must be at least --query-memory-bytes ({}): no query could run",
                self.total_memory_bytes, self.memory_bytes
            ));
        }
        if self.timeout.is_zero() {
            return Err("--query-timeout must be longer than 0".into());
        }
        Ok(())
    }
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            total_memory_bytes: Self::default_total_memory_bytes(Self::DEFAULT_MEMORY_BYTES),
            timeout: Self::DEFAULT_TIMEOUT,
            concurrent_per_tenant: Self::DEFAULT_CONCURRENT_PER_TENANT,
        }
    }
}

/// Query runtime threads per core. A cancelled query stops at its next yield point, which an
/// operator busy inside one batch (a nested-loop join probing a large build side) reaches only
/// seconds later. Four threads per core let the queries that follow start meanwhile, but made
/// drones' acknowledgements 3-5x slower under attack (p99 35-50 ms → 157-261 ms in the
/// adversarial test, debug build): one per core keeps ingest first.
const QUERY_THREADS_PER_CORE: usize = 1;

/// Memory reservations are counted in MiB.
const MIB: usize = 1 << 20;

/// The SQL sessions of every tenant, and the runtime their queries run on.
#[derive(Debug)]
pub struct Sessions {
    engine: Arc<Engine>,
    limits: QueryLimits,
    /// By (tenant, whether the view includes `audit_log`).
    sessions: tokio::sync::Mutex<HashMap<(TenantName, bool), SqlEngine>>,
    running: Mutex<HashMap<TenantName, Arc<Semaphore>>>,
    /// MiB of `total_memory_bytes` not reserved by a running query.
    memory: Arc<Semaphore>,
    runtime: QueryRuntime,
    /// Cancelled at shutdown: every running query stops.
    shutdown: CancellationToken,
}

impl Sessions {
    /// Sessions over `engine`'s tenants, bounded by `limits`, running queries on a runtime of
    /// their own (see `QUERY_THREADS_PER_CORE`).
    pub fn new(engine: Arc<Engine>, limits: QueryLimits) -> Result<Self> {
        limits.check().map_err(Error::Parameters)?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = QueryRuntime::start(cores * QUERY_THREADS_PER_CORE)
            .map_err(|e| Error::Internal(format!("cannot start the query runtime: {e}")))?;
        Ok(Self {
            engine,
            limits,
            sessions: tokio::sync::Mutex::default(),
            running: Mutex::default(),
            memory: Arc::new(Semaphore::new(limits.total_memory_bytes / MIB)),
            runtime,
            shutdown: CancellationToken::new(),
        })
    }

    /// The limits queries run within.
    pub fn limits(&self) -> QueryLimits {
        self.limits
    }

    /// The session `principal` sees: its tenant's tables, and `audit_log` for admins. On a
    /// follower in cluster mode, its tables first catch up with the tenant's stream, so the
    /// session's next query sees every report acknowledged before this call.
    pub async fn session(&self, principal: &Principal) -> Result<SqlEngine> {
        let admin = principal.role == Role::Admin;
        let key = (principal.tenant.clone(), admin);
        let tenant = self.engine.tenant(&principal.tenant).ok_or_else(|| {
            Error::Unavailable(format!(
                "tenant {} is not open on this server yet: retry in a few seconds",
                principal.tenant
            ))
        })?;
        // A follower (cluster mode) reads what the owner logged since: read-your-writes.
        tenant.catch_up().await.map_err(|e| {
            Error::Unavailable(format!(
                "cannot read tenant {}'s newest reports from the stream: {e}; retry",
                principal.tenant
            ))
        })?;
        let mut sessions = self.sessions.lock().await;
        // In cluster mode a takeover or a step-down opens the tenant anew: a new session then.
        if let Some(session) = sessions.get(&key)
            && Arc::ptr_eq(session.tenant(), &tenant)
        {
            return Ok(session.clone());
        }
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

    /// Admits one query of `principal` ([`Sessions::admit`]) and opens its session
    /// ([`Sessions::session`]); a session that cannot be opened is the query's outcome.
    pub async fn start(
        &self,
        principal: &Principal,
        sql: &str,
        purpose: Purpose,
    ) -> Result<(Query, SqlEngine)> {
        let query = self.admit(principal, sql, purpose)?;
        let session = self
            .session(principal)
            .await
            .inspect_err(|e| query.fail(e))?;
        Ok((query, session))
    }

    /// Admits one query of `principal`: a permit of its tenant and its memory reservation, held
    /// until the returned [`Query`] is dropped; its time limit starts now. A refusal is audited.
    pub fn admit(&self, principal: &Principal, sql: &str, purpose: Purpose) -> Result<Query> {
        self.admit_at(principal, sql, purpose, Instant::now())
    }

    /// [`Sessions::admit`] for a query whose time limit started at `started`: a statement
    /// planned by one call and run by the next (Flight SQL's GetFlightInfo then DoGet) has one
    /// time limit for its planning and its run, not one each.
    pub fn admit_at(
        &self,
        principal: &Principal,
        sql: &str,
        purpose: Purpose,
        started: Instant,
    ) -> Result<Query> {
        self.try_admit(principal, sql, purpose, started)
            .inspect_err(|e| self.audit(principal, sql, started.elapsed(), Outcome::of(e)))
    }

    fn try_admit(
        &self,
        principal: &Principal,
        sql: &str,
        purpose: Purpose,
        started: Instant,
    ) -> Result<Query> {
        if self.shutdown.is_cancelled() {
            return Err(shutting_down());
        }
        let tenant = &principal.tenant;
        let semaphore = self
            .running
            .lock()
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.concurrent_per_tenant)))
            .clone();
        let tenant_permit = semaphore.try_acquire_owned().map_err(|_| {
            Error::Busy(format!(
                "{} queries of tenant {tenant} are already running (the limit): retry when one ends",
                self.limits.concurrent_per_tenant
            ))
        })?;
        let mib = u32::try_from(self.limits.memory_bytes.div_ceil(MIB)).unwrap_or(u32::MAX);
        let memory = self
            .memory
            .clone()
            .try_acquire_many_owned(mib)
            .map_err(|_| {
                let total = self.limits.total_memory_bytes / MIB;
                Error::Busy(format!(
                    "the running queries hold {} MiB of the {total} MiB all queries may use \
                 (--queries-memory-bytes), and a query reserves {mib} MiB \
                 (--query-memory-bytes): retry when one ends",
                    total.saturating_sub(self.memory.available_permits())
                ))
            })?;
        Ok(Query {
            principal: principal.clone(),
            sql: sql.to_string(),
            purpose,
            started,
            deadline: tokio::time::Instant::from_std(started + self.limits.timeout),
            timeout: self.limits.timeout,
            cancel: self.shutdown.child_token(),
            rows: Arc::default(),
            outcome: Mutex::default(),
            tenant: self.engine.tenant(tenant),
            _permits: (tenant_permit, memory),
        })
    }

    /// Runs `work` (planning) for `query` on the query runtime: its result, or the query's
    /// timeout or the shutdown, whichever comes first (then `work` is aborted). A failure is
    /// recorded as the query's outcome.
    pub async fn run<T, F>(&self, query: &Query, work: F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let task = self.runtime.spawn(work);
        let result = tokio::select! {
            biased;
            () = query.cancel.cancelled() => Err(shutting_down()),
            () = tokio::time::sleep_until(query.deadline) => Err(query.timed_out()),
            joined = task => joined.unwrap_or_else(|e| Err(joined_error(&e))),
        };
        if let Err(e) = &result {
            query.fail(e);
        }
        result
    }

    /// Runs `items` (a query's results) on the query runtime and hands them over as they come,
    /// two at most waiting; ends with the query's timeout, the shutdown, or the first error.
    /// The query is audited when the returned stream ends or is dropped (the client went away).
    pub fn stream<T, S>(
        &self,
        query: Query,
        items: S,
    ) -> impl Stream<Item = Result<T>> + Send + use<T, S>
    where
        S: Stream<Item = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        let task = self.runtime.spawn(async move {
            let mut items = std::pin::pin!(items);
            while let Some(item) = items.next().await {
                let failed = item.is_err();
                if sender.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        futures::stream::unfold(Some((receiver, task, query)), |state| async move {
            let (mut receiver, mut task, query) = state?;
            let next = tokio::select! {
                biased;
                () = query.cancel.cancelled() => Some(Err(shutting_down())),
                () = tokio::time::sleep_until(query.deadline) => Some(Err(query.timed_out())),
                item = receiver.recv() => match item {
                    Some(item) => Some(item),
                    // The producer ended: after its last item, or aborted, or it panicked.
                    None => match (&mut task).await {
                        Ok(()) => None,
                        Err(e) => Some(Err(joined_error(&e))),
                    },
                },
            };
            match next {
                Some(Ok(item)) => Some((Ok(item), Some((receiver, task, query)))),
                Some(Err(e)) => {
                    query.fail(&e);
                    // Dropping the task's handle aborts it; the permits go with the query.
                    Some((Err(e), None))
                }
                None => {
                    query.end(Outcome::Ok);
                    None
                }
            }
        })
    }

    /// Cancels every running query (each answers that the server is shutting down and is
    /// audited as cancelled), refuses new ones, and lets the query runtime's threads go.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        self.runtime.shutdown();
    }

    /// Records a query that never got as far as admission, or was refused by it.
    pub fn audit(&self, principal: &Principal, sql: &str, duration: Duration, outcome: Outcome) {
        let Some(tenant) = self.engine.tenant(&principal.tenant) else {
            return;
        };
        crate::query::record(&tenant, principal, sql, None, duration, &outcome);
    }
}

/// The error of a query stopped by the shutdown.
fn shutting_down() -> Error {
    Error::ShuttingDown(
        "the server is shutting down and cancelled the query: retry on another server or after \
         the restart"
            .into(),
    )
}

/// The error of a query task that did not return: it panicked (a bug), or the runtime stopped.
fn joined_error(error: &tokio::task::JoinError) -> Error {
    if error.is_cancelled() {
        shutting_down()
    } else {
        Error::Internal(format!("the query failed unexpectedly: {error}"))
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
        Sessions::new(Arc::new(engine), limits).unwrap()
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
            total_memory_bytes: 24 << 20,
            timeout: Duration::from_secs(60),
            concurrent_per_tenant: 2,
        };
        let sessions = sessions(limits).await;
        let analyst = principal("north", Role::Analyst);
        assert!(
            QueryLimits {
                total_memory_bytes: 4 << 20,
                ..limits
            }
            .check()
            .unwrap_err()
            .contains("--queries-memory-bytes")
        );
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

        let admit = |tenant: &str| {
            sessions.admit(&principal(tenant, Role::Analyst), "SELECT 1", Purpose::Run)
        };
        let first = admit("north").unwrap();
        let _second = admit("north").unwrap();
        assert!(matches!(admit("north"), Err(Error::Busy(m)) if m.contains("2 queries")));
        // Another tenant has its own count limit, but all share the memory: 3 × 8 of 24 MiB.
        let _south = admit("south").unwrap();
        assert!(
            matches!(admit("south"), Err(Error::Busy(m)) if m.contains("hold 24 MiB of the 24 MiB")),
        );
        drop(first);
        let _third = admit("north").unwrap();

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

    /// The audit rows of tenant `north` so far: (outcome, rows).
    async fn audited(sessions: &Sessions) -> Vec<(String, Option<i64>)> {
        use datafusion::arrow::array::{Array, AsArray};
        use datafusion::arrow::datatypes::Int64Type;
        let admin = sessions
            .session(&principal("north", Role::Admin))
            .await
            .unwrap();
        let batches = admin
            .plan("SELECT outcome, rows FROM audit_log ORDER BY time")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut out = Vec::new();
        for b in batches {
            let outcome = datafusion::arrow::compute::cast(
                b.column(0),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let rows = b.column(1).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                out.push((
                    outcome.as_string::<i32>().value(i).to_string(),
                    (!rows.is_null(i)).then(|| rows.value(i)),
                ));
            }
        }
        out
    }

    #[tokio::test]
    async fn queries_end_at_their_deadline_or_the_shutdown_and_are_audited() {
        let limits = QueryLimits {
            timeout: Duration::from_millis(300),
            ..QueryLimits::default()
        };
        let sessions = sessions(limits).await;
        let who = principal("north", Role::Analyst);

        // Planning that never ends: answered at the deadline.
        let query = sessions.admit(&who, "plan forever", Purpose::Plan).unwrap();
        let started = std::time::Instant::now();
        let err = sessions
            .run(&query, std::future::pending::<Result<()>>())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Timeout(m) if m.contains("300ms")),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_millis(900));
        drop(query);

        // A stream whose producer is busy inside one item, without yielding: the caller is
        // answered at the deadline all the same.
        let query = sessions.admit(&who, "busy", Purpose::Run).unwrap();
        let busy = futures::stream::once(async {
            std::thread::sleep(Duration::from_secs(2));
            Ok::<_, Error>(1)
        });
        let started = std::time::Instant::now();
        let items: Vec<_> = sessions.stream(query, busy).collect().await;
        assert!(
            matches!(items.as_slice(), [Err(Error::Timeout(_))]),
            "{items:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(900));

        // A finished stream is audited with its rows.
        let query = sessions.admit(&who, "three", Purpose::Run).unwrap();
        query
            .row_counter()
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        let items: Vec<_> = sessions
            .stream(query, futures::stream::iter([Ok::<_, Error>(1), Ok(2)]))
            .collect()
            .await;
        assert_eq!(items.len(), 2);

        // The shutdown cancels a running stream and refuses new queries.
        let query = sessions.admit(&who, "forever", Purpose::Run).unwrap();
        let forever = sessions.stream(query, futures::stream::pending::<Result<i32>>());
        let ended = tokio::spawn(async move { forever.collect::<Vec<_>>().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        sessions.shutdown();
        let items = ended.await.unwrap();
        assert!(
            matches!(items.as_slice(), [Err(Error::ShuttingDown(_))]),
            "{items:?}"
        );
        assert!(matches!(
            sessions.admit(&who, "late", Purpose::Run),
            Err(Error::ShuttingDown(_))
        ));
        // Planning is refused after the shutdown too (and audited as cancelled).
        let planned = sessions.admit(&who, "planned", Purpose::Plan);
        assert!(planned.is_err());

        let audit = audited(&sessions).await;
        let outcomes: Vec<_> = audit
            .iter()
            .map(|(o, _)| o.split(':').next().unwrap_or("").to_string())
            .collect();
        assert_eq!(
            outcomes,
            [
                "cancelled",
                "cancelled",
                "ok",
                "cancelled",
                "cancelled",
                "cancelled"
            ],
            "{audit:?}"
        );
        assert_eq!(audit[2], ("ok".into(), Some(3)));
        assert!(
            audit[3]
                .0
                .starts_with("cancelled: the server is shutting down"),
            "{audit:?}"
        );
    }
}
