//! The daemon-wide budget for request bodies held in memory for inspection.
//!
//! Why it exists: a request body toward an MCP endpoint is read whole before it is judged,
//! up to `limits.max_body_bytes` (4 MiB) each, and a client may take `limits.body_timeout`
//! to send it. One uid may hold `limits.max_connections_per_uid` (2048) connections, so
//! without a budget a watched user could make mcpwatchd hold gigabytes and be OOM-killed,
//! and a killed daemon in `failure_mode = "open"` stops governing until its restart: a
//! bypass by memory. With the budget, a body that would take the daemon past
//! `limits.max_buffered_body_bytes` is refused (503, recorded, Retry-After): the flood
//! fails closed and the memory held for request bodies stays bounded. WebSocket messages
//! and JSON or text answers held for inspection take from the same budget (charged to the
//! client's uid: its own slow server is its own flood); an answer that does not fit is
//! not held, and toward an enforced server not delivered. Server-sent events are bounded
//! per connection only (`max_sse_event_bytes`, one event at a time). One uid may hold at most half the
//! budget (bodies of unknown processes count as one uid), so one user's flood, or calls
//! of theirs held for approval, cannot refuse every other user's bodies.
//!
//! At the crate's top level, like `admission`: the daemon-wide state holds it (status
//! reads the refusals) and the proxy takes from it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes of request bodies held for inspection, by every connection together.
#[derive(Debug)]
pub struct BodyBudget {
    limit: usize,
    used: AtomicUsize,
    refused: AtomicU64,
    /// Bytes held by uid (`None`: the process is not known); entries at zero are removed,
    /// so the map holds only uids with a body being read or held.
    by_uid: Mutex<HashMap<Option<u32>, usize>>,
}

impl BodyBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(BodyBudget { limit, used: AtomicUsize::new(0), refused: AtomicU64::new(0), by_uid: Mutex::new(HashMap::new()) })
    }

    /// An empty lease for a body sent by a process of `uid`, grown as its bytes arrive.
    pub fn lease(self: &Arc<Self>, uid: Option<u32>) -> Lease {
        Lease { budget: Arc::clone(self), uid, bytes: 0 }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bodies refused because the budget was spent, since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// One uid's share: half the budget (one body always fits: the configuration
    /// requires `limits.max_buffered_body_bytes` to be at least twice `max_body_bytes`).
    fn share(&self) -> usize {
        (self.limit / 2).max(1)
    }

    fn take(&self, uid: Option<u32>, n: usize) -> bool {
        let mut by_uid = self.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        let mine = by_uid.get(&uid).copied().unwrap_or(0);
        if mine.saturating_add(n) > self.share() {
            return false;
        }
        let took = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_add(n).filter(|t| *t <= self.limit))
            .is_ok();
        if took && n > 0 {
            *by_uid.entry(uid).or_default() += n;
        }
        took
    }

    fn give(&self, uid: Option<u32>, n: usize) {
        if n == 0 {
            return;
        }
        let mut by_uid = self.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = by_uid.get_mut(&uid) {
            *m = m.saturating_sub(n);
            if *m == 0 {
                by_uid.remove(&uid);
            }
        }
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One body's share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<BodyBudget>,
    uid: Option<u32>,
    bytes: usize,
}

impl Lease {
    /// Takes `n` more bytes; false (and the refusal counted) when the budget cannot hold them.
    pub fn grow(&mut self, n: usize) -> bool {
        if self.budget.take(self.uid, n) {
            self.bytes += n;
            true
        } else {
            self.budget.refused.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.give(self.uid, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_share_the_limit_and_give_it_back() {
        let b = BodyBudget::new(100);
        let mut a = b.lease(Some(1));
        let mut c = b.lease(Some(2));
        let mut d = b.lease(Some(3));
        assert!(a.grow(50));
        assert!(c.grow(30));
        assert!(!d.grow(21), "past the limit");
        assert_eq!(b.refused(), 1);
        assert!(d.grow(20));
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 50);
        assert!(c.grow(20));
        drop(c);
        drop(d);
        assert_eq!(b.used(), 0);
        assert!(b.by_uid.lock().unwrap().is_empty(), "no uid is left behind");
    }

    /// One uid holds at most half the budget, whatever the number of its bodies: the
    /// other half stays for other users.
    #[test]
    fn one_uid_holds_at_most_half() {
        let b = BodyBudget::new(100);
        let mut flood: Vec<Lease> = (0..8).map(|_| b.lease(Some(1000))).collect();
        let took: usize = flood.iter_mut().map(|l| if l.grow(10) { 10 } else { 0 }).sum();
        assert_eq!(took, 50, "one uid's bodies stop at half");
        let mut other = b.lease(Some(1001));
        assert!(other.grow(50), "another user's body still fits");
        let mut unknown = b.lease(None);
        assert!(!unknown.grow(1), "the whole budget is held now");
        drop(flood);
        assert!(unknown.grow(50), "unknown processes share one uid's half");
    }
}
