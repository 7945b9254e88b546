//! Deal registrations over gRPC. A registration writes the deal id's pointer first (unique deal
//! ids), then the domain's registry (first valid registration wins); both steps' event ids
//! derive from the request, so a retried request completes instead of repeating. Never judges a
//! conflict itself: the registry does.

use chrono::Duration;
use pl_proto::crm::v1 as pb;
use pl_runtime::{idempotency, ApiError, RequestMeta, Violations};
use uuid::Uuid;

use super::{all, parse, step, views, CrmService};
use crate::deals::{DealCommand, DealLocated, DealRef, DealRegistered, Registry};
use crate::streams;

/// The registry stream of a deal, from its pointer.
async fn registry_of(svc: &CrmService, deal_id: Uuid) -> Result<String, ApiError> {
    let (r, _) = svc.load::<DealRef>(&streams::deal_ref(deal_id)).await?;
    let l = r.0.ok_or(ApiError::NotFound {
        what: "deal",
        id: deal_id.to_string(),
    })?;
    Ok(streams::deals(l.program_id, &l.customer_domain))
}

fn view(
    svc: &CrmService,
    reg: &Registry,
    version: Option<u64>,
    deal_id: Uuid,
) -> Result<pb::Deal, ApiError> {
    let d = reg.deal(deal_id).ok_or(ApiError::NotFound {
        what: "deal",
        id: deal_id.to_string(),
    })?;
    Ok(views::deal(d, version, svc.now()))
}

pub(super) async fn register(
    svc: &CrmService,
    req: pb::RegisterDealRequest,
) -> Result<pb::Deal, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let deal_id = parse::uuid(&mut v, "deal_id", &req.deal_id);
    let partner_id = parse::uuid(&mut v, "partner_id", &req.partner_id);
    let domain = v.check(parse::domain("customer_domain", &req.customer_domain));
    let company = parse::text(
        &mut v,
        "company_name",
        &req.company_name,
        parse::MAX_NAME_CHARS,
    );
    let contact = req.contact.clone().unwrap_or_default();
    let contact_name = parse::text(&mut v, "contact.name", &contact.name, parse::MAX_NAME_CHARS);
    let contact_email = v.check(parse::email("contact.email", &contact.email));
    let value = v.check(parse::positive(
        "estimated_value",
        req.estimated_value.as_ref(),
    ));
    let notes = parse::opt_text(&mut v, "notes", &req.notes, parse::MAX_NOTE_CHARS);
    v.finish()?;
    all!(
        meta,
        deal_id,
        partner_id,
        domain,
        company,
        contact_name,
        contact_email,
        value,
        notes
    );
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    svc.once(&meta, fingerprint, || async {
        let partner = svc.approved_partner(partner_id).await?;
        let program_id = partner
            .program_id()
            .ok_or_else(|| ApiError::internal("partner without program"))?;
        let (program, _) = svc.program(program_id).await?;
        let now = meta.occurred_at;
        if !program.access(partner.tier_at(now)).deal_registration {
            return Err(ApiError::rule(format!(
                "the partner's tier ({}) does not include deal registration",
                partner.tier_at(now).unwrap_or("none")
            )));
        }
        let days = program
            .definition
            .as_ref()
            .map_or(crate::program::DEFAULT_DEAL_REGISTRATION_DAYS, |d| d.settings.deal_registration_days);
        let located = DealLocated {
            deal_id,
            program_id,
            customer_domain: domain.clone(),
            occurred_at: now,
        };
        svc.exec::<DealRef>(&streams::deal_ref(deal_id), &located, &step(&meta, "locate"), deal_id)
            .await?;
        let command = DealCommand::Register(DealRegistered {
            deal_id,
            partner_id,
            program_id,
            customer_domain: domain.clone(),
            company_name: company,
            contact_name,
            contact_email,
            estimated_value: value,
            notes,
            registered_at: now,
            expires_at: now + Duration::days(i64::from(days)),
            conflicts_with: None,
        });
        let done = svc
            .exec::<Registry>(&streams::deals(program_id, &domain), &command, &step(&meta, "register"), deal_id)
            .await?;
        let deal = view(svc, &done.state, done.version, deal_id)?;
        tracing::info!(%deal_id, %partner_id, conflicted = deal.status == pb::DealStatus::Conflicted as i32, "deal registered");
        Ok(deal)
    })
    .await
}

