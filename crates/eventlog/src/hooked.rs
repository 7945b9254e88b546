//! A store that passes every call on to another, running hooks around appends and stream reads:
//! for tests and benches that need a log which fails, races, hangs or counts on cue, and for
//! wrappers of a store. Each hook names only what it changes; everything else reaches the inner
//! store untouched. It is exported (not behind a feature) because other crates' tests use it;
//! no service runs a hooked store.

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::LogError;
use crate::event::{AppendResult, ExpectedVersion, NewEvent, RecordedEvent, StreamAppend};
use crate::limits::Limits;
use crate::store::EventStore;

/// What a [`Hooked`] store runs around the calls it passes on. Every method defaults to doing
/// nothing.
#[async_trait]
pub trait StoreHooks: Send + Sync + std::fmt::Debug + 'static {
    /// Before an append reaches `inner`; an error is the append's answer, and nothing is
    /// appended. `inner` is there for a hook that writes first (another writer winning a race).
    async fn before_append(&self, _inner: &dyn EventStore, _stream: &str) -> Result<(), LogError> {
        Ok(())
    }

    /// After `inner` answered an append, before the answer is returned as it is.
    async fn after_append(&self, _stream: &str, _answer: &Result<AppendResult, LogError>) {}

    /// Before a stream read reaches `inner`.
    async fn before_read_stream(&self, _stream: &str) {}

    /// After `inner` answered a stream read, before the answer is returned as it is.
    async fn after_read_stream(
        &self,
        _stream: &str,
        _answer: &Result<Vec<RecordedEvent>, LogError>,
    ) {
    }
}

/// `inner` with `hooks` around its appends and stream reads (see the module docs).
#[derive(Debug, Default)]
pub struct Hooked<S, H> {
    pub inner: S,
    pub hooks: H,
}

#[async_trait]
impl<S: EventStore, H: StoreHooks> EventStore for Hooked<S, H> {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, LogError> {
        self.hooks.before_append(&self.inner, stream).await?;
        let answer = self.inner.append(stream, expected, events).await;
        self.hooks.after_append(stream, &answer).await;
        answer
    }

    /// The hooks run for each part's stream, in order, around the one call to `inner`; each
    /// part's answer is its own result, or the call's error.
    async fn append_streams(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, LogError> {
        let streams: Vec<String> = appends.iter().map(|a| a.stream.clone()).collect();
        for stream in &streams {
            self.hooks.before_append(&self.inner, stream).await?;
        }
        let answer = self.inner.append_streams(appends).await;
        for (i, stream) in streams.iter().enumerate() {
            let part = match &answer {
                Ok(results) => results
                    .get(i)
                    .copied()
                    .ok_or_else(|| LogError::Io("adapter answered fewer parts than sent".into())),
                Err(e) => Err(e.clone()),
            };
            self.hooks.after_append(stream, &part).await;
        }
        answer
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        self.hooks.before_read_stream(stream).await;
        let answer = self.inner.read_stream(stream, from_version, limit).await;
        self.hooks.after_read_stream(stream, &answer).await;
        answer
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        self.inner.read_all(from_position, limit).await
    }

    async fn stream_version(&self, stream: &str) -> Result<Option<u64>, LogError> {
        self.inner.stream_version(stream).await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.watch_head()
    }

    fn limits(&self) -> Limits {
        self.inner.limits()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code fails loudly

    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::event::{EventMetadata, NewEvent};
    use crate::MemoryLog;

    fn event(n: u128) -> NewEvent {
        NewEvent {
            id: uuid::Uuid::from_u128(n),
            event_type: "E".into(),
            schema_version: 1,
            data: bytes::Bytes::from_static(b"{}"),
            metadata: EventMetadata::at(chrono::DateTime::UNIX_EPOCH),
        }
    }

    /// Refuses appends to one stream and counts the reads of every stream.
    #[derive(Debug, Default)]
    struct RefuseAndCount {
        reads: AtomicU64,
    }

    #[async_trait]
    impl StoreHooks for RefuseAndCount {
        async fn before_append(&self, _: &dyn EventStore, stream: &str) -> Result<(), LogError> {
            if stream == "refused" {
                return Err(LogError::Io("disk full".into()));
            }
            Ok(())
        }

        async fn after_read_stream(&self, _: &str, _: &Result<Vec<RecordedEvent>, LogError>) {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_hook_refusing_an_append_writes_nothing_and_other_streams_pass_through() {
        let store = Hooked {
            inner: MemoryLog::default(),
            hooks: RefuseAndCount::default(),
        };
        let refused = store
            .append("refused", ExpectedVersion::Any, vec![event(1)])
            .await;
        assert_eq!(refused, Err(LogError::Io("disk full".into())));
        store
            .append("other", ExpectedVersion::Any, vec![event(2)])
            .await
            .unwrap();
        assert_eq!(store.read_stream("refused", 0, 10).await.unwrap(), vec![]);
        assert_eq!(store.read_stream("other", 0, 10).await.unwrap().len(), 1);
        assert_eq!(store.hooks.reads.load(Ordering::SeqCst), 2);
        assert_eq!(store.read_all(0, 10).await.unwrap().len(), 1);
    }
}

/// A hook that refuses every append to one stream while switched on, as a stream over the
/// log's limits is refused (invalid input: never accepted, so a consumer refuses the message for
/// good): a refusal whose cause a test can remove by switching it off.
#[derive(Debug)]
pub struct RefuseAppends {
    stream: String,
    on: std::sync::atomic::AtomicBool,
}

impl RefuseAppends {
    /// Refusing appends to `stream` from the start when `on`.
    pub fn new(stream: impl Into<String>, on: bool) -> Self {
        Self {
            stream: stream.into(),
            on: std::sync::atomic::AtomicBool::new(on),
        }
    }

    /// Switches the refusal on or off.
    pub fn set(&self, on: bool) {
        self.on.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait]
impl StoreHooks for RefuseAppends {
    async fn before_append(&self, _: &dyn EventStore, stream: &str) -> Result<(), LogError> {
        if stream == self.stream && self.on.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(LogError::LimitExceeded {
                what: "stream events",
                actual: 1,
                limit: 0,
            });
        }
        Ok(())
    }
}
