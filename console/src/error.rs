//! The console's one error type, and its one mapping to HTTP statuses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tonic::{Code, Status};

/// What a console call can fail with; the message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No valid session: log in (again).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// The request is malformed or names something impossible.
    #[error("{0}")]
    BadRequest(String),
    /// A named thing (alert, page) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A limit was reached (queries running, memory): retry later.
    #[error("{0}")]
    Busy(String),
    /// The server cannot do it now (shutting down, tenant moving, storage down): retry.
    #[error("{0}")]
    Unavailable(String),
    /// The query ran past its time limit.
    #[error("{0}")]
    Timeout(String),
    /// A bug.
    #[error("{0}")]
    Internal(String),
}

/// The console's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The services' errors arrive as the status they give gRPC clients (one mapping per layer:
/// `vigie_flight_server::status_of`, `vigie_ingest::status_of`, `vigie_auth::Error`).
impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::PermissionDenied => Error::Forbidden(message),
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::AlreadyExists
            | Code::Unimplemented => Error::BadRequest(message),
            Code::NotFound => Error::NotFound(message),
            Code::ResourceExhausted => Error::Busy(message),
            Code::Unavailable | Code::Aborted | Code::Cancelled => Error::Unavailable(message),
            Code::DeadlineExceeded => Error::Timeout(message),
            Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => Error::Internal(message),
        }
    }
}

impl From<vigie_sql::Error> for Error {
    fn from(error: vigie_sql::Error) -> Self {
        vigie_flight_server::status_of(&error).into()
    }
}

impl From<vigie_engine::Error> for Error {
    fn from(error: vigie_engine::Error) -> Self {
        vigie_ingest::status_of(&error).into()
    }
}

impl From<vigie_report::Error> for Error {
    fn from(error: vigie_report::Error) -> Self {
        match error {
            vigie_report::Error::InvalidInput(message) => Error::BadRequest(message),
            vigie_report::Error::Sql { source, .. } => source.into(),
            e @ (vigie_report::Error::Shape { .. } | vigie_report::Error::Typeset(_)) => {
                Error::Internal(e.to_string())
            }
        }
    }
}

impl From<vigie_auth::Error> for Error {
    fn from(error: vigie_auth::Error) -> Self {
        Status::from(error).into()
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if matches!(self, Error::Internal(_)) {
            tracing::error!(error = %self, "console call failed");
        }
        (self.status(), Json(json!({ "error": self.to_string() }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_http() {
        let http = |s: Status| Error::from(s).status();
        assert_eq!(http(Status::invalid_argument("x")), StatusCode::BAD_REQUEST);
        assert_eq!(http(Status::unauthenticated("x")), StatusCode::UNAUTHORIZED);
        assert_eq!(http(Status::permission_denied("x")), StatusCode::FORBIDDEN);
        assert_eq!(
            http(Status::resource_exhausted("x")),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            http(Status::unavailable("x")),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http(Status::deadline_exceeded("x")),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            http(Status::internal("x")),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
