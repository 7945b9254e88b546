//! EventStoreDB / KurrentDB adapter. Its one job is to keep the port's streams in an
//! EventStoreDB server: one server stream per stream, one server event per event, with the
//! caller's JSON bytes as the event data and our envelope (schema version, business time,
//! correlation, causation, trace context, `recorded_at`, `prev_hash`, `hash` and the idempotency
//! fingerprint) as the event's custom metadata JSON. It computes the hash chain itself, exactly
//! like the other adapters, so [`crate::verify`] works unchanged. It never deletes, truncates or
//! rewrites an event, never writes to a `$` stream, and never appends without an exact expected
//! revision (the head it read, or "no stream"), so two writers can never fork a chain.
//!
//! What differs from the embedded adapter:
//! - **Positions** are `$all` commit positions: byte offsets in the server's transaction log.
//!   They are strictly increasing (for every event this adapter appends, since each event of a
//!   gRPC append is committed at its own log position) but not dense, so `position + 1` is
//!   usually not the next event. `read_all(from, _)` returns our events with commit position
//!   `>= from` and never splits the events of one commit across pages (it over-reads to the end
//!   of a commit; this only matters for events committed together by legacy TCP transactions).
//!   `from` must be 0 or one past a position this adapter returned (a `read_all` cursor, a
//!   subscription checkpoint, a `watch_head` value): the server rejects start positions that are
//!   not record boundaries, so the read starts at `from - 1` and skips that event.
//! - **Event ids are unique per stream only.** The server does not index ids across streams, so
//!   an id reused in *another* stream is not detected (the conformance case
//!   `reusing_an_event_id_in_another_stream_is_rejected` is excluded for this adapter). Within a
//!   stream, a retried append is recognised when its ids sit at the expected place or among the
//!   last [`IDEMPOTENCY_WINDOW`] events of the stream; a retry whose events have since been
//!   followed by more than that many others appends again when retried with `Any`.
//! - **`recorded_at`** never goes backwards within a stream (not across streams).
//! - **Data** is stored byte-exact with content type `application/octet-stream`: the client
//!   would re-serialise a JSON body, which changes bytes (key order, number formatting) and so
//!   the hash. The bytes are JSON (checked at append), but server-side projections do not parse
//!   them.
//! - **Cost**: an append is three round trips (read the stream tail, append, read back the
//!   stored events for their positions). A failure after the write is safe to retry: the retry
//!   is recognised as a duplicate and returns the original result.
//! - **`watch_head`** is fed by a `$all` subscription (reconnected with a bounded backoff) and by
//!   this adapter's own appends, so it can lag other writers briefly.
//! - **Server requirements**: EventStoreDB 22.6 or newer (stream reads must report `$all`
//!   positions), a user allowed to read `$all` (admin or ops), a `MaxAppendSize` of at least
//!   [`Limits::max_append_bytes`] plus about 500 bytes of envelope per event (more with a trace
//!   context), and no `$maxAge`, `$maxCount` or `$tb` on our streams (verification would report
//!   the removed events).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use eventstore as es;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

#[cfg(test)]
use crate::codec;
use crate::codec::Canonical;
use crate::error::LogError;
use crate::event::{
    AppendResult, EventHash, EventMetadata, ExpectedVersion, NewEvent, RecordedEvent, GENESIS_HASH,
};
use crate::index::{self, Validated};
use crate::limits::Limits;
use crate::store::EventStore;

/// Value of the envelope's `pl_eventlog` field; it also marks an event as written by us.
const ENVELOPE_FORMAT: u32 = 1;
/// Appends with `ExpectedVersion::Any` that lose a race re-read the head this many times in all.
const APPEND_ATTEMPTS: usize = 5;
/// A retried append is recognised among this many events at the tail of its stream.
pub const IDEMPOTENCY_WINDOW: usize = 16;
/// At connect, the committed head is the newest of our events among this many at the end of
/// `$all`; older ones are found by the first append or subscription event instead.
const HEAD_SCAN_EVENTS: usize = 4096;
/// Smallest `$all` page requested, so a page that must peek past a commit is not one event.
const MIN_ALL_PAGE: usize = 32;
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(5);
/// Streams whose name does not start with `$` (the server's system streams).
const NON_SYSTEM_STREAMS: &str = "^[^\\$].*";

/// The event store kept in an EventStoreDB / KurrentDB server. Dropping it stops its background
/// `$all` subscription.
pub struct EventStoreDbLog {
    client: es::Client,
    limits: Limits,
    head: Arc<watch::Sender<u64>>,
    follower: JoinHandle<()>,
}

