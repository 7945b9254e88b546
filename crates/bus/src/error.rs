//! One error type for every adapter of the bus, the relay and the consumer runner. Variants split
//! into the caller's mistakes (retrying fails the same way), backpressure and outages (retry
//! later, nothing was lost), and the event log's own errors.

use pl_eventlog::LogError;
use uuid::Uuid;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The broker cannot be reached or did not confirm in time; the message may or may not be
    /// stored, so publish it again (same id: it is stored once).
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// A retention bound is reached; publish again once consumers have caught up.
    #[error("bus full: {0}")]
    Full(String),
    #[error("invalid subject {subject:?}: {reason}")]
    InvalidSubject { subject: String, reason: String },
    #[error("invalid message {id}: {reason}")]
    InvalidMessage { id: Uuid, reason: String },
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("event log: {0}")]
    Log(#[from] LogError),
    /// The broker refused a request for a reason other than an outage.
    #[error("backend error: {0}")]
    Backend(String),
}

impl BusError {
    /// True when the same call may succeed later (outage, backpressure, a broker hiccup); false
    /// when the request itself is wrong.
    pub fn is_retryable(&self) -> bool {
        match self {
            BusError::Unavailable(_) | BusError::Full(_) | BusError::Backend(_) => true,
            // Only infrastructure hiccups; a poisoned, corrupt or closed log needs an operator.
            BusError::Log(e) => matches!(e, LogError::Io(_) | LogError::Backend(_)),
            BusError::InvalidSubject { .. }
            | BusError::InvalidMessage { .. }
            | BusError::InvalidConfig(_) => false,
        }
    }
}
