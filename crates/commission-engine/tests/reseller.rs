//! Reseller margins: list price minus the partner's price, times quantity.

mod common;

use common::*;
use pl_commission_engine::*;

fn reseller_sale(
    n: u128,
    list: pl_money::Money,
    partner: pl_money::Money,
    quantity: u32,
) -> ConversionFacts {
    ConversionFacts {
        reseller: Some(ResellerPricing {
            list_price: list,
            partner_price: partner,
            quantity,
        }),
        ..conversion(n, ConversionKind::Sale, at(2025, 3, 9))
    }
}

#[test]
fn a_reseller_earns_the_margin_between_list_and_partner_price_times_quantity() {
    // Given a reseller margin rule
    let p = plan(vec![rule("var", Reward::ResellerMargin)]);

    // When 3 licences listing at $100 are sold at a partner price of $80
    let accrual = History::new(p).accrue(&reseller_sale(1, usd("100.00"), usd("80.00"), 3));

    // Then the margin of $60 is owed
    assert_eq!(amounts(&accrual.lines), ["60.00 USD"]);
    assert_eq!(
        accrual.lines[0].formula.text,
        "margin (100.00 USD list − 80.00 USD partner price) × 3 units"
    );
}

#[test]
fn a_reseller_margin_in_another_currency_is_converted_at_the_recorded_rate() {
    // Given a USD plan and a EUR sale at 1.10
    let p = plan(vec![rule("var", Reward::ResellerMargin)]);
    let mut facts = reseller_sale(1, eur("99.99"), eur("80.00"), 2);
    facts.fx_rate = Some(d("1.10"));

    // When accrued: (99.99 − 80.00) × 2 = 39.98 EUR = 43.978 USD
    let accrual = History::new(p).accrue(&facts);

    // Then it is rounded once to 43.98 USD
    assert_eq!(amounts(&accrual.lines), ["43.98 USD"]);
    assert_eq!(accrual.lines[0].formula.source_amount, Some(eur("39.98")));
}

#[test]
fn a_partner_price_above_list_price_is_refused() {
    let p = plan(vec![rule("var", Reward::ResellerMargin)]);
    let state = PartnerState::new(PARTNER, PLAN);
    assert!(matches!(
        accrue(
            &p,
            &state,
            &reseller_sale(1, usd("80.00"), usd("100.00"), 1)
        ),
        Err(EngineError::InvalidFacts(FactsError::NegativeMargin { .. }))
    ));
}

#[test]
fn a_margin_rule_without_reseller_pricing_names_what_is_missing() {
    let p = plan(vec![rule("var", Reward::ResellerMargin)]);
    let state = PartnerState::new(PARTNER, PLAN);
    assert_eq!(
        accrue(&p, &state, &sale(1, usd("100.00"), at(2025, 3, 9))),
        Err(EngineError::MissingInput {
            rule: "var".into(),
            field: "reseller"
        })
    );
}
