//! Wire types shared by `mcpwatchd` and the `mcpwatch` CLI.
//!
//! Why a separate crate: the CLI must never compile the daemon (aya, sled, hyper), yet
//! both sides must agree byte-for-byte on what travels over the control socket and on
//! what an audit record or inventory entry looks like. Everything here is plain serde
//! data; no I/O, no behaviour beyond small helpers.
//!
//! The control protocol is newline-delimited JSON over a Unix socket: the client sends
//! one [`Request`] line, the daemon answers with one [`Response`] line (or, for
//! [`Request::AuditFollow`], a stream of [`Response::Record`] lines until the client
//! hangs up).

use serde::{Deserialize, Serialize};

pub mod audit;
pub mod decision;
pub mod gate;
pub mod inventory;
pub mod process;
pub mod verify;

pub use audit::{
    AuditFilter, AuditRecord, CallStatus, DecisionView, FindingCount, FlowView, MessageKind, TlsDetails, AUDIT_SCHEMA_VERSION,
};
pub use decision::{ActionKind, Effect, Mode, DECISION_WORDS};
pub use inventory::{ClientUse, Endpoint, ServerEntry, ToolEntry};
pub use process::{Ancestor, ProcessInfo};
pub use verify::{AuditProblem, AuditVerify};

/// Default path of the control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/mcpwatch/control.sock";

/// The control socket's framing, in one place: one JSON object per line, each way.
/// Requests are at most [`MAX_REQUEST_LINE`] bytes; a response line (an audit query can
/// be large) at most [`MAX_RESPONSE_LINE`].
pub mod wire {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    pub const MAX_REQUEST_LINE: usize = 64 * 1024;
    pub const MAX_RESPONSE_LINE: u64 = 256 * 1024 * 1024;

    /// One message as a line (JSON + `\n`).
    pub fn encode<T: Serialize>(msg: &T) -> serde_json::Result<Vec<u8>> {
        let mut line = serde_json::to_vec(msg)?;
        line.push(b'\n');
        Ok(line)
    }

    /// One line (with or without its `\n`) back into a message.
    pub fn decode<T: DeserializeOwned>(line: &[u8]) -> serde_json::Result<T> {
        serde_json::from_slice(line.strip_suffix(b"\n").unwrap_or(line))
    }
}
/// Default state directory (audit store, CA).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mcpwatch";

/// One request line from the CLI to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    List,
    Audit { filter: AuditFilter },
    /// Like `Audit`, then keeps the connection open and streams new and completed records.
    AuditFollow { filter: AuditFilter },
    /// Calls held for approval.
    Pending,
    /// Let a held call through (single use).
    Approve { id: String },
    /// Refuse a held call.
    Deny { id: String, reason: Option<String> },
    /// Re-read the policy file; a broken file leaves the current policy in force.
    PolicyReload,
    /// Trust the current definition of a server's tools (all, or one).
    PinAccept { server: String, tool: Option<String> },
    /// Check every audit record against the store's hash chain.
    AuditVerify,
    /// Make a new local CA sign every new leaf; the current one stays trusted (in the bundle)
    /// until withdrawn. Judged like `approve` (never from inside the watched cgroup).
    CaRotate,
    /// Withdraw every retired CA: delete it and drop it from the bundle.
    CaWithdraw,
}

/// One response line from the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    List { servers: Vec<ServerEntry> },
    /// The answer to `Audit` (the last part of it, when it came in parts).
    Audit { records: Vec<AuditRecord> },
    /// One part of a large `Audit` answer: more parts follow, then `Audit` with the last
    /// records. Keeps every line bounded however many records match.
    AuditPart { records: Vec<AuditRecord> },
    Record { record: AuditRecord },
    Pending { calls: Vec<HeldCall> },
    Done { message: String },
    Error { message: String },
    Verify(AuditVerify),
    /// The answer to `CaRotate` / `CaWithdraw`.
    Ca(CaChange),
}

/// One CA certificate, as status lines show it (never a key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CaCert {
    /// Colon hex SHA-256 of the DER.
    pub fingerprint_sha256: String,
    pub subject: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

/// A previous CA still trusted (in the bundle) until withdrawn.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RetiredCaCert {
    pub cert: CaCert,
    pub retired_at_unix: i64,
    /// Why it was retired, in words.
    pub reason: String,
    /// When the daemon withdraws it by itself (`[tls] rotation_overlap_days`); `None`: only
    /// `mcpwatch ca withdraw` does.
    pub withdraw_after_unix: Option<i64>,
}

/// The local CA as the daemon holds it: the one signing now, the retired ones still trusted,
/// and what it may sign.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CaStatus {
    pub current: CaCert,
    pub retired: Vec<RetiredCaCert>,
    /// The NameConstraints the current CA carries, in words.
    pub name_constraints: String,
    /// Why the CA carries none, when it carries none.
    #[serde(default)]
    pub unconstrained_reason: Option<String>,
    /// `<state>/ca/bundle.pem`: every trusted mcpwatch CA, what `ca install` publishes.
    pub bundle_path: String,
}

/// What a rotation or withdrawal changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CaChange {
    pub status: CaStatus,
    /// The trust bundle now (certificates only, PEM): to publish where `ca install` did.
    pub bundle_pem: String,
    /// Certificates just withdrawn (PEM): must leave every trust store.
    pub withdrawn_pem: Vec<String>,
    pub message: String,
}

