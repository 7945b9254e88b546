//! The JetStream adapter and the relay against a real nats-server started by each test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_quiet, msg, next, source_event, spec, STEP_TIMEOUT};
use pl_bus::testkit::NatsServer;
use pl_bus::{
    Bus, BusError, ConsumerSpec, IntegrationEvent, NatsBus, NatsConfig, Relay, RelayConfig, Route,
    SharedBus, DLQ_ORIGINAL_ID_HEADER, DLQ_ORIGINAL_SUBJECT_HEADER, DLQ_REASON_HEADER,
    EVENT_TYPE_HEADER, SCHEMA_VERSION_HEADER,
};
use pl_eventlog::{EventMetadata, ExpectedVersion, MemoryLog, NewEvent, SharedStore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const STREAM: &str = "PL_TEST";

async fn connect(server: &NatsServer) -> NatsBus {
    NatsBus::connect(NatsConfig {
        request_timeout_ms: 1_000,
        ..NatsConfig::new(server.url(), STREAM, "pl")
    })
    .await
    .unwrap()
}

async fn stored_messages(bus: &NatsBus) -> u64 {
    let js = async_nats::jetstream::new(bus.client().clone());
    let mut stream = js.get_stream(STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn a_published_message_is_consumed_with_its_id_and_headers() {
    let server = NatsServer::start().await.unwrap();
    let bus = connect(&server).await;
    let mut consumer = bus.consumer(spec("reader", &["pl.crm.>"])).await.unwrap();
    let mut m = msg("pl.crm.PartnerApproved", 1);
    m.headers
        .insert("pl-event-type".into(), "PartnerApproved".into());
    bus.publish(m.clone()).await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(d.message, m);
    assert_eq!(d.delivered_count, 1);
    d.ack().await.unwrap();
}

#[tokio::test]
async fn a_republished_id_is_stored_once() {
    let server = NatsServer::start().await.unwrap();
    let bus = connect(&server).await;
    let mut consumer = bus.consumer(spec("reader", &["pl.>"])).await.unwrap();
    bus.publish(msg("pl.crm.X", 1)).await.unwrap();
    bus.publish(msg("pl.crm.X", 1)).await.unwrap();
    bus.publish(msg("pl.crm.X", 2)).await.unwrap();
    assert_eq!(stored_messages(&bus).await, 2);
    let first = next(&mut consumer).await;
    assert_eq!(first.message.id.as_u128(), 1);
    first.ack().await.unwrap();
    let second = next(&mut consumer).await;
    assert_eq!(second.message.id.as_u128(), 2);
    second.ack().await.unwrap();
}

#[tokio::test]
async fn a_batch_longer_than_the_publish_window_is_stored_whole_in_order_and_once_when_repeated() {
    let server = NatsServer::start().await.unwrap();
    let bus = connect(&server).await;
    let mut consumer = bus.consumer(spec("reader", &["pl.>"])).await.unwrap();
    // More than one window of publishes in flight (256), so acks are awaited in rounds.
    let batch: Vec<_> = (1..=600).map(|n| msg("pl.crm.X", n)).collect();
    bus.publish_many(batch.clone()).await.unwrap();
    // A relay retrying after a lost answer publishes the same batch again: nothing new.
    bus.publish_many(batch).await.unwrap();
    assert_eq!(stored_messages(&bus).await, 600);
    for n in 1..=600 {
        let d = next(&mut consumer).await;
        assert_eq!(d.message.id, Uuid::from_u128(n));
        d.ack().await.unwrap();
    }
}

#[tokio::test]
async fn a_batch_with_an_invalid_message_is_refused_before_any_is_published() {
    let server = NatsServer::start().await.unwrap();
    let bus = connect(&server).await;
    bus.publish(msg("pl.crm.X", 1)).await.unwrap();
    let batch = vec![msg("pl.crm.X", 2), msg("other.crm.X", 3)];
    let err = bus.publish_many(batch).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(stored_messages(&bus).await, 1);
}

#[tokio::test]
async fn an_unacked_message_comes_back_to_a_recreated_durable_consumer() {
    let server = NatsServer::start().await.unwrap();
    let bus = connect(&server).await;
    let s = ConsumerSpec {
        ack_wait_ms: 500,
        ..spec("worker", &["pl.>"])
    };
    let mut consumer = bus.consumer(s.clone()).await.unwrap();
    bus.publish(msg("pl.crm.X", 1)).await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(d.delivered_count, 1);
    // The crash: neither the delivery nor the consumer handle settles anything.
    drop(d);
    drop(consumer);
    let mut consumer = bus.consumer(s).await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(d.message.id.as_u128(), 1);
    assert_eq!(d.delivered_count, 2);
    d.ack().await.unwrap();
}

#[tokio::test]
async fn a_message_failing_max_deliver_times_is_published_to_the_dead_letter_subject() {
    let server = NatsServer::start().await.unwrap();
    let bus = connect(&server).await;
    let mut dlq = bus
        .consumer(spec("dlq-reader", &["pl.dlq.>"]))
        .await
        .unwrap();
    let mut consumer = bus
        .consumer(ConsumerSpec {
            max_deliver: 3,
            ..spec("worker", &["pl.crm.>"])
        })
        .await
        .unwrap();
    let original = msg("pl.crm.Poison", 1);
    bus.publish(original.clone()).await.unwrap();
    for attempt in 1..=3 {
        let d = next(&mut consumer).await;
        assert_eq!(d.delivered_count, attempt);
        d.nak(0).await.unwrap();
    }
    let letter = next(&mut dlq).await;
    assert_eq!(letter.message.subject, "pl.dlq.worker");
    assert_eq!(letter.message.payload, original.payload);
    assert_eq!(
        letter.message.headers[DLQ_ORIGINAL_SUBJECT_HEADER],
        "pl.crm.Poison"
    );
    assert_eq!(
        letter.message.headers[DLQ_ORIGINAL_ID_HEADER],
        original.id.to_string()
    );
    letter.ack().await.unwrap();
    // Terminated: the original is not delivered again.
    assert_quiet(&mut consumer, 300).await;
}

#[tokio::test]
async fn a_message_never_acked_is_dead_lettered_when_it_exceeds_max_deliver() {
    let server = NatsServer::start().await.unwrap();
    let bus = connect(&server).await;
    let mut dlq = bus
        .consumer(spec("dlq-reader", &["pl.dlq.>"]))
        .await
        .unwrap();
    let mut consumer = bus
        .consumer(ConsumerSpec {
            max_deliver: 1,
            ack_wait_ms: 300,
            ..spec("worker", &["pl.crm.>"])
        })
        .await
        .unwrap();
    bus.publish(msg("pl.crm.Hang", 1)).await.unwrap();
    drop(next(&mut consumer).await); // the handler hung on its only attempt
                                     // The over-limit redelivery is dead-lettered inside `next`, never handed out.
    let waiting = tokio::spawn(async move {
        let r = tokio::time::timeout(Duration::from_millis(1_500), consumer.next()).await;
        assert!(r.is_err(), "no delivery expected, got {r:?}");
    });
    let letter = next(&mut dlq).await;
    assert!(letter.message.headers[DLQ_REASON_HEADER].contains("max_deliver"));
    waiting.await.unwrap();
}

#[tokio::test]
async fn publish_fails_as_unavailable_while_nats_is_down_and_works_after_restart() {
    let mut server = NatsServer::start().await.unwrap();
    let bus = connect(&server).await;
    server.stop().await.unwrap();
    let started = tokio::time::Instant::now();
    let err = bus.publish(msg("pl.crm.X", 1)).await.unwrap_err();
    assert!(matches!(err, BusError::Unavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by request_timeout_ms"
    );
    server.restart().await.unwrap();
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        match bus.publish(msg("pl.crm.X", 1)).await {
            Ok(()) => break,
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {}
            Err(e) => panic!("publish after restart: {e}"),
        }
    }
    assert_eq!(stored_messages(&bus).await, 1);
}

#[tokio::test]
async fn a_full_stream_refuses_new_messages_as_backpressure_instead_of_dropping_old_ones() {
    let server = NatsServer::start().await.unwrap();
    let bus = NatsBus::connect(NatsConfig {
        max_messages: 2,
        request_timeout_ms: 1_000,
        ..NatsConfig::new(server.url(), STREAM, "pl")
    })
    .await
    .unwrap();
    bus.publish(msg("pl.crm.X", 1)).await.unwrap();
    bus.publish(msg("pl.crm.X", 2)).await.unwrap();
    let err = bus.publish(msg("pl.crm.X", 3)).await.unwrap_err();
    assert!(matches!(err, BusError::Full(_)), "{err}");
    assert!(err.is_retryable());
    assert_eq!(stored_messages(&bus).await, 2);
}

#[tokio::test]
async fn a_bus_started_while_nats_is_down_delivers_once_nats_is_up() {
    let mut server = NatsServer::start().await.unwrap();
    server.stop().await.unwrap();
    let strict = NatsBus::connect(NatsConfig {
        start_without_server: false,
        connect_timeout_ms: 500,
        ..NatsConfig::new(server.url(), STREAM, "pl")
    })
    .await
    .unwrap_err();
    assert!(matches!(strict, BusError::Unavailable(_)), "{strict}");

    // The default: start anyway; the stream and the consumer are created on first use.
    let bus = connect(&server).await;
    let mut consumer = bus.consumer(spec("late", &["pl.crm.>"])).await.unwrap();
    let err = bus.publish(msg("pl.crm.X", 1)).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    server.restart().await.unwrap();
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    while let Err(e) = bus.publish(msg("pl.crm.X", 1)).await {
        assert!(
            e.is_retryable() && tokio::time::Instant::now() < deadline,
            "{e}"
        );
    }
    let d = loop {
        match tokio::time::timeout(STEP_TIMEOUT, consumer.next())
            .await
            .unwrap()
        {
            Ok(d) => break d,
            Err(e) => assert!(
                e.is_retryable() && tokio::time::Instant::now() < deadline,
                "{e}"
            ),
        }
    };
    assert_eq!(d.message.id.as_u128(), 1);
    d.ack().await.unwrap();
}

fn relay_config(name: &str) -> RelayConfig {
    RelayConfig {
        name: name.to_owned(),
        subject_prefix: "pl".to_owned(),
        routes: vec![Route {
            stream_prefix: "order-".to_owned(),
            context: "orders".to_owned(),
            event_types: None,
        }],
        checkpoint_every_events: 10,
        checkpoint_every_ms: 100,
        retry_backoff_max_ms: 500,
        durable_checkpoints: true,
    }
}

async fn append_range(store: &SharedStore, range: std::ops::Range<u64>) {
    for n in range {
        store
            .append(
                &format!("order-{}", n % 7),
                ExpectedVersion::Any,
                vec![source_event(n)],
            )
            .await
            .unwrap();
    }
}

async fn wait_caught_up(
    relay_position: &mut tokio::sync::watch::Receiver<u64>,
    store: &SharedStore,
) {
    let head = *store.watch_head().borrow();
    tokio::time::timeout(STEP_TIMEOUT, relay_position.wait_for(|p| *p >= head))
        .await
        .expect("relay caught up in time")
        .unwrap();
}

#[tokio::test]
async fn the_relay_resumes_from_its_checkpoint_after_a_restart_without_gaps() {
    let server = NatsServer::start().await.unwrap();
    let nats = connect(&server).await;
    let bus: SharedBus = Arc::new(nats.clone());
    let store: SharedStore = Arc::new(MemoryLog::default());
    let mut consumer = nats
        .consumer(spec("reader", &["pl.orders.>"]))
        .await
        .unwrap();

    // Round 1: a graceful stop writes a final checkpoint.
    append_range(&store, 0..45).await;
    let relay = Relay::new(store.clone(), bus.clone(), relay_config("orders")).unwrap();
    let checkpoint_stream = relay.checkpoint_stream();
    let mut position = relay.watch_position();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    wait_caught_up(&mut position, &store).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let last = store
        .stream_version(&checkpoint_stream)
        .await
        .unwrap()
        .unwrap();
    let checkpoint = &store
        .read_stream(&checkpoint_stream, last, 1)
        .await
        .unwrap()[0];
    let stored: serde_json::Value = checkpoint.data_as().unwrap();
    let resumed_from = stored["next_position"].as_u64().unwrap();
    assert!(
        resumed_from >= 45,
        "final checkpoint covers every event: {stored}"
    );

    // Round 2: resumes there; then a crash (abort) between checkpoints.
    append_range(&store, 45..90).await;
    let relay = Relay::new(store.clone(), bus.clone(), relay_config("orders")).unwrap();
    let mut position = relay.watch_position();
    let task = tokio::spawn(relay.run(CancellationToken::new()));
    tokio::time::timeout(STEP_TIMEOUT, position.wait_for(|p| *p >= resumed_from))
        .await
        .unwrap()
        .unwrap();
    assert!(*position.borrow() >= resumed_from, "did not start from 0");
    wait_caught_up(&mut position, &store).await;
    task.abort();
    let _ = task.await;

    // Round 3: after the crash, what was published since the checkpoint is published again
    // and de-duplicated.
    append_range(&store, 90..120).await;
    let relay = Relay::new(store.clone(), bus.clone(), relay_config("orders")).unwrap();
    let mut position = relay.watch_position();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    wait_caught_up(&mut position, &store).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    assert_eq!(stored_messages(&nats).await, 120);
    let mut seen = BTreeSet::new();
    let mut last_position = None;
    for _ in 0..120 {
        let d = next(&mut consumer).await;
        let ev = IntegrationEvent::from_message(&d.message).unwrap();
        assert!(last_position < Some(ev.position), "in log order");
        last_position = Some(ev.position);
        let n: serde_json::Value = ev.data_as().unwrap();
        assert!(seen.insert(n["n"].as_u64().unwrap()), "each event once");
        d.ack().await.unwrap();
    }
    assert_eq!(seen, (0..120).collect::<BTreeSet<_>>(), "no gaps");
    assert_quiet(&mut consumer, 200).await;
}

#[tokio::test]
async fn the_trace_context_of_an_event_arrives_in_the_message_headers() {
    let server = NatsServer::start().await.unwrap();
    let nats = connect(&server).await;
    let store: SharedStore = Arc::new(MemoryLog::default());
    let mut consumer = nats
        .consumer(spec("reader", &["pl.orders.*"]))
        .await
        .unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tracestate = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let mut metadata = EventMetadata::at(common::at()).with_correlation(Uuid::from_u128(9));
    metadata.trace_context = BTreeMap::from([
        ("traceparent".to_owned(), traceparent.to_owned()),
        ("tracestate".to_owned(), tracestate.to_owned()),
    ]);
    let data = serde_json::json!({ "amount": "12.30", "currency": "EUR", "big": 12345678901234567890_u64 });
    let event = NewEvent::json(Uuid::from_u128(77), "OrderPlaced", 3, &data, metadata).unwrap();
    store
        .append("order-1", ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
    let relay = Relay::new(store.clone(), Arc::new(nats.clone()), relay_config("trace")).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));

    let d = next(&mut consumer).await;
    assert_eq!(d.message.subject, "pl.orders.OrderPlaced");
    assert_eq!(d.message.id, Uuid::from_u128(77));
    assert_eq!(d.message.headers["traceparent"], traceparent);
    assert_eq!(d.message.headers["tracestate"], tracestate);
    assert_eq!(d.message.headers[EVENT_TYPE_HEADER], "OrderPlaced");
    assert_eq!(d.message.headers[SCHEMA_VERSION_HEADER], "3");
    let ev = IntegrationEvent::from_message(&d.message).unwrap();
    assert_eq!(ev.stream, "order-1");
    assert_eq!(ev.version, 0);
    assert_eq!(ev.schema_version, 3);
    assert_eq!(ev.correlation_id, Some(Uuid::from_u128(9)));
    assert_eq!(ev.occurred_at, common::at());
    assert_eq!(ev.data_as::<serde_json::Value>().unwrap(), data);
    d.ack().await.unwrap();
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_server_requiring_a_password_is_reached_with_the_configured_user_and_refused_without() {
    let server = NatsServer::start_with_args(&["--user", "pl", "--pass", "s3cret"])
        .await
        .unwrap();
    let config = |auth: Option<pl_bus::NatsUser>| NatsConfig {
        request_timeout_ms: 1_000,
        connect_timeout_ms: 1_000,
        start_without_server: false,
        auth,
        ..NatsConfig::new(server.url(), STREAM, "pl")
    };
    let refused = NatsBus::connect(config(None)).await;
    assert!(
        matches!(refused, Err(BusError::Unavailable(_))),
        "{refused:?}"
    );
    let user = pl_bus::NatsUser {
        user: "pl".into(),
        password: "s3cret".into(),
    };
    assert!(
        !format!("{user:?}").contains("s3cret"),
        "the password is never printed"
    );
    let bus = NatsBus::connect(config(Some(user))).await.unwrap();
    bus.publish(msg("pl.crm.PartnerApplied", 1)).await.unwrap();
    assert_eq!(stored_messages(&bus).await, 1);
}

#[tokio::test]
async fn an_event_over_the_payload_limit_stops_the_relay_after_every_event_before_it_is_published()
{
    let server = NatsServer::start().await.unwrap();
    let nats = NatsBus::connect(NatsConfig {
        request_timeout_ms: 1_000,
        max_payload_bytes: 4 * 1024,
        ..NatsConfig::new(server.url(), STREAM, "pl")
    })
    .await
    .unwrap();
    let bus: SharedBus = Arc::new(nats.clone());
    let store: SharedStore = Arc::new(MemoryLog::default());
    // Five small events, one too large for the bus, then more: all committed before the
    // relay starts, so they reach it as one batch.
    append_range(&store, 0..5).await;
    let big = NewEvent::json(
        Uuid::from_u128(0xB16),
        "OrderPlaced",
        1,
        &serde_json::json!({ "blob": "x".repeat(8 * 1024) }),
        EventMetadata::at(common::at()),
    )
    .unwrap();
    store
        .append("order-big", ExpectedVersion::Any, vec![big])
        .await
        .unwrap();
    append_range(&store, 6..9).await;
    let relay = Relay::new(store.clone(), bus, relay_config("orders")).unwrap();
    let position = relay.watch_position();
    let outcome = tokio::time::timeout(STEP_TIMEOUT, relay.run(CancellationToken::new()))
        .await
        .unwrap();
    assert!(
        outcome.is_err(),
        "the relay stops at the event it cannot publish"
    );
    assert_eq!(stored_messages(&nats).await, 5);
    assert_eq!(
        *position.borrow(),
        5,
        "it stopped exactly at the large event"
    );
}
