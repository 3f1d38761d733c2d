//! Audit records: one per MCP request/response pair and per notification.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::decision::{ActionKind, Effect, Mode};
use crate::ProcessInfo;

/// Bump when a field changes meaning; readers keep accepting older versions.
pub const AUDIT_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AuditRecord {
    pub schema: u32,
    /// Store key, monotonic: sortable by time.
    pub id: String,
    /// Milliseconds since the Unix epoch when the message was seen.
    pub ts_ms: u64,
    /// Set when the response ended (or the transport failed).
    pub duration_us: Option<u64>,
    /// The client process, shared: every record of a connection (or stdio session) points
    /// at the one description made when it was resolved, instead of a copy each.
    pub process: Option<Arc<ProcessInfo>>,
    /// Original destination `ip:port` the client dialled.
    pub dst: String,
    /// HTTP Host header (or TLS SNI).
    pub host: Option<String>,
    /// `http` or `https`.
    pub scheme: String,
    /// HTTP method and path of the carrying request.
    pub http_method: String,
    pub path: String,
    /// Endpoint key of the server in the inventory.
    pub server: String,
    /// `streamable-http` or `sse` (legacy HTTP+SSE).
    pub transport: String,
    pub session_id: Option<String>,
    pub protocol_version: Option<String>,
    pub kind: MessageKind,
    /// Which way the message went: `client->server` or `server->client`.
    pub direction: String,
    pub method: Option<String>,
    /// JSON-RPC id, rendered as JSON text (`1`, `"abc"`).
    pub jsonrpc_id: Option<String>,
    /// Tool, resource URI or prompt name the message is about.
    pub name: Option<String>,
    /// sha256 (hex) of the canonical JSON of `params.arguments` (or params).
    pub args_hash: Option<String>,
    /// sha256 (hex) of the canonical JSON of `result`.
    pub result_hash: Option<String>,
    pub status: CallStatus,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Free-form remarks (e.g. "batch of 3", "body not valid UTF-8").
    pub notes: Vec<String>,
    /// What the policy decided for this message (requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionView>,
    /// Detector hits in either direction: ids and counts only, never the values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<FindingCount>,
    /// Alerts raised for this message (shadow server, poisoned tool, changed pin, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<String>,
    /// TLS details when the connection was HTTPS (terminated by mcpwatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsDetails>,
    /// Toxic-flow state of the agent's session when this call was judged (tools/call only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowView>,
    /// Name of the host whose daemon wrote the record (stamped when the record is begun).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Stable id of that host: 32 hex digits, sha256 of `mcpwatch host id:` + `/etc/machine-id`
    /// (the machine id itself is never recorded), else a random id kept in the state dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
}

/// A call's place in its session's taint (docs/policy.md, "Toxic flows").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct FlowView {
    /// The session key: `ENDPOINT#MCP-SESSION-ID`, or `ENDPOINT#proc:TGID:COMM` without one.
    pub session: String,
    /// Labels of this call (`private_data`, `untrusted_content`, `public_sink`, `destructive`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Untrusted content had entered the session before this call.
    pub tainted: bool,
    /// Audit record ids of the calls whose results (or arguments) tainted the session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tainted_by: Vec<String>,
    /// This call's own result tainted the session.
    #[serde(default)]
    pub taints: bool,
}

/// A policy decision as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct DecisionView {
    /// `allow`, `deny`, `require_approval`, `rate_limit`.
    pub action: ActionKind,
    /// What happened: `forward`, `block`, `hold`.
    pub effective: Effect,
    /// `audit`, `warn`, `enforce`.
    pub mode: Mode,
    /// Ids of the rules that decided (built-ins: `agent:NAME`, `policy:shadow`, ...).
    pub rules: Vec<String>,
    pub reason: String,
    /// The server is not in the policy's registry.
    #[serde(default)]
    pub shadow: bool,
    /// For held calls: how the approval ended (`approved by uid 0`, `denied`, `timed out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

/// How often a detector fired on a message, and what was done.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct FindingCount {
    pub detector: String,
    /// `request` (arguments) or `response` (result).
    pub direction: String,
    pub count: u32,
    /// `audit` (detected only), `redact`, `block`.
    pub action: String,
}

