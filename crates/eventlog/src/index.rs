//! The sequencer shared by the embedded and memory adapters: validates an append, decides
//! whether it is an idempotent retry, checks the expected version, and assigns versions,
//! positions, `recorded_at` and the hash chain. It holds every stream's head in memory.

use std::collections::HashSet;

use uuid::Uuid;

use crate::codec::{self, Canonical};
use crate::error::LogError;
use crate::event::{
    AppendResult, EventHash, ExpectedVersion, NewEvent, StreamAppend, GENESIS_HASH,
};
use crate::limits::{Limits, MAX_APPEND_STREAMS};
use crate::sharded::ShardedMap;

#[derive(Debug, Default)]
pub(crate) struct StreamState {
    /// Global position of each version, in version order (so also ascending).
    pub positions: Vec<u64>,
    pub last_hash: EventHash,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct IdEntry {
    pub position: u64,
    pub fingerprint: [u8; 16],
}

/// What `validate` learned about an append, reused under the lock.
#[derive(Debug)]
pub(crate) struct Validated {
    pub occurred_ns: Vec<i64>,
    pub fingerprints: Vec<[u8; 16]>,
    pub bytes: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Sharded, as `ids`: they grow with the log under its lock (see `sharded`).
    pub streams: ShardedMap<String, StreamState>,
    pub ids: ShardedMap<Uuid, IdEntry>,
    /// Position the next event will get (= number of events assigned so far).
    pub next_position: u64,
    /// `recorded_at` never goes backwards, even if the wall clock does, so "known at recording
    /// time R" and "known at position P" agree.
    pub last_recorded_at_ns: i64,
}

/// The one result of a single-stream append made through the multi-part path.
pub(crate) fn single(mut results: Vec<AppendResult>) -> Result<AppendResult, LogError> {
    match (results.pop(), results.is_empty()) {
        (Some(r), true) => Ok(r),
        _ => Err(LogError::Io(
            "sequencer answered other than one outcome for one append".into(),
        )),
    }
}

/// One stream's share of an append, validated ([`Index::append_parts`]).
pub(crate) struct Part<'a> {
    pub stream: &'a str,
    pub expected: ExpectedVersion,
    pub events: &'a [NewEvent],
    pub v: &'a Validated,
}

pub(crate) enum Outcome {
    /// Every event was already stored by an earlier identical append.
    Duplicate(AppendResult),
    Appended(AppendResult),
}

/// Checks an append against the limits without touching any state, so it can run before the
/// lock is taken. Nothing is written when this fails.
pub(crate) fn validate(
    stream: &str,
    events: &[NewEvent],
    limits: &Limits,
) -> Result<Validated, LogError> {
    validate_stream_name(stream, limits)?;
    if events.is_empty() {
        return Err(LogError::LimitExceeded {
            what: "events in append (must be at least 1)",
            actual: 0,
            limit: limits.max_events_per_append as u64,
        });
    }
    if events.len() > limits.max_events_per_append {
        return Err(LogError::LimitExceeded {
            what: "events in append",
            actual: events.len() as u64,
            limit: limits.max_events_per_append as u64,
        });
    }
    let mut seen = HashSet::with_capacity(events.len());
    let mut out = Validated {
        occurred_ns: Vec::with_capacity(events.len()),
        fingerprints: Vec::with_capacity(events.len()),
        bytes: 0,
    };
    for ev in events {
        if !seen.insert(ev.id) {
            return Err(LogError::InvalidEvent {
                event_id: ev.id,
                reason: "event id appears twice in one append".into(),
            });
        }
        validate_event(ev, limits)?;
        let size = codec::frame_len(stream, ev);
        if size > limits.max_event_bytes {
            return Err(LogError::LimitExceeded {
                what: "encoded event bytes",
                actual: size as u64,
                limit: limits.max_event_bytes as u64,
            });
        }
        out.bytes += size;
        let occurred = codec::to_nanos(ev.metadata.occurred_at, ev.id, "occurred_at")?;
        out.fingerprints.push(codec::fingerprint(
            &ev.event_type,
            ev.schema_version,
            &ev.data,
            &ev.metadata,
            occurred,
        ));
        out.occurred_ns.push(occurred);
    }
    if out.bytes > limits.max_append_bytes {
        return Err(LogError::LimitExceeded {
            what: "encoded append bytes",
            actual: out.bytes as u64,
            limit: limits.max_append_bytes as u64,
        });
    }
    Ok(out)
}

