//! The port every adapter implements.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::LogError;
use crate::event::{AppendResult, ExpectedVersion, NewEvent, RecordedEvent, StreamAppend};
use crate::limits::Limits;

/// A shared handle to any adapter.
pub type SharedStore = Arc<dyn EventStore>;

/// Append-only streams with optimistic concurrency, reads by stream and in global order, and a
/// signal of the committed head for catch-up subscriptions.
///
/// Contract (the conformance suite checks every point):
/// - `append` is atomic: all events of one call are stored, in order, or none. It returns only
///   once they are durable, and only then are they visible to readers.
/// - Re-appending the same event ids with the same bodies at the same expected version returns
///   the original [`AppendResult`] and writes nothing.
/// - Reads return only committed events; `read_all` is in global order with positions strictly
///   increasing.
#[async_trait]
pub trait EventStore: Send + Sync + std::fmt::Debug + 'static {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, LogError>;

    /// Appends to several distinct streams (at most [`crate::MAX_APPEND_STREAMS`]) in order,
    /// each part as one `append` would (expected version, idempotent retry), and answers each
    /// part's result in the same order.
    ///
    /// The embedded and memory logs do it atomically: every part is checked before any is
    /// sequenced, a conflict or bad input anywhere stores nothing, and all parts share one
    /// sync, so a command that writes its decision and what it publishes waits for the disk
    /// once, not once per stream. This default, which EventStoreDB uses (its client appends to
    /// one stream per call), appends the parts one after another: a failure leaves the parts
    /// before it stored. Callers must therefore handle that prefix, as they handle a crash
    /// between two appends.
    async fn append_streams(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, LogError> {
        // The checks the atomic adapters make on the whole, so every adapter refuses the same
        // calls before writing anything.
        crate::index::validate_parts(&appends, &self.limits())?;
        let mut results = Vec::with_capacity(appends.len());
        for a in appends {
            results.push(self.append(&a.stream, a.expected, a.events).await?);
        }
        Ok(results)
    }

    /// Up to `limit` events of `stream` from `from_version` on (empty if the stream does not
    /// exist). `limit` is capped by [`Limits::max_read_events`].
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError>;

    /// Up to `limit` events at global positions `>= from_position`, in order.
    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError>;

    /// Version of the stream's last committed event, `None` if the stream does not exist.
    async fn stream_version(&self, stream: &str) -> Result<Option<u64>, LogError>;

    /// Changes whenever events are committed; the value is one past the last committed position,
    /// so a reader at `p` has more to read while `p < *head.borrow()`.
    fn watch_head(&self) -> watch::Receiver<u64>;

    fn limits(&self) -> Limits;
}
