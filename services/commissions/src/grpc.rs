//! The gRPC face of commissions.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pl_eventlog::{EventStore, SharedStore};
use pl_ledger::{AsOf, BalanceFold, Ledger, Page, PartnerBalance, PartnerBalances, RecordingPoint};
use pl_money::{Currency, Decimal};
use pl_runtime::aggregate::{decode_event, execute};
use pl_runtime::request::{to_datetime, Violations};
use pl_runtime::{idempotency, Clock, FieldViolation, RequestMeta};
use uuid::Uuid;

use crate::accruals::{self, Caches};
use crate::book::{self, Book, BookCommand, BookError, BookEvent};
use crate::book_codec;
use crate::fx_wait;
use crate::network;
use crate::setup::{self, Assignment, Assignments, FxRate, Plan, Publish};
use crate::visible;
use crate::SERVICE;
use pl_proto::commissions::v1 as pb;
use pl_proto::commissions::v1::commissions_service_server::{
    CommissionsService as CommissionsApi, CommissionsServiceServer,
};
use pl_runtime::aggregate::{load, ExecuteError};
use pl_runtime::request::{parse_uuid, to_timestamp};
use pl_runtime::ApiError;

const DEFAULT_PAGE: usize = 100;
/// Partner books larger than this many events are refused by the on-demand balance queries
/// (a persistent projection replaces the replay when books grow past it).
const MAX_BOOK_EVENTS: u64 = 1_000_000;

fn domain<E: std::fmt::Display>(field: &'static str) -> impl Fn(ExecuteError<E>) -> ApiError {
    move |e| match e {
        ExecuteError::Domain(e) => ApiError::invalid(field, e.to_string()),
        ExecuteError::Conflict { stream, .. } => ApiError::Conflict { stream },
        ExecuteError::Decode(detail) => ApiError::internal(detail),
        ExecuteError::Store(e) => e.into(),
    }
}

/// A rate that is not a rate is bad input; a second, different rate for a day already recorded
/// is a rule (a recorded rate is never changed), as the error model says.
fn fx_error(e: ExecuteError<setup::FxError>) -> ApiError {
    match e {
        ExecuteError::Domain(e @ setup::FxError::AlreadyRecorded { .. }) => {
            ApiError::rule(e.to_string())
        }
        other => domain("rate")(other),
    }
}

fn book_error(e: ExecuteError<BookError>) -> ApiError {
    match e {
        ExecuteError::Domain(e @ (BookError::Broken(_) | BookError::Ledger(_))) => {
            ApiError::internal(e)
        }
        ExecuteError::Domain(e) => ApiError::rule(e.to_string()),
        ExecuteError::Conflict { stream, .. } => ApiError::Conflict { stream },
        ExecuteError::Decode(detail) => ApiError::internal(detail),
        ExecuteError::Store(e) => e.into(),
    }
}

/// A page request's (offset, size), bounded by the ledger's page limit.
fn page_window(
    v: &mut Violations,
    page: Option<&pl_proto::common::v1::PageRequest>,
) -> (usize, usize) {
    pl_runtime::request::page(
        v,
        "page",
        page,
        pl_runtime::request::PageBounds {
            default_size: DEFAULT_PAGE,
            max_size: pl_ledger::MAX_PAGE_ENTRIES,
        },
    )
}

fn currency(field: &str, code: &str) -> Result<Currency, FieldViolation> {
    code.parse()
        .map_err(|_| FieldViolation::new(field, "an ISO 4217 currency code such as USD"))
}

fn as_of(v: &mut Violations, a: Option<&pb::AsOf>) -> AsOf {
    let Some(a) = a else { return AsOf::Latest };
    let business = a
        .business_date
        .as_ref()
        .and_then(|t| v.check(to_datetime("as_of.business_date", t)));
    let recorded = match (&a.recorded_at, a.recorded_position) {
        (Some(_), p) if p > 0 => {
            v.add("as_of", "give recorded_position or recorded_at, not both");
            None
        }
        (Some(t), _) => v
            .check(to_datetime("as_of.recorded_at", t))
            .map(RecordingPoint::At),
        (None, 0) => None,
        (None, p) => Some(RecordingPoint::Position(p)),
    };
    AsOf::from_parts(business, recorded)
}

/// Hands each event of a partner's book to `each`, in order, a page at a time; a book longer
/// than [`MAX_BOOK_EVENTS`] is refused.
async fn for_each_book_event(
    store: &dyn EventStore,
    partner_id: uuid::Uuid,
    mut each: impl FnMut(&pl_eventlog::RecordedEvent) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    let stream = book::stream(partner_id);
    let mut from = 0;
    loop {
        let page = store.read_stream(&stream, from, 1024).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        from = last.version + 1;
        if from > MAX_BOOK_EVENTS {
            return Err(ApiError::Exhausted {
                what: format!("book of partner {partner_id} exceeds {MAX_BOOK_EVENTS} events"),
            });
        }
        page.iter().try_for_each(&mut each)?;
    }
}

/// A partner's balances as of one point, folded from its book's postings alone: the
/// explanations, nine tenths of a stored event's decoding, are skipped unread (the fold answers
/// what a [`Ledger`] of the same book answers; `pl_ledger`'s property test holds them equal).
async fn partner_balances(
    store: &dyn EventStore,
    partner_id: uuid::Uuid,
    as_of: AsOf,
) -> Result<PartnerBalances, ApiError> {
    let mut fold = BalanceFold::new(as_of);
    for_each_book_event(store, partner_id, |recorded| {
        let postings = book_codec::postings_of_any(recorded).map_err(ApiError::internal)?;
        for p in &postings {
            fold.apply(recorded.position, recorded.recorded_at, p.as_ref())
                .map_err(ApiError::internal)?;
        }
        Ok(())
    })
    .await?;
    fold.balances_of_partner(partner_id)
        .map_err(ApiError::internal)
}

/// Replays a partner's book into a ledger, with each transaction at its event's log position.
async fn partner_ledger(
    store: &dyn EventStore,
    partner_id: uuid::Uuid,
) -> Result<Ledger, ApiError> {
    let mut ledger = Ledger::new();
    for_each_book_event(store, partner_id, |recorded| {
        let transactions =
            book_codec::recorded_transactions(recorded).map_err(ApiError::internal)?;
        for t in &transactions {
            ledger.apply(t).map_err(ApiError::internal)?;
        }
        Ok(())
    })
    .await?;
    Ok(ledger)
}

/// The paths of the keys of a plan document that the plan schema ignores (at most 20).
fn unknown_keys(plan_json: &str) -> Vec<String> {
    let mut unknown = Vec::new();
    let de = &mut serde_json::Deserializer::from_str(plan_json);
    let _ = serde_ignored::deserialize(de, |path| {
        if unknown.len() < 20 {
            unknown.push(path.to_string());
        }
    })
    .map(|_: pl_commission_engine::PlanVersion| ());
    unknown
}

