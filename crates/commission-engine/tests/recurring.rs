//! First-year shares and recurring revenue shares by customer month.

mod common;

use common::*;
use pl_commission_engine::*;

fn schedule_40_then_20(duration: RecurringDuration) -> PlanVersion {
    plan(vec![rule(
        "white-label",
        Reward::Recurring {
            schedule: vec![
                ScheduleStep {
                    from_month: 1,
                    to_month: Some(3),
                    percent: pct("40"),
                },
                ScheduleStep {
                    from_month: 4,
                    to_month: None,
                    percent: pct("20"),
                },
            ],
            duration,
            of: Base::Gross,
        },
    )])
}

/// Monthly $100 invoices from 2025-01-15, for `months` months.
fn monthly_invoices(h: &mut History, months: u32) -> Vec<String> {
    (0..months)
        .map(|i| {
            let (year, month) = (2025 + (i / 12) as i32, 1 + i % 12);
            paid(&h.accrue(&invoice(u128::from(i), usd("100.00"), at(year, month, 15))))
        })
        .collect()
}

#[test]
fn a_recurring_share_pays_40_percent_in_months_1_to_3_then_20_percent_until_churn() {
    // Given a lifetime share of 40% in months 1-3 then 20%
    let mut h = History::new(schedule_40_then_20(RecurringDuration::Lifetime));

    // When the customer pays $100 a month for six months
    let paid = monthly_invoices(&mut h, 6);

    // Then months 1-3 pay $40 and months 4-6 $20
    assert_eq!(
        paid,
        [
            "40.00 USD",
            "40.00 USD",
            "40.00 USD",
            "20.00 USD",
            "20.00 USD",
            "20.00 USD"
        ]
    );

    // And when the customer churns, a later invoice pays nothing, saying why
    h.state.apply_churn("c1", at(2025, 7, 1));
    let after = h.accrue(&invoice(99, usd("100.00"), at(2025, 7, 15)));
    assert!(after.lines.is_empty());
    assert_eq!(
        after.not_payable,
        Some(NotPayable::CustomerChurned {
            churned_at: at(2025, 7, 1)
        })
    );
}

#[test]
fn a_recurring_share_for_n_months_ends_after_month_n() {
    // Given the same schedule limited to 5 months
    let mut h = History::new(schedule_40_then_20(RecurringDuration::Months(5)));

    // When the customer pays seven monthly invoices
    let paid = monthly_invoices(&mut h, 7);

    // Then months 6 and 7 pay nothing
    assert_eq!(
        paid,
        [
            "40.00 USD",
            "40.00 USD",
            "40.00 USD",
            "20.00 USD",
            "20.00 USD",
            "none",
            "none"
        ]
    );
    let month_7 = h.accrue(&invoice(70, usd("100.00"), at(2025, 7, 20)));
    assert_eq!(
        month_7.not_payable,
        Some(NotPayable::RecurringEnded { month_index: 7 })
    );
    assert_eq!(
        month_7.lines.len(),
        0,
        "an ended share pays no override either"
    );
}

#[test]
fn a_recurring_line_explains_the_customer_month() {
    let mut h = History::new(schedule_40_then_20(RecurringDuration::Months(12)));
    let first = h.accrue(&invoice(1, usd("100.00"), at(2025, 1, 15)));
    assert_eq!(
        first.lines[0].formula.text,
        "recurring, month 1 of 12: 40% of 100.00 USD subscription invoice"
    );
    assert_eq!(first.lines[0].formula.month_index, Some(1));
    assert_eq!(first.effects.first_paid_invoice_at, Some(at(2025, 1, 15)));
}

#[test]
fn a_first_year_share_stops_12_months_after_the_first_paid_invoice() {
    // Given 20% of first-year revenue
    let p = plan(vec![rule(
        "referral",
        Reward::FirstYearPercent {
            percent: pct("20"),
            of: Base::Gross,
        },
    )]);
    let mut h = History::new(p);

    // When the customer pays on 2025-01-15, 2026-01-14 and 2026-01-15
    let first = h.accrue(&invoice(1, usd("100.00"), at(2025, 1, 15)));
    let last_day = h.accrue(&invoice(2, usd("100.00"), at(2026, 1, 14)));
    let anniversary = h.accrue(&invoice(3, usd("100.00"), at(2026, 1, 15)));

    // Then the first two are in the first year and the anniversary is not
    assert_eq!(paid(&first), "20.00 USD");
    assert_eq!(paid(&last_day), "20.00 USD");
    assert_eq!(last_day.lines[0].formula.month_index, Some(12));
    assert!(anniversary.lines.is_empty());
    assert_eq!(
        anniversary.not_payable,
        Some(NotPayable::OutsideFirstYear { month_index: 13 })
    );
}

#[test]
fn a_first_year_share_before_any_paid_invoice_is_not_payable() {
    // Given a first-year share that matches any conversion, when a lead arrives
    let p = plan(vec![rule(
        "referral",
        Reward::FirstYearPercent {
            percent: pct("20"),
            of: Base::Gross,
        },
    )]);
    let mut lead = conversion(1, ConversionKind::Lead, at(2025, 1, 1));
    lead.gross = Some(usd("10.00"));
    let accrual = History::new(p).accrue(&lead);

    // Then it pays nothing: the customer has no first year yet
    assert_eq!(accrual.not_payable, Some(NotPayable::NoPaidInvoice));
}

#[test]
fn month_conditions_switch_rules_by_customer_month() {
    // Given 30% in months 1-12 and 10% otherwise
    let mut first_year = rule("year-1", Reward::PercentOfGross(pct("30")));
    first_year.conditions.month_index = Some(MonthRange { first: 1, last: 12 });
    let mut h = History::new(plan(vec![
        first_year,
        rule("after", Reward::PercentOfGross(pct("10"))),
    ]));

    // When invoices fall in months 1, 12 and 13
    let paid: Vec<_> = [at(2025, 2, 1), at(2026, 1, 31), at(2026, 2, 1)]
        .iter()
        .enumerate()
        .map(|(i, when)| paid(&h.accrue(&invoice(i as u128, usd("100.00"), *when))))
        .collect();

    // Then the first two pay 30% and the third 10%
    assert_eq!(paid, ["30.00 USD", "30.00 USD", "10.00 USD"]);
}

#[test]
fn a_paid_invoice_dated_before_the_first_paid_invoice_is_out_of_order() {
    let mut h = History::new(schedule_40_then_20(RecurringDuration::Lifetime));
    h.accrue(&invoice(1, usd("100.00"), at(2025, 3, 15)));
    assert!(matches!(
        accrue(
            &h.plan,
            &h.state,
            &invoice(2, usd("100.00"), at(2025, 2, 15))
        ),
        Err(EngineError::OutOfOrder { .. })
    ));
}
