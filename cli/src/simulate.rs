//! `vigie simulate`: a deterministic drone fleet streamed over `Ingest.WriteStream`.
//!
//! Report `k` of drone `d` depends only on `(seed, d, k)`: the same arguments always produce the
//! same reports, in any order, so `--dump` gives an oracle (JSON lines) of exactly what was sent.
//! Drones drift around Paris; each report names 0–3 citizens with scores in [0, 100], about 1 % of
//! reports holding a score under 20, and 0–4 words from a small vocabulary.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use vigie_proto::Timestamp;
use vigie_proto::v1::alerts_client::AlertsClient;
use vigie_proto::v1::ingest_client::IngestClient;
use vigie_proto::v1::{Citizen, DroneReport, SubscribeRequest, WriteRequest};

/// Options of `vigie simulate`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SimulateArgs {
    /// Address of `vigie serve` (`host:port` or `http://host:port`).
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Number of drones.
    #[arg(long, default_value_t = 100)]
    pub(crate) drones: u32,
    /// Number of the first drone: `--first-drone 100 --drones 50` sends drones 100 to 149, so
    /// several simulators (or servers) can share out one fleet.
    #[arg(long, default_value_t = 0)]
    pub(crate) first_drone: u32,
    /// Reports per drone (one per simulated minute).
    #[arg(long, default_value_t = 60)]
    pub(crate) reports_per_drone: u32,
    /// Total reports per second to send (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Seed of the fleet.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Reports per WriteRequest.
    #[arg(long, default_value_t = 500)]
    pub(crate) batch: usize,
    /// Concurrent WriteStream calls.
    #[arg(long, default_value_t = 2)]
    pub(crate) streams: usize,
    /// Time of every drone's first report (RFC 3339) [default: now minus reports-per-drone minutes].
    #[arg(long)]
    pub(crate) start: Option<DateTime<Utc>>,
    /// Also write every generated report to this file as JSON lines (for checking answers).
    #[arg(long)]
    pub(crate) dump: Option<std::path::PathBuf>,
    /// Also subscribe to alerts while sending and report the latency from the server receiving a
    /// report to this client receiving its alert (p50/p99/p999; same clock, so run on the server's
    /// machine).
    #[arg(long)]
    pub(crate) measure_alerts: bool,
    /// API key sent as `authorization: Bearer <key>` (a drone key; an analyst key for
    /// `--measure-alerts`). Prefer the environment variable to keep it out of `ps`.
    #[arg(long, env = "VIGIE_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
}

const FIRST: [&str; 24] = [
    "Ana", "Bruno", "Chloé", "David", "Emma", "Farid", "Gaëlle", "Hugo", "Inès", "Jules", "Karim",
    "Léa", "Malik", "Nina", "Omar", "Paul", "Quentin", "Rose", "Sami", "Théo", "Ugo", "Valérie",
    "Wassim", "Yasmine",
];
const LAST: [&str; 20] = [
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
    "Moreau", "Simon", "Laurent", "Lefebvre", "Michel", "Garcia", "David", "Bertrand", "Roux",
    "Vincent", "Fournier",
];
const WORDS: [&str; 16] = [
    "bonjour",
    "marché",
    "pluie",
    "vite",
    "calme",
    "police",
    "attention",
    "feu",
    "foule",
    "manifestation",
    "emeute",
    "barricade",
    "sirène",
    "métro",
    "école",
    "café",
];

