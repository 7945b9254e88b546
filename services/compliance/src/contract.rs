//! Compliance's own reading of the integration events it consumes — attribution's
//! (`proto/partnerledger/attribution/v1/events.proto`) and partner CRM's
//! (`proto/partnerledger/crm/v1/events.proto`) — checked at the edge: a payload that breaks the
//! contract is a permanent failure (dead-lettered), never half-applied. It shares no code with
//! the publishers and never trusts a size it did not bound.
//!
//! Optional fields the publishers do not send yet (compliance's rules use them when present):
//! `ConversionAttributed.customer_email_hash`, `ConversionAttributed.customer_domain`,
//! `CreditedTouchpoint.ip_hash`, the event `TouchpointRecorded`, and `PartnerApplied`'s
//! `email`, `country`, `display_name` and `signup_ip_hash`.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::rules::is_domain;

pub const MAX_SHARES: usize = 16;
pub const MAX_TOUCHPOINTS: usize = 256;
pub const MAX_TEXT_CHARS: usize = 512;
pub const MAX_HASH_CHARS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event_type} breaks its contract: {reason}")]
pub struct ContractError {
    pub event_type: String,
    pub reason: String,
}

fn err(event_type: &str, reason: impl Into<String>) -> ContractError {
    ContractError {
        event_type: event_type.to_owned(),
        reason: reason.into(),
    }
}

fn from_json<'a, T: Deserialize<'a>>(event_type: &str, data: &'a str) -> Result<T, ContractError> {
    serde_json::from_str(data).map_err(|e| err(event_type, e.to_string()))
}

