//! `make bench` (commissions): attributed conversions accrued through the service layer on the
//! embedded log, and every partner's balances rebuilt from a 1M-event log into one `Ledger`.
//! Prints one table; numbers are for issue notes, never a pass/fail test.
//!
//! 1. Accruals: a plan (10% of gross, one 2% override level) is published and assigned over the
//!    service's gRPC implementation to `BENCH_PARTNERS` partners (default 1,000), each with a
//!    parent of its own (the parents are assigned the plan too, without a parent). Then
//!    `BENCH_CONVERSIONS` (default 50,000) `ConversionAttributed` messages, round-robin over the
//!    partners, go through `consumer::handle_batch` from `BENCH_WORKERS` (default 64) tokio
//!    tasks in batches of `BENCH_BATCH` (default 64; what a consumer lane hands over when that
//!    many messages of its key are queued), each task owning its partners and their parents, so
//!    no two tasks touch one stream. The store is wrapped in a counter (a few atomic adds per
//!    call) to report what one message costs. The plan pays no recurring share, so no customer
//!    is credited (`accruals::credit_needed`); the same messages are then accrued again, into a
//!    log of their own, under a lifetime recurring share paying the same 10%, where each new
//!    customer is credited as well (one append more).
//! 2. Rebuild: `BENCH_REBUILD_EVENTS` (default 1,000,000) book events decided by the `Book`
//!    aggregate (accruals, overrides, and a 50% refund of every tenth conversion with its override
//!    reversal) across 10,000 partner streams (1,000 parents with 9 partners each), one business
//!    day per round. Then every partner's balances, twice on one thread: as `GetBalances` folds
//!    a book (read_all from 0, each event's postings alone, one `pl_ledger::BalanceFold`), and
//!    with their explanations (decode every `BookEvent` whole, apply its transactions to one
//!    `pl_ledger::Ledger`); the two must agree. Peak RSS is VmHWM, reset through
//!    /proc/self/clear_refs just before each. And every book folded into its `Book` state, all
//!    held at once as the book cache holds them: resident bytes per event folded (what
//!    `--cache-events` bounds).
//! 3. Audit on the same log: every balance replayed three times by `pl_audit::replay`'s
//!    one-pass fold (what `audit replay` runs: postings only, on every core, no transactions
//!    kept; median, range and peak RSS reported), then one `audit verify` of every hash chain
//!    and a signed seal.
//!
//! `BENCH_DIR` holds the data (default a temporary directory under /var/tmp);
//! `BENCH_SYNC_LINGER_US` sets the accrual logs' `EmbeddedOptions::sync_linger_us` (default:
//! the services' default, off).

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::float_arithmetic
)] // timing code
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark fails loudly

use pl_bench_support::{cpu_time, env_num, fmt_rate, machine, status_kb};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use hdrhistogram::Histogram;
use pl_bus::Message;
use pl_commission_engine::{
    Base, Conditions, ConversionFacts, ConversionKind, LineKind, NetRevenuePolicy, Percent,
    PlanVersion, RecurringDuration, Reward, Rule, ScheduleStep, VersionPolicy,
};
use pl_commissions::book::{self, Book, BookCommand, BookEvent};
use pl_commissions::book_codec;
use pl_commissions::CommissionsService;
use pl_eventlog::{
    AppendResult, EmbeddedLog, EmbeddedOptions, EventMetadata, EventStore, ExpectedVersion, Limits,
    LogError, NewEvent, RecordedEvent, SharedStore,
};
use pl_ledger::{AsOf, Ledger, RecordedTransaction};
use pl_money::{Currency, Decimal, Money};
use pl_proto::commissions::v1 as pb;
use pl_proto::commissions::v1::commissions_service_server::CommissionsService as Api;
use pl_proto::common::v1::RequestContext;
use pl_runtime::aggregate::{decode_event, encode_event};
use pl_runtime::{Aggregate, DomainEvent, FixedClock};
use tonic::Request;
use uuid::Uuid;

const PLAN: Uuid = Uuid::from_u128(0xb1);
const PROGRAM: Uuid = Uuid::from_u128(0xc1);

fn at(month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, month, day, 12, 0, 0).unwrap()
}

fn plan() -> PlanVersion {
    PlanVersion {
        plan_id: PLAN,
        version: 1,
        effective_from: at(1, 1),
        payout_currency: Currency::USD,
        hold_days: 30,
        minimum_payout: Money::from_minor_units(5000, Currency::USD),
        version_policy: VersionPolicy::Grandfathered,
        net_revenue_policy: NetRevenuePolicy::CarryForwardNegative,
        cpa_recovery: false,
        overrides: vec![Percent::new(2).unwrap()],
        rules: vec![Rule {
            id: "sales".into(),
            conditions: Conditions::default(),
            reward: Reward::PercentOfGross(Percent::new(10).unwrap()),
            cap_per_conversion: None,
            cap_per_period: None,
        }],
    }
}

