//! A stored alerts file that is not one (damaged, or written by another tool) makes reading the
//! alerts fail with `Corrupt`, naming the file: a subscriber or the webhook gets an error, the
//! server does not panic.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use object_store::ObjectStoreExt as _;
use parquet::arrow::ArrowWriter;
use vigie_engine::schema::TableKind;
use vigie_engine::testing::{self, NEW_YEAR_2026, manual_flush, memory_lake};
use vigie_engine::{Error, ErrorKind, WalMode};
use vigie_proto::v1::WriteRequest;

fn alarming_report() -> WriteRequest {
    testing::request([testing::report(
        "d1",
        1,
        NEW_YEAR_2026,
        &[("Ana", 5.0)],
        &[],
    )])
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
    let engine = testing::engine(manual_flush(memory_lake(), WalMode::Off)).await;
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
