//! Net (gaming) revenue shares with negative periods, and CPA recovered from revenue share.

mod common;

use common::*;
use pl_commission_engine::*;

fn ngr_plan(policy: NetRevenuePolicy) -> PlanVersion {
    let mut p = plan(vec![rule("ngr", Reward::NetRevenueShare(pct("25")))]);
    p.net_revenue_policy = policy;
    p
}

/// A $20 CPA on signups and 10% of every invoice, with CPA recovery.
fn hybrid_deal() -> PlanVersion {
    let mut p = plan(vec![
        when_kind(
            rule("cpa", Reward::Flat(usd("20.00"))),
            ConversionKind::Signup,
        ),
        when_kind(
            rule("revshare", Reward::PercentOfGross(pct("10"))),
            ConversionKind::SubscriptionInvoice,
        ),
    ]);
    p.cpa_recovery = true;
    p
}

#[test]
fn a_negative_month_is_carried_forward_into_the_next_months_revenue() {
    // Given 25% of NGR carrying negative months forward
    let mut h = History::new(ngr_plan(NetRevenuePolicy::CarryForwardNegative));

    // When March reports -$100 and April +$150
    let march = h.accrue(&ngr_report(1, usd("-100.00"), at(2025, 3, 31)));
    let april = h.accrue(&ngr_report(2, usd("150.00"), at(2025, 4, 30)));

    // Then March pays nothing (never negative) and April pays 25% of the $50 left
    assert_eq!(amounts(&march.lines), ["0.00 USD"]);
    assert_eq!(amounts(&april.lines), ["12.50 USD"]);
    let calc = april.lines[0].formula.net_revenue.as_ref().unwrap();
    assert_eq!(calc.carry_in, usd("-100.00"));
    assert_eq!(
        april.lines[0].formula.text,
        "25% of positive net revenue for 2025-04: carried -100.00 USD + period 0.00 USD → \
         150.00 USD after net 150.00 USD net revenue report; share 12.50 USD − 0.00 USD already accrued"
    );
}

#[test]
fn a_negative_month_is_forgotten_when_each_period_resets() {
    // Given 25% of NGR resetting each period
    let mut h = History::new(ngr_plan(NetRevenuePolicy::ResetEachPeriod));

    // When March reports -$100 and April +$150
    h.accrue(&ngr_report(1, usd("-100.00"), at(2025, 3, 31)));
    let april = h.accrue(&ngr_report(2, usd("150.00"), at(2025, 4, 30)));

    // Then April pays 25% of the full $150
    assert_eq!(amounts(&april.lines), ["37.50 USD"]);
}

#[test]
fn reports_within_a_month_net_against_each_other_and_may_give_a_negative_line() {
    // Given 25% of NGR
    let mut h = History::new(ngr_plan(NetRevenuePolicy::CarryForwardNegative));

    // When a month reports +$200 then -$80
    let up = h.accrue(&ngr_report(1, usd("200.00"), at(2025, 3, 10)));
    let down = h.accrue(&ngr_report(2, usd("-80.00"), at(2025, 3, 20)));

    // Then the second report takes back $20: the month pays 25% of $120
    assert_eq!(amounts(&up.lines), ["50.00 USD"]);
    assert_eq!(amounts(&down.lines), ["-20.00 USD"]);
}

#[test]
fn a_negative_report_never_claws_back_more_than_the_month_paid_and_carries_the_rest() {
    // Given 25% of NGR and +$40 reported in March
    let mut h = History::new(ngr_plan(NetRevenuePolicy::CarryForwardNegative));
    h.accrue(&ngr_report(1, usd("40.00"), at(2025, 3, 10)));

    // When -$100 follows in March and +$100 in April
    let down = h.accrue(&ngr_report(2, usd("-100.00"), at(2025, 3, 20)));
    let april = h.accrue(&ngr_report(3, usd("100.00"), at(2025, 4, 10)));

    // Then March takes back only the $10 it paid, and April first absorbs the -$60 carried
    assert_eq!(amounts(&down.lines), ["-10.00 USD"]);
    assert_eq!(amounts(&april.lines), ["10.00 USD"]);
    assert_eq!(
        april.lines[0]
            .formula
            .net_revenue
            .as_ref()
            .unwrap()
            .carry_in,
        usd("-60.00")
    );
}

#[test]
fn a_report_for_a_month_before_the_last_reported_is_out_of_order() {
    let mut h = History::new(ngr_plan(NetRevenuePolicy::CarryForwardNegative));
    h.accrue(&ngr_report(1, usd("40.00"), at(2025, 4, 10)));
    assert!(matches!(
        accrue(
            &h.plan,
            &h.state,
            &ngr_report(2, usd("40.00"), at(2025, 3, 10))
        ),
        Err(EngineError::OutOfOrder { .. })
    ));
}

#[test]
fn a_20_dollar_cpa_must_be_recovered_so_revenue_share_reaches_21_before_1_is_payable() {
    // Given a $20 CPA and 10% revenue share with CPA recovery
    let mut h = History::new(hybrid_deal());

    // When the customer signs up and then pays invoices of $100 and $110
    let signup = h.accrue(&conversion(1, ConversionKind::Signup, at(2025, 1, 10)));
    let first = h.accrue(&invoice(2, usd("100.00"), at(2025, 1, 15)));
    let second = h.accrue(&invoice(3, usd("110.00"), at(2025, 2, 15)));

    // Then the CPA is paid upfront, the first $10 of share recovers half of it, and of the
    // next $11 only $1 is payable: $21 of share paid out $1
    assert_eq!(amounts(&signup.lines), ["20.00 USD"]);
    assert_eq!(amounts(&first.lines), ["0.00 USD"]);
    assert_eq!(first.lines[0].formula.cpa_recovered, Some(usd("10.00")));
    assert_eq!(amounts(&second.lines), ["1.00 USD"]);
    assert_eq!(
        second.lines[0].formula.text,
        "10% of 110.00 USD subscription invoice; 10.00 USD applied to CPA recovery, \
         0.00 USD still to recover"
    );
    assert_eq!(
        h.state.customer("c1").unwrap().cpa_outstanding,
        Some(usd("0.00"))
    );

    // And from then on the share is paid in full
    let third = h.accrue(&invoice(4, usd("100.00"), at(2025, 3, 15)));
    assert_eq!(amounts(&third.lines), ["10.00 USD"]);
}

