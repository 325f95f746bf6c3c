//! Cancel keys. Each client gets a pgshift-issued (pid, secret) in BackendKeyData; a
//! CancelRequest carrying it is mapped to the upstream backend that client's session uses and
//! sent there with the upstream's real key. Secrets are compared in constant time.

use std::sync::Arc;

use dashmap::DashMap;
use rand::RngExt;
use subtle::ConstantTimeEq;

use crate::wire::CancelKey;

/// Where a CancelRequest for one client goes.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// The key issued to the client.
    pub client_secret: Vec<u8>,
    /// The upstream backend's own key.
    pub upstream: CancelKey,
}

/// All live sessions' cancel keys, by the pid pgshift issued.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    targets: DashMap<i32, CancelTarget>,
}

/// Removes a session's key when the session ends.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pid: i32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.targets.remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Issues a fresh key for a session whose upstream backend has key `upstream`; the secret
    /// has the same length as the upstream's (4 bytes in protocol 3.0).
    pub fn register(self: &Arc<Self>, upstream: CancelKey) -> (CancelKey, Registration) {
        let mut rng = rand::rng();
        let secret: Vec<u8> = (0..upstream.secret.len().max(4))
            .map(|_| rng.random())
            .collect();
        loop {
            // Positive pids, like real backends; some clients print them.
            let pid = rng.random_range(1..i32::MAX);
            if let dashmap::Entry::Vacant(slot) = self.targets.entry(pid) {
                slot.insert(CancelTarget {
                    client_secret: secret.clone(),
                    upstream,
                });
                let registration = Registration {
                    registry: self.clone(),
                    pid,
                };
                return (CancelKey { pid, secret }, registration);
            }
        }
    }

    /// The upstream key for a client's cancel key, if it is live and the secret matches.
    pub fn lookup(&self, key: &CancelKey) -> Option<CancelKey> {
        let target = self.targets.get(&key.pid)?;
        let same_len = target.client_secret.len() == key.secret.len();
        // ct_eq on slices of different lengths is false without leaking where they differ.
        let equal: bool = target.client_secret.as_slice().ct_eq(&key.secret).into();
        (same_len && equal).then(|| target.upstream.clone())
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_map_to_upstream_and_expire() {
        let registry = Arc::new(CancelRegistry::default());
        let upstream = CancelKey {
            pid: 99,
            secret: vec![1, 2, 3, 4],
        };
        let (issued, registration) = registry.register(upstream.clone());
        assert_ne!(issued.secret, upstream.secret);
        assert_eq!(registry.lookup(&issued), Some(upstream));

        let mut wrong = issued.clone();
        wrong.secret[0] ^= 1;
        assert_eq!(registry.lookup(&wrong), None);
        let short = CancelKey {
            pid: issued.pid,
            secret: issued.secret[..3].to_vec(),
        };
        assert_eq!(registry.lookup(&short), None);

        drop(registration);
        assert_eq!(registry.lookup(&issued), None);
        assert!(registry.is_empty());
    }
}
