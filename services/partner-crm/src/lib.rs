//! Partner CRM: who a partner is and what they may do — applications, approval, suspension,
//! programs and tiers, tracking assets, deal registrations, MDF.
//!
//! `domain` is pure (deciders: no I/O, no clock); `grpc` validates requests, reads the clock at
//! the edge and runs commands through `pl_runtime`. This service writes only `partner-*` (and its
//! idempotency records) and reads no other service's streams.

#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;

pub use grpc::CrmService;

/// Short name used in idempotency records, subjects and logs.
pub const SERVICE: &str = "crm";
/// Streams this service owns.
pub const STREAM_PREFIX: &str = "partner-";
/// Event types other services may consume, published by the relay as `<prefix>.crm.<type>`.
pub const INTEGRATION_EVENTS: &[&str] = &["PartnerApplied"];
