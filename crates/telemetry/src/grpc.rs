//! gRPC glue for tonic 0.14: a server layer that opens one span per request, parented on the
//! caller's trace context, and client helpers that put the current context into outgoing metadata.

use std::collections::BTreeMap;
use std::task::{Context, Poll};

use opentelemetry::trace::TraceContextExt;
use tonic::metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue};
use tower::{Layer, Service};
use tracing::field::Empty;
use tracing::instrument::{Instrument, Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::propagation::{inject, set_parent, TRACEPARENT, TRACESTATE};

/// Name of the span [`GrpcTraceLayer`] opens for each request.
pub const REQUEST_SPAN_NAME: &str = "grpc.request";

/// Request header whose value, when the caller sends one, becomes the span's `request_id`.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A caller's request id longer than this is ignored rather than copied into every log line.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Server-side tower layer: for each request, opens a `grpc.request` span (fields `method`,
/// `request_id`, `trace_id`) parented on the `traceparent`/`tracestate` request headers, and runs
/// the inner service inside it.
///
/// Apply it with `tonic::transport::Server::builder().layer(GrpcTraceLayer::new())`. Requests with
/// no or a malformed `traceparent` start a new trace; they are never rejected. `request_id` is the
/// caller's `x-request-id` when present (at most 128 visible ASCII characters), otherwise the
/// request span's own span id. The span is a root of the local span tree (`parent: None`), so
/// requests never nest under whatever span the server task runs in.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTraceLayer {
    _private: (),
}

impl GrpcTraceLayer {
    /// The layer; it has no settings.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for GrpcTraceLayer {
    type Service = GrpcTraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTraceService { inner }
    }
}

/// The service [`GrpcTraceLayer`] wraps around the inner service.
#[derive(Debug, Clone)]
pub struct GrpcTraceService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for GrpcTraceService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let span = request_span(&request);
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        future.instrument(span)
    }
}

fn request_span<B>(request: &http::Request<B>) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "grpc.request",
        otel.kind = "server",
        rpc.system = "grpc",
        method = %request.uri().path(),
        request_id = Empty,
        trace_id = Empty,
    );
    set_parent(&span, &carrier_from_headers(request.headers()));

    // Reading the context starts the OpenTelemetry span, so this comes after `set_parent`.
    let cx = span.context();
    let otel_span = cx.span();
    let ids = otel_span.span_context();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
    }
    match caller_request_id(request.headers()) {
        Some(id) => {
            span.record("request_id", tracing::field::display(id));
        }
        None if ids.is_valid() => {
            span.record("request_id", tracing::field::display(ids.span_id()));
        }
        None => {}
    }
    span
}

fn caller_request_id(headers: &http::HeaderMap) -> Option<&str> {
    let id = headers.get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let acceptable = !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.bytes().all(|b| b.is_ascii_graphic());
    acceptable.then_some(id)
}

/// The `traceparent`/`tracestate` pair of an HTTP header map (several `tracestate` lines are
/// joined with commas, as W3C specifies). Values that are not visible ASCII are skipped.
fn carrier_from_headers(headers: &http::HeaderMap) -> BTreeMap<String, String> {
    let mut carrier = BTreeMap::new();
    if let Some(parent) = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()) {
        carrier.insert(TRACEPARENT.to_owned(), parent.to_owned());
    }
    let states: Vec<&str> = headers
        .get_all(TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !states.is_empty() {
        carrier.insert(TRACESTATE.to_owned(), states.join(","));
    }
    carrier
}

/// The `traceparent`/`tracestate` carrier of incoming or outgoing gRPC metadata, ready for
/// [`crate::set_parent`].
pub fn extract_from_metadata(metadata: &MetadataMap) -> BTreeMap<String, String> {
    carrier_from_headers(metadata.as_ref())
}

/// Writes the current span's `traceparent`/`tracestate` into outgoing gRPC metadata, replacing
/// any there. Leaves the metadata untouched when the current span has no valid context.
pub fn inject_into_metadata(metadata: &mut MetadataMap) {
    for (key, value) in inject(&tracing::Span::current()) {
        let Ok(key) = MetadataKey::<Ascii>::from_bytes(key.as_bytes()) else {
            continue;
        };
        let Ok(value) = MetadataValue::try_from(value.as_str()) else {
            continue;
        };
        metadata.insert(key, value);
    }
}

/// [`inject_into_metadata`] as a tonic client interceptor:
/// `FooClient::with_interceptor(channel, pl_telemetry::inject_interceptor)`. It never fails.
#[allow(clippy::result_large_err)] // the signature is tonic's `Interceptor`; `Status` is large.
pub fn inject_interceptor(
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    inject_into_metadata(request.metadata_mut());
    Ok(request)
}
