//! Byte layouts: the canonical encoding that event hashes commit to, and the embedded log's
//! frames. Both are stable formats: auditors re-implement them from this page, so any change is
//! a new format version, never an edit.
//!
//! Canonical encoding of an event (integers little-endian):
//! `stream_len:u16 stream version:u64 id:[16] type_len:u16 type schema_version:u32
//!  recorded_at_ns:i64 occurred_at_ns:i64 correlation:(0|1 [16]) causation:(0|1 [16])
//!  trace_entries:u16 (key_len:u16 key value_len:u16 value)* data_len:u32 data prev_hash:[32]`.
//! The event hash is `SHA-256("partner-ledger/event/v1\n" || canonical)`.
//!
//! A frame of the embedded log is `payload_len:u32 crc32(payload):u32 payload`, where payload is
//! `format:u8(=1) flags:u8 position:u64 canonical hash:[32]`; flag bit 0 marks the last event of
//! an append, so recovery never keeps half an append.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::LogError;
use crate::event::{EventHash, EventMetadata, NewEvent, RecordedEvent};

const HASH_DOMAIN: &[u8] = b"partner-ledger/event/v1\n";
const FINGERPRINT_DOMAIN: &[u8] = b"partner-ledger/fingerprint/v1\n";
pub(crate) const FRAME_HEADER_BYTES: usize = 8;
pub(crate) const FORMAT_V1: u8 = 1;
pub(crate) const FLAG_LAST_IN_APPEND: u8 = 1;
/// Envelope bytes of a frame beyond the variable-length fields.
const FIXED_PAYLOAD_BYTES: usize =
    1 + 1 + 8 + 2 + 8 + 16 + 2 + 4 + 8 + 8 + 17 + 17 + 2 + 4 + 32 + 32;

pub(crate) fn to_nanos(at: DateTime<Utc>, event_id: Uuid, field: &str) -> Result<i64, LogError> {
    at.timestamp_nanos_opt()
        .ok_or_else(|| LogError::InvalidEvent {
            event_id,
            reason: format!("{field} is outside 1677-09-21..2262-04-11"),
        })
}

/// Size of the frame that `encode_frame` will write for this event; limits are checked on it.
pub(crate) fn frame_len(stream: &str, ev: &NewEvent) -> usize {
    let trace: usize = ev
        .metadata
        .trace_context
        .iter()
        .map(|(k, v)| 4 + k.len() + v.len())
        .sum();
    FRAME_HEADER_BYTES
        + FIXED_PAYLOAD_BYTES
        + stream.len()
        + ev.event_type.len()
        + trace
        + ev.data.len()
}

/// The fields that the canonical encoding covers, borrowed from either envelope type.
pub(crate) struct Canonical<'a> {
    pub stream: &'a str,
    pub version: u64,
    pub id: Uuid,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub recorded_at_ns: i64,
    pub metadata: &'a EventMetadata,
    pub occurred_at_ns: i64,
    pub data: &'a [u8],
    pub prev_hash: EventHash,
}

impl Canonical<'_> {
    /// Appends the canonical encoding. Lengths were bounded by `Limits` before we get here,
    /// so the narrowing casts cannot truncate (asserted in debug builds).
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_head(out);
        out.extend_from_slice(self.data);
        out.extend_from_slice(&self.prev_hash.0);
    }

    /// Everything before the data, its length last.
    fn encode_head(&self, out: &mut Vec<u8>) {
        put_str16(out, self.stream);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(self.id.as_bytes());
        put_str16(out, self.event_type);
        out.extend_from_slice(&self.schema_version.to_le_bytes());
        out.extend_from_slice(&self.recorded_at_ns.to_le_bytes());
        out.extend_from_slice(&self.occurred_at_ns.to_le_bytes());
        put_opt_uuid(out, self.metadata.correlation_id);
        put_opt_uuid(out, self.metadata.causation_id);
        debug_assert!(self.metadata.trace_context.len() <= usize::from(u16::MAX));
        out.extend_from_slice(&(self.metadata.trace_context.len() as u16).to_le_bytes());
        for (k, v) in &self.metadata.trace_context {
            put_str16(out, k);
            put_str16(out, v);
        }
        debug_assert!(u32::try_from(self.data.len()).is_ok());
        out.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
    }

    pub fn of(ev: &RecordedEvent) -> Result<Canonical<'_>, LogError> {
        Ok(Canonical {
            stream: &ev.stream,
            version: ev.version,
            id: ev.id,
            event_type: &ev.event_type,
            schema_version: ev.schema_version,
            recorded_at_ns: to_nanos(ev.recorded_at, ev.id, "recorded_at")?,
            metadata: &ev.metadata,
            occurred_at_ns: to_nanos(ev.metadata.occurred_at, ev.id, "occurred_at")?,
            data: &ev.data,
            prev_hash: ev.prev_hash,
        })
    }

    /// The hash of [`Canonical::encode`]'s bytes, fed to the hasher in parts so the data is
    /// not copied first (verification hashes every event of the log).
    pub fn hash(&self) -> EventHash {
        let mut head = Vec::with_capacity(256);
        self.encode_head(&mut head);
        let mut h = Sha256::new();
        h.update(HASH_DOMAIN);
        h.update(&head);
        h.update(self.data);
        h.update(self.prev_hash.0);
        EventHash(h.finalize().into())
    }
}