/// SplitMix64: a tiny, well-mixed PRNG whose output never changes between versions.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, drone: u32, k: u32) -> Self {
        let mut r =
            Rng(seed ^ (u64::from(drone) << 32 | u64::from(k)).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The fleet: report `k` of drone `d` as a pure function of the seed.
pub(crate) struct Fleet {
    seed: u64,
    start: i64,
}

impl Fleet {
    pub(crate) fn new(seed: u64, start: DateTime<Utc>) -> Self {
        Self {
            seed,
            start: start.timestamp(),
        }
    }

    pub(crate) fn report(&self, drone: u32, k: u32) -> DroneReport {
        let mut home = Rng::new(self.seed, drone, u32::MAX);
        let home_lat = 48.8566 + (home.unit() - 0.5) * 0.2;
        let home_lon = 2.3522 + (home.unit() - 0.5) * 0.3;
        let phase = home.unit() * std::f64::consts::TAU;
        let jitter = home.below(60) as i64;
        let mut r = Rng::new(self.seed, drone, k);
        let angle = phase + f64::from(k) * 0.05;
        let citizens = (0..r.below(4))
            .map(|_| {
                let person = r.below((FIRST.len() * LAST.len()) as u64) as usize;
                // 1 % of reports (1.5 citizens on average) hold a score under 20.
                let score = if r.unit() < 0.0067 {
                    (r.unit() * 20.0 * 10.0).floor() / 10.0
                } else {
                    20.0 + (r.unit() * 80.0 * 10.0).floor() / 10.0
                };
                Citizen {
                    name: format!(
                        "{} {}",
                        FIRST[person % FIRST.len()],
                        LAST[person / FIRST.len()]
                    ),
                    score,
                }
            })
            .collect();
        let words = (0..r.below(5))
            .map(|_| WORDS[r.below(WORDS.len() as u64) as usize].to_string())
            .collect();
        DroneReport {
            drone_id: format!("drone-{drone:05}"),
            seq: u64::from(k),
            time: Some(Timestamp {
                seconds: self.start + i64::from(k) * 60 + jitter,
                nanos: 0,
            }),
            latitude: home_lat + 0.01 * angle.sin(),
            longitude: home_lon + 0.01 * angle.cos(),
            citizens,
            words,
        }
    }
}

/// One report as a JSON line (time in RFC 3339 with microseconds, UTC).
fn to_json(report: &DroneReport) -> serde_json::Value {
    let time = report
        .time
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true));
    json!({
        "drone_id": report.drone_id,
        "seq": report.seq,
        "time": time,
        "latitude": report.latitude,
        "longitude": report.longitude,
        "citizens": report.citizens.iter().map(|c| json!({"name": c.name, "score": c.score})).collect::<Vec<_>>(),
        "words": report.words,
    })
}

#[derive(Debug, Default, Clone)]
struct Totals {
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    /// Request-to-acknowledgement latency of every request, in microseconds.
    latencies_us: Vec<u64>,
}

/// The `--measure-alerts` subscriber: its own thread, runtime and connection, like a dispatcher on
/// another machine, so that the fleet's encoding work does not delay the moment an alert is seen.
struct AlertWatch {
    thread: std::thread::JoinHandle<()>,
    stop: tokio_util::sync::CancellationToken,
    /// Microseconds from `raised_at` to reception, per alert.
    latencies: Arc<Mutex<Vec<u64>>>,
}

