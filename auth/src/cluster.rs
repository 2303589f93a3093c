//! Node-to-node calls of cluster mode: a node forwarding a drone's write to the tenant's owner
//! proves it is a node of the cluster with the shared secret, and says whose write it is.
//!
//! ```text
//! follower: ClusterSecret::authorize(request, caller) ─▶ authorization: Cluster <secret>
//!                                                         vigie-forwarded-{tenant,role,principal}
//! owner:    AuthLayer ─▶ ClusterSecret::principal_of(headers) ─▶ the caller's Principal (its
//!           role checked as if it had called the owner itself) + the Forwarded extension
//! ```
//! A forwarded call is never forwarded again, and carries exactly the caller's tenant and role:
//! a drone key gains nothing by being forwarded. Only `vigie.v1.Ingest` and `vigie.v1.Alerts`
//! accept it.

use std::fmt;

use sha2::{Digest, Sha256};
use tonic::metadata::MetadataValue;
use vigie_engine::store::TenantName;

use crate::{Error, Principal, Result, Role};

/// The `authorization` scheme of node-to-node calls.
const SCHEME: &str = "Cluster ";
/// The caller's tenant, role and name on a forwarded call.
const TENANT: &str = "vigie-forwarded-tenant";
const ROLE: &str = "vigie-forwarded-role";
const NAME: &str = "vigie-forwarded-principal";

/// Marks a request forwarded by another node (a request extension set by the auth layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded;

/// The secret every node of a cluster shares (`--cluster-secret`).
#[derive(Clone)]
pub struct ClusterSecret {
    secret: String,
    digest: [u8; 32],
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(…)")
    }
}

impl ClusterSecret {
    /// Shortest secret accepted.
    pub const MIN_CHARS: usize = 16;

    /// The shared secret; refused when shorter than [`ClusterSecret::MIN_CHARS`].
    pub fn new(secret: &str) -> Result<Self> {
        if secret.chars().count() < Self::MIN_CHARS {
            return Err(Error::InvalidArgument(format!(
                "the cluster secret must be at least {} characters",
                Self::MIN_CHARS
            )));
        }
        Ok(Self {
            secret: secret.to_string(),
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// Whether `authorization` is a node-to-node call (whatever its secret).
    pub fn is_cluster_call(authorization: Option<&str>) -> bool {
        authorization.is_some_and(|a| a.starts_with(SCHEME))
    }

    /// Adds to `request` the headers of a call forwarded on behalf of `caller`.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>, caller: &Principal) -> Result<()> {
        let value = |s: &str| {
            MetadataValue::try_from(s)
                .map_err(|e| Error::Internal(format!("cannot forward {s:?} in a header: {e}")))
        };
        let metadata = request.metadata_mut();
        metadata.insert("authorization", value(&format!("{SCHEME}{}", self.secret))?);
        metadata.insert(TENANT, value(caller.tenant.as_str())?);
        metadata.insert(ROLE, value(caller.role.as_str())?);
        metadata.insert(NAME, value(&caller.name)?);
        Ok(())
    }

    /// The principal a node-to-node call acts for, once its secret is checked.
    pub fn principal_of(
        &self,
        authorization: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Result<Principal> {
        let presented = authorization
            .and_then(|a| a.strip_prefix(SCHEME))
            .unwrap_or_default();
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if digest != self.digest {
            return Err(Error::Unauthenticated(
                "a node-to-node call with a wrong cluster secret".into(),
            ));
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| Error::InvalidArgument(format!("a forwarded call without {name}")))
        };
        let tenant = TenantName::new(header(TENANT)?)
            .map_err(|e| Error::InvalidArgument(format!("a forwarded call's tenant: {e}")))?;
        let role: Role = header(ROLE)?.parse()?;
        Ok(Principal {
            tenant,
            role,
            name: header(NAME)?.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(secret: &ClusterSecret, caller: &Principal) -> (Option<String>, http::HeaderMap) {
        let mut request = tonic::Request::new(());
        secret.authorize(&mut request, caller).unwrap();
        let headers = request.metadata().clone().into_headers();
        let authorization = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        (authorization, headers)
    }

    #[test]
    fn a_forwarded_call_carries_its_callers_tenant_and_role() {
        let secret = ClusterSecret::new("0123456789abcdef").unwrap();
        let caller = Principal {
            tenant: TenantName::new("north").unwrap(),
            role: Role::Drone,
            name: "key:abc".into(),
        };
        let (authorization, headers) = forwarded(&secret, &caller);
        assert!(ClusterSecret::is_cluster_call(authorization.as_deref()));
        assert_eq!(
            secret
                .principal_of(authorization.as_deref(), &headers)
                .unwrap(),
            caller
        );
        // Another cluster's secret proves nothing.
        let other = ClusterSecret::new("fedcba9876543210").unwrap();
        let refused = other
            .principal_of(authorization.as_deref(), &headers)
            .unwrap_err();
        assert!(matches!(refused, Error::Unauthenticated(_)), "{refused}");
        assert!(ClusterSecret::new("short").is_err());
        assert!(!ClusterSecret::is_cluster_call(Some("Bearer x")));
    }
}
