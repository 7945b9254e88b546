//! Builders shared by the scenario tests.
#![allow(dead_code)] // each test binary uses a part of the builders
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use chrono::{DateTime, TimeZone, Utc};
use pl_commission_engine::*;
use pl_money::{Currency, Decimal, Money};
use uuid::Uuid;

pub const PLAN: Uuid = Uuid::from_u128(0x9_0000);
pub const PARTNER: Uuid = Uuid::from_u128(0x1_0001);
pub const PARENT: Uuid = Uuid::from_u128(0x1_0002);
pub const GRANDPARENT: Uuid = Uuid::from_u128(0x1_0003);

pub fn usd(amount: &str) -> Money {
    Money::parse(amount, Currency::USD).unwrap()
}

pub fn eur(amount: &str) -> Money {
    Money::parse(amount, Currency::EUR).unwrap()
}

pub fn d(value: &str) -> Decimal {
    value.parse().unwrap()
}

pub fn pct(value: &str) -> Percent {
    Percent::new(d(value)).unwrap()
}

pub fn at(year: i32, month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, month, day, 12, 0, 0).unwrap()
}

pub fn rule(id: &str, reward: Reward) -> Rule {
    Rule {
        id: id.to_owned(),
        conditions: Conditions::default(),
        reward,
        cap_per_conversion: None,
        cap_per_period: None,
    }
}

pub fn when_kind(mut rule: Rule, kind: ConversionKind) -> Rule {
    rule.conditions.conversion_kind = Some(kind);
    rule
}

/// Version 1 of a USD plan in force from 2024-01-01, grandfathered, carrying negative NGR.
pub fn plan(rules: Vec<Rule>) -> PlanVersion {
    PlanVersion {
        plan_id: PLAN,
        version: 1,
        effective_from: at(2024, 1, 1),
        payout_currency: Currency::USD,
        hold_days: 30,
        minimum_payout: usd("50.00"),
        version_policy: VersionPolicy::Grandfathered,
        net_revenue_policy: NetRevenuePolicy::CarryForwardNegative,
        cpa_recovery: false,
        overrides: Vec::new(),
        rules,
    }
}

/// A conversion of customer "c1" credited wholly to PARTNER, without amounts.
pub fn conversion(n: u128, kind: ConversionKind, occurred_at: DateTime<Utc>) -> ConversionFacts {
    ConversionFacts {
        conversion_id: Uuid::from_u128(0x5_0000 + n),
        source_event_id: Uuid::from_u128(0x6_0000 + n),
        kind,
        occurred_at,
        customer_id: "c1".to_owned(),
        customer_country: None,
        products: Vec::new(),
        gross: None,
        net: None,
        lots: None,
        reseller: None,
        partner_id: PARTNER,
        partner_tier: None,
        weight: Decimal::ONE,
        split: None,
        brand: None,
        upline: Vec::new(),
        fx_rate: None,
    }
}

pub fn sale(n: u128, gross: Money, occurred_at: DateTime<Utc>) -> ConversionFacts {
    ConversionFacts {
        gross: Some(gross),
        ..conversion(n, ConversionKind::Sale, occurred_at)
    }
}

pub fn invoice(n: u128, gross: Money, occurred_at: DateTime<Utc>) -> ConversionFacts {
    ConversionFacts {
        gross: Some(gross),
        ..conversion(n, ConversionKind::SubscriptionInvoice, occurred_at)
    }
}

pub fn ngr_report(n: u128, net: Money, occurred_at: DateTime<Utc>) -> ConversionFacts {
    ConversionFacts {
        net: Some(net),
        ..conversion(n, ConversionKind::NetRevenueReport, occurred_at)
    }
}

pub fn trade(n: u128, lots: &str, occurred_at: DateTime<Utc>) -> ConversionFacts {
    ConversionFacts {
        lots: Some(d(lots)),
        ..conversion(n, ConversionKind::Sale, occurred_at)
    }
}

/// A partner's history under one plan: accrues and applies in order, like the service does.
pub struct History {
    pub plan: PlanVersion,
    pub state: PartnerState,
}

impl History {
    pub fn new(plan: PlanVersion) -> History {
        let state = PartnerState::new(PARTNER, plan.plan_id);
        History { plan, state }
    }

    pub fn accrue(&mut self, facts: &ConversionFacts) -> Accrual {
        let accrual = accrue(&self.plan, &self.state, facts).unwrap();
        self.state.apply(&accrual).unwrap();
        accrual
    }
}

/// The line amounts as text, e.g. `["10.00 USD", "2.00 USD"]`.
pub fn amounts(lines: &[AccrualLine]) -> Vec<String> {
    lines.iter().map(|l| l.amount.to_string()).collect()
}

/// The base line amount, or "none".
pub fn paid(accrual: &Accrual) -> String {
    accrual
        .lines
        .iter()
        .find(|l| l.kind == LineKind::Base)
        .map_or_else(|| "none".to_owned(), |l| l.amount.to_string())
}
