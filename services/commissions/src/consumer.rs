//! Integration events from other services, turned into commands. Every event this handler
//! writes gets an id derived from the consumed event, so a redelivered message appends nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pl_bus::{derived_event_id, HandleError, IntegrationEvent, Message};
use pl_eventlog::EventStore;
use pl_runtime::aggregate::execute;
use pl_runtime::CommandMeta;
use serde::Deserialize;
use tracing::Instrument;
use uuid::Uuid;

use crate::accruals::{self, Caches};
use crate::book::CreditKind;
use crate::contract::{
    ConversionAttributed, ConversionRejected, ParentChanged, PartnerCredit, PayoutHold,
    ProgramTiersChanged, Reversal, SanctionsStatusChanged, SubscriptionCancelled, TierChanged,
    VerificationRecorded,
};
use crate::domain::{self, Account, Opening};
use crate::eligibility::{self, Eligibility, EligibilityEvent};
use crate::network::{self, NetworkEvent, TierGrant};

/// The durable consumers of this service: (durable name, subject filter). One filter each,
/// because NATS before 2.10 allows a single filter subject per consumer.
pub fn subscriptions(prefix: &str) -> Vec<(String, String)> {
    vec![
        (
            "commissions-crm".to_owned(),
            format!("{prefix}.crm.PartnerApplied"),
        ),
        (
            "commissions-crm-parents".to_owned(),
            format!("{prefix}.crm.PartnerParentChanged"),
        ),
        (
            "commissions-crm-tiers".to_owned(),
            format!("{prefix}.crm.PartnerTierChanged"),
        ),
        (
            "commissions-crm-program-tiers".to_owned(),
            format!("{prefix}.crm.ProgramTiersChanged"),
        ),
        (
            "commissions-crm-campaign-fees".to_owned(),
            format!("{prefix}.crm.CampaignFeeCommitted"),
        ),
        (
            "commissions-crm-campaign-bonuses".to_owned(),
            format!("{prefix}.crm.CampaignBonusAwarded"),
        ),
        (
            "commissions-crm-mdf".to_owned(),
            format!("{prefix}.crm.MdfReimbursementApproved"),
        ),
        (
            "commissions-attribution".to_owned(),
            format!("{prefix}.attribution.>"),
        ),
        (
            "commissions-compliance".to_owned(),
            format!("{prefix}.compliance.>"),
        ),
    ]
}

/// Lanes the commissions consumers run on: messages of one key in order, others concurrently.
pub const LANES: usize = 16;

/// The ordering key of a message. Attribution's events are keyed by program: the engine's
/// state is per partner and plan (tier volume, period caps, a customer's months), and a
/// conversion touches several partners' books (shares, overrides), so only a program's whole
/// sequence in delivery order decides exactly as a sequential consumer would. Compliance's and
/// CRM's facts are keyed by partner (they touch one partner's eligibility or account).
/// Anything unparseable is keyed by its id (it is dead-lettered anyway).
pub fn ordering_key(message: &Message) -> u64 {
    #[derive(Deserialize)]
    struct Keys<'a> {
        #[serde(borrow, default)]
        program_id: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        partner_id: Option<std::borrow::Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        data: Keys<'a>,
    }
    let from_attribution = message.subject.split('.').nth(1) == Some("attribution");
    match serde_json::from_slice::<Envelope<'_>>(&message.payload) {
        Ok(Envelope {
            data: Keys {
                program_id: Some(program),
                ..
            },
        }) if from_attribution => pl_bus::lane_key(&["program", &program]),
        Ok(Envelope {
            data: Keys {
                partner_id: Some(partner),
                ..
            },
        }) => pl_bus::lane_key(&["partner", &partner]),
        _ => pl_bus::lane_key(&[&message.id.to_string()]),
    }
}

/// What commissions needs of partner CRM's `PartnerApplied` (its own reading of the contract,
/// so the two services share no code).
#[derive(Debug, Deserialize)]
struct PartnerApplied {
    partner_id: Uuid,
    program_id: Uuid,
    #[serde(default)]
    partner_type: Option<String>,
}

