//! Compliance's integration events (`<prefix>.compliance.*`) turned into partner commands:
//! `ComplianceApprovalGranted` and `ComplianceApprovalRevoked` are recorded in the partner's
//! stream, where they activate a partner awaiting compliance or suspend one whose approval was
//! revoked. Every event written gets an id derived from the consumed event, so a redelivery
//! appends nothing. It never reads compliance's streams and ignores compliance's other events.

use chrono::{DateTime, Utc};
use pl_bus::{derived_event_id, HandleError, IntegrationEvent, Message};
use pl_eventlog::EventStore;
use pl_runtime::aggregate::{execute, ExecuteError};
use pl_runtime::CommandMeta;
use serde::Deserialize;
use tracing::Instrument;
use uuid::Uuid;

use crate::partner::{Partner, PartnerCommand};
use crate::streams;

/// Jurisdictions one grant may list, and the longest text accepted from compliance.
pub const MAX_JURISDICTIONS: usize = 100;
pub const MAX_TEXT_CHARS: usize = 1000;

/// The durable consumers of this service: (durable name, subject filter).
pub fn subscriptions(prefix: &str) -> Vec<(String, String)> {
    vec![(
        "crm-compliance".to_owned(),
        format!("{prefix}.compliance.>"),
    )]
}

/// CRM's reading of `ComplianceApprovalGranted`.
#[derive(Debug, Deserialize)]
struct Granted {
    partner_id: Uuid,
    program_id: Uuid,
    #[serde(default)]
    jurisdictions: Vec<String>,
    #[serde(default)]
    reference: String,
    occurred_at: DateTime<Utc>,
}

/// CRM's reading of `ComplianceApprovalRevoked`.
#[derive(Debug, Deserialize)]
struct Revoked {
    partner_id: Uuid,
    program_id: Uuid,
    #[serde(default)]
    reason: String,
    occurred_at: DateTime<Utc>,
}

fn bounded(field: &str, v: &str) -> Result<(), HandleError> {
    if v.chars().count() > MAX_TEXT_CHARS || v.chars().any(char::is_control) {
        return Err(HandleError::Permanent(format!(
            "{field}: at most {MAX_TEXT_CHARS} characters, no control characters"
        )));
    }
    Ok(())
}

