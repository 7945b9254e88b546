//! Plan versions and their rules: what a partner is paid for, and how much.

use std::fmt;

use chrono::{DateTime, Days, Utc};
use pl_money::{Currency, Money};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ConversionKind, Percent};

/// One effective-dated version of a commission plan. Versions are immutable once published: a
/// change is a new version with a later `effective_from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanVersion {
    /// The plan this is a version of.
    pub plan_id: Uuid,
    /// Version number, unique within the plan.
    pub version: u32,
    /// Business time from which this version is in force (until the next version's).
    pub effective_from: DateTime<Utc>,
    /// Every commission of this plan is paid in this currency.
    pub payout_currency: Currency,
    /// Days an accrual is held before it matures (refund window).
    pub hold_days: u32,
    /// A partner's matured balance is paid out only from this amount up.
    pub minimum_payout: Money,
    /// Which version a customer's later conversions are computed with.
    #[serde(default)]
    pub version_policy: VersionPolicy,
    /// What happens to a negative net revenue (NGR) period.
    #[serde(default)]
    pub net_revenue_policy: NetRevenuePolicy,
    /// Whether an upfront CPA ([`Reward::Flat`]) is recovered from the same customer's later
    /// revenue share before any revenue share is payable.
    #[serde(default)]
    pub cpa_recovery: bool,
    /// Multi-level overrides: entry `i` is the share of the conversion base paid to the
    /// partner's upline at level `i + 1` (parent, grandparent, ...).
    #[serde(default)]
    pub overrides: Vec<Percent>,
    /// The rules; the most specific matching rule decides the commission.
    pub rules: Vec<Rule>,
}

impl PlanVersion {
    /// Whether this version pays a share of a customer's invoices month after month (see
    /// [`RewardKind::is_recurring_share`]).
    pub fn has_recurring_shares(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.reward.kind().is_recurring_share())
    }

    /// When an accrual that occurred at `occurred_at` matures: `hold_days` later. `None` only
    /// past the end of representable time.
    pub fn matures_at(&self, occurred_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        occurred_at.checked_add_days(Days::new(u64::from(self.hold_days)))
    }

    /// Whether a matured balance is large enough to be paid out. A balance in another currency
    /// never is.
    pub fn meets_minimum_payout(&self, balance: Money) -> bool {
        balance
            .checked_cmp(self.minimum_payout)
            .is_ok_and(|o| o.is_ge())
            && balance.is_positive()
    }

    /// The rule with this id.
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }
}

/// Which plan version a customer's conversion is computed with, decided by the version in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionPolicy {
    /// A customer keeps the version it was last paid under (the version in force at its first
    /// commission, unless a follow-effective version moved it since).
    #[default]
    Grandfathered,
    /// Every conversion uses the version in force at its business time.
    FollowEffective,
}

/// What happens to a negative net revenue total at the end of a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetRevenuePolicy {
    /// The negative total is carried into the next period and netted against its revenue.
    #[default]
    CarryForwardNegative,
    /// Each period starts from zero; a negative period is absorbed by the operator.
    ResetEachPeriod,
    /// Carried forward like [`NetRevenuePolicy::CarryForwardNegative`], but per brand (product
    /// line, [`crate::ConversionFacts::brand`]): a negative result of one brand offsets only
    /// later results of the same brand, never another's.
    Ringfenced,
}

/// A rule: conditions a conversion must meet, the reward, and optional caps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Unique within the plan version; keeps its meaning across versions (period totals are kept
    /// per rule id).
    pub id: String,
    /// All set conditions must hold.
    #[serde(default)]
    pub conditions: Conditions,
    /// How the commission is computed.
    pub reward: Reward,
    /// The most this rule pays for one conversion (base line, before CPA recovery).
    #[serde(default)]
    pub cap_per_conversion: Option<Money>,
    /// The most this rule pays a partner per calendar month (all its lines in the month).
    #[serde(default)]
    pub cap_per_period: Option<Money>,
}

/// Conditions of a rule. Its specificity is the number of set conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conditions {
    /// The conversion's kind.
    #[serde(default)]
    pub conversion_kind: Option<ConversionKind>,
    /// A product the conversion contains.
    #[serde(default)]
    pub product: Option<String>,
    /// The customer's country (ISO 3166 alpha-2, uppercase).
    #[serde(default)]
    pub customer_country: Option<String>,
    /// The customer month (1 = the month starting at the first paid invoice) lies in this range.
    #[serde(default)]
    pub month_index: Option<MonthRange>,
    /// The partner's tier.
    #[serde(default)]
    pub partner_tier: Option<String>,
}

