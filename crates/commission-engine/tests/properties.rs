//! Properties over random plans, histories and refunds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

mod common;

use chrono::{Duration, TimeZone, Utc};
use common::*;
use pl_commission_engine::*;
use pl_money::{Currency, Decimal, Money};
use proptest::prelude::*;
use uuid::Uuid;

fn percent() -> impl Strategy<Value = Percent> {
    (0i64..=10_000).prop_map(|bp| Percent::new(Decimal::new(bp, 2)).unwrap())
}

fn cents(max: i64) -> impl Strategy<Value = Money> {
    (0..=max).prop_map(|c| Money::from_minor_units(c, Currency::USD))
}

/// Any reward except the net revenue share (the one that may go negative).
fn reward() -> impl Strategy<Value = Reward> {
    let tiers = |revenue: bool| {
        prop::collection::vec((1i64..500_000, 0i64..=2_000), 0..4).prop_map(move |steps| {
            let mut from = Decimal::ZERO;
            let mut price = 100i64;
            let mut tiers = Vec::new();
            for (i, (gap, rise)) in std::iter::once((0, 0)).chain(steps).enumerate() {
                if i > 0 {
                    from += Decimal::new(gap, 2);
                }
                price = (price + rise).min(10_000);
                let price = if revenue {
                    TierPrice::Percent(Percent::new(Decimal::new(price, 2)).unwrap())
                } else {
                    TierPrice::PerUnit(Money::from_minor_units(price, Currency::USD))
                };
                tiers.push(Tier { from, price });
            }
            tiers
        })
    };
    let mode = prop_oneof![Just(TierMode::Tiered), Just(TierMode::Ladder)];
    let basis = prop_oneof![
        Just(VolumeBasis::Gross),
        Just(VolumeBasis::Net),
        Just(VolumeBasis::Count),
        Just(VolumeBasis::Lots)
    ];
    let of = prop_oneof![Just(Base::Gross), Just(Base::Net)];
    prop_oneof![
        cents(10_000).prop_map(Reward::Flat),
        percent().prop_map(Reward::PercentOfGross),
        percent().prop_map(Reward::PercentOfNet),
        (cents(10_000), percent(), of.clone()).prop_map(|(flat, percent, of)| Reward::Hybrid {
            flat,
            percent,
            of
        }),
        (percent(), of.clone()).prop_map(|(percent, of)| Reward::FirstYearPercent { percent, of }),
        (
            percent(),
            percent(),
            1u32..6,
            prop::option::of(1u32..12),
            of
        )
            .prop_map(|(early, late, split, months, of)| Reward::Recurring {
                schedule: vec![
                    ScheduleStep {
                        from_month: 1,
                        to_month: Some(split),
                        percent: early
                    },
                    ScheduleStep {
                        from_month: split + 1,
                        to_month: None,
                        percent: late
                    },
                ],
                duration: months.map_or(RecurringDuration::Lifetime, RecurringDuration::Months),
                of,
            }),
        (basis, mode).prop_flat_map(move |(basis, mode)| tiers(basis.is_revenue())
            .prop_map(move |tiers| Reward::TieredVolume { basis, mode, tiers })),
        cents(2_000).prop_map(Reward::PerLot),
        Just(Reward::ResellerMargin),
    ]
}

fn any_plan() -> impl Strategy<Value = PlanVersion> {
    (
        reward(),
        prop::option::of(cents(50_000).prop_filter("positive", |m| m.is_positive())),
        prop::option::of(cents(200_000).prop_filter("positive", |m| m.is_positive())),
        any::<bool>(),
        prop::collection::vec(percent(), 0..=3),
        cents(5_000),
    )
        .prop_map(
            |(reward, per_conversion, per_period, cpa_recovery, overrides, cpa)| {
                let mut main = rule("main", reward);
                main.cap_per_conversion = per_conversion;
                main.cap_per_period = per_period;
                let mut p = plan(vec![
                    when_kind(rule("cpa", Reward::Flat(cpa)), ConversionKind::Signup),
                    main,
                ]);
                p.cpa_recovery = cpa_recovery;
                p.overrides = overrides;
                p
            },
        )
}

/// One step of a history: a conversion, or a churn.
#[derive(Debug, Clone)]
enum Step {
    Convert(Box<ConversionFacts>),
    Churn(String, chrono::DateTime<Utc>),
}

