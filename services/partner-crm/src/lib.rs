//! Partner CRM: who a partner is and what it may do — applications and their review, approval
//! (by a manager or automatically, gated by compliance in regulated programs), suspension and
//! termination; programs with tiers and what each tier may use; partner hierarchies; tracking
//! links and coupon codes; deal registrations and customer ownership; MDF budgets, requests and
//! claims; creator campaigns; partner profiles; co-marketing assets.
//!
//! It must never read another service's streams, read the clock or randomness in domain code,
//! use floats for money, or publish anything that is not first in its own log: what other
//! services need leaves as integration events (the events of its `partner-*` streams whose type
//! is in [`INTEGRATION_EVENTS`], relayed as `<prefix>.crm.<type>`), and what it needs of
//! compliance arrives the same way (`consumer`).
//!
//! Modules: `partner`, `program`, `hierarchy`, `links`, `coupons`, `deals`, `mdf`, `campaigns`
//! and `marketing` are pure deciders (one aggregate each); `streams` names their streams;
//! `wire` holds the contract's JSON conventions; `error` maps domain errors onto the shared
//! error model; `read` is the read model behind listings; `grpc` validates requests, reads the
//! clock at the edge and runs commands; `consumer` takes in compliance's approvals.
//!
//! Streams (all `partner-*`, so one relay route publishes every fact): `partner-<id>`,
//! `partner-program-<id>`, `partner-hierarchy-<program>`, `partner-link-<id>`,
//! `partner-code-<uuidv5(program, CODE)>`, `partner-dealref-<deal>`,
//! `partner-deals-<uuidv5(program, domain)>`, `partner-mdf-<uuidv5(partner, period)>`,
//! `partner-campaign-<id>`, `partner-asset-<id>`.

#![forbid(unsafe_code)]

pub mod campaigns;
pub mod consumer;
pub mod coupons;
pub mod deals;
pub mod error;
pub mod grpc;
pub mod hierarchy;
pub mod links;
pub mod marketing;
pub mod mdf;
pub mod partner;
pub mod program;
pub mod read;
pub mod streams;
pub mod wire;

pub use grpc::CrmService;

/// Short name used in idempotency records, subjects and logs.
pub const SERVICE: &str = "crm";
/// Streams this service owns (every one of them starts with it).
pub const STREAM_PREFIX: &str = "partner-";
/// Event types other services may consume (`proto/partnerledger/crm/v1/events.proto`),
/// published by the relay as `<prefix>.crm.<type>`.
pub const INTEGRATION_EVENTS: &[&str] = &[
    "PartnerApplied",
    "PartnerStatusChanged",
    "PartnerTierChanged",
    "PartnerParentChanged",
    "ProgramTiersChanged",
    "TrackingLinkIssued",
    "TrackingLinkDeactivated",
    "CouponIssued",
    "CouponDeactivated",
    "DealRegistrationApproved",
    "DealRegistrationRevoked",
    "CampaignCreated",
    "CampaignFeeCommitted",
    "CampaignBonusAwarded",
    "MdfReimbursementApproved",
];
