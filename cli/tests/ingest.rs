//! End-to-end: the real binary, a tonic ingest client and the arrow-rs Flight SQL client.

mod common;

use common::{Server, files_under, report};
use prost::Message;
use tonic::Code;
use vigie_proto::v1::{WriteRequest, WriteResponse};

#[tokio::test]
async fn invalid_reports_are_rejected_by_index_and_valid_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--flush-interval", "1h"]);
    let mut bad_lat = report("d1", 2, &[]);
    bad_lat.latitude = 95.0;
    let mut no_time = report("d1", 3, &[]);
    no_time.time = None;
    let mut empty_name = report("d1", 4, &[("", 10.0)]);
    empty_name.citizens[0].name.clear();
    let request = WriteRequest {
        reports: vec![
            report("d1", 1, &[("Ana", 50.0)]),
            bad_lat,
            no_time,
            empty_name,
            report("", 5, &[]),
            report("d1", 6, &[]),
        ],
    };
    let answer = server
        .ingest()
        .await
        .write(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.accepted, 2);
    assert_eq!(answer.duplicates, 0);
    let rejected: Vec<(u32, &str)> = answer
        .rejected
        .iter()
        .map(|r| (r.index, r.reason.as_str()))
        .collect();
    assert_eq!(
        rejected,
        vec![
            (1, "latitude 95 out of range [-90, 90]"),
            (2, "time is missing"),
            (3, "citizens[0] has an empty name"),
            (4, "drone_id is empty"),
        ]
    );
    assert_eq!(
        server
            .table("SELECT drone_id, seq FROM reports ORDER BY seq")
            .await,
        "+----------+-----+\n\
         | drone_id | seq |\n\
         +----------+-----+\n\
         | d1       | 1   |\n\
         | d1       | 6   |\n\
         +----------+-----+"
    );
}

#[tokio::test]
async fn retries_are_duplicates_in_any_order_and_buffered_rows_are_visible() {
    let dir = tempfile::tempdir().unwrap();
    // No flush during the test: everything read back comes from the buffer.
    let server = Server::start(dir.path(), &["--flush-interval", "1h"]);
    let mut client = server.ingest().await;
    let first: Vec<_> = (0..50).map(|s| report("d1", s, &[])).collect();
    let answer = client
        .write(WriteRequest {
            reports: first.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.accepted, answer.duplicates), (50, 0));
    // The same reports again, reversed, mixed with new ones and a repeat inside the request.
    let mut retry: Vec<_> = first.into_iter().rev().collect();
    retry.push(report("d1", 100, &[]));
    retry.push(report("d1", 100, &[]));
    retry.push(report("d2", 0, &[]));
    let answer = client
        .write(WriteRequest { reports: retry })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.accepted, answer.duplicates), (2, 51));
    assert_eq!(
        server
            .table("SELECT count(*) AS n, count(DISTINCT drone_id || ':' || seq) AS k FROM reports")
            .await,
        "+----+----+\n\
         | n  | k  |\n\
         +----+----+\n\
         | 52 | 52 |\n\
         +----+----+"
    );
    // Nothing was flushed: no Parquet file exists yet.
    let parquet = files_under(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count();
    assert_eq!(parquet, 0);
}

