//! Payouts as their callers meet them: compliance's events consumed into the eligibility
//! projection, payout runs created, settled and failed over the gRPC API, clawbacks after a
//! payout, and churn ending lifetime shares — on the in-memory event log, calling the service
//! implementation and `consumer::handle` directly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use pl_bus::{HandleError, Message};
use pl_commission_engine::{
    Base, Conditions, NetRevenuePolicy, Percent, PlanVersion, RecurringDuration, Reward, Rule,
    ScheduleStep, VersionPolicy,
};
use pl_commissions::CommissionsService;
use pl_eventlog::{MemoryLog, SharedStore};
use pl_money::{Currency, Money};
use pl_proto::commissions::v1 as pb;
use pl_proto::commissions::v1::commissions_service_server::CommissionsService as Api;
use pl_proto::common::v1::RequestContext;
use pl_runtime::FixedClock;
use tonic::Request;
use uuid::Uuid;

const PLAN: Uuid = Uuid::from_u128(0xb1);
const LIFETIME_PLAN: Uuid = Uuid::from_u128(0xb2);
const PROGRAM: Uuid = Uuid::from_u128(0xc1);

fn partner(n: u128) -> Uuid {
    Uuid::from_u128(0xa00 + n)
}

fn at(month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, month, day, 12, 0, 0).unwrap()
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn ctx_at(key: &str, when: DateTime<Utc>) -> Option<RequestContext> {
    Some(RequestContext {
        idempotency_key: key.into(),
        occurred_at: Some(ts(when)),
        correlation_id: String::new(),
    })
}

fn ctx(key: &str) -> Option<RequestContext> {
    ctx_at(key, at(1, 1))
}

fn rule(reward: Reward) -> Rule {
    Rule {
        id: "r".into(),
        conditions: Conditions::default(),
        reward,
        cap_per_conversion: None,
        cap_per_period: None,
    }
}

/// 10% of gross, 30 days' hold, $50.00 minimum payout.
fn plan() -> PlanVersion {
    PlanVersion {
        plan_id: PLAN,
        version: 1,
        effective_from: at(1, 1),
        payout_currency: Currency::USD,
        hold_days: 30,
        minimum_payout: Money::from_minor_units(5000, Currency::USD),
        version_policy: VersionPolicy::Grandfathered,
        net_revenue_policy: NetRevenuePolicy::CarryForwardNegative,
        cpa_recovery: false,
        overrides: vec![],
        rules: vec![rule(Reward::PercentOfGross(Percent::new(10).unwrap()))],
    }
}

/// A white-label share: 20% of every invoice for as long as the customer stays.
fn lifetime_plan() -> PlanVersion {
    PlanVersion {
        plan_id: LIFETIME_PLAN,
        rules: vec![rule(Reward::Recurring {
            schedule: vec![ScheduleStep {
                from_month: 1,
                to_month: None,
                percent: Percent::new(20).unwrap(),
            }],
            duration: RecurringDuration::Lifetime,
            of: Base::Gross,
        })],
        ..plan()
    }
}

fn message(
    id: u128,
    event_type: &str,
    data: serde_json::Value,
    occurred_at: DateTime<Utc>,
) -> Message {
    let context = if event_type.starts_with("Payout") || event_type == "VerificationRecorded" {
        "compliance"
    } else {
        "attribution"
    };
    let envelope = serde_json::json!({
        "id": Uuid::from_u128(id), "type": event_type, "schema_version": 1,
        "stream": "x", "version": 0, "position": id,
        "occurred_at": occurred_at, "recorded_at": occurred_at,
        "correlation_id": null, "causation_id": null, "data": data,
    });
    Message {
        id: Uuid::from_u128(id),
        subject: format!("pl.{context}.{event_type}"),
        payload: bytes::Bytes::from(serde_json::to_vec(&envelope).unwrap()),
        headers: BTreeMap::new(),
    }
}

struct World {
    store: SharedStore,
    api: CommissionsService,
    next_id: std::sync::atomic::AtomicU64,
}

async fn world() -> World {
    let store: SharedStore = Arc::new(MemoryLog::default());
    let api = CommissionsService::new(store.clone(), Arc::new(FixedClock::at(at(1, 1))));
    for (key, p) in [("plan", plan()), ("lifetime-plan", lifetime_plan())] {
        api.publish_plan_version(Request::new(pb::PublishPlanVersionRequest {
            context: ctx(key),
            plan_id: p.plan_id.to_string(),
            plan_json: serde_json::to_string(&p).unwrap(),
        }))
        .await
        .unwrap();
    }
    World {
        store,
        api,
        next_id: 1_000.into(),
    }
}

struct Balance {
    pending: String,
    payable: String,
    paid: String,
}

impl World {
    fn id(&self) -> u128 {
        u128::from(
            self.next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        )
    }

    async fn consume(&self, m: Message) -> Result<(), HandleError> {
        pl_commissions::consumer::handle(self.store.as_ref(), &self.api.caches(), m).await
    }

    async fn assign(&self, p: Uuid, plan_id: Uuid) {
        self.api
            .assign_plan(Request::new(pb::AssignPlanRequest {
                context: ctx(&format!("assign-{p}")),
                partner_id: p.to_string(),
                plan_id: plan_id.to_string(),
                effective_from: Some(ts(at(1, 1))),
                ..Default::default()
            }))
            .await
            .unwrap();
    }

    /// Publishes a plan version (idempotency key `key`).
    async fn publish(&self, key: &str, version: &PlanVersion) {
        self.api
            .publish_plan_version(Request::new(pb::PublishPlanVersionRequest {
                context: ctx(key),
                plan_id: version.plan_id.to_string(),
                plan_json: serde_json::to_string(version).unwrap(),
            }))
            .await
            .unwrap();
    }

