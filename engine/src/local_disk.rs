//! The local-disk object store, with small reads done in place.
//!
//! ```text
//! get_opts / get_ranges ── ≤ INLINE_READ_LIMIT bytes ──▶ open + read on the calling task
//!                       └─ larger, or anything else ──▶ object_store's LocalFileSystem
//!                                                       (spawn_blocking per call)
//! ```
//! A query reads many small ranges per Parquet file (bloom filters, page index, column chunks):
//! object_store's `LocalFileSystem` hands each one to tokio's blocking pool (two hand-offs for a
//! ranged `get`), and on a 2-core machine those thread switches were a fifth of the server's CPU
//! for a query over 30 small files. A read of a page-cached file costs microseconds, so small reads
//! are done on the task that asks, as DuckDB's and ClickHouse's local readers do; a read that has to
//! wait for the disk blocks that worker for the read's time, which is bounded by the limit.
//! Writes, listing, renames and large reads stay with `LocalFileSystem`.

use std::fmt;
use std::fs::{File, Metadata};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::PathBuf;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result,
};

/// Reads up to this many bytes per call are done in place; larger ones go to the blocking pool.
/// A Parquet column chunk of a compacted day is usually below it; a whole large file is not.
pub(crate) const INLINE_READ_LIMIT: u64 = 8 * 1024 * 1024;

/// `LocalFileSystem` (absolute paths, as `LocalFileSystem::new()`), reading small ranges in place.
#[derive(Debug, Default)]
pub(crate) struct LocalDisk {
    inner: LocalFileSystem,
}

impl LocalDisk {
    /// The store for absolute local paths.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn file_path(&self, location: &Path) -> Result<PathBuf> {
        self.inner.path_to_filesystem(location)
    }
}

impl fmt::Display for LocalDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalDisk({})", self.inner)
    }
}

const STORE: &str = "LocalDisk";

/// An error about `path` that callers do not match on.
fn generic(path: &std::path::Path, message: impl fmt::Display) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: format!("{}: {message}", path.display()).into(),
    }
}

fn io_error(e: std::io::Error, path: &std::path::Path) -> object_store::Error {
    if e.kind() == ErrorKind::NotFound {
        object_store::Error::NotFound {
            path: path.display().to_string(),
            source: Box::new(e),
        }
    } else {
        generic(path, e)
    }
}

fn open(path: &std::path::Path) -> Result<(File, Metadata)> {
    let file = File::open(path).map_err(|e| io_error(e, path))?;
    let metadata = file.metadata().map_err(|e| io_error(e, path))?;
    if metadata.is_dir() {
        return Err(object_store::Error::NotFound {
            path: path.display().to_string(),
            source: "is a directory".into(),
        });
    }
    Ok((file, metadata))
}

/// Reads exactly `range`, failing (not truncating) if the file is shorter. The buffer is filled
/// by the read itself (`read_to_end` into spare capacity), not zeroed first.
fn read_range(file: &File, path: &std::path::Path, range: Range<u64>) -> Result<Bytes> {
    let len = range.end.saturating_sub(range.start);
    let capacity =
        usize::try_from(len).map_err(|_| generic(path, format!("range {range:?} too large")))?;
    let mut buf = Vec::with_capacity(capacity);
    let mut reader = file;
    reader
        .seek(SeekFrom::Start(range.start))
        .and_then(|_| reader.take(len).read_to_end(&mut buf))
        .map_err(|e| io_error(e, path))?;
    if buf.len() < capacity {
        return Err(generic(
            path,
            format!("range {range:?} is past the end of the file"),
        ));
    }
    Ok(buf.into())
}

/// The object's metadata, built as `LocalFileSystem` builds it (same ETag scheme:
/// inode-mtime-size in hex, so conditional requests agree whichever path served them).
fn object_meta(location: &Path, metadata: &Metadata) -> ObjectMeta {
    use std::os::unix::fs::MetadataExt;
    let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let mtime = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    ObjectMeta {
        location: location.clone(),
        last_modified: modified.into(),
        size: metadata.len(),
        e_tag: Some(format!(
            "{:x}-{mtime:x}-{:x}",
            metadata.ino(),
            metadata.len()
        )),
        version: None,
    }
}

