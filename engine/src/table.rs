//! A live table: the committed Delta snapshot plus the not-yet-flushed buffer, read as one.
//!
//! ```text
//! push(batch) ──▶ buffer chunks [c7 c8 c9]           snapshot() ─▶ (Delta files @v12, [c7 c8 c9])
//!                     │ flush(): write c7..c9 as Parquet, commit v13
//!                     ▼ then, under one lock: files ← v13, drop c7..c9
//! ```
//! A query takes [`LiveTable::snapshot`] under the same lock that a flush uses to swap the committed
//! files and drop the flushed chunks, so it sees every row exactly once: either in the buffer
//! (before the swap) or in the Delta files (after it), never both, never neither.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use chrono::NaiveDate;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use deltalake::DeltaTable;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructType, Transaction};
use deltalake::logstore::{StorageConfig, default_logstore};
use deltalake::protocol::SaveMode;
use futures::TryStreamExt;
use object_store::path::Path;
use parking_lot::RwLock;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tracing::{debug, info, warn};

use crate::schema::{DAY_COLUMN, TableKind};
use crate::store::{Lake, TablePath, TenantName, table_path};
use crate::wal::WalPosition;
use crate::{Error, Result};

/// One Parquet file of a committed Delta version.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// Path inside the lake's `root_store`.
    pub path: Path,
    /// Size in bytes.
    pub size: u64,
    /// The file's `day` partition (days since the Unix epoch).
    pub day: i32,
    /// Row count from the Delta statistics, when recorded.
    pub num_rows: Option<usize>,
}

/// What a query reads: the files of one Delta version and the buffer as it was at that version.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    /// The table's full schema (partition column `day` last).
    pub schema: SchemaRef,
    /// The Delta version the files belong to (`None` before the table's first commit).
    pub version: Option<u64>,
    /// The committed files.
    pub files: Arc<[DataFile]>,
    /// The buffered rows not in `files`.
    pub buffered: Vec<RecordBatch>,
}

#[derive(Debug)]
struct Chunk {
    id: u64,
    batch: RecordBatch,
    /// WAL position of the record the rows came from (0: not logged).
    wal_position: WalPosition,
}

#[derive(Debug)]
struct State {
    version: Option<u64>,
    files: Arc<[DataFile]>,
    chunks: VecDeque<Chunk>,
    next_chunk: u64,
    buffered_rows: usize,
    buffered_bytes: usize,
    /// A follower's table: the Delta transaction id of the owners' commits, and the WAL
    /// position its files cover (the buffer never holds rows of records up to it).
    following: Option<Arc<str>>,
    covered: WalPosition,
}

/// One table of one tenant: Delta on the object store plus its in-memory buffer.
#[derive(Debug)]
pub struct LiveTable {
    kind: TableKind,
    tenant: TenantName,
    state: RwLock<State>,
    /// The Delta table handle at the last commit; held by the one flush in progress.
    delta: tokio::sync::Mutex<DeltaTable>,
    /// Bytes buffered by every table of the engine, for the memory limit.
    gauge: Arc<AtomicUsize>,
}

/// How many rows one flush committed, and at which version.
#[derive(Debug, Clone, PartialEq)]
pub struct FlushOutcome {
    /// The rows committed (shared with the buffer they came from: no copy).
    pub batches: Vec<RecordBatch>,
    /// Rows written.
    pub rows: usize,
    /// The Delta version committed (unchanged when nothing was buffered).
    pub version: Option<u64>,
    /// The WAL position the commit covers (records up to it are in Delta), if it covers any.
    pub wal_position: Option<WalPosition>,
}

impl LiveTable {
    /// Opens the table, creating an empty Delta table (partitioned by `day`) when none exists.
    pub async fn open(
        lake: &Lake,
        tenant: &TenantName,
        kind: TableKind,
        gauge: Arc<AtomicUsize>,
    ) -> Result<Self> {
        let path = table_path(tenant, kind);
        let delta = open_or_create_delta(lake, &path, kind).await?;
        let files = list_files(lake, &path, &delta)?;
        let version = delta.version();
        info!(
            tenant = %tenant, table = kind.name(), ?version, files = files.len(),
            "opened table"
        );
        Ok(Self {
            kind,
            tenant: tenant.clone(),
            state: RwLock::new(State {
                version,
                files,
                chunks: VecDeque::new(),
                next_chunk: 0,
                buffered_rows: 0,
                buffered_bytes: 0,
                following: None,
                covered: 0,
            }),
            delta: tokio::sync::Mutex::new(delta),
            gauge,
        })
    }

