//! The gRPC face of partner CRM: validate every field (all violations at once, nothing appended
//! on bad input), read the clock at the edge, gather what a command needs from other streams,
//! run each mutating request once per idempotency key, and answer with views. It must never
//! decide a business rule itself (the deciders do) nor map an error to a gRPC code anywhere
//! but `crate::error` and `pl_runtime`.
//!
//! Handlers live per area (`programs`, `partners`, `assets`, `deals`, `mdf`, `campaigns`,
//! `marketing`); `parse` holds the field validators and `views` the protobuf views.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use pl_eventlog::SharedStore;
use pl_proto::common::v1 as common;
use pl_proto::crm::v1 as pb;
use pl_proto::crm::v1::partner_crm_service_server::{PartnerCrmService, PartnerCrmServiceServer};
use pl_runtime::aggregate::{execute, load, Executed};
use pl_runtime::{
    idempotency, Aggregate, ApiError, Clock, CommandMeta, RequestMeta, StateCache, Violations,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::error::{self, Classify};
use crate::hierarchy::Hierarchy;
use crate::marketing::Asset;
use crate::partner::{Partner, Stage};
use crate::program::Program;
use crate::read::{self, ReadModel};
use crate::{streams, SERVICE};

mod assets;
mod campaigns;
mod dead_letters;
mod deals;
mod marketing;
mod mdf;
mod parse;
mod partners;
mod programs;
mod views;

/// Every field checked; `Some` only when there was no violation.
macro_rules! all {
    ($($x:ident),+ $(,)?) => {
        let ($($x),+) = match ($($x),+) {
            ($(Some($x)),+) => ($($x),+),
            _ => return Err(pl_runtime::ApiError::internal("validated fields missing")),
        };
    };
}
pub(crate) use all;

#[derive(Clone)]
pub struct CrmService {
    store: SharedStore,
    clock: Arc<dyn Clock>,
    read: Arc<ReadModel>,
    /// Hierarchies and assets grow with every parent change and every take: kept in memory.
    hierarchies: Arc<StateCache<Hierarchy>>,
    assets: Arc<StateCache<Asset>>,
}

impl std::fmt::Debug for CrmService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrmService").finish_non_exhaustive()
    }
}

/// gRPC service name, for health reporting.
pub const SERVICE_NAME: &str =
    <PartnerCrmServiceServer<CrmService> as tonic::server::NamedService>::NAME;

impl CrmService {
    pub fn new(store: SharedStore, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            read: Arc::default(),
            hierarchies: Arc::new(StateCache::new(1024)),
            assets: Arc::new(StateCache::new(4096)),
        }
    }

    pub fn into_server(self, max_request_bytes: usize) -> PartnerCrmServiceServer<Self> {
        PartnerCrmServiceServer::new(self).max_decoding_message_size(max_request_bytes)
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn meta(
        &self,
        ctx: Option<&common::RequestContext>,
        v: &mut Violations,
    ) -> Option<RequestMeta> {
        let trace = pl_telemetry::inject(&tracing::Span::current());
        RequestMeta::parse(SERVICE, ctx, self.clock.as_ref(), trace, v)
    }

    /// Runs `handle` once per idempotency key (a repeat answers the recorded response).
    async fn once<R, F, Fut>(
        &self,
        meta: &RequestMeta,
        fingerprint: [u8; 32],
        handle: F,
    ) -> Result<R, ApiError>
    where
        R: prost::Message + Default,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<R, ApiError>>,
    {
        idempotency::run_once(
            self.store.as_ref(),
            &meta.key,
            fingerprint,
            meta.occurred_at,
            handle,
        )
        .await
    }

    async fn load<A: Aggregate>(&self, stream: &str) -> Result<(A::State, Option<u64>), ApiError>
    where
        A::Error: Classify,
    {
        let loaded = load::<A>(self.store.as_ref(), stream)
            .await
            .map_err(error::to_api)?;
        Ok((loaded.state, loaded.version))
    }

    /// Runs one command on one stream; a not-found error names `id`.
    async fn exec<A: Aggregate>(
        &self,
        stream: &str,
        command: &A::Command,
        meta: &CommandMeta,
        id: Uuid,
    ) -> Result<Executed<A::State, A::Event>, ApiError>
    where
        A::Error: Classify,
    {
        execute::<A>(self.store.as_ref(), stream, command, meta)
            .await
            .map_err(|e| named(error::to_api(e), id))
    }

    async fn partner(&self, partner_id: Uuid) -> Result<(Partner, Option<u64>), ApiError> {
        let (p, v) = self.load::<Partner>(&streams::partner(partner_id)).await?;
        if p.application.is_none() {
            return Err(ApiError::NotFound {
                what: "partner",
                id: partner_id.to_string(),
            });
        }
        Ok((p, v))
    }

    /// The partner, which must be approved now (tracking assets, deals, MDF, campaigns).
    async fn approved_partner(&self, partner_id: Uuid) -> Result<Partner, ApiError> {
        let (p, _) = self.partner(partner_id).await?;
        match p.stage {
            Some(Stage::Approved) => Ok(p),
            Some(stage) => Err(ApiError::rule(format!(
                "partner {partner_id} is {}; only approved partners may do this",
                stage.as_str()
            ))),
            None => Err(ApiError::NotFound {
                what: "partner",
                id: partner_id.to_string(),
            }),
        }
    }

    async fn program(&self, program_id: Uuid) -> Result<(Program, Option<u64>), ApiError> {
        let (p, v) = self.load::<Program>(&streams::program(program_id)).await?;
        if p.definition.is_none() {
            return Err(ApiError::rule(format!(
                "program {program_id} is not defined in CRM; create it first"
            )));
        }
        Ok((p, v))
    }

    async fn parent_of(&self, partner: &Partner) -> Result<Option<Uuid>, ApiError> {
        let Some(app) = &partner.application else {
            return Ok(None);
        };
        let (parent, _) = self
            .hierarchies
            .read(
                self.store.as_ref(),
                &streams::hierarchy(app.program_id),
                |h| h.parent_of(app.partner_id),
            )
            .await
            .map_err(error::to_api)?;
        Ok(parent)
    }

    async fn model(&self) -> Result<tokio::sync::MutexGuard<'_, read::Model>, ApiError> {
        self.read.caught_up(self.store.as_ref()).await
    }
}

