//! The messages a service's consumers refused, kept in the service's own log so that nothing is
//! dropped in silence: one stream per service (`dead-letters-<service>`), an event per refusal
//! with the message itself, and an event per retry. [`Recorder`] writes a refusal before the bus
//! is told (a refusal it cannot write is retried, never lost); [`list`] pages through them;
//! [`retry`] runs one again through the service's handler and records the outcome, so a letter
//! that applied can never run again.
//!
//! Consumers are idempotent (derived event ids), so a retry of a message that had in fact been
//! applied appends nothing; the letter's own state is what stops a second retry from running at
//! all. No clock is read here: callers pass the time.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use pl_bus::{HandleError, Message};
use pl_eventlog::EventStore;
use pl_proto::common::v1 as pb;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::{execute, load, Aggregate, CommandMeta, DomainEvent, ExecuteError};
use crate::request::to_timestamp;
use crate::{ApiError, Clock};

/// A payload larger than this is not kept (its size and SHA-256 are): the letter is listed but
/// cannot be retried from the log. The bus keeps messages far smaller than the log's event
/// limit, so this is only reached by a broken message.
pub const MAX_KEPT_PAYLOAD_BYTES: usize = 256 * 1024;

/// Characters of a refusal reason kept (a longer one is cut, marked with "…").
pub const MAX_REASON_CHARS: usize = 2_000;

/// Headers kept per letter, and characters per header value.
const MAX_HEADERS: usize = 32;
const MAX_HEADER_CHARS: usize = 1_024;

/// The header carrying an integration event's type (see `pl_bus::EVENT_TYPE_HEADER`).
const EVENT_TYPE_HEADER: &str = pl_bus::EVENT_TYPE_HEADER;

/// Namespace of letter ids: UUIDv5 of `urn:partner-ledger:dead-letter` in the URL namespace.
const LETTER_NS: Uuid = Uuid::from_u128(0x0b9f_3c2e_51d4_5a7e_8c61_2f4d_9e0a_7b13);

/// The stream holding a service's dead letters.
pub fn stream(service: &str) -> String {
    format!("dead-letters-{service}")
}

/// A letter's id: one per (consumer, message), so a redelivered refusal is the same letter.
pub fn letter_id(consumer: &str, message_id: Uuid) -> Uuid {
    Uuid::new_v5(&LETTER_NS, format!("{consumer}/{message_id}").as_bytes())
}

/// The message as kept: text when it is UTF-8 (integration events are JSON), hex otherwise, or
/// only its size and digest when it is too large to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "encoding", content = "data", rename_all = "snake_case")]
pub enum Payload {
    Utf8(String),
    Hex(String),
    NotKept { bytes: usize, sha256: String },
}

impl Payload {
    fn keep(bytes: &[u8]) -> Payload {
        use sha2::Digest;
        if bytes.len() > MAX_KEPT_PAYLOAD_BYTES {
            return Payload::NotKept {
                bytes: bytes.len(),
                sha256: hex::encode(sha2::Sha256::digest(bytes)),
            };
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => Payload::Utf8(text.to_owned()),
            Err(_) => Payload::Hex(hex::encode(bytes)),
        }
    }

    fn bytes(&self) -> Option<bytes::Bytes> {
        match self {
            Payload::Utf8(text) => Some(bytes::Bytes::from(text.clone().into_bytes())),
            Payload::Hex(h) => hex::decode(h).ok().map(bytes::Bytes::from),
            Payload::NotKept { .. } => None,
        }
    }
}

/// One refusal, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    pub letter_id: Uuid,
    pub message_id: Uuid,
    pub subject: String,
    /// The integration event's type, from its header or its envelope; empty when neither says.
    #[serde(default)]
    pub event_type: String,
    pub consumer: String,
    pub reason: String,
    pub refused_at: DateTime<Utc>,
    pub headers: BTreeMap<String, String>,
    pub payload: Payload,
}

/// What a retry came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retried {
    pub letter_id: Uuid,
    pub retried_at: DateTime<Utc>,
    /// The handler took the message.
    pub applied: bool,
    /// Why not, when it did not.
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum DeadLetterEvent {
    MessageDeadLettered(Letter),
    DeadLetterRetried(Retried),
}

impl DomainEvent for DeadLetterEvent {}

#[derive(Debug)]
pub enum DeadLetterCommand {
    Record(Letter),
    Retried(Retried),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no dead letter {0}")]
    Unknown(Uuid),
}

