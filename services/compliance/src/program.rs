//! A program's compliance settings (stream `compliance-program-<id>`): whether it is
//! regulated and in which jurisdictions, and its fraud rules' switches, outcomes and
//! thresholds. Every change is a new version; flags record the version they were judged under.
//! Pure decide/evolve; it never judges a partner or a conversion itself.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::rules::FraudRules;
use crate::verification::{is_jurisdiction, VerificationKind};

pub const MAX_JURISDICTIONS: usize = 50;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub regulated: bool,
    pub jurisdictions: Vec<String>,
    pub rules: FraudRules,
    /// Agreements every partner must have recorded before it is paid (see
    /// [`REQUIRABLE`]); a missing one holds the partner's payouts (`requirement-<kind>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_verifications: Vec<VerificationKind>,
}

/// The verifications a program may require of every partner before it is paid.
pub const REQUIRABLE: &[VerificationKind] = &[
    VerificationKind::DataSharingAgreement,
    VerificationKind::DisclosureAcknowledgement,
];

impl Settings {
    /// Every problem as (field, description).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .rules
            .problems()
            .into_iter()
            .map(|(f, d)| (format!("rules.{f}"), d))
            .collect();
        for (i, kind) in self.required_verifications.iter().enumerate() {
            if !REQUIRABLE.contains(kind) {
                out.push((
                    format!("required_verifications[{i}]"),
                    "only a data-sharing agreement or a disclosure acknowledgement".into(),
                ));
            } else if self.required_verifications[..i].contains(kind) {
                out.push((
                    format!("required_verifications[{i}]"),
                    "listed twice".into(),
                ));
            }
        }
        if self.regulated && self.jurisdictions.is_empty() {
            out.push((
                "jurisdictions".into(),
                "a regulated program names at least one jurisdiction".into(),
            ));
        }
        if !self.regulated && !self.jurisdictions.is_empty() {
            out.push((
                "jurisdictions".into(),
                "only regulated programs name jurisdictions".into(),
            ));
        }
        if self.jurisdictions.len() > MAX_JURISDICTIONS {
            out.push((
                "jurisdictions".into(),
                format!("at most {MAX_JURISDICTIONS}"),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, j) in self.jurisdictions.iter().enumerate() {
            if !is_jurisdiction(j) {
                out.push((
                    format!("jurisdictions[{i}]"),
                    "an ISO 3166-1 alpha-2 or ISO 3166-2 code, e.g. MT or US-NJ".into(),
                ));
            } else if !seen.insert(j) {
                out.push((format!("jurisdictions[{i}]"), "listed twice".into()));
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configured {
    pub program_id: Uuid,
    pub settings: Settings,
    pub configured_by: String,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ProgramEvent {
    ProgramComplianceConfigured(Configured),
}

impl DomainEvent for ProgramEvent {}

/// The settings in force (the defaults until configured) and how many versions there were.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Program {
    pub settings: Settings,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    #[error("invalid settings: {}", .0.iter().map(|(f, d)| format!("{f}: {d}")).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<(String, String)>),
}

impl Aggregate for Program {
    type State = Program;
    type Command = Configured;
    type Event = ProgramEvent;
    type Error = ProgramError;

    fn decide(state: &Program, c: &Configured) -> Result<Vec<ProgramEvent>, ProgramError> {
        let problems = c.settings.problems();
        if !problems.is_empty() {
            return Err(ProgramError::Invalid(problems));
        }
        if state.version > 0 && state.settings == c.settings {
            return Ok(vec![]);
        }
        Ok(vec![ProgramEvent::ProgramComplianceConfigured(c.clone())])
    }

    fn evolve(mut state: Program, event: &ProgramEvent) -> Program {
        match event {
            ProgramEvent::ProgramComplianceConfigured(c) => {
                state.settings = c.settings.clone();
                state.version += 1;
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn configure(settings: Settings) -> Configured {
        Configured {
            program_id: Uuid::from_u128(1),
            settings,
            configured_by: "ops".into(),
            occurred_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
        }
    }

    #[test]
    fn given_a_regulated_program_without_jurisdictions_when_configured_then_it_is_refused() {
        let s = Settings {
            regulated: true,
            jurisdictions: vec!["MT".into(), "MT".into(), "malta".into()],
            ..Settings::default()
        };
        let ProgramError::Invalid(p) =
            Program::decide(&Program::default(), &configure(s)).unwrap_err();
        let fields: Vec<_> = p.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, vec!["jurisdictions[1]", "jurisdictions[2]"]);
        let s = Settings {
            regulated: true,
            ..Settings::default()
        };
        assert!(Program::decide(&Program::default(), &configure(s)).is_err());
    }

    #[test]
    fn given_the_same_settings_again_then_no_new_version_is_written() {
        let s = Settings {
            regulated: true,
            jurisdictions: vec!["MT".into()],
            ..Settings::default()
        };
        let events = Program::decide(&Program::default(), &configure(s.clone())).unwrap();
        let state = events.iter().fold(Program::default(), Program::evolve);
        assert_eq!(state.version, 1);
        assert!(Program::decide(&state, &configure(s)).unwrap().is_empty());
    }
}
