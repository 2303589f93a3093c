//! A stored alerts file that is not one (damaged, or written by another tool) makes reading the
//! alerts fail with `Corrupt`, naming the file: a subscriber or the webhook gets an error, the
//! server does not panic.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use object_store::ObjectStoreExt as _;
use parquet::arrow::ArrowWriter;
use url::Url;
use vigie_engine::schema::TableKind;
use vigie_engine::store::Lake;
use vigie_engine::{Engine, EngineArgs, Error, ErrorKind, WalMode};
use vigie_proto::Timestamp;
use vigie_proto::v1::{Citizen, DroneReport, WriteRequest};

fn alarming_report() -> WriteRequest {
    WriteRequest {
        reports: vec![DroneReport {
            drone_id: "d1".into(),
            seq: 1,
            time: Some(Timestamp {
                seconds: 1_767_225_600,
                nanos: 0,
            }),
            latitude: 48.85,
            longitude: 2.35,
            citizens: vec![Citizen {
                name: "Ana".into(),
                score: 5.0,
            }],
            words: Vec::new(),
        }],
    }
}

fn parquet_of(batch: &RecordBatch) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
    bytes
}

#[tokio::test]
async fn an_alerts_file_of_another_schema_is_corrupt_and_named() {
    let lake = Lake::open(&Url::parse("memory:///lake").unwrap()).unwrap();
    let args = EngineArgs {
        flush_interval: Duration::from_secs(3600),
        flush_rows: usize::MAX,
        ..EngineArgs::new(lake, WalMode::Off)
    };
    let engine = Engine::open(args, Vec::new()).await.unwrap();
    let tenant = engine.default_tenant().unwrap();
    assert_eq!(tenant.write(&alarming_report()).await.unwrap().accepted, 1);
    engine.flush_all().await.unwrap();
    let stored = tenant.read_alerts(1, 10).await.unwrap();
    assert_eq!(
        stored
            .iter()
            .map(|a| (a.id, a.citizen.as_str()))
            .collect::<Vec<_>>(),
        [(1, "Ana")]
    );

    let files = tenant.snapshot(TableKind::Alerts).files;
    assert_eq!(files.len(), 1);
    let path = files[0].path.clone();
    let foreign = RecordBatch::try_from_iter([
        ("id", Arc::new(StringArray::from(vec!["one"])) as ArrayRef),
        (
            "note",
            Arc::new(StringArray::from(vec!["not an alert"])) as ArrayRef,
        ),
    ])
    .unwrap();
    engine
        .lake()
        .root_store
        .put(&path, parquet_of(&foreign).into())
        .await
        .unwrap();

    let err = tenant.read_alerts(1, 10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(
        matches!(&err, Error::Corrupt(m) if m.contains(path.as_ref())),
        "the error does not name {path}: {err}"
    );
    // Reading nothing stored (ids past the last one) does not touch the files' content.
    assert!(tenant.read_alerts(5, 4).await.unwrap().is_empty());
}
