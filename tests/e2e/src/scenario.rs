//! The twelve-month program, driven over gRPC. Every call carries its business time
//! (`RequestContext.occurred_at`), so two runs against fresh deployments make the same
//! decisions. Where one service learns from another over the bus, the scenario waits for the
//! fact to be visible through a read RPC (bounded), never for a fixed time.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use pl_commission_engine::{
    Base, Conditions, NetRevenuePolicy, Percent, PlanVersion, RecurringDuration, Reward, Rule,
    ScheduleStep, Tier, TierMode, TierPrice, VersionPolicy, VolumeBasis,
};
use pl_money::{Currency, Money};
use pl_proto::attribution::v1 as att;
use pl_proto::audit::v1 as aud;
use pl_proto::commissions::v1 as com;
use pl_proto::common::v1 as common;
use pl_proto::compliance::v1 as cmp;
use pl_proto::crm::v1 as crm;
use pl_proto::prost_types::Timestamp;
use tonic::Code;
use uuid::Uuid;

use crate::{Clients, Endpoints};

mod disclosure;
mod enrol;
mod hierarchy;
mod ngr;
mod sanctions;
mod split;

pub use disclosure::DisclosureOutcome;
pub use hierarchy::HierarchyOutcome;
pub use ngr::{expected_lines, NgrOutcome, CASES as NGR_CASES};
pub use sanctions::{SanctionsOutcome, SANCTIONS_LIST};
pub use split::SplitOutcome;

/// How long a fact may take to travel between services before the scenario gives up.
pub const PROPAGATION_TIMEOUT_MS: u64 = 60_000;
const POLL_MS: u64 = 5;
/// How long one `GetConversionAccrual` waits in commissions for the accrual to become visible:
/// well inside the calls' own timeout ([`crate::CALL_TIMEOUT_MS`]), so a slow accrual is asked
/// again rather than cut off by the client.
const ACCRUAL_WAIT_MS: u32 = 5_000;

pub const SAAS: Uuid = Uuid::from_u128(0x5000_0001);
pub const FOREX: Uuid = Uuid::from_u128(0x5000_0002);
pub const CAMPAIGN: Uuid = Uuid::from_u128(0xca00_0001);

/// The partners: (name, id, program, CRM type, plan).
pub const PARTNERS: [(&str, u128, Uuid, crm::PartnerType); 7] = [
    ("affiliate", 0xa1, SAAS, crm::PartnerType::Affiliate),
    ("referral", 0xa2, SAAS, crm::PartnerType::Referral),
    ("outsourcing", 0xa3, SAAS, crm::PartnerType::Outsourcing),
    ("reseller", 0xa4, SAAS, crm::PartnerType::Reseller),
    ("influencer", 0xa5, SAAS, crm::PartnerType::Influencer),
    ("ib", 0xa6, FOREX, crm::PartnerType::IntroducingBroker),
    ("sub-ib", 0xa7, FOREX, crm::PartnerType::IntroducingBroker),
];

pub fn partner(name: &str) -> Uuid {
    PARTNERS
        .iter()
        .find(|p| p.0 == name)
        .map_or(Uuid::nil(), |p| Uuid::from_u128(0xa000_0000 + p.1))
}

fn link(name: &str) -> Uuid {
    link_of(partner(name))
}

/// A partner's tracking link in the scenarios.
fn link_of(partner: Uuid) -> Uuid {
    Uuid::from_u128(0x11c0_0000 + partner.as_u128())
}

/// Noon UTC on a day of 2026.
pub fn t(month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, month, day, 12, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn ts(at: DateTime<Utc>) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    })
}

fn usd(amount: &str) -> Option<common::Money> {
    Some(common::Money {
        amount: amount.into(),
        currency: "USD".into(),
    })
}

fn m(units: i64) -> Money {
    Money::from_minor_units(units * 100, Currency::USD)
}

fn pc(p: i64) -> Percent {
    Percent::new(p).unwrap_or(Percent::ZERO)
}

/// One partner's balances in USD, as `GetBalances` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balances {
    pub pending: String,
    pub payable: String,
    pub paid: String,
}

