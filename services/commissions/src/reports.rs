//! Read models computed on demand from a partner's book and ledger: the statement of a period
//! and the partner's recurring revenue shares. Pure functions: no I/O, no clock.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use pl_commission_engine::{
    version_for_customer, CustomerState, LineKind, PlanVersion, RecurringDuration, Reward,
    RewardKind,
};
use pl_ledger::{
    AsOf, ExplainedEntry, Ledger, LedgerError, Page, PartnerBalance, MAX_PAGE_ENTRIES,
};
use pl_money::{Currency, Money};
use serde::Serialize;
use uuid::Uuid;

use crate::book::{Book, CreditKind};
use crate::setup::Plan;

/// A statement lists at most this many entries; a longer period must be split.
pub const MAX_STATEMENT_ENTRIES: usize = 100_000;

/// A partner's statement for `[from, to)` in one currency: opening balance, every entry of the
/// period with its explanation, closing balance. Opening plus the entries equals closing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    pub partner_id: Uuid,
    pub currency: Currency,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub opening: PartnerBalance,
    pub entries: Vec<ExplainedEntry>,
    pub closing: PartnerBalance,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("the period holds more than {MAX_STATEMENT_ENTRIES} entries; ask for a shorter one")]
    TooManyEntries,
    #[error("the period ends before it starts")]
    EmptyPeriod,
    #[error("plan {plan_id} paid a recurring share but has no versions")]
    PlanMissing { plan_id: Uuid },
}

/// The instant just before `t`: business-date cuts include their bound, a period excludes its end.
fn just_before(t: DateTime<Utc>) -> DateTime<Utc> {
    t - Duration::nanoseconds(1)
}

pub fn statement(
    ledger: &Ledger,
    partner_id: Uuid,
    currency: Currency,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Statement, ReportError> {
    if to <= from {
        return Err(ReportError::EmptyPeriod);
    }
    let zero = PartnerBalance {
        pending: Money::zero(currency),
        payable: Money::zero(currency),
        paid: Money::zero(currency),
    };
    let balance_at = |at| -> Result<PartnerBalance, ReportError> {
        let all = ledger.balances_of_partner(partner_id, AsOf::BusinessDate(at))?;
        Ok(all.currencies.get(&currency).copied().unwrap_or(zero))
    };
    let opening = balance_at(just_before(from))?;
    let closing = balance_at(just_before(to))?;
    let mut entries = Vec::new();
    let mut offset = 0;
    loop {
        let page = Page {
            offset,
            limit: MAX_PAGE_ENTRIES,
        };
        let explained = ledger.explain(
            partner_id,
            currency,
            AsOf::BusinessDate(just_before(to)),
            page,
        )?;
        offset += explained.entries.len();
        entries.extend(
            explained
                .entries
                .into_iter()
                .filter(|e| e.occurred_at >= from),
        );
        if entries.len() > MAX_STATEMENT_ENTRIES {
            return Err(ReportError::TooManyEntries);
        }
        if explained.next_offset.is_none() {
            break;
        }
    }
    entries.sort_by_key(|e| (e.occurred_at, e.position));
    Ok(Statement {
        partner_id,
        currency,
        from,
        to,
        opening,
        entries,
        closing,
    })
}

/// One customer whose revenue pays this partner a recurring share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecurringShare {
    pub customer_id: String,
    pub plan_id: Uuid,
    pub rule_id: String,
    pub reward: RewardKind,
    /// Start of customer month 1 (the first paid invoice).
    pub started_at: Option<DateTime<Utc>>,
    /// When the share stopped paying by its own terms, if by the as-of date (see
    /// [`share_end`]).
    pub ended_at: Option<DateTime<Utc>>,
    /// When the customer churned, if by the as-of date. It ends a recurring share only: the
    /// engine pays a first-year or net revenue share on whatever the customer pays after it.
    pub churned_at: Option<DateTime<Utc>>,
    /// Everything the share paid up to the as-of date, net of reversals.
    pub share_to_date: Money,
    /// The share of the latest invoice: what the partner currently earns per month.
    pub current_monthly_share: Money,
    pub last_invoice_at: DateTime<Utc>,
}

