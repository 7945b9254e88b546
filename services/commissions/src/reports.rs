//! Read models computed on demand from a partner's book and ledger: the statement of a period
//! and the partner's recurring revenue shares. Pure functions: no I/O, no clock.

use chrono::{DateTime, Duration, Utc};
use pl_commission_engine::{LineKind, RewardKind};
use pl_ledger::{
    AsOf, ExplainedEntry, Ledger, LedgerError, Page, PartnerBalance, MAX_PAGE_ENTRIES,
};
use pl_money::{Currency, Money};
use serde::Serialize;
use uuid::Uuid;

use crate::book::Book;

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
    /// When the customer churned, if by the as-of date.
    pub ended_at: Option<DateTime<Utc>>,
    /// Everything the share paid up to the as-of date, net of reversals.
    pub share_to_date: Money,
    /// The share of the latest invoice: what the partner currently earns per month.
    pub current_monthly_share: Money,
    pub last_invoice_at: DateTime<Utc>,
}

fn is_recurring(kind: RewardKind) -> bool {
    matches!(
        kind,
        RewardKind::Recurring | RewardKind::FirstYearPercent | RewardKind::NetRevenueShare
    )
}

/// The partner's recurring revenue shares as of a business date, one per customer and rule.
pub fn recurring_shares(
    book: &Book,
    as_of: DateTime<Utc>,
) -> Result<Vec<RecurringShare>, pl_money::MoneyError> {
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
                || !is_recurring(line.formula.reward)
            {
                continue;
            }
            let reversed: Money = Money::try_sum(
                line.amount.currency(),
                reversals
                    .iter()
                    .filter_map(|r| r.lines.get(i))
                    .map(|l| l.amount),
            )?;
            let net = line.amount.checked_add(reversed)?;
            let customer = book
                .engine
                .get(&accrual.plan_id)
                .and_then(|s| s.customer(&accrual.customer_id));
            let found = shares.iter_mut().find(|s| {
                s.customer_id == accrual.customer_id
                    && s.plan_id == accrual.plan_id
                    && s.rule_id == line.rule_id
            });
            match found {
                Some(s) => {
                    s.share_to_date = s.share_to_date.checked_add(net)?;
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
                    started_at: customer.and_then(|c| c.first_paid_invoice_at),
                    ended_at: customer.and_then(|c| c.churned_at).filter(|t| *t <= as_of),
                    share_to_date: net,
                    current_monthly_share: net,
                    last_invoice_at: accrual.occurred_at,
                }),
            }
        }
    }
    for s in &mut shares {
        if s.ended_at.is_some() {
            // A churned customer pays nothing more, whatever its last invoice paid.
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
                    duration: RecurringDuration::Lifetime,
                },
                cap_per_conversion: None,
                cap_per_period: None,
            }).unwrap()],
        }))
        .unwrap()
    }

    fn invoice(n: u128, when: DateTime<Utc>) -> BookCommand {
        BookCommand::Accrue {
            program_id: Uuid::from_u128(9),
            versions: vec![plan()],
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
        let shares = recurring_shares(&book, at(5, 20)).unwrap();
        assert_eq!(shares.len(), 1);
        let s = &shares[0];
        // 3 × 40.00 + 2 × 20.00
        assert_eq!(s.share_to_date, usd("160.00"));
        assert_eq!(s.current_monthly_share, usd("20.00"));
        assert_eq!(s.started_at, Some(at(1, 10)));
        assert_eq!(s.ended_at, None);
        // As of March only the first three invoices count.
        assert_eq!(
            recurring_shares(&book, at(3, 20)).unwrap()[0].share_to_date,
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
        let s = &recurring_shares(&book, at(3, 1)).unwrap()[0];
        assert_eq!(s.ended_at, Some(at(2, 20)));
        assert_eq!(s.current_monthly_share, usd("0.00"));
        assert_eq!(s.share_to_date, usd("80.00"));
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
