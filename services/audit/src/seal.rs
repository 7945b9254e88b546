//! Signed checkpoints of the log, and the verification of chains and seals.
//!
//! A seal commits to every stream head up to a log position: the Merkle root over the leaves
//! `SHA-256(0x00 ‖ u32 len(stream) ‖ stream ‖ u64 version ‖ head hash)`, one per stream in
//! byte order of its name, combined pairwise as `SHA-256(0x01 ‖ left ‖ right)` (an odd node
//! moves up unchanged; no leaves: `SHA-256("")`). The ed25519 signature covers
//! `"partner-ledger/seal/v1" ‖ u64 position ‖ u64 events ‖ u64 streams ‖ root` (integers
//! big-endian). A seal is the event `LogSealed` in the stream `audit-seals`; verifying it needs
//! the log and the public key only. Because every event's hash covers its predecessor's, a seal
//! fixes every event of every stream up to its position: altering, removing or inserting any
//! of them changes a head hash or breaks a chain.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use pl_eventlog::{EventHash, EventMetadata, EventStore, ExpectedVersion, NewEvent, RecordedEvent};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{AuditError, PAGE_EVENTS};

pub const SEALS_STREAM: &str = "audit-seals";
/// A signing key held on the heap (moved into the sealing task).
pub type SigningKeyRef = Box<SigningKey>;
pub const SEAL_EVENT: &str = "LogSealed";
const DOMAIN: &[u8] = b"partner-ledger/seal/v1";
/// Seals read when verifying; a log sealed hourly for a century stays under it.
pub const MAX_SEALS: usize = 1_000_000;

/// The `LogSealed` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The last position covered.
    pub up_to_position: u64,
    /// Events up to it, counted.
    pub events: u64,
    pub streams: u64,
    /// Hex.
    pub merkle_root: String,
    /// Hex of the 32-byte ed25519 public key that signed.
    pub public_key: String,
    /// Hex of the 64-byte signature.
    pub signature: String,
    pub sealed_at: DateTime<Utc>,
}

fn leaf(stream: &str, version: u64, hash: &EventHash) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(
        u32::try_from(stream.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    h.update(stream.as_bytes());
    h.update(version.to_be_bytes());
    h.update(hash.0);
    h.finalize().into()
}

/// The Merkle root over stream heads (name → (version, hash)), in name order.
pub fn merkle_root(heads: &BTreeMap<String, (u64, EventHash)>) -> [u8; 32] {
    let mut level: Vec<[u8; 32]> = heads.iter().map(|(s, (v, h))| leaf(s, *v, h)).collect();
    if level.is_empty() {
        return Sha256::digest(b"").into();
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| {
                if let [l, r] = pair {
                    let mut h = Sha256::new();
                    h.update([1u8]);
                    h.update(l);
                    h.update(r);
                    h.finalize().into()
                } else {
                    // `chunks(2)` gives one item only at the odd end: it moves up unchanged.
                    pair[0]
                }
            })
            .collect();
    }
    level[0]
}

fn message(position: u64, events: u64, streams: u64, root: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 24 + 32);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&position.to_be_bytes());
    m.extend_from_slice(&events.to_be_bytes());
    m.extend_from_slice(&streams.to_be_bytes());
    m.extend_from_slice(root);
    m
}

/// Reads a PKCS#8 PEM private key (`openssl genpkey -algorithm ed25519`).
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, AuditError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| AuditError::Key(format!("private key: {e}")))
}

/// Reads an SPKI PEM public key (`openssl pkey -pubout`) or 64 hex characters.
pub fn verifying_key_from(text: &str) -> Result<VerifyingKey, AuditError> {
    let t = text.trim();
    if t.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(t)
            .map_err(|e| AuditError::Key(format!("public key: {e}")));
    }
    let bytes: [u8; 32] = hex::decode(t)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| AuditError::Key("public key: expected PEM or 64 hex characters".into()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| AuditError::Key(format!("public key: {e}")))
}

