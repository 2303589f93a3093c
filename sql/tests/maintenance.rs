//! Compaction, retention and vacuum keep every SQL answer identical (row for row) except for
//! the days retention expires, bound the files of a closed day, and delete removed files.

use std::time::Duration;

use chrono::{DateTime, Utc};
use datafusion::arrow::util::pretty::pretty_format_batches;
use deltalake::parquet::basic::Encoding;
use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use vigie_engine::compaction::{MaintenanceArgs, maintain};
use vigie_engine::schema::TableKind;
use vigie_engine::store::Lake;
use vigie_engine::testing;
use vigie_engine::{Engine, EngineArgs, WalMode};
use vigie_proto::Timestamp;
use vigie_proto::v1::{Citizen, DroneReport, WriteRequest};
use vigie_sql::SqlEngine;

const DAYS: [&str; 3] = ["2026-01-01", "2026-01-02", "2026-01-03"];

/// Flush `round` of the fleet: every drone reports once on each day.
fn round(round: u64) -> WriteRequest {
    let mut reports = Vec::new();
    for (d, day) in DAYS.iter().enumerate() {
        for drone in ["a", "b", "c"] {
            let seq = round * 10 + d as u64;
            let t: DateTime<Utc> = format!("{day}T{:02}:00:00Z", 8 + round).parse().unwrap();
            reports.push(DroneReport {
                drone_id: drone.into(),
                seq,
                time: Some(Timestamp {
                    seconds: t.timestamp(),
                    nanos: 0,
                }),
                latitude: 48.0 + seq as f64 / 100.0,
                longitude: 2.0,
                citizens: vec![
                    Citizen {
                        name: format!("citizen-{drone}{seq}"),
                        score: (seq * 7 % 40) as f64,
                    },
                    Citizen {
                        name: "Ana".into(),
                        score: 90.0,
                    },
                ],
                words: vec!["calme".into(), format!("w{seq}")],
            });
        }
    }
    WriteRequest { reports }
}

const QUESTIONS: [&str; 6] = [
    "SELECT hour, drone_id, cell, sum(reports), sum(sightings), sum(low_score_sightings), \
     min(min_score) FROM reports_hourly GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    "SELECT day, count(*), sum(seq) FROM reports GROUP BY day ORDER BY day",
    "SELECT drone_id, seq, time, latitude, citizens, words, day FROM reports ORDER BY drone_id, seq",
    "SELECT citizen, score, drone_id, seq FROM sightings WHERE score < 20 ORDER BY citizen",
    "SELECT id, rule, drone_id, seq, citizen, score, day FROM alerts ORDER BY id",
    "SELECT drone_id, count(*) FROM sightings WHERE citizen = 'Ana' GROUP BY drone_id ORDER BY 1",
];

