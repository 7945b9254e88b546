//! A program's attribution settings (stream `attribution-settings-<program>`): the model, the
//! lookback window, the time-decay half-life, whether a locked customer may be re-attributed and
//! whether impressions count. A change applies to conversions decided after it; every decision
//! records the settings version it used. Pure decide/evolve.

use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const DEFAULT_WINDOW_DAYS: u32 = 30;
pub const MAX_WINDOW_DAYS: u32 = 365;
pub const DEFAULT_HALF_LIFE_HOURS: u32 = 168;
pub const MAX_HALF_LIFE_HOURS: u32 = 8760;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    #[default]
    LastClick,
    FirstClick,
    Linear,
    TimeDecay,
    PositionBased,
}

impl Model {
    pub fn as_str(self) -> &'static str {
        match self {
            Model::LastClick => "last_click",
            Model::FirstClick => "first_click",
            Model::Linear => "linear",
            Model::TimeDecay => "time_decay",
            Model::PositionBased => "position_based",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub model: Model,
    pub window_days: u32,
    pub half_life_hours: u32,
    pub allow_reattribution: bool,
    pub count_impressions: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: Model::LastClick,
            window_days: DEFAULT_WINDOW_DAYS,
            half_life_hours: DEFAULT_HALF_LIFE_HOURS,
            allow_reattribution: false,
            count_impressions: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum SettingsEvent {
    AttributionSettingsChanged {
        program_id: Uuid,
        settings: Settings,
    },
}
impl DomainEvent for SettingsEvent {}

/// The settings in force and how many changes led to them (0: the defaults).
#[derive(Debug, Clone, Default)]
pub struct ProgramSettings {
    pub current: Settings,
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetSettings {
    pub program_id: Uuid,
    pub settings: Settings,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("window_days must be 1 to {MAX_WINDOW_DAYS}, got {0}")]
    Window(u32),
    #[error("half_life_hours must be 1 to {MAX_HALF_LIFE_HOURS}, got {0}")]
    HalfLife(u32),
}

impl Aggregate for ProgramSettings {
    type State = ProgramSettings;
    type Command = SetSettings;
    type Event = SettingsEvent;
    type Error = SettingsError;

    fn decide(
        state: &ProgramSettings,
        cmd: &SetSettings,
    ) -> Result<Vec<SettingsEvent>, SettingsError> {
        let s = cmd.settings;
        if !(1..=MAX_WINDOW_DAYS).contains(&s.window_days) {
            return Err(SettingsError::Window(s.window_days));
        }
        if !(1..=MAX_HALF_LIFE_HOURS).contains(&s.half_life_hours) {
            return Err(SettingsError::HalfLife(s.half_life_hours));
        }
        if state.version > 0 && state.current == s {
            return Ok(vec![]);
        }
        Ok(vec![SettingsEvent::AttributionSettingsChanged {
            program_id: cmd.program_id,
            settings: s,
        }])
    }

    fn evolve(state: ProgramSettings, event: &SettingsEvent) -> ProgramSettings {
        match event {
            SettingsEvent::AttributionSettingsChanged { settings, .. } => ProgramSettings {
                current: *settings,
                version: state.version + 1,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_of_zero_days_is_refused_and_the_same_settings_twice_change_nothing() {
        let program_id = Uuid::from_u128(1);
        let bad = Settings {
            window_days: 0,
            ..Settings::default()
        };
        assert_eq!(
            ProgramSettings::decide(
                &ProgramSettings::default(),
                &SetSettings {
                    program_id,
                    settings: bad
                }
            ),
            Err(SettingsError::Window(0))
        );
        let cmd = SetSettings {
            program_id,
            settings: Settings {
                model: Model::Linear,
                ..Settings::default()
            },
        };
        let events = ProgramSettings::decide(&ProgramSettings::default(), &cmd).unwrap();
        let state = events
            .iter()
            .fold(ProgramSettings::default(), ProgramSettings::evolve);
        assert_eq!(state.version, 1);
        assert_eq!(ProgramSettings::decide(&state, &cmd).unwrap(), vec![]);
    }
}
