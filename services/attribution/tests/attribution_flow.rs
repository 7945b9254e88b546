//! Attribution as its callers meet it: partner CRM's facts consumed from the bus, touchpoints,
//! postbacks and conversions recorded over the gRPC implementation, decisions read back and
//! checked against the contract commissions parses — on the in-memory event log. Each test is
//! given (CRM facts, touchpoints) / when (a conversion) / then (the published decision).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use pl_attribution::AttributionService;
use pl_bus::Message;
use pl_eventlog::{MemoryLog, SharedStore};
use pl_proto::attribution::v1 as pb;
use pl_proto::attribution::v1::attribution_service_server::AttributionService as Api;
use pl_proto::common::v1::{Money, PageRequest, RequestContext};
use pl_runtime::FixedClock;
use tonic::{Code, Request};
use uuid::Uuid;

const PROGRAM: Uuid = Uuid::from_u128(0xc1);
const ALICE: Uuid = Uuid::from_u128(0xa1);
const BOB: Uuid = Uuid::from_u128(0xa2);
const CAROL: Uuid = Uuid::from_u128(0xa3);
const CAMPAIGN: Uuid = Uuid::from_u128(0xca);

fn link_of(partner: Uuid) -> Uuid {
    Uuid::from_u128(0x1000 + partner.as_u128())
}

