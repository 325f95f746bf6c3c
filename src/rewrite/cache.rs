//! Bounded cache keyed by (statement text, parameter type OIDs): of rewrites by exact text,
//! and of rewrite templates by literal-lifted text ([`super::literals`]). Each
//! [`super::Rewriter`] has its own, and a new snapshot brings new rewriters, so the epoch is
//! part of the key implicitly. Sharded map reads; when full, a clear keeps memory bounded
//! without bookkeeping on the hit path.

use std::sync::Arc;

use dashmap::DashMap;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    text: Box<str>,
    param_types: Box<[u32]>,
}

/// The cache; one per rewriter and kind of entry.
#[derive(Debug)]
pub struct RewriteCache<V> {
    map: DashMap<Key, Arc<V>>,
    capacity: usize,
}

impl<V> RewriteCache<V> {
    pub fn new(capacity: usize) -> RewriteCache<V> {
        RewriteCache {
            map: DashMap::new(),
            capacity: capacity.max(1),
        }
    }

    fn key(text: &str, param_types: &[u32]) -> Key {
        Key {
            text: text.into(),
            param_types: param_types.into(),
        }
    }

    /// The cached entry, if any.
    pub fn get(&self, text: &str, param_types: &[u32]) -> Option<Arc<V>> {
        self.map
            .get(&Self::key(text, param_types))
            .map(|hit| hit.clone())
    }

    /// The cached entry, or `compute()`'s, stored.
    pub fn get_or_insert(
        &self,
        text: &str,
        param_types: &[u32],
        compute: impl FnOnce() -> V,
    ) -> Arc<V> {
        let key = Self::key(text, param_types);
        if let Some(hit) = self.map.get(&key) {
            return hit.clone();
        }
        let value = Arc::new(compute());
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert(key, value.clone());
        value
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
    use crate::rewrite::Rewrite;

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
