//! The fault test: 10,000 events flow from an event log through the relay, NATS JetStream and an
//! idempotent consumer into another log, while NATS is stopped for seconds in the middle. Every
//! event must be applied exactly once, and commands (appends) must keep succeeding throughout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::source_event;
use pl_bus::testkit::NatsServer;
use pl_bus::{
    derived_event_id, run_consumer_with, Bus, ConsumerSpec, HandleError, IntegrationEvent, Message,
    NatsBus, NatsConfig, Relay, RelayConfig, Route, RunnerConfig,
};
use pl_eventlog::{EventMetadata, ExpectedVersion, MemoryLog, NewEvent, SharedStore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const EVENTS: u64 = 10_000;
/// Appended before the outage, during it, and after it.
const BEFORE: u64 = 3_000;
const DURING: u64 = 4_000;
const BATCH: u64 = 10;
/// The deliberate outage.
const OUTAGE: Duration = Duration::from_secs(4);
/// The whole flow must have recovered within this after NATS is back.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);

async fn append_batches(store: &SharedStore, range: std::ops::Range<u64>) {
    let mut n = range.start;
    while n < range.end {
        let end = (n + BATCH).min(range.end);
        let events: Vec<NewEvent> = (n..end).map(source_event).collect();
        // One stream per 100 orders, so appends spread over streams like real commands.
        store
            .append(&format!("order-{}", n / 100), ExpectedVersion::Any, events)
            .await
            .expect("appends succeed whatever the state of NATS");
        n = end;
    }
}

/// The consumer under test: applies an order by appending one event with a derived id.
async fn apply(sink: SharedStore, handled: Arc<AtomicU64>, m: Message) -> Result<(), HandleError> {
    handled.fetch_add(1, Ordering::Relaxed);
    let ev =
        IntegrationEvent::from_message(&m).map_err(|e| HandleError::Permanent(e.to_string()))?;
    let applied = NewEvent::json(
        derived_event_id(ev.id, "apply-order"),
        "OrderApplied",
        1,
        &serde_json::json!({ "source_id": ev.id, "source_position": ev.position }),
        EventMetadata::at(ev.occurred_at).with_causation(ev.id),
    )
    .map_err(|e| HandleError::Permanent(e.to_string()))?;
    sink.append("applied", ExpectedVersion::Any, vec![applied])
        .await
        .map_err(|e| HandleError::Retry(e.to_string()))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_applied_exactly_once_across_a_nats_outage() {
    let mut server = NatsServer::start().await.unwrap();
    let nats = NatsBus::connect(NatsConfig {
        request_timeout_ms: 1_000,
        reconnect_delay_max_ms: 250,
        ..NatsConfig::new(server.url(), "PL_FAULT", "pl")
    })
    .await
    .unwrap();
    let source: SharedStore = Arc::new(MemoryLog::default());
    let sink: SharedStore = Arc::new(MemoryLog::default());
    let shutdown = CancellationToken::new();

    let consumer = nats
        .consumer(ConsumerSpec {
            durable_name: "order-applier".to_owned(),
            filter_subjects: vec!["pl.orders.>".to_owned()],
            max_deliver: 50,
            ack_wait_ms: 2_000,
            max_ack_pending: 1_000,
        })
        .await
        .unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let runner = tokio::spawn(run_consumer_with(
        consumer,
        {
            let sink = sink.clone();
            let handled = handled.clone();
            move |m| apply(sink.clone(), handled.clone(), m)
        },
        shutdown.clone(),
        RunnerConfig {
            bus_backoff_max_ms: 250,
            ..RunnerConfig::default()
        },
    ));
    let relay = Relay::new(
        source.clone(),
        Arc::new(nats.clone()),
        RelayConfig {
            name: "orders".to_owned(),
            subject_prefix: "pl".to_owned(),
            routes: vec![Route {
                stream_prefix: "order-".to_owned(),
                context: "orders".to_owned(),
                event_types: None,
            }],
            checkpoint_every_events: 500,
            checkpoint_every_ms: 250,
            retry_backoff_max_ms: 250,
            durable_checkpoints: true,
        },
    )
    .unwrap();
    let relay_position = relay.watch_position();
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let mut applied = sink.watch_head();

    // Before: the flow is running when NATS goes away.
    append_batches(&source, 0..BEFORE).await;
    tokio::time::timeout(
        Duration::from_secs(60),
        applied.wait_for(|n| *n >= BEFORE / 3),
    )
    .await
    .expect("the flow started")
    .unwrap();

    // During: NATS is down; commands (appends) keep succeeding, spread over the outage.
    server.stop().await.unwrap();
    let outage_started = Instant::now();
    let applied_at_stop = *applied.borrow();
    let slices = DURING / 100;
    for slice in 0..slices {
        let from = BEFORE + slice * 100;
        append_batches(&source, from..from + 100).await;
        tokio::time::sleep_until(outage_started + OUTAGE * (slice as u32 + 1) / slices as u32)
            .await;
    }
    let relay_stalled_at = *relay_position.borrow();
    let source_head = *source.watch_head().borrow();
    assert!(
        relay_stalled_at < source_head,
        "the relay cannot have published everything while NATS was down"
    );
    server.restart().await.unwrap();
    let restarted = Instant::now();
    let outage = outage_started.elapsed();

    // After: more commands, then everything must arrive.
    append_batches(&source, BEFORE + DURING..EVENTS).await;
    let recovered = tokio::time::timeout(RECOVERY_TIMEOUT, applied.wait_for(|n| *n >= EVENTS))
        .await
        .is_ok_and(|r| r.is_ok());
    if !recovered {
        panic!(
            "only {} of {EVENTS} applied {RECOVERY_TIMEOUT:?} after the restart; relay at {} of {}; nats log:\n{}",
            *applied.borrow(),
            *relay_position.borrow(),
            *source.watch_head().borrow(),
            server.log()
        );
    }
    let recovery = restarted.elapsed();
    shutdown.cancel();
    relay_task.await.unwrap().unwrap();
    runner.await.unwrap().unwrap();

    // Exactly once: one applied event per source event, and nothing else.
    let applied_events = sink.read_stream("applied", 0, 4096).await.unwrap();
    let mut all = applied_events;
    while (all.len() as u64) < EVENTS + 1 {
        let more = sink
            .read_stream("applied", all.len() as u64, 4096)
            .await
            .unwrap();
        if more.is_empty() {
            break;
        }
        all.extend(more);
    }
    assert_eq!(
        all.len() as u64,
        EVENTS,
        "no event applied twice, none missing"
    );
    let ids: BTreeSet<Uuid> = all.iter().map(|e| e.id).collect();
    assert_eq!(ids.len() as u64, EVENTS, "distinct derived ids");
    let sources: BTreeSet<Uuid> = all
        .iter()
        .map(|e| e.metadata.causation_id.expect("causation id"))
        .collect();
    let expected: BTreeSet<Uuid> = (0..EVENTS).map(|n| source_event(n).id).collect();
    assert_eq!(sources, expected, "each source event applied once");
    let js = async_nats::jetstream::new(nats.client().clone());
    let stored = js
        .get_stream("PL_FAULT")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(
        stored, EVENTS,
        "jetstream de-duplicated every re-publish; no dead letters"
    );

    eprintln!(
        "fault test: {EVENTS} events; {applied_at_stop} applied when NATS stopped; outage {} ms \
         ({DURING} events appended during it, relay stalled at position {relay_stalled_at} of \
         {source_head}); all applied {} ms after restart; {} handler calls for {EVENTS} events",
        outage.as_millis(),
        recovery.as_millis(),
        handled.load(Ordering::Relaxed),
    );
}
