//! Event envelopes: what a caller hands to `append` and what every read returns.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

use crate::error::LogError;

/// SHA-256 of an event's canonical encoding (see `codec`), chained per stream.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventHash(pub [u8; 32]);

/// The `prev_hash` of the first event of every stream.
pub const GENESIS_HASH: EventHash = EventHash([0; 32]);

impl EventHash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for EventHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for EventHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What the writer knows about the state of the stream it appends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check: append after whatever is there.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version (versions start at 0).
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Caller-supplied context carried with every event. `occurred_at` is business time; the store
/// adds its own `recorded_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetadata {
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    /// W3C trace context (`traceparent`, `tracestate`), so a trace spans log and bus.
    pub trace_context: BTreeMap<String, String>,
}

impl EventMetadata {
    pub fn at(occurred_at: DateTime<Utc>) -> Self {
        Self {
            occurred_at,
            correlation_id: None,
            causation_id: None,
            trace_context: BTreeMap::new(),
        }
    }

    pub fn with_correlation(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    pub fn with_causation(mut self, causation_id: Uuid) -> Self {
        self.causation_id = Some(causation_id);
        self
    }
}

/// An event to append. `data` is JSON; the store checks it parses and never interprets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique across the whole log; re-appending the same id is idempotent.
    pub id: Uuid,
    pub event_type: String,
    /// Version of the event's schema, so old shapes can be upcast on read.
    pub schema_version: u32,
    pub data: Bytes,
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// Serialises `data` to JSON.
    pub fn json<T: Serialize>(
        id: Uuid,
        event_type: impl Into<String>,
        schema_version: u32,
        data: &T,
        metadata: EventMetadata,
    ) -> Result<Self, LogError> {
        let data = serde_json::to_vec(data).map_err(|e| LogError::InvalidEvent {
            event_id: id,
            reason: format!("data does not serialise to json: {e}"),
        })?;
        Ok(Self {
            id,
            event_type: event_type.into(),
            schema_version,
            data: Bytes::from(data),
            metadata,
        })
    }

    /// The bytes this event counts for against [`Limits::max_event_bytes`] and
    /// [`Limits::max_append_bytes`] when appended to `stream`: what a caller splitting a long
    /// batch into appends measures.
    ///
    /// [`Limits::max_event_bytes`]: crate::Limits::max_event_bytes
    /// [`Limits::max_append_bytes`]: crate::Limits::max_append_bytes
    pub fn encoded_bytes(&self, stream: &str) -> usize {
        crate::codec::frame_len(stream, self)
    }
}

/// An event as stored: the caller's fields plus what the store assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub stream: String,
    /// 0-based position within the stream.
    pub version: u64,
    /// Position in the global order. Dense (gap-free, from 0) in the embedded and memory
    /// adapters; strictly increasing per append in EventStoreDB.
    pub position: u64,
    pub recorded_at: DateTime<Utc>,
    pub id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub data: Bytes,
    pub metadata: EventMetadata,
    /// Hash of the previous event of this stream ([`GENESIS_HASH`] for version 0).
    pub prev_hash: EventHash,
    pub hash: EventHash,
}

impl RecordedEvent {
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }
}

/// One stream's part of [`crate::EventStore::append_streams`]: what one `append` call takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// The outcome of an append (also returned, unchanged, for an idempotent re-append).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Version of the last event written: pass it as `ExpectedVersion::Exact` next time.
    pub last_version: u64,
    pub first_position: u64,
    pub last_position: u64,
}
