//! Cluster mode's ownership: one node at a time owns a tenant's writes, by lease; the others
//! read its committed tables and forward its writes, and take it over when its owner is gone.
//!
//! ```text
//! every lease TTL / 3 (Engine::start_cluster):
//!   heartbeat node.<id>
//!   owned tenant:    log failed (fenced)   ─▶ release the lease, step down to follower
//!                    renew(revision) lost   ─▶ step down to follower
//!   follower tenant: holder() = other node  ─▶ remember it (writes are forwarded there)
//!                    holder() = nobody      ─▶ acquire if this node holds less than its share,
//!                                              or the lease stayed vacant two ticks ─▶ take over:
//!                                              Tenant::open as owner (claim the stream, replay)
//! shutdown (after the final flush) ─▶ Engine::release_leases: the others take over at once
//! ```
//! A node without the `process` role (`StreamSettings::process`) never acquires a lease: it
//! follows every tenant, and does not count in the others' fair share.
//! A takeover or a step-down replaces the tenant's [`Tenant`] in the engine's map: a follower
//! has no log, no dedupe index and no buffer, an owner has all of them, and nothing is shared
//! between the two but the committed Delta tables. The lease only decides who *should* write;
//! a former owner that still believes it owns the tenant is fenced by the stream (see
//! `wal::stream`), and its unflushed rows are replayed by the new owner from the stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::args::StreamSettings;
use crate::lease::{Leases, NodeInfo};
use crate::store::TenantName;
use crate::tenant::TenantRole;
use crate::{Engine, Result, Tenant, TenantSettings};

/// Ticks a follower waits on a vacant lease, when it holds its share already, before taking it.
const VACANT_TICKS: u32 = 2;

/// This node's part in the cluster: its leases and what it saw of the others.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) leases: Leases,
    /// Consecutive ticks each followed tenant's lease was seen vacant.
    vacant: Mutex<HashMap<TenantName, u32>>,
}

impl Cluster {
    /// Opens the lease bucket and says this node is alive.
    pub(crate) async fn join(
        context: &async_nats::jetstream::Context,
        settings: &StreamSettings,
    ) -> Result<Self> {
        let me = NodeInfo {
            id: uuid::Uuid::new_v4().simple().to_string(),
            addr: settings.advertise.clone(),
        };
        let deadline = Instant::now() + settings.publish_timeout;
        let leases = Leases::open(
            context,
            &format!("{}-leases", settings.prefix),
            me,
            settings.lease_ttl,
            settings.process,
            settings.replicas,
            deadline,
        )
        .await?;
        // A bucket another node created an instant ago may not be routable from this node's
        // server yet ("no stream found for given subject"): retry until the deadline.
        while let Err(e) = leases.heartbeat().await {
            if Instant::now() >= deadline {
                return Err(e);
            }
            warn!(error = %e, "cannot record this node in the lease bucket yet, retrying");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        info!(node = %leases.me().id, addr = %leases.me().addr, ttl = ?leases.ttl(), "joined the cluster");
        Ok(Self {
            leases,
            vacant: Mutex::default(),
        })
    }
}

impl Engine {
    /// This node, in cluster mode.
    pub fn node(&self) -> Option<&NodeInfo> {
        self.cluster.as_ref().map(|c| c.leases.me())
    }

    /// The role `tenant` is opened with: owner if this node got its lease (always, outside
    /// cluster mode).
    pub(crate) async fn role_for(&self, tenant: &TenantName) -> Result<TenantRole> {
        match &self.cluster {
            None => Ok(TenantRole::Owner),
            Some(cluster)
                if cluster.leases.may_own() && cluster.leases.try_acquire(tenant).await? =>
            {
                Ok(TenantRole::Owner)
            }
            Some(_) => Ok(TenantRole::Follower),
        }
    }

    /// Gives up `tenant`'s lease after its owner failed to open (or was replaced).
    pub(crate) async fn release_lease(&self, tenant: &TenantName) {
        if let Some(cluster) = &self.cluster
            && let Err(e) = cluster.leases.release(tenant).await
        {
            warn!(%tenant, error = %e, "cannot release the lease; it expires on its own");
        }
    }

    /// The owner of followed `tenant`: the one last seen, else the lease bucket's (a write
    /// arriving between a takeover and this node's next tick need not be refused).
    pub async fn owner_of(&self, tenant: &Tenant) -> Result<Option<NodeInfo>> {
        match tenant.owner() {
            Some(owner) => Ok(Some(owner)),
            None => self.refresh_owner(tenant).await,
        }
    }

    /// Who owns `tenant` as the lease bucket says now, for a follower to forward to.
    pub(crate) async fn refresh_owner(&self, tenant: &Tenant) -> Result<Option<NodeInfo>> {
        let Some(cluster) = &self.cluster else {
            return Ok(None);
        };
        let holder = cluster.leases.holder(tenant.name()).await?;
        tenant.set_owner(holder.clone());
        Ok(holder)
    }

    /// Releases every lease this node holds (after the final flush of a graceful stop), so that
    /// other nodes take its tenants over at once instead of one TTL later.
    pub async fn release_leases(&self) {
        if self.cluster.is_none() {
            return;
        }
        for tenant in self.tenants() {
            if tenant.is_owner() {
                self.release_lease(tenant.name()).await;
            }
        }
    }