/// A call waiting for a human decision, as `mcpwatch pending` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct HeldCall {
    pub id: String,
    pub held_since_ms: u64,
    pub expires_ms: u64,
    pub process: Option<ProcessInfo>,
    /// The policy agent the process matched, if any.
    pub agent: Option<String>,
    pub server: String,
    pub method: String,
    pub tool: Option<String>,
    /// Arguments with secrets and PII masked.
    pub arguments: Option<serde_json::Value>,
    pub args_hash: Option<String>,
    pub rules: Vec<String>,
    pub reason: String,
}

/// What the daemon does when it cannot do its job (internal error, audit write failure,
/// daemon gone while programs stay attached).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Traffic flows unobserved rather than breaking the agent (the default).
    #[default]
    Open,
    /// Traffic is refused rather than flowing unobserved.
    Closed,
}

impl std::fmt::Display for FailureMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureMode::Open => "open",
            FailureMode::Closed => "closed",
        })
    }
}

/// `mcpwatch status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub failure_mode: FailureMode,
    /// Audit records are flushed to disk before their request is forwarded.
    #[serde(default)]
    pub audit_sync: bool,
    /// How a record reaches disk, in words (`mcpwatch status` prints it): every record is
    /// in the kernel (journal write) before its call is forwarded; this says when it is
    /// on disk. `None` from daemons older than the journal.
    #[serde(default)]
    pub audit_durability: Option<String>,
    /// Whether the eBPF programs are attached, and where.
    pub attached: bool,
    pub cgroup: Option<String>,
    /// Why interception is not attached, when it is not.
    pub attach_error: Option<String>,
    /// Where the eBPF links are pinned, when they are (fail-closed mode): they stay
    /// attached while mcpwatchd is down, so in-scope connections are refused.
    #[serde(default)]
    pub pinned_at: Option<String>,
    pub ports: String,
    pub listen: Vec<String>,
    pub control_socket: String,
    pub state_dir: String,
    pub counts: Counts,
    /// The policy in force: file path or `<embedded default policy>`.
    #[serde(default)]
    pub policy: Option<String>,
    /// The last policy reload that was rejected (the previous policy stayed in force).
    #[serde(default)]
    pub policy_error: Option<String>,
    #[serde(default)]
    pub held_calls: u64,
    /// Human-readable warnings an operator should see (e.g. clients that distrust the CA).
    pub warnings: Vec<String>,
    /// Which share of the MCP tool calls mcpwatch saw went through a governed path.
    #[serde(default)]
    pub coverage: Option<Coverage>,
    /// The local CA (current, retired, constraints); `None` without TLS interception.
    #[serde(default)]
    pub ca: Option<CaStatus>,
}

/// The coverage metric: of the `tools/call`s seen on this host, how many went through a
/// governed path (the network proxy, or `mcpwatch wrap`), and how many mcpwatch could only
/// observe (stdio servers seen from the kernel, not wrapped). Calls mcpwatch never saw
/// (stdio observation off, unwatched processes) are by nature not counted: `mcpwatch list`
/// shows the servers configured but never seen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Coverage {
    pub calls_seen: u64,
    pub calls_governed: u64,
    pub calls_observed_only: u64,
    /// `calls_governed / calls_seen` in percent; `None` before the first call.
    pub governed_percent: Option<f64>,
}

impl Coverage {
    /// From the total calls seen and those only observed (clamped: never more than all).
    pub fn from_counts(calls_seen: u64, observed_only: u64) -> Coverage {
        let observed = observed_only.min(calls_seen);
        let governed = calls_seen - observed;
        Coverage {
            calls_seen,
            calls_governed: governed,
            calls_observed_only: observed,
            // Counts stay far below 2^52: the conversion is exact.
            #[allow(clippy::cast_precision_loss)]
            governed_percent: (calls_seen > 0).then(|| governed as f64 * 100.0 / calls_seen as f64),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Counts {
    pub connections: u64,
    pub connections_unresolved: u64,
    pub http_requests: u64,
    pub mcp_messages: u64,
    pub passthrough: u64,
    pub audit_records: u64,
    pub audit_write_errors: u64,
    /// Records the store's record or size budget removed while less than 24 h old.
    #[serde(default)]
    pub audit_pruned_young: u64,
    pub servers: u64,
    /// Connections accepted and closed at once because `limits.max_connections` was reached.
    #[serde(default)]
    pub refused_global: u64,
    /// Connections closed because their process held `limits.max_connections_per_process`.
    #[serde(default)]
    pub refused_process: u64,
    /// Connections closed because their uid held `limits.max_connections_per_uid`.
    #[serde(default)]
    pub refused_uid: u64,
    /// Connections closed without any decisive first bytes (`limits.peek_timeout_ms`).
    #[serde(default)]
    pub closed_silent: u64,
    /// Relayed connections closed after `limits.idle_timeout_ms` without traffic.
    #[serde(default)]
    pub closed_idle: u64,
    /// Idle upstream HTTP/1.1 connections kept for the same process's next connection to
    /// the same destination (`limits.upstream_keepalive_ms`).
    #[serde(default)]
    pub upstream_kept: u64,
    /// Client connections served over such a kept upstream connection.
    #[serde(default)]
    pub upstream_reused: u64,
    /// Non-HTTP connections refused toward governed destinations in enforce mode.
    #[serde(default)]
    pub refused_protocol: u64,
    /// TLS clients rejecting the mcpwatch CA, refused toward enforce-mode destinations.
    #[serde(default)]
    pub tls_distrust_refused: u64,
    /// HTTP/2 client connections (governed like HTTP/1.1).
    #[serde(default)]
    pub http2_connections: u64,
    /// UDP connects and sends (QUIC, HTTP/3) refused toward in-scope ports (`[scope] udp`).
    #[serde(default)]
    pub udp_refused: u64,
}
