//! Vigie's storage engine: validation, exact dedupe, the live buffer and Delta persistence.
//!
//! ```text
//!  WriteRequest ─▶ Tenant::write ─ validate ─ dedupe (drone_id, seq) ─▶ RecordBatch ─▶ LiveTable buffer
//!                                                                                      │
//!             flusher (every --flush-interval or --flush-rows) ── Parquet + Delta commit ┘
//!                                                                  on the object store (Lake)
//!  SQL (vigie-sql) ─▶ LiveTable::snapshot() = committed files + buffered batches, consistent
//! ```
//! Layout: `<lake>/tenants/<tenant>/tables/<table>/` holds one Delta table per [`schema::TableKind`],
//! partitioned by `day`. On start, the dedupe index is rebuilt from the stored reports within the
//! window, so a retry after a restart is still a duplicate.

pub mod alert;
pub mod alert_events;
mod args;
pub mod audit;
mod checkpoint;
mod cluster;
pub mod compaction;
mod dedupe;
mod error;
mod flusher;
mod follow;
pub mod host;
pub mod ingest_stats;
mod lease;
mod local_disk;
pub mod nats;
mod recovery;
pub mod report;
mod rollup;
pub mod schema;
pub mod store;
pub mod table;
mod tenant;
#[cfg(feature = "test-util")]
pub mod testing;
mod wal;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::sync::{Notify, broadcast};

pub use crate::args::{EngineArgs, StreamSettings, TenantSettings, WalMode};
pub use crate::checkpoint::{Checkpoints, KvCheckpoints, LakeCheckpoints};
pub use crate::error::{Error, ErrorKind, Result};
pub use crate::lease::NodeInfo;
pub use crate::rollup::{CELL_DEGREES, LOW_SCORE};
pub use crate::tenant::{PendingWrite, Tenant, TenantRole};

use crate::alert::RuleSet;
use crate::alert_events::{AlertEvent, FEED_QUEUE};
use crate::args::rules_for;
use crate::recovery::writer_id;
use crate::store::{Lake, TenantName};

/// The engine: every tenant's tables, and the background flusher.
#[derive(Debug)]
pub struct Engine {
    args: EngineArgs,
    tenants: parking_lot::RwLock<BTreeMap<TenantName, Arc<Tenant>>>,
    /// Serialises [`Engine::add_tenant`] (opening a tenant replays its WAL).
    opening: tokio::sync::Mutex<()>,
    writer_id: String,
    flush_now: Arc<Notify>,
    gauge: Arc<AtomicUsize>,
    /// The JetStream connection of [`WalMode::Stream`], shared by every tenant's log.
    jetstream: Option<async_nats::jetstream::Context>,
    /// Cluster mode's leases ([`WalMode::Stream`] only).
    cluster: Option<cluster::Cluster>,
    /// Progress kept across restarts and nodes (the lake's, or the cluster's bucket).
    checkpoints: Arc<dyn Checkpoints>,
    /// Each tenant's alert events as this node learns of them (kept across the tenant's
    /// reopening in another role, so that a watcher stays subscribed).
    alert_event_feeds: parking_lot::Mutex<HashMap<TenantName, broadcast::Sender<AlertEvent>>>,
}