/// Handles one bus message: `Ok` to ack, `Retry` for transient failures, `Permanent` for
/// messages that can never be handled (they go to the dead-letter subject).
pub async fn handle(
    store: &dyn EventStore,
    caches: &Caches,
    message: Message,
) -> Result<(), HandleError> {
    let event = IntegrationEvent::from_message(&message)
        .map_err(|e| HandleError::Permanent(format!("not an integration event: {e}")))?;
    if !CONSUMED_EVENT_TYPES.contains(&event.event_type.as_str()) {
        // A subject filter let through something this version does not act on: skip it.
        tracing::debug!(event_type = %event.event_type, "ignoring event type");
        return Ok(());
    }
    let span = tracing::info_span!("consume", event_type = %event.event_type, event_id = %event.id);
    pl_telemetry::set_parent(&span, &message.headers);
    let trace_context = pl_telemetry::inject(&span);
    async move {
        match event.event_type.as_str() {
            "PartnerApplied" => open_account(store, &event, trace_context).await,
            "ConversionAttributed" => {
                let c = ConversionAttributed::parse(event.data.get())
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                match accruals::on_conversion(store, caches, &event, &c, &trace_context).await {
                    Err(HandleError::Permanent(reason)) => {
                        accruals::on_refused(store, caches, &event, &c, &reason, &trace_context)
                            .await?;
                        Err(HandleError::Permanent(reason))
                    }
                    other => other,
                }
            }
            "ConversionRefunded" | "ChargebackReceived" => {
                let r = Reversal::parse(&event.event_type, event.data.get())
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                accruals::on_reversal(store, caches, &event, &r, &trace_context).await
            }
            "CampaignFeeCommitted" | "CampaignBonusAwarded" | "MdfReimbursementApproved" => {
                let c = PartnerCredit::parse(&event.event_type, event.data.get())
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                let credit = match event.event_type.as_str() {
                    "CampaignFeeCommitted" => CreditKind::CampaignFee {
                        campaign_id: c.subject_id,
                    },
                    "CampaignBonusAwarded" => CreditKind::CampaignBonus {
                        campaign_id: c.subject_id,
                    },
                    _ => CreditKind::MdfReimbursement {
                        claim_id: c.subject_id,
                    },
                };
                accruals::on_credit(store, caches, &event, credit, &c, &trace_context).await
            }
            "ConversionRejected" => {
                let r = ConversionRejected::parse(event.data.get())
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                accruals::on_rejection(store, caches, &event, &r, &trace_context).await
            }
            "SubscriptionCancelled" => {
                let c = SubscriptionCancelled::parse(event.data.get())
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                accruals::on_churn(store, caches, &event, &c, &trace_context).await
            }
            "VerificationRecorded" => {
                let v = VerificationRecorded::parse(event.data.get())
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                let fact = EligibilityEvent::VerificationRecorded {
                    source_event_id: event.id,
                    partner_id: v.partner_id,
                    kind: v.kind,
                    status: v.status,
                    occurred_at: v.occurred_at,
                    valid_until: v.valid_until,
                };
                record_eligibility(store, &event, &fact, trace_context).await
            }
            "PayoutHoldPlaced" | "PayoutHoldReleased" => {
                let h = PayoutHold::parse(&event.event_type, event.data.get())
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                let fact = if event.event_type == "PayoutHoldPlaced" {
                    EligibilityEvent::PayoutHoldPlaced {
                        source_event_id: event.id,
                        partner_id: h.partner_id,
                        hold_id: h.hold_id,
                        reason: h.reason,
                        occurred_at: h.occurred_at,
                    }
                } else {
                    EligibilityEvent::PayoutHoldReleased {
                        source_event_id: event.id,
                        partner_id: h.partner_id,
                        hold_id: h.hold_id,
                        reason: h.reason,
                        occurred_at: h.occurred_at,
                    }
                };
                record_eligibility(store, &event, &fact, trace_context).await
            }
            "PartnerParentChanged" => {
                let p = ParentChanged::parse(event.data.get())
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                let fact = NetworkEvent::ParentRecorded {
                    source_event_id: event.id,
                    partner_id: p.partner_id,
                    parent_partner_id: p.parent_partner_id,
                    effective_from: p.occurred_at,
                };
                record_network(store, caches, &event, p.program_id, &fact, trace_context).await
            }
            "PartnerTierChanged" => {
                let t = TierChanged::parse(event.data.get())
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                let fact = NetworkEvent::TierRecorded {
                    source_event_id: event.id,
                    partner_id: t.partner_id,
                    tier: t.tier,
                    effective_from: t.effective_from,
                };
                record_network(store, caches, &event, t.program_id, &fact, trace_context).await
            }
            "ProgramTiersChanged" => {
                let t = ProgramTiersChanged::parse(event.data.get())
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                let fact = NetworkEvent::TiersDefined {
                    source_event_id: event.id,
                    tiers: t
                        .tiers
                        .into_iter()
                        .map(|t| TierGrant {
                            code: t.code,
                            rank: t.rank,
                            plan_ids: t.access.plan_ids,
                        })
                        .collect(),
                    occurred_at: t.occurred_at,
                };
                record_network(store, caches, &event, t.program_id, &fact, trace_context).await
            }
            "SanctionsStatusChanged" => {
                let c = SanctionsStatusChanged::parse(event.data.get())
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                let fact = EligibilityEvent::SanctionsStatusChanged {
                    source_event_id: event.id,
                    partner_id: c.partner_id,
                    screening_id: c.screening_id,
                    status: c.status,
                    occurred_at: c.occurred_at,
                };
                record_eligibility(store, &event, &fact, trace_context).await
            }
            other => Err(HandleError::Permanent(format!(
                "{other} is listed as consumed but has no handler"
            ))),
        }
    }
    .instrument(span)
    .await
}

