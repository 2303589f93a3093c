//! What the map and the overview read: each drone's last position, a drone's track, a density
//! grid of low scores, and the tenant's figures of the day.
//!
//! ```text
//! GET /api/drones/latest?minutes=M      ─▶ per drone: last time, position, seq; open alerts
//! GET /api/drones/{id}/track?from=&to=  ─▶ its reports' positions in time order
//! GET /api/density?minutes=M&below=S    ─▶ low-score sightings counted per 0.01° cell
//! GET /api/overview                     ─▶ figures, per-hour series (reports_hourly), top areas
//! ```
//! Every read is a SQL query of the caller's session: tenant isolation, limits and audit are
//! Flight SQL's.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use datafusion::common::ScalarValue;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::session::Caller;
use crate::{ConsoleState, Error, Result};

/// The longest range the map asks for, in minutes (30 days).
const MAX_MINUTES: u32 = 30 * 24 * 60;
/// Points of one track at most.
const MAX_TRACK_POINTS: usize = 20_000;

fn minutes(given: Option<u32>, default: u32) -> Result<u32> {
    let minutes = given.unwrap_or(default);
    if minutes == 0 || minutes > MAX_MINUTES {
        return Err(Error::BadRequest(format!(
            "minutes must be between 1 and {MAX_MINUTES} (30 days), not {minutes}"
        )));
    }
    Ok(minutes)
}

/// `?minutes=` of the map's reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RangeParams {
    minutes: Option<u32>,
    below: Option<f64>,
}

/// `GET /api/drones/latest`: every drone seen in the range, its last report, and how many of
/// its alerts in the range nobody acknowledged or resolved.
pub(crate) async fn latest(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
    Query(params): Query<RangeParams>,
) -> Result<Json<Value>> {
    let minutes = minutes(params.minutes, 24 * 60)?;
    let sql = format!(
        "WITH last AS (SELECT drone_id, max(time) AS time, \
           last_value(latitude ORDER BY time, seq) AS latitude, \
           last_value(longitude ORDER BY time, seq) AS longitude, \
           max(seq) AS seq, count(*) AS reports \
           FROM reports WHERE time >= now() - INTERVAL '{minutes} minutes' GROUP BY drone_id), \
         open AS (SELECT drone_id, count(*) AS open_alerts FROM alerts \
           WHERE time >= now() - INTERVAL '{minutes} minutes' \
           AND id NOT IN (SELECT alert_id FROM alert_events) GROUP BY drone_id) \
         SELECT last.*, coalesce(open.open_alerts, 0) AS open_alerts, \
           CAST(extract(epoch FROM now()) - extract(epoch FROM last.time) AS DOUBLE) AS age_seconds \
         FROM last LEFT JOIN open ON last.drone_id = open.drone_id ORDER BY last.drone_id"
    );
    let rows = state
        .read(&caller.0, "drones/latest", &sql, Vec::new(), 100_000)
        .await?;
    Ok(Json(
        json!({ "drones": rows.objects(), "stale_after_seconds": 120 }),
    ))
}

/// `GET /api/drones/{id}/track` parameters: RFC 3339 bounds, or the last `minutes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrackParams {
    from: Option<String>,
    to: Option<String>,
    minutes: Option<u32>,
}

fn instant(text: &str) -> Result<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| Error::BadRequest(format!("{text:?} is not an RFC 3339 time: {e}")))
}

/// `GET /api/drones/{id}/track`: the drone's positions over the range, oldest first.
pub(crate) async fn track(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
    Path(drone): Path<String>,
    Query(params): Query<TrackParams>,
) -> Result<Json<Value>> {
    let timestamp = |micros| ScalarValue::TimestampMicrosecond(Some(micros), Some("UTC".into()));
    let (from, to) = match (&params.from, &params.to) {
        (Some(from), Some(to)) => (instant(from)?, instant(to)?),
        (None, None) => {
            let now = chrono::Utc::now().timestamp_micros();
            let minutes = i64::from(minutes(params.minutes, 60)?);
            (now - minutes * 60_000_000, now)
        }
        _ => {
            return Err(Error::BadRequest(
                "give both `from` and `to`, or neither".into(),
            ));
        }
    };
    if from > to {
        return Err(Error::BadRequest("`from` is after `to`".into()));
    }
    let rows = state
        .read(
            &caller.0,
            "drone track",
            &format!(
                "SELECT time, latitude, longitude, seq FROM reports \
                 WHERE drone_id = $1 AND time >= $2 AND time <= $3 ORDER BY time, seq \
                 LIMIT {MAX_TRACK_POINTS}"
            ),
            vec![
                ScalarValue::Utf8(Some(drone.clone())),
                timestamp(from),
                timestamp(to),
            ],
            MAX_TRACK_POINTS,
        )
        .await?;
    Ok(Json(json!({ "drone_id": drone, "points": rows.objects() })))
}

