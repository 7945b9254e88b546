//! Audit as an auditor meets it: a commissions history written through the live service on the
//! embedded log, then replayed, sealed, verified, tampered with, exported and rendered by the
//! audit functions alone — given (a history) / when (an audit command) / then (what it reports).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use ed25519_dalek::SigningKey;
use pl_audit::{export, replay, seal, statement};
use pl_bus::Message;
use pl_commission_engine::{
    Conditions, NetRevenuePolicy, Percent, PlanVersion, Reward, Rule, VersionPolicy,
};
use pl_commissions::CommissionsService;
use pl_eventlog::{EmbeddedLog, EmbeddedOptions, EventStore, SharedStore};
use pl_ledger::AsOf;
use pl_money::{Currency, Money};
use pl_proto::commissions::v1 as pb;
use pl_proto::commissions::v1::commissions_service_server::CommissionsService as Api;
use pl_proto::common::v1::RequestContext;
use pl_runtime::FixedClock;
use tonic::Request;
use uuid::Uuid;

const ALICE: Uuid = Uuid::from_u128(0xa1);
const PARENT: Uuid = Uuid::from_u128(0xa2);
const PLAN: Uuid = Uuid::from_u128(0xb1);
const PROGRAM: Uuid = Uuid::from_u128(0xc1);

fn at(month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, month, day, 12, 0, 0).unwrap()
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap(),
    }
}

fn ctx(key: &str) -> Option<RequestContext> {
    Some(RequestContext {
        idempotency_key: key.into(),
        occurred_at: Some(ts(at(1, 1))),
        correlation_id: String::new(),
    })
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

fn message(id: u128, event_type: &str, data: serde_json::Value, t: DateTime<Utc>) -> Message {
    let envelope = serde_json::json!({
        "id": Uuid::from_u128(id), "type": event_type, "schema_version": 1,
        "stream": "conversion-x", "version": 0, "position": id,
        "occurred_at": t, "recorded_at": t,
        "correlation_id": null, "causation_id": null, "data": data,
    });
    Message {
        id: Uuid::from_u128(id),
        subject: format!("pl.attribution.{event_type}"),
        payload: bytes::Bytes::from(serde_json::to_vec(&envelope).unwrap()),
        headers: BTreeMap::new(),
    }
}

fn sale(conversion: u128, gross: &str, t: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "conversion_id": Uuid::from_u128(conversion), "program_id": PROGRAM,
        "kind": "CONVERSION_KIND_SALE", "customer_id": format!("cust-{conversion}"),
        "gross": { "amount": gross, "currency": "USD" }, "occurred_at": t,
        "shares": [{ "partner_id": ALICE, "weight": "1" }],
    })
}

