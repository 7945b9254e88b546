//! Partners over gRPC: applications, the lifecycle, tiers, parents and profiles. Reads the
//! partner's program to tell the decider what an approval requires (jurisdictions, the starting
//! tier); never lets a partner be activated without the program being known to CRM.

use chrono::{DateTime, Utc};
use pl_proto::crm::v1 as pb;
use pl_runtime::request::parse_uuid;
use pl_runtime::{idempotency, ApiError, RequestMeta, Violations};
use uuid::Uuid;

use super::{all, parse, views, CrmService};
use crate::error;
use crate::hierarchy::SetParent;
use crate::partner::{Application, ApprovalTerms, Partner, PartnerCommand, Stage};
use crate::program::Program;
use crate::streams;

/// Runs one command on the partner's stream once per key and answers with its view.
async fn run(
    svc: &CrmService,
    meta: &RequestMeta,
    fingerprint: [u8; 32],
    partner_id: Uuid,
    command: &PartnerCommand,
) -> Result<pb::Partner, ApiError> {
    svc.once(meta, fingerprint, || async {
        let done = svc
            .exec::<Partner>(
                &streams::partner(partner_id),
                command,
                &meta.command_meta(),
                partner_id,
            )
            .await?;
        if !done.events.is_empty() {
            tracing::info!(%partner_id, events = done.events.len(), "partner changed");
        }
        let parent = svc.parent_of(&done.state).await?;
        views::partner(&done.state, done.version, parent, svc.now()).ok_or(ApiError::NotFound {
            what: "partner",
            id: partner_id.to_string(),
        })
    })
    .await
}

/// The tier to start in: the requested one (which must exist), else the program's lowest.
fn starting_tier(program: &Program, requested: Option<String>) -> Result<Option<String>, ApiError> {
    match requested {
        Some(code) if program.tier(&code).is_some() => Ok(Some(code)),
        Some(code) => Err(ApiError::invalid(
            "tier",
            format!("{code} is not a tier of the partner's program"),
        )),
        None => Ok(program.lowest_tier().map(|t| t.code.clone())),
    }
}

fn terms(program: &Program, tier: Option<String>) -> Result<ApprovalTerms, ApiError> {
    Ok(ApprovalTerms {
        jurisdictions: program
            .definition
            .as_ref()
            .map(|d| d.jurisdictions.clone())
            .unwrap_or_default(),
        tier: starting_tier(program, tier)?,
    })
}

pub(super) async fn apply(
    svc: &CrmService,
    req: pb::ApplyPartnerRequest,
) -> Result<pb::Partner, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let partner_id = parse::uuid(&mut v, "partner_id", &req.partner_id);
    let program_id = parse::uuid(&mut v, "program_id", &req.program_id);
    let display_name = parse::text(
        &mut v,
        "display_name",
        &req.display_name,
        parse::MAX_NAME_CHARS,
    );
    let partner_type = v.check(parse::partner_type("partner_type", req.partner_type));
    let email = v.check(parse::email("email", &req.email));
    let country = v.check(parse::country("country", &req.country));
    v.finish()?;
    all!(
        meta,
        partner_id,
        program_id,
        display_name,
        partner_type,
        email,
        country
    );
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    // A program CRM does not know yet takes applications (reviewed once it is defined); one
    // that auto-approves approves here.
    let (program, _) = svc.load::<Program>(&streams::program(program_id)).await?;
    let auto_approve = match &program.definition {
        Some(d) if d.settings.auto_approve => Some(terms(&program, None)?),
        _ => None,
    };
    let command = PartnerCommand::Apply {
        application: Application {
            partner_id,
            program_id,
            display_name,
            partner_type,
            email,
            country,
            applied_at: meta.occurred_at,
        },
        auto_approve,
    };
    run(svc, &meta, fingerprint, partner_id, &command).await
}

pub(super) async fn start_review(
    svc: &CrmService,
    req: pb::StartPartnerReviewRequest,
) -> Result<pb::Partner, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let partner_id = parse::uuid(&mut v, "partner_id", &req.partner_id);
    let reviewer = parse::text(&mut v, "reviewer", &req.reviewer, parse::MAX_NAME_CHARS);
    v.finish()?;
    all!(meta, partner_id, reviewer);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = PartnerCommand::StartReview {
        reviewer,
        at: meta.occurred_at,
    };
    run(svc, &meta, fingerprint, partner_id, &command).await
}

pub(super) async fn approve(
    svc: &CrmService,
    req: pb::ApprovePartnerRequest,
) -> Result<pb::Partner, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let partner_id = parse::uuid(&mut v, "partner_id", &req.partner_id);
    let tier = parse::opt_tier(&mut v, "tier", &req.tier);
    let note = parse::opt_text(&mut v, "note", &req.note, parse::MAX_NOTE_CHARS);
    v.finish()?;
    all!(meta, partner_id, tier, note);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let (partner, _) = svc.partner(partner_id).await?;
    let program_id = partner
        .program_id()
        .ok_or_else(|| ApiError::internal("partner without program"))?;
    let (program, _) = svc.program(program_id).await?;
    let command = PartnerCommand::Approve {
        terms: terms(&program, tier)?,
        note,
        at: meta.occurred_at,
    };
    run(svc, &meta, fingerprint, partner_id, &command).await
}

