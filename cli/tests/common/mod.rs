//! Helpers for end-to-end tests: the real `vigie` binary on port 0 in a temp dir, real clients.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::transport::Channel;
use vigie_engine::testing;
use vigie_proto::v1::DroneReport;
use vigie_proto::v1::ingest_client::IngestClient;

/// A running `vigie serve`, killed on drop. Its stderr goes to `<data_dir>.log` (appended), shown
/// when a test fails.
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Starts `vigie serve` on 127.0.0.1:0 with `data_dir` and extra arguments, and waits for its
    /// `listening on` and `ready` lines.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let log = data_dir.with_extension("log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the server log");
        let mut child = Command::new(vigie_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--grpc-addr", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start vigie");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        lines.read_line(&mut line).expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on grpc://")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        // The engine replays its WAL after binding; calls would wait for it. Tests start once
        // the server says it is ready.
        loop {
            let mut next = String::new();
            let read = lines
                .read_line(&mut next)
                .expect("read the server's stdout");
            assert!(
                read > 0,
                "vigie exited before it was ready; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            if next.trim() == "ready" {
                break;
            }
        }
        Self {
            child: Some(child),
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    /// What the server has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("wait").is_none())
    }

    /// Waits for the process to exit (at most 60 s).
    pub fn wait(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let began = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "vigie did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no flush, no cleanup.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill");
            child.wait().expect("wait");
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    pub async fn ingest(&self) -> IngestClient<Channel> {
        IngestClient::new(self.channel().await)
    }

    /// Runs `sql` through Flight SQL and returns the batches.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, FlightError> {
        let mut client = FlightSqlServiceClient::new(self.channel().await);
        let info = client.execute(sql.to_string(), None).await?;
        let mut batches = Vec::new();
        for endpoint in info.endpoint {
            let ticket = endpoint.ticket.expect("ticket");
            let stream = client.do_get(ticket).await?;
            let mut part: Vec<RecordBatch> = stream.try_collect().await?;
            batches.append(&mut part);
        }
        Ok(batches)
    }

    /// Runs `sql` and pretty-prints the result.
    pub async fn table(&self, sql: &str) -> String {
        let batches = self.query(sql).await.expect("query");
        pretty_format_batches(&batches).unwrap().to_string()
    }

    /// Sends SIGTERM and waits for the exit status (at most 60 s).
    pub fn terminate(self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        self.wait()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- vigie log {} ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A valid report of `drone` at minute `seq` of 2026-01-01, with the given citizens.
pub fn report(drone: &str, seq: u64, citizens: &[(&str, f64)]) -> DroneReport {
    testing::report(
        drone,
        seq,
        testing::NEW_YEAR_2026 + seq as i64 * 60,
        citizens,
        &["calme"],
    )
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The `vigie` binary under test: cargo's `CARGO_BIN_EXE_vigie` (run-time, then compile-time
/// value), else the `vigie` next to this test's `deps/` directory. The fallback matters when this
/// test binary was compiled in another checkout sharing the target dir (sources unchanged, so cargo
/// did not rebuild it and the compiled-in path points elsewhere).
pub fn vigie_bin() -> std::path::PathBuf {
    let candidates = [
        std::env::var_os("CARGO_BIN_EXE_vigie").map(Into::into),
        Some(env!("CARGO_BIN_EXE_vigie").into()),
        std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("vigie"))),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|path: &std::path::PathBuf| path.is_file())
        .expect("the vigie binary (build it with cargo test --workspace)")
}
