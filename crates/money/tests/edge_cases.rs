//! Edge cases of the public API, one behaviour per test.
// The helpers below unwrap outside #[test] functions; marking the file as test code lets
// clippy's allow-unwrap-in-tests cover them.
#![cfg(test)]

use std::cmp::Ordering;

use pl_money::{allocate, allocate_evenly, parse_amount, Currency, Decimal, Money, MoneyError};
use pl_money::{Currency::*, RoundingMode, RoundingMode::*};

fn money(s: &str) -> Money {
    s.parse().unwrap()
}

fn dec(s: &str) -> Decimal {
    parse_amount(s).unwrap()
}

fn texts(parts: &[Money]) -> Vec<String> {
    parts.iter().map(ToString::to_string).collect()
}

#[test]
fn display_pads_to_the_minor_unit() {
    assert_eq!(Money::new(Decimal::from(5), USD).to_string(), "5.00 USD");
    assert_eq!(Money::new(Decimal::from(500), JPY).to_string(), "500 JPY");
    assert_eq!(Money::new(dec("1.5"), KWD).to_string(), "1.500 KWD");
    assert_eq!(Money::new(dec("-0.1"), BHD).to_string(), "-0.100 BHD");
    assert_eq!(Money::zero(EUR).to_string(), "0.00 EUR");
}

#[test]
fn display_keeps_digits_beyond_the_minor_unit() {
    assert_eq!(Money::new(dec("1.23456"), USD).to_string(), "1.23456 USD");
    assert_eq!(Money::new(dec("1.5"), JPY).to_string(), "1.5 JPY");
    assert_eq!(money("1.23456 USD"), Money::new(dec("1.23456"), USD));
}

#[test]
fn display_of_the_largest_amount_round_trips() {
    let max = Money::new(Decimal::MAX, USD);
    assert_eq!(max.to_string(), "79228162514264337593543950335 USD");
    assert_eq!(money(&max.to_string()), max);
}

#[test]
fn negative_zero_displays_as_zero() {
    assert_eq!((-Money::zero(USD)).to_string(), "0.00 USD");
    let tiny_loss = Money::new(dec("-0.001"), USD).round(HalfEven);
    assert_eq!(tiny_loss.to_string(), "0.00 USD");
    assert!(!tiny_loss.is_negative());
}

#[test]
fn money_parses_amount_space_code() {
    assert_eq!(money("12.34 USD"), Money::from_minor_units(1234, USD));
    assert_eq!(money("-7 JPY"), Money::from_minor_units(-7, JPY));
    assert_eq!(money("1.234 KWD").to_minor_units(), Ok(1234));
}

#[test]
fn malformed_money_strings_give_precise_errors() {
    let cases = [
        ("", MoneyError::Empty),
        ("12.34", MoneyError::MissingCurrency),
        ("12.34 ", MoneyError::MissingCurrency),
        ("12.34  USD", MoneyError::Whitespace),
        ("12.34 USD ", MoneyError::Whitespace),
        (" 12.34 USD", MoneyError::Whitespace),
        (" USD", MoneyError::Whitespace),
        ("12.34 usd", MoneyError::UnknownCurrency("usd".into())),
        ("12.34 XYZ", MoneyError::UnknownCurrency("XYZ".into())),
        ("1,234.00 USD", MoneyError::Separator(',')),
        ("1e3 USD", MoneyError::Exponent),
        ("+1 USD", MoneyError::LeadingPlus),
        ("USD 12.34", MoneyError::InvalidCharacter('U')),
    ];
    for (input, expected) in cases {
        assert_eq!(input.parse::<Money>(), Err(expected), "{input:?}");
    }
}