impl fmt::Debug for EventStoreDbLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStoreDbLog")
            .field("limits", &self.limits)
            .field("head", &*self.head.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for EventStoreDbLog {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl EventStoreDbLog {
    /// Connects with an `esdb://` or `esdb+discover://` connection string (never echoed in
    /// errors: it may hold credentials), reads the committed head and starts following `$all`.
    /// Fails when the server cannot be reached or `$all` cannot be read.
    pub async fn connect(url: &str, limits: Limits) -> Result<Self, LogError> {
        let settings: es::ClientSettings =
            url.parse().map_err(|e: es::ClientSettingsParseError| {
                // Some parse errors carry the whole string; only say what is safe to log.
                let cause = match e.error() {
                    _ if !url.is_empty() && !e.message().contains(url) => e.message().to_owned(),
                    Some(cause) => cause.to_string(),
                    None => "malformed".to_owned(),
                };
                LogError::Backend(format!("invalid eventstoredb connection string: {cause}"))
            })?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            LogError::Backend(
                "the eventstoredb adapter must be created inside a tokio runtime".into(),
            )
        })?;
        let client = es::Client::with_runtime_handle(runtime.clone(), settings)
            .map_err(|e| backend("connect", &e))?;
        let (initial_head, resume_from) = scan_head(&client).await?;
        let head = Arc::new(watch::Sender::new(initial_head));
        let follower = runtime.spawn(follow_head(client.clone(), Arc::clone(&head), resume_from));
        Ok(Self {
            client,
            limits,
            head,
            follower,
        })
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "the adapter stamps recorded_at; domain code never reads the clock"
    )]
    fn now_ns() -> i64 {
        Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
    }

    /// Up to [`IDEMPOTENCY_WINDOW`] events at the end of `stream`, oldest first; empty when the
    /// stream does not exist.
    async fn read_tail(&self, stream: &str) -> Result<Vec<Stored>, LogError> {
        let opts = es::ReadStreamOptions::default()
            .position(es::StreamPosition::End)
            .max_count(IDEMPOTENCY_WINDOW);
        let mut tail = self.read_stream_events(stream, &opts).await?;
        tail.reverse();
        Ok(tail)
    }

    /// Up to `count` events of `stream` from version `from` on.
    async fn read_range(
        &self,
        stream: &str,
        from: u64,
        count: usize,
    ) -> Result<Vec<Stored>, LogError> {
        let opts = es::ReadStreamOptions::default()
            .position(es::StreamPosition::Position(from))
            .forwards()
            .max_count(count);
        self.read_stream_events(stream, &opts).await
    }

    async fn read_stream_events(
        &self,
        stream: &str,
        opts: &es::ReadStreamOptions,
    ) -> Result<Vec<Stored>, LogError> {
        let read_error = |e: es::Error| match e {
            es::Error::ResourceDeleted => LogError::Backend(format!(
                "stream {stream} was deleted in eventstoredb; this log never deletes streams"
            )),
            e => LogError::Backend(format!("eventstoredb read of stream {stream} failed: {e}")),
        };
        let mut events = match self.client.read_stream(stream, opts).await {
            Ok(events) => events,
            Err(es::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(read_error(e)),
        };
        let mut out = Vec::new();
        loop {
            match events.next().await {
                Ok(Some(ev)) => {
                    if let Some(rec) = original(ev) {
                        out.push(decode(rec)?);
                    }
                }
                Ok(None) | Err(es::Error::ResourceNotFound) => return Ok(out),
                Err(e) => return Err(read_error(e)),
            }
        }
    }

    /// Compares the batch with the events stored at versions `start..start + n`: `Some` with the
    /// original result when they are the same events (an idempotent retry), `None` when none of
    /// the batch's ids is there, and [`LogError::EventIdConflict`] for anything in between.
    async fn compare_at(
        &self,
        stream: &str,
        start: u64,
        events: &[NewEvent],
        v: &Validated,
    ) -> Result<Option<AppendResult>, LogError> {
        let stored = self.read_range(stream, start, events.len()).await?;
        let batch: HashSet<Uuid> = events.iter().map(|e| e.id).collect();
        if !stored.iter().any(|s| batch.contains(&s.event.id)) {
            return Ok(None);
        }
        for (i, ev) in events.iter().enumerate() {
            match stored.get(i) {
                Some(s) if s.event.id == ev.id => {
                    if s.fingerprint != v.fingerprints[i] {
                        return Err(conflict(ev.id, "the id was stored with a different body"));
                    }
                }
                _ => {
                    let all_stored = events
                        .iter()
                        .all(|e| stored.iter().any(|s| s.event.id == e.id));
                    let reason = if all_stored {
                        "the ids are stored in a different order"
                    } else {
                        "only some of the append's events are already stored"
                    };
                    return Err(conflict(events[0].id, reason));
                }
            }
        }
        let (Some(first), Some(last)) = (stored.first(), stored.get(events.len() - 1)) else {
            return Ok(None); // unreachable: the loop above checked every index
        };
        Ok(Some(AppendResult {
            last_version: last.event.version,
            first_position: first.event.position,
            last_position: last.event.position,
        }))
    }

    /// Whether the batch is already stored: at the place the caller expects, or (for a retry
    /// with `Any`, or a retry at a stale version) among the events at the tail of the stream.
    async fn find_duplicate(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
        v: &Validated,
        tail: &[Stored],
    ) -> Result<Option<AppendResult>, LogError> {
        let head = tail.last().map(|s| s.event.version);
        let expected_start = match expected {
            ExpectedVersion::Any => None,
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Exact(n) => n.checked_add(1),
        };
        if let (Some(start), Some(head)) = (expected_start, head) {
            if head >= start {
                if let Some(result) = self.compare_at(stream, start, events, v).await? {
                    return Ok(Some(result));
                }
            }
        }
        let hit = tail.iter().find_map(|s| {
            events
                .iter()
                .position(|e| e.id == s.event.id)
                .map(|i| (i, s.event.version))
        });
        let Some((i, version)) = hit else {
            return Ok(None);
        };
        let order = || conflict(events[i].id, "the ids are stored in a different order");
        let start = version.checked_sub(i as u64).ok_or_else(order)?;
        let result = self
            .compare_at(stream, start, events, v)
            .await?
            .ok_or_else(order)?;
        let same_place = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream | ExpectedVersion::Exact(_) => expected_start == Some(start),
        };
        if !same_place {
            return Err(LogError::WrongExpectedVersion {
                stream: stream.to_owned(),
                expected,
                actual: head,
            });
        }
        Ok(Some(result))
    }

    /// Assigns versions, `recorded_at` and the hash chain after `head`, and builds the server
    /// events. Returns them with the version of the first.
    fn encode(
        stream: &str,
        events: &[NewEvent],
        v: &Validated,
        head: Option<&Stored>,
    ) -> Result<(Vec<es::EventData>, u64), LogError> {
        let first_version = match head {
            None => 0,
            Some(h) => h.event.version.checked_add(1).ok_or_else(|| {
                LogError::Backend(format!("stream {stream} has reached the largest version"))
            })?,
        };
        let envelopes = envelopes(stream, first_version, events, v, head, Self::now_ns())?;
        let data = events
            .iter()
            .zip(envelopes)
            .map(|(ev, metadata)| {
                es::EventData::binary(&ev.event_type, ev.data.clone())
                    .id(ev.id)
                    .metadata(metadata)
            })
            .collect();
        Ok((data, first_version))
    }
}

