//! Running payouts against the log: for each partner of a run, read its book, its plan at the
//! run's date and its payout eligibility, then pay in its book (whose optimistic concurrency
//! guards the payable) and record the outcome in the run's stream. Every id derives from the
//! run id (itself derived from the request's idempotency key), so a run retried after a crash
//! pays nobody twice: a book that already holds the run's payout reports it instead.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use pl_eventlog::EventStore;
use pl_money::{Currency, Money};
use pl_runtime::aggregate::{execute, load, ExecuteError};
use pl_runtime::{ApiError, CommandMeta};
use uuid::Uuid;

use crate::book::{self, Book, BookCommand, BookError, PayoutStatus};
use crate::eligibility::{self, Eligibility};
use crate::payout::{
    self, Opened, PayoutRun, RunCommand, RunError, RunItem, SkipReason, PARTNERS_PER_CHUNK,
};
use crate::setup::{self, Assignments, Plan};

/// A run's parameters, validated.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub run_id: Uuid,
    pub program_id: Uuid,
    pub as_of: DateTime<Utc>,
    pub partner_ids: Vec<Uuid>,
}

fn with_seed(meta: &CommandMeta, seed: Uuid, purpose: &str) -> CommandMeta {
    CommandMeta {
        id_seed: Uuid::new_v5(&seed, purpose.as_bytes()),
        ..meta.clone()
    }
}

pub(crate) fn api<E: std::fmt::Display>(e: ExecuteError<E>) -> ApiError {
    match e {
        ExecuteError::Domain(e) => ApiError::rule(e.to_string()),
        ExecuteError::Conflict { stream, .. } => ApiError::Conflict { stream },
        ExecuteError::Decode(detail) => ApiError::internal(detail),
        ExecuteError::Store(e) => e.into(),
    }
}

fn book_api(e: ExecuteError<BookError>) -> ApiError {
    match e {
        ExecuteError::Domain(e @ (BookError::Broken(_) | BookError::Ledger(_))) => {
            ApiError::internal(e)
        }
        ExecuteError::Domain(BookError::UnknownPayout { run_id, currency }) => ApiError::NotFound {
            what: "payout",
            id: format!("{run_id}/{}", currency.code()),
        },
        other => api(other),
    }
}

/// Creates the run: opens its stream, pays or skips every partner, records the items in chunks
/// and closes it. Returns the run as recorded.
pub async fn create(
    store: &dyn EventStore,
    meta: &CommandMeta,
    req: &RunRequest,
) -> Result<PayoutRun, ApiError> {
    let stream = payout::stream(req.run_id);
    let open = RunCommand::Open(Opened {
        run_id: req.run_id,
        program_id: req.program_id,
        as_of: req.as_of,
        partners: u32::try_from(req.partner_ids.len())
            .map_err(|_| ApiError::internal("partner count over u32"))?,
    });
    execute::<PayoutRun>(store, &stream, &open, &with_seed(meta, req.run_id, "open"))
        .await
        .map_err(api)?;
    for (chunk, partners) in req.partner_ids.chunks(PARTNERS_PER_CHUNK).enumerate() {
        let mut items = Vec::new();
        for partner in partners {
            items.extend(pay_partner(store, meta, req, *partner).await?);
        }
        let chunk = u32::try_from(chunk).map_err(|_| ApiError::internal("chunk index over u32"))?;
        let record = RunCommand::Record { chunk, items };
        execute::<PayoutRun>(
            store,
            &stream,
            &record,
            &with_seed(meta, req.run_id, &format!("chunk:{chunk}")),
        )
        .await
        .map_err(api)?;
    }
    let closed = execute::<PayoutRun>(
        store,
        &stream,
        &RunCommand::Close,
        &with_seed(meta, req.run_id, "close"),
    )
    .await
    .map_err(api)?;
    Ok(closed.state)
}

