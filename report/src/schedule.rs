//! The morning mail: each tenant's report of the day before, sent once at its local time.
//!
//! ```text
//! every 5 s (until shutdown) ─ for each tenant with recipients, owned by this node:
//!   due day = yesterday if its `at` passed today (its time zone), else the day before
//!   checkpoint `report-<tenant>` (the last day sent; the lake's, or the cluster's bucket)
//!   behind? ─▶ gather ─▶ pdf ─▶ mail ─▶ checkpoint = due day ; audit `report-mail`
//!   failed? ─▶ retry after 2 s, 4 s, 8 s … 10 min (per tenant)
//! ```
//! Exactly one mail per tenant and day, across restarts and nodes: only the tenant's owner
//! sends, and the checkpoint is written once the server accepted the mail. A crash in between
//! sends that mail again at the next start (its Message-ID is the same, so a mail system can
//! drop the repeat). Days missed while no server ran are not sent afterwards (the console and
//! `vigie report` make any day's report).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vigie_engine::Engine;
use vigie_engine::audit::AuditEvent;
use vigie_engine::store::TenantName;
use vigie_sql::SqlEngine;

use crate::mail::{Outbox, message};
use crate::{ReportRequest, gather, pdf};

/// One tenant's mailing.
#[derive(Debug, Clone, PartialEq)]
pub struct Mailing {
    /// The tenant.
    pub tenant: TenantName,
    /// Its recipients.
    pub to: Vec<String>,
    /// The local time the report of the day before is sent.
    pub at: NaiveTime,
    /// The tenant's time zone.
    pub time_zone: Tz,
    /// Whether the report names citizens.
    pub names: bool,
}

/// The mailings as they are now (the credentials change while the server runs).
pub type Mailings = Arc<dyn Fn() -> Vec<Mailing> + Send + Sync>;

/// How often the schedule is looked at.
const TICK: Duration = Duration::from_secs(5);
/// The first retry's wait; each next one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// The day whose report is due at `now` for a mailing at `at` in `tz`.
pub fn due_day(now: chrono::DateTime<Utc>, at: NaiveTime, tz: Tz) -> NaiveDate {
    let local = now.with_timezone(&tz);
    let today = local.date_naive();
    let back = if local.time() >= at { 1 } else { 2 };
    today - chrono::Duration::days(back)
}

fn checkpoint_key(tenant: &TenantName) -> String {
    format!("report-{tenant}")
}

fn day_number(day: NaiveDate) -> u64 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");
    u64::try_from((day - epoch).num_days()).unwrap_or(0)
}

/// A tenant's retry state.
#[derive(Debug, Default)]
struct Attempts {
    failures: u32,
    next: Option<Instant>,
}

/// Sends the mailings' reports until `shutdown`.
pub async fn run(
    engine: Arc<Engine>,
    outbox: Outbox,
    from: String,
    mailings: Mailings,
    shutdown: CancellationToken,
) {
    let mut attempts: HashMap<TenantName, Attempts> = HashMap::new();
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    let mut last_look: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = Instant::now();
        let retry_due = attempts.values().any(|a| a.next.is_some_and(|n| n <= now));
        if !retry_due && last_look.is_some_and(|t| now - t < TICK) {
            continue;
        }
        last_look = Some(now);
        for mailing in mailings().into_iter().filter(|m| !m.to.is_empty()) {
            let state = attempts.entry(mailing.tenant.clone()).or_default();
            if state.next.is_some_and(|n| n > now) {
                continue;
            }
            match send_if_due(&engine, &outbox, &from, &mailing).await {
                Ok(()) => *state = Attempts::default(),
                Err(e) => {
                    state.failures += 1;
                    let wait = FIRST_BACKOFF
                        .saturating_mul(1 << state.failures.min(10).saturating_sub(1))
                        .min(MAX_BACKOFF);
                    state.next = Some(Instant::now() + wait);
                    warn!(tenant = %mailing.tenant, error = %e, retry_in = ?wait, "the daily report was not sent");
                    if let Some(tenant) = engine.tenant(&mailing.tenant) {
                        let mut event = AuditEvent::now("vigie-report", "admin", "report-mail");
                        event.outcome = format!("error: {e}");
                        event.detail = Some(format!("to {}", mailing.to.join(",")));
                        tenant.audit(&event);
                    }
                }
            }
        }
    }
}

/// Sends `mailing`'s due report unless it was sent already or this node does not own the
/// tenant.
async fn send_if_due(
    engine: &Engine,
    outbox: &Outbox,
    from: &str,
    mailing: &Mailing,
) -> std::result::Result<(), String> {
    let Some(tenant) = engine.tenant(&mailing.tenant) else {
        return Ok(());
    };
    if !tenant.is_owner() {
        return Ok(());
    }
    let day = due_day(Utc::now(), mailing.at, mailing.time_zone);
    let key = checkpoint_key(&mailing.tenant);
    let checkpoints = engine.checkpoints();
    let sent = checkpoints.get(&key).await.map_err(|e| e.to_string())?;
    if sent.is_some_and(|s| s >= day_number(day)) {
        return Ok(());
    }
    let sql = SqlEngine::new(tenant.clone(), engine.lake())
        .await
        .map_err(|e| e.to_string())?;
    let request = ReportRequest {
        tenant: mailing.tenant.to_string(),
        day,
        time_zone: mailing.time_zone,
        names: mailing.names,
    };
    let report = gather(&sql, &request).await.map_err(|e| e.to_string())?;
    let bytes = pdf(&report).map_err(|e| e.to_string())?;
    let mail = message(&report, bytes, from, &mailing.to).map_err(|e| e.to_string())?;
    outbox
        .send(&format!("vigie-report-{}-{day}", mailing.tenant), mail)
        .await
        .map_err(|e| {
            if e.permanent {
                format!("the mail server refused the mail: {e}")
            } else {
                e.message
            }
        })?;
    checkpoints
        .put(&key, day_number(day))
        .await
        .map_err(|e| format!("sent, but the send could not be recorded: {e}"))?;
    let mut event = AuditEvent::now("vigie-report", "admin", "report-mail");
    event.detail = Some(format!(
        "day {day} ({}) to {}",
        mailing.time_zone,
        mailing.to.join(",")
    ));
    tenant.audit(&event);
    info!(tenant = %mailing.tenant, %day, to = %mailing.to.join(","), "daily report sent");
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_due_day_is_yesterday_once_the_hour_passed() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let six = NaiveTime::from_hms_opt(6, 0, 0).unwrap();
        let at = |h, m| Utc.with_ymd_and_hms(2026, 2, 2, h, m, 0).unwrap();
        // 05:59 UTC is 06:59 in Paris.
        assert_eq!(due_day(at(5, 59), six, paris).to_string(), "2026-02-01");
        assert_eq!(due_day(at(4, 59), six, paris).to_string(), "2026-01-31");
        // 23:30 UTC is 00:30 the next day in Paris: before 06:00, the day before yesterday.
        assert_eq!(due_day(at(23, 30), six, paris).to_string(), "2026-02-01");
        assert_eq!(due_day(at(5, 0), six, paris).to_string(), "2026-02-01");
        assert_eq!(day_number(NaiveDate::from_ymd_opt(1970, 1, 2).unwrap()), 1);
    }
}
