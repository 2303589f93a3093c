//! [`LocalWal`]: segment files in one directory per tenant, a writer thread doing group commit
//! (one write + fsync for every record queued meanwhile), and segment recycling.
//!
//! Segments are recycled: a segment every Delta commit covers is renamed to `<…>.spare` (up to
//! [`MAX_SPARES`]) and becomes a later segment, overwritten from its start. Writing into an
//! allocated file does not change its size, so the fsync of an acknowledgement flushes data only
//! and does not wait for a filesystem journal commit (which on ext4 also waits for other files'
//! writes and for the discards of deleted files): this is what keeps the fsync tail short.
//! A torn or corrupt tail of the last segment (a crash mid-write) is cut off and reported; damage
//! anywhere else, or a gap between segments, stops the start with an error rather than replay
//! garbage.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::segment::{
    self, HEADER, SEGMENT_SUFFIX, SPARE_SUFFIX, count_frames, numbered, parse_segment,
};
use super::{DurableListener, Wal, WalPosition, WalRecord};
use crate::{Error, Result};

/// Covered segments kept for reuse, at most (beyond, they are deleted).
pub(crate) const MAX_SPARES: usize = 4;

/// A write + fsync slower than this is logged.
const SLOW_WRITE: std::time::Duration = std::time::Duration::from_millis(100);

/// What [`LocalWal::open`] needs.
#[derive(Debug, Clone)]
pub(crate) struct LocalWalArgs {
    /// Directory of the segments (created if missing).
    pub dir: PathBuf,
    /// Start a new segment once the current one holds this many bytes.
    pub segment_bytes: u64,
    /// How long the writer lets records gather before writing (0: write as soon as one arrives;
    /// records arriving during an fsync share the next one anyway).
    pub max_delay: Duration,
    /// Records up to this position are already committed: they are not returned for replay.
    pub after: WalPosition,
}

#[derive(Debug)]
struct Segment {
    last: WalPosition,
    path: PathBuf,
}

#[derive(Debug)]
struct Queue {
    frames: Vec<u8>,
    /// Position of the last queued frame.
    last: WalPosition,
    closed: bool,
    roll: bool,
}

struct Shared {
    dir: PathBuf,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Every record up to this position is durable. Set before the listener runs and before
    /// `progress` wakes the waiters: a writer that enqueues work for a position after the listener
    /// looked reads it here.
    durable_position: AtomicU64,
    /// Notified after each new durable position; holds the error that stopped the writer, if any.
    progress: watch::Sender<Option<Arc<str>>>,
    listener: std::sync::OnceLock<DurableListener>,
    /// Closed segments, oldest first.
    closed: Mutex<Vec<Segment>>,
    /// Files of covered segments, ready to become new segments.
    spares: Mutex<Vec<PathBuf>>,
    segment_bytes: u64,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("dir", &self.dir)
            .field("durable", &self.durable_position)
            .field("error", &*self.progress.borrow())
            .field("listener", &self.listener.get().is_some())
            .finish_non_exhaustive()
    }
}

