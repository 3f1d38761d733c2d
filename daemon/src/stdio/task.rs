//! The stdio capture loop: keeps the kernel's watched set in step with the
//! agents (MCP clients), drains captured chunks into [`super::StdioObserver`],
//! and turns its events into inventory entries and audit records.
//!
//! Why a thread and not a tokio task: the ring is drained with short sleeps
//! (bounded work per wake), and `/proc` reads are blocking. Rule for "is a
//! stdio MCP server": a descendant of a client (agent by command name or
//! policy) that answers a JSON-RPC `initialize` on its stdio; no argv
//! heuristics decide, they only name the server in the inventory.
//! Every record is marked observed: the kernel cannot block a stdio write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcpwatch_api::{AuditRecord, CallStatus, MessageKind, ProcessInfo, AUDIT_SCHEMA_VERSION};
use mcpwatch_intercept::stdio::{StdioCapture, StdioDir};
use mcpwatch_intercept::{AgentState, Interceptor};
use mcpwatch_mcp::IdKey;

use super::{Chunk, Direction, Event, StdioObserver};
use crate::inventory::{PinOutcome, Sighting, ServerInfoUpdate};
use crate::resolve::BpfResolver;
use crate::clock::now_ms;
use crate::state::Shared;

/// How often the clients are synced into the watched set.
const CLIENT_SYNC: Duration = Duration::from_millis(50);
/// Sleep between drains when the ring was empty.
const IDLE: Duration = Duration::from_millis(5);
/// Chunks handled per drain.
const MAX_CHUNKS: usize = 4096;
/// Server processes described at once (pid → identity).
const MAX_SERVERS: usize = 1024;
/// Open tool-call records awaiting their result.
const MAX_OPEN_CALLS: usize = 4096;
/// Every record's note: nothing on stdio is enforced.
pub const OBSERVED_NOTE: &str = "observed on stdio: not enforced (the kernel cannot block a stdio write)";
/// Note on a record after data of that server was lost.
pub const LOST_NOTE: &str = "stdio data was lost before this message (ring full, truncated or overlong line)";

/// Who a captured pid is.
#[derive(Clone)]
struct ServerId {
    endpoint: String,
    command: Vec<String>,
    client: Option<Arc<ProcessInfo>>,
    /// The process is a gate-connected `mcpwatch wrap` or runs under one: the gate already
    /// governs and audits every message, so observing it again would count each call twice.
    wrapped: bool,
}

/// `mcpwatch wrap ...`, by its raw argv.
fn is_wrapper(argv: &[String]) -> bool {
    argv.first().is_some_and(|a| a.rsplit('/').next() == Some("mcpwatch")) && argv.get(1).map(String::as_str) == Some("wrap")
}

/// Attach the stdio programs and run the loop on its own thread. Failure to
/// attach is logged and leaves the rest of the daemon running.
pub fn spawn(shared: Arc<Shared>, bpf: Arc<BpfResolver>) {
    let cap = match StdioCapture::attach() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "stdio capture not attached: stdio MCP servers will not be observed");
            return;
        }
    };
    tracing::info!("stdio capture attached (raw tracepoints sys_enter/sys_exit, watched pids only)");
    let spawned = std::thread::Builder::new().name("mcpwatch-stdio".into()).spawn(move || run(cap, shared, bpf));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the stdio capture thread");
    }
}

