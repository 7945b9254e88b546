//! A payout run (one stream `payout-<run id>`): which partners a run considered as of its date,
//! what it paid each of them per currency, why it skipped the others, and how each payment
//! ended (settled or failed, once). The money itself moves in the partners' books
//! (`BookCommand::PayOut` and friends); this stream is the run's record, so an operator or an
//! auditor reads one stream to see a run whole. Pure decide/evolve: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use pl_money::{Currency, Money};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::book::PayoutStatus;

/// Partners one run considers: a run is one request, and its work is bounded.
pub const MAX_PARTNERS_PER_RUN: usize = 10_000;
/// Partners whose items one `PayoutItemsRecorded` event holds, keeping each event well under
/// the log's per-event size limit. Chunks are cut by partner, not by item, so a run retried
/// after a crash cuts the same chunks.
pub const PARTNERS_PER_CHUNK: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipReason {
    /// Stable machine-readable code (under_minimum, nothing_payable, payout_hold, ...).
    pub code: String,
    pub detail: String,
}

impl SkipReason {
    pub fn new(code: &str, detail: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            detail: detail.into(),
        }
    }
}

/// One partner and currency of a run: paid (`amount`) or skipped (`reasons`). `currency` is
/// absent when the partner had nothing in any currency and no plan to name one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunItem {
    pub partner_id: Uuid,
    pub currency: Option<Currency>,
    pub amount: Option<Money>,
    pub reasons: Vec<SkipReason>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    pub run_id: Uuid,
    pub program_id: Uuid,
    pub as_of: DateTime<Utc>,
    pub partners: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum RunEvent {
    PayoutRunOpened(Opened),
    PayoutItemsRecorded {
        chunk: u32,
        items: Vec<RunItem>,
    },
    PayoutRunClosed {
        items: u32,
    },
    PayoutItemSettled {
        partner_id: Uuid,
        currency: Currency,
        at: DateTime<Utc>,
    },
    PayoutItemFailed {
        partner_id: Uuid,
        currency: Currency,
        reason: String,
        at: DateTime<Utc>,
    },
}
impl DomainEvent for RunEvent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunCommand {
    Open(Opened),
    Record {
        chunk: u32,
        items: Vec<RunItem>,
    },
    Close,
    /// Records how a paid item ended, after the partner's book posted it.
    Mark {
        partner_id: Uuid,
        currency: Currency,
        status: PayoutStatus,
        reason: String,
        at: DateTime<Utc>,
    },
}

/// How a paid item ended, as recorded in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub status: PayoutStatus,
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default)]
pub struct PayoutRun {
    pub opened: Option<Opened>,
    pub chunks: BTreeSet<u32>,
    pub items: Vec<RunItem>,
    pub closed: bool,
    pub endings: BTreeMap<(Uuid, Currency), Ending>,
}

