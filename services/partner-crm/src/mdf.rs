//! The MDF budget aggregate (stream `partner-mdf-<uuidv5(partner, period)>`): one partner's
//! market development funds for one period — the budget, requests and their approval, claims
//! with their proof, and reimbursements (`MdfReimbursementApproved`, booked by commissions).
//!
//! The budget stream is the consistency boundary: approved requests never add up to more than
//! the budget, and a request's claims never add up to more than its approved amount, however
//! many claims race (each is decided on the state the others left, or re-decided after losing
//! the append). Pure: never checks the partner or the tier (the caller does); never mixes
//! currencies.

use chrono::{DateTime, Utc};
use pl_money::{Currency, Decimal, Money};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Classify, Kind};

pub const MAX_REQUESTS: usize = 200;
pub const MAX_CLAIMS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSet {
    pub budget_id: Uuid,
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub period: String,
    pub amount: Money,
    pub occurred_at: DateTime<Utc>,
}

/// The `MdfReimbursementApproved` contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reimbursement {
    pub claim_id: Uuid,
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub amount: Money,
    pub period: String,
    pub occurred_at: DateTime<Utc>,
    pub budget_id: Uuid,
    pub request_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum MdfEvent {
    MdfBudgetSet(BudgetSet),
    MdfRequested {
        request_id: Uuid,
        amount: Money,
        activity: String,
        occurred_at: DateTime<Utc>,
    },
    MdfRequestApproved {
        request_id: Uuid,
        amount: Money,
        occurred_at: DateTime<Utc>,
    },
    MdfRequestRejected {
        request_id: Uuid,
        reason: String,
        occurred_at: DateTime<Utc>,
    },
    MdfClaimSubmitted {
        claim_id: Uuid,
        request_id: Uuid,
        amount: Money,
        proof_reference: String,
        occurred_at: DateTime<Utc>,
    },
    MdfReimbursementApproved(Reimbursement),
    MdfClaimRejected {
        claim_id: Uuid,
        reason: String,
        occurred_at: DateTime<Utc>,
    },
}