/// [`validate`] for each part of a multi-stream append, plus what only the whole can break:
/// at least one part and at most [`MAX_APPEND_STREAMS`], distinct streams, event ids unique
/// across parts, and [`Limits::max_append_bytes`] for all parts together (the embedded log's
/// bound on unsynced bytes rests on it).
pub(crate) fn validate_parts(
    appends: &[StreamAppend],
    limits: &Limits,
) -> Result<Vec<Validated>, LogError> {
    if appends.is_empty() || appends.len() > MAX_APPEND_STREAMS {
        let what = if appends.is_empty() {
            "streams in one append (must be at least 1)"
        } else {
            "streams in one append"
        };
        return Err(LogError::LimitExceeded {
            what,
            actual: appends.len() as u64,
            limit: MAX_APPEND_STREAMS as u64,
        });
    }
    let mut streams = HashSet::with_capacity(appends.len());
    let mut ids = HashSet::new();
    let mut bytes = 0usize;
    let mut out = Vec::with_capacity(appends.len());
    for a in appends {
        let v = validate(&a.stream, &a.events, limits)?;
        if !streams.insert(a.stream.as_str()) {
            return Err(LogError::InvalidStreamName {
                reason: format!("stream {} appears twice in one append", a.stream),
            });
        }
        if let Some(ev) = a.events.iter().find(|e| !ids.insert(e.id)) {
            return Err(LogError::InvalidEvent {
                event_id: ev.id,
                reason: "event id appears twice in one append".into(),
            });
        }
        bytes += v.bytes;
        out.push(v);
    }
    if bytes > limits.max_append_bytes {
        return Err(LogError::LimitExceeded {
            what: "encoded append bytes",
            actual: bytes as u64,
            limit: limits.max_append_bytes as u64,
        });
    }
    Ok(out)
}

pub(crate) fn validate_stream_name(stream: &str, limits: &Limits) -> Result<(), LogError> {
    let reason = if stream.is_empty() {
        "stream name is empty".to_owned()
    } else if stream.len() > limits.max_stream_name_bytes {
        format!(
            "stream name is {} bytes, limit {}",
            stream.len(),
            limits.max_stream_name_bytes
        )
    } else if stream.starts_with('$') {
        "stream names starting with '$' are reserved for the store".to_owned()
    } else if has_control_or_whitespace(stream) {
        "stream name contains whitespace or a control character".to_owned()
    } else {
        return Ok(());
    };
    Err(LogError::InvalidStreamName { reason })
}

/// Whether `s` holds a control character or whitespace. Stream names are checked on every
/// read and append (about a dozen per conversion), event types on every append; both are
/// nearly always ASCII: a byte test then, the character classes only for the rest.
fn has_control_or_whitespace(s: &str) -> bool {
    if s.is_ascii() {
        return s
            .bytes()
            .any(|b| b.is_ascii_control() || b.is_ascii_whitespace());
    }
    s.chars().any(|c| c.is_control() || c.is_whitespace())
}

