//! Audit: lets an auditor reproduce and verify every balance from the raw log alone, without
//! trusting a running service. `replay` rebuilds the commission ledger from the `ledger-*`
//! streams (the same decoding and ledger the live service uses, so both report the same
//! figures for the same as-of point); `seal` appends an ed25519-signed checkpoint committing to
//! every stream head up to a position (a Merkle root); `verify` walks every hash chain and every
//! seal and reports the first break; `export` writes ledger transactions and events as JSONL or
//! CSV; `statement` renders a partner's statement as text, CSV or a self-contained HTML page.
//! `grpc` serves the same over `AuditService`.
//!
//! It must never write to the log except `seal` (one event in `audit-seals`), never read the
//! wall clock in what it computes (times arrive as arguments), and never print a figure it did
//! not derive from the log.

#![forbid(unsafe_code)]

pub mod export;
pub mod grpc;
pub mod replay;
pub mod seal;
pub mod statement;

pub use grpc::AuditApi;

/// Events read per page when walking the log.
pub const PAGE_EVENTS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Log(#[from] pl_eventlog::LogError),
    #[error("event at position {position} in {stream} cannot be decoded: {reason}")]
    Decode {
        stream: String,
        position: u64,
        reason: String,
    },
    #[error(transparent)]
    Ledger(#[from] pl_ledger::LedgerError),
    #[error(transparent)]
    Report(#[from] pl_commissions::reports::ReportError),
    #[error("seal key: {0}")]
    Key(String),
    #[error("{0}")]
    Invalid(String),
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}