fn run(mut cap: StdioCapture, shared: Arc<Shared>, bpf: Arc<BpfResolver>) {
    let mut obs = StdioObserver::new();
    let scope = governed_cgroup(bpf.interceptor());
    let mut ids: HashMap<u32, ServerId> = HashMap::new();
    let mut open: HashMap<(u32, IdKey), (AuditRecord, Instant)> = HashMap::new();
    let mut synced = Instant::now() - CLIENT_SYNC;
    let mut kernel_lost = 0u64;
    loop {
        if synced.elapsed() >= CLIENT_SYNC {
            synced = Instant::now();
            for pid in bpf.interceptor().root_agents() {
                // Agents by command name are marked host-wide by the kernel: only
                // clients inside the governed cgroup are this daemon's business.
                if !cap.is_watched(pid) && in_scope(&scope, pid) {
                    match cap.watch_client(pid) {
                        Ok(()) => tracing::info!(pid, "stdio: watching the children of an MCP client"),
                        Err(e) => tracing::warn!(pid, error = %e, "stdio: cannot watch client"),
                    }
                }
            }
            let lost = cap.lost();
            if lost > kernel_lost {
                tracing::warn!(lost = lost - kernel_lost, "stdio: ring buffer full, chunks lost");
                // The kernel does not say whose chunks were lost: mark every known server.
                obs.note_kernel_loss(lost - kernel_lost);
                for pid in ids.keys() {
                    obs.mark_lost(*pid);
                }
                kernel_lost = lost;
            }
        }
        let chunks = cap.drain(MAX_CHUNKS);
        if chunks.is_empty() {
            // Forget exited servers only once the ring is drained: their last
            // chunks may still be queued behind their exit.
            if ids.len() > MAX_SERVERS / 2 || synced.elapsed() < IDLE {
                ids.retain(|pid, _| {
                    std::path::Path::new(&format!("/proc/{pid}")).exists() || {
                        obs.forget_pid(*pid);
                        false
                    }
                });
            }
            std::thread::sleep(IDLE);
            continue;
        }
        for c in chunks {
            let dir = match c.dir {
                StdioDir::Read => Direction::Read,
                StdioDir::Write => Direction::Write,
            };
            for ev in obs.feed(Chunk { pid: c.pid, fd: c.fd, dir, data: c.data, truncated: c.truncated }) {
                handle(&shared, bpf.interceptor(), &mut ids, &mut open, ev);
            }
        }
    }
}

/// The governed cgroup as `/proc/<pid>/cgroup` names it (relative to the cgroup2 mount).
fn governed_cgroup(ic: &Interceptor) -> Option<String> {
    let mount = mcpwatch_intercept::cgroup::cgroup2_mount().ok()?;
    let rel = ic.cgroup().strip_prefix(&mount).ok()?;
    Some(format!("/{}", rel.display()).trim_end_matches('/').to_string())
}

/// Whether `pid` lives in the governed cgroup or below it.
fn in_scope(scope: &Option<String>, pid: u32) -> bool {
    let (Some(scope), Some(path)) = (scope, mcpwatch_intercept::cgroup::cgroup_path_of(pid)) else { return false };
    scope.is_empty() || path == *scope || path.starts_with(&format!("{scope}/"))
}