/// Given: a plan (10 % of gross, 2 % override to the parent), two sales, a 25 % refund and a
/// maturity, written through the commissions service on an embedded log in `dir`.
async fn history(dir: &std::path::Path) -> (Arc<EmbeddedLog>, CommissionsService) {
    let log = Arc::new(EmbeddedLog::open(dir, EmbeddedOptions::default()).unwrap());
    let store: SharedStore = log.clone();
    let api = CommissionsService::new(store.clone(), Arc::new(FixedClock::at(at(1, 1))));
    api.publish_plan_version(Request::new(pb::PublishPlanVersionRequest {
        context: ctx("plan"),
        plan_id: PLAN.to_string(),
        plan_json: serde_json::to_string(&plan()).unwrap(),
    }))
    .await
    .unwrap();
    for (key, partner) in [("a", ALICE), ("p", PARENT)] {
        api.assign_plan(Request::new(pb::AssignPlanRequest {
            context: ctx(key),
            partner_id: partner.to_string(),
            plan_id: PLAN.to_string(),
            effective_from: Some(ts(at(1, 1))),
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    let consume = |m: Message| {
        let (store, caches) = (store.clone(), api.caches());
        async move {
            pl_commissions::consumer::handle(store.as_ref(), &caches, m)
                .await
                .unwrap();
        }
    };
    // Alice's parent, as partner CRM reports it (the subject is all the consumer routes on).
    let parent = serde_json::json!({
        "partner_id": ALICE, "program_id": PROGRAM, "parent_partner_id": PARENT,
        "occurred_at": at(1, 1),
    });
    let mut parent = message(9, "PartnerParentChanged", parent, at(1, 1));
    parent.subject = "pl.crm.PartnerParentChanged".into();
    consume(parent).await;
    consume(message(
        1,
        "ConversionAttributed",
        sale(100, "100.00", at(1, 10)),
        at(1, 10),
    ))
    .await;
    consume(message(
        2,
        "ConversionAttributed",
        sale(101, "300.00", at(2, 20)),
        at(2, 20),
    ))
    .await;
    let refund = serde_json::json!({
        "refund_id": Uuid::from_u128(900), "conversion_id": Uuid::from_u128(100),
        "amount": { "amount": "25.00", "currency": "USD" }, "occurred_at": at(1, 12),
    });
    consume(message(3, "ConversionRefunded", refund, at(1, 12))).await;
    api.mature_commissions(Request::new(pb::MatureCommissionsRequest {
        context: ctx("m"),
        partner_id: ALICE.to_string(),
        as_of: Some(ts(at(3, 1))),
    }))
    .await
    .unwrap();
    (log, api)
}

async fn live(
    api: &CommissionsService,
    partner: Uuid,
    as_of: Option<pb::AsOf>,
) -> Vec<(String, String, String, String)> {
    api.get_balances(Request::new(pb::GetBalancesRequest {
        partner_id: partner.to_string(),
        as_of,
    }))
    .await
    .unwrap()
    .into_inner()
    .currencies
    .into_iter()
    .map(|c| (c.currency, c.pending, c.payable, c.paid))
    .collect()
}

fn audited(rows: &[replay::BalanceRow], partner: Uuid) -> Vec<(String, String, String, String)> {
    rows.iter()
        .filter(|r| r.partner_id == partner)
        .map(|r| {
            (
                r.currency.code().to_owned(),
                r.pending.clone(),
                r.payable.clone(),
                r.paid.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_replay_from_the_raw_log_reports_exactly_what_the_live_service_reports_at_every_as_of_point(
) {
    let dir = tempfile::tempdir().unwrap();
    let (log, api) = history(dir.path()).await;
    let head = *log.watch_head().borrow();
    let replayed = replay::replay(log.as_ref(), None, None).await.unwrap();
    assert!(replayed.book_events >= 5, "{replayed:?}");
    let middle_recorded_at = log.read_all(head / 2, 1).await.unwrap()[0].recorded_at;
    let cases: Vec<(AsOf, Option<pb::AsOf>)> = vec![
        (AsOf::Latest, None),
        (
            AsOf::BusinessDate(at(1, 31)),
            Some(pb::AsOf {
                business_date: Some(ts(at(1, 31))),
                ..Default::default()
            }),
        ),
        (
            AsOf::Recorded { position: head / 2 },
            Some(pb::AsOf {
                recorded_position: head / 2,
                ..Default::default()
            }),
        ),
        (
            AsOf::RecordedAt(middle_recorded_at),
            Some(pb::AsOf {
                recorded_at: Some(ts(middle_recorded_at)),
                ..Default::default()
            }),
        ),
    ];
    for (as_of, request) in cases {
        let rows = replay::balances(&replayed.ledger, None, as_of).unwrap();
        // The one-pass fold that `audit replay` runs reports the same rows.
        let folded = replay::replay_balances(log.as_ref(), None, as_of)
            .await
            .unwrap();
        assert_eq!(folded.rows, rows, "fold as of {as_of:?}");
        for partner in [ALICE, PARENT] {
            let one = replay::replay_balances(log.as_ref(), Some(partner), as_of)
                .await
                .unwrap();
            assert_eq!(
                audited(&one.rows, partner),
                audited(&rows, partner),
                "fold of partner {partner} as of {as_of:?}"
            );
            assert_eq!(
                audited(&rows, partner),
                live(&api, partner, request).await,
                "partner {partner} as of {as_of:?}"
            );
        }
    }
    // Latest: Alice 10 % of 300 pending; of the January sale 7.50 matured to payable.
    let rows = replay::balances(&replayed.ledger, Some(ALICE), AsOf::Latest).unwrap();
    assert_eq!(
        audited(&rows, ALICE),
        vec![("USD".into(), "30.00".into(), "7.50".into(), "0.00".into())]
    );
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

#[tokio::test]
async fn a_sealed_log_verifies_with_the_public_key_alone_and_not_with_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _api) = history(dir.path()).await;
    let s = seal::seal(log.as_ref(), &key(7), at(3, 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.public_key, hex::encode(key(7).verifying_key().to_bytes()));
    // Sealing an unchanged log again appends nothing new to cover.
    assert!(seal::seal_if_grown(log.as_ref(), &key(7), at(3, 3))
        .await
        .unwrap()
        .is_none());
    let public = key(7).verifying_key();
    let ok = seal::verify(log.as_ref(), Some(&public)).await.unwrap();
    assert!(ok.is_intact(), "{ok:?}");
    assert_eq!((ok.seals_checked, ok.signatures_checked), (1, 1));
    let other = key(8).verifying_key();
    let wrong = seal::verify(log.as_ref(), Some(&other)).await.unwrap();
    let b = wrong.first_break.unwrap();
    assert!(b.contains("not by the given public key"), "{b}");
    // The public key as PEM or hex reads the same.
    let hex_key = hex::encode(public.to_bytes());
    assert_eq!(seal::verifying_key_from(&hex_key).unwrap(), public);
}

/// Finds `needle` in the log file and changes its first byte; with `forge`, also recomputes the
/// frame's checksum (an attacker who knows the file format), so only the hash chain can tell.
/// Flips a bit of the first `needle` in the log file (and with `forge`, fixes up the frame's
/// checksum, as a forger would); returns the stream of the event it lands in.
fn tamper(dir: &std::path::Path, needle: &[u8], forge: bool) -> String {
    let path = dir.join("events.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the bytes to tamper with are in the log");
    bytes[at] ^= 0x01;
    // Frames: payload_len:u32 crc32(payload):u32 payload, and the payload starts with format:u8
    // flags:u8 position:u64 stream_len:u16 stream (crates/eventlog/src/codec.rs).
    let mut offset = 0;
    let stream = loop {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let payload = offset + 8..offset + 8 + len;
        if payload.contains(&at) {
            if forge {
                let crc = crc32fast::hash(&bytes[payload.clone()]);
                bytes[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
            }
            let p = &bytes[payload];
            let stream_len = u16::from_le_bytes([p[10], p[11]]) as usize;
            break String::from_utf8(p[12..12 + stream_len].to_vec()).unwrap();
        }
        offset = payload.end;
    };
    std::fs::write(&path, bytes).unwrap();
    stream
}

async fn sealed_history(dir: &std::path::Path) {
    let (log, api) = history(dir).await;
    seal::seal(log.as_ref(), &key(7), at(3, 2)).await.unwrap();
    drop(api);
    let log = Arc::try_unwrap(log).unwrap();
    log.close().unwrap();
}

#[tokio::test]
async fn a_byte_changed_in_a_sealed_event_is_caught_by_verify_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    sealed_history(dir.path()).await;
    // The 300.00 sale's amount, wherever the log first holds it as text.
    tamper(dir.path(), b"300.00", false);
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let out = seal::verify(&log, Some(&key(7).verifying_key()))
        .await
        .unwrap();
    let b = out.first_break.unwrap();
    assert!(b.contains("corrupt at byte offset"), "{b}");
}

#[tokio::test]
async fn a_forged_event_with_a_valid_frame_checksum_is_caught_by_the_hash_chain() {
    let dir = tempfile::tempdir().unwrap();
    sealed_history(dir.path()).await;
    // The 300.00 sale's amount, wherever the log first holds it as text (book events hold
    // theirs compressed).
    let stream = tamper(dir.path(), b"300.00", true);
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let out = seal::verify(&log, Some(&key(7).verifying_key()))
        .await
        .unwrap();
    let b = out.first_break.unwrap();
    // Stream, version, and the expected and found hashes.
    assert!(b.contains(&format!("stream {stream}")), "{b}");
    assert!(b.contains("expected") || b.contains("stored"), "{b}");
    assert!(b.contains("version"), "{b}");
}

#[tokio::test]
async fn exports_have_stable_columns_decimal_amounts_and_currency_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _api) = history(dir.path()).await;
    let mut csv = Vec::new();
    let rows = export::export(
        log.as_ref(),
        export::What::Transactions,
        export::Format::Csv,
        at(1, 1),
        at(2, 1),
        &mut csv,
    )
    .await
    .unwrap();
    let text = String::from_utf8(csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), export::TRANSFER_COLUMNS.join(","));
    // January: Alice's accrual and its override, the refund's two reversals (February's sale
    // and March's maturity are outside the period).
    assert_eq!(rows, 4, "{text}");
    let first: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(first[4], "accrual");
    assert_eq!((first[7], first[8]), ("10.00", "USD"));
    let mut jsonl = Vec::new();
    export::export(
        log.as_ref(),
        export::What::Events,
        export::Format::Jsonl,
        at(1, 1),
        at(12, 31),
        &mut jsonl,
    )
    .await
    .unwrap();
    for line in String::from_utf8(jsonl).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["stream"].is_string() && v["hash"].as_str().unwrap().len() == 64);
    }
    let bad = export::export(
        log.as_ref(),
        export::What::Events,
        export::Format::Jsonl,
        at(2, 1),
        at(1, 1),
        &mut Vec::new(),
    )
    .await;
    assert!(bad.is_err());
}

#[tokio::test]
async fn a_statement_renders_opening_entries_and_closing_as_text_csv_and_a_self_contained_page() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _api) = history(dir.path()).await;
    let s = statement::build(log.as_ref(), ALICE, Currency::USD, at(1, 1), at(4, 1))
        .await
        .unwrap();
    let text = statement::render(&s, statement::Format::Text);
    assert!(
        text.contains("opening") && text.contains("closing"),
        "{text}"
    );
    assert!(text.contains("reversal"), "{text}");
    let csv = statement::render(&s, statement::Format::Csv);
    assert!(csv.starts_with("row,occurred_at,kind"), "{csv}");
    assert!(csv
        .lines()
        .any(|l| l.starts_with("closing,") && l.contains(",payable,")));
    let html = statement::render(&s, statement::Format::Html);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(
        !html.contains("<script") && !html.contains("http"),
        "self-contained"
    );
    assert!(html.contains(&ALICE.to_string()));
}

#[tokio::test]
async fn the_audit_service_streams_the_same_balances_and_refuses_bad_requests_precisely() {
    use pl_proto::audit::v1 as apb;
    use pl_proto::audit::v1::audit_service_server::AuditService as _;
    use tokio_stream::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let (log, api) = history(dir.path()).await;
    let audit = pl_audit::AuditApi::new(log.clone());
    let stream = audit
        .replay(Request::new(apb::ReplayRequest {
            partner_id: String::new(),
            business_date: Some(ts(at(1, 31))),
            recorded_position: 0,
            recorded_at: None,
        }))
        .await
        .unwrap()
        .into_inner();
    let rows: Vec<apb::BalanceRow> = stream.map(|r| r.unwrap()).collect().await;
    let alice: Vec<(String, String, String, String)> = rows
        .iter()
        .filter(|r| r.partner_id == ALICE.to_string())
        .map(|r| {
            (
                r.currency.clone(),
                r.pending.clone(),
                r.payable.clone(),
                r.paid.clone(),
            )
        })
        .collect();
    let as_of = pb::AsOf {
        business_date: Some(ts(at(1, 31))),
        ..Default::default()
    };
    assert_eq!(alice, live(&api, ALICE, Some(as_of)).await);
    let verified = audit
        .verify(Request::new(apb::VerifyRequest {
            public_key: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.intact, "{verified:?}");
    let bad = audit
        .replay(Request::new(apb::ReplayRequest {
            partner_id: "alice".into(),
            business_date: None,
            recorded_position: 3,
            recorded_at: Some(ts(at(1, 1))),
        }))
        .await
        .err()
        .unwrap();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("partner_id"), "{}", bad.message());
}

/// The same history with a quarter of the book events rewritten each as schema 1 (all JSON),
/// schema 2 (binary, body uncompressed) and schema 3 (binary, body in JSON), as logs written
/// by earlier versions hold them, in a fresh in-memory log.
async fn mixed_schema_copy(log: &dyn EventStore) -> SharedStore {
    let copy: SharedStore = Arc::new(pl_eventlog::MemoryLog::default());
    let events = log.read_all(0, 10_000).await.unwrap();
    let mut books = 0..;
    for r in events {
        let is_book = r.stream.starts_with("ledger-");
        let n = if is_book {
            books.next().unwrap_or(0)
        } else {
            0
        };
        let (schema_version, data) = match (is_book, n % 4) {
            (true, 0) => {
                let event = pl_commissions::book_codec::decode(&r).unwrap();
                (1, pl_runtime::aggregate::encode_json(&event).unwrap().1)
            }
            (true, 1) => {
                let event = pl_commissions::book_codec::decode(&r).unwrap();
                (
                    2,
                    pl_commissions::book_codec::encode_schema_2(&event)
                        .unwrap()
                        .1,
                )
            }
            (true, 2) => {
                let event = pl_commissions::book_codec::decode(&r).unwrap();
                (
                    3,
                    pl_commissions::book_codec::encode_schema_3(&event)
                        .unwrap()
                        .1,
                )
            }
            _ => (r.schema_version, r.data),
        };
        let event = pl_eventlog::NewEvent {
            id: r.id,
            event_type: r.event_type,
            schema_version,
            data,
            metadata: r.metadata,
        };
        copy.append(&r.stream, pl_eventlog::ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
    }
    copy
}

#[tokio::test]
async fn a_log_mixing_json_and_binary_book_events_replays_to_the_same_balances() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _api) = history(dir.path()).await;
    let copy = mixed_schema_copy(log.as_ref()).await;
    let schemas: std::collections::BTreeSet<u32> = copy
        .read_all(0, 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.stream.starts_with("ledger-"))
        .map(|r| r.schema_version)
        .collect();
    assert_eq!(schemas, [1, 2, 3, 4].into());
    for as_of in [AsOf::Latest, AsOf::BusinessDate(at(1, 31))] {
        let original = replay::replay_balances(log.as_ref(), None, as_of)
            .await
            .unwrap();
        let folded = replay::replay_balances(copy.as_ref(), None, as_of)
            .await
            .unwrap();
        let full = replay::replay(copy.as_ref(), None, None).await.unwrap();
        assert_eq!(folded.rows, original.rows, "as of {as_of:?}");
        assert_eq!(
            replay::balances(&full.ledger, None, as_of).unwrap(),
            original.rows
        );
    }
}

#[tokio::test]
async fn a_book_event_of_a_schema_newer_than_the_auditor_reads_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _api) = history(dir.path()).await;
    let copy: SharedStore = Arc::new(pl_eventlog::MemoryLog::default());
    let book = log
        .read_all(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.stream.starts_with("ledger-"))
        .unwrap();
    let event = pl_eventlog::NewEvent {
        id: book.id,
        event_type: book.event_type.clone(),
        schema_version: pl_commissions::book_codec::STORED_SCHEMA_VERSION + 1,
        data: book.data.clone(),
        metadata: book.metadata.clone(),
    };
    copy.append(&book.stream, pl_eventlog::ExpectedVersion::Any, vec![event])
        .await
        .unwrap();
    let err = replay::replay_balances(copy.as_ref(), None, AsOf::Latest)
        .await
        .unwrap_err()
        .to_string();
    let newer = format!(
        "schema version {}",
        pl_commissions::book_codec::STORED_SCHEMA_VERSION + 1
    );
    assert!(err.contains(&newer), "{err}");
    assert!(err.contains(&book.stream), "{err}");
}

