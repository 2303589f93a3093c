//! The write-ahead log: an accepted report is on disk, fsynced, before its `WriteResponse` leaves.
//!
//! ```text
//! Tenant::write ─ append(frame) ─▶ queue ─▶ writer thread: write all queued frames, one fsync
//!      └─ sync(position).await ◀── durable watermark ──────────┘   (group commit)
//! flush commits Delta with txn(app_id, position) ─▶ truncate(position): delete covered segments
//! start: replay the records after the position the last Delta commit recorded
//! ```
//! Segments are files `<first position, 20 digits>.wal` of frames
//! `len u32 | crc32 u32 | position u64 | received_at i64 | payload` (little endian; the CRC covers
//! everything after itself). A torn or corrupt tail of the last segment (a crash mid-write) is cut
//! off and reported; damage anywhere else stops the start with an error rather than replay garbage.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{Error, Result};

/// Position of a record in the log: 1 for the first record ever, then +1 per record.
pub type WalPosition = u64;

const HEADER: usize = 24;

/// Called by the WAL with the highest durable position, right after it becomes durable (on the
/// thread that made it so: keep it short and non-blocking).
pub type DurableListener = Box<dyn Fn(WalPosition) + Send + Sync>;

/// One record read back at start.
#[derive(Debug, Clone)]
pub struct WalRecord {
    /// Its position.
    pub position: WalPosition,
    /// When the server received it (µs since the epoch).
    pub received_at: i64,
    /// The encoded accepted reports (a `vigie.v1.WriteRequest`).
    pub payload: Bytes,
}

