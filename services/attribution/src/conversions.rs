//! Conversions and the customer relationship (stream `relationship-<program, customer>`), the
//! aggregate where every decision about a customer is made, one at a time (optimistic
//! concurrency on this stream serialises them), so the customer lock cannot be raced.
//!
//! Deciding a new conversion:
//! 1. The customer is locked (their first sale, subscription start or invoice fixed their
//!    partners, or fixed that they came without one) → the conversion follows the lock; unless
//!    the program allows re-attribution and this is a new sale or subscription start with
//!    touchpoints of its own, which then re-locks the customer.
//! 2. Otherwise precedence: an approved deal registration in effect → 100 % to its partner;
//!    else the latest coupon redemption in the window → 100 %; else the program's model over the
//!    clicks and postbacks (and impressions, when the program counts them) in the window.
//!    Only touchpoints of the program, of a partner approved at the conversion's time, at most
//!    `window_days` before the conversion and not after it count.
//! 3. Refunds and chargebacks reverse a conversion of the same customer (never more than its
//!    amount less what was already reversed) and follow that conversion's partners; a
//!    cancellation follows the lock and ends it.
//!
//! A decision is final: the same conversion again (same external id, same facts) returns it, a
//! touchpoint recorded later changes nothing. A correction is a new fact: refund the conversion
//! and record it again under a new external id. Pure decide/evolve: no I/O, no clock.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use pl_money::{Decimal, Money};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::crm::{status_at, Deal, PartnerStatus, StatusChange};
use crate::models::{self, in_window};
use crate::settings::{Model, Settings};
use crate::touchpoints::{Touchpoint, TouchpointKind};

/// A customer's relationship keeps at most this many conversions (over 400 years of monthly
/// invoices); more is refused.
pub const MAX_CONVERSIONS_PER_CUSTOMER: usize = 5000;
/// Touchpoints the model considers per conversion: the most recent ones in the window.
pub const MAX_TOUCHPOINTS_CONSIDERED: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversionType {
    Lead,
    Signup,
    Sale,
    SubscriptionStarted,
    SubscriptionInvoicePaid,
    Refund,
    Chargeback,
    SubscriptionCancelled,
    /// A customer's (player's) net revenue for a month; follows the lock like an invoice.
    NetRevenueReport,
}

impl ConversionType {
    pub fn is_reversal(self) -> bool {
        matches!(self, ConversionType::Refund | ConversionType::Chargeback)
    }

    /// Conversions that start (or renew) a paying relationship: the first of them locks the
    /// customer.
    pub fn locks(self) -> bool {
        matches!(
            self,
            ConversionType::Sale
                | ConversionType::SubscriptionStarted
                | ConversionType::SubscriptionInvoicePaid
                | ConversionType::NetRevenueReport
        )
    }

    /// Those a program allowing re-attribution decides afresh for a locked customer.
    pub fn may_reattribute(self) -> bool {
        matches!(
            self,
            ConversionType::Sale | ConversionType::SubscriptionStarted
        )
    }

    /// Those that carry their amount in `amount` (a net revenue report carries its figures in
    /// its own fields).
    pub fn needs_amount(self) -> bool {
        (self.locks() && self != ConversionType::NetRevenueReport) || self.is_reversal()
    }
}

/// A conversion as received (validated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionFacts {
    pub conversion_id: Uuid,
    pub external_id: String,
    pub program_id: Uuid,
    pub conversion_type: ConversionType,
    pub customer_id: String,
    pub visitor_id: Option<String>,
    pub customer_domain: Option<String>,
    pub amount: Option<Money>,
    pub products: Vec<String>,
    pub customer_country: Option<String>,
    pub original_external_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    /// Hex SHA-256 of the customer's canonical email; the address is never kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_email_hash: Option<String>,
    /// Revenue details passed through to commissions (net revenue, lots, reseller pricing).
    #[serde(default, skip_serializing_if = "Revenue::is_empty")]
    pub revenue: Revenue,
    /// The caller gave no business time, so `occurred_at` is the server's receipt time: a
    /// retry's differs, and must not make the same conversion look like another. Not a fact:
    /// never stored, never in the digest.
    #[serde(skip)]
    pub occurred_at_is_receipt_time: bool,
}

