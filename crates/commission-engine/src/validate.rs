//! Publication checks of a plan version.

use std::collections::BTreeSet;

use pl_money::{Currency, Money};
use rust_decimal::Decimal;

use crate::limits::{
    MAX_HOLD_DAYS, MAX_MONTH, MAX_OVERRIDE_LEVELS, MAX_RULES, MAX_RULE_ID, MAX_SCHEDULE_STEPS,
    MAX_TEXT, MAX_TIERS,
};
use crate::{
    Conditions, PlanError, PlanVersion, RecurringDuration, Reward, Rule, ScheduleStep, Tier,
    TierPrice,
};

/// Checks that a plan version can be published: limits (rules, tiers, override levels, schedule
/// steps), unique rule ids, every amount in the payout currency and not negative (caps
/// positive), tiers starting at zero with strictly increasing thresholds and rates that never
/// fall, schedules sorted without gaps in their own order or overlaps, and no two rules of equal
/// specificity that could both match one conversion. Rates are [`Percent`](crate::Percent)s,
/// which cannot be negative or above 100 %.
///
/// For the overlap check, rules naming different products are disjoint: a conversion carrying
/// both products would match both, which [`select_rule`](crate::select_rule) reports as
/// [`EngineError::AmbiguousMatch`](crate::EngineError::AmbiguousMatch).
pub fn validate_plan(plan: &PlanVersion) -> Result<(), PlanError> {
    if plan.rules.is_empty() {
        return Err(PlanError::NoRules);
    }
    if plan.rules.len() > MAX_RULES {
        return Err(PlanError::TooManyRules {
            count: plan.rules.len(),
            max: MAX_RULES,
        });
    }
    if plan.overrides.len() > MAX_OVERRIDE_LEVELS {
        return Err(PlanError::TooManyOverrideLevels {
            count: plan.overrides.len(),
            max: MAX_OVERRIDE_LEVELS,
        });
    }
    if plan.hold_days > MAX_HOLD_DAYS {
        return Err(PlanError::HoldTooLong {
            days: plan.hold_days,
            max: MAX_HOLD_DAYS,
        });
    }
    let currency = plan.payout_currency;
    check_amount(currency, "", "minimum_payout", plan.minimum_payout, false)?;
    let mut ids = BTreeSet::new();
    for rule in &plan.rules {
        check_rule_id(&rule.id)?;
        if !ids.insert(rule.id.as_str()) {
            return Err(PlanError::DuplicateRuleId(rule.id.clone()));
        }
        check_conditions(rule)?;
        check_reward(currency, rule)?;
        if let Some(cap) = rule.cap_per_conversion {
            check_amount(currency, &rule.id, "cap_per_conversion", cap, true)?;
        }
        if let Some(cap) = rule.cap_per_period {
            check_amount(currency, &rule.id, "cap_per_period", cap, true)?;
        }
    }
    check_ties(&plan.rules)
}

fn check_rule_id(id: &str) -> Result<(), PlanError> {
    let printable = id.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    if id.is_empty() || id.len() > MAX_RULE_ID || !printable {
        return Err(PlanError::BadRuleId {
            id: id.chars().take(MAX_RULE_ID).collect(),
            max: MAX_RULE_ID,
        });
    }
    Ok(())
}

fn check_amount(
    currency: Currency,
    rule: &str,
    field: &'static str,
    amount: Money,
    positive: bool,
) -> Result<(), PlanError> {
    if amount.currency() != currency {
        return Err(PlanError::CurrencyMismatch {
            rule: rule.to_owned(),
            field,
            expected: currency,
            found: amount.currency(),
        });
    }
    let ok = if positive {
        amount.is_positive()
    } else {
        !amount.is_negative()
    };
    if !ok {
        return Err(PlanError::BadAmount {
            rule: rule.to_owned(),
            field,
            requirement: if positive { "positive" } else { "zero or more" },
            amount: amount.to_string(),
        });
    }
    Ok(())
}

fn check_conditions(rule: &Rule) -> Result<(), PlanError> {
    let bad = |field, reason| PlanError::BadCondition {
        rule: rule.id.clone(),
        field,
        reason,
    };
    let c = &rule.conditions;
    for (field, value) in [("product", &c.product), ("partner_tier", &c.partner_tier)] {
        if let Some(value) = value {
            if value.is_empty() || value.chars().count() > MAX_TEXT {
                return Err(bad(field, "must be 1 to 128 characters"));
            }
        }
    }
    if let Some(country) = &c.customer_country {
        if country.len() != 2 || !country.chars().all(|ch| ch.is_ascii_uppercase()) {
            return Err(bad("customer_country", "must be two uppercase letters"));
        }
    }
    if let Some(range) = c.month_index {
        if range.first == 0 || range.first > range.last || range.last > MAX_MONTH {
            return Err(bad(
                "month_index",
                "must be a range first..=last with 1 <= first <= last <= 600",
            ));
        }
    }
    Ok(())
}

