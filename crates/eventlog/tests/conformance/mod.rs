//! The conformance suite every adapter of the event-store port runs. Each case gets a fresh,
//! empty store from the adapter's harness; `conformance_suite!` turns every case into a test.

#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pl_eventlog::{
    verify, verify_stream, EventMetadata, ExpectedVersion, LogError, NewEvent, SharedStore,
    StreamAppend, Subscription, SubscriptionFilter, MAX_APPEND_STREAMS,
};
use serde_json::json;
use uuid::Uuid;

/// A fresh store plus whatever must live as long as it (a temporary directory, a connection).
pub struct Harness {
    pub store: SharedStore,
    pub guard: Box<dyn std::any::Any + Send>,
}

pub fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600 + secs, 0).unwrap()
}

pub fn id() -> Uuid {
    #[allow(clippy::disallowed_methods)] // tests need fresh ids; domain code never does this
    Uuid::new_v4()
}

pub fn ev(event_type: &str, n: u64) -> NewEvent {
    let mut md = EventMetadata::at(at(n as i64)).with_correlation(Uuid::from_u128(9));
    md.trace_context.insert(
        "traceparent".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    NewEvent::json(
        id(),
        event_type,
        1,
        &json!({ "n": n, "amount": "12.34" }),
        md,
    )
    .unwrap()
}

fn stream(name: &str) -> String {
    // Unique per case, so adapters backed by a shared server (EventStoreDB) stay isolated.
    format!("{name}-{}", id().simple())
}

pub async fn append_then_read_returns_the_events_with_store_assigned_fields(h: Harness) {
    let s = stream("partner");
    let events = vec![ev("A", 1), ev("B", 2), ev("C", 3)];
    let r = h
        .store
        .append(&s, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    assert_eq!(r.last_version, 2);
    assert!(r.first_position < r.last_position);
    let read = h.store.read_stream(&s, 0, 100).await.unwrap();
    assert_eq!(read.len(), 3);
    for (i, (got, sent)) in read.iter().zip(&events).enumerate() {
        assert_eq!(got.stream, s);
        assert_eq!(got.version, i as u64);
        assert_eq!(got.id, sent.id);
        assert_eq!(got.event_type, sent.event_type);
        assert_eq!(got.schema_version, 1);
        assert_eq!(
            got.data_as::<serde_json::Value>().unwrap()["n"],
            json!(i + 1)
        );
        assert_eq!(got.metadata, sent.metadata);
    }
    assert!(read.windows(2).all(|w| w[0].position < w[1].position));
    assert!(read
        .windows(2)
        .all(|w| w[0].recorded_at <= w[1].recorded_at));
    assert_eq!(read[0].position, r.first_position);
    assert_eq!(read[2].position, r.last_position);
    assert_eq!(h.store.stream_version(&s).await.unwrap(), Some(2));
}

pub async fn no_stream_is_rejected_once_the_stream_exists(h: Harness) {
    let s = stream("plan");
    h.store
        .append(&s, ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let err = h
        .store
        .append(&s, ExpectedVersion::NoStream, vec![ev("A", 2)])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        LogError::WrongExpectedVersion {
            stream: s.clone(),
            expected: ExpectedVersion::NoStream,
            actual: Some(0)
        }
    );
}

pub async fn a_stale_exact_version_is_rejected_with_expected_and_actual(h: Harness) {
    let s = stream("payout");
    h.store
        .append(&s, ExpectedVersion::NoStream, vec![ev("A", 1), ev("B", 2)])
        .await
        .unwrap();
    let err = h
        .store
        .append(&s, ExpectedVersion::Exact(0), vec![ev("C", 3)])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        LogError::WrongExpectedVersion {
            stream: s.clone(),
            expected: ExpectedVersion::Exact(0),
            actual: Some(1)
        }
    );
    assert!(err.is_conflict());
    let err = h
        .store
        .append(
            &stream("missing"),
            ExpectedVersion::Exact(0),
            vec![ev("C", 3)],
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        LogError::WrongExpectedVersion { actual: None, .. }
    ));
    let ok = h
        .store
        .append(&s, ExpectedVersion::Exact(1), vec![ev("C", 3)])
        .await
        .unwrap();
    assert_eq!(ok.last_version, 2);
}

