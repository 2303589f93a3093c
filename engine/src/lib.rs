//! Vigie's storage engine: validation, exact dedupe, the live buffer and Delta persistence.
//!
//! ```text
//!  WriteRequest ─▶ Tenant::write ─ validate ─ dedupe (drone_id, seq) ─▶ RecordBatch ─▶ LiveTable buffer
//!                                                                                      │
//!             flusher (every --flush-interval or --flush-rows) ── Parquet + Delta commit ┘
//!                                                                  on the object store (Lake)
//!  SQL (vigie-sql) ─▶ LiveTable::snapshot() = committed files + buffered batches, consistent
//! ```
//! Layout: `<lake>/tenants/<tenant>/tables/<table>/` holds one Delta table per [`TableKind`],
//! partitioned by `day`. On start, the dedupe index is rebuilt from the stored reports within the
//! window, so a retry after a restart is still a duplicate.

pub mod alert;
pub mod audit;
pub mod auth;
pub mod compaction;
pub mod dedupe;
pub mod host;
pub mod local_disk;
pub mod report;
pub mod rollup;
pub mod schema;
pub mod store;
pub mod table;
pub mod wal;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use datafusion::prelude::{ParquetReadOptions, SessionContext, col, lit};
use futures::TryStreamExt;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use vigie_proto::v1::{Alert, Rejection, WriteRequest, WriteResponse};

