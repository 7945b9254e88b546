//! Signals kept across partners: clicks per hashed IP in a program
//! (`compliance-clicks-<id>`, click-velocity rule) and the partners of a program sharing one
//! identifier (`compliance-identity-<id>`, duplicate-accounts rule). Pure deciders that count
//! and remember, idempotent by their own keys; they never flag anything themselves.
//!
//! Memory is bounded: a click stream keeps the latest [`KEPT_CLICKS`] clicks (enough to tell
//! "more than the largest allowed maximum") and the last [`KEPT_OVER`] clicks that were over
//! their threshold; an identity keeps at most [`MAX_SHARING`] partners.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::rules::MAX_CLICKS_PER_IP;

pub const KEPT_CLICKS: usize = MAX_CLICKS_PER_IP as usize + 1;
pub const KEPT_OVER: usize = 10_000;
pub const MAX_SHARING: usize = 1_000;
/// Partner ids named in a duplicate-accounts event.
pub const MAX_OTHERS_NAMED: usize = 20;

// ----- clicks per hashed IP -------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ClickEvent {
    /// A click, with the clicks from the same IP in the window ending at it (itself included).
    ClickCounted {
        touchpoint_id: Uuid,
        partner_id: Uuid,
        occurred_at: DateTime<Utc>,
        clicks_in_window: u32,
        window_seconds: u32,
        max_clicks: u32,
    },
}

impl DomainEvent for ClickEvent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    pub touchpoint_id: Uuid,
    pub partner_id: Uuid,
    pub at: DateTime<Utc>,
    pub window_seconds: u32,
    pub max_clicks: u32,
}

/// A click that was over its threshold when it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Velocity {
    pub clicks_in_window: u32,
    pub window_seconds: u32,
    pub max_clicks: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clicks {
    /// The latest clicks, oldest first.
    pub recent: VecDeque<(DateTime<Utc>, Uuid)>,
    pub over: BTreeMap<Uuid, Velocity>,
    over_order: VecDeque<Uuid>,
}

impl Clicks {
    pub fn velocity(&self, touchpoint_id: Uuid) -> Option<Velocity> {
        self.over.get(&touchpoint_id).copied()
    }
}

impl Aggregate for Clicks {
    type State = Clicks;
    type Command = Click;
    type Event = ClickEvent;
    type Error = std::convert::Infallible;

    fn decide(state: &Clicks, c: &Click) -> Result<Vec<ClickEvent>, std::convert::Infallible> {
        if state.over.contains_key(&c.touchpoint_id)
            || state.recent.iter().any(|(_, id)| *id == c.touchpoint_id)
        {
            return Ok(vec![]);
        }
        let from = c.at - Duration::seconds(i64::from(c.window_seconds));
        let earlier = state
            .recent
            .iter()
            .filter(|(at, _)| *at > from && *at <= c.at)
            .count();
        Ok(vec![ClickEvent::ClickCounted {
            touchpoint_id: c.touchpoint_id,
            partner_id: c.partner_id,
            occurred_at: c.at,
            clicks_in_window: u32::try_from(earlier + 1).unwrap_or(u32::MAX),
            window_seconds: c.window_seconds,
            max_clicks: c.max_clicks,
        }])
    }

    fn evolve(mut state: Clicks, event: &ClickEvent) -> Clicks {
        let ClickEvent::ClickCounted {
            touchpoint_id,
            occurred_at,
            clicks_in_window,
            window_seconds,
            max_clicks,
            ..
        } = event;
        let pos = state
            .recent
            .iter()
            .position(|(at, _)| at > occurred_at)
            .unwrap_or(state.recent.len());
        state.recent.insert(pos, (*occurred_at, *touchpoint_id));
        while state.recent.len() > KEPT_CLICKS {
            state.recent.pop_front();
        }
        if clicks_in_window > max_clicks {
            state.over.insert(
                *touchpoint_id,
                Velocity {
                    clicks_in_window: *clicks_in_window,
                    window_seconds: *window_seconds,
                    max_clicks: *max_clicks,
                },
            );
            state.over_order.push_back(*touchpoint_id);
            while state.over_order.len() > KEPT_OVER {
                if let Some(old) = state.over_order.pop_front() {
                    state.over.remove(&old);
                }
            }
        }
        state
    }
}

