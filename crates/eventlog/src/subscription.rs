//! Catch-up subscriptions over any adapter: page through `read_all` from a position, then wait
//! on the committed head. Because `read_all` returns only committed events in position order and
//! the cursor moves past the last event returned, no event is skipped or delivered twice.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::watch;

use crate::error::LogError;
use crate::event::RecordedEvent;
use crate::store::EventStore;

/// Which events a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionFilter {
    All,
    /// Events of streams whose name starts with this prefix (e.g. `"partner-"`).
    StreamPrefix(String),
}

impl SubscriptionFilter {
    fn matches(&self, ev: &RecordedEvent) -> bool {
        match self {
            SubscriptionFilter::All => true,
            SubscriptionFilter::StreamPrefix(p) => ev.stream.starts_with(p.as_str()),
        }
    }
}

/// Pages of this many events are read at a time (also capped by the adapter's read limit).
const PAGE_EVENTS: usize = 1024;

pub struct Subscription {
    store: Arc<dyn EventStore>,
    next_position: u64,
    filter: SubscriptionFilter,
    buffer: VecDeque<RecordedEvent>,
    head: watch::Receiver<u64>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("next_position", &self.next_position)
            .field("filter", &self.filter)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl Subscription {
    pub fn new(store: Arc<dyn EventStore>, from_position: u64, filter: SubscriptionFilter) -> Self {
        let head = store.watch_head();
        Self {
            store,
            next_position: from_position,
            filter,
            buffer: VecDeque::new(),
            head,
        }
    }

    /// The position the subscription will read from next; persist it as a checkpoint.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// The next matching event, waiting for new appends when caught up. Cancel-safe: dropping
    /// the future loses nothing, the next call resumes where this one stopped.
    pub async fn next(&mut self) -> Result<RecordedEvent, LogError> {
        loop {
            if let Some(ev) = self.buffer.pop_front() {
                return Ok(ev);
            }
            self.fill().await?;
            if self.buffer.is_empty() {
                let from = self.next_position;
                self.head
                    .wait_for(|head| *head > from)
                    .await
                    .map_err(|_| LogError::Closed)?;
            }
        }
    }

    /// Everything matching that is committed now, without waiting; empty when caught up.
    pub async fn poll_batch(&mut self) -> Result<Vec<RecordedEvent>, LogError> {
        if self.buffer.is_empty() {
            self.fill().await?;
        }
        Ok(self.buffer.drain(..).collect())
    }

    async fn fill(&mut self) -> Result<(), LogError> {
        // Skip pages with no match without returning, but yield to the caller once a page of
        // matches is buffered.
        loop {
            let page = self.store.read_all(self.next_position, PAGE_EVENTS).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            self.next_position = last.position + 1;
            self.buffer
                .extend(page.into_iter().filter(|e| self.filter.matches(e)));
            if !self.buffer.is_empty() {
                return Ok(());
            }
        }
    }
}