fn validate_event(ev: &NewEvent, limits: &Limits) -> Result<(), LogError> {
    let invalid = |reason: String| LogError::InvalidEvent {
        event_id: ev.id,
        reason,
    };
    if ev.id.is_nil() {
        return Err(invalid("event id is the nil uuid".into()));
    }
    if ev.event_type.is_empty() || ev.event_type.len() > limits.max_event_type_bytes {
        return Err(invalid(format!(
            "event type must be 1..={} bytes, got {}",
            limits.max_event_type_bytes,
            ev.event_type.len()
        )));
    }
    if has_control_or_whitespace(&ev.event_type) {
        return Err(invalid(
            "event type contains whitespace or a control character".into(),
        ));
    }
    if ev.metadata.trace_context.len() > limits.max_trace_entries {
        return Err(invalid(format!(
            "trace context has {} entries, limit {}",
            ev.metadata.trace_context.len(),
            limits.max_trace_entries
        )));
    }
    for (k, v) in &ev.metadata.trace_context {
        if k.len() > limits.max_trace_value_bytes || v.len() > limits.max_trace_value_bytes {
            return Err(invalid(format!(
                "trace context entry {k:?} exceeds {} bytes",
                limits.max_trace_value_bytes
            )));
        }
    }
    // The data is the caller's bytes in the format its schema version names (JSON for most
    // events, protobuf for partner book events); the log only refuses none at all.
    if ev.data.is_empty() {
        return Err(invalid("data is empty".into()));
    }
    Ok(())
}

impl Index {
    pub fn stream_last_version(&self, stream: &str) -> Option<u64> {
        self.streams
            .get(stream)
            .and_then(|s| s.positions.len().checked_sub(1))
            .map(|v| v as u64)
    }

