//! Plan validation, rule specificity, tie rejection and version selection.

mod common;

use common::*;
use pl_commission_engine::*;
use pl_money::{Currency, Money};

fn with_country(mut rule: Rule, country: &str) -> Rule {
    rule.conditions.customer_country = Some(country.to_owned());
    rule
}

#[test]
fn the_most_specific_matching_rule_wins() {
    // Given a plan paying 5% on anything, 10% on sales, and 15% on US sales
    let p = plan(vec![
        rule("any", Reward::PercentOfGross(pct("5"))),
        when_kind(
            rule("sales", Reward::PercentOfGross(pct("10"))),
            ConversionKind::Sale,
        ),
        with_country(
            when_kind(
                rule("us-sales", Reward::PercentOfGross(pct("15"))),
                ConversionKind::Sale,
            ),
            "US",
        ),
    ]);
    validate_plan(&p).unwrap();
    let mut us_sale = sale(1, usd("100.00"), at(2025, 3, 1));
    us_sale.customer_country = Some("US".into());
    let mut de_sale = sale(2, usd("100.00"), at(2025, 3, 1));
    de_sale.customer_country = Some("DE".into());
    let lead = ConversionFacts {
        gross: Some(usd("100.00")),
        ..conversion(3, ConversionKind::Lead, at(2025, 3, 1))
    };
    let mut h = History::new(p);

    // When each is accrued
    let us = h.accrue(&us_sale);
    let de = h.accrue(&de_sale);
    let other = h.accrue(&lead);

    // Then each gets the most specific rule that matches it
    assert_eq!(
        (us.rule_id.as_deref(), paid(&us).as_str()),
        (Some("us-sales"), "15.00 USD")
    );
    assert_eq!(
        (de.rule_id.as_deref(), paid(&de).as_str()),
        (Some("sales"), "10.00 USD")
    );
    assert_eq!(
        (other.rule_id.as_deref(), paid(&other).as_str()),
        (Some("any"), "5.00 USD")
    );
}

#[test]
fn two_rules_of_equal_specificity_that_overlap_are_rejected_when_the_plan_is_published() {
    // Given a rule for sales and a rule for US customers: a US sale would match both
    let p = plan(vec![
        when_kind(
            rule("sales", Reward::PercentOfGross(pct("10"))),
            ConversionKind::Sale,
        ),
        with_country(rule("us", Reward::PercentOfGross(pct("12"))), "US"),
    ]);

    // When the plan is validated, then the tie is rejected
    assert_eq!(
        validate_plan(&p),
        Err(PlanError::AmbiguousRules {
            first: "sales".into(),
            second: "us".into(),
            specificity: 1
        })
    );
}

#[test]
fn rules_of_equal_specificity_with_disjoint_conditions_are_accepted() {
    // Given rules for US and for DE customers, and for months 1-3 and 4-12
    let mut early = rule("early", Reward::PercentOfGross(pct("40")));
    early.conditions.month_index = Some(MonthRange { first: 1, last: 3 });
    let mut later = rule("later", Reward::PercentOfGross(pct("20")));
    later.conditions.month_index = Some(MonthRange { first: 4, last: 12 });
    let countries = plan(vec![
        with_country(rule("us", Reward::PercentOfGross(pct("10"))), "US"),
        with_country(rule("de", Reward::PercentOfGross(pct("12"))), "DE"),
    ]);
    let p = plan(vec![early, later]);

    // When validated, then both are fine (the month ranges meet but do not overlap)
    assert_eq!(validate_plan(&countries), Ok(()));
    assert_eq!(validate_plan(&p), Ok(()));

    // But months 1-3 and 3-12 do overlap
    let mut p = p;
    p.rules[1].conditions.month_index = Some(MonthRange { first: 3, last: 12 });
    assert!(matches!(
        validate_plan(&p),
        Err(PlanError::AmbiguousRules { .. })
    ));
}