    /// The last WAL position a commit of `app_id` recorded (0 if none): records up to it are
    /// already in Delta and must not be replayed.
    pub async fn committed_wal_position(&self, app_id: &str) -> Result<WalPosition> {
        txn_position(&*self.delta.lock().await, app_id).await
    }

    /// Which table this is.
    pub fn kind(&self) -> TableKind {
        self.kind
    }

    /// Appends a batch of the table's schema to the buffer; visible to the next snapshot.
    ///
    /// `wal_position` is the WAL record the rows came from; positions must not decrease from one
    /// push to the next (the caller pushes in the critical section that appends to the WAL).
    pub fn push(&self, batch: RecordBatch, wal_position: WalPosition) {
        if batch.num_rows() == 0 {
            return;
        }
        debug_assert_eq!(batch.schema(), self.kind.schema());
        self.push_locked(&mut self.state.write(), batch, wal_position);
    }

    fn push_locked(&self, s: &mut State, batch: RecordBatch, wal_position: WalPosition) {
        let bytes = batch.get_array_memory_size();
        debug_assert!(
            s.chunks
                .back()
                .is_none_or(|c| c.wal_position <= wal_position)
        );
        s.buffered_rows += batch.num_rows();
        s.buffered_bytes += bytes;
        self.gauge.fetch_add(bytes, Ordering::Relaxed);
        let id = s.next_chunk;
        s.next_chunk += 1;
        s.chunks.push_back(Chunk {
            id,
            batch,
            wal_position,
        });
    }

    /// The WAL position of the oldest buffered rows, if any are buffered.
    pub fn first_buffered_position(&self) -> Option<WalPosition> {
        self.state.read().chunks.front().map(|c| c.wal_position)
    }

    /// Rows and bytes held in the buffer.
    pub fn buffered(&self) -> (usize, usize) {
        let s = self.state.read();
        (s.buffered_rows, s.buffered_bytes)
    }

    /// A consistent view: committed files and buffered rows, each row in exactly one of them.
    pub fn snapshot(&self) -> TableSnapshot {
        let s = self.state.read();
        TableSnapshot {
            schema: self.kind.schema(),
            version: s.version,
            files: s.files.clone(),
            buffered: s.chunks.iter().map(|c| c.batch.clone()).collect(),
        }
    }

    /// Writes the buffered rows as Parquet and commits them as one Delta version, recording in the
    /// same commit (as Delta transaction `app_id`) the WAL position it covers.
    ///
    /// On error nothing is dropped from the buffer: the next flush retries the same rows.
    pub async fn flush(&self, lake: &Lake, app_id: &str) -> Result<FlushOutcome> {
        self.flush_upto(lake, app_id, WalPosition::MAX).await
    }

    /// [`LiveTable::flush`] of the rows whose WAL record is at or before `durable`: a row whose
    /// record is not durable (its write is not acknowledged, and may never be, when the log
    /// failed or another server fenced this one) is never committed.
    pub async fn flush_upto(
        &self,
        lake: &Lake,
        app_id: &str,
        durable: WalPosition,
    ) -> Result<FlushOutcome> {
        let mut delta = self.delta.lock().await;
        let idle = self.state.read().chunks.is_empty();
        if idle {
            // Nothing to write: catch up with commits made elsewhere instead (a flush does it as
            // part of its commit), so that an idle server does not keep reading files that
            // compaction or retention removed.
            self.refresh_locked(lake, &mut delta).await?;
        }
        let (last_id, wal_position, batches) = {
            let s = self.state.read();
            let ready = s
                .chunks
                .iter()
                .take_while(|c| c.wal_position <= durable)
                .count();
            match s.chunks.range(..ready).next_back() {
                None => {
                    return Ok(FlushOutcome {
                        batches: Vec::new(),
                        rows: 0,
                        version: s.version,
                        wal_position: None,
                    });
                }
                Some(last) => (
                    last.id,
                    last.wal_position,
                    s.chunks
                        .range(..ready)
                        .map(|c| c.batch.clone())
                        .collect::<Vec<_>>(),
                ),
            }
        };
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        let mut commit = CommitProperties::default();
        if wal_position > 0 {
            commit = commit.with_application_transaction(Transaction::new(
                app_id,
                i64::try_from(wal_position).unwrap_or(i64::MAX),
            ));
        }
        let written = delta
            .clone()
            .write(batches.clone())
            .with_save_mode(SaveMode::Append)
            .with_partition_columns([DAY_COLUMN])
            .with_writer_properties(writer_properties(self.kind))
            .with_commit_properties(commit)
            .await;
        let written = match written {
            Ok(written) => written,
            Err(e) => {
                // A commit made elsewhere may conflict with ours (another server's metadata: two
                // servers creating a table at once both commit one). Retried from the same
                // snapshot, the flush would conflict again forever: the next attempt starts from
                // the table as it is now.
                if let Err(refresh) = self.refresh_locked(lake, &mut delta).await {
                    warn!(tenant = %self.tenant, table = self.kind.name(), error = %refresh, "cannot refresh the table after a failed commit");
                } else if let Err(drop) = self.drop_covered(&delta, app_id).await {
                    warn!(tenant = %self.tenant, table = self.kind.name(), error = %drop, "cannot read the table's committed WAL position");
                }
                return Err(e.into());
            }
        };
        let path = table_path(&self.tenant, self.kind);
        let files = list_files(lake, &path, &written)?;
        let version = written.version();
        {
            let mut s = self.state.write();
            s.version = version;
            s.files = files;
            self.drop_front(&mut s, |c| c.id <= last_id);
        }
        *delta = written;
        debug!(tenant = %self.tenant, table = self.kind.name(), rows, ?version, "flushed");
        Ok(FlushOutcome {
            batches,
            rows,
            version,
            wal_position: (wal_position > 0).then_some(wal_position),
        })
    }
}

