//! The partner hierarchy of one program (stream `partner-hierarchy-<program>`): who is whose
//! parent in a multi-level program. Every parent change of a program goes through this one
//! stream, so two concurrent changes cannot build a cycle between them (the second is decided
//! again on the first's result). Pure: it never checks that partners exist or belong to the
//! program (the caller does), and never allows a cycle or a hierarchy deeper than the program's
//! levels.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Classify, Kind};

/// Partners with a parent in one program.
pub const MAX_LINKS: usize = 100_000;
/// Parent changes kept per program (a runaway caller toggling parents stops here).
pub const MAX_CHANGES: usize = 1_000_000;

/// The `PartnerParentChanged` contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentChanged {
    pub partner_id: Uuid,
    pub program_id: Uuid,
    #[serde(with = "crate::wire::opt_id", default)]
    pub parent_partner_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum HierarchyEvent {
    PartnerParentChanged(ParentChanged),
}

impl DomainEvent for HierarchyEvent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetParent {
    pub program_id: Uuid,
    pub partner_id: Uuid,
    pub parent: Option<Uuid>,
    pub max_levels: u8,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchy {
    pub parents: BTreeMap<Uuid, Uuid>,
    pub changes: usize,
}

impl Hierarchy {
    pub fn parent_of(&self, partner: Uuid) -> Option<Uuid> {
        self.parents.get(&partner).copied()
    }

    /// `partner` and its ancestors, nearest first (bounded: the hierarchy has no cycle).
    fn chain(&self, partner: Uuid) -> Vec<Uuid> {
        let mut chain = vec![partner];
        let mut seen = BTreeSet::from([partner]);
        let mut at = partner;
        while let Some(p) = self.parents.get(&at) {
            if !seen.insert(*p) {
                break;
            }
            chain.push(*p);
            at = *p;
        }
        chain
    }

    /// Levels of the subtree under `partner`, itself included (1 for a partner without
    /// children).
    fn height(&self, partner: Uuid) -> usize {
        let mut children: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        for (child, parent) in &self.parents {
            children.entry(*parent).or_default().push(*child);
        }
        let mut height = 1;
        let mut level = vec![partner];
        let mut seen = BTreeSet::from([partner]);
        loop {
            let next: Vec<Uuid> = level
                .iter()
                .flat_map(|p| children.get(p).into_iter().flatten().copied())
                .filter(|c| seen.insert(*c))
                .collect();
            if next.is_empty() {
                return height;
            }
            height += 1;
            level = next;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HierarchyError {
    #[error("a partner cannot be its own parent")]
    SelfParent,
    #[error(
        "{parent} is below {partner} in the hierarchy: making it the parent would close a cycle"
    )]
    Cycle { partner: Uuid, parent: Uuid },
    #[error("the hierarchy would have {levels} levels; the program allows {max_levels}")]
    TooDeep { levels: usize, max_levels: u8 },
    #[error("the program's hierarchy holds {MAX_LINKS} parent links or {MAX_CHANGES} changes; no more are accepted")]
    Full,
}

impl Classify for HierarchyError {
    fn kind(&self) -> Kind {
        Kind::Rule
    }
}

impl Aggregate for Hierarchy {
    type State = Hierarchy;
    type Command = SetParent;
    type Event = HierarchyEvent;
    type Error = HierarchyError;

    fn decide(state: &Hierarchy, c: &SetParent) -> Result<Vec<HierarchyEvent>, HierarchyError> {
        if state.parent_of(c.partner_id) == c.parent {
            return Ok(vec![]);
        }
        if state.changes >= MAX_CHANGES {
            return Err(HierarchyError::Full);
        }
        if let Some(parent) = c.parent {
            if parent == c.partner_id {
                return Err(HierarchyError::SelfParent);
            }
            let above = state.chain(parent);
            if above.contains(&c.partner_id) {
                return Err(HierarchyError::Cycle {
                    partner: c.partner_id,
                    parent,
                });
            }
            let levels = above.len() + state.height(c.partner_id);
            if levels > usize::from(c.max_levels) {
                return Err(HierarchyError::TooDeep {
                    levels,
                    max_levels: c.max_levels,
                });
            }
            if state.parent_of(c.partner_id).is_none() && state.parents.len() >= MAX_LINKS {
                return Err(HierarchyError::Full);
            }
        }
        Ok(vec![HierarchyEvent::PartnerParentChanged(ParentChanged {
            partner_id: c.partner_id,
            program_id: c.program_id,
            parent_partner_id: c.parent,
            occurred_at: c.at,
        })])
    }

    fn evolve(mut state: Hierarchy, event: &HierarchyEvent) -> Hierarchy {
        let HierarchyEvent::PartnerParentChanged(p) = event;
        state.changes += 1;
        match p.parent_partner_id {
            Some(parent) => state.parents.insert(p.partner_id, parent),
            None => state.parents.remove(&p.partner_id),
        };
        state
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const PROGRAM: Uuid = Uuid::from_u128(0x99);

    fn p(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn set(partner: u128, parent: Option<u128>, max_levels: u8) -> SetParent {
        SetParent {
            program_id: PROGRAM,
            partner_id: p(partner),
            parent: parent.map(p),
            max_levels,
            at: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
        }
    }

    fn given(links: &[(u128, u128)]) -> Hierarchy {
        links.iter().fold(Hierarchy::default(), |h, (c, parent)| {
            let e = Hierarchy::decide(&h, &set(*c, Some(*parent), 10)).unwrap();
            e.iter().fold(h, Hierarchy::evolve)
        })
    }

    #[test]
    fn given_a_chain_when_its_top_is_made_a_child_of_its_bottom_then_the_cycle_is_rejected() {
        // 3 → 2 → 1
        let h = given(&[(2, 1), (3, 2)]);
        assert_eq!(
            Hierarchy::decide(&h, &set(1, Some(3), 10)).unwrap_err(),
            HierarchyError::Cycle {
                partner: p(1),
                parent: p(3)
            }
        );
        assert_eq!(
            Hierarchy::decide(&h, &set(1, Some(1), 10)).unwrap_err(),
            HierarchyError::SelfParent
        );
    }

    #[test]
    fn given_a_two_level_program_then_a_grandchild_is_rejected() {
        let h = given(&[(2, 1)]);
        assert_eq!(
            Hierarchy::decide(&h, &set(3, Some(2), 2)).unwrap_err(),
            HierarchyError::TooDeep {
                levels: 3,
                max_levels: 2
            }
        );
        // A partner with children cannot go under another either.
        assert_eq!(
            Hierarchy::decide(&h, &set(1, Some(4), 2)).unwrap_err(),
            HierarchyError::TooDeep {
                levels: 3,
                max_levels: 2
            }
        );
        assert_eq!(Hierarchy::decide(&h, &set(3, Some(1), 2)).unwrap().len(), 1);
    }

    #[test]
    fn a_parent_is_cleared_and_setting_the_same_parent_again_changes_nothing() {
        let h = given(&[(2, 1)]);
        assert!(Hierarchy::decide(&h, &set(2, Some(1), 10))
            .unwrap()
            .is_empty());
        let e = Hierarchy::decide(&h, &set(2, None, 10)).unwrap();
        let h = Hierarchy::evolve(h, &e[0]);
        assert_eq!(h.parent_of(p(2)), None);
        let (_, data) = pl_runtime::aggregate::encode_event(&e[0]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(v["parent_partner_id"], "");
    }
}
