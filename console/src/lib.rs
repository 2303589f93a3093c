//! Vigie's web console: the control room's live map and alert feed, an overview, and a SQL
//! console with charts, served by `vigie serve --console-addr`.
//!
//! ```text
//! browser ─ HTTP ─▶ axum Router ─ security headers (CSP 'self' + tile host), same_origin on writes
//!   /            ─▶ assets: the page, Leaflet and uPlot, embedded in the binary
//!   /api/login   ─▶ Authenticator::login ─▶ HttpOnly SameSite=Strict session cookie
//!   /api/sql …   ─▶ Caller (cookie ─▶ Principal) ─▶ Sessions (limits, audit) ─▶ JSON / CSV
//!   /api/alerts/stream ─▶ AlertsService::open ─▶ Server-Sent Events (id = alert id)
//!   /api/alerts/{id}/ack ─▶ Tenant::record_alert_event (alert_events) ─▶ every open console
//!                           (this node's at once, other nodes' at their next flush tick)
//!   /api/report?day=D ─▶ vigie_report (the tenant's time zone and names setting) ─▶ PDF / HTML
//! ```
//! The console is one more client of the engine: it reuses the credentials, the SQL sessions
//! and their limits and audit, and the alert subscriptions of the gRPC services, so a tenant
//! sees exactly what it sees through Flight SQL.

mod alerts;
mod assets;
mod drones;
mod error;
mod query;
mod report;
mod saved;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vigie_auth::Authenticator;
use vigie_engine::Engine;
use vigie_ingest::AlertsService;
use vigie_sql::Sessions;

pub use assets::page_weight;
pub use error::{Error, Result};
pub use query::Rows;
pub use session::{COOKIE_NAME, Caller};

/// What the console shows and how; checked by [`ConsoleSettings::check`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsoleSettings {
    /// A map tile URL template (`https://tiles.example/{z}/{x}/{y}.png`); `None`: no tiles, the
    /// map draws a latitude/longitude grid (and the outline, if any).
    pub tile_url: Option<String>,
    /// A GeoJSON outline drawn under the drones (a force's area), as text.
    pub outline: Option<String>,
    /// Rows one SQL console result shows at most (CSV exports have no cap).
    pub max_rows: usize,
    /// Whether the session cookie is `Secure` (the console is served over TLS, or behind a
    /// TLS-terminating proxy).
    pub secure_cookies: bool,
}

impl ConsoleSettings {
    /// The default row cap of a SQL console result.
    pub const DEFAULT_MAX_ROWS: usize = 10_000;

    /// Checks the settings; the message says what to change.
    pub fn check(&self) -> std::result::Result<(), String> {
        if let Some(url) = &self.tile_url {
            tile_origin(url)?;
        }
        if let Some(outline) = &self.outline {
            let value: Value = serde_json::from_str(outline)
                .map_err(|e| format!("the console outline is not GeoJSON: {e}"))?;
            if value.get("type").and_then(Value::as_str).is_none() {
                return Err("the console outline is not GeoJSON: it has no \"type\"".into());
            }
        }
        if !(1..=1_000_000).contains(&self.max_rows) {
            return Err(format!(
                "--console-max-rows must be between 1 and 1000000, not {}",
                self.max_rows
            ));
        }
        Ok(())
    }
}

