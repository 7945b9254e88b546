//! Turning protobuf requests into validated domain input: ids, timestamps, money, the request
//! context. Every problem becomes a field violation naming the field, and all of a request's
//! violations are reported together.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pl_proto::common::v1::{PageRequest, RequestContext};
use uuid::Uuid;

use crate::aggregate::CommandMeta;
use crate::clock::Clock;
use crate::error::{ApiError, FieldViolation};
use crate::idempotency::IdempotencyKey;

/// Collects field violations so a caller learns every problem with a request at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the value when it is valid, records the violation otherwise.
    pub fn check<T>(&mut self, r: Result<T, FieldViolation>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(fv) => {
                self.0.push(fv);
                None
            }
        }
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// `Err` with every violation, or `Ok` when there were none.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self.0))
        }
    }
}

pub fn parse_uuid(field: &str, value: &str) -> Result<Uuid, FieldViolation> {
    if value.is_empty() {
        return Err(FieldViolation::new(field, "required"));
    }
    let id = Uuid::try_parse(value).map_err(|_| FieldViolation::new(field, "not a uuid"))?;
    if id.is_nil() {
        return Err(FieldViolation::new(field, "must not be the nil uuid"));
    }
    Ok(id)
}

/// A required, trimmed-equal, bounded free-text field.
pub fn parse_text(field: &str, value: &str, max_chars: usize) -> Result<String, FieldViolation> {
    if value.trim().is_empty() {
        return Err(FieldViolation::new(field, "required"));
    }
    if value.trim() != value {
        return Err(FieldViolation::new(
            field,
            "has leading or trailing whitespace",
        ));
    }
    if value.chars().count() > max_chars {
        return Err(FieldViolation::new(
            field,
            format!("at most {max_chars} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldViolation::new(field, "contains a control character"));
    }
    Ok(value.to_owned())
}

pub fn to_datetime(
    field: &str,
    ts: &prost_types::Timestamp,
) -> Result<DateTime<Utc>, FieldViolation> {
    let nanos =
        u32::try_from(ts.nanos).map_err(|_| FieldViolation::new(field, "negative nanos"))?;
    DateTime::from_timestamp(ts.seconds, nanos)
        .ok_or_else(|| FieldViolation::new(field, "timestamp out of range"))
}

pub fn to_timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Bounds of one listing: the page size a caller gets when it names none, and the largest it
/// may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBounds {
    pub default_size: usize,
    pub max_size: usize,
}

/// The (offset, size) a page request asks for. Page tokens are offsets the service issued
/// (listings that only grow keep them stable). A size over the bound or a token that is not
/// one is a violation of `<field>.page_size` / `<field>.page_token`; absent means the first
/// page of the default size. The one place every service reads its page requests.
pub fn page(
    v: &mut Violations,
    field: &str,
    page: Option<&PageRequest>,
    bounds: PageBounds,
) -> (usize, usize) {
    let Some(p) = page else {
        return (0, bounds.default_size);
    };
    let size = match usize::try_from(p.page_size).unwrap_or(usize::MAX) {
        0 => bounds.default_size,
        n if n > bounds.max_size => {
            v.add(
                format!("{field}.page_size"),
                format!("at most {}", bounds.max_size),
            );
            bounds.default_size
        }
        n => n,
    };
    let offset = if p.page_token.is_empty() {
        0
    } else {
        match p.page_token.parse::<usize>() {
            Ok(o) => o,
            Err(_) => {
                v.add(
                    format!("{field}.page_token"),
                    "not a token from a previous page",
                );
                0
            }
        }
    };
    (offset, size)
}

/// The validated `RequestContext` of a mutating request.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub key: IdempotencyKey,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: Option<Uuid>,
    pub trace_context: BTreeMap<String, String>,
}

impl RequestMeta {
    pub fn parse(
        service: &'static str,
        context: Option<&RequestContext>,
        clock: &dyn Clock,
        trace_context: BTreeMap<String, String>,
        violations: &mut Violations,
    ) -> Option<Self> {
        let Some(ctx) = context else {
            violations.add(
                "context",
                "required: every mutating request carries an idempotency key",
            );
            return None;
        };
        let key = match IdempotencyKey::parse(service, &ctx.idempotency_key) {
            Ok(k) => Some(k),
            Err(ApiError::InvalidArgument(v)) => {
                v.into_iter()
                    .for_each(|fv| violations.add(fv.field, fv.description));
                None
            }
            Err(_) => None,
        };
        let occurred_at = match &ctx.occurred_at {
            Some(ts) => violations.check(to_datetime("context.occurred_at", ts)),
            None => Some(clock.now()),
        };
        let correlation_id = if ctx.correlation_id.is_empty() {
            Some(None)
        } else {
            violations
                .check(parse_uuid("context.correlation_id", &ctx.correlation_id))
                .map(Some)
        };
        Some(Self {
            key: key?,
            occurred_at: occurred_at?,
            correlation_id: correlation_id?,
            trace_context,
        })
    }

    pub fn command_meta(&self) -> CommandMeta {
        CommandMeta {
            id_seed: self.key.id_seed(),
            occurred_at: self.occurred_at,
            correlation_id: self.correlation_id,
            causation_id: None,
            trace_context: self.trace_context.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;

    #[test]
    fn a_missing_context_and_bad_ids_are_all_reported_together() {
        let clock = FixedClock::at(DateTime::from_timestamp(0, 0).unwrap());
        let mut v = Violations::new();
        assert!(RequestMeta::parse("crm", None, &clock, BTreeMap::new(), &mut v).is_none());
        v.check(parse_uuid("partner_id", "nope"));
        let Err(ApiError::InvalidArgument(all)) = v.finish() else {
            panic!("expected invalid argument");
        };
        let fields: Vec<_> = all.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, vec!["context", "partner_id"]);
    }

    #[test]
    fn occurred_at_defaults_to_the_clock_when_absent() {
        let now = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let clock = FixedClock::at(now);
        let ctx = RequestContext {
            idempotency_key: "k1".into(),
            ..Default::default()
        };
        let mut v = Violations::new();
        let meta = RequestMeta::parse("crm", Some(&ctx), &clock, BTreeMap::new(), &mut v).unwrap();
        v.finish().unwrap();
        assert_eq!(meta.occurred_at, now);
    }
}
