//! Attribution: touchpoints (clicks, coupons, postbacks, deal registrations) and conversions,
//! and which partner earns for each conversion under explicit, replayable rules.
//!
//! `domain` is pure (deciders: no I/O, no clock); `grpc` validates requests, hashes personal
//! data before anything is stored (raw IPs and user agents are never persisted), reads the clock
//! at the edge and runs commands through `pl_runtime`. Writes only `click-*` streams (and its
//! idempotency records); reads no other service's streams.

#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;

pub use grpc::AttributionService;

pub const SERVICE: &str = "attribution";
pub const STREAM_PREFIX: &str = "click-";
/// Event types other services may consume.
pub const INTEGRATION_EVENTS: &[&str] = &["ClickRecorded"];
