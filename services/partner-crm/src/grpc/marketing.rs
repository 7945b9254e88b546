//! Co-marketing assets over gRPC: the catalogue per program and who took what. Tells the
//! decider the partner's tier now; never lets another program's partner take an asset.

use pl_proto::crm::v1 as pb;
use pl_runtime::{idempotency, ApiError, Violations};

use super::{all, parse, views, CrmService};
use crate::error;
use crate::marketing::{Asset, AssetAdded, AssetCommand};
use crate::program::MAX_TIERS;
use crate::streams;

pub(super) async fn add(
    svc: &CrmService,
    req: pb::AddMarketingAssetRequest,
) -> Result<pb::MarketingAsset, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let asset_id = parse::uuid(&mut v, "asset_id", &req.asset_id);
    let program_id = parse::uuid(&mut v, "program_id", &req.program_id);
    let name = parse::text(&mut v, "name", &req.name, parse::MAX_NAME_CHARS);
    let kind = v.check(parse::asset_kind("kind", req.kind));
    let uri = v.check(parse::uri("uri", &req.uri));
    if req.allowed_tiers.len() > MAX_TIERS {
        v.add("allowed_tiers", format!("at most {MAX_TIERS}"));
    }
    let mut tiers: Vec<String> = Vec::new();
    for (i, t) in req.allowed_tiers.iter().take(MAX_TIERS).enumerate() {
        if let Some(t) = v.check(parse::tier_code(&format!("allowed_tiers[{i}]"), t)) {
            if !tiers.contains(&t) {
                tiers.push(t);
            }
        }
    }
    v.finish()?;
    all!(meta, asset_id, program_id, name, kind, uri);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    svc.once(&meta, fingerprint, || async {
        let (program, _) = svc.program(program_id).await?;
        if let Some(t) = tiers.iter().find(|t| program.tier(t).is_none()) {
            return Err(ApiError::invalid(
                "allowed_tiers",
                format!("{t} is not a tier of program {program_id}"),
            ));
        }
        let command = AssetCommand::Add(AssetAdded {
            asset_id,
            program_id,
            name,
            kind,
            uri,
            allowed_tiers: tiers,
            occurred_at: meta.occurred_at,
        });
        let done = svc
            .assets
            .execute(
                svc.store.as_ref(),
                &streams::asset(asset_id),
                &command,
                &meta.command_meta(),
                |a| views::asset(a, None, 0, 0),
            )
            .await
            .map_err(error::to_api)?;
        with_version(done.view, done.version)
    })
    .await
}

fn with_version(
    view: Option<pb::MarketingAsset>,
    version: Option<u64>,
) -> Result<pb::MarketingAsset, ApiError> {
    let mut view = view.ok_or_else(|| ApiError::internal("asset view missing"))?;
    view.version = version.unwrap_or(0);
    Ok(view)
}

pub(super) async fn retire(
    svc: &CrmService,
    req: pb::RetireMarketingAssetRequest,
) -> Result<pb::MarketingAsset, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let asset_id = parse::uuid(&mut v, "asset_id", &req.asset_id);
    v.finish()?;
    all!(meta, asset_id);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = AssetCommand::Retire {
        at: meta.occurred_at,
    };
    svc.once(&meta, fingerprint, || async {
        let done = svc
            .assets
            .execute(
                svc.store.as_ref(),
                &streams::asset(asset_id),
                &command,
                &meta.command_meta(),
                |a| views::asset(a, None, 0, 0),
            )
            .await
            .map_err(|e| super::named(error::to_api(e), asset_id))?;
        with_version(done.view, done.version)
    })
    .await
}

pub(super) async fn take(
    svc: &CrmService,
    req: pb::TakeMarketingAssetRequest,
) -> Result<pb::MarketingAsset, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let asset_id = parse::uuid(&mut v, "asset_id", &req.asset_id);
    let partner_id = parse::uuid(&mut v, "partner_id", &req.partner_id);
    v.finish()?;
    all!(meta, asset_id, partner_id);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    svc.once(&meta, fingerprint, || async {
        let stream = streams::asset(asset_id);
        let (program_id, _) = svc
            .assets
            .read(svc.store.as_ref(), &stream, |a| {
                a.added.as_ref().map(|x| x.program_id)
            })
            .await
            .map_err(error::to_api)?;
        let program_id = program_id.ok_or(ApiError::NotFound {
            what: "marketing asset",
            id: asset_id.to_string(),
        })?;
        let partner = svc.approved_partner(partner_id).await?;
        if partner.program_id() != Some(program_id) {
            return Err(ApiError::rule(format!(
                "partner {partner_id} is not in the asset's program {program_id}"
            )));
        }
        let (program, _) = svc.program(program_id).await?;
        // A partner without a tier in a tiered program counts as the lowest tier.
        let tier = partner
            .tier_at(meta.occurred_at)
            .map(str::to_owned)
            .or_else(|| program.lowest_tier().map(|t| t.code.clone()));
        let command = AssetCommand::Take {
            partner_id,
            tier,
            at: meta.occurred_at,
        };
        let done = svc
            .assets
            .execute(
                svc.store.as_ref(),
                &stream,
                &command,
                &meta.command_meta(),
                |a| views::asset(a, None, 0, 0),
            )
            .await
            .map_err(error::to_api)?;
        tracing::info!(%asset_id, %partner_id, "marketing asset taken");
        with_version(done.view, done.version)
    })
    .await
}

pub(super) async fn get(
    svc: &CrmService,
    req: pb::GetMarketingAssetRequest,
) -> Result<pb::MarketingAsset, ApiError> {
    let mut v = Violations::new();
    let asset_id = parse::uuid(&mut v, "asset_id", &req.asset_id);
    let (offset, limit) = parse::page(&mut v, "takers_page", req.takers_page.as_ref());
    v.finish()?;
    let asset_id = asset_id.ok_or_else(|| ApiError::internal("validated id missing"))?;
    let (view, version) = svc
        .assets
        .read(svc.store.as_ref(), &streams::asset(asset_id), |a| {
            views::asset(a, None, offset, limit)
        })
        .await
        .map_err(error::to_api)?;
    match view {
        Some(_) => with_version(view, version),
        None => Err(ApiError::NotFound {
            what: "marketing asset",
            id: asset_id.to_string(),
        }),
    }
}

pub(super) async fn list(
    svc: &CrmService,
    req: pb::ListMarketingAssetsRequest,
) -> Result<pb::ListMarketingAssetsResponse, ApiError> {
    let mut v = Violations::new();
    let (offset, limit) = parse::page(&mut v, "page", req.page.as_ref());
    let program = parse::opt_uuid(&mut v, "program_id", &req.program_id);
    let tier = parse::opt_tier(&mut v, "tier", &req.tier);
    let taken_by = parse::opt_uuid(&mut v, "taken_by", &req.taken_by);
    v.finish()?;
    all!(program, tier, taken_by);
    let m = svc.model().await?;
    let (assets, next_page_token) = crate::read::page(
        m.assets.values().filter_map(|e| {
            let a: &Asset = &e.state;
            let added = a.added.as_ref()?;
            let keep = program.is_none_or(|x| added.program_id == x)
                && tier.as_deref().is_none_or(|t| a.allows(Some(t)))
                && taken_by.is_none_or(|p| a.taken_by(p))
                && (req.include_retired || a.retired_at.is_none());
            if keep {
                views::asset(a, Some(e.version), 0, 0)
            } else {
                None
            }
        }),
        offset,
        limit,
    );
    Ok(pb::ListMarketingAssetsResponse {
        assets,
        next_page_token,
    })
}
