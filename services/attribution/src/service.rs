//! The application layer: gathers what a command needs from the log (the program's settings,
//! the visitor's and customer's touchpoints, the CRM projection), runs the pure deciders through
//! `pl_runtime::aggregate::execute`, and publishes decisions. gRPC and the benchmark call this;
//! it reads no clock (times arrive in the inputs).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use pl_eventlog::{EventStore, ExpectedVersion, RecordedEvent, StreamAppend};
use pl_runtime::aggregate::{
    decide_on, decode_event, execute, load, lost_to_twin, to_new_events, Decided, ExecuteError,
    MAX_CONFLICT_RETRIES,
};
use pl_runtime::{ApiError, CommandMeta, StateCache};
use serde::Deserialize;
use uuid::Uuid;

use crate::contract::{self, ConversionEvent, Published};
use crate::conversions::{Candidates, ConversionError, ConversionFacts, Decide, Relationship};
use crate::crm::{self, CrmRecord};
use crate::models::in_window;
use crate::settings::{ProgramSettings, SetSettings, SettingsError};
use crate::streams;
use crate::touchpoints::{
    self, Detail, Postback, PostbackError, Touchpoint, TouchpointError, TouchpointEvent,
    TouchpointKind, Touchpoints,
};

/// Events read from the end of each touchpoint stream when deciding a conversion.
pub const MAX_TOUCHPOINTS_READ: usize = 256;

fn executed<E>(e: ExecuteError<E>, domain: impl FnOnce(E) -> ApiError) -> ApiError {
    match e {
        ExecuteError::Domain(e) => domain(e),
        ExecuteError::Conflict { stream, .. } => ApiError::Conflict { stream },
        ExecuteError::Decode(detail) => ApiError::internal(detail),
        ExecuteError::Store(e) => e.into(),
    }
}

fn rejected(r: crm::Rejection) -> ApiError {
    ApiError::rule(r.to_string())
}

async fn load_crm(store: &dyn EventStore, stream: &str) -> Result<CrmRecord, ApiError> {
    load::<CrmRecord>(store, stream)
        .await
        .map(|l| l.state)
        .map_err(|e| executed(e, ApiError::internal))
}

/// Partner CRM's facts kept in memory between requests (partners, links, coupons, campaigns:
/// read on every touchpoint and conversion): each use is a catch-up read of the stream, not a
/// replay and decode of it. The consumer writes these streams; the cache only reads them.
pub type CrmCache = StateCache<CrmRecord>;

/// `view` of a CRM stream as of its last event, through the cache.
pub async fn with_crm<R>(
    store: &dyn EventStore,
    crm: &CrmCache,
    stream: &str,
    view: impl FnOnce(&CrmRecord) -> R,
) -> Result<R, ApiError> {
    crm.read(store, stream, view)
        .await
        .map(|(r, _)| r)
        .map_err(|e| executed(e, ApiError::internal))
}

/// What a caller says was touched, before it is checked against partner CRM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TouchInput {
    Click {
        click_id: Uuid,
        tracking_link_id: Option<Uuid>,
        partner_id: Option<Uuid>,
        program_id: Option<Uuid>,
        landing_url: String,
        ip_hash: String,
        user_agent_hash: String,
    },
    Coupon {
        redemption_id: Uuid,
        program_id: Uuid,
        code: String,
    },
    Impression {
        impression_id: Uuid,
        campaign_id: Uuid,
        partner_id: Uuid,
    },
}

