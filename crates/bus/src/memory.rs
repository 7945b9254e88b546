//! The in-process bus for `up` mode (one process, no servers): JetStream's consumer semantics
//! (durable consumers, wildcard filters, dedupe by id, ack wait, nak delay, max deliver then
//! dead letter) over a bounded in-memory queue.
//!
//! Retention works like the NATS stream's limits with discard-new: the bus keeps up to
//! `max_messages` messages and `max_bytes` payload bytes. To make room it drops the oldest
//! messages that every existing consumer is done with (acked, dead-lettered or not matching its
//! filters); when the oldest one is still needed (a slow consumer has not acked it), `publish`
//! returns [`BusError::Full`] (backpressure: the relay retries) instead of growing or dropping
//! it. A new durable consumer starts at the oldest retained message, so a consumer created just
//! after the relay started still sees what was published before it existed. Memory is bounded
//! by the two caps plus a tenth (room kept for dead letters, which must get in when the bus is
//! full) plus the dedupe set (`max_duplicate_ids`).
//!
//! Nothing survives the process: unacked messages are lost on exit. The event log is the truth
//! and the relay's checkpoint says what was published, so `up` mode trades at-least-once across
//! a crash for having no servers; use [`crate::NatsBus`] where that matters.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::BusError;
use crate::message::{check_token, dead_letter_subject, subject_matches, Message};
use crate::port::{
    dead_letter_message, Acker, Bus, Consumer, ConsumerSpec, DeadLettered, Delivery,
};

/// Bounds of the in-process bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProcessConfig {
    /// Every subject is under `<subject_prefix>.`, like the NATS stream's `<prefix>.>`.
    pub subject_prefix: String,
    /// Messages retained (waiting for some consumer's ack) before `publish` returns `Full`.
    pub max_messages: usize,
    /// Payload bytes retained before `publish` returns `Full`.
    pub max_bytes: usize,
    pub max_payload_bytes: usize,
    /// A re-published id within this time is dropped as a duplicate...
    pub duplicate_window_ms: u64,
    /// ...as long as it is among the last this many ids (bounds the dedupe set's memory).
    pub max_duplicate_ids: usize,
    pub max_consumers: usize,
}

impl InProcessConfig {
    pub fn new(subject_prefix: impl Into<String>) -> Self {
        Self {
            subject_prefix: subject_prefix.into(),
            max_messages: 20_000,
            max_bytes: 64 * 1024 * 1024,
            max_payload_bytes: 1024 * 1024,
            duplicate_window_ms: 10 * 60 * 1000,
            max_duplicate_ids: 1_000_000,
            max_consumers: 256,
        }
    }
}

/// See the module docs. Cheap to clone; clones share one bus.
#[derive(Debug, Clone)]
pub struct InProcessBus {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: InProcessConfig,
    state: Mutex<State>,
    /// Bumped on every change a waiting consumer may care about (publish, ack, nak).
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct State {
    /// Retained messages; the front has sequence `first_seq`.
    messages: VecDeque<Message>,
    first_seq: u64,
    retained_bytes: usize,
    dedupe: HashSet<Uuid>,
    dedupe_order: VecDeque<(Uuid, Instant)>,
    consumers: BTreeMap<String, ConsumerState>,
}

#[derive(Debug)]
struct ConsumerState {
    spec: ConsumerSpec,
    /// The next sequence this consumer has not looked at yet.
    cursor: u64,
    /// Delivered, not yet acked, by sequence.
    pending: BTreeMap<u64, Pending>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    delivered_count: u32,
    /// When it is due for (re)delivery.
    due: Instant,
}

impl ConsumerState {
    fn matches(&self, subject: &str) -> bool {
        self.spec
            .filter_subjects
            .iter()
            .any(|f| subject_matches(f, subject))
    }

