//! The wire shapes attribution publishes (`proto/partnerledger/attribution/v1/events.proto`)
//! and consumes (`proto/partnerledger/crm/v1/events.proto`), in their proto3 JSON mapping with
//! snake_case names: timestamps RFC 3339, enums by name, uint64 and decimals as strings, money
//! as `{amount: "12.34", currency: "USD"}`, empty fields left out.
//!
//! Published events are the events of the `conversion-<id>` streams themselves: what is stored
//! is exactly what the relay publishes. A conversion stream holds one event, written once.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use pl_money::{Decimal, Money};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::conversions::{ConversionType, Credited, Decision, Outcome, Share};
use crate::crm::{Campaign, Coupon, CrmFact, Deal, Link, PartnerStatus, StatusChange};

// ----- published ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContractKind {
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
    #[serde(rename = "CONVERSION_KIND_REFUND")]
    Refund,
    #[serde(rename = "CONVERSION_KIND_CHARGEBACK")]
    Chargeback,
    #[serde(rename = "CONVERSION_KIND_SUBSCRIPTION_CANCELLED")]
    SubscriptionCancelled,
    #[serde(rename = "CONVERSION_KIND_NET_REVENUE_REPORT")]
    NetRevenueReport,
}

impl From<ConversionType> for ContractKind {
    fn from(t: ConversionType) -> Self {
        match t {
            ConversionType::Lead => ContractKind::Lead,
            ConversionType::Signup => ContractKind::Signup,
            ConversionType::Sale => ContractKind::Sale,
            ConversionType::SubscriptionStarted => ContractKind::SubscriptionStarted,
            ConversionType::SubscriptionInvoicePaid => ContractKind::SubscriptionInvoice,
            ConversionType::Refund => ContractKind::Refund,
            ConversionType::Chargeback => ContractKind::Chargeback,
            ConversionType::SubscriptionCancelled => ContractKind::SubscriptionCancelled,
            ConversionType::NetRevenueReport => ContractKind::NetRevenueReport,
        }
    }
}

/// A decimal as a JSON string, whatever rust_decimal's serde features are unified to.
mod dec_str {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(d)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let s = String::deserialize(d)?;
        Decimal::from_str_exact(&s).map_err(serde::de::Error::custom)
    }
}

