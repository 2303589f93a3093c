//! The credentials: tenants, users and API keys ([`AuthFile`]), and the file of a data dir
//! that holds them on a single server ([`FileStore`]).
//!
//! ```text
//! vigie admin create-… ─▶ FileStore::apply (exclusive lock, write temp file, fsync, rename)
//!                                  │  <data_dir>/auth.json (0600)
//! vigie serve: reload loop ─ Authenticator::read_if_changed ─▶ open new tenants ─▶ install
//! ```

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use vigie_engine::store::TenantName;

use crate::principal::tenant_name;
use crate::secret::{hash_password, random_secret, sha256_hex};
use crate::{CredentialStore, Error, Result, Role};

/// API keys start with this, so a bearer value is known to be a key rather than a session token.
pub(crate) const KEY_PREFIX: &str = "vigie_";

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A tenant's settings, as `vigie admin create-tenant` stored them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// When the tenant was created (RFC 3339).
    pub created_at: String,
    /// Whole days older than this are deleted; `None`: the server's `--retention`.
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Alert rules as `NAME=EXPR`; empty: the server's rules.
    #[serde(default)]
    pub alert_rules: Vec<String>,
    /// The daily report's settings (`vigie admin set-report`).
    #[serde(default)]
    pub report: ReportSettings,
}

/// What a tenant's daily report covers, whom it names and where it goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSettings {
    /// The tenant's time zone (IANA name, e.g. `Europe/Paris`): a report covers a local day.
    /// `None`: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Whether the report names citizens (personal data); otherwise it only counts them.
    #[serde(default)]
    pub names: bool,
    /// Who receives the report of the day before by mail; empty: nobody.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// When it is sent, local `HH:MM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// A user who logs in with a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Unique across tenants: Basic credentials name no tenant.
    pub name: String,
    /// The user's tenant.
    pub tenant: String,
    /// `analyst` or `admin`.
    pub role: Role,
    /// argon2id PHC string.
    pub password_hash: String,
    /// RFC 3339.
    pub created_at: String,
}

/// An API key; the key itself is not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public identifier (a prefix of the key's hash), for listing and revoking.
    pub id: String,
    /// The key's tenant.
    pub tenant: String,
    /// `drone` or `analyst`.
    pub role: Role,
    /// SHA-256 of the key, hex.
    pub sha256: String,
    /// RFC 3339.
    pub created_at: String,
    /// When the key was revoked (RFC 3339); a revoked key is refused.
    #[serde(default)]
    pub revoked_at: Option<String>,
}

/// The whole credentials file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthFile {
    /// Tenants by name.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantRecord>,
    /// Users, names unique.
    #[serde(default)]
    pub users: Vec<UserRecord>,
    /// API keys, revoked ones included (so a revoked key's id stays known).
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
}

impl AuthFile {
    /// Whether the server must run in the open mode: no user and no key were ever created.
    pub fn is_open(&self) -> bool {
        self.users.is_empty() && self.keys.is_empty()
    }

    fn tenant(&self, name: &str) -> Result<TenantName> {
        let tenant = tenant_name(name)?;
        if self.tenants.contains_key(name) {
            Ok(tenant)
        } else {
            Err(Error::NotFound(format!(
                "no tenant {name:?}: create it first with `vigie admin create-tenant {name}`"
            )))
        }
    }

    /// Adds a tenant; an existing name is an error.
    pub fn create_tenant(
        &mut self,
        name: &str,
        retention: Option<Duration>,
        alert_rules: Vec<String>,
    ) -> Result<TenantName> {
        let tenant = tenant_name(name)?;
        if self.tenants.contains_key(name) {
            return Err(Error::AlreadyExists(format!(
                "tenant {name:?} already exists"
            )));
        }
        self.tenants.insert(
            name.to_string(),
            TenantRecord {
                created_at: now_rfc3339(),
                retention,
                alert_rules,
                report: ReportSettings::default(),
            },
        );
        Ok(tenant)
    }