/// What the year produced, as read back over gRPC.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub balances: BTreeMap<String, Balances>,
    /// The affiliate's payable right after the chargeback of an already paid sale.
    pub affiliate_payable_after_chargeback: String,
    /// Why the referral partner was skipped by the June payout run (it was on hold).
    pub referral_june_skip_reasons: Vec<String>,
    /// Paid per partner over the year, from the payout runs' items.
    pub paid_by_runs: BTreeMap<String, String>,
    /// Recurring shares as of year end: (partner, customer, share to date, ended).
    pub recurring: Vec<(String, String, String, bool)>,
    /// The influencer's statement for the year, one line per entry.
    pub influencer_statement: Vec<String>,
    /// The audit's verdict on the commissions log (`AuditService.Verify`).
    pub log_intact: bool,
    pub events_verified: u64,
}

/// Retries `probe` until it yields a value, for at most [`PROPAGATION_TIMEOUT_MS`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_millis(PROPAGATION_TIMEOUT_MS);
    let mut last = String::new();
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{what}: not visible within {PROPAGATION_TIMEOUT_MS} ms {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

fn status(what: &str) -> impl Fn(tonic::Status) -> String + '_ {
    move |s| format!("{what}: {} {}", s.code(), s.message())
}

/// The driver: clients, a counter for idempotency keys, and a progress printer.
pub struct Run {
    c: Clients,
    next_key: AtomicU64,
    say: Box<dyn Fn(&str) + Send + Sync>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Run")
    }
}

impl Run {
    pub fn new(e: &Endpoints, say: Box<dyn Fn(&str) + Send + Sync>) -> Result<Self, String> {
        Ok(Self {
            c: Clients::connect(e)?,
            next_key: AtomicU64::new(1),
            say,
        })
    }

    fn ctx(&self, at: DateTime<Utc>) -> Option<common::RequestContext> {
        let n = self.next_key.fetch_add(1, Ordering::Relaxed);
        Some(common::RequestContext {
            idempotency_key: format!("e2e-{n}"),
            occurred_at: ts(at),
            correlation_id: String::new(),
        })
    }

    // ----- set-up -----------------------------------------------------------------------------

    async fn programs(&self) -> Result<(), String> {
        let mut crm = self.c.crm.clone();
        for (id, name, vertical, regulated) in [
            (SAAS, "SaaS partners", "saas", false),
            (FOREX, "Forex introducing brokers", "forex", true),
        ] {
            crm.create_program(crm::CreateProgramRequest {
                context: self.ctx(t(1, 1)),
                program_id: id.to_string(),
                name: name.into(),
                vertical: vertical.into(),
                regulated,
                jurisdictions: if regulated { vec!["CY".into()] } else { vec![] },
                settings: Some(crm::ProgramSettings {
                    auto_approve: false,
                    max_levels: 2,
                    deal_registration_days: 90,
                }),
                tiers: vec![],
            })
            .await
            .map_err(status("create program"))?;
        }
        self.c
            .compliance
            .clone()
            .configure_program(cmp::ConfigureProgramRequest {
                context: self.ctx(t(1, 1)),
                program_id: FOREX.to_string(),
                regulated: true,
                jurisdictions: vec!["CY".into()],
                rules: None,
                configured_by: "compliance-officer".into(),
                required_verifications: vec![],
            })
            .await
            .map_err(status("configure regulated program"))?;
        Ok(())
    }

    fn plans() -> Vec<(&'static str, PlanVersion)> {
        let base = |id: u128, rules: Vec<Rule>, overrides: Vec<Percent>| PlanVersion {
            plan_id: Uuid::from_u128(0xb000_0000 + id),
            version: 1,
            effective_from: t(1, 1),
            payout_currency: Currency::USD,
            hold_days: 30,
            minimum_payout: m(50),
            version_policy: VersionPolicy::Grandfathered,
            net_revenue_policy: NetRevenuePolicy::CarryForwardNegative,
            cpa_recovery: false,
            overrides,
            rules,
        };
        let rule = |id: &str, reward: Reward| Rule {
            id: id.into(),
            conditions: Conditions::default(),
            reward,
            cap_per_conversion: None,
            cap_per_period: None,
        };
        vec![
            (
                "affiliate",
                base(1, vec![rule("cpa", Reward::Flat(m(50)))], vec![]),
            ),
            (
                "referral",
                base(
                    2,
                    vec![rule(
                        "first-year",
                        Reward::FirstYearPercent {
                            percent: pc(20),
                            of: Base::Gross,
                        },
                    )],
                    vec![],
                ),
            ),
            (
                "outsourcing",
                base(
                    3,
                    vec![rule(
                        "lifetime-share",
                        Reward::Recurring {
                            schedule: vec![ScheduleStep {
                                from_month: 1,
                                to_month: None,
                                percent: pc(15),
                            }],
                            duration: RecurringDuration::Lifetime,
                            of: Base::Gross,
                        },
                    )],
                    vec![],
                ),
            ),
            (
                "reseller",
                base(4, vec![rule("margin", Reward::ResellerMargin)], vec![]),
            ),
            (
                "influencer",
                base(
                    5,
                    vec![rule(
                        "flat-plus-commission",
                        Reward::Hybrid {
                            flat: m(25),
                            percent: pc(10),
                            of: Base::Gross,
                        },
                    )],
                    vec![],
                ),
            ),
            (
                "ib",
                base(
                    6,
                    vec![rule(
                        "tiered-lots",
                        Reward::TieredVolume {
                            basis: VolumeBasis::Lots,
                            mode: TierMode::Tiered,
                            tiers: vec![
                                Tier {
                                    from: 0.into(),
                                    price: TierPrice::PerUnit(m(5)),
                                },
                                Tier {
                                    from: 100.into(),
                                    price: TierPrice::PerUnit(m(7)),
                                },
                            ],
                        },
                    )],
                    vec![pc(10)],
                ),
            ),
        ]
    }

