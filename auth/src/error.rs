//! The one error type of the crate and its gRPC status, mapped in one place.

use std::path::{Path, PathBuf};

use tonic::{Code, Status};

/// Why a call, a login or a change of the credentials file was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No credentials, or credentials that prove nothing (unknown key, wrong password, expired
    /// token).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but its role may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A tenant, user or key that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A tenant, user or key that exists already, or a key revoked already.
    #[error("{0}")]
    AlreadyExists(String),
    /// An administrator's input that cannot be accepted (a name, a password, a role).
    #[error("{0}")]
    InvalidArgument(String),
    /// Too many open sessions.
    #[error("{0}")]
    Overloaded(String),
    /// The shared credentials (cluster mode) cannot be reached now; retry.
    #[error("{0}")]
    Unavailable(String),
    /// The credentials file cannot be understood (damaged, or not Vigie's).
    #[error("{0}")]
    Corrupt(String),
    /// The credentials file or its lock cannot be read or written.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done: read, write, lock, …
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The OS refused randomness or a hash could not be computed: not the caller's fault.
    #[error("{0}")]
    Internal(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &Path, what: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The gRPC code a client sees for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Overloaded(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Corrupt(_) | Error::Io { .. } | Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

impl From<&Error> for Status {
    fn from(error: &Error) -> Self {
        Status::new(error.code(), error.to_string())
    }
}
