//! Holding a `require_approval` call until a human answers (`mcpwatch approve` /
//! `mcpwatch deny`) or the policy's approval timeout passes. The operator sees the
//! arguments redacted; the record says who answered and how.

use mcpwatch_api::{AuditRecord, Effect};
use mcpwatch_mcp::jsonrpc::Message;

use super::{Fate, Judge, Site, CODE_APPROVAL};
use crate::approvals::Verdict;
use crate::clock::now_ms;

/// Wait for the verdict on a held call. Sets the record's `approval` and effect; the
/// caller completes the record and, on [`Fate::Forward`], commits it before forwarding.
pub async fn hold(j: Judge<'_>, site: &Site<'_>, msg: &Message, rec: &mut AuditRecord) -> Fate {
    let timeout = j.gov.policy.approval_timeout();
    let mut masked = msg.arguments().cloned();
    if let Some(a) = masked.as_mut() {
        // As the arguments were inspected: JSON inside a string argument too.
        let _ = j.gov.inspector.redact_json_with(a, mcpwatch_inspect::Embedded::Decoded);
    }
    let now = now_ms();
    let view = mcpwatch_api::HeldCall {
        id: String::new(),
        held_since_ms: now,
        expires_ms: now + timeout.as_millis() as u64,
        process: site.process.cloned(),
        agent: rec.decision.as_ref().and_then(|d| d.rules.iter().find_map(|r| r.strip_prefix("agent:").map(str::to_string))),
        server: site.endpoint.to_string(),
        method: msg.method().unwrap_or_default().to_string(),
        tool: msg.target_name().map(str::to_string),
        arguments: masked,
        args_hash: rec.args_hash.clone(),
        rules: rec.decision.as_ref().map(|d| d.rules.clone()).unwrap_or_default(),
        reason: rec.decision.as_ref().map(|d| d.reason.clone()).unwrap_or_default(),
    };
    // A call held by a flow rule says which earlier call tainted the session.
    let flow_reason = rec
        .decision
        .as_ref()
        .filter(|d| d.rules.first().is_some_and(|r| r.starts_with("flow:")))
        .map(|d| format!(" ({})", d.reason))
        .unwrap_or_default();
    let (id, rx) = j.approvals.hold(view);
    tracing::warn!(id = %id, server = %site.endpoint, tool = ?msg.target_name(), "call held for approval: mcpwatch approve {id} / mcpwatch deny {id}");
    let (outcome, fate) = match j.approvals.wait(&id, rx, timeout).await {
        Verdict::Approved { by } => (format!("approved by {by} ({id})"), Fate::Forward),
        Verdict::Denied { by, reason } => {
            let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
            (
                format!("denied by {by} ({id}){why}"),
                Fate::Refuse {
                    code: CODE_APPROVAL,
                    message: format!("mcpwatch: approval denied by {by}{why}{flow_reason}"),
                    data: serde_json::json!({ "mcpwatch": { "decision": "require_approval", "approval": "denied", "id": id } }),
                    retry_after_ms: None,
                },
            )
        }
        Verdict::TimedOut => (
            format!("timed out after {} s ({id})", timeout.as_secs()),
            Fate::Refuse {
                code: CODE_APPROVAL,
                message: format!(
                    "mcpwatch: this call needs a human's approval and none came within {} s (ask an operator to run `mcpwatch approve` while the call waits){flow_reason}",
                    timeout.as_secs()
                ),
                data: serde_json::json!({ "mcpwatch": { "decision": "require_approval", "approval": "timed_out", "id": id } }),
                retry_after_ms: None,
            },
        ),
    };
    if let Some(d) = rec.decision.as_mut() {
        d.approval = Some(outcome);
        d.effective = if matches!(fate, Fate::Forward) { Effect::Forward } else { Effect::Block };
    }
    fate
}