/// Checks a touchpoint against partner CRM's facts as of its business time and resolves its
/// partner, program and campaign. Refusals name their reason precisely (FAILED_PRECONDITION).
pub async fn resolve(
    store: &dyn EventStore,
    crm: &CrmCache,
    visitor_id: Option<String>,
    customer_id: Option<String>,
    occurred_at: DateTime<Utc>,
    input: TouchInput,
) -> Result<Touchpoint, ApiError> {
    let at = occurred_at;
    let (id, kind, program_id, partner_id, campaign_id, detail) = match input {
        TouchInput::Click {
            click_id,
            tracking_link_id,
            partner_id,
            program_id,
            landing_url,
            ip_hash,
            user_agent_hash,
        } => {
            let (partner, program, campaign) = match tracking_link_id {
                Some(link_id) => {
                    let link = with_crm(store, crm, &streams::crm_link(link_id), |r| {
                        crm::check_link(link_id, r, at)
                    })
                    .await?
                    .map_err(rejected)?;
                    if let Some(requested) = program_id.filter(|p| *p != link.program_id) {
                        return Err(rejected(crm::Rejection::LinkOfOtherProgram {
                            link: link_id,
                            actual: link.program_id,
                            requested,
                        }));
                    }
                    if let Some(requested) = partner_id.filter(|p| *p != link.partner_id) {
                        return Err(rejected(crm::Rejection::LinkOfOtherPartner {
                            link: link_id,
                            actual: link.partner_id,
                            requested,
                        }));
                    }
                    (link.partner_id, link.program_id, link.campaign_id)
                }
                None => match (partner_id, program_id) {
                    (Some(partner), Some(program)) => (partner, program, None),
                    _ => {
                        return Err(ApiError::invalid(
                            "click.tracking_link_id",
                            "required unless partner_id and program_id are given",
                        ))
                    }
                },
            };
            let detail = Detail {
                tracking_link_id,
                landing_url: Some(landing_url),
                ip_hash: Some(ip_hash),
                user_agent_hash: Some(user_agent_hash),
                ..Detail::default()
            };
            (
                click_id,
                TouchpointKind::Click,
                program,
                partner,
                campaign,
                detail,
            )
        }
        TouchInput::Coupon {
            redemption_id,
            program_id,
            code,
        } => {
            let coupon = with_crm(store, crm, &streams::crm_coupon(program_id, &code), |r| {
                crm::check_coupon(&code, program_id, r, at)
            })
            .await?
            .map_err(rejected)?;
            let detail = Detail {
                coupon_id: Some(coupon.coupon_id),
                coupon_code: Some(coupon.code.clone()),
                ..Detail::default()
            };
            (
                redemption_id,
                TouchpointKind::Coupon,
                program_id,
                coupon.partner_id,
                coupon.campaign_id,
                detail,
            )
        }
        TouchInput::Impression {
            impression_id,
            campaign_id,
            partner_id,
        } => {
            let campaign = with_crm(store, crm, &streams::crm_campaign(campaign_id), |r| {
                crm::check_campaign(campaign_id, partner_id, r)
            })
            .await?
            .map_err(rejected)?;
            (
                impression_id,
                TouchpointKind::Impression,
                campaign.program_id,
                partner_id,
                Some(campaign_id),
                Detail::default(),
            )
        }
    };
    with_crm(store, crm, &streams::crm_partner(partner_id), |r| {
        crm::check_partner(partner_id, r, at)
    })
    .await?
    .map_err(rejected)?;
    Ok(Touchpoint {
        touchpoint_id: id,
        kind,
        program_id,
        partner_id,
        campaign_id,
        visitor_id,
        customer_id,
        occurred_at,
        detail,
    })
}

fn touchpoint_error(e: TouchpointError) -> ApiError {
    match e {
        TouchpointError::RecordedDifferently(id) => ApiError::AlreadyExists {
            what: "touchpoint (with other details)",
            id: id.to_string(),
        },
        TouchpointError::Full => ApiError::rule(e.to_string()),
    }
}

/// Records a checked touchpoint in its visitor's (or customer's) stream.
pub async fn record_touchpoint(
    store: &dyn EventStore,
    t: &Touchpoint,
    meta: &CommandMeta,
) -> Result<Touchpoint, ApiError> {
    let stream = touchpoints::stream_of(t).ok_or_else(|| {
        ApiError::invalid("visitor_id", "a visitor_id or a customer_id is required")
    })?;
    let done = execute::<Touchpoints>(store, &stream, t, meta)
        .await
        .map_err(|e| executed(e, touchpoint_error))?;
    done.state
        .by_id
        .get(&t.touchpoint_id)
        .cloned()
        .ok_or_else(|| ApiError::internal("touchpoint missing after record"))
}

/// Records a postback: first its transaction (the identity), then the touchpoint. A retry after
/// a crash between the two completes the second; a retry of a completed postback returns the
/// touchpoint as first received.
pub async fn record_postback(
    store: &dyn EventStore,
    t: &Touchpoint,
    meta: &CommandMeta,
) -> Result<Touchpoint, ApiError> {
    let done = execute::<Postback>(store, &streams::postback(t.touchpoint_id), t, meta)
        .await
        .map_err(|e| {
            executed(e, |e: PostbackError| {
                ApiError::invalid("transaction_id", e.to_string())
            })
        })?;
    let first = done
        .state
        .0
        .ok_or_else(|| ApiError::internal("postback missing after record"))?;
    let index_meta = CommandMeta {
        id_seed: Uuid::new_v5(&first.touchpoint_id, b"postback-touchpoint"),
        ..meta.clone()
    };
    record_touchpoint(store, &first, &index_meta).await
}

pub async fn set_settings(
    store: &dyn EventStore,
    cmd: &SetSettings,
    meta: &CommandMeta,
) -> Result<ProgramSettings, ApiError> {
    execute::<ProgramSettings>(store, &streams::settings(cmd.program_id), cmd, meta)
        .await
        .map(|done| done.state)
        .map_err(|e| {
            executed(e, |e: SettingsError| {
                let field = match e {
                    SettingsError::Window(_) => "window_days",
                    SettingsError::HalfLife(_) => "half_life_hours",
                };
                ApiError::invalid(field, e.to_string())
            })
        })
}

pub async fn settings(
    store: &dyn EventStore,
    program_id: Uuid,
) -> Result<ProgramSettings, ApiError> {
    load::<ProgramSettings>(store, &streams::settings(program_id))
        .await
        .map(|l| l.state)
        .map_err(|e| executed(e, ApiError::internal))
}

/// Programs whose settings a [`SettingsCache`] keeps; past it, the others' settings are read
/// from the log on each use (still current, only slower).
pub const MAX_CACHED_PROGRAMS: usize = 4_096;

