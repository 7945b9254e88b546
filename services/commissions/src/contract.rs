//! Commissions' reading of the integration events it consumes, per the contracts in
//! `proto/partnerledger/attribution/v1/events.proto` and `.../compliance/v1/events.proto`.
//! Each message is parsed and checked here, at the edge: a payload that breaks the contract is a
//! permanent failure (dead-lettered), never a half-applied accrual.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use pl_money::{Decimal, Money};
use serde::Deserialize;
use uuid::Uuid;

/// Partner shares of one conversion are capped, like everything the service accepts.
pub const MAX_SHARES: usize = 16;
pub const MAX_PRODUCTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ConversionKind {
    #[serde(rename = "CONVERSION_KIND_LEAD")]
    Lead,
    #[serde(rename = "CONVERSION_KIND_SIGNUP")]
    Signup,
    #[serde(rename = "CONVERSION_KIND_SALE")]
    Sale,
    #[serde(rename = "CONVERSION_KIND_SUBSCRIPTION_STARTED")]
    SubscriptionStarted,
    #[serde(rename = "CONVERSION_KIND_SUBSCRIPTION_INVOICE")]
    SubscriptionInvoice,
    #[serde(rename = "CONVERSION_KIND_NET_REVENUE_REPORT")]
    NetRevenueReport,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerShare {
    pub partner_id: Uuid,
    pub weight: Decimal,
    /// The campaign this partner's credit came through; program reports group by it.
    #[serde(default, deserialize_with = "opt_uuid")]
    pub campaign_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConversionAttributed {
    pub conversion_id: Uuid,
    #[serde(default)]
    pub external_id: String,
    pub program_id: Uuid,
    pub kind: ConversionKind,
    pub customer_id: String,
    #[serde(default)]
    pub customer_country: Option<String>,
    #[serde(default)]
    pub products: Vec<String>,
    #[serde(default)]
    pub gross: Option<Money>,
    #[serde(default)]
    pub net: Option<Money>,
    #[serde(default, deserialize_with = "opt_decimal")]
    pub lots: Option<Decimal>,
    #[serde(default)]
    pub list_price: Option<Money>,
    #[serde(default)]
    pub partner_price: Option<Money>,
    #[serde(default)]
    pub quantity: u32,
    /// A net revenue report's brand or product line (ringfenced plans keep a negative result
    /// per brand); empty or absent means none.
    #[serde(default, deserialize_with = "opt_text")]
    pub brand: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub shares: Vec<PartnerShare>,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub reason: String,
    /// Empty or absent means no campaign.
    #[serde(default, deserialize_with = "opt_uuid")]
    pub campaign_id: Option<Uuid>,
}

/// A refund or a chargeback: both reverse the conversion's commission pro rata.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reversal {
    #[serde(alias = "refund_id", alias = "chargeback_id")]
    pub reversal_id: Uuid,
    pub conversion_id: Uuid,
    pub amount: Money,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SubscriptionCancelled {
    pub customer_id: String,
    pub program_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    /// The conversion that had locked the customer to its partners. Attribution sends it with
    /// every churn of a locked customer; without it a churn reaches the credited partners only.
    #[serde(default)]
    pub locked_by_conversion_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VerificationRecorded {
    pub partner_id: Uuid,
    pub kind: String,
    pub status: String,
    pub occurred_at: DateTime<Utc>,
    #[serde(default)]
    pub valid_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PayoutHold {
    pub partner_id: Uuid,
    pub hold_id: String,
    #[serde(default)]
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
}

/// Compliance's `SanctionsStatusChanged`: where a sanctions screening of a partner stands.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SanctionsStatusChanged {
    pub partner_id: Uuid,
    pub screening_id: Uuid,
    pub status: String,
    pub occurred_at: DateTime<Utc>,
}

/// Partner CRM's `CampaignFeeCommitted` (a creator campaign's flat fee to one partner),
/// `CampaignBonusAwarded` (its performance bonus) or `MdfReimbursementApproved` (an approved
/// MDF claim): money owed outside commission plans.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PartnerCredit {
    /// The campaign or the MDF claim (`campaign_id` / `claim_id` on the wire).
    #[serde(alias = "campaign_id", alias = "claim_id")]
    pub subject_id: Uuid,
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub amount: Money,
    pub occurred_at: DateTime<Utc>,
}

impl PartnerCredit {
    pub fn parse(event_type: &str, data: &str) -> Result<Self, ContractError> {
        let c: Self = from_json(event_type, data)?;
        if !c.amount.is_positive() {
            return Err(ContractError {
                event_type: event_type.into(),
                reason: "amount must be positive".into(),
            });
        }
        Ok(c)
    }
}

/// Compliance's `ConversionRejected`: a fraud rule rejected the conversion, so its commission
/// is reversed in full in every book that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConversionRejected {
    pub conversion_id: Uuid,
    pub program_id: Uuid,
    #[serde(default)]
    pub rule: String,
    #[serde(default)]
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
}

impl ConversionRejected {
    pub fn parse(data: &str) -> Result<Self, ContractError> {
        const T: &str = "ConversionRejected";
        let r: Self = from_json(T, data)?;
        if r.reason.chars().count() > MAX_REASON_CHARS || r.rule.chars().count() > MAX_ID_CHARS {
            return Err(ContractError {
                event_type: T.into(),
                reason: "rule or reason too long".into(),
            });
        }
        Ok(r)
    }
}

/// Partner CRM's `PartnerParentChanged`: the partner's parent from `occurred_at` on (`None`:
/// no parent).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ParentChanged {
    pub partner_id: Uuid,
    pub program_id: Uuid,
    #[serde(default, deserialize_with = "opt_uuid")]
    pub parent_partner_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

impl ParentChanged {
    pub fn parse(data: &str) -> Result<Self, ContractError> {
        const T: &str = "PartnerParentChanged";
        let p: Self = from_json(T, data)?;
        if p.parent_partner_id == Some(p.partner_id) {
            return Err(ContractError {
                event_type: T.into(),
                reason: "a partner cannot be its own parent".into(),
            });
        }
        Ok(p)
    }
}

/// Partner CRM's `PartnerTierChanged`: the partner's tier from `effective_from` on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TierChanged {
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub tier: String,
    pub effective_from: DateTime<Utc>,
}

