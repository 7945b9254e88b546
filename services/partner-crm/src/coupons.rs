//! The coupon code aggregate (stream `partner-code-<uuidv5(program, CODE)>`): every coupon ever
//! issued under one code of one program. The stream is the code's uniqueness boundary: two
//! partners claiming one code (in any letter case) at once race on this stream's version, and
//! exactly one wins; the other is re-decided and finds the code taken. A code is issued again
//! only after its coupon ended (deactivated or expired), never while it is in force. Pure: it
//! never checks the partner (the caller does).

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Classify, Kind};
use crate::streams;

/// Coupons issued under one code over time.
pub const MAX_ISSUES: usize = 1000;

/// The `CouponIssued` contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponIssued {
    pub coupon_id: Uuid,
    /// As the caller wrote it; compared upper-cased.
    pub code: String,
    pub partner_id: Uuid,
    pub program_id: Uuid,
    #[serde(with = "crate::wire::opt_id", default)]
    pub campaign_id: Option<Uuid>,
    pub valid_from: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    pub occurred_at: DateTime<Utc>,
}

/// The `CouponDeactivated` contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponDeactivated {
    pub coupon_id: Uuid,
    pub code: String,
    pub program_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub reason: String,
    pub partner_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CouponEvent {
    CouponIssued(CouponIssued),
    CouponDeactivated(CouponDeactivated),
}

