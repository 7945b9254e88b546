//! MDF over gRPC: budgets, requests, claims and reimbursements. Checks the partner and what its
//! tier allows before asking the budget's decider; never checks an amount against the budget
//! itself (only the budget stream can, under concurrency).

use pl_proto::crm::v1 as pb;
use pl_runtime::{idempotency, ApiError, RequestMeta, Violations};
use uuid::Uuid;

use super::{all, parse, views, CrmService};
use crate::mdf::{Budget, BudgetSet, MdfCommand};
use crate::partner::Stage;
use crate::streams;

/// The partner may use MDF now: approved (or, for claims on approved requests, not ended) and
/// in a tier with MDF.
async fn check_partner(
    svc: &CrmService,
    partner_id: Uuid,
    claims_only: bool,
) -> Result<Uuid, ApiError> {
    let (partner, _) = svc.partner(partner_id).await?;
    let ok = match partner.stage {
        Some(Stage::Approved) => true,
        Some(Stage::Suspended) => claims_only,
        _ => false,
    };
    if !ok {
        return Err(ApiError::rule(format!(
            "partner {partner_id} is {}; MDF is for approved partners",
            partner.stage.map_or("unknown", Stage::as_str)
        )));
    }
    let program_id = partner
        .program_id()
        .ok_or_else(|| ApiError::internal("partner without program"))?;
    if !claims_only {
        let (program, _) = svc.program(program_id).await?;
        let tier = partner.tier_at(svc.now());
        if !program.access(tier).mdf {
            return Err(ApiError::rule(format!(
                "the partner's tier ({}) does not include MDF",
                tier.unwrap_or("none")
            )));
        }
    }
    Ok(program_id)
}

async fn budget(svc: &CrmService, budget_id: Uuid) -> Result<(Budget, Option<u64>), ApiError> {
    let (b, version) = svc.load::<Budget>(&streams::budget(budget_id)).await?;
    if b.budget.is_none() {
        return Err(ApiError::NotFound {
            what: "MDF budget",
            id: budget_id.to_string(),
        });
    }
    Ok((b, version))
}

async fn run(
    svc: &CrmService,
    meta: &RequestMeta,
    fingerprint: [u8; 32],
    budget_id: Uuid,
    command: MdfCommand,
    partner_check: Option<bool>,
) -> Result<pb::MdfBudget, ApiError> {
    svc.once(meta, fingerprint, || async {
        if let Some(claims_only) = partner_check {
            let (b, _) = budget(svc, budget_id).await?;
            let partner_id = b
                .budget
                .as_ref()
                .map(|s| s.partner_id)
                .ok_or_else(|| ApiError::internal("budget without partner"))?;
            check_partner(svc, partner_id, claims_only).await?;
        }
        let done = svc
            .exec::<Budget>(
                &streams::budget(budget_id),
                &command,
                &meta.command_meta(),
                budget_id,
            )
            .await?;
        if !done.events.is_empty() {
            tracing::info!(%budget_id, events = done.events.len(), "MDF budget changed");
        }
        views::budget(&done.state, done.version).ok_or(ApiError::NotFound {
            what: "MDF budget",
            id: budget_id.to_string(),
        })
    })
    .await
}

pub(super) async fn set_budget(
    svc: &CrmService,
    req: pb::SetMdfBudgetRequest,
) -> Result<pb::MdfBudget, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let partner_id = parse::uuid(&mut v, "partner_id", &req.partner_id);
    let period = v.check(parse::period("period", &req.period));
    let amount = v.check(parse::money("amount", req.amount.as_ref()));
    v.finish()?;
    all!(meta, partner_id, period, amount);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let budget_id = streams::budget_id(partner_id, &period);
    svc.once(&meta, fingerprint, || async {
        let program_id = check_partner(svc, partner_id, false).await?;
        let command = MdfCommand::SetBudget(BudgetSet {
            budget_id,
            partner_id,
            program_id,
            period: period.clone(),
            amount,
            occurred_at: meta.occurred_at,
        });
        let done = svc
            .exec::<Budget>(
                &streams::budget(budget_id),
                &command,
                &meta.command_meta(),
                budget_id,
            )
            .await?;
        views::budget(&done.state, done.version)
            .ok_or_else(|| ApiError::internal("budget missing after set"))
    })
    .await
}

pub(super) async fn request(
    svc: &CrmService,
    req: pb::RequestMdfRequest,
) -> Result<pb::MdfBudget, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let budget_id = parse::uuid(&mut v, "budget_id", &req.budget_id);
    let request_id = parse::uuid(&mut v, "request_id", &req.request_id);
    let amount = v.check(parse::positive("amount", req.amount.as_ref()));
    let activity = parse::text(&mut v, "activity", &req.activity, parse::MAX_REASON_CHARS);
    v.finish()?;
    all!(meta, budget_id, request_id, amount, activity);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = MdfCommand::Request {
        request_id,
        amount,
        activity,
        at: meta.occurred_at,
    };
    run(svc, &meta, fingerprint, budget_id, command, Some(false)).await
}

