//! The gRPC face of attribution: validate, hash personal data, run once per idempotency key.

use std::sync::Arc;

use pl_eventlog::SharedStore;
use pl_proto::attribution::v1 as pb;
use pl_proto::attribution::v1::attribution_service_server::{
    AttributionService as AttributionApi, AttributionServiceServer,
};
use pl_runtime::aggregate::{execute, load, ExecuteError};
use pl_runtime::request::{parse_text, parse_uuid, to_timestamp};
use pl_runtime::{idempotency, ApiError, Clock, FieldViolation, RequestMeta, Violations};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::domain::{self, Click, ClickDetails, ClickError};
use crate::SERVICE;

const MAX_URL_CHARS: usize = 2048;
const MAX_VISITOR_CHARS: usize = 128;
const MAX_USER_AGENT_BYTES: usize = 1024;

fn to_api(e: ExecuteError<ClickError>) -> ApiError {
    match e {
        ExecuteError::Domain(ClickError::RecordedDifferently(id)) => ApiError::AlreadyExists {
            what: "click",
            id: id.to_string(),
        },
        ExecuteError::Conflict { stream, .. } => ApiError::Conflict { stream },
        ExecuteError::Decode(detail) => ApiError::internal(detail),
        ExecuteError::Store(e) => e.into(),
    }
}

#[derive(Clone)]
pub struct AttributionService {
    store: SharedStore,
    clock: Arc<dyn Clock>,
    /// Secret mixed into IP and user-agent hashes so they cannot be reversed by enumeration.
    hash_salt: Arc<str>,
}

impl std::fmt::Debug for AttributionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttributionService").finish_non_exhaustive()
    }
}

pub const SERVICE_NAME: &str =
    <AttributionServiceServer<AttributionService> as tonic::server::NamedService>::NAME;

impl AttributionService {
    pub fn new(store: SharedStore, clock: Arc<dyn Clock>, hash_salt: &str) -> Self {
        Self {
            store,
            clock,
            hash_salt: Arc::from(hash_salt),
        }
    }

    pub fn into_server(self, max_request_bytes: usize) -> AttributionServiceServer<Self> {
        AttributionServiceServer::new(self).max_decoding_message_size(max_request_bytes)
    }

    fn hash(&self, purpose: &str, value: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.hash_salt.as_bytes());
        h.update([0]);
        h.update(purpose.as_bytes());
        h.update([0]);
        h.update(value.as_bytes());
        hex::encode(h.finalize())
    }
}

fn parse_url(field: &str, value: &str) -> Result<String, FieldViolation> {
    let url = parse_text(field, value, MAX_URL_CHARS)?;
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url)
    } else {
        Err(FieldViolation::new(field, "an absolute http(s) url"))
    }
}

fn parse_ip(field: &str, value: &str) -> Result<std::net::IpAddr, FieldViolation> {
    value
        .parse()
        .map_err(|_| FieldViolation::new(field, "an IPv4 or IPv6 address"))
}

fn view(d: &ClickDetails) -> pb::Click {
    pb::Click {
        click_id: d.click_id.to_string(),
        partner_id: d.partner_id.to_string(),
        tracking_link_id: d.tracking_link_id.to_string(),
        visitor_id: d.visitor_id.clone(),
        landing_url: d.landing_url.clone(),
        ip_hash: d.ip_hash.clone(),
        user_agent_hash: d.user_agent_hash.clone(),
        occurred_at: Some(to_timestamp(d.occurred_at)),
    }
}

#[tonic::async_trait]
impl AttributionApi for AttributionService {
    #[tracing::instrument(skip_all, fields(click_id = %request.get_ref().click_id))]
    async fn record_click(
        &self,
        request: Request<pb::RecordClickRequest>,
    ) -> Result<Response<pb::Click>, Status> {
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
        let click_id = v.check(parse_uuid("click_id", &req.click_id));
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let tracking_link_id = v.check(parse_uuid("tracking_link_id", &req.tracking_link_id));
        let visitor_id = v.check(parse_text("visitor_id", &req.visitor_id, MAX_VISITOR_CHARS));
        let landing_url = v.check(parse_url("landing_url", &req.landing_url));
        let ip = v.check(parse_ip("ip_address", &req.ip_address));
        if req.user_agent.len() > MAX_USER_AGENT_BYTES {
            v.add(
                "user_agent",
                format!("at most {MAX_USER_AGENT_BYTES} bytes"),
            );
        }
        v.finish()?;
        let (
            Some(meta),
            Some(click_id),
            Some(partner_id),
            Some(tracking_link_id),
            Some(visitor_id),
            Some(landing_url),
            Some(ip),
        ) = (
            meta,
            click_id,
            partner_id,
            tracking_link_id,
            visitor_id,
            landing_url,
            ip,
        )
        else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let details = ClickDetails {
            click_id,
            partner_id,
            tracking_link_id,
            visitor_id,
            landing_url,
            ip_hash: self.hash("ip", &ip.to_string()),
            user_agent_hash: self.hash("user-agent", &req.user_agent),
            occurred_at: meta.occurred_at,
        };
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let store = self.store.as_ref();
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let done = execute::<Click>(
                    store,
                    &domain::stream(click_id),
                    &details,
                    &meta.command_meta(),
                )
                .await
                .map_err(to_api)?;
                let recorded = done
                    .state
                    .0
                    .ok_or_else(|| ApiError::internal("click missing after record"))?;
                Ok(view(&recorded))
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(click_id = %request.get_ref().click_id))]
    async fn get_click(
        &self,
        request: Request<pb::GetClickRequest>,
    ) -> Result<Response<pb::Click>, Status> {
        let click_id = parse_uuid("click_id", &request.get_ref().click_id)
            .map_err(|fv| ApiError::InvalidArgument(vec![fv]))?;
        let loaded = load::<Click>(self.store.as_ref(), &domain::stream(click_id))
            .await
            .map_err(to_api)?;
        let click = loaded.state.0.ok_or(ApiError::NotFound {
            what: "click",
            id: click_id.to_string(),
        })?;
        Ok(Response::new(view(&click)))
    }
}
