//! Integration events from attribution and partner CRM, turned into compliance commands. Its
//! one job is routing and error classification: every event it causes gets an id derived from
//! the consumed event, so a redelivered message appends nothing; a payload that breaks its
//! contract is dead-lettered, never half-applied; it never acknowledges a message it did not
//! handle.

use std::collections::BTreeMap;

use pl_bus::{derived_event_id, HandleError, IntegrationEvent, Message};
use pl_runtime::CommandMeta;
use tracing::Instrument;

use crate::contract::{
    ConversionAttributed, PartnerApplied, PartnerStatusChanged, Reversal, TouchpointRecorded,
};
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
        let data = event.data.get();
        match event.event_type.as_str() {
            "ConversionAttributed" => {
                let c = ConversionAttributed::parse(data).map_err(permanent)?;
                let flags = compliance
                    .on_conversion(&c, &meta)
                    .await
                    .map_err(classify)?;
                tracing::info!(conversion_id = %c.conversion_id, flags, "conversion screened");
            }
            kind @ ("ConversionRefunded" | "ChargebackReceived") => {
                let r = Reversal::parse(kind, data).map_err(permanent)?;
                let label = if kind == "ConversionRefunded" {
                    "refund"
                } else {
                    "chargeback"
                };
                let flags = compliance
                    .on_reversal(label, &r, &meta)
                    .await
                    .map_err(classify)?;
                tracing::info!(conversion_id = %r.conversion_id, flags, "reversal counted");
            }
            "TouchpointRecorded" => {
                let t = TouchpointRecorded::parse(data).map_err(permanent)?;
                compliance
                    .on_touchpoint(&t, &meta)
                    .await
                    .map_err(classify)?;
            }
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
