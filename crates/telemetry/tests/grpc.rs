//! The gRPC glue: metadata carriers, the server layer driven directly, and both ends over a real
//! tonic server and client on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

mod common;

use std::convert::Infallible;

use common::{attribute, remote_span_id, remote_trace_id, Harness, REMOTE_TRACEPARENT};
use opentelemetry::trace::{SpanId, SpanKind};
use pl_telemetry::{
    extract_from_metadata, inject, inject_interceptor, inject_into_metadata, set_parent, span_id,
    trace_id, GrpcTraceLayer, REQUEST_SPAN_NAME, TRACEPARENT, TRACESTATE,
};
use tonic::metadata::MetadataMap;
use tower::{ServiceBuilder, ServiceExt as _};
use tracing::Instrument as _;

const METHOD: &str = "/partnerledger.commissions.v1.Commissions/AccrueCommission";

/// What the handler saw while it ran.
#[derive(Debug)]
struct Seen {
    span_name: Option<&'static str>,
    trace_id: Option<String>,
    span_id: Option<String>,
}

async fn handler(_request: http::Request<()>) -> Result<Seen, Infallible> {
    let current = tracing::Span::current();
    Ok(Seen {
        span_name: current.metadata().map(|m| m.name()),
        trace_id: trace_id(&current),
        span_id: span_id(&current),
    })
}

async fn call_through_layer(request: http::Request<()>) -> Seen {
    ServiceBuilder::new()
        .layer(GrpcTraceLayer::new())
        .service_fn(handler)
        .oneshot(request)
        .await
        .unwrap()
}

#[test]
fn a_carrier_round_trips_through_grpc_metadata() {
    let harness = Harness::install();
    let parent = tracing::info_span!("client.call");
    let mut metadata = MetadataMap::new();
    parent.in_scope(|| inject_into_metadata(&mut metadata));

    let carried = extract_from_metadata(&metadata);
    assert_eq!(carried, inject(&parent));
    assert!(carried.contains_key(TRACEPARENT));

    let server = tracing::info_span!(parent: None, "server.handle");
    set_parent(&server, &carried);
    drop(server);
    drop(parent);
    let parent = harness.span("client.call");
    let server = harness.span("server.handle");
    assert_eq!(
        server.span_context.trace_id(),
        parent.span_context.trace_id()
    );
    assert_eq!(server.parent_span_id, parent.span_context.span_id());
}

#[test]
fn tracestate_round_trips_through_grpc_metadata() {
    let _harness = Harness::install();
    let mut incoming = MetadataMap::new();
    incoming.insert("traceparent", REMOTE_TRACEPARENT.parse().unwrap());
    incoming.insert("tracestate", "vendor=opaque".parse().unwrap());
    let span = tracing::info_span!("server.handle");
    set_parent(&span, &extract_from_metadata(&incoming));

    let mut outgoing = MetadataMap::new();
    span.in_scope(|| inject_into_metadata(&mut outgoing));
    assert_eq!(outgoing.get(TRACESTATE).unwrap(), "vendor=opaque");
    let parent = outgoing.get(TRACEPARENT).unwrap().to_str().unwrap();
    assert!(
        parent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{parent}"
    );
}

#[test]
fn the_client_interceptor_writes_the_current_span_into_the_request_metadata() {
    let _harness = Harness::install();
    let span = tracing::info_span!("client.call");
    let request = span.in_scope(|| inject_interceptor(tonic::Request::new(())).unwrap());
    assert_eq!(extract_from_metadata(request.metadata()), inject(&span));
}

#[test]
fn outside_any_span_the_metadata_is_left_untouched() {
    let _harness = Harness::install();
    let mut metadata = MetadataMap::new();
    inject_into_metadata(&mut metadata);
    assert!(metadata.is_empty());
}