impl TierChanged {
    pub fn parse(data: &str) -> Result<Self, ContractError> {
        const T: &str = "PartnerTierChanged";
        let t: Self = from_json(T, data)?;
        check_tier_code(T, &t.tier)?;
        Ok(t)
    }
}

/// Tiers one program may define, and plans one tier may grant: partner CRM's own limits are
/// lower (20 tiers, 100 plans); these bound what a broken or hostile message can make this
/// service keep.
pub const MAX_TIERS: usize = 64;
pub const MAX_TIER_PLANS: usize = 1_000;

/// What commissions reads of one tier in `ProgramTiersChanged`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TierDefinition {
    pub code: String,
    pub rank: u32,
    #[serde(default)]
    pub access: TierAccess,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TierAccess {
    /// Plans the tier may be assigned; empty: any.
    #[serde(default)]
    pub plan_ids: Vec<Uuid>,
}

/// Partner CRM's `ProgramTiersChanged`: every tier of the program after a change.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProgramTiersChanged {
    pub program_id: Uuid,
    #[serde(default)]
    pub tiers: Vec<TierDefinition>,
    pub occurred_at: DateTime<Utc>,
}

impl ProgramTiersChanged {
    pub fn parse(data: &str) -> Result<Self, ContractError> {
        const T: &str = "ProgramTiersChanged";
        let p: Self = from_json(T, data)?;
        let broken = |reason: String| ContractError {
            event_type: T.into(),
            reason,
        };
        if p.tiers.len() > MAX_TIERS {
            return Err(broken(format!("more than {MAX_TIERS} tiers")));
        }
        let mut codes = BTreeSet::new();
        for t in &p.tiers {
            check_tier_code(T, &t.code)?;
            if !codes.insert(t.code.as_str()) {
                return Err(broken(format!("tier {} is listed twice", t.code)));
            }
            if t.access.plan_ids.len() > MAX_TIER_PLANS {
                return Err(broken(format!(
                    "tier {} grants more than {MAX_TIER_PLANS} plans",
                    t.code
                )));
            }
        }
        Ok(p)
    }
}

