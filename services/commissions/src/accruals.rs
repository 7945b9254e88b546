//! Attribution's conversions, refunds and chargebacks turned into book commands: find each
//! credited partner's plan and upline, compute with the engine, post the partner's lines in its
//! own book and each override in the upline's book. Every command's event ids derive from the
//! consumed event, so a redelivered message appends nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use pl_bus::{derived_event_id, HandleError, IntegrationEvent};
use pl_commission_engine::{
    ConversionFacts, ConversionKind as EngineKind, EngineError, LineKind, ResellerPricing,
};
use pl_eventlog::EventStore;
use pl_money::Decimal;
use pl_runtime::aggregate::{execute, load, ExecuteError};
use pl_runtime::{CommandMeta, StateCache};
use uuid::Uuid;

use crate::book::{self, Book, BookCommand, BookError};
use crate::contract::{
    ConversionAttributed, ConversionKind, ConversionRejected, PartnerCredit, Reversal,
    SubscriptionCancelled,
};
use crate::fx_wait::{self, FxWaitCommand, FxWaiting, Waiting};
use crate::network::{self, Network};
use crate::pending::{self, Pending, PendingCommand};
use crate::setup::{
    self, Accrued, Assignments, ConversionIndex, CustomerCredit, CustomerIndex, FxRates, Plan,
    MAX_UPLINE,
};
use crate::visible::Waiters;

/// The states the consumer and the gRPC service keep between commands: partner books, plans,
/// assignments and FX rates, read or written on every accrual. Streams with one command in
/// their life (a conversion's index, a customer's credits) are not worth a slot and go through
/// the uncached executor. `visible` is not a state but shared the same way: the consumer
/// signals through it the gRPC callers waiting for an accrual.
#[derive(Debug, Default)]
pub struct Caches {
    pub books: StateCache<Book>,
    pub plans: StateCache<Plan>,
    pub assignments: StateCache<Assignments>,
    /// Programs' hierarchies and tiers (partner CRM's facts): every accrual reads its program's.
    pub network: StateCache<Network>,
    pub fx: StateCache<FxRates>,
    pub fx_waiting: StateCache<FxWaiting>,
    pub visible: Waiters,
}

/// A write that follows from an accrual (a customer credit, an override, the conversion's
/// index).
type FollowUp<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandleError>> + Send + 'a>>;

fn meta(event: &IntegrationEvent, purpose: &str, trace: &BTreeMap<String, String>) -> CommandMeta {
    CommandMeta {
        id_seed: derived_event_id(event.id, &format!("{}:{purpose}", crate::SERVICE)),
        occurred_at: event.occurred_at,
        correlation_id: event.correlation_id,
        causation_id: Some(event.id),
        trace_context: trace.clone(),
    }
}

/// Maps a command failure to the bus outcome: conflicts and store outages are retried; broken
/// facts are permanent (dead-lettered with the reason).
pub(crate) fn outcome<E: std::fmt::Display>(e: ExecuteError<E>) -> HandleError {
    match e {
        ExecuteError::Conflict { stream, .. } => {
            HandleError::Retry(format!("conflict on {stream}"))
        }
        ExecuteError::Store(e) if e.is_invalid_input() => HandleError::Permanent(e.to_string()),
        ExecuteError::Store(e) => HandleError::Retry(e.to_string()),
        ExecuteError::Decode(e) => HandleError::Permanent(e),
        ExecuteError::Domain(e) => HandleError::Permanent(e.to_string()),
    }
}

fn book_outcome(e: ExecuteError<BookError>) -> HandleError {
    match e {
        // Checked before the book is asked (the accrual parks in `waiting-fx`); a rate the
        // engine still misses is a race with nothing lost by retrying.
        ExecuteError::Domain(BookError::Engine(e @ EngineError::FxRateMissing { .. })) => {
            HandleError::Retry(e.to_string())
        }
        other => outcome(other),
    }
}

fn engine_kind(kind: ConversionKind) -> EngineKind {
    match kind {
        ConversionKind::Lead => EngineKind::Lead,
        ConversionKind::Signup => EngineKind::Signup,
        ConversionKind::Sale | ConversionKind::SubscriptionStarted => EngineKind::Sale,
        ConversionKind::SubscriptionInvoice => EngineKind::SubscriptionInvoice,
        ConversionKind::NetRevenueReport => EngineKind::NetRevenueReport,
    }
}

