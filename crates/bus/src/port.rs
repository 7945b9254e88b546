//! The port every bus adapter implements, and the delivery handle consumers settle.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::consumer::derived_event_id;
use crate::error::BusError;
use crate::message::{check_durable_name, check_filter, Message};

/// A shared handle to any adapter.
pub type SharedBus = Arc<dyn Bus>;

/// Longest nak delay honoured; a longer one is clamped (a message parked for longer belongs in
/// the dead-letter subject, not in the consumer's pending set).
pub const MAX_NAK_DELAY_MS: u64 = 60 * 60 * 1000;
/// Longest ack wait accepted for a consumer.
pub const MAX_ACK_WAIT_MS: u64 = 60 * 60 * 1000;
/// Most deliveries of one message accepted for a consumer.
pub const MAX_DELIVER: u32 = 1000;
/// Most unacknowledged messages one consumer may hold.
pub const MAX_ACK_PENDING: u32 = 100_000;
/// Most filter subjects of one consumer.
pub const MAX_FILTER_SUBJECTS: usize = 16;
/// Bytes of a dead-letter reason kept in the `pl-dlq-reason` header.
const MAX_REASON_BYTES: usize = 512;

/// Headers a dead letter carries besides the original message's own.
pub const DLQ_ORIGINAL_SUBJECT_HEADER: &str = "pl-dlq-original-subject";
pub const DLQ_ORIGINAL_ID_HEADER: &str = "pl-dlq-original-id";
pub const DLQ_REASON_HEADER: &str = "pl-dlq-reason";
pub const DLQ_DELIVERED_COUNT_HEADER: &str = "pl-dlq-delivered-count";
pub const DLQ_CONSUMER_HEADER: &str = "pl-dlq-consumer";
/// Set on a delivery that is the message's last allowed one (its value: the delivery count), so
/// a handler that keeps its own record of refusals can record a failure here as one: the bus
/// dead-letters a message that fails on its last delivery.
pub const FINAL_DELIVERY_HEADER: &str = "pl-final-delivery";

/// Publish integration events and consume them through durable consumers.
///
/// Delivery is at least once: a message is redelivered until acknowledged, so handlers must be
/// idempotent (see [`crate::run_consumer`] and [`crate::derived_event_id`]).
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Returns once the bus has durably accepted the message; the same id published twice is
    /// stored once (within the adapter's duplicate window).
    async fn publish(&self, msg: Message) -> Result<(), BusError>;

    /// Publishes `msgs` in order and returns once the bus has durably accepted all of them. An
    /// adapter may have several in flight at once (the relay's throughput over a network bus
    /// is otherwise one round trip per message). On an error some may have been accepted:
    /// publishing the same messages again stores each once, as for [`publish`](Self::publish).
    async fn publish_many(&self, msgs: Vec<Message>) -> Result<(), BusError> {
        for msg in msgs {
            self.publish(msg).await?;
        }
        Ok(())
    }

    /// Creates the durable consumer, or binds to it when it exists (its acknowledged progress
    /// is kept; its settings are updated to `spec`).
    async fn consumer(&self, spec: ConsumerSpec) -> Result<Box<dyn Consumer>, BusError>;
}

/// A durable consumer: progress is kept under `durable_name` across handles and restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub durable_name: String,
    /// NATS subject filters (`*` one token, `>` the rest); a message matching any is delivered.
    pub filter_subjects: Vec<String>,
    /// Deliveries of one message before it goes to the dead-letter subject.
    pub max_deliver: u32,
    /// A delivery neither acked nor nakked within this time is delivered again.
    pub ack_wait_ms: u64,
    /// Unacknowledged deliveries outstanding before the consumer stops receiving new messages.
    pub max_ack_pending: u32,
}

impl ConsumerSpec {
    /// A spec with defaults suited to the services: 5 deliveries, 30 s ack wait, 1000 pending.
    pub fn new(durable_name: impl Into<String>, filter_subjects: Vec<String>) -> Self {
        Self {
            durable_name: durable_name.into(),
            filter_subjects,
            max_deliver: 5,
            ack_wait_ms: 30_000,
            max_ack_pending: 1000,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), BusError> {
        check_durable_name(&self.durable_name)?;
        if self.filter_subjects.is_empty() || self.filter_subjects.len() > MAX_FILTER_SUBJECTS {
            return Err(BusError::InvalidConfig(format!(
                "consumer {} needs 1 to {MAX_FILTER_SUBJECTS} filter subjects, got {}",
                self.durable_name,
                self.filter_subjects.len()
            )));
        }
        for f in &self.filter_subjects {
            check_filter(f)?;
        }
        let in_range = |what: &str, v: u64, max: u64| {
            if v == 0 || v > max {
                Err(BusError::InvalidConfig(format!(
                    "consumer {}: {what} must be 1 to {max}, got {v}",
                    self.durable_name
                )))
            } else {
                Ok(())
            }
        };
        in_range("max_deliver", self.max_deliver.into(), MAX_DELIVER.into())?;
        in_range("ack_wait_ms", self.ack_wait_ms, MAX_ACK_WAIT_MS)?;
        in_range(
            "max_ack_pending",
            self.max_ack_pending.into(),
            MAX_ACK_PENDING.into(),
        )?;
        Ok(())
    }
}

/// One handle on a durable consumer.
#[async_trait]
pub trait Consumer: Send {
    /// The next message to handle, waiting until one is available. Cancel-safe: dropping the
    /// future loses no message (an unsettled delivery comes back after `ack_wait_ms`).
    async fn next(&mut self) -> Result<Delivery, BusError>;
}

/// How an adapter settles one delivery. Settling twice or after a redelivery is harmless.
#[async_trait]
pub(crate) trait Acker: Send + Sync {
    async fn ack(&self) -> Result<(), BusError>;
    async fn nak(&self, delay: Duration) -> Result<(), BusError>;
    /// Never deliver again, without counting it as handled.
    async fn term(&self) -> Result<(), BusError>;
    /// Publishes a dead letter on the same bus.
    async fn publish(&self, msg: Message) -> Result<(), BusError>;
    /// Publishes `letter`, then stops delivering the message. A bus that can do both at once
    /// (and must, to make progress when full) overrides this.
    async fn dead_letter(&self, letter: Message) -> Result<DeadLettered, BusError> {
        self.publish(letter).await?;
        self.term().await?;
        Ok(DeadLettered::Stored)
    }
}

/// What [`Acker::dead_letter`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLettered {
    Stored,
    /// The delivery was settled meanwhile (acked, or dead-lettered by another worker holding
    /// a redelivery): the message was dealt with, so no letter was stored.
    AlreadySettled,
}