/// The envelope (custom metadata) of each event of a batch stored from `first_version` on after
/// `head`: `recorded_at` is `now_ns`, or the head's if that is later, and each hash chains to the
/// previous event's.
fn envelopes(
    stream: &str,
    first_version: u64,
    events: &[NewEvent],
    v: &Validated,
    head: Option<&Stored>,
    now_ns: i64,
) -> Result<Vec<Bytes>, LogError> {
    let recorded_at_ns = now_ns.max(head.map_or(i64::MIN, |h| h.recorded_at_ns));
    let recorded_at = rfc3339(DateTime::from_timestamp_nanos(recorded_at_ns));
    let mut prev_hash = head.map_or(GENESIS_HASH, |h| h.event.hash);
    let mut out = Vec::with_capacity(events.len());
    for (i, ev) in events.iter().enumerate() {
        let hash = Canonical {
            stream,
            version: first_version + i as u64,
            id: ev.id,
            event_type: &ev.event_type,
            schema_version: ev.schema_version,
            recorded_at_ns,
            metadata: &ev.metadata,
            occurred_at_ns: v.occurred_ns[i],
            data: &ev.data,
            prev_hash,
        }
        .hash();
        let envelope = Envelope {
            pl_eventlog: ENVELOPE_FORMAT,
            schema_version: ev.schema_version,
            occurred_at: rfc3339(ev.metadata.occurred_at),
            correlation_id: ev.metadata.correlation_id,
            causation_id: ev.metadata.causation_id,
            trace_context: ev.metadata.trace_context.clone(),
            recorded_at: recorded_at.clone(),
            prev_hash: prev_hash.to_hex(),
            hash: hash.to_hex(),
            fingerprint: hex::encode(v.fingerprints[i]),
        };
        let metadata = serde_json::to_vec(&envelope).map_err(|e| LogError::InvalidEvent {
            event_id: ev.id,
            reason: format!("envelope does not serialise to json: {e}"),
        })?;
        out.push(Bytes::from(metadata));
        prev_hash = hash;
    }
    Ok(out)
}

