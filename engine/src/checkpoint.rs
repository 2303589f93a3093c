//! Checkpoints: small named counters that outlive a process (and, in cluster mode, move with a
//! tenant from node to node), e.g. the last alert id a webhook delivered.
//!
//! ```text
//! Engine::checkpoints()
//!   embedded:     LakeCheckpoints  <lake>/_vigie/checkpoints/<key>   one small object per key
//!   cluster mode: KvCheckpoints    JetStream KV bucket <prefix>-checkpoints (R = replicas)
//! ```
//! A checkpoint is advisory progress, written by whoever does the work now: it may lag (a
//! crash between the work and the write repeats a little work) but never runs ahead of what
//! was done. Writers coalesce (the webhook writes at most once a second), so an object
//! store's per-request price stays negligible.

use std::fmt;
use std::sync::Arc;

use async_nats::jetstream::{self, kv, stream};
use async_trait::async_trait;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::{Error, Result};

/// Named `u64` counters that survive restarts. Keys are made of ASCII letters, digits, `.`,
/// `_` and `-` (callers build them from tenant names, which are).
#[async_trait]
pub trait Checkpoints: Send + Sync + fmt::Debug {
    /// The value last put under `key`, `None` if never.
    async fn get(&self, key: &str) -> Result<Option<u64>>;
    /// Records `value` under `key`.
    async fn put(&self, key: &str, value: u64) -> Result<()>;
}

fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "invalid checkpoint key {key:?}"
        )))
    }
}

fn parse(key: &str, bytes: &[u8]) -> Result<u64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::Corrupt(format!("checkpoint {key} is not a number")))
}

/// Checkpoints as objects under the lake (`_vigie/checkpoints/<key>`): the embedded default,
/// on local disk or any object store.
#[derive(Debug, Clone)]
pub struct LakeCheckpoints {
    store: Arc<dyn ObjectStore>,
    dir: Path,
}

impl LakeCheckpoints {
    /// Checkpoints under `prefix` (the lake's path) of `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &Path) -> Self {
        Self {
            store,
            dir: prefix.clone().join("_vigie").join("checkpoints"),
        }
    }
}

#[async_trait]
impl Checkpoints for LakeCheckpoints {
    async fn get(&self, key: &str) -> Result<Option<u64>> {
        check_key(key)?;
        match self.store.get(&self.dir.clone().join(key)).await {
            Ok(found) => {
                let bytes = found.bytes().await?;
                parse(key, &bytes).map(Some)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn put(&self, key: &str, value: u64) -> Result<()> {
        check_key(key)?;
        self.store
            .put(
                &self.dir.clone().join(key),
                PutPayload::from(value.to_string().into_bytes()),
            )
            .await?;
        Ok(())
    }
}

/// Checkpoints in the JetStream key-value bucket `<prefix>-checkpoints`: every node of the
/// cluster reads what the last one wrote.
#[derive(Clone)]
pub struct KvCheckpoints {
    kv: kv::Store,
}

impl fmt::Debug for KvCheckpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvCheckpoints").finish_non_exhaustive()
    }
}

impl KvCheckpoints {
    /// Opens (creating when missing) the bucket `<prefix>-checkpoints`.
    pub async fn open(
        context: &jetstream::Context,
        prefix: &str,
        replicas: usize,
        deadline: std::time::Instant,
    ) -> Result<Self> {
        let config = kv::Config {
            bucket: format!("{prefix}-checkpoints"),
            description: "Vigie: progress that moves with a tenant (webhook cursors)".into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let kv = crate::nats::open_bucket(context, config, deadline).await?;
        Ok(Self { kv })
    }
}

fn kv_error(what: &str, key: &str, e: impl fmt::Display) -> Error {
    Error::Wal(format!("JetStream checkpoints: cannot {what} {key}: {e}"))
}

#[async_trait]
impl Checkpoints for KvCheckpoints {
    async fn get(&self, key: &str) -> Result<Option<u64>> {
        check_key(key)?;
        match self.kv.get(key).await {
            Ok(Some(value)) => parse(key, &value).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(kv_error("read", key, e)),
        }
    }

    async fn put(&self, key: &str, value: u64) -> Result<()> {
        check_key(key)?;
        self.kv
            .put(key, Bytes::from(value.to_string()))
            .await
            .map(|_| ())
            .map_err(|e| kv_error("write", key, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lake_checkpoints_survive_a_new_handle() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let prefix = Path::from("lake");
        let first = LakeCheckpoints::new(store.clone(), &prefix);
        assert_eq!(first.get("webhook.north").await.unwrap(), None);
        first.put("webhook.north", 41).await.unwrap();
        first.put("webhook.north", 42).await.unwrap();
        let second = LakeCheckpoints::new(store, &prefix);
        assert_eq!(second.get("webhook.north").await.unwrap(), Some(42));
        assert_eq!(second.get("webhook.south").await.unwrap(), None);
        assert!(second.put("../escape", 1).await.is_err());
    }
}
