//! Partner CRM's integration events (`proto/partnerledger/crm/v1/events.proto`) kept in
//! attribution's `crm-*` streams. Every fact written gets an id derived from the consumed event,
//! and the projection skips a source event it has seen, so a redelivery appends nothing.

use pl_bus::{derived_event_id, HandleError, IntegrationEvent, Message};
use pl_eventlog::EventStore;
use pl_runtime::aggregate::{execute, ExecuteError};
use pl_runtime::CommandMeta;
use tracing::Instrument;

use crate::contract::parse_crm;
use crate::crm::CrmRecord;

/// The durable consumers of this service: (durable name, subject filter).
pub fn subscriptions(prefix: &str) -> Vec<(String, String)> {
    vec![("attribution-crm".to_owned(), format!("{prefix}.crm.>"))]
}

/// Handles one bus message: `Ok` to ack, `Retry` for transient failures, `Permanent` for
/// messages that break the contract (dead-lettered).
pub async fn handle(store: &dyn EventStore, message: Message) -> Result<(), HandleError> {
    let event = IntegrationEvent::from_message(&message)
        .map_err(|e| HandleError::Permanent(format!("not an integration event: {e}")))?;
    let span = tracing::info_span!("consume", event_type = %event.event_type, event_id = %event.id);
    pl_telemetry::set_parent(&span, &message.headers);
    let trace_context = pl_telemetry::inject(&span);
    async move {
        let routed = parse_crm(&event.event_type, event.id, event.data.get())
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        let Some(routed) = routed else {
            tracing::debug!(event_type = %event.event_type, "ignoring event type");
            return Ok(());
        };
        for (i, stream) in routed.streams.iter().enumerate() {
            let meta = CommandMeta {
                id_seed: derived_event_id(event.id, &format!("{}:crm:{i}", crate::SERVICE)),
                occurred_at: event.occurred_at,
                correlation_id: event.correlation_id,
                causation_id: Some(event.id),
                trace_context: trace_context.clone(),
            };
            match execute::<CrmRecord>(store, stream, &routed.fact, &meta).await {
                Ok(_) => {}
                Err(ExecuteError::Domain(e)) => return Err(HandleError::Permanent(e.to_string())),
                Err(ExecuteError::Conflict { stream, .. }) => {
                    return Err(HandleError::Retry(format!("conflict on {stream}")))
                }
                Err(ExecuteError::Store(e)) if e.is_invalid_input() => {
                    return Err(HandleError::Permanent(e.to_string()))
                }
                Err(ExecuteError::Store(e)) => return Err(HandleError::Retry(e.to_string())),
                Err(ExecuteError::Decode(e)) => return Err(HandleError::Permanent(e)),
            }
        }
        tracing::info!(event_type = %event.event_type, streams = routed.streams.len(), "crm fact recorded");
        Ok(())
    }
    .instrument(span)
    .await
}
