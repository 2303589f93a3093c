//! The daily report for download: any day of the caller's tenant, as the mailed PDF (or HTML).
//!
//! ```text
//! GET /api/report?day=YYYY-MM-DD[&format=pdf|html]
//!   ─▶ the tenant's settings (time zone, names) ─▶ Sessions (admitted, time-limited, audited)
//!   ─▶ vigie_report::gather ─▶ render ─▶ attachment `vigie-<tenant>-<day>.pdf`
//! ```

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use serde::Deserialize;
use vigie_report::{Format, ReportRequest};
use vigie_sql::Purpose;

use crate::session::Caller;
use crate::{ConsoleState, Error, Result};

/// `GET /api/report` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReportParams {
    /// The local day, `YYYY-MM-DD`.
    day: String,
    /// `pdf` (default) or `html`.
    format: Option<String>,
}

/// `GET /api/report`: the tenant's report of `day`.
pub(crate) async fn download(
    State(state): State<Arc<ConsoleState>>,
    caller: Caller,
    Query(params): Query<ReportParams>,
) -> Result<Response> {
    let format = Format::parse(params.format.as_deref().unwrap_or("pdf"))?;
    let day = NaiveDate::parse_from_str(&params.day, "%Y-%m-%d")
        .map_err(|_| Error::BadRequest(format!("day {:?} is not YYYY-MM-DD", params.day)))?;
    let principal = caller.0;
    let settings = state.auth.report_settings(principal.tenant.as_str());
    // Checked by `vigie admin set-report`: an unknown one is a damaged credentials file.
    let time_zone = vigie_report::time_zone(settings.time_zone.as_deref().unwrap_or("UTC"))
        .map_err(|e| Error::Internal(format!("tenant {}: {e}", principal.tenant)))?;
    // The day must exist in the zone before the query is admitted.
    vigie_report::day_bounds(day, time_zone)?;
    let request = ReportRequest {
        tenant: principal.tenant.to_string(),
        day,
        time_zone,
        names: settings.names,
    };
    let (query, sql) = state
        .sessions
        .start(
            &principal,
            &format!("/* console: daily report {day} ({time_zone}) */"),
            Purpose::Run,
        )
        .await?;
    let report = state
        .sessions
        .run(&query, async move {
            vigie_report::gather(&sql, &request)
                .await
                .map_err(|e| match e {
                    vigie_report::Error::Sql { source, .. } => source,
                    other => vigie_sql::Error::Internal(other.to_string()),
                })
        })
        .await?;
    drop(query);
    let bytes = format.render(&report)?;
    Ok((
        [
            (CONTENT_TYPE, format.content_type().to_string()),
            (
                CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"vigie-{}-{day}.{}\"",
                    principal.tenant,
                    format.extension()
                ),
            ),
        ],
        bytes,
    )
        .into_response())
}
