//! Net revenue reports over gRPC, as an iGaming operator sends them: one player per partner,
//! months of +1000, −400 and +300 under each negative-carryover policy (carry forward, reset,
//! ringfenced per brand), and a CPA recovered from later net revenue. The figures a partner
//! should get are worked out here from the plan terms alone ([`expected_lines`]), never by the
//! engine, and compared with what commissions accrued for each report.

use std::collections::BTreeMap;

use pl_commission_engine::{
    Conditions, ConversionKind, NetRevenuePolicy, PlanVersion, Reward, Rule, VersionPolicy,
};
use pl_money::{Currency, Decimal};
use pl_proto::attribution::v1 as att;
use uuid::Uuid;

use super::enrol::Enrolment;
use super::{link_of, m, pc, t, ts, usd, Run};

const PROGRAM: Uuid = Uuid::from_u128(0x5000_0004);

/// The share every plan here pays of positive net revenue, in percent.
const SHARE_PERCENT: i64 = 25;
/// The hybrid plan's CPA per signup, in whole dollars.
const CPA_DOLLARS: i64 = 50;

/// One partner of the scenario: its plan's policy, whether its plan pays a recovered CPA, and
/// the reports of its player, one per month from January: (brand, net).
#[derive(Debug)]
pub struct Case {
    pub name: &'static str,
    pub policy: NetRevenuePolicy,
    pub cpa_recovered: bool,
    pub reports: &'static [(&'static str, &'static str)],
}

pub const CASES: [Case; 4] = [
    Case {
        name: "carry",
        policy: NetRevenuePolicy::CarryForwardNegative,
        cpa_recovered: false,
        reports: &[("", "1000.00"), ("", "-400.00"), ("", "300.00")],
    },
    Case {
        name: "reset",
        policy: NetRevenuePolicy::ResetEachPeriod,
        cpa_recovered: false,
        reports: &[("", "1000.00"), ("", "-400.00"), ("", "300.00")],
    },
    Case {
        name: "ringfence",
        policy: NetRevenuePolicy::Ringfenced,
        cpa_recovered: false,
        reports: &[
            ("sports", "1000.00"),
            ("casino", "-400.00"),
            ("sports", "300.00"),
            ("casino", "500.00"),
        ],
    },
    Case {
        name: "hybrid",
        policy: NetRevenuePolicy::CarryForwardNegative,
        cpa_recovered: true,
        reports: &[("", "1000.00"), ("", "-400.00"), ("", "300.00")],
    },
];

/// What each case's partner was paid, as read back over gRPC.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NgrOutcome {
    /// Per case: the CPA paid for the signup (hybrid only, else empty), then the commission
    /// accrued for each report, in order.
    pub lines: BTreeMap<&'static str, Vec<String>>,
    /// Per case: the partner's pending balance.
    pub pending: BTreeMap<&'static str, String>,
}

/// The lines the plan terms give for one case, one report a month: each month pays the share
/// of max(0, carried + net) and carries min(0, carried + net) into the next (per brand when
/// ringfenced, nothing when reset); a recovered CPA takes the first lines until it is paid back.
/// Amounts are whole cents here, so no rounding is needed.
pub fn expected_lines(case: &Case) -> Vec<Decimal> {
    let rate = Decimal::new(SHARE_PERCENT, 2);
    let mut carried: BTreeMap<&str, Decimal> = BTreeMap::new();
    let mut to_recover = if case.cpa_recovered {
        Decimal::from(CPA_DOLLARS)
    } else {
        Decimal::ZERO
    };
    let mut lines = Vec::new();
    if case.cpa_recovered {
        lines.push(Decimal::from(CPA_DOLLARS));
    }
    for (brand, net) in case.reports {
        let net: Decimal = net.parse().unwrap_or_default();
        let key = if case.policy == NetRevenuePolicy::Ringfenced {
            *brand
        } else {
            ""
        };
        let carry = carried.get(key).copied().unwrap_or_default();
        let total = carry + net;
        let share = total.max(Decimal::ZERO) * rate;
        let recovered = share.min(to_recover);
        to_recover -= recovered;
        lines.push((share - recovered).round_dp(2));
        let next = match case.policy {
            NetRevenuePolicy::ResetEachPeriod => Decimal::ZERO,
            _ => total.min(Decimal::ZERO),
        };
        carried.insert(key, next);
    }
    lines
}

