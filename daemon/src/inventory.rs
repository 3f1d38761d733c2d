//! The inventory: every MCP server seen, what it offers, and who uses it.
//!
//! Kept in memory for `mcpwatch list` and written through to the audit store on every
//! change, so it survives restarts. Bounded: at most [`MAX_SERVERS`] servers and
//! [`MAX_CLIENTS`] client processes per server (least recently seen evicted).

use std::collections::HashMap;
use std::sync::Mutex;

use mcpwatch_api::{ClientUse, ProcessInfo, ServerEntry, ToolEntry};
use mcpwatch_audit::Store;

pub const MAX_SERVERS: usize = 10_000;
pub const MAX_CLIENTS: usize = 64;

pub struct Inventory {
    servers: Mutex<HashMap<String, ServerEntry>>,
    store: Store,
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

/// Server identity from `initialize` or `server/discover`.
#[derive(Debug, Default, Clone)]
pub struct ServerInfoUpdate {
    pub name: Option<String>,
    pub version: Option<String>,
    pub protocol_version: Option<String>,
    pub capabilities: Option<serde_json::Value>,
}

impl Inventory {
    pub fn load(store: Store) -> Inventory {
        let servers = match store.servers() {
            Ok(list) => list.into_iter().map(|s| (s.endpoint.clone(), s)).collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot load inventory from the store; starting empty");
                HashMap::new()
            }
        };
        Inventory { servers: Mutex::new(servers), store }
    }

    pub fn len(&self) -> usize {
        self.servers.lock().map_or(0, |s| s.len())
    }

    pub fn contains(&self, endpoint: &str) -> bool {
        self.servers.lock().is_ok_and(|s| s.contains_key(endpoint))
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
        let Ok(mut servers) = self.servers.lock() else { return };
        if !servers.contains_key(endpoint) && servers.len() >= MAX_SERVERS {
            if let Some(oldest) =
                servers.values().min_by_key(|s| s.last_seen_ms).map(|s| s.endpoint.clone())
            {
                servers.remove(&oldest);
            }
        }
        let entry = servers.entry(endpoint.to_string()).or_insert_with(|| ServerEntry {
            endpoint: endpoint.to_string(),
            ..Default::default()
        });
        f(entry);
        if let Err(e) = self.store.put_server(entry) {
            tracing::error!(error = %e, endpoint, "cannot persist inventory entry");
        }
    }

    /// A client sent a message to this server.
    pub fn saw_message(&self, s: &Sighting<'_>) {
        self.update(s.endpoint, |e| {
            if e.first_seen_ms == 0 {
                e.first_seen_ms = s.now_ms;
            }
            e.last_seen_ms = s.now_ms;
            e.dst = s.dst.to_string();
            e.transport = s.transport.to_string();
            e.message_count += 1;
            if s.method == Some("tools/call") {
                e.call_count += 1;
                if let Some(t) = e.tools.iter_mut().find(|t| Some(t.name.as_str()) == s.name) {
                    t.calls += 1;
                }
            }
            if let Some(p) = s.process {
                let agent = p.agent.as_ref().map(|a| a.exe.clone().unwrap_or_else(|| a.comm.clone()));
                match e.clients.iter_mut().find(|c| c.exe == p.exe && c.uid == p.uid && c.comm == p.comm) {
                    Some(c) => {
                        c.last_seen_ms = s.now_ms;
                        c.messages += 1;
                        c.agent = agent;
                    }
                    None => {
                        if e.clients.len() >= MAX_CLIENTS {
                            if let Some(i) = e
                                .clients
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, c)| c.last_seen_ms)
                                .map(|(i, _)| i)
                            {
                                e.clients.remove(i);
                            }
                        }
                        e.clients.push(ClientUse {
                            exe: p.exe.clone(),
                            comm: p.comm.clone(),
                            uid: p.uid,
                            user: p.user.clone(),
                            agent,
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

    /// Tools from a `tools/list` result (one page). Keeps first-seen times and call counts.
    pub fn set_tools(&self, endpoint: &str, tools: &[(String, String)], first_page: bool, now_ms: u64) {
        self.update(endpoint, |e| {
            let old = std::mem::take(&mut e.tools);
            let mut kept: Vec<ToolEntry> = if first_page { Vec::new() } else { old.clone() };
            for (name, hash) in tools {
                let prev = old.iter().find(|t| &t.name == name);
                kept.retain(|t| &t.name != name);
                kept.push(ToolEntry {
                    name: name.clone(),
                    hash: hash.clone(),
                    first_seen_ms: prev.map_or(now_ms, |p| p.first_seen_ms),
                    calls: prev.map_or(0, |p| p.calls),
                });
            }
            e.tools = kept;
        });
    }

    pub fn set_protocol_version(&self, endpoint: &str, version: &str) {
        self.update(endpoint, |e| {
            if e.protocol_version.as_deref() != Some(version) {
                e.protocol_version = Some(version.to_string());
            }
        });
    }
}
