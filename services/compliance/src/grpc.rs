//! The gRPC face of compliance: validate every field (all violations at once, nothing appended
//! on bad input), read the clock only at the edge (a request's default business time), run each
//! mutating request once per idempotency key, and answer from the partner's file. It never
//! decides anything itself: `service` and the deciders do.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use pl_eventlog::SharedStore;
use pl_money::Decimal;
use pl_proto::common::v1 as common;
use pl_proto::compliance::v1 as pb;
use pl_proto::compliance::v1::compliance_service_server::{
    ComplianceService as ComplianceApi, ComplianceServiceServer,
};
use pl_runtime::request::{parse_text, parse_uuid, to_datetime, to_timestamp};
use pl_runtime::{
    idempotency, ApiError, Clock, CommandMeta, FieldViolation, RequestMeta, Violations,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::partner::{
    Action, ApprovalState, FlagState, HoldState, PartnerCommand, PartnerError, PartnerEvent,
    PartnerFile, ReviewOutcome, ScreeningState, FLAG_HOLD_PREFIX,
};
use crate::program::{Configured, Settings};
use crate::rules::{FraudRules, Outcome, RuleSetting};
use crate::sanctions::SanctionsList;
use crate::service::{Compliance, ServiceError};
use crate::verification::{
    self, is_jurisdiction, Verification, VerificationError, VerificationKind, VerificationStatus,
};
use crate::{streams, SERVICE};

const MAX_TEXT_CHARS: usize = 200;
const MAX_REASON_CHARS: usize = 1000;
const MAX_HOLD_ID_CHARS: usize = 128;
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;
pub const MAX_REASSESS_PARTNERS: usize = 500;

#[derive(Debug, Clone)]
pub struct ComplianceService {
    compliance: Compliance,
    clock: Arc<dyn Clock>,
    /// The sanctions list file `ReloadSanctionsList` reads; `None`: reloading is refused.
    sanctions_path: Option<std::path::PathBuf>,
}

pub const SERVICE_NAME: &str =
    <ComplianceServiceServer<ComplianceService> as tonic::server::NamedService>::NAME;

impl ComplianceService {
    /// Without a sanctions list (screening is refused until one is configured).
    pub fn new(store: SharedStore, clock: Arc<dyn Clock>) -> Self {
        Self::with_sanctions(store, clock, None)
    }

    pub fn with_sanctions(
        store: SharedStore,
        clock: Arc<dyn Clock>,
        sanctions: Option<Arc<SanctionsList>>,
    ) -> Self {
        Self {
            compliance: Compliance::new(store, sanctions),
            clock,
            sanctions_path: None,
        }
    }

    /// The file `ReloadSanctionsList` reads the list from again.
    pub fn with_sanctions_path(mut self, path: std::path::PathBuf) -> Self {
        self.sanctions_path = Some(path);
        self
    }

    /// The application services, shared with the bus consumer (same caches).
    pub fn compliance(&self) -> Compliance {
        self.compliance.clone()
    }

    pub fn into_server(self, max_request_bytes: usize) -> ComplianceServiceServer<Self> {
        ComplianceServiceServer::new(self).max_decoding_message_size(max_request_bytes)
    }

    fn meta(
        &self,
        ctx: Option<&common::RequestContext>,
        v: &mut Violations,
    ) -> Option<RequestMeta> {
        let trace = pl_telemetry::inject(&tracing::Span::current());
        RequestMeta::parse(SERVICE, ctx, self.clock.as_ref(), trace, v)
    }
}

// ----- errors and validation helpers -----------------------------------------------------------

fn to_api(e: ServiceError) -> ApiError {
    match e {
        ServiceError::Partner(e) => match &e {
            PartnerError::UnknownScreening(id) => ApiError::NotFound {
                what: "sanctions screening",
                id: id.to_string(),
            },
            PartnerError::UnknownFlag(id) => ApiError::NotFound {
                what: "flag",
                id: id.to_string(),
            },
            PartnerError::Full { .. } => ApiError::Exhausted {
                what: e.to_string(),
            },
            PartnerError::WrongPartner { .. } => ApiError::internal(e),
            PartnerError::HoldInPlace(_)
            | PartnerError::HoldNotInPlace(_)
            | PartnerError::FlagHold(_)
            | PartnerError::NotRegulated(_)
            | PartnerError::MissingLicences(_)
            | PartnerError::SanctionsOpen(_)
            | PartnerError::AlreadyApproved(_)
            | PartnerError::NotApproved(_)
            | PartnerError::NothingToReview(_)
            | PartnerError::AlreadyReviewed(_)
            | PartnerError::AlreadyCleared(_) => ApiError::rule(e.to_string()),
        },
        ServiceError::Program(crate::program::ProgramError::Invalid(problems)) => {
            ApiError::InvalidArgument(
                problems
                    .into_iter()
                    .map(|(f, d)| FieldViolation::new(f, d))
                    .collect(),
            )
        }
        ServiceError::Conversion(e) => ApiError::internal(e),
        ServiceError::Rule(reason) => ApiError::rule(reason),
        ServiceError::Conflict(stream) => ApiError::Conflict { stream },
        ServiceError::Decode(d) => ApiError::internal(d),
        ServiceError::Store(e) => e.into(),
    }
}

/// A value every validated field has: missing only through a bug.
fn need<T>(x: Option<T>) -> Result<T, ApiError> {
    x.ok_or_else(|| ApiError::internal("validated field missing"))
}

fn required_time(
    v: &mut Violations,
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Option<DateTime<Utc>> {
    match ts {
        Some(ts) => v.check(to_datetime(field, ts)),
        None => {
            v.add(field, "required");
            None
        }
    }
}

fn optional_time(
    v: &mut Violations,
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Option<Option<DateTime<Utc>>> {
    match ts {
        Some(ts) => v.check(to_datetime(field, ts)).map(Some),
        None => Some(None),
    }
}

/// Hold ids: caller-chosen, `[A-Za-z0-9._:-]`, not in the namespace of flag holds.
fn hold_id(field: &str, value: &str, manual: bool) -> Result<String, FieldViolation> {
    if value.is_empty() || value.len() > MAX_HOLD_ID_CHARS {
        return Err(FieldViolation::new(
            field,
            format!("required: 1 to {MAX_HOLD_ID_CHARS} characters"),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(FieldViolation::new(
            field,
            "only [A-Za-z0-9._:-] are allowed",
        ));
    }
    if manual && value.starts_with(crate::service::REQUIREMENT_HOLD_PREFIX) {
        return Err(FieldViolation::new(
            field,
            format!(
                "ids starting with {:?} are reserved for programs' required agreements",
                crate::service::REQUIREMENT_HOLD_PREFIX
            ),
        ));
    }
    if manual && value.starts_with(FLAG_HOLD_PREFIX) {
        return Err(FieldViolation::new(
            field,
            format!("ids starting with {FLAG_HOLD_PREFIX:?} are reserved for fraud flags"),
        ));
    }
    Ok(value.to_owned())
}

fn page_of(v: &mut Violations, page: Option<&common::PageRequest>) -> (usize, usize) {
    pl_runtime::request::page(
        v,
        "page",
        page,
        pl_runtime::request::PageBounds {
            default_size: DEFAULT_PAGE_SIZE,
            max_size: MAX_PAGE_SIZE,
        },
    )
}

/// Items `offset..` of `items` (indexes into the full list are the page tokens, stable since
/// the file only grows), keeping those `keep` accepts, at most `size`.
fn page<T, R>(
    items: &[T],
    offset: usize,
    size: usize,
    keep: impl Fn(&T) -> bool,
    view: impl Fn(usize, &T) -> R,
) -> (Vec<R>, String) {
    let mut out = Vec::new();
    let mut next = String::new();
    for (i, item) in items.iter().enumerate().skip(offset) {
        if !keep(item) {
            continue;
        }
        if out.len() == size {
            next = i.to_string();
            break;
        }
        out.push(view(i, item));
    }
    (out, next)
}

fn kind(field: &str, value: i32) -> Result<VerificationKind, FieldViolation> {
    use pb::VerificationKind as K;
    match K::try_from(value) {
        Ok(K::Kyc) => Ok(VerificationKind::Kyc),
        Ok(K::Kyb) => Ok(VerificationKind::Kyb),
        Ok(K::TaxFormW9) => Ok(VerificationKind::TaxFormW9),
        Ok(K::TaxFormW8ben) => Ok(VerificationKind::TaxFormW8ben),
        Ok(K::Licence) => Ok(VerificationKind::Licence),
        Ok(K::DataSharingAgreement) => Ok(VerificationKind::DataSharingAgreement),
        Ok(K::DisclosureAcknowledgement) => Ok(VerificationKind::DisclosureAcknowledgement),
        Ok(K::Unspecified) | Err(_) => Err(FieldViolation::new(
            field,
            "required: one of the verification kinds",
        )),
    }
}

fn status(field: &str, value: i32) -> Result<VerificationStatus, FieldViolation> {
    use pb::VerificationStatus as S;
    match S::try_from(value) {
        Ok(S::Verified) => Ok(VerificationStatus::Verified),
        Ok(S::Rejected) => Ok(VerificationStatus::Rejected),
        Ok(S::Pending) => Ok(VerificationStatus::Pending),
        Ok(S::Unspecified) | Err(_) => Err(FieldViolation::new(
            field,
            "required: verified, rejected or pending",
        )),
    }
}

fn verification_field(e: &VerificationError) -> &'static str {
    match e {
        VerificationError::ExpiresBeforeRecorded { .. }
        | VerificationError::W8benTooLong { .. } => "valid_until",
        VerificationError::LicenceWithoutJurisdiction
        | VerificationError::JurisdictionOnNonLicence => "jurisdiction",
        VerificationError::SignedAtOnNonTaxForm | VerificationError::SignedAfterRecorded { .. } => {
            "signed_at"
        }
    }
}

fn outcome_of(field: &str, value: i32, v: &mut Violations) -> Option<Outcome> {
    match pb::Outcome::try_from(value) {
        Ok(pb::Outcome::Review) => Some(Outcome::Review),
        Ok(pb::Outcome::Hold) => Some(Outcome::Hold),
        Ok(pb::Outcome::Reject) => Some(Outcome::Reject),
        Ok(pb::Outcome::Unspecified) | Err(_) => {
            v.add(field, "required: review, hold or reject");
            None
        }
    }
}

fn outcome_pb(o: Outcome) -> pb::Outcome {
    match o {
        Outcome::Review => pb::Outcome::Review,
        Outcome::Hold => pb::Outcome::Hold,
        Outcome::Reject => pb::Outcome::Reject,
    }
}

fn setting_of(field: &str, s: Option<&pb::RuleSetting>, v: &mut Violations) -> Option<RuleSetting> {
    let Some(s) = s else {
        v.add(field, "required");
        return None;
    };
    let outcome = outcome_of(&format!("{field}.outcome"), s.outcome, v)?;
    Some(RuleSetting {
        enabled: s.enabled,
        outcome,
    })
}

fn setting_pb(s: RuleSetting) -> pb::RuleSetting {
    pb::RuleSetting {
        enabled: s.enabled,
        outcome: outcome_pb(s.outcome).into(),
    }
}

fn rules_of(r: &pb::FraudRules, v: &mut Violations) -> Option<FraudRules> {
    let f = |name: &str| format!("rules.{name}");
    let self_referral = setting_of(&f("self_referral"), r.self_referral.as_ref(), v);
    let click_to_conversion =
        setting_of(&f("click_to_conversion"), r.click_to_conversion.as_ref(), v);
    let click_velocity = setting_of(&f("click_velocity"), r.click_velocity.as_ref(), v);
    let duplicate_accounts = setting_of(&f("duplicate_accounts"), r.duplicate_accounts.as_ref(), v);
    let refund_rate = setting_of(&f("refund_rate"), r.refund_rate.as_ref(), v);
    let unlicensed_jurisdiction = setting_of(
        &f("unlicensed_jurisdiction"),
        r.unlicensed_jurisdiction.as_ref(),
        v,
    );
    let max_refund_rate = match Decimal::from_str_exact(&r.max_refund_rate) {
        Ok(d) => Some(d),
        Err(_) => {
            v.add(
                f("max_refund_rate"),
                "a decimal string in [0, 1], e.g. \"0.25\"",
            );
            None
        }
    };
    Some(FraudRules {
        self_referral: self_referral?,
        ignored_email_domains: r.ignored_email_domains.clone(),
        click_to_conversion: click_to_conversion?,
        min_click_to_conversion_seconds: r.min_click_to_conversion_seconds,
        click_velocity: click_velocity?,
        max_clicks_per_ip: r.max_clicks_per_ip,
        velocity_window_seconds: r.velocity_window_seconds,
        duplicate_accounts: duplicate_accounts?,
        max_accounts_per_identifier: r.max_accounts_per_identifier,
        refund_rate: refund_rate?,
        max_refund_rate: max_refund_rate?,
        refund_window_days: r.refund_window_days,
        min_conversions: r.min_conversions,
        unlicensed_jurisdiction: unlicensed_jurisdiction?,
    })
}

fn rules_pb(r: &FraudRules) -> pb::FraudRules {
    pb::FraudRules {
        self_referral: Some(setting_pb(r.self_referral)),
        ignored_email_domains: r.ignored_email_domains.clone(),
        click_to_conversion: Some(setting_pb(r.click_to_conversion)),
        min_click_to_conversion_seconds: r.min_click_to_conversion_seconds,
        click_velocity: Some(setting_pb(r.click_velocity)),
        max_clicks_per_ip: r.max_clicks_per_ip,
        velocity_window_seconds: r.velocity_window_seconds,
        duplicate_accounts: Some(setting_pb(r.duplicate_accounts)),
        max_accounts_per_identifier: r.max_accounts_per_identifier,
        refund_rate: Some(setting_pb(r.refund_rate)),
        max_refund_rate: r.max_refund_rate.to_string(),
        refund_window_days: r.refund_window_days,
        min_conversions: r.min_conversions,
        unlicensed_jurisdiction: Some(setting_pb(r.unlicensed_jurisdiction)),
    }
}

// ----- views ----------------------------------------------------------------------------------

fn kind_pb(kind: VerificationKind) -> pb::VerificationKind {
    match kind {
        VerificationKind::Kyc => pb::VerificationKind::Kyc,
        VerificationKind::Kyb => pb::VerificationKind::Kyb,
        VerificationKind::TaxFormW9 => pb::VerificationKind::TaxFormW9,
        VerificationKind::TaxFormW8ben => pb::VerificationKind::TaxFormW8ben,
        VerificationKind::Licence => pb::VerificationKind::Licence,
        VerificationKind::DataSharingAgreement => pb::VerificationKind::DataSharingAgreement,
        VerificationKind::DisclosureAcknowledgement => {
            pb::VerificationKind::DisclosureAcknowledgement
        }
    }
}

fn verification_view(v: &Verification, index: usize) -> pb::Verification {
    let kind = kind_pb(v.kind);
    let status = match v.status {
        VerificationStatus::Verified => pb::VerificationStatus::Verified,
        VerificationStatus::Rejected => pb::VerificationStatus::Rejected,
        VerificationStatus::Pending => pb::VerificationStatus::Pending,
    };
    pb::Verification {
        partner_id: v.partner_id.to_string(),
        kind: kind.into(),
        status: status.into(),
        reference: v.reference.clone(),
        recorded_by: v.recorded_by.clone(),
        occurred_at: Some(to_timestamp(v.occurred_at)),
        valid_until: v.valid_until.map(to_timestamp),
        version: index as u64,
        jurisdiction: v.jurisdiction.clone().unwrap_or_default(),
        signed_at: v.signed_at.map(to_timestamp),
    }
}

fn eligibility_view(
    f: &PartnerFile,
    partner_id: Uuid,
    as_of: DateTime<Utc>,
) -> pb::PayoutEligibility {
    let blockers: Vec<pb::Blocker> = f
        .standing
        .blockers(as_of)
        .iter()
        .map(|b| {
            let v = b.view();
            pb::Blocker {
                code: v.code,
                detail: v.detail,
                reference: v.reference,
            }
        })
        .collect();
    pb::PayoutEligibility {
        partner_id: partner_id.to_string(),
        as_of: Some(to_timestamp(as_of)),
        eligible: blockers.is_empty(),
        blockers,
        next_expiry: f.standing.next_expiry(as_of).map(to_timestamp),
    }
}

fn hold_view(partner_id: Uuid, hold_id: &str, h: &HoldState) -> pb::PayoutHold {
    pb::PayoutHold {
        partner_id: partner_id.to_string(),
        hold_id: hold_id.to_owned(),
        in_place: h.in_place,
        reason: h.reason.clone(),
        by: h.by.clone(),
        occurred_at: Some(to_timestamp(h.occurred_at)),
        flag_id: h.flag_id.map(|id| id.to_string()).unwrap_or_default(),
    }
}

fn approval_view(partner_id: Uuid, program_id: Uuid, a: &ApprovalState) -> pb::ComplianceApproval {
    pb::ComplianceApproval {
        partner_id: partner_id.to_string(),
        program_id: program_id.to_string(),
        approved: a.approved,
        jurisdictions: a.jurisdictions.clone(),
        reference: a.reference.clone(),
        reason: a.reason.clone(),
        by: a.by.clone(),
        occurred_at: Some(to_timestamp(a.occurred_at)),
    }
}

fn screening_view(s: &ScreeningState) -> pb::SanctionsScreening {
    let sc = &s.screening;
    pb::SanctionsScreening {
        screening_id: sc.screening_id.to_string(),
        partner_id: sc.partner_id.to_string(),
        name: sc.name.clone(),
        list_sha256: sc.list_sha256.clone(),
        list_entries: sc.list_entries,
        matches: sc
            .matches
            .iter()
            .map(|m| pb::SanctionsMatch {
                entry_id: m.entry_id.clone(),
                listed_name: m.listed_name.clone(),
                kind: match m.kind {
                    crate::partner::MatchKind::Exact => "exact".into(),
                    crate::partner::MatchKind::Partial => "partial".into(),
                },
            })
            .collect(),
        screened_by: sc.screened_by.clone(),
        occurred_at: Some(to_timestamp(sc.occurred_at)),
        status: s.status().to_owned(),
        reviewer: s
            .review
            .as_ref()
            .map(|r| r.reviewer.clone())
            .unwrap_or_default(),
        review_reason: s
            .review
            .as_ref()
            .map(|r| r.reason.clone())
            .unwrap_or_default(),
        reviewed_at: s.review.as_ref().map(|r| to_timestamp(r.occurred_at)),
    }
}

fn flag_view(f: &FlagState) -> pb::Flag {
    let r = &f.raised;
    pb::Flag {
        flag_id: r.flag_id.to_string(),
        partner_id: r.partner_id.to_string(),
        program_id: r.program_id.to_string(),
        conversion_id: r.conversion_id.map(|c| c.to_string()).unwrap_or_default(),
        rule: r.rule.as_str().to_owned(),
        evidence: r.evidence.clone().into_iter().collect(),
        summary: r.summary.clone(),
        outcome: outcome_pb(r.outcome).into(),
        occurred_at: Some(to_timestamp(r.occurred_at)),
        cleared: f.cleared.is_some(),
        cleared_by: f
            .cleared
            .as_ref()
            .map(|c| c.cleared_by.clone())
            .unwrap_or_default(),
        clear_reason: f
            .cleared
            .as_ref()
            .map(|c| c.reason.clone())
            .unwrap_or_default(),
        cleared_at: f.cleared.as_ref().map(|c| to_timestamp(c.occurred_at)),
    }
}

fn program_view(program_id: Uuid, s: &Settings, version: u64) -> pb::Program {
    pb::Program {
        program_id: program_id.to_string(),
        regulated: s.regulated,
        jurisdictions: s.jurisdictions.clone(),
        rules: Some(rules_pb(&s.rules)),
        settings_version: version,
        required_verifications: s
            .required_verifications
            .iter()
            .map(|k| kind_pb(*k) as i32)
            .collect(),
    }
}

/// Verifications a partner of this type should hold and does not hold valid at `at`.
fn outstanding(f: &PartnerFile, at: DateTime<Utc>) -> Vec<String> {
    let required = match f.profile.as_ref().and_then(|p| p.partner_type.as_deref()) {
        Some("technology") => Some(VerificationKind::DataSharingAgreement),
        Some("influencer") => Some(VerificationKind::DisclosureAcknowledgement),
        _ => None,
    };
    required
        .filter(|kind| !f.standing.holds_valid(*kind, at))
        .map(|k| vec![k.as_str().to_owned()])
        .unwrap_or_default()
}

fn fingerprint<M: prost::Message + Clone>(
    req: &M,
    ctx: impl FnOnce(&mut M) -> Option<&mut common::RequestContext>,
) -> [u8; 32] {
    idempotency::request_fingerprint(req, ctx)
}

fn per_partner(meta: &CommandMeta, partner_id: Uuid) -> CommandMeta {
    crate::service::step(meta, &partner_id.to_string())
}

// ----- the service ----------------------------------------------------------------------------

#[tonic::async_trait]
impl ComplianceApi for ComplianceService {
    async fn list_dead_letters(
        &self,
        request: Request<common::ListDeadLettersRequest>,
    ) -> Result<Response<common::ListDeadLettersResponse>, Status> {
        let store = self.compliance.store.as_ref();
        let listed = pl_runtime::dead_letters::list(store, SERVICE, request.get_ref()).await?;
        Ok(Response::new(listed))
    }

    #[tracing::instrument(skip_all, fields(letter_id = %request.get_ref().letter_id))]
    async fn retry_dead_letter(
        &self,
        request: Request<common::RetryDeadLetterRequest>,
    ) -> Result<Response<common::RetryDeadLetterResponse>, Status> {
        let compliance = &self.compliance;
        let retried = pl_runtime::dead_letters::retry_request(
            compliance.store.as_ref(),
            SERVICE,
            self.clock.as_ref(),
            pl_telemetry::inject(&tracing::Span::current()),
            request.get_ref(),
            |message| crate::consumer::handle(compliance, message),
        )
        .await?;
        Ok(Response::new(retried))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn record_verification(
        &self,
        request: Request<pb::RecordVerificationRequest>,
    ) -> Result<Response<pb::Verification>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let kind = v.check(kind("kind", req.kind));
        let status = v.check(status("status", req.status));
        let reference = v.check(parse_text("reference", &req.reference, MAX_TEXT_CHARS));
        let recorded_by = v.check(parse_text("recorded_by", &req.recorded_by, MAX_TEXT_CHARS));
        let valid_until = optional_time(&mut v, "valid_until", req.valid_until.as_ref());
        let signed_at = optional_time(&mut v, "signed_at", req.signed_at.as_ref());
        let jurisdiction = if req.jurisdiction.is_empty() {
            Some(None)
        } else if is_jurisdiction(&req.jurisdiction) {
            Some(Some(req.jurisdiction.clone()))
        } else {
            v.add(
                "jurisdiction",
                "an ISO 3166-1 alpha-2 or ISO 3166-2 code, e.g. MT or US-NJ",
            );
            None
        };
        v.finish()?;
        let meta = need(meta)?;
        let verification = verification::complete(Verification {
            partner_id: need(partner_id)?,
            kind: need(kind)?,
            status: need(status)?,
            reference: need(reference)?,
            recorded_by: need(recorded_by)?,
            occurred_at: meta.occurred_at,
            valid_until: need(valid_until)?,
            jurisdiction: need(jurisdiction)?,
            signed_at: need(signed_at)?,
        })
        .map_err(|e| ApiError::invalid(verification_field(&e), e.to_string()))?;
        let fp = fingerprint(&req, |r| r.context.as_mut());
        let c = &self.compliance;
        let response = idempotency::run_once(
            c.store.as_ref(),
            &meta.key,
            fp,
            meta.occurred_at,
            || async {
                let cmd = PartnerCommand {
                    partner_id: verification.partner_id,
                    at: meta.occurred_at,
                    action: Action::Record(verification.clone()),
                };
                let done = c.run(&cmd, &meta.command_meta()).await.map_err(to_api)?;
                // A required agreement now recorded (or revoked) lifts (or places) its hold.
                c.enforce_requirements(
                    verification.partner_id,
                    meta.occurred_at,
                    &crate::service::step(&meta.command_meta(), "requirements"),
                )
                .await
                .map_err(to_api)?;
                let recorded = done
                    .events
                    .iter()
                    .find_map(|e| match e {
                        PartnerEvent::VerificationRecorded(v) => Some(v),
                        _ => None,
                    })
                    .ok_or_else(|| ApiError::internal("verification missing"))?;
                let verifications = &done.state.standing.verifications;
                let index = verifications
                    .iter()
                    .rposition(|x| x == recorded)
                    .ok_or_else(|| ApiError::internal("verification missing"))?;
                Ok(verification_view(recorded, index))
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn list_verifications(
        &self,
        request: Request<pb::ListVerificationsRequest>,
    ) -> Result<Response<pb::ListVerificationsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let (offset, size) = page_of(&mut v, req.page.as_ref());
        v.finish()?;
        let partner_id = need(partner_id)?;
        let ((verifications, next_page_token), _) = self
            .compliance
            .partner(partner_id, |f| {
                page(
                    &f.standing.verifications,
                    offset,
                    size,
                    |_| true,
                    |i, x| verification_view(x, i),
                )
            })
            .await
            .map_err(to_api)?;
        Ok(Response::new(pb::ListVerificationsResponse {
            verifications,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn get_payout_eligibility(
        &self,
        request: Request<pb::GetPayoutEligibilityRequest>,
    ) -> Result<Response<pb::PayoutEligibility>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let as_of = required_time(&mut v, "as_of", req.as_of.as_ref());
        v.finish()?;
        let (partner_id, as_of) = (need(partner_id)?, need(as_of)?);
        let (view, _) = self
            .compliance
            .partner(partner_id, |f| eligibility_view(f, partner_id, as_of))
            .await
            .map_err(to_api)?;
        Ok(Response::new(view))
    }

    #[tracing::instrument(skip_all, fields(partners = request.get_ref().partner_ids.len()))]
    async fn reassess_partners(
        &self,
        request: Request<pb::ReassessPartnersRequest>,
    ) -> Result<Response<pb::ReassessPartnersResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let as_of = required_time(&mut v, "as_of", req.as_of.as_ref());
        if req.partner_ids.is_empty() || req.partner_ids.len() > MAX_REASSESS_PARTNERS {
            v.add(
                "partner_ids",
                format!("1 to {MAX_REASSESS_PARTNERS} partner ids"),
            );
        }
        let mut partners = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, id) in req
            .partner_ids
            .iter()
            .take(MAX_REASSESS_PARTNERS)
            .enumerate()
        {
            let field = format!("partner_ids[{i}]");
            if let Some(p) = v.check(parse_uuid(&field, id)) {
                if seen.insert(p) {
                    partners.push(p);
                } else {
                    v.add(field, "listed twice");
                }
            }
        }
        v.finish()?;
        let (meta, as_of) = (need(meta)?, need(as_of)?);
        let fp = fingerprint(&req, |r| r.context.as_mut());
        let c = &self.compliance;
        let response = idempotency::run_once(
            c.store.as_ref(),
            &meta.key,
            fp,
            meta.occurred_at,
            || async {
                let mut out = pb::ReassessPartnersResponse::default();
                for p in &partners {
                    let (known, _) = c
                        .partner(*p, |f| f.partner_id.is_some())
                        .await
                        .map_err(to_api)?;
                    if !known {
                        // Nothing on file: nothing to publish; the answer still lists the blockers.
                        out.eligibility
                            .push(eligibility_view(&PartnerFile::default(), *p, as_of));
                        continue;
                    }
                    let cmd = PartnerCommand {
                        partner_id: *p,
                        at: as_of,
                        action: Action::Reassess,
                    };
                    let done = c
                        .run(&cmd, &per_partner(&meta.command_meta(), *p))
                        .await
                        .map_err(to_api)?;
                    for e in &done.events {
                        match e {
                            PartnerEvent::PayoutEligibilityChanged(_) => out.changed += 1,
                            PartnerEvent::ComplianceApprovalRevoked(_) => {
                                out.approvals_revoked += 1
                            }
                            _ => {}
                        }
                    }
                    out.eligibility
                        .push(eligibility_view(&done.state, *p, as_of));
                }
                Ok(out)
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn place_payout_hold(
        &self,
        request: Request<pb::PlacePayoutHoldRequest>,
    ) -> Result<Response<pb::PayoutHold>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let hold = v.check(hold_id("hold_id", &req.hold_id, true));
        let reason = v.check(parse_text("reason", &req.reason, MAX_REASON_CHARS));
        let by = v.check(parse_text("placed_by", &req.placed_by, MAX_TEXT_CHARS));
        v.finish()?;
        let (meta, partner_id, hold) = (need(meta)?, need(partner_id)?, need(hold)?);
        let action = Action::PlaceHold {
            hold_id: hold.clone(),
            reason: need(reason)?,
            by: need(by)?,
        };
        self.hold_command(&req, |r| r.context.as_mut(), meta, partner_id, hold, action)
            .await
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn release_payout_hold(
        &self,
        request: Request<pb::ReleasePayoutHoldRequest>,
    ) -> Result<Response<pb::PayoutHold>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let hold = v.check(hold_id("hold_id", &req.hold_id, false));
        let reason = v.check(parse_text("reason", &req.reason, MAX_REASON_CHARS));
        let by = v.check(parse_text("released_by", &req.released_by, MAX_TEXT_CHARS));
        v.finish()?;
        let (meta, partner_id, hold) = (need(meta)?, need(partner_id)?, need(hold)?);
        let action = Action::ReleaseHold {
            hold_id: hold.clone(),
            reason: need(reason)?,
            by: need(by)?,
        };
        self.hold_command(&req, |r| r.context.as_mut(), meta, partner_id, hold, action)
            .await
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn configure_program(
        &self,
        request: Request<pb::ConfigureProgramRequest>,
    ) -> Result<Response<pb::Program>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let program_id = v.check(parse_uuid("program_id", &req.program_id));
        let by = v.check(parse_text(
            "configured_by",
            &req.configured_by,
            MAX_TEXT_CHARS,
        ));
        let rules = match &req.rules {
            Some(r) => rules_of(r, &mut v),
            None => Some(FraudRules::default()),
        };
        let required: Vec<VerificationKind> = req
            .required_verifications
            .iter()
            .enumerate()
            .filter_map(|(i, k)| v.check(kind(&format!("required_verifications[{i}]"), *k)))
            .collect();
        if let Some(rules) = rules.clone() {
            let settings = Settings {
                regulated: req.regulated,
                jurisdictions: req.jurisdictions.clone(),
                rules,
                required_verifications: required.clone(),
            };
            for (field, description) in settings.problems() {
                v.add(field, description);
            }
        }
        v.finish()?;
        let (meta, program_id) = (need(meta)?, need(program_id)?);
        let configured = Configured {
            program_id,
            settings: Settings {
                regulated: req.regulated,
                jurisdictions: req.jurisdictions.clone(),
                rules: need(rules)?,
                required_verifications: required,
            },
            configured_by: need(by)?,
            occurred_at: meta.occurred_at,
        };
        let fp = fingerprint(&req, |r| r.context.as_mut());
        let c = &self.compliance;
        let response = idempotency::run_once(
            c.store.as_ref(),
            &meta.key,
            fp,
            meta.occurred_at,
            || async {
                let (settings, version) = c
                    .configure_program(&configured, &meta.command_meta())
                    .await
                    .map_err(to_api)?;
                Ok(program_view(program_id, &settings, version))
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn get_program(
        &self,
        request: Request<pb::GetProgramRequest>,
    ) -> Result<Response<pb::Program>, Status> {
        let req = request.into_inner();
        let program_id = parse_uuid("program_id", &req.program_id)
            .map_err(|fv| ApiError::InvalidArgument(vec![fv]))?;
        let (settings, version) = self.compliance.program(program_id).await.map_err(to_api)?;
        Ok(Response::new(program_view(program_id, &settings, version)))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn grant_compliance_approval(
        &self,
        request: Request<pb::GrantComplianceApprovalRequest>,
    ) -> Result<Response<pb::ComplianceApproval>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let program_id = v.check(parse_uuid("program_id", &req.program_id));
        let reference = v.check(parse_text("reference", &req.reference, MAX_TEXT_CHARS));
        let by = v.check(parse_text("approved_by", &req.approved_by, MAX_TEXT_CHARS));
        v.finish()?;
        let (meta, partner_id, program_id) = (need(meta)?, need(partner_id)?, need(program_id)?);
        let (reference, by) = (need(reference)?, need(by)?);
        let fp = fingerprint(&req, |r| r.context.as_mut());
        let c = &self.compliance;
        let response = idempotency::run_once(
            c.store.as_ref(),
            &meta.key,
            fp,
            meta.occurred_at,
            || async {
                let (settings, _) = c.program(program_id).await.map_err(to_api)?;
                if !settings.regulated {
                    return Err(to_api(PartnerError::NotRegulated(program_id).into()));
                }
                let cmd = PartnerCommand {
                    partner_id,
                    at: meta.occurred_at,
                    action: Action::Grant {
                        program_id,
                        jurisdictions: settings.jurisdictions.clone(),
                        reference: reference.clone(),
                        by: by.clone(),
                    },
                };
                let done = c.run(&cmd, &meta.command_meta()).await.map_err(to_api)?;
                approval_of(&done.state, partner_id, program_id)
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn revoke_compliance_approval(
        &self,
        request: Request<pb::RevokeComplianceApprovalRequest>,
    ) -> Result<Response<pb::ComplianceApproval>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let program_id = v.check(parse_uuid("program_id", &req.program_id));
        let reason = v.check(parse_text("reason", &req.reason, MAX_REASON_CHARS));
        let by = v.check(parse_text("revoked_by", &req.revoked_by, MAX_TEXT_CHARS));
        v.finish()?;
        let (meta, partner_id, program_id) = (need(meta)?, need(partner_id)?, need(program_id)?);
        let cmd = PartnerCommand {
            partner_id,
            at: meta.occurred_at,
            action: Action::Revoke {
                program_id,
                reason: need(reason)?,
                by: need(by)?,
            },
        };
        let fp = fingerprint(&req, |r| r.context.as_mut());
        let c = &self.compliance;
        let response = idempotency::run_once(
            c.store.as_ref(),
            &meta.key,
            fp,
            meta.occurred_at,
            || async {
                let done = c.run(&cmd, &meta.command_meta()).await.map_err(to_api)?;
                approval_of(&done.state, partner_id, program_id)
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn reload_sanctions_list(
        &self,
        request: Request<pb::ReloadSanctionsListRequest>,
    ) -> Result<Response<pb::SanctionsListStatus>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let by = v.check(parse_text("loaded_by", &req.loaded_by, MAX_TEXT_CHARS));
        v.finish()?;
        let (meta, by) = (need(meta)?, need(by)?);
        let Some(path) = self.sanctions_path.clone() else {
            return Err(ApiError::rule(
                "no sanctions list file is configured: start the service with --sanctions-list \
                 (PL_SANCTIONS_LIST)",
            )
            .into());
        };
        let fp = fingerprint(&req, |r| r.context.as_mut());
        let c = &self.compliance;
        let response = idempotency::run_once(
            c.store.as_ref(),
            &meta.key,
            fp,
            meta.occurred_at,
            || async {
                // Up to 64 MiB read and parsed: off the async threads.
                let list = tokio::task::spawn_blocking(move || SanctionsList::load(&path))
                    .await
                    .map_err(ApiError::internal)?
                    .map_err(|e| ApiError::rule(format!("the sanctions list file: {e}")))?;
                let loaded = c
                    .load_list(list, &by, meta.occurred_at, &meta.command_meta())
                    .await
                    .map_err(to_api)?;
                Ok(pb::SanctionsListStatus {
                    list_sha256: loaded.sha256,
                    list_entries: loaded.entries,
                    changed: loaded.changed,
                    partners_screened: loaded.partners_screened,
                    matches_pending: loaded.matches_pending,
                })
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn screen_partner(
        &self,
        request: Request<pb::ScreenPartnerRequest>,
    ) -> Result<Response<pb::SanctionsScreening>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let name = if req.name.is_empty() {
            Some(None)
        } else {
            v.check(parse_text(
                "name",
                &req.name,
                crate::sanctions::MAX_NAME_CHARS,
            ))
            .map(Some)
        };
        let by = v.check(parse_text("screened_by", &req.screened_by, MAX_TEXT_CHARS));
        v.finish()?;
        let (meta, partner_id, name, by) = (need(meta)?, need(partner_id)?, need(name)?, need(by)?);
        let c = &self.compliance;
        if c.list().is_none() {
            return Err(ApiError::rule(
                "no sanctions list is loaded: start the service with --sanctions-list (PL_SANCTIONS_LIST)",
            )
            .into());
        }
        let fp = fingerprint(&req, |r| r.context.as_mut());
        let response = idempotency::run_once(
            c.store.as_ref(),
            &meta.key,
            fp,
            meta.occurred_at,
            || async {
                let name = match name {
                    Some(n) => n,
                    None => c
                        .partner(partner_id, |f| {
                            f.profile.as_ref().and_then(|p| p.display_name.clone())
                        })
                        .await
                        .map_err(to_api)?
                        .0
                        .ok_or_else(|| {
                            ApiError::rule(
                                "no name on file for the partner: pass the name to screen",
                            )
                        })?,
                };
                let screening_id = streams::screening_id(meta.key.id_seed());
                let screening = c
                    .screening(partner_id, screening_id, &name, &by, meta.occurred_at)
                    .ok_or_else(|| ApiError::rule("no sanctions list is loaded"))?;
                let cmd = PartnerCommand {
                    partner_id,
                    at: meta.occurred_at,
                    action: Action::Screen(screening),
                };
                let done = c.run(&cmd, &meta.command_meta()).await.map_err(to_api)?;
                screening_of(&done.state, screening_id)
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn review_sanctions_screening(
        &self,
        request: Request<pb::ReviewSanctionsScreeningRequest>,
    ) -> Result<Response<pb::SanctionsScreening>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let screening_id = v.check(parse_uuid("screening_id", &req.screening_id));
        let outcome = match pb::ReviewOutcome::try_from(req.outcome) {
            Ok(pb::ReviewOutcome::FalsePositive) => Some(ReviewOutcome::FalsePositive),
            Ok(pb::ReviewOutcome::ConfirmedMatch) => Some(ReviewOutcome::ConfirmedMatch),
            Ok(pb::ReviewOutcome::Unspecified) | Err(_) => {
                v.add("outcome", "required: false_positive or confirmed_match");
                None
            }
        };
        let reviewer = v.check(parse_text("reviewer", &req.reviewer, MAX_TEXT_CHARS));
        let reason = v.check(parse_text("reason", &req.reason, MAX_REASON_CHARS));
        v.finish()?;
        let (meta, partner_id, screening_id) =
            (need(meta)?, need(partner_id)?, need(screening_id)?);
        let cmd = PartnerCommand {
            partner_id,
            at: meta.occurred_at,
            action: Action::Review {
                screening_id,
                outcome: need(outcome)?,
                reviewer: need(reviewer)?,
                reason: need(reason)?,
            },
        };
        let fp = fingerprint(&req, |r| r.context.as_mut());
        let c = &self.compliance;
        let response = idempotency::run_once(
            c.store.as_ref(),
            &meta.key,
            fp,
            meta.occurred_at,
            || async {
                let done = c.run(&cmd, &meta.command_meta()).await.map_err(to_api)?;
                screening_of(&done.state, screening_id)
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn list_sanctions_screenings(
        &self,
        request: Request<pb::ListSanctionsScreeningsRequest>,
    ) -> Result<Response<pb::ListSanctionsScreeningsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let (offset, size) = page_of(&mut v, req.page.as_ref());
        v.finish()?;
        let ((screenings, next_page_token), _) = self
            .compliance
            .partner(need(partner_id)?, |f| {
                page(
                    &f.standing.screenings,
                    offset,
                    size,
                    |_| true,
                    |_, s| screening_view(s),
                )
            })
            .await
            .map_err(to_api)?;
        Ok(Response::new(pb::ListSanctionsScreeningsResponse {
            screenings,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn list_flags(
        &self,
        request: Request<pb::ListFlagsRequest>,
    ) -> Result<Response<pb::ListFlagsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let (offset, size) = page_of(&mut v, req.page.as_ref());
        v.finish()?;
        let open_only = req.open_only;
        let ((flags, next_page_token), _) = self
            .compliance
            .partner(need(partner_id)?, |f| {
                page(
                    &f.flags,
                    offset,
                    size,
                    |x| !open_only || x.cleared.is_none(),
                    |_, x| flag_view(x),
                )
            })
            .await
            .map_err(to_api)?;
        Ok(Response::new(pb::ListFlagsResponse {
            flags,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn clear_flag(
        &self,
        request: Request<pb::ClearFlagRequest>,
    ) -> Result<Response<pb::Flag>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let flag_id = v.check(parse_uuid("flag_id", &req.flag_id));
        let reason = v.check(parse_text("reason", &req.reason, MAX_REASON_CHARS));
        let by = v.check(parse_text("cleared_by", &req.cleared_by, MAX_TEXT_CHARS));
        v.finish()?;
        let (meta, partner_id, flag_id) = (need(meta)?, need(partner_id)?, need(flag_id)?);
        let cmd = PartnerCommand {
            partner_id,
            at: meta.occurred_at,
            action: Action::Clear {
                flag_id,
                reason: need(reason)?,
                by: need(by)?,
            },
        };
        let fp = fingerprint(&req, |r| r.context.as_mut());
        let c = &self.compliance;
        let response = idempotency::run_once(
            c.store.as_ref(),
            &meta.key,
            fp,
            meta.occurred_at,
            || async {
                let done = c.run(&cmd, &meta.command_meta()).await.map_err(to_api)?;
                done.state
                    .flag(flag_id)
                    .map(flag_view)
                    .ok_or_else(|| ApiError::internal("flag missing after clearing"))
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn get_partner_compliance(
        &self,
        request: Request<pb::GetPartnerComplianceRequest>,
    ) -> Result<Response<pb::PartnerCompliance>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let as_of = required_time(&mut v, "as_of", req.as_of.as_ref());
        v.finish()?;
        let (p, as_of) = (need(partner_id)?, need(as_of)?);
        let (view, _) = self
            .compliance
            .partner(p, |f| pb::PartnerCompliance {
                partner_id: p.to_string(),
                eligibility: Some(eligibility_view(f, p, as_of)),
                approvals: f
                    .standing
                    .approvals
                    .iter()
                    .map(|(program, a)| approval_view(p, *program, a))
                    .collect(),
                licensed_jurisdictions: f.standing.licensed(as_of),
                holds_in_place: f
                    .standing
                    .holds
                    .iter()
                    .filter(|(_, h)| h.in_place)
                    .map(|(id, h)| hold_view(p, id, h))
                    .collect(),
                open_flags: u32::try_from(f.open_flags()).unwrap_or(u32::MAX),
                sanctions_status: f
                    .standing
                    .screenings
                    .last()
                    .map_or("not_screened", ScreeningState::status)
                    .to_owned(),
                outstanding: outstanding(f, as_of),
                partner_type: f
                    .profile
                    .as_ref()
                    .and_then(|x| x.partner_type.clone())
                    .unwrap_or_default(),
            })
            .await
            .map_err(to_api)?;
        Ok(Response::new(view))
    }
}

fn approval_of(
    f: &PartnerFile,
    partner_id: Uuid,
    program_id: Uuid,
) -> Result<pb::ComplianceApproval, ApiError> {
    f.standing
        .approvals
        .get(&program_id)
        .map(|a| approval_view(partner_id, program_id, a))
        .ok_or_else(|| ApiError::internal("approval missing"))
}

fn screening_of(f: &PartnerFile, screening_id: Uuid) -> Result<pb::SanctionsScreening, ApiError> {
    f.standing
        .screenings
        .iter()
        .find(|s| s.screening.screening_id == screening_id)
        .map(screening_view)
        .ok_or_else(|| ApiError::internal("screening missing"))
}

impl ComplianceService {
    async fn hold_command<M: prost::Message + Clone + Default>(
        &self,
        req: &M,
        ctx: impl FnOnce(&mut M) -> Option<&mut common::RequestContext>,
        meta: RequestMeta,
        partner_id: Uuid,
        hold: String,
        action: Action,
    ) -> Result<Response<pb::PayoutHold>, Status> {
        let fp = fingerprint(req, ctx);
        let c = &self.compliance;
        let cmd = PartnerCommand {
            partner_id,
            at: meta.occurred_at,
            action,
        };
        let response = idempotency::run_once(
            c.store.as_ref(),
            &meta.key,
            fp,
            meta.occurred_at,
            || async {
                let done = c.run(&cmd, &meta.command_meta()).await.map_err(to_api)?;
                done.state
                    .standing
                    .holds
                    .get(&hold)
                    .map(|h| hold_view(partner_id, &hold, h))
                    .ok_or_else(|| ApiError::internal("hold missing"))
            },
        )
        .await?;
        Ok(Response::new(response))
    }
}
