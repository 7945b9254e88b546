//! A partner's ledger account (one stream `account-<partner id>`), opened when partner CRM
//! reports the partner. Pure decide/evolve, no I/O, no clock.

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opening {
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub opened_at: DateTime<Utc>,
    /// The integration event that caused the opening.
    pub source_event_id: Uuid,
    /// The partner's type as partner CRM reported it (affiliate, referral, reseller, ...), for
    /// reports. Absent in accounts opened before it was recorded.
    #[serde(default)]
    pub partner_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AccountEvent {
    AccountOpened(Opening),
}

impl DomainEvent for AccountEvent {}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Account(pub Option<Opening>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {}

impl Aggregate for Account {
    type State = Account;
    type Command = Opening;
    type Event = AccountEvent;
    type Error = AccountError;

    /// Opening is idempotent: an account opens once, whatever reports it again.
    fn decide(state: &Account, opening: &Opening) -> Result<Vec<AccountEvent>, AccountError> {
        match state.0 {
            None => Ok(vec![AccountEvent::AccountOpened(opening.clone())]),
            Some(_) => Ok(vec![]),
        }
    }

    fn evolve(_state: Account, event: &AccountEvent) -> Account {
        match event {
            AccountEvent::AccountOpened(o) => Account(Some(o.clone())),
        }
    }
}

pub fn stream(partner_id: Uuid) -> String {
    format!("{}{partner_id}", crate::STREAM_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opening(source: u128) -> Opening {
        Opening {
            partner_id: Uuid::from_u128(1),
            program_id: Uuid::from_u128(2),
            opened_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
            source_event_id: Uuid::from_u128(source),
            partner_type: Some("affiliate".into()),
        }
    }

    #[test]
    fn an_account_opens_once() {
        let events = Account::decide(&Account::default(), &opening(9)).unwrap();
        assert_eq!(events, vec![AccountEvent::AccountOpened(opening(9))]);
        let state = events.iter().fold(Account::default(), Account::evolve);
        assert_eq!(Account::decide(&state, &opening(10)).unwrap(), vec![]);
    }
}