/// What a commission plan may compute on besides the gross amount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revenue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lots: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_price: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_price: Option<Money>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quantity: u32,
    /// A net revenue report's figures besides `net`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportDetails>,
}

/// The period, brand and breakdown of a net revenue report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportDetails {
    /// "YYYY-MM".
    pub period: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gross_gaming_revenue: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bonuses: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fees: Option<Money>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Revenue {
    pub fn is_empty(&self) -> bool {
        *self == Revenue::default()
    }
}

impl ConversionFacts {
    /// Hex SHA-256 of the facts' JSON: "the same conversion" means the same digest.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }
}

/// What the log knew that may matter to a fresh decision, gathered by the service.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    /// The visitor's and the customer's touchpoints (any program, any time).
    pub touchpoints: Vec<Touchpoint>,
    /// Deal registrations for the customer (by id or domain), any state.
    pub deals: Vec<Deal>,
    /// Status history of every partner above.
    pub partners: BTreeMap<Uuid, Vec<StatusChange>>,
}

#[derive(Debug, Clone)]
pub struct Decide {
    pub facts: ConversionFacts,
    pub settings: Settings,
    pub settings_version: u64,
    pub candidates: Candidates,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub partner_id: Uuid,
    pub weight: Decimal,
    /// The campaign of this partner's touchpoint with the most credit (the latest on a tie):
    /// each partner's credit is reported under its own campaign, not the winner's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<Uuid>,
}

/// A touchpoint that earned credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credited {
    pub touchpoint_id: Uuid,
    pub kind: TouchpointKind,
    pub partner_id: Uuid,
    pub campaign_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    /// Its share of the raw credit, rounded half-even to 6 places (before per-partner rounding).
    pub credit: Decimal,
    /// A click's salted IP hash, for compliance's fraud rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_hash: Option<String>,
}

/// Stored internally tagged (`"outcome": "attributed"` beside the variant's fields) and read
/// back in one pass by [`Outcome`]'s own `Deserialize` (below), not serde's derived one, which
/// buffers every field before it looks at the tag. Every earlier decision about a customer is
/// decoded again on each of its conversions: for an invoice after 24 others, decoding outcomes
/// was a sixth of its CPU, and one pass takes a tenth off the invoice (attribution bench).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Attributed {
        shares: Vec<Share>,
        touchpoints: Vec<Credited>,
        campaign_id: Option<Uuid>,
        /// Set when the conversion followed the lock of this earlier conversion.
        locked_by: Option<Uuid>,
        /// This conversion (re)locks the customer to these partners.
        locks: bool,
        reason: String,
    },
    Unattributed {
        locked_by: Option<Uuid>,
        locks: bool,
        reason: String,
    },
    Reversed {
        original_conversion_id: Uuid,
        amount: Money,
        full: bool,
        /// The original's partners; empty when it was not attributed.
        shares: Vec<Share>,
        campaign_id: Option<Uuid>,
        reason: String,
    },
    Cancelled {
        locked_by: Option<Uuid>,
        shares: Vec<Share>,
        campaign_id: Option<Uuid>,
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum OutcomeTag {
    Attributed,
    Unattributed,
    Reversed,
    Cancelled,
}

/// Every variant's fields side by side, the tag among them: what one pass over a stored
/// [`Outcome`] reads, whatever the order of its fields. Which of them a variant requires is
/// checked in [`FlatOutcome::into_outcome`], as the derived form would.
#[derive(Deserialize)]
struct FlatOutcome {
    outcome: OutcomeTag,
    shares: Option<Vec<Share>>,
    touchpoints: Option<Vec<Credited>>,
    campaign_id: Option<Uuid>,
    locked_by: Option<Uuid>,
    locks: Option<bool>,
    reason: Option<String>,
    original_conversion_id: Option<Uuid>,
    amount: Option<Money>,
    full: Option<bool>,
}

impl FlatOutcome {
    fn into_outcome(self) -> Result<Outcome, &'static str> {
        let reason = self.reason.ok_or("reason")?;
        Ok(match self.outcome {
            OutcomeTag::Attributed => Outcome::Attributed {
                shares: self.shares.ok_or("shares")?,
                touchpoints: self.touchpoints.ok_or("touchpoints")?,
                campaign_id: self.campaign_id,
                locked_by: self.locked_by,
                locks: self.locks.ok_or("locks")?,
                reason,
            },
            OutcomeTag::Unattributed => Outcome::Unattributed {
                locked_by: self.locked_by,
                locks: self.locks.ok_or("locks")?,
                reason,
            },
            OutcomeTag::Reversed => Outcome::Reversed {
                original_conversion_id: self
                    .original_conversion_id
                    .ok_or("original_conversion_id")?,
                amount: self.amount.ok_or("amount")?,
                full: self.full.ok_or("full")?,
                shares: self.shares.ok_or("shares")?,
                campaign_id: self.campaign_id,
                reason,
            },
            OutcomeTag::Cancelled => Outcome::Cancelled {
                locked_by: self.locked_by,
                shares: self.shares.ok_or("shares")?,
                campaign_id: self.campaign_id,
                reason,
            },
        })
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        FlatOutcome::deserialize(d)?
            .into_outcome()
            .map_err(serde::de::Error::missing_field)
    }
}

