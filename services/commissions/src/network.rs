//! Commissions' projection of partner CRM's hierarchy and tiers, one stream per program
//! (`network-<program id>`): every partner's parent and tier with the date each took effect,
//! and which plans each tier may be assigned. CRM owns these facts; commissions keeps what
//! arrived over the bus (`PartnerParentChanged`, `PartnerTierChanged`, `ProgramTiersChanged`)
//! so that an accrual takes the upline and the tier in force at its conversion's business
//! date from its own log, and a replay answers the same. A change never touches accruals
//! already recorded: each names the stream version it was computed with (its "hierarchy
//! version"). Pure decide/evolve: no I/O, no clock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Facts kept per program: beyond it a fact is refused (dead-lettered) rather than growing the
/// stream and the state every accrual reads without bound.
pub const MAX_FACTS: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierGrant {
    pub code: String,
    pub rank: u32,
    /// Plans the tier may be assigned; empty: any.
    pub plan_ids: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum NetworkEvent {
    ParentRecorded {
        source_event_id: Uuid,
        partner_id: Uuid,
        parent_partner_id: Option<Uuid>,
        effective_from: DateTime<Utc>,
    },
    TierRecorded {
        source_event_id: Uuid,
        partner_id: Uuid,
        tier: String,
        effective_from: DateTime<Utc>,
    },
    TiersDefined {
        source_event_id: Uuid,
        tiers: Vec<TierGrant>,
        occurred_at: DateTime<Utc>,
    },
}
impl DomainEvent for NetworkEvent {}

impl NetworkEvent {
    fn source(&self) -> Uuid {
        match self {
            NetworkEvent::ParentRecorded {
                source_event_id, ..
            }
            | NetworkEvent::TierRecorded {
                source_event_id, ..
            }
            | NetworkEvent::TiersDefined {
                source_event_id, ..
            } => *source_event_id,
        }
    }
}

/// The command is the fact itself, carrying the id of the consumed event.
pub type Record = NetworkEvent;

/// Changes of one partner's parent or tier, ordered by effective date; changes of one date in
/// the order they were recorded (the last one wins).
type History<T> = Vec<(DateTime<Utc>, T)>;

fn in_force<T>(history: &History<T>, at: DateTime<Utc>) -> Option<&T> {
    let after = history.partition_point(|(from, _)| *from <= at);
    history[..after].last().map(|(_, v)| v)
}

fn record<T>(history: &mut History<T>, from: DateTime<Utc>, value: T) {
    let at = history.partition_point(|(f, _)| *f <= from);
    history.insert(at, (from, value));
}

#[derive(Debug, Clone, Default)]
struct Facts {
    /// Consumed events already recorded: a redelivery records nothing.
    seen: HashSet<Uuid>,
    parents: HashMap<Uuid, History<Option<Uuid>>>,
    tiers: HashMap<Uuid, History<String>>,
    /// The program's tiers as CRM last defined them (a definition is not effective-dated).
    grants: Vec<TierGrant>,
}

/// A program's hierarchy and tiers. Shared, not copied: every accrual reads it, and a run of
/// accruals keeps it for the run while the cache keeps it for the next (see
/// [`crate::accruals`]); a fact recorded meanwhile copies it once.
#[derive(Debug, Clone, Default)]
pub struct Network(Arc<Facts>);

/// A partner's standing in its program at a date, as commissions knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Parent, grandparent, ... (at most `levels`, never the partner or a repeat).
    pub upline: Vec<Uuid>,
    pub tier: Option<String>,
}

impl Network {
    /// The upline in force at `at`, nearest first, at most `levels` deep. Each link is the one
    /// in force at `at`; a walk that comes back to a partner it passed stops there (links of
    /// different dates could form a loop that no single date of CRM's hierarchy ever held).
    pub fn upline(&self, partner_id: Uuid, at: DateTime<Utc>, levels: usize) -> Vec<Uuid> {
        let mut upline = Vec::new();
        let mut next = self.parent(partner_id, at);
        while let Some(parent) = next {
            if upline.len() == levels || parent == partner_id || upline.contains(&parent) {
                break;
            }
            upline.push(parent);
            next = self.parent(parent, at);
        }
        upline
    }

