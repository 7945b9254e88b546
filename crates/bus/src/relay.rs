//! The relay: tails the event log and publishes integration events, so a service never writes
//! to the log and the bus in one request (no dual writes, DESIGN principle 10).
//!
//! Each matching event becomes one [`Message`] with the event's id (the bus de-duplicates a
//! re-publish), in log order. The relay advances only past an event the bus has accepted: while
//! the bus is down it retries with capped exponential backoff and commands keep succeeding,
//! because they only touch the log. Its checkpoint lives in the log itself, stream
//! `relay-checkpoint-<name>`, one small event every `checkpoint_every_events` events or
//! `checkpoint_every_ms`, and on shutdown. After a crash it resumes from the last checkpoint and
//! re-publishes at most the events since then, which the bus drops as duplicates within its
//! duplicate window (keep the checkpoint interval far below that window).
//!
//! One relay per name runs at a time; a second instance would publish the same messages again
//! (harmless, de-duplicated) and interleave checkpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pl_eventlog::{
    EventMetadata, ExpectedVersion, LogError, NewEvent, RecordedEvent, SharedStore, Subscription,
    SubscriptionFilter,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::BusError;
use crate::message::{check_durable_name, check_token, subject, Message, DEAD_LETTER_CONTEXT};
use crate::port::SharedBus;

/// Streams of relay checkpoints; never published, whatever the routes say.
pub const CHECKPOINT_STREAM_PREFIX: &str = "relay-checkpoint-";
pub const CHECKPOINT_EVENT_TYPE: &str = "RelayCheckpointed";
pub const TRACEPARENT_HEADER: &str = "traceparent";
pub const TRACESTATE_HEADER: &str = "tracestate";
pub const EVENT_TYPE_HEADER: &str = "pl-event-type";
pub const SCHEMA_VERSION_HEADER: &str = "pl-schema-version";

/// Namespace of checkpoint event ids: UUIDv5 of `urn:partner-ledger:relay-checkpoint` in the
/// URL namespace.
const CHECKPOINT_ID_NAMESPACE: Uuid = Uuid::from_u128(0xab9d95df_0418_5653_a876_f75d3597d004);
/// First retry delay; doubled up to `retry_backoff_max_ms`.
const RETRY_BACKOFF_MIN_MS: u64 = 50;
/// Upper bounds of the relay's settings.
const MAX_CHECKPOINT_EVERY_EVENTS: u64 = 1_000_000;
const MAX_CHECKPOINT_EVERY_MS: u64 = 60 * 60 * 1000;
const MAX_ROUTES: usize = 256;

/// Which events are published, and under which subject context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Events of streams whose name starts with this (e.g. `"partner-"`).
    pub stream_prefix: String,
    /// The middle subject token: `<prefix>.<context>.<event_type>`.
    pub context: String,
    /// Only these event types; `None` for all of the matching streams.
    pub event_types: Option<BTreeSet<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Names the checkpoint stream; letters, digits, `_` and `-`.
    pub name: String,
    pub subject_prefix: String,
    /// The first route that matches an event decides its subject; no match, not published.
    pub routes: Vec<Route>,
    pub checkpoint_every_events: u64,
    pub checkpoint_every_ms: u64,
    /// Retries while the bus is unavailable back off exponentially up to this.
    pub retry_backoff_max_ms: u64,
    /// Keep a checkpoint in the log and resume from it. Turn off only for a bus that forgets
    /// everything when the process stops (the in-process bus): a checkpoint would then claim
    /// delivery of messages that died with the process, so the relay starts from position 0 and
    /// relies on consumers being idempotent.
    pub durable_checkpoints: bool,
}

impl RelayConfig {
    fn validate(&self) -> Result<(), BusError> {
        check_durable_name(&self.name)
            .map_err(|e| BusError::InvalidConfig(format!("relay name: {e}")))?;
        check_token(&self.subject_prefix)
            .map_err(|reason| BusError::InvalidConfig(format!("subject prefix: {reason}")))?;
        if self.routes.is_empty() || self.routes.len() > MAX_ROUTES {
            return Err(BusError::InvalidConfig(format!(
                "relay {} needs 1 to {MAX_ROUTES} routes",
                self.name
            )));
        }
        for r in &self.routes {
            check_token(&r.context).map_err(|reason| {
                BusError::InvalidConfig(format!("route context {:?}: {reason}", r.context))
            })?;
            if r.context == DEAD_LETTER_CONTEXT {
                return Err(BusError::InvalidConfig(format!(
                    "route context {DEAD_LETTER_CONTEXT:?} is reserved for dead letters"
                )));
            }
        }
        let in_range = |what: &str, v: u64, max: u64| {
            if v == 0 || v > max {
                Err(BusError::InvalidConfig(format!(
                    "{what} must be 1 to {max}, got {v}"
                )))
            } else {
                Ok(())
            }
        };
        in_range(
            "checkpoint_every_events",
            self.checkpoint_every_events,
            MAX_CHECKPOINT_EVERY_EVENTS,
        )?;
        in_range(
            "checkpoint_every_ms",
            self.checkpoint_every_ms,
            MAX_CHECKPOINT_EVERY_MS,
        )?;
        in_range(
            "retry_backoff_max_ms",
            self.retry_backoff_max_ms,
            MAX_CHECKPOINT_EVERY_MS,
        )?;
        Ok(())
    }

