//! Property tests: the invariants that must hold for every input, not just the examples.

use pl_money::{allocate, allocate_evenly, parse_amount, Currency, Decimal, Money, RoundingMode};
use proptest::prelude::*;

const MODES: [RoundingMode; 7] = [
    RoundingMode::HalfEven,
    RoundingMode::HalfUp,
    RoundingMode::HalfDown,
    RoundingMode::Up,
    RoundingMode::Down,
    RoundingMode::Ceiling,
    RoundingMode::Floor,
];

/// Weights are generated with at most this many decimal places, so the test can turn them into
/// integers and check shares in exact integer arithmetic.
const WEIGHT_PLACES: u32 = 6;

fn currency() -> impl Strategy<Value = Currency> {
    prop::sample::select(Currency::all())
}

fn mode() -> impl Strategy<Value = RoundingMode> {
    prop::sample::select(&MODES[..])
}

/// Any value a Decimal can hold, at any scale.
fn any_decimal() -> impl Strategy<Value = Decimal> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<bool>(),
        0..=28u32,
    )
        .prop_map(|(lo, mid, hi, negative, scale)| {
            Decimal::from_parts(lo, mid, hi, negative, scale)
        })
}

/// Any Decimal, biased towards small magnitudes and money-like scales where ties and carries
/// actually happen.
fn amount() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        (any::<i64>(), 0..=6u32).prop_map(|(units, scale)| Decimal::new(units, scale)),
        (-100_000i64..100_000, 0..=4u32).prop_map(|(units, scale)| Decimal::new(units, scale)),
        any_decimal(),
    ]
}

fn any_money() -> impl Strategy<Value = Money> {
    (amount(), currency()).prop_map(|(amount, currency)| Money::new(amount, currency))
}

/// Money that is a whole number of minor units, as allocation requires.
fn minor_unit_money() -> impl Strategy<Value = Money> {
    (any::<i64>(), currency())
        .prop_map(|(units, currency)| Money::from_minor_units(units, currency))
}

/// Weights as (mantissa, scale) with scale at most `WEIGHT_PLACES`; at least one is non-zero.
fn weights() -> impl Strategy<Value = Vec<Decimal>> {
    prop::collection::vec((0u32..=1_000_000, 0..=WEIGHT_PLACES), 1..20)
        .prop_map(|raw| {
            raw.into_iter()
                .map(|(mantissa, scale)| Decimal::new(i64::from(mantissa), scale))
                .collect::<Vec<_>>()
        })
        .prop_filter("weights must not all be zero", |w| {
            w.iter().any(|w| !w.is_zero())
        })
}

/// A weight in units of 10^-WEIGHT_PLACES.
fn integer_weight(weight: Decimal) -> i128 {
    weight.mantissa() * 10i128.pow(WEIGHT_PLACES - weight.scale())
}