impl AlertWatch {
    /// Subscribes (returns once the subscription is open) and records every alert's latency.
    async fn start(endpoint: String, auth: BearerAuth) -> Result<Self> {
        let latencies: Arc<Mutex<Vec<u64>>> = Arc::default();
        let sink = latencies.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let (ready, subscribed) = tokio::sync::oneshot::channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name("alert-watch".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready.send(Err(e.into()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let opened = async {
                        let channel = tonic::transport::Endpoint::from_shared(endpoint)?
                            .connect()
                            .await?;
                        let stream = AlertsClient::with_interceptor(channel, auth)
                            .subscribe(SubscribeRequest { from_id: None })
                            .await
                            .context("Alerts.Subscribe refused")?
                            .into_inner();
                        anyhow::Ok(stream)
                    };
                    let mut stream = match opened.await {
                        Ok(s) => {
                            let _ = ready.send(Ok(()));
                            s
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    loop {
                        let message = tokio::select! {
                            () = stopped.cancelled() => break,
                            m = stream.message() => m,
                        };
                        let Ok(Some(alert)) = message else { break };
                        let now = Utc::now().timestamp_micros();
                        if let Some(t) = alert.raised_at {
                            let raised = t.seconds * 1_000_000 + i64::from(t.nanos / 1_000);
                            sink.lock()
                                .expect("not poisoned")
                                .push(u64::try_from(now - raised).unwrap_or(0));
                        }
                    }
                });
            })
            .context("cannot start the alert subscriber thread")?;
        subscribed
            .await
            .context("the alert subscriber thread ended")??;
        Ok(Self {
            thread,
            stop,
            latencies,
        })
    }

    /// Stops listening; the latencies, sorted.
    fn stop(self) -> Vec<u64> {
        self.stop.cancel();
        let _ = self.thread.join();
        let mut l = std::mem::take(&mut *self.latencies.lock().expect("not poisoned"));
        l.sort_unstable();
        l
    }
}

/// Adds `authorization: Bearer <key>` to every call when a key is given.
#[derive(Debug, Clone)]
pub(crate) struct BearerAuth(Option<tonic::metadata::AsciiMetadataValue>);

impl BearerAuth {
    pub(crate) fn new(key: Option<&str>) -> Result<Self> {
        key.map(|k| {
            format!("Bearer {k}")
                .parse()
                .context("the API key must be printable ASCII")
        })
        .transpose()
        .map(Self)
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub(crate) async fn run(args: SimulateArgs) -> Result<()> {
    if args.target.is_none() && args.dump.is_none() {
        bail!("nothing to do: give --target to send reports, --dump to write them, or both");
    }
    if args.batch == 0 || args.streams == 0 {
        bail!("--batch and --streams must be at least 1");
    }
    let start = args.start.unwrap_or_else(|| {
        Utc::now() - chrono::Duration::minutes(i64::from(args.reports_per_drone))
    });
    let fleet = Fleet::new(args.seed, start);
    let total = u64::from(args.drones) * u64::from(args.reports_per_drone);

    if let Some(path) = &args.dump {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = BufWriter::new(file);
        for k in 0..args.reports_per_drone {
            for d in args.first_drone..args.first_drone.saturating_add(args.drones) {
                serde_json::to_writer(&mut out, &to_json(&fleet.report(d, k)))?;
                out.write_all(b"\n")?;
            }
        }
        out.flush()?;
    }
    let Some(target) = &args.target else {
        println!(
            "wrote {total} reports to {}",
            args.dump
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        return Ok(());
    };
    let endpoint = if target.contains("://") {
        target.clone()
    } else {
        format!("http://{target}")
    };
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .with_context(|| format!("invalid --target {target}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))?;

    let auth = BearerAuth::new(args.api_key.as_deref())?;
    let alert_watch = if args.measure_alerts {
        Some(AlertWatch::start(endpoint.clone(), auth.clone()).await?)
    } else {
        None
    };

    let began = Instant::now();
    let mut senders = Vec::with_capacity(args.streams);
    let mut tasks = Vec::with_capacity(args.streams);
    for _ in 0..args.streams {
        let (tx, rx) = mpsc::channel::<WriteRequest>(8);
        // Send times of the requests not answered yet, in order (answers come back in order).
        let sent_at: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
        senders.push((tx, sent_at.clone()));
        let mut client = IngestClient::with_interceptor(channel.clone(), auth.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        tasks.push(tokio::spawn(async move {
            let mut totals = Totals::default();
            let mut responses = client
                .write_stream(ReceiverStream::new(rx))
                .await
                .context("WriteStream refused")?
                .into_inner();
            while let Some(r) = responses.message().await.context("WriteStream failed")? {
                if let Some(t) = sent_at.lock().expect("not poisoned").pop_front() {
                    totals.latencies_us.push(t.elapsed().as_micros() as u64);
                }
                totals.accepted += u64::from(r.accepted);
                totals.duplicates += u64::from(r.duplicates);
                totals.rejected += r.rejected.len() as u64;
            }
            anyhow::Ok(totals)
        }));
    }

    let mut sent = 0u64;
    // Protobuf bytes of the reports sent (as encoded inside WriteRequest), to compare with what
    // the lake stores.
    let mut proto_bytes = 0u64;
    let mut batch = Vec::with_capacity(args.batch);
    let mut next_stream = 0usize;
    'outer: for k in 0..args.reports_per_drone {
        for d in args.first_drone..args.first_drone.saturating_add(args.drones) {
            let report = fleet.report(d, k);
            proto_bytes += prost::encoding::message::encoded_len(1, &report) as u64;
            batch.push(report);
            if batch.len() == args.batch {
                sent += batch.len() as u64;
                let request = WriteRequest {
                    reports: std::mem::replace(&mut batch, Vec::with_capacity(args.batch)),
                };
                if send(&senders[next_stream], request).await.is_err() {
                    break 'outer;
                }
                next_stream = (next_stream + 1) % senders.len();
                pace(args.rate, sent, began).await;
            }
        }
    }
    if !batch.is_empty() {
        sent += batch.len() as u64;
        let _ = send(&senders[next_stream], WriteRequest { reports: batch }).await;
    }
    drop(senders);
    let mut totals = Totals::default();
    for task in tasks {
        let t = task.await.context("stream task panicked")??;
        totals.accepted += t.accepted;
        totals.duplicates += t.duplicates;
        totals.rejected += t.rejected;
        totals.latencies_us.extend(t.latencies_us);
    }
    let elapsed = began.elapsed().as_secs_f64();
    totals.latencies_us.sort_unstable();
    let pct = |p: f64| {
        let l = &totals.latencies_us;
        if l.is_empty() {
            0.0
        } else {
            l[((l.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
        }
    };
    println!(
        "sent={sent} accepted={} duplicates={} rejected={} elapsed={elapsed:.3}s reports/s={:.0} \
         ack_p50_ms={:.2} ack_p99_ms={:.2} proto_bytes={proto_bytes}",
        totals.accepted,
        totals.duplicates,
        totals.rejected,
        sent as f64 / elapsed.max(1e-9),
        pct(0.5),
        pct(0.99),
    );
    if let Some(watch) = alert_watch {
        // Let the last alerts arrive, then stop listening.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let l = watch.stop();
        let pct = |p: f64| {
            if l.is_empty() {
                0.0
            } else {
                l[((l.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
            }
        };
        println!(
            "alerts={} alert_p50_ms={:.3} alert_p99_ms={:.3} alert_p999_ms={:.3} alert_max_ms={:.3}",
            l.len(),
            pct(0.5),
            pct(0.99),
            pct(0.999),
            pct(1.0)
        );
    }
    Ok(())
}

async fn send(
    (tx, sent_at): &(mpsc::Sender<WriteRequest>, Arc<Mutex<VecDeque<Instant>>>),
    request: WriteRequest,
) -> Result<(), mpsc::error::SendError<WriteRequest>> {
    let Ok(permit) = tx.reserve().await else {
        return Err(mpsc::error::SendError(request));
    };
    sent_at
        .lock()
        .expect("not poisoned")
        .push_back(Instant::now());
    permit.send(request);
    Ok(())
}

async fn pace(rate: f64, sent: u64, began: Instant) {
    if rate <= 0.0 {
        return;
    }
    let due = Duration::from_secs_f64(sent as f64 / rate);
    if let Some(wait) = due.checked_sub(began.elapsed()) {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_is_deterministic_and_valid() {
        let start = "2026-01-01T00:00:00Z".parse().unwrap();
        let a = Fleet::new(7, start);
        let b = Fleet::new(7, start);
        let mut low = 0;
        let n = 20_000;
        for i in 0..n {
            let (d, k) = (i % 100, i / 100);
            let r = a.report(d, k);
            assert_eq!(r, b.report(d, k));
            vigie_engine::report::validate(&r).unwrap();
            if r.citizens.iter().any(|c| c.score < 20.0) {
                low += 1;
            }
        }
        // About 1 % of reports hold a low score.
        assert!((100..=300).contains(&low), "{low}");
        assert_ne!(a.report(0, 0), Fleet::new(8, start).report(0, 0));
    }
}