    async fn plans_and_assignments(&self) -> Result<(), String> {
        let mut com = self.c.commissions.clone();
        let plans = Self::plans();
        for (_, plan) in &plans {
            com.publish_plan_version(com::PublishPlanVersionRequest {
                context: self.ctx(t(1, 1)),
                plan_id: plan.plan_id.to_string(),
                plan_json: serde_json::to_string(plan).map_err(|e| e.to_string())?,
            })
            .await
            .map_err(status("publish plan"))?;
        }
        for (name, ..) in PARTNERS {
            let plan_name = if name == "sub-ib" { "ib" } else { name };
            let plan = plans
                .iter()
                .find(|(n, _)| *n == plan_name)
                .map(|(_, p)| p.plan_id)
                .unwrap_or_default();
            com.assign_plan(com::AssignPlanRequest {
                context: self.ctx(t(1, 1)),
                partner_id: partner(name).to_string(),
                plan_id: plan.to_string(),
                effective_from: ts(t(1, 1)),
                ..Default::default()
            })
            .await
            .map_err(status("assign plan"))?;
        }
        Ok(())
    }

    async fn partners(&self) -> Result<(), String> {
        let mut crm = self.c.crm.clone();
        let mut compliance = self.c.compliance.clone();
        for (name, _, program, kind) in PARTNERS {
            let id = partner(name);
            crm.apply_partner(crm::ApplyPartnerRequest {
                context: self.ctx(t(1, 1)),
                partner_id: id.to_string(),
                program_id: program.to_string(),
                display_name: format!("{name} partner"),
                partner_type: kind as i32,
                email: format!("{name}@partners.example"),
                country: "CY".into(),
            })
            .await
            .map_err(status("apply"))?;
            for (kind, jurisdiction) in [
                (cmp::VerificationKind::Kyc, ""),
                (cmp::VerificationKind::TaxFormW9, ""),
            ]
            .into_iter()
            .chain((program == FOREX).then_some((cmp::VerificationKind::Licence, "CY")))
            {
                compliance
                    .record_verification(cmp::RecordVerificationRequest {
                        context: self.ctx(t(1, 1)),
                        partner_id: id.to_string(),
                        kind: kind as i32,
                        status: cmp::VerificationStatus::Verified as i32,
                        reference: format!("chk-{name}-{}", kind as i32),
                        recorded_by: "onboarding".into(),
                        valid_until: None,
                        jurisdiction: jurisdiction.into(),
                        signed_at: None,
                    })
                    .await
                    .map_err(status("record verification"))?;
            }
            crm.approve_partner(crm::ApprovePartnerRequest {
                context: self.ctx(t(1, 1)),
                partner_id: id.to_string(),
                tier: String::new(),
                note: "welcome".into(),
            })
            .await
            .map_err(status("approve"))?;
            if program == FOREX {
                compliance
                    .grant_compliance_approval(cmp::GrantComplianceApprovalRequest {
                        context: self.ctx(t(1, 1)),
                        partner_id: id.to_string(),
                        program_id: FOREX.to_string(),
                        reference: format!("case-{name}"),
                        approved_by: "compliance-officer".into(),
                    })
                    .await
                    .map_err(status("grant compliance approval"))?;
            }
        }
        crm.set_partner_parent(crm::SetPartnerParentRequest {
            context: self.ctx(t(1, 1)),
            partner_id: partner("sub-ib").to_string(),
            parent_partner_id: partner("ib").to_string(),
        })
        .await
        .map_err(status("set parent"))?;
        // Overrides go to the upline commissions learnt from CRM.
        self.standing_seen(partner("sub-ib"), t(1, 1), None, &[partner("ib")])
            .await?;
        // Regulated partners become active when CRM has consumed compliance's approval.
        for name in ["ib", "sub-ib"] {
            self.approved_in_crm(partner(name)).await?;
        }
        Ok(())
    }