pub(super) async fn approve_request(
    svc: &CrmService,
    req: pb::ApproveMdfRequestRequest,
) -> Result<pb::MdfBudget, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let budget_id = parse::uuid(&mut v, "budget_id", &req.budget_id);
    let request_id = parse::uuid(&mut v, "request_id", &req.request_id);
    let amount = parse::opt_positive(&mut v, "amount", req.amount.as_ref());
    v.finish()?;
    all!(meta, budget_id, request_id, amount);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = MdfCommand::ApproveRequest {
        request_id,
        amount,
        at: meta.occurred_at,
    };
    run(svc, &meta, fingerprint, budget_id, command, None).await
}

pub(super) async fn reject_request(
    svc: &CrmService,
    req: pb::RejectMdfRequestRequest,
) -> Result<pb::MdfBudget, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let budget_id = parse::uuid(&mut v, "budget_id", &req.budget_id);
    let request_id = parse::uuid(&mut v, "request_id", &req.request_id);
    let reason = parse::reason(&mut v, "reason", &req.reason);
    v.finish()?;
    all!(meta, budget_id, request_id, reason);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = MdfCommand::RejectRequest {
        request_id,
        reason,
        at: meta.occurred_at,
    };
    run(svc, &meta, fingerprint, budget_id, command, None).await
}

pub(super) async fn claim(
    svc: &CrmService,
    req: pb::ClaimMdfRequest,
) -> Result<pb::MdfBudget, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let budget_id = parse::uuid(&mut v, "budget_id", &req.budget_id);
    let claim_id = parse::uuid(&mut v, "claim_id", &req.claim_id);
    let request_id = parse::uuid(&mut v, "request_id", &req.request_id);
    let amount = v.check(parse::positive("amount", req.amount.as_ref()));
    let proof = parse::text(
        &mut v,
        "proof_reference",
        &req.proof_reference,
        parse::MAX_URL_CHARS,
    );
    v.finish()?;
    all!(meta, budget_id, claim_id, request_id, amount, proof);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = MdfCommand::Claim {
        claim_id,
        request_id,
        amount,
        proof_reference: proof,
        at: meta.occurred_at,
    };
    run(svc, &meta, fingerprint, budget_id, command, Some(true)).await
}

pub(super) async fn approve_claim(
    svc: &CrmService,
    req: pb::ApproveMdfClaimRequest,
) -> Result<pb::MdfBudget, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let budget_id = parse::uuid(&mut v, "budget_id", &req.budget_id);
    let claim_id = parse::uuid(&mut v, "claim_id", &req.claim_id);
    v.finish()?;
    all!(meta, budget_id, claim_id);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = MdfCommand::ApproveClaim {
        claim_id,
        at: meta.occurred_at,
    };
    run(svc, &meta, fingerprint, budget_id, command, None).await
}

pub(super) async fn reject_claim(
    svc: &CrmService,
    req: pb::RejectMdfClaimRequest,
) -> Result<pb::MdfBudget, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let budget_id = parse::uuid(&mut v, "budget_id", &req.budget_id);
    let claim_id = parse::uuid(&mut v, "claim_id", &req.claim_id);
    let reason = parse::reason(&mut v, "reason", &req.reason);
    v.finish()?;
    all!(meta, budget_id, claim_id, reason);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = MdfCommand::RejectClaim {
        claim_id,
        reason,
        at: meta.occurred_at,
    };
    run(svc, &meta, fingerprint, budget_id, command, None).await
}

pub(super) async fn get(
    svc: &CrmService,
    req: pb::GetMdfBudgetRequest,
) -> Result<pb::MdfBudget, ApiError> {
    let mut v = Violations::new();
    let budget_id = if req.budget_id.is_empty() {
        let partner = parse::uuid(&mut v, "partner_id", &req.partner_id);
        let period = v.check(parse::period("period", &req.period));
        match (partner, period) {
            (Some(p), Some(period)) => Some(streams::budget_id(p, &period)),
            _ => None,
        }
    } else {
        parse::uuid(&mut v, "budget_id", &req.budget_id)
    };
    v.finish()?;
    let budget_id = budget_id.ok_or_else(|| ApiError::internal("validated id missing"))?;
    let (b, version) = budget(svc, budget_id).await?;
    views::budget(&b, version).ok_or(ApiError::NotFound {
        what: "MDF budget",
        id: budget_id.to_string(),
    })
}

pub(super) async fn list(
    svc: &CrmService,
    req: pb::ListMdfBudgetsRequest,
) -> Result<pb::ListMdfBudgetsResponse, ApiError> {
    let mut v = Violations::new();
    let (offset, limit) = parse::page(&mut v, "page", req.page.as_ref());
    let program = parse::opt_uuid(&mut v, "program_id", &req.program_id);
    let partner = parse::opt_uuid(&mut v, "partner_id", &req.partner_id);
    let period = if req.period.is_empty() {
        Some(None)
    } else {
        v.check(parse::period("period", &req.period)).map(Some)
    };
    v.finish()?;
    all!(program, partner, period);
    let m = svc.model().await?;
    let (budgets, next_page_token) = crate::read::page(
        m.budgets.values().filter_map(|e| {
            let b = e.state.budget.as_ref()?;
            let keep = program.is_none_or(|x| b.program_id == x)
                && partner.is_none_or(|x| b.partner_id == x)
                && period.as_deref().is_none_or(|x| b.period == x);
            if keep {
                views::budget(&e.state, Some(e.version))
            } else {
                None
            }
        }),
        offset,
        limit,
    );
    Ok(pb::ListMdfBudgetsResponse {
        budgets,
        next_page_token,
    })
}