/// When a share stops paying by its terms, as the engine would decide the customer's invoice
/// at `as_of`: under the version it applies then (`version_for_customer`: the customer's
/// locked version under grandfathering, else the one in force). A recurring share ends at the
/// customer's churn, or after its months if fewer come first (its duration, or a schedule whose
/// last step closes); a first-year share at the start of customer month 13; a net revenue share
/// never. An end by the terms of a version that took effect later (a shorter duration) is the
/// version's start; so is the end of a share whose rule that version no longer pays. Gaps
/// inside a schedule (months without a step) are not shown.
fn share_end(
    s: &RecurringShare,
    customer: &CustomerState,
    versions: &[PlanVersion],
    as_of: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let churn = customer
        .churned_at
        .filter(|_| s.reward == RewardKind::Recurring);
    let earliest = |a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let Some(first) = customer.first_paid_invoice_at else {
        return churn;
    };
    let Ok(version) = version_for_customer(versions, s.plan_id, Some(customer), as_of) else {
        return churn;
    };
    let reward = version
        .rules
        .iter()
        .find(|r| r.id == s.rule_id)
        .map(|r| &r.reward);
    let months = match (s.reward, reward) {
        (
            RewardKind::Recurring,
            Some(Reward::Recurring {
                schedule, duration, ..
            }),
        ) => {
            let by_duration = match duration {
                RecurringDuration::Months(n) => Some(*n),
                RecurringDuration::Lifetime => None,
            };
            let by_schedule = schedule
                .iter()
                .max_by_key(|step| step.from_month)
                .and_then(|step| step.to_month);
            by_duration.into_iter().chain(by_schedule).min()
        }
        (RewardKind::FirstYearPercent, Some(Reward::FirstYearPercent { .. })) => Some(12),
        (RewardKind::NetRevenueShare, Some(Reward::NetRevenueShare(_))) => None,
        // The version applied now pays no such rule.
        _ => return earliest(churn, Some(version.effective_from)),
    };
    let by_terms = months
        .and_then(|n| first.checked_add_months(chrono::Months::new(n)))
        .map(|end| end.max(version.effective_from));
    earliest(churn, by_terms)
}

