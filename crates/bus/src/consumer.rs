//! Idempotent consumers: the consumer runner and derived event ids.
//!
//! Delivery is at least once (a crash before the ack, a lost ack, an ack wait that expires while
//! the handler is still working: each means the same message again). A handler is idempotent
//! by construction when every event it appends has an id derived from the consumed message's id
//! with [`derived_event_id`]: on a redelivery it appends the very same events, and the event
//! log's idempotent re-append returns the original result and writes nothing. A handler that
//! appends with `ExpectedVersion::Exact` should treat a version conflict whose cause is its own
//! earlier append as success (re-read, find its derived id, ack).

use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::BusError;
use crate::message::Message;
use crate::port::Consumer;

/// Namespace of every derived event id: UUIDv5 of `urn:partner-ledger:derived-event-id` in the
/// URL namespace. Never change it: stored ids were derived with it.
pub const DERIVED_EVENT_ID_NAMESPACE: Uuid =
    Uuid::from_u128(0x5fcbe6a5_7024_5bf1_9559_c170ad886021);

/// The id of an event written in reaction to `consumed_event_id`, one per `purpose` (a handler
/// writing several events uses a purpose for each, e.g. `"accrue:partner-42"`). Deterministic,
/// so a redelivered message yields the same ids and appends nothing new.
pub fn derived_event_id(consumed_event_id: Uuid, purpose: &str) -> Uuid {
    let mut name = Vec::with_capacity(16 + 1 + purpose.len());
    name.extend_from_slice(consumed_event_id.as_bytes());
    // The id is fixed-width, so no separator is needed to keep (id, purpose) pairs distinct;
    // one is kept anyway so the name reads well in a hex dump.
    name.push(b':');
    name.extend_from_slice(purpose.as_bytes());
    Uuid::new_v5(&DERIVED_EVENT_ID_NAMESPACE, &name)
}

/// Why a handler did not handle a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// May succeed later (a dependency is down, a version conflict): nak with backoff. After
    /// the consumer's `max_deliver` deliveries it is dead-lettered.
    #[error("retryable: {0}")]
    Retry(String),
    /// Will never succeed (malformed payload, unknown schema version): dead-letter now.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// Timing of [`run_consumer_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Nak delay after the first failed delivery; doubled per delivery up to the max.
    pub retry_backoff_min_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// A handler still running after this long counts as a retryable failure.
    pub handler_timeout_ms: u64,
    /// Wait between attempts while the bus itself is failing (doubles up to this).
    pub bus_backoff_max_ms: u64,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            retry_backoff_min_ms: 100,
            retry_backoff_max_ms: 30_000,
            handler_timeout_ms: 30_000,
            bus_backoff_max_ms: 2_000,
        }
    }
}

/// [`run_consumer_with`] with [`RunnerConfig::default`].
pub async fn run_consumer<H, Fut>(
    consumer: Box<dyn Consumer>,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), BusError>
where
    H: FnMut(Message) -> Fut + Send,
    Fut: Future<Output = Result<(), HandleError>> + Send,
{
    run_consumer_with(consumer, handler, shutdown, RunnerConfig::default()).await
}

/// Hands each delivered message to `handler`, one at a time, until `shutdown`: `Ok` acks,
/// [`HandleError::Retry`] (or a handler timeout) naks with capped exponential backoff,
/// [`HandleError::Permanent`] dead-letters. Bus outages are waited out with backoff; only a
/// non-retryable bus error ends the loop early. A message in hand when `shutdown` fires is
/// finished first.
pub async fn run_consumer_with<H, Fut>(
    mut consumer: Box<dyn Consumer>,
    mut handler: H,
    shutdown: CancellationToken,
    config: RunnerConfig,
) -> Result<(), BusError>
where
    H: FnMut(Message) -> Fut + Send,
    Fut: Future<Output = Result<(), HandleError>> + Send,
{
    let mut bus_backoff_ms = 0_u64;
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            next = consumer.next() => next,
        };
        let delivery = match received(next, &mut bus_backoff_ms, &config, &shutdown).await {
            ControlFlow::Continue(Some(d)) => d,
            ControlFlow::Continue(None) => continue,
            ControlFlow::Break(outcome) => return outcome,
        };
        handle_one(delivery, &mut handler, &config, 0).await;
    }
}

