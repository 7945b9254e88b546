//! Protobuf views of the aggregates' states. Time-dependent fields (the tier in force, whether
//! an asset works, whether a deal expired) are judged at the instant the caller passes — the
//! request's clock reading — never read here.

use chrono::{DateTime, Utc};
use pl_money::Money;
use pl_proto::common::v1 as common;
use pl_proto::crm::v1 as pb;
use pl_runtime::request::to_timestamp;
use uuid::Uuid;

use crate::campaigns::Campaign;
use crate::coupons::Coupon;
use crate::deals::{Deal, DealStatus};
use crate::links::Link;
use crate::marketing::{Asset, AssetKind};
use crate::mdf::{Budget, Decision};
use crate::partner::{Disclosure, Partner, PartnerType, Profile, Stage};
use crate::program::Program;

fn ts(t: DateTime<Utc>) -> Option<pl_proto::prost_types::Timestamp> {
    Some(to_timestamp(t))
}

fn opt_ts(t: Option<DateTime<Utc>>) -> Option<pl_proto::prost_types::Timestamp> {
    t.map(to_timestamp)
}

fn id(v: Option<Uuid>) -> String {
    v.map(|u| u.to_string()).unwrap_or_default()
}

pub fn money(m: Money) -> common::Money {
    common::Money {
        amount: m.amount().to_string(),
        currency: m.currency().code().to_owned(),
    }
}

pub fn partner_type(t: PartnerType) -> pb::PartnerType {
    match t {
        PartnerType::Affiliate => pb::PartnerType::Affiliate,
        PartnerType::Referral => pb::PartnerType::Referral,
        PartnerType::Reseller => pb::PartnerType::Reseller,
        PartnerType::Technology => pb::PartnerType::Technology,
        PartnerType::Outsourcing => pb::PartnerType::Outsourcing,
        PartnerType::Influencer => pb::PartnerType::Influencer,
        PartnerType::IntroducingBroker => pb::PartnerType::IntroducingBroker,
    }
}

pub fn stage(s: Stage) -> pb::PartnerStage {
    match s {
        Stage::Applied => pb::PartnerStage::Applied,
        Stage::InReview => pb::PartnerStage::InReview,
        Stage::AwaitingCompliance => pb::PartnerStage::AwaitingCompliance,
        Stage::Approved => pb::PartnerStage::Approved,
        Stage::Rejected => pb::PartnerStage::Rejected,
        Stage::Suspended => pb::PartnerStage::Suspended,
        Stage::Terminated => pb::PartnerStage::Terminated,
    }
}

fn status(s: Stage) -> pb::PartnerStatus {
    match s {
        Stage::Applied | Stage::InReview | Stage::AwaitingCompliance => pb::PartnerStatus::Applied,
        Stage::Approved => pb::PartnerStatus::Approved,
        Stage::Rejected => pb::PartnerStatus::Rejected,
        Stage::Suspended => pb::PartnerStatus::Suspended,
        Stage::Terminated => pb::PartnerStatus::Terminated,
    }
}

fn disclosure(d: Disclosure) -> pb::DisclosureStatus {
    match d {
        Disclosure::Unknown => pb::DisclosureStatus::Unknown,
        Disclosure::Pending => pb::DisclosureStatus::Pending,
        Disclosure::Acknowledged => pb::DisclosureStatus::Acknowledged,
        Disclosure::Refused => pb::DisclosureStatus::Refused,
    }
}

pub fn profile(p: &Profile) -> pb::PartnerProfile {
    pb::PartnerProfile {
        website: p.website.clone().unwrap_or_default(),
        platforms: p
            .platforms
            .iter()
            .map(|pl| pb::CreatorPlatform {
                platform: pl.platform.clone(),
                handle: pl.handle.clone(),
                audience_size: pl.audience_size,
            })
            .collect(),
        niches: p.niches.clone(),
        disclosure_status: disclosure(p.disclosure).into(),
        description: p.description.clone().unwrap_or_default(),
        audience_size: p.audience_size(),
    }
}