/// A letter and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub letter: Letter,
    pub retries: u32,
    /// The last retry's refusal, while it has not applied.
    pub last_retry_reason: Option<String>,
    /// When a retry applied it: from then on it never runs again.
    pub applied_at: Option<DateTime<Utc>>,
}

/// A service's dead letters, in the order they were refused.
#[derive(Debug, Clone, Default)]
pub struct DeadLetters {
    pub entries: Vec<Entry>,
    at: std::collections::HashMap<Uuid, usize>,
}

impl DeadLetters {
    pub fn get(&self, letter_id: Uuid) -> Option<&Entry> {
        self.at.get(&letter_id).and_then(|i| self.entries.get(*i))
    }
}

impl Aggregate for DeadLetters {
    type State = DeadLetters;
    type Command = DeadLetterCommand;
    type Event = DeadLetterEvent;
    type Error = DeadLetterError;

    fn decide(
        state: &DeadLetters,
        command: &DeadLetterCommand,
    ) -> Result<Vec<DeadLetterEvent>, DeadLetterError> {
        match command {
            // The same message refused again (a redelivery) is the letter already kept.
            DeadLetterCommand::Record(letter) => Ok(match state.get(letter.letter_id) {
                Some(_) => vec![],
                None => vec![DeadLetterEvent::MessageDeadLettered(letter.clone())],
            }),
            DeadLetterCommand::Retried(retried) => match state.get(retried.letter_id) {
                None => Err(DeadLetterError::Unknown(retried.letter_id)),
                Some(e) if e.applied_at.is_some() => Ok(vec![]),
                Some(_) => Ok(vec![DeadLetterEvent::DeadLetterRetried(retried.clone())]),
            },
        }
    }

    fn evolve(mut state: DeadLetters, event: &DeadLetterEvent) -> DeadLetters {
        match event {
            DeadLetterEvent::MessageDeadLettered(letter) => {
                if !state.at.contains_key(&letter.letter_id) {
                    state.at.insert(letter.letter_id, state.entries.len());
                    state.entries.push(Entry {
                        letter: letter.clone(),
                        retries: 0,
                        last_retry_reason: None,
                        applied_at: None,
                    });
                }
            }
            DeadLetterEvent::DeadLetterRetried(r) => {
                if let Some(e) = state.at.get(&r.letter_id).copied() {
                    let entry = &mut state.entries[e];
                    entry.retries = entry.retries.saturating_add(1);
                    if r.applied {
                        entry.applied_at = Some(r.retried_at);
                        entry.last_retry_reason = None;
                    } else {
                        entry.last_retry_reason = Some(r.reason.clone());
                    }
                }
            }
        }
        state
    }
}