    /// Moves the partner to another plan from `from` on.
    async fn reassign(&self, p: Uuid, plan_id: Uuid, from: DateTime<Utc>) {
        self.api
            .assign_plan(Request::new(pb::AssignPlanRequest {
                context: ctx(&format!("reassign-{p}-{plan_id}")),
                partner_id: p.to_string(),
                plan_id: plan_id.to_string(),
                effective_from: Some(ts(from)),
                ..Default::default()
            }))
            .await
            .unwrap();
    }

    /// Attribution's `ConversionAttributed` for customer "acme"'s $100.00 subscription invoice
    /// (conversion `conversion`), all credited to `p`, on the 10th of `month`.
    async fn invoice(&self, p: Uuid, conversion: u128, month: u32) {
        self.invoice_at(p, conversion, at(month, 10)).await;
    }

    /// [`World::invoice`] at `when`.
    async fn invoice_at(&self, p: Uuid, conversion: u128, when: DateTime<Utc>) {
        let data = serde_json::json!({
            "conversion_id": Uuid::from_u128(conversion), "program_id": PROGRAM,
            "kind": "CONVERSION_KIND_SUBSCRIPTION_INVOICE", "customer_id": "acme",
            "gross": { "amount": "100.00", "currency": "USD" }, "occurred_at": when,
            "shares": [{ "partner_id": p, "weight": "1" }],
        });
        self.consume(message(self.id(), "ConversionAttributed", data, when))
            .await
            .unwrap();
    }

    /// Attribution's `SubscriptionCancelled` of `customer` at `when`, naming the conversion
    /// that locked it when given.
    fn churn(&self, customer: &str, when: DateTime<Utc>, locked_by: Option<u128>) -> Message {
        let mut data = serde_json::json!({
            "customer_id": customer, "program_id": PROGRAM, "occurred_at": when,
        });
        if let Some(lock) = locked_by {
            data["locked_by_conversion_id"] = serde_json::json!(Uuid::from_u128(lock));
        }
        message(self.id(), "SubscriptionCancelled", data, when)
    }

    async fn verify(&self, p: Uuid, kind: &str, status: &str, valid_until: Option<DateTime<Utc>>) {
        let data = serde_json::json!({
            "partner_id": p, "kind": kind, "status": status, "reference": "ref",
            "recorded_by": "officer", "occurred_at": at(1, 2), "valid_until": valid_until,
        });
        self.consume(message(self.id(), "VerificationRecorded", data, at(1, 2)))
            .await
            .unwrap();
    }

    /// KYC and a W-9 on file: eligible unless held.
    async fn eligible(&self, p: Uuid) {
        self.verify(p, "kyc", "verified", None).await;
        self.verify(p, "tax_form_w9", "verified", None).await;
    }

    async fn hold(&self, p: Uuid, event_type: &str, when: DateTime<Utc>) {
        let data = serde_json::json!({
            "partner_id": p, "hold_id": "hold-1", "reason": "fraud review", "occurred_at": when,
        });
        self.consume(message(self.id(), event_type, data, when))
            .await
            .unwrap();
    }

    /// A sale credited to `p` on `when`, matured 35 days later: 10% becomes payable.
    async fn earn(&self, p: Uuid, conversion: u128, gross: &str, when: DateTime<Utc>) {
        let data = serde_json::json!({
            "conversion_id": Uuid::from_u128(conversion), "program_id": PROGRAM,
            "kind": "CONVERSION_KIND_SALE", "customer_id": format!("cust-{conversion}"),
            "gross": { "amount": gross, "currency": "USD" }, "occurred_at": when,
            "shares": [{ "partner_id": p, "weight": "1" }],
        });
        self.consume(message(self.id(), "ConversionAttributed", data, when))
            .await
            .unwrap();
        self.api
            .mature_commissions(Request::new(pb::MatureCommissionsRequest {
                context: ctx(&format!("mature-{conversion}")),
                partner_id: p.to_string(),
                as_of: Some(ts(when + chrono::Duration::days(35))),
            }))
            .await
            .unwrap();
    }

    async fn balance(&self, p: Uuid) -> Balance {
        let b = self
            .api
            .get_balances(Request::new(pb::GetBalancesRequest {
                partner_id: p.to_string(),
                as_of: None,
            }))
            .await
            .unwrap()
            .into_inner();
        let c = b.currencies.first().cloned().unwrap_or_default();
        Balance {
            pending: c.pending,
            payable: c.payable,
            paid: c.paid,
        }
    }