impl Engine {
    /// Opens (creating when missing) the tables of `tenants` (the `default` tenant when empty)
    /// and rebuilds their dedupe state and buffers.
    pub async fn open(args: EngineArgs, tenants: Vec<TenantSettings>) -> Result<Self> {
        args.check()?;
        // Fail on a bad rule before touching any table.
        RuleSet::compile(&rules_for(&args.alert_rules, &[]))?;
        for settings in &tenants {
            RuleSet::compile(&rules_for(&args.alert_rules, &settings.alert_rules))
                .map_err(|e| Error::InvalidConfig(format!("tenant {}: {e}", settings.name)))?;
        }
        let (writer_id, jetstream) = match &args.wal {
            WalMode::Off => ("volatile".to_string(), None),
            WalMode::Local { dir, .. } => (writer_id(dir)?, None),
            // Every owner of a tenant's stream commits under the same id: a new owner resumes
            // where the last commit of any owner left off.
            WalMode::Stream(settings) => (
                "jetstream".to_string(),
                Some(crate::nats::connect(settings).await?),
            ),
        };
        let cluster = match (&args.wal, &jetstream) {
            (WalMode::Stream(settings), Some(context)) => {
                Some(cluster::Cluster::join(context, settings).await?)
            }
            _ => None,
        };
        let checkpoints: Arc<dyn Checkpoints> = match (&args.wal, &jetstream) {
            (WalMode::Stream(settings), Some(context)) => Arc::new(
                KvCheckpoints::open(
                    context,
                    &settings.prefix,
                    settings.replicas,
                    std::time::Instant::now() + settings.publish_timeout,
                )
                .await?,
            ),
            _ => Arc::new(LakeCheckpoints::new(
                args.lake.root_store.clone(),
                &args.lake.prefix,
            )),
        };
        let engine = Self {
            cluster,
            checkpoints,
            args,
            tenants: parking_lot::RwLock::default(),
            opening: tokio::sync::Mutex::new(()),
            writer_id,
            flush_now: Arc::new(Notify::new()),
            gauge: Arc::new(AtomicUsize::new(0)),
            jetstream,
            alert_event_feeds: parking_lot::Mutex::default(),
        };
        let tenants = if tenants.is_empty() {
            vec![TenantSettings::named(TenantName::default_tenant())]
        } else {
            tenants
        };
        for settings in tenants {
            engine.add_tenant(settings).await?;
        }
        Ok(engine)
    }

    /// Opens a tenant's tables (creating them when missing), replaying its WAL, unless it is
    /// open already. Safe while the engine serves other tenants.
    pub async fn add_tenant(&self, settings: TenantSettings) -> Result<Arc<Tenant>> {
        let _opening = self.opening.lock().await;
        if let Some(tenant) = self.tenant(&settings.name) {
            return Ok(tenant);
        }
        let tenant = Arc::new(self.open_tenant(settings).await?);
        self.tenants
            .write()
            .insert(tenant.name().clone(), tenant.clone());
        Ok(tenant)
    }

    /// Progress that outlives this process (and in cluster mode moves with a tenant).
    pub fn checkpoints(&self) -> Arc<dyn Checkpoints> {
        self.checkpoints.clone()
    }

    /// The lake the engine writes to.
    pub fn lake(&self) -> &Lake {
        &self.args.lake
    }

    /// A tenant by name, if open.
    pub fn tenant(&self, name: &TenantName) -> Option<Arc<Tenant>> {
        self.tenants.read().get(name).cloned()
    }

    /// Every open tenant, by name.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        self.tenants.read().values().cloned().collect()
    }

    /// Operators' actions on `tenant`'s alerts from now on, as this node learns of them: those
    /// recorded on this node at once, those recorded on others within a flush interval. A
    /// receiver that lags more than [`FEED_QUEUE`] events behind gets `Lagged` and should
    /// reload the alerts' state from `alert_events`.
    pub fn watch_alert_events(&self, tenant: &TenantName) -> broadcast::Receiver<AlertEvent> {
        self.alert_event_sender(tenant).subscribe()
    }

    fn alert_event_sender(&self, tenant: &TenantName) -> broadcast::Sender<AlertEvent> {
        self.alert_event_feeds
            .lock()
            .entry(tenant.clone())
            .or_insert_with(|| broadcast::channel(FEED_QUEUE).0)
            .clone()
    }

    /// The `default` tenant: the open single-tenant mode's, and the only one when no tenant was
    /// given to [`Engine::open`].
    pub fn default_tenant(&self) -> Result<Arc<Tenant>> {
        self.tenant(&TenantName::default_tenant())
            .ok_or_else(|| Error::NotFound("the default tenant is not open".into()))
    }
}
