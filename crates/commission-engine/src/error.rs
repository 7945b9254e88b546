//! The typed errors of the engine. Messages are lowercase and name the offending item.

use chrono::{DateTime, NaiveDate, Utc};
use pl_money::{Currency, MoneyError};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::Period;

/// Why a plan version cannot be published (returned by [`validate_plan`](crate::validate_plan)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The plan has no rule at all.
    #[error("plan has no rules")]
    NoRules,
    /// More rules than [`MAX_RULES`](crate::MAX_RULES).
    #[error("plan has {count} rules, at most {max} are allowed")]
    TooManyRules {
        /// Rules in the plan.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// More override levels than [`MAX_OVERRIDE_LEVELS`](crate::MAX_OVERRIDE_LEVELS).
    #[error("plan has {count} override levels, at most {max} are allowed")]
    TooManyOverrideLevels {
        /// Levels in the plan.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A hold period longer than [`MAX_HOLD_DAYS`](crate::MAX_HOLD_DAYS).
    #[error("hold of {days} days is longer than the {max} allowed")]
    HoldTooLong {
        /// The plan's hold.
        days: u32,
        /// The limit.
        max: u32,
    },
    /// A rule id that is empty, too long or not printable ASCII.
    #[error("rule id {id:?} must be 1 to {max} printable ascii characters")]
    BadRuleId {
        /// The offending id.
        id: String,
        /// The length limit.
        max: usize,
    },
    /// Two rules share an id.
    #[error("rule id {0:?} is used twice")]
    DuplicateRuleId(String),
    /// An amount in the plan is not in the payout currency.
    #[error("{field} of {rule:?} is in {found}, the plan pays in {expected}")]
    CurrencyMismatch {
        /// The rule (empty for plan-level amounts).
        rule: String,
        /// Which amount.
        field: &'static str,
        /// The payout currency.
        expected: Currency,
        /// The amount's currency.
        found: Currency,
    },
    /// An amount that must not be negative (or, for caps, must be positive) is not.
    #[error("{field} of {rule:?} must be {requirement}, got {amount}")]
    BadAmount {
        /// The rule (empty for plan-level amounts).
        rule: String,
        /// Which amount.
        field: &'static str,
        /// "positive" or "zero or more".
        requirement: &'static str,
        /// The amount as written.
        amount: String,
    },
    /// A condition value that is empty, too long, or (for countries) not a two-letter code.
    #[error("condition {field} of {rule:?} is invalid: {reason}")]
    BadCondition {
        /// The rule.
        rule: String,
        /// Which condition.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A tiered reward without tiers.
    #[error("rule {rule:?} has no tiers")]
    EmptyTiers {
        /// The rule.
        rule: String,
    },
    /// More tiers than [`MAX_TIERS`](crate::MAX_TIERS).
    #[error("rule {rule:?} has {count} tiers, at most {max} are allowed")]
    TooManyTiers {
        /// The rule.
        rule: String,
        /// Tiers in the rule.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Tier thresholds that do not start at zero and strictly increase, or a rate that falls
    /// from one tier to the next.
    #[error("tiers of {rule:?} are invalid: {reason}")]
    BadTiers {
        /// The rule.
        rule: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A recurring schedule that is empty, too long, unsorted or overlapping.
    #[error("schedule of {rule:?} is invalid: {reason}")]
    BadSchedule {
        /// The rule.
        rule: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two rules of equal specificity could both match one conversion: the tie would be broken
    /// by accident, so it is rejected when the plan is published.
    #[error("rules {first:?} and {second:?} have equal specificity {specificity} and overlapping conditions")]
    AmbiguousRules {
        /// The rule listed first.
        first: String,
        /// The rule listed second.
        second: String,
        /// Their number of set conditions.
        specificity: usize,
    },
}

/// Why conversion facts cannot be computed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FactsError {
    /// The attribution weight is not in `(0, 1]`.
    #[error("attribution weight {0} is not in (0, 1]")]
    BadWeight(Decimal),
    /// The recorded FX rate is zero or negative.
    #[error("fx rate {0} is not positive")]
    BadFxRate(Decimal),
    /// An FX rate other than 1 was given although both currencies are the same.
    #[error("fx rate {rate} given for a conversion already in the payout currency {currency}")]
    UnexpectedFxRate {
        /// The rate given.
        rate: Decimal,
        /// The common currency.
        currency: Currency,
    },
    /// The amounts of one conversion are in different currencies.
    #[error("conversion amounts mix {0} and {1}")]
    MixedCurrencies(Currency, Currency),
    /// An amount or quantity that must not be negative is.
    #[error("{0} must not be negative")]
    Negative(&'static str),
    /// The reseller's price is above the list price: the margin would be negative.
    #[error("partner price {partner_price} is above list price {list_price}")]
    NegativeMargin {
        /// The list price.
        list_price: String,
        /// The partner's price.
        partner_price: String,
    },
    /// A text field that is empty or too long.
    #[error("{field} must be 1 to {max} characters")]
    BadText {
        /// Which field.
        field: &'static str,
        /// The length limit.
        max: usize,
    },
    /// More entries in a list than allowed.
    #[error("{field} has {count} entries, at most {max} are allowed")]
    TooMany {
        /// Which list.
        field: &'static str,
        /// Entries given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An amount or quantity beyond its documented maximum.
    #[error("{field} must be at most {max} in magnitude")]
    TooLarge {
        /// Which field.
        field: &'static str,
        /// The limit.
        max: Decimal,
    },
    /// The split across credited partners is inconsistent.
    #[error("bad split: {0}")]
    BadSplit(&'static str),
    /// The upline names the partner itself or one partner twice.
    #[error("upline repeats partner {0}")]
    UplineRepeats(Uuid),
}

impl FactsError {
    /// The field of the conversion at fault, as a request names it.
    pub fn field(&self) -> &'static str {
        match self {
            FactsError::BadWeight(_) | FactsError::BadSplit(_) => "weight",
            FactsError::BadFxRate(_) | FactsError::UnexpectedFxRate { .. } => "fx_rate",
            FactsError::MixedCurrencies(..) => "net",
            FactsError::Negative(field) => field,
            FactsError::NegativeMargin { .. } => "partner_price",
            FactsError::BadText { field, .. }
            | FactsError::TooMany { field, .. }
            | FactsError::TooLarge { field, .. } => field,
            FactsError::UplineRepeats(_) => "upline",
        }
    }
}

/// Everything that can go wrong computing a commission. No function of the engine panics; each
/// returns this instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The plan version is not publishable.
    #[error("invalid plan: {0}")]
    InvalidPlan(#[from] PlanError),
    /// The conversion facts are inconsistent.
    #[error("invalid conversion facts: {0}")]
    InvalidFacts(#[from] FactsError),
    /// A rate outside `[0, 100]` percent.
    #[error("rate {0}% is outside 0% to 100%")]
    RateOutOfRange(Decimal),
    /// The matched rule needs an input the conversion does not carry (e.g. `gross` for a
    /// percent of gross, `lots` for a rebate per lot).
    #[error("rule {rule:?} needs {field}, which the conversion does not carry")]
    MissingInput {
        /// The rule.
        rule: String,
        /// The missing field.
        field: &'static str,
    },
    /// Two rules of equal specificity both match (possible only for a conversion with several
    /// products, whose product conditions [`validate_plan`](crate::validate_plan) treats as
    /// disjoint).
    #[error("rules {first:?} and {second:?} both match with equal specificity")]
    AmbiguousMatch {
        /// The rule listed first.
        first: String,
        /// The rule listed second.
        second: String,
    },
    /// An amount must be converted to the payout currency and no rate was recorded. There is
    /// never a fallback rate.
    #[error("no fx rate from {from} to {to} recorded for {date}")]
    FxRateMissing {
        /// The conversion's currency.
        from: Currency,
        /// The plan's payout currency.
        to: Currency,
        /// The business date of the conversion.
        date: NaiveDate,
    },
    /// No version of the plan is in force at the conversion's business time.
    #[error("no version of plan {plan_id} is in force at {at}")]
    NoVersionInForce {
        /// The plan.
        plan_id: Uuid,
        /// The conversion's business time.
        at: DateTime<Utc>,
    },
    /// The version a grandfathered customer is locked to is not among the versions given.
    #[error("plan {plan_id} version {version}, locked for the customer, is missing")]
    LockedVersionMissing {
        /// The plan.
        plan_id: Uuid,
        /// The locked version.
        version: u32,
    },
    /// The versions given to [`select_version`](crate::select_version) are not one plan's
    /// distinct versions, or there are too many.
    #[error("plan versions are inconsistent: {0}")]
    BadVersions(&'static str),
    /// The state belongs to another partner or plan than the computation.
    #[error(
        "state is for partner {state_partner} plan {state_plan}, not partner {partner} plan {plan}"
    )]
    StateMismatch {
        /// The state's partner.
        state_partner: Uuid,
        /// The state's plan.
        state_plan: Uuid,
        /// The partner computed for.
        partner: Uuid,
        /// The plan computed with.
        plan: Uuid,
    },
    /// A paid invoice dated before the customer's first paid invoice, or a net revenue report
    /// for a period before one already reported: the history must be replayed in order.
    #[error("conversion at {at} is out of order: {reason}")]
    OutOfOrder {
        /// The conversion's business time.
        at: DateTime<Utc>,
        /// What it precedes.
        reason: &'static str,
    },
    /// A period's state is from a month that cannot be represented.
    #[error("period {0} is out of range")]
    PeriodOutOfRange(Period),
    /// A refund fraction outside `(0, 1]`, or one that would bring the total refunded above the
    /// whole accrual.
    #[error("refund fraction {fraction} is invalid: {reason}")]
    BadRefundFraction {
        /// The fraction asked for.
        fraction: Decimal,
        /// What is wrong.
        reason: &'static str,
    },
    /// Earlier reversals given to [`reverse_remaining`](crate::reverse_remaining) do not belong
    /// to the accrual being reversed.
    #[error("reversal does not match accrual {0}")]
    ReversalMismatch(Uuid),
    /// A quantity computation left the range of a decimal.
    #[error("arithmetic overflow")]
    Overflow,
    /// A money operation failed (overflow, currency mismatch).
    #[error(transparent)]
    Money(#[from] MoneyError),
}
