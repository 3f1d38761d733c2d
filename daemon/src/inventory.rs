//! The inventory: every MCP server seen, what it offers, and who uses it.
//!
//! Kept in memory for `mcpwatch list` and written behind to the audit store: a change
//! marks the entry dirty, and [`Inventory::persist`] (every second, and at shutdown)
//! writes the dirty entries. Rewriting a server's whole entry on every message would
//! cost more than the message. Bounded: at most [`MAX_SERVERS`] servers and
//! [`MAX_CLIENTS`] client processes per server (least recently seen evicted). An evicted
//! server is written to the store first and read back when it is next judged, so a
//! flood of endpoints cannot make a pinned server forget its tools.

use std::collections::HashMap;
use std::sync::Mutex;

use mcpwatch_api::{ClientUse, ProcessInfo, ServerEntry, ToolEntry};
use mcpwatch_audit::Store;

pub const MAX_SERVERS: usize = 10_000;
pub const MAX_CLIENTS: usize = 64;
/// Most tools kept per server. A server's `tools/list` pages are the server's to choose
/// (a watched user's own server, paged without end): past this, a tool is not pinned and
/// is treated as changed (hidden from clients in enforce mode, alerted otherwise).
pub const MAX_TOOLS: usize = 1024;
/// Largest tool definition kept for diffs (about its JSON size); a larger one is pinned
/// by its hash alone.
pub const MAX_KEPT_DEFINITION_BYTES: usize = 16 << 10;
/// Most bytes (estimated) of tools the inventory holds in memory for all servers
/// together; past it the least recently seen servers are written to the store and
/// dropped from memory, as at [`MAX_SERVERS`]. Without it, 10,000 endpoints (paths of one
/// server of the user's own) with 1,024 large tools each held gigabytes, written back
/// and read again after a restart.
pub const MAX_TOOL_BYTES_IN_MEMORY: usize = 64 << 20;

pub struct Inventory {
    servers: Mutex<HashMap<String, ServerEntry>>,
    /// Socket address (`ip:port`) → paths that carried MCP there. Keyed by the real
    /// destination, not the endpoint key: the endpoint's host comes from the client's
    /// Host header, which a client can vary to look new.
    mcp_dsts: Mutex<crate::session::BoundedMap<String, Vec<String>>>,
    /// Destinations that carried MCP and were pushed out of memory (of `mcp_dsts`, or
    /// with their server entry): still MCP destinations. Without this a flood of new
    /// destinations made a shadow server's address look never seen, and what cannot be
    /// inspected toward it (TLS outside the `[tls]` scope, a WebSocket) was relayed
    /// ungoverned and unrecorded.
    forgotten: Mutex<Forgotten>,
    dirty: Mutex<std::collections::HashSet<String>>,
    /// Estimated bytes of each resident server's tools, and their sum (taken after
    /// `servers`, never before it).
    tool_bytes: Mutex<ToolBytes>,
    store: Store,
}

#[derive(Default)]
struct ToolBytes {
    by_endpoint: crate::tally::Tally<String>,
    total: usize,
}

impl ToolBytes {
    /// `endpoint` holds `bytes` now (0: it is forgotten).
    fn set(&mut self, endpoint: &str, bytes: usize) {
        let old = self.by_endpoint.get(endpoint);
        self.by_endpoint.sub(endpoint, old);
        self.by_endpoint.add(endpoint.to_string(), bytes);
        self.total = self.total.saturating_sub(old).saturating_add(bytes);
    }
}

/// `s` cut to `n` characters (and `…`) when longer: text a server chose, kept here.
fn clipped(s: String, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}

/// About how many bytes a server's tools hold in memory.
fn tools_bytes(tools: &[ToolEntry]) -> usize {
    tools
        .iter()
        .map(|t| {
            128 + t.name.len()
                + t.hash.len()
                + t.diff.iter().map(String::len).sum::<usize>()
                + t.pinned_definition.as_deref().map_or(0, json_bytes)
        })
        .sum()
}

/// About how many bytes a JSON value's text takes (what it holds in memory is a small
/// multiple of that).
fn json_bytes(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(s) => s.len() + 2,
        Value::Array(a) => 2 + a.iter().map(json_bytes).sum::<usize>() + a.len(),
        Value::Object(o) => 2 + o.iter().map(|(k, v)| k.len() + 4 + json_bytes(v)).sum::<usize>(),
    }
}

/// What the proxy learned about a server from one message.
pub struct Sighting<'a> {
    pub endpoint: &'a str,
    pub dst: &'a str,
    pub transport: &'a str,
    pub process: Option<&'a ProcessInfo>,
    pub method: Option<&'a str>,
    pub name: Option<&'a str>,
    pub now_ms: u64,
}

/// One tool of a `tools/list` result.
pub struct ToolSight {
    pub name: String,
    /// `mcpwatch_inspect::pin::tool_hash` of the definition.
    pub hash: String,
    pub def: serde_json::Value,
    /// Poisoning severity, when signals were found.
    pub poisoning: Option<String>,
}

