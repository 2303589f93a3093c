//! Where the credentials live, behind one seam: a file of the data dir (one server, the
//! embedded default) or a JetStream key-value bucket every node of a cluster shares.
//!
//! ```text
//! vigie admin ─ update(change) ─▶ CredentialStore::apply ─▶ FileStore   <data_dir>/auth.json
//!                                                         └▶ SharedStore <prefix>-auth bucket
//! vigie serve ─ every second: version() changed? ─▶ load() ─▶ Authenticator::install
//! ```

use std::fmt;

use async_trait::async_trait;

use crate::{AuthFile, Error, Result};

/// Credentials that can be read at any time and changed atomically.
#[async_trait]
pub trait CredentialStore: Send + Sync + fmt::Debug {
    /// Where the credentials are, for messages (`/var/lib/vigie/auth.json`, `bucket vigie-auth`).
    fn location(&self) -> String;

    /// The credentials now; an empty store is an empty [`AuthFile`] (the open mode).
    fn load(&self) -> Result<AuthFile>;

    /// A value that changes whenever the credentials may have changed, cheap to read every
    /// second (`None`: nothing stored).
    fn version(&self) -> Option<u64>;

    /// Applies `change` to the current credentials and stores the result atomically: readers
    /// see the credentials before or after, never a mix. When another writer changed them
    /// meanwhile, `change` runs again on the newer credentials.
    async fn apply(
        &self,
        change: &mut (dyn for<'f> FnMut(&'f mut AuthFile) -> Result<()> + Send),
    ) -> Result<()>;
}

/// [`CredentialStore::apply`] returning what `change` returns (from its last run).
pub async fn update<T: Send>(
    store: &dyn CredentialStore,
    mut change: impl FnMut(&mut AuthFile) -> Result<T> + Send,
) -> Result<T> {
    let mut out = None;
    store
        .apply(&mut |file| {
            out = Some(change(file)?);
            Ok(())
        })
        .await?;
    out.ok_or_else(|| Error::Internal("a credentials change ran no change".into()))
}
