//! Agent scope: processes that are AI agents (and their descendants) have every TCP
//! connection redirected, not only those to the ports in [`crate::PortScope`].
//!
//! Why it exists: an MCP server on a port outside the port list (9443, 7000, ...) is
//! invisible to port-based interception, and that is exactly where a shadow server
//! would sit. The kernel tracks agents in the `agents` map (see `ebpf/mcpwatch.bpf.c`):
//! a comm in `agent_comms` makes a process an agent at exec or rename, a child of an
//! agent is one from fork on, and the entry leaves when the last thread exits. Richer
//! identities (the policy's `[[agent]]` exe, uid, unit... patterns) are decided in user
//! space: with [`AgentScope::classify`] every exec inside the watched cgroup is
//! `pending` (treated as an agent: redirected) until the daemon has matched it, and an
//! event on the `events` ring buffer tells it which process to look at. This module is
//! the user-space side of those maps.

use std::os::fd::{AsRawFd, RawFd};

use aya::maps::{Array, HashMap, MapData, RingBuf};

use crate::maps::{RawAgent, RawComm, RawConfig, RawEvent};
use crate::{InterceptError, Interceptor};

/// Command names of known MCP clients (agents, editors, CLIs), matched exactly in the
/// kernel at exec and on rename (`prctl(PR_SET_NAME)`, Node's `process.title`).
/// Generic runtimes (`node`, `python3`, `bun`, `deno`) are deliberately absent: they run
/// everything; name agents built on them in the policy (`[[agent]]` exe, comm, unit
/// patterns), or list a name in `scope.agent_comms` if every such process is an agent.
pub const BUILTIN_AGENT_COMMS: &[&str] = &[
    "claude",        // Claude Code (native binary, or node renaming itself)
    "Claude",        // Claude Desktop (Electron)
    "cursor",        // Cursor editor
    "Cursor",
    "cursor-agent",  // Cursor CLI
    "code",          // VS Code (Copilot agent mode, MCP client)
    "code-insiders",
    "codium",        // VSCodium
    "windsurf",      // Windsurf editor
    "codex",         // OpenAI Codex CLI
    "gemini",        // Gemini CLI
    "goose",         // Block goose
    "goosed",
    "opencode",      // opencode
    "aider",         // aider
    "zed",           // Zed editor
    "zed-editor",
    "copilot",       // GitHub Copilot CLI
    "amp",           // Sourcegraph Amp
    "crush",         // Charm crush
    "qwen",          // Qwen Code
    "kiro",          // Kiro
    "q",             // Amazon Q Developer CLI
];

/// Longest comm the kernel keeps (TASK_COMM_LEN - 1).
pub const MAX_COMM_LEN: usize = 15;

/// Bound of the `agents` map (live agent processes), as compiled into the object.
pub const MAX_AGENTS: u32 = 65536;
/// Bound of the `pending` map (LRU), as compiled into the object.
pub const MAX_PENDING: u32 = 16384;
/// Bound of the `agent_comms` map, as compiled into the object.
pub const MAX_AGENT_COMMS: usize = 1024;

/// What the connect hooks do for agents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentScope {
    /// Agents (and pending processes) have every TCP destination redirected. `false`:
    /// only the port scope applies and nothing below is used.
    pub enabled: bool,
    /// Exact command names (at most [`MAX_COMM_LEN`] bytes) that make a process an agent
    /// in the kernel, with no race: typically [`BUILTIN_AGENT_COMMS`] plus extras.
    pub comms: Vec<String>,
    /// Every exec in the watched cgroup is pending (redirected) until user space has
    /// decided with [`Interceptor::mark_agent`] or [`Interceptor::clear_pending`]. Turn
    /// it on when user space has patterns to match (the policy has agents). Can be
    /// changed later with [`Interceptor::set_classify`].
    pub classify: bool,
}

/// Why a process is an agent (bits; several may be set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentFlags(pub u32);

impl AgentFlags {
    /// Its comm is in `agent_comms` (exec or rename).
    pub const COMM: AgentFlags = AgentFlags(1);
    /// User space matched a policy pattern.
    pub const POLICY: AgentFlags = AgentFlags(2);
    /// A descendant of an agent.
    pub const INHERITED: AgentFlags = AgentFlags(4);

