//! Telemetry for every Partner Ledger process: structured logs to stderr, optional export of
//! spans over OTLP, and W3C trace-context propagation over plain string maps, so that one trace
//! follows a request through gRPC metadata, event metadata and NATS headers. It must never decide
//! anything about the ledger, never read a clock or randomness on behalf of domain code, and never
//! panic or fail a request because of a missing or malformed trace context: bad context is
//! ignored and the work starts a new trace.
//!
//! One process calls [`init`] once, at start-up, inside its tokio runtime, and keeps the
//! [`TelemetryGuard`] until it exits:
//!
//! ```no_run
//! # async fn run() -> Result<(), pl_telemetry::TelemetryError> {
//! use pl_telemetry::{LogFormat, TelemetryConfig};
//!
//! let mut cfg = TelemetryConfig::new("commissions");
//! cfg.log_format = LogFormat::Json;
//! cfg.otlp_endpoint = Some("http://otel-collector:4317".to_owned());
//! let telemetry = pl_telemetry::init(&cfg)?;
//! // ... serve, with `Server::builder().layer(pl_telemetry::GrpcTraceLayer::new())` ...
//! telemetry.shutdown()?;
//! # Ok(())
//! # }
//! ```
//!
//! Propagation works on the `traceparent`/`tracestate` pair as a `BTreeMap<String, String>`:
//! [`inject`] reads it from a span, [`set_parent`] makes a (not yet entered) span a child of it.
//! The gRPC glue is [`GrpcTraceLayer`] on the server and [`inject_into_metadata`] /
//! [`inject_interceptor`] on the client.

mod grpc;
mod init;
mod propagation;

pub use grpc::{
    extract_from_metadata, inject_interceptor, inject_into_metadata, GrpcTraceLayer,
    GrpcTraceService, REQUEST_ID_HEADER, REQUEST_SPAN_NAME,
};
pub use init::{
    init, LogFormat, TelemetryConfig, TelemetryError, TelemetryGuard, SHUTDOWN_TIMEOUT,
};
pub use propagation::{inject, set_parent, span_id, trace_id, TRACEPARENT, TRACESTATE};
