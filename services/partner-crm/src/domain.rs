//! The partner aggregate (one stream `partner-<id>`): pure decide/evolve, no I/O, no clock.

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartnerStatus {
    Applied,
}

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum PartnerEvent {
    PartnerApplied(Application),
}

impl DomainEvent for PartnerEvent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartnerCommand {
    Apply(Application),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Partner {
    #[default]
    Unknown,
    Known {
        application: Application,
        status: PartnerStatus,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartnerError {
    #[error("partner {0} already exists")]
    AlreadyExists(Uuid),
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
        match (state, command) {
            (Partner::Unknown, PartnerCommand::Apply(app)) => {
                Ok(vec![PartnerEvent::PartnerApplied(app.clone())])
            }
            (Partner::Known { application, .. }, PartnerCommand::Apply(_)) => {
                Err(PartnerError::AlreadyExists(application.partner_id))
            }
        }
    }

    fn evolve(_state: Partner, event: &PartnerEvent) -> Partner {
        match event {
            PartnerEvent::PartnerApplied(app) => Partner::Known {
                application: app.clone(),
                status: PartnerStatus::Applied,
            },
        }
    }
}

pub fn stream(partner_id: Uuid) -> String {
    format!("{}{partner_id}", crate::STREAM_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn application() -> Application {
        Application {
            partner_id: Uuid::from_u128(1),
            program_id: Uuid::from_u128(2),
            display_name: "Acme Media".into(),
            partner_type: PartnerType::Affiliate,
            email: "ops@acme.example".into(),
            country: "DE".into(),
            applied_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
        }
    }

    fn given(events: &[PartnerEvent]) -> Partner {
        events.iter().fold(Partner::default(), Partner::evolve)
    }

    #[test]
    fn a_new_partner_can_apply() {
        let state = given(&[]);
        let events = Partner::decide(&state, &PartnerCommand::Apply(application())).unwrap();
        assert_eq!(events, vec![PartnerEvent::PartnerApplied(application())]);
    }

    #[test]
    fn a_partner_cannot_apply_twice() {
        let state = given(&[PartnerEvent::PartnerApplied(application())]);
        let err = Partner::decide(&state, &PartnerCommand::Apply(application())).unwrap_err();
        assert_eq!(err, PartnerError::AlreadyExists(Uuid::from_u128(1)));
    }
}