/// Stream heads as of the log's current end, the last position, and the events counted.
/// Positions are counted, never assumed gap-free: EventStoreDB's are byte offsets.
async fn heads_now(
    store: &dyn EventStore,
) -> Result<(BTreeMap<String, (u64, EventHash)>, Option<u64>, u64), AuditError> {
    let mut heads = BTreeMap::new();
    let (mut from, mut last, mut events) = (0, None, 0u64);
    loop {
        let page = store.read_all(from, PAGE_EVENTS).await?;
        let Some(end) = page.last() else { break };
        from = end.position + 1;
        for e in &page {
            heads.insert(e.stream.clone(), (e.version, e.hash));
            last = Some(e.position);
            events += 1;
        }
    }
    Ok((heads, last, events))
}

/// Seals the log as it is now: appends a `LogSealed` committing to every stream head. Returns
/// `None` for an empty log (nothing to commit to).
pub async fn seal(
    store: &dyn EventStore,
    key: &SigningKey,
    sealed_at: DateTime<Utc>,
) -> Result<Option<Seal>, AuditError> {
    let (heads, last, events) = heads_now(store).await?;
    let Some(position) = last else {
        return Ok(None);
    };
    let root = merkle_root(&heads);
    let streams = heads.len() as u64;
    let signature = key.sign(&message(position, events, streams, &root));
    let s = Seal {
        up_to_position: position,
        events,
        streams,
        merkle_root: hex::encode(root),
        public_key: hex::encode(key.verifying_key().to_bytes()),
        signature: hex::encode(signature.to_bytes()),
        sealed_at,
    };
    // The id derives from what is sealed and when: a retried seal appends once.
    let mut name = message(position, events, streams, &root);
    name.extend_from_slice(sealed_at.to_rfc3339().as_bytes());
    let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, &name);
    let event = NewEvent::json(id, SEAL_EVENT, 1, &s, EventMetadata::at(sealed_at))
        .map_err(|e| AuditError::Invalid(format!("seal event: {e}")))?;
    store
        .append(SEALS_STREAM, ExpectedVersion::Any, vec![event])
        .await?;
    Ok(Some(s))
}

/// Seals only when the log grew since the last seal (the periodic sealer's rule).
pub async fn seal_if_grown(
    store: &dyn EventStore,
    key: &SigningKey,
    sealed_at: DateTime<Utc>,
) -> Result<Option<Seal>, AuditError> {
    if let Some(seal_position) = last_seal_position(store).await? {
        // Anything after the last seal's own event is growth (positions may have gaps:
        // EventStoreDB's are byte offsets, so nothing is computed from them).
        if store.read_all(seal_position + 1, 1).await?.is_empty() {
            return Ok(None);
        }
    }
    seal(store, key, sealed_at).await
}

async fn last_seal_position(store: &dyn EventStore) -> Result<Option<u64>, AuditError> {
    let Some(v) = store.stream_version(SEALS_STREAM).await? else {
        return Ok(None);
    };
    let page = store.read_stream(SEALS_STREAM, v, 1).await?;
    Ok(page.first().map(|e| e.position))
}

/// The first thing wrong with the log, if anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyOutcome {
    pub events_checked: u64,
    pub streams_checked: u64,
    pub seals_checked: u64,
    /// Seals whose signature was checked against the given public key.
    pub signatures_checked: u64,
    /// `None` when every chain and every seal verifies.
    pub first_break: Option<String>,
}

impl VerifyOutcome {
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none()
    }
}

