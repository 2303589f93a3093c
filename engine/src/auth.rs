//! Tenants, principals and their credentials: the file `vigie admin` writes and the server reads.
//!
//! ```text
//! vigie admin create-… ─▶ AuthStore::update (exclusive lock, write temp file, fsync, rename)
//!                                  │  <data_dir>/auth.json (0600)
//! vigie serve: reload loop ─ Authenticator::read_if_changed ─▶ open new tenants ─▶ install
//! every gRPC call ─▶ Authenticator::authenticate(authorization header) ─▶ Principal {tenant, role}
//! Flight SQL Handshake ─▶ Authenticator::login ─▶ bearer token (expires after token_ttl)
//! ```
//! Passwords are stored as argon2id PHC strings. API keys are 256 random bits shown once; only
//! their SHA-256 is stored (a fast hash is enough for a random secret of that size, and it keeps
//! every call cheap). With no user and no key the server runs in the open single-tenant mode,
//! which `vigie serve` only allows on a loopback address.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::TenantName;
use crate::{Error, Result};

/// What a principal may do. Each gRPC method needs one of them (see `vigie-ingest`'s auth layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A drone: may only send reports (`Ingest`).
    Drone,
    /// Reads the tenant's data: Flight SQL and `Alerts.Subscribe`.
    Analyst,
    /// An analyst who also reads the tenant's `audit_log`.
    Admin,
}

impl Role {
    /// The role's name, as stored and typed.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Drone => "drone",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }

    /// Whether the role may read data (SQL, alerts).
    pub fn reads(self) -> bool {
        matches!(self, Role::Analyst | Role::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "drone" => Ok(Role::Drone),
            "analyst" => Ok(Role::Analyst),
            "admin" => Ok(Role::Admin),
            other => Err(Error::InvalidConfig(format!(
                "unknown role {other:?}: expected drone, analyst or admin"
            ))),
        }
    }
}

/// Who is calling: the tenant they belong to and their role. Requests carry it as an extension
/// once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The only tenant whose data the principal sees or writes.
    pub tenant: TenantName,
    /// What the principal may do.
    pub role: Role,
    /// `user:<name>`, `key:<id>`, or `anonymous` in the open mode (for logs and the audit log).
    pub name: String,
}

impl Principal {
    /// The principal of every call in the open single-tenant mode (no credentials exist).
    pub fn anonymous() -> Self {
        Self {
            tenant: TenantName::default_tenant(),
            role: Role::Admin,
            name: ANONYMOUS.into(),
        }
    }

    /// The principal the gRPC port's auth layer attached to `request` (every service reads it
    /// from there; its absence is a wiring bug).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, tonic::Status> {
        request
            .extensions()
            .get::<Self>()
            .cloned()
            .ok_or_else(|| tonic::Status::internal("the request did not pass the auth layer"))
    }

    /// Whether this is the open mode's caller, who may also send reports. No user or key has
    /// this name (theirs start with `user:` or `key:`).
    pub fn is_anonymous(&self) -> bool {
        self.name == ANONYMOUS
    }
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

/// The open mode's principal name.
const ANONYMOUS: &str = "anonymous";

