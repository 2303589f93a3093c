//! `vigie serve`: one gRPC port for Ingest, Alerts and Flight SQL, plus the background flusher.
//!
//! Shutdown (SIGTERM or Ctrl-C): stop accepting, let open streams finish (up to
//! `shutdown_timeout`), flush and commit the buffer, exit 0. A second signal exits at once.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, ServerTlsConfig};
use tracing::{info, warn};
use vigie_engine::store::Lake;
use vigie_engine::{Engine, EngineArgs, WalMode};
use vigie_flight_server::VigieFlightSql;
use vigie_ingest::{AlertsService, IngestService};
use vigie_sql::SqlEngine;

use crate::config::{Config, TlsFiles};

pub(crate) async fn run(config: Config) -> Result<()> {
    info!(?config, "starting");
    let lake = Lake::open(&config.object_store)
        .with_context(|| format!("cannot open the lake at {}", config.object_store))?;
    let engine = Arc::new(
        Engine::open(EngineArgs {
            lake,
            flush_interval: config.flush_interval,
            flush_rows: config.flush_rows,
            dedupe_window: config.dedupe_window,
            wal: match &config.wal_dir {
                None => WalMode::Off,
                Some(dir) => WalMode::Local {
                    dir: dir.clone(),
                    segment_bytes: config.wal_segment_bytes,
                    max_delay: config.wal_max_delay,
                },
            },
            max_buffer_bytes: config.max_buffer_bytes,
            alert_rules: config.alert_rules.clone(),
        })
        .await
        .context("cannot open the tables")?,
    );
    let sql = SqlEngine::new(engine.default_tenant(), engine.lake())
        .await
        .context("cannot create the SQL session")?;
    let flight = VigieFlightSql::new(sql).context("cannot create the Flight SQL service")?;

    let scheme = if config.tls.is_some() {
        "grpc+tls"
    } else {
        "grpc"
    };
    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.grpc_addr))?;
    let addr = listener.local_addr()?;
    // The one line scripts and tests wait for.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {scheme}://{addr}")?;
    stdout.flush()?;
    info!(%addr, lake = %config.object_store, data_dir = %config.data_dir.display(), "listening");

    let stop_serving = CancellationToken::new();
    let stop_flushing = CancellationToken::new();
    let flusher = engine.start_flusher(stop_flushing.clone());
    let maintenance = (!config.compact_interval.is_zero()).then(|| {
        engine.start_maintenance(
            config.compact_interval,
            config.maintenance(),
            stop_serving.clone(),
        )
    });
    let webhook = config
        .alert_webhook
        .clone()
        .map(|url| vigie_ingest::webhook::start_webhook(engine.clone(), url, stop_serving.clone()));

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls_config(tls)?)
            .context("invalid TLS configuration")?;
    }
    let server = builder
        .add_service(IngestService::new(engine.clone()).into_server(config.max_message_bytes))
        .add_service(AlertsService::new(engine.clone(), config.alert_queue).into_server())
        .add_service(
            flight
                .into_server()
                .max_decoding_message_size(config.max_message_bytes),
        )
        .serve_with_incoming_shutdown(
            // Small gRPC frames must not wait for Nagle's algorithm (40 ms with delayed ACKs).
            TcpListenerStream::new(listener).map(|stream| {
                let stream = stream?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(stream)
            }),
            stop_serving.clone().cancelled_owned(),
        );
    let mut server = tokio::spawn(server);

    tokio::select! {
        result = &mut server => {
            result.context("server task failed")?.context("server failed")?;
        }
        () = shutdown_signal() => {
            info!("shutdown requested: no new connections; draining");
            tokio::spawn(async {
                shutdown_signal().await;
                warn!("second signal: exiting now");
                std::process::exit(130);
            });
            stop_serving.cancel();
            match tokio::time::timeout(config.shutdown_timeout, &mut server).await {
                Ok(result) => result.context("server task failed")?.context("server failed")?,
                Err(_) => {
                    warn!(timeout = ?config.shutdown_timeout, "open streams did not end in time; closing them");
                    server.abort();
                }
            }
        }
    }
    stop_serving.cancel();
    if let Some(webhook) = webhook {
        let _ = webhook.await;
    }
    if let Some(maintenance) = maintenance {
        let _ = maintenance.await;
    }
    stop_flushing.cancel();
    let flushed = match tokio::time::timeout(config.shutdown_timeout, flusher).await {
        Ok(joined) => joined
            .context("flusher task failed")?
            .context("final flush failed"),
        Err(_) => Err(anyhow::anyhow!(
            "final flush did not finish within {:?}",
            config.shutdown_timeout
        )),
    };
    match (flushed, &config.wal_dir) {
        (Ok(()), _) => info!("stopped"),
        (Err(e), Some(wal)) => warn!(
            error = %format!("{e:#}"),
            wal = %wal.display(),
            "stopped without the final flush; the WAL keeps every acknowledged report for the next start"
        ),
        (Err(e), None) => return Err(e.context("buffered reports are lost (--wal off)")),
    }
    Ok(())
}

/// The TLS identity of the gRPC port, from PEM files.
fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .with_context(|| format!("cannot read the TLS {what} {}", path.display()))
    };
    let cert = read(&files.cert, "certificate")?;
    let key = read(&files.key, "key")?;
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
