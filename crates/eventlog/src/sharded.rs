//! A hash map split into a fixed number of shards, for the index's maps (every stream, every
//! event id), which grow with the log and live under the log's one lock.
//!
//! Why: a `HashMap` grows by moving every entry into a table twice the size, all in the one
//! insert that crosses its capacity. Under the log's lock that insert stalls every append and
//! read for the whole move: on the machine of 2026-12-05 (AMD EPYC, 2 cores) a map of string
//! keys took 50 ms to grow past 131k entries and 0.4 s past 1M, and the stall doubles with
//! each growth. Split into [`SHARDS`] tables by the key's hash, each growth moves a
//! [`SHARDS`]th of the entries, so the longest stall is that much shorter. A key is hashed
//! once (foldhash, randomly seeded per map): the same hash picks the shard and finds the key
//! in it. No I/O; iteration order is unspecified, as a `HashMap`'s.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use foldhash::fast::RandomState;
use hashbrown::hash_table::{Entry, HashTable};

/// Shards per map: the longest growth stall is this many times shorter than one map's. Each
/// empty shard costs a few dozen bytes.
pub(crate) const SHARDS: usize = 256;

/// Multiplier that stirs a key's hash before its top eight bits choose the shard (Fibonacci
/// hashing: 2^64 divided by the golden ratio, odd, so the stir is a bijection). Why stir:
/// foldhash's fast hash of small consecutive integers leaves some fixed bit ranges nearly
/// constant under some seeds; reading the shard straight from bits 48 to 55 left 144 of 256
/// shards empty for the keys 0..16384 in one run of forty. The top bits of a product depend on
/// every bit of the hash, and no bit of the hash itself is fixed within a shard, so a shard's
/// table (which places keys by the hash's low bits and tells them apart by its top seven) sees
/// hashes as varied as the map's.
const SHARD_STIR: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug)]
pub(crate) struct ShardedMap<K, V> {
    shards: Vec<HashTable<(K, V)>>,
    /// Seeded at random per map, so that keys an outsider chooses cannot be aimed at one shard
    /// or one chain without first recovering the seed (foldhash is only minimally resistant to
    /// that, where SipHash resists it: the price of the speed; std's own table, hashbrown,
    /// makes the same choice by default). foldhash rather than SipHash: a lookup hashed its key
    /// twice with SipHash (shard, then table), about 3% of a conversion's CPU in the attribution
    /// bench's profile of 2026-12-06.
    hasher: RandomState,
    len: usize,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
            hasher: RandomState::default(),
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
                .map(|_| HashTable::with_capacity(per_shard + per_shard / 8))
                .collect(),
            hasher: RandomState::default(),
            len: 0,
        }
    }

    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(hash: u64) -> usize {
        // SHARDS is 256: the top eight bits of the stirred hash choose.
        const _: () = assert!(SHARDS == 256);
        (hash.wrapping_mul(SHARD_STIR) >> 56) as usize
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.shards[Self::shard(hash)]
            .find(hash, |(k, _)| k.borrow() == key)
            .map(|(_, v)| v)
    }

    /// The place of `key` in its shard, found with one hash (the same hash picks the shard).
    /// Takes the map's fields apart so that the caller may count an insert meanwhile.
    fn slot<'a, Q>(
        shards: &'a mut [HashTable<(K, V)>],
        hasher: &RandomState,
        key: &Q,
    ) -> Entry<'a, (K, V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = hasher.hash_one(key);
        shards[Self::shard(hash)].entry(
            hash,
            |(k, _)| k.borrow() == key,
            |(k, _)| hasher.hash_one(k),
        )
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match Self::slot(&mut self.shards, &self.hasher, &key) {
            Entry::Occupied(mut e) => Some(std::mem::replace(&mut e.get_mut().1, value)),
            Entry::Vacant(e) => {
                e.insert((key, value));
                self.len += 1;
                None
            }
        }
    }

    /// The value under `key`, inserted as `V::default()` when absent. The key is copied into
    /// the map only then (a stream's name is looked up on every append to it, and stored once).
    pub(crate) fn get_or_default<Q>(&mut self, key: &Q) -> &mut V
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        V: Default,
    {
        match Self::slot(&mut self.shards, &self.hasher, key) {
            Entry::Occupied(e) => &mut e.into_mut().1,
            Entry::Vacant(e) => {
                self.len += 1;
                &mut e.insert((key.to_owned(), V::default())).into_mut().1
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards
            .iter()
            .flat_map(HashTable::iter)
            .map(|(k, v)| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

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
        *map.get_or_default("stream-8") += 1;
        *map.get_or_default("new") += 2;
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
    fn keys_stay_found_while_every_shard_grows_many_times() {
        // Each shard's table rehashes its entries as it grows, with the same hash that chose
        // the shard: a key must be found in its shard after every growth, by `&str` too.
        let mut map: ShardedMap<String, usize> = ShardedMap::default();
        for i in 0..(SHARDS * 300) {
            *map.get_or_default(format!("s-{i}").as_str()) += i;
            if i % 997 == 0 {
                for j in (0..=i).step_by(101) {
                    assert_eq!(
                        map.get(format!("s-{j}").as_str()),
                        Some(&j),
                        "key {j} after {i}"
                    );
                }
            }
        }
        assert_eq!(map.len(), SHARDS * 300);
        assert_eq!(map.iter().count(), SHARDS * 300);
    }

    /// Asserts that `keys` fill every shard of a fresh map and none beyond three times its share.
    fn assert_spread<K: Hash + Eq>(keys: impl Iterator<Item = K>, what: &str) {
        let mut map: ShardedMap<K, ()> = ShardedMap::default();
        for key in keys {
            map.insert(key, ());
        }
        let share = map.len() / SHARDS;
        let largest = map.shards.iter().map(HashTable::len).max().unwrap_or(0);
        let empty = map.shards.iter().filter(|s| s.is_empty()).count();
        assert_eq!(empty, 0, "{what}: {empty} empty shards");
        assert!(largest < share * 3, "{what}: largest shard {largest}");
    }

    #[test]
    fn keys_spread_over_every_shard_whatever_the_seed() {
        // Each map draws its own seed; a seed that leaves shards empty once in forty runs
        // (as reading the shard from fixed hash bits did, and leaving consecutive uuids three
        // shards short once in thirty) fails here all but surely.
        for round in 0..64 {
            assert_spread(
                0..(SHARDS as u64 * 64),
                &format!("consecutive u64, map {round}"),
            );
            assert_spread(
                (0..SHARDS * 64).map(|i| format!("partner-{i}")),
                &format!("stream names, map {round}"),
            );
            assert_spread(
                (0..SHARDS as u128 * 64).map(Uuid::from_u128),
                &format!("consecutive uuids, map {round}"),
            );
        }
    }
}
