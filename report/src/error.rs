//! The report's one error type.

/// What can go wrong making a report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (a day out of range, an unknown time zone): the user fixes it.
    #[error("{0}")]
    InvalidInput(String),
    /// A query over the tenant's tables failed.
    #[error("report query {what} failed: {source}")]
    Sql {
        /// Which figure the query computes.
        what: &'static str,
        /// Why it failed.
        source: vigie_sql::Error,
    },
    /// A query answered rows of an unexpected shape (a bug: the queries are ours).
    #[error("report query {what} answered {detail}")]
    Shape {
        /// Which figure the query computes.
        what: &'static str,
        /// What was wrong with the answer.
        detail: String,
    },
    /// The typesetter refused the document (a bug: the markup is ours).
    #[error("cannot typeset the report: {0}")]
    Typeset(String),
}

/// The report's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
