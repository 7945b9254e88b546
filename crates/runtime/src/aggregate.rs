//! Deciders and the loop that runs them against the event log.
//!
//! An [`Aggregate`] is pure: `decide(&state, &command)` returns events or a domain error, and
//! `evolve(state, &event)` folds one event in. [`execute`] loads the stream, decides, and appends
//! with the stream version it decided on; a concurrent writer makes the append fail, and the
//! command is re-decided on fresh state (bounded retries), never written over.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use pl_eventlog::{
    EventMetadata, EventStore, ExpectedVersion, LogError, NewEvent, RecordedEvent, StreamAppend,
};
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

/// Retries of a command that lost an optimistic-concurrency race before giving up (ABORTED).
pub const MAX_CONFLICT_RETRIES: usize = 5;
/// Events read per page when loading a stream.
const LOAD_PAGE_EVENTS: usize = 1024;

/// An event enum of one aggregate, stored as `{event_type: variant name, data: fields}`.
///
/// Implementations are `#[serde(tag = "type", content = "data")]` enums; the variant name is the
/// event type in the log and `schema_version` lets old shapes be upcast in `upcast`.
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync {
    /// Schema version written with every new event of this type.
    fn schema_version(&self) -> u32 {
        1
    }

    /// True when events of this type and version must go through [`DomainEvent::upcast`];
    /// the others are decoded straight from their bytes in one pass.
    fn needs_upcast(_event_type: &str, _schema_version: u32) -> bool {
        false
    }

    /// Rewrites the JSON of an older schema version into the current shape. The default accepts
    /// only the current version's shape as is.
    fn upcast(
        _event_type: &str,
        _schema_version: u32,
        data: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        Ok(data)
    }

    /// Splits the event into the log's `(event_type, data)`: JSON ([`encode_json`]) unless the
    /// aggregate stores a format of its own (then `decode` reads it back, and every earlier
    /// schema version still).
    fn encode(&self) -> Result<(String, Bytes), String> {
        encode_json(self).map_err(|e| e.to_string())
    }

    /// Rebuilds the event from a stored one: [`decode_json`] unless the aggregate stores a
    /// format of its own.
    fn decode(recorded: &RecordedEvent) -> Result<Self, String> {
        decode_json(
            &recorded.event_type,
            recorded.schema_version,
            recorded.id,
            &recorded.data,
        )
    }
}

pub trait Aggregate {
    type State: Default + Send;
    type Command: Send + Sync;
    type Event: DomainEvent;
    type Error: std::error::Error + Send;

    fn decide(
        state: &Self::State,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Error>;
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
}

/// The events a command decided, as the log takes them: encoded, with the ids and metadata of
/// `meta` (the i-th event gets `meta.event_id(i)`): for a caller that appends them itself,
/// beside the events of [`decide_on`].
pub fn to_new_events<E: DomainEvent, Err>(
    events: &[E],
    meta: &CommandMeta,
) -> Result<Vec<NewEvent>, ExecuteError<Err>> {
    events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            let (event_type, data) =
                encode_event(event).map_err(|e| ExecuteError::Decode(e.to_string()))?;
            Ok(NewEvent {
                id: meta.event_id(i),
                event_type,
                schema_version: event.schema_version(),
                data,
                metadata: meta.metadata(),
            })
        })
        .collect()
}

/// Splits a domain event into the log's `(event_type, data)`, in its aggregate's stored format
/// ([`DomainEvent::encode`]).
pub fn encode_event<E: DomainEvent>(event: &E) -> Result<(String, Bytes), String> {
    event.encode()
}

/// The JSON form of [`encode_event`], for events stored as JSON (the default).
///
/// Serialised once, straight to bytes: an adjacently tagged enum comes out as
/// `{"type":"Name","data":…}`, so the type and the data are cut out of that document without
/// copying. Anything else (a unit variant, a type that is not a tagged enum) goes the slow way
/// through a JSON value, which writes `null` data or reports what is wrong.
pub fn encode_json<E: Serialize>(event: &E) -> Result<(String, Bytes), serde_json::Error> {
    let doc = Bytes::from(serde_json::to_vec(event)?);
    if let Some((event_type, data)) = split_tagged(&doc) {
        return Ok((event_type, doc.slice(data)));
    }
    let value = serde_json::to_value(event)?;
    let serde_json::Value::Object(mut obj) = value else {
        return Err(serde::ser::Error::custom(
            "domain events must be tagged enums",
        ));
    };
    let event_type = match obj.remove("type") {
        Some(serde_json::Value::String(t)) => t,
        _ => {
            return Err(serde::ser::Error::custom(
                "domain event has no string `type` tag",
            ))
        }
    };
    let data = obj.remove("data").unwrap_or(serde_json::Value::Null);
    Ok((event_type, Bytes::from(serde_json::to_vec(&data)?)))
}