/// Reject, suspend and terminate: a partner id and a required reason.
async fn with_reason(
    svc: &CrmService,
    meta: Option<RequestMeta>,
    mut v: Violations,
    partner_id: &str,
    reason: &str,
    fingerprint: [u8; 32],
    command: impl FnOnce(String, DateTime<Utc>) -> PartnerCommand,
) -> Result<pb::Partner, ApiError> {
    let partner_id = parse::uuid(&mut v, "partner_id", partner_id);
    let reason = parse::reason(&mut v, "reason", reason);
    v.finish()?;
    all!(meta, partner_id, reason);
    let command = command(reason, meta.occurred_at);
    run(svc, &meta, fingerprint, partner_id, &command).await
}

pub(super) async fn reject(
    svc: &CrmService,
    req: pb::RejectPartnerRequest,
) -> Result<pb::Partner, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    with_reason(
        svc,
        meta,
        v,
        &req.partner_id,
        &req.reason,
        fingerprint,
        |reason, at| PartnerCommand::Reject { reason, at },
    )
    .await
}

pub(super) async fn suspend(
    svc: &CrmService,
    req: pb::SuspendPartnerRequest,
) -> Result<pb::Partner, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    with_reason(
        svc,
        meta,
        v,
        &req.partner_id,
        &req.reason,
        fingerprint,
        |reason, at| PartnerCommand::Suspend { reason, at },
    )
    .await
}

pub(super) async fn terminate(
    svc: &CrmService,
    req: pb::TerminatePartnerRequest,
) -> Result<pb::Partner, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    with_reason(
        svc,
        meta,
        v,
        &req.partner_id,
        &req.reason,
        fingerprint,
        |reason, at| PartnerCommand::Terminate { reason, at },
    )
    .await
}

pub(super) async fn reinstate(
    svc: &CrmService,
    req: pb::ReinstatePartnerRequest,
) -> Result<pb::Partner, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let partner_id = parse::uuid(&mut v, "partner_id", &req.partner_id);
    let note = parse::opt_text(&mut v, "note", &req.note, parse::MAX_NOTE_CHARS);
    v.finish()?;
    all!(meta, partner_id, note);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = PartnerCommand::Reinstate {
        note,
        at: meta.occurred_at,
    };
    run(svc, &meta, fingerprint, partner_id, &command).await
}

pub(super) async fn change_tier(
    svc: &CrmService,
    req: pb::ChangePartnerTierRequest,
) -> Result<pb::Partner, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let partner_id = parse::uuid(&mut v, "partner_id", &req.partner_id);
    let tier = v.check(parse::tier_code("tier", &req.tier));
    let effective_from = parse::opt_time(&mut v, "effective_from", req.effective_from.as_ref());
    v.finish()?;
    all!(meta, partner_id, tier, effective_from);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let (partner, _) = svc.partner(partner_id).await?;
    let program_id = partner
        .program_id()
        .ok_or_else(|| ApiError::internal("partner without program"))?;
    let (program, _) = svc.program(program_id).await?;
    if program.tier(&tier).is_none() {
        return Err(ApiError::invalid(
            "tier",
            format!("{tier} is not a tier of program {program_id}"),
        ));
    }
    let command = PartnerCommand::ChangeTier {
        tier,
        effective_from: effective_from.unwrap_or(meta.occurred_at),
        at: meta.occurred_at,
    };
    run(svc, &meta, fingerprint, partner_id, &command).await
}

pub(super) async fn set_parent(
    svc: &CrmService,
    req: pb::SetPartnerParentRequest,
) -> Result<pb::Partner, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let partner_id = parse::uuid(&mut v, "partner_id", &req.partner_id);
    let parent = parse::opt_uuid(&mut v, "parent_partner_id", &req.parent_partner_id);
    v.finish()?;
    all!(meta, partner_id, parent);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    svc.once(&meta, fingerprint, || async {
        let (partner, version) = svc.partner(partner_id).await?;
        let program_id = partner
            .program_id()
            .ok_or_else(|| ApiError::internal("partner without program"))?;
        if matches!(partner.stage, Some(Stage::Rejected | Stage::Terminated)) {
            return Err(ApiError::rule(format!(
                "partner {partner_id} is {}: its hierarchy is closed",
                partner.stage.map_or("unknown", Stage::as_str)
            )));
        }
        let (program, _) = svc.program(program_id).await?;
        let max_levels = program
            .definition
            .as_ref()
            .map_or(1, |d| d.settings.max_levels);
        if let Some(parent_id) = parent {
            if max_levels < 2 {
                return Err(ApiError::rule(format!(
                    "program {program_id} is not multi-level (1 level): partners have no parents"
                )));
            }
            let (p, _) = svc.partner(parent_id).await?;
            if p.program_id() != Some(program_id) {
                return Err(ApiError::rule(format!(
                    "partner {parent_id} is not in program {program_id}"
                )));
            }
            if matches!(p.stage, Some(Stage::Rejected | Stage::Terminated)) {
                return Err(ApiError::rule(format!(
                    "partner {parent_id} is {} and cannot be a parent",
                    p.stage.map_or("unknown", Stage::as_str)
                )));
            }
        }
        let command = SetParent {
            program_id,
            partner_id,
            parent,
            max_levels,
            at: meta.occurred_at,
        };
        let done = svc
            .hierarchies
            .execute(
                svc.store.as_ref(),
                &streams::hierarchy(program_id),
                &command,
                &meta.command_meta(),
                |h| h.parent_of(partner_id),
            )
            .await
            .map_err(error::to_api)?;
        views::partner(&partner, version, done.view, svc.now())
            .ok_or_else(|| ApiError::internal("partner view missing"))
    })
    .await
}

