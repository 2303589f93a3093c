//! The write-ahead log: an accepted report is on disk, fsynced, before its `WriteResponse` leaves.
//!
//! ```text
//! Tenant::write ─ append(frame) ─▶ queue ─▶ writer thread: write all queued frames, one fsync
//!      └─ sync(position).await ◀── durable watermark ──────────┘   (group commit)
//! flush commits Delta with txn(app_id, position) ─▶ truncate(position): delete covered segments
//! start: replay the records after the position the last Delta commit recorded
//! ```
//! Rooms: this module holds the [`Wal`] trait (the seam: [`LocalWal`] on disk, [`StreamWal`] on
//! a replicated NATS JetStream stream, [`VolatileWal`] for `--wal off`) and the record payload; `segment` holds the on-disk format (frame encode
//! and decode side by side, documented there with its version); `local` the segment files, the
//! writer thread and recycling; `stream` the JetStream log, its fencing and its retries.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;
use tokio::sync::watch;
use vigie_proto::v1::{DroneReport, WriteRequest};

use crate::{Error, Result};

mod local;
mod segment;
mod stream;

pub(crate) use local::{LocalWal, LocalWalArgs};
pub(crate) use stream::{StreamTail, StreamWal, StreamWalArgs};

/// Position of a record in the log: 1 for the first record ever, then +1 per record.
pub(crate) type WalPosition = u64;

/// Called by the WAL with the highest durable position, right after it becomes durable (on the
/// thread that made it so: keep it short and non-blocking).
pub(crate) type DurableListener = Box<dyn Fn(WalPosition) + Send + Sync>;

/// One record read back at start.
#[derive(Debug, Clone)]
pub(crate) struct WalRecord {
    /// Its position.
    pub position: WalPosition,
    /// When the server received it (µs since the epoch).
    pub received_at: i64,
    /// The encoded accepted reports (a `vigie.v1.WriteRequest`).
    pub payload: Bytes,
}

/// A log that makes appended records durable in position order.
#[async_trait]
pub(crate) trait Wal: Send + Sync + fmt::Debug {
    /// Queues a record and returns its position; it is durable once [`Wal::sync`] returns for it.
    /// Call in the same critical section that orders the records' effects.
    fn append(&self, received_at: i64, payload: &[u8]) -> Result<WalPosition>;
    /// Whether appended payloads are kept (read back at start). A log that drops them lets the
    /// writer skip encoding them.
    fn keeps_payloads(&self) -> bool {
        true
    }
    /// The largest payload one record may hold, if the log has a limit (a NATS message's
    /// `max_payload`); a request larger than it is refused before anything is deduplicated.
    fn max_record_bytes(&self) -> Option<usize> {
        None
    }
    /// Why the log refuses appends for good (fenced by another owner, the stream lost), if it
    /// does.
    fn failed(&self) -> Option<Arc<str>> {
        None
    }
    /// The position of the last appended record (0 if none).
    fn last_position(&self) -> WalPosition;
    /// Every record up to this position is durable.
    fn durable_position(&self) -> WalPosition;
    /// Installs the function told of each new durable position, so that work waiting for
    /// durability (publishing alerts) starts at once rather than when a waiting task is next
    /// scheduled. A log whose records are durable when appended never calls it: check
    /// [`Wal::durable_position`] after appending.
    fn set_listener(&self, listener: DurableListener);
    /// Waits until every record up to `position` is durable.
    async fn sync(&self, position: WalPosition) -> Result<()>;
    /// Forgets the records up to `position` (they are committed elsewhere).
    async fn truncate(&self, position: WalPosition) -> Result<()>;
}

/// No log at all: positions are counted but nothing is written. Acknowledged reports that are not
/// yet flushed are lost in a crash. For benchmarks and throwaway setups only.
#[derive(Debug, Default)]
pub(crate) struct VolatileWal {
    last: AtomicU64,
}

impl VolatileWal {
    /// A log whose next position follows `after`.
    pub(crate) fn new(after: WalPosition) -> Self {
        Self {
            last: AtomicU64::new(after),
        }
    }
}

#[async_trait]
impl Wal for VolatileWal {
    fn append(&self, _received_at: i64, _payload: &[u8]) -> Result<WalPosition> {
        Ok(self.last.fetch_add(1, Ordering::SeqCst) + 1)
    }
    fn keeps_payloads(&self) -> bool {
        false
    }
    fn last_position(&self) -> WalPosition {
        self.last.load(Ordering::SeqCst)
    }
    fn durable_position(&self) -> WalPosition {
        self.last_position()
    }
    fn set_listener(&self, _listener: DurableListener) {}
    async fn sync(&self, _position: WalPosition) -> Result<()> {
        Ok(())
    }
    async fn truncate(&self, _position: WalPosition) -> Result<()> {
        Ok(())
    }
}

/// Waits until `durable` reaches `position`, or fails with the error a log's writer published
/// in `progress` (the local writer thread's, the stream publisher's); `writer` names it when it
/// is gone.
pub(crate) async fn wait_durable(
    progress: &watch::Sender<Option<Arc<str>>>,
    durable: &AtomicU64,
    position: WalPosition,
    writer: &str,
) -> Result<()> {
    let is_durable = || durable.load(Ordering::SeqCst) >= position;
    let mut rx = progress.subscribe();
    let error = rx
        .wait_for(|error| is_durable() || error.is_some())
        .await
        .map_err(|_| Error::Wal(format!("{writer} stopped")))?;
    match &*error {
        Some(e) if !is_durable() => Err(Error::Wal(e.to_string())),
        _ => Ok(()),
    }
}

/// Appends `report` to a record payload. A payload is the protobuf encoding of a
/// `vigie.v1.WriteRequest` holding the accepted reports of one request (field 1, repeated): the
/// wire message itself, so a record needs no schema of its own and a newer server reads any
/// older record the protobuf way (unknown fields skipped, missing ones default).
pub(crate) fn append_report(payload: &mut Vec<u8>, report: &DroneReport) {
    prost::encoding::message::encode(1, report, payload);
}

impl WalRecord {
    /// The accepted reports of this record.
    pub(crate) fn request(&self) -> Result<WriteRequest> {
        WriteRequest::decode(self.payload.as_ref()).map_err(|e| {
            Error::Corrupt(format!(
                "WAL record {} is not a WriteRequest: {e}",
                self.position
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn volatile_counts_positions() {
        let wal = VolatileWal::new(7);
        assert_eq!(wal.append(0, b"x").unwrap(), 8);
        wal.sync(8).await.unwrap();
        assert_eq!(wal.last_position(), 8);
    }
}
