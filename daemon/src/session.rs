//! Cross-connection MCP conversation state.
//!
//! Most correlation is local to one POST (its response body or SSE stream answers the
//! requests it carried). Two things span connections and live here:
//! - legacy HTTP+SSE (2024-11-05): the client POSTs to the URI announced in the GET
//!   stream's `endpoint` event and the responses come back on that GET stream;
//! - server-to-client requests (sampling, elicitation, roots) sent on an SSE stream and
//!   answered by the client in a later POST.
//!
//! Plus the protocol version negotiated per session. Every map is bounded.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

use mcpwatch_api::AuditRecord;

/// A map that forgets its oldest insertions beyond a capacity.
pub struct BoundedMap<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V> BoundedMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        BoundedMap { map: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// Insert; returns values evicted to make room.
    pub fn insert(&mut self, k: K, v: V) -> Vec<V> {
        let mut evicted = Vec::new();
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
        }
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => evicted.extend(self.map.remove(&old)),
                None => break,
            }
        }
        // Keep `order` from growing with keys already removed.
        if self.order.len() > self.capacity * 2 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
        evicted
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Remove and return every value whose key satisfies `f`.
    pub fn drain_where(&mut self, mut f: impl FnMut(&K) -> bool) -> Vec<V> {
        let keys: Vec<K> = self.map.keys().filter(|k| f(k)).cloned().collect();
        keys.iter().filter_map(|k| self.map.remove(k)).collect()
    }
}

/// A message awaiting its response, with its open audit record.
#[derive(Debug, Clone)]
pub struct Pending {
    pub record: AuditRecord,
    pub started: Instant,
    /// `tools/list` without a cursor: the result replaces the tool list.
    pub first_page: bool,
}

/// Where a legacy client's POSTs belong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyRoute {
    /// Inventory endpoint of the server (the SSE URL).
    pub endpoint: String,
    /// Correlation key shared by the POSTs and the GET stream.
    pub conversation: String,
    pub session_id: Option<String>,
}

pub struct Sessions {
    inner: Mutex<Inner>,
}

struct Inner {
    /// (conversation, JSON-RPC id text) → pending message.
    pending: BoundedMap<(String, String), Pending>,
    /// (dst, host, path?query) → legacy route.
    legacy: BoundedMap<(String, String, String), LegacyRoute>,
    /// (endpoint, session id) → protocol version.
    versions: BoundedMap<(String, String), String>,
}

impl Sessions {
    pub fn new(max_pending: usize) -> Sessions {
        Sessions {
            inner: Mutex::new(Inner {
                pending: BoundedMap::new(max_pending),
                legacy: BoundedMap::new(4096),
                versions: BoundedMap::new(4096),
            }),
        }
    }

    /// Park a message until its response arrives on another connection. Returns
    /// messages evicted by the bound (the caller closes their records).
    pub fn park(&self, conversation: &str, id: &str, p: Pending) -> Vec<Pending> {
        match self.inner.lock() {
            Ok(mut i) => i.pending.insert((conversation.to_string(), id.to_string()), p),
            Err(_) => vec![p],
        }
    }

    pub fn take(&self, conversation: &str, id: &str) -> Option<Pending> {
        self.inner.lock().ok()?.pending.remove(&(conversation.to_string(), id.to_string()))
    }

    /// Everything still waiting in a conversation (its stream ended).
    pub fn drain(&self, conversation: &str) -> Vec<Pending> {
        match self.inner.lock() {
            Ok(mut i) => i.pending.drain_where(|(c, _)| c == conversation),
            Err(_) => Vec::new(),
        }
    }

    pub fn pending_len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.pending.len())
    }

    pub fn add_legacy_route(&self, dst: &str, host: &str, path_and_query: &str, route: LegacyRoute) {
        if let Ok(mut i) = self.inner.lock() {
            i.legacy.insert((dst.to_string(), host.to_string(), path_and_query.to_string()), route);
        }
    }

    pub fn legacy_route(&self, dst: &str, host: &str, path_and_query: &str) -> Option<LegacyRoute> {
        let i = self.inner.lock().ok()?;
        i.legacy.get(&(dst.to_string(), host.to_string(), path_and_query.to_string())).cloned()
    }

    pub fn set_version(&self, endpoint: &str, session: &str, version: &str) {
        if let Ok(mut i) = self.inner.lock() {
            i.versions.insert((endpoint.to_string(), session.to_string()), version.to_string());
        }
    }

    pub fn version(&self, endpoint: &str, session: &str) -> Option<String> {
        self.inner.lock().ok()?.versions.get(&(endpoint.to_string(), session.to_string())).cloned()
    }

    pub fn end_session(&self, endpoint: &str, session: &str) {
        if let Ok(mut i) = self.inner.lock() {
            i.versions.remove(&(endpoint.to_string(), session.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_map_evicts_oldest() {
        let mut m = BoundedMap::new(2);
        assert!(m.insert(1, "a").is_empty());
        assert!(m.insert(2, "b").is_empty());
        assert_eq!(m.insert(3, "c"), vec!["a"]);
        assert_eq!(m.get(&1), None);
        assert_eq!(m.get(&3), Some(&"c"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn bounded_map_order_does_not_grow_after_removals() {
        let mut m = BoundedMap::new(4);
        for i in 0..1000 {
            m.insert(i, i);
            m.remove(&i);
        }
        assert!(m.order.len() <= 8, "{}", m.order.len());
    }

    #[test]
    fn drain_takes_only_one_conversation() {
        let s = Sessions::new(16);
        let p = Pending { record: AuditRecord::default(), started: Instant::now(), first_page: false };
        s.park("a", "1", p.clone());
        s.park("a", "2", p.clone());
        s.park("b", "1", p);
        assert_eq!(s.drain("a").len(), 2);
        assert!(s.take("b", "1").is_some());
        assert_eq!(s.pending_len(), 0);
    }
}