/// Messages one call of [`handle_batch`] takes at most: bounds what one batch holds in memory
/// and how many commands one book decides before its append.
pub const MAX_BATCH: usize = 256;

/// Handles messages of one ordering key, in delivery order, as [`handle`] would one at a time,
/// with one outcome per message. Runs of `ConversionAttributed` are accrued together
/// ([`accruals::on_conversions`]: one append per book instead of one per accrual); when such a
/// run fails, its messages are handled again one by one, so each gets its own outcome. The
/// first message that asks to be retried ends the batch: it and every message after it get
/// `Retry` (those were not attempted), so a runner retrying from there keeps the key's order.
pub async fn handle_batch(
    store: &dyn EventStore,
    caches: &Caches,
    messages: &[Message],
) -> Vec<Result<(), HandleError>> {
    let mut outcomes: Vec<Result<(), HandleError>> = Vec::with_capacity(messages.len());
    let mut at = 0;
    while at < messages.len() {
        // A lone message (what a lane hands over under light load) goes straight to `handle`,
        // which parses it once; only a possible run is parsed here.
        // The run: attributed conversions, and between them messages this consumer skips
        // (attribution's `TouchpointRecorded`, published for compliance, shares the
        // conversions' subject tree and ordering key); `taken` counts both. A skipped message
        // changes nothing, so the conversions around it are accrued together in order.
        let (run, taken) = if messages.len() - at > 1 {
            // Sized up front: growing a vector of these (a few hundred bytes each) by doubling
            // showed in a profile as a twenty-fifth of an accrual's CPU, in copies and freshly
            // zeroed pages (2026-12-05; the bench's pairs could not tell the change from their
            // noise).
            let mut run = Vec::with_capacity((messages.len() - at).min(MAX_BATCH));
            let mut taken = 0;
            for message in &messages[at..] {
                if run.len() == MAX_BATCH {
                    break;
                }
                if let Some(c) = conversion(message) {
                    run.push(c);
                } else if !skipped(message) {
                    break;
                }
                taken += 1;
            }
            (run, taken)
        } else {
            (Vec::new(), 0)
        };
        if run.len() > 1 {
            let span = tracing::info_span!("consume_batch", conversions = run.len());
            match accruals::on_conversions(store, caches, &run)
                .instrument(span)
                .await
            {
                Ok(()) => {
                    outcomes.extend((0..taken).map(|_| Ok(())));
                    at += taken;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, conversions = run.len(), "batched accruals failed; handling them one by one");
                }
            }
        }
        for message in &messages[at..at + taken.max(1)] {
            let outcome = handle(store, caches, message.clone()).await;
            let retry = matches!(outcome, Err(HandleError::Retry(_)));
            outcomes.push(outcome);
            if retry {
                let rest = messages.len() - outcomes.len();
                outcomes.extend((0..rest).map(|_| {
                    Err(HandleError::Retry(
                        "not attempted: an earlier message of its key is retried first".into(),
                    ))
                }));
                return outcomes;
            }
        }
        at += taken.max(1);
    }
    outcomes
}

/// The event types [`handle`] acts on (keep in step with its `match`); any other it skips.
pub const CONSUMED_EVENT_TYPES: &[&str] = &[
    "PartnerApplied",
    "PartnerParentChanged",
    "PartnerTierChanged",
    "ProgramTiersChanged",
    "ConversionAttributed",
    "ConversionRefunded",
    "ChargebackReceived",
    "CampaignFeeCommitted",
    "CampaignBonusAwarded",
    "MdfReimbursementApproved",
    "ConversionRejected",
    "SubscriptionCancelled",
    "VerificationRecorded",
    "PayoutHoldPlaced",
    "PayoutHoldReleased",
    "SanctionsStatusChanged",
];

