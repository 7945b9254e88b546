//! Attribution decides which partner earns for each conversion, under explicit, replayable rules
//! per program, and explains every decision. It records touchpoints (clicks, coupon redemptions,
//! server-to-server postbacks, impressions; approved deal registrations arrive from partner CRM),
//! decides conversions with a model (last click, first click, linear, time decay,
//! position-based) inside a lookback window, with precedence deal registration over coupon over
//! click, and locks a customer to the partners of their first sale for the relationship.
//!
//! It must never store a raw IP address or user agent (only salted hashes), read the clock or
//! any randomness in domain code (time arrives in commands), use floats for weights or money,
//! change a published decision (corrections are new conversions), or read another service's
//! streams: what it knows of partner CRM arrives as integration events (`consumer`) and is kept
//! in its own `crm-*` streams.
//!
//! Modules: `touchpoints`, `crm`, `settings`, `models` and `conversions` are pure deciders and
//! functions; `contract` is the published (and consumed) wire shape; `service` gathers a
//! command's inputs from the log and runs the deciders; `grpc` validates requests; `report`
//! is the read model for listings and performance; `consumer` takes in partner CRM's events.
//!
//! Streams: `conversion-<id>` (the published decision of one conversion), `relationship-<id>`
//! (a customer in a program: every decision and the customer lock, the consistency boundary of
//! decisions), `touchpoints-<id>` (one visitor's or customer's touchpoints), `postback-<id>`
//! (one sender transaction), `attribution-settings-<program>`, and `crm-partner-*`,
//! `crm-link-*`, `crm-coupon-*`, `crm-deal-*`, `crm-campaign-*` (the CRM projection).

#![forbid(unsafe_code)]

pub mod consumer;
pub mod contract;
pub mod conversions;
pub mod crm;
pub mod grpc;
pub mod models;
pub mod report;
pub mod service;
pub mod settings;
pub mod streams;
pub mod touchpoints;

pub use grpc::AttributionService;

pub const SERVICE: &str = "attribution";
/// The streams whose events are published (one per conversion).
pub const STREAM_PREFIX: &str = "conversion-";
/// Event types other services may consume (`proto/partnerledger/attribution/v1/events.proto`).
pub const INTEGRATION_EVENTS: &[&str] = &[
    "ConversionAttributed",
    "ConversionUnattributed",
    "ConversionRefunded",
    "ChargebackReceived",
    "SubscriptionCancelled",
];
/// Published from the `touchpoints-*` streams (the data is the recorded `Touchpoint`, with
/// salted IP and user-agent hashes, never the raw values).
pub const TOUCHPOINT_EVENTS: &[&str] = &["TouchpointRecorded"];