fn history(allow_ngr: bool) -> impl Strategy<Value = Vec<Step>> {
    let kind = if allow_ngr {
        prop_oneof![
            Just(ConversionKind::NetRevenueReport),
            Just(ConversionKind::Signup)
        ]
        .boxed()
    } else {
        prop_oneof![
            Just(ConversionKind::Lead),
            Just(ConversionKind::Signup),
            Just(ConversionKind::Sale),
            Just(ConversionKind::SubscriptionInvoice),
        ]
        .boxed()
    };
    let step = (
        kind,
        0i64..6,          // days after the previous step
        0usize..3,        // customer
        0i64..10_000_000, // gross cents
        -2_000_000i64..2_000_000,
        0i64..100_000, // lots in hundredths
        1i64..=100,    // weight in hundredths
        0usize..=3,    // upline length
        any::<bool>(), // EUR at 1.0825
        0u8..20,       // churn when 0
    );
    prop::collection::vec(step, 1..30).prop_map(move |steps| {
        let mut when = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        steps
            .into_iter()
            .enumerate()
            .map(
                |(n, (kind, days, customer, gross, net, lots, weight, upline, eur, churn))| {
                    when += Duration::days(days) + Duration::minutes(1);
                    let customer = format!("c{customer}");
                    if churn == 0 {
                        return Step::Churn(customer, when);
                    }
                    let currency = if eur { Currency::EUR } else { Currency::USD };
                    let gross = Money::from_minor_units(gross, currency);
                    let net = if kind == ConversionKind::NetRevenueReport {
                        Money::from_minor_units(net, currency)
                    } else {
                        Money::from_minor_units(
                            net.abs() % (gross.amount().mantissa() as i64 + 1),
                            currency,
                        )
                    };
                    let list =
                        Money::from_minor_units(gross.to_minor_units().unwrap() / 10, currency);
                    let partner_price =
                        Money::from_minor_units(list.to_minor_units().unwrap() * 7 / 10, currency);
                    Step::Convert(Box::new(ConversionFacts {
                        customer_id: customer,
                        gross: (kind != ConversionKind::NetRevenueReport).then_some(gross),
                        net: Some(net),
                        lots: Some(Decimal::new(lots, 2)),
                        reseller: Some(ResellerPricing {
                            list_price: list,
                            partner_price,
                            quantity: 3,
                        }),
                        weight: Decimal::new(weight, 2),
                        split: None,
                        brand: None,
                        upline: (0..upline)
                            .map(|i| Uuid::from_u128(0x7_0000 + i as u128))
                            .collect(),
                        fx_rate: eur.then(|| d("1.0825")),
                        ..conversion(n as u128, kind, when)
                    }))
                },
            )
            .collect()
    })
}

/// Runs a history, returning every accrual in order and the final state.
fn run(plan: &PlanVersion, steps: &[Step]) -> (Vec<Accrual>, PartnerState) {
    let mut state = PartnerState::new(PARTNER, plan.plan_id);
    let mut accruals = Vec::new();
    for step in steps {
        match step {
            Step::Convert(facts) => {
                let accrual = accrue(plan, &state, facts).unwrap();
                state.apply(&accrual).unwrap();
                accruals.push(accrual);
            }
            Step::Churn(customer, at) => state.apply_churn(customer, *at),
        }
    }
    (accruals, state)
}

