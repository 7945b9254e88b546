//! Programs and tiers over gRPC: validate, run the program decider once per key, answer with
//! the program's view. Never changes whether a program is regulated after its creation.

use std::collections::BTreeSet;

use pl_proto::crm::v1 as pb;
use pl_runtime::{idempotency, ApiError, Violations};

use super::{all, parse, views, CrmService};
use crate::program::{
    self, Access, Definition, Program, ProgramCommand, Settings, Tier, MAX_LEVELS, MAX_TIERS,
};
use crate::streams;

fn settings(v: &mut Violations, field: &str, s: Option<&pb::ProgramSettings>) -> Option<Settings> {
    let Some(s) = s else {
        return Some(Settings::default());
    };
    let max_levels = match s.max_levels {
        0 => Some(1),
        n if n <= u32::from(MAX_LEVELS) => u8::try_from(n).ok(),
        _ => {
            v.add(format!("{field}.max_levels"), format!("1 to {MAX_LEVELS}"));
            None
        }
    };
    let days = match s.deal_registration_days {
        0 => Some(program::DEFAULT_DEAL_REGISTRATION_DAYS),
        n if n <= program::MAX_DEAL_REGISTRATION_DAYS => Some(n),
        _ => {
            v.add(
                format!("{field}.deal_registration_days"),
                format!("1 to {}", program::MAX_DEAL_REGISTRATION_DAYS),
            );
            None
        }
    };
    Some(Settings {
        auto_approve: s.auto_approve,
        max_levels: max_levels?,
        deal_registration_days: days?,
    })
}

fn tier(v: &mut Violations, field: &str, t: Option<&pb::Tier>) -> Option<Tier> {
    let Some(t) = t else {
        v.add(field, "required");
        return None;
    };
    let code = v.check(parse::tier_code(&format!("{field}.code"), &t.code));
    let name = parse::text(v, &format!("{field}.name"), &t.name, parse::MAX_NAME_CHARS);
    let access = t.access.clone().unwrap_or_default();
    if access.plan_ids.len() > parse::MAX_PLAN_IDS {
        v.add(
            format!("{field}.access.plan_ids"),
            format!("at most {}", parse::MAX_PLAN_IDS),
        );
    }
    let mut plan_ids = Vec::new();
    let mut plans_ok = true;
    for (i, p) in access.plan_ids.iter().take(parse::MAX_PLAN_IDS).enumerate() {
        match parse::uuid(v, &format!("{field}.access.plan_ids[{i}]"), p) {
            Some(id) if !plan_ids.contains(&id) => plan_ids.push(id),
            Some(_) => {}
            None => plans_ok = false,
        }
    }
    if !plans_ok {
        return None;
    }
    Some(Tier {
        code: code?,
        name: name?,
        rank: t.rank,
        access: Access {
            plan_ids,
            mdf: access.mdf,
            deal_registration: access.deal_registration,
        },
    })
}

pub(super) async fn create(
    svc: &CrmService,
    req: pb::CreateProgramRequest,
) -> Result<pb::Program, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let program_id = parse::uuid(&mut v, "program_id", &req.program_id);
    let name = parse::text(&mut v, "name", &req.name, parse::MAX_NAME_CHARS);
    let vertical = if req.vertical.is_empty() {
        Some(None)
    } else {
        v.check(parse::label("vertical", &req.vertical)).map(Some)
    };
    let mut jurisdictions = BTreeSet::new();
    if req.regulated && req.jurisdictions.is_empty() {
        v.add(
            "jurisdictions",
            "required: a regulated program lists its jurisdictions",
        );
    }
    if !req.regulated && !req.jurisdictions.is_empty() {
        v.add(
            "jurisdictions",
            "only a regulated program has jurisdictions",
        );
    }
    if req.jurisdictions.len() > parse::MAX_JURISDICTIONS {
        v.add(
            "jurisdictions",
            format!("at most {}", parse::MAX_JURISDICTIONS),
        );
    }
    for (i, j) in req
        .jurisdictions
        .iter()
        .take(parse::MAX_JURISDICTIONS)
        .enumerate()
    {
        if let Some(j) = v.check(parse::jurisdiction(&format!("jurisdictions[{i}]"), j)) {
            jurisdictions.insert(j);
        }
    }
    let settings = settings(&mut v, "settings", req.settings.as_ref());
    if req.tiers.len() > MAX_TIERS {
        v.add("tiers", format!("at most {MAX_TIERS}"));
    }
    let mut tiers = Vec::new();
    let mut tiers_ok = true;
    for (i, t) in req.tiers.iter().take(MAX_TIERS).enumerate() {
        let field = format!("tiers[{i}]");
        match tier(&mut v, &field, Some(t)) {
            Some(t) if tiers.iter().any(|x: &Tier| x.code == t.code) => {
                v.add(format!("{field}.code"), "tier codes must differ");
            }
            Some(t) if tiers.iter().any(|x: &Tier| x.rank == t.rank) => {
                v.add(format!("{field}.rank"), "tier ranks must differ");
            }
            Some(t) => tiers.push(t),
            None => tiers_ok = false,
        }
    }
    v.finish()?;
    all!(meta, program_id, name, vertical, settings);
    if !tiers_ok {
        return Err(ApiError::internal("validated tiers missing"));
    }
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = ProgramCommand::Create(Definition {
        program_id,
        name,
        vertical,
        jurisdictions: jurisdictions.into_iter().collect(),
        settings,
        tiers,
        created_at: meta.occurred_at,
    });
    svc.once(&meta, fingerprint, || async {
        let done = svc
            .exec::<Program>(
                &streams::program(program_id),
                &command,
                &meta.command_meta(),
                program_id,
            )
            .await?;
        tracing::info!(%program_id, "program created");
        views::program(&done.state, done.version)
            .ok_or_else(|| ApiError::internal("program missing after create"))
    })
    .await
}

