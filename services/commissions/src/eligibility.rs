//! Payout eligibility: commissions' own projection of compliance's integration events
//! (`VerificationRecorded`, `PayoutHoldPlaced`, `PayoutHoldReleased`,
//! `SanctionsStatusChanged`), one stream per partner
//! (`eligibility-<partner id>`). Commissions never reads compliance's streams or calls it at
//! payout time: what it knows arrived over the bus and is kept here, so a payout run decides on
//! facts in its own log and can be replayed. Pure decide/evolve: no I/O, no clock.
//!
//! A partner is eligible at a date D when no payout hold is in place, no sanctions screening
//! stands at a match (pending review or confirmed), a tax form is valid at D
//! (a verified W-9, or a verified W-8BEN whose `valid_until` is after D) and their identity is
//! verified (KYC, or KYB for a business). Every expiry is judged at D, the run's date, never at
//! the clock, so the answer for a run is the same whenever it is computed.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Compliance facts kept per partner. A partner with more than this many verifications and
/// holds is refused (dead-lettered) rather than growing the stream without bound.
pub const MAX_FACTS: usize = 10_000;

/// The kinds of verification compliance reports (its contract lists them all).
pub const KINDS: &[&str] = &[
    "kyc",
    "kyb",
    "tax_form_w9",
    "tax_form_w8ben",
    "licence",
    "data_sharing_agreement",
    "disclosure_acknowledgement",
];
pub const STATUSES: &[&str] = &["verified", "rejected", "pending"];
/// Where a sanctions screening can stand (compliance's contract lists them all).
pub const SANCTIONS_STATUSES: &[&str] = &["match_pending_review", "cleared", "confirmed"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum EligibilityEvent {
    VerificationRecorded {
        source_event_id: Uuid,
        partner_id: Uuid,
        kind: String,
        status: String,
        occurred_at: DateTime<Utc>,
        valid_until: Option<DateTime<Utc>>,
    },
    PayoutHoldPlaced {
        source_event_id: Uuid,
        partner_id: Uuid,
        hold_id: String,
        reason: String,
        occurred_at: DateTime<Utc>,
    },
    PayoutHoldReleased {
        source_event_id: Uuid,
        partner_id: Uuid,
        hold_id: String,
        reason: String,
        occurred_at: DateTime<Utc>,
    },
    SanctionsStatusChanged {
        source_event_id: Uuid,
        partner_id: Uuid,
        screening_id: Uuid,
        /// One of [`SANCTIONS_STATUSES`].
        status: String,
        occurred_at: DateTime<Utc>,
    },
}
impl DomainEvent for EligibilityEvent {}

impl EligibilityEvent {
    fn source(&self) -> Uuid {
        match self {
            EligibilityEvent::VerificationRecorded {
                source_event_id, ..
            }
            | EligibilityEvent::PayoutHoldPlaced {
                source_event_id, ..
            }
            | EligibilityEvent::PayoutHoldReleased {
                source_event_id, ..
            }
            | EligibilityEvent::SanctionsStatusChanged {
                source_event_id, ..
            } => *source_event_id,
        }
    }

    pub fn partner(&self) -> Uuid {
        match self {
            EligibilityEvent::VerificationRecorded { partner_id, .. }
            | EligibilityEvent::PayoutHoldPlaced { partner_id, .. }
            | EligibilityEvent::PayoutHoldReleased { partner_id, .. }
            | EligibilityEvent::SanctionsStatusChanged { partner_id, .. } => *partner_id,
        }
    }
}

/// The command is the fact itself, carrying the id of the consumed event.
pub type Record = EligibilityEvent;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub status: String,
    pub occurred_at: DateTime<Utc>,
    pub valid_until: Option<DateTime<Utc>>,
}