#[test]
fn without_cpa_recovery_the_revenue_share_is_paid_from_the_start() {
    let mut p = hybrid_deal();
    p.cpa_recovery = false;
    let mut h = History::new(p);
    h.accrue(&conversion(1, ConversionKind::Signup, at(2025, 1, 10)));
    let first = h.accrue(&invoice(2, usd("100.00"), at(2025, 1, 15)));
    assert_eq!(amounts(&first.lines), ["10.00 USD"]);
}

#[test]
fn cpa_recovery_is_kept_per_customer() {
    // Given a CPA paid for customer c1
    let mut h = History::new(hybrid_deal());
    h.accrue(&conversion(1, ConversionKind::Signup, at(2025, 1, 10)));

    // When another customer pays an invoice, then its share is not held back
    let mut other = invoice(2, usd("100.00"), at(2025, 1, 15));
    other.customer_id = "c2".into();
    assert_eq!(amounts(&h.accrue(&other).lines), ["10.00 USD"]);
}

#[test]
fn a_negative_ngr_report_undoes_cpa_recovery_before_clawing_back_cash_it_never_paid() {
    // Given a $20 CPA and 25% NGR share with recovery, and +$100 NGR (share $25: $20
    // recovered, $5 paid)
    let mut p = plan(vec![
        when_kind(
            rule("cpa", Reward::Flat(usd("20.00"))),
            ConversionKind::Signup,
        ),
        when_kind(
            rule("ngr", Reward::NetRevenueShare(pct("25"))),
            ConversionKind::NetRevenueReport,
        ),
    ]);
    p.cpa_recovery = true;
    let mut h = History::new(p);
    h.accrue(&conversion(1, ConversionKind::Signup, at(2025, 3, 1)));
    let up = h.accrue(&ngr_report(2, usd("100.00"), at(2025, 3, 10)));
    assert_eq!(amounts(&up.lines), ["5.00 USD"]);

    // When -$100 follows in the same month
    let down = h.accrue(&ngr_report(3, usd("-100.00"), at(2025, 3, 20)));

    // Then the $5 paid is clawed back and the $20 is owed again as CPA to recover
    assert_eq!(amounts(&down.lines), ["-5.00 USD"]);
    assert_eq!(down.lines[0].formula.cpa_restored, Some(usd("20.00")));
    assert_eq!(
        h.state.customer("c1").unwrap().cpa_outstanding,
        Some(usd("20.00"))
    );
}

fn brand_report(
    n: u128,
    brand: &str,
    net: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> ConversionFacts {
    ConversionFacts {
        brand: Some(brand.to_owned()),
        ..ngr_report(n, usd(net), at)
    }
}

#[test]
fn a_ringfenced_brands_loss_offsets_only_its_own_later_results() {
    // Given 25% of NGR, ringfenced per brand
    let mut h = History::new(ngr_plan(NetRevenuePolicy::Ringfenced));

    // When in March the casino loses $400 and sports makes $1000, and in April the casino
    // makes $300 and sports $100
    let casino_march = h.accrue(&brand_report(1, "casino", "-400.00", at(2025, 3, 31)));
    let sports_march = h.accrue(&brand_report(2, "sports", "1000.00", at(2025, 3, 31)));
    let casino_april = h.accrue(&brand_report(3, "casino", "300.00", at(2025, 4, 30)));
    let sports_april = h.accrue(&brand_report(4, "sports", "100.00", at(2025, 4, 30)));

    // Then the casino's loss never touches sports: sports pays 25% of its own $1000 and $100;
    // the casino's $300 only reduces its own carried loss to $100
    assert_eq!(amounts(&casino_march.lines), ["0.00 USD"]);
    assert_eq!(amounts(&sports_march.lines), ["250.00 USD"]);
    assert_eq!(amounts(&casino_april.lines), ["0.00 USD"]);
    assert_eq!(amounts(&sports_april.lines), ["25.00 USD"]);
    let calc = casino_april.lines[0].formula.net_revenue.as_ref().unwrap();
    assert_eq!(calc.carry_in, usd("-400.00"));
    assert!(
        casino_april.lines[0]
            .formula
            .text
            .starts_with("25% of positive net revenue of brand casino for 2025-04"),
        "{}",
        casino_april.lines[0].formula.text
    );
}

#[test]
fn without_a_ringfence_one_brands_loss_offsets_another_brands_result() {
    // Given the same reports under carry-forward (one position per customer)
    let mut h = History::new(ngr_plan(NetRevenuePolicy::CarryForwardNegative));
    h.accrue(&brand_report(1, "casino", "-400.00", at(2025, 3, 31)));
    let sports = h.accrue(&brand_report(2, "sports", "1000.00", at(2025, 3, 31)));

    // Then the casino's loss nets against sports in the same month: 25% of $600
    assert_eq!(amounts(&sports.lines), ["150.00 USD"]);
}