use crate::alert::{AlertHub, DEFAULT_RULE, RuleSet, alerts_to_proto};
use crate::audit::AuditEvent;
use crate::dedupe::DedupeIndex;
use crate::report::{ReportBatchBuilder, validate};
use crate::schema::{MICROS_PER_DAY, TableKind};
use crate::store::{Lake, TenantName};
use crate::table::{LiveTable, TableSnapshot};
use crate::wal::{LocalWal, LocalWalArgs, VolatileWal, Wal, WalPosition, WalRecord};

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting or name that cannot be used; the message says which and why.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Stored data that does not match what Vigie writes.
    #[error("unexpected stored data: {0}")]
    Corrupt(String),
    /// The object store failed (network, permissions, missing bucket…).
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// The Delta log could not be read or committed.
    #[error("Delta Lake: {0}")]
    Delta(#[from] deltalake::errors::DeltaTableError),
    /// An Arrow operation failed (a bug if it happens on validated input).
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The write-ahead log failed: the write is not acknowledged.
    #[error("write-ahead log: {0}")]
    Wal(String),
    /// Too much is buffered (the object store is slow or unreachable): retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Stored Parquet files could not be read back.
    #[error("reading stored data: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Missing, wrong, expired or revoked credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The credentials are valid but their role may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A named thing (tenant, user, key) does not exist.
    #[error("{0}")]
    NotFound(String),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What [`Engine::open`] needs.
#[derive(Debug, Clone)]
pub struct EngineArgs {
    /// Where the tables live.
    pub lake: Lake,
    /// Flush the buffer at least this often.
    pub flush_interval: Duration,
    /// Flush as soon as this many rows are buffered in a table.
    pub flush_rows: usize,
    /// `(drone_id, seq)` dedupe is exact for reports within this much report time of their drone's
    /// newest report.
    pub dedupe_window: Duration,
    /// How accepted reports are made durable before they are acknowledged.
    pub wal: WalMode,
    /// Writes are refused (`Overloaded`) while the buffers hold this many bytes.
    pub max_buffer_bytes: usize,
    /// Alert rules as `(name, SQL boolean expression over a sighting)`; empty: the default rule
    /// [`alert::DEFAULT_RULE`].
    pub alert_rules: Vec<(String, String)>,
}

impl EngineArgs {
    /// How often the buffer is flushed by default.
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(10);
    /// Buffered rows in a table that trigger a flush by default.
    pub const DEFAULT_FLUSH_ROWS: usize = 1_000_000;
    /// The default dedupe window (report time).
    pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(24 * 3600);
    /// The default buffer limit of [`EngineArgs::new`] (the server sizes its own from the
    /// machine's memory).
    pub const DEFAULT_MAX_BUFFER_BYTES: usize = 1 << 30;

    /// Arguments for `lake` and `wal` with the defaults above and the default alert rule; set
    /// fields by struct update for anything else.
    pub fn new(lake: Lake, wal: WalMode) -> Self {
        Self {
            lake,
            flush_interval: Self::DEFAULT_FLUSH_INTERVAL,
            flush_rows: Self::DEFAULT_FLUSH_ROWS,
            dedupe_window: Self::DEFAULT_DEDUPE_WINDOW,
            wal,
            max_buffer_bytes: Self::DEFAULT_MAX_BUFFER_BYTES,
            alert_rules: Vec::new(),
        }
    }
}

/// Where the write-ahead log lives.
#[derive(Debug, Clone)]
pub enum WalMode {
    /// No log: acknowledged reports not yet flushed are lost in a crash (benchmarks only).
    Off,
    /// Segment files under `dir/<tenant>/`, fsynced before each acknowledgement.
    Local {
        /// The WAL root directory.
        dir: PathBuf,
        /// Segment size before a new one starts.
        segment_bytes: u64,
        /// How long records may gather before one write + fsync.
        max_delay: Duration,
    },
}

/// One tenant's tables and dedupe state.
#[derive(Debug)]
pub struct Tenant {
    name: TenantName,
    tables: BTreeMap<&'static str, Arc<LiveTable>>,
    reports: Arc<LiveTable>,
    alerts: Arc<LiveTable>,
    hourly: Arc<LiveTable>,
    audit: Arc<LiveTable>,
    /// Whole days older than this are deleted (overrides the server's retention).
    retention: Option<Duration>,
    /// Dedupe index and alert id counter, changed together with the WAL and buffers.
    state: Mutex<WriteState>,
    rules: RuleSet,
    hub: Arc<AlertHub>,
    /// Alerts raised as of the last "alerts raised" log line.
    logged_alerts: AtomicU64,
    wal: Box<dyn Wal>,
    /// Delta transaction id recording which WAL positions a commit covers.
    wal_app_id: String,
    flush_rows: usize,
    flush_now: Arc<Notify>,
    gauge: Arc<AtomicUsize>,
    max_buffer_bytes: usize,
    counters: TenantCounters,
}

/// The tenant's Prometheus counters (no-ops when the binary installs no recorder).
#[derive(Debug)]
struct TenantCounters {
    accepted: metrics::Counter,
    duplicates: metrics::Counter,
    rejected: metrics::Counter,
    refused: metrics::Counter,
    alerts: metrics::Counter,
}

impl TenantCounters {
    fn new(tenant: &TenantName) -> Self {
        let reports = |outcome: &'static str| metrics::counter!("vigie_reports_total", "tenant" => tenant.to_string(), "outcome" => outcome);
        Self {
            accepted: reports("accepted"),
            duplicates: reports("duplicate"),
            rejected: reports("rejected"),
            refused: reports("refused_overloaded"),
            alerts: metrics::counter!("vigie_alerts_total", "tenant" => tenant.to_string()),
        }
    }
}

#[derive(Debug)]
struct WriteState {
    dedupe: DedupeIndex,
    next_alert_id: i64,
}

/// A write whose reports are buffered and logged; [`PendingWrite::durable`] waits for the log.
#[derive(Debug)]
#[must_use = "the write is acknowledged only once durable"]
pub struct PendingWrite<'a> {
    tenant: &'a Tenant,
    position: WalPosition,
    response: WriteResponse,
}

impl PendingWrite<'_> {
    /// Waits until the write's WAL record (and every earlier one) is on disk. Its alerts are
    /// published without it: by the WAL's listener, or by the write itself when the record was
    /// durable first.
    pub async fn durable(self) -> Result<WriteResponse> {
        self.tenant.wal.sync(self.position).await?;
        Ok(self.response)
    }
}

impl Tenant {
    /// The tenant's name.
    pub fn name(&self) -> &TenantName {
        &self.name
    }

    /// One of the tenant's tables.
    pub fn table(&self, kind: TableKind) -> &Arc<LiveTable> {
        match kind {
            TableKind::Reports => &self.reports,
            TableKind::Alerts => &self.alerts,
            TableKind::Hourly => &self.hourly,
            TableKind::Audit => &self.audit,
        }
    }

    /// The tenant's tables by SQL name.
    pub fn tables(&self) -> impl Iterator<Item = (&'static str, &Arc<LiveTable>)> {
        self.tables.iter().map(|(k, v)| (*k, v))
    }

