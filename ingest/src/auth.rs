//! Authentication and authorisation of every call on the gRPC port, in one place.
//!
//! ```text
//! HTTP/2 request ─▶ AuthService: path ─▶ what it needs ─▶ Authenticator::authenticate(authorization)
//!     ├─ ok and the role fits ─▶ request.extensions += Principal ─▶ the service (tenant from it)
//!     └─ otherwise ─▶ UNAUTHENTICATED / PERMISSION_DENIED, the service never runs
//! ```
//! `vigie.v1.Ingest` needs a drone; `vigie.v1.Alerts` and Flight SQL need an analyst or admin;
//! the Flight SQL `Handshake` checks its own credentials (it is how a user logs in). In the open
//! mode (no credentials exist) every call is the anonymous admin of the `default` tenant.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::server::NamedService;
use tracing::debug;
use vigie_engine::auth::{Authenticator, Principal, Role};
use vigie_engine::{Engine, Error as EngineError, Tenant};

use crate::status_of;

/// What a gRPC method needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// The method authenticates on its own (Flight SQL Handshake).
    Nothing,
    /// A drone (writes reports).
    Drone,
    /// An analyst or admin (reads data).
    Reader,
}

/// Services anyone may call: health (load balancers, probes) and reflection (the public contract).
const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

fn needs(path: &str) -> Needs {
    if path.starts_with("/vigie.v1.Ingest/") {
        Needs::Drone
    } else if path == "/arrow.flight.protocol.FlightService/Handshake"
        || OPEN_SERVICES.iter().any(|s| path.starts_with(s))
    {
        Needs::Nothing
    } else {
        Needs::Reader
    }
}

fn check(needs: Needs, principal: &Principal) -> Result<(), EngineError> {
    let allowed = match needs {
        Needs::Nothing => true,
        Needs::Drone => principal.role == Role::Drone || principal.is_anonymous(),
        Needs::Reader => principal.role.reads(),
    };
    if allowed {
        Ok(())
    } else {
        Err(EngineError::PermissionDenied(match needs {
            Needs::Drone => format!(
                "{} is a {}: only drone keys may send reports",
                principal.name, principal.role
            ),
            _ => format!(
                "{} is a {}: reading data needs an analyst or admin",
                principal.name, principal.role
            ),
        }))
    }
}

/// The open tenant of the request's principal.
pub fn tenant_of<T>(engine: &Engine, request: &tonic::Request<T>) -> Result<Arc<Tenant>, Status> {
    let principal = Principal::of(request)?;
    engine.tenant(&principal.tenant).ok_or_else(|| {
        Status::unavailable(format!(
            "tenant {} is not open on this server yet: retry in a few seconds",
            principal.tenant
        ))
    })
}

/// The layer that puts [`AuthService`] in front of every service of the gRPC server.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer checking calls with `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// Checks a call's credentials and role before the service sees it.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S: NamedService> NamedService for AuthService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, RB> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let needs = needs(request.uri().path());
        if needs != Needs::Nothing {
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let checked = self
                .auth
                .authenticate(header)
                .and_then(|p| check(needs, &p).map(|()| p));
            match checked {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                }
                Err(e) => {
                    debug!(path = request.uri().path(), error = %e, "call refused");
                    let status = status_of(&e);
                    metrics::counter!("vigie_auth_refusals_total", "code" => format!("{:?}", status.code()))
                        .increment(1);
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            }
        }
        let future = self.inner.call(request);
        Box::pin(future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigie_engine::store::TenantName;

    fn principal(role: Role) -> Principal {
        Principal {
            tenant: TenantName::new("t").unwrap(),
            role,
            name: "key:x".into(),
        }
    }

    #[test]
    fn roles_per_method() {
        let ingest = needs("/vigie.v1.Ingest/WriteStream");
        let alerts = needs("/vigie.v1.Alerts/Subscribe");
        let sql = needs("/arrow.flight.protocol.FlightService/DoGet");
        assert_eq!(
            needs("/arrow.flight.protocol.FlightService/Handshake"),
            Needs::Nothing
        );
        assert!(check(ingest, &principal(Role::Drone)).is_ok());
        assert!(check(ingest, &principal(Role::Analyst)).is_err());
        assert!(check(ingest, &principal(Role::Admin)).is_err());
        for reader in [alerts, sql] {
            assert!(check(reader, &principal(Role::Drone)).is_err());
            assert!(check(reader, &principal(Role::Analyst)).is_ok());
            assert!(check(reader, &principal(Role::Admin)).is_ok());
        }
        assert!(check(ingest, &Principal::anonymous()).is_ok());
        assert!(check(sql, &Principal::anonymous()).is_ok());
    }
}
