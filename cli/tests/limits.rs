//! End-to-end: no SQL statement takes the server down. Runaway statements of every class (values
//! built by functions, recursion, cross and non-equi joins, huge lists, aggregation state) are
//! refused or cancelled within their limit, alone and several at once; the server's memory stays
//! under a bound derived from its settings; drones' writes keep being acknowledged quickly; SIGTERM
//! during the attack exits 0 in time, with the cancelled queries audited and every acknowledged
//! report kept.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use arrow_flight::error::FlightError;
use common::{Server, report};
use tonic::Code;
use vigie_proto::v1::WriteRequest;

const QUERY_MEMORY: usize = 256 << 20;
const QUERIES_MEMORY: usize = 1 << 30;
const BUFFER: usize = 256 << 20;
const TIMEOUT: Duration = Duration::from_secs(4);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// What the process holds besides queries and the buffer (a debug build, its runtimes, DataFusion
/// sessions, one tenant's tables); measured at about 60-90 MiB idle.
const BASELINE: u64 = 512 << 20;

/// The bound of the server's resident memory: the baseline, a full buffer, the operator state of
/// every admitted query (bounded by the pools), and as much again for values in flight (each
/// function output and each batch is bounded by a query's limit).
fn rss_bound() -> u64 {
    BASELINE + BUFFER as u64 + 2 * QUERIES_MEMORY as u64
}

const EXHAUSTED: &[Code] = &[Code::ResourceExhausted];
const DEADLINE: &[Code] = &[Code::DeadlineExceeded];
const EITHER: &[Code] = &[Code::ResourceExhausted, Code::DeadlineExceeded];

/// The statements, and how each may end.
fn attacks() -> Vec<(String, &'static [Code])> {
    let in_list = (0..200_000).map(|i| i.to_string()).collect::<Vec<_>>();
    let values = (0..100_000)
        .map(|i| format!("({i}, 'v{i}')"))
        .collect::<Vec<_>>();
    [
        ("SELECT repeat('x', 1000000000)", EXHAUSTED),
        ("SELECT length(lpad('x', 2000000000, 'ab'))", EXHAUSTED),
        ("SELECT cardinality(array_repeat(1, 500000000))", EXHAUSTED),
        ("SELECT cardinality(range(1, 10000000000))", EXHAUSTED),
        (
            "SELECT count(*) FROM (SELECT unnest(generate_series(1, 100000000000)))",
            EXHAUSTED,
        ),
        (
            "SELECT length(regexp_replace(repeat('x', 10000000), 'x', 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy', 'g'))",
            EITHER,
        ),
        (
            "SELECT max(length(s)) FROM (SELECT repeat('x', 10000000) AS s FROM generate_series(1, 1000))",
            EXHAUSTED,
        ),
        (
            "SELECT length(string_agg(repeat('x', 1000), ',')) FROM generate_series(1, 100000000)",
            EITHER,
        ),
        (
            "SELECT cardinality(array_agg(value)) FROM generate_series(1, 1000000000)",
            EITHER,
        ),
        (
            "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t",
            EITHER,
        ),
        (
            "WITH RECURSIVE t(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM t) SELECT max(length(s)) FROM t",
            EITHER,
        ),
        (
            "SELECT count(*) FROM generate_series(1, 1000000000000)",
            DEADLINE,
        ),
        (
            "SELECT count(*) FROM reports a, reports b, reports c WHERE a.seq <> b.seq",
            EITHER,
        ),
        (
            "SELECT count(*) FROM generate_series(1, 1000000) a CROSS JOIN generate_series(1, 1000000) b",
            EITHER,
        ),
        (
            "SELECT count(*) FROM generate_series(1, 100000) a JOIN generate_series(1, 100000) b \
             ON a.value % 7 < b.value % 11",
            EITHER,
        ),
        (
            "SELECT max(r) FROM (SELECT row_number() OVER (ORDER BY random()) AS r \
             FROM generate_series(1, 100000000))",
            EITHER,
        ),
    ]
    .into_iter()
    .map(|(sql, codes)| (sql.to_string(), codes))
    .chain([
        (
            format!(
                "SELECT count(*) FROM generate_series(1, 100000000000) WHERE value IN ({})",
                in_list.join(",")
            ),
            DEADLINE,
        ),
        (
            format!(
                "SELECT count(*) FROM (VALUES {}) v(a, b) CROSS JOIN generate_series(1, 1000000000)",
                values.join(",")
            ),
            EITHER,
        ),
    ])
    .collect()
}

