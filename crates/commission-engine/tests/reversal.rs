//! Refunds and chargebacks reverse commissions pro rata, line by line.

mod common;

use common::*;
use pl_commission_engine::*;
use pl_money::{Currency, Decimal, Money};

fn multi_level() -> Accrual {
    let mut p = plan(vec![rule("sales", Reward::PercentOfGross(pct("10")))]);
    p.overrides = vec![pct("2"), pct("1")];
    let mut facts = sale(1, usd("100.00"), at(2025, 3, 9));
    facts.upline = vec![PARENT, GRANDPARENT];
    History::new(p).accrue(&facts)
}

#[test]
fn a_25_percent_refund_of_a_sale_reverses_25_percent_of_every_line_including_overrides() {
    // Given a $100 sale paying $10, $2 and $1
    let accrual = multi_level();

    // When a quarter of the sale is refunded
    let reversal = reverse(&accrual, d("0.25")).unwrap();

    // Then a quarter of each line is reversed, to the same partners
    assert_eq!(
        amounts(&reversal.lines),
        ["-2.50 USD", "-0.50 USD", "-0.25 USD"]
    );
    let who: Vec<_> = reversal
        .lines
        .iter()
        .map(|l| (l.partner_id, l.kind))
        .collect();
    let was: Vec<_> = accrual
        .lines
        .iter()
        .map(|l| (l.partner_id, l.kind))
        .collect();
    assert_eq!(who, was);
    assert_eq!(reversal.cumulative_fraction, d("0.25"));
    assert_eq!(
        reversal.lines[0].formula.text,
        "reversal of 0.25 of the accrued 10.00 USD: 10% of 100.00 USD sale"
    );
}

#[test]
fn a_25_percent_refund_of_a_sale_that_crossed_a_tier_reverses_25_percent_of_its_top_up() {
    // Given tiers of 5% from 0 and 10% from $1,000 over the month, and a $600 sale then a $600
    // sale that crosses the tier (base $60 and a $30 top-up of the first sale)
    let tiers = vec![
        Tier {
            from: d("0"),
            price: TierPrice::Percent(pct("5")),
        },
        Tier {
            from: d("1000"),
            price: TierPrice::Percent(pct("10")),
        },
    ];
    let mut p = plan(vec![rule(
        "volume",
        Reward::TieredVolume {
            basis: VolumeBasis::Gross,
            mode: TierMode::Tiered,
            tiers,
        },
    )]);
    p.overrides = vec![pct("1")];
    let mut h = History::new(p);
    h.accrue(&sale(1, usd("600.00"), at(2025, 3, 1)));
    let mut second = sale(2, usd("600.00"), at(2025, 3, 2));
    second.upline = vec![PARENT];
    let crossing = h.accrue(&second);
    assert_eq!(
        amounts(&crossing.lines),
        ["60.00 USD", "30.00 USD", "6.00 USD"]
    );

    // When a quarter of the second sale is refunded
    let reversal = reverse(&crossing, d("0.25")).unwrap();

    // Then a quarter of the base, of the top-up and of the override is reversed
    assert_eq!(
        amounts(&reversal.lines),
        ["-15.00 USD", "-7.50 USD", "-1.50 USD"]
    );
    assert_eq!(reversal.lines[1].kind, LineKind::TierTopUp);
}

#[test]
fn successive_partial_refunds_reverse_exactly_the_accrual_once_the_whole_is_refunded() {
    // Given a commission of $10.00 and overrides of $0.05 and $0.01
    let mut p = plan(vec![rule("sales", Reward::PercentOfGross(pct("10")))]);
    p.overrides = vec![pct("0.05"), pct("0.01")];
    let mut facts = sale(1, usd("100.00"), at(2025, 3, 9));
    facts.upline = vec![PARENT, GRANDPARENT];
    let accrual = History::new(p).accrue(&facts);
    assert_eq!(
        amounts(&accrual.lines),
        ["10.00 USD", "0.05 USD", "0.01 USD"]
    );

    // When a third, another third, and then the remainder are refunded
    let third = Decimal::ONE / Decimal::from(3);
    let first = reverse(&accrual, third).unwrap();
    let second = reverse_remaining(&accrual, std::slice::from_ref(&first), third).unwrap();
    let earlier = [first.clone(), second.clone()];
    let last = reverse_remaining(&accrual, &earlier, second.remaining_fraction()).unwrap();

    // Then each step reverses its share, and together exactly the accrual
    assert_eq!(
        amounts(&first.lines),
        ["-3.33 USD", "-0.02 USD", "0.00 USD"]
    );
    assert_eq!(
        amounts(&second.lines),
        ["-3.34 USD", "-0.01 USD", "-0.01 USD"]
    );
    assert_eq!(amounts(&last.lines), ["-3.33 USD", "-0.02 USD", "0.00 USD"]);
    assert_eq!(last.cumulative_fraction, Decimal::ONE);
    for (i, line) in accrual.lines.iter().enumerate() {
        let reversed = Money::try_sum(
            Currency::USD,
            [&first, &second, &last].iter().map(|r| r.lines[i].amount),
        )
        .unwrap();
        assert_eq!(reversed, -line.amount);
    }
}

#[test]
fn refunds_beyond_the_whole_accrual_are_refused() {
    // Given 60% already refunded
    let accrual = multi_level();
    let first = reverse(&accrual, d("0.6")).unwrap();

    // When another 50% is asked for, then it is refused
    assert_eq!(
        reverse_remaining(&accrual, &[first], d("0.5")),
        Err(EngineError::BadRefundFraction {
            fraction: d("0.5"),
            reason: "the refunds would exceed the whole accrual"
        })
    );
    // And fractions outside (0, 1] are refused outright
    assert!(reverse(&accrual, d("0")).is_err());
    assert!(reverse(&accrual, d("1.5")).is_err());
}

#[test]
fn a_reversal_of_another_accrual_is_refused_as_an_earlier_reversal() {
    // Given a reversal of another conversion's accrual
    let accrual = multi_level();
    let mut other = reverse(&accrual, d("0.5")).unwrap();
    other.conversion_id = uuid::Uuid::from_u128(7);

    // Then it cannot count as reversed-so-far
    assert_eq!(
        reverse_remaining(&accrual, &[other], d("0.5")),
        Err(EngineError::ReversalMismatch(accrual.conversion_id))
    );
}

#[test]
fn a_full_refund_reverses_every_line_exactly() {
    let accrual = multi_level();
    let reversal = reverse(&accrual, Decimal::ONE).unwrap();
    assert_eq!(
        amounts(&reversal.lines),
        ["-10.00 USD", "-2.00 USD", "-1.00 USD"]
    );
    assert_eq!(reversal.remaining_fraction(), Decimal::ZERO);
}
