//! The govern stage: what mcpwatch decides about one MCP message, whatever carried it.
//!
//! Why one module: the proxy (HTTP, SSE, TLS) and the gate (`mcpwatch wrap`, stdio)
//! must judge a message the same way, or an agent picks the transport whose copy of the
//! checks is weaker. Everything here takes a [`Site`] (which server, which client
//! process, which toxic-flow session) and a [`Judge`] (the loaded policy and the few
//! pieces of daemon state a judgment reads: governance counters, inventory, approvals),
//! never a connection, an HTTP request or `Shared`. The transports parse and forward;
//! this module decides, and writes its decision into the audit record it is handed.
//!
//! - [`request`]: policy, rate limits, call-time pinning, argument inspection and
//!   toxic flows for a client request → [`Fate`].
//! - [`hold`]: a `require_approval` call waits for a human.
//! - [`result`]: tool pinning and poisoning on `tools/list`, instruction scans,
//!   result inspection and session taint for a server's answer.
//! - [`answer`]: the client's answer to a server's request (sampling, elicitation,
//!   roots) is inspected as arguments are: it is data leaving for the server too.

mod answer;
pub mod flows;
mod hold;
mod request;
mod result;

use mcpwatch_api::{AuditRecord, FindingCount, ProcessInfo};
use mcpwatch_policy::Target;
use serde_json::Value;

pub use answer::{answer, notification, unasked_answer, Noted};
pub use hold::hold;
pub use request::{call_time_pin, request, PinCheck};
pub use result::result;

use crate::approvals::Approvals;
use crate::governance::{Governance, Loaded};
use crate::inventory::Inventory;
use crate::state::Shared;

/// JSON-RPC error codes mcpwatch answers with (documented in docs/policy.md).
pub const CODE_DENIED: i64 = -32001;
pub const CODE_RATE_LIMITED: i64 = -32002;
pub const CODE_APPROVAL: i64 = -32003;
pub const CODE_CONTENT_BLOCKED: i64 = -32004;

/// Who calls which server: all a judgment needs to know of the transport.
pub struct Site<'a> {
    /// The server's endpoint key (`http://host:port/path`, `stdio://npm:name`).
    pub endpoint: &'a str,
    /// The server as the policy matches it.
    pub target: Target<'a>,
    /// The client process, as the kernel named it (never as a message claims).
    pub process: Option<&'a ProcessInfo>,
    /// The toxic-flow session the message belongs to (see [`flows`]).
    pub flow_session: &'a str,
}

/// The policy in force and the daemon state a judgment reads and updates.
#[derive(Clone, Copy)]
pub struct Judge<'a> {
    pub gov: &'a Loaded,
    pub governance: &'a Governance,
    pub inventory: &'a Inventory,
    pub approvals: &'a Approvals,
}

impl<'a> Judge<'a> {
    pub fn of(shared: &'a Shared, gov: &'a Loaded) -> Judge<'a> {
        Judge { gov, governance: &shared.governance, inventory: &shared.inventory, approvals: &shared.approvals }
    }

    /// Content inspection (and the tool flags it raises) follows the server's rollout mode.
    pub fn enforce(&self, site: &Site<'_>) -> bool {
        self.gov.inspect_mode(&site.target) == mcpwatch_policy::Mode::Enforce
    }
}

/// What becomes of a client request.
#[derive(Debug)]
pub enum Fate {
    /// Send it on (held calls are forwarded once approved).
    Forward,
    /// Answer it in the server's place with this JSON-RPC error; nothing reaches the server.
    Refuse { code: i64, message: String, data: Value, retry_after_ms: Option<u64> },
}

/// The govern stage's verdict on a request.
#[derive(Debug)]
pub struct Governed {
    pub fate: Fate,
    /// The message was rewritten (redaction): forward the new value, not the bytes sent.
    pub modified: bool,
    /// The call waits for a human before it may go ([`hold`]).
    pub held: bool,
}

/// Inspect what goes to a server (arguments, a client's answers): as
/// [`Loaded::inspect`], and a string that holds a JSON array or object is also read as
/// the value it decodes to ([`mcpwatch_inspect::Embedded::Decoded`]), since a server may
/// decode it (the Python SDK's `pre_parse_json` does for any parameter not typed `str`)
/// and a `\u`-escaped secret in it would otherwise pass unseen. Enforce mode redacts in
/// place (a redaction in a decoded value rewrites its string); otherwise `v` is left as
/// it is and every hit is reported detect-only.
pub fn inspect_outgoing(gov: &Loaded, v: &mut Value, enforce: bool) -> mcpwatch_inspect::RedactReport {
    gov.inspect_with(v, enforce, mcpwatch_inspect::Embedded::Decoded)
}

/// Findings of one inspection into the record: counts per detector, never values.
pub fn add_findings(rec: &mut AuditRecord, report: &mcpwatch_inspect::RedactReport, direction: &str) {
    for (detector, count) in &report.counts {
        rec.findings.push(FindingCount { detector: detector.clone(), direction: direction.into(), count: *count as u32, action: "redact".into() });
    }
    for (detector, count) in &report.detected_only {
        rec.findings.push(FindingCount { detector: detector.clone(), direction: direction.into(), count: *count as u32, action: "audit".into() });
    }
}