/// A well-formed integration event of a type [`handle`] skips: acked as it is, so it need not
/// end a run of conversions.
fn skipped(message: &Message) -> bool {
    IntegrationEvent::from_message(message)
        .is_ok_and(|e| !CONSUMED_EVENT_TYPES.contains(&e.event_type.as_str()))
}

/// A message that is an attributed conversion, parsed, with the trace context its events carry
/// (its own span's, child of the producer's); `None` for anything else or anything broken,
/// which [`handle`] then answers precisely.
fn conversion(
    message: &Message,
) -> Option<(
    IntegrationEvent,
    ConversionAttributed,
    BTreeMap<String, String>,
)> {
    let event = IntegrationEvent::from_message(message).ok()?;
    if event.event_type != "ConversionAttributed" {
        return None;
    }
    let c = ConversionAttributed::parse(event.data.get()).ok()?;
    let span = tracing::info_span!("consume", event_type = %event.event_type, event_id = %event.id);
    pl_telemetry::set_parent(&span, &message.headers);
    let trace_context = pl_telemetry::inject(&span);
    Some((event, c, trace_context))
}

async fn open_account(
    store: &dyn EventStore,
    event: &IntegrationEvent,
    trace_context: BTreeMap<String, String>,
) -> Result<(), HandleError> {
    let applied: PartnerApplied = serde_json::from_str(event.data.get()).map_err(|e| {
        HandleError::Permanent(format!("PartnerApplied v{}: {e}", event.schema_version))
    })?;
    let opening = Opening {
        partner_id: applied.partner_id,
        program_id: applied.program_id,
        opened_at: event.occurred_at,
        source_event_id: event.id,
        partner_type: applied.partner_type.clone(),
    };
    let meta = meta_for(event, "open-account", event.occurred_at, trace_context);
    match execute::<Account>(store, &domain::stream(applied.partner_id), &opening, &meta).await {
        Ok(done) => {
            tracing::info!(partner_id = %applied.partner_id, opened = !done.events.is_empty(), "account opening handled");
            Ok(())
        }
        Err(e) => Err(accruals::outcome(e)),
    }
}

/// Keeps CRM's hierarchy or tier fact in the program's network projection, with an id derived
/// from the consumed event (a redelivery appends nothing). Through the accruals' cache, so the
/// next accrual of the program sees it without reading the stream again.
async fn record_network(
    store: &dyn EventStore,
    caches: &Caches,
    event: &IntegrationEvent,
    program_id: Uuid,
    fact: &NetworkEvent,
    trace_context: BTreeMap<String, String>,
) -> Result<(), HandleError> {
    let meta = meta_for(event, "network", event.occurred_at, trace_context);
    match caches
        .network
        .execute(store, &network::stream(program_id), fact, &meta, |n| {
            n.facts()
        })
        .await
    {
        Ok(done) => {
            tracing::info!(%program_id, event_type = %event.event_type, recorded = !done.events.is_empty(), facts = done.view, "network fact handled");
            Ok(())
        }
        Err(e) => Err(accruals::outcome(e)),
    }
}

/// Keeps compliance's fact in the partner's eligibility projection, with an id derived from
/// the consumed event (a redelivery appends nothing).
async fn record_eligibility(
    store: &dyn EventStore,
    event: &IntegrationEvent,
    fact: &EligibilityEvent,
    trace_context: BTreeMap<String, String>,
) -> Result<(), HandleError> {
    let partner_id = fact.partner();
    let meta = meta_for(event, "eligibility", event.occurred_at, trace_context);
    match execute::<Eligibility>(store, &eligibility::stream(partner_id), fact, &meta).await {
        Ok(_) => Ok(()),
        Err(e) => Err(accruals::outcome(e)),
    }
}

fn meta_for(
    event: &IntegrationEvent,
    purpose: &str,
    occurred_at: DateTime<Utc>,
    trace_context: BTreeMap<String, String>,
) -> CommandMeta {
    CommandMeta {
        id_seed: derived_event_id(event.id, &format!("{}:{purpose}", crate::SERVICE)),
        occurred_at,
        correlation_id: event.correlation_id,
        causation_id: Some(event.id),
        trace_context,
    }
}
