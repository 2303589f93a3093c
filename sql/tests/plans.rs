//! What the scans' statistics (row counts from the Delta log, plus the buffer's) buy the
//! planner: `count(*)` without reading a file, and joins that build their hash table on the
//! smaller table.

use std::sync::Arc;
use std::time::Duration;

use datafusion::physical_plan::displayable;
use vigie_engine::testing;
use vigie_engine::{Engine, EngineArgs, Tenant, WalMode};
use vigie_proto::Timestamp;
use vigie_proto::v1::{Citizen, DroneReport, WriteRequest};
use vigie_sql::SqlEngine;

fn reports(seqs: std::ops::Range<u64>) -> WriteRequest {
    WriteRequest {
        reports: seqs
            .map(|seq| DroneReport {
                drone_id: format!("d{}", seq % 7),
                seq,
                time: Some(Timestamp {
                    seconds: 1_767_225_600 + seq as i64 * 60,
                    nanos: 0,
                }),
                latitude: 48.0,
                longitude: 2.0,
                citizens: vec![Citizen {
                    name: format!("c{seq}"),
                    // One report in 50 raises an alert.
                    score: if seq % 50 == 0 { 5.0 } else { 80.0 },
                }],
                words: vec!["calme".into()],
            })
            .collect(),
    }
}

async fn plan(sql: &SqlEngine, query: &str) -> String {
    let frame = sql.plan(query).await.unwrap();
    let plan = frame.create_physical_plan().await.unwrap();
    displayable(plan.as_ref()).indent(true).to_string()
}

/// Two committed files per table, and more rows in the buffer.
async fn fixture() -> SqlEngine {
    fixture_parts().await.2
}

/// The fixture's engine and tenant too, to write and flush more.
async fn fixture_parts() -> (Engine, Arc<Tenant>, SqlEngine) {
    let lake = testing::memory_lake();
    let engine = testing::engine(EngineArgs {
        flush_interval: Duration::from_secs(3600),
        ..EngineArgs::new(lake.clone(), WalMode::Off)
    })
    .await;
    let tenant = engine.default_tenant().unwrap();
    for range in [0..2_000, 2_000..4_000] {
        tenant.write(&reports(range)).await.unwrap();
        engine.flush_all().await.unwrap();
    }
    tenant.write(&reports(4_000..4_500)).await.unwrap();
    let sql = SqlEngine::new(Arc::clone(&tenant), &lake).await.unwrap();
    (engine, tenant, sql)
}

fn pretty(batches: &[datafusion::arrow::array::RecordBatch]) -> String {
    datafusion::arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn statistics_answer_counts_and_choose_the_build_side() {
    let sql = fixture().await;

    let count = plan(&sql, "SELECT count(*) FROM reports").await;
    assert!(!count.contains("DataSourceExec"), "{count}");
    let answer = sql
        .plan("SELECT count(*) AS n FROM reports")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        pretty(&answer),
        "+------+\n| n    |\n+------+\n| 4500 |\n+------+"
    );

    let join = plan(
        &sql,
        "SELECT count(*) FROM reports r JOIN alerts a ON r.drone_id = a.drone_id AND r.seq = a.seq",
    )
    .await;
    // The build side (the join's first input) scans alerts (90 rows), not reports (4,500).
    let after_join = join
        .split_once("HashJoinExec")
        .unwrap_or_else(|| panic!("no hash join: {join}"))
        .1;
    let first_files = after_join
        .lines()
        .find(|l| l.contains("DataSourceExec") && l.contains("file_groups"))
        .unwrap_or_else(|| panic!("no file scan under the join: {join}"));
    assert!(first_files.contains("/alerts/"), "{join}");
}

#[tokio::test]
async fn filters_reach_the_parquet_scan_once() {
    let sql = fixture().await;
    let query = "SELECT seq FROM alerts WHERE citizen = 'c100'";
    let scan = plan(&sql, query).await;
    let files = scan
        .lines()
        .find(|l| l.contains("DataSourceExec") && l.contains("file_groups"))
        .unwrap_or_else(|| panic!("no file scan: {scan}"));
    // DataFusion pushes the filter into the scan for row-group, page and bloom-filter pruning;
    // the provider must not add it a second time (every file would evaluate it twice).
    let predicate = files
        .split_once("predicate=")
        .unwrap_or_else(|| panic!("no predicate on the scan: {files}"))
        .1;
    let predicate = predicate.split(", pruning_predicate=").next().unwrap();
    assert_eq!(predicate.matches("citizen@").count(), 1, "{files}");
    assert!(files.contains("pruning_predicate="), "{files}");
    let answer = sql.plan(query).await.unwrap().collect().await.unwrap();
    assert_eq!(
        pretty(&answer),
        "+-----+\n| seq |\n+-----+\n| 100 |\n+-----+"
    );
    // EXPLAIN ANALYZE shows the pruning: of the four committed files' row groups, only the one
    // whose citizen range holds 'c100' is read.
    let analyzed = sql
        .plan(&format!("EXPLAIN ANALYZE {query}"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let analyzed = pretty(&analyzed);
    assert!(
        analyzed.contains("row_groups_pruned_statistics=4 total \u{2192} 1 matched"),
        "{analyzed}"
    );
}

#[tokio::test]
async fn sightings_flatten_reports_and_filter_their_scan() {
    let sql = fixture().await;
    let query = "SELECT count(*) AS n FROM sightings WHERE drone_id = 'd3' AND citizen = 'c3'";
    let plan = plan(&sql, query).await;
    assert!(plan.contains("FlattenSightingsExec"), "{plan}");
    assert!(!plan.contains("UnnestExec"), "{plan}");
    // The filter on a report column prunes the reports scan; the one on the citizen (not a
    // column of the scan) is applied after flattening.
    let files = plan
        .lines()
        .find(|l| l.contains("DataSourceExec") && l.contains("file_groups"))
        .unwrap_or_else(|| panic!("no file scan: {plan}"));
    assert!(files.contains("predicate=drone_id@0 = d3, "), "{files}");
    let answer = sql.plan(query).await.unwrap().collect().await.unwrap();
    assert_eq!(pretty(&answer), "+---+\n| n |\n+---+\n| 1 |\n+---+");
}

/// Plans optimized once and kept by the session still read the tables as they are at each run
/// (plans with `now()`, optimized at each run: `sessions::tests`).
#[tokio::test]
async fn kept_plans_see_new_rows() {
    let (engine, tenant, sql) = fixture_parts().await;
    let counts = "SELECT count(*) AS n, count(DISTINCT drone_id) AS drones FROM reports \
                  WHERE drone_id <> 'd0' AND seq >= 1000";
    let run = |query: &'static str| {
        let sql = sql.clone();
        async move { pretty(&sql.plan(query).await.unwrap().collect().await.unwrap()) }
    };
    let table = |n: u64| {
        format!(
            "+------+--------+\n| n    | drones |\n+------+--------+\n| {n:<4} | 6      |\n+------+--------+"
        )
    };
    // 3,500 rows with seq >= 1000 (files and buffer), 500 of them on drone d0.
    assert_eq!(run(counts).await, table(3_000));
    tenant.write(&reports(4_500..5_200)).await.unwrap();
    assert_eq!(run(counts).await, table(3_600), "new buffered rows");
    engine.flush_all().await.unwrap();
    assert_eq!(run(counts).await, table(3_600), "the same rows, flushed");
}
