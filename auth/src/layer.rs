//! The tower layer in front of every service of the gRPC port: one place decides who may call.
//!
//! ```text
//! HTTP/2 request ─▶ AuthService: path ─▶ Access needed ─▶ Authenticator::authenticate(authorization)
//!     ├─ ok and Principal::may(access) ─▶ request.extensions += Principal ─▶ the service
//!     └─ otherwise ─▶ UNAUTHENTICATED / PERMISSION_DENIED, the service never runs
//! ```
//! `vigie.v1.Ingest` needs [`Access::Write`]; `vigie.v1.Alerts` and Flight SQL need
//! [`Access::Read`]; the Flight SQL `Handshake` checks its own credentials (it is how a user logs
//! in), health and reflection are open. In the open mode (no credentials exist) every call is the
//! anonymous admin of the `default` tenant. In cluster mode a call with the `Cluster` scheme is
//! another node forwarding a write: checked against the cluster secret, it acts for the original
//! caller (see [`crate::cluster`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::server::NamedService;
use tracing::debug;

use crate::cluster::{ClusterSecret, Forwarded};
use crate::{Access, Authenticator, Error, Result};

/// The Flight SQL login: it authenticates on its own and answers a token.
pub const HANDSHAKE_PATH: &str = "/arrow.flight.protocol.FlightService/Handshake";

/// Services anyone may call: health (load balancers, probes) and reflection (the public contract).
const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// What other nodes forward: writes, and alert subscriptions.
const FORWARDABLE: &[&str] = &[INGEST, "/vigie.v1.Alerts/"];

/// The drones' service.
const INGEST: &str = "/vigie.v1.Ingest/";

/// What the method at `path` needs; `None`: nothing (it is open, or checks credentials itself).
fn access(path: &str) -> Option<Access> {
    if path.starts_with(INGEST) {
        Some(Access::Write)
    } else if path == HANDSHAKE_PATH || OPEN_SERVICES.iter().any(|s| path.starts_with(s)) {
        None
    } else {
        Some(Access::Read)
    }
}

/// The layer that puts [`AuthService`] in front of every service of the gRPC server.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
    cluster: Option<Arc<ClusterSecret>>,
}

impl AuthLayer {
    /// A layer checking calls with `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self {
            auth,
            cluster: None,
        }
    }

    /// Also accepts writes other nodes of the cluster forward, proven by `secret`.
    pub fn with_cluster_secret(mut self, secret: ClusterSecret) -> Self {
        self.cluster = Some(Arc::new(secret));
        self
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

/// Checks a call's credentials and role before the service sees it.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    cluster: Option<Arc<ClusterSecret>>,
}

impl<S: NamedService> NamedService for AuthService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> AuthService<S> {
    /// The principal `authorization` proves, if its role gives `access`, and whether another
    /// node forwarded the call.
    fn check(
        &self,
        path: &str,
        authorization: Option<&str>,
        headers: &http::HeaderMap,
        access: Access,
    ) -> Result<(crate::Principal, bool)> {
        let (principal, forwarded) = match &self.cluster {
            Some(secret) if ClusterSecret::is_cluster_call(authorization) => {
                if !FORWARDABLE.iter().any(|p| path.starts_with(p)) {
                    return Err(Error::PermissionDenied(
                        "node-to-node calls may only forward writes and subscriptions".into(),
                    ));
                }
                (secret.principal_of(authorization, headers)?, true)
            }
            _ => (self.auth.authenticate(authorization)?, false),
        };
        principal.may(access)?;
        Ok((principal, forwarded))
    }
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
        if let Some(access) = access(request.uri().path()) {
            let headers = request.headers();
            let header = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match self.check(request.uri().path(), header, headers, access) {
                Ok((principal, forwarded)) => {
                    request.extensions_mut().insert(principal);
                    if forwarded {
                        request.extensions_mut().insert(Forwarded);
                    }
                }
                Err(e) => {
                    debug!(path = request.uri().path(), error = %e, "call refused");
                    let status = Status::from(e);
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

    #[test]
    fn each_method_needs_its_access() {
        assert_eq!(access("/vigie.v1.Ingest/WriteStream"), Some(Access::Write));
        assert_eq!(access("/vigie.v1.Alerts/Subscribe"), Some(Access::Read));
        assert_eq!(
            access("/arrow.flight.protocol.FlightService/DoGet"),
            Some(Access::Read)
        );
        assert_eq!(access(HANDSHAKE_PATH), None);
        assert_eq!(access("/grpc.health.v1.Health/Check"), None);
        assert_eq!(access("/grpc.reflection.v1.ServerReflection/Info"), None);
    }
}