pub(super) async fn update_profile(
    svc: &CrmService,
    req: pb::UpdatePartnerProfileRequest,
) -> Result<pb::Partner, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let partner_id = parse::uuid(&mut v, "partner_id", &req.partner_id);
    let profile = parse::profile(&mut v, "profile", req.profile.as_ref());
    v.finish()?;
    all!(meta, partner_id, profile);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = PartnerCommand::UpdateProfile {
        profile,
        at: meta.occurred_at,
    };
    run(svc, &meta, fingerprint, partner_id, &command).await
}

pub(super) async fn get(
    svc: &CrmService,
    req: pb::GetPartnerRequest,
) -> Result<pb::Partner, ApiError> {
    let partner_id = parse_uuid("partner_id", &req.partner_id)
        .map_err(|fv| ApiError::InvalidArgument(vec![fv]))?;
    let (partner, version) = svc.partner(partner_id).await?;
    let parent = svc.parent_of(&partner).await?;
    views::partner(&partner, version, parent, svc.now()).ok_or(ApiError::NotFound {
        what: "partner",
        id: partner_id.to_string(),
    })
}

pub(super) async fn list(
    svc: &CrmService,
    req: pb::ListPartnersRequest,
) -> Result<pb::ListPartnersResponse, ApiError> {
    let mut v = Violations::new();
    let (offset, limit) = parse::page(&mut v, "page", req.page.as_ref());
    let program = parse::opt_uuid(&mut v, "program_id", &req.program_id);
    let stage = v.check(parse::opt_stage("stage", req.stage));
    let partner_type = v.check(parse::opt_partner_type("partner_type", req.partner_type));
    let tier = parse::opt_tier(&mut v, "tier", &req.tier);
    let parent = parse::opt_uuid(&mut v, "parent_partner_id", &req.parent_partner_id);
    let niche = opt_label(&mut v, "niche", &req.niche);
    let platform = opt_label(&mut v, "platform", &req.platform);
    let disclosure = v.check(parse::opt_disclosure(
        "disclosure_status",
        req.disclosure_status,
    ));
    let country = if req.country.is_empty() {
        Some(None)
    } else {
        v.check(parse::country("country", &req.country)).map(Some)
    };
    v.finish()?;
    all!(
        program,
        stage,
        partner_type,
        tier,
        parent,
        niche,
        platform,
        disclosure,
        country
    );
    let now = svc.now();
    let m = svc.model().await?;
    let matches = |p: &Partner| -> bool {
        let Some(a) = &p.application else {
            return false;
        };
        program.is_none_or(|x| a.program_id == x)
            && stage.is_none_or(|s| p.stage == Some(s))
            && partner_type.is_none_or(|t| a.partner_type == t)
            && tier.as_deref().is_none_or(|t| p.tier_at(now) == Some(t))
            && parent.is_none_or(|x| m.parent_of(p) == Some(x))
            && niche.as_ref().is_none_or(|n| p.profile.niches.contains(n))
            && platform
                .as_ref()
                .is_none_or(|x| p.profile.platforms.iter().any(|pl| pl.platform == *x))
            && p.profile.audience_size() >= req.min_audience_size
            && disclosure.is_none_or(|d| p.profile.disclosure == d)
            && country.as_deref().is_none_or(|c| a.country == c)
    };
    let (partners, next_page_token) = crate::read::page(
        m.partners
            .values()
            .filter(|e| matches(&e.state))
            .filter_map(|e| views::partner(&e.state, Some(e.version), m.parent_of(&e.state), now)),
        offset,
        limit,
    );
    Ok(pb::ListPartnersResponse {
        partners,
        next_page_token,
    })
}

fn opt_label(v: &mut Violations, field: &str, value: &str) -> Option<Option<String>> {
    if value.is_empty() {
        Some(None)
    } else {
        v.check(parse::label(field, value)).map(Some)
    }
}
