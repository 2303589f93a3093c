//! `vigie serve`: one gRPC port for Ingest, Alerts and Flight SQL (with health and reflection),
//! plus the background flusher.
//!
//! Start: bind and print the address, serve health (NOT_SERVING) and reflection, replay the WAL,
//! then serve (calls that arrived meanwhile waited).
//!
//! Shutdown (SIGTERM or Ctrl-C): health NOT_SERVING, cancel running queries, stop accepting, let
//! open streams finish (up to `shutdown_timeout`), flush and commit the buffer, exit 0. A second
//! signal exits at once.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, ServerTlsConfig};
use tracing::{info, warn};
use vigie_auth::{AuthFile, AuthLayer, Authenticator};
use vigie_engine::TenantSettings;
use vigie_engine::store::Lake;
use vigie_engine::store::TenantName;
use vigie_engine::{Engine, EngineArgs, WalMode};
use vigie_flight_server::VigieFlightSql;
use vigie_ingest::{AlertsService, IngestService};
use vigie_sql::Sessions;

use crate::config::{Config, TlsFiles};
use crate::health::{Deferred, Health, Phase, Slot};

pub(crate) async fn run(mut config: Config) -> Result<()> {
    info!(?config, "starting");
    // Before the address is printed: a SIGTERM that arrives once a client can connect must
    // start the graceful shutdown, not kill the process with the default action.
    let mut signals = Signals::install()?;
    // Before anything records: the engine's counters are registered as tenants open.
    let metrics = match config.metrics_addr {
        Some(addr) => Some((crate::metrics::install()?, addr)),
        None => None,
    };
    config.check_serving()?;
    let auth = Arc::new(
        Authenticator::open(config.credential_store().await?, config.token_ttl)
            .context("cannot read the credentials")?,
    );
    if auth.is_open() {
        if !config.grpc_addr.ip().is_loopback() {
            bail!(
                "refusing to listen on {} without authentication: no user or API key exists, so \
                 anyone reaching that address could read and write every report. Create \
                 credentials first (`vigie admin create-tenant NAME`, then `vigie admin \
                 create-user` or `create-key`), or listen on a loopback address (127.0.0.1)",
                config.grpc_addr
            );
        }
        warn!(
            "no credentials exist: open single-tenant mode (loopback only), every call is the admin of tenant `default`"
        );
    } else if config.tls.is_none() && !config.grpc_addr.ip().is_loopback() {
        warn!(addr = %config.grpc_addr, "credentials travel in clear text: serve with --tls-cert/--tls-key outside loopback");
    }
    let auth_file = auth.file().context("cannot read the credentials")?;
    let lake = Lake::open(&config.object_store)
        .with_context(|| format!("cannot open the lake at {}", config.object_store))?;

    // The port is served from here on: health and reflection at once, the other services as
    // soon as the engine is open (calls wait for it meanwhile).
    let scheme = if config.tls.is_some() {
        "grpc+tls"
    } else {
        "grpc"
    };
    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.grpc_addr))?;
    let addr = listener.local_addr()?;
    crate::cluster::advertise(&mut config, addr)?;
    // The one line scripts and tests wait for.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {scheme}://{addr}")?;
    let metrics_listener = match &metrics {
        Some((handle, addr)) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            writeln!(
                stdout,
                "metrics on http://{}/metrics",
                listener.local_addr()?
            )?;
            Some((listener, handle.clone()))
        }
        None => None,
    };
    let console_listener = match config.console_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for the console on {addr}"))?;
            writeln!(stdout, "console on http://{}/", listener.local_addr()?)?;
            Some(listener)
        }
        None => None,
    };
    stdout.flush()?;
    info!(%addr, lake = %config.object_store, data_dir = %config.data_dir.display(), roles = %config.roles.names(), "listening");

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let roles = config.roles;
    let disabled = [
        (!roles.ingest, "vigie.v1.Ingest"),
        (!roles.query, "arrow.flight.protocol.FlightService"),
    ]
    .into_iter()
    .filter_map(|(off, service)| off.then_some(service))
    .collect();
    let health = Health::starting(reporter, lake.clone(), disabled).await;
    let stop_serving = CancellationToken::new();
    let stop_flushing = CancellationToken::new();
    // Probes keep answering (503 while draining) until the very end.
    let stop_probes = CancellationToken::new();
    let metrics_server = metrics_listener.map(|(listener, handle)| {
        crate::metrics::serve(listener, handle, health.clone(), stop_probes.clone())
    });
    let (ingest, ingest_slot) = Deferred::new();
    let (alerts, alerts_slot) = Deferred::new();
    let (flight, flight_slot) = Deferred::new();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls_config(tls)?)
            .context("invalid TLS configuration")?;
    }
    let mut auth_layer = AuthLayer::new(auth.clone());
    if let Some(secret) = &config.cluster_secret {
        auth_layer = auth_layer.with_cluster_secret(secret.clone());
    }
    let server = builder
        .layer(auth_layer)
        .add_service(health_service)
        .add_service(reflection_v1()?)
        .add_service(reflection_v1alpha()?)
        .add_service(ingest)
        .add_service(alerts)
        .add_service(flight)
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

    let engine = Arc::new(
        Engine::open(
            EngineArgs {
                lake,
                flush_interval: config.flush_interval,
                flush_rows: config.flush_rows,
                dedupe_window: config.dedupe_window,
                wal: match (&config.stream, &config.wal_dir) {
                    (Some(stream), _) => WalMode::Stream(stream.clone()),
                    (None, None) => WalMode::Off,
                    (None, Some(dir)) => WalMode::Local {
                        dir: dir.clone(),
                        segment_bytes: config.wal_segment_bytes,
                        max_delay: config.wal_max_delay,
                    },
                },
                max_buffer_bytes: config.max_buffer_bytes,
                alert_rules: config.alert_rules.clone(),
            },
            tenant_settings(&auth_file)?,
        )
        .await
        .context("cannot open the tables")?,
    );
    let sessions = Arc::new(
        Sessions::new(engine.clone(), config.query_limits)
            .context("cannot start the SQL sessions")?,
    );
    let flight_sql = VigieFlightSql::new(sessions.clone(), auth.clone())
        .context("cannot create the Flight SQL service")?;
    let mut ingest = IngestService::new(engine.clone());
    let mut alerts = AlertsService::new(engine.clone(), config.alert_queue);
    if let Some(forwarder) = crate::cluster::forwarder(&config)? {
        ingest = ingest.with_forwarder(forwarder.clone());
        alerts = alerts.with_forwarder(forwarder);
    }
    if !roles.ingest {
        ingest = ingest.refusing_drone_writes(format!(
            "this node takes no writes from drones (--role {}): send them to a node with the \
             ingest role",
            roles.names()
        ));
    }
    ingest_slot.send_replace(Some(Slot::Serving(
        ingest.into_server(config.max_message_bytes),
    )));
    // Connections wait in the listener's backlog until the engine is open.
    let console = match console_listener {
        Some(listener) => {
            let console = vigie_console::Console::new(
                engine.clone(),
                sessions.clone(),
                auth.clone(),
                alerts.clone(),
                config.console.clone(),
                stop_serving.clone(),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            Some(tokio::spawn(console.serve(listener)))
        }
        None => None,
    };
    // The daily report's morning mail, if a mail server (or a dry-run directory) is set.
    if let Some(mail) = &config.mail {
        let outbox = vigie_report::Outbox::new(mail)?;
        let reading = auth.clone();
        let mailings: vigie_report::schedule::Mailings =
            Arc::new(move || mailings(&reading.report_schedules()));
        tokio::spawn(vigie_report::schedule::run(
            engine.clone(),
            outbox,
            mail.from.clone(),
            mailings,
            stop_serving.clone(),
        ));
    }
    alerts_slot.send_replace(Some(Slot::Serving(alerts.into_server())));
    // Leases renewed and vacant tenants taken over until the shutdown starts.
    let cluster = engine.start_cluster(stop_serving.clone());
    flight_slot.send_replace(Some(if roles.query {
        Slot::Serving(
            flight_sql
                .into_server()
                .max_decoding_message_size(config.max_message_bytes),
        )
    } else {
        Slot::Refusing(format!(
            "this node answers no SQL (--role {}): query a node with the query role",
            roles.names()
        ))
    }));
    health.set(Phase::Ready).await;
    info!("ready");
    // The line scripts and tests wait for before their first call (after `listening on`, which
    // gives the address while the WAL replays). A reader that went away is no reason to stop.
    let _ = writeln!(stdout, "ready").and_then(|()| stdout.flush());

    // Flushes and maintenance encode Parquet: on their own low-priority threads.
    let background = Background::start()?;
    let (flusher, maintenance) = {
        let _on_background = background.enter();
        let flusher = engine.start_flusher(stop_flushing.clone());
        let maintenance = (!config.compact_interval.is_zero()).then(|| {
            engine.start_maintenance(
                config.compact_interval,
                config.maintenance(),
                stop_serving.clone(),
            )
        });
        (flusher, maintenance)
    };
    let webhooks = config.alert_webhook.clone().map(|url| {
        engine
            .tenants()
            .into_iter()
            .map(|tenant| {
                let stop = stop_serving.clone();
                let name = tenant.name().clone();
                vigie_ingest::webhook::start_webhook(engine.clone(), name, url.clone(), stop)
            })
            .collect::<Vec<_>>()
    });
    let reload = start_reload(ReloadArgs {
        auth: auth.clone(),
        engine: engine.clone(),
        webhook: config.alert_webhook.clone(),
        shutdown: stop_serving.clone(),
    });

    tokio::select! {
        result = &mut server => {
            result.context("server task failed")?.context("server failed")?;
        }
        () = signals.recv() => {
            info!("shutdown requested: no new connections; draining");
            tokio::spawn(async move {
                signals.recv().await;
                warn!("second signal: exiting now");
                std::process::exit(130);
            });
            health.set(Phase::Draining).await;
            // Running queries end now (audited as cancelled): their streams must not hold the
            // drain up, nor their threads the exit.
            sessions.shutdown();
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
    for webhook in webhooks.into_iter().flatten() {
        let _ = webhook.await;
    }
    for webhook in reload.await.unwrap_or_default() {
        let _ = webhook.await;
    }
    if let Some(maintenance) = maintenance {
        let _ = maintenance.await;
    }
    if let Some(console) = console {
        match tokio::time::timeout(config.shutdown_timeout, console).await {
            Ok(Ok(Err(e))) => warn!(error = %e, "the console server failed"),
            Ok(_) => {}
            Err(_) => warn!("the console's connections did not close in time"),
        }
    }
    if let Some(cluster) = cluster {
        let _ = cluster.await;
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
    // Flushed: the other nodes take this one's tenants over at once, with nothing to replay.
    engine.release_leases().await;
    match (flushed, &config.wal_dir) {
        (Ok(()), _) => info!("stopped"),
        (Err(e), None) if config.stream.is_some() => warn!(
            error = %format!("{e:#}"),
            "stopped without the final flush; the stream keeps every acknowledged report for the tenants' next owners"
        ),
        (Err(e), Some(wal)) => warn!(
            error = %format!("{e:#}"),
            wal = %wal.display(),
            "stopped without the final flush; the WAL keeps every acknowledged report for the next start"
        ),
        (Err(e), None) => return Err(e.context("buffered reports are lost (--wal off)")),
    }
    stop_probes.cancel();
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    Ok(())
}

/// The tenants of the credentials file with their settings; the `default` tenant too in the open
/// mode (its anonymous callers use it).
pub(crate) fn tenant_settings(file: &AuthFile) -> Result<Vec<TenantSettings>> {
    let mut tenants = Vec::new();
    if file.is_open() {
        tenants.push(TenantSettings::named(TenantName::default_tenant()));
    }
    for (name, record) in &file.tenants {
        let name = TenantName::new(name)?;
        if tenants.iter().any(|t| t.name == name) {
            continue;
        }
        tenants.push(TenantSettings {
            name,
            alert_rules: record
                .alert_rules
                .iter()
                .map(|r| crate::config::parse_rule(r))
                .collect::<Result<_>>()?,
            retention: record.retention,
        });
    }
    Ok(tenants)
}

/// The tenants' mailings from their report settings; a setting that does not parse (checked
/// by `vigie admin set-report`, so only a hand-edited file) is skipped with a warning.
fn mailings(
    settings: &[(String, vigie_auth::ReportSettings)],
) -> Vec<vigie_report::schedule::Mailing> {
    settings
        .iter()
        .filter(|(_, r)| !r.to.is_empty())
        .filter_map(|(tenant, r)| {
            let parsed = mailing(tenant, r);
            if parsed.is_none() {
                warn!(tenant, "the tenant's report settings do not parse: no mail");
            }
            parsed
        })
        .collect()
}

fn mailing(
    tenant: &str,
    r: &vigie_auth::ReportSettings,
) -> Option<vigie_report::schedule::Mailing> {
    Some(vigie_report::schedule::Mailing {
        tenant: TenantName::new(tenant).ok()?,
        to: r.to.clone(),
        at: chrono::NaiveTime::parse_from_str(r.at.as_deref().unwrap_or("06:00"), "%H:%M").ok()?,
        time_zone: vigie_report::time_zone(r.time_zone.as_deref().unwrap_or("UTC")).ok()?,
        names: r.names,
    })
}

/// What the credentials reload loop needs.
struct ReloadArgs {
    auth: Arc<Authenticator>,
    engine: Arc<Engine>,
    webhook: Option<String>,
    shutdown: CancellationToken,
}

/// Every second, re-reads the credentials file when it changed: opens new tenants (and starts
/// their webhook), then checks calls against the new credentials (revocations apply at once).
/// Returns the webhook tasks it started.
fn start_reload(args: ReloadArgs) -> JoinHandle<Vec<JoinHandle<()>>> {
    tokio::spawn(async move {
        let mut webhooks = Vec::new();
        let mut ticker = tokio::time::interval(RELOAD_PERIOD);
        loop {
            tokio::select! {
                () = args.shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let file = match args.auth.read_if_changed() {
                Ok(Some(file)) => file,
                Ok(None) => continue,
                Err(e) => {
                    warn!(error = %e, "cannot read the credentials file; keeping the previous one");
                    continue;
                }
            };
            let settings = match tenant_settings(&file) {
                Ok(settings) => settings,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "invalid tenant settings; keeping the previous credentials");
                    continue;
                }
            };
            for settings in settings {
                if args.engine.tenant(&settings.name).is_some() {
                    continue;
                }
                let name = settings.name.clone();
                match args.engine.add_tenant(settings).await {
                    Ok(tenant) => {
                        info!(%name, "tenant opened");
                        if let Some(url) = &args.webhook {
                            webhooks.push(vigie_ingest::webhook::start_webhook(
                                args.engine.clone(),
                                tenant.name().clone(),
                                url.clone(),
                                args.shutdown.clone(),
                            ));
                        }
                    }
                    Err(e) => {
                        warn!(%name, error = %e, "cannot open a new tenant; retried at the next change")
                    }
                }
            }
            args.auth.install(&file);
            info!(
                users = file.users.len(),
                keys = file.keys.len(),
                tenants = file.tenants.len(),
                "credentials reloaded"
            );
        }
        webhooks
    })
}

/// How often the credentials file is checked for changes.
const RELOAD_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// The runtime of background work (flushes, maintenance). Its threads run at a lower CPU priority
/// (nice +10), so that encoding Parquet and compacting yield the cores to ingest and alert delivery
/// when both want them, rather than adding their time slices to alert latency.
struct Background(Option<tokio::runtime::Runtime>);

/// How much lower background threads' priority is (Linux nice increment).
const BACKGROUND_NICE: i32 = 10;

impl Background {
    fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vigie-background")
            .enable_all()
            .on_thread_start(|| vigie_engine::host::lower_thread_priority(BACKGROUND_NICE))
            .build()
            .context("cannot start the background runtime")?;
        Ok(Self(Some(runtime)))
    }

    /// Spawns made while the guard lives go to the background runtime.
    fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.0.as_ref().expect("present until dropped").enter()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context forbids: let its threads go.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// gRPC server reflection (v1, which grpcurl asks first): `vigie.v1` and the health service.
fn reflection_v1() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
> {
    reflection()
        .build_v1()
        .context("cannot build the reflection service")
}

/// gRPC server reflection, v1alpha (older clients).
fn reflection_v1alpha() -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
> {
    reflection()
        .build_v1alpha()
        .context("cannot build the reflection service")
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vigie_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
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

/// The shutdown signals (SIGTERM and Ctrl-C), handled from the moment they are installed.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
                interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for the next signal.
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