    fn parent(&self, partner_id: Uuid, at: DateTime<Utc>) -> Option<Uuid> {
        self.0
            .parents
            .get(&partner_id)
            .and_then(|h| in_force(h, at).copied().flatten())
    }

    /// The tier in force at `at`, as CRM reported it.
    pub fn tier(&self, partner_id: Uuid, at: DateTime<Utc>) -> Option<&str> {
        self.0
            .tiers
            .get(&partner_id)
            .and_then(|h| in_force(h, at))
            .map(String::as_str)
    }

    pub fn standing(&self, partner_id: Uuid, at: DateTime<Utc>, levels: usize) -> Standing {
        Standing {
            upline: self.upline(partner_id, at, levels),
            tier: self.tier(partner_id, at).map(str::to_owned),
        }
    }

    /// Whether a partner in `tier` may be assigned `plan_id`, as partner CRM decides access: in
    /// a program without tiers, any plan; a partner without a tier (or with one the program no
    /// longer defines) has the lowest tier's access; a tier that lists no plans grants any.
    /// `Err` names the tier whose grant refuses it and the plans it grants.
    pub fn grants(&self, tier: Option<&str>, plan_id: Uuid) -> Result<(), &TierGrant> {
        let grants = &self.0.grants;
        let Some(grant) = tier
            .and_then(|code| grants.iter().find(|g| g.code == code))
            .or_else(|| grants.iter().min_by_key(|g| g.rank))
        else {
            return Ok(());
        };
        if grant.plan_ids.is_empty() || grant.plan_ids.contains(&plan_id) {
            Ok(())
        } else {
            Err(grant)
        }
    }

    pub fn facts(&self) -> usize {
        self.0.seen.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("the program's network holds {MAX_FACTS} facts; no more are accepted")]
    Full,
    #[error("a partner cannot be its own parent")]
    OwnParent,
}

impl Aggregate for Network {
    type State = Network;
    type Command = Record;
    type Event = NetworkEvent;
    type Error = NetworkError;

    fn decide(state: &Network, fact: &Record) -> Result<Vec<NetworkEvent>, NetworkError> {
        if state.0.seen.contains(&fact.source()) {
            return Ok(vec![]);
        }
        if state.0.seen.len() >= MAX_FACTS {
            return Err(NetworkError::Full);
        }
        if let NetworkEvent::ParentRecorded {
            partner_id,
            parent_partner_id: Some(parent),
            ..
        } = fact
        {
            if parent == partner_id {
                return Err(NetworkError::OwnParent);
            }
        }
        Ok(vec![fact.clone()])
    }

    fn evolve(mut state: Network, event: &NetworkEvent) -> Network {
        // Copies the facts only while a run of accruals still holds them (never in a replay).
        let facts = Arc::make_mut(&mut state.0);
        facts.seen.insert(event.source());
        match event {
            NetworkEvent::ParentRecorded {
                partner_id,
                parent_partner_id,
                effective_from,
                ..
            } => record(
                facts.parents.entry(*partner_id).or_default(),
                *effective_from,
                *parent_partner_id,
            ),
            NetworkEvent::TierRecorded {
                partner_id,
                tier,
                effective_from,
                ..
            } => record(
                facts.tiers.entry(*partner_id).or_default(),
                *effective_from,
                tier.clone(),
            ),
            NetworkEvent::TiersDefined { tiers, .. } => facts.grants.clone_from(tiers),
        }
        state
    }
}

