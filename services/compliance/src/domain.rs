//! A partner's verification history (one stream `verification-<partner id>`): every outcome is
//! kept, newest last. Pure decide/evolve, no I/O, no clock.

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerificationKind {
    Kyc,
    Kyb,
    TaxFormW9,
    TaxFormW8ben,
    Licence,
    DataSharingAgreement,
    DisclosureAcknowledgement,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerificationStatus {
    Verified,
    Rejected,
    Pending,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub partner_id: Uuid,
    pub kind: VerificationKind,
    pub status: VerificationStatus,
    pub reference: String,
    pub recorded_by: String,
    pub occurred_at: DateTime<Utc>,
    pub valid_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum VerificationEvent {
    VerificationRecorded(Verification),
}

impl DomainEvent for VerificationEvent {}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History(pub Vec<Verification>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerificationError {
    #[error("valid_until {valid_until} is not after the verification time {occurred_at}")]
    ExpiresBeforeRecorded {
        occurred_at: DateTime<Utc>,
        valid_until: DateTime<Utc>,
    },
}

impl Aggregate for History {
    type State = History;
    type Command = Verification;
    type Event = VerificationEvent;
    type Error = VerificationError;

    fn decide(
        _state: &History,
        v: &Verification,
    ) -> Result<Vec<VerificationEvent>, VerificationError> {
        if let Some(valid_until) = v.valid_until {
            if valid_until <= v.occurred_at {
                return Err(VerificationError::ExpiresBeforeRecorded {
                    occurred_at: v.occurred_at,
                    valid_until,
                });
            }
        }
        Ok(vec![VerificationEvent::VerificationRecorded(v.clone())])
    }

    fn evolve(mut state: History, event: &VerificationEvent) -> History {
        match event {
            VerificationEvent::VerificationRecorded(v) => state.0.push(v.clone()),
        }
        state
    }
}

pub fn stream(partner_id: Uuid) -> String {
    format!("{}{partner_id}", crate::STREAM_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + days * 86_400, 0).unwrap()
    }

    fn w8(valid_until: Option<DateTime<Utc>>) -> Verification {
        Verification {
            partner_id: Uuid::from_u128(1),
            kind: VerificationKind::TaxFormW8ben,
            status: VerificationStatus::Verified,
            reference: "w8-123".into(),
            recorded_by: "reviewer@ops".into(),
            occurred_at: at(0),
            valid_until,
        }
    }

    #[test]
    fn every_verification_is_kept_in_order() {
        let first = w8(Some(at(3 * 365)));
        let events = History::decide(&History::default(), &first).unwrap();
        let state = events.iter().fold(History::default(), History::evolve);
        assert_eq!(state.0, vec![first]);
    }

    #[test]
    fn a_verification_that_expires_before_it_was_made_is_refused() {
        let err = History::decide(&History::default(), &w8(Some(at(0)))).unwrap_err();
        assert!(matches!(
            err,
            VerificationError::ExpiresBeforeRecorded { .. }
        ));
    }
}