/// Sights of the tools of a `tools/list` result, each poisoning-scanned against
/// the others, and the tools at or above `min` severity with their score.
/// The poisoning severity from which a policy acts (`[inspect] poisoning_min_severity`).
pub fn poison_floor(min: mcpwatch_policy::MinSeverity) -> mcpwatch_inspect::poison::Severity {
    use mcpwatch_inspect::poison::Severity;
    match min {
        mcpwatch_policy::MinSeverity::Low => Severity::Low,
        mcpwatch_policy::MinSeverity::Medium => Severity::Medium,
        mcpwatch_policy::MinSeverity::High => Severity::High,
    }
}

pub fn tool_sights(tools: &[serde_json::Value], min: mcpwatch_inspect::poison::Severity) -> (Vec<ToolSight>, Vec<(String, u32)>) {
    use serde_json::Value;
    let names: Vec<&str> = tools.iter().filter_map(|t| t.get("name").and_then(Value::as_str)).collect();
    let others = mcpwatch_inspect::poison::OtherTools::new(&names);
    let mut sights = Vec::new();
    let mut poisoned = Vec::new();
    for t in tools {
        let Some(name) = t.get("name").and_then(Value::as_str) else { continue };
        let r = mcpwatch_inspect::poison::scan_tool_with(t, &others);
        let severity = (r.severity > mcpwatch_inspect::poison::Severity::None).then(|| format!("{:?}", r.severity).to_lowercase());
        if r.severity >= min {
            poisoned.push((name.to_string(), r.score));
        }
        sights.push(ToolSight { name: name.to_string(), hash: mcpwatch_inspect::pin::tool_hash(t), def: t.clone(), poisoning: severity });
    }
    (sights, poisoned)
}

/// Pin state of a tool after a `tools/list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinOutcome {
    Trusted,
    FirstSeen,
    Changed(Vec<String>),
}

/// Server identity from `initialize` or `server/discover`.
#[derive(Debug, Default, Clone)]
pub struct ServerInfoUpdate {
    pub name: Option<String>,
    pub version: Option<String>,
    pub protocol_version: Option<String>,
    pub capabilities: Option<serde_json::Value>,
}

/// The "diff" of a tool past [`MAX_TOOLS`] of its server.
pub const TOO_MANY_TOOLS_DIFF: &str = "not pinned: the server lists more tools than the inventory keeps for one server (1024)";

/// The "diff" of a tool whose name is longer than a call may name.
pub const LONG_NAME_DIFF: &str = "not pinned: the tool's name is longer than a call may name (4096 bytes)";

/// The "diff" of a tool that appeared after the server's tools were first pinned.
pub const NEW_TOOL_DIFF: &str = "new tool, not in the tools/list first pinned for this server";

/// Most paths remembered per destination.
const MAX_PATHS_PER_DST: usize = 32;

/// A fixed-size Bloom filter of destinations ([`Inventory::dst_forgotten`]): 128 KiB
/// however many are added. A false positive only governs a destination that never spoke
/// MCP (the safe side); a saturated filter governs everything.
struct Forgotten {
    bits: Vec<u64>,
    hasher: std::hash::RandomState,
}

impl Forgotten {
    const BITS: u64 = 1 << 20;
    const HASHES: u64 = 4;

    fn new() -> Forgotten {
        Forgotten { bits: vec![0; (Self::BITS / 64) as usize], hasher: std::hash::RandomState::new() }
    }

    fn positions(&self, dst: &str) -> impl Iterator<Item = usize> + use<> {
        use std::hash::BuildHasher as _;
        let (a, b) = (self.hasher.hash_one(dst), self.hasher.hash_one((dst, 1u8)) | 1);
        (0..Self::HASHES).map(move |i| (a.wrapping_add(i.wrapping_mul(b)) % Self::BITS) as usize)
    }

    fn add(&mut self, dst: &str) {
        for p in self.positions(dst) {
            self.bits[p / 64] |= 1 << (p % 64);
        }
    }

    fn contains(&self, dst: &str) -> bool {
        self.positions(dst).all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }
}

/// Remember that `endpoint` (`scheme://host:port/path`) carried MCP at `dst`; a
/// destination pushed out to make room goes to `forgotten`.
fn note_dst(map: &mut crate::session::BoundedMap<String, Vec<String>>, forgotten: &Mutex<Forgotten>, dst: &str, endpoint: &str) {
    if dst.is_empty() {
        return;
    }
    let path = endpoint.split_once("://").and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string())).unwrap_or_else(|| "/".into());
    match map.get_mut(dst) {
        Some(paths) if paths.contains(&path) => {}
        Some(paths) => {
            if paths.len() >= MAX_PATHS_PER_DST {
                paths.remove(0);
            }
            paths.push(path);
        }
        None => {
            let evicted = map.insert_entries(dst.to_owned(), vec![path]);
            if !evicted.is_empty()
                && let Ok(mut f) = forgotten.lock()
            {
                for (gone, _) in evicted {
                    f.add(&gone);
                }
            }
        }
    }
}

