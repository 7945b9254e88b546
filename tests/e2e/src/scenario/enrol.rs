//! What the scenarios beyond the twelve-month program share: a program of their own, a plan
//! published, partners enrolled on it with a tracking link, and the figures read back.

use pl_commission_engine::{
    Conditions, NetRevenuePolicy, PlanVersion, Reward, Rule, VersionPolicy,
};
use pl_money::Currency;
use pl_proto::commissions::v1 as com;
use pl_proto::crm::v1 as crm;
use uuid::Uuid;

use super::{eventually, link_of, m, pc, status, t, ts, Run, ACCRUAL_WAIT_MS};

/// A partner to enrol: applied and approved in `program`, on `plan` from January 1st (under
/// `parent`, for overrides), with a tracking link when `link`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Enrolment<'a> {
    pub program: Uuid,
    pub partner: Uuid,
    pub name: &'a str,
    pub plan: Uuid,
    pub parent: Option<Uuid>,
    pub link: bool,
}

impl Run {
    /// An unregulated program, created in CRM on January 1st.
    pub(super) async fn open_program(
        &self,
        program: Uuid,
        name: &str,
        vertical: &str,
    ) -> Result<(), String> {
        self.c
            .crm
            .clone()
            .create_program(crm::CreateProgramRequest {
                context: self.ctx(t(1, 1)),
                program_id: program.to_string(),
                name: name.into(),
                vertical: vertical.into(),
                regulated: false,
                jurisdictions: vec![],
                settings: Some(crm::ProgramSettings {
                    auto_approve: false,
                    max_levels: 2,
                    deal_registration_days: 90,
                }),
                tiers: vec![],
            })
            .await
            .map_err(status("create program"))?;
        Ok(())
    }

    /// Publishes a plan paying 10% of every sale, at once payable (no hold, no minimum), with
    /// no overrides: the plan of the scenarios about who may be paid rather than how much.
    pub(super) async fn publish_ten_percent(&self, plan_id: Uuid) -> Result<(), String> {
        self.publish(&PlanVersion {
            plan_id,
            version: 1,
            effective_from: t(1, 1),
            payout_currency: Currency::USD,
            hold_days: 0,
            minimum_payout: m(0),
            version_policy: VersionPolicy::Grandfathered,
            net_revenue_policy: NetRevenuePolicy::CarryForwardNegative,
            cpa_recovery: false,
            overrides: vec![],
            rules: vec![Rule {
                id: "sales".into(),
                conditions: Conditions::default(),
                reward: Reward::PercentOfGross(pc(10)),
                cap_per_conversion: None,
                cap_per_period: None,
            }],
        })
        .await
    }

    /// Waits until partner CRM has `partner` approved (a regulated program's partner is once
    /// compliance's approval reached CRM).
    pub(super) async fn approved_in_crm(&self, partner: Uuid) -> Result<(), String> {
        eventually(&format!("{partner} approved in CRM"), || {
            let mut crm = self.c.crm.clone();
            async move {
                let p = crm
                    .get_partner(crm::GetPartnerRequest {
                        partner_id: partner.to_string(),
                    })
                    .await
                    .map_err(status("get partner"))?
                    .into_inner();
                Ok((p.status == crm::PartnerStatus::Approved as i32).then_some(()))
            }
        })
        .await
    }

    pub(super) async fn publish(&self, plan: &PlanVersion) -> Result<(), String> {
        self.c
            .commissions
            .clone()
            .publish_plan_version(com::PublishPlanVersionRequest {
                context: self.ctx(t(1, 1)),
                plan_id: plan.plan_id.to_string(),
                plan_json: serde_json::to_string(plan).map_err(|e| e.to_string())?,
            })
            .await
            .map_err(status("publish plan"))?;
        Ok(())
    }