pub async fn any_appends_after_whatever_is_there(h: Harness) {
    let s = stream("any");
    let a = h
        .store
        .append(&s, ExpectedVersion::Any, vec![ev("A", 1)])
        .await
        .unwrap();
    let b = h
        .store
        .append(&s, ExpectedVersion::Any, vec![ev("A", 2)])
        .await
        .unwrap();
    assert_eq!((a.last_version, b.last_version), (0, 1));
}

pub async fn reappending_the_same_events_returns_the_original_result_and_writes_nothing(
    h: Harness,
) {
    let s = stream("idem");
    let batch = vec![ev("A", 1), ev("B", 2)];
    let first = h
        .store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    h.store
        .append(&s, ExpectedVersion::Exact(1), vec![ev("C", 3)])
        .await
        .unwrap();
    let again = h
        .store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(first, again);
    let single = vec![ev("D", 4)];
    let d = h
        .store
        .append(&s, ExpectedVersion::Exact(2), single.clone())
        .await
        .unwrap();
    assert_eq!(
        h.store
            .append(&s, ExpectedVersion::Exact(2), single.clone())
            .await
            .unwrap(),
        d
    );
    assert_eq!(
        h.store
            .append(&s, ExpectedVersion::Any, single)
            .await
            .unwrap(),
        d
    );
    assert_eq!(h.store.read_stream(&s, 0, 100).await.unwrap().len(), 4);
}

pub async fn reusing_an_event_id_with_a_different_body_is_rejected(h: Harness) {
    let s = stream("idem");
    let original = ev("A", 1);
    h.store
        .append(&s, ExpectedVersion::NoStream, vec![original.clone()])
        .await
        .unwrap();
    let mut changed = ev("A", 2);
    changed.id = original.id;
    let err = h
        .store
        .append(&s, ExpectedVersion::NoStream, vec![changed])
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::EventIdConflict { event_id, .. } if event_id == original.id));
    assert_eq!(h.store.read_stream(&s, 0, 100).await.unwrap().len(), 1);
}

pub async fn reusing_an_event_id_in_another_stream_is_rejected(h: Harness) {
    let e = ev("A", 1);
    h.store
        .append(&stream("one"), ExpectedVersion::Any, vec![e.clone()])
        .await
        .unwrap();
    let other = stream("two");
    let err = h
        .store
        .append(&other, ExpectedVersion::Any, vec![e])
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::EventIdConflict { .. }), "{err:?}");
    assert_eq!(h.store.stream_version(&other).await.unwrap(), None);
}

pub async fn an_append_mixing_stored_and_new_ids_is_rejected_whole(h: Harness) {
    let s = stream("mixed");
    let a = ev("A", 1);
    h.store
        .append(&s, ExpectedVersion::NoStream, vec![a.clone()])
        .await
        .unwrap();
    let err = h
        .store
        .append(&s, ExpectedVersion::Any, vec![a, ev("B", 2)])
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::EventIdConflict { .. }), "{err:?}");
    assert_eq!(h.store.stream_version(&s).await.unwrap(), Some(0));
}

fn part(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend {
        stream: stream.to_owned(),
        expected,
        events,
    }
}

pub async fn a_multi_stream_append_stores_each_part_in_order_and_a_retry_writes_nothing(
    h: Harness,
) {
    let (decisions, outbox) = (stream("decisions"), stream("outbox"));
    h.store
        .append(
            &decisions,
            ExpectedVersion::NoStream,
            vec![ev("Earlier", 0)],
        )
        .await
        .unwrap();
    let parts = vec![
        part(
            &decisions,
            ExpectedVersion::Exact(0),
            vec![ev("Decided", 1)],
        ),
        part(
            &outbox,
            ExpectedVersion::NoStream,
            vec![ev("Published", 2), ev("Published", 3)],
        ),
    ];
    let results = h.store.append_streams(parts.clone()).await.unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].last_version, 1);
    assert_eq!(results[1].last_version, 1);
    assert!(
        results[0].last_position < results[1].first_position,
        "parts are stored in the order given"
    );
    let published = h.store.read_stream(&outbox, 0, 10).await.unwrap();
    assert_eq!(published.len(), 2);
    assert_eq!(published[0].id, parts[1].events[0].id);
    assert_eq!(
        h.store.stream_version(&decisions).await.unwrap(),
        Some(1),
        "the first part is stored too"
    );

    let before = head(&h.store).await;
    let again = h.store.append_streams(parts).await.unwrap();
    assert_eq!(again, results, "a retry answers the original results");
    assert_eq!(head(&h.store).await, before, "and writes nothing");
}

