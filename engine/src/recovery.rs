//! Opening a tenant after a start or a crash: WAL positions the Delta commits cover, the dedupe
//! index and the alert id rebuilt from the stored tables, and the WAL replayed into the buffers.
//!
//! ```text
//! Delta txn (vigie-wal-<writer id>) per table ─▶ committed WAL position of each table
//! LocalWal::open(after: the smallest) ─▶ records to replay
//! reports files within the dedupe window ─▶ DedupeIndex; max(alerts.id) + 1 ─▶ next alert id
//! replay: reports after the reports commit, alerts after the alerts commit, rollup in between
//! ```

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use datafusion::prelude::col;
use futures::TryStreamExt;
use parking_lot::Mutex;
use tracing::info;
use vigie_proto::v1::DroneReport;

use crate::alert::{AlertHub, RuleSet};
use crate::alert_events::AlertEventFeed;
use crate::args::{TenantSettings, WalMode, rules_for, window_micros};
use crate::dedupe::DedupeIndex;
use crate::follow::FollowerTail;
use crate::ingest_stats::IngestStats;
use crate::report::{ReportBatchBuilder, validate};
use crate::schema::{MICROS_PER_DAY, TableKind};
use crate::table::{LiveTable, read_files};
use crate::tenant::{Tenant, TenantCounters, TenantRole, WriteState};
use crate::wal::{
    LocalWal, LocalWalArgs, StreamWal, StreamWalArgs, VolatileWal, Wal, WalPosition, WalRecord,
};
use crate::{Engine, Error, Result};

