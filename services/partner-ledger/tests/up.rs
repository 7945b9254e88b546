//! `up` as a user meets it: all services on one port, over real gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

#[path = "support/up.rs"]
mod support_up;

use std::time::Duration;

use pl_proto::commissions::v1::commissions_service_client::CommissionsServiceClient;
use pl_proto::commissions::v1::GetPartnerAccountRequest;
use pl_proto::common::v1::RequestContext;
use pl_proto::crm::v1::partner_crm_service_client::PartnerCrmServiceClient;
use pl_proto::crm::v1::{ApplyPartnerRequest, GetPartnerRequest, PartnerType};
use support_up::start;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;
use uuid::Uuid;

fn apply(key: &str, partner_id: Uuid, name: &str) -> ApplyPartnerRequest {
    ApplyPartnerRequest {
        context: Some(RequestContext {
            idempotency_key: key.into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_767_225_600,
                nanos: 0,
            }),
            correlation_id: String::new(),
        }),
        partner_id: partner_id.to_string(),
        program_id: Uuid::from_u128(77).to_string(),
        display_name: name.into(),
        partner_type: PartnerType::Affiliate.into(),
        email: "Ops@Acme.example".into(),
        country: "DE".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_reports_serving_and_is_listed_by_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let (running, channel) = start(dir.path()).await;
    let mut health = HealthClient::new(channel.clone());
    for service in [
        "",
        "partnerledger.crm.v1.PartnerCrmService",
        "partnerledger.attribution.v1.AttributionService",
        "partnerledger.commissions.v1.CommissionsService",
        "partnerledger.compliance.v1.ComplianceService",
    ] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
    let channel_alpha = channel.clone();
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let listed = format!("{:?}", responses.message().await.unwrap().unwrap());
    for name in [
        "PartnerCrmService",
        "AttributionService",
        "CommissionsService",
        "ComplianceService",
        "grpc.health.v1.Health",
    ] {
        assert!(listed.contains(name), "{name} missing from {listed}");
    }
    // Clients that still speak v1alpha (grpcio-reflection, older grpcurl) get the same list.
    let mut alpha =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(
            channel_alpha,
        );
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut responses = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let listed = format!("{:?}", responses.message().await.unwrap().unwrap());
    assert!(listed.contains("CommissionsService"), "{listed}");
    running.shutdown();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_returns_the_original_and_a_reused_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (running, channel) = start(dir.path()).await;
    let mut crm = PartnerCrmServiceClient::new(channel);
    let id = Uuid::from_u128(1);
    let first = crm
        .apply_partner(apply("apply-1", id, "Acme Media"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.email, "ops@acme.example");
    let again = crm
        .apply_partner(apply("apply-1", id, "Acme Media"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    let reused = crm
        .apply_partner(apply("apply-1", id, "Other Name"))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), tonic::Code::InvalidArgument);
    let bad = reused.get_error_details();
    assert_eq!(
        bad.bad_request().unwrap().field_violations[0].field,
        "context.idempotency_key"
    );
    // A new key for the same partner is a new operation, refused by the domain rule.
    let dup = crm
        .apply_partner(apply("apply-2", id, "Acme Media"))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    let got = crm
        .get_partner(GetPartnerRequest {
            partner_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, first);
    running.shutdown();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_every_field_violation_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (running, channel) = start(dir.path()).await;
    let mut crm = PartnerCrmServiceClient::new(channel);
    let mut req = apply("", Uuid::nil(), " padded ");
    req.email = "not-an-email".into();
    req.country = "germany".into();
    let err = crm.apply_partner(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|f| f.field.clone())
        .collect();
    assert_eq!(
        fields,
        [
            "context.idempotency_key",
            "partner_id",
            "display_name",
            "email",
            "country"
        ]
    );
    let missing = crm
        .get_partner(GetPartnerRequest {
            partner_id: Uuid::from_u128(5).to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    running.shutdown();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_applied_in_crm_opens_an_account_in_commissions_through_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let (running, channel) = start(dir.path()).await;
    let mut crm = PartnerCrmServiceClient::new(channel.clone());
    let mut commissions = CommissionsServiceClient::new(channel);
    let id = Uuid::from_u128(42);
    crm.apply_partner(apply("apply-42", id, "Acme Media"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let account = loop {
        match commissions
            .get_partner_account(GetPartnerAccountRequest {
                partner_id: id.to_string(),
                as_of: None,
            })
            .await
        {
            Ok(a) => break a.into_inner(),
            Err(s)
                if s.code() == tonic::Code::NotFound && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("account never opened: {s}"),
        }
    };
    assert_eq!(account.program_id, Uuid::from_u128(77).to_string());
    running.shutdown();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::from_u128(9);
    {
        let (running, channel) = start(dir.path()).await;
        PartnerCrmServiceClient::new(channel)
            .apply_partner(apply("apply-9", id, "Acme Media"))
            .await
            .unwrap();
        running.shutdown();
        running.wait().await.unwrap();
    }
    let (running, channel) = start(dir.path()).await;
    let got = PartnerCrmServiceClient::new(channel)
        .get_partner(GetPartnerRequest {
            partner_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.display_name, "Acme Media");
    running.shutdown();
    running.wait().await.unwrap();
}

/// Regression: `up`'s bus keeps nothing across a crash, so a relay checkpoint would have claimed
/// delivery of messages that died with the process. Events in the log that no consumer saw (as
/// after a crash) must still reach commissions on the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_events_that_died_with_the_process_are_delivered_after_restart() {
    use pl_eventlog::{
        EmbeddedLog, EmbeddedOptions, EventMetadata, EventStore, ExpectedVersion, NewEvent,
    };
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::from_u128(0x5eed);
    {
        // What a crashed process leaves: the fact is in the log, its message went nowhere.
        let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let data = serde_json::json!({
            "partner_id": id, "program_id": Uuid::from_u128(77), "display_name": "Acme",
            "partner_type": "affiliate", "email": "a@acme.example", "country": "DE",
            "applied_at": "2026-01-01T00:00:00Z",
        });
        let at = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let event = NewEvent::json(
            Uuid::from_u128(0xe1),
            "PartnerApplied",
            1,
            &data,
            EventMetadata::at(at),
        )
        .unwrap();
        log.append(
            &format!("partner-{id}"),
            ExpectedVersion::NoStream,
            vec![event],
        )
        .await
        .unwrap();
        // A checkpoint as the previous process's relay wrote it: past the event.
        let checkpoint = NewEvent::json(
            Uuid::from_u128(0xc1),
            pl_bus::CHECKPOINT_EVENT_TYPE,
            1,
            &serde_json::json!({ "relay": "all", "next_position": 1 }),
            EventMetadata::at(at),
        )
        .unwrap();
        log.append(
            "relay-checkpoint-all",
            ExpectedVersion::Any,
            vec![checkpoint],
        )
        .await
        .unwrap();
        log.close().unwrap();
    }
    let (running, channel) = start(dir.path()).await;
    let mut commissions = CommissionsServiceClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match commissions
            .get_partner_account(GetPartnerAccountRequest {
                partner_id: id.to_string(),
                as_of: None,
            })
            .await
        {
            Ok(_) => break,
            Err(s)
                if s.code() == tonic::Code::NotFound && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("account never opened: {s}"),
        }
    }
    running.shutdown();
    running.wait().await.unwrap();
}

/// `GetPartnerRequest` as a caller with a broken encoder sends it: field 1 (`partner_id`, a
/// string) carrying bytes that are not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct BrokenGetPartner {
    #[prost(bytes = "vec", tag = "1")]
    partner_id: Vec<u8>,
}

/// A request that is not valid protobuf was answered INTERNAL ("failed to decode Protobuf
/// message"), the code this API keeps for its own faults; it is the caller's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_not_valid_protobuf_is_invalid_argument_and_the_connection_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let (running, channel) = start(dir.path()).await;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path =
        http::uri::PathAndQuery::from_static("/partnerledger.crm.v1.PartnerCrmService/GetPartner");
    let refused = grpc
        .unary::<_, pl_proto::crm::v1::Partner, _>(
            tonic::Request::new(BrokenGetPartner {
                partner_id: vec![0xff, 0xfe, 0x80],
            }),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("not a valid protobuf encoding"),
        "{refused:?}"
    );
    // The same connection still answers.
    let mut crm = PartnerCrmServiceClient::new(channel);
    let missing = crm
        .get_partner(GetPartnerRequest {
            partner_id: Uuid::from_u128(404).to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    running.shutdown();
    running.wait().await.unwrap();
}

/// Fifty identical `RecordFxRate` calls at once over gRPC, one key and one body and no
/// business time (so the server fills in its receipt time): the twins decided side by side and
/// many failed, INTERNAL ("idempotency record vanished") or FAILED_PRECONDITION (their events
/// "stored with a different body": another receipt time). Every one now gets the original
/// answer, and the rate is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_calls_at_once_all_get_the_original_answer() {
    use pl_proto::commissions::v1::RecordFxRateRequest;
    let dir = tempfile::tempdir().unwrap();
    let (running, channel) = start(dir.path()).await;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut commissions = CommissionsServiceClient::new(channel.clone());
            tokio::spawn(async move {
                commissions
                    .record_fx_rate(RecordFxRateRequest {
                        context: Some(RequestContext {
                            idempotency_key: "rate-twins".into(),
                            occurred_at: None,
                            correlation_id: String::new(),
                        }),
                        from_currency: "EUR".into(),
                        to_currency: "USD".into(),
                        date: Some(prost_types::Timestamp {
                            seconds: 1_767_225_600,
                            nanos: 0,
                        }),
                        rate: "1.10".into(),
                    })
                    .await
                    .map(tonic::Response::into_inner)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    let first = answers[0].clone().unwrap();
    for answer in &answers {
        assert_eq!(answer.as_ref().ok(), Some(&first), "{answer:?}");
    }
    running.shutdown();
    running.wait().await.unwrap();
}
