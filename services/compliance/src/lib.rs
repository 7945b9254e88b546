//! Compliance: KYC/KYB and tax-form verifications, licences for regulated programs, sanctions
//! screening, fraud rules and payout holds.
//!
//! `domain` is pure (deciders: no I/O, no clock — expiry is judged as of a date given in the
//! command or query); `grpc` validates requests and runs commands through `pl_runtime`. Writes
//! only `verification-*` streams (and its idempotency records); reads no other service's streams.

#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;

pub use grpc::ComplianceService;

pub const SERVICE: &str = "compliance";
pub const STREAM_PREFIX: &str = "verification-";
/// Event types other services may consume.
pub const INTEGRATION_EVENTS: &[&str] = &["VerificationRecorded"];