#[async_trait]
impl EventStore for EventStoreDbLog {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, LogError> {
        let validated = index::validate(stream, &events, &self.limits)?;
        let mut last_actual = None;
        for attempt in 1..=APPEND_ATTEMPTS {
            let tail = self.read_tail(stream).await?;
            if let Some(result) = self
                .find_duplicate(stream, expected, &events, &validated, &tail)
                .await?
            {
                return Ok(result);
            }
            let head = tail.last();
            let actual = head.map(|h| h.event.version);
            let matches = match expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => actual.is_none(),
                ExpectedVersion::Exact(n) => actual == Some(n),
            };
            if !matches {
                return Err(LogError::WrongExpectedVersion {
                    stream: stream.to_owned(),
                    expected,
                    actual,
                });
            }
            let (data, first_version) = Self::encode(stream, &events, &validated, head)?;
            let revision =
                actual.map_or(es::ExpectedRevision::NoStream, es::ExpectedRevision::Exact);
            let opts = es::AppendToStreamOptions::default().expected_revision(revision);
            match self.client.append_to_stream(stream, &opts, data).await {
                Ok(_) => {
                    // The stored events give the positions; if the server answered an
                    // identical concurrent retry, they also show whether its bodies match.
                    let result = self
                        .compare_at(stream, first_version, &events, &validated)
                        .await?
                        .ok_or_else(|| {
                            LogError::Backend(format!(
                                "eventstoredb acknowledged an append to {stream} at version \
                                 {first_version} but the stream holds other events there"
                            ))
                        })?;
                    bump(&self.head, result.last_position.saturating_add(1));
                    return Ok(result);
                }
                Err(es::Error::WrongExpectedVersion { current, .. }) => {
                    last_actual = match current {
                        es::CurrentRevision::Current(v) => Some(v),
                        es::CurrentRevision::NoStream => None,
                    };
                    tracing::debug!(
                        stream,
                        attempt,
                        expected = %expected,
                        "eventstoredb append lost a race; re-reading the stream head"
                    );
                }
                Err(e) => {
                    return Err(LogError::Backend(format!(
                        "eventstoredb append to stream {stream} failed: {e}"
                    )))
                }
            }
        }
        Err(LogError::WrongExpectedVersion {
            stream: stream.to_owned(),
            expected,
            actual: last_actual,
        })
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        index::validate_stream_name(stream, &self.limits)?;
        let limit = self.limits.read_limit(limit);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stored = self.read_range(stream, from_version, limit).await?;
        Ok(stored.into_iter().map(|s| s.event).collect())
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let limit = self.limits.read_limit(limit);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let read_error = |e: es::Error| {
            LogError::Backend(format!(
                "eventstoredb read of $all from position {from_position} failed (positions must \
                 be 0 or one past a position this adapter returned): {e}"
            ))
        };
        let mut out: Vec<RecordedEvent> = Vec::new();
        // The last event seen (ours or not); the next page starts there and skips it.
        let mut cursor = from_position.checked_sub(1).map(|p| es::Position {
            commit: p,
            prepare: p,
        });
        loop {
            let want = limit
                .saturating_sub(out.len())
                .saturating_add(1)
                .max(MIN_ALL_PAGE);
            let start = cursor.map_or(es::StreamPosition::Start, es::StreamPosition::Position);
            let opts = es::ReadAllOptions::default()
                .position(start)
                .forwards()
                .max_count(want);
            let mut page = self.client.read_all(&opts).await.map_err(read_error)?;
            let mut received = 0usize;
            while let Some(ev) = page.next().await.map_err(read_error)? {
                received += 1;
                let Some(rec) = original(ev) else { continue };
                let position = rec.position;
                if cursor.is_some_and(|c| position <= c) {
                    continue;
                }
                cursor = Some(position);
                if position.commit < from_position {
                    continue;
                }
                if out.len() >= limit && out.last().is_some_and(|l| l.position != position.commit) {
                    return Ok(out); // the last commit is complete
                }
                if is_ours(&rec) {
                    out.push(decode(rec)?.event);
                }
            }
            if received < want {
                return Ok(out); // the end of $all
            }
        }
    }

    async fn stream_version(&self, stream: &str) -> Result<Option<u64>, LogError> {
        if index::validate_stream_name(stream, &self.limits).is_err() {
            return Ok(None); // no such stream can have been written
        }
        let opts = es::ReadStreamOptions::default()
            .position(es::StreamPosition::End)
            .max_count(1);
        let read_error = |e: es::Error| {
            LogError::Backend(format!("eventstoredb read of stream {stream} failed: {e}"))
        };
        let mut events = match self.client.read_stream(stream, &opts).await {
            Ok(events) => events,
            Err(es::Error::ResourceNotFound) => return Ok(None),
            Err(e) => return Err(read_error(e)),
        };
        match events.next().await {
            Ok(Some(ev)) => Ok(original(ev).map(|rec| rec.revision)),
            Ok(None) | Err(es::Error::ResourceNotFound) => Ok(None),
            Err(e) => Err(read_error(e)),
        }
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn limits(&self) -> Limits {
        self.limits
    }
}