/// The partner's recurring revenue shares as of a business date, one per customer and rule.
/// `plans` holds the versions of every plan that paid one (a plan missing from it is an
/// error: without its terms an end cannot be told).
pub fn recurring_shares(
    book: &Book,
    as_of: DateTime<Utc>,
    plans: &HashMap<Uuid, Plan>,
) -> Result<Vec<RecurringShare>, ReportError> {
    let Some(partner) = book.partner_id else {
        return Ok(Vec::new());
    };
    let mut shares: Vec<RecurringShare> = Vec::new();
    for (accrual, reversals) in book.accruals.values() {
        if accrual.occurred_at > as_of {
            continue;
        }
        for (i, line) in accrual.lines.iter().enumerate() {
            if line.partner_id != partner
                || line.kind != LineKind::Base
                || !line.formula.reward.is_recurring_share()
            {
                continue;
            }
            let reversed: Money = Money::try_sum(
                line.amount.currency(),
                reversals
                    .iter()
                    .filter_map(|r| r.lines.get(i))
                    .map(|l| l.amount),
            )
            .map_err(ledger_money)?;
            let net = line.amount.checked_add(reversed).map_err(ledger_money)?;
            let found = shares.iter_mut().find(|s| {
                s.customer_id == accrual.customer_id
                    && s.plan_id == accrual.plan_id
                    && s.rule_id == line.rule_id
            });
            match found {
                Some(s) => {
                    s.share_to_date = s.share_to_date.checked_add(net).map_err(ledger_money)?;
                    if accrual.occurred_at >= s.last_invoice_at {
                        s.last_invoice_at = accrual.occurred_at;
                        s.current_monthly_share = net;
                    }
                }
                None => shares.push(RecurringShare {
                    customer_id: accrual.customer_id.clone(),
                    plan_id: accrual.plan_id,
                    rule_id: line.rule_id.clone(),
                    reward: line.formula.reward,
                    started_at: None,
                    ended_at: None,
                    churned_at: None,
                    share_to_date: net,
                    current_monthly_share: net,
                    last_invoice_at: accrual.occurred_at,
                }),
            }
        }
    }
    for s in &mut shares {
        let customer = book
            .engine
            .get(&s.plan_id)
            .and_then(|state| state.customer(&s.customer_id));
        let versions = plans
            .get(&s.plan_id)
            .ok_or(ReportError::PlanMissing { plan_id: s.plan_id })?;
        s.started_at = customer.and_then(|c| c.first_paid_invoice_at);
        s.ended_at = customer
            .and_then(|c| share_end(s, c, &versions.0, as_of))
            .filter(|t| *t <= as_of);
        s.churned_at = customer.and_then(|c| c.churned_at).filter(|t| *t <= as_of);
        // An ended share pays nothing more, and neither does a customer gone since its last
        // invoice, whatever that invoice paid; one back since (an invoice on or after the
        // churn, which a first-year or net revenue share pays) shows that invoice's share.
        let gone = s.churned_at.is_some_and(|c| s.last_invoice_at < c);
        if s.ended_at.is_some() || gone {
            s.current_monthly_share = Money::zero(s.current_monthly_share.currency());
        }
    }
    shares.sort_by(|a, b| (&a.customer_id, &a.rule_id).cmp(&(&b.customer_id, &b.rule_id)));
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use pl_commission_engine::{
        Base, ConversionFacts, ConversionKind, NetRevenuePolicy, Percent, PlanVersion,
        RecurringDuration, Reward, Rule, ScheduleStep, VersionPolicy,
    };
    use pl_ledger::RecordedTransaction;
    use pl_money::Decimal;
    use pl_runtime::Aggregate;

    use super::*;
    use crate::book::{BookCommand, BookEvent};

    const PARTNER: Uuid = Uuid::from_u128(1);

    fn at(month: u32, day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, month, day, 12, 0, 0).unwrap()
    }

    fn usd(s: &str) -> Money {
        format!("{s} USD").parse().unwrap()
    }

    fn plan() -> PlanVersion {
        plan_with(RecurringDuration::Lifetime)
    }

    fn plan_with(duration: RecurringDuration) -> PlanVersion {
        let step = |from: u32, to: Option<u32>, pct: i64| ScheduleStep {
            from_month: from,
            to_month: to,
            percent: Percent::new(pct).unwrap(),
        };
        serde_json::from_value(serde_json::json!({
            "plan_id": Uuid::from_u128(7), "version": 1, "effective_from": at(1, 1),
            "payout_currency": "USD", "hold_days": 0,
            "minimum_payout": {"amount": "50.00", "currency": "USD"},
            "version_policy": serde_json::to_value(VersionPolicy::Grandfathered).unwrap(),
            "net_revenue_policy": serde_json::to_value(NetRevenuePolicy::CarryForwardNegative).unwrap(),
            "cpa_recovery": false, "overrides": [],
            "rules": [serde_json::to_value(Rule {
                id: "share".into(),
                conditions: Default::default(),
                reward: Reward::Recurring {
                    of: Base::Gross,
                    schedule: vec![step(1, Some(3), 40), step(4, None, 20)],
                    duration,
                },
                cap_per_conversion: None,
                cap_per_period: None,
            }).unwrap()],
        }))
        .unwrap()
    }

    /// The plans a listing reads the terms of: this one alone.
    fn plans_of(plan: PlanVersion) -> HashMap<Uuid, Plan> {
        HashMap::from([(plan.plan_id, Plan(std::sync::Arc::new(vec![plan])))])
    }

    fn invoice(n: u128, when: DateTime<Utc>) -> BookCommand {
        invoice_under(n, when, plan())
    }

    fn invoice_under(n: u128, when: DateTime<Utc>, plan: PlanVersion) -> BookCommand {
        invoice_under_versions(n, when, vec![plan])
    }

    fn invoice_under_versions(
        n: u128,
        when: DateTime<Utc>,
        versions: Vec<PlanVersion>,
    ) -> BookCommand {
        BookCommand::Accrue {
            program_id: Uuid::from_u128(9),
            hierarchy_version: None,
            campaign_id: None,
            versions: versions.into(),
            facts: ConversionFacts {
                conversion_id: Uuid::from_u128(n),
                source_event_id: Uuid::from_u128(100 + n),
                kind: ConversionKind::SubscriptionInvoice,
                occurred_at: when,
                customer_id: "acme".into(),
                customer_country: None,
                products: vec![],
                gross: Some(usd("100.00")),
                net: None,
                lots: None,
                reseller: None,
                partner_id: PARTNER,
                partner_tier: None,
                weight: Decimal::ONE,
                split: None,
                brand: None,
                upline: vec![],
                fx_rate: None,
            },
        }
    }

    fn run(commands: &[BookCommand]) -> (Book, Vec<BookEvent>) {
        let mut book = Book::default();
        let mut all = Vec::new();
        for c in commands {
            let events = Book::decide(&book, c).unwrap();
            book = events.iter().fold(book, Book::evolve);
            all.extend(events);
        }
        (book, all)
    }

    #[test]
    fn recurring_shares_show_the_schedule_step_in_force_and_the_total_to_date() {
        let months: Vec<_> = (1..=5).map(|m| invoice(u128::from(m), at(m, 10))).collect();
        let (book, _) = run(&months);
        let shares = recurring_shares(&book, at(5, 20), &plans_of(plan())).unwrap();
        assert_eq!(shares.len(), 1);
        let s = &shares[0];
        // 3 × 40.00 + 2 × 20.00
        assert_eq!(s.share_to_date, usd("160.00"));
        assert_eq!(s.current_monthly_share, usd("20.00"));
        assert_eq!(s.started_at, Some(at(1, 10)));
        assert_eq!(s.ended_at, None);
        // As of March only the first three invoices count.
        assert_eq!(
            recurring_shares(&book, at(3, 20), &plans_of(plan())).unwrap()[0].share_to_date,
            usd("120.00")
        );
    }

    #[test]
    fn a_churned_customer_shows_its_end_and_no_current_share() {
        let mut commands: Vec<_> = (1..=2).map(|m| invoice(u128::from(m), at(m, 10))).collect();
        commands.push(BookCommand::Churn {
            plan_id: Uuid::from_u128(7),
            customer_id: "acme".into(),
            at: at(2, 20),
        });
        let (book, _) = run(&commands);
        let s = &recurring_shares(&book, at(3, 1), &plans_of(plan())).unwrap()[0];
        assert_eq!(s.ended_at, Some(at(2, 20)));
        assert_eq!(s.current_monthly_share, usd("0.00"));
        assert_eq!(s.share_to_date, usd("80.00"));
    }

    #[test]
    fn a_share_for_three_months_ends_at_the_start_of_the_fourth_and_pays_nothing_after() {
        let plan = plan_with(RecurringDuration::Months(3));
        let months = &plans_of(plan.clone());
        let commands: Vec<_> = (1..=5)
            .map(|m| invoice_under(u128::from(m), at(m, 10), plan.clone()))
            .collect();
        let (book, _) = run(&commands);
        // Three invoices paid 40% each; the fourth and fifth paid nothing (the engine's call).
        let s = &recurring_shares(&book, at(6, 1), months).unwrap()[0];
        assert_eq!(s.share_to_date, usd("120.00"));
        assert_eq!(s.ended_at, Some(at(4, 10)));
        assert_eq!(s.current_monthly_share, usd("0.00"));
        // In March it still ran.
        let s = &recurring_shares(&book, at(3, 20), months).unwrap()[0];
        assert_eq!((s.ended_at, s.current_monthly_share), (None, usd("40.00")));
        // A churn before month 4 ends it first.
        let mut churned = commands[..2].to_vec();
        churned.push(BookCommand::Churn {
            plan_id: Uuid::from_u128(7),
            customer_id: "acme".into(),
            at: at(2, 20),
        });
        let (book, _) = run(&churned);
        let s = &recurring_shares(&book, at(6, 1), months).unwrap()[0];
        assert_eq!(s.ended_at, Some(at(2, 20)));
    }

    #[test]
    fn a_later_version_that_shortens_the_share_ends_it_when_it_takes_effect_as_the_engine_stops_paying(
    ) {
        // Twelve months under version 1; from May, version 2 (followed by every customer) pays
        // three. May is customer month 5: the engine pays it nothing.
        let v1 = plan_with(RecurringDuration::Months(12));
        let v2 = PlanVersion {
            version: 2,
            effective_from: at(5, 1),
            version_policy: VersionPolicy::FollowEffective,
            ..plan_with(RecurringDuration::Months(3))
        };
        let v1 = PlanVersion {
            version_policy: VersionPolicy::FollowEffective,
            ..v1
        };
        let versions = vec![v1, v2];
        let commands: Vec<_> = (1..=6)
            .map(|m| invoice_under_versions(u128::from(m), at(m, 10), versions.clone()))
            .collect();
        let (book, _) = run(&commands);
        let plans = HashMap::from([(
            Uuid::from_u128(7),
            Plan(std::sync::Arc::new(versions.clone())),
        )]);
        let s = &recurring_shares(&book, at(6, 20), &plans).unwrap()[0];
        // 40% in months 1 to 3, 20% in April, nothing after.
        assert_eq!(s.share_to_date, usd("140.00"));
        assert_eq!(s.last_invoice_at, at(4, 10));
        assert_eq!(s.ended_at, Some(at(5, 1)));
        assert_eq!(s.current_monthly_share, usd("0.00"));
        // In April it still ran.
        let s = &recurring_shares(&book, at(4, 20), &plans).unwrap()[0];
        assert_eq!((s.ended_at, s.current_monthly_share), (None, usd("20.00")));
    }

    #[test]
    fn a_lifetime_share_whose_schedule_closes_ends_after_its_last_step() {
        let mut plan = plan();
        let Reward::Recurring { schedule, .. } = &mut plan.rules[0].reward else {
            unreachable!("a recurring rule")
        };
        schedule.truncate(1); // 40% in months 1 to 3, nothing after
        let commands: Vec<_> = (1..=5)
            .map(|m| invoice_under(u128::from(m), at(m, 10), plan.clone()))
            .collect();
        let (book, _) = run(&commands);
        let s = &recurring_shares(&book, at(6, 1), &plans_of(plan)).unwrap()[0];
        assert_eq!(s.share_to_date, usd("120.00"));
        assert_eq!(s.ended_at, Some(at(4, 10)));
    }

    #[test]
    fn a_listing_without_the_terms_of_a_plan_that_paid_is_an_error_not_a_guess() {
        let (book, _) = run(&[invoice(1, at(1, 10))]);
        let err = recurring_shares(&book, at(2, 1), &HashMap::new()).unwrap_err();
        assert!(matches!(err, ReportError::PlanMissing { .. }), "{err}");
    }

    #[test]
    fn a_statement_runs_from_the_opening_balance_through_the_periods_entries_to_the_closing_balance(
    ) {
        let months: Vec<_> = (1..=3).map(|m| invoice(u128::from(m), at(m, 10))).collect();
        let (_, events) = run(&months);
        let mut ledger = Ledger::new();
        for (i, t) in events.iter().flat_map(BookEvent::transactions).enumerate() {
            ledger
                .apply(&RecordedTransaction {
                    transaction: t.clone(),
                    position: i as u64,
                    recorded_at: at(4, 1),
                })
                .unwrap();
        }
        let s = statement(&ledger, PARTNER, Currency::USD, at(2, 1), at(3, 1)).unwrap();
        assert_eq!(s.opening.pending, usd("40.00"));
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.entries[0].amount, usd("40.00"));
        assert_eq!(s.closing.pending, usd("80.00"));
        assert!(matches!(
            statement(&ledger, PARTNER, Currency::USD, at(3, 1), at(2, 1)),
            Err(ReportError::EmptyPeriod)
        ));
    }
}