impl DomainEvent for MdfEvent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MdfCommand {
    SetBudget(BudgetSet),
    Request {
        request_id: Uuid,
        amount: Money,
        activity: String,
        at: DateTime<Utc>,
    },
    ApproveRequest {
        request_id: Uuid,
        /// `None`: as requested.
        amount: Option<Money>,
        at: DateTime<Utc>,
    },
    RejectRequest {
        request_id: Uuid,
        reason: String,
        at: DateTime<Utc>,
    },
    Claim {
        claim_id: Uuid,
        request_id: Uuid,
        amount: Money,
        proof_reference: String,
        at: DateTime<Utc>,
    },
    ApproveClaim {
        claim_id: Uuid,
        at: DateTime<Utc>,
    },
    RejectClaim {
        claim_id: Uuid,
        reason: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Pending,
    Approved,
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub request_id: Uuid,
    pub amount: Money,
    pub approved_amount: Option<Money>,
    pub activity: String,
    pub status: Decision,
    pub reason: String,
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub claim_id: Uuid,
    pub request_id: Uuid,
    pub amount: Money,
    pub proof_reference: String,
    pub status: Decision,
    pub reason: String,
    pub claimed_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Budget {
    pub budget: Option<BudgetSet>,
    pub requests: Vec<Request>,
    pub claims: Vec<Claim>,
}

impl Budget {
    pub fn currency(&self) -> Option<Currency> {
        self.budget.as_ref().map(|b| b.amount.currency())
    }

    pub fn request(&self, id: Uuid) -> Option<&Request> {
        self.requests.iter().find(|r| r.request_id == id)
    }

    pub fn claim(&self, id: Uuid) -> Option<&Claim> {
        self.claims.iter().find(|c| c.claim_id == id)
    }

    /// Sum of the approved requests' approved amounts.
    pub fn committed(&self) -> Decimal {
        self.requests
            .iter()
            .filter(|r| r.status == Decision::Approved)
            .filter_map(|r| r.approved_amount)
            .map(Money::amount)
            .sum()
    }

    /// Sum of the approved claims.
    pub fn reimbursed(&self) -> Decimal {
        self.claims
            .iter()
            .filter(|c| c.status == Decision::Approved)
            .map(|c| c.amount.amount())
            .sum()
    }

    /// What the request's claims (pending or approved) have taken of its approved amount.
    pub fn claimed(&self, request_id: Uuid) -> Decimal {
        self.claims
            .iter()
            .filter(|c| c.request_id == request_id && c.status != Decision::Rejected)
            .map(|c| c.amount.amount())
            .sum()
    }

    pub fn money(&self, amount: Decimal) -> Option<Money> {
        self.currency().map(|c| Money::new(amount, c))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MdfError {
    #[error("the partner has no MDF budget for this period")]
    NoBudget,
    #[error("the budget is in {budget}; {given} cannot be mixed with it")]
    Currency { budget: Currency, given: Currency },
    #[error("the budget cannot go below the {committed} already committed")]
    BelowCommitted { committed: Money },
    #[error("{amount} exceeds the {available} left in the budget")]
    ExceedsBudget { amount: Money, available: Money },
    #[error("{amount} exceeds the {unclaimed} left of the approved request")]
    ExceedsRequest { amount: Money, unclaimed: Money },
    #[error("approving {approved} is more than the {requested} requested")]
    MoreThanRequested { approved: Money, requested: Money },
    #[error("MDF request {0} is unknown")]
    UnknownRequest(Uuid),
    #[error("MDF claim {0} is unknown")]
    UnknownClaim(Uuid),
    #[error("MDF request {0} already exists")]
    RequestExists(Uuid),
    #[error("MDF claim {0} already exists")]
    ClaimExists(Uuid),
    #[error("the request is {0:?}, not {1}")]
    RequestNot(Decision, &'static str),
    #[error("the claim is {0:?}, not pending")]
    ClaimNotPending(Decision),
    #[error("amounts must be positive")]
    NotPositive,
    #[error("the budget holds {0} requests or claims already; no more are accepted")]
    Full(usize),
}

impl Classify for MdfError {
    fn kind(&self) -> Kind {
        match self {
            MdfError::NoBudget => Kind::NotFound {
                what: "MDF budget",
                id: String::new(),
            },
            MdfError::UnknownRequest(id) => Kind::NotFound {
                what: "MDF request",
                id: id.to_string(),
            },
            MdfError::UnknownClaim(id) => Kind::NotFound {
                what: "MDF claim",
                id: id.to_string(),
            },
            MdfError::RequestExists(id) => Kind::AlreadyExists {
                what: "MDF request",
                id: id.to_string(),
            },
            MdfError::ClaimExists(id) => Kind::AlreadyExists {
                what: "MDF claim",
                id: id.to_string(),
            },
            MdfError::Currency { .. }
            | MdfError::BelowCommitted { .. }
            | MdfError::ExceedsBudget { .. }
            | MdfError::ExceedsRequest { .. }
            | MdfError::MoreThanRequested { .. }
            | MdfError::RequestNot(..)
            | MdfError::ClaimNotPending(_)
            | MdfError::NotPositive
            | MdfError::Full(_) => Kind::Rule,
        }
    }
}

fn same_currency(budget: &BudgetSet, m: Money) -> Result<(), MdfError> {
    if m.currency() != budget.amount.currency() {
        return Err(MdfError::Currency {
            budget: budget.amount.currency(),
            given: m.currency(),
        });
    }
    if !m.is_positive() {
        return Err(MdfError::NotPositive);
    }
    Ok(())
}

impl Aggregate for Budget {
    type State = Budget;
    type Command = MdfCommand;
    type Event = MdfEvent;
    type Error = MdfError;

    fn decide(state: &Budget, command: &MdfCommand) -> Result<Vec<MdfEvent>, MdfError> {
        if let MdfCommand::SetBudget(set) = command {
            return match &state.budget {
                None => Ok(vec![MdfEvent::MdfBudgetSet(set.clone())]),
                Some(b) => {
                    if set.amount.currency() != b.amount.currency() {
                        return Err(MdfError::Currency {
                            budget: b.amount.currency(),
                            given: set.amount.currency(),
                        });
                    }
                    if set.amount.amount() == b.amount.amount() {
                        return Ok(vec![]);
                    }
                    let committed = state.committed();
                    if set.amount.amount() < committed {
                        return Err(MdfError::BelowCommitted {
                            committed: Money::new(committed, b.amount.currency()),
                        });
                    }
                    Ok(vec![MdfEvent::MdfBudgetSet(set.clone())])
                }
            };
        }
        let budget = state.budget.as_ref().ok_or(MdfError::NoBudget)?;
        let money = |d: Decimal| Money::new(d, budget.amount.currency());
        let available = budget.amount.amount() - state.committed();
        match command {
            MdfCommand::SetBudget(_) => Ok(vec![]),
            MdfCommand::Request {
                request_id,
                amount,
                activity,
                at,
            } => {
                if state.request(*request_id).is_some() {
                    return Err(MdfError::RequestExists(*request_id));
                }
                if state.requests.len() >= MAX_REQUESTS {
                    return Err(MdfError::Full(MAX_REQUESTS));
                }
                same_currency(budget, *amount)?;
                if amount.amount() > available {
                    return Err(MdfError::ExceedsBudget {
                        amount: *amount,
                        available: money(available),
                    });
                }
                Ok(vec![MdfEvent::MdfRequested {
                    request_id: *request_id,
                    amount: *amount,
                    activity: activity.clone(),
                    occurred_at: *at,
                }])
            }
            MdfCommand::ApproveRequest {
                request_id,
                amount,
                at,
            } => {
                let r = state
                    .request(*request_id)
                    .ok_or(MdfError::UnknownRequest(*request_id))?;
                if r.status != Decision::Pending {
                    return Err(MdfError::RequestNot(r.status, "pending"));
                }
                let approved = amount.unwrap_or(r.amount);
                same_currency(budget, approved)?;
                if approved.amount() > r.amount.amount() {
                    return Err(MdfError::MoreThanRequested {
                        approved,
                        requested: r.amount,
                    });
                }
                if approved.amount() > available {
                    return Err(MdfError::ExceedsBudget {
                        amount: approved,
                        available: money(available),
                    });
                }
                Ok(vec![MdfEvent::MdfRequestApproved {
                    request_id: *request_id,
                    amount: approved,
                    occurred_at: *at,
                }])
            }
            MdfCommand::RejectRequest {
                request_id,
                reason,
                at,
            } => {
                let r = state
                    .request(*request_id)
                    .ok_or(MdfError::UnknownRequest(*request_id))?;
                if r.status != Decision::Pending {
                    return Err(MdfError::RequestNot(r.status, "pending"));
                }
                Ok(vec![MdfEvent::MdfRequestRejected {
                    request_id: *request_id,
                    reason: reason.clone(),
                    occurred_at: *at,
                }])
            }
            MdfCommand::Claim {
                claim_id,
                request_id,
                amount,
                proof_reference,
                at,
            } => {
                if state.claim(*claim_id).is_some() {
                    return Err(MdfError::ClaimExists(*claim_id));
                }
                if state.claims.len() >= MAX_CLAIMS {
                    return Err(MdfError::Full(MAX_CLAIMS));
                }
                let r = state
                    .request(*request_id)
                    .ok_or(MdfError::UnknownRequest(*request_id))?;
                let Some(approved) = r.approved_amount.filter(|_| r.status == Decision::Approved)
                else {
                    return Err(MdfError::RequestNot(r.status, "approved"));
                };
                same_currency(budget, *amount)?;
                let unclaimed = approved.amount() - state.claimed(*request_id);
                if amount.amount() > unclaimed {
                    return Err(MdfError::ExceedsRequest {
                        amount: *amount,
                        unclaimed: money(unclaimed),
                    });
                }
                Ok(vec![MdfEvent::MdfClaimSubmitted {
                    claim_id: *claim_id,
                    request_id: *request_id,
                    amount: *amount,
                    proof_reference: proof_reference.clone(),
                    occurred_at: *at,
                }])
            }
            MdfCommand::ApproveClaim { claim_id, at } => {
                let c = state
                    .claim(*claim_id)
                    .ok_or(MdfError::UnknownClaim(*claim_id))?;
                if c.status != Decision::Pending {
                    return Err(MdfError::ClaimNotPending(c.status));
                }
                // Holds by construction (claims within requests within the budget); checked
                // again because a reimbursement must never overspend, whatever came before.
                let left = budget.amount.amount() - state.reimbursed();
                if c.amount.amount() > left {
                    return Err(MdfError::ExceedsBudget {
                        amount: c.amount,
                        available: money(left),
                    });
                }
                Ok(vec![MdfEvent::MdfReimbursementApproved(Reimbursement {
                    claim_id: *claim_id,
                    partner_id: budget.partner_id,
                    program_id: budget.program_id,
                    amount: c.amount,
                    period: budget.period.clone(),
                    occurred_at: *at,
                    budget_id: budget.budget_id,
                    request_id: c.request_id,
                })])
            }
            MdfCommand::RejectClaim {
                claim_id,
                reason,
                at,
            } => {
                let c = state
                    .claim(*claim_id)
                    .ok_or(MdfError::UnknownClaim(*claim_id))?;
                if c.status != Decision::Pending {
                    return Err(MdfError::ClaimNotPending(c.status));
                }
                Ok(vec![MdfEvent::MdfClaimRejected {
                    claim_id: *claim_id,
                    reason: reason.clone(),
                    occurred_at: *at,
                }])
            }
        }
    }

    fn evolve(mut s: Budget, event: &MdfEvent) -> Budget {
        match event {
            MdfEvent::MdfBudgetSet(b) => s.budget = Some(b.clone()),
            MdfEvent::MdfRequested {
                request_id,
                amount,
                activity,
                occurred_at,
            } => s.requests.push(Request {
                request_id: *request_id,
                amount: *amount,
                approved_amount: None,
                activity: activity.clone(),
                status: Decision::Pending,
                reason: String::new(),
                requested_at: *occurred_at,
            }),
            MdfEvent::MdfRequestApproved {
                request_id, amount, ..
            } => {
                if let Some(r) = s.requests.iter_mut().find(|r| r.request_id == *request_id) {
                    r.status = Decision::Approved;
                    r.approved_amount = Some(*amount);
                }
            }
            MdfEvent::MdfRequestRejected {
                request_id, reason, ..
            } => {
                if let Some(r) = s.requests.iter_mut().find(|r| r.request_id == *request_id) {
                    r.status = Decision::Rejected;
                    r.reason = reason.clone();
                }
            }
            MdfEvent::MdfClaimSubmitted {
                claim_id,
                request_id,
                amount,
                proof_reference,
                occurred_at,
            } => s.claims.push(Claim {
                claim_id: *claim_id,
                request_id: *request_id,
                amount: *amount,
                proof_reference: proof_reference.clone(),
                status: Decision::Pending,
                reason: String::new(),
                claimed_at: *occurred_at,
                decided_at: None,
            }),
            MdfEvent::MdfReimbursementApproved(r) => {
                if let Some(c) = s.claims.iter_mut().find(|c| c.claim_id == r.claim_id) {
                    c.status = Decision::Approved;
                    c.decided_at = Some(r.occurred_at);
                }
            }
            MdfEvent::MdfClaimRejected {
                claim_id,
                reason,
                occurred_at,
            } => {
                if let Some(c) = s.claims.iter_mut().find(|c| c.claim_id == *claim_id) {
                    c.status = Decision::Rejected;
                    c.reason = reason.clone();
                    c.decided_at = Some(*occurred_at);
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    fn usd(s: &str) -> Money {
        format!("{s} USD").parse().unwrap()
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn set(amount: &str) -> MdfCommand {
        MdfCommand::SetBudget(BudgetSet {
            budget_id: id(0xb),
            partner_id: id(1),
            program_id: id(2),
            period: "2026-Q1".into(),
            amount: usd(amount),
            occurred_at: at(),
        })
    }

    fn request(n: u128, amount: &str) -> MdfCommand {
        MdfCommand::Request {
            request_id: id(n),
            amount: usd(amount),
            activity: "trade show".into(),
            at: at(),
        }
    }

    fn approve(n: u128) -> MdfCommand {
        MdfCommand::ApproveRequest {
            request_id: id(n),
            amount: None,
            at: at(),
        }
    }

    fn claim(n: u128, request: u128, amount: &str) -> MdfCommand {
        MdfCommand::Claim {
            claim_id: id(n),
            request_id: id(request),
            amount: usd(amount),
            proof_reference: "doc-1".into(),
            at: at(),
        }
    }

    fn given(cmds: Vec<MdfCommand>) -> Budget {
        cmds.into_iter().fold(Budget::default(), |s, c| {
            let e = Budget::decide(&s, &c).unwrap();
            e.iter().fold(s, Budget::evolve)
        })
    }

    #[test]
    fn given_a_budget_when_requests_are_approved_then_they_never_exceed_it() {
        let state = given(vec![
            set("1000.00"),
            request(1, "700.00"),
            request(2, "600.00"),
            approve(1),
        ]);
        assert_eq!(
            Budget::decide(&state, &approve(2)).unwrap_err(),
            MdfError::ExceedsBudget {
                amount: usd("600.00"),
                available: usd("300.00")
            }
        );
        // Partial approval fits.
        let e = Budget::decide(
            &state,
            &MdfCommand::ApproveRequest {
                request_id: id(2),
                amount: Some(usd("300.00")),
                at: at(),
            },
        )
        .unwrap();
        let state = Budget::evolve(state, &e[0]);
        assert_eq!(state.committed(), usd("1000.00").amount());
        assert!(matches!(
            Budget::decide(&state, &request(3, "0.01")),
            Err(MdfError::ExceedsBudget { .. })
        ));
    }

    #[test]
    fn given_an_approved_request_when_claims_exceed_it_then_the_excess_claim_is_refused() {
        let state = given(vec![
            set("1000.00"),
            request(1, "500.00"),
            approve(1),
            claim(10, 1, "300.00"),
        ]);
        assert_eq!(
            Budget::decide(&state, &claim(11, 1, "200.01")).unwrap_err(),
            MdfError::ExceedsRequest {
                amount: usd("200.01"),
                unclaimed: usd("200.00")
            }
        );
        // A rejected claim frees its amount.
        let state = given(vec![
            set("1000.00"),
            request(1, "500.00"),
            approve(1),
            claim(10, 1, "300.00"),
            MdfCommand::RejectClaim {
                claim_id: id(10),
                reason: "no proof".into(),
                at: at(),
            },
        ]);
        assert!(Budget::decide(&state, &claim(11, 1, "500.00")).is_ok());
    }

    #[test]
    fn given_a_pending_claim_when_approved_then_the_reimbursement_names_partner_program_and_period()
    {
        let state = given(vec![
            set("1000.00"),
            request(1, "500.00"),
            approve(1),
            claim(10, 1, "250.00"),
        ]);
        let e = Budget::decide(
            &state,
            &MdfCommand::ApproveClaim {
                claim_id: id(10),
                at: at(),
            },
        )
        .unwrap();
        let MdfEvent::MdfReimbursementApproved(r) = &e[0] else {
            panic!()
        };
        assert_eq!(
            (r.partner_id, r.program_id, r.period.as_str(), r.amount),
            (id(1), id(2), "2026-Q1", usd("250.00"))
        );
        let (ty, data) = pl_runtime::aggregate::encode_event(&e[0]).unwrap();
        assert_eq!(ty, "MdfReimbursementApproved");
        let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(
            v["amount"],
            serde_json::json!({"amount": "250.00", "currency": "USD"})
        );
        assert_eq!(v["claim_id"], id(10).to_string());
        let state = Budget::evolve(state, &e[0]);
        assert_eq!(
            Budget::decide(
                &state,
                &MdfCommand::ApproveClaim {
                    claim_id: id(10),
                    at: at()
                }
            )
            .unwrap_err(),
            MdfError::ClaimNotPending(Decision::Approved)
        );
    }

    #[test]
    fn a_claim_needs_an_approved_request_and_the_budget_currency() {
        let state = given(vec![set("1000.00"), request(1, "500.00")]);
        assert_eq!(
            Budget::decide(&state, &claim(10, 1, "1.00")).unwrap_err(),
            MdfError::RequestNot(Decision::Pending, "approved")
        );
        let eur = MdfCommand::Request {
            request_id: id(2),
            amount: "5.00 EUR".parse().unwrap(),
            activity: "x".into(),
            at: at(),
        };
        assert!(matches!(
            Budget::decide(&state, &eur),
            Err(MdfError::Currency { .. })
        ));
        assert_eq!(
            Budget::decide(&Budget::default(), &request(1, "1.00")).unwrap_err(),
            MdfError::NoBudget
        );
    }

    #[test]
    fn the_budget_cannot_be_cut_below_what_is_committed() {
        let state = given(vec![set("1000.00"), request(1, "600.00"), approve(1)]);
        assert_eq!(
            Budget::decide(&state, &set("599.99")).unwrap_err(),
            MdfError::BelowCommitted {
                committed: usd("600.00")
            }
        );
        assert_eq!(Budget::decide(&state, &set("600.00")).unwrap().len(), 1);
    }
}
