//! Alerts end to end: rules, Subscribe live and from an id, retries, restarts, slow subscribers.

mod common;

use std::time::Duration;

use common::{Server, report};
use tonic::Code;
use vigie_proto::v1::alerts_client::AlertsClient;
use vigie_proto::v1::{Alert, SubscribeRequest, WriteRequest};

async fn subscribe(server: &Server, from_id: Option<u64>) -> tonic::Streaming<Alert> {
    AlertsClient::new(server.channel().await)
        .subscribe(SubscribeRequest { from_id })
        .await
        .unwrap()
        .into_inner()
}

async fn next(stream: &mut tonic::Streaming<Alert>) -> Alert {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an alert within 10 s")
        .unwrap()
        .expect("stream open")
}

/// 40 reports of drone `drone`; every fifth has a citizen under 20.
fn batch(drone: &str, from: u64) -> WriteRequest {
    WriteRequest {
        reports: (from..from + 40)
            .map(|s| {
                let score = if s % 5 == 0 { 7.5 } else { 60.0 };
                report(drone, s, &[("Ana", score), ("Bo", 90.0)])
            })
            .collect(),
    }
}

#[tokio::test]
async fn live_subscriber_gets_each_alert_once_in_order_and_retries_raise_none() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), &[]);
    let mut live = subscribe(&server, None).await;
    let mut ingest = server.ingest().await;
    ingest.write(batch("d1", 0)).await.unwrap();
    // A retry of the same reports, and new ones.
    let answer = ingest.write(batch("d1", 0)).await.unwrap().into_inner();
    assert_eq!(answer.duplicates, 40);
    ingest.write(batch("d1", 40)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..16 {
        got.push(next(&mut live).await);
    }
    let ids: Vec<u64> = got.iter().map(|a| a.id).collect();
    assert_eq!(ids, (1..=16).collect::<Vec<_>>());
    let seqs: Vec<u64> = got.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, (0..80).step_by(5).collect::<Vec<_>>());
    let first = &got[0];
    assert_eq!(
        (
            first.rule.as_str(),
            first.drone_id.as_str(),
            first.citizen.as_str(),
            first.score
        ),
        ("low_score", "d1", "Ana", 7.5)
    );
    assert_eq!((first.latitude, first.longitude), (48.85, 2.35));
    assert_eq!(first.time.unwrap().seconds, 1_767_225_600);
    assert!(first.raised_at.is_some());
    // Nothing else arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), live.message())
            .await
            .is_err()
    );
    assert_eq!(
        server
            .table("SELECT name, raised_since_start FROM alert_rules")
            .await,
        "+-----------+--------------------+\n\
         | name      | raised_since_start |\n\
         +-----------+--------------------+\n\
         | low_score | 16                 |\n\
         +-----------+--------------------+"
    );
}

