//! Idempotency keys for mutating RPCs.
//!
//! A request carries a caller-chosen key. The first successful response is recorded in the event
//! log (stream `idempotency-<service>-<key>`, with a fingerprint of the request and the actor who
//! made it: the token's subject, roles and id, or `local` in a process without authentication);
//! a repeat with the same key and the same request returns that response unchanged, and the same
//! key with a different request is rejected. Failed requests are not recorded, so a caller may retry them.
//!
//! The command's event ids derive from the key (see `CommandMeta::id_seed`), so a request
//! retried after a crash between the command's append and the record cannot apply twice: the
//! executor finds its own events in the stream and answers with them.
//!
//! Requests under one key take turns within a process ([`Turn`]): a twin sent while the first
//! is in progress waits for it and answers what it recorded. Without the turn both decided at
//! once, and the second failed on events the first had just stored with another trace context
//! or receipt time ("stored with a different body"), or read the record before it was visible.
//! Twins in two processes (replicas over one EventStoreDB) cannot take turns: the executors
//! treat that id conflict as the twin's win (`aggregate::lost_to_twin`), load its events and
//! answer with them, and the second record append reads the first's record.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};

use pl_eventlog::{EventMetadata, EventStore, ExpectedVersion, NewEvent};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;

pub const MAX_KEY_BYTES: usize = 128;
const FIELD: &str = "context.idempotency_key";
const RECORD_TYPE: &str = "IdempotentResponseRecorded";
/// Namespace of the UUIDv5 ids derived from idempotency keys.
const KEY_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_4c1e_9a0e_4f6d_8c7b_5a3e_2d1c_0b9a);

/// A validated idempotency key, scoped to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    service: &'static str,
    key: String,
}