/// Accrues one attributed conversion for every credited partner.
pub async fn on_conversion(
    store: &dyn EventStore,
    caches: &Caches,
    event: &IntegrationEvent,
    c: &ConversionAttributed,
    trace: &BTreeMap<String, String>,
) -> Result<(), HandleError> {
    // A conversion waits for a missing FX rate as a whole, before any partner's accrual: a
    // partial accrual would leave its follow-ups (overrides, the customer's credit, the
    // conversion's index that refunds look for) unwritten until the release.
    let mut reads = SetupReads::new(store, caches);
    if let Some(waiting) = first_missing_rate(&mut reads, event, c).await? {
        return park(store, caches, waiting, trace).await;
    }
    let mut credited = Vec::with_capacity(c.shares.len());
    let mut follow_ups: Vec<FollowUp<'_>> = Vec::new();
    for share in &c.shares {
        let Some(command) = accrue_command(&mut reads, event, c, share).await? else {
            continue;
        };
        // What the rest of this message needs from the book after the accrual; the book's
        // lock is released before other books are written (an override may go to a partner
        // whose own accrual, in another task, overrides to this one).
        let done = caches
            .books
            .execute(
                store,
                &book::stream(share.partner_id),
                &command,
                &meta(event, &format!("accrue:{}", share.partner_id), trace),
                |b| accrued_view(b, c.conversion_id),
            )
            .await
            .map_err(book_outcome)?;
        credited.push(share.partner_id);
        let Some(view) = done.view else {
            continue;
        };
        let credit_needed = credit_needed(&mut reads, view.0).await?;
        let (credit, overrides) =
            follow_from(event, c, share.partner_id, view, credit_needed, trace);
        if let Some(credit) = credit {
            follow_ups.push(Box::pin(record_customer_credits(store, vec![credit])));
        }
        for (stream, command, override_meta) in overrides {
            follow_ups.push(Box::pin(async move {
                caches
                    .books
                    .execute(store, &stream, &command, &override_meta, |_| ())
                    .await
                    .map(|_| ())
                    .map_err(book_outcome)
            }));
        }
    }
    follow_ups.push(Box::pin(record_index(store, event, c, credited, trace)));
    // The own accruals are in; the writes that follow from them touch distinct streams and go
    // to the log together (one group commit instead of one each). Each is idempotent, so a
    // failure of any retries the message and repeats only what is missing.
    futures::future::try_join_all(follow_ups).await?;
    // The index is what `GetConversionAccrual` reads: from here the accrual is visible. Also
    // reached by an FX release (`release_waiting` replays through here) and by a redelivery
    // (a spare wake-up: the waiter reads the log again and finds the same answer).
    caches.visible.accrued(c.conversion_id);
    apply_pending_reversals(store, caches, c.conversion_id, trace).await
}

/// Records that a conversion was refused, with the reason, and wakes the callers waiting for
/// its accrual: `GetConversionAccrual` then answers with the refusal instead of waiting. Its
/// message is kept as a dead letter by the consumer's runner.
pub async fn on_refused(
    store: &dyn EventStore,
    caches: &Caches,
    event: &IntegrationEvent,
    c: &ConversionAttributed,
    reason: &str,
    trace: &BTreeMap<String, String>,
) -> Result<(), HandleError> {
    let refusal = setup::Refusal {
        conversion_id: c.conversion_id,
        reason: reason
            .chars()
            .take(pl_runtime::dead_letters::MAX_REASON_CHARS)
            .collect(),
    };
    execute::<setup::ConversionRefusal>(
        store,
        &setup::refused_stream(c.conversion_id),
        &refusal,
        &meta(event, "refused", trace),
    )
    .await
    .map_err(|e| match outcome(e) {
        // The refusal must be told: a failure to record it is retried, whatever its cause.
        HandleError::Permanent(reason) | HandleError::Retry(reason) => HandleError::Retry(reason),
    })?;
    caches.visible.accrued(c.conversion_id);
    Ok(())
}