pub async fn a_multi_stream_append_never_stores_a_part_after_one_that_conflicts(h: Harness) {
    let (a, b, c) = (stream("a"), stream("b"), stream("c"));
    h.store
        .append(&b, ExpectedVersion::NoStream, vec![ev("Taken", 0)])
        .await
        .unwrap();
    let err = h
        .store
        .append_streams(vec![
            part(&a, ExpectedVersion::NoStream, vec![ev("A", 1)]),
            part(&b, ExpectedVersion::NoStream, vec![ev("B", 2)]),
            part(&c, ExpectedVersion::NoStream, vec![ev("C", 3)]),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LogError::WrongExpectedVersion { stream, .. } if *stream == b),
        "{err:?}"
    );
    assert_eq!(h.store.stream_version(&b).await.unwrap(), Some(0));
    assert_eq!(h.store.stream_version(&c).await.unwrap(), None);
}

/// Only for adapters that append the parts atomically (not EventStoreDB).
pub async fn a_multi_stream_append_with_a_conflict_in_any_part_stores_nothing(h: Harness) {
    let (a, b) = (stream("a"), stream("b"));
    h.store
        .append(&b, ExpectedVersion::NoStream, vec![ev("Taken", 0)])
        .await
        .unwrap();
    let before = head(&h.store).await;
    let err = h
        .store
        .append_streams(vec![
            part(&a, ExpectedVersion::NoStream, vec![ev("A", 1)]),
            part(&b, ExpectedVersion::NoStream, vec![ev("B", 2)]),
        ])
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    assert_eq!(h.store.stream_version(&a).await.unwrap(), None);
    assert_eq!(head(&h.store).await, before);
}

pub async fn a_multi_stream_append_that_breaks_a_rule_of_the_whole_writes_nothing(h: Harness) {
    let (a, b) = (stream("a"), stream("b"));
    let before = head(&h.store).await;
    let shared = ev("Shared", 1);
    let cases: Vec<(Vec<StreamAppend>, &str)> = vec![
        (vec![], "no parts"),
        (
            vec![
                part(&a, ExpectedVersion::Any, vec![ev("A", 1)]),
                part(&a, ExpectedVersion::Any, vec![ev("A", 2)]),
            ],
            "a stream named twice",
        ),
        (
            vec![
                part(&a, ExpectedVersion::Any, vec![shared.clone()]),
                part(&b, ExpectedVersion::Any, vec![shared]),
            ],
            "an event id in two parts",
        ),
        (
            (0..=MAX_APPEND_STREAMS)
                .map(|i| part(&format!("{a}-{i}"), ExpectedVersion::Any, vec![ev("A", 1)]))
                .collect(),
            "too many streams",
        ),
        (
            vec![
                part(&a, ExpectedVersion::Any, vec![ev("A", 1)]),
                part(&b, ExpectedVersion::Any, vec![]),
            ],
            "an empty part",
        ),
    ];
    for (parts, case) in cases {
        let err = h.store.append_streams(parts).await.unwrap_err();
        assert!(
            matches!(
                err,
                LogError::LimitExceeded { .. }
                    | LogError::InvalidStreamName { .. }
                    | LogError::InvalidEvent { .. }
            ),
            "{case}: {err:?}"
        );
    }
    assert_eq!(head(&h.store).await, before, "nothing is written");
    assert_eq!(h.store.stream_version(&a).await.unwrap(), None);
}

