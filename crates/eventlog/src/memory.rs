//! In-memory adapter for fast unit tests. Same sequencer and contract as the embedded log,
//! nothing durable.

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::error::LogError;
use crate::event::{AppendResult, ExpectedVersion, NewEvent, RecordedEvent};
use crate::index::{self, Index, Outcome};
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

#[async_trait]
impl EventStore for MemoryLog {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, LogError> {
        let validated = index::validate(stream, &events, &self.limits)?;
        let mut guard = self.inner.lock();
        let Inner { index, events: log } = &mut *guard;
        // Every earlier event is in `log`, so an event's position is its index there.
        let first_position = log.len() as u64;
        let outcome = index.append(
            stream,
            expected,
            &events,
            &validated,
            Self::now_ns(),
            |position, _, c| {
                let hash = c.hash();
                let ev = &events[(position - first_position) as usize];
                log.push(RecordedEvent {
                    stream: c.stream.to_owned(),
                    version: c.version,
                    position,
                    recorded_at: chrono::DateTime::from_timestamp_nanos(c.recorded_at_ns),
                    id: ev.id,
                    event_type: ev.event_type.clone(),
                    schema_version: ev.schema_version,
                    data: ev.data.clone(),
                    metadata: ev.metadata.clone(),
                    prev_hash: c.prev_hash,
                    hash,
                });
                hash
            },
        )?;
        let result = match outcome {
            Outcome::Duplicate(r) => r,
            Outcome::Appended(r) => {
                let head = log.len() as u64;
                drop(guard);
                self.head.send_replace(head);
                r
            }
        };
        Ok(result)
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
