//! The engine's output: commission lines with the formula behind each, and the state effects.

use chrono::{DateTime, Utc};
use pl_money::{Currency, Money};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    ConversionKind, EngineError, NetRevenuePosition, Percent, Period, RewardKind, TierPrice,
};

/// The commission of one conversion for one partner (and its upline).
///
/// An accrual without lines is a normal outcome, not an error: `not_payable` says why (no rule
/// matched, the first year is over, the customer churned, ...). The caller records it like any
/// other result, so the decision is explainable later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accrual {
    /// The conversion.
    pub conversion_id: Uuid,
    /// The event the facts came from.
    pub source_event_id: Uuid,
    /// The partner credited with the conversion (upline partners appear in override lines).
    pub partner_id: Uuid,
    /// The plan.
    pub plan_id: Uuid,
    /// The plan version computed with.
    pub plan_version: u32,
    /// The customer.
    pub customer_id: String,
    /// Business time of the conversion.
    pub occurred_at: DateTime<Utc>,
    /// Its calendar month.
    pub period: Period,
    /// The rule that matched, if any.
    pub rule_id: Option<String>,
    /// Base line first, then a tier top-up, then overrides by level. Amounts are in the payout
    /// currency, rounded half-even to its minor unit. A line may be zero (capped away, applied
    /// to CPA recovery) and carries the reason in its formula; a ledger posts only non-zero
    /// lines.
    pub lines: Vec<AccrualLine>,
    /// Why there are no lines.
    pub not_payable: Option<NotPayable>,
    /// How [`PartnerState::apply`](crate::PartnerState::apply) evolves the state.
    pub effects: Effects,
}

impl Accrual {
    /// The sum of all lines, in `currency` (the plan's payout currency).
    pub fn total(&self, currency: Currency) -> Result<Money, EngineError> {
        Ok(Money::try_sum(
            currency,
            self.lines.iter().map(|l| l.amount),
        )?)
    }
}

/// One amount owed to one partner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccrualLine {
    /// Who is owed.
    pub partner_id: Uuid,
    /// How much, in the payout currency, rounded. Negative only for net revenue shares (a later
    /// negative report in the same period) and for reversals.
    pub amount: Money,
    /// What the line is.
    pub kind: LineKind,
    /// The rule it comes from.
    pub rule_id: String,
    /// How it was computed.
    pub formula: Formula,
}

/// What a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// The partner's commission for the conversion.
    Base,
    /// Crossing a volume tier: the period's earlier volume topped up to the new rate.
    TierTopUp,
    /// A multi-level override for an upline partner; level 1 is the parent.
    Override {
        /// 1 for the parent, 2 for the grandparent, ...
        level: u8,
    },
}

/// Why a conversion pays nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotPayable {
    /// No rule's conditions hold.
    NoMatchingRule,
    /// The rule counts customer months and the customer has no paid invoice yet.
    NoPaidInvoice,
    /// A first-year share, and the invoice is past customer month 12.
    OutsideFirstYear {
        /// The invoice's customer month.
        month_index: u32,
    },
    /// A recurring share that ran its months.
    RecurringEnded {
        /// The invoice's customer month.
        month_index: u32,
    },
    /// A recurring schedule without a step for this customer month.
    NoScheduleStep {
        /// The invoice's customer month.
        month_index: u32,
    },
    /// A recurring share for a customer that has churned.
    CustomerChurned {
        /// When it churned.
        churned_at: DateTime<Utc>,
    },
}

/// Everything a line was computed from: enough to recompute it by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Formula {
    /// The formula used.
    pub reward: RewardKind,
    /// The conversion's kind.
    pub conversion_kind: ConversionKind,
    /// The human explanation, e.g. `"10% of 100.00 USD sale"`.
    pub text: String,
    /// The amount the formula starts from, in the conversion's currency (before FX).
    pub source_amount: Option<Money>,
    /// The FX rate applied to it, when the currencies differ.
    pub fx_rate: Option<Decimal>,
    /// The amount in the payout currency, before the attribution weight.
    pub base: Option<Money>,
    /// The partner's attribution share.
    pub weight: Decimal,
    /// The amount after the attribution weight: what the rate applies to.
    pub credited_base: Option<Money>,
    /// The percentage applied.
    pub rate: Option<Percent>,
    /// The fixed amount applied (before weight).
    pub flat: Option<Money>,
    /// The amount per unit applied (per lot, per conversion).
    pub per_unit: Option<Money>,
    /// Units (lots, conversions, reseller quantity), before weight.
    pub units: Option<Decimal>,
    /// The customer month of the conversion, when known.
    pub month_index: Option<u32>,
    /// The tier reached, for tiered volume.
    pub tier: Option<TierReached>,
    /// The bands the volume fell into, for ladders.
    pub bands: Vec<BandShare>,
    /// The net revenue computation, for net revenue shares.
    pub net_revenue: Option<NetRevenueShareCalc>,
    /// The exact result before rounding.
    pub exact: Money,
    /// Half-even to the minor unit, before caps and recovery.
    pub rounded: Money,
    /// Caps that reduced the line.
    pub caps: Vec<CapApplied>,
    /// Part of the rounded amount applied to recovering an upfront CPA (not payable).
    pub cpa_recovered: Option<Money>,
    /// For a negative net revenue line: the CPA recovery undone (added back to the CPA
    /// outstanding) instead of clawing back cash that was never paid.
    pub cpa_restored: Option<Money>,
    /// For a line of a conversion credited to several partners: the whole conversion's amount
    /// and this partner's part of it (see [`crate::Split`]). `rounded` is then the part. Boxed:
    /// every line of every accrual a book holds in memory carries the field, and most are not
    /// split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Box<SplitPart>>,
}

