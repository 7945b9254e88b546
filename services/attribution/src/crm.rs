//! Attribution's projection of partner CRM: partner status, tracking links, coupon codes,
//! approved deal registrations and campaigns, each kept in a `crm-*` stream of its own key (see
//! `streams`). Facts arrive from CRM's integration events (`consumer`), deduplicated by the
//! consumed event's id; the checks a touchpoint or a conversion makes against them are pure
//! functions of the facts and the touchpoint's business time.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One `crm-*` stream keeps at most this many facts (a link, a coupon, a partner's status
/// changes, a customer's deals): more is a broken producer.
pub const MAX_FACTS_PER_STREAM: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartnerStatus {
    Applied,
    Approved,
    Rejected,
    Suspended,
    Terminated,
}

impl PartnerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PartnerStatus::Applied => "applied",
            PartnerStatus::Approved => "approved",
            PartnerStatus::Rejected => "rejected",
            PartnerStatus::Suspended => "suspended",
            PartnerStatus::Terminated => "terminated",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: PartnerStatus,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub tracking_link_id: Uuid,
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub campaign_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    pub coupon_id: Uuid,
    /// Upper-cased.
    pub code: String,
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub campaign_id: Option<Uuid>,
    pub valid_from: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deal {
    pub deal_id: Uuid,
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub customer_id: Option<String>,
    pub customer_domain: Option<String>,
    pub approved_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Set once revoked: the deal owns the customer no more from then on.
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Deal {
    pub fn in_effect_at(&self, at: DateTime<Utc>) -> bool {
        self.approved_at <= at
            && self.expires_at.is_none_or(|e| at < e)
            && self.revoked_at.is_none_or(|r| at < r)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    pub campaign_id: Uuid,
    pub program_id: Uuid,
    pub name: String,
    pub partner_ids: BTreeSet<Uuid>,
}

/// A fact from partner CRM, with the id of the integration event it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CrmFact {
    PartnerStatusRecorded {
        source_event_id: Uuid,
        partner_id: Uuid,
        change: StatusChange,
    },
    TrackingLinkRecorded {
        source_event_id: Uuid,
        link: Link,
    },
    TrackingLinkDeactivationRecorded {
        source_event_id: Uuid,
        tracking_link_id: Uuid,
        occurred_at: DateTime<Utc>,
    },
    CouponRecorded {
        source_event_id: Uuid,
        coupon: Coupon,
    },
    CouponDeactivationRecorded {
        source_event_id: Uuid,
        coupon_id: Uuid,
        occurred_at: DateTime<Utc>,
    },
    DealRegistrationRecorded {
        source_event_id: Uuid,
        deal: Deal,
    },
    DealRevocationRecorded {
        source_event_id: Uuid,
        deal_id: Uuid,
        occurred_at: DateTime<Utc>,
    },
    CampaignRecorded {
        source_event_id: Uuid,
        campaign: Campaign,
    },
}
impl DomainEvent for CrmFact {}

impl CrmFact {
    pub fn source_event_id(&self) -> Uuid {
        match self {
            CrmFact::PartnerStatusRecorded {
                source_event_id, ..
            }
            | CrmFact::TrackingLinkRecorded {
                source_event_id, ..
            }
            | CrmFact::TrackingLinkDeactivationRecorded {
                source_event_id, ..
            }
            | CrmFact::CouponRecorded {
                source_event_id, ..
            }
            | CrmFact::CouponDeactivationRecorded {
                source_event_id, ..
            }
            | CrmFact::DealRegistrationRecorded {
                source_event_id, ..
            }
            | CrmFact::DealRevocationRecorded {
                source_event_id, ..
            }
            | CrmFact::CampaignRecorded {
                source_event_id, ..
            } => *source_event_id,
        }
    }
}

/// Whatever one `crm-*` stream knows (each stream holds one kind of fact).
#[derive(Debug, Clone, Default)]
pub struct CrmRecord {
    seen: BTreeSet<Uuid>,
    /// In order of business time (ties in arrival order).
    pub statuses: Vec<StatusChange>,
    pub link: Option<Link>,
    pub link_deactivated_at: Option<DateTime<Utc>>,
    pub coupon: Option<Coupon>,
    pub coupon_deactivated_at: Option<DateTime<Utc>>,
    pub deals: Vec<Deal>,
    pub campaign: Option<Campaign>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrmError {
    #[error("the stream already holds {MAX_FACTS_PER_STREAM} facts")]
    Full,
}

impl Aggregate for CrmRecord {
    type State = CrmRecord;
    type Command = CrmFact;
    type Event = CrmFact;
    type Error = CrmError;

    fn decide(state: &CrmRecord, fact: &CrmFact) -> Result<Vec<CrmFact>, CrmError> {
        if state.seen.contains(&fact.source_event_id()) {
            return Ok(vec![]);
        }
        if state.seen.len() >= MAX_FACTS_PER_STREAM {
            return Err(CrmError::Full);
        }
        Ok(vec![fact.clone()])
    }

    fn evolve(mut s: CrmRecord, fact: &CrmFact) -> CrmRecord {
        s.seen.insert(fact.source_event_id());
        match fact {
            CrmFact::PartnerStatusRecorded { change, .. } => {
                let at = s
                    .statuses
                    .partition_point(|c| c.occurred_at <= change.occurred_at);
                s.statuses.insert(at, change.clone());
            }
            CrmFact::TrackingLinkRecorded { link, .. } => s.link = Some(link.clone()),
            CrmFact::TrackingLinkDeactivationRecorded { occurred_at, .. } => {
                s.link_deactivated_at = Some(
                    s.link_deactivated_at
                        .map_or(*occurred_at, |d| d.min(*occurred_at)),
                );
            }
            CrmFact::CouponRecorded { coupon, .. } => {
                s.coupon = Some(coupon.clone());
                s.coupon_deactivated_at = None;
            }
            CrmFact::CouponDeactivationRecorded {
                coupon_id,
                occurred_at,
                ..
            } => {
                if s.coupon.as_ref().is_some_and(|c| c.coupon_id == *coupon_id) {
                    s.coupon_deactivated_at = Some(*occurred_at);
                }
            }
            CrmFact::DealRegistrationRecorded { deal, .. } => {
                s.deals.retain(|d| d.deal_id != deal.deal_id);
                s.deals.push(deal.clone());
            }
            CrmFact::DealRevocationRecorded {
                deal_id,
                occurred_at,
                ..
            } => {
                for d in s.deals.iter_mut().filter(|d| d.deal_id == *deal_id) {
                    d.revoked_at = Some(*occurred_at);
                }
            }
            CrmFact::CampaignRecorded { campaign, .. } => s.campaign = Some(campaign.clone()),
        }
        s
    }
}

/// The status in force at `at`: the last change at or before it.
pub fn status_at(changes: &[StatusChange], at: DateTime<Utc>) -> Option<PartnerStatus> {
    changes
        .iter()
        .take_while(|c| c.occurred_at <= at)
        .last()
        .map(|c| c.status)
}

/// Why a touchpoint is refused, precisely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("tracking link {0} is unknown")]
    UnknownLink(Uuid),
    #[error("tracking link {link} was deactivated at {at}")]
    LinkDeactivated { link: Uuid, at: DateTime<Utc> },
    #[error("tracking link {link} belongs to program {actual}, not {requested}")]
    LinkOfOtherProgram {
        link: Uuid,
        actual: Uuid,
        requested: Uuid,
    },
    #[error("tracking link {link} belongs to partner {actual}, not {requested}")]
    LinkOfOtherPartner {
        link: Uuid,
        actual: Uuid,
        requested: Uuid,
    },
    #[error("partner {0} is unknown")]
    UnknownPartner(Uuid),
    #[error("partner {partner} is {status} at {at}, not approved")]
    PartnerNotApproved {
        partner: Uuid,
        status: &'static str,
        at: DateTime<Utc>,
    },
    #[error("coupon code {code:?} is unknown in program {program}")]
    UnknownCoupon { code: String, program: Uuid },
    #[error("coupon code {code:?} expired at {at}")]
    CouponExpired { code: String, at: DateTime<Utc> },
    #[error("coupon code {code:?} is valid only from {from}")]
    CouponNotYetValid { code: String, from: DateTime<Utc> },
    #[error("coupon code {code:?} was deactivated at {at}")]
    CouponDeactivated { code: String, at: DateTime<Utc> },
    #[error("campaign {0} is unknown")]
    UnknownCampaign(Uuid),
    #[error("partner {partner} does not take part in campaign {campaign}")]
    NotInCampaign { partner: Uuid, campaign: Uuid },
}

/// The partner may earn at `at` only when approved then.
pub fn check_partner(
    partner_id: Uuid,
    record: &CrmRecord,
    at: DateTime<Utc>,
) -> Result<(), Rejection> {
    if record.statuses.is_empty() {
        return Err(Rejection::UnknownPartner(partner_id));
    }
    match status_at(&record.statuses, at) {
        Some(PartnerStatus::Approved) => Ok(()),
        other => Err(Rejection::PartnerNotApproved {
            partner: partner_id,
            status: other.map_or("not yet known", PartnerStatus::as_str),
            at,
        }),
    }
}

pub fn check_link(link_id: Uuid, record: &CrmRecord, at: DateTime<Utc>) -> Result<Link, Rejection> {
    let link = record.link.clone().ok_or(Rejection::UnknownLink(link_id))?;
    if let Some(d) = record.link_deactivated_at.filter(|d| *d <= at) {
        return Err(Rejection::LinkDeactivated {
            link: link_id,
            at: d,
        });
    }
    Ok(link)
}

pub fn check_coupon(
    code: &str,
    program_id: Uuid,
    record: &CrmRecord,
    at: DateTime<Utc>,
) -> Result<Coupon, Rejection> {
    let code = code.to_uppercase();
    let coupon = record
        .coupon
        .clone()
        .filter(|c| c.program_id == program_id)
        .ok_or_else(|| Rejection::UnknownCoupon {
            code: code.clone(),
            program: program_id,
        })?;
    if let Some(d) = record.coupon_deactivated_at.filter(|d| *d <= at) {
        return Err(Rejection::CouponDeactivated { code, at: d });
    }
    if let Some(e) = coupon.expires_at.filter(|e| *e <= at) {
        return Err(Rejection::CouponExpired { code, at: e });
    }
    if coupon.valid_from > at {
        return Err(Rejection::CouponNotYetValid {
            code,
            from: coupon.valid_from,
        });
    }
    Ok(coupon)
}

pub fn check_campaign(
    campaign_id: Uuid,
    partner_id: Uuid,
    record: &CrmRecord,
) -> Result<Campaign, Rejection> {
    let campaign = record
        .campaign
        .clone()
        .ok_or(Rejection::UnknownCampaign(campaign_id))?;
    if !campaign.partner_ids.contains(&partner_id) {
        return Err(Rejection::NotInCampaign {
            partner: partner_id,
            campaign: campaign_id,
        });
    }
    Ok(campaign)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + s, 0).unwrap()
    }

    fn given(facts: &[CrmFact]) -> CrmRecord {
        facts.iter().fold(CrmRecord::default(), CrmRecord::evolve)
    }

    fn status(n: u128, status: PartnerStatus, at: i64) -> CrmFact {
        CrmFact::PartnerStatusRecorded {
            source_event_id: Uuid::from_u128(n),
            partner_id: Uuid::from_u128(7),
            change: StatusChange {
                status,
                occurred_at: t(at),
            },
        }
    }

    #[test]
    fn a_partner_approved_then_suspended_earns_only_in_between_even_if_told_out_of_order() {
        let r = given(&[
            status(2, PartnerStatus::Suspended, 100),
            status(1, PartnerStatus::Approved, 10),
        ]);
        let p = Uuid::from_u128(7);
        assert!(check_partner(p, &r, t(5)).is_err());
        assert!(check_partner(p, &r, t(50)).is_ok());
        assert_eq!(
            check_partner(p, &r, t(100)).unwrap_err().to_string(),
            format!("partner {p} is suspended at {}, not approved", t(100))
        );
    }

    #[test]
    fn a_redelivered_fact_changes_nothing() {
        let r = given(&[status(1, PartnerStatus::Approved, 10)]);
        assert_eq!(
            CrmRecord::decide(&r, &status(1, PartnerStatus::Approved, 10)).unwrap(),
            vec![]
        );
    }

    #[test]
    fn an_expired_coupon_is_rejected_at_its_expiry_and_accepted_one_second_before() {
        let program = Uuid::from_u128(3);
        let r = given(&[CrmFact::CouponRecorded {
            source_event_id: Uuid::from_u128(1),
            coupon: Coupon {
                coupon_id: Uuid::from_u128(2),
                code: "SAVE10".into(),
                partner_id: Uuid::from_u128(7),
                program_id: program,
                campaign_id: None,
                valid_from: t(0),
                expires_at: Some(t(100)),
            },
        }]);
        assert!(check_coupon("save10", program, &r, t(99)).is_ok());
        assert_eq!(
            check_coupon("save10", program, &r, t(100)),
            Err(Rejection::CouponExpired {
                code: "SAVE10".into(),
                at: t(100)
            })
        );
    }
}