impl Outcome {
    pub fn reason(&self) -> &str {
        match self {
            Outcome::Attributed { reason, .. }
            | Outcome::Unattributed { reason, .. }
            | Outcome::Reversed { reason, .. }
            | Outcome::Cancelled { reason, .. } => reason,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub facts: ConversionFacts,
    pub facts_sha256: String,
    pub model: Model,
    pub window_days: u32,
    pub half_life_hours: u32,
    pub settings_version: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum RelationshipEvent {
    ConversionDecided(Decision),
}
impl DomainEvent for RelationshipEvent {}

/// The partners a customer is locked to; no shares: locked as coming through no partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub conversion_id: Uuid,
    pub shares: Vec<Share>,
    pub campaign_id: Option<Uuid>,
}

#[derive(Debug, Clone, Default)]
pub struct Relationship {
    pub lock: Option<Lock>,
    pub decisions: HashMap<Uuid, Decision>,
    /// Amount reversed so far per conversion.
    pub reversed: HashMap<Uuid, Money>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("conversion {external_id:?} was already recorded with other details")]
    DecidedDifferently { external_id: String },
    #[error("conversion {external_id:?} of this customer is unknown")]
    OriginalNotFound { external_id: String },
    #[error("conversion {external_id:?} cannot be refunded or charged back: it carries no amount or is itself a reversal or cancellation")]
    NotReversible { external_id: String },
    #[error("the amount is in {got}, the conversion in {expected}")]
    CurrencyMismatch { expected: String, got: String },
    #[error("the amount exceeds what is left to reverse of the conversion, {remaining}")]
    ExceedsRemaining { remaining: Money },
    #[error("the customer already has {MAX_CONVERSIONS_PER_CUSTOMER} conversions")]
    Full,
}

impl Aggregate for Relationship {
    type State = Relationship;
    type Command = Decide;
    type Event = RelationshipEvent;
    type Error = ConversionError;

    fn decide(
        state: &Relationship,
        cmd: &Decide,
    ) -> Result<Vec<RelationshipEvent>, ConversionError> {
        let facts = &cmd.facts;
        let digest = facts.digest();
        if let Some(existing) = state.decisions.get(&facts.conversion_id) {
            if existing.facts_sha256 == digest {
                return Ok(vec![]);
            }
            return Err(ConversionError::DecidedDifferently {
                external_id: facts.external_id.clone(),
            });
        }
        if state.decisions.len() >= MAX_CONVERSIONS_PER_CUSTOMER {
            return Err(ConversionError::Full);
        }
        let s = &cmd.settings;
        let outcome = match facts.conversion_type {
            ConversionType::Refund | ConversionType::Chargeback => reverse(state, facts)?,
            ConversionType::SubscriptionCancelled => cancel(state),
            kind => decide_new(state, kind, cmd),
        };
        Ok(vec![RelationshipEvent::ConversionDecided(Decision {
            facts: facts.clone(),
            facts_sha256: digest,
            model: s.model,
            window_days: s.window_days,
            half_life_hours: s.half_life_hours,
            settings_version: cmd.settings_version,
            outcome,
        })])
    }

