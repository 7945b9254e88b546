//! The one mapping of this service's domain errors onto the shared error model: every decider's
//! error says what kind of failure it is ([`Classify`]), and [`to_api`] turns a failed command
//! into an [`ApiError`] (which `pl_runtime` maps to a gRPC code). It must never decide a rule or
//! leak internals: decode failures become INTERNAL.

use pl_runtime::{ApiError, ExecuteError};

/// What kind of failure a domain error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    NotFound {
        what: &'static str,
        id: String,
    },
    AlreadyExists {
        what: &'static str,
        id: String,
    },
    /// A business rule forbids it in the current state (FAILED_PRECONDITION).
    Rule,
}

pub trait Classify: std::error::Error {
    fn kind(&self) -> Kind;
}

/// A domain error as the API reports it.
pub fn domain<E: Classify>(e: &E) -> ApiError {
    match e.kind() {
        Kind::NotFound { what, id } => ApiError::NotFound { what, id },
        Kind::AlreadyExists { what, id } => ApiError::AlreadyExists { what, id },
        Kind::Rule => ApiError::rule(e.to_string()),
    }
}

/// A failed command as the API reports it.
pub fn to_api<E: Classify>(e: ExecuteError<E>) -> ApiError {
    match e {
        ExecuteError::Domain(d) => domain(&d),
        ExecuteError::Conflict { stream, .. } => ApiError::Conflict { stream },
        ExecuteError::Decode(detail) => ApiError::internal(detail),
        ExecuteError::Store(e) => e.into(),
    }
}