    async fn assets(&self) -> Result<(), String> {
        let mut crm = self.c.crm.clone();
        crm.create_campaign(crm::CreateCampaignRequest {
            context: self.ctx(t(1, 2)),
            campaign_id: CAMPAIGN.to_string(),
            program_id: SAAS.to_string(),
            name: "spring creator campaign".into(),
            starts_at: ts(t(1, 2)),
            ends_at: ts(t(12, 31)),
            members: vec![crm::CampaignMember {
                partner_id: partner("influencer").to_string(),
                flat_fee: usd("2000.00"),
                fee_committed_at: None,
                bonus_awarded_at: None,
            }],
            bonus: None,
        })
        .await
        .map_err(status("create campaign"))?;
        for name in ["affiliate", "reseller", "influencer", "ib", "sub-ib"] {
            crm.issue_tracking_link(crm::IssueTrackingLinkRequest {
                context: self.ctx(t(1, 2)),
                tracking_link_id: link(name).to_string(),
                partner_id: partner(name).to_string(),
                campaign_id: if name == "influencer" {
                    CAMPAIGN.to_string()
                } else {
                    String::new()
                },
                destination_url: "https://vendor.example/".into(),
                expires_at: None,
            })
            .await
            .map_err(status("issue link"))?;
        }
        crm.issue_coupon(crm::IssueCouponRequest {
            context: self.ctx(t(1, 2)),
            partner_id: partner("referral").to_string(),
            code: "REFER20".into(),
            campaign_id: String::new(),
            valid_from: ts(t(1, 2)),
            expires_at: None,
        })
        .await
        .map_err(status("issue coupon"))?;
        let deal = Uuid::from_u128(0xdea1);
        crm.register_deal(crm::RegisterDealRequest {
            context: self.ctx(t(1, 2)),
            deal_id: deal.to_string(),
            partner_id: partner("outsourcing").to_string(),
            customer_domain: "acme.example".into(),
            company_name: "Acme".into(),
            contact: Some(crm::DealContact {
                name: "Ada".into(),
                email: "ada@acme.example".into(),
            }),
            estimated_value: usd("12000.00"),
            notes: String::new(),
        })
        .await
        .map_err(status("register deal"))?;
        crm.approve_deal(crm::ApproveDealRequest {
            context: self.ctx(t(1, 2)),
            deal_id: deal.to_string(),
        })
        .await
        .map_err(status("approve deal"))?;
        crm.win_deal(crm::WinDealRequest {
            context: self.ctx(t(1, 3)),
            deal_id: deal.to_string(),
            customer_id: "acme".into(),
        })
        .await
        .map_err(status("win deal"))?;
        Ok(())
    }

    /// Programs, plans, partners (verified, approved, activated) and their tracking assets.
    pub async fn setup(&self) -> Result<(), String> {
        self.programs().await?;
        self.plans_and_assignments().await?;
        self.partners().await?;
        self.assets().await
    }

    // ----- touchpoints and conversions ----------------------------------------------------------

    /// A click on a partner's link, retried while attribution has not yet learned the link
    /// from partner CRM (a refused click writes nothing).
    pub async fn click(&self, name: &str, visitor: &str, at: DateTime<Utc>) -> Result<(), String> {
        self.click_link(&format!("{name}'s link"), link(name), visitor, at)
            .await
    }