/// A published plan version as the API shows it: its JSON in the form publishing takes.
fn plan_version_pb(p: &pl_commission_engine::PlanVersion) -> Result<pb::PlanVersionView, ApiError> {
    Ok(pb::PlanVersionView {
        plan_id: p.plan_id.to_string(),
        version: p.version,
        effective_from: Some(to_timestamp(p.effective_from)),
        plan_json: serde_json::to_string(p).map_err(ApiError::internal)?,
    })
}

/// The partner balance an entry moves, as the API documents it: `pending`, `payable` or `paid`
/// (the partner and the currency are the request's). Explanations list only the partner's own
/// accounts; any other is named in full rather than hidden.
fn balance_name(account: &pl_ledger::Account) -> String {
    match account {
        pl_ledger::Account::PartnerPending { .. } => "pending".to_owned(),
        pl_ledger::Account::PartnerPayable { .. } => "payable".to_owned(),
        pl_ledger::Account::PartnerPaid { .. } => "paid".to_owned(),
        other => other.to_string(),
    }
}

fn entry_pb(e: &pl_ledger::ExplainedEntry) -> pb::ExplainedEntry {
    let x = &e.explanation;
    let i = &x.inputs;
    let mut inputs: std::collections::HashMap<String, String> =
        i.other.clone().into_iter().collect();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            inputs.insert(k.to_owned(), v);
        }
    };
    put("base", i.base_amount.map(|m| m.to_string()));
    put("rate_percent", i.rate_percent.map(|r| r.to_string()));
    put("tier", i.tier.clone());
    put("quantity", i.quantity.map(|q| q.to_string()));
    put("flat", i.flat_amount.map(|m| m.to_string()));
    put("month_index", i.month_index.map(|m| m.to_string()));
    put("fx_rate", i.fx_rate.map(|r| r.to_string()));
    pb::ExplainedEntry {
        transaction_id: e.transaction_id.to_string(),
        kind: e.kind.as_str().to_owned(),
        occurred_at: Some(to_timestamp(e.occurred_at)),
        position: e.position,
        account: balance_name(&e.account),
        amount: e.amount.amount().to_string(),
        explanation: x.line.clone(),
        source_event_id: x.source_event_id.to_string(),
        conversion_id: x.conversion_id.map(|c| c.to_string()).unwrap_or_default(),
        plan_id: x
            .plan
            .as_ref()
            .map(|p| p.plan_id.to_string())
            .unwrap_or_default(),
        plan_version: x.plan.as_ref().map_or(0, |p| p.plan_version),
        rule_id: x
            .plan
            .as_ref()
            .map(|p| p.rule_id.clone())
            .unwrap_or_default(),
        inputs,
    }
}

/// A required period `[from, to)` with `to` after `from`.
fn period(
    v: &mut Violations,
    from: Option<&pl_proto::prost_types::Timestamp>,
    to: Option<&pl_proto::prost_types::Timestamp>,
) -> Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    let mut instant = |field: &'static str, t: Option<&pl_proto::prost_types::Timestamp>| match t {
        Some(t) => v.check(to_datetime(field, t)),
        None => v.check(Err(FieldViolation::new(field, "required"))),
    };
    let (from, to) = (instant("from", from), instant("to", to));
    let (from, to) = (from?, to?);
    if to <= from {
        v.add("to", "must be after from");
        return None;
    }
    Some((from, to))
}

/// A signed, non-zero amount in the currency's minor unit.
fn adjustment_amount(m: &pl_proto::common::v1::Money) -> Result<pl_money::Money, FieldViolation> {
    let currency = currency("amount.currency", &m.currency)?;
    let amount = pl_money::Money::parse_exact(&m.amount, currency)
        .map_err(|e| FieldViolation::new("amount.amount", e.to_string()))?;
    if amount.is_zero() {
        return Err(FieldViolation::new("amount.amount", "must not be zero"));
    }
    if amount.amount().abs() > pl_commission_engine::MAX_AMOUNT {
        return Err(FieldViolation::new(
            "amount.amount",
            format!("at most {} in magnitude", pl_commission_engine::MAX_AMOUNT),
        ));
    }
    Ok(amount)
}

fn money_pb(m: pl_money::Money) -> pl_proto::common::v1::Money {
    pl_proto::common::v1::Money {
        amount: m.amount().to_string(),
        currency: m.currency().code().to_owned(),
    }
}

fn balance_pb(currency: Currency, b: &PartnerBalance) -> pb::CurrencyBalances {
    pb::CurrencyBalances {
        currency: currency.code().to_owned(),
        pending: b.pending.amount().to_string(),
        payable: b.payable.amount().to_string(),
        paid: b.paid.amount().to_string(),
    }
}

use tonic::{Request, Response, Status};

use crate::book::PayoutStatus;
use crate::domain::{self, Account, AccountError};
use crate::payout::{self, PayoutRun, RunItem, MAX_PARTNERS_PER_RUN};
use crate::payout_runs::{self, RunRequest};
use pl_runtime::request::parse_text;

/// Field violations reported for one request at most (a 10 000-partner list could otherwise
/// produce a response as large as the request).
const MAX_VIOLATIONS: usize = 100;
const MAX_FAILURE_REASON_CHARS: usize = 1024;

fn item_pb(run: &PayoutRun, item: &RunItem) -> pb::PayoutItem {
    let ending = item
        .currency
        .and_then(|c| run.endings.get(&(item.partner_id, c)));
    let status = match (item.amount, ending) {
        (None, _) => pb::PayoutItemStatus::Skipped,
        (Some(_), None) => pb::PayoutItemStatus::Sent,
        (Some(_), Some(e)) => match e.status {
            PayoutStatus::Settled => pb::PayoutItemStatus::Settled,
            PayoutStatus::Failed => pb::PayoutItemStatus::Failed,
            PayoutStatus::Sent => pb::PayoutItemStatus::Sent,
        },
    };
    pb::PayoutItem {
        partner_id: item.partner_id.to_string(),
        currency: item
            .currency
            .map(|c| c.code().to_owned())
            .unwrap_or_default(),
        amount: item
            .amount
            .map(|m| m.amount().to_string())
            .unwrap_or_default(),
        status: status.into(),
        skip_reasons: item
            .reasons
            .iter()
            .map(|r| pb::SkipReason {
                code: r.code.clone(),
                detail: r.detail.clone(),
            })
            .collect(),
        failure_reason: ending
            .filter(|e| e.status == PayoutStatus::Failed)
            .map(|e| e.reason.clone())
            .unwrap_or_default(),
    }
}

