//! Judging a client's answer to a server's request (`sampling/createMessage`,
//! `elicitation/create`, `roots/list`, `ping`). Why it is inspected at all: the answer
//! goes to the server, so what the agent's side puts in it (a model's completion, what a
//! user typed into an elicitation form, local paths) leaves the host exactly as a call's
//! arguments do. Without this a server only had to ask for data instead of being sent it
//! to get it past the detectors. It is inspected as arguments are (strings holding JSON
//! decoded too), redacted or blocked per the `[inspect]` detector actions in the
//! server's rollout mode, and the findings go on the record of the server's request.

use mcpwatch_api::AuditRecord;
use mcpwatch_mcp::jsonrpc::Message;
use serde_json::Value;

use super::{add_findings, inspect_outgoing, Judge, Site, CODE_CONTENT_BLOCKED};

/// Inspect the client answer `msg` (a JSON-RPC response or error) before it goes to the
/// server; `rec` is the record it completes (the server request's, or the record of an
/// answer to an id no watched request carried). The findings are the record's
/// `response` (its answer's) findings. In enforce mode a redacted answer is rewritten in
/// place, and one a detector blocks is replaced by a JSON-RPC error for the server, so the
/// server's request is still answered (and does not wait) without the data. True if
/// `msg` was rewritten: the caller forwards the new message, not the bytes it came in.
pub fn answer(j: Judge<'_>, site: &Site<'_>, rec: &mut AuditRecord, msg: &mut Message) -> bool {
    let enforce = j.enforce(site);
    let report = match msg {
        Message::Response { result, .. } => inspect_outgoing(j.gov, result, enforce),
        Message::Error { message, data, .. } => {
            // Both carry text of the client's choosing; the code is only a number.
            let mut text = Value::String(std::mem::take(message));
            let mut report = inspect_outgoing(j.gov, &mut text, enforce);
            if let Value::String(t) = text {
                *message = t;
            }
            if let Some(d) = data.as_mut() {
                report.merge(inspect_outgoing(j.gov, d, enforce));
            }
            report
        }
        Message::Request { .. } | Message::Notification { .. } => return false,
    };
    add_findings(rec, &report, "response");
    if enforce && report.action == Some(mcpwatch_inspect::Action::Block) {
        let message = "mcpwatch: the client's answer contains data the policy blocks; it was not delivered".to_string();
        *msg = Message::Error { id: msg.id().cloned(), code: CODE_CONTENT_BLOCKED, message, data: None };
        rec.notes.push("client answer blocked by inspection: the server was sent an error instead".into());
        return true;
    }
    if enforce && report.redacted_total() > 0 {
        rec.notes.push(format!("client answer redacted before forwarding ({} spans)", report.redacted_total()));
        return true;
    }
    false
}

/// A client's answer to an id no server request mcpwatch watched carried: it still leaves
/// with data, so `rec` (a fresh record of kind `invalid`) gets its id, an alert and the
/// keyed hash of what is forwarded, after the answer is inspected ([`answer`]). True if
/// `msg` was rewritten.
pub fn unasked_answer(j: Judge<'_>, site: &Site<'_>, rec: &mut AuditRecord, msg: &mut Message) -> bool {
    let id = msg.id().map_or_else(|| "null".to_string(), ToString::to_string);
    rec.alerts.push(format!("client answer to id {} that no watched server request carried", crate::record::clip(&id)));
    rec.jsonrpc_id = Some(id);
    let rewritten = answer(j, site, rec, msg);
    rec.result_hash = msg.result_hash(j.governance.hash_key());
    rewritten
}

/// What inspection made of a client's notification ([`notification`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Noted {
    /// Forward it as it came.
    Unchanged,
    /// Forward the message as rewritten in place (enforce mode redacted it).
    Redacted,
    /// Do not forward it (the detectors block it in enforce mode): why.
    Blocked(String),
}

/// Inspect a client's notification before it goes to the server: its params carry text
/// of the client's choosing (a progress or log message, a cancellation reason) as a
/// call's arguments do, and were passed on unscanned. Redacted in place in enforce mode;
/// blocked there when the detectors say so (a notification has no answer to carry the
/// refusal: it is just not forwarded).
pub fn notification(j: Judge<'_>, site: &Site<'_>, rec: &mut AuditRecord, msg: &mut Message) -> Noted {
    let Message::Notification { params: Some(params), .. } = msg else { return Noted::Unchanged };
    let enforce = j.enforce(site);
    let report = inspect_outgoing(j.gov, params, enforce);
    add_findings(rec, &report, "request");
    if enforce && report.action == Some(mcpwatch_inspect::Action::Block) {
        rec.notes.push("notification blocked by inspection: not forwarded".into());
        return Noted::Blocked("mcpwatch: the notification contains data the policy blocks; it was not forwarded".into());
    }
    if enforce && report.redacted_total() > 0 {
        rec.args_hash = Some(j.governance.hash_key().hash_json(params));
        rec.notes.push(format!("notification redacted before forwarding ({} spans)", report.redacted_total()));
        return Noted::Redacted;
    }
    Noted::Unchanged
}
