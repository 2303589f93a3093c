//! A follower's view of a tenant another node owns (cluster mode): the owner's Delta commits
//! plus the tail of the tenant's stream, so that a report acknowledged by the owner is in the
//! next query on any node.
//!
//! ```text
//! query on a follower ─▶ Tenant::catch_up ─ stream bounds (first, last) ─ last ≤ cursor: done
//!    records before `first` purged past the cursor ─▶ refresh the tables (they are committed)
//!    read (cursor, last] ─▶ decode ─▶ reports buffer, alerts re-derived with the owner's ids
//!                                     (the rows of records a commit covers are left out)
//! flush interval ─▶ Tenant::follow_refresh ─▶ new commits replace the buffered rows they cover
//! ```
//! Read-your-writes: the owner acknowledges a write once its record is in the stream, so a
//! query starting after the acknowledgement finds it at or before `last`. The rollup
//! (`reports_hourly`) follows the owner's commits only, as it follows the reports by one flush
//! on the owner too.

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use async_nats::jetstream;
use tracing::debug;

use crate::recovery::logged_batch;
use crate::schema::TableKind;
use crate::tenant::Tenant;
use crate::wal::{StreamTail, WalPosition, WalRecord};
use crate::{Error, Result};

/// How many times a catch-up starts again when the owner purged records while it read.
const CATCH_UP_ATTEMPTS: usize = 3;

/// How far a follower read the tenant's stream.
#[derive(Debug)]
pub(crate) struct FollowerTail {
    context: jetstream::Context,
    prefix: String,
    cursor: tokio::sync::Mutex<Cursor>,
}

#[derive(Debug)]
struct Cursor {
    /// The stream, once an owner created it.
    stream: Option<StreamTail>,
    /// Records up to this one are applied (or covered by every table's commits).
    applied: WalPosition,
    /// The id the next re-derived alert gets; `None`: read it from the alerts table.
    next_alert_id: Option<i64>,
}

impl FollowerTail {
    /// A follower whose tables cover the records up to `applied`.
    pub(crate) fn new(context: jetstream::Context, prefix: String, applied: WalPosition) -> Self {
        Self {
            context,
            prefix,
            cursor: tokio::sync::Mutex::new(Cursor {
                stream: None,
                applied,
                next_alert_id: None,
            }),
        }
    }
}

impl Tenant {
    /// On a follower, reads what the owner appended to the stream since the last call, so that
    /// the next snapshot holds every report acknowledged so far; nothing on an owner.
    pub async fn catch_up(&self) -> Result<()> {
        let Some(tail) = &self.tail else {
            return Ok(());
        };
        let mut cursor = tail.cursor.lock().await;
        if cursor.stream.is_none() {
            cursor.stream = StreamTail::open(&tail.context, &tail.prefix, &self.name).await?;
        }
        let Some(stream) = cursor.stream.clone() else {
            // No owner ever wrote the tenant.
            return Ok(());
        };
        for _ in 0..CATCH_UP_ATTEMPTS {
            let (first, last) = stream.bounds().await?;
            if last <= cursor.applied {
                return Ok(());
            }
            if first > cursor.applied + 1 {
                // The owner committed and purged records this node did not read: its commits
                // hold them. Every table covers them or had no row of them (the owner purges
                // only what no table still buffers).
                self.refresh_tables().await?;
                if self.reports.covered() + 1 < first {
                    // The owner committed again in between: start over.
                    continue;
                }
                cursor.applied = first - 1;
                cursor.next_alert_id = None;
            }
            let (records, start) = stream.read(cursor.applied, last).await?;
            if start > cursor.applied + 1 {
                // Purged while reading: read the owner's commits first.
                continue;
            }
            let read = records.len();
            self.apply_tail(&mut cursor, records).await?;
            cursor.applied = last;
            metrics::counter!("vigie_follower_tail_records_total", "tenant" => self.name.to_string())
                .increment(read as u64);
            debug!(tenant = %self.name, read, last, "caught up with the stream");
            return Ok(());
        }
        Err(Error::Wal(format!(
            "tenant {}'s owner kept committing while this node read its stream: retry",
            self.name
        )))
    }

    /// On a follower, catches up with the owner's commits (the buffered rows they cover are
    /// dropped), so the tail this node read does not grow without bound.
    pub(crate) async fn follow_refresh(&self) -> Result<()> {
        let Some(tail) = &self.tail else {
            return self.refresh_tables().await;
        };
        let _cursor = tail.cursor.lock().await;
        self.refresh_tables().await
    }

    async fn refresh_tables(&self) -> Result<()> {
        for kind in [TableKind::Reports, TableKind::Alerts, TableKind::Hourly] {
            self.table(kind).refresh(&self.lake).await?;
        }
        Ok(())
    }

    /// Buffers the rows of `records` that the tables' commits do not cover: reports as they are,
    /// alerts re-derived in record order from the id after the last one stored, as the owner
    /// derived them. Everything is derived before anything is buffered, so a catch-up dropped
    /// half-way (its query cancelled) leaves the tables and the cursor as they were.
    async fn apply_tail(&self, cursor: &mut Cursor, records: Vec<WalRecord>) -> Result<()> {
        let alerts_covered = self.alerts.covered();
        let mut next_alert_id = cursor.next_alert_id;
        let mut staged = Vec::with_capacity(records.len());
        for record in records {
            let batch = logged_batch(&record, |_, _| {})
                .map_err(|e| Error::Corrupt(format!("tenant {}'s stream: {e}", self.name)))?;
            let alerts = if record.position <= alerts_covered {
                // Its alerts are stored: the next id is read again after them.
                next_alert_id = None;
                None
            } else {
                let next = match next_alert_id {
                    Some(next) => next,
                    None => self.last_alert_id().await? + 1,
                };
                let alerts = self.rules.evaluate(&batch, next, record.received_at)?;
                next_alert_id = Some(next + alerts.num_rows() as i64);
                Some(alerts)
            };
            staged.push((record.position, batch, alerts));
        }
        // No await from here on.
        for (position, batch, alerts) in staged {
            if let Some(alerts) = alerts {
                self.alerts.push_uncovered(alerts, position);
            }
            self.reports.push_uncovered(batch, position);
        }
        cursor.next_alert_id = next_alert_id;
        Ok(())
    }

    /// The largest alert id stored or buffered (0 if none).
    async fn last_alert_id(&self) -> Result<i64> {
        let mut last = self.max_alert_id().await?;
        for batch in self.alerts.snapshot().buffered {
            let ids = batch
                .column(0)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| Error::Corrupt("alerts.id is not Int64".into()))?;
            last = last.max(arrow::compute::max(ids).unwrap_or(0));
        }
        Ok(last)
    }
}