/// The event type and the byte range of the data in `{"type":"Name","data":…}`.
fn split_tagged(doc: &Bytes) -> Option<(String, std::ops::Range<usize>)> {
    const HEAD: &[u8] = b"{\"type\":\"";
    const DATA: &[u8] = b",\"data\":";
    let rest = doc.strip_prefix(HEAD)?;
    // Variant names are Rust identifiers: no escapes to undo.
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    if rest.get(end) != Some(&b'"') {
        return None;
    }
    let name = std::str::from_utf8(rest.get(..end)?).ok()?.to_owned();
    let after = rest.get(end + 1..)?;
    let data = after.strip_prefix(DATA)?.strip_suffix(b"}")?;
    let start = doc.len() - 1 - data.len();
    Some((name, start..start + data.len()))
}

/// Rebuilds a domain event from a stored one, upcasting older schema versions
/// ([`DomainEvent::decode`]).
pub fn decode_event<E: DomainEvent>(recorded: &RecordedEvent) -> Result<E, String> {
    E::decode(recorded)
}

/// The JSON form of [`decode_event`]: `data` of an event `id` of `event_type`, stored with
/// `schema_version`, upcast first when [`DomainEvent::needs_upcast`] says so.
pub fn decode_json<E: DomainEvent>(
    event_type: &str,
    schema_version: u32,
    id: Uuid,
    data: &[u8],
) -> Result<E, String> {
    if !E::needs_upcast(event_type, schema_version) {
        // One pass: the tag first, so serde need not buffer the payload. The event type was
        // checked by the log to hold no whitespace or control characters; JSON-escape it anyway.
        let tag = serde_json::to_string(event_type).map_err(|e| e.to_string())?;
        let mut doc = Vec::with_capacity(data.len() + tag.len() + 20);
        doc.extend_from_slice(b"{\"type\":");
        doc.extend_from_slice(tag.as_bytes());
        doc.extend_from_slice(b",\"data\":");
        doc.extend_from_slice(data);
        doc.push(b'}');
        return serde_json::from_slice(&doc)
            .map_err(|e| format!("event {} ({}): {e}", id, event_type));
    }
    let data: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| format!("event {} data: {e}", id))?;
    let data = E::upcast(event_type, schema_version, data)?;
    serde_json::from_value(serde_json::json!({ "type": event_type, "data": data }))
        .map_err(|e| format!("event {} ({}): {e}", id, event_type))
}

/// What a command carries besides its payload: business time, correlation, trace context, and
/// where the ids of the events it produces come from.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    /// Event ids are UUIDv5(`id_seed`, index): the same request (same idempotency key, or the
    /// same consumed event) always produces the same ids, so the log deduplicates a retry.
    pub id_seed: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub trace_context: BTreeMap<String, String>,
}

impl CommandMeta {
    pub fn event_id(&self, index: usize) -> Uuid {
        Uuid::new_v5(&self.id_seed, index.to_string().as_bytes())
    }

    pub(crate) fn metadata(&self) -> EventMetadata {
        EventMetadata {
            occurred_at: self.occurred_at,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            trace_context: self.trace_context.clone(),
        }
    }
}

