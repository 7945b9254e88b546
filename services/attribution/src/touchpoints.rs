//! Touchpoints: a partner's contact with a visitor or customer before a conversion. One stream
//! per visitor (or per customer when no visitor is known) holds them all, so a conversion reads
//! one stream; one stream per postback transaction makes postbacks idempotent by the sender's
//! transaction id. Pure decide/evolve: no I/O, no clock.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A visitor or customer keeps at most this many touchpoints; more is a bot or a broken
/// integration, refused rather than slowing every conversion of that visitor down.
pub const MAX_TOUCHPOINTS_PER_SUBJECT: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TouchpointKind {
    Click,
    Coupon,
    Postback,
    Impression,
    DealRegistration,
}

impl TouchpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TouchpointKind::Click => "click",
            TouchpointKind::Coupon => "coupon",
            TouchpointKind::Postback => "postback",
            TouchpointKind::Impression => "impression",
            TouchpointKind::DealRegistration => "deal_registration",
        }
    }
}

/// What only some kinds carry. Hashes are hex SHA-256 of salted values; raw IPs and user
/// agents never reach this type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_link_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landing_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touchpoint {
    /// The click, redemption, impression or deal id; for postbacks derived from (partner,
    /// transaction id).
    pub touchpoint_id: Uuid,
    pub kind: TouchpointKind,
    pub program_id: Uuid,
    pub partner_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitor_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    #[serde(default)]
    pub detail: Detail,
}

impl Touchpoint {
    /// Oldest first; ties broken by id so every replay orders them the same way.
    pub fn order_key(&self) -> (DateTime<Utc>, Uuid) {
        (self.occurred_at, self.touchpoint_id)
    }
}

/// The log's event type of [`TouchpointEvent::TouchpointRecorded`] (its serde tag).
pub const RECORDED_EVENT_TYPE: &str = "TouchpointRecorded";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum TouchpointEvent {
    TouchpointRecorded(Touchpoint),
}
impl DomainEvent for TouchpointEvent {}

/// The touchpoints of one visitor or customer.
#[derive(Debug, Clone, Default)]
pub struct Touchpoints {
    pub by_id: HashMap<Uuid, Touchpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TouchpointError {
    #[error("touchpoint {0} was already recorded with other details")]
    RecordedDifferently(Uuid),
    #[error("this visitor or customer already has {MAX_TOUCHPOINTS_PER_SUBJECT} touchpoints, the most kept")]
    Full,
}

impl Aggregate for Touchpoints {
    type State = Touchpoints;
    type Command = Touchpoint;
    type Event = TouchpointEvent;
    type Error = TouchpointError;

    /// Recorded once per id: the same touchpoint again changes nothing, a different one under a
    /// used id is refused.
    fn decide(
        state: &Touchpoints,
        t: &Touchpoint,
    ) -> Result<Vec<TouchpointEvent>, TouchpointError> {
        match state.by_id.get(&t.touchpoint_id) {
            Some(existing) if existing == t => Ok(vec![]),
            Some(_) => Err(TouchpointError::RecordedDifferently(t.touchpoint_id)),
            None if state.by_id.len() >= MAX_TOUCHPOINTS_PER_SUBJECT => Err(TouchpointError::Full),
            None => Ok(vec![TouchpointEvent::TouchpointRecorded(t.clone())]),
        }
    }

    fn evolve(mut state: Touchpoints, event: &TouchpointEvent) -> Touchpoints {
        match event {
            TouchpointEvent::TouchpointRecorded(t) => {
                state.by_id.insert(t.touchpoint_id, t.clone());
            }
        }
        state
    }
}

/// The stream a touchpoint is kept in: its visitor's, else its customer's.
pub fn stream_of(t: &Touchpoint) -> Option<String> {
    match (&t.visitor_id, &t.customer_id) {
        (Some(v), _) => Some(crate::streams::visitor_touchpoints(v)),
        (None, Some(c)) => Some(crate::streams::customer_touchpoints(c)),
        (None, None) => None,
    }
}

// ----- postbacks ------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum PostbackEvent {
    PostbackReceived(Touchpoint),
}
impl DomainEvent for PostbackEvent {}

/// One sender transaction: the postback as first received.
#[derive(Debug, Clone, Default)]
pub struct Postback(pub Option<Touchpoint>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostbackError {
    #[error("transaction {0:?} was already posted back with a different body")]
    DifferentBody(String),
}

impl Aggregate for Postback {
    type State = Postback;
    type Command = Touchpoint;
    type Event = PostbackEvent;
    type Error = PostbackError;

    fn decide(state: &Postback, t: &Touchpoint) -> Result<Vec<PostbackEvent>, PostbackError> {
        match &state.0 {
            None => Ok(vec![PostbackEvent::PostbackReceived(t.clone())]),
            Some(existing) if existing == t => Ok(vec![]),
            Some(_) => Err(PostbackError::DifferentBody(
                t.detail.transaction_id.clone().unwrap_or_default(),
            )),
        }
    }

    fn evolve(_state: Postback, event: &PostbackEvent) -> Postback {
        match event {
            PostbackEvent::PostbackReceived(t) => Postback(Some(t.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click() -> Touchpoint {
        Touchpoint {
            touchpoint_id: Uuid::from_u128(1),
            kind: TouchpointKind::Click,
            program_id: Uuid::from_u128(2),
            partner_id: Uuid::from_u128(3),
            campaign_id: None,
            visitor_id: Some("v-1".into()),
            customer_id: None,
            occurred_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
            detail: Detail::default(),
        }
    }

    fn given(events: &[Touchpoint]) -> Touchpoints {
        events.iter().fold(Touchpoints::default(), |s, t| {
            Touchpoints::evolve(s, &TouchpointEvent::TouchpointRecorded(t.clone()))
        })
    }

    #[test]
    fn a_new_click_is_recorded() {
        let events = Touchpoints::decide(&given(&[]), &click()).unwrap();
        assert_eq!(events, vec![TouchpointEvent::TouchpointRecorded(click())]);
    }

    #[test]
    fn the_same_click_reported_twice_changes_nothing() {
        assert_eq!(
            Touchpoints::decide(&given(&[click()]), &click()).unwrap(),
            vec![]
        );
    }

    #[test]
    fn a_different_click_under_a_used_id_is_refused() {
        let mut other = click();
        other.partner_id = Uuid::from_u128(9);
        assert_eq!(
            Touchpoints::decide(&given(&[click()]), &other),
            Err(TouchpointError::RecordedDifferently(Uuid::from_u128(1)))
        );
    }

    #[test]
    fn a_retried_postback_changes_nothing_and_a_different_body_is_refused() {
        let mut t = click();
        t.kind = TouchpointKind::Postback;
        t.detail.transaction_id = Some("tx-1".into());
        let state = Postback::evolve(
            Postback::default(),
            &PostbackEvent::PostbackReceived(t.clone()),
        );
        assert_eq!(Postback::decide(&state, &t).unwrap(), vec![]);
        let mut other = t.clone();
        other.visitor_id = Some("v-2".into());
        assert_eq!(
            Postback::decide(&state, &other),
            Err(PostbackError::DifferentBody("tx-1".into()))
        );
    }
}
