//! Alerts are published by the WAL writer as soon as their record is durable: a subscriber gets
//! them even while the request that raised them has not yet been awaited (its task may be waiting
//! for a core), and never before the record is durable.

use std::time::Duration;

use vigie_engine::testing::{self, NEW_YEAR_2026, manual_flush, memory_lake};
use vigie_engine::{Engine, WalMode};
use vigie_proto::v1::WriteRequest;

fn request(seq: u64, score: f64) -> WriteRequest {
    let citizen = format!("citizen-{seq}");
    testing::request([testing::report(
        "d1",
        seq,
        NEW_YEAR_2026 + seq as i64 * 60,
        &[(&citizen, score)],
        &["emeute"],
    )])
}

async fn engine(wal: WalMode) -> Engine {
    testing::engine(manual_flush(memory_lake(), wal)).await
}

async fn published_before_the_write_is_awaited(wal: WalMode) {
    let engine = engine(wal).await;
    let tenant = engine.default_tenant().unwrap();
    let mut subscription = tenant.hub().subscribe(16);
    // Two requests buffered and logged; neither answer is awaited yet.
    let quiet = tenant.write_buffered(&request(1, 90.0)).unwrap();
    let alarming = tenant.write_buffered(&request(2, 5.0)).unwrap();
    let alert = tokio::time::timeout(Duration::from_secs(10), subscription.alerts.recv())
        .await
        .expect("the alert was not published while its write was pending")
        .expect("subscription open");
    assert_eq!((alert.id, alert.seq), (1, 2));
    assert_eq!(alert.citizen, "citizen-2");
    assert_eq!(alert.rule, "low_score");
    assert_eq!(quiet.durable().await.unwrap().accepted, 1);
    assert_eq!(alarming.durable().await.unwrap().accepted, 1);
    // Awaiting the writes publishes nothing twice.
    assert!(subscription.alerts.try_recv().is_err());
}

#[tokio::test]
async fn fsynced_wal_publishes_from_its_writer() {
    let dir = tempfile::tempdir().unwrap();
    published_before_the_write_is_awaited(WalMode::Local {
        dir: dir.path().to_path_buf(),
        segment_bytes: 1 << 20,
        max_delay: Duration::ZERO,
    })
    .await;
}

#[tokio::test]
async fn volatile_wal_publishes_at_once() {
    published_before_the_write_is_awaited(WalMode::Off).await;
}
