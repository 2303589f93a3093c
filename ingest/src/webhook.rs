//! The webhook alert sink: POSTs each alert as JSON to a URL, in id order, off the ingest path.
//!
//! ```text
//! AlertHub ─subscription─▶ webhook task ─POST (retry with backoff until 2xx)─▶ URL
//!     └─ queue overflowed while the URL was down ─▶ catch up from the alerts table, resubscribe
//! ```
//! Delivery is at least once, in id order, for every alert raised while the server runs (a POST
//! may be repeated if the answer is lost); receivers dedupe on `id`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vigie_engine::Tenant;
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

/// Starts the webhook task for `tenant`'s alerts (the JSON names the tenant); it ends on
/// `shutdown`.
pub fn start_webhook(
    tenant: Arc<Tenant>,
    url: String,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    // Subscribe now, before the server takes any write: no alert of this run is missed.
    let mut first = Some(tenant.hub().subscribe(QUEUE));
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
        let mut last: Option<u64> = None;
        info!(%url, "alert webhook started");
        loop {
            let mut subscription = match first.take() {
                Some(s) => s,
                None => tenant.hub().subscribe(QUEUE),
            };
            // After an overflow, deliver what was missed from the table first.
            if let Some(done) = last {
                match tenant.read_alerts(done + 1, subscription.after).await {
                    Ok(missed) => {
                        for alert in missed {
                            if !deliver(&client, &url, tenant.name().as_str(), &alert, &shutdown)
                                .await
                            {
                                return;
                            }
                            last = Some(alert.id);
                        }
                    }
                    Err(e) => warn!(error = %e, "webhook cannot read missed alerts; skipping them"),
                }
            }
            loop {
                let alert = tokio::select! {
                    () = shutdown.cancelled() => return,
                    alert = subscription.alerts.recv() => alert,
                };
                match alert {
                    Some(alert) => {
                        if !deliver(&client, &url, tenant.name().as_str(), &alert, &shutdown).await
                        {
                            return;
                        }
                        last = Some(alert.id);
                    }
                    None if subscription.overflow.happened() => {
                        warn!("webhook fell behind; catching up from the alerts table");
                        last = last.or(Some(subscription.after));
                        break;
                    }
                    None => return,
                }
            }
        }
    })
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