/// How a statement ended: the status code, after how long.
async fn attack(server: &Server, sql: &str) -> (Result<Vec<RecordBatch>, Code>, Duration) {
    let started = Instant::now();
    let result = server.query(sql).await.map_err(|e| match e {
        FlightError::Tonic(status) => status.code(),
        other => panic!("{sql:.80}: not a gRPC status: {other}"),
    });
    (result, started.elapsed())
}

fn check(sql: &str, codes: &[Code], outcome: &(Result<Vec<RecordBatch>, Code>, Duration)) {
    let (result, elapsed) = outcome;
    match result {
        Ok(_) => panic!("{sql:.100}: answered instead of {codes:?}"),
        Err(code) => assert!(codes.contains(code), "{sql:.100}: {code:?}, not {codes:?}"),
    }
    assert!(
        *elapsed <= TIMEOUT + Duration::from_secs(1),
        "{sql:.100}: ended after {elapsed:?}, limit {TIMEOUT:?} + 1 s"
    );
}

/// Samples the process's resident memory (VmRSS) every 50 ms; the peak, in bytes.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(rss) = rss(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Writes one report every 20 ms until `stop`; each acknowledgement's latency. Reports are
/// numbered from `first_seq`.
async fn drone_writes(server: &Server, first_seq: u64, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut ingest = server.ingest().await;
    let mut latencies = Vec::new();
    let mut seq = first_seq;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let answer = ingest
            .write(WriteRequest {
                reports: vec![report("probe", seq, &[("someone", 80.0)])],
            })
            .await
            .expect("a drone's write is acknowledged during the attack")
            .into_inner();
        assert_eq!(answer.accepted, 1);
        latencies.push(started.elapsed());
        seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies
}