/// Runs the handler on one delivery (bounded by the handler timeout) and settles it: `Ok` acks,
/// `Retry` naks with backoff, `Permanent` dead-letters. With `retries_in_place`, a `Retry` is
/// first retried right here (same backoff) that many times, so the messages queued behind it
/// under the same key wait instead of overtaking it.
async fn handle_one<H, Fut>(
    delivery: crate::port::Delivery,
    handler: &mut H,
    config: &RunnerConfig,
    retries_in_place: u32,
) where
    H: FnMut(Message) -> Fut + Send,
    Fut: Future<Output = Result<(), HandleError>> + Send,
{
    let message_id = delivery.message.id;
    let mut attempt = 0;
    let outcome = loop {
        let outcome = tokio::time::timeout(
            Duration::from_millis(config.handler_timeout_ms),
            handler(delivery.message.clone()),
        )
        .await
        .unwrap_or_else(|_| Err(HandleError::Retry("handler timed out".to_owned())));
        match outcome {
            Err(HandleError::Retry(reason)) if attempt < retries_in_place => {
                attempt += 1;
                let delay_ms = retry_delay_ms(config, attempt);
                tracing::debug!(%message_id, attempt, delay_ms, reason, "retrying in place");
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            other => break other,
        }
    };
    settle(delivery, outcome, config).await;
}

/// Acks, naks with backoff or dead-letters one delivery according to its handler's outcome.
async fn settle(
    delivery: crate::port::Delivery,
    outcome: Result<(), HandleError>,
    config: &RunnerConfig,
) {
    let message_id = delivery.message.id;
    let delivered_count = delivery.delivered_count;
    let settled = match outcome {
        Ok(()) => delivery.ack().await,
        Err(HandleError::Retry(reason)) => {
            let delay_ms = retry_delay_ms(config, delivered_count);
            tracing::info!(%message_id, delivered_count, delay_ms, reason, "handler failed, retrying");
            delivery.nak(delay_ms).await
        }
        Err(HandleError::Permanent(reason)) => delivery.dead_letter(&reason).await,
    };
    if let Err(e) = settled {
        // Unsettled means redelivered after the ack wait: the idempotent handler absorbs it.
        tracing::warn!(%message_id, error = %e, "settling a delivery failed");
    }
}

/// Runs the batch handler on deliveries of one key, in order, and settles each: the outcomes
/// before the first `Retry` are settled at once; from the first `Retry` on, the rest is handed
/// to the handler again after a backoff (the messages behind a retried one wait, as one at a
/// time). After `retries_in_place` such rounds the failing message is nak'ed and the rest goes
/// on. A batch still running after the handler timeout counts as a `Retry` of its first message.
async fn handle_in_order<H, Fut>(
    deliveries: Vec<crate::port::Delivery>,
    handler: &mut H,
    config: &RunnerConfig,
    retries_in_place: u32,
    stop: &CancellationToken,
) where
    H: FnMut(Vec<Message>) -> Fut + Send,
    Fut: Future<Output = Vec<Result<(), HandleError>>> + Send,
{
    let mut pending = std::collections::VecDeque::from(deliveries);
    let mut attempt = 0;
    // On shutdown what is left is not handed over again: it stays unsettled and comes back
    // after the ack wait (a batch retried in place could otherwise hold a drain for minutes).
    while !pending.is_empty() && !stop.is_cancelled() {
        let messages: Vec<Message> = pending.iter().map(|d| d.message.clone()).collect();
        let outcomes = tokio::time::timeout(
            Duration::from_millis(config.handler_timeout_ms),
            handler(messages),
        )
        .await
        .unwrap_or_else(|_| vec![Err(HandleError::Retry("handler timed out".to_owned()))]);
        let mut outcomes = outcomes.into_iter();
        while let Some(delivery) = pending.pop_front() {
            // A handler that answered for fewer messages did not attempt the rest.
            let outcome = outcomes
                .next()
                .unwrap_or_else(|| Err(HandleError::Retry("not attempted".to_owned())));
            match outcome {
                Err(HandleError::Retry(reason)) if attempt < retries_in_place => {
                    attempt += 1;
                    let delay_ms = retry_delay_ms(config, attempt);
                    tracing::debug!(message_id = %delivery.message.id, attempt, delay_ms, reason, "retrying in place");
                    pending.push_front(delivery);
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                    }
                    break;
                }
                Err(HandleError::Retry(reason)) => {
                    attempt = 0;
                    settle(delivery, Err(HandleError::Retry(reason)), config).await;
                    break;
                }
                settled => {
                    attempt = 0;
                    settle(delivery, settled, config).await;
                }
            }
        }
    }
}

/// `Retry` outcomes a lane of [`run_consumer_keyed`] retries in place before it naks (the
/// backoff doubles from `retry_backoff_min_ms`: 1.5 s in all with the defaults).
const RETRIES_IN_PLACE: u32 = 4;

/// Deliveries queued in each lane's channel of [`run_consumer_keyed`].
const LANE_DEPTH: usize = 8;
/// Deliveries of [`run_consumer_keyed`] held back, over all lanes, because their lane was full;
/// at this many the runner stops pulling until a lane takes one (the consumer's
/// `max_ack_pending` bounds the total in flight as well).
const MAX_HELD_BACK: usize = 4096;
/// Lanes of [`run_consumer_keyed`] at most.
pub const MAX_LANES: usize = 256;
/// Messages one lane of [`run_consumer_batched`] hands its handler at once, at most.
pub const MAX_BATCH: usize = 1024;