#[test]
fn a_conversion_carrying_two_products_of_equally_specific_rules_is_an_ambiguous_match() {
    // Given rules for product A and product B (disjoint for publication)
    let mut a = rule("a", Reward::PercentOfGross(pct("10")));
    a.conditions.product = Some("A".into());
    let mut b = rule("b", Reward::PercentOfGross(pct("20")));
    b.conditions.product = Some("B".into());
    let p = plan(vec![a, b]);
    validate_plan(&p).unwrap();

    // When a sale carries both products
    let mut both = sale(1, usd("100.00"), at(2025, 3, 1));
    both.products = vec!["A".into(), "B".into()];
    let state = PartnerState::new(PARTNER, PLAN);

    // Then the engine refuses to pick one by accident
    assert_eq!(
        accrue(&p, &state, &both),
        Err(EngineError::AmbiguousMatch {
            first: "a".into(),
            second: "b".into()
        })
    );
}

#[test]
fn a_conversion_no_rule_matches_gives_an_empty_accrual_with_the_reason() {
    // Given a plan that pays only on sales
    let p = plan(vec![when_kind(
        rule("sales", Reward::PercentOfGross(pct("10"))),
        ConversionKind::Sale,
    )]);
    let state = PartnerState::new(PARTNER, PLAN);

    // When a lead arrives
    let accrual = accrue(
        &p,
        &state,
        &conversion(1, ConversionKind::Lead, at(2025, 3, 1)),
    )
    .unwrap();

    // Then nothing is owed, and the accrual says why
    assert!(accrual.lines.is_empty());
    assert_eq!(accrual.not_payable, Some(NotPayable::NoMatchingRule));
    assert_eq!(accrual.rule_id, None);
}

#[test]
fn bad_rates_are_unrepresentable_and_rejected_when_deserialized() {
    // Given rates below 0% and above 100%, then they cannot be built
    assert_eq!(
        Percent::new(d("-1")),
        Err(EngineError::RateOutOfRange(d("-1")))
    );
    assert_eq!(
        Percent::new(d("100.01")),
        Err(EngineError::RateOutOfRange(d("100.01")))
    );
    assert_eq!(Percent::from_fraction(d("0.02")), Ok(pct("2")));
    // and a stored plan carrying one does not deserialize
    let mut json =
        serde_json::to_value(plan(vec![rule("r", Reward::PercentOfGross(pct("10")))])).unwrap();
    json["rules"][0]["reward"]["percent_of_gross"] = serde_json::json!("150");
    assert!(serde_json::from_value::<PlanVersion>(json).is_err());
}

#[test]
fn tiers_must_be_present_start_at_zero_increase_and_match_their_basis() {
    let tiered = |tiers: Vec<Tier>, basis| {
        plan(vec![rule(
            "t",
            Reward::TieredVolume {
                basis,
                mode: TierMode::Tiered,
                tiers,
            },
        )])
    };
    let at_pct = |from: &str, rate: &str| Tier {
        from: d(from),
        price: TierPrice::Percent(pct(rate)),
    };

    // Given no tiers, then rejected
    assert_eq!(
        validate_plan(&tiered(vec![], VolumeBasis::Gross)),
        Err(PlanError::EmptyTiers { rule: "t".into() })
    );
    // Given unsorted thresholds, then rejected
    assert!(matches!(
        validate_plan(&tiered(
            vec![at_pct("0", "5"), at_pct("1000", "7"), at_pct("500", "9")],
            VolumeBasis::Gross
        )),
        Err(PlanError::BadTiers {
            reason: "thresholds must strictly increase",
            ..
        })
    ));
    // Given a first tier above zero, then rejected
    assert!(matches!(
        validate_plan(&tiered(vec![at_pct("10", "5")], VolumeBasis::Gross)),
        Err(PlanError::BadTiers { .. })
    ));
    // Given a falling rate, then rejected
    assert!(matches!(
        validate_plan(&tiered(
            vec![at_pct("0", "7"), at_pct("10", "5")],
            VolumeBasis::Gross
        )),
        Err(PlanError::BadTiers { .. })
    ));
    // Given percentages on a lot basis, then rejected
    assert!(matches!(
        validate_plan(&tiered(vec![at_pct("0", "5")], VolumeBasis::Lots)),
        Err(PlanError::BadTiers { .. })
    ));
    // Given 33 tiers, then rejected
    let many = (0..33).map(|i| at_pct(&i.to_string(), "5")).collect();
    assert!(matches!(
        validate_plan(&tiered(many, VolumeBasis::Gross)),
        Err(PlanError::TooManyTiers {
            count: 33,
            max: 32,
            ..
        })
    ));
}