pub fn partner(
    p: &Partner,
    version: Option<u64>,
    parent: Option<Uuid>,
    now: DateTime<Utc>,
) -> Option<pb::Partner> {
    let (Some(a), Some(st)) = (&p.application, p.stage) else {
        return None;
    };
    Some(pb::Partner {
        partner_id: a.partner_id.to_string(),
        program_id: a.program_id.to_string(),
        display_name: a.display_name.clone(),
        partner_type: partner_type(a.partner_type).into(),
        email: a.email.clone(),
        country: a.country.clone(),
        status: status(st).into(),
        applied_at: ts(a.applied_at),
        version: version.unwrap_or(0),
        stage: stage(st).into(),
        tier: p.tier_at(now).unwrap_or_default().to_owned(),
        tier_history: p
            .tiers
            .iter()
            .map(|t| pb::TierPeriod {
                tier: t.tier.clone(),
                effective_from: ts(t.effective_from),
            })
            .collect(),
        parent_partner_id: id(parent),
        profile: Some(profile(&p.profile)),
        status_history: p
            .history
            .iter()
            .map(|h| pb::StatusPeriod {
                stage: stage(h.stage).into(),
                since: ts(h.since),
                reason: h.reason.clone(),
            })
            .collect(),
        reviewer: p.reviewer.clone().unwrap_or_default(),
        compliance: p
            .compliance
            .iter()
            .map(|(program, c)| pb::ComplianceApproval {
                program_id: program.to_string(),
                jurisdictions: c.jurisdictions.iter().cloned().collect(),
                reference: c.reference.clone(),
                granted_at: ts(c.granted_at),
                revoked_at: opt_ts(c.revoked.as_ref().map(|r| r.0)),
                revocation_reason: c.revoked.as_ref().map(|r| r.1.clone()).unwrap_or_default(),
            })
            .collect(),
    })
}

pub fn program(p: &Program, version: Option<u64>) -> Option<pb::Program> {
    let d = p.definition.as_ref()?;
    let mut tiers = d.tiers.clone();
    tiers.sort_by_key(|t| t.rank);
    Some(pb::Program {
        program_id: d.program_id.to_string(),
        name: d.name.clone(),
        vertical: d.vertical.clone().unwrap_or_default(),
        regulated: !d.jurisdictions.is_empty(),
        jurisdictions: d.jurisdictions.clone(),
        settings: Some(pb::ProgramSettings {
            auto_approve: d.settings.auto_approve,
            max_levels: u32::from(d.settings.max_levels),
            deal_registration_days: d.settings.deal_registration_days,
        }),
        tiers: tiers
            .iter()
            .map(|t| pb::Tier {
                code: t.code.clone(),
                name: t.name.clone(),
                rank: t.rank,
                access: Some(pb::TierAccess {
                    plan_ids: t.access.plan_ids.iter().map(Uuid::to_string).collect(),
                    mdf: t.access.mdf,
                    deal_registration: t.access.deal_registration,
                }),
            })
            .collect(),
        created_at: ts(d.created_at),
        version: version.unwrap_or(0),
    })
}

/// `partner_approved`: whether the link's partner is approved now (suspended partners' links
/// do not work).
pub fn link(
    l: &Link,
    version: Option<u64>,
    partner_approved: bool,
    now: DateTime<Utc>,
) -> Option<pb::TrackingLink> {
    let i = l.issued.as_ref()?;
    Some(pb::TrackingLink {
        tracking_link_id: i.tracking_link_id.to_string(),
        partner_id: i.partner_id.to_string(),
        program_id: i.program_id.to_string(),
        campaign_id: id(i.campaign_id),
        destination_url: i.destination_url.clone(),
        issued_at: ts(i.occurred_at),
        expires_at: opt_ts(i.expires_at),
        deactivated_at: opt_ts(l.deactivated_at),
        deactivation_reason: l.deactivation_reason.clone(),
        active: partner_approved && l.in_force_at(now),
        version: version.unwrap_or(0),
    })
}