#[tokio::test]
async fn write_stream_answers_each_request_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut client = server.ingest().await;
    let requests: Vec<WriteRequest> = (0..20u64)
        .map(|i| WriteRequest {
            // Request i holds i+1 new reports, then the previous request's reports again.
            reports: (0..=i)
                .map(|k| report("s", i * 100 + k, &[]))
                .chain((0..i).map(|k| report("s", (i - 1) * 100 + k, &[])))
                .collect(),
        })
        .collect();
    let mut responses = client
        .write_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(r) = responses.message().await.unwrap() {
        seen.push((r.accepted, r.duplicates));
    }
    let expected: Vec<(u32, u32)> = (0..20u32).map(|i| (i + 1, i)).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn graceful_restart_keeps_data_and_dedupe_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--flush-interval", "1h"]);
    let reports: Vec<_> = (0..300)
        .map(|s| report(&format!("d{}", s % 3), s, &[("Ana", (s % 100) as f64)]))
        .collect();
    let answer = server
        .ingest()
        .await
        .write(WriteRequest {
            reports: reports.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.accepted, 300);
    let before = server
        .table("SELECT drone_id, count(*), sum(seq), min(time) FROM reports GROUP BY drone_id ORDER BY drone_id")
        .await;
    // SIGTERM: flush, commit, exit 0.
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    let table_dir = dir.path().join("lake/tenants/default/tables/reports");
    let files = files_under(&table_dir);
    assert!(
        files
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "parquet")
                && p.to_string_lossy().contains("day=2026-01-01")),
        "no Parquet file under {}: {files:?}",
        table_dir.display()
    );
    assert!(
        table_dir
            .join("_delta_log/00000000000000000001.json")
            .exists()
    );

    let server = Server::start(dir.path(), &["--flush-interval", "1h"]);
    let after = server
        .table("SELECT drone_id, count(*), sum(seq), min(time) FROM reports GROUP BY drone_id ORDER BY drone_id")
        .await;
    assert_eq!(before, after);
    assert!(after.contains("| d0       | 100      |"), "{after}");
    // Retries after the restart are still duplicates.
    let answer = server
        .ingest()
        .await
        .write(WriteRequest {
            reports: reports[..10].to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.accepted, answer.duplicates), (0, 10));
}

#[tokio::test]
async fn oversized_and_undecodable_requests_get_clear_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-message-bytes", "4096"]);
    let mut client = server.ingest().await;
    let big = WriteRequest {
        reports: (0..200)
            .map(|s| report("big", s, &[("Ana", 1.0)]))
            .collect(),
    };
    assert!(big.encoded_len() > 4096);
    let status = client.write(big.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    // Streaming: the oversized request ends the stream with the same code.
    let mut responses = client
        .write_stream(futures::stream::iter(vec![big]))
        .await
        .unwrap()
        .into_inner();
    let status = responses.message().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Bytes that are not a WriteRequest: field 1 with the varint wire type.
    let status = raw_write(&server, vec![0x08, 0x01]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("vigie.v1.WriteRequest"),
        "{status:?}"
    );
}

/// Sends raw bytes as the body of `Ingest.Write`.
async fn raw_write(server: &Server, body: Vec<u8>) -> Result<WriteResponse, tonic::Status> {
    use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Default)]
    struct RawCodec;
    struct RawEncoder;
    struct ResponseDecoder;
    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            use bytes::BufMut;
            dst.put_slice(&item);
            Ok(())
        }
        fn buffer_settings(&self) -> BufferSettings {
            BufferSettings::default()
        }
    }
    impl Decoder for ResponseDecoder {
        type Item = WriteResponse;
        type Error = tonic::Status;
        fn decode(
            &mut self,
            src: &mut DecodeBuf<'_>,
        ) -> Result<Option<WriteResponse>, tonic::Status> {
            WriteResponse::decode(src)
                .map(Some)
                .map_err(|e| tonic::Status::internal(e.to_string()))
        }
        fn buffer_settings(&self) -> BufferSettings {
            BufferSettings::default()
        }
    }
    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = WriteResponse;
        type Encoder = RawEncoder;
        type Decoder = ResponseDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> ResponseDecoder {
            ResponseDecoder
        }
    }

    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/vigie.v1.Ingest/Write");
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn bad_sql_is_invalid_argument_and_writes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let err = server.query("SELECT nope FROM reports").await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("InvalidArgument") || text.contains("invalid argument"),
        "{text}"
    );
    assert!(text.contains("nope"), "{text}");
    let err = server.query("DROP TABLE reports").await.unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
}
