//! What the engine needs from a partner's earlier history under one plan. The caller owns it and
//! evolves it only with the engine's own outputs ([`PartnerState::apply`],
//! [`PartnerState::apply_churn`]), so replaying the same outputs in order rebuilds it exactly.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pl_money::{Currency, Money};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Accrual, EngineError, Period};

/// One partner's history under one plan (all its versions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerState {
    partner_id: Uuid,
    plan_id: Uuid,
    periods: BTreeMap<Period, BTreeMap<String, PeriodTotals>>,
    customers: BTreeMap<String, CustomerState>,
}

/// A rule's totals for a partner in one calendar month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodTotals {
    /// Credited volume (weighted): payout-currency revenue, conversions or lots. Only volume
    /// rewards count it; zero for the others.
    pub volume: Decimal,
    /// Sum of the rule's rounded formula amounts before caps (what the tiers entitle to).
    pub earned: Money,
    /// Sum of the rule's amounts after caps, before CPA recovery: what counts toward the
    /// period cap.
    pub accrued: Money,
}

impl PeriodTotals {
    /// Nothing yet, in `currency`.
    pub fn zero(currency: Currency) -> PeriodTotals {
        PeriodTotals {
            volume: Decimal::ZERO,
            earned: Money::zero(currency),
            accrued: Money::zero(currency),
        }
    }
}

/// What the engine remembers of one customer of the partner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerState {
    /// Business time of the customer's first paid invoice (sale or subscription invoice):
    /// the start of customer month 1.
    pub first_paid_invoice_at: Option<DateTime<Utc>>,
    /// The plan version the customer was last paid under (grandfathering).
    pub locked_version: Option<u32>,
    /// When the customer churned; recurring shares end then.
    pub churned_at: Option<DateTime<Utc>>,
    /// Net revenue position of the latest reported period.
    pub net_revenue: Option<NetRevenuePosition>,
    /// Under a ringfenced plan, the position of each brand on its own (the brand of reports
    /// without one is the empty string).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub net_revenue_by_brand: BTreeMap<String, NetRevenuePosition>,
    /// Upfront CPA not yet recovered from revenue share.
    pub cpa_outstanding: Option<Money>,
}

/// Net revenue of the latest period a customer was reported in, all credited (weighted) and in
/// the payout currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRevenuePosition {
    /// The period.
    pub period: Period,
    /// Negative net revenue carried in from earlier periods (zero or less).
    pub carry_in: Money,
    /// Net revenue reported in the period so far.
    pub net: Money,
    /// Revenue-share lines paid for the period so far (after caps and recovery).
    pub paid: Money,
    /// Revenue share of the period applied to CPA recovery so far.
    pub recovered: Money,
}

impl PartnerState {
    /// The state before any conversion.
    pub fn new(partner_id: Uuid, plan_id: Uuid) -> PartnerState {
        PartnerState {
            partner_id,
            plan_id,
            periods: BTreeMap::new(),
            customers: BTreeMap::new(),
        }
    }

    /// The partner.
    pub fn partner_id(&self) -> Uuid {
        self.partner_id
    }

    /// The plan.
    pub fn plan_id(&self) -> Uuid {
        self.plan_id
    }

    /// What is known of a customer.
    pub fn customer(&self, customer_id: &str) -> Option<&CustomerState> {
        self.customers.get(customer_id)
    }

    /// A rule's totals in a period.
    pub fn period_totals(&self, period: Period, rule_id: &str) -> Option<&PeriodTotals> {
        self.periods
            .get(&period)
            .and_then(|rules| rules.get(rule_id))
    }

    /// Evolves the state with an accrual the engine computed from it (replay in the order the
    /// accruals were computed). Errors, changing nothing, if the accrual is for another partner
    /// or plan.
    pub fn apply(&mut self, accrual: &Accrual) -> Result<(), EngineError> {
        self.check_owner(accrual.partner_id, accrual.plan_id)?;
        let effects = &accrual.effects;
        let totals = match &effects.period {
            Some(delta) => {
                let before = self
                    .period_totals(delta.period, &delta.rule_id)
                    .cloned()
                    .unwrap_or_else(|| PeriodTotals::zero(delta.earned.currency()));
                Some(PeriodTotals {
                    volume: before
                        .volume
                        .checked_add(delta.volume)
                        .ok_or(EngineError::Overflow)?,
                    earned: before.earned.checked_add(delta.earned)?,
                    accrued: before.accrued.checked_add(delta.accrued)?,
                })
            }
            None => None,
        };
        if let (Some(delta), Some(totals)) = (&effects.period, totals) {
            self.periods
                .entry(delta.period)
                .or_default()
                .insert(delta.rule_id.clone(), totals);
        }
        let touches_customer = effects.first_paid_invoice_at.is_some()
            || effects.lock_version.is_some()
            || effects.net_revenue.is_some()
            || effects.cpa_outstanding.is_some();
        if touches_customer {
            let customer = self
                .customers
                .entry(accrual.customer_id.clone())
                .or_default();
            if customer.first_paid_invoice_at.is_none() {
                customer.first_paid_invoice_at = effects.first_paid_invoice_at;
            }
            if let Some(version) = effects.lock_version {
                customer.locked_version = Some(version);
            }
            match (&effects.net_revenue, &effects.net_revenue_brand) {
                (Some(position), Some(brand)) => {
                    customer
                        .net_revenue_by_brand
                        .insert(brand.clone(), position.clone());
                }
                (Some(position), None) => customer.net_revenue = Some(position.clone()),
                (None, _) => {}
            }
            if let Some(outstanding) = effects.cpa_outstanding {
                customer.cpa_outstanding = Some(outstanding);
            }
        }
        Ok(())
    }

    /// Records that a customer churned at `at`; recurring shares for invoices from then on are
    /// not payable. The earliest churn is kept, so replaying it twice changes nothing.
    pub fn apply_churn(&mut self, customer_id: &str, at: DateTime<Utc>) {
        let customer = self.customers.entry(customer_id.to_owned()).or_default();
        customer.churned_at = Some(customer.churned_at.map_or(at, |c| c.min(at)));
    }

    /// Drops the totals of periods before `period`, once they can no longer change (closed
    /// months), to keep the state small. Tiers and caps only look at the current month.
    pub fn prune_periods_before(&mut self, period: Period) {
        self.periods = self.periods.split_off(&period);
    }

    pub(crate) fn check_owner(&self, partner_id: Uuid, plan_id: Uuid) -> Result<(), EngineError> {
        if self.partner_id == partner_id && self.plan_id == plan_id {
            Ok(())
        } else {
            Err(EngineError::StateMismatch {
                state_partner: self.partner_id,
                state_plan: self.plan_id,
                partner: partner_id,
                plan: plan_id,
            })
        }
    }
}
