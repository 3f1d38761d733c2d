//! Inventory: every MCP server seen, keyed by endpoint.

use serde::{Deserialize, Serialize};

/// Where an MCP server lives: `scheme://host:port/path`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Endpoint {
    /// The canonical key, e.g. `http://127.0.0.2:8765/mcp`. IPv6 hosts are bracketed.
    pub fn key(&self) -> String {
        Endpoint::key_of(&self.scheme, &self.host, self.port, &self.path)
    }

    /// [`Endpoint::key`] of the parts, without building an `Endpoint` (every proxied
    /// request names its endpoint this way: one allocation).
    pub fn key_of(scheme: &str, host: &str, port: u16, path: &str) -> String {
        use std::fmt::Write as _;
        let bracket = host.contains(':') && !host.starts_with('[');
        let mut k = String::with_capacity(scheme.len() + host.len() + path.len() + 11);
        k.push_str(scheme);
        k.push_str("://");
        if bracket {
            k.push('[');
        }
        k.push_str(host);
        if bracket {
            k.push(']');
        }
        let _ = write!(k, ":{port}");
        k.push_str(path);
        k
    }

    /// The inverse of [`Endpoint::key`]: `scheme://host:port[/path]` with the IPv6 host's
    /// brackets removed (`key()` adds them back) and the path as written (empty when absent:
    /// connection keys have none). `None` without a scheme, a port, or with a port that is
    /// not a number.
    pub fn parse(key: &str) -> Option<Endpoint> {
        let (scheme, rest) = key.split_once("://")?;
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
        let (host, port) = authority.rsplit_once(':').filter(|(_, p)| !p.contains(']'))?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        Some(Endpoint { scheme: scheme.into(), host: host.into(), port: port.parse().ok()?, path: path.into() })
    }

    /// The path for policy matching: `/` when the key has none.
    pub fn path_or_root(&self) -> &str {
        if self.path.is_empty() {
            "/"
        } else {
            &self.path
        }
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::Endpoint;

    #[test]
    fn parse_is_the_inverse_of_key() {
        for key in ["http://127.0.0.2:8765/mcp", "https://[::1]:443/", "https://h:1", "http://[fe80::1]:80/a/b?c"] {
            let e = Endpoint::parse(key).unwrap_or_else(|| panic!("{key}"));
            assert_eq!(e.key(), key);
        }
        let e = Endpoint::parse("https://[::1]:443/").expect("v6");
        assert_eq!((e.host.as_str(), e.port, e.path_or_root()), ("::1", 443, "/"));
        assert_eq!(Endpoint::parse("https://h:1").expect("no path").path_or_root(), "/");
        for bad in ["nonsense", "http://h/mcp", "http://h:x/mcp", "http://[::1]/mcp", "http://h:99999/"] {
            assert_eq!(Endpoint::parse(bad), None, "{bad}");
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ServerEntry {
    /// `Endpoint::key()`.
    pub endpoint: String,
    /// Original destination `ip:port`.
    pub dst: String,
    /// `streamable-http` or `sse`.
    pub transport: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub server_name: Option<String>,
    pub server_version: Option<String>,
    pub protocol_version: Option<String>,
    pub capabilities: Option<serde_json::Value>,
    pub tools: Vec<ToolEntry>,
    /// Requests and notifications sent to this server.
    pub message_count: u64,
    /// `tools/call` requests.
    pub call_count: u64,
    pub clients: Vec<ClientUse>,
    /// Name of the matching `[[server]]` in the policy; `None` = shadow server.
    #[serde(default)]
    pub registered: Option<String>,
    /// `active` or `deprecated since DATE` (from the policy registry).
    #[serde(default)]
    pub status: Option<String>,
    /// Alerts about this server (poisoned tools, changed pins), newest last, bounded.
    #[serde(default)]
    pub alerts: Vec<String>,
    /// Stdio servers: the command line that runs the server (redacted per
    /// `[audit] cmdline`). Empty for network servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The server's `instructions` (from initialize), for review.
    #[serde(default)]
    pub instructions_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ToolEntry {
    pub name: String,
    /// sha256 (hex) of the tool definition's canonical JSON.
    pub hash: String,
    pub first_seen_ms: u64,
    pub calls: u64,
    /// Hash accepted as trusted (first sight, registry, or `mcpwatch pin accept`).
    #[serde(default)]
    pub pinned_hash: Option<String>,
    /// The current definition differs from the pinned one.
    #[serde(default)]
    pub changed: bool,
    /// What changed, human-readable (bounded).
    #[serde(default)]
    pub diff: Vec<String>,
    /// Tool-poisoning severity (`low`, `medium`, `high`) when signals were found.
    #[serde(default)]
    pub poisoning: Option<String>,
    /// Why the tool is hidden from clients, if it is.
    #[serde(default)]
    pub hidden: Option<String>,
    /// The pinned definition (for diffs when it changes). Shared, not copied: every
    /// `tools/call` looks its tool up (flags, pin, flow labels) twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_definition: Option<std::sync::Arc<serde_json::Value>>,
    /// Toxic-flow labels and where each came from, e.g. `public_sink (heuristic)`.
    /// Filled in by the daemon when it answers `mcpwatch list` (the policy may change).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ClientUse {
    pub exe: Option<String>,
    pub comm: String,
    pub uid: u32,
    pub user: Option<String>,
    /// The agent the process is attributed to (see `ProcessInfo::agent`).
    pub agent: Option<String>,
    pub last_seen_ms: u64,
    pub messages: u64,
}