/// The command an event asks for; `None` for compliance events CRM does not use.
fn command(event: &IntegrationEvent) -> Result<Option<(Uuid, PartnerCommand)>, HandleError> {
    let permanent = |e: serde_json::Error| {
        HandleError::Permanent(format!(
            "{} v{}: {e}",
            event.event_type, event.schema_version
        ))
    };
    match event.event_type.as_str() {
        "ComplianceApprovalGranted" => {
            let g: Granted = event.data_as().map_err(permanent)?;
            if g.jurisdictions.len() > MAX_JURISDICTIONS {
                return Err(HandleError::Permanent(format!(
                    "more than {MAX_JURISDICTIONS} jurisdictions"
                )));
            }
            bounded("reference", &g.reference)?;
            let mut jurisdictions: Vec<String> = Vec::with_capacity(g.jurisdictions.len());
            for j in &g.jurisdictions {
                bounded("jurisdictions", j)?;
                let j = j.trim().to_uppercase();
                if !j.is_empty() && !jurisdictions.contains(&j) {
                    jurisdictions.push(j);
                }
            }
            Ok(Some((
                g.partner_id,
                PartnerCommand::RecordComplianceGrant {
                    source_event_id: event.id,
                    program_id: g.program_id,
                    jurisdictions,
                    reference: g.reference,
                    at: g.occurred_at,
                },
            )))
        }
        "ComplianceApprovalRevoked" => {
            let r: Revoked = event.data_as().map_err(permanent)?;
            bounded("reason", &r.reason)?;
            Ok(Some((
                r.partner_id,
                PartnerCommand::RecordComplianceRevocation {
                    source_event_id: event.id,
                    program_id: r.program_id,
                    reason: r.reason,
                    at: r.occurred_at,
                },
            )))
        }
        _ => Ok(None),
    }
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
        let Some((partner_id, command)) = command(&event)? else {
            tracing::debug!(event_type = %event.event_type, "ignoring event type");
            return Ok(());
        };
        let meta = CommandMeta {
            id_seed: derived_event_id(event.id, &format!("{}:compliance", crate::SERVICE)),
            occurred_at: event.occurred_at,
            correlation_id: event.correlation_id,
            causation_id: Some(event.id),
            trace_context,
        };
        match execute::<Partner>(store, &streams::partner(partner_id), &command, &meta).await {
            Ok(done) => {
                tracing::info!(%partner_id, events = done.events.len(), "compliance fact recorded");
                Ok(())
            }
            Err(ExecuteError::Domain(e)) => Err(HandleError::Permanent(e.to_string())),
            Err(ExecuteError::Conflict { stream, .. }) => {
                Err(HandleError::Retry(format!("conflict on {stream}")))
            }
            Err(ExecuteError::Store(e)) if e.is_invalid_input() => {
                Err(HandleError::Permanent(e.to_string()))
            }
            Err(ExecuteError::Store(e)) => Err(HandleError::Retry(e.to_string())),
            Err(ExecuteError::Decode(e)) => Err(HandleError::Permanent(e)),
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::collections::BTreeMap;

    use pl_eventlog::MemoryLog;

    use super::*;

    fn message(event_type: &str, data: serde_json::Value) -> Message {
        let id = Uuid::from_u128(0xe1);
        let envelope = serde_json::json!({
            "id": id, "type": event_type, "schema_version": 1,
            "stream": "compliance-1", "version": 0, "position": 0,
            "occurred_at": "2026-01-01T00:00:00Z", "recorded_at": "2026-01-01T00:00:00Z",
            "correlation_id": null, "causation_id": null, "data": data,
        });
        Message {
            id,
            subject: format!("pl.compliance.{event_type}"),
            payload: serde_json::to_vec(&envelope).unwrap().into(),
            headers: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn a_grant_that_breaks_the_contract_is_dead_lettered_and_writes_nothing() {
        let store = MemoryLog::default();
        let bad = message(
            "ComplianceApprovalGranted",
            serde_json::json!({"partner_id": "nope"}),
        );
        assert!(matches!(
            handle(&store, bad).await,
            Err(HandleError::Permanent(_))
        ));
        let too_many = message(
            "ComplianceApprovalGranted",
            serde_json::json!({
                "partner_id": Uuid::from_u128(1), "program_id": Uuid::from_u128(2),
                "jurisdictions": vec!["GB"; MAX_JURISDICTIONS + 1],
                "occurred_at": "2026-01-01T00:00:00Z",
            }),
        );
        assert!(matches!(
            handle(&store, too_many).await,
            Err(HandleError::Permanent(_))
        ));
        assert_eq!(store.read_all(0, 10).await.unwrap().len(), 0);
    }

    #[tokio::test]
    async fn a_grant_for_a_partner_crm_does_not_know_yet_is_kept_for_when_it_applies() {
        let store = MemoryLog::default();
        let partner = Uuid::from_u128(1);
        let grant = message(
            "ComplianceApprovalGranted",
            serde_json::json!({
                "partner_id": partner, "program_id": Uuid::from_u128(2),
                "jurisdictions": ["mt"], "reference": "LIC-1",
                "occurred_at": "2026-01-01T00:00:00Z",
            }),
        );
        handle(&store, grant.clone()).await.unwrap();
        handle(&store, grant).await.unwrap();
        let stored = store
            .read_stream(&streams::partner(partner), 0, 10)
            .await
            .unwrap();
        assert_eq!(stored.len(), 1, "a redelivery appends nothing");
        assert_eq!(stored[0].event_type, "ComplianceApprovalRecorded");
        let data: serde_json::Value = serde_json::from_slice(&stored[0].data).unwrap();
        assert_eq!(data["jurisdictions"], serde_json::json!(["MT"]));
    }

    #[tokio::test]
    async fn other_compliance_events_are_ignored() {
        let store = MemoryLog::default();
        handle(&store, message("PayoutHoldPlaced", serde_json::json!({})))
            .await
            .unwrap();
        assert_eq!(store.read_all(0, 10).await.unwrap().len(), 0);
    }
}
