//! The event-store port and its adapters: the only place where Partner Ledger's truth is written.
//!
//! Streams are append-only sequences of events with optimistic concurrency
//! ([`ExpectedVersion`]), idempotent re-appends by event id, a SHA-256 hash chain per stream
//! ([`verify`]), reads by stream and in global order, and catch-up [`Subscription`]s. Three
//! adapters pass one conformance suite: [`EmbeddedLog`] (the durable file log, the default),
//! [`MemoryLog`] (fast tests) and, behind the `eventstoredb` feature, EventStoreDB/KurrentDB.
//! [`Hooked`] wraps any of them, for tests and benches that need a log failing, racing or
//! hanging on cue.
//!
//! This crate knows nothing of the domain: it never interprets event data (bytes in the format
//! the event's type and schema version name), and it never deletes or rewrites an acknowledged
//! event. Only the adapters read
//! the clock (to stamp `recorded_at`); callers supply business time in [`EventMetadata`].

#![forbid(unsafe_code)]

mod checkpoint;
mod codec;
mod embedded;
mod error;
mod event;
mod finding;
mod hooked;
mod index;
mod limits;
mod memory;
mod sharded;
mod store;
mod subscription;
mod verify;

#[cfg(feature = "eventstoredb")]
pub mod eventstoredb;

pub use embedded::{
    EmbeddedLog, EmbeddedOptions, SyncStats, DEFAULT_SYNC_LINGER_US, LOG_INCIDENTS_STREAM,
    LOSS_EVENT_TYPE, MAX_SYNC_LINGER_US,
};
pub use error::LogError;
pub use event::{
    AppendResult, EventHash, EventMetadata, ExpectedVersion, NewEvent, RecordedEvent, StreamAppend,
    GENESIS_HASH,
};
pub use finding::LogFinding;
pub use hooked::{Hooked, RefuseAppends, StoreHooks};
pub use limits::{Limits, MAX_APPEND_STREAMS};
pub use memory::MemoryLog;
pub use store::{EventStore, SharedStore};
pub use subscription::{Subscription, SubscriptionFilter};
pub use verify::{
    verify, verify_stream, verify_visiting, ChainBreak, ChainBreakKind, VerifyReport,
};