    pub fn contains(self, other: AgentFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// What the kernel currently holds for a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// Not an agent: port scope only.
    Unknown,
    /// Exec'd in the watched cgroup, not yet classified: redirected like an agent.
    Pending { ppid: u32, since_ns: u64 },
    /// An agent: every port redirected.
    Agent { flags: AgentFlags, ppid: u32 },
}

/// A process the kernel asks user space to classify (an exec, or a fork of a pending
/// process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentEvent {
    pub tgid: u32,
    /// Parent's tgid at exec or fork; 0 if unknown.
    pub ppid: u32,
    pub ktime_ns: u64,
}

pub(crate) struct AgentMaps {
    pub config: Array<MapData, RawConfig>,
    pub agents: HashMap<MapData, u32, RawAgent>,
    pub pending: HashMap<MapData, u32, RawAgent>,
    pub events: RingBuf<MapData>,
}

/// The `agent_comms` key for a name, or why it cannot be one.
pub(crate) fn comm_key(name: &str) -> Result<RawComm, InterceptError> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_COMM_LEN || b.contains(&0) {
        return Err(InterceptError::Config(format!(
            "agent comm {name:?} must be 1 to {MAX_COMM_LEN} bytes without NUL (the kernel truncates command names to {MAX_COMM_LEN})"
        )));
    }
    let mut comm = [0u8; 16];
    comm[..b.len()].copy_from_slice(b);
    Ok(RawComm { comm })
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> InterceptError {
    move |source| InterceptError::Map { map, source }
}

impl Interceptor {
    /// What the kernel holds for `tgid`.
    pub fn agent_state(&self, tgid: u32) -> AgentState {
        let m = self.lock_agents();
        if let Ok(a) = m.agents.get(&tgid, 0) {
            return AgentState::Agent { flags: AgentFlags(a.flags), ppid: a.ppid };
        }
        match m.pending.get(&tgid, 0) {
            Ok(p) => AgentState::Pending { ppid: p.ppid, since_ns: p.since_ns },
            Err(_) => AgentState::Unknown,
        }
    }