/// API keys start with this, so a bearer value is known to be a key rather than a session token.
const KEY_PREFIX: &str = "vigie_";
/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn random_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::InvalidConfig(format!("no randomness from the OS: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// An argon2id PHC string of `password`, which must be long enough.
fn hash_password(password: &str) -> Result<String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::InvalidConfig(format!(
            "the password must have at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)
        .map_err(|e| Error::InvalidConfig(format!("no randomness from the OS: {e}")))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| Error::InvalidConfig(format!("cannot encode a salt: {e}")))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| Error::InvalidConfig(format!("cannot hash the password: {e}")))?
        .to_string())
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl AuthFile {
    /// Whether the server must run in the open mode: no user and no key were ever created.
    pub fn is_open(&self) -> bool {
        self.users.is_empty() && self.keys.is_empty()
    }

    fn tenant(&self, name: &str) -> Result<TenantName> {
        let tenant = TenantName::new(name)?;
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
        let tenant = TenantName::new(name)?;
        if self.tenants.contains_key(name) {
            return Err(Error::InvalidConfig(format!(
                "tenant {name:?} already exists"
            )));
        }
        self.tenants.insert(
            name.to_string(),
            TenantRecord {
                created_at: now_rfc3339(),
                retention,
                alert_rules,
            },
        );
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
            return Err(Error::InvalidConfig(
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
            return Err(Error::InvalidConfig(format!(
                "user name {name:?} must be 1 to 64 characters among letters, digits, '.', '_', '-' and '@'"
            )));
        }
        if self.users.iter().any(|u| u.name == name) {
            return Err(Error::InvalidConfig(format!(
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
        TenantName::new(&self.users[at].tenant)
    }

    /// Removes a user; their session tokens stop working at the server's next reload.
    pub fn delete_user(&mut self, name: &str) -> Result<TenantName> {
        let at = self.user_index(name)?;
        TenantName::new(&self.users.remove(at).tenant)
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
            return Err(Error::InvalidConfig(
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
            return Err(Error::InvalidConfig(format!(
                "API key {id} is already revoked"
            )));
        }
        key.revoked_at = Some(now_rfc3339());
        TenantName::new(&key.tenant)
    }
}

/// Where the credentials file lives, and the one way to change it.
#[derive(Debug, Clone)]
pub struct AuthStore {
    path: PathBuf,
}

impl AuthStore {
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
            Err(e) => Err(io_error(&self.path, "read", e)),
        }
    }

    /// Changes the file under an exclusive lock (several `vigie admin` at once are serialised)
    /// and replaces it atomically, so a reader sees the old or the new file, never a mix.
    pub fn update<T>(&self, change: impl FnOnce(&mut AuthFile) -> Result<T>) -> Result<T> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "create", e))?;
        let lock_path = self.path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error(&lock_path, "open", e))?;
        lock.lock().map_err(|e| io_error(&lock_path, "lock", e))?;
        let mut file = self.load()?;
        let out = change(&mut file)?;
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Corrupt(format!("cannot encode credentials: {e}")))?;
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
            .map_err(|e| io_error(&temp, "create", e))?;
        out_file
            .write_all(&json)
            .and_then(|()| out_file.sync_all())
            .map_err(|e| io_error(&temp, "write", e))?;
        std::fs::rename(&temp, &self.path).map_err(|e| io_error(&self.path, "replace", e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(dir, "sync", e))?;
        Ok(out)
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::InvalidConfig(format!("cannot {what} {}: {e}", path.display()))
}

/// The credentials of one version of the file, ready to check calls against.
#[derive(Debug, Default)]
struct Credentials {
    open: bool,
    users: HashMap<String, UserRecord>,
    /// Live keys by SHA-256 hex.
    keys: HashMap<String, KeyRecord>,
    /// Ids of the live keys.
    key_ids: std::collections::HashSet<String>,
    /// Basic credentials already verified (SHA-256 of the header value): argon2 runs once.
    verified: Mutex<HashMap<String, Principal>>,
}

impl Credentials {
    /// Whether the user or key behind a session token still exists (not deleted or revoked).
    fn still_valid(&self, principal: &Principal) -> bool {
        if let Some(user) = principal.name.strip_prefix("user:") {
            self.users
                .get(user)
                .is_some_and(|u| u.tenant == principal.tenant.as_str() && u.role == principal.role)
        } else if let Some(id) = principal.name.strip_prefix("key:") {
            self.key_ids.contains(id)
        } else {
            false
        }
    }

    fn new(file: &AuthFile) -> Self {
        Self {
            open: file.is_open(),
            users: file
                .users
                .iter()
                .map(|u| (u.name.clone(), u.clone()))
                .collect(),
            keys: file
                .keys
                .iter()
                .filter(|k| k.revoked_at.is_none())
                .map(|k| (k.sha256.clone(), k.clone()))
                .collect(),
            key_ids: file
                .keys
                .iter()
                .filter(|k| k.revoked_at.is_none())
                .map(|k| k.id.clone())
                .collect(),
            verified: Mutex::default(),
        }
    }
}

/// How many session tokens may exist at once; the oldest expire first beyond it.
const MAX_TOKENS: usize = 100_000;

/// Checks calls against the credentials file, which it re-reads when it changes.
#[derive(Debug)]
pub struct Authenticator {
    store: AuthStore,
    credentials: RwLock<Arc<Credentials>>,
    stamp: Mutex<Option<(SystemTime, u64)>>,
    /// Session tokens from the Flight SQL handshake: token → (principal, expiry).
    tokens: Mutex<HashMap<String, (Principal, Instant)>>,
    token_ttl: Duration,
}

impl Authenticator {
    /// Reads the store once; tokens from [`Authenticator::login`] live `token_ttl`.
    pub fn open(store: AuthStore, token_ttl: Duration) -> Result<Self> {
        let stamp = store.stamp();
        let file = store.load()?;
        Ok(Self {
            store,
            credentials: RwLock::new(Arc::new(Credentials::new(&file))),
            stamp: Mutex::new(stamp),
            tokens: Mutex::default(),
            token_ttl,
        })
    }

    /// The credentials file, read now.
    pub fn file(&self) -> Result<AuthFile> {
        self.store.load()
    }

    /// The file's new content when it changed since the last [`Authenticator::install`].
    pub fn read_if_changed(&self) -> Result<Option<AuthFile>> {
        let stamp = self.store.stamp();
        if stamp == *self.stamp.lock() {
            return Ok(None);
        }
        let file = self.store.load()?;
        *self.stamp.lock() = stamp;
        Ok(Some(file))
    }

    /// Starts checking calls against `file` (revoked keys are refused from now on).
    pub fn install(&self, file: &AuthFile) {
        *self.credentials.write() = Arc::new(Credentials::new(file));
    }

    /// Whether calls need no credentials (no user and no key exist).
    pub fn is_open(&self) -> bool {
        self.credentials.read().open
    }

    /// The principal an `authorization` header value proves: `Bearer <API key>`,
    /// `Bearer <token from the handshake>` or `Basic <base64 user:password>`.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        let credentials = self.credentials.read().clone();
        if credentials.open {
            // Anyone is the anonymous admin, but malformed Basic credentials are still an error.
            if let Some(basic) = authorization.and_then(|h| strip_scheme(h, "Basic")) {
                decode_basic(basic)?;
            }
            return Ok(Principal::anonymous());
        }
        let Some(header) = authorization else {
            return Err(Error::Unauthenticated(
                "credentials required: send `authorization: Bearer <API key>` or log in with \
                 user and password"
                    .into(),
            ));
        };
        if let Some(bearer) = strip_scheme(header, "Bearer") {
            if bearer.starts_with(KEY_PREFIX) {
                return credentials
                    .keys
                    .get(&sha256_hex(bearer.as_bytes()))
                    .map(|k| {
                        Ok(Principal {
                            tenant: TenantName::new(&k.tenant)?,
                            role: k.role,
                            name: format!("key:{}", k.id),
                        })
                    })
                    .unwrap_or_else(|| {
                        Err(Error::Unauthenticated("unknown or revoked API key".into()))
                    });
            }
            let mut tokens = self.tokens.lock();
            return match tokens.get(bearer) {
                Some((principal, _)) if !credentials.still_valid(principal) => {
                    tokens.remove(bearer);
                    Err(Error::Unauthenticated(
                        "the user or key of this session was removed or revoked".into(),
                    ))
                }
                Some((principal, expiry)) if *expiry > Instant::now() => Ok(principal.clone()),
                Some(_) => {
                    tokens.remove(bearer);
                    Err(Error::Unauthenticated(
                        "the session token expired: log in again".into(),
                    ))
                }
                None => Err(Error::Unauthenticated(
                    "unknown session token: log in again".into(),
                )),
            };
        }
        if let Some(basic) = strip_scheme(header, "Basic") {
            return self.verify_basic(&credentials, basic);
        }
        Err(Error::Unauthenticated(
            "the authorization header must be `Bearer …` or `Basic …`".into(),
        ))
    }

    /// The Flight SQL handshake: checks the credentials and returns a session token that
    /// [`Authenticator::authenticate`] accepts as `Bearer <token>` until it expires.
    pub fn login(&self, authorization: Option<&str>) -> Result<(Principal, String)> {
        let principal = self.authenticate(authorization)?;
        let token = random_secret()?;
        let now = Instant::now();
        let mut tokens = self.tokens.lock();
        if tokens.len() >= MAX_TOKENS {
            tokens.retain(|_, (_, expiry)| *expiry > now);
        }
        if tokens.len() >= MAX_TOKENS {
            return Err(Error::Overloaded(
                "too many open sessions: retry when some have expired".into(),
            ));
        }
        tokens.insert(token.clone(), (principal.clone(), now + self.token_ttl));
        Ok((principal, token))
    }

    fn verify_basic(&self, credentials: &Credentials, encoded: &str) -> Result<Principal> {
        let key = sha256_hex(encoded.trim_end_matches('=').as_bytes());
        if let Some(principal) = credentials.verified.lock().get(&key) {
            return Ok(principal.clone());
        }
        let (user, password) = decode_basic(encoded)?;
        let refused = || Error::Unauthenticated("wrong user name or password".into());
        let record = credentials.users.get(&user).ok_or_else(refused)?;
        let hash = PasswordHash::new(&record.password_hash)
            .map_err(|e| Error::Corrupt(format!("password hash of {user:?}: {e}")))?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .map_err(|_| refused())?;
        let principal = Principal {
            tenant: TenantName::new(&record.tenant)?,
            role: record.role,
            name: format!("user:{user}"),
        };
        credentials.verified.lock().insert(key, principal.clone());
        Ok(principal)
    }
}

fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = header.trim().split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// `user` and `password` of Basic credentials; the base64 may lack its padding (ADBC's Go driver
/// omits it, pyarrow keeps it).
pub fn decode_basic(encoded: &str) -> Result<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(encoded.trim().trim_end_matches('='))
        .map_err(|_| Error::Unauthenticated("Basic credentials are not valid base64".into()))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| Error::Unauthenticated("Basic credentials are not UTF-8".into()))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| Error::Unauthenticated("Basic credentials must be user:password".into()))?;
    Ok((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str, pad: bool) -> String {
        let engine = if pad {
            base64::engine::general_purpose::STANDARD
        } else {
            base64::engine::general_purpose::STANDARD_NO_PAD
        };
        format!("Basic {}", engine.encode(format!("{user}:{password}")))
    }

    #[test]
    fn principals_are_checked_and_revocation_applies_on_install() {
        let dir = tempfile::tempdir().unwrap();
        let store = AuthStore::new(dir.path());
        let auth = Authenticator::open(store.clone(), Duration::from_secs(60)).unwrap();
        assert!(auth.is_open());
        assert_eq!(auth.authenticate(None).unwrap(), Principal::anonymous());

        let (id, key) = store
            .update(|f| {
                f.create_tenant("north", None, Vec::new())?;
                f.create_user("north", "ana", Role::Analyst, "correct horse battery")?;
                f.create_key("north", Role::Drone)
            })
            .unwrap();
        let file = auth.read_if_changed().unwrap().expect("changed");
        auth.install(&file);
        assert!(!auth.is_open());
        assert!(auth.read_if_changed().unwrap().is_none());

        let err = |r: Result<Principal>| match r {
            Err(Error::Unauthenticated(m)) => m,
            other => panic!("expected Unauthenticated, got {other:?}"),
        };
        assert!(err(auth.authenticate(None)).contains("credentials required"));
        let drone = auth.authenticate(Some(&format!("Bearer {key}"))).unwrap();
        assert_eq!((drone.tenant.as_str(), drone.role), ("north", Role::Drone));
        for pad in [true, false] {
            let ana = auth
                .authenticate(Some(&basic("ana", "correct horse battery", pad)))
                .unwrap();
            assert_eq!(ana.name, "user:ana");
        }
        assert!(
            err(auth.authenticate(Some(&basic("ana", "wrong password!", true))))
                .contains("wrong user name or password")
        );
        assert!(
            err(auth.authenticate(Some(&basic("bob", "correct horse battery", true))))
                .contains("wrong user name or password")
        );

        let (_, token) = auth
            .login(Some(&basic("ana", "correct horse battery", false)))
            .unwrap();
        assert_eq!(
            auth.authenticate(Some(&format!("Bearer {token}")))
                .unwrap()
                .role,
            Role::Analyst
        );

        let (_, key_token) = auth.login(Some(&format!("Bearer {key}"))).unwrap();
        store.update(|f| f.revoke_key(&id)).unwrap();
        auth.install(&auth.read_if_changed().unwrap().expect("changed"));
        assert!(err(auth.authenticate(Some(&format!("Bearer {key}")))).contains("revoked"));
        // Sessions opened with the key end with it.
        assert!(err(auth.authenticate(Some(&format!("Bearer {key_token}")))).contains("revoked"));

        // A new password replaces the old one; deleting the user ends their sessions.
        store
            .update(|f| f.set_password("ana", "a brand new password"))
            .unwrap();
        auth.install(&auth.read_if_changed().unwrap().expect("changed"));
        assert!(
            auth.authenticate(Some(&basic("ana", "correct horse battery", true)))
                .is_err()
        );
        assert!(
            auth.authenticate(Some(&basic("ana", "a brand new password", false)))
                .is_ok()
        );
        store.update(|f| f.delete_user("ana")).unwrap();
        auth.install(&auth.read_if_changed().unwrap().expect("changed"));
        assert!(err(auth.authenticate(Some(&format!("Bearer {token}")))).contains("removed"));
    }

    #[test]
    fn tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = AuthStore::new(dir.path());
        store
            .update(|f| {
                f.create_tenant("t", None, Vec::new())?;
                f.create_key("t", Role::Analyst)
            })
            .map(|(_, key)| {
                let auth = Authenticator::open(store.clone(), Duration::from_millis(1)).unwrap();
                let (_, token) = auth.login(Some(&format!("Bearer {key}"))).unwrap();
                std::thread::sleep(Duration::from_millis(5));
                let r = auth.authenticate(Some(&format!("Bearer {token}")));
                assert!(matches!(r, Err(Error::Unauthenticated(m)) if m.contains("expired")));
            })
            .unwrap();
    }

    #[test]
    fn bad_admin_input_is_refused_with_reasons() {
        let mut f = AuthFile::default();
        assert!(matches!(
            f.create_user("nope", "ana", Role::Analyst, "long enough pass"),
            Err(Error::NotFound(_))
        ));
        f.create_tenant("t", None, Vec::new()).unwrap();
        assert!(f.create_tenant("t", None, Vec::new()).is_err());
        assert!(f.create_tenant("Bad Name", None, Vec::new()).is_err());
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
