//! `make bench` (attribution): conversions attributed per second through the service layer on
//! the embedded log, with `BENCH_TOUCHPOINTS` (default 1,000,000) touchpoints stored.
//! Prints one table; numbers are for issue notes, never a pass/fail test.
//!
//! 1. Partner CRM's facts (`BENCH_PARTNERS`, default 1,000 approved partners, one tracking link
//!    each) go through the CRM consumer, as in production.
//! 2. Touchpoints: clicks of `BENCH_TOUCHPOINTS / 5` visitors, five each from different partners
//!    over the 30 days before the conversions, are checked against the CRM projection
//!    (`service::resolve`) and recorded (`service::record_touchpoint`) from `BENCH_WORKERS`
//!    (default 64) tokio tasks: the touchpoint recording rate is measured on the way.
//! 3. Conversions: `BENCH_CONVERSIONS` (default 50,000) sales of distinct customers, each by a
//!    visitor with five clicks, decided (last click, 30-day window) and published through
//!    `service::record_conversion` from the same number of tasks; throughput and per-conversion
//!    latency (p50, p99). The program's settings were changed `BENCH_SETTINGS_CHANGES` times
//!    (default 1; the last to last click, 30 days), so each conversion reads them from the log
//!    as a configured program's conversions do.
//! 4. Invoices: the first `BENCH_INVOICE_CUSTOMERS` (default 5,000) of those customers each get
//!    `BENCH_INVOICE_HISTORY` (default 24) monthly invoices decided, untimed, then one more
//!    each, timed: a locked customer's invoice follows its sale's partners, and reads the
//!    customer's relationship stream (every decision about the customer) to decide.
//!
//! `BENCH_DIR` holds the data (default a temporary directory under /var/tmp);
//! `BENCH_SYNC_LINGER_US` sets the log's `EmbeddedOptions::sync_linger_us` (default: the
//! services' default, off).

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::float_arithmetic
)] // timing code
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark fails loudly

use pl_bench_support::{cpu_time, env_num, fmt_rate, machine};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use hdrhistogram::Histogram;
use pl_attribution::conversions::{ConversionFacts, ConversionType};
use pl_attribution::service::{self, TouchInput};
use pl_attribution::settings::{SetSettings, Settings};
use pl_bus::Message;
use pl_eventlog::{EmbeddedLog, EmbeddedOptions, EventStore};
use pl_money::{Currency, Money};
use pl_runtime::CommandMeta;
use uuid::Uuid;

const PROGRAM: Uuid = Uuid::from_u128(0xc1);
const CLICKS_PER_VISITOR: u64 = 5;

/// When the conversions happen; clicks fall in the 30 days before.
fn conversion_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn partner(n: u64) -> Uuid {
    Uuid::from_u128(0xa000_0000 + u128::from(n))
}

fn link(n: u64) -> Uuid {
    Uuid::from_u128(0x1_0000_0000 + u128::from(n))
}

fn meta(tag: u8, n: u64, occurred_at: DateTime<Utc>) -> CommandMeta {
    CommandMeta {
        id_seed: Uuid::from_u128((u128::from(tag) << 120) | u128::from(n)),
        occurred_at,
        correlation_id: None,
        causation_id: None,
        trace_context: BTreeMap::new(),
    }
}

fn crm_message(n: u64, event_type: &str, data: serde_json::Value) -> Message {
    let id = Uuid::from_u128(0xe000_0000_0000 + u128::from(n));
    let at = conversion_time() - chrono::Duration::days(400);
    let envelope = serde_json::json!({
        "id": id, "type": event_type, "schema_version": 1,
        "stream": "partner-x", "version": 0, "position": n,
        "occurred_at": at, "recorded_at": at,
        "correlation_id": null, "causation_id": null, "data": data,
    });
    Message {
        id,
        subject: format!("pl.crm.{event_type}"),
        payload: bytes::Bytes::from(serde_json::to_vec(&envelope).unwrap()),
        headers: BTreeMap::new(),
    }
}