/// One row of the program report: a partner's results in one currency over a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgramRow {
    pub partner_id: Uuid,
    pub partner_type: Option<String>,
    /// The campaign the partner's credit came through; `None` for none.
    pub campaign_id: Option<Uuid>,
    /// Start of the row's period: the report's `from`, or with monthly rows the first instant
    /// of the month (or `from` within the first month).
    pub period_start: DateTime<Utc>,
    pub currency: Currency,
    /// Conversions credited, weighted by the partner's attribution share.
    pub conversions: pl_money::Decimal,
    /// Revenue credited to the partner (its weighted share), net of refunds.
    pub attributed_revenue: Money,
    /// Commission the partner's conversions cost, overrides included, net of reversals.
    pub commission_cost: Money,
    /// Paid outside the plans in the period, by kind: campaigns' flat fees, their performance
    /// bonuses, and MDF reimbursements (credited when they occurred).
    pub campaign_fees: Money,
    pub campaign_bonuses: Money,
    pub mdf_reimbursements: Money,
    /// Manual adjustments of the partner's payable (bonuses and corrections, signed).
    pub adjustments: Money,
}

impl ProgramRow {
    fn empty(key: RowKey, partner_id: Uuid) -> Self {
        let currency = key.3;
        ProgramRow {
            partner_id,
            partner_type: None,
            campaign_id: key.2,
            period_start: key.0,
            currency,
            conversions: pl_money::Decimal::ZERO,
            attributed_revenue: Money::zero(currency),
            commission_cost: Money::zero(currency),
            campaign_fees: Money::zero(currency),
            campaign_bonuses: Money::zero(currency),
            mdf_reimbursements: Money::zero(currency),
            adjustments: Money::zero(currency),
        }
    }