    /// True when this consumer no longer needs the message at `seq`.
    fn done_with(&self, seq: u64, subject: &str) -> bool {
        !self.matches(subject) || (seq < self.cursor && !self.pending.contains_key(&seq))
    }
}

/// How far over its caps a dead letter may take the bus: a tenth of each. Dead-lettering
/// must succeed when the bus is full, or a full bus deadlocks: the message a consumer gives up
/// on stays unsettled, so the oldest message is never released, so the bus stays full (seen
/// under sustained load in `up` mode before this). The letter and the end of the original's
/// delivery happen in one step; the original is then released like an acked one. A letter
/// nobody subscribes to is dropped, like any message no consumer needs, once it is the oldest
/// and the bus is over a cap. The headroom is a bound, not a promise: with the bus full to it
/// and the oldest message still needed by another consumer, the letter is refused (`Full`)
/// and the delivery stays pending until that consumer moves on.
const DEAD_LETTER_HEADROOM_DIVISOR: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Headroom {
    /// A publish: within the configured caps.
    None,
    /// A dead letter: up to a tenth over them.
    DeadLetter,
}

impl Headroom {
    fn caps(self, config: &InProcessConfig) -> (usize, usize) {
        match self {
            Self::None => (config.max_messages, config.max_bytes),
            Self::DeadLetter => (
                config.max_messages + (config.max_messages / DEAD_LETTER_HEADROOM_DIVISOR).max(1),
                config.max_bytes
                    + (config.max_bytes / DEAD_LETTER_HEADROOM_DIVISOR)
                        .max(config.max_payload_bytes),
            ),
        }
    }
}

enum Next {
    Deliver(Message, u32, u64),
    DeadLetter(Message, u32, u64),
    Wait(Option<Instant>),
}

impl State {
    /// Drops messages from the front, oldest first, while the bus is over a cap with room for
    /// `incoming_bytes` more and no consumer needs the oldest any more.
    fn make_room(&mut self, config: &InProcessConfig, incoming_bytes: usize) {
        while let Some(front) = self.messages.front() {
            let over = self.messages.len() >= config.max_messages
                || self.retained_bytes + incoming_bytes > config.max_bytes;
            let seq = self.first_seq;
            if !over
                || !self
                    .consumers
                    .values()
                    .all(|c| c.done_with(seq, &front.subject))
            {
                break;
            }
            self.retained_bytes -= front.payload.len();
            self.messages.pop_front();
            self.first_seq += 1;
        }
    }

    fn expire_dedupe(&mut self, now: Instant, window: Duration) {
        while let Some(&(id, at)) = self.dedupe_order.front() {
            if now.duration_since(at) < window {
                break;
            }
            self.dedupe.remove(&id);
            self.dedupe_order.pop_front();
        }
    }

    /// Retains `msg` within the caps, raised by `headroom` (see [`DEAD_LETTER_HEADROOM_DIVISOR`]).
    fn append(
        &mut self,
        config: &InProcessConfig,
        msg: Message,
        now: Instant,
        headroom: Headroom,
    ) -> Result<(), BusError> {
        self.expire_dedupe(now, Duration::from_millis(config.duplicate_window_ms));
        if self.dedupe.contains(&msg.id) {
            tracing::debug!(message_id = %msg.id, "duplicate publish dropped");
            return Ok(());
        }
        self.make_room(config, msg.payload.len());
        let (max_messages, max_bytes) = headroom.caps(config);
        if self.messages.len() >= max_messages {
            return Err(BusError::Full(format!(
                "{} messages retained, limit {max_messages}",
                self.messages.len(),
            )));
        }
        let bytes = self.retained_bytes + msg.payload.len();
        if bytes > max_bytes {
            return Err(BusError::Full(format!(
                "{bytes} payload bytes would be retained, limit {max_bytes}"
            )));
        }
        self.remember(config, msg.id, now);
        self.retained_bytes = bytes;
        self.messages.push_back(msg);
        Ok(())
    }

    fn remember(&mut self, config: &InProcessConfig, id: Uuid, now: Instant) {
        self.dedupe.insert(id);
        self.dedupe_order.push_back((id, now));
        while self.dedupe_order.len() > config.max_duplicate_ids {
            if let Some((old, _)) = self.dedupe_order.pop_front() {
                self.dedupe.remove(&old);
            }
        }
    }