/// A WAL in local files, with group commit on a dedicated writer thread.
#[derive(Debug)]
pub(crate) struct LocalWal {
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl LocalWal {
    /// Opens the log in `args.dir`, cutting off a torn tail, and returns the records after
    /// `args.after` for replay.
    pub(crate) fn open(args: LocalWalArgs) -> Result<(Self, Vec<WalRecord>)> {
        std::fs::create_dir_all(&args.dir).map_err(|e| io_error(&args.dir, "create", e))?;
        let mut paths: Vec<(WalPosition, PathBuf)> = Vec::new();
        let mut spares = Vec::new();
        for entry in std::fs::read_dir(&args.dir).map_err(|e| io_error(&args.dir, "list", e))? {
            let path = entry.map_err(|e| io_error(&args.dir, "list", e))?.path();
            match numbered(&path) {
                Some((first, SEGMENT_SUFFIX)) => paths.push((first, path)),
                Some((_, SPARE_SUFFIX)) => spares.push(path),
                _ => {}
            }
        }
        paths.sort();
        let mut replay = Vec::new();
        let mut closed: Vec<Segment> = Vec::new();
        let mut last = args.after;
        let count = paths.len();
        for (i, (first, path)) in paths.into_iter().enumerate() {
            if let Some(previous) = closed.last()
                && previous.last + 1 != first
            {
                return Err(Error::Corrupt(format!(
                    "WAL segment {} starts at record {first} but the segment before it ends at \
                     record {}: records are missing, so the log cannot be replayed safely",
                    path.display(),
                    previous.last
                )));
            }
            let data = std::fs::read(&path).map_err(|e| io_error(&path, "read", e))?;
            let (records, good_len, problem) = parse_segment(&data, first);
            if let Some(problem) = problem {
                if i + 1 < count {
                    return Err(Error::Corrupt(format!(
                        "WAL segment {} is damaged before its end ({problem}); it is not the last \
                         segment, so this is not a torn write: move it away to start without it",
                        path.display()
                    )));
                }
                warn!(
                    segment = %path.display(),
                    kept_records = records.len(),
                    reason = %problem,
                    "WAL: cut off a torn or corrupt tail (a crash during a write)"
                );
                end_segment_at(&path, data.len(), good_len)?;
            }
            let Some(seg_last) = records.last().map(|r| r.position) else {
                std::fs::remove_file(&path).map_err(|e| io_error(&path, "remove", e))?;
                continue;
            };
            last = last.max(seg_last);
            closed.push(Segment {
                last: seg_last,
                path,
            });
            replay.extend(records.into_iter().filter(|r| r.position > args.after));
        }
        if !replay.is_empty() {
            info!(
                records = replay.len(),
                from = replay[0].position,
                to = last,
                format = segment::FORMAT_VERSION,
                "WAL: records to replay"
            );
        }
        let (progress, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            dir: args.dir.clone(),
            queue: Mutex::new(Queue {
                frames: Vec::new(),
                last,
                closed: false,
                roll: false,
            }),
            wake: Condvar::new(),
            durable_position: AtomicU64::new(last),
            progress,
            listener: std::sync::OnceLock::new(),
            closed: Mutex::new(closed),
            spares: Mutex::new(spares),
            segment_bytes: args.segment_bytes,
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("vigie-wal".into())
                .spawn(move || writer_loop(&shared, args.max_delay))
                .map_err(|e| io_error(&args.dir, "start the writer thread for", e))?
        };
        Ok((
            Self {
                shared,
                writer: Some(writer),
            },
            replay,
        ))
    }
}

impl Drop for LocalWal {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.wake.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[async_trait]
impl Wal for LocalWal {
    fn append(&self, received_at: i64, payload: &[u8]) -> Result<WalPosition> {
        if let Some(e) = &*self.shared.progress.borrow() {
            return Err(Error::Wal(e.to_string()));
        }
        let len = u32::try_from(payload.len())
            .map_err(|_| Error::Wal(format!("record of {} bytes is too large", payload.len())))?;
        let mut q = self.shared.queue.lock();
        let position = q.last + 1;
        segment::encode_frame(&mut q.frames, len, position, received_at, payload);
        q.last = position;
        drop(q);
        self.shared.wake.notify_one();
        Ok(position)
    }

    fn last_position(&self) -> WalPosition {
        self.shared.queue.lock().last
    }

    fn durable_position(&self) -> WalPosition {
        self.shared.durable_position.load(Ordering::SeqCst)
    }

    fn set_listener(&self, listener: DurableListener) {
        if self.shared.listener.set(listener).is_err() {
            warn!("WAL: a durable listener was installed already; the new one is ignored");
        }
    }

    async fn sync(&self, position: WalPosition) -> Result<()> {
        super::wait_durable(
            &self.shared.progress,
            &self.shared.durable_position,
            position,
            "the WAL writer",
        )
        .await
    }