/// Each program's attribution settings as last read. Every conversion of a program reads
/// them and they seldom change, so a use asks the log for the stream's version (the embedded
/// log answers from its index; EventStoreDB reads the stream's last event) and replays the
/// stream only when it moved; before, each conversion replayed every change ever made to its
/// program's settings. Readers share a lock taken only to copy the settings out: a per-stream
/// slot held for the catch-up (what [`StateCache`] keeps) would queue all of a program's
/// concurrent conversions behind one another. A program without settings is answered with the
/// defaults and never cached, so made-up program ids cannot fill the cache.
#[derive(Debug, Default)]
pub struct SettingsCache {
    programs: parking_lot::RwLock<HashMap<Uuid, ProgramSettings>>,
}

impl SettingsCache {
    /// The program's settings as of the log's last change to them.
    pub async fn get(
        &self,
        store: &dyn EventStore,
        program_id: Uuid,
    ) -> Result<ProgramSettings, ApiError> {
        // `ProgramSettings::version` counts the stream's events: its last version + 1 (versions
        // start at 0 without gaps; were they ever not to, every use would miss and replay, never
        // answer stale settings).
        let Some(last) = store.stream_version(&streams::settings(program_id)).await? else {
            return Ok(ProgramSettings::default());
        };
        let changes = last.saturating_add(1);
        if let Some(cached) = self
            .programs
            .read()
            .get(&program_id)
            .filter(|s| s.version == changes)
        {
            return Ok(cached.clone());
        }
        let fresh = settings(store, program_id).await?;
        let mut programs = self.programs.write();
        match programs.get(&program_id) {
            // A slower caller's older read never replaces newer settings.
            Some(held) if held.version > fresh.version => {}
            Some(_) => {
                programs.insert(program_id, fresh.clone());
            }
            None if programs.len() < MAX_CACHED_PROGRAMS => {
                programs.insert(program_id, fresh.clone());
            }
            None => {}
        }
        Ok(fresh)
    }
}

pub async fn get_conversion(
    store: &dyn EventStore,
    conversion_id: Uuid,
) -> Result<Option<ConversionEvent>, ApiError> {
    load::<Published>(store, &streams::conversion(conversion_id))
        .await
        .map(|l| l.state.0)
        .map_err(|e| executed(e, ApiError::internal))
}

/// The last [`MAX_TOUCHPOINTS_READ`] touchpoints of a stream.
async fn recent_touchpoints(
    store: &dyn EventStore,
    stream: &str,
    into: &mut Vec<Touchpoint>,
    seen: &mut HashSet<Uuid>,
) -> Result<(), ApiError> {
    let Some(last) = store.stream_version(stream).await? else {
        return Ok(());
    };
    let from = (last + 1).saturating_sub(MAX_TOUCHPOINTS_READ as u64);
    for recorded in store
        .read_stream(stream, from, MAX_TOUCHPOINTS_READ)
        .await?
    {
        let t = decode_candidate(&recorded).map_err(ApiError::internal)?;
        if seen.insert(t.touchpoint_id) {
            into.push(t);
        }
    }
    Ok(())
}

/// The fields of a stored touchpoint that a decision reads (`conversions::decide`: program,
/// partner, campaign, kind, time, a coupon's code for the reason and a click's IP hash for
/// compliance). Whole touchpoints spent most of their decode in fields no decision reads
/// (landing URL, user-agent hash, link and click ids, visitor); serde skips those without
/// building them, about a twentieth of a conversion's CPU (README, "Benchmarks").
#[derive(Deserialize)]
struct StoredCandidate {
    touchpoint_id: Uuid,
    kind: TouchpointKind,
    program_id: Uuid,
    partner_id: Uuid,
    #[serde(default)]
    campaign_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
    #[serde(default)]
    detail: StoredCandidateDetail,
}

#[derive(Default, Deserialize)]
struct StoredCandidateDetail {
    #[serde(default)]
    ip_hash: Option<String>,
    #[serde(default)]
    coupon_code: Option<String>,
}

/// A stored touchpoint as a decision's candidate: the fields [`StoredCandidate`] names, the
/// others left empty. An event this shortcut does not know (another type, an older schema
/// to upcast) is decoded whole.
fn decode_candidate(recorded: &RecordedEvent) -> Result<Touchpoint, String> {
    use pl_runtime::DomainEvent as _;
    if recorded.event_type != touchpoints::RECORDED_EVENT_TYPE
        || TouchpointEvent::needs_upcast(&recorded.event_type, recorded.schema_version)
    {
        let TouchpointEvent::TouchpointRecorded(t) = decode_event::<TouchpointEvent>(recorded)?;
        return Ok(t);
    }
    let c: StoredCandidate = serde_json::from_slice(&recorded.data)
        .map_err(|e| format!("event {} ({}): {e}", recorded.id, recorded.event_type))?;
    Ok(Touchpoint {
        touchpoint_id: c.touchpoint_id,
        kind: c.kind,
        program_id: c.program_id,
        partner_id: c.partner_id,
        campaign_id: c.campaign_id,
        visitor_id: None,
        customer_id: None,
        occurred_at: c.occurred_at,
        detail: Detail {
            ip_hash: c.detail.ip_hash,
            coupon_code: c.detail.coupon_code,
            ..Detail::default()
        },
    })
}