    /// The compiled alert rules.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Where live alerts are published.
    pub fn hub(&self) -> &AlertHub {
        &self.hub
    }

    /// Stored alerts with ids in `from..=upto`, in id order.
    pub async fn read_alerts(&self, lake: &Lake, from: u64, upto: u64) -> Result<Vec<Alert>> {
        if from > upto {
            return Ok(Vec::new());
        }
        let (from, upto) = (from as i64, upto as i64);
        let snapshot = self.alerts.snapshot();
        let mut batches = Vec::new();
        if !snapshot.files.is_empty() {
            let frame = read_files(lake, snapshot.files.iter())
                .await?
                .filter(col("id").between(lit(from), lit(upto)))?;
            for batch in frame.collect().await? {
                // Files lack the partition column; alerts_to_proto does not read it.
                batches.push(batch);
            }
        }
        for batch in snapshot.buffered {
            let ids = batch
                .column(0)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| Error::Corrupt("alerts.id is not Int64".into()))?;
            let keep = arrow::compute::and(
                &arrow::compute::kernels::cmp::gt_eq(ids, &Int64Array::new_scalar(from))?,
                &arrow::compute::kernels::cmp::lt_eq(ids, &Int64Array::new_scalar(upto))?,
            )?;
            batches.push(arrow::compute::filter_record_batch(&batch, &keep)?);
        }
        let mut alerts: Vec<Alert> = batches.iter().flat_map(alerts_to_proto).collect();
        alerts.sort_by_key(|a| a.id);
        Ok(alerts)
    }

    /// Records an audited action in the tenant's `audit_log` (committed within a second).
    pub fn audit(&self, event: &AuditEvent) {
        match audit::audit_batch(std::slice::from_ref(event)) {
            Ok(batch) => self.audit.push(batch, 0),
            Err(e) => {
                error!(tenant = %self.name, error = %e, ?event, "cannot record an audit event")
            }
        }
    }

    /// A table's consistent snapshot (committed files + buffer).
    pub fn snapshot(&self, table: TableKind) -> TableSnapshot {
        self.tables[table.name()].snapshot()
    }

    /// Validates, dedupes, buffers and logs a request's reports, and waits until they are durable.
    /// The answer lists the rejected ones by index. Accepted reports are visible to queries as soon
    /// as they are buffered.
    pub async fn write(&self, request: &WriteRequest) -> Result<WriteResponse> {
        self.write_buffered(request)?.durable().await
    }

    /// The synchronous part of [`Tenant::write`]: everything but waiting for the WAL fsync, so that a
    /// stream can pipeline its requests while keeping their order.
    pub fn write_buffered(&self, request: &WriteRequest) -> Result<PendingWrite<'_>> {
        let buffered = self.gauge.load(Ordering::Relaxed);
        if buffered >= self.max_buffer_bytes {
            self.counters
                .refused
                .increment(request.reports.len() as u64);
            return Err(Error::Overloaded(format!(
                "{buffered} bytes are waiting to be written to the object store (limit {}); \
                 the store is slow or unreachable: retry later",
                self.max_buffer_bytes
            )));
        }
        let received_at = chrono::Utc::now().timestamp_micros();
        let mut rejected = Vec::new();
        let mut valid = Vec::with_capacity(request.reports.len());
        for (index, report) in request.reports.iter().enumerate() {
            match validate(report) {
                Ok(v) => valid.push(v),
                Err(reason) => rejected.push(Rejection {
                    index: index as u32,
                    reason,
                }),
            }
        }
        let mut duplicates = 0u32;
        let mut accepted = 0u32;
        let position;
        {
            // Dedupe, log and buffer under one lock: WAL positions follow buffer order, and a
            // concurrent retry of a report is a duplicate only once the original is buffered and
            // logged (it then waits for the same fsync).
            let mut state = self.state.lock();
            let mut builder = ReportBatchBuilder::with_capacity(valid.len());
            let mut payload = Vec::new();
            // `--wal off` drops payloads: 6 % of ingest CPU went to encoding them (perf).
            let log_payload = self.wal.keeps_payloads();
            for v in &valid {
                if state
                    .dedupe
                    .insert(&v.report.drone_id, v.report.seq, v.time_micros)
                {
                    builder.append(v, received_at);
                    if log_payload {
                        prost::encoding::message::encode(1, v.report, &mut payload);
                    }
                    accepted += 1;
                } else {
                    duplicates += 1;
                }
            }
            if accepted > 0 {
                let batch = builder.finish()?;
                let alerts = self
                    .rules
                    .evaluate(&batch, state.next_alert_id, received_at)?;
                position = self.wal.append(received_at, &payload)?;
                self.reports.push(batch, position);
                if alerts.num_rows() > 0 {
                    self.counters.alerts.increment(alerts.num_rows() as u64);
                    state.next_alert_id += alerts.num_rows() as i64;
                    self.hub.enqueue(position, alerts_to_proto(&alerts));
                    // The WAL's listener publishes them once durable; if the record became
                    // durable before they were enqueued (or the log is volatile), publish now.
                    self.hub.release(self.wal.durable_position());
                    self.alerts.push(alerts, position);
                }
            } else {
                position = self.wal.last_position();
            }
        }
        if self.reports.buffered().0 >= self.flush_rows {
            self.flush_now.notify_one();
        }
        self.counters.accepted.increment(accepted.into());
        self.counters.duplicates.increment(duplicates.into());
        self.counters.rejected.increment(rejected.len() as u64);
        Ok(PendingWrite {
            tenant: self,
            position,
            response: WriteResponse {
                accepted,
                duplicates,
                rejected,
            },
        })
    }

    /// Puts the WAL records that no Delta commit covers back into the buffers: reports of records
    /// after `reports_after`, alerts (re-derived, with the same ids) of records after
    /// `alerts_after`, and the rollup of records the reports commit covers but the rollup's does
    /// not (records after `reports_after` get theirs when the reports are flushed).
    fn replay(
        &self,
        records: Vec<WalRecord>,
        reports_after: WalPosition,
        alerts_after: WalPosition,
        hourly_after: WalPosition,
    ) -> Result<()> {
        let mut state = self.state.lock();
        let (mut rows, mut raised) = (0, 0);
        for record in records {
            let request = WriteRequest::decode(record.payload.as_ref()).map_err(|e| {
                Error::Corrupt(format!(
                    "WAL record {} is not a WriteRequest: {e}",
                    record.position
                ))
            })?;
            let mut builder = ReportBatchBuilder::with_capacity(request.reports.len());
            for report in &request.reports {
                let v = validate(report).map_err(|reason| {
                    Error::Corrupt(format!(
                        "WAL record {} holds an invalid report: {reason}",
                        record.position
                    ))
                })?;
                // Every report of a record was accepted when it was logged.
                state
                    .dedupe
                    .insert(&report.drone_id, report.seq, v.time_micros);
                builder.append(&v, record.received_at);
            }
            let batch = builder.finish()?;
            if record.position > alerts_after {
                let alerts =
                    self.rules
                        .evaluate(&batch, state.next_alert_id, record.received_at)?;
                state.next_alert_id += alerts.num_rows() as i64;
                raised += alerts.num_rows();
                self.alerts.push(alerts, record.position);
            }
            if record.position > reports_after {
                rows += batch.num_rows();
                self.reports.push(batch, record.position);
            } else if record.position > hourly_after {
                self.hourly.push(rollup::hourly(&[batch])?, record.position);
            }
        }
        info!(tenant = %self.name, rows, alerts = raised, "replayed the WAL into the buffers");
        Ok(())
    }

    /// The last WAL position every table has committed: records up to it may be deleted. A table
    /// holding buffered rows needs the records from its oldest buffered one; a table with an empty
    /// buffer has committed every record appended so far.
    fn safe_wal_position(&self) -> WalPosition {
        // Under the write lock, no record is between "appended" and "buffered".
        let _writes = self.state.lock();
        let last = self.wal.last_position();
        // The audit log is not written through the WAL.
        [&self.reports, &self.alerts, &self.hourly]
            .into_iter()
            .map(|t| {
                t.first_buffered_position()
                    .map_or(last, |p| p.saturating_sub(1))
            })
            .min()
            .unwrap_or(last)
    }

    /// The largest stored alert id (0 if none).
    async fn max_alert_id(&self, lake: &Lake) -> Result<i64> {
        let snapshot = self.alerts.snapshot();
        if snapshot.files.is_empty() {
            return Ok(0);
        }
        let batches = read_files(lake, snapshot.files.iter())
            .await?
            .aggregate(
                vec![],
                vec![datafusion::functions_aggregate::expr_fn::max(col("id"))],
            )?
            .collect()
            .await?;
        Ok(batches
            .first()
            .and_then(|b| b.column(0).as_primitive_opt::<Int64Type>().cloned())
            .filter(|a| !a.is_empty() && a.is_valid(0))
            .map_or(0, |a| a.value(0)))
    }

    /// Rebuilds the dedupe index from the reports stored within the window.
    async fn rebuild_dedupe(&self, lake: &Lake, window_micros: i64) -> Result<()> {
        let snapshot = self.reports.snapshot();
        let Some(newest_day) = snapshot.files.iter().map(|f| f.day).max() else {
            return Ok(());
        };
        let window_days = (window_micros / MICROS_PER_DAY + 1) as i32;
        let recent = snapshot
            .files
            .iter()
            .filter(|f| f.day >= newest_day - window_days);
        let mut stream = read_files(lake, recent)
            .await?
            .select_columns(&["drone_id", "seq", "time"])?
            .execute_stream()
            .await?;
        let mut index = DedupeIndex::default();
        let mut rows = 0usize;
        while let Some(batch) = stream.try_next().await? {
            rows += batch.num_rows();
            insert_keys(&mut index, &batch)?;
        }
        index.evict(window_micros);
        let (drones, ranges) = index.size();
        info!(tenant = %self.name, rows, drones, ranges, "rebuilt dedupe index");
        self.state.lock().dedupe = index;
        Ok(())
    }
}