fn run_pb(run: &PayoutRun) -> Result<pb::PayoutRun, ApiError> {
    let Some(opened) = &run.opened else {
        return Err(ApiError::internal("payout run without its opening"));
    };
    let mut totals: std::collections::BTreeMap<Currency, pl_money::Money> =
        std::collections::BTreeMap::new();
    for amount in run.items.iter().filter_map(|i| i.amount) {
        let c = amount.currency();
        let sum = totals
            .get(&c)
            .copied()
            .unwrap_or_else(|| pl_money::Money::zero(c));
        totals.insert(c, sum.checked_add(amount).map_err(ApiError::internal)?);
    }
    Ok(pb::PayoutRun {
        run_id: opened.run_id.to_string(),
        program_id: opened.program_id.to_string(),
        as_of: Some(to_timestamp(opened.as_of)),
        items: run.items.iter().map(|i| item_pb(run, i)).collect(),
        totals: totals
            .values()
            .map(|m| pl_proto::common::v1::Money {
                amount: m.amount().to_string(),
                currency: m.currency().code().to_owned(),
            })
            .collect(),
        complete: run.closed,
    })
}

/// Validates the target of a settle or fail request.
fn item_target(
    v: &mut Violations,
    run_id: &str,
    partner_id: &str,
    code: &str,
) -> Option<(uuid::Uuid, uuid::Uuid, Currency)> {
    let run_id = v.check(parse_uuid("run_id", run_id));
    let partner_id = v.check(parse_uuid("partner_id", partner_id));
    let currency = v.check(currency("currency", code));
    Some((run_id?, partner_id?, currency?))
}

fn to_api(e: ExecuteError<AccountError>) -> ApiError {
    match e {
        ExecuteError::Domain(never) => match never {},
        ExecuteError::Conflict { stream, .. } => ApiError::Conflict { stream },
        ExecuteError::Decode(detail) => ApiError::internal(detail),
        ExecuteError::Store(e) => e.into(),
    }
}

#[derive(Debug, Clone)]
pub struct CommissionsService {
    store: SharedStore,
    clock: Arc<dyn Clock>,
    caches: Arc<Caches>,
}

pub const SERVICE_NAME: &str =
    <CommissionsServiceServer<CommissionsService> as tonic::server::NamedService>::NAME;

impl CommissionsService {
    /// Refuses a plan that the partner's tier at `at` does not grant (partner CRM's
    /// `TierAccess.plan_ids`, as CRM reported it to commissions). A partner whose account is
    /// not open yet has no program known here, so nothing to check it against: CRM reports the
    /// application before any tier, and the tier's grant is checked once both arrived.
    async fn check_tier_grants(
        &self,
        partner_id: Uuid,
        plan_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let store = self.store.as_ref();
        let account = load::<Account>(store, &domain::stream(partner_id))
            .await
            .map_err(to_api)?;
        let Some(opening) = account.state.0 else {
            return Ok(());
        };
        let (refusal, version) = self
            .caches
            .network
            .read(store, &network::stream(opening.program_id), |n| {
                let tier = n.tier(partner_id, at);
                n.grants(tier, plan_id).err().map(|grant| {
                    let granted: Vec<String> =
                        grant.plan_ids.iter().map(Uuid::to_string).collect();
                    let whose = match tier {
                        Some(t) if t == grant.code => format!("is tier {t}"),
                        Some(t) => format!("is tier {t}, which the program no longer defines, so has the lowest tier {}'s access", grant.code),
                        None => format!("has no tier, so has the lowest tier {}'s access", grant.code),
                    };
                    format!(
                        "partner {partner_id} {whose} at {at}; tier {} grants only plans [{}], not {plan_id}: assign one of them or change the tier in partner CRM",
                        grant.code,
                        granted.join(", ")
                    )
                })
            })
            .await
            .map_err(domain::<network::NetworkError>("partner_id"))?;
        match refusal {
            Some(reason) => Err(ApiError::rule(format!(
                "{reason} (hierarchy version {})",
                version.unwrap_or(0)
            ))),
            None => Ok(()),
        }
    }

    pub fn new(store: SharedStore, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            caches: Arc::default(),
        }
    }

    /// The cached states this service shares with its consumer (`consumer::handle`), so both
    /// fold the same books instead of each replaying them.
    pub fn caches(&self) -> Arc<Caches> {
        Arc::clone(&self.caches)
    }

    fn meta(
        &self,
        context: Option<&pl_proto::common::v1::RequestContext>,
        v: &mut Violations,
    ) -> Option<RequestMeta> {
        let trace = pl_telemetry::inject(&tracing::Span::current());
        RequestMeta::parse(SERVICE, context, self.clock.as_ref(), trace, v)
    }

    /// Every published version of a plan, oldest first (through the plans' cache: one catch-up
    /// read). NOT_FOUND for a plan never published.
    async fn plan_versions(
        &self,
        plan_id: uuid::Uuid,
    ) -> Result<Arc<Vec<pl_commission_engine::PlanVersion>>, ApiError> {
        let (plan, _) = self
            .caches
            .plans
            .read(self.store.as_ref(), &setup::plan_stream(plan_id), |p| {
                Arc::clone(&p.0)
            })
            .await
            .map_err(domain::<setup::PlanPublishError>("plan_id"))?;
        if plan.is_empty() {
            return Err(ApiError::NotFound {
                what: "plan",
                id: plan_id.to_string(),
            });
        }
        Ok(plan)
    }

    /// What `GetConversionAccrual` answers now: the conversion's index and, once accrued, each
    /// credited partner's open commission and applied reversals.
    async fn conversion_accrual(
        &self,
        conversion_id: uuid::Uuid,
    ) -> Result<pb::ConversionAccrual, ApiError> {
        let store = self.store.as_ref();
        let index = load::<setup::ConversionIndex>(store, &setup::accrued_stream(conversion_id))
            .await
            .map_err(domain("conversion_id"))?
            .state;
        let Some(accrued) = index.0 else {
            let refusal =
                load::<setup::ConversionRefusal>(store, &setup::refused_stream(conversion_id))
                    .await
                    .map_err(domain("conversion_id"))?
                    .state
                    .0;
            return Ok(pb::ConversionAccrual {
                conversion_id: conversion_id.to_string(),
                accrued: false,
                partners: vec![],
                refused: refusal.is_some(),
                refusal_reason: refusal.map(|r| r.reason).unwrap_or_default(),
            });
        };
        let mut partners = Vec::with_capacity(accrued.partners.len());
        for partner in &accrued.partners {
            let (view, _) = self
                .caches
                .books
                .read(store, &book::stream(*partner), |b| {
                    let open = b
                        .entries
                        .get(&(conversion_id, book::EntryKey::Own))
                        .map(|e| e.open);
                    let reversals: Vec<String> = b
                        .reversals
                        .iter()
                        .filter(|(_, r)| r.conversion_id == conversion_id)
                        .map(|(id, _)| id.to_string())
                        .collect();
                    (open, reversals)
                })
                .await
                .map_err(book_error)?;
            partners.push(pb::PartnerAccrual {
                partner_id: partner.to_string(),
                open: view.0.map(|m| pl_proto::common::v1::Money {
                    amount: m.amount().to_string(),
                    currency: m.currency().code().to_owned(),
                }),
                reversal_ids: view.1,
            });
        }
        Ok(pb::ConversionAccrual {
            conversion_id: conversion_id.to_string(),
            accrued: true,
            partners,
            refused: false,
            refusal_reason: String::new(),
        })
    }

    pub fn into_server(self, max_request_bytes: usize) -> CommissionsServiceServer<Self> {
        CommissionsServiceServer::new(self).max_decoding_message_size(max_request_bytes)
    }
}