pub async fn read_all_returns_every_stream_in_global_order(h: Harness) {
    let start = head(&h.store).await;
    let (a, b) = (stream("a"), stream("b"));
    for i in 0..5 {
        h.store
            .append(&a, ExpectedVersion::Any, vec![ev("A", i)])
            .await
            .unwrap();
        h.store
            .append(&b, ExpectedVersion::Any, vec![ev("B", i), ev("B", i + 100)])
            .await
            .unwrap();
    }
    let all = h.store.read_all(start, 1000).await.unwrap();
    let ours: Vec<_> = all
        .iter()
        .filter(|e| e.stream == a || e.stream == b)
        .collect();
    assert_eq!(ours.len(), 15);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    let kinds: String = ours.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds, "ABBABBABBABBABB");
}

pub async fn reads_page_by_version_and_position(h: Harness) {
    let s = stream("paged");
    let start = head(&h.store).await;
    let events: Vec<_> = (0..10).map(|i| ev("A", i)).collect();
    h.store
        .append(&s, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let page = h.store.read_stream(&s, 3, 4).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    assert!(h.store.read_stream(&s, 10, 4).await.unwrap().is_empty());
    assert!(h
        .store
        .read_stream(&stream("none"), 0, 4)
        .await
        .unwrap()
        .is_empty());
    let first = h.store.read_all(start, 4).await.unwrap();
    assert_eq!(first.len(), 4);
    let next = h.store.read_all(first[3].position + 1, 100).await.unwrap();
    assert_eq!(next.iter().filter(|e| e.stream == s).count(), 6);
}

pub async fn bad_input_is_rejected_precisely_and_nothing_is_written(h: Harness) {
    let limits = h.store.limits();
    let before = head(&h.store).await;
    let s = stream("limits");
    let too_many: Vec<_> = (0..=limits.max_events_per_append as u64)
        .map(|i| ev("A", i))
        .collect();
    let cases: Vec<Case> = vec![
        (s.clone(), vec![], |e| {
            matches!(e, LogError::LimitExceeded { .. })
        }),
        (s.clone(), too_many, |e| {
            matches!(
                e,
                LogError::LimitExceeded {
                    what: "events in append",
                    ..
                }
            )
        }),
        (
            "x".repeat(limits.max_stream_name_bytes + 1),
            vec![ev("A", 1)],
            |e| matches!(e, LogError::InvalidStreamName { .. }),
        ),
        (String::new(), vec![ev("A", 1)], |e| {
            matches!(e, LogError::InvalidStreamName { .. })
        }),
        ("$system".into(), vec![ev("A", 1)], |e| {
            matches!(e, LogError::InvalidStreamName { .. })
        }),
        ("has space".into(), vec![ev("A", 1)], |e| {
            matches!(e, LogError::InvalidStreamName { .. })
        }),
        (
            s.clone(),
            vec![ev("A", 1), with_data(ev("A", 2), b"")],
            |e| matches!(e, LogError::InvalidEvent { .. }),
        ),
        (s.clone(), vec![with_type(ev("A", 1), "")], |e| {
            matches!(e, LogError::InvalidEvent { .. })
        }),
        (s.clone(), vec![oversized(limits.max_event_bytes)], |e| {
            matches!(
                e,
                LogError::LimitExceeded {
                    what: "encoded event bytes",
                    ..
                }
            )
        }),
        (s.clone(), duplicate_ids(), |e| {
            matches!(e, LogError::InvalidEvent { .. })
        }),
    ];
    for (name, events, expected) in cases {
        let n = events.len();
        let err = h
            .store
            .append(&name, ExpectedVersion::Any, events)
            .await
            .unwrap_err();
        assert!(
            expected(&err),
            "stream {name:?} with {n} events gave {err:?}"
        );
        assert!(err.is_invalid_input(), "{err:?}");
    }
    assert_eq!(
        head(&h.store).await,
        before,
        "a rejected append wrote something"
    );
    assert_eq!(h.store.stream_version(&s).await.unwrap(), None);
}

/// A stream name, the events to append there, and the error the append must give.
type Case = (String, Vec<NewEvent>, fn(&LogError) -> bool);

fn with_data(mut e: NewEvent, data: &'static [u8]) -> NewEvent {
    e.data = bytes::Bytes::from_static(data);
    e
}

fn with_type(mut e: NewEvent, t: &str) -> NewEvent {
    e.event_type = t.into();
    e
}

fn oversized(max: usize) -> NewEvent {
    let blob = "x".repeat(max);
    NewEvent::json(
        id(),
        "Big",
        1,
        &json!({ "blob": blob }),
        EventMetadata::at(at(0)),
    )
    .unwrap()
}

fn duplicate_ids() -> Vec<NewEvent> {
    let a = ev("A", 1);
    let mut b = ev("A", 2);
    b.id = a.id;
    vec![a, b]
}

/// One past the last committed position (where a new reader would start).
pub async fn head(store: &SharedStore) -> u64 {
    *store.watch_head().borrow()
}

pub async fn hash_chains_link_every_event_to_its_predecessor(h: Harness) {
    let s = stream("chain");
    h.store
        .append(&s, ExpectedVersion::NoStream, vec![ev("A", 1), ev("B", 2)])
        .await
        .unwrap();
    h.store
        .append(&s, ExpectedVersion::Exact(1), vec![ev("C", 3)])
        .await
        .unwrap();
    let read = h.store.read_stream(&s, 0, 10).await.unwrap();
    assert_eq!(read[0].prev_hash, pl_eventlog::GENESIS_HASH);
    assert_eq!(read[1].prev_hash, read[0].hash);
    assert_eq!(read[2].prev_hash, read[1].hash);
    let report = verify_stream(h.store.as_ref(), &s).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.events_checked, 3);
    let all = verify(h.store.as_ref()).await.unwrap();
    assert!(all.is_intact(), "{all:?}");
}

