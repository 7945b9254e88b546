//! The error model every service maps into, and its one translation to gRPC status codes.
//!
//! A service keeps its own error enum (domain rules apart from infrastructure) and converts it
//! into [`ApiError`] in one exhaustive match; [`ApiError`] becomes a [`tonic::Status`] here, in
//! one exhaustive match, so every service answers the same way for the same kind of failure.

use std::fmt;

use pl_eventlog::LogError;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// One invalid field of a request, reported back as `google.rpc.BadRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request, e.g. `context.idempotency_key`.
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The request is malformed; nothing was written. Maps to INVALID_ARGUMENT.
    InvalidArgument(Vec<FieldViolation>),
    /// A business rule forbids the operation in the current state. FAILED_PRECONDITION.
    Rule { reason: String },
    /// NOT_FOUND.
    NotFound { what: &'static str, id: String },
    /// The resource already exists (create with a taken id). ALREADY_EXISTS.
    AlreadyExists { what: &'static str, id: String },
    /// Optimistic concurrency lost even after retries. ABORTED: the caller may retry.
    Conflict { stream: String },
    /// Over a limit the server enforces (queue full, too many in flight). RESOURCE_EXHAUSTED.
    Exhausted { what: String },
    /// A dependency (event store, bus) is down; the caller may retry. UNAVAILABLE.
    Unavailable { what: String },
    /// A bug or corrupted data. INTERNAL; details are logged, never sent.
    Internal { detail: String },
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        ApiError::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn rule(reason: impl Into<String>) -> Self {
        ApiError::Rule {
            reason: reason.into(),
        }
    }

    pub fn internal(detail: impl fmt::Display) -> Self {
        ApiError::Internal {
            detail: detail.to_string(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::Rule { .. } => Code::FailedPrecondition,
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::AlreadyExists { .. } => Code::AlreadyExists,
            ApiError::Conflict { .. } => Code::Aborted,
            ApiError::Exhausted { .. } => Code::ResourceExhausted,
            ApiError::Unavailable { .. } => Code::Unavailable,
            ApiError::Internal { .. } => Code::Internal,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::InvalidArgument(v) => {
                f.write_str("invalid argument: ")?;
                for (i, fv) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{}: {}", fv.field, fv.description)?;
                }
                Ok(())
            }
            ApiError::Rule { reason } => f.write_str(reason),
            ApiError::NotFound { what, id } => write!(f, "{what} {id} not found"),
            ApiError::AlreadyExists { what, id } => write!(f, "{what} {id} already exists"),
            ApiError::Conflict { stream } => {
                write!(f, "concurrent update of {stream}; retry the request")
            }
            ApiError::Exhausted { what } => write!(f, "{what}; retry later"),
            ApiError::Unavailable { what } => write!(f, "{what} is unavailable; retry later"),
            ApiError::Internal { .. } => f.write_str("internal error"),
        }
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let code = e.code();
        match &e {
            ApiError::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                tonic::Status::with_error_details(code, e.to_string(), details)
            }
            ApiError::Internal { detail } => {
                // Logged once, here; the caller gets a reference, never the internals.
                #[allow(clippy::disallowed_methods)] // a log reference, not domain data
                let reference = uuid::Uuid::new_v4();
                tracing::error!(%reference, detail = %detail, "internal error");
                tonic::Status::new(code, format!("internal error (ref {reference})"))
            }
            ApiError::Unavailable { what } => {
                tracing::warn!(what = %what, "dependency unavailable");
                tonic::Status::new(code, e.to_string())
            }
            ApiError::Rule { .. }
            | ApiError::NotFound { .. }
            | ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::Exhausted { .. } => tonic::Status::new(code, e.to_string()),
        }
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::WrongExpectedVersion { stream, .. } => ApiError::Conflict { stream },
            LogError::EventIdConflict { .. } => ApiError::rule(e.to_string()),
            LogError::InvalidStreamName { reason } => ApiError::invalid("id", reason),
            LogError::InvalidEvent { .. } | LogError::LimitExceeded { .. } => {
                ApiError::invalid("request", e.to_string())
            }
            LogError::Closed => ApiError::Unavailable {
                what: "event log (shutting down)".into(),
            },
            LogError::Backend(_) => ApiError::Unavailable {
                what: "event store".into(),
            },
            LogError::Corrupt { .. }
            | LogError::Damaged { .. }
            | LogError::Poisoned { .. }
            | LogError::Locked { .. }
            | LogError::Io(_) => ApiError::internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_arguments_carry_every_field_violation_to_the_caller() {
        let e = ApiError::InvalidArgument(vec![
            FieldViolation::new("partner_id", "not a uuid"),
            FieldViolation::new("email", "missing"),
        ]);
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().unwrap();
        assert_eq!(bad.field_violations.len(), 2);
        assert_eq!(bad.field_violations[0].field, "partner_id");
    }

    #[test]
    fn internal_errors_never_leak_their_detail() {
        let status = tonic::Status::from(ApiError::internal("disk /dev/sda1 exploded"));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("sda1"));
        assert!(status.message().starts_with("internal error (ref "));
    }

    #[test]
    fn a_lost_concurrency_race_is_aborted_so_callers_retry() {
        let e: ApiError = LogError::WrongExpectedVersion {
            stream: "partner-1".into(),
            expected: pl_eventlog::ExpectedVersion::Exact(1),
            actual: Some(2),
        }
        .into();
        assert_eq!(tonic::Status::from(e).code(), Code::Aborted);
    }
}
