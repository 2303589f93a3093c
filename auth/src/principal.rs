//! Who calls (a [`Principal`]: tenant, role, name) and what a role may do ([`Access`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use vigie_engine::store::TenantName;

use crate::{Error, Result};

/// What a principal may do. Each gRPC method needs an [`Access`] that some roles give.
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
            other => Err(Error::InvalidArgument(format!(
                "unknown role {other:?}: expected drone, analyst or admin"
            ))),
        }
    }
}

/// What a call needs from its caller: the one role check of every entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Sends reports: drones (and the open mode's anonymous caller).
    Write,
    /// Reads data (SQL, alerts): analysts and admins.
    Read,
}

/// The open mode's principal name.
const ANONYMOUS: &str = "anonymous";

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

    /// Whether the principal's role gives `access`; `PermissionDenied` says why not.
    pub fn may(&self, access: Access) -> Result<()> {
        let allowed = match access {
            Access::Write => self.role == Role::Drone || self.is_anonymous(),
            Access::Read => self.role.reads(),
        };
        if allowed {
            return Ok(());
        }
        Err(Error::PermissionDenied(match access {
            Access::Write => format!(
                "{} is a {}: only drone keys may send reports",
                self.name, self.role
            ),
            Access::Read => format!(
                "{} is a {}: reading data needs an analyst or admin",
                self.name, self.role
            ),
        }))
    }
}

/// A checked tenant name; one the engine refuses is the administrator's mistake.
pub(crate) fn tenant_name(name: &str) -> Result<TenantName> {
    TenantName::new(name).map_err(|e| Error::InvalidArgument(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role) -> Principal {
        Principal {
            tenant: TenantName::new("t").unwrap(),
            role,
            name: "key:x".into(),
        }
    }

    #[test]
    fn roles_give_access() {
        assert!(principal(Role::Drone).may(Access::Write).is_ok());
        for role in [Role::Analyst, Role::Admin] {
            let err = principal(role).may(Access::Write).unwrap_err();
            assert!(matches!(err, Error::PermissionDenied(m) if m.contains("only drone keys")));
            assert!(principal(role).may(Access::Read).is_ok());
        }
        assert!(principal(Role::Drone).may(Access::Read).is_err());
        assert!(Principal::anonymous().may(Access::Write).is_ok());
        assert!(Principal::anonymous().may(Access::Read).is_ok());
        assert_eq!("analyst".parse::<Role>().unwrap(), Role::Analyst);
        assert!(matches!(
            "root".parse::<Role>(),
            Err(Error::InvalidArgument(_))
        ));
    }
}
