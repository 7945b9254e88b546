//! Aggregate states kept in memory between commands, so a command on a long stream costs one
//! catch-up read instead of a replay of the whole stream.
//!
//! The log stays the only truth: every use first reads the stream from the cached version on
//! (normally an empty read), so events appended by another process or by code that bypasses
//! the cache are folded in before deciding, and the append still states the exact version it
//! decided on. Commands on one stream are serialised in this process (a per-stream async lock),
//! so they do not race each other into optimistic-concurrency retries.
//!
//! Use it for aggregates whose decider is idempotent by its own keys (an accrual per
//! conversion, a reversal per refund): a retried command whose events were folded into the
//! cached state earlier is answered by the decider finding nothing to do, where [`execute`]
//! would find its events by id while replaying.
//!
//! [`execute`]: crate::aggregate::execute

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use foldhash::fast::RandomState;

use pl_eventlog::{EventStore, ExpectedVersion};

use crate::aggregate::{
    decode_event, lost_to_twin, to_new_events, Aggregate, CommandMeta, ExecuteError,
    MAX_CONFLICT_RETRIES,
};

/// Events read per page while catching a cached state up.
const CATCH_UP_PAGE_EVENTS: usize = 1024;
/// Default number of streams whose state is kept.
pub const DEFAULT_CACHED_STREAMS: usize = 16_384;
/// Default number of events folded into the kept states, all streams together. A state grows
/// with its stream (a partner's book keeps every accrual it holds, lines and formulas
/// included), so a bound in streams alone is no bound in bytes: 16,384 books of 10,000
/// accruals each would be 160M events. Events are the measure because they are what a state
/// is built from and what reloading one costs. A book held about 1.5 KB per event folded
/// (commissions bench, 2026-12-05), so this default holds about 300 MB of books: inside the
/// 512 MiB the production manifests give a service.
pub const DEFAULT_CACHED_EVENTS: u64 = 200_000;

/// The event budget of caches made by [`StateCache::new`] (and `default`) from now on.
static CACHED_EVENTS: AtomicU64 = AtomicU64::new(DEFAULT_CACHED_EVENTS);

/// Sets the event budget of every state cache [`StateCache::new`] makes after this call, each
/// cache its own budget: the binary's `--cache-events`, set once at startup before any
/// service is built, so that the services' caches need no configuration threaded through
/// their constructors. Caches made with [`StateCache::with_limits`] are not affected.
pub fn set_cached_events(events: u64) {
    CACHED_EVENTS.store(events, Ordering::Relaxed);
}

struct Slot<S> {
    state: S,
    /// Version of the last event folded into `state`; `None` before the first.
    version: Option<u64>,
    /// Set while `state` may hold decided events not yet in the log (a batch between its
    /// decisions and its appends). Still set at the next use only if that batch never finished
    /// (its future was dropped: a timeout, a sibling's failure in a join): the next use then
    /// reloads the stream from the log instead of trusting `state`.
    tainted: bool,
}

impl<S: Default> Slot<S> {
    /// Drops a state a dropped batch may have left ahead of the log.
    fn untaint(&mut self) {
        if self.tainted {
            self.state = S::default();
            self.version = None;
            self.tainted = false;
        }
    }
}

struct Entry<S> {
    slot: Arc<tokio::sync::Mutex<Slot<S>>>,
    last_used: u64,
    /// Events folded into the state when it was last used (its version + 1).
    events: u64,
}

struct Map<S> {
    /// foldhash, not SipHash: every use looks its stream up twice (its slot, then its weight),
    /// five times per conversion in attribution's CRM cache. Seeded per map.
    entries: HashMap<String, Entry<S>, RandomState>,
    tick: u64,
    /// The sum of the entries' `events`.
    events: u64,
}

impl<S> Map<S> {
    /// Drops the least recently used entries until `enough` holds, never one in use: a task
    /// holds its slot (the stream being weighed among them), and dropping it would give the
    /// next caller a second slot for the stream, which replays it again and races the first
    /// one's appends instead of queueing behind them.
    fn evict(&mut self, enough: impl Fn(&Self) -> bool) {
        if enough(self) {
            return;
        }
        let mut by_age: Vec<(u64, String)> = self
            .entries
            .iter()
            .filter(|(_, e)| Arc::strong_count(&e.slot) == 1)
            .map(|(k, e)| (e.last_used, k.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, key) in by_age {
            if enough(self) {
                break;
            }
            if let Some(gone) = self.entries.remove(&key) {
                self.events -= gone.events;
            }
        }
        debug_assert_eq!(
            self.events,
            self.entries.values().map(|e| e.events).sum::<u64>()
        );
    }
}

/// A stream's slot locked for one use. Weighs the stream when released, however the use ends
/// (an error, or its future dropped by a timeout part-way through a long replay), so the
/// cache's count never lags behind what the state holds.
struct Held<'a, A: Aggregate> {
    cache: &'a StateCache<A>,
    stream: &'a str,
    cell: Arc<tokio::sync::Mutex<Slot<A::State>>>,
    slot: tokio::sync::OwnedMutexGuard<Slot<A::State>>,
}

impl<A: Aggregate> Drop for Held<'_, A> {
    fn drop(&mut self) {
        // Still holding the slot: the stream counts as in use and is not dropped for its size.
        self.cache.weigh(self.stream, &self.cell, self.slot.version);
    }
}

