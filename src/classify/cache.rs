//! The bounded classification cache: sharded maps with CLOCK (second-chance) eviction.
//!
//! Keyed by (dialect, catalog generation, search_path, statement text): the same text means
//! different tables under another search_path, and different writes under another catalog
//! (a function's volatility, the policy's `[[function]]` entries). A hit costs one hash of
//! the key and one uncontended lock; it never allocates. It must never return a result for a
//! different key: the full key is compared on every hit, the hash only finds the slot.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex};

use super::{Classification, Dialect, SearchPath};

/// Shards spread the lock over threads; 16 is plenty for the cores a proxy runs on.
const SHARDS: usize = 16;

/// A lookup key borrowed from the caller, so a hit allocates nothing.
pub(super) struct KeyRef<'a> {
    pub dialect: Dialect,
    pub generation: u64,
    pub path: &'a SearchPath,
    pub sql: &'a str,
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.dialect.hash(h);
        self.generation.hash(h);
        self.path.hash(h);
        self.sql.hash(h);
    }
}

/// One cached result with its full key.
struct Entry {
    dialect: Dialect,
    generation: u64,
    path: SearchPath,
    sql: Box<str>,
    value: Arc<Classification>,
    /// Set on a hit, cleared by the clock hand: an entry used since the hand last passed
    /// survives one more round.
    referenced: bool,
}

impl Entry {
    fn matches(&self, k: &KeyRef) -> bool {
        self.dialect == k.dialect && self.generation == k.generation && *self.sql == *k.sql && self.path == *k.path
    }
}

/// The map's keys are already hashes: hash them no further.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One shard: entries by key hash, and the clock's ring of hashes in insertion order.
#[derive(Default)]
struct Shard {
    map: HashMap<u64, Entry, BuildHasherDefault<Identity>>,
    ring: VecDeque<u64>,
}

pub(super) struct Cache {
    /// Per-process random keys, so crafted statement texts cannot aim at one slot.
    state: RandomState,
    shards: Vec<Mutex<Shard>>,
    /// Entries per shard; 0 disables caching.
    per_shard: usize,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache {
            state: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.shards[(hash >> 56) as usize % SHARDS]
    }

    pub fn get(&self, key: &KeyRef) -> Option<Arc<Classification>> {
        if self.per_shard == 0 {
            return None;
        }
        let hash = self.state.hash_one(key);
        let mut shard = self.shard(hash).lock().unwrap_or_else(|p| p.into_inner());
        let entry = shard.map.get_mut(&hash)?;
        if !entry.matches(key) {
            return None;
        }
        entry.referenced = true;
        Some(entry.value.clone())
    }

    pub fn insert(&self, key: &KeyRef, value: Arc<Classification>) {
        if self.per_shard == 0 {
            return;
        }
        let hash = self.state.hash_one(key);
        let entry = Entry {
            dialect: key.dialect,
            generation: key.generation,
            path: key.path.clone(),
            sql: key.sql.into(),
            value,
            referenced: false,
        };
        let mut shard = self.shard(hash).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = shard.map.get_mut(&hash) {
            // The same key raced in from another thread, or a hash collision: newest wins.
            *slot = entry;
            return;
        }
        while shard.map.len() >= self.per_shard {
            let Some(victim) = shard.ring.pop_front() else {
                break;
            };
            match shard.map.get_mut(&victim) {
                Some(e) if e.referenced => {
                    e.referenced = false;
                    shard.ring.push_back(victim);
                }
                Some(_) => {
                    shard.map.remove(&victim);
                }
                None => {}
            }
        }
        shard.map.insert(hash, entry);
        shard.ring.push_back(hash);
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len()).sum()
    }
}