#[async_trait]
impl ObjectStore for LocalDisk {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if options.head || options.version.is_some() {
            return self.inner.get_opts(location, options).await;
        }
        let path = self.file_path(location)?;
        let (file, metadata) = open(&path)?;
        let meta = object_meta(location, &metadata);
        options.check_preconditions(&meta)?;
        let range = match &options.range {
            Some(r) => r.as_range(meta.size).map_err(|e| generic(&path, e))?,
            None => 0..meta.size,
        };
        let payload = if range.end - range.start <= INLINE_READ_LIMIT {
            let bytes = read_range(&file, &path, range.clone())?;
            GetResultPayload::Stream(Box::pin(stream::once(async move { Ok(bytes) })))
        } else {
            GetResultPayload::File(file, path)
        };
        Ok(GetResult {
            payload,
            attributes: Attributes::default(),
            range,
            meta,
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let total: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
        if total > INLINE_READ_LIMIT {
            return self.inner.get_ranges(location, ranges).await;
        }
        let path = self.file_path(location)?;
        let file = File::open(&path).map_err(|e| io_error(e, &path))?;
        ranges
            .iter()
            .map(|r| read_range(&file, &path, r.clone()))
            .collect()
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::{GetRange, ObjectStoreExt};

    use super::*;

    /// A file of `len` bytes (byte i = i mod 251) in a temp dir, and its object-store path.
    fn file_of(len: usize) -> (tempfile::TempDir, Path) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("part.parquet");
        std::fs::write(&file, (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
        let location = Path::from_filesystem_path(&file).unwrap();
        (dir, location)
    }

    #[tokio::test]
    async fn reads_what_local_file_system_reads() {
        let (_dir, location) = file_of(10_000);
        let (disk, local) = (LocalDisk::new(), LocalFileSystem::new());
        for range in [0..1, 17..4_000, 9_990..10_000] {
            assert_eq!(
                disk.get_range(&location, range.clone()).await.unwrap(),
                local.get_range(&location, range).await.unwrap()
            );
        }
        let ranges = [3..9, 100..200, 0..10_000];
        assert_eq!(
            disk.get_ranges(&location, &ranges).await.unwrap(),
            local.get_ranges(&location, &ranges).await.unwrap()
        );
        let suffix = GetOptions::new().with_range(Some(GetRange::Suffix(8)));
        let got = disk.get_opts(&location, suffix.clone()).await.unwrap();
        assert_eq!(got.range, 9_992..10_000);
        // Same metadata, ETag included, so conditional requests agree across both paths.
        assert_eq!(got.meta, local.head(&location).await.unwrap());
        assert_eq!(
            got.bytes().await.unwrap(),
            local
                .get_opts(&location, suffix)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn reads_above_the_limit_and_whole_files() {
        let len = INLINE_READ_LIMIT as usize + 10;
        let (_dir, location) = file_of(len);
        let disk = LocalDisk::new();
        let whole = disk.get(&location).await.unwrap().bytes().await.unwrap();
        assert_eq!(whole.len(), len);
        assert_eq!(whole[len - 1], ((len - 1) % 251) as u8);
        let ranges = [0..len as u64 - 5, 1..2];
        let parts = disk.get_ranges(&location, &ranges).await.unwrap();
        assert_eq!(parts[0].len(), len - 5);
        assert_eq!(parts[1].as_ref(), &[1]);
    }

    #[tokio::test]
    async fn errors_are_the_store_errors_callers_match_on() {
        let (dir, location) = file_of(100);
        let disk = LocalDisk::new();
        let missing = Path::from_filesystem_path(dir.path())
            .unwrap()
            .join("nope.parquet");
        assert!(matches!(
            disk.get_range(&missing, 0..1).await,
            Err(object_store::Error::NotFound { .. })
        ));
        assert!(matches!(
            disk.get_ranges(&missing, &[0..1, 2..3]).await,
            Err(object_store::Error::NotFound { .. })
        ));
        let past_end = disk
            .get_ranges(&location, &[0..1, 90..101])
            .await
            .unwrap_err();
        assert!(past_end.to_string().contains("past the end"), "{past_end}");
        assert!(disk.get_range(&location, 200..300).await.is_err());
        let stale = GetOptions {
            if_match: Some("not-the-etag".into()),
            ..Default::default()
        };
        assert!(matches!(
            disk.get_opts(&location, stale).await,
            Err(object_store::Error::Precondition { .. })
        ));
    }
}
