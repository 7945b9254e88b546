//! Stream names and derived ids. Free-text keys (visitor ids, customer ids, coupon codes,
//! transaction ids) never appear in a stream name: they are hashed into a UUIDv5, so names stay
//! short and hold no personal data.

use uuid::Uuid;

/// Namespace of every id derived here: UUIDv5 of `urn:partner-ledger:attribution` (URL ns).
const NS: Uuid = Uuid::from_u128(0x5d3c_1f0e_8b2a_4c6d_9e7f_0a1b_2c3d_4e5f);

fn derive(parts: &[&str]) -> Uuid {
    Uuid::new_v5(&NS, parts.join("\u{1f}").as_bytes())
}

/// A conversion's id: its identity is (program, the sender's external id).
pub fn conversion_id(program_id: Uuid, external_id: &str) -> Uuid {
    derive(&["conversion", &program_id.to_string(), external_id])
}

pub fn conversion(conversion_id: Uuid) -> String {
    format!("conversion-{conversion_id}")
}

/// A customer's relationship with a program: the lock and every decision about the customer.
pub fn relationship(program_id: Uuid, customer_id: &str) -> String {
    let id = derive(&["relationship", &program_id.to_string(), customer_id]);
    format!("relationship-{id}")
}

pub const TOUCHPOINTS_PREFIX: &str = "touchpoints-";

pub fn visitor_touchpoints(visitor_id: &str) -> String {
    format!("{TOUCHPOINTS_PREFIX}{}", derive(&["visitor", visitor_id]))
}

pub fn customer_touchpoints(customer_id: &str) -> String {
    format!("{TOUCHPOINTS_PREFIX}{}", derive(&["customer", customer_id]))
}

/// The touchpoint id of a postback: its identity is (partner, the sender's transaction id).
pub fn postback_id(partner_id: Uuid, transaction_id: &str) -> Uuid {
    derive(&["postback", &partner_id.to_string(), transaction_id])
}

pub fn postback(postback_id: Uuid) -> String {
    format!("postback-{postback_id}")
}

pub fn settings(program_id: Uuid) -> String {
    format!("attribution-settings-{program_id}")
}

pub fn crm_partner(partner_id: Uuid) -> String {
    format!("crm-partner-{partner_id}")
}

pub fn crm_link(tracking_link_id: Uuid) -> String {
    format!("crm-link-{tracking_link_id}")
}

/// Codes compare upper-cased, and are unique per program.
pub fn crm_coupon(program_id: Uuid, code: &str) -> String {
    let id = derive(&["coupon", &program_id.to_string(), &code.to_uppercase()]);
    format!("crm-coupon-{id}")
}

pub fn crm_deal_by_customer(program_id: Uuid, customer_id: &str) -> String {
    let id = derive(&["deal-customer", &program_id.to_string(), customer_id]);
    format!("crm-deal-{id}")
}

/// Domains compare lower-cased.
pub fn crm_deal_by_domain(program_id: Uuid, domain: &str) -> String {
    let id = derive(&[
        "deal-domain",
        &program_id.to_string(),
        &domain.to_lowercase(),
    ]);
    format!("crm-deal-{id}")
}

pub fn crm_campaign(campaign_id: Uuid) -> String {
    format!("crm-campaign-{campaign_id}")
}