    fn evolve(mut state: Relationship, event: &RelationshipEvent) -> Relationship {
        let RelationshipEvent::ConversionDecided(d) = event;
        match &d.outcome {
            Outcome::Attributed {
                shares,
                campaign_id,
                locks: true,
                ..
            } => {
                state.lock = Some(Lock {
                    conversion_id: d.facts.conversion_id,
                    shares: shares.clone(),
                    campaign_id: *campaign_id,
                });
            }
            Outcome::Unattributed { locks: true, .. } => {
                state.lock = Some(Lock {
                    conversion_id: d.facts.conversion_id,
                    shares: vec![],
                    campaign_id: None,
                });
            }
            Outcome::Reversed {
                original_conversion_id,
                amount,
                ..
            } => {
                let so_far = state
                    .reversed
                    .get(original_conversion_id)
                    .and_then(|m| m.checked_add(*amount).ok())
                    .unwrap_or(*amount);
                state.reversed.insert(*original_conversion_id, so_far);
            }
            Outcome::Cancelled { .. } => state.lock = None,
            Outcome::Attributed { .. } | Outcome::Unattributed { .. } => {}
        }
        state.decisions.insert(d.facts.conversion_id, d.clone());
        state
    }
}

fn reverse(state: &Relationship, facts: &ConversionFacts) -> Result<Outcome, ConversionError> {
    let original_external = facts.original_external_id.clone().unwrap_or_default();
    let original_id = crate::streams::conversion_id(facts.program_id, &original_external);
    let original =
        state
            .decisions
            .get(&original_id)
            .ok_or_else(|| ConversionError::OriginalNotFound {
                external_id: original_external.clone(),
            })?;
    let not_reversible = || ConversionError::NotReversible {
        external_id: original_external.clone(),
    };
    if original.facts.conversion_type.is_reversal()
        || original.facts.conversion_type == ConversionType::SubscriptionCancelled
    {
        return Err(not_reversible());
    }
    let gross = original.facts.amount.ok_or_else(not_reversible)?;
    let amount = facts.amount.ok_or_else(not_reversible)?;
    if amount.currency() != gross.currency() {
        return Err(ConversionError::CurrencyMismatch {
            expected: gross.currency().code().into(),
            got: amount.currency().code().into(),
        });
    }
    let done = state
        .reversed
        .get(&original_id)
        .copied()
        .unwrap_or(Money::zero(gross.currency()));
    let remaining = gross
        .checked_sub(done)
        .unwrap_or(Money::zero(gross.currency()));
    if amount.amount() > remaining.amount() {
        return Err(ConversionError::ExceedsRemaining { remaining });
    }
    let full = amount.amount() == remaining.amount();
    let what = if facts.conversion_type == ConversionType::Refund {
        "refund"
    } else {
        "chargeback"
    };
    let (shares, campaign_id, reason) = match &original.outcome {
        Outcome::Attributed {
            shares,
            campaign_id,
            ..
        } => (
            shares.clone(),
            *campaign_id,
            format!(
                "{} {what} of conversion {original_external:?} ({original_id}) follows its partners",
                if full { "full" } else { "partial" }
            ),
        ),
        _ => (
            vec![],
            None,
            format!("the {what}ed conversion {original_external:?} ({original_id}) was not attributed"),
        ),
    };
    Ok(Outcome::Reversed {
        original_conversion_id: original_id,
        amount,
        full,
        shares,
        campaign_id,
        reason,
    })
}

fn cancel(state: &Relationship) -> Outcome {
    match &state.lock {
        Some(lock) if !lock.shares.is_empty() => Outcome::Cancelled {
            locked_by: Some(lock.conversion_id),
            shares: lock.shares.clone(),
            campaign_id: lock.campaign_id,
            reason: format!(
                "the customer churned; the lock of conversion {} ends here",
                lock.conversion_id
            ),
        },
        Some(lock) => Outcome::Cancelled {
            locked_by: Some(lock.conversion_id),
            shares: vec![],
            campaign_id: None,
            reason: format!(
                "the customer churned; they came through no partner (conversion {})",
                lock.conversion_id
            ),
        },
        None => Outcome::Cancelled {
            locked_by: None,
            shares: vec![],
            campaign_id: None,
            reason: "the customer churned; no conversion had locked them to a partner".into(),
        },
    }
}

fn follow(lock: &Lock) -> Outcome {
    if lock.shares.is_empty() {
        Outcome::Unattributed {
            locked_by: Some(lock.conversion_id),
            locks: false,
            reason: format!(
                "customer lock: the customer came through no partner (conversion {}); the relationship stays unattributed",
                lock.conversion_id
            ),
        }
    } else {
        Outcome::Attributed {
            shares: lock.shares.clone(),
            touchpoints: vec![],
            campaign_id: lock.campaign_id,
            locked_by: Some(lock.conversion_id),
            locks: false,
            reason: format!(
                "customer lock: follows the partners of conversion {} for the relationship",
                lock.conversion_id
            ),
        }
    }
}

fn decide_new(state: &Relationship, kind: ConversionType, cmd: &Decide) -> Outcome {
    let reattribute = cmd.settings.allow_reattribution && kind.may_reattribute();
    match &state.lock {
        Some(lock) if !reattribute => follow(lock),
        Some(lock) => match attribute(cmd) {
            fresh @ Outcome::Attributed { .. } => with_lock(fresh, true),
            Outcome::Unattributed { reason, .. } => match follow(lock) {
                Outcome::Attributed {
                    shares,
                    touchpoints,
                    campaign_id,
                    locked_by,
                    locks,
                    reason: followed,
                } => Outcome::Attributed {
                    shares,
                    touchpoints,
                    campaign_id,
                    locked_by,
                    locks,
                    reason: format!("re-attribution found nothing ({reason}); {followed}"),
                },
                other => other,
            },
            other => other,
        },
        None => with_lock(attribute(cmd), kind.locks()),
    }
}

fn with_lock(outcome: Outcome, lock: bool) -> Outcome {
    match outcome {
        Outcome::Attributed {
            shares,
            touchpoints,
            campaign_id,
            locked_by,
            reason,
            ..
        } => Outcome::Attributed {
            shares,
            touchpoints,
            campaign_id,
            locked_by,
            locks: lock,
            reason: if lock {
                format!("{reason}; the customer is now locked to these partners")
            } else {
                reason
            },
        },
        Outcome::Unattributed {
            locked_by, reason, ..
        } => Outcome::Unattributed {
            locked_by,
            locks: lock,
            reason: if lock {
                format!("{reason}; the customer is now locked as coming through no partner")
            } else {
                reason
            },
        },
        other => other,
    }
}

#[derive(Default)]
struct Excluded {
    other_program: usize,
    before_window: usize,
    after_conversion: usize,
    partner_not_approved: usize,
    impressions: usize,
}

impl Excluded {
    fn describe(&self) -> String {
        let parts: Vec<String> = [
            (self.before_window, "before the window"),
            (self.after_conversion, "after the conversion"),
            (
                self.partner_not_approved,
                "of a partner not approved at the conversion",
            ),
            (self.impressions, "impressions (not counted by the program)"),
            (self.other_program, "of other programs"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("; excluded: {}", parts.join(", "))
        }
    }
}

/// The fresh decision from the candidates: deal registration, then coupon, then the model.
fn attribute(cmd: &Decide) -> Outcome {
    let facts = &cmd.facts;
    let s = &cmd.settings;
    let at = facts.occurred_at;
    let approved = |partner: Uuid| {
        cmd.candidates
            .partners
            .get(&partner)
            .and_then(|h| status_at(h, at))
            == Some(PartnerStatus::Approved)
    };

    // 1. an approved deal registration in effect owns the customer.
    let mut deals: Vec<&Deal> = cmd
        .candidates
        .deals
        .iter()
        .filter(|d| {
            d.program_id == facts.program_id && d.in_effect_at(at) && approved(d.partner_id)
        })
        .collect();
    deals.sort_by_key(|d| (d.approved_at, d.deal_id));
    if let Some(deal) = deals.last() {
        return Outcome::Attributed {
            shares: vec![Share {
                partner_id: deal.partner_id,
                weight: Decimal::ONE,
                campaign_id: None,
            }],
            touchpoints: vec![Credited {
                touchpoint_id: deal.deal_id,
                kind: TouchpointKind::DealRegistration,
                partner_id: deal.partner_id,
                campaign_id: None,
                occurred_at: deal.approved_at,
                credit: Decimal::ONE,
                ip_hash: None,
            }],
            campaign_id: None,
            locked_by: None,
            locks: false,
            reason: format!(
                "deal registration {} approved at {} owns the customer (deal registrations take precedence over coupons and clicks)",
                deal.deal_id, deal.approved_at
            ),
        };
    }

    // 2. and 3.: touchpoints of the program, in the window, of approved partners.
    let mut excluded = Excluded::default();
    let mut eligible: Vec<&Touchpoint> = Vec::new();
    for t in &cmd.candidates.touchpoints {
        if t.program_id != facts.program_id {
            excluded.other_program += 1;
        } else if t.occurred_at > at {
            excluded.after_conversion += 1;
        } else if !in_window(t.occurred_at, at, s.window_days) {
            excluded.before_window += 1;
        } else if !approved(t.partner_id) {
            excluded.partner_not_approved += 1;
        } else if t.kind == TouchpointKind::Impression && !s.count_impressions {
            excluded.impressions += 1;
        } else if t.kind != TouchpointKind::DealRegistration {
            eligible.push(t);
        }
    }
    eligible.sort_by_key(|t| t.order_key());
    let window = format!("the {}-day window", s.window_days);

    if let Some(coupon) = eligible
        .iter()
        .rev()
        .find(|t| t.kind == TouchpointKind::Coupon)
    {
        return Outcome::Attributed {
            shares: vec![Share {
                partner_id: coupon.partner_id,
                weight: Decimal::ONE,
                campaign_id: coupon.campaign_id,
            }],
            touchpoints: vec![credited(coupon, Decimal::ONE)],
            campaign_id: coupon.campaign_id,
            locked_by: None,
            locks: false,
            reason: format!(
                "coupon {} redeemed at {} within {window} (coupons take precedence over clicks){}",
                coupon.detail.coupon_code.as_deref().unwrap_or("?"),
                coupon.occurred_at,
                excluded.describe()
            ),
        };
    }

    let mut touches: Vec<&Touchpoint> = eligible
        .into_iter()
        .filter(|t| t.kind != TouchpointKind::Coupon)
        .collect();
    let skipped = touches.len().saturating_sub(MAX_TOUCHPOINTS_CONSIDERED);
    touches.drain(..skipped);
    let raw = models::raw_credit(s.model, &touches, s.half_life_hours);
    let (weights, dropped) = models::partner_weights(&touches, &raw);
    if weights.is_empty() {
        return Outcome::Unattributed {
            locked_by: None,
            locks: false,
            reason: format!(
                "no approved deal registration, coupon or click of an approved partner within {window}{}",
                excluded.describe()
            ),
        };
    }
    let total: Decimal = raw.iter().copied().sum();
    let winners: Vec<Credited> = touches
        .iter()
        .zip(&raw)
        .filter(|(_, r)| !r.is_zero())
        .map(|(t, r)| {
            let share = r.checked_div(total).unwrap_or(Decimal::ZERO).round_dp(6);
            credited(t, share)
        })
        .collect();
    // The campaign of the touchpoint with the most credit (the latest on a tie), for the
    // conversion and per partner. `touches` is in time order and `max_by` keeps the last of
    // equals, hence "the latest on a tie".
    let campaign_id = touches
        .iter()
        .zip(&raw)
        .max_by(|a, b| a.1.cmp(b.1))
        .and_then(|(t, _)| t.campaign_id);
    let campaign_of = |partner_id: Uuid| {
        touches
            .iter()
            .zip(&raw)
            .filter(|(t, _)| t.partner_id == partner_id)
            .max_by(|a, b| a.1.cmp(b.1))
            .and_then(|(t, _)| t.campaign_id)
    };
    let mut reason = format!(
        "{} over {} touchpoint(s) within {window}",
        s.model.as_str(),
        touches.len()
    );
    if skipped > 0 {
        reason.push_str(&format!(
            "; only the latest {MAX_TOUCHPOINTS_CONSIDERED} considered"
        ));
    }
    if dropped > 0 {
        reason.push_str(&format!(
            "; {dropped} partner(s) left out (more than {} partners, or a weight under 0.000001)",
            models::MAX_SHARES
        ));
    }
    reason.push_str(&excluded.describe());
    Outcome::Attributed {
        shares: weights
            .into_iter()
            .map(|w| Share {
                partner_id: w.partner_id,
                weight: w.weight,
                campaign_id: campaign_of(w.partner_id),
            })
            .collect(),
        touchpoints: winners,
        campaign_id,
        locked_by: None,
        locks: false,
        reason,
    }
}

fn credited(t: &Touchpoint, credit: Decimal) -> Credited {
    Credited {
        touchpoint_id: t.touchpoint_id,
        kind: t.kind,
        partner_id: t.partner_id,
        campaign_id: t.campaign_id,
        occurred_at: t.occurred_at,
        credit,
        ip_hash: t.detail.ip_hash.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pl_money::Currency;

    fn share(n: u128, weight: &str) -> Share {
        Share {
            partner_id: Uuid::from_u128(n),
            weight: weight.parse().unwrap(),
            campaign_id: Some(Uuid::from_u128(n + 100)),
        }
    }

    fn every_kind_of_outcome() -> Vec<Outcome> {
        let credited = Credited {
            touchpoint_id: Uuid::from_u128(7),
            kind: TouchpointKind::Click,
            partner_id: Uuid::from_u128(1),
            campaign_id: None,
            occurred_at: DateTime::parse_from_rfc3339("2026-03-01T12:00:00.5Z")
                .unwrap()
                .with_timezone(&Utc),
            credit: "0.6".parse().unwrap(),
            ip_hash: Some("ab".repeat(32)),
        };
        vec![
            Outcome::Attributed {
                shares: vec![share(1, "0.6"), share(2, "0.4")],
                touchpoints: vec![credited],
                campaign_id: Some(Uuid::from_u128(101)),
                locked_by: None,
                locks: true,
                reason: "last click \"quoted\"".into(),
            },
            Outcome::Attributed {
                shares: vec![share(1, "1")],
                touchpoints: vec![],
                campaign_id: None,
                locked_by: Some(Uuid::from_u128(9)),
                locks: false,
                reason: "customer lock".into(),
            },
            Outcome::Unattributed {
                locked_by: None,
                locks: true,
                reason: "no touchpoint in the window".into(),
            },
            Outcome::Reversed {
                original_conversion_id: Uuid::from_u128(9),
                amount: Money::from_minor_units(2_500, Currency::USD),
                full: false,
                shares: vec![share(1, "1")],
                campaign_id: None,
                reason: "partial refund".into(),
            },
            Outcome::Cancelled {
                locked_by: Some(Uuid::from_u128(9)),
                shares: vec![],
                campaign_id: None,
                reason: "the customer churned".into(),
            },
        ]
    }

    #[test]
    fn every_kind_of_outcome_reads_back_as_it_was_stored() {
        for outcome in every_kind_of_outcome() {
            let json = serde_json::to_string(&outcome).unwrap();
            let back: Outcome = serde_json::from_str(&json).unwrap();
            assert_eq!(back, outcome, "{json}");
        }
    }

    #[test]
    fn an_outcome_reads_the_same_whatever_the_order_of_its_fields() {
        let json = r#"{"reason":"r","locks":true,"locked_by":null,"outcome":"unattributed"}"#;
        let back: Outcome = serde_json::from_str(json).unwrap();
        assert_eq!(
            back,
            Outcome::Unattributed {
                locked_by: None,
                locks: true,
                reason: "r".into()
            }
        );
    }

    #[test]
    fn an_outcome_missing_a_field_its_kind_requires_is_refused_naming_it() {
        let json = r#"{"outcome":"attributed","shares":[],"touchpoints":[],"reason":"r"}"#;
        let e = serde_json::from_str::<Outcome>(json).unwrap_err();
        assert!(e.to_string().contains("locks"), "{e}");
        let json = r#"{"outcome":"reversed","shares":[],"full":true,"reason":"r","original_conversion_id":"00000000-0000-0000-0000-000000000009"}"#;
        let e = serde_json::from_str::<Outcome>(json).unwrap_err();
        assert!(e.to_string().contains("amount"), "{e}");
    }

    #[test]
    fn an_outcome_of_an_unknown_kind_is_refused() {
        let json = r#"{"outcome":"forgiven","reason":"r"}"#;
        assert!(serde_json::from_str::<Outcome>(json).is_err());
    }
}
