//! The campaign aggregate (stream `partner-campaign-<id>`): a (creator) campaign of a program,
//! its dates, the partners in it with their agreed flat fees, and an optional performance bonus.
//! A flat fee is committed once per partner (`CampaignFeeCommitted`), a bonus awarded once per
//! partner whose reported conversions reach the target (`CampaignBonusAwarded`); commissions
//! books both. Pure: it never checks partners (the caller does) and never changes the partners
//! of a campaign after its creation (they are part of the published `CampaignCreated`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pl_money::Money;
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Classify, Kind};

pub const MAX_MEMBERS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fee {
    pub partner_id: Uuid,
    pub flat_fee: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BonusTerms {
    #[serde(with = "crate::wire::u64_str")]
    pub target_conversions: u64,
    pub amount: Money,
}

/// The `CampaignCreated` contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignCreated {
    pub campaign_id: Uuid,
    pub program_id: Uuid,
    pub name: String,
    pub partner_ids: Vec<Uuid>,
    pub occurred_at: DateTime<Utc>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub fees: Vec<Fee>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bonus: Option<BonusTerms>,
}

/// The `CampaignFeeCommitted` contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeCommitted {
    pub campaign_id: Uuid,
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub amount: Money,
    pub occurred_at: DateTime<Utc>,
}

/// The `CampaignBonusAwarded` contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BonusAwarded {
    pub campaign_id: Uuid,
    pub partner_id: Uuid,
    pub program_id: Uuid,
    pub amount: Money,
    #[serde(with = "crate::wire::u64_str")]
    pub conversions: u64,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CampaignEvent {
    CampaignCreated(CampaignCreated),
    CampaignFeeCommitted(FeeCommitted),
    CampaignBonusAwarded(BonusAwarded),
}