impl LiveTable {
    /// Removes the oldest chunks while `drop` holds for them (committed ones), keeping the row,
    /// byte and engine-wide memory counts in step; returns the rows removed.
    fn drop_front(&self, s: &mut State, drop: impl Fn(&Chunk) -> bool) -> usize {
        let mut rows = 0;
        while s.chunks.front().is_some_and(&drop) {
            let c = s.chunks.pop_front().expect("checked non-empty");
            let bytes = c.batch.get_array_memory_size();
            rows += c.batch.num_rows();
            s.buffered_rows -= c.batch.num_rows();
            s.buffered_bytes -= bytes;
            self.gauge.fetch_sub(bytes, Ordering::Relaxed);
        }
        rows
    }

    /// Drops the buffered rows of logged records up to `covered` (a commit holds them); returns
    /// how many.
    fn drop_logged_up_to(&self, s: &mut State, covered: WalPosition) -> usize {
        self.drop_front(s, |c| c.wal_position > 0 && c.wal_position <= covered)
    }

    /// Drops the buffered rows that a commit under `app_id` already covers. Only another owner
    /// of the same log makes such a commit (the servers of one JetStream stream share the id):
    /// its commit conflicts with ours (Delta's concurrent-transaction check), and after it the
    /// rows up to its position are in Delta once, so ours must not be written again.
    async fn drop_covered(&self, delta: &DeltaTable, app_id: &str) -> Result<()> {
        let covered = txn_position(delta, app_id).await?;
        let dropped = self.drop_logged_up_to(&mut self.state.write(), covered);
        if dropped > 0 {
            warn!(tenant = %self.tenant, table = self.kind.name(), rows = dropped, covered, "buffered rows were committed by another owner of the log: dropped");
        }
        Ok(())
    }
}

impl LiveTable {
    /// The tenant the table belongs to.
    pub fn tenant(&self) -> &TenantName {
        &self.tenant
    }

    /// The Delta table as of the last commit or refresh, for maintenance (compaction,
    /// retention, vacuum) that commits on its own.
    pub async fn delta(&self) -> DeltaTable {
        self.delta.lock().await.clone()
    }

    /// Catches up with commits made elsewhere (compaction, retention, another process), so
    /// queries stop reading files those commits removed before vacuum deletes them. Returns
    /// whether the version changed.
    pub async fn refresh(&self, lake: &Lake) -> Result<bool> {
        let mut delta = self.delta.lock().await;
        self.refresh_locked(lake, &mut delta).await
    }

    async fn refresh_locked(&self, lake: &Lake, delta: &mut DeltaTable) -> Result<bool> {
        let before = delta.version();
        delta.update_incremental(None).await?;
        if delta.version() == before {
            return Ok(false);
        }
        let files = list_files(lake, &table_path(&self.tenant, self.kind), delta)?;
        let following = self.state.read().following.clone();
        let covered = match following {
            Some(app_id) => Some(txn_position(delta, &app_id).await?),
            None => None,
        };
        // Files and buffer change in one step: a snapshot never sees a row twice or not at all.
        let mut s = self.state.write();
        s.version = delta.version();
        s.files = files;
        if let Some(covered) = covered {
            s.covered = s.covered.max(covered);
            let covered = s.covered;
            self.drop_logged_up_to(&mut s, covered);
        }
        debug!(tenant = %self.tenant, table = self.kind.name(), version = ?s.version, "refreshed");
        Ok(true)
    }
}