    pub(super) async fn enrol(&self, e: Enrolment<'_>) -> Result<(), String> {
        let mut crm = self.c.crm.clone();
        crm.apply_partner(crm::ApplyPartnerRequest {
            context: self.ctx(t(1, 1)),
            partner_id: e.partner.to_string(),
            program_id: e.program.to_string(),
            display_name: format!("{} partner", e.name),
            partner_type: crm::PartnerType::Affiliate as i32,
            email: format!("{}@partners.example", e.name.replace(' ', ".")),
            country: "MT".into(),
        })
        .await
        .map_err(status("apply"))?;
        crm.approve_partner(crm::ApprovePartnerRequest {
            context: self.ctx(t(1, 1)),
            partner_id: e.partner.to_string(),
            tier: String::new(),
            note: String::new(),
        })
        .await
        .map_err(status("approve"))?;
        self.c
            .commissions
            .clone()
            .assign_plan(com::AssignPlanRequest {
                context: self.ctx(t(1, 1)),
                partner_id: e.partner.to_string(),
                plan_id: e.plan.to_string(),
                effective_from: ts(t(1, 1)),
                ..Default::default()
            })
            .await
            .map_err(status("assign plan"))?;
        if let Some(parent) = e.parent {
            // The upline is CRM's: commissions pays overrides to it once the change arrived.
            crm.set_partner_parent(crm::SetPartnerParentRequest {
                context: self.ctx(t(1, 1)),
                partner_id: e.partner.to_string(),
                parent_partner_id: parent.to_string(),
            })
            .await
            .map_err(status("set parent"))?;
            self.standing_seen(e.partner, t(1, 1), None, &[parent])
                .await?;
        }
        if e.link {
            crm.issue_tracking_link(crm::IssueTrackingLinkRequest {
                context: self.ctx(t(1, 1)),
                tracking_link_id: link_of(e.partner).to_string(),
                partner_id: e.partner.to_string(),
                campaign_id: String::new(),
                destination_url: "https://vendor.example/".into(),
                expires_at: None,
            })
            .await
            .map_err(status("issue link"))?;
        }
        Ok(())
    }

    /// Waits until commissions has, from CRM, `partner` under `upline` at `at` (and in `tier`,
    /// when given): what its conversions of that date accrue with.
    pub(super) async fn standing_seen(
        &self,
        partner: Uuid,
        at: chrono::DateTime<chrono::Utc>,
        tier: Option<&str>,
        upline: &[Uuid],
    ) -> Result<(), String> {
        let want: Vec<String> = upline.iter().map(Uuid::to_string).collect();
        eventually(
            &format!("{partner} under {want:?} in tier {tier:?} in commissions"),
            || {
                let mut com = self.c.commissions.clone();
                let want = want.clone();
                async move {
                    let account = match com
                        .get_partner_account(com::GetPartnerAccountRequest {
                            partner_id: partner.to_string(),
                            as_of: ts(at),
                        })
                        .await
                    {
                        Ok(a) => a.into_inner(),
                        Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
                        Err(s) => return Err(status("get partner account")(s)),
                    };
                    let tier_seen = tier.is_none_or(|t| account.tier == t);
                    Ok((account.upline == want && tier_seen).then_some(()))
                }
            },
        )
        .await
    }

    /// A partner's own commission on a conversion, net of reversals ("0.00" when it has none),
    /// once commissions has accrued it.
    pub(super) async fn open_of(&self, conversion: &str, partner: Uuid) -> Result<String, String> {
        let accrual = self
            .c
            .commissions
            .clone()
            .get_conversion_accrual(com::GetConversionAccrualRequest {
                conversion_id: conversion.into(),
                wait_ms: ACCRUAL_WAIT_MS,
            })
            .await
            .map_err(status("get accrual"))?
            .into_inner();
        let id = partner.to_string();
        accrual
            .partners
            .iter()
            .find(|p| p.partner_id == id)
            .map(|p| {
                p.open
                    .as_ref()
                    .map_or_else(|| "0.00".to_owned(), |m| m.amount.clone())
            })
            .ok_or_else(|| format!("partner {id} was not credited: {accrual:?}"))
    }

    /// A partner's pending balance in USD.
    pub(super) async fn pending_of(&self, partner: Uuid) -> Result<String, String> {
        let b = self
            .c
            .commissions
            .clone()
            .get_balances(com::GetBalancesRequest {
                partner_id: partner.to_string(),
                as_of: None,
            })
            .await
            .map_err(status("get balances"))?
            .into_inner();
        Ok(b.currencies
            .iter()
            .find(|c| c.currency == "USD")
            .map_or_else(|| "0.00".into(), |c| c.pending.clone()))
    }
}