/// The minimum payout of the plan assigned to the partner at `as_of`, from the version in
/// force then: the threshold is judged on the run's date only.
async fn minimum_at(
    store: &dyn EventStore,
    partner_id: Uuid,
    as_of: DateTime<Utc>,
) -> Result<Option<Money>, ApiError> {
    let assignments = load::<Assignments>(store, &setup::assignment_stream(partner_id))
        .await
        .map_err(api)?
        .state;
    let Some(assignment) = assignments.at(as_of) else {
        return Ok(None);
    };
    let versions = load::<Plan>(store, &setup::plan_stream(assignment.plan_id))
        .await
        .map_err(api)?
        .state
        .0;
    Ok(versions
        .iter()
        .filter(|v| v.effective_from <= as_of)
        .max_by_key(|v| v.effective_from)
        .map(|v| v.minimum_payout))
}

/// The items of one partner: one per currency it holds a non-zero payable in (or was paid in
/// by this run), plus its plan's payout currency; one without currency when there is neither.
async fn pay_partner(
    store: &dyn EventStore,
    meta: &CommandMeta,
    req: &RunRequest,
    partner_id: Uuid,
) -> Result<Vec<RunItem>, ApiError> {
    let book = load::<Book>(store, &book::stream(partner_id))
        .await
        .map_err(book_api)?
        .state;
    let blockers: Vec<SkipReason> = load::<Eligibility>(store, &eligibility::stream(partner_id))
        .await
        .map_err(api)?
        .state
        .blockers(req.as_of)
        .iter()
        .map(|b| SkipReason::new(b.code(), b.detail()))
        .collect();
    let minimum = minimum_at(store, partner_id, req.as_of).await?;
    let mut currencies: BTreeSet<Currency> = book
        .payable
        .iter()
        .filter(|(_, m)| !m.is_zero())
        .map(|(c, _)| *c)
        .collect();
    currencies.extend(
        book.payouts
            .keys()
            .filter(|(run, _)| *run == req.run_id)
            .map(|(_, c)| *c),
    );
    currencies.extend(minimum.map(|m| m.currency()));
    if currencies.is_empty() {
        let mut reasons = blockers;
        reasons.push(SkipReason::new(
            "no_plan_assigned",
            format!("no plan assigned at {}", req.as_of),
        ));
        return Ok(vec![RunItem {
            partner_id,
            currency: None,
            amount: None,
            reasons,
        }]);
    }
    let mut items = Vec::with_capacity(currencies.len());
    for currency in currencies {
        let skip = |reasons| RunItem {
            partner_id,
            currency: Some(currency),
            amount: None,
            reasons,
        };
        // Already paid by this run (a retry after a crash): report it, never pay again.
        if let Some(p) = book.payouts.get(&(req.run_id, currency)) {
            items.push(RunItem {
                partner_id,
                currency: Some(currency),
                amount: Some(p.amount),
                reasons: vec![],
            });
            continue;
        }
        let payable = book.payable_in(currency);
        let mut reasons = blockers.clone();
        match minimum {
            None => reasons.push(SkipReason::new(
                "no_plan_assigned",
                format!("no plan assigned at {}", req.as_of),
            )),
            // Another currency has no threshold of its own; comparing it to the plan's would
            // need a rate, so it is left payable for a run after it was converted.
            Some(m) if m.currency() != currency => reasons.push(SkipReason::new(
                "not_payout_currency",
                format!(
                    "payable {payable} is not in the plan's payout currency {}",
                    m.currency()
                ),
            )),
            Some(_) if !payable.is_positive() => reasons.push(SkipReason::new(
                "nothing_payable",
                format!("payable is {payable}"),
            )),
            Some(m) if payable.amount() < m.amount() => reasons.push(SkipReason::new(
                "under_minimum",
                format!("payable {payable} is under the minimum payout {m}"),
            )),
            Some(_) => {}
        }
        let Some(minimum) = minimum.filter(|_| reasons.is_empty()) else {
            items.push(skip(reasons));
            continue;
        };
        let command = BookCommand::PayOut {
            run_id: req.run_id,
            program_id: req.program_id,
            partner_id,
            minimum,
            as_of: req.as_of,
            id_seed: Uuid::new_v5(&req.run_id, partner_id.as_bytes()),
        };
        let book_meta = with_seed(
            meta,
            req.run_id,
            &format!("pay:{partner_id}:{}", currency.code()),
        );
        match execute::<Book>(store, &book::stream(partner_id), &command, &book_meta).await {
            Ok(done) => match done.state.payouts.get(&(req.run_id, currency)) {
                Some(p) => items.push(RunItem {
                    partner_id,
                    currency: Some(currency),
                    amount: Some(p.amount),
                    reasons: vec![],
                }),
                None => return Err(ApiError::internal("payout posted but not in the book")),
            },
            // The book changed between the read above and the payout (a clawback, another
            // run): the decision on the fresh state stands, as a skip.
            Err(ExecuteError::Domain(e @ BookError::NothingPayable { .. })) => {
                items.push(skip(vec![SkipReason::new(
                    "nothing_payable",
                    e.to_string(),
                )]));
            }
            Err(ExecuteError::Domain(e @ BookError::UnderMinimum { .. })) => {
                items.push(skip(vec![SkipReason::new("under_minimum", e.to_string())]));
            }
            Err(e) => return Err(book_api(e)),
        }
    }
    Ok(items)
}

