//! The partner aggregate (stream `partner-<id>`): application, review, approval (by a manager or
//! automatically), rejection, suspension, reinstatement, termination, tier changes with effective
//! dates, the profile managers select on, and compliance's approvals as CRM received them.
//!
//! A partner of a regulated program is activated only once a manager (or the program's
//! auto-approval) approved it AND compliance approved it for every jurisdiction of the program;
//! a revocation by compliance suspends it. Pure: it never reads the clock, another stream or
//! anything but its command and its own events; what it needs of the program (jurisdictions, the
//! starting tier) arrives in the command.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Classify, Kind};

/// A partner stream keeps at most this many events (status changes, tier changes, profile
/// updates, compliance facts): more is a runaway caller.
pub const MAX_EVENTS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartnerType {
    Affiliate,
    Referral,
    Reseller,
    Technology,
    Outsourcing,
    Influencer,
    IntroducingBroker,
}

/// The status other services see (`PartnerStatusChanged.status`), by its proto enum name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContractStatus {
    #[serde(rename = "PARTNER_STATUS_APPLIED")]
    Applied,
    #[serde(rename = "PARTNER_STATUS_APPROVED")]
    Approved,
    #[serde(rename = "PARTNER_STATUS_REJECTED")]
    Rejected,
    #[serde(rename = "PARTNER_STATUS_SUSPENDED")]
    Suspended,
    #[serde(rename = "PARTNER_STATUS_TERMINATED")]
    Terminated,
}

/// What caused a status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    Approved,
    AutoApproved,
    /// Compliance's approval arrived for a partner a manager had approved.
    ComplianceCompleted,
    Rejected,
    Suspended,
    /// Compliance revoked its approval.
    ComplianceRevoked,
    Reinstated,
    /// Compliance approved again a partner it had suspended (and no manager had).
    ComplianceRestored,
    Terminated,
}

/// Where a partner is in CRM's workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Applied,
    InReview,
    AwaitingCompliance,
    Approved,
    Rejected,
    Suspended,
    Terminated,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Applied => "applied",
            Stage::InReview => "in review",
            Stage::AwaitingCompliance => "awaiting compliance",
            Stage::Approved => "approved",
            Stage::Rejected => "rejected",
            Stage::Suspended => "suspended",
            Stage::Terminated => "terminated",
        }
    }
}

/// The `PartnerApplied` contract (commissions opens the partner's account from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub display_name: String,
    pub partner_type: PartnerType,
    pub email: String,
    pub country: String,
    pub applied_at: DateTime<Utc>,
}

/// The `PartnerStatusChanged` contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChanged {
    pub partner_id: Uuid,
    pub status: ContractStatus,
    pub occurred_at: DateTime<Utc>,
    pub reason: String,
    pub program_id: Uuid,
    pub transition: Transition,
}

/// The `PartnerTierChanged` contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierChanged {
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub tier: String,
    pub effective_from: DateTime<Utc>,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disclosure {
    #[default]
    Unknown,
    Pending,
    Acknowledged,
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// Lower-case.
    pub platform: String,
    pub handle: String,
    pub audience_size: u64,
}

/// What managers select partners on (creators: platforms, audience, niches, disclosure).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    #[serde(default)]
    pub website: Option<String>,
    #[serde(default)]
    pub platforms: Vec<Platform>,
    /// Lower-case, unique.
    #[serde(default)]
    pub niches: Vec<String>,
    #[serde(default)]
    pub disclosure: Disclosure,
    #[serde(default)]
    pub description: Option<String>,
}

