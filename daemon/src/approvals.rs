//! Calls held for a human decision (`require_approval`).
//!
//! A held call waits in the connection task that received it; this module only keeps
//! the list `mcpwatch pending` shows and the channel `approve` / `deny` answer on. An
//! approval is bound to that exact call (agent, server, tool and the hash of the
//! canonical arguments), can be used once (the entry is removed when answered), and
//! expires with the policy's approval timeout. The list is bounded.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mcpwatch_api::HeldCall;
use tokio::sync::oneshot;

use crate::session::BoundedMap;

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approved { by: String },
    Denied { by: String, reason: Option<String> },
    TimedOut,
}

struct Entry {
    view: HeldCall,
    tx: oneshot::Sender<Verdict>,
    #[allow(dead_code)]
    started: Instant,
}

pub struct Approvals {
    held: Mutex<BoundedMap<String, Entry>>,
    next: std::sync::atomic::AtomicU64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    #[error("no held call with id {0} (it may have been answered or timed out)")]
    Unknown(String),
}

impl Approvals {
    pub fn new(capacity: usize) -> Approvals {
        Approvals { held: Mutex::new(BoundedMap::new(capacity)), next: std::sync::atomic::AtomicU64::new(1) }
    }

    /// Hold a call; the returned receiver yields the verdict. Calls evicted by the bound
    /// are denied.
    pub fn hold(&self, mut view: HeldCall) -> (String, oneshot::Receiver<Verdict>) {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("a{n}");
        view.id = id.clone();
        let (tx, rx) = oneshot::channel();
        if let Ok(mut h) = self.held.lock() {
            for e in h.insert(id.clone(), Entry { view, tx, started: Instant::now() }) {
                let _ = e.tx.send(Verdict::Denied { by: "mcpwatch".into(), reason: Some("too many calls waiting for approval".into()) });
            }
        }
        (id, rx)
    }

    /// Wait for a verdict; on timeout the entry is removed and `TimedOut` returned.
    pub async fn wait(&self, id: &str, rx: oneshot::Receiver<Verdict>, timeout: Duration) -> Verdict {
        let v = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => Verdict::Denied { by: "mcpwatch".into(), reason: Some("approval channel closed".into()) },
            Err(_) => Verdict::TimedOut,
        };
        self.forget(id);
        v
    }

    fn forget(&self, id: &str) {
        if let Ok(mut h) = self.held.lock() {
            h.remove(&id.to_string());
        }
    }

    pub fn list(&self) -> Vec<HeldCall> {
        let Ok(h) = self.held.lock() else { return Vec::new() };
        let mut v: Vec<HeldCall> = h.values().map(|e| e.view.clone()).collect();
        v.sort_by(|a, b| a.held_since_ms.cmp(&b.held_since_ms));
        v
    }

    /// Answer a held call. Single use: the entry is gone afterwards.
    pub fn decide(&self, id: &str, verdict: Verdict) -> Result<HeldCall, ApprovalError> {
        let entry = self.held.lock().ok().and_then(|mut h| h.remove(&id.to_string()));
        match entry {
            Some(e) => {
                let view = e.view.clone();
                let _ = e.tx.send(verdict);
                Ok(view)
            }
            None => Err(ApprovalError::Unknown(id.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> HeldCall {
        HeldCall { tool: Some("delete_records".into()), ..Default::default() }
    }

    #[tokio::test]
    async fn approve_is_single_use() {
        let a = Approvals::new(8);
        let (id, rx) = a.hold(view());
        assert_eq!(a.list().len(), 1);
        a.decide(&id, Verdict::Approved { by: "uid 0".into() }).unwrap();
        assert_eq!(a.wait(&id, rx, Duration::from_secs(1)).await, Verdict::Approved { by: "uid 0".into() });
        assert_eq!(a.decide(&id, Verdict::Approved { by: "uid 0".into() }), Err(ApprovalError::Unknown(id)));
        assert!(a.list().is_empty());
    }

    #[tokio::test]
    async fn timeout_removes_the_hold() {
        let a = Approvals::new(8);
        let (id, rx) = a.hold(view());
        assert_eq!(a.wait(&id, rx, Duration::from_millis(10)).await, Verdict::TimedOut);
        assert!(a.list().is_empty());
        assert!(a.decide(&id, Verdict::Approved { by: "x".into() }).is_err());
    }

    #[tokio::test]
    async fn bound_denies_the_oldest() {
        let a = Approvals::new(1);
        let (id1, rx1) = a.hold(view());
        let (_id2, _rx2) = a.hold(view());
        assert!(matches!(a.wait(&id1, rx1, Duration::from_secs(1)).await, Verdict::Denied { .. }));
    }
}