async fn crm_facts(store: &dyn EventStore, partners: u64) {
    let long_ago = conversion_time() - chrono::Duration::days(400);
    for p in 0..partners {
        let status = crm_message(
            2 * p,
            "PartnerStatusChanged",
            serde_json::json!({"partner_id": partner(p), "status": "PARTNER_STATUS_APPROVED", "occurred_at": long_ago}),
        );
        pl_attribution::consumer::handle(store, status)
            .await
            .unwrap();
        let issued = crm_message(
            2 * p + 1,
            "TrackingLinkIssued",
            serde_json::json!({
                "tracking_link_id": link(p), "partner_id": partner(p), "program_id": PROGRAM,
                "campaign_id": "", "destination_url": "https://shop.example/", "occurred_at": long_ago,
            }),
        );
        pl_attribution::consumer::handle(store, issued)
            .await
            .unwrap();
    }
}

fn visitor(v: u64) -> String {
    format!("visitor-{v}")
}

/// Click `k` (0..5) of visitor `v`: from partner (v + k) mod partners, k+1 days apart.
async fn record_click(
    store: &dyn EventStore,
    crm: &service::CrmCache,
    partners: u64,
    v: u64,
    k: u64,
) {
    let occurred_at =
        conversion_time() - chrono::Duration::days(i64::try_from(25 - 5 * k).unwrap());
    let n = v * CLICKS_PER_VISITOR + k;
    let t = service::resolve(
        store,
        crm,
        Some(visitor(v)),
        None,
        occurred_at,
        TouchInput::Click {
            click_id: Uuid::from_u128(0xc_0000_0000 + u128::from(n)),
            tracking_link_id: Some(link((v + k) % partners)),
            partner_id: None,
            program_id: None,
            landing_url: "https://shop.example/".into(),
            ip_hash: "5f0c…".into(),
            user_agent_hash: "9a1b…".into(),
        },
    )
    .await
    .unwrap();
    service::record_touchpoint(store, &t, &meta(1, n, occurred_at))
        .await
        .unwrap();
}

fn facts(j: u64, visitors: u64) -> ConversionFacts {
    let external_id = format!("order-{j}");
    // A spread of visitors with clicks: consecutive conversions land on far-apart streams.
    let v = (j.wrapping_mul(7919)) % visitors;
    ConversionFacts {
        conversion_id: pl_attribution::streams::conversion_id(PROGRAM, &external_id),
        external_id,
        program_id: PROGRAM,
        conversion_type: ConversionType::Sale,
        customer_id: format!("customer-{j}"),
        visitor_id: Some(visitor(v)),
        customer_domain: None,
        amount: Some(Money::from_minor_units(10_000, Currency::USD)),
        products: vec!["pro".into()],
        customer_country: Some("DE".into()),
        original_external_id: None,
        occurred_at: conversion_time(),
        customer_email_hash: None,
        revenue: Default::default(),
        occurred_at_is_receipt_time: false,
    }
}

/// Invoice `month` (0-based) of bench customer `j`, a month apart from its sale: a locked
/// customer's invoice, which follows the sale's partners. `history` spaces the command ids.
async fn invoice(
    store: &dyn EventStore,
    crm: &service::CrmCache,
    programs: &service::SettingsCache,
    j: u64,
    month: u64,
    history: u64,
) {
    let external_id = format!("invoice-{j}-{month}");
    let occurred_at =
        conversion_time() + chrono::Duration::days(30 * (i64::try_from(month).unwrap() + 1));
    let f = ConversionFacts {
        conversion_id: pl_attribution::streams::conversion_id(PROGRAM, &external_id),
        external_id,
        program_id: PROGRAM,
        conversion_type: ConversionType::SubscriptionInvoicePaid,
        customer_id: format!("customer-{j}"),
        visitor_id: None,
        customer_domain: None,
        amount: Some(Money::from_minor_units(10_000, Currency::USD)),
        products: vec!["pro".into()],
        customer_country: Some("DE".into()),
        original_external_id: None,
        occurred_at,
        customer_email_hash: None,
        revenue: Default::default(),
        occurred_at_is_receipt_time: false,
    };
    let event = service::record_conversion(
        store,
        crm,
        programs,
        &f,
        &meta(4, j * (history + 1) + month, occurred_at),
    )
    .await
    .unwrap();
    assert!(
        event.is_attributed(),
        "a locked customer's invoice follows its partners"
    );
}

