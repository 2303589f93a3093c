//! The service's errors and the one place they become gRPC statuses.
//!
//! User mistakes are `INVALID_ARGUMENT`, overload `RESOURCE_EXHAUSTED`, time limits
//! `DEADLINE_EXCEEDED`, shutdown `UNAVAILABLE`, commands Vigie does not implement `UNIMPLEMENTED`
//! naming the command, refused credentials what `vigie-auth` says, and the rest `INTERNAL`.
//! DataFusion errors are classified by their root ([`DataFusionError::find_root`]).

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use tonic::Status;
use vigie_sql::Error as SqlError;

/// Why a Flight SQL call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Planning or running SQL failed.
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// A login failed (or the caller's role may not read data).
    #[error(transparent)]
    Auth(#[from] vigie_auth::Error),
    /// A Flight SQL command Vigie does not implement.
    #[error("Vigie does not implement {command}: {why}")]
    Unsupported {
        /// The command, as the client sent it.
        command: String,
        /// Why, and what to do instead.
        why: &'static str,
    },
    /// A command that would change data (updates, bulk ingestion).
    #[error("Vigie's SQL is read-only: {0} are refused; data arrives through the ingest service")]
    ReadOnly(&'static str),
    /// An answer (schema, batch, token) could not be encoded: a bug.
    #[error("cannot encode {0}")]
    Encode(String),
    /// A task of the service failed: a bug.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// A command Vigie does not implement.
    pub(crate) fn unsupported(command: impl Into<String>, why: &'static str) -> Self {
        Self::Unsupported {
            command: command.into(),
            why,
        }
    }

    /// The transaction commands: Vigie has none.
    pub(crate) fn no_transactions(command: &'static str) -> Self {
        Self::unsupported(command, "Vigie is read-only and has no transactions")
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Sql(e) => status_of(&e),
            Error::Auth(e) => e.into(),
            Error::Unsupported { .. } => Status::unimplemented(error.to_string()),
            Error::ReadOnly(_) => Status::invalid_argument(error.to_string()),
            Error::Encode(_) | Error::Internal(_) => Status::internal(error.to_string()),
        }
    }
}

/// The status a Flight SQL client sees for a SQL error.
pub fn status_of(error: &SqlError) -> Status {
    match error {
        SqlError::ReadOnly(m) | SqlError::Parameters(m) => Status::invalid_argument(m.clone()),
        SqlError::Busy(m) => Status::resource_exhausted(m.clone()),
        SqlError::Unavailable(m) | SqlError::ShuttingDown(m) => Status::unavailable(m.clone()),
        SqlError::Timeout(m) => Status::deadline_exceeded(m.clone()),
        SqlError::Internal(m) => Status::internal(m.clone()),
        SqlError::DataFusion(e) => datafusion_status(e),
    }
}

fn datafusion_status(error: &DataFusionError) -> Status {
    let root = error.find_root();
    let message = root.to_string();
    match root {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Configuration(_) => Status::invalid_argument(message),
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(message),
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            ArrowError::CastError(_)
            | ArrowError::ParseError(_)
            | ArrowError::DivideByZero
            | ArrowError::ComputeError(_)
            | ArrowError::InvalidArgumentError(_)
            | ArrowError::ArithmeticOverflow(_) => Status::invalid_argument(message),
            _ => Status::internal(message),
        },
        DataFusionError::Execution(_) => Status::invalid_argument(message),
        _ => Status::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_error_has_its_code() {
        let code = |e: Error| Status::from(e).code();
        assert_eq!(
            code(Error::unsupported("X", "send SQL instead")),
            Code::Unimplemented
        );
        assert_eq!(code(Error::no_transactions("Begin")), Code::Unimplemented);
        assert_eq!(
            code(Error::ReadOnly("updates (CommandStatementUpdate)")),
            Code::InvalidArgument
        );
        assert_eq!(code(Error::Encode("a schema".into())), Code::Internal);
        assert_eq!(
            code(Error::Auth(vigie_auth::Error::Unauthenticated("no".into()))),
            Code::Unauthenticated
        );
        assert_eq!(
            code(Error::Sql(SqlError::Timeout("slow".into()))),
            Code::DeadlineExceeded
        );
        let plan = DataFusionError::Context(
            "outer".into(),
            Box::new(DataFusionError::Plan("no such column".into())),
        );
        assert_eq!(code(Error::Sql(plan.into())), Code::InvalidArgument);
        assert!(
            Status::from(Error::ReadOnly("updates (CommandStatementUpdate)"))
                .message()
                .contains("read-only")
        );
    }
}
