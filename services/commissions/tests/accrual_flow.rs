//! The commissions service as its callers meet it: plans published and assigned over its gRPC
//! API, attribution's events consumed from the bus, balances and explanations queried — on the
//! in-memory event log, calling the service implementation directly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use pl_bus::{HandleError, Message};
use pl_commission_engine::{
    Base, Conditions, NetRevenuePolicy, Percent, PlanVersion, RecurringDuration, Reward, Rule,
    ScheduleStep, VersionPolicy,
};
use pl_commissions::CommissionsService;
use pl_eventlog::{EventStore, Hooked, LogError, MemoryLog, SharedStore, StoreHooks};
use pl_money::{Currency, Money};
use pl_proto::commissions::v1 as pb;
use pl_proto::commissions::v1::commissions_service_server::CommissionsService as Api;
use pl_proto::common::v1::RequestContext;
use pl_runtime::FixedClock;
use tonic::Request;
use uuid::Uuid;

const PARTNER: Uuid = Uuid::from_u128(0xa1);
const PARENT: Uuid = Uuid::from_u128(0xa2);
const PLAN: Uuid = Uuid::from_u128(0xb1);
const PROGRAM: Uuid = Uuid::from_u128(0xc1);

fn at(month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, month, day, 12, 0, 0).unwrap()
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn ctx(key: &str) -> Option<RequestContext> {
    Some(RequestContext {
        idempotency_key: key.into(),
        occurred_at: Some(ts(at(1, 1))),
        correlation_id: String::new(),
    })
}

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
        overrides: vec![Percent::new(2).unwrap()],
        rules: vec![Rule {
            id: "sales".into(),
            conditions: Conditions::default(),
            reward: Reward::PercentOfGross(Percent::new(10).unwrap()),
            cap_per_conversion: None,
            cap_per_period: None,
        }],
    }
}

/// A lifetime revenue share, 10% of every invoice: its customers are credited (the stream a
/// churn reads), where [`plan`]'s are not.
const RECURRING_PLAN: Uuid = Uuid::from_u128(0xb9);
/// A partner on [`RECURRING_PLAN`], without a parent.
const SHARER: Uuid = Uuid::from_u128(0xa9);

fn recurring_plan() -> PlanVersion {
    let mut p = plan();
    p.plan_id = RECURRING_PLAN;
    p.overrides = vec![];
    p.rules[0].reward = Reward::Recurring {
        schedule: vec![ScheduleStep {
            from_month: 1,
            to_month: None,
            percent: Percent::new(10).unwrap(),
        }],
        duration: RecurringDuration::Lifetime,
        of: Base::Gross,
    };
    p
}

fn message(
    id: u128,
    event_type: &str,
    data: serde_json::Value,
    occurred_at: DateTime<Utc>,
) -> Message {
    let envelope = serde_json::json!({
        "id": Uuid::from_u128(id), "type": event_type, "schema_version": 1,
        "stream": "conversion-x", "version": 0, "position": id,
        "occurred_at": occurred_at, "recorded_at": occurred_at,
        "correlation_id": null, "causation_id": null, "data": data,
    });
    Message {
        id: Uuid::from_u128(id),
        subject: format!("pl.attribution.{event_type}"),
        payload: bytes::Bytes::from(serde_json::to_vec(&envelope).unwrap()),
        headers: BTreeMap::new(),
    }
}

/// Partner CRM's event `event_type` (message `id`), as the relay delivers it.
fn crm(id: u128, event_type: &str, data: serde_json::Value) -> Message {
    let mut m = message(id, event_type, data, at(1, 1));
    m.subject = format!("pl.crm.{event_type}");
    m
}

/// CRM's `PartnerParentChanged`: `partner`'s parent is `parent` from `from` on.
fn parent_changed(id: u128, partner: Uuid, parent: Option<Uuid>, from: DateTime<Utc>) -> Message {
    crm(
        id,
        "PartnerParentChanged",
        serde_json::json!({
            "partner_id": partner, "program_id": PROGRAM,
            "parent_partner_id": parent.map(|p| p.to_string()).unwrap_or_default(),
            "occurred_at": from,
        }),
    )
}

/// CRM's `PartnerTierChanged`: `partner` is in `tier` from `from` on.
fn tier_changed(id: u128, partner: Uuid, tier: &str, from: DateTime<Utc>) -> Message {
    crm(
        id,
        "PartnerTierChanged",
        serde_json::json!({
            "partner_id": partner, "program_id": PROGRAM, "tier": tier,
            "effective_from": from, "occurred_at": from,
        }),
    )
}

fn sale(conversion: u128, gross: &str) -> serde_json::Value {
    serde_json::json!({
        "conversion_id": Uuid::from_u128(conversion), "program_id": PROGRAM,
        "kind": "CONVERSION_KIND_SALE", "customer_id": "cust-1",
        "gross": { "amount": gross, "currency": "USD" }, "occurred_at": at(1, 10),
        "shares": [{ "partner_id": PARTNER, "weight": "1" }],
    })
}

struct World {
    store: SharedStore,
    api: CommissionsService,
}

async fn world() -> World {
    world_on(Arc::new(MemoryLog::default())).await
}

async fn world_on(store: SharedStore) -> World {
    let api = CommissionsService::new(store.clone(), Arc::new(FixedClock::at(at(1, 1))));
    for (key, p) in [("plan-1", plan()), ("plan-r", recurring_plan())] {
        api.publish_plan_version(Request::new(pb::PublishPlanVersionRequest {
            context: ctx(key),
            plan_id: p.plan_id.to_string(),
            plan_json: serde_json::to_string(&p).unwrap(),
        }))
        .await
        .unwrap();
    }
    for (key, partner, plan_id) in [
        ("assign-p", PARTNER, PLAN),
        ("assign-q", PARENT, PLAN),
        ("assign-s", SHARER, RECURRING_PLAN),
    ] {
        api.assign_plan(Request::new(pb::AssignPlanRequest {
            context: ctx(key),
            partner_id: partner.to_string(),
            plan_id: plan_id.to_string(),
            effective_from: Some(ts(at(1, 1))),
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    let world = World { store, api };
    // The partner's parent, as partner CRM reports it.
    world
        .consume(parent_changed(0x9a_0001, PARTNER, Some(PARENT), at(1, 1)))
        .await
        .unwrap();
    world
}

impl World {
    async fn consume(&self, m: Message) -> Result<(), HandleError> {
        pl_commissions::consumer::handle(self.store.as_ref(), &self.api.caches(), m).await
    }

    /// Consumes attribution's `ConversionAttributed` (message `id`) for a sale of `gross` USD
    /// credited to the partner; it must be accepted.
    async fn sell(&self, id: u128, conversion: u128, gross: &str, when: DateTime<Utc>) {
        self.consume(message(
            id,
            "ConversionAttributed",
            sale(conversion, gross),
            when,
        ))
        .await
        .unwrap();
    }

    /// Consumes attribution's `ConversionAttributed` (message `id`) of the conversion `data`;
    /// it must be accepted.
    async fn sell_on(&self, id: u128, data: serde_json::Value) {
        let when = data["occurred_at"].as_str().unwrap().parse().unwrap();
        self.consume(message(id, "ConversionAttributed", data, when))
            .await
            .unwrap();
    }

    /// The partner's USD entries with their explanations (first page).
    async fn explain(&self, partner: Uuid) -> pb::ExplainBalanceResponse {
        self.api
            .explain_balance(Request::new(pb::ExplainBalanceRequest {
                partner_id: partner.to_string(),
                currency: "USD".into(),
                as_of: None,
                page: None,
            }))
            .await
            .unwrap()
            .into_inner()
    }

    async fn balances(&self, partner: Uuid, as_of: Option<pb::AsOf>) -> (String, String) {
        let b = self
            .api
            .get_balances(Request::new(pb::GetBalancesRequest {
                partner_id: partner.to_string(),
                as_of,
            }))
            .await
            .unwrap()
            .into_inner();
        match b.currencies.first() {
            Some(c) => (c.pending.clone(), c.payable.clone()),
            None => ("none".into(), "none".into()),
        }
    }
}

#[tokio::test]
async fn a_sale_accrues_for_the_partner_and_its_parent_and_a_redelivery_changes_nothing() {
    let w = world().await;
    w.sell(1, 100, "100.00", at(1, 10)).await;
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("10.00".into(), "0.00".into())
    );
    assert_eq!(
        w.balances(PARENT, None).await,
        ("2.00".into(), "0.00".into())
    );
    w.sell(1, 100, "100.00", at(1, 10)).await;
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("10.00".into(), "0.00".into())
    );
    assert_eq!(
        w.balances(PARENT, None).await,
        ("2.00".into(), "0.00".into())
    );
}

#[tokio::test]
async fn a_partial_refund_reverses_a_quarter_of_every_line_and_once_only() {
    let w = world().await;
    w.sell(1, 100, "100.00", at(1, 10)).await;
    let refund = serde_json::json!({
        "refund_id": Uuid::from_u128(900), "conversion_id": Uuid::from_u128(100),
        "amount": { "amount": "25.00", "currency": "USD" }, "occurred_at": at(1, 12),
    });
    w.consume(message(2, "ConversionRefunded", refund.clone(), at(1, 12)))
        .await
        .unwrap();
    w.consume(message(2, "ConversionRefunded", refund, at(1, 12)))
        .await
        .unwrap();
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("7.50".into(), "0.00".into())
    );
    assert_eq!(
        w.balances(PARENT, None).await,
        ("1.50".into(), "0.00".into())
    );
}

#[tokio::test]
async fn maturity_after_the_hold_makes_commissions_payable_and_explain_says_why() {
    let w = world().await;
    w.sell(1, 100, "100.00", at(1, 10)).await;
    let mature = |key: &str, day: DateTime<Utc>| pb::MatureCommissionsRequest {
        context: ctx(key),
        partner_id: PARTNER.to_string(),
        as_of: Some(ts(day)),
    };
    w.api
        .mature_commissions(Request::new(mature("m1", at(2, 1))))
        .await
        .unwrap();
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("10.00".into(), "0.00".into()),
        "hold not over"
    );
    let r = w
        .api
        .mature_commissions(Request::new(mature("m2", at(2, 10))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.matured[0].amount, "10.00");
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("0.00".into(), "10.00".into())
    );

    // As of a business date before the hold ended, the money was still pending.
    let before = pb::AsOf {
        business_date: Some(ts(at(2, 1))),
        ..Default::default()
    };
    assert_eq!(
        w.balances(PARTNER, Some(before)).await,
        ("10.00".into(), "0.00".into())
    );
    // As known at the recording point of the accrual, nothing had matured.
    let explained = w.explain(PARTNER).await;
    let accrual = &explained.entries[0];
    assert_eq!(accrual.explanation, "10% of 100.00 USD sale");
    // The balance each entry moves, named as documented (it was "partner <uuid> pending USD").
    let moved: Vec<(&str, &str)> = explained
        .entries
        .iter()
        .map(|e| (e.account.as_str(), e.amount.as_str()))
        .collect();
    assert_eq!(
        moved,
        [
            ("pending", "10.00"),
            ("pending", "-10.00"),
            ("payable", "10.00")
        ]
    );
    assert_eq!(accrual.plan_id, PLAN.to_string());
    assert_eq!(
        (accrual.plan_version, accrual.rule_id.as_str()),
        (1, "sales")
    );
    assert_eq!(accrual.conversion_id, Uuid::from_u128(100).to_string());
    let first_position = accrual.position;
    let known_then = pb::AsOf {
        recorded_position: first_position,
        ..Default::default()
    };
    assert_eq!(
        w.balances(PARTNER, Some(known_then)).await,
        ("10.00".into(), "0.00".into())
    );
}

