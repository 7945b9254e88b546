//! The read model behind listings: the state of every CRM aggregate, folded from the log (the
//! `partner-*` streams, in global order) with the deciders' own `evolve`, caught up on every
//! query so a listing sees every write that finished before it. Nothing in it is a source of
//! truth: rebuilding from position 0 gives the same model, and commands never decide on it
//! (they load their own streams). It must never write to the log.

use std::collections::BTreeMap;

use pl_eventlog::{EventStore, RecordedEvent};
use pl_runtime::aggregate::decode_event;
use pl_runtime::{Aggregate, ApiError};
use uuid::Uuid;

use crate::campaigns::Campaign;
use crate::coupons::Code;
use crate::deals::Registry;
use crate::hierarchy::Hierarchy;
use crate::links::Link;
use crate::marketing::Asset;
use crate::mdf::Budget;
use crate::partner::Partner;
use crate::program::Program;
use crate::streams::{self, Kind};

/// Events read per catch-up page.
const CATCH_UP_PAGE: usize = 4096;
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// An aggregate's state and the version of its stream it reflects.
#[derive(Debug, Clone, Default)]
pub struct Entry<S> {
    pub state: S,
    pub version: u64,
}

#[derive(Debug, Default)]
pub struct Model {
    next_position: u64,
    pub programs: BTreeMap<Uuid, Entry<Program>>,
    pub partners: BTreeMap<Uuid, Entry<Partner>>,
    /// Per program.
    pub hierarchies: BTreeMap<Uuid, Hierarchy>,
    pub links: BTreeMap<Uuid, Entry<Link>>,
    /// Per code stream.
    pub codes: BTreeMap<String, Entry<Code>>,
    /// Per domain registry stream.
    pub deals: BTreeMap<String, Entry<Registry>>,
    pub budgets: BTreeMap<Uuid, Entry<Budget>>,
    pub campaigns: BTreeMap<Uuid, Entry<Campaign>>,
    pub assets: BTreeMap<Uuid, Entry<Asset>>,
}

fn fold<A: Aggregate, K: Ord>(
    map: &mut BTreeMap<K, Entry<A::State>>,
    key: K,
    recorded: &RecordedEvent,
) -> Result<(), ApiError>
where
    A::State: Default,
{
    let event: A::Event = decode_event(recorded).map_err(ApiError::internal)?;
    let entry = map.entry(key).or_insert_with(|| Entry {
        state: A::State::default(),
        version: 0,
    });
    entry.state = A::evolve(std::mem::take(&mut entry.state), &event);
    entry.version = recorded.version;
    Ok(())
}

/// The id at the end of a stream name (`partner-link-<id>` → id).
fn tail_id(stream: &str) -> Result<Uuid, ApiError> {
    let tail = stream.rsplit('-').take(5).collect::<Vec<_>>();
    let text = tail.into_iter().rev().collect::<Vec<_>>().join("-");
    Uuid::try_parse(&text).map_err(|_| ApiError::internal(format!("stream {stream} has no id")))
}

impl Model {
    fn apply(&mut self, r: &RecordedEvent) -> Result<(), ApiError> {
        let Some(kind) = streams::kind_of(&r.stream) else {
            return Ok(());
        };
        match kind {
            Kind::Partner => fold::<Partner, _>(&mut self.partners, tail_id(&r.stream)?, r),
            Kind::Program => fold::<Program, _>(&mut self.programs, tail_id(&r.stream)?, r),
            Kind::Hierarchy => {
                let program = tail_id(&r.stream)?;
                let event = decode_event(r).map_err(ApiError::internal)?;
                let h = self.hierarchies.entry(program).or_default();
                *h = Hierarchy::evolve(std::mem::take(h), &event);
                Ok(())
            }
            Kind::Link => fold::<Link, _>(&mut self.links, tail_id(&r.stream)?, r),
            Kind::Code => fold::<Code, _>(&mut self.codes, r.stream.clone(), r),
            Kind::DealRef => Ok(()),
            Kind::Deals => fold::<Registry, _>(&mut self.deals, r.stream.clone(), r),
            Kind::Budget => fold::<Budget, _>(&mut self.budgets, tail_id(&r.stream)?, r),
            Kind::Campaign => fold::<Campaign, _>(&mut self.campaigns, tail_id(&r.stream)?, r),
            Kind::Asset => fold::<Asset, _>(&mut self.assets, tail_id(&r.stream)?, r),
        }
    }

    /// The partner's parent in its program's hierarchy.
    pub fn parent_of(&self, partner: &Partner) -> Option<Uuid> {
        let a = partner.application.as_ref()?;
        self.hierarchies.get(&a.program_id)?.parent_of(a.partner_id)
    }
}

/// The shared read model and its catch-up.
#[derive(Debug, Default)]
pub struct ReadModel {
    model: tokio::sync::Mutex<Model>,
}

impl ReadModel {
    /// Folds in every event appended since the last call, then hands out the model.
    pub async fn caught_up(
        &self,
        store: &dyn EventStore,
    ) -> Result<tokio::sync::MutexGuard<'_, Model>, ApiError> {
        let mut m = self.model.lock().await;
        loop {
            let page = store.read_all(m.next_position, CATCH_UP_PAGE).await?;
            let Some(last) = page.last() else { break };
            let next = last.position + 1;
            for recorded in &page {
                if recorded.stream.starts_with(crate::STREAM_PREFIX) {
                    m.apply(recorded)?;
                }
            }
            m.next_position = next;
            if page.len() < CATCH_UP_PAGE {
                break;
            }
        }
        Ok(m)
    }
}

/// One page of `items` from `offset`, at most `limit`, and the next page's token (empty at the
/// end).
pub fn page<T>(items: impl Iterator<Item = T>, offset: usize, limit: usize) -> (Vec<T>, String) {
    let mut it = items.skip(offset);
    let page: Vec<T> = it.by_ref().take(limit).collect();
    let next = if it.next().is_some() {
        (offset + page.len()).to_string()
    } else {
        String::new()
    };
    (page, next)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_page_says_whether_more_follow() {
        let (p, next) = page(1..=5, 0, 2);
        assert_eq!((p, next.as_str()), (vec![1, 2], "2"));
        let (p, next) = page(1..=5, 4, 2);
        assert_eq!((p, next.as_str()), (vec![5], ""));
        let (p, next) = page(1..=4, 2, 2);
        assert_eq!((p, next.as_str()), (vec![3, 4], ""));
    }

    #[test]
    fn the_id_of_a_stream_is_its_tail() {
        let id = Uuid::from_u128(0xabc);
        assert_eq!(tail_id(&streams::link(id)).unwrap(), id);
        assert_eq!(tail_id(&streams::partner(id)).unwrap(), id);
    }
}
