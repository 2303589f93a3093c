//! The credentials of a cluster: every node reads the same tenants, users and keys from a
//! JetStream key-value bucket, and a revocation reaches all of them within a second.
//!
//! ```text
//! bucket <prefix>-auth (R = --stream-replicas, history 1, file storage), one entry per record:
//!   tenant.<name> = TenantRecord   user.<escaped name> = UserRecord   key.<id> = KeyRecord
//!   (JSON; an empty value is a removed record)
//! watcher task: watch_all_from_revision(last + 1) ─▶ mirror (value + revision per entry)
//!                                                        │ load(), version() = last revision
//! apply(change): mirror ─ change ─ diff ─▶ create / update(revision) per changed entry
//!                                          another writer was first ─▶ run the change again
//! ```
//! One entry per record rather than one document: each write is small whatever the number of
//! keys, and two admins changing different records never conflict.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::RwLock;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::{AuthFile, CredentialStore, Error, Result};

/// How many times a change is run again when other writers keep changing the same records.
const MAX_ATTEMPTS: usize = 20;

/// The entries of the bucket as the watcher last saw them.
#[derive(Debug, Default)]
struct Mirror {
    /// Key → (value, revision); removed records keep their (empty) tombstone and revision.
    entries: BTreeMap<String, (Bytes, u64)>,
}

/// The credentials bucket of a cluster (see the module docs).
pub struct SharedStore {
    kv: kv::Store,
    mirror: Arc<RwLock<Mirror>>,
    /// The last revision the mirror applied.
    applied: watch::Receiver<u64>,
    watcher: JoinHandle<()>,
}

impl fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedStore")
            .field("bucket", &self.kv.name)
            .field("revision", &*self.applied.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for SharedStore {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// How long a write waits for a new bucket to become routable before it gives up.
const ROUTABLE_WITHIN: Duration = Duration::from_secs(10);

fn unavailable(bucket: &str, what: &str, e: impl fmt::Display) -> Error {
    Error::Unavailable(format!(
        "the credentials bucket {bucket} on NATS: {what}: {e}"
    ))
}

impl SharedStore {
    /// Opens (creating when missing) the bucket `<prefix>-auth` and returns once the
    /// credentials it held when called are read; JetStream is waited for until `deadline`.
    pub async fn open(
        context: &jetstream::Context,
        prefix: &str,
        replicas: usize,
        deadline: Instant,
    ) -> Result<Self> {
        let bucket = format!("{prefix}-auth");
        let config = kv::Config {
            bucket: bucket.clone(),
            description: "Vigie: tenants, users and API keys".into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let kv = vigie_engine::nats::open_bucket(context, config, deadline)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        // Read fresh (the store's own copy is from when it was opened): what must be mirrored
        // before the credentials are complete.
        let state = kv
            .stream
            .get_info()
            .await
            .map_err(|e| unavailable(&bucket, "cannot read its state", e))?
            .state;
        let target = if state.messages == 0 {
            0
        } else {
            state.last_sequence
        };
        let mirror = Arc::new(RwLock::new(Mirror::default()));
        let (applied_tx, mut applied) = watch::channel(0);
        let watcher = tokio::spawn(watch_bucket(kv.clone(), mirror.clone(), applied_tx));
        let wait = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, applied.wait_for(|r| *r >= target)).await {
            Ok(Ok(_)) => {}
            _ => {
                watcher.abort();
                return Err(Error::Unavailable(format!(
                    "the credentials bucket {bucket} on NATS could not be read up to revision \
                     {target} in time"
                )));
            }
        }
        Ok(Self {
            kv,
            mirror,
            applied,
            watcher,
        })
    }

    /// The mirror's credentials, and the revision of every entry (tombstones included).
    fn snapshot(&self) -> (AuthFile, BTreeMap<String, u64>) {
        let mirror = self.mirror.read();
        let mut file = AuthFile::default();
        let mut revisions = BTreeMap::new();
        for (key, (value, revision)) in &mirror.entries {
            revisions.insert(key.clone(), *revision);
            if value.is_empty() {
                continue;
            }
            if let Err(e) = decode_into(&mut file, key, value) {
                warn!(bucket = %self.kv.name, key, error = %e, "an unreadable credentials entry is ignored");
            }
        }
        file.users
            .sort_by(|a, b| (&a.created_at, &a.name).cmp(&(&b.created_at, &b.name)));
        file.keys
            .sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        (file, revisions)
    }

    /// Writes the entries that differ between `before` and `after`; `Ok(None)` when another
    /// writer changed one of them first. Returns the last revision written.
    async fn write(
        &self,
        before: &BTreeMap<String, Bytes>,
        after: &BTreeMap<String, Bytes>,
        revisions: &BTreeMap<String, u64>,
    ) -> Result<Option<u64>> {
        let bucket = &self.kv.name;
        let removed = before
            .keys()
            .filter(|k| !after.contains_key(*k))
            .map(|k| (k, Bytes::new()));
        let changed = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, v)| (k, v.clone()));
        let mut last = 0;
        for (key, value) in changed.chain(removed) {
            // A bucket created an instant ago (by this process or another) may not be routable
            // from this client's server yet: JetStream answers "no responders" for a moment.
            let deadline = tokio::time::Instant::now() + ROUTABLE_WITHIN;
            let written = loop {
                let attempt = match revisions.get(key) {
                    Some(&revision) => match self.kv.update(key, value.clone(), revision).await {
                        Ok(r) => Ok(r),
                        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                            return Ok(None);
                        }
                        Err(e) => Err(e.to_string()),
                    },
                    None => match self.kv.create(key, value.clone()).await {
                        Ok(r) => Ok(r),
                        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => return Ok(None),
                        Err(e) => Err(e.to_string()),
                    },
                };
                match attempt {
                    Ok(revision) => break revision,
                    Err(e)
                        if e.contains("no responders")
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err(unavailable(bucket, "cannot write", e)),
                }
            };
            last = last.max(written);
        }
        Ok(Some(last))
    }

    /// Waits until the mirror applied `revision` (so that the next load sees a write).
    async fn caught_up(&self, revision: u64) -> Result<()> {
        let mut applied = self.applied.clone();
        match tokio::time::timeout(
            Duration::from_secs(10),
            applied.wait_for(|r| *r >= revision),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::Unavailable(format!(
                "the credentials bucket {} on NATS did not deliver revision {revision}",
                self.kv.name
            ))),
        }
    }
}