/// The last WAL position a commit of `app_id` recorded in `delta` (0 if none).
async fn txn_position(delta: &DeltaTable, app_id: &str) -> Result<WalPosition> {
    let Ok(state) = delta.snapshot() else {
        return Ok(0);
    };
    let version = state
        .transaction_version(delta.log_store().as_ref(), app_id)
        .await?;
    Ok(version.map_or(0, |v| u64::try_from(v).unwrap_or(0)))
}

/// A follower's table: the files of the owner's commits, and the rows of the stream records
/// those commits do not cover yet (read from the tail of the stream), each row in exactly one.
impl LiveTable {
    /// Makes this a follower's table whose files cover WAL records up to `covered` under
    /// `app_id`: from now on each refresh drops the buffered rows the new commits cover.
    pub(crate) fn follow(&self, app_id: &str, covered: WalPosition) {
        let mut s = self.state.write();
        s.following = Some(app_id.into());
        s.covered = covered;
    }

    /// The WAL position the files cover, as last refreshed (a follower's table).
    pub(crate) fn covered(&self) -> WalPosition {
        self.state.read().covered
    }

    /// Buffers the rows of WAL record `wal_position` unless the files cover it already or it
    /// is buffered already.
    pub(crate) fn push_uncovered(&self, batch: RecordBatch, wal_position: WalPosition) {
        let mut s = self.state.write();
        // A record already buffered (read again) is not buffered twice.
        let newer = s
            .chunks
            .back()
            .is_none_or(|c| c.wal_position < wal_position);
        if wal_position > s.covered && newer && batch.num_rows() > 0 {
            self.push_locked(&mut s, batch, wal_position);
        }
    }
}

/// The Parquet settings of every file Vigie writes (flush and compaction alike): zstd, page statistics (page index), dictionaries, and a bloom filter on the citizen's name
/// (the "where was this person seen" question), so that a day left as one flushed file prunes as
/// well as a compacted one.
pub fn writer_properties(kind: TableKind) -> WriterProperties {
    let citizen = match kind {
        TableKind::Reports => Some(ColumnPath::from(vec![
            "citizens".to_string(),
            "list".to_string(),
            "element".to_string(),
            "name".to_string(),
        ])),
        TableKind::Alerts => Some(ColumnPath::from("citizen")),
        TableKind::Hourly | TableKind::Audit | TableKind::AlertEvents | TableKind::IngestStats => {
            None
        }
    };
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_dictionary_enabled(true);
    if let Some(citizen) = citizen {
        // Parquet folds each filter down to the distinct values it saw: a small flush gets a
        // small filter.
        builder = builder.set_column_bloom_filter_enabled(citizen, true);
    }
    for &(column, encoding) in plain_columns(kind) {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), encoding);
    }
    builder.build()
}

/// Columns of (nearly) distinct values, written without a dictionary. A dictionary of them is as
/// large as the data (it fills its 1 MB limit, then the writer falls back to plain pages), and a
/// reader must decode that whole dictionary page before any page of the chunk: a one-hour filter
/// that keeps 2 pages of 22 decoded 3 MB of dictionaries. Timestamps and ids are delta-encoded
/// (near-sorted: a few bits each); coordinates are split into byte streams, which zstd compresses
/// better than interleaved doubles. Both encodings are read by DuckDB, Spark, Trino and polars.
fn plain_columns(kind: TableKind) -> &'static [(&'static str, Encoding)] {
    const DELTA: Encoding = Encoding::DELTA_BINARY_PACKED;
    const SPLIT: Encoding = Encoding::BYTE_STREAM_SPLIT;
    match kind {
        TableKind::Reports => &[
            ("time", DELTA),
            ("received_at", DELTA),
            ("latitude", SPLIT),
            ("longitude", SPLIT),
        ],
        TableKind::Alerts => &[
            ("id", DELTA),
            ("time", DELTA),
            ("raised_at", DELTA),
            ("latitude", SPLIT),
            ("longitude", SPLIT),
        ],
        TableKind::Audit => &[("time", DELTA)],
        TableKind::AlertEvents => &[("time", DELTA), ("alert_id", DELTA)],
        TableKind::Hourly | TableKind::IngestStats => &[],
    }
}

