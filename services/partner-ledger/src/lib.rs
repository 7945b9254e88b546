//! The one Partner Ledger binary: configuration, telemetry, and the wiring of services, event
//! store, relay and bus into a process that drains gracefully on SIGTERM.
//!
//! `up` runs all four services on one port with the embedded log and the in-process bus;
//! `serve <service>` runs one service with the store and bus chosen by configuration. No domain
//! logic lives here: it belongs in the service crates. `audit …` runs the audit commands of
//! `pl-audit` on a data directory or an EventStoreDB connection (`audit`).

#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod config;
pub mod credentials;
