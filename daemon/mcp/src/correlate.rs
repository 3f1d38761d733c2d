//! Pairing responses with the requests that caused them.
//!
//! Why this exists: a response names only its JSON-RPC id, and ids are unique
//! only within one conversation (one Streamable HTTP session, one legacy SSE
//! session, one connection). Responses can come back on another HTTP exchange
//! (legacy SSE stream, GET stream) and out of order, so the proxy keeps the
//! audit context of every request in flight keyed by (conversation, id).
//!
//! The table is bounded: inserting past capacity evicts the oldest entry and
//! hands it back, so the proxy can close its audit record (e.g. as a transport
//! error) instead of silently losing it. There is no clock in this crate; for
//! age-based expiry store a timestamp in `T` and call [`Correlator::remove_where`].

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;

use crate::jsonrpc::{Id, IdKey};

/// Opaque conversation identity built by the proxy, e.g.
/// `"http://127.0.0.1:8931/mcp#<Mcp-Session-Id>"` or a connection id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationKey(pub String);

impl ConversationKey {
    pub fn new(s: impl Into<String>) -> Self {
        ConversationKey(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for ConversationKey {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ConversationKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ConversationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for ConversationKey {
    fn from(s: String) -> Self {
        ConversationKey(s)
    }
}

impl From<&str> for ConversationKey {
    fn from(s: &str) -> Self {
        ConversationKey(s.to_owned())
    }
}

impl From<&String> for ConversationKey {
    fn from(s: &String) -> Self {
        ConversationKey(s.clone())
    }
}

/// Why an entry left the table without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictReason {
    /// The table was full; this was the oldest entry.
    Capacity,
    /// A new request reused the same id in the same conversation.
    Replaced,
}

/// An entry pushed out by [`Correlator::insert`].
#[derive(Debug, Clone, PartialEq)]
pub struct Evicted<T> {
    pub key: ConversationKey,
    pub id: Id,
    pub value: T,
    pub reason: EvictReason,
}

/// Bounded map (conversation, request id) -> `T`, oldest-first eviction.
/// All operations are O(log n) except [`Correlator::drain_key`] (O(k log n)
/// for k entries of that key) and [`Correlator::remove_where`] (O(n)).
#[derive(Debug)]
pub struct Correlator<T> {
    capacity: usize,
    next_seq: u64,
    /// By conversation, then by [`Id::key`]: `5` and `5.0` are one pending call.
    by_key: HashMap<ConversationKey, HashMap<IdKey, (u64, T)>>,
    /// Insertion order: seq -> (key, id).
    order: BTreeMap<u64, (ConversationKey, Id)>,
}

impl<T> Correlator<T> {
    /// A table holding at most `capacity` (at least 1) pending requests.
    pub fn new(capacity: usize) -> Self {
        Correlator { capacity: capacity.max(1), next_seq: 0, by_key: HashMap::new(), order: BTreeMap::new() }
    }

    /// Remember a request. Returns what had to go: the previous entry with
    /// the same (key, id) (`Replaced`) and/or the oldest entry when full
    /// (`Capacity`). Empty in the normal case (no allocation).
    #[must_use = "evicted requests never get a response: close their audit records"]
    pub fn insert(&mut self, key: impl Into<ConversationKey>, id: Id, value: T) -> Vec<Evicted<T>> {
        let key = key.into();
        let mut out = Vec::new();
        if let Some((seq, old)) = self.by_key.get_mut(key.as_str()).and_then(|m| m.remove(&id.key())) {
            self.order.remove(&seq);
            out.push(Evicted { key: key.clone(), id: id.clone(), value: old, reason: EvictReason::Replaced });
        }
        while self.order.len() >= self.capacity {
            let Some((_, (old_key, old_id))) = self.order.pop_first() else { break };
            if let Some((_, v)) = self.remove_entry(&old_key, &old_id) {
                out.push(Evicted { key: old_key, id: old_id, value: v, reason: EvictReason::Capacity });
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, (key.clone(), id.clone()));
        self.by_key.entry(key).or_default().insert(id.key(), (seq, value));
        out
    }

    /// The pending request answered by a response with `id` in conversation `key`.
    pub fn take(&mut self, key: &str, id: &Id) -> Option<T> {
        let (seq, v) = self.remove_entry(key, id)?;
        self.order.remove(&seq);
        Some(v)
    }

    /// Peek without removing.
    pub fn get(&self, key: &str, id: &Id) -> Option<&T> {
        self.by_key.get(key)?.get(&id.key()).map(|(_, v)| v)
    }

    /// Everything still pending in a conversation (its stream ended: these
    /// become transport errors), oldest first.
    pub fn drain_key(&mut self, key: &str) -> Vec<T> {
        let Some(entries) = self.by_key.remove(key) else {
            return Vec::new();
        };
        let mut items: Vec<(u64, T)> = entries.into_values().collect();
        items.sort_unstable_by_key(|(seq, _)| *seq);
        for (seq, _) in &items {
            self.order.remove(seq);
        }
        items.into_iter().map(|(_, v)| v).collect()
    }

    /// Remove every entry whose value matches (e.g. older than a deadline
    /// stored in `T`), oldest first.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<(ConversationKey, Id, T)> {
        let doomed: Vec<u64> = self
            .order
            .iter()
            .filter(|(_, (k, id))| self.get(k, id).is_some_and(&mut pred))
            .map(|(seq, _)| *seq)
            .collect();
        let mut out = Vec::with_capacity(doomed.len());
        for seq in doomed {
            if let Some((k, id)) = self.order.remove(&seq)
                && let Some((_, v)) = self.remove_entry(&k, &id) {
                    out.push((k, id, v));
                }
        }
        out
    }

    /// Pending requests.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Conversations with at least one pending request.
    pub fn conversations(&self) -> usize {
        self.by_key.len()
    }

    fn remove_entry(&mut self, key: &str, id: &Id) -> Option<(u64, T)> {
        let inner = self.by_key.get_mut(key)?;
        let found = inner.remove(&id.key());
        if inner.is_empty() {
            self.by_key.remove(key);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_take_roundtrip_per_conversation() {
        let mut c = Correlator::new(10);
        assert!(c.insert("a", Id::from(1i64), "a1").is_empty());
        assert!(c.insert("b", Id::from(1i64), "b1").is_empty());
        assert!(c.insert("a", Id::from("1"), "a1s").is_empty());
        assert_eq!(c.len(), 3);
        assert_eq!(c.conversations(), 2);
        assert_eq!(c.get("a", &Id::from(1i64)), Some(&"a1"));
        assert_eq!(c.take("b", &Id::from(1i64)), Some("b1"));
        assert_eq!(c.take("b", &Id::from(1i64)), None, "a response is paired once");
        assert!(c.insert("b", Id::from_value(&serde_json::json!(5.0)).unwrap(), "b5").is_empty());
        assert_eq!(c.take("b", &Id::from(5i64)), Some("b5"), "the answer 5 pairs the call 5.0");
        assert_eq!(c.take("a", &Id::from("1")), Some("a1s"));
        assert_eq!(c.take("a", &Id::from(2i64)), None);
        assert_eq!(c.take("zz", &Id::from(1i64)), None);
        assert_eq!(c.len(), 1);
        let key = ConversationKey::new("a");
        assert_eq!(c.take(&key, &Id::from(1i64)), Some("a1"));
        assert!(c.is_empty());
        assert_eq!(c.conversations(), 0);
    }

    #[test]
    fn bounded_with_oldest_first_eviction() {
        let mut c = Correlator::new(3);
        for i in 0..3i64 {
            assert!(c.insert(format!("k{}", i % 2), Id::from(i), i).is_empty());
        }
        let ev = c.insert("k9", Id::from(99i64), 99);
        assert_eq!(ev, vec![Evicted { key: "k0".into(), id: Id::from(0i64), value: 0, reason: EvictReason::Capacity }]);
        assert_eq!(c.len(), 3);
        // Taking one frees room: no eviction on the next insert.
        assert_eq!(c.take("k1", &Id::from(1i64)), Some(1));
        assert!(c.insert("k9", Id::from(100i64), 100).is_empty());
        let ev = c.insert("k9", Id::from(101i64), 101);
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].id.clone(), ev[0].value), (Id::from(2i64), 2));
        for i in 0..1000i64 {
            let _ = c.insert("flood", Id::from(1000 + i), i);
            assert!(c.len() <= 3);
        }
        assert_eq!(Correlator::<()>::new(0).capacity(), 1);
    }

    #[test]
    fn reused_id_replaces_and_reports() {
        let mut c = Correlator::new(2);
        assert!(c.insert("k", Id::from(1i64), "first").is_empty());
        assert!(c.insert("k", Id::from(2i64), "other").is_empty());
        let ev = c.insert("k", Id::from(1i64), "second");
        assert_eq!(ev, vec![Evicted { key: "k".into(), id: Id::from(1i64), value: "first", reason: EvictReason::Replaced }]);
        assert_eq!(c.len(), 2);
        assert_eq!(c.take("k", &Id::from(1i64)), Some("second"));
    }

    #[test]
    fn drain_key_returns_oldest_first_and_only_that_key() {
        let mut c = Correlator::new(10);
        for (k, i) in [("s", 5i64), ("t", 1), ("s", 2), ("s", 9)] {
            assert!(c.insert(k, Id::from(i), (k, i)).is_empty());
        }
        assert_eq!(c.drain_key("s"), vec![("s", 5), ("s", 2), ("s", 9)]);
        assert_eq!(c.len(), 1);
        assert!(c.drain_key("s").is_empty());
        // Order index stays consistent: filling up evicts the remaining "t" first.
        for i in 0..9i64 {
            assert!(c.insert("u", Id::from(i), ("u", i)).is_empty());
        }
        let ev = c.insert("u", Id::from(100i64), ("u", 100));
        assert_eq!(ev[0].value, ("t", 1));
    }

    #[test]
    fn remove_where_for_ttl() {
        let mut c = Correlator::new(10);
        for i in 0..6i64 {
            assert!(c.insert("k", Id::from(i), i * 10).is_empty());
        }
        let gone = c.remove_where(|born| *born < 30);
        assert_eq!(gone.iter().map(|(_, id, v)| (id.to_string(), *v)).collect::<Vec<_>>(),
            vec![("0".into(), 0), ("1".into(), 10), ("2".into(), 20)]);
        assert_eq!(c.len(), 3);
        assert_eq!(c.take("k", &Id::from(3i64)), Some(30));
    }
}
