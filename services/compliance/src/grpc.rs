//! The gRPC face of compliance: validate, run once per idempotency key, list with paging.

use std::sync::Arc;

use pl_eventlog::SharedStore;
use pl_proto::compliance::v1 as pb;
use pl_proto::compliance::v1::compliance_service_server::{
    ComplianceService as ComplianceApi, ComplianceServiceServer,
};
use pl_runtime::aggregate::{execute, load, ExecuteError};
use pl_runtime::request::{parse_text, parse_uuid, to_datetime, to_timestamp};
use pl_runtime::{idempotency, ApiError, Clock, FieldViolation, RequestMeta, Violations};
use tonic::{Request, Response, Status};

use crate::domain::{
    self, History, Verification, VerificationError, VerificationKind, VerificationStatus,
};
use crate::SERVICE;

const MAX_REFERENCE_CHARS: usize = 200;
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

fn to_api(e: ExecuteError<VerificationError>) -> ApiError {
    match e {
        ExecuteError::Domain(e @ VerificationError::ExpiresBeforeRecorded { .. }) => {
            ApiError::invalid("valid_until", e.to_string())
        }
        ExecuteError::Conflict { stream, .. } => ApiError::Conflict { stream },
        ExecuteError::Decode(detail) => ApiError::internal(detail),
        ExecuteError::Store(e) => e.into(),
    }
}

#[derive(Debug, Clone)]
pub struct ComplianceService {
    store: SharedStore,
    clock: Arc<dyn Clock>,
}

pub const SERVICE_NAME: &str =
    <ComplianceServiceServer<ComplianceService> as tonic::server::NamedService>::NAME;