#[test]
fn parse_keeps_extra_decimals_and_parse_exact_rejects_them() {
    assert_eq!(Money::parse("1.005", USD).unwrap().amount(), dec("1.005"));
    assert_eq!(
        Money::parse_exact("1.005", USD),
        Err(MoneyError::ExcessPrecision {
            currency: USD,
            decimals: 3
        })
    );
    assert_eq!(
        Money::parse_exact("1.000", USD),
        Err(MoneyError::ExcessPrecision {
            currency: USD,
            decimals: 3
        })
    );
    assert_eq!(
        Money::parse_exact("1.5", USD).unwrap().to_string(),
        "1.50 USD"
    );
    assert_eq!(
        Money::parse_exact("1.005", KWD).unwrap().to_string(),
        "1.005 KWD"
    );
    assert_eq!(
        Money::parse_exact("100.5", JPY),
        Err(MoneyError::ExcessPrecision {
            currency: JPY,
            decimals: 1
        })
    );
}

#[test]
fn excess_precision_message_names_the_minor_unit() {
    let err = Money::parse_exact("1.005", USD).unwrap_err();
    assert_eq!(
        err.to_string(),
        "amount has 3 decimal places but USD allows 2"
    );
}

#[test]
fn too_many_digits_are_rejected_for_money_too() {
    let s = format!("{} USD", "9".repeat(30));
    assert_eq!(s.parse::<Money>(), Err(MoneyError::TooManyDigits));
}

#[test]
fn adding_different_currencies_is_a_mismatch() {
    let usd = money("1.00 USD");
    let eur = money("1.00 EUR");
    let mismatch = MoneyError::CurrencyMismatch {
        left: USD,
        right: EUR,
    };
    assert_eq!(usd.checked_add(eur), Err(mismatch.clone()));
    assert_eq!(usd.checked_sub(eur), Err(mismatch.clone()));
    assert_eq!(usd.checked_cmp(eur), Err(mismatch));
    assert_eq!(
        usd.checked_add(eur).unwrap_err().to_string(),
        "currency mismatch: USD vs EUR"
    );
}

#[test]
fn sums_keep_the_larger_scale() {
    let sum = money("1.10 USD").checked_add(money("2.125 USD")).unwrap();
    assert_eq!(sum.to_string(), "3.225 USD");
    let difference = money("1.10 USD").checked_sub(money("1.10 USD")).unwrap();
    assert_eq!(difference.to_string(), "0.00 USD");
    assert!(difference.is_zero());
}

#[test]
fn sums_past_the_decimal_range_overflow_instead_of_rounding() {
    let max = Money::new(Decimal::MAX, USD);
    assert_eq!(max.checked_add(money("1 USD")), Err(MoneyError::Overflow));
    assert_eq!(
        (-max).checked_sub(money("1 USD")),
        Err(MoneyError::Overflow)
    );
    // Decimal alone would round this sum to 79228162514264337593543950335; money refuses.
    assert_eq!(max.checked_add(money("0.1 USD")), Err(MoneyError::Overflow));
    assert_eq!(
        max.checked_sub(money("1 USD")).unwrap().amount(),
        Decimal::MAX - Decimal::ONE
    );
}

#[test]
fn try_sum_adds_everything_in_one_currency() {
    let items = [money("1.10 USD"), money("2.20 USD"), money("-0.30 USD")];
    assert_eq!(Money::try_sum(USD, items), Ok(money("3.00 USD")));
    assert_eq!(Money::try_sum(USD, []), Ok(Money::zero(USD)));
    assert_eq!(
        Money::try_sum(USD, [money("1 EUR")]),
        Err(MoneyError::CurrencyMismatch {
            left: USD,
            right: EUR
        })
    );
}

#[test]
fn comparison_works_within_a_currency() {
    assert_eq!(
        money("1.5 USD").checked_cmp(money("1.50 USD")),
        Ok(Ordering::Equal)
    );
    assert_eq!(
        money("-2 USD").checked_cmp(money("1 USD")),
        Ok(Ordering::Less)
    );
    assert_eq!(money("1.5 USD"), money("1.50 USD"));
}

#[test]
fn sign_helpers_report_the_sign() {
    assert!(money("0.01 USD").is_positive());
    assert!(money("-0.01 USD").is_negative());
    assert!(!Money::zero(USD).is_positive() && !Money::zero(USD).is_negative());
    assert_eq!(money("-3.50 USD").abs(), money("3.50 USD"));
    assert_eq!(-money("3.50 USD"), money("-3.50 USD"));
}