    async fn truncate(&self, position: WalPosition) -> Result<()> {
        let removable: Vec<Segment> = {
            let mut closed = self.shared.closed.lock();
            let keep = closed
                .iter()
                .position(|s| s.last > position)
                .unwrap_or(closed.len());
            closed.drain(..keep).collect()
        };
        let mut recycled = 0;
        for s in &removable {
            if self.recycle(&s.path)? {
                recycled += 1;
            } else {
                std::fs::remove_file(&s.path).map_err(|e| io_error(&s.path, "remove", e))?;
            }
        }
        if !removable.is_empty() {
            info!(
                segments = removable.len(),
                recycled,
                upto = position,
                "WAL: segments covered by a Delta commit kept for reuse or removed"
            );
        }
        // Let the current segment close at its next write once everything in it is committed,
        // so that it can go at the next truncation.
        let mut q = self.shared.queue.lock();
        if q.last <= position {
            q.roll = true;
        }
        Ok(())
    }
}

impl LocalWal {
    /// Keeps a covered segment's file as a spare if it is full-sized and spares are wanted;
    /// returns whether it did. No fsync: if the rename is lost in a crash, the segment is simply
    /// found again, covered, and recycled or removed at the next truncation.
    fn recycle(&self, path: &Path) -> Result<bool> {
        let mut spares = self.shared.spares.lock();
        let full = std::fs::metadata(path)
            .map_err(|e| io_error(path, "inspect", e))?
            .len()
            >= self.shared.segment_bytes;
        if !full || spares.len() >= MAX_SPARES {
            return Ok(false);
        }
        let spare = path.with_extension(SPARE_SUFFIX);
        std::fs::rename(path, &spare).map_err(|e| io_error(path, "recycle", e))?;
        spares.push(spare);
        Ok(true)
    }
}

/// Makes the valid part of a segment end at `good_len`: an end marker there (the file keeps its
/// allocated size), or the file cut when no marker fits.
fn end_segment_at(path: &Path, len: usize, good_len: usize) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_error(path, "open", e))?;
    if len - good_len > HEADER {
        file.write_all_at(&[0; HEADER], good_len as u64)
            .and_then(|()| file.sync_data())
    } else {
        file.set_len(good_len as u64).and_then(|()| file.sync_all())
    }
    .map_err(|e| io_error(path, "cut the torn tail of", e))
}

struct Current {
    file: File,
    last: WalPosition,
    bytes: u64,
    path: PathBuf,
}

fn writer_loop(shared: &Shared, max_delay: Duration) {
    let mut current: Option<Current> = None;
    loop {
        let (frames, last, roll) = {
            let mut q = shared.queue.lock();
            while q.frames.is_empty() && !q.closed {
                shared.wake.wait(&mut q);
            }
            if q.frames.is_empty() && q.closed {
                break;
            }
            if !max_delay.is_zero() {
                shared.wake.wait_for(&mut q, max_delay);
            }
            let roll = std::mem::take(&mut q.roll);
            (std::mem::take(&mut q.frames), q.last, roll)
        };
        let first = last + 1 - count_frames(&frames);
        let started = std::time::Instant::now();
        let bytes = frames.len();
        let result = write_frames(shared, &mut current, frames, first, last, roll);
        let took = started.elapsed();
        metrics::histogram!("vigie_wal_write_seconds").record(took.as_secs_f64());
        if took >= SLOW_WRITE {
            warn!(
                took_ms = took.as_millis() as u64,
                bytes,
                "WAL: a write + fsync was slow (acknowledgements and alerts waited for the disk)"
            );
        }
        match result {
            Ok(()) => {
                // The listener (publishing alerts, whose subscribers wait on them) runs before
                // the acknowledgements' waiters are woken.
                shared.durable_position.store(last, Ordering::SeqCst);
                if let Some(listener) = shared.listener.get() {
                    listener(last);
                }
                // Wakes the `sync` waiters (send_modify notifies even without a change).
                shared.progress.send_modify(|_| {});
            }
            Err(e) => {
                error!(error = %e, "WAL write failed: no further write can be acknowledged");
                let message: Arc<str> = Arc::from(e.to_string());
                shared.progress.send_modify(|error| *error = Some(message));
                // Refuse everything from now on: the file's state is unknown.
                let mut q = shared.queue.lock();
                q.frames.clear();
                while !q.closed {
                    shared.wake.wait(&mut q);
                    q.frames.clear();
                }
                break;
            }
        }
    }
    if let Some(c) = current {
        let _ = c.file.sync_all();
    }
}

