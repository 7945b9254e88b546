//! A regulated program's required disclosure stops a payout across services: compliance holds
//! the payouts of a partner of a program that requires a disclosure acknowledgement until it is
//! recorded; commissions, told over the bus, skips the partner's payable balance with the hold
//! named; once the acknowledgement is recorded, the run after pays.

use pl_proto::attribution::v1 as att;
use pl_proto::commissions::v1 as com;
use pl_proto::compliance::v1 as cmp;
use pl_proto::crm::v1 as crm;
use uuid::Uuid;

use super::enrol::Enrolment;
use super::{link_of, status, t, ts, usd, Run};

const PROGRAM: Uuid = Uuid::from_u128(0x5000_0007);
const PLAN: Uuid = Uuid::from_u128(0xb000_0040);
const PARTNER: Uuid = Uuid::from_u128(0xa000_0400);

/// What the payout runs did with the partner.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisclosureOutcome {
    /// The skip reasons (code: detail) in the run before the acknowledgement.
    pub skipped_for: Vec<String>,
    /// The amount paid by the run after it.
    pub paid_after_acknowledgement: String,
}

impl Run {
    /// A regulated program (Cyprus) requiring a disclosure acknowledgement; a partner with KYC,
    /// a W-9, a licence and compliance's approval, a 100.00 USD sale under a 10% plan without
    /// a hold, matured; a payout run; the acknowledgement recorded; a run.
    pub async fn disclosure_holds_a_payout(&self) -> Result<DisclosureOutcome, String> {
        self.c
            .crm
            .clone()
            .create_program(crm::CreateProgramRequest {
                context: self.ctx(t(1, 1)),
                program_id: PROGRAM.to_string(),
                name: "Disclosed introducers".into(),
                vertical: "forex".into(),
                regulated: true,
                jurisdictions: vec!["CY".into()],
                settings: Some(crm::ProgramSettings {
                    auto_approve: false,
                    max_levels: 1,
                    deal_registration_days: 90,
                }),
                tiers: vec![],
            })
            .await
            .map_err(status("create program"))?;
        let mut compliance = self.c.compliance.clone();
        compliance
            .configure_program(cmp::ConfigureProgramRequest {
                context: self.ctx(t(1, 1)),
                program_id: PROGRAM.to_string(),
                regulated: true,
                jurisdictions: vec!["CY".into()],
                rules: None,
                configured_by: "compliance-officer".into(),
                required_verifications: vec![
                    cmp::VerificationKind::DisclosureAcknowledgement as i32,
                ],
            })
            .await
            .map_err(status("configure program"))?;
        self.publish_ten_percent(PLAN).await?;
        self.enrol(Enrolment {
            program: PROGRAM,
            partner: PARTNER,
            name: "disclosed introducer",
            plan: PLAN,
            parent: None,
            // Issued once compliance's approval activated the partner.
            link: false,
        })
        .await?;
        for (kind, jurisdiction) in [
            (cmp::VerificationKind::Kyc, ""),
            (cmp::VerificationKind::TaxFormW9, ""),
            (cmp::VerificationKind::Licence, "CY"),
        ] {
            compliance
                .record_verification(cmp::RecordVerificationRequest {
                    context: self.ctx(t(1, 1)),
                    partner_id: PARTNER.to_string(),
                    kind: kind as i32,
                    status: cmp::VerificationStatus::Verified as i32,
                    reference: format!("chk-disclosed-{}", kind as i32),
                    recorded_by: "onboarding".into(),
                    jurisdiction: jurisdiction.into(),
                    ..Default::default()
                })
                .await
                .map_err(status("record verification"))?;
        }
        compliance
            .grant_compliance_approval(cmp::GrantComplianceApprovalRequest {
                context: self.ctx(t(1, 1)),
                partner_id: PARTNER.to_string(),
                program_id: PROGRAM.to_string(),
                reference: "case-disclosed".into(),
                approved_by: "compliance-officer".into(),
            })
            .await
            .map_err(status("grant compliance approval"))?;
        self.approved_in_crm(PARTNER).await?;
        self.c
            .crm
            .clone()
            .issue_tracking_link(crm::IssueTrackingLinkRequest {
                context: self.ctx(t(1, 2)),
                tracking_link_id: link_of(PARTNER).to_string(),
                partner_id: PARTNER.to_string(),
                campaign_id: String::new(),
                destination_url: "https://broker.example/".into(),
                expires_at: None,
            })
            .await
            .map_err(status("issue link"))?;
        let visitor = "disclosed-visitor";
        self.click_link("the introducer's link", link_of(PARTNER), visitor, t(2, 1))
            .await?;
        let conversion = self
            .convert(att::RecordConversionRequest {
                context: self.ctx(t(2, 2)),
                program_id: PROGRAM.to_string(),
                r#type: att::ConversionType::Sale as i32,
                external_id: "disclosed-sale".into(),
                customer_id: "disclosed-customer".into(),
                visitor_id: visitor.into(),
                amount: usd("100.00"),
                occurred_at: ts(t(2, 2)),
                customer_country: "CY".into(),
                ..Default::default()
            })
            .await?;
        self.open_of(&conversion, PARTNER).await?;
        self.c
            .commissions
            .clone()
            .mature_commissions(com::MatureCommissionsRequest {
                context: self.ctx(t(3, 1)),
                partner_id: PARTNER.to_string(),
                as_of: ts(t(3, 1)),
            })
            .await
            .map_err(status("mature"))?;
        self.blocked_in_commissions(PARTNER, &["payout_hold"])
            .await?;
        let blocked = self.payout_item(PROGRAM, PARTNER, t(3, 3)).await?;
        let skipped_for = blocked
            .skip_reasons
            .iter()
            .map(|r| format!("{}: {}", r.code, r.detail))
            .collect();

        compliance
            .record_verification(cmp::RecordVerificationRequest {
                context: self.ctx(t(3, 4)),
                partner_id: PARTNER.to_string(),
                kind: cmp::VerificationKind::DisclosureAcknowledgement as i32,
                status: cmp::VerificationStatus::Verified as i32,
                reference: "disclosure-signed".into(),
                recorded_by: "onboarding".into(),
                ..Default::default()
            })
            .await
            .map_err(status("record disclosure"))?;
        self.blocked_in_commissions(PARTNER, &[]).await?;
        let paid = self.payout_item(PROGRAM, PARTNER, t(3, 5)).await?;
        Ok(DisclosureOutcome {
            skipped_for,
            paid_after_acknowledgement: paid.amount,
        })
    }
}