pub(crate) fn hash_canonical(canonical: &[u8]) -> EventHash {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(canonical);
    EventHash(h.finalize().into())
}

/// Digest of what the caller supplied (not what the store assigned), so a retried append can be
/// told apart from a different event reusing the id.
pub(crate) fn fingerprint(
    event_type: &str,
    schema_version: u32,
    data: &[u8],
    metadata: &EventMetadata,
    occurred_at_ns: i64,
) -> [u8; 16] {
    // Everything but the data, which is hashed where it lies (it was copied in once: a
    // kilobyte per event on every append).
    let mut buf = Vec::with_capacity(128);
    put_str16(&mut buf, event_type);
    buf.extend_from_slice(&schema_version.to_le_bytes());
    buf.extend_from_slice(&occurred_at_ns.to_le_bytes());
    put_opt_uuid(&mut buf, metadata.correlation_id);
    put_opt_uuid(&mut buf, metadata.causation_id);
    buf.extend_from_slice(&(metadata.trace_context.len() as u16).to_le_bytes());
    for (k, v) in &metadata.trace_context {
        put_str16(&mut buf, k);
        put_str16(&mut buf, v);
    }
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let mut h = Sha256::new();
    h.update(FINGERPRINT_DOMAIN);
    h.update(&buf);
    h.update(data);
    let digest: [u8; 32] = h.finalize().into();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

pub(crate) fn fingerprint_recorded(ev: &RecordedEvent) -> Result<[u8; 16], LogError> {
    let occurred = to_nanos(ev.metadata.occurred_at, ev.id, "occurred_at")?;
    Ok(fingerprint(
        &ev.event_type,
        ev.schema_version,
        &ev.data,
        &ev.metadata,
        occurred,
    ))
}

/// Appends one frame for `canonical` and returns the event's hash.
pub(crate) fn encode_frame(
    out: &mut Vec<u8>,
    position: u64,
    flags: u8,
    c: &Canonical<'_>,
) -> EventHash {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    out.push(FORMAT_V1);
    out.push(flags);
    out.extend_from_slice(&position.to_le_bytes());
    let canonical_start = out.len();
    c.encode(out);
    let hash = hash_canonical(&out[canonical_start..]);
    out.extend_from_slice(&hash.0);
    let payload_len = out.len() - start - FRAME_HEADER_BYTES;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    hash
}

/// Why a frame could not be read. Recovery treats both as the end of the good log; readers
/// report them as [`LogError::Corrupt`].
#[derive(Debug)]
pub(crate) struct FrameError {
    pub reason: String,
}

fn bad(reason: impl Into<String>) -> FrameError {
    FrameError {
        reason: reason.into(),
    }
}

/// Reads the header of the frame at `buf[at..]` and returns the payload range, checking the
/// checksum. `max_payload` rejects absurd lengths (a torn or zeroed header) before reading.
pub(crate) fn frame_payload(
    buf: &[u8],
    at: usize,
    max_payload: usize,
) -> Result<std::ops::Range<usize>, FrameError> {
    let header = buf
        .get(at..at + FRAME_HEADER_BYTES)
        .ok_or_else(|| bad("frame header runs past the end"))?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len < FIXED_PAYLOAD_BYTES - 8 || len > max_payload {
        return Err(bad(format!("implausible frame length {len}")));
    }
    let start = at + FRAME_HEADER_BYTES;
    let payload = buf
        .get(start..start + len)
        .ok_or_else(|| bad("frame runs past the end"))?;
    if crc32fast::hash(payload) != crc {
        return Err(bad("frame checksum mismatch"));
    }
    Ok(start..start + len)
}

/// A decoded frame payload.
pub(crate) struct Decoded {
    pub flags: u8,
    pub event: RecordedEvent,
}

/// Decodes a checksummed payload. `payload` is a slice of a larger buffer, so the event data is
/// shared rather than copied.
pub(crate) fn decode_payload(payload: &Bytes) -> Result<Decoded, FrameError> {
    let mut r = Reader {
        buf: payload,
        at: 0,
    };
    let format = r.u8()?;
    if format != FORMAT_V1 {
        return Err(bad(format!("unknown frame format {format}")));
    }
    let flags = r.u8()?;
    let position = r.u64()?;
    let stream = r.str16()?;
    let version = r.u64()?;
    let id = Uuid::from_bytes(r.array::<16>()?);
    let event_type = r.str16()?;
    let schema_version = r.u32()?;
    let recorded_at = DateTime::from_timestamp_nanos(r.i64()?);
    let occurred_at = DateTime::from_timestamp_nanos(r.i64()?);
    let correlation_id = r.opt_uuid()?;
    let causation_id = r.opt_uuid()?;
    let n_trace = r.u16()?;
    let mut trace_context = std::collections::BTreeMap::new();
    for _ in 0..n_trace {
        let k = r.str16()?;
        let v = r.str16()?;
        trace_context.insert(k, v);
    }
    let data_len = r.u32()? as usize;
    let data_start = r.at;
    r.skip(data_len)?;
    let data = payload.slice(data_start..data_start + data_len);
    let prev_hash = EventHash(r.array::<32>()?);
    let hash = EventHash(r.array::<32>()?);
    if r.at != payload.len() {
        return Err(bad("trailing bytes after event"));
    }
    Ok(Decoded {
        flags,
        event: RecordedEvent {
            stream,
            version,
            position,
            recorded_at,
            id,
            event_type,
            schema_version,
            data,
            metadata: EventMetadata {
                occurred_at,
                correlation_id,
                causation_id,
                trace_context,
            },
            prev_hash,
            hash,
        },
    })
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_uuid(out: &mut Vec<u8>, id: Option<Uuid>) {
    match id {
        Some(id) => {
            out.push(1);
            out.extend_from_slice(id.as_bytes());
        }
        None => {
            out.push(0);
            out.extend_from_slice(&[0u8; 16]);
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FrameError> {
        let s = self
            .buf
            .get(self.at..self.at.saturating_add(n))
            .ok_or_else(|| bad("field runs past the end of the frame"))?;
        self.at += n;
        Ok(s)
    }
    fn skip(&mut self, n: usize) -> Result<(), FrameError> {
        self.take(n).map(|_| ())
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, FrameError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn str16(&mut self) -> Result<String, FrameError> {
        let len = usize::from(self.u16()?);
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| bad("string field is not utf-8"))
    }
    fn opt_uuid(&mut self) -> Result<Option<Uuid>, FrameError> {
        let tag = self.u8()?;
        let id = Uuid::from_bytes(self.array::<16>()?);
        match tag {
            0 => Ok(None),
            1 => Ok(Some(id)),
            t => Err(bad(format!("bad option tag {t}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GENESIS_HASH;

    fn event() -> NewEvent {
        let mut md = EventMetadata::at(DateTime::from_timestamp_nanos(1_700_000_000_123_456_789));
        md.correlation_id = Some(Uuid::from_u128(7));
        md.trace_context
            .insert("traceparent".into(), "00-abc-def-01".into());
        NewEvent {
            id: Uuid::from_u128(42),
            event_type: "CommissionAccrued".into(),
            schema_version: 3,
            data: Bytes::from_static(br#"{"amount":"12.34"}"#),
            metadata: md,
        }
    }

    #[test]
    fn a_frame_decodes_to_the_event_that_was_encoded() {
        let ev = event();
        let c = Canonical {
            stream: "partner-1",
            version: 5,
            id: ev.id,
            event_type: &ev.event_type,
            schema_version: ev.schema_version,
            recorded_at_ns: 99,
            metadata: &ev.metadata,
            occurred_at_ns: to_nanos(ev.metadata.occurred_at, ev.id, "occurred_at").unwrap(),
            data: &ev.data,
            prev_hash: GENESIS_HASH,
        };
        let mut buf = Vec::new();
        let hash = encode_frame(&mut buf, 17, FLAG_LAST_IN_APPEND, &c);
        assert_eq!(buf.len(), frame_len("partner-1", &ev));
        // Hashed in parts by verification, whole when written: the same hash.
        let mut canonical = Vec::new();
        c.encode(&mut canonical);
        assert_eq!(c.hash(), hash_canonical(&canonical));
        assert_eq!(c.hash(), hash);
        let bytes = Bytes::from(buf);
        let range = frame_payload(&bytes, 0, 1 << 20).unwrap();
        let d = decode_payload(&bytes.slice(range)).unwrap();
        assert_eq!(d.flags, FLAG_LAST_IN_APPEND);
        assert_eq!(d.event.position, 17);
        assert_eq!(d.event.version, 5);
        assert_eq!(d.event.stream, "partner-1");
        assert_eq!(d.event.data, ev.data);
        assert_eq!(d.event.metadata, ev.metadata);
        assert_eq!(d.event.hash, hash);
        assert_eq!(Canonical::of(&d.event).unwrap().hash(), hash);
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_frame_is_detected() {
        let ev = event();
        let c = Canonical {
            stream: "s",
            version: 0,
            id: ev.id,
            event_type: &ev.event_type,
            schema_version: 1,
            recorded_at_ns: 1,
            metadata: &ev.metadata,
            occurred_at_ns: 1,
            data: &ev.data,
            prev_hash: GENESIS_HASH,
        };
        let mut buf = Vec::new();
        encode_frame(&mut buf, 0, FLAG_LAST_IN_APPEND, &c);
        for i in 0..buf.len() {
            let mut copy = buf.clone();
            copy[i] ^= 0x10;
            assert!(
                frame_payload(&copy, 0, 1 << 20).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    /// Fingerprints are stored (index snapshots, EventStoreDB metadata) and compared with a
    /// retry's: they must never change for the same event.
    #[test]
    fn a_fingerprint_is_the_digest_it_always_was() {
        let mut md = EventMetadata::at(DateTime::from_timestamp_nanos(1_700_000_000_123_456_789));
        md.correlation_id = Some(Uuid::from_u128(7));
        md.trace_context
            .insert("traceparent".into(), "00-abc-def-01".into());
        let data = br#"{"amount":"12.34"}"#;
        let got = fingerprint("CommissionAccrued", 3, data, &md, 1_700_000_000_123_456_789);
        // The form it was first computed in: the fields and the data in one buffer.
        let mut buf = Vec::new();
        put_str16(&mut buf, "CommissionAccrued");
        buf.extend_from_slice(&3u32.to_le_bytes());
        buf.extend_from_slice(&1_700_000_000_123_456_789i64.to_le_bytes());
        put_opt_uuid(&mut buf, md.correlation_id);
        put_opt_uuid(&mut buf, md.causation_id);
        buf.extend_from_slice(&1u16.to_le_bytes());
        put_str16(&mut buf, "traceparent");
        put_str16(&mut buf, "00-abc-def-01");
        buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
        buf.extend_from_slice(data);
        let mut h = Sha256::new();
        h.update(FINGERPRINT_DOMAIN);
        h.update(&buf);
        let digest: [u8; 32] = h.finalize().into();
        assert_eq!(got[..], digest[..16]);
        assert_eq!(hex::encode(got), "c69b919dd38b4b5d18dc6a01aeb25f66");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the disk hands back, decoding returns an error instead of panicking.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let buf = Bytes::from(bytes);
            if let Ok(range) = frame_payload(&buf, 0, 1 << 20) {
                let _ = decode_payload(&buf.slice(range));
            }
            let _ = decode_payload(&buf);
        }
    }
}
