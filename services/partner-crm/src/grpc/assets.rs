//! Tracking links and coupon codes over gRPC. Issues them only to approved partners (and to
//! campaign members for a campaign's assets); uniqueness is the deciders' and their streams'
//! (a link id's stream, a code's stream), never a check-then-write here.

use pl_proto::crm::v1 as pb;
use pl_runtime::{idempotency, ApiError, Violations};
use uuid::Uuid;

use super::{all, parse, views, CrmService};
use crate::campaigns::Campaign;
use crate::coupons::{Code, CouponCommand, Issue};
use crate::links::{Link, LinkCommand, LinkIssued};
use crate::partner::{Partner, Stage};
use crate::streams;

/// The campaign must exist, be of the program, and count the partner among its members.
async fn check_campaign(
    svc: &CrmService,
    campaign_id: Uuid,
    program_id: Uuid,
    partner_id: Uuid,
) -> Result<(), ApiError> {
    let (c, _) = svc
        .load::<Campaign>(&streams::campaign(campaign_id))
        .await?;
    let Some(created) = &c.created else {
        return Err(ApiError::NotFound {
            what: "campaign",
            id: campaign_id.to_string(),
        });
    };
    if created.program_id != program_id {
        return Err(ApiError::rule(format!(
            "campaign {campaign_id} belongs to another program"
        )));
    }
    if !c.has_member(partner_id) {
        return Err(ApiError::rule(format!(
            "partner {partner_id} does not take part in campaign {campaign_id}"
        )));
    }
    Ok(())
}

fn is_approved(p: &Partner) -> bool {
    p.stage == Some(Stage::Approved)
}

pub(super) async fn issue_link(
    svc: &CrmService,
    req: pb::IssueTrackingLinkRequest,
) -> Result<pb::TrackingLink, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let link_id = parse::uuid(&mut v, "tracking_link_id", &req.tracking_link_id);
    let partner_id = parse::uuid(&mut v, "partner_id", &req.partner_id);
    let campaign_id = parse::opt_uuid(&mut v, "campaign_id", &req.campaign_id);
    let url = v.check(parse::http_url("destination_url", &req.destination_url));
    let expires_at = parse::opt_time(&mut v, "expires_at", req.expires_at.as_ref());
    if let (Some(m), Some(Some(e))) = (&meta, expires_at) {
        if e <= m.occurred_at {
            v.add("expires_at", "must be after the time of issue");
        }
    }
    v.finish()?;
    all!(meta, link_id, partner_id, campaign_id, url, expires_at);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    svc.once(&meta, fingerprint, || async {
        let partner = svc.approved_partner(partner_id).await?;
        let program_id = partner
            .program_id()
            .ok_or_else(|| ApiError::internal("partner without program"))?;
        if let Some(c) = campaign_id {
            check_campaign(svc, c, program_id, partner_id).await?;
        }
        let command = LinkCommand::Issue(LinkIssued {
            tracking_link_id: link_id,
            partner_id,
            program_id,
            campaign_id,
            destination_url: url,
            occurred_at: meta.occurred_at,
            expires_at,
        });
        let done = svc
            .exec::<Link>(
                &streams::link(link_id),
                &command,
                &meta.command_meta(),
                link_id,
            )
            .await?;
        tracing::info!(%link_id, %partner_id, "tracking link issued");
        views::link(&done.state, done.version, true, svc.now())
            .ok_or_else(|| ApiError::internal("link missing after issue"))
    })
    .await
}

pub(super) async fn deactivate_link(
    svc: &CrmService,
    req: pb::DeactivateTrackingLinkRequest,
) -> Result<pb::TrackingLink, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let link_id = parse::uuid(&mut v, "tracking_link_id", &req.tracking_link_id);
    let reason = parse::reason(&mut v, "reason", &req.reason);
    v.finish()?;
    all!(meta, link_id, reason);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = LinkCommand::Deactivate {
        reason,
        at: meta.occurred_at,
    };
    svc.once(&meta, fingerprint, || async {
        let done = svc
            .exec::<Link>(
                &streams::link(link_id),
                &command,
                &meta.command_meta(),
                link_id,
            )
            .await?;
        link_view(svc, &done.state, done.version).await
    })
    .await
}