    fn next_for(&mut self, name: &str, now: Instant) -> Next {
        let State {
            messages,
            first_seq,
            consumers,
            ..
        } = self;
        let first_seq = *first_seq;
        let message_at = |seq: u64| {
            usize::try_from(seq.checked_sub(first_seq)?)
                .ok()
                .and_then(|i| messages.get(i))
        };
        let Some(c) = consumers.get_mut(name) else {
            return Next::Wait(None);
        };
        let ack_wait = Duration::from_millis(c.spec.ack_wait_ms);
        // Redeliveries first, oldest sequence first.
        if let Some((&seq, p)) = c.pending.iter_mut().find(|(_, p)| p.due <= now) {
            let Some(m) = message_at(seq) else {
                // Only possible after the consumer's filters changed and the message was
                // dropped: nothing left to deliver, look again.
                c.pending.remove(&seq);
                return Next::Wait(Some(now));
            };
            let count = p.delivered_count;
            if count >= c.spec.max_deliver {
                // Delivered max_deliver times without an ack (the handler crashed or hung).
                // Still pending: dead-lettering ends it, or it is tried again after ack wait.
                p.due = now + ack_wait;
                return Next::DeadLetter(m.clone(), count, seq);
            }
            p.delivered_count += 1;
            p.due = now + ack_wait;
            return Next::Deliver(m.clone(), count + 1, seq);
        }
        if c.pending.len() < c.spec.max_ack_pending as usize {
            c.cursor = c.cursor.max(first_seq);
            while let Some(m) = message_at(c.cursor) {
                let seq = c.cursor;
                c.cursor += 1;
                if c.matches(&m.subject) {
                    c.pending.insert(
                        seq,
                        Pending {
                            delivered_count: 1,
                            due: now + ack_wait,
                        },
                    );
                    return Next::Deliver(m.clone(), 1, seq);
                }
            }
        }
        Next::Wait(c.pending.values().map(|p| p.due).min())
    }
}

impl InProcessBus {
    pub fn new(config: InProcessConfig) -> Result<Self, BusError> {
        check_token(&config.subject_prefix)
            .map_err(|reason| BusError::InvalidConfig(format!("subject prefix: {reason}")))?;
        if config.max_messages == 0 || config.max_bytes == 0 || config.max_duplicate_ids == 0 {
            return Err(BusError::InvalidConfig(
                "max_messages, max_bytes and max_duplicate_ids must be positive".to_owned(),
            ));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State {
                    messages: VecDeque::new(),
                    first_seq: 1,
                    retained_bytes: 0,
                    dedupe: HashSet::new(),
                    dedupe_order: VecDeque::new(),
                    consumers: BTreeMap::new(),
                }),
                changed: watch::Sender::new(0),
            }),
        })
    }

    /// Messages currently retained (see the module docs).
    pub fn retained_messages(&self) -> usize {
        self.shared.state.lock().messages.len()
    }
}

impl Shared {
    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn publish(&self, msg: Message) -> Result<(), BusError> {
        msg.validate(&self.config.subject_prefix, self.config.max_payload_bytes)?;
        self.state
            .lock()
            .append(&self.config, msg, Instant::now(), Headroom::None)?;
        self.notify();
        Ok(())
    }

    /// Ends consumer `name`'s delivery of `seq` and retains `letter` in one step, over the caps
    /// if need be (see [`DEAD_LETTER_HEADROOM_DIVISOR`]). On error nothing changed: the
    /// delivery stays pending and comes back after its ack wait. A delivery already settled
    /// (acked, or dead-lettered by another worker holding a redelivery) gets no second letter:
    /// the message was dealt with, and a letter for it would send an operator after nothing.
    fn dead_letter(&self, name: &str, seq: u64, letter: Message) -> Result<DeadLettered, BusError> {
        letter.validate(&self.config.subject_prefix, self.config.max_payload_bytes)?;
        let mut state = self.state.lock();
        let Some(pending) = state
            .consumers
            .get_mut(name)
            .and_then(|c| c.pending.remove(&seq))
        else {
            return Ok(DeadLettered::AlreadySettled);
        };
        let appended = state.append(&self.config, letter, Instant::now(), Headroom::DeadLetter);
        if appended.is_err() {
            if let Some(c) = state.consumers.get_mut(name) {
                c.pending.insert(seq, pending);
            }
        }
        drop(state);
        self.notify();
        appended.map(|()| DeadLettered::Stored)
    }

    fn settle(&self, name: &str, seq: u64, settle: Settle) {
        let mut state = self.state.lock();
        if let Some(c) = state.consumers.get_mut(name) {
            match settle {
                Settle::Ack => {
                    c.pending.remove(&seq);
                }
                Settle::Nak(delay) => {
                    if let Some(p) = c.pending.get_mut(&seq) {
                        p.due = Instant::now() + delay;
                    }
                }
            }
        }
        drop(state);
        self.notify();
    }
}

