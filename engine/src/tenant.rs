//! One tenant: its tables, its WAL, its dedupe state and alert rules, and its write path.
//!
//! ```text
//! WriteRequest ─▶ Tenant::write_buffered: validate ─ under the state lock: dedupe, alert rules,
//!                 WAL append, push to the reports (and alerts) buffer ─▶ PendingWrite
//!              ─▶ PendingWrite::durable: waits for the WAL fsync ─▶ WriteResponse
//! Tenant::flush: reports, alerts, rollup (from the flushed reports) ─▶ Delta; WAL truncate
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::Int64Type;
use datafusion::prelude::{col, lit};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::{error, info};
use vigie_proto::v1::{Alert, Rejection, WriteRequest, WriteResponse};

use crate::alert::{AlertHub, RuleSet, alerts_to_proto};
use crate::alert_events::AlertEventFeed;
use crate::args::TenantSettings;
use crate::audit::{self, AuditEvent};
use crate::dedupe::DedupeIndex;
use crate::ingest_stats::IngestStats;
use crate::lease::NodeInfo;
use crate::report::{ReportBatchBuilder, validate};
use crate::rollup;
use crate::schema::TableKind;
use crate::store::{Lake, TenantName};
use crate::table::{DataFile, LiveTable, TableSnapshot, read_files};
use crate::wal::{self, Wal, WalPosition};
use crate::{Error, Result};

/// Whether this node writes a tenant or only reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantRole {
    /// This node dedupes, logs, buffers and flushes the tenant's reports, and raises its
    /// alerts: always outside cluster mode; in cluster mode, while it holds the tenant's lease.
    Owner,
    /// Cluster mode, another node (or none, during a takeover) owns the tenant: this node
    /// answers queries over its committed tables (refreshed at each flush interval) and
    /// forwards its writes to the owner.
    Follower,
}

/// One tenant's tables and dedupe state.
#[derive(Debug)]
pub struct Tenant {
    pub(crate) name: TenantName,
    /// What the tenant was opened with (to open it again in another role).
    pub(crate) settings: TenantSettings,
    pub(crate) role: TenantRole,
    /// The node owning the tenant's writes, as last seen: this one for an owner, `None` while
    /// nobody holds the lease.
    pub(crate) owner: parking_lot::RwLock<Option<NodeInfo>>,
    /// Where the tenant's tables live.
    pub(crate) lake: Lake,
    pub(crate) reports: Arc<LiveTable>,
    pub(crate) alerts: Arc<LiveTable>,
    pub(crate) hourly: Arc<LiveTable>,
    pub(crate) audit: Arc<LiveTable>,
    pub(crate) alert_events: Arc<LiveTable>,
    /// Pushes the alert events new to this node to its watchers.
    pub(crate) alert_feed: AlertEventFeed,
    pub(crate) ingest_stats: Arc<LiveTable>,
    /// Ingest counts not yet in `ingest_stats`.
    pub(crate) stats: IngestStats,
    /// Whole days older than this are deleted (overrides the server's retention).
    pub(crate) retention: Option<Duration>,
    /// Dedupe index and alert id counter, changed together with the WAL and buffers.
    pub(crate) state: Mutex<WriteState>,
    pub(crate) rules: RuleSet,
    pub(crate) hub: Arc<AlertHub>,
    /// Alerts raised as of the last "alerts raised" log line.
    pub(crate) logged_alerts: AtomicU64,
    pub(crate) wal: Box<dyn Wal>,
    /// Delta transaction id recording which WAL positions a commit covers.
    pub(crate) wal_app_id: String,
    pub(crate) flush_rows: usize,
    /// `(drone_id, seq)` dedupe is exact within this much report time, in µs.
    pub(crate) dedupe_window_micros: i64,
    pub(crate) flush_now: Arc<Notify>,
    pub(crate) gauge: Arc<AtomicUsize>,
    pub(crate) max_buffer_bytes: usize,
    pub(crate) counters: TenantCounters,
    /// A follower in cluster mode: how far it read the tenant's stream.
    pub(crate) tail: Option<crate::follow::FollowerTail>,
}

/// The tenant's Prometheus counters (no-ops when the binary installs no recorder).
#[derive(Debug)]
pub(crate) struct TenantCounters {
    pub(crate) accepted: metrics::Counter,
    pub(crate) duplicates: metrics::Counter,
    pub(crate) rejected: metrics::Counter,
    pub(crate) refused: metrics::Counter,
    pub(crate) alerts: metrics::Counter,
}

