//! Logging in, the session cookie, who calls, and the checks every request passes.
//!
//! ```text
//! POST /api/login {user, password} | {api_key} ─▶ Authenticator::login ─▶ token
//!      ─▶ Set-Cookie: vigie_session=<token>; HttpOnly; SameSite=Strict; Path=/ (; Secure under TLS)
//! any /api call ─▶ Caller: cookie ─▶ Authenticator::authenticate("Bearer <token>") ─▶ Principal
//!      (open mode: no credentials exist, every caller is the anonymous admin)
//! POST/DELETE ─▶ same_origin: JSON bodies only, and an Origin header, when sent, naming this host
//! ```
//! Drones cannot log in: the console reads data, which their role does not allow.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{CONTENT_TYPE, COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use vigie_auth::{Access, Principal, Role};
use vigie_engine::audit::AuditEvent;

use crate::{ConsoleState, Error, Result};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "vigie_session";

/// A logged-in caller who may read the tenant's data (analyst or admin).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// Refuses anyone but the tenant's admins.
    pub fn admin(&self) -> Result<()> {
        if self.0.role == Role::Admin {
            return Ok(());
        }
        Err(Error::Forbidden(format!(
            "{} is an {}: this page is for the tenant's admins",
            self.0.name, self.0.role
        )))
    }
}

fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

impl FromRequestParts<Arc<ConsoleState>> for Caller {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ConsoleState>,
    ) -> Result<Self, Self::Rejection> {
        let header = session_token(&parts.headers).map(|token| format!("Bearer {token}"));
        let principal = state.auth.authenticate(header.as_deref()).map_err(|e| {
            if header.is_none() {
                Error::Unauthenticated("log in first".into())
            } else {
                e.into()
            }
        })?;
        principal.may(Access::Read)?;
        Ok(Caller(principal))
    }
}

/// What `POST /api/login` takes: a user and password, or an API key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    user: Option<String>,
    password: Option<String>,
    api_key: Option<String>,
}

fn me_json(principal: &Principal, open: bool) -> Value {
    json!({
        "name": principal.name,
        "tenant": principal.tenant.as_str(),
        "role": principal.role.as_str(),
        "open_mode": open,
    })
}

/// `POST /api/login`: checks the credentials and sets the session cookie.
pub(crate) async fn login(
    State(state): State<Arc<ConsoleState>>,
    Json(login): Json<Login>,
) -> Result<Response> {
    let header = match (&login.user, &login.password, &login.api_key) {
        (Some(user), Some(password), None) => {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {encoded}")
        }
        (None, None, Some(key)) => format!("Bearer {key}"),
        _ => {
            return Err(Error::BadRequest(
                "send either `user` and `password`, or `api_key`".into(),
            ));
        }
    };
    let (principal, token) = state.auth.login(Some(&header))?;
    if let Err(e) = principal.may(Access::Read) {
        state.auth.logout(&token);
        return Err(Error::Forbidden(format!(
            "{e}; drones cannot use the console"
        )));
    }
    if let Some(tenant) = state.engine.tenant(&principal.tenant) {
        tenant.audit(&AuditEvent::now(
            &principal.name,
            principal.role.as_str(),
            "console-login",
        ));
    }
    let cookie = format!(
        "{COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        state.auth.token_ttl().as_secs(),
        if state.settings.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    let mut response = Json(me_json(&principal, state.auth.is_open())).into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| Error::Internal(e.to_string()))?,
    );
    Ok(response)
}

/// `POST /api/logout`: ends the session and clears the cookie.
pub(crate) async fn logout(State(state): State<Arc<ConsoleState>>, headers: HeaderMap) -> Response {
    if let Some(token) = session_token(&headers) {
        state.auth.logout(token);
    }
    let mut response = Json(json!({ "ok": true })).into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("vigie_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    response
}

/// `GET /api/me`: who the session is.
pub(crate) async fn me(State(state): State<Arc<ConsoleState>>, caller: Caller) -> Json<Value> {
    Json(me_json(&caller.0, state.auth.is_open()))
}

/// Refuses cross-site writes: a POST or DELETE must carry JSON (which a cross-site form cannot
/// send without a CORS preflight this server never grants) and, when the browser names its
/// origin, come from a page of this very host.
pub(crate) async fn same_origin(request: Request, next: Next) -> Result<Response> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let headers = request.headers();
        let json_body = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json_body {
            return Err(Error::BadRequest(
                "console requests must send `Content-Type: application/json`".into(),
            ));
        }
        if let Some(origin) = headers.get(ORIGIN) {
            let host = headers.get(HOST).and_then(|v| v.to_str().ok());
            let origin_host = origin
                .to_str()
                .ok()
                .and_then(|o| url::Url::parse(o).ok())
                .map(|u| match u.port() {
                    Some(port) => format!("{}:{port}", u.host_str().unwrap_or_default()),
                    None => u.host_str().unwrap_or_default().to_string(),
                });
            if host.is_none() || origin_host.as_deref() != host {
                return Err(Error::Forbidden(
                    "cross-origin request refused: use the console from its own address".into(),
                ));
            }
        }
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; vigie_session=tok; b=2"),
        );
        assert_eq!(session_token(&headers), Some("tok"));
        headers.insert(COOKIE, HeaderValue::from_static("vigie_session="));
        assert_eq!(session_token(&headers), None);
    }
}
