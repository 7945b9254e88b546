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
use uuid::Uuid;

use super::enrol::Enrolment;
use super::{eventually, link_of, m, pc, status, t, ts, usd, Run};

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
        // The refund reaches each partner's book in its own append: wait until every one has
        // it (what is read then is checked by the caller, not waited for).
        eventually("the refund in every credited partner's book", || async {
            Ok((self.reversals(&conversion).await? == 3).then_some(()))
        })
        .await?;
        // Each partner's override is reversed in the parent's book after its own reversal:
        // wait for the parent's three override reversals too.
        eventually(
            "the refund's override reversals in the parent's book",
            || async {
                let entries = self.entries_of(PARENT, &conversion).await?;
                Ok((entries == 6).then_some(()))
            },
        )
        .await?;
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
        self.open_program(PROGRAM, "Multi-touch partners", "saas")
            .await?;
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
        self.publish(&PlanVersion {
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
        })
        .await?;
        let partners = [PARENT, credited(0), credited(1), credited(2)];
        for (n, partner) in partners.into_iter().enumerate() {
            let is_parent = partner == PARENT;
            self.enrol(Enrolment {
                program: PROGRAM,
                partner,
                name: &format!("split-{n}"),
                plan: PLAN,
                parent: (!is_parent).then_some(PARENT),
                link: !is_parent,
            })
            .await?;
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
        let mut parts = Vec::with_capacity(3);
        for i in 0..3 {
            parts.push(self.open_of(conversion, credited(i)).await?);
        }
        Ok(parts)
    }

    /// How many of a partner's ledger entries are for `conversion`.
    async fn entries_of(&self, partner: Uuid, conversion: &str) -> Result<usize, String> {
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
        Ok(explained
            .entries
            .iter()
            .filter(|e| e.conversion_id == conversion)
            .count())
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
