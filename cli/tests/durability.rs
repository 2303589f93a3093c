//! Durability end to end: SIGKILL under load, torn WAL tails, retries after restarts.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use common::{Server, files_under, report};
use vigie_proto::v1::WriteRequest;

/// A tiny deterministic generator (the test must be reproducible).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn keys(batches: &[RecordBatch]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for b in batches {
        let drones = b.column(0).as_string::<i32>();
        let seqs = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.push((drones.value(i).to_string(), seqs.value(i) as u64));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_reports_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acked: Arc<Mutex<HashSet<(String, u64)>>> = Arc::default();
    let mut rng = Lcg(7);
    let mut next_seq = [0u64; 8];
    let mut sent: Vec<WriteRequest> = Vec::new();
    for round in 0..6 {
        // Frequent small flushes, so that kills also land during Parquet writes and commits.
        // Report times advance a minute per seq: at this rate drones cover weeks, so the dedupe
        // window must cover them too (outside it, a retry may be stored twice, by design).
        let server = Server::start(
            &data,
            &[
                "--flush-interval",
                "150ms",
                "--flush-rows",
                "3000",
                "--dedupe-window",
                "3650d",
            ],
        );
        let run_for = Duration::from_millis(300 + rng.next(900));
        let client = server.ingest().await;
        // Calls wait while the server replays its WAL: the load starts once it serves.
        client
            .clone()
            .write(WriteRequest::default())
            .await
            .expect("the server serves after its WAL replay");
        let began = Instant::now();
        let mut writers = Vec::new();
        while began.elapsed() < run_for {
            // New reports for a few drones, or a retry of an earlier request.
            let request = if !sent.is_empty() && rng.next(4) == 0 {
                sent[rng.next(sent.len() as u64) as usize].clone()
            } else {
                let mut reports = Vec::new();
                for _ in 0..(50 + rng.next(150)) {
                    let d = rng.next(8) as usize;
                    reports.push(report(&format!("drone-{d}"), next_seq[d], &[("Ana", 10.0)]));
                    next_seq[d] += 1;
                }
                // Shuffle a little: arrival order must not matter.
                let n = reports.len();
                reports.swap(0, n - 1);
                WriteRequest { reports }
            };
            sent.push(request.clone());
            let mut c = client.clone();
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                if let Ok(answer) = c.write(request.clone()).await {
                    let answer = answer.into_inner();
                    assert_eq!(
                        (answer.accepted + answer.duplicates) as usize,
                        request.reports.len()
                    );
                    let mut acked = acked.lock().unwrap();
                    for r in &request.reports {
                        acked.insert((r.drone_id.clone(), r.seq));
                    }
                }
            }));
            if writers.len() % 4 == 0 {
                tokio::time::sleep(Duration::from_millis(rng.next(5))).await;
            }
        }
        server.kill();
        for w in writers {
            w.await.unwrap();
        }
        drop(client);
        eprintln!(
            "round {round}: {} acknowledged so far",
            acked.lock().unwrap().len()
        );
    }

    let server = Server::start(
        &data,
        &["--flush-interval", "1h", "--dedupe-window", "3650d"],
    );
    let rows = keys(
        &server
            .query("SELECT drone_id, seq FROM reports")
            .await
            .unwrap(),
    );
    let mut stored: HashSet<_> = rows.iter().cloned().collect();
    assert_eq!(rows.len(), stored.len(), "a report is stored twice");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 1000, "too little load: {}", acked.len());
    let missing: Vec<_> = acked.difference(&stored).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged reports are missing, e.g. {missing:?}",
        acked.difference(&stored).count()
    );
    // Every stored report (Ana at 10) raised exactly one alert, ids dense from 1.
    let n = rows.len();
    assert_eq!(
        server
            .table(&format!(
                "SELECT count(*) = {n} AS all_raised, count(DISTINCT id) = count(*) AS unique, \
                 min(id) = 1 AS from_one, max(id) = count(*) AS dense, \
                 count(DISTINCT drone_id || ':' || seq) = count(*) AS one_each FROM alerts"
            ))
            .await,
        "+------------+--------+----------+-------+----------+\n\
         | all_raised | unique | from_one | dense | one_each |\n\
         +------------+--------+----------+-------+----------+\n\
         | true       | true   | true     | true  | true     |\n\
         +------------+--------+----------+-------+----------+"
    );
    // Every retry after the restarts is a duplicate; what was never stored is stored now.
    let mut client = server.ingest().await;
    for request in sent.iter().step_by(7) {
        let answer = client.write(request.clone()).await.unwrap().into_inner();
        let known = request
            .reports
            .iter()
            .filter(|r| !stored.insert((r.drone_id.clone(), r.seq)))
            .count();
        assert_eq!(answer.duplicates as usize, known);
        assert_eq!(answer.accepted as usize, request.reports.len() - known);
    }
    // Once everything is flushed, the rollup counts each stored report once, although kills fell
    // between the reports commit and the rollup commit.
    assert!(server.terminate().success());
    let server = Server::start(&data, &["--flush-interval", "1h"]);
    assert_eq!(
        server
            .table(
                "SELECT (SELECT count(*) FROM reports) = (SELECT sum(reports) FROM reports_hourly) \
                 AS rollup_exact"
            )
            .await,
        "+--------------+\n\
         | rollup_exact |\n\
         +--------------+\n\
         | true         |\n\
         +--------------+"
    );
}