impl Conditions {
    /// The number of set conditions.
    pub fn specificity(&self) -> usize {
        [
            self.conversion_kind.is_some(),
            self.product.is_some(),
            self.customer_country.is_some(),
            self.month_index.is_some(),
            self.partner_tier.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count()
    }
}

/// An inclusive range of customer months, `first..=last`, both at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MonthRange {
    /// First month of the range.
    pub first: u32,
    /// Last month of the range, included.
    pub last: u32,
}

impl MonthRange {
    /// Whether `month` lies in the range.
    pub fn contains(self, month: u32) -> bool {
        (self.first..=self.last).contains(&month)
    }
}

/// Which revenue amount of a conversion a percentage applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Base {
    /// The gross amount.
    Gross,
    /// The net amount.
    Net,
}

impl fmt::Display for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Base::Gross => "gross",
            Base::Net => "net",
        })
    }
}

/// How a rule's commission is computed. Every formula is exact until one half-even rounding to
/// the payout currency's minor unit at its end; then the attribution weight has already been
/// applied (the partner's credited share of the conversion).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reward {
    /// A fixed amount per conversion (CPA, referral fee).
    Flat(Money),
    /// A percentage of the gross amount.
    PercentOfGross(Percent),
    /// A percentage of the net amount.
    PercentOfNet(Percent),
    /// A fixed amount plus a percentage (influencers).
    Hybrid {
        /// The fixed part.
        flat: Money,
        /// The percentage part.
        percent: Percent,
        /// What the percentage applies to.
        of: Base,
    },
    /// A percentage paid only on invoices within 12 months of the customer's first paid invoice
    /// (customer months 1–12).
    FirstYearPercent {
        /// The share.
        percent: Percent,
        /// What it applies to.
        of: Base,
    },
    /// A recurring revenue share by customer month, ending at churn or after a number of months.
    Recurring {
        /// Rates by customer month.
        schedule: Vec<ScheduleStep>,
        /// How long the share runs.
        duration: RecurringDuration,
        /// What the rates apply to.
        of: Base,
    },
    /// Volume tiers over the calendar month of the conversion.
    TieredVolume {
        /// What volume is counted.
        basis: VolumeBasis,
        /// How the reached tier applies.
        mode: TierMode,
        /// Tiers by ascending threshold; the first starts at zero.
        tiers: Vec<Tier>,
    },
    /// A rebate per traded lot (Forex introducing brokers).
    PerLot(Money),
    /// A reseller's margin: (list price − partner price) × quantity.
    ResellerMargin,
    /// A share of net (gaming) revenue, which may be negative; see
    /// [`NetRevenuePolicy`].
    NetRevenueShare(Percent),
}

impl Reward {
    /// Whether this reward is a revenue share, from which an outstanding CPA is recovered
    /// when the plan has [`PlanVersion::cpa_recovery`].
    pub fn is_revenue_share(&self) -> bool {
        match self {
            Reward::PercentOfGross(_)
            | Reward::PercentOfNet(_)
            | Reward::FirstYearPercent { .. }
            | Reward::Recurring { .. }
            | Reward::NetRevenueShare(_) => true,
            Reward::TieredVolume { basis, .. } => {
                matches!(basis, VolumeBasis::Gross | VolumeBasis::Net)
            }
            Reward::Flat(_)
            | Reward::Hybrid { .. }
            | Reward::PerLot(_)
            | Reward::ResellerMargin => false,
        }
    }

    /// The revenue amount the reward applies to, when it has one; overrides apply to it too.
    pub fn revenue_base(&self) -> Option<Base> {
        match self {
            Reward::PercentOfGross(_) => Some(Base::Gross),
            Reward::PercentOfNet(_) | Reward::NetRevenueShare(_) => Some(Base::Net),
            Reward::Hybrid { of, .. }
            | Reward::FirstYearPercent { of, .. }
            | Reward::Recurring { of, .. } => Some(*of),
            Reward::TieredVolume { basis, .. } => match basis {
                VolumeBasis::Gross => Some(Base::Gross),
                VolumeBasis::Net => Some(Base::Net),
                VolumeBasis::Count | VolumeBasis::Lots => None,
            },
            Reward::Flat(_) | Reward::PerLot(_) | Reward::ResellerMargin => None,
        }
    }

