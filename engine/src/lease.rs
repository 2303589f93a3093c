//! Leases in a JetStream key-value bucket: which node owns which tenant's stream, for how long.
//!
//! ```text
//! bucket vigie-leases (R = --stream-replicas, max_age = --lease-ttl, history 1)
//!   tenant.<name> = "<node id>\n<advertised address>"   create = acquire, update(revision) = renew
//!   node.<id>     = "<advertised address>"               put every tick: the live nodes that
//!                                                        may own tenants (role `process`)
//!   reader.<id>   = "<advertised address>"               the same for nodes that never own one
//! ```
//! A lease is held as long as its holder renews it with the revision it last wrote: every entry
//! ages out `max_age` after it was written, so a dead or paused holder's lease disappears one TTL
//! after its last renewal and `create` succeeds for someone else. A renewal that finds another
//! revision (someone acquired it meanwhile) tells the holder it lost the lease. The lease only
//! decides *who should* own a tenant; the stream's claim record is what fences a former owner
//! that still believes it does (see `wal::stream`).

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;

use crate::store::TenantName;
use crate::{Error, Result};

/// A node of the cluster as its lease records it: who, and where others forward its tenants'
/// writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// A random id per process start.
    pub id: String,
    /// The address other nodes call (`http://host:port` or `https://…`); empty when the node
    /// advertised none.
    pub addr: String,
}

impl NodeInfo {
    fn encode(&self) -> Bytes {
        Bytes::from(format!("{}\n{}", self.id, self.addr))
    }

    fn decode(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?;
        let (id, addr) = text.split_once('\n')?;
        Some(Self {
            id: id.to_string(),
            addr: addr.to_string(),
        })
    }
}

/// A lease this node holds: the revision to renew from, and when it was last renewed.
#[derive(Debug, Clone, Copy)]
struct Held {
    revision: u64,
    renewed: Instant,
}

/// The lease bucket as one node sees it.
pub(crate) struct Leases {
    kv: kv::Store,
    me: NodeInfo,
    ttl: Duration,
    /// Whether this node may own tenants (it then counts in the fair share of the others).
    process: bool,
    held: Mutex<HashMap<TenantName, Held>>,
}

impl fmt::Debug for Leases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leases")
            .field("me", &self.me)
            .field("ttl", &self.ttl)
            .field("held", &self.held.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

fn nats_error(what: &str, e: impl fmt::Display) -> Error {
    Error::Wal(format!("JetStream leases: {what}: {e}"))
}

fn tenant_key(tenant: &TenantName) -> String {
    format!("tenant.{}", tenant.as_str())
}

impl Leases {
    /// Opens (creating when missing) the lease bucket `bucket` of this deployment.
    pub(crate) async fn open(
        context: &jetstream::Context,
        bucket: &str,
        me: NodeInfo,
        ttl: Duration,
        process: bool,
        replicas: usize,
        deadline: Instant,
    ) -> Result<Self> {
        let config = kv::Config {
            bucket: bucket.to_string(),
            description: "Vigie: which node owns which tenant".into(),
            history: 1,
            max_age: ttl,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let kv = crate::nats::open_bucket(context, config, deadline).await?;
        Ok(Self {
            kv,
            me,
            ttl,
            process,
            held: Mutex::default(),
        })
    }

    /// This node.
    pub(crate) fn me(&self) -> &NodeInfo {
        &self.me
    }

    /// The lease's time to live.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether this node may own tenants (role `process`).
    pub(crate) fn may_own(&self) -> bool {
        self.process
    }

    /// How many leases this node holds.
    pub(crate) fn held_count(&self) -> usize {
        self.held.lock().len()
    }

    /// Records that this node holds `tenant`'s lease at `revision`, as of now.
    fn hold(&self, tenant: &TenantName, revision: u64) {
        let held = Held {
            revision,
            renewed: Instant::now(),
        };
        self.held.lock().insert(tenant.clone(), held);
    }

    /// Takes `tenant`'s lease if nobody holds it; `false` if someone does.
    pub(crate) async fn try_acquire(&self, tenant: &TenantName) -> Result<bool> {
        match self.kv.create(tenant_key(tenant), self.me.encode()).await {
            Ok(revision) => {
                self.hold(tenant, revision);
                Ok(true)
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(nats_error("cannot acquire a lease", e)),
        }
    }

    /// Renews `tenant`'s lease; `false` when this node lost it (someone else holds it, or it
    /// could not be renewed for a whole TTL, so it may have expired). Any other failure is an
    /// error to retry at the next tick.
    pub(crate) async fn renew(&self, tenant: &TenantName) -> Result<bool> {
        let Some(held) = self.held.lock().get(tenant).copied() else {
            return Ok(false);
        };
        match self
            .kv
            .update(tenant_key(tenant), self.me.encode(), held.revision)
            .await
        {
            Ok(revision) => {
                self.hold(tenant, revision);
                Ok(true)
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                self.held.lock().remove(tenant);
                Ok(false)
            }
            Err(_) if held.renewed.elapsed() >= self.ttl => {
                self.held.lock().remove(tenant);
                Ok(false)
            }
            Err(e) => Err(nats_error("cannot renew a lease", e)),
        }
    }

    /// Gives `tenant`'s lease up (if this node still holds it), so that another node may take
    /// the tenant at once rather than one TTL later.
    pub(crate) async fn release(&self, tenant: &TenantName) -> Result<()> {
        let Some(held) = self.held.lock().remove(tenant) else {
            return Ok(());
        };
        self.kv
            .delete_expect_revision(tenant_key(tenant), Some(held.revision))
            .await
            .map_err(|e| nats_error("cannot release a lease", e))
    }

    /// Who holds `tenant`'s lease, if anyone.
    pub(crate) async fn holder(&self, tenant: &TenantName) -> Result<Option<NodeInfo>> {
        let entry = self
            .kv
            .entry(tenant_key(tenant))
            .await
            .map_err(|e| nats_error("cannot read a lease", e))?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .and_then(|e| NodeInfo::decode(&e.value)))
    }

    /// Says this node is alive (one entry per node, aging out like the leases).
    pub(crate) async fn heartbeat(&self) -> Result<()> {
        let kind = if self.process { "node" } else { "reader" };
        self.kv
            .put(
                format!("{kind}.{}", self.me.id),
                Bytes::from(self.me.addr.clone()),
            )
            .await
            .map(|_| ())
            .map_err(|e| nats_error("cannot record this node", e))
    }

    /// How many nodes that may own tenants said they were alive within the last TTL (at least
    /// 1).
    pub(crate) async fn live_nodes(&self) -> Result<usize> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| nats_error("cannot list the nodes", e))?;
        let mut nodes = 0;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| nats_error("cannot list the nodes", e))?;
            nodes += usize::from(key.starts_with("node."));
        }
        Ok(nodes.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_info_round_trips() {
        let node = NodeInfo {
            id: "abc".into(),
            addr: "http://10.0.0.1:50051".into(),
        };
        assert_eq!(NodeInfo::decode(&node.encode()), Some(node));
        assert_eq!(NodeInfo::decode(b"no newline"), None);
    }
}
