//! Vigie's gRPC services for drones and dispatchers: `vigie.v1.Ingest` and `vigie.v1.Alerts`.
//!
//! ```text
//! drone ─Write / WriteStream─▶ IngestService ─▶ engine::Tenant::write ─▶ WriteResponse
//!                               (one response per request, in order)
//! dispatcher ─Subscribe(from_id?)─▶ AlertsService: stored alerts ≥ from_id, then live ones
//!                                   (on a follower: proxied to the owner, see `alerts`)
//! webhook task ─▶ POST JSON per alert (optional, `webhook`)
//! cluster mode, tenant owned by another node ─▶ Forwarder: unary Write to the owner, on behalf
//!                                               of the caller (vigie_auth::ClusterSecret)
//! ```
//! Engine errors become `tonic::Status` in [`status_of`], the one place that decides codes.

mod alerts;
mod forward;
pub mod webhook;

pub use alerts::{AlertStream, AlertsService};
pub use forward::{Connect, Forwarder};

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::warn;
use vigie_auth::{Forwarded, Principal};
use vigie_engine::{Engine, Error as EngineError, ErrorKind, Tenant};
use vigie_proto::v1::ingest_server::{Ingest, IngestServer};
use vigie_proto::v1::{WriteRequest, WriteResponse};

/// Default limit of one decoded `WriteRequest`, in bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Smallest accepted limit of one `WriteRequest` (a report must fit).
pub const MIN_MAX_MESSAGE_BYTES: usize = 1024;
/// Alerts a subscriber may have queued before its subscription ends, by default.
pub const DEFAULT_ALERT_QUEUE: usize = 65_536;

/// The status a client sees for an engine error.
pub fn status_of(error: &EngineError) -> Status {
    let message = error.to_string();
    match error.kind() {
        ErrorKind::InvalidInput => Status::invalid_argument(message),
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::Overloaded => Status::resource_exhausted(message),
        ErrorKind::Unavailable => Status::unavailable(format!(
            "{message}; the reports of this request are not acknowledged, retry"
        )),
        ErrorKind::Storage | ErrorKind::Corrupt | ErrorKind::Internal => Status::internal(message),
    }
}

/// The open tenant of `principal` (the auth layer of `vigie-auth` checked who calls).
pub(crate) fn open_tenant(engine: &Engine, principal: &Principal) -> Result<Arc<Tenant>, Status> {
    engine.tenant(&principal.tenant).ok_or_else(|| {
        Status::unavailable(format!(
            "tenant {} is not open on this server yet: retry in a few seconds",
            principal.tenant
        ))
    })
}

/// Implements `vigie.v1.Ingest`: reports go to the caller's tenant (in cluster mode, through
/// the node that owns it).
#[derive(Debug, Clone)]
pub struct IngestService {
    engine: Arc<Engine>,
    forwarder: Option<Forwarder>,
    /// `Some(why)`: this node takes no drone writes (only those other nodes forward to it).
    refuse_drones: Option<Arc<str>>,
}

impl IngestService {
    /// A service writing into `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            forwarder: None,
            refuse_drones: None,
        }
    }

    /// Refuses writes that come from drones (`UNAVAILABLE`, with `why`), and takes only those
    /// other nodes forward: a cluster node without the `ingest` role.
    pub fn refusing_drone_writes(mut self, why: impl Into<Arc<str>>) -> Self {
        self.refuse_drones = Some(why.into());
        self
    }

    /// The refusal of a drone's call on a node that takes no drone writes.
    fn check_caller(&self, forwarded: bool) -> Result<(), Status> {
        match &self.refuse_drones {
            Some(why) if !forwarded => Err(Status::unavailable(why.to_string())),
            _ => Ok(()),
        }
    }

    /// Forwards the writes of tenants another node owns with `forwarder` (cluster mode);
    /// without one they are refused `UNAVAILABLE`, naming the owner.
    pub fn with_forwarder(mut self, forwarder: Forwarder) -> Self {
        self.forwarder = Some(forwarder);
        self
    }

    /// The answer to `request` of `caller` for `tenant`: written here when this node owns the
    /// tenant, else forwarded to its owner (a forwarded request is not forwarded again).
    fn answer<'a>(
        &self,
        tenant: &'a Tenant,
        caller: &Principal,
        forwarded: bool,
        request: WriteRequest,
    ) -> Answer<'a> {
        if tenant.is_owner() {
            return answer(tenant, &request);
        }
        match &self.forwarder {
            Some(forwarder) if !forwarded => {
                let forwarder = forwarder.clone();
                let caller = caller.clone();
                let engine = self.engine.clone();
                Box::pin(async move {
                    match engine.owner_of(tenant).await {
                        Ok(Some(owner)) => forwarder.write(&owner, &caller, request).await,
                        Ok(None) => Err(status_of(&tenant.not_owner())),
                        Err(e) => Err(status_of(&e)),
                    }
                })
            }
            // No forwarder, or a stale view on the forwarding side: the client retries.
            _ => Box::pin(std::future::ready(Err(status_of(&tenant.not_owner())))),
        }
    }

    /// The tonic server for this service, with `max_message_bytes` per request; oversized
    /// requests get `RESOURCE_EXHAUSTED`.
    pub fn into_server(self, max_message_bytes: usize) -> OversizeIsExhausted<IngestServer<Self>> {
        OversizeIsExhausted(
            IngestServer::new(self)
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        )
    }
}