impl DomainEvent for CampaignEvent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CampaignCommand {
    Create(CampaignCreated),
    CommitFee {
        partner_id: Uuid,
        at: DateTime<Utc>,
    },
    AwardBonus {
        partner_id: Uuid,
        conversions: u64,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Campaign {
    pub created: Option<CampaignCreated>,
    pub fees_committed: BTreeMap<Uuid, DateTime<Utc>>,
    pub bonuses_awarded: BTreeMap<Uuid, DateTime<Utc>>,
}

impl Campaign {
    pub fn fee_of(&self, partner_id: Uuid) -> Option<Money> {
        self.created
            .as_ref()?
            .fees
            .iter()
            .find(|f| f.partner_id == partner_id)
            .map(|f| f.flat_fee)
    }

    pub fn has_member(&self, partner_id: Uuid) -> bool {
        self.created
            .as_ref()
            .is_some_and(|c| c.partner_ids.contains(&partner_id))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CampaignError {
    #[error("campaign {0} already exists")]
    AlreadyExists(Uuid),
    #[error("campaign is unknown")]
    NotFound,
    #[error("partner {0} does not take part in the campaign")]
    NotAMember(Uuid),
    #[error("partner {0} has no flat fee in the campaign")]
    NoFee(Uuid),
    #[error("the flat fee of partner {partner} was committed at {at}")]
    FeeAlreadyCommitted { partner: Uuid, at: DateTime<Utc> },
    #[error("the campaign starts at {0}: its fees are committed from then on")]
    NotStarted(DateTime<Utc>),
    #[error("the campaign has no performance bonus")]
    NoBonus,
    #[error("{conversions} conversions do not reach the target of {target}")]
    TargetNotReached { conversions: u64, target: u64 },
    #[error("the bonus of partner {partner} was awarded at {at}")]
    BonusAlreadyAwarded { partner: Uuid, at: DateTime<Utc> },
}

impl Classify for CampaignError {
    fn kind(&self) -> Kind {
        match self {
            CampaignError::AlreadyExists(id) => Kind::AlreadyExists {
                what: "campaign",
                id: id.to_string(),
            },
            CampaignError::NotFound => Kind::NotFound {
                what: "campaign",
                id: String::new(),
            },
            _ => Kind::Rule,
        }
    }
}

impl Aggregate for Campaign {
    type State = Campaign;
    type Command = CampaignCommand;
    type Event = CampaignEvent;
    type Error = CampaignError;

    fn decide(
        state: &Campaign,
        command: &CampaignCommand,
    ) -> Result<Vec<CampaignEvent>, CampaignError> {
        let created = match (command, &state.created) {
            (CampaignCommand::Create(c), None) => {
                return Ok(vec![CampaignEvent::CampaignCreated(c.clone())])
            }
            (CampaignCommand::Create(c), Some(_)) => {
                return Err(CampaignError::AlreadyExists(c.campaign_id))
            }
            (_, None) => return Err(CampaignError::NotFound),
            (_, Some(created)) => created,
        };
        match command {
            CampaignCommand::Create(_) => Ok(vec![]),
            CampaignCommand::CommitFee { partner_id, at } => {
                if !state.has_member(*partner_id) {
                    return Err(CampaignError::NotAMember(*partner_id));
                }
                let fee = state
                    .fee_of(*partner_id)
                    .filter(|f| f.is_positive())
                    .ok_or(CampaignError::NoFee(*partner_id))?;
                if let Some(done) = state.fees_committed.get(partner_id) {
                    return Err(CampaignError::FeeAlreadyCommitted {
                        partner: *partner_id,
                        at: *done,
                    });
                }
                if *at < created.starts_at {
                    return Err(CampaignError::NotStarted(created.starts_at));
                }
                Ok(vec![CampaignEvent::CampaignFeeCommitted(FeeCommitted {
                    campaign_id: created.campaign_id,
                    partner_id: *partner_id,
                    program_id: created.program_id,
                    amount: fee,
                    occurred_at: *at,
                })])
            }
            CampaignCommand::AwardBonus {
                partner_id,
                conversions,
                at,
            } => {
                let bonus = created.bonus.as_ref().ok_or(CampaignError::NoBonus)?;
                if !state.has_member(*partner_id) {
                    return Err(CampaignError::NotAMember(*partner_id));
                }
                if let Some(done) = state.bonuses_awarded.get(partner_id) {
                    return Err(CampaignError::BonusAlreadyAwarded {
                        partner: *partner_id,
                        at: *done,
                    });
                }
                if *conversions < bonus.target_conversions {
                    return Err(CampaignError::TargetNotReached {
                        conversions: *conversions,
                        target: bonus.target_conversions,
                    });
                }
                Ok(vec![CampaignEvent::CampaignBonusAwarded(BonusAwarded {
                    campaign_id: created.campaign_id,
                    partner_id: *partner_id,
                    program_id: created.program_id,
                    amount: bonus.amount,
                    conversions: *conversions,
                    occurred_at: *at,
                })])
            }
        }
    }

    fn evolve(mut state: Campaign, event: &CampaignEvent) -> Campaign {
        match event {
            CampaignEvent::CampaignCreated(c) => state.created = Some(c.clone()),
            CampaignEvent::CampaignFeeCommitted(f) => {
                state.fees_committed.insert(f.partner_id, f.occurred_at);
            }
            CampaignEvent::CampaignBonusAwarded(b) => {
                state.bonuses_awarded.insert(b.partner_id, b.occurred_at);
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn t(d: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + d * 86_400, 0).unwrap()
    }

    fn p(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn created() -> CampaignCreated {
        CampaignCreated {
            campaign_id: p(0xca),
            program_id: p(2),
            name: "Spring launch".into(),
            partner_ids: vec![p(1), p(3)],
            occurred_at: t(0),
            starts_at: t(10),
            ends_at: t(40),
            fees: vec![
                Fee {
                    partner_id: p(1),
                    flat_fee: "2500.00 USD".parse().unwrap(),
                },
                Fee {
                    partner_id: p(3),
                    flat_fee: "0.00 USD".parse().unwrap(),
                },
            ],
            bonus: Some(BonusTerms {
                target_conversions: 100,
                amount: "500.00 USD".parse().unwrap(),
            }),
        }
    }

    fn given() -> Campaign {
        Campaign::evolve(
            Campaign::default(),
            &CampaignEvent::CampaignCreated(created()),
        )
    }

    #[test]
    fn given_a_started_campaign_when_a_fee_is_committed_then_it_is_committed_once() {
        let state = given();
        assert_eq!(
            Campaign::decide(
                &state,
                &CampaignCommand::CommitFee {
                    partner_id: p(1),
                    at: t(9)
                }
            )
            .unwrap_err(),
            CampaignError::NotStarted(t(10))
        );
        let e = Campaign::decide(
            &state,
            &CampaignCommand::CommitFee {
                partner_id: p(1),
                at: t(12),
            },
        )
        .unwrap();
        let CampaignEvent::CampaignFeeCommitted(f) = &e[0] else {
            panic!()
        };
        assert_eq!(f.amount, "2500.00 USD".parse().unwrap());
        let state = Campaign::evolve(state, &e[0]);
        assert!(matches!(
            Campaign::decide(
                &state,
                &CampaignCommand::CommitFee {
                    partner_id: p(1),
                    at: t(13)
                }
            ),
            Err(CampaignError::FeeAlreadyCommitted { .. })
        ));
        assert_eq!(
            Campaign::decide(
                &state,
                &CampaignCommand::CommitFee {
                    partner_id: p(3),
                    at: t(13)
                }
            )
            .unwrap_err(),
            CampaignError::NoFee(p(3))
        );
        assert_eq!(
            Campaign::decide(
                &state,
                &CampaignCommand::CommitFee {
                    partner_id: p(9),
                    at: t(13)
                }
            )
            .unwrap_err(),
            CampaignError::NotAMember(p(9))
        );
    }

    #[test]
    fn a_bonus_is_awarded_only_when_the_target_is_reached_and_only_once() {
        let state = given();
        assert_eq!(
            Campaign::decide(
                &state,
                &CampaignCommand::AwardBonus {
                    partner_id: p(3),
                    conversions: 99,
                    at: t(41)
                }
            )
            .unwrap_err(),
            CampaignError::TargetNotReached {
                conversions: 99,
                target: 100
            }
        );
        let e = Campaign::decide(
            &state,
            &CampaignCommand::AwardBonus {
                partner_id: p(3),
                conversions: 120,
                at: t(41),
            },
        )
        .unwrap();
        let (ty, data) = pl_runtime::aggregate::encode_event(&e[0]).unwrap();
        assert_eq!(ty, "CampaignBonusAwarded");
        let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(v["conversions"], "120");
        let state = Campaign::evolve(state, &e[0]);
        assert!(matches!(
            Campaign::decide(
                &state,
                &CampaignCommand::AwardBonus {
                    partner_id: p(3),
                    conversions: 200,
                    at: t(42)
                }
            ),
            Err(CampaignError::BonusAlreadyAwarded { .. })
        ));
    }

    #[test]
    fn the_created_campaign_carries_the_contract_fields_attribution_reads() {
        let (ty, data) =
            pl_runtime::aggregate::encode_event(&CampaignEvent::CampaignCreated(created()))
                .unwrap();
        assert_eq!(ty, "CampaignCreated");
        let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(
            v["partner_ids"],
            serde_json::json!([p(1).to_string(), p(3).to_string()])
        );
        assert_eq!(v["name"], "Spring launch");
        assert_eq!(v["bonus"]["target_conversions"], "100");
    }
}
