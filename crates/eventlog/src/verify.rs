//! Hash-chain verification: recompute every event's hash from its fields and check it links to
//! the previous event of its stream. Works on any adapter and trusts nothing the store says
//! about hashes; it reports the first break precisely.

use std::collections::HashMap;
use std::fmt;

use crate::codec::Canonical;
use crate::error::LogError;
use crate::event::{EventHash, RecordedEvent, GENESIS_HASH};
use crate::store::EventStore;

/// What a walk of the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub events_checked: u64,
    pub streams_checked: u64,
    /// The first break in global order; `None` when every chain verifies.
    pub first_break: Option<ChainBreak>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub stream: String,
    pub version: u64,
    pub position: u64,
    pub kind: ChainBreakKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreakKind {
    /// The event's fields do not hash to the hash stored with it: the event was altered.
    HashMismatch {
        stored: EventHash,
        computed: EventHash,
    },
    /// The event does not point at its predecessor: an event was removed, inserted or altered.
    PrevHashMismatch {
        expected: EventHash,
        found: EventHash,
    },
    /// Stream versions must run 0, 1, 2, ... with no gap.
    VersionGap { expected: u64, found: u64 },
    /// Global positions must strictly increase.
    PositionNotIncreasing { previous: u64, found: u64 },
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream {} version {} (position {}): ",
            self.stream, self.version, self.position
        )?;
        match &self.kind {
            ChainBreakKind::HashMismatch { stored, computed } => {
                write!(f, "hash mismatch: stored {stored}, computed {computed}")
            }
            ChainBreakKind::PrevHashMismatch { expected, found } => {
                write!(f, "prev_hash mismatch: expected {expected}, found {found}")
            }
            ChainBreakKind::VersionGap { expected, found } => {
                write!(f, "version gap: expected {expected}, found {found}")
            }
            ChainBreakKind::PositionNotIncreasing { previous, found } => {
                write!(f, "position {found} does not follow {previous}")
            }
        }
    }
}

/// Tracks every stream's head while events are fed in global order.
#[derive(Debug, Default)]
struct ChainChecker {
    heads: HashMap<String, (u64, EventHash)>,
    last_position: Option<u64>,
    events: u64,
}

impl ChainChecker {
    fn check(&mut self, ev: &RecordedEvent) -> Result<Option<ChainBreak>, LogError> {
        let computed = Canonical::of(ev)?.hash();
        self.check_hashed(ev, computed)
    }

    /// `check` with the event's hash already recomputed (in parallel, by `verify`).
    fn check_hashed(
        &mut self,
        ev: &RecordedEvent,
        computed: EventHash,
    ) -> Result<Option<ChainBreak>, LogError> {
        self.events += 1;
        let brk = |kind| {
            Some(ChainBreak {
                stream: ev.stream.clone(),
                version: ev.version,
                position: ev.position,
                kind,
            })
        };
        if let Some(previous) = self.last_position {
            if ev.position <= previous {
                return Ok(brk(ChainBreakKind::PositionNotIncreasing {
                    previous,
                    found: ev.position,
                }));
            }
        }
        self.last_position = Some(ev.position);
        if computed != ev.hash {
            return Ok(brk(ChainBreakKind::HashMismatch {
                stored: ev.hash,
                computed,
            }));
        }
        let (expected_version, expected_prev) = self
            .heads
            .get(ev.stream.as_str())
            .copied()
            .unwrap_or((0, GENESIS_HASH));
        if ev.version != expected_version {
            return Ok(brk(ChainBreakKind::VersionGap {
                expected: expected_version,
                found: ev.version,
            }));
        }
        if ev.prev_hash != expected_prev {
            return Ok(brk(ChainBreakKind::PrevHashMismatch {
                expected: expected_prev,
                found: ev.prev_hash,
            }));
        }
        match self.heads.get_mut(ev.stream.as_str()) {
            Some(head) => *head = (ev.version + 1, ev.hash),
            None => {
                self.heads
                    .insert(ev.stream.clone(), (ev.version + 1, ev.hash));
            }
        }
        Ok(None)
    }

    fn report(self, first_break: Option<ChainBreak>) -> VerifyReport {
        VerifyReport {
            events_checked: self.events,
            streams_checked: self.heads.len() as u64,
            first_break,
        }
    }
}

const PAGE_EVENTS: usize = 4096;

/// Threads hashing one page at most.
const MAX_HASH_THREADS: usize = 16;