#[tokio::test]
async fn torn_wal_tail_is_cut_and_complete_records_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Nothing is flushed: after the kill, the reports exist only in the WAL.
    let server = Server::start(&data, &["--flush-interval", "1h"]);
    let mut client = server.ingest().await;
    for i in 0..20u64 {
        let request = WriteRequest {
            reports: (0..10).map(|k| report("w", i * 10 + k, &[])).collect(),
        };
        assert_eq!(
            client.write(request).await.unwrap().into_inner().accepted,
            10
        );
    }
    server.kill();

    let segments: Vec<_> = files_under(&data.join("wal"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    // The last batch's end marker (a zero header) follows the last record.
    let n = bytes.len() - 24;
    assert!(bytes[n..].iter().all(|b| *b == 0), "end marker");
    bytes[n - 5] ^= 0x5a; // garble the last record
    bytes.truncate(n);
    bytes.extend_from_slice(b"torn"); // and a partial header in place of the marker
    std::fs::write(&segments[0], &bytes).unwrap();

    let server = Server::start(&data, &["--flush-interval", "1h"]);
    assert_eq!(
        server
            .table("SELECT count(*) AS n, max(seq) AS top FROM reports")
            .await,
        "+-----+-----+\n\
         | n   | top |\n\
         +-----+-----+\n\
         | 190 | 189 |\n\
         +-----+-----+"
    );
    let log = server.log_text();
    assert!(log.contains("cut off a torn or corrupt tail"), "{log}");
    assert!(log.contains("checksum mismatch"), "{log}");
    // The lost record was never acknowledged twice: it can be written again.
    let answer = server
        .ingest()
        .await
        .write(WriteRequest {
            reports: (190..200).map(|s| report("w", s, &[])).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.accepted, 10);
}

#[tokio::test]
async fn a_full_buffer_refuses_streamed_writes_with_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing is flushed and the buffer holds at most 1 MiB: the stream must be refused, not grow.
    let server = Server::start(
        &dir.path().join("d"),
        &["--flush-interval", "1h", "--max-buffer-bytes", "1048576"],
    );
    let requests = (0..2_000u64).map(|i| WriteRequest {
        reports: (0..100)
            .map(|k| report("full", i * 100 + k, &[("Ana", 50.0)]))
            .collect(),
    });
    let mut responses = server
        .ingest()
        .await
        .write_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut accepted = 0u64;
    let status = loop {
        match responses.message().await {
            Ok(Some(r)) => accepted += u64::from(r.accepted),
            Ok(None) => panic!("the stream ended without refusing"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("retry later"), "{status:?}");
    assert!(accepted > 0);
    // What was acknowledged is there.
    let n = keys(
        &server
            .query("SELECT drone_id, seq FROM reports")
            .await
            .unwrap(),
    )
    .len() as u64;
    assert!(n >= accepted, "{n} < {accepted}");
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("d"), &["--shutdown-timeout", "60s"]);
    // An open stream keeps the graceful shutdown waiting.
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(1);
    tx.send(WriteRequest {
        reports: vec![report("s", 1, &[])],
    })
    .await
    .unwrap();
    let mut responses = server
        .ingest()
        .await
        .write_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(responses.message().await.unwrap().unwrap().accepted, 1);
    let pid = server.pid();
    let signal = |pid: u32| {
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        )
    };
    signal(pid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server.running(),
        "the first signal waits for the open stream"
    );
    let began = Instant::now();
    signal(pid);
    let status = server.wait();
    assert!(began.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(130));
    drop(tx);
}