/// Like [`run_consumer_with`], with up to `lanes` messages in progress at once: messages whose
/// `key_of` is equal are handled one at a time in delivery order, others concurrently; a
/// message that asks to be retried is retried in place first, so the ones behind it under the
/// same key do not overtake it (unless it is finally nak'ed). A busy key never holds up the
/// others: what its full lane cannot take yet waits in order beside it while other lanes go on.
/// Order holds within one process: run one consumer process per durable consumer where order
/// matters. The handler must be safe to run concurrently for different keys (per-stream
/// optimistic concurrency makes a command handler so). On `shutdown` each lane finishes the
/// message in hand; queued ones are left unsettled and come back after the ack wait.
pub async fn run_consumer_keyed<K, H, Fut>(
    consumer: Box<dyn Consumer>,
    key_of: K,
    handler: H,
    shutdown: CancellationToken,
    config: RunnerConfig,
    lanes: usize,
) -> Result<(), BusError>
where
    K: Fn(&Message) -> u64 + Send,
    H: FnMut(Message) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = Result<(), HandleError>> + Send + 'static,
{
    // Batches of one: the handler's outcome is the message's. The handler is cloned for each
    // message (it is `Clone` for the lanes anyway); state it keeps in itself does not carry
    // from one message to the next.
    let one_at_a_time = move |messages: Vec<Message>| {
        let mut handler = handler.clone();
        async move {
            let mut outcomes = Vec::with_capacity(messages.len());
            for message in messages {
                let outcome = handler(message).await;
                let retry = matches!(outcome, Err(HandleError::Retry(_)));
                outcomes.push(outcome);
                if retry {
                    break;
                }
            }
            outcomes
        }
    };
    run_consumer_batched(consumer, key_of, one_at_a_time, shutdown, config, lanes, 1).await
}

/// [`run_consumer_keyed`] whose lanes hand the handler every message of theirs that is queued,
/// up to `max_batch`, at once: under load a handler can then do for many messages what it
/// would do for each (one append per stream instead of one per message), and the batches grow
/// with the queue, as a group commit does. The handler answers one outcome per message, in
/// order, as if it had handled them one at a time: the outcomes before the first `Retry` are
/// settled; that message and the ones after it are handed over again after a backoff (a
/// handler stops at the first `Retry`, or returns fewer outcomes: the missing ones count as
/// not attempted). After the retries in place, the failing message is nak'ed and the rest
/// goes on. A batch still running after the handler timeout counts as a `Retry` of its first
/// message (the handler must leave no half-applied state when its future is dropped). On
/// `shutdown` a lane finishes the handler call in hand and leaves the rest unsettled.
pub async fn run_consumer_batched<K, H, Fut>(
    mut consumer: Box<dyn Consumer>,
    key_of: K,
    handler: H,
    shutdown: CancellationToken,
    config: RunnerConfig,
    lanes: usize,
    max_batch: usize,
) -> Result<(), BusError>
where
    K: Fn(&Message) -> u64 + Send,
    H: FnMut(Vec<Message>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = Vec<Result<(), HandleError>>> + Send + 'static,
{
    use tokio::sync::mpsc::error::TrySendError;

    let lanes = lanes.clamp(1, MAX_LANES);
    let max_batch = max_batch.clamp(1, MAX_BATCH);
    let mut senders = Vec::with_capacity(lanes);
    let mut workers = Vec::with_capacity(lanes);
    // A lane that takes a delivery off its channel makes room: the dispatcher then moves what it
    // held back for that lane (one stored permit, so a wake-up is never lost).
    let room = std::sync::Arc::new(tokio::sync::Notify::new());
    for _ in 0..lanes {
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<crate::port::Delivery>(LANE_DEPTH.max(max_batch));
        let (mut handler, config, stop) = (handler.clone(), config.clone(), shutdown.clone());
        let room = room.clone();
        senders.push(tx);
        workers.push(tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    d = rx.recv() => match d {
                        Some(d) => d,
                        None => return,
                    },
                };
                let mut batch = vec![delivery];
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(d) => batch.push(d),
                        Err(_) => break,
                    }
                }
                room.notify_one();
                handle_in_order(batch, &mut handler, &config, RETRIES_IN_PLACE, &stop).await;
            }
        }));
    }
    // Per lane, in delivery order, what its full channel could not take yet.
    let mut held: Vec<std::collections::VecDeque<crate::port::Delivery>> = (0..lanes)
        .map(|_| std::collections::VecDeque::new())
        .collect();
    let mut held_total = 0_usize;
    let mut bus_backoff_ms = 0_u64;
    let outcome = 'run: loop {
        for (lane, queue) in held.iter_mut().enumerate() {
            while let Some(delivery) = queue.pop_front() {
                match senders[lane].try_send(delivery) {
                    Ok(()) => held_total -= 1,
                    Err(TrySendError::Full(delivery)) => {
                        queue.push_front(delivery);
                        break;
                    }
                    Err(TrySendError::Closed(_)) => {
                        break 'run Err(BusError::Backend("a consumer lane stopped".to_owned()))
                    }
                }
            }
        }
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            () = room.notified(), if held_total > 0 => continue,
            next = consumer.next(), if held_total < MAX_HELD_BACK => next,
        };
        let delivery = match received(next, &mut bus_backoff_ms, &config, &shutdown).await {
            ControlFlow::Continue(Some(d)) => d,
            ControlFlow::Continue(None) => continue,
            ControlFlow::Break(outcome) => break outcome,
        };
        let lane = (key_of(&delivery.message) % lanes as u64) as usize;
        if !held[lane].is_empty() {
            // Behind what waits already, so one key's order holds.
            held[lane].push_back(delivery);
            held_total += 1;
            continue;
        }
        match senders[lane].try_send(delivery) {
            Ok(()) => {}
            Err(TrySendError::Full(delivery)) => {
                held[lane].push_back(delivery);
                held_total += 1;
            }
            Err(TrySendError::Closed(_)) => {
                break Err(BusError::Backend("a consumer lane stopped".to_owned()))
            }
        }
    };
    drop(senders);
    for w in workers {
        let _ = w.await;
    }
    outcome
}

