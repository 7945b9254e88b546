//! One hierarchy, one tier across services: partner CRM moves a partner under a new parent and
//! up a tier in the middle of a month; commissions, told over the bus, pays each conversion's
//! override to the parent in force on its business date and matches its rule on the tier in
//! force then, a late conversion included, and refuses a plan the partner's tier does not
//! grant.

use pl_commission_engine::{
    Conditions, NetRevenuePolicy, PlanVersion, Reward, Rule, VersionPolicy,
};
use pl_money::Currency;
use pl_proto::attribution::v1 as att;
use pl_proto::commissions::v1 as com;
use pl_proto::crm::v1 as crm;
use uuid::Uuid;

use super::enrol::Enrolment;
use super::{eventually, link_of, m, pc, status, t, ts, usd, Run};

const PROGRAM: Uuid = Uuid::from_u128(0x5000_0006);
/// Silver partners may be paid under it only; gold under any plan.
const PLAN: Uuid = Uuid::from_u128(0xb000_0030);
const OTHER_PLAN: Uuid = Uuid::from_u128(0xb000_0031);
const FIRST_PARENT: Uuid = Uuid::from_u128(0xa000_0300);
const SECOND_PARENT: Uuid = Uuid::from_u128(0xa000_0301);
const SELLER: Uuid = Uuid::from_u128(0xa000_0302);

/// What commissions paid and refused.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HierarchyOutcome {
    /// The seller's own commission on the sales of February 10th, 20th and (recorded last)
    /// 12th, and the rule that paid each.
    pub own: Vec<(String, String)>,
    /// Pending balances of the first and the second parent (their overrides).
    pub first_parent: String,
    pub second_parent: String,
    /// The gRPC code of assigning the seller, silver, a plan only gold may have.
    pub other_plan_refused: String,
}

fn plan(plan_id: Uuid) -> PlanVersion {
    let rule = |id: &str, tier: Option<&str>, percent| Rule {
        id: id.into(),
        conditions: Conditions {
            partner_tier: tier.map(str::to_owned),
            ..Conditions::default()
        },
        reward: Reward::PercentOfGross(pc(percent)),
        cap_per_conversion: None,
        cap_per_period: None,
    };
    PlanVersion {
        plan_id,
        version: 1,
        effective_from: t(1, 1),
        payout_currency: Currency::USD,
        hold_days: 30,
        minimum_payout: m(0),
        version_policy: VersionPolicy::Grandfathered,
        net_revenue_policy: NetRevenuePolicy::CarryForwardNegative,
        cpa_recovery: false,
        overrides: vec![pc(5)],
        rules: vec![rule("base", None, 10), rule("gold", Some("gold"), 20)],
    }
}

