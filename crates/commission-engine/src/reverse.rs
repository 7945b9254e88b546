//! Reversing an accrual, in full or in part, for a refund or chargeback.

use pl_money::{Money, RoundingMode};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Accrual, AccrualLine, EngineError};

/// Reverses part of an accrual: one line per line of the accrual, in the same order, with the
/// opposite sign. Lines of zero are kept, so line `i` always reverses line `i`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reversal {
    /// The conversion whose accrual is reversed.
    pub conversion_id: Uuid,
    /// The part of the original accrual this reversal stands for.
    pub fraction: Decimal,
    /// The part reversed by this and all earlier reversals.
    pub cumulative_fraction: Decimal,
    /// The reversing lines.
    pub lines: Vec<AccrualLine>,
}

impl Reversal {
    /// What is left to reverse after this reversal (`1 - cumulative_fraction`); pass it as the
    /// last refund's fraction so the accrual is reversed exactly in full.
    pub fn remaining_fraction(&self) -> Decimal {
        Decimal::ONE - self.cumulative_fraction
    }
}

/// A line's reversed total once `cumulative` of it is reversed: its split part of the whole's
/// reversal when it is an uncapped part of a split conversion (never more than the line), else
/// the line times `cumulative`, rounded half-even.
fn reversed_target(line: &AccrualLine, cumulative: Decimal) -> Result<Money, EngineError> {
    let own = || {
        Ok::<_, EngineError>(
            line.amount
                .checked_mul(cumulative)?
                .round(RoundingMode::HalfEven),
        )
    };
    // Caps and CPA recovery reduce the part after the split: such a line is its own.
    let Some(split) = line
        .formula
        .split
        .as_ref()
        .filter(|s| s.part == line.amount)
    else {
        return own();
    };
    let whole = split
        .whole
        .checked_mul(cumulative)?
        .round(RoundingMode::HalfEven);
    let Some(part) = pl_money::allocate(whole, &split.weights)?
        .get(split.index)
        .copied()
    else {
        return own();
    };
    // Largest remainder is not monotone in the total (the Alabama paradox): never reverse more
    // than the line, so a full refund still ends exactly at zero.
    Ok(if part.amount().abs() > line.amount.amount().abs() {
        line.amount
    } else {
        part
    })
}

/// Reverses `fraction` (in `(0, 1]`) of an accrual that has not been reversed before: a 25 %
/// refund reverses 25 % of every line, tier top-ups and overrides included. Same as
/// [`reverse_remaining`] with no earlier reversals.
pub fn reverse(original: &Accrual, fraction: Decimal) -> Result<Reversal, EngineError> {
    reverse_remaining(original, &[], fraction)
}

/// Reverses `fraction` of the original accrual after the `earlier` reversals of it.
///
/// Each line's reversed total after this reversal is the line times the cumulative fraction,
/// rounded half-even; this reversal is the difference from what was reversed before. A line
/// that is a partner's part of a split conversion ([`crate::SplitPart`], uncapped) is reversed
/// the way it was split: the whole conversion's line times the cumulative fraction, rounded
/// once, and the partner's part of that by the same weights, so the partners' reversals of one
/// refund sum to the whole's. So the
/// reversed total of a line never exceeds the line, never changes sign, and once the
/// cumulative fraction reaches 1 it equals the line exactly, however the refunds were split.
/// A cumulative fraction above 1 is [`EngineError::BadRefundFraction`].
///
/// Refunding the same refund twice is the caller's to prevent (by its idempotency key): the
/// engine cannot tell a repeated refund from a second one of the same size.
///
/// Fractions are exact decimals, so three refunds of `1/3` sum to `0.999…9`, not 1: pass the
/// last refund as [`Reversal::remaining_fraction`] to reverse the accrual in full.
///
/// A reversal changes no [`PartnerState`](crate::PartnerState): a refunded sale still counts
/// toward the month's tier volume and period cap, and CPA recovery already applied stays
/// applied. Only the commission lines are reversed.
pub fn reverse_remaining(
    original: &Accrual,
    earlier: &[Reversal],
    fraction: Decimal,
) -> Result<Reversal, EngineError> {
    let bad = |reason| EngineError::BadRefundFraction { fraction, reason };
    if fraction <= Decimal::ZERO || fraction > Decimal::ONE {
        return Err(bad("must be above 0 and at most 1"));
    }
    let mut before = Decimal::ZERO;
    for reversal in earlier {
        let same_lines = reversal.lines.len() == original.lines.len()
            && reversal.lines.iter().zip(&original.lines).all(|(r, o)| {
                r.partner_id == o.partner_id
                    && r.kind == o.kind
                    && r.rule_id == o.rule_id
                    && r.amount.currency() == o.amount.currency()
            });
        if reversal.conversion_id != original.conversion_id || !same_lines {
            return Err(EngineError::ReversalMismatch(original.conversion_id));
        }
        before = before
            .checked_add(reversal.fraction)
            .ok_or(EngineError::Overflow)?;
    }
    let cumulative = before.checked_add(fraction).ok_or(EngineError::Overflow)?;
    if cumulative > Decimal::ONE {
        return Err(bad("the refunds would exceed the whole accrual"));
    }
    let lines = original
        .lines
        .iter()
        .enumerate()
        .map(|(index, line)| {
            let already = Money::try_sum(
                line.amount.currency(),
                earlier
                    .iter()
                    .filter_map(|r| r.lines.get(index))
                    .map(|l| -l.amount),
            )?;
            let target = reversed_target(line, cumulative)?;
            let mut part = target.checked_sub(already)?;
            // Earlier reversals that did not come from this function could have reversed
            // more; never reverse further in the wrong direction.
            if part.amount().is_sign_negative() != line.amount.amount().is_sign_negative()
                && !part.is_zero()
            {
                part = Money::zero(line.amount.currency());
            }
            let mut formula = line.formula.clone();
            formula.text = format!(
                "reversal of {} of the accrued {}: {}",
                fraction.normalize(),
                line.amount,
                line.formula.text
            );
            Ok(AccrualLine {
                partner_id: line.partner_id,
                amount: -part,
                kind: line.kind,
                rule_id: line.rule_id.clone(),
                formula,
            })
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    Ok(Reversal {
        conversion_id: original.conversion_id,
        fraction,
        cumulative_fraction: cumulative,
        lines,
    })
}