/// Everything a fresh decision may use, read from the log.
async fn gather(
    store: &dyn EventStore,
    crm: &CrmCache,
    facts: &ConversionFacts,
    window_days: u32,
) -> Result<Candidates, ApiError> {
    let mut c = Candidates::default();
    let mut seen = HashSet::new();
    if let Some(v) = &facts.visitor_id {
        recent_touchpoints(
            store,
            &streams::visitor_touchpoints(v),
            &mut c.touchpoints,
            &mut seen,
        )
        .await?;
    }
    recent_touchpoints(
        store,
        &streams::customer_touchpoints(&facts.customer_id),
        &mut c.touchpoints,
        &mut seen,
    )
    .await?;
    let mut deal_streams = vec![streams::crm_deal_by_customer(
        facts.program_id,
        &facts.customer_id,
    )];
    if let Some(d) = &facts.customer_domain {
        deal_streams.push(streams::crm_deal_by_domain(facts.program_id, d));
    }
    for s in deal_streams {
        // Uncached: a customer's or domain's deal stream is read about once (usually empty).
        for d in load_crm(store, &s).await?.deals {
            if !c.deals.iter().any(|x| x.deal_id == d.deal_id) {
                c.deals.push(d);
            }
        }
    }
    // Status histories of the partners that could earn: those of the program's touchpoints in
    // the window, and of the deals.
    let at = facts.occurred_at;
    let partners: BTreeSet<Uuid> = c
        .touchpoints
        .iter()
        .filter(|t| t.program_id == facts.program_id && in_window(t.occurred_at, at, window_days))
        .map(|t| t.partner_id)
        .chain(c.deals.iter().map(|d| d.partner_id))
        .collect();
    let mut histories = BTreeMap::new();
    for p in partners {
        let stream = streams::crm_partner(p);
        let statuses = with_crm(store, crm, &stream, |r| r.statuses.clone()).await?;
        histories.insert(p, statuses);
    }
    c.partners = histories;
    Ok(c)
}

fn conversion_error(e: ConversionError) -> ApiError {
    match e {
        ConversionError::DecidedDifferently { external_id } => ApiError::AlreadyExists {
            what: "conversion (with other details), external id",
            id: external_id,
        },
        ConversionError::OriginalNotFound { external_id } => ApiError::NotFound {
            what: "conversion of this customer, external id",
            id: external_id,
        },
        e @ (ConversionError::CurrencyMismatch { .. }
        | ConversionError::ExceedsRemaining { .. }) => ApiError::invalid("amount", e.to_string()),
        e @ ConversionError::NotReversible { .. } => {
            ApiError::invalid("original_external_id", e.to_string())
        }
        e @ ConversionError::Full => ApiError::rule(e.to_string()),
    }
}

/// The answer to a conversion already published: the same facts get its event again, other
/// facts under its external id are refused.
async fn published_before(
    store: &dyn EventStore,
    facts: &ConversionFacts,
) -> Result<Option<ConversionEvent>, ApiError> {
    let Some(existing) = get_conversion(store, facts.conversion_id).await? else {
        return Ok(None);
    };
    // The digest only for a retry: a first decision computes it once, in the decider.
    if existing.facts_sha256() == facts.digest() {
        return Ok(Some(existing));
    }
    // Without a business time of its own, a retry (or the same conversion under a new key)
    // carries another receipt time: the same facts at the first one's time are the same.
    if facts.occurred_at_is_receipt_time {
        let at_first = ConversionFacts {
            occurred_at: existing.occurred_at(),
            ..facts.clone()
        };
        if existing.facts_sha256() == at_first.digest() {
            return Ok(Some(existing));
        }
    }
    Err(conversion_error(ConversionError::DecidedDifferently {
        external_id: facts.external_id.clone(),
    }))
}

