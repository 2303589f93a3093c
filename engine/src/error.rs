//! The engine's one error type, and the kind of each failure (what a caller should do).

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting or name that cannot be used; the message says which and why.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A request that cannot be carried out as sent; the message says what to change.
    #[error("{0}")]
    InvalidInput(String),
    /// Stored data that does not match what Vigie writes.
    #[error("unexpected stored data: {0}")]
    Corrupt(String),
    /// The object store failed (network, permissions, missing bucket…).
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// The Delta log could not be read or committed.
    #[error("Delta Lake: {0}")]
    Delta(#[from] deltalake::errors::DeltaTableError),
    /// An Arrow operation failed (a bug if it happens on validated input).
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The write-ahead log failed: the write is not acknowledged.
    #[error("write-ahead log: {0}")]
    Wal(String),
    /// Too much is buffered (the object store is slow or unreachable): retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Stored Parquet files could not be read back.
    #[error("reading stored data: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// An alert rule failed on a batch of reports (the rule compiled, so not the writer's fault).
    #[error("{0}")]
    Rule(String),
    /// A request larger than the log takes as one record: send fewer reports per request.
    #[error("{0}")]
    TooLarge(String),
    /// A named thing (a tenant) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// In cluster mode, another node owns the tenant's writes (or none does, during a
    /// takeover): forward to it, or retry.
    #[error("{0}")]
    NotOwner(String),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is: each service maps kinds to its protocol's codes once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's input or configuration is wrong: fix it, retrying does not help.
    InvalidInput,
    /// A named thing does not exist.
    NotFound,
    /// Too much is buffered: retry later.
    Overloaded,
    /// The write-ahead log failed, or this node does not own the tenant: nothing was
    /// acknowledged, retry.
    Unavailable,
    /// The object store or the Delta log failed.
    Storage,
    /// Stored data does not match what Vigie writes (damaged or foreign files).
    Corrupt,
    /// An Arrow or DataFusion operation failed on data Vigie made: a bug.
    Internal,
}

impl Error {
    /// The kind of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidConfig(_) | Error::InvalidInput(_) | Error::TooLarge(_) => {
                ErrorKind::InvalidInput
            }
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Overloaded(_) => ErrorKind::Overloaded,
            Error::Wal(_) | Error::NotOwner(_) => ErrorKind::Unavailable,
            Error::ObjectStore(_) | Error::Delta(_) => ErrorKind::Storage,
            Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Arrow(_) | Error::DataFusion(_) | Error::Rule(_) => ErrorKind::Internal,
        }
    }
}
