//! The co-marketing asset aggregate (stream `partner-asset-<id>`): one asset of a program's
//! catalogue (name, kind, URI, the tiers allowed to use it) and which partners took it, when,
//! in which tier. Pure: the caller says which tier the partner is in; it never lets a partner
//! of another tier take a restricted asset, and never lets anyone take a retired one.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Classify, Kind};

pub const MAX_TAKERS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetKind {
    Banner,
    Logo,
    Video,
    Document,
    EmailTemplate,
    LandingPage,
    SocialPost,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetAdded {
    pub asset_id: Uuid,
    pub program_id: Uuid,
    pub name: String,
    pub kind: AssetKind,
    pub uri: String,
    /// Lower-case tier codes; empty: every partner of the program.
    pub allowed_tiers: Vec<String>,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AssetEvent {
    MarketingAssetAdded(AssetAdded),
    MarketingAssetRetired {
        asset_id: Uuid,
        occurred_at: DateTime<Utc>,
    },
    MarketingAssetTaken {
        asset_id: Uuid,
        partner_id: Uuid,
        tier: Option<String>,
        occurred_at: DateTime<Utc>,
    },
}

impl DomainEvent for AssetEvent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetCommand {
    Add(AssetAdded),
    Retire {
        at: DateTime<Utc>,
    },
    Take {
        partner_id: Uuid,
        /// The partner's tier now (`None` in a program without tiers).
        tier: Option<String>,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taker {
    pub partner_id: Uuid,
    pub tier: Option<String>,
    pub taken_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asset {
    pub added: Option<AssetAdded>,
    pub retired_at: Option<DateTime<Utc>>,
    pub takers: Vec<Taker>,
    taken: BTreeSet<Uuid>,
}

impl Asset {
    pub fn taken_by(&self, partner_id: Uuid) -> bool {
        self.taken.contains(&partner_id)
    }

    pub fn allows(&self, tier: Option<&str>) -> bool {
        self.added.as_ref().is_some_and(|a| {
            a.allowed_tiers.is_empty()
                || tier.is_some_and(|t| a.allowed_tiers.iter().any(|x| x == t))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssetError {
    #[error("marketing asset {0} already exists")]
    AlreadyExists(Uuid),
    #[error("marketing asset is unknown")]
    NotFound,
    #[error("the asset was retired at {0}")]
    Retired(DateTime<Utc>),
    #[error("the asset is for tiers {allowed}; the partner is in {tier}")]
    TierNotAllowed { allowed: String, tier: String },
    #[error("the asset was taken {MAX_TAKERS} times; no more are accepted")]
    Full,
}

impl Classify for AssetError {
    fn kind(&self) -> Kind {
        match self {
            AssetError::AlreadyExists(id) => Kind::AlreadyExists {
                what: "marketing asset",
                id: id.to_string(),
            },
            AssetError::NotFound => Kind::NotFound {
                what: "marketing asset",
                id: String::new(),
            },
            AssetError::Retired(_) | AssetError::TierNotAllowed { .. } | AssetError::Full => {
                Kind::Rule
            }
        }
    }
}

impl Aggregate for Asset {
    type State = Asset;
    type Command = AssetCommand;
    type Event = AssetEvent;
    type Error = AssetError;

    fn decide(state: &Asset, command: &AssetCommand) -> Result<Vec<AssetEvent>, AssetError> {
        let added = match (command, &state.added) {
            (AssetCommand::Add(a), None) => {
                return Ok(vec![AssetEvent::MarketingAssetAdded(a.clone())])
            }
            (AssetCommand::Add(a), Some(_)) => return Err(AssetError::AlreadyExists(a.asset_id)),
            (_, None) => return Err(AssetError::NotFound),
            (_, Some(added)) => added,
        };
        match command {
            AssetCommand::Add(_) => Ok(vec![]),
            AssetCommand::Retire { at } => match state.retired_at {
                Some(_) => Ok(vec![]),
                None => Ok(vec![AssetEvent::MarketingAssetRetired {
                    asset_id: added.asset_id,
                    occurred_at: *at,
                }]),
            },
            AssetCommand::Take {
                partner_id,
                tier,
                at,
            } => {
                if state.taken_by(*partner_id) {
                    return Ok(vec![]);
                }
                if let Some(r) = state.retired_at.filter(|r| *r <= *at) {
                    return Err(AssetError::Retired(r));
                }
                if !state.allows(tier.as_deref()) {
                    return Err(AssetError::TierNotAllowed {
                        allowed: added.allowed_tiers.join(", "),
                        tier: tier.clone().unwrap_or_else(|| "no tier".into()),
                    });
                }
                if state.takers.len() >= MAX_TAKERS {
                    return Err(AssetError::Full);
                }
                Ok(vec![AssetEvent::MarketingAssetTaken {
                    asset_id: added.asset_id,
                    partner_id: *partner_id,
                    tier: tier.clone(),
                    occurred_at: *at,
                }])
            }
        }
    }

    fn evolve(mut state: Asset, event: &AssetEvent) -> Asset {
        match event {
            AssetEvent::MarketingAssetAdded(a) => state.added = Some(a.clone()),
            AssetEvent::MarketingAssetRetired { occurred_at, .. } => {
                state.retired_at = Some(*occurred_at);
            }
            AssetEvent::MarketingAssetTaken {
                partner_id,
                tier,
                occurred_at,
                ..
            } => {
                if state.taken.insert(*partner_id) {
                    state.takers.push(Taker {
                        partner_id: *partner_id,
                        tier: tier.clone(),
                        taken_at: *occurred_at,
                    });
                }
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    fn given(allowed: &[&str]) -> Asset {
        Asset::evolve(
            Asset::default(),
            &AssetEvent::MarketingAssetAdded(AssetAdded {
                asset_id: Uuid::from_u128(5),
                program_id: Uuid::from_u128(2),
                name: "Logo pack".into(),
                kind: AssetKind::Logo,
                uri: "https://cdn.example/logo.zip".into(),
                allowed_tiers: allowed.iter().map(|t| (*t).to_owned()).collect(),
                occurred_at: at(),
            }),
        )
    }

    fn take(partner: u128, tier: Option<&str>) -> AssetCommand {
        AssetCommand::Take {
            partner_id: Uuid::from_u128(partner),
            tier: tier.map(str::to_owned),
            at: at(),
        }
    }

    #[test]
    fn given_a_gold_only_asset_then_a_silver_partner_cannot_take_it_and_a_gold_one_takes_it_once() {
        let state = given(&["gold"]);
        assert_eq!(
            Asset::decide(&state, &take(1, Some("silver"))).unwrap_err(),
            AssetError::TierNotAllowed {
                allowed: "gold".into(),
                tier: "silver".into()
            }
        );
        let e = Asset::decide(&state, &take(2, Some("gold"))).unwrap();
        let state = Asset::evolve(state, &e[0]);
        assert!(state.taken_by(Uuid::from_u128(2)));
        assert!(Asset::decide(&state, &take(2, Some("gold")))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_retired_asset_cannot_be_taken() {
        let state = given(&[]);
        let e = Asset::decide(&state, &AssetCommand::Retire { at: at() }).unwrap();
        let state = Asset::evolve(state, &e[0]);
        assert_eq!(
            Asset::decide(&state, &take(1, None)).unwrap_err(),
            AssetError::Retired(at())
        );
    }
}
