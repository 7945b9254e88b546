//! The attribution models as pure functions of ordered touchpoints: raw credit per touchpoint,
//! then per-partner weights that sum to exactly 1.
//!
//! Raw credit is exact where it can be (integers for first/last click, linear and
//! position-based 40/20/40). Time decay gives a touchpoint `2^(-Δ/half_life)` where Δ is its age
//! minus the newest touchpoint's age (so the newest always has credit 1 and credit never
//! underflows to all zeros). That power is irrational in general, so it is computed by a fixed,
//! documented procedure in `Decimal` — `2^-n` exactly for the whole half-lives, `exp(-f·ln 2)` by
//! its Taylor series (terms rounded half-even to 24 places) for the fraction `f` — and rounded
//! half-even to 18 places. The same inputs give the same digits on every machine and replay.
//!
//! Weights: each partner's raw credit is summed; `10^6` units are split in proportion by the
//! largest-remainder method on exact integers (the raw credits brought to one scale), ties to
//! the partner touched first; a weight is `units / 10^6`. Partners left with zero units earn
//! nothing (a weight is always in (0, 1]).

use chrono::{DateTime, Utc};
use pl_money::Decimal;
use uuid::Uuid;

use crate::settings::Model;
use crate::touchpoints::Touchpoint;

/// Decimal places of a weight.
pub const WEIGHT_PLACES: u32 = 6;
const WEIGHT_UNITS: u128 = 1_000_000;
/// At most this many partners share one conversion (the commissions contract's limit).
pub const MAX_SHARES: usize = 16;
/// A touchpoint this many half-lives older than the newest gets no credit.
const MAX_HALF_LIVES: i64 = 60;

/// Raw credit per touchpoint (same order as `touchpoints`, which is oldest first).
pub fn raw_credit(model: Model, touchpoints: &[&Touchpoint], half_life_hours: u32) -> Vec<Decimal> {
    let n = touchpoints.len();
    if n == 0 {
        return vec![];
    }
    let one_hot = |i: usize| {
        (0..n)
            .map(|j| if i == j { Decimal::ONE } else { Decimal::ZERO })
            .collect()
    };
    match model {
        Model::LastClick => one_hot(n - 1),
        Model::FirstClick => one_hot(0),
        Model::Linear => vec![Decimal::ONE; n],
        Model::PositionBased => match n {
            1 => vec![Decimal::ONE],
            2 => vec![Decimal::ONE, Decimal::ONE],
            _ => {
                // First and last 40 % each, the middle 20 % evenly: in integers, the ends get
                // 2(n-2) each and every middle touchpoint 1, so ends : middle = 4 : 2 exactly.
                let end = Decimal::from(2 * (n - 2));
                (0..n)
                    .map(|i| {
                        if i == 0 || i == n - 1 {
                            end
                        } else {
                            Decimal::ONE
                        }
                    })
                    .collect()
            }
        },
        Model::TimeDecay => {
            let newest = touchpoints[n - 1].occurred_at;
            let half_life_s = i64::from(half_life_hours.max(1)) * 3600;
            touchpoints
                .iter()
                .map(|t| half_power((newest - t.occurred_at).num_seconds().max(0), half_life_s))
                .collect()
        }
    }
}

fn ln_2() -> Decimal {
    Decimal::from_i128_with_scale(6_931_471_805_599_453_094_172_321_215, 28)
}

/// `2^(-num/den)` for `num >= 0`, `den > 0`, rounded half-even to 18 places.
pub fn half_power(num: i64, den: i64) -> Decimal {
    if den <= 0 {
        return Decimal::ONE;
    }
    let whole = num / den;
    if whole >= MAX_HALF_LIVES {
        return Decimal::ZERO;
    }
    let rest = num % den;
    // x = (rest / den) · ln 2, in [0, ln 2).
    let x = Decimal::from(rest)
        .checked_div(Decimal::from(den))
        .and_then(|f| f.checked_mul(ln_2()))
        .unwrap_or(Decimal::ZERO)
        .round_dp(24);
    let mut sum = Decimal::ONE;
    let mut term = Decimal::ONE;
    for k in 1..=40i64 {
        term = match term
            .checked_mul(-x)
            .and_then(|t| t.checked_div(Decimal::from(k)))
        {
            Some(t) => t.round_dp(24),
            None => break,
        };
        if term.is_zero() {
            break;
        }
        sum += term;
    }
    let divisor = Decimal::from(1u64 << whole);
    sum.checked_div(divisor)
        .unwrap_or(Decimal::ZERO)
        .round_dp(18)
}

