//! One error type for every adapter of the port. Variants split into the caller's mistakes
//! (nothing was written), concurrency conflicts (re-read and re-decide), and infrastructure.

use uuid::Uuid;

use crate::event::ExpectedVersion;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    #[error("wrong expected version for stream {stream}: expected {expected}, actual {}", fmt_actual(*.actual))]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersion,
        /// Version of the stream's last event, `None` when the stream does not exist.
        actual: Option<u64>,
    },
    #[error("event id {event_id} conflicts with a stored event: {reason}")]
    EventIdConflict { event_id: Uuid, reason: String },
    #[error("invalid stream name: {reason}")]
    InvalidStreamName { reason: String },
    #[error("invalid event {event_id}: {reason}")]
    InvalidEvent { event_id: Uuid, reason: String },
    #[error("limit exceeded: {what} is {actual}, limit {limit}")]
    LimitExceeded {
        what: &'static str,
        actual: u64,
        limit: u64,
    },
    #[error("corrupt log at byte offset {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    /// The embedded log's files are not what was written (cut short, rewritten, or followed
    /// by bytes no crash leaves): refused at open, never served or cut.
    #[error(
        "event log refused at open: {findings}; `partner-ledger audit verify` lists the \
         findings, and `partner-ledger audit accept-loss --reason <why>` opens the log anyway, \
         recording the loss as an event"
    )]
    Damaged { findings: String },
    #[error("log is read-only after a failed write; reopen it: {reason}")]
    Poisoned { reason: String },
    #[error("log is closed")]
    Closed,
    #[error("log directory is locked by another process: {path}")]
    Locked { path: String },
    #[error("i/o error: {0}")]
    Io(String),
    #[error("backend error: {0}")]
    Backend(String),
}

fn fmt_actual(actual: Option<u64>) -> String {
    actual.map_or_else(|| "no stream".to_owned(), |v| v.to_string())
}

impl LogError {
    /// True when re-reading the stream and deciding again may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, LogError::WrongExpectedVersion { .. })
    }

    /// True when the request itself is wrong and will fail the same way if retried.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            LogError::EventIdConflict { .. }
                | LogError::InvalidStreamName { .. }
                | LogError::InvalidEvent { .. }
                | LogError::LimitExceeded { .. }
        )
    }
}

impl From<std::io::Error> for LogError {
    fn from(e: std::io::Error) -> Self {
        LogError::Io(e.to_string())
    }
}