/// `GET /api/density`: sightings with a score below `below` (default 20, the default rule's threshold) in the range, counted
/// per cell of 0.01° (about 1 km).
pub(crate) async fn density(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
    Query(params): Query<RangeParams>,
) -> Result<Json<Value>> {
    let minutes = minutes(params.minutes, 24 * 60)?;
    let below = params.below.unwrap_or(20.0);
    if !below.is_finite() {
        return Err(Error::BadRequest("`below` must be a number".into()));
    }
    let rows = state
        .read(
            &caller.0,
            "density",
            &format!(
                "SELECT floor(latitude * 100) / 100 AS lat, floor(longitude * 100) / 100 AS lon, \
                 count(*) AS sightings FROM sightings \
                 WHERE time >= now() - INTERVAL '{minutes} minutes' AND score < $1 \
                 GROUP BY 1, 2 ORDER BY sightings DESC LIMIT 2000"
            ),
            vec![ScalarValue::Float64(Some(below))],
            2000,
        )
        .await?;
    Ok(Json(
        json!({ "cell_degrees": 0.01, "cells": rows.objects() }),
    ))
}

/// `GET /api/overview`: the figures and charts of the overview page.
pub(crate) async fn overview(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
) -> Result<Json<Value>> {
    let who = &caller.0;
    let figures = state
        .read(
            who,
            "overview figures",
            "SELECT \
               (SELECT count(DISTINCT drone_id) FROM reports WHERE time >= now() - INTERVAL '5 minutes') AS active_drones, \
               (SELECT count(*) FROM reports WHERE time >= now() - INTERVAL '5 minutes') / 5.0 AS reports_per_minute, \
               (SELECT count(*) FROM alerts WHERE time >= date_trunc('day', now())) AS alerts_today, \
               (SELECT CAST(avg(extract(epoch FROM received_at) - extract(epoch FROM time)) AS DOUBLE) \
                  FROM reports WHERE received_at >= now() - INTERVAL '5 minutes') AS ingest_lag_seconds",
            Vec::new(),
            1,
        )
        .await?
        .objects()
        .pop()
        .unwrap_or(Value::Null);
    let hourly = state
        .read(
            who,
            "overview hourly",
            "WITH r AS (SELECT hour, sum(reports) AS reports FROM reports_hourly \
               WHERE hour >= date_trunc('hour', now()) - INTERVAL '23 hours' GROUP BY hour), \
             a AS (SELECT date_trunc('hour', time) AS hour, count(*) AS alerts FROM alerts \
               WHERE time >= date_trunc('hour', now()) - INTERVAL '23 hours' GROUP BY 1) \
             SELECT coalesce(r.hour, a.hour) AS hour, coalesce(r.reports, 0) AS reports, \
               coalesce(a.alerts, 0) AS alerts FROM r FULL JOIN a ON r.hour = a.hour ORDER BY 1",
            Vec::new(),
            48,
        )
        .await?;
    let areas = state
        .read(
            who,
            "overview areas",
            "SELECT cell, sum(low_score_sightings) AS low_score_sightings, sum(reports) AS reports \
             FROM reports_hourly WHERE hour >= now() - INTERVAL '24 hours' \
             GROUP BY cell HAVING sum(low_score_sightings) > 0 \
             ORDER BY low_score_sightings DESC, cell LIMIT 10",
            Vec::new(),
            10,
        )
        .await?;
    Ok(Json(json!({
        "figures": figures,
        "hourly": hourly.objects(),
        "top_areas": areas.objects(),
    })))
}