fn insert_keys(index: &mut DedupeIndex, batch: &RecordBatch) -> Result<()> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::Corrupt(format!("a reports file has no column {name}")))
    };
    let drones = arrow::compute::cast(column("drone_id")?, &arrow::datatypes::DataType::Utf8)?;
    let drones = drones.as_string::<i32>();
    let seqs = column("seq")?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| Error::Corrupt("reports.seq is not Int64".into()))?;
    let times = column("time")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| Error::Corrupt("reports.time is not a µs timestamp".into()))?;
    for i in 0..batch.num_rows() {
        index.insert(drones.value(i), seqs.value(i) as u64, times.value(i));
    }
    Ok(())
}

/// How often buffered audit events are committed.
const AUDIT_FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// The engine: every tenant's tables, and the background flusher.
#[derive(Debug)]
pub struct Engine {
    args: EngineArgs,
    tenants: parking_lot::RwLock<BTreeMap<TenantName, Arc<Tenant>>>,
    /// Serialises [`Engine::add_tenant`] (opening a tenant replays its WAL).
    opening: tokio::sync::Mutex<()>,
    writer_id: String,
    flush_now: Arc<Notify>,
    gauge: Arc<AtomicUsize>,
}

/// A tenant's own settings; unset ones fall back to the server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSettings {
    /// The tenant.
    pub name: TenantName,
    /// Its alert rules as `(name, expression)`; empty: [`EngineArgs::alert_rules`].
    pub alert_rules: Vec<(String, String)>,
    /// Whole days older than this are deleted; `None`: the maintenance arguments' retention.
    pub retention: Option<Duration>,
}

