//! Compliance as its callers meet it: requests over the gRPC implementation, attribution's and
//! partner CRM's events consumed from the bus, and the published events read back — checked
//! against the contract commissions parses by feeding them to commissions' own consumer. On the
//! in-memory event log. Each test is given (facts) / when (a request or an event) / then (the
//! answer and what was published), thresholds tested at their edges.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use pl_bus::Message;
use pl_compliance::contract::{canonical_email, email_sha256};
use pl_compliance::{ComplianceService, SanctionsList};
use pl_eventlog::{
    EventStore, Hooked, LogError, MemoryLog, RecordedEvent, SharedStore, StoreHooks,
};
use pl_proto::common::v1::{PageRequest, RequestContext};
use pl_proto::compliance::v1 as pb;
use pl_proto::compliance::v1::compliance_service_server::ComplianceService as Api;
use pl_runtime::aggregate::load;
use pl_runtime::FixedClock;
use tonic::{Code, Request};
use uuid::Uuid;

const PROGRAM: Uuid = Uuid::from_u128(0xc1);
const ALICE: Uuid = Uuid::from_u128(0xa1);
const BOB: Uuid = Uuid::from_u128(0xa2);

fn day(m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, m, d, 12, 0, 0).unwrap()
}

fn ts(t: DateTime<Utc>) -> pl_proto::prost_types::Timestamp {
    pl_proto::prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap(),
    }
}

fn tp(n: u128) -> Uuid {
    Uuid::from_u128(0x7000 + n)
}

fn conversion(n: u128) -> Uuid {
    Uuid::from_u128(0x9000 + n)
}

const SANCTIONS: &str = "# test list\nSDN-1\tPETROV, Ivan Sergeyevich\tIvan Petrov\n";

/// Appends to one stream fail, the next `failures` times, as a full disk's would (an i/o
/// error: retryable, nothing written), or, when `refuse`, as a stream over its limits would
/// (invalid input: never accepted).
#[derive(Debug, Default)]
struct Flaky {
    stream: String,
    failures: AtomicU64,
    refuse: bool,
}

type FlakyLog = Hooked<MemoryLog, Flaky>;

#[async_trait::async_trait]
impl StoreHooks for Flaky {
    async fn before_append(&self, _: &dyn EventStore, stream: &str) -> Result<(), LogError> {
        let fail = stream == self.stream
            && self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if fail && self.refuse {
            return Err(LogError::LimitExceeded {
                what: "stream events",
                actual: 1,
                limit: 0,
            });
        }
        if fail {
            return Err(LogError::Io("no space left on device".to_owned()));
        }
        Ok(())
    }
}

fn flaky_log(flaky: Flaky) -> Arc<FlakyLog> {
    Arc::new(Hooked {
        inner: MemoryLog::default(),
        hooks: flaky,
    })
}

struct World {
    store: SharedStore,
    api: ComplianceService,
    next: AtomicU64,
    /// While set, delivered messages are kept here instead of handled (to hand them over as
    /// batches).
    recording: std::sync::Mutex<Option<Vec<Message>>>,
}

impl World {
    fn new() -> Self {
        Self::with_list(None)
    }

    fn with_sanctions() -> Self {
        Self::with_list(Some(Arc::new(
            SanctionsList::parse(SANCTIONS.as_bytes()).unwrap(),
        )))
    }

    fn with_list(list: Option<Arc<SanctionsList>>) -> Self {
        Self::on(Arc::new(MemoryLog::default()), list)
    }

    fn on(store: SharedStore, list: Option<Arc<SanctionsList>>) -> Self {
        let clock = Arc::new(FixedClock::at(day(1, 1)));
        Self {
            api: ComplianceService::with_sanctions(store.clone(), clock, list),
            store,
            next: AtomicU64::new(1),
            recording: std::sync::Mutex::new(None),
        }
    }

