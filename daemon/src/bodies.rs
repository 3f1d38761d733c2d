//! The daemon-wide budget for request bodies held in memory for inspection.
//!
//! Why it exists: a request body toward an MCP endpoint is read whole before it is judged,
//! up to `limits.max_body_bytes` (4 MiB) each, and a client may take `limits.body_timeout`
//! to send it. One uid may hold `limits.max_connections_per_uid` (2048) connections, so
//! without a budget a watched user could make mcpwatchd hold gigabytes and be OOM-killed,
//! and a killed daemon in `failure_mode = "open"` stops governing until its restart: a
//! bypass by memory. With the budget, a body that would take the daemon past
//! `limits.max_buffered_body_bytes` is refused (503, recorded, Retry-After): the flood
//! fails closed and the daemon's memory stays bounded.
//!
//! At the crate's top level, like `admission`: the daemon-wide state holds it (status
//! reads the refusals) and the proxy takes from it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bytes of request bodies held for inspection, by every connection together.
#[derive(Debug)]
pub struct BodyBudget {
    limit: usize,
    used: AtomicUsize,
    refused: AtomicU64,
}

impl BodyBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(BodyBudget { limit, used: AtomicUsize::new(0), refused: AtomicU64::new(0) })
    }

    /// An empty lease, grown as a body's bytes arrive.
    pub fn lease(self: &Arc<Self>) -> Lease {
        Lease { budget: Arc::clone(self), bytes: 0 }
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

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_add(n).filter(|t| *t <= self.limit))
            .is_ok()
    }
}

/// One body's share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Lease {
    /// Takes `n` more bytes; false (and the refusal counted) when the budget cannot hold them.
    pub fn grow(&mut self, n: usize) -> bool {
        if self.budget.take(n) {
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
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_share_the_limit_and_give_it_back() {
        let b = BodyBudget::new(100);
        let mut a = b.lease();
        let mut c = b.lease();
        assert!(a.grow(60));
        assert!(!c.grow(41), "past the limit");
        assert_eq!(b.refused(), 1);
        assert!(c.grow(40));
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        assert!(c.grow(60));
        drop(c);
        assert_eq!(b.used(), 0);
    }
}
