//! Installing the process-wide subscriber, tracer provider and propagator, once.

use std::fmt;
use std::io::IsTerminal as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_subscriber::filter::{EnvFilter, ParseError};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::{SubscriberInitExt as _, TryInitError};
use tracing_subscriber::Layer;

/// How long [`TelemetryGuard::shutdown`] (and its `Drop`) waits for buffered spans to be exported.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one OTLP export request may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// Set by the first [`init`] that gets past the check; cleared again if that call fails.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Shape of the log lines written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable single lines, coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, with the event's fields at the top level and the current span
    /// (and its ancestors) under `span`/`spans`, for log collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = TelemetryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(TelemetryError::UnknownLogFormat(s.to_owned())),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// What [`init`] installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `service.name` of the exported spans, e.g. `commissions`; must not be empty.
    pub service_name: String,
    /// Shape of the stderr log lines.
    pub log_format: LogFormat,
    /// Which spans and events are kept, in `EnvFilter` syntax (`info`, `info,h2=warn`, ...). It
    /// applies to exported spans too.
    pub log_filter: String,
    /// OTLP/gRPC collector endpoint, e.g. `http://otel-collector:4317`; `None` exports nothing.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// Text logs at `info`, no export.
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            log_format: LogFormat::default(),
            log_filter: "info".to_owned(),
            otlp_endpoint: None,
        }
    }
}

/// Why telemetry could not be installed or shut down.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// [`init`] already succeeded in this process.
    #[error("telemetry is already initialized in this process")]
    AlreadyInitialized,
    /// The service name is empty.
    #[error("the service name is empty")]
    EmptyServiceName,
    /// A log format other than `text` or `json`.
    #[error("unknown log format {0:?}: expected text or json")]
    UnknownLogFormat(String),
    /// The log filter is not valid `EnvFilter` syntax.
    #[error("invalid log filter {filter:?}: {source}")]
    InvalidFilter {
        /// The filter as given.
        filter: String,
        /// What the parser found.
        #[source]
        source: ParseError,
    },
    /// OTLP export was asked for outside a tokio runtime (the gRPC exporter runs on it).
    #[error("otlp export needs a tokio runtime: call init from inside one")]
    NoTokioRuntime,
    /// The OTLP exporter rejected its configuration, typically the endpoint.
    #[error("cannot build the otlp exporter for {endpoint:?}: {source}")]
    Exporter {
        /// The endpoint as given.
        endpoint: String,
        /// The exporter's reason.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// Another global subscriber or `log` logger was installed by someone else.
    #[error("cannot install the global subscriber: {0}")]
    Subscriber(#[source] TryInitError),
    /// Flushing or shutting down the tracer provider failed or timed out; spans may be lost.
    #[error("tracer provider shutdown failed: {0}")]
    Shutdown(#[source] OTelSdkError),
}

/// Keeps the tracer provider alive; [`TelemetryGuard::shutdown`] or dropping it flushes the
/// buffered spans (bounded by [`SHUTDOWN_TIMEOUT`]) and stops exporting. Logging to stderr goes
/// on after that.
///
/// Shut down from a multi-threaded tokio runtime or from outside any runtime: the call blocks,
/// and on a current-thread runtime the exporter cannot make progress, so the flush then only ends
/// at the timeout.
#[derive(Debug)]
#[must_use = "dropping the guard shuts span export down"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes buffered spans and shuts the tracer provider down, waiting at most
    /// [`SHUTDOWN_TIMEOUT`].
    pub fn shutdown(mut self) -> Result<(), TelemetryError> {
        self.shutdown_provider()
    }

    fn shutdown_provider(&mut self) -> Result<(), TelemetryError> {
        match self.provider.take() {
            Some(provider) => provider
                .shutdown_with_timeout(SHUTDOWN_TIMEOUT)
                .map_err(TelemetryError::Shutdown),
            None => Ok(()),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown_provider() {
            tracing::warn!(%error, "telemetry shutdown");
        }
    }
}

/// Installs, for the whole process: a global `tracing` subscriber that writes `cfg.log_format`
/// lines to stderr filtered by `cfg.log_filter`; an OpenTelemetry layer whose spans carry W3C
/// trace context (and are exported over OTLP/gRPC in batches when `cfg.otlp_endpoint` is set,
/// with `service.name = cfg.service_name`); and the W3C TraceContext propagator as the global
/// text-map propagator.
///
/// Spans get OpenTelemetry ids even without an endpoint, so trace context still flows through
/// gRPC, events and NATS and shows up in logs; only the export is off.
///
/// Call it once per process; a second call returns [`TelemetryError::AlreadyInitialized`]. A
/// call that fails installs nothing, and a corrected configuration may be tried again. With an
/// endpoint, call it from inside the tokio runtime that will carry the exporter's connections.
pub fn init(cfg: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    if INSTALLED
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return Err(TelemetryError::AlreadyInitialized);
    }
    let installed = install(cfg);
    if installed.is_err() {
        INSTALLED.store(false, Ordering::SeqCst);
    }
    installed
}

fn install(cfg: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    if cfg.service_name.trim().is_empty() {
        return Err(TelemetryError::EmptyServiceName);
    }
    let filter =
        EnvFilter::try_new(&cfg.log_filter).map_err(|source| TelemetryError::InvalidFilter {
            filter: cfg.log_filter.clone(),
            source,
        })?;
    let provider = tracer_provider(cfg)?;

    let log_layer = log_layer(
        cfg.log_format,
        std::io::stderr,
        std::io::stderr().is_terminal(),
    );
    let otel_layer =
        tracing_opentelemetry::layer().with_tracer(provider.tracer(env!("CARGO_PKG_NAME")));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(log_layer)
        .with(otel_layer)
        .try_init();
    if let Err(error) = installed {
        // Nothing was exported yet; the provider only has to stop its worker.
        let _ = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        return Err(TelemetryError::Subscriber(error));
    }

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// The stderr log layer; generic over the writer so tests can read what it writes.
fn log_layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    }
}