fn check_reward(currency: Currency, rule: &Rule) -> Result<(), PlanError> {
    let id = rule.id.as_str();
    match &rule.reward {
        Reward::Flat(amount) => check_amount(currency, id, "flat", *amount, false),
        Reward::Hybrid { flat, .. } => check_amount(currency, id, "flat", *flat, false),
        Reward::PerLot(amount) => check_amount(currency, id, "per_lot", *amount, false),
        Reward::Recurring {
            schedule, duration, ..
        } => {
            if let RecurringDuration::Months(n) = duration {
                if *n == 0 || *n > MAX_MONTH {
                    return Err(PlanError::BadSchedule {
                        rule: id.to_owned(),
                        reason: "duration must be 1 to 600 months",
                    });
                }
            }
            check_schedule(id, schedule)
        }
        Reward::TieredVolume { basis, tiers, .. } => {
            check_tiers(currency, id, basis.is_revenue(), tiers)
        }
        Reward::PercentOfGross(_)
        | Reward::PercentOfNet(_)
        | Reward::FirstYearPercent { .. }
        | Reward::ResellerMargin
        | Reward::NetRevenueShare(_) => Ok(()),
    }
}

fn check_schedule(rule: &str, schedule: &[ScheduleStep]) -> Result<(), PlanError> {
    let bad = |reason| PlanError::BadSchedule {
        rule: rule.to_owned(),
        reason,
    };
    if schedule.is_empty() {
        return Err(bad("schedule has no steps"));
    }
    if schedule.len() > MAX_SCHEDULE_STEPS {
        return Err(bad("schedule has more than 60 steps"));
    }
    let mut next_free = 1u32;
    for (i, step) in schedule.iter().enumerate() {
        if step.from_month < next_free {
            return Err(bad(
                "steps must start at month 1 or later, sorted and not overlapping",
            ));
        }
        if step.from_month > MAX_MONTH {
            return Err(bad("a step starts after month 600"));
        }
        match step.to_month {
            Some(to) if to < step.from_month || to > MAX_MONTH => {
                return Err(bad("a step ends before it starts or after month 600"));
            }
            Some(to) => next_free = to.saturating_add(1),
            None if i + 1 == schedule.len() => {}
            None => return Err(bad("only the last step may be open-ended")),
        }
    }
    Ok(())
}

fn check_tiers(
    currency: Currency,
    rule: &str,
    revenue: bool,
    tiers: &[Tier],
) -> Result<(), PlanError> {
    let bad = |reason| PlanError::BadTiers {
        rule: rule.to_owned(),
        reason,
    };
    let Some(first) = tiers.first() else {
        return Err(PlanError::EmptyTiers {
            rule: rule.to_owned(),
        });
    };
    if tiers.len() > MAX_TIERS {
        return Err(PlanError::TooManyTiers {
            rule: rule.to_owned(),
            count: tiers.len(),
            max: MAX_TIERS,
        });
    }
    if !first.from.is_zero() {
        return Err(bad("the first tier must start at zero"));
    }
    for tier in tiers {
        match (&tier.price, revenue) {
            (TierPrice::Percent(_), true) => {}
            (TierPrice::PerUnit(amount), false) => {
                check_amount(currency, rule, "tier per_unit", *amount, false)?;
            }
            (TierPrice::Percent(_), false) => {
                return Err(bad("count and lot tiers need an amount per unit"));
            }
            (TierPrice::PerUnit(_), true) => {
                return Err(bad("revenue tiers need a percentage"));
            }
        }
    }
    for pair in tiers.windows(2) {
        if let [lower, upper] = pair {
            if upper.from <= lower.from {
                return Err(bad("thresholds must strictly increase"));
            }
            if price_value(&upper.price) < price_value(&lower.price) {
                return Err(bad("a higher tier must not pay a lower rate"));
            }
        }
    }
    Ok(())
}

fn price_value(price: &TierPrice) -> Decimal {
    match price {
        TierPrice::Percent(p) => p.value(),
        TierPrice::PerUnit(m) => m.amount(),
    }
}

/// Two rules of equal specificity whose conditions overlap are rejected.
fn check_ties(rules: &[Rule]) -> Result<(), PlanError> {
    for (i, a) in rules.iter().enumerate() {
        let specificity = a.conditions.specificity();
        for b in rules.iter().skip(i + 1) {
            if b.conditions.specificity() == specificity && overlap(&a.conditions, &b.conditions) {
                return Err(PlanError::AmbiguousRules {
                    first: a.id.clone(),
                    second: b.id.clone(),
                    specificity,
                });
            }
        }
    }
    Ok(())
}

/// Whether some conversion could meet both sets of conditions (different products count as
/// disjoint).
fn overlap(a: &Conditions, b: &Conditions) -> bool {
    fn compatible<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
        match (a, b) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
    }
    let months = match (a.month_index, b.month_index) {
        (Some(x), Some(y)) => x.first <= y.last && y.first <= x.last,
        _ => true,
    };
    compatible(&a.conversion_kind, &b.conversion_kind)
        && compatible(&a.product, &b.product)
        && compatible(&a.customer_country, &b.customer_country)
        && compatible(&a.partner_tier, &b.partner_tier)
        && months
}