    /// Everything the partner cost in the row: commission, fees, bonuses, MDF, adjustments.
    pub fn total_cost(&self) -> Result<Money, ReportError> {
        [
            self.campaign_fees,
            self.campaign_bonuses,
            self.mdf_reimbursements,
            self.adjustments,
        ]
        .into_iter()
        .try_fold(self.commission_cost, Money::checked_add)
        .map_err(ledger_money)
    }

    /// Total cost per (weighted) conversion; `None` with no conversions.
    pub fn effective_cpa(&self) -> Option<pl_money::Decimal> {
        let cost = self.total_cost().ok()?;
        (!self.conversions.is_zero())
            .then(|| cost.amount().checked_div(self.conversions))
            .flatten()
    }

    /// Revenue per unit of total cost (return on ad spend); `None` when nothing was paid.
    pub fn revenue_per_commission(&self) -> Option<pl_money::Decimal> {
        let cost = self.total_cost().ok()?;
        (!cost.is_zero())
            .then(|| self.attributed_revenue.amount().checked_div(cost.amount()))
            .flatten()
    }
}

/// Folds book events (in log order) into the program report for `[from, to)`: conversions that
/// occurred in the period, with reversals of them netted whenever they happened.
#[derive(Debug, Default)]
pub struct ProgramReport {
    program_id: Uuid,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    /// Only conversions credited through this campaign.
    campaign: Option<Uuid>,
    monthly: bool,
    rows: std::collections::BTreeMap<RowKey, ProgramRow>,
    /// Conversions in scope: (partner, conversion) → (row, credited revenue).
    in_scope: std::collections::BTreeMap<(Uuid, Uuid), (RowKey, Money)>,
}

/// (period start, partner, campaign, currency).
type RowKey = (DateTime<Utc>, Uuid, Option<Uuid>, Currency);

/// The first instant of `t`'s month (UTC).
fn month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::{Datelike, TimeZone};
    Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(t)
}

