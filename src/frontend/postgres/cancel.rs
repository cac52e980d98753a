//! Cancel keys: the proxy hands each client a BackendKeyData with the primary's process id
//! (so `pg_backend_pid()`, notifications and driver-reported pids agree, as on a direct
//! connection) and a secret of its own, mapped to the primary's secret. A CancelRequest, which
//! arrives on a new connection, reaches the right backend only with the proxy's secret.
//! Process ids are unique among the live sessions of one primary, so they key the map.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The primary's key for one session.
#[derive(Debug, Clone)]
pub struct UpstreamKey {
    pub pid: i32,
    pub secret: Vec<u8>,
}

struct Entry {
    secret: Vec<u8>,
    upstream: UpstreamKey,
}

/// All live sessions' keys, shared by the listener.
#[derive(Default, Clone)]
pub struct CancelRegistry {
    map: Arc<Mutex<HashMap<i32, Entry>>>,
}

/// A registered key; dropping it (when the session ends) unregisters it.
pub struct CancelKey {
    pub pid: i32,
    pub secret: Vec<u8>,
    registry: CancelRegistry,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.map.lock() {
            // Only this session's entry: the primary may already have reused the pid for a
            // newer session that registered after this one ended upstream.
            if map.get(&self.pid).is_some_and(|e| e.secret == self.secret) {
                map.remove(&self.pid);
            }
        }
    }
}

impl CancelRegistry {
    /// Allocate a fresh key for a session whose primary key is `upstream`: the primary's
    /// process id and a new random secret of the primary's length (4 bytes in protocol 3.0,
    /// longer in 3.2). A stale entry for a reused process id is replaced.
    pub fn register(&self, upstream: UpstreamKey) -> CancelKey {
        let mut secret = vec![0u8; upstream.secret.len()];
        rand::fill(&mut secret[..]);
        let pid = upstream.pid;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(pid, Entry { secret: secret.clone(), upstream });
        CancelKey { pid, secret, registry: self.clone() }
    }

    /// The primary's key for a client's cancel request, if the request names a live session
    /// with the right secret.
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<UpstreamKey> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.get(&pid)?;
        crate::protocol::constant_time_eq(&entry.secret, secret).then(|| entry.upstream.clone())
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_and_unregister() {
        let reg = CancelRegistry::default();
        let key = reg.register(UpstreamKey { pid: 77, secret: vec![9, 9, 9, 9] });
        assert_eq!(reg.lookup(key.pid, &key.secret).unwrap().pid, 77);
        assert!(reg.lookup(key.pid, &[0, 0, 0, 0]).is_none());
        drop(key);
        assert!(reg.is_empty());
    }
}