pub fn coupon(
    c: &Coupon,
    version: Option<u64>,
    partner_approved: bool,
    now: DateTime<Utc>,
) -> pb::Coupon {
    let i = &c.issued;
    pb::Coupon {
        coupon_id: i.coupon_id.to_string(),
        code: i.code.clone(),
        partner_id: i.partner_id.to_string(),
        program_id: i.program_id.to_string(),
        campaign_id: id(i.campaign_id),
        valid_from: ts(i.valid_from),
        expires_at: opt_ts(i.expires_at),
        deactivated_at: opt_ts(c.deactivated_at),
        deactivation_reason: c.deactivation_reason.clone(),
        issued_at: ts(i.occurred_at),
        active: partner_approved && c.in_force_at(now),
        version: version.unwrap_or(0),
    }
}

pub fn deal_status(d: &Deal, now: DateTime<Utc>) -> pb::DealStatus {
    if d.expired_at(now) {
        return pb::DealStatus::Expired;
    }
    match d.status {
        DealStatus::Pending => pb::DealStatus::Pending,
        DealStatus::Conflicted => pb::DealStatus::Conflicted,
        DealStatus::Approved => pb::DealStatus::Approved,
        DealStatus::Rejected => pb::DealStatus::Rejected,
        DealStatus::Won => pb::DealStatus::Won,
        DealStatus::Lost => pb::DealStatus::Lost,
        DealStatus::Revoked => pb::DealStatus::Revoked,
    }
}

pub fn deal(d: &Deal, version: Option<u64>, now: DateTime<Utc>) -> pb::Deal {
    let r = &d.registered;
    pb::Deal {
        deal_id: r.deal_id.to_string(),
        partner_id: r.partner_id.to_string(),
        program_id: r.program_id.to_string(),
        customer_domain: r.customer_domain.clone(),
        company_name: r.company_name.clone(),
        contact: Some(pb::DealContact {
            name: r.contact_name.clone(),
            email: r.contact_email.clone(),
        }),
        estimated_value: Some(money(r.estimated_value)),
        notes: r.notes.clone(),
        status: deal_status(d, now).into(),
        registered_at: ts(r.registered_at),
        expires_at: match d.status {
            DealStatus::Won => None,
            _ => ts(r.expires_at),
        },
        conflicts_with: id(r.conflicts_with),
        decided_at: opt_ts(d.decided_at),
        reason: d.reason.clone(),
        customer_id: d.customer_id.clone().unwrap_or_default(),
        version: version.unwrap_or(0),
    }
}

fn decision_request(d: Decision) -> pb::MdfRequestStatus {
    match d {
        Decision::Pending => pb::MdfRequestStatus::Pending,
        Decision::Approved => pb::MdfRequestStatus::Approved,
        Decision::Rejected => pb::MdfRequestStatus::Rejected,
    }
}

fn decision_claim(d: Decision) -> pb::MdfClaimStatus {
    match d {
        Decision::Pending => pb::MdfClaimStatus::Pending,
        Decision::Approved => pb::MdfClaimStatus::Approved,
        Decision::Rejected => pb::MdfClaimStatus::Rejected,
    }
}