#[tokio::test]
async fn a_replay_of_a_log_damaged_in_many_books_reports_the_first_damage_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _api) = history(dir.path()).await;
    let copy: SharedStore = Arc::new(pl_eventlog::MemoryLog::default());
    let events = log.read_all(0, 10_000).await.unwrap();
    let first_book = events
        .iter()
        .find(|r| r.stream.starts_with("ledger-"))
        .unwrap()
        .clone();
    let books: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|r| r.stream.starts_with("ledger-"))
        .map(|r| r.stream.as_str())
        .collect();
    assert!(books.len() >= 2, "{books:?}");
    // Every book event of a schema this version does not read: each folding thread fails at
    // its first, and the report must not depend on which thread answers first.
    for r in &events {
        let schema_version = if r.stream.starts_with("ledger-") {
            pl_commissions::book_codec::STORED_SCHEMA_VERSION + 1
        } else {
            r.schema_version
        };
        let event = pl_eventlog::NewEvent {
            id: r.id,
            event_type: r.event_type.clone(),
            schema_version,
            data: r.data.clone(),
            metadata: r.metadata.clone(),
        };
        copy.append(&r.stream, pl_eventlog::ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
    }
    let err = replay::replay_balances(copy.as_ref(), None, AsOf::Latest)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "position {} in {}",
            first_book.position, first_book.stream
        )),
        "{err}"
    );
}
