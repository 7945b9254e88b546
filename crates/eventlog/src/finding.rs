//! What a look at the embedded log's files found wrong: the findings that `audit verify`
//! prints and that decide whether [`EmbeddedLog::open`](crate::EmbeddedLog::open) serves
//! the log, cuts a torn tail, or refuses.

use std::fmt;

use crate::event::EventHash;

/// One thing found wrong with the embedded log's files, with offsets and positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFinding {
    /// The log holds fewer events than its checkpoint (or index snapshot) recorded: events
    /// that were acknowledged are gone.
    Truncated {
        /// Which record knew more: `checkpoint` or `index snapshot`.
        recorded_by: &'static str,
        expected_events: u64,
        expected_hash: EventHash,
        found_events: u64,
        found_hash: EventHash,
    },
    /// The event at the recorded position is not the one recorded: history was rewritten.
    Diverged {
        recorded_by: &'static str,
        position: u64,
        expected_hash: EventHash,
        found_hash: EventHash,
    },
    /// What a crash leaves: the start of an append no caller was told was written. A
    /// writer's open cuts it (and logs the offset and the bytes dropped).
    TornTail {
        offset: u64,
        bytes: u64,
        reason: String,
    },
    /// Zeros after the last append (space grown ahead of the appends). A writer's open drops
    /// them.
    ZeroTail { offset: u64, bytes: u64 },
    /// Bytes after the last append that no crash leaves (garbage, data after a clean close,
    /// damage followed by valid frames). Refused, never cut.
    TrailingBytes {
        offset: u64,
        bytes: u64,
        reason: String,
    },
    /// The log holds events but no checkpoint: its length cannot be checked (a data
    /// directory from before checkpoints, or the file was removed). A writer's open starts
    /// a new one.
    CheckpointMissing { events: u64 },
    /// The checkpoint file exists but neither of its copies is intact.
    CheckpointUnreadable,
}

impl LogFinding {
    /// True when a writer's open repairs it on its own: a torn tail or zeros are cut, a
    /// missing checkpoint is started. Everything else refuses the open until an operator
    /// accepts the loss (`partner-ledger audit accept-loss`).
    pub fn repaired_at_open(&self) -> bool {
        matches!(
            self,
            LogFinding::TornTail { .. }
                | LogFinding::ZeroTail { .. }
                | LogFinding::CheckpointMissing { .. }
        )
    }
}

impl fmt::Display for LogFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogFinding::Truncated {
                recorded_by,
                expected_events,
                expected_hash,
                found_events,
                found_hash,
            } => write!(
                f,
                "log cut short: the {recorded_by} records {expected_events} events ending in \
                 hash {expected_hash}, the log holds {found_events} ending in hash {found_hash}"
            ),
            LogFinding::Diverged {
                recorded_by,
                position,
                expected_hash,
                found_hash,
            } => write!(
                f,
                "log rewritten: the {recorded_by} records hash {expected_hash} at position \
                 {position}, the log holds {found_hash}"
            ),
            LogFinding::TornTail {
                offset,
                bytes,
                reason,
            } => write!(
                f,
                "torn tail: {bytes} bytes from byte offset {offset} are an append a crash cut \
                 short ({reason})"
            ),
            LogFinding::ZeroTail { offset, bytes } => write!(
                f,
                "zero tail: {bytes} zero bytes from byte offset {offset} after the last append"
            ),
            LogFinding::TrailingBytes {
                offset,
                bytes,
                reason,
            } => write!(
                f,
                "trailing bytes: {bytes} bytes from byte offset {offset} are not a torn write \
                 ({reason})"
            ),
            LogFinding::CheckpointMissing { events } => write!(
                f,
                "no checkpoint beside a log of {events} events: its length cannot be checked"
            ),
            LogFinding::CheckpointUnreadable => {
                write!(f, "checkpoint unreadable: neither copy is intact")
            }
        }
    }
}