fn tracer_provider(cfg: &TelemetryConfig) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &cfg.otlp_endpoint {
        // The tonic channel spawns its connection tasks on the current runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TelemetryError::NoTokioRuntime);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|source| TelemetryError::Exporter {
                endpoint: endpoint.clone(),
                source,
            })?;
        // A dedicated thread batches and exports; each export runs over the runtime's channel.
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tower::{ServiceBuilder, ServiceExt as _};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::{GrpcTraceLayer, TRACEPARENT};

    const TRACEPARENT_IN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Runs one request through the gRPC layer, logging one event in the handler, with a local
    /// subscriber built like `init` builds the global one; returns what was written.
    fn log_one_request(format: LogFormat) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(log_layer(format, move || writer.clone(), false))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));

        tracing::subscriber::with_default(subscriber, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let service = ServiceBuilder::new()
                .layer(GrpcTraceLayer::new())
                .service_fn(|_request: http::Request<()>| async {
                    tracing::info!(partner = "p-1", "commission accrued");
                    Ok::<_, std::convert::Infallible>(())
                });
            let request = http::Request::builder()
                .uri("/partnerledger.commissions.v1.Commissions/Accrue")
                .header(TRACEPARENT, TRACEPARENT_IN)
                .header("x-request-id", "req-7")
                .body(())
                .unwrap();
            runtime.block_on(service.oneshot(request)).unwrap();
        });
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_log_lines_carry_the_event_fields_and_the_request_spans_trace_id() {
        let written = log_one_request(LogFormat::Json);
        let line: serde_json::Value = serde_json::from_str(written.trim()).unwrap();
        assert_eq!(line["message"], "commission accrued");
        assert_eq!(line["partner"], "p-1");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["span"]["name"], crate::REQUEST_SPAN_NAME);
        assert_eq!(line["span"]["trace_id"], TRACE_ID);
        assert_eq!(line["span"]["request_id"], "req-7");
    }

    #[test]
    fn text_log_lines_carry_the_request_spans_trace_id() {
        let written = log_one_request(LogFormat::Text);
        assert!(written.contains("commission accrued"), "{written}");
        assert!(
            written.contains(&format!("trace_id={TRACE_ID}")),
            "{written}"
        );
        assert!(written.contains("request_id=req-7"), "{written}");
    }

    #[test]
    fn log_formats_parse_from_their_names_in_any_case() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!(" Text ".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::Json.to_string(), "json");
        let error = "yaml".parse::<LogFormat>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown log format \"yaml\": expected text or json"
        );
    }

    #[test]
    fn a_new_config_logs_text_at_info_and_exports_nothing() {
        let cfg = TelemetryConfig::new("commissions");
        assert_eq!(cfg.service_name, "commissions");
        assert_eq!(cfg.log_format, LogFormat::Text);
        assert_eq!(cfg.log_filter, "info");
        assert_eq!(cfg.otlp_endpoint, None);
    }
}