/// Walks every stream's hash chain and, on the same walk, checks every seal: its Merkle root
/// against the stream heads recomputed from the log at its position and, with `public_key`,
/// that the key signed it. Reports the first break precisely; a broken chain before any seal
/// (a chain break is what tampering shows first).
pub async fn verify(
    store: &dyn EventStore,
    public_key: Option<&VerifyingKey>,
) -> Result<VerifyOutcome, AuditError> {
    // The seals first (one small stream), by the position they cover.
    let mut seals: Vec<(u64, Seal)> = Vec::new();
    let mut not_a_seal = None;
    let mut from = 0;
    'seals: loop {
        let page = store.read_stream(SEALS_STREAM, from, PAGE_EVENTS).await?;
        let Some(last) = page.last() else { break };
        from = last.version + 1;
        for e in &page {
            if seals.len() >= MAX_SEALS {
                return Err(AuditError::Invalid(format!("more than {MAX_SEALS} seals")));
            }
            match e.data_as::<Seal>() {
                Ok(s) => seals.push((e.position, s)),
                Err(err) => {
                    not_a_seal = Some(format!(
                        "seal at position {}: not a seal: {err}",
                        e.position
                    ));
                    break 'seals;
                }
            }
        }
    }
    seals.sort_by_key(|(_, s)| s.up_to_position);

    let mut out = VerifyOutcome {
        events_checked: 0,
        streams_checked: 0,
        seals_checked: 0,
        signatures_checked: 0,
        first_break: None,
    };
    let mut seal_break: Option<String> = None;
    let mut heads: BTreeMap<String, (u64, EventHash)> = BTreeMap::new();
    let mut next = seals.iter().peekable();
    let (mut last_position, mut counted) = (None, 0u64);
    let walked = {
        let visit = |e: &RecordedEvent| {
            if seal_break.is_some() || not_a_seal.is_some() {
                return;
            }
            // Every seal covering positions before this event is checked on the heads so far.
            while let Some((at, s)) = next.peek() {
                if s.up_to_position >= e.position {
                    break;
                }
                if let Some(b) = check(
                    s,
                    *at,
                    &heads,
                    (last_position, counted),
                    public_key,
                    &mut out,
                ) {
                    seal_break = Some(b);
                    return;
                }
                next.next();
            }
            match heads.get_mut(e.stream.as_str()) {
                Some(head) => *head = (e.version, e.hash),
                None => {
                    heads.insert(e.stream.clone(), (e.version, e.hash));
                }
            }
            last_position = Some(e.position);
            counted += 1;
        };
        pl_eventlog::verify_visiting(store, visit).await
    };
    let chains = match walked {
        Ok(c) => c,
        // Bytes altered without fixing the frame checksum: the file itself says where.
        Err(pl_eventlog::LogError::Corrupt { offset, reason }) => {
            return Ok(VerifyOutcome {
                events_checked: 0,
                streams_checked: 0,
                seals_checked: 0,
                signatures_checked: 0,
                first_break: Some(format!(
                    "the log file is corrupt at byte offset {offset}: {reason}"
                )),
            })
        }
        Err(e) => return Err(e.into()),
    };
    out.events_checked = chains.events_checked;
    out.streams_checked = chains.streams_checked;
    if let Some(b) = chains.first_break {
        out.first_break = Some(format!("hash chain: {b}"));
        return Ok(out);
    }
    if let Some(b) = not_a_seal.or(seal_break) {
        out.first_break = Some(b);
        return Ok(out);
    }
    for (at, s) in next {
        if let Some(b) = check(
            s,
            *at,
            &heads,
            (last_position, counted),
            public_key,
            &mut out,
        ) {
            out.first_break = Some(b);
            break;
        }
    }
    Ok(out)
}

fn check(
    s: &Seal,
    at: u64,
    heads: &BTreeMap<String, (u64, EventHash)>,
    (last_position, counted): (Option<u64>, u64),
    public_key: Option<&VerifyingKey>,
    out: &mut VerifyOutcome,
) -> Option<String> {
    out.seals_checked += 1;
    let here = format!(
        "seal at position {at} (covering positions up to {})",
        s.up_to_position
    );
    if last_position != Some(s.up_to_position) {
        return Some(format!("{here}: the log holds no event at that position"));
    }
    if counted != s.events {
        return Some(format!(
            "{here}: the log holds {counted} events up to that position, the seal says {}",
            s.events
        ));
    }
    let root = merkle_root(heads);
    if hex::encode(root) != s.merkle_root || heads.len() as u64 != s.streams {
        return Some(format!(
            "{here}: merkle root of {} stream heads is {}, the seal says {} over {} streams",
            heads.len(),
            hex::encode(root),
            s.merkle_root,
            s.streams
        ));
    }
    // Without a key the root is checked, the signature is not.
    let key = public_key?;
    if hex::encode(key.to_bytes()) != s.public_key {
        return Some(format!(
            "{here}: signed by key {}, not by the given public key",
            s.public_key
        ));
    }
    let signature = hex::decode(&s.signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b));
    let Some(signature) = signature else {
        return Some(format!("{here}: the signature is not 64 hex-encoded bytes"));
    };
    if key
        .verify(
            &message(s.up_to_position, s.events, s.streams, &root),
            &signature,
        )
        .is_err()
    {
        return Some(format!("{here}: the signature does not verify"));
    }
    out.signatures_checked += 1;
    None
}