/// Settles or fails one paid item: posts it in the partner's book (which allows it once), then
/// records it in the run. A book that already ended the payout the same way (a crash between
/// the two writes) only brings the run up to date.
pub async fn end_item(
    store: &dyn EventStore,
    meta: &CommandMeta,
    run_id: Uuid,
    partner_id: Uuid,
    currency: Currency,
    failure: Option<String>,
) -> Result<(PayoutRun, RunItem), ApiError> {
    let stream = payout::stream(run_id);
    let run = load::<PayoutRun>(store, &stream).await.map_err(api)?.state;
    if run.opened.is_none() {
        return Err(ApiError::NotFound {
            what: "payout run",
            id: run_id.to_string(),
        });
    }
    let Some(item) = run.paid(partner_id, currency).cloned() else {
        return Err(ApiError::NotFound {
            what: "paid payout item",
            id: format!("{run_id}/{partner_id}/{}", currency.code()),
        });
    };
    let seed = meta.id_seed;
    let at = meta.occurred_at;
    let command = match &failure {
        Some(reason) => BookCommand::FailPayout {
            run_id,
            partner_id,
            currency,
            reason: reason.clone(),
            at,
            id_seed: seed,
        },
        None => BookCommand::SettlePayout {
            run_id,
            partner_id,
            currency,
            at,
            id_seed: seed,
        },
    };
    let wanted = if failure.is_some() {
        PayoutStatus::Failed
    } else {
        PayoutStatus::Settled
    };
    let posted = execute::<Book>(
        store,
        &book::stream(partner_id),
        &command,
        &with_seed(meta, seed, "book"),
    )
    .await;
    let (status, reason, refusal) = match posted {
        Ok(_) => (wanted, failure.clone().unwrap_or_default(), None),
        Err(ExecuteError::Domain(BookError::PayoutClosed { status, .. })) => {
            // Ended before: bring the run in line with the book, then refuse.
            let book = load::<Book>(store, &book::stream(partner_id))
                .await
                .map_err(book_api)?
                .state;
            let reason = book
                .payouts
                .get(&(run_id, currency))
                .and_then(|p| p.failure.clone())
                .unwrap_or_default();
            let refusal = ApiError::rule(format!(
                "the payout of run {run_id} to {partner_id} in {} is already {}; it settles or fails once",
                currency.code(),
                status.as_str()
            ));
            (status, reason, Some(refusal))
        }
        Err(e) => return Err(book_api(e)),
    };
    let mark = RunCommand::Mark {
        partner_id,
        currency,
        status,
        reason,
        at,
    };
    let done = execute::<PayoutRun>(store, &stream, &mark, &with_seed(meta, seed, "run"))
        .await
        .map_err(|e| match e {
            ExecuteError::Domain(e @ RunError::AlreadyEnded { .. }) => {
                ApiError::rule(e.to_string())
            }
            other => api(other),
        })?;
    if let Some(refusal) = refusal {
        return Err(refusal);
    }
    Ok((done.state, item))
}