impl TenantSettings {
    /// A tenant with the server's settings.
    pub fn named(name: TenantName) -> Self {
        Self {
            name,
            alert_rules: Vec::new(),
            retention: None,
        }
    }
}

impl Engine {
    /// Opens (creating when missing) the tables of `tenants` (the `default` tenant when empty)
    /// and rebuilds their dedupe state and buffers.
    pub async fn open(args: EngineArgs, tenants: Vec<TenantSettings>) -> Result<Self> {
        if args.flush_rows == 0 {
            return Err(Error::InvalidConfig("flush_rows must be at least 1".into()));
        }
        if args.flush_interval.is_zero() {
            return Err(Error::InvalidConfig(
                "flush_interval must be longer than 0".into(),
            ));
        }
        // Fail on a bad rule before touching any table.
        RuleSet::compile(&rules_for(&args.alert_rules, &[]))?;
        for settings in &tenants {
            RuleSet::compile(&rules_for(&args.alert_rules, &settings.alert_rules))
                .map_err(|e| Error::InvalidConfig(format!("tenant {}: {e}", settings.name)))?;
        }
        let writer_id = match &args.wal {
            WalMode::Off => "volatile".to_string(),
            WalMode::Local { dir, .. } => writer_id(dir)?,
        };
        let engine = Self {
            args,
            tenants: parking_lot::RwLock::default(),
            opening: tokio::sync::Mutex::new(()),
            writer_id,
            flush_now: Arc::new(Notify::new()),
            gauge: Arc::new(AtomicUsize::new(0)),
        };
        let tenants = if tenants.is_empty() {
            vec![TenantSettings::named(TenantName::default_tenant())]
        } else {
            tenants
        };
        for settings in tenants {
            engine.add_tenant(settings).await?;
        }
        Ok(engine)
    }