async fn answers_of(sql: &SqlEngine, query: &str) -> String {
    let batches: Vec<_> = sql
        .plan(query)
        .await
        .unwrap()
        .execute_stream()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

async fn answers(sql: &SqlEngine) -> Vec<String> {
    let mut out = Vec::new();
    for q in QUESTIONS {
        out.push(answers_of(sql, q).await);
    }
    out
}

/// Parquet files on storage under the table's directory.
async fn stored_files(lake: &Lake, table: &str) -> Vec<object_store::path::Path> {
    lake.root_store
        .list(None)
        .map_ok(|m| m.location)
        .try_filter(|p| {
            let p = p.to_string();
            futures::future::ready(
                p.contains(&format!("/tables/{table}/")) && p.ends_with(".parquet"),
            )
        })
        .try_collect()
        .await
        .unwrap()
}

fn files_per_day(engine: &Engine, kind: TableKind) -> Vec<usize> {
    let snapshot = engine.default_tenant().unwrap().snapshot(kind);
    let mut counts = std::collections::BTreeMap::<i32, usize>::new();
    for f in snapshot.files.iter() {
        *counts.entry(f.day).or_default() += 1;
    }
    counts.into_values().collect()
}

#[tokio::test]
async fn compaction_retention_and_vacuum() {
    let lake = testing::memory_lake();
    let engine = testing::engine(EngineArgs {
        dedupe_window: Duration::from_secs(30 * 86_400),
        ..testing::manual_flush(lake.clone(), WalMode::Off)
    })
    .await;
    let tenant = engine.default_tenant().unwrap();
    for r in 0..4 {
        assert_eq!(tenant.write(&round(r)).await.unwrap().accepted, 9);
        engine.flush_all().await.unwrap();
    }
    let sql = SqlEngine::new(tenant.clone(), engine.lake()).await.unwrap();
    let before = answers(&sql).await;
    assert_eq!(files_per_day(&engine, TableKind::Reports), vec![4, 4, 4]);
    assert!(before[4].contains("low_score"), "{}", before[4]);
    // The rollup counts what the raw reports hold.
    let raw = answers_of(
        &sql,
        "SELECT date_trunc('hour', time) AS hour, drone_id, count(*) FROM reports \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .await;
    let rolled = answers_of(
        &sql,
        "SELECT hour, drone_id, sum(reports) AS \"count(*)\" FROM reports_hourly \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .await;
    assert_eq!(rolled, raw);

    // Compaction on 2026-01-03 at noon: the two closed days become one file each.
    let args = MaintenanceArgs {
        target_file_bytes: 256 << 20,
        retention: None,
        vacuum_after: Duration::ZERO,
        now: "2026-01-03T12:00:00Z".parse().unwrap(),
    };
    let report = maintain(&lake, tenant.table(TableKind::Reports), &args)
        .await
        .unwrap();
    assert_eq!(report.days_compacted.len(), 2, "{report:?}");
    assert_eq!((report.files_removed, report.files_added), (8, 2));
    assert_eq!(report.files_vacuumed, 8);
    for kind in [TableKind::Alerts, TableKind::Hourly] {
        maintain(&lake, tenant.table(kind), &args).await.unwrap();
    }
    assert_eq!(files_per_day(&engine, TableKind::Reports), vec![1, 1, 4]);
    assert_eq!(files_per_day(&engine, TableKind::Hourly), vec![1, 1, 4]);
    assert_eq!(answers(&sql).await, before, "compaction changed an answer");
    // Removed files are gone from storage; what remains is what the table lists.
    assert_eq!(stored_files(&lake, "reports").await.len(), 6);
    // A second run finds nothing to do.
    let again = maintain(&lake, tenant.table(TableKind::Reports), &args)
        .await
        .unwrap();
    assert!(again.days_compacted.is_empty(), "{again:?}");

    // The compacted files carry a bloom filter on the citizen's name.
    let snapshot = tenant.snapshot(TableKind::Reports);
    let compacted = snapshot.files.iter().find(|f| f.day == 20_454).unwrap();
    let bytes = lake
        .root_store
        .get(&compacted.path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let reader = SerializedFileReader::new(bytes).unwrap();
    let row_group = reader.metadata().row_group(0);
    let chunk = |path: &str| {
        row_group
            .columns()
            .iter()
            .find(|c| c.column_path().string() == path)
            .unwrap_or_else(|| panic!("no column chunk {path}"))
    };
    let name = chunk("citizens.list.element.name");
    assert!(name.bloom_filter_offset().is_some(), "no bloom filter");
    // Distinct-valued columns are delta-encoded or split, without a dictionary; the others keep one.
    let encodings = |path: &str| {
        let chunk = chunk(path);
        (
            chunk.dictionary_page_offset().is_some(),
            chunk.encodings().collect::<Vec<_>>(),
        )
    };
    for (path, expected) in [
        ("time", Encoding::DELTA_BINARY_PACKED),
        ("latitude", Encoding::BYTE_STREAM_SPLIT),
        ("longitude", Encoding::BYTE_STREAM_SPLIT),
    ] {
        let (dictionary, used) = encodings(path);
        assert!(!dictionary && used.contains(&expected), "{path}: {used:?}");
    }
    let (dictionary, used) = encodings("drone_id");
    assert!(
        dictionary && used.contains(&Encoding::RLE_DICTIONARY),
        "{used:?}"
    );

    // Retention of 36 h at noon on the 3rd: the 1st has ended more than 36 h ago and goes.
    let retention = MaintenanceArgs {
        retention: Some(Duration::from_secs(36 * 3600)),
        ..args
    };
    // The audit log has no rows on those days.
    for kind in [TableKind::Reports, TableKind::Alerts, TableKind::Hourly] {
        let report = maintain(&lake, tenant.table(kind), &retention)
            .await
            .unwrap();
        assert_eq!(
            report.days_expired,
            vec!["2026-01-01".parse().unwrap()],
            "{kind:?}"
        );
    }
    let after = answers(&sql).await;
    assert!(
        !after[0].contains("2026-01-01") && after[0].contains("2026-01-02"),
        "{}",
        after[0]
    );
    assert!(!after[1].contains("2026-01-01"), "{}", after[1]);
    // The kept days answer exactly as before.
    let kept: Vec<&str> = before[0]
        .lines()
        .filter(|l| !l.contains("2026-01-01"))
        .collect();
    assert_eq!(after[0].lines().collect::<Vec<_>>(), kept);
    assert_eq!(stored_files(&lake, "reports").await.len(), 5);
}