/// The same terms as a lifetime revenue share: 10% of every invoice from the customer's first
/// (a sale is one), so every accrual pays what [`plan`]'s does, and each new customer is
/// credited (the stream a churn reads).
fn recurring_plan() -> PlanVersion {
    let mut p = plan();
    p.rules[0].reward = Reward::Recurring {
        schedule: vec![ScheduleStep {
            from_month: 1,
            to_month: None,
            percent: Percent::new(10).unwrap(),
        }],
        duration: RecurringDuration::Lifetime,
        of: Base::Gross,
    };
    p
}

/// Ids of distinct kinds never collide: the tag is the top byte.
fn id(tag: u8, n: u128) -> Uuid {
    Uuid::from_u128((u128::from(tag) << 120) | n)
}

// ----- a store that counts what the service asks of it ---------------------------------------

#[derive(Debug, Default)]
struct Counters {
    appends: AtomicU64,
    append_ns: AtomicU64,
    reads: AtomicU64,
    read_ns: AtomicU64,
    events_read: AtomicU64,
}

#[derive(Debug)]
struct Counting {
    inner: Arc<EmbeddedLog>,
    c: Arc<Counters>,
}

fn add_ns(counter: &AtomicU64, since: Instant) {
    counter.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

#[async_trait]
impl EventStore for Counting {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, LogError> {
        let t = Instant::now();
        let r = self.inner.append(stream, expected, events).await;
        add_ns(&self.c.append_ns, t);
        self.c.appends.fetch_add(1, Ordering::Relaxed);
        r
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let t = Instant::now();
        let r = self.inner.read_stream(stream, from_version, limit).await;
        add_ns(&self.c.read_ns, t);
        self.c.reads.fetch_add(1, Ordering::Relaxed);
        if let Ok(page) = &r {
            self.c
                .events_read
                .fetch_add(page.len() as u64, Ordering::Relaxed);
        }
        r
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        self.inner.read_all(from_position, limit).await
    }

    async fn stream_version(&self, stream: &str) -> Result<Option<u64>, LogError> {
        self.inner.stream_version(stream).await
    }

    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_head()
    }

    fn limits(&self) -> Limits {
        self.inner.limits()
    }
}

// ----- 1. accruals through the service layer --------------------------------------------------

fn ctx(key: String) -> Option<RequestContext> {
    Some(RequestContext {
        idempotency_key: key,
        occurred_at: Some(prost_types::Timestamp {
            seconds: at(1, 1).timestamp(),
            nanos: 0,
        }),
        correlation_id: String::new(),
    })
}

fn conversion_message(j: u64, partner: Uuid) -> Message {
    let event_id = id(6, u128::from(j));
    let data = serde_json::json!({
        "conversion_id": id(7, u128::from(j)), "program_id": PROGRAM,
        "kind": "CONVERSION_KIND_SALE", "customer_id": format!("cust-{j}"),
        "gross": { "amount": "100.00", "currency": "USD" }, "occurred_at": at(1, 10),
        "shares": [{ "partner_id": partner, "weight": "1" }],
    });
    let envelope = serde_json::json!({
        "id": event_id, "type": "ConversionAttributed", "schema_version": 1,
        "stream": format!("conversion-{}", id(7, u128::from(j))), "version": 0, "position": j,
        "occurred_at": at(1, 10), "recorded_at": at(1, 10),
        "correlation_id": null, "causation_id": null, "data": data,
    });
    Message {
        id: event_id,
        subject: "pl.attribution.ConversionAttributed".into(),
        payload: bytes::Bytes::from(serde_json::to_vec(&envelope).unwrap()),
        headers: BTreeMap::new(),
    }
}

/// Partner CRM's `PartnerParentChanged` for `partner`, from January 1st.
fn parent_message(partner: Uuid, parent: Uuid) -> Message {
    let event_id = Uuid::new_v5(&partner, b"parent");
    let data = serde_json::json!({
        "partner_id": partner, "program_id": PROGRAM,
        "parent_partner_id": parent, "occurred_at": at(1, 1),
    });
    let envelope = serde_json::json!({
        "id": event_id, "type": "PartnerParentChanged", "schema_version": 1,
        "stream": format!("partner-hierarchy-{PROGRAM}"), "version": 0, "position": 0,
        "occurred_at": at(1, 1), "recorded_at": at(1, 1),
        "correlation_id": null, "causation_id": null, "data": data,
    });
    Message {
        id: event_id,
        subject: "pl.crm.PartnerParentChanged".into(),
        payload: bytes::Bytes::from(serde_json::to_vec(&envelope).unwrap()),
        headers: BTreeMap::new(),
    }
}

/// One worker's partners: `(partner, its parent)`. Each partner has a parent of its own (one
/// override level); the parents have none.
fn worker_partners(partners: u64, workers: u64) -> Vec<Vec<(Uuid, Uuid)>> {
    (0..workers)
        .map(|w| {
            (0..partners)
                .filter(|i| i % workers == w)
                .map(|i| (id(1, u128::from(i)), id(2, u128::from(i))))
                .collect()
        })
        .collect()
}

