//! Accruals waiting for an FX rate. A conversion whose plan pays in another currency converts at
//! the rate recorded for its business date; until that rate exists the conversion is parked
//! here, visibly (`ListAccrualsAwaitingFx`), and recording the rate releases it — never a
//! neighbour's rate, never a guess. Pure decider: no I/O, no clock.
//!
//! One stream (`waiting-fx`) for all currency pairs: parking is the exception, and one stream
//! lets the listing answer for every pair at once. It holds at most [`MAX_WAITING`] accruals;
//! past that, parking is refused and the message is retried by the bus instead.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use pl_bus::IntegrationEvent;
use pl_money::Currency;
use pl_runtime::aggregate::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const STREAM: &str = "waiting-fx";
/// Accruals parked at once; a backlog beyond this is a missing rate feed, not a workload.
pub const MAX_WAITING: usize = 10_000;
/// Accruals released by one recorded rate (the rest wait for the next release).
pub const MAX_RELEASE: usize = 1_000;

/// One conversion waiting for the rate `from` → `to` on `date`, with the event to replay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Waiting {
    pub conversion_id: Uuid,
    pub program_id: Uuid,
    pub partner_id: Uuid,
    pub from: Currency,
    pub to: Currency,
    pub date: NaiveDate,
    pub occurred_at: DateTime<Utc>,
    /// The consumed `ConversionAttributed`, replayed as it arrived once the rate exists (its
    /// derived event ids make the replay append only what is missing).
    pub event: IntegrationEvent,
}

/// A conversion waits once per currency pair (two credited partners may be paid in two
/// currencies).
pub type WaitKey = (Uuid, Currency, Currency);

impl Waiting {
    pub fn key(&self) -> WaitKey {
        (self.conversion_id, self.from, self.to)
    }
}

#[derive(Debug, Default, Clone)]
pub struct FxWaiting(pub BTreeMap<WaitKey, Waiting>);

impl FxWaiting {
    /// The waiting accruals one recorded rate releases, oldest conversion first.
    pub fn released_by(&self, from: Currency, to: Currency, date: NaiveDate) -> Vec<&Waiting> {
        let mut out: Vec<&Waiting> = self
            .0
            .values()
            .filter(|w| w.from == from && w.to == to && w.date == date)
            .collect();
        out.sort_by_key(|w| (w.occurred_at, w.conversion_id));
        out.truncate(MAX_RELEASE);
        out
    }

    /// Waiting accruals, optionally of one pair, in (date, conversion) order.
    pub fn list(&self, from: Option<Currency>, to: Option<Currency>) -> Vec<&Waiting> {
        let mut out: Vec<&Waiting> = self
            .0
            .values()
            .filter(|w| from.is_none_or(|f| f == w.from) && to.is_none_or(|t| t == w.to))
            .collect();
        out.sort_by_key(|w| (w.date, w.occurred_at, w.conversion_id));
        out
    }
}

