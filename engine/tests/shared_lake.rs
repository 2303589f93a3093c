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