impl Inventory {
    pub fn load(store: Store) -> Inventory {
        // The store holds every server ever seen (evicted entries too), more than memory
        // should: memory takes the most recently seen within its bounds, the rest are read
        // back when next judged. First the most recent MAX_SERVERS by time alone (a heap
        // of small keys: no entry is kept while the store is walked), then those entries.
        let mut recent: std::collections::BinaryHeap<std::cmp::Reverse<(u64, String, String, usize)>> = std::collections::BinaryHeap::new();
        let forgotten = Mutex::new(Forgotten::new());
        // A destination left in the store stays known as an MCP destination.
        let forget = |dst: &str| {
            if !dst.is_empty()
                && let Ok(mut f) = forgotten.lock()
            {
                f.add(dst);
            }
        };
        let walked = store.each_server(|s| {
            recent.push(std::cmp::Reverse((s.last_seen_ms, s.endpoint.clone(), s.dst.clone(), tools_bytes(&s.tools))));
            if recent.len() > MAX_SERVERS
                && let Some(std::cmp::Reverse((_, _, dst, _))) = recent.pop()
            {
                forget(&dst);
            }
        });
        if let Err(e) = walked {
            tracing::error!(error = %e, "cannot load inventory from the store; starting empty");
            recent.clear();
        }
        let mut tool_bytes = ToolBytes::default();
        let mut servers = HashMap::new();
        for std::cmp::Reverse((_, endpoint, dst, bytes)) in recent.into_sorted_vec() {
            if tool_bytes.total.saturating_add(bytes) > MAX_TOOL_BYTES_IN_MEMORY {
                forget(&dst);
                continue;
            }
            if let Ok(Some(s)) = store.server(&endpoint) {
                tool_bytes.set(&endpoint, bytes);
                servers.insert(endpoint, s);
            }
        }
        let mut dsts = crate::session::BoundedMap::new(MAX_SERVERS);
        for s in servers.values() {
            note_dst(&mut dsts, &forgotten, &s.dst, &s.endpoint);
        }
        Inventory { servers: Mutex::new(servers), mcp_dsts: Mutex::new(dsts), forgotten, dirty: Mutex::new(Default::default()), tool_bytes: Mutex::new(tool_bytes), store }
    }

    /// Has MCP been seen at this socket address (any path)?
    pub fn knows_dst(&self, dst: &str) -> bool {
        self.mcp_dsts.lock().is_ok_and(|d| d.get(dst).is_some()) || self.dst_forgotten(dst)
    }

    /// Has MCP been seen at this socket address and path? (A destination pushed out of
    /// memory: its paths are not known, so any.)
    pub fn knows_dst_path(&self, dst: &str, path: &str) -> bool {
        match self.mcp_dsts.lock() {
            Ok(d) => match d.get(dst) {
                Some(paths) => paths.iter().any(|p| p == path),
                None => self.dst_forgotten(dst),
            },
            Err(_) => false,
        }
    }

    /// Did MCP pass toward this socket address before it was pushed out of memory? (See
    /// `Inventory::forgotten`.)
    pub fn dst_forgotten(&self, dst: &str) -> bool {
        self.forgotten.lock().is_ok_and(|f| f.contains(dst))
    }

    /// Has a `tools/list` result of this server been seen (it has tools on record)?
    pub fn has_tool_list(&self, endpoint: &str) -> bool {
        self.servers.lock().is_ok_and(|mut s| self.resident(&mut s, endpoint).is_some_and(|e| !e.tools.is_empty()))
    }