/// Our fields, stored as the server event's custom metadata. Times are RFC 3339 with nine
/// fractional digits: exact, and unlike 64-bit integers safe for JavaScript readers (the
/// server's UI and projections).
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    pl_eventlog: u32,
    schema_version: u32,
    occurred_at: String,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    trace_context: BTreeMap<String, String>,
    recorded_at: String,
    prev_hash: String,
    hash: String,
    fingerprint: String,
}

/// Just enough of the envelope to tell our events from anything else in `$all`.
#[derive(Deserialize)]
struct Marker {
    pl_eventlog: Option<serde::de::IgnoredAny>,
}

/// A decoded event plus what only idempotency and chaining need.
#[derive(Debug)]
struct Stored {
    event: RecordedEvent,
    fingerprint: [u8; 16],
    recorded_at_ns: i64,
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn conflict(event_id: Uuid, reason: &str) -> LogError {
    LogError::EventIdConflict {
        event_id,
        reason: reason.to_owned(),
    }
}

fn backend(op: &str, e: &es::Error) -> LogError {
    LogError::Backend(format!("eventstoredb {op} failed: {e}"))
}

/// Raises the head, never lowers it (appends and the subscription race to report it).
fn bump(head: &watch::Sender<u64>, value: u64) {
    head.send_if_modified(|h| {
        if value > *h {
            *h = value;
            true
        } else {
            false
        }
    });
}

/// The event as stored in the stream that was read (links are never resolved).
fn original(ev: es::ResolvedEvent) -> Option<es::RecordedEvent> {
    ev.link.or(ev.event)
}

/// Whether an event of `$all` was written by this adapter: not in a system stream, and carrying
/// our envelope marker. `read_all` and `watch_head` use the same test, so the head never runs
/// ahead of what `read_all` returns.
fn is_ours(rec: &es::RecordedEvent) -> bool {
    !rec.stream_id.starts_with('$')
        && serde_json::from_slice::<Marker>(&rec.custom_metadata)
            .is_ok_and(|m| m.pl_eventlog.is_some())
}

fn decode(rec: es::RecordedEvent) -> Result<Stored, LogError> {
    let position = rec.position.commit;
    let corrupt = |reason: String| LogError::Corrupt {
        offset: position,
        reason: format!(
            "eventstoredb event {} ({}@{}): {reason}",
            rec.id, rec.stream_id, rec.revision
        ),
    };
    if position == u64::MAX {
        return Err(LogError::Backend(format!(
            "eventstoredb did not report the $all position of event {} ({}@{}); stream reads \
             report it from EventStoreDB 22.6 on",
            rec.id, rec.stream_id, rec.revision
        )));
    }
    if !is_ours(&rec) {
        return Err(corrupt(
            "no partner-ledger envelope in the event metadata".into(),
        ));
    }
    let env: Envelope = serde_json::from_slice(&rec.custom_metadata)
        .map_err(|e| corrupt(format!("garbled envelope: {e}")))?;
    if env.pl_eventlog != ENVELOPE_FORMAT {
        return Err(corrupt(format!(
            "unknown envelope format {}",
            env.pl_eventlog
        )));
    }
    let occurred_at = parse_time(&env.occurred_at, "occurred_at").map_err(&corrupt)?;
    let (recorded_at, recorded_at_ns) =
        parse_time(&env.recorded_at, "recorded_at").map_err(&corrupt)?;
    let prev_hash = EventHash(parse_hex(&env.prev_hash, "prev_hash").map_err(&corrupt)?);
    let hash = EventHash(parse_hex(&env.hash, "hash").map_err(&corrupt)?);
    let fingerprint = parse_hex(&env.fingerprint, "fingerprint").map_err(&corrupt)?;
    let event = RecordedEvent {
        stream: rec.stream_id,
        version: rec.revision,
        position,
        recorded_at,
        id: rec.id,
        event_type: rec.event_type,
        schema_version: env.schema_version,
        data: rec.data,
        metadata: EventMetadata {
            occurred_at: occurred_at.0,
            correlation_id: env.correlation_id,
            causation_id: env.causation_id,
            trace_context: env.trace_context,
        },
        prev_hash,
        hash,
    };
    Ok(Stored {
        event,
        fingerprint,
        recorded_at_ns,
    })
}

/// An RFC 3339 time that fits the canonical encoding's nanosecond range.
fn parse_time(s: &str, field: &str) -> Result<(DateTime<Utc>, i64), String> {
    let at = DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("{field} {s:?} is not an rfc 3339 time: {e}"))?
        .with_timezone(&Utc);
    let ns = at
        .timestamp_nanos_opt()
        .ok_or_else(|| format!("{field} {s:?} is outside 1677-09-21..2262-04-11"))?;
    Ok((at, ns))
}

