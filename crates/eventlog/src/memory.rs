//! In-memory adapter for fast unit tests. Same sequencer and contract as the embedded log,
//! nothing durable.

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::error::LogError;
use crate::event::{AppendResult, ExpectedVersion, NewEvent, RecordedEvent, StreamAppend};
use crate::index::{self, Index, Outcome, Part};
use crate::limits::Limits;
use crate::store::EventStore;

#[derive(Debug)]
pub struct MemoryLog {
    inner: Mutex<Inner>,
    head: watch::Sender<u64>,
    limits: Limits,
}

#[derive(Debug, Default)]
struct Inner {
    index: Index,
    events: Vec<RecordedEvent>,
}

impl Default for MemoryLog {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl MemoryLog {
    pub fn new(limits: Limits) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            head: watch::Sender::new(0),
            limits,
        }
    }

    #[allow(clippy::disallowed_methods)] // the store stamps recorded_at; domain code never does
    fn now_ns() -> i64 {
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
    }
}

impl MemoryLog {
    /// Every part decided, then stored, under one lock: all or nothing.
    fn sequence(
        &self,
        appends: &[StreamAppend],
        validated: &[index::Validated],
    ) -> Result<Vec<AppendResult>, LogError> {
        let parts: Vec<Part<'_>> = appends
            .iter()
            .zip(validated)
            .map(|(a, v)| Part {
                stream: &a.stream,
                expected: a.expected,
                events: &a.events,
                v,
            })
            .collect();
        let mut guard = self.inner.lock();
        let Inner { index, events: log } = &mut *guard;
        let outcomes = index.append_parts(&parts, Self::now_ns(), |position, _, c| {
            let hash = c.hash();
            // Every earlier event is in `log`, so an event's position is its index there.
            debug_assert_eq!(position, log.len() as u64);
            log.push(RecordedEvent {
                stream: c.stream.to_owned(),
                version: c.version,
                position,
                recorded_at: chrono::DateTime::from_timestamp_nanos(c.recorded_at_ns),
                id: c.id,
                event_type: c.event_type.to_owned(),
                schema_version: c.schema_version,
                data: Bytes::copy_from_slice(c.data),
                metadata: c.metadata.clone(),
                prev_hash: c.prev_hash,
                hash,
            });
            hash
        })?;
        let appended = outcomes.iter().any(|o| matches!(o, Outcome::Appended(_)));
        let head = log.len() as u64;
        drop(guard);
        if appended {
            self.head.send_replace(head);
        }
        Ok(outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Duplicate(r) | Outcome::Appended(r) => r,
            })
            .collect())
    }
}

#[async_trait]
impl EventStore for MemoryLog {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, LogError> {
        let appends = [StreamAppend {
            stream: stream.to_owned(),
            expected,
            events,
        }];
        let validated = [index::validate(stream, &appends[0].events, &self.limits)?];
        index::single(self.sequence(&appends, &validated)?)
    }

    async fn append_streams(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, LogError> {
        let validated = index::validate_parts(&appends, &self.limits)?;
        self.sequence(&appends, &validated)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        index::validate_stream_name(stream, &self.limits)?;
        let limit = self.limits.read_limit(limit);
        let inner = self.inner.lock();
        let Some(state) = inner.index.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let from = usize::try_from(from_version).unwrap_or(usize::MAX);
        Ok(state
            .positions
            .iter()
            .skip(from)
            .take(limit)
            .map(|&p| inner.events[p as usize].clone())
            .collect())
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let limit = self.limits.read_limit(limit);
        let inner = self.inner.lock();
        let from = usize::try_from(from_position).unwrap_or(usize::MAX);
        Ok(inner
            .events
            .iter()
            .skip(from)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn stream_version(&self, stream: &str) -> Result<Option<u64>, LogError> {
        Ok(self.inner.lock().index.stream_last_version(stream))
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn limits(&self) -> Limits {
        self.limits
    }
}