/// One partner's weight and the raw credit it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weighted {
    pub partner_id: Uuid,
    pub weight: Decimal,
}

/// Per-partner weights summing to exactly 1, in order of each partner's first touchpoint.
/// Returns the weights and the partners dropped (over [`MAX_SHARES`], or rounded to zero).
pub fn partner_weights(touchpoints: &[&Touchpoint], raw: &[Decimal]) -> (Vec<Weighted>, usize) {
    let mut partners: Vec<(Uuid, Decimal)> = Vec::new();
    for (t, r) in touchpoints.iter().zip(raw) {
        match partners.iter_mut().find(|(p, _)| *p == t.partner_id) {
            Some((_, sum)) => *sum += *r,
            None => partners.push((t.partner_id, *r)),
        }
    }
    partners.retain(|(_, r)| *r > Decimal::ZERO);
    let total_partners = partners.len();
    if partners.len() > MAX_SHARES {
        // Keep the largest credits; ties to the partner touched first (stable sort).
        let mut ranked: Vec<(usize, Decimal)> = partners
            .iter()
            .enumerate()
            .map(|(i, (_, r))| (i, *r))
            .collect();
        ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
        let mut keep: Vec<usize> = ranked.iter().take(MAX_SHARES).map(|(i, _)| *i).collect();
        keep.sort_unstable();
        partners = keep.into_iter().map(|i| partners[i]).collect();
    }
    let raws: Vec<Decimal> = partners.iter().map(|(_, r)| *r).collect();
    let Some(units) = allocate_units(&raws, WEIGHT_UNITS) else {
        return (vec![], total_partners);
    };
    let weights: Vec<Weighted> = partners
        .iter()
        .zip(units)
        .filter(|(_, u)| *u > 0)
        .map(|((p, _), u)| Weighted {
            partner_id: *p,
            weight: Decimal::from_i128_with_scale(i128::try_from(u).unwrap_or(0), WEIGHT_PLACES)
                .normalize(),
        })
        .collect();
    let dropped = total_partners - weights.len();
    (weights, dropped)
}

/// Splits `units` in proportion to non-negative `weights` by largest remainder on exact
/// integers; ties to the lower index. `None` when the weights are empty, all zero, or too
/// large for 128-bit arithmetic.
pub fn allocate_units(weights: &[Decimal], units: u128) -> Option<Vec<u128>> {
    let weights: Vec<Decimal> = weights.iter().map(Decimal::normalize).collect();
    let scale = weights.iter().map(Decimal::scale).max()?;
    let ints = weights
        .iter()
        .map(|w| {
            if w.is_sign_negative() {
                return None;
            }
            let factor = 10u128.checked_pow(scale - w.scale())?;
            u128::try_from(w.mantissa()).ok()?.checked_mul(factor)
        })
        .collect::<Option<Vec<u128>>>()?;
    let sum = ints.iter().try_fold(0u128, |s, w| s.checked_add(*w))?;
    if sum == 0 {
        return None;
    }
    let mut parts = Vec::with_capacity(ints.len());
    let mut remainders = Vec::with_capacity(ints.len());
    for w in &ints {
        let product = w.checked_mul(units)?;
        parts.push(product / sum);
        remainders.push(product % sum);
    }
    let given: u128 = parts.iter().sum();
    let mut order: Vec<usize> = (0..ints.len()).collect();
    order.sort_by(|a, b| remainders[*b].cmp(&remainders[*a]).then(a.cmp(b)));
    for i in order.into_iter().take(usize::try_from(units - given).ok()?) {
        parts[i] += 1;
    }
    Some(parts)
}