mod opt_dec_str {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(d),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => Decimal::from_str_exact(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// proto3 JSON writes uint64 as a string.
mod u64_str {
    use super::*;

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerShare {
    pub partner_id: Uuid,
    #[serde(with = "dec_str")]
    pub weight: Decimal,
    /// The campaign this partner's credit came through, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditedTouchpoint {
    pub touchpoint_id: Uuid,
    pub kind: String,
    pub partner_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    #[serde(with = "dec_str")]
    pub credit: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<Uuid>,
    /// The click's salted IP hash (for fraud rules); never the raw address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionAttributed {
    pub conversion_id: Uuid,
    pub external_id: String,
    pub program_id: Uuid,
    pub kind: ContractKind,
    pub customer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_country: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gross: Option<Money>,
    pub occurred_at: DateTime<Utc>,
    pub shares: Vec<PartnerShare>,
    pub model: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub window_days: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub half_life_hours: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub touchpoints: Vec<CreditedTouchpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_by_conversion_id: Option<Uuid>,
    pub facts_sha256: String,
    #[serde(default, with = "u64_str", skip_serializing_if = "is_zero_u64")]
    pub settings_version: u64,
    /// The customer's company domain, when the conversion carried one (fraud rules compare
    /// it with the partner's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_email_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Money>,
    /// Decimal string on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dec_str")]
    pub lots: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_price: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_price: Option<Money>,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub quantity: u32,
    /// Net revenue reports: the month, the brand, and the breakdown of `net`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gross_gaming_revenue: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bonuses: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fees: Option<Money>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionUnattributed {
    pub conversion_id: Uuid,
    pub external_id: String,
    pub program_id: Uuid,
    pub kind: ContractKind,
    pub customer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gross: Option<Money>,
    pub occurred_at: DateTime<Utc>,
    pub model: String,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub window_days: u32,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_conversion_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_by_conversion_id: Option<Uuid>,
    pub facts_sha256: String,
    #[serde(default, with = "u64_str", skip_serializing_if = "is_zero_u64")]
    pub settings_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_country: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionRefunded {
    pub refund_id: Uuid,
    pub conversion_id: Uuid,
    pub amount: Money,
    pub occurred_at: DateTime<Utc>,
    pub external_id: String,
    pub program_id: Uuid,
    pub customer_id: String,
    pub facts_sha256: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub full: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargebackReceived {
    pub chargeback_id: Uuid,
    pub conversion_id: Uuid,
    pub amount: Money,
    pub occurred_at: DateTime<Utc>,
    pub external_id: String,
    pub program_id: Uuid,
    pub customer_id: String,
    pub facts_sha256: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub full: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionCancelled {
    pub customer_id: String,
    pub program_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub conversion_id: Uuid,
    pub external_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_by_conversion_id: Option<Uuid>,
    pub facts_sha256: String,
}

/// The one event of a `conversion-<id>` stream; the variant name is the published event type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
#[allow(clippy::large_enum_variant)] // one per stream, never held in bulk
pub enum ConversionEvent {
    ConversionAttributed(ConversionAttributed),
    ConversionUnattributed(ConversionUnattributed),
    ConversionRefunded(ConversionRefunded),
    ChargebackReceived(ChargebackReceived),
    SubscriptionCancelled(SubscriptionCancelled),
}
impl DomainEvent for ConversionEvent {}

impl ConversionEvent {
    pub fn conversion_id(&self) -> Uuid {
        match self {
            ConversionEvent::ConversionAttributed(e) => e.conversion_id,
            ConversionEvent::ConversionUnattributed(e) => e.conversion_id,
            ConversionEvent::ConversionRefunded(e) => e.refund_id,
            ConversionEvent::ChargebackReceived(e) => e.chargeback_id,
            ConversionEvent::SubscriptionCancelled(e) => e.conversion_id,
        }
    }

    /// When the conversion (or the refund, chargeback or cancellation) occurred.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            ConversionEvent::ConversionAttributed(e) => e.occurred_at,
            ConversionEvent::ConversionUnattributed(e) => e.occurred_at,
            ConversionEvent::ConversionRefunded(e) => e.occurred_at,
            ConversionEvent::ChargebackReceived(e) => e.occurred_at,
            ConversionEvent::SubscriptionCancelled(e) => e.occurred_at,
        }
    }

    pub fn facts_sha256(&self) -> &str {
        match self {
            ConversionEvent::ConversionAttributed(e) => &e.facts_sha256,
            ConversionEvent::ConversionUnattributed(e) => &e.facts_sha256,
            ConversionEvent::ConversionRefunded(e) => &e.facts_sha256,
            ConversionEvent::ChargebackReceived(e) => &e.facts_sha256,
            ConversionEvent::SubscriptionCancelled(e) => &e.facts_sha256,
        }
    }

    pub fn is_attributed(&self) -> bool {
        !matches!(self, ConversionEvent::ConversionUnattributed(_))
    }
}

fn shares(s: &[Share]) -> Vec<PartnerShare> {
    s.iter()
        .map(|s| PartnerShare {
            partner_id: s.partner_id,
            weight: s.weight,
            campaign_id: s.campaign_id,
        })
        .collect()
}

fn credited(c: &Credited) -> CreditedTouchpoint {
    CreditedTouchpoint {
        touchpoint_id: c.touchpoint_id,
        kind: c.kind.as_str().to_owned(),
        partner_id: c.partner_id,
        occurred_at: c.occurred_at,
        credit: c.credit,
        campaign_id: c.campaign_id,
        ip_hash: c.ip_hash.clone(),
    }
}

/// The published event of a decision: pure, so a retried publication is byte-identical.
pub fn publish(d: &Decision) -> ConversionEvent {
    let f = &d.facts;
    let unattributed = |reason: &str, locked_by: Option<Uuid>, original: Option<Uuid>| {
        ConversionEvent::ConversionUnattributed(ConversionUnattributed {
            conversion_id: f.conversion_id,
            external_id: f.external_id.clone(),
            program_id: f.program_id,
            kind: f.conversion_type.into(),
            customer_id: f.customer_id.clone(),
            gross: f.amount,
            occurred_at: f.occurred_at,
            model: d.model.as_str().to_owned(),
            window_days: d.window_days,
            reason: reason.to_owned(),
            original_conversion_id: original,
            locked_by_conversion_id: locked_by,
            facts_sha256: d.facts_sha256.clone(),
            settings_version: d.settings_version,
            customer_country: f.customer_country.clone(),
            products: f.products.clone(),
        })
    };
    match &d.outcome {
        Outcome::Attributed {
            shares: s,
            touchpoints,
            campaign_id,
            locked_by,
            reason,
            ..
        } => ConversionEvent::ConversionAttributed(ConversionAttributed {
            conversion_id: f.conversion_id,
            external_id: f.external_id.clone(),
            program_id: f.program_id,
            kind: f.conversion_type.into(),
            customer_id: f.customer_id.clone(),
            customer_country: f.customer_country.clone(),
            products: f.products.clone(),
            gross: f.amount,
            occurred_at: f.occurred_at,
            shares: shares(s),
            model: d.model.as_str().to_owned(),
            reason: reason.clone(),
            campaign_id: *campaign_id,
            window_days: d.window_days,
            half_life_hours: if d.model == crate::settings::Model::TimeDecay {
                d.half_life_hours
            } else {
                0
            },
            touchpoints: touchpoints.iter().map(credited).collect(),
            customer_domain: f.customer_domain.clone(),
            customer_email_hash: f.customer_email_hash.clone(),
            net: f.revenue.net,
            lots: f.revenue.lots,
            list_price: f.revenue.list_price,
            partner_price: f.revenue.partner_price,
            quantity: f.revenue.quantity,
            period: f.revenue.report.as_ref().map(|r| r.period.clone()),
            brand: f.revenue.report.as_ref().and_then(|r| r.brand.clone()),
            gross_gaming_revenue: f
                .revenue
                .report
                .as_ref()
                .and_then(|r| r.gross_gaming_revenue),
            bonuses: f.revenue.report.as_ref().and_then(|r| r.bonuses),
            fees: f.revenue.report.as_ref().and_then(|r| r.fees),
            locked_by_conversion_id: *locked_by,
            facts_sha256: d.facts_sha256.clone(),
            settings_version: d.settings_version,
        }),
        Outcome::Unattributed {
            locked_by, reason, ..
        } => unattributed(reason, *locked_by, None),
        Outcome::Reversed {
            original_conversion_id,
            amount,
            full,
            shares: s,
            reason,
            ..
        } => {
            if s.is_empty() {
                return unattributed(reason, None, Some(*original_conversion_id));
            }
            if f.conversion_type == ConversionType::Chargeback {
                ConversionEvent::ChargebackReceived(ChargebackReceived {
                    chargeback_id: f.conversion_id,
                    conversion_id: *original_conversion_id,
                    amount: *amount,
                    occurred_at: f.occurred_at,
                    external_id: f.external_id.clone(),
                    program_id: f.program_id,
                    customer_id: f.customer_id.clone(),
                    facts_sha256: d.facts_sha256.clone(),
                    full: *full,
                })
            } else {
                ConversionEvent::ConversionRefunded(ConversionRefunded {
                    refund_id: f.conversion_id,
                    conversion_id: *original_conversion_id,
                    amount: *amount,
                    occurred_at: f.occurred_at,
                    external_id: f.external_id.clone(),
                    program_id: f.program_id,
                    customer_id: f.customer_id.clone(),
                    facts_sha256: d.facts_sha256.clone(),
                    full: *full,
                })
            }
        }
        Outcome::Cancelled {
            locked_by,
            shares: s,
            reason,
            ..
        } => {
            if s.is_empty() {
                return unattributed(reason, *locked_by, None);
            }
            ConversionEvent::SubscriptionCancelled(SubscriptionCancelled {
                customer_id: f.customer_id.clone(),
                program_id: f.program_id,
                occurred_at: f.occurred_at,
                conversion_id: f.conversion_id,
                external_id: f.external_id.clone(),
                locked_by_conversion_id: *locked_by,
                facts_sha256: d.facts_sha256.clone(),
            })
        }
    }
}

/// The `conversion-<id>` stream: its published event, written once.
#[derive(Debug, Clone, Default)]
pub struct Published(pub Option<ConversionEvent>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conversion {0} was already published differently")]
pub struct PublishedDifferently(pub Uuid);

impl Aggregate for Published {
    type State = Published;
    type Command = ConversionEvent;
    type Event = ConversionEvent;
    type Error = PublishedDifferently;

    fn decide(
        state: &Published,
        e: &ConversionEvent,
    ) -> Result<Vec<ConversionEvent>, PublishedDifferently> {
        match &state.0 {
            None => Ok(vec![e.clone()]),
            Some(existing) if existing == e => Ok(vec![]),
            Some(existing) => Err(PublishedDifferently(existing.conversion_id())),
        }
    }

    fn evolve(_state: Published, e: &ConversionEvent) -> Published {
        Published(Some(e.clone()))
    }
}

// ----- consumed: partner CRM ------------------------------------------------------------------

/// Free text from other services is bounded like everything accepted.
pub const MAX_TEXT_CHARS: usize = 256;
pub const MAX_CAMPAIGN_PARTNERS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event_type} breaks its contract: {reason}")]
pub struct ContractError {
    pub event_type: String,
    pub reason: String,
}

fn opt_uuid<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(v) => Uuid::try_parse(v)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.filter(|v| !v.is_empty()))
}

#[derive(Deserialize)]
struct StatusMsg {
    partner_id: Uuid,
    status: String,
    occurred_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct LinkMsg {
    tracking_link_id: Uuid,
    partner_id: Uuid,
    program_id: Uuid,
    #[serde(default, deserialize_with = "opt_uuid")]
    campaign_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct LinkOffMsg {
    tracking_link_id: Uuid,
    occurred_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct CouponMsg {
    coupon_id: Uuid,
    code: String,
    partner_id: Uuid,
    program_id: Uuid,
    #[serde(default, deserialize_with = "opt_uuid")]
    campaign_id: Option<Uuid>,
    #[serde(default)]
    valid_from: Option<DateTime<Utc>>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    occurred_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct CouponOffMsg {
    coupon_id: Uuid,
    code: String,
    program_id: Uuid,
    occurred_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct DealMsg {
    deal_id: Uuid,
    partner_id: Uuid,
    program_id: Uuid,
    #[serde(default, deserialize_with = "opt_text")]
    customer_id: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    customer_domain: Option<String>,
    approved_at: DateTime<Utc>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct DealOffMsg {
    deal_id: Uuid,
    program_id: Uuid,
    #[serde(default, deserialize_with = "opt_text")]
    customer_id: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    customer_domain: Option<String>,
    occurred_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct CampaignMsg {
    campaign_id: Uuid,
    program_id: Uuid,
    #[serde(default)]
    name: String,
    #[serde(default)]
    partner_ids: Vec<Uuid>,
}

/// A CRM fact and the `crm-*` streams it belongs in (a deal goes under its customer id and
/// its domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub fact: CrmFact,
    pub streams: Vec<String>,
}

fn bounded(field: &str, v: &str) -> Result<(), String> {
    if v.trim().is_empty() {
        Err(format!("{field} is required"))
    } else if v.chars().count() > MAX_TEXT_CHARS {
        Err(format!("{field} has more than {MAX_TEXT_CHARS} characters"))
    } else if v.chars().any(char::is_control) {
        Err(format!("{field} contains a control character"))
    } else {
        Ok(())
    }
}

/// Parses one of partner CRM's events; `Ok(None)` for a type attribution does not use.
pub fn parse_crm(
    event_type: &str,
    source_event_id: Uuid,
    data: &str,
) -> Result<Option<Routed>, ContractError> {
    use crate::streams as s;
    let err = |reason: String| ContractError {
        event_type: event_type.to_owned(),
        reason,
    };
    fn json<T: serde::de::DeserializeOwned>(data: &str) -> Result<T, String> {
        serde_json::from_str(data).map_err(|e| e.to_string())
    }
    let routed = match event_type {
        "PartnerStatusChanged" => {
            let m: StatusMsg = json(data).map_err(err)?;
            let status = match m.status.as_str() {
                "PARTNER_STATUS_APPLIED" => PartnerStatus::Applied,
                "PARTNER_STATUS_APPROVED" => PartnerStatus::Approved,
                "PARTNER_STATUS_REJECTED" => PartnerStatus::Rejected,
                "PARTNER_STATUS_SUSPENDED" => PartnerStatus::Suspended,
                "PARTNER_STATUS_TERMINATED" => PartnerStatus::Terminated,
                other => return Err(err(format!("unknown status {other:?}"))),
            };
            Routed {
                streams: vec![s::crm_partner(m.partner_id)],
                fact: CrmFact::PartnerStatusRecorded {
                    source_event_id,
                    partner_id: m.partner_id,
                    change: StatusChange {
                        status,
                        occurred_at: m.occurred_at,
                    },
                },
            }
        }
        "TrackingLinkIssued" => {
            let m: LinkMsg = json(data).map_err(err)?;
            Routed {
                streams: vec![s::crm_link(m.tracking_link_id)],
                fact: CrmFact::TrackingLinkRecorded {
                    source_event_id,
                    link: Link {
                        tracking_link_id: m.tracking_link_id,
                        partner_id: m.partner_id,
                        program_id: m.program_id,
                        campaign_id: m.campaign_id,
                        occurred_at: m.occurred_at,
                    },
                },
            }
        }
        "TrackingLinkDeactivated" => {
            let m: LinkOffMsg = json(data).map_err(err)?;
            Routed {
                streams: vec![s::crm_link(m.tracking_link_id)],
                fact: CrmFact::TrackingLinkDeactivationRecorded {
                    source_event_id,
                    tracking_link_id: m.tracking_link_id,
                    occurred_at: m.occurred_at,
                },
            }
        }
        "CouponIssued" => {
            let m: CouponMsg = json(data).map_err(err)?;
            bounded("code", &m.code).map_err(err)?;
            Routed {
                streams: vec![s::crm_coupon(m.program_id, &m.code)],
                fact: CrmFact::CouponRecorded {
                    source_event_id,
                    coupon: Coupon {
                        coupon_id: m.coupon_id,
                        code: m.code.to_uppercase(),
                        partner_id: m.partner_id,
                        program_id: m.program_id,
                        campaign_id: m.campaign_id,
                        valid_from: m.valid_from.unwrap_or(m.occurred_at),
                        expires_at: m.expires_at,
                    },
                },
            }
        }
        "CouponDeactivated" => {
            let m: CouponOffMsg = json(data).map_err(err)?;
            bounded("code", &m.code).map_err(err)?;
            Routed {
                streams: vec![s::crm_coupon(m.program_id, &m.code)],
                fact: CrmFact::CouponDeactivationRecorded {
                    source_event_id,
                    coupon_id: m.coupon_id,
                    occurred_at: m.occurred_at,
                },
            }
        }
        "DealRegistrationApproved" => {
            let m: DealMsg = json(data).map_err(err)?;
            let streams =
                deal_streams(m.program_id, &m.customer_id, &m.customer_domain).map_err(err)?;
            Routed {
                streams,
                fact: CrmFact::DealRegistrationRecorded {
                    source_event_id,
                    deal: Deal {
                        deal_id: m.deal_id,
                        partner_id: m.partner_id,
                        program_id: m.program_id,
                        customer_id: m.customer_id,
                        customer_domain: m.customer_domain.map(|d| d.to_lowercase()),
                        approved_at: m.approved_at,
                        expires_at: m.expires_at,
                        revoked_at: None,
                    },
                },
            }
        }
        "DealRegistrationRevoked" => {
            let m: DealOffMsg = json(data).map_err(err)?;
            let streams =
                deal_streams(m.program_id, &m.customer_id, &m.customer_domain).map_err(err)?;
            Routed {
                streams,
                fact: CrmFact::DealRevocationRecorded {
                    source_event_id,
                    deal_id: m.deal_id,
                    occurred_at: m.occurred_at,
                },
            }
        }
        "CampaignCreated" => {
            let m: CampaignMsg = json(data).map_err(err)?;
            if m.partner_ids.len() > MAX_CAMPAIGN_PARTNERS {
                return Err(err(format!("more than {MAX_CAMPAIGN_PARTNERS} partners")));
            }
            if m.name.chars().count() > MAX_TEXT_CHARS {
                return Err(err(format!(
                    "name has more than {MAX_TEXT_CHARS} characters"
                )));
            }
            Routed {
                streams: vec![s::crm_campaign(m.campaign_id)],
                fact: CrmFact::CampaignRecorded {
                    source_event_id,
                    campaign: Campaign {
                        campaign_id: m.campaign_id,
                        program_id: m.program_id,
                        name: m.name,
                        partner_ids: m.partner_ids.into_iter().collect::<BTreeSet<_>>(),
                    },
                },
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(routed))
}

fn deal_streams(
    program_id: Uuid,
    customer_id: &Option<String>,
    domain: &Option<String>,
) -> Result<Vec<String>, String> {
    let mut streams = Vec::new();
    if let Some(c) = customer_id {
        bounded("customer_id", c)?;
        streams.push(crate::streams::crm_deal_by_customer(program_id, c));
    }
    if let Some(d) = domain {
        bounded("customer_domain", d)?;
        streams.push(crate::streams::crm_deal_by_domain(program_id, d));
    }
    if streams.is_empty() {
        return Err("needs a customer_id or a customer_domain".into());
    }
    Ok(streams)
}
