//! Flat, percentage and hybrid rewards, caps, multi-level overrides and FX conversion.

mod common;

use common::*;
use pl_commission_engine::*;
use pl_money::{Currency, Decimal, Money};

#[test]
fn overrides_of_ten_two_and_one_percent_on_a_100_dollar_sale_pay_10_2_and_1() {
    // Given 10% to the partner, 2% to its parent and 1% to its grandparent
    let mut p = plan(vec![rule("sales", Reward::PercentOfGross(pct("10")))]);
    p.overrides = vec![pct("2"), pct("1")];
    let mut h = History::new(p);
    let mut facts = sale(1, usd("100.00"), at(2025, 3, 9));
    facts.upline = vec![PARENT, GRANDPARENT];

    // When the $100 sale is accrued
    let accrual = h.accrue(&facts);

    // Then the partner, parent and grandparent are owed $10, $2 and $1
    assert_eq!(
        amounts(&accrual.lines),
        ["10.00 USD", "2.00 USD", "1.00 USD"]
    );
    let who: Vec<_> = accrual
        .lines
        .iter()
        .map(|l| (l.partner_id, l.kind))
        .collect();
    assert_eq!(
        who,
        [
            (PARTNER, LineKind::Base),
            (PARENT, LineKind::Override { level: 1 }),
            (GRANDPARENT, LineKind::Override { level: 2 })
        ]
    );
    assert_eq!(accrual.lines[0].formula.text, "10% of 100.00 USD sale");
    assert_eq!(
        accrual.lines[1].formula.text,
        format!("level 1 override: 2% of 100.00 USD sale credited to partner {PARTNER}")
    );
}

#[test]
fn an_upline_shorter_than_the_override_levels_pays_only_the_levels_present() {
    // Given two override levels and a partner with only a parent
    let mut p = plan(vec![rule("sales", Reward::PercentOfGross(pct("10")))]);
    p.overrides = vec![pct("2"), pct("1")];
    let mut facts = sale(1, usd("100.00"), at(2025, 3, 9));
    facts.upline = vec![PARENT];

    // When accrued, then only the parent's override is paid
    let accrual = History::new(p).accrue(&facts);
    assert_eq!(amounts(&accrual.lines), ["10.00 USD", "2.00 USD"]);
}

#[test]
fn a_flat_cpa_pays_the_fee_times_the_attribution_weight() {
    // Given a $20 CPA on signups and a partner credited with half the signup
    let p = plan(vec![when_kind(
        rule("cpa", Reward::Flat(usd("20.00"))),
        ConversionKind::Signup,
    )]);
    let mut facts = conversion(1, ConversionKind::Signup, at(2025, 3, 9));
    facts.weight = d("0.5");

    // When accrued
    let accrual = History::new(p).accrue(&facts);

    // Then half the fee is owed, and the formula says so
    assert_eq!(amounts(&accrual.lines), ["10.00 USD"]);
    assert_eq!(
        accrual.lines[0].formula.text,
        "flat 20.00 USD per signup × attribution weight 0.5"
    );
}

#[test]
fn a_percentage_is_rounded_half_even_once_at_the_end() {
    // Given 12.5% of net and a partner credited with a third of an 80.10 USD sale
    let p = plan(vec![rule("net", Reward::PercentOfNet(pct("12.5")))]);
    let mut facts = sale(1, usd("80.10"), at(2025, 3, 9));
    facts.net = Some(usd("80.10"));
    facts.weight = d("0.3333");

    // When accrued
    let accrual = History::new(p).accrue(&facts);

    // Then 80.10 × 0.3333 × 12.5% = 3.33716625 is rounded once to 3.34
    let f = &accrual.lines[0].formula;
    assert_eq!(f.exact.to_string(), "3.337166250 USD");
    assert_eq!(accrual.lines[0].amount, usd("3.34"));
    assert_eq!(f.credited_base, Some(usd("26.69733")));

    // And a half-cent tie rounds to even: 12.5% of 0.20 is 0.025 → 0.02
    let p = plan(vec![rule("gross", Reward::PercentOfGross(pct("12.5")))]);
    let accrual = History::new(p).accrue(&sale(2, usd("0.20"), at(2025, 3, 9)));
    assert_eq!(amounts(&accrual.lines), ["0.02 USD"]);
}

