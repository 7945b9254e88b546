//! A partner's compliance file (one stream `verification-<partner id>`): verifications, payout
//! holds, approvals for regulated programs, sanctions screenings and their reviews, fraud flags,
//! rejected conversions, and the payout eligibility last published. One aggregate, so that a
//! flag and the hold it places, a cleared flag and the hold it releases, a rejected licence and
//! the approval it ends, and every change of eligibility are decided together.
//!
//! Pure decide/evolve: it never reads a clock (every command carries the instant it is judged
//! at), never performs I/O, and never forgets: a correction is a new event.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::rules::{Finding, Outcome, Rule};
use crate::verification::{Verification, VerificationKind, VerificationStatus};

/// Events in one partner's file; beyond it commands are refused (and consumed events
/// dead-lettered) rather than growing one stream without bound.
pub const MAX_EVENTS: usize = 50_000;
pub const MAX_FLAGS: usize = 10_000;
pub const MAX_SCREENINGS: usize = 1_000;
pub const MAX_HOLDS: usize = 1_000;
/// Who decisions taken by compliance's own rules are recorded as made by.
pub const SYSTEM: &str = "compliance";
/// Holds placed by fraud flags are named `flag-<flag id>`.
pub const FLAG_HOLD_PREFIX: &str = "flag-";

