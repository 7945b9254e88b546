//! The `Money` value: arithmetic, rounding, minor units, and its text and serde forms.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Neg;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

use crate::parse::MAX_MANTISSA;
use crate::{parse_amount, Currency, MoneyError, RoundingMode};

/// An exact decimal amount in one currency.
///
/// * Equality is by value: `5.0 USD == 5.00 USD`, and `Hash` agrees.
/// * There is no `PartialOrd`: amounts in different currencies have no order. Compare with
///   [`Money::checked_cmp`].
/// * Arithmetic only combines equal currencies and returns `Err` instead of panicking.
///   Addition and subtraction are always exact; multiplication rounds only past the 28–29
///   significant digits a `Decimal` holds (see [`Money::checked_mul`]).
/// * The amount may carry more decimal places than the minor unit (an unrounded commission,
///   say); [`Money::round`] brings it back explicitly.
///
/// Text form is `"<amount> <code>"`, e.g. `"12.34 USD"`; JSON form is
/// `{"amount":"12.34","currency":"USD"}` with the amount always a string. Both show at least the
/// minor unit's decimal places (`5.00 USD`, `500 JPY`) and never drop digits, so parsing them back
/// gives an equal value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

impl Money {
    /// Wraps an amount of any scale.
    pub fn new(amount: Decimal, currency: Currency) -> Money {
        let mut amount = amount;
        // Decimal keeps a sign on zero and prints it ("-0.00"); the ledger has a single zero.
        if amount.is_zero() {
            amount.set_sign_positive(true);
        }
        Money { amount, currency }
    }

    /// Zero, at the currency's minor unit (`0.00 USD`).
    pub fn zero(currency: Currency) -> Money {
        Money::from_minor_units(0, currency)
    }

    /// An amount in minor units: `from_minor_units(1234, USD)` is `12.34 USD`.
    pub fn from_minor_units(units: i64, currency: Currency) -> Money {
        // Cannot panic: every minor unit in the table is at most 3, far below Decimal's 28.
        Money::new(Decimal::new(units, currency.minor_unit()), currency)
    }

    /// Parses an amount string (see [`parse_amount`]) in `currency`. Any number of decimal
    /// places up to 28 is kept as written, so an unrounded rate or price survives; use
    /// [`Money::parse_exact`] for input that must already be in minor units.
    pub fn parse(amount: &str, currency: Currency) -> Result<Money, MoneyError> {
        parse_amount(amount).map(|amount| Money::new(amount, currency))
    }

    /// Like [`Money::parse`], but rejects more decimal places than the minor unit, even zeros
    /// (`"1.000"` is an error for USD): input with extra places usually means the wrong
    /// currency or a unit mix-up, and is better refused than rounded.
    pub fn parse_exact(amount: &str, currency: Currency) -> Result<Money, MoneyError> {
        let amount = parse_amount(amount)?;
        if amount.scale() > currency.minor_unit() {
            return Err(MoneyError::ExcessPrecision {
                currency,
                decimals: amount.scale(),
            });
        }
        Ok(Money::new(amount, currency))
    }

    /// The exact amount, with the scale it was built with.
    pub const fn amount(self) -> Decimal {
        self.amount
    }

    /// The currency.
    pub const fn currency(self) -> Currency {
        self.currency
    }

    /// Whether the amount is zero.
    pub fn is_zero(self) -> bool {
        self.amount.is_zero()
    }

    /// Whether the amount is above zero.
    pub fn is_positive(self) -> bool {
        self.amount > Decimal::ZERO
    }

    /// Whether the amount is below zero.
    pub fn is_negative(self) -> bool {
        self.amount < Decimal::ZERO
    }

    /// The amount without its sign.
    pub fn abs(self) -> Money {
        Money::new(self.amount.abs(), self.currency)
    }

    /// Exact sum, never rounded. The result keeps the larger scale of the two (`1.10 + 2.125` is
    /// `3.225`), shedding trailing zeros only if that is what it takes to fit a `Decimal`; a sum
    /// that cannot be held exactly is [`MoneyError::Overflow`].
    pub fn checked_add(self, rhs: Money) -> Result<Money, MoneyError> {
        let currency = self.same_currency(rhs)?;
        exact_add(self.amount, rhs.amount).map(|amount| Money::new(amount, currency))
    }