impl DomainEvent for CouponEvent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub program_id: Uuid,
    pub code: String,
    pub partner_id: Uuid,
    pub campaign_id: Option<Uuid>,
    pub valid_from: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CouponCommand {
    Issue(Issue),
    Deactivate { reason: String, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coupon {
    pub issued: CouponIssued,
    pub deactivated_at: Option<DateTime<Utc>>,
    pub deactivation_reason: String,
}

impl Coupon {
    /// When it stops (or stopped) working: the earlier of its deactivation and its expiry.
    pub fn ends_at(&self) -> Option<DateTime<Utc>> {
        match (self.deactivated_at, self.issued.expires_at) {
            (Some(d), Some(e)) => Some(d.min(e)),
            (d, e) => d.or(e),
        }
    }

    pub fn in_force_at(&self, at: DateTime<Utc>) -> bool {
        self.issued.valid_from <= at && self.ends_at().is_none_or(|e| at < e)
    }
}

/// Every coupon of one code, oldest first; the last is the current one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Code {
    pub coupons: Vec<Coupon>,
}

impl Code {
    pub fn current(&self) -> Option<&Coupon> {
        self.coupons.last()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CouponError {
    #[error("code {code:?} is taken in this program (coupon {coupon_id})")]
    CodeTaken { code: String, coupon_id: Uuid },
    #[error("coupon code is unknown in this program")]
    NotFound,
    #[error("the coupon already stopped working at {0}")]
    AlreadyEnded(DateTime<Utc>),
    #[error("code was issued {MAX_ISSUES} times; no more are accepted")]
    Full,
}

impl Classify for CouponError {
    fn kind(&self) -> Kind {
        match self {
            CouponError::CodeTaken { code, .. } => Kind::AlreadyExists {
                what: "coupon code",
                id: code.clone(),
            },
            CouponError::NotFound => Kind::NotFound {
                what: "coupon code",
                id: String::new(),
            },
            CouponError::AlreadyEnded(_) | CouponError::Full => Kind::Rule,
        }
    }
}

impl Aggregate for Code {
    type State = Code;
    type Command = CouponCommand;
    type Event = CouponEvent;
    type Error = CouponError;

    fn decide(state: &Code, command: &CouponCommand) -> Result<Vec<CouponEvent>, CouponError> {
        match command {
            CouponCommand::Issue(i) => {
                if let Some(current) = state.current() {
                    // Free again only once the current coupon has ended, before the new one
                    // starts: the windows of one code never overlap.
                    let free = current
                        .ends_at()
                        .is_some_and(|end| end <= i.at && end <= i.valid_from);
                    if !free {
                        return Err(CouponError::CodeTaken {
                            code: i.code.to_uppercase(),
                            coupon_id: current.issued.coupon_id,
                        });
                    }
                }
                if state.coupons.len() >= MAX_ISSUES {
                    return Err(CouponError::Full);
                }
                let key = streams::code_key(i.program_id, &i.code);
                Ok(vec![CouponEvent::CouponIssued(CouponIssued {
                    coupon_id: streams::coupon_id(key, state.coupons.len()),
                    code: i.code.clone(),
                    partner_id: i.partner_id,
                    program_id: i.program_id,
                    campaign_id: i.campaign_id,
                    valid_from: i.valid_from,
                    expires_at: i.expires_at,
                    occurred_at: i.at,
                })])
            }
            CouponCommand::Deactivate { reason, at } => {
                let current = state.current().ok_or(CouponError::NotFound)?;
                if let Some(end) = current.ends_at().filter(|e| *e <= *at) {
                    return Err(CouponError::AlreadyEnded(end));
                }
                Ok(vec![CouponEvent::CouponDeactivated(CouponDeactivated {
                    coupon_id: current.issued.coupon_id,
                    code: current.issued.code.clone(),
                    program_id: current.issued.program_id,
                    occurred_at: *at,
                    reason: reason.clone(),
                    partner_id: current.issued.partner_id,
                })])
            }
        }
    }

    fn evolve(mut state: Code, event: &CouponEvent) -> Code {
        match event {
            CouponEvent::CouponIssued(c) => state.coupons.push(Coupon {
                issued: c.clone(),
                deactivated_at: None,
                deactivation_reason: String::new(),
            }),
            CouponEvent::CouponDeactivated(d) => {
                if let Some(c) = state
                    .coupons
                    .iter_mut()
                    .find(|c| c.issued.coupon_id == d.coupon_id)
                {
                    if c.deactivated_at.is_none_or(|old| d.occurred_at < old) {
                        c.deactivated_at = Some(d.occurred_at);
                        c.deactivation_reason = d.reason.clone();
                    }
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

    const PROGRAM: Uuid = Uuid::from_u128(2);

    fn t(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + h * 3600, 0).unwrap()
    }

    fn issue(partner: u128, code: &str, h: i64, expires: Option<i64>) -> CouponCommand {
        CouponCommand::Issue(Issue {
            program_id: PROGRAM,
            code: code.into(),
            partner_id: Uuid::from_u128(partner),
            campaign_id: None,
            valid_from: t(h),
            expires_at: expires.map(t),
            at: t(h),
        })
    }

    fn given(cmds: &[CouponCommand]) -> Code {
        cmds.iter().fold(Code::default(), |s, c| {
            let e = Code::decide(&s, c).unwrap();
            e.iter().fold(s, Code::evolve)
        })
    }

    #[test]
    fn given_a_code_in_force_when_another_partner_claims_it_in_another_case_then_it_is_taken() {
        let state = given(&[issue(1, "summer10", 0, None)]);
        let err = Code::decide(&state, &issue(2, "SUMMER10", 1, None)).unwrap_err();
        assert!(matches!(err, CouponError::CodeTaken { ref code, .. } if code == "SUMMER10"));
        // The holder cannot take it twice either.
        assert!(Code::decide(&state, &issue(1, "Summer10", 1, None)).is_err());
    }

    #[test]
    fn given_a_deactivated_code_then_it_may_be_issued_again_with_a_new_coupon_id() {
        let state = given(&[
            issue(1, "SUMMER10", 0, None),
            CouponCommand::Deactivate {
                reason: "campaign over".into(),
                at: t(5),
            },
        ]);
        let again = Code::decide(&state, &issue(2, "summer10", 6, None)).unwrap();
        let CouponEvent::CouponIssued(c) = &again[0] else {
            panic!()
        };
        assert_ne!(c.coupon_id, state.coupons[0].issued.coupon_id);
        assert_eq!(c.partner_id, Uuid::from_u128(2));
    }

    #[test]
    fn given_an_expired_code_then_it_is_free_again_but_not_before_it_expires() {
        let state = given(&[issue(1, "WINTER", 0, Some(10))]);
        assert!(state.coupons[0].in_force_at(t(9)));
        assert!(!state.coupons[0].in_force_at(t(10)));
        assert!(Code::decide(&state, &issue(2, "WINTER", 9, None)).is_err());
        assert!(Code::decide(&state, &issue(2, "WINTER", 10, None)).is_ok());
        assert_eq!(
            Code::decide(
                &state,
                &CouponCommand::Deactivate {
                    reason: "x".into(),
                    at: t(11)
                }
            )
            .unwrap_err(),
            CouponError::AlreadyEnded(t(10))
        );
    }

    #[test]
    fn a_deactivation_names_the_current_coupon_in_the_contract_shape() {
        let state = given(&[issue(1, "Spring", 0, None)]);
        let e = Code::decide(
            &state,
            &CouponCommand::Deactivate {
                reason: "fraud".into(),
                at: t(1),
            },
        )
        .unwrap();
        let (ty, data) = pl_runtime::aggregate::encode_event(&e[0]).unwrap();
        assert_eq!(ty, "CouponDeactivated");
        let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(
            v["coupon_id"],
            state.coupons[0].issued.coupon_id.to_string()
        );
        assert_eq!(v["code"], "Spring");
        assert_eq!(v["program_id"], PROGRAM.to_string());
    }
}