fn check_tier_code(event_type: &str, code: &str) -> Result<(), ContractError> {
    if code.is_empty() || code.chars().count() > MAX_ID_CHARS {
        return Err(ContractError {
            event_type: event_type.into(),
            reason: format!("a tier code has 1 to {MAX_ID_CHARS} characters"),
        });
    }
    Ok(())
}

/// Why a message breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event_type} breaks its contract: {reason}")]
pub struct ContractError {
    pub event_type: String,
    pub reason: String,
}

fn opt_uuid<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(v) => Uuid::parse_str(v)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("not a uuid: {e}"))),
    }
}

fn opt_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()))
}

fn opt_decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(v) => pl_money::parse_amount(v)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

impl ConversionAttributed {
    /// Parses and checks the invariants the engine relies on: weights in (0, 1] summing to
    /// exactly 1, distinct partners, amounts in one currency, bounded lists.
    pub fn parse(data: &str) -> Result<Self, ContractError> {
        let err = |reason: String| ContractError {
            event_type: "ConversionAttributed".into(),
            reason,
        };
        let c: Self = serde_json::from_str(data).map_err(|e| err(e.to_string()))?;
        if c.shares.is_empty() || c.shares.len() > MAX_SHARES {
            return Err(err(format!("needs 1 to {MAX_SHARES} partner shares")));
        }
        if c.products.len() > MAX_PRODUCTS {
            return Err(err(format!("at most {MAX_PRODUCTS} products")));
        }
        let partners: BTreeSet<_> = c.shares.iter().map(|s| s.partner_id).collect();
        if partners.len() != c.shares.len() {
            return Err(err("a partner appears twice in the shares".into()));
        }
        if c.shares
            .iter()
            .any(|s| s.weight <= Decimal::ZERO || s.weight > Decimal::ONE)
        {
            return Err(err("every weight must be in (0, 1]".into()));
        }
        let total: Decimal = c.shares.iter().map(|s| s.weight).sum();
        if total != Decimal::ONE {
            return Err(err(format!("weights sum to {total}, not exactly 1")));
        }
        let currencies: BTreeSet<_> = [c.gross, c.net, c.list_price, c.partner_price]
            .iter()
            .flatten()
            .map(|m| m.currency())
            .collect();
        if currencies.len() > 1 {
            return Err(err("amounts are in more than one currency".into()));
        }
        Ok(c)
    }
}

impl Reversal {
    pub fn parse(event_type: &str, data: &str) -> Result<Self, ContractError> {
        let r: Self = serde_json::from_str(data).map_err(|e| ContractError {
            event_type: event_type.into(),
            reason: e.to_string(),
        })?;
        if !r.amount.is_positive() {
            return Err(ContractError {
                event_type: event_type.into(),
                reason: "the reversed amount must be positive".into(),
            });
        }
        Ok(r)
    }
}

/// Identifiers and free text from other services are bounded like everything accepted.
pub const MAX_ID_CHARS: usize = 256;
pub const MAX_REASON_CHARS: usize = 1024;

fn bounded(event_type: &str, field: &str, value: &str, max: usize) -> Result<(), ContractError> {
    let reason = if value.trim().is_empty() {
        format!("{field} is required")
    } else if value.chars().count() > max {
        format!("{field} has more than {max} characters")
    } else if value.chars().any(char::is_control) {
        format!("{field} contains a control character")
    } else {
        return Ok(());
    };
    Err(ContractError {
        event_type: event_type.into(),
        reason,
    })
}

fn from_json<T: serde::de::DeserializeOwned>(
    event_type: &str,
    data: &str,
) -> Result<T, ContractError> {
    serde_json::from_str(data).map_err(|e| ContractError {
        event_type: event_type.into(),
        reason: e.to_string(),
    })
}

impl SubscriptionCancelled {
    pub fn parse(data: &str) -> Result<Self, ContractError> {
        let c: Self = from_json("SubscriptionCancelled", data)?;
        bounded(
            "SubscriptionCancelled",
            "customer_id",
            &c.customer_id,
            MAX_ID_CHARS,
        )?;
        Ok(c)
    }
}