fn bounded(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

fn meta(seed: Uuid, at: DateTime<Utc>, causation: Option<Uuid>) -> CommandMeta {
    CommandMeta {
        id_seed: seed,
        occurred_at: at,
        correlation_id: None,
        causation_id: causation,
        trace_context: BTreeMap::new(),
    }
}

/// Records one refusal of `message` by `consumer`. Idempotent: a redelivered message refused
/// again is the same letter and appends nothing.
pub async fn record(
    store: &dyn EventStore,
    service: &str,
    consumer: &str,
    message: &Message,
    reason: &str,
    refused_at: DateTime<Utc>,
) -> Result<(), ExecuteError<DeadLetterError>> {
    let letter_id = letter_id(consumer, message.id);
    let letter = Letter {
        letter_id,
        message_id: message.id,
        subject: message.subject.clone(),
        event_type: message
            .headers
            .get(EVENT_TYPE_HEADER)
            .cloned()
            .or_else(|| {
                pl_bus::IntegrationEvent::from_message(message)
                    .ok()
                    .map(|e| e.event_type)
            })
            .map(|t| bounded(&t, MAX_HEADER_CHARS))
            .unwrap_or_default(),
        consumer: consumer.to_owned(),
        reason: bounded(reason, MAX_REASON_CHARS),
        refused_at,
        headers: message
            .headers
            .iter()
            // Says how this delivery came; a retry is not that delivery.
            .filter(|(k, _)| k.as_str() != pl_bus::FINAL_DELIVERY_HEADER)
            .take(MAX_HEADERS)
            .map(|(k, v)| (k.clone(), bounded(v, MAX_HEADER_CHARS)))
            .collect(),
        payload: Payload::keep(&message.payload),
    };
    execute::<DeadLetters>(
        store,
        &stream(service),
        &DeadLetterCommand::Record(letter),
        &meta(letter_id, refused_at, Some(message.id)),
    )
    .await
    .map(|_| ())
}

/// Records the refusals among a handler's outcomes before the bus hears of them, for one
/// consumer, and counts them: a `Permanent` outcome, and a `Retry` on the message's last allowed
/// delivery (the bus dead-letters that one too; see `pl_bus::FINAL_DELIVERY_HEADER`). A refusal that cannot be recorded (the store is down) is turned
/// into a retry: the message comes back and is refused again, never dropped unrecorded.
#[derive(Clone)]
pub struct Recorder {
    service: &'static str,
    consumer: Arc<str>,
    clock: Arc<dyn Clock>,
    refused: Arc<AtomicU64>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("service", &self.service)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    pub fn new(service: &'static str, consumer: &str, clock: Arc<dyn Clock>) -> Self {
        Self {
            service,
            consumer: Arc::from(consumer),
            clock,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Messages this consumer refused since the process started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// [`Recorder::settle_all`] for one message.
    pub async fn settle(
        &self,
        store: &dyn EventStore,
        message: &Message,
        outcome: Result<(), HandleError>,
    ) -> Result<(), HandleError> {
        let reason = match outcome {
            Err(HandleError::Permanent(reason)) => reason,
            // The bus dead-letters a message that fails on its last allowed delivery: that is
            // a refusal too, and is kept like one.
            Err(HandleError::Retry(reason)) => {
                match message.headers.get(pl_bus::FINAL_DELIVERY_HEADER) {
                    Some(count) => format!("handling failed {count} times; the last: {reason}"),
                    None => return Err(HandleError::Retry(reason)),
                }
            }
            Ok(()) => return Ok(()),
        };
        let at = self.clock.now();
        if let Err(e) = record(store, self.service, &self.consumer, message, &reason, at).await {
            tracing::warn!(service = self.service, consumer = %self.consumer, message_id = %message.id, error = %e, "a refusal could not be recorded; the message will come back");
            return Err(HandleError::Retry(format!(
                "refused ({reason}), and the refusal could not be recorded: {e}"
            )));
        }
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            service = self.service,
            consumer = %self.consumer,
            message_id = %message.id,
            subject = %message.subject,
            reason,
            dead_letters = refused,
            "message refused; kept as a dead letter"
        );
        Err(HandleError::Permanent(reason))
    }

    /// Records every refusal among `outcomes` (one per message of `messages`, in order).
    pub async fn settle_all(
        &self,
        store: &dyn EventStore,
        messages: &[Message],
        outcomes: Vec<Result<(), HandleError>>,
    ) -> Vec<Result<(), HandleError>> {
        let mut settled = Vec::with_capacity(outcomes.len());
        for (message, outcome) in messages.iter().zip(outcomes) {
            settled.push(self.settle(store, message, outcome).await);
        }
        settled
    }
}

/// Letters on one page.
pub const MAX_PAGE: usize = 500;
const DEFAULT_PAGE: usize = 100;

fn status(e: &Entry) -> &'static str {
    match (e.applied_at, &e.last_retry_reason) {
        (Some(_), _) => "applied",
        (None, Some(_)) => "failed",
        (None, None) => "waiting",
    }
}

fn view(e: &Entry) -> pb::DeadLetter {
    pb::DeadLetter {
        letter_id: e.letter.letter_id.to_string(),
        message_id: e.letter.message_id.to_string(),
        subject: e.letter.subject.clone(),
        event_type: e.letter.event_type.clone(),
        consumer: e.letter.consumer.clone(),
        reason: e.letter.reason.clone(),
        refused_at: Some(to_timestamp(e.letter.refused_at)),
        status: status(e).to_owned(),
        retries: e.retries,
        last_retry_reason: e.last_retry_reason.clone().unwrap_or_default(),
        applied_at: e.applied_at.map(to_timestamp),
    }
}

fn api_error(e: ExecuteError<DeadLetterError>) -> ApiError {
    match e {
        ExecuteError::Domain(DeadLetterError::Unknown(id)) => ApiError::NotFound {
            what: "dead letter",
            id: id.to_string(),
        },
        ExecuteError::Conflict { stream, .. } => ApiError::Conflict { stream },
        ExecuteError::Decode(detail) => ApiError::internal(detail),
        ExecuteError::Store(e) => e.into(),
    }
}

/// `ListDeadLetters`: a page of the service's letters, oldest first; with `waiting_only`, only
/// those no retry has applied.
pub async fn list(
    store: &dyn EventStore,
    service: &str,
    request: &pb::ListDeadLettersRequest,
) -> Result<pb::ListDeadLettersResponse, ApiError> {
    let mut v = crate::Violations::new();
    let (offset, limit) = crate::request::page(
        &mut v,
        "page",
        request.page.as_ref(),
        crate::request::PageBounds {
            default_size: DEFAULT_PAGE,
            max_size: MAX_PAGE,
        },
    );
    v.finish()?;
    let letters = load::<DeadLetters>(store, &stream(service))
        .await
        .map_err(api_error)?
        .state;
    let chosen: Vec<&Entry> = letters
        .entries
        .iter()
        .filter(|e| !request.waiting_only || e.applied_at.is_none())
        .collect();
    let next = offset.saturating_add(limit);
    Ok(pb::ListDeadLettersResponse {
        letters: chosen
            .iter()
            .skip(offset)
            .take(limit)
            .map(|e| view(e))
            .collect(),
        next_page_token: if next < chosen.len() {
            next.to_string()
        } else {
            String::new()
        },
    })
}

/// `RetryDeadLetter`: hands the kept message to `handler` again and records what it came to.
/// A letter a retry already applied is answered as it stands and not run again (`ran` false).
/// A letter whose payload was not kept cannot be retried (FAILED_PRECONDITION).
pub async fn retry<H, Fut>(
    store: &dyn EventStore,
    service: &str,
    letter_id: Uuid,
    retried_at: DateTime<Utc>,
    handler: H,
) -> Result<pb::RetryDeadLetterResponse, ApiError>
where
    H: FnOnce(Message) -> Fut,
    Fut: Future<Output = Result<(), HandleError>>,
{
    let stream = stream(service);
    let loaded = load::<DeadLetters>(store, &stream)
        .await
        .map_err(api_error)?;
    let entry = loaded.state.get(letter_id).ok_or(ApiError::NotFound {
        what: "dead letter",
        id: letter_id.to_string(),
    })?;
    if entry.applied_at.is_some() {
        return Ok(pb::RetryDeadLetterResponse {
            letter: Some(view(entry)),
            ran: false,
        });
    }
    let payload = entry.letter.payload.bytes().ok_or_else(|| {
        ApiError::rule(format!(
            "dead letter {letter_id}: its payload was larger than {MAX_KEPT_PAYLOAD_BYTES} bytes and was not kept"
        ))
    })?;
    let message = Message {
        id: entry.letter.message_id,
        subject: entry.letter.subject.clone(),
        payload,
        headers: entry.letter.headers.clone(),
    };
    let retries = entry.retries;
    let outcome = handler(message).await;
    let (applied, reason) = match outcome {
        Ok(()) => (true, String::new()),
        Err(HandleError::Permanent(reason)) => (false, bounded(&reason, MAX_REASON_CHARS)),
        // Not a verdict on the message: nothing is recorded and the caller may try again.
        Err(HandleError::Retry(reason)) => {
            return Err(ApiError::Unavailable {
                what: format!("the retry of dead letter {letter_id} ({reason})"),
            })
        }
    };
    // One seed per retry of the letter: two retries racing from the same state derive the same
    // ids, so only one of them is recorded.
    let seed = Uuid::new_v5(&letter_id, format!("retry:{retries}").as_bytes());
    let retried = Retried {
        letter_id,
        retried_at,
        applied,
        reason,
    };
    let done = execute::<DeadLetters>(
        store,
        &stream,
        &DeadLetterCommand::Retried(retried),
        &meta(seed, retried_at, None),
    )
    .await
    .map_err(api_error)?;
    let entry = done.state.get(letter_id).ok_or(ApiError::NotFound {
        what: "dead letter",
        id: letter_id.to_string(),
    })?;
    Ok(pb::RetryDeadLetterResponse {
        letter: Some(view(entry)),
        ran: true,
    })
}

/// `RetryDeadLetter` as every service answers it: the request checked, then [`retry`] run once
/// per idempotency key (a repeat returns the original answer).
pub async fn retry_request<H, Fut>(
    store: &dyn EventStore,
    service: &'static str,
    clock: &dyn Clock,
    trace_context: BTreeMap<String, String>,
    request: &pb::RetryDeadLetterRequest,
    handler: H,
) -> Result<pb::RetryDeadLetterResponse, ApiError>
where
    H: FnOnce(Message) -> Fut,
    Fut: Future<Output = Result<(), HandleError>>,
{
    let mut v = crate::Violations::new();
    let meta = crate::RequestMeta::parse(
        service,
        request.context.as_ref(),
        clock,
        trace_context,
        &mut v,
    );
    let letter_id = v.check(crate::request::parse_uuid("letter_id", &request.letter_id));
    v.finish()?;
    let (Some(meta), Some(letter_id)) = (meta, letter_id) else {
        return Err(ApiError::internal("validated fields missing"));
    };
    let fingerprint = crate::idempotency::request_fingerprint(request, |r| r.context.as_mut());
    crate::idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || {
        retry(store, service, letter_id, meta.occurred_at, handler)
    })
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

    use chrono::TimeZone;
    use pl_eventlog::MemoryLog;

    use super::*;
    use crate::FixedClock;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }

    fn message(id: u128, headers: &[(&str, &str)], payload: Vec<u8>) -> Message {
        Message {
            id: Uuid::from_u128(id),
            subject: "pl.attribution.ConversionAttributed".into(),
            payload: bytes::Bytes::from(payload),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn recorder() -> Recorder {
        Recorder::new("svc", "svc-consumer", Arc::new(FixedClock::at(at())))
    }

    async fn letters(store: &MemoryLog) -> Vec<pb::DeadLetter> {
        let request = pb::ListDeadLettersRequest::default();
        list(store, "svc", &request).await.unwrap().letters
    }

    #[tokio::test]
    async fn a_failure_on_the_last_allowed_delivery_is_kept_as_a_refusal_and_an_earlier_one_is_not()
    {
        let store = MemoryLog::default();
        let r = recorder();
        let early = message(1, &[], b"{}".to_vec());
        let outcome = r
            .settle(&store, &early, Err(HandleError::Retry("store down".into())))
            .await;
        assert_eq!(outcome, Err(HandleError::Retry("store down".into())));
        assert!(letters(&store).await.is_empty());

        let last = message(1, &[(pl_bus::FINAL_DELIVERY_HEADER, "5")], b"{}".to_vec());
        let outcome = r
            .settle(&store, &last, Err(HandleError::Retry("store down".into())))
            .await;
        let reason = "handling failed 5 times; the last: store down";
        assert_eq!(outcome, Err(HandleError::Permanent(reason.into())));
        let [letter] = letters(&store).await.try_into().unwrap();
        assert_eq!(letter.reason, reason);
        assert_eq!(r.refused(), 1);
    }

    #[tokio::test]
    async fn a_message_refused_again_on_redelivery_is_the_same_letter() {
        let store = MemoryLog::default();
        let r = recorder();
        let m = message(2, &[], b"not json".to_vec());
        for _ in 0..2 {
            r.settle(&store, &m, Err(HandleError::Permanent("broken".into())))
                .await
                .unwrap_err();
        }
        let [letter] = letters(&store).await.try_into().unwrap();
        assert_eq!(
            letter.letter_id,
            letter_id("svc-consumer", m.id).to_string()
        );
        assert_eq!(letter.status, "waiting");
    }

    #[tokio::test]
    async fn a_letter_too_large_to_keep_is_listed_and_its_retry_refused_without_running() {
        let store = MemoryLog::default();
        let m = message(3, &[], vec![b'x'; MAX_KEPT_PAYLOAD_BYTES + 1]);
        recorder()
            .settle(&store, &m, Err(HandleError::Permanent("too big".into())))
            .await
            .unwrap_err();
        let [letter] = letters(&store).await.try_into().unwrap();
        let refused = retry(
            &store,
            "svc",
            letter.letter_id.parse().unwrap(),
            at(),
            |_| async { panic!("a letter without its payload must not run") },
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    }

    #[tokio::test]
    async fn an_unknown_letter_is_not_found_and_a_transient_failure_records_nothing() {
        let store = MemoryLog::default();
        let unknown = retry(&store, "svc", Uuid::from_u128(9), at(), |_| async {
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);

        let m = message(4, &[], b"{}".to_vec());
        recorder()
            .settle(&store, &m, Err(HandleError::Permanent("bad".into())))
            .await
            .unwrap_err();
        let id = letter_id("svc-consumer", m.id);
        let busy = retry(&store, "svc", id, at(), |_| async {
            Err(HandleError::Retry("store down".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(busy.code(), tonic::Code::Unavailable);
        let [letter] = letters(&store).await.try_into().unwrap();
        assert_eq!((letter.status.as_str(), letter.retries), ("waiting", 0));
    }
}