    /// The agents that are one by themselves (command name or policy), not by
    /// descent: the MCP clients whose children may be stdio servers. Bounded by
    /// the map (`MAX_AGENTS`).
    pub fn root_agents(&self) -> Vec<u32> {
        let m = self.lock_agents();
        m.agents
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, a)| a.flags & (AgentFlags::COMM.0 | AgentFlags::POLICY.0) != 0)
            .map(|(tgid, _)| tgid)
            .collect()
    }

    /// Whether `tgid` is an agent (not merely pending).
    pub fn is_agent(&self, tgid: u32) -> bool {
        matches!(self.agent_state(tgid), AgentState::Agent { .. })
    }

    /// Makes `tgid` an agent (adding `flags` to any it has) and ends its pending state.
    /// Its children from now on are agents too (the kernel's fork hook).
    pub fn mark_agent(&self, tgid: u32, flags: AgentFlags, ppid: u32) -> Result<(), InterceptError> {
        let mut m = self.lock_agents();
        let old = m.agents.get(&tgid, 0).map(|a| a.flags).unwrap_or(0);
        let v = RawAgent { flags: old | flags.0, ppid, since_ns: crate::monotonic_ns() };
        m.agents.insert(tgid, v, 0).map_err(map_err("agents"))?;
        let _ = m.pending.remove(&tgid);
        Ok(())
    }

    /// Agent processes whose `/proc` entry is gone or a zombie: their exit was missed
    /// (user space marked them after the exit hook ran). Removes them and returns how
    /// many; an entry rewritten meanwhile (pid reused by a new agent) is kept.
    pub fn prune_dead_agents(&self) -> usize {
        let entries: Vec<(u32, u64)> = {
            let m = self.lock_agents();
            m.agents
                .iter()
                .take(MAX_AGENTS as usize * 2)
                .filter_map(Result::ok)
                .map(|(tgid, a)| (tgid, a.since_ns))
                .collect()
        };
        let mut removed = 0;
        for (tgid, since) in entries {
            if crate::process::is_alive(tgid) {
                continue;
            }
            let mut m = self.lock_agents();
            if m.agents.get(&tgid, 0).is_ok_and(|a| a.since_ns == since) && m.agents.remove(&tgid).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Ends the pending state of `tgid` (classified as not an agent, or gone).
    pub fn clear_pending(&self, tgid: u32) {
        let _ = self.lock_agents().pending.remove(&tgid);
    }

    /// Pending processes (bounded by [`MAX_PENDING`]), for a periodic sweep that
    /// classifies those whose event was lost (ring full).
    pub fn pending_agents(&self) -> Vec<AgentEvent> {
        let m = self.lock_agents();
        m.pending
            .iter()
            .take(MAX_PENDING as usize * 2)
            .filter_map(Result::ok)
            .map(|(tgid, p)| AgentEvent { tgid, ppid: p.ppid, ktime_ns: p.since_ns })
            .collect()
    }

    /// Number of agent processes tracked (bounded by [`MAX_AGENTS`]).
    pub fn agent_count(&self) -> usize {
        let m = self.lock_agents();
        m.agents.keys().take(MAX_AGENTS as usize * 2).filter(Result::is_ok).count()
    }

    /// Up to `max` events waiting on the ring buffer.
    pub fn agent_events(&self, max: usize) -> Vec<AgentEvent> {
        let mut m = self.lock_agents();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = m.events.next() else { break };
            if item.len() >= size_of::<RawEvent>() {
                // SAFETY: the record is at least size_of::<RawEvent>() bytes and
                // RawEvent is plain integers; read_unaligned copes with any alignment.
                let ev: RawEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<RawEvent>()) };
                out.push(AgentEvent { tgid: ev.tgid, ppid: ev.ppid, ktime_ns: ev.ktime_ns });
            }
        }
        out
    }

    /// The ring buffer's fd: readable (poll/epoll) when [`Interceptor::agent_events`] has
    /// something. Valid as long as the `Interceptor` lives.
    pub fn agent_events_fd(&self) -> RawFd {
        self.lock_agents().events.as_raw_fd()
    }

    /// Turns the pending state of new execs on or off (e.g. after a policy reload added
    /// or removed every `[[agent]]`).
    pub fn set_classify(&self, on: bool) -> Result<(), InterceptError> {
        let mut m = self.lock_agents();
        let mut cfg = m.config.get(&0, 0).map_err(map_err("config"))?;
        cfg.classify = u32::from(on);
        m.config.set(0, cfg, 0).map_err(map_err("config"))
    }

    /// Current monotonic time in the clock of [`AgentEvent::ktime_ns`].
    pub fn now_ns(&self) -> u64 {
        crate::monotonic_ns()
    }

    fn lock_agents(&self) -> std::sync::MutexGuard<'_, AgentMaps> {
        match self.agents.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Fills `agent_comms` before any program runs.
pub(crate) fn fill_comms(
    comms: &mut HashMap<&mut MapData, RawComm, u32>,
    names: &[String],
) -> Result<(), InterceptError> {
    if names.len() > MAX_AGENT_COMMS {
        return Err(InterceptError::Config(format!(
            "{} agent comms, at most {MAX_AGENT_COMMS}",
            names.len()
        )));
    }
    for name in names {
        comms.insert(comm_key(name)?, 1, 0).map_err(map_err("agent_comms"))?;
    }
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn builtin_comms_fit_the_kernel_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in BUILTIN_AGENT_COMMS {
            comm_key(c).unwrap_or_else(|e| panic!("{c}: {e}"));
            assert!(seen.insert(*c), "duplicate {c}");
            assert!(!["node", "python3", "python", "bun", "deno", "sh", "bash"].contains(c));
        }
    }

    #[test]
    fn comm_keys_are_nul_padded_and_bounded() {
        let k = comm_key("claude").unwrap();
        assert_eq!(&k.comm[..6], b"claude");
        assert!(k.comm[6..].iter().all(|b| *b == 0));
        assert!(comm_key("").is_err());
        assert!(comm_key("a-name-longer-than-15").is_err());
        assert!(comm_key("a\0b").is_err());
        assert_eq!(comm_key(&"x".repeat(15)).unwrap().comm[14], b'x');
    }

    #[test]
    fn flags_compose() {
        let f = AgentFlags(AgentFlags::COMM.0 | AgentFlags::INHERITED.0);
        assert!(f.contains(AgentFlags::COMM) && f.contains(AgentFlags::INHERITED));
        assert!(!f.contains(AgentFlags::POLICY));
    }
}
