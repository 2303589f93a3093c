//! The `ingest_stats` table: what ingest did, per hour of receipt and node — the reports
//! accepted, the duplicates and rejected ones (which no other table keeps), the writes refused
//! while overloaded, and the failed flushes — for the daily report's ingest health and for SQL.
//!
//! ```text
//! write path / flusher ─▶ IngestStats::add (in memory, per hour)
//! Tenant::flush, when an hour ended or every STATS_PERIOD (and at shutdown)
//!   ─▶ one row per pending hour ─▶ ingest_stats buffer ─▶ its own Delta commit
//! ```
//! Rows are **partial** (each commit adds a row per hour it saw): queries sum them
//! (`SELECT sum(duplicates) FROM ingest_stats WHERE hour >= …`). Counts are kept in memory up to
//! [`STATS_PERIOD_MICROS`]: a crash loses at most that much of the statistics (never a report).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arrow::array::{
    Date32Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use parking_lot::Mutex;

use crate::schema::{TableKind, day_of_micros, hour_of_micros};
use crate::{Result, Tenant};

/// The longest the counts stay in memory only, in µs (5 minutes).
pub const STATS_PERIOD_MICROS: i64 = 5 * 60 * 1_000_000;

/// One hour's counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) accepted: i64,
    pub(crate) duplicates: i64,
    pub(crate) rejected: i64,
    pub(crate) refused: i64,
    pub(crate) flush_failures: i64,
}

/// A tenant's counts not yet committed, by hour of receipt.
#[derive(Debug)]
pub(crate) struct IngestStats {
    node: String,
    pending: Mutex<BTreeMap<i64, Counts>>,
    /// When the counts were last staged for a commit (µs; 0: at the next flush).
    staged_at: AtomicI64,
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl IngestStats {
    /// Counts of this node (`node` names it in the rows).
    pub(crate) fn new(node: String) -> Self {
        Self {
            node,
            pending: Mutex::default(),
            staged_at: AtomicI64::new(now_micros()),
        }
    }

    /// Adds to the current hour's counts.
    pub(crate) fn add(&self, change: impl FnOnce(&mut Counts)) {
        let hour = hour_of_micros(now_micros());
        change(self.pending.lock().entry(hour).or_default());
    }

    /// Makes the next flush commit every pending count (at shutdown).
    pub(crate) fn stage_all_next(&self) {
        self.staged_at.store(0, Ordering::Relaxed);
    }

    /// The rows due for a commit, if a commit is due: when an hour ended or [`STATS_PERIOD_MICROS`]
    /// passed since the last staging, every pending hour (the current one's partial row too).
    fn take_due(&self, now: i64) -> Option<Vec<(i64, Counts)>> {
        let current_hour = hour_of_micros(now);
        let mut pending = self.pending.lock();
        let hour_ended = pending.keys().next().is_some_and(|h| *h < current_hour);
        let period = now - self.staged_at.load(Ordering::Relaxed) >= STATS_PERIOD_MICROS;
        if !hour_ended && !period {
            return None;
        }
        self.staged_at.store(now, Ordering::Relaxed);
        Some(std::mem::take(&mut *pending).into_iter().collect())
    }

    fn batch(&self, rows: &[(i64, Counts)]) -> Result<RecordBatch> {
        let n = rows.len();
        let mut hour = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut node = StringBuilder::with_capacity(n, n * self.node.len());
        let mut columns: [Int64Builder; 5] =
            std::array::from_fn(|_| Int64Builder::with_capacity(n));
        let mut day = Date32Builder::with_capacity(n);
        for (h, c) in rows {
            hour.append_value(*h);
            node.append_value(&self.node);
            for (builder, value) in columns.iter_mut().zip([
                c.accepted,
                c.duplicates,
                c.rejected,
                c.refused,
                c.flush_failures,
            ]) {
                builder.append_value(value);
            }
            day.append_value(day_of_micros(*h));
        }
        let mut arrays: Vec<arrow::array::ArrayRef> =
            vec![Arc::new(hour.finish()), Arc::new(node.finish())];
        arrays.extend(
            columns
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as arrow::array::ArrayRef),
        );
        arrays.push(Arc::new(day.finish()));
        Ok(RecordBatch::try_new(
            TableKind::IngestStats.schema(),
            arrays,
        )?)
    }
}

impl Tenant {
    /// Commits the ingest counts when due (and rows a failed commit left buffered); when due
    /// with nothing to write, catches up with other nodes' commits instead. Returns the rows
    /// written.
    pub(crate) async fn flush_ingest_stats(&self) -> Result<usize> {
        match self.stats.take_due(now_micros()) {
            Some(rows) if !rows.is_empty() => {
                self.ingest_stats.push(self.stats.batch(&rows)?, 0);
            }
            Some(_) => {}
            None if self.ingest_stats.buffered().0 == 0 => return Ok(0),
            None => {}
        }
        Ok(self
            .ingest_stats
            .flush(&self.lake, &self.wal_app_id)
            .await?
            .rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::MICROS_PER_HOUR;

    #[test]
    fn counts_are_due_when_an_hour_ends_or_the_period_passes() {
        let stats = IngestStats::new("n1".into());
        stats.add(|c| c.accepted += 10);
        stats.add(|c| c.duplicates += 2);
        let now = now_micros();
        assert_eq!(
            stats.take_due(now),
            None,
            "neither an hour nor the period passed"
        );
        let later = now + STATS_PERIOD_MICROS;
        let rows = stats.take_due(later).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].1.accepted, rows[0].1.duplicates), (10, 2));
        assert_eq!(stats.take_due(later + 1), None);
        stats.add(|c| c.rejected += 1);
        // An hour later: the pending hour has ended.
        let rows = stats.take_due(later + MICROS_PER_HOUR).unwrap();
        assert_eq!(rows[0].1.rejected, 1);
        let batch = stats.batch(&rows).unwrap();
        assert_eq!(batch.schema(), TableKind::IngestStats.schema());
        stats.stage_all_next();
        assert_eq!(
            stats.take_due(later + MICROS_PER_HOUR + 1),
            Some(Vec::new())
        );
    }
}
