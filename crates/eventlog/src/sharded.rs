//! A hash map split into a fixed number of shards, for the index's maps (every stream, every
//! event id), which grow with the log and live under the log's one lock.
//!
//! Why: a `HashMap` grows by moving every entry into a table twice the size, all in the one
//! insert that crosses its capacity. Under the log's lock that insert stalls every append and
//! read for the whole move: on the machine of 2026-12-05 (AMD EPYC, 2 cores) a map of string
//! keys took 50 ms to grow past 131k entries and 0.4 s past 1M, and the stall doubles with
//! each growth. Split into [`SHARDS`] maps by the key's hash, each growth moves a
//! [`SHARDS`]th of the entries, so the longest stall is that much shorter; lookups hash the
//! key once more to pick the shard (tens of nanoseconds). No I/O; iteration order is
//! unspecified, as a `HashMap`'s.

use std::borrow::Borrow;
use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Shards per map: the longest growth stall is this many times shorter than one map's. Each
/// empty shard costs a few dozen bytes.
pub(crate) const SHARDS: usize = 256;

#[derive(Debug)]
pub(crate) struct ShardedMap<K, V> {
    shards: Vec<HashMap<K, V>>,
    /// Picks the shard; keyed per map (as `HashMap`'s own hasher is), so that keys an outsider
    /// chooses cannot all be sent to one shard.
    pick: RandomState,
    len: usize,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
            pick: RandomState::new(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// Room for about `entries` without growing (a reopened log's ids, known from its
    /// snapshot).
    pub(crate) fn with_capacity(entries: usize) -> Self {
        let per_shard = entries.div_ceil(SHARDS);
        Self {
            shards: (0..SHARDS)
                .map(|_| HashMap::with_capacity(per_shard + per_shard / 8))
                .collect(),
            pick: RandomState::new(),
            len: 0,
        }
    }

    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        // SHARDS is a power of two: the low bits of the hash choose.
        (self.pick.hash_one(key) as usize) & (SHARDS - 1)
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard_of(key)].get(key)
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = self.shard_of(&key);
        let previous = self.shards[shard].insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// The value under `key`, inserted as `V::default()` when absent.
    pub(crate) fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let shard = self.shard_of(&key);
        match self.shards[shard].entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.len += 1;
                e.insert(V::default())
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(HashMap::iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_keeps_what_a_hash_map_keeps() {
        let mut map: ShardedMap<String, u64> = ShardedMap::default();
        for i in 0..5_000u64 {
            assert_eq!(map.insert(format!("stream-{i}"), i), None);
        }
        assert_eq!(
            map.insert("stream-7".into(), 70),
            Some(7),
            "a second insert replaces"
        );
        *map.get_or_default("stream-8".into()) += 1;
        *map.get_or_default("new".into()) += 2;
        assert_eq!(map.len(), 5_001);
        assert_eq!(map.get("stream-7"), Some(&70), "looked up by &str");
        assert_eq!(map.get("stream-8"), Some(&9));
        assert_eq!(map.get("new"), Some(&2));
        assert_eq!(map.get("stream-5000"), None);
        let mut all: Vec<_> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort();
        assert_eq!(all.len(), 5_001, "iteration visits every entry once");
        assert!(all.contains(&("stream-4999".into(), 4999)));
    }

    #[test]
    fn keys_spread_over_every_shard() {
        let mut map: ShardedMap<u64, ()> = ShardedMap::default();
        for i in 0..(SHARDS as u64 * 64) {
            map.insert(i, ());
        }
        let largest = map.shards.iter().map(HashMap::len).max().unwrap_or(0);
        let empty = map.shards.iter().filter(|s| s.is_empty()).count();
        // 64 per shard on average; no shard holds more than a few times that.
        assert_eq!(empty, 0);
        assert!(largest < 64 * 3, "largest shard {largest}");
    }
}
