//! The process-wide `init`. One test in its own binary: the global subscriber can be installed
//! once per process, so the steps run in order here and no other test shares the process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use std::net::TcpListener;
use std::time::{Duration, Instant};

use pl_telemetry::{init, LogFormat, TelemetryConfig, TelemetryError, SHUTDOWN_TIMEOUT};

#[test]
fn init_installs_once_rejects_bad_settings_and_shuts_down_within_its_timeout() {
    // Rejected settings install nothing, so a corrected call still succeeds afterwards.
    let mut cfg = TelemetryConfig::new("commissions");
    cfg.log_filter = "info,=[".to_owned();
    assert!(matches!(
        init(&cfg),
        Err(TelemetryError::InvalidFilter { .. })
    ));

    let mut cfg = TelemetryConfig::new("  ");
    assert!(matches!(init(&cfg), Err(TelemetryError::EmptyServiceName)));
    cfg.service_name = "commissions".to_owned();

    // A collector that accepts connections but never answers: export can only time out.
    let silent_collector = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent_collector.local_addr().unwrap());
    cfg.otlp_endpoint = Some(endpoint);
    cfg.log_format = LogFormat::Json;
    assert!(matches!(init(&cfg), Err(TelemetryError::NoTokioRuntime)));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut bad_endpoint = cfg.clone();
    bad_endpoint.otlp_endpoint = Some("not a uri".to_owned());
    let error = runtime.block_on(async { init(&bad_endpoint) }).unwrap_err();
    assert!(matches!(error, TelemetryError::Exporter { .. }), "{error}");

    let guard = runtime.block_on(async { init(&cfg) }).unwrap();

    let again = init(&TelemetryConfig::new("commissions"));
    assert!(matches!(again, Err(TelemetryError::AlreadyInitialized)));
    assert_eq!(
        again.unwrap_err().to_string(),
        "telemetry is already initialized in this process"
    );

    // The global subscriber carries trace context, and the global propagator is W3C.
    let span = tracing::info_span!("work");
    assert!(pl_telemetry::trace_id(&span).is_some());
    assert!(pl_telemetry::inject(&span).contains_key("traceparent"));
    drop(span);
    let fields: Vec<String> =
        opentelemetry::global::get_text_map_propagator(|p| p.fields().map(str::to_owned).collect());
    assert_eq!(fields, ["traceparent", "tracestate"]);

    // One buffered span, a collector that never answers: shutdown still returns in time.
    let started = Instant::now();
    let _ = guard.shutdown();
    assert!(
        started.elapsed() < SHUTDOWN_TIMEOUT + Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(runtime);
}