impl ComplianceService {
    pub fn new(store: SharedStore, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    pub fn into_server(self, max_request_bytes: usize) -> ComplianceServiceServer<Self> {
        ComplianceServiceServer::new(self).max_decoding_message_size(max_request_bytes)
    }
}

fn kind(field: &str, value: i32) -> Result<VerificationKind, FieldViolation> {
    use pb::VerificationKind as K;
    match K::try_from(value) {
        Ok(K::Kyc) => Ok(VerificationKind::Kyc),
        Ok(K::Kyb) => Ok(VerificationKind::Kyb),
        Ok(K::TaxFormW9) => Ok(VerificationKind::TaxFormW9),
        Ok(K::TaxFormW8ben) => Ok(VerificationKind::TaxFormW8ben),
        Ok(K::Licence) => Ok(VerificationKind::Licence),
        Ok(K::DataSharingAgreement) => Ok(VerificationKind::DataSharingAgreement),
        Ok(K::DisclosureAcknowledgement) => Ok(VerificationKind::DisclosureAcknowledgement),
        Ok(K::Unspecified) | Err(_) => Err(FieldViolation::new(
            field,
            "required: one of the verification kinds",
        )),
    }
}

fn status(field: &str, value: i32) -> Result<VerificationStatus, FieldViolation> {
    use pb::VerificationStatus as S;
    match S::try_from(value) {
        Ok(S::Verified) => Ok(VerificationStatus::Verified),
        Ok(S::Rejected) => Ok(VerificationStatus::Rejected),
        Ok(S::Pending) => Ok(VerificationStatus::Pending),
        Ok(S::Unspecified) | Err(_) => Err(FieldViolation::new(
            field,
            "required: verified, rejected or pending",
        )),
    }
}

fn view(v: &Verification, version: u64) -> pb::Verification {
    let kind = match v.kind {
        VerificationKind::Kyc => pb::VerificationKind::Kyc,
        VerificationKind::Kyb => pb::VerificationKind::Kyb,
        VerificationKind::TaxFormW9 => pb::VerificationKind::TaxFormW9,
        VerificationKind::TaxFormW8ben => pb::VerificationKind::TaxFormW8ben,
        VerificationKind::Licence => pb::VerificationKind::Licence,
        VerificationKind::DataSharingAgreement => pb::VerificationKind::DataSharingAgreement,
        VerificationKind::DisclosureAcknowledgement => {
            pb::VerificationKind::DisclosureAcknowledgement
        }
    };
    let status = match v.status {
        VerificationStatus::Verified => pb::VerificationStatus::Verified,
        VerificationStatus::Rejected => pb::VerificationStatus::Rejected,
        VerificationStatus::Pending => pb::VerificationStatus::Pending,
    };
    pb::Verification {
        partner_id: v.partner_id.to_string(),
        kind: kind.into(),
        status: status.into(),
        reference: v.reference.clone(),
        recorded_by: v.recorded_by.clone(),
        occurred_at: Some(to_timestamp(v.occurred_at)),
        valid_until: v.valid_until.map(to_timestamp),
        version,
    }
}

#[tonic::async_trait]
impl ComplianceApi for ComplianceService {
    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn record_verification(
        &self,
        request: Request<pb::RecordVerificationRequest>,
    ) -> Result<Response<pb::Verification>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let trace = pl_telemetry::inject(&tracing::Span::current());
        let meta = RequestMeta::parse(
            SERVICE,
            req.context.as_ref(),
            self.clock.as_ref(),
            trace,
            &mut v,
        );
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let kind = v.check(kind("kind", req.kind));
        let status = v.check(status("status", req.status));
        let reference = v.check(parse_text("reference", &req.reference, MAX_REFERENCE_CHARS));
        let recorded_by = v.check(parse_text(
            "recorded_by",
            &req.recorded_by,
            MAX_REFERENCE_CHARS,
        ));
        let valid_until = match &req.valid_until {
            Some(ts) => v.check(to_datetime("valid_until", ts)).map(Some),
            None => Some(None),
        };
        v.finish()?;
        let (
            Some(meta),
            Some(partner_id),
            Some(kind),
            Some(status),
            Some(reference),
            Some(recorded_by),
            Some(valid_until),
        ) = (
            meta,
            partner_id,
            kind,
            status,
            reference,
            recorded_by,
            valid_until,
        )
        else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let verification = Verification {
            partner_id,
            kind,
            status,
            reference,
            recorded_by,
            occurred_at: meta.occurred_at,
            valid_until,
        };
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let store = self.store.as_ref();
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let done = execute::<History>(
                    store,
                    &domain::stream(partner_id),
                    &verification,
                    &meta.command_meta(),
                )
                .await
                .map_err(to_api)?;
                let version = done.version.unwrap_or(0);
                let last = done
                    .state
                    .0
                    .last()
                    .ok_or_else(|| ApiError::internal("verification missing"))?;
                Ok(view(last, version))
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn list_verifications(
        &self,
        request: Request<pb::ListVerificationsRequest>,
    ) -> Result<Response<pb::ListVerificationsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let page = req.page.unwrap_or_default();
        let size = match page.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                v.add("page.page_size", format!("at most {MAX_PAGE_SIZE}"));
                0
            }
            n => n,
        };
        // Page tokens are the stream version to continue from: stable, since history only grows.
        let from = if page.page_token.is_empty() {
            Some(0usize)
        } else {
            v.check(page.page_token.parse::<usize>().map_err(|_| {
                FieldViolation::new("page.page_token", "not a token from a previous page")
            }))
        };
        v.finish()?;
        let (Some(partner_id), Some(from)) = (partner_id, from) else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let loaded = load::<History>(self.store.as_ref(), &domain::stream(partner_id))
            .await
            .map_err(to_api)?;
        let verifications: Vec<_> = loaded
            .state
            .0
            .iter()
            .enumerate()
            .skip(from)
            .take(size)
            .map(|(version, ver)| view(ver, version as u64))
            .collect();
        let end = from + verifications.len();
        let next_page_token = if end < loaded.state.0.len() {
            end.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListVerificationsResponse {
            verifications,
            next_page_token,
        }))
    }
}