#[tokio::test]
async fn a_refund_after_maturity_is_clawed_back_from_payable() {
    let w = world().await;
    w.sell(1, 100, "100.00", at(1, 10)).await;
    w.api
        .mature_commissions(Request::new(pb::MatureCommissionsRequest {
            context: ctx("m"),
            partner_id: PARTNER.to_string(),
            as_of: Some(ts(at(3, 1))),
        }))
        .await
        .unwrap();
    let chargeback = serde_json::json!({
        "chargeback_id": Uuid::from_u128(901), "conversion_id": Uuid::from_u128(100),
        "amount": { "amount": "100.00", "currency": "USD" }, "occurred_at": at(3, 5),
    });
    w.consume(message(3, "ChargebackReceived", chargeback, at(3, 5)))
        .await
        .unwrap();
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("0.00".into(), "0.00".into())
    );
}

#[tokio::test]
async fn an_invalid_plan_is_refused_with_the_path_of_the_bad_field_and_nothing_is_written() {
    let w = world().await;
    let mut json: serde_json::Value = serde_json::to_value(plan()).unwrap();
    json["version"] = 2.into();
    json["effective_from"] = serde_json::to_value(at(2, 1)).unwrap();
    json["rules"][0]["reward"] = serde_json::json!({ "NoSuchReward": 1 });
    let err = w
        .api
        .publish_plan_version(Request::new(pb::PublishPlanVersionRequest {
            context: ctx("plan-2"),
            plan_id: PLAN.to_string(),
            plan_json: json.to_string(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("plan_json.rules[0].reward"),
        "{}",
        err.message()
    );
    // Skipping a version number is refused too.
    let mut skipped = plan();
    skipped.version = 3;
    skipped.effective_from = at(3, 1);
    let err = w
        .api
        .publish_plan_version(Request::new(pb::PublishPlanVersionRequest {
            context: ctx("plan-3"),
            plan_id: PLAN.to_string(),
            plan_json: serde_json::to_string(&skipped).unwrap(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

impl World {
    async fn awaiting_fx(&self, from: &str, to: &str) -> Vec<pb::AccrualAwaitingFx> {
        self.api
            .list_accruals_awaiting_fx(Request::new(pb::ListAccrualsAwaitingFxRequest {
                from_currency: from.into(),
                to_currency: to.into(),
                page: None,
            }))
            .await
            .unwrap()
            .into_inner()
            .accruals
    }

    async fn record_rate(&self, key: &str, day: DateTime<Utc>, rate: &str) -> pb::FxRateRecorded {
        self.api
            .record_fx_rate(Request::new(pb::RecordFxRateRequest {
                context: ctx(key),
                from_currency: "EUR".into(),
                to_currency: "USD".into(),
                date: Some(ts(day)),
                rate: rate.into(),
            }))
            .await
            .unwrap()
            .into_inner()
    }
}

#[tokio::test]
async fn a_conversion_in_another_currency_waits_visibly_for_its_fx_rate_then_converts_at_it() {
    let w = world().await;
    let mut eur = sale(101, "100.00");
    eur["gross"]["currency"] = "EUR".into();
    // Given no EUR→USD rate for the conversion's date, the accrual waits (the message is acked:
    // nothing is lost to a delivery limit) and shows in the listing.
    w.consume(message(5, "ConversionAttributed", eur.clone(), at(1, 10)))
        .await
        .unwrap();
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("none".into(), "none".into())
    );
    let waiting = w.awaiting_fx("", "").await;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].conversion_id, Uuid::from_u128(101).to_string());
    assert_eq!(waiting[0].partner_id, PARTNER.to_string());
    assert_eq!(
        (
            waiting[0].from_currency.as_str(),
            waiting[0].to_currency.as_str()
        ),
        ("EUR", "USD")
    );
    assert_eq!(waiting[0].date, "2026-01-10");
    assert_eq!(waiting[0].source_event_id, Uuid::from_u128(5).to_string());
    assert!(w.awaiting_fx("GBP", "").await.is_empty());
    // A redelivery parks nothing twice.
    w.consume(message(5, "ConversionAttributed", eur.clone(), at(1, 10)))
        .await
        .unwrap();
    assert_eq!(w.awaiting_fx("EUR", "USD").await.len(), 1);

    // A neighbouring day's rate is never used.
    let other_day = w.record_rate("fx-0", at(1, 11), "2.00").await;
    assert_eq!(other_day.released_accruals, 0);
    assert_eq!(w.awaiting_fx("", "").await.len(), 1);

    // When the day's rate is recorded, the accrual converts at it and leaves the listing.
    let recorded = w.record_rate("fx-1", at(1, 10), "1.10").await;
    assert_eq!(recorded.released_accruals, 1);
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("11.00".into(), "0.00".into())
    );
    assert!(w.awaiting_fx("", "").await.is_empty());
    // The parent's 2% override was released with it: 100 EUR × 2% × 1.10.
    assert_eq!(
        w.balances(PARENT, None).await,
        ("2.20".into(), "0.00".into())
    );
    // A late redelivery of the original message accrues nothing twice.
    w.consume(message(5, "ConversionAttributed", eur, at(1, 10)))
        .await
        .unwrap();
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("11.00".into(), "0.00".into())
    );
}

#[tokio::test]
async fn listing_accruals_awaiting_fx_rejects_bad_filters_precisely() {
    let w = world().await;
    let err = w
        .api
        .list_accruals_awaiting_fx(Request::new(pb::ListAccrualsAwaitingFxRequest {
            from_currency: "EURO".into(),
            to_currency: String::new(),
            page: Some(pl_proto::common::v1::PageRequest {
                page_size: 0,
                page_token: "not-a-token".into(),
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("from_currency"), "{}", err.message());
}

#[tokio::test]
async fn a_statement_of_a_period_opens_and_closes_with_the_balances_around_its_entries() {
    let w = world().await;
    w.sell(1, 100, "100.00", at(1, 10)).await;
    let mut later = sale(101, "50.00");
    later["occurred_at"] = serde_json::to_value(at(2, 5)).unwrap();
    w.consume(message(2, "ConversionAttributed", later, at(2, 5)))
        .await
        .unwrap();
    let st = w
        .api
        .get_statement(Request::new(pb::GetStatementRequest {
            partner_id: PARTNER.to_string(),
            currency: "USD".into(),
            from: Some(ts(at(2, 1))),
            to: Some(ts(at(3, 1))),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.opening.unwrap().pending, "10.00");
    assert_eq!(st.entries.len(), 1);
    assert_eq!(st.entries[0].explanation, "10% of 50.00 USD sale");
    assert_eq!(st.closing.unwrap().pending, "15.00");
    let bad = w
        .api
        .get_statement(Request::new(pb::GetStatementRequest {
            partner_id: PARTNER.to_string(),
            currency: "usd".into(),
            from: Some(ts(at(3, 1))),
            to: Some(ts(at(2, 1))),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().contains("currency") && bad.message().contains("to:"),
        "{}",
        bad.message()
    );
}

#[tokio::test]
async fn recurring_shares_are_listed_per_customer_as_of_a_date() {
    let w = world().await;
    // A one-off sale plan pays no recurring share (the sale is in before the listing: the
    // listing once came first and could not fail).
    w.sell(1, 100, "100.00", at(1, 10)).await;
    assert_eq!(w.balances(PARTNER, None).await.0, "10.00");
    let shares = w
        .api
        .list_recurring_shares(Request::new(pb::ListRecurringSharesRequest {
            partner_id: PARTNER.to_string(),
            as_of: Some(ts(at(6, 1))),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(shares.shares.is_empty());
    let missing_date = w
        .api
        .list_recurring_shares(Request::new(pb::ListRecurringSharesRequest {
            partner_id: PARTNER.to_string(),
            as_of: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(missing_date.code(), tonic::Code::InvalidArgument);
}

/// Regression: a maturity run posting several transactions in one event gave them all the
/// event's log position, which the ledger refused, so balances failed with INTERNAL.
#[tokio::test]
async fn balances_still_answer_after_a_maturity_run_moves_several_entries() {
    let w = world().await;
    w.sell(1, 100, "100.00", at(1, 10)).await;
    w.sell(2, 101, "50.00", at(1, 10)).await;
    let r = w
        .api
        .mature_commissions(Request::new(pb::MatureCommissionsRequest {
            context: ctx("m"),
            partner_id: PARTNER.to_string(),
            as_of: Some(ts(at(3, 1))),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.matured[0].amount, "15.00");
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("0.00".into(), "15.00".into())
    );
}

#[tokio::test]
async fn the_program_report_shows_revenue_cost_and_cost_per_acquisition_per_partner() {
    let w = world().await;
    w.sell(1, 100, "100.00", at(1, 10)).await;
    w.sell(2, 101, "300.00", at(1, 10)).await;
    let report = w
        .api
        .get_program_report(Request::new(pb::GetProgramReportRequest {
            program_id: PROGRAM.to_string(),
            from: Some(ts(at(1, 1))),
            to: Some(ts(at(2, 1))),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.rows.len(), 1);
    let r = &report.rows[0];
    assert_eq!(r.partner_id, PARTNER.to_string());
    assert_eq!(r.conversions, "2");
    assert_eq!(r.attributed_revenue, "400.00");
    // 10 % to the partner plus the parent's 2 % override.
    assert_eq!(r.commission_cost, "48.00");
    assert_eq!(r.effective_cpa, "24.00");
    assert_eq!(r.revenue_per_commission, "8.3333");
}

const CAMPAIGN: Uuid = Uuid::from_u128(0xca);

#[tokio::test]
async fn the_program_report_splits_by_campaign_and_month_and_filters_by_campaign_and_partner_type()
{
    let w = world().await;
    w.consume(message(
        9,
        "PartnerApplied",
        serde_json::json!({"partner_id": PARTNER, "program_id": PROGRAM, "partner_type": "affiliate"}),
        at(1, 1),
    ))
    .await
    .unwrap();
    // Given: a January sale through no campaign, a January and a February sale through the
    // campaign, and a 25 % refund of the January campaign sale.
    w.sell(1, 100, "100.00", at(1, 10)).await;
    let mut in_campaign = sale(101, "200.00");
    in_campaign["shares"][0]["campaign_id"] = CAMPAIGN.to_string().into();
    w.consume(message(
        2,
        "ConversionAttributed",
        in_campaign.clone(),
        at(1, 10),
    ))
    .await
    .unwrap();
    let mut february = in_campaign;
    february["conversion_id"] = Uuid::from_u128(102).to_string().into();
    february["occurred_at"] = serde_json::to_value(at(2, 3)).unwrap();
    w.consume(message(3, "ConversionAttributed", february, at(2, 3)))
        .await
        .unwrap();
    let refund = serde_json::json!({
        "refund_id": Uuid::from_u128(901), "conversion_id": Uuid::from_u128(101),
        "amount": { "amount": "50.00", "currency": "USD" }, "occurred_at": at(2, 20),
    });
    w.consume(message(4, "ConversionRefunded", refund, at(2, 20)))
        .await
        .unwrap();
    let report = |campaign: &str, partner_type: &str, monthly: bool| {
        w.api
            .get_program_report(Request::new(pb::GetProgramReportRequest {
                program_id: PROGRAM.to_string(),
                from: Some(ts(at(1, 1))),
                to: Some(ts(at(3, 1))),
                campaign_id: campaign.into(),
                partner_type: partner_type.into(),
                monthly,
            }))
    };
    // When reported for the whole period: one row per campaign (or none).
    let whole = report("", "", false).await.unwrap().into_inner();
    let rows: Vec<(String, String, String, String)> = whole
        .rows
        .iter()
        .map(|r| {
            (
                r.campaign_id.clone(),
                r.conversions.clone(),
                r.attributed_revenue.clone(),
                r.commission_cost.clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("".into(), "1".into(), "100.00".into(), "12.00".into()),
            // 200 + 200 − 50 revenue; (20 + 4) × 2 − 25 % × 24 commission.
            (
                CAMPAIGN.to_string(),
                "2".into(),
                "350.00".into(),
                "42.00".into()
            ),
        ]
    );
    assert!(whole.rows.iter().all(|r| r.partner_type == "affiliate"));
    // Then by campaign and month: the campaign's January and February rows.
    let monthly = report(&CAMPAIGN.to_string(), "", true)
        .await
        .unwrap()
        .into_inner();
    let months: Vec<(i64, String)> = monthly
        .rows
        .iter()
        .map(|r| {
            (
                r.period_start.as_ref().unwrap().seconds,
                r.attributed_revenue.clone(),
            )
        })
        .collect();
    let first = |m: u32| {
        Utc.with_ymd_and_hms(2026, m, 1, 0, 0, 0)
            .unwrap()
            .timestamp()
    };
    assert_eq!(
        months,
        // The first row starts at `from` (midday on 1 January), the next on 1 February.
        vec![
            (at(1, 1).timestamp(), "150.00".into()),
            (first(2), "200.00".into())
        ]
    );
    // A partner type no partner has gives no rows; a malformed campaign is refused.
    let resellers = report("", "reseller", false).await.unwrap().into_inner();
    assert!(resellers.rows.is_empty());
    let bad = report("campaign-7", "", false).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("campaign_id"), "{}", bad.message());
}

/// Regression: a refund larger than the sale was silently capped to a full reversal.
#[tokio::test]
async fn a_refund_larger_than_the_sale_is_refused_and_reverses_nothing() {
    let w = world().await;
    w.sell(1, 100, "100.00", at(1, 10)).await;
    let refund = serde_json::json!({
        "refund_id": Uuid::from_u128(902), "conversion_id": Uuid::from_u128(100),
        "amount": { "amount": "150.00", "currency": "USD" }, "occurred_at": at(1, 12),
    });
    let err = w
        .consume(message(4, "ConversionRefunded", refund, at(1, 12)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HandleError::Permanent(ref m) if m.contains("exceeds")),
        "{err:?}"
    );
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("10.00".into(), "0.00".into())
    );
}

#[tokio::test]
async fn a_campaign_fee_and_an_mdf_reimbursement_are_payable_at_once_and_credited_once() {
    let w = world().await;
    let fee = serde_json::json!({
        "campaign_id": Uuid::from_u128(0xca), "partner_id": PARTNER, "program_id": PROGRAM,
        "amount": { "amount": "500.00", "currency": "USD" }, "occurred_at": at(1, 15),
    });
    w.consume(message(20, "CampaignFeeCommitted", fee.clone(), at(1, 15)))
        .await
        .unwrap();
    // A redelivery, and the same campaign's fee under another event id, change nothing.
    w.consume(message(20, "CampaignFeeCommitted", fee.clone(), at(1, 15)))
        .await
        .unwrap();
    w.consume(message(21, "CampaignFeeCommitted", fee, at(1, 15)))
        .await
        .unwrap();
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("0.00".into(), "500.00".into())
    );
    let claim = serde_json::json!({
        "claim_id": Uuid::from_u128(0xc1a1), "partner_id": PARTNER, "program_id": PROGRAM,
        "amount": { "amount": "120.00", "currency": "USD" }, "occurred_at": at(1, 20),
        "period": "2026-Q1",
    });
    w.consume(message(22, "MdfReimbursementApproved", claim, at(1, 20)))
        .await
        .unwrap();
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("0.00".into(), "620.00".into())
    );
    // The campaign's performance bonus is a credit of its own, next to its fee.
    let bonus = serde_json::json!({
        "campaign_id": Uuid::from_u128(0xca), "partner_id": PARTNER, "program_id": PROGRAM,
        "amount": { "amount": "80.00", "currency": "USD" }, "occurred_at": at(1, 25),
        "conversions": 40,
    });
    w.consume(message(24, "CampaignBonusAwarded", bonus, at(1, 25)))
        .await
        .unwrap();
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("0.00".into(), "700.00".into())
    );
    // The program report counts them as costs, by kind: the fee and the bonus under their
    // campaign, the MDF reimbursement under none.
    let report = w
        .api
        .get_program_report(Request::new(pb::GetProgramReportRequest {
            program_id: PROGRAM.to_string(),
            from: Some(ts(at(1, 1))),
            to: Some(ts(at(2, 1))),
            campaign_id: String::new(),
            partner_type: String::new(),
            monthly: false,
        }))
        .await
        .unwrap()
        .into_inner();
    let costs: Vec<(String, String, String, String, String)> = report
        .rows
        .iter()
        .map(|r| {
            (
                r.campaign_id.clone(),
                r.campaign_fees.clone(),
                r.campaign_bonuses.clone(),
                r.mdf_reimbursements.clone(),
                r.total_cost.clone(),
            )
        })
        .collect();
    assert_eq!(
        costs,
        vec![
            (
                String::new(),
                "0.00".into(),
                "0.00".into(),
                "120.00".into(),
                "120.00".into()
            ),
            (
                Uuid::from_u128(0xca).to_string(),
                "500.00".into(),
                "80.00".into(),
                "0.00".into(),
                "580.00".into()
            ),
        ]
    );
    // A credit of a fraction of a cent is refused with the reason; nothing is written.
    let odd = serde_json::json!({
        "claim_id": Uuid::from_u128(0xc1a2), "partner_id": PARTNER, "program_id": PROGRAM,
        "amount": { "amount": "1.005", "currency": "USD" }, "occurred_at": at(1, 20),
    });
    let err = w
        .consume(message(23, "MdfReimbursementApproved", odd, at(1, 20)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HandleError::Permanent(ref m) if m.contains("minor unit")),
        "{err:?}"
    );
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("0.00".into(), "700.00".into())
    );
}

#[tokio::test]
async fn a_conversion_rejected_by_compliance_reverses_what_is_left_of_its_commission_overrides_included(
) {
    let w = world().await;
    w.sell(1, 100, "100.00", at(1, 10)).await;
    let refund = serde_json::json!({
        "refund_id": Uuid::from_u128(901), "conversion_id": Uuid::from_u128(100),
        "amount": { "amount": "25.00", "currency": "USD" }, "occurred_at": at(1, 12),
    });
    w.consume(message(2, "ConversionRefunded", refund, at(1, 12)))
        .await
        .unwrap();
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("7.50".into(), "0.00".into())
    );
    let rejected = serde_json::json!({
        "conversion_id": Uuid::from_u128(100), "program_id": PROGRAM, "partner_id": PARTNER,
        "rule": "self_referral", "reason": "customer domain equals the partner's",
        "occurred_at": at(1, 14),
    });
    let mut m = message(3, "ConversionRejected", rejected.clone(), at(1, 14));
    m.subject = "pl.compliance.ConversionRejected".into();
    w.consume(m).await.unwrap();
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("0.00".into(), "0.00".into())
    );
    assert_eq!(
        w.balances(PARENT, None).await,
        ("0.00".into(), "0.00".into())
    );
    // A redelivered rejection reverses nothing twice.
    w.consume(message(3, "ConversionRejected", rejected, at(1, 14)))
        .await
        .unwrap();
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("0.00".into(), "0.00".into())
    );
}

#[tokio::test]
async fn a_conversion_shows_its_accrual_and_reversals_and_a_partner_its_payout_blockers() {
    let w = world().await;
    let unknown = w
        .api
        .get_conversion_accrual(Request::new(pb::GetConversionAccrualRequest {
            conversion_id: Uuid::from_u128(100).to_string(),
            wait_ms: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!unknown.accrued, "not consumed yet");
    w.sell(1, 100, "100.00", at(1, 10)).await;
    let refund = serde_json::json!({
        "refund_id": Uuid::from_u128(901), "conversion_id": Uuid::from_u128(100),
        "amount": { "amount": "25.00", "currency": "USD" }, "occurred_at": at(1, 12),
    });
    w.consume(message(2, "ConversionRefunded", refund, at(1, 12)))
        .await
        .unwrap();
    let a = w
        .api
        .get_conversion_accrual(Request::new(pb::GetConversionAccrualRequest {
            conversion_id: Uuid::from_u128(100).to_string(),
            wait_ms: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(a.accrued);
    assert_eq!(a.partners.len(), 1);
    assert_eq!(a.partners[0].open.as_ref().unwrap().amount, "7.50");
    assert_eq!(
        a.partners[0].reversal_ids,
        vec![Uuid::from_u128(901).to_string()]
    );

    let e = w
        .api
        .get_payout_eligibility(Request::new(pb::GetPayoutEligibilityRequest {
            partner_id: PARTNER.to_string(),
            as_of: Some(ts(at(2, 1))),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!e.eligible);
    let codes: Vec<&str> = e.blockers.iter().map(|b| b.code.as_str()).collect();
    assert!(
        codes.contains(&"no_valid_tax_form") && codes.contains(&"identity_not_verified"),
        "{codes:?}"
    );
    let err = w
        .api
        .get_payout_eligibility(Request::new(pb::GetPayoutEligibilityRequest {
            partner_id: PARTNER.to_string(),
            as_of: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

/// Regression (found in review): a conversion credited to two partners, one paid in another
/// currency without a rate, used to accrue the first partner and park the rest — leaving its
/// override, customer credit and index (which refunds look for) unwritten until the release.
#[tokio::test]
async fn a_conversion_waits_for_a_missing_rate_as_a_whole_before_any_partner_accrues() {
    let w = world().await;
    const EURO_PARTNER: Uuid = Uuid::from_u128(0xa3);
    const EURO_PLAN: Uuid = Uuid::from_u128(0xb2);
    let mut euro = plan();
    euro.plan_id = EURO_PLAN;
    euro.payout_currency = Currency::EUR;
    euro.minimum_payout = Money::from_minor_units(5000, Currency::EUR);
    euro.overrides = vec![];
    w.api
        .publish_plan_version(Request::new(pb::PublishPlanVersionRequest {
            context: ctx("plan-eur"),
            plan_id: EURO_PLAN.to_string(),
            plan_json: serde_json::to_string(&euro).unwrap(),
        }))
        .await
        .unwrap();
    w.api
        .assign_plan(Request::new(pb::AssignPlanRequest {
            context: ctx("assign-eur"),
            partner_id: EURO_PARTNER.to_string(),
            plan_id: EURO_PLAN.to_string(),
            effective_from: Some(ts(at(1, 1))),
            ..Default::default()
        }))
        .await
        .unwrap();
    let mut both = sale(120, "100.00");
    both["shares"] = serde_json::json!([
        { "partner_id": PARTNER, "weight": "0.5" },
        { "partner_id": EURO_PARTNER, "weight": "0.5" },
    ]);
    w.consume(message(30, "ConversionAttributed", both, at(1, 10)))
        .await
        .unwrap();
    // Nobody accrued, not even the partner paid in USD.
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("none".into(), "none".into())
    );
    let waiting = w.awaiting_fx("USD", "EUR").await;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].partner_id, EURO_PARTNER.to_string());
    let recorded = w
        .api
        .record_fx_rate(Request::new(pb::RecordFxRateRequest {
            context: ctx("fx-usd-eur"),
            from_currency: "USD".into(),
            to_currency: "EUR".into(),
            date: Some(ts(at(1, 10))),
            rate: "0.90".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recorded.released_accruals, 1);
    // 10 % of the 50.00 USD share; the EUR partner: 10 % of 50.00 USD × 0.90.
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("5.00".into(), "0.00".into())
    );
    assert_eq!(w.balances(PARENT, None).await.0, "1.00");
    let accrual = w
        .api
        .get_conversion_accrual(Request::new(pb::GetConversionAccrualRequest {
            conversion_id: Uuid::from_u128(120).to_string(),
            wait_ms: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(accrual.accrued, "the index refunds look for is written");
    assert_eq!(accrual.partners.len(), 2);

    // Every version of a plan pays in one currency.
    let mut v2 = euro;
    v2.version = 2;
    v2.effective_from = at(2, 1);
    v2.payout_currency = Currency::GBP;
    let err = w
        .api
        .publish_plan_version(Request::new(pb::PublishPlanVersionRequest {
            context: ctx("plan-eur-2"),
            plan_id: EURO_PLAN.to_string(),
            plan_json: serde_json::to_string(&v2).unwrap(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("cannot pay in GBP"),
        "{}",
        err.message()
    );
}

/// Regression (found in review): a rejection or refund that arrived before its conversion's
/// accrual was retried on the bus and dead-lettered within seconds, so the commission was
/// never reversed. It now waits and the accrual applies it.
#[tokio::test]
async fn a_rejection_and_a_refund_that_arrive_before_the_accrual_are_applied_when_it_lands() {
    let w = world().await;
    let refund = serde_json::json!({
        "refund_id": Uuid::from_u128(910), "conversion_id": Uuid::from_u128(100),
        "amount": { "amount": "25.00", "currency": "USD" }, "occurred_at": at(1, 12),
    });
    w.consume(message(2, "ConversionRefunded", refund, at(1, 12)))
        .await
        .unwrap();
    let rejected = serde_json::json!({
        "conversion_id": Uuid::from_u128(101), "program_id": PROGRAM, "partner_id": PARTNER,
        "rule": "cookie_stuffing", "reason": "click 2 s before the sale", "occurred_at": at(1, 14),
    });
    w.consume(message(3, "ConversionRejected", rejected, at(1, 14)))
        .await
        .unwrap();
    // Nothing to reverse yet, and nothing lost.
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("none".into(), "none".into())
    );
    w.sell(1, 100, "100.00", at(1, 10)).await;
    w.sell(4, 101, "300.00", at(1, 10)).await;
    // 10 % of 100 less its 25 % refund; the rejected 300 sale earns nothing.
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("7.50".into(), "0.00".into())
    );
    assert_eq!(w.balances(PARENT, None).await.0, "1.50");
    // Redelivering the sale applies nothing twice.
    w.sell(1, 100, "100.00", at(1, 10)).await;
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("7.50".into(), "0.00".into())
    );
}

/// Regression (found in review): one waiting conversion that could never be accrued made every
/// release of its pair and date fail, so the others waited forever.
#[tokio::test]
async fn a_broken_waiting_conversion_stays_listed_and_does_not_hold_back_the_others() {
    use pl_commissions::fx_wait::{FxWaitCommand, FxWaiting, Waiting, STREAM};
    let w = world().await;
    let mut eur = sale(101, "100.00");
    eur["gross"]["currency"] = "EUR".into();
    w.consume(message(5, "ConversionAttributed", eur, at(1, 10)))
        .await
        .unwrap();
    // A parked entry whose event no longer reads as a conversion.
    let broken: pl_bus::IntegrationEvent = serde_json::from_value(serde_json::json!({
        "id": Uuid::from_u128(0xbad), "type": "ConversionAttributed", "schema_version": 1,
        "stream": "conversion-x", "version": 0, "position": 0,
        "occurred_at": at(1, 10), "recorded_at": at(1, 10),
        "correlation_id": null, "causation_id": null, "data": {"not": "a conversion"},
    }))
    .unwrap();
    let parked = Waiting {
        conversion_id: Uuid::from_u128(0xbad),
        program_id: PROGRAM,
        partner_id: PARTNER,
        from: Currency::EUR,
        to: Currency::USD,
        date: at(1, 10).date_naive(),
        occurred_at: at(1, 9),
        event: broken,
    };
    pl_runtime::aggregate::execute::<FxWaiting>(
        w.store.as_ref(),
        STREAM,
        &FxWaitCommand::Park(Box::new(parked)),
        &pl_runtime::CommandMeta {
            id_seed: Uuid::from_u128(0x5eed),
            occurred_at: at(1, 10),
            correlation_id: None,
            causation_id: None,
            trace_context: BTreeMap::new(),
        },
    )
    .await
    .unwrap();
    assert_eq!(w.awaiting_fx("EUR", "USD").await.len(), 2);
    let recorded = w.record_rate("fx-1", at(1, 10), "1.10").await;
    assert_eq!(recorded.released_accruals, 1);
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("11.00".into(), "0.00".into())
    );
    let left = w.awaiting_fx("EUR", "USD").await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].conversion_id, Uuid::from_u128(0xbad).to_string());
}

// Waiting for an accrual to become visible (`wait_ms`). On paused time the clock moves only
// when every task is idle, so a wait that returns with the clock unmoved was woken by the
// consumer's signal, not by a periodic re-check or its end.

fn accrual_request(conversion: u128, wait_ms: u32) -> Request<pb::GetConversionAccrualRequest> {
    Request::new(pb::GetConversionAccrualRequest {
        conversion_id: Uuid::from_u128(conversion).to_string(),
        wait_ms,
    })
}

#[tokio::test(start_paused = true)]
async fn a_wait_returns_the_accrual_as_soon_as_the_conversion_is_accrued() {
    let w = world().await;
    let mut wait = w.api.get_conversion_accrual(accrual_request(100, 10_000));
    assert!(
        futures::poll!(&mut wait).is_pending(),
        "nothing accrued yet"
    );
    assert_eq!(w.api.caches().visible.len(), 1);
    let started = tokio::time::Instant::now();
    w.sell(1, 100, "100.00", at(1, 10)).await;
    let a = wait.await.unwrap().into_inner();
    assert!(a.accrued);
    assert_eq!(a.partners.len(), 1);
    assert_eq!(a.partners[0].open.as_ref().unwrap().amount, "10.00");
    assert_eq!(started.elapsed(), Duration::ZERO, "woken by the accrual");
    assert!(w.api.caches().visible.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_wait_on_a_conversion_already_accrued_answers_at_once() {
    let w = world().await;
    w.sell(1, 100, "100.00", at(1, 10)).await;
    let started = tokio::time::Instant::now();
    let waited = w
        .api
        .get_conversion_accrual(accrual_request(100, 10_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.elapsed(), Duration::ZERO);
    let at_once = w
        .api
        .get_conversion_accrual(accrual_request(100, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(waited.accrued);
    assert_eq!(waited, at_once);
}

#[tokio::test(start_paused = true)]
async fn a_wait_on_a_conversion_parked_for_its_fx_rate_returns_when_the_rate_releases_it() {
    let w = world().await;
    let mut eur = sale(101, "100.00");
    eur["gross"]["currency"] = "EUR".into();
    w.consume(message(5, "ConversionAttributed", eur, at(1, 10)))
        .await
        .unwrap();
    let mut wait = w.api.get_conversion_accrual(accrual_request(101, 10_000));
    assert!(
        futures::poll!(&mut wait).is_pending(),
        "parked, not accrued"
    );
    let started = tokio::time::Instant::now();
    assert_eq!(
        w.record_rate("fx-1", at(1, 10), "1.10")
            .await
            .released_accruals,
        1
    );
    let a = wait.await.unwrap().into_inner();
    assert!(a.accrued);
    assert_eq!(a.partners[0].open.as_ref().unwrap().amount, "11.00");
    assert_eq!(started.elapsed(), Duration::ZERO, "woken by the release");
}

#[tokio::test(start_paused = true)]
async fn a_wait_that_ends_answers_not_accrued_as_without_waiting_and_leaves_no_waiter() {
    let w = world().await;
    let started = tokio::time::Instant::now();
    let waited = w
        .api
        .get_conversion_accrual(accrual_request(100, 250))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    let at_once = w
        .api
        .get_conversion_accrual(accrual_request(100, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(!waited.accrued);
    assert_eq!(waited, at_once);
    assert!(w.api.caches().visible.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_waiting_leaves_no_waiter_behind() {
    let w = world().await;
    let mut wait = w.api.get_conversion_accrual(accrual_request(100, 10_000));
    assert!(futures::poll!(&mut wait).is_pending());
    assert_eq!(w.api.caches().visible.len(), 1);
    // What tonic does with the handler when the caller cancels or its deadline passes.
    drop(wait);
    assert!(w.api.caches().visible.is_empty());
}

#[tokio::test]
async fn a_wait_longer_than_the_limit_is_refused_with_the_field_and_the_limit() {
    let w = world().await;
    let limit = pl_commissions::visible::MAX_WAIT_MS;
    let err = w
        .api
        .get_conversion_accrual(accrual_request(100, limit + 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("wait_ms: at most 10000 (milliseconds), got 10001"),
        "{}",
        err.message()
    );
    assert!(w.api.caches().visible.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_wait_beyond_the_table_of_waiting_callers_is_refused_as_exhausted() {
    let w = world().await;
    let mut waits = Vec::with_capacity(pl_commissions::visible::MAX_WAITERS);
    for _ in 0..pl_commissions::visible::MAX_WAITERS {
        let mut wait = w.api.get_conversion_accrual(accrual_request(100, 10_000));
        assert!(futures::poll!(&mut wait).is_pending());
        waits.push(wait);
    }
    let err = w
        .api
        .get_conversion_accrual(accrual_request(100, 10_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(
        err.message()
            .contains("too many callers waiting for accruals (limit 10000)"),
        "{}",
        err.message()
    );
    // Answering at once needs no place in the table.
    assert!(
        !w.api
            .get_conversion_accrual(accrual_request(100, 0))
            .await
            .unwrap()
            .into_inner()
            .accrued
    );
    drop(waits);
    assert!(w.api.caches().visible.is_empty());
}

// ----- batches: what the bus's lanes hand over when messages queue up ----------------------------

/// A conversion of `gross` USD by `customer`, credited to `shares` (partner, weight).
fn conversion(
    conversion: u128,
    customer: &str,
    gross: &str,
    shares: &[(Uuid, &str)],
) -> serde_json::Value {
    let shares: Vec<_> = shares
        .iter()
        .map(|(partner, weight)| serde_json::json!({ "partner_id": partner, "weight": weight }))
        .collect();
    serde_json::json!({
        "conversion_id": Uuid::from_u128(conversion), "program_id": PROGRAM,
        "kind": "CONVERSION_KIND_SALE", "customer_id": customer,
        "gross": { "amount": gross, "currency": "USD" }, "occurred_at": at(1, 10),
        "shares": shares,
    })
}

fn refund(id: u128, refund: u128, conversion: u128, amount: &str) -> Message {
    let data = serde_json::json!({
        "refund_id": Uuid::from_u128(refund), "conversion_id": Uuid::from_u128(conversion),
        "amount": { "amount": amount, "currency": "USD" }, "occurred_at": at(1, 12),
    });
    message(id, "ConversionRefunded", data, at(1, 12))
}

/// Counts appends and reads of each stream, and fails appends to one stream while `failing`
/// is set (a store outage).
#[derive(Debug, Default)]
struct Flaky {
    appends: std::sync::atomic::AtomicUsize,
    reads: std::sync::Mutex<BTreeMap<String, usize>>,
    failing: std::sync::Mutex<Option<String>>,
}

type FlakyLog = Hooked<MemoryLog, Flaky>;

#[async_trait::async_trait]
impl StoreHooks for Flaky {
    async fn before_append(&self, _: &dyn EventStore, stream: &str) -> Result<(), LogError> {
        if self.failing.lock().unwrap().as_deref() == Some(stream) {
            return Err(LogError::Closed);
        }
        self.appends
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn before_read_stream(&self, stream: &str) {
        *self
            .reads
            .lock()
            .unwrap()
            .entry(stream.to_owned())
            .or_default() += 1;
    }
}

fn flaky() -> Arc<FlakyLog> {
    Arc::new(FlakyLog::default())
}

/// Every event written, per stream, sorted by id: (id, type, data).
async fn written(
    store: &dyn pl_eventlog::EventStore,
) -> BTreeMap<String, Vec<(Uuid, String, bytes::Bytes)>> {
    let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for e in store.read_all(0, 100_000).await.unwrap() {
        out.entry(e.stream.clone())
            .or_default()
            .push((e.id, e.event_type.clone(), e.data.clone()));
    }
    for events in out.values_mut() {
        events.sort();
    }
    out
}

const NO_PLAN: Uuid = Uuid::from_u128(0xdd);

/// Sales of the partner, its parent's own sale, a conversion shared by both, a redelivery, a
/// refund between conversions, a partner without a plan, a refund that arrives before its
/// conversion, and sales of a partner on a recurring share (its customer credited).
fn mixed_messages() -> Vec<Message> {
    let sale_of = |id: u128, conv: u128, customer: &str, gross: &str, shares: &[(Uuid, &str)]| {
        message(
            id,
            "ConversionAttributed",
            conversion(conv, customer, gross, shares),
            at(1, 10),
        )
    };
    vec![
        sale_of(1, 100, "cust-1", "100.00", &[(PARTNER, "1")]),
        sale_of(2, 101, "cust-2", "50.00", &[(PARENT, "1")]),
        sale_of(
            3,
            102,
            "cust-3",
            "80.00",
            &[(PARTNER, "0.5"), (PARENT, "0.5")],
        ),
        sale_of(1, 100, "cust-1", "100.00", &[(PARTNER, "1")]),
        refund(4, 900, 100, "25.00"),
        sale_of(5, 103, "cust-1", "40.00", &[(PARTNER, "1")]),
        sale_of(6, 104, "cust-4", "10.00", &[(NO_PLAN, "1")]),
        refund(7, 901, 105, "30.00"),
        sale_of(8, 105, "cust-5", "60.00", &[(PARTNER, "1")]),
        sale_of(9, 106, "cust-5", "20.00", &[(PARTNER, "1")]),
        // A recurring share's customers are credited: one shared with the partner, then the
        // sharer's alone (credited once).
        sale_of(
            10,
            107,
            "cust-6",
            "200.00",
            &[(SHARER, "0.5"), (PARTNER, "0.5")],
        ),
        sale_of(11, 108, "cust-6", "100.00", &[(SHARER, "1")]),
    ]
}

#[tokio::test]
async fn a_batch_of_messages_writes_exactly_what_they_write_one_at_a_time_in_fewer_appends() {
    let (one_by_one, batched) = (flaky(), flaky());
    let single = world_on(one_by_one.clone()).await;
    let batch = world_on(batched.clone()).await;
    let before = (
        one_by_one
            .hooks
            .appends
            .load(std::sync::atomic::Ordering::Relaxed),
        batched
            .hooks
            .appends
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    for m in mixed_messages() {
        single.consume(m).await.unwrap();
    }
    let outcomes = pl_commissions::consumer::handle_batch(
        batch.store.as_ref(),
        &batch.api.caches(),
        &mixed_messages(),
    )
    .await;
    assert_eq!(outcomes, vec![Ok(()); 12]);
    let batch_written = written(batched.as_ref()).await;
    assert_eq!(written(one_by_one.as_ref()).await, batch_written);
    // The sharer's customer is credited, once; the 10% plan's customers are not.
    let credited: Vec<_> = batch_written
        .iter()
        .filter(|(stream, _)| stream.starts_with("customer-"))
        .collect();
    assert_eq!(credited.len(), 1, "{credited:?}");
    assert_eq!(credited[0].1.len(), 1);
    let credit = String::from_utf8_lossy(&credited[0].1[0].2);
    assert!(
        credit.contains(&SHARER.to_string()) && credit.contains(&RECURRING_PLAN.to_string()),
        "{credit}"
    );
    // 10% of 100 less a quarter, of half of 80, of 40, of 60 less half, of 20, of half of 200.
    assert_eq!(
        batch.balances(PARTNER, None).await,
        ("30.50".into(), "0.00".into())
    );
    // The sharer: 10% of half of 200 and of 100.
    assert_eq!(
        batch.balances(SHARER, None).await,
        ("20.00".into(), "0.00".into())
    );
    assert_eq!(
        batch.balances(SHARER, None).await,
        single.balances(SHARER, None).await
    );
    assert_eq!(
        batch.balances(PARTNER, None).await,
        single.balances(PARTNER, None).await
    );
    assert_eq!(
        batch.balances(PARENT, None).await,
        single.balances(PARENT, None).await
    );
    let appends = (
        one_by_one
            .hooks
            .appends
            .load(std::sync::atomic::Ordering::Relaxed)
            - before.0,
        batched
            .hooks
            .appends
            .load(std::sync::atomic::Ordering::Relaxed)
            - before.1,
    );
    assert!(
        appends.1 < appends.0,
        "appends one by one / batched: {appends:?}"
    );
}

#[tokio::test]
async fn a_batch_reads_each_plan_and_assignment_once_and_accrues_as_one_at_a_time_does() {
    let (one_by_one, batched) = (flaky(), flaky());
    let single = world_on(one_by_one.clone()).await;
    let batch = world_on(batched.clone()).await;
    let sales = || -> Vec<Message> {
        (0..8_u128)
            .map(|i| {
                message(
                    10 + i,
                    "ConversionAttributed",
                    conversion(200 + i, &format!("cust-{i}"), "100.00", &[(PARTNER, "1")]),
                    at(1, 10),
                )
            })
            .collect()
    };
    let setup_reads = |store: &FlakyLog| {
        let reads = store.hooks.reads.lock().unwrap();
        [
            pl_commissions::setup::assignment_stream(PARTNER),
            pl_commissions::network::stream(PROGRAM),
            pl_commissions::setup::plan_stream(PLAN),
        ]
        .map(|s| reads.get(&s).copied().unwrap_or(0))
    };
    let before = (setup_reads(&one_by_one), setup_reads(&batched));
    for m in sales() {
        single.consume(m).await.unwrap();
    }
    let outcomes =
        pl_commissions::consumer::handle_batch(batched.as_ref(), &batch.api.caches(), &sales())
            .await;
    assert_eq!(outcomes, vec![Ok(()); 8]);
    let read = |now: [usize; 3], then: [usize; 3]| [0, 1, 2].map(|i| now[i] - then[i]);
    // The partner's assignment, its program's network (its upline) and the plan: once each
    // for the whole batch.
    assert_eq!(read(setup_reads(&batched), before.1), [1, 1, 1]);
    assert!(read(setup_reads(&one_by_one), before.0)[0] >= 8);
    assert_eq!(
        written(one_by_one.as_ref()).await,
        written(batched.as_ref()).await
    );
    // 10% of eight sales of 100 for the partner, 2% for its parent.
    assert_eq!(
        batch.balances(PARTNER, None).await,
        ("80.00".into(), "0.00".into())
    );
    assert_eq!(
        batch.balances(PARENT, None).await,
        ("16.00".into(), "0.00".into())
    );
}

#[tokio::test]
async fn clicks_published_between_conversions_do_not_split_their_batch() {
    // Attribution publishes each recorded touchpoint (for compliance) on the conversions'
    // subject tree and ordering key: a lane's batch interleaves them with the conversions.
    let store = flaky();
    let w = world_on(store.clone()).await;
    let mut messages = Vec::new();
    for i in 0..8_u128 {
        messages.push(message(
            100 + i,
            "TouchpointRecorded",
            serde_json::json!({ "touchpoint_id": Uuid::from_u128(300 + i), "program_id": PROGRAM }),
            at(1, 9),
        ));
        messages.push(message(
            10 + i,
            "ConversionAttributed",
            conversion(200 + i, &format!("cust-{i}"), "100.00", &[(PARTNER, "1")]),
            at(1, 10),
        ));
    }
    let plan_reads = || {
        store
            .hooks
            .reads
            .lock()
            .unwrap()
            .get(&pl_commissions::setup::plan_stream(PLAN))
            .copied()
            .unwrap_or(0)
    };
    let before = plan_reads();
    let outcomes =
        pl_commissions::consumer::handle_batch(w.store.as_ref(), &w.api.caches(), &messages).await;
    assert_eq!(
        outcomes,
        vec![Ok(()); 16],
        "every click is acked, every sale accrued"
    );
    assert_eq!(
        plan_reads() - before,
        1,
        "the eight sales are accrued as one run"
    );
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("80.00".into(), "0.00".into())
    );
}

#[tokio::test]
async fn an_event_type_listed_as_consumed_always_has_a_handler() {
    let w = world().await;
    for (i, event_type) in pl_commissions::consumer::CONSUMED_EVENT_TYPES
        .iter()
        .enumerate()
    {
        let m = message(
            900 + i as u128,
            event_type,
            serde_json::json!({}),
            at(1, 10),
        );
        let outcome = w.consume(m).await;
        assert!(
            !format!("{outcome:?}").contains("has no handler"),
            "{event_type}: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn a_broken_message_in_a_batch_is_refused_alone_and_the_rest_accrues() {
    let w = world().await;
    let mut messages = mixed_messages();
    messages[1] = message(
        2,
        "ConversionAttributed",
        serde_json::json!({ "conversion_id": "x" }),
        at(1, 10),
    );
    let outcomes =
        pl_commissions::consumer::handle_batch(w.store.as_ref(), &w.api.caches(), &messages).await;
    assert!(
        matches!(outcomes[1], Err(HandleError::Permanent(_))),
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .enumerate()
            .all(|(i, o)| i == 1 || o.is_ok()),
        "{outcomes:?}"
    );
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("30.50".into(), "0.00".into())
    );
}

#[tokio::test]
async fn a_message_to_retry_ends_the_batch_and_a_retry_from_there_completes_it_once() {
    let store = flaky();
    let w = world_on(store.clone()).await;
    // The store refuses writes to the index of the third conversion: the batch cannot finish.
    *store.hooks.failing.lock().unwrap() = Some(format!("accrued-{}", Uuid::from_u128(102)));
    let outcomes = pl_commissions::consumer::handle_batch(
        w.store.as_ref(),
        &w.api.caches(),
        &mixed_messages(),
    )
    .await;
    assert_eq!(outcomes[..2], [Ok(()), Ok(())]);
    assert!(
        outcomes[2..]
            .iter()
            .all(|o| matches!(o, Err(HandleError::Retry(_)))),
        "{outcomes:?}"
    );
    *store.hooks.failing.lock().unwrap() = None;
    let rest = pl_commissions::consumer::handle_batch(
        w.store.as_ref(),
        &w.api.caches(),
        &mixed_messages().split_off(2),
    )
    .await;
    assert_eq!(rest, vec![Ok(()); 10]);
    let reference = world().await;
    for m in mixed_messages() {
        reference.consume(m).await.unwrap();
    }
    for partner in [PARTNER, PARENT, SHARER] {
        assert_eq!(
            w.balances(partner, None).await,
            reference.balances(partner, None).await
        );
    }
    assert_eq!(
        written(store.as_ref()).await,
        written(reference.store.as_ref()).await
    );
}

/// Two partners credited on one sale under the same parent: the parent's book posted both
/// overrides under one transaction id, so the second broke every balance of the parent
/// ("transaction ... was already applied"). Each is its own transaction now, and so is each
/// override's reversal.
#[tokio::test]
async fn partners_sharing_a_parent_on_one_sale_each_pay_it_an_override_and_a_refund_reverses_both()
{
    const SIBLING: Uuid = Uuid::from_u128(0xa3);
    let w = world().await;
    w.api
        .assign_plan(Request::new(pb::AssignPlanRequest {
            context: ctx("assign-sibling"),
            partner_id: SIBLING.to_string(),
            plan_id: PLAN.to_string(),
            effective_from: Some(ts(at(1, 1))),
            ..Default::default()
        }))
        .await
        .unwrap();
    w.consume(parent_changed(0x9a_0002, SIBLING, Some(PARENT), at(1, 1)))
        .await
        .unwrap();
    let split = conversion(
        100,
        "cust-1",
        "100.00",
        &[(PARTNER, "0.333334"), (SIBLING, "0.666666")],
    );
    w.consume(message(1, "ConversionAttributed", split, at(1, 10)))
        .await
        .unwrap();
    // 10% of 100.00 split 0.333334 / 0.666666: 3.33 and 6.67 (largest remainder to the
    // second, whose remainder is larger); the parent's 2% of 100.00 likewise: 0.67 + 1.33.
    assert_eq!(w.balances(PARTNER, None).await.0, "3.33");
    assert_eq!(w.balances(SIBLING, None).await.0, "6.67");
    assert_eq!(w.balances(PARENT, None).await.0, "2.00");
    w.consume(refund(2, 200, 100, "100.00")).await.unwrap();
    for partner in [PARTNER, SIBLING, PARENT] {
        assert_eq!(w.balances(partner, None).await.0, "0.00", "{partner}");
    }
}

/// A second, different rate for a day already recorded broke a rule (a recorded rate is never
/// changed) and was answered as bad input; the same rate again changes nothing.
#[tokio::test]
async fn a_conflicting_second_fx_rate_for_a_day_is_a_failed_precondition_and_writes_nothing() {
    let w = world().await;
    w.record_rate("rate-1", at(1, 10), "1.10").await;
    w.record_rate("rate-again", at(1, 10), "1.10").await;
    let refused = w
        .api
        .record_fx_rate(Request::new(pb::RecordFxRateRequest {
            context: ctx("rate-2"),
            from_currency: "EUR".into(),
            to_currency: "USD".into(),
            date: Some(ts(at(1, 10))),
            rate: "1.20".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("already has rate 1.10"),
        "{}",
        refused.message()
    );
    let stream = pl_commissions::setup::fx_stream(Currency::EUR, Currency::USD);
    let events = w.store.read_stream(&stream, 0, 100).await.unwrap();
    assert_eq!(events.len(), 1);
}

/// The plan and version an explanation names read back over the API, with the rule it names.
#[tokio::test]
async fn the_plan_version_named_in_an_explanation_reads_back_and_versions_list_in_pages() {
    let w = world().await;
    w.sell(1, 100, "100.00", at(1, 10)).await;
    let mut second = plan();
    second.version = 2;
    second.effective_from = at(3, 1);
    second.rules[0].reward = Reward::PercentOfGross(Percent::new(12).unwrap());
    w.api
        .publish_plan_version(Request::new(pb::PublishPlanVersionRequest {
            context: ctx("plan-2"),
            plan_id: PLAN.to_string(),
            plan_json: serde_json::to_string(&second).unwrap(),
        }))
        .await
        .unwrap();
    let explained = w.explain(PARTNER).await;
    let entry = &explained.entries[0];
    let named = w
        .api
        .get_plan_version(Request::new(pb::GetPlanVersionRequest {
            plan_id: entry.plan_id.clone(),
            version: entry.plan_version,
        }))
        .await
        .unwrap()
        .into_inner();
    let read: PlanVersion = serde_json::from_str(&named.plan_json).unwrap();
    assert_eq!(read, plan());
    assert!(read.rules.iter().any(|r| r.id == entry.rule_id));
    assert_eq!(named.effective_from, Some(ts(at(1, 1))));

    let list = |page_size: u32, page_token: &str| pb::ListPlanVersionsRequest {
        plan_id: PLAN.to_string(),
        page: Some(pl_proto::common::v1::PageRequest {
            page_size,
            page_token: page_token.into(),
        }),
    };
    let first = w
        .api
        .list_plan_versions(Request::new(list(1, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.versions.len(), 1);
    assert_eq!(first.versions[0].version, 1);
    let rest = w
        .api
        .list_plan_versions(Request::new(list(1, &first.next_page_token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.versions[0].version, 2);
    assert_eq!(
        serde_json::from_str::<PlanVersion>(&rest.versions[0].plan_json).unwrap(),
        second
    );
    assert!(rest.next_page_token.is_empty());

    let missing = |plan_id: Uuid, version: u32| {
        w.api
            .get_plan_version(Request::new(pb::GetPlanVersionRequest {
                plan_id: plan_id.to_string(),
                version,
            }))
    };
    assert_eq!(
        missing(PLAN, 3).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    assert_eq!(
        missing(Uuid::from_u128(0xdead), 1)
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    assert_eq!(
        missing(PLAN, 0).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
}

/// A conversion commissions cannot accrue (its partner's plan pays per lot and the sale has
/// none) was refused in silence: dead-lettered on the bus, never accrued, and a caller waiting
/// for its accrual waited out its whole wait. Now the refusal is kept in the log and listed,
/// the waiting caller hears it, and once the cause is gone (the partner moved to a plan that
/// pays on revenue) a retry accrues it exactly once; a second retry runs nothing.
#[tokio::test]
async fn a_refused_conversion_is_listed_answered_and_accrued_once_by_a_retry_after_the_fix() {
    const LOTS_PLAN: Uuid = Uuid::from_u128(0xb7);
    const TRADER: Uuid = Uuid::from_u128(0xa7);
    let w = world().await;
    let mut per_lot = plan();
    per_lot.plan_id = LOTS_PLAN;
    per_lot.overrides = vec![];
    per_lot.rules[0].reward = Reward::PerLot(Money::from_minor_units(500, Currency::USD));
    w.api
        .publish_plan_version(Request::new(pb::PublishPlanVersionRequest {
            context: ctx("plan-lots"),
            plan_id: LOTS_PLAN.to_string(),
            plan_json: serde_json::to_string(&per_lot).unwrap(),
        }))
        .await
        .unwrap();
    let assign = |key: &str, plan_id: Uuid, from: DateTime<Utc>| pb::AssignPlanRequest {
        context: ctx(key),
        partner_id: TRADER.to_string(),
        plan_id: plan_id.to_string(),
        effective_from: Some(ts(from)),
        ..Default::default()
    };
    w.api
        .assign_plan(Request::new(assign("assign-t1", LOTS_PLAN, at(1, 1))))
        .await
        .unwrap();
    let sale = message(
        7,
        "ConversionAttributed",
        conversion(700, "cust-7", "100.00", &[(TRADER, "1")]),
        at(1, 10),
    );
    let recorder = pl_runtime::dead_letters::Recorder::new(
        pl_commissions::SERVICE,
        "commissions-conversions",
        Arc::new(FixedClock::at(at(1, 11))),
    );
    let outcome = w.consume(sale.clone()).await;
    let settled = recorder.settle(w.store.as_ref(), &sale, outcome).await;
    assert!(
        matches!(&settled, Err(HandleError::Permanent(r)) if r.contains("lots")),
        "{settled:?}"
    );
    assert_eq!(recorder.refused(), 1);

    // The waiting caller hears the refusal at once.
    let answer = w
        .api
        .get_conversion_accrual(accrual_request(700, 5_000))
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.accrued && answer.refused, "{answer:?}");
    assert!(answer.refusal_reason.contains("lots"), "{answer:?}");

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
        panic!("{listed:?}");
    };
    assert_eq!(letter.message_id, Uuid::from_u128(7).to_string());
    assert_eq!(letter.event_type, "ConversionAttributed");
    assert_eq!(letter.consumer, "commissions-conversions");
    assert_eq!(letter.status, "waiting");
    assert!(letter.reason.contains("lots"), "{letter:?}");
    assert_eq!(letter.refused_at, Some(ts(at(1, 11))));

    let retry = |key: &str| {
        w.api
            .retry_dead_letter(Request::new(pl_proto::common::v1::RetryDeadLetterRequest {
                context: ctx(key),
                letter_id: letter.letter_id.clone(),
            }))
    };
    // Retried before the fix: refused again, and said so.
    let again = retry("retry-1").await.unwrap().into_inner();
    let view = again.letter.unwrap();
    assert!(again.ran);
    assert_eq!((view.status.as_str(), view.retries), ("failed", 1));
    assert!(view.last_retry_reason.contains("lots"), "{view:?}");

    // The fix: the partner is paid on revenue from the 5th on.
    w.api
        .assign_plan(Request::new(assign("assign-t2", PLAN, at(1, 5))))
        .await
        .unwrap();
    let applied = retry("retry-2").await.unwrap().into_inner();
    let view = applied.letter.clone().unwrap();
    assert!(applied.ran);
    assert_eq!((view.status.as_str(), view.retries), ("applied", 2));
    assert_eq!(w.balances(TRADER, None).await.0, "10.00");
    let answer = w
        .api
        .get_conversion_accrual(accrual_request(700, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.accrued, "{answer:?}");

    // Once applied, a retry runs nothing; the same key answers as before.
    let third = retry("retry-3").await.unwrap().into_inner();
    assert!(!third.ran);
    assert_eq!(third.letter.unwrap().retries, 2);
    assert_eq!(retry("retry-2").await.unwrap().into_inner(), applied);
    assert_eq!(w.balances(TRADER, None).await.0, "10.00");
    let waiting = w
        .api
        .list_dead_letters(Request::new(pl_proto::common::v1::ListDeadLettersRequest {
            page: None,
            waiting_only: true,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(waiting.letters.is_empty(), "{waiting:?}");
}

/// Keys the plan schema does not know were dropped without a word: a misspelt condition made
/// its rule match every conversion, a misspelt cap left it uncapped. They are refused by path.
#[tokio::test]
async fn a_plan_with_a_misspelt_key_is_refused_by_its_path_and_nothing_is_written() {
    let w = world().await;
    let mut doc = serde_json::to_value(plan()).unwrap();
    doc["plan_id"] = serde_json::json!(Uuid::from_u128(0xbad).to_string());
    doc["rules"][0]["conditons"] = serde_json::json!({ "conversion_kind": "lead" });
    doc["rules"][0]["cap_per_conversoin"] =
        serde_json::json!({"amount": "5.00", "currency": "USD"});
    let err = w
        .api
        .publish_plan_version(Request::new(pb::PublishPlanVersionRequest {
            context: ctx("plan-misspelt"),
            plan_id: Uuid::from_u128(0xbad).to_string(),
            plan_json: doc.to_string(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    for path in [
        "plan_json.rules.0.conditons: not a field of the plan schema",
        "plan_json.rules.0.cap_per_conversoin: not a field of the plan schema",
    ] {
        assert!(err.message().contains(path), "{path}: {}", err.message());
    }
    let read = w
        .api
        .list_plan_versions(Request::new(pb::ListPlanVersionsRequest {
            plan_id: Uuid::from_u128(0xbad).to_string(),
            page: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(read.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_manual_bonus_is_payable_explained_counted_in_the_program_report_and_undone_by_a_counter()
{
    let w = world().await;
    let adjust = |key: &str, amount: &str, counters: &str| pb::RecordAdjustmentRequest {
        context: ctx(key),
        partner_id: PARTNER.to_string(),
        program_id: PROGRAM.to_string(),
        kind: pb::AdjustmentKind::Bonus as i32,
        amount: Some(pl_proto::common::v1::Money {
            amount: amount.into(),
            currency: "USD".into(),
        }),
        reason: "launch week bonus outside the plan".into(),
        reference: "MKT-88".into(),
        approved_by: "head-of-partnerships".into(),
        counters_adjustment_id: counters.into(),
    };
    let bonus = w
        .api
        .record_adjustment(Request::new(adjust("bonus-1", "25.00", "")))
        .await
        .unwrap()
        .into_inner();
    assert!(
        bonus
            .explanation
            .contains("approved by head-of-partnerships"),
        "{}",
        bonus.explanation
    );
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("0.00".into(), "25.00".into())
    );
    let report = w
        .api
        .get_program_report(Request::new(pb::GetProgramReportRequest {
            program_id: PROGRAM.to_string(),
            from: Some(ts(at(1, 1))),
            to: Some(ts(at(12, 31))),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.rows.len(), 1);
    assert_eq!(report.rows[0].adjustments, "25.00");
    assert_eq!(report.rows[0].total_cost, "25.00");

    // Zero, or no approver, is refused with the field, and nothing is written.
    let mut zero = adjust("bonus-0", "0.00", "");
    zero.approved_by.clear();
    let refused = w
        .api
        .record_adjustment(Request::new(zero))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("amount.amount") && refused.message().contains("approved_by"),
        "{}",
        refused.message()
    );

    // Undone by a counter adjustment, once; never edited.
    w.api
        .record_adjustment(Request::new(adjust(
            "bonus-1-undo",
            "-25.00",
            &bonus.adjustment_id,
        )))
        .await
        .unwrap();
    assert_eq!(
        w.balances(PARTNER, None).await,
        ("0.00".into(), "0.00".into())
    );
    let again = w
        .api
        .record_adjustment(Request::new(adjust(
            "bonus-1-undo-again",
            "-25.00",
            &bonus.adjustment_id,
        )))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert!(
        again.message().contains("countered already"),
        "{}",
        again.message()
    );
}

// ----- partner CRM's hierarchy and tiers -------------------------------------------------------

/// A sale of `gross` USD on `day` of January credited to `partner` alone.
fn sale_on(conversion_id: u128, partner: Uuid, gross: &str, day: u32) -> serde_json::Value {
    let mut c = conversion(conversion_id, "cust-h", gross, &[(partner, "1")]);
    c["occurred_at"] = serde_json::json!(at(1, day));
    c
}

/// The override entries of `partner`'s book: (conversion, amount, hierarchy version named).
async fn overrides_of(w: &World, partner: Uuid) -> Vec<(String, String, String)> {
    let mut found: Vec<_> = w
        .explain(partner)
        .await
        .entries
        .into_iter()
        .filter(|e| e.inputs.contains_key("downline_partner"))
        .map(|e| {
            (
                e.conversion_id,
                e.amount,
                e.inputs
                    .get("hierarchy_version")
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn a_parent_change_mid_month_splits_overrides_at_its_effective_date_and_rewrites_nothing() {
    const NEW_PARENT: Uuid = Uuid::from_u128(0xa4);
    let w = world().await;
    w.sell_on(1, sale_on(501, PARTNER, "100.00", 10)).await;
    // CRM moves the partner under a new parent from the 15th on.
    w.consume(parent_changed(
        0x9a_0010,
        PARTNER,
        Some(NEW_PARENT),
        at(1, 15),
    ))
    .await
    .unwrap();
    w.sell_on(2, sale_on(502, PARTNER, "200.00", 20)).await;
    // A sale of the 12th that arrives after the change still pays the parent of the 12th.
    w.sell_on(3, sale_on(503, PARTNER, "300.00", 12)).await;
    // The program's network: version 0 holds the first link, version 1 the change.
    let id = |n: u128| Uuid::from_u128(n).to_string();
    assert_eq!(
        overrides_of(&w, PARENT).await,
        vec![
            (id(501), "2.00".into(), "0".into()),
            (id(503), "6.00".into(), "1".into()),
        ],
        "the parent keeps what it earned before the change and gets the late sale of the 12th"
    );
    assert_eq!(
        overrides_of(&w, NEW_PARENT).await,
        vec![(id(502), "4.00".into(), "1".into())]
    );
    // The partner's own line names the version too.
    let own = w.explain(PARTNER).await.entries;
    assert!(own
        .iter()
        .all(|e| e.inputs.contains_key("hierarchy_version")));
    // What commissions holds is visible, at any date.
    let account = |day: u32| pb::GetPartnerAccountRequest {
        partner_id: PARTNER.to_string(),
        as_of: Some(ts(at(1, day))),
    };
    // No account is open in this world (CRM's PartnerApplied never came): NOT_FOUND.
    let missing = w.api.get_partner_account(Request::new(account(14))).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
    w.consume(crm(
        0x9a_0011,
        "PartnerApplied",
        serde_json::json!({ "partner_id": PARTNER, "program_id": PROGRAM }),
    ))
    .await
    .unwrap();
    let before = w
        .api
        .get_partner_account(Request::new(account(14)))
        .await
        .unwrap();
    let after = w
        .api
        .get_partner_account(Request::new(account(15)))
        .await
        .unwrap();
    assert_eq!(before.get_ref().upline, vec![PARENT.to_string()]);
    assert_eq!(after.get_ref().upline, vec![NEW_PARENT.to_string()]);
    assert_eq!(after.get_ref().hierarchy_version, 1);
    assert!(after.get_ref().hierarchy_known);
    assert_eq!(after.get_ref().plan_id, PLAN.to_string());
}

#[tokio::test]
async fn a_tier_upgrade_picks_the_tiers_rule_from_its_effective_date() {
    const TIERED_PLAN: Uuid = Uuid::from_u128(0xb7);
    const GOLDIE: Uuid = Uuid::from_u128(0xa7);
    let w = world().await;
    let mut tiered = plan();
    tiered.plan_id = TIERED_PLAN;
    tiered.overrides = vec![];
    let mut gold = tiered.rules[0].clone();
    gold.id = "gold".into();
    gold.conditions.partner_tier = Some("gold".into());
    gold.reward = Reward::PercentOfGross(Percent::new(20).unwrap());
    tiered.rules.push(gold);
    w.api
        .publish_plan_version(Request::new(pb::PublishPlanVersionRequest {
            context: ctx("plan-tiered"),
            plan_id: TIERED_PLAN.to_string(),
            plan_json: serde_json::to_string(&tiered).unwrap(),
        }))
        .await
        .unwrap();
    w.api
        .assign_plan(Request::new(pb::AssignPlanRequest {
            context: ctx("assign-goldie"),
            partner_id: GOLDIE.to_string(),
            plan_id: TIERED_PLAN.to_string(),
            effective_from: Some(ts(at(1, 1))),
            ..Default::default()
        }))
        .await
        .unwrap();
    w.consume(tier_changed(0x9a_0020, GOLDIE, "silver", at(1, 1)))
        .await
        .unwrap();
    w.sell_on(1, sale_on(601, GOLDIE, "100.00", 10)).await;
    w.consume(tier_changed(0x9a_0021, GOLDIE, "gold", at(1, 15)))
        .await
        .unwrap();
    w.sell_on(2, sale_on(602, GOLDIE, "100.00", 20)).await;
    w.sell_on(3, sale_on(603, GOLDIE, "100.00", 14)).await;
    let mut lines: Vec<_> = w
        .explain(GOLDIE)
        .await
        .entries
        .into_iter()
        .map(|e| {
            (
                e.conversion_id,
                e.rule_id,
                e.amount,
                e.inputs.get("partner_tier").cloned().unwrap_or_default(),
            )
        })
        .collect();
    lines.sort();
    let id = |n: u128| Uuid::from_u128(n).to_string();
    assert_eq!(
        lines,
        vec![
            (id(601), "sales".into(), "10.00".into(), "silver".into()),
            (id(602), "gold".into(), "20.00".into(), "gold".into()),
            (id(603), "sales".into(), "10.00".into(), "silver".into()),
        ]
    );
}

#[tokio::test]
async fn a_plan_outside_the_tiers_grant_is_refused_with_the_tier_and_the_plans_it_grants() {
    const SILVER_PLAN: Uuid = Uuid::from_u128(0xb8);
    const NEWCOMER: Uuid = Uuid::from_u128(0xa8);
    let w = world().await;
    let mut silver = plan();
    silver.plan_id = SILVER_PLAN;
    w.api
        .publish_plan_version(Request::new(pb::PublishPlanVersionRequest {
            context: ctx("plan-silver"),
            plan_id: SILVER_PLAN.to_string(),
            plan_json: serde_json::to_string(&silver).unwrap(),
        }))
        .await
        .unwrap();
    // CRM: the program's silver tier may be on SILVER_PLAN only, gold on any plan; the
    // newcomer applied and is silver.
    w.consume(crm(
        0x9a_0030,
        "ProgramTiersChanged",
        serde_json::json!({
            "program_id": PROGRAM, "occurred_at": at(1, 1),
            "tiers": [
                { "code": "silver", "name": "Silver", "rank": 1,
                  "access": { "plan_ids": [SILVER_PLAN], "mdf": false, "deal_registration": false } },
                { "code": "gold", "name": "Gold", "rank": 2,
                  "access": { "plan_ids": [], "mdf": true, "deal_registration": true } },
            ],
        }),
    ))
    .await
    .unwrap();
    w.consume(crm(
        0x9a_0031,
        "PartnerApplied",
        serde_json::json!({ "partner_id": NEWCOMER, "program_id": PROGRAM }),
    ))
    .await
    .unwrap();
    w.consume(tier_changed(0x9a_0032, NEWCOMER, "silver", at(1, 1)))
        .await
        .unwrap();
    let assign = |key: &str, plan: Uuid, day: u32| pb::AssignPlanRequest {
        context: ctx(key),
        partner_id: NEWCOMER.to_string(),
        plan_id: plan.to_string(),
        effective_from: Some(ts(at(1, day))),
        ..Default::default()
    };
    let refused = w
        .api
        .assign_plan(Request::new(assign("assign-n1", PLAN, 1)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("is tier silver")
            && refused.message().contains(&SILVER_PLAN.to_string()),
        "{}",
        refused.message()
    );
    w.api
        .assign_plan(Request::new(assign("assign-n2", SILVER_PLAN, 1)))
        .await
        .unwrap();
    // Gold from the 20th grants any plan from then on, not before.
    w.consume(tier_changed(0x9a_0033, NEWCOMER, "gold", at(1, 20)))
        .await
        .unwrap();
    let before = w
        .api
        .assign_plan(Request::new(assign("assign-n3", PLAN, 19)))
        .await
        .unwrap_err();
    assert_eq!(before.code(), tonic::Code::FailedPrecondition);
    w.api
        .assign_plan(Request::new(assign("assign-n4", PLAN, 20)))
        .await
        .unwrap();
    let stored: Vec<_> = w
        .store
        .read_stream(&format!("assignment-{NEWCOMER}"), 0, 10)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2, "refusals write nothing");
}

#[tokio::test]
async fn a_tier_or_a_parent_typed_into_assign_plan_is_refused_not_ignored() {
    let w = world().await;
    #[allow(deprecated)]
    let typed = pb::AssignPlanRequest {
        context: ctx("assign-typed"),
        partner_id: PARTNER.to_string(),
        plan_id: PLAN.to_string(),
        effective_from: Some(ts(at(2, 1))),
        partner_tier: "gold".into(),
        parent_partner_id: PARENT.to_string(),
    };
    let refused = w.api.assign_plan(Request::new(typed)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("partner_tier")
            && refused.message().contains("parent_partner_id")
            && refused.message().contains("partner CRM"),
        "{}",
        refused.message()
    );
}