#[test]
fn half_even_rounds_ties_to_the_even_cent() {
    assert_eq!(money("2.345 USD").round(HalfEven), money("2.34 USD"));
    assert_eq!(money("2.355 USD").round(HalfEven), money("2.36 USD"));
    assert_eq!(money("-2.345 USD").round(HalfEven), money("-2.34 USD"));
    assert_eq!(RoundingMode::default(), HalfEven);
}

#[test]
fn every_rounding_mode_matches_its_definition() {
    let inputs = ["2.345", "2.355", "-2.345", "2.341", "-2.341"];
    let expected = [
        (HalfEven, ["2.34", "2.36", "-2.34", "2.34", "-2.34"]),
        (HalfUp, ["2.35", "2.36", "-2.35", "2.34", "-2.34"]),
        (HalfDown, ["2.34", "2.35", "-2.34", "2.34", "-2.34"]),
        (Up, ["2.35", "2.36", "-2.35", "2.35", "-2.35"]),
        (Down, ["2.34", "2.35", "-2.34", "2.34", "-2.34"]),
        (Ceiling, ["2.35", "2.36", "-2.34", "2.35", "-2.34"]),
        (Floor, ["2.34", "2.35", "-2.35", "2.34", "-2.35"]),
    ];
    for (mode, outputs) in expected {
        for (input, output) in inputs.iter().zip(outputs) {
            let rounded = Money::parse(input, USD).unwrap().round(mode);
            assert_eq!(rounded.amount().to_string(), output, "{mode:?} {input}");
        }
    }
}

#[test]
fn rounding_uses_the_currency_minor_unit() {
    assert_eq!(money("1234.5 JPY").round(HalfEven), money("1234 JPY"));
    assert_eq!(money("1235.5 JPY").round(HalfEven), money("1236 JPY"));
    assert_eq!(money("1.2345 KWD").round(HalfEven).to_string(), "1.234 KWD");
    assert_eq!(money("1.2355 BHD").round(HalfEven).to_string(), "1.236 BHD");
    assert_eq!(money("1.2341 BHD").round(Up).to_string(), "1.235 BHD");
}

#[test]
fn rounding_pads_to_exactly_the_requested_places() {
    assert_eq!(money("5 USD").round(HalfEven).amount().scale(), 2);
    assert_eq!(
        money("5.125 USD").round_to(1, Down).amount().to_string(),
        "5.1"
    );
    assert_eq!(
        money("5 USD").round_to(4, Down).amount().to_string(),
        "5.0000"
    );
    assert_eq!(money("5 USD").round_to(u32::MAX, Down), money("5 USD"));
}

#[test]
fn minor_units_round_trip() {
    assert_eq!(Money::from_minor_units(1234, USD).to_string(), "12.34 USD");
    assert_eq!(Money::from_minor_units(1234, JPY).to_string(), "1234 JPY");
    assert_eq!(
        Money::from_minor_units(-1234, KWD).to_string(),
        "-1.234 KWD"
    );
    assert_eq!(money("12.34 USD").to_minor_units(), Ok(1234));
    assert_eq!(money("12 USD").to_minor_units(), Ok(1200));
    assert_eq!(money("12.340 USD").to_minor_units(), Ok(1234));
    assert_eq!(money("-0.001 BHD").to_minor_units(), Ok(-1));
    let extremes = [i64::MIN, i64::MAX];
    for units in extremes {
        assert_eq!(
            Money::from_minor_units(units, USD).to_minor_units(),
            Ok(units)
        );
    }
}

#[test]
fn minor_units_refuse_sub_minor_digits_and_overflow() {
    assert_eq!(
        money("12.345 USD").to_minor_units(),
        Err(MoneyError::ExcessPrecision {
            currency: USD,
            decimals: 3
        })
    );
    assert_eq!(
        money("0.5 JPY").to_minor_units(),
        Err(MoneyError::ExcessPrecision {
            currency: JPY,
            decimals: 1
        })
    );
    let huge = Money::new(Decimal::from(i64::MAX), USD);
    assert_eq!(huge.to_minor_units(), Err(MoneyError::Overflow));
}