    /// The entry of `endpoint`, brought back from the store when it was evicted from
    /// memory. Memory is a bounded cache of the store, not the truth: a flood of new
    /// endpoints must not make a pinned server forget its tools (its next call would be
    /// judged as a call to a server whose list was never seen).
    fn resident<'a>(&self, servers: &'a mut HashMap<String, ServerEntry>, endpoint: &str) -> Option<&'a mut ServerEntry> {
        self.resident_or(servers, endpoint, |_| None)
    }

    /// [`Inventory::resident`], or the entry `create` makes (at its place in memory)
    /// when the store has none either. One lookup when the entry is in memory: this runs
    /// for every message.
    fn resident_or<'a>(&self, servers: &'a mut HashMap<String, ServerEntry>, endpoint: &str, create: impl FnOnce(&str) -> Option<ServerEntry>) -> Option<&'a mut ServerEntry> {
        if servers.contains_key(endpoint) {
            return servers.get_mut(endpoint);
        }
        let entry = self.store.server(endpoint).ok().flatten().or_else(|| create(endpoint))?;
        let bytes = tools_bytes(&entry.tools);
        self.make_room(servers, endpoint, bytes);
        self.set_tool_bytes(endpoint, bytes);
        Some(servers.entry(endpoint.to_string()).or_insert(entry))
    }

    fn set_tool_bytes(&self, endpoint: &str, bytes: usize) {
        if let Ok(mut t) = self.tool_bytes.lock() {
            t.set(endpoint, bytes);
        }
    }

    /// Make room for `adding` more bytes of tools: while memory holds [`MAX_SERVERS`]
    /// entries or the tools would pass [`MAX_TOOL_BYTES_IN_MEMORY`], drop the least
    /// recently seen entry other than `keep` from memory, writing it to the store first
    /// so nothing it holds (pins, changes not yet persisted) is lost.
    fn make_room(&self, servers: &mut HashMap<String, ServerEntry>, keep: &str, adding: usize) {
        loop {
            let tools = self.tool_bytes.lock().map_or(0, |t| t.total);
            let counted = servers.len() < MAX_SERVERS || servers.contains_key(keep);
            if counted && tools.saturating_add(adding) <= MAX_TOOL_BYTES_IN_MEMORY {
                return;
            }
            let Some(oldest) = servers.values().filter(|s| s.endpoint != keep).min_by_key(|s| s.last_seen_ms).map(|s| s.endpoint.clone()) else { return };
            let Some(e) = servers.remove(&oldest) else { return };
            if let Err(err) = self.store.put_server(&e) {
                tracing::error!(error = %err, endpoint = %e.endpoint, "cannot persist an evicted inventory entry; keeping it");
                servers.insert(oldest, e);
                return;
            }
            self.set_tool_bytes(&oldest, 0);
            if !e.dst.is_empty()
                && let Ok(mut f) = self.forgotten.lock()
            {
                f.add(&e.dst);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.servers.lock().map_or(0, |s| s.len())
    }

    pub fn contains(&self, endpoint: &str) -> bool {
        self.servers.lock().is_ok_and(|s| s.contains_key(endpoint))
    }

    /// Endpoints whose original destination is `dst` (`ip:port`): the address has spoken MCP.
    pub fn endpoints_at(&self, dst: &str) -> Vec<String> {
        self.servers
            .lock()
            .map(|s| s.values().filter(|e| e.dst == dst).map(|e| e.endpoint.clone()).collect())
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn list(&self) -> Vec<ServerEntry> {
        let mut v: Vec<ServerEntry> =
            self.servers.lock().map(|s| s.values().cloned().collect()).unwrap_or_default();
        v.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        v
    }

    fn update(&self, endpoint: &str, f: impl FnOnce(&mut ServerEntry)) {
        let Ok(mut guard) = self.servers.lock() else { return };
        let Some(entry) = self.resident_or(&mut guard, endpoint, |e| Some(ServerEntry { endpoint: e.to_string(), ..Default::default() })) else { return };
        f(entry);
        drop(guard);
        if let Ok(mut d) = self.dirty.lock()
            && !d.contains(endpoint)
        {
            d.insert(endpoint.to_string());
        }
    }

    /// Write the entries changed since the last call. Returns how many were written.
    pub fn persist(&self) -> usize {
        let keys: Vec<String> = match self.dirty.lock() {
            Ok(mut d) => d.drain().collect(),
            Err(_) => return 0,
        };
        let entries: Vec<ServerEntry> = match self.servers.lock() {
            Ok(s) => keys.iter().filter_map(|k| s.get(k).cloned()).collect(),
            Err(_) => return 0,
        };
        for e in &entries {
            if let Err(err) = self.store.put_server(e) {
                tracing::error!(error = %err, endpoint = %e.endpoint, "cannot persist inventory entry");
                if let Ok(mut d) = self.dirty.lock() {
                    d.insert(e.endpoint.clone());
                }
            }
        }
        entries.len()
    }

    /// A client sent a message to this server.
    pub fn saw_message(&self, s: &Sighting<'_>) {
        if !s.dst.is_empty()
            && let Ok(mut d) = self.mcp_dsts.lock()
        {
            note_dst(&mut d, &self.forgotten, s.dst, s.endpoint);
        }
        self.update(s.endpoint, |e| {
            if e.first_seen_ms == 0 {
                e.first_seen_ms = s.now_ms;
            }
            e.last_seen_ms = s.now_ms;
            // Assigned only when they change: every message says them.
            if e.dst != s.dst {
                e.dst = s.dst.to_string();
            }
            if e.transport != s.transport {
                e.transport = s.transport.to_string();
            }
            e.message_count += 1;
            if s.method == Some("tools/call") {
                e.call_count += 1;
                if let Some(t) = e.tools.iter_mut().find(|t| Some(t.name.as_str()) == s.name) {
                    t.calls += 1;
                }
            }
            if let Some(p) = s.process {
                let agent = p.agent.as_ref().map(|a| a.exe.as_deref().unwrap_or(&a.comm));
                match e.clients.iter_mut().find(|c| c.exe == p.exe && c.uid == p.uid && c.comm == p.comm) {
                    Some(c) => {
                        c.last_seen_ms = s.now_ms;
                        c.messages += 1;
                        if c.agent.as_deref() != agent {
                            c.agent = agent.map(str::to_owned);
                        }
                    }
                    None => {
                        if e.clients.len() >= MAX_CLIENTS
                            && let Some(i) = e
                                .clients
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, c)| c.last_seen_ms)
                                .map(|(i, _)| i)
                        {
                            e.clients.remove(i);
                        }
                        e.clients.push(ClientUse {
                            exe: p.exe.clone(),
                            comm: p.comm.clone(),
                            uid: p.uid,
                            user: p.user.clone(),
                            agent: agent.map(str::to_owned),
                            last_seen_ms: s.now_ms,
                            messages: 1,
                        });
                    }
                }
            }
        });
    }

    pub fn set_server_info(&self, endpoint: &str, info: ServerInfoUpdate) {
        self.update(endpoint, |e| {
            if info.name.is_some() {
                e.server_name = info.name;
            }
            if info.version.is_some() {
                e.server_version = info.version;
            }
            if info.protocol_version.is_some() {
                e.protocol_version = info.protocol_version;
            }
            if info.capabilities.is_some() {
                e.capabilities = info.capabilities;
            }
        });
    }

    /// Tools from a `tools/list` result, with trust-on-first-use pinning: the tools of the
    /// first list are pinned; a later different definition is marked changed, with a
    /// diff against the pinned one, and so is a tool that first appears in a later list
    /// (until `mcpwatch pin accept`). Returns the outcome per tool.
    ///
    /// `first_page`: the result answers a `tools/list` without a cursor; `last_page`: it
    /// has no `nextCursor`. Only a first page that is also the last replaces the list:
    /// the pins of tools on later pages must survive a re-listing.
    pub fn observe_tools(&self, endpoint: &str, tools: &[ToolSight], first_page: bool, last_page: bool, now_ms: u64) -> Vec<(String, PinOutcome)> {
        let mut outcomes = Vec::new();
        let mut bytes = 0;
        self.update(endpoint, |e| {
            let old = std::mem::take(&mut e.tools);
            let mut kept: Vec<ToolEntry> = if first_page && last_page { Vec::new() } else { old.clone() };
            for t in tools {
                let prev = old.iter().find(|x| x.name == t.name);
                kept.retain(|x| x.name != t.name);
                if kept.len() >= MAX_TOOLS {
                    outcomes.push((t.name.clone(), PinOutcome::Changed(vec![TOO_MANY_TOOLS_DIFF.to_string()])));
                    continue;
                }
                // A name no call may carry (`jsonrpc::MAX_TARGET_BYTES`) is not kept either.
                if t.name.len() > mcpwatch_mcp::jsonrpc::MAX_TARGET_BYTES {
                    outcomes.push((t.name.clone(), PinOutcome::Changed(vec![LONG_NAME_DIFF.to_string()])));
                    continue;
                }
                let mut entry = prev.cloned().unwrap_or(ToolEntry { name: t.name.clone(), first_seen_ms: now_ms, ..Default::default() });
                entry.hash = t.hash.clone();
                entry.poisoning = t.poisoning.clone();
                let outcome = match (&entry.pinned_hash, &entry.pinned_definition) {
                    (Some(pinned), _) if *pinned == t.hash => {
                        entry.changed = false;
                        entry.diff.clear();
                        PinOutcome::Trusted
                    }
                    (Some(_), old_def) => {
                        let diff: Vec<String> = match old_def {
                            Some(old_def) => mcpwatch_inspect::pin::diff(old_def, &t.def)
                                .into_iter()
                                .map(|c| clipped(format!("{}: {} -> {}", if c.pointer.is_empty() { "…" } else { &c.pointer }, c.before.as_deref().unwrap_or("(absent)"), c.after.as_deref().unwrap_or("(absent)")), 200))
                                .collect(),
                            None => vec!["definition changed (previous definition not kept)".to_string()],
                        };
                        entry.changed = true;
                        entry.diff = diff.clone();
                        PinOutcome::Changed(diff)
                    }
                    // A tool that appears after the server's tools were pinned is not
                    // trusted on first use: new tools are the cheapest rug pull (RP-005).
                    (None, _) if entry.changed || (first_page && prev.is_none() && !old.is_empty()) => {
                        entry.changed = true;
                        entry.diff = vec![NEW_TOOL_DIFF.to_string()];
                        PinOutcome::Changed(entry.diff.clone())
                    }
                    (None, _) => {
                        entry.pinned_hash = Some(t.hash.clone());
                        entry.pinned_definition = (json_bytes(&t.def) <= MAX_KEPT_DEFINITION_BYTES).then(|| std::sync::Arc::new(t.def.clone()));
                        PinOutcome::FirstSeen
                    }
                };
                outcomes.push((t.name.clone(), outcome));
                kept.push(entry);
            }
            e.tools = kept;
            bytes = tools_bytes(&e.tools);
        });
        if let Ok(mut servers) = self.servers.lock() {
            self.set_tool_bytes(endpoint, 0);
            self.make_room(&mut servers, endpoint, bytes);
            if servers.contains_key(endpoint) {
                self.set_tool_bytes(endpoint, bytes);
            }
        }
        outcomes
    }

    /// The command line of a stdio server (already redacted by the caller).
    pub fn set_command(&self, endpoint: &str, command: &[String]) {
        self.update(endpoint, |e| {
            if e.command != command {
                e.command = command.to_vec();
            }
        });
    }

    /// Mark tools hidden from clients (or visible again).
    pub fn set_hidden(&self, endpoint: &str, hidden: &[(String, Option<String>)]) {
        if hidden.is_empty() {
            return;
        }
        self.update(endpoint, |e| {
            for (name, reason) in hidden {
                if let Some(t) = e.tools.iter_mut().find(|t| &t.name == name) {
                    t.hidden = reason.clone();
                }
            }
        });
    }

    /// The server's `serverInfo.name`, if it said.
    pub fn server_name(&self, endpoint: &str) -> Option<String> {
        self.servers.lock().ok()?.get(endpoint)?.server_name.clone()
    }

    pub fn tool(&self, endpoint: &str, name: &str) -> Option<ToolEntry> {
        let mut servers = self.servers.lock().ok()?;
        self.resident(&mut servers, endpoint)?.tools.iter().find(|t| t.name == name).cloned()
    }

    /// Does the server have a tool whose definition changed since it was pinned?
    pub fn has_changed_tools(&self, endpoint: &str) -> bool {
        self.servers.lock().is_ok_and(|mut s| self.resident(&mut s, endpoint).is_some_and(|e| e.tools.iter().any(|t| t.changed)))
    }

    /// Trust the current definitions (`mcpwatch pin accept SERVER [TOOL]`). `server`
    /// matches an endpoint exactly or, failing that, as a unique substring. Returns the
    /// endpoint and the tools accepted.
    pub fn accept_pins(&self, server: &str, tool: Option<&str>) -> Result<(String, Vec<String>), String> {
        let endpoint = {
            let servers = self.servers.lock().map_err(|_| "inventory unavailable".to_string())?;
            if servers.contains_key(server) {
                server.to_string()
            } else {
                let hits: Vec<&String> = servers.keys().filter(|k| k.contains(server)).collect();
                match hits.as_slice() {
                    [one] => (*one).clone(),
                    [] => return Err(format!("no server matches `{server}` (see `mcpwatch list`)")),
                    many => return Err(format!("`{server}` matches {} servers; give the full endpoint", many.len())),
                }
            }
        };
        let mut accepted = Vec::new();
        let mut missing = false;
        self.update(&endpoint, |e| {
            for t in e.tools.iter_mut().filter(|t| tool.is_none_or(|n| n == t.name)) {
                if t.changed || t.pinned_hash.as_deref() != Some(t.hash.as_str()) {
                    accepted.push(t.name.clone());
                }
                t.pinned_hash = Some(t.hash.clone());
                t.changed = false;
                t.diff.clear();
                if t.hidden.as_deref().is_some_and(|h| h.starts_with("definition changed")) {
                    t.hidden = None;
                }
            }
            missing = tool.is_some_and(|n| !e.tools.iter().any(|t| t.name == n));
        });
        if missing {
            return Err(format!("{endpoint} has no tool `{}`", tool.unwrap_or_default()));
        }
        Ok((endpoint, accepted))
    }

    pub fn add_alert(&self, endpoint: &str, alert: String) {
        // Alerts quote what servers sent (tool names, paths): kept at most 1,000
        // characters each, 32 a server.
        let alert = clipped(alert, 1000);
        self.update(endpoint, |e| {
            if e.alerts.last() != Some(&alert) {
                e.alerts.push(alert);
            }
            if e.alerts.len() > 32 {
                let n = e.alerts.len() - 32;
                e.alerts.drain(..n);
            }
        });
    }

    /// Whether `endpoint` is in the policy's registry (`registry`: its entry there) and
    /// its status: `active`, `deprecated` or `deprecated since DATE`. Every message
    /// says it; the entry changes (and is written) only when it does.
    pub fn set_registration(&self, endpoint: &str, registry: Option<&mcpwatch_policy::ServerDef>) {
        let name = registry.map(|s| s.name.as_str());
        let status: Option<std::borrow::Cow<'_, str>> = registry.map(|s| match (&s.status, &s.deprecated_since) {
            (mcpwatch_policy::ServerStatus::Deprecated, Some(d)) => format!("deprecated since {d}").into(),
            (mcpwatch_policy::ServerStatus::Deprecated, None) => "deprecated".into(),
            _ => "active".into(),
        });
        let same = |e: &ServerEntry| e.registered.as_deref() == name && e.status.as_deref() == status.as_deref();
        if self.servers.lock().is_ok_and(|s| s.get(endpoint).is_some_and(same)) {
            return;
        }
        self.update(endpoint, |e| {
            e.registered = name.map(str::to_owned);
            e.status = status.map(std::borrow::Cow::into_owned);
        });
    }

    pub fn set_protocol_version(&self, endpoint: &str, version: &str) {
        // Every answer carries it; the entry changes (and is written) only when it does.
        if self.servers.lock().is_ok_and(|s| s.get(endpoint).is_some_and(|e| e.protocol_version.as_deref() == Some(version))) {
            return;
        }
        self.update(endpoint, |e| {
            if e.protocol_version.as_deref() != Some(version) {
                e.protocol_version = Some(version.to_string());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sight(name: &str, desc: &str) -> ToolSight {
        let def = serde_json::json!({"name": name, "description": desc});
        ToolSight { name: name.into(), hash: mcpwatch_inspect::pin::tool_hash(&def), def, poisoning: None }
    }

    fn inventory(dir: &std::path::Path) -> Inventory {
        Inventory::load(Store::open(dir, mcpwatch_audit::StoreOptions::default()).expect("store"))
    }

    #[test]
    fn registration_is_written_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        let policy = mcpwatch_policy::parse(
            "version = 1\nmode = \"enforce\"\ndefault = \"allow\"\n\n[[server]]\nname = \"live\"\nurl = \"http://a/mcp\"\n\n[[server]]\nname = \"old\"\nurl = \"http://b/mcp\"\nstatus = \"deprecated\"\ndeprecated_since = \"2025-06-30\"\n",
            "t.toml",
        )
        .expect("policy");
        let (live, old) = (&policy.servers()[0], &policy.servers()[1]);
        let entry = |e: &str| inv.list().into_iter().find(|s| s.endpoint == e).map(|s| (s.registered, s.status));
        inv.set_registration("http://a/mcp", Some(live));
        inv.set_registration("http://b/mcp", Some(old));
        inv.set_registration("http://c/mcp", None);
        assert_eq!(entry("http://a/mcp"), Some((Some("live".into()), Some("active".into()))));
        assert_eq!(entry("http://b/mcp"), Some((Some("old".into()), Some("deprecated since 2025-06-30".into()))));
        assert_eq!(entry("http://c/mcp"), Some((None, None)));
        assert_eq!(inv.persist(), 3);
        // The same again changes nothing, so nothing is written.
        inv.set_registration("http://a/mcp", Some(live));
        inv.set_registration("http://b/mcp", Some(old));
        inv.set_registration("http://c/mcp", None);
        assert_eq!(inv.persist(), 0);
        // A server that left the registry is written once more.
        inv.set_registration("http://a/mcp", None);
        assert_eq!(entry("http://a/mcp"), Some((None, None)));
        assert_eq!(inv.persist(), 1);
    }

    #[test]
    fn tools_after_the_first_list_are_not_trusted_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        let e = "http://127.0.0.1:1/mcp";
        assert_eq!(inv.observe_tools(e, &[sight("search", "a")], true, true, 1), vec![("search".into(), PinOutcome::FirstSeen)]);
        let out = inv.observe_tools(e, &[sight("search", "a"), sight("run_shell", "b")], true, true, 2);
        assert_eq!(out[0].1, PinOutcome::Trusted);
        assert!(matches!(&out[1].1, PinOutcome::Changed(d) if d[0] == NEW_TOOL_DIFF), "{out:?}");
        // Still not trusted on the next list, until accepted.
        let out = inv.observe_tools(e, &[sight("search", "a"), sight("run_shell", "b")], true, true, 3);
        assert!(matches!(&out[1].1, PinOutcome::Changed(_)));
        assert!(inv.has_changed_tools(e));
        inv.accept_pins(e, Some("run_shell")).unwrap();
        let out = inv.observe_tools(e, &[sight("search", "a"), sight("run_shell", "b")], true, true, 4);
        assert_eq!(out[1].1, PinOutcome::Trusted);
    }

    /// Memory holds at most MAX_SERVERS entries, but a flood of new endpoints does not
    /// make a pinned server forget its tools: an evicted entry is written to the store and
    /// comes back, pins and changes included, when its server is next judged.
    #[test]
    fn a_flood_of_endpoints_does_not_unpin_a_server() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        let e = "http://127.0.0.1:1/mcp";
        inv.observe_tools(e, &[sight("search", "a")], true, true, 1);
        inv.observe_tools(e, &[sight("search", "a"), sight("run_shell", "b")], true, true, 2);
        assert!(inv.has_changed_tools(e));
        for i in 0..(MAX_SERVERS as u64 + 10) {
            inv.update(&format!("http://127.0.0.1:2/junk{i}"), |s| s.last_seen_ms = 10 + i);
        }
        assert!(inv.len() <= MAX_SERVERS);
        assert!(!inv.servers.lock().unwrap().contains_key(e), "the pinned server was evicted from memory");
        assert!(inv.has_tool_list(e), "its tool list came back from the store");
        assert!(inv.has_changed_tools(e), "and its unaccepted change with it");
        assert!(inv.tool(e, "run_shell").is_some_and(|t| t.changed));
    }

    #[test]
    fn pins_of_later_pages_survive_a_relisting() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        let e = "http://127.0.0.1:1/mcp";
        inv.observe_tools(e, &[sight("a", "1")], true, false, 1);
        assert_eq!(inv.observe_tools(e, &[sight("b", "2")], false, true, 2), vec![("b".into(), PinOutcome::FirstSeen)]);
        // Re-listing: page 1 then page 2, where `b` changed.
        inv.observe_tools(e, &[sight("a", "1")], true, false, 3);
        let out = inv.observe_tools(e, &[sight("b", "CHANGED")], false, true, 4);
        assert!(matches!(&out[0].1, PinOutcome::Changed(_)), "a change on page 2 went unnoticed: {out:?}");
    }

    /// A server's tools are the server's to choose, paged without end: past
    /// [`MAX_TOOLS`] a tool is not pinned but treated as changed (hidden in enforce mode),
    /// and a large definition is pinned by its hash alone.
    #[test]
    fn one_server_keeps_at_most_max_tools_and_small_definitions() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        let e = "http://127.0.0.1:1/mcp";
        let page = |from: usize| (from..from + 100).map(|i| sight(&format!("t{i}"), "d")).collect::<Vec<_>>();
        let mut outcomes = inv.observe_tools(e, &page(0), true, false, 1);
        for p in 1..11 {
            outcomes.extend(inv.observe_tools(e, &page(p * 100), false, p == 10, 1));
        }
        assert_eq!(outcomes.iter().filter(|(_, o)| *o == PinOutcome::FirstSeen).count(), MAX_TOOLS);
        let refused: Vec<_> = outcomes.iter().filter(|(_, o)| matches!(o, PinOutcome::Changed(d) if d[0] == TOO_MANY_TOOLS_DIFF)).collect();
        assert_eq!(refused.len(), 1100 - MAX_TOOLS, "every tool past the bound is untrusted");
        assert!(inv.tool(e, "t1099").is_none() && inv.tool(e, "t0").is_some());
        // A tool already kept is judged as before (its pin compared), bound or not.
        let again = inv.observe_tools(e, &[sight("t0", "CHANGED")], false, false, 2);
        assert!(matches!(&again[0].1, PinOutcome::Changed(d) if d[0] != TOO_MANY_TOOLS_DIFF), "{again:?}");
        let big = sight("big", &"x".repeat(MAX_KEPT_DEFINITION_BYTES));
        let e2 = "http://127.0.0.1:2/mcp";
        assert_eq!(inv.observe_tools(e2, &[big], true, true, 3)[0].1, PinOutcome::FirstSeen);
        let kept = inv.tool(e2, "big").expect("pinned");
        assert!(kept.pinned_hash.is_some() && kept.pinned_definition.is_none(), "pinned by hash alone");
        let long = "n".repeat(mcpwatch_mcp::jsonrpc::MAX_TARGET_BYTES + 1);
        let out = inv.observe_tools(e2, &[sight(&long, "d")], false, true, 4);
        assert_eq!(out[0].1, PinOutcome::Changed(vec![LONG_NAME_DIFF.to_string()]));
        assert!(inv.tool(e2, &long).is_none(), "a name no call may carry is not kept");
    }

    /// The tools held in memory for all servers together are bounded: past
    /// [`MAX_TOOL_BYTES_IN_MEMORY`] the least recently seen servers go to the store, and
    /// come back with their pins when judged again.
    #[test]
    fn tools_in_memory_are_bounded_and_evicted_pins_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        // ~1 MiB of tools a server (definitions just under the kept size).
        let tools: Vec<ToolSight> = (0..70).map(|i| sight(&format!("t{i}"), &"x".repeat(MAX_KEPT_DEFINITION_BYTES - 100))).collect();
        let servers = 2 * MAX_TOOL_BYTES_IN_MEMORY / (1 << 20);
        for i in 0..servers {
            let endpoint = format!("http://127.0.0.1:{}/mcp", 1000 + i);
            inv.saw_message(&Sighting { endpoint: &endpoint, dst: "127.0.0.1:9", transport: "streamable-http", process: None, method: None, name: None, now_ms: 10 + i as u64 });
            inv.observe_tools(&endpoint, &tools, true, true, 10 + i as u64);
        }
        let held = inv.tool_bytes.lock().unwrap().total;
        assert!(held <= MAX_TOOL_BYTES_IN_MEMORY, "{held} bytes of tools held");
        assert!(inv.len() < servers, "servers were evicted: {}", inv.len());
        let first = "http://127.0.0.1:1000/mcp";
        assert!(!inv.contains(first), "the least recently seen went first");
        let t = inv.tool(first, "t3").expect("read back from the store");
        assert!(t.pinned_hash.is_some() && t.pinned_definition.is_some());
        assert!(inv.tool_bytes.lock().unwrap().total <= MAX_TOOL_BYTES_IN_MEMORY);
        // The sum matches what is resident.
        let resident: usize = inv.list().iter().map(|e| tools_bytes(&e.tools)).sum();
        assert_eq!(inv.tool_bytes.lock().unwrap().total, resident);
        // After a restart memory takes the most recent within the same bounds.
        inv.persist();
        drop(inv);
        let inv = inventory(dir.path());
        assert!(inv.tool_bytes.lock().unwrap().total <= MAX_TOOL_BYTES_IN_MEMORY);
        assert!(inv.contains(&format!("http://127.0.0.1:{}/mcp", 1000 + servers - 1)));
        assert!(inv.tool(first, "t3").is_some_and(|t| t.pinned_hash.is_some()));
    }

    #[test]
    fn destinations_are_remembered_by_address_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        inv.saw_message(&Sighting { endpoint: "http://evil.example:80/mcp", dst: "127.0.0.1:80", transport: "streamable-http", process: None, method: None, name: None, now_ms: 1 });
        assert!(inv.knows_dst("127.0.0.1:80") && inv.knows_dst_path("127.0.0.1:80", "/mcp"));
        assert!(!inv.knows_dst_path("127.0.0.1:80", "/other") && !inv.knows_dst("127.0.0.1:81"));
    }

    /// A flood of new destinations pushes a shadow server out of memory (its entry to the
    /// store, its address out of the index), but its address is still an MCP destination:
    /// governed, so what cannot be inspected toward it is not relayed unrecorded.
    #[test]
    fn a_flood_of_destinations_does_not_make_an_mcp_address_unseen() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        let at = |endpoint: &str, dst: &str, now_ms: u64| {
            inv.saw_message(&Sighting { endpoint, dst, transport: "streamable-http", process: None, method: Some("tools/call"), name: None, now_ms });
        };
        at("https://shadow.example:443/mcp", "10.9.9.9:443", 1);
        assert_eq!(inv.endpoints_at("10.9.9.9:443").len(), 1);
        assert!(!inv.dst_forgotten("10.9.9.9:443"));
        for i in 0..(MAX_SERVERS as u64 + 10) {
            let dst = format!("127.0.{}.{}:8001", i / 250, 1 + i % 250);
            at(&format!("http://{dst}/p{i}"), &dst, 10 + i);
        }
        assert!(inv.endpoints_at("10.9.9.9:443").is_empty(), "pushed out of memory");
        assert!(inv.dst_forgotten("10.9.9.9:443") && inv.knows_dst("10.9.9.9:443") && inv.knows_dst_path("10.9.9.9:443", "/mcp"));
        let unseen = (0..50).filter(|i| inv.knows_dst(&format!("198.51.100.{i}:443"))).count();
        assert_eq!(unseen, 0, "addresses that never spoke MCP stay unknown");
    }
}