impl Profile {
    pub fn audience_size(&self) -> u64 {
        self.platforms
            .iter()
            .fold(0_u64, |sum, p| sum.saturating_add(p.audience_size))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum PartnerEvent {
    PartnerApplied(Application),
    PartnerReviewStarted {
        reviewer: String,
        occurred_at: DateTime<Utc>,
    },
    /// A manager's (or the program's automatic) approval, with what the program required then.
    /// Activation follows at once unless compliance's approval is still missing.
    PartnerApprovalDecided {
        /// The program's jurisdictions (empty: not regulated).
        jurisdictions: Vec<String>,
        automatic: bool,
        note: String,
        occurred_at: DateTime<Utc>,
    },
    PartnerStatusChanged(StatusChanged),
    PartnerTierChanged(TierChanged),
    PartnerProfileUpdated {
        profile: Profile,
        occurred_at: DateTime<Utc>,
    },
    /// Compliance's `ComplianceApprovalGranted`, kept as received.
    ComplianceApprovalRecorded {
        source_event_id: Uuid,
        program_id: Uuid,
        jurisdictions: Vec<String>,
        reference: String,
        occurred_at: DateTime<Utc>,
    },
    /// Compliance's `ComplianceApprovalRevoked`, kept as received.
    ComplianceRevocationRecorded {
        source_event_id: Uuid,
        program_id: Uuid,
        reason: String,
        occurred_at: DateTime<Utc>,
    },
}

impl DomainEvent for PartnerEvent {}

/// What a program requires of an approval, read from the program by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalTerms {
    /// The program's jurisdictions; empty when it is not regulated.
    pub jurisdictions: Vec<String>,
    /// The tier to start in (checked against the program by the caller).
    pub tier: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartnerCommand {
    Apply {
        application: Application,
        /// Set when the program approves automatically.
        auto_approve: Option<ApprovalTerms>,
    },
    StartReview {
        reviewer: String,
        at: DateTime<Utc>,
    },
    Approve {
        terms: ApprovalTerms,
        note: String,
        at: DateTime<Utc>,
    },
    Reject {
        reason: String,
        at: DateTime<Utc>,
    },
    Suspend {
        reason: String,
        at: DateTime<Utc>,
    },
    Reinstate {
        note: String,
        at: DateTime<Utc>,
    },
    Terminate {
        reason: String,
        at: DateTime<Utc>,
    },
    ChangeTier {
        tier: String,
        effective_from: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    UpdateProfile {
        profile: Profile,
        at: DateTime<Utc>,
    },
    RecordComplianceGrant {
        source_event_id: Uuid,
        program_id: Uuid,
        jurisdictions: Vec<String>,
        reference: String,
        at: DateTime<Utc>,
    },
    RecordComplianceRevocation {
        source_event_id: Uuid,
        program_id: Uuid,
        reason: String,
        at: DateTime<Utc>,
    },
}

/// Compliance's approval of the partner for one program, as last received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComplianceRecord {
    pub jurisdictions: BTreeSet<String>,
    pub reference: String,
    pub granted_at: DateTime<Utc>,
    pub revoked: Option<(DateTime<Utc>, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierPeriod {
    pub tier: String,
    pub effective_from: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPeriod {
    pub stage: Stage,
    pub since: DateTime<Utc>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partner {
    /// `None` until the partner applied (compliance facts may arrive first).
    pub application: Option<Application>,
    pub stage: Option<Stage>,
    /// Business time of the last lifecycle change: later ones may not go back before it.
    pub last_change_at: Option<DateTime<Utc>>,
    pub reviewer: Option<String>,
    /// The program's jurisdictions at approval (empty: not regulated); `None` before approval.
    pub regulation: Option<Vec<String>>,
    pub suspended_by_manager: bool,
    pub suspended_by_compliance: bool,
    pub tiers: Vec<TierPeriod>,
    pub profile: Profile,
    pub compliance: BTreeMap<Uuid, ComplianceRecord>,
    pub history: Vec<StatusPeriod>,
    pub events: usize,
}

impl Partner {
    /// The tier in force at `at`.
    pub fn tier_at(&self, at: DateTime<Utc>) -> Option<&str> {
        self.tiers
            .iter()
            .take_while(|t| t.effective_from <= at)
            .last()
            .map(|t| t.tier.as_str())
    }

    pub fn program_id(&self) -> Option<Uuid> {
        self.application.as_ref().map(|a| a.program_id)
    }

    /// Whether compliance's approval for `program_id` is in force and covers `jurisdictions`.
    pub fn compliance_covers(&self, program_id: Uuid, jurisdictions: &[String]) -> bool {
        if jurisdictions.is_empty() {
            return true;
        }
        self.compliance.get(&program_id).is_some_and(|c| {
            c.revoked.is_none() && jurisdictions.iter().all(|j| c.jurisdictions.contains(j))
        })
    }

    fn is_regulated(&self) -> bool {
        self.regulation.as_ref().is_some_and(|j| !j.is_empty())
    }

    pub fn contract_status(&self) -> Option<ContractStatus> {
        self.stage.map(|s| match s {
            Stage::Applied | Stage::InReview | Stage::AwaitingCompliance => ContractStatus::Applied,
            Stage::Approved => ContractStatus::Approved,
            Stage::Rejected => ContractStatus::Rejected,
            Stage::Suspended => ContractStatus::Suspended,
            Stage::Terminated => ContractStatus::Terminated,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartnerError {
    #[error("partner {0} already exists")]
    AlreadyExists(Uuid),
    #[error("partner is unknown")]
    NotFound,
    #[error("cannot {action} a partner that is {}", stage.as_str())]
    WrongStage { action: &'static str, stage: Stage },
    #[error("business time {at} is before the partner's last change at {last}")]
    BackInTime {
        at: DateTime<Utc>,
        last: DateTime<Utc>,
    },
    #[error(
        "compliance revoked its approval: only a new compliance approval lifts that suspension"
    )]
    ComplianceHold,
    #[error("the program is regulated ({jurisdictions}) and compliance has not approved the partner for all of it")]
    ComplianceMissing { jurisdictions: String },
    #[error("a tier change takes effect after the previous one ({last}), not at {effective_from}")]
    TierNotAfter {
        effective_from: DateTime<Utc>,
        last: DateTime<Utc>,
    },
    #[error("the partner's stream holds {MAX_EVENTS} events; no more are accepted")]
    Full,
}

impl Classify for PartnerError {
    fn kind(&self) -> Kind {
        match self {
            PartnerError::AlreadyExists(id) => Kind::AlreadyExists {
                what: "partner",
                id: id.to_string(),
            },
            PartnerError::NotFound => Kind::NotFound {
                what: "partner",
                id: String::new(),
            },
            PartnerError::WrongStage { .. }
            | PartnerError::BackInTime { .. }
            | PartnerError::ComplianceHold
            | PartnerError::ComplianceMissing { .. }
            | PartnerError::TierNotAfter { .. }
            | PartnerError::Full => Kind::Rule,
        }
    }
}

fn status(
    app: &Application,
    status: ContractStatus,
    transition: Transition,
    reason: &str,
    at: DateTime<Utc>,
) -> PartnerEvent {
    PartnerEvent::PartnerStatusChanged(StatusChanged {
        partner_id: app.partner_id,
        status,
        occurred_at: at,
        reason: reason.to_owned(),
        program_id: app.program_id,
        transition,
    })
}

/// The events of an approval decided on `state` (which must hold the application).
fn approval(
    state: &Partner,
    app: &Application,
    terms: &ApprovalTerms,
    note: &str,
    automatic: bool,
    at: DateTime<Utc>,
) -> Vec<PartnerEvent> {
    let mut events = vec![PartnerEvent::PartnerApprovalDecided {
        jurisdictions: terms.jurisdictions.clone(),
        automatic,
        note: note.to_owned(),
        occurred_at: at,
    }];
    if let Some(tier) = &terms.tier {
        events.push(PartnerEvent::PartnerTierChanged(TierChanged {
            partner_id: app.partner_id,
            program_id: app.program_id,
            tier: tier.clone(),
            effective_from: at,
            occurred_at: at,
        }));
    }
    if state.compliance_covers(app.program_id, &terms.jurisdictions) {
        let transition = if automatic {
            Transition::AutoApproved
        } else {
            Transition::Approved
        };
        events.push(status(app, ContractStatus::Approved, transition, note, at));
    }
    events
}

fn not_before(state: &Partner, at: DateTime<Utc>) -> Result<(), PartnerError> {
    match state.last_change_at {
        Some(last) if at < last => Err(PartnerError::BackInTime { at, last }),
        _ => Ok(()),
    }
}

impl Aggregate for Partner {
    type State = Partner;
    type Command = PartnerCommand;
    type Event = PartnerEvent;
    type Error = PartnerError;

    fn decide(
        state: &Partner,
        command: &PartnerCommand,
    ) -> Result<Vec<PartnerEvent>, PartnerError> {
        if state.events >= MAX_EVENTS {
            return Err(PartnerError::Full);
        }
        use PartnerCommand as C;
        // Compliance's facts may arrive before the application.
        match command {
            C::RecordComplianceGrant {
                source_event_id,
                program_id,
                jurisdictions,
                reference,
                at,
            } => {
                let recorded = PartnerEvent::ComplianceApprovalRecorded {
                    source_event_id: *source_event_id,
                    program_id: *program_id,
                    jurisdictions: jurisdictions.clone(),
                    reference: reference.clone(),
                    occurred_at: *at,
                };
                let after = Partner::evolve(state.clone(), &recorded);
                let mut events = vec![recorded];
                let (Some(app), Some(stage), Some(required)) =
                    (&state.application, state.stage, &state.regulation)
                else {
                    return Ok(events);
                };
                if app.program_id != *program_id
                    || !after.compliance_covers(app.program_id, required)
                {
                    return Ok(events);
                }
                let when = state.last_change_at.map_or(*at, |l| l.max(*at));
                match stage {
                    Stage::AwaitingCompliance => events.push(status(
                        app,
                        ContractStatus::Approved,
                        Transition::ComplianceCompleted,
                        reference,
                        when,
                    )),
                    Stage::Suspended
                        if state.suspended_by_compliance && !state.suspended_by_manager =>
                    {
                        events.push(status(
                            app,
                            ContractStatus::Approved,
                            Transition::ComplianceRestored,
                            reference,
                            when,
                        ));
                    }
                    _ => {}
                }
                return Ok(events);
            }
            C::RecordComplianceRevocation {
                source_event_id,
                program_id,
                reason,
                at,
            } => {
                let mut events = vec![PartnerEvent::ComplianceRevocationRecorded {
                    source_event_id: *source_event_id,
                    program_id: *program_id,
                    reason: reason.clone(),
                    occurred_at: *at,
                }];
                if let (Some(app), Some(Stage::Approved)) = (&state.application, state.stage) {
                    if app.program_id == *program_id && state.is_regulated() {
                        let when = state.last_change_at.map_or(*at, |l| l.max(*at));
                        events.push(status(
                            app,
                            ContractStatus::Suspended,
                            Transition::ComplianceRevoked,
                            &format!("compliance revoked its approval: {reason}"),
                            when,
                        ));
                    }
                }
                return Ok(events);
            }
            C::Apply {
                application,
                auto_approve,
            } => {
                if state.application.is_some() {
                    return Err(PartnerError::AlreadyExists(application.partner_id));
                }
                let applied = PartnerEvent::PartnerApplied(application.clone());
                let mut events = vec![applied.clone()];
                if let Some(terms) = auto_approve {
                    let after = Partner::evolve(state.clone(), &applied);
                    events.extend(approval(
                        &after,
                        application,
                        terms,
                        "",
                        true,
                        application.applied_at,
                    ));
                }
                return Ok(events);
            }
            _ => {}
        }
        let (Some(app), Some(stage)) = (&state.application, state.stage) else {
            return Err(PartnerError::NotFound);
        };
        let wrong = |action: &'static str| Err(PartnerError::WrongStage { action, stage });
        match command {
            C::StartReview { reviewer, at } => match stage {
                Stage::Applied | Stage::InReview => {
                    not_before(state, *at)?;
                    if state.reviewer.as_deref() == Some(reviewer.as_str()) {
                        return Ok(vec![]);
                    }
                    Ok(vec![PartnerEvent::PartnerReviewStarted {
                        reviewer: reviewer.clone(),
                        occurred_at: *at,
                    }])
                }
                _ => wrong("review"),
            },
            C::Approve { terms, note, at } => match stage {
                Stage::Applied | Stage::InReview => {
                    not_before(state, *at)?;
                    Ok(approval(state, app, terms, note, false, *at))
                }
                _ => wrong("approve"),
            },
            C::Reject { reason, at } => match stage {
                Stage::Applied | Stage::InReview | Stage::AwaitingCompliance => {
                    not_before(state, *at)?;
                    Ok(vec![status(
                        app,
                        ContractStatus::Rejected,
                        Transition::Rejected,
                        reason,
                        *at,
                    )])
                }
                _ => wrong("reject"),
            },
            C::Suspend { reason, at } => match stage {
                Stage::Approved => {
                    not_before(state, *at)?;
                    Ok(vec![status(
                        app,
                        ContractStatus::Suspended,
                        Transition::Suspended,
                        reason,
                        *at,
                    )])
                }
                // Suspended by compliance only: the manager's suspension is recorded too, so a
                // new compliance approval alone does not lift it.
                Stage::Suspended if !state.suspended_by_manager => {
                    not_before(state, *at)?;
                    Ok(vec![status(
                        app,
                        ContractStatus::Suspended,
                        Transition::Suspended,
                        reason,
                        *at,
                    )])
                }
                _ => wrong("suspend"),
            },
            C::Reinstate { note, at } => match stage {
                Stage::Suspended if state.suspended_by_manager => {
                    not_before(state, *at)?;
                    if state.suspended_by_compliance {
                        return Err(PartnerError::ComplianceHold);
                    }
                    let required = state.regulation.clone().unwrap_or_default();
                    if !state.compliance_covers(app.program_id, &required) {
                        return Err(PartnerError::ComplianceMissing {
                            jurisdictions: required.join(", "),
                        });
                    }
                    Ok(vec![status(
                        app,
                        ContractStatus::Approved,
                        Transition::Reinstated,
                        note,
                        *at,
                    )])
                }
                Stage::Suspended => Err(PartnerError::ComplianceHold),
                _ => wrong("reinstate"),
            },
            C::Terminate { reason, at } => match stage {
                Stage::Rejected | Stage::Terminated => wrong("terminate"),
                _ => {
                    not_before(state, *at)?;
                    Ok(vec![status(
                        app,
                        ContractStatus::Terminated,
                        Transition::Terminated,
                        reason,
                        *at,
                    )])
                }
            },
            C::ChangeTier {
                tier,
                effective_from,
                at,
            } => match stage {
                Stage::AwaitingCompliance | Stage::Approved | Stage::Suspended => {
                    if let Some(last) = state.tiers.last() {
                        if last.tier == *tier {
                            return Ok(vec![]);
                        }
                        if *effective_from <= last.effective_from {
                            return Err(PartnerError::TierNotAfter {
                                effective_from: *effective_from,
                                last: last.effective_from,
                            });
                        }
                    }
                    Ok(vec![PartnerEvent::PartnerTierChanged(TierChanged {
                        partner_id: app.partner_id,
                        program_id: app.program_id,
                        tier: tier.clone(),
                        effective_from: *effective_from,
                        occurred_at: *at,
                    })])
                }
                _ => wrong("change the tier of"),
            },
            C::UpdateProfile { profile, at } => match stage {
                Stage::Rejected | Stage::Terminated => wrong("update the profile of"),
                _ if state.profile == *profile => Ok(vec![]),
                _ => Ok(vec![PartnerEvent::PartnerProfileUpdated {
                    profile: profile.clone(),
                    occurred_at: *at,
                }]),
            },
            C::Apply { .. }
            | C::RecordComplianceGrant { .. }
            | C::RecordComplianceRevocation { .. } => Ok(vec![]),
        }
    }

    fn evolve(mut s: Partner, event: &PartnerEvent) -> Partner {
        s.events += 1;
        match event {
            PartnerEvent::PartnerApplied(app) => {
                s.application = Some(app.clone());
                s.stage = Some(Stage::Applied);
                s.last_change_at = Some(app.applied_at);
                s.history.push(StatusPeriod {
                    stage: Stage::Applied,
                    since: app.applied_at,
                    reason: String::new(),
                });
            }
            PartnerEvent::PartnerReviewStarted {
                reviewer,
                occurred_at,
            } => {
                s.reviewer = Some(reviewer.clone());
                if s.stage != Some(Stage::InReview) {
                    s.stage = Some(Stage::InReview);
                    s.history.push(StatusPeriod {
                        stage: Stage::InReview,
                        since: *occurred_at,
                        reason: String::new(),
                    });
                }
                s.last_change_at = Some(*occurred_at);
            }
            PartnerEvent::PartnerApprovalDecided {
                jurisdictions,
                note,
                occurred_at,
                ..
            } => {
                s.regulation = Some(jurisdictions.clone());
                s.stage = Some(Stage::AwaitingCompliance);
                s.last_change_at = Some(*occurred_at);
                s.history.push(StatusPeriod {
                    stage: Stage::AwaitingCompliance,
                    since: *occurred_at,
                    reason: note.clone(),
                });
            }
            PartnerEvent::PartnerStatusChanged(c) => {
                let stage = match c.status {
                    ContractStatus::Applied => Stage::Applied,
                    ContractStatus::Approved => {
                        s.suspended_by_manager = false;
                        s.suspended_by_compliance = false;
                        Stage::Approved
                    }
                    ContractStatus::Rejected => Stage::Rejected,
                    ContractStatus::Suspended => {
                        if c.transition == Transition::ComplianceRevoked {
                            s.suspended_by_compliance = true;
                        } else {
                            s.suspended_by_manager = true;
                        }
                        Stage::Suspended
                    }
                    ContractStatus::Terminated => Stage::Terminated,
                };
                // An approval decided and activated in one step shows as one period.
                if s.stage == Some(Stage::AwaitingCompliance)
                    && stage == Stage::Approved
                    && s.history.last().is_some_and(|h| h.since == c.occurred_at)
                {
                    s.history.pop();
                }
                s.stage = Some(stage);
                s.last_change_at = Some(c.occurred_at);
                s.history.push(StatusPeriod {
                    stage,
                    since: c.occurred_at,
                    reason: c.reason.clone(),
                });
            }
            PartnerEvent::PartnerTierChanged(t) => s.tiers.push(TierPeriod {
                tier: t.tier.clone(),
                effective_from: t.effective_from,
            }),
            PartnerEvent::PartnerProfileUpdated { profile, .. } => s.profile = profile.clone(),
            PartnerEvent::ComplianceApprovalRecorded {
                program_id,
                jurisdictions,
                reference,
                occurred_at,
                ..
            } => {
                s.compliance.insert(
                    *program_id,
                    ComplianceRecord {
                        jurisdictions: jurisdictions.iter().cloned().collect(),
                        reference: reference.clone(),
                        granted_at: *occurred_at,
                        revoked: None,
                    },
                );
                let own = s.program_id() == Some(*program_id);
                let required = s.regulation.clone().unwrap_or_default();
                if own && s.compliance_covers(*program_id, &required) {
                    s.suspended_by_compliance = false;
                }
            }
            PartnerEvent::ComplianceRevocationRecorded {
                program_id,
                reason,
                occurred_at,
                ..
            } => {
                if let Some(c) = s.compliance.get_mut(program_id) {
                    c.revoked = Some((*occurred_at, reason.clone()));
                } else {
                    s.compliance.insert(
                        *program_id,
                        ComplianceRecord {
                            jurisdictions: BTreeSet::new(),
                            reference: String::new(),
                            granted_at: *occurred_at,
                            revoked: Some((*occurred_at, reason.clone())),
                        },
                    );
                }
                if s.program_id() == Some(*program_id)
                    && s.stage == Some(Stage::Suspended)
                    && s.is_regulated()
                {
                    s.suspended_by_compliance = true;
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

    const PARTNER: Uuid = Uuid::from_u128(1);
    const PROGRAM: Uuid = Uuid::from_u128(2);

    fn t(hours: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + hours * 3600, 0).unwrap()
    }

    fn application() -> Application {
        Application {
            partner_id: PARTNER,
            program_id: PROGRAM,
            display_name: "Acme Media".into(),
            partner_type: PartnerType::Affiliate,
            email: "ops@acme.example".into(),
            country: "DE".into(),
            applied_at: t(0),
        }
    }

    fn given(events: &[PartnerEvent]) -> Partner {
        events.iter().fold(Partner::default(), Partner::evolve)
    }

    fn when(state: &Partner, c: PartnerCommand) -> Result<Vec<PartnerEvent>, PartnerError> {
        Partner::decide(state, &c)
    }

    fn applied() -> PartnerEvent {
        PartnerEvent::PartnerApplied(application())
    }

    fn changed(
        status: ContractStatus,
        transition: Transition,
        reason: &str,
        h: i64,
    ) -> PartnerEvent {
        PartnerEvent::PartnerStatusChanged(StatusChanged {
            partner_id: PARTNER,
            status,
            occurred_at: t(h),
            reason: reason.into(),
            program_id: PROGRAM,
            transition,
        })
    }

    fn decided(jurisdictions: &[&str], h: i64) -> PartnerEvent {
        PartnerEvent::PartnerApprovalDecided {
            jurisdictions: jurisdictions.iter().map(|j| (*j).to_owned()).collect(),
            automatic: false,
            note: String::new(),
            occurred_at: t(h),
        }
    }

    fn terms(jurisdictions: &[&str]) -> ApprovalTerms {
        ApprovalTerms {
            jurisdictions: jurisdictions.iter().map(|j| (*j).to_owned()).collect(),
            tier: None,
        }
    }

    fn grant(jurisdictions: &[&str], h: i64) -> PartnerCommand {
        PartnerCommand::RecordComplianceGrant {
            source_event_id: Uuid::from_u128(0xc0 + h as u128),
            program_id: PROGRAM,
            jurisdictions: jurisdictions.iter().map(|j| (*j).to_owned()).collect(),
            reference: "LIC-1".into(),
            at: t(h),
        }
    }

    fn approved_partner() -> Partner {
        given(&[
            applied(),
            decided(&[], 1),
            changed(ContractStatus::Approved, Transition::Approved, "", 1),
        ])
    }

    #[test]
    fn a_new_partner_can_apply() {
        let events = when(
            &given(&[]),
            PartnerCommand::Apply {
                application: application(),
                auto_approve: None,
            },
        )
        .unwrap();
        assert_eq!(events, vec![applied()]);
    }

    #[test]
    fn a_partner_cannot_apply_twice() {
        let err = when(
            &given(&[applied()]),
            PartnerCommand::Apply {
                application: application(),
                auto_approve: None,
            },
        )
        .unwrap_err();
        assert_eq!(err, PartnerError::AlreadyExists(PARTNER));
    }

    #[test]
    fn given_an_auto_approving_unregulated_program_when_a_partner_applies_then_it_is_approved_at_once(
    ) {
        let events = when(
            &given(&[]),
            PartnerCommand::Apply {
                application: application(),
                auto_approve: Some(ApprovalTerms {
                    jurisdictions: vec![],
                    tier: Some("bronze".into()),
                }),
            },
        )
        .unwrap();
        assert_eq!(events.len(), 4);
        assert!(matches!(
            &events[3],
            PartnerEvent::PartnerStatusChanged(c)
                if c.status == ContractStatus::Approved && c.transition == Transition::AutoApproved
        ));
        let state = given(&events);
        assert_eq!(state.stage, Some(Stage::Approved));
        assert_eq!(state.tier_at(t(0)), Some("bronze"));
    }

    #[test]
    fn given_an_applied_partner_when_a_manager_approves_then_it_is_approved() {
        let state = given(&[applied()]);
        let events = when(
            &state,
            PartnerCommand::Approve {
                terms: terms(&[]),
                note: "looks good".into(),
                at: t(2),
            },
        )
        .unwrap();
        assert_eq!(
            events.last(),
            Some(&changed(
                ContractStatus::Approved,
                Transition::Approved,
                "looks good",
                2
            ))
        );
        assert_eq!(
            given(&[vec![applied()], events].concat()).stage,
            Some(Stage::Approved)
        );
    }

    #[test]
    fn given_a_regulated_program_without_compliance_approval_when_approved_then_the_partner_awaits_compliance(
    ) {
        let state = given(&[applied()]);
        let events = when(
            &state,
            PartnerCommand::Approve {
                terms: terms(&["GB", "MT"]),
                note: String::new(),
                at: t(2),
            },
        )
        .unwrap();
        assert_eq!(events, vec![decided(&["GB", "MT"], 2)]);
        let state = given(&[applied(), decided(&["GB", "MT"], 2)]);
        assert_eq!(state.stage, Some(Stage::AwaitingCompliance));
        assert_eq!(state.contract_status(), Some(ContractStatus::Applied));
    }

    #[test]
    fn given_a_partner_awaiting_compliance_when_compliance_approves_every_jurisdiction_then_it_is_activated(
    ) {
        let state = given(&[applied(), decided(&["GB", "MT"], 2)]);
        // A grant for only some of the jurisdictions is recorded but activates nothing.
        let partial = when(&state, grant(&["GB"], 3)).unwrap();
        assert_eq!(partial.len(), 1);
        let state = given(&[applied(), decided(&["GB", "MT"], 2), partial[0].clone()]);
        let full = when(&state, grant(&["GB", "MT", "DE"], 4)).unwrap();
        assert_eq!(full.len(), 2);
        assert!(matches!(
            &full[1],
            PartnerEvent::PartnerStatusChanged(c)
                if c.status == ContractStatus::Approved
                    && c.transition == Transition::ComplianceCompleted
                    && c.occurred_at == t(4)
        ));
    }

    #[test]
    fn given_compliance_approved_first_when_a_manager_approves_then_the_partner_is_activated_at_once(
    ) {
        let state = Partner::evolve(
            given(&[applied()]),
            &when(&given(&[applied()]), grant(&["GB"], 1)).unwrap()[0],
        );
        let events = when(
            &state,
            PartnerCommand::Approve {
                terms: terms(&["GB"]),
                note: String::new(),
                at: t(2),
            },
        )
        .unwrap();
        assert!(
            matches!(events.last(), Some(PartnerEvent::PartnerStatusChanged(c)) if c.status == ContractStatus::Approved)
        );
    }

    #[test]
    fn given_compliance_facts_before_the_application_then_they_are_kept_and_count_later() {
        let granted = when(&given(&[]), grant(&["MT"], 0)).unwrap();
        assert_eq!(granted.len(), 1);
        let state = given(&[granted[0].clone(), applied()]);
        let events = when(
            &state,
            PartnerCommand::Approve {
                terms: terms(&["MT"]),
                note: String::new(),
                at: t(1),
            },
        )
        .unwrap();
        assert!(matches!(
            events.last(),
            Some(PartnerEvent::PartnerStatusChanged(_))
        ));
    }

    #[test]
    fn given_an_approved_regulated_partner_when_compliance_revokes_then_it_is_suspended_and_a_new_grant_restores_it(
    ) {
        let g = when(&given(&[applied()]), grant(&["GB"], 1))
            .unwrap()
            .remove(0);
        let base = vec![
            applied(),
            g,
            decided(&["GB"], 2),
            changed(ContractStatus::Approved, Transition::Approved, "", 2),
        ];
        let revoke = PartnerCommand::RecordComplianceRevocation {
            source_event_id: Uuid::from_u128(0xd1),
            program_id: PROGRAM,
            reason: "licence lapsed".into(),
            at: t(5),
        };
        let revoked = when(&given(&base), revoke).unwrap();
        assert!(matches!(
            &revoked[1],
            PartnerEvent::PartnerStatusChanged(c)
                if c.status == ContractStatus::Suspended && c.transition == Transition::ComplianceRevoked
        ));
        let state = given(&[base.clone(), revoked.clone()].concat());
        assert!(state.suspended_by_compliance);
        // A manager cannot lift a compliance suspension.
        assert_eq!(
            when(
                &state,
                PartnerCommand::Reinstate {
                    note: String::new(),
                    at: t(6)
                }
            )
            .unwrap_err(),
            PartnerError::ComplianceHold
        );
        let restored = when(&state, grant(&["GB"], 7)).unwrap();
        assert!(matches!(
            &restored[1],
            PartnerEvent::PartnerStatusChanged(c) if c.transition == Transition::ComplianceRestored
        ));
    }

    #[test]
    fn given_a_partner_suspended_by_a_manager_and_compliance_when_compliance_grants_again_then_it_stays_suspended(
    ) {
        let g = when(&given(&[applied()]), grant(&["GB"], 1))
            .unwrap()
            .remove(0);
        let mut events = vec![
            applied(),
            g,
            decided(&["GB"], 2),
            changed(ContractStatus::Approved, Transition::Approved, "", 2),
            changed(
                ContractStatus::Suspended,
                Transition::Suspended,
                "fraud review",
                3,
            ),
        ];
        let revoked = when(
            &given(&events),
            PartnerCommand::RecordComplianceRevocation {
                source_event_id: Uuid::from_u128(0xd2),
                program_id: PROGRAM,
                reason: "lapsed".into(),
                at: t(4),
            },
        )
        .unwrap();
        assert_eq!(revoked.len(), 1, "already suspended: recorded only");
        events.extend(revoked);
        let state = given(&events);
        assert!(state.suspended_by_compliance && state.suspended_by_manager);
        let regranted = when(&state, grant(&["GB"], 5)).unwrap();
        assert_eq!(regranted.len(), 1, "the manager's suspension still holds");
        events.extend(regranted);
        let state = given(&events);
        assert_eq!(state.stage, Some(Stage::Suspended));
        let back = when(
            &state,
            PartnerCommand::Reinstate {
                note: "cleared".into(),
                at: t(6),
            },
        )
        .unwrap();
        assert_eq!(
            back,
            vec![changed(
                ContractStatus::Approved,
                Transition::Reinstated,
                "cleared",
                6
            )]
        );
    }

    #[test]
    fn given_an_approved_partner_when_suspended_then_reinstated_then_terminated_each_change_is_published(
    ) {
        let state = approved_partner();
        let s = when(
            &state,
            PartnerCommand::Suspend {
                reason: "chargebacks".into(),
                at: t(3),
            },
        )
        .unwrap();
        assert_eq!(
            s,
            vec![changed(
                ContractStatus::Suspended,
                Transition::Suspended,
                "chargebacks",
                3
            )]
        );
        let state = Partner::evolve(state, &s[0]);
        assert_eq!(
            when(
                &state,
                PartnerCommand::Suspend {
                    reason: "again".into(),
                    at: t(3)
                }
            )
            .unwrap_err(),
            PartnerError::WrongStage {
                action: "suspend",
                stage: Stage::Suspended
            }
        );
        let r = when(
            &state,
            PartnerCommand::Reinstate {
                note: String::new(),
                at: t(4),
            },
        )
        .unwrap();
        let state = Partner::evolve(state, &r[0]);
        assert_eq!(state.stage, Some(Stage::Approved));
        let x = when(
            &state,
            PartnerCommand::Terminate {
                reason: "contract ended".into(),
                at: t(5),
            },
        )
        .unwrap();
        let state = Partner::evolve(state, &x[0]);
        for c in [
            PartnerCommand::Reinstate {
                note: String::new(),
                at: t(6),
            },
            PartnerCommand::Suspend {
                reason: "x".into(),
                at: t(6),
            },
            PartnerCommand::Approve {
                terms: terms(&[]),
                note: String::new(),
                at: t(6),
            },
            PartnerCommand::Terminate {
                reason: "x".into(),
                at: t(6),
            },
        ] {
            assert!(matches!(
                when(&state, c),
                Err(PartnerError::WrongStage { .. })
            ));
        }
    }

    #[test]
    fn given_an_applied_partner_when_rejected_with_a_reason_then_it_cannot_be_approved_later() {
        let state = given(&[applied()]);
        let r = when(
            &state,
            PartnerCommand::Reject {
                reason: "no traffic".into(),
                at: t(1),
            },
        )
        .unwrap();
        assert_eq!(
            r,
            vec![changed(
                ContractStatus::Rejected,
                Transition::Rejected,
                "no traffic",
                1
            )]
        );
        let state = Partner::evolve(state, &r[0]);
        assert_eq!(
            when(
                &state,
                PartnerCommand::Approve {
                    terms: terms(&[]),
                    note: String::new(),
                    at: t(2)
                }
            )
            .unwrap_err(),
            PartnerError::WrongStage {
                action: "approve",
                stage: Stage::Rejected
            }
        );
    }

    #[test]
    fn given_a_partner_in_review_when_approved_then_the_review_preceded_the_approval() {
        let state = given(&[applied()]);
        let r = when(
            &state,
            PartnerCommand::StartReview {
                reviewer: "maria".into(),
                at: t(1),
            },
        )
        .unwrap();
        let state = Partner::evolve(state, &r[0]);
        assert_eq!(state.stage, Some(Stage::InReview));
        assert_eq!(state.reviewer.as_deref(), Some("maria"));
        let a = when(
            &state,
            PartnerCommand::Approve {
                terms: terms(&[]),
                note: String::new(),
                at: t(2),
            },
        )
        .unwrap();
        let state = a.iter().fold(state, Partner::evolve);
        let stages: Vec<Stage> = state.history.iter().map(|h| h.stage).collect();
        assert_eq!(
            stages,
            vec![Stage::Applied, Stage::InReview, Stage::Approved]
        );
    }

    #[test]
    fn a_lifecycle_change_cannot_go_back_before_the_last_one() {
        let state = approved_partner();
        assert_eq!(
            when(
                &state,
                PartnerCommand::Suspend {
                    reason: "x".into(),
                    at: t(0)
                }
            )
            .unwrap_err(),
            PartnerError::BackInTime {
                at: t(0),
                last: t(1)
            }
        );
    }

    #[test]
    fn tier_changes_are_recorded_with_effective_dates_and_never_before_the_previous_one() {
        let mut state = approved_partner();
        for (tier, from) in [("bronze", 1), ("silver", 100), ("gold", 200)] {
            let e = when(
                &state,
                PartnerCommand::ChangeTier {
                    tier: tier.into(),
                    effective_from: t(from),
                    at: t(1),
                },
            )
            .unwrap();
            state = Partner::evolve(state, &e[0]);
        }
        assert_eq!(state.tier_at(t(0)), None);
        assert_eq!(state.tier_at(t(150)), Some("silver"));
        assert_eq!(state.tier_at(t(200)), Some("gold"));
        assert_eq!(
            when(
                &state,
                PartnerCommand::ChangeTier {
                    tier: "bronze".into(),
                    effective_from: t(150),
                    at: t(2)
                }
            )
            .unwrap_err(),
            PartnerError::TierNotAfter {
                effective_from: t(150),
                last: t(200)
            }
        );
        assert!(when(
            &state,
            PartnerCommand::ChangeTier {
                tier: "gold".into(),
                effective_from: t(300),
                at: t(2)
            }
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn an_unknown_partner_cannot_be_approved() {
        assert_eq!(
            when(
                &given(&[]),
                PartnerCommand::Approve {
                    terms: terms(&[]),
                    note: String::new(),
                    at: t(1)
                }
            )
            .unwrap_err(),
            PartnerError::NotFound
        );
    }

    #[test]
    fn the_profile_is_updated_and_an_identical_update_changes_nothing() {
        let state = approved_partner();
        let profile = Profile {
            platforms: vec![Platform {
                platform: "youtube".into(),
                handle: "@acme".into(),
                audience_size: 120_000,
            }],
            niches: vec!["fitness".into()],
            disclosure: Disclosure::Acknowledged,
            ..Profile::default()
        };
        let e = when(
            &state,
            PartnerCommand::UpdateProfile {
                profile: profile.clone(),
                at: t(2),
            },
        )
        .unwrap();
        let state = Partner::evolve(state, &e[0]);
        assert_eq!(state.profile.audience_size(), 120_000);
        assert!(
            when(&state, PartnerCommand::UpdateProfile { profile, at: t(3) })
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn published_status_changes_use_the_contract_field_names_and_enum_names() {
        let e = changed(ContractStatus::Suspended, Transition::Suspended, "fraud", 1);
        let (event_type, data) = pl_runtime::aggregate::encode_event(&e).unwrap();
        assert_eq!(event_type, "PartnerStatusChanged");
        let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(v["partner_id"], PARTNER.to_string());
        assert_eq!(v["status"], "PARTNER_STATUS_SUSPENDED");
        assert_eq!(v["occurred_at"], "2026-01-01T01:00:00Z");
        assert_eq!(v["reason"], "fraud");
        let (event_type, data) = pl_runtime::aggregate::encode_event(&applied()).unwrap();
        assert_eq!(event_type, "PartnerApplied");
        let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(v["partner_type"], "affiliate");
        assert_eq!(v["program_id"], PROGRAM.to_string());
    }
}