    /// Opens a tenant's tables (creating them when missing), replaying its WAL, unless it is
    /// open already. Safe while the engine serves other tenants.
    pub async fn add_tenant(&self, settings: TenantSettings) -> Result<Arc<Tenant>> {
        let _opening = self.opening.lock().await;
        if let Some(tenant) = self.tenant(&settings.name) {
            return Ok(tenant);
        }
        let tenant = Arc::new(self.open_tenant(settings).await?);
        self.tenants
            .write()
            .insert(tenant.name.clone(), tenant.clone());
        Ok(tenant)
    }

    async fn open_tenant(&self, settings: TenantSettings) -> Result<Tenant> {
        let args = &self.args;
        let rules = rules_for(&args.alert_rules, &settings.alert_rules);
        let name = settings.name;
        let mut tables = BTreeMap::new();
        for kind in TableKind::ALL {
            let table = LiveTable::open(&args.lake, &name, kind, self.gauge.clone()).await?;
            tables.insert(kind.name(), Arc::new(table));
        }
        let reports = tables[TableKind::Reports.name()].clone();
        let alerts = tables[TableKind::Alerts.name()].clone();
        let hourly = tables[TableKind::Hourly.name()].clone();
        let audit = tables[TableKind::Audit.name()].clone();
        let wal_app_id = format!("vigie-wal-{}", self.writer_id);
        let reports_committed = reports.committed_wal_position(&wal_app_id).await?;
        let alerts_committed = alerts.committed_wal_position(&wal_app_id).await?;
        let hourly_committed = hourly.committed_wal_position(&wal_app_id).await?;
        let committed = reports_committed
            .min(alerts_committed)
            .min(hourly_committed);
        let (wal, replay): (Box<dyn Wal>, Vec<WalRecord>) = match &args.wal {
            WalMode::Off => (Box::new(VolatileWal::new(committed)), Vec::new()),
            WalMode::Local {
                dir,
                segment_bytes,
                max_delay,
            } => {
                let (wal, replay) = LocalWal::open(LocalWalArgs {
                    dir: dir.join(name.as_str()),
                    segment_bytes: *segment_bytes,
                    max_delay: *max_delay,
                    after: committed,
                })?;
                (Box::new(wal), replay)
            }
        };
        let mut tenant = Tenant {
            name: name.clone(),
            reports,
            alerts,
            hourly,
            audit,
            tables,
            state: Mutex::new(WriteState {
                dedupe: DedupeIndex::default(),
                next_alert_id: 1,
            }),
            rules: RuleSet::compile(&rules)?,
            hub: Arc::default(),
            logged_alerts: AtomicU64::new(0),
            wal,
            wal_app_id,
            flush_rows: args.flush_rows,
            flush_now: self.flush_now.clone(),
            gauge: self.gauge.clone(),
            max_buffer_bytes: args.max_buffer_bytes,
            counters: TenantCounters::new(&name),
            retention: settings.retention,
        };
        tenant
            .rebuild_dedupe(&args.lake, window_micros(args.dedupe_window))
            .await?;
        let stored_alerts = tenant.max_alert_id(&args.lake).await?;
        tenant.state.lock().next_alert_id = stored_alerts + 1;
        if !replay.is_empty() {
            tenant.replay(
                replay,
                reports_committed,
                alerts_committed,
                hourly_committed,
            )?;
        }
        let last_alert = tenant.state.lock().next_alert_id - 1;
        let hub = Arc::new(AlertHub::new(last_alert as u64));
        tenant.hub = hub.clone();
        // Alerts go out from the WAL writer the moment their record is durable, without waiting
        // for the writing request's task to be scheduled.
        tenant
            .wal
            .set_listener(Box::new(move |durable| hub.release(durable)));
        info!(tenant = %name, last_alert, rules = tenant.rules.rules().len(), "alerts ready");
        Ok(tenant)
    }