impl Tenant {
    /// Opens a tenant's tables (creating them when missing), rebuilds its dedupe index and
    /// alert id from the stored tables, and puts back into the buffers what its WAL holds that
    /// no commit covers.
    /// A follower opens the tables only: it has no log, dedupes nothing and replays nothing.
    pub(crate) async fn open(
        engine: &Engine,
        settings: TenantSettings,
        role: TenantRole,
    ) -> Result<Tenant> {
        let args = &engine.args;
        let rules = rules_for(&args.alert_rules, &settings.alert_rules);
        let name = settings.name.clone();
        let open = |kind| LiveTable::open(&args.lake, &name, kind, engine.gauge.clone());
        let reports = Arc::new(open(TableKind::Reports).await?);
        let alerts = Arc::new(open(TableKind::Alerts).await?);
        let hourly = Arc::new(open(TableKind::Hourly).await?);
        let audit = Arc::new(open(TableKind::Audit).await?);
        let alert_events = Arc::new(open(TableKind::AlertEvents).await?);
        let ingest_stats = Arc::new(open(TableKind::IngestStats).await?);
        let wal_app_id = format!("vigie-wal-{}", engine.writer_id);
        let reports_committed = reports.committed_wal_position(&wal_app_id).await?;
        let alerts_committed = alerts.committed_wal_position(&wal_app_id).await?;
        let hourly_committed = hourly.committed_wal_position(&wal_app_id).await?;
        let committed = reports_committed
            .min(alerts_committed)
            .min(hourly_committed);
        let (wal, replay): (Box<dyn Wal>, Vec<WalRecord>) = match &args.wal {
            _ if role == TenantRole::Follower => {
                (Box::new(VolatileWal::new(committed)), Vec::new())
            }
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
            WalMode::Stream(settings) => {
                let context = engine.jetstream.clone().ok_or_else(|| {
                    Error::InvalidConfig("the engine has no JetStream connection".into())
                })?;
                let (wal, replay) = StreamWal::open(StreamWalArgs {
                    context,
                    tenant: name.clone(),
                    prefix: settings.prefix.clone(),
                    replicas: settings.replicas,
                    publish_timeout: settings.publish_timeout,
                    after: committed,
                })
                .await?;
                (Box::new(wal), replay)
            }
        };
        let mut tenant = Tenant {
            name: name.clone(),
            role,
            owner: parking_lot::RwLock::new(
                (role == TenantRole::Owner)
                    .then(|| engine.node().cloned())
                    .flatten(),
            ),
            reports,
            alerts,
            hourly,
            audit,
            alert_feed: AlertEventFeed::new(
                engine.alert_event_sender(&name),
                &alert_events.snapshot().files,
            ),
            alert_events,
            ingest_stats,
            stats: IngestStats::new(
                engine
                    .node()
                    .map_or_else(|| engine.writer_id.clone(), |n| n.id.clone()),
            ),
            lake: args.lake.clone(),
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
            dedupe_window_micros: window_micros(args.dedupe_window),
            flush_now: engine.flush_now.clone(),
            gauge: engine.gauge.clone(),
            max_buffer_bytes: args.max_buffer_bytes,
            counters: TenantCounters::new(&name),
            tail: None,
            retention: settings.retention,
            settings,
        };
        if role == TenantRole::Follower {
            if let (WalMode::Stream(settings), Some(context)) = (&args.wal, &engine.jetstream) {
                for (table, covered) in [
                    (&tenant.reports, reports_committed),
                    (&tenant.alerts, alerts_committed),
                    (&tenant.hourly, hourly_committed),
                ] {
                    table.follow(&tenant.wal_app_id, covered);
                }
                tenant.tail = Some(FollowerTail::new(
                    context.clone(),
                    settings.prefix.clone(),
                    reports_committed.min(alerts_committed),
                ));
            }
            info!(tenant = %name, "following the tenant (another node owns its writes)");
            return Ok(tenant);
        }
        tenant.rebuild_dedupe().await?;
        let stored_alerts = tenant.max_alert_id().await?;
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
            // Every report of a record was accepted when it was logged.
            let batch = logged_batch(&record, |report, time_micros| {
                state
                    .dedupe
                    .insert(&report.drone_id, report.seq, time_micros);
            })?;
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
                self.roll_up(&[batch], record.position)?;
            }
        }
        info!(tenant = %self.name, rows, alerts = raised, "replayed the WAL into the buffers");
        Ok(())
    }

    /// The largest stored alert id (0 if none).
    pub(crate) async fn max_alert_id(&self) -> Result<i64> {
        let snapshot = self.alerts.snapshot();
        if snapshot.files.is_empty() {
            return Ok(0);
        }
        let batches = read_files(&self.lake, snapshot.files.iter())
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
    async fn rebuild_dedupe(&self) -> Result<()> {
        let window_micros = self.dedupe_window_micros;
        let snapshot = self.reports.snapshot();
        let Some(newest_day) = snapshot.files.iter().map(|f| f.day).max() else {
            return Ok(());
        };
        let window_days = (window_micros / MICROS_PER_DAY + 1) as i32;
        let recent = snapshot
            .files
            .iter()
            .filter(|f| f.day >= newest_day - window_days);
        let mut stream = read_files(&self.lake, recent)
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

/// The id of this WAL directory's writer, made once and kept in `<dir>/writer-id`: Delta commits
/// record WAL positions under it, so several servers (each with its own WAL) can share a table.
pub(crate) fn writer_id(dir: &std::path::Path) -> Result<String> {
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

/// The reports of logged `record` as one batch, each validated again (a record holding an
/// invalid report is corrupt), `each` seeing every report with its time in microseconds.
pub(crate) fn logged_batch(
    record: &WalRecord,
    mut each: impl FnMut(&DroneReport, i64),
) -> Result<RecordBatch> {
    let request = record.request()?;
    let mut builder = ReportBatchBuilder::with_capacity(request.reports.len());
    for report in &request.reports {
        let v = validate(report).map_err(|reason| {
            Error::Corrupt(format!(
                "log record {} holds an invalid report: {reason}",
                record.position
            ))
        })?;
        each(report, v.time_micros);
        builder.append(&v, record.received_at);
    }
    builder.finish()
}
