//! Helpers shared by the bus tests.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use pl_bus::{Consumer, ConsumerSpec, Delivery, Message};
use pl_eventlog::{EventMetadata, NewEvent};
use uuid::Uuid;

/// Long enough for any single step on a loaded 2-core machine; a hang fails instead of stalling.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

pub fn msg(subject: &str, n: u128) -> Message {
    Message {
        id: Uuid::from_u128(n),
        subject: subject.to_owned(),
        payload: Bytes::from(format!("{{\"n\":{n}}}")),
        headers: BTreeMap::new(),
    }
}

pub fn spec(name: &str, filters: &[&str]) -> ConsumerSpec {
    ConsumerSpec {
        durable_name: name.to_owned(),
        filter_subjects: filters.iter().map(|f| (*f).to_owned()).collect(),
        max_deliver: 5,
        ack_wait_ms: 30_000,
        max_ack_pending: 1000,
    }
}

pub async fn next(consumer: &mut Box<dyn Consumer>) -> Delivery {
    match tokio::time::timeout(STEP_TIMEOUT, consumer.next()).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => panic!("consumer failed: {e}"),
        Err(_) => panic!("no delivery within {STEP_TIMEOUT:?}"),
    }
}

/// Asserts nothing is delivered within `ms` (used only to prove an absence).
pub async fn assert_quiet(consumer: &mut Box<dyn Consumer>, ms: u64) {
    if let Ok(d) = tokio::time::timeout(Duration::from_millis(ms), consumer.next()).await {
        panic!("unexpected delivery: {d:?}");
    }
}

pub fn at() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).expect("valid timestamp")
}

/// Event `n` of a source stream, with a deterministic id.
pub fn source_event(n: u64) -> NewEvent {
    NewEvent::json(
        Uuid::from_u128(0xE000_0000_0000_0000_0000_0000_0000_0000 | u128::from(n)),
        "OrderPlaced",
        1,
        &serde_json::json!({ "n": n }),
        EventMetadata::at(at()),
    )
    .expect("serialisable")
}
