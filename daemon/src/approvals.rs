//! Calls held for a human decision (`require_approval`).
//!
//! A held call waits in the connection task that received it; this module only keeps
//! the list `mcpwatch pending` shows and the channel `approve` / `deny` answer on. An
//! approval is bound to that exact call (agent, server, tool and the hash of the
//! canonical arguments), can be used once (the entry is removed when answered), and
//! expires with the policy's approval timeout. The list is bounded.
//!
//! Who may answer ([`check_answerer`]): an agent must not approve its own call. Unless
//! the policy names approvers (`[approvals] approvers`), a call is refused to an answerer
//! with the calling process's uid or running inside the watched cgroup (or below it);
//! when it names them, only they may answer. The verdict records who answered: uid,
//! user, pid, exe.

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

/// Who is answering a held call, from `SO_PEERCRED` and `/proc/<pid>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answerer {
    pub uid: u32,
    pub user: Option<String>,
    pub pid: Option<i32>,
    pub exe: Option<String>,
    /// Names of the primary and supplementary groups.
    pub groups: Vec<String>,
    /// cgroup v2 path (`/proc/<pid>/cgroup`, `0::/...`); `None` when unreadable.
    pub cgroup: Option<String>,
}

impl Answerer {
    /// Describe the peer of the control socket. Nothing here is taken from the request.
    pub fn from_peer(uid: u32, gid: u32, pid: Option<i32>) -> Answerer {
        use nix::unistd::{Gid, Group, Uid, User};
        let user = User::from_uid(Uid::from_raw(uid)).ok().flatten().map(|u| u.name);
        let proc_file = |f: &str| pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/{f}")).ok());
        let mut gids = vec![gid];
        if let Some(status) = proc_file("status")
            && let Some(l) = status.lines().find(|l| l.starts_with("Groups:"))
        {
            gids.extend(l.split_whitespace().skip(1).filter_map(|x| x.parse::<u32>().ok()));
        }
        let groups = gids.iter().filter_map(|g| Group::from_gid(Gid::from_raw(*g)).ok().flatten().map(|g| g.name)).collect();
        let exe = pid.and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok()).map(|p| p.display().to_string());
        let cgroup = proc_file("cgroup").and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string)));
        Answerer { uid, user, pid, exe, groups, cgroup }
    }

    /// `uid 1000 (alice), pid 4242, exe /usr/bin/mcpwatch`: what the audit record keeps.
    pub fn label(&self) -> String {
        let mut s = format!("uid {}", self.uid);
        if let Some(u) = &self.user {
            s.push_str(&format!(" ({u})"));
        }
        if let Some(p) = self.pid {
            s.push_str(&format!(", pid {p}"));
        }
        if let Some(e) = &self.exe {
            s.push_str(&format!(", exe {e}"));
        }
        s
    }
}

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{who} has the uid of the process that made the call (self-approval)")]
    SameUid { who: String },
    #[error("{who} runs inside the watched cgroup ({cgroup}), where the agents run")]
    InWatchedScope { who: String, cgroup: String },
    #[error("cannot tell whether {who} runs inside the watched cgroup ({why})")]
    Unverifiable { who: String, why: String },
    #[error("{who} is not among the policy's approvers ({named})")]
    NotNamed { who: String, named: String },
}

/// Is `cgroup` (a cgroup v2 path, `/a/b`) `scope` or below it?
pub fn cgroup_within(cgroup: &str, scope: &str) -> bool {
    let scope = scope.trim_end_matches('/');
    scope.is_empty() || cgroup == scope || cgroup.strip_prefix(scope).is_some_and(|r| r.starts_with('/'))
}