impl Verification {
    fn valid_at(&self, at: DateTime<Utc>) -> bool {
        self.status == "verified" && self.valid_until.is_none_or(|until| until > at)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldFact {
    pub placed: bool,
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default)]
pub struct Eligibility {
    pub partner_id: Option<Uuid>,
    /// Consumed events already recorded: a redelivery records nothing.
    pub seen: BTreeSet<Uuid>,
    /// Every verification by kind, in log order.
    pub verifications: BTreeMap<String, Vec<Verification>>,
    /// Every placement and release by hold id, in log order.
    pub holds: BTreeMap<String, Vec<HoldFact>>,
    /// Every state of each sanctions screening, in log order, with when it was reached.
    pub sanctions: BTreeMap<Uuid, Vec<(String, DateTime<Utc>)>>,
}

/// Why a partner may not be paid at a date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Blocker {
    /// A payout hold is in place.
    PayoutHold { hold_id: String, reason: String },
    /// No W-9 or W-8BEN was ever verified.
    NoValidTaxForm,
    /// The verified W-8BEN had expired by the run's date (and there is no W-9).
    TaxFormExpired { valid_until: DateTime<Utc> },
    /// Neither KYC nor KYB is verified and valid at the run's date; `status` is the latest
    /// known one of either (pending, rejected, expired) or "missing".
    IdentityNotVerified { status: String },
    /// A sanctions screening found a match that compliance has not reviewed yet.
    SanctionsReview { screening_id: Uuid },
    /// Compliance confirmed a sanctions match.
    SanctionsConfirmed { screening_id: Uuid },
}

