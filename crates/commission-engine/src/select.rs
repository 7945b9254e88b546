//! Choosing the plan version and the rule for a conversion.

use std::collections::BTreeSet;

use crate::limits::MAX_VERSIONS;
use crate::period::month_index;
use crate::{
    Conditions, ConversionFacts, CustomerState, EngineError, PartnerState, PlanVersion, Rule,
    VersionPolicy,
};
use chrono::{DateTime, Utc};

/// The plan version a conversion is computed with.
///
/// The version in force is the one with the latest `effective_from` at or before the
/// conversion's business time. Its [`VersionPolicy`] decides: under
/// [`VersionPolicy::Grandfathered`] a customer already paid under some version keeps that
/// version (its lock); under [`VersionPolicy::FollowEffective`] the version in force applies,
/// and paying under it moves the customer's lock there. A customer never paid before gets the
/// version in force.
///
/// `versions` must be distinct versions of the state's plan (at most
/// [`MAX_VERSIONS`](crate::MAX_VERSIONS)), in any order.
pub fn select_version<'v>(
    versions: &'v [PlanVersion],
    facts: &ConversionFacts,
    state: &PartnerState,
) -> Result<&'v PlanVersion, EngineError> {
    if versions.len() > MAX_VERSIONS {
        return Err(EngineError::BadVersions("more than 1000 versions"));
    }
    let mut numbers = BTreeSet::new();
    let mut starts = BTreeSet::new();
    for v in versions {
        if v.plan_id != state.plan_id() {
            return Err(EngineError::BadVersions("a version of another plan"));
        }
        if !numbers.insert(v.version) {
            return Err(EngineError::BadVersions("a version number given twice"));
        }
        if !starts.insert(v.effective_from) {
            return Err(EngineError::BadVersions(
                "two versions effective at the same time",
            ));
        }
    }
    version_for_customer(
        versions,
        state.plan_id(),
        state.customer(&facts.customer_id),
        facts.occurred_at,
    )
}

/// The version [`select_version`] chooses at `at` for a customer (`None`: never paid under
/// the plan), without checking `versions` (which [`select_version`] does): what a listing asks
/// of a customer's share as of a date.
pub fn version_for_customer<'v>(
    versions: &'v [PlanVersion],
    plan_id: uuid::Uuid,
    customer: Option<&CustomerState>,
    at: DateTime<Utc>,
) -> Result<&'v PlanVersion, EngineError> {
    let in_force = versions
        .iter()
        .filter(|v| v.effective_from <= at)
        .max_by_key(|v| v.effective_from)
        .ok_or(EngineError::NoVersionInForce { plan_id, at })?;
    let locked = customer.and_then(|c| c.locked_version);
    match (in_force.version_policy, locked) {
        (VersionPolicy::Grandfathered, Some(version)) => versions
            .iter()
            .find(|v| v.version == version)
            .ok_or(EngineError::LockedVersionMissing { plan_id, version }),
        _ => Ok(in_force),
    }
}

/// The customer month of a conversion (1 = the month starting at the customer's first paid
/// invoice; see [`Reward::Recurring`](crate::Reward::Recurring)). A paid invoice of a customer
/// without one starts month 1. `None` when the customer has no paid invoice yet, or for a
/// non-invoice conversion dated before the first one; a paid invoice dated before the first is
/// [`EngineError::OutOfOrder`].
pub fn customer_month_index(
    state: &PartnerState,
    facts: &ConversionFacts,
) -> Result<Option<u32>, EngineError> {
    let recorded = state
        .customer(&facts.customer_id)
        .and_then(|c| c.first_paid_invoice_at);
    let first = match recorded {
        Some(first) => first,
        None if facts.kind.is_paid_invoice() => facts.occurred_at,
        None => return Ok(None),
    };
    if facts.occurred_at < first {
        return if facts.kind.is_paid_invoice() {
            Err(EngineError::OutOfOrder {
                at: facts.occurred_at,
                reason: "paid invoice before the customer's first paid invoice",
            })
        } else {
            Ok(None)
        };
    }
    month_index(first, facts.occurred_at)
        .map(Some)
        .ok_or(EngineError::Overflow)
}

/// The most specific rule whose conditions all hold, `None` if no rule matches.
///
/// Specificity is the number of set conditions. Equal specificity between two matching rules is
/// [`EngineError::AmbiguousMatch`]; [`validate_plan`](crate::validate_plan) rules it out except
/// for rules naming different products that one conversion both carries.
pub fn select_rule<'p>(
    plan: &'p PlanVersion,
    facts: &ConversionFacts,
    month_index: Option<u32>,
) -> Result<Option<&'p Rule>, EngineError> {
    let mut best: Option<(&Rule, usize)> = None;
    let mut tie: Option<&Rule> = None;
    for rule in &plan.rules {
        if !conditions_hold(&rule.conditions, facts, month_index) {
            continue;
        }
        let specificity = rule.conditions.specificity();
        match best {
            Some((_, s)) if s > specificity => {}
            Some((_, s)) if s == specificity => tie = tie.or(Some(rule)),
            _ => {
                best = Some((rule, specificity));
                tie = None;
            }
        }
    }
    match (best, tie) {
        (Some((first, _)), Some(second)) => Err(EngineError::AmbiguousMatch {
            first: first.id.clone(),
            second: second.id.clone(),
        }),
        (best, _) => Ok(best.map(|(rule, _)| rule)),
    }
}

/// Whether every set condition holds for the conversion.
pub fn conditions_hold(
    conditions: &Conditions,
    facts: &ConversionFacts,
    month_index: Option<u32>,
) -> bool {
    let c = conditions;
    c.conversion_kind.is_none_or(|k| k == facts.kind)
        && c.product
            .as_ref()
            .is_none_or(|p| facts.products.iter().any(|q| q == p))
        && c.customer_country
            .as_ref()
            .is_none_or(|country| facts.customer_country.as_ref() == Some(country))
        && c.month_index
            .is_none_or(|range| month_index.is_some_and(|m| range.contains(m)))
        && c.partner_tier
            .as_ref()
            .is_none_or(|tier| facts.partner_tier.as_ref() == Some(tier))
}