impl IdempotencyKey {
    pub fn parse(service: &'static str, key: &str) -> Result<Self, ApiError> {
        if key.is_empty() {
            return Err(ApiError::invalid(
                FIELD,
                "required for every mutating request",
            ));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(ApiError::invalid(
                FIELD,
                format!("at most {MAX_KEY_BYTES} bytes, got {}", key.len()),
            ));
        }
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(ApiError::invalid(FIELD, "only [A-Za-z0-9._:-] are allowed"));
        }
        Ok(Self {
            service,
            key: key.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// Seed for the ids of the events this request produces.
    pub fn id_seed(&self) -> Uuid {
        Uuid::new_v5(
            &KEY_NAMESPACE,
            format!("{}/{}", self.service, self.key).as_bytes(),
        )
    }

    fn stream(&self) -> String {
        format!("idempotency-{}-{}", self.service, self.key)
    }
}

/// SHA-256 of a request's protobuf encoding.
pub fn fingerprint<M: prost::Message>(request: &M) -> [u8; 32] {
    Sha256::digest(request.encode_to_vec()).into()
}

/// The fingerprint of a request with its idempotency key cleared (`context` reaches the
/// request's `RequestContext`), so "same request" means same body whatever the key.
pub fn request_fingerprint<M: prost::Message + Clone>(
    request: &M,
    context: impl FnOnce(&mut M) -> Option<&mut pl_proto::common::v1::RequestContext>,
) -> [u8; 32] {
    let mut copy = request.clone();
    if let Some(ctx) = context(&mut copy) {
        ctx.idempotency_key.clear();
    }
    fingerprint(&copy)
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    request_sha256: String,
    response_hex: String,
    /// Who made the request, as its credential proved (`pl_auth`): the log says who did each
    /// thing. Absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    actor: Option<pl_auth::Actor>,
}

/// Keys in progress in this process, each with the lock its requests take turns on. An entry
/// lives while a request holds or waits for it; past [`MAX_TURN_KEYS`] keys in progress at once,
/// a request goes without a turn (the log's own conflict checks still apply it once).
static TURNS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Mutex::default);

/// Keys in progress at once that get a turn.
pub const MAX_TURN_KEYS: usize = 100_000;

/// One request's turn on its key (see the module docs); released on drop.
struct Turn {
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Turn {
    async fn take(key: &str) -> Option<Turn> {
        let lock = {
            let mut turns = TURNS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match turns.get(key) {
                Some(lock) => Arc::clone(lock),
                None if turns.len() >= MAX_TURN_KEYS => return None,
                None => Arc::clone(turns.entry(key.to_owned()).or_default()),
            }
        };
        let guard = Arc::clone(&lock).lock_owned().await;
        Some(Turn {
            key: key.to_owned(),
            lock,
            guard: Some(guard),
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.guard.take();
        let mut turns = TURNS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only the map's reference and ours: nobody waits, so the key leaves the map. Others
        // clone the lock only under the map's lock, so none can appear meanwhile.
        if Arc::strong_count(&self.lock) == 2 {
            turns.remove(&self.key);
        }
    }
}

/// Runs `handle` once per key: a repeat with the same fingerprint returns the recorded response.
pub async fn run_once<R, F, Fut>(
    store: &dyn EventStore,
    key: &IdempotencyKey,
    request_fingerprint: [u8; 32],
    occurred_at: chrono::DateTime<chrono::Utc>,
    handle: F,
) -> Result<R, ApiError>
where
    R: prost::Message + Default,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<R, ApiError>>,
{
    let stream = key.stream();
    let _turn = Turn::take(&stream).await;
    if let Some(response) = recorded::<R>(store, &stream, &request_fingerprint).await? {
        return Ok(response);
    }
    let response = handle().await?;
    let record = Record {
        request_sha256: hex::encode(request_fingerprint),
        response_hex: hex::encode(response.encode_to_vec()),
        actor: pl_auth::current_actor(),
    };
    let event = NewEvent::json(
        Uuid::new_v5(&key.id_seed(), b"response"),
        RECORD_TYPE,
        1,
        &record,
        EventMetadata::at(occurred_at),
    )
    .map_err(ApiError::internal)?;
    match store
        .append(&stream, ExpectedVersion::NoStream, vec![event])
        .await
    {
        Ok(_) => Ok(response),
        // A concurrent twin recorded first: answer what it answered.
        Err(e) if e.is_conflict() || matches!(e, pl_eventlog::LogError::EventIdConflict { .. }) => {
            recorded::<R>(store, &stream, &request_fingerprint)
                .await?
                .ok_or_else(|| ApiError::internal("idempotency record vanished"))
        }
        Err(e) => Err(e.into()),
    }
}

async fn recorded<R: prost::Message + Default>(
    store: &dyn EventStore,
    stream: &str,
    request_fingerprint: &[u8; 32],
) -> Result<Option<R>, ApiError> {
    let Some(event) = store.read_stream(stream, 0, 1).await?.into_iter().next() else {
        return Ok(None);
    };
    let record: Record = event.data_as().map_err(ApiError::internal)?;
    if record.request_sha256 != hex::encode(request_fingerprint) {
        return Err(ApiError::invalid(
            FIELD,
            "already used for a different request; use a new key for a new operation",
        ));
    }
    let bytes = hex::decode(&record.response_hex).map_err(ApiError::internal)?;
    R::decode(bytes.as_slice())
        .map(Some)
        .map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use pl_eventlog::MemoryLog;

    use super::*;

    fn at() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    #[tokio::test]
    async fn a_repeat_with_the_same_key_and_body_returns_the_original_response_without_running_again(
    ) {
        let store = MemoryLog::default();
        let key = IdempotencyKey::parse("crm", "apply-42").unwrap();
        let runs = AtomicU32::new(0);
        let call = |answer: &'static str| {
            let runs = &runs;
            move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ApiError>(answer.to_owned())
            }
        };
        let first = run_once(&store, &key, [1; 32], at(), call("first"))
            .await
            .unwrap();
        let again = run_once(&store, &key, [1; 32], at(), call("second"))
            .await
            .unwrap();
        assert_eq!((first.as_str(), again.as_str()), ("first", "first"));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_same_key_with_a_different_body_is_rejected() {
        let store = MemoryLog::default();
        let key = IdempotencyKey::parse("crm", "apply-42").unwrap();
        run_once(&store, &key, [1; 32], at(), || async {
            Ok::<_, ApiError>(String::new())
        })
        .await
        .unwrap();
        let err = run_once(&store, &key, [2; 32], at(), || async {
            Ok::<_, ApiError>(String::new())
        })
        .await
        .unwrap_err();
        assert!(
            matches!(&err, ApiError::InvalidArgument(v) if v[0].field == FIELD),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_request_is_not_recorded_and_may_be_retried() {
        let store = MemoryLog::default();
        let key = IdempotencyKey::parse("crm", "k").unwrap();
        let err = run_once(&store, &key, [1; 32], at(), || async {
            Err::<String, _>(ApiError::rule("not yet"))
        })
        .await;
        assert!(err.is_err());
        let ok = run_once(&store, &key, [1; 32], at(), || async {
            Ok::<_, ApiError>("now".to_owned())
        })
        .await
        .unwrap();
        assert_eq!(ok, "now");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_twins_at_once_run_once_and_all_get_the_first_answer() {
        let store = std::sync::Arc::new(MemoryLog::default());
        let key = IdempotencyKey::parse("crm", "twins").unwrap();
        let runs = std::sync::Arc::new(AtomicU32::new(0));
        let twins: Vec<_> = (0..50)
            .map(|n| {
                let (store, key, runs) = (store.clone(), key.clone(), runs.clone());
                tokio::spawn(async move {
                    run_once(store.as_ref(), &key, [7; 32], at(), || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok::<_, ApiError>(format!("answer of twin {n}"))
                    })
                    .await
                })
            })
            .collect();
        let mut answers = std::collections::BTreeSet::new();
        for twin in twins {
            answers.insert(twin.await.unwrap().unwrap());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(TURNS.lock().unwrap().get("idempotency-crm-twins").is_none());
    }

    #[test]
    fn keys_are_validated_precisely() {
        for bad in ["", "has space", "ünïcode", &"k".repeat(129)] {
            let err = IdempotencyKey::parse("crm", bad).unwrap_err();
            assert!(matches!(err, ApiError::InvalidArgument(_)), "{bad:?}");
        }
        assert!(IdempotencyKey::parse("crm", "order-1:retry_2.x").is_ok());
    }
}