fn partner_of(case: &Case) -> Uuid {
    let n = CASES.iter().position(|c| c.name == case.name).unwrap_or(0);
    Uuid::from_u128(0xa000_0200 + n as u128)
}

fn plan_of(case: &Case) -> PlanVersion {
    let rule = |id: &str, kind: ConversionKind, reward: Reward| Rule {
        id: id.into(),
        conditions: Conditions {
            conversion_kind: Some(kind),
            ..Conditions::default()
        },
        reward,
        cap_per_conversion: None,
        cap_per_period: None,
    };
    let mut rules = vec![rule(
        "ngr",
        ConversionKind::NetRevenueReport,
        Reward::NetRevenueShare(pc(SHARE_PERCENT)),
    )];
    if case.cpa_recovered {
        rules.push(rule(
            "cpa",
            ConversionKind::Signup,
            Reward::Flat(m(CPA_DOLLARS)),
        ));
    }
    PlanVersion {
        plan_id: Uuid::from_u128(partner_of(case).as_u128() + 0x1_0000),
        version: 1,
        effective_from: t(1, 1),
        payout_currency: Currency::USD,
        hold_days: 30,
        minimum_payout: m(50),
        version_policy: VersionPolicy::Grandfathered,
        net_revenue_policy: case.policy,
        cpa_recovery: case.cpa_recovered,
        overrides: vec![],
        rules,
    }
}

impl Run {
    /// Every case of [`CASES`]: a partner on its plan, its player's click in January (and
    /// signup, for the hybrid), then one net revenue report a month.
    pub async fn net_revenue_months(&self) -> Result<NgrOutcome, String> {
        self.ngr_setup().await?;
        let mut outcome = NgrOutcome::default();
        for case in &CASES {
            let partner = partner_of(case);
            let player = format!("player-{}", case.name);
            let visitor = format!("ngr-visitor-{}", case.name);
            self.click_link(
                &format!("{}'s link", case.name),
                link_of(partner),
                &visitor,
                t(1, 2),
            )
            .await?;
            let mut lines = Vec::new();
            if case.cpa_recovered {
                let signup = att::RecordConversionRequest {
                    context: self.ctx(t(1, 3)),
                    program_id: PROGRAM.to_string(),
                    r#type: att::ConversionType::Signup as i32,
                    external_id: format!("signup-{}", case.name),
                    customer_id: player.clone(),
                    visitor_id: visitor.clone(),
                    occurred_at: ts(t(1, 3)),
                    ..Default::default()
                };
                let id = self.convert(signup).await?;
                lines.push(self.open_of(&id, partner).await?);
            }
            for (month, (brand, net)) in (1u32..).zip(case.reports.iter()) {
                let report = att::RecordConversionRequest {
                    context: self.ctx(t(month, 28)),
                    program_id: PROGRAM.to_string(),
                    r#type: att::ConversionType::NetRevenueReport as i32,
                    external_id: format!("ngr-{}-2026-{month:02}", case.name),
                    customer_id: player.clone(),
                    visitor_id: visitor.clone(),
                    net_revenue_report: Some(att::NetRevenueReport {
                        period: format!("2026-{month:02}"),
                        net: usd(net),
                        brand: (*brand).into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let id = self.convert(report).await?;
                lines.push(self.open_of(&id, partner).await?);
            }
            outcome.lines.insert(case.name, lines);
            outcome
                .pending
                .insert(case.name, self.pending_of(partner).await?);
        }
        Ok(outcome)
    }

    async fn ngr_setup(&self) -> Result<(), String> {
        self.open_program(PROGRAM, "Casino and sportsbook affiliates", "igaming")
            .await?;
        for case in &CASES {
            let plan = plan_of(case);
            self.publish(&plan).await?;
            self.enrol(Enrolment {
                program: PROGRAM,
                partner: partner_of(case),
                name: case.name,
                plan: plan.plan_id,
                parent: None,
                link: true,
            })
            .await?;
        }
        Ok(())
    }
}
