//! The program aggregate (stream `partner-program-<id>`): a program's name, whether it is
//! regulated and where (fixed at creation, so an approval judged against it can never be
//! undercut by a later change), its settings (auto-approval, hierarchy levels, how long deal
//! registrations last) and its tiers with what each may use (commission plans, MDF, deal
//! registration). Pure: no I/O, no clock; tiers are never removed, only redefined.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Classify, Kind};

pub const MAX_TIERS: usize = 20;
pub const MAX_LEVELS: u8 = 10;
pub const DEFAULT_DEAL_REGISTRATION_DAYS: u32 = 90;
pub const MAX_DEAL_REGISTRATION_DAYS: u32 = 730;
/// Settings changes and tier definitions kept per program.
pub const MAX_EVENTS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub auto_approve: bool,
    /// Levels of the partner hierarchy: 1 = no parents.
    pub max_levels: u8,
    pub deal_registration_days: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            auto_approve: false,
            max_levels: 1,
            deal_registration_days: DEFAULT_DEAL_REGISTRATION_DAYS,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Commission plans the tier may be assigned; empty: any.
    pub plan_ids: Vec<Uuid>,
    pub mdf: bool,
    pub deal_registration: bool,
}

impl Access {
    /// What a partner of a program without tiers may use: everything.
    pub fn everything() -> Self {
        Self {
            plan_ids: vec![],
            mdf: true,
            deal_registration: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// Lower-case code.
    pub code: String,
    pub name: String,
    pub rank: u32,
    pub access: Access,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub program_id: Uuid,
    pub name: String,
    pub vertical: Option<String>,
    /// Upper-case, sorted, unique; empty when the program is not regulated.
    pub jurisdictions: Vec<String>,
    pub settings: Settings,
    pub tiers: Vec<Tier>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ProgramEvent {
    ProgramCreated(Definition),
    ProgramSettingsChanged {
        settings: Settings,
        occurred_at: DateTime<Utc>,
    },
    /// One tier (re)defined. Written by earlier versions, still read; a definition is now
    /// recorded as [`ProgramEvent::ProgramTiersChanged`].
    TierDefined {
        tier: Tier,
        occurred_at: DateTime<Utc>,
    },
    /// The `ProgramTiersChanged` contract: every tier of the program after a change (at
    /// creation with tiers, and at each definition), so commissions can refuse a plan a
    /// partner's tier does not grant without knowing the program's history.
    ProgramTiersChanged(TiersChanged),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TiersChanged {
    pub program_id: Uuid,
    pub tiers: Vec<Tier>,
    pub occurred_at: DateTime<Utc>,
}

impl DomainEvent for ProgramEvent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramCommand {
    Create(Definition),
    ChangeSettings {
        settings: Settings,
        at: DateTime<Utc>,
    },
    DefineTier {
        tier: Tier,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Program {
    pub definition: Option<Definition>,
    pub events: usize,
}

impl Program {
    pub fn tier(&self, code: &str) -> Option<&Tier> {
        self.definition
            .as_ref()?
            .tiers
            .iter()
            .find(|t| t.code == code)
    }

    /// Where approved partners start by default.
    pub fn lowest_tier(&self) -> Option<&Tier> {
        self.definition
            .as_ref()?
            .tiers
            .iter()
            .min_by_key(|t| t.rank)
    }

    /// What a partner in `tier` may use: everything in a program without tiers; the lowest
    /// tier's access for a partner without one.
    pub fn access(&self, tier: Option<&str>) -> Access {
        let Some(def) = &self.definition else {
            return Access::default();
        };
        if def.tiers.is_empty() {
            return Access::everything();
        }
        tier.and_then(|c| self.tier(c))
            .or_else(|| self.lowest_tier())
            .map(|t| t.access.clone())
            .unwrap_or_default()
    }

    pub fn is_regulated(&self) -> bool {
        self.definition
            .as_ref()
            .is_some_and(|d| !d.jurisdictions.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    #[error("program {0} already exists")]
    AlreadyExists(Uuid),
    #[error("program is unknown")]
    NotFound,
    #[error("a program has at most {MAX_TIERS} tiers")]
    TooManyTiers,
    #[error("rank {rank} is already tier {code}'s; ranks order tiers and must differ")]
    RankTaken { rank: u32, code: String },
    #[error("the program's stream holds {MAX_EVENTS} events; no more are accepted")]
    Full,
}

impl Classify for ProgramError {
    fn kind(&self) -> Kind {
        match self {
            ProgramError::AlreadyExists(id) => Kind::AlreadyExists {
                what: "program",
                id: id.to_string(),
            },
            ProgramError::NotFound => Kind::NotFound {
                what: "program",
                id: String::new(),
            },
            ProgramError::TooManyTiers | ProgramError::RankTaken { .. } | ProgramError::Full => {
                Kind::Rule
            }
        }
    }
}

/// Tiers of one definition: at most [`MAX_TIERS`], codes and ranks unique.
pub fn check_tiers(tiers: &[Tier]) -> Result<(), ProgramError> {
    if tiers.len() > MAX_TIERS {
        return Err(ProgramError::TooManyTiers);
    }
    let mut ranks = BTreeSet::new();
    for t in tiers {
        if !ranks.insert(t.rank) {
            return Err(ProgramError::RankTaken {
                rank: t.rank,
                code: t.code.clone(),
            });
        }
    }
    Ok(())
}

impl Aggregate for Program {
    type State = Program;
    type Command = ProgramCommand;
    type Event = ProgramEvent;
    type Error = ProgramError;

    fn decide(
        state: &Program,
        command: &ProgramCommand,
    ) -> Result<Vec<ProgramEvent>, ProgramError> {
        if state.events >= MAX_EVENTS {
            return Err(ProgramError::Full);
        }
        match (command, &state.definition) {
            (ProgramCommand::Create(def), None) => {
                check_tiers(&def.tiers)?;
                let mut events = vec![ProgramEvent::ProgramCreated(def.clone())];
                if !def.tiers.is_empty() {
                    events.push(ProgramEvent::ProgramTiersChanged(TiersChanged {
                        program_id: def.program_id,
                        tiers: def.tiers.clone(),
                        occurred_at: def.created_at,
                    }));
                }
                Ok(events)
            }
            (ProgramCommand::Create(def), Some(_)) => {
                Err(ProgramError::AlreadyExists(def.program_id))
            }
            (_, None) => Err(ProgramError::NotFound),
            (ProgramCommand::ChangeSettings { settings, at }, Some(def)) => {
                if def.settings == *settings {
                    return Ok(vec![]);
                }
                Ok(vec![ProgramEvent::ProgramSettingsChanged {
                    settings: settings.clone(),
                    occurred_at: *at,
                }])
            }
            (ProgramCommand::DefineTier { tier, at }, Some(def)) => {
                if def.tiers.iter().any(|t| t == tier) {
                    return Ok(vec![]);
                }
                let mut tiers: Vec<Tier> = def
                    .tiers
                    .iter()
                    .filter(|t| t.code != tier.code)
                    .cloned()
                    .collect();
                tiers.push(tier.clone());
                check_tiers(&tiers)?;
                // In definition order, the redefined tier in its old place.
                let tiers = def
                    .tiers
                    .iter()
                    .map(|t| if t.code == tier.code { tier } else { t })
                    .chain(
                        def.tiers
                            .iter()
                            .all(|t| t.code != tier.code)
                            .then_some(tier),
                    )
                    .cloned()
                    .collect();
                Ok(vec![ProgramEvent::ProgramTiersChanged(TiersChanged {
                    program_id: def.program_id,
                    tiers,
                    occurred_at: *at,
                })])
            }
        }
    }

    fn evolve(mut state: Program, event: &ProgramEvent) -> Program {
        state.events += 1;
        match event {
            ProgramEvent::ProgramCreated(def) => state.definition = Some(def.clone()),
            ProgramEvent::ProgramSettingsChanged { settings, .. } => {
                if let Some(def) = state.definition.as_mut() {
                    def.settings = settings.clone();
                }
            }
            ProgramEvent::TierDefined { tier, .. } => {
                if let Some(def) = state.definition.as_mut() {
                    match def.tiers.iter_mut().find(|t| t.code == tier.code) {
                        Some(existing) => *existing = tier.clone(),
                        None => def.tiers.push(tier.clone()),
                    }
                }
            }
            ProgramEvent::ProgramTiersChanged(changed) => {
                if let Some(def) = state.definition.as_mut() {
                    def.tiers.clone_from(&changed.tiers);
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

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    fn tier(code: &str, rank: u32, mdf: bool) -> Tier {
        Tier {
            code: code.into(),
            name: code.to_uppercase(),
            rank,
            access: Access {
                plan_ids: vec![],
                mdf,
                deal_registration: rank > 1,
            },
        }
    }

    fn definition(tiers: Vec<Tier>) -> Definition {
        Definition {
            program_id: Uuid::from_u128(2),
            name: "Casino EU".into(),
            vertical: Some("igaming".into()),
            jurisdictions: vec!["MT".into()],
            settings: Settings::default(),
            tiers,
            created_at: at(),
        }
    }

    fn given(events: &[ProgramEvent]) -> Program {
        events.iter().fold(Program::default(), Program::evolve)
    }

    #[test]
    fn a_program_is_created_once() {
        let created =
            Program::decide(&given(&[]), &ProgramCommand::Create(definition(vec![]))).unwrap();
        let state = given(&created);
        assert!(state.is_regulated());
        assert_eq!(
            Program::decide(&state, &ProgramCommand::Create(definition(vec![]))).unwrap_err(),
            ProgramError::AlreadyExists(Uuid::from_u128(2))
        );
    }

    #[test]
    fn given_tiers_then_the_partner_tier_decides_access_and_the_lowest_is_the_default() {
        let state = given(&[ProgramEvent::ProgramCreated(definition(vec![
            tier("gold", 3, true),
            tier("bronze", 1, false),
            tier("silver", 2, false),
        ]))]);
        assert_eq!(state.lowest_tier().unwrap().code, "bronze");
        assert!(state.access(Some("gold")).mdf);
        assert!(!state.access(Some("silver")).mdf);
        assert!(state.access(Some("silver")).deal_registration);
        assert!(!state.access(None).deal_registration);
        let flat = given(&[ProgramEvent::ProgramCreated(definition(vec![]))]);
        assert_eq!(flat.access(None), Access::everything());
    }

    #[test]
    fn given_a_program_when_a_tier_is_redefined_then_it_replaces_the_old_and_ranks_stay_unique() {
        let state = given(&[ProgramEvent::ProgramCreated(definition(vec![tier(
            "bronze", 1, false,
        )]))]);
        let e = Program::decide(
            &state,
            &ProgramCommand::DefineTier {
                tier: tier("bronze", 1, true),
                at: at(),
            },
        )
        .unwrap();
        let state = Program::evolve(state, &e[0]);
        assert!(state.tier("bronze").unwrap().access.mdf);
        assert_eq!(state.definition.as_ref().unwrap().tiers.len(), 1);
        assert_eq!(
            Program::decide(
                &state,
                &ProgramCommand::DefineTier {
                    tier: tier("gold", 1, true),
                    at: at()
                }
            )
            .unwrap_err(),
            ProgramError::RankTaken {
                rank: 1,
                code: "gold".into()
            }
        );
        assert!(Program::decide(
            &state,
            &ProgramCommand::DefineTier {
                tier: tier("bronze", 1, true),
                at: at()
            }
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn every_tier_change_publishes_all_the_programs_tiers_with_the_redefined_one_in_its_place() {
        let created = Program::decide(
            &given(&[]),
            &ProgramCommand::Create(definition(vec![
                tier("bronze", 1, false),
                tier("gold", 3, true),
            ])),
        )
        .unwrap();
        let [ProgramEvent::ProgramCreated(_), ProgramEvent::ProgramTiersChanged(at_creation)] =
            created.as_slice()
        else {
            panic!("creation with tiers publishes them: {created:?}");
        };
        assert_eq!(at_creation.tiers.len(), 2);
        let state = given(&created);
        let mut bronze = tier("bronze", 1, true);
        bronze.access.plan_ids = vec![Uuid::from_u128(7)];
        let e = Program::decide(
            &state,
            &ProgramCommand::DefineTier {
                tier: bronze.clone(),
                at: at(),
            },
        )
        .unwrap();
        let [ProgramEvent::ProgramTiersChanged(changed)] = e.as_slice() else {
            panic!("one change: {e:?}");
        };
        assert_eq!(changed.program_id, Uuid::from_u128(2));
        assert_eq!(changed.tiers, vec![bronze.clone(), tier("gold", 3, true)]);
        let state = Program::evolve(state, &e[0]);
        assert_eq!(state.tier("bronze"), Some(&bronze));
        let silver = tier("silver", 2, false);
        let e = Program::decide(
            &state,
            &ProgramCommand::DefineTier {
                tier: silver.clone(),
                at: at(),
            },
        )
        .unwrap();
        let [ProgramEvent::ProgramTiersChanged(changed)] = e.as_slice() else {
            panic!("one change: {e:?}");
        };
        assert_eq!(changed.tiers, vec![bronze, tier("gold", 3, true), silver]);
        let flat = Program::decide(&given(&[]), &ProgramCommand::Create(definition(vec![])));
        assert_eq!(flat.unwrap().len(), 1, "no tiers, nothing to publish");
    }

    #[test]
    fn settings_change_only_when_they_differ() {
        let state = given(&[ProgramEvent::ProgramCreated(definition(vec![]))]);
        assert!(Program::decide(
            &state,
            &ProgramCommand::ChangeSettings {
                settings: Settings::default(),
                at: at()
            }
        )
        .unwrap()
        .is_empty());
        let auto = Settings {
            auto_approve: true,
            ..Settings::default()
        };
        let e = Program::decide(
            &state,
            &ProgramCommand::ChangeSettings {
                settings: auto,
                at: at(),
            },
        )
        .unwrap();
        assert!(
            Program::evolve(state, &e[0])
                .definition
                .unwrap()
                .settings
                .auto_approve
        );
        assert_eq!(
            Program::decide(
                &given(&[]),
                &ProgramCommand::ChangeSettings {
                    settings: Settings::default(),
                    at: at()
                }
            )
            .unwrap_err(),
            ProgramError::NotFound
        );
    }
}
