//! Two servers on one lake: a commit made elsewhere never blocks this server's flushes for good.

use std::collections::HashMap;
use std::sync::Arc;

use vigie_engine::audit::{AuditEvent, audit_batch};
use vigie_engine::schema::TableKind;
use vigie_engine::store::TenantName;
use vigie_engine::table::LiveTable;

#[tokio::test]
async fn a_flush_after_a_conflicting_metadata_commit_elsewhere_succeeds_when_retried() {
    let lake = vigie_engine::testing::memory_lake();
    let tenant = TenantName::new("north").unwrap();
    let ours = LiveTable::open(&lake, &tenant, TableKind::Audit, Arc::default())
        .await
        .unwrap();
    // Another server commits a metadata change (two servers creating the table at the same
    // moment both commit one) after we loaded the table.
    let theirs = LiveTable::open(&lake, &tenant, TableKind::Audit, Arc::default())
        .await
        .unwrap();
    theirs
        .delta()
        .await
        .set_tbl_properties()
        .with_properties(HashMap::from([(
            "delta.logRetentionDuration".to_string(),
            "interval 30 days".to_string(),
        )]))
        .await
        .unwrap();
    ours.push(
        audit_batch(&[AuditEvent::now("user:test", "admin", "query")]).unwrap(),
        0,
    );
    let mut failures = Vec::new();
    let flushed = loop {
        match ours.flush(&lake, "test").await {
            Ok(outcome) => break outcome,
            Err(e) => failures.push(e.to_string()),
        }
        assert!(failures.len() < 3, "the flush keeps failing: {failures:?}");
    };
    assert_eq!(flushed.rows, 1);
    assert!(failures.len() <= 1, "{failures:?}");
}

fn audit_rows(n: usize) -> arrow::array::RecordBatch {
    let events: Vec<_> = (0..n)
        .map(|_| AuditEvent::now("user:test", "admin", "query"))
        .collect();
    audit_batch(&events).unwrap()
}

async fn committed_rows(lake: &vigie_engine::store::Lake, tenant: &TenantName) -> usize {
    let table = LiveTable::open(lake, tenant, TableKind::Audit, Arc::default())
        .await
        .unwrap();
    table
        .snapshot()
        .files
        .iter()
        .map(|f| f.num_rows.expect("Vigie's commits record row counts"))
        .sum()
}

#[tokio::test]
async fn only_rows_of_durable_records_are_flushed() {
    let lake = vigie_engine::testing::memory_lake();
    let tenant = TenantName::new("north").unwrap();
    let table = LiveTable::open(&lake, &tenant, TableKind::Audit, Arc::default())
        .await
        .unwrap();
    for position in 1..=3 {
        table.push(audit_rows(1), position);
    }
    let outcome = table.flush_upto(&lake, "log", 2).await.unwrap();
    assert_eq!((outcome.rows, outcome.wal_position), (2, Some(2)));
    assert_eq!(table.buffered().0, 1);
    assert_eq!(table.committed_wal_position("log").await.unwrap(), 2);
    let outcome = table.flush_upto(&lake, "log", 3).await.unwrap();
    assert_eq!((outcome.rows, outcome.wal_position), (1, Some(3)));
    assert_eq!(committed_rows(&lake, &tenant).await, 3);
}

#[tokio::test]
async fn rows_another_owner_of_the_log_committed_are_not_written_twice() {
    let lake = vigie_engine::testing::memory_lake();
    let tenant = TenantName::new("north").unwrap();
    // Two servers hold records 1..=4 of one log (the second replayed them after a takeover):
    // the first commits 1..=3, then the second flushes 1..=4 and 5.
    let first = LiveTable::open(&lake, &tenant, TableKind::Audit, Arc::default())
        .await
        .unwrap();
    let second = LiveTable::open(&lake, &tenant, TableKind::Audit, Arc::default())
        .await
        .unwrap();
    for position in 1..=3 {
        first.push(audit_rows(10), position);
    }
    for position in 1..=5 {
        second.push(audit_rows(10), position);
    }
    first.flush(&lake, "vigie-wal-shared").await.unwrap();
    // The second's commit conflicts (a concurrent commit of the same transaction id): it fails
    // once and drops the rows the first committed.
    let error = second.flush(&lake, "vigie-wal-shared").await.unwrap_err();
    assert!(error.to_string().contains("ransaction"), "{error}");
    assert_eq!(second.buffered().0, 20);
    let outcome = second.flush(&lake, "vigie-wal-shared").await.unwrap();
    assert_eq!((outcome.rows, outcome.wal_position), (20, Some(5)));
    assert_eq!(committed_rows(&lake, &tenant).await, 50);
}
