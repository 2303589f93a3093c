//! Vigie's access control: who calls (principals and roles), the credentials file `vigie admin`
//! writes, the authenticator the server checks calls with, and the tower layer in front of every
//! gRPC entry point. The storage engine knows none of it.
//!
//! ```text
//! vigie admin ─▶ update(CredentialStore) ─▶ FileStore: <data_dir>/auth.json (one server)
//!                                         └▶ SharedStore: bucket <prefix>-auth (cluster mode)
//!               (users: argon2id, keys: SHA-256)  │ read_if_changed / install
//! gRPC call ─▶ AuthLayer ─▶ Authenticator::authenticate ─▶ Principal::may(Access)
//!                 │ ok: request.extensions += Principal ─▶ service: Principal::of(request)
//!                 └ refused: Error ─▶ tonic::Status (one mapping: Error::code)
//! Flight SQL Handshake ─▶ Authenticator::login ─▶ session token (expires after token_ttl)
//! another node (cluster mode) ─ authorization: Cluster <secret> ─▶ AuthLayer ─▶ the caller's
//!                 Principal it forwarded + Forwarded (ClusterSecret)
//! ```
//! Passwords are stored as argon2id PHC strings. API keys are 256 random bits shown once; only
//! their SHA-256 is stored (a fast hash is enough for a random secret of that size, and it keeps
//! every call cheap). With no user and no key the server runs in the open single-tenant mode,
//! which `vigie serve` only allows on a loopback address.

mod authenticator;
pub mod cluster;
mod error;
mod file;
mod layer;
mod principal;
mod secret;
mod shared;
mod store;

pub use authenticator::Authenticator;
pub use cluster::{ClusterSecret, Forwarded};
pub use error::{Error, Result};
pub use file::{AuthFile, FileStore, KeyRecord, ReportSettings, TenantRecord, UserRecord};
pub use layer::{AuthLayer, AuthService, HANDSHAKE_PATH};
pub use principal::{Access, Principal, Role};
pub use secret::{MIN_PASSWORD_CHARS, decode_basic};
pub use shared::SharedStore;
pub use store::{CredentialStore, update};
