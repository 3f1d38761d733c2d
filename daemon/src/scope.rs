//! Agent scope, the user-space half: decides which processes are agents by the policy's
//! `[[agent]]` patterns, so that the kernel redirects every TCP connection they (and
//! their descendants) make, whatever the port.
//!
//! Why it exists: the kernel matches exact command names by itself (built-in MCP
//! clients, `scope.agent_comms`) and follows fork/exit, but the policy's identities are
//! globs on exe, comm, unit, cgroup, uid, user, group: only user space can match them.
//! While the policy has agents, every exec in the watched cgroup is *pending* in the
//! kernel (already redirected, so no connection escapes during the decision) and
//! announced on a ring buffer; this task describes the process from `/proc`, matches it,
//! and either marks it an agent or clears the pending state. A process whose ancestor is
//! an agent is an agent too. At start (and after a policy reload) every running process
//! is scanned, for agents that were already running. See docs/scope.md.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use mcpwatch_intercept::process::{all_pids, describe_pid, parent_of};
use mcpwatch_intercept::{AgentEvent, AgentFlags, AgentState, Interceptor};
use mcpwatch_policy::{Policy, Subject};

use crate::governance::Loaded;
use crate::resolve::BpfResolver;
use crate::state::Shared;

/// How often pending processes whose event was lost (ring full) are swept, and the
/// policy is checked for a reload.
const TICK: Duration = Duration::from_millis(250);
/// A pending process older than this is classified by the sweep.
const SWEEP_AFTER_NS: u64 = 500_000_000;
/// How often agents whose exit was missed are pruned.
const PRUNE_EVERY_NS: u64 = 10_000_000_000;
/// Most events handled per wake-up (the rest wait for the next one).
const MAX_EVENTS_PER_WAKE: usize = 4096;
/// How far up the parent chain an agent ancestor is looked for.
const MAX_DEPTH: usize = 64;

/// The event ring's fd; holding the resolver keeps the interceptor (and so the fd) alive.
struct EventsFd(Arc<BpfResolver>);

impl AsRawFd for EventsFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.interceptor().agent_events_fd()
    }
}

/// Runs until the daemon exits. `comms` are the names the kernel already matches (also
/// used by the start-up scan).
pub async fn run(bpf: Arc<BpfResolver>, shared: Arc<Shared>, comms: Vec<String>) {
    let comms: Arc<HashSet<String>> = Arc::new(comms.into_iter().collect());
    // SAFETY: the fd belongs to the interceptor's ring buffer map, which `EventsFd` keeps
    // alive (it holds the resolver that owns the interceptor) and never replaces.
    let events = match unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(EventsFd(bpf.clone()), tokio::io::Interest::READABLE)
    } {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!(error = %e, "cannot poll the agent event ring; classifying every {TICK:?} instead");
            None
        }
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Arc<Loaded>> = None;
    let mut swept_at = 0u64;
    let mut pruned_at = 0u64;
    loop {
        tokio::select! {
            ready = async { match &events { Some(fd) => fd.readable().await.map(|mut g| g.clear_ready()), None => std::future::pending().await } } => {
                if let Err(e) = ready {
                    tracing::warn!(error = %e, "agent event ring");
                    tick.tick().await;
                }
            }
            _ = tick.tick() => {}
        }
        let current = shared.governance.current();
        let reloaded = !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &current));
        let now = bpf.interceptor().now_ns();
        let sweep = now.saturating_sub(swept_at) >= TICK.as_nanos() as u64;
        if sweep {
            swept_at = now;
        }
        let prune = now.saturating_sub(pruned_at) >= PRUNE_EVERY_NS;
        if prune {
            pruned_at = now;
        }
        let (b, c, p) = (bpf.clone(), comms.clone(), current.clone());
        let work = tokio::task::spawn_blocking(move || {
            let ic = b.interceptor();
            let has_agents = !p.policy.agents().is_empty();
            if reloaded {
                if let Err(e) = ic.set_classify(has_agents) {
                    tracing::warn!(error = %e, "cannot switch agent classification");
                }
                let marked = scan(ic, &p.policy, &c);
                tracing::info!(policy_agents = p.policy.agents().len(), marked, "agent scope: running processes scanned");
            }
            for ev in ic.agent_events(MAX_EVENTS_PER_WAKE) {
                classify(ic, &p.policy, ev, 0);
            }
            if prune {
                let n = ic.prune_dead_agents();
                if n > 0 {
                    tracing::debug!(pruned = n, "agents whose exit was missed dropped");
                }
            }
            if sweep {
                for ev in ic.pending_agents() {
                    if now.saturating_sub(ev.ktime_ns) >= SWEEP_AFTER_NS {
                        classify(ic, &p.policy, ev, 0);
                    }
                }
            }
        });
        if let Err(e) = work.await {
            tracing::warn!(error = %e, "agent classification task failed");
        }
        last = Some(current);
    }
}

