//! Table maintenance: retention, compaction and vacuum, run in the background by `vigie serve`
//! and once by `vigie compact` (safe alongside a running server: each step is one Delta commit,
//! and Delta's optimistic concurrency lets it interleave with the server's flushes).
//!
//! ```text
//! retention: DELETE whole days older than the limit (partition-only: files are dropped, not
//!            rewritten)
//! compaction: each closed day (before today, UTC) with several small files ─▶ few large files,
//!            clustered (Z-order on drone_id, time for reports), zstd, page index, dictionaries,
//!            bloom filter on the citizen's name
//! vacuum:    files removed by earlier commits, once older than the safety interval, are deleted
//!            (queries and other servers may still read a removed file until then)
//! refresh:   the live table reads the new version's files
//! ```

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::optimize::OptimizeType;
use deltalake::{DeltaTable, FilterOp, FilterValue};
use tracing::info;

use crate::Result;
use crate::schema::{DAY_COLUMN, TableKind};
use crate::store::{Lake, TablePath, TenantName, table_path};
use crate::table::{DataFile, LiveTable, list_files, writer_properties};

/// What a maintenance run does.
#[derive(Debug, Clone)]
pub struct MaintenanceArgs {
    /// Size of the files compaction writes; a day is compacted while it has two files or more
    /// under half of it.
    pub target_file_bytes: u64,
    /// Whole days whose end is older than this are deleted; `None` keeps everything.
    pub retention: Option<Duration>,
    /// Removed files are deleted once their removal is older than this.
    pub vacuum_after: Duration,
    /// The current time: days before `now`'s UTC day are closed.
    pub now: DateTime<Utc>,
}

impl MaintenanceArgs {
    /// How often a server runs maintenance by default.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
    /// The size of the files compaction writes by default.
    pub const DEFAULT_TARGET_FILE_BYTES: u64 = 256 << 20;
    /// Smallest target file size (smaller files make queries open too many).
    pub const MIN_TARGET_FILE_BYTES: u64 = 1 << 20;
    /// How long removed files stay readable by default.
    pub const DEFAULT_VACUUM_AFTER: Duration = Duration::from_secs(3600);
    /// Shortest retention: whole days are deleted.
    pub const MIN_RETENTION: Duration = Duration::from_secs(86_400);
}

/// What a maintenance run did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Days deleted by retention.
    pub days_expired: Vec<NaiveDate>,
    /// Days rewritten by compaction.
    pub days_compacted: Vec<NaiveDate>,
    /// Files removed by compaction and retention (still on storage until vacuumed).
    pub files_removed: u64,
    /// Files written by compaction.
    pub files_added: u64,
    /// Files deleted from storage by vacuum.
    pub files_vacuumed: usize,
}

fn date_of(day: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date") + chrono::Duration::days(day.into())
}

/// The closed days worth compacting: two files or more under half the target size.
fn days_to_compact(files: &[DataFile], today: NaiveDate, target_file_bytes: u64) -> Vec<NaiveDate> {
    let mut small = std::collections::BTreeMap::<NaiveDate, usize>::new();
    for f in files {
        let day = date_of(f.day);
        if day < today && f.size < target_file_bytes / 2 {
            *small.entry(day).or_default() += 1;
        }
    }
    small
        .into_iter()
        .filter(|(_, n)| *n >= 2)
        .map(|(day, _)| day)
        .collect()
}

/// Runs retention, compaction and vacuum on `table`, then makes it read the result.
pub async fn maintain(
    lake: &Lake,
    table: &LiveTable,
    args: &MaintenanceArgs,
) -> Result<MaintenanceReport> {
    let kind = table.kind();
    let mut report = MaintenanceReport::default();
    let today = args.now.date_naive();
    let mut delta = table.delta().await;
    delta.update_incremental(None).await?;

    if let Some(retention) = args.retention {
        // A day is expired once its last instant is older than the limit.
        let horizon =
            args.now - chrono::Duration::from_std(retention).unwrap_or(chrono::TimeDelta::MAX);
        let first_kept = horizon.date_naive();
        let files = table.snapshot().files;
        let mut expired: Vec<NaiveDate> = files
            .iter()
            .map(|f| date_of(f.day))
            .filter(|d| *d < first_kept)
            .collect();
        expired.sort();
        expired.dedup();
        if !expired.is_empty() {
            let (deleted, metrics) = delta
                .clone()
                .delete()
                .with_predicate(format!("{DAY_COLUMN} < '{first_kept}'"))
                .await?;
            delta = deleted;
            report.files_removed += metrics.num_removed_files as u64;
            info!(
                table = kind.name(),
                ?expired,
                files = metrics.num_removed_files,
                "retention deleted days"
            );
            report.days_expired = expired;
        }
    }

    // The files to compact come from the very snapshot the rewrite commits against: a file a
    // concurrent flush adds meanwhile is neither read nor removed (it waits for the next run).
    delta.update_incremental(None).await?;
    let path = table_path(table.tenant(), kind);
    let files = list_files(lake, &path, &delta)?;
    for day in days_to_compact(&files, today, args.target_file_bytes) {
        let (rewritten, removed, added) = match kind {
            TableKind::Hourly => reaggregate_day(lake, &path, &delta, &files, day).await?,
            TableKind::Reports
            | TableKind::Alerts
            | TableKind::Audit
            | TableKind::AlertEvents
            | TableKind::IngestStats => {
                let value = day.to_string();
                let filters = [(
                    DAY_COLUMN,
                    FilterOp::Eq,
                    FilterValue::Scalar(value.as_str()),
                )];
                let optimize_type = if kind == TableKind::Reports {
                    OptimizeType::ZOrder(vec!["drone_id".into(), "time".into()])
                } else {
                    OptimizeType::Compact
                };
                let (optimized, metrics) = delta
                    .clone()
                    .optimize()
                    .with_type(optimize_type)
                    .with_filters(&filters)
                    .with_target_size(
                        NonZeroU64::new(args.target_file_bytes.max(1)).expect("at least 1"),
                    )
                    .with_writer_properties(writer_properties(kind))
                    .with_commit_properties(CommitProperties::default())
                    .await?;
                (
                    optimized,
                    metrics.num_files_removed,
                    metrics.num_files_added,
                )
            }
        };
        delta = rewritten;
        report.files_removed += removed;
        report.files_added += added;
        info!(table = kind.name(), %day, removed, added, "compacted day");
        report.days_compacted.push(day);
    }

    report.files_vacuumed = vacuum(&delta, args.vacuum_after).await?;
    table.refresh(lake).await?;
    Ok(report)
}