/// A run of attributed conversions (consecutive messages of one ordering key) accrued as
/// [`on_conversion`] would one after another, with the same events under the same ids, but
/// one append per book instead of one per accrual: every book's accruals of the run are
/// decided in run order on the state the earlier ones leave and appended together, then the
/// overrides (per upline book, likewise), the customers' credits and the conversions' indexes
/// go to the log together. Under load this is most of an accrual's cost saved (an append, its
/// sync and its wake-ups cost more than deciding). A book's own accruals and the overrides it
/// receives may land in another order than one at a time; neither reads what the other
/// writes (an override changes no engine state), so the amounts are the same.
///
/// All or nothing for the caller: on an error, some of the run may be written; handling its
/// messages again one by one (what [`crate::consumer::handle_batch`] does) completes it, each
/// write being idempotent.
pub async fn on_conversions(
    store: &dyn EventStore,
    caches: &Caches,
    run: &[(
        IntegrationEvent,
        ConversionAttributed,
        BTreeMap<String, String>,
    )],
) -> Result<(), HandleError> {
    // Conversions missing an FX rate wait as a whole, as one at a time (see `on_conversion`).
    // One read of each plan and assignment for the whole run (see `SetupReads`).
    let mut reads = SetupReads::new(store, caches);
    let mut ready = Vec::with_capacity(run.len());
    for (event, c, trace) in run {
        match first_missing_rate(&mut reads, event, c).await? {
            Some(waiting) => park(store, caches, waiting, trace).await?,
            None => ready.push((event, c, trace)),
        }
    }
    // Own accruals, grouped by book in run order; `keys` holds each one's (conversion,
    // partner) in the same groups and order.
    let mut books = Grouped::default();
    let mut keys = Grouped::default();
    for &(event, c, trace) in &ready {
        for share in &c.shares {
            let Some(command) = accrue_command(&mut reads, event, c, share).await? else {
                continue;
            };
            let own_meta = meta(event, &format!("accrue:{}", share.partner_id), trace);
            let stream = book::stream(share.partner_id);
            keys.push(stream.clone(), (c.conversion_id, share.partner_id));
            books.push(stream, (command, own_meta));
        }
    }
    let accrued = futures::future::try_join_all(books.groups.iter().zip(&keys.groups).map(
        |((stream, commands), (_, keys))| async move {
            let done = caches
                .books
                .execute_many(store, stream, commands, |b, i| accrued_view(b, keys[i].0))
                .await
                .map_err(book_outcome)?;
            Ok::<_, HandleError>(done.views)
        },
    ))
    .await?;
    // Who was credited on each conversion, in share order, and what each accrual implies.
    let mut views: std::collections::HashMap<(Uuid, Uuid), Option<AccruedView>> =
        std::collections::HashMap::new();
    for ((_, keys), group_views) in keys.groups.iter().zip(accrued) {
        for (key, view) in keys.iter().zip(group_views) {
            views.insert(*key, view);
        }
    }
    let mut upline_books = Grouped::default();
    let mut customers = Grouped::default();
    let mut indexes = Vec::with_capacity(ready.len());
    for &(event, c, trace) in &ready {
        let mut credited = Vec::with_capacity(c.shares.len());
        for share in &c.shares {
            let Some(view) = views.get_mut(&(c.conversion_id, share.partner_id)) else {
                continue;
            };
            credited.push(share.partner_id);
            let Some(view) = view.take() else { continue };
            let credit_needed = credit_needed(&mut reads, view.0).await?;
            let (credit, overrides) =
                follow_from(event, c, share.partner_id, view, credit_needed, trace);
            if let Some(credit) = credit {
                customers.push(setup::customer_stream(c.program_id, &c.customer_id), credit);
            }
            for (stream, command, override_meta) in overrides {
                upline_books.push(stream, (command, override_meta));
            }
        }
        indexes.push(record_index(store, event, c, credited, trace));
    }
    let mut follow_ups: Vec<FollowUp<'_>> = Vec::new();
    for (stream, commands) in upline_books.groups {
        follow_ups.push(Box::pin(async move {
            caches
                .books
                .execute_many(store, &stream, &commands, |_, _| ())
                .await
                .map(|_| ())
                .map_err(book_outcome)
        }));
    }
    for (_, credits) in customers.groups {
        follow_ups.push(Box::pin(record_customer_credits(store, credits)));
    }
    follow_ups.extend(indexes.into_iter().map(|f| Box::pin(f) as FollowUp<'_>));
    futures::future::try_join_all(follow_ups).await?;
    for &(_, c, trace) in &ready {
        caches.visible.accrued(c.conversion_id);
        apply_pending_reversals(store, caches, c.conversion_id, trace).await?;
    }
    Ok(())
}

/// Items grouped by stream, streams and items each in first-seen order.
struct Grouped<T> {
    groups: Vec<(String, Vec<T>)>,
    at: std::collections::HashMap<String, usize>,
}

impl<T> Default for Grouped<T> {
    fn default() -> Self {
        Self {
            groups: Vec::new(),
            at: std::collections::HashMap::new(),
        }
    }
}

impl<T> Grouped<T> {
    fn push(&mut self, stream: String, item: T) {
        match self.at.get(&stream) {
            Some(&i) => self.groups[i].1.push(item),
            None => {
                self.at.insert(stream.clone(), self.groups.len());
                self.groups.push((stream, vec![item]));
            }
        }
    }
}

/// What the writes after an accrual need from the book: the plan that paid, the lines (the
/// overrides among them go to the upline), the hold the overrides inherit and the network
/// version the upline came from (as recorded: a redelivery passes on what the first accrual
/// used, whatever CRM reported since).
type AccruedView = (
    Uuid,
    Vec<pl_commission_engine::AccrualLine>,
    u32,
    Option<u64>,
);

fn accrued_view(b: &Book, conversion_id: Uuid) -> Option<AccruedView> {
    b.accruals.get(&conversion_id).map(|(accrual, _)| {
        let hold_days = b
            .entries
            .get(&(conversion_id, book::EntryKey::Own))
            .map_or(0, |e| e.hold_days);
        (
            accrual.plan_id,
            accrual.lines.clone(),
            hold_days,
            b.hierarchy_versions.get(&conversion_id).copied(),
        )
    })
}

/// A credited partner's accrual command: its plan and upline as of the conversion, and the FX
/// rate when the plan pays in another currency. `None` when no plan is assigned to it then
/// (nothing accrues; logged).
async fn accrue_command(
    reads: &mut SetupReads<'_>,
    event: &IntegrationEvent,
    c: &ConversionAttributed,
    share: &crate::contract::PartnerShare,
) -> Result<Option<BookCommand>, HandleError> {
    let revenue = c.gross.or(c.net);
    let Some(assignment) = reads
        .assignments(share.partner_id)
        .await?
        .at(c.occurred_at)
        .cloned()
    else {
        tracing::warn!(partner_id = %share.partner_id, conversion_id = %c.conversion_id, "no plan assigned; nothing accrued");
        return Ok(None);
    };
    let versions = Arc::clone(&reads.plan(assignment.plan_id).await?.0);
    // The upline and the tier in force at the conversion's business date, as partner CRM
    // reported them; the version of the program's network names the facts used.
    let (network, hierarchy_version) = reads.network(c.program_id).await?;
    let standing = network.standing(share.partner_id, c.occurred_at, MAX_UPLINE);
    let payout_currency = versions
        .iter()
        .filter(|v| v.effective_from <= c.occurred_at)
        .max_by_key(|v| v.effective_from)
        .map(|v| v.payout_currency);
    let fx_rate = match (revenue.map(|m| m.currency()), payout_currency) {
        (Some(from), Some(to)) if from != to => {
            let date = c.occurred_at.date_naive();
            let rate = fx_rate(reads.store, reads.caches, from, to, date).await?;
            if rate.is_none() {
                // Checked for every share before the first accrual: a rate that vanished
                // since is a race to retry, never a partial accrual.
                return Err(HandleError::Retry(format!(
                    "fx rate {}→{} of {date} not visible yet",
                    from.code(),
                    to.code()
                )));
            }
            rate
        }
        _ => None,
    };
    let facts = ConversionFacts {
        conversion_id: c.conversion_id,
        source_event_id: event.id,
        kind: engine_kind(c.kind),
        occurred_at: c.occurred_at,
        customer_id: c.customer_id.clone(),
        customer_country: c.customer_country.clone(),
        products: c.products.clone(),
        gross: c.gross,
        net: c.net,
        lots: c.lots,
        reseller: match (c.list_price, c.partner_price) {
            (Some(list_price), Some(partner_price)) => Some(ResellerPricing {
                list_price,
                partner_price,
                quantity: c.quantity.max(1),
            }),
            _ => None,
        },
        partner_id: share.partner_id,
        partner_tier: standing.tier,
        weight: share.weight,
        split: split_of(c, share),
        brand: c.brand.clone(),
        upline: standing.upline,
        fx_rate,
    };
    Ok(Some(BookCommand::Accrue {
        program_id: c.program_id,
        hierarchy_version,
        // The share's own campaign: in a multi-touch conversion each partner came through its
        // own (the conversion-level campaign is the top touchpoint's).
        campaign_id: share.campaign_id,
        facts,
        versions,
    }))
}

/// The conversion's split across its credited partners, in the attribution's order (each
/// partner's first touchpoint, earliest first), when it has more than one: every book then
/// computes the whole conversion's commission and takes its part of it (see
/// [`pl_commission_engine::Split`]), so the parts sum to the whole. Partners without a plan
/// keep their place in the weights: their parts are simply not paid.
fn split_of(
    c: &ConversionAttributed,
    share: &crate::contract::PartnerShare,
) -> Option<pl_commission_engine::Split> {
    if c.shares.len() < 2 {
        return None;
    }
    Some(pl_commission_engine::Split {
        weights: c.shares.iter().map(|s| s.weight).collect(),
        index: c
            .shares
            .iter()
            .position(|s| s.partner_id == share.partner_id)?,
    })
}

/// An override to post: the upline book's stream, the command and its meta.
type OverrideWrite = (String, BookCommand, CommandMeta);

/// What follows from one partner's accrual: its credit on the customer, so a churn finds who
/// earns on it and under which plan (only where `credit_needed`: see [`credit_needed`]), and
/// one override command per upline line, each with its book stream and meta.
fn follow_from(
    event: &IntegrationEvent,
    c: &ConversionAttributed,
    partner_id: Uuid,
    (plan_id, lines, hold_days, hierarchy_version): AccruedView,
    credit_needed: bool,
    trace: &BTreeMap<String, String>,
) -> (Option<(CustomerCredit, CommandMeta)>, Vec<OverrideWrite>) {
    let credit = credit_needed.then(|| {
        let credit = CustomerCredit {
            program_id: c.program_id,
            customer_id: c.customer_id.clone(),
            partner_id,
            plan_id,
        };
        (
            credit,
            meta(event, &format!("customer:{partner_id}"), trace),
        )
    });
    let mut overrides = Vec::new();
    for line in lines {
        let LineKind::Override { level } = line.kind else {
            continue;
        };
        let purpose = format!("override:{partner_id}:{}:{level}", line.partner_id);
        let override_meta = meta(event, &purpose, trace);
        let stream = book::stream(line.partner_id);
        let command = BookCommand::AccrueOverride {
            program_id: c.program_id,
            conversion_id: c.conversion_id,
            from_partner: partner_id,
            occurred_at: c.occurred_at,
            hold_days,
            line,
            source_event_id: event.id,
            hierarchy_version,
        };
        overrides.push((stream, command, override_meta));
    }
    (credit, overrides)
}

/// Whether a partner's accrual under `plan_id` is credited on the customer: when some version
/// of the plan pays a recurring share (`RewardKind::is_recurring_share`: recurring, first-year
/// and net revenue shares), which the recurring-shares listing shows ended at a churn and of
/// which the engine pays a recurring share nothing after it. Under any other plan a churn
/// changes nothing the partner earns or is shown, and the credit (one more stream and append
/// per new customer: a sixth of an accrual's CPU) is left out. A churn also reaches the plans
/// under which the partners of the conversion that locked the customer were paid for it (see
/// [`on_churn`]), so a plan that gains a recurring rule after the churn still pays the
/// customer's later invoices nothing.
async fn credit_needed(reads: &mut SetupReads<'_>, plan_id: Uuid) -> Result<bool, HandleError> {
    Ok(reads
        .plan(plan_id)
        .await?
        .0
        .iter()
        .any(pl_commission_engine::PlanVersion::has_recurring_shares))
}

/// Records partners' credits on one customer, in order (they share the customer's stream).
async fn record_customer_credits(
    store: &dyn EventStore,
    credits: Vec<(CustomerCredit, CommandMeta)>,
) -> Result<(), HandleError> {
    for (credit, credit_meta) in credits {
        execute::<CustomerIndex>(
            store,
            &setup::customer_stream(credit.program_id, &credit.customer_id),
            &credit,
            &credit_meta,
        )
        .await
        .map_err(outcome)?;
    }
    Ok(())
}

/// Records who was credited on a conversion (what refunds and `GetConversionAccrual` read).
async fn record_index(
    store: &dyn EventStore,
    event: &IntegrationEvent,
    c: &ConversionAttributed,
    partners: Vec<Uuid>,
    trace: &BTreeMap<String, String>,
) -> Result<(), HandleError> {
    let index = Accrued {
        conversion_id: c.conversion_id,
        program_id: c.program_id,
        partners,
        revenue: c.gross.or(c.net),
    };
    execute::<ConversionIndex>(
        store,
        &setup::accrued_stream(c.conversion_id),
        &index,
        &meta(event, "index", trace),
    )
    .await
    .map(|_| ())
    .map_err(outcome)
}

/// Parks a refund, chargeback or rejection of a conversion not accrued yet. If the accrual
/// landed in the meantime (it may have looked for pending reversals before this one was
/// parked), the message is retried at once and applies directly.
async fn park_reversal(
    store: &dyn EventStore,
    event: &IntegrationEvent,
    conversion_id: Uuid,
    trace: &BTreeMap<String, String>,
) -> Result<(), HandleError> {
    execute::<Pending>(
        store,
        &pending::stream(conversion_id),
        &PendingCommand::Park(Box::new(event.clone())),
        &meta(event, "pending-reversal", trace),
    )
    .await
    .map_err(|e| match e {
        ExecuteError::Domain(e) => HandleError::Retry(e.to_string()),
        other => outcome(other),
    })?;
    let index = load::<ConversionIndex>(store, &setup::accrued_stream(conversion_id))
        .await
        .map_err(outcome)?
        .state;
    if index.0.is_some() {
        return Err(HandleError::Retry(format!(
            "conversion {conversion_id} was accrued meanwhile"
        )));
    }
    tracing::info!(%conversion_id, event_type = %event.event_type, "reversal waits for its conversion's accrual");
    Ok(())
}

/// Applies the reversals that arrived before this conversion's accrual, then marks them
/// applied. A reversal that can never apply (a refund larger than the sale) is logged and
/// dropped from the wait: it must not block the conversion.
async fn apply_pending_reversals(
    store: &dyn EventStore,
    caches: &Caches,
    conversion_id: Uuid,
    trace: &BTreeMap<String, String>,
) -> Result<(), HandleError> {
    let pending = load::<Pending>(store, &pending::stream(conversion_id))
        .await
        .map_err(outcome)?;
    if pending.state.waiting.is_empty() {
        return Ok(());
    }
    let mut applied = Vec::with_capacity(pending.state.waiting.len());
    for e in &pending.state.waiting {
        let done = match e.event_type.as_str() {
            "ConversionRefunded" | "ChargebackReceived" => {
                match Reversal::parse(&e.event_type, e.data.get()) {
                    Ok(r) => Box::pin(on_reversal(store, caches, e, &r, trace)).await,
                    Err(err) => Err(HandleError::Permanent(err.to_string())),
                }
            }
            "ConversionRejected" => match ConversionRejected::parse(e.data.get()) {
                Ok(r) => Box::pin(on_rejection(store, caches, e, &r, trace)).await,
                Err(err) => Err(HandleError::Permanent(err.to_string())),
            },
            other => Err(HandleError::Permanent(format!("{other} is not a reversal"))),
        };
        match done {
            Ok(()) => applied.push(e.id),
            Err(HandleError::Permanent(reason)) => {
                tracing::warn!(%conversion_id, event_id = %e.id, reason, "a pending reversal can never apply; dropped");
                applied.push(e.id);
            }
            Err(retry) => return Err(retry),
        }
    }
    let release_meta = CommandMeta {
        id_seed: Uuid::new_v5(
            &pl_bus::DERIVED_EVENT_ID_NAMESPACE,
            format!(
                "pending-applied:{conversion_id}:{}",
                pending.version.unwrap_or(0)
            )
            .as_bytes(),
        ),
        occurred_at: pending
            .state
            .waiting
            .last()
            .map_or_else(chrono::DateTime::<chrono::Utc>::default, |e| e.occurred_at),
        correlation_id: None,
        causation_id: None,
        trace_context: trace.clone(),
    };
    execute::<Pending>(
        store,
        &pending::stream(conversion_id),
        &PendingCommand::Applied { event_ids: applied },
        &release_meta,
    )
    .await
    .map_err(outcome)?;
    Ok(())
}

/// The first credited partner whose plan pays in another currency with no rate recorded for
/// the conversion's business date, as the entry to park.
async fn first_missing_rate(
    reads: &mut SetupReads<'_>,
    event: &IntegrationEvent,
    c: &ConversionAttributed,
) -> Result<Option<Waiting>, HandleError> {
    let Some(from) = c.gross.or(c.net).map(|m| m.currency()) else {
        return Ok(None);
    };
    let date = c.occurred_at.date_naive();
    for share in &c.shares {
        let Some(plan_id) = reads
            .assignments(share.partner_id)
            .await?
            .at(c.occurred_at)
            .map(|a| a.plan_id)
        else {
            continue;
        };
        let to = reads
            .plan(plan_id)
            .await?
            .0
            .iter()
            .filter(|v| v.effective_from <= c.occurred_at)
            .max_by_key(|v| v.effective_from)
            .map(|v| v.payout_currency);
        let Some(to) = to.filter(|to| *to != from) else {
            continue;
        };
        if fx_rate(reads.store, reads.caches, from, to, date)
            .await?
            .is_none()
        {
            return Ok(Some(Waiting {
                conversion_id: c.conversion_id,
                program_id: c.program_id,
                partner_id: share.partner_id,
                from,
                to,
                date,
                occurred_at: c.occurred_at,
                event: event.clone(),
            }));
        }
    }
    Ok(None)
}

/// Plans and partners' assignments as one message or one run of messages reads them. Checking
/// the FX rates, building each accrual and walking its upline read the same few streams again
/// and again, and every cached read is still a catch-up read of the log (a third of a run's
/// store calls). Each stream is read at its first use in the run and kept for the rest of it:
/// a plan or assignment written while the run is being decided may be seen by its later
/// messages or not (as by messages decided one at a time while it is written), and the FX
/// check and the accrual of a message always see the same one.
struct SetupReads<'a> {
    store: &'a dyn EventStore,
    caches: &'a Caches,
    assignments: std::collections::HashMap<Uuid, Assignments>,
    plans: std::collections::HashMap<Uuid, Plan>,
    networks: std::collections::HashMap<Uuid, (Network, Option<u64>)>,
}

impl<'a> SetupReads<'a> {
    fn new(store: &'a dyn EventStore, caches: &'a Caches) -> Self {
        Self {
            store,
            caches,
            assignments: std::collections::HashMap::new(),
            plans: std::collections::HashMap::new(),
            networks: std::collections::HashMap::new(),
        }
    }

    /// The program's network and its stream version (`None`: CRM reported nothing yet). A
    /// shared handle, not a copy (see [`Network`]).
    async fn network(&mut self, program_id: Uuid) -> Result<(&Network, Option<u64>), HandleError> {
        use std::collections::hash_map::Entry;
        let read = match self.networks.entry(program_id) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(slot) => {
                let read = self
                    .caches
                    .network
                    .read(self.store, &network::stream(program_id), Clone::clone)
                    .await
                    .map_err(outcome)?;
                slot.insert(read)
            }
        };
        Ok((&read.0, read.1))
    }

    async fn assignments(&mut self, partner_id: Uuid) -> Result<&Assignments, HandleError> {
        let (cache, store) = (&self.caches.assignments, self.store);
        read_once(
            &mut self.assignments,
            cache,
            store,
            partner_id,
            setup::assignment_stream,
        )
        .await
    }

    async fn plan(&mut self, plan_id: Uuid) -> Result<&Plan, HandleError> {
        let (cache, store) = (&self.caches.plans, self.store);
        read_once(&mut self.plans, cache, store, plan_id, setup::plan_stream).await
    }
}