    /// The lake the engine writes to.
    pub fn lake(&self) -> &Lake {
        &self.args.lake
    }

    /// A tenant by name, if open.
    pub fn tenant(&self, name: &TenantName) -> Option<Arc<Tenant>> {
        self.tenants.read().get(name).cloned()
    }

    /// Every open tenant, by name.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        self.tenants.read().values().cloned().collect()
    }

    /// The `default` tenant: the open single-tenant mode's, and the only one when no tenant was
    /// given to [`Engine::open`].
    pub fn default_tenant(&self) -> Result<Arc<Tenant>> {
        self.tenant(&TenantName::default_tenant())
            .ok_or_else(|| Error::NotFound("the default tenant is not open".into()))
    }

    /// Flushes every table of every tenant once; returns the rows written. Stops at the first error
    /// (the unflushed rows stay buffered).
    pub async fn flush_all(&self) -> Result<usize> {
        let started = std::time::Instant::now();
        let rows = self.flush_tenants().await;
        metrics::histogram!("vigie_flush_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("vigie_buffered_bytes").set(self.gauge.load(Ordering::Relaxed) as f64);
        if rows.is_err() {
            metrics::counter!("vigie_flush_failures_total").increment(1);
        }
        rows
    }

    async fn flush_tenants(&self) -> Result<usize> {
        let mut rows = 0;
        for tenant in self.tenants() {
            let mut committed = false;
            // Reports before their rollup, which is derived from what the reports flush wrote.
            for kind in [TableKind::Reports, TableKind::Alerts, TableKind::Hourly] {
                let table = tenant.table(kind);
                let outcome = table.flush(&self.args.lake, &tenant.wal_app_id).await?;
                rows += outcome.rows;
                metrics::counter!(
                    "vigie_flushed_rows_total",
                    "tenant" => tenant.name.to_string(),
                    "table" => kind.name()
                )
                .increment(outcome.rows as u64);
                committed |= outcome.wal_position.is_some();
                if kind == TableKind::Reports && outcome.rows > 0 {
                    tenant.hourly.push(
                        rollup::hourly(&outcome.batches)?,
                        outcome.wal_position.unwrap_or(0),
                    );
                }
            }
            if committed {
                tenant.wal.truncate(tenant.safe_wal_position()).await?;
            }
            rows += tenant
                .audit
                .flush(&self.args.lake, &tenant.wal_app_id)
                .await?
                .rows;
            tenant
                .state
                .lock()
                .dedupe
                .evict(window_micros(self.args.dedupe_window));
            let raised: u64 = tenant.rules.rules().iter().map(|r| r.raised()).sum();
            if tenant.logged_alerts.swap(raised, Ordering::Relaxed) != raised {
                let counts: Vec<String> = tenant
                    .rules
                    .rules()
                    .iter()
                    .map(|r| format!("{}={}", r.name, r.raised()))
                    .collect();
                info!(tenant = %tenant.name, rules = %counts.join(" "), "alerts raised since start");
            }
        }
        Ok(rows)
    }

    /// Commits the buffered audit events of every tenant (failures are logged; the events stay
    /// buffered for the next try).
    pub async fn flush_audit(&self) {
        for tenant in self.tenants() {
            if tenant.audit.buffered().0 > 0
                && let Err(e) = tenant
                    .audit
                    .flush(&self.args.lake, &tenant.wal_app_id)
                    .await
            {
                warn!(tenant = %tenant.name, error = %e, "cannot commit the audit log; retried");
            }
        }
    }

    /// Starts the background flusher: every `flush_interval`, or sooner when a table holds
    /// `flush_rows`. On `shutdown` it flushes one last time and ends.
    pub fn start_flusher(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<Result<()>> {
        let engine = self.clone();
        tokio::spawn(async move {
            let period = engine.args.flush_interval;
            // The first flush is one period after start, not at once.
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut audit_ticker = tokio::time::interval(AUDIT_FLUSH_PERIOD);
            audit_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut backoff = Duration::from_secs(1);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                    _ = engine.flush_now.notified() => {}
                    _ = audit_ticker.tick() => {
                        engine.flush_audit().await;
                        continue;
                    }
                }
                match engine.flush_all().await {
                    Ok(_) => backoff = Duration::from_secs(1),
                    Err(e) => {
                        error!(error = %e, retry_in = ?backoff, "flush failed; the rows stay buffered (and in the WAL) and are retried");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_FLUSH_BACKOFF);
                    }
                }
            }
            info!("flushing before shutdown");
            let rows = engine.flush_all().await.inspect_err(|e| {
                warn!(error = %e, "final flush failed; the WAL keeps the rows for the next start");
            })?;
            info!(rows, "final flush done");
            Ok(())
        })
    }
}