    fn route_for(&self, ev: &RecordedEvent) -> Option<&Route> {
        if ev.stream.starts_with(CHECKPOINT_STREAM_PREFIX) {
            return None;
        }
        self.routes.iter().find(|r| {
            ev.stream.starts_with(r.stream_prefix.as_str())
                && r.event_types
                    .as_ref()
                    .is_none_or(|types| types.contains(&ev.event_type))
        })
    }
}

/// The payload of every integration event: the recorded event, its data embedded as JSON
/// exactly as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IntegrationEvent {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub stream: String,
    pub version: u64,
    pub position: u64,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub data: Box<RawValue>,
}

impl IntegrationEvent {
    pub fn from_recorded(ev: &RecordedEvent) -> Result<Self, BusError> {
        let invalid = |reason: String| BusError::InvalidMessage { id: ev.id, reason };
        let text = std::str::from_utf8(&ev.data)
            .map_err(|e| invalid(format!("event data is not utf-8: {e}")))?;
        let data = RawValue::from_string(text.to_owned())
            .map_err(|e| invalid(format!("event data is not json: {e}")))?;
        Ok(Self {
            id: ev.id,
            event_type: ev.event_type.clone(),
            schema_version: ev.schema_version,
            stream: ev.stream.clone(),
            version: ev.version,
            position: ev.position,
            occurred_at: ev.metadata.occurred_at,
            recorded_at: ev.recorded_at,
            correlation_id: ev.metadata.correlation_id,
            causation_id: ev.metadata.causation_id,
            data,
        })
    }

    /// Parses a consumed message's payload; its id must be the message id.
    pub fn from_message(msg: &Message) -> Result<Self, BusError> {
        let ev: Self =
            serde_json::from_slice(&msg.payload).map_err(|e| BusError::InvalidMessage {
                id: msg.id,
                reason: format!("payload is not an integration event: {e}"),
            })?;
        if ev.id != msg.id {
            return Err(BusError::InvalidMessage {
                id: msg.id,
                reason: format!("envelope id {} differs from the message id", ev.id),
            });
        }
        Ok(ev)
    }

    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }
}

/// The message for `ev` under `<prefix>.<context>.<event_type>`, carrying the trace context.
pub fn integration_message(
    ev: &RecordedEvent,
    subject_prefix: &str,
    context: &str,
) -> Result<Message, BusError> {
    let subject = subject(subject_prefix, context, &ev.event_type)?;
    let envelope = IntegrationEvent::from_recorded(ev)?;
    let payload = serde_json::to_vec(&envelope).map_err(|e| BusError::InvalidMessage {
        id: ev.id,
        reason: format!("envelope does not serialise: {e}"),
    })?;
    let mut headers = BTreeMap::new();
    for key in [TRACEPARENT_HEADER, TRACESTATE_HEADER] {
        if let Some(value) = ev.metadata.trace_context.get(key) {
            if value.chars().all(|c| !c.is_control()) {
                headers.insert(key.to_owned(), value.clone());
            } else {
                // A broken trace context must not stop the relay; the trace is only lost.
                tracing::warn!(event_id = %ev.id, key, "trace context value dropped: control characters");
            }
        }
    }
    headers.insert(EVENT_TYPE_HEADER.to_owned(), ev.event_type.clone());
    headers.insert(
        SCHEMA_VERSION_HEADER.to_owned(),
        ev.schema_version.to_string(),
    );
    Ok(Message {
        id: ev.id,
        subject,
        payload: payload.into(),
        headers,
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    relay: String,
    /// Every event before this global position has been published (or is not routed).
    next_position: u64,
}

/// See the module docs.
pub struct Relay {
    store: SharedStore,
    bus: SharedBus,
    config: RelayConfig,
    position: watch::Sender<u64>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.config)
            .field("next_position", &*self.position.borrow())
            .finish_non_exhaustive()
    }
}

enum Stop {
    Shutdown,
    Failed(BusError),
}

impl Relay {
    pub fn new(store: SharedStore, bus: SharedBus, config: RelayConfig) -> Result<Self, BusError> {
        config.validate()?;
        Ok(Self {
            store,
            bus,
            config,
            position: watch::Sender::new(0),
        })
    }

