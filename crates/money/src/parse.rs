//! Strict parsing of decimal amount strings.

use rust_decimal::Decimal;

use crate::MoneyError;

/// Largest mantissa a `Decimal` holds (96 bits).
pub(crate) const MAX_MANTISSA: u128 = (1 << 96) - 1;

/// Parses a plain decimal amount such as `"12.34"`, `"-0.5"` or `"1000"`.
///
/// The grammar is deliberately narrow, because amounts arrive from partners and a lenient parser
/// turns a typo into a wrong booking: an optional leading `-`, at least one digit, and optionally
/// a `.` followed by at least one digit. Everything else is a typed error: empty input,
/// whitespace, a leading `+`, grouping separators (`1,000`), exponents (`1e5`), any other
/// character, more than 28 decimal places, or more digits than a 96-bit `Decimal` holds.
/// Leading zeros are accepted. The scale is kept as written (`"5.10"` has two decimal places).
/// Never panics.
///
/// ```
/// use pl_money::{parse_amount, MoneyError};
///
/// assert_eq!(parse_amount("12.30")?.to_string(), "12.30");
/// assert_eq!(parse_amount("1,000"), Err(MoneyError::Separator(',')));
/// assert_eq!(parse_amount("1e5"), Err(MoneyError::Exponent));
/// # Ok::<(), MoneyError>(())
/// ```
pub fn parse_amount(s: &str) -> Result<Decimal, MoneyError> {
    if s.is_empty() {
        return Err(MoneyError::Empty);
    }
    if s.starts_with('+') {
        return Err(MoneyError::LeadingPlus);
    }
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };

    let mut mantissa: u128 = 0;
    // Overflow is reported after the scan so that a bad character further on wins: it is the
    // more useful message for input that is not a number at all.
    let mut fits = true;
    let mut int_digits = 0usize;
    let mut frac_digits = 0usize;
    let mut seen_point = false;
    for c in digits.chars() {
        match c {
            '0'..='9' => {
                let digit = u128::from(u32::from(c) - u32::from('0'));
                match mantissa.checked_mul(10).and_then(|m| m.checked_add(digit)) {
                    Some(m) if fits && m <= MAX_MANTISSA => mantissa = m,
                    _ => fits = false,
                }
                if seen_point {
                    frac_digits += 1;
                } else {
                    int_digits += 1;
                }
            }
            '.' if !seen_point => {
                if int_digits == 0 {
                    return Err(MoneyError::MissingDigits);
                }
                seen_point = true;
            }
            ',' | '_' | '\'' => return Err(MoneyError::Separator(c)),
            'e' | 'E' if int_digits > 0 => return Err(MoneyError::Exponent),
            c if c.is_whitespace() => return Err(MoneyError::Whitespace),
            c => return Err(MoneyError::InvalidCharacter(c)),
        }
    }

    if int_digits == 0 || (seen_point && frac_digits == 0) {
        return Err(MoneyError::MissingDigits);
    }
    let scale = u32::try_from(frac_digits)
        .ok()
        .filter(|&scale| scale <= Decimal::MAX_SCALE)
        .ok_or(MoneyError::TooManyDecimals)?;
    if !fits {
        return Err(MoneyError::TooManyDigits);
    }
    let magnitude = i128::try_from(mantissa).map_err(|_| MoneyError::TooManyDigits)?;
    let signed = if negative { -magnitude } else { magnitude };
    Decimal::try_from_i128_with_scale(signed, scale).map_err(|_| MoneyError::TooManyDigits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        parse_amount(s).unwrap().to_string()
    }

    #[test]
    fn plain_amounts_parse_with_their_written_scale() {
        assert_eq!(ok("12.34"), "12.34");
        assert_eq!(ok("5"), "5");
        assert_eq!(ok("5.10"), "5.10");
        assert_eq!(ok("-0.5"), "-0.5");
        assert_eq!(ok("007.50"), "7.50");
        assert_eq!(parse_amount("5.10").unwrap().scale(), 2);
    }

    #[test]
    fn negative_zero_parses_as_plain_zero() {
        let zero = parse_amount("-0.00").unwrap();
        assert!(zero.is_zero());
        assert_eq!(zero.to_string(), "0.00");
    }

    #[test]
    fn empty_input_is_rejected() {
        assert_eq!(parse_amount(""), Err(MoneyError::Empty));
    }

    #[test]
    fn whitespace_anywhere_is_rejected() {
        for s in [" 1", "1 ", "1 000", "1\t", "\n1", "1.\u{a0}5"] {
            assert_eq!(parse_amount(s), Err(MoneyError::Whitespace), "{s:?}");
        }
    }

    #[test]
    fn leading_plus_is_rejected() {
        assert_eq!(parse_amount("+1"), Err(MoneyError::LeadingPlus));
        assert_eq!(parse_amount("-+1"), Err(MoneyError::InvalidCharacter('+')));
    }

    #[test]
    fn commas_and_other_thousands_separators_are_rejected() {
        assert_eq!(parse_amount("1,000.00"), Err(MoneyError::Separator(',')));
        assert_eq!(parse_amount("12,34"), Err(MoneyError::Separator(',')));
        assert_eq!(parse_amount("1_000"), Err(MoneyError::Separator('_')));
        assert_eq!(parse_amount("1'000"), Err(MoneyError::Separator('\'')));
    }

    #[test]
    fn exponents_are_rejected() {
        for s in ["1e5", "1E5", "1.5e-3", "-2e+2"] {
            assert_eq!(parse_amount(s), Err(MoneyError::Exponent), "{s:?}");
        }
    }

    #[test]
    fn non_digits_are_rejected() {
        assert_eq!(parse_amount("abc"), Err(MoneyError::InvalidCharacter('a')));
        assert_eq!(parse_amount("NaN"), Err(MoneyError::InvalidCharacter('N')));
        assert_eq!(parse_amount("inf"), Err(MoneyError::InvalidCharacter('i')));
        assert_eq!(parse_amount("0x1f"), Err(MoneyError::InvalidCharacter('x')));
        assert_eq!(
            parse_amount("1.2.3"),
            Err(MoneyError::InvalidCharacter('.'))
        );
        assert_eq!(parse_amount("--1"), Err(MoneyError::InvalidCharacter('-')));
        assert_eq!(parse_amount("1-"), Err(MoneyError::InvalidCharacter('-')));
        assert_eq!(parse_amount("$1"), Err(MoneyError::InvalidCharacter('$')));
        assert_eq!(parse_amount("١٢"), Err(MoneyError::InvalidCharacter('١')));
    }

    #[test]
    fn a_decimal_point_needs_digits_on_both_sides() {
        for s in ["-", ".", ".5", "-.5", "5.", "-5."] {
            assert_eq!(parse_amount(s), Err(MoneyError::MissingDigits), "{s:?}");
        }
    }

    #[test]
    fn too_many_digits_are_rejected() {
        let max = "79228162514264337593543950335";
        assert_eq!(ok(max), max);
        assert_eq!(ok(&format!("-{max}")), format!("-{max}"));
        assert_eq!(
            parse_amount("79228162514264337593543950336"),
            Err(MoneyError::TooManyDigits)
        );
        assert_eq!(
            parse_amount(&"9".repeat(40)),
            Err(MoneyError::TooManyDigits)
        );
        assert_eq!(
            parse_amount(&"1".repeat(1000)),
            Err(MoneyError::TooManyDigits)
        );
    }

    #[test]
    fn more_than_28_decimal_places_are_rejected() {
        let tiny = format!("0.{}1", "0".repeat(27));
        assert_eq!(parse_amount(&tiny).unwrap(), Decimal::new(1, 28));
        let tinier = format!("0.{}1", "0".repeat(28));
        assert_eq!(parse_amount(&tinier), Err(MoneyError::TooManyDecimals));
    }

    #[test]
    fn a_bad_character_is_reported_before_an_overflow() {
        let s = format!("{}x", "9".repeat(40));
        assert_eq!(parse_amount(&s), Err(MoneyError::InvalidCharacter('x')));
    }

    #[test]
    fn leading_zeros_do_not_count_as_digits() {
        let s = format!("{}1.5", "0".repeat(100));
        assert_eq!(ok(&s), "1.5");
    }
}
