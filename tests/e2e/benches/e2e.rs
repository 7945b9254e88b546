//! `make bench-e2e`: conversions per second through gRPC — a click and a sale recorded in
//! attribution, attributed, accrued by commissions and visible in its `GetConversionAccrual` —
//! with the latency of each from the sale's request to its commission being visible (p50,
//! p99), on the embedded default (one process) and over NATS (four processes). Numbers for
//! issue notes, never a pass/fail test.
//!
//! Each caller learns of its commission from one `GetConversionAccrual` that waits in
//! commissions until the accrual is visible (`wait_ms`, `Run::convert`), so the figures
//! measure the system rather than a client's poll loop.
//!
//! The peer, measured in the same run against the same in-process server: the gRPC floor, where
//! each "conversion" is three empty `grpc.health.v1` checks (the bench's three calls per
//! conversion: click, sale, accrual wait) over the same kind of channels from the same number
//! of callers, so every layer the services' calls pass (tonic, h2, the trace layer) and
//! nothing they do. No system that answers those three calls can go faster on this machine;
//! the ratio of each mode to it says how much of the time the services' own work takes.
//!
//! `BENCH_E2E_CONVERSIONS` (default 30,000) per mode, `BENCH_E2E_WORKERS` (default 64)
//! concurrent callers. The default run is long enough to be the steady state: its 60,000
//! messages (a click and a conversion each) overflow the in-process bus's retention (20,000),
//! so a consumer that falls behind (every consumer must ack a message before the bus drops it)
//! slows the relay and shows in the figures, instead of hiding in the buffer as it did in
//! shorter runs.

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::float_arithmetic
)] // timing code
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark fails loudly

use pl_bench_support::{env_num, machine};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pl_bus::testkit::NatsServer;
use pl_e2e::process::{Cluster, InProcess};
use pl_e2e::scenario::{t, Run};
use pl_e2e::Endpoints;
use pl_proto::attribution::v1 as att;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

struct Figures {
    conversions: u64,
    wall: Duration,
    latency: Histogram<u64>,
}

/// `conversions` rounds from `workers` concurrent callers, caller `w` taking rounds `w`,
/// `w + workers`, ...; `round(j)` does round `j` and returns the latency it measured.
async fn drive<F, Fut>(conversions: u64, workers: u64, round: F) -> Figures
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Duration> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let round = round.clone();
            tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).unwrap();
                for j in (w..conversions).step_by(workers as usize) {
                    let took = round(j).await;
                    h.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX))
                        .unwrap();
                }
                h
            })
        })
        .collect();
    let mut latency = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        latency.add(t.await.unwrap()).unwrap();
    }
    Figures {
        conversions,
        wall: started.elapsed(),
        latency,
    }
}

async fn load(endpoints: &Endpoints, conversions: u64, workers: u64) -> Figures {
    let run = Arc::new(Run::new(endpoints, Box::new(|_| {})).unwrap());
    run.setup().await.unwrap();
    // Warm the click path (attribution learns the link from CRM over the bus).
    run.click("affiliate", "warm-up", t(2, 1)).await.unwrap();
    drive(conversions, workers, move |j| {
        let run = run.clone();
        async move {
            let visitor = format!("bench-visitor-{j}");
            run.click("affiliate", &visitor, t(3, 1)).await.unwrap();
            let mut req = run.conversion(
                att::ConversionType::Sale,
                &format!("bench-sale-{j}"),
                &format!("bench-customer-{j}"),
                Some("100.00"),
                t(3, 2),
            );
            req.visitor_id = visitor;
            let sent = Instant::now();
            run.convert(req).await.unwrap();
            sent.elapsed()
        }
    })
    .await
}

/// The gRPC floor (see the module doc): `conversions` rounds of three health checks, two over
/// one channel and one over another, as `Run` sends a click and a sale to attribution and the
/// accrual wait to commissions; timed, as a conversion is, from the second.
async fn grpc_floor(addr: &str, conversions: u64, workers: u64) -> Figures {
    let channel = || {
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };
    let (first, second) = (HealthClient::new(channel()), HealthClient::new(channel()));
    drive(conversions, workers, move |_| {
        let (mut a, mut b) = (first.clone(), second.clone());
        async move {
            let check = || HealthCheckRequest {
                service: String::new(),
            };
            a.check(check()).await.unwrap();
            let sent = Instant::now();
            a.check(check()).await.unwrap();
            b.check(check()).await.unwrap();
            sent.elapsed()
        }
    })
    .await
}

fn rate(f: &Figures) -> f64 {
    f.conversions as f64 / f.wall.as_secs_f64()
}

fn row(mode: &str, f: &Figures, targets: &str) {
    let ms = |q: f64| f.latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "| {mode} | {} | {:.1} s | {:.0}/s | {:.1} ms | {:.1} ms | {targets} |",
        f.conversions,
        f.wall.as_secs_f64(),
        rate(f),
        ms(0.5),
        ms(0.99)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `BENCH_E2E_LOG=<filter>` (e.g. `warn`): the in-process system's logs on stderr.
    let _telemetry = std::env::var("BENCH_E2E_LOG").ok().map(|filter| {
        pl_telemetry::init(&pl_telemetry::TelemetryConfig {
            log_filter: filter,
            ..pl_telemetry::TelemetryConfig::new("e2e-bench")
        })
        .unwrap()
    });
    let conversions = env_num("BENCH_E2E_CONVERSIONS", 30_000).max(1);
    let workers = env_num("BENCH_E2E_WORKERS", 64).max(1);

    let dir = tempfile::tempdir().unwrap();
    let system = InProcess::start(dir.path()).await.unwrap();
    let embedded = load(&system.endpoints, conversions, workers).await;
    let floor = grpc_floor(&system.endpoints.attribution, conversions, workers).await;
    system.stop().await.unwrap();

    let nats = NatsServer::start().await.unwrap();
    let base = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&nats.url(), base.path()).await.unwrap();
    let over_nats = load(&cluster.endpoints, conversions, workers).await;
    cluster.stop().await.unwrap();

    println!();
    println!(
        "end to end through gRPC (click + sale → attributed → accrued → visible) — {}; {workers} concurrent callers",
        machine()
    );
    println!();
    println!("| mode | conversions | wall | rate | p50 | p99 | targets |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    row("embedded, one process", &embedded, "≥20k/s, p99 ≤20 ms");
    row("four processes over NATS", &over_nats, "p99 ≤50 ms");
    row(
        "peer: gRPC floor (3 health checks per conversion)",
        &floor,
        "—",
    );
    println!();
    println!(
        "embedded: {:.2}× the gRPC floor's rate; over NATS: {:.2}×",
        rate(&embedded) / rate(&floor),
        rate(&over_nats) / rate(&floor)
    );
}
