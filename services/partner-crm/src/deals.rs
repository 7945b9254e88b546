//! Deal registrations. Every registration of one company domain in one program lives in one
//! registry stream (`partner-deals-<uuidv5(program, domain)>`): the consistency boundary of
//! "first valid registration wins" — a registration made while another is in force for the
//! domain is recorded as conflicted, naming the one it lost to, whatever the concurrency. A
//! small pointer stream per deal id (`partner-dealref-<id>`, written first with `NoStream`)
//! makes deal ids unique and says where the deal's registry is.
//!
//! Registrations expire (the program's days after registration); managers approve or reject
//! them with reasons; an approved deal that is won binds the customer to the partner for good,
//! which is published as a restated `DealRegistrationApproved` with the customer id and no
//! expiry (see events.proto). Pure: never checks the partner or reads the clock (expiry is
//! judged at the business time of each command).

use chrono::{DateTime, Utc};
use pl_money::Money;
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Classify, Kind};

/// Registrations of one domain in one program over time.
pub const MAX_DEALS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealRegistered {
    pub deal_id: Uuid,
    pub partner_id: Uuid,
    pub program_id: Uuid,
    /// Lower-case.
    pub customer_domain: String,
    pub company_name: String,
    pub contact_name: String,
    pub contact_email: String,
    pub estimated_value: Money,
    pub notes: String,
    pub registered_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The registration in force it lost to; `None` when this one is valid.
    #[serde(default)]
    pub conflicts_with: Option<Uuid>,
}

/// The `DealRegistrationApproved` contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealApproved {
    pub deal_id: Uuid,
    pub partner_id: Uuid,
    pub program_id: Uuid,
    /// Empty until the deal is won.
    pub customer_id: String,
    pub customer_domain: String,
    pub approved_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    pub occurred_at: DateTime<Utc>,
    /// Set on the restatement published when the deal is won.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub won_at: Option<DateTime<Utc>>,
}

/// The `DealRegistrationRevoked` contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealRevoked {
    pub deal_id: Uuid,
    pub program_id: Uuid,
    pub customer_id: String,
    pub customer_domain: String,
    pub occurred_at: DateTime<Utc>,
    pub partner_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum DealEvent {
    DealRegistered(DealRegistered),
    DealRegistrationApproved(DealApproved),
    DealRegistrationRejected {
        deal_id: Uuid,
        reason: String,
        occurred_at: DateTime<Utc>,
    },
    DealWon {
        deal_id: Uuid,
        customer_id: String,
        occurred_at: DateTime<Utc>,
    },
    DealLost {
        deal_id: Uuid,
        reason: String,
        occurred_at: DateTime<Utc>,
    },
    DealRegistrationRevoked(DealRevoked),
}

