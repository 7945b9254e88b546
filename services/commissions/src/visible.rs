//! Callers of `GetConversionAccrual` waiting for a conversion's accrual to become visible
//! (`wait_ms`), and the consumer's signal that it has.
//!
//! The signal is only a hint to look again: the answer always comes from the log, so a
//! conversion accrued by another process (or before the wait began) is still found, by the
//! re-check after registering and by the coarse periodic re-check (`grpc`). Service layer
//! only; the domain never sees it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use uuid::Uuid;

/// Longest wait a caller may ask for. A wait holds a request slot of the caller's connection
/// (and delays a graceful shutdown) for as long as it lasts, so it stays short.
pub const MAX_WAIT_MS: u32 = 10_000;
/// Callers waiting at once in this process; each costs a request slot and a map entry.
pub const MAX_WAITERS: usize = 10_000;
/// How often a waiter reads the log again without a signal: a conversion accrued by another
/// replica, or by a path that does not signal, is seen within this.
pub const RECHECK_MS: u64 = 100;

/// The waiters of this process, by conversion. Bounded; every entry is removed when its
/// [`Waiter`] is dropped (answered, timed out or cancelled by the caller).
#[derive(Debug)]
pub struct Waiters {
    limit: usize,
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    /// (conversion, waiter token) → the waiter's wake-up. Ordered, so one conversion's
    /// waiters are one range.
    waiting: BTreeMap<(Uuid, u64), Arc<Notify>>,
    next_token: u64,
}

impl Default for Waiters {
    fn default() -> Self {
        Self::with_limit(MAX_WAITERS)
    }
}

/// Refused because [`Waiters`] is at its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many callers waiting for accruals (limit {limit})")]
pub struct TooManyWaiters {
    pub limit: usize,
}

impl Waiters {
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            inner: Mutex::new(Registry::default()),
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The map stays consistent whatever panicked while holding it (each change is one
        // insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a wait for `conversion_id`. Register before reading the log: an accrual that
    /// lands between the read and the wait then still wakes it.
    pub fn register(&self, conversion_id: Uuid) -> Result<Waiter<'_>, TooManyWaiters> {
        let mut r = self.registry();
        if r.waiting.len() >= self.limit {
            return Err(TooManyWaiters { limit: self.limit });
        }
        let token = r.next_token;
        r.next_token = r.next_token.wrapping_add(1);
        let notify = Arc::new(Notify::new());
        r.waiting
            .insert((conversion_id, token), Arc::clone(&notify));
        Ok(Waiter {
            waiters: self,
            key: (conversion_id, token),
            notify,
        })
    }

    /// Wakes every waiter of `conversion_id` (its accrual is now in the log).
    pub fn accrued(&self, conversion_id: Uuid) {
        let r = self.registry();
        let range = (conversion_id, 0)..=(conversion_id, u64::MAX);
        for notify in r.waiting.range(range).map(|(_, n)| n) {
            // `notify_one` keeps a permit when the waiter is between checks, so a signal
            // sent while it reads the log is not lost.
            notify.notify_one();
        }
    }

    /// Callers waiting now.
    pub fn len(&self) -> usize {
        self.registry().waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One caller's registration; dropping it removes the entry.
#[derive(Debug)]
pub struct Waiter<'a> {
    waiters: &'a Waiters,
    key: (Uuid, u64),
    notify: Arc<Notify>,
}

impl Waiter<'_> {
    /// Resolves when the conversion was signalled accrued since registration or the last
    /// resolution.
    pub async fn signalled(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.waiters.registry().waiting.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::FutureExt;

    #[test]
    fn a_full_registry_refuses_the_next_waiter_until_one_leaves() {
        let waiters = Waiters::with_limit(2);
        let a = waiters.register(Uuid::from_u128(1)).unwrap();
        let _b = waiters.register(Uuid::from_u128(1)).unwrap();
        assert_eq!(
            waiters.register(Uuid::from_u128(2)).unwrap_err(),
            TooManyWaiters { limit: 2 }
        );
        drop(a);
        assert_eq!(waiters.len(), 1);
        assert!(waiters.register(Uuid::from_u128(2)).is_ok());
    }

    #[test]
    fn a_signal_wakes_every_waiter_of_its_conversion_and_no_other_even_if_sent_before_they_wait() {
        let waiters = Waiters::default();
        let a = waiters.register(Uuid::from_u128(1)).unwrap();
        let b = waiters.register(Uuid::from_u128(1)).unwrap();
        let other = waiters.register(Uuid::from_u128(2)).unwrap();
        waiters.accrued(Uuid::from_u128(1));
        assert!(a.signalled().now_or_never().is_some());
        assert!(b.signalled().now_or_never().is_some());
        assert!(other.signalled().now_or_never().is_none());
        drop((a, b, other));
        assert!(waiters.is_empty());
    }
}
