//! Checking calls against the credentials file: API keys, Basic credentials, session tokens.
//!
//! ```text
//! every gRPC call ─▶ Authenticator::authenticate(authorization header) ─▶ Principal {tenant, role}
//! Flight SQL Handshake ─▶ Authenticator::login ─▶ bearer token (expires after token_ttl)
//! vigie serve: reload loop ─▶ Authenticator::read_if_changed ─▶ install (revocations apply)
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::file::{AuthFile, KEY_PREFIX, KeyRecord, ReportSettings, UserRecord};
use crate::principal::tenant_name;
use crate::secret::{decode_basic, random_secret, sha256_hex, verify_password};
use crate::{CredentialStore, Error, Principal, Result};

/// The credentials of one version of the file, ready to check calls against.
#[derive(Debug, Default)]
struct Credentials {
    open: bool,
    users: HashMap<String, UserRecord>,
    /// Live keys by SHA-256 hex.
    keys: HashMap<String, KeyRecord>,
    /// Ids of the live keys.
    key_ids: HashSet<String>,
    /// Basic credentials already verified (SHA-256 of the header value): argon2 runs once.
    verified: Mutex<HashMap<String, Principal>>,
    /// Each tenant's daily report settings.
    reports: HashMap<String, ReportSettings>,
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
            reports: file
                .tenants
                .iter()
                .map(|(name, t)| (name.clone(), t.report.clone()))
                .collect(),
        }
    }
}

/// How many session tokens may exist at once; the oldest expire first beyond it.
const MAX_TOKENS: usize = 100_000;

/// Checks calls against the credentials of a store, which it re-reads when they change.
#[derive(Debug)]
pub struct Authenticator {
    store: Arc<dyn CredentialStore>,
    credentials: RwLock<Arc<Credentials>>,
    stamp: Mutex<Option<u64>>,
    /// Session tokens from the Flight SQL handshake: token → (principal, expiry).
    tokens: Mutex<HashMap<String, (Principal, Instant)>>,
    token_ttl: Duration,
}

impl Authenticator {
    /// How long a session token lives by default.
    pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

    /// Reads the store once; tokens from [`Authenticator::login`] live `token_ttl`.
    pub fn open(store: Arc<dyn CredentialStore>, token_ttl: Duration) -> Result<Self> {
        let stamp = store.version();
        let file = store.load()?;
        Ok(Self {
            store,
            credentials: RwLock::new(Arc::new(Credentials::new(&file))),
            stamp: Mutex::new(stamp),
            tokens: Mutex::default(),
            token_ttl,
        })
    }

    /// The credentials, read now.
    pub fn file(&self) -> Result<AuthFile> {
        self.store.load()
    }

    /// The store the credentials are read from.
    pub fn store(&self) -> &Arc<dyn CredentialStore> {
        &self.store
    }

    /// The credentials when they changed since the last call (or since [`Authenticator::open`]).
    pub fn read_if_changed(&self) -> Result<Option<AuthFile>> {
        let stamp = self.store.version();
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

    /// `tenant`'s daily report settings as last installed (defaults for an unknown tenant):
    /// a change by `vigie admin set-report` applies within the reload interval.
    pub fn report_settings(&self, tenant: &str) -> ReportSettings {
        self.credentials
            .read()
            .reports
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    /// Every tenant's daily report settings, as last installed.
    pub fn report_schedules(&self) -> Vec<(String, ReportSettings)> {
        self.credentials
            .read()
            .reports
            .iter()
            .map(|(t, r)| (t.clone(), r.clone()))
            .collect()
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
                            tenant: tenant_name(&k.tenant)?,
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

    /// Ends the session of `token` (a console's logout); unknown tokens are ignored.
    pub fn logout(&self, token: &str) {
        self.tokens.lock().remove(token);
    }

    /// How long a session token from [`Authenticator::login`] lives.
    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
    }

    fn verify_basic(&self, credentials: &Credentials, encoded: &str) -> Result<Principal> {
        let key = sha256_hex(encoded.trim_end_matches('=').as_bytes());
        if let Some(principal) = credentials.verified.lock().get(&key) {
            return Ok(principal.clone());
        }
        let (user, password) = decode_basic(encoded)?;
        let refused = || Error::Unauthenticated("wrong user name or password".into());
        let record = credentials.users.get(&user).ok_or_else(refused)?;
        if !verify_password(&user, &record.password_hash, &password)? {
            return Err(refused());
        }
        let principal = Principal {
            tenant: tenant_name(&record.tenant)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FileStore;
    use crate::Role;
    use base64::Engine as _;

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
        let store = FileStore::new(dir.path());
        let auth = Authenticator::open(Arc::new(store.clone()), Duration::from_secs(60)).unwrap();
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
        let store = FileStore::new(dir.path());
        store
            .update(|f| {
                f.create_tenant("t", None, Vec::new())?;
                f.create_key("t", Role::Analyst)
            })
            .map(|(_, key)| {
                let auth =
                    Authenticator::open(Arc::new(store.clone()), Duration::from_millis(1)).unwrap();
                let (_, token) = auth.login(Some(&format!("Bearer {key}"))).unwrap();
                std::thread::sleep(Duration::from_millis(5));
                let r = auth.authenticate(Some(&format!("Bearer {token}")));
                assert!(matches!(r, Err(Error::Unauthenticated(m)) if m.contains("expired")));
            })
            .unwrap();
    }
}