fn parse_hex<const N: usize>(s: &str, field: &str) -> Result<[u8; N], String> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out)
        .map_err(|e| format!("{field} {s:?} is not {} hex digits: {e}", 2 * N))?;
    Ok(out)
}

/// The committed head at connect: one past the newest of our events among the last
/// [`HEAD_SCAN_EVENTS`] of `$all` (0 if there is none), and the newest event of `$all` of any
/// kind, from which the follower subscribes so that nothing committed after the scan is missed.
async fn scan_head(client: &es::Client) -> Result<(u64, Option<es::Position>), LogError> {
    let opts = es::ReadAllOptions::default()
        .position(es::StreamPosition::End)
        .max_count(HEAD_SCAN_EVENTS);
    let read_error = |e: es::Error| backend("read of the end of $all", &e);
    let mut events = client.read_all(&opts).await.map_err(read_error)?;
    let mut newest = None;
    while let Some(ev) = events.next().await.map_err(read_error)? {
        let Some(rec) = original(ev) else { continue };
        newest.get_or_insert(rec.position);
        if is_ours(&rec) {
            return Ok((rec.position.commit.saturating_add(1), newest));
        }
    }
    if newest.is_some() {
        tracing::debug!(
            scanned = HEAD_SCAN_EVENTS,
            "no partner-ledger event near the end of $all; the head starts at 0"
        );
    }
    Ok((0, newest))
}

