//! A thread-local subscriber with an OpenTelemetry layer that records finished spans in memory,
//! so tests never touch (or race on) the global subscriber.

#![allow(dead_code)] // each test binary uses a different part of it

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::subscriber::DefaultGuard;
use tracing_subscriber::layer::SubscriberExt as _;

/// A sampled remote parent, as another service would send it.
pub const REMOTE_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub const REMOTE_SPAN_ID: &str = "00f067aa0ba902b7";
pub const REMOTE_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

pub struct Harness {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _default: DefaultGuard,
}

impl Harness {
    /// Installs the recording subscriber as this thread's default until the harness is dropped.
    pub fn install() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("pl-telemetry-test")));
        let default = tracing::subscriber::set_default(subscriber);
        Self {
            exporter,
            provider,
            _default: default,
        }
    }

    /// Every span closed so far.
    pub fn finished(&self) -> Vec<SpanData> {
        self.provider.force_flush().unwrap();
        self.exporter.get_finished_spans().unwrap()
    }

    /// The one closed span called `name`.
    pub fn span(&self, name: &str) -> SpanData {
        let mut found: Vec<SpanData> = self
            .finished()
            .into_iter()
            .filter(|s| s.name == name)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one finished span {name:?}"
        );
        found.remove(0)
    }
}

pub fn remote_trace_id() -> TraceId {
    TraceId::from_hex(REMOTE_TRACE_ID).unwrap()
}

pub fn remote_span_id() -> SpanId {
    SpanId::from_hex(REMOTE_SPAN_ID).unwrap()
}

/// The string value of a span attribute.
pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| match &kv.value {
            Value::String(s) => s.as_str().to_owned(),
            other => other.to_string(),
        })
}