/// `id`'s state as `memo` holds it, read through `cache` (stream `stream(id)`) the first time.
async fn read_once<'m, A>(
    memo: &'m mut std::collections::HashMap<Uuid, A::State>,
    cache: &StateCache<A>,
    store: &dyn EventStore,
    id: Uuid,
    stream: fn(Uuid) -> String,
) -> Result<&'m A::State, HandleError>
where
    A: pl_runtime::Aggregate,
    A::State: Clone,
    A::Error: std::fmt::Display,
{
    use std::collections::hash_map::Entry;
    Ok(match memo.entry(id) {
        Entry::Occupied(known) => known.into_mut(),
        Entry::Vacant(slot) => {
            let (read, _) = cache
                .read(store, &stream(id), Clone::clone)
                .await
                .map_err(outcome)?;
            slot.insert(read)
        }
    })
}

async fn fx_rate(
    store: &dyn EventStore,
    caches: &Caches,
    from: pl_money::Currency,
    to: pl_money::Currency,
    date: chrono::NaiveDate,
) -> Result<Option<Decimal>, HandleError> {
    Ok(caches
        .fx
        .read(store, &setup::fx_stream(from, to), |r| r.on(date))
        .await
        .map_err(outcome)?
        .0)
}

/// Parks a conversion until its rate exists. A rate recorded while this message was in
/// flight may have released before the park: the rate is read again after parking, and if it
/// is there now the pair's waiting accruals are released here.
async fn park(
    store: &dyn EventStore,
    caches: &Caches,
    waiting: Waiting,
    trace: &BTreeMap<String, String>,
) -> Result<(), HandleError> {
    let (from, to, date) = (waiting.from, waiting.to, waiting.date);
    tracing::warn!(
        conversion_id = %waiting.conversion_id,
        partner_id = %waiting.partner_id,
        from = from.code(),
        to = to.code(),
        %date,
        "accrual waits for an fx rate"
    );
    let purpose = format!("fx-wait:{}:{}", from.code(), to.code());
    let park_meta = meta(&waiting.event, &purpose, trace);
    caches
        .fx_waiting
        .execute(
            store,
            fx_wait::STREAM,
            &FxWaitCommand::Park(Box::new(waiting)),
            &park_meta,
            |_| (),
        )
        .await
        .map_err(|e| match e {
            // A full backlog: keep the message on the bus instead (retried, then dead-lettered).
            ExecuteError::Domain(e) => HandleError::Retry(e.to_string()),
            other => outcome(other),
        })?;
    if fx_rate(store, caches, from, to, date).await?.is_some() {
        release_waiting(
            store,
            caches,
            (from, to),
            date,
            park_meta.occurred_at,
            trace,
        )
        .await?;
    }
    Ok(())
}