/// The scheme, host and port of a tile URL template (what the page's CSP must allow).
fn tile_origin(url: &str) -> std::result::Result<String, String> {
    if !(url.contains("{z}") && url.contains("{x}") && url.contains("{y}")) {
        return Err(format!(
            "--console-tile-url {url:?} must contain {{z}}, {{x}} and {{y}}"
        ));
    }
    let parsed = url::Url::parse(&url.replace(['{', '}'], ""))
        .map_err(|e| format!("--console-tile-url {url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("--console-tile-url {url:?} must be an http(s) URL"));
    }
    Ok(parsed.origin().ascii_serialization())
}

/// Everything the console's handlers share.
pub struct ConsoleState {
    engine: Arc<Engine>,
    sessions: Arc<Sessions>,
    auth: Arc<Authenticator>,
    alerts: AlertsService,
    settings: ConsoleSettings,
    /// Ends the live streams when the server stops.
    shutdown: CancellationToken,
    csp: HeaderValue,
}

impl std::fmt::Debug for ConsoleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The console server.
#[derive(Debug, Clone)]
pub struct Console {
    state: Arc<ConsoleState>,
}

impl Console {
    /// A console over the server's engine, SQL sessions, credentials and alert subscriptions;
    /// its live streams end on `shutdown`.
    pub fn new(
        engine: Arc<Engine>,
        sessions: Arc<Sessions>,
        auth: Arc<Authenticator>,
        alerts: AlertsService,
        settings: ConsoleSettings,
        shutdown: CancellationToken,
    ) -> std::result::Result<Self, String> {
        settings.check()?;
        let tiles = match &settings.tile_url {
            Some(url) => format!(" {}", tile_origin(url)?),
            None => String::new(),
        };
        let csp = format!(
            "default-src 'self'; img-src 'self' data:{tiles}; style-src 'self'; \
             script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
             form-action 'self'"
        );
        Ok(Self {
            state: Arc::new(ConsoleState {
                engine,
                sessions,
                auth,
                alerts,
                settings,
                shutdown,
                csp: HeaderValue::from_str(&csp).map_err(|e| e.to_string())?,
            }),
        })
    }

    /// The console's routes.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/login", post(session::login))
            .route("/logout", post(session::logout))
            .route("/me", get(session::me))
            .route("/config", get(config))
            .route("/outline", get(outline))
            .route("/sql", post(query::sql))
            .route("/schema", get(query::schema))
            .route("/queries", get(saved::list).post(saved::save))
            .route("/queries/{name}", delete(saved::delete))
            .route("/audit", get(saved::audit))
            .route("/alerts", get(alerts::list))
            .route("/alerts/stream", get(alerts::stream))
            .route("/alerts/{id}", get(alerts::detail))
            .route("/alerts/{id}/ack", post(alerts::ack))
            .route("/drones/latest", get(drones::latest))
            .route("/drones/{id}/track", get(drones::track))
            .route("/density", get(drones::density))
            .route("/overview", get(drones::overview))
            .route("/report", get(report::download))
            .fallback(|| async { Error::NotFound("no such API call".into()) })
            .layer(from_fn(session::same_origin))
            .layer(from_fn(no_store));
        Router::new()
            .route("/", get(assets::index))
            .route("/assets/{*path}", get(assets::asset))
            .nest("/api", api)
            .layer(from_fn_with_state(self.state.clone(), security_headers))
            .with_state(self.state.clone())
    }

    /// Serves the console on `listener` until the shutdown token given to [`Console::new`]
    /// is cancelled.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let shutdown = self.state.shutdown.clone();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}

async fn security_headers(
    State(state): State<Arc<ConsoleState>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, state.csp.clone());
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

async fn no_store(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /api/config`: what the page needs to know before it draws (no login needed).
async fn config(State(state): State<Arc<ConsoleState>>) -> axum::Json<Value> {
    axum::Json(json!({
        "tile_url": state.settings.tile_url,
        "outline": state.settings.outline.is_some(),
        "open_mode": state.auth.is_open(),
        "max_rows": state.settings.max_rows,
    }))
}

/// `GET /api/outline`: the GeoJSON outline, when one is set.
async fn outline(State(state): State<Arc<ConsoleState>>, _caller: Caller) -> Response {
    match &state.settings.outline {
        Some(outline) => (
            [(axum::http::header::CONTENT_TYPE, "application/geo+json")],
            outline.clone(),
        )
            .into_response(),
        None => Error::NotFound("no outline is set (--console-outline)".into()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ok = ConsoleSettings {
            max_rows: 10,
            ..Default::default()
        };
        assert!(ok.check().is_ok());
        let tiles = |url: &str| ConsoleSettings {
            tile_url: Some(url.into()),
            ..ok.clone()
        };
        assert!(
            tiles("https://t.example:8443/{z}/{x}/{y}.png")
                .check()
                .is_ok()
        );
        assert_eq!(
            tile_origin("https://t.example:8443/{z}/{x}/{y}.png").unwrap(),
            "https://t.example:8443"
        );
        assert!(tiles("https://t.example/tiles.png").check().is_err());
        assert!(tiles("file:///{z}/{x}/{y}").check().is_err());
        let outline = ConsoleSettings {
            outline: Some("[1]".into()),
            ..ok.clone()
        };
        assert!(outline.check().is_err());
        let rows = ConsoleSettings { max_rows: 0, ..ok };
        assert!(rows.check().is_err());
    }
}
