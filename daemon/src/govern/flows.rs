//! Toxic flows: the glue between the govern stage and the pure taint logic.
//!
//! Why a module of its own: the decision logic lives in `mcpwatch_policy::FlowTable`
//! (pure, unit-tested); this file only says which labels a tool carries (policy,
//! built-in table, heuristics, annotations), and turns a flow verdict into what the
//! transport does (block, hold, alert) with a reason that names the call that tainted
//! the session. The transport names the session ([`super::Site::flow_session`]);
//! [`super::request`] calls [`check_call`] and [`apply`] for each `tools/call`,
//! [`super::result`] calls [`observe_result`] for each result, on every transport.

use mcpwatch_api::{ActionKind, AuditRecord, DecisionView, Effect, FlowView};
use mcpwatch_inspect::poison::{Severity, RESULT_ALERT};
use mcpwatch_mcp::jsonrpc::Message;
use mcpwatch_policy::{FlowCheck, Injection, Label, Labels, Mode, ResultSeen, RuleAction, ToolLabels, ToolRef};
use serde_json::Value;

use mcpwatch_policy::Target;

use super::{Judge, Site};
use crate::clock::now_ms;
use crate::state::Shared;

/// The session of a client that has no MCP session id: the client process (tgid and
/// command name) talking to `endpoint`, `ENDPOINT#proc:TGID:COMM` (docs/policy.md). The
/// proxy and the gate name such sessions alike, so a flow spans both transports' records.
pub fn process_session(endpoint: &str, p: &mcpwatch_api::ProcessInfo) -> String {
    format!("{endpoint}#proc:{}:{}", p.tgid, p.comm)
}

/// The labels of `tool` on this server (with sources), from the policy, the built-in
/// table (matched on the server's `serverInfo.name` and endpoint), heuristics and the
/// definition's annotations.
fn tool_labels(j: Judge<'_>, target: &Target<'_>, tool: &str, def: Option<&Value>) -> ToolLabels {
    let server = j.gov.policy.server_for(target).map(|s| s.name.as_str());
    // The hint (the server's name as it calls itself) is read only for tools the built-in
    // table names: made only for them.
    let hint = if mcpwatch_policy::builtin_names(tool) {
        format!("{} {}", j.inventory.server_name(target.endpoint).unwrap_or_default(), target.endpoint)
    } else {
        String::new()
    };
    j.gov.policy.tool_labels(&ToolRef { server, server_hint: &hint, tool, definition: def })
}

/// Fill in each tool's labels (with sources) for `mcpwatch list`. Labels depend on the
/// policy in force, so they are computed when asked, not stored.
pub fn label_inventory(shared: &Shared, servers: &mut [mcpwatch_api::ServerEntry]) {
    let gov = shared.governance.current();
    for s in servers {
        let parsed = mcpwatch_api::Endpoint::parse(&s.endpoint);
        let target = match &parsed {
            Some(e) => Target { endpoint: &s.endpoint, host: &e.host, port: e.port, path: e.path_or_root() },
            None => Target { endpoint: &s.endpoint, host: "", port: 0, path: "/" },
        };
        let hint = format!("{} {}", s.server_name.as_deref().unwrap_or_default(), s.endpoint);
        let server = gov.policy.server_for(&target).map(|d| d.name.clone());
        for t in &mut s.tools {
            let tr = ToolRef { server: server.as_deref(), server_hint: &hint, tool: &t.name, definition: t.pinned_definition.as_deref() };
            t.labels = gov.policy.tool_labels(&tr).labels.iter().map(|(l, src)| format!("{l} ({})", src.as_str())).collect();
        }
    }
}

/// What the flow table said about one call, kept until the decision is final.
pub(super) struct Gate {
    session: String,
    labels: Labels,
    check: FlowCheck,
}

/// Judge a `tools/call` against the session's taint and the `[[flow]]` rules. Sets the
/// record's `flow` view. `None` for other methods.
pub(super) fn check_call(j: Judge<'_>, site: &Site<'_>, msg: &Message, tool: Option<&mcpwatch_api::ToolEntry>, rec: &mut AuditRecord) -> Option<Gate> {
    if msg.method() != Some("tools/call") {
        return None;
    }
    let name = msg.target_name().unwrap_or_default();
    let def = tool.and_then(|t| t.pinned_definition.as_deref());
    let labels = mcpwatch_policy::call_labels(tool_labels(j, &site.target, name, def).set(), msg.arguments());
    let session = site.flow_session.to_string();
    let args_markers = msg.arguments().map(mcpwatch_policy::markers).unwrap_or_default();
    let check = j
        .governance
        .with_flows(|t| t.check_call(&j.gov.policy, &session, now_ms(), name, labels, &args_markers))
        .unwrap_or_default();
    rec.flow = Some(FlowView {
        session: session.clone(),
        labels: labels.iter().map(|l| l.as_str().to_string()).collect(),
        tainted: check.state.tainted,
        tainted_by: check.state.by.iter().map(|t| t.record.clone()).collect(),
        taints: false,
    });
    Some(Gate { session, labels, check })
}