#[test]
fn amounts_in_another_currency_than_the_payout_currency_are_rejected() {
    // Given a USD plan with a EUR flat fee
    let p = plan(vec![rule("cpa", Reward::Flat(eur("20.00")))]);

    // Then publication fails naming the rule
    assert_eq!(
        validate_plan(&p),
        Err(PlanError::CurrencyMismatch {
            rule: "cpa".into(),
            field: "flat",
            expected: Currency::USD,
            found: Currency::EUR
        })
    );
    // And a EUR cap likewise
    let mut capped = rule("pct", Reward::PercentOfGross(pct("10")));
    capped.cap_per_period = Some(Money::from_minor_units(100, Currency::EUR));
    assert!(matches!(
        validate_plan(&plan(vec![capped])),
        Err(PlanError::CurrencyMismatch {
            field: "cap_per_period",
            ..
        })
    ));
}

#[test]
fn limits_on_rules_override_levels_schedules_and_ids_are_enforced() {
    // Given 257 rules, then rejected
    let many = (0..257)
        .map(|i| {
            let mut r = rule(&format!("r{i}"), Reward::Flat(usd("1.00")));
            r.conditions.product = Some(format!("p{i}"));
            r
        })
        .collect();
    assert_eq!(
        validate_plan(&plan(many)),
        Err(PlanError::TooManyRules {
            count: 257,
            max: 256
        })
    );
    // Given six override levels, then rejected
    let mut p = plan(vec![rule("r", Reward::Flat(usd("1.00")))]);
    p.overrides = vec![pct("1"); 6];
    assert_eq!(
        validate_plan(&p),
        Err(PlanError::TooManyOverrideLevels { count: 6, max: 5 })
    );
    // Given a duplicate id, then rejected
    let p = plan(vec![
        when_kind(rule("r", Reward::Flat(usd("1.00"))), ConversionKind::Lead),
        when_kind(rule("r", Reward::Flat(usd("2.00"))), ConversionKind::Sale),
    ]);
    assert_eq!(
        validate_plan(&p),
        Err(PlanError::DuplicateRuleId("r".into()))
    );
    // Given a schedule of 61 steps, then rejected
    let steps = (1..=61)
        .map(|m| ScheduleStep {
            from_month: m,
            to_month: Some(m),
            percent: pct("1"),
        })
        .collect();
    let p = plan(vec![rule(
        "rec",
        Reward::Recurring {
            schedule: steps,
            duration: RecurringDuration::Lifetime,
            of: Base::Gross,
        },
    )]);
    assert!(matches!(
        validate_plan(&p),
        Err(PlanError::BadSchedule { .. })
    ));
    // Given an overlapping schedule, then rejected
    let p = plan(vec![rule(
        "rec",
        Reward::Recurring {
            schedule: vec![
                ScheduleStep {
                    from_month: 1,
                    to_month: Some(3),
                    percent: pct("40"),
                },
                ScheduleStep {
                    from_month: 3,
                    to_month: None,
                    percent: pct("20"),
                },
            ],
            duration: RecurringDuration::Lifetime,
            of: Base::Gross,
        },
    )]);
    assert!(matches!(
        validate_plan(&p),
        Err(PlanError::BadSchedule { .. })
    ));
    // Given an empty plan, then rejected
    assert_eq!(validate_plan(&plan(vec![])), Err(PlanError::NoRules));
}