impl<A: Aggregate> std::ops::Deref for Held<'_, A> {
    type Target = Slot<A::State>;
    fn deref(&self) -> &Self::Target {
        &self.slot
    }
}

impl<A: Aggregate> std::ops::DerefMut for Held<'_, A> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.slot
    }
}

/// Bounded map from stream name to the aggregate state as of a known version: at most
/// `capacity` streams and at most `max_events` events folded into the states kept, either
/// passed only by streams in use.
pub struct StateCache<A: Aggregate> {
    map: Mutex<Map<A::State>>,
    capacity: usize,
    max_events: u64,
}

impl<A: Aggregate> std::fmt::Debug for StateCache<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCache")
            .field("capacity", &self.capacity)
            .field("max_events", &self.max_events)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> Default for StateCache<A> {
    fn default() -> Self {
        Self::new(DEFAULT_CACHED_STREAMS)
    }
}

/// What a cached command did: the caller's view of the state after it, the events it
/// appended (empty when the decider found nothing to do) and the stream's version.
#[derive(Debug)]
pub struct CachedExecuted<R, E> {
    pub view: R,
    pub events: Vec<E>,
    pub version: Option<u64>,
}

impl<A: Aggregate> StateCache<A> {
    /// Keeps at most `capacity` streams (at least one) and the process's event budget
    /// ([`DEFAULT_CACHED_EVENTS`] unless [`set_cached_events`] changed it); see
    /// [`with_limits`](Self::with_limits).
    pub fn new(capacity: usize) -> Self {
        Self::with_limits(capacity, CACHED_EVENTS.load(Ordering::Relaxed))
    }

    /// Keeps at most `streams` streams (at least one): beyond it the least recently used
    /// tenth is dropped. And at most `events` events folded into the kept states: when a use
    /// leaves more, the least recently used other streams are dropped until a tenth of the
    /// budget is free. Streams in use are never dropped (both bounds may be passed by as many
    /// streams as tasks are using), so one stream longer than the budget is still served from
    /// memory (alone). A dropped stream is reloaded from the log when next used. `u64::MAX`
    /// events turns the second bound off, for states bounded by their own rules (a window of
    /// recent clicks) whose streams' lengths say nothing of their size.
    pub fn with_limits(streams: usize, events: u64) -> Self {
        Self {
            map: Mutex::new(Map {
                entries: HashMap::default(),
                tick: 0,
                events: 0,
            }),
            capacity: streams.max(1),
            max_events: events,
        }
    }

    /// Streams currently cached.
    pub fn len(&self) -> usize {
        self.lock_map().entries.len()
    }

    /// Events folded into the cached states, all streams together, as of each one's last use.
    pub fn cached_events(&self) -> u64 {
        self.lock_map().events
    }

    /// `stream`'s slot, locked for one use.
    async fn hold<'a>(&'a self, stream: &'a str) -> Held<'a, A> {
        let cell = self.slot(stream);
        let slot = Arc::clone(&cell).lock_owned().await;
        Held {
            cache: self,
            stream,
            cell,
            slot,
        }
    }