    /// The kind of formula, for explanations.
    pub fn kind(&self) -> RewardKind {
        match self {
            Reward::Flat(_) => RewardKind::Flat,
            Reward::PercentOfGross(_) => RewardKind::PercentOfGross,
            Reward::PercentOfNet(_) => RewardKind::PercentOfNet,
            Reward::Hybrid { .. } => RewardKind::Hybrid,
            Reward::FirstYearPercent { .. } => RewardKind::FirstYearPercent,
            Reward::Recurring { .. } => RewardKind::Recurring,
            Reward::TieredVolume {
                mode: TierMode::Tiered,
                ..
            } => RewardKind::Tiered,
            Reward::TieredVolume {
                mode: TierMode::Ladder,
                ..
            } => RewardKind::Ladder,
            Reward::PerLot(_) => RewardKind::PerLot,
            Reward::ResellerMargin => RewardKind::ResellerMargin,
            Reward::NetRevenueShare(_) => RewardKind::NetRevenueShare,
        }
    }
}

/// The formula a line was computed with (the variant of [`Reward`], or an override).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    /// [`Reward::Flat`].
    Flat,
    /// [`Reward::PercentOfGross`].
    PercentOfGross,
    /// [`Reward::PercentOfNet`].
    PercentOfNet,
    /// [`Reward::Hybrid`].
    Hybrid,
    /// [`Reward::FirstYearPercent`].
    FirstYearPercent,
    /// [`Reward::Recurring`].
    Recurring,
    /// [`Reward::TieredVolume`] in [`TierMode::Tiered`].
    Tiered,
    /// [`Reward::TieredVolume`] in [`TierMode::Ladder`].
    Ladder,
    /// [`Reward::PerLot`].
    PerLot,
    /// [`Reward::ResellerMargin`].
    ResellerMargin,
    /// [`Reward::NetRevenueShare`].
    NetRevenueShare,
    /// A multi-level override of [`PlanVersion::overrides`].
    Override,
}

impl RewardKind {
    /// A share of a customer's invoices month after month: recurring, first-year and net
    /// revenue shares. These are what the recurring-shares report lists, with the customer's
    /// churn; of these the engine stops paying only a recurring share after it.
    pub fn is_recurring_share(self) -> bool {
        matches!(
            self,
            RewardKind::Recurring | RewardKind::FirstYearPercent | RewardKind::NetRevenueShare
        )
    }
}

/// One step of a recurring schedule: `percent` in customer months `from_month..=to_month`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleStep {
    /// First customer month of the step (1 = the month of the first paid invoice).
    pub from_month: u32,
    /// Last customer month of the step, included; `None` for open-ended (last step only).
    pub to_month: Option<u32>,
    /// The share in those months.
    pub percent: Percent,
}

/// How long a recurring share runs. Either way it ends when the customer churns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecurringDuration {
    /// Customer months 1 to n.
    Months(u32),
    /// As long as the customer stays.
    Lifetime,
}

/// What a volume tier counts over the calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeBasis {
    /// Gross revenue in the payout currency; tiers carry percentages.
    Gross,
    /// Net revenue in the payout currency; tiers carry percentages.
    Net,
    /// Number of conversions; tiers carry an amount per conversion.
    Count,
    /// Traded lots; tiers carry an amount per lot.
    Lots,
}

impl VolumeBasis {
    /// Whether the tiers carry percentages (revenue) rather than amounts per unit.
    pub fn is_revenue(self) -> bool {
        matches!(self, VolumeBasis::Gross | VolumeBasis::Net)
    }
}

/// How the tiers of a [`Reward::TieredVolume`] apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierMode {
    /// The rate of the tier reached applies to the whole period volume: crossing a tier tops up
    /// the period's earlier accruals to the new rate.
    Tiered,
    /// Each band's rate applies only to the volume inside the band.
    Ladder,
}

/// A volume tier: from `from` (inclusive) up to the next tier's `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// The threshold, in the basis' unit (payout currency amount, conversions, or lots).
    pub from: Decimal,
    /// The price in the tier.
    pub price: TierPrice,
}

/// The price of a tier: a percentage of revenue, or an amount per conversion or lot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierPrice {
    /// For revenue bases.
    Percent(Percent),
    /// For count and lot bases, in the payout currency.
    PerUnit(Money),
}
