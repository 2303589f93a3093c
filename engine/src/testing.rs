//! Fixtures for the tests of this crate and of the crates above it (feature `test-util`): one
//! place that builds reports and engines on an in-memory lake.

use std::time::Duration;

use url::Url;
use vigie_proto::Timestamp;
use vigie_proto::v1::{Citizen, DroneReport, WriteRequest};

use crate::store::Lake;
use crate::{Engine, EngineArgs, WalMode};

/// 2026-01-01T00:00:00Z, in seconds: the time of the fixtures' first reports.
pub const NEW_YEAR_2026: i64 = 1_767_225_600;

/// A report of `drone_id` at `seconds` since the epoch, over Paris (48.85, 2.35), with
/// `citizens` as `(name, score)` and `words`.
pub fn report(
    drone_id: &str,
    seq: u64,
    seconds: i64,
    citizens: &[(&str, f64)],
    words: &[&str],
) -> DroneReport {
    DroneReport {
        drone_id: drone_id.into(),
        seq,
        time: Some(Timestamp { seconds, nanos: 0 }),
        latitude: 48.85,
        longitude: 2.35,
        citizens: citizens
            .iter()
            .map(|(name, score)| Citizen {
                name: (*name).into(),
                score: *score,
            })
            .collect(),
        words: words.iter().map(|w| (*w).into()).collect(),
    }
}

/// A request carrying `reports`.
pub fn request(reports: impl IntoIterator<Item = DroneReport>) -> WriteRequest {
    WriteRequest {
        reports: reports.into_iter().collect(),
    }
}

/// A fresh in-memory lake (`memory:///lake`; each call is a new, empty store).
pub fn memory_lake() -> Lake {
    Lake::open(&Url::parse("memory:///lake").expect("a valid URL")).expect("a memory lake")
}

/// Arguments on `lake` with `wal` whose buffers flush only when the test calls
/// [`Engine::flush_all`].
pub fn manual_flush(lake: Lake, wal: WalMode) -> EngineArgs {
    EngineArgs {
        flush_interval: Duration::from_secs(3600),
        flush_rows: usize::MAX,
        ..EngineArgs::new(lake, wal)
    }
}

/// An engine with only the `default` tenant, opened with `args`.
pub async fn engine(args: EngineArgs) -> Engine {
    Engine::open(args, Vec::new())
        .await
        .expect("the engine opens")
}