async fn link_view(
    svc: &CrmService,
    link: &Link,
    version: Option<u64>,
) -> Result<pb::TrackingLink, ApiError> {
    let partner_id = link
        .issued
        .as_ref()
        .map(|i| i.partner_id)
        .ok_or_else(|| ApiError::internal("link without issue"))?;
    let (partner, _) = svc.partner(partner_id).await?;
    views::link(link, version, is_approved(&partner), svc.now())
        .ok_or_else(|| ApiError::internal("link view missing"))
}

pub(super) async fn get_link(
    svc: &CrmService,
    req: pb::GetTrackingLinkRequest,
) -> Result<pb::TrackingLink, ApiError> {
    let mut v = Violations::new();
    let link_id = parse::uuid(&mut v, "tracking_link_id", &req.tracking_link_id);
    v.finish()?;
    let link_id = link_id.ok_or_else(|| ApiError::internal("validated id missing"))?;
    let (link, version) = svc.load::<Link>(&streams::link(link_id)).await?;
    if link.issued.is_none() {
        return Err(ApiError::NotFound {
            what: "tracking link",
            id: link_id.to_string(),
        });
    }
    link_view(svc, &link, version).await
}

pub(super) async fn list_links(
    svc: &CrmService,
    req: pb::ListTrackingLinksRequest,
) -> Result<pb::ListTrackingLinksResponse, ApiError> {
    let mut v = Violations::new();
    let (offset, limit) = parse::page(&mut v, "page", req.page.as_ref());
    let program = parse::opt_uuid(&mut v, "program_id", &req.program_id);
    let partner = parse::opt_uuid(&mut v, "partner_id", &req.partner_id);
    let campaign = parse::opt_uuid(&mut v, "campaign_id", &req.campaign_id);
    v.finish()?;
    all!(program, partner, campaign);
    let now = svc.now();
    let m = svc.model().await?;
    let approved = |p: Uuid| m.partners.get(&p).is_some_and(|e| is_approved(&e.state));
    let (links, next_page_token) = crate::read::page(
        m.links.values().filter_map(|e| {
            let i = e.state.issued.as_ref()?;
            let keep = program.is_none_or(|x| i.program_id == x)
                && partner.is_none_or(|x| i.partner_id == x)
                && campaign.is_none_or(|x| i.campaign_id == Some(x));
            if !keep {
                return None;
            }
            let view = views::link(&e.state, Some(e.version), approved(i.partner_id), now)?;
            (!req.active_only || view.active).then_some(view)
        }),
        offset,
        limit,
    );
    Ok(pb::ListTrackingLinksResponse {
        links,
        next_page_token,
    })
}

pub(super) async fn issue_coupon(
    svc: &CrmService,
    req: pb::IssueCouponRequest,
) -> Result<pb::Coupon, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let partner_id = parse::uuid(&mut v, "partner_id", &req.partner_id);
    let code = v.check(parse::coupon_code("code", &req.code));
    let campaign_id = parse::opt_uuid(&mut v, "campaign_id", &req.campaign_id);
    let valid_from = parse::opt_time(&mut v, "valid_from", req.valid_from.as_ref());
    let expires_at = parse::opt_time(&mut v, "expires_at", req.expires_at.as_ref());
    if let (Some(m), Some(from), Some(Some(e))) = (&meta, valid_from, expires_at) {
        if e <= from.unwrap_or(m.occurred_at) {
            v.add("expires_at", "must be after valid_from");
        }
    }
    v.finish()?;
    all!(meta, partner_id, code, campaign_id, valid_from, expires_at);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    svc.once(&meta, fingerprint, || async {
        let partner = svc.approved_partner(partner_id).await?;
        let program_id = partner
            .program_id()
            .ok_or_else(|| ApiError::internal("partner without program"))?;
        if let Some(c) = campaign_id {
            check_campaign(svc, c, program_id, partner_id).await?;
        }
        let command = CouponCommand::Issue(Issue {
            program_id,
            code: code.clone(),
            partner_id,
            campaign_id,
            valid_from: valid_from.unwrap_or(meta.occurred_at),
            expires_at,
            at: meta.occurred_at,
        });
        let stream = streams::code(program_id, &code);
        let done = svc
            .exec::<Code>(&stream, &command, &meta.command_meta(), program_id)
            .await?;
        let coupon = done
            .state
            .current()
            .ok_or_else(|| ApiError::internal("coupon missing after issue"))?;
        tracing::info!(coupon_id = %coupon.issued.coupon_id, %partner_id, "coupon issued");
        Ok(views::coupon(coupon, done.version, true, svc.now()))
    })
    .await
}

