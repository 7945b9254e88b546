//! The conformance suite against the in-memory adapter.

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