#[test]
fn percent_is_the_exact_unrounded_share() {
    let base = money("80.10 USD");
    let commission = base.percent(Decimal::new(125, 1)).unwrap();
    assert_eq!(commission.amount(), dec("10.0125"));
    assert_eq!(commission.round(HalfEven), money("10.01 USD"));
    assert_eq!(
        money("200 JPY").percent(Decimal::from(3)).unwrap(),
        money("6 JPY")
    );
    assert_eq!(
        money("-100.00 USD").percent(Decimal::from(-10)).unwrap(),
        money("10 USD")
    );
}

#[test]
fn basis_points_are_hundredths_of_a_percent() {
    let base = money("1000.00 EUR");
    assert_eq!(base.bps(Decimal::from(25)).unwrap(), money("2.5 EUR"));
    assert_eq!(base.bps(Decimal::new(5, 1)).unwrap().amount(), dec("0.05"));
    assert_eq!(base.bps(Decimal::from(10_000)).unwrap(), base);
}

#[test]
fn percent_of_a_rate_with_many_decimals_still_works() {
    // 28 decimal places cannot move two further right, so this takes the division path.
    let third = Decimal::ONE / Decimal::from(3);
    let share = money("90.00 USD").percent(third).unwrap();
    assert_eq!(share.round(HalfEven), money("0.30 USD"));
}

#[test]
fn multiplication_that_cannot_fit_overflows() {
    let max = Money::new(Decimal::MAX, USD);
    assert_eq!(max.checked_mul(Decimal::TWO), Err(MoneyError::Overflow));
    assert_eq!(max.percent(Decimal::from(200)), Err(MoneyError::Overflow));
    assert_eq!(
        money("2.50 USD").checked_mul(Decimal::from(3)),
        Ok(money("7.50 USD"))
    );
}

#[test]
fn multiplying_by_a_division_result_rounds_far_below_the_cent() {
    let third = Decimal::ONE / Decimal::from(3);
    let share = money("100.00 USD").checked_mul(third).unwrap();
    assert_eq!(share.round(HalfEven), money("33.33 USD"));
}

#[test]
fn allocation_gives_leftover_cents_to_the_largest_remainders() {
    let parts = allocate(money("100.00 USD"), &[dec("1"), dec("2"), dec("3")]).unwrap();
    assert_eq!(texts(&parts), ["16.67 USD", "33.33 USD", "50.00 USD"]);
}

#[test]
fn allocation_ties_go_to_the_lower_index() {
    let parts = allocate(money("0.05 USD"), &[dec("1"); 3]).unwrap();
    assert_eq!(texts(&parts), ["0.02 USD", "0.02 USD", "0.01 USD"]);
    let parts = allocate(money("0.01 USD"), &[dec("0.5"), dec("0.50")]).unwrap();
    assert_eq!(texts(&parts), ["0.01 USD", "0.00 USD"]);
}

#[test]
fn a_refund_splits_like_the_sale() {
    let weights = [dec("0.7"), dec("0.2"), dec("0.1")];
    let sale = allocate(money("10.01 USD"), &weights).unwrap();
    let refund = allocate(money("-10.01 USD"), &weights).unwrap();
    let negated: Vec<Money> = sale.iter().map(|&part| -part).collect();
    assert_eq!(refund, negated);
    assert_eq!(texts(&refund), ["-7.01 USD", "-2.00 USD", "-1.00 USD"]);
}

#[test]
fn allocation_respects_zero_and_three_decimal_currencies() {
    let yen = allocate(money("100 JPY"), &[dec("1"); 3]).unwrap();
    assert_eq!(texts(&yen), ["34 JPY", "33 JPY", "33 JPY"]);
    let dinar = allocate(money("1.000 KWD"), &[dec("1"); 3]).unwrap();
    assert_eq!(texts(&dinar), ["0.334 KWD", "0.333 KWD", "0.333 KWD"]);
}

