//! Bounds on everything the log accepts, checked before anything is written.

/// Every append is checked against these; a request over any of them is rejected whole with
/// [`crate::LogError::LimitExceeded`] (or a more precise error) and nothing is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Encoded size of one event (data, type, stream, metadata and envelope).
    pub max_event_bytes: usize,
    pub max_events_per_append: usize,
    /// Sum of encoded event sizes in one append.
    pub max_append_bytes: usize,
    pub max_stream_name_bytes: usize,
    pub max_event_type_bytes: usize,
    /// Entries in an event's trace context, and bytes per key or value.
    pub max_trace_entries: usize,
    pub max_trace_value_bytes: usize,
    /// The most events one read returns, whatever `limit` the caller asks for.
    pub max_read_events: usize,
}

/// Streams one [`crate::EventStore::append_streams`] call may write: a command's decision and
/// what it publishes, not a bulk load.
pub const MAX_APPEND_STREAMS: usize = 16;

/// The embedded writer never leaves more than this many bytes written but not yet synced; the
/// recovery scan relies on it to tell a torn tail from corruption in the middle of the file.
pub(crate) const MAX_UNSYNCED_BYTES: usize = 32 * 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 1024 * 1024,
            max_events_per_append: 1000,
            max_append_bytes: 4 * 1024 * 1024,
            max_stream_name_bytes: 256,
            max_event_type_bytes: 128,
            max_trace_entries: 8,
            max_trace_value_bytes: 512,
            max_read_events: 4096,
        }
    }
}

impl Limits {
    pub(crate) fn read_limit(&self, requested: usize) -> usize {
        requested.min(self.max_read_events)
    }
}
