//! What every service shares at run time: the error model and its single mapping to gRPC codes,
//! the command executor (load, decide, append with optimistic concurrency) and its cached form,
//! idempotency keys, request validation helpers, the clock, the gRPC server (health,
//! reflection, limits, graceful shutdown), and the dead letters of a service's consumers.
//!
//! No domain rules live here, and nothing here reads the clock except [`SystemClock`].

#![forbid(unsafe_code)]

pub mod aggregate;
pub mod cache;
pub mod catch_panic;
pub mod clock;
pub mod dead_letters;
pub mod error;
pub mod idempotency;
pub mod request;
pub mod server;

pub use aggregate::{Aggregate, CommandMeta, DomainEvent, ExecuteError};
pub use cache::{
    set_cached_events, CachedBatch, StateCache, DEFAULT_CACHED_EVENTS, DEFAULT_CACHED_STREAMS,
};
pub use clock::{Clock, FixedClock, SystemClock};
pub use error::{ApiError, FieldViolation};
pub use idempotency::IdempotencyKey;
pub use request::{RequestMeta, Violations};