    /// Exact difference, with the same rules as [`Money::checked_add`].
    pub fn checked_sub(self, rhs: Money) -> Result<Money, MoneyError> {
        let currency = self.same_currency(rhs)?;
        exact_add(self.amount, -rhs.amount).map(|amount| Money::new(amount, currency))
    }

    /// Sums amounts that must all be in `currency`; an empty input is zero.
    pub fn try_sum<I>(currency: Currency, items: I) -> Result<Money, MoneyError>
    where
        I: IntoIterator<Item = Money>,
    {
        items
            .into_iter()
            .try_fold(Money::zero(currency), Money::checked_add)
    }

    /// Multiplies by a factor, unrounded: the product keeps all its decimal places so the
    /// caller rounds once, explicitly.
    ///
    /// The product is exact whenever it fits a `Decimal` (28 decimal places, 96-bit mantissa).
    /// Otherwise it is rounded half-even to the 28–29 significant digits a `Decimal` holds (for
    /// example a factor that came out of a division), which for any realistic amount lies far
    /// below the minor unit. A product too large to hold at all is [`MoneyError::Overflow`].
    pub fn checked_mul(self, factor: Decimal) -> Result<Money, MoneyError> {
        let amount = self
            .amount
            .checked_mul(factor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    /// `pct` percent of the amount, unrounded: `percent(Decimal::new(125, 1))` is 12.5 %.
    /// Precision rules as in [`Money::checked_mul`].
    pub fn percent(self, pct: Decimal) -> Result<Money, MoneyError> {
        self.checked_mul(shift_point(pct, 2, Decimal::ONE_HUNDRED)?)
    }

    /// `bps` basis points (hundredths of a percent) of the amount, unrounded:
    /// `bps(Decimal::from(25))` is 0.25 %. Precision rules as in [`Money::checked_mul`].
    pub fn bps(self, bps: Decimal) -> Result<Money, MoneyError> {
        self.checked_mul(shift_point(bps, 4, Decimal::from(10_000))?)
    }

    /// Orders two amounts of the same currency.
    pub fn checked_cmp(self, other: Money) -> Result<Ordering, MoneyError> {
        self.same_currency(other)?;
        Ok(self.amount.cmp(&other.amount))
    }

    /// Rounds to the currency's minor unit. The result has exactly the minor unit's decimal
    /// places (`5 USD` becomes `5.00 USD`).
    pub fn round(self, mode: RoundingMode) -> Money {
        self.round_to(self.currency.minor_unit(), mode)
    }

    /// Rounds to `dp` decimal places. The result has exactly `dp` places, unless `dp` is beyond
    /// what a `Decimal` can hold for this amount (more than 28, or a huge amount), in which case
    /// it has as many as fit and the value is unchanged.
    pub fn round_to(self, dp: u32, mode: RoundingMode) -> Money {
        let mut amount = self.amount.round_dp_with_strategy(dp, mode.into());
        if amount.scale() < dp {
            amount.rescale(dp);
        }
        Money::new(amount, self.currency)
    }

    /// The amount as an integer count of minor units (`12.34 USD` is `1234`).
    ///
    /// Errors with [`MoneyError::ExcessPrecision`] if the value has a non-zero digit below the
    /// minor unit (trailing zeros are fine: `12.340 USD` is `1234`), and with
    /// [`MoneyError::Overflow`] if the count does not fit an `i64`.
    pub fn to_minor_units(self) -> Result<i64, MoneyError> {
        i64::try_from(self.minor_units()?).map_err(|_| MoneyError::Overflow)
    }

    /// The amount in minor units, wide enough for any amount a `Decimal` holds.
    pub(crate) fn minor_units(self) -> Result<i128, MoneyError> {
        let minor = self.currency.minor_unit();
        let scale = self.amount.scale();
        if scale <= minor {
            return widen(self.amount, minor).ok_or(MoneyError::Overflow);
        }
        let divisor = 10i128
            .checked_pow(scale - minor)
            .ok_or(MoneyError::Overflow)?;
        let mantissa = self.amount.mantissa();
        if mantissa % divisor != 0 {
            return Err(MoneyError::ExcessPrecision {
                currency: self.currency,
                decimals: self.amount.normalize().scale(),
            });
        }
        Ok(mantissa / divisor)
    }

    fn same_currency(self, other: Money) -> Result<Currency, MoneyError> {
        if self.currency == other.currency {
            Ok(self.currency)
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }

    /// The amount padded to at least the minor unit's decimal places, for display.
    fn padded_amount(self) -> Decimal {
        let mut amount = self.amount;
        if amount.scale() < self.currency.minor_unit() {
            // Only adds trailing zeros; a huge amount keeps as many places as fit.
            amount.rescale(self.currency.minor_unit());
        }
        amount
    }
}

/// The mantissa of `d` at a scale at least its own, if it fits an `i128`.
fn widen(d: Decimal, scale: u32) -> Option<i128> {
    let factor = 10i128.checked_pow(scale.checked_sub(d.scale())?)?;
    d.mantissa().checked_mul(factor)
}

/// Exact `a + b`. Decimal's own addition silently rounds a sum that needs more than 96 bits, so
/// the mantissas are added in `i128` at the common scale instead, and a sum that cannot be held
/// exactly is refused.
fn exact_add(a: Decimal, b: Decimal) -> Result<Decimal, MoneyError> {
    add_at_common_scale(a, b)
        // Widening can overflow i128 only because of trailing zeros; without them it is exact
        // or the sum is truly out of range.
        .or_else(|| add_at_common_scale(a.normalize(), b.normalize()))
        .ok_or(MoneyError::Overflow)
}

fn add_at_common_scale(a: Decimal, b: Decimal) -> Option<Decimal> {
    let mut scale = a.scale().max(b.scale());
    let mut sum = widen(a, scale)?.checked_add(widen(b, scale)?)?;
    // Keep the larger scale when it fits; otherwise shed trailing zeros, which keeps the value
    // exact, until it does.
    while sum.unsigned_abs() > MAX_MANTISSA && scale > 0 && sum % 10 == 0 {
        sum /= 10;
        scale -= 1;
    }
    Decimal::try_from_i128_with_scale(sum, scale).ok()
}

/// `d / 10^places`. Moving the decimal point only changes the scale, which is exact while the
/// scale stays within 28; past that, Decimal division rounds at the 28th place.
fn shift_point(d: Decimal, places: u32, divisor: Decimal) -> Result<Decimal, MoneyError> {
    let mut shifted = d;
    match shifted.set_scale(d.scale() + places) {
        Ok(()) => Ok(shifted),
        Err(_) => d.checked_div(divisor).ok_or(MoneyError::Overflow),
    }
}

impl Neg for Money {
    type Output = Money;

    fn neg(self) -> Money {
        Money::new(-self.amount, self.currency)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.padded_amount(), self.currency)
    }
}

/// Parses the [`Display`](fmt::Display) form: `"<amount> <code>"` with exactly one space, the
/// amount as in [`parse_amount`] and the code in uppercase.
impl FromStr for Money {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((amount, code)) = s.split_once(' ') else {
            return Err(if s.is_empty() {
                MoneyError::Empty
            } else {
                MoneyError::MissingCurrency
            });
        };
        if amount.is_empty() {
            // The input starts with the separator space.
            return Err(MoneyError::Whitespace);
        }
        let amount = parse_amount(amount)?;
        if code.is_empty() {
            return Err(MoneyError::MissingCurrency);
        }
        if code.contains(char::is_whitespace) {
            return Err(MoneyError::Whitespace);
        }
        Ok(Money::new(amount, code.parse()?))
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("Money", 2)?;
        state.serialize_field("amount", &AmountStr(self.padded_amount()))?;
        state.serialize_field("currency", &self.currency)?;
        state.end()
    }
}

/// Serializes a Decimal as a string whatever rust_decimal's serde features say: feature
/// unification elsewhere in the workspace could otherwise turn amounts into JSON numbers.
struct AmountStr(Decimal);

impl Serialize for AmountStr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = MoneyWire::deserialize(deserializer)?;
        Ok(Money::new(wire.amount, wire.currency))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoneyWire {
    #[serde(deserialize_with = "deserialize_amount")]
    amount: Decimal,
    currency: Currency,
}

/// Accepts only a string, parsed as strictly as any other input: a JSON number would already
/// have gone through a float in many producers.
fn deserialize_amount<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    struct AmountVisitor;

    impl Visitor<'_> for AmountVisitor {
        type Value = Decimal;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a decimal amount string such as \"12.34\"")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Decimal, E> {
            parse_amount(s).map_err(E::custom)
        }
    }

    deserializer.deserialize_str(AmountVisitor)
}