/// Whether the process described by `/proc` matches a policy agent.
fn policy_match(policy: &Policy, tgid: u32) -> Option<bool> {
    let info = describe_pid(tgid)?;
    Some(policy.agent_for(&Subject { process: Some(&info) }).is_some())
}

/// Decides one pending process; returns whether it is an agent. A pending parent is
/// decided first (bounded depth), so a child forked during its parent's decision follows
/// the parent.
fn classify(ic: &Interceptor, policy: &Policy, ev: AgentEvent, depth: usize) -> bool {
    match ic.agent_state(ev.tgid) {
        AgentState::Agent { .. } => return true,
        // Decided already (or exited): nothing to do.
        AgentState::Unknown => return false,
        AgentState::Pending { .. } => {}
    }
    let mark = |flags: AgentFlags| {
        if let Err(e) = ic.mark_agent(ev.tgid, flags, ev.ppid) {
            // The agents map is full: the process stays pending, i.e. still redirected.
            tracing::warn!(tgid = ev.tgid, error = %e, "cannot mark agent");
        }
        true
    };
    match policy_match(policy, ev.tgid) {
        None => {
            ic.clear_pending(ev.tgid);
            return false;
        }
        Some(true) => {
            tracing::debug!(tgid = ev.tgid, "agent by policy");
            return mark(AgentFlags::POLICY);
        }
        Some(false) => {}
    }
    let mut parent = if ev.ppid != 0 { Some(ev.ppid) } else { parent_of(ev.tgid) };
    for _ in 0..MAX_DEPTH {
        let Some(p) = parent.filter(|p| *p > 1) else { break };
        match ic.agent_state(p) {
            AgentState::Agent { .. } => return mark(AgentFlags::INHERITED),
            AgentState::Pending { ppid, since_ns }
                if depth < 8 && classify(ic, policy, AgentEvent { tgid: p, ppid, ktime_ns: since_ns }, depth + 1) =>
            {
                return mark(AgentFlags::INHERITED);
            }
            _ => {}
        }
        parent = parent_of(p);
    }
    ic.clear_pending(ev.tgid);
    false
}

/// Marks every running agent (kernel comm list, policy patterns) and its descendants;
/// returns how many processes were marked.
fn scan(ic: &Interceptor, policy: &Policy, comms: &HashSet<String>) -> usize {
    let me = std::process::id();
    let has_agents = !policy.agents().is_empty();
    let pids = all_pids();
    let mut parents: HashMap<u32, u32> = HashMap::with_capacity(pids.len());
    let mut agents: HashSet<u32> = HashSet::new();
    let mut marked = 0;
    for &pid in &pids {
        if pid == me {
            continue;
        }
        if let Some(pp) = parent_of(pid) {
            parents.insert(pid, pp);
        }
        if ic.is_agent(pid) {
            agents.insert(pid);
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let flags = if comms.contains(comm.trim_end_matches('\n')) {
            Some(AgentFlags::COMM)
        } else if has_agents && policy_match(policy, pid) == Some(true) {
            Some(AgentFlags::POLICY)
        } else {
            None
        };
        if let Some(f) = flags
            && ic.mark_agent(pid, f, parents.get(&pid).copied().unwrap_or(0)).is_ok()
        {
            agents.insert(pid);
            marked += 1;
        }
    }
    for &pid in &pids {
        if pid == me || agents.contains(&pid) {
            continue;
        }
        let mut p = parents.get(&pid).copied();
        for _ in 0..MAX_DEPTH {
            let Some(pp) = p.filter(|x| *x > 1) else { break };
            if agents.contains(&pp) {
                if ic.mark_agent(pid, AgentFlags::INHERITED, parents.get(&pid).copied().unwrap_or(0)).is_ok() {
                    marked += 1;
                }
                break;
            }
            p = parents.get(&pp).copied();
        }
    }
    marked
}