fn versions() -> Vec<PlanVersion> {
    let v1 = plan(vec![rule("sales", Reward::PercentOfGross(pct("10")))]);
    let mut v2 = plan(vec![rule("sales", Reward::PercentOfGross(pct("8")))]);
    v2.version = 2;
    v2.effective_from = at(2025, 6, 1);
    vec![v1, v2]
}

#[test]
fn a_grandfathered_customer_keeps_the_version_in_force_at_its_first_commission() {
    // Given v1 (10%) and, from June 2025, v2 (8%) under the grandfathered policy
    let versions = versions();
    let mut state = PartnerState::new(PARTNER, PLAN);
    // and a customer first paid under v1 in March
    let march = sale(1, usd("100.00"), at(2025, 3, 1));
    let v = select_version(&versions, &march, &state).unwrap();
    assert_eq!(v.version, 1);
    let first = accrue(v, &state, &march).unwrap();
    assert_eq!(first.effects.lock_version, Some(1));
    state.apply(&first).unwrap();

    // When the same customer buys again in July, and a new customer buys in July
    let july = sale(2, usd("100.00"), at(2025, 7, 1));
    let mut newcomer = sale(3, usd("100.00"), at(2025, 7, 1));
    newcomer.customer_id = "c2".into();

    // Then the old customer stays on v1 at 10%, the new one gets v2 at 8%
    let v = select_version(&versions, &july, &state).unwrap();
    assert_eq!(v.version, 1);
    assert_eq!(paid(&accrue(v, &state, &july).unwrap()), "10.00 USD");
    let v = select_version(&versions, &newcomer, &state).unwrap();
    assert_eq!(v.version, 2);
    assert_eq!(paid(&accrue(v, &state, &newcomer).unwrap()), "8.00 USD");
}

#[test]
fn under_follow_effective_every_conversion_uses_the_version_in_force_and_moves_the_lock() {
    // Given v2 published with the follow-effective policy
    let mut versions = versions();
    versions[1].version_policy = VersionPolicy::FollowEffective;
    let mut state = PartnerState::new(PARTNER, PLAN);
    let march = sale(1, usd("100.00"), at(2025, 3, 1));
    let first = accrue(
        select_version(&versions, &march, &state).unwrap(),
        &state,
        &march,
    )
    .unwrap();
    state.apply(&first).unwrap();

    // When the customer buys again in July
    let july = sale(2, usd("100.00"), at(2025, 7, 1));
    let v = select_version(&versions, &july, &state).unwrap();
    let accrual = accrue(v, &state, &july).unwrap();

    // Then v2 applies, and the customer is now locked to v2
    assert_eq!((v.version, paid(&accrual).as_str()), (2, "8.00 USD"));
    assert_eq!(accrual.effects.lock_version, Some(2));
    state.apply(&accrual).unwrap();
    assert_eq!(state.customer("c1").unwrap().locked_version, Some(2));
}

#[test]
fn a_conversion_before_the_first_version_has_no_version_in_force() {
    // Given versions from 2024-01-01, when a conversion is dated 2023
    let state = PartnerState::new(PARTNER, PLAN);
    let old = sale(1, usd("100.00"), at(2023, 12, 31));

    // Then no version applies
    assert_eq!(
        select_version(&versions(), &old, &state),
        Err(EngineError::NoVersionInForce {
            plan_id: PLAN,
            at: at(2023, 12, 31)
        })
    );
    // And two versions with one number are refused
    let mut dup = versions();
    dup[1].version = 1;
    assert!(matches!(
        select_version(&dup, &sale(2, usd("1.00"), at(2025, 7, 1)), &state),
        Err(EngineError::BadVersions(_))
    ));
}

#[test]
fn state_of_another_partner_is_refused() {
    // Given the state of another partner
    let p = plan(vec![rule("r", Reward::Flat(usd("1.00")))]);
    let state = PartnerState::new(PARENT, PLAN);

    // When accruing for PARTNER, then it is refused
    assert!(matches!(
        accrue(
            &p,
            &state,
            &conversion(1, ConversionKind::Lead, at(2025, 1, 1))
        ),
        Err(EngineError::StateMismatch { .. })
    ));
}
