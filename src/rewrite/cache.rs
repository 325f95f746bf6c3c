//! Bounded cache of rewrites keyed by (statement text, parameter type OIDs). Each
//! [`super::Rewriter`] has its own, and a new snapshot brings new rewriters, so the epoch is
//! part of the key implicitly. Sharded map reads; when full, a clear keeps memory bounded
//! without bookkeeping on the hit path.

use std::sync::Arc;

use dashmap::DashMap;

use super::Rewrite;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    text: Box<str>,
    param_types: Box<[u32]>,
}

/// The cache; share one per process.
#[derive(Debug)]
pub struct RewriteCache {
    map: DashMap<Key, Arc<Rewrite>>,
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
        text: &str,
        param_types: &[u32],
        compute: impl FnOnce() -> Rewrite,
    ) -> Arc<Rewrite> {
        let key = Key {
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
    fn hits_by_text_and_types_and_stays_bounded() {
        let cache = RewriteCache::new(2);
        let mut computed = 0;
        for _ in 0..3 {
            cache.get_or_insert("select 1", &[], || {
                computed += 1;
                Rewrite::unchanged()
            });
        }
        assert_eq!(computed, 1);
        cache.get_or_insert("select 2", &[], Rewrite::unchanged);
        cache.get_or_insert("select 1", &[23], Rewrite::unchanged);
        assert!(cache.len() <= 2);
    }
}