/// Replays the conversions waiting for the rate `from` → `to` on `date` (which now exists),
/// then marks them released. Returns how many were released. Safe to repeat: the replayed
/// accruals append only what is missing, and releasing what is gone changes nothing.
pub async fn release_waiting(
    store: &dyn EventStore,
    caches: &Caches,
    (from, to): (pl_money::Currency, pl_money::Currency),
    date: chrono::NaiveDate,
    occurred_at: chrono::DateTime<chrono::Utc>,
    trace: &BTreeMap<String, String>,
) -> Result<usize, HandleError> {
    // Waiting conversions that can never be accrued (a broken parked event): left parked,
    // visible in the listing, and never allowed to block the others.
    let mut stuck: std::collections::BTreeSet<Uuid> = std::collections::BTreeSet::new();
    let mut total = 0usize;
    // Pages of `MAX_RELEASE` until none is left; bounded by the backlog's own bound.
    for _ in 0..=fx_wait::MAX_WAITING / fx_wait::MAX_RELEASE {
        let (waiting, _) = caches
            .fx_waiting
            .read(store, fx_wait::STREAM, |w| {
                w.released_by(from, to, date)
                    .into_iter()
                    .filter(|w| !stuck.contains(&w.conversion_id))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(outcome)?;
        if waiting.is_empty() {
            break;
        }
        let mut released = Vec::with_capacity(waiting.len());
        for w in &waiting {
            let done = match ConversionAttributed::parse(w.event.data.get()) {
                Ok(c) => Box::pin(on_conversion(store, caches, &w.event, &c, trace)).await,
                Err(e) => Err(HandleError::Permanent(e.to_string())),
            };
            match done {
                Ok(()) => released.push(w.conversion_id),
                Err(HandleError::Permanent(reason)) => {
                    tracing::warn!(conversion_id = %w.conversion_id, reason, "a conversion waiting for an fx rate cannot be accrued; it stays listed");
                    stuck.insert(w.conversion_id);
                }
                Err(retry) => return Err(retry),
            }
        }
        if released.is_empty() {
            continue;
        }
        // The release's id derives from what it releases, so a repeated release appends nothing.
        let mut name = format!("fx-release:{}:{}:{date}", from.code(), to.code());
        for id in &released {
            name.push(':');
            name.push_str(&id.to_string());
        }
        let release_meta = CommandMeta {
            id_seed: Uuid::new_v5(&pl_bus::DERIVED_EVENT_ID_NAMESPACE, name.as_bytes()),
            occurred_at,
            correlation_id: None,
            causation_id: None,
            trace_context: trace.clone(),
        };
        total += released.len();
        caches
            .fx_waiting
            .execute(
                store,
                fx_wait::STREAM,
                &FxWaitCommand::Release {
                    from,
                    to,
                    conversion_ids: released,
                },
                &release_meta,
                |_| (),
            )
            .await
            .map_err(outcome)?;
    }
    tracing::info!(from = from.code(), to = to.code(), %date, released = total, stuck = stuck.len(), "accruals released by an fx rate");
    Ok(total)
}

/// Reverses a refund's or chargeback's share of a conversion's commission in every book that
/// holds it, overrides included.
pub async fn on_reversal(
    store: &dyn EventStore,
    caches: &Caches,
    event: &IntegrationEvent,
    r: &Reversal,
    trace: &BTreeMap<String, String>,
) -> Result<(), HandleError> {
    let index = load::<ConversionIndex>(store, &setup::accrued_stream(r.conversion_id))
        .await
        .map_err(outcome)?
        .state;
    let Some(accrued) = index.0 else {
        // Not accrued yet (every accrued conversion has its index, plan or not): wait for it.
        return park_reversal(store, event, r.conversion_id, trace).await;
    };
    let Some(revenue) = accrued.revenue else {
        return Err(HandleError::Permanent(
            "a conversion without revenue cannot be refunded".into(),
        ));
    };
    if revenue.currency() != r.amount.currency() {
        return Err(HandleError::Permanent(format!(
            "refund in {} of a conversion in {}",
            r.amount.currency(),
            revenue.currency()
        )));
    }
    let fraction = r
        .amount
        .amount()
        .checked_div(revenue.amount().abs())
        .filter(|f| *f > Decimal::ZERO)
        .ok_or_else(|| HandleError::Permanent("refund fraction is undefined".into()))?;
    if fraction > Decimal::ONE {
        // Never capped silently: a refund larger than the sale is a broken fact upstream.
        return Err(HandleError::Permanent(format!(
            "refund {} exceeds the conversion's revenue {revenue}",
            r.amount
        )));
    }
    let command = |_: Uuid| BookCommand::Reverse {
        reversal_id: r.reversal_id,
        conversion_id: r.conversion_id,
        fraction,
        occurred_at: r.occurred_at,
        source_event_id: event.id,
    };
    reverse_in_books(
        store,
        caches,
        event,
        &accrued.partners,
        (r.reversal_id, r.conversion_id, r.occurred_at),
        command,
        trace,
    )
    .await
}

/// A conversion rejected by a compliance fraud rule: whatever is left of its commission is
/// reversed in every book that holds it, overrides included (a clawback once matured).
pub async fn on_rejection(
    store: &dyn EventStore,
    caches: &Caches,
    event: &IntegrationEvent,
    r: &ConversionRejected,
    trace: &BTreeMap<String, String>,
) -> Result<(), HandleError> {
    let index = load::<ConversionIndex>(store, &setup::accrued_stream(r.conversion_id))
        .await
        .map_err(outcome)?
        .state;
    let Some(accrued) = index.0 else {
        return park_reversal(store, event, r.conversion_id, trace).await;
    };
    // One reversal per rejection event: a redelivery is the same reversal.
    let reversal_id = derived_event_id(event.id, "commissions:rejection");
    let command = |_: Uuid| BookCommand::ReverseRest {
        reversal_id,
        conversion_id: r.conversion_id,
        occurred_at: r.occurred_at,
        source_event_id: event.id,
    };
    tracing::info!(conversion_id = %r.conversion_id, rule = %r.rule, "conversion rejected by compliance: commission reversed");
    reverse_in_books(
        store,
        caches,
        event,
        &accrued.partners,
        (reversal_id, r.conversion_id, r.occurred_at),
        command,
        trace,
    )
    .await
}

/// Runs a reversal in each credited partner's book, then passes each override line it
/// reversed on to the upline's book.
async fn reverse_in_books(
    store: &dyn EventStore,
    caches: &Caches,
    event: &IntegrationEvent,
    partners: &[Uuid],
    (reversal_id, conversion_id, occurred_at): (Uuid, Uuid, chrono::DateTime<chrono::Utc>),
    command_for: impl Fn(Uuid) -> BookCommand,
    trace: &BTreeMap<String, String>,
) -> Result<(), HandleError> {
    for partner in partners {
        let command = command_for(*partner);
        let done = caches
            .books
            .execute(
                store,
                &book::stream(*partner),
                &command,
                &meta(event, &format!("reverse:{partner}"), trace),
                |b| b.reversals.get(&reversal_id).map(|rev| rev.lines.clone()),
            )
            .await
            .map_err(book_outcome)?;
        let Some(lines) = done.view else {
            continue;
        };
        for line in &lines {
            let LineKind::Override { level } = line.kind else {
                continue;
            };
            let command = BookCommand::ReverseOverride {
                reversal_id,
                conversion_id,
                from_partner: *partner,
                level,
                amount: line.amount,
                occurred_at,
                source_event_id: event.id,
            };
            let purpose = format!("reverse-override:{partner}:{}:{level}", line.partner_id);
            caches
                .books
                .execute(
                    store,
                    &book::stream(line.partner_id),
                    &command,
                    &meta(event, &purpose, trace),
                    |_| (),
                )
                .await
                .map_err(book_outcome)?;
        }
    }
    Ok(())
}

/// A campaign fee or MDF reimbursement from partner CRM: credited once to the partner's
/// payable (no hold: the fee is due on delivery, the claim was approved with its proof).
pub async fn on_credit(
    store: &dyn EventStore,
    caches: &Caches,
    event: &IntegrationEvent,
    credit: book::CreditKind,
    c: &PartnerCredit,
    trace: &BTreeMap<String, String>,
) -> Result<(), HandleError> {
    let command = BookCommand::Credit {
        credit,
        program_id: c.program_id,
        partner_id: c.partner_id,
        amount: c.amount,
        occurred_at: c.occurred_at,
        source_event_id: event.id,
        id_seed: derived_event_id(event.id, "commissions:credit"),
    };
    caches
        .books
        .execute(
            store,
            &book::stream(c.partner_id),
            &command,
            &meta(event, "credit", trace),
            |_| (),
        )
        .await
        .map_err(book_outcome)?;
    Ok(())
}

/// A customer's subscription ended: every partner credited with the customer's conversions
/// stops earning lifetime recurring shares from then on (the engine's churn).
pub async fn on_churn(
    store: &dyn EventStore,
    caches: &Caches,
    event: &IntegrationEvent,
    c: &SubscriptionCancelled,
    trace: &BTreeMap<String, String>,
) -> Result<(), HandleError> {
    let index = load::<CustomerIndex>(store, &setup::customer_stream(c.program_id, &c.customer_id))
        .await
        .map_err(outcome)?
        .state;
    // (partner, plan) pairs whose books hear of the churn: every credit on the customer (the
    // plans paying recurring shares), and, for each partner of the conversion that locked the
    // customer (whom its later invoices follow), the locking accrual's plan and every plan under
    // which the partner was paid for this customer in this program.
    let mut churned: Vec<(Uuid, Uuid)> = index
        .0
        .iter()
        .filter(|k| k.customer_id == c.customer_id)
        .map(|k| (k.partner_id, k.plan_id))
        .collect();
    if let Some(lock) = c.locked_by_conversion_id {
        let accrued = load::<ConversionIndex>(store, &setup::accrued_stream(lock))
            .await
            .map_err(outcome)?
            .state
            .0
            .filter(|a| a.program_id == c.program_id);
        for partner in accrued.map(|a| a.partners).unwrap_or_default() {
            // One pass over the partner's accruals (a churn is rare beside the conversions).
            // Engine state is keyed by customer id alone, so an accrual counts only where its
            // entry names this program: the same id in another program is another customer.
            let (plans, _) = caches
                .books
                .read(store, &book::stream(partner), |b| {
                    b.accruals
                        .iter()
                        .filter(|(conversion, (a, _))| {
                            a.customer_id == c.customer_id
                                && (**conversion == lock
                                    || b.entries
                                        .get(&(**conversion, book::EntryKey::Own))
                                        .is_some_and(|e| e.program_id == c.program_id))
                        })
                        .map(|(_, (a, _))| a.plan_id)
                        .collect::<std::collections::BTreeSet<Uuid>>()
                })
                .await
                .map_err(book_outcome)?;
            for plan in plans {
                if !churned.contains(&(partner, plan)) {
                    churned.push((partner, plan));
                }
            }
        }
    }
    if churned.is_empty() {
        tracing::info!(program_id = %c.program_id, "churn of a customer no partner earns on");
    }
    for (partner_id, plan_id) in churned {
        let command = BookCommand::Churn {
            plan_id,
            customer_id: c.customer_id.clone(),
            at: c.occurred_at,
        };
        let purpose = format!("churn:{partner_id}:{plan_id}");
        caches
            .books
            .execute(
                store,
                &book::stream(partner_id),
                &command,
                &meta(event, &purpose, trace),
                |_| (),
            )
            .await
            .map_err(book_outcome)?;
    }
    Ok(())
}

/// Deterministic id for commands issued over gRPC on behalf of a request key.
pub fn request_seed(key_seed: Uuid, partner_id: Uuid) -> Uuid {
    Uuid::new_v5(&key_seed, partner_id.as_bytes())
}