    async fn run(
        &self,
        key: &str,
        as_of: DateTime<Utc>,
        partners: &[Uuid],
    ) -> Result<pb::PayoutRun, tonic::Status> {
        self.api
            .create_payout_run(Request::new(pb::CreatePayoutRunRequest {
                context: ctx_at(key, as_of),
                program_id: PROGRAM.to_string(),
                as_of: Some(ts(as_of)),
                partner_ids: partners.iter().map(Uuid::to_string).collect(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn settle(
        &self,
        key: &str,
        run: &pb::PayoutRun,
        p: Uuid,
    ) -> Result<pb::PayoutItem, tonic::Status> {
        self.api
            .settle_payout_item(Request::new(pb::SettlePayoutItemRequest {
                context: ctx_at(key, at(4, 20)),
                run_id: run.run_id.clone(),
                partner_id: p.to_string(),
                currency: "USD".into(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn fail(
        &self,
        key: &str,
        run: &pb::PayoutRun,
        p: Uuid,
    ) -> Result<pb::PayoutItem, tonic::Status> {
        self.api
            .fail_payout_item(Request::new(pb::FailPayoutItemRequest {
                context: ctx_at(key, at(4, 20)),
                run_id: run.run_id.clone(),
                partner_id: p.to_string(),
                currency: "USD".into(),
                reason: "bank account closed".into(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }
}

fn item(run: &pb::PayoutRun, p: Uuid) -> &pb::PayoutItem {
    run.items
        .iter()
        .find(|i| i.partner_id == p.to_string())
        .unwrap_or_else(|| panic!("no item for {p}"))
}

fn codes(i: &pb::PayoutItem) -> Vec<&str> {
    i.skip_reasons.iter().map(|r| r.code.as_str()).collect()
}

fn status(i: &pb::PayoutItem) -> pb::PayoutItemStatus {
    pb::PayoutItemStatus::try_from(i.status).unwrap()
}

/// One eligible partner with $60.00 payable, ready for a run on 15 April.
async fn paid_world() -> (World, Uuid, pb::PayoutRun) {
    let w = world().await;
    let p = partner(1);
    w.assign(p, PLAN).await;
    w.eligible(p).await;
    w.earn(p, 1, "600.00", at(1, 10)).await;
    let run = w.run("run-1", at(4, 15), &[p]).await.unwrap();
    (w, p, run)
}

#[tokio::test]
async fn a_payout_run_pays_eligible_partners_at_or_over_the_minimum_and_skips_others_with_every_reason(
) {
    let w = world().await;
    let ps: Vec<Uuid> = (1..=8).map(partner).collect();
    for p in &ps {
        w.assign(*p, PLAN).await;
    }
    // 1: eligible, $60.00 payable. 2: eligible, $50.00 exactly. 3: eligible, $30.00 (under).
    for p in &ps[..3] {
        w.eligible(*p).await;
    }
    w.earn(ps[0], 1, "600.00", at(1, 10)).await;
    w.earn(ps[1], 2, "500.00", at(1, 10)).await;
    w.earn(ps[2], 3, "300.00", at(1, 10)).await;
    // 4: on hold. 5: no tax form. 6: W-8BEN that expired before the run's date. 7: KYC pending.
    w.eligible(ps[3]).await;
    w.hold(ps[3], "PayoutHoldPlaced", at(4, 1)).await;
    w.verify(ps[4], "kyc", "verified", None).await;
    w.verify(ps[5], "kyc", "verified", None).await;
    w.verify(ps[5], "tax_form_w8ben", "verified", Some(at(4, 1)))
        .await;
    w.verify(ps[6], "tax_form_w9", "verified", None).await;
    w.verify(ps[6], "kyc", "pending", None).await;
    for (i, p) in ps[3..7].iter().enumerate() {
        w.earn(*p, 10 + i as u128, "600.00", at(1, 10)).await;
    }
    // 8: on hold, no tax form, no KYC and under the minimum: every reason is reported.
    w.hold(ps[7], "PayoutHoldPlaced", at(2, 1)).await;
    w.earn(ps[7], 20, "100.00", at(1, 10)).await;

    let run = w.run("run-1", at(4, 15), &ps).await.unwrap();

    assert!(run.complete);
    assert_eq!(item(&run, ps[0]).amount, "60.00");
    assert_eq!(status(item(&run, ps[0])), pb::PayoutItemStatus::Sent);
    assert_eq!(item(&run, ps[1]).amount, "50.00", "the minimum itself pays");
    assert_eq!(codes(item(&run, ps[2])), ["under_minimum"]);
    assert_eq!(codes(item(&run, ps[3])), ["payout_hold"]);
    assert_eq!(codes(item(&run, ps[4])), ["no_valid_tax_form"]);
    assert_eq!(codes(item(&run, ps[5])), ["tax_form_expired"]);
    assert_eq!(codes(item(&run, ps[6])), ["identity_not_verified"]);
    assert_eq!(
        codes(item(&run, ps[7])),
        [
            "payout_hold",
            "no_valid_tax_form",
            "identity_not_verified",
            "under_minimum"
        ]
    );
    assert_eq!(status(item(&run, ps[2])), pb::PayoutItemStatus::Skipped);
    assert_eq!(run.totals[0].amount, "110.00");

    // Paid: payable → clearing. Skipped: untouched.
    let b = w.balance(ps[0]).await;
    assert_eq!((b.payable.as_str(), b.paid.as_str()), ("0.00", "0.00"));
    assert_eq!(w.balance(ps[3]).await.payable, "60.00");

    // The same W-8BEN was valid for a run dated before its expiry.
    let earlier = w.run("run-0", at(3, 20), &[ps[5]]).await.unwrap();
    assert_eq!(item(&earlier, ps[5]).amount, "60.00");

    // Released: the held partner is paid by the next run; GetPayoutRun shows the first run.
    w.hold(ps[3], "PayoutHoldReleased", at(4, 16)).await;
    let next = w.run("run-2", at(4, 17), &[ps[3]]).await.unwrap();
    assert_eq!(item(&next, ps[3]).amount, "60.00");
    let got = w
        .api
        .get_payout_run(Request::new(pb::GetPayoutRunRequest {
            run_id: run.run_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, run);
}

#[tokio::test]
async fn settling_moves_the_payout_from_clearing_to_paid_and_an_item_settles_or_fails_once() {
    let (w, p, run) = paid_world().await;
    let settled = w.settle("settle-1", &run, p).await.unwrap();
    assert_eq!(status(&settled), pb::PayoutItemStatus::Settled);
    assert_eq!(settled.amount, "60.00");
    let b = w.balance(p).await;
    assert_eq!(
        (b.pending.as_str(), b.payable.as_str(), b.paid.as_str()),
        ("0.00", "0.00", "60.00")
    );
    // The same request again answers the same; another request to end it is refused.
    assert_eq!(w.settle("settle-1", &run, p).await.unwrap(), settled);
    let err = w.fail("fail-1", &run, p).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let err = w.settle("settle-2", &run, p).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(w.balance(p).await.paid, "60.00");
    // A partner the run did not pay has nothing to settle.
    let err = w.settle("settle-3", &run, partner(9)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_failed_payout_returns_the_amount_to_payable_and_the_next_run_pays_it_again() {
    let (w, p, run) = paid_world().await;
    let failed = w.fail("fail-1", &run, p).await.unwrap();
    assert_eq!(status(&failed), pb::PayoutItemStatus::Failed);
    assert_eq!(failed.failure_reason, "bank account closed");
    let b = w.balance(p).await;
    assert_eq!((b.payable.as_str(), b.paid.as_str()), ("60.00", "0.00"));
    let err = w.settle("settle-1", &run, p).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    let again = w.run("run-2", at(4, 25), &[p]).await.unwrap();
    assert_eq!(item(&again, p).amount, "60.00");
    assert_eq!(w.balance(p).await.payable, "0.00");
}

/// $100.00 earned on a $1,000.00 sale, paid out by run-1 and settled, then the sale charged
/// back: the partner, and the first run.
async fn charged_back_after_payout() -> (World, Uuid, pb::PayoutRun) {
    let w = world().await;
    let p = partner(1);
    w.assign(p, PLAN).await;
    w.eligible(p).await;
    w.earn(p, 1, "1000.00", at(1, 10)).await;
    let first = w.run("run-1", at(3, 1), &[p]).await.unwrap();
    w.settle("settle-1", &first, p).await.unwrap();
    let chargeback = serde_json::json!({
        "chargeback_id": Uuid::from_u128(901), "conversion_id": Uuid::from_u128(1),
        "amount": { "amount": "1000.00", "currency": "USD" }, "occurred_at": at(3, 5),
    });
    w.consume(message(w.id(), "ChargebackReceived", chargeback, at(3, 5)))
        .await
        .unwrap();
    (w, p, first)
}

#[tokio::test]
async fn a_clawback_after_payout_drives_payable_negative_and_no_run_pays_until_it_is_positive_again(
) {
    let (w, p, first) = charged_back_after_payout().await;
    assert_eq!(item(&first, p).amount, "100.00");
    // Then $20.00 earned: $20 − $100 = −$80 (PartnerStack's example).
    w.earn(p, 2, "200.00", at(3, 10)).await;
    let b = w.balance(p).await;
    assert_eq!((b.payable.as_str(), b.paid.as_str()), ("-80.00", "100.00"));

    let second = w.run("run-2", at(4, 20), &[p]).await.unwrap();
    assert_eq!(codes(item(&second, p)), ["nothing_payable"]);
    assert!(second.totals.is_empty());
    assert_eq!(w.balance(p).await.payable, "-80.00");

    // $140.00 more: payable $60.00, over the minimum, paid.
    w.earn(p, 3, "1400.00", at(4, 1)).await;
    let third = w.run("run-3", at(5, 10), &[p]).await.unwrap();
    assert_eq!(item(&third, p).amount, "60.00");
    assert_eq!(w.balance(p).await.payable, "0.00");
}

#[tokio::test]
async fn balances_answer_as_the_explained_ledger_does_at_every_business_date_and_recording_point() {
    // Accrued, matured, paid out, clawed back, then earned again: every account moved.
    let (w, p, _) = charged_back_after_payout().await;
    w.earn(p, 2, "200.00", at(3, 10)).await;
    let book: Vec<_> = w
        .store
        .read_stream(&format!("ledger-{p}"), 0, 1000)
        .await
        .unwrap();
    assert!(book.len() >= 6, "{} book events", book.len());
    let dates = [at(1, 1), at(1, 10), at(2, 20), at(3, 1), at(3, 5), at(4, 1)];
    let mut points: Vec<Option<pb::AsOf>> = vec![None];
    for d in dates {
        points.push(Some(pb::AsOf {
            business_date: Some(ts(d)),
            ..Default::default()
        }));
    }
    for r in &book {
        for business_date in [None, Some(ts(at(3, 1)))] {
            points.push(Some(pb::AsOf {
                business_date,
                recorded_position: r.position,
                ..Default::default()
            }));
            points.push(Some(pb::AsOf {
                business_date,
                // To the nanosecond: the whole history is recorded within a second or so.
                recorded_at: Some(prost_types::Timestamp {
                    seconds: r.recorded_at.timestamp(),
                    nanos: i32::try_from(r.recorded_at.timestamp_subsec_nanos()).unwrap(),
                }),
                ..Default::default()
            }));
        }
    }
    // Points at a recording time whose cut held entries: each event's own time holds it.
    let mut recorded_at_compared = 0;
    for as_of in points {
        let balances = w
            .api
            .get_balances(Request::new(pb::GetBalancesRequest {
                partner_id: p.to_string(),
                as_of,
            }))
            .await
            .unwrap()
            .into_inner();
        let explained = w
            .api
            .explain_balance(Request::new(pb::ExplainBalanceRequest {
                partner_id: p.to_string(),
                currency: "USD".into(),
                as_of,
                page: None,
            }))
            .await
            .unwrap()
            .into_inner();
        if balances.currencies.is_empty() {
            // Nothing in the cut: the explanation, asked for USD, shows zeros and no entry.
            assert!(explained.entries.is_empty(), "as of {as_of:?}");
            let zeros = pb::CurrencyBalances {
                currency: "USD".into(),
                pending: "0.00".into(),
                payable: "0.00".into(),
                paid: "0.00".into(),
            };
            assert_eq!(explained.balances.unwrap().currencies, [zeros]);
        } else {
            assert_eq!(Some(balances), explained.balances, "as of {as_of:?}");
            recorded_at_compared += usize::from(as_of.is_some_and(|a| a.recorded_at.is_some()));
        }
    }
    assert!(
        recorded_at_compared >= book.len(),
        "{recorded_at_compared} recording-time points with entries for {} events",
        book.len()
    );
    // And the figures themselves, latest: $100 paid, clawed back, then $20 earned and matured.
    let b = w.balance(p).await;
    assert_eq!(
        (b.pending.as_str(), b.payable.as_str(), b.paid.as_str()),
        ("0.00", "-80.00", "100.00")
    );
}

#[tokio::test]
async fn repeated_requests_with_the_same_key_change_nothing() {
    let (w, p, run) = paid_world().await;
    let log_end = w.store.read_all(0, 100_000).await.unwrap().len();
    let again = w.run("run-1", at(4, 15), &[p]).await.unwrap();
    assert_eq!(again, run);
    let settled = w.settle("settle-1", &run, p).await.unwrap();
    let log_after_settle = w.store.read_all(0, 100_000).await.unwrap().len();
    assert_eq!(w.settle("settle-1", &run, p).await.unwrap(), settled);
    assert_eq!(
        w.store.read_all(0, 100_000).await.unwrap().len(),
        log_after_settle
    );
    assert!(log_after_settle > log_end);
    // The same key with another body is refused, and writes nothing.
    let err = w.run("run-1", at(4, 16), &[p]).await.unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    assert_eq!(
        w.store.read_all(0, 100_000).await.unwrap().len(),
        log_after_settle
    );
    // A redelivered compliance event records nothing either.
    let data = serde_json::json!({
        "partner_id": p, "hold_id": "h", "reason": "r", "occurred_at": at(4, 1),
    });
    w.consume(message(77, "PayoutHoldPlaced", data.clone(), at(4, 1)))
        .await
        .unwrap();
    let n = w.store.read_all(0, 100_000).await.unwrap().len();
    w.consume(message(77, "PayoutHoldPlaced", data, at(4, 1)))
        .await
        .unwrap();
    assert_eq!(w.store.read_all(0, 100_000).await.unwrap().len(), n);
}

#[tokio::test]
async fn a_bad_payout_run_request_names_every_bad_field_and_writes_nothing() {
    let w = world().await;
    let before = w.store.read_all(0, 100_000).await.unwrap().len();
    let err = w
        .api
        .create_payout_run(Request::new(pb::CreatePayoutRunRequest {
            context: ctx("bad-run"),
            program_id: "nope".into(),
            as_of: None,
            partner_ids: vec![partner(1).to_string(), "x".into(), partner(1).to_string()],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    for field in ["program_id", "as_of", "partner_ids[1]", "partner_ids[2]"] {
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let too_many = vec![partner(1).to_string(); 10_001];
    let err = w
        .api
        .create_payout_run(Request::new(pb::CreatePayoutRunRequest {
            context: ctx("big-run"),
            program_id: PROGRAM.to_string(),
            as_of: Some(ts(at(4, 1))),
            partner_ids: too_many,
        }))
        .await
        .unwrap_err();
    assert!(err.message().contains("at most 10000"), "{}", err.message());
    let err = w
        .api
        .fail_payout_item(Request::new(pb::FailPayoutItemRequest {
            context: ctx("bad-fail"),
            run_id: Uuid::from_u128(5).to_string(),
            partner_id: partner(1).to_string(),
            currency: "usd".into(),
            reason: String::new(),
        }))
        .await
        .unwrap_err();
    assert!(err.message().contains("currency") && err.message().contains("reason"));
    assert_eq!(w.store.read_all(0, 100_000).await.unwrap().len(), before);
}

#[tokio::test]
async fn a_churned_customers_lifetime_recurring_share_stops_at_the_churn() {
    let w = world().await;
    let p = partner(1);
    w.assign(p, LIFETIME_PLAN).await;
    w.invoice(p, 501, 1).await;
    w.invoice(p, 502, 2).await;
    assert_eq!(w.balance(p).await.pending, "40.00");
    let churn = w.churn("acme", at(2, 20), None);
    w.consume(churn.clone()).await.unwrap();
    w.consume(churn).await.unwrap(); // redelivered: nothing new
    w.invoice(p, 503, 3).await;
    assert_eq!(
        w.balance(p).await.pending,
        "40.00",
        "no share after the churn"
    );
    // A churn of a customer no partner earns on is acknowledged and changes nothing.
    w.consume(w.churn("nobody", at(2, 20), None)).await.unwrap();
}

/// The event types of a partner's book, in order.
async fn book_event_types(w: &World, p: Uuid) -> Vec<String> {
    w.store
        .read_stream(&pl_commissions::book::stream(p), 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

#[tokio::test]
async fn a_sale_under_a_plan_without_recurring_shares_credits_no_customer_yet_its_churn_reaches_the_partner(
) {
    let w = world().await;
    let p = partner(1);
    w.assign(p, PLAN).await;
    w.invoice(p, 601, 1).await;
    assert_eq!(w.balance(p).await.pending, "10.00");
    // A churn changes nothing a 10% plan pays: the customer's stream is not written.
    let log = w.store.read_all(0, 100_000).await.unwrap();
    assert!(!log.iter().any(|e| e.stream.starts_with("customer-")));

    // The churn still reaches the partner the customer is locked to, once.
    let churn = w.churn("acme", at(2, 20), Some(601));
    w.consume(churn.clone()).await.unwrap();
    w.consume(churn).await.unwrap();
    let churned = |types: &[String]| types.iter().filter(|t| *t == "CustomerChurned").count();
    assert_eq!(churned(&book_event_types(&w, p).await), 1);

    // The plan then pays a lifetime share from March on, to every customer: the churned one
    // earns none of it, as it would had it been credited from the start.
    let v2 = PlanVersion {
        plan_id: PLAN,
        version: 2,
        effective_from: at(3, 1),
        version_policy: VersionPolicy::FollowEffective,
        ..lifetime_plan()
    };
    w.publish("plan-v2", &v2).await;
    w.invoice(p, 602, 3).await;
    assert_eq!(
        w.balance(p).await.pending,
        "10.00",
        "no share after the churn"
    );
}

#[tokio::test]
async fn a_first_year_share_runs_through_a_churn_and_ends_a_year_after_its_first_invoice() {
    let w = world().await;
    let p = partner(1);
    w.assign(p, PLAN).await;
    const FIRST_YEAR_PLAN: Uuid = Uuid::from_u128(0xb3);
    let first_year = PlanVersion {
        plan_id: FIRST_YEAR_PLAN,
        rules: vec![rule(Reward::FirstYearPercent {
            percent: Percent::new(20).unwrap(),
            of: Base::Gross,
        })],
        ..plan()
    };
    w.publish("first-year-plan", &first_year).await;
    // January's invoice under the 10% plan (it locks the customer), then the partner moves to
    // a first-year share: February's and March's invoices pay 20%.
    w.invoice(p, 701, 1).await;
    w.reassign(p, FIRST_YEAR_PLAN, at(2, 1)).await;
    w.invoice(p, 702, 2).await;
    w.invoice(p, 703, 3).await;
    assert_eq!(w.balance(p).await.pending, "50.00");
    let shares = |as_of: DateTime<Utc>| {
        let api = w.api.clone();
        async move {
            let shares = api
                .list_recurring_shares(Request::new(pb::ListRecurringSharesRequest {
                    partner_id: p.to_string(),
                    as_of: Some(ts(as_of)),
                }))
                .await
                .unwrap()
                .into_inner()
                .shares;
            assert_eq!(shares.len(), 1, "{shares:?}");
            assert_eq!(shares[0].plan_id, FIRST_YEAR_PLAN.to_string());
            let s = shares[0].clone();
            let current = s.current_monthly_share.clone().unwrap_or_default().amount;
            (s, current)
        }
    };
    // A churn that names no locking conversion reaches the first-year share through the
    // customer's credit: the listing shows the churn and no current share, but not an end.
    w.consume(w.churn("acme", at(4, 1), None)).await.unwrap();
    let (s, current) = shares(at(5, 1)).await;
    assert_eq!(s.churned_at, Some(ts(at(4, 1))));
    assert_eq!((s.ended_at, current.as_str()), (None, "0.00"));
    // The customer comes back in May, inside its first year: the share pays it, and the
    // listing shows it running again.
    w.invoice(p, 704, 5).await;
    assert_eq!(w.balance(p).await.pending, "70.00");
    let (s, current) = shares(at(5, 20)).await;
    assert_eq!((s.ended_at, current.as_str()), (None, "20.00"));
    assert_eq!(s.share_to_date.unwrap().amount, "60.00");
    // A year after February's invoice (customer month 13 under this plan) the share has ended.
    assert_eq!(s.started_at, Some(ts(at(2, 10))));
    let year_on = at(2, 10) + chrono::Months::new(12);
    let (s, _) = shares(year_on - chrono::Duration::seconds(1)).await;
    assert_eq!(s.ended_at, None);
    // An invoice on that instant is month 13: the engine pays it nothing, and the listing says
    // the share ended then.
    w.invoice_at(p, 705, year_on).await;
    assert_eq!(w.balance(p).await.pending, "70.00");
    let (s, current) = shares(year_on).await;
    assert_eq!((s.ended_at, current.as_str()), (Some(ts(year_on)), "0.00"));
    assert_eq!(s.share_to_date.unwrap().amount, "60.00");
}

#[tokio::test]
async fn a_two_month_recurring_share_is_listed_ended_at_the_start_of_month_three() {
    let w = world().await;
    let p = partner(1);
    const TWO_MONTHS: Uuid = Uuid::from_u128(0xb5);
    let mut two_months = PlanVersion {
        plan_id: TWO_MONTHS,
        ..lifetime_plan()
    };
    let Reward::Recurring { duration, .. } = &mut two_months.rules[0].reward else {
        unreachable!("a recurring rule")
    };
    *duration = RecurringDuration::Months(2);
    w.publish("two-months", &two_months).await;
    w.assign(p, TWO_MONTHS).await;
    for (conversion, month) in [(901, 1), (902, 2), (903, 3)] {
        w.invoice(p, conversion, month).await;
    }
    assert_eq!(w.balance(p).await.pending, "40.00", "March pays nothing");
    let shares = w
        .api
        .list_recurring_shares(Request::new(pb::ListRecurringSharesRequest {
            partner_id: p.to_string(),
            as_of: Some(ts(at(4, 1))),
        }))
        .await
        .unwrap()
        .into_inner()
        .shares;
    assert_eq!(shares.len(), 1, "{shares:?}");
    assert_eq!(shares[0].ended_at, Some(ts(at(3, 10))));
    assert_eq!(shares[0].churned_at, None);
    let current = shares[0].current_monthly_share.clone().unwrap_or_default();
    assert_eq!(current.amount, "0.00");
}

#[tokio::test]
async fn a_churn_through_the_locking_sale_reaches_a_plan_the_partner_moved_to_since() {
    let w = world().await;
    let p = partner(1);
    w.assign(p, PLAN).await;
    const SECOND_PLAN: Uuid = Uuid::from_u128(0xb4);
    let second = PlanVersion {
        plan_id: SECOND_PLAN,
        ..plan()
    };
    w.publish("second-plan", &second).await;
    // January's invoice locks the customer under the first plan; from February the partner is
    // on a second 10% plan. Neither pays a recurring share: no credit is written.
    w.invoice(p, 801, 1).await;
    w.reassign(p, SECOND_PLAN, at(2, 1)).await;
    w.invoice(p, 802, 2).await;
    assert_eq!(w.balance(p).await.pending, "20.00");
    w.consume(w.churn("acme", at(2, 20), Some(801)))
        .await
        .unwrap();
    // The second plan then pays a lifetime share from March on: not to the churned customer.
    let second_v2 = PlanVersion {
        plan_id: SECOND_PLAN,
        version: 2,
        effective_from: at(3, 1),
        version_policy: VersionPolicy::FollowEffective,
        ..lifetime_plan()
    };
    w.publish("second-plan-v2", &second_v2).await;
    w.invoice(p, 803, 3).await;
    assert_eq!(
        w.balance(p).await.pending,
        "20.00",
        "no share after the churn"
    );
}

/// Checks every partner book event in the store: stored in the binary form of schema 4 (body
/// in MessagePack, compressed) under the type its JSON form is tagged with; reads back to an
/// event that re-encodes to the very same bytes; its postings read alone are its
/// transactions' postings; and the same event written as schema 1 (all JSON), schema 2 (body
/// uncompressed) or schema 3 (body in JSON, compressed), as older logs hold it, reads back
/// equal. Returns the event types seen.
async fn book_events_round_trip(store: &SharedStore) -> std::collections::BTreeSet<String> {
    use pl_commissions::book_codec;
    let mut seen = std::collections::BTreeSet::new();
    let mut from = 0;
    loop {
        let page = store.read_all(from, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        for r in page.iter().filter(|r| r.stream.starts_with("ledger-")) {
            assert_eq!(r.schema_version, book_codec::STORED_SCHEMA_VERSION);
            let event = book_codec::decode(r).unwrap();
            let (event_type, data) = book_codec::encode(&event).unwrap();
            assert_eq!(event_type, r.event_type);
            assert_eq!(
                data, r.data,
                "{} re-encodes to its stored bytes",
                r.event_type
            );
            let postings = book_codec::postings(r).unwrap().unwrap();
            let expected: Vec<(_, _, _, Vec<_>)> = event
                .transactions()
                .iter()
                .map(|t| (t.id(), t.kind(), t.occurred_at(), t.transfers().to_vec()))
                .collect();
            let read: Vec<_> = postings
                .into_iter()
                .map(|p| (p.id, p.kind, p.occurred_at, p.transfers))
                .collect();
            assert_eq!(read, expected);
            let (json_type, json) = pl_runtime::aggregate::encode_json(&event).unwrap();
            assert_eq!(json_type, r.event_type, "the stored type is the JSON tag");
            let schema_1 = pl_eventlog::RecordedEvent {
                schema_version: 1,
                data: json,
                ..r.clone()
            };
            assert_eq!(book_codec::decode(&schema_1).unwrap(), event);
            assert_eq!(book_codec::postings(&schema_1).unwrap(), None);
            let any: Vec<_> = book_codec::postings_of_any(&schema_1)
                .unwrap()
                .into_iter()
                .map(|p| (p.id, p.kind, p.occurred_at, p.transfers))
                .collect();
            assert_eq!(any, expected, "schema 1 postings from the whole event");
            // Schema 2: the same binary form with the body uncompressed; schema 3: the same
            // envelope as now with the body and explanations in JSON.
            let mut uncompressed_bytes = 0;
            for (schema_version, encode) in [
                (2, book_codec::encode_schema_2 as fn(&_) -> _),
                (3, book_codec::encode_schema_3),
            ] {
                let (_, data) = encode(&event).unwrap();
                let older = pl_eventlog::RecordedEvent {
                    schema_version,
                    data,
                    ..r.clone()
                };
                assert_eq!(book_codec::decode(&older).unwrap(), event);
                let postings: Vec<_> = book_codec::postings(&older)
                    .unwrap()
                    .unwrap()
                    .into_iter()
                    .map(|p| (p.id, p.kind, p.occurred_at, p.transfers))
                    .collect();
                assert_eq!(postings, expected, "schema {schema_version}");
                if schema_version == 2 {
                    uncompressed_bytes = older.data.len();
                }
            }
            if r.event_type == "ConversionAccrued" {
                assert!(
                    r.data.len() * 3 < uncompressed_bytes * 2,
                    "an accrual is stored in {} bytes, {uncompressed_bytes} uncompressed",
                    r.data.len(),
                );
            }
            seen.insert(r.event_type.clone());
        }
    }
    seen
}

#[tokio::test]
async fn every_kind_of_book_event_is_stored_in_binary_and_reads_back_unchanged_as_do_schema_1_2_and_3_events(
) {
    // Accruals, maturity, a payout created and settled, a clawback after it.
    let (w, _, _) = charged_back_after_payout().await;
    let mut seen = book_events_round_trip(&w.store).await;
    // A payout that fails.
    let (w, p, run) = paid_world().await;
    w.fail("fail-1", &run, p).await.unwrap();
    seen.extend(book_events_round_trip(&w.store).await);
    // A lifetime share ended by a churn.
    let w = world().await;
    let p = partner(2);
    w.assign(p, LIFETIME_PLAN).await;
    let invoice = serde_json::json!({
        "conversion_id": Uuid::from_u128(501), "program_id": PROGRAM,
        "kind": "CONVERSION_KIND_SUBSCRIPTION_INVOICE", "customer_id": "acme",
        "gross": { "amount": "100.00", "currency": "USD" }, "occurred_at": at(1, 10),
        "shares": [{ "partner_id": p, "weight": "1" }],
    });
    w.consume(message(w.id(), "ConversionAttributed", invoice, at(1, 10)))
        .await
        .unwrap();
    let cancelled = serde_json::json!({
        "customer_id": "acme", "program_id": PROGRAM, "occurred_at": at(2, 20),
    });
    w.consume(message(
        w.id(),
        "SubscriptionCancelled",
        cancelled,
        at(2, 20),
    ))
    .await
    .unwrap();
    seen.extend(book_events_round_trip(&w.store).await);
    for event_type in [
        "ConversionAccrued",
        "CommissionsMatured",
        "PayoutCreated",
        "PayoutSettled",
        "PayoutFailed",
        "ConversionReversed",
        "CustomerChurned",
    ] {
        assert!(
            seen.contains(event_type),
            "{event_type} not exercised: {seen:?}"
        );
    }
}

/// A schema-4 body: MessagePack with named fields and human-readable values.
fn msgpack<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut body = Vec::new();
    value
        .serialize(
            &mut rmp_serde::Serializer::new(&mut body)
                .with_struct_map()
                .with_human_readable(),
        )
        .unwrap();
    body
}

/// An accrual as a schema-4 body holds it: without its transactions.
fn event_without_transactions(
    event: &pl_commissions::book::BookEvent,
) -> pl_commissions::book::BookEvent {
    let mut body_event = event.clone();
    let pl_commissions::book::BookEvent::ConversionAccrued { transactions, .. } = &mut body_event
    else {
        panic!("an accrual")
    };
    transactions.clear();
    body_event
}

/// A stored `ConversionAccrued`, as the service wrote it.
async fn stored_accrual() -> pl_eventlog::RecordedEvent {
    let (w, _, _) = charged_back_after_payout().await;
    w.store
        .read_all(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.event_type == "ConversionAccrued")
        .unwrap()
}

#[tokio::test]
async fn a_damaged_compressed_book_event_is_refused_with_the_reason_and_never_read_as_another() {
    use pl_commissions::book_codec;
    use pl_proto::commissions::v1 as pb;
    use prost::Message;
    let accrual = stored_accrual().await;
    let stored = pb::StoredBookEventV3::decode(accrual.data.clone()).unwrap();
    let read = |copy: &pb::StoredBookEventV3| {
        let r = pl_eventlog::RecordedEvent {
            data: copy.encode_to_vec().into(),
            ..accrual.clone()
        };
        (book_codec::decode(&r), book_codec::postings(&r))
    };
    let damaged = |change: &dyn Fn(&mut pb::StoredBookEventV3)| {
        let mut copy = stored.clone();
        change(&mut copy);
        read(&copy).0.unwrap_err()
    };
    let err = damaged(&|s| s.body_bytes = book_codec::MAX_BODY_BYTES + 1);
    assert!(err.contains("more than"), "{err}");
    let err = damaged(&|s| s.body_bytes -= 1);
    assert!(err.contains("body"), "{err}");
    let err = damaged(&|s| s.body_bytes += 1);
    assert!(err.contains("its record says"), "{err}");
    let err = damaged(&|s| s.body_lz4 = s.body_lz4.slice(..s.body_lz4.len() / 2));
    assert!(err.contains("body"), "{err}");
    assert!(err.contains(&accrual.id.to_string()), "{err}");
    // A body whose explanations do not match the transactions, and a body of another type.
    let event = book_codec::decode(&accrual).unwrap();
    let rebody = |body: &[u8]| {
        let body = body.to_vec();
        move |s: &mut pb::StoredBookEventV3| {
            s.body_bytes = u32::try_from(body.len()).unwrap();
            s.body_lz4 = lz4_flex::block::compress(&body).into();
        }
    };
    let mut explanations: Vec<_> = event
        .transactions()
        .iter()
        .map(|t| t.explanation().clone())
        .collect();
    explanations.push(explanations[0].clone());
    let body_event = event_without_transactions(&event);
    let err = damaged(&rebody(&msgpack(&(&body_event, &explanations))));
    assert!(err.contains("explanations for"), "{err}");
    let churned = pl_commissions::book::BookEvent::CustomerChurned {
        plan_id: Uuid::from_u128(1),
        customer_id: "acme".into(),
        at: at(1, 1),
    };
    let none: Vec<pl_ledger::Explanation> = Vec::new();
    let err = damaged(&rebody(&msgpack(&(&churned, &none))));
    assert!(err.contains("body is a CustomerChurned"), "{err}");
    let err = damaged(&rebody(b"\x92\xa3not"));
    assert!(err.contains("body"), "{err}");
    let mut trailing = msgpack(&(&event_without_transactions(&event), &explanations[1..]));
    trailing.push(0xc0);
    let err = damaged(&rebody(&trailing));
    assert!(err.contains("1 bytes after its end"), "{err}");
    // Postings that name an unknown currency or an FX account with an owner: the full decode
    // and the postings alone both refuse them.
    for change in [
        &(|s: &mut pb::StoredBookEventV3| s.transactions[0].transfers[0].currency_numeric = 1)
            as &dyn Fn(&mut pb::StoredBookEventV3),
        &|s| {
            s.transactions[0].transfers[0].debit_kind = pb::StoredAccountKind::FxConversion as i32;
        },
    ] {
        let mut copy = stored.clone();
        change(&mut copy);
        let (whole, postings) = read(&copy);
        let (whole, postings) = (whole.unwrap_err(), postings.unwrap_err());
        assert!(
            whole.contains("unknown currency numeric code 1") || whole.contains("with an owner"),
            "{whole}"
        );
        assert!(
            postings.contains("unknown currency numeric code 1")
                || postings.contains("with an owner"),
            "{postings}"
        );
    }
    // A schema-4 record read as schema 2 or 3 does not pass for one.
    let as_schema_3 = pl_eventlog::RecordedEvent {
        schema_version: 3,
        ..accrual.clone()
    };
    assert!(book_codec::decode(&as_schema_3).is_err());
    let as_schema_2 = pl_eventlog::RecordedEvent {
        schema_version: 2,
        ..accrual.clone()
    };
    assert!(book_codec::decode(&as_schema_2).is_err());
    assert!(book_codec::postings(&as_schema_2).is_err());
}

#[tokio::test]
async fn a_book_event_of_a_nil_program_reads_back_unchanged() {
    use pl_commissions::book_codec;
    use pl_ledger::{Account, Transaction, Transfer};
    let accrual = stored_accrual().await;
    let mut event = book_codec::decode(&accrual).unwrap();
    let nil_program = |a: Account| match a {
        Account::CommissionExpense { currency, .. } => Account::CommissionExpense {
            program_id: uuid::Uuid::nil(),
            currency,
        },
        other => other,
    };
    let pl_commissions::book::BookEvent::ConversionAccrued { transactions, .. } = &mut event else {
        panic!("an accrual")
    };
    let t = &mut transactions[0];
    let transfers: Vec<Transfer> = t
        .transfers()
        .iter()
        .map(|x| Transfer {
            debit: nil_program(x.debit),
            credit: nil_program(x.credit),
            amount: x.amount,
        })
        .collect();
    assert_ne!(transfers.as_slice(), t.transfers());
    *t = Transaction::new(
        t.id(),
        t.kind(),
        t.occurred_at(),
        transfers,
        t.explanation().clone(),
    )
    .unwrap();
    let (_, data) = book_codec::encode(&event).unwrap();
    let stored = pl_eventlog::RecordedEvent {
        data,
        ..accrual.clone()
    };
    assert_eq!(book_codec::decode(&stored).unwrap(), event);
    let postings = book_codec::postings(&stored).unwrap().unwrap();
    assert_eq!(postings[0].transfers, event.transactions()[0].transfers());
}