pub fn stream(program_id: Uuid) -> String {
    format!("network-{program_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, d, 0, 0, 0).unwrap()
    }

    fn p(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn parent(source: u128, partner: u128, parent: Option<u128>, from: u32) -> Record {
        NetworkEvent::ParentRecorded {
            source_event_id: p(0xe0 + source),
            partner_id: p(partner),
            parent_partner_id: parent.map(p),
            effective_from: day(from),
        }
    }

    fn tier(source: u128, partner: u128, tier: &str, from: u32) -> Record {
        NetworkEvent::TierRecorded {
            source_event_id: p(0xf0 + source),
            partner_id: p(partner),
            tier: tier.into(),
            effective_from: day(from),
        }
    }

    /// Given the facts, each decided on the state the ones before leave.
    fn given(facts: &[Record]) -> Network {
        facts.iter().fold(Network::default(), |state, fact| {
            let events = Network::decide(&state, fact).unwrap();
            events.iter().fold(state, Network::evolve)
        })
    }

    #[test]
    fn the_upline_at_a_date_follows_each_link_in_force_then() {
        // 1's parent is 2 from the 1st and 3 from the 15th; 2's parent is 4 throughout.
        let network = given(&[
            parent(1, 1, Some(2), 1),
            parent(2, 2, Some(4), 1),
            parent(3, 1, Some(3), 15),
        ]);
        assert_eq!(network.upline(p(1), day(10), 5), vec![p(2), p(4)]);
        assert_eq!(network.upline(p(1), day(15), 5), vec![p(3)]);
        assert_eq!(
            network.upline(p(1), day(10), 1),
            vec![p(2)],
            "levels bound it"
        );
        assert!(network
            .upline(
                p(1),
                Utc.with_ymd_and_hms(2025, 12, 31, 0, 0, 0).unwrap(),
                5
            )
            .is_empty());
    }

    #[test]
    fn a_change_recorded_late_takes_effect_from_its_own_date_and_a_removal_ends_the_link() {
        let network = given(&[
            parent(1, 1, Some(2), 20),
            parent(2, 1, Some(3), 5),
            parent(3, 1, None, 25),
        ]);
        assert_eq!(network.upline(p(1), day(10), 5), vec![p(3)]);
        assert_eq!(network.upline(p(1), day(21), 5), vec![p(2)]);
        assert!(network.upline(p(1), day(26), 5).is_empty());
    }

    #[test]
    fn links_of_different_dates_that_loop_stop_at_the_loop() {
        // At the 10th: 1 → 2 (from the 1st) and 2 → 1 (from the 5th, after CRM removed 1 → 2
        // and re-added it: the history can hold what no single state did).
        let network = given(&[parent(1, 1, Some(2), 1), parent(2, 2, Some(1), 5)]);
        assert_eq!(network.upline(p(1), day(10), 5), vec![p(2)]);
    }

    #[test]
    fn the_tier_in_force_is_the_latest_started_and_a_redelivery_records_nothing() {
        let network = given(&[tier(1, 1, "silver", 1), tier(2, 1, "gold", 15)]);
        assert_eq!(network.tier(p(1), day(14)), Some("silver"));
        assert_eq!(network.tier(p(1), day(15)), Some("gold"));
        assert_eq!(network.tier(p(2), day(15)), None);
        assert!(Network::decide(&network, &tier(1, 1, "silver", 1))
            .unwrap()
            .is_empty());
        assert_eq!(network.facts(), 2);
    }

    #[test]
    fn a_tier_grants_only_its_plans_and_a_partner_without_one_has_the_lowest_tiers() {
        let grant = |code: &str, rank, plans: &[u128]| TierGrant {
            code: code.into(),
            rank,
            plan_ids: plans.iter().copied().map(p).collect(),
        };
        assert_eq!(
            Network::default().grants(Some("gold"), p(9)),
            Ok(()),
            "no tiers: any plan"
        );
        let network = given(&[NetworkEvent::TiersDefined {
            source_event_id: p(0xd0),
            tiers: vec![grant("gold", 2, &[]), grant("silver", 1, &[7])],
            occurred_at: day(1),
        }]);
        assert_eq!(network.grants(Some("gold"), p(9)), Ok(()));
        assert_eq!(network.grants(Some("silver"), p(7)), Ok(()));
        assert_eq!(
            network.grants(Some("silver"), p(9)).unwrap_err().code,
            "silver"
        );
        assert_eq!(network.grants(None, p(9)).unwrap_err().code, "silver");
    }

    #[test]
    fn a_partner_cannot_be_recorded_as_its_own_parent() {
        assert_eq!(
            Network::decide(&Network::default(), &parent(1, 1, Some(1), 1)),
            Err(NetworkError::OwnParent)
        );
    }
}
