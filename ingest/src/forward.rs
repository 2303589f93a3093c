//! Cluster mode: a write for a tenant another node owns goes to that node, on behalf of the
//! caller, and its answer comes back unchanged (so `WriteResponse` counts stay exact).
//!
//! ```text
//! drone ─Write─▶ follower ─ Forwarder::write: unary Write, authorization: Cluster <secret>,
//!                          the caller's tenant and role ─▶ owner ─▶ WriteResponse ─▶ drone
//!       owner unreachable, or no owner (takeover) ─▶ UNAVAILABLE: the drone retries
//! dispatcher ─Subscribe─▶ follower ─ Forwarder::subscribe ─▶ owner's stream (see `alerts`)
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use vigie_auth::{ClusterSecret, Principal};
use vigie_engine::NodeInfo;
use vigie_proto::v1::alerts_client::AlertsClient;
use vigie_proto::v1::ingest_client::IngestClient;
use vigie_proto::v1::{Alert, SubscribeRequest, WriteRequest, WriteResponse};

use crate::alerts::AFTER_HEADER;

/// Makes a (lazily connecting) channel to a node's advertised address; the binary builds it,
/// with its TLS settings.
pub type Connect = Arc<dyn Fn(&str) -> Result<Channel, String> + Send + Sync>;

/// Forwards writes to the nodes owning their tenants.
#[derive(Clone)]
pub struct Forwarder {
    secret: ClusterSecret,
    connect: Connect,
    timeout: Duration,
    max_message_bytes: usize,
    channels: Arc<parking_lot::Mutex<HashMap<String, Channel>>>,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("timeout", &self.timeout)
            .field("nodes", &self.channels.lock().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A forwarder proving itself with `secret`, reaching nodes through `connect`; a forwarded
    /// write waits at most `timeout` for its answer and may be `max_message_bytes` long.
    pub fn new(
        secret: ClusterSecret,
        connect: Connect,
        timeout: Duration,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            secret,
            connect,
            timeout,
            max_message_bytes,
            channels: Arc::default(),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = (self.connect)(addr).map_err(|e| {
            Status::unavailable(format!("cannot reach the tenant's owner at {addr}: {e}"))
        })?;
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Subscribes at `owner` on behalf of `caller`: the owner's stream, and the last alert it
    /// had published when the subscription started (if it said).
    pub(crate) async fn subscribe(
        &self,
        owner: &NodeInfo,
        caller: &Principal,
        from_id: Option<u64>,
    ) -> Result<
        (
            std::pin::Pin<Box<dyn futures::Stream<Item = Result<Alert, Status>> + Send>>,
            Option<u64>,
        ),
        Status,
    > {
        if owner.addr.is_empty() {
            return Err(Status::unavailable(format!(
                "node {} raises tenant {}'s alerts but advertises no address (--advertise-addr)",
                owner.id, caller.tenant
            )));
        }
        let mut call = Request::new(SubscribeRequest { from_id });
        self.secret.authorize(&mut call, caller)?;
        let response = AlertsClient::new(self.channel(&owner.addr)?)
            .subscribe(call)
            .await?;
        let after = response
            .metadata()
            .get(AFTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok((response.into_inner().boxed(), after))
    }

    /// Sends `request` of `caller` to `owner`, and returns its answer.
    pub async fn write(
        &self,
        owner: &NodeInfo,
        caller: &Principal,
        request: WriteRequest,
    ) -> Result<WriteResponse, Status> {
        let counter = |outcome: &'static str| {
            metrics::counter!("vigie_forwarded_writes_total", "outcome" => outcome).increment(1);
        };
        if owner.addr.is_empty() {
            counter("no_address");
            return Err(Status::unavailable(format!(
                "node {} owns tenant {} but advertises no address (--advertise-addr): write to it \
                 directly",
                owner.id, caller.tenant
            )));
        }
        let mut call = Request::new(request);
        self.secret.authorize(&mut call, caller)?;
        call.set_timeout(self.timeout);
        let mut client = IngestClient::new(self.channel(&owner.addr)?)
            .max_encoding_message_size(self.max_message_bytes)
            .max_decoding_message_size(self.max_message_bytes);
        match client.write(call).await {
            Ok(answer) => {
                counter("ok");
                Ok(answer.into_inner())
            }
            // The owner's own refusals (invalid, overloaded, …) reach the drone as they are; a
            // transport failure or a timeout is the drone's to retry.
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
                ) =>
            {
                counter("unavailable");
                Err(Status::unavailable(format!(
                    "the tenant's owner (node {} at {}) did not answer: {}; the reports of this \
                     request are not acknowledged, retry",
                    owner.id,
                    owner.addr,
                    status.message()
                )))
            }
            Err(status) => {
                counter("refused");
                Err(status)
            }
        }
    }
}