    /// Changes `name`'s report settings with `change` (the caller checks the values it sets).
    pub fn set_report(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut ReportSettings),
    ) -> Result<TenantName> {
        let tenant = self.tenant(name)?;
        let record = self
            .tenants
            .get_mut(name)
            .ok_or_else(|| Error::NotFound(format!("no tenant {name:?}")))?;
        change(&mut record.report);
        Ok(tenant)
    }

    /// Adds a user with an argon2id hash of `password`.
    pub fn create_user(
        &mut self,
        tenant: &str,
        name: &str,
        role: Role,
        password: &str,
    ) -> Result<()> {
        self.tenant(tenant)?;
        if role == Role::Drone {
            return Err(Error::InvalidArgument(
                "users are analysts or admins; drones use API keys (`vigie admin create-key --role drone`)"
                    .into(),
            ));
        }
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
        if !valid_name {
            return Err(Error::InvalidArgument(format!(
                "user name {name:?} must be 1 to 64 characters among letters, digits, '.', '_', '-' and '@'"
            )));
        }
        if self.users.iter().any(|u| u.name == name) {
            return Err(Error::AlreadyExists(format!(
                "user {name:?} already exists"
            )));
        }
        let password_hash = hash_password(password)?;
        self.users.push(UserRecord {
            name: name.to_string(),
            tenant: tenant.to_string(),
            role,
            password_hash,
            created_at: now_rfc3339(),
        });
        Ok(())
    }

    /// Replaces a user's password.
    pub fn set_password(&mut self, name: &str, password: &str) -> Result<TenantName> {
        let hash = hash_password(password)?;
        let at = self.user_index(name)?;
        self.users[at].password_hash = hash;
        tenant_name(&self.users[at].tenant)
    }

    /// Removes a user; their session tokens stop working at the server's next reload.
    pub fn delete_user(&mut self, name: &str) -> Result<TenantName> {
        let at = self.user_index(name)?;
        tenant_name(&self.users.remove(at).tenant)
    }

    fn user_index(&self, name: &str) -> Result<usize> {
        self.users
            .iter()
            .position(|u| u.name == name)
            .ok_or_else(|| Error::NotFound(format!("no user {name:?}")))
    }

    /// Makes an API key; returns its id and the key, which is not stored and cannot be shown again.
    pub fn create_key(&mut self, tenant: &str, role: Role) -> Result<(String, String)> {
        self.tenant(tenant)?;
        if role == Role::Admin {
            return Err(Error::InvalidArgument(
                "API keys are for drones and analysts; admins are users with a password".into(),
            ));
        }
        let key = format!("{KEY_PREFIX}{}", random_secret()?);
        let sha256 = sha256_hex(key.as_bytes());
        let id = sha256[..12].to_string();
        self.keys.push(KeyRecord {
            id: id.clone(),
            tenant: tenant.to_string(),
            role,
            sha256,
            created_at: now_rfc3339(),
            revoked_at: None,
        });
        Ok((id, key))
    }

    /// Revokes the key with this id; returns its tenant. Revoking twice is an error.
    pub fn revoke_key(&mut self, id: &str) -> Result<TenantName> {
        let key = self
            .keys
            .iter_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| Error::NotFound(format!("no API key with id {id:?}")))?;
        if key.revoked_at.is_some() {
            return Err(Error::AlreadyExists(format!(
                "API key {id} is already revoked"
            )));
        }
        key.revoked_at = Some(now_rfc3339());
        tenant_name(&key.tenant)
    }
}

/// The credentials file of a data dir: the store of a single server.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// The store of a data directory: `<data_dir>/auth.json`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("auth.json"),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's content; a missing file is an empty one (open mode).
    pub fn load(&self) -> Result<AuthFile> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Corrupt(format!(
                    "{} is not a valid credentials file: {e}",
                    self.path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AuthFile::default()),
            Err(e) => Err(Error::io(&self.path, "read", e)),
        }
    }

    /// Changes the file under an exclusive lock (several `vigie admin` at once are serialised)
    /// and replaces it atomically, so a reader sees the old or the new file, never a mix.
    pub(crate) fn update<T>(&self, change: impl FnOnce(&mut AuthFile) -> Result<T>) -> Result<T> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create", e))?;
        let lock_path = self.path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, "open", e))?;
        lock.lock().map_err(|e| Error::io(&lock_path, "lock", e))?;
        let mut file = self.load()?;
        let out = change(&mut file)?;
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Internal(format!("cannot encode credentials: {e}")))?;
        let temp = self.path.with_extension("json.tmp");
        let mut options = OpenOptions::new();
        options.create(true).write(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut out_file = options
            .open(&temp)
            .map_err(|e| Error::io(&temp, "create", e))?;
        out_file
            .write_all(&json)
            .and_then(|()| out_file.sync_all())
            .map_err(|e| Error::io(&temp, "write", e))?;
        std::fs::rename(&temp, &self.path).map_err(|e| Error::io(&self.path, "replace", e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, "sync", e))?;
        Ok(out)
    }
}

#[async_trait]
impl CredentialStore for FileStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn load(&self) -> Result<AuthFile> {
        FileStore::load(self)
    }

    /// The file's modification time and length: the file is replaced whenever it changes.
    fn version(&self) -> Option<u64> {
        let meta = std::fs::metadata(&self.path).ok()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (meta.modified().ok()?, meta.len()).hash(&mut hasher);
        Some(hasher.finish())
    }

    async fn apply(
        &self,
        change: &mut (dyn for<'f> FnMut(&'f mut AuthFile) -> Result<()> + Send),
    ) -> Result<()> {
        // The lock serialises writers: the change runs once, on the newest file.
        self.update(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_admin_input_is_refused_with_reasons() {
        let mut f = AuthFile::default();
        assert!(matches!(
            f.create_user("nope", "ana", Role::Analyst, "long enough pass"),
            Err(Error::NotFound(_))
        ));
        f.create_tenant("t", None, Vec::new()).unwrap();
        assert!(matches!(
            f.create_tenant("t", None, Vec::new()),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            f.create_tenant("Bad Name", None, Vec::new()),
            Err(Error::InvalidArgument(_))
        ));
        assert!(f.create_user("t", "ana", Role::Analyst, "short").is_err());
        assert!(
            f.create_user("t", "ana", Role::Drone, "long enough pass")
                .is_err()
        );
        assert!(f.create_key("t", Role::Admin).is_err());
        assert!(matches!(f.revoke_key("abc"), Err(Error::NotFound(_))));
        let (id, _) = f.create_key("t", Role::Drone).unwrap();
        f.revoke_key(&id).unwrap();
        assert!(f.revoke_key(&id).is_err());
        assert!(!f.is_open());
    }
}