    /// Records the size of `stream`'s state after a use (if `slot` is still the cached one)
    /// and drops other streams when the cache holds more events than its budget.
    fn weigh(
        &self,
        stream: &str,
        slot: &Arc<tokio::sync::Mutex<Slot<A::State>>>,
        version: Option<u64>,
    ) {
        let events = version.map_or(0, |v| v + 1);
        let mut map = self.lock_map();
        let Some(entry) = map.entries.get_mut(stream) else {
            return;
        };
        if !Arc::ptr_eq(&entry.slot, slot) {
            return;
        }
        let before = std::mem::replace(&mut entry.events, events);
        map.events = map.events - before + events;
        if map.events > self.max_events {
            let target = self.max_events - self.max_events / 10;
            map.evict(|m| m.events <= target);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock_map(&self) -> std::sync::MutexGuard<'_, Map<A::State>> {
        // A panic while holding this lock can only come from HashMap internals; the map is
        // still a valid cache afterwards (entries are reloaded from the log when missing).
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slot(&self, stream: &str) -> Arc<tokio::sync::Mutex<Slot<A::State>>> {
        let mut map = self.lock_map();
        map.tick += 1;
        let tick = map.tick;
        if let Some(entry) = map.entries.get_mut(stream) {
            entry.last_used = tick;
            return Arc::clone(&entry.slot);
        }
        if map.entries.len() >= self.capacity {
            // Amortised: one sort per tenth of the capacity inserted.
            let target = self.capacity - (self.capacity / 10).max(1);
            map.evict(|m| m.entries.len() <= target);
        }
        let slot = Arc::new(tokio::sync::Mutex::new(Slot {
            state: A::State::default(),
            version: None,
            tainted: false,
        }));
        map.entries.insert(
            stream.to_owned(),
            Entry {
                slot: Arc::clone(&slot),
                last_used: tick,
                events: 0,
            },
        );
        slot
    }

    /// Reads the stream's state as of its last event and returns `view` of it.
    pub async fn read<R>(
        &self,
        store: &dyn EventStore,
        stream: &str,
        view: impl FnOnce(&A::State) -> R,
    ) -> Result<(R, Option<u64>), ExecuteError<A::Error>> {
        let mut slot = self.hold(stream).await;
        slot.untaint();
        catch_up::<A>(store, stream, &mut slot, None).await?;
        Ok((view(&slot.state), slot.version))
    }

    /// Catch up, decide, append at the decided version; on a lost race (another process wrote
    /// to the stream), catch up and decide again. `view` sees the state after the command.
    pub async fn execute<R>(
        &self,
        store: &dyn EventStore,
        stream: &str,
        command: &A::Command,
        meta: &CommandMeta,
        view: impl FnOnce(&A::State) -> R,
    ) -> Result<CachedExecuted<R, A::Event>, ExecuteError<A::Error>> {
        let mut slot = self.hold(stream).await;
        slot.untaint();
        execute_on::<A, R>(store, stream, &mut slot, command, meta, view).await
    }
}

/// [`StateCache::execute`] on its locked slot.
async fn execute_on<A: Aggregate, R>(
    store: &dyn EventStore,
    stream: &str,
    slot: &mut Slot<A::State>,
    command: &A::Command,
    meta: &CommandMeta,
    view: impl FnOnce(&A::State) -> R,
) -> Result<CachedExecuted<R, A::Event>, ExecuteError<A::Error>> {
    // Once only: a second id conflict is no twin's doing, and is the caller's answer.
    let mut twin_seen = false;
    for _ in 0..=MAX_CONFLICT_RETRIES {
        let ours = catch_up::<A>(store, stream, slot, Some(meta)).await?;
        if !ours.is_empty() {
            // This command's own events arrived with the catch-up (appended by an earlier
            // attempt whose answer was lost): answer with them, never decide twice.
            return Ok(CachedExecuted {
                view: view(&slot.state),
                events: ours,
                version: slot.version,
            });
        }
        let events = A::decide(&slot.state, command).map_err(ExecuteError::Domain)?;
        if events.is_empty() {
            return Ok(CachedExecuted {
                view: view(&slot.state),
                events,
                version: slot.version,
            });
        }
        let new_events = to_new_events(&events, meta)?;
        let expected = slot
            .version
            .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let ids: Vec<uuid::Uuid> = new_events.iter().map(|e| e.id).collect();
        match store.append(stream, expected, new_events).await {
            Ok(result) => {
                let state = std::mem::take(&mut slot.state);
                slot.state = events.iter().fold(state, A::evolve);
                slot.version = Some(result.last_version);
                return Ok(CachedExecuted {
                    view: view(&slot.state),
                    events,
                    version: slot.version,
                });
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(stream, "append lost a concurrency race; catching up");
            }
            Err(e) if !twin_seen && lost_to_twin(&e, &ids) => {
                twin_seen = true;
                tracing::debug!(
                    stream,
                    "a twin of this command stored it first; catching up"
                );
            }
            Err(e) => return Err(ExecuteError::Store(e)),
        }
    }
    Err(ExecuteError::Conflict {
        stream: stream.to_owned(),
        retries: MAX_CONFLICT_RETRIES,
    })
}

/// What [`StateCache::execute_many`] did: the caller's view of the state after all the
/// commands, one per command in order, and how many events were appended.
#[derive(Debug)]
pub struct CachedBatch<R> {
    pub views: Vec<R>,
    pub appended: usize,
    pub version: Option<u64>,
}

impl<A: Aggregate> StateCache<A> {
    /// Several commands on one stream, decided one after another on the state each leaves, as
    /// [`execute`](Self::execute) would one at a time, and appended together: one append per
    /// the store's limits on events and bytes instead of one per command (on a busy stream the
    /// append, its sync and its wake-ups are most of a command's cost). `views` are taken after
    /// the last command. Each command's events get the ids of its own `CommandMeta`.
    ///
    /// All or nothing for the caller: on any failure (a domain error, a lost race, the store),
    /// and when this future is dropped before it finished, the cached state is dropped, so the
    /// next use replays the stream from the log and a retry finds whatever part of the batch
    /// was appended (the decider is idempotent by its own keys, as the cache requires).
    pub async fn execute_many<R>(
        &self,
        store: &dyn EventStore,
        stream: &str,
        commands: &[(A::Command, CommandMeta)],
        view: impl Fn(&A::State, usize) -> R,
    ) -> Result<CachedBatch<R>, ExecuteError<A::Error>> {
        self.run_many(
            store,
            stream,
            commands,
            |_, _| {},
            |state| (0..commands.len()).map(|i| view(state, i)).collect(),
        )
        .await
    }

    /// [`execute_many`](Self::execute_many) with the `view` of each command taken right after
    /// it, on the state it and the commands before it leave: what one call of
    /// [`execute`](Self::execute) per command would have seen (a counter at each step), with
    /// one append for them all. The views are those of the attempt that landed. When part of
    /// an earlier attempt landed (a batch over the store's append limits whose later append
    /// failed), that part is in the state the retry starts from, so an early command's view
    /// can include a later command's events; a view that must not, reads what the command's
    /// own event recorded (as compliance's refund windows do).
    pub async fn execute_each<R>(
        &self,
        store: &dyn EventStore,
        stream: &str,
        commands: &[(A::Command, CommandMeta)],
        mut view: impl FnMut(&A::State, usize) -> R,
    ) -> Result<CachedBatch<R>, ExecuteError<A::Error>> {
        let mut views = Vec::with_capacity(commands.len());
        let done = self
            .run_many(
                store,
                stream,
                commands,
                |state, i| {
                    // After a lost race every command is decided again, from the first.
                    views.truncate(i);
                    views.push(view(state, i));
                },
                |_| Vec::new(),
            )
            .await?;
        Ok(CachedBatch { views, ..done })
    }

    async fn run_many<R>(
        &self,
        store: &dyn EventStore,
        stream: &str,
        commands: &[(A::Command, CommandMeta)],
        after_each: impl FnMut(&A::State, usize),
        views: impl FnOnce(&A::State) -> Vec<R>,
    ) -> Result<CachedBatch<R>, ExecuteError<A::Error>> {
        let mut slot = self.hold(stream).await;
        run_many_on::<A, R>(store, stream, &mut slot, commands, after_each, views).await
    }
}

/// [`StateCache::run_many`] on its locked slot.
async fn run_many_on<A: Aggregate, R>(
    store: &dyn EventStore,
    stream: &str,
    slot: &mut Slot<A::State>,
    commands: &[(A::Command, CommandMeta)],
    mut after_each: impl FnMut(&A::State, usize),
    views: impl FnOnce(&A::State) -> Vec<R>,
) -> Result<CachedBatch<R>, ExecuteError<A::Error>> {
    let mut last_error = None;
    for _ in 0..=MAX_CONFLICT_RETRIES {
        slot.untaint();
        match decide_and_append::<A>(store, stream, slot, commands, &mut after_each).await {
            Ok(appended) => {
                return Ok(CachedBatch {
                    views: views(&slot.state),
                    appended,
                    version: slot.version,
                })
            }
            Err(e) => {
                // The state may hold decided events that never reached the log.
                slot.untaint();
                match e {
                    ExecuteError::Store(e) if e.is_conflict() => {
                        tracing::debug!(stream, "batch append lost a concurrency race; reloading");
                        last_error = Some(e);
                    }
                    other => return Err(other),
                }
            }
        }
    }
    tracing::debug!(stream, error = ?last_error, "batch append kept losing races");
    Err(ExecuteError::Conflict {
        stream: stream.to_owned(),
        retries: MAX_CONFLICT_RETRIES,
    })
}

/// Catches `slot` up, decides every command on the state the ones before it leave (folding
/// their events into `slot.state` as it goes) and appends the events in as few appends as the
/// store's limits allow. Returns the events appended. On error `slot` is left inconsistent
/// with the log; the caller drops it.
async fn decide_and_append<A: Aggregate>(
    store: &dyn EventStore,
    stream: &str,
    slot: &mut Slot<A::State>,
    commands: &[(A::Command, CommandMeta)],
    after_each: &mut impl FnMut(&A::State, usize),
) -> Result<usize, ExecuteError<A::Error>> {
    catch_up::<A>(store, stream, slot, None).await?;
    // From the first decision until the last append lands, `state` may be ahead of the log.
    slot.tainted = true;
    let mut new_events = Vec::new();
    for (i, (command, meta)) in commands.iter().enumerate() {
        let events = A::decide(&slot.state, command).map_err(ExecuteError::Domain)?;
        new_events.extend(to_new_events(&events, meta)?);
        let state = std::mem::take(&mut slot.state);
        slot.state = events.iter().fold(state, A::evolve);
        after_each(&slot.state, i);
    }
    let appended = new_events.len();
    let limits = store.limits();
    let mut rest = new_events.into_iter().peekable();
    while rest.peek().is_some() {
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0_usize;
        while let Some(next) = rest.peek() {
            let bytes = next.encoded_bytes(stream);
            let full = chunk.len() == limits.max_events_per_append
                || (!chunk.is_empty() && chunk_bytes + bytes > limits.max_append_bytes);
            if full {
                break;
            }
            chunk_bytes += bytes;
            chunk.extend(rest.next());
        }
        let expected = slot
            .version
            .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let result = store
            .append(stream, expected, chunk)
            .await
            .map_err(ExecuteError::Store)?;
        slot.version = Some(result.last_version);
    }
    slot.tainted = false;
    Ok(appended)
}

/// Folds the events after `slot.version` into `slot.state`, one by one, so the slot stays
/// consistent with its version even when a read or a decode fails half-way. Returns the
/// events among them that `meta` appended.
async fn catch_up<A: Aggregate>(
    store: &dyn EventStore,
    stream: &str,
    slot: &mut Slot<A::State>,
    meta: Option<&CommandMeta>,
) -> Result<Vec<A::Event>, ExecuteError<A::Error>> {
    let mut ours: Vec<A::Event> = Vec::new();
    loop {
        let from = slot.version.map_or(0, |v| v + 1);
        let page = store
            .read_stream(stream, from, CATCH_UP_PAGE_EVENTS)
            .await
            .map_err(ExecuteError::Store)?;
        if page.is_empty() {
            return Ok(ours);
        }
        for recorded in &page {
            let event = decode_event::<A::Event>(recorded).map_err(ExecuteError::Decode)?;
            if let Some(meta) = meta {
                if recorded.id == meta.event_id(ours.len()) {
                    ours.push(decode_event::<A::Event>(recorded).map_err(ExecuteError::Decode)?);
                }
            }
            let state = std::mem::take(&mut slot.state);
            slot.state = A::evolve(state, &event);
            slot.version = Some(recorded.version);
        }
        if page.len() < CATCH_UP_PAGE_EVENTS {
            return Ok(ours);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::DateTime;
    use pl_eventlog::{Hooked, Limits, LogError, MemoryLog, StoreHooks};
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    use super::*;
    use crate::aggregate::{execute, load, DomainEvent};

    /// Adds each distinct key once (idempotent by its key, as the cache requires).
    struct Keys;

    #[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
    #[serde(tag = "type", content = "data")]
    enum KeyEvent {
        Added { key: u32 },
    }
    impl DomainEvent for KeyEvent {}

    #[derive(Debug, thiserror::Error)]
    #[error("too many keys")]
    struct TooMany;

    impl Aggregate for Keys {
        type State = Vec<u32>;
        type Command = u32;
        type Event = KeyEvent;
        type Error = TooMany;

        fn decide(state: &Vec<u32>, key: &u32) -> Result<Vec<KeyEvent>, TooMany> {
            if state.contains(key) {
                return Ok(vec![]);
            }
            if state.len() >= 5 {
                return Err(TooMany);
            }
            Ok(vec![KeyEvent::Added { key: *key }])
        }

        fn evolve(mut state: Vec<u32>, event: &KeyEvent) -> Vec<u32> {
            match event {
                KeyEvent::Added { key } => state.push(*key),
            }
            state
        }
    }

    fn meta(seed: u128) -> CommandMeta {
        CommandMeta {
            id_seed: Uuid::from_u128(seed),
            occurred_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
            correlation_id: None,
            causation_id: None,
            trace_context: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn cached_commands_see_events_appended_behind_the_cache() {
        let store = MemoryLog::default();
        let cache = StateCache::<Keys>::default();
        cache
            .execute(&store, "k", &1, &meta(1), |_| ())
            .await
            .unwrap();
        // Another process (here: the uncached executor) appends behind the cache's back.
        execute::<Keys>(&store, "k", &2, &meta(2)).await.unwrap();
        let done = cache
            .execute(&store, "k", &3, &meta(3), Clone::clone)
            .await
            .unwrap();
        assert_eq!(done.view, vec![1, 2, 3]);
        assert_eq!(done.version, Some(2));
        assert_eq!(
            load::<Keys>(&store, "k").await.unwrap().state,
            vec![1, 2, 3]
        );
    }

    #[tokio::test]
    async fn a_repeated_command_appends_nothing_the_second_time() {
        let store = MemoryLog::default();
        let cache = StateCache::<Keys>::default();
        let first = cache
            .execute(&store, "k", &7, &meta(1), |_| ())
            .await
            .unwrap();
        assert_eq!(first.events.len(), 1);
        let again = cache
            .execute(&store, "k", &7, &meta(1), Clone::clone)
            .await
            .unwrap();
        assert!(again.events.is_empty());
        assert_eq!(again.view, vec![7]);
        assert_eq!(store.stream_version("k").await.unwrap(), Some(0));
    }

    #[tokio::test]
    async fn a_domain_error_leaves_the_cached_state_and_the_log_unchanged() {
        let store = MemoryLog::default();
        let cache = StateCache::<Keys>::default();
        for key in 0..5 {
            cache
                .execute(&store, "k", &key, &meta(u128::from(key)), |_| ())
                .await
                .unwrap();
        }
        let err = cache
            .execute(&store, "k", &9, &meta(9), |_| ())
            .await
            .unwrap_err();
        assert!(matches!(err, ExecuteError::Domain(TooMany)));
        let (view, version) = cache.read(&store, "k", Clone::clone).await.unwrap();
        assert_eq!((view, version), (vec![0, 1, 2, 3, 4], Some(4)));
    }

    #[tokio::test]
    async fn an_evicted_stream_is_reloaded_from_the_log() {
        let store = MemoryLog::default();
        let cache = StateCache::<Keys>::new(2);
        for (i, stream) in ["a", "b", "c", "d"].into_iter().enumerate() {
            cache
                .execute(&store, stream, &1, &meta(i as u128), |_| ())
                .await
                .unwrap();
        }
        assert!(cache.len() <= 2);
        let (view, _) = cache.read(&store, "a", Clone::clone).await.unwrap();
        assert_eq!(view, vec![1]);
    }

    /// Counts the events each stream read returned, per stream: a stream replayed from the
    /// log shows as its whole length read again.
    #[derive(Debug, Default)]
    struct Replays(std::sync::Mutex<BTreeMap<String, usize>>);

    #[async_trait::async_trait]
    impl StoreHooks for Replays {
        async fn after_read_stream(
            &self,
            stream: &str,
            answer: &Result<Vec<pl_eventlog::RecordedEvent>, LogError>,
        ) {
            let read = answer.as_ref().map_or(0, Vec::len);
            *self.0.lock().unwrap().entry(stream.to_owned()).or_default() += read;
        }
    }

    impl Replays {
        fn take(&self) -> BTreeMap<String, usize> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// `keys` added to `stream` one command at a time through `cache`.
    async fn add(cache: &StateCache<Keys>, store: &dyn EventStore, stream: &str, keys: &[u32]) {
        for key in keys {
            let seed = (u128::from(stream.as_bytes()[0]) << 32) | u128::from(*key);
            cache
                .execute(store, stream, key, &meta(seed), |_| ())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_cache_over_its_event_budget_drops_the_least_recently_used_streams() {
        let store = Hooked::<MemoryLog, Replays>::default();
        let cache = StateCache::<Keys>::with_limits(100, 10);
        add(&cache, &store, "a", &[0, 1, 2, 3]).await;
        add(&cache, &store, "b", &[0, 1, 2, 3]).await;
        assert_eq!((cache.len(), cache.cached_events()), (2, 8));
        // "c" brings the cache to 12 events: "a", used longest ago, is dropped.
        add(&cache, &store, "c", &[0, 1, 2, 3]).await;
        assert_eq!((cache.len(), cache.cached_events()), (2, 8));
        store.hooks.take();
        let (b, _) = cache.read(&store, "b", Clone::clone).await.unwrap();
        let (a, _) = cache.read(&store, "a", Clone::clone).await.unwrap();
        assert_eq!((a, b), (vec![0, 1, 2, 3], vec![0, 1, 2, 3]));
        // "b" was still cached (nothing new to read); "a" was replayed whole, and reading it
        // dropped "c", now the least recently used.
        let replayed = store.hooks.take();
        assert_eq!(replayed.get("b"), Some(&0));
        assert_eq!(replayed.get("a"), Some(&4));
        assert_eq!((cache.len(), cache.cached_events()), (2, 8));
        cache.read(&store, "b", |_| ()).await.unwrap();
        assert_eq!(store.hooks.take().get("b"), Some(&0));
    }

    #[tokio::test]
    async fn a_stream_longer_than_the_event_budget_stays_cached_alone() {
        let store = Hooked::<MemoryLog, Replays>::default();
        let cache = StateCache::<Keys>::with_limits(100, 3);
        add(&cache, &store, "a", &[0]).await;
        add(&cache, &store, "b", &[0, 1, 2, 3, 4]).await;
        assert_eq!((cache.len(), cache.cached_events()), (1, 5));
        store.hooks.take();
        let (b, version) = cache.read(&store, "b", Clone::clone).await.unwrap();
        assert_eq!((b, version), (vec![0, 1, 2, 3, 4], Some(4)));
        assert_eq!(store.hooks.take().get("b"), Some(&0), "b was not replayed");
    }

    #[tokio::test]
    async fn a_stream_in_use_is_not_dropped_to_make_room() {
        let store = Hooked::<MemoryLog, Replays>::default();
        let cache = StateCache::<Keys>::with_limits(2, 6);
        add(&cache, &store, "a", &[0, 1, 2]).await;
        // A task holds "a"'s slot (a command waiting on it, a replay in progress).
        let held = cache.slot("a");
        add(&cache, &store, "b", &[0, 1, 2]).await;
        add(&cache, &store, "c", &[0, 1]).await;
        // Over both bounds, "b" went (least recently used but for "a", which is in use).
        assert_eq!((cache.len(), cache.cached_events()), (2, 5));
        drop(held);
        store.hooks.take();
        cache.read(&store, "a", |_| ()).await.unwrap();
        assert_eq!(store.hooks.take().get("a"), Some(&0), "a was not replayed");
    }

    #[tokio::test]
    async fn a_batch_counts_its_events_against_the_budget() {
        let store = MemoryLog::default();
        let cache = StateCache::<Keys>::with_limits(100, 6);
        add(&cache, &store, "a", &[0, 1]).await;
        let commands: Vec<_> = (0..5u32)
            .map(|k| (k, meta(0xB000 + u128::from(k))))
            .collect();
        cache
            .execute_many(&store, "b", &commands, |_, _| ())
            .await
            .unwrap();
        // 2 + 5 > 6: "a" goes, "b" stays.
        assert_eq!((cache.len(), cache.cached_events()), (1, 5));
    }

    #[tokio::test]
    async fn concurrent_cached_commands_on_one_stream_all_land() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryLog::default());
        let cache = Arc::new(StateCache::<Keys>::default());
        let tasks: Vec<_> = (0..5u32)
            .map(|key| {
                let (store, cache) = (Arc::clone(&store), Arc::clone(&cache));
                tokio::spawn(async move {
                    cache
                        .execute(
                            store.as_ref(),
                            "k",
                            &key,
                            &meta(100 + u128::from(key)),
                            |_| (),
                        )
                        .await
                        .map(|_| ())
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let mut keys = load::<Keys>(store.as_ref(), "k").await.unwrap().state;
        keys.sort_unstable();
        assert_eq!(keys, vec![0, 1, 2, 3, 4]);
    }

    async fn stored(log: &MemoryLog) -> Vec<(Uuid, bytes::Bytes)> {
        log.read_stream("k", 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.id, e.data))
            .collect()
    }

    fn batch(keys: &[u32], seed: u128) -> Vec<(u32, CommandMeta)> {
        keys.iter()
            .enumerate()
            .map(|(i, key)| (*key, meta(seed + i as u128)))
            .collect()
    }

    #[tokio::test]
    async fn a_batch_writes_what_its_commands_would_one_at_a_time() {
        let (batched, single) = (MemoryLog::default(), MemoryLog::default());
        let cache = StateCache::<Keys>::default();
        let commands = batch(&[3, 1, 3, 2], 10);
        let done = cache
            .execute_many(&batched, "k", &commands, |s, i| (s.len(), commands[i].0))
            .await
            .unwrap();
        // The repeated key is decided on the state the first one left: nothing to add.
        assert_eq!(done.appended, 3);
        assert_eq!(done.version, Some(2));
        assert_eq!(done.views, vec![(3, 3), (3, 1), (3, 3), (3, 2)]);
        for (key, meta) in &commands {
            execute::<Keys>(&single, "k", key, meta).await.unwrap();
        }
        assert_eq!(stored(&batched).await, stored(&single).await);
    }

    #[tokio::test]
    async fn each_command_of_a_batch_sees_the_state_it_leaves_as_one_at_a_time_would() {
        let (batched, single) = (MemoryLog::default(), MemoryLog::default());
        let cache = StateCache::<Keys>::default();
        let commands = batch(&[3, 1, 3, 2], 15);
        let done = cache
            .execute_each(&batched, "k", &commands, |s, _| s.clone())
            .await
            .unwrap();
        assert_eq!((done.appended, done.version), (3, Some(2)));
        let mut one_at_a_time = Vec::new();
        for (key, meta) in &commands {
            one_at_a_time.push(
                execute::<Keys>(&single, "k", key, meta)
                    .await
                    .unwrap()
                    .state,
            );
        }
        assert_eq!(done.views, one_at_a_time);
        assert_eq!(
            done.views,
            vec![vec![3], vec![3, 1], vec![3, 1], vec![3, 1, 2]]
        );
        assert_eq!(stored(&batched).await, stored(&single).await);
    }

    #[tokio::test]
    async fn each_view_of_a_batch_includes_what_another_writer_appended_behind_the_cache() {
        let store = MemoryLog::default();
        let cache = StateCache::<Keys>::default();
        // The cache learns the stream at version 0, then another writer appends behind it.
        cache
            .execute(&store, "k", &0, &meta(70), |_| ())
            .await
            .unwrap();
        execute::<Keys>(&store, "k", &9, &meta(71)).await.unwrap();
        let commands = batch(&[1, 2], 72);
        let done = cache
            .execute_each(&store, "k", &commands, |s, _| s.len())
            .await
            .unwrap();
        // Caught up before deciding: the other writer's key is in the state of both views.
        assert_eq!(done.views, vec![3, 4]);
        assert_eq!(done.version, Some(3));
    }

    /// Another writer slips a key in just before the next append to a stream: that append
    /// then loses the race.
    #[derive(Debug, Default)]
    struct SlipIn(std::sync::Mutex<Option<u32>>);

    type Contended = Hooked<MemoryLog, SlipIn>;

    #[async_trait::async_trait]
    impl StoreHooks for SlipIn {
        async fn before_append(
            &self,
            inner: &dyn EventStore,
            stream: &str,
        ) -> Result<(), LogError> {
            let other = self.0.lock().unwrap().take();
            if let Some(key) = other {
                execute::<Keys>(inner, stream, &key, &meta(0xF00))
                    .await
                    .unwrap();
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_batch_that_loses_a_race_is_decided_again_on_the_winners_state_views_included() {
        let store = Contended::default();
        let cache = StateCache::<Keys>::default();
        cache
            .execute(&store, "k", &0, &meta(80), |_| ())
            .await
            .unwrap();
        *store.hooks.0.lock().unwrap() = Some(9);
        let done = cache
            .execute_each(&store, "k", &batch(&[1, 9, 2], 81), |s, _| s.clone())
            .await
            .unwrap();
        // Decided again after the race: the winner's 9 is there, and the batch's own 9 adds
        // nothing; each view is of the second decision only.
        assert_eq!(
            done.views,
            vec![vec![0, 9, 1], vec![0, 9, 1], vec![0, 9, 1, 2]]
        );
        assert_eq!((done.appended, done.version), (2, Some(3)));
        let state = load::<Keys>(&store.inner, "k").await.unwrap().state;
        assert_eq!(state, vec![0, 9, 1, 2]);
    }

    #[tokio::test]
    async fn a_batch_longer_than_one_append_allows_lands_whole_and_in_order() {
        let store = MemoryLog::new(Limits {
            max_events_per_append: 2,
            ..Limits::default()
        });
        let cache = StateCache::<Keys>::default();
        let done = cache
            .execute_many(&store, "k", &batch(&[5, 4, 3, 2, 1], 20), |_, _| ())
            .await
            .unwrap();
        assert_eq!((done.appended, done.version), (5, Some(4)));
        let state = load::<Keys>(&store, "k").await.unwrap().state;
        assert_eq!(state, vec![5, 4, 3, 2, 1]);
    }

    #[tokio::test]
    async fn a_refused_command_fails_the_batch_appends_nothing_and_the_cache_rereads_the_log() {
        let store = MemoryLog::default();
        let cache = StateCache::<Keys>::default();
        cache
            .execute_many(&store, "k", &batch(&[0, 1, 2, 3], 30), |_, _| ())
            .await
            .unwrap();
        // The sixth distinct key is refused: the fifth, decided before it, is not written either.
        let err = cache
            .execute_many(&store, "k", &batch(&[4, 5], 40), |_, _| ())
            .await
            .unwrap_err();
        assert!(matches!(err, ExecuteError::Domain(TooMany)));
        assert_eq!(store.stream_version("k").await.unwrap(), Some(3));
        let (view, version) = cache.read(&store, "k", Clone::clone).await.unwrap();
        assert_eq!((view, version), (vec![0, 1, 2, 3], Some(3)));
    }

    #[tokio::test]
    async fn a_batch_retried_after_part_of_it_landed_appends_only_the_rest() {
        let store = MemoryLog::default();
        let cache = StateCache::<Keys>::default();
        let commands = batch(&[7, 8, 9], 50);
        // The first command landed earlier, through another path (or an earlier attempt).
        execute::<Keys>(&store, "k", &commands[0].0, &commands[0].1)
            .await
            .unwrap();
        let done = cache
            .execute_many(&store, "k", &commands, |_, _| ())
            .await
            .unwrap();
        assert_eq!((done.appended, done.version), (2, Some(2)));
        assert_eq!(
            load::<Keys>(&store, "k").await.unwrap().state,
            vec![7, 8, 9]
        );
    }

    /// Appends never answer while set: before reaching the log (`Before`, nothing written),
    /// or once the log has answered (`After`), whether it wrote the events or failed: the
    /// answer is lost either way.
    #[derive(Debug, Default)]
    struct Hang(std::sync::Mutex<Option<HangAt>>);

    #[derive(Debug, Clone, Copy)]
    enum HangAt {
        Before,
        After,
    }

    type Hanging = Hooked<MemoryLog, Hang>;

    #[async_trait::async_trait]
    impl StoreHooks for Hang {
        async fn before_append(&self, _: &dyn EventStore, _: &str) -> Result<(), LogError> {
            let hang = *self.0.lock().unwrap();
            if let Some(HangAt::Before) = hang {
                std::future::pending::<()>().await;
            }
            Ok(())
        }

        async fn after_append(&self, _: &str, _: &Result<pl_eventlog::AppendResult, LogError>) {
            let hang = *self.0.lock().unwrap();
            if let Some(HangAt::After) = hang {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Starts a batch on a hanging log and drops it at its append (as a timeout or a failed
    /// sibling in a join does), then lets the log answer again.
    async fn drop_a_batch_at_its_append(hang: HangAt) -> (Hanging, StateCache<Keys>) {
        let store = Hanging::default();
        let cache = StateCache::<Keys>::default();
        cache
            .execute_many(&store, "k", &batch(&[1], 60), |_, _| ())
            .await
            .unwrap();
        *store.hooks.0.lock().unwrap() = Some(hang);
        let commands = batch(&[2, 3], 61);
        let running = cache.execute_many(&store, "k", &commands, |_, _| ());
        tokio::select! {
            biased;
            _ = running => panic!("the append was meant to hang"),
            () = async {} => {}
        }
        *store.hooks.0.lock().unwrap() = None;
        (store, cache)
    }

    #[tokio::test]
    async fn a_batch_dropped_before_its_append_leaves_the_cache_as_the_log_is() {
        let (store, cache) = drop_a_batch_at_its_append(HangAt::Before).await;
        let (view, version) = cache.read(&store, "k", Clone::clone).await.unwrap();
        assert_eq!((view, version), (vec![1], Some(0)));
        // And the batch, retried, is written once.
        cache
            .execute_many(&store, "k", &batch(&[2, 3], 61), |_, _| ())
            .await
            .unwrap();
        assert_eq!(
            load::<Keys>(&store, "k").await.unwrap().state,
            vec![1, 2, 3]
        );
    }

    #[tokio::test]
    async fn a_use_dropped_part_way_still_counts_what_its_state_holds() {
        let store = Hanging::default();
        for key in 0..4u32 {
            execute::<Keys>(&store, "k", &key, &meta(0x70 + u128::from(key)))
                .await
                .unwrap();
        }
        let cache = StateCache::<Keys>::default();
        *store.hooks.0.lock().unwrap() = Some(HangAt::Before);
        // The command replays the four events, then its append hangs and it is dropped.
        let command_meta = meta(0x79);
        let running = cache.execute(&store, "k", &9, &command_meta, |_| ());
        tokio::select! {
            biased;
            _ = running => panic!("the append was meant to hang"),
            () = async {} => {}
        }
        assert_eq!((cache.len(), cache.cached_events()), (1, 4));
    }

    #[tokio::test]
    async fn a_batch_dropped_after_its_append_landed_is_not_folded_twice() {
        let (store, cache) = drop_a_batch_at_its_append(HangAt::After).await;
        let (view, version) = cache.read(&store, "k", Clone::clone).await.unwrap();
        assert_eq!((view, version), (vec![1, 2, 3], Some(2)));
        let again = cache
            .execute_many(&store, "k", &batch(&[2, 3], 61), |_, _| ())
            .await
            .unwrap();
        assert_eq!(again.appended, 0);
    }
}
