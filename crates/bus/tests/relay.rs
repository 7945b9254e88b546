//! The relay over the in-process bus: routing, checkpoints and backpressure, without servers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{assert_quiet, at, next, spec, STEP_TIMEOUT};
use pl_bus::{
    Bus, BusError, InProcessBus, InProcessConfig, IntegrationEvent, Relay, RelayConfig, Route,
    SharedBus, CHECKPOINT_STREAM_PREFIX,
};
use pl_eventlog::{EventMetadata, ExpectedVersion, MemoryLog, NewEvent, SharedStore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn event(n: u128, event_type: &str) -> NewEvent {
    NewEvent::json(
        Uuid::from_u128(n),
        event_type,
        1,
        &serde_json::json!({ "n": n }),
        EventMetadata::at(at()),
    )
    .unwrap()
}

fn config(routes: Vec<Route>) -> RelayConfig {
    RelayConfig {
        name: "test".to_owned(),
        subject_prefix: "pl".to_owned(),
        routes,
        checkpoint_every_events: 2,
        checkpoint_every_ms: 50,
        retry_backoff_max_ms: 100,
        durable_checkpoints: true,
    }
}

fn route(stream_prefix: &str, context: &str, types: Option<&[&str]>) -> Route {
    Route {
        stream_prefix: stream_prefix.to_owned(),
        context: context.to_owned(),
        event_types: types.map(|t| t.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>()),
    }
}

#[tokio::test]
async fn the_relay_publishes_routed_event_types_only_and_never_its_checkpoints() {
    let store: SharedStore = Arc::new(MemoryLog::default());
    let bus = InProcessBus::new(InProcessConfig::new("pl")).unwrap();
    let mut all = bus.consumer(spec("all", &["pl.>"])).await.unwrap();
    let relay = Relay::new(
        store.clone(),
        Arc::new(bus.clone()),
        config(vec![
            route("partner-", "crm", Some(&["PartnerApproved"])),
            // A catch-all route would also match the checkpoint streams; they are skipped.
            route("", "misc", None),
        ]),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    for (n, stream, ty) in [
        (1, "partner-1", "PartnerApplied"),
        (2, "partner-1", "PartnerApproved"),
        (3, "payout-9", "PayoutSettled"),
    ] {
        store
            .append(stream, ExpectedVersion::Any, vec![event(n, ty)])
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next(&mut all).await;
        got.push(d.message.subject.clone());
        d.ack().await.unwrap();
    }
    // PartnerApplied fails the first route's type filter and falls to the catch-all.
    assert_eq!(
        got,
        [
            "pl.misc.PartnerApplied",
            "pl.crm.PartnerApproved",
            "pl.misc.PayoutSettled"
        ]
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_quiet(&mut all, 50).await;
    let checkpoint = format!("{CHECKPOINT_STREAM_PREFIX}test");
    assert!(store.stream_version(&checkpoint).await.unwrap().is_some());
}

#[tokio::test]
async fn the_relay_waits_out_a_full_bus_without_skipping_or_reordering() {
    let store: SharedStore = Arc::new(MemoryLog::default());
    let bus = InProcessBus::new(InProcessConfig {
        max_messages: 2,
        ..InProcessConfig::new("pl")
    })
    .unwrap();
    let mut slow = bus.consumer(spec("slow", &["pl.orders.>"])).await.unwrap();
    let shared: SharedBus = Arc::new(bus.clone());
    let relay = Relay::new(
        store.clone(),
        shared,
        config(vec![route("order-", "orders", None)]),
    )
    .unwrap();
    let mut position = relay.watch_position();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    for n in 0..10 {
        store
            .append(
                "order-1",
                ExpectedVersion::Any,
                vec![event(n + 1, "OrderPlaced")],
            )
            .await
            .unwrap();
    }
    // The bus holds two; the relay is stuck behind them, retrying.
    // (Checked on each relay step; checkpoint events interleave with the orders in the log.)
    tokio::time::timeout(
        STEP_TIMEOUT,
        position.wait_for(|_| bus.retained_messages() >= 2),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(*position.borrow() < 10);
    let direct = bus
        .publish(common::msg("pl.orders.X", 999))
        .await
        .unwrap_err();
    assert!(matches!(direct, BusError::Full(_)));
    for n in 0..10 {
        let d = next(&mut slow).await;
        let ev = IntegrationEvent::from_message(&d.message).unwrap();
        assert_eq!(ev.id, Uuid::from_u128(n + 1), "in order, none skipped");
        d.ack().await.unwrap();
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_relay_config_with_unusable_names_is_refused() {
    let store: SharedStore = Arc::new(MemoryLog::default());
    let bus: SharedBus = Arc::new(InProcessBus::new(InProcessConfig::new("pl")).unwrap());
    for bad in [
        RelayConfig {
            name: "has space".into(),
            ..config(vec![route("a-", "a", None)])
        },
        config(vec![route("a-", "dlq", None)]),
        config(vec![route("a-", "a.b", None)]),
        config(vec![]),
        RelayConfig {
            checkpoint_every_events: 0,
            ..config(vec![route("a-", "a", None)])
        },
    ] {
        let err = Relay::new(store.clone(), bus.clone(), bad.clone()).unwrap_err();
        assert!(matches!(err, BusError::InvalidConfig(_)), "{bad:?}: {err}");
    }
}