impl VerificationRecorded {
    /// Kinds and statuses are closed lists in compliance's contract: anything else is a new
    /// schema the payout rules were not written for, so it is refused, not guessed at.
    pub fn parse(data: &str) -> Result<Self, ContractError> {
        const T: &str = "VerificationRecorded";
        let v: Self = from_json(T, data)?;
        let err = |reason: String| ContractError {
            event_type: T.into(),
            reason,
        };
        if !crate::eligibility::KINDS.contains(&v.kind.as_str()) {
            return Err(err(format!("unknown kind {:?}", v.kind)));
        }
        if !crate::eligibility::STATUSES.contains(&v.status.as_str()) {
            return Err(err(format!("unknown status {:?}", v.status)));
        }
        Ok(v)
    }
}

impl SanctionsStatusChanged {
    /// The status is a closed list in compliance's contract: anything else is refused, not
    /// guessed at (a payout rule must never read an unknown state as "cleared").
    pub fn parse(data: &str) -> Result<Self, ContractError> {
        const T: &str = "SanctionsStatusChanged";
        let s: Self = from_json(T, data)?;
        if !crate::eligibility::SANCTIONS_STATUSES.contains(&s.status.as_str()) {
            return Err(ContractError {
                event_type: T.into(),
                reason: format!("unknown status {:?}", s.status),
            });
        }
        Ok(s)
    }
}

impl PayoutHold {
    /// `event_type` is PayoutHoldPlaced or PayoutHoldReleased (same shape).
    pub fn parse(event_type: &str, data: &str) -> Result<Self, ContractError> {
        let h: Self = from_json(event_type, data)?;
        bounded(event_type, "hold_id", &h.hold_id, MAX_ID_CHARS)?;
        if h.reason.chars().count() > MAX_REASON_CHARS {
            return Err(ContractError {
                event_type: event_type.into(),
                reason: format!("reason has more than {MAX_REASON_CHARS} characters"),
            });
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALE: &str = r#"{
        "conversion_id": "00000000-0000-0000-0000-000000000001",
        "external_id": "order-1", "program_id": "00000000-0000-0000-0000-000000000002",
        "kind": "CONVERSION_KIND_SALE", "customer_id": "cust-1", "customer_country": "DE",
        "products": ["pro"], "gross": {"amount": "100.00", "currency": "USD"},
        "occurred_at": "2026-01-15T10:00:00Z",
        "shares": [{"partner_id": "00000000-0000-0000-0000-00000000000a", "weight": "0.6"},
                   {"partner_id": "00000000-0000-0000-0000-00000000000b", "weight": "0.4"}],
        "model": "linear", "reason": "two clicks in window"
    }"#;

    #[test]
    fn a_sale_split_between_two_partners_parses_with_exact_weights() {
        let c = ConversionAttributed::parse(SALE).unwrap();
        assert_eq!(c.kind, ConversionKind::Sale);
        assert_eq!(c.shares[0].weight, Decimal::new(6, 1));
        assert_eq!(c.gross.unwrap().to_string(), "100.00 USD");
    }

    #[test]
    fn weights_that_do_not_sum_to_one_break_the_contract() {
        let bad = SALE.replace("\"0.4\"", "\"0.3\"");
        let e = ConversionAttributed::parse(&bad).unwrap_err();
        assert!(e.reason.contains("sum to 0.9"), "{e}");
    }

    #[test]
    fn a_float_amount_breaks_the_contract() {
        let bad = SALE.replace("\"100.00\"", "100.0");
        assert!(ConversionAttributed::parse(&bad).is_err());
    }

    #[test]
    fn refunds_and_chargebacks_read_alike() {
        let refund = r#"{"refund_id":"00000000-0000-0000-0000-000000000009",
            "conversion_id":"00000000-0000-0000-0000-000000000001",
            "amount":{"amount":"25.00","currency":"USD"},"occurred_at":"2026-02-01T00:00:00Z"}"#;
        let r = Reversal::parse("ConversionRefunded", refund).unwrap();
        assert_eq!(r.amount.to_string(), "25.00 USD");
        let chargeback = refund.replace("refund_id", "chargeback_id");
        assert_eq!(
            Reversal::parse("ChargebackReceived", &chargeback).unwrap(),
            r
        );
    }
}
