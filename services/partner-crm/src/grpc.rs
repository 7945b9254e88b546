//! The gRPC face of partner CRM: validate, run the command once per idempotency key, answer.

use std::sync::Arc;

use pl_eventlog::SharedStore;
use pl_proto::crm::v1 as pb;
use pl_proto::crm::v1::partner_crm_service_server::{PartnerCrmService, PartnerCrmServiceServer};
use pl_runtime::aggregate::{execute, load, ExecuteError};
use pl_runtime::request::{parse_text, parse_uuid, to_timestamp};
use pl_runtime::{idempotency, ApiError, Clock, RequestMeta, Violations};
use tonic::{Request, Response, Status};

use crate::domain::{self, Application, Partner, PartnerCommand, PartnerError, PartnerType};
use crate::SERVICE;

const MAX_NAME_CHARS: usize = 200;
const MAX_EMAIL_CHARS: usize = 254;

/// The one mapping of this service's failures onto the shared error model.
fn to_api(e: ExecuteError<PartnerError>) -> ApiError {
    match e {
        ExecuteError::Domain(PartnerError::AlreadyExists(id)) => ApiError::AlreadyExists {
            what: "partner",
            id: id.to_string(),
        },
        ExecuteError::Conflict { stream, .. } => ApiError::Conflict { stream },
        ExecuteError::Decode(detail) => ApiError::internal(detail),
        ExecuteError::Store(e) => e.into(),
    }
}

#[derive(Debug, Clone)]
pub struct CrmService {
    store: SharedStore,
    clock: Arc<dyn Clock>,
}

impl CrmService {
    pub fn new(store: SharedStore, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    pub fn into_server(self, max_request_bytes: usize) -> PartnerCrmServiceServer<Self> {
        PartnerCrmServiceServer::new(self).max_decoding_message_size(max_request_bytes)
    }
}

/// gRPC service name, for health reporting.
pub const SERVICE_NAME: &str =
    <PartnerCrmServiceServer<CrmService> as tonic::server::NamedService>::NAME;

fn partner_type(field: &str, value: i32) -> Result<PartnerType, pl_runtime::FieldViolation> {
    use pb::PartnerType as P;
    match P::try_from(value) {
        Ok(P::Affiliate) => Ok(PartnerType::Affiliate),
        Ok(P::Referral) => Ok(PartnerType::Referral),
        Ok(P::Reseller) => Ok(PartnerType::Reseller),
        Ok(P::Technology) => Ok(PartnerType::Technology),
        Ok(P::Outsourcing) => Ok(PartnerType::Outsourcing),
        Ok(P::Influencer) => Ok(PartnerType::Influencer),
        Ok(P::IntroducingBroker) => Ok(PartnerType::IntroducingBroker),
        Ok(P::Unspecified) | Err(_) => Err(pl_runtime::FieldViolation::new(
            field,
            "required: one of the partner types",
        )),
    }
}

fn partner_type_pb(t: PartnerType) -> pb::PartnerType {
    match t {
        PartnerType::Affiliate => pb::PartnerType::Affiliate,
        PartnerType::Referral => pb::PartnerType::Referral,
        PartnerType::Reseller => pb::PartnerType::Reseller,
        PartnerType::Technology => pb::PartnerType::Technology,
        PartnerType::Outsourcing => pb::PartnerType::Outsourcing,
        PartnerType::Influencer => pb::PartnerType::Influencer,
        PartnerType::IntroducingBroker => pb::PartnerType::IntroducingBroker,
    }
}

fn parse_email(field: &str, value: &str) -> Result<String, pl_runtime::FieldViolation> {
    let email = parse_text(field, value, MAX_EMAIL_CHARS)?;
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && domain.contains('.') && !domain.contains('@') =>
        {
            Ok(email.to_ascii_lowercase())
        }
        _ => Err(pl_runtime::FieldViolation::new(
            field,
            "not an email address",
        )),
    }
}

fn parse_country(field: &str, value: &str) -> Result<String, pl_runtime::FieldViolation> {
    if value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(value.to_owned())
    } else {
        Err(pl_runtime::FieldViolation::new(
            field,
            "an ISO 3166-1 alpha-2 code such as DE",
        ))
    }
}

fn view(partner: &Partner, version: Option<u64>) -> Option<pb::Partner> {
    let Partner::Known {
        application: a,
        status,
    } = partner
    else {
        return None;
    };
    let status = match status {
        domain::PartnerStatus::Applied => pb::PartnerStatus::Applied,
    };
    Some(pb::Partner {
        partner_id: a.partner_id.to_string(),
        program_id: a.program_id.to_string(),
        display_name: a.display_name.clone(),
        partner_type: partner_type_pb(a.partner_type).into(),
        email: a.email.clone(),
        country: a.country.clone(),
        status: status.into(),
        applied_at: Some(to_timestamp(a.applied_at)),
        version: version.unwrap_or(0),
    })
}

#[tonic::async_trait]
impl PartnerCrmService for CrmService {
    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn apply_partner(
        &self,
        request: Request<pb::ApplyPartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
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
        let program_id = v.check(parse_uuid("program_id", &req.program_id));
        let display_name = v.check(parse_text(
            "display_name",
            &req.display_name,
            MAX_NAME_CHARS,
        ));
        let partner_type = v.check(partner_type("partner_type", req.partner_type));
        let email = v.check(parse_email("email", &req.email));
        let country = v.check(parse_country("country", &req.country));
        v.finish()?;
        let (
            Some(meta),
            Some(partner_id),
            Some(program_id),
            Some(display_name),
            Some(partner_type),
            Some(email),
            Some(country),
        ) = (
            meta,
            partner_id,
            program_id,
            display_name,
            partner_type,
            email,
            country,
        )
        else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let store = self.store.as_ref();
        let command = PartnerCommand::Apply(Application {
            partner_id,
            program_id,
            display_name,
            partner_type,
            email,
            country,
            applied_at: meta.occurred_at,
        });
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let done = execute::<Partner>(
                    store,
                    &domain::stream(partner_id),
                    &command,
                    &meta.command_meta(),
                )
                .await
                .map_err(to_api)?;
                tracing::info!(%partner_id, version = ?done.version, "partner applied");
                view(&done.state, done.version)
                    .ok_or_else(|| ApiError::internal("partner missing after apply"))
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn get_partner(
        &self,
        request: Request<pb::GetPartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let req = request.into_inner();
        let partner_id = parse_uuid("partner_id", &req.partner_id)
            .map_err(|fv| ApiError::InvalidArgument(vec![fv]))?;
        let loaded = load::<Partner>(self.store.as_ref(), &domain::stream(partner_id))
            .await
            .map_err(to_api)?;
        let partner = view(&loaded.state, loaded.version).ok_or(ApiError::NotFound {
            what: "partner",
            id: partner_id.to_string(),
        })?;
        Ok(Response::new(partner))
    }
}
