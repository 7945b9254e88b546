//! The gRPC face of commissions.

use pl_eventlog::SharedStore;
use pl_proto::commissions::v1 as pb;
use pl_proto::commissions::v1::commissions_service_server::{
    CommissionsService as CommissionsApi, CommissionsServiceServer,
};
use pl_runtime::aggregate::{load, ExecuteError};
use pl_runtime::request::{parse_uuid, to_timestamp};
use pl_runtime::ApiError;
use tonic::{Request, Response, Status};

use crate::domain::{self, Account, AccountError};

fn to_api(e: ExecuteError<AccountError>) -> ApiError {
    match e {
        ExecuteError::Domain(never) => match never {},
        ExecuteError::Conflict { stream, .. } => ApiError::Conflict { stream },
        ExecuteError::Decode(detail) => ApiError::internal(detail),
        ExecuteError::Store(e) => e.into(),
    }
}

#[derive(Debug, Clone)]
pub struct CommissionsService {
    store: SharedStore,
}

pub const SERVICE_NAME: &str =
    <CommissionsServiceServer<CommissionsService> as tonic::server::NamedService>::NAME;

impl CommissionsService {
    pub fn new(store: SharedStore) -> Self {
        Self { store }
    }

    pub fn into_server(self, max_request_bytes: usize) -> CommissionsServiceServer<Self> {
        CommissionsServiceServer::new(self).max_decoding_message_size(max_request_bytes)
    }
}

#[tonic::async_trait]
impl CommissionsApi for CommissionsService {
    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn get_partner_account(
        &self,
        request: Request<pb::GetPartnerAccountRequest>,
    ) -> Result<Response<pb::PartnerAccount>, Status> {
        let partner_id = parse_uuid("partner_id", &request.get_ref().partner_id)
            .map_err(|fv| ApiError::InvalidArgument(vec![fv]))?;
        let loaded = load::<Account>(self.store.as_ref(), &domain::stream(partner_id))
            .await
            .map_err(to_api)?;
        let opening = loaded.state.0.ok_or(ApiError::NotFound {
            what: "partner account",
            id: partner_id.to_string(),
        })?;
        Ok(Response::new(pb::PartnerAccount {
            partner_id: opening.partner_id.to_string(),
            program_id: opening.program_id.to_string(),
            opened_at: Some(to_timestamp(opening.opened_at)),
            opened_by_event_id: opening.source_event_id.to_string(),
        }))
    }
}
