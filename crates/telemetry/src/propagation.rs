//! W3C trace-context propagation between a `tracing` span and a plain string map.
//!
//! The map is the one carrier shape of the whole system: gRPC metadata, event metadata and NATS
//! headers are all converted to and from it, so the same two functions serve every transport.

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Carrier key of the W3C trace parent (`version-traceid-spanid-flags`).
pub const TRACEPARENT: &str = "traceparent";
/// Carrier key of the W3C vendor trace state.
pub const TRACESTATE: &str = "tracestate";

/// The `traceparent`/`tracestate` of `span`'s OpenTelemetry context.
///
/// The map is empty when the span has no valid context: it is disabled, or no
/// `tracing-opentelemetry` layer is installed in the subscriber that created it. Reading the
/// context starts the OpenTelemetry span, so call [`set_parent`] on a span before this.
pub fn inject(span: &tracing::Span) -> BTreeMap<String, String> {
    let mut carrier = BTreeMap::new();
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut MapInjector(&mut carrier));
    }
    carrier
}

/// Makes `span` a child of the remote context carried in `carrier`.
///
/// A no-op when the carrier has no `traceparent`, when it is malformed (wrong length, version
/// `ff`, non-hex, all-zero ids), when the span is disabled or no OpenTelemetry layer is installed,
/// and when the span was already started (entered, or read by [`inject`] / [`trace_id`]): the span
/// then keeps its own parent or starts a new trace. Keys are matched case-insensitively.
pub fn set_parent(span: &tracing::Span, carrier: &BTreeMap<String, String>) {
    let Some(remote) = extract(carrier) else {
        return;
    };
    if let Err(error) = span.set_parent(remote) {
        tracing::debug!(%error, "trace context not applied to span");
    }
}

/// The trace id of `span` as 32 lowercase hex digits, or `None` when it has no valid context.
/// Like [`inject`], this starts the OpenTelemetry span.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let otel_span = cx.span();
    let span_context = otel_span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The span id of `span` as 16 lowercase hex digits, or `None` when it has no valid context.
/// Like [`inject`], this starts the OpenTelemetry span.
pub fn span_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let otel_span = cx.span();
    let span_context = otel_span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.span_id().to_string())
}

/// The remote context in `carrier`, when it holds a valid `traceparent`.
pub(crate) fn extract(carrier: &BTreeMap<String, String>) -> Option<Context> {
    let extractor = MapExtractor(carrier);
    if !is_well_formed_traceparent(extractor.get(TRACEPARENT)?) {
        return None;
    }
    let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &extractor);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The exact W3C shape, `vv-<32 hex>-<16 hex>-ff` in lowercase, checked before the OpenTelemetry
/// propagator sees the value: that one also accepts ids shorter than their fixed width (and
/// left-pads them), which would make a truncated header look like a different, valid trace.
/// Version `ff` is forbidden; version `00` has exactly four fields; later versions may append
/// `-`-separated fields, as the specification allows. The all-zero ids are left to the
/// propagator, which rejects them.
fn is_well_formed_traceparent(value: &str) -> bool {
    let value = value.trim_matches([' ', '\t']);
    let bytes = value.as_bytes();
    let Some(head) = bytes.get(..55) else {
        return false;
    };
    let hex = |range: std::ops::Range<usize>| {
        head[range]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let dashes = head[2] == b'-' && head[35] == b'-' && head[52] == b'-';
    let fields = dashes && hex(0..2) && hex(3..35) && hex(36..52) && hex(53..55);
    let version = &head[..2];
    let tail_ok = match version {
        b"00" => bytes.len() == 55,
        _ => bytes.len() == 55 || bytes[55] == b'-',
    };
    fields && version != b"ff" && tail_ok
}

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_ascii_lowercase(), value);
    }
}

struct MapExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .or_else(|| {
                self.0
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v)
            })
            .map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
