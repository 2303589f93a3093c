//! The object store fails, then comes back: writes go on into the WAL and the buffer until the
//! memory limit, are then refused as `Overloaded` (never dropped), and everything lands in Delta
//! once the store works again.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use url::Url;
use vigie_engine::schema::TableKind;
use vigie_engine::store::Lake;
use vigie_engine::{Engine, EngineArgs, Error, WalMode};
use vigie_proto::Timestamp;
use vigie_proto::v1::{Citizen, DroneReport, WriteRequest};

/// An in-memory store whose writes fail while `down` is set.
#[derive(Debug, Default)]
struct FlakyStore {
    inner: InMemory,
    down: AtomicBool,
}

impl fmt::Display for FlakyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlakyStore")
    }
}

impl FlakyStore {
    fn check(&self) -> object_store::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(object_store::Error::Generic {
                store: "FlakyStore",
                source: "the store is down (injected fault)".into(),
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ObjectStore for FlakyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check()?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check()?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.check()?;
        self.inner.copy_opts(from, to, options).await
    }
}

fn request(drone: &str, seqs: Range<u64>) -> WriteRequest {
    WriteRequest {
        reports: seqs
            .map(|seq| DroneReport {
                drone_id: drone.into(),
                seq,
                time: Some(Timestamp {
                    seconds: 1_767_225_600 + seq as i64,
                    nanos: 0,
                }),
                latitude: 1.0,
                longitude: 2.0,
                citizens: vec![Citizen {
                    name: "Ana".into(),
                    score: 50.0,
                }],
                words: vec!["calme".into(); 4],
            })
            .collect(),
    }
}

fn stored_rows(engine: &Engine) -> (usize, usize) {
    let s = engine
        .default_tenant()
        .unwrap()
        .snapshot(TableKind::Reports);
    let committed = s.files.iter().map(|f| f.num_rows.expect("stats")).sum();
    let buffered = s.buffered.iter().map(|b| b.num_rows()).sum();
    (committed, buffered)
}

#[tokio::test]
async fn store_outage_fills_the_buffer_then_refuses_and_recovers_without_loss() {
    let wal_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FlakyStore::default());
    let lake = Lake::from_store(store.clone(), &Url::parse("memory:///lake").unwrap()).unwrap();
    let engine = Engine::open(
        EngineArgs {
            flush_interval: Duration::from_secs(3600),
            flush_rows: usize::MAX,
            max_buffer_bytes: 2 << 20,
            ..EngineArgs::new(
                lake,
                WalMode::Local {
                    dir: wal_dir.path().to_path_buf(),
                    segment_bytes: 1 << 20,
                    max_delay: Duration::ZERO,
                },
            )
        },
        Vec::new(),
    )
    .await
    .unwrap();
    let tenant = engine.default_tenant().unwrap();
    let answer = tenant.write(&request("a", 0..100)).await.unwrap();
    assert_eq!(answer.accepted, 100);
    engine.flush_all().await.unwrap();
    assert_eq!(stored_rows(&engine), (100, 0));

    store.down.store(true, Ordering::SeqCst);
    let mut accepted = 100u64;
    let mut next = 100u64;
    let refused = loop {
        match tenant.write(&request("a", next..next + 100)).await {
            Ok(answer) => {
                accepted += u64::from(answer.accepted);
                next += 100;
            }
            Err(e) => break e,
        }
        assert!(next < 10_000_000, "the buffer limit never applied");
        if next.is_multiple_of(2_000) {
            // The flusher would be failing meanwhile; nothing may be dropped.
            assert!(engine.flush_all().await.is_err());
        }
    };
    assert!(matches!(refused, Error::Overloaded(_)), "{refused}");
    assert!(refused.to_string().contains("retry later"), "{refused}");
    assert_eq!(stored_rows(&engine), (100, accepted as usize - 100));

    store.down.store(false, Ordering::SeqCst);
    engine.flush_all().await.unwrap();
    assert_eq!(stored_rows(&engine), (accepted as usize, 0));
    // Writes are accepted again, and the refused request was not half-stored.
    let answer = tenant.write(&request("a", next..next + 100)).await.unwrap();
    assert_eq!((answer.accepted, answer.duplicates), (100, 0));
}
