//! `vigie.v1.Alerts`: a tenant's alerts, stored ones from `from_id` then live ones, with no gap
//! and no repeat, on any node.
//!
//! ```text
//! Subscribe ─▶ owner of the tenant: hub.subscribe, read_alerts(from_id..=after), then live
//!          └─▶ follower (cluster mode): proxy ─ Subscribe(from_id) at the owner ─▶ alerts
//!                 owner gone or stepped down ─▶ resubscribe from the last id + 1 at the new
//!                 owner (this node included, if it took the tenant over)
//! ```
//! The owner tells a proxy where a live-only subscription starts (initial metadata
//! `vigie-after`), so that a proxy resuming after a failover misses nothing either.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};
use vigie_auth::{Forwarded, Principal};
use vigie_engine::{Engine, Tenant};
use vigie_proto::v1::alerts_server::{Alerts, AlertsServer};
use vigie_proto::v1::{Alert, SubscribeRequest};

use crate::{Forwarder, open_tenant, status_of};

/// The initial metadata naming the last alert published before a subscription started.
pub(crate) const AFTER_HEADER: &str = "vigie-after";

/// How long a proxied subscription looks for an owner before it gives up.
const NO_OWNER_TIMEOUT: Duration = Duration::from_secs(60);

/// A subscription's alerts, in id order; an error ends it.
pub type AlertStream = Pin<Box<dyn Stream<Item = Result<Alert, Status>> + Send + 'static>>;

/// Implements `vigie.v1.Alerts`: subscribers get their own tenant's alerts.
#[derive(Debug, Clone)]
pub struct AlertsService {
    engine: Arc<Engine>,
    queue: usize,
    forwarder: Option<Forwarder>,
}

impl AlertsService {
    /// A service publishing `engine`'s alerts; each subscriber may have `queue` alerts pending.
    pub fn new(engine: Arc<Engine>, queue: usize) -> Self {
        Self {
            engine,
            queue,
            forwarder: None,
        }
    }