/// Runs `jobs` numbered jobs on `workers` tasks (task w takes w, w + workers, ...); returns the
/// wall time and each job's latency.
async fn run_parallel<F, Fut>(workers: u64, jobs: u64, job: F) -> (Duration, Histogram<u64>)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let job = Arc::new(job);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let job = Arc::clone(&job);
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
            let mut j = w;
            while j < jobs {
                let t = Instant::now();
                job(j).await;
                h.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX))
                    .unwrap();
                j += workers;
            }
            h
        }));
    }
    let mut all = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    (started.elapsed(), all)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let touchpoints = env_num("BENCH_TOUCHPOINTS", 1_000_000).max(CLICKS_PER_VISITOR);
    let conversions = env_num("BENCH_CONVERSIONS", 50_000).max(1);
    let partners = env_num("BENCH_PARTNERS", 1000).max(CLICKS_PER_VISITOR);
    let workers = env_num("BENCH_WORKERS", 64).max(1);
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("pl-bench-attribution-")
        .tempdir_in(&base)
        .unwrap();
    let sync_linger_us = env_num("BENCH_SYNC_LINGER_US", pl_eventlog::DEFAULT_SYNC_LINGER_US);
    let options = EmbeddedOptions {
        sync_linger_us,
        ..EmbeddedOptions::default()
    };
    let log = Arc::new(EmbeddedLog::open(dir.path(), options).unwrap());
    let store: Arc<dyn EventStore> = log.clone();

    crm_facts(store.as_ref(), partners).await;
    // The program's settings, changed `BENCH_SETTINGS_CHANGES` times by an operator, the last
    // to last click over 30 days: a conversion reads them from the log, as in production.
    let settings_changes = env_num("BENCH_SETTINGS_CHANGES", 1).max(1);
    for n in 0..settings_changes {
        let window_days = 30 + u32::from((settings_changes - 1 - n) % 2 == 1);
        service::set_settings(
            store.as_ref(),
            &SetSettings {
                program_id: PROGRAM,
                settings: Settings {
                    window_days,
                    ..Settings::default()
                },
            },
            &meta(3, n, conversion_time() - chrono::Duration::days(400)),
        )
        .await
        .unwrap();
    }

    let visitors = touchpoints / CLICKS_PER_VISITOR;
    let clicks = visitors * CLICKS_PER_VISITOR;
    eprintln!("recording {clicks} touchpoints of {visitors} visitors…");
    let cpu = cpu_time();
    // The service's CRM projection cache, shared as the gRPC service shares it.
    let crm = Arc::new(service::CrmCache::default());
    let (s, c) = (store.clone(), crm.clone());
    let (touch_wall, touch_latency) = run_parallel(workers, clicks, move |n| {
        let (s, c) = (s.clone(), c.clone());
        async move {
            // Click k of every visitor before click k + 1 of any: concurrent tasks write to
            // different visitors' streams (a visitor clicking twice at once would be a
            // retried conflict, not the workload measured here).
            record_click(s.as_ref(), &c, partners, n % visitors, n / visitors).await;
        }
    })
    .await;
    let touch_cpu = cpu_time().saturating_sub(cpu);

    eprintln!("attributing {conversions} conversions…");
    let syncs = log.sync_stats().syncs;
    let cpu = cpu_time();
    // The service's settings cache, shared as the gRPC service shares it.
    let programs = Arc::new(service::SettingsCache::default());
    let (s, c, p) = (store.clone(), crm.clone(), programs.clone());
    let (conv_wall, conv_latency) = run_parallel(workers, conversions, move |j| {
        let (s, c, p) = (s.clone(), c.clone(), p.clone());
        async move {
            let f = facts(j, visitors);
            let event =
                service::record_conversion(s.as_ref(), &c, &p, &f, &meta(2, j, f.occurred_at))
                    .await
                    .unwrap();
            assert!(event.is_attributed(), "every bench conversion has clicks");
        }
    })
    .await;
    let conv_cpu = cpu_time().saturating_sub(cpu);
    let conv_syncs = log.sync_stats().syncs - syncs;

    let invoice_customers = env_num("BENCH_INVOICE_CUSTOMERS", 5_000).min(conversions);
    let history = env_num("BENCH_INVOICE_HISTORY", 24);
    eprintln!("deciding {history} invoices for each of {invoice_customers} customers…");
    let (s, c, p) = (store.clone(), crm.clone(), programs.clone());
    run_parallel(workers, invoice_customers, move |j| {
        let (s, c, p) = (s.clone(), c.clone(), p.clone());
        async move {
            for month in 0..history {
                invoice(s.as_ref(), &c, &p, j, month, history).await;
            }
        }
    })
    .await;
    let cpu = cpu_time();
    let (s, c, p) = (store.clone(), crm.clone(), programs.clone());
    let (invoice_wall, invoice_latency) = run_parallel(workers, invoice_customers, move |j| {
        let (s, c, p) = (s.clone(), c.clone(), p.clone());
        async move { invoice(s.as_ref(), &c, &p, j, history, history).await }
    })
    .await;
    let invoice_cpu = cpu_time().saturating_sub(cpu);
    let head = *store.watch_head().borrow();

    let per_sec = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!();
    println!(
        "attribution on the embedded log — {}; {partners} partners, {workers} tasks, {} events in the log at the end, sync linger {sync_linger_us} µs",
        machine(),
        head + 1
    );
    println!();
    println!("| measure | count | wall | rate | p50 | p99 | CPU per item |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let row =
        |measure: &str, count: u64, wall: Duration, latency: &Histogram<u64>, cpu: Duration| {
            if count == 0 {
                // A row turned off (`BENCH_INVOICE_CUSTOMERS=0`): nothing to divide by.
                println!("| {measure} | 0 | — | — | — | — | — |");
                return;
            }
            println!(
                "| {measure} | {count} | {:.1} s | {} | {:.2} ms | {:.2} ms | {:.0} µs |",
                wall.as_secs_f64(),
                fmt_rate(per_sec(count, wall)),
                us(latency, 0.5),
                us(latency, 0.99),
                cpu.as_secs_f64() * 1e6 / count as f64,
            );
        };
    row(
        "touchpoints recorded (checked against the CRM projection)",
        clicks,
        touch_wall,
        &touch_latency,
        touch_cpu,
    );
    row(
        &format!("conversions attributed (last click over 5 clicks, {clicks} touchpoints stored)"),
        conversions,
        conv_wall,
        &conv_latency,
        conv_cpu,
    );
    row(
        &format!("invoices of locked customers, each after {history} earlier invoices of its own (the relationship read whole)"),
        invoice_customers,
        invoice_wall,
        &invoice_latency,
        invoice_cpu,
    );
    println!();
    // Cores busy: what the CPU per item cannot tell, whether the conversions were bound by CPU
    // or waited (for syncs, or asleep on a lock) with cores idle.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "conversions: {conv_syncs} syncs of the log, {:.1} conversions per sync, {:.2} of {cores} cores busy",
        conversions as f64 / conv_syncs.max(1) as f64,
        conv_cpu.as_secs_f64() / conv_wall.as_secs_f64().max(1e-9),
    );
    println!("target (issue 5): ≥50k conversions/s with 1M touchpoints stored, on 2 cores");
}