#[derive(Debug)]
pub enum FxWaitCommand {
    Park(Box<Waiting>),
    Release {
        from: Currency,
        to: Currency,
        conversion_ids: Vec<Uuid>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum FxWaitEvent {
    AccrualParked(Box<Waiting>),
    AccrualsReleased {
        from: Currency,
        to: Currency,
        conversion_ids: Vec<Uuid>,
    },
}
impl DomainEvent for FxWaitEvent {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FxWaitError {
    #[error("{MAX_WAITING} accruals already wait for fx rates")]
    Full,
}

impl Aggregate for FxWaiting {
    type State = FxWaiting;
    type Command = FxWaitCommand;
    type Event = FxWaitEvent;
    type Error = FxWaitError;

    fn decide(state: &FxWaiting, cmd: &FxWaitCommand) -> Result<Vec<FxWaitEvent>, FxWaitError> {
        match cmd {
            // Parking twice (a redelivery) changes nothing.
            FxWaitCommand::Park(w) if state.0.contains_key(&w.key()) => Ok(vec![]),
            FxWaitCommand::Park(_) if state.0.len() >= MAX_WAITING => Err(FxWaitError::Full),
            FxWaitCommand::Park(w) => Ok(vec![FxWaitEvent::AccrualParked(w.clone())]),
            FxWaitCommand::Release {
                from,
                to,
                conversion_ids,
            } => {
                let ids: Vec<Uuid> = conversion_ids
                    .iter()
                    .filter(|id| state.0.contains_key(&(**id, *from, *to)))
                    .copied()
                    .collect();
                if ids.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![FxWaitEvent::AccrualsReleased {
                    from: *from,
                    to: *to,
                    conversion_ids: ids,
                }])
            }
        }
    }

    fn evolve(mut state: FxWaiting, event: &FxWaitEvent) -> FxWaiting {
        match event {
            FxWaitEvent::AccrualParked(w) => {
                state.0.insert(w.key(), (**w).clone());
            }
            FxWaitEvent::AccrualsReleased {
                from,
                to,
                conversion_ids,
            } => {
                for id in conversion_ids {
                    state.0.remove(&(*id, *from, *to));
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
    use chrono::TimeZone;

    fn waiting(n: u128, date: u32) -> Waiting {
        let occurred_at = Utc.with_ymd_and_hms(2026, 3, date, 12, 0, 0).unwrap();
        Waiting {
            conversion_id: Uuid::from_u128(n),
            program_id: Uuid::from_u128(1),
            partner_id: Uuid::from_u128(2),
            from: Currency::EUR,
            to: Currency::USD,
            date: occurred_at.date_naive(),
            occurred_at,
            event: serde_json::from_str(&format!(
                r#"{{"id":"{}","type":"ConversionAttributed","schema_version":1,"stream":"s","version":0,"position":0,"occurred_at":"2026-03-01T12:00:00Z","recorded_at":"2026-03-01T12:00:00Z","correlation_id":null,"causation_id":null,"data":{{}}}}"#,
                Uuid::from_u128(n)
            ))
            .unwrap(),
        }
    }

    fn given(events: &[FxWaitEvent]) -> FxWaiting {
        events.iter().fold(FxWaiting::default(), FxWaiting::evolve)
    }

    #[test]
    fn a_parked_accrual_is_parked_once_and_released_only_by_its_own_pair_and_date() {
        let state = given(&[
            FxWaitEvent::AccrualParked(Box::new(waiting(10, 1))),
            FxWaitEvent::AccrualParked(Box::new(waiting(11, 2))),
        ]);
        let again = FxWaiting::decide(&state, &FxWaitCommand::Park(Box::new(waiting(10, 1))));
        assert!(again.unwrap().is_empty());
        let day1 = state.released_by(Currency::EUR, Currency::USD, waiting(10, 1).date);
        assert_eq!(day1.len(), 1);
        assert_eq!(day1[0].conversion_id, Uuid::from_u128(10));
        assert!(state
            .released_by(Currency::GBP, Currency::USD, waiting(10, 1).date)
            .is_empty());
        let released = FxWaiting::decide(
            &state,
            &FxWaitCommand::Release {
                from: Currency::EUR,
                to: Currency::USD,
                conversion_ids: vec![Uuid::from_u128(10), Uuid::from_u128(99)],
            },
        )
        .unwrap();
        let after = released.iter().fold(state, FxWaiting::evolve);
        assert_eq!(after.list(None, None).len(), 1);
        assert_eq!(after.list(None, None)[0].conversion_id, Uuid::from_u128(11));
    }

    #[test]
    fn parking_is_refused_once_the_backlog_is_full() {
        let mut state = FxWaiting::default();
        for n in 0..MAX_WAITING as u128 {
            let w = waiting(n, 1);
            state.0.insert(w.key(), w);
        }
        let refused = FxWaiting::decide(
            &state,
            &FxWaitCommand::Park(Box::new(waiting(MAX_WAITING as u128 + 1, 1))),
        );
        assert_eq!(refused.unwrap_err(), FxWaitError::Full);
    }
}