/// What mcpwatch saw of an intercepted TLS connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TlsDetails {
    /// SNI the client sent.
    pub sni: Option<String>,
    /// Negotiated versions, e.g. `TLSv1_3`.
    pub client_version: Option<String>,
    pub upstream_version: Option<String>,
    pub alpn: Option<String>,
    pub upstream_subject: Option<String>,
    pub upstream_issuer: Option<String>,
    /// sha256 of the upstream leaf certificate (colon hex).
    pub upstream_fingerprint: Option<String>,
    /// The upstream certificate was NOT verified (explicit per-host override).
    #[serde(default)]
    pub insecure: bool,
    /// The upstream TLS session was resumed: the certificate above was verified by the
    /// full handshake it descends from (`[tls] upstream_resumption_secs` bounds how long ago).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    #[default]
    Request,
    Notification,
    /// A body that claimed to be JSON-RPC but was not (parse error, invalid UTF-8,
    /// truncated): recorded so nothing goes unseen.
    Invalid,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CallStatus {
    /// Forwarded; no response yet.
    #[default]
    Pending,
    Ok,
    /// Notifications have no response; accepted by the transport.
    Sent,
    JsonrpcError { code: i64, message: String },
    TransportError { reason: String },
}

impl CallStatus {
    pub fn label(&self) -> String {
        match self {
            CallStatus::Pending => "pending".into(),
            CallStatus::Ok => "ok".into(),
            CallStatus::Sent => "sent".into(),
            CallStatus::JsonrpcError { code, .. } => format!("error {code}"),
            CallStatus::TransportError { .. } => "transport-error".into(),
        }
    }
}

/// Which records `mcpwatch audit` wants. All set fields must match.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AuditFilter {
    /// Only records at or after this time (ms since epoch).
    pub since_ms: Option<u64>,
    /// Substring of the record's server endpoint or host.
    pub server: Option<String>,
    /// Exact tool/resource/prompt name.
    pub tool: Option<String>,
    /// At most this many records (the newest), in time order.
    pub limit: Option<usize>,
    /// Policy action (`deny`, `allow`, `require_approval`, `rate_limit`) or effect
    /// (`block`, `forward`, `hold`).
    #[serde(default)]
    pub decision: Option<String>,
    /// Records of one session: the MCP session id (exact) or a flow session key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl AuditFilter {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        if let Some(since) = self.since_ms
            && r.ts_ms < since
        {
            return false;
        }
        if let Some(s) = &self.server {
            let host_hit = r.host.as_deref().is_some_and(|h| h.contains(s.as_str()));
            if !r.server.contains(s.as_str()) && !host_hit {
                return false;
            }
        }
        if let Some(t) = &self.tool
            && r.name.as_deref() != Some(t.as_str())
        {
            return false;
        }
        if let Some(d) = &self.decision {
            let hit = r.decision.as_ref().is_some_and(|x| x.action.as_str() == d || x.effective.as_str() == d);
            if !hit {
                return false;
            }
        }
        if let Some(s) = &self.session {
            let hit = r.session_id.as_deref() == Some(s.as_str()) || r.flow.as_ref().is_some_and(|f| &f.session == s);
            if !hit {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_filter_matches_the_mcp_session_or_the_flow_key() {
        let by_id = AuditRecord { session_id: Some("abc".into()), ..Default::default() };
        let by_flow = AuditRecord { flow: Some(FlowView { session: "http://h/mcp#proc:1:x".into(), ..Default::default() }), ..Default::default() };
        let other = AuditRecord { session_id: Some("zzz".into()), ..Default::default() };
        let f = |s: &str| AuditFilter { session: Some(s.into()), ..Default::default() };
        assert!(f("abc").matches(&by_id) && !f("abc").matches(&other) && !f("abc").matches(&by_flow));
        assert!(f("http://h/mcp#proc:1:x").matches(&by_flow) && !f("http://h/mcp#proc:1:x").matches(&by_id));
        // Records written before the field existed still decode.
        let old: AuditRecord = serde_json::from_str(&serde_json::to_string(&by_id).unwrap().replace(",\"flow\":null", "")).unwrap();
        assert_eq!(old.flow, None);
    }
}