pub fn budget(b: &Budget, version: Option<u64>) -> Option<pb::MdfBudget> {
    let set = b.budget.as_ref()?;
    let m = |d| b.money(d).map(money);
    Some(pb::MdfBudget {
        budget_id: set.budget_id.to_string(),
        partner_id: set.partner_id.to_string(),
        program_id: set.program_id.to_string(),
        period: set.period.clone(),
        amount: Some(money(set.amount)),
        committed: m(b.committed()),
        reimbursed: m(b.reimbursed()),
        available: m(set.amount.amount() - b.committed()),
        requests: b
            .requests
            .iter()
            .map(|r| pb::MdfRequest {
                request_id: r.request_id.to_string(),
                amount: Some(money(r.amount)),
                approved_amount: r.approved_amount.map(money),
                activity: r.activity.clone(),
                status: decision_request(r.status).into(),
                reason: r.reason.clone(),
                requested_at: ts(r.requested_at),
                unclaimed: r
                    .approved_amount
                    .filter(|_| r.status == Decision::Approved)
                    .and_then(|a| m(a.amount() - b.claimed(r.request_id))),
            })
            .collect(),
        claims: b
            .claims
            .iter()
            .map(|c| pb::MdfClaim {
                claim_id: c.claim_id.to_string(),
                request_id: c.request_id.to_string(),
                amount: Some(money(c.amount)),
                proof_reference: c.proof_reference.clone(),
                status: decision_claim(c.status).into(),
                reason: c.reason.clone(),
                claimed_at: ts(c.claimed_at),
                decided_at: opt_ts(c.decided_at),
            })
            .collect(),
        version: version.unwrap_or(0),
    })
}

pub fn campaign(c: &Campaign, version: Option<u64>) -> Option<pb::Campaign> {
    let created = c.created.as_ref()?;
    Some(pb::Campaign {
        campaign_id: created.campaign_id.to_string(),
        program_id: created.program_id.to_string(),
        name: created.name.clone(),
        starts_at: ts(created.starts_at),
        ends_at: ts(created.ends_at),
        members: created
            .fees
            .iter()
            .map(|f| pb::CampaignMember {
                partner_id: f.partner_id.to_string(),
                flat_fee: Some(money(f.flat_fee)),
                fee_committed_at: opt_ts(c.fees_committed.get(&f.partner_id).copied()),
                bonus_awarded_at: opt_ts(c.bonuses_awarded.get(&f.partner_id).copied()),
            })
            .collect(),
        bonus: created.bonus.as_ref().map(|b| pb::PerformanceBonus {
            target_conversions: b.target_conversions,
            amount: Some(money(b.amount)),
        }),
        created_at: ts(created.occurred_at),
        version: version.unwrap_or(0),
    })
}

fn asset_kind(k: AssetKind) -> pb::MarketingAssetKind {
    match k {
        AssetKind::Banner => pb::MarketingAssetKind::Banner,
        AssetKind::Logo => pb::MarketingAssetKind::Logo,
        AssetKind::Video => pb::MarketingAssetKind::Video,
        AssetKind::Document => pb::MarketingAssetKind::Document,
        AssetKind::EmailTemplate => pb::MarketingAssetKind::EmailTemplate,
        AssetKind::LandingPage => pb::MarketingAssetKind::LandingPage,
        AssetKind::SocialPost => pb::MarketingAssetKind::SocialPost,
        AssetKind::Other => pb::MarketingAssetKind::Other,
    }
}

/// The asset with the takers in `[offset, offset + limit)`.
pub fn asset(
    a: &Asset,
    version: Option<u64>,
    offset: usize,
    limit: usize,
) -> Option<pb::MarketingAsset> {
    let added = a.added.as_ref()?;
    let (takers, next) = crate::read::page(a.takers.iter(), offset, limit);
    Some(pb::MarketingAsset {
        asset_id: added.asset_id.to_string(),
        program_id: added.program_id.to_string(),
        name: added.name.clone(),
        kind: asset_kind(added.kind).into(),
        uri: added.uri.clone(),
        allowed_tiers: added.allowed_tiers.clone(),
        added_at: ts(added.occurred_at),
        retired_at: opt_ts(a.retired_at),
        taker_count: a.takers.len() as u64,
        takers: takers
            .into_iter()
            .map(|t| pb::AssetTaker {
                partner_id: t.partner_id.to_string(),
                tier: t.tier.clone().unwrap_or_default(),
                taken_at: ts(t.taken_at),
            })
            .collect(),
        next_takers_page_token: next,
        version: version.unwrap_or(0),
    })
}
