//! Compliance: verifications (KYC/KYB, tax forms, licences per jurisdiction, data-sharing
//! agreements, disclosure acknowledgements), payout eligibility and payout holds, compliance
//! approval for regulated programs, sanctions screening, and fraud rules over attribution's
//! events with their flags.
//!
//! It must never read the clock or any randomness in domain code (expiry is judged as of a
//! date given in the query or command), use floats (thresholds are exact decimals), store a
//! partner's email address (only its hash and domain), or read another service's streams: what
//! it knows of attribution and partner CRM arrives as integration events (`consumer`).
//!
//! Modules: `verification`, `partner`, `program`, `activity`, `signals` and `rules` are pure
//! deciders and functions; `sanctions` loads and matches the sanctions list; `contract` reads
//! the consumed events; `service` gathers a decision's inputs and appends; `grpc` validates
//! requests; `consumer` routes bus messages; `streams` names everything.
//!
//! Streams: `verification-<partner>` (the partner's compliance file, the only streams whose
//! events are published), `compliance-program-<id>`, `compliance-conversion-<id>`,
//! `compliance-activity-<partner>`, `compliance-clicks-<id>`, `compliance-identity-<id>`, and
//! its idempotency records.

#![forbid(unsafe_code)]

pub mod activity;
pub mod consumer;
pub mod contract;
pub mod grpc;
pub mod partner;
pub mod program;
pub mod rules;
pub mod sanctions;
pub mod screening;
pub mod service;
pub mod signals;
pub mod streams;
pub mod verification;

pub use grpc::ComplianceService;
pub use sanctions::SanctionsList;
pub use service::Compliance;

pub const SERVICE: &str = "compliance";
/// The streams whose events are published: partners' compliance files.
pub const STREAM_PREFIX: &str = streams::PARTNER_PREFIX;
/// Event types other services may consume (`proto/partnerledger/compliance/v1/events.proto`).
pub const INTEGRATION_EVENTS: &[&str] = partner::INTEGRATION_EVENTS;