/// The event types other services consume (`proto/partnerledger/compliance/v1/events.proto`).
pub const INTEGRATION_EVENTS: &[&str] = &[
    "VerificationRecorded",
    "PayoutHoldPlaced",
    "PayoutHoldReleased",
    "PayoutEligibilityChanged",
    "ComplianceApprovalGranted",
    "ComplianceApprovalRevoked",
    "ConversionFlagged",
    "PartnerFlagged",
    "FlagCleared",
    "ConversionRejected",
    "SanctionsStatusChanged",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldPlaced {
    pub partner_id: Uuid,
    pub hold_id: String,
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
    pub placed_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldReleased {
    pub partner_id: Uuid,
    pub hold_id: String,
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
    pub released_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalGranted {
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub jurisdictions: Vec<String>,
    pub reference: String,
    pub occurred_at: DateTime<Utc>,
    pub approved_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRevoked {
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
    pub revoked_by: String,
}

/// One reason a partner may not be paid, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockerView {
    pub code: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reference: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EligibilityChanged {
    pub partner_id: Uuid,
    pub as_of: DateTime<Utc>,
    pub eligible: bool,
    pub blockers: Vec<BlockerView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_expiry: Option<DateTime<Utc>>,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagRaised {
    pub flag_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion_id: Option<Uuid>,
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub rule: Rule,
    pub evidence: BTreeMap<String, String>,
    pub outcome: Outcome,
    pub summary: String,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagCleared {
    pub flag_id: Uuid,
    pub partner_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion_id: Option<Uuid>,
    pub reason: String,
    pub cleared_by: String,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionRejected {
    pub conversion_id: Uuid,
    pub program_id: Uuid,
    pub partner_id: Uuid,
    pub rule: Rule,
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
    pub flag_id: Uuid,
}

/// What partner CRM told us about the partner. The email is kept only as its hash and domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub program_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signup_ip_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRecorded {
    pub source_event_id: Uuid,
    pub partner_id: Uuid,
    pub profile: Profile,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecorded {
    pub source_event_id: Uuid,
    pub partner_id: Uuid,
    pub status: String,
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    /// The same words in any order, case and accents folded.
    Exact,
    /// Every word of one name is in the other (at least two words).
    Partial,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SanctionsMatch {
    pub entry_id: String,
    pub listed_name: String,
    pub kind: MatchKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Screening {
    pub screening_id: Uuid,
    pub partner_id: Uuid,
    pub name: String,
    pub list_sha256: String,
    pub list_entries: u64,
    pub matches: Vec<SanctionsMatch>,
    pub screened_by: String,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewOutcome {
    FalsePositive,
    ConfirmedMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScreeningReviewed {
    pub screening_id: Uuid,
    pub partner_id: Uuid,
    pub outcome: ReviewOutcome,
    pub reviewer: String,
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
}

/// Where a partner's sanctions screening stands, as other services act on it: a match pending
/// review and a confirmed match both stop payouts; a cleared one (a false positive) does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SanctionsState {
    MatchPendingReview,
    Cleared,
    Confirmed,
}

impl SanctionsState {
    pub fn as_str(self) -> &'static str {
        match self {
            SanctionsState::MatchPendingReview => "match_pending_review",
            SanctionsState::Cleared => "cleared",
            SanctionsState::Confirmed => "confirmed",
        }
    }
}

/// The integration event of a screening's outcome: ids, the state and the list's checksum,
/// never the names screened or listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SanctionsStatus {
    pub partner_id: Uuid,
    pub screening_id: Uuid,
    pub status: SanctionsState,
    pub list_sha256: String,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum PartnerEvent {
    VerificationRecorded(Verification),
    PayoutHoldPlaced(HoldPlaced),
    PayoutHoldReleased(HoldReleased),
    ComplianceApprovalGranted(ApprovalGranted),
    ComplianceApprovalRevoked(ApprovalRevoked),
    PayoutEligibilityChanged(EligibilityChanged),
    ConversionFlagged(FlagRaised),
    PartnerFlagged(FlagRaised),
    FlagCleared(FlagCleared),
    ConversionRejected(ConversionRejected),
    PartnerProfileRecorded(ProfileRecorded),
    PartnerStatusRecorded(StatusRecorded),
    SanctionsScreened(Screening),
    SanctionsScreeningReviewed(ScreeningReviewed),
    SanctionsStatusChanged(SanctionsStatus),
}

impl DomainEvent for PartnerEvent {}

// ----- state ----------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldState {
    pub in_place: bool,
    pub reason: String,
    pub by: String,
    pub occurred_at: DateTime<Utc>,
    pub flag_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalState {
    pub approved: bool,
    pub jurisdictions: Vec<String>,
    pub reference: String,
    /// The revocation's reason when revoked.
    pub reason: String,
    pub by: String,
    pub occurred_at: DateTime<Utc>,
    pub granted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScreeningState {
    pub screening: Screening,
    pub review: Option<ScreeningReviewed>,
}

impl ScreeningState {
    /// clear, pending_review, false_positive or confirmed_match.
    pub fn status(&self) -> &'static str {
        match (&self.review, self.screening.matches.is_empty()) {
            (_, true) => "clear",
            (None, false) => "pending_review",
            (Some(r), false) => match r.outcome {
                ReviewOutcome::FalsePositive => "false_positive",
                ReviewOutcome::ConfirmedMatch => "confirmed_match",
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagState {
    pub raised: FlagRaised,
    pub cleared: Option<FlagCleared>,
}

/// Everything eligibility and approvals are judged on (kept apart so a decision can fold its
/// own events into a copy of it cheaply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    pub verifications: Vec<Verification>,
    pub holds: BTreeMap<String, HoldState>,
    pub approvals: BTreeMap<Uuid, ApprovalState>,
    pub screenings: Vec<ScreeningState>,
    pub published: Option<EligibilityChanged>,
}

#[derive(Debug, Clone, Default)]
pub struct PartnerFile {
    pub partner_id: Option<Uuid>,
    pub events: usize,
    /// Consumed events already recorded (partner CRM's), so a redelivery records nothing.
    pub seen: BTreeSet<Uuid>,
    pub profile: Option<Profile>,
    pub status: Option<StatusRecorded>,
    pub standing: Standing,
    pub flags: Vec<FlagState>,
    pub flag_index: BTreeMap<Uuid, usize>,
    pub rejected: BTreeSet<Uuid>,
}

/// Why a partner may not be paid at a date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    PayoutHold {
        hold_id: String,
        reason: String,
    },
    NoValidTaxForm,
    TaxFormExpired {
        valid_until: DateTime<Utc>,
    },
    IdentityNotVerified {
        status: String,
    },
    SanctionsMatch {
        screening_id: Uuid,
        status: &'static str,
    },
}

impl Blocker {
    pub fn code(&self) -> &'static str {
        match self {
            Blocker::PayoutHold { .. } => "payout_hold",
            Blocker::NoValidTaxForm => "no_valid_tax_form",
            Blocker::TaxFormExpired { .. } => "tax_form_expired",
            Blocker::IdentityNotVerified { .. } => "identity_not_verified",
            Blocker::SanctionsMatch { .. } => "sanctions_match",
        }
    }

    pub fn view(&self) -> BlockerView {
        let (detail, reference) = match self {
            Blocker::PayoutHold { hold_id, reason } => (
                format!("payout hold {hold_id} is in place: {reason}"),
                hold_id.clone(),
            ),
            Blocker::NoValidTaxForm => ("no verified W-9 or W-8BEN".to_owned(), String::new()),
            Blocker::TaxFormExpired { valid_until } => (
                format!("the W-8BEN expired at {}", valid_until.to_rfc3339()),
                String::new(),
            ),
            Blocker::IdentityNotVerified { status } => (
                format!("KYC/KYB not verified (latest: {status})"),
                String::new(),
            ),
            Blocker::SanctionsMatch {
                screening_id,
                status,
            } => (
                format!("sanctions screening {screening_id}: {status}"),
                screening_id.to_string(),
            ),
        };
        BlockerView {
            code: self.code().to_owned(),
            detail,
            reference,
        }
    }
}

impl Standing {
    /// The latest verification of `kind` (and `jurisdiction`) that occurred by `at`: one
    /// recorded after the date does not count for it.
    /// Whether the latest verification of `kind` (one that names no jurisdiction) by `at` is
    /// valid at `at`.
    pub fn holds_valid(&self, kind: VerificationKind, at: DateTime<Utc>) -> bool {
        self.latest(kind, None, at).is_some_and(|v| v.valid_at(at))
    }

    fn latest(
        &self,
        kind: VerificationKind,
        jurisdiction: Option<&str>,
        at: DateTime<Utc>,
    ) -> Option<&Verification> {
        self.verifications
            .iter()
            .filter(|v| {
                v.kind == kind && v.occurred_at <= at && v.jurisdiction.as_deref() == jurisdiction
            })
            .max_by_key(|v| v.occurred_at)
    }

    /// Every reason the partner may not be paid at `at`; empty when eligible. Holds and
    /// sanctions matches are judged on everything known, whatever their date: they are stop
    /// instructions. Verifications are judged at `at`.
    pub fn blockers(&self, at: DateTime<Utc>) -> Vec<Blocker> {
        let mut out = Vec::new();
        for (hold_id, h) in &self.holds {
            if h.in_place {
                out.push(Blocker::PayoutHold {
                    hold_id: hold_id.clone(),
                    reason: h.reason.clone(),
                });
            }
        }
        let w9 = self
            .latest(VerificationKind::TaxFormW9, None, at)
            .filter(|v| v.valid_at(at));
        let w8 = self.latest(VerificationKind::TaxFormW8ben, None, at);
        if w9.is_none() && !w8.is_some_and(|v| v.valid_at(at)) {
            match w8 {
                Some(Verification {
                    status: VerificationStatus::Verified,
                    valid_until: Some(until),
                    ..
                }) => out.push(Blocker::TaxFormExpired {
                    valid_until: *until,
                }),
                _ => out.push(Blocker::NoValidTaxForm),
            }
        }
        let identity = [
            self.latest(VerificationKind::Kyc, None, at),
            self.latest(VerificationKind::Kyb, None, at),
        ];
        if !identity.iter().flatten().any(|v| v.valid_at(at)) {
            let status = identity
                .iter()
                .flatten()
                .max_by_key(|v| v.occurred_at)
                .map_or("missing".to_owned(), |v| match v.status {
                    VerificationStatus::Verified => "expired".to_owned(),
                    VerificationStatus::Rejected => "rejected".to_owned(),
                    VerificationStatus::Pending => "pending".to_owned(),
                });
            out.push(Blocker::IdentityNotVerified { status });
        }
        for s in &self.screenings {
            let status = s.status();
            if matches!(status, "pending_review" | "confirmed_match") {
                out.push(Blocker::SanctionsMatch {
                    screening_id: s.screening.screening_id,
                    status,
                });
            }
        }
        out
    }

    /// The first expiry after `at` of a tax form, KYC/KYB or licence valid at `at`.
    pub fn next_expiry(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.verifications
            .iter()
            .filter(|v| {
                !matches!(
                    v.kind,
                    VerificationKind::DataSharingAgreement
                        | VerificationKind::DisclosureAcknowledgement
                )
            })
            .filter(|v| v.occurred_at <= at && v.valid_at(at))
            .filter_map(|v| v.valid_until)
            .min()
    }

    /// Jurisdictions with a licence valid at `at` (the latest licence of each, by `at`).
    pub fn licensed(&self, at: DateTime<Utc>) -> Vec<String> {
        let jurisdictions: BTreeSet<&str> = self
            .verifications
            .iter()
            .filter(|v| v.kind == VerificationKind::Licence)
            .filter_map(|v| v.jurisdiction.as_deref())
            .collect();
        jurisdictions
            .into_iter()
            .filter(|j| {
                self.latest(VerificationKind::Licence, Some(j), at)
                    .is_some_and(|v| v.valid_at(at))
            })
            .map(str::to_owned)
            .collect()
    }

    fn sanctions_open(&self) -> Option<Uuid> {
        self.screenings
            .iter()
            .find(|s| matches!(s.status(), "pending_review" | "confirmed_match"))
            .map(|s| s.screening.screening_id)
    }

    /// The eligibility to publish at `at`, if it differs from the last published. Judged at the
    /// later of `at` and the last published date, so published dates never go backwards.
    fn eligibility_change(
        &self,
        partner_id: Uuid,
        at: DateTime<Utc>,
    ) -> Option<EligibilityChanged> {
        let as_of = self.published.as_ref().map_or(at, |p| p.as_of.max(at));
        let blockers: Vec<BlockerView> = self.blockers(as_of).iter().map(Blocker::view).collect();
        let eligible = blockers.is_empty();
        if let Some(p) = &self.published {
            if p.eligible == eligible && p.blockers == blockers {
                return None;
            }
        }
        Some(EligibilityChanged {
            partner_id,
            as_of,
            eligible,
            blockers,
            next_expiry: self.next_expiry(as_of),
            occurred_at: at,
        })
    }

    /// Approvals granted by `at` whose jurisdictions are no longer all licensed at `at`.
    fn lapsed_approvals(&self, partner_id: Uuid, at: DateTime<Utc>) -> Vec<ApprovalRevoked> {
        let licensed = self.licensed(at);
        self.approvals
            .iter()
            .filter(|(_, a)| a.approved && a.granted_at <= at)
            .filter_map(|(program_id, a)| {
                let missing: Vec<&str> = a
                    .jurisdictions
                    .iter()
                    .filter(|j| !licensed.contains(j))
                    .map(String::as_str)
                    .collect();
                (!missing.is_empty()).then(|| ApprovalRevoked {
                    partner_id,
                    program_id: *program_id,
                    reason: format!(
                        "no valid licence for {} at {}",
                        missing.join(", "),
                        at.to_rfc3339()
                    ),
                    occurred_at: at,
                    revoked_by: SYSTEM.to_owned(),
                })
            })
            .collect()
    }

    fn apply(&mut self, event: &PartnerEvent) {
        match event {
            PartnerEvent::VerificationRecorded(v) => self.verifications.push(v.clone()),
            PartnerEvent::PayoutHoldPlaced(h) => {
                self.holds.insert(
                    h.hold_id.clone(),
                    HoldState {
                        in_place: true,
                        reason: h.reason.clone(),
                        by: h.placed_by.clone(),
                        occurred_at: h.occurred_at,
                        flag_id: h.flag_id,
                    },
                );
            }
            PartnerEvent::PayoutHoldReleased(h) => {
                if let Some(state) = self.holds.get_mut(&h.hold_id) {
                    state.in_place = false;
                    state.reason.clone_from(&h.reason);
                    state.by.clone_from(&h.released_by);
                    state.occurred_at = h.occurred_at;
                }
            }
            PartnerEvent::ComplianceApprovalGranted(g) => {
                self.approvals.insert(
                    g.program_id,
                    ApprovalState {
                        approved: true,
                        jurisdictions: g.jurisdictions.clone(),
                        reference: g.reference.clone(),
                        reason: String::new(),
                        by: g.approved_by.clone(),
                        occurred_at: g.occurred_at,
                        granted_at: g.occurred_at,
                    },
                );
            }
            PartnerEvent::ComplianceApprovalRevoked(r) => {
                if let Some(a) = self.approvals.get_mut(&r.program_id) {
                    a.approved = false;
                    a.reason.clone_from(&r.reason);
                    a.by.clone_from(&r.revoked_by);
                    a.occurred_at = r.occurred_at;
                }
            }
            PartnerEvent::PayoutEligibilityChanged(e) => self.published = Some(e.clone()),
            PartnerEvent::SanctionsScreened(s) => self.screenings.push(ScreeningState {
                screening: s.clone(),
                review: None,
            }),
            PartnerEvent::SanctionsScreeningReviewed(r) => {
                if let Some(s) = self
                    .screenings
                    .iter_mut()
                    .find(|s| s.screening.screening_id == r.screening_id)
                {
                    s.review = Some(r.clone());
                }
            }
            PartnerEvent::ConversionFlagged(_)
            | PartnerEvent::PartnerFlagged(_)
            | PartnerEvent::FlagCleared(_)
            | PartnerEvent::ConversionRejected(_)
            | PartnerEvent::PartnerProfileRecorded(_)
            | PartnerEvent::PartnerStatusRecorded(_)
            // The screening's own events carry what standing needs; this one is for others.
            | PartnerEvent::SanctionsStatusChanged(_) => {}
        }
    }
}

impl PartnerFile {
    pub fn flag(&self, flag_id: Uuid) -> Option<&FlagState> {
        self.flag_index
            .get(&flag_id)
            .and_then(|i| self.flags.get(*i))
    }

    pub fn open_flags(&self) -> usize {
        self.flags.iter().filter(|f| f.cleared.is_none()).count()
    }

    fn open_flag_of(&self, rule: Rule) -> bool {
        self.flags
            .iter()
            .any(|f| f.raised.rule == rule && f.cleared.is_none())
    }
}

// ----- commands -------------------------------------------------------------------------------

/// A fraud rule that fired, ready to be recorded against the partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagDraft {
    pub flag_id: Uuid,
    /// None for rules about the partner rather than one conversion.
    pub conversion_id: Option<Uuid>,
    pub program_id: Uuid,
    pub finding: Finding,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Record(Verification),
    PlaceHold {
        hold_id: String,
        reason: String,
        by: String,
    },
    ReleaseHold {
        hold_id: String,
        reason: String,
        by: String,
    },
    /// `jurisdictions` are the program's, as configured when the command is decided.
    Grant {
        program_id: Uuid,
        jurisdictions: Vec<String>,
        reference: String,
        by: String,
    },
    Revoke {
        program_id: Uuid,
        reason: String,
        by: String,
    },
    /// Judge approvals and eligibility again at the command's instant.
    Reassess,
    NoteProfile {
        source_event_id: Uuid,
        profile: Profile,
    },
    NoteStatus {
        source_event_id: Uuid,
        status: String,
        reason: String,
    },
    Screen(Screening),
    Review {
        screening_id: Uuid,
        outcome: ReviewOutcome,
        reviewer: String,
        reason: String,
    },
    Raise(Vec<FlagDraft>),
    Clear {
        flag_id: Uuid,
        reason: String,
        by: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerCommand {
    pub partner_id: Uuid,
    /// Business time of the command: its events' `occurred_at`, and the instant approvals and
    /// eligibility are judged at.
    pub at: DateTime<Utc>,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartnerError {
    #[error("the command is about partner {got}, the stream is partner {stream}'s")]
    WrongPartner { stream: Uuid, got: Uuid },
    #[error("the partner's compliance file is full ({what}); refusing to grow it further")]
    Full { what: &'static str },
    #[error("payout hold {0} is already in place")]
    HoldInPlace(String),
    #[error("payout hold {0} is not in place")]
    HoldNotInPlace(String),
    #[error("payout hold {0} was placed by a fraud flag: clear the flag instead")]
    FlagHold(String),
    #[error("program {0} is not regulated: it needs no compliance approval")]
    NotRegulated(Uuid),
    #[error("no valid licence at the approval date for: {}", .0.join(", "))]
    MissingLicences(Vec<String>),
    #[error("sanctions screening {0} has an open or confirmed match")]
    SanctionsOpen(Uuid),
    #[error("the partner is already approved for program {0} in all its jurisdictions")]
    AlreadyApproved(Uuid),
    #[error("the partner is not approved for program {0}")]
    NotApproved(Uuid),
    #[error("no sanctions screening {0}")]
    UnknownScreening(Uuid),
    #[error("sanctions screening {0} found no match: nothing to review")]
    NothingToReview(Uuid),
    #[error("sanctions screening {0} was reviewed already")]
    AlreadyReviewed(Uuid),
    #[error("no flag {0}")]
    UnknownFlag(Uuid),
    #[error("flag {0} was cleared already")]
    AlreadyCleared(Uuid),
}

impl Aggregate for PartnerFile {
    type State = PartnerFile;
    type Command = PartnerCommand;
    type Event = PartnerEvent;
    type Error = PartnerError;

    fn decide(
        state: &PartnerFile,
        cmd: &PartnerCommand,
    ) -> Result<Vec<PartnerEvent>, PartnerError> {
        if let Some(stream) = state.partner_id.filter(|p| *p != cmd.partner_id) {
            return Err(PartnerError::WrongPartner {
                stream,
                got: cmd.partner_id,
            });
        }
        if state.events >= MAX_EVENTS {
            return Err(PartnerError::Full { what: "events" });
        }
        let mut events = decide_action(state, cmd)?;
        let follow_up = !events.is_empty() || cmd.action == Action::Reassess;
        if !follow_up {
            return Ok(events);
        }
        let mut standing = state.standing.clone();
        for e in &events {
            standing.apply(e);
        }
        if matches!(cmd.action, Action::Record(_) | Action::Reassess) {
            for revoked in standing.lapsed_approvals(cmd.partner_id, cmd.at) {
                let e = PartnerEvent::ComplianceApprovalRevoked(revoked);
                standing.apply(&e);
                events.push(e);
            }
        }
        if let Some(changed) = standing.eligibility_change(cmd.partner_id, cmd.at) {
            events.push(PartnerEvent::PayoutEligibilityChanged(changed));
        }
        Ok(events)
    }

    fn evolve(mut state: PartnerFile, event: &PartnerEvent) -> PartnerFile {
        state.events += 1;
        state.standing.apply(event);
        match event {
            PartnerEvent::VerificationRecorded(v) => {
                state.partner_id.get_or_insert(v.partner_id);
            }
            PartnerEvent::PartnerProfileRecorded(p) => {
                state.partner_id.get_or_insert(p.partner_id);
                state.seen.insert(p.source_event_id);
                state.profile = Some(p.profile.clone());
            }
            PartnerEvent::PartnerStatusRecorded(s) => {
                state.partner_id.get_or_insert(s.partner_id);
                state.seen.insert(s.source_event_id);
                state.status = Some(s.clone());
            }
            PartnerEvent::ConversionFlagged(f) | PartnerEvent::PartnerFlagged(f) => {
                state.partner_id.get_or_insert(f.partner_id);
                state.flag_index.insert(f.flag_id, state.flags.len());
                state.flags.push(FlagState {
                    raised: f.clone(),
                    cleared: None,
                });
            }
            PartnerEvent::FlagCleared(c) => {
                if let Some(i) = state.flag_index.get(&c.flag_id) {
                    if let Some(f) = state.flags.get_mut(*i) {
                        f.cleared = Some(c.clone());
                    }
                }
            }
            PartnerEvent::ConversionRejected(r) => {
                state.rejected.insert(r.conversion_id);
            }
            PartnerEvent::PayoutHoldPlaced(h) => {
                state.partner_id.get_or_insert(h.partner_id);
            }
            PartnerEvent::ComplianceApprovalGranted(g) => {
                state.partner_id.get_or_insert(g.partner_id);
            }
            PartnerEvent::SanctionsScreened(s) => {
                state.partner_id.get_or_insert(s.partner_id);
            }
            PartnerEvent::PayoutEligibilityChanged(e) => {
                state.partner_id.get_or_insert(e.partner_id);
            }
            PartnerEvent::PayoutHoldReleased(_)
            | PartnerEvent::ComplianceApprovalRevoked(_)
            | PartnerEvent::SanctionsScreeningReviewed(_)
            | PartnerEvent::SanctionsStatusChanged(_) => {}
        }
        state
    }
}

fn decide_action(
    state: &PartnerFile,
    cmd: &PartnerCommand,
) -> Result<Vec<PartnerEvent>, PartnerError> {
    let (p, at) = (cmd.partner_id, cmd.at);
    let standing = &state.standing;
    match &cmd.action {
        Action::Record(v) => Ok(vec![PartnerEvent::VerificationRecorded(v.clone())]),
        Action::PlaceHold {
            hold_id,
            reason,
            by,
        } => {
            if standing.holds.get(hold_id).is_some_and(|h| h.in_place) {
                return Err(PartnerError::HoldInPlace(hold_id.clone()));
            }
            if standing.holds.len() >= MAX_HOLDS {
                return Err(PartnerError::Full { what: "holds" });
            }
            Ok(vec![PartnerEvent::PayoutHoldPlaced(HoldPlaced {
                partner_id: p,
                hold_id: hold_id.clone(),
                reason: reason.clone(),
                occurred_at: at,
                placed_by: by.clone(),
                flag_id: None,
            })])
        }
        Action::ReleaseHold {
            hold_id,
            reason,
            by,
        } => match standing.holds.get(hold_id) {
            Some(h) if h.in_place && h.flag_id.is_some() => {
                Err(PartnerError::FlagHold(hold_id.clone()))
            }
            Some(h) if h.in_place => Ok(vec![PartnerEvent::PayoutHoldReleased(HoldReleased {
                partner_id: p,
                hold_id: hold_id.clone(),
                reason: reason.clone(),
                occurred_at: at,
                released_by: by.clone(),
            })]),
            _ => Err(PartnerError::HoldNotInPlace(hold_id.clone())),
        },
        Action::Grant {
            program_id,
            jurisdictions,
            reference,
            by,
        } => {
            if jurisdictions.is_empty() {
                return Err(PartnerError::NotRegulated(*program_id));
            }
            if let Some(a) = standing.approvals.get(program_id) {
                if a.approved && jurisdictions.iter().all(|j| a.jurisdictions.contains(j)) {
                    return Err(PartnerError::AlreadyApproved(*program_id));
                }
            }
            let licensed = standing.licensed(at);
            let missing: Vec<String> = jurisdictions
                .iter()
                .filter(|j| !licensed.contains(j))
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Err(PartnerError::MissingLicences(missing));
            }
            if let Some(screening) = standing.sanctions_open() {
                return Err(PartnerError::SanctionsOpen(screening));
            }
            Ok(vec![PartnerEvent::ComplianceApprovalGranted(
                ApprovalGranted {
                    partner_id: p,
                    program_id: *program_id,
                    jurisdictions: jurisdictions.clone(),
                    reference: reference.clone(),
                    occurred_at: at,
                    approved_by: by.clone(),
                },
            )])
        }
        Action::Revoke {
            program_id,
            reason,
            by,
        } => {
            if !standing
                .approvals
                .get(program_id)
                .is_some_and(|a| a.approved)
            {
                return Err(PartnerError::NotApproved(*program_id));
            }
            Ok(vec![PartnerEvent::ComplianceApprovalRevoked(
                ApprovalRevoked {
                    partner_id: p,
                    program_id: *program_id,
                    reason: reason.clone(),
                    occurred_at: at,
                    revoked_by: by.clone(),
                },
            )])
        }
        Action::Reassess => Ok(vec![]),
        Action::NoteProfile {
            source_event_id,
            profile,
        } => {
            if state.seen.contains(source_event_id) {
                return Ok(vec![]);
            }
            Ok(vec![PartnerEvent::PartnerProfileRecorded(
                ProfileRecorded {
                    source_event_id: *source_event_id,
                    partner_id: p,
                    profile: profile.clone(),
                    occurred_at: at,
                },
            )])
        }
        Action::NoteStatus {
            source_event_id,
            status,
            reason,
        } => {
            if state.seen.contains(source_event_id) {
                return Ok(vec![]);
            }
            Ok(vec![PartnerEvent::PartnerStatusRecorded(StatusRecorded {
                source_event_id: *source_event_id,
                partner_id: p,
                status: status.clone(),
                reason: reason.clone(),
                occurred_at: at,
            })])
        }
        Action::Screen(s) => {
            if standing
                .screenings
                .iter()
                .any(|x| x.screening.screening_id == s.screening_id)
            {
                return Ok(vec![]);
            }
            if standing.screenings.len() >= MAX_SCREENINGS {
                return Err(PartnerError::Full { what: "screenings" });
            }
            let mut events = vec![PartnerEvent::SanctionsScreened(s.clone())];
            // Entries a reviewer cleared as false positives for this partner stay cleared: a
            // new list version (or a repeat screening) finding only those is cleared at once,
            // naming the review it rests on.
            let cleared_by = |entry: &str| {
                standing.screenings.iter().find_map(|x| {
                    let review = x.review.as_ref()?;
                    (review.outcome == ReviewOutcome::FalsePositive
                        && x.screening.matches.iter().any(|m| m.entry_id == entry))
                    .then_some(x.screening.screening_id)
                })
            };
            let earlier: Vec<Uuid> = s
                .matches
                .iter()
                .map(|m| cleared_by(&m.entry_id))
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default();
            if !s.matches.is_empty() && earlier.len() == s.matches.len() {
                events.push(PartnerEvent::SanctionsScreeningReviewed(
                    ScreeningReviewed {
                        screening_id: s.screening_id,
                        partner_id: p,
                        outcome: ReviewOutcome::FalsePositive,
                        reviewer: SYSTEM.to_owned(),
                        reason: format!(
                            "every matching entry was cleared as a false positive in screening {}",
                            earlier[0]
                        ),
                        occurred_at: s.occurred_at,
                    },
                ));
                return Ok(events);
            }
            if !s.matches.is_empty() {
                events.push(PartnerEvent::SanctionsStatusChanged(SanctionsStatus {
                    partner_id: p,
                    screening_id: s.screening_id,
                    status: SanctionsState::MatchPendingReview,
                    list_sha256: s.list_sha256.clone(),
                    occurred_at: s.occurred_at,
                }));
            }
            Ok(events)
        }
        Action::Review {
            screening_id,
            outcome,
            reviewer,
            reason,
        } => {
            let s = standing
                .screenings
                .iter()
                .find(|s| s.screening.screening_id == *screening_id)
                .ok_or(PartnerError::UnknownScreening(*screening_id))?;
            if s.screening.matches.is_empty() {
                return Err(PartnerError::NothingToReview(*screening_id));
            }
            if s.review.is_some() {
                return Err(PartnerError::AlreadyReviewed(*screening_id));
            }
            let status = match outcome {
                ReviewOutcome::FalsePositive => SanctionsState::Cleared,
                ReviewOutcome::ConfirmedMatch => SanctionsState::Confirmed,
            };
            Ok(vec![
                PartnerEvent::SanctionsScreeningReviewed(ScreeningReviewed {
                    screening_id: *screening_id,
                    partner_id: p,
                    outcome: *outcome,
                    reviewer: reviewer.clone(),
                    reason: reason.clone(),
                    occurred_at: at,
                }),
                PartnerEvent::SanctionsStatusChanged(SanctionsStatus {
                    partner_id: p,
                    screening_id: *screening_id,
                    status,
                    list_sha256: s.screening.list_sha256.clone(),
                    occurred_at: at,
                }),
            ])
        }
        Action::Raise(drafts) => raise(state, p, at, drafts),
        Action::Clear {
            flag_id,
            reason,
            by,
        } => {
            let f = state
                .flag(*flag_id)
                .ok_or(PartnerError::UnknownFlag(*flag_id))?;
            if f.cleared.is_some() {
                return Err(PartnerError::AlreadyCleared(*flag_id));
            }
            let mut out = vec![PartnerEvent::FlagCleared(FlagCleared {
                flag_id: *flag_id,
                partner_id: p,
                conversion_id: f.raised.conversion_id,
                reason: reason.clone(),
                cleared_by: by.clone(),
                occurred_at: at,
            })];
            let hold_id = format!("{FLAG_HOLD_PREFIX}{flag_id}");
            if standing.holds.get(&hold_id).is_some_and(|h| h.in_place) {
                out.push(PartnerEvent::PayoutHoldReleased(HoldReleased {
                    partner_id: p,
                    hold_id,
                    reason: format!("flag cleared: {reason}"),
                    occurred_at: at,
                    released_by: by.clone(),
                }));
            }
            Ok(out)
        }
    }
}

/// Records each new flag with its outcome: a hold named after the flag, or the conversion's
/// rejection (once per conversion). A flag already recorded, or a second open flag of a rule
/// about the partner, records nothing.
fn raise(
    state: &PartnerFile,
    p: Uuid,
    at: DateTime<Utc>,
    drafts: &[FlagDraft],
) -> Result<Vec<PartnerEvent>, PartnerError> {
    let mut out = Vec::new();
    let mut rejected: BTreeSet<Uuid> = BTreeSet::new();
    let mut rules_opened: BTreeSet<Rule> = BTreeSet::new();
    let mut added = 0;
    for d in drafts {
        let rule = d.finding.rule;
        if state.flag_index.contains_key(&d.flag_id) {
            continue;
        }
        if !rule.about_conversion() && (state.open_flag_of(rule) || rules_opened.contains(&rule)) {
            continue;
        }
        if state.flags.len() + added >= MAX_FLAGS {
            return Err(PartnerError::Full { what: "flags" });
        }
        added += 1;
        rules_opened.insert(rule);
        // A partner rule never rejects (settings refuse it); should one arrive, it holds.
        let outcome = match (d.outcome, d.conversion_id) {
            (Outcome::Reject, None) => Outcome::Hold,
            (o, _) => o,
        };
        let raised = FlagRaised {
            flag_id: d.flag_id,
            conversion_id: d.conversion_id,
            partner_id: p,
            program_id: d.program_id,
            rule,
            evidence: d.finding.evidence.clone(),
            outcome,
            summary: d.finding.summary.clone(),
            occurred_at: at,
        };
        out.push(match d.conversion_id {
            Some(_) => PartnerEvent::ConversionFlagged(raised),
            None => PartnerEvent::PartnerFlagged(raised),
        });
        if outcome == Outcome::Hold {
            let hold_id = format!("{FLAG_HOLD_PREFIX}{}", d.flag_id);
            out.push(PartnerEvent::PayoutHoldPlaced(HoldPlaced {
                partner_id: p,
                hold_id,
                reason: format!("{}: {}", rule.as_str(), d.finding.summary),
                occurred_at: at,
                placed_by: SYSTEM.to_owned(),
                flag_id: Some(d.flag_id),
            }));
        }
        let reject = d
            .conversion_id
            .filter(|c| outcome == Outcome::Reject && !state.rejected.contains(c))
            .filter(|c| !rejected.contains(c));
        if let Some(conversion_id) = reject {
            rejected.insert(conversion_id);
            out.push(PartnerEvent::ConversionRejected(ConversionRejected {
                conversion_id,
                program_id: d.program_id,
                partner_id: p,
                rule,
                reason: d.finding.summary.clone(),
                occurred_at: at,
                flag_id: d.flag_id,
            }));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::verification::complete;
    use chrono::TimeZone;

    const P: Uuid = Uuid::from_u128(1);
    const PROGRAM: Uuid = Uuid::from_u128(2);

    fn day(m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, m, d, 0, 0, 0).unwrap()
    }

    fn cmd(at: DateTime<Utc>, action: Action) -> PartnerCommand {
        PartnerCommand {
            partner_id: P,
            at,
            action,
        }
    }

    fn verification(
        kind: VerificationKind,
        status: VerificationStatus,
        at: DateTime<Utc>,
        valid_until: Option<DateTime<Utc>>,
        jurisdiction: Option<&str>,
    ) -> PartnerCommand {
        let v = complete(Verification {
            partner_id: P,
            kind,
            status,
            reference: "ref".into(),
            recorded_by: "ops".into(),
            occurred_at: at,
            valid_until,
            jurisdiction: jurisdiction.map(str::to_owned),
            signed_at: None,
        })
        .unwrap();
        cmd(at, Action::Record(v))
    }

    fn verified(kind: VerificationKind, at: DateTime<Utc>) -> PartnerCommand {
        verification(kind, VerificationStatus::Verified, at, None, None)
    }

    fn licence(j: &str, at: DateTime<Utc>, until: Option<DateTime<Utc>>) -> PartnerCommand {
        verification(
            VerificationKind::Licence,
            VerificationStatus::Verified,
            at,
            until,
            Some(j),
        )
    }

    /// Decides and folds each command in turn; the state after all of them.
    fn given(cmds: &[PartnerCommand]) -> PartnerFile {
        cmds.iter().fold(PartnerFile::default(), |s, c| {
            let events = PartnerFile::decide(&s, c).unwrap();
            events.iter().fold(s, PartnerFile::evolve)
        })
    }

    fn when(s: &PartnerFile, c: &PartnerCommand) -> Vec<PartnerEvent> {
        PartnerFile::decide(s, c).unwrap()
    }

    fn types(events: &[PartnerEvent]) -> Vec<&'static str> {
        events
            .iter()
            .map(|e| match e {
                PartnerEvent::VerificationRecorded(_) => "VerificationRecorded",
                PartnerEvent::PayoutHoldPlaced(_) => "PayoutHoldPlaced",
                PartnerEvent::PayoutHoldReleased(_) => "PayoutHoldReleased",
                PartnerEvent::ComplianceApprovalGranted(_) => "ComplianceApprovalGranted",
                PartnerEvent::ComplianceApprovalRevoked(_) => "ComplianceApprovalRevoked",
                PartnerEvent::PayoutEligibilityChanged(_) => "PayoutEligibilityChanged",
                PartnerEvent::ConversionFlagged(_) => "ConversionFlagged",
                PartnerEvent::PartnerFlagged(_) => "PartnerFlagged",
                PartnerEvent::FlagCleared(_) => "FlagCleared",
                PartnerEvent::ConversionRejected(_) => "ConversionRejected",
                PartnerEvent::PartnerProfileRecorded(_) => "PartnerProfileRecorded",
                PartnerEvent::PartnerStatusRecorded(_) => "PartnerStatusRecorded",
                PartnerEvent::SanctionsScreened(_) => "SanctionsScreened",
                PartnerEvent::SanctionsScreeningReviewed(_) => "SanctionsScreeningReviewed",
                PartnerEvent::SanctionsStatusChanged(_) => "SanctionsStatusChanged",
            })
            .collect()
    }

    fn eligibility(events: &[PartnerEvent]) -> Option<&EligibilityChanged> {
        events.iter().find_map(|e| match e {
            PartnerEvent::PayoutEligibilityChanged(c) => Some(c),
            _ => None,
        })
    }

    fn codes(e: &EligibilityChanged) -> Vec<&str> {
        e.blockers.iter().map(|b| b.code.as_str()).collect()
    }

    fn eligible_partner() -> Vec<PartnerCommand> {
        vec![
            verified(VerificationKind::Kyc, day(1, 1)),
            verified(VerificationKind::TaxFormW9, day(1, 1)),
        ]
    }

    fn draft(n: u128, rule: Rule, outcome: Outcome, conversion: Option<u128>) -> FlagDraft {
        FlagDraft {
            flag_id: Uuid::from_u128(100 + n),
            conversion_id: conversion.map(Uuid::from_u128),
            program_id: PROGRAM,
            finding: Finding {
                rule,
                evidence: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
                summary: "it fired".into(),
            },
            outcome,
        }
    }

    #[test]
    fn given_nothing_on_file_when_kyc_is_verified_then_eligibility_is_published_with_the_remaining_blocker(
    ) {
        let events = when(
            &PartnerFile::default(),
            &verified(VerificationKind::Kyc, day(1, 1)),
        );
        assert_eq!(
            types(&events),
            vec!["VerificationRecorded", "PayoutEligibilityChanged"]
        );
        let e = eligibility(&events).unwrap();
        assert!(!e.eligible);
        assert_eq!(codes(e), vec!["no_valid_tax_form"]);
        assert_eq!(e.as_of, day(1, 1));
    }

    #[test]
    fn given_kyc_when_a_w9_is_verified_then_the_partner_becomes_eligible_and_a_repeat_publishes_nothing_new(
    ) {
        let s = given(&eligible_partner()[..1]);
        let events = when(&s, &verified(VerificationKind::TaxFormW9, day(1, 2)));
        let e = eligibility(&events).unwrap();
        assert!(e.eligible && e.blockers.is_empty());
        let s = given(&eligible_partner());
        let again = when(&s, &verified(VerificationKind::TaxFormW9, day(1, 3)));
        assert_eq!(types(&again), vec!["VerificationRecorded"]);
    }

    #[test]
    fn given_a_w8ben_valid_until_march_first_when_reassessed_the_day_before_and_on_the_day_then_it_expires_on_the_day(
    ) {
        let s = given(&[
            verified(VerificationKind::Kyc, day(1, 1)),
            verification(
                VerificationKind::TaxFormW8ben,
                VerificationStatus::Verified,
                day(1, 1),
                Some(day(3, 1)),
                None,
            ),
        ]);
        assert_eq!(s.standing.next_expiry(day(2, 28)), Some(day(3, 1)));
        assert!(when(&s, &cmd(day(2, 28), Action::Reassess)).is_empty());
        let events = when(&s, &cmd(day(3, 1), Action::Reassess));
        let e = eligibility(&events).unwrap();
        assert_eq!(codes(e), vec!["tax_form_expired"]);
        assert_eq!(e.as_of, day(3, 1));
    }

    #[test]
    fn given_no_identity_check_when_blockers_are_judged_then_every_reason_is_listed() {
        let s = given(&[cmd(
            day(1, 1),
            Action::PlaceHold {
                hold_id: "manual-1".into(),
                reason: "bank details under review".into(),
                by: "ops".into(),
            },
        )]);
        let all: Vec<_> = s
            .standing
            .blockers(day(1, 2))
            .iter()
            .map(Blocker::code)
            .collect();
        assert_eq!(
            all,
            vec!["payout_hold", "no_valid_tax_form", "identity_not_verified"]
        );
    }

    #[test]
    fn given_a_rejected_kyc_after_a_verified_one_then_identity_blocks_from_the_rejection_on() {
        let mut cmds = eligible_partner();
        cmds.push(verification(
            VerificationKind::Kyc,
            VerificationStatus::Rejected,
            day(2, 1),
            None,
            None,
        ));
        let s = given(&cmds);
        assert!(s.standing.blockers(day(1, 15)).is_empty());
        assert_eq!(
            s.standing.blockers(day(2, 1)),
            vec![Blocker::IdentityNotVerified {
                status: "rejected".into()
            }]
        );
    }

    #[test]
    fn given_a_hold_in_place_when_it_is_placed_again_then_it_is_refused_and_a_release_makes_the_partner_eligible(
    ) {
        let mut cmds = eligible_partner();
        let place = cmd(
            day(1, 5),
            Action::PlaceHold {
                hold_id: "h1".into(),
                reason: "review".into(),
                by: "ops".into(),
            },
        );
        cmds.push(place.clone());
        let s = given(&cmds);
        assert_eq!(
            PartnerFile::decide(&s, &place).unwrap_err(),
            PartnerError::HoldInPlace("h1".into())
        );
        let events = when(
            &s,
            &cmd(
                day(1, 6),
                Action::ReleaseHold {
                    hold_id: "h1".into(),
                    reason: "resolved".into(),
                    by: "ops".into(),
                },
            ),
        );
        assert_eq!(
            types(&events),
            vec!["PayoutHoldReleased", "PayoutEligibilityChanged"]
        );
        assert!(eligibility(&events).unwrap().eligible);
        let unknown = cmd(
            day(1, 6),
            Action::ReleaseHold {
                hold_id: "nope".into(),
                reason: "x".into(),
                by: "ops".into(),
            },
        );
        assert_eq!(
            PartnerFile::decide(&s, &unknown).unwrap_err(),
            PartnerError::HoldNotInPlace("nope".into())
        );
    }

    fn grant(at: DateTime<Utc>, jurisdictions: &[&str]) -> PartnerCommand {
        cmd(
            at,
            Action::Grant {
                program_id: PROGRAM,
                jurisdictions: jurisdictions.iter().map(|j| (*j).to_owned()).collect(),
                reference: "case-7".into(),
                by: "compliance-officer".into(),
            },
        )
    }

    #[test]
    fn given_a_licence_for_one_of_two_jurisdictions_when_approval_is_requested_then_it_is_refused_naming_the_missing_one(
    ) {
        let s = given(&[licence("MT", day(1, 1), None)]);
        assert_eq!(
            PartnerFile::decide(&s, &grant(day(1, 2), &["MT", "GB"])).unwrap_err(),
            PartnerError::MissingLicences(vec!["GB".into()])
        );
    }

    #[test]
    fn given_licences_for_every_jurisdiction_when_approval_is_requested_then_it_is_granted_once() {
        let s = given(&[
            licence("MT", day(1, 1), None),
            licence("GB", day(1, 1), Some(day(6, 1))),
        ]);
        let events = when(&s, &grant(day(1, 2), &["MT", "GB"]));
        let PartnerEvent::ComplianceApprovalGranted(g) = &events[0] else {
            panic!("{events:?}");
        };
        assert_eq!(g.jurisdictions, vec!["MT", "GB"]);
        assert_eq!(g.reference, "case-7");
        let s = given(&[
            licence("MT", day(1, 1), None),
            licence("GB", day(1, 1), Some(day(6, 1))),
            grant(day(1, 2), &["MT", "GB"]),
        ]);
        assert_eq!(
            PartnerFile::decide(&s, &grant(day(1, 3), &["MT"])).unwrap_err(),
            PartnerError::AlreadyApproved(PROGRAM)
        );
    }

    #[test]
    fn given_an_approval_when_a_licence_it_rests_on_is_rejected_then_the_approval_is_revoked() {
        let s = given(&[licence("MT", day(1, 1), None), grant(day(1, 2), &["MT"])]);
        let events = when(
            &s,
            &verification(
                VerificationKind::Licence,
                VerificationStatus::Rejected,
                day(2, 1),
                None,
                Some("MT"),
            ),
        );
        assert_eq!(
            types(&events)[..2],
            ["VerificationRecorded", "ComplianceApprovalRevoked"]
        );
        let PartnerEvent::ComplianceApprovalRevoked(r) = &events[1] else {
            panic!()
        };
        assert!(r.reason.contains("MT"), "{}", r.reason);
        assert_eq!(r.revoked_by, SYSTEM);
    }

    #[test]
    fn given_an_approval_on_an_expiring_licence_when_reassessed_at_its_expiry_then_it_is_revoked_and_not_before(
    ) {
        let s = given(&[
            licence("MT", day(1, 1), Some(day(6, 1))),
            grant(day(1, 2), &["MT"]),
        ]);
        let before = when(&s, &cmd(day(5, 31), Action::Reassess));
        assert!(!types(&before).contains(&"ComplianceApprovalRevoked"));
        let at = when(&s, &cmd(day(6, 1), Action::Reassess));
        assert!(types(&at).contains(&"ComplianceApprovalRevoked"));
    }

    #[test]
    fn given_an_unrelated_back_dated_verification_then_a_later_approval_is_not_revoked() {
        let s = given(&[licence("MT", day(2, 1), None), grant(day(2, 2), &["MT"])]);
        let events = when(&s, &verified(VerificationKind::Kyc, day(1, 1)));
        assert!(!types(&events).contains(&"ComplianceApprovalRevoked"));
    }

    fn screening(n: u128, matched: bool) -> PartnerCommand {
        cmd(
            day(1, 1),
            Action::Screen(Screening {
                screening_id: Uuid::from_u128(n),
                partner_id: P,
                name: "Ivan Petrov".into(),
                list_sha256: "ab".into(),
                list_entries: 3,
                matches: if matched {
                    vec![SanctionsMatch {
                        entry_id: "E1".into(),
                        listed_name: "PETROV, Ivan".into(),
                        kind: MatchKind::Exact,
                    }]
                } else {
                    vec![]
                },
                screened_by: SYSTEM.into(),
                occurred_at: day(1, 1),
            }),
        )
    }

    fn review(n: u128, outcome: ReviewOutcome) -> PartnerCommand {
        cmd(
            day(1, 3),
            Action::Review {
                screening_id: Uuid::from_u128(n),
                outcome,
                reviewer: "mlro".into(),
                reason: "different date of birth".into(),
            },
        )
    }

    #[test]
    fn given_a_sanctions_match_pending_review_then_payouts_and_approval_are_blocked_until_a_false_positive_review(
    ) {
        let mut cmds = eligible_partner();
        cmds.push(licence("MT", day(1, 1), None));
        cmds.push(screening(9, true));
        let s = given(&cmds);
        assert_eq!(
            s.standing.blockers(day(1, 2)),
            vec![Blocker::SanctionsMatch {
                screening_id: Uuid::from_u128(9),
                status: "pending_review"
            }]
        );
        assert_eq!(
            PartnerFile::decide(&s, &grant(day(1, 2), &["MT"])).unwrap_err(),
            PartnerError::SanctionsOpen(Uuid::from_u128(9))
        );
        let events = when(&s, &review(9, ReviewOutcome::FalsePositive));
        assert!(eligibility(&events).unwrap().eligible);
        cmds.push(review(9, ReviewOutcome::FalsePositive));
        let s = given(&cmds);
        assert!(PartnerFile::decide(&s, &grant(day(1, 4), &["MT"])).is_ok());
        assert_eq!(
            PartnerFile::decide(&s, &review(9, ReviewOutcome::ConfirmedMatch)).unwrap_err(),
            PartnerError::AlreadyReviewed(Uuid::from_u128(9))
        );
    }

    #[test]
    fn given_a_confirmed_match_then_payouts_stay_blocked_and_a_clear_screening_cannot_be_reviewed()
    {
        let mut cmds = eligible_partner();
        cmds.push(screening(9, true));
        cmds.push(review(9, ReviewOutcome::ConfirmedMatch));
        cmds.push(screening(10, false));
        let s = given(&cmds);
        assert_eq!(s.standing.blockers(day(3, 1))[0].code(), "sanctions_match");
        assert_eq!(
            PartnerFile::decide(&s, &review(10, ReviewOutcome::FalsePositive)).unwrap_err(),
            PartnerError::NothingToReview(Uuid::from_u128(10))
        );
        assert!(when(&s, &screening(10, false)).is_empty());
    }

    #[test]
    fn given_a_flag_with_the_hold_outcome_then_a_hold_is_placed_and_clearing_the_flag_releases_it()
    {
        let s = given(&eligible_partner());
        let raise = cmd(
            day(2, 1),
            Action::Raise(vec![draft(1, Rule::ClickVelocity, Outcome::Hold, Some(50))]),
        );
        let events = when(&s, &raise);
        assert_eq!(
            types(&events),
            vec![
                "ConversionFlagged",
                "PayoutHoldPlaced",
                "PayoutEligibilityChanged"
            ]
        );
        let s = events.iter().fold(s, PartnerFile::evolve);
        assert!(when(&s, &raise).is_empty(), "a redelivery raises nothing");
        let hold_id = format!("flag-{}", Uuid::from_u128(101));
        assert_eq!(
            PartnerFile::decide(
                &s,
                &cmd(
                    day(2, 2),
                    Action::ReleaseHold {
                        hold_id: hold_id.clone(),
                        reason: "x".into(),
                        by: "ops".into()
                    }
                )
            )
            .unwrap_err(),
            PartnerError::FlagHold(hold_id)
        );
        let clear = cmd(
            day(2, 3),
            Action::Clear {
                flag_id: Uuid::from_u128(101),
                reason: "office NAT, verified".into(),
                by: "analyst".into(),
            },
        );
        let events = when(&s, &clear);
        assert_eq!(
            types(&events),
            vec![
                "FlagCleared",
                "PayoutHoldReleased",
                "PayoutEligibilityChanged"
            ]
        );
        assert!(eligibility(&events).unwrap().eligible);
        let s = events.iter().fold(s, PartnerFile::evolve);
        assert_eq!(
            PartnerFile::decide(&s, &clear).unwrap_err(),
            PartnerError::AlreadyCleared(Uuid::from_u128(101))
        );
    }

    #[test]
    fn given_two_reject_flags_on_one_conversion_then_it_is_rejected_once() {
        let s = given(&eligible_partner());
        let events = when(
            &s,
            &cmd(
                day(2, 1),
                Action::Raise(vec![
                    draft(1, Rule::SelfReferral, Outcome::Reject, Some(50)),
                    draft(2, Rule::ClickToConversion, Outcome::Reject, Some(50)),
                ]),
            ),
        );
        assert_eq!(
            types(&events),
            vec![
                "ConversionFlagged",
                "ConversionRejected",
                "ConversionFlagged"
            ]
        );
        let PartnerEvent::ConversionRejected(r) = &events[1] else {
            panic!()
        };
        assert_eq!(
            (r.conversion_id, r.rule),
            (Uuid::from_u128(50), Rule::SelfReferral)
        );
    }

    #[test]
    fn given_an_open_refund_rate_flag_then_another_is_not_raised_until_it_is_cleared() {
        let s = given(&[cmd(
            day(2, 1),
            Action::Raise(vec![draft(1, Rule::RefundRate, Outcome::Review, None)]),
        )]);
        let again = cmd(
            day(2, 2),
            Action::Raise(vec![draft(2, Rule::RefundRate, Outcome::Review, None)]),
        );
        assert!(when(&s, &again).is_empty());
        let s = given(&[
            cmd(
                day(2, 1),
                Action::Raise(vec![draft(1, Rule::RefundRate, Outcome::Review, None)]),
            ),
            cmd(
                day(2, 2),
                Action::Clear {
                    flag_id: Uuid::from_u128(101),
                    reason: "seasonal returns".into(),
                    by: "analyst".into(),
                },
            ),
        ]);
        assert_eq!(types(&when(&s, &again)), vec!["PartnerFlagged"]);
    }

    #[test]
    fn given_a_file_of_another_partner_then_the_command_is_refused() {
        let s = given(&eligible_partner());
        let mut c = verified(VerificationKind::Kyb, day(1, 2));
        c.partner_id = Uuid::from_u128(99);
        assert!(matches!(
            PartnerFile::decide(&s, &c).unwrap_err(),
            PartnerError::WrongPartner { .. }
        ));
    }

    #[test]
    fn published_events_keep_the_contract_commissions_reads() {
        let s = given(&eligible_partner());
        let events = when(
            &s,
            &cmd(
                day(1, 5),
                Action::PlaceHold {
                    hold_id: "h1".into(),
                    reason: "review".into(),
                    by: "ops".into(),
                },
            ),
        );
        let (t, data) = pl_runtime::aggregate::encode_event(&events[0]).unwrap();
        assert_eq!(t, "PayoutHoldPlaced");
        let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(v["hold_id"], "h1");
        assert_eq!(v["partner_id"], P.to_string());
        assert_eq!(v["occurred_at"], "2026-01-05T00:00:00Z");
        let (_, data) = pl_runtime::aggregate::encode_event(&PartnerEvent::VerificationRecorded(
            s.standing.verifications[1].clone(),
        ))
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(
            (v["kind"].as_str(), v["status"].as_str()),
            (Some("tax_form_w9"), Some("verified"))
        );
    }
}