impl Engine {
    /// Runs retention, compaction and vacuum on every table of every tenant once.
    pub async fn maintain_all(
        &self,
        args: &compaction::MaintenanceArgs,
    ) -> Result<Vec<(TenantName, TableKind, compaction::MaintenanceReport)>> {
        let mut reports = Vec::new();
        for tenant in self.tenants() {
            let args = compaction::MaintenanceArgs {
                retention: tenant.retention.or(args.retention),
                ..args.clone()
            };
            for (_, table) in tenant.tables() {
                let report = compaction::maintain(self.lake(), table, &args).await?;
                reports.push((tenant.name.clone(), table.kind(), report));
            }
        }
        Ok(reports)
    }

    /// Starts background maintenance: every `every`, [`Engine::maintain_all`] with `args`
    /// (`now` taken at each run). Failures are logged and retried at the next period.
    pub fn start_maintenance(
        self: &Arc<Self>,
        every: Duration,
        args: compaction::MaintenanceArgs,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let args = compaction::MaintenanceArgs {
                    now: chrono::Utc::now(),
                    ..args.clone()
                };
                let run = engine.maintain_all(&args);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    result = run => match result {
                        Ok(reports) => {
                            for (tenant, kind, r) in reports {
                                if r != compaction::MaintenanceReport::default() {
                                    info!(%tenant, table = kind.name(), ?r, "maintenance done");
                                }
                            }
                        }
                        Err(e) => error!(error = %e, "maintenance failed; retried at the next period"),
                    }
                }
            }
        })
    }
}

/// The rows of committed `files` (without the partition column), read with plain Arrow types.
pub(crate) async fn read_files(
    lake: &Lake,
    files: impl Iterator<Item = &table::DataFile>,
) -> Result<datafusion::dataframe::DataFrame> {
    let mut config = datafusion::prelude::SessionConfig::new();
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    let ctx = SessionContext::new_with_config(config);
    let root = lake.root_url();
    ctx.register_object_store(&root, lake.root_store.clone());
    let urls: Vec<String> = files.map(|f| format!("{root}{}", f.path)).collect();
    Ok(ctx
        .read_parquet(urls, ParquetReadOptions::default())
        .await?)
}

/// Longest wait between two attempts of a failing flush.
const MAX_FLUSH_BACKOFF: Duration = Duration::from_secs(30);

/// The id of this WAL directory's writer, made once and kept in `<dir>/writer-id`: Delta commits
/// record WAL positions under it, so several servers (each with its own WAL) can share a table.
fn writer_id(dir: &std::path::Path) -> Result<String> {
    let path = dir.join("writer-id");
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Wal(format!("cannot create {}: {e}", dir.display())))?;
    if let Ok(id) = std::fs::read_to_string(&path)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_string());
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let tmp = dir.join("writer-id.tmp");
    std::fs::write(&tmp, &id)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::Wal(format!("cannot write {}: {e}", path.display())))?;
    Ok(id)
}

fn window_micros(window: Duration) -> i64 {
    i64::try_from(window.as_micros()).unwrap_or(i64::MAX)
}

/// The rules a tenant runs: its own, else the server's, else the default rule.
fn rules_for(server: &[(String, String)], tenant: &[(String, String)]) -> Vec<(String, String)> {
    if !tenant.is_empty() {
        tenant.to_vec()
    } else if !server.is_empty() {
        server.to_vec()
    } else {
        vec![(DEFAULT_RULE.0.to_string(), DEFAULT_RULE.1.to_string())]
    }
}