enum Settle {
    Ack,
    Nak(Duration),
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, msg: Message) -> Result<(), BusError> {
        self.shared.publish(msg)
    }

    async fn consumer(&self, spec: ConsumerSpec) -> Result<Box<dyn Consumer>, BusError> {
        spec.validate()?;
        let mut state = self.shared.state.lock();
        let first_seq = state.first_seq;
        let count = state.consumers.len();
        match state.consumers.get_mut(&spec.durable_name) {
            Some(existing) => existing.spec = spec.clone(),
            None => {
                if count >= self.shared.config.max_consumers {
                    return Err(BusError::Full(format!(
                        "{count} consumers, limit {}",
                        self.shared.config.max_consumers
                    )));
                }
                state.consumers.insert(
                    spec.durable_name.clone(),
                    ConsumerState {
                        spec: spec.clone(),
                        cursor: first_seq,
                        pending: BTreeMap::new(),
                    },
                );
            }
        }
        drop(state);
        Ok(Box::new(InProcessConsumer {
            shared: Arc::clone(&self.shared),
            changed: self.shared.changed.subscribe(),
            dead_letter_subject: dead_letter_subject(
                &self.shared.config.subject_prefix,
                &spec.durable_name,
            ),
            spec,
        }))
    }
}

struct InProcessConsumer {
    shared: Arc<Shared>,
    changed: watch::Receiver<u64>,
    spec: ConsumerSpec,
    dead_letter_subject: String,
}

#[async_trait]
impl Consumer for InProcessConsumer {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            // Mark the current version seen before looking, so a change made after the look
            // wakes the wait below.
            self.changed.borrow_and_update();
            let now = Instant::now();
            let next = self
                .shared
                .state
                .lock()
                .next_for(&self.spec.durable_name, now);
            match next {
                Next::Deliver(message, delivered_count, seq) => {
                    let acker = InProcessAcker {
                        shared: Arc::clone(&self.shared),
                        name: self.spec.durable_name.clone(),
                        seq,
                    };
                    return Ok(Delivery::new(
                        message,
                        delivered_count,
                        &self.spec,
                        self.dead_letter_subject.clone(),
                        Box::new(acker),
                    ));
                }
                Next::DeadLetter(message, delivered_count, seq) => {
                    let letter = dead_letter_message(
                        &message,
                        &self.dead_letter_subject,
                        &self.spec.durable_name,
                        delivered_count,
                        "not acknowledged after max_deliver deliveries",
                    );
                    let done = self
                        .shared
                        .dead_letter(&self.spec.durable_name, seq, letter)?;
                    match done {
                        DeadLettered::Stored => tracing::warn!(
                            consumer = %self.spec.durable_name,
                            message_id = %message.id,
                            delivered_count,
                            "unacknowledged message dead-lettered"
                        ),
                        // Acked (or dead-lettered by a worker holding a redelivery) since the
                        // look: dealt with, so no letter, but the max-deliver path was taken.
                        DeadLettered::AlreadySettled => tracing::debug!(
                            consumer = %self.spec.durable_name,
                            message_id = %message.id,
                            delivered_count,
                            "delivery already settled, no dead letter"
                        ),
                    }
                }
                Next::Wait(deadline) => {
                    let sleep = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = self.changed.changed() => {}
                        () = sleep => {}
                    }
                }
            }
        }
    }
}

struct InProcessAcker {
    shared: Arc<Shared>,
    name: String,
    seq: u64,
}

#[async_trait]
impl Acker for InProcessAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.shared.settle(&self.name, self.seq, Settle::Ack);
        Ok(())
    }

    async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        self.shared.settle(&self.name, self.seq, Settle::Nak(delay));
        Ok(())
    }

    async fn term(&self) -> Result<(), BusError> {
        self.shared.settle(&self.name, self.seq, Settle::Ack);
        Ok(())
    }

    async fn publish(&self, msg: Message) -> Result<(), BusError> {
        self.shared.publish(msg)
    }

    async fn dead_letter(&self, letter: Message) -> Result<DeadLettered, BusError> {
        self.shared.dead_letter(&self.name, self.seq, letter)
    }
}
