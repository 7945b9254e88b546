//! The commission engine of Partner Ledger: given a plan version, a partner's earlier history
//! and the facts of one attributed conversion, it computes what the partner (and its upline) is
//! owed, line by line, with the formula behind each amount. That is its one job. It is pure: no
//! I/O, no clock, no randomness and no floats; time arrives in the inputs, every amount is an
//! exact decimal rounded once, explicitly (half-even to the payout currency's minor unit), and
//! every failure is a typed [`EngineError`], never a panic. It posts nothing: the commissions
//! service records its outputs as events and the ledger turns them into postings.
//!
//! The flow for one conversion:
//!
//! 1. [`select_version`] picks the plan version (effective-dated, grandfathered customers keep
//!    theirs);
//! 2. [`accrue`] matches the most specific rule and computes the [`Accrual`];
//! 3. [`PartnerState::apply`] evolves the partner's state with it, so replaying the same
//!    accruals rebuilds the same state;
//! 4. a refund or chargeback is [`reverse`]d (or [`reverse_remaining`] after earlier partial
//!    ones) pro rata, line by line.
//!
//! Plans are checked with [`validate_plan`] when published: limits, currencies, tiers,
//! schedules, and no two rules of equal specificity that could match the same conversion.
//!
//! Decisions worth knowing:
//!
//! * every rate is a [`Percent`] in percent units (`10` is 10 %), overrides included;
//! * a conversion no rule matches is an [`Accrual`] without lines whose
//!   [`NotPayable`] says why, not an error;
//! * a foreign amount without a recorded rate is [`EngineError::FxRateMissing`];
//! * the attribution weight scales the conversion (revenue, count, lots, flat fee) before any
//!   formula, so a half-credited partner also counts half the tier volume;
//! * customer month 1 starts at the customer's first paid invoice (sale or subscription
//!   invoice) and runs to the same day next month; the first year is months 1–12.
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use pl_commission_engine::*;
//! use pl_money::{Currency, Decimal, Money};
//! use uuid::Uuid;
//!
//! let plan = PlanVersion {
//!     plan_id: Uuid::nil(),
//!     version: 1,
//!     effective_from: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
//!     payout_currency: Currency::USD,
//!     hold_days: 30,
//!     minimum_payout: Money::from_minor_units(5000, Currency::USD),
//!     version_policy: VersionPolicy::Grandfathered,
//!     net_revenue_policy: NetRevenuePolicy::CarryForwardNegative,
//!     cpa_recovery: false,
//!     overrides: vec![Percent::new(2)?, Percent::new(1)?],
//!     rules: vec![Rule {
//!         id: "sales".into(),
//!         conditions: Conditions::default(),
//!         reward: Reward::PercentOfGross(Percent::new(10)?),
//!         cap_per_conversion: None,
//!         cap_per_period: None,
//!     }],
//! };
//! let (partner, parent, grandparent) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
//! let facts = ConversionFacts {
//!     conversion_id: Uuid::from_u128(10),
//!     source_event_id: Uuid::from_u128(11),
//!     kind: ConversionKind::Sale,
//!     occurred_at: Utc.with_ymd_and_hms(2025, 3, 9, 12, 0, 0).unwrap(),
//!     customer_id: "cust-1".into(),
//!     customer_country: None,
//!     products: vec![],
//!     gross: Some(Money::from_minor_units(10000, Currency::USD)),
//!     net: None,
//!     lots: None,
//!     reseller: None,
//!     partner_id: partner,
//!     partner_tier: None,
//!     weight: Decimal::ONE,
//!     split: None,
//!     brand: None,
//!     upline: vec![parent, grandparent],
//!     fx_rate: None,
//! };
//! let mut state = PartnerState::new(partner, plan.plan_id);
//! let accrual = accrue(&plan, &state, &facts)?;
//! let amounts: Vec<String> = accrual.lines.iter().map(|l| l.amount.to_string()).collect();
//! assert_eq!(amounts, ["10.00 USD", "2.00 USD", "1.00 USD"]);
//! assert_eq!(accrual.lines[0].formula.text, "10% of 100.00 USD sale");
//! state.apply(&accrual)?;
//!
//! let refund = reverse(&accrual, Decimal::new(25, 2))?;
//! let reversed: Vec<String> = refund.lines.iter().map(|l| l.amount.to_string()).collect();
//! assert_eq!(reversed, ["-2.50 USD", "-0.50 USD", "-0.25 USD"]);
//! # Ok::<(), EngineError>(())
//! ```

mod accrual;
mod accrue;
mod error;
mod facts;
mod limits;
mod percent;
mod period;
mod plan;
mod reverse;
mod select;
mod state;
mod validate;

pub use accrual::{
    Accrual, AccrualLine, BandShare, CapApplied, CapKind, Effects, Formula, LineKind,
    NetRevenueShareCalc, NotPayable, PeriodDelta, SplitPart, TierReached,
};
pub use accrue::accrue;
pub use error::{EngineError, FactsError, PlanError};
pub use facts::{
    check_amounts, ConversionAmounts, ConversionFacts, ConversionKind, ResellerPricing, Split,
};
pub use limits::{
    MAX_AMOUNT, MAX_HOLD_DAYS, MAX_LOTS, MAX_MONTH, MAX_OVERRIDE_LEVELS, MAX_PRODUCTS, MAX_RULES,
    MAX_RULE_ID, MAX_SCHEDULE_STEPS, MAX_SPLIT_PARTS, MAX_SPLIT_WEIGHT_PLACES, MAX_TEXT, MAX_TIERS,
    MAX_UPLINE, MAX_VERSIONS,
};
pub use percent::Percent;
pub use period::{Period, PeriodParseError};
pub use plan::{
    Base, Conditions, MonthRange, NetRevenuePolicy, PlanVersion, RecurringDuration, Reward,
    RewardKind, Rule, ScheduleStep, Tier, TierMode, TierPrice, VersionPolicy, VolumeBasis,
};
pub use reverse::{reverse, reverse_remaining, Reversal};
pub use select::{
    conditions_hold, customer_month_index, select_rule, select_version, version_for_customer,
};
pub use state::{CustomerState, NetRevenuePosition, PartnerState, PeriodTotals};
pub use validate::validate_plan;