pub(super) async fn deactivate_coupon(
    svc: &CrmService,
    req: pb::DeactivateCouponRequest,
) -> Result<pb::Coupon, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let program_id = parse::uuid(&mut v, "program_id", &req.program_id);
    let code = v.check(parse::coupon_code("code", &req.code));
    let reason = parse::reason(&mut v, "reason", &req.reason);
    v.finish()?;
    all!(meta, program_id, code, reason);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = CouponCommand::Deactivate {
        reason,
        at: meta.occurred_at,
    };
    svc.once(&meta, fingerprint, || async {
        let done = svc
            .exec::<Code>(
                &streams::code(program_id, &code),
                &command,
                &meta.command_meta(),
                program_id,
            )
            .await
            .map_err(|e| coupon_not_found(e, &code))?;
        coupon_view(svc, &done.state, done.version, &code).await
    })
    .await
}

fn coupon_not_found(e: ApiError, code: &str) -> ApiError {
    match e {
        ApiError::NotFound { what, .. } => ApiError::NotFound {
            what,
            id: code.to_uppercase(),
        },
        other => other,
    }
}

async fn coupon_view(
    svc: &CrmService,
    code: &Code,
    version: Option<u64>,
    text: &str,
) -> Result<pb::Coupon, ApiError> {
    let coupon = code.current().ok_or(ApiError::NotFound {
        what: "coupon code",
        id: text.to_uppercase(),
    })?;
    let (partner, _) = svc.partner(coupon.issued.partner_id).await?;
    Ok(views::coupon(
        coupon,
        version,
        is_approved(&partner),
        svc.now(),
    ))
}

pub(super) async fn get_coupon(
    svc: &CrmService,
    req: pb::GetCouponRequest,
) -> Result<pb::Coupon, ApiError> {
    let mut v = Violations::new();
    let program_id = parse::uuid(&mut v, "program_id", &req.program_id);
    let code = v.check(parse::coupon_code("code", &req.code));
    v.finish()?;
    all!(program_id, code);
    let (state, version) = svc.load::<Code>(&streams::code(program_id, &code)).await?;
    coupon_view(svc, &state, version, &code).await
}

pub(super) async fn list_coupons(
    svc: &CrmService,
    req: pb::ListCouponsRequest,
) -> Result<pb::ListCouponsResponse, ApiError> {
    let mut v = Violations::new();
    let (offset, limit) = parse::page(&mut v, "page", req.page.as_ref());
    let program = parse::opt_uuid(&mut v, "program_id", &req.program_id);
    let partner = parse::opt_uuid(&mut v, "partner_id", &req.partner_id);
    let campaign = parse::opt_uuid(&mut v, "campaign_id", &req.campaign_id);
    v.finish()?;
    all!(program, partner, campaign);
    let now = svc.now();
    let m = svc.model().await?;
    let approved = |p: Uuid| m.partners.get(&p).is_some_and(|e| is_approved(&e.state));
    let (coupons, next_page_token) = crate::read::page(
        m.codes.values().flat_map(|e| {
            e.state.coupons.iter().filter_map(|c| {
                let i = &c.issued;
                let keep = program.is_none_or(|x| i.program_id == x)
                    && partner.is_none_or(|x| i.partner_id == x)
                    && campaign.is_none_or(|x| i.campaign_id == Some(x));
                if !keep {
                    return None;
                }
                let view = views::coupon(c, Some(e.version), approved(i.partner_id), now);
                (!req.active_only || view.active).then_some(view)
            })
        }),
        offset,
        limit,
    );
    Ok(pb::ListCouponsResponse {
        coupons,
        next_page_token,
    })
}