/// A report covers at most this many partner-currency rows.
pub const MAX_REPORT_ROWS: usize = 100_000;

impl ProgramReport {
    pub fn new(program_id: Uuid, from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        Self {
            program_id,
            from: Some(from),
            to: Some(to),
            ..Self::default()
        }
    }

    /// Only conversions credited through `campaign`.
    pub fn campaign(mut self, campaign: Option<Uuid>) -> Self {
        self.campaign = campaign;
        self
    }

    /// One row per calendar month (UTC) instead of one for the whole period.
    pub fn monthly(mut self, monthly: bool) -> Self {
        self.monthly = monthly;
        self
    }

    pub fn apply(&mut self, event: &crate::book::BookEvent) -> Result<(), ReportError> {
        use crate::book::BookEvent as E;
        match event {
            E::ConversionAccrued {
                program_id,
                accrual,
                campaign_id,
                ..
            } if *program_id == self.program_id => {
                let (Some(from), Some(to)) = (self.from, self.to) else {
                    return Ok(());
                };
                if accrual.occurred_at < from
                    || accrual.occurred_at >= to
                    || self.campaign.is_some_and(|c| Some(c) != *campaign_id)
                {
                    return Ok(());
                }
                let period_start = if self.monthly {
                    month_start(accrual.occurred_at).max(from)
                } else {
                    from
                };
                let Some(base) = accrual.lines.iter().find(|l| l.kind == LineKind::Base) else {
                    return Ok(());
                };
                let currency = base.amount.currency();
                let revenue = base
                    .formula
                    .credited_base
                    .filter(|m| m.currency() == currency)
                    .unwrap_or_else(|| Money::zero(currency));
                let cost = Money::try_sum(currency, accrual.lines.iter().map(|l| l.amount))
                    .map_err(ledger_money)?;
                if self.rows.len() >= MAX_REPORT_ROWS {
                    return Err(ReportError::TooManyEntries);
                }
                let key = (period_start, accrual.partner_id, *campaign_id, currency);
                let row = self
                    .rows
                    .entry(key)
                    .or_insert_with(|| ProgramRow::empty(key, accrual.partner_id));
                row.conversions += base.formula.weight;
                row.attributed_revenue = row
                    .attributed_revenue
                    .checked_add(revenue)
                    .map_err(ledger_money)?;
                row.commission_cost = row
                    .commission_cost
                    .checked_add(cost)
                    .map_err(ledger_money)?;
                self.in_scope
                    .insert((accrual.partner_id, accrual.conversion_id), (key, revenue));
            }
            E::ConversionReversed { reversal, .. } => {
                let Some(partner) = reversal.lines.first().map(|l| l.partner_id) else {
                    return Ok(());
                };
                let Some((key, revenue)) = self
                    .in_scope
                    .get(&(partner, reversal.conversion_id))
                    .copied()
                else {
                    return Ok(());
                };
                let currency = key.3;
                let cost = Money::try_sum(currency, reversal.lines.iter().map(|l| l.amount))
                    .map_err(ledger_money)?;
                let lost = revenue
                    .checked_mul(reversal.fraction)
                    .map_err(ledger_money)?
                    .round(pl_money::RoundingMode::HalfEven);
                if let Some(row) = self.rows.get_mut(&key) {
                    row.commission_cost = row
                        .commission_cost
                        .checked_add(cost)
                        .map_err(ledger_money)?;
                    row.attributed_revenue = row
                        .attributed_revenue
                        .checked_sub(lost)
                        .map_err(ledger_money)?;
                }
            }
            E::PartnerCredited {
                program_id,
                credit,
                transactions,
            } if *program_id == self.program_id => {
                let (Some(from), Some(to)) = (self.from, self.to) else {
                    return Ok(());
                };
                let campaign = match credit {
                    CreditKind::CampaignFee { campaign_id }
                    | CreditKind::CampaignBonus { campaign_id } => Some(*campaign_id),
                    CreditKind::MdfReimbursement { .. } => None,
                };
                if self.campaign.is_some_and(|c| Some(c) != campaign) {
                    return Ok(());
                }
                for t in transactions {
                    let at = t.occurred_at();
                    if at < from || at >= to {
                        continue;
                    }
                    let period_start = if self.monthly {
                        month_start(at).max(from)
                    } else {
                        from
                    };
                    for transfer in t.transfers() {
                        let pl_ledger::Account::PartnerPayable { partner_id, .. } = transfer.credit
                        else {
                            continue;
                        };
                        if self.rows.len() >= MAX_REPORT_ROWS {
                            return Err(ReportError::TooManyEntries);
                        }
                        let key = (
                            period_start,
                            partner_id,
                            campaign,
                            transfer.amount.currency(),
                        );
                        let row = self
                            .rows
                            .entry(key)
                            .or_insert_with(|| ProgramRow::empty(key, partner_id));
                        let cost = match credit {
                            CreditKind::CampaignFee { .. } => &mut row.campaign_fees,
                            CreditKind::CampaignBonus { .. } => &mut row.campaign_bonuses,
                            CreditKind::MdfReimbursement { .. } => &mut row.mdf_reimbursements,
                        };
                        *cost = cost.checked_add(transfer.amount).map_err(ledger_money)?;
                    }
                }
            }
            E::Adjusted {
                program_id,
                adjustment,
                ..
            } if *program_id == self.program_id => {
                let (Some(from), Some(to)) = (self.from, self.to) else {
                    return Ok(());
                };
                let at = adjustment.occurred_at;
                if at < from || at >= to || self.campaign.is_some() {
                    return Ok(());
                }
                let Some(partner_id) = event
                    .transactions()
                    .iter()
                    .flat_map(|t| t.transfers())
                    .find_map(|t| match (&t.debit, &t.credit) {
                        (pl_ledger::Account::PartnerPayable { partner_id, .. }, _)
                        | (_, pl_ledger::Account::PartnerPayable { partner_id, .. }) => {
                            Some(*partner_id)
                        }
                        _ => None,
                    })
                else {
                    return Ok(());
                };
                if self.rows.len() >= MAX_REPORT_ROWS {
                    return Err(ReportError::TooManyEntries);
                }
                let period_start = if self.monthly {
                    month_start(at).max(from)
                } else {
                    from
                };
                let key = (period_start, partner_id, None, adjustment.amount.currency());
                let row = self
                    .rows
                    .entry(key)
                    .or_insert_with(|| ProgramRow::empty(key, partner_id));
                row.adjustments = row
                    .adjustments
                    .checked_add(adjustment.amount)
                    .map_err(ledger_money)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The partners with a row so far.
    pub fn partners(&self) -> std::collections::BTreeSet<Uuid> {
        self.rows.keys().map(|(_, p, _, _)| *p).collect()
    }

    /// Adds partner types (from the partners' accounts), keeps the rows of `only_type` when
    /// given, and returns them by period, partner, campaign and currency.
    pub fn finish(
        mut self,
        partner_type: impl Fn(Uuid) -> Option<String>,
        only_type: Option<&str>,
    ) -> Vec<ProgramRow> {
        for row in self.rows.values_mut() {
            row.partner_type = partner_type(row.partner_id);
        }
        self.rows
            .into_values()
            .filter(|r| only_type.is_none_or(|t| r.partner_type.as_deref() == Some(t)))
            .collect()
    }
}

fn ledger_money(e: pl_money::MoneyError) -> ReportError {
    ReportError::Ledger(LedgerError::Money(e))
}

#[cfg(test)]
mod program_tests {
    use chrono::TimeZone;
    use pl_money::Decimal;
    use pl_runtime::Aggregate;

    use super::*;
    use crate::book::{Book, BookCommand};

    #[test]
    fn the_program_report_nets_refunds_and_computes_cost_per_acquisition() {
        let at = |m, d| Utc.with_ymd_and_hms(2026, m, d, 12, 0, 0).unwrap();
        let plan = super::tests_support::plan_10_percent(at(1, 1));
        let sale = |n: u128, when| BookCommand::Accrue {
            program_id: Uuid::from_u128(9),
            hierarchy_version: None,
            campaign_id: None,
            versions: vec![plan.clone()].into(),
            facts: super::tests_support::sale(n, when, "100.00"),
        };
        let mut book = Book::default();
        let mut report = ProgramReport::new(Uuid::from_u128(9), at(1, 1), at(2, 1));
        let commands = [
            sale(1, at(1, 5)),
            sale(2, at(1, 6)),
            sale(3, at(2, 6)), // outside the period
            BookCommand::Reverse {
                reversal_id: Uuid::from_u128(50),
                conversion_id: Uuid::from_u128(2),
                fraction: Decimal::new(5, 1),
                occurred_at: at(2, 10),
                source_event_id: Uuid::from_u128(51),
            },
        ];
        for c in &commands {
            let events = Book::decide(&book, c).unwrap();
            for e in &events {
                report.apply(e).unwrap();
            }
            book = events.iter().fold(book, Book::evolve);
        }
        let rows = report.finish(|_| Some("affiliate".into()), None);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.partner_type.as_deref(), Some("affiliate"));
        assert_eq!(r.conversions, Decimal::from(2));
        assert_eq!(r.attributed_revenue.to_string(), "150.00 USD");
        assert_eq!(r.commission_cost.to_string(), "15.00 USD");
        assert_eq!(r.effective_cpa(), Some(Decimal::new(75, 1)));
        assert_eq!(r.revenue_per_commission(), Some(Decimal::from(10)));
    }

    /// The report's costs left out campaign fees, bonuses and MDF: a partner whose two sales
    /// cost 20.00 in commission but 50.00 in all looked four times cheaper than it was.
    #[test]
    fn the_program_report_counts_fees_bonuses_and_mdf_by_kind_in_cpa_and_return_on_spend() {
        let at = |m, d| Utc.with_ymd_and_hms(2026, m, d, 12, 0, 0).unwrap();
        let plan = super::tests_support::plan_10_percent(at(1, 1));
        let program = Uuid::from_u128(9);
        let partner = Uuid::from_u128(1);
        let sale = |n: u128, when| BookCommand::Accrue {
            program_id: program,
            hierarchy_version: None,
            campaign_id: None,
            versions: vec![plan.clone()].into(),
            facts: super::tests_support::sale(n, when, "100.00"),
        };
        let credit = |n: u128, credit, amount: &str, when| BookCommand::Credit {
            credit,
            program_id: program,
            partner_id: partner,
            amount: format!("{amount} USD").parse().unwrap(),
            occurred_at: when,
            source_event_id: Uuid::from_u128(200 + n),
            id_seed: Uuid::from_u128(300 + n),
        };
        let mdf = CreditKind::MdfReimbursement {
            claim_id: Uuid::from_u128(70),
        };
        let bonus = CreditKind::CampaignBonus {
            campaign_id: Uuid::from_u128(71),
        };
        let mut book = Book::default();
        let mut report = ProgramReport::new(program, at(1, 1), at(2, 1));
        let commands = [
            sale(1, at(1, 5)),
            sale(2, at(1, 6)),
            credit(1, mdf, "25.00", at(1, 10)),
            credit(2, bonus, "5.00", at(1, 11)),
            // Outside the period: not this report's cost.
            credit(
                3,
                CreditKind::CampaignFee {
                    campaign_id: Uuid::from_u128(72),
                },
                "500.00",
                at(2, 2),
            ),
        ];
        for c in &commands {
            let events = Book::decide(&book, c).unwrap();
            for e in &events {
                report.apply(e).unwrap();
            }
            book = events.iter().fold(book, Book::evolve);
        }
        let rows = report.finish(|_| None, None);
        let sales = rows.iter().find(|r| r.campaign_id.is_none()).unwrap();
        assert_eq!(sales.commission_cost.to_string(), "20.00 USD");
        assert_eq!(sales.mdf_reimbursements.to_string(), "25.00 USD");
        assert_eq!(sales.total_cost().unwrap().to_string(), "45.00 USD");
        assert_eq!(sales.effective_cpa(), Some(Decimal::new(225, 1)));
        let campaign = rows
            .iter()
            .find(|r| r.campaign_id == Some(Uuid::from_u128(71)))
            .unwrap();
        assert_eq!(campaign.campaign_bonuses.to_string(), "5.00 USD");
        assert_eq!(campaign.campaign_fees.to_string(), "0.00 USD");
        assert_eq!(rows.len(), 2, "{rows:?}");
    }
}

#[cfg(test)]
mod tests_support {
    use chrono::{DateTime, Utc};
    use pl_commission_engine::{
        Conditions, ConversionFacts, ConversionKind, NetRevenuePolicy, Percent, PlanVersion,
        Reward, Rule, VersionPolicy,
    };
    use pl_money::{Currency, Decimal, Money};
    use uuid::Uuid;

    pub fn plan_10_percent(from: DateTime<Utc>) -> PlanVersion {
        PlanVersion {
            plan_id: Uuid::from_u128(7),
            version: 1,
            effective_from: from,
            payout_currency: Currency::USD,
            hold_days: 0,
            minimum_payout: Money::from_minor_units(100, Currency::USD),
            version_policy: VersionPolicy::Grandfathered,
            net_revenue_policy: NetRevenuePolicy::CarryForwardNegative,
            cpa_recovery: false,
            overrides: vec![],
            rules: vec![Rule {
                id: "sale".into(),
                conditions: Conditions::default(),
                reward: Reward::PercentOfGross(Percent::new(10).unwrap()),
                cap_per_conversion: None,
                cap_per_period: None,
            }],
        }
    }

    pub fn sale(n: u128, at: DateTime<Utc>, gross: &str) -> ConversionFacts {
        ConversionFacts {
            conversion_id: Uuid::from_u128(n),
            source_event_id: Uuid::from_u128(100 + n),
            kind: ConversionKind::Sale,
            occurred_at: at,
            customer_id: format!("cust-{n}"),
            customer_country: None,
            products: vec![],
            gross: Some(format!("{gross} USD").parse().unwrap()),
            net: None,
            lots: None,
            reseller: None,
            partner_id: Uuid::from_u128(1),
            partner_tier: None,
            weight: Decimal::ONE,
            split: None,
            brand: None,
            upline: vec![],
            fx_rate: None,
        }
    }
}
