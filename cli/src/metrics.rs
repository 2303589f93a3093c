//! Prometheus metrics: the libraries record through the `metrics` facade; `vigie serve
//! --metrics-addr` installs the Prometheus recorder and serves its text at `GET /metrics`.
//!
//! ```text
//! engine / sql / ingest ─ metrics::counter!/histogram!/gauge! ─▶ PrometheusRecorder
//! GET http://<metrics-addr>/metrics ─▶ PrometheusHandle::render ─▶ text format 0.0.4
//! GET /healthz, /readyz ─▶ crate::health (liveness, readiness)
//! ```
//! Metrics: `vigie_reports_total{tenant,outcome}`, `vigie_alerts_total{tenant}`,
//! `vigie_flushed_rows_total{tenant,table}`, `vigie_flush_seconds`, `vigie_flush_failures_total`,
//! `vigie_buffered_bytes`, `vigie_queries_total{tenant,outcome}`, `vigie_query_seconds{tenant}`,
//! `vigie_auth_refusals_total{code}`.

use std::convert::Infallible;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::health::Health;

/// Histogram buckets, in seconds (WAL syncs from 100 µs; flushes and queries up to 5 min).
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Installs the process-wide Prometheus recorder (before anything records).
pub(crate) fn install() -> Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")
}

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
pub(crate) fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    health: Health,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        warn!(error = %e, "metrics listener cannot accept");
                        continue;
                    }
                },
            };
            let handle = handle.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let handle = handle.clone();
                    let health = health.clone();
                    async move { Ok::<_, Infallible>(answer(&handle, &health, &request).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(error = %e, "metrics connection ended");
                }
            });
        }
    })
}

async fn answer(
    handle: &PrometheusHandle,
    health: &Health,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => {
            handle.run_upkeep();
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                Bytes::from(handle.render()),
            )
        }
        "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        "/readyz" => match health.ready().await {
            Ok(()) => (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n")),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                Bytes::from(format!("not ready: {why}\n")),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"this port serves /metrics, /healthz and /readyz\n"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
