//! One sale credited to three partners by the linear model, over gRPC: attribution splits the
//! credit into thirds, commissions pays parts of the whole commission that sum to it exactly
//! (overrides too), and a full refund takes every partner back to zero.

use chrono::{DateTime, Utc};
use pl_commission_engine::{
    Conditions, NetRevenuePolicy, PlanVersion, Reward, Rule, VersionPolicy,
};
use pl_money::Currency;
use pl_proto::attribution::v1 as att;
use pl_proto::commissions::v1 as com;
use pl_proto::crm::v1 as crm;
use uuid::Uuid;

use super::{link_of, m, pc, status, t, ts, usd, Run, ACCRUAL_WAIT_MS};

const PROGRAM: Uuid = Uuid::from_u128(0x5000_0003);
const PLAN: Uuid = Uuid::from_u128(0xb000_0010);
const PARENT: Uuid = Uuid::from_u128(0xa000_0100);

/// The three credited partners, in the order of their clicks.
fn credited(i: u128) -> Uuid {
    Uuid::from_u128(0xa000_0101 + i)
}

/// What the split sale and its refund left, as read back over gRPC.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SplitOutcome {
    /// Each credited partner's open commission on the sale, in click order.
    pub parts: Vec<String>,
    /// The parent's pending balance: the three level-1 overrides.
    pub parent_pending: String,
    /// The second partner's explanation of its entry.
    pub second_explanation: String,
    /// The second partner's explanation inputs, "key=value" sorted.
    pub second_inputs: Vec<String>,
    /// Each credited partner's open commission after a full refund.
    pub parts_after_refund: Vec<String>,
    /// The parent's pending balance after the refund.
    pub parent_pending_after_refund: String,
}

impl Run {
    /// A program on the linear model, a 10% plan with a 2% override to one parent, three
    /// partners clicked by one visitor, a 100.00 USD sale, then its full refund.
    pub async fn split_sale_three_ways(&self) -> Result<SplitOutcome, String> {
        self.split_setup().await?;
        let visitor = "split-visitor";
        for (i, day) in [(0, 1), (1, 2), (2, 3)] {
            self.click_link(
                "a split partner's link",
                link_of(credited(i)),
                visitor,
                t(2, day),
            )
            .await?;
        }
        let mut sale = self.split_conversion(att::ConversionType::Sale, "split-sale", t(2, 10));
        sale.visitor_id = visitor.into();
        let conversion = self.convert(sale).await?;
        let parts = self.open_parts(&conversion).await?;
        let parent_pending = self.pending_of(PARENT).await?;
        let (second_explanation, second_inputs) =
            self.explanation_of(credited(1), &conversion).await?;

        let mut refund =
            self.split_conversion(att::ConversionType::Refund, "split-refund", t(2, 20));
        refund.original_external_id = "split-sale".into();
        self.reverse(refund, &conversion).await?;
        Ok(SplitOutcome {
            parts,
            parent_pending,
            second_explanation,
            second_inputs,
            parts_after_refund: self.open_parts(&conversion).await?,
            parent_pending_after_refund: self.pending_of(PARENT).await?,
        })
    }