proptest! {
    #[test]
    fn allocation_parts_always_sum_to_the_total(total in minor_unit_money(), weights in weights()) {
        let parts = allocate(total, &weights).unwrap();
        prop_assert_eq!(parts.len(), weights.len());
        prop_assert_eq!(Money::try_sum(total.currency(), parts.iter().copied()).unwrap(), total);
    }

    #[test]
    fn allocation_parts_are_whole_minor_units_near_their_exact_share(
        total in minor_unit_money(),
        weights in weights(),
    ) {
        let parts = allocate(total, &weights).unwrap();
        let total_units = i128::from(total.to_minor_units().unwrap());
        let weight_sum: i128 = weights.iter().copied().map(integer_weight).sum();
        for (part, weight) in parts.iter().zip(&weights) {
            prop_assert_eq!(part.currency(), total.currency());
            prop_assert_eq!(part.amount().scale(), total.currency().minor_unit());
            // |part - total * w / W| < 1 minor unit, multiplied through by W to stay exact.
            let part_units = i128::from(part.to_minor_units().unwrap());
            let gap = part_units * weight_sum - total_units * integer_weight(*weight);
            prop_assert!(gap.abs() < weight_sum, "part {} for weight {}", part, weight);
        }
    }

    #[test]
    fn a_negative_total_allocates_as_the_negated_positive_total(
        total in minor_unit_money(),
        weights in weights(),
    ) {
        let positive: Vec<Money> = allocate(total.abs(), &weights).unwrap();
        let negative: Vec<Money> = allocate(-total.abs(), &weights).unwrap();
        let negated: Vec<Money> = positive.into_iter().map(|part| -part).collect();
        prop_assert_eq!(negative, negated);
    }

    #[test]
    fn even_allocation_sums_to_the_total_and_differs_by_at_most_one_unit(
        total in minor_unit_money(),
        parts in 1usize..50,
    ) {
        let shares = allocate_evenly(total, parts).unwrap();
        prop_assert_eq!(shares.len(), parts);
        prop_assert_eq!(Money::try_sum(total.currency(), shares.iter().copied()).unwrap(), total);
        let units: Vec<i64> = shares.iter().map(|s| s.to_minor_units().unwrap()).collect();
        let spread = units.iter().max().unwrap() - units.iter().min().unwrap();
        prop_assert!(spread <= 1);
    }

    #[test]
    fn allocation_never_panics_on_arbitrary_weights(
        total in any_money(),
        weights in prop::collection::vec(any_decimal(), 0..8),
    ) {
        if let Ok(parts) = allocate(total, &weights) {
            prop_assert_eq!(Money::try_sum(total.currency(), parts).unwrap(), total);
        }
    }

    #[test]
    fn display_then_parse_round_trips(money in any_money()) {
        let text = money.to_string();
        let parsed: Money = text.parse().unwrap();
        prop_assert_eq!(parsed, money);
        prop_assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn minor_unit_amounts_display_with_exactly_the_minor_unit(money in minor_unit_money()) {
        let text = money.to_string();
        let (amount, code) = text.split_once(' ').unwrap();
        prop_assert_eq!(code, money.currency().code());
        let decimals = amount.split_once('.').map_or(0, |(_, fraction)| fraction.len());
        prop_assert_eq!(decimals, money.currency().minor_unit() as usize);
    }

    #[test]
    fn json_round_trips_with_a_string_amount(money in any_money()) {
        let json = serde_json::to_value(money).unwrap();
        prop_assert!(json["amount"].is_string());
        let back: Money = serde_json::from_value(json).unwrap();
        prop_assert_eq!(back, money);
    }

    #[test]
    fn decimal_text_round_trips_through_parse_amount(amount in any_decimal()) {
        let parsed = parse_amount(&amount.to_string()).unwrap();
        prop_assert_eq!(parsed, amount);
        prop_assert_eq!(parsed.scale(), amount.scale());
    }

    #[test]
    fn parsing_arbitrary_strings_never_panics(s in any::<String>()) {
        let _ = parse_amount(&s);
        let _ = s.parse::<Money>();
        let _ = s.parse::<Currency>();
    }

    #[test]
    fn parsing_number_like_strings_never_panics_and_accepts_only_plain_decimals(
        s in "[-+0-9.,eE _']{0,40}",
    ) {
        if let Ok(amount) = parse_amount(&s) {
            let plain = s.strip_prefix('-').unwrap_or(&s);
            prop_assert!(plain.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
            prop_assert_eq!(parse_amount(&amount.to_string()).unwrap(), amount);
        }
        let _ = format!("{s} USD").parse::<Money>();
    }

    #[test]
    fn arithmetic_never_panics(
        a in any_decimal(),
        b in any_decimal(),
        factor in any_decimal(),
        dp in any::<u32>(),
        mode in mode(),
        currency in currency(),
    ) {
        let (a, b) = (Money::new(a, currency), Money::new(b, currency));
        let _ = a.checked_add(b);
        let _ = a.checked_sub(b);
        let _ = a.checked_mul(factor);
        let _ = a.percent(factor);
        let _ = a.bps(factor);
        let _ = a.checked_cmp(b);
        let _ = a.round(mode);
        let _ = a.round_to(dp, mode);
        let _ = a.to_minor_units();
        let _ = -a;
        let _ = a.abs();
    }

    #[test]
    fn addition_and_subtraction_are_exact_inverses(a in amount(), b in amount(), currency in currency()) {
        let (a, b) = (Money::new(a, currency), Money::new(b, currency));
        if let Ok(sum) = a.checked_add(b) {
            prop_assert_eq!(sum.checked_sub(b).unwrap(), a);
            prop_assert_eq!(sum.checked_sub(a).unwrap(), b);
            prop_assert_eq!(b.checked_add(a).unwrap(), sum);
        }
        if let Ok(difference) = a.checked_sub(b) {
            prop_assert_eq!(difference.checked_add(b).unwrap(), a);
        }
    }

    #[test]
    fn adding_realistic_amounts_never_overflows(
        a in -1_000_000_000_000_000i64..1_000_000_000_000_000,
        b in -1_000_000_000_000_000i64..1_000_000_000_000_000,
        currency in currency(),
    ) {
        let (x, y) = (Money::from_minor_units(a, currency), Money::from_minor_units(b, currency));
        prop_assert_eq!(x.checked_add(y).unwrap().to_minor_units().unwrap(), a + b);
        prop_assert_eq!(x.checked_sub(y).unwrap().to_minor_units().unwrap(), a - b);
    }

    #[test]
    fn mixing_currencies_always_fails(a in any_money(), b in any_money()) {
        prop_assume!(a.currency() != b.currency());
        prop_assert!(a.checked_add(b).is_err());
        prop_assert!(a.checked_sub(b).is_err());
        prop_assert!(a.checked_cmp(b).is_err());
    }

    #[test]
    fn rounding_is_idempotent_and_moves_less_than_one_minor_unit(money in any_money(), mode in mode()) {
        let rounded = money.round(mode);
        prop_assert_eq!(rounded.round(mode), rounded);
        prop_assert_eq!(rounded.currency(), money.currency());
        let one_unit = Money::from_minor_units(1, money.currency());
        if let Ok(moved) = rounded.checked_sub(money) {
            prop_assert!(moved.abs().checked_cmp(one_unit).unwrap().is_lt());
        }
        if rounded.amount().abs() < Decimal::from(i64::MAX / 1000) {
            prop_assert!(rounded.to_minor_units().is_ok());
        }
    }

    #[test]
    fn minor_units_round_trip(units in any::<i64>(), currency in currency()) {
        prop_assert_eq!(Money::from_minor_units(units, currency).to_minor_units().unwrap(), units);
    }

    #[test]
    fn percent_equals_multiplying_by_the_fraction(
        units in -1_000_000_000_000i64..1_000_000_000_000,
        pct in (0i64..100_000, 0..=4u32),
        currency in currency(),
    ) {
        let money = Money::from_minor_units(units, currency);
        let pct = Decimal::new(pct.0, pct.1);
        let expected = money.checked_mul(pct).unwrap().amount() / Decimal::ONE_HUNDRED;
        prop_assert_eq!(money.percent(pct).unwrap().amount(), expected);
        prop_assert_eq!(money.bps(pct * Decimal::ONE_HUNDRED).unwrap(), money.percent(pct).unwrap());
    }
}