/// True when `t` falls in the lookback window of a conversion at `at`: at most `window_days`
/// before it (inclusive) and not after it.
pub fn in_window(t: DateTime<Utc>, at: DateTime<Utc>, window_days: u32) -> bool {
    t <= at && at - t <= chrono::Duration::days(i64::from(window_days))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::touchpoints::{Detail, TouchpointKind};

    fn tp(n: u128, partner: u128, at_s: i64) -> Touchpoint {
        Touchpoint {
            touchpoint_id: Uuid::from_u128(n),
            kind: TouchpointKind::Click,
            program_id: Uuid::from_u128(100),
            partner_id: Uuid::from_u128(partner),
            campaign_id: None,
            visitor_id: Some("v".into()),
            customer_id: None,
            occurred_at: DateTime::from_timestamp(1_767_225_600 + at_s, 0).unwrap(),
            detail: Detail::default(),
        }
    }

    fn weights(model: Model, tps: &[Touchpoint]) -> Vec<(u128, String)> {
        let refs: Vec<&Touchpoint> = tps.iter().collect();
        let raw = raw_credit(model, &refs, 24);
        let (w, _) = partner_weights(&refs, &raw);
        w.iter()
            .map(|w| (w.partner_id.as_u128(), w.weight.to_string()))
            .collect()
    }

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    #[test]
    fn linear_thirds_sum_to_exactly_one_with_the_extra_unit_to_the_first_partner() {
        let w = weights(Model::Linear, &[tp(1, 1, 0), tp(2, 2, 1), tp(3, 3, 2)]);
        assert_eq!(
            w,
            vec![
                (1, "0.333334".into()),
                (2, "0.333333".into()),
                (3, "0.333333".into())
            ]
        );
    }

    #[test]
    fn position_based_gives_forty_twenty_forty_and_merges_a_partner_touching_twice() {
        let w = weights(
            Model::PositionBased,
            &[tp(1, 1, 0), tp(2, 2, 1), tp(3, 3, 2)],
        );
        assert_eq!(
            w,
            vec![(1, "0.4".into()), (2, "0.2".into()), (3, "0.4".into())]
        );
        let w = weights(
            Model::PositionBased,
            &[tp(1, 1, 0), tp(2, 2, 1), tp(3, 3, 2), tp(4, 1, 3)],
        );
        assert_eq!(
            w,
            vec![(1, "0.8".into()), (2, "0.1".into()), (3, "0.1".into())]
        );
    }

    #[test]
    fn time_decay_halves_the_credit_every_half_life() {
        assert_eq!(half_power(0, 3600), Decimal::ONE);
        assert_eq!(half_power(3600, 3600), d("0.5"));
        assert_eq!(half_power(7200, 3600), d("0.25"));
        // 2^-0.5 = 0.70710678118654752440…
        assert_eq!(half_power(1800, 3600), d("0.707106781186547524"));
        // one half-life (24 h) apart: 1/3 and 2/3.
        let w = weights(Model::TimeDecay, &[tp(1, 1, 0), tp(2, 2, 86_400)]);
        assert_eq!(w, vec![(1, "0.333333".into()), (2, "0.666667".into())]);
    }

    #[test]
    fn weights_always_sum_to_one() {
        for n in 1..40u128 {
            let tps: Vec<Touchpoint> = (0..n).map(|i| tp(i, i % 7, (i as i64) * 4999)).collect();
            for model in [
                Model::LastClick,
                Model::FirstClick,
                Model::Linear,
                Model::TimeDecay,
                Model::PositionBased,
            ] {
                let refs: Vec<&Touchpoint> = tps.iter().collect();
                let (w, _) = partner_weights(&refs, &raw_credit(model, &refs, 5));
                let total: Decimal = w.iter().map(|w| w.weight).sum();
                assert_eq!(total, Decimal::ONE, "{model:?} over {n}");
                assert!(w.iter().all(|w| w.weight > Decimal::ZERO));
            }
        }
    }

    #[test]
    fn the_window_includes_its_edge_and_not_a_second_more() {
        let at = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let edge = at - chrono::Duration::days(30);
        assert!(in_window(edge, at, 30));
        assert!(!in_window(edge - chrono::Duration::seconds(1), at, 30));
        assert!(!in_window(at + chrono::Duration::seconds(1), at, 30));
    }
}