/// A stream's state as of its last event.
#[derive(Debug)]
pub struct Loaded<S> {
    pub state: S,
    /// Version of the last event, `None` when the stream does not exist.
    pub version: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E> {
    #[error(transparent)]
    Domain(E),
    #[error("stream {stream} kept changing under the command ({retries} retries)")]
    Conflict { stream: String, retries: usize },
    #[error("stored event is unreadable: {0}")]
    Decode(String),
    #[error(transparent)]
    Store(LogError),
}

/// The outcome of a command: the state after it, and the events it appended (empty when the
/// decider found nothing to do).
#[derive(Debug)]
pub struct Executed<S, E> {
    pub state: S,
    pub version: Option<u64>,
    pub events: Vec<E>,
}

pub async fn load<A: Aggregate>(
    store: &dyn EventStore,
    stream: &str,
) -> Result<Loaded<A::State>, ExecuteError<A::Error>> {
    load_noting::<A>(store, stream, None)
        .await
        .map(|(loaded, _)| loaded)
}

/// Loads the stream and also returns the events already appended by the command `meta`
/// describes (ids derived from its seed), so a retried command answers instead of re-deciding.
async fn load_noting<A: Aggregate>(
    store: &dyn EventStore,
    stream: &str,
    meta: Option<&CommandMeta>,
) -> Result<(Loaded<A::State>, Vec<A::Event>), ExecuteError<A::Error>> {
    let first_id = meta.map(|m| m.event_id(0));
    let mut applied: Vec<A::Event> = Vec::new();
    let mut state = A::State::default();
    let mut version = None;
    let mut from = 0;
    loop {
        let page = store
            .read_stream(stream, from, LOAD_PAGE_EVENTS)
            .await
            .map_err(ExecuteError::Store)?;
        let Some(last) = page.last() else {
            return Ok((Loaded { state, version }, applied));
        };
        from = last.version + 1;
        version = Some(last.version);
        for recorded in &page {
            let event = decode_event::<A::Event>(recorded).map_err(ExecuteError::Decode)?;
            if let (Some(first), Some(meta)) = (first_id, meta) {
                let ours = if applied.is_empty() {
                    recorded.id == first
                } else {
                    recorded.id == meta.event_id(applied.len())
                };
                if ours {
                    let again = decode_event::<A::Event>(recorded).map_err(ExecuteError::Decode)?;
                    applied.push(again);
                }
            }
            state = A::evolve(state, &event);
        }
    }
}

/// What a command decided on a stream, before anything is appended ([`decide_on`]).
#[derive(Debug)]
pub enum Decided<S, E> {
    /// Nothing to append: this very command was appended before (its events, and the state
    /// as loaded), or the decider found nothing to do (no events).
    Settled(Executed<S, E>),
    /// Events to append: the state after them, the events, and the append that stores them
    /// at the version they were decided on.
    Pending {
        state: S,
        events: Vec<E>,
        append: StreamAppend,
    },
}

/// Loads the stream and decides the command on it, appending nothing: for a caller that
/// stores the events together with others in one [`EventStore::append_streams`], and retries
/// the whole on a conflict. [`execute`] is this followed by the append.
pub async fn decide_on<A: Aggregate>(
    store: &dyn EventStore,
    stream: &str,
    command: &A::Command,
    meta: &CommandMeta,
) -> Result<Decided<A::State, A::Event>, ExecuteError<A::Error>> {
    let (loaded, applied) = load_noting::<A>(store, stream, Some(meta)).await?;
    if !applied.is_empty() {
        // This very command was appended before (a retry after a lost response or a
        // redelivered message): answer with what it did, never decide it twice.
        return Ok(Decided::Settled(Executed {
            state: loaded.state,
            version: loaded.version,
            events: applied,
        }));
    }
    let events = A::decide(&loaded.state, command).map_err(ExecuteError::Domain)?;
    if events.is_empty() {
        return Ok(Decided::Settled(Executed {
            state: loaded.state,
            version: loaded.version,
            events,
        }));
    }
    let new_events = to_new_events(&events, meta)?;
    let expected = loaded
        .version
        .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
    let state = events.iter().fold(loaded.state, A::evolve);
    Ok(Decided::Pending {
        state,
        events,
        append: StreamAppend {
            stream: stream.to_owned(),
            expected,
            events: new_events,
        },
    })
}

/// Whether an append of `events` failed because a twin of the same command (the same request,
/// so the same derived event ids) stored them first, with another receipt time or trace
/// context: the caller loads again, finds its own events and answers with them. Within a
/// process twins take turns (`idempotency`); this is for twins in two processes.
pub fn lost_to_twin(e: &LogError, ids: &[Uuid]) -> bool {
    matches!(e, LogError::EventIdConflict { event_id, .. } if ids.contains(event_id))
}

/// Load, decide, append at the decided version; on a lost race, repeat on fresh state.
pub async fn execute<A: Aggregate>(
    store: &dyn EventStore,
    stream: &str,
    command: &A::Command,
    meta: &CommandMeta,
) -> Result<Executed<A::State, A::Event>, ExecuteError<A::Error>> {
    // Once only: a second id conflict is no twin's doing, and is the caller's answer.
    let mut twin_seen = false;
    for _ in 0..=MAX_CONFLICT_RETRIES {
        let (state, events, append) = match decide_on::<A>(store, stream, command, meta).await? {
            Decided::Settled(done) => return Ok(done),
            Decided::Pending {
                state,
                events,
                append,
            } => (state, events, append),
        };
        let ids: Vec<Uuid> = append.events.iter().map(|e| e.id).collect();
        match store.append(stream, append.expected, append.events).await {
            Ok(result) => {
                return Ok(Executed {
                    state,
                    version: Some(result.last_version),
                    events,
                });
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(stream, "append lost a concurrency race; re-deciding");
            }
            Err(e) if !twin_seen && lost_to_twin(&e, &ids) => {
                twin_seen = true;
                tracing::debug!(stream, "a twin of this command stored it first; loading it");
            }
            Err(e) => return Err(ExecuteError::Store(e)),
        }
    }
    Err(ExecuteError::Conflict {
        stream: stream.to_owned(),
        retries: MAX_CONFLICT_RETRIES,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pl_eventlog::MemoryLog;
    use serde::Deserialize;

    use super::*;

    /// A counter that refuses to go above a limit: enough to exercise decide/evolve/execute.
    struct Counter;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(tag = "type", content = "data")]
    enum CounterEvent {
        Incremented { by: u32 },
    }
    impl DomainEvent for CounterEvent {}

    #[derive(Debug, thiserror::Error)]
    #[error("limit reached")]
    struct LimitReached;

    impl Aggregate for Counter {
        type State = u32;
        type Command = u32;
        type Event = CounterEvent;
        type Error = LimitReached;

        fn decide(state: &u32, by: &u32) -> Result<Vec<CounterEvent>, LimitReached> {
            if state + by > 10 {
                return Err(LimitReached);
            }
            Ok(vec![CounterEvent::Incremented { by: *by }])
        }

        fn evolve(state: u32, event: &CounterEvent) -> u32 {
            match event {
                CounterEvent::Incremented { by } => state + by,
            }
        }
    }

    fn meta(seed: u128) -> CommandMeta {
        CommandMeta {
            id_seed: Uuid::from_u128(seed),
            occurred_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
            correlation_id: None,
            causation_id: None,
            trace_context: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn a_command_appends_its_events_and_returns_the_new_state() {
        let store = MemoryLog::default();
        let r = execute::<Counter>(&store, "counter-1", &3, &meta(1))
            .await
            .unwrap();
        assert_eq!((r.state, r.version), (3, Some(0)));
        let r = execute::<Counter>(&store, "counter-1", &4, &meta(2))
            .await
            .unwrap();
        assert_eq!((r.state, r.version), (7, Some(1)));
        let stored = store.read_stream("counter-1", 0, 10).await.unwrap();
        assert_eq!(stored[1].event_type, "Incremented");
        assert_eq!(
            decode_event::<CounterEvent>(&stored[1]).unwrap(),
            CounterEvent::Incremented { by: 4 }
        );
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(tag = "type", content = "data")]
    enum Mixed {
        Named { text: String },
        Unit,
    }
    impl DomainEvent for Mixed {}

    #[test]
    fn an_event_is_stored_as_its_type_and_its_data_and_decodes_back() {
        let event = Mixed::Named {
            text: "quote \" and \\ backslash".into(),
        };
        let (event_type, data) = encode_event(&event).unwrap();
        assert_eq!(event_type, "Named");
        assert_eq!(&data[..], br#"{"text":"quote \" and \\ backslash"}"#);
        let (event_type, data) = encode_event(&Mixed::Unit).unwrap();
        assert_eq!((event_type.as_str(), &data[..]), ("Unit", &b"null"[..]));
    }

    /// Version 1 of `Incremented` called its field `step`; version 2 renamed it `by`.
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(tag = "type", content = "data")]
    enum CounterEventV2 {
        Incremented { by: u32 },
    }
    impl DomainEvent for CounterEventV2 {
        fn schema_version(&self) -> u32 {
            2
        }
        fn needs_upcast(_event_type: &str, schema_version: u32) -> bool {
            schema_version < 2
        }
        fn upcast(
            _t: &str,
            _v: u32,
            mut data: serde_json::Value,
        ) -> Result<serde_json::Value, String> {
            if let Some(step) = data.as_object_mut().and_then(|o| o.remove("step")) {
                data["by"] = step;
            }
            Ok(data)
        }
    }

    #[tokio::test]
    async fn old_schema_versions_are_upcast_and_current_ones_decode_directly() {
        let store = MemoryLog::default();
        let md = pl_eventlog::EventMetadata::at(DateTime::from_timestamp(0, 0).unwrap());
        let old = NewEvent::json(
            Uuid::from_u128(1),
            "Incremented",
            1,
            &serde_json::json!({"step": 3}),
            md.clone(),
        )
        .unwrap();
        let new = NewEvent::json(
            Uuid::from_u128(2),
            "Incremented",
            2,
            &serde_json::json!({"by": 4}),
            md,
        )
        .unwrap();
        store
            .append("c", ExpectedVersion::NoStream, vec![old, new])
            .await
            .unwrap();
        let stored = store.read_stream("c", 0, 10).await.unwrap();
        let decoded: Vec<CounterEventV2> =
            stored.iter().map(|e| decode_event(e).unwrap()).collect();
        assert_eq!(
            decoded,
            vec![
                CounterEventV2::Incremented { by: 3 },
                CounterEventV2::Incremented { by: 4 }
            ]
        );
    }

    #[tokio::test]
    async fn a_rule_violation_appends_nothing() {
        let store = MemoryLog::default();
        execute::<Counter>(&store, "counter-1", &8, &meta(1))
            .await
            .unwrap();
        let err = execute::<Counter>(&store, "counter-1", &3, &meta(2))
            .await
            .unwrap_err();
        assert!(matches!(err, ExecuteError::Domain(LimitReached)));
        assert_eq!(store.stream_version("counter-1").await.unwrap(), Some(0));
    }

    #[tokio::test]
    async fn concurrent_commands_are_re_decided_not_overwritten() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryLog::default());
        let tasks: Vec<_> = (0..8u128)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    execute::<Counter>(store.as_ref(), "c", &1, &meta(100 + i)).await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let loaded = load::<Counter>(store.as_ref(), "c").await.unwrap();
        assert_eq!((loaded.state, loaded.version), (8, Some(7)));
    }

    #[tokio::test]
    async fn a_retried_command_answers_with_what_it_did_instead_of_applying_twice() {
        let store = MemoryLog::default();
        let m = meta(7);
        let first = execute::<Counter>(&store, "c", &2, &m).await.unwrap();
        // A retry after a lost response finds its own events (ids derive from the request) and
        // answers with them instead of incrementing again.
        let retry = execute::<Counter>(&store, "c", &2, &m).await.unwrap();
        assert_eq!(retry.events, first.events);
        assert_eq!((retry.state, retry.version), (2, Some(0)));
        assert_eq!(store.stream_version("c").await.unwrap(), Some(0));
    }

    /// A twin of the command in another process (same key, so the same event ids, but its own
    /// receipt time) stores it between this one's load and its append.
    #[derive(Debug, Default)]
    struct TwinFirst(std::sync::Mutex<bool>);

    #[async_trait::async_trait]
    impl pl_eventlog::StoreHooks for TwinFirst {
        async fn before_append(
            &self,
            inner: &dyn EventStore,
            stream: &str,
        ) -> Result<(), LogError> {
            let first = std::mem::take(&mut *self.0.lock().unwrap());
            if first {
                let twin = CommandMeta {
                    occurred_at: meta(7).occurred_at + chrono::Duration::milliseconds(3),
                    ..meta(7)
                };
                execute::<Counter>(inner, stream, &2, &twin).await.unwrap();
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_twin_in_another_process_that_stored_the_command_first_is_answered_with_its_events() {
        let store = pl_eventlog::Hooked {
            inner: MemoryLog::default(),
            hooks: TwinFirst(std::sync::Mutex::new(true)),
        };
        // Before, the append's ids matched the twin's events with another body:
        // EventIdConflict, a FAILED_PRECONDITION answer to a retry of the same request.
        let done = execute::<Counter>(&store, "c", &2, &meta(7)).await.unwrap();
        assert_eq!((done.state, done.version), (2, Some(0)));
        assert_eq!(done.events.len(), 1);
        assert_eq!(store.stream_version("c").await.unwrap(), Some(0), "once");
    }
}