async fn open_or_create_delta(
    lake: &Lake,
    path: &TablePath,
    kind: TableKind,
) -> Result<DeltaTable> {
    let url = lake.table_url(path)?;
    let log_store = default_logstore(
        lake.table_store(path),
        lake.root_store.clone(),
        &url,
        &StorageConfig::default(),
    );
    let mut table = DeltaTable::new(log_store);
    // A table exists once its log holds a commit; ask the store rather than parse load errors,
    // which differ between stores.
    let log = Path::from("_delta_log");
    let exists = lake
        .table_store(path)
        .list(Some(&log))
        .try_next()
        .await?
        .is_some();
    if exists {
        table.load().await?;
        check_schema(&table, kind)?;
        return Ok(table);
    }
    let schema: StructType = kind.schema().as_ref().try_into_kernel()?;
    let created = table
        .create()
        .with_table_name(kind.name())
        .with_columns(schema.fields().cloned())
        .with_partition_columns([DAY_COLUMN])
        .with_save_mode(SaveMode::Ignore)
        .await?;
    info!(table = kind.name(), %url, "created Delta table");
    Ok(created)
}

fn check_schema(table: &DeltaTable, kind: TableKind) -> Result<()> {
    let stored = table.snapshot()?.schema();
    let expected: StructType = kind.schema().as_ref().try_into_kernel()?;
    let stored_names: Vec<_> = stored.fields().map(|f| f.name().clone()).collect();
    let expected_names: Vec<_> = expected.fields().map(|f| f.name().clone()).collect();
    if stored_names != expected_names {
        return Err(Error::Corrupt(format!(
            "table {} has columns {stored_names:?}, expected {expected_names:?}",
            kind.name()
        )));
    }
    Ok(())
}

pub(crate) fn list_files(
    lake: &Lake,
    path: &TablePath,
    table: &DeltaTable,
) -> Result<Arc<[DataFile]>> {
    let Ok(state) = table.snapshot() else {
        return Ok(Arc::from(Vec::new()));
    };
    let root = lake.table_root(path);
    let mut files = Vec::with_capacity(state.log_data().num_files());
    for f in state.log_data().iter() {
        let rel = f.object_store_path();
        let day = f
            .partition_values_map()
            .get(DAY_COLUMN)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::Corrupt(format!("file {rel} has no {DAY_COLUMN} partition")))?;
        let date = NaiveDate::parse_from_str(&day, "%Y-%m-%d").map_err(|e| {
            Error::Corrupt(format!(
                "file {rel} has partition {DAY_COLUMN}={day:?}: {e}"
            ))
        })?;
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
        files.push(DataFile {
            path: root.parts().chain(rel.parts()).collect(),
            size: u64::try_from(f.size()).unwrap_or(0),
            day: (date - epoch).num_days() as i32,
            num_rows: f.num_records(),
        });
    }
    Ok(Arc::from(files))
}

/// The rows of committed `files` (without the partition column), read with plain Arrow types.
pub(crate) async fn read_files(
    lake: &Lake,
    files: impl Iterator<Item = &DataFile>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, audit_batch};

    fn rows(n: usize) -> RecordBatch {
        let events: Vec<_> = (0..n)
            .map(|_| AuditEvent::now("user:test", "admin", "query"))
            .collect();
        audit_batch(&events).unwrap()
    }

    fn total(table: &LiveTable) -> usize {
        let snapshot = table.snapshot();
        let files: usize = snapshot.files.iter().map(|f| f.num_rows.unwrap()).sum();
        files
            + snapshot
                .buffered
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>()
    }

    /// A follower's table counts every row of every record once, whether it read a record from
    /// the tail before or after the owner committed it.
    #[tokio::test]
    async fn a_follower_counts_each_record_once_across_the_owners_commits() {
        let lake = crate::testing::memory_lake();
        let tenant = TenantName::new("north").unwrap();
        let owner = LiveTable::open(&lake, &tenant, TableKind::Audit, Arc::default())
            .await
            .unwrap();
        let follower = LiveTable::open(&lake, &tenant, TableKind::Audit, Arc::default())
            .await
            .unwrap();
        follower.follow("log", 0);
        let mut read = 0;
        for position in 1..=12u64 {
            owner.push(rows(1), position);
            if position % 3 == 0 {
                owner.flush(&lake, "log").await.unwrap();
            }
            // The follower reads the tail on some rounds only, and refreshes on others.
            if position % 2 == 0 {
                for p in read + 1..=position {
                    follower.push_uncovered(rows(1), p);
                }
                read = position;
            }
            if position % 4 == 1 {
                follower.refresh(&lake).await.unwrap();
            }
            // Rows up to `covered` are in its files, the rows read after it in its buffer.
            let want = read.max(follower.covered()) as usize;
            assert_eq!(total(&follower), want, "position {position}");
        }
        follower.refresh(&lake).await.unwrap();
        assert_eq!(follower.covered(), 12);
        assert_eq!(total(&follower), 12);
    }
}
