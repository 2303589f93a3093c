//! The webhook alert sink: POSTs each alert as JSON to a URL, in id order, off the ingest path.
//!
//! ```text
//! one task per tenant, on every node:
//!   wait until this node owns the tenant (always, outside cluster mode)
//!   cursor = checkpoint webhook.<tenant> (the last id delivered, by any node, any run)
//!   AlertHub ─subscription─▶ catch up cursor+1..=subscription.after from the alerts table
//!            ─▶ live alerts ─POST (retry with backoff until 2xx)─▶ URL
//!            └─ the checkpoint written at most once a second, and when the task stops
//!   queue overflowed while the URL was down ─▶ catch up again from the table, resubscribe
//!   the hub closed (this node stepped down) ─▶ back to waiting; the new owner resumes
//! ```
//! Delivery is at least once, in id order: a POST may be repeated if its answer is lost, and
//! after a crash or a takeover the alerts since the last checkpoint (about a second's) are
//! posted again; receivers dedupe on `id`. The first run of a tenant's webhook starts with the
//! alerts raised from then on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vigie_engine::alert::Subscription;
use vigie_engine::store::TenantName;
use vigie_engine::{Checkpoints, Engine, Tenant};
use vigie_proto::Timestamp;
use vigie_proto::v1::Alert;

/// Alerts the webhook task may have queued before it catches up from the table instead.
const QUEUE: usize = 65_536;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The JSON body of one alert of `tenant`.
pub fn alert_json(tenant: &str, alert: &Alert) -> serde_json::Value {
    let time = |t: &Option<Timestamp>| {
        t.as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    };
    json!({
        "tenant": tenant,
        "id": alert.id,
        "rule": alert.rule,
        "drone_id": alert.drone_id,
        "seq": alert.seq,
        "time": time(&alert.time),
        "latitude": alert.latitude,
        "longitude": alert.longitude,
        "citizen": alert.citizen,
        "score": alert.score,
        "raised_at": time(&alert.raised_at),
    })
}

/// How often at most the webhook's progress is written to its checkpoint.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How often a node that does not own the tenant looks again.
const OWNER_POLL: Duration = Duration::from_millis(250);

/// Why a delivery run ended.
enum Ended {
    /// The server is stopping.
    Shutdown,
    /// This node stopped owning the tenant.
    Moved,
}

/// Starts the webhook task of tenant `name` (the JSON names the tenant); it posts while this
/// node owns the tenant and ends on `shutdown`.
pub fn start_webhook(
    engine: Arc<Engine>,
    name: TenantName,
    url: String,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    // Subscribe now, before the server takes any write: no alert of this run is missed.
    let mut first = engine.tenant(&name).filter(|t| t.is_owner()).map(|t| {
        let subscription = t.hub().subscribe(QUEUE);
        (t, subscription)
    });
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot build the webhook HTTP client; webhook disabled");
                return;
            }
        };
        let sink = Sink {
            client,
            url,
            key: format!("webhook.{}", name.as_str()),
            checkpoints: engine.checkpoints(),
            shutdown,
        };
        info!(tenant = %name, url = %sink.url, "alert webhook started");
        loop {
            let (tenant, subscription) = match first.take() {
                Some(owned) => owned,
                None => match engine.tenant(&name).filter(|t| t.is_owner()) {
                    Some(t) => {
                        let subscription = t.hub().subscribe(QUEUE);
                        (t, subscription)
                    }
                    None => {
                        tokio::select! {
                            () = sink.shutdown.cancelled() => return,
                            () = tokio::time::sleep(OWNER_POLL) => continue,
                        }
                    }
                },
            };
            let Some(cursor) = sink.load().await else {
                return;
            };
            match sink.run(&tenant, subscription, cursor).await {
                Ended::Shutdown => return,
                Ended::Moved => {
                    info!(tenant = %name, "this node stopped owning the tenant: its new owner posts its alerts")
                }
            }
        }
    })
}

/// Where one tenant's alerts go, and where its progress is kept.
struct Sink {
    client: reqwest::Client,
    url: String,
    key: String,
    checkpoints: Arc<dyn Checkpoints>,
    shutdown: CancellationToken,
}

impl Sink {
    /// The last id delivered, as the checkpoint says (retried until it answers); `None` on
    /// shutdown.
    async fn load(&self) -> Option<Option<u64>> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.checkpoints.get(&self.key).await {
                Ok(cursor) => return Some(cursor),
                Err(e) => {
                    warn!(key = %self.key, error = %e, retry_in = ?backoff, "webhook cannot read its checkpoint")
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn save(&self, last: u64) {
        if let Err(e) = self.checkpoints.put(&self.key, last).await {
            warn!(key = %self.key, error = %e, "webhook cannot write its checkpoint; alerts since the last one may be posted again");
        }
    }

    /// Delivers `tenant`'s alerts after `cursor` (from `subscription.after` when `None`) until
    /// shutdown or until this node stops owning the tenant.
    async fn run(
        &self,
        tenant: &Tenant,
        mut subscription: Subscription,
        cursor: Option<u64>,
    ) -> Ended {
        let name = tenant.name().as_str();
        let mut last = cursor.unwrap_or(subscription.after);
        if cursor.is_none() {
            // The first run: where it starts is recorded before anything is posted, so that a
            // crash before the first checkpoint still resumes from here.
            self.save(last).await;
        }
        let mut saved = Some(last);
        loop {
            // What the subscription does not hold: from the table.
            if last < subscription.after {
                match tenant.read_alerts(last + 1, subscription.after).await {
                    Ok(missed) => {
                        for alert in missed {
                            if !deliver(&self.client, &self.url, name, &alert, &self.shutdown).await
                            {
                                self.save(last).await;
                                return Ended::Shutdown;
                            }
                            last = alert.id;
                        }
                    }
                    Err(e) => warn!(error = %e, "webhook cannot read missed alerts; skipping them"),
                }
                last = last.max(subscription.after);
            }
            let mut save_due = (saved != Some(last)).then(Instant::now);
            loop {
                let alert = tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => {
                        self.save(last).await;
                        return Ended::Shutdown;
                    }
                    () = sleep_until(save_due), if save_due.is_some() => {
                        self.save(last).await;
                        saved = Some(last);
                        save_due = None;
                        continue;
                    }
                    alert = subscription.alerts.recv() => alert,
                };
                match alert {
                    Some(alert) if alert.id <= last => {}
                    Some(alert) => {
                        if !deliver(&self.client, &self.url, name, &alert, &self.shutdown).await {
                            self.save(last).await;
                            return Ended::Shutdown;
                        }
                        last = alert.id;
                        save_due.get_or_insert_with(|| Instant::now() + SAVE_EVERY);
                    }
                    None if subscription.overflow.moved() => {
                        self.save(last).await;
                        return Ended::Moved;
                    }
                    None if subscription.overflow.happened() => {
                        warn!("webhook fell behind; catching up from the alerts table");
                        subscription = tenant.hub().subscribe(QUEUE);
                        break;
                    }
                    None => {
                        self.save(last).await;
                        return Ended::Moved;
                    }
                }
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// POSTs until a 2xx answer (true) or shutdown (false).
async fn deliver(
    client: &reqwest::Client,
    url: &str,
    tenant: &str,
    alert: &Alert,
    shutdown: &CancellationToken,
) -> bool {
    let body = alert_json(tenant, alert).to_string();
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => {
                warn!(id = alert.id, status = %r.status(), retry_in = ?backoff, "webhook refused an alert")
            }
            Err(e) => warn!(id = alert.id, error = %e, retry_in = ?backoff, "webhook unreachable"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