/// Follows `$all` (system streams filtered out by the server) and raises the head past each of
/// our events. Resubscribes after the last event seen, with a bounded backoff, whenever the
/// subscription fails; runs until the adapter is dropped (which aborts it).
async fn follow_head(
    client: es::Client,
    head: Arc<watch::Sender<u64>>,
    mut resume: Option<es::Position>,
) {
    let mut backoff = RESUBSCRIBE_MIN;
    loop {
        let start = resume.map_or(es::StreamPosition::Start, es::StreamPosition::Position);
        let opts = es::SubscribeToAllOptions::default()
            .position(start)
            .filter(es::SubscriptionFilter::on_stream_name().regex(NON_SYSTEM_STREAMS));
        let mut subscription = client.subscribe_to_all(&opts).await;
        let error = loop {
            match subscription.next_subscription_event().await {
                Ok(es::SubscriptionEvent::EventAppeared(ev)) => {
                    backoff = RESUBSCRIBE_MIN;
                    let Some(rec) = original(ev) else { continue };
                    resume = Some(rec.position);
                    if is_ours(&rec) {
                        bump(&head, rec.position.commit.saturating_add(1));
                    }
                }
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        tracing::warn!(
            error = %error,
            resume_from = ?resume,
            retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            "eventstoredb $all subscription dropped; resubscribing"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Vec<NewEvent> {
        let mut md = EventMetadata::at(DateTime::from_timestamp_nanos(1_767_225_600_123_456_789))
            .with_correlation(Uuid::from_u128(7))
            .with_causation(Uuid::from_u128(8));
        md.trace_context
            .insert("traceparent".into(), "00-abc-def-01".into());
        let a = NewEvent {
            id: Uuid::from_u128(1),
            event_type: "CommissionAccrued".into(),
            schema_version: 3,
            data: Bytes::from_static(br#"{ "amount": "12.34", "n": 1e3 }"#),
            metadata: md,
        };
        let b = NewEvent {
            id: Uuid::from_u128(2),
            event_type: "PayoutScheduled".into(),
            schema_version: 1,
            data: Bytes::from_static(b"[]"),
            metadata: EventMetadata::at(DateTime::from_timestamp_nanos(-5)),
        };
        vec![a, b]
    }

    /// What the server hands back for an event stored with `metadata`.
    fn as_stored(
        stream: &str,
        version: u64,
        position: u64,
        ev: &NewEvent,
        metadata: Bytes,
    ) -> es::RecordedEvent {
        es::RecordedEvent {
            stream_id: stream.to_owned(),
            id: ev.id,
            revision: version,
            event_type: ev.event_type.clone(),
            data: ev.data.clone(),
            metadata: Default::default(),
            custom_metadata: metadata,
            is_json: false,
            position: es::Position {
                commit: position,
                prepare: position,
            },
            created: DateTime::from_timestamp_nanos(0),
        }
    }

    fn store(
        stream: &str,
        first_version: u64,
        events: &[NewEvent],
        head: Option<&Stored>,
        now_ns: i64,
    ) -> Vec<Stored> {
        let v = index::validate(stream, events, &Limits::default()).unwrap();
        let metas = envelopes(stream, first_version, events, &v, head, now_ns).unwrap();
        events
            .iter()
            .zip(metas)
            .enumerate()
            .map(|(i, (ev, meta))| {
                let version = first_version + i as u64;
                decode(as_stored(stream, version, 1000 + 100 * version, ev, meta)).unwrap()
            })
            .collect()
    }

    #[test]
    fn an_encoded_batch_decodes_to_the_same_events_with_a_verifiable_chain() {
        let events = batch();
        let v = index::validate("partner-1", &events, &Limits::default()).unwrap();
        let stored = store("partner-1", 0, &events, None, 1_800_000_000_000_000_001);
        assert_eq!(stored.len(), 2);
        for (i, (s, sent)) in stored.iter().zip(&events).enumerate() {
            let e = &s.event;
            assert_eq!(
                (e.stream.as_str(), e.version, e.id),
                ("partner-1", i as u64, sent.id)
            );
            assert_eq!(e.event_type, sent.event_type);
            assert_eq!(e.schema_version, sent.schema_version);
            assert_eq!(e.data, sent.data, "data must be stored byte-exact");
            assert_eq!(e.metadata, sent.metadata);
            assert_eq!(
                e.recorded_at.timestamp_nanos_opt(),
                Some(1_800_000_000_000_000_001)
            );
            assert_eq!(s.recorded_at_ns, 1_800_000_000_000_000_001);
            assert_eq!(Canonical::of(e).unwrap().hash(), e.hash, "event {i}");
            assert_eq!(s.fingerprint, v.fingerprints[i]);
            assert_eq!(codec::fingerprint_recorded(e).unwrap(), s.fingerprint);
        }
        assert_eq!(stored[0].event.prev_hash, GENESIS_HASH);
        assert_eq!(stored[1].event.prev_hash, stored[0].event.hash);
    }

    #[test]
    fn a_second_append_chains_to_the_head_and_never_records_earlier_than_it() {
        let first = store("s", 0, &batch()[..1], None, 2_000);
        let head = first.last();
        let second = store("s", 1, &batch()[1..], head, 1_000);
        assert_eq!(second[0].event.prev_hash, first[0].event.hash);
        assert_eq!(
            second[0].recorded_at_ns, 2_000,
            "the clock went back; recorded_at must not"
        );
        assert_eq!(
            Canonical::of(&second[0].event).unwrap().hash(),
            second[0].event.hash
        );
    }

    #[test]
    fn foreign_or_garbled_metadata_is_an_error_never_a_panic() {
        let ev = &batch()[0];
        let good = store("s", 0, &batch()[..1], None, 5)
            .pop()
            .map(|s| s.event)
            .unwrap();
        let good_meta = envelopes(
            "s",
            0,
            &batch()[..1],
            &index::validate("s", &batch()[..1], &Limits::default()).unwrap(),
            None,
            5,
        )
        .unwrap()
        .remove(0);
        let env: serde_json::Value = serde_json::from_slice(&good_meta).unwrap();
        let with = |key: &str, value: serde_json::Value| {
            let mut env = env.clone();
            env[key] = value;
            Bytes::from(serde_json::to_vec(&env).unwrap())
        };
        let without = |key: &str| {
            let mut env = env.clone();
            env.as_object_mut().unwrap().remove(key);
            Bytes::from(serde_json::to_vec(&env).unwrap())
        };
        let cases: Vec<(&str, Bytes)> = vec![
            ("empty", Bytes::new()),
            ("not json", Bytes::from_static(b"\xff\x00")),
            (
                "foreign json",
                Bytes::from_static(br#"{"$correlationId":"x"}"#),
            ),
            ("array", Bytes::from_static(b"[1,2]")),
            ("missing hash", without("hash")),
            ("missing recorded_at", without("recorded_at")),
            ("short hash", with("hash", "abcd".into())),
            ("hash not hex", with("prev_hash", "zz".repeat(32).into())),
            ("bad time", with("occurred_at", "yesterday".into())),
            (
                "time out of range",
                with("recorded_at", "9999-01-01T00:00:00Z".into()),
            ),
            ("future format", with("pl_eventlog", 2.into())),
            ("wrong type", with("schema_version", "one".into())),
        ];
        for (what, meta) in cases {
            let err = decode(as_stored("s", 0, 77, ev, meta)).unwrap_err();
            let names_the_event = |r: &str| r.contains(&ev.id.to_string());
            assert!(
                matches!(&err, LogError::Corrupt { offset: 77, reason } if names_the_event(reason)),
                "{what}: {err:?}"
            );
        }
        assert!(decode(as_stored("s", 0, 77, ev, good_meta.clone())).is_ok());
        let mut unpositioned = as_stored("s", 0, 0, ev, good_meta.clone());
        unpositioned.position = es::Position::end();
        assert!(matches!(decode(unpositioned), Err(LogError::Backend(_))));
        assert_eq!(good.position, 1000);
    }

    #[test]
    fn only_our_events_outside_system_streams_count() {
        let ev = &batch()[0];
        let meta = Bytes::from_static(br#"{"pl_eventlog":1}"#);
        assert!(is_ours(&as_stored("partner-1", 0, 1, ev, meta.clone())));
        assert!(!is_ours(&as_stored(
            "$stats-127.0.0.1:2113",
            0,
            1,
            ev,
            meta
        )));
        assert!(!is_ours(&as_stored("partner-1", 0, 1, ev, Bytes::new())));
        assert!(!is_ours(&as_stored(
            "partner-1",
            0,
            1,
            ev,
            Bytes::from_static(br#"{"pl_eventlog":null}"#)
        )));
    }

    #[test]
    fn times_round_trip_to_the_nanosecond_across_the_whole_range() {
        for ns in [i64::MIN, -1, 0, 1, 1_767_225_600_123_456_789, i64::MAX] {
            let at = DateTime::from_timestamp_nanos(ns);
            assert_eq!(parse_time(&rfc3339(at), "t").unwrap(), (at, ns));
        }
    }

    #[tokio::test]
    async fn a_bad_connection_string_is_rejected_without_echoing_its_credentials() {
        for url in [
            "nope://admin:s3cret@localhost:2113",
            "esdb://admin:s3cret@localhost:notaport",
            "esdb://admin:s3cret@localhost:2113,other:x",
            "esdb://admin:s3cret@localhost:2113?nodePreference=sideways",
            "",
        ] {
            let err = EventStoreDbLog::connect(url, Limits::default())
                .await
                .unwrap_err();
            let LogError::Backend(msg) = &err else {
                panic!("{url}: {err:?}");
            };
            assert!(
                msg.starts_with("invalid eventstoredb connection string"),
                "{msg}"
            );
            assert!(!msg.contains("s3cret"), "{msg}");
        }
    }

    #[test]
    fn the_head_only_moves_forward() {
        let head = watch::Sender::new(10);
        bump(&head, 5);
        assert_eq!(*head.borrow(), 10);
        bump(&head, 11);
        assert_eq!(*head.borrow(), 11);
    }
}