struct AccrualStats {
    setup: Duration,
    assignments: u64,
    messages: u64,
    elapsed: Duration,
    cpu: Duration,
    hist: Histogram<u64>,
    appends: u64,
    append_wait: Duration,
    reads: u64,
    read_wait: Duration,
    events_read: u64,
}

async fn accruals(
    dir: &std::path::Path,
    plan: &PlanVersion,
    partners: u64,
    conversions: u64,
    workers: u64,
    batch: usize,
) -> AccrualStats {
    let options = EmbeddedOptions {
        sync_linger_us: env_num("BENCH_SYNC_LINGER_US", pl_eventlog::DEFAULT_SYNC_LINGER_US),
        ..EmbeddedOptions::default()
    };
    let log = Arc::new(EmbeddedLog::open(dir, options).unwrap());
    let counters = Arc::new(Counters::default());
    let store: SharedStore = Arc::new(Counting {
        inner: log.clone(),
        c: counters.clone(),
    });
    let api = Arc::new(CommissionsService::new(
        store.clone(),
        Arc::new(FixedClock::at(at(1, 1))),
    ));

    let setup_started = Instant::now();
    api.publish_plan_version(Request::new(pb::PublishPlanVersionRequest {
        context: ctx("plan-1".into()),
        plan_id: PLAN.to_string(),
        plan_json: serde_json::to_string(plan).unwrap(),
    }))
    .await
    .unwrap();
    let groups = Arc::new(worker_partners(partners, workers));
    let assignments = 2 * partners;
    let tasks: Vec<_> = (0..groups.len())
        .map(|w| {
            let (api, groups, store) = (api.clone(), groups.clone(), store.clone());
            tokio::spawn(async move {
                let mine = &groups[w];
                let all = mine
                    .iter()
                    .map(|(_, p)| (*p, None))
                    .chain(mine.iter().map(|(c, p)| (*c, Some(*p))));
                for (partner, parent) in all {
                    api.assign_plan(Request::new(pb::AssignPlanRequest {
                        context: ctx(format!("assign-{partner}")),
                        partner_id: partner.to_string(),
                        plan_id: PLAN.to_string(),
                        effective_from: Some(prost_types::Timestamp {
                            seconds: at(1, 1).timestamp(),
                            nanos: 0,
                        }),
                        ..Default::default()
                    }))
                    .await
                    .unwrap();
                    // The parent, as partner CRM reports it.
                    if let Some(parent) = parent {
                        let m = parent_message(partner, parent);
                        pl_commissions::consumer::handle(store.as_ref(), &api.caches(), m)
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let setup = setup_started.elapsed();

    // Conversion j is credited to partner j mod N; each worker gets the messages of its own.
    let mut queues: Vec<Vec<Message>> = (0..workers).map(|_| Vec::new()).collect();
    for j in 0..conversions {
        let i = j % partners;
        let w = (i % workers) as usize;
        let (partner, _) = groups[w][(i / workers) as usize];
        queues[w].push(conversion_message(j, partner));
    }
    let before = (
        counters.appends.load(Ordering::Relaxed),
        counters.append_ns.load(Ordering::Relaxed),
        counters.reads.load(Ordering::Relaxed),
        counters.read_ns.load(Ordering::Relaxed),
        counters.events_read.load(Ordering::Relaxed),
    );

    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let cpu_before = cpu_time();
    let started = Instant::now();
    let tasks: Vec<_> = queues
        .into_iter()
        .map(|queue| {
            let (store, hist, caches) = (store.clone(), hist.clone(), api.caches());
            tokio::spawn(async move {
                let mut local = Histogram::<u64>::new(3).unwrap();
                let mut queue = queue.into_iter().peekable();
                while queue.peek().is_some() {
                    let batch: Vec<Message> = queue.by_ref().take(batch).collect();
                    let t = Instant::now();
                    let outcomes =
                        pl_commissions::consumer::handle_batch(store.as_ref(), &caches, &batch)
                            .await;
                    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
                    // Each message of a batch is done when its batch is.
                    local
                        .record_n(t.elapsed().as_micros() as u64, outcomes.len() as u64)
                        .unwrap();
                }
                hist.lock().unwrap().add(&local).unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);

    // The books hold what was sent: 10% for the partner, 2% for its parent, per 100.00 sale.
    let count_of = |i: u64| conversions / partners + u64::from(i < conversions % partners);
    let balance = |partner: Uuid| {
        let api = api.clone();
        async move {
            let b = api
                .get_balances(Request::new(pb::GetBalancesRequest {
                    partner_id: partner.to_string(),
                    as_of: None,
                }))
                .await
                .unwrap()
                .into_inner();
            b.currencies
                .first()
                .map(|c| c.pending.clone())
                .unwrap_or_default()
        }
    };
    let cents = |c: u64| format!("{}.{:02}", c / 100, c % 100);
    let (first, parent) = groups[0][0];
    assert_eq!(balance(first).await, cents(1000 * count_of(0)));
    assert_eq!(balance(parent).await, cents(200 * count_of(0)));

    let hist = hist.lock().unwrap().clone();
    let stats = AccrualStats {
        setup,
        assignments,
        messages: conversions,
        elapsed,
        cpu,
        hist,
        appends: counters.appends.load(Ordering::Relaxed) - before.0,
        append_wait: Duration::from_nanos(counters.append_ns.load(Ordering::Relaxed) - before.1),
        reads: counters.reads.load(Ordering::Relaxed) - before.2,
        read_wait: Duration::from_nanos(counters.read_ns.load(Ordering::Relaxed) - before.3),
        events_read: counters.events_read.load(Ordering::Relaxed) - before.4,
    };
    drop(api);
    drop(store);
    log.close().unwrap();
    stats
}

// ----- 2. rebuild of every balance from a 1M-event log ----------------------------------------

const REBUILD_GROUPS: u64 = 1000;
/// Partners under one parent in the rebuild log.
const CHILDREN_PER_PARENT: u64 = 9;
/// Conversions per partner per round (business day); every tenth is half refunded.
const CONVERSIONS_PER_ROUND: u64 = 20;
const EVENTS_PER_GROUP_ROUND: u64 =
    CHILDREN_PER_PARENT * (CONVERSIONS_PER_ROUND + CONVERSIONS_PER_ROUND / 10) * 2;

fn rebuild_partner(group: u64, member: u64) -> Uuid {
    id(3, (u128::from(group) << 8) | u128::from(member))
}

fn new_event(tag: u8, n: u128, event: &BookEvent, occurred_at: DateTime<Utc>) -> NewEvent {
    let (event_type, data) = encode_event(event).unwrap();
    NewEvent {
        id: id(tag, n),
        event_type,
        schema_version: event.schema_version(),
        data,
        metadata: EventMetadata::at(occurred_at),
    }
}

/// One round of one group, decided by the book aggregate: `(stream, events)` per append.
fn group_round(plan: &PlanVersion, group: u64, round: u64) -> Vec<(String, Vec<NewEvent>)> {
    let occurred_at = at(1, 1) + chrono::Duration::days(round as i64);
    let parent = rebuild_partner(group, 0);
    let mut parent_events = Vec::new();
    let mut batches = Vec::new();
    for member in 1..=CHILDREN_PER_PARENT {
        let partner = rebuild_partner(group, member);
        let mut events = Vec::new();
        for k in 0..CONVERSIONS_PER_ROUND {
            let n = (u128::from(group) << 64)
                | (u128::from(round) << 32)
                | (u128::from(member) << 16)
                | u128::from(k);
            let conversion_id = id(10, n);
            let source_event_id = id(11, n);
            let facts = ConversionFacts {
                conversion_id,
                source_event_id,
                kind: ConversionKind::Sale,
                occurred_at,
                customer_id: format!("cust-{group}-{member}-{round}-{k}"),
                customer_country: None,
                products: vec![],
                gross: Some(Money::from_minor_units(
                    10_000 + i64::try_from(k).unwrap() * 100,
                    Currency::USD,
                )),
                net: None,
                lots: None,
                reseller: None,
                partner_id: partner,
                partner_tier: None,
                weight: Decimal::ONE,
                split: None,
                brand: None,
                upline: vec![parent],
                fx_rate: None,
            };
            let accrue = BookCommand::Accrue {
                program_id: PROGRAM,
                hierarchy_version: Some(0),
                campaign_id: None,
                facts,
                versions: vec![plan.clone()].into(),
            };
            let accrued = Book::decide(&Book::default(), &accrue).unwrap().remove(0);
            let BookEvent::ConversionAccrued {
                accrual, hold_days, ..
            } = &accrued
            else {
                panic!("expected an accrual")
            };
            let line = accrual
                .lines
                .iter()
                .find(|l| matches!(l.kind, LineKind::Override { .. }))
                .unwrap()
                .clone();
            let over = BookCommand::AccrueOverride {
                program_id: PROGRAM,
                conversion_id,
                from_partner: partner,
                occurred_at,
                hold_days: *hold_days,
                line,
                source_event_id,
                hierarchy_version: Some(0),
            };
            let overridden = Book::decide(&Book::default(), &over).unwrap().remove(0);
            events.push(new_event(12, n, &accrued, occurred_at));
            parent_events.push(new_event(13, n, &overridden, occurred_at));
            if k % 10 == 9 {
                let (reversal_id, source_event_id) = (id(14, n), id(15, n));
                let reverse = BookCommand::Reverse {
                    reversal_id,
                    conversion_id,
                    fraction: Decimal::new(5, 1),
                    occurred_at,
                    source_event_id,
                };
                let book = Book::evolve(Book::default(), &accrued);
                let reversed = Book::decide(&book, &reverse).unwrap().remove(0);
                let BookEvent::ConversionReversed { reversal, .. } = &reversed else {
                    panic!("expected a reversal")
                };
                let (amount, level) = reversal
                    .lines
                    .iter()
                    .find_map(|l| match l.kind {
                        LineKind::Override { level } => Some((l.amount, level)),
                        _ => None,
                    })
                    .unwrap();
                let reverse_override = BookCommand::ReverseOverride {
                    reversal_id,
                    conversion_id,
                    from_partner: partner,
                    level,
                    amount,
                    occurred_at,
                    source_event_id,
                };
                let parent_book = Book::evolve(Book::default(), &overridden);
                let override_reversed = Book::decide(&parent_book, &reverse_override)
                    .unwrap()
                    .remove(0);
                events.push(new_event(16, n, &reversed, occurred_at));
                parent_events.push(new_event(17, n, &override_reversed, occurred_at));
            }
        }
        batches.push((book::stream(partner), events));
    }
    batches.push((book::stream(parent), parent_events));
    batches
}

/// Appends the book events of `group_rounds` group-rounds, one business day per round; a
/// barrier between rounds keeps the log in business-date order, as a live log nearly is.
async fn fill(dir: &std::path::Path, group_rounds: u64) -> Duration {
    const WRITERS: u64 = 8;
    let log = Arc::new(EmbeddedLog::open(dir, EmbeddedOptions::default()).unwrap());
    let plan = Arc::new(plan());
    let rounds = group_rounds.div_ceil(REBUILD_GROUPS);
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS as usize));
    let started = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (log, plan, barrier) = (log.clone(), plan.clone(), barrier.clone());
            tokio::spawn(async move {
                for round in 0..rounds {
                    let mine: Vec<u64> = (0..REBUILD_GROUPS)
                        .filter(|g| g % WRITERS == w && round * REBUILD_GROUPS + g < group_rounds)
                        .collect();
                    for group in mine {
                        let plan = plan.clone();
                        let batches =
                            tokio::task::spawn_blocking(move || group_round(&plan, group, round))
                                .await
                                .unwrap();
                        let mut appends = tokio::task::JoinSet::new();
                        for (stream, events) in batches {
                            let log = log.clone();
                            appends.spawn(async move {
                                let mut events = events;
                                while !events.is_empty() {
                                    let rest = events.split_off(events.len().min(500));
                                    log.append(&stream, ExpectedVersion::Any, events)
                                        .await
                                        .unwrap();
                                    events = rest;
                                }
                            });
                        }
                        while let Some(r) = appends.join_next().await {
                            r.unwrap();
                        }
                    }
                    barrier.wait().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    log.close().unwrap();
    took
}

struct RebuildStats {
    events: u64,
    transactions: u64,
    /// Bytes of event data decoded.
    bytes: u64,
    partners: usize,
    total: Duration,
    read: Duration,
    decode: Duration,
    apply: Duration,
    balances: Duration,
    reopen: Duration,
    rss_before_kb: u64,
    rss_opened_kb: u64,
    hwm_kb: u64,
    /// Events decoded two ways, and the time whole events and their postings alone took.
    decode_sample: (u64, Duration, Duration),
    fold: FoldStats,
    /// Books held: (books, events folded into them, resident kB they added).
    books_held: (usize, u64, u64),
}

/// Every book of the log folded into its `Book` state, all held at once, as the service's book
/// cache holds them: how many resident bytes a cached book costs per event folded into it
/// (what `pl_runtime::DEFAULT_CACHED_EVENTS` bounds).
async fn books_held(log: &EmbeddedLog) -> (usize, u64, u64) {
    let rss_before_kb = status_kb("VmRSS:");
    let mut books: std::collections::HashMap<String, Book> = std::collections::HashMap::new();
    let mut position = 0u64;
    let mut read = Duration::ZERO;
    loop {
        let page = next_page(log, &mut position, &mut read).await;
        if page.is_empty() {
            break;
        }
        for recorded in &page {
            let event: BookEvent = decode_event(recorded).unwrap();
            let book = books.entry(recorded.stream.clone()).or_default();
            *book = Book::evolve(std::mem::take(book), &event);
        }
    }
    let held_kb = status_kb("VmRSS:").saturating_sub(rss_before_kb);
    assert!(books.values().all(|b| b.broken.is_none()));
    (books.len(), position, held_kb)
}

/// Every balance folded from postings alone, as `GetBalances` folds one partner's book.
struct FoldStats {
    transactions: u64,
    total: Duration,
    read: Duration,
    /// Peak RSS above the opened log, kB.
    above_log_kb: u64,
    balances: Vec<pl_ledger::PartnerBalances>,
}

/// The next page of the whole log from `*position` on (empty at its end), moving `position`
/// past it and adding its read time to `read`.
async fn next_page(
    log: &EmbeddedLog,
    position: &mut u64,
    read: &mut Duration,
) -> Vec<RecordedEvent> {
    let t = Instant::now();
    let page = log.read_all(*position, 4096).await.unwrap();
    *read += t.elapsed();
    if let Some(last) = page.last() {
        *position = last.position + 1;
    }
    page
}

/// Every partner's balances as `GetBalances` computes one partner's (postings alone, read by
/// `book_codec::postings_of_any`, folded into a `BalanceFold`), over the whole log on one thread.
async fn fold_balances(log: &EmbeddedLog) -> FoldStats {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let rss_before_kb = status_kb("VmRSS:");
    let started = Instant::now();
    let mut read = Duration::ZERO;
    let mut fold = pl_ledger::BalanceFold::new(AsOf::Latest);
    let mut position = 0u64;
    loop {
        let page = next_page(log, &mut position, &mut read).await;
        if page.is_empty() {
            break;
        }
        for recorded in &page {
            for p in book_codec::postings_of_any(recorded).unwrap() {
                fold.apply(recorded.position, recorded.recorded_at, p.as_ref())
                    .unwrap();
            }
        }
    }
    let partners: Vec<Uuid> = fold.partners().collect();
    let balances = partners
        .iter()
        .map(|p| fold.balances_of_partner(*p).unwrap())
        .collect();
    let total = started.elapsed();
    FoldStats {
        transactions: fold.len(),
        total,
        read,
        above_log_kb: status_kb("VmHWM:").saturating_sub(rss_before_kb),
        balances,
    }
}

/// Decodes the first `events` book events whole (`decode_event`, what the service reads) and
/// their postings alone (`book_codec::postings`, what a replay of balances reads), checking
/// they agree.
async fn decode_sample(log: &EmbeddedLog, events: u64) -> (u64, Duration, Duration) {
    let (mut n, mut whole, mut postings) = (0u64, Duration::ZERO, Duration::ZERO);
    while n < events {
        let page = log.read_all(n, 4096).await.unwrap();
        if page.is_empty() {
            break;
        }
        n += page.len() as u64;
        let t = Instant::now();
        let a: Vec<BookEvent> = page.iter().map(|r| decode_event(r).unwrap()).collect();
        whole += t.elapsed();
        let t = Instant::now();
        let b: Vec<Vec<book_codec::Postings>> = page
            .iter()
            .map(|r| book_codec::postings(r).unwrap().unwrap())
            .collect();
        postings += t.elapsed();
        assert!(a.iter().zip(&b).all(|(a, b)| {
            a.transactions().len() == b.len()
                && a.transactions()
                    .iter()
                    .zip(b)
                    .all(|(t, p)| t.id() == p.id && t.transfers() == p.transfers.as_slice())
        }));
    }
    (n, whole, postings)
}

async fn rebuild(dir: &std::path::Path) -> RebuildStats {
    // Peak RSS from here on: what the rebuild itself holds (the log's index included).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let rss_before_kb = status_kb("VmRSS:");
    let t = Instant::now();
    let log = EmbeddedLog::open(dir, EmbeddedOptions::default()).unwrap();
    let reopen = t.elapsed();
    let rss_opened_kb = status_kb("VmRSS:");
    let fold = fold_balances(&log).await;
    // Before the whole decode below, whose freed memory the allocator may keep and reuse.
    let books_held = books_held(&log).await;

    // The whole decode's peak from here on (the log's index is loaded already).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let started = Instant::now();
    let (mut read, mut decode, mut apply) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut ledger = Ledger::new();
    let mut partners = BTreeSet::new();
    let mut last_stream = String::new();
    let mut position = 0u64;
    let mut transactions = 0u64;
    let mut bytes = 0u64;
    loop {
        let page = next_page(&log, &mut position, &mut read).await;
        if page.is_empty() {
            break;
        }

        // What `ExplainBalance` and statements read of each event.
        let t = Instant::now();
        let decoded: Vec<Vec<RecordedTransaction>> = page
            .iter()
            .map(|recorded| book_codec::recorded_transactions(recorded).unwrap())
            .collect();
        decode += t.elapsed();

        let t = Instant::now();
        for (recorded, event_transactions) in page.iter().zip(&decoded) {
            bytes += recorded.data.len() as u64;
            if recorded.stream != last_stream {
                let partner = recorded.stream.strip_prefix("ledger-").unwrap();
                partners.insert(Uuid::parse_str(partner).unwrap());
                last_stream.clone_from(&recorded.stream);
            }
            for t in event_transactions {
                ledger.apply(t).unwrap();
                transactions += 1;
            }
        }
        apply += t.elapsed();
    }
    let t = Instant::now();
    let mut pending = 0i128;
    for partner in &partners {
        let b = ledger.balances_of_partner(*partner, AsOf::Latest).unwrap();
        let usd = &b.currencies[&Currency::USD];
        pending += i128::from(usd.pending.to_minor_units().unwrap());
    }
    let balances = t.elapsed();
    let total = started.elapsed();
    let hwm_kb = status_kb("VmHWM:");
    assert!(pending > 0);
    assert_eq!(ledger.len() as u64, transactions);
    assert_eq!(fold.transactions, transactions);
    assert_eq!(fold.balances.len(), partners.len());
    for b in &fold.balances {
        assert_eq!(
            *b,
            ledger
                .balances_of_partner(b.partner_id, AsOf::Latest)
                .unwrap(),
            "the fold's balances are the ledger's"
        );
    }
    drop(ledger);
    let decode_sample = decode_sample(&log, 200_000).await;
    log.close().unwrap();
    RebuildStats {
        books_held,
        events: position,
        transactions,
        bytes,
        partners: partners.len(),
        total,
        read,
        decode,
        apply,
        balances,
        reopen,
        rss_before_kb,
        rss_opened_kb,
        hwm_kb,
        decode_sample,
        fold,
    }
}

// ----- the table ------------------------------------------------------------------------------

fn share(part: Duration, whole: Duration) -> String {
    format!(
        "{:.1} s ({:.0}%)",
        part.as_secs_f64(),
        100.0 * part.as_secs_f64() / whole.as_secs_f64().max(1e-9)
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; there is nothing to filter.
    let conversions = env_num("BENCH_CONVERSIONS", 50_000);
    let partners = env_num("BENCH_PARTNERS", 1000).max(1);
    let workers = env_num("BENCH_WORKERS", 64).clamp(1, partners);
    let batch =
        env_num("BENCH_BATCH", 64).clamp(1, pl_commissions::consumer::MAX_BATCH as u64) as usize;
    let rebuild_events = env_num("BENCH_REBUILD_EVENTS", 1_000_000);
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::tempdir_in(&base).unwrap();
    let dir = tmp.path();
    println!(
        "commissions benchmark on {} (data in {}; accrual logs' sync linger {} µs)",
        machine(),
        dir.display(),
        env_num("BENCH_SYNC_LINGER_US", pl_eventlog::DEFAULT_SYNC_LINGER_US)
    );

    let mut rows: Vec<(String, String, String)> = Vec::new();
    let a = accruals(
        &dir.join("accruals"),
        &plan(),
        partners,
        conversions,
        workers,
        batch,
    )
    .await;
    // The same conversions under a recurring share: each new customer credited as well.
    let recurring = accruals(
        &dir.join("accruals-recurring"),
        &recurring_plan(),
        partners,
        conversions,
        workers,
        batch,
    )
    .await;
    let per_msg = |n: u64| format!("{:.1}", n as f64 / a.messages as f64);
    let mean_us = |d: Duration, n: u64| d.as_micros() as f64 / n.max(1) as f64;
    rows.push((
        format!(
            "ConversionAttributed accrued/s through consumer::handle_batch, {conversions} messages, {partners} partners, {workers} workers, batches of {batch}"
        ),
        fmt_rate(a.messages as f64 / a.elapsed.as_secs_f64()),
        "target >= 50k/s on 2 cores".into(),
    ));
    rows.push((
        "latency per message (its batch's) p50 / p99 / max".into(),
        format!(
            "{} / {} / {} us",
            a.hist.value_at_quantile(0.50),
            a.hist.value_at_quantile(0.99),
            a.hist.max()
        ),
        String::new(),
    ));
    rows.push((
        "CPU per accrual (user + system, all threads)".into(),
        format!(
            "{:.0} us",
            a.cpu.as_micros() as f64 / a.messages.max(1) as f64
        ),
        format!(
            "{:.2} of {} cores busy",
            a.cpu.as_secs_f64() / a.elapsed.as_secs_f64(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
    ));
    rows.push((
        "store calls per accrual: appends / stream reads / events replayed".into(),
        format!(
            "{} / {} / {}",
            per_msg(a.appends),
            per_msg(a.reads),
            per_msg(a.events_read)
        ),
        "books, plans, assignments and fx rates are cached; each use catches up with one read"
            .into(),
    ));
    rows.push((
        "mean wait per append (durable, group commit) / per stream read".into(),
        format!(
            "{:.0} us / {:.0} us",
            mean_us(a.append_wait, a.appends),
            mean_us(a.read_wait, a.reads)
        ),
        String::new(),
    ));
    rows.push((
        "the same under a lifetime recurring share (10% from month 1): accrued/s, CPU per accrual, appends per accrual".into(),
        format!(
            "{} / {:.0} us / {:.1}",
            fmt_rate(recurring.messages as f64 / recurring.elapsed.as_secs_f64()),
            recurring.cpu.as_micros() as f64 / recurring.messages.max(1) as f64,
            recurring.appends as f64 / recurring.messages.max(1) as f64
        ),
        "each new customer is credited too (the stream a churn reads): one append more".into(),
    ));
    rows.push((
        format!(
            "setup: plan assignments/s through the gRPC service, {} assignments",
            a.assignments
        ),
        fmt_rate(a.assignments as f64 / a.setup.as_secs_f64()),
        String::new(),
    ));

    let group_rounds = rebuild_events.div_ceil(EVENTS_PER_GROUP_ROUND).max(1);
    let fill_took = fill(&dir.join("rebuild"), group_rounds).await;
    let r = rebuild(&dir.join("rebuild")).await;
    let per_sec = |d: Duration| r.events as f64 / d.as_secs_f64();
    rows.push((
        format!(
            "rebuild every balance as GetBalances folds one: read_all, postings alone, one BalanceFold, balances of {} partners; {} events, one thread",
            r.partners, r.events
        ),
        fmt_rate(per_sec(r.fold.total)),
        format!(
            "read_all {}; peak RSS {} MB above the opened log; equal to the Ledger's below; target >= 1M events/s on 2 cores",
            share(r.fold.read, r.fold.total),
            r.fold.above_log_kb / 1024
        ),
    ));
    rows.push((
        format!(
            "rebuild every balance with its explanations (what ExplainBalance and statements read): read_all, decode whole, apply to one Ledger, balances of {} partners",
            r.partners
        ),
        fmt_rate(per_sec(r.total)),
        String::new(),
    ));
    rows.push((
        "rebuild time: read_all / decode whole (book_codec::recorded_transactions) / Ledger::apply / balances".into(),
        format!(
            "{} / {} / {} / {}",
            share(r.read, r.total),
            share(r.decode, r.total),
            share(r.apply, r.total),
            share(r.balances, r.total)
        ),
        format!(
            "{} transactions; {} bytes per event; decode alone {}",
            r.transactions,
            r.bytes / r.events.max(1),
            fmt_rate(per_sec(r.decode))
        ),
    ));
    rows.push((
        "rebuild with explanations, peak RSS (VmHWM, reset before the whole decode)".into(),
        format!("{} MB", r.hwm_kb / 1024),
        format!(
            "{} MB resident before, {} MB with the log's index loaded; {:.0} bytes per event above that",
            r.rss_before_kb / 1024,
            r.rss_opened_kb / 1024,
            (r.hwm_kb.saturating_sub(r.rss_opened_kb) * 1024) as f64 / r.events.max(1) as f64
        ),
    ));
    let (books, folded, held_kb) = r.books_held;
    rows.push((
        format!("books held in memory, as the book cache holds them: {books} books, {folded} events folded"),
        format!("{} MB", held_kb / 1024),
        format!(
            "{:.0} bytes per event folded (resident, allocator's slack included)",
            (held_kb * 1024) as f64 / folded.max(1) as f64
        ),
    ));
    let (sampled, whole, postings) = r.decode_sample;
    let rate = |d: Duration| fmt_rate(sampled as f64 / d.as_secs_f64());
    rows.push((
        format!("diagnosis: decode {sampled} book events whole (decode_event) / their postings alone (book_codec::postings)"),
        format!("{} / {}", rate(whole), rate(postings)),
        "one thread; same events, compared equal".into(),
    ));
    rows.push((
        format!(
            "load the rebuild log ({} events, book aggregate decides them, 8 writers)",
            r.events
        ),
        fmt_rate(per_sec(fill_took)),
        format!("reopen with index snapshot {} ms", r.reopen.as_millis()),
    ));

    // The auditor's tools on the same log: replay (pl-audit, what `audit replay` runs) and
    // verify (every hash chain, then the seal: Merkle root over the stream heads, signature).
    {
        let log = EmbeddedLog::open(dir.join("rebuild"), EmbeddedOptions::default()).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        pl_audit::seal::seal(&log, &key, at(12, 31)).await.unwrap();
        // Three replays, the median reported with the range: on a shared two-core machine one
        // run moves by a fifth either way.
        // Peak memory of the replays alone (the log's index is loaded already).
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let replay_rss_before_kb = status_kb("VmRSS:");
        let mut replay_rates = Vec::new();
        let mut replayed = None;
        for _ in 0..3 {
            let started = Instant::now();
            let run = pl_audit::replay::replay_balances(&log, None, AsOf::Latest)
                .await
                .unwrap();
            replay_rates.push(run.events_read as f64 / started.elapsed().as_secs_f64());
            assert_eq!(run.transactions, r.transactions);
            replayed = Some(run);
        }
        let replayed = replayed.unwrap();
        let replay_hwm_kb = status_kb("VmHWM:");
        replay_rates.sort_by(f64::total_cmp);
        let started = Instant::now();
        let verified = pl_audit::seal::verify(&log, Some(&key.verifying_key()))
            .await
            .unwrap();
        let verify_took = started.elapsed();
        assert!(verified.is_intact(), "{verified:?}");
        rows.push((
            format!(
                "audit replay: every balance from the raw log ({} events, {} balance rows; read, decode and fold overlapped)",
                replayed.events_read,
                replayed.rows.len()
            ),
            fmt_rate(replay_rates[1]),
            format!(
                "median of 3 runs ({} to {}); peak RSS {} MB, {} MB above the opened log; target >= 1M events/s on 2 cores (issues 4 and 8)",
                fmt_rate(replay_rates[0]),
                fmt_rate(replay_rates[2]),
                replay_hwm_kb / 1024,
                replay_hwm_kb.saturating_sub(replay_rss_before_kb) / 1024
            ),
        ));
        rows.push((
            format!(
                "audit verify: {} hash chains and {} signed seal",
                verified.streams_checked, verified.seals_checked
            ),
            fmt_rate(verified.events_checked as f64 / verify_took.as_secs_f64()),
            "target >= 500k events/s on 2 cores (issue 8)".into(),
        ));
        log.close().unwrap();
    }

    println!();
    println!("| figure | value | notes |");
    println!("|---|---|---|");
    for (figure, value, notes) in rows {
        println!("| {figure} | {value} | {notes} |");
    }
}