    /// A click on a tracking link (`what` names it in errors), retried like [`Run::click`].
    async fn click_link(
        &self,
        what: &str,
        link_id: Uuid,
        visitor: &str,
        at: DateTime<Utc>,
    ) -> Result<(), String> {
        let n = self.next_key.fetch_add(1, Ordering::Relaxed);
        eventually(&format!("click on {what}"), || {
            let mut att = self.c.attribution.clone();
            let ctx = self.ctx(at);
            async move {
                let r = att
                    .record_touchpoint(att::RecordTouchpointRequest {
                        context: ctx,
                        visitor_id: visitor.into(),
                        customer_id: String::new(),
                        occurred_at: ts(at),
                        touch: Some(att::record_touchpoint_request::Touch::Click(
                            att::ClickTouch {
                                click_id: Uuid::from_u128(0xc11c_0000 + u128::from(n)).to_string(),
                                tracking_link_id: link_id.to_string(),
                                landing_url: "https://vendor.example/pricing".into(),
                                // One address per click, as visitors have: clicks from a
                                // few shared addresses would trip the click-velocity rule
                                // (over 20 per address and hour) on every later sale.
                                ip_address: format!(
                                    "10.{}.{}.{}",
                                    (n >> 16) & 255,
                                    (n >> 8) & 255,
                                    n & 255
                                ),
                                user_agent: "Mozilla/5.0".into(),
                                ..Default::default()
                            },
                        )),
                    })
                    .await;
                match r {
                    Ok(_) => Ok(Some(())),
                    Err(s) if s.code() == Code::FailedPrecondition => Err(s.message().into()),
                    Err(s) => Err(format!("click: {} {}", s.code(), s.message())),
                }
            }
        })
        .await
    }

    async fn coupon(&self, customer: &str, code: &str, at: DateTime<Utc>) -> Result<(), String> {
        let n = self.next_key.fetch_add(1, Ordering::Relaxed);
        eventually(&format!("coupon {code}"), || {
            let mut att = self.c.attribution.clone();
            let ctx = self.ctx(at);
            async move {
                let r = att
                    .record_touchpoint(att::RecordTouchpointRequest {
                        context: ctx,
                        visitor_id: String::new(),
                        customer_id: customer.into(),
                        occurred_at: ts(at),
                        touch: Some(att::record_touchpoint_request::Touch::Coupon(
                            att::CouponRedemption {
                                redemption_id: Uuid::from_u128(0xc0d0_0000 + u128::from(n))
                                    .to_string(),
                                program_id: SAAS.to_string(),
                                code: code.into(),
                            },
                        )),
                    })
                    .await;
                match r {
                    Ok(_) => Ok(Some(())),
                    Err(s) if s.code() == Code::FailedPrecondition => Err(s.message().into()),
                    Err(s) => Err(format!("coupon: {} {}", s.code(), s.message())),
                }
            }
        })
        .await
    }

    /// Records a conversion and waits until commissions has accrued it (commissions answers
    /// as soon as the accrual is visible, `wait_ms`; no polling here). Returns its id.
    pub async fn convert(&self, req: att::RecordConversionRequest) -> Result<String, String> {
        let what = req.external_id.clone();
        let a = self
            .c
            .attribution
            .clone()
            .record_conversion(req)
            .await
            .map_err(status("record conversion"))?
            .into_inner();
        if !a.attributed {
            return Err(format!("{what} was not attributed: {}", a.explanation));
        }
        let id = a.conversion_id.clone();
        eventually(&format!("accrual of {what}"), || {
            let mut com = self.c.commissions.clone();
            let id = id.clone();
            async move {
                let r = com
                    .get_conversion_accrual(com::GetConversionAccrualRequest {
                        conversion_id: id,
                        wait_ms: ACCRUAL_WAIT_MS,
                    })
                    .await
                    .map_err(status("get accrual"))?
                    .into_inner();
                Ok(r.accrued.then_some(()))
            }
        })
        .await?;
        Ok(a.conversion_id)
    }

    /// Records a refund or chargeback of `original` and waits until commissions applied it.
    async fn reverse(
        &self,
        req: att::RecordConversionRequest,
        original: &str,
    ) -> Result<(), String> {
        let what = req.external_id.clone();
        let before = self.reversals(original).await?;
        self.c
            .attribution
            .clone()
            .record_conversion(req)
            .await
            .map_err(status("record reversal"))?;
        eventually(&format!("reversal {what}"), || async {
            Ok((self.reversals(original).await? > before).then_some(()))
        })
        .await
    }

    async fn reversals(&self, conversion: &str) -> Result<usize, String> {
        let r = self
            .c
            .commissions
            .clone()
            .get_conversion_accrual(com::GetConversionAccrualRequest {
                conversion_id: conversion.into(),
                // A reversal does not end a wait (it ends at the accrual): asked at once, polled.
                wait_ms: 0,
            })
            .await
            .map_err(status("get accrual"))?
            .into_inner();
        Ok(r.partners.iter().map(|p| p.reversal_ids.len()).sum())
    }

