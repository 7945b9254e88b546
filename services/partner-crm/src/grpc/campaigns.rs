//! Campaigns over gRPC: creation (every member an approved partner of the program), flat-fee
//! commitments and performance bonuses. Never books money itself: the published events are
//! what commissions turns into ledger transactions.

use std::collections::BTreeSet;

use pl_proto::crm::v1 as pb;
use pl_runtime::{idempotency, ApiError, RequestMeta, Violations};
use uuid::Uuid;

use super::{all, parse, views, CrmService};
use crate::campaigns::{BonusTerms, Campaign, CampaignCommand, CampaignCreated, Fee, MAX_MEMBERS};
use crate::partner::Stage;
use crate::streams;

pub(super) async fn create(
    svc: &CrmService,
    req: pb::CreateCampaignRequest,
) -> Result<pb::Campaign, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let campaign_id = parse::uuid(&mut v, "campaign_id", &req.campaign_id);
    let program_id = parse::uuid(&mut v, "program_id", &req.program_id);
    let name = parse::text(&mut v, "name", &req.name, parse::MAX_NAME_CHARS);
    let starts_at = parse::time(&mut v, "starts_at", req.starts_at.as_ref());
    let ends_at = parse::time(&mut v, "ends_at", req.ends_at.as_ref());
    if let (Some(s), Some(e)) = (starts_at, ends_at) {
        if e <= s {
            v.add("ends_at", "must be after starts_at");
        }
    }
    if req.members.is_empty() || req.members.len() > MAX_MEMBERS {
        v.add("members", format!("1 to {MAX_MEMBERS} partners"));
    }
    let mut fees = Vec::new();
    let mut seen = BTreeSet::new();
    let mut members_ok = true;
    for (i, m) in req.members.iter().take(MAX_MEMBERS).enumerate() {
        let partner = parse::uuid(&mut v, &format!("members[{i}].partner_id"), &m.partner_id);
        let fee = v.check(parse::money(
            &format!("members[{i}].flat_fee"),
            m.flat_fee.as_ref(),
        ));
        match (partner, fee) {
            (Some(p), Some(f)) if seen.insert(p) => fees.push(Fee {
                partner_id: p,
                flat_fee: f,
            }),
            (Some(_), Some(_)) => {
                v.add(format!("members[{i}].partner_id"), "each partner once");
                members_ok = false;
            }
            _ => members_ok = false,
        }
    }
    let bonus = match &req.bonus {
        None => Some(None),
        Some(b) => {
            if b.target_conversions == 0 {
                v.add("bonus.target_conversions", "at least 1");
            }
            v.check(parse::positive("bonus.amount", b.amount.as_ref()))
                .map(|amount| {
                    Some(BonusTerms {
                        target_conversions: b.target_conversions,
                        amount,
                    })
                })
        }
    };
    v.finish()?;
    all!(
        meta,
        campaign_id,
        program_id,
        name,
        starts_at,
        ends_at,
        bonus
    );
    if !members_ok {
        return Err(ApiError::internal("validated members missing"));
    }
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    svc.once(&meta, fingerprint, || async {
        svc.program(program_id).await?;
        for f in &fees {
            let (p, _) = svc.partner(f.partner_id).await?;
            if p.program_id() != Some(program_id) {
                return Err(ApiError::rule(format!(
                    "partner {} is not in program {program_id}",
                    f.partner_id
                )));
            }
            if p.stage != Some(Stage::Approved) {
                return Err(ApiError::rule(format!(
                    "partner {} is {}; campaigns take approved partners",
                    f.partner_id,
                    p.stage.map_or("unknown", Stage::as_str)
                )));
            }
        }
        let command = CampaignCommand::Create(CampaignCreated {
            campaign_id,
            program_id,
            name,
            partner_ids: fees.iter().map(|f| f.partner_id).collect(),
            occurred_at: meta.occurred_at,
            starts_at,
            ends_at,
            fees,
            bonus,
        });
        let done = svc
            .exec::<Campaign>(
                &streams::campaign(campaign_id),
                &command,
                &meta.command_meta(),
                campaign_id,
            )
            .await?;
        tracing::info!(%campaign_id, "campaign created");
        views::campaign(&done.state, done.version)
            .ok_or_else(|| ApiError::internal("campaign missing after create"))
    })
    .await
}