impl Run {
    /// A two-level program with silver (rank 1, [`PLAN`] only) and gold tiers; the seller
    /// starts silver under the first parent; a sale on February 10th; from the 15th CRM puts
    /// it under the second parent and in gold; sales of the 20th and, recorded after it, the
    /// 12th.
    pub async fn hierarchy_and_tiers_reach_commissions(&self) -> Result<HierarchyOutcome, String> {
        let mut crm = self.c.crm.clone();
        let tier = |code: &str, rank, plans: Vec<String>| crm::Tier {
            code: code.into(),
            name: code.to_uppercase(),
            rank,
            access: Some(crm::TierAccess {
                plan_ids: plans,
                mdf: false,
                deal_registration: false,
            }),
        };
        crm.create_program(crm::CreateProgramRequest {
            context: self.ctx(t(1, 1)),
            program_id: PROGRAM.to_string(),
            name: "Tiered resellers".into(),
            vertical: "saas".into(),
            regulated: false,
            jurisdictions: vec![],
            settings: Some(crm::ProgramSettings {
                auto_approve: false,
                max_levels: 2,
                deal_registration_days: 90,
            }),
            tiers: vec![
                tier("silver", 1, vec![PLAN.to_string()]),
                tier("gold", 2, vec![]),
            ],
        })
        .await
        .map_err(status("create program"))?;
        self.publish(&plan(PLAN)).await?;
        self.publish(&plan(OTHER_PLAN)).await?;
        for (partner, name, parent) in [
            (FIRST_PARENT, "first parent", None),
            (SECOND_PARENT, "second parent", None),
            (SELLER, "tiered seller", Some(FIRST_PARENT)),
        ] {
            self.enrol(Enrolment {
                program: PROGRAM,
                partner,
                name,
                plan: PLAN,
                parent,
                link: partner == SELLER,
            })
            .await?;
        }
        // Approved without a tier named: CRM starts the seller in the lowest, silver. Once
        // commissions knows it, a plan silver is not granted is refused.
        self.standing_seen(SELLER, t(1, 1), Some("silver"), &[FIRST_PARENT])
            .await?;
        let other_plan_refused = match self
            .c
            .commissions
            .clone()
            .assign_plan(com::AssignPlanRequest {
                context: self.ctx(t(1, 2)),
                partner_id: SELLER.to_string(),
                plan_id: OTHER_PLAN.to_string(),
                effective_from: ts(t(1, 2)),
                ..Default::default()
            })
            .await
        {
            Ok(_) => "OK".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };

        let visitor = "tiered-visitor";
        self.click_link("the seller's link", link_of(SELLER), visitor, t(2, 1))
            .await?;
        let first = self.tiered_sale("tiered-10", visitor, t(2, 10)).await?;
        crm.set_partner_parent(crm::SetPartnerParentRequest {
            context: self.ctx(t(2, 15)),
            partner_id: SELLER.to_string(),
            parent_partner_id: SECOND_PARENT.to_string(),
        })
        .await
        .map_err(status("set parent"))?;
        crm.change_partner_tier(crm::ChangePartnerTierRequest {
            context: self.ctx(t(2, 15)),
            partner_id: SELLER.to_string(),
            tier: "gold".into(),
            effective_from: ts(t(2, 15)),
        })
        .await
        .map_err(status("change tier"))?;
        self.standing_seen(SELLER, t(2, 15), Some("gold"), &[SECOND_PARENT])
            .await?;
        let second = self.tiered_sale("tiered-20", visitor, t(2, 20)).await?;
        let late = self.tiered_sale("tiered-12", visitor, t(2, 12)).await?;

        let mut own = Vec::new();
        for conversion in [&first, &second, &late] {
            own.push(self.own_line(conversion).await?);
        }
        // 5% of the sales of the 10th and the 12th, and of the 20th.
        Ok(HierarchyOutcome {
            own,
            first_parent: self.pending_reaches(FIRST_PARENT, "10.00").await?,
            second_parent: self.pending_reaches(SECOND_PARENT, "5.00").await?,
            other_plan_refused,
        })
    }

    async fn tiered_sale(
        &self,
        external_id: &str,
        visitor: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<String, String> {
        self.convert(att::RecordConversionRequest {
            context: self.ctx(at),
            program_id: PROGRAM.to_string(),
            r#type: att::ConversionType::Sale as i32,
            external_id: external_id.into(),
            customer_id: format!("{external_id}-customer"),
            visitor_id: visitor.into(),
            amount: usd("100.00"),
            occurred_at: ts(at),
            customer_country: "DE".into(),
            ..Default::default()
        })
        .await
    }

    /// The seller's own commission on `conversion` and the rule that paid it.
    async fn own_line(&self, conversion: &str) -> Result<(String, String), String> {
        let amount = self.open_of(conversion, SELLER).await?;
        let entries = self
            .c
            .commissions
            .clone()
            .explain_balance(com::ExplainBalanceRequest {
                partner_id: SELLER.to_string(),
                currency: "USD".into(),
                as_of: None,
                page: None,
            })
            .await
            .map_err(status("explain"))?
            .into_inner()
            .entries;
        let rule = entries
            .into_iter()
            .find(|e| e.conversion_id == conversion)
            .map(|e| e.rule_id)
            .unwrap_or_default();
        Ok((amount, rule))
    }

    /// The partner's pending USD balance once it is `expected`, or what it is when it does not
    /// get there in time (an override lands in the parent's book just after the downline's
    /// accrual is answered).
    async fn pending_reaches(&self, partner: Uuid, expected: &str) -> Result<String, String> {
        let last = std::sync::Mutex::new(String::new());
        let reached = eventually(
            &format!("{partner}'s pending balance of {expected}"),
            || async {
                let balances = self
                    .c
                    .commissions
                    .clone()
                    .get_balances(com::GetBalancesRequest {
                        partner_id: partner.to_string(),
                        as_of: None,
                    })
                    .await
                    .map_err(status("balances"))?
                    .into_inner();
                let pending = balances
                    .currencies
                    .into_iter()
                    .find(|c| c.currency == "USD")
                    .map_or_else(|| "0.00".to_owned(), |c| c.pending);
                let done = (pending == expected).then(|| pending.clone());
                *last.lock().map_err(|e| e.to_string())? = pending;
                Ok(done)
            },
        )
        .await;
        match reached {
            Ok(pending) => Ok(pending),
            Err(_) => Ok(last.into_inner().map_err(|e| e.to_string())?),
        }
    }
}