#[tonic::async_trait]
impl CommissionsApi for CommissionsService {
    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn get_partner_account(
        &self,
        request: Request<pb::GetPartnerAccountRequest>,
    ) -> Result<Response<pb::PartnerAccount>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let as_of = match &req.as_of {
            Some(t) => v.check(to_datetime("as_of", t)),
            None => Some(self.clock.now()),
        };
        v.finish()?;
        let (Some(partner_id), Some(as_of)) = (partner_id, as_of) else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let store = self.store.as_ref();
        let loaded = load::<Account>(store, &domain::stream(partner_id))
            .await
            .map_err(to_api)?;
        let opening = loaded.state.0.ok_or(ApiError::NotFound {
            what: "partner account",
            id: partner_id.to_string(),
        })?;
        let (standing, hierarchy_version) = self
            .caches
            .network
            .read(store, &network::stream(opening.program_id), |n| {
                n.standing(partner_id, as_of, setup::MAX_UPLINE)
            })
            .await
            .map_err(domain::<network::NetworkError>("partner_id"))?;
        let assignments = load::<Assignments>(store, &setup::assignment_stream(partner_id))
            .await
            .map_err(domain::<setup::AssignError>("partner_id"))?;
        Ok(Response::new(pb::PartnerAccount {
            partner_id: opening.partner_id.to_string(),
            program_id: opening.program_id.to_string(),
            opened_at: Some(to_timestamp(opening.opened_at)),
            opened_by_event_id: opening.source_event_id.to_string(),
            tier: standing.tier.unwrap_or_default(),
            upline: standing.upline.iter().map(Uuid::to_string).collect(),
            hierarchy_version: hierarchy_version.unwrap_or(0),
            hierarchy_known: hierarchy_version.is_some(),
            plan_id: assignments
                .state
                .at(as_of)
                .map(|a| a.plan_id.to_string())
                .unwrap_or_default(),
            as_of: Some(to_timestamp(as_of)),
        }))
    }

    #[tracing::instrument(skip_all, fields(plan_id = %request.get_ref().plan_id))]
    async fn publish_plan_version(
        &self,
        request: Request<pb::PublishPlanVersionRequest>,
    ) -> Result<Response<pb::PlanVersionPublished>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let plan_id = v.check(parse_uuid("plan_id", &req.plan_id));
        let version = if req.plan_json.len() > 1024 * 1024 {
            v.add("plan_json", "at most 1 MiB");
            None
        } else {
            let de = &mut serde_json::Deserializer::from_str(&req.plan_json);
            match serde_path_to_error::deserialize::<_, pl_commission_engine::PlanVersion>(de) {
                Ok(p) => {
                    // A key the plan schema does not know is refused, not dropped: a misspelt
                    // condition would make a rule match more conversions, a misspelt cap
                    // leave it uncapped. (Stored plans are read leniently, as written.)
                    let unknown = unknown_keys(&req.plan_json);
                    for path in &unknown {
                        v.add(
                            format!("plan_json.{path}"),
                            "not a field of the plan schema (docs/plan-reference.md)",
                        );
                    }
                    unknown.is_empty().then_some(p)
                }
                Err(e) => {
                    v.add(format!("plan_json.{}", e.path()), e.inner().to_string());
                    None
                }
            }
        };
        v.finish()?;
        let (Some(meta), Some(plan_id), Some(version)) = (meta, plan_id, version) else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let store = self.store.as_ref();
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let cmd = Publish { plan_id, version };
                execute::<Plan>(
                    store,
                    &setup::plan_stream(plan_id),
                    &cmd,
                    &meta.command_meta(),
                )
                .await
                .map_err(domain("plan_json"))?;
                Ok(pb::PlanVersionPublished {
                    plan_id: plan_id.to_string(),
                    version: cmd.version.version,
                    effective_from: Some(to_timestamp(cmd.version.effective_from)),
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pl_proto::common::v1::ListDeadLettersRequest>,
    ) -> Result<Response<pl_proto::common::v1::ListDeadLettersResponse>, Status> {
        let listed =
            pl_runtime::dead_letters::list(self.store.as_ref(), SERVICE, request.get_ref()).await?;
        Ok(Response::new(listed))
    }

    #[tracing::instrument(skip_all, fields(letter_id = %request.get_ref().letter_id))]
    async fn retry_dead_letter(
        &self,
        request: Request<pl_proto::common::v1::RetryDeadLetterRequest>,
    ) -> Result<Response<pl_proto::common::v1::RetryDeadLetterResponse>, Status> {
        let (store, caches) = (self.store.as_ref(), &self.caches);
        let retried = pl_runtime::dead_letters::retry_request(
            store,
            SERVICE,
            self.clock.as_ref(),
            pl_telemetry::inject(&tracing::Span::current()),
            request.get_ref(),
            |message| crate::consumer::handle(store, caches, message),
        )
        .await?;
        Ok(Response::new(retried))
    }

    #[tracing::instrument(skip_all, fields(plan_id = %request.get_ref().plan_id))]
    async fn get_plan_version(
        &self,
        request: Request<pb::GetPlanVersionRequest>,
    ) -> Result<Response<pb::PlanVersionView>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let plan_id = v.check(parse_uuid("plan_id", &req.plan_id));
        if req.version == 0 {
            v.add("version", "required: 1 or more");
        }
        v.finish()?;
        let Some(plan_id) = plan_id else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let versions = self.plan_versions(plan_id).await?;
        let version = versions
            .iter()
            .find(|p| p.version == req.version)
            .ok_or_else(|| ApiError::NotFound {
                what: "plan version",
                id: format!("{plan_id} v{}", req.version),
            })?;
        Ok(Response::new(plan_version_pb(version)?))
    }

    #[tracing::instrument(skip_all, fields(plan_id = %request.get_ref().plan_id))]
    async fn list_plan_versions(
        &self,
        request: Request<pb::ListPlanVersionsRequest>,
    ) -> Result<Response<pb::ListPlanVersionsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let plan_id = v.check(parse_uuid("plan_id", &req.plan_id));
        let (offset, limit) = pl_runtime::request::page(
            &mut v,
            "page",
            req.page.as_ref(),
            pl_runtime::request::PageBounds {
                default_size: DEFAULT_PAGE,
                max_size: pl_commission_engine::MAX_VERSIONS,
            },
        );
        v.finish()?;
        let Some(plan_id) = plan_id else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let versions = self.plan_versions(plan_id).await?;
        let next = offset.saturating_add(limit);
        Ok(Response::new(pb::ListPlanVersionsResponse {
            versions: versions
                .iter()
                .skip(offset)
                .take(limit)
                .map(plan_version_pb)
                .collect::<Result<_, _>>()?,
            next_page_token: if next < versions.len() {
                next.to_string()
            } else {
                String::new()
            },
        }))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn assign_plan(
        &self,
        request: Request<pb::AssignPlanRequest>,
    ) -> Result<Response<pb::PlanAssigned>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let plan_id = v.check(parse_uuid("plan_id", &req.plan_id));
        let effective_from = match &req.effective_from {
            Some(t) => v.check(to_datetime("effective_from", t)),
            None => v.check(Err(FieldViolation::new("effective_from", "required"))),
        };
        // The fields stay in the message so that an old client's values are refused, never
        // silently dropped: the tier and the upline are partner CRM's.
        #[allow(deprecated)]
        let (tier, parent) = (&req.partner_tier, &req.parent_partner_id);
        if !tier.is_empty() {
            v.add(
                "partner_tier",
                "must be empty: the tier comes from partner CRM (ChangePartnerTier)",
            );
        }
        if !parent.is_empty() {
            v.add(
                "parent_partner_id",
                "must be empty: the upline comes from partner CRM (SetPartnerParent)",
            );
        }
        v.finish()?;
        let (Some(meta), Some(partner_id), Some(plan_id), Some(effective_from)) =
            (meta, partner_id, plan_id, effective_from)
        else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let store = self.store.as_ref();
        let plan = pl_runtime::aggregate::load::<Plan>(store, &setup::plan_stream(plan_id))
            .await
            .map_err(domain::<setup::PlanPublishError>("plan_id"))?;
        if plan.state.0.is_empty() {
            return Err(ApiError::NotFound {
                what: "plan",
                id: plan_id.to_string(),
            }
            .into());
        }
        self.check_tier_grants(partner_id, plan_id, effective_from)
            .await?;
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let cmd = Assignment {
                    partner_id,
                    plan_id,
                    effective_from,
                    partner_tier: None,
                    parent_partner_id: None,
                };
                execute::<Assignments>(
                    store,
                    &setup::assignment_stream(partner_id),
                    &cmd,
                    &meta.command_meta(),
                )
                .await
                .map_err(domain("effective_from"))?;
                Ok(pb::PlanAssigned {
                    partner_id: partner_id.to_string(),
                    plan_id: plan_id.to_string(),
                    effective_from: Some(to_timestamp(effective_from)),
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(from = %request.get_ref().from_currency, to = %request.get_ref().to_currency))]
    async fn record_fx_rate(
        &self,
        request: Request<pb::RecordFxRateRequest>,
    ) -> Result<Response<pb::FxRateRecorded>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let from = v.check(currency("from_currency", &req.from_currency));
        let to = v.check(currency("to_currency", &req.to_currency));
        let date = match &req.date {
            Some(t) => v.check(to_datetime("date", t)).map(|d| d.date_naive()),
            None => v.check(Err(FieldViolation::new("date", "required"))),
        };
        let rate = v.check(
            pl_money::parse_amount(&req.rate)
                .map_err(|e| FieldViolation::new("rate", e.to_string()))
                .and_then(|r| {
                    if r > Decimal::ZERO {
                        Ok(r)
                    } else {
                        Err(FieldViolation::new("rate", "must be positive"))
                    }
                }),
        );
        v.finish()?;
        let (Some(meta), Some(from), Some(to), Some(date), Some(rate)) =
            (meta, from, to, date, rate)
        else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let store = self.store.as_ref();
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let cmd = FxRate {
                    from,
                    to,
                    date,
                    rate,
                };
                let command_meta = meta.command_meta();
                self.caches
                    .fx
                    .execute(
                        store,
                        &setup::fx_stream(from, to),
                        &cmd,
                        &command_meta,
                        |_| (),
                    )
                    .await
                    .map_err(fx_error)?;
                // Inside the idempotent unit: a release cut short is finished by the retry
                // under the same key (the rate is then recorded already and changes nothing).
                let released = accruals::release_waiting(
                    store,
                    &self.caches,
                    (from, to),
                    date,
                    meta.occurred_at,
                    &command_meta.trace_context,
                )
                .await
                .map_err(|e| match e {
                    pl_bus::HandleError::Retry(reason) => ApiError::Unavailable {
                        what: format!("the release of waiting accruals ({reason})"),
                    },
                    pl_bus::HandleError::Permanent(reason) => ApiError::internal(reason),
                })?;
                Ok(pb::FxRateRecorded {
                    from_currency: from.code().to_owned(),
                    to_currency: to.code().to_owned(),
                    date: date.to_string(),
                    rate: rate.to_string(),
                    released_accruals: u32::try_from(released).unwrap_or(u32::MAX),
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn list_accruals_awaiting_fx(
        &self,
        request: Request<pb::ListAccrualsAwaitingFxRequest>,
    ) -> Result<Response<pb::ListAccrualsAwaitingFxResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let optional = |v: &mut Violations, field: &str, code: &str| {
            if code.is_empty() {
                None
            } else {
                v.check(currency(field, code))
            }
        };
        let from = optional(&mut v, "from_currency", &req.from_currency);
        let to = optional(&mut v, "to_currency", &req.to_currency);
        let (offset, limit) = page_window(&mut v, req.page.as_ref());
        v.finish()?;
        let (all, _) = self
            .caches
            .fx_waiting
            .read(self.store.as_ref(), fx_wait::STREAM, |w| {
                w.list(from, to)
                    .into_iter()
                    .map(|w| pb::AccrualAwaitingFx {
                        conversion_id: w.conversion_id.to_string(),
                        program_id: w.program_id.to_string(),
                        partner_id: w.partner_id.to_string(),
                        from_currency: w.from.code().to_owned(),
                        to_currency: w.to.code().to_owned(),
                        date: w.date.to_string(),
                        occurred_at: Some(to_timestamp(w.occurred_at)),
                        source_event_id: w.event.id.to_string(),
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| match e {
                ExecuteError::Store(e) => ApiError::from(e),
                other => ApiError::internal(other.to_string()),
            })?;
        let total = all.len();
        let accruals: Vec<_> = all.into_iter().skip(offset).take(limit).collect();
        let next = offset.saturating_add(accruals.len());
        Ok(Response::new(pb::ListAccrualsAwaitingFxResponse {
            accruals,
            next_page_token: if next < total {
                next.to_string()
            } else {
                String::new()
            },
            total: total as u64,
        }))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn record_adjustment(
        &self,
        request: Request<pb::RecordAdjustmentRequest>,
    ) -> Result<Response<pb::AdjustmentRecorded>, Status> {
        const MAX_REASON_CHARS: usize = 500;
        const MAX_NAME_CHARS: usize = 128;
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let program_id = v.check(parse_uuid("program_id", &req.program_id));
        let kind = match pb::AdjustmentKind::try_from(req.kind) {
            Ok(pb::AdjustmentKind::Bonus) => Some(book::AdjustmentKind::Bonus),
            Ok(pb::AdjustmentKind::Correction) => Some(book::AdjustmentKind::Correction),
            _ => v.check(Err(FieldViolation::new(
                "kind",
                "ADJUSTMENT_KIND_BONUS or ADJUSTMENT_KIND_CORRECTION",
            ))),
        };
        let amount = match &req.amount {
            None => v.check(Err(FieldViolation::new("amount", "required"))),
            Some(m) => v.check(adjustment_amount(m)),
        };
        let reason = v.check(parse_text("reason", &req.reason, MAX_REASON_CHARS));
        let reference = v.check(parse_text("reference", &req.reference, MAX_NAME_CHARS));
        let approved_by = v.check(parse_text("approved_by", &req.approved_by, MAX_NAME_CHARS));
        let counters = if req.counters_adjustment_id.is_empty() {
            Some(None)
        } else {
            v.check(parse_uuid(
                "counters_adjustment_id",
                &req.counters_adjustment_id,
            ))
            .map(Some)
        };
        v.finish()?;
        let (
            Some(meta),
            Some(partner_id),
            Some(program_id),
            Some(kind),
            Some(amount),
            Some(reason),
            Some(reference),
            Some(approved_by),
            Some(counters),
        ) = (
            meta,
            partner_id,
            program_id,
            kind,
            amount,
            reason,
            reference,
            approved_by,
            counters,
        )
        else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let store = self.store.as_ref();
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let adjustment_id = uuid::Uuid::new_v5(&meta.key.id_seed(), b"adjustment");
                let cmd = BookCommand::Adjust {
                    program_id,
                    partner_id,
                    adjustment: book::Adjustment {
                        adjustment_id,
                        kind,
                        amount,
                        reason,
                        reference,
                        approved_by,
                        counters,
                        occurred_at: meta.occurred_at,
                    },
                    id_seed: meta.key.id_seed(),
                };
                let done =
                    execute::<Book>(store, &book::stream(partner_id), &cmd, &meta.command_meta())
                        .await
                        .map_err(book_error)?;
                let transaction = done
                    .events
                    .iter()
                    .flat_map(BookEvent::transactions)
                    .next()
                    .ok_or_else(|| ApiError::internal("adjustment without its transaction"))?;
                Ok(pb::AdjustmentRecorded {
                    adjustment_id: adjustment_id.to_string(),
                    transaction_id: transaction.id().to_string(),
                    explanation: transaction.explanation().line.clone(),
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn mature_commissions(
        &self,
        request: Request<pb::MatureCommissionsRequest>,
    ) -> Result<Response<pb::MatureCommissionsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let as_of = match &req.as_of {
            Some(t) => v.check(to_datetime("as_of", t)),
            None => v.check(Err(FieldViolation::new(
                "as_of",
                "required: maturity never reads the clock",
            ))),
        };
        v.finish()?;
        let (Some(meta), Some(partner_id), Some(as_of)) = (meta, partner_id, as_of) else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let store = self.store.as_ref();
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let cmd = BookCommand::Mature {
                    partner_id,
                    as_of,
                    id_seed: meta.key.id_seed(),
                };
                let done =
                    execute::<Book>(store, &book::stream(partner_id), &cmd, &meta.command_meta())
                        .await
                        .map_err(book_error)?;
                // One total per currency of what moved from pending to payable.
                let mut totals: std::collections::BTreeMap<Currency, pl_money::Money> =
                    std::collections::BTreeMap::new();
                for transfer in done
                    .events
                    .iter()
                    .flat_map(BookEvent::transactions)
                    .flat_map(|t| t.transfers())
                {
                    let c = transfer.amount.currency();
                    let sum = totals
                        .get(&c)
                        .copied()
                        .unwrap_or_else(|| pl_money::Money::zero(c));
                    totals.insert(
                        c,
                        sum.checked_add(transfer.amount)
                            .map_err(ApiError::internal)?,
                    );
                }
                let matured = totals
                    .values()
                    .map(|m| pl_proto::common::v1::Money {
                        amount: m.amount().to_string(),
                        currency: m.currency().code().to_owned(),
                    })
                    .collect();
                Ok(pb::MatureCommissionsResponse { matured })
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn get_balances(
        &self,
        request: Request<pb::GetBalancesRequest>,
    ) -> Result<Response<pb::Balances>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let as_of = as_of(&mut v, req.as_of.as_ref());
        v.finish()?;
        let Some(partner_id) = partner_id else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let balances = partner_balances(self.store.as_ref(), partner_id, as_of).await?;
        Ok(Response::new(pb::Balances {
            partner_id: partner_id.to_string(),
            currencies: balances
                .currencies
                .iter()
                .map(|(c, b)| balance_pb(*c, b))
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn explain_balance(
        &self,
        request: Request<pb::ExplainBalanceRequest>,
    ) -> Result<Response<pb::ExplainBalanceResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let currency = v.check(currency("currency", &req.currency));
        let as_of = as_of(&mut v, req.as_of.as_ref());
        let (offset, limit) = page_window(&mut v, req.page.as_ref());
        v.finish()?;
        let (Some(partner_id), Some(currency)) = (partner_id, currency) else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let ledger = partner_ledger(self.store.as_ref(), partner_id).await?;
        let explained = ledger
            .explain(partner_id, currency, as_of, Page { offset, limit })
            .map_err(ApiError::internal)?;
        let entries = explained.entries.iter().map(entry_pb).collect();
        let next = offset + explained.entries.len();
        Ok(Response::new(pb::ExplainBalanceResponse {
            balances: Some(pb::Balances {
                partner_id: partner_id.to_string(),
                currencies: vec![balance_pb(currency, &explained.balance)],
            }),
            entries,
            next_page_token: if next < explained.total_entries {
                next.to_string()
            } else {
                String::new()
            },
        }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id, partners = request.get_ref().partner_ids.len()))]
    async fn create_payout_run(
        &self,
        request: Request<pb::CreatePayoutRunRequest>,
    ) -> Result<Response<pb::PayoutRun>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let program_id = v.check(parse_uuid("program_id", &req.program_id));
        let as_of = match &req.as_of {
            Some(t) => v.check(to_datetime("as_of", t)),
            None => v.check(Err(FieldViolation::new(
                "as_of",
                "required: a payout run never reads the clock",
            ))),
        };
        let mut partner_ids = Vec::new();
        if req.partner_ids.is_empty() {
            v.add("partner_ids", "at least one partner");
        } else if req.partner_ids.len() > MAX_PARTNERS_PER_RUN {
            v.add(
                "partner_ids",
                format!(
                    "at most {MAX_PARTNERS_PER_RUN} partners per run, got {}",
                    req.partner_ids.len()
                ),
            );
        } else {
            let mut first_at = std::collections::HashMap::new();
            let mut reported = 0;
            for (i, raw) in req.partner_ids.iter().enumerate() {
                let field = format!("partner_ids[{i}]");
                let problem = match parse_uuid(&field, raw) {
                    Ok(id) => match first_at.insert(id, i) {
                        Some(j) => {
                            // Paying a partner twice in one run is never intended.
                            first_at.insert(id, j);
                            Some(FieldViolation::new(
                                &field,
                                format!("repeats partner_ids[{j}]"),
                            ))
                        }
                        None => {
                            partner_ids.push(id);
                            None
                        }
                    },
                    Err(fv) => Some(fv),
                };
                if let Some(fv) = problem {
                    reported += 1;
                    if reported <= MAX_VIOLATIONS {
                        v.add(fv.field, fv.description);
                    }
                }
            }
            if reported > MAX_VIOLATIONS {
                v.add(
                    "partner_ids",
                    format!(
                        "{} more invalid entries not listed",
                        reported - MAX_VIOLATIONS
                    ),
                );
            }
        }
        v.finish()?;
        let (Some(meta), Some(program_id), Some(as_of)) = (meta, program_id, as_of) else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let store = self.store.as_ref();
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let run_id = uuid::Uuid::new_v5(&meta.key.id_seed(), b"payout-run");
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let run = payout_runs::create(
                    store,
                    &meta.command_meta(),
                    &RunRequest {
                        run_id,
                        program_id,
                        as_of,
                        partner_ids,
                    },
                )
                .await?;
                run_pb(&run)
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(run_id = %request.get_ref().run_id, partner_id = %request.get_ref().partner_id))]
    async fn settle_payout_item(
        &self,
        request: Request<pb::SettlePayoutItemRequest>,
    ) -> Result<Response<pb::PayoutItem>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let target = item_target(&mut v, &req.run_id, &req.partner_id, &req.currency);
        v.finish()?;
        let (Some(meta), Some((run_id, partner_id, currency))) = (meta, target) else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let store = self.store.as_ref();
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let (run, item) = payout_runs::end_item(
                    store,
                    &meta.command_meta(),
                    run_id,
                    partner_id,
                    currency,
                    None,
                )
                .await?;
                Ok(item_pb(&run, &item))
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(run_id = %request.get_ref().run_id, partner_id = %request.get_ref().partner_id))]
    async fn fail_payout_item(
        &self,
        request: Request<pb::FailPayoutItemRequest>,
    ) -> Result<Response<pb::PayoutItem>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let target = item_target(&mut v, &req.run_id, &req.partner_id, &req.currency);
        let reason = v.check(parse_text("reason", &req.reason, MAX_FAILURE_REASON_CHARS));
        v.finish()?;
        let (Some(meta), Some((run_id, partner_id, currency)), Some(reason)) =
            (meta, target, reason)
        else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let store = self.store.as_ref();
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let (run, item) = payout_runs::end_item(
                    store,
                    &meta.command_meta(),
                    run_id,
                    partner_id,
                    currency,
                    Some(reason),
                )
                .await?;
                Ok(item_pb(&run, &item))
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn get_payout_eligibility(
        &self,
        request: Request<pb::GetPayoutEligibilityRequest>,
    ) -> Result<Response<pb::PayoutEligibility>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let as_of = match &req.as_of {
            Some(t) => v.check(to_datetime("as_of", t)),
            None => v.check(Err(FieldViolation::new(
                "as_of",
                "required: eligibility is judged at a date, never the clock",
            ))),
        };
        v.finish()?;
        let (Some(partner_id), Some(as_of)) = (partner_id, as_of) else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let blockers: Vec<pb::SkipReason> = load::<crate::eligibility::Eligibility>(
            self.store.as_ref(),
            &crate::eligibility::stream(partner_id),
        )
        .await
        .map_err(domain("partner_id"))?
        .state
        .blockers(as_of)
        .iter()
        .map(|b| pb::SkipReason {
            code: b.code().to_owned(),
            detail: b.detail(),
        })
        .collect();
        Ok(Response::new(pb::PayoutEligibility {
            partner_id: partner_id.to_string(),
            eligible: blockers.is_empty(),
            blockers,
        }))
    }

    #[tracing::instrument(skip_all, fields(conversion_id = %request.get_ref().conversion_id, wait_ms = request.get_ref().wait_ms))]
    async fn get_conversion_accrual(
        &self,
        request: Request<pb::GetConversionAccrualRequest>,
    ) -> Result<Response<pb::ConversionAccrual>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let conversion_id = v.check(parse_uuid("conversion_id", &req.conversion_id));
        if req.wait_ms > visible::MAX_WAIT_MS {
            v.add(
                "wait_ms",
                format!(
                    "at most {} (milliseconds), got {}",
                    visible::MAX_WAIT_MS,
                    req.wait_ms
                ),
            );
        }
        v.finish()?;
        let Some(conversion_id) = conversion_id else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        if req.wait_ms == 0 {
            return Ok(Response::new(self.conversion_accrual(conversion_id).await?));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(u64::from(req.wait_ms));
        // Registered before the first read, so an accrual landing between that read and the
        // wait below still wakes this caller (its permit is kept).
        let waiter =
            self.caches
                .visible
                .register(conversion_id)
                .map_err(|e| ApiError::Exhausted {
                    what: e.to_string(),
                })?;
        loop {
            let answer = self.conversion_accrual(conversion_id).await?;
            let now = tokio::time::Instant::now();
            if answer.accrued || answer.refused || now >= deadline {
                return Ok(Response::new(answer));
            }
            // The signal covers this process's consumer; the periodic read covers another
            // replica's (or anything else that wrote the index without signalling here).
            let recheck = deadline.min(now + Duration::from_millis(visible::RECHECK_MS));
            tokio::select! {
                () = waiter.signalled() => {}
                () = tokio::time::sleep_until(recheck) => {}
            }
        }
    }

    #[tracing::instrument(skip_all, fields(run_id = %request.get_ref().run_id))]
    async fn get_payout_run(
        &self,
        request: Request<pb::GetPayoutRunRequest>,
    ) -> Result<Response<pb::PayoutRun>, Status> {
        let run_id = parse_uuid("run_id", &request.get_ref().run_id)
            .map_err(|fv| ApiError::InvalidArgument(vec![fv]))?;
        let run = load::<PayoutRun>(self.store.as_ref(), &payout::stream(run_id))
            .await
            .map_err(payout_runs::api)?
            .state;
        if run.opened.is_none() {
            return Err(ApiError::NotFound {
                what: "payout run",
                id: run_id.to_string(),
            }
            .into());
        }
        Ok(Response::new(run_pb(&run)?))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn get_statement(
        &self,
        request: Request<pb::GetStatementRequest>,
    ) -> Result<Response<pb::Statement>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let currency = v.check(currency("currency", &req.currency));
        let (from, to) = period(&mut v, req.from.as_ref(), req.to.as_ref()).unzip();
        v.finish()?;
        let (Some(partner_id), Some(currency), Some(from), Some(to)) =
            (partner_id, currency, from, to)
        else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let ledger = partner_ledger(self.store.as_ref(), partner_id).await?;
        let st = crate::reports::statement(&ledger, partner_id, currency, from, to).map_err(
            |e| match e {
                crate::reports::ReportError::TooManyEntries => ApiError::Exhausted {
                    what: e.to_string(),
                },
                crate::reports::ReportError::EmptyPeriod => ApiError::invalid("to", e.to_string()),
                crate::reports::ReportError::Ledger(e) => ApiError::internal(e),
                e @ crate::reports::ReportError::PlanMissing { .. } => ApiError::internal(e),
            },
        )?;
        Ok(Response::new(pb::Statement {
            partner_id: partner_id.to_string(),
            from: Some(to_timestamp(from)),
            to: Some(to_timestamp(to)),
            opening: Some(balance_pb(currency, &st.opening)),
            entries: st.entries.iter().map(entry_pb).collect(),
            closing: Some(balance_pb(currency, &st.closing)),
        }))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn list_recurring_shares(
        &self,
        request: Request<pb::ListRecurringSharesRequest>,
    ) -> Result<Response<pb::ListRecurringSharesResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let as_of = match &req.as_of {
            Some(t) => v.check(to_datetime("as_of", t)),
            None => v.check(Err(FieldViolation::new(
                "as_of",
                "required: shares are reported as of a date",
            ))),
        };
        v.finish()?;
        let (Some(partner_id), Some(as_of)) = (partner_id, as_of) else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let book =
            pl_runtime::aggregate::load::<Book>(self.store.as_ref(), &book::stream(partner_id))
                .await
                .map_err(book_error)?
                .state;
        // The plans that paid this partner a recurring share: their terms say when a share
        // ends. A book's accruals name few plans.
        let mut plans: std::collections::HashMap<uuid::Uuid, Plan> =
            std::collections::HashMap::new();
        for (accrual, _) in book.accruals.values() {
            let shares = accrual
                .lines
                .iter()
                .any(|l| l.formula.reward.is_recurring_share());
            if shares && !plans.contains_key(&accrual.plan_id) {
                let (plan, _) = self
                    .caches
                    .plans
                    .read(
                        self.store.as_ref(),
                        &setup::plan_stream(accrual.plan_id),
                        Clone::clone,
                    )
                    .await
                    .map_err(|e| match e {
                        ExecuteError::Store(e) => e.into(),
                        other => ApiError::internal(other),
                    })?;
                if !plan.0.is_empty() {
                    plans.insert(accrual.plan_id, plan);
                }
            }
        }
        let shares =
            crate::reports::recurring_shares(&book, as_of, &plans).map_err(ApiError::internal)?;
        let shares = shares
            .into_iter()
            .map(|s| pb::RecurringShare {
                customer_id: s.customer_id,
                plan_id: s.plan_id.to_string(),
                rule_id: s.rule_id,
                reward: format!("{:?}", s.reward),
                started_at: s.started_at.map(to_timestamp),
                ended_at: s.ended_at.map(to_timestamp),
                churned_at: s.churned_at.map(to_timestamp),
                share_to_date: Some(money_pb(s.share_to_date)),
                current_monthly_share: Some(money_pb(s.current_monthly_share)),
                last_invoice_at: Some(to_timestamp(s.last_invoice_at)),
            })
            .collect();
        Ok(Response::new(pb::ListRecurringSharesResponse { shares }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn get_program_report(
        &self,
        request: Request<pb::GetProgramReportRequest>,
    ) -> Result<Response<pb::ProgramReport>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let program_id = v.check(parse_uuid("program_id", &req.program_id));
        let (from, to) = period(&mut v, req.from.as_ref(), req.to.as_ref()).unzip();
        let campaign = if req.campaign_id.is_empty() {
            Some(None)
        } else {
            v.check(parse_uuid("campaign_id", &req.campaign_id))
                .map(Some)
        };
        if req.partner_type.len() > 64 {
            v.add("partner_type", "at most 64 characters");
        }
        v.finish()?;
        let (Some(program_id), Some(from), Some(to), Some(campaign)) =
            (program_id, from, to, campaign)
        else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let only_type = (!req.partner_type.is_empty()).then_some(req.partner_type.as_str());
        // Scans every partner book once, in log order; a persistent projection replaces this
        // when programs outgrow an on-demand scan.
        let mut report = crate::reports::ProgramReport::new(program_id, from, to)
            .campaign(campaign)
            .monthly(req.monthly);
        let mut books = pl_eventlog::Subscription::new(
            self.store.clone(),
            0,
            pl_eventlog::SubscriptionFilter::StreamPrefix("ledger-".into()),
        );
        loop {
            let batch = books.poll_batch().await.map_err(ApiError::from)?;
            if batch.is_empty() {
                break;
            }
            for recorded in &batch {
                let event: BookEvent = decode_event(recorded).map_err(ApiError::internal)?;
                report.apply(&event).map_err(|e| ApiError::Exhausted {
                    what: e.to_string(),
                })?;
            }
        }
        let mut types = std::collections::BTreeMap::new();
        let partners: Vec<uuid::Uuid> = {
            let rows = report.partners();
            rows.into_iter().collect()
        };
        for p in partners {
            let account = load::<Account>(self.store.as_ref(), &domain::stream(p))
                .await
                .map_err(to_api)?;
            types.insert(p, account.state.0.and_then(|o| o.partner_type));
        }
        let rows = report
            .finish(|p| types.get(&p).cloned().flatten(), only_type)
            .into_iter()
            .map(|r| {
                let total_cost = r
                    .total_cost()
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                Ok(pb::ProgramReportRow {
                    partner_id: r.partner_id.to_string(),
                    partner_type: r.partner_type.clone().unwrap_or_default(),
                    campaign_id: r.campaign_id.map(|c| c.to_string()).unwrap_or_default(),
                    period_start: Some(to_timestamp(r.period_start)),
                    currency: r.currency.code().to_owned(),
                    conversions: r.conversions.to_string(),
                    attributed_revenue: r.attributed_revenue.amount().to_string(),
                    commission_cost: r.commission_cost.amount().to_string(),
                    effective_cpa: r
                        .effective_cpa()
                        .map(|d| d.round_dp(4).to_string())
                        .unwrap_or_default(),
                    revenue_per_commission: r
                        .revenue_per_commission()
                        .map(|d| d.round_dp(4).to_string())
                        .unwrap_or_default(),
                    campaign_fees: r.campaign_fees.amount().to_string(),
                    campaign_bonuses: r.campaign_bonuses.amount().to_string(),
                    mdf_reimbursements: r.mdf_reimbursements.amount().to_string(),
                    adjustments: r.adjustments.amount().to_string(),
                    total_cost: total_cost.amount().to_string(),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(Response::new(pb::ProgramReport {
            program_id: program_id.to_string(),
            rows,
        }))
    }
}