/// Empty strings mean absent in proto3 JSON.
fn present(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn bounded(event_type: &str, field: &str, value: &str, max: usize) -> Result<(), ContractError> {
    if value.chars().count() > max {
        return Err(err(
            event_type,
            format!("{field} has more than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(err(
            event_type,
            format!("{field} contains a control character"),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Share {
    pub partner_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Touchpoint {
    pub touchpoint_id: Uuid,
    pub kind: String,
    pub partner_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    #[serde(default)]
    pub ip_hash: Option<String>,
}

/// What compliance needs of `ConversionAttributed`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConversionAttributed {
    pub conversion_id: Uuid,
    pub program_id: Uuid,
    #[serde(default)]
    pub customer_country: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub shares: Vec<Share>,
    #[serde(default)]
    pub touchpoints: Vec<Touchpoint>,
    /// Hex SHA-256 of the customer's canonical email (see [`email_sha256`]).
    #[serde(default)]
    pub customer_email_hash: Option<String>,
    /// The customer's email or company domain, lower case.
    #[serde(default)]
    pub customer_domain: Option<String>,
}

impl ConversionAttributed {
    pub fn parse(data: &str) -> Result<Self, ContractError> {
        const T: &str = "ConversionAttributed";
        let mut c: Self = from_json(T, data)?;
        if c.shares.is_empty() || c.shares.len() > MAX_SHARES {
            return Err(err(T, format!("needs 1 to {MAX_SHARES} partner shares")));
        }
        if c.touchpoints.len() > MAX_TOUCHPOINTS {
            return Err(err(T, format!("more than {MAX_TOUCHPOINTS} touchpoints")));
        }
        c.customer_country = present(c.customer_country.take());
        c.customer_email_hash = present(c.customer_email_hash.take());
        c.customer_domain = present(c.customer_domain.take()).map(|d| d.to_ascii_lowercase());
        if let Some(country) = &c.customer_country {
            bounded(T, "customer_country", country, 8)?;
        }
        if let Some(h) = &c.customer_email_hash {
            bounded(T, "customer_email_hash", h, MAX_HASH_CHARS)?;
        }
        if let Some(d) = &c.customer_domain {
            if !is_domain(d) {
                return Err(err(T, "customer_domain is not a domain name"));
            }
        }
        for tp in &mut c.touchpoints {
            bounded(T, "touchpoints.kind", &tp.kind, 32)?;
            tp.ip_hash = present(tp.ip_hash.take());
            if let Some(h) = &tp.ip_hash {
                bounded(T, "touchpoints.ip_hash", h, MAX_HASH_CHARS)?;
            }
        }
        Ok(c)
    }
}

/// A refund or a chargeback.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reversal {
    #[serde(alias = "refund_id", alias = "chargeback_id")]
    pub reversal_id: Uuid,
    pub conversion_id: Uuid,
    pub occurred_at: DateTime<Utc>,
}

impl Reversal {
    pub fn parse(event_type: &str, data: &str) -> Result<Self, ContractError> {
        from_json(event_type, data)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
struct TouchpointDetail {
    #[serde(default)]
    ip_hash: Option<String>,
}

/// `TouchpointRecorded` {touchpoint_id, kind, program_id, partner_id, ip_hash, occurred_at};
/// the hashed IP is read at the top level or, as attribution publishes it, in `detail`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TouchpointRecorded {
    pub touchpoint_id: Uuid,
    pub kind: String,
    pub program_id: Uuid,
    pub partner_id: Uuid,
    #[serde(default)]
    pub ip_hash: Option<String>,
    pub occurred_at: DateTime<Utc>,
    #[serde(default)]
    detail: Option<TouchpointDetail>,
}

impl TouchpointRecorded {
    pub fn parse(data: &str) -> Result<Self, ContractError> {
        const T: &str = "TouchpointRecorded";
        let mut t: Self = from_json(T, data)?;
        bounded(T, "kind", &t.kind, 32)?;
        let nested = t.detail.take().and_then(|d| present(d.ip_hash));
        t.ip_hash = present(t.ip_hash.take()).or(nested);
        if let Some(h) = &t.ip_hash {
            bounded(T, "ip_hash", h, MAX_HASH_CHARS)?;
        }
        Ok(t)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct RawApplied {
    partner_id: Uuid,
    program_id: Uuid,
    #[serde(default)]
    partner_type: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    country: Option<String>,
    #[serde(default)]
    signup_ip_hash: Option<String>,
}

/// `PartnerApplied`, with the email reduced to its hash and domain on arrival: compliance
/// never stores the address itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerApplied {
    pub partner_id: Uuid,
    pub program_id: Uuid,
    /// snake_case (`affiliate`, `technology`, `influencer`...), whichever way CRM spells it.
    pub partner_type: Option<String>,
    pub display_name: Option<String>,
    pub email_sha256: Option<String>,
    pub email_domain: Option<String>,
    pub country: Option<String>,
    pub signup_ip_hash: Option<String>,
}

/// The canonical form of an email both sides hash: trimmed, lower case, `+tag` dropped from
/// the local part. `None` when it is not an address.
pub fn canonical_email(email: &str) -> Option<(String, String)> {
    let email = email.trim().to_lowercase();
    let (local, domain) = email.rsplit_once('@')?;
    let local = local.split('+').next().unwrap_or_default();
    if local.is_empty() || !is_domain(domain) {
        return None;
    }
    Some((format!("{local}@{domain}"), domain.to_owned()))
}

/// Hex SHA-256 of the canonical email: the `customer_email_hash` attribution publishes.
pub fn email_sha256(canonical: &str) -> String {
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

impl PartnerApplied {
    pub fn parse(data: &str) -> Result<Self, ContractError> {
        const T: &str = "PartnerApplied";
        let raw: RawApplied = from_json(T, data)?;
        let partner_type = present(raw.partner_type).map(|t| {
            t.strip_prefix("PARTNER_TYPE_")
                .unwrap_or(&t)
                .to_ascii_lowercase()
        });
        let display_name = present(raw.display_name.map(|n| n.trim().to_owned()));
        for (field, value, max) in [
            ("partner_type", &partner_type, 64),
            ("display_name", &display_name, MAX_TEXT_CHARS),
            ("country", &raw.country, 8),
            ("signup_ip_hash", &raw.signup_ip_hash, MAX_HASH_CHARS),
        ] {
            if let Some(v) = value {
                bounded(T, field, v, max)?;
            }
        }
        let (email_sha256, email_domain) = match present(raw.email).as_deref().map(canonical_email)
        {
            Some(Some((canonical, domain))) => (Some(email_sha256(&canonical)), Some(domain)),
            _ => (None, None),
        };
        Ok(Self {
            partner_id: raw.partner_id,
            program_id: raw.program_id,
            partner_type,
            display_name,
            email_sha256,
            email_domain,
            country: present(raw.country),
            signup_ip_hash: present(raw.signup_ip_hash),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PartnerStatusChanged {
    pub partner_id: Uuid,
    pub status: String,
    #[serde(default)]
    pub reason: String,
}

impl PartnerStatusChanged {
    pub fn parse(data: &str) -> Result<Self, ContractError> {
        const T: &str = "PartnerStatusChanged";
        let mut s: Self = from_json(T, data)?;
        bounded(T, "status", &s.status, 64)?;
        bounded(T, "reason", &s.reason, MAX_TEXT_CHARS)?;
        s.status = s
            .status
            .strip_prefix("PARTNER_STATUS_")
            .unwrap_or(&s.status)
            .to_ascii_lowercase();
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_partner_email_is_kept_only_as_its_canonical_hash_and_domain() {
        let a = PartnerApplied::parse(
            r#"{"partner_id":"00000000-0000-0000-0000-000000000001",
                "program_id":"00000000-0000-0000-0000-000000000002",
                "partner_type":"PARTNER_TYPE_INFLUENCER","email":" Ana+promo@Acme.IO ",
                "display_name":"Ana Lima","country":"BR","applied_at":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(a.partner_type.as_deref(), Some("influencer"));
        assert_eq!(a.email_domain.as_deref(), Some("acme.io"));
        assert_eq!(a.email_sha256, Some(email_sha256("ana@acme.io")));
        assert_eq!(a.display_name.as_deref(), Some("Ana Lima"));
    }

    #[test]
    fn a_conversion_without_the_optional_fraud_fields_still_parses() {
        let c = ConversionAttributed::parse(
            r#"{"conversion_id":"00000000-0000-0000-0000-000000000001",
                "program_id":"00000000-0000-0000-0000-000000000002","kind":"CONVERSION_KIND_SALE",
                "customer_id":"c1","customer_country":"","occurred_at":"2026-01-15T10:00:00Z",
                "shares":[{"partner_id":"00000000-0000-0000-0000-00000000000a","weight":"1"}],
                "touchpoints":[{"touchpoint_id":"00000000-0000-0000-0000-0000000000b1",
                  "kind":"click","partner_id":"00000000-0000-0000-0000-00000000000a",
                  "occurred_at":"2026-01-15T09:00:00Z","credit":"1"}]}"#,
        )
        .unwrap();
        assert_eq!(c.customer_country, None);
        assert_eq!(c.touchpoints[0].ip_hash, None);
        assert!(ConversionAttributed::parse(r#"{"conversion_id":"x"}"#).is_err());
    }

    #[test]
    fn a_conversion_without_partners_breaks_the_contract() {
        let e = ConversionAttributed::parse(
            r#"{"conversion_id":"00000000-0000-0000-0000-000000000001",
                "program_id":"00000000-0000-0000-0000-000000000002",
                "occurred_at":"2026-01-15T10:00:00Z","shares":[]}"#,
        )
        .unwrap_err();
        assert!(e.reason.contains("shares"), "{e}");
    }

    #[test]
    fn a_touchpoint_carries_its_ip_hash_at_the_top_or_in_its_detail() {
        let nested = TouchpointRecorded::parse(
            r#"{"touchpoint_id":"00000000-0000-0000-0000-000000000001","kind":"click",
                "program_id":"00000000-0000-0000-0000-000000000002",
                "partner_id":"00000000-0000-0000-0000-000000000003",
                "visitor_id":"v1","occurred_at":"2026-01-15T09:00:00Z",
                "detail":{"tracking_link_id":"00000000-0000-0000-0000-000000000004",
                          "ip_hash":"abc","user_agent_hash":"def"}}"#,
        )
        .unwrap();
        assert_eq!(nested.ip_hash.as_deref(), Some("abc"));
        let top = TouchpointRecorded::parse(
            r#"{"touchpoint_id":"00000000-0000-0000-0000-000000000001","kind":"click",
                "program_id":"00000000-0000-0000-0000-000000000002",
                "partner_id":"00000000-0000-0000-0000-000000000003",
                "ip_hash":"xyz","occurred_at":"2026-01-15T09:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(top.ip_hash.as_deref(), Some("xyz"));
    }

    #[test]
    fn emails_canonicalise_before_hashing() {
        assert_eq!(
            canonical_email("Bob.Smith+x@Example.com"),
            Some(("bob.smith@example.com".into(), "example.com".into()))
        );
        assert_eq!(canonical_email("not-an-email"), None);
        assert_eq!(canonical_email("+tag@example.com"), None);
    }
}
