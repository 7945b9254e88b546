//! Integration events from attribution and partner CRM, turned into compliance commands. Its
//! one job is routing and error classification: every event it causes gets an id derived from
//! the consumed event, so a redelivered message appends nothing; a payload that breaks its
//! contract is dead-lettered, never half-applied; it never acknowledges a message it did not
//! handle.

use std::collections::{BTreeMap, HashSet};

use pl_bus::{derived_event_id, HandleError, IntegrationEvent, Message};
use pl_runtime::CommandMeta;
use tracing::Instrument;
use uuid::Uuid;

use serde::Deserialize;

use crate::contract::{
    ContractError, ConversionAttributed, PartnerApplied, PartnerStatusChanged, Reversal,
    TouchpointRecorded,
};
use crate::screening::Screened;
use crate::service::{Compliance, ServiceError};

/// A durable consumer of this service and how its runner hands messages to [`handle_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub durable_name: String,
    /// One filter each, because NATS before 2.10 allows a single filter subject per consumer.
    pub filter_subject: String,
    /// Lanes by [`ordering_key`].
    pub lanes: usize,
    /// Messages one handler call takes at most.
    pub max_batch: usize,
}

/// The durable consumers of this service. Attribution's events come in volume and are
/// screened in runs ([`LANES`], [`MAX_BATCH`]); partner CRM's are few, are handled one at a
/// time anyway, and go one per call on one lane, so the handler timeout and a retry concern one
/// message, not a batch of them.
pub fn subscriptions(prefix: &str) -> Vec<Subscription> {
    vec![
        Subscription {
            durable_name: "compliance-attribution".to_owned(),
            filter_subject: format!("{prefix}.attribution.>"),
            lanes: LANES,
            max_batch: MAX_BATCH,
        },
        Subscription {
            durable_name: "compliance-crm".to_owned(),
            filter_subject: format!("{prefix}.crm.>"),
            lanes: 1,
            max_batch: 1,
        },
    ]
}

fn classify(e: ServiceError) -> HandleError {
    match e {
        ServiceError::Conflict(stream) => HandleError::Retry(format!("conflict on {stream}")),
        ServiceError::Store(e) if e.is_invalid_input() => HandleError::Permanent(e.to_string()),
        ServiceError::Store(e) => HandleError::Retry(e.to_string()),
        other => HandleError::Permanent(other.to_string()),
    }
}

fn meta_for(event: &IntegrationEvent, trace_context: BTreeMap<String, String>) -> CommandMeta {
    CommandMeta {
        id_seed: derived_event_id(event.id, crate::SERVICE),
        occurred_at: event.occurred_at,
        correlation_id: event.correlation_id,
        causation_id: Some(event.id),
        trace_context,
    }
}

/// Lanes the attribution consumer runs on. One program's events stay in order on one lane
/// (the fraud rules count per program and per partner, and a conversion's rules read its
/// clicks' counts); programs are hashed onto the lanes, so up to this many are screened
/// concurrently, and one lane's batch may hold several programs' events (a run is then
/// screened across them: each stream still sees its commands in delivery order).
pub const LANES: usize = 16;

/// Events one call of [`handle_batch`] screens together, at most: bounds what one run holds in
/// memory and how many commands one stream decides before its append.
pub const MAX_BATCH: usize = 256;

/// The ordering key of a message: attribution's events by program (see [`LANES`]); partner
/// CRM's all under one key, so they are handled in delivery order (a partner's application
/// before its status changes; they are few); anything unparseable by its id (it is
/// dead-lettered anyway).
pub fn ordering_key(message: &Message) -> u64 {
    #[derive(Deserialize)]
    struct Keys<'a> {
        #[serde(borrow, default)]
        program_id: Option<std::borrow::Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        data: Keys<'a>,
    }
    if message.subject.split('.').nth(1) != Some("attribution") {
        return pl_bus::lane_key(&["in delivery order"]);
    }
    match serde_json::from_slice::<Envelope<'_>>(&message.payload) {
        Ok(Envelope {
            data: Keys {
                program_id: Some(program),
            },
        }) => pl_bus::lane_key(&["program", &program]),
        _ => pl_bus::lane_key(&[&message.id.to_string()]),
    }
}

