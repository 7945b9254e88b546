//! Partner CRM as its callers meet it: requests over the gRPC implementation on the in-memory
//! event log, compliance's events through the consumer, and what CRM publishes fed to
//! attribution's own consumer (its contract parser and projection) on a separate log. Each test
//! is given (programs, partners, facts) / when (a request, or two at once) / then (the answer,
//! the published events, what attribution accepts).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use pl_attribution::AttributionService;
use pl_bus::Message;
use pl_eventlog::{AppendResult, EventStore, Hooked, LogError, MemoryLog, SharedStore, StoreHooks};
use pl_partner_crm::CrmService;
use pl_proto::attribution::v1 as apb;
use pl_proto::attribution::v1::attribution_service_server::AttributionService as AttributionApi;
use pl_proto::common::v1::{Money, PageRequest, RequestContext};
use pl_proto::crm::v1 as pb;
use pl_proto::crm::v1::partner_crm_service_server::PartnerCrmService as Api;
use pl_runtime::FixedClock;
use tonic::{Code, Request, Status};
use uuid::Uuid;

const PROGRAM: Uuid = Uuid::from_u128(0x9000);
const REGULATED: Uuid = Uuid::from_u128(0x9001);
const ALICE: Uuid = Uuid::from_u128(0xa1);
const BOB: Uuid = Uuid::from_u128(0xa2);
const CAROL: Uuid = Uuid::from_u128(0xa3);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn ts(t: DateTime<Utc>) -> pl_proto::prost_types::Timestamp {
    pl_proto::prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn usd(amount: &str) -> Option<Money> {
    Some(Money {
        amount: amount.into(),
        currency: "USD".into(),
    })
}

fn tier(code: &str, rank: u32, mdf: bool, deals: bool) -> pb::Tier {
    pb::Tier {
        code: code.into(),
        name: code.to_uppercase(),
        rank,
        access: Some(pb::TierAccess {
            plan_ids: vec![],
            mdf,
            deal_registration: deals,
        }),
    }
}

fn violations(s: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    s.get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default()
}

/// Yields to the scheduler before every stream read and append, so that two commands joined
/// with `tokio::join!` interleave (both read, then both append) instead of running one after
/// the other; counts the appends that lost an optimistic-concurrency race.
#[derive(Debug, Default)]
struct Racy {
    conflicts: AtomicU64,
}

type RacyLog = Hooked<MemoryLog, Racy>;

#[async_trait::async_trait]
impl StoreHooks for Racy {
    async fn before_append(&self, _: &dyn EventStore, _: &str) -> Result<(), LogError> {
        tokio::task::yield_now().await;
        Ok(())
    }

    async fn after_append(&self, _: &str, answer: &Result<AppendResult, LogError>) {
        if answer.as_ref().is_err_and(LogError::is_conflict) {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn before_read_stream(&self, _: &str) {
        tokio::task::yield_now().await;
    }
}

struct World {
    racy: Arc<RacyLog>,
    store: SharedStore,
    clock: Arc<FixedClock>,
    crm: CrmService,
    next: AtomicU64,
    /// Attribution on its own log, fed with what CRM publishes.
    attribution_store: SharedStore,
    attribution: AttributionService,
    relayed: AtomicU64,
}

fn world() -> World {
    let racy = Arc::new(RacyLog::default());
    let store: SharedStore = racy.clone();
    let clock = Arc::new(FixedClock::at(t0()));
    let attribution_store: SharedStore = Arc::new(MemoryLog::default());
    World {
        crm: CrmService::new(store.clone(), clock.clone()),
        racy,
        store,
        attribution: AttributionService::new(attribution_store.clone(), clock.clone(), "test-salt"),
        attribution_store,
        clock,
        next: AtomicU64::new(1),
        relayed: AtomicU64::new(0),
    }
}

impl World {
    fn ctx(&self) -> Option<RequestContext> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        Some(RequestContext {
            idempotency_key: format!("k-{n}"),
            occurred_at: None,
            correlation_id: String::new(),
        })
    }

    fn at(&self, t: DateTime<Utc>) {
        self.clock.set(t);
    }

    /// Appends that lost a race so far (each was re-decided on fresh state).
    fn conflicts(&self) -> u64 {
        self.racy.hooks.conflicts.load(Ordering::SeqCst)
    }

    async fn head(&self) -> u64 {
        *self.store.watch_head().borrow()
    }

    async fn program(
        &self,
        id: Uuid,
        jurisdictions: &[&str],
        auto: bool,
        tiers: Vec<pb::Tier>,
    ) -> pb::Program {
        self.crm
            .create_program(Request::new(pb::CreateProgramRequest {
                context: self.ctx(),
                program_id: id.to_string(),
                name: "Program".into(),
                vertical: if jurisdictions.is_empty() {
                    "saas".into()
                } else {
                    "igaming".into()
                },
                regulated: !jurisdictions.is_empty(),
                jurisdictions: jurisdictions.iter().map(|j| (*j).to_owned()).collect(),
                settings: Some(pb::ProgramSettings {
                    auto_approve: auto,
                    max_levels: 3,
                    deal_registration_days: 90,
                }),
                tiers,
            }))
            .await
            .unwrap()
            .into_inner()
    }

    async fn apply(&self, partner: Uuid, program: Uuid) -> Result<pb::Partner, Status> {
        self.crm
            .apply_partner(Request::new(pb::ApplyPartnerRequest {
                context: self.ctx(),
                partner_id: partner.to_string(),
                program_id: program.to_string(),
                display_name: format!("Partner {}", partner.as_u128()),
                partner_type: pb::PartnerType::Affiliate.into(),
                email: "ops@partner.example".into(),
                country: "DE".into(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn approve(&self, partner: Uuid, tier: &str) -> Result<pb::Partner, Status> {
        self.crm
            .approve_partner(Request::new(pb::ApprovePartnerRequest {
                context: self.ctx(),
                partner_id: partner.to_string(),
                tier: tier.into(),
                note: String::new(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    /// An approved partner of `program`.
    async fn partner(&self, partner: Uuid, program: Uuid) -> pb::Partner {
        self.apply(partner, program).await.unwrap();
        self.approve(partner, "").await.unwrap()
    }

    async fn get(&self, partner: Uuid) -> pb::Partner {
        self.crm
            .get_partner(Request::new(pb::GetPartnerRequest {
                partner_id: partner.to_string(),
            }))
            .await
            .unwrap()
            .into_inner()
    }

    async fn suspend(&self, partner: Uuid) -> Result<pb::Partner, Status> {
        self.crm
            .suspend_partner(Request::new(pb::SuspendPartnerRequest {
                context: self.ctx(),
                partner_id: partner.to_string(),
                reason: "fraud review".into(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn coupon(
        &self,
        partner: Uuid,
        code: &str,
        campaign: &str,
    ) -> Result<pb::Coupon, Status> {
        self.crm
            .issue_coupon(Request::new(pb::IssueCouponRequest {
                context: self.ctx(),
                partner_id: partner.to_string(),
                code: code.into(),
                campaign_id: campaign.into(),
                valid_from: None,
                expires_at: None,
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn link(&self, link: Uuid, partner: Uuid) -> Result<pb::TrackingLink, Status> {
        self.crm
            .issue_tracking_link(Request::new(pb::IssueTrackingLinkRequest {
                context: self.ctx(),
                tracking_link_id: link.to_string(),
                partner_id: partner.to_string(),
                campaign_id: String::new(),
                destination_url: "https://shop.example/".into(),
                expires_at: None,
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn register_deal(
        &self,
        deal: Uuid,
        partner: Uuid,
        domain: &str,
    ) -> Result<pb::Deal, Status> {
        self.crm
            .register_deal(Request::new(pb::RegisterDealRequest {
                context: self.ctx(),
                deal_id: deal.to_string(),
                partner_id: partner.to_string(),
                customer_domain: domain.into(),
                company_name: "Acme Corp".into(),
                contact: Some(pb::DealContact {
                    name: "Jo Buyer".into(),
                    email: "jo@acme.example".into(),
                }),
                estimated_value: usd("50000.00"),
                notes: String::new(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Data of the events CRM stored under `event_type` (what the relay publishes).
    async fn published(&self, event_type: &str) -> Vec<serde_json::Value> {
        let all = self.store.read_all(0, 4096).await.unwrap();
        all.iter()
            .filter(|e| e.stream.starts_with(pl_partner_crm::STREAM_PREFIX))
            .filter(|e| e.event_type == event_type)
            .map(|e| serde_json::from_slice(&e.data).unwrap())
            .collect()
    }

    /// Does what the relay does for CRM's route, into attribution's consumer.
    async fn relay_to_attribution(&self) {
        let from = self.relayed.load(Ordering::SeqCst);
        let events = self.store.read_all(from, 4096).await.unwrap();
        for ev in &events {
            self.relayed.store(ev.position + 1, Ordering::SeqCst);
            if !ev.stream.starts_with(pl_partner_crm::STREAM_PREFIX)
                || !pl_partner_crm::INTEGRATION_EVENTS.contains(&ev.event_type.as_str())
            {
                continue;
            }
            let msg = pl_bus::integration_message(ev, "pl", "crm").unwrap();
            pl_attribution::consumer::handle(self.attribution_store.as_ref(), msg)
                .await
                .unwrap_or_else(|e| panic!("attribution refused {}: {e}", ev.event_type));
        }
    }

    /// A compliance event, as the relay would deliver it.
    async fn compliance(&self, n: u128, event_type: &str, data: serde_json::Value) {
        let id = Uuid::from_u128(0xc0_0000 + n);
        let envelope = serde_json::json!({
            "id": id, "type": event_type, "schema_version": 1,
            "stream": "compliance-x", "version": 0, "position": n,
            "occurred_at": self.clock_now(), "recorded_at": self.clock_now(),
            "correlation_id": null, "causation_id": null, "data": data,
        });
        let m = Message {
            id,
            subject: format!("pl.compliance.{event_type}"),
            payload: bytes::Bytes::from(serde_json::to_vec(&envelope).unwrap()),
            headers: BTreeMap::new(),
        };
        pl_partner_crm::consumer::handle(self.store.as_ref(), m)
            .await
            .unwrap();
    }

    fn clock_now(&self) -> DateTime<Utc> {
        use pl_runtime::Clock;
        self.clock.now()
    }

    async fn click(&self, link: Uuid, t: DateTime<Utc>) -> Result<apb::Touchpoint, Status> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        self.attribution
            .record_touchpoint(Request::new(apb::RecordTouchpointRequest {
                context: self.ctx(),
                visitor_id: format!("visitor-{n}"),
                customer_id: String::new(),
                occurred_at: Some(ts(t)),
                touch: Some(apb::record_touchpoint_request::Touch::Click(
                    apb::ClickTouch {
                        click_id: Uuid::from_u128(0xc1_0000 + u128::from(n)).to_string(),
                        tracking_link_id: link.to_string(),
                        landing_url: "https://shop.example/".into(),
                        ip_address: "203.0.113.7".into(),
                        user_agent: "Mozilla/5.0".into(),
                        ..Default::default()
                    },
                )),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn redeem(
        &self,
        program: Uuid,
        code: &str,
        t: DateTime<Utc>,
    ) -> Result<apb::Touchpoint, Status> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        self.attribution
            .record_touchpoint(Request::new(apb::RecordTouchpointRequest {
                context: self.ctx(),
                visitor_id: String::new(),
                customer_id: format!("customer-{n}"),
                occurred_at: Some(ts(t)),
                touch: Some(apb::record_touchpoint_request::Touch::Coupon(
                    apb::CouponRedemption {
                        redemption_id: Uuid::from_u128(0xd1_0000 + u128::from(n)).to_string(),
                        program_id: program.to_string(),
                        code: code.into(),
                    },
                )),
            }))
            .await
            .map(tonic::Response::into_inner)
    }
}

// ----- lifecycle -------------------------------------------------------------------------------

#[tokio::test]
async fn a_partner_goes_through_review_approval_suspension_reinstatement_and_termination_and_each_status_is_published(
) {
    let w = world();
    w.program(
        PROGRAM,
        &[],
        false,
        vec![tier("bronze", 1, false, false), tier("gold", 3, true, true)],
    )
    .await;
    let applied = w.apply(ALICE, PROGRAM).await.unwrap();
    assert_eq!(applied.stage(), pb::PartnerStage::Applied);
    let reviewed = w
        .crm
        .start_partner_review(Request::new(pb::StartPartnerReviewRequest {
            context: w.ctx(),
            partner_id: ALICE.to_string(),
            reviewer: "maria".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reviewed.stage(), reviewed.reviewer.as_str()),
        (pb::PartnerStage::InReview, "maria")
    );
    let approved = w.approve(ALICE, "").await.unwrap();
    assert_eq!(approved.status(), pb::PartnerStatus::Approved);
    assert_eq!(approved.tier, "bronze", "the lowest tier by default");
    w.at(t0() + Duration::hours(1));
    assert_eq!(
        w.suspend(ALICE).await.unwrap().status(),
        pb::PartnerStatus::Suspended
    );
    w.at(t0() + Duration::hours(2));
    let back = w
        .crm
        .reinstate_partner(Request::new(pb::ReinstatePartnerRequest {
            context: w.ctx(),
            partner_id: ALICE.to_string(),
            note: "cleared".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.status(), pb::PartnerStatus::Approved);
    w.at(t0() + Duration::hours(3));
    let ended = w
        .crm
        .terminate_partner(Request::new(pb::TerminatePartnerRequest {
            context: w.ctx(),
            partner_id: ALICE.to_string(),
            reason: "contract ended".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.status(), pb::PartnerStatus::Terminated);
    let stages: Vec<_> = ended
        .status_history
        .iter()
        .map(pb::StatusPeriod::stage)
        .collect();
    assert_eq!(
        stages,
        [
            pb::PartnerStage::Applied,
            pb::PartnerStage::InReview,
            pb::PartnerStage::Approved,
            pb::PartnerStage::Suspended,
            pb::PartnerStage::Approved,
            pb::PartnerStage::Terminated
        ]
    );
    let statuses: Vec<String> = w
        .published("PartnerStatusChanged")
        .await
        .iter()
        .map(|e| e["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        statuses,
        [
            "PARTNER_STATUS_APPROVED",
            "PARTNER_STATUS_SUSPENDED",
            "PARTNER_STATUS_APPROVED",
            "PARTNER_STATUS_TERMINATED"
        ]
    );
    assert_eq!(w.published("PartnerTierChanged").await[0]["tier"], "bronze");
    // A terminated partner cannot come back.
    let again = w.approve(ALICE, "").await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn a_rejection_needs_a_reason_and_a_rejected_partner_stays_rejected() {
    let w = world();
    w.program(PROGRAM, &[], false, vec![]).await;
    w.apply(ALICE, PROGRAM).await.unwrap();
    let before = w.head().await;
    let missing = w
        .crm
        .reject_partner(Request::new(pb::RejectPartnerRequest {
            context: w.ctx(),
            partner_id: ALICE.to_string(),
            reason: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (missing.code(), violations(&missing)),
        (Code::InvalidArgument, vec!["reason".to_owned()])
    );
    assert_eq!(w.head().await, before, "nothing appended on bad input");
    let rejected = w
        .crm
        .reject_partner(Request::new(pb::RejectPartnerRequest {
            context: w.ctx(),
            partner_id: ALICE.to_string(),
            reason: "no traffic sources".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejected.status(), pb::PartnerStatus::Rejected);
    assert_eq!(
        rejected.status_history.last().unwrap().reason,
        "no traffic sources"
    );
    assert_eq!(
        w.approve(ALICE, "").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        w.published("PartnerStatusChanged").await[0]["reason"],
        "no traffic sources"
    );
}

#[tokio::test]
async fn an_auto_approving_program_approves_an_application_at_once_in_its_lowest_tier() {
    let w = world();
    w.program(
        PROGRAM,
        &[],
        true,
        vec![
            tier("silver", 2, false, true),
            tier("bronze", 1, false, false),
        ],
    )
    .await;
    let p = w.apply(ALICE, PROGRAM).await.unwrap();
    assert_eq!(
        (p.status(), p.tier.as_str()),
        (pb::PartnerStatus::Approved, "bronze")
    );
    let changed = w.published("PartnerStatusChanged").await;
    assert_eq!(changed[0]["transition"], "auto_approved");
    assert_eq!(w.published("PartnerApplied").await.len(), 1);
}

#[tokio::test]
async fn an_application_to_a_program_crm_does_not_know_is_recorded_but_approved_only_once_it_is_defined(
) {
    let w = world();
    let p = w.apply(ALICE, PROGRAM).await.unwrap();
    assert_eq!(p.status(), pb::PartnerStatus::Applied);
    let err = w.approve(ALICE, "").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("not defined"), "{}", err.message());
    w.program(PROGRAM, &[], false, vec![]).await;
    assert_eq!(
        w.approve(ALICE, "").await.unwrap().status(),
        pb::PartnerStatus::Approved
    );
}

#[tokio::test]
async fn a_partner_of_a_regulated_program_is_activated_only_after_compliance_approves_every_jurisdiction(
) {
    let w = world();
    w.program(REGULATED, &["GB", "MT"], false, vec![]).await;
    w.apply(ALICE, REGULATED).await.unwrap();
    let waiting = w.approve(ALICE, "").await.unwrap();
    assert_eq!(waiting.stage(), pb::PartnerStage::AwaitingCompliance);
    assert_eq!(waiting.status(), pb::PartnerStatus::Applied);
    // A link cannot be issued before activation.
    assert_eq!(
        w.link(Uuid::from_u128(0x11), ALICE)
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    // Compliance approves GB only: still waiting.
    let grant = |j: &[&str]| {
        serde_json::json!({
            "partner_id": ALICE, "program_id": REGULATED, "jurisdictions": j,
            "reference": "LIC-77", "occurred_at": t0() + Duration::hours(1),
        })
    };
    w.compliance(1, "ComplianceApprovalGranted", grant(&["GB"]))
        .await;
    assert_eq!(
        w.get(ALICE).await.stage(),
        pb::PartnerStage::AwaitingCompliance
    );
    // Every jurisdiction: activated, and published.
    w.compliance(2, "ComplianceApprovalGranted", grant(&["gb", "MT"]))
        .await;
    let active = w.get(ALICE).await;
    assert_eq!(active.status(), pb::PartnerStatus::Approved);
    let changed = w.published("PartnerStatusChanged").await;
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["transition"], "compliance_completed");
    // A redelivered grant appends nothing.
    let head = w.head().await;
    w.compliance(2, "ComplianceApprovalGranted", grant(&["gb", "MT"]))
        .await;
    assert_eq!(w.head().await, head);
    // Compliance revokes: suspended, and a manager cannot lift it.
    w.compliance(
        3,
        "ComplianceApprovalRevoked",
        serde_json::json!({"partner_id": ALICE, "program_id": REGULATED, "reason": "licence lapsed", "occurred_at": t0() + Duration::hours(2)}),
    )
    .await;
    let suspended = w.get(ALICE).await;
    assert_eq!(suspended.status(), pb::PartnerStatus::Suspended);
    w.at(t0() + Duration::hours(3));
    let refused = w
        .crm
        .reinstate_partner(Request::new(pb::ReinstatePartnerRequest {
            context: w.ctx(),
            partner_id: ALICE.to_string(),
            note: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    // Compliance's other events are ignored.
    w.compliance(
        4,
        "VerificationRecorded",
        serde_json::json!({"partner_id": ALICE}),
    )
    .await;
}

// ----- tracking assets -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_partners_claiming_the_same_coupon_code_at_once_in_different_cases_exactly_one_wins() {
    let w = world();
    w.program(PROGRAM, &[], true, vec![]).await;
    for p in [ALICE, BOB] {
        w.apply(p, PROGRAM).await.unwrap();
    }
    for round in 0..10 {
        let code = format!("spring{round}");
        let upper = code.to_uppercase();
        let (a, b) = tokio::join!(w.coupon(ALICE, &code, ""), w.coupon(BOB, &upper, ""));
        let wins = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {a:?} / {b:?}");
        let loser = match (a, b) {
            (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
            other => panic!("exactly one must win: {other:?}"),
        };
        assert_eq!(loser.code(), Code::AlreadyExists, "{loser:?}");
    }
    assert_eq!(w.published("CouponIssued").await.len(), 10);
    assert!(
        w.conflicts() >= 10,
        "every round raced on the code's stream: {}",
        w.conflicts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_issuing_the_same_tracking_link_id_at_once_exactly_one_wins() {
    let w = world();
    w.program(PROGRAM, &[], true, vec![]).await;
    for p in [ALICE, BOB] {
        w.apply(p, PROGRAM).await.unwrap();
    }
    for round in 0..10u128 {
        let link = Uuid::from_u128(0x1100 + round);
        let (a, b) = tokio::join!(w.link(link, ALICE), w.link(link, BOB));
        assert_eq!(
            [&a, &b].iter().filter(|r| r.is_ok()).count(),
            1,
            "{a:?} / {b:?}"
        );
        let loser = match (a, b) {
            (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
            other => panic!("exactly one must win: {other:?}"),
        };
        assert_eq!(loser.code(), Code::AlreadyExists);
    }
    assert!(
        w.conflicts() >= 10,
        "every round raced on the link's stream: {}",
        w.conflicts()
    );
}

#[tokio::test]
async fn a_code_is_free_again_once_its_coupon_was_deactivated_and_expiry_is_published_for_attribution(
) {
    let w = world();
    w.program(PROGRAM, &[], true, vec![]).await;
    for p in [ALICE, BOB] {
        w.apply(p, PROGRAM).await.unwrap();
    }
    let first = w.coupon(ALICE, "Summer-10", "").await.unwrap();
    assert!(first.active);
    let off = w
        .crm
        .deactivate_coupon(Request::new(pb::DeactivateCouponRequest {
            context: w.ctx(),
            program_id: PROGRAM.to_string(),
            code: "SUMMER-10".into(),
            reason: "campaign over".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!off.active);
    w.at(t0() + Duration::minutes(1));
    let second = w.coupon(BOB, "summer-10", "").await.unwrap();
    assert_ne!(second.coupon_id, first.coupon_id);
    let got = w
        .crm
        .get_coupon(Request::new(pb::GetCouponRequest {
            program_id: PROGRAM.to_string(),
            code: "SUMMER-10".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.partner_id, BOB.to_string());
    // A link with an expiry publishes its deactivation at the expiry.
    let expiring = w
        .crm
        .issue_tracking_link(Request::new(pb::IssueTrackingLinkRequest {
            context: w.ctx(),
            tracking_link_id: Uuid::from_u128(0x77).to_string(),
            partner_id: ALICE.to_string(),
            campaign_id: String::new(),
            destination_url: "https://shop.example/x".into(),
            expires_at: Some(ts(t0() + Duration::days(30))),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(expiring.active);
    let off = w.published("TrackingLinkDeactivated").await;
    assert_eq!(off[0]["reason"], "expired");
    assert_eq!(off[0]["occurred_at"], "2026-03-31T12:00:00Z");
    let all: Vec<pb::Coupon> = w
        .crm
        .list_coupons(Request::new(pb::ListCouponsRequest {
            partner_id: ALICE.to_string(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .coupons;
    assert_eq!(all.len(), 1);
}

#[tokio::test]
async fn a_suspended_partners_tracking_link_and_coupon_stop_working_in_attribution() {
    let w = world();
    w.program(PROGRAM, &[], true, vec![]).await;
    w.apply(ALICE, PROGRAM).await.unwrap();
    let link = Uuid::from_u128(0x5151);
    w.link(link, ALICE).await.unwrap();
    w.coupon(ALICE, "ALICE10", "").await.unwrap();
    w.relay_to_attribution().await;
    // Working while approved.
    w.click(link, t0() + Duration::minutes(5)).await.unwrap();
    w.redeem(PROGRAM, "alice10", t0() + Duration::minutes(5))
        .await
        .unwrap();
    // Suspended an hour later: attribution rejects what comes after.
    w.at(t0() + Duration::hours(1));
    w.suspend(ALICE).await.unwrap();
    w.relay_to_attribution().await;
    let click = w.click(link, t0() + Duration::hours(2)).await.unwrap_err();
    assert_eq!(click.code(), Code::FailedPrecondition, "{click:?}");
    let coupon = w
        .redeem(PROGRAM, "ALICE10", t0() + Duration::hours(2))
        .await
        .unwrap_err();
    assert_eq!(coupon.code(), Code::FailedPrecondition, "{coupon:?}");
    // CRM's own views say the same.
    let l = w
        .crm
        .get_tracking_link(Request::new(pb::GetTrackingLinkRequest {
            tracking_link_id: link.to_string(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!l.active);
}

// ----- deals -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_valid_deal_registration_wins_even_when_two_partners_register_the_domain_at_once()
{
    let w = world();
    w.program(PROGRAM, &[], true, vec![]).await;
    for p in [ALICE, BOB] {
        w.apply(p, PROGRAM).await.unwrap();
    }
    for round in 0..5u128 {
        let domain = format!("acme{round}.example");
        let upper = domain.to_uppercase();
        let (a, b) = tokio::join!(
            w.register_deal(Uuid::from_u128(0xd000 + round * 2), ALICE, &domain),
            w.register_deal(Uuid::from_u128(0xd001 + round * 2), BOB, &upper)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut statuses = [a.status(), b.status()];
        statuses.sort_by_key(|s| *s as i32);
        assert_eq!(
            statuses,
            [pb::DealStatus::Pending, pb::DealStatus::Conflicted]
        );
        let (winner, loser) = if a.status() == pb::DealStatus::Pending {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(loser.conflicts_with, winner.deal_id);
    }
    assert!(
        w.conflicts() >= 5,
        "every round raced on the domain's registry: {}",
        w.conflicts()
    );
    // A deal id is registered once.
    let dup = w
        .register_deal(Uuid::from_u128(0xd000), BOB, "other.example")
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn an_approved_deal_expires_after_the_program_days_and_a_won_deal_binds_the_customer_for_good(
) {
    let w = world();
    w.program(PROGRAM, &[], true, vec![]).await;
    for p in [ALICE, BOB] {
        w.apply(p, PROGRAM).await.unwrap();
    }
    let deal = Uuid::from_u128(0xde);
    let registered = w.register_deal(deal, ALICE, "acme.example").await.unwrap();
    assert_eq!(registered.expires_at, Some(ts(t0() + Duration::days(90))));
    let approved = w
        .crm
        .approve_deal(Request::new(pb::ApproveDealRequest {
            context: w.ctx(),
            deal_id: deal.to_string(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.status(), pb::DealStatus::Approved);
    let published = w.published("DealRegistrationApproved").await;
    assert_eq!(published[0]["customer_domain"], "acme.example");
    assert_eq!(published[0]["expires_at"], "2026-05-30T12:00:00Z");
    // Won on day 30: bound for good, restated without expiry.
    w.at(t0() + Duration::days(30));
    let won = w
        .crm
        .win_deal(Request::new(pb::WinDealRequest {
            context: w.ctx(),
            deal_id: deal.to_string(),
            customer_id: "cus_42".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (won.status(), won.customer_id.as_str()),
        (pb::DealStatus::Won, "cus_42")
    );
    let restated = w.published("DealRegistrationApproved").await;
    assert_eq!(restated.len(), 2);
    assert_eq!(restated[1]["customer_id"], "cus_42");
    assert!(restated[1].get("expires_at").is_none());
    assert_eq!(restated[1]["approved_at"], restated[0]["approved_at"]);
    w.relay_to_attribution().await;
    // A year later the domain is still taken.
    w.at(t0() + Duration::days(400));
    let late = w
        .register_deal(Uuid::from_u128(0xdf), BOB, "acme.example")
        .await
        .unwrap();
    assert_eq!(late.status(), pb::DealStatus::Conflicted);
    // Another deal left pending expires.
    let other = w
        .register_deal(Uuid::from_u128(0xe0), BOB, "globex.example")
        .await
        .unwrap();
    assert_eq!(other.status(), pb::DealStatus::Pending);
    w.at(t0() + Duration::days(491));
    let got = w
        .crm
        .get_deal(Request::new(pb::GetDealRequest {
            deal_id: Uuid::from_u128(0xe0).to_string(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status(), pb::DealStatus::Expired);
    let late_approval = w
        .crm
        .approve_deal(Request::new(pb::ApproveDealRequest {
            context: w.ctx(),
            deal_id: Uuid::from_u128(0xe0).to_string(),
        }))
        .await
        .unwrap_err();
    assert_eq!(late_approval.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn deal_registration_and_mdf_follow_what_the_partners_tier_allows_from_its_effective_date() {
    let w = world();
    w.program(
        PROGRAM,
        &[],
        false,
        vec![tier("bronze", 1, false, false), tier("gold", 2, true, true)],
    )
    .await;
    w.partner(ALICE, PROGRAM).await;
    let refused = w
        .register_deal(Uuid::from_u128(0xd1), ALICE, "acme.example")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let gold_from = t0() + Duration::days(10);
    let changed = w
        .crm
        .change_partner_tier(Request::new(pb::ChangePartnerTierRequest {
            context: w.ctx(),
            partner_id: ALICE.to_string(),
            tier: "GOLD".into(),
            effective_from: Some(ts(gold_from)),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.tier, "bronze", "gold is not in force yet");
    assert_eq!(changed.tier_history.len(), 2);
    assert_eq!(
        w.published("PartnerTierChanged").await[1]["effective_from"],
        "2026-03-11T12:00:00Z"
    );
    w.at(gold_from);
    assert_eq!(w.get(ALICE).await.tier, "gold");
    w.register_deal(Uuid::from_u128(0xd1), ALICE, "acme.example")
        .await
        .unwrap();
    let unknown = w
        .crm
        .change_partner_tier(Request::new(pb::ChangePartnerTierRequest {
            context: w.ctx(),
            partner_id: ALICE.to_string(),
            tier: "platinum".into(),
            effective_from: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(violations(&unknown), ["tier"]);
}

// ----- MDF -------------------------------------------------------------------------------------

async fn budget_with_request(w: &World, amount: &str, request: &str) -> (String, Uuid) {
    w.program(PROGRAM, &[], true, vec![]).await;
    w.apply(ALICE, PROGRAM).await.unwrap();
    let b = w
        .crm
        .set_mdf_budget(Request::new(pb::SetMdfBudgetRequest {
            context: w.ctx(),
            partner_id: ALICE.to_string(),
            period: "2026-Q1".into(),
            amount: usd(amount),
        }))
        .await
        .unwrap()
        .into_inner();
    let request_id = Uuid::from_u128(0x7e0);
    if !request.is_empty() {
        w.crm
            .request_mdf(Request::new(pb::RequestMdfRequest {
                context: w.ctx(),
                budget_id: b.budget_id.clone(),
                request_id: request_id.to_string(),
                amount: usd(request),
                activity: "trade show booth".into(),
            }))
            .await
            .unwrap();
        w.crm
            .approve_mdf_request(Request::new(pb::ApproveMdfRequestRequest {
                context: w.ctx(),
                budget_id: b.budget_id.clone(),
                request_id: request_id.to_string(),
                amount: None,
            }))
            .await
            .unwrap();
    }
    (b.budget_id, request_id)
}

async fn claim(
    w: &World,
    budget: &str,
    claim: u128,
    request: Uuid,
    amount: &str,
) -> Result<pb::MdfBudget, Status> {
    w.crm
        .claim_mdf(Request::new(pb::ClaimMdfRequest {
            context: w.ctx(),
            budget_id: budget.into(),
            claim_id: Uuid::from_u128(claim).to_string(),
            request_id: request.to_string(),
            amount: usd(amount),
            proof_reference: "s3://proofs/booth-invoice.pdf".into(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_mdf_claims_that_together_exceed_the_approved_request_never_both_land() {
    let w = world();
    let (budget, request) = budget_with_request(&w, "1000.00", "100.00").await;
    for round in 0..5u128 {
        let (a, b) = tokio::join!(
            claim(&w, &budget, 0x100 + round * 2, request, "60.00"),
            claim(&w, &budget, 0x101 + round * 2, request, "60.00")
        );
        assert_eq!(
            [&a, &b].iter().filter(|r| r.is_ok()).count(),
            1,
            "{a:?} / {b:?}"
        );
        let a_won = a.is_ok();
        let loser = if a_won {
            b.unwrap_err()
        } else {
            a.unwrap_err()
        };
        assert_eq!(loser.code(), Code::FailedPrecondition);
        // Free the request again for the next round.
        let winner = Uuid::from_u128(0x100 + round * 2 + u128::from(!a_won));
        w.crm
            .reject_mdf_claim(Request::new(pb::RejectMdfClaimRequest {
                context: w.ctx(),
                budget_id: budget.clone(),
                claim_id: winner.to_string(),
                reason: "round over".into(),
            }))
            .await
            .unwrap();
    }
    assert!(
        w.conflicts() >= 5,
        "every round raced on the budget's stream: {}",
        w.conflicts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mdf_request_approvals_never_overspend_the_budget() {
    let w = world();
    let (budget, _) = budget_with_request(&w, "1000.00", "").await;
    for n in 0..4u128 {
        w.crm
            .request_mdf(Request::new(pb::RequestMdfRequest {
                context: w.ctx(),
                budget_id: budget.clone(),
                request_id: Uuid::from_u128(0x200 + n).to_string(),
                amount: usd("400.00"),
                activity: "webinar".into(),
            }))
            .await
            .unwrap();
    }
    let approve = |n: u128| {
        w.crm
            .approve_mdf_request(Request::new(pb::ApproveMdfRequestRequest {
                context: w.ctx(),
                budget_id: budget.clone(),
                request_id: Uuid::from_u128(0x200 + n).to_string(),
                amount: None,
            }))
    };
    let (a, b, c, d) = tokio::join!(approve(0), approve(1), approve(2), approve(3));
    let ok = [a.is_ok(), b.is_ok(), c.is_ok(), d.is_ok()]
        .iter()
        .filter(|x| **x)
        .count();
    assert_eq!(ok, 2, "1000 fits two requests of 400");
    assert!(
        w.conflicts() >= 3,
        "the approvals raced on the budget's stream: {}",
        w.conflicts()
    );
    let got = w
        .crm
        .get_mdf_budget(Request::new(pb::GetMdfBudgetRequest {
            budget_id: String::new(),
            partner_id: ALICE.to_string(),
            period: "2026-Q1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.committed.unwrap().amount, "800.00");
    assert_eq!(got.available.unwrap().amount, "200.00");
}

#[tokio::test]
async fn an_approved_mdf_claim_publishes_a_reimbursement_commissions_can_book() {
    let w = world();
    let (budget, request) = budget_with_request(&w, "1000.00", "500.00").await;
    claim(&w, &budget, 0x300, request, "450.00").await.unwrap();
    let over = claim(&w, &budget, 0x301, request, "50.01")
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition);
    assert!(
        over.message().contains("49.99") || over.message().contains("50.00"),
        "{}",
        over.message()
    );
    let approved = w
        .crm
        .approve_mdf_claim(Request::new(pb::ApproveMdfClaimRequest {
            context: w.ctx(),
            budget_id: budget.clone(),
            claim_id: Uuid::from_u128(0x300).to_string(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.reimbursed.unwrap().amount, "450.00");
    let r = &w.published("MdfReimbursementApproved").await[0];
    assert_eq!(r["claim_id"], Uuid::from_u128(0x300).to_string());
    assert_eq!(r["partner_id"], ALICE.to_string());
    assert_eq!(r["program_id"], PROGRAM.to_string());
    assert_eq!(
        r["amount"],
        serde_json::json!({"amount": "450.00", "currency": "USD"})
    );
    assert_eq!(r["period"], "2026-Q1");
    assert_eq!(r["occurred_at"], "2026-03-01T12:00:00Z");
    // The budget cannot be cut below what is committed.
    let cut = w
        .crm
        .set_mdf_budget(Request::new(pb::SetMdfBudgetRequest {
            context: w.ctx(),
            partner_id: ALICE.to_string(),
            period: "2026-Q1".into(),
            amount: usd("499.99"),
        }))
        .await
        .unwrap_err();
    assert_eq!(cut.code(), Code::FailedPrecondition);
}

// ----- campaigns -------------------------------------------------------------------------------

#[tokio::test]
async fn a_creator_campaign_commits_each_flat_fee_once_and_awards_its_bonus_when_the_target_is_reached(
) {
    let w = world();
    w.program(PROGRAM, &[], true, vec![]).await;
    for p in [ALICE, BOB, CAROL] {
        w.apply(p, PROGRAM).await.unwrap();
    }
    let campaign = Uuid::from_u128(0xca);
    let created = w
        .crm
        .create_campaign(Request::new(pb::CreateCampaignRequest {
            context: w.ctx(),
            campaign_id: campaign.to_string(),
            program_id: PROGRAM.to_string(),
            name: "Spring creators".into(),
            starts_at: Some(ts(t0() + Duration::days(1))),
            ends_at: Some(ts(t0() + Duration::days(31))),
            members: vec![
                pb::CampaignMember {
                    partner_id: ALICE.to_string(),
                    flat_fee: usd("2500.00"),
                    ..Default::default()
                },
                pb::CampaignMember {
                    partner_id: BOB.to_string(),
                    flat_fee: usd("0.00"),
                    ..Default::default()
                },
            ],
            bonus: Some(pb::PerformanceBonus {
                target_conversions: 100,
                amount: usd("500.00"),
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.members.len(), 2);
    // Campaign assets go only to its members.
    w.coupon(ALICE, "ALICE-SPRING", &campaign.to_string())
        .await
        .unwrap();
    let outsider = w
        .coupon(CAROL, "CAROL-SPRING", &campaign.to_string())
        .await
        .unwrap_err();
    assert_eq!(outsider.code(), Code::FailedPrecondition);
    let commit = |p: Uuid| {
        w.crm
            .commit_campaign_fee(Request::new(pb::CommitCampaignFeeRequest {
                context: w.ctx(),
                campaign_id: campaign.to_string(),
                partner_id: p.to_string(),
            }))
    };
    assert_eq!(
        commit(ALICE).await.unwrap_err().code(),
        Code::FailedPrecondition,
        "not started yet"
    );
    w.at(t0() + Duration::days(2));
    let committed = commit(ALICE).await.unwrap().into_inner();
    assert!(committed.members[0].fee_committed_at.is_some());
    assert_eq!(
        commit(ALICE).await.unwrap_err().code(),
        Code::FailedPrecondition,
        "once"
    );
    assert_eq!(
        commit(BOB).await.unwrap_err().code(),
        Code::FailedPrecondition,
        "no fee"
    );
    let fee = &w.published("CampaignFeeCommitted").await[0];
    assert_eq!(
        (
            fee["campaign_id"].as_str(),
            fee["partner_id"].as_str(),
            fee["program_id"].as_str()
        ),
        (
            Some(campaign.to_string().as_str()),
            Some(ALICE.to_string().as_str()),
            Some(PROGRAM.to_string().as_str())
        )
    );
    assert_eq!(
        fee["amount"],
        serde_json::json!({"amount": "2500.00", "currency": "USD"})
    );
    let award = |conversions| {
        w.crm
            .award_campaign_bonus(Request::new(pb::AwardCampaignBonusRequest {
                context: w.ctx(),
                campaign_id: campaign.to_string(),
                partner_id: BOB.to_string(),
                conversions,
            }))
    };
    assert_eq!(
        award(99).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    award(130).await.unwrap();
    assert_eq!(
        w.published("CampaignBonusAwarded").await[0]["conversions"],
        "130"
    );
    // Attribution takes the campaign and its coupon.
    w.relay_to_attribution().await;
    let listed = w
        .crm
        .list_campaigns(Request::new(pb::ListCampaignsRequest {
            page: None,
            program_id: String::new(),
            partner_id: BOB.to_string(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.campaigns.len(), 1);
}

// ----- hierarchy, profiles, listings, assets ---------------------------------------------------

async fn set_parent(w: &World, partner: Uuid, parent: Option<Uuid>) -> Result<pb::Partner, Status> {
    w.crm
        .set_partner_parent(Request::new(pb::SetPartnerParentRequest {
            context: w.ctx(),
            partner_id: partner.to_string(),
            parent_partner_id: parent.map(|p| p.to_string()).unwrap_or_default(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hierarchy_rejects_cycles_and_two_opposite_parent_changes_at_once_leave_no_cycle() {
    let w = world();
    w.program(PROGRAM, &[], true, vec![]).await;
    for p in [ALICE, BOB, CAROL] {
        w.apply(p, PROGRAM).await.unwrap();
    }
    let bob = set_parent(&w, BOB, Some(ALICE)).await.unwrap();
    assert_eq!(bob.parent_partner_id, ALICE.to_string());
    set_parent(&w, CAROL, Some(BOB)).await.unwrap();
    let cycle = set_parent(&w, ALICE, Some(CAROL)).await.unwrap_err();
    assert_eq!(cycle.code(), Code::FailedPrecondition);
    assert!(cycle.message().contains("cycle"), "{}", cycle.message());
    // Three levels allowed: a fourth is refused.
    let dave = Uuid::from_u128(0xa4);
    w.apply(dave, PROGRAM).await.unwrap();
    assert_eq!(
        set_parent(&w, dave, Some(CAROL)).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    // Clear and race: dave under carol's sibling and carol under dave at once.
    set_parent(&w, CAROL, None).await.unwrap();
    let (a, b) = tokio::join!(
        set_parent(&w, dave, Some(CAROL)),
        set_parent(&w, CAROL, Some(dave))
    );
    assert_eq!(
        [&a, &b].iter().filter(|r| r.is_ok()).count(),
        1,
        "{a:?} / {b:?}"
    );
    assert_eq!(w.published("PartnerParentChanged").await.len(), 4);
}

#[tokio::test]
async fn partners_are_listed_by_program_stage_tier_and_profile_in_pages() {
    let w = world();
    w.program(PROGRAM, &[], false, vec![tier("bronze", 1, false, false)])
        .await;
    for n in 0..5u128 {
        w.apply(Uuid::from_u128(0xb0 + n), PROGRAM).await.unwrap();
    }
    for n in 0..3u128 {
        w.approve(Uuid::from_u128(0xb0 + n), "").await.unwrap();
    }
    w.crm
        .update_partner_profile(Request::new(pb::UpdatePartnerProfileRequest {
            context: w.ctx(),
            partner_id: Uuid::from_u128(0xb1).to_string(),
            profile: Some(pb::PartnerProfile {
                website: "https://fitfluencer.example".into(),
                platforms: vec![
                    pb::CreatorPlatform {
                        platform: "YouTube".into(),
                        handle: "@fit".into(),
                        audience_size: 250_000,
                    },
                    pb::CreatorPlatform {
                        platform: "instagram".into(),
                        handle: "@fit".into(),
                        audience_size: 50_000,
                    },
                ],
                niches: vec!["fitness".into()],
                disclosure_status: pb::DisclosureStatus::Acknowledged.into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    let list = |req: pb::ListPartnersRequest| async {
        w.crm
            .list_partners(Request::new(req))
            .await
            .unwrap()
            .into_inner()
    };
    let approved = list(pb::ListPartnersRequest {
        program_id: PROGRAM.to_string(),
        stage: pb::PartnerStage::Approved.into(),
        tier: "bronze".into(),
        page: Some(PageRequest {
            page_size: 2,
            page_token: String::new(),
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(approved.partners.len(), 2);
    assert_eq!(approved.next_page_token, "2");
    let rest = list(pb::ListPartnersRequest {
        program_id: PROGRAM.to_string(),
        stage: pb::PartnerStage::Approved.into(),
        page: Some(PageRequest {
            page_size: 2,
            page_token: "2".into(),
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(
        (rest.partners.len(), rest.next_page_token.as_str()),
        (1, "")
    );
    let creators = list(pb::ListPartnersRequest {
        platform: "youtube".into(),
        niche: "fitness".into(),
        min_audience_size: 300_000,
        disclosure_status: pb::DisclosureStatus::Acknowledged.into(),
        ..Default::default()
    })
    .await;
    assert_eq!(creators.partners.len(), 1);
    assert_eq!(
        creators.partners[0].profile.as_ref().unwrap().audience_size,
        300_000
    );
    let too_big = w
        .crm
        .list_partners(Request::new(pb::ListPartnersRequest {
            page: Some(PageRequest {
                page_size: 5000,
                page_token: "x".into(),
            }),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(violations(&too_big), ["page.page_size", "page.page_token"]);
}

#[tokio::test]
async fn co_marketing_assets_are_taken_only_by_partners_of_the_allowed_tiers() {
    let w = world();
    w.program(
        PROGRAM,
        &[],
        false,
        vec![tier("bronze", 1, false, false), tier("gold", 2, true, true)],
    )
    .await;
    w.partner(ALICE, PROGRAM).await;
    w.apply(BOB, PROGRAM).await.unwrap();
    w.approve(BOB, "gold").await.unwrap();
    let asset = Uuid::from_u128(0xa55e7);
    w.crm
        .add_marketing_asset(Request::new(pb::AddMarketingAssetRequest {
            context: w.ctx(),
            asset_id: asset.to_string(),
            program_id: PROGRAM.to_string(),
            name: "Gold banner set".into(),
            kind: pb::MarketingAssetKind::Banner.into(),
            uri: "https://cdn.example/gold.zip".into(),
            allowed_tiers: vec!["gold".into()],
        }))
        .await
        .unwrap();
    let take = |p: Uuid| {
        w.crm
            .take_marketing_asset(Request::new(pb::TakeMarketingAssetRequest {
                context: w.ctx(),
                asset_id: asset.to_string(),
                partner_id: p.to_string(),
            }))
    };
    assert_eq!(
        take(ALICE).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let taken = take(BOB).await.unwrap().into_inner();
    assert_eq!(taken.taker_count, 1);
    let mine = w
        .crm
        .list_marketing_assets(Request::new(pb::ListMarketingAssetsRequest {
            taken_by: BOB.to_string(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.assets.len(), 1);
    let got = w
        .crm
        .get_marketing_asset(Request::new(pb::GetMarketingAssetRequest {
            asset_id: asset.to_string(),
            takers_page: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.takers[0].partner_id.clone(), got.takers[0].tier.clone()),
        (BOB.to_string(), "gold".into())
    );
}

// ----- requests, idempotency, contract ---------------------------------------------------------

#[tokio::test]
async fn a_repeated_request_returns_the_original_answer_and_appends_nothing() {
    let w = world();
    w.program(PROGRAM, &[], true, vec![]).await;
    w.apply(ALICE, PROGRAM).await.unwrap();
    let req = pb::IssueCouponRequest {
        context: w.ctx(),
        partner_id: ALICE.to_string(),
        code: "ONCE".into(),
        campaign_id: String::new(),
        valid_from: None,
        expires_at: None,
    };
    let first = w
        .crm
        .issue_coupon(Request::new(req.clone()))
        .await
        .unwrap()
        .into_inner();
    let head = w.head().await;
    let again = w
        .crm
        .issue_coupon(Request::new(req.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(w.head().await, head);
    let mut other = req;
    other.code = "TWICE".into();
    let reused = w.crm.issue_coupon(Request::new(other)).await.unwrap_err();
    assert_eq!(violations(&reused), ["context.idempotency_key"]);
}

#[tokio::test]
async fn bad_input_gets_every_field_violation_and_appends_nothing() {
    let w = world();
    let head = w.head().await;
    let err = w
        .crm
        .register_deal(Request::new(pb::RegisterDealRequest {
            context: None,
            deal_id: "nope".into(),
            partner_id: String::new(),
            customer_domain: "not a domain".into(),
            company_name: " padded ".into(),
            contact: Some(pb::DealContact {
                name: "Jo".into(),
                email: "jo".into(),
            }),
            estimated_value: Some(Money {
                amount: "10.001".into(),
                currency: "USD".into(),
            }),
            notes: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&err),
        [
            "context",
            "deal_id",
            "partner_id",
            "customer_domain",
            "company_name",
            "contact.email",
            "estimated_value.amount"
        ]
    );
    let err = w
        .crm
        .create_program(Request::new(pb::CreateProgramRequest {
            context: w.ctx(),
            program_id: PROGRAM.to_string(),
            name: "Casino".into(),
            vertical: String::new(),
            regulated: true,
            jurisdictions: vec![],
            settings: Some(pb::ProgramSettings {
                auto_approve: false,
                max_levels: 11,
                deal_registration_days: 0,
            }),
            tiers: vec![tier("gold", 1, true, true), tier("GOLD", 2, true, true)],
        }))
        .await
        .unwrap_err();
    assert_eq!(
        violations(&err),
        ["jurisdictions", "settings.max_levels", "tiers[1].code"]
    );
    assert_eq!(w.head().await, head);
}

#[tokio::test]
async fn everything_crm_publishes_for_attribution_is_read_by_attribution_per_the_contract() {
    let w = world();
    w.program(PROGRAM, &[], true, vec![]).await;
    for p in [ALICE, BOB] {
        w.apply(p, PROGRAM).await.unwrap();
    }
    let link = Uuid::from_u128(0x1d);
    w.link(link, ALICE).await.unwrap();
    w.crm
        .deactivate_tracking_link(Request::new(pb::DeactivateTrackingLinkRequest {
            context: w.ctx(),
            tracking_link_id: link.to_string(),
            reason: "spam".into(),
        }))
        .await
        .unwrap();
    w.coupon(ALICE, "CONTRACT", "").await.unwrap();
    w.crm
        .deactivate_coupon(Request::new(pb::DeactivateCouponRequest {
            context: w.ctx(),
            program_id: PROGRAM.to_string(),
            code: "contract".into(),
            reason: "ended".into(),
        }))
        .await
        .unwrap();
    let deal = Uuid::from_u128(0xd7);
    w.register_deal(deal, ALICE, "initech.example")
        .await
        .unwrap();
    w.crm
        .approve_deal(Request::new(pb::ApproveDealRequest {
            context: w.ctx(),
            deal_id: deal.to_string(),
        }))
        .await
        .unwrap();
    w.crm
        .revoke_deal(Request::new(pb::RevokeDealRequest {
            context: w.ctx(),
            deal_id: deal.to_string(),
            reason: "duplicate of an existing account".into(),
        }))
        .await
        .unwrap();
    w.crm
        .create_campaign(Request::new(pb::CreateCampaignRequest {
            context: w.ctx(),
            campaign_id: Uuid::from_u128(0xcc).to_string(),
            program_id: PROGRAM.to_string(),
            name: "Contract campaign".into(),
            starts_at: Some(ts(t0())),
            ends_at: Some(ts(t0() + Duration::days(7))),
            members: vec![pb::CampaignMember {
                partner_id: BOB.to_string(),
                flat_fee: usd("10.00"),
                ..Default::default()
            }],
            bonus: None,
        }))
        .await
        .unwrap();
    w.suspend(ALICE).await.unwrap();
    // Attribution's own parser reads every one of them.
    let used = [
        "PartnerStatusChanged",
        "TrackingLinkIssued",
        "TrackingLinkDeactivated",
        "CouponIssued",
        "CouponDeactivated",
        "DealRegistrationApproved",
        "DealRegistrationRevoked",
        "CampaignCreated",
    ];
    let all = w.store.read_all(0, 4096).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for ev in all.iter().filter(|e| e.stream.starts_with("partner-")) {
        if used.contains(&ev.event_type.as_str()) {
            let data = std::str::from_utf8(&ev.data).unwrap();
            let parsed = pl_attribution::contract::parse_crm(&ev.event_type, ev.id, data)
                .unwrap_or_else(|e| panic!("{}: {e}", ev.event_type));
            assert!(parsed.is_some(), "{} ignored", ev.event_type);
            seen.insert(ev.event_type.clone());
        }
    }
    assert_eq!(seen.len(), used.len(), "{seen:?}");
    // Commissions' reading of PartnerApplied: partner_id, program_id, partner_type.
    let applied = &w.published("PartnerApplied").await[0];
    assert_eq!(applied["partner_type"], "affiliate");
    assert_eq!(applied["program_id"], PROGRAM.to_string());
    // And attribution's consumer takes all of them.
    w.relay_to_attribution().await;
}

#[tokio::test]
async fn a_grant_the_consumer_refused_is_listed_and_a_retry_after_the_fix_activates_the_partner_once(
) {
    let log = Arc::new(Hooked {
        inner: MemoryLog::default(),
        hooks: pl_eventlog::RefuseAppends::new(pl_partner_crm::streams::partner(ALICE), false),
    });
    let store: SharedStore = log.clone();
    let clock = Arc::new(FixedClock::at(t0()));
    let attribution_store: SharedStore = Arc::new(MemoryLog::default());
    let w = World {
        racy: Arc::new(RacyLog::default()),
        store: store.clone(),
        clock: clock.clone(),
        crm: CrmService::new(store, clock.clone()),
        attribution: AttributionService::new(attribution_store.clone(), clock.clone(), "test-salt"),
        attribution_store,
        next: AtomicU64::new(1),
        relayed: AtomicU64::new(0),
    };
    // Given a partner of a regulated program, approved and awaiting compliance.
    w.program(REGULATED, &["GB", "MT"], false, vec![]).await;
    w.apply(ALICE, REGULATED).await.unwrap();
    assert_eq!(
        w.approve(ALICE, "").await.unwrap().stage(),
        pb::PartnerStage::AwaitingCompliance
    );
    // When compliance's grant arrives while the partner's stream refuses writes.
    log.hooks.set(true);
    let id = Uuid::from_u128(0xc0_0001);
    let envelope = serde_json::json!({
        "id": id, "type": "ComplianceApprovalGranted", "schema_version": 1,
        "stream": "compliance-x", "version": 0, "position": 1,
        "occurred_at": t0(), "recorded_at": t0(), "correlation_id": null, "causation_id": null,
        "data": { "partner_id": ALICE, "program_id": REGULATED, "jurisdictions": ["GB", "MT"],
                  "reference": "LIC-77", "occurred_at": t0() + Duration::hours(1) },
    });
    let grant = Message {
        id,
        subject: "pl.compliance.ComplianceApprovalGranted".into(),
        payload: serde_json::to_vec(&envelope).unwrap().into(),
        headers: BTreeMap::new(),
    };
    let recorder =
        pl_runtime::dead_letters::Recorder::new(pl_partner_crm::SERVICE, "crm-compliance", clock);
    let outcome = pl_partner_crm::consumer::handle(w.store.as_ref(), grant.clone()).await;
    let settled = recorder.settle(w.store.as_ref(), &grant, outcome).await;
    assert!(
        matches!(&settled, Err(pl_bus::HandleError::Permanent(r)) if r.contains("limit exceeded")),
        "{settled:?}"
    );
    // Then it is listed with its reason, and the partner still waits.
    let listed = w
        .crm
        .list_dead_letters(Request::new(pl_proto::common::v1::ListDeadLettersRequest {
            page: None,
            waiting_only: true,
        }))
        .await
        .unwrap()
        .into_inner();
    let [letter] = listed.letters.as_slice() else {
        panic!("{listed:?}")
    };
    assert_eq!(
        (
            letter.event_type.as_str(),
            letter.consumer.as_str(),
            letter.status.as_str()
        ),
        ("ComplianceApprovalGranted", "crm-compliance", "waiting")
    );
    assert!(letter.reason.contains("limit exceeded"), "{letter:?}");
    assert_eq!(
        w.get(ALICE).await.stage(),
        pb::PartnerStage::AwaitingCompliance
    );
    let retry = || {
        w.crm
            .retry_dead_letter(Request::new(pl_proto::common::v1::RetryDeadLetterRequest {
                context: w.ctx(),
                letter_id: letter.letter_id.clone(),
            }))
    };
    // The cause removed, a retry applies it and activates the partner.
    log.hooks.set(false);
    let applied = retry().await.unwrap().into_inner();
    assert!(applied.ran);
    assert_eq!(applied.letter.as_ref().unwrap().status, "applied");
    assert_eq!(w.get(ALICE).await.status(), pb::PartnerStatus::Approved);
    // Once applied, a retry under another key runs nothing and writes nothing to the partner.
    let partner_events = || async {
        w.store
            .read_stream(&pl_partner_crm::streams::partner(ALICE), 0, 100)
            .await
            .unwrap()
            .len()
    };
    let before = partner_events().await;
    let again = retry().await.unwrap().into_inner();
    assert!(!again.ran);
    assert_eq!(again.letter.unwrap().retries, 1);
    assert_eq!(partner_events().await, before);
}
