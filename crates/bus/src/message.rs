//! Messages, subjects and the checks every adapter applies before it accepts a message, so the
//! in-process bus rejects exactly what NATS would.

use std::collections::BTreeMap;

use bytes::Bytes;
use uuid::Uuid;

use crate::error::BusError;

/// Longest subject accepted (NATS has no hard limit; long subjects cost memory in every index).
pub const MAX_SUBJECT_BYTES: usize = 256;
/// Headers per message, including the ones the dead-letter path adds.
pub const MAX_HEADERS: usize = 64;
/// Bytes of one header name or value.
pub const MAX_HEADER_BYTES: usize = 4096;
/// Longest durable consumer name (it is also a subject token of the dead-letter subject).
pub const MAX_DURABLE_NAME_BYTES: usize = 64;
/// Subject context reserved for dead letters: `<prefix>.dlq.<durable_name>`.
pub const DEAD_LETTER_CONTEXT: &str = "dlq";

/// One integration event on the bus. `id` is the event id: publishing the same id twice within
/// the duplicate window stores it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: Uuid,
    pub subject: String,
    pub payload: Bytes,
    /// Application headers (`traceparent`, `pl-event-type`...). Names starting with `Nats-` are
    /// reserved for the broker.
    pub headers: BTreeMap<String, String>,
}

/// `"<prefix>.<context>.<event_type>"`, each token checked: non-empty, no whitespace, dots or
/// wildcards. The context `dlq` is reserved for dead letters.
pub fn subject(prefix: &str, context: &str, event_type: &str) -> Result<String, BusError> {
    let full = format!("{prefix}.{context}.{event_type}");
    for token in [prefix, context, event_type] {
        check_token(token).map_err(|reason| BusError::InvalidSubject {
            subject: full.clone(),
            reason,
        })?;
    }
    if context == DEAD_LETTER_CONTEXT {
        return Err(BusError::InvalidSubject {
            subject: full,
            reason: format!("context {DEAD_LETTER_CONTEXT:?} is reserved for dead letters"),
        });
    }
    check_literal_subject(&full)?;
    Ok(full)
}

/// The subject a durable consumer's dead letters go to.
pub fn dead_letter_subject(prefix: &str, durable_name: &str) -> String {
    format!("{prefix}.{DEAD_LETTER_CONTEXT}.{durable_name}")
}

/// A token of a literal subject: non-empty, printable ASCII, no dot, no wildcard.
pub(crate) fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("empty token".to_owned());
    }
    if let Some(c) = token
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '.' | '*' | '>'))
    {
        return Err(format!("token {token:?} contains {c:?}"));
    }
    Ok(())
}

fn check_len(subject: &str) -> Result<(), BusError> {
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err(BusError::InvalidSubject {
            subject: subject.chars().take(64).collect(),
            reason: format!("longer than {MAX_SUBJECT_BYTES} bytes"),
        });
    }
    Ok(())
}

/// A subject a message is published to: tokens as [`check_token`].
pub(crate) fn check_literal_subject(subject: &str) -> Result<(), BusError> {
    check_len(subject)?;
    for token in subject.split('.') {
        check_token(token).map_err(|reason| BusError::InvalidSubject {
            subject: subject.to_owned(),
            reason,
        })?;
    }
    Ok(())
}

/// A consumer filter: literal tokens, `*` for one token, `>` as the last token for one or more.
pub(crate) fn check_filter(filter: &str) -> Result<(), BusError> {
    check_len(filter)?;
    let tokens: Vec<&str> = filter.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        let ok = match *token {
            "*" => Ok(()),
            ">" if i + 1 == tokens.len() => Ok(()),
            ">" => Err("'>' must be the last token".to_owned()),
            t => check_token(t),
        };
        ok.map_err(|reason| BusError::InvalidSubject {
            subject: filter.to_owned(),
            reason,
        })?;
    }
    Ok(())
}

