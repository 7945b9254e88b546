//! The click aggregate (one stream `click-<click id>`): pure decide/evolve, no I/O, no clock.

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickDetails {
    pub click_id: Uuid,
    pub partner_id: Uuid,
    pub tracking_link_id: Uuid,
    pub visitor_id: String,
    pub landing_url: String,
    /// Hex SHA-256 of the salted IP address; the address itself is never stored.
    pub ip_hash: String,
    pub user_agent_hash: String,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ClickEvent {
    ClickRecorded(ClickDetails),
}

impl DomainEvent for ClickEvent {}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Click(pub Option<ClickDetails>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClickError {
    #[error("click {0} was already recorded with other details")]
    RecordedDifferently(Uuid),
}

impl Aggregate for Click {
    type State = Click;
    type Command = ClickDetails;
    type Event = ClickEvent;
    type Error = ClickError;

    /// A click id is recorded once; the same click reported again changes nothing, a different
    /// click under the same id is refused.
    fn decide(state: &Click, command: &ClickDetails) -> Result<Vec<ClickEvent>, ClickError> {
        match &state.0 {
            None => Ok(vec![ClickEvent::ClickRecorded(command.clone())]),
            Some(existing) if existing == command => Ok(vec![]),
            Some(existing) => Err(ClickError::RecordedDifferently(existing.click_id)),
        }
    }

    fn evolve(_state: Click, event: &ClickEvent) -> Click {
        match event {
            ClickEvent::ClickRecorded(d) => Click(Some(d.clone())),
        }
    }
}

pub fn stream(click_id: Uuid) -> String {
    format!("{}{click_id}", crate::STREAM_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click() -> ClickDetails {
        ClickDetails {
            click_id: Uuid::from_u128(1),
            partner_id: Uuid::from_u128(2),
            tracking_link_id: Uuid::from_u128(3),
            visitor_id: "v-1".into(),
            landing_url: "https://shop.example/".into(),
            ip_hash: "ab".into(),
            user_agent_hash: "cd".into(),
            occurred_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
        }
    }

    #[test]
    fn a_new_click_is_recorded() {
        let events = Click::decide(&Click::default(), &click()).unwrap();
        assert_eq!(events, vec![ClickEvent::ClickRecorded(click())]);
    }

    #[test]
    fn the_same_click_reported_twice_changes_nothing() {
        let state = Click::evolve(Click::default(), &ClickEvent::ClickRecorded(click()));
        assert_eq!(Click::decide(&state, &click()).unwrap(), vec![]);
    }

    #[test]
    fn a_different_click_under_a_used_id_is_refused() {
        let state = Click::evolve(Click::default(), &ClickEvent::ClickRecorded(click()));
        let mut other = click();
        other.visitor_id = "v-2".into();
        assert_eq!(
            Click::decide(&state, &other),
            Err(ClickError::RecordedDifferently(Uuid::from_u128(1)))
        );
    }
}
