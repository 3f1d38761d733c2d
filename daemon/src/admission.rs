//! Fair share of the daemon's connection slots.
//!
//! Why a module of its own: the proxy has one global budget (`limits.max_connections`). A
//! single process holding thousands of idle connections must not starve every other agent,
//! and the accept loop must never stop accepting because of it. So: the accept loop takes a
//! global permit without waiting (over the limit: the connection is accepted and closed at
//! once, counted); after the origin is resolved, [`Admission::admit`] checks the per-process
//! (tgid) and per-uid budgets. Every refusal is counted and the most recent one per kind is
//! kept for a `mcpwatch status` warning. The maps hold only live connections, so they are
//! bounded by the global limit.
//!
//! At the crate's top level, not in `proxy`: the daemon-wide state holds the budgets (the
//! status warnings read them) and only the proxy takes from them; here, importing neither,
//! neither import is a loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcpwatch_api::ProcessInfo;
use tokio::sync::OwnedSemaphorePermit;

use crate::tally::Tally;

/// Which budget refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `limits.max_connections` (all processes together).
    Global,
    /// `limits.max_connections_per_process`.
    Process,
    /// `limits.max_connections_per_uid`.
    Uid,
}

impl Refusal {
    fn key(self) -> &'static str {
        match self {
            Refusal::Global => "limits.max_connections",
            Refusal::Process => "limits.max_connections_per_process",
            Refusal::Uid => "limits.max_connections_per_uid",
        }
    }
}

/// The last time a budget refused someone, for the status warning.
#[derive(Debug, Clone)]
struct Bite {
    who: String,
    at: Instant,
    limit: usize,
}

/// How long a refusal keeps showing in `mcpwatch status`.
const WARN_FOR: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
struct Live {
    by_tgid: Tally<u32>,
    by_uid: Tally<u32>,
}

/// Per-process and per-uid connection budgets.
#[derive(Debug)]
pub struct Admission {
    global: usize,
    per_process: usize,
    per_uid: usize,
    live: Mutex<Live>,
    bites: Mutex<HashMap<Refusal, Bite>>,
}

/// A live connection's hold on its budgets (and its global permit); released on drop.
pub struct Ticket {
    admission: Arc<Admission>,
    tgid_uid: Option<(u32, u32)>,
    _global: OwnedSemaphorePermit,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some((tgid, uid)) = self.tgid_uid else { return };
        let mut live = self.admission.lock();
        live.by_tgid.sub(&tgid, 1);
        live.by_uid.sub(&uid, 1);
    }
}

impl Admission {
    pub fn new(global: usize, per_process: usize, per_uid: usize) -> Arc<Admission> {
        Arc::new(Admission { global, per_process, per_uid, live: Mutex::default(), bites: Mutex::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a slot for a connection of `process` (unattributed connections count only
    /// against the global budget they already hold).
    pub fn admit(self: &Arc<Self>, process: Option<&ProcessInfo>, global: OwnedSemaphorePermit) -> Result<Ticket, Refusal> {
        let Some(p) = process else {
            return Ok(Ticket { admission: self.clone(), tgid_uid: None, _global: global });
        };
        let mut live = self.lock();
        let refusal = if live.by_tgid.get(&p.tgid) >= self.per_process {
            Some((Refusal::Process, self.per_process))
        } else if live.by_uid.get(&p.uid) >= self.per_uid {
            Some((Refusal::Uid, self.per_uid))
        } else {
            None
        };
        if let Some((r, limit)) = refusal {
            drop(live);
            self.bite(r, format!("{} uid {}", p.label(), p.uid), limit);
            return Err(r);
        }
        live.by_tgid.add(p.tgid, 1);
        live.by_uid.add(p.uid, 1);
        Ok(Ticket { admission: self.clone(), tgid_uid: Some((p.tgid, p.uid)), _global: global })
    }

    /// The accept loop found no global permit.
    pub fn refused_global(&self) {
        self.bite(Refusal::Global, "all processes together".into(), self.global);
    }

    fn bite(&self, r: Refusal, who: String, limit: usize) {
        let mut bites = self.bites.lock().unwrap_or_else(|p| p.into_inner());
        bites.insert(r, Bite { who, at: Instant::now(), limit });
    }

    /// Live connections held by the process holding the most (for status).
    pub fn busiest(&self) -> Option<(u32, usize)> {
        self.lock().by_tgid.iter().max_by_key(|(_, n)| *n).map(|(k, n)| (*k, n))
    }

    /// One human line per budget that refused a connection in the last 10 minutes.
    pub fn warnings(&self, refused: impl Fn(Refusal) -> u64) -> Vec<String> {
        let now = Instant::now();
        let bites = self.bites.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(Refusal, String)> = bites
            .iter()
            .filter(|(_, b)| now.saturating_duration_since(b.at) < WARN_FOR)
            .map(|(r, b)| {
                (
                    *r,
                    format!(
                        "connection limit reached: {} = {} refused connections of {} ({} refused so far, last {}s ago); other agents keep their share",
                        r.key(),
                        b.limit,
                        b.who,
                        refused(*r),
                        now.saturating_duration_since(b.at).as_secs()
                    ),
                )
            })
            .collect();
        out.sort_by_key(|(r, _)| r.key());
        out.into_iter().map(|(_, w)| w).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(tgid: u32, uid: u32) -> ProcessInfo {
        ProcessInfo { pid: tgid, tgid, uid, comm: "agent".into(), ..Default::default() }
    }

    #[tokio::test]
    async fn budgets_per_process_and_uid_release_on_drop() {
        let sem = Arc::new(tokio::sync::Semaphore::new(100));
        let a = Admission::new(100, 2, 3);
        let permit = || sem.clone().try_acquire_owned().unwrap();
        let t1 = a.admit(Some(&proc(1, 1000)), permit()).unwrap();
        let _t2 = a.admit(Some(&proc(1, 1000)), permit()).unwrap();
        assert_eq!(a.admit(Some(&proc(1, 1000)), permit()).err(), Some(Refusal::Process));
        // Another process of the same uid: one left in the uid budget.
        let _t3 = a.admit(Some(&proc(2, 1000)), permit()).unwrap();
        assert_eq!(a.admit(Some(&proc(2, 1000)), permit()).err(), Some(Refusal::Uid));
        // Another uid is unaffected; unattributed connections only hold the global permit.
        let _t4 = a.admit(Some(&proc(3, 1001)), permit()).unwrap();
        let _t5 = a.admit(None, permit()).unwrap();
        drop(t1);
        let _t6 = a.admit(Some(&proc(1, 1000)), permit()).unwrap();
        let w = a.warnings(|_| 1);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("max_connections_per_process = 2") && w[0].contains("agent (1)"), "{w:?}");
        assert!(w[1].contains("max_connections_per_uid = 3"), "{w:?}");
        assert_eq!(a.busiest(), Some((1, 2)));
        // Permits come back when tickets drop.
        drop((_t2, _t3, _t4, _t5, _t6));
        assert_eq!(sem.available_permits(), 100);
        assert!(a.lock().by_tgid.is_empty() && a.lock().by_uid.is_empty());
    }
}
