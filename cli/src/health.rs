//! What load balancers and probes see: the gRPC health service, `/healthz` and `/readyz`, and the
//! services that wait for the engine while it starts.
//!
//! ```text
//! bind ─▶ Phase::Starting  (health NOT_SERVING; Ingest/Alerts/Flight calls wait in Deferred)
//!  WAL replayed, tenants open ─▶ Phase::Ready (SERVING; Deferred hands calls to the services)
//!  SIGTERM ─▶ Phase::Draining (NOT_SERVING; /readyz 503) ─▶ exit
//! GET /healthz: 200 while the process serves HTTP at all (liveness)
//! GET /readyz:  200 when Ready and the object store answers a listing, else 503 with the reason
//! ```

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStore;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use vigie_engine::store::Lake;

/// The services whose status the health service reports (and `""`, the server as a whole).
pub(crate) const SERVICES: &[&str] = &[
    "vigie.v1.Ingest",
    "vigie.v1.Alerts",
    "arrow.flight.protocol.FlightService",
    "",
];

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Replaying the WAL and opening the tenants: calls wait.
    Starting = 0,
    /// Serving.
    Ready = 1,
    /// Shutting down: finishing open calls, refusing new queries.
    Draining = 2,
}

/// The server's phase, shared by the health service and the probes.
#[derive(Clone)]
pub(crate) struct Health {
    phase: Arc<AtomicU8>,
    reporter: HealthReporter,
    lake: Lake,
    /// Services this node does not serve to clients (its `--role`): NOT_SERVING whatever the
    /// phase, so that load balancers send them elsewhere.
    disabled: Arc<[&'static str]>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("phase", &self.phase())
            .finish()
    }
}

/// How long `/readyz` waits for the object store.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Health {
    /// Starting, with every service NOT_SERVING; those in `disabled` stay so.
    pub(crate) async fn starting(
        reporter: HealthReporter,
        lake: Lake,
        disabled: Vec<&'static str>,
    ) -> Self {
        let health = Self {
            phase: Arc::new(AtomicU8::new(Phase::Starting as u8)),
            reporter,
            lake,
            disabled: disabled.into(),
        };
        health.report(ServingStatus::NotServing).await;
        health
    }

    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// Moves to `phase` and reports it on the health service.
    pub(crate) async fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
        self.report(match phase {
            Phase::Ready => ServingStatus::Serving,
            Phase::Starting | Phase::Draining => ServingStatus::NotServing,
        })
        .await;
    }

    async fn report(&self, status: ServingStatus) {
        for service in SERVICES {
            let status = if self.disabled.contains(service) {
                ServingStatus::NotServing
            } else {
                status
            };
            self.reporter.set_service_status(*service, status).await;
        }
    }

    /// `/readyz`: ready, and the lake's object store answers.
    pub(crate) async fn ready(&self) -> Result<(), String> {
        match self.phase() {
            Phase::Starting => return Err("starting: replaying the WAL and opening tenants".into()),
            Phase::Draining => return Err("draining: the server is shutting down".into()),
            Phase::Ready => {}
        }
        let store = self.lake.root_store.clone();
        let probe = async move {
            let mut listing = store.list(None);
            listing.try_next().await.map(|_| ())
        };
        match tokio::time::timeout(STORE_PROBE_TIMEOUT, probe).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the object store does not answer: {e}")),
            Err(_) => Err(format!(
                "the object store did not answer within {STORE_PROBE_TIMEOUT:?}"
            )),
        }
    }
}

/// A gRPC service that exists from the start but answers only once the engine is open: calls
/// arriving while the WAL replays wait for it (a client sees a slow first call, not an error);
/// if start-up fails they get UNAVAILABLE.
#[derive(Debug)]
pub(crate) struct Deferred<S> {
    service: watch::Receiver<Option<Slot<S>>>,
}

/// What a [`Deferred`] service answers with once the server started.
#[derive(Debug, Clone)]
pub(crate) enum Slot<S> {
    /// The real service.
    Serving(S),
    /// Every call refused `UNAVAILABLE` with this message (a role this node does not play).
    Refusing(String),
}

impl<S> Clone for Deferred<S> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
        }
    }
}

impl<S> Deferred<S> {
    /// The deferred service, and where to put the real one when it exists.
    pub(crate) fn new() -> (Self, watch::Sender<Option<Slot<S>>>) {
        let (sender, service) = watch::channel(None);
        (Self { service }, sender)
    }
}

impl<S: NamedService> NamedService for Deferred<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Deferred<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mut receiver = self.service.clone();
        Box::pin(async move {
            let service = receiver
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|s| s.clone());
            match service {
                Some(Slot::Serving(service)) => tower::ServiceExt::oneshot(service, request).await,
                Some(Slot::Refusing(why)) => Ok(tonic::Status::unavailable(why).into_http()),
                None => Ok(
                    tonic::Status::unavailable("the server could not start; see its log")
                        .into_http(),
                ),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_show_on_the_health_service_and_readyz() {
        let (reporter, _server) = tonic_health::server::health_reporter();
        let lake = Lake::open(&url::Url::parse("memory:///lake").unwrap()).unwrap();
        let health = Health::starting(reporter.clone(), lake, vec!["vigie.v1.Ingest"]).await;
        assert!(health.ready().await.unwrap_err().starts_with("starting"));
        health.set(Phase::Ready).await;
        assert_eq!(health.ready().await, Ok(()));
        health.set(Phase::Draining).await;
        assert!(health.ready().await.unwrap_err().starts_with("draining"));
    }
}