/// Compaction of a rollup day: its partial rows summed into one row per (hour, drone, cell),
/// replacing the day in one commit.
async fn reaggregate_day(
    lake: &Lake,
    path: &TablePath,
    delta: &DeltaTable,
    files: &[DataFile],
    day: NaiveDate,
) -> Result<(DeltaTable, u64, u64)> {
    use datafusion::functions_aggregate::expr_fn::{min, sum};
    use datafusion::prelude::{cast, col, lit};

    let day_files: Vec<&DataFile> = files.iter().filter(|f| date_of(f.day) == day).collect();
    let removed = day_files.len() as u64;
    let summed = crate::table::read_files(lake, day_files.into_iter())
        .await?
        .aggregate(
            vec![col("hour"), col("drone_id"), col("cell")],
            vec![
                sum(col("reports")).alias("reports"),
                sum(col("sightings")).alias("sightings"),
                sum(col("low_score_sightings")).alias("low_score_sightings"),
                min(col("min_score")).alias("min_score"),
            ],
        )?
        .with_column(
            DAY_COLUMN,
            cast(lit(day.to_string()), arrow::datatypes::DataType::Date32),
        )?
        .sort(vec![
            col("hour").sort(true, false),
            col("drone_id").sort(true, false),
            col("cell").sort(true, false),
        ])?
        .collect()
        .await?;
    // Back to the table's exact schema (names, order, nullability).
    let schema = TableKind::Hourly.schema();
    let batches = summed
        .into_iter()
        .map(|b| {
            let columns = schema
                .fields()
                .iter()
                .map(|f| {
                    let column = b.column_by_name(f.name()).ok_or_else(|| {
                        crate::Error::Corrupt(format!("rollup aggregate lacks {}", f.name()))
                    })?;
                    Ok(arrow::compute::cast(column, f.data_type())?)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(arrow::array::RecordBatch::try_new(schema.clone(), columns)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let table = delta
        .clone()
        .write(batches)
        .with_save_mode(deltalake::protocol::SaveMode::Overwrite)
        .with_replace_where(format!("{DAY_COLUMN} = '{day}'"))
        .with_partition_columns([DAY_COLUMN])
        .with_writer_properties(writer_properties(TableKind::Hourly))
        .await?;
    let added = list_files(lake, path, &table)?
        .iter()
        .filter(|f| date_of(f.day) == day)
        .count() as u64;
    Ok((table, removed, added))
}

/// Maintains every table of every tenant of `lake`, as `vigie compact` does without a server;
/// `tenant_retention` overrides `args.retention` per tenant.
pub async fn maintain_lake(
    lake: &Lake,
    args: &MaintenanceArgs,
    tenant_retention: &BTreeMap<TenantName, Duration>,
) -> Result<Vec<(TenantName, TableKind, MaintenanceReport)>> {
    let mut reports = Vec::new();
    for tenant in lake.tenants().await? {
        let args = &MaintenanceArgs {
            retention: tenant_retention.get(&tenant).copied().or(args.retention),
            ..args.clone()
        };
        for kind in TableKind::ALL {
            let gauge = Arc::new(AtomicUsize::new(0));
            let table = LiveTable::open(lake, &tenant, kind, gauge).await?;
            let report = maintain(lake, &table, args).await?;
            reports.push((tenant.clone(), kind, report));
        }
    }
    Ok(reports)
}

/// Deletes the files removed more than `after` ago; returns how many.
async fn vacuum(delta: &DeltaTable, after: Duration) -> Result<usize> {
    let retention = chrono::Duration::from_std(after).unwrap_or(chrono::TimeDelta::MAX);
    let (_, metrics) = delta
        .clone()
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .await?;
    Ok(metrics.files_deleted.len())
}
