//! A whole partner program in motion, driven over gRPC exactly as a customer's systems would:
//! two programs (a SaaS program and a regulated Forex program), seven partners of every kind,
//! twelve months of clicks, coupons, a deal registration, invoices, a churn, a partial refund,
//! a chargeback after payout, a compliance hold and monthly payout runs.
//!
//! `scenario::run` drives it against any deployment (one `up` process, or the four services
//! as separate processes over NATS) and reads back every partner's balances; `expected`
//! computes what each partner earned from the plan terms alone, independently of the engine.
//! The demo binary, the end-to-end tests and the load benchmark all use this crate. It never
//! reads the log directly: what it knows, it learned over gRPC.

#![forbid(unsafe_code)]

pub mod expected;
pub mod process;
pub mod scenario;

use std::time::Duration;

use pl_proto::attribution::v1::attribution_service_client::AttributionServiceClient;
use pl_proto::audit::v1::audit_service_client::AuditServiceClient;
use pl_proto::commissions::v1::commissions_service_client::CommissionsServiceClient;
use pl_proto::compliance::v1::compliance_service_client::ComplianceServiceClient;
use pl_proto::crm::v1::partner_crm_service_client::PartnerCrmServiceClient;
use tonic::transport::Channel;

/// Where each service answers (the same address for all four in `up`).
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub crm: String,
    pub attribution: String,
    pub commissions: String,
    pub compliance: String,
    /// The bearer token every call presents, where the services check them (`serve`).
    pub token: Option<String>,
}

impl Endpoints {
    /// All four services on one address (`partner-ledger up`).
    pub fn one(addr: &str) -> Self {
        Self {
            crm: addr.to_owned(),
            attribution: addr.to_owned(),
            commissions: addr.to_owned(),
            compliance: addr.to_owned(),
            token: None,
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Debug, Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry the endpoints' token.
pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// One client per service, over lazily connected channels.
#[derive(Debug, Clone)]
pub struct Clients {
    pub crm: PartnerCrmServiceClient<Authed>,
    pub attribution: AttributionServiceClient<Authed>,
    pub commissions: CommissionsServiceClient<Authed>,
    pub compliance: ComplianceServiceClient<Authed>,
    pub audit: AuditServiceClient<Authed>,
}

/// Every call of the scenario is bounded by this.
pub const CALL_TIMEOUT_MS: u64 = 10_000;

fn channel(addr: &str) -> Result<Channel, String> {
    let uri = if addr.starts_with("http") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Ok(Channel::from_shared(uri)
        .map_err(|e| format!("{addr}: {e}"))?
        .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
        .connect_lazy())
}

impl Clients {
    pub fn connect(e: &Endpoints) -> Result<Self, String> {
        let max = 16 * 1024 * 1024;
        let bearer = Bearer(match &e.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| "the token is not a header value".to_owned())?,
            ),
            None => None,
        });
        let authed = |addr: &str| -> Result<Authed, String> {
            Ok(tonic::service::interceptor::InterceptedService::new(
                channel(addr)?,
                bearer.clone(),
            ))
        };
        Ok(Self {
            crm: PartnerCrmServiceClient::new(authed(&e.crm)?).max_decoding_message_size(max),
            attribution: AttributionServiceClient::new(authed(&e.attribution)?)
                .max_decoding_message_size(max),
            commissions: CommissionsServiceClient::new(authed(&e.commissions)?)
                .max_decoding_message_size(max),
            compliance: ComplianceServiceClient::new(authed(&e.compliance)?)
                .max_decoding_message_size(max),
            // The audit API is served with commissions (the ledger's owner).
            audit: AuditServiceClient::new(authed(&e.commissions)?).max_decoding_message_size(max),
        })
    }
}