fn identify(shared: &Arc<Shared>, ic: &Interceptor, ids: &mut HashMap<u32, ServerId>, pid: u32) -> ServerId {
    if let Some(id) = ids.get(&pid) {
        return id.clone();
    }
    let sanitize = crate::resolve::cmdline_filter(shared.clone());
    let mut command = mcpwatch_intercept::process::describe_pid(pid).map(|p| p.cmdline).unwrap_or_default();
    // Wrapped: the process, or an ancestor below the client, is a `mcpwatch wrap` that is
    // connected to the gate now (pid from the gate's SO_PEERCRED, argv as a second check).
    // A process that only *names* itself `mcpwatch wrap` is still observed.
    let gated = |p: u32, argv: &[String]| is_wrapper(argv) && shared.gate_wrappers.lock().is_ok_and(|m| m.contains_key(&p));
    let mut wrapped = gated(pid, &command);
    let mut tmp = ProcessInfo { cmdline: std::mem::take(&mut command), ..Default::default() };
    sanitize(&mut tmp);
    let command = tmp.cmdline;
    // The client: the nearest ancestor that is an agent by itself.
    let mut client = None;
    let mut p = pid;
    for _ in 0..16 {
        let Some(pp) = mcpwatch_intercept::process::parent_of(p) else { break };
        if pp <= 1 {
            break;
        }
        if !wrapped && client.is_none() {
            wrapped = mcpwatch_intercept::process::describe_pid(pp).is_some_and(|i| gated(pp, &i.cmdline));
        }
        if let AgentState::Agent { flags, .. } = ic.agent_state(pp)
            && flags.0 & (mcpwatch_intercept::AgentFlags::COMM.0 | mcpwatch_intercept::AgentFlags::POLICY.0) != 0
        {
            client = mcpwatch_intercept::process::describe_pid(pp).map(|mut info| {
                sanitize(&mut info);
                Arc::new(info)
            });
            break;
        }
        p = pp;
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let id = ServerId { endpoint: super::endpoint_key(&command, cwd.as_deref()), command, client, wrapped };
    if ids.len() < MAX_SERVERS {
        ids.insert(pid, id.clone());
    }
    id
}

fn handle(shared: &Arc<Shared>, ic: &Interceptor, ids: &mut HashMap<u32, ServerId>, open: &mut HashMap<(u32, IdKey), (AuditRecord, Instant)>, ev: Event) {
    let now = now_ms();
    let inv = &shared.inventory;
    match ev {
        Event::ServerInfo { pid, name, version, protocol_version } => {
            let id = identify(shared, ic, ids, pid);
            if id.wrapped {
                return;
            }
            inv.saw_message(&Sighting { endpoint: &id.endpoint, dst: "", transport: "stdio", process: id.client.as_deref(), method: Some("initialize"), name: None, now_ms: now });
            inv.set_command(&id.endpoint, &id.command);
            let name = name.or_else(|| super::server_name(&id.command));
            inv.set_server_info(&id.endpoint, ServerInfoUpdate { name, version, protocol_version, capabilities: None });
        }
        Event::ToolsList { pid, tools, first_page, last_page, .. } => {
            let id = identify(shared, ic, ids, pid);
            if id.wrapped {
                return;
            }
            let min = crate::inventory::poison_floor(shared.governance.current().policy.inspect().poisoning_min_severity);
            let (sights, poisoned) = crate::inventory::tool_sights(&tools, min);
            for (name, outcome) in inv.observe_tools(&id.endpoint, &sights, first_page, last_page, now) {
                if let PinOutcome::Changed(diff) = outcome {
                    inv.add_alert(&id.endpoint, format!("tool `{}` changed since it was pinned: {}", crate::record::clip(&name), diff.first().cloned().unwrap_or_default()));
                }
            }
            for (name, score) in poisoned {
                inv.add_alert(&id.endpoint, format!("tool `{}` looks poisoned (score {score})", crate::record::clip(&name)));
            }
        }
        Event::ToolCall { pid, id: rpc_id, name, arguments, lost, unmatched } => {
            let id = identify(shared, ic, ids, pid);
            if id.wrapped {
                return;
            }
            inv.saw_message(&Sighting { endpoint: &id.endpoint, dst: "", transport: "stdio", process: id.client.as_deref(), method: Some("tools/call"), name: Some(&name), now_ms: now });
            crate::state::Counters::inc(&shared.counters.stdio_observed_calls);
            let mut notes = vec![OBSERVED_NOTE.to_string()];
            if lost {
                notes.push(LOST_NOTE.to_string());
            }
            let rec = AuditRecord {
                schema: AUDIT_SCHEMA_VERSION,
                id: shared.store.new_record_id(),
                ts_ms: now,
                process: id.client.clone(),
                scheme: "stdio".into(),
                server: id.endpoint.clone(),
                transport: "stdio".into(),
                kind: MessageKind::Request,
                direction: "client->server".into(),
                method: Some("tools/call".into()),
                jsonrpc_id: Some(rpc_id.to_value().to_string()),
                name: Some(name),
                args_hash: arguments.as_ref().map(mcpwatch_mcp::canonical_hash),
                status: CallStatus::Pending,
                notes,
                ..Default::default()
            };
            if unmatched {
                // Its id was cut (too long to keep): no answer can be matched to it, and a
                // later call whose id is the cut one must not complete it.
                let mut rec = rec;
                rec.notes.push("id too long to keep: its answer is not matched".into());
                crate::record::write_closed(shared, rec, CallStatus::Sent);
                return;
            }
            let _ = shared.begin_record(&rec);
            if open.len() >= MAX_OPEN_CALLS
                && let Some(k) = open.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| k.clone())
            {
                open.remove(&k);
            }
            open.insert((pid, rpc_id.key()), (rec, Instant::now()));
        }
        Event::ToolResult { pid, id: rpc_id, is_error, lost, .. } => {
            let Some((mut rec, started)) = open.remove(&(pid, rpc_id.key())) else { return };
            rec.duration_us = Some(started.elapsed().as_micros() as u64);
            rec.status = if is_error { CallStatus::JsonrpcError { code: 0, message: "tool reported an error".into() } } else { CallStatus::Ok };
            if lost && !rec.notes.iter().any(|n| n == LOST_NOTE) {
                rec.notes.push(LOST_NOTE.to_string());
            }
            shared.complete_record(&rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_wrapper;

    #[test]
    fn wrapped_servers_are_recognised_by_the_wrappers_argv() {
        let v = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert!(is_wrapper(&v("/usr/bin/mcpwatch wrap -- npx -y pkg")));
        assert!(is_wrapper(&v("mcpwatch wrap --failure closed -- python s.py")));
        assert!(!is_wrapper(&v("mcpwatch list")));
        assert!(!is_wrapper(&v("/opt/evil/mcpwatch-wrap x")));
        assert!(!is_wrapper(&[]));
    }
}