#[test]
fn a_hybrid_pays_the_flat_fee_plus_the_percentage() {
    // Given an influencer deal: $50 plus 5% of gross
    let p = plan(vec![rule(
        "influencer",
        Reward::Hybrid {
            flat: usd("50.00"),
            percent: pct("5"),
            of: Base::Gross,
        },
    )]);

    // When a $200 sale is accrued
    let accrual = History::new(p).accrue(&sale(1, usd("200.00"), at(2025, 3, 9)));

    // Then $60 is owed
    assert_eq!(amounts(&accrual.lines), ["60.00 USD"]);
    assert_eq!(
        accrual.lines[0].formula.text,
        "(50.00 USD + 5% of 200.00 USD sale)"
    );
}

#[test]
fn a_cap_per_conversion_limits_the_base_line_and_says_so() {
    // Given 10% capped at $25 per conversion
    let mut r = rule("sales", Reward::PercentOfGross(pct("10")));
    r.cap_per_conversion = Some(usd("25.00"));
    let mut p = plan(vec![r]);
    p.overrides = vec![pct("2")];
    let mut facts = sale(1, usd("400.00"), at(2025, 3, 9));
    facts.upline = vec![PARENT];

    // When a $400 sale is accrued
    let accrual = History::new(p).accrue(&facts);

    // Then the partner gets $25 instead of $40, and the override is not capped
    assert_eq!(amounts(&accrual.lines), ["25.00 USD", "8.00 USD"]);
    let f = &accrual.lines[0].formula;
    assert_eq!(f.rounded, usd("40.00"));
    assert_eq!(
        f.caps,
        [CapApplied {
            cap: CapKind::PerConversion,
            limit: usd("25.00"),
            reduced_by: usd("15.00")
        }]
    );
    assert_eq!(
        f.text,
        "10% of 400.00 USD sale; capped at 25.00 USD per conversion, 15.00 USD not paid"
    );
}

#[test]
fn a_cap_per_period_limits_a_rule_over_the_calendar_month_and_resets_the_next() {
    // Given 10% capped at $50 per month
    let mut r = rule("sales", Reward::PercentOfGross(pct("10")));
    r.cap_per_period = Some(usd("50.00"));
    let mut h = History::new(plan(vec![r]));

    // When three $200 sales are accrued in March and one in April
    let march: Vec<_> = (1..=3)
        .map(|n| paid(&h.accrue(&sale(n, usd("200.00"), at(2025, 3, n as u32)))))
        .collect();
    let april = paid(&h.accrue(&sale(4, usd("200.00"), at(2025, 4, 1))));

    // Then March pays $20, $20, then the $10 left; April starts again
    assert_eq!(march, ["20.00 USD", "20.00 USD", "10.00 USD"]);
    assert_eq!(april, "20.00 USD");
    let totals = h
        .state
        .period_totals("2025-03".parse().unwrap(), "sales")
        .unwrap();
    assert_eq!(
        (totals.earned, totals.accrued),
        (usd("60.00"), usd("50.00"))
    );
}

#[test]
fn a_conversion_in_another_currency_is_converted_at_the_recorded_rate() {
    // Given a USD plan paying 10%, overrides 2%, and a EUR sale with a recorded rate of 1.0825
    let mut p = plan(vec![rule("sales", Reward::PercentOfGross(pct("10")))]);
    p.overrides = vec![pct("2")];
    let mut facts = sale(1, eur("80.00"), at(2025, 3, 9));
    facts.fx_rate = Some(d("1.0825"));
    facts.upline = vec![PARENT];

    // When accrued
    let accrual = History::new(p).accrue(&facts);

    // Then 80.00 EUR = 86.60 USD, 10% = 8.66 USD, override 1.732 → 1.73 USD
    assert_eq!(amounts(&accrual.lines), ["8.66 USD", "1.73 USD"]);
    let f = &accrual.lines[0].formula;
    assert_eq!(
        (f.source_amount, f.fx_rate),
        (Some(eur("80.00")), Some(d("1.0825")))
    );
    assert_eq!(f.base.unwrap().currency(), Currency::USD);
    assert_eq!(f.text, "10% of 86.60 USD sale (80.00 EUR at 1.0825)");
}