pub async fn concurrent_writers_at_the_same_version_have_exactly_one_winner(h: Harness) {
    let s = stream("race");
    h.store
        .append(&s, ExpectedVersion::NoStream, vec![ev("A", 0)])
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&h.store);
            let s = s.clone();
            tokio::spawn(async move {
                store
                    .append(&s, ExpectedVersion::Exact(0), vec![ev("B", i)])
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                wins += 1;
                assert_eq!(r.last_version, 1);
            }
            Err(e) => assert!(e.is_conflict(), "{e:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(h.store.stream_version(&s).await.unwrap(), Some(1));
}

pub async fn a_catch_up_subscription_replays_history_then_follows_live_appends(h: Harness) {
    let start = head(&h.store).await;
    let streams: Vec<String> = (0..4).map(|i| stream(&format!("sub{i}"))).collect();
    for s in &streams {
        h.store
            .append(s, ExpectedVersion::Any, vec![ev("Old", 0)])
            .await
            .unwrap();
    }
    let mut sub = Subscription::new(Arc::clone(&h.store), start, SubscriptionFilter::All);
    let writers: Vec<_> = streams
        .iter()
        .cloned()
        .map(|s| {
            let store = Arc::clone(&h.store);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 1..=50 {
                    let e = ev("Live", i);
                    ids.push(e.id);
                    store
                        .append(&s, ExpectedVersion::Any, vec![e])
                        .await
                        .unwrap();
                }
                ids
            })
        })
        .collect();
    let mut expected: HashSet<Uuid> = HashSet::new();
    for w in writers {
        expected.extend(w.await.unwrap());
    }
    let total = expected.len() + streams.len();
    let mut seen = HashSet::new();
    let mut last_position = None;
    while seen.len() < total {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("subscription stalled")
            .unwrap();
        if !streams.contains(&e.stream) {
            continue; // another case's events on a shared server
        }
        assert!(last_position < Some(e.position), "out of order");
        last_position = Some(e.position);
        assert!(seen.insert(e.id), "delivered twice: {}", e.id);
        expected.remove(&e.id);
    }
    assert!(expected.is_empty(), "missed {} live events", expected.len());
}