/// A log that makes appended records durable in position order.
#[async_trait]
pub trait Wal: Send + Sync + fmt::Debug {
    /// Queues a record and returns its position; it is durable once [`Wal::sync`] returns for it.
    /// Call in the same critical section that orders the records' effects.
    fn append(&self, received_at: i64, payload: &[u8]) -> Result<WalPosition>;
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
pub struct VolatileWal {
    last: AtomicU64,
}

impl VolatileWal {
    /// A log whose next position follows `after`.
    pub fn new(after: WalPosition) -> Self {
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

/// What [`LocalWal::open`] needs.
#[derive(Debug, Clone)]
pub struct LocalWalArgs {
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

#[derive(Debug, Clone)]
struct Durable {
    position: WalPosition,
    error: Option<Arc<str>>,
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
    durable: watch::Sender<Durable>,
    listener: std::sync::OnceLock<DurableListener>,
    /// Closed segments, oldest first.
    closed: Mutex<Vec<Segment>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("dir", &self.dir)
            .field("durable", &*self.durable.borrow())
            .field("listener", &self.listener.get().is_some())
            .finish_non_exhaustive()
    }
}

/// A WAL in local files, with group commit on a dedicated writer thread.
#[derive(Debug)]
pub struct LocalWal {
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl LocalWal {
    /// Opens the log in `args.dir`, cutting off a torn tail, and returns the records after
    /// `args.after` for replay.
    pub fn open(args: LocalWalArgs) -> Result<(Self, Vec<WalRecord>)> {
        std::fs::create_dir_all(&args.dir).map_err(|e| io_error(&args.dir, "create", e))?;
        let mut paths: Vec<(WalPosition, PathBuf)> = std::fs::read_dir(&args.dir)
            .map_err(|e| io_error(&args.dir, "list", e))?
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let first = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".wal")?
                    .parse()
                    .ok()?;
                Some((first, path))
            })
            .collect();
        paths.sort();
        let mut replay = Vec::new();
        let mut closed = Vec::new();
        let mut last = args.after;
        let count = paths.len();
        for (i, (_, path)) in paths.into_iter().enumerate() {
            let data = std::fs::read(&path).map_err(|e| io_error(&path, "read", e))?;
            let (records, good_len, problem) = parse_segment(&data);
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
                    dropped_bytes = data.len() - good_len,
                    kept_records = records.len(),
                    reason = %problem,
                    "WAL: cut off a torn or corrupt tail (a crash during a write)"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_error(&path, "open", e))?;
                file.set_len(good_len as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io_error(&path, "truncate", e))?;
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
                "WAL: records to replay"
            );
        }
        let (durable, _) = watch::channel(Durable {
            position: last,
            error: None,
        });
        let shared = Arc::new(Shared {
            dir: args.dir.clone(),
            queue: Mutex::new(Queue {
                frames: Vec::new(),
                last,
                closed: false,
                roll: false,
            }),
            wake: Condvar::new(),
            durable,
            listener: std::sync::OnceLock::new(),
            closed: Mutex::new(closed),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("vigie-wal".into())
                .spawn(move || writer_loop(&shared, args.segment_bytes, args.max_delay))
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
        if let Some(e) = &self.shared.durable.borrow().error {
            return Err(Error::Wal(e.to_string()));
        }
        let len = u32::try_from(payload.len())
            .map_err(|_| Error::Wal(format!("record of {} bytes is too large", payload.len())))?;
        let mut q = self.shared.queue.lock();
        let position = q.last + 1;
        let start = q.frames.len();
        q.frames.extend_from_slice(&len.to_le_bytes());
        q.frames.extend_from_slice(&[0; 4]);
        q.frames.extend_from_slice(&position.to_le_bytes());
        q.frames.extend_from_slice(&received_at.to_le_bytes());
        q.frames.extend_from_slice(payload);
        let crc = crc32fast::hash(&q.frames[start + 8..]);
        q.frames[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        q.last = position;
        drop(q);
        self.shared.wake.notify_one();
        Ok(position)
    }

    fn last_position(&self) -> WalPosition {
        self.shared.queue.lock().last
    }

    fn durable_position(&self) -> WalPosition {
        self.shared.durable.borrow().position
    }

    fn set_listener(&self, listener: DurableListener) {
        if self.shared.listener.set(listener).is_err() {
            warn!("WAL: a durable listener was installed already; the new one is ignored");
        }
    }

    async fn sync(&self, position: WalPosition) -> Result<()> {
        let mut rx = self.shared.durable.subscribe();
        let state = rx
            .wait_for(|d| d.position >= position || d.error.is_some())
            .await
            .map_err(|_| Error::Wal("the WAL writer stopped".into()))?;
        match &state.error {
            Some(e) if state.position < position => Err(Error::Wal(e.to_string())),
            _ => Ok(()),
        }
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
        for s in &removable {
            std::fs::remove_file(&s.path).map_err(|e| io_error(&s.path, "remove", e))?;
        }
        if !removable.is_empty() {
            info!(
                segments = removable.len(),
                upto = position,
                "WAL: removed segments covered by a Delta commit"
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

/// Parses frames; returns the complete records, the length they span and why parsing stopped early.
fn parse_segment(data: &[u8]) -> (Vec<WalRecord>, usize, Option<String>) {
    let mut records = Vec::new();
    let mut at = 0;
    let mut previous = 0;
    while at < data.len() {
        if data.len() - at < HEADER {
            return (
                records,
                at,
                Some(format!("{} bytes of a partial header", data.len() - at)),
            );
        }
        let word = |o: usize| u32::from_le_bytes(data[at + o..at + o + 4].try_into().expect("4"));
        let long = |o: usize| u64::from_le_bytes(data[at + o..at + o + 8].try_into().expect("8"));
        let len = word(0) as usize;
        let crc = word(4);
        if data.len() - at - HEADER < len {
            return (
                records,
                at,
                Some(format!("record of {len} bytes cut short at byte {at}")),
            );
        }
        let end = at + HEADER + len;
        if crc32fast::hash(&data[at + 8..end]) != crc {
            return (records, at, Some(format!("checksum mismatch at byte {at}")));
        }
        let position = long(8);
        if position <= previous {
            return (
                records,
                at,
                Some(format!("position {position} after {previous} at byte {at}")),
            );
        }
        previous = position;
        records.push(WalRecord {
            position,
            received_at: long(16) as i64,
            payload: Bytes::copy_from_slice(&data[at + HEADER..end]),
        });
        at = end;
    }
    (records, at, None)
}

struct Current {
    file: File,
    last: WalPosition,
    bytes: u64,
    path: PathBuf,
}

fn writer_loop(shared: &Shared, segment_bytes: u64, max_delay: Duration) {
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
        let result = write_frames(
            shared,
            &mut current,
            &frames,
            first,
            last,
            segment_bytes,
            roll,
        );
        match result {
            Ok(()) => {
                shared.durable.send_modify(|d| d.position = last);
                if let Some(listener) = shared.listener.get() {
                    listener(last);
                }
            }
            Err(e) => {
                error!(error = %e, "WAL write failed: no further write can be acknowledged");
                let message: Arc<str> = Arc::from(e.to_string());
                shared.durable.send_modify(|d| d.error = Some(message));
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

fn count_frames(frames: &[u8]) -> u64 {
    let mut at = 0;
    let mut n = 0;
    while at < frames.len() {
        let len = u32::from_le_bytes(frames[at..at + 4].try_into().expect("4")) as usize;
        at += HEADER + len;
        n += 1;
    }
    n
}

fn write_frames(
    shared: &Shared,
    current: &mut Option<Current>,
    frames: &[u8],
    first: WalPosition,
    last: WalPosition,
    segment_bytes: u64,
    roll: bool,
) -> Result<()> {
    let full = current.as_ref().is_some_and(|c| c.bytes >= segment_bytes);
    if (full || roll) && current.is_some() {
        let c = current.take().expect("checked");
        c.file
            .sync_all()
            .map_err(|e| io_error(&c.path, "sync", e))?;
        shared.closed.lock().push(Segment {
            last: c.last,
            path: c.path,
        });
    }
    if current.is_none() {
        let path = shared.dir.join(format!("{first:020}.wal"));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error(&path, "create", e))?;
        // Make the new file's name durable too.
        File::open(&shared.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(&shared.dir, "sync", e))?;
        *current = Some(Current {
            file,
            last: first.saturating_sub(1),
            bytes: 0,
            path,
        });
    }
    let c = current.as_mut().expect("just opened");
    c.file
        .write_all(frames)
        .and_then(|()| c.file.sync_data())
        .map_err(|e| io_error(&c.path, "write", e))?;
    c.bytes += frames.len() as u64;
    c.last = last;
    Ok(())
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
        // Small segments: several were closed; truncation removes the covered ones.
        let before = std::fs::read_dir(dir.path()).unwrap().count();
        wal.truncate(15).await.unwrap();
        let after = std::fs::read_dir(dir.path()).unwrap().count();
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
        // Garble the last record's payload, then add half a header.
        let n = data.len();
        data[n - 3] ^= 0xff;
        data.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&segment, &data).unwrap();
        let (wal, replay) = LocalWal::open(args(dir.path(), 0)).unwrap();
        assert_eq!(replay.len(), 9);
        assert_eq!(wal.last_position(), 9);
        assert_eq!(
            std::fs::metadata(&segment).unwrap().len() as usize,
            9 * (HEADER + 10)
        );
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
    async fn volatile_counts_positions() {
        let wal = VolatileWal::new(7);
        assert_eq!(wal.append(0, b"x").unwrap(), 8);
        wal.sync(8).await.unwrap();
        assert_eq!(wal.last_position(), 8);
    }
}