#[test]
fn a_missing_fx_rate_is_an_error_never_a_silent_fallback() {
    // Given a EUR sale without a recorded rate under a USD plan
    let p = plan(vec![rule("sales", Reward::PercentOfGross(pct("10")))]);
    let facts = sale(1, eur("80.00"), at(2025, 3, 9));
    let state = PartnerState::new(PARTNER, PLAN);

    // When accrued, then the engine refuses, naming the currencies and the business date
    assert_eq!(
        accrue(&p, &state, &facts),
        Err(EngineError::FxRateMissing {
            from: Currency::EUR,
            to: Currency::USD,
            date: at(2025, 3, 9).date_naive()
        })
    );
}

#[test]
fn a_flat_fee_needs_no_rate_but_an_override_on_a_foreign_amount_does() {
    // Given a $20 flat fee and a EUR sale without a rate
    let mut p = plan(vec![rule("cpa", Reward::Flat(usd("20.00")))]);
    let facts = sale(1, eur("80.00"), at(2025, 3, 9));
    let state = PartnerState::new(PARTNER, PLAN);

    // When accrued without overrides, then the flat fee needs no conversion
    assert_eq!(
        amounts(&accrue(&p, &state, &facts).unwrap().lines),
        ["20.00 USD"]
    );

    // But with an override on the sale amount and a parent, the rate is required
    p.overrides = vec![pct("2")];
    let mut facts = facts;
    facts.upline = vec![PARENT];
    assert!(matches!(
        accrue(&p, &state, &facts),
        Err(EngineError::FxRateMissing { .. })
    ));
}

#[test]
fn a_rate_on_a_conversion_already_in_the_payout_currency_is_refused_unless_it_is_one() {
    let p = plan(vec![rule("sales", Reward::PercentOfGross(pct("10")))]);
    let state = PartnerState::new(PARTNER, PLAN);
    let mut facts = sale(1, usd("100.00"), at(2025, 3, 9));
    facts.fx_rate = Some(d("1.1"));
    assert!(matches!(
        accrue(&p, &state, &facts),
        Err(EngineError::InvalidFacts(
            FactsError::UnexpectedFxRate { .. }
        ))
    ));
    facts.fx_rate = Some(d("1"));
    assert_eq!(
        amounts(&accrue(&p, &state, &facts).unwrap().lines),
        ["10.00 USD"]
    );
}

#[test]
fn a_percentage_rule_on_a_conversion_without_the_amount_names_what_is_missing() {
    let p = plan(vec![rule("net", Reward::PercentOfNet(pct("10")))]);
    let state = PartnerState::new(PARTNER, PLAN);
    assert_eq!(
        accrue(&p, &state, &sale(1, usd("100.00"), at(2025, 3, 9))),
        Err(EngineError::MissingInput {
            rule: "net".into(),
            field: "net"
        })
    );
}