#[tokio::test]
async fn the_server_layer_parents_the_request_span_on_the_incoming_traceparent() {
    let harness = Harness::install();
    let request = http::Request::builder()
        .uri(METHOD)
        .header(TRACEPARENT, REMOTE_TRACEPARENT)
        .header("x-request-id", "req-42")
        .body(())
        .unwrap();

    let seen = call_through_layer(request).await;
    assert_eq!(seen.span_name, Some(REQUEST_SPAN_NAME));
    assert_eq!(seen.trace_id.as_deref(), Some(common::REMOTE_TRACE_ID));

    let span = harness.span(REQUEST_SPAN_NAME);
    assert_eq!(span.span_context.trace_id(), remote_trace_id());
    assert_eq!(span.parent_span_id, remote_span_id());
    assert_eq!(span.span_kind, SpanKind::Server);
    assert_eq!(attribute(&span, "method").as_deref(), Some(METHOD));
    assert_eq!(attribute(&span, "request_id").as_deref(), Some("req-42"));
    assert_eq!(
        attribute(&span, "trace_id").as_deref(),
        Some(common::REMOTE_TRACE_ID)
    );
}

#[tokio::test]
async fn the_server_layer_ignores_a_malformed_traceparent_and_starts_a_new_trace() {
    let harness = Harness::install();
    let request = http::Request::builder()
        .uri(METHOD)
        .header(TRACEPARENT, "00-not-a-trace-01")
        .header(TRACESTATE, "vendor=x")
        .body(())
        .unwrap();

    let seen = call_through_layer(request).await;
    assert_eq!(seen.span_name, Some(REQUEST_SPAN_NAME));

    let span = harness.span(REQUEST_SPAN_NAME);
    assert_eq!(span.parent_span_id, SpanId::INVALID);
    assert!(span.span_context.is_valid());
    assert_eq!(
        seen.trace_id,
        Some(span.span_context.trace_id().to_string())
    );
    // Without a caller request id the span's own id stands in.
    assert_eq!(seen.span_id, Some(span.span_context.span_id().to_string()));
    assert_eq!(attribute(&span, "request_id"), seen.span_id);
}

#[tokio::test]
async fn the_server_layer_never_nests_a_request_under_the_servers_own_span() {
    let harness = Harness::install();
    let serve = tracing::info_span!("serve");
    let request = http::Request::builder().uri(METHOD).body(()).unwrap();
    call_through_layer(request).instrument(serve.clone()).await;
    drop(serve);

    assert_eq!(
        harness.span(REQUEST_SPAN_NAME).parent_span_id,
        SpanId::INVALID
    );
}

#[tokio::test]
async fn an_unusable_caller_request_id_is_replaced_by_the_span_id() {
    let harness = Harness::install();
    let too_long = "r".repeat(129);
    for id in ["", "has space", too_long.as_str()] {
        let request = http::Request::builder()
            .uri(METHOD)
            .header("x-request-id", id)
            .body(())
            .unwrap();
        let seen = call_through_layer(request).await;
        assert!(seen.span_id.is_some());
    }
    for span in harness.finished() {
        assert_eq!(
            attribute(&span, "request_id"),
            Some(span.span_context.span_id().to_string())
        );
    }
}

/// Both ends over a real tonic 0.14 server and generated client on loopback: the layer fits
/// `Server::builder().layer(..)` and the interceptor fits `with_interceptor`.
#[tokio::test]
async fn a_call_from_a_traced_client_is_parented_on_the_server_across_a_real_connection() {
    let harness = Harness::install();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(GrpcTraceLayer::new())
            .add_service(health)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic_health::pb::health_client::HealthClient::with_interceptor(
        channel,
        inject_interceptor,
    );
    let call = tracing::info_span!("client.call");
    let response = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .instrument(call.clone())
        .await
        .unwrap();
    assert_eq!(
        response.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    drop(call);
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    let client_span = harness.span("client.call");
    let server_span = harness.span(REQUEST_SPAN_NAME);
    assert_eq!(
        server_span.span_context.trace_id(),
        client_span.span_context.trace_id()
    );
    assert_eq!(
        server_span.parent_span_id,
        client_span.span_context.span_id()
    );
    assert_eq!(
        attribute(&server_span, "method").as_deref(),
        Some("/grpc.health.v1.Health/Check")
    );
}