/// Fills the id of a not-found error the decider could not name.
fn named(e: ApiError, id: Uuid) -> ApiError {
    match e {
        ApiError::NotFound { what, id: empty } if empty.is_empty() => ApiError::NotFound {
            what,
            id: id.to_string(),
        },
        other => other,
    }
}

/// The meta of one step of a request that writes to several streams: each step's event ids
/// derive from the request's key and the step, so they never collide and a retry finds them.
fn step(meta: &RequestMeta, name: &str) -> CommandMeta {
    let mut m = meta.command_meta();
    m.id_seed = Uuid::new_v5(&m.id_seed, name.as_bytes());
    m
}

/// Generates the service impl: each RPC validates and runs in its area's handler, which answers
/// `Result<_, ApiError>`.
macro_rules! service {
    ($($name:ident($req:ty) -> $resp:ty = $handler:path;)*) => {
        #[tonic::async_trait]
        impl PartnerCrmService for CrmService {
            $(
                #[tracing::instrument(skip_all)]
                async fn $name(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                    $handler(self, request.into_inner())
                        .await
                        .map(Response::new)
                        .map_err(Status::from)
                }
            )*
        }
    };
}

service! {
    create_program(pb::CreateProgramRequest) -> pb::Program = programs::create;
    update_program_settings(pb::UpdateProgramSettingsRequest) -> pb::Program = programs::update_settings;
    define_tier(pb::DefineTierRequest) -> pb::Program = programs::define_tier;
    get_program(pb::GetProgramRequest) -> pb::Program = programs::get;
    list_programs(pb::ListProgramsRequest) -> pb::ListProgramsResponse = programs::list;

    apply_partner(pb::ApplyPartnerRequest) -> pb::Partner = partners::apply;
    start_partner_review(pb::StartPartnerReviewRequest) -> pb::Partner = partners::start_review;
    approve_partner(pb::ApprovePartnerRequest) -> pb::Partner = partners::approve;
    reject_partner(pb::RejectPartnerRequest) -> pb::Partner = partners::reject;
    suspend_partner(pb::SuspendPartnerRequest) -> pb::Partner = partners::suspend;
    reinstate_partner(pb::ReinstatePartnerRequest) -> pb::Partner = partners::reinstate;
    terminate_partner(pb::TerminatePartnerRequest) -> pb::Partner = partners::terminate;
    change_partner_tier(pb::ChangePartnerTierRequest) -> pb::Partner = partners::change_tier;
    set_partner_parent(pb::SetPartnerParentRequest) -> pb::Partner = partners::set_parent;
    update_partner_profile(pb::UpdatePartnerProfileRequest) -> pb::Partner = partners::update_profile;
    get_partner(pb::GetPartnerRequest) -> pb::Partner = partners::get;
    list_partners(pb::ListPartnersRequest) -> pb::ListPartnersResponse = partners::list;

    issue_tracking_link(pb::IssueTrackingLinkRequest) -> pb::TrackingLink = assets::issue_link;
    deactivate_tracking_link(pb::DeactivateTrackingLinkRequest) -> pb::TrackingLink = assets::deactivate_link;
    get_tracking_link(pb::GetTrackingLinkRequest) -> pb::TrackingLink = assets::get_link;
    list_tracking_links(pb::ListTrackingLinksRequest) -> pb::ListTrackingLinksResponse = assets::list_links;
    issue_coupon(pb::IssueCouponRequest) -> pb::Coupon = assets::issue_coupon;
    deactivate_coupon(pb::DeactivateCouponRequest) -> pb::Coupon = assets::deactivate_coupon;
    get_coupon(pb::GetCouponRequest) -> pb::Coupon = assets::get_coupon;
    list_coupons(pb::ListCouponsRequest) -> pb::ListCouponsResponse = assets::list_coupons;

    register_deal(pb::RegisterDealRequest) -> pb::Deal = deals::register;
    approve_deal(pb::ApproveDealRequest) -> pb::Deal = deals::approve;
    reject_deal(pb::RejectDealRequest) -> pb::Deal = deals::reject;
    win_deal(pb::WinDealRequest) -> pb::Deal = deals::win;
    lose_deal(pb::LoseDealRequest) -> pb::Deal = deals::lose;
    revoke_deal(pb::RevokeDealRequest) -> pb::Deal = deals::revoke;
    get_deal(pb::GetDealRequest) -> pb::Deal = deals::get;
    list_deals(pb::ListDealsRequest) -> pb::ListDealsResponse = deals::list;

    set_mdf_budget(pb::SetMdfBudgetRequest) -> pb::MdfBudget = mdf::set_budget;
    request_mdf(pb::RequestMdfRequest) -> pb::MdfBudget = mdf::request;
    approve_mdf_request(pb::ApproveMdfRequestRequest) -> pb::MdfBudget = mdf::approve_request;
    reject_mdf_request(pb::RejectMdfRequestRequest) -> pb::MdfBudget = mdf::reject_request;
    claim_mdf(pb::ClaimMdfRequest) -> pb::MdfBudget = mdf::claim;
    approve_mdf_claim(pb::ApproveMdfClaimRequest) -> pb::MdfBudget = mdf::approve_claim;
    reject_mdf_claim(pb::RejectMdfClaimRequest) -> pb::MdfBudget = mdf::reject_claim;
    get_mdf_budget(pb::GetMdfBudgetRequest) -> pb::MdfBudget = mdf::get;
    list_mdf_budgets(pb::ListMdfBudgetsRequest) -> pb::ListMdfBudgetsResponse = mdf::list;

    create_campaign(pb::CreateCampaignRequest) -> pb::Campaign = campaigns::create;
    commit_campaign_fee(pb::CommitCampaignFeeRequest) -> pb::Campaign = campaigns::commit_fee;
    award_campaign_bonus(pb::AwardCampaignBonusRequest) -> pb::Campaign = campaigns::award_bonus;
    get_campaign(pb::GetCampaignRequest) -> pb::Campaign = campaigns::get;
    list_campaigns(pb::ListCampaignsRequest) -> pb::ListCampaignsResponse = campaigns::list;

    list_dead_letters(common::ListDeadLettersRequest) -> common::ListDeadLettersResponse = dead_letters::list;
    retry_dead_letter(common::RetryDeadLetterRequest) -> common::RetryDeadLetterResponse = dead_letters::retry;

    add_marketing_asset(pb::AddMarketingAssetRequest) -> pb::MarketingAsset = marketing::add;
    retire_marketing_asset(pb::RetireMarketingAssetRequest) -> pb::MarketingAsset = marketing::retire;
    take_marketing_asset(pb::TakeMarketingAssetRequest) -> pb::MarketingAsset = marketing::take;
    get_marketing_asset(pb::GetMarketingAssetRequest) -> pb::MarketingAsset = marketing::get;
    list_marketing_assets(pb::ListMarketingAssetsRequest) -> pb::ListMarketingAssetsResponse = marketing::list;
}