/// What a flow verdict does to the call.
pub(super) enum Outcome {
    /// Nothing (no rule matched, or it was only recorded/alerted).
    Pass,
    /// Enforced `require_approval`: hold the call.
    Hold,
    /// Enforced `deny`: refuse with this message and JSON-RPC `data`.
    Deny { message: String, data: Value },
}

/// Fold the flow verdict into the decision view: enforced deny blocks, enforced
/// `require_approval` holds (unless something stronger already decided), warn alerts,
/// audit notes. The reason names the record and tool that tainted the session.
pub(super) fn apply(gate: &Gate, view: &mut DecisionView, rec: &mut AuditRecord, contact: Option<&str>) -> Outcome {
    let Some(v) = &gate.check.verdict else { return Outcome::Pass };
    let rule = format!("flow:{}", v.rule);
    match (v.mode, v.action) {
        (Mode::Enforce, RuleAction::Deny) => {
            view.action = ActionKind::Deny;
            view.effective = Effect::Block;
            view.mode = v.mode;
            view.rules.insert(0, rule.clone());
            view.reason = v.reason.clone();
            rec.alerts.push(format!("toxic flow blocked: {}", v.reason));
            let tainted_by: Vec<Value> = gate
                .check
                .state
                .by
                .iter()
                .map(|t| serde_json::json!({ "record": t.record, "tool": t.tool, "why": t.why }))
                .collect();
            Outcome::Deny {
                message: format!("mcpwatch: {}", v.reason),
                data: serde_json::json!({ "mcpwatch": { "decision": "deny", "rules": [rule], "tainted_by": tainted_by, "contact": contact } }),
            }
        }
        (Mode::Enforce, _) if view.effective == Effect::Forward => {
            view.action = ActionKind::RequireApproval;
            view.effective = Effect::Hold;
            view.mode = v.mode;
            view.rules.insert(0, rule);
            view.reason = v.reason.clone();
            rec.alerts.push(format!("toxic flow held for approval: {}", v.reason));
            Outcome::Hold
        }
        (Mode::Enforce, _) => {
            view.rules.push(rule);
            Outcome::Pass
        }
        (Mode::Warn, a) => {
            view.rules.push(rule);
            rec.alerts.push(format!("flow rule would {} this call (warn mode): {}", a.as_str(), v.reason));
            Outcome::Pass
        }
        (Mode::Audit, a) => {
            view.rules.push(rule);
            rec.notes.push(format!("flow rule would {} this call (audit mode): {}", a.as_str(), v.reason));
            Outcome::Pass
        }
    }
}

/// The call goes ahead (forwarded or held): it becomes a step of its session.
pub(super) fn commit(j: Judge<'_>, gate: &Gate) {
    j.governance.with_flows(|t| t.commit_call(&gate.session, now_ms(), gate.labels));
}

/// See a `tools/call` result: taint the session when the tool is `untrusted_content` or
/// the result carries instructions aimed at the agent (`severity` from the injection
/// scan: at the alert threshold or above it taints, low only remembers the result's
/// markers).
pub(super) fn observe_result(j: Judge<'_>, site: &Site<'_>, rec: &mut AuditRecord, result: &Value, severity: Option<Severity>) {
    let Some(tool) = rec.name.clone() else { return };
    let labels = match rec.flow.as_ref() {
        // The labels the call was judged with ([`check_call`]): the tool's, plus
        // `destructive` when an argument showed it, which a result does not read. Worked
        // out once per call, not again here.
        Some(f) => f.labels.iter().filter_map(|s| Label::ALL.into_iter().find(|l| l.as_str() == s)).fold(Labels::NONE, Labels::with),
        // A call judged before `[[flow]]` rules were loaded.
        None => {
            let def = j.inventory.tool(site.endpoint, &tool).and_then(|t| t.pinned_definition);
            tool_labels(j, &site.target, &tool, def.as_deref()).set()
        }
    };
    // The alert threshold (medium) taints: a result mcpwatch alerts on as instructions
    // aimed at the agent is untrusted content, whatever tool returned it.
    let injection = match severity {
        Some(s) if s >= RESULT_ALERT => Injection::High,
        Some(Severity::Low) => Injection::Low,
        _ => Injection::None,
    };
    let session = rec.flow.as_ref().map_or_else(|| site.flow_session.to_string(), |f| f.session.clone());
    let record = rec.id.clone();
    let taints = j
        .governance
        .with_flows(|t| {
            t.observe_result(&session, now_ms(), &ResultSeen { record: &record, tool: &tool, labels, injection, result });
            t.state(&session, now_ms()).by.iter().any(|b| b.record == record)
        })
        .unwrap_or(false);
    if taints {
        let f = rec.flow.get_or_insert_with(|| FlowView { session, ..Default::default() });
        f.taints = true;
        rec.notes.push("this result tainted the session (untrusted content): later calls are judged by [[flow]] rules".into());
    }
}