#[tokio::test]
async fn resume_from_an_id_misses_nothing_and_repeats_nothing_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let rules = [
        "--alert-rule",
        "low_score=score < 20",
        "--alert-rule",
        "calm_ana=citizen = 'Ana' AND array_has(words, 'calme') AND score > 50",
        "--flush-interval",
        "200ms",
    ];
    let server = Server::start(&data, &rules);
    let mut ingest = server.ingest().await;
    ingest.write(batch("d1", 0)).await.unwrap();
    // 8 low_score + 32 calm_ana alerts, in sighting order then rule order.
    let mut first = subscribe(&server, Some(1)).await;
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.push(next(&mut first).await);
    }
    drop(first); // disconnect mid-stream
    ingest.write(batch("d2", 0)).await.unwrap();
    let last = seen.last().unwrap().id;
    let mut resumed = subscribe(&server, Some(last + 1)).await;
    for _ in 0..60 {
        seen.push(next(&mut resumed).await);
    }
    let ids: Vec<u64> = seen.iter().map(|a| a.id).collect();
    assert_eq!(ids, (1..=80).collect::<Vec<_>>());
    // Seq 0: Ana at 7.5 (low_score); seq 1: Ana at 60 with the word "calme" (calm_ana).
    assert_eq!((seen[0].rule.as_str(), seen[0].seq), ("low_score", 0));
    assert_eq!((seen[1].rule.as_str(), seen[1].seq), ("calm_ana", 1));

    // A graceful restart keeps every alert and continues the ids.
    assert!(server.terminate().success());
    let server = Server::start(&data, &rules);
    let mut all = subscribe(&server, Some(1)).await;
    let mut again = Vec::new();
    for _ in 0..80 {
        again.push(next(&mut all).await);
    }
    assert_eq!(again, seen);
    server.ingest().await.write(batch("d3", 0)).await.unwrap();
    assert_eq!(next(&mut all).await.id, 81);
    assert_eq!(
        server
            .table("SELECT count(*) AS n, min(id) AS lo, max(id) AS hi FROM alerts")
            .await,
        "+-----+----+-----+\n\
         | n   | lo | hi  |\n\
         +-----+----+-----+\n\
         | 120 | 1  | 120 |\n\
         +-----+----+-----+"
    );
}

#[tokio::test]
async fn a_from_id_ahead_of_the_alerts_skips_the_live_ones_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), &[]);
    let mut ingest = server.ingest().await;
    ingest.write(batch("d1", 0)).await.unwrap(); // alerts 1..=8
    // A dispatcher that already holds up to 11 (say, from a replica) asks for 12 on.
    let mut ahead = subscribe(&server, Some(12)).await;
    ingest.write(batch("d1", 40)).await.unwrap(); // alerts 9..=16
    let got: Vec<u64> = [next(&mut ahead).await, next(&mut ahead).await]
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(got, vec![12, 13]);
}

#[tokio::test]
async fn alerts_of_acknowledged_reports_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let server = Server::start(&data, &["--flush-interval", "1h"]);
    server.ingest().await.write(batch("d1", 0)).await.unwrap();
    server.kill();
    let server = Server::start(&data, &["--flush-interval", "1h"]);
    let mut all = subscribe(&server, Some(1)).await;
    let mut got = Vec::new();
    for _ in 0..8 {
        got.push(next(&mut all).await.id);
    }
    assert_eq!(got, (1..=8).collect::<Vec<_>>());
    server.ingest().await.write(batch("d1", 40)).await.unwrap();
    assert_eq!(next(&mut all).await.id, 9);
}

#[tokio::test]
async fn a_slow_subscriber_is_told_where_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), &["--alert-queue", "4"]);
    let mut slow = subscribe(&server, None).await;
    let mut ingest = server.ingest().await;
    // Not reading: once the HTTP/2 windows are full, the server-side queue of 4 overflows.
    let batches = 300u64;
    for k in 0..batches {
        ingest.write(batch("d1", k * 40)).await.unwrap();
    }
    let mut delivered = Vec::new();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.message())
            .await
            .expect("an answer")
        {
            Ok(Some(alert)) => delivered.push(alert.id),
            Ok(None) => panic!("ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    let last = *delivered.last().unwrap();
    assert!(
        status
            .message()
            .contains(&format!("from_id = {}", last + 1)),
        "{status:?}"
    );
    // Resuming from there delivers the rest, once.
    let mut resumed = subscribe(&server, Some(last + 1)).await;
    assert!(last < batches * 8);
    for id in last + 1..=batches * 8 {
        assert_eq!(next(&mut resumed).await.id, id);
    }
}

#[test]
fn a_bad_rule_stops_start_up_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(common::vigie_bin())
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--alert-rule", "broken=score <"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("alert rule \"broken\""), "{stderr}");
    let output = std::process::Command::new(common::vigie_bin())
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--alert-rule", "sum=score + 1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"sum\"") && stderr.contains("not a boolean"),
        "{stderr}"
    );
}
