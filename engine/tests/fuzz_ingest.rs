//! Fuzzing the ingest path (decode → validate → dedupe → buffer → alert rules) with proptest.
//!
//! Two generators: well-typed requests with hostile values (any `u64` seq, NaN and infinite
//! coordinates, out-of-range timestamps, empty and long Unicode names), and the protobuf bytes of
//! such requests with random bytes overwritten and the tail cut. The properties: no panic, every
//! decoded report is answered exactly once (accepted, duplicate or rejected with a reason), and
//! the buffer holds exactly the accepted reports.
//!
//! Bounded for CI: 256 cases per property by default; `PROPTEST_CASES=100000` fuzzes longer.

use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use url::Url;
use vigie_engine::schema::TableKind;
use vigie_engine::store::Lake;
use vigie_engine::{Engine, EngineArgs, Tenant, WalMode};
use vigie_proto::Timestamp;
use vigie_proto::v1::{Citizen, DroneReport, WriteRequest};

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9-]{1,12}",
        any::<String>(),
        "\\PC{60,200}",
    ]
}

fn any_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        -200.0..200.0f64,
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY)
    ]
}

fn any_report() -> impl Strategy<Value = DroneReport> {
    (
        any_text(),
        prop_oneof![0..50u64, any::<u64>()],
        proptest::option::of((
            prop_oneof![1_700_000_000..1_800_000_000i64, any::<i64>()],
            prop_oneof![0..1_000_000_000i32, any::<i32>()],
        )),
        any_float(),
        any_float(),
        vec((any_text(), any_float()), 0..4),
        vec(any_text(), 0..4),
    )
        .prop_map(
            |(drone_id, seq, time, latitude, longitude, citizens, words)| DroneReport {
                drone_id,
                seq,
                time: time.map(|(seconds, nanos)| Timestamp { seconds, nanos }),
                latitude,
                longitude,
                citizens: citizens
                    .into_iter()
                    .map(|(name, score)| Citizen { name, score })
                    .collect(),
                words,
            },
        )
}

fn any_request() -> impl Strategy<Value = WriteRequest> {
    vec(any_report(), 0..6).prop_map(|reports| WriteRequest { reports })
}

/// Protobuf bytes of a request, damaged: some bytes overwritten, the tail maybe cut.
fn damaged_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        any_request(),
        vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(request, edits, cut)| {
            let mut bytes = request.encode_to_vec();
            if bytes.is_empty() {
                return bytes;
            }
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let keep = cut.index(bytes.len() + 1);
            bytes.truncate(keep.max(bytes.len() / 2));
            bytes
        })
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    engine: Engine,
}

impl Harness {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let lake = Lake::open(&Url::parse("memory:///fuzz").unwrap()).unwrap();
        let engine = runtime
            .block_on(Engine::open(
                EngineArgs {
                    flush_interval: Duration::from_secs(3600),
                    flush_rows: usize::MAX,
                    max_buffer_bytes: usize::MAX,
                    alert_rules: vec![
                        ("low".into(), "score < 20".into()),
                        ("words".into(), "array_has(words, 'emeute')".into()),
                    ],
                    ..EngineArgs::new(lake, WalMode::Off)
                },
                Vec::new(),
            ))
            .unwrap();
        Self { runtime, engine }
    }

    fn buffered_reports(tenant: &Tenant) -> usize {
        tenant
            .snapshot(TableKind::Reports)
            .buffered
            .iter()
            .map(|b| b.num_rows())
            .sum()
    }

    /// Writes `request`; every report is answered once and the buffer grows by the accepted.
    fn check(&self, request: &WriteRequest) -> Result<(), TestCaseError> {
        let tenant = self.engine.default_tenant().unwrap();
        let before = Self::buffered_reports(&tenant);
        let answer = self
            .runtime
            .block_on(tenant.write(request))
            .map_err(|e| TestCaseError::fail(format!("write failed: {e}")))?;
        let answered =
            answer.accepted as usize + answer.duplicates as usize + answer.rejected.len();
        prop_assert_eq!(answered, request.reports.len());
        for r in &answer.rejected {
            prop_assert!((r.index as usize) < request.reports.len());
            prop_assert!(!r.reason.is_empty());
        }
        prop_assert_eq!(
            Self::buffered_reports(&tenant) - before,
            answer.accepted as usize
        );
        Ok(())
    }
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn hostile_requests_are_answered_report_by_report() {
    let harness = Harness::new();
    runner()
        .run(&any_request(), |request| harness.check(&request))
        .unwrap();
}

#[test]
fn damaged_protobuf_never_panics() {
    let harness = Harness::new();
    runner()
        .run(&damaged_bytes(), |bytes| {
            match WriteRequest::decode(bytes.as_slice()) {
                Ok(request) => harness.check(&request),
                // tonic answers INVALID_ARGUMENT for undecodable messages.
                Err(_) => Ok(()),
            }
        })
        .unwrap();
}