async fn run(
    svc: &CrmService,
    meta: &RequestMeta,
    fingerprint: [u8; 32],
    campaign_id: Uuid,
    command: CampaignCommand,
) -> Result<pb::Campaign, ApiError> {
    svc.once(meta, fingerprint, || async {
        let done = svc
            .exec::<Campaign>(
                &streams::campaign(campaign_id),
                &command,
                &meta.command_meta(),
                campaign_id,
            )
            .await?;
        views::campaign(&done.state, done.version).ok_or(ApiError::NotFound {
            what: "campaign",
            id: campaign_id.to_string(),
        })
    })
    .await
}

pub(super) async fn commit_fee(
    svc: &CrmService,
    req: pb::CommitCampaignFeeRequest,
) -> Result<pb::Campaign, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let campaign_id = parse::uuid(&mut v, "campaign_id", &req.campaign_id);
    let partner_id = parse::uuid(&mut v, "partner_id", &req.partner_id);
    v.finish()?;
    all!(meta, campaign_id, partner_id);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = CampaignCommand::CommitFee {
        partner_id,
        at: meta.occurred_at,
    };
    run(svc, &meta, fingerprint, campaign_id, command).await
}

pub(super) async fn award_bonus(
    svc: &CrmService,
    req: pb::AwardCampaignBonusRequest,
) -> Result<pb::Campaign, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let campaign_id = parse::uuid(&mut v, "campaign_id", &req.campaign_id);
    let partner_id = parse::uuid(&mut v, "partner_id", &req.partner_id);
    v.finish()?;
    all!(meta, campaign_id, partner_id);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = CampaignCommand::AwardBonus {
        partner_id,
        conversions: req.conversions,
        at: meta.occurred_at,
    };
    run(svc, &meta, fingerprint, campaign_id, command).await
}

pub(super) async fn get(
    svc: &CrmService,
    req: pb::GetCampaignRequest,
) -> Result<pb::Campaign, ApiError> {
    let mut v = Violations::new();
    let campaign_id = parse::uuid(&mut v, "campaign_id", &req.campaign_id);
    v.finish()?;
    let campaign_id = campaign_id.ok_or_else(|| ApiError::internal("validated id missing"))?;
    let (c, version) = svc
        .load::<Campaign>(&streams::campaign(campaign_id))
        .await?;
    views::campaign(&c, version).ok_or(ApiError::NotFound {
        what: "campaign",
        id: campaign_id.to_string(),
    })
}

pub(super) async fn list(
    svc: &CrmService,
    req: pb::ListCampaignsRequest,
) -> Result<pb::ListCampaignsResponse, ApiError> {
    let mut v = Violations::new();
    let (offset, limit) = parse::page(&mut v, "page", req.page.as_ref());
    let program = parse::opt_uuid(&mut v, "program_id", &req.program_id);
    let partner = parse::opt_uuid(&mut v, "partner_id", &req.partner_id);
    v.finish()?;
    all!(program, partner);
    let m = svc.model().await?;
    let (campaigns, next_page_token) = crate::read::page(
        m.campaigns.values().filter_map(|e| {
            let c = e.state.created.as_ref()?;
            let keep = program.is_none_or(|x| c.program_id == x)
                && partner.is_none_or(|x| c.partner_ids.contains(&x));
            if keep {
                views::campaign(&e.state, Some(e.version))
            } else {
                None
            }
        }),
        offset,
        limit,
    );
    Ok(pb::ListCampaignsResponse {
        campaigns,
        next_page_token,
    })
}
