//! W3C propagation over plain maps, against a local recording subscriber.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

mod common;

use std::collections::BTreeMap;

use common::{remote_span_id, remote_trace_id, Harness, REMOTE_TRACEPARENT, REMOTE_TRACE_ID};
use opentelemetry::trace::SpanId;
use pl_telemetry::{inject, set_parent, span_id, trace_id, TRACEPARENT, TRACESTATE};
use proptest::prelude::*;

fn carrier(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn a_child_parented_from_an_injected_carrier_shares_the_trace_and_names_the_parent() {
    let harness = Harness::install();
    let parent = tracing::info_span!("parent");
    let carried = inject(&parent);
    assert!(carried.contains_key(TRACEPARENT), "carrier: {carried:?}");

    // An explicit root, so only the carrier can link it to the parent.
    let child = tracing::info_span!(parent: None, "child");
    set_parent(&child, &carried);
    assert_eq!(trace_id(&child), trace_id(&parent));
    drop(child);
    drop(parent);

    let parent = harness.span("parent");
    let child = harness.span("child");
    assert_eq!(
        child.span_context.trace_id(),
        parent.span_context.trace_id()
    );
    assert_eq!(child.parent_span_id, parent.span_context.span_id());
    assert!(child.parent_span_is_remote);
}

#[test]
fn the_injected_traceparent_names_the_spans_own_trace_and_span_ids() {
    let _harness = Harness::install();
    let span = tracing::info_span!("work");
    let carried = inject(&span);
    let trace = trace_id(&span).unwrap();
    let id = span_id(&span).unwrap();

    assert_eq!(trace.len(), 32);
    assert!(trace
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(carried[TRACEPARENT], format!("00-{trace}-{id}-01"));
}

#[test]
fn a_remote_parent_from_another_service_becomes_the_spans_parent() {
    let harness = Harness::install();
    let span = tracing::info_span!("consume");
    set_parent(&span, &carrier(&[(TRACEPARENT, REMOTE_TRACEPARENT)]));
    assert_eq!(trace_id(&span).as_deref(), Some(REMOTE_TRACE_ID));
    drop(span);

    let span = harness.span("consume");
    assert_eq!(span.span_context.trace_id(), remote_trace_id());
    assert_eq!(span.parent_span_id, remote_span_id());
}

#[test]
fn tracestate_travels_with_the_traceparent() {
    let _harness = Harness::install();
    let span = tracing::info_span!("consume");
    set_parent(
        &span,
        &carrier(&[
            (TRACEPARENT, REMOTE_TRACEPARENT),
            (TRACESTATE, "vendor=opaque,other=1"),
        ]),
    );
    let carried = inject(&span);
    assert_eq!(carried[TRACESTATE], "vendor=opaque,other=1");
}

#[test]
fn a_later_traceparent_version_with_extra_fields_is_adopted() {
    let _harness = Harness::install();
    let span = tracing::info_span!("consume");
    set_parent(
        &span,
        &carrier(&[(
            TRACEPARENT,
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
        )]),
    );
    assert_eq!(trace_id(&span).as_deref(), Some(REMOTE_TRACE_ID));
}

#[test]
fn carrier_keys_are_matched_without_regard_to_case() {
    let _harness = Harness::install();
    let span = tracing::info_span!("consume");
    set_parent(&span, &carrier(&[("Traceparent", REMOTE_TRACEPARENT)]));
    assert_eq!(trace_id(&span).as_deref(), Some(REMOTE_TRACE_ID));
}

#[test]
fn inject_gives_an_empty_map_when_no_opentelemetry_layer_is_installed() {
    tracing::subscriber::with_default(tracing_subscriber::registry(), || {
        let span = tracing::info_span!("plain");
        assert!(inject(&span).is_empty());
        assert_eq!(trace_id(&span), None);
        set_parent(&span, &carrier(&[(TRACEPARENT, REMOTE_TRACEPARENT)]));
        assert_eq!(trace_id(&span), None);
    });
}

#[test]
fn inject_gives_an_empty_map_for_a_disabled_span() {
    let _harness = Harness::install();
    assert!(inject(&tracing::Span::none()).is_empty());
    assert_eq!(trace_id(&tracing::Span::none()), None);
    set_parent(
        &tracing::Span::none(),
        &carrier(&[(TRACEPARENT, REMOTE_TRACEPARENT)]),
    );
}

#[test]
fn set_parent_on_a_span_already_started_keeps_its_own_trace() {
    let harness = Harness::install();
    let span = tracing::info_span!(parent: None, "started");
    let own = trace_id(&span).unwrap();
    set_parent(&span, &carrier(&[(TRACEPARENT, REMOTE_TRACEPARENT)]));
    assert_eq!(trace_id(&span), Some(own));
    drop(span);
    assert_eq!(harness.span("started").parent_span_id, SpanId::INVALID);
}

#[test]
fn an_empty_carrier_leaves_a_root_span_in_a_new_trace() {
    let harness = Harness::install();
    let span = tracing::info_span!(parent: None, "root");
    set_parent(&span, &BTreeMap::new());
    assert!(trace_id(&span).is_some());
    drop(span);
    assert_eq!(harness.span("root").parent_span_id, SpanId::INVALID);
}

#[test]
fn a_malformed_traceparent_is_ignored_and_the_span_starts_a_new_trace() {
    let malformed = [
        "",
        "garbage",
        // all-zero trace id, all-zero span id
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        // forbidden version, short ids (the OpenTelemetry parser alone would left-pad them),
        // non-hex, upper case, wrong separators, extra field on version 00, bad flags
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        "00-\u{e9}bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    ];
    for (n, bad) in malformed.iter().enumerate() {
        let harness = Harness::install();
        let span = tracing::info_span!(parent: None, "root");
        set_parent(
            &span,
            &carrier(&[(TRACEPARENT, bad), (TRACESTATE, "vendor=x")]),
        );
        let trace = trace_id(&span);
        drop(span);

        let root = harness.span("root");
        assert_eq!(root.parent_span_id, SpanId::INVALID, "case {n}: {bad:?}");
        assert!(root.span_context.is_valid(), "case {n}: {bad:?}");
        assert_ne!(trace.as_deref(), Some(REMOTE_TRACE_ID), "case {n}: {bad:?}");
    }
}

proptest! {
    #[test]
    fn any_carrier_content_is_either_adopted_or_ignored_never_a_panic(
        parent in ".{0,80}",
        state in ".{0,80}",
        key in "(?i)traceparent|tracestate|[a-z-]{0,12}",
    ) {
        let _harness = Harness::install();
        let span = tracing::info_span!(parent: None, "root");
        set_parent(&span, &carrier(&[(TRACEPARENT, &parent), (TRACESTATE, &state), (&key, &parent)]));
        prop_assert!(trace_id(&span).is_some());
        let carried = inject(&span);
        prop_assert!(carried.contains_key(TRACEPARENT));
    }
}