impl TenantCounters {
    pub(crate) fn new(tenant: &TenantName) -> Self {
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
pub(crate) struct WriteState {
    pub(crate) dedupe: DedupeIndex,
    pub(crate) next_alert_id: i64,
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

    /// Whether this node writes the tenant or only reads it.
    pub fn role(&self) -> TenantRole {
        self.role
    }

    /// Whether this node writes the tenant (always outside cluster mode).
    pub fn is_owner(&self) -> bool {
        self.role == TenantRole::Owner
    }

    /// In cluster mode, the node owning the tenant's writes as last seen (`None` outside
    /// cluster mode, or while nobody holds the lease).
    pub fn owner(&self) -> Option<NodeInfo> {
        self.owner.read().clone()
    }

    /// The refusal of a write on a follower: who owns the tenant, or that nobody does yet.
    pub fn not_owner(&self) -> Error {
        Error::NotOwner(match self.owner() {
            Some(owner) => format!(
                "node {} ({}) owns tenant {}: write there",
                owner.id, owner.addr, self.name
            ),
            None => format!(
                "no node owns tenant {} right now (a takeover is under way): retry in a few \
                 seconds",
                self.name
            ),
        })
    }

    pub(crate) fn set_owner(&self, owner: Option<NodeInfo>) {
        *self.owner.write() = owner;
    }

    /// What the tenant was opened with.
    pub(crate) fn settings(&self) -> &TenantSettings {
        &self.settings
    }

    /// Why the tenant's log refuses appends (fenced by another owner, the stream lost), if it
    /// does.
    pub(crate) fn log_failed(&self) -> Option<std::sync::Arc<str>> {
        self.wal.failed()
    }

    /// One of the tenant's tables.
    pub fn table(&self, kind: TableKind) -> &Arc<LiveTable> {
        match kind {
            TableKind::Reports => &self.reports,
            TableKind::Alerts => &self.alerts,
            TableKind::Hourly => &self.hourly,
            TableKind::Audit => &self.audit,
            TableKind::AlertEvents => &self.alert_events,
            TableKind::IngestStats => &self.ingest_stats,
        }
    }

    /// The tenant's tables by SQL name.
    pub fn tables(&self) -> impl Iterator<Item = (&'static str, &Arc<LiveTable>)> {
        TableKind::ALL
            .into_iter()
            .map(|kind| (kind.name(), self.table(kind)))
    }

    /// The lake the tenant's tables live in.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// The compiled alert rules.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Where live alerts are published.
    pub fn hub(&self) -> &AlertHub {
        &self.hub
    }

    /// Stored alerts with ids in `from..=upto`, in id order. A stored file that is not an
    /// alerts file is `Corrupt`, named.
    pub async fn read_alerts(&self, from: u64, upto: u64) -> Result<Vec<Alert>> {
        if from > upto {
            return Ok(Vec::new());
        }
        let snapshot = self.alerts.snapshot();
        let mut alerts = match self.read_stored_alerts(&snapshot.files, from, upto).await {
            Ok(alerts) => alerts,
            // Find the file to name, one at a time (only when something is wrong).
            Err(e) => {
                for file in snapshot.files.iter() {
                    if let Err(e) = self
                        .read_stored_alerts(std::slice::from_ref(file), from, upto)
                        .await
                    {
                        return Err(Error::Corrupt(format!(
                            "alerts file {} of tenant {}: {e}",
                            file.path, self.name
                        )));
                    }
                }
                return Err(e);
            }
        };
        let (from, upto) = (from as i64, upto as i64);
        for batch in snapshot.buffered {
            let ids = batch
                .column(0)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| Error::Corrupt("alerts.id is not Int64".into()))?;
            let keep = arrow::compute::and(
                &arrow::compute::kernels::cmp::gt_eq(ids, &Int64Array::new_scalar(from))?,
                &arrow::compute::kernels::cmp::lt_eq(ids, &Int64Array::new_scalar(upto))?,
            )?;
            alerts.extend(alerts_to_proto(&arrow::compute::filter_record_batch(
                &batch, &keep,
            )?)?);
        }
        alerts.sort_by_key(|a| a.id);
        Ok(alerts)
    }

    /// The alerts with ids in `from..=upto` of stored alerts `files`.
    async fn read_stored_alerts(
        &self,
        files: &[DataFile],
        from: u64,
        upto: u64,
    ) -> Result<Vec<Alert>> {
        let mut alerts = Vec::new();
        if files.is_empty() {
            return Ok(alerts);
        }
        let frame = read_files(&self.lake, files.iter())
            .await?
            .filter(col("id").between(lit(from as i64), lit(upto as i64)))?;
        for batch in frame.collect().await? {
            // Files lack the partition column; alerts_to_proto does not read it.
            alerts.extend(alerts_to_proto(&batch)?);
        }
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
        self.table(table).snapshot()
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
        if self.role == TenantRole::Follower {
            return Err(self.not_owner());
        }
        let buffered = self.gauge.load(Ordering::Relaxed);
        if buffered >= self.max_buffer_bytes {
            self.counters
                .refused
                .increment(request.reports.len() as u64);
            self.stats
                .add(|c| c.refused += request.reports.len() as i64);
            return Err(Error::Overloaded(format!(
                "{buffered} bytes are waiting to be written to the object store (limit {}); \
                 the store is slow or unreachable: retry later",
                self.max_buffer_bytes
            )));
        }
        if let Some(limit) = self.wal.max_record_bytes() {
            let size = prost::Message::encoded_len(request);
            if size > limit {
                return Err(Error::TooLarge(format!(
                    "a request of {size} bytes is larger than one record of the stream may be \
                     ({limit} bytes: the NATS servers' max_payload); send fewer reports per request"
                )));
            }
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
                        wal::append_report(&mut payload, v.report);
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
                let published = alerts_to_proto(&alerts)?;
                position = self.wal.append(received_at, &payload)?;
                self.reports.push(batch, position);
                if alerts.num_rows() > 0 {
                    self.counters.alerts.increment(alerts.num_rows() as u64);
                    state.next_alert_id += alerts.num_rows() as i64;
                    self.hub.enqueue(position, published);
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
        self.stats.add(|c| {
            c.accepted += i64::from(accepted);
            c.duplicates += i64::from(duplicates);
            c.rejected += rejected.len() as i64;
        });
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
    /// The last WAL position every table has committed: records up to it may be deleted. A table
    /// holding buffered rows needs the records from its oldest buffered one; a table with an empty
    /// buffer has committed every record appended so far.
    pub(crate) fn safe_wal_position(&self) -> WalPosition {
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

    /// Flushes the tenant's tables once (reports before their rollup, which is derived from what
    /// the reports flush wrote), deletes the WAL records every table has committed, and evicts
    /// old dedupe keys; returns the rows written. Stops at the first error (the unflushed rows
    /// stay buffered).
    ///
    /// A follower writes nothing but its audit events: it reads the owner's commits instead.
    pub async fn flush(&self) -> Result<usize> {
        if self.role == TenantRole::Follower {
            self.follow_refresh().await?;
            let events = self.flush_alert_events().await? + self.flush_ingest_stats().await?;
            return Ok(events + self.audit.flush(&self.lake, &self.wal_app_id).await?.rows);
        }
        let mut rows = 0;
        let mut committed = false;
        // Rows of records not yet durable wait for the next flush (or forever, if the log failed).
        let durable = self.wal.durable_position();
        for kind in [TableKind::Reports, TableKind::Alerts, TableKind::Hourly] {
            let outcome = self
                .table(kind)
                .flush_upto(&self.lake, &self.wal_app_id, durable)
                .await?;
            rows += outcome.rows;
            metrics::counter!(
                "vigie_flushed_rows_total",
                "tenant" => self.name.to_string(),
                "table" => kind.name()
            )
            .increment(outcome.rows as u64);
            committed |= outcome.wal_position.is_some();
            if kind == TableKind::Reports && outcome.rows > 0 {
                self.roll_up(&outcome.batches, outcome.wal_position.unwrap_or(0))?;
            }
        }
        if committed {
            self.wal.truncate(self.safe_wal_position()).await?;
        }
        // Any node records alert events: this commits a failed one again, and reads the others'.
        rows += self.flush_alert_events().await?;
        rows += self.flush_ingest_stats().await?;
        rows += self.audit.flush(&self.lake, &self.wal_app_id).await?.rows;
        self.state.lock().dedupe.evict(self.dedupe_window_micros);
        self.log_alerts_raised();
        Ok(rows)
    }

    /// Commits the buffered audit events, if any (they stay buffered when it fails).
    pub async fn flush_audit(&self) -> Result<()> {
        if self.audit.buffered().0 > 0 {
            self.audit.flush(&self.lake, &self.wal_app_id).await?;
        }
        Ok(())
    }

    /// Buffers the hourly rollup of reports `batches` (logged up to WAL `position`): the one
    /// place the rollup is derived from reports, at flush and at replay.
    pub(crate) fn roll_up(&self, batches: &[RecordBatch], position: WalPosition) -> Result<()> {
        self.hourly.push(rollup::hourly(batches)?, position);
        Ok(())
    }

    /// Logs each rule's alert count when it changed since the last time.
    fn log_alerts_raised(&self) {
        let raised: u64 = self.rules.rules().iter().map(|r| r.raised()).sum();
        if self.logged_alerts.swap(raised, Ordering::Relaxed) != raised {
            let counts: Vec<String> = self
                .rules
                .rules()
                .iter()
                .map(|r| format!("{}={}", r.name, r.raised()))
                .collect();
            info!(tenant = %self.name, rules = %counts.join(" "), "alerts raised since start");
        }
    }
}