    fn ctx_at(&self, t: DateTime<Utc>) -> Option<RequestContext> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        Some(RequestContext {
            idempotency_key: format!("k-{n}"),
            occurred_at: Some(ts(t)),
            correlation_id: String::new(),
        })
    }

    async fn deliver(&self, subject_context: &str, event_type: &str, data: serde_json::Value) {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let id = Uuid::from_u128(0xe000_0000 + u128::from(n));
        self.deliver_with_id(id, subject_context, event_type, data)
            .await;
    }

    async fn deliver_with_id(
        &self,
        id: Uuid,
        subject_context: &str,
        event_type: &str,
        data: serde_json::Value,
    ) {
        let occurred_at = data
            .get("occurred_at")
            .cloned()
            .unwrap_or(serde_json::json!(day(1, 1)));
        let envelope = serde_json::json!({
            "id": id, "type": event_type, "schema_version": 1,
            "stream": "x", "version": 0, "position": 0,
            "occurred_at": occurred_at, "recorded_at": occurred_at,
            "correlation_id": null, "causation_id": null, "data": data,
        });
        let m = Message {
            id,
            subject: format!("pl.{subject_context}.{event_type}"),
            payload: bytes::Bytes::from(serde_json::to_vec(&envelope).unwrap()),
            headers: BTreeMap::new(),
        };
        if let Some(kept) = self.recording.lock().unwrap().as_mut() {
            kept.push(m);
            return;
        }
        pl_compliance::consumer::handle(&self.api.compliance(), m)
            .await
            .unwrap();
    }

    fn record(&self) {
        *self.recording.lock().unwrap() = Some(Vec::new());
    }

    fn recorded(&self) -> Vec<Message> {
        self.recording.lock().unwrap().take().unwrap_or_default()
    }

    /// Every event in the log, per stream in stream order: what a batch must write exactly as
    /// one message at a time does (the order across streams may differ).
    async fn streams(&self) -> BTreeMap<String, Vec<(Uuid, String, bytes::Bytes)>> {
        let mut out: BTreeMap<String, Vec<(Uuid, String, bytes::Bytes)>> = BTreeMap::new();
        let mut from = 0;
        loop {
            let page = self.store.read_all(from, 1000).await.unwrap();
            let Some(last) = page.last() else {
                return out;
            };
            from = last.position + 1;
            for e in page {
                out.entry(e.stream)
                    .or_default()
                    .push((e.id, e.event_type, e.data));
            }
        }
    }

    async fn applied(&self, partner: Uuid, email: &str, name: &str) {
        self.deliver(
            "crm",
            "PartnerApplied",
            serde_json::json!({
                "partner_id": partner, "program_id": PROGRAM, "display_name": name,
                "partner_type": "affiliate", "email": email, "country": "DE",
                "applied_at": day(1, 1),
            }),
        )
        .await;
    }

    async fn click(&self, n: u128, partner: Uuid, ip: &str, t: DateTime<Utc>) {
        self.deliver(
            "attribution",
            "TouchpointRecorded",
            serde_json::json!({
                "touchpoint_id": tp(n), "kind": "click", "program_id": PROGRAM,
                "partner_id": partner, "ip_hash": ip, "occurred_at": t,
            }),
        )
        .await;
    }

    /// A sale credited to `partner` through the click `click` (touchpoint id, time, ip).
    async fn sale(
        &self,
        n: u128,
        partner: Uuid,
        t: DateTime<Utc>,
        click: Option<(u128, DateTime<Utc>, &str)>,
        customer: serde_json::Value,
    ) {
        let mut data = serde_json::json!({
            "conversion_id": conversion(n), "external_id": format!("order-{n}"),
            "program_id": PROGRAM, "kind": "CONVERSION_KIND_SALE", "customer_id": format!("c-{n}"),
            "gross": {"amount": "100.00", "currency": "EUR"}, "occurred_at": t,
            "shares": [{"partner_id": partner, "weight": "1"}], "model": "last_click",
        });
        if let Some((id, at, ip)) = click {
            data["touchpoints"] = serde_json::json!([{
                "touchpoint_id": tp(id), "kind": "click", "partner_id": partner,
                "occurred_at": at, "credit": "1", "ip_hash": ip,
            }]);
        }
        if let (Some(obj), Some(extra)) = (data.as_object_mut(), customer.as_object()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        self.deliver("attribution", "ConversionAttributed", data)
            .await;
    }

    async fn refund(&self, n: u128, of: u128, t: DateTime<Utc>) {
        self.deliver(
            "attribution",
            "ConversionRefunded",
            serde_json::json!({
                "refund_id": Uuid::from_u128(0x5000 + n), "conversion_id": conversion(of),
                "amount": {"amount": "100.00", "currency": "EUR"}, "occurred_at": t,
            }),
        )
        .await;
    }

    async fn verify(
        &self,
        partner: Uuid,
        kind: pb::VerificationKind,
        at: DateTime<Utc>,
        valid_until: Option<DateTime<Utc>>,
        jurisdiction: &str,
    ) -> Result<pb::Verification, tonic::Status> {
        self.api
            .record_verification(Request::new(pb::RecordVerificationRequest {
                context: self.ctx_at(at),
                partner_id: partner.to_string(),
                kind: kind.into(),
                status: pb::VerificationStatus::Verified.into(),
                reference: "verifier-ref-1".into(),
                recorded_by: "ops@example.com".into(),
                valid_until: valid_until.map(ts),
                jurisdiction: jurisdiction.into(),
                signed_at: None,
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn eligible_partner(&self, partner: Uuid) {
        self.verify(partner, pb::VerificationKind::Kyc, day(1, 1), None, "")
            .await
            .unwrap();
        self.verify(
            partner,
            pb::VerificationKind::TaxFormW9,
            day(1, 1),
            None,
            "",
        )
        .await
        .unwrap();
    }

    async fn eligibility(&self, partner: Uuid, as_of: DateTime<Utc>) -> pb::PayoutEligibility {
        self.api
            .get_payout_eligibility(Request::new(pb::GetPayoutEligibilityRequest {
                partner_id: partner.to_string(),
                as_of: Some(ts(as_of)),
            }))
            .await
            .unwrap()
            .into_inner()
    }

    async fn flags(&self, partner: Uuid) -> Vec<pb::Flag> {
        self.api
            .list_flags(Request::new(pb::ListFlagsRequest {
                partner_id: partner.to_string(),
                open_only: false,
                page: None,
            }))
            .await
            .unwrap()
            .into_inner()
            .flags
    }

    async fn events(&self, partner: Uuid) -> Vec<RecordedEvent> {
        self.store
            .read_stream(&pl_compliance::streams::partner(partner), 0, 4096)
            .await
            .unwrap()
    }

    async fn types(&self, partner: Uuid) -> Vec<String> {
        self.events(partner)
            .await
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    async fn configure(&self, rules: Option<pb::FraudRules>, regulated: &[&str]) -> pb::Program {
        self.api
            .configure_program(Request::new(pb::ConfigureProgramRequest {
                context: self.ctx_at(day(1, 1)),
                program_id: PROGRAM.to_string(),
                regulated: !regulated.is_empty(),
                jurisdictions: regulated.iter().map(|j| (*j).to_owned()).collect(),
                rules,
                configured_by: "ops".into(),
                required_verifications: vec![],
            }))
            .await
            .unwrap()
            .into_inner()
    }

    async fn default_rules(&self) -> pb::FraudRules {
        self.api
            .get_program(Request::new(pb::GetProgramRequest {
                program_id: PROGRAM.to_string(),
            }))
            .await
            .unwrap()
            .into_inner()
            .rules
            .unwrap()
    }
}

fn codes(e: &pb::PayoutEligibility) -> Vec<&str> {
    e.blockers.iter().map(|b| b.code.as_str()).collect()
}

fn count(types: &[String], t: &str) -> usize {
    types.iter().filter(|x| *x == t).count()
}

// ----- verifications, eligibility, holds ---------------------------------------------------------

#[tokio::test]
async fn given_kyc_and_a_w8ben_when_eligibility_is_asked_around_its_expiry_then_it_blocks_from_the_expiry_on(
) {
    let w = World::new();
    w.verify(ALICE, pb::VerificationKind::Kyc, day(1, 1), None, "")
        .await
        .unwrap();
    let w8 = w
        .verify(
            ALICE,
            pb::VerificationKind::TaxFormW8ben,
            day(1, 1),
            None,
            "",
        )
        .await
        .unwrap();
    let expiry = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
    assert_eq!(
        w8.valid_until,
        Some(ts(expiry)),
        "three calendar years after signing"
    );
    let before = w.eligibility(ALICE, expiry - Duration::seconds(1)).await;
    assert!(before.eligible, "{before:?}");
    assert_eq!(before.next_expiry, Some(ts(expiry)));
    let at = w.eligibility(ALICE, expiry).await;
    assert_eq!(codes(&at), vec!["tax_form_expired"]);
}

#[tokio::test]
async fn given_an_expired_w8ben_when_partners_are_reassessed_then_the_change_is_published_once() {
    let w = World::new();
    w.verify(ALICE, pb::VerificationKind::Kyc, day(1, 1), None, "")
        .await
        .unwrap();
    w.verify(
        ALICE,
        pb::VerificationKind::TaxFormW8ben,
        day(1, 1),
        Some(day(3, 1)),
        "",
    )
    .await
    .unwrap();
    let reassess = |t: DateTime<Utc>| pb::ReassessPartnersRequest {
        context: w.ctx_at(t),
        partner_ids: vec![ALICE.to_string(), BOB.to_string()],
        as_of: Some(ts(t)),
    };
    let r = w
        .api
        .reassess_partners(Request::new(reassess(day(3, 1))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.changed, 1);
    assert_eq!(codes(&r.eligibility[0]), vec!["tax_form_expired"]);
    assert_eq!(
        codes(&r.eligibility[1]),
        vec!["no_valid_tax_form", "identity_not_verified"],
        "a partner with nothing on file is answered, nothing is published for it"
    );
    assert!(w.events(BOB).await.is_empty());
    let again = w
        .api
        .reassess_partners(Request::new(reassess(day(3, 2))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.changed, 0);
    let types = w.types(ALICE).await;
    assert_eq!(count(&types, "PayoutEligibilityChanged"), 3, "{types:?}");
}

#[tokio::test]
async fn given_a_request_when_repeated_with_its_key_then_the_answer_is_the_same_and_nothing_is_appended_twice(
) {
    let w = World::new();
    let req = pb::RecordVerificationRequest {
        context: w.ctx_at(day(1, 1)),
        partner_id: ALICE.to_string(),
        kind: pb::VerificationKind::Kyb.into(),
        status: pb::VerificationStatus::Pending.into(),
        reference: "kyb-1".into(),
        recorded_by: "ops".into(),
        valid_until: None,
        jurisdiction: String::new(),
        signed_at: None,
    };
    let first = w
        .api
        .record_verification(Request::new(req.clone()))
        .await
        .unwrap()
        .into_inner();
    let again = w
        .api
        .record_verification(Request::new(req.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(count(&w.types(ALICE).await, "VerificationRecorded"), 1);
    let mut other = req;
    other.reference = "kyb-2".into();
    let err = w
        .api
        .record_verification(Request::new(other))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn given_a_bad_request_then_every_violation_is_named_and_nothing_is_appended() {
    let w = World::new();
    let err = w
        .api
        .record_verification(Request::new(pb::RecordVerificationRequest {
            context: w.ctx_at(day(1, 1)),
            partner_id: "nope".into(),
            kind: 0,
            status: 99,
            reference: String::new(),
            recorded_by: "ops".into(),
            valid_until: None,
            jurisdiction: "malta".into(),
            signed_at: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let details = tonic_types::StatusExt::get_error_details(&err);
    let fields: Vec<_> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(
        fields,
        vec!["partner_id", "kind", "status", "reference", "jurisdiction"]
    );
    let licence_without_jurisdiction = w
        .verify(ALICE, pb::VerificationKind::Licence, day(1, 1), None, "")
        .await
        .unwrap_err();
    assert_eq!(licence_without_jurisdiction.code(), Code::InvalidArgument);
    assert!(w.events(ALICE).await.is_empty());
}

#[tokio::test]
async fn given_an_eligible_partner_when_a_hold_is_placed_and_released_then_eligibility_follows_and_commissions_reads_it(
) {
    let w = World::new();
    w.eligible_partner(ALICE).await;
    let place = pb::PlacePayoutHoldRequest {
        context: w.ctx_at(day(2, 1)),
        partner_id: ALICE.to_string(),
        hold_id: "bank-review".into(),
        reason: "bank details under review".into(),
        placed_by: "ops".into(),
    };
    let hold = w
        .api
        .place_payout_hold(Request::new(place.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(hold.in_place);
    assert_eq!(
        codes(&w.eligibility(ALICE, day(2, 2)).await),
        vec!["payout_hold"]
    );
    let mut again = place.clone();
    again.context = w.ctx_at(day(2, 1));
    assert_eq!(
        w.api
            .place_payout_hold(Request::new(again))
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    let mut reserved = place;
    reserved.context = w.ctx_at(day(2, 1));
    reserved.hold_id = "flag-x".into();
    assert_eq!(
        w.api
            .place_payout_hold(Request::new(reserved))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // Commissions' own projection of what was published agrees: held now.
    let commissions = commissions_eligibility(&w, ALICE).await;
    assert_eq!(commissions.blockers(day(2, 2))[0].code(), "payout_hold");

    w.api
        .release_payout_hold(Request::new(pb::ReleasePayoutHoldRequest {
            context: w.ctx_at(day(2, 3)),
            partner_id: ALICE.to_string(),
            hold_id: "bank-review".into(),
            reason: "verified".into(),
            released_by: "ops".into(),
        }))
        .await
        .unwrap();
    assert!(w.eligibility(ALICE, day(2, 4)).await.eligible);
    assert!(commissions_eligibility(&w, ALICE)
        .await
        .blockers(day(2, 4))
        .is_empty());
    let types = w.types(ALICE).await;
    assert_eq!(
        types,
        vec![
            "VerificationRecorded",
            "PayoutEligibilityChanged",
            "VerificationRecorded",
            "PayoutEligibilityChanged",
            "PayoutHoldPlaced",
            "PayoutEligibilityChanged",
            "PayoutHoldReleased",
            "PayoutEligibilityChanged",
        ]
    );
}

/// Publishes the partner's compliance events as the relay would and feeds them to commissions'
/// consumer; returns commissions' eligibility projection.
async fn commissions_eligibility(
    w: &World,
    partner: Uuid,
) -> pl_commissions::eligibility::Eligibility {
    let store: SharedStore = Arc::new(MemoryLog::default());
    let caches = pl_commissions::accruals::Caches::default();
    for e in w.events(partner).await {
        if !pl_compliance::INTEGRATION_EVENTS.contains(&e.event_type.as_str()) {
            continue;
        }
        let m = pl_bus::integration_message(&e, "pl", "compliance").unwrap();
        pl_commissions::consumer::handle(store.as_ref(), &caches, m)
            .await
            .unwrap();
    }
    load::<pl_commissions::eligibility::Eligibility>(
        store.as_ref(),
        &pl_commissions::eligibility::stream(partner),
    )
    .await
    .unwrap()
    .state
}

// ----- regulated programs --------------------------------------------------------------------

#[tokio::test]
async fn given_a_regulated_program_when_approval_is_asked_without_then_with_licences_then_it_is_refused_then_granted_and_published(
) {
    let w = World::new();
    w.configure(None, &["MT", "GB"]).await;
    let grant = |t: DateTime<Utc>| pb::GrantComplianceApprovalRequest {
        context: w.ctx_at(t),
        partner_id: ALICE.to_string(),
        program_id: PROGRAM.to_string(),
        reference: "case-1".into(),
        approved_by: "mlro".into(),
    };
    w.verify(ALICE, pb::VerificationKind::Licence, day(1, 1), None, "MT")
        .await
        .unwrap();
    let refused = w
        .api
        .grant_compliance_approval(Request::new(grant(day(1, 2))))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("GB"), "{}", refused.message());
    w.verify(
        ALICE,
        pb::VerificationKind::Licence,
        day(1, 2),
        Some(day(6, 1)),
        "GB",
    )
    .await
    .unwrap();
    let approval = w
        .api
        .grant_compliance_approval(Request::new(grant(day(1, 3))))
        .await
        .unwrap()
        .into_inner();
    assert!(approval.approved);
    assert_eq!(approval.jurisdictions, vec!["MT", "GB"]);
    let granted = w
        .events(ALICE)
        .await
        .into_iter()
        .find(|e| e.event_type == "ComplianceApprovalGranted")
        .unwrap();
    let data: serde_json::Value = serde_json::from_slice(&granted.data).unwrap();
    assert_eq!(data["program_id"], PROGRAM.to_string());
    assert_eq!(data["jurisdictions"], serde_json::json!(["MT", "GB"]));
    assert_eq!(data["reference"], "case-1");

    // The GB licence expires: a reassessment on that day revokes the approval.
    let r = w
        .api
        .reassess_partners(Request::new(pb::ReassessPartnersRequest {
            context: w.ctx_at(day(6, 1)),
            partner_ids: vec![ALICE.to_string()],
            as_of: Some(ts(day(6, 1))),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.approvals_revoked, 1);
    let status = w
        .api
        .get_partner_compliance(Request::new(pb::GetPartnerComplianceRequest {
            partner_id: ALICE.to_string(),
            as_of: Some(ts(day(6, 1))),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!status.approvals[0].approved);
    assert_eq!(status.licensed_jurisdictions, vec!["MT"]);
}

#[tokio::test]
async fn given_an_unregulated_program_when_approval_is_asked_then_it_is_refused() {
    let w = World::new();
    let err = w
        .api
        .grant_compliance_approval(Request::new(pb::GrantComplianceApprovalRequest {
            context: w.ctx_at(day(1, 1)),
            partner_id: ALICE.to_string(),
            program_id: PROGRAM.to_string(),
            reference: "case-1".into(),
            approved_by: "mlro".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn given_a_partner_licensed_in_malta_when_conversions_come_from_malta_and_germany_then_only_germany_is_flagged(
) {
    let w = World::new();
    w.configure(None, &["MT", "DE"]).await;
    w.verify(ALICE, pb::VerificationKind::Licence, day(1, 1), None, "MT")
        .await
        .unwrap();
    w.sale(
        1,
        ALICE,
        day(2, 1),
        None,
        serde_json::json!({"customer_country": "MT"}),
    )
    .await;
    w.sale(
        2,
        ALICE,
        day(2, 1),
        None,
        serde_json::json!({"customer_country": "DE"}),
    )
    .await;
    let flags = w.flags(ALICE).await;
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].rule, "unlicensed_jurisdiction");
    assert_eq!(flags[0].conversion_id, conversion(2).to_string());
    assert_eq!(flags[0].evidence["customer_country"], "DE");
    assert_eq!(flags[0].outcome(), pb::Outcome::Review);
}

#[tokio::test]
async fn given_invalid_program_settings_then_every_problem_is_named() {
    let w = World::new();
    let mut rules = w.default_rules().await;
    rules.max_refund_rate = "1.5".into();
    rules.max_clicks_per_ip = 0;
    if let Some(s) = rules.refund_rate.as_mut() {
        s.outcome = pb::Outcome::Reject.into();
    }
    let err = w
        .api
        .configure_program(Request::new(pb::ConfigureProgramRequest {
            context: w.ctx_at(day(1, 1)),
            program_id: PROGRAM.to_string(),
            regulated: true,
            jurisdictions: vec![],
            rules: Some(rules),
            configured_by: "ops".into(),
            required_verifications: vec![],
        }))
        .await
        .unwrap_err();
    let details = tonic_types::StatusExt::get_error_details(&err);
    let fields: Vec<_> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(
        fields,
        vec![
            "rules.max_clicks_per_ip",
            "rules.max_refund_rate",
            "rules.refund_rate.outcome",
            "jurisdictions"
        ]
    );
}

// ----- fraud rules over attribution's events -------------------------------------------------

#[tokio::test]
async fn given_a_partner_when_a_customer_uses_the_partners_own_email_then_the_conversion_is_rejected_once(
) {
    let w = World::new();
    w.applied(ALICE, "Alice@Acme.io", "Alice Example").await;
    let (canonical, _) = canonical_email("alice+shop@acme.io").unwrap();
    let customer = serde_json::json!({"customer_email_hash": email_sha256(&canonical)});
    let id = Uuid::from_u128(0xabc);
    let data = |n| {
        serde_json::json!({
            "conversion_id": conversion(n), "program_id": PROGRAM, "customer_id": "c",
            "occurred_at": day(2, 1), "shares": [{"partner_id": ALICE, "weight": "1"}],
            "customer_email_hash": customer["customer_email_hash"],
        })
    };
    w.deliver_with_id(id, "attribution", "ConversionAttributed", data(1))
        .await;
    w.deliver_with_id(id, "attribution", "ConversionAttributed", data(1))
        .await;
    let types = w.types(ALICE).await;
    assert_eq!(count(&types, "ConversionFlagged"), 1, "{types:?}");
    assert_eq!(count(&types, "ConversionRejected"), 1);
    let rejected = w
        .events(ALICE)
        .await
        .into_iter()
        .find(|e| e.event_type == "ConversionRejected")
        .unwrap();
    let data: serde_json::Value = serde_json::from_slice(&rejected.data).unwrap();
    assert_eq!(data["conversion_id"], conversion(1).to_string());
    assert_eq!(data["partner_id"], ALICE.to_string());
    assert_eq!(data["program_id"], PROGRAM.to_string());
    assert_eq!(data["rule"], "self_referral");
    let flags = w.flags(ALICE).await;
    assert_eq!(flags[0].evidence["matched"], "email");
}

#[tokio::test]
async fn given_a_partner_on_acme_when_a_customer_on_the_same_domain_converts_then_it_is_self_referral_but_not_on_gmail(
) {
    let w = World::new();
    w.applied(ALICE, "alice@acme.io", "Alice").await;
    w.applied(BOB, "bob@gmail.com", "Bob").await;
    w.sale(
        1,
        ALICE,
        day(2, 1),
        None,
        serde_json::json!({"customer_domain": "ACME.io"}),
    )
    .await;
    w.sale(
        2,
        BOB,
        day(2, 1),
        None,
        serde_json::json!({"customer_domain": "gmail.com"}),
    )
    .await;
    assert_eq!(w.flags(ALICE).await[0].evidence["matched"], "domain");
    assert!(w.flags(BOB).await.is_empty());
}

#[tokio::test]
async fn given_a_click_when_the_conversion_follows_exactly_ten_seconds_later_then_no_flag_and_one_second_sooner_a_flag(
) {
    let w = World::new();
    let click_at = day(2, 1);
    w.sale(
        1,
        ALICE,
        click_at + Duration::seconds(10),
        Some((1, click_at, "ip-a")),
        serde_json::json!({}),
    )
    .await;
    assert!(w.flags(ALICE).await.is_empty());
    w.sale(
        2,
        ALICE,
        click_at + Duration::seconds(9),
        Some((2, click_at, "ip-b")),
        serde_json::json!({}),
    )
    .await;
    let flags = w.flags(ALICE).await;
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].rule, "click_to_conversion");
    assert_eq!(flags[0].evidence["elapsed_ms"], "9000");
    assert_eq!(flags[0].evidence["min_seconds"], "10");
}

#[tokio::test]
async fn given_twenty_clicks_from_one_ip_in_an_hour_then_a_conversion_on_the_twentieth_is_clean_and_on_the_twenty_first_flagged(
) {
    let w = World::new();
    let start = day(2, 1);
    for n in 1..=21 {
        w.click(
            n,
            ALICE,
            "ip-bot",
            start + Duration::minutes(i64::try_from(n).unwrap()),
        )
        .await;
    }
    let twentieth = start + Duration::minutes(20);
    let twenty_first = start + Duration::minutes(21);
    w.sale(
        1,
        ALICE,
        day(2, 2),
        Some((20, twentieth, "ip-bot")),
        serde_json::json!({}),
    )
    .await;
    assert!(w.flags(ALICE).await.is_empty());
    w.sale(
        2,
        ALICE,
        day(2, 2),
        Some((21, twenty_first, "ip-bot")),
        serde_json::json!({}),
    )
    .await;
    let flags = w.flags(ALICE).await;
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].rule, "click_velocity");
    assert_eq!(flags[0].evidence["clicks_in_window"], "21");
    assert_eq!(flags[0].evidence["max_clicks_per_ip"], "20");
}

#[tokio::test]
async fn given_a_partner_when_a_second_partner_applies_with_the_same_email_then_the_second_is_flagged_and_held(
) {
    let w = World::new();
    w.eligible_partner(BOB).await;
    w.applied(ALICE, "alice@acme.io", "Alice").await;
    w.applied(BOB, "Alice+2@acme.io", "Not Alice").await;
    assert!(w.flags(ALICE).await.is_empty());
    let flags = w.flags(BOB).await;
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].rule, "duplicate_accounts");
    assert_eq!(flags[0].evidence["other_partners"], ALICE.to_string());
    assert_eq!(flags[0].outcome(), pb::Outcome::Hold);
    let e = w.eligibility(BOB, day(2, 1)).await;
    assert_eq!(codes(&e), vec!["payout_hold"]);
    assert_eq!(
        e.blockers[0].reference,
        format!("flag-{}", flags[0].flag_id)
    );
}

#[tokio::test]
async fn given_four_conversions_when_one_is_refunded_then_25_percent_is_not_flagged_and_a_second_refund_holds_until_cleared(
) {
    let w = World::new();
    let mut rules = w.default_rules().await;
    rules.min_conversions = 4;
    w.configure(Some(rules), &[]).await;
    w.eligible_partner(ALICE).await;
    for n in 1..=4 {
        w.sale(n, ALICE, day(3, 1), None, serde_json::json!({}))
            .await;
    }
    w.refund(1, 1, day(3, 5)).await;
    w.refund(2, 1, day(3, 6)).await; // a second refund of the same conversion counts once
    assert!(
        w.flags(ALICE).await.is_empty(),
        "exactly 25 % is not over 25 %"
    );
    w.refund(3, 2, day(3, 7)).await;
    let flags = w.flags(ALICE).await;
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].rule, "refund_rate");
    assert_eq!(flags[0].conversion_id, "");
    assert_eq!(flags[0].evidence["rate"], "0.5");
    assert_eq!(
        codes(&w.eligibility(ALICE, day(3, 8)).await),
        vec!["payout_hold"]
    );

    let cleared = w
        .api
        .clear_flag(Request::new(pb::ClearFlagRequest {
            context: w.ctx_at(day(3, 9)),
            partner_id: ALICE.to_string(),
            flag_id: flags[0].flag_id.clone(),
            reason: "refunds were a shipping fault".into(),
            cleared_by: "analyst".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(cleared.cleared);
    assert_eq!(cleared.clear_reason, "refunds were a shipping fault");
    assert!(w.eligibility(ALICE, day(3, 10)).await.eligible);
    let open = w
        .api
        .list_flags(Request::new(pb::ListFlagsRequest {
            partner_id: ALICE.to_string(),
            open_only: true,
            page: Some(PageRequest {
                page_size: 10,
                page_token: String::new(),
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(open.flags.is_empty());
    let types = w.types(ALICE).await;
    assert_eq!(count(&types, "PartnerFlagged"), 1);
    assert_eq!(count(&types, "FlagCleared"), 1);
    assert_eq!(count(&types, "PayoutHoldReleased"), 1);
}

#[tokio::test]
async fn given_a_refunded_conversion_older_than_the_window_then_it_does_not_count() {
    let w = World::new();
    let mut rules = w.default_rules().await;
    rules.min_conversions = 1;
    w.configure(Some(rules), &[]).await;
    w.sale(1, ALICE, day(1, 1), None, serde_json::json!({}))
        .await;
    w.sale(2, ALICE, day(2, 20), None, serde_json::json!({}))
        .await;
    w.sale(3, ALICE, day(2, 21), None, serde_json::json!({}))
        .await;
    w.sale(4, ALICE, day(2, 22), None, serde_json::json!({}))
        .await;
    w.sale(5, ALICE, day(2, 23), None, serde_json::json!({}))
        .await;
    // Refunded on 3 March: conversion 1 (1 January) is outside the 30 days up to it.
    w.refund(1, 1, day(3, 3)).await;
    assert!(w.flags(ALICE).await.is_empty());
}

// ----- sanctions -----------------------------------------------------------------------------

#[tokio::test]
async fn given_a_listed_name_when_the_partner_applies_then_payouts_wait_for_review_and_a_false_positive_releases_them(
) {
    let w = World::with_sanctions();
    w.eligible_partner(ALICE).await;
    w.applied(ALICE, "ivan@acme.io", "Petrov Ivan").await;
    let e = w.eligibility(ALICE, day(2, 1)).await;
    assert_eq!(codes(&e), vec!["sanctions_match"]);
    // Commissions, fed what compliance publishes, skips the partner's payouts with the reason.
    let theirs = commissions_eligibility(&w, ALICE).await.blockers(day(2, 1));
    assert_eq!(
        theirs.iter().map(|b| b.code()).collect::<Vec<_>>(),
        vec!["sanctions_review"]
    );
    let listed = w
        .api
        .list_sanctions_screenings(Request::new(pb::ListSanctionsScreeningsRequest {
            partner_id: ALICE.to_string(),
            page: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .screenings;
    assert_eq!(listed.len(), 1);
    let s = &listed[0];
    assert_eq!(s.status, "pending_review");
    assert_eq!(s.matches[0].entry_id, "SDN-1");
    assert_eq!(s.matches[0].kind, "exact");
    assert_eq!(s.list_entries, 1);
    let reviewed = w
        .api
        .review_sanctions_screening(Request::new(pb::ReviewSanctionsScreeningRequest {
            context: w.ctx_at(day(2, 2)),
            partner_id: ALICE.to_string(),
            screening_id: s.screening_id.clone(),
            outcome: pb::ReviewOutcome::FalsePositive.into(),
            reviewer: "mlro".into(),
            reason: "different person: date of birth differs".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reviewed.status, "false_positive");
    assert!(w.eligibility(ALICE, day(2, 3)).await.eligible);
    assert!(commissions_eligibility(&w, ALICE)
        .await
        .blockers(day(2, 3))
        .is_empty());
    // What went out names no one: ids, the state and the list's checksum.
    for e in w.events(ALICE).await {
        if e.event_type == "SanctionsStatusChanged" {
            let text = String::from_utf8_lossy(&e.data);
            assert!(!text.contains("Petrov") && !text.contains("Ivan"), "{text}");
        }
    }
}

#[tokio::test]
async fn given_a_screening_request_then_the_given_name_is_screened_with_accents_folded() {
    let w = World::with_sanctions();
    let s = w
        .api
        .screen_partner(Request::new(pb::ScreenPartnerRequest {
            context: w.ctx_at(day(1, 1)),
            partner_id: ALICE.to_string(),
            name: "ÍVÁN Sergeyevich PETRÓV".into(),
            screened_by: "ops".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, "pending_review");
    let clean = w
        .api
        .screen_partner(Request::new(pb::ScreenPartnerRequest {
            context: w.ctx_at(day(1, 1)),
            partner_id: BOB.to_string(),
            name: "Robert Brown".into(),
            screened_by: "ops".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(clean.status, "clear");
}

#[tokio::test]
async fn given_no_sanctions_list_when_a_screening_is_requested_then_it_is_refused() {
    let w = World::new();
    let err = w
        .api
        .screen_partner(Request::new(pb::ScreenPartnerRequest {
            context: w.ctx_at(day(1, 1)),
            partner_id: ALICE.to_string(),
            name: "Ivan Petrov".into(),
            screened_by: "ops".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn every_published_event_type_is_one_the_relay_routes() {
    let w = World::with_sanctions();
    w.applied(ALICE, "ivan@acme.io", "Ivan Petrov").await;
    for e in w.events(ALICE).await {
        let published = pl_compliance::INTEGRATION_EVENTS.contains(&e.event_type.as_str());
        let internal = matches!(
            e.event_type.as_str(),
            "PartnerProfileRecorded"
                | "PartnerStatusRecorded"
                | "SanctionsScreened"
                | "SanctionsScreeningReviewed"
        );
        assert!(published ^ internal, "{}", e.event_type);
    }
    assert!(pl_compliance::streams::partner(ALICE).starts_with(pl_compliance::STREAM_PREFIX));
}

/// Attribution's events of a busy day: a bot's clicks, sales (one over the click-velocity
/// threshold, one crediting two partners, one refunded at once), refunds over the refund-rate
/// threshold, a repeated refund, a chargeback, touchpoints the rules skip and an event type
/// they ignore.
async fn busy_day(w: &World) {
    let start = day(2, 1);
    for n in 1..=21 {
        let at = start + Duration::minutes(i64::try_from(n).unwrap());
        w.click(n, ALICE, "ip-bot", at).await;
    }
    w.click(22, BOB, "ip-home", start).await;
    w.deliver(
        "attribution",
        "TouchpointRecorded",
        serde_json::json!({
            "touchpoint_id": tp(23), "kind": "coupon", "program_id": PROGRAM,
            "partner_id": BOB, "occurred_at": start,
        }),
    )
    .await;
    let bot = |n: i64| start + Duration::minutes(n);
    w.sale(
        1,
        ALICE,
        day(2, 2),
        Some((20, bot(20), "ip-bot")),
        serde_json::json!({}),
    )
    .await;
    w.sale(
        2,
        ALICE,
        day(2, 2),
        Some((21, bot(21), "ip-bot")),
        serde_json::json!({}),
    )
    .await;
    w.deliver(
        "attribution",
        "ConversionAttributed",
        serde_json::json!({
            "conversion_id": conversion(3), "external_id": "order-3", "program_id": PROGRAM,
            "kind": "CONVERSION_KIND_SALE", "customer_id": "c-3",
            "gross": {"amount": "100.00", "currency": "EUR"}, "occurred_at": day(2, 3),
            "shares": [{"partner_id": ALICE, "weight": "0.5"}, {"partner_id": BOB, "weight": "0.5"}],
            "model": "linear",
        }),
    )
    .await;
    for n in 4..=6 {
        w.sale(n, ALICE, day(2, 3), None, serde_json::json!({}))
            .await;
    }
    w.refund(1, 4, day(2, 4)).await;
    w.refund(2, 4, day(2, 4)).await;
    w.refund(3, 3, day(2, 5)).await;
    w.sale(7, BOB, day(2, 5), None, serde_json::json!({})).await;
    w.refund(4, 7, day(2, 5)).await;
    w.deliver(
        "attribution",
        "ChargebackReceived",
        serde_json::json!({
            "chargeback_id": Uuid::from_u128(0x6001), "conversion_id": conversion(5),
            "amount": {"amount": "100.00", "currency": "EUR"}, "occurred_at": day(2, 6),
        }),
    )
    .await;
    w.deliver(
        "attribution",
        "ConversionUnattributed",
        serde_json::json!({"conversion_id": conversion(8), "program_id": PROGRAM}),
    )
    .await;
}

async fn busy_day_world() -> World {
    let w = World::new();
    let mut rules = w.default_rules().await;
    rules.min_conversions = 2;
    w.configure(Some(rules), &[]).await;
    w.eligible_partner(ALICE).await;
    w.eligible_partner(BOB).await;
    w
}

#[tokio::test]
async fn attributions_events_screened_in_batches_write_what_screening_them_one_at_a_time_writes() {
    let single = busy_day_world().await;
    busy_day(&single).await;
    let expected = single.streams().await;
    // Not an empty comparison: both rules fired.
    let rules: Vec<String> = single
        .flags(ALICE)
        .await
        .into_iter()
        .map(|f| f.rule)
        .collect();
    assert_eq!(rules, vec!["click_velocity", "refund_rate"]);
    assert_eq!(count(&single.types(BOB).await, "PartnerFlagged"), 1);

    for batch in [usize::MAX, 7, 2] {
        let w = busy_day_world().await;
        w.record();
        busy_day(&w).await;
        let messages = w.recorded();
        let compliance = w.api.compliance();
        for chunk in messages.chunks(batch.min(messages.len())) {
            let outcomes = pl_compliance::consumer::handle_batch(&compliance, chunk).await;
            assert_eq!(outcomes.len(), chunk.len());
            assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        }
        assert_eq!(w.streams().await, expected, "batches of {batch}");
    }
}

/// Two clicks and their sales around a conversion that breaks the contract (no shares).
async fn around_a_broken_conversion(w: &World, broken: bool) {
    w.click(1, ALICE, "ip-1", day(2, 1)).await;
    w.click(2, BOB, "ip-2", day(2, 1)).await;
    if broken {
        w.deliver(
            "attribution",
            "ConversionAttributed",
            serde_json::json!({"conversion_id": conversion(9), "program_id": PROGRAM, "shares": []}),
        )
        .await;
    } else {
        // Keeps the message ids of the events after it the same in both worlds.
        w.next.fetch_add(1, Ordering::SeqCst);
    }
    w.sale(
        1,
        ALICE,
        day(2, 2),
        Some((1, day(2, 1), "ip-1")),
        serde_json::json!({}),
    )
    .await;
    w.sale(
        2,
        BOB,
        day(2, 2),
        Some((2, day(2, 1), "ip-2")),
        serde_json::json!({}),
    )
    .await;
}

#[tokio::test]
async fn a_broken_event_in_a_batch_is_dead_lettered_alone_and_the_rest_is_screened() {
    let single = busy_day_world().await;
    around_a_broken_conversion(&single, false).await;
    let w = busy_day_world().await;
    w.record();
    around_a_broken_conversion(&w, true).await;
    let outcomes = pl_compliance::consumer::handle_batch(&w.api.compliance(), &w.recorded()).await;
    // The runs before and after it are screened; the broken one alone is dead-lettered.
    assert_eq!(outcomes.len(), 5);
    assert!(
        matches!(&outcomes[2], Err(pl_bus::HandleError::Permanent(_))),
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .enumerate()
            .all(|(i, o)| i == 2 || o.is_ok()),
        "{outcomes:?}"
    );
    assert_eq!(w.streams().await, single.streams().await);
}

#[tokio::test]
async fn a_run_that_fails_part_way_is_handled_again_from_the_failed_event_and_ends_as_one_at_a_time(
) {
    let single = busy_day_world().await;
    busy_day(&single).await;
    let expected = single.streams().await;
    // Alice's flags fail to append: the run fails after every count (Bob's refunds included)
    // has landed; its events are then handled one by one, and again after each retry. A
    // refund screened again must read the counts of its first screening, not Bob's window
    // as later conversions have since filled it.
    for failures in [1, 2, 3] {
        let flaky = flaky_log(Flaky {
            stream: pl_compliance::streams::partner(ALICE),
            ..Flaky::default()
        });
        let w = busy_day_world_on(flaky.clone()).await;
        w.record();
        busy_day(&w).await;
        let mut messages = w.recorded();
        flaky.hooks.failures.store(failures, Ordering::SeqCst);
        let mut retries = 0;
        while !messages.is_empty() {
            assert!(retries <= failures, "{failures} failures never got through");
            let outcomes =
                pl_compliance::consumer::handle_batch(&w.api.compliance(), &messages).await;
            assert_eq!(outcomes.len(), messages.len());
            let Some(first) = outcomes.iter().position(Result::is_err) else {
                break;
            };
            // The first retry ends the batch: it and everything after it come back.
            assert!(
                outcomes[first..]
                    .iter()
                    .all(|o| matches!(o, Err(pl_bus::HandleError::Retry(_)))),
                "{outcomes:?}"
            );
            messages.drain(..first);
            retries += 1;
        }
        assert_eq!(flaky.hooks.failures.load(Ordering::SeqCst), 0);
        assert!(retries > 0 || failures == 1, "the failures never surfaced");
        assert_eq!(w.streams().await, expected, "{failures} failures");
    }
}

async fn busy_day_world_on(store: SharedStore) -> World {
    let w = World::on(store, None);
    let mut rules = w.default_rules().await;
    rules.min_conversions = 2;
    w.configure(Some(rules), &[]).await;
    w.eligible_partner(ALICE).await;
    w.eligible_partner(BOB).await;
    w
}

#[tokio::test]
async fn with_one_partners_file_refusing_writes_a_batch_dead_letters_what_one_at_a_time_does() {
    let refusing = || {
        flaky_log(Flaky {
            stream: pl_compliance::streams::partner(ALICE),
            refuse: true,
            ..Flaky::default()
        })
    };
    let (single_log, batch_log) = (refusing(), refusing());
    let single = busy_day_world_on(single_log.clone()).await;
    single.record();
    busy_day(&single).await;
    let batched = busy_day_world_on(batch_log.clone()).await;
    batched.record();
    busy_day(&batched).await;
    single_log.hooks.failures.store(u64::MAX, Ordering::SeqCst);
    batch_log.hooks.failures.store(u64::MAX, Ordering::SeqCst);

    let mut one_at_a_time = Vec::new();
    for m in single.recorded() {
        one_at_a_time.push(pl_compliance::consumer::handle(&single.api.compliance(), m).await);
    }
    let outcomes =
        pl_compliance::consumer::handle_batch(&batched.api.compliance(), &batched.recorded()).await;
    let dead = |o: &[Result<(), pl_bus::HandleError>]| -> Vec<bool> {
        o.iter()
            .map(|o| matches!(o, Err(pl_bus::HandleError::Permanent(_))))
            .collect()
    };
    // Alice's flagged events, and only they, are dead-lettered; Bob's flag still lands.
    assert!(dead(&one_at_a_time).iter().any(|d| *d));
    assert!(one_at_a_time
        .iter()
        .all(|o| !matches!(o, Err(pl_bus::HandleError::Retry(_)))));
    assert_eq!(dead(&outcomes), dead(&one_at_a_time));
    assert_eq!(count(&batched.types(BOB).await, "PartnerFlagged"), 1);
    assert_eq!(batched.streams().await, single.streams().await);
}

/// Twenty clicks from one address: the velocity threshold.
async fn twenty_bot_clicks(w: &World) {
    for n in 1..=20 {
        let at = day(2, 1) + Duration::minutes(i64::try_from(n).unwrap());
        w.click(n, ALICE, "ip-bot", at).await;
    }
}

/// A sale through a 21st click delivered before the click itself (a redelivery out of order).
async fn a_sale_before_its_click(w: &World) {
    let at = day(2, 1) + Duration::minutes(21);
    w.sale(
        1,
        ALICE,
        day(2, 2),
        Some((21, at, "ip-bot")),
        serde_json::json!({}),
    )
    .await;
    w.click(21, ALICE, "ip-bot", at).await;
    w.click(22, BOB, "ip-home", at).await;
}

#[tokio::test]
async fn a_click_redelivered_after_its_conversion_in_a_batch_is_counted_after_it_as_one_at_a_time_would(
) {
    let single = busy_day_world().await;
    twenty_bot_clicks(&single).await;
    a_sale_before_its_click(&single).await;
    let w = busy_day_world().await;
    twenty_bot_clicks(&w).await;
    w.record();
    a_sale_before_its_click(&w).await;
    let outcomes = pl_compliance::consumer::handle_batch(&w.api.compliance(), &w.recorded()).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(w.streams().await, single.streams().await);
}

#[tokio::test]
async fn a_conversion_whose_flag_the_log_refused_is_listed_and_flagged_once_by_a_retry_after_the_fix(
) {
    let log = flaky_log(Flaky {
        stream: pl_compliance::streams::partner(ALICE),
        refuse: true,
        ..Flaky::default()
    });
    let w = World::on(log.clone(), None);
    // Given a sale nine seconds after its click (a click_to_conversion flag), kept unhandled.
    let click_at = day(2, 1);
    w.record();
    w.sale(
        1,
        ALICE,
        click_at + Duration::seconds(9),
        Some((1, click_at, "ip-a")),
        serde_json::json!({}),
    )
    .await;
    let [sale]: [Message; 1] = w.recorded().try_into().unwrap();
    // When it is handled while Alice's file refuses writes.
    log.hooks.failures.store(u64::MAX, Ordering::SeqCst);
    let recorder = pl_runtime::dead_letters::Recorder::new(
        pl_compliance::SERVICE,
        "compliance-attribution",
        Arc::new(FixedClock::at(day(2, 2))),
    );
    let outcome = pl_compliance::consumer::handle(&w.api.compliance(), sale.clone()).await;
    let settled = recorder.settle(w.store.as_ref(), &sale, outcome).await;
    assert!(
        matches!(&settled, Err(pl_bus::HandleError::Permanent(r)) if r.contains("limit exceeded")),
        "{settled:?}"
    );
    // Then it is listed with its reason, and nothing is flagged yet.
    let listed = w
        .api
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
        ("ConversionAttributed", "compliance-attribution", "waiting")
    );
    assert!(letter.reason.contains("limit exceeded"), "{letter:?}");
    assert!(w.flags(ALICE).await.is_empty());
    let retry = || {
        w.api
            .retry_dead_letter(Request::new(pl_proto::common::v1::RetryDeadLetterRequest {
                context: w.ctx_at(day(2, 3)),
                letter_id: letter.letter_id.clone(),
            }))
    };
    // Before the fix a retry is refused again, and says so.
    let failed = retry().await.unwrap().into_inner();
    let view = failed.letter.unwrap();
    assert!(failed.ran);
    assert_eq!((view.status.as_str(), view.retries), ("failed", 1));
    // The cause removed, the retry applies: the flag is there exactly once.
    log.hooks.failures.store(0, Ordering::SeqCst);
    let applied = retry().await.unwrap().into_inner();
    assert!(applied.ran);
    assert_eq!(
        applied
            .letter
            .as_ref()
            .map(|l| (l.status.as_str(), l.retries)),
        Some(("applied", 2))
    );
    let flags = w.flags(ALICE).await;
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].rule, "click_to_conversion");
    // A second retry under another key runs nothing and raises nothing.
    let again = retry().await.unwrap().into_inner();
    assert!(!again.ran);
    assert_eq!(again.letter.unwrap().retries, 2);
    assert_eq!(w.flags(ALICE).await.len(), 1);
}

// ----- required agreements -------------------------------------------------------------------

/// A program's required disclosure acknowledgement was only listed as outstanding: a partner
/// without it was paid. Now it holds the partner's payouts (in compliance's eligibility and
/// commissions' alike) until it is recorded.
#[tokio::test]
async fn given_a_program_requiring_a_disclosure_then_payouts_wait_for_it_and_a_manual_hold_cannot_take_its_name(
) {
    let w = World::new();
    w.api
        .configure_program(Request::new(pb::ConfigureProgramRequest {
            context: w.ctx_at(day(1, 1)),
            program_id: PROGRAM.to_string(),
            regulated: false,
            jurisdictions: vec![],
            rules: None,
            configured_by: "ops".into(),
            required_verifications: vec![pb::VerificationKind::DisclosureAcknowledgement.into()],
        }))
        .await
        .unwrap();
    w.eligible_partner(ALICE).await;
    w.applied(ALICE, "alice@creators.example", "Alice Creator")
        .await;
    let e = w.eligibility(ALICE, day(2, 1)).await;
    assert_eq!(codes(&e), vec!["payout_hold"]);
    let theirs = commissions_eligibility(&w, ALICE).await.blockers(day(2, 1));
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert!(
        theirs[0]
            .detail()
            .contains("requirement-disclosure_acknowledgement")
            && theirs[0]
                .detail()
                .contains("requires a disclosure_acknowledgement"),
        "{}",
        theirs[0].detail()
    );

    w.verify(
        ALICE,
        pb::VerificationKind::DisclosureAcknowledgement,
        day(2, 2),
        None,
        "",
    )
    .await
    .unwrap();
    assert!(w.eligibility(ALICE, day(2, 3)).await.eligible);
    assert!(commissions_eligibility(&w, ALICE)
        .await
        .blockers(day(2, 3))
        .is_empty());

    let reserved = w
        .api
        .place_payout_hold(Request::new(pb::PlacePayoutHoldRequest {
            context: w.ctx_at(day(2, 4)),
            partner_id: ALICE.to_string(),
            hold_id: "requirement-disclosure_acknowledgement".into(),
            reason: "by hand".into(),
            placed_by: "ops".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(reserved.code(), Code::InvalidArgument);
}

/// The sanctions list was read once at start: a partner listed in a later version was never
/// screened against it. A reload records the version, screens every partner on file, and a
/// partner cleared as a false positive stays cleared for the same entry.
#[tokio::test]
async fn given_a_new_list_version_when_reloaded_then_every_partner_is_screened_again_and_a_cleared_entry_stays_cleared(
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sanctions.txt");
    std::fs::write(&path, SANCTIONS).unwrap();
    let mut w = World::with_sanctions();
    w.api = w.api.clone().with_sanctions_path(path.clone());
    for p in [ALICE, BOB] {
        w.eligible_partner(p).await;
    }
    w.applied(ALICE, "ivan@acme.io", "Petrov Ivan").await;
    w.applied(BOB, "bob@example.com", "Robert Brown").await;
    let first = w
        .api
        .list_sanctions_screenings(Request::new(pb::ListSanctionsScreeningsRequest {
            partner_id: ALICE.to_string(),
            page: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .screenings;
    w.api
        .review_sanctions_screening(Request::new(pb::ReviewSanctionsScreeningRequest {
            context: w.ctx_at(day(2, 2)),
            partner_id: ALICE.to_string(),
            screening_id: first[0].screening_id.clone(),
            outcome: pb::ReviewOutcome::FalsePositive.into(),
            reviewer: "mlro".into(),
            reason: "different person: date of birth differs".into(),
        }))
        .await
        .unwrap();
    assert!(w.eligibility(BOB, day(3, 1)).await.eligible);

    // The next version lists Bob too.
    std::fs::write(&path, format!("{SANCTIONS}SDN-2\tBrown, Robert\n")).unwrap();
    let reload = |at| pb::ReloadSanctionsListRequest {
        context: w.ctx_at(at),
        loaded_by: "compliance-desk".into(),
    };
    let loaded = w
        .api
        .reload_sanctions_list(Request::new(reload(day(3, 1))))
        .await
        .unwrap()
        .into_inner();
    assert!(loaded.changed);
    assert_eq!(loaded.list_entries, 2);
    assert_eq!((loaded.partners_screened, loaded.matches_pending), (2, 1));
    assert_eq!(
        codes(&w.eligibility(BOB, day(3, 2)).await),
        vec!["sanctions_match"]
    );
    assert!(
        w.eligibility(ALICE, day(3, 2)).await.eligible,
        "cleared stays cleared"
    );
    let theirs = commissions_eligibility(&w, BOB).await.blockers(day(3, 2));
    assert_eq!(
        theirs.iter().map(|b| b.code()).collect::<Vec<_>>(),
        vec!["sanctions_review"]
    );
    let versions = w.store.read_stream("sanctions-lists", 0, 10).await.unwrap();
    assert_eq!(versions.len(), 1);
    let record: serde_json::Value = serde_json::from_slice(&versions[0].data).unwrap();
    assert_eq!(record["list_sha256"], loaded.list_sha256);
    assert_eq!(record["loaded_by"], "compliance-desk");

    // The same file again: nothing recorded, nobody screened.
    let again = w
        .api
        .reload_sanctions_list(Request::new(reload(day(3, 3))))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);
    assert_eq!(again.partners_screened, 0);
}

/// A reload that fails part way (a partner's file refused an append) leaves the old list in
/// use and records nothing; the same request again screens everyone and puts the list in use.
#[tokio::test]
async fn given_a_reload_that_fails_part_way_when_retried_then_it_completes_and_nothing_was_half_done(
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sanctions.txt");
    std::fs::write(&path, SANCTIONS).unwrap();
    let store = flaky_log(Flaky {
        stream: format!("verification-{BOB}"),
        failures: AtomicU64::new(0),
        refuse: false,
    });
    let mut w = World::on(
        store.clone(),
        Some(Arc::new(
            SanctionsList::parse(SANCTIONS.as_bytes()).unwrap(),
        )),
    );
    w.api = w.api.clone().with_sanctions_path(path.clone());
    w.applied(BOB, "bob@example.com", "Robert Brown").await;
    std::fs::write(&path, format!("{SANCTIONS}SDN-2\tBrown, Robert\n")).unwrap();
    store.hooks.failures.store(1, Ordering::SeqCst);
    let request = || pb::ReloadSanctionsListRequest {
        context: w.ctx_at(day(3, 1)).map(|mut c| {
            c.idempotency_key = "reload-v2".into();
            c
        }),
        loaded_by: "compliance-desk".into(),
    };
    let failed = w.api.reload_sanctions_list(Request::new(request())).await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(store
        .inner
        .read_stream("sanctions-lists", 0, 10)
        .await
        .unwrap()
        .is_empty());

    let done = w
        .api
        .reload_sanctions_list(Request::new(request()))
        .await
        .unwrap()
        .into_inner();
    assert!(done.changed);
    assert_eq!(done.matches_pending, 1);
    assert!(codes(&w.eligibility(BOB, day(3, 2)).await).contains(&"sanctions_match"));
}
