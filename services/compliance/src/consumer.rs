//! Integration events from attribution and partner CRM, turned into compliance commands. Its
//! one job is routing and error classification: every event it causes gets an id derived from
//! the consumed event, so a redelivered message appends nothing; a payload that breaks its
//! contract is dead-lettered, never half-applied; it never acknowledges a message it did not
//! handle.

use std::collections::BTreeMap;

use pl_bus::{derived_event_id, HandleError, IntegrationEvent, Message};
use pl_runtime::CommandMeta;
use tracing::Instrument;

use serde::Deserialize;

use crate::contract::{
    ContractError, ConversionAttributed, PartnerApplied, PartnerStatusChanged, Reversal,
    TouchpointRecorded,
};
use crate::screening::Screened;
use crate::service::{Compliance, ServiceError};

/// The durable consumers of this service: (durable name, subject filter). One filter each,
/// because NATS before 2.10 allows a single filter subject per consumer.
pub fn subscriptions(prefix: &str) -> Vec<(String, String)> {
    vec![
        (
            "compliance-attribution".to_owned(),
            format!("{prefix}.attribution.>"),
        ),
        ("compliance-crm".to_owned(), format!("{prefix}.crm.>")),
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

/// Lanes the attribution consumer runs on: one program's events in order (the fraud rules
/// count per program and per partner, and a conversion's rules read its clicks' counts), other
/// programs concurrently.
pub const LANES: usize = 16;

/// Events one call of [`handle_batch`] screens together, at most: bounds what one run holds in
/// memory and how many commands one stream decides before its append.
pub const MAX_BATCH: usize = 256;

/// The ordering key of a message: attribution's events by program (see [`LANES`]); partner
/// CRM's all under one key, so they are handled in delivery order as before (a partner's
/// application before its status changes; they are few); anything unparseable by its id (it
/// is dead-lettered anyway).
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

/// Handles messages of one ordering key, in delivery order, as [`handle`] would one at a time,
/// with one outcome per message. Runs of attribution's events are screened together
/// ([`Compliance::screen`]: one append per stream instead of one per event); when such a run
/// fails, its messages are handled again one by one, so each gets its own outcome. The first
/// message that asks to be retried ends the batch: it and every message after it get `Retry`
/// (those were not attempted), so a runner retrying from there keeps the key's order.
pub async fn handle_batch(
    compliance: &Compliance,
    messages: Vec<Message>,
) -> Vec<Result<(), HandleError>> {
    let mut outcomes: Vec<Result<(), HandleError>> = Vec::with_capacity(messages.len());
    let mut at = 0;
    while at < messages.len() {
        // A lone message (what a lane hands over under light load) goes straight to `handle`.
        let run: Vec<(Screened, CommandMeta)> = if messages.len() - at > 1 {
            messages[at..]
                .iter()
                .take(MAX_BATCH)
                .map_while(screenable)
                .collect()
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
        for message in &messages[at..at + run.len().max(1)] {
            let outcome = handle(compliance, message.clone()).await;
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
        at += run.len().max(1);
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