    /// One past the last event handled (published, or not routed): every event at a lower
    /// position is on the bus. Compare it with the store's `watch_head` to wait for catch-up.
    pub fn watch_position(&self) -> watch::Receiver<u64> {
        self.position.subscribe()
    }

    pub fn checkpoint_stream(&self) -> String {
        format!("{CHECKPOINT_STREAM_PREFIX}{}", self.config.name)
    }

    /// Runs until `shutdown`, then writes a final checkpoint. Returns an error only for what
    /// retrying cannot fix: an event that cannot become a message (an event type that is not a
    /// subject token, a payload over the bus limit) stops the relay rather than be skipped,
    /// and so does an event log that is closed or corrupt.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BusError> {
        let start = match self.retrying(&shutdown, || self.load_checkpoint()).await {
            Ok(p) => p,
            Err(Stop::Shutdown) => return Ok(()),
            Err(Stop::Failed(e)) => return Err(e),
        };
        tracing::info!(relay = %self.config.name, from_position = start, "relay starting");
        self.position.send_replace(start);
        let mut next_position = start;
        let mut since_checkpoint = 0_u64;
        let mut checkpoint_due: Option<Instant> = None;
        let mut sub = Subscription::new(self.store.clone(), start, SubscriptionFilter::All);
        let mut log_backoff_ms = 0_u64;
        let outcome = loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                () = sleep_until_opt(checkpoint_due) => {
                    match self.checkpoint(&shutdown, next_position).await {
                        Ok(()) => {
                            since_checkpoint = 0;
                            checkpoint_due = None;
                            continue;
                        }
                        Err(Stop::Shutdown) => break Ok(()),
                        Err(Stop::Failed(e)) => break Err(e),
                    }
                }
                received = sub.next() => received,
            };
            let first = match received {
                Ok(ev) => {
                    log_backoff_ms = 0;
                    ev
                }
                Err(e) if is_retryable_log_error(&e) => {
                    log_backoff_ms = self.next_backoff(log_backoff_ms);
                    tracing::warn!(relay = %self.config.name, error = %e, backoff_ms = log_backoff_ms, "reading the event log failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break Ok(()),
                        () = tokio::time::sleep(Duration::from_millis(log_backoff_ms)) => {}
                    }
                    sub = Subscription::new(
                        self.store.clone(),
                        next_position,
                        SubscriptionFilter::All,
                    );
                    continue;
                }
                Err(e) => break Err(e.into()),
            };
            // What else is committed already (at most a page) goes out with it: the bus may
            // then have many in flight instead of one round trip each. A read error here is
            // left for the next `sub.next()`, which backs off (the buffer is kept).
            let mut batch = vec![first];
            match sub.poll_batch().await {
                Ok(more) => batch.extend(more),
                Err(e) => {
                    tracing::debug!(relay = %self.config.name, error = %e, "reading ahead failed")
                }
            }
            let mut msgs = Vec::with_capacity(batch.len());
            let mut handled_to = next_position;
            let mut unpublishable = None;
            for ev in &batch {
                if !ev.stream.starts_with(CHECKPOINT_STREAM_PREFIX) {
                    if let Some(route) = self.config.route_for(ev) {
                        match integration_message(ev, &self.config.subject_prefix, &route.context) {
                            Ok(m) => msgs.push((ev.position, m)),
                            Err(e) => {
                                // Everything before it is published; the relay stops at it.
                                unpublishable = Some(e);
                                break;
                            }
                        }
                    }
                    since_checkpoint += 1;
                    checkpoint_due.get_or_insert_with(|| {
                        Instant::now() + Duration::from_millis(self.config.checkpoint_every_ms)
                    });
                }
                handled_to = ev.position + 1;
            }
            if !msgs.is_empty() {
                let batch: Vec<Message> = msgs.iter().map(|(_, m)| m.clone()).collect();
                match self
                    .retrying(&shutdown, || self.bus.publish_many(batch.clone()))
                    .await
                {
                    Ok(()) => {}
                    Err(Stop::Shutdown) => break Ok(()),
                    Err(Stop::Failed(e)) if msgs.len() == 1 => break Err(e),
                    Err(Stop::Failed(e)) => {
                        // One message the bus can never take (e.g. over its payload limit)
                        // refuses the whole batch: publish one by one, so every event before
                        // it goes out and the relay stops exactly at it.
                        tracing::warn!(relay = %self.config.name, error = %e, "batch refused; publishing one by one");
                        let (published_to, ended) = self.publish_one_by_one(&shutdown, &msgs).await;
                        if let Err(stop) = ended {
                            if let Some(to) = published_to {
                                next_position = to;
                                self.position.send_replace(next_position);
                            }
                            match stop {
                                Stop::Shutdown => break Ok(()),
                                Stop::Failed(e) => break Err(e),
                            }
                        }
                    }
                }
            }
            next_position = handled_to;
            self.position.send_replace(next_position);
            if let Some(e) = unpublishable {
                break Err(e);
            }
            if since_checkpoint >= self.config.checkpoint_every_events {
                match self.checkpoint(&shutdown, next_position).await {
                    Ok(()) => {
                        since_checkpoint = 0;
                        checkpoint_due = None;
                    }
                    Err(Stop::Shutdown) => break Ok(()),
                    Err(Stop::Failed(e)) => break Err(e),
                }
            }
        };
        if since_checkpoint > 0 {
            // Best effort: without it the events since the last checkpoint are published again
            // on start, and dropped as duplicates.
            if let Err(e) = self.write_checkpoint(next_position).await {
                tracing::warn!(relay = %self.config.name, error = %e, "final checkpoint failed");
            }
        }
        tracing::info!(relay = %self.config.name, next_position, "relay stopped");
        outcome
    }

    /// Publishes `msgs` one at a time, in order; returns one past the position of the last
    /// one the bus accepted (`None`: none was), and how it ended.
    async fn publish_one_by_one(
        &self,
        shutdown: &CancellationToken,
        msgs: &[(u64, Message)],
    ) -> (Option<u64>, Result<(), Stop>) {
        let mut published_to = None;
        for (position, msg) in msgs {
            if let Err(stop) = self
                .retrying(shutdown, || self.bus.publish(msg.clone()))
                .await
            {
                return (published_to, Err(stop));
            }
            published_to = Some(position + 1);
        }
        (published_to, Ok(()))
    }

    fn next_backoff(&self, current_ms: u64) -> u64 {
        current_ms.saturating_mul(2).clamp(
            RETRY_BACKOFF_MIN_MS,
            self.config.retry_backoff_max_ms.max(RETRY_BACKOFF_MIN_MS),
        )
    }

    /// Runs `op` until it succeeds, backing off on retryable errors; stops early on shutdown.
    async fn retrying<T, F, Fut>(&self, shutdown: &CancellationToken, mut op: F) -> Result<T, Stop>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, BusError>>,
    {
        let mut backoff_ms = 0_u64;
        let mut attempts = 0_u64;
        loop {
            let result = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Err(Stop::Shutdown),
                result = op() => result,
            };
            match result {
                Ok(v) => {
                    if attempts > 0 {
                        tracing::info!(relay = %self.config.name, attempts, "bus available again");
                    }
                    return Ok(v);
                }
                Err(e) if e.is_retryable() => {
                    attempts += 1;
                    backoff_ms = self.next_backoff(backoff_ms);
                    tracing::warn!(relay = %self.config.name, error = %e, attempts, backoff_ms, "relay retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Err(Stop::Shutdown),
                        () = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                    }
                }
                Err(e) => return Err(Stop::Failed(e)),
            }
        }
    }

    async fn checkpoint(
        &self,
        shutdown: &CancellationToken,
        next_position: u64,
    ) -> Result<(), Stop> {
        self.retrying(shutdown, || self.write_checkpoint(next_position))
            .await
    }

    async fn load_checkpoint(&self) -> Result<u64, BusError> {
        if !self.config.durable_checkpoints {
            return Ok(0);
        }
        let stream = self.checkpoint_stream();
        let Some(version) = self.store.stream_version(&stream).await? else {
            return Ok(0);
        };
        let events = self.store.read_stream(&stream, version, 1).await?;
        let Some(last) = events.last() else {
            return Ok(0);
        };
        let checkpoint: Checkpoint = last.data_as().map_err(|e| {
            BusError::InvalidConfig(format!(
                "relay checkpoint {stream} version {version} is unreadable: {e}"
            ))
        })?;
        Ok(checkpoint.next_position)
    }

    async fn write_checkpoint(&self, next_position: u64) -> Result<(), BusError> {
        if !self.config.durable_checkpoints {
            return Ok(());
        }
        let stream = self.checkpoint_stream();
        let id = Uuid::new_v5(
            &CHECKPOINT_ID_NAMESPACE,
            format!("{}:{next_position}", self.config.name).as_bytes(),
        );
        let data = Checkpoint {
            relay: self.config.name.clone(),
            next_position,
        };
        #[allow(clippy::disallowed_methods)] // operational metadata of an adapter, not domain time
        let now = Utc::now();
        let event = NewEvent::json(id, CHECKPOINT_EVENT_TYPE, 1, &data, EventMetadata::at(now))?;
        match self
            .store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
        {
            Ok(_) => {}
            // The same position checkpointed before (a restart with nothing new): already there.
            Err(LogError::EventIdConflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::debug!(relay = %self.config.name, next_position, "relay checkpoint written");
        Ok(())
    }
}

fn is_retryable_log_error(e: &LogError) -> bool {
    matches!(e, LogError::Io(_) | LogError::Backend(_))
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