impl PayoutRun {
    /// The paid item of a partner in a currency.
    pub fn paid(&self, partner_id: Uuid, currency: Currency) -> Option<&RunItem> {
        self.items.iter().find(|i| {
            i.partner_id == partner_id && i.currency == Some(currency) && i.amount.is_some()
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("the payout run does not exist")]
    NotOpened,
    #[error("payout run {0} was opened with other parameters")]
    OpenedDifferently(Uuid),
    #[error("a chunk holds at most {PARTNERS_PER_CHUNK} partners' items")]
    ChunkTooLarge,
    #[error("the run is closed; its items are final")]
    Closed,
    #[error("the run paid partner {partner_id} nothing in {currency}")]
    NotPaid {
        partner_id: Uuid,
        currency: Currency,
    },
    #[error("the payout to {partner_id} in {currency} is already {}; it settles or fails once", status.as_str())]
    AlreadyEnded {
        partner_id: Uuid,
        currency: Currency,
        status: PayoutStatus,
    },
}

impl Aggregate for PayoutRun {
    type State = PayoutRun;
    type Command = RunCommand;
    type Event = RunEvent;
    type Error = RunError;

    fn decide(run: &PayoutRun, command: &RunCommand) -> Result<Vec<RunEvent>, RunError> {
        match command {
            RunCommand::Open(o) => match &run.opened {
                Some(existing) if existing == o => Ok(vec![]),
                Some(_) => Err(RunError::OpenedDifferently(o.run_id)),
                None => Ok(vec![RunEvent::PayoutRunOpened(o.clone())]),
            },
            RunCommand::Record { chunk, items } => {
                let Some(opened) = &run.opened else {
                    return Err(RunError::NotOpened);
                };
                if run.chunks.contains(chunk) {
                    return Ok(vec![]);
                }
                if run.closed {
                    return Err(RunError::Closed);
                }
                let partners: BTreeSet<_> = items.iter().map(|i| i.partner_id).collect();
                if partners.len() > PARTNERS_PER_CHUNK
                    || u64::from(*chunk) * PARTNERS_PER_CHUNK as u64 >= u64::from(opened.partners)
                {
                    return Err(RunError::ChunkTooLarge);
                }
                Ok(vec![RunEvent::PayoutItemsRecorded {
                    chunk: *chunk,
                    items: items.clone(),
                }])
            }
            RunCommand::Close => {
                if run.opened.is_none() {
                    return Err(RunError::NotOpened);
                }
                if run.closed {
                    return Ok(vec![]);
                }
                Ok(vec![RunEvent::PayoutRunClosed {
                    items: u32::try_from(run.items.len()).unwrap_or(u32::MAX),
                }])
            }
            RunCommand::Mark {
                partner_id,
                currency,
                status,
                reason,
                at,
            } => {
                if run.paid(*partner_id, *currency).is_none() {
                    return Err(RunError::NotPaid {
                        partner_id: *partner_id,
                        currency: *currency,
                    });
                }
                if let Some(ending) = run.endings.get(&(*partner_id, *currency)) {
                    if ending.status == *status {
                        return Ok(vec![]);
                    }
                    return Err(RunError::AlreadyEnded {
                        partner_id: *partner_id,
                        currency: *currency,
                        status: ending.status,
                    });
                }
                Ok(vec![match status {
                    PayoutStatus::Failed => RunEvent::PayoutItemFailed {
                        partner_id: *partner_id,
                        currency: *currency,
                        reason: reason.clone(),
                        at: *at,
                    },
                    // A mark is only ever an ending; `Sent` is not one and is read as settled
                    // nowhere: refuse it like an unknown item.
                    PayoutStatus::Sent => {
                        return Err(RunError::NotPaid {
                            partner_id: *partner_id,
                            currency: *currency,
                        })
                    }
                    PayoutStatus::Settled => RunEvent::PayoutItemSettled {
                        partner_id: *partner_id,
                        currency: *currency,
                        at: *at,
                    },
                }])
            }
        }
    }

    fn evolve(mut run: PayoutRun, event: &RunEvent) -> PayoutRun {
        match event {
            RunEvent::PayoutRunOpened(o) => run.opened = Some(o.clone()),
            RunEvent::PayoutItemsRecorded { chunk, items } => {
                run.chunks.insert(*chunk);
                run.items.extend(items.iter().cloned());
            }
            RunEvent::PayoutRunClosed { .. } => run.closed = true,
            RunEvent::PayoutItemSettled {
                partner_id,
                currency,
                at,
            } => {
                run.endings.insert(
                    (*partner_id, *currency),
                    Ending {
                        status: PayoutStatus::Settled,
                        reason: String::new(),
                        at: *at,
                    },
                );
            }
            RunEvent::PayoutItemFailed {
                partner_id,
                currency,
                reason,
                at,
            } => {
                run.endings.insert(
                    (*partner_id, *currency),
                    Ending {
                        status: PayoutStatus::Failed,
                        reason: reason.clone(),
                        at: *at,
                    },
                );
            }
        }
        run
    }
}

pub fn stream(run_id: Uuid) -> String {
    format!("payout-{run_id}")
}