#[async_trait]
impl CredentialStore for SharedStore {
    fn location(&self) -> String {
        format!("NATS bucket {}", self.kv.name)
    }

    fn load(&self) -> Result<AuthFile> {
        Ok(self.snapshot().0)
    }

    fn version(&self) -> Option<u64> {
        let revision = *self.applied.borrow();
        (revision > 0).then_some(revision)
    }

    async fn apply(
        &self,
        change: &mut (dyn for<'f> FnMut(&'f mut AuthFile) -> Result<()> + Send),
    ) -> Result<()> {
        for _ in 0..MAX_ATTEMPTS {
            let (mut file, revisions) = self.snapshot();
            let before = entries(&file)?;
            change(&mut file)?;
            let after = entries(&file)?;
            match self.write(&before, &after, &revisions).await? {
                Some(revision) => return self.caught_up(revision).await,
                // Another writer was first: wait for its change, then run ours on top of it.
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Err(Error::Unavailable(format!(
            "the credentials in {} kept changing under this change: try again",
            self.kv.name
        )))
    }
}

/// Mirrors the bucket from the mirror's last revision on, for as long as the store lives;
/// starts again after the watch fails (a NATS server restarting).
async fn watch_bucket(kv: kv::Store, mirror: Arc<RwLock<Mirror>>, applied: watch::Sender<u64>) {
    loop {
        let from = *applied.borrow() + 1;
        match kv.watch_all_from_revision(from).await {
            Ok(mut watch) => {
                while let Some(entry) = watch.next().await {
                    let entry = match entry {
                        Ok(entry) => entry,
                        Err(e) => {
                            warn!(bucket = %kv.name, error = %e, "watching the credentials failed; starting again");
                            break;
                        }
                    };
                    {
                        let mut mirror = mirror.write();
                        let value = match entry.operation {
                            Operation::Put => entry.value,
                            Operation::Delete | Operation::Purge => Bytes::new(),
                        };
                        mirror.entries.insert(entry.key, (value, entry.revision));
                    }
                    applied.send_replace(entry.revision);
                }
            }
            Err(e) => {
                warn!(bucket = %kv.name, error = %e, "cannot watch the credentials; retrying");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Bytes a key may hold as they are; any other byte is written `=XX`.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("={byte:02X}"));
        }
    }
    out
}

fn json<T: Serialize>(record: &T) -> Result<Bytes> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(|e| Error::Internal(format!("cannot encode a credentials record: {e}")))
}

/// Every record of `file` as the bucket stores it.
fn entries(file: &AuthFile) -> Result<BTreeMap<String, Bytes>> {
    let mut out = BTreeMap::new();
    for (name, tenant) in &file.tenants {
        out.insert(format!("tenant.{}", escape(name)), json(tenant)?);
    }
    for user in &file.users {
        out.insert(format!("user.{}", escape(&user.name)), json(user)?);
    }
    for key in &file.keys {
        out.insert(format!("key.{}", escape(&key.id)), json(key)?);
    }
    Ok(out)
}

fn decode<T: DeserializeOwned>(value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| Error::Corrupt(format!("not a Vigie record: {e}")))
}

/// Adds the record of one entry to `file`.
fn decode_into(file: &mut AuthFile, key: &str, value: &[u8]) -> Result<()> {
    if let Some(name) = key.strip_prefix("tenant.") {
        // Tenant names need no escaping (lowercase letters, digits, '_' and '-').
        file.tenants.insert(name.to_string(), decode(value)?);
    } else if key.starts_with("user.") {
        file.users.push(decode(value)?);
    } else if key.starts_with("key.") {
        file.keys.push(decode(value)?);
    } else {
        return Err(Error::Corrupt(format!("unknown kind of entry {key:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    #[test]
    fn records_round_trip_through_entries() {
        let mut file = AuthFile::default();
        file.create_tenant("north", None, vec!["low=score < 10".into()])
            .unwrap();
        file.create_user("north", "ana@north.example", Role::Admin, "a long password")
            .unwrap();
        file.create_key("north", Role::Drone).unwrap();
        let entries = entries(&file).unwrap();
        assert!(
            entries.contains_key("user.ana=40north.example"),
            "{entries:?}"
        );
        let mut back = AuthFile::default();
        for (key, value) in &entries {
            decode_into(&mut back, key, value).unwrap();
        }
        assert_eq!(back, file);
        assert!(decode_into(&mut back, "what.x", b"{}").is_err());
        assert!(decode_into(&mut back, "key.x", b"not json").is_err());
        assert_eq!(escape("a=b c"), "a=3Db=20c");
    }
}