pub async fn a_prefix_subscription_delivers_only_matching_streams(h: Harness) {
    let start = head(&h.store).await;
    let prefix = format!("pfx{}-", id().simple());
    let wanted = format!("{prefix}1");
    h.store
        .append(&stream("other"), ExpectedVersion::Any, vec![ev("X", 0)])
        .await
        .unwrap();
    h.store
        .append(&wanted, ExpectedVersion::Any, vec![ev("Y", 1)])
        .await
        .unwrap();
    let mut sub = Subscription::new(
        Arc::clone(&h.store),
        start,
        SubscriptionFilter::StreamPrefix(prefix.clone()),
    );
    let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.stream, wanted);
    h.store
        .append(&stream("other"), ExpectedVersion::Any, vec![ev("X", 2)])
        .await
        .unwrap();
    h.store
        .append(&wanted, ExpectedVersion::Any, vec![ev("Y", 3)])
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (e.stream.as_str(), e.event_type.as_str()),
        (wanted.as_str(), "Y")
    );
    assert_eq!(e.version, 1);
}

pub async fn binary_data_is_stored_and_read_back_byte_for_byte(h: Harness) {
    let s = format!("bin-{}", id());
    // Not JSON: the format is the event's (its type and schema version name it).
    let bytes: &'static [u8] = &[0x0a, 0x00, 0xff, 0x7b, 0x22, 0x80, 0x01];
    let sent = with_data(ev("Binary", 1), bytes);
    h.store
        .append(&s, ExpectedVersion::NoStream, vec![sent.clone()])
        .await
        .unwrap();
    let read = h.store.read_stream(&s, 0, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].data.as_ref(), bytes);
    assert!(verify_stream(h.store.as_ref(), &s)
        .await
        .unwrap()
        .is_intact());
}

/// Generates one `#[tokio::test]` per conformance case; `$make` is an async expression that
/// yields a fresh [`Harness`]. `conformance_suite!(make(), exclude: [case, ...])` leaves out
/// cases an adapter cannot support (the adapter documents each exclusion).
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr $(, exclude: [$($skip:ident),* $(,)?])?) => {
        $crate::conformance_suite!(@exclude ($) $make; [$($($skip),*)?];
            append_then_read_returns_the_events_with_store_assigned_fields,
            no_stream_is_rejected_once_the_stream_exists,
            a_stale_exact_version_is_rejected_with_expected_and_actual,
            any_appends_after_whatever_is_there,
            reappending_the_same_events_returns_the_original_result_and_writes_nothing,
            reusing_an_event_id_with_a_different_body_is_rejected,
            reusing_an_event_id_in_another_stream_is_rejected,
            an_append_mixing_stored_and_new_ids_is_rejected_whole,
            a_multi_stream_append_stores_each_part_in_order_and_a_retry_writes_nothing,
            a_multi_stream_append_never_stores_a_part_after_one_that_conflicts,
            a_multi_stream_append_with_a_conflict_in_any_part_stores_nothing,
            a_multi_stream_append_that_breaks_a_rule_of_the_whole_writes_nothing,
            read_all_returns_every_stream_in_global_order,
            reads_page_by_version_and_position,
            bad_input_is_rejected_precisely_and_nothing_is_written,
            hash_chains_link_every_event_to_its_predecessor,
            concurrent_writers_at_the_same_version_have_exactly_one_winner,
            a_catch_up_subscription_replays_history_then_follows_live_appends,
            a_prefix_subscription_delivers_only_matching_streams,
            binary_data_is_stored_and_read_back_byte_for_byte,
        );
    };
    // `$d` is a `$` token, so the helper macro defined here can have metavariables of its own.
    (@exclude ($d:tt) $make:expr; [$($skip:ident),*]; $($case:ident),* $(,)?) => {
        macro_rules! __conformance_case_unless_excluded {
            $( ($skip) => {}; )*
            ($d one:ident) => {
                $crate::conformance_suite!(@cases $make; $d one);
            };
        }
        $( __conformance_case_unless_excluded!($case); )*
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(h) = $make.await {
                    conformance::$case(h).await;
                }
            }
        )*
    };
}