/// May `who` answer `call`? `named` is the policy's `[approvals] approvers`; `watched`
/// the watched cgroup as a cgroup v2 path (`/` for the whole host; `None` without eBPF).
pub fn check_answerer(who: &Answerer, call: &HeldCall, named: &[mcpwatch_policy::Approver], watched: Option<&str>) -> Result<(), Refusal> {
    if !named.is_empty() {
        if named.iter().any(|a| a.names(who.uid, who.user.as_deref(), &who.groups)) {
            return Ok(());
        }
        let named = named.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        return Err(Refusal::NotNamed { who: who.label(), named });
    }
    if call.process.as_ref().is_some_and(|p| p.uid == who.uid) {
        return Err(Refusal::SameUid { who: who.label() });
    }
    if let Some(scope) = watched {
        match &who.cgroup {
            Some(cg) if cgroup_within(cg, scope) => return Err(Refusal::InWatchedScope { who: who.label(), cgroup: scope.to_string() }),
            Some(_) => {}
            None => return Err(Refusal::Unverifiable { who: who.label(), why: "its /proc/<pid>/cgroup cannot be read".into() }),
        }
    }
    Ok(())
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
    #[error("refused: {1}; the call {0} stays held. An operator outside the watched cgroup, with another uid than the agent, must answer it, or the policy must name who may: [approvals] approvers = [\"user:NAME\", \"group:NAME\", \"uid:N\"] (docs/policy.md)")]
    Refused(String, Refusal),
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

    /// Deny every held call with `reason` (the policy it was held under was replaced:
    /// an approval must not forward a call the new policy denies). Returns how many.
    pub fn withdraw_all(&self, reason: &str) -> usize {
        let Ok(mut h) = self.held.lock() else { return 0 };
        let all = h.drain_where(|_| true);
        let n = all.len();
        for e in all {
            let _ = e.tx.send(Verdict::Denied { by: "mcpwatch".into(), reason: Some(reason.to_string()) });
        }
        n
    }

    fn forget(&self, id: &str) {
        if let Ok(mut h) = self.held.lock() {
            h.remove(&id.to_string());
        }
    }

    pub fn list(&self) -> Vec<HeldCall> {
        let Ok(h) = self.held.lock() else { return Vec::new() };
        let mut v: Vec<HeldCall> = h.values().map(|e| e.view.clone()).collect();
        v.sort_by_key(|c| c.held_since_ms);
        v
    }

    /// Answer a held call if `allowed` accepts the answerer for it (the call stays held
    /// otherwise). Single use: the entry is gone afterwards.
    pub fn decide_checked(
        &self,
        id: &str,
        verdict: Verdict,
        allowed: impl FnOnce(&HeldCall) -> Result<(), Refusal>,
    ) -> Result<HeldCall, ApprovalError> {
        let entry = {
            let Ok(mut h) = self.held.lock() else { return Err(ApprovalError::Unknown(id.to_string())) };
            let key = id.to_string();
            match h.get(&key).map(|e| allowed(&e.view)) {
                None => None,
                Some(Err(r)) => return Err(ApprovalError::Refused(id.to_string(), r)),
                Some(Ok(())) => h.remove(&key),
            }
        };
        match entry {
            Some(e) => {
                let view = e.view.clone();
                let _ = e.tx.send(verdict);
                Ok(view)
            }
            None => Err(ApprovalError::Unknown(id.to_string())),
        }
    }

    /// Answer a held call without checking who answers (the daemon itself, tests).
    pub fn decide(&self, id: &str, verdict: Verdict) -> Result<HeldCall, ApprovalError> {
        self.decide_checked(id, verdict, |_| Ok(()))
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

    fn agent_call(uid: u32) -> HeldCall {
        HeldCall { process: Some(mcpwatch_api::ProcessInfo { uid, ..Default::default() }), ..view() }
    }

    fn op(uid: u32, cgroup: &str) -> Answerer {
        Answerer { uid, user: Some(format!("u{uid}")), pid: Some(7), exe: Some("/usr/bin/mcpwatch".into()), groups: vec!["secops".into()], cgroup: Some(cgroup.into()) }
    }

    #[test]
    fn self_approval_is_refused() {
        let call = agent_call(1000);
        let w = Some("/agents");
        // Same uid as the agent, even from outside the watched cgroup.
        assert!(matches!(check_answerer(&op(1000, "/user.slice"), &call, &[], w), Err(Refusal::SameUid { .. })));
        // Another uid, but inside the watched cgroup or below it.
        assert!(matches!(check_answerer(&op(0, "/agents"), &call, &[], w), Err(Refusal::InWatchedScope { .. })));
        assert!(matches!(check_answerer(&op(0, "/agents/bot/x"), &call, &[], w), Err(Refusal::InWatchedScope { .. })));
        // Whole host watched: everyone is inside.
        assert!(matches!(check_answerer(&op(0, "/user.slice"), &call, &[], Some("/")), Err(Refusal::InWatchedScope { .. })));
        // Unreadable cgroup: refused, not assumed outside.
        let blind = Answerer { cgroup: None, ..op(0, "") };
        assert!(matches!(check_answerer(&blind, &call, &[], w), Err(Refusal::Unverifiable { .. })));
        // Another uid outside the scope: accepted. `/agents2` is not below `/agents`.
        assert_eq!(check_answerer(&op(0, "/user.slice"), &call, &[], w), Ok(()));
        assert_eq!(check_answerer(&op(0, "/agents2"), &call, &[], w), Ok(()));
        // No eBPF (static upstream): only the uid rule.
        assert_eq!(check_answerer(&op(0, "/agents"), &call, &[], None), Ok(()));
    }

    #[test]
    fn named_approvers_decide_alone() {
        use mcpwatch_policy::Approver;
        let call = agent_call(1000);
        let w = Some("/");
        // Named: accepted even with the agent's uid inside the watched scope.
        assert_eq!(check_answerer(&op(1000, "/"), &call, &[Approver::Uid(1000)], w), Ok(()));
        assert_eq!(check_answerer(&op(5, "/"), &call, &[Approver::Group("secops".into())], w), Ok(()));
        assert_eq!(check_answerer(&op(5, "/"), &call, &[Approver::User("u5".into())], w), Ok(()));
        // Not named: refused, even root outside the scope.
        let e = check_answerer(&op(0, "/user.slice"), &call, &[Approver::User("alice".into())], Some("/agents")).unwrap_err();
        assert!(e.to_string().contains("user:alice"), "{e}");
    }

    #[tokio::test]
    async fn a_refused_answer_leaves_the_call_held() {
        let a = Approvals::new(8);
        let (id, rx) = a.hold(agent_call(1000));
        let who = op(1000, "/x");
        let e = a.decide_checked(&id, Verdict::Approved { by: who.label() }, |c| check_answerer(&who, c, &[], None)).unwrap_err();
        assert!(e.to_string().starts_with("refused: "), "{e}");
        assert_eq!(a.list().len(), 1, "still held");
        let root = op(0, "/x");
        a.decide_checked(&id, Verdict::Approved { by: root.label() }, |c| check_answerer(&root, c, &[], None)).unwrap();
        assert_eq!(a.wait(&id, rx, Duration::from_secs(1)).await, Verdict::Approved { by: "uid 0 (u0), pid 7, exe /usr/bin/mcpwatch".into() });
    }

    #[tokio::test]
    async fn bound_denies_the_oldest() {
        let a = Approvals::new(1);
        let (id1, rx1) = a.hold(view());
        let (_id2, _rx2) = a.hold(view());
        assert!(matches!(a.wait(&id1, rx1, Duration::from_secs(1)).await, Verdict::Denied { .. }));
    }
}
