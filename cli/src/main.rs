//! The `vigie` binary.
//!
//! ```text
//! vigie serve     ─ config ─▶ engine (lake, buffer, flusher) ─▶ gRPC port: Ingest, Alerts, Flight SQL
//! vigie simulate  ─ deterministic fleet ─▶ Ingest.WriteStream (and/or JSON lines)
//! vigie query     ─ SQL (argument or prompt) ─▶ Flight SQL ─▶ printed table
//! vigie compact   ─ lake ─▶ retention, compaction, vacuum of every tenant's tables, once
//! vigie admin     ─ data dir ─▶ tenants, users, API keys (auth.json) + the tenant's audit_log
//! ```

mod admin;
mod cluster;
mod config;
mod demo;
mod health;
mod metrics;
mod query;
mod report;
mod serve;
mod simulate;

use std::io::IsTerminal;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc malloc: ingest allocates many small strings per report, and glibc's
/// `malloc`/`free`/`malloc_consolidate` took about a fifth of the server's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Log filter when `VIGIE_LOG` is unset: Vigie at info, the Delta kernel's per-scan chatter off.
const DEFAULT_LOG: &str = "info,buoyant_kernel=warn,deltalake_core=warn";

/// Vigie: drone reports in, real-time alerts out, SQL over all history.
#[derive(Debug, Parser)]
#[command(name = "vigie", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: ingest, alerts and Flight SQL on one gRPC port.
    Serve(Box<config::ServeArgs>),
    /// Send a deterministic simulated fleet to a server.
    Simulate(simulate::SimulateArgs),
    /// See it work: a server with the web console and a live simulated fleet; prints the
    /// console's URL and a login.
    Demo(demo::DemoArgs),
    /// Run SQL on a server over Flight SQL: one statement, or an interactive prompt.
    Query(query::QueryArgs),
    /// Run table maintenance once (retention, compaction of closed days, vacuum) on a lake,
    /// with `serve`'s options; safe while servers run on the same lake.
    Compact(Box<config::ServeArgs>),
    /// Manage tenants, users and API keys in a data dir (safe while the server runs).
    Admin(admin::AdminArgs),
    /// Write one tenant's daily report (PDF or HTML) from the lake (safe while servers run).
    Report(report::ReportArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("VIGIE_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    // rustls is built with two crypto back-ends in this tree (aws-lc-rs and ring), so it cannot
    // pick one by itself: TLS (served or dialled) uses aws-lc-rs. An error only means one is
    // installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(config::Config::resolve(*args)?).await,
            Command::Simulate(args) => simulate::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Query(args) => query::run(args).await,
            Command::Compact(args) => compact(config::Config::resolve(*args)?).await,
            Command::Admin(args) => admin::run(args).await,
            Command::Report(args) => report::run(args).await,
        }
    });
    // Whatever work is left (a blocking read of a closed connection, a task not yet at a yield
    // point) must not keep the process from exiting once the command is done.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// `vigie compact`: one maintenance run over every tenant's tables, with a line per table.
async fn compact(config: config::Config) -> Result<()> {
    use anyhow::Context;
    let lake = vigie_engine::store::Lake::open(&config.object_store)
        .with_context(|| format!("cannot open the lake at {}", config.object_store))?;
    let auth = config
        .credential_store()
        .await?
        .load()
        .context("cannot read the credentials")?;
    let retention = auth
        .tenants
        .iter()
        .filter_map(|(name, t)| {
            Some((
                vigie_engine::store::TenantName::new(name).ok()?,
                t.retention?,
            ))
        })
        .collect();
    let reports = vigie_engine::compaction::maintain_lake(&lake, &config.maintenance(), &retention)
        .await
        .context("maintenance failed")?;
    for (tenant, kind, r) in reports {
        println!(
            "{tenant}/{}: days_expired={} days_compacted={} files_removed={} files_added={} files_vacuumed={}",
            kind.name(),
            r.days_expired.len(),
            r.days_compacted.len(),
            r.files_removed,
            r.files_added,
            r.files_vacuumed
        );
    }
    Ok(())
}