#[test]
fn zero_weights_get_nothing() {
    let parts = allocate(money("1.00 USD"), &[dec("0"), dec("1"), dec("0")]).unwrap();
    assert_eq!(texts(&parts), ["0.00 USD", "1.00 USD", "0.00 USD"]);
}

#[test]
fn allocating_zero_gives_zero_parts() {
    let parts = allocate(Money::zero(USD), &[dec("1"), dec("2")]).unwrap();
    assert!(parts.iter().all(|part| part.is_zero()));
}

#[test]
fn invalid_allocations_are_rejected() {
    let total = money("1.00 USD");
    assert_eq!(allocate(total, &[]), Err(MoneyError::NoParts));
    assert_eq!(
        allocate(total, &[dec("1"), dec("-1")]),
        Err(MoneyError::NegativeWeight { index: 1 })
    );
    assert_eq!(
        allocate(total, &[dec("0"), dec("0.00")]),
        Err(MoneyError::ZeroWeights)
    );
    assert_eq!(
        allocate(money("1.005 USD"), &[dec("1")]),
        Err(MoneyError::ExcessPrecision {
            currency: USD,
            decimals: 3
        })
    );
    assert_eq!(allocate_evenly(total, 0), Err(MoneyError::NoParts));
}

#[test]
fn allocation_accepts_a_total_with_trailing_zeros() {
    let parts = allocate(money("1.000 USD"), &[dec("1"), dec("1")]).unwrap();
    assert_eq!(texts(&parts), ["0.50 USD", "0.50 USD"]);
}

#[test]
fn allocation_beyond_128_bit_intermediates_overflows() {
    let huge_weight = Decimal::MAX;
    let total = Money::new(Decimal::MAX, JPY);
    assert_eq!(
        allocate(total, &[huge_weight, Decimal::ONE]),
        Err(MoneyError::Overflow)
    );
}

#[test]
fn even_allocation_matches_weighted_allocation() {
    let total = money("-100.01 USD");
    assert_eq!(
        allocate_evenly(total, 7).unwrap(),
        allocate(total, &[Decimal::ONE; 7]).unwrap()
    );
    assert_eq!(
        texts(&allocate_evenly(money("0.02 USD"), 3).unwrap()),
        ["0.01 USD", "0.01 USD", "0.00 USD"]
    );
}

#[test]
fn money_serializes_with_a_string_amount() {
    let json = serde_json::to_string(&money("12.34 USD")).unwrap();
    assert_eq!(json, r#"{"amount":"12.34","currency":"USD"}"#);
    let json = serde_json::to_string(&Money::new(Decimal::from(5), JPY)).unwrap();
    assert_eq!(json, r#"{"amount":"5","currency":"JPY"}"#);
    let json = serde_json::to_string(&Money::new(Decimal::from(5), BHD)).unwrap();
    assert_eq!(json, r#"{"amount":"5.000","currency":"BHD"}"#);
}

#[test]
fn money_deserializes_strictly() {
    let ok: Money = serde_json::from_str(r#"{"amount":"12.34","currency":"USD"}"#).unwrap();
    assert_eq!(ok, money("12.34 USD"));
    let rejected = [
        r#"{"amount":12.34,"currency":"USD"}"#,
        r#"{"amount":"1,234.00","currency":"USD"}"#,
        r#"{"amount":"1e3","currency":"USD"}"#,
        r#"{"amount":"12.34","currency":"usd"}"#,
        r#"{"amount":"12.34"}"#,
        r#"{"amount":"12.34","currency":"USD","note":"x"}"#,
    ];
    for json in rejected {
        assert!(serde_json::from_str::<Money>(json).is_err(), "{json}");
    }
}

#[test]
fn currency_is_small_and_copy() {
    assert_eq!(std::mem::size_of::<Currency>(), 1);
    let currency = USD;
    let copy = currency;
    assert_eq!(currency, copy);
}