impl DomainEvent for DealEvent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DealCommand {
    /// `conflicts_with` is ignored: the registry decides it.
    Register(DealRegistered),
    Approve {
        deal_id: Uuid,
        at: DateTime<Utc>,
    },
    Reject {
        deal_id: Uuid,
        reason: String,
        at: DateTime<Utc>,
    },
    Win {
        deal_id: Uuid,
        customer_id: String,
        at: DateTime<Utc>,
    },
    Lose {
        deal_id: Uuid,
        reason: String,
        at: DateTime<Utc>,
    },
    Revoke {
        deal_id: Uuid,
        reason: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DealStatus {
    Pending,
    Conflicted,
    Approved,
    Rejected,
    Won,
    Lost,
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deal {
    pub registered: DealRegistered,
    pub status: DealStatus,
    pub approved_at: Option<DateTime<Utc>>,
    pub decided_at: Option<DateTime<Utc>>,
    pub reason: String,
    pub customer_id: Option<String>,
}

impl Deal {
    /// Holds the domain at `at`: pending or approved before its expiry, or won.
    pub fn in_force_at(&self, at: DateTime<Utc>) -> bool {
        match self.status {
            DealStatus::Pending | DealStatus::Approved => at < self.registered.expires_at,
            DealStatus::Won => true,
            DealStatus::Conflicted
            | DealStatus::Rejected
            | DealStatus::Lost
            | DealStatus::Revoked => false,
        }
    }

    pub fn expired_at(&self, at: DateTime<Utc>) -> bool {
        matches!(self.status, DealStatus::Pending | DealStatus::Approved)
            && at >= self.registered.expires_at
    }
}

/// Every registration of one domain in one program, in registration order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub deals: Vec<Deal>,
}

impl Registry {
    pub fn deal(&self, deal_id: Uuid) -> Option<&Deal> {
        self.deals.iter().find(|d| d.registered.deal_id == deal_id)
    }

    fn deal_mut(&mut self, deal_id: Uuid) -> Option<&mut Deal> {
        self.deals
            .iter_mut()
            .find(|d| d.registered.deal_id == deal_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DealError {
    #[error("deal {0} already exists")]
    AlreadyExists(Uuid),
    #[error("deal {0} is unknown")]
    NotFound(Uuid),
    #[error("cannot {action} a deal that is {status:?}")]
    WrongStatus {
        action: &'static str,
        status: DealStatus,
    },
    #[error("the registration expired at {0}")]
    Expired(DateTime<Utc>),
    #[error("the domain has {MAX_DEALS} registrations; no more are accepted")]
    Full,
}

impl Classify for DealError {
    fn kind(&self) -> Kind {
        match self {
            DealError::AlreadyExists(id) => Kind::AlreadyExists {
                what: "deal",
                id: id.to_string(),
            },
            DealError::NotFound(id) => Kind::NotFound {
                what: "deal",
                id: id.to_string(),
            },
            DealError::WrongStatus { .. } | DealError::Expired(_) | DealError::Full => Kind::Rule,
        }
    }
}

fn revoked(d: &Deal, reason: &str, at: DateTime<Utc>) -> DealEvent {
    DealEvent::DealRegistrationRevoked(DealRevoked {
        deal_id: d.registered.deal_id,
        program_id: d.registered.program_id,
        customer_id: d.customer_id.clone().unwrap_or_default(),
        customer_domain: d.registered.customer_domain.clone(),
        occurred_at: at,
        partner_id: d.registered.partner_id,
        reason: reason.to_owned(),
    })
}

impl Aggregate for Registry {
    type State = Registry;
    type Command = DealCommand;
    type Event = DealEvent;
    type Error = DealError;

    fn decide(state: &Registry, command: &DealCommand) -> Result<Vec<DealEvent>, DealError> {
        let find = |id: Uuid| state.deal(id).ok_or(DealError::NotFound(id));
        match command {
            DealCommand::Register(r) => {
                if state.deal(r.deal_id).is_some() {
                    return Err(DealError::AlreadyExists(r.deal_id));
                }
                if state.deals.len() >= MAX_DEALS {
                    return Err(DealError::Full);
                }
                let winner = state
                    .deals
                    .iter()
                    .find(|d| d.in_force_at(r.registered_at))
                    .map(|d| d.registered.deal_id);
                Ok(vec![DealEvent::DealRegistered(DealRegistered {
                    conflicts_with: winner,
                    ..r.clone()
                })])
            }
            DealCommand::Approve { deal_id, at } => {
                let d = find(*deal_id)?;
                if d.status != DealStatus::Pending {
                    return Err(DealError::WrongStatus {
                        action: "approve",
                        status: d.status,
                    });
                }
                if *at >= d.registered.expires_at {
                    return Err(DealError::Expired(d.registered.expires_at));
                }
                Ok(vec![DealEvent::DealRegistrationApproved(DealApproved {
                    deal_id: *deal_id,
                    partner_id: d.registered.partner_id,
                    program_id: d.registered.program_id,
                    customer_id: String::new(),
                    customer_domain: d.registered.customer_domain.clone(),
                    approved_at: *at,
                    expires_at: Some(d.registered.expires_at),
                    occurred_at: *at,
                    won_at: None,
                })])
            }
            DealCommand::Reject {
                deal_id,
                reason,
                at,
            } => {
                let d = find(*deal_id)?;
                if d.status != DealStatus::Pending {
                    return Err(DealError::WrongStatus {
                        action: "reject",
                        status: d.status,
                    });
                }
                Ok(vec![DealEvent::DealRegistrationRejected {
                    deal_id: *deal_id,
                    reason: reason.clone(),
                    occurred_at: *at,
                }])
            }
            DealCommand::Win {
                deal_id,
                customer_id,
                at,
            } => {
                let d = find(*deal_id)?;
                let Some(approved_at) = d.approved_at.filter(|_| d.status == DealStatus::Approved)
                else {
                    return Err(DealError::WrongStatus {
                        action: "win",
                        status: d.status,
                    });
                };
                if *at >= d.registered.expires_at {
                    return Err(DealError::Expired(d.registered.expires_at));
                }
                Ok(vec![
                    DealEvent::DealWon {
                        deal_id: *deal_id,
                        customer_id: customer_id.clone(),
                        occurred_at: *at,
                    },
                    DealEvent::DealRegistrationApproved(DealApproved {
                        deal_id: *deal_id,
                        partner_id: d.registered.partner_id,
                        program_id: d.registered.program_id,
                        customer_id: customer_id.clone(),
                        customer_domain: d.registered.customer_domain.clone(),
                        approved_at,
                        expires_at: None,
                        occurred_at: *at,
                        won_at: Some(*at),
                    }),
                ])
            }
            DealCommand::Lose {
                deal_id,
                reason,
                at,
            } => {
                let d = find(*deal_id)?;
                let lost = DealEvent::DealLost {
                    deal_id: *deal_id,
                    reason: reason.clone(),
                    occurred_at: *at,
                };
                match d.status {
                    DealStatus::Pending => Ok(vec![lost]),
                    DealStatus::Approved => Ok(vec![lost, revoked(d, reason, *at)]),
                    status => Err(DealError::WrongStatus {
                        action: "lose",
                        status,
                    }),
                }
            }
            DealCommand::Revoke {
                deal_id,
                reason,
                at,
            } => {
                let d = find(*deal_id)?;
                match d.status {
                    DealStatus::Approved | DealStatus::Won => Ok(vec![revoked(d, reason, *at)]),
                    status => Err(DealError::WrongStatus {
                        action: "revoke",
                        status,
                    }),
                }
            }
        }
    }

    fn evolve(mut state: Registry, event: &DealEvent) -> Registry {
        match event {
            DealEvent::DealRegistered(r) => state.deals.push(Deal {
                registered: r.clone(),
                status: if r.conflicts_with.is_some() {
                    DealStatus::Conflicted
                } else {
                    DealStatus::Pending
                },
                approved_at: None,
                decided_at: r.conflicts_with.map(|_| r.registered_at),
                reason: r
                    .conflicts_with
                    .map(|w| format!("conflicts with registration {w}, registered first"))
                    .unwrap_or_default(),
                customer_id: None,
            }),
            DealEvent::DealRegistrationApproved(a) => {
                if let Some(d) = state.deal_mut(a.deal_id) {
                    if a.won_at.is_some() {
                        d.customer_id = Some(a.customer_id.clone());
                    } else {
                        d.status = DealStatus::Approved;
                        d.approved_at = Some(a.approved_at);
                        d.decided_at = Some(a.occurred_at);
                    }
                }
            }
            DealEvent::DealRegistrationRejected {
                deal_id,
                reason,
                occurred_at,
            } => {
                if let Some(d) = state.deal_mut(*deal_id) {
                    d.status = DealStatus::Rejected;
                    d.reason = reason.clone();
                    d.decided_at = Some(*occurred_at);
                }
            }
            DealEvent::DealWon {
                deal_id,
                customer_id,
                occurred_at,
            } => {
                if let Some(d) = state.deal_mut(*deal_id) {
                    d.status = DealStatus::Won;
                    d.customer_id = Some(customer_id.clone());
                    d.decided_at = Some(*occurred_at);
                }
            }
            DealEvent::DealLost {
                deal_id,
                reason,
                occurred_at,
            } => {
                if let Some(d) = state.deal_mut(*deal_id) {
                    d.status = DealStatus::Lost;
                    d.reason = reason.clone();
                    d.decided_at = Some(*occurred_at);
                }
            }
            DealEvent::DealRegistrationRevoked(r) => {
                if let Some(d) = state.deal_mut(r.deal_id) {
                    // A lost deal stays lost; the revocation only ends the ownership.
                    if d.status != DealStatus::Lost {
                        d.status = DealStatus::Revoked;
                        d.reason = r.reason.clone();
                        d.decided_at = Some(r.occurred_at);
                    }
                }
            }
        }
        state
    }
}

// ----- the pointer from a deal id to its registry ------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealLocated {
    pub deal_id: Uuid,
    pub program_id: Uuid,
    pub customer_domain: String,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum DealRefEvent {
    DealLocated(DealLocated),
}

impl DomainEvent for DealRefEvent {}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DealRef(pub Option<DealLocated>);

impl Aggregate for DealRef {
    type State = DealRef;
    type Command = DealLocated;
    type Event = DealRefEvent;
    type Error = DealError;

    fn decide(state: &DealRef, c: &DealLocated) -> Result<Vec<DealRefEvent>, DealError> {
        match &state.0 {
            None => Ok(vec![DealRefEvent::DealLocated(c.clone())]),
            // A retry of the same registration finds its pointer: nothing to do.
            Some(l) if l.program_id == c.program_id && l.customer_domain == c.customer_domain => {
                Ok(vec![])
            }
            Some(_) => Err(DealError::AlreadyExists(c.deal_id)),
        }
    }

    fn evolve(_state: DealRef, event: &DealRefEvent) -> DealRef {
        let DealRefEvent::DealLocated(l) = event;
        DealRef(Some(l.clone()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn t(days: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + days * 86_400, 0).unwrap()
    }

    fn register(deal: u128, partner: u128, day: i64) -> DealCommand {
        DealCommand::Register(DealRegistered {
            deal_id: Uuid::from_u128(deal),
            partner_id: Uuid::from_u128(partner),
            program_id: Uuid::from_u128(2),
            customer_domain: "acme.example".into(),
            company_name: "Acme".into(),
            contact_name: "Jo".into(),
            contact_email: "jo@acme.example".into(),
            estimated_value: "50000.00 USD".parse().unwrap(),
            notes: String::new(),
            registered_at: t(day),
            expires_at: t(day + 90),
            conflicts_with: None,
        })
    }

    fn run(state: Registry, c: DealCommand) -> Result<(Registry, Vec<DealEvent>), DealError> {
        let e = Registry::decide(&state, &c)?;
        Ok((e.iter().fold(state, Registry::evolve), e))
    }

    fn given(cmds: Vec<DealCommand>) -> Registry {
        cmds.into_iter()
            .fold(Registry::default(), |s, c| run(s, c).unwrap().0)
    }

    fn d(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn given_a_registration_in_force_when_another_partner_registers_the_domain_then_the_second_is_conflicted(
    ) {
        let state = given(vec![register(1, 10, 0)]);
        let (state, _) = run(state, register(2, 20, 5)).unwrap();
        let second = state.deal(d(2)).unwrap();
        assert_eq!(second.status, DealStatus::Conflicted);
        assert_eq!(second.registered.conflicts_with, Some(d(1)));
        assert_eq!(
            Registry::decide(
                &state,
                &DealCommand::Approve {
                    deal_id: d(2),
                    at: t(6)
                }
            )
            .unwrap_err(),
            DealError::WrongStatus {
                action: "approve",
                status: DealStatus::Conflicted
            }
        );
    }

    #[test]
    fn given_an_expired_registration_when_another_partner_registers_then_the_new_one_is_valid() {
        let state = given(vec![register(1, 10, 0)]);
        let (state, _) = run(state, register(2, 20, 90)).unwrap();
        assert_eq!(state.deal(d(2)).unwrap().status, DealStatus::Pending);
        assert!(state.deal(d(1)).unwrap().expired_at(t(90)));
        assert_eq!(
            Registry::decide(
                &state,
                &DealCommand::Approve {
                    deal_id: d(1),
                    at: t(91)
                }
            )
            .unwrap_err(),
            DealError::Expired(t(90))
        );
    }

    #[test]
    fn given_a_rejected_registration_then_the_domain_is_free_for_the_next() {
        let state = given(vec![
            register(1, 10, 0),
            DealCommand::Reject {
                deal_id: d(1),
                reason: "existing customer".into(),
                at: t(1),
            },
        ]);
        assert_eq!(state.deal(d(1)).unwrap().reason, "existing customer");
        let (state, _) = run(state, register(2, 20, 2)).unwrap();
        assert_eq!(state.deal(d(2)).unwrap().status, DealStatus::Pending);
    }

    #[test]
    fn given_an_approved_deal_when_won_then_the_customer_is_bound_without_expiry() {
        let state = given(vec![
            register(1, 10, 0),
            DealCommand::Approve {
                deal_id: d(1),
                at: t(1),
            },
        ]);
        let (state, events) = run(
            state,
            DealCommand::Win {
                deal_id: d(1),
                customer_id: "cus_42".into(),
                at: t(30),
            },
        )
        .unwrap();
        let DealEvent::DealRegistrationApproved(a) = &events[1] else {
            panic!()
        };
        assert_eq!(
            (a.approved_at, a.expires_at, a.won_at),
            (t(1), None, Some(t(30)))
        );
        assert_eq!(a.customer_id, "cus_42");
        let deal = state.deal(d(1)).unwrap();
        assert_eq!(deal.status, DealStatus::Won);
        // A won deal holds the domain for good: later registrations conflict.
        let (state, _) = run(state, register(2, 20, 400)).unwrap();
        assert_eq!(state.deal(d(2)).unwrap().status, DealStatus::Conflicted);
        // Revoking the win ends the ownership.
        let (state, events) = run(
            state,
            DealCommand::Revoke {
                deal_id: d(1),
                reason: "misconduct".into(),
                at: t(401),
            },
        )
        .unwrap();
        let DealEvent::DealRegistrationRevoked(r) = &events[0] else {
            panic!()
        };
        assert_eq!(r.customer_id, "cus_42");
        assert_eq!(state.deal(d(1)).unwrap().status, DealStatus::Revoked);
    }

    #[test]
    fn given_an_approved_deal_when_lost_then_its_ownership_is_revoked() {
        let state = given(vec![
            register(1, 10, 0),
            DealCommand::Approve {
                deal_id: d(1),
                at: t(1),
            },
        ]);
        let (state, events) = run(
            state,
            DealCommand::Lose {
                deal_id: d(1),
                reason: "chose a rival".into(),
                at: t(2),
            },
        )
        .unwrap();
        assert!(matches!(events[1], DealEvent::DealRegistrationRevoked(_)));
        assert_eq!(state.deal(d(1)).unwrap().status, DealStatus::Lost);
        assert!(Registry::decide(
            &state,
            &DealCommand::Win {
                deal_id: d(1),
                customer_id: "c".into(),
                at: t(3)
            }
        )
        .is_err());
    }

    #[test]
    fn a_pending_deal_cannot_be_won_and_an_unknown_one_is_not_found() {
        let state = given(vec![register(1, 10, 0)]);
        assert!(matches!(
            Registry::decide(
                &state,
                &DealCommand::Win {
                    deal_id: d(1),
                    customer_id: "c".into(),
                    at: t(1)
                }
            ),
            Err(DealError::WrongStatus { action: "win", .. })
        ));
        assert_eq!(
            Registry::decide(
                &state,
                &DealCommand::Approve {
                    deal_id: d(9),
                    at: t(1)
                }
            )
            .unwrap_err(),
            DealError::NotFound(d(9))
        );
        assert_eq!(
            Registry::decide(&state, &register(1, 10, 0)).unwrap_err(),
            DealError::AlreadyExists(d(1))
        );
    }

    #[test]
    fn a_deal_id_points_to_one_registry_only() {
        let here = DealLocated {
            deal_id: d(1),
            program_id: d(2),
            customer_domain: "a.example".into(),
            occurred_at: t(0),
        };
        let state = DealRef::evolve(DealRef::default(), &DealRefEvent::DealLocated(here.clone()));
        assert!(DealRef::decide(&state, &here).unwrap().is_empty());
        let elsewhere = DealLocated {
            customer_domain: "b.example".into(),
            ..here
        };
        assert_eq!(
            DealRef::decide(&state, &elsewhere).unwrap_err(),
            DealError::AlreadyExists(d(1))
        );
    }
}