    /// Serves subscribers of tenants another node owns through `forwarder` (cluster mode);
    /// without one they are refused `UNAVAILABLE`, naming the owner.
    pub fn with_forwarder(mut self, forwarder: Forwarder) -> Self {
        self.forwarder = Some(forwarder);
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> AlertsServer<Self> {
        AlertsServer::new(self)
    }

    /// A subscription of `caller` to its tenant's alerts from `from_id` (live ones only
    /// without), for transports other than gRPC (the console's Server-Sent Events): served here
    /// when this node owns the tenant, else through the owner, resumed across its failover.
    pub async fn open(
        &self,
        caller: Principal,
        from_id: Option<u64>,
    ) -> Result<AlertStream, Status> {
        let tenant = open_tenant(&self.engine, &caller)?;
        if tenant.is_owner() {
            return Ok(self.local(&tenant, from_id).await?.0);
        }
        if self.forwarder.is_none() {
            return Err(status_of(&tenant.not_owner()));
        }
        self.proxy(caller, from_id).await
    }

    /// A subscription on this node, the tenant's owner: its stream, and the last alert published
    /// before it started.
    async fn local(
        &self,
        tenant: &Tenant,
        from_id: Option<u64>,
    ) -> Result<(AlertStream, u64), Status> {
        // Subscribe first: everything up to `after` is stored, everything later arrives live.
        let subscription = tenant.hub().subscribe(self.queue);
        let after = subscription.after;
        let from = from_id.map(|from| from.max(1));
        let history = match from {
            Some(from) => tenant
                .read_alerts(from, subscription.after)
                .await
                .map_err(|e| status_of(&e))?,
            None => Vec::new(),
        };
        // A `from_id` beyond the last published alert skips the live ones below it too.
        let first_live = from.unwrap_or(0);
        // The last id delivered, or taken as seen: what an overflow tells the subscriber.
        let last = history
            .last()
            .map_or(subscription.after.max(first_live.saturating_sub(1)), |a| {
                a.id
            });
        let overflow = subscription.overflow;
        let queue = self.queue;
        let name = tenant.name().clone();
        let live = futures::stream::unfold(
            (subscription.alerts, last, false),
            move |(mut rx, last, ended)| {
                let overflow = overflow.clone();
                let name = name.clone();
                async move {
                    if ended {
                        return None;
                    }
                    let mut next = rx.recv().await;
                    while next.as_ref().is_some_and(|a| a.id < first_live) {
                        next = rx.recv().await;
                    }
                    match next {
                        Some(alert) => {
                            let id = alert.id;
                            Some((Ok(alert), (rx, id, false)))
                        }
                        None if overflow.moved() => Some((
                            Err(Status::unavailable(format!(
                                "this node stopped raising tenant {name}'s alerts (another node \
                                 took the tenant over); the last alert delivered is {last}: \
                                 subscribe again with from_id = {}",
                                last + 1
                            ))),
                            (rx, last, true),
                        )),
                        None if overflow.happened() => Some((
                            Err(Status::resource_exhausted(format!(
                                "this subscriber fell more than {queue} alerts behind and was \
                                 disconnected; the last alert delivered is {last}: subscribe \
                                 again with from_id = {}",
                                last + 1
                            ))),
                            (rx, last, true),
                        )),
                        None => None,
                    }
                }
            },
        );
        let stream = futures::stream::iter(history.into_iter().map(Ok)).chain(live);
        Ok((Box::pin(stream), after))
    }

    /// The first subscription of a proxy: at the owner (or here, if this node owns the tenant
    /// by now), and the id the proxy resumes from after a failover.
    async fn upstream(
        &self,
        caller: &Principal,
        from_id: Option<u64>,
    ) -> Result<(AlertStream, Option<u64>), Status> {
        let tenant = open_tenant(&self.engine, caller)?;
        if tenant.is_owner() {
            let (stream, after) = self.local(&tenant, from_id).await?;
            return Ok((stream, Some(from_id.unwrap_or(after + 1))));
        }
        let Some(forwarder) = &self.forwarder else {
            return Err(status_of(&tenant.not_owner()));
        };
        let Some(owner) = self
            .engine
            .owner_of(&tenant)
            .await
            .map_err(|e| status_of(&e))?
        else {
            return Err(status_of(&tenant.not_owner()));
        };
        let (stream, after) = forwarder.subscribe(&owner, caller, from_id).await?;
        Ok((stream, from_id.or(after.map(|a| a + 1))))
    }

    /// A subscription served from the owner, wherever it is, resumed at the next owner after a
    /// failover from the id after the last one delivered.
    async fn proxy(&self, caller: Principal, from_id: Option<u64>) -> Result<AlertStream, Status> {
        let (first, next) = self.upstream(&caller, from_id).await?;
        let service = self.clone();
        let stream = futures::stream::unfold(
            (Some(first), next, false),
            move |(mut current, mut next, ended)| {
                let service = service.clone();
                let caller = caller.clone();
                async move {
                    if ended {
                        return None;
                    }
                    let mut looking_since: Option<Instant> = None;
                    loop {
                        if let Some(stream) = current.as_mut() {
                            match stream.next().await {
                                Some(Ok(alert)) => {
                                    next = Some(alert.id + 1);
                                    return Some((Ok(alert), (current, next, false)));
                                }
                                // The owner died or stepped down: find the next one.
                                Some(Err(status))
                                    if matches!(
                                        status.code(),
                                        Code::Unavailable | Code::Unknown | Code::Cancelled
                                    ) => {}
                                Some(Err(status)) => {
                                    return Some((Err(status), (None, next, true)));
                                }
                                None => {}
                            }
                            current = None;
                        }
                        let since = *looking_since.get_or_insert_with(Instant::now);
                        match service.upstream(&caller, next).await {
                            Ok((stream, resume)) => {
                                next = next.or(resume);
                                current = Some(stream);
                            }
                            Err(status) if since.elapsed() < NO_OWNER_TIMEOUT => {
                                tracing::debug!(error = %status, "no owner to subscribe at yet");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                            Err(status) => return Some((Err(status), (None, next, true))),
                        }
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }
}

#[tonic::async_trait]
impl Alerts for AlertsService {
    type SubscribeStream = AlertStream;

    /// Without `from_id`: every alert raised after the call. With `from_id = N`: the stored alerts
    /// with id ≥ N in order, then live ones, with no gap and no repeat. A subscriber whose queue
    /// overflows gets `RESOURCE_EXHAUSTED` naming the last id delivered.
    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let principal = Principal::of(&request)?;
        let forwarded = request.extensions().get::<Forwarded>().is_some();
        let from_id = request.get_ref().from_id;
        let tenant = open_tenant(&self.engine, &principal)?;
        if tenant.is_owner() {
            let (stream, after) = self.local(&tenant, from_id).await?;
            let mut response = Response::new(stream);
            response
                .metadata_mut()
                .insert(AFTER_HEADER, MetadataValue::from(after));
            return Ok(response);
        }
        if forwarded || self.forwarder.is_none() {
            // A proxy with a stale view of the owner retries; a lone follower names the owner.
            return Err(match tenant.owner() {
                Some(owner) => Status::unavailable(format!(
                    "node {} ({}) raises tenant {}'s alerts: subscribe there",
                    owner.id,
                    owner.addr,
                    tenant.name()
                )),
                None => status_of(&tenant.not_owner()),
            });
        }
        self.proxy(principal, from_id).await.map(Response::new)
    }
}