/// How one partner's part of a split conversion's line was allocated: enough to redo it by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitPart {
    /// The line's amount for the whole conversion (weight 1), exact.
    pub whole_exact: Money,
    /// The same, rounded half-even once: what the credited partners' parts sum to.
    pub whole: Money,
    /// Every credited partner's weight, in the attribution's order (earliest first touch
    /// first).
    pub weights: Vec<Decimal>,
    /// This partner's place in `weights`.
    pub index: usize,
    /// This partner's part: `whole` allocated over `weights` by largest remainder, before caps
    /// and CPA recovery.
    pub part: Money,
}

impl Formula {
    pub(crate) fn new(
        reward: RewardKind,
        conversion_kind: ConversionKind,
        weight: Decimal,
        currency: Currency,
    ) -> Formula {
        Formula {
            reward,
            conversion_kind,
            text: String::new(),
            source_amount: None,
            fx_rate: None,
            base: None,
            weight,
            credited_base: None,
            rate: None,
            flat: None,
            per_unit: None,
            units: None,
            month_index: None,
            tier: None,
            bands: Vec::new(),
            net_revenue: None,
            exact: Money::zero(currency),
            rounded: Money::zero(currency),
            caps: Vec::new(),
            cpa_recovered: None,
            cpa_restored: None,
            split: None,
        }
    }
}

/// The tier a tiered-volume line was priced at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierReached {
    /// Index of the tier reached after this conversion (0 is the first).
    pub index: usize,
    /// Its threshold.
    pub from: Decimal,
    /// Its price.
    pub price: TierPrice,
    /// Index of the tier before this conversion.
    pub previous_index: usize,
    /// The rule's credited period volume before this conversion.
    pub volume_before: Decimal,
    /// And after it.
    pub volume_after: Decimal,
}

/// The part of a conversion's volume that fell in one ladder band.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BandShare {
    /// Index of the band (tier).
    pub index: usize,
    /// Its lower threshold.
    pub from: Decimal,
    /// Its upper threshold (the next tier's), `None` for the last.
    pub to: Option<Decimal>,
    /// Volume of this conversion inside the band.
    pub volume: Decimal,
    /// The band's price.
    pub price: TierPrice,
}

/// How a net revenue share line came about: the share of the positive period total after the
/// report, minus the share before it (both rounded), so a period's lines always sum to the
/// rounded share of its final total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRevenueShareCalc {
    /// Negative net revenue carried into the period.
    pub carry_in: Money,
    /// The period's credited net revenue before this report.
    pub period_net_before: Money,
    /// And after it.
    pub period_net_after: Money,
    /// The share of `max(0, carry_in + period_net_before)`, rounded.
    pub share_before: Money,
    /// The share of `max(0, carry_in + period_net_after)`, rounded.
    pub share_after: Money,
    /// For a negative line: the part that was not clawed back because the period's lines had
    /// not paid that much.
    pub not_clawed_back: Option<Money>,
}

/// A cap that reduced a line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapApplied {
    /// Which cap.
    pub cap: CapKind,
    /// Its limit.
    pub limit: Money,
    /// How much it took off.
    pub reduced_by: Money,
}

/// The caps of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapKind {
    /// [`Rule::cap_per_conversion`](crate::Rule::cap_per_conversion).
    PerConversion,
    /// [`Rule::cap_per_period`](crate::Rule::cap_per_period).
    PerPeriod,
}

/// How an accrual evolves the partner's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effects {
    /// Set when the conversion is the customer's first paid invoice.
    pub first_paid_invoice_at: Option<DateTime<Utc>>,
    /// Set when the customer is (re)locked to the version computed with.
    pub lock_version: Option<u32>,
    /// The matched rule's period totals to add.
    pub period: Option<PeriodDelta>,
    /// The customer's net revenue position after the report.
    pub net_revenue: Option<NetRevenuePosition>,
    /// Under a ringfenced plan, the brand that position is of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_revenue_brand: Option<String>,
    /// The customer's CPA outstanding after the accrual, when it changed.
    pub cpa_outstanding: Option<Money>,
}

/// Additions to a rule's [`PeriodTotals`](crate::PeriodTotals).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodDelta {
    /// The period.
    pub period: Period,
    /// The rule.
    pub rule_id: String,
    /// Credited volume added.
    pub volume: Decimal,
    /// Rounded formula amounts added, before caps.
    pub earned: Money,
    /// Amounts after caps added (before CPA recovery).
    pub accrued: Money,
}
