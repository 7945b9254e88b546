//! The tracking link aggregate (stream `partner-link-<id>`): one link of one partner, its
//! expiry and its deactivation. The stream is created with `NoStream`, so a link id is issued
//! once, whoever races for it. A link with an expiry is issued together with its scheduled
//! deactivation (at the expiry), so consumers that only know deactivations stop it in time.
//! Pure: never checks the partner (the caller does) and never reactivates a link.

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Classify, Kind};

/// Deactivations kept per link (each must be earlier than the last).
pub const MAX_EVENTS: usize = 100;

/// The `TrackingLinkIssued` contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkIssued {
    pub tracking_link_id: Uuid,
    pub partner_id: Uuid,
    pub program_id: Uuid,
    #[serde(with = "crate::wire::opt_id", default)]
    pub campaign_id: Option<Uuid>,
    pub destination_url: String,
    pub occurred_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// The `TrackingLinkDeactivated` contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkDeactivated {
    pub tracking_link_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub reason: String,
    pub partner_id: Uuid,
    pub program_id: Uuid,
}

pub const EXPIRED: &str = "expired";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum LinkEvent {
    TrackingLinkIssued(LinkIssued),
    TrackingLinkDeactivated(LinkDeactivated),
}

impl DomainEvent for LinkEvent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkCommand {
    Issue(LinkIssued),
    Deactivate { reason: String, at: DateTime<Utc> },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub issued: Option<LinkIssued>,
    /// The earliest deactivation (a scheduled expiry included).
    pub deactivated_at: Option<DateTime<Utc>>,
    pub deactivation_reason: String,
    pub events: usize,
}

impl Link {
    /// Not deactivated (or expired) at `at`; the partner's status is judged elsewhere.
    pub fn in_force_at(&self, at: DateTime<Utc>) -> bool {
        self.issued.is_some() && self.deactivated_at.is_none_or(|d| at < d)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("tracking link {0} already exists")]
    AlreadyExists(Uuid),
    #[error("tracking link is unknown")]
    NotFound,
    #[error("the link already stopped working at {0}")]
    AlreadyDeactivated(DateTime<Utc>),
    #[error("the link's stream holds {MAX_EVENTS} events; no more are accepted")]
    Full,
}

impl Classify for LinkError {
    fn kind(&self) -> Kind {
        match self {
            LinkError::AlreadyExists(id) => Kind::AlreadyExists {
                what: "tracking link",
                id: id.to_string(),
            },
            LinkError::NotFound => Kind::NotFound {
                what: "tracking link",
                id: String::new(),
            },
            LinkError::AlreadyDeactivated(_) | LinkError::Full => Kind::Rule,
        }
    }
}

impl Aggregate for Link {
    type State = Link;
    type Command = LinkCommand;
    type Event = LinkEvent;
    type Error = LinkError;

    fn decide(state: &Link, command: &LinkCommand) -> Result<Vec<LinkEvent>, LinkError> {
        if state.events >= MAX_EVENTS {
            return Err(LinkError::Full);
        }
        match (command, &state.issued) {
            (LinkCommand::Issue(link), None) => {
                let mut events = vec![LinkEvent::TrackingLinkIssued(link.clone())];
                if let Some(expires_at) = link.expires_at {
                    events.push(LinkEvent::TrackingLinkDeactivated(LinkDeactivated {
                        tracking_link_id: link.tracking_link_id,
                        occurred_at: expires_at,
                        reason: EXPIRED.to_owned(),
                        partner_id: link.partner_id,
                        program_id: link.program_id,
                    }));
                }
                Ok(events)
            }
            (LinkCommand::Issue(link), Some(_)) => {
                Err(LinkError::AlreadyExists(link.tracking_link_id))
            }
            (LinkCommand::Deactivate { .. }, None) => Err(LinkError::NotFound),
            (LinkCommand::Deactivate { reason, at }, Some(link)) => {
                if let Some(d) = state.deactivated_at.filter(|d| *d <= *at) {
                    return Err(LinkError::AlreadyDeactivated(d));
                }
                Ok(vec![LinkEvent::TrackingLinkDeactivated(LinkDeactivated {
                    tracking_link_id: link.tracking_link_id,
                    occurred_at: *at,
                    reason: reason.clone(),
                    partner_id: link.partner_id,
                    program_id: link.program_id,
                })])
            }
        }
    }

    fn evolve(mut state: Link, event: &LinkEvent) -> Link {
        state.events += 1;
        match event {
            LinkEvent::TrackingLinkIssued(link) => state.issued = Some(link.clone()),
            LinkEvent::TrackingLinkDeactivated(d) => {
                if state.deactivated_at.is_none_or(|old| d.occurred_at < old) {
                    state.deactivated_at = Some(d.occurred_at);
                    state.deactivation_reason = d.reason.clone();
                }
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn t(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + h * 3600, 0).unwrap()
    }

    fn issued(expires_at: Option<DateTime<Utc>>) -> LinkIssued {
        LinkIssued {
            tracking_link_id: Uuid::from_u128(7),
            partner_id: Uuid::from_u128(1),
            program_id: Uuid::from_u128(2),
            campaign_id: None,
            destination_url: "https://shop.example/".into(),
            occurred_at: t(0),
            expires_at,
        }
    }

    #[test]
    fn given_a_link_with_an_expiry_when_issued_then_its_deactivation_is_scheduled_at_the_expiry() {
        let events =
            Link::decide(&Link::default(), &LinkCommand::Issue(issued(Some(t(48))))).unwrap();
        assert_eq!(events.len(), 2);
        let state = events.iter().fold(Link::default(), Link::evolve);
        assert!(state.in_force_at(t(47)));
        assert!(!state.in_force_at(t(48)));
        assert_eq!(state.deactivation_reason, EXPIRED);
        // Deactivating before the expiry moves the end earlier; after it there is nothing to do.
        let early = Link::decide(
            &state,
            &LinkCommand::Deactivate {
                reason: "abuse".into(),
                at: t(10),
            },
        )
        .unwrap();
        let state = Link::evolve(state, &early[0]);
        assert!(!state.in_force_at(t(10)));
        assert_eq!(
            Link::decide(
                &state,
                &LinkCommand::Deactivate {
                    reason: "again".into(),
                    at: t(11)
                }
            )
            .unwrap_err(),
            LinkError::AlreadyDeactivated(t(10))
        );
    }

    #[test]
    fn a_link_id_is_issued_once() {
        let state = Link::evolve(
            Link::default(),
            &LinkEvent::TrackingLinkIssued(issued(None)),
        );
        assert_eq!(
            Link::decide(&state, &LinkCommand::Issue(issued(None))).unwrap_err(),
            LinkError::AlreadyExists(Uuid::from_u128(7))
        );
    }

    #[test]
    fn the_issued_link_uses_the_contract_shape_with_an_empty_campaign() {
        let (t, data) =
            pl_runtime::aggregate::encode_event(&LinkEvent::TrackingLinkIssued(issued(None)))
                .unwrap();
        assert_eq!(t, "TrackingLinkIssued");
        let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(v["campaign_id"], "");
        assert!(v.get("expires_at").is_none());
        assert_eq!(v["destination_url"], "https://shop.example/");
    }
}