fn write_frames(
    shared: &Shared,
    current: &mut Option<Current>,
    mut frames: Vec<u8>,
    first: WalPosition,
    last: WalPosition,
    roll: bool,
) -> Result<()> {
    let full = current
        .as_ref()
        .is_some_and(|c| c.bytes >= shared.segment_bytes);
    if (full || roll)
        && let Some(c) = current.take()
    {
        // Every write to it was synced already.
        shared.closed.lock().push(Segment {
            last: c.last,
            path: c.path,
        });
    }
    if current.is_none() {
        *current = Some(new_segment(shared, first)?);
    }
    let c = current.as_mut().expect("just opened");
    let len = frames.len() as u64;
    frames.extend_from_slice(&[0; HEADER]);
    c.file
        .write_all_at(&frames, c.bytes)
        .and_then(|()| c.file.sync_data())
        .map_err(|e| io_error(&c.path, "write", e))?;
    c.bytes += len;
    c.last = last;
    Ok(())
}

/// The segment whose first record is `first`: a spare renamed, or else a new file.
fn new_segment(shared: &Shared, first: WalPosition) -> Result<Current> {
    let path = shared.dir.join(format!("{first:020}.{SEGMENT_SUFFIX}"));
    let file = loop {
        let spare = shared.spares.lock().pop();
        let Some(spare) = spare else {
            break OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_error(&path, "create", e))?;
        };
        // A spare that cannot be reused (removed by hand, say) is skipped, not fatal.
        match std::fs::rename(&spare, &path) {
            Ok(()) => {
                break OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_error(&path, "open", e))?;
            }
            Err(e) => warn!(
                spare = %spare.display(),
                error = %e,
                "WAL: cannot reuse a spare segment file; skipped"
            ),
        }
    };
    // Make the segment's name durable before any record in it is acknowledged.
    File::open(&shared.dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(&shared.dir, "sync", e))?;
    Ok(Current {
        file,
        last: first.saturating_sub(1),
        bytes: 0,
        path,
    })
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Wal(format!("cannot {what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, after: WalPosition) -> LocalWalArgs {
        LocalWalArgs {
            dir: dir.to_path_buf(),
            segment_bytes: 200,
            max_delay: Duration::ZERO,
            after,
        }
    }

    #[tokio::test]
    async fn records_survive_reopen_and_truncation_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, replay) = LocalWal::open(args(dir.path(), 0)).unwrap();
        assert!(replay.is_empty());
        for i in 0..20u8 {
            let p = wal.append(i64::from(i), &[i; 30]).unwrap();
            assert_eq!(p, u64::from(i) + 1);
            // One write per record, so that the small segments roll.
            wal.sync(p).await.unwrap();
        }
        drop(wal);
        let (wal, replay) = LocalWal::open(args(dir.path(), 5)).unwrap();
        let positions: Vec<_> = replay.iter().map(|r| r.position).collect();
        assert_eq!(positions, (6..=20).collect::<Vec<_>>());
        assert_eq!(replay[0].payload.as_ref(), &[5u8; 30]);
        assert_eq!(replay[0].received_at, 5);
        assert_eq!(wal.last_position(), 20);
        // Small segments: several were closed; truncation recycles or removes the covered ones.
        let before = files(dir.path(), SEGMENT_SUFFIX);
        wal.truncate(15).await.unwrap();
        let after = files(dir.path(), SEGMENT_SUFFIX);
        assert!(after < before, "{before} -> {after}");
        let p = wal.append(0, b"next").unwrap();
        assert_eq!(p, 21);
        wal.sync(p).await.unwrap();
        drop(wal);
        let (_, replay) = LocalWal::open(args(dir.path(), 15)).unwrap();
        let positions: Vec<_> = replay.iter().map(|r| r.position).collect();
        assert_eq!(positions, (16..=21).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn torn_tail_is_cut_and_the_rest_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = LocalWal::open(LocalWalArgs {
            segment_bytes: 1 << 20,
            ..args(dir.path(), 0)
        })
        .unwrap();
        for i in 0..10u8 {
            wal.append(0, &[i; 10]).unwrap();
        }
        wal.sync(10).await.unwrap();
        drop(wal);
        let segment = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut data = std::fs::read(&segment).unwrap();
        // Garble the last record's payload (the end marker follows it).
        let end = 10 * (HEADER + 10);
        assert!(data[end..].iter().all(|b| *b == 0), "end marker");
        data[end - 3] ^= 0xff;
        std::fs::write(&segment, &data).unwrap();
        let (wal, replay) = LocalWal::open(args(dir.path(), 0)).unwrap();
        assert_eq!(replay.len(), 9);
        assert_eq!(wal.last_position(), 9);
        // The tail now starts with an end marker: the segment reads cleanly from now on.
        let data = std::fs::read(&segment).unwrap();
        let (records, good_len, problem) = parse_segment(&data, 1);
        assert_eq!(
            (records.len(), good_len, problem),
            (9, 9 * (HEADER + 10), None)
        );
        // The next record follows in a new segment.
        assert_eq!(wal.append(0, b"x").unwrap(), 10);
        wal.sync(10).await.unwrap();
        drop(wal);
        let (_, replay) = LocalWal::open(args(dir.path(), 0)).unwrap();
        let positions: Vec<_> = replay.iter().map(|r| r.position).collect();
        assert_eq!(positions, (1..=10).collect::<Vec<_>>());
        assert_eq!(replay[9].payload.as_ref(), b"x");
    }

    fn files(dir: &Path, suffix: &str) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| numbered(&e.as_ref().unwrap().path()).is_some_and(|(_, s)| s == suffix))
            .count()
    }

    #[tokio::test]
    async fn covered_segments_are_recycled_and_their_old_records_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = LocalWal::open(args(dir.path(), 0)).unwrap();
        // Records of 30 bytes + header in 200-byte segments: a segment every 4 records.
        let write = async |range: std::ops::Range<u8>| {
            for i in range {
                let p = wal.append(0, &[i; 30]).unwrap();
                wal.sync(p).await.unwrap();
            }
        };
        write(1..41).await;
        wal.truncate(40).await.unwrap();
        assert_eq!(files(dir.path(), SPARE_SUFFIX), MAX_SPARES);
        let segments = files(dir.path(), SEGMENT_SUFFIX);
        // New segments are the spares, overwritten from their start: fewer new files, and the
        // records they held before are never read back.
        write(41..49).await;
        assert_eq!(files(dir.path(), SPARE_SUFFIX), MAX_SPARES - 2);
        assert_eq!(files(dir.path(), SEGMENT_SUFFIX), segments + 2);
        drop(wal);
        let (wal, replay) = LocalWal::open(args(dir.path(), 40)).unwrap();
        let positions: Vec<_> = replay.iter().map(|r| r.position).collect();
        assert_eq!(positions, (41..=48).collect::<Vec<_>>());
        assert!(replay.iter().all(|r| r.payload[0] as u64 == r.position));
        assert_eq!(wal.last_position(), 48);
        drop(wal);

        // A crash right after a spare became a segment, before anything was written to it: its
        // old records are not this segment's, and the log opens without them.
        let spare = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| numbered(p).is_some_and(|(_, s)| s == SPARE_SUFFIX))
            .unwrap();
        std::fs::rename(&spare, dir.path().join(format!("{:020}.wal", 49))).unwrap();
        let (wal, replay) = LocalWal::open(args(dir.path(), 40)).unwrap();
        assert_eq!(replay.len(), 8);
        assert_eq!(wal.last_position(), 48);
        assert_eq!(wal.append(0, &[49; 30]).unwrap(), 49);
        wal.sync(49).await.unwrap();
    }

    #[tokio::test]
    async fn a_spare_removed_by_hand_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = LocalWal::open(args(dir.path(), 0)).unwrap();
        for i in 1..=12u8 {
            let p = wal.append(0, &[i; 30]).unwrap();
            wal.sync(p).await.unwrap();
        }
        wal.truncate(12).await.unwrap();
        assert_eq!(files(dir.path(), SPARE_SUFFIX), 2);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if numbered(&path).is_some_and(|(_, s)| s == SPARE_SUFFIX) {
                std::fs::remove_file(path).unwrap();
            }
        }
        // The next segments are new files; nothing is refused.
        for i in 13..=20u8 {
            let p = wal.append(0, &[i; 30]).unwrap();
            wal.sync(p).await.unwrap();
        }
        drop(wal);
        let (_, replay) = LocalWal::open(args(dir.path(), 12)).unwrap();
        let positions: Vec<_> = replay.iter().map(|r| r.position).collect();
        assert_eq!(positions, (13..=20).collect::<Vec<_>>());
    }

    #[test]
    fn a_gap_between_segments_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let frame = |position: u64| {
            let mut f = Vec::new();
            f.extend_from_slice(&1u32.to_le_bytes());
            f.extend_from_slice(&[0; 4]);
            f.extend_from_slice(&position.to_le_bytes());
            f.extend_from_slice(&0i64.to_le_bytes());
            f.push(7);
            let crc = crc32fast::hash(&f[8..]);
            f[4..8].copy_from_slice(&crc.to_le_bytes());
            f
        };
        std::fs::write(dir.path().join(format!("{:020}.wal", 1)), frame(1)).unwrap();
        std::fs::write(dir.path().join(format!("{:020}.wal", 3)), frame(3)).unwrap();
        let err = LocalWal::open(args(dir.path(), 0)).unwrap_err();
        assert!(err.to_string().contains("records are missing"), "{err}");
    }

    #[test]
    fn damage_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{:020}.wal", 1)), [9u8; 30]).unwrap();
        std::fs::write(dir.path().join(format!("{:020}.wal", 5)), []).unwrap();
        let err = LocalWal::open(args(dir.path(), 0)).unwrap_err();
        assert!(err.to_string().contains("not the last segment"), "{err}");
    }

    #[tokio::test]
    async fn the_listener_sees_its_position_durable_before_waiters_wake() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = LocalWal::open(args(dir.path(), 0)).unwrap();
        let wal = Arc::new(wal);
        let synced = Arc::new(AtomicU64::new(0));
        // (position told, durable position read then, highest position a waiter had seen)
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log: Arc<std::sync::OnceLock<std::sync::Weak<LocalWal>>> = Arc::default();
        {
            let (synced, calls, log) = (synced.clone(), calls.clone(), log.clone());
            wal.set_listener(Box::new(move |position| {
                if let Some(wal) = log.get().and_then(std::sync::Weak::upgrade) {
                    let durable = wal.durable_position();
                    calls
                        .lock()
                        .push((position, durable, synced.load(Ordering::SeqCst)));
                }
            }));
        }
        log.set(Arc::downgrade(&wal)).unwrap();
        for _ in 0..20 {
            let position = wal.append(0, b"record").unwrap();
            wal.sync(position).await.unwrap();
            synced.store(position, Ordering::SeqCst);
        }
        let calls = calls.lock().clone();
        assert!(!calls.is_empty());
        for (position, durable, waiter_saw) in calls {
            assert!(durable >= position, "told {position}, read {durable}");
            assert!(waiter_saw < position, "a waiter of {position} woke first");
        }
    }
}