/// Requests of one stream buffered while earlier ones wait for their fsync.
const MAX_IN_FLIGHT_PER_STREAM: usize = 16;

type Answer<'a> = Pin<Box<dyn Future<Output = Result<WriteResponse, Status>> + Send + 'a>>;

fn answer<'a>(tenant: &'a Tenant, request: &WriteRequest) -> Answer<'a> {
    match tenant.write_buffered(request) {
        Ok(pending) => Box::pin(async move { pending.durable().await.map_err(|e| status_of(&e)) }),
        Err(e) => Box::pin(std::future::ready(Err(status_of(&e)))),
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let principal = Principal::of(&request)?;
        let forwarded = request.extensions().get::<Forwarded>().is_some();
        self.check_caller(forwarded)?;
        let tenant = open_tenant(&self.engine, &principal)?;
        self.answer(&tenant, &principal, forwarded, request.into_inner())
            .await
            .map(Response::new)
    }

    type WriteStreamStream =
        Pin<Box<dyn Stream<Item = Result<WriteResponse, Status>> + Send + 'static>>;

    /// Requests are validated and buffered as they arrive; their answers wait for the WAL fsync
    /// and go back in request order. The stream ends after the first failed request.
    async fn write_stream(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<Self::WriteStreamStream>, Status> {
        let principal = Principal::of(&request)?;
        let forwarded = request.extensions().get::<Forwarded>().is_some();
        self.check_caller(forwarded)?;
        let tenant = open_tenant(&self.engine, &principal)?;
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT_PER_STREAM);
        let service = self.clone();
        tokio::spawn(async move {
            let mut in_flight: FuturesOrdered<Answer<'_>> = FuturesOrdered::new();
            let mut input_done = false;
            loop {
                tokio::select! {
                    biased;
                    Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                        let failed = result.is_err();
                        if tx.send(result).await.is_err() || failed {
                            break;
                        }
                    }
                    message = input.next(), if !input_done && in_flight.len() < MAX_IN_FLIGHT_PER_STREAM => {
                        match message {
                            None => input_done = true,
                            Some(Ok(request)) => in_flight.push_back(
                                service.answer(&tenant, &principal, forwarded, request),
                            ),
                            Some(Err(status)) => in_flight.push_back(Box::pin(std::future::ready(
                                Err(oversize_as_exhausted(status)),
                            ))),
                        }
                    }
                    else => break,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn is_oversize(code: Code, message: &str) -> bool {
    code == Code::OutOfRange && message.contains("message length too large")
}

fn oversize_as_exhausted(status: Status) -> Status {
    if is_oversize(status.code(), status.message()) {
        warn!(message = status.message(), "request over the size limit");
        Status::resource_exhausted(format!(
            "request too large: {}; send fewer reports per WriteRequest",
            status.message()
        ))
    } else {
        status
    }
}

/// Wraps a tonic server so that a request over the decoding limit is answered
/// `RESOURCE_EXHAUSTED` (retry with a smaller batch) rather than tonic's `OUT_OF_RANGE`.
#[derive(Debug, Clone)]
pub struct OversizeIsExhausted<S>(S);

impl<S: NamedService> NamedService for OversizeIsExhausted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, RB> tower::Service<http::Request<B>> for OversizeIsExhausted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let future = self.0.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            // A request rejected while decoding is answered trailers-only: status in the headers.
            if let Some(status) = Status::from_header_map(response.headers())
                && is_oversize(status.code(), status.message())
            {
                let fixed = oversize_as_exhausted(status);
                let headers = response.headers_mut();
                headers.insert("grpc-status", (fixed.code() as i32).into());
                if let Ok(v) = http::HeaderValue::from_str(&percent_encode(fixed.message())) {
                    headers.insert("grpc-message", v);
                }
            }
            Ok(response)
        })
    }
}

/// Percent-encodes a `grpc-message` as the gRPC spec asks (printable ASCII except `%` kept).
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_is_mapped() {
        let s = Status::out_of_range(
            "Error, decoded message length too large: found 5 bytes, the limit is: 4 bytes",
        );
        let m = oversize_as_exhausted(s);
        assert_eq!(m.code(), Code::ResourceExhausted);
        assert!(m.message().contains("send fewer reports"));
        let other = oversize_as_exhausted(Status::out_of_range("seq"));
        assert_eq!(other.code(), Code::OutOfRange);
    }

    #[test]
    fn grpc_message_encoding() {
        assert_eq!(percent_encode("a b%é"), "a b%25%C3%A9");
    }
}
