//! Commissions: commission plans, accruals, holds, maturity, clawbacks and payouts, and the
//! double-entry ledger that owns every partner's balance.
//!
//! `domain` is pure (deciders: no I/O, no clock); `consumer` turns other services' integration
//! events into commands with ids derived from the consumed event, so redelivery changes
//! nothing; `grpc` answers queries and runs payouts (`payout_runs`). Its streams: `account-*`,
//! `ledger-*` (partner books), `plan-*`, `assignment-*`, `fx-*`, `accrued-*`, `customer-*`,
//! `eligibility-*` (its projection of compliance's events), `network-*` (its projection of
//! partner CRM's hierarchy and tiers, per program: `network`), `payout-*` (payout runs) and
//! `waiting-fx` (accruals parked until their FX rate is recorded, `fx_wait`) and
//! `pending-reversals-*` (refunds and rejections that arrived before their accrual, `pending`). It
//! reads no other service's streams — what it knows of partners arrives over the bus. `visible`
//! wakes callers waiting for a conversion's accrual (`GetConversionAccrual` with `wait_ms`).

#![forbid(unsafe_code)]

pub mod accruals;
pub mod book;
pub mod book_codec;
pub mod consumer;
pub mod contract;
pub mod domain;
pub mod eligibility;
pub mod fx_wait;
pub mod grpc;
pub mod network;
pub mod payout;
pub mod payout_runs;
pub mod pending;
pub mod reports;
pub mod setup;
pub mod visible;

pub use grpc::CommissionsService;

pub const SERVICE: &str = "commissions";
pub const STREAM_PREFIX: &str = "account-";
/// Event types other services may consume.
pub const INTEGRATION_EVENTS: &[&str] = &["AccountOpened"];
