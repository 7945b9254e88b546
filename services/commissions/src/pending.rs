//! Refunds, chargebacks and rejections that arrive before their conversion is accrued. They
//! come on other subjects (compliance's rejections on another consumer altogether), so "not
//! yet" is normal whenever commissions lags; retrying them on the bus would dead-letter them
//! after a few seconds and the commission would never be reversed. Instead each waits here,
//! in `pending-reversals-<conversion>`, and the conversion's accrual applies them. Pure
//! decider: no I/O, no clock.

use pl_bus::IntegrationEvent;
use pl_runtime::aggregate::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Reversals waiting for one conversion at most (a conversion is refunded a few times).
pub const MAX_PENDING: usize = 100;

pub fn stream(conversion_id: Uuid) -> String {
    format!("pending-reversals-{conversion_id}")
}

#[derive(Debug, Default, Clone)]
pub struct Pending {
    /// The consumed events, in arrival order, not yet applied.
    pub waiting: Vec<IntegrationEvent>,
}

#[derive(Debug)]
pub enum PendingCommand {
    Park(Box<IntegrationEvent>),
    /// These events were applied by the conversion's accrual.
    Applied {
        event_ids: Vec<Uuid>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum PendingEvent {
    ReversalParked(Box<IntegrationEvent>),
    ReversalsApplied { event_ids: Vec<Uuid> },
}
impl DomainEvent for PendingEvent {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PendingError {
    #[error("{MAX_PENDING} reversals already wait for this conversion")]
    Full,
}

impl Aggregate for Pending {
    type State = Pending;
    type Command = PendingCommand;
    type Event = PendingEvent;
    type Error = PendingError;

    fn decide(state: &Pending, cmd: &PendingCommand) -> Result<Vec<PendingEvent>, PendingError> {
        match cmd {
            PendingCommand::Park(e) if state.waiting.iter().any(|w| w.id == e.id) => Ok(vec![]),
            PendingCommand::Park(_) if state.waiting.len() >= MAX_PENDING => {
                Err(PendingError::Full)
            }
            PendingCommand::Park(e) => Ok(vec![PendingEvent::ReversalParked(e.clone())]),
            PendingCommand::Applied { event_ids } => {
                let ids: Vec<Uuid> = event_ids
                    .iter()
                    .filter(|id| state.waiting.iter().any(|w| w.id == **id))
                    .copied()
                    .collect();
                if ids.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![PendingEvent::ReversalsApplied { event_ids: ids }])
            }
        }
    }

    fn evolve(mut state: Pending, event: &PendingEvent) -> Pending {
        match event {
            PendingEvent::ReversalParked(e) => state.waiting.push((**e).clone()),
            PendingEvent::ReversalsApplied { event_ids } => {
                state.waiting.retain(|w| !event_ids.contains(&w.id));
            }
        }
        state
    }
}