/// Recomputes the hashes of a page on every core (hashing is most of a verification); the
/// chain itself is then checked in log order. Each event keeps its own outcome, so an event that
/// cannot be encoded is reported only once every earlier one was checked (an earlier break
/// comes first).
fn hash_page(page: &[RecordedEvent]) -> Result<Vec<Result<EventHash, LogError>>, LogError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_HASH_THREADS);
    let chunk = page.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<Result<EventHash, LogError>>, LogError>> = std::thread::scope(|s| {
        let handles: Vec<_> = page
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|ev| Canonical::of(ev).map(|c| c.hash()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| LogError::Backend("a hashing thread panicked".into()))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(page.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// A page and its recomputed hashes.
type HashedPage = (
    Vec<RecordedEvent>,
    Result<Vec<Result<EventHash, LogError>>, LogError>,
);

/// Walks the whole log in global order. Each page is hashed on every core while the next one
/// is read.
pub async fn verify(store: &dyn EventStore) -> Result<VerifyReport, LogError> {
    verify_visiting(store, |_| {}).await
}

/// [`verify`], handing every event whose link in its chain checked out to `visit`, in log
/// order, so a caller can check more on the same walk (the audit's seals) instead of reading
/// the log again.
pub async fn verify_visiting(
    store: &dyn EventStore,
    mut visit: impl FnMut(&RecordedEvent) + Send,
) -> Result<VerifyReport, LogError> {
    let mut checker = ChainChecker::default();
    let mut hashing: Option<tokio::task::JoinHandle<HashedPage>> = None;
    let mut from = 0;
    loop {
        let page = store.read_all(from, PAGE_EVENTS).await;
        // The page before this one first: a break in it is the first, whatever the read found.
        if let Some(task) = hashing.take() {
            let (hashed, hashes) = task
                .await
                .map_err(|e| LogError::Backend(format!("hashing task: {e}")))?;
            for (ev, computed) in hashed.iter().zip(hashes?) {
                if let Some(b) = checker.check_hashed(ev, computed?)? {
                    return Ok(checker.report(Some(b)));
                }
                visit(ev);
            }
        }
        let page = page?;
        let Some(last) = page.last() else {
            return Ok(checker.report(None));
        };
        from = last.position + 1;
        // Hashing blocks: off the async workers, on every core.
        hashing = Some(tokio::task::spawn_blocking(move || {
            let hashes = hash_page(&page);
            (page, hashes)
        }));
    }
}

/// Walks one stream from version 0.
pub async fn verify_stream(store: &dyn EventStore, stream: &str) -> Result<VerifyReport, LogError> {
    let mut checker = ChainChecker::default();
    let mut from = 0;
    loop {
        let page = store.read_stream(stream, from, PAGE_EVENTS).await?;
        let Some(last) = page.last() else {
            return Ok(checker.report(None));
        };
        from = last.version + 1;
        for ev in &page {
            if let Some(b) = checker.check(ev)? {
                return Ok(checker.report(Some(b)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use async_trait::async_trait;
    use bytes::Bytes;
    use chrono::{TimeZone, Utc};
    use tokio::sync::watch;
    use uuid::Uuid;

    use super::*;
    use crate::event::{AppendResult, EventMetadata, ExpectedVersion, NewEvent};
    use crate::limits::Limits;
    use crate::memory::MemoryLog;

    /// Serves a fixed log, as a store that was tampered with would.
    #[derive(Debug)]
    struct Fixed(Vec<RecordedEvent>);

    #[async_trait]
    impl EventStore for Fixed {
        async fn append(
            &self,
            _: &str,
            _: ExpectedVersion,
            _: Vec<NewEvent>,
        ) -> Result<AppendResult, LogError> {
            Err(LogError::Backend("read-only".into()))
        }
        async fn read_stream(
            &self,
            _: &str,
            _: u64,
            _: usize,
        ) -> Result<Vec<RecordedEvent>, LogError> {
            Ok(Vec::new())
        }
        async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<RecordedEvent>, LogError> {
            Ok(self
                .0
                .iter()
                .filter(|e| e.position >= from)
                .take(limit)
                .cloned()
                .collect())
        }
        async fn stream_version(&self, _: &str) -> Result<Option<u64>, LogError> {
            Ok(None)
        }
        fn watch_head(&self) -> watch::Receiver<u64> {
            watch::Sender::new(0).subscribe()
        }
        fn limits(&self) -> Limits {
            Limits::default()
        }
    }

    fn event(n: u128) -> NewEvent {
        NewEvent {
            id: Uuid::from_u128(n),
            event_type: "Happened".into(),
            schema_version: 1,
            data: Bytes::from_static(b"{}"),
            metadata: EventMetadata::at(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()),
        }
    }

    #[tokio::test]
    async fn a_chain_break_is_reported_before_a_later_event_of_the_page_that_cannot_be_encoded() {
        let log = MemoryLog::default();
        log.append("s", ExpectedVersion::Any, (1..=4).map(event).collect())
            .await
            .unwrap();
        let mut events = log.read_all(0, 10).await.unwrap();
        // Version 1's data was altered: the first break.
        events[1].data = Bytes::from_static(b"{\"altered\":true}");
        // Version 3 has a business time the canonical encoding cannot hold.
        events[3].metadata.occurred_at = Utc.with_ymd_and_hms(2300, 1, 1, 0, 0, 0).unwrap();

        let report = verify(&Fixed(events)).await.unwrap();

        let first = report.first_break.expect("a break");
        assert_eq!((first.stream.as_str(), first.version), ("s", 1));
        assert!(matches!(first.kind, ChainBreakKind::HashMismatch { .. }));
    }
}