// ----- partners sharing an identifier ---------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum IdentityEvent {
    /// A partner of the program uses the identifier; `accounts` partners do now.
    IdentityClaimed {
        partner_id: Uuid,
        kind: String,
        occurred_at: DateTime<Utc>,
        accounts: u32,
        others: Vec<Uuid>,
    },
}

impl DomainEvent for IdentityEvent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub partner_id: Uuid,
    /// email or ip.
    pub kind: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub partners: Vec<Uuid>,
}

impl Aggregate for Identity {
    type State = Identity;
    type Command = Claim;
    type Event = IdentityEvent;
    type Error = std::convert::Infallible;

    fn decide(state: &Identity, c: &Claim) -> Result<Vec<IdentityEvent>, std::convert::Infallible> {
        if state.partners.contains(&c.partner_id) || state.partners.len() >= MAX_SHARING {
            return Ok(vec![]);
        }
        Ok(vec![IdentityEvent::IdentityClaimed {
            partner_id: c.partner_id,
            kind: c.kind.clone(),
            occurred_at: c.at,
            accounts: u32::try_from(state.partners.len() + 1).unwrap_or(u32::MAX),
            others: state
                .partners
                .iter()
                .take(MAX_OTHERS_NAMED)
                .copied()
                .collect(),
        }])
    }

    fn evolve(mut state: Identity, event: &IdentityEvent) -> Identity {
        let IdentityEvent::IdentityClaimed { partner_id, .. } = event;
        state.partners.push(*partner_id);
        state
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + secs, 0).unwrap()
    }

    fn click(n: u128, at: DateTime<Utc>) -> Click {
        Click {
            touchpoint_id: Uuid::from_u128(n),
            partner_id: Uuid::from_u128(1),
            at,
            window_seconds: 60,
            max_clicks: 3,
        }
    }

    fn run(clicks: &[Click]) -> (Clicks, Vec<u32>) {
        let mut counts = Vec::new();
        let mut s = Clicks::default();
        for c in clicks {
            let events = Clicks::decide(&s, c).unwrap();
            for e in &events {
                let ClickEvent::ClickCounted {
                    clicks_in_window, ..
                } = e;
                counts.push(*clicks_in_window);
            }
            s = events.iter().fold(s, Clicks::evolve);
        }
        (s, counts)
    }

    #[test]
    fn given_three_clicks_in_a_minute_when_a_fourth_arrives_then_only_the_fourth_is_over_the_maximum_of_three(
    ) {
        let (s, counts) = run(&[
            click(1, t(0)),
            click(2, t(10)),
            click(3, t(20)),
            click(4, t(30)),
        ]);
        assert_eq!(counts, vec![1, 2, 3, 4]);
        assert_eq!(s.velocity(Uuid::from_u128(3)), None);
        assert_eq!(s.velocity(Uuid::from_u128(4)).unwrap().clicks_in_window, 4);
    }

    #[test]
    fn given_a_click_exactly_one_window_earlier_then_it_is_outside_the_window() {
        let (_, counts) = run(&[click(1, t(0)), click(2, t(60))]);
        assert_eq!(counts, vec![1, 1]);
        let (_, counts) = run(&[click(1, t(0)), click(2, t(59))]);
        assert_eq!(counts, vec![1, 2]);
    }

    #[test]
    fn given_a_redelivered_click_then_it_is_not_counted_twice() {
        let (_, counts) = run(&[click(1, t(0)), click(1, t(0)), click(2, t(1))]);
        assert_eq!(counts, vec![1, 2]);
    }

    #[test]
    fn given_one_partner_with_an_identifier_when_a_second_claims_it_then_both_are_counted_and_the_first_is_named(
    ) {
        let claim = |n: u128| Claim {
            partner_id: Uuid::from_u128(n),
            kind: "email".into(),
            at: t(0),
        };
        let mut s = Identity::default();
        let mut last = Vec::new();
        for c in [claim(1), claim(2), claim(2)] {
            last = Identity::decide(&s, &c).unwrap();
            s = last.iter().fold(s, Identity::evolve);
            if c.partner_id == Uuid::from_u128(2) && !last.is_empty() {
                let IdentityEvent::IdentityClaimed {
                    accounts, others, ..
                } = &last[0];
                assert_eq!((*accounts, others.clone()), (2, vec![Uuid::from_u128(1)]));
            }
        }
        assert!(last.is_empty(), "a repeat claims nothing");
        assert_eq!(s.partners.len(), 2);
    }
}