    /// Decides an append, which may write to several distinct streams as one, and assigns
    /// each event of its new parts its place, handing it to `sink` (which stores it and
    /// returns its hash) in order. Every part is decided first (an identical retry, or new
    /// events at its expected version); only when all pass are the new parts' events
    /// assigned, so a conflict in any part assigns nothing. Only the last new event carries
    /// `FLAG_LAST_IN_APPEND`, so that recovery restores all the parts or none. The streams must
    /// be distinct and the event ids unique across parts ([`validate_parts`]).
    pub fn append_parts(
        &mut self,
        parts: &[Part<'_>],
        now_ns: i64,
        mut sink: impl FnMut(u64, u8, &Canonical<'_>) -> EventHash,
    ) -> Result<Vec<Outcome>, LogError> {
        let mut duplicates = Vec::with_capacity(parts.len());
        for p in parts {
            duplicates.push(self.decide_part(p)?);
        }
        let last_new = duplicates.iter().rposition(Option::is_none);
        let mut outcomes = Vec::with_capacity(parts.len());
        for (i, (p, duplicate)) in parts.iter().zip(duplicates).enumerate() {
            outcomes.push(match duplicate {
                Some(r) => Outcome::Duplicate(r),
                None => Outcome::Appended(self.sequence(p, now_ns, last_new == Some(i), &mut sink)),
            });
        }
        Ok(outcomes)
    }

    /// An identical retry of the part (its original result), or `None` when the part is new
    /// and its expected version holds; otherwise the conflict.
    fn decide_part(&self, p: &Part<'_>) -> Result<Option<AppendResult>, LogError> {
        if let Some(r) = self.duplicate_of(p.stream, p.expected, p.events, p.v)? {
            return Ok(Some(r));
        }
        let actual = self.stream_last_version(p.stream);
        let ok = match p.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::Exact(n) => actual == Some(n),
        };
        if !ok {
            return Err(LogError::WrongExpectedVersion {
                stream: p.stream.to_owned(),
                expected: p.expected,
                actual,
            });
        }
        Ok(None)
    }

    /// Assigns a decided part's events their versions, positions, `recorded_at` and hashes.
    /// `closes_append`: its last event ends the whole append (the flag recovery reads).
    fn sequence(
        &mut self,
        p: &Part<'_>,
        now_ns: i64,
        closes_append: bool,
        sink: &mut impl FnMut(u64, u8, &Canonical<'_>) -> EventHash,
    ) -> AppendResult {
        let recorded_at_ns = now_ns.max(self.last_recorded_at_ns);
        let first_position = self.next_position;
        let state = self.streams.get_or_default(p.stream);
        let first_version = state.positions.len() as u64;
        let mut prev_hash = if state.positions.is_empty() {
            GENESIS_HASH
        } else {
            state.last_hash
        };
        for (i, ev) in p.events.iter().enumerate() {
            let position = first_position + i as u64;
            let flags = if closes_append && i + 1 == p.events.len() {
                codec::FLAG_LAST_IN_APPEND
            } else {
                0
            };
            let c = Canonical {
                stream: p.stream,
                version: first_version + i as u64,
                id: ev.id,
                event_type: &ev.event_type,
                schema_version: ev.schema_version,
                recorded_at_ns,
                metadata: &ev.metadata,
                occurred_at_ns: p.v.occurred_ns[i],
                data: &ev.data,
                prev_hash,
            };
            prev_hash = sink(position, flags, &c);
            state.positions.push(position);
            self.ids.insert(
                ev.id,
                IdEntry {
                    position,
                    fingerprint: p.v.fingerprints[i],
                },
            );
        }
        state.last_hash = prev_hash;
        let n = p.events.len() as u64;
        self.next_position += n;
        self.last_recorded_at_ns = recorded_at_ns;
        AppendResult {
            last_version: first_version + n - 1,
            first_position,
            last_position: first_position + n - 1,
        }
    }

    /// An append whose first event id is already stored is either an exact retry (same ids, same
    /// bodies, same place in the same stream) or a conflict; never a partial write.
    fn duplicate_of(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
        v: &Validated,
    ) -> Result<Option<AppendResult>, LogError> {
        let stored: Vec<Option<&IdEntry>> = events.iter().map(|e| self.ids.get(&e.id)).collect();
        if stored.iter().all(Option::is_none) {
            return Ok(None);
        }
        let conflict = |event_id: Uuid, reason: &str| LogError::EventIdConflict {
            event_id,
            reason: reason.to_owned(),
        };
        let Some(state) = self.streams.get(stream) else {
            let id = events
                .iter()
                .zip(&stored)
                .find(|(_, s)| s.is_some())
                .map_or(events[0].id, |(e, _)| e.id);
            return Err(conflict(id, "the id belongs to an event of another stream"));
        };
        let mut first_version = None;
        for (i, (ev, entry)) in events.iter().zip(&stored).enumerate() {
            let Some(entry) = entry else {
                return Err(conflict(
                    events[0].id,
                    "only some of the append's events are already stored",
                ));
            };
            let Ok(version) = state.positions.binary_search(&entry.position) else {
                return Err(conflict(
                    ev.id,
                    "the id belongs to an event of another stream",
                ));
            };
            let version = version as u64;
            let first = *first_version.get_or_insert(version);
            if version != first + i as u64 {
                return Err(conflict(ev.id, "the ids are stored in a different order"));
            }
            if entry.fingerprint != v.fingerprints[i] {
                return Err(conflict(ev.id, "the id was stored with a different body"));
            }
        }
        let first = first_version.unwrap_or(0);
        let same_place = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => first == 0,
            ExpectedVersion::Exact(n) => first == n + 1,
        };
        if !same_place {
            return Err(LogError::WrongExpectedVersion {
                stream: stream.to_owned(),
                expected,
                actual: self.stream_last_version(stream),
            });
        }
        let last = first + events.len() as u64 - 1;
        Ok(Some(AppendResult {
            last_version: last,
            first_position: state.positions[first as usize],
            last_position: state.positions[last as usize],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_name_with_any_control_character_or_whitespace_is_refused_whatever_its_script() {
        let limits = Limits::default();
        let chars = (0u32..0x80)
            .chain([0x85, 0xA0, 0x2028, 0x3000, 0xE9, 0x4E2D])
            .filter_map(char::from_u32);
        for c in chars {
            let expected = c.is_control() || c.is_whitespace();
            let ascii = format!("visitor-{c}-x");
            assert_eq!(
                validate_stream_name(&ascii, &limits).is_err(),
                expected,
                "{c:?} (U+{:04X})",
                u32::from(c)
            );
            let accented = format!("café-{c}");
            assert_eq!(
                validate_stream_name(&accented, &limits).is_err(),
                expected,
                "{accented:?}"
            );
        }
    }
}
