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
//! not held, and toward an enforced server not delivered. A server-sent event held until it
//! is whole (at most `max_sse_event_bytes`) holds its bytes from the budget too, its stream
//! cut off when they do not fit. So do the stdio gate's lines (`crate::gate`), charged to
//! the wrapper's uid. One uid may hold at most half the budget (bodies of unknown
//! processes count as one uid), so one user's flood, or calls of theirs held for
//! approval, cannot refuse every other user's bodies.
//!
//! At the crate's top level, like `admission`: the daemon-wide state holds it (status
//! reads the refusals), and the proxy and the gate take from it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mcpwatch_api::ProcessInfo;

use crate::tally::Tally;

/// Why `what` (a literal) was not held: the budget is spent. One wording for every
/// transport's refusal (request bodies, answers, server events, gate lines).
macro_rules! budget_spent {
    ($what:literal) => {
        concat!($what, " not held for inspection: the budget for bodies held for inspection (limits.max_buffered_body_bytes, one uid may hold half) is spent")
    };
}
pub(crate) use budget_spent;

/// Bytes of bodies held for inspection, by every connection together.
#[derive(Debug)]
pub struct BodyBudget {
    limit: usize,
    refused: AtomicU64,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    /// By uid (`None`: the process is not known); only uids holding something.
    by_uid: Tally<Option<u32>>,
}

impl BodyBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(BodyBudget { limit, refused: AtomicU64::new(0), held: Mutex::default() })
    }

    /// An empty lease for a body sent by `process` (charged to its uid; processes
    /// mcpwatch cannot name share one), grown as the body's bytes arrive.
    pub fn lease(self: &Arc<Self>, process: Option<&ProcessInfo>) -> Lease {
        self.lease_for(process.map(|p| p.uid))
    }

    /// An empty lease charged to `uid` (a peer known by its credentials, as the stdio
    /// gate's wrappers are).
    pub fn lease_for(self: &Arc<Self>, uid: Option<u32>) -> Lease {
        Lease { budget: Arc::clone(self), uid, bytes: 0 }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.lock().total
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

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, uid: Option<u32>, n: usize) -> bool {
        let mut held = self.lock();
        let fits = |now: usize, most: usize| now.checked_add(n).is_some_and(|t| t <= most);
        if !fits(held.by_uid.get(&uid), self.share()) || !fits(held.total, self.limit) {
            return false;
        }
        held.total += n;
        held.by_uid.add(uid, n);
        true
    }

    fn give(&self, uid: Option<u32>, n: usize) {
        let mut held = self.lock();
        held.total = held.total.saturating_sub(n);
        held.by_uid.sub(&uid, n);
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

    /// Holds exactly `n` bytes from now on: takes what is missing (false, the refusal
    /// counted and the lease unchanged, when the budget cannot hold it) or gives back what
    /// is no longer held. For a buffer that grows and drains, as a server-sent event's.
    pub fn hold(&mut self, n: usize) -> bool {
        match n.cmp(&self.bytes) {
            std::cmp::Ordering::Greater => self.grow(n - self.bytes),
            std::cmp::Ordering::Less => {
                self.budget.give(self.uid, self.bytes - n);
                self.bytes = n;
                true
            }
            std::cmp::Ordering::Equal => true,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Most leases (an answer that is not held, a body not yet read) took nothing:
        // no lock for those.
        if self.bytes > 0 {
            self.budget.give(self.uid, self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_share_the_limit_and_give_it_back() {
        let b = BodyBudget::new(100);
        let by = |uid: u32| ProcessInfo { uid, ..Default::default() };
        let mut a = b.lease(Some(&by(1)));
        let mut c = b.lease(Some(&by(2)));
        let mut d = b.lease(Some(&by(3)));
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
        assert!(b.lock().by_uid.is_empty(), "no uid is left behind");
    }

    /// One uid holds at most half the budget, whatever the number of its bodies: the
    /// other half stays for other users.
    #[test]
    fn one_uid_holds_at_most_half() {
        let b = BodyBudget::new(100);
        let by = |uid: u32| ProcessInfo { uid, ..Default::default() };
        let mut flood: Vec<Lease> = (0..8).map(|_| b.lease(Some(&by(1000)))).collect();
        let took: usize = flood.iter_mut().map(|l| if l.grow(10) { 10 } else { 0 }).sum();
        assert_eq!(took, 50, "one uid's bodies stop at half");
        let mut other = b.lease(Some(&by(1001)));
        assert!(other.grow(50), "another user's body still fits");
        let mut unknown = b.lease(None);
        assert!(!unknown.grow(1), "the whole budget is held now");
        drop(flood);
        assert!(unknown.grow(50), "unknown processes share one uid's half");
    }
}