/// Approve, reject, win, lose and revoke: one command on the deal's registry.
async fn decide(
    svc: &CrmService,
    meta: &RequestMeta,
    fingerprint: [u8; 32],
    deal_id: Uuid,
    command: DealCommand,
) -> Result<pb::Deal, ApiError> {
    svc.once(meta, fingerprint, || async {
        let stream = registry_of(svc, deal_id).await?;
        let done = svc
            .exec::<Registry>(&stream, &command, &meta.command_meta(), deal_id)
            .await?;
        view(svc, &done.state, done.version, deal_id)
    })
    .await
}

pub(super) async fn approve(
    svc: &CrmService,
    req: pb::ApproveDealRequest,
) -> Result<pb::Deal, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let deal_id = parse::uuid(&mut v, "deal_id", &req.deal_id);
    v.finish()?;
    all!(meta, deal_id);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = DealCommand::Approve {
        deal_id,
        at: meta.occurred_at,
    };
    decide(svc, &meta, fingerprint, deal_id, command).await
}

macro_rules! with_reason {
    ($name:ident, $req:ty, $variant:ident) => {
        pub(super) async fn $name(svc: &CrmService, req: $req) -> Result<pb::Deal, ApiError> {
            let mut v = Violations::new();
            let meta = svc.meta(req.context.as_ref(), &mut v);
            let deal_id = parse::uuid(&mut v, "deal_id", &req.deal_id);
            let reason = parse::reason(&mut v, "reason", &req.reason);
            v.finish()?;
            all!(meta, deal_id, reason);
            let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
            let command = DealCommand::$variant {
                deal_id,
                reason,
                at: meta.occurred_at,
            };
            decide(svc, &meta, fingerprint, deal_id, command).await
        }
    };
}

with_reason!(reject, pb::RejectDealRequest, Reject);
with_reason!(lose, pb::LoseDealRequest, Lose);
with_reason!(revoke, pb::RevokeDealRequest, Revoke);

pub(super) async fn win(svc: &CrmService, req: pb::WinDealRequest) -> Result<pb::Deal, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let deal_id = parse::uuid(&mut v, "deal_id", &req.deal_id);
    let customer_id = parse::text(&mut v, "customer_id", &req.customer_id, parse::MAX_ID_CHARS);
    v.finish()?;
    all!(meta, deal_id, customer_id);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = DealCommand::Win {
        deal_id,
        customer_id,
        at: meta.occurred_at,
    };
    decide(svc, &meta, fingerprint, deal_id, command).await
}

pub(super) async fn get(svc: &CrmService, req: pb::GetDealRequest) -> Result<pb::Deal, ApiError> {
    let mut v = Violations::new();
    let deal_id = parse::uuid(&mut v, "deal_id", &req.deal_id);
    v.finish()?;
    let deal_id = deal_id.ok_or_else(|| ApiError::internal("validated id missing"))?;
    let stream = registry_of(svc, deal_id).await?;
    let (reg, version) = svc.load::<Registry>(&stream).await?;
    view(svc, &reg, version, deal_id)
}

fn status_filter(v: &mut Violations, value: i32) -> Option<Option<pb::DealStatus>> {
    match pb::DealStatus::try_from(value) {
        Ok(pb::DealStatus::Unspecified) => Some(None),
        Ok(s) => Some(Some(s)),
        Err(_) => {
            v.add("status", "not a deal status");
            None
        }
    }
}

pub(super) async fn list(
    svc: &CrmService,
    req: pb::ListDealsRequest,
) -> Result<pb::ListDealsResponse, ApiError> {
    let mut v = Violations::new();
    let (offset, limit) = parse::page(&mut v, "page", req.page.as_ref());
    let program = parse::opt_uuid(&mut v, "program_id", &req.program_id);
    let partner = parse::opt_uuid(&mut v, "partner_id", &req.partner_id);
    let status = status_filter(&mut v, req.status);
    let domain = if req.customer_domain.is_empty() {
        Some(None)
    } else {
        v.check(parse::domain("customer_domain", &req.customer_domain))
            .map(Some)
    };
    v.finish()?;
    all!(program, partner, status, domain);
    let now = svc.now();
    let m = svc.model().await?;
    let (deals, next_page_token) = crate::read::page(
        m.deals.values().flat_map(|e| {
            e.state.deals.iter().filter_map(|d| {
                let r = &d.registered;
                let keep = program.is_none_or(|x| r.program_id == x)
                    && partner.is_none_or(|x| r.partner_id == x)
                    && domain.as_deref().is_none_or(|x| r.customer_domain == x)
                    && status.is_none_or(|s| views::deal_status(d, now) == s);
                keep.then(|| views::deal(d, Some(e.version), now))
            })
        }),
        offset,
        limit,
    );
    Ok(pb::ListDealsResponse {
        deals,
        next_page_token,
    })
}