/// What a runner does with the outcome of `consumer.next()`: a delivery to handle; after a
/// retryable failure, a backoff (doubling from 50 ms to `bus_backoff_max_ms`, reset by the next
/// delivery) and nothing to handle; a fatal failure, or shutdown during the backoff, ends the
/// runner with that outcome.
async fn received(
    next: Result<crate::port::Delivery, BusError>,
    backoff_ms: &mut u64,
    config: &RunnerConfig,
    shutdown: &CancellationToken,
) -> ControlFlow<Result<(), BusError>, Option<crate::port::Delivery>> {
    match next {
        Ok(d) => {
            *backoff_ms = 0;
            ControlFlow::Continue(Some(d))
        }
        Err(e) if e.is_retryable() => {
            *backoff_ms = (*backoff_ms * 2).clamp(50, config.bus_backoff_max_ms.max(50));
            tracing::warn!(error = %e, backoff_ms = *backoff_ms, "consumer receive failed");
            tokio::select! {
                () = shutdown.cancelled() => ControlFlow::Break(Ok(())),
                () = tokio::time::sleep(Duration::from_millis(*backoff_ms)) => ControlFlow::Continue(None),
            }
        }
        Err(e) => ControlFlow::Break(Err(e)),
    }
}

/// A stable key for [`run_consumer_keyed`] from any string (the same in every process).
pub fn lane_key(parts: &[&str]) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: deterministic, unlike `RandomState`.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    parts.hash(&mut h);
    h.finish()
}

fn retry_delay_ms(config: &RunnerConfig, delivered_count: u32) -> u64 {
    let doublings = delivered_count.saturating_sub(1).min(32);
    config
        .retry_backoff_min_ms
        .saturating_mul(1_u64 << doublings)
        .min(config.retry_backoff_max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_is_the_documented_v5_name() {
        assert_eq!(
            DERIVED_EVENT_ID_NAMESPACE,
            Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:partner-ledger:derived-event-id")
        );
    }

    #[test]
    fn derived_ids_are_stable_and_distinct_per_purpose() {
        let consumed = Uuid::from_u128(42);
        assert_eq!(
            derived_event_id(consumed, "accrue"),
            derived_event_id(consumed, "accrue")
        );
        assert_ne!(
            derived_event_id(consumed, "accrue"),
            derived_event_id(consumed, "hold")
        );
        assert_ne!(
            derived_event_id(consumed, "accrue"),
            derived_event_id(Uuid::from_u128(43), "accrue")
        );
        assert_eq!(derived_event_id(consumed, "accrue").get_version_num(), 5);
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let c = RunnerConfig {
            retry_backoff_min_ms: 100,
            retry_backoff_max_ms: 1000,
            ..RunnerConfig::default()
        };
        assert_eq!(retry_delay_ms(&c, 1), 100);
        assert_eq!(retry_delay_ms(&c, 2), 200);
        assert_eq!(retry_delay_ms(&c, 4), 800);
        assert_eq!(retry_delay_ms(&c, 5), 1000);
        assert_eq!(retry_delay_ms(&c, u32::MAX), 1000);
    }
}
