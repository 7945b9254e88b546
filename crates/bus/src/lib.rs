//! The bus port and its adapters: how integration events leave a service's event log and reach
//! other services, at least once and in log order.
//!
//! [`Bus`] publishes [`Message`]s (id = event id, de-duplicated by the bus) and hands them to
//! durable [`Consumer`]s that ack, nak or dead-letter each [`Delivery`]. Two adapters share its
//! semantics: [`InProcessBus`] for `up` mode and [`NatsBus`] over NATS JetStream. The [`Relay`]
//! tails the event log and publishes, so services never dual-write; [`run_consumer`] and
//! [`derived_event_id`] make consumers idempotent.
//!
//! This crate never decides business facts: it moves events it does not interpret, never
//! publishes anything that is not in the log first, and never acknowledges a message its
//! handler did not handle. The relay is the only writer it has to the log, and only of its own
//! checkpoints.

#![forbid(unsafe_code)]

mod consumer;
mod error;
mod memory;
mod message;
mod nats;
mod port;
mod relay;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use consumer::{
    derived_event_id, lane_key, run_consumer, run_consumer_batched, run_consumer_keyed,
    run_consumer_with, HandleError, RunnerConfig, DERIVED_EVENT_ID_NAMESPACE,
};
pub use error::BusError;
pub use memory::{InProcessBus, InProcessConfig};
pub use message::{
    dead_letter_subject, subject, subject_matches, Message, DEAD_LETTER_CONTEXT, MAX_HEADERS,
    MAX_HEADER_BYTES, MAX_SUBJECT_BYTES,
};
pub use nats::{NatsBus, NatsConfig, NatsUser};
pub use port::{
    Bus, Consumer, ConsumerSpec, Delivery, SharedBus, DLQ_CONSUMER_HEADER,
    DLQ_DELIVERED_COUNT_HEADER, DLQ_ORIGINAL_ID_HEADER, DLQ_ORIGINAL_SUBJECT_HEADER,
    DLQ_REASON_HEADER, FINAL_DELIVERY_HEADER, MAX_ACK_PENDING, MAX_ACK_WAIT_MS, MAX_DELIVER,
    MAX_NAK_DELAY_MS,
};
pub use relay::{
    integration_message, IntegrationEvent, Relay, RelayConfig, Route, CHECKPOINT_EVENT_TYPE,
    CHECKPOINT_STREAM_PREFIX, EVENT_TYPE_HEADER, SCHEMA_VERSION_HEADER, TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
};
