//! The conformance suite against the in-memory adapter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

mod conformance;

use std::sync::Arc;

use conformance::Harness;
use pl_eventlog::MemoryLog;

async fn memory() -> Option<Harness> {
    Some(Harness {
        store: Arc::new(MemoryLog::default()),
        guard: Box::new(()),
    })
}

conformance_suite!(memory());