/// NATS subject matching: `*` matches exactly one token, a trailing `>` one or more.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for f in filter.split('.') {
        match (f, subject_tokens.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (f, Some(s)) if f == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Durable names are also subject tokens and NATS object names, so only `[A-Za-z0-9_-]`.
pub(crate) fn check_durable_name(name: &str) -> Result<(), BusError> {
    if name.is_empty() || name.len() > MAX_DURABLE_NAME_BYTES {
        return Err(BusError::InvalidConfig(format!(
            "durable name must be 1 to {MAX_DURABLE_NAME_BYTES} bytes, got {}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Err(BusError::InvalidConfig(format!(
            "durable name {name:?} contains {c:?}; use letters, digits, '_' and '-'"
        )));
    }
    Ok(())
}

impl Message {
    /// Everything a broker would refuse, checked before anything is sent: the subject is literal
    /// and under `prefix`, headers are well formed and not reserved, the payload fits.
    pub(crate) fn validate(&self, prefix: &str, max_payload_bytes: usize) -> Result<(), BusError> {
        check_literal_subject(&self.subject)?;
        let under_prefix = self
            .subject
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'));
        if !under_prefix {
            return Err(BusError::InvalidSubject {
                subject: self.subject.clone(),
                reason: format!("not under the bus prefix {prefix:?}"),
            });
        }
        let invalid = |reason: String| BusError::InvalidMessage {
            id: self.id,
            reason,
        };
        if self.payload.len() > max_payload_bytes {
            return Err(invalid(format!(
                "payload is {} bytes, limit {max_payload_bytes}",
                self.payload.len()
            )));
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(invalid(format!(
                "{} headers, limit {MAX_HEADERS}",
                self.headers.len()
            )));
        }
        for (name, value) in &self.headers {
            if name.is_empty() || name.len() > MAX_HEADER_BYTES || value.len() > MAX_HEADER_BYTES {
                return Err(invalid(format!(
                    "header {name:?}: name must be 1 to {MAX_HEADER_BYTES} bytes and value at most {MAX_HEADER_BYTES}"
                )));
            }
            if name.chars().any(|c| !c.is_ascii_graphic() || c == ':') {
                return Err(invalid(format!(
                    "header name {name:?} must be printable ascii without ':'"
                )));
            }
            if name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-") {
                return Err(invalid(format!("header name {name:?} is reserved")));
            }
            if value.contains(['\r', '\n']) {
                return Err(invalid(format!(
                    "header {name:?} value contains a line break"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_joins_three_checked_tokens() {
        assert_eq!(
            subject("pl", "crm", "PartnerApproved").unwrap(),
            "pl.crm.PartnerApproved"
        );
        for (p, c, t) in [
            ("pl", "c rm", "X"),
            ("pl", "crm", "a.b"),
            ("pl", "*", "X"),
            ("pl", ">", "X"),
            ("", "crm", "X"),
            ("pl", "crm", ""),
            ("pl", "dlq", "X"),
        ] {
            assert!(subject(p, c, t).is_err(), "{p}.{c}.{t} should be rejected");
        }
    }

    #[test]
    fn wildcards_match_like_nats() {
        assert!(subject_matches("pl.crm.*", "pl.crm.A"));
        assert!(!subject_matches("pl.crm.*", "pl.crm.A.B"));
        assert!(!subject_matches("pl.crm.*", "pl.crm"));
        assert!(subject_matches("pl.>", "pl.crm.A"));
        assert!(subject_matches("pl.*.A", "pl.x.A"));
        assert!(!subject_matches("pl.>", "pl"));
        assert!(subject_matches("pl.crm.A", "pl.crm.A"));
        assert!(!subject_matches("pl.crm.A", "pl.crm.B"));
        assert!(!subject_matches("pl.crm", "pl.crm.A"));
    }

    #[test]
    fn filters_allow_wildcards_only_as_whole_tokens() {
        assert!(check_filter("pl.*.x").is_ok());
        assert!(check_filter("pl.>").is_ok());
        assert!(check_filter("pl.>.x").is_err());
        assert!(check_filter("pl.a*").is_err());
        assert!(check_filter("pl..x").is_err());
    }

    #[test]
    fn reserved_and_malformed_headers_are_rejected() {
        let mut m = Message {
            id: Uuid::nil(),
            subject: "pl.a.b".into(),
            payload: Bytes::new(),
            headers: BTreeMap::new(),
        };
        assert!(m.validate("pl", 10).is_ok());
        assert!(m.validate("p", 10).is_err());
        m.headers.insert("nats-msg-id".into(), "x".into());
        assert!(m.validate("pl", 10).is_err());
        m.headers.clear();
        m.headers.insert("a:b".into(), "x".into());
        assert!(m.validate("pl", 10).is_err());
        m.headers.clear();
        m.headers.insert("a".into(), "x\ny".into());
        assert!(m.validate("pl", 10).is_err());
        m.headers.clear();
        m.payload = Bytes::from_static(&[0; 11]);
        assert!(m.validate("pl", 10).is_err());
    }
}