fn fraction() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        (1i64..=10_000).prop_map(|bp| Decimal::new(bp, 4)),
        (1u32..=97).prop_flat_map(
            |den| (1..=den).prop_map(move |num| Decimal::from(num) / Decimal::from(den))
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_sequence_of_partial_refunds_reverses_more_than_was_accrued(
        plan in any_plan(),
        steps in history(false),
        fractions in prop::collection::vec(fraction(), 1..8),
    ) {
        // Given any accrual with lines
        let (accruals, _) = run(&plan, &steps);
        for accrual in accruals.iter().filter(|a| !a.lines.is_empty()) {
            // When it is refunded in parts, as long as the parts fit, then the remainder
            let mut reversals: Vec<Reversal> = Vec::new();
            let mut refunded = Decimal::ZERO;
            for f in &fractions {
                if refunded + f >= Decimal::ONE {
                    break;
                }
                reversals.push(reverse_remaining(accrual, &reversals, *f).unwrap());
                refunded += f;
                // Then no line is ever reversed beyond what it accrued, nor in the wrong direction
                for (i, line) in accrual.lines.iter().enumerate() {
                    let reversed = Money::try_sum(
                        Currency::USD, reversals.iter().map(|r| -r.lines[i].amount)).unwrap();
                    prop_assert!(reversed.amount().abs() <= line.amount.amount().abs());
                    prop_assert!(reversed.is_zero() || reversed.is_negative() == line.amount.is_negative());
                }
            }
            let remaining = Decimal::ONE - refunded;
            reversals.push(reverse_remaining(accrual, &reversals, remaining).unwrap());
            // And once all is refunded, exactly the accrual has been reversed, line by line
            for (i, line) in accrual.lines.iter().enumerate() {
                let reversed = Money::try_sum(
                    Currency::USD, reversals.iter().map(|r| r.lines[i].amount)).unwrap();
                prop_assert_eq!(reversed, -line.amount);
            }
            // And a refund beyond the whole is refused
            prop_assert!(reverse_remaining(accrual, &reversals, Decimal::new(1, 28)).is_err());
        }
    }

    #[test]
    fn a_full_reversal_sums_exactly_to_the_accrual(plan in any_plan(), steps in history(false)) {
        let (accruals, _) = run(&plan, &steps);
        for accrual in &accruals {
            let reversal = reverse(accrual, Decimal::ONE);
            if accrual.lines.is_empty() {
                continue;
            }
            let reversal = reversal.unwrap();
            let back = Money::try_sum(Currency::USD, reversal.lines.iter().map(|l| l.amount)).unwrap();
            prop_assert_eq!(back, -accrual.total(Currency::USD).unwrap());
        }
    }

    #[test]
    fn accruals_are_never_negative_outside_net_revenue_shares(
        plan in any_plan(),
        steps in history(false),
    ) {
        // Given any plan without a net revenue share and any history, then every line is
        // zero or more, in the payout currency, at its minor unit
        let (accruals, _) = run(&plan, &steps);
        for line in accruals.iter().flat_map(|a| &a.lines) {
            prop_assert!(!line.amount.is_negative(), "{line:?}");
            prop_assert_eq!(line.amount.currency(), Currency::USD);
            prop_assert!(line.amount.to_minor_units().is_ok());
        }
    }

    #[test]
    fn a_net_revenue_share_may_go_negative_but_never_below_what_it_paid(
        policy in prop_oneof![
            Just(NetRevenuePolicy::CarryForwardNegative),
            Just(NetRevenuePolicy::ResetEachPeriod)
        ],
        rate in percent(),
        cpa_recovery in any::<bool>(),
        steps in history(true),
    ) {
        // Given an NGR share with or without CPA recovery
        let mut p = plan(vec![
            when_kind(rule("cpa", Reward::Flat(usd("20.00"))), ConversionKind::Signup),
            rule("ngr", Reward::NetRevenueShare(rate)),
        ]);
        p.net_revenue_policy = policy;
        p.cpa_recovery = cpa_recovery;
        // When any history of reports runs
        let (accruals, _) = run(&p, &steps);
        // Then per customer and month, the partner's NGR lines never sum below zero
        let mut sums = std::collections::BTreeMap::new();
        for a in &accruals {
            for line in a.lines.iter().filter(|l| l.rule_id == "ngr" && l.kind == LineKind::Base) {
                let sum = sums.entry((a.customer_id.clone(), a.period))
                    .or_insert(Money::zero(Currency::USD));
                *sum = sum.checked_add(line.amount).unwrap();
                prop_assert!(!sum.is_negative(), "{sum} after {line:?}");
            }
        }
    }

    #[test]
    fn replaying_the_same_facts_from_the_same_state_gives_identical_accruals(
        plan in any_plan(),
        steps in history(false),
    ) {
        // Given a history run once
        let (first, state) = run(&plan, &steps);
        // When it is run again from scratch
        let (second, replayed) = run(&plan, &steps);
        // Then the accruals are identical, byte for byte, and so is the state
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(
            serde_json::to_string(&first).unwrap(),
            serde_json::to_string(&second).unwrap()
        );
        prop_assert_eq!(&state, &replayed);
        // And applying the stored accruals (read back from JSON, as from events) and churns
        // to a fresh state rebuilds the same state without computing anything
        let mut rebuilt = PartnerState::new(PARTNER, plan.plan_id);
        let mut stored = first.iter();
        for step in &steps {
            match step {
                Step::Convert(_) => {
                    let json = serde_json::to_string(stored.next().unwrap()).unwrap();
                    rebuilt.apply(&serde_json::from_str::<Accrual>(&json).unwrap()).unwrap();
                }
                Step::Churn(customer, at) => rebuilt.apply_churn(customer, *at),
            }
        }
        prop_assert_eq!(&rebuilt, &state);
        // And the state survives a JSON round trip (the service stores it in snapshots)
        let json = serde_json::to_string(&state).unwrap();
        prop_assert_eq!(serde_json::from_str::<PartnerState>(&json).unwrap(), state.clone());
        // And computing the same facts twice from one state gives the same accrual
        if let Some(Step::Convert(facts)) = steps.last() {
            prop_assert_eq!(accrue(&plan, &state, facts), accrue(&plan, &state, facts));
        }
    }
}