fn count(batches: &[RecordBatch]) -> i64 {
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_statement_takes_the_server_down() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let limits = [
        "--query-memory-bytes".to_string(),
        QUERY_MEMORY.to_string(),
        "--queries-memory-bytes".into(),
        QUERIES_MEMORY.to_string(),
        "--max-buffer-bytes".into(),
        BUFFER.to_string(),
        "--query-timeout".into(),
        format!("{}s", TIMEOUT.as_secs()),
        "--shutdown-timeout".into(),
        format!("{}s", SHUTDOWN_TIMEOUT.as_secs()),
    ];
    let args: Vec<&str> = limits.iter().map(String::as_str).collect();
    let server = Server::start(&data, &args);
    let mut ingest = server.ingest().await;
    let fleet: Vec<_> = (0..2_000)
        .map(|i| {
            report(
                &format!("d{}", i % 20),
                i / 20,
                &[("ana", 50.0), ("bob", 10.0)],
            )
        })
        .collect();
    let written = ingest
        .write(WriteRequest { reports: fleet })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(written.accepted, 2_000);
    let sampler = RssSampler::start(server.pid());

    // Each statement alone.
    for (sql, codes) in attacks() {
        let outcome = attack(&server, &sql).await;
        check(&sql, codes, &outcome);
    }

    // Six at once from the same analyst, while a drone writes.
    let stop = Arc::new(AtomicBool::new(false));
    let drone = drone_writes(&server, 1_000_000, stop.clone());
    let server_ref = &server;
    let storm = async move {
        let attacks = attacks();
        let chosen = [0, 7, 9, 11, 12, 15];
        let outcomes = futures::future::join_all(chosen.iter().map(|&i| {
            let sql = &attacks[i].0;
            async move { attack(server_ref, sql).await }
        }))
        .await;
        for (i, outcome) in chosen.iter().zip(&outcomes) {
            let (sql, codes) = &attacks[*i];
            // Beyond the memory all queries may reserve, a statement is refused at admission;
            // one that waits for a query thread behind the others may reach its deadline first.
            let _ = codes;
            check(sql, EITHER, outcome);
        }
        stop.store(true, Ordering::Relaxed);
    };
    let (mut latencies, ()) = tokio::join!(drone, storm);
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = *latencies.last().unwrap();
    assert!(
        p99 < Duration::from_millis(250) && max < Duration::from_secs(1),
        "drone acknowledgements during the attack: p99 {p99:?}, max {max:?} over {} writes",
        latencies.len()
    );
    let acknowledged = 2_000 + latencies.len() as i64;

    let peak = sampler.peak();
    assert!(
        peak < rss_bound(),
        "peak RSS {} MiB over the bound of {} MiB",
        peak >> 20,
        rss_bound() >> 20
    );
    eprintln!(
        "peak RSS {} MiB (bound {} MiB); drone acks p99 {p99:?} max {max:?}",
        peak >> 20,
        rss_bound() >> 20
    );

    // The next normal query answers correctly. Cancelled queries stop at their operators' next
    // batch, which a nested-loop join reaches only seconds later: until then they keep the query
    // threads busy, so the next query may itself run out of time (retried, as a client would).
    let after = Instant::now();
    let total = loop {
        match server.query("SELECT count(*) FROM reports").await {
            Ok(total) => break total,
            Err(FlightError::Tonic(s)) if s.code() == Code::DeadlineExceeded => {
                assert!(
                    after.elapsed() < Duration::from_secs(120),
                    "no answer after the attack"
                );
            }
            Err(e) => panic!("a normal query after the attack: {e}"),
        }
    };
    eprintln!(
        "first normal query after the attack answered after {:?}",
        after.elapsed()
    );
    assert_eq!(count(&total), acknowledged);

    // SIGTERM while runaway statements run: exit 0 in time.
    let runaway = "SELECT count(*) FROM generate_series(1, 1000000000000)";
    let queries: Vec<_> = (0..3)
        .map(|_| {
            let url = server.url();
            tokio::spawn(async move {
                let channel = tonic::transport::Channel::from_shared(url)
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
                let Ok(info) = client.execute(runaway.to_string(), None).await else {
                    return;
                };
                let ticket = info.endpoint[0].ticket.clone().unwrap();
                if let Ok(stream) = client.do_get(ticket).await {
                    let _ = futures::TryStreamExt::try_collect::<Vec<_>>(stream).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let stopping = Instant::now();
    let status = server.terminate();
    let took = stopping.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < SHUTDOWN_TIMEOUT + Duration::from_secs(2),
        "SIGTERM took {took:?} to exit"
    );
    for query in queries {
        query.await.unwrap();
    }

    // Nothing acknowledged is lost; the cancelled queries are audited as such.
    let server = Server::start(&data, &args);
    let total = server.query("SELECT count(*) FROM reports").await.unwrap();
    assert_eq!(count(&total), acknowledged);
    let cancelled = server
        .query(&format!(
            "SELECT count(*) FROM audit_log WHERE detail = '{runaway}' \
             AND outcome LIKE 'cancelled: the server is shutting down%'"
        ))
        .await
        .unwrap();
    assert!(
        count(&cancelled) >= 1,
        "no query audited as cancelled by the shutdown"
    );
    let timed_out = server
        .query(
            "SELECT count(*) FROM audit_log \
             WHERE outcome LIKE 'cancelled: the query ran longer than the limit%'",
        )
        .await
        .unwrap();
    assert!(count(&timed_out) >= 1);
}
