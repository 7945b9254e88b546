//! The gRPC server every mode runs: the services' routes plus `grpc.health.v1` and server
//! reflection, request limits, and graceful shutdown.
//!
//! Shutdown: when the token is cancelled every service is reported NOT_SERVING (so load
//! balancers stop sending), the listener stops accepting, in-flight requests get
//! `grace_period_ms` to finish, and then the server future returns; the caller flushes the log.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The RPCs [`serve`] adds to every server besides the services' own: health and reflection
/// (an authorization policy must name them too).
pub const INFRASTRUCTURE_RPCS: [&str; 4] = [
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Limits and addresses of the gRPC server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Time in-flight requests get to finish after SIGTERM.
    pub grace_period_ms: u64,
    /// Upper bound on any request; a shorter `grpc-timeout` from the caller wins.
    pub request_timeout_ms: u64,
    /// Largest request message accepted (decoded size).
    pub max_request_bytes: usize,
    /// Requests processed at once on one connection; more wait (bounded by HTTP/2 flow control).
    pub max_concurrent_requests_per_connection: usize,
    /// HTTP/2 streams a client may open at once on one connection.
    pub max_concurrent_streams: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            grace_period_ms: 10_000,
            request_timeout_ms: 30_000,
            max_request_bytes: 4 * 1024 * 1024,
            max_concurrent_requests_per_connection: 256,
            max_concurrent_streams: 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection set-up failed: {0}")]
    Reflection(String),
}

/// Health reporting for the services this process serves.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Vec<&'static str>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("services", &self.services)
            .finish()
    }
}

impl Health {
    /// Marks every service (and the whole server, name "") as `status`.
    pub async fn set_all(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for name in &self.services {
            self.reporter.set_service_status(*name, status).await;
        }
    }
}

/// A bound listener: binding is separate from serving so callers learn the real port (`:0`)
/// before serving, and a taken port fails at start-up with a clear error.
#[derive(Debug)]
pub struct Bound {
    listener: tokio::net::TcpListener,
    pub local_addr: SocketAddr,
}

pub async fn bind(addr: SocketAddr) -> Result<Bound, ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    Ok(Bound {
        listener,
        local_addr,
    })
}

/// Serves `routes` (the services named in `service_names`) plus health and reflection until
/// `shutdown` is cancelled, then drains within the grace period.
pub async fn serve<L>(
    config: &ServerConfig,
    bound: Bound,
    routes: Routes,
    service_names: Vec<&'static str>,
    layer: L,
    shutdown: CancellationToken,
) -> Result<(), ServeError>
where
    L: tower::Layer<crate::catch_panic::CatchPanic<Routes>> + Clone + Send + Sync + 'static,
    L::Service: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
{
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health {
        reporter,
        services: service_names,
    };
    health.set_all(ServingStatus::Serving).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pl_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    // v1alpha too: clients that still ask it (Python's grpcio-reflection, older grpcurl and GUI
    // clients) got UNIMPLEMENTED.
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let drain_started = CancellationToken::new();
    let on_shutdown = {
        let health = health.clone();
        let shutdown = shutdown.clone();
        let drain_started = drain_started.clone();
        async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: reporting not serving, draining in-flight requests");
            health.set_all(ServingStatus::NotServing).await;
            drain_started.cancel();
        }
    };
    // TCP_NODELAY on every accepted connection: without it a small response waits for the
    // peer's delayed ACK (Nagle), and a caller making one request after another on a kept-alive
    // connection paid about 40 ms per request (found by the end-to-end benchmark: a single
    // caller's click took 44 ms).
    let incoming =
        tonic::transport::server::TcpIncoming::from(bound.listener).with_nodelay(Some(true));
    let server = Server::builder()
        .timeout(Duration::from_millis(config.request_timeout_ms))
        .concurrency_limit_per_connection(config.max_concurrent_requests_per_connection)
        .max_concurrent_streams(config.max_concurrent_streams)
        .layer(layer)
        // Inside the caller's layer (tracing), so a panic is logged in the request's span.
        .layer(crate::catch_panic::CatchPanicLayer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, on_shutdown);
    tokio::pin!(server);
    let grace = Duration::from_millis(config.grace_period_ms);
    tokio::select! {
        result = &mut server => result.map_err(ServeError::from),
        () = async { drain_started.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_period_ms = config.grace_period_ms, "grace period over; abandoning in-flight requests");
            Ok(())
        }
    }
}