    /// Starts the cluster loop (nothing outside cluster mode): every lease TTL / 3, heartbeat,
    /// renew the leases held, and take over vacant tenants. Ends on `shutdown`.
    pub fn start_cluster(self: &Arc<Self>, shutdown: CancellationToken) -> Option<JoinHandle<()>> {
        let period = self.cluster.as_ref()?.leases.ttl() / 3;
        let engine = self.clone();
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period.max(Duration::from_millis(100)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    () = engine.cluster_tick() => {}
                }
            }
        }))
    }

    /// One round of the cluster loop.
    async fn cluster_tick(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let leases = &cluster.leases;
        if let Err(e) = leases.heartbeat().await {
            warn!(error = %e, "cannot record this node as alive");
        }
        let tenants = self.tenants();
        let nodes = match leases.live_nodes().await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "cannot count the live nodes");
                1
            }
        };
        // Each node's fair share of the tenants, rounded up.
        let share = tenants.len().div_ceil(nodes);
        for tenant in tenants {
            let name = tenant.name().clone();
            if tenant.is_owner() {
                if let Some(failed) = tenant.log_failed() {
                    warn!(tenant = %name, error = %failed, "the tenant's log failed: stepping down");
                    self.step_down(&tenant).await;
                    continue;
                }
                match leases.renew(&name).await {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!(tenant = %name, "lost the tenant's lease: stepping down");
                        self.step_down(&tenant).await;
                    }
                    Err(e) => warn!(tenant = %name, error = %e, "cannot renew the lease; retried"),
                }
                continue;
            }
            let holder = match self.refresh_owner(&tenant).await {
                Ok(holder) => holder,
                Err(e) => {
                    warn!(tenant = %name, error = %e, "cannot read the tenant's lease");
                    continue;
                }
            };
            let vacant_ticks = {
                let mut vacant = cluster.vacant.lock();
                if holder.is_some() {
                    vacant.remove(&name);
                    continue;
                }
                let ticks = vacant.entry(name.clone()).or_default();
                *ticks += 1;
                *ticks
            };
            if leases.may_own() && (leases.held_count() < share || vacant_ticks >= VACANT_TICKS) {
                self.take_over(&tenant).await;
            }
        }
        let mut owned = 0;
        for tenant in self.tenants() {
            owned += usize::from(tenant.is_owner());
            metrics::gauge!("vigie_cluster_owner", "tenant" => tenant.name().to_string())
                .set(if tenant.is_owner() { 1.0 } else { 0.0 });
        }
        metrics::gauge!("vigie_cluster_owned_tenants").set(owned as f64);
        metrics::gauge!("vigie_cluster_live_nodes").set(nodes as f64);
    }

    /// Takes a vacant tenant over: its lease, then the tenant opened as owner (which claims its
    /// stream and replays what no commit covers) in place of the follower.
    async fn take_over(&self, follower: &Arc<Tenant>) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let name = follower.name().clone();
        let _opening = self.opening.lock().await;
        match cluster.leases.try_acquire(&name).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                warn!(tenant = %name, error = %e, "cannot acquire the lease");
                return;
            }
        }
        cluster.vacant.lock().remove(&name);
        let started = Instant::now();
        match Tenant::open(self, follower.settings().clone(), TenantRole::Owner).await {
            Ok(owner) => {
                self.tenants.write().insert(name.clone(), Arc::new(owner));
                metrics::counter!("vigie_cluster_takeovers_total", "tenant" => name.to_string())
                    .increment(1);
                metrics::histogram!("vigie_cluster_takeover_seconds")
                    .record(started.elapsed().as_secs_f64());
                info!(tenant = %name, took = ?started.elapsed(), "took the tenant over");
            }
            Err(e) => {
                warn!(tenant = %name, error = %e, "cannot take the tenant over; releasing its lease");
                self.release_lease(&name).await;
            }
        }
    }

    /// Stops writing `owner`'s tenant: releases its lease (if still held), and replaces it by a
    /// follower. Its unflushed rows are in the stream, for the next owner to replay; its
    /// subscribers are told to subscribe again.
    async fn step_down(&self, owner: &Arc<Tenant>) {
        let name = owner.name().clone();
        let _opening = self.opening.lock().await;
        self.release_lease(&name).await;
        owner.hub().close();
        match Tenant::open(self, owner.settings().clone(), TenantRole::Follower).await {
            Ok(follower) => {
                let follower = Arc::new(follower);
                if let Err(e) = self.refresh_owner(&follower).await {
                    warn!(tenant = %name, error = %e, "cannot read the tenant's lease");
                }
                self.tenants.write().insert(name.clone(), follower);
                info!(tenant = %name, "stepped down: following the tenant");
            }
            // The fenced owner stays in place (it refuses writes); the next tick tries again.
            Err(e) => warn!(tenant = %name, error = %e, "cannot reopen the tenant as a follower"),
        }
    }

    /// Opens `settings`' tenant with the role its lease gives this node; an owner that fails
    /// to open gives its lease back.
    pub(crate) async fn open_tenant(&self, settings: TenantSettings) -> Result<Tenant> {
        let name = settings.name.clone();
        let role = self.role_for(&name).await?;
        let tenant = match Tenant::open(self, settings, role).await {
            Ok(tenant) => tenant,
            Err(e) => {
                if role == TenantRole::Owner {
                    self.release_lease(&name).await;
                }
                return Err(e);
            }
        };
        if role == TenantRole::Follower {
            self.refresh_owner(&tenant).await?;
        }
        Ok(tenant)
    }
}
