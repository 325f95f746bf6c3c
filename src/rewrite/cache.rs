//! Bounded cache of rewrite outcomes keyed by (statement text, parameter type OIDs, epoch).
//! Lock-free reads through a sharded map; when full, a shard-wide clear keeps memory bounded
//! without bookkeeping on the hit path (entries of old epochs age out the same way).

use std::sync::Arc;

use dashmap::DashMap;

use super::Outcome;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    epoch: u64,
    text: Box<str>,
    param_types: Box<[u32]>,
}

/// The cache; share one per process.
#[derive(Debug)]
pub struct RewriteCache {
    map: DashMap<Key, Arc<Outcome>>,
    capacity: usize,
}

impl RewriteCache {
    pub fn new(capacity: usize) -> RewriteCache {
        RewriteCache {
            map: DashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The cached outcome, or `compute()`'s, stored.
    pub fn get_or_insert(
        &self,
        epoch: u64,
        text: &str,
        param_types: &[u32],
        compute: impl FnOnce() -> Outcome,
    ) -> Arc<Outcome> {
        let key = Key {
            epoch,
            text: text.into(),
            param_types: param_types.into(),
        };
        if let Some(hit) = self.map.get(&key) {
            return hit.clone();
        }
        let outcome = Arc::new(compute());
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert(key, outcome.clone());
        outcome
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_by_text_types_and_epoch_and_stays_bounded() {
        let cache = RewriteCache::new(2);
        let mut computed = 0;
        for _ in 0..3 {
            cache.get_or_insert(1, "select 1", &[], || {
                computed += 1;
                Outcome::Unchanged
            });
        }
        assert_eq!(computed, 1);
        cache.get_or_insert(2, "select 1", &[], || Outcome::Unchanged);
        cache.get_or_insert(2, "select 1", &[23], || Outcome::Unchanged);
        assert!(cache.len() <= 2);
    }
}