    async fn split_setup(&self) -> Result<(), String> {
        let mut crm = self.c.crm.clone();
        crm.create_program(crm::CreateProgramRequest {
            context: self.ctx(t(1, 1)),
            program_id: PROGRAM.to_string(),
            name: "Multi-touch partners".into(),
            vertical: "saas".into(),
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
        self.c
            .attribution
            .clone()
            .set_attribution_settings(att::SetAttributionSettingsRequest {
                context: self.ctx(t(1, 1)),
                program_id: PROGRAM.to_string(),
                model: att::AttributionModel::Linear as i32,
                window_days: 30,
                ..Default::default()
            })
            .await
            .map_err(status("set attribution settings"))?;
        let plan = PlanVersion {
            plan_id: PLAN,
            version: 1,
            effective_from: t(1, 1),
            payout_currency: Currency::USD,
            hold_days: 30,
            minimum_payout: m(50),
            version_policy: VersionPolicy::Grandfathered,
            net_revenue_policy: NetRevenuePolicy::CarryForwardNegative,
            cpa_recovery: false,
            overrides: vec![pc(2)],
            rules: vec![Rule {
                id: "sales".into(),
                conditions: Conditions::default(),
                reward: Reward::PercentOfGross(pc(10)),
                cap_per_conversion: None,
                cap_per_period: None,
            }],
        };
        let mut com = self.c.commissions.clone();
        com.publish_plan_version(com::PublishPlanVersionRequest {
            context: self.ctx(t(1, 1)),
            plan_id: PLAN.to_string(),
            plan_json: serde_json::to_string(&plan).map_err(|e| e.to_string())?,
        })
        .await
        .map_err(status("publish plan"))?;
        let partners = [PARENT, credited(0), credited(1), credited(2)];
        for (n, id) in partners.into_iter().enumerate() {
            crm.apply_partner(crm::ApplyPartnerRequest {
                context: self.ctx(t(1, 1)),
                partner_id: id.to_string(),
                program_id: PROGRAM.to_string(),
                display_name: format!("split partner {n}"),
                partner_type: crm::PartnerType::Affiliate as i32,
                email: format!("split-{n}@partners.example"),
                country: "DE".into(),
            })
            .await
            .map_err(status("apply"))?;
            crm.approve_partner(crm::ApprovePartnerRequest {
                context: self.ctx(t(1, 1)),
                partner_id: id.to_string(),
                tier: String::new(),
                note: String::new(),
            })
            .await
            .map_err(status("approve"))?;
            com.assign_plan(com::AssignPlanRequest {
                context: self.ctx(t(1, 1)),
                partner_id: id.to_string(),
                plan_id: PLAN.to_string(),
                effective_from: ts(t(1, 1)),
                partner_tier: String::new(),
                parent_partner_id: if id == PARENT {
                    String::new()
                } else {
                    PARENT.to_string()
                },
            })
            .await
            .map_err(status("assign plan"))?;
            if id != PARENT {
                crm.issue_tracking_link(crm::IssueTrackingLinkRequest {
                    context: self.ctx(t(1, 2)),
                    tracking_link_id: link_of(id).to_string(),
                    partner_id: id.to_string(),
                    campaign_id: String::new(),
                    destination_url: "https://vendor.example/".into(),
                    expires_at: None,
                })
                .await
                .map_err(status("issue link"))?;
            }
        }
        Ok(())
    }

    fn split_conversion(
        &self,
        kind: att::ConversionType,
        external_id: &str,
        at: DateTime<Utc>,
    ) -> att::RecordConversionRequest {
        att::RecordConversionRequest {
            context: self.ctx(at),
            program_id: PROGRAM.to_string(),
            r#type: kind as i32,
            external_id: external_id.into(),
            customer_id: "split-customer".into(),
            amount: usd("100.00"),
            occurred_at: ts(at),
            customer_country: "DE".into(),
            ..Default::default()
        }
    }

    /// Each credited partner's open commission on `conversion`, in click order.
    async fn open_parts(&self, conversion: &str) -> Result<Vec<String>, String> {
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
        (0..3)
            .map(|i| {
                let id = credited(i).to_string();
                accrual
                    .partners
                    .iter()
                    .find(|p| p.partner_id == id)
                    .map(|p| {
                        p.open
                            .as_ref()
                            .map_or_else(String::new, |m| m.amount.clone())
                    })
                    .ok_or_else(|| format!("partner {id} was not credited: {accrual:?}"))
            })
            .collect()
    }

    async fn pending_of(&self, partner: Uuid) -> Result<String, String> {
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

    /// The explanation and inputs of a partner's first entry for `conversion`.
    async fn explanation_of(
        &self,
        partner: Uuid,
        conversion: &str,
    ) -> Result<(String, Vec<String>), String> {
        let explained = self
            .c
            .commissions
            .clone()
            .explain_balance(com::ExplainBalanceRequest {
                partner_id: partner.to_string(),
                currency: "USD".into(),
                ..Default::default()
            })
            .await
            .map_err(status("explain balance"))?
            .into_inner();
        let entry = explained
            .entries
            .into_iter()
            .find(|e| e.conversion_id == conversion)
            .ok_or_else(|| format!("no entry of {conversion} for {partner}"))?;
        let mut inputs: Vec<String> = entry
            .inputs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        inputs.sort();
        Ok((entry.explanation, inputs))
    }
}
