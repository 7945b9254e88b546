//! Splitting an amount into parts that sum exactly to it (largest-remainder method).

use rust_decimal::Decimal;

use crate::{Money, MoneyError};

/// Splits `total` in proportion to `weights`, in whole minor units, so that the parts always sum
/// exactly to `total`.
///
/// Each part first gets its proportional share rounded down; the minor units left over go one
/// each to the parts with the largest remainders, ties to the lower index. Every part therefore
/// differs from its exact share by less than one minor unit, and a zero weight gets zero. A
/// negative total is split like its absolute value and negated, so a refund splits exactly like
/// the sale it reverses.
///
/// Errors: [`MoneyError::NoParts`] for no weights, [`MoneyError::NegativeWeight`],
/// [`MoneyError::ZeroWeights`] if they are all zero, [`MoneyError::ExcessPrecision`] if `total`
/// is not a whole number of minor units, and [`MoneyError::Overflow`] if total × weight exceeds
/// 128-bit intermediate arithmetic (only for absurd amounts or weights with very many digits).
///
/// ```
/// use pl_money::{allocate, Currency, Decimal, Money};
///
/// let total = Money::from_minor_units(1000, Currency::USD); // 10.00 USD
/// let parts = allocate(total, &[Decimal::ONE, Decimal::ONE, Decimal::ONE])?;
/// assert_eq!(parts, [
///     Money::from_minor_units(334, Currency::USD),
///     Money::from_minor_units(333, Currency::USD),
///     Money::from_minor_units(333, Currency::USD),
/// ]);
/// # Ok::<(), pl_money::MoneyError>(())
/// ```
pub fn allocate(total: Money, weights: &[Decimal]) -> Result<Vec<Money>, MoneyError> {
    if weights.is_empty() {
        return Err(MoneyError::NoParts);
    }
    if let Some(index) = weights.iter().position(|w| *w < Decimal::ZERO) {
        return Err(MoneyError::NegativeWeight { index });
    }
    // Bring every weight to one common scale so they become integers and each share is an exact
    // ratio of integers; normalizing first keeps that scale (and the integers) small.
    let weights: Vec<Decimal> = weights.iter().map(Decimal::normalize).collect();
    let scale = weights.iter().map(Decimal::scale).max().unwrap_or(0);
    let integer_weights = weights
        .iter()
        .map(|w| integer_weight(*w, scale))
        .collect::<Option<Vec<u128>>>()
        .ok_or(MoneyError::Overflow)?;
    let weight_sum = integer_weights
        .iter()
        .try_fold(0u128, |sum, &w| sum.checked_add(w))
        .ok_or(MoneyError::Overflow)?;
    if weight_sum == 0 {
        return Err(MoneyError::ZeroWeights);
    }

    let units = total.minor_units()?;
    let magnitude = units.unsigned_abs();
    let mut parts = Vec::with_capacity(integer_weights.len());
    let mut remainders = Vec::with_capacity(integer_weights.len());
    for weight in integer_weights {
        let scaled = magnitude.checked_mul(weight).ok_or(MoneyError::Overflow)?;
        parts.push(scaled / weight_sum);
        remainders.push(scaled % weight_sum);
    }
    // The floors sum to at most `magnitude`, so this cannot underflow; what is left is smaller
    // than the number of parts.
    let leftover = magnitude - parts.iter().sum::<u128>();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    // Stable sort: equal remainders keep index order, which makes ties go to the lower index.
    order.sort_by(|&a, &b| remainders[b].cmp(&remainders[a]));
    for &index in order
        .iter()
        .take(usize::try_from(leftover).unwrap_or(usize::MAX))
    {
        parts[index] += 1;
    }
    parts
        .into_iter()
        .map(|part| signed_part(part, units < 0, total))
        .collect()
}

/// Splits `total` into `parts` equal shares in whole minor units; the first
/// `total mod parts` shares get one minor unit more. Same as [`allocate`] with equal weights.
///
/// ```
/// use pl_money::{allocate_evenly, Currency, Money};
///
/// let parts = allocate_evenly("-0.05 EUR".parse()?, 2)?;
/// assert_eq!(parts, ["-0.03 EUR".parse::<Money>()?, "-0.02 EUR".parse()?]);
/// # Ok::<(), pl_money::MoneyError>(())
/// ```
pub fn allocate_evenly(total: Money, parts: usize) -> Result<Vec<Money>, MoneyError> {
    if parts == 0 {
        return Err(MoneyError::NoParts);
    }
    let units = total.minor_units()?;
    let magnitude = units.unsigned_abs();
    let count = u128::try_from(parts).map_err(|_| MoneyError::Overflow)?;
    let (base, mut extra) = (magnitude / count, magnitude % count);
    (0..parts)
        .map(|_| {
            let part = if extra > 0 {
                extra -= 1;
                base + 1
            } else {
                base
            };
            signed_part(part, units < 0, total)
        })
        .collect()
}

/// A non-negative weight as an integer count of `10^-scale`.
fn integer_weight(weight: Decimal, scale: u32) -> Option<u128> {
    let factor = 10u128.checked_pow(scale.checked_sub(weight.scale())?)?;
    u128::try_from(weight.mantissa()).ok()?.checked_mul(factor)
}

/// A part in minor units, back as money of the total's currency and sign.
fn signed_part(units: u128, negative: bool, total: Money) -> Result<Money, MoneyError> {
    let units = i128::try_from(units).map_err(|_| MoneyError::Overflow)?;
    let units = if negative { -units } else { units };
    let amount = Decimal::try_from_i128_with_scale(units, total.currency().minor_unit())
        .map_err(|_| MoneyError::Overflow)?;
    Ok(Money::new(amount, total.currency()))
}