/// Decides a conversion (once per program and external id) and publishes the decision.
///
/// A new decision and its publication are one append to two streams (the customer's
/// relationship and the conversion's own stream, the outbox the relay reads), so the embedded
/// log stores both or neither and the caller waits for one sync, not two. A decision stored
/// without its publication (an adapter that appends the streams one after another, or a log
/// written before the two were one append) is published on the next try, from the
/// relationship's state.
pub async fn record_conversion(
    store: &dyn EventStore,
    crm: &CrmCache,
    programs: &SettingsCache,
    facts: &ConversionFacts,
    meta: &CommandMeta,
) -> Result<ConversionEvent, ApiError> {
    if let Some(existing) = published_before(store, facts).await? {
        return Ok(existing);
    }
    let program = programs.get(store, facts.program_id).await?;
    let candidates = if facts.conversion_type.is_reversal()
        || facts.conversion_type == crate::conversions::ConversionType::SubscriptionCancelled
    {
        Candidates::default()
    } else {
        gather(store, crm, facts, program.current.window_days).await?
    };
    let cmd = Decide {
        facts: facts.clone(),
        settings: program.current,
        settings_version: program.version,
        candidates,
    };
    let relationship = streams::relationship(facts.program_id, &facts.customer_id);
    let conversion = streams::conversion(facts.conversion_id);
    let publish_meta = CommandMeta {
        id_seed: Uuid::new_v5(&facts.conversion_id, b"publish"),
        ..meta.clone()
    };
    // Once only: a second id conflict is no twin's doing, and is the caller's answer.
    let mut twin_seen = false;
    for attempt in 0..=MAX_CONFLICT_RETRIES {
        // After a lost race the winner may have been this very conversion.
        if attempt > 0 {
            if let Some(existing) = published_before(store, facts).await? {
                return Ok(existing);
            }
        }
        let decided = decide_on::<Relationship>(store, &relationship, &cmd, meta)
            .await
            .map_err(|e| executed(e, conversion_error))?;
        let (state, decision_append) = match decided {
            Decided::Settled(done) => {
                // Decided before: publish what was decided, alone.
                let event = decision_event(&done.state, facts)?;
                publish(store, &conversion, &event, &publish_meta).await?;
                return Ok(event);
            }
            Decided::Pending { state, append, .. } => (state, append),
        };
        let event = decision_event(&state, facts)?;
        let publication = StreamAppend {
            stream: conversion.clone(),
            expected: ExpectedVersion::NoStream,
            events: to_new_events::<_, ConversionError>(
                std::slice::from_ref(&event),
                &publish_meta,
            )
            .map_err(|e| executed(e, conversion_error))?,
        };
        let ids: Vec<Uuid> = decision_append
            .events
            .iter()
            .chain(&publication.events)
            .map(|e| e.id)
            .collect();
        match store
            .append_streams(vec![decision_append, publication])
            .await
        {
            Ok(_) => return Ok(event),
            Err(e) if e.is_conflict() => {
                tracing::debug!(%relationship, %conversion, "decision lost a concurrency race; deciding again");
            }
            // A twin in another process stored this very decision first: the next attempt
            // finds it published and answers with it.
            Err(e) if !twin_seen && lost_to_twin(&e, &ids) => {
                twin_seen = true;
                tracing::debug!(%relationship, %conversion, "a twin stored the decision first");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict {
        stream: relationship,
    })
}

/// The published form of the decision about `facts` in a relationship's state.
fn decision_event(
    state: &Relationship,
    facts: &ConversionFacts,
) -> Result<ConversionEvent, ApiError> {
    state
        .decisions
        .get(&facts.conversion_id)
        .map(contract::publish)
        .ok_or_else(|| ApiError::internal("decision missing after decide"))
}

/// Publishes a decision stored before on its own (idempotent: the same event again changes
/// nothing).
async fn publish(
    store: &dyn EventStore,
    conversion: &str,
    event: &ConversionEvent,
    meta: &CommandMeta,
) -> Result<(), ApiError> {
    execute::<Published>(store, conversion, event, meta)
        .await
        .map(|_| ())
        .map_err(|e| {
            executed(e, |e| ApiError::AlreadyExists {
                what: "conversion (published differently)",
                id: e.0.to_string(),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pl_eventlog::{EventMetadata, GENESIS_HASH};
    use pl_runtime::DomainEvent as _;

    fn stored(t: &Touchpoint) -> RecordedEvent {
        let event = TouchpointEvent::TouchpointRecorded(t.clone());
        let (event_type, data) = event.encode().unwrap();
        RecordedEvent {
            stream: streams::visitor_touchpoints("v-1"),
            version: 0,
            position: 0,
            recorded_at: t.occurred_at,
            id: Uuid::from_u128(1),
            event_type,
            schema_version: event.schema_version(),
            data,
            metadata: EventMetadata {
                occurred_at: t.occurred_at,
                correlation_id: None,
                causation_id: None,
                trace_context: BTreeMap::new(),
            },
            prev_hash: GENESIS_HASH,
            hash: GENESIS_HASH,
        }
    }

    fn click() -> Touchpoint {
        Touchpoint {
            touchpoint_id: Uuid::from_u128(0x10),
            kind: TouchpointKind::Click,
            program_id: Uuid::from_u128(0x20),
            partner_id: Uuid::from_u128(0x30),
            campaign_id: Some(Uuid::from_u128(0x40)),
            visitor_id: Some("v-1".into()),
            customer_id: Some("c-1".into()),
            occurred_at: DateTime::parse_from_rfc3339("2026-03-01T12:00:00.5Z")
                .unwrap()
                .with_timezone(&Utc),
            detail: Detail {
                tracking_link_id: Some(Uuid::from_u128(0x50)),
                landing_url: Some("https://shop.example/?q=\"quoted\"".into()),
                ip_hash: Some("ab".repeat(32)),
                user_agent_hash: Some("cd".repeat(32)),
                coupon_code: Some("BOB10".into()),
                click_id: Some(Uuid::from_u128(0x60)),
                ..Detail::default()
            },
        }
    }

    #[test]
    fn a_candidate_keeps_every_field_a_decision_reads_and_leaves_the_rest_empty() {
        let full = click();
        let candidate = decode_candidate(&stored(&full)).unwrap();
        let expected = Touchpoint {
            visitor_id: None,
            customer_id: None,
            detail: Detail {
                ip_hash: full.detail.ip_hash.clone(),
                coupon_code: full.detail.coupon_code.clone(),
                ..Detail::default()
            },
            ..full
        };
        assert_eq!(candidate, expected);
    }

    #[test]
    fn a_candidate_without_the_optional_fields_decodes_with_them_empty() {
        let bare = Touchpoint {
            campaign_id: None,
            detail: Detail::default(),
            ..click()
        };
        let candidate = decode_candidate(&stored(&bare)).unwrap();
        assert_eq!(candidate.campaign_id, None);
        assert_eq!(candidate.detail, Detail::default());
    }

    #[test]
    fn the_shortcut_names_the_event_type_the_log_stores() {
        let (event_type, _) = TouchpointEvent::TouchpointRecorded(click())
            .encode()
            .unwrap();
        assert_eq!(event_type, touchpoints::RECORDED_EVENT_TYPE);
    }

    /// Counts the events each stream read returns, per stream.
    #[derive(Debug, Default)]
    struct EventsRead(std::sync::Mutex<BTreeMap<String, usize>>);

    #[async_trait::async_trait]
    impl pl_eventlog::StoreHooks for EventsRead {
        async fn after_read_stream(
            &self,
            stream: &str,
            answer: &Result<Vec<RecordedEvent>, pl_eventlog::LogError>,
        ) {
            let read = answer.as_ref().map_or(0, Vec::len);
            *self.0.lock().unwrap().entry(stream.to_owned()).or_default() += read;
        }
    }

    impl EventsRead {
        fn take(&self, stream: &str) -> usize {
            self.0.lock().unwrap().remove(stream).unwrap_or(0)
        }
    }

    fn window(program_id: Uuid, window_days: u32, n: u128) -> (SetSettings, CommandMeta) {
        let cmd = SetSettings {
            program_id,
            settings: crate::settings::Settings {
                window_days,
                ..Default::default()
            },
        };
        let meta = CommandMeta {
            id_seed: Uuid::from_u128(0x5e7 + n),
            occurred_at: DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            correlation_id: None,
            causation_id: None,
            trace_context: BTreeMap::new(),
        };
        (cmd, meta)
    }

    /// A log whose stream reads are counted, holding one settings change per window (in order),
    /// with the count of those writes' reads cleared; and the settings stream's name.
    async fn counted_settings(
        program: Uuid,
        windows: &[u32],
    ) -> (
        pl_eventlog::Hooked<pl_eventlog::MemoryLog, EventsRead>,
        String,
    ) {
        let store = pl_eventlog::Hooked {
            inner: pl_eventlog::MemoryLog::default(),
            hooks: EventsRead::default(),
        };
        for (n, days) in windows.iter().enumerate() {
            let (cmd, meta) = window(program, *days, n as u128);
            set_settings(&store, &cmd, &meta).await.unwrap();
        }
        let stream = streams::settings(program);
        store.hooks.take(&stream);
        (store, stream)
    }

    #[tokio::test]
    async fn a_programs_settings_are_replayed_once_and_then_read_without_replaying_their_history() {
        let program = Uuid::from_u128(0x70);
        let (store, stream) = counted_settings(program, &[60, 45, 90]).await;
        let cache = SettingsCache::default();

        let first = cache.get(&store, program).await.unwrap();
        assert_eq!((first.current.window_days, first.version), (90, 3));
        assert_eq!(
            store.hooks.take(&stream),
            3,
            "the first use replays the changes"
        );
        for _ in 0..5 {
            let again = cache.get(&store, program).await.unwrap();
            assert_eq!((again.current.window_days, again.version), (90, 3));
        }
        assert_eq!(store.hooks.take(&stream), 0, "later uses read no event");
    }

    #[tokio::test]
    async fn a_change_of_settings_made_anywhere_is_seen_by_the_next_conversion() {
        let store = pl_eventlog::MemoryLog::default();
        let program = Uuid::from_u128(0x71);
        let cache = SettingsCache::default();
        let defaults = cache.get(&store, program).await.unwrap();
        assert_eq!((defaults.current.window_days, defaults.version), (30, 0));
        // Written straight to the log, as another replica of the service would.
        let (cmd, meta) = window(program, 7, 0);
        set_settings(&store, &cmd, &meta).await.unwrap();
        let changed = cache.get(&store, program).await.unwrap();
        assert_eq!((changed.current.window_days, changed.version), (7, 1));
    }

    #[tokio::test]
    async fn programs_past_the_cache_limit_still_get_their_own_settings() {
        let store = pl_eventlog::MemoryLog::default();
        let cache = SettingsCache::default();
        for p in 0..MAX_CACHED_PROGRAMS as u128 {
            let program = Uuid::from_u128(0x1000 + p);
            let (cmd, meta) = window(program, 60, 0x1000 + p);
            set_settings(&store, &cmd, &meta).await.unwrap();
            cache.get(&store, program).await.unwrap();
        }
        assert_eq!(cache.programs.read().len(), MAX_CACHED_PROGRAMS);
        let late = Uuid::from_u128(0x72);
        let (cmd, meta) = window(late, 14, 0);
        set_settings(&store, &cmd, &meta).await.unwrap();
        let got = cache.get(&store, late).await.unwrap();
        assert_eq!(got.current.window_days, 14);
        assert_eq!(cache.programs.read().len(), MAX_CACHED_PROGRAMS);
    }

    #[tokio::test]
    async fn programs_without_settings_get_the_defaults_and_take_no_room_in_the_cache() {
        let store = pl_eventlog::MemoryLog::default();
        let cache = SettingsCache::default();
        for p in 0..100u128 {
            let s = cache
                .get(&store, Uuid::from_u128(0x2000 + p))
                .await
                .unwrap();
            assert_eq!((s.current, s.version), (Default::default(), 0));
        }
        assert!(cache.programs.read().is_empty());
    }

    #[tokio::test]
    async fn a_slower_callers_older_read_never_replaces_newer_cached_settings() {
        let store = pl_eventlog::MemoryLog::default();
        let program = Uuid::from_u128(0x73);
        let (cmd, meta) = window(program, 45, 0);
        set_settings(&store, &cmd, &meta).await.unwrap();
        let cache = SettingsCache::default();
        // As if a faster caller had already cached a second change this caller's read missed.
        let newer = ProgramSettings {
            current: crate::settings::Settings {
                window_days: 90,
                ..Default::default()
            },
            version: 2,
        };
        cache.programs.write().insert(program, newer);
        let read = cache.get(&store, program).await.unwrap();
        assert_eq!((read.current.window_days, read.version), (45, 1));
        let held = cache.programs.read().get(&program).cloned().unwrap();
        assert_eq!((held.current.window_days, held.version), (90, 2));
    }

    #[tokio::test]
    async fn each_conversion_reads_its_programs_settings_through_the_cache() {
        let program = Uuid::from_u128(0x74);
        let (store, stream) = counted_settings(program, &[60, 30]).await;
        let (crm, programs) = (CrmCache::default(), SettingsCache::default());
        for n in 0..3u128 {
            let facts = lead(program, n);
            let (_, meta) = window(program, 30, 0x100 + n);
            let event = record_conversion(&store, &crm, &programs, &facts, &meta)
                .await
                .unwrap();
            assert!(!event.is_attributed(), "no touchpoints, no partner");
        }
        assert_eq!(
            store.hooks.take(&stream),
            2,
            "the settings' two changes are replayed once, for the first conversion"
        );
    }

    /// Lead `n` of program `program`, by customer `n`, with no touchpoints.
    fn lead(program: Uuid, n: u128) -> ConversionFacts {
        let external_id = format!("order-{n}");
        ConversionFacts {
            conversion_id: streams::conversion_id(program, &external_id),
            external_id,
            program_id: program,
            conversion_type: crate::conversions::ConversionType::Lead,
            customer_id: format!("customer-{n}"),
            visitor_id: None,
            customer_domain: None,
            amount: None,
            products: vec![],
            customer_country: None,
            original_external_id: None,
            occurred_at: click().occurred_at,
            customer_email_hash: None,
            revenue: Default::default(),
            occurred_at_is_receipt_time: false,
        }
    }

    /// Before the next append to a stream starting with `prefix`: fails it (`fail`), or writes
    /// `race` there first as another writer would; once.
    #[derive(Debug, Default)]
    struct Once {
        prefix: std::sync::Mutex<Option<String>>,
        fail: bool,
        race: Option<pl_eventlog::NewEvent>,
    }

    #[async_trait::async_trait]
    impl pl_eventlog::StoreHooks for Once {
        async fn before_append(
            &self,
            inner: &dyn EventStore,
            stream: &str,
        ) -> Result<(), pl_eventlog::LogError> {
            let armed = {
                let mut prefix = self.prefix.lock().unwrap();
                let hit = prefix.as_deref().is_some_and(|p| stream.starts_with(p));
                if hit {
                    *prefix = None;
                }
                hit
            };
            if !armed {
                return Ok(());
            }
            if let Some(event) = &self.race {
                inner
                    .append(
                        stream,
                        pl_eventlog::ExpectedVersion::Any,
                        vec![event.clone()],
                    )
                    .await?;
            }
            if self.fail {
                return Err(pl_eventlog::LogError::Io("disk unplugged".into()));
            }
            Ok(())
        }
    }

    fn once(prefix: &str, fail: bool, race: Option<pl_eventlog::NewEvent>) -> Once {
        Once {
            prefix: std::sync::Mutex::new(Some(prefix.to_owned())),
            fail,
            race,
        }
    }

    async fn versions(
        store: &dyn EventStore,
        facts: &ConversionFacts,
    ) -> (Option<u64>, Option<u64>) {
        let relationship = streams::relationship(facts.program_id, &facts.customer_id);
        let conversion = streams::conversion(facts.conversion_id);
        (
            store.stream_version(&relationship).await.unwrap(),
            store.stream_version(&conversion).await.unwrap(),
        )
    }

    /// Stores the decision about `facts` (no touchpoints, default settings) in its
    /// customer's relationship alone, unpublished.
    async fn decide_alone(store: &dyn EventStore, facts: &ConversionFacts, meta: &CommandMeta) {
        let cmd = Decide {
            facts: facts.clone(),
            settings: Default::default(),
            settings_version: 0,
            candidates: Candidates::default(),
        };
        let relationship = streams::relationship(facts.program_id, &facts.customer_id);
        execute::<Relationship>(store, &relationship, &cmd, meta)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_conversion_without_a_business_time_retried_later_gets_the_original_not_already_exists(
    ) {
        let program = Uuid::from_u128(0x74);
        let store = pl_eventlog::MemoryLog::default();
        let (crm, programs) = (CrmCache::default(), SettingsCache::default());
        let facts = ConversionFacts {
            occurred_at_is_receipt_time: true,
            ..lead(program, 1)
        };
        let (_, meta) = window(program, 30, 0x100);
        let first = record_conversion(&store, &crm, &programs, &facts, &meta)
            .await
            .unwrap();

        // The retry (or a new key for the same external id) arrives a minute later: its
        // receipt time, and its request's ids, differ.
        let later = ConversionFacts {
            occurred_at: facts.occurred_at + chrono::Duration::minutes(1),
            ..facts.clone()
        };
        let (_, other_meta) = window(program, 30, 0x101);
        let again = record_conversion(&store, &crm, &programs, &later, &other_meta)
            .await
            .unwrap();
        assert_eq!(again, first);

        // A business time the caller gave is a fact: another one is another conversion.
        let given = ConversionFacts {
            occurred_at_is_receipt_time: false,
            ..later.clone()
        };
        let refused = record_conversion(&store, &crm, &programs, &given, &other_meta).await;
        assert!(
            matches!(refused, Err(ApiError::AlreadyExists { .. })),
            "{refused:?}"
        );
        // And so are other details, whatever the time.
        let other_amount = ConversionFacts {
            products: vec!["another-product".into()],
            ..later
        };
        let refused = record_conversion(&store, &crm, &programs, &other_amount, &other_meta).await;
        assert!(
            matches!(refused, Err(ApiError::AlreadyExists { .. })),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_decision_is_stored_with_its_publication_or_not_at_all() {
        let program = Uuid::from_u128(0x75);
        let store = pl_eventlog::Hooked {
            inner: pl_eventlog::MemoryLog::default(),
            hooks: once("conversion-", true, None),
        };
        let (crm, programs) = (CrmCache::default(), SettingsCache::default());
        let facts = lead(program, 1);
        let (_, meta) = window(program, 30, 0x200);

        let failed = record_conversion(&store, &crm, &programs, &facts, &meta).await;
        assert!(
            failed.is_err(),
            "the publication's stream refused the append"
        );
        assert_eq!(
            versions(&store, &facts).await,
            (None, None),
            "no decision without its publication"
        );

        let event = record_conversion(&store, &crm, &programs, &facts, &meta)
            .await
            .unwrap();
        assert_eq!(versions(&store, &facts).await, (Some(0), Some(0)));
        assert_eq!(
            get_conversion(&store, facts.conversion_id).await.unwrap(),
            Some(event)
        );
    }

    #[tokio::test]
    async fn a_decision_stored_without_its_publication_is_published_by_the_next_try() {
        // As a log written by an adapter that appends the streams one after another, cut
        // between the two.
        let program = Uuid::from_u128(0x76);
        let store = pl_eventlog::MemoryLog::default();
        let (crm, programs) = (CrmCache::default(), SettingsCache::default());
        let facts = lead(program, 1);
        let (_, meta) = window(program, 30, 0x300);
        decide_alone(&store, &facts, &meta).await;
        assert_eq!(versions(&store, &facts).await, (Some(0), None));

        let event = record_conversion(&store, &crm, &programs, &facts, &meta)
            .await
            .unwrap();
        assert_eq!(
            versions(&store, &facts).await,
            (Some(0), Some(0)),
            "published, not decided twice"
        );
        assert_eq!(
            get_conversion(&store, facts.conversion_id).await.unwrap(),
            Some(event)
        );
    }

    #[tokio::test]
    async fn a_conversion_that_loses_a_race_for_its_customer_is_decided_again_and_lands() {
        let program = Uuid::from_u128(0x77);
        let facts = lead(program, 1);
        // Another conversion of the same customer, decided by another replica in between.
        let rival = lead(program, 2);
        let rival = ConversionFacts {
            customer_id: facts.customer_id.clone(),
            ..rival
        };
        let (_, rival_meta) = window(program, 30, 0x401);
        let rival_decision = {
            let scratch = pl_eventlog::MemoryLog::default();
            decide_alone(&scratch, &rival, &rival_meta).await;
            let relationship = streams::relationship(program, &rival.customer_id);
            scratch.read_stream(&relationship, 0, 1).await.unwrap()[0].clone()
        };
        let race = pl_eventlog::NewEvent {
            id: rival_decision.id,
            event_type: rival_decision.event_type,
            schema_version: rival_decision.schema_version,
            data: rival_decision.data,
            metadata: rival_decision.metadata,
        };
        let store = pl_eventlog::Hooked {
            inner: pl_eventlog::MemoryLog::default(),
            hooks: once("relationship-", false, Some(race)),
        };
        let (crm, programs) = (CrmCache::default(), SettingsCache::default());
        let (_, meta) = window(program, 30, 0x400);

        let event = record_conversion(&store, &crm, &programs, &facts, &meta)
            .await
            .unwrap();
        assert_eq!(
            versions(&store, &facts).await,
            (Some(1), Some(0)),
            "the rival's decision, then this one, both kept"
        );
        assert_eq!(
            get_conversion(&store, facts.conversion_id).await.unwrap(),
            Some(event)
        );
    }

    #[test]
    fn a_broken_stored_touchpoint_is_an_error_naming_the_event() {
        let mut broken = stored(&click());
        broken.data = bytes::Bytes::from_static(b"{\"touchpoint_id\":\"not a uuid\"}");
        let e = decode_candidate(&broken).unwrap_err();
        assert!(e.contains(&Uuid::from_u128(1).to_string()), "{e}");
    }
}
