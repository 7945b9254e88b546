//! The port every adapter implements.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::LogError;
use crate::event::{AppendResult, ExpectedVersion, NewEvent, RecordedEvent};
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