impl Blocker {
    pub fn code(&self) -> &'static str {
        match self {
            Blocker::PayoutHold { .. } => "payout_hold",
            Blocker::NoValidTaxForm => "no_valid_tax_form",
            Blocker::TaxFormExpired { .. } => "tax_form_expired",
            Blocker::IdentityNotVerified { .. } => "identity_not_verified",
            Blocker::SanctionsReview { .. } => "sanctions_review",
            Blocker::SanctionsConfirmed { .. } => "sanctions_confirmed",
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Blocker::PayoutHold { hold_id, reason } => {
                format!("payout hold {hold_id} is in place: {reason}")
            }
            Blocker::NoValidTaxForm => "no verified W-9 or W-8BEN".to_owned(),
            Blocker::TaxFormExpired { valid_until } => {
                format!("the W-8BEN expired at {valid_until}")
            }
            Blocker::IdentityNotVerified { status } => {
                format!("KYC/KYB not verified (latest: {status})")
            }
            Blocker::SanctionsReview { screening_id } => {
                format!("sanctions screening {screening_id} found a match pending review")
            }
            Blocker::SanctionsConfirmed { screening_id } => {
                format!("sanctions screening {screening_id}: match confirmed")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EligibilityError {
    #[error("the fact is about partner {got}, the stream is partner {stream}'s")]
    WrongPartner { stream: Uuid, got: Uuid },
    #[error("partner has {MAX_FACTS} compliance facts already")]
    TooManyFacts,
}

impl Eligibility {
    /// The latest verification of `kind` that occurred by `at` (the business time of the run):
    /// a verification reported after the run's date does not make the run's partner eligible.
    fn latest(&self, kind: &str, at: DateTime<Utc>) -> Option<&Verification> {
        self.verifications
            .get(kind)?
            .iter()
            .filter(|v| v.occurred_at <= at)
            .max_by_key(|v| v.occurred_at)
    }

    /// Every reason the partner may not be paid at `at`; empty when eligible.
    ///
    /// Holds and sanctions matches are judged on everything known, whatever their date: each
    /// is a stop instruction, and money must never leave against one, even for a run dated
    /// before it was placed.
    pub fn blockers(&self, at: DateTime<Utc>) -> Vec<Blocker> {
        let mut out = Vec::new();
        for (screening_id, states) in &self.sanctions {
            // The last state reached: a review ends a pending match whatever the times say.
            match states.last().map(|(s, _)| s.as_str()) {
                Some("match_pending_review") => out.push(Blocker::SanctionsReview {
                    screening_id: *screening_id,
                }),
                Some("confirmed") => out.push(Blocker::SanctionsConfirmed {
                    screening_id: *screening_id,
                }),
                _ => {}
            }
        }
        for (hold_id, facts) in &self.holds {
            if let Some(last) = facts.iter().max_by_key(|f| f.occurred_at) {
                if last.placed {
                    out.push(Blocker::PayoutHold {
                        hold_id: hold_id.clone(),
                        reason: last.reason.clone(),
                    });
                }
            }
        }
        let w9 = self.latest("tax_form_w9", at).filter(|v| v.valid_at(at));
        let w8 = self.latest("tax_form_w8ben", at);
        if w9.is_none() && !w8.is_some_and(|v| v.valid_at(at)) {
            match w8 {
                Some(Verification {
                    status,
                    valid_until: Some(until),
                    ..
                }) if status == "verified" => {
                    out.push(Blocker::TaxFormExpired {
                        valid_until: *until,
                    });
                }
                _ => out.push(Blocker::NoValidTaxForm),
            }
        }
        let identity = [self.latest("kyc", at), self.latest("kyb", at)];
        if !identity.iter().flatten().any(|v| v.valid_at(at)) {
            let status = identity
                .iter()
                .flatten()
                .max_by_key(|v| v.occurred_at)
                .map_or("missing".to_owned(), |v| {
                    if v.status == "verified" {
                        "expired".to_owned()
                    } else {
                        v.status.clone()
                    }
                });
            out.push(Blocker::IdentityNotVerified { status });
        }
        out
    }

    fn facts(&self) -> usize {
        self.verifications.values().map(Vec::len).sum::<usize>()
            + self.holds.values().map(Vec::len).sum::<usize>()
            + self.sanctions.values().map(Vec::len).sum::<usize>()
    }
}

impl Aggregate for Eligibility {
    type State = Eligibility;
    type Command = Record;
    type Event = EligibilityEvent;
    type Error = EligibilityError;

    fn decide(
        state: &Eligibility,
        fact: &Record,
    ) -> Result<Vec<EligibilityEvent>, EligibilityError> {
        if let Some(stream) = state.partner_id.filter(|p| *p != fact.partner()) {
            return Err(EligibilityError::WrongPartner {
                stream,
                got: fact.partner(),
            });
        }
        if state.seen.contains(&fact.source()) {
            return Ok(vec![]);
        }
        if state.facts() >= MAX_FACTS {
            return Err(EligibilityError::TooManyFacts);
        }
        Ok(vec![fact.clone()])
    }

    fn evolve(mut state: Eligibility, event: &EligibilityEvent) -> Eligibility {
        state.partner_id.get_or_insert(event.partner());
        state.seen.insert(event.source());
        match event {
            EligibilityEvent::VerificationRecorded {
                kind,
                status,
                occurred_at,
                valid_until,
                ..
            } => state
                .verifications
                .entry(kind.clone())
                .or_default()
                .push(Verification {
                    status: status.clone(),
                    occurred_at: *occurred_at,
                    valid_until: *valid_until,
                }),
            EligibilityEvent::PayoutHoldPlaced {
                hold_id,
                reason,
                occurred_at,
                ..
            }
            | EligibilityEvent::PayoutHoldReleased {
                hold_id,
                reason,
                occurred_at,
                ..
            } => state
                .holds
                .entry(hold_id.clone())
                .or_default()
                .push(HoldFact {
                    placed: matches!(event, EligibilityEvent::PayoutHoldPlaced { .. }),
                    reason: reason.clone(),
                    occurred_at: *occurred_at,
                }),
            EligibilityEvent::SanctionsStatusChanged {
                screening_id,
                status,
                occurred_at,
                ..
            } => state
                .sanctions
                .entry(*screening_id)
                .or_default()
                .push((status.clone(), *occurred_at)),
        }
        state
    }
}

pub fn stream(partner_id: Uuid) -> String {
    format!("eligibility-{partner_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const P: Uuid = Uuid::from_u128(1);

    fn day(m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, m, d, 0, 0, 0).unwrap()
    }

    fn verified(id: u128, kind: &str, at: DateTime<Utc>, until: Option<DateTime<Utc>>) -> Record {
        EligibilityEvent::VerificationRecorded {
            source_event_id: Uuid::from_u128(id),
            partner_id: P,
            kind: kind.into(),
            status: "verified".into(),
            occurred_at: at,
            valid_until: until,
        }
    }

    fn given(facts: &[Record]) -> Eligibility {
        facts.iter().fold(Eligibility::default(), |s, f| {
            Eligibility::decide(&s, f)
                .unwrap()
                .iter()
                .fold(s, Eligibility::evolve)
        })
    }

    #[test]
    fn a_partner_with_nothing_on_file_is_blocked_for_tax_form_and_identity() {
        let b = Eligibility::default().blockers(day(3, 1));
        assert_eq!(
            b,
            vec![
                Blocker::NoValidTaxForm,
                Blocker::IdentityNotVerified {
                    status: "missing".into()
                }
            ]
        );
    }

    #[test]
    fn a_w8ben_is_valid_until_the_day_it_expires_judged_at_the_run_date() {
        let s = given(&[
            verified(1, "kyc", day(1, 1), None),
            verified(2, "tax_form_w8ben", day(1, 1), Some(day(3, 1))),
        ]);
        assert!(s.blockers(day(2, 28)).is_empty());
        assert_eq!(
            s.blockers(day(3, 1)),
            vec![Blocker::TaxFormExpired {
                valid_until: day(3, 1)
            }]
        );
    }

    #[test]
    fn a_hold_blocks_until_released_and_a_redelivery_records_nothing() {
        let place = EligibilityEvent::PayoutHoldPlaced {
            source_event_id: Uuid::from_u128(3),
            partner_id: P,
            hold_id: "h1".into(),
            reason: "fraud review".into(),
            occurred_at: day(2, 1),
        };
        let s = given(&[
            verified(1, "kyb", day(1, 1), None),
            verified(2, "tax_form_w9", day(1, 1), None),
            place.clone(),
        ]);
        assert!(Eligibility::decide(&s, &place).unwrap().is_empty());
        assert_eq!(s.blockers(day(3, 1))[0].code(), "payout_hold");
        let s = given(&[
            verified(1, "kyb", day(1, 1), None),
            verified(2, "tax_form_w9", day(1, 1), None),
            place,
            EligibilityEvent::PayoutHoldReleased {
                source_event_id: Uuid::from_u128(4),
                partner_id: P,
                hold_id: "h1".into(),
                reason: "cleared".into(),
                occurred_at: day(2, 5),
            },
        ]);
        assert!(s.blockers(day(3, 1)).is_empty());
    }

    fn sanctions(id: u128, screening: u128, status: &str, at: DateTime<Utc>) -> Record {
        EligibilityEvent::SanctionsStatusChanged {
            source_event_id: Uuid::from_u128(id),
            partner_id: P,
            screening_id: Uuid::from_u128(screening),
            status: status.into(),
            occurred_at: at,
        }
    }

    #[test]
    fn a_sanctions_match_blocks_payouts_until_cleared_and_a_confirmed_one_for_good() {
        let on_file = [
            verified(1, "kyc", day(1, 1), None),
            verified(2, "tax_form_w9", day(1, 1), None),
        ];
        let pending = sanctions(3, 77, "match_pending_review", day(2, 1));
        let s = given(&[on_file[0].clone(), on_file[1].clone(), pending.clone()]);
        // A stop instruction: it blocks even a run dated before the match was found.
        for at in [day(1, 15), day(3, 1)] {
            let b = s.blockers(at);
            assert_eq!(b.len(), 1);
            assert_eq!(b[0].code(), "sanctions_review");
        }
        let cleared = given(&[
            on_file[0].clone(),
            on_file[1].clone(),
            pending.clone(),
            sanctions(4, 77, "cleared", day(2, 3)),
        ]);
        assert!(cleared.blockers(day(3, 1)).is_empty());
        let confirmed = given(&[
            on_file[0].clone(),
            on_file[1].clone(),
            pending,
            sanctions(4, 77, "confirmed", day(2, 3)),
        ]);
        assert_eq!(
            confirmed.blockers(day(3, 1))[0].code(),
            "sanctions_confirmed"
        );
        assert!(confirmed.blockers(day(3, 1))[0]
            .detail()
            .contains("match confirmed"));
    }

    #[test]
    fn a_later_rejection_of_kyc_blocks_from_its_date_on() {
        let s = given(&[
            verified(1, "kyc", day(1, 1), None),
            verified(2, "tax_form_w9", day(1, 1), None),
            EligibilityEvent::VerificationRecorded {
                source_event_id: Uuid::from_u128(3),
                partner_id: P,
                kind: "kyc".into(),
                status: "rejected".into(),
                occurred_at: day(2, 1),
                valid_until: None,
            },
        ]);
        assert!(s.blockers(day(1, 15)).is_empty());
        assert_eq!(
            s.blockers(day(2, 2)),
            vec![Blocker::IdentityNotVerified {
                status: "rejected".into()
            }]
        );
    }
}