/// The conversion time most tests use.
fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn ts(t: DateTime<Utc>) -> pl_proto::prost_types::Timestamp {
    pl_proto::prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

struct World {
    store: SharedStore,
    api: AttributionService,
    next: AtomicU64,
}

impl World {
    fn key(&self) -> Option<RequestContext> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        Some(RequestContext {
            idempotency_key: format!("k-{n}"),
            occurred_at: None,
            correlation_id: String::new(),
        })
    }

    async fn crm(&self, event_type: &str, data: serde_json::Value) {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let id = Uuid::from_u128(0xe000_0000 + u128::from(n));
        let envelope = serde_json::json!({
            "id": id, "type": event_type, "schema_version": 1,
            "stream": "partner-x", "version": 0, "position": n,
            "occurred_at": at(), "recorded_at": at(),
            "correlation_id": null, "causation_id": null, "data": data,
        });
        let m = Message {
            id,
            subject: format!("pl.crm.{event_type}"),
            payload: bytes::Bytes::from(serde_json::to_vec(&envelope).unwrap()),
            headers: BTreeMap::new(),
        };
        pl_attribution::consumer::handle(self.store.as_ref(), m)
            .await
            .unwrap();
    }

    async fn status(&self, partner: Uuid, status: &str, t: DateTime<Utc>) {
        self.crm(
            "PartnerStatusChanged",
            serde_json::json!({"partner_id": partner, "status": status, "occurred_at": t}),
        )
        .await;
    }

    async fn click_at(&self, visitor: &str, partner: Uuid, t: DateTime<Utc>) -> pb::Touchpoint {
        self.try_click(visitor, link_of(partner), t).await.unwrap()
    }

    async fn try_click(
        &self,
        visitor: &str,
        link: Uuid,
        t: DateTime<Utc>,
    ) -> Result<pb::Touchpoint, tonic::Status> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        self.api
            .record_touchpoint(Request::new(pb::RecordTouchpointRequest {
                context: self.key(),
                visitor_id: visitor.into(),
                customer_id: String::new(),
                occurred_at: Some(ts(t)),
                touch: Some(pb::record_touchpoint_request::Touch::Click(
                    pb::ClickTouch {
                        click_id: Uuid::from_u128(0xc0_0000 + u128::from(n)).to_string(),
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

    async fn coupon(
        &self,
        customer: &str,
        code: &str,
        t: DateTime<Utc>,
    ) -> Result<pb::Touchpoint, tonic::Status> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        self.api
            .record_touchpoint(Request::new(pb::RecordTouchpointRequest {
                context: self.key(),
                visitor_id: String::new(),
                customer_id: customer.into(),
                occurred_at: Some(ts(t)),
                touch: Some(pb::record_touchpoint_request::Touch::Coupon(
                    pb::CouponRedemption {
                        redemption_id: Uuid::from_u128(0xd0_0000 + u128::from(n)).to_string(),
                        program_id: PROGRAM.to_string(),
                        code: code.into(),
                    },
                )),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn model(&self, model: pb::AttributionModel, window_days: u32, reattribute: bool) {
        self.api
            .set_attribution_settings(Request::new(pb::SetAttributionSettingsRequest {
                context: self.key(),
                program_id: PROGRAM.to_string(),
                model: model as i32,
                window_days,
                half_life_hours: 24,
                allow_reattribution: reattribute,
                count_impressions: false,
            }))
            .await
            .unwrap();
    }

    async fn convert(&self, c: Conv) -> Result<pb::Attribution, tonic::Status> {
        self.api
            .record_conversion(Request::new(c.request(self.key())))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn head(&self) -> u64 {
        *self.store.watch_head().borrow()
    }
}

#[derive(Clone)]
struct Conv {
    external_id: &'static str,
    kind: pb::ConversionType,
    customer: &'static str,
    visitor: &'static str,
    amount: Option<&'static str>,
    original: &'static str,
    at: DateTime<Utc>,
    email: &'static str,
}

fn sale(external_id: &'static str, visitor: &'static str) -> Conv {
    Conv {
        external_id,
        kind: pb::ConversionType::Sale,
        customer: "cust-1",
        visitor,
        amount: Some("100.00"),
        original: "",
        at: at(),
        email: "",
    }
}

impl Conv {
    fn request(&self, context: Option<RequestContext>) -> pb::RecordConversionRequest {
        pb::RecordConversionRequest {
            context,
            program_id: PROGRAM.to_string(),
            r#type: self.kind as i32,
            external_id: self.external_id.into(),
            customer_id: self.customer.into(),
            visitor_id: self.visitor.into(),
            customer_domain: String::new(),
            amount: self.amount.map(|a| Money {
                amount: a.into(),
                currency: "USD".into(),
            }),
            products: vec!["pro".into()],
            customer_country: "DE".into(),
            original_external_id: self.original.into(),
            occurred_at: Some(ts(self.at)),
            customer_email: self.email.into(),
            ..Default::default()
        }
    }

    fn kind(mut self, kind: pb::ConversionType) -> Self {
        self.kind = kind;
        self
    }

    fn at(mut self, t: DateTime<Utc>) -> Self {
        self.at = t;
        self
    }

    fn amount(mut self, a: Option<&'static str>) -> Self {
        self.amount = a;
        self
    }

    fn original(mut self, o: &'static str) -> Self {
        self.original = o;
        self
    }
}

/// Given: three approved partners, each with a tracking link (Carol's in a campaign).
async fn world() -> World {
    let store: SharedStore = Arc::new(MemoryLog::default());
    let api = AttributionService::new(store.clone(), Arc::new(FixedClock::at(at())), "test-salt");
    let w = World {
        store,
        api,
        next: AtomicU64::new(1),
    };
    let long_ago = at() - Duration::days(400);
    for p in [ALICE, BOB, CAROL] {
        w.status(p, "PARTNER_STATUS_APPROVED", long_ago).await;
        w.crm(
            "TrackingLinkIssued",
            serde_json::json!({
                "tracking_link_id": link_of(p), "partner_id": p, "program_id": PROGRAM,
                "campaign_id": if p == CAROL { CAMPAIGN.to_string() } else { String::new() },
                "destination_url": "https://shop.example/", "occurred_at": long_ago,
            }),
        )
        .await;
    }
    w
}

fn shares(a: &pb::Attribution) -> Vec<(Uuid, String)> {
    a.conversion
        .as_ref()
        .map(|c| {
            c.shares
                .iter()
                .map(|s| (Uuid::parse_str(&s.partner_id).unwrap(), s.weight.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn one(p: Uuid) -> Vec<(Uuid, String)> {
    vec![(p, "1".into())]
}

// ----- windows ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_click_one_second_inside_the_window_earns_the_sale() {
    let w = world().await;
    w.click_at(
        "v-1",
        ALICE,
        at() - Duration::days(30) + Duration::seconds(1),
    )
    .await;
    let a = w.convert(sale("order-1", "v-1")).await.unwrap();
    assert!(a.attributed, "{}", a.explanation);
    assert_eq!(shares(&a), one(ALICE));
    let c = a.conversion.unwrap();
    assert_eq!((c.model.as_str(), c.window_days), ("last_click", 30));
    assert_eq!(c.touchpoints.len(), 1);
}

#[tokio::test]
async fn a_click_one_second_outside_the_window_earns_nothing() {
    let w = world().await;
    w.click_at(
        "v-1",
        ALICE,
        at() - Duration::days(30) - Duration::seconds(1),
    )
    .await;
    let a = w.convert(sale("order-1", "v-1")).await.unwrap();
    assert!(!a.attributed);
    let u = a.unattributed.unwrap();
    assert!(u.reason.contains("1 before the window"), "{}", u.reason);
}

#[tokio::test]
async fn a_longer_program_window_counts_an_older_click() {
    let w = world().await;
    w.model(pb::AttributionModel::LastClick, 90, false).await;
    w.click_at("v-1", ALICE, at() - Duration::days(60)).await;
    let a = w.convert(sale("order-1", "v-1")).await.unwrap();
    assert_eq!(shares(&a), one(ALICE));
    assert_eq!(a.conversion.unwrap().window_days, 90);
}

// ----- models ----------------------------------------------------------------------------------

async fn three_clicks(w: &World) {
    w.click_at("v-1", ALICE, at() - Duration::days(3)).await;
    w.click_at("v-1", BOB, at() - Duration::days(2)).await;
    w.click_at("v-1", CAROL, at() - Duration::days(1)).await;
}

#[tokio::test]
async fn last_click_is_the_default_and_gives_the_sale_to_the_latest_partner() {
    let w = world().await;
    three_clicks(&w).await;
    let a = w.convert(sale("order-1", "v-1")).await.unwrap();
    assert_eq!(shares(&a), one(CAROL));
    // Carol's link is in the campaign, so the conversion is the campaign's.
    assert_eq!(a.conversion.unwrap().campaign_id, CAMPAIGN.to_string());
}

#[tokio::test]
async fn first_click_gives_the_sale_to_the_first_partner() {
    let w = world().await;
    w.model(pb::AttributionModel::FirstClick, 30, false).await;
    three_clicks(&w).await;
    assert_eq!(
        shares(&w.convert(sale("order-1", "v-1")).await.unwrap()),
        one(ALICE)
    );
}

#[tokio::test]
async fn linear_splits_in_thirds_that_sum_to_exactly_one() {
    let w = world().await;
    w.model(pb::AttributionModel::Linear, 30, false).await;
    three_clicks(&w).await;
    let a = w.convert(sale("order-1", "v-1")).await.unwrap();
    assert_eq!(
        shares(&a),
        vec![
            (ALICE, "0.333334".into()),
            (BOB, "0.333333".into()),
            (CAROL, "0.333333".into())
        ]
    );
}

#[tokio::test]
async fn time_decay_halves_a_partners_credit_for_every_half_life_it_is_older() {
    let w = world().await;
    w.model(pb::AttributionModel::TimeDecay, 30, false).await; // half-life 24 h
    w.click_at("v-1", ALICE, at() - Duration::hours(48)).await;
    w.click_at("v-1", BOB, at() - Duration::hours(24)).await;
    w.click_at("v-1", CAROL, at()).await;
    let a = w.convert(sale("order-1", "v-1")).await.unwrap();
    // 1 : 2 : 4 of 7.
    assert_eq!(
        shares(&a),
        vec![
            (ALICE, "0.142857".into()),
            (BOB, "0.285714".into()),
            (CAROL, "0.571429".into())
        ]
    );
    assert_eq!(a.conversion.unwrap().half_life_hours, 24);
}

#[tokio::test]
async fn position_based_gives_forty_twenty_forty() {
    let w = world().await;
    w.model(pb::AttributionModel::PositionBased, 30, false)
        .await;
    three_clicks(&w).await;
    let a = w.convert(sale("order-1", "v-1")).await.unwrap();
    assert_eq!(
        shares(&a),
        vec![
            (ALICE, "0.4".into()),
            (BOB, "0.2".into()),
            (CAROL, "0.4".into())
        ]
    );
}

// ----- precedence ------------------------------------------------------------------------------

async fn coupon_of(w: &World, partner: Uuid, code: &str, expires: Option<DateTime<Utc>>) {
    w.crm(
        "CouponIssued",
        serde_json::json!({
            "coupon_id": Uuid::from_u128(0xcc00 + partner.as_u128()), "code": code,
            "partner_id": partner, "program_id": PROGRAM,
            "valid_from": at() - Duration::days(100), "expires_at": expires,
            "occurred_at": at() - Duration::days(100),
        }),
    )
    .await;
}

#[tokio::test]
async fn a_coupon_takes_precedence_over_a_later_click() {
    let w = world().await;
    coupon_of(&w, BOB, "BOB10", None).await;
    w.coupon("cust-1", "bob10", at() - Duration::days(2))
        .await
        .unwrap();
    w.click_at("v-1", ALICE, at() - Duration::days(1)).await;
    let a = w.convert(sale("order-1", "v-1")).await.unwrap();
    assert_eq!(shares(&a), one(BOB));
    assert!(a.conversion.unwrap().reason.contains("coupon BOB10"));
}

#[tokio::test]
async fn an_approved_deal_registration_takes_precedence_over_coupons_and_clicks() {
    let w = world().await;
    coupon_of(&w, BOB, "BOB10", None).await;
    w.coupon("cust-1", "BOB10", at() - Duration::days(2))
        .await
        .unwrap();
    w.click_at("v-1", ALICE, at() - Duration::days(1)).await;
    w.crm(
        "DealRegistrationApproved",
        serde_json::json!({
            "deal_id": Uuid::from_u128(0xdea1), "partner_id": CAROL, "program_id": PROGRAM,
            "customer_id": "cust-1", "approved_at": at() - Duration::days(200),
            "occurred_at": at() - Duration::days(200),
        }),
    )
    .await;
    let a = w.convert(sale("order-1", "v-1")).await.unwrap();
    assert_eq!(shares(&a), one(CAROL));
    let c = a.conversion.unwrap();
    assert_eq!(c.touchpoints[0].kind, "deal_registration");
    assert!(c.reason.contains("deal registration"), "{}", c.reason);
}

// ----- customer lock ---------------------------------------------------------------------------

#[tokio::test]
async fn later_invoices_refunds_and_churn_follow_the_partner_the_customer_was_locked_to() {
    let w = world().await;
    w.click_at("v-1", ALICE, at() - Duration::days(1)).await;
    let start = w
        .convert(sale("sub-1", "v-1").kind(pb::ConversionType::SubscriptionStarted))
        .await
        .unwrap();
    assert_eq!(shares(&start), one(ALICE));

    // Given Bob's click a month later, when the next invoice is paid, then it is still Alice's.
    let later = at() + Duration::days(30);
    w.click_at("v-1", BOB, later - Duration::hours(1)).await;
    let invoice = w
        .convert(
            sale("inv-2", "v-1")
                .kind(pb::ConversionType::SubscriptionInvoicePaid)
                .at(later),
        )
        .await
        .unwrap();
    assert_eq!(shares(&invoice), one(ALICE));
    let c = invoice.conversion.unwrap();
    assert_eq!(c.locked_by_conversion_id, start.conversion_id);
    assert!(c.reason.starts_with("customer lock"), "{}", c.reason);

    // A partial refund of the invoice follows it.
    let refund = w
        .convert(
            sale("refund-1", "")
                .kind(pb::ConversionType::Refund)
                .amount(Some("25.00"))
                .original("inv-2")
                .at(later + Duration::days(1)),
        )
        .await
        .unwrap();
    let r = refund.refund.unwrap();
    assert_eq!(r.conversion_id, c.conversion_id);
    assert!(!r.full);

    // Churn ends the lock: published with the locking conversion.
    let churn = w
        .convert(
            sale("churn-1", "")
                .kind(pb::ConversionType::SubscriptionCancelled)
                .amount(None)
                .at(later + Duration::days(2)),
        )
        .await
        .unwrap();
    assert_eq!(
        churn.cancellation.unwrap().locked_by_conversion_id,
        start.conversion_id
    );
    // After churn a new subscription is attributed afresh (Bob's click is the latest).
    let again = w
        .convert(
            sale("sub-2", "v-1")
                .kind(pb::ConversionType::SubscriptionStarted)
                .at(later + Duration::days(3)),
        )
        .await
        .unwrap();
    assert_eq!(shares(&again), one(BOB));
}

#[tokio::test]
async fn a_customer_who_came_through_no_partner_stays_unattributed_for_the_relationship() {
    let w = world().await;
    let first = w.convert(sale("order-1", "v-1")).await.unwrap();
    assert!(!first.attributed);
    w.click_at("v-1", ALICE, at() + Duration::days(1)).await;
    let second = w
        .convert(sale("order-2", "v-1").at(at() + Duration::days(2)))
        .await
        .unwrap();
    assert!(!second.attributed);
    assert!(second
        .unattributed
        .unwrap()
        .reason
        .starts_with("customer lock"));
}

#[tokio::test]
async fn a_program_allowing_reattribution_relocks_a_customer_on_a_new_sale_with_other_touchpoints()
{
    let w = world().await;
    w.model(pb::AttributionModel::LastClick, 30, true).await;
    w.click_at("v-1", ALICE, at() - Duration::days(1)).await;
    assert_eq!(
        shares(&w.convert(sale("order-1", "v-1")).await.unwrap()),
        one(ALICE)
    );
    let later = at() + Duration::days(60);
    w.click_at("v-1", BOB, later - Duration::days(1)).await;
    assert_eq!(
        shares(&w.convert(sale("order-2", "v-1").at(later)).await.unwrap()),
        one(BOB)
    );
    // Invoices follow the new lock.
    let invoice = w
        .convert(
            sale("inv-1", "")
                .kind(pb::ConversionType::SubscriptionInvoicePaid)
                .at(later + Duration::days(30)),
        )
        .await
        .unwrap();
    assert_eq!(shares(&invoice), one(BOB));
}

// ----- late touchpoints and corrections --------------------------------------------------------

#[tokio::test]
async fn a_click_recorded_after_the_decision_changes_nothing_until_a_correction_is_recorded() {
    let w = world().await;
    let first = w.convert(sale("order-1", "v-1")).await.unwrap();
    assert!(!first.attributed);
    // A click that happened before the sale arrives late.
    w.click_at("v-1", ALICE, at() - Duration::hours(1)).await;
    // The same conversion sent again (another request key) answers the published decision.
    let again = w.convert(sale("order-1", "v-1")).await.unwrap();
    assert_eq!(again, first);
    // The correction: refund the conversion in full, record it again under a new external id.
    // The first is not re-attributed in place; both facts stay in the log.
    let refund = w
        .convert(
            sale("order-1-void", "")
                .kind(pb::ConversionType::Refund)
                .original("order-1")
                .at(at() + Duration::hours(1)),
        )
        .await
        .unwrap();
    assert!(
        !refund.attributed,
        "the refunded conversion was not attributed"
    );
    // The customer was locked as organic by the first sale; a correction that should credit a
    // partner therefore needs a program allowing re-attribution.
    w.model(pb::AttributionModel::LastClick, 30, true).await;
    let corrected = w.convert(sale("order-1-corrected", "v-1")).await.unwrap();
    assert_eq!(shares(&corrected), one(ALICE));
}

// ----- idempotency -----------------------------------------------------------------------------

#[tokio::test]
async fn a_conversion_with_a_used_external_id_and_other_details_is_refused_and_nothing_is_appended()
{
    let w = world().await;
    w.convert(sale("order-1", "v-1")).await.unwrap();
    let head = w.head().await;
    let err = w
        .convert(sale("order-1", "v-1").amount(Some("99.00")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    // Only the failed request's nothing: no event but none at all.
    assert_eq!(w.head().await, head);
}

#[tokio::test]
async fn a_repeated_request_key_returns_the_original_response() {
    let w = world().await;
    let ctx = w.key();
    let first = w
        .api
        .record_conversion(Request::new(sale("order-1", "v-1").request(ctx.clone())))
        .await
        .unwrap()
        .into_inner();
    let again = w
        .api
        .record_conversion(Request::new(sale("order-1", "v-1").request(ctx.clone())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    let reused = w
        .api
        .record_conversion(Request::new(sale("order-2", "v-1").request(ctx)))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument);
}

fn postback(w: &World, tx: &str, visitor: &str) -> pb::RecordPostbackRequest {
    pb::RecordPostbackRequest {
        context: w.key(),
        partner_id: BOB.to_string(),
        transaction_id: tx.into(),
        program_id: PROGRAM.to_string(),
        visitor_id: visitor.into(),
        customer_id: String::new(),
        click_id: String::new(),
        event: "install".into(),
        occurred_at: Some(ts(at() - Duration::hours(2))),
    }
}

#[tokio::test]
async fn a_retried_postback_changes_nothing_and_a_different_body_under_its_transaction_id_is_refused(
) {
    let w = world().await;
    let first = w
        .api
        .record_postback(Request::new(postback(&w, "tx-1", "v-1")))
        .await
        .unwrap()
        .into_inner();
    let head = w.head().await;
    // The sender retries with a new request key: same touchpoint, nothing appended but the
    // idempotency record of the new key.
    let again = w
        .api
        .record_postback(Request::new(postback(&w, "tx-1", "v-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(w.head().await, head + 1);
    let err = w
        .api
        .record_postback(Request::new(postback(&w, "tx-1", "v-2")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("tx-1"), "{}", err.message());
    // And the postback is a touchpoint like a click.
    assert_eq!(
        shares(&w.convert(sale("order-1", "v-1")).await.unwrap()),
        one(BOB)
    );
}

// ----- rejections and bad input ----------------------------------------------------------------

#[tokio::test]
async fn unknown_or_deactivated_links_expired_codes_and_suspended_partners_are_rejected_precisely()
{
    let w = world().await;
    let unknown = Uuid::from_u128(0xdead);
    let e = w.try_click("v-1", unknown, at()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.message(), format!("tracking link {unknown} is unknown"));

    w.crm(
        "TrackingLinkDeactivated",
        serde_json::json!({"tracking_link_id": link_of(BOB), "occurred_at": at() - Duration::days(1)}),
    )
    .await;
    let e = w.try_click("v-1", link_of(BOB), at()).await.unwrap_err();
    assert!(
        e.message().contains("was deactivated at"),
        "{}",
        e.message()
    );
    // A click before the deactivation is still accepted (business time).
    assert!(w
        .try_click("v-1", link_of(BOB), at() - Duration::days(2))
        .await
        .is_ok());

    w.status(CAROL, "PARTNER_STATUS_SUSPENDED", at() - Duration::hours(1))
        .await;
    let e = w.try_click("v-1", link_of(CAROL), at()).await.unwrap_err();
    assert_eq!(
        e.message(),
        format!("partner {CAROL} is suspended at {}, not approved", at())
    );

    coupon_of(&w, ALICE, "ALICE5", Some(at())).await;
    let e = w.coupon("cust-1", "ALICE5", at()).await.unwrap_err();
    assert!(e.message().contains("expired at"), "{}", e.message());
    assert!(w
        .coupon("cust-1", "ALICE5", at() - Duration::seconds(1))
        .await
        .is_ok());
    let e = w.coupon("cust-1", "NOPE", at()).await.unwrap_err();
    assert!(
        e.message().contains("is unknown in program"),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn a_partner_suspended_between_the_click_and_the_sale_earns_nothing() {
    let w = world().await;
    w.click_at("v-1", ALICE, at() - Duration::days(2)).await;
    w.status(ALICE, "PARTNER_STATUS_SUSPENDED", at() - Duration::days(1))
        .await;
    let a = w.convert(sale("order-1", "v-1")).await.unwrap();
    assert!(!a.attributed);
    assert!(a.unattributed.unwrap().reason.contains("not approved"));
}

#[tokio::test]
async fn bad_input_lists_every_field_and_appends_nothing() {
    let w = world().await;
    let head = w.head().await;
    let mut req = sale("", "v-1").request(w.key());
    req.program_id = "nope".into();
    req.amount = Some(Money {
        amount: "1.001".into(),
        currency: "USD".into(),
    });
    req.customer_country = "germany".into();
    req.original_external_id = "x".into();
    let err = w
        .api
        .record_conversion(Request::new(req))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for field in [
        "program_id",
        "external_id",
        "amount.amount",
        "customer_country",
        "original_external_id",
    ] {
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let refund_without_amount = sale("r-1", "")
        .kind(pb::ConversionType::Refund)
        .amount(None)
        .request(w.key());
    let err = w
        .api
        .record_conversion(Request::new(refund_without_amount))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("amount: required"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("original_external_id: required"),
        "{}",
        err.message()
    );
    assert_eq!(w.head().await, head);
}

#[tokio::test]
async fn a_refund_larger_than_what_is_left_of_the_sale_is_refused() {
    let w = world().await;
    w.click_at("v-1", ALICE, at() - Duration::days(1)).await;
    w.convert(sale("order-1", "v-1")).await.unwrap();
    let refund = |id: &'static str, amount: &'static str| {
        sale(id, "")
            .kind(pb::ConversionType::Refund)
            .amount(Some(amount))
            .original("order-1")
    };
    w.convert(refund("r-1", "60.00")).await.unwrap();
    let err = w.convert(refund("r-2", "40.01")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("40.00 USD"), "{}", err.message());
    let full = w.convert(refund("r-3", "40.00")).await.unwrap();
    assert!(full.refund.unwrap().full);
    let unknown = w
        .convert(refund("r-4", "1.00").original("order-404"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

// ----- the contract ----------------------------------------------------------------------------

#[tokio::test]
async fn what_is_published_is_what_commissions_parses() {
    let w = world().await;
    w.model(pb::AttributionModel::Linear, 30, false).await;
    three_clicks(&w).await;
    let a = w.convert(sale("order-1", "v-1")).await.unwrap();
    let refund = w
        .convert(
            sale("refund-1", "")
                .kind(pb::ConversionType::Refund)
                .amount(Some("10.00"))
                .original("order-1"),
        )
        .await
        .unwrap();
    let stored = w
        .store
        .read_stream(&format!("conversion-{}", a.conversion_id), 0, 10)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].event_type, "ConversionAttributed");
    let data = std::str::from_utf8(&stored[0].data).unwrap();
    let parsed = pl_commissions::contract::ConversionAttributed::parse(data).unwrap();
    assert_eq!(parsed.conversion_id.to_string(), a.conversion_id);
    assert_eq!(parsed.shares.len(), 3);
    assert_eq!(parsed.gross.unwrap().to_string(), "100.00 USD");
    // Linear thirds tie; the latest touchpoint (Carol's, in the campaign) names the campaign.
    assert_eq!(parsed.campaign_id, Some(CAMPAIGN));
    // Each partner's credit names its own campaign.
    let campaign_of = |p: Uuid| {
        parsed
            .shares
            .iter()
            .find(|s| s.partner_id == p)
            .unwrap()
            .campaign_id
    };
    assert_eq!(campaign_of(CAROL), Some(CAMPAIGN));
    assert_eq!(campaign_of(ALICE), None);
    assert_eq!(parsed.model, "linear");
    // Compliance's fraud rules read each credited click's salted IP hash (never the address).
    let published: serde_json::Value = serde_json::from_str(data).unwrap();
    let credited = published["touchpoints"].as_array().unwrap();
    assert_eq!(credited.len(), 3);
    for t in credited {
        let ip_hash = t["ip_hash"].as_str().unwrap();
        assert_eq!(ip_hash.len(), 64, "hex SHA-256: {ip_hash}");
        assert!(!data.contains("203.0.113.7"));
    }

    let stored = w
        .store
        .read_stream(&format!("conversion-{}", refund.conversion_id), 0, 10)
        .await
        .unwrap();
    assert_eq!(stored[0].event_type, "ConversionRefunded");
    let r = pl_commissions::contract::Reversal::parse(
        "ConversionRefunded",
        std::str::from_utf8(&stored[0].data).unwrap(),
    )
    .unwrap();
    assert_eq!(r.conversion_id.to_string(), a.conversion_id);
    assert_eq!(r.amount.to_string(), "10.00 USD");
}

// ----- read side -------------------------------------------------------------------------------

#[tokio::test]
async fn the_performance_view_counts_clicks_conversions_and_exact_revenue_per_partner_and_campaign()
{
    let w = world().await;
    w.model(pb::AttributionModel::Linear, 30, false).await;
    w.click_at("v-1", ALICE, at() - Duration::days(1)).await;
    w.click_at("v-1", CAROL, at() - Duration::hours(1)).await;
    w.click_at("v-2", ALICE, at() - Duration::hours(1)).await;
    w.convert(sale("order-1", "v-1")).await.unwrap(); // 50.00 each
    let mut second = sale("order-2", "v-2");
    second.customer = "cust-2";
    second.amount = Some("33.33");
    w.convert(second).await.unwrap();
    w.convert(
        sale("refund-1", "")
            .kind(pb::ConversionType::Refund)
            .amount(Some("10.00"))
            .original("order-1"),
    )
    .await
    .unwrap();
    let report = w
        .api
        .get_performance(Request::new(pb::GetPerformanceRequest {
            program_id: PROGRAM.to_string(),
            from: Some(ts(at() - Duration::days(7))),
            to: Some(ts(at() + Duration::days(1))),
            partner_id: String::new(),
            campaign_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let row = |p: Uuid| {
        let rows: Vec<_> = report
            .rows
            .iter()
            .filter(|r| r.partner_id == p.to_string())
            .collect();
        assert_eq!(rows.len(), 1, "one row per partner and campaign: {rows:?}");
        rows[0].clone()
    };
    let alice = row(ALICE);
    assert_eq!(alice.clicks, 2);
    // Alice came through no campaign: her half of order-1 is hers, not Carol's campaign's.
    assert_eq!(alice.campaign_id, "");
    // 50.00 + 33.33 - 5.00, exactly.
    assert_eq!(alice.revenue[0].amount, "78.33");
    let carol = row(CAROL);
    assert_eq!(carol.campaign_id, CAMPAIGN.to_string());
    assert_eq!(carol.clicks, 1);
    // 50.00 - 5.00.
    assert_eq!(carol.revenue[0].amount, "45.00");
}

#[tokio::test]
async fn a_partners_attributed_conversions_are_listed_in_pages() {
    let w = world().await;
    for (i, ext) in ["o-1", "o-2", "o-3"].into_iter().enumerate() {
        let visitor: &'static str = ["v-1", "v-2", "v-3"][i];
        let customer: &'static str = ["c-1", "c-2", "c-3"][i];
        w.click_at(visitor, BOB, at() - Duration::hours(1)).await;
        let mut s = sale(ext, visitor);
        s.customer = customer;
        w.convert(s).await.unwrap();
    }
    let page = |token: &str| pb::ListPartnerConversionsRequest {
        partner_id: BOB.to_string(),
        page: Some(PageRequest {
            page_size: 2,
            page_token: token.into(),
        }),
    };
    let first = w
        .api
        .list_partner_conversions(Request::new(page("")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.conversions.len(), 2);
    assert_eq!(first.conversions[0].external_id, "o-1");
    let second = w
        .api
        .list_partner_conversions(Request::new(page(&first.next_page_token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.conversions.len(), 1);
    assert_eq!(second.conversions[0].weight, "1");
    assert!(second.next_page_token.is_empty());
    let too_big = w
        .api
        .list_partner_conversions(Request::new(pb::ListPartnerConversionsRequest {
            partner_id: BOB.to_string(),
            page: Some(PageRequest {
                page_size: 5000,
                page_token: String::new(),
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn get_attribution_explains_the_decision() {
    let w = world().await;
    three_clicks(&w).await;
    let a = w.convert(sale("order-1", "v-1")).await.unwrap();
    let got = w
        .api
        .get_attribution(Request::new(pb::GetAttributionRequest {
            conversion_id: a.conversion_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, a);
    assert!(
        got.explanation
            .contains("last_click over 3 touchpoint(s) within the 30-day window"),
        "{}",
        got.explanation
    );
    assert!(
        got.explanation.contains(&format!("partner {CAROL} 1")),
        "{}",
        got.explanation
    );
    let missing = w
        .api
        .get_attribution(Request::new(pb::GetAttributionRequest {
            conversion_id: Uuid::from_u128(77).to_string(),
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn a_customer_email_is_published_only_as_the_hash_of_its_canonical_form() {
    use sha2::Digest;
    let w = world().await;
    w.click_at("v-1", ALICE, at() - Duration::hours(1)).await;
    let mut s = sale("order-1", "v-1");
    s.email = "  Jane.Doe+promo@Example.COM ";
    let a = w.convert(s).await.unwrap();
    let stored = w
        .store
        .read_stream(&format!("conversion-{}", a.conversion_id), 0, 10)
        .await
        .unwrap();
    let data = std::str::from_utf8(&stored[0].data).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(data).unwrap();
    let expected = hex::encode(sha2::Sha256::digest(b"jane.doe@example.com"));
    assert_eq!(parsed["customer_email_hash"], expected.as_str());
    assert!(
        !data.to_lowercase().contains("jane"),
        "the address is never stored"
    );
    let mut bad = sale("order-2", "v-1");
    bad.email = "not-an-address";
    let err = w.convert(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("customer_email"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn lots_net_revenue_and_reseller_pricing_pass_through_to_what_commissions_parses() {
    let w = world().await;
    w.click_at("v-1", ALICE, at() - Duration::hours(1)).await;
    let mut req = sale("trade-1", "v-1").request(w.key());
    req.lots = "2.5".into();
    req.net = Some(Money {
        amount: "80.00".into(),
        currency: "USD".into(),
    });
    req.list_price = Some(Money {
        amount: "1200.00".into(),
        currency: "USD".into(),
    });
    req.partner_price = Some(Money {
        amount: "1000.00".into(),
        currency: "USD".into(),
    });
    req.quantity = 2;
    let a = w
        .api
        .record_conversion(Request::new(req))
        .await
        .unwrap()
        .into_inner();
    let stored = w
        .store
        .read_stream(&format!("conversion-{}", a.conversion_id), 0, 10)
        .await
        .unwrap();
    let parsed = pl_commissions::contract::ConversionAttributed::parse(
        std::str::from_utf8(&stored[0].data).unwrap(),
    )
    .unwrap();
    assert_eq!(parsed.lots.unwrap().to_string(), "2.5");
    assert_eq!(parsed.net.unwrap().to_string(), "80.00 USD");
    assert_eq!(parsed.list_price.unwrap().to_string(), "1200.00 USD");
    assert_eq!(parsed.partner_price.unwrap().to_string(), "1000.00 USD");
    assert_eq!(parsed.quantity, 2);

    let mut bad = sale("trade-2", "v-1").request(w.key());
    bad.lots = "-1".into();
    bad.list_price = Some(Money {
        amount: "1.00".into(),
        currency: "USD".into(),
    });
    let err = w
        .api
        .record_conversion(Request::new(bad))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("lots") && err.message().contains("partner_price"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_partners_approval_the_consumer_refused_is_retried_after_the_fix_and_its_clicks_then_count(
) {
    const DAVE: Uuid = Uuid::from_u128(0xa4);
    let log = Arc::new(pl_eventlog::Hooked {
        inner: MemoryLog::default(),
        hooks: pl_eventlog::RefuseAppends::new(pl_attribution::streams::crm_partner(DAVE), true),
    });
    let store: SharedStore = log.clone();
    let clock = Arc::new(FixedClock::at(at()));
    let w = World {
        store: store.clone(),
        api: AttributionService::new(store, clock.clone(), "test-salt"),
        next: AtomicU64::new(1),
    };
    let since = at() - Duration::days(1);
    w.crm(
        "TrackingLinkIssued",
        serde_json::json!({ "tracking_link_id": link_of(DAVE), "partner_id": DAVE,
                            "program_id": PROGRAM, "occurred_at": since }),
    )
    .await;
    // When CRM's approval of Dave arrives while his stream refuses writes.
    let id = Uuid::from_u128(0xe0ff);
    let envelope = serde_json::json!({
        "id": id, "type": "PartnerStatusChanged", "schema_version": 1,
        "stream": "partner-x", "version": 0, "position": 0,
        "occurred_at": since, "recorded_at": since, "correlation_id": null, "causation_id": null,
        "data": { "partner_id": DAVE, "status": "PARTNER_STATUS_APPROVED", "occurred_at": since },
    });
    let approved = Message {
        id,
        subject: "pl.crm.PartnerStatusChanged".into(),
        payload: serde_json::to_vec(&envelope).unwrap().into(),
        headers: BTreeMap::new(),
    };
    let recorder =
        pl_runtime::dead_letters::Recorder::new(pl_attribution::SERVICE, "attribution-crm", clock);
    let outcome = pl_attribution::consumer::handle(w.store.as_ref(), approved.clone()).await;
    let settled = recorder.settle(w.store.as_ref(), &approved, outcome).await;
    assert!(
        matches!(&settled, Err(pl_bus::HandleError::Permanent(r)) if r.contains("limit exceeded")),
        "{settled:?}"
    );
    // Then it is listed, and Dave's clicks are refused as from an unknown partner.
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
        (letter.event_type.as_str(), letter.status.as_str()),
        ("PartnerStatusChanged", "waiting")
    );
    let refused = w.try_click("v-1", link_of(DAVE), at()).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("is unknown"), "{refused:?}");
    let retry = || {
        w.api
            .retry_dead_letter(Request::new(pl_proto::common::v1::RetryDeadLetterRequest {
                context: w.key(),
                letter_id: letter.letter_id.clone(),
            }))
    };
    // The cause removed, the retry applies, and a click now counts for Dave.
    log.hooks.set(false);
    let applied = retry().await.unwrap().into_inner();
    assert!(applied.ran);
    assert_eq!(applied.letter.unwrap().status, "applied");
    assert_eq!(
        w.click_at("v-2", DAVE, at()).await.partner_id,
        DAVE.to_string()
    );
    // A second retry runs nothing; Dave's stream keeps its one approval.
    let again = retry().await.unwrap().into_inner();
    assert!(!again.ran);
    let facts = w
        .store
        .read_stream(&pl_attribution::streams::crm_partner(DAVE), 0, 10)
        .await
        .unwrap();
    assert_eq!(facts.len(), 1);
}

// ----- net revenue reports ------------------------------------------------------------------

fn usd_money(amount: &str) -> Option<Money> {
    Some(Money {
        amount: amount.into(),
        currency: "USD".into(),
    })
}

fn ngr_report(external_id: &'static str, net: &str) -> pb::RecordConversionRequest {
    pb::RecordConversionRequest {
        program_id: PROGRAM.to_string(),
        r#type: pb::ConversionType::NetRevenueReport as i32,
        external_id: external_id.into(),
        customer_id: "player-1".into(),
        visitor_id: "v-1".into(),
        net_revenue_report: Some(pb::NetRevenueReport {
            period: "2026-02".into(),
            net: usd_money(net),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An invoice with a negative net was accepted and attributed, then refused inside commissions
/// ("net must not be negative") and never accrued, with nothing telling the caller. The engine's
/// own check of the amounts now runs at the API.
#[tokio::test]
async fn an_invoice_with_a_negative_net_is_refused_at_the_api_with_the_field_and_appends_nothing() {
    let w = world().await;
    w.click_at("v-1", ALICE, at() - Duration::days(1)).await;
    let head = w.head().await;
    let mut req = sale("inv-1", "v-1")
        .kind(pb::ConversionType::SubscriptionInvoicePaid)
        .request(w.key());
    req.net = usd_money("-5.00");
    let err = w
        .api
        .record_conversion(Request::new(req))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("net: must not be negative"),
        "{}",
        err.message()
    );
    let mut mixed = sale("inv-2", "v-1").request(w.key());
    mixed.net = Some(Money {
        amount: "5.00".into(),
        currency: "EUR".into(),
    });
    let err = w
        .api
        .record_conversion(Request::new(mixed))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("mix USD and EUR"),
        "{}",
        err.message()
    );
    // A sale of the largest decimal made the performance report panic ("Addition overflowed")
    // on every call; amounts beyond the documented maximum are refused where they are sent.
    let huge = sale("order-huge", "v-1")
        .amount(Some("79228162514264337593543950335"))
        .request(w.key());
    let err = w
        .api
        .record_conversion(Request::new(huge))
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("amount: at most 1000000000000 in magnitude"),
        "{}",
        err.message()
    );
    assert_eq!(w.head().await, head);
}

#[tokio::test]
async fn a_net_revenue_report_is_attributed_locks_the_player_and_the_next_follows_the_lock() {
    let w = world().await;
    w.click_at("v-1", ALICE, at() - Duration::days(20)).await;
    let mut first = ngr_report("ngr-2026-02", "-400.00");
    first.context = w.key();
    let a = w
        .api
        .record_conversion(Request::new(first))
        .await
        .unwrap()
        .into_inner();
    assert!(a.attributed, "{}", a.explanation);
    let c = a.conversion.clone().unwrap();
    assert_eq!(c.kind, pb::ConversionKind::NetRevenueReport as i32);
    assert_eq!(c.net.unwrap().amount, "-400.00");
    assert_eq!(c.period, "2026-02");
    assert_eq!(c.gross, None);
    // Without occurred_at, the report is dated at its month's last second.
    assert_eq!(c.occurred_at.unwrap().seconds, 1_772_323_199);
    assert_eq!(shares(&a), one(ALICE));

    // The next month's report, without touchpoints of its own, follows the player's lock.
    let mut second = ngr_report("ngr-2026-03", "300.00");
    second.context = w.key();
    second.visitor_id = String::new();
    let report = second.net_revenue_report.as_mut().unwrap();
    report.period = "2026-03".into();
    report.gross_gaming_revenue = usd_money("450.00");
    report.bonuses = usd_money("100.00");
    report.fees = usd_money("50.00");
    report.brand = "casino".into();
    let b = w
        .api
        .record_conversion(Request::new(second))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shares(&b), one(ALICE));
    let c = b.conversion.unwrap();
    assert_eq!(c.locked_by_conversion_id, a.conversion_id);
    assert_eq!(c.brand, "casino");
    assert_eq!(c.gross_gaming_revenue.unwrap().amount, "450.00");
}

#[tokio::test]
async fn a_bad_net_revenue_report_names_every_field_and_appends_nothing() {
    let w = world().await;
    let head = w.head().await;
    let refused = |req: pb::RecordConversionRequest| async {
        w.api
            .record_conversion(Request::new(req))
            .await
            .unwrap_err()
    };
    let mut missing = ngr_report("r-1", "1.00");
    missing.context = w.key();
    missing.net_revenue_report = None;
    let err = refused(missing).await;
    assert!(
        err.message().contains("net_revenue_report: required"),
        "{}",
        err.message()
    );

    let mut bad = ngr_report("r-2", "1.00");
    bad.context = w.key();
    bad.amount = usd_money("1.00");
    let report = bad.net_revenue_report.as_mut().unwrap();
    report.period = "2026-13".into();
    report.fees = usd_money("-1.00");
    let err = refused(bad).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    for field in ["amount: a net revenue report", "net_revenue_report.period"] {
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }

    let mut inconsistent = ngr_report("r-3", "300.00");
    inconsistent.context = w.key();
    let report = inconsistent.net_revenue_report.as_mut().unwrap();
    report.gross_gaming_revenue = usd_money("450.00");
    report.bonuses = usd_money("100.00");
    report.fees = usd_money("60.00");
    let err = refused(inconsistent).await;
    assert!(
        err.message().contains(
            "net_revenue_report.net: must equal gross_gaming_revenue − bonuses − fees (290.00 USD)"
        ),
        "{}",
        err.message()
    );

    let mut outside = ngr_report("r-4", "1.00");
    outside.context = w.key();
    outside.occurred_at = Some(ts(at()));
    let err = refused(outside).await;
    assert!(
        err.message()
            .contains("occurred_at: must fall in net_revenue_report.period"),
        "{}",
        err.message()
    );

    let mut on_a_sale = sale("r-5", "v-1").request(w.key());
    on_a_sale.net_revenue_report = ngr_report("x", "1.00").net_revenue_report;
    let err = refused(on_a_sale).await;
    assert!(
        err.message()
            .contains("only a CONVERSION_TYPE_NET_REVENUE_REPORT"),
        "{}",
        err.message()
    );
    assert_eq!(w.head().await, head);
}
