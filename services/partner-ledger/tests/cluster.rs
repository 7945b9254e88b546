//! Cluster mode: services as separate `serve` instances, each with its own event log, talking
//! over a real nats-server. One trace follows a request from gRPC through partner CRM's log,
//! the relay, NATS and the commissions consumer into the event commissions writes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use std::time::Duration;

use partner_ledger::app::{self, Running};
use partner_ledger::config::{Cli, Command};
use pl_auth::testkit::{TestIssuer, ALL_ROLES};
use pl_bus::testkit::NatsServer;
use pl_eventlog::{EmbeddedLog, EmbeddedOptions, EventStore};
use pl_proto::commissions::v1::commissions_service_client::CommissionsServiceClient;
use pl_proto::commissions::v1::GetPartnerAccountRequest;
use pl_proto::common::v1::RequestContext;
use pl_proto::crm::v1::partner_crm_service_client::PartnerCrmServiceClient;
use pl_proto::crm::v1::{ApplyPartnerRequest, PartnerType};
use tonic::transport::Channel;
use uuid::Uuid;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn serve(
    service: &str,
    dir: &std::path::Path,
    nats: &NatsServer,
    issuer: &TestIssuer,
) -> (Running, Channel) {
    let mut args: Vec<String> = [
        "partner-ledger",
        "serve",
        service,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
        "--bus",
        "nats",
        "--nats-url",
        &nats.url(),
        "--grace-period-ms",
        "2000",
    ]
    .map(String::from)
    .to_vec();
    args.extend(issuer.args());
    let cli = <Cli as clap::Parser>::try_parse_from(args).unwrap();
    let Command::Serve(args) = cli.command else {
        unreachable!()
    };
    let running = app::start_serve(&args).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", running.local_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (running, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_applied_on_one_process_opens_its_account_on_another_in_the_same_trace() {
    // The process-wide subscriber with the OpenTelemetry layer (no exporter), as in production.
    let _telemetry =
        pl_telemetry::init(&pl_telemetry::TelemetryConfig::new("cluster-test")).unwrap();
    let nats = NatsServer::start().await.unwrap();
    let (crm_dir, commissions_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let keys = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(keys.path()).unwrap();
    let (crm, crm_channel) = serve("crm", crm_dir.path(), &nats, &issuer).await;
    let (commissions, commissions_channel) =
        serve("commissions", commissions_dir.path(), &nats, &issuer).await;
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", issuer.token("ops", &ALL_ROLES).unwrap())
            .parse()
            .unwrap();

    let partner_id = Uuid::from_u128(0xabc);
    let mut request = tonic::Request::new(ApplyPartnerRequest {
        context: Some(RequestContext {
            idempotency_key: "apply-abc".into(),
            occurred_at: None,
            correlation_id: String::new(),
        }),
        partner_id: partner_id.to_string(),
        program_id: Uuid::from_u128(7).to_string(),
        display_name: "Northwind Referrals".into(),
        partner_type: PartnerType::Referral.into(),
        email: "team@northwind.example".into(),
        country: "GB".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    PartnerCrmServiceClient::new(crm_channel)
        .apply_partner(request)
        .await
        .unwrap();

    let mut client = CommissionsServiceClient::with_interceptor(
        commissions_channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        },
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let account = loop {
        let got = client
            .get_partner_account(GetPartnerAccountRequest {
                partner_id: partner_id.to_string(),
                as_of: None,
            })
            .await;
        match got {
            Ok(a) => break a.into_inner(),
            Err(s)
                if s.code() == tonic::Code::NotFound && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(s) => panic!("account never opened: {s}"),
        }
    };
    assert_eq!(account.partner_id, partner_id.to_string());
    crm.shutdown();
    commissions.shutdown();
    crm.wait().await.unwrap();
    commissions.wait().await.unwrap();

    // Each process wrote its own log; both facts carry the caller's trace.
    for (dir, stream) in [
        (crm_dir.path(), format!("partner-{partner_id}")),
        (commissions_dir.path(), format!("account-{partner_id}")),
    ] {
        let log = EmbeddedLog::open(dir, EmbeddedOptions::default()).unwrap();
        let events = log.read_stream(&stream, 0, 10).await.unwrap();
        let traceparent = &events[0].metadata.trace_context["traceparent"];
        assert!(traceparent.contains(TRACE_ID), "{stream}: {traceparent}");
    }
}
