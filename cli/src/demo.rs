//! `vigie demo`: the first "see it work" step. A server with the console, a tenant with an
//! admin login, and a simulated fleet reporting live (each drone every `--interval`, time = now;
//! about one report in a hundred holds a low score, so a few alerts a minute).
//!
//! ```text
//! data dir (new temp dir by default) ─▶ credentials: tenant `demo`, user `demo` (random
//!   password), a drone key ─▶ `vigie serve --console-addr …` (a child process, same binary)
//!   ─▶ prints the console URL and the login ─▶ fleet loop: WriteRequest per tick over gRPC
//! Ctrl-C or SIGTERM ─▶ SIGTERM to the server (graceful: flushed) ─▶ exit
//! ```

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use prost_types::Timestamp;
use vigie_auth::{FileStore, Role, update};
use vigie_proto::v1::WriteRequest;
use vigie_proto::v1::ingest_client::IngestClient;

use crate::simulate::{BearerAuth, Fleet};

/// `vigie demo` options.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Where the demo keeps its data [default: a new temporary directory, kept at exit].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The console's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    console_addr: SocketAddr,
    /// Drones in the fleet.
    #[arg(long, default_value_t = 40)]
    drones: u32,
    /// How often each drone reports.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

/// Stops the server gracefully when the demo ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: the server flushes and exits.
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

pub(crate) async fn run(args: DemoArgs) -> Result<()> {
    if args.drones == 0 || args.interval.is_zero() {
        bail!("the demo needs at least one drone and an --interval above 0");
    }
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("vigie-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let store = FileStore::new(&data_dir);
    let password = random_password()?;
    let key = update(&store, |f| {
        if !f.tenants.contains_key("demo") {
            f.create_tenant("demo", None, Vec::new())?;
        }
        if f.users.iter().any(|u| u.name == "demo") {
            f.set_password("demo", &password)?;
        } else {
            f.create_user("demo", "demo", Role::Admin, &password)?;
        }
        f.create_key("demo", Role::Drone)
    })
    .await
    .context("cannot write the demo's credentials")?
    .1;

    let exe = std::env::current_exe().context("cannot find the vigie binary")?;
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--grpc-addr", "127.0.0.1:0", "--flush-interval", "2s"])
        .arg("--console-addr")
        .arg(args.console_addr.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start vigie serve")?;
    let stdout = child.stdout.take().context("no stdout from vigie serve")?;
    let server = Server(child);
    let mut lines = BufReader::new(stdout).lines();
    let (mut grpc, mut console) = (None, None);
    for line in lines.by_ref() {
        let line = line?;
        if let Some(addr) = line.strip_prefix("listening on grpc://") {
            grpc = Some(addr.to_string());
        } else if let Some(url) = line.strip_prefix("console on ") {
            console = Some(url.to_string());
        } else if line == "ready" {
            break;
        }
    }
    let (Some(grpc), Some(console)) = (grpc, console) else {
        bail!("vigie serve stopped before it was ready (see its log above)");
    };
    println!(
        "Vigie demo: {} drones reporting every {}",
        args.drones,
        humantime::format_duration(args.interval)
    );
    println!("  console   {console}");
    println!("  login     user demo, password {password}");
    println!("  Flight SQL grpc://{grpc} (same login)");
    println!("  data      {}", data_dir.display());
    println!("Ctrl-C stops the demo.");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
        .connect()
        .await
        .context("cannot connect to the demo server")?;
    let mut client = IngestClient::with_interceptor(channel, BearerAuth::new(Some(&key))?);
    let fleet = Fleet::new(rand_seed(), chrono::Utc::now());
    let mut tick = tokio::time::interval(args.interval);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut k = 0u32;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = tick.tick() => {}
        }
        let now = chrono::Utc::now();
        let reports = (0..args.drones)
            .map(|d| {
                let mut report = fleet.report(d, k);
                report.time = Some(Timestamp {
                    seconds: now.timestamp(),
                    nanos: now.timestamp_subsec_nanos() as i32,
                });
                report
            })
            .collect();
        if let Err(status) = client.write(WriteRequest { reports }).await {
            eprintln!(
                "a write failed ({}): retrying at the next tick",
                status.message()
            );
            continue;
        }
        k += 1;
    }
    drop(server);
    Ok(())
}

fn random_password() -> Result<String> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn rand_seed() -> u64 {
    chrono::Utc::now().timestamp_millis() as u64
}