pub(super) async fn update_settings(
    svc: &CrmService,
    req: pb::UpdateProgramSettingsRequest,
) -> Result<pb::Program, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let program_id = parse::uuid(&mut v, "program_id", &req.program_id);
    if req.settings.is_none() {
        v.add("settings", "required");
    }
    let settings = settings(&mut v, "settings", req.settings.as_ref());
    v.finish()?;
    all!(meta, program_id, settings);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = ProgramCommand::ChangeSettings {
        settings,
        at: meta.occurred_at,
    };
    svc.once(&meta, fingerprint, || async {
        let done = svc
            .exec::<Program>(
                &streams::program(program_id),
                &command,
                &meta.command_meta(),
                program_id,
            )
            .await?;
        views::program(&done.state, done.version)
            .ok_or_else(|| ApiError::internal("program missing after update"))
    })
    .await
}

pub(super) async fn define_tier(
    svc: &CrmService,
    req: pb::DefineTierRequest,
) -> Result<pb::Program, ApiError> {
    let mut v = Violations::new();
    let meta = svc.meta(req.context.as_ref(), &mut v);
    let program_id = parse::uuid(&mut v, "program_id", &req.program_id);
    let tier = tier(&mut v, "tier", req.tier.as_ref());
    v.finish()?;
    all!(meta, program_id, tier);
    let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
    let command = ProgramCommand::DefineTier {
        tier,
        at: meta.occurred_at,
    };
    svc.once(&meta, fingerprint, || async {
        let done = svc
            .exec::<Program>(
                &streams::program(program_id),
                &command,
                &meta.command_meta(),
                program_id,
            )
            .await?;
        views::program(&done.state, done.version)
            .ok_or_else(|| ApiError::internal("program missing after tier"))
    })
    .await
}

pub(super) async fn get(
    svc: &CrmService,
    req: pb::GetProgramRequest,
) -> Result<pb::Program, ApiError> {
    let mut v = Violations::new();
    let program_id = parse::uuid(&mut v, "program_id", &req.program_id);
    v.finish()?;
    let program_id = program_id.ok_or_else(|| ApiError::internal("validated id missing"))?;
    let (p, version) = svc.load::<Program>(&streams::program(program_id)).await?;
    views::program(&p, version).ok_or(ApiError::NotFound {
        what: "program",
        id: program_id.to_string(),
    })
}

pub(super) async fn list(
    svc: &CrmService,
    req: pb::ListProgramsRequest,
) -> Result<pb::ListProgramsResponse, ApiError> {
    let mut v = Violations::new();
    let (offset, limit) = parse::page(&mut v, "page", req.page.as_ref());
    v.finish()?;
    let m = svc.model().await?;
    let (programs, next_page_token) = crate::read::page(
        m.programs
            .values()
            .filter_map(|e| views::program(&e.state, Some(e.version))),
        offset,
        limit,
    );
    Ok(pb::ListProgramsResponse {
        programs,
        next_page_token,
    })
}