#[test]
fn inconsistent_facts_are_refused() {
    let p = plan(vec![rule("sales", Reward::PercentOfGross(pct("10")))]);
    let state = PartnerState::new(PARTNER, PLAN);
    let ok = sale(1, usd("100.00"), at(2025, 3, 9));
    let cases = [
        (
            ConversionFacts {
                weight: d("0"),
                ..ok.clone()
            },
            "weight",
        ),
        (
            ConversionFacts {
                weight: d("1.01"),
                ..ok.clone()
            },
            "weight",
        ),
        (
            ConversionFacts {
                gross: Some(usd("-1.00")),
                ..ok.clone()
            },
            "negative",
        ),
        (
            ConversionFacts {
                net: Some(eur("1.00")),
                ..ok.clone()
            },
            "currencies",
        ),
        (
            ConversionFacts {
                upline: vec![PARTNER],
                ..ok.clone()
            },
            "upline",
        ),
        (
            ConversionFacts {
                customer_id: String::new(),
                ..ok.clone()
            },
            "customer",
        ),
        (
            ConversionFacts {
                fx_rate: Some(d("-1")),
                ..ok.clone()
            },
            "rate",
        ),
    ];
    for (facts, what) in cases {
        assert!(
            matches!(
                accrue(&p, &state, &facts),
                Err(EngineError::InvalidFacts(_))
            ),
            "{what}"
        );
    }
}

#[test]
fn a_per_lot_rebate_pays_the_amount_per_traded_lot() {
    // Given a Forex rebate of $7 per lot, when 2.5 lots are traded
    let p = plan(vec![rule("rebate", Reward::PerLot(usd("7.00")))]);
    let accrual = History::new(p).accrue(&trade(1, "2.5", at(2025, 3, 9)));

    // Then $17.50 is owed
    assert_eq!(amounts(&accrual.lines), ["17.50 USD"]);
    assert_eq!(accrual.lines[0].formula.text, "7.00 USD per lot × 2.5 lots");
}

#[test]
fn an_accrual_and_its_plan_survive_a_json_round_trip() {
    // Given an accrual with overrides and a plan
    let mut p = plan(vec![rule("sales", Reward::PercentOfGross(pct("10")))]);
    p.overrides = vec![pct("2")];
    let mut facts = sale(1, usd("100.00"), at(2025, 3, 9));
    facts.upline = vec![PARENT];
    let accrual = History::new(p.clone()).accrue(&facts);

    // When serialized and read back, then nothing changes, and amounts are strings
    let json = serde_json::to_string(&accrual).unwrap();
    assert_eq!(serde_json::from_str::<Accrual>(&json).unwrap(), accrual);
    assert!(
        json.contains(r#""amount":{"amount":"10.00","currency":"USD"}"#),
        "{json}"
    );
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<PlanVersion>(&json).unwrap(), p);
    let state_json = serde_json::to_string(&PartnerState::new(PARTNER, PLAN)).unwrap();
    assert!(serde_json::from_str::<PartnerState>(&state_json).is_ok());
}

#[test]
fn maturity_and_minimum_payout_follow_the_plan() {
    let p = plan(vec![rule("r", Reward::Flat(usd("1.00")))]);
    assert_eq!(p.matures_at(at(2025, 3, 9)), Some(at(2025, 4, 8)));
    assert!(p.meets_minimum_payout(usd("50.00")));
    assert!(!p.meets_minimum_payout(usd("49.99")));
    assert!(!p.meets_minimum_payout(Money::from_minor_units(9999, Currency::EUR)));
}

#[test]
fn amounts_beyond_a_trillion_and_lots_beyond_a_billion_are_refused_by_field() {
    assert_eq!(MAX_AMOUNT, Decimal::from(1_000_000_000_000_i64));
    assert_eq!(MAX_LOTS, Decimal::from(1_000_000_000_i64));
    let p = plan(vec![rule("sales", Reward::PercentOfGross(pct("10")))]);
    let state = PartnerState::new(PARTNER, PLAN);
    let huge = sale(1, usd("79228162514264337593543950335"), at(2025, 3, 9));
    let err = accrue(&p, &state, &huge).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid conversion facts: gross must be at most 1000000000000 in magnitude"
    );
    let at_the_limit = sale(2, usd("1000000000000"), at(2025, 3, 9));
    assert!(accrue(&p, &state, &at_the_limit).is_ok());
    let lots = trade(3, "1000000000.01", at(2025, 3, 9));
    assert!(matches!(
        lots.validate(),
        Err(FactsError::TooLarge { field: "lots", .. })
    ));
}