/// A delivered message, to settle exactly once with [`ack`](Self::ack), [`nak`](Self::nak) or
/// [`dead_letter`](Self::dead_letter). Dropping it unsettled means redelivery after the ack wait.
pub struct Delivery {
    pub message: Message,
    /// 1 on the first delivery.
    pub delivered_count: u32,
    max_deliver: u32,
    durable_name: String,
    dead_letter_subject: String,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("delivered_count", &self.delivered_count)
            .field("max_deliver", &self.max_deliver)
            .field("durable_name", &self.durable_name)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    pub(crate) fn new(
        mut message: Message,
        delivered_count: u32,
        spec: &ConsumerSpec,
        dead_letter_subject: String,
        acker: Box<dyn Acker>,
    ) -> Self {
        if delivered_count >= spec.max_deliver {
            message.headers.insert(
                FINAL_DELIVERY_HEADER.to_owned(),
                delivered_count.to_string(),
            );
        }
        Self {
            message,
            delivered_count,
            max_deliver: spec.max_deliver,
            durable_name: spec.durable_name.clone(),
            dead_letter_subject,
            acker,
        }
    }

    /// The message is handled; it is not delivered to this consumer again.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// Handling failed and may succeed later: deliver again after `delay_ms` (clamped to
    /// [`MAX_NAK_DELAY_MS`]). On the last allowed delivery the message is dead-lettered instead.
    pub async fn nak(self, delay_ms: u64) -> Result<(), BusError> {
        if self.delivered_count >= self.max_deliver {
            let reason = format!("handling failed {} times", self.delivered_count);
            return self.dead_letter(&reason).await;
        }
        let delay = Duration::from_millis(delay_ms.min(MAX_NAK_DELAY_MS));
        self.acker.nak(delay).await
    }

    /// Handling can never succeed: publish the message to `<prefix>.dlq.<durable_name>` (with
    /// the original subject, id and `reason` in headers), then stop delivering it. The dead
    /// letter's id is derived from the original id, so doing this twice stores it once.
    pub async fn dead_letter(self, reason: &str) -> Result<(), BusError> {
        let letter = dead_letter_message(
            &self.message,
            &self.dead_letter_subject,
            &self.durable_name,
            self.delivered_count,
            reason,
        );
        match self.acker.dead_letter(letter).await? {
            DeadLettered::Stored => tracing::warn!(
                consumer = %self.durable_name,
                message_id = %self.message.id,
                subject = %self.message.subject,
                delivered_count = self.delivered_count,
                reason,
                "message dead-lettered"
            ),
            DeadLettered::AlreadySettled => tracing::debug!(
                consumer = %self.durable_name,
                message_id = %self.message.id,
                reason,
                "delivery already settled, no dead letter"
            ),
        }
        Ok(())
    }
}

pub(crate) fn dead_letter_message(
    original: &Message,
    dead_letter_subject: &str,
    durable_name: &str,
    delivered_count: u32,
    reason: &str,
) -> Message {
    let mut headers = original.headers.clone();
    headers.insert(
        DLQ_ORIGINAL_SUBJECT_HEADER.to_owned(),
        original.subject.clone(),
    );
    headers.insert(DLQ_ORIGINAL_ID_HEADER.to_owned(), original.id.to_string());
    headers.insert(DLQ_REASON_HEADER.to_owned(), header_safe(reason));
    headers.insert(
        DLQ_DELIVERED_COUNT_HEADER.to_owned(),
        delivered_count.to_string(),
    );
    headers.insert(DLQ_CONSUMER_HEADER.to_owned(), durable_name.to_owned());
    Message {
        id: derived_event_id(original.id, &format!("dead-letter:{durable_name}")),
        subject: dead_letter_subject.to_owned(),
        payload: original.payload.clone(),
        headers,
    }
}

/// A header value: no control characters, at most [`MAX_REASON_BYTES`].
fn header_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_REASON_BYTES));
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_REASON_BYTES {
            break;
        }
        out.push(c);
    }
    out
}
