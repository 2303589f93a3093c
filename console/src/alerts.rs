//! The alert feed: recent alerts with their state, the live stream as Server-Sent Events, and
//! operators' acknowledgements pushed to every open console of the tenant.
//!
//! ```text
//! GET  /api/alerts?limit=N       ─▶ SQL: alerts ⟕ newest alert_events per alert, newest first
//! GET  /api/alerts/{id}          ─▶ the alert, its report's words and citizens
//! GET  /api/alerts/stream        ─▶ AlertsService::open(from_id) ─▶ `event: alert`, `id: <alert id>`
//!      (Last-Event-ID: n ─▶ from_id n + 1: a reconnect resumes with no gap and no repeat)
//!      + `event: alert-event` (no id) for each acknowledgement (Engine::watch_alert_events:
//!        recorded on this node at once, on another within its flush interval)
//! POST /api/alerts/{id}/ack {action, note} ─▶ Tenant::record_alert_event ─▶ every watcher
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use datafusion::common::ScalarValue;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::wrappers::BroadcastStream;
use vigie_engine::alert_events::{AlertAction, AlertEvent};
use vigie_ingest::webhook::alert_json;

use crate::session::Caller;
use crate::{ConsoleState, Error, Result};

const ALERTS_WITH_STATE: &str = "SELECT a.id, a.rule, a.drone_id, a.seq, a.time, a.latitude, \
     a.longitude, a.citizen, a.score, a.raised_at, e.action AS state, e.principal AS state_by, \
     e.time AS state_at, e.note AS note \
     FROM alerts a LEFT JOIN (SELECT alert_id, last_value(action ORDER BY time) AS action, \
     last_value(principal ORDER BY time) AS principal, max(time) AS time, \
     last_value(note ORDER BY time) AS note FROM alert_events GROUP BY alert_id) e \
     ON a.id = e.alert_id";

/// An operator's action as the pages show it (the `state*` columns of the feed).
fn event_json(event: &AlertEvent) -> Value {
    let time = chrono::DateTime::from_timestamp_micros(event.time_micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    json!({
        "alert_id": event.alert_id,
        "state": event.action.as_str(),
        "state_by": event.principal,
        "state_at": time,
        "note": event.note,
    })
}

/// `GET /api/alerts` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    limit: Option<usize>,
}

/// `GET /api/alerts`: the newest alerts with their state (`null`, `ack`, `resolve`).
pub(crate) async fn list(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>> {
    let limit = params.limit.unwrap_or(200).clamp(1, 5000);
    let rows = state
        .read(
            &caller.0,
            "alerts",
            &format!("{ALERTS_WITH_STATE} ORDER BY a.id DESC LIMIT {limit}"),
            Vec::new(),
            limit,
        )
        .await?;
    Ok(Json(json!({ "alerts": rows.objects() })))
}

/// `GET /api/alerts/{id}`: one alert with its state, and the words and citizens of its report.
pub(crate) async fn detail(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Value>> {
    let alert = state
        .read(
            &caller.0,
            "alert",
            &format!("{ALERTS_WITH_STATE} WHERE a.id = $1"),
            vec![ScalarValue::Int64(Some(id))],
            1,
        )
        .await?
        .objects()
        .pop()
        .ok_or_else(|| Error::NotFound(format!("there is no alert {id}")))?;
    let drone = alert["drone_id"].as_str().unwrap_or_default().to_string();
    let seq = alert["seq"].as_i64().unwrap_or_default();
    let report = state
        .read(
            &caller.0,
            "alert report",
            "SELECT words, citizens FROM reports WHERE drone_id = $1 AND seq = $2",
            vec![
                ScalarValue::Utf8(Some(drone)),
                ScalarValue::Int64(Some(seq)),
            ],
            1,
        )
        .await?
        .objects()
        .pop()
        .unwrap_or(Value::Null);
    Ok(Json(json!({ "alert": alert, "report": report })))
}

/// `POST /api/alerts/{id}/ack` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AckRequest {
    /// `ack` (default) or `resolve`.
    action: Option<String>,
    note: Option<String>,
}

/// `POST /api/alerts/{id}/ack`: records who acknowledged or resolved the alert, then tells
/// every open console of the tenant.
pub(crate) async fn ack(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
    Path(id): Path<i64>,
    Json(request): Json<AckRequest>,
) -> Result<Json<Value>> {
    let action = AlertAction::parse(request.action.as_deref().unwrap_or("ack"))?;
    let exists = state
        .read(
            &caller.0,
            "alert exists",
            "SELECT id FROM alerts WHERE id = $1",
            vec![ScalarValue::Int64(Some(id))],
            1,
        )
        .await?;
    if exists.rows.is_empty() {
        return Err(Error::NotFound(format!("there is no alert {id}")));
    }
    let tenant = state.engine.tenant(&caller.0.tenant).ok_or_else(|| {
        Error::Unavailable(format!("tenant {} is not open yet: retry", caller.0.tenant))
    })?;
    let event = AlertEvent {
        time_micros: chrono::Utc::now().timestamp_micros(),
        alert_id: id,
        action,
        principal: caller.0.name.clone(),
        role: caller.0.role.as_str().into(),
        note: request.note.filter(|n| !n.trim().is_empty()),
    };
    tenant.record_alert_event(&event).await?;
    Ok(Json(event_json(&event)))
}

/// `GET /api/alerts/stream` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamParams {
    /// The first alert id wanted (stored ones first); without it, live alerts only.
    from_id: Option<u64>,
}

/// `GET /api/alerts/stream`: the tenant's alerts as Server-Sent Events; a browser that
/// reconnects sends `Last-Event-ID` and resumes after it.
pub(crate) async fn stream(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
    headers: HeaderMap,
    Query(params): Query<StreamParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>> {
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| Error::BadRequest(format!("Last-Event-ID {v:?} is not an alert id")))
        })
        .transpose()?;
    let from_id = last_seen.map(|id| id + 1).or(params.from_id);
    // Subscribed to acknowledgements first: none recorded after the feed was read is missed.
    let events =
        BroadcastStream::new(state.engine.watch_alert_events(&caller.0.tenant)).map(|event| {
            Some(Ok(match event {
                Ok(event) => Event::default()
                    .event("alert-event")
                    .data(event_json(&event).to_string()),
                // Fell behind: the page reloads the feed's state.
                Err(_) => Event::default().event("reload").data("{}"),
            }))
        });
    let tenant = caller.0.tenant.as_str().to_string();
    let alerts = state
        .alerts
        .open(caller.0.clone(), from_id)
        .await?
        .map(move |alert| {
            Some(Ok(match alert {
                Ok(alert) => Event::default()
                    .id(alert.id.to_string())
                    .event("alert")
                    .data(alert_json(&tenant, &alert).to_string()),
                // The page reconnects (with Last-Event-ID) after an error event.
                Err(status) => Event::default()
                    .event("failed")
                    .data(json!({ "error": status.message() }).to_string()),
            }))
        })
        // The response ends with the alerts' stream (after an error, the page reconnects).
        .chain(futures::stream::once(async { None }));
    let shutdown = state.shutdown.clone();
    let merged = futures::stream::select(alerts, events)
        .scan((), |(), item| std::future::ready(item))
        .take_until(async move { shutdown.cancelled().await });
    Ok(Sse::new(merged).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