/// An attribution event the fraud rules screen, parsed; `Ok(None)` for any other type.
fn screened(event: &IntegrationEvent) -> Result<Option<Screened>, ContractError> {
    let data = event.data.get();
    Ok(Some(match event.event_type.as_str() {
        "ConversionAttributed" => Screened::Conversion(ConversionAttributed::parse(data)?),
        kind @ ("ConversionRefunded" | "ChargebackReceived") => Screened::Reversal {
            kind: if kind == "ConversionRefunded" {
                "refund"
            } else {
                "chargeback"
            },
            reversal: Reversal::parse(kind, data)?,
        },
        "TouchpointRecorded" => Screened::Touchpoint(TouchpointRecorded::parse(data)?),
        _ => return Ok(None),
    }))
}

fn log_screened(event: &Screened, flags: usize) {
    match event {
        Screened::Conversion(c) => {
            tracing::info!(conversion_id = %c.conversion_id, flags, "conversion screened");
        }
        Screened::Reversal { reversal, .. } => {
            tracing::info!(conversion_id = %reversal.conversion_id, flags, "reversal counted");
        }
        Screened::Touchpoint(_) => {}
    }
}

/// A message that attribution's screening takes, parsed, with the meta its commands derive
/// from (trace context of its own span, child of the producer's); `None` for anything else or
/// anything broken, which [`handle`] then answers precisely.
fn screenable(message: &Message) -> Option<(Screened, CommandMeta)> {
    let event = IntegrationEvent::from_message(message).ok()?;
    let screened = screened(&event).ok()??;
    let span = tracing::info_span!("consume", event_type = %event.event_type, event_id = %event.id);
    pl_telemetry::set_parent(&span, &message.headers);
    Some((screened, meta_for(&event, pl_telemetry::inject(&span))))
}

/// The longest run of screenable messages `messages` starts with, up to [`MAX_BATCH`]. A run
/// ends before a touchpoint that one of its conversions names: screening counts a run's clicks
/// before its conversions' rules read them (see [`crate::screening`]), which is the order of one
/// at a time only when each click precedes the conversions naming it; a redelivered click can
/// come after.
fn run_from(messages: &[Message]) -> Vec<(Screened, CommandMeta)> {
    let mut named: HashSet<Uuid> = HashSet::new();
    let mut run = Vec::new();
    for message in messages.iter().take(MAX_BATCH) {
        let Some((event, meta)) = screenable(message) else {
            break;
        };
        match &event {
            Screened::Touchpoint(t) if named.contains(&t.touchpoint_id) => break,
            Screened::Conversion(c) => named.extend(c.touchpoints.iter().map(|t| t.touchpoint_id)),
            _ => {}
        }
        run.push((event, meta));
    }
    run
}

/// Handles messages of one ordering key, in delivery order, as [`handle`] would one at a time,
/// with one outcome per message. Runs of attribution's events are screened together
/// ([`Compliance::screen`]: one append per stream instead of one per event); when such a run
/// fails, its messages are handled again one by one, so each gets its own outcome, up to the
/// first one dead-lettered; the messages after that form runs again (once per call: after a
/// second failed run, one by one to its end). The first
/// message that asks to be retried ends the batch: it and every message after it get `Retry`
/// (those were not attempted), so a runner retrying from there keeps the key's order.
pub async fn handle_batch(
    compliance: &Compliance,
    messages: &[Message],
) -> Vec<Result<(), HandleError>> {
    let mut outcomes: Vec<Result<(), HandleError>> = Vec::with_capacity(messages.len());
    let mut at = 0;
    let mut resumed = false;
    while at < messages.len() {
        // A lone message (what a lane hands over under light load) goes straight to `handle`.
        let run = if messages.len() - at > 1 {
            run_from(&messages[at..])
        } else {
            Vec::new()
        };
        if run.len() > 1 {
            let span = tracing::info_span!("consume_batch", events = run.len());
            match compliance.screen(&run).instrument(span).await {
                Ok(flags) => {
                    for ((event, _), flags) in run.iter().zip(flags) {
                        log_screened(event, flags);
                    }
                    outcomes.extend(run.iter().map(|_| Ok(())));
                    at += run.len();
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, events = run.len(), "screening a run failed; handling its events one by one");
                }
            }
        }
        // One by one up to the first message that fails for good (dead-lettered): what
        // follows it goes back to runs, so one bad partner (a full file) costs a run a few
        // single steps, not all of them. Once per call: a second failed run goes one by one
        // to its end, so k bad messages cannot cost k failed runs.
        let resume = !resumed;
        for message in &messages[at..at + run.len().max(1)] {
            let outcome = handle(compliance, message.clone()).await;
            at += 1;
            match outcome {
                Err(HandleError::Retry(reason)) => {
                    outcomes.push(Err(HandleError::Retry(reason)));
                    let rest = messages.len() - outcomes.len();
                    outcomes.extend((0..rest).map(|_| {
                        Err(HandleError::Retry(
                            "not attempted: an earlier message of its key is retried first".into(),
                        ))
                    }));
                    return outcomes;
                }
                Err(permanent) => {
                    outcomes.push(Err(permanent));
                    if resume {
                        resumed = true;
                        break;
                    }
                }
                Ok(()) => outcomes.push(Ok(())),
            }
        }
    }
    outcomes
}

