//! Runs the `.slt` files under `tests/slt/` against a [`SqlEngine`] over a fixed data set, part of
//! it committed to Delta (on an in-memory object store) and part still buffered, so every query
//! also checks that the two halves are read together exactly once.

use std::path::PathBuf;
use std::time::Duration;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::TryStreamExt;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use vigie_engine::testing;
use vigie_engine::{EngineArgs, WalMode};
use vigie_proto::Timestamp;
use vigie_proto::v1::{Citizen, DroneReport, WriteRequest};
use vigie_sql::SqlEngine;

#[derive(Clone)]
struct Db(SqlEngine);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DbError(String);

#[async_trait::async_trait]
impl AsyncDB for Db {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let frame = self.0.plan(sql).await.map_err(|e| DbError(e.to_string()))?;
        let schema = frame.schema().as_arrow().clone();
        let batches: Vec<RecordBatch> = frame
            .execute_stream()
            .await
            .map_err(|e| DbError(e.to_string()))?
            .try_collect()
            .await
            .map_err(|e| DbError(e.to_string()))?;
        let types = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::UInt64 => DefaultColumnType::Integer,
                DataType::Float32 | DataType::Float64 => DefaultColumnType::FloatingPoint,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                    DefaultColumnType::Text
                }
                _ => DefaultColumnType::Any,
            })
            .collect();
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in &batches {
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| DbError(e.to_string()))?;
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .zip(batch.columns())
                        .map(|(f, c)| {
                            let s = f.value(row).to_string();
                            if c.is_valid(row) && s.is_empty() {
                                "(empty)".to_string()
                            } else {
                                s
                            }
                        })
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "vigie"
    }
}

fn report(
    drone: &str,
    seq: u64,
    time: &str,
    citizens: &[(&str, f64)],
    words: &[&str],
) -> DroneReport {
    let t = chrono::DateTime::parse_from_rfc3339(time).expect("fixture time");
    DroneReport {
        drone_id: drone.into(),
        seq,
        time: Some(Timestamp {
            seconds: t.timestamp(),
            nanos: 0,
        }),
        latitude: 48.85 + seq as f64 / 100.0,
        longitude: 2.35,
        citizens: citizens
            .iter()
            .map(|(n, s)| Citizen {
                name: (*n).into(),
                score: *s,
            })
            .collect(),
        words: words.iter().map(|w| (*w).to_string()).collect(),
    }
}

async fn fixture() -> SqlEngine {
    let engine = testing::engine(EngineArgs {
        flush_interval: Duration::from_secs(3600),
        ..EngineArgs::new(testing::memory_lake(), WalMode::Off)
    })
    .await;
    let tenant = engine.default_tenant().unwrap();
    let first = WriteRequest {
        reports: vec![
            report(
                "a",
                1,
                "2026-01-01T10:00:00Z",
                &[("Ana", 12.5), ("Bruno", 80.0)],
                &["emeute", "feu"],
            ),
            report("a", 2, "2026-01-01T10:01:00Z", &[], &[]),
            report(
                "b",
                1,
                "2026-01-02T08:00:00Z",
                &[("Chloé", 55.0)],
                &["calme"],
            ),
        ],
    };
    assert_eq!(tenant.write(&first).await.unwrap().accepted, 3);
    // 3 reports, the alert Ana (12.5) raised, and 3 rollup rows.
    assert_eq!(engine.flush_all().await.unwrap(), 7);
    let second = WriteRequest {
        reports: vec![
            report(
                "b",
                2,
                "2026-01-02T08:01:00Z",
                &[("Ana", 19.9), ("David", 70.0)],
                &["police"],
            ),
            report("c", 7, "2026-01-03T00:00:00Z", &[("Emma", 99.0)], &[]),
            report("a", 1, "2026-01-01T10:00:00Z", &[], &[]),
        ],
    };
    let answer = tenant.write(&second).await.unwrap();
    assert_eq!((answer.accepted, answer.duplicates), (2, 1));
    SqlEngine::new(tenant, engine.lake()).await.unwrap()
}

/// How many committed Parquet files the physical plan of `sql` reads.
async fn files_read(sql: &SqlEngine, query: &str) -> usize {
    let plan = sql
        .plan(query)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string()
        .matches(".parquet")
        .count()
}

/// Filters on `time` or `day` read only the files of the days they allow (the committed part of
/// the fixture has one file for 2026-01-01 and one for 2026-01-02).
async fn check_day_pruning(sql: &SqlEngine) {
    for (query, expected) in [
        // Answered from the Delta log's row counts: no file is opened.
        ("SELECT count(*) FROM reports", 0),
        ("SELECT max(seq) FROM reports", 2),
        ("SELECT count(*) FROM reports WHERE drone_id = 'a'", 2),
        (
            "SELECT count(*) FROM reports WHERE time >= '2026-01-02T00:00:00Z'",
            1,
        ),
        (
            "SELECT count(*) FROM reports WHERE time < '2026-01-01T23:59:59Z'",
            1,
        ),
        (
            "SELECT count(*) FROM reports WHERE day = DATE '2026-01-02'",
            1,
        ),
        (
            "SELECT count(*) FROM reports WHERE time BETWEEN '2026-01-01T10:00:00Z' AND '2026-01-01T11:00:00Z'",
            1,
        ),
        (
            "SELECT count(*) FROM reports WHERE time < '2025-06-01T00:00:00Z'",
            0,
        ),
        (
            "SELECT count(*) FROM sightings WHERE time >= '2026-01-02T00:00:00Z'",
            1,
        ),
    ] {
        let got = files_read(sql, query).await;
        assert_eq!(
            got, expected,
            "{query}: read {got} files, expected {expected}"
        );
    }
    println!("ok   day pruning");
}

#[tokio::main]
async fn main() {
    let db = Db(fixture().await);
    check_day_pruning(&db.0).await;
    // The run-time value first: cargo sets it when running tests, and it follows the checkout even
    // when this binary was compiled from another one sharing the target dir.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let dir = manifest_dir.join("tests/slt");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    let mut failed = 0;
    for file in &files {
        let db = db.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let db = db.clone();
            async move { Ok::<_, DbError>(db) }
        });
        match runner.run_file_async(file).await {
            Ok(()) => println!("ok   {}", file.display()),
            Err(e) => {
                failed += 1;
                println!("FAIL {}\n{e}", file.display());
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} .slt files failed", files.len());
        std::process::exit(1);
    }
}