    pub fn conversion(
        &self,
        kind: att::ConversionType,
        external_id: &str,
        customer: &str,
        amount: Option<&str>,
        at: DateTime<Utc>,
    ) -> att::RecordConversionRequest {
        att::RecordConversionRequest {
            context: self.ctx(at),
            program_id: SAAS.to_string(),
            r#type: kind as i32,
            external_id: external_id.into(),
            customer_id: customer.into(),
            amount: amount.and_then(usd),
            occurred_at: ts(at),
            customer_country: "CY".into(),
            ..Default::default()
        }
    }

    async fn sale_after_click(
        &self,
        partner_name: &str,
        n: u32,
        amount: &str,
        click_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<String, String> {
        let visitor = format!("visitor-{partner_name}-{n}");
        self.click(partner_name, &visitor, click_at).await?;
        let mut req = self.conversion(
            att::ConversionType::Sale,
            &format!("sale-{partner_name}-{n}"),
            &format!("cust-{partner_name}-{n}"),
            Some(amount),
            at,
        );
        req.visitor_id = visitor;
        self.convert(req).await
    }

    async fn trade(
        &self,
        partner_name: &str,
        n: u32,
        gross: &str,
        lots: &str,
        at: DateTime<Utc>,
    ) -> Result<String, String> {
        let visitor = format!("trader-{partner_name}-{n}");
        self.click(partner_name, &visitor, at - chrono::Duration::hours(2))
            .await?;
        let mut req = self.conversion(
            att::ConversionType::Sale,
            &format!("trade-{partner_name}-{n}"),
            &format!("trader-{partner_name}-{n}"),
            Some(gross),
            at,
        );
        req.program_id = FOREX.to_string();
        req.visitor_id = visitor;
        req.lots = lots.into();
        self.convert(req).await
    }

    // ----- the ledger side ----------------------------------------------------------------------

    async fn balances(&self, name: &str, as_of: Option<DateTime<Utc>>) -> Result<Balances, String> {
        let b = self
            .c
            .commissions
            .clone()
            .get_balances(com::GetBalancesRequest {
                partner_id: partner(name).to_string(),
                as_of: as_of.map(|d| com::AsOf {
                    business_date: ts(d),
                    ..Default::default()
                }),
            })
            .await
            .map_err(status("get balances"))?
            .into_inner();
        let usd = b.currencies.iter().find(|c| c.currency == "USD");
        Ok(usd.map_or(
            Balances {
                pending: "0.00".into(),
                payable: "0.00".into(),
                paid: "0.00".into(),
            },
            |c| Balances {
                pending: c.pending.clone(),
                payable: c.payable.clone(),
                paid: c.paid.clone(),
            },
        ))
    }

    /// Waits until commissions' eligibility projection says what compliance decided.
    async fn eligibility_is(
        &self,
        name: &str,
        at: DateTime<Utc>,
        eligible: bool,
    ) -> Result<(), String> {
        eventually(
            &format!("payout eligibility of {name} = {eligible}"),
            || async {
                let e = self
                    .c
                    .commissions
                    .clone()
                    .get_payout_eligibility(com::GetPayoutEligibilityRequest {
                        partner_id: partner(name).to_string(),
                        as_of: ts(at),
                    })
                    .await
                    .map_err(status("get eligibility"))?
                    .into_inner();
                Ok((e.eligible == eligible).then_some(()))
            },
        )
        .await
    }

    /// Matures every partner's commissions, runs the payouts of both programs at `at`, and
    /// settles every payment the next hour. Returns the items per partner name.
    async fn payday(
        &self,
        at: DateTime<Utc>,
        held: &[&str],
    ) -> Result<BTreeMap<String, com::PayoutItem>, String> {
        let mut com = self.c.commissions.clone();
        for (name, ..) in PARTNERS {
            self.eligibility_is(name, at, !held.contains(&name)).await?;
            com.mature_commissions(com::MatureCommissionsRequest {
                context: self.ctx(at),
                partner_id: partner(name).to_string(),
                as_of: ts(at),
            })
            .await
            .map_err(status("mature"))?;
        }
        let mut items = BTreeMap::new();
        for program in [SAAS, FOREX] {
            let ids: Vec<String> = PARTNERS
                .iter()
                .filter(|p| p.2 == program)
                .map(|p| partner(p.0).to_string())
                .collect();
            let run = com
                .create_payout_run(com::CreatePayoutRunRequest {
                    context: self.ctx(at),
                    program_id: program.to_string(),
                    as_of: ts(at),
                    partner_ids: ids,
                })
                .await
                .map_err(status("payout run"))?
                .into_inner();
            for item in run.items {
                if item.status == com::PayoutItemStatus::Sent as i32 {
                    com.settle_payout_item(com::SettlePayoutItemRequest {
                        context: self.ctx(at + chrono::Duration::hours(1)),
                        run_id: run.run_id.clone(),
                        partner_id: item.partner_id.clone(),
                        currency: item.currency.clone(),
                    })
                    .await
                    .map_err(status("settle"))?;
                }
                let name = PARTNERS
                    .iter()
                    .find(|p| partner(p.0).to_string() == item.partner_id)
                    .map_or("?", |p| p.0);
                items.insert(name.to_owned(), item);
            }
        }
        Ok(items)
    }
}

fn add(total: &mut BTreeMap<String, pl_money::Decimal>, name: &str, amount: &str) {
    if let Ok(a) = pl_money::parse_amount(amount) {
        *total.entry(name.to_owned()).or_default() += a;
    }
}

/// Runs the whole year against `endpoints`; `say` prints progress (the demo) or nothing.
pub async fn run(
    endpoints: &Endpoints,
    say: Box<dyn Fn(&str) + Send + Sync>,
) -> Result<Outcome, String> {
    use att::ConversionType as K;
    let r = Run::new(endpoints, say)?;
    let mut out = Outcome::default();
    (r.say)("set-up: programs, plans, partners (KYC, W-9, CY licences), assets");
    r.setup().await?;

    let mut paid: BTreeMap<String, pl_money::Decimal> = BTreeMap::new();
    let mut sale_a1 = String::new();
    let mut sale_i1 = String::new();
    for month in 1..=12u32 {
        (r.say)(&format!("month {month:>2}: conversions"));
        match month {
            1 => {
                sale_a1 = r
                    .sale_after_click("affiliate", 1, "200.00", t(1, 3), t(1, 5))
                    .await?;
                r.coupon("cust-referral", "refer20", t(1, 4)).await?;
            }
            2 => {
                r.c.crm
                    .clone()
                    .commit_campaign_fee(crm::CommitCampaignFeeRequest {
                        context: r.ctx(t(2, 1)),
                        campaign_id: CAMPAIGN.to_string(),
                        partner_id: partner("influencer").to_string(),
                    })
                    .await
                    .map_err(status("commit campaign fee"))?;
                eventually("the campaign fee in the influencer's payable", || async {
                    let b = r.balances("influencer", None).await?;
                    Ok((b.payable == "2000.00").then_some(()))
                })
                .await?;
                sale_i1 = r
                    .sale_after_click("influencer", 1, "500.00", t(2, 8), t(2, 9))
                    .await?;
            }
            3 => {
                let visitor = "visitor-reseller-1";
                r.click("reseller", visitor, t(3, 7)).await?;
                let mut req = r.conversion(
                    K::Sale,
                    "sale-reseller-1",
                    "cust-reseller-1",
                    Some("2000.00"),
                    t(3, 8),
                );
                req.visitor_id = visitor.into();
                req.list_price = usd("1200.00");
                req.partner_price = usd("1000.00");
                req.quantity = 2;
                r.convert(req).await?;
                r.trade("ib", 1, "600.00", "60", t(3, 10)).await?;
                r.trade("ib", 2, "500.00", "50", t(3, 11)).await?;
                r.trade("sub-ib", 1, "300.00", "30", t(3, 12)).await?;
                let mut refund = r.conversion(
                    K::Refund,
                    "refund-influencer-1",
                    "cust-influencer-1",
                    Some("125.00"),
                    t(3, 15),
                );
                refund.original_external_id = "sale-influencer-1".into();
                r.reverse(refund, &sale_i1).await?;
            }
            4 => {
                r.sale_after_click("influencer", 2, "300.00", t(4, 8), t(4, 9))
                    .await?;
                let mut chargeback = r.conversion(
                    K::Chargeback,
                    "chargeback-affiliate-1",
                    "cust-affiliate-1",
                    Some("200.00"),
                    t(4, 12),
                );
                chargeback.original_external_id = "sale-affiliate-1".into();
                r.reverse(chargeback, &sale_a1).await?;
                out.affiliate_payable_after_chargeback =
                    r.balances("affiliate", Some(t(4, 20))).await?.payable;
            }
            5 => {
                r.sale_after_click("affiliate", 2, "200.00", t(5, 4), t(5, 5))
                    .await?;
            }
            6 => {
                r.c.compliance
                    .clone()
                    .place_payout_hold(cmp::PlacePayoutHoldRequest {
                        context: r.ctx(t(6, 20)),
                        partner_id: partner("referral").to_string(),
                        hold_id: "review-2026-06".into(),
                        reason: "tax residency review".into(),
                        placed_by: "compliance-officer".into(),
                    })
                    .await
                    .map_err(status("place hold"))?;
            }
            7 => {
                r.c.compliance
                    .clone()
                    .release_payout_hold(cmp::ReleasePayoutHoldRequest {
                        context: r.ctx(t(7, 20)),
                        partner_id: partner("referral").to_string(),
                        hold_id: "review-2026-06".into(),
                        reason: "residency confirmed".into(),
                        released_by: "compliance-officer".into(),
                    })
                    .await
                    .map_err(status("release hold"))?;
            }
            8 => {
                let mut churn = r.conversion(
                    K::SubscriptionCancelled,
                    "cancel-acme",
                    "acme",
                    None,
                    t(8, 20),
                );
                churn.customer_domain = "acme.example".into();
                r.c.attribution
                    .clone()
                    .record_conversion(churn)
                    .await
                    .map_err(status("churn"))?;
            }
            _ => {}
        }
        // Monthly invoices: the referred customer all year, Acme until its churn in August and
        // one last invoice in September (after the churn, so it earns nothing).
        let mut invoice = r.conversion(
            K::SubscriptionInvoicePaid,
            &format!("inv-referral-{month}"),
            "cust-referral",
            Some("100.00"),
            t(month, 6),
        );
        invoice.program_id = SAAS.to_string();
        r.convert(invoice).await?;
        if month <= 9 {
            let mut invoice = r.conversion(
                K::SubscriptionInvoicePaid,
                &format!("inv-acme-{month}"),
                "acme",
                Some("1000.00"),
                t(month, 7),
            );
            invoice.customer_domain = "acme.example".into();
            r.convert(invoice).await?;
        }
        if month >= 2 {
            let held: &[&str] = if month == 6 { &["referral"] } else { &[] };
            let items = r.payday(t(month, 28), held).await?;
            for (name, item) in &items {
                if item.status == com::PayoutItemStatus::Sent as i32 {
                    add(&mut paid, name, &item.amount);
                }
            }
            if month == 6 {
                out.referral_june_skip_reasons = items
                    .get("referral")
                    .map(|i| i.skip_reasons.iter().map(|s| s.code.clone()).collect())
                    .unwrap_or_default();
            }
            (r.say)(&format!(
                "month {month:>2}: payout run paid {}",
                items
                    .iter()
                    .filter(|(_, i)| !i.amount.is_empty())
                    .map(|(n, i)| format!("{n} {}", i.amount))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }

    for (name, ..) in PARTNERS {
        out.balances
            .insert(name.to_owned(), r.balances(name, None).await?);
    }
    out.paid_by_runs = paid.into_iter().map(|(n, a)| (n, a.to_string())).collect();
    for name in ["referral", "outsourcing"] {
        let shares =
            r.c.commissions
                .clone()
                .list_recurring_shares(com::ListRecurringSharesRequest {
                    partner_id: partner(name).to_string(),
                    as_of: ts(t(12, 31)),
                })
                .await
                .map_err(status("recurring shares"))?
                .into_inner();
        for s in shares.shares {
            out.recurring.push((
                name.to_owned(),
                s.customer_id,
                s.share_to_date.map(|m| m.amount).unwrap_or_default(),
                s.ended_at.is_some(),
            ));
        }
    }
    let statement =
        r.c.commissions
            .clone()
            .get_statement(com::GetStatementRequest {
                partner_id: partner("influencer").to_string(),
                currency: "USD".into(),
                from: ts(t(1, 1)),
                to: ts(Utc
                    .with_ymd_and_hms(2027, 1, 1, 0, 0, 0)
                    .single()
                    .unwrap_or(t(12, 31))),
            })
            .await
            .map_err(status("statement"))?
            .into_inner();
    out.influencer_statement = statement
        .entries
        .iter()
        .map(|e| {
            format!(
                "{} {:>10} {}",
                e.occurred_at
                    .as_ref()
                    .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, 0))
                    .map(|t| t.date_naive().to_string())
                    .unwrap_or_default(),
                e.amount,
                e.explanation
            )
        })
        .collect();
    let verified =
        r.c.audit
            .clone()
            .verify(aud::VerifyRequest {
                public_key: String::new(),
            })
            .await
            .map_err(status("audit verify"))?
            .into_inner();
    out.log_intact = verified.intact;
    out.events_verified = verified.events_checked;
    Ok(out)
}