/// Handles one bus message: `Ok` to ack, `Retry` for transient failures, `Permanent` for
/// messages that can never be handled (dead-lettered).
pub async fn handle(compliance: &Compliance, message: Message) -> Result<(), HandleError> {
    let event = IntegrationEvent::from_message(&message)
        .map_err(|e| HandleError::Permanent(format!("not an integration event: {e}")))?;
    let span = tracing::info_span!("consume", event_type = %event.event_type, event_id = %event.id);
    pl_telemetry::set_parent(&span, &message.headers);
    let meta = meta_for(&event, pl_telemetry::inject(&span));
    let permanent = |e: crate::contract::ContractError| HandleError::Permanent(e.to_string());
    async move {
        if let Some(s) = screened(&event).map_err(permanent)? {
            let run = [(s, meta)];
            let flags = compliance.screen(&run).await.map_err(classify)?;
            let [(s, _)] = &run;
            log_screened(s, flags.first().copied().unwrap_or(0));
            return Ok(());
        }
        let data = event.data.get();
        match event.event_type.as_str() {
            "PartnerApplied" => {
                let a = PartnerApplied::parse(data).map_err(permanent)?;
                compliance
                    .on_partner_applied(event.id, &a, event.occurred_at, &meta)
                    .await
                    .map_err(classify)?;
                tracing::info!(partner_id = %a.partner_id, "partner profile recorded");
            }
            "PartnerStatusChanged" => {
                let s = PartnerStatusChanged::parse(data).map_err(permanent)?;
                compliance
                    .on_status(
                        event.id,
                        s.partner_id,
                        &s.status,
                        &s.reason,
                        event.occurred_at,
                        &meta,
                    )
                    .await
                    .map_err(classify)?;
            }
            other => {
                tracing::debug!(event_type = other, "ignoring event type");
            }
        }
        Ok(())
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn message(context: &str, n: u128, data: &serde_json::Value) -> Message {
        Message {
            id: Uuid::from_u128(n),
            subject: format!("pl.{context}.Event"),
            payload: bytes::Bytes::from(
                serde_json::to_vec(&serde_json::json!({ "id": Uuid::from_u128(n), "data": data }))
                    .unwrap(),
            ),
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn one_programs_events_share_a_key_and_partner_crms_all_share_one() {
        let program = |p: u128| serde_json::json!({ "program_id": Uuid::from_u128(p) });
        let key = |context: &str, n: u128, data: &serde_json::Value| {
            ordering_key(&message(context, n, data))
        };
        // A click and the conversion after it stay in order, whatever else they carry.
        assert_eq!(
            key("attribution", 1, &program(7)),
            key("attribution", 2, &program(7))
        );
        assert_ne!(
            key("attribution", 1, &program(7)),
            key("attribution", 3, &program(8))
        );
        // CRM's events are ordered by delivery alone, across programs.
        assert_eq!(key("crm", 1, &program(7)), key("crm", 2, &program(8)));
        // An attribution event without a program (dead-lettered anyway) holds up no program.
        let none = serde_json::json!({});
        assert_ne!(key("attribution", 4, &none), key("attribution", 5, &none));
        assert_ne!(
            key("attribution", 4, &none),
            key("attribution", 1, &program(7))
        );
    }
}
