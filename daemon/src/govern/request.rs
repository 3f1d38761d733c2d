//! Judging a client request: policy and rate limits, tool flags and call-time pinning,
//! argument inspection (detect, redact, block) and toxic flows, in that order of
//! precedence. The first refusal in enforce mode wins; in audit and warn modes each
//! check leaves an alert or a note instead.

use mcpwatch_api::{AuditRecord, DecisionView, ActionKind, Effect};
use mcpwatch_mcp::jsonrpc::{self, Message};
use mcpwatch_policy::{Call, PinAction, Subject};
use serde_json::Value;

use super::{add_findings, flows, inspect_outgoing, Fate, Governed, Judge, Site, CODE_CONTENT_BLOCKED, CODE_DENIED, CODE_RATE_LIMITED};
use crate::clock::now_ms;

/// Policy and argument inspection for one client request. May rewrite the message's
/// params in place (redaction: `Governed::modified`, and the caller re-serialises it);
/// fills the record's decision, findings and alerts.
pub fn request(j: Judge<'_>, site: &Site<'_>, msg: &mut Message, rec: &mut AuditRecord) -> Governed {
    let method = msg.method().unwrap_or_default();
    let name = msg.target_name();
    let is_call = matches!(method, "tools/call" | "prompts/get");
    let arguments = if is_call { msg.arguments() } else { msg.params() };
    let subject = Subject { process: site.process };
    let mut d = j.gov.policy.evaluate(&subject, &site.target, &Call { method, name, arguments });
    let rate = j.governance.apply_rate_limits(now_ms(), &mut d);
    // Rules carry their own mode in `d.effective`; content inspection (and the tool
    // flags it raised) follows the server's rollout mode.
    let enforce = j.enforce(site);

    // Tools the inventory has flagged: poisoned and stripped, or changed since pinned.
    let mut extra_block: Option<(i64, String, &'static str)> = None;
    let tool = if method == "tools/call" { name.and_then(|n| j.inventory.tool(site.endpoint, n)) } else { None };
    // Toxic flows: the session's taint and the [[flow]] rules this call would complete.
    let flow = flows::check_call(j, site, msg, tool.as_ref(), rec);
    if method == "tools/call" {
        let pinning = j.gov.policy.inspect().pinning;
        if let Some(why) = tool.as_ref().and_then(|t| t.hidden.as_ref()) {
            extra_block = Some((CODE_DENIED, format!("tool `{}` is blocked by mcpwatch: {why}", name.unwrap_or_default()), "inspect:tool"));
        }
        // Call-time pinning: the definition the client calls must be one mcpwatch saw
        // (and, if it changed, accepted).
        let listed = j.inventory.has_tool_list(site.endpoint);
        match call_time_pin(name.unwrap_or_default(), tool.as_ref(), listed, pinning) {
            PinCheck::Pass => {}
            PinCheck::Note(why) => rec.notes.push(why),
            PinCheck::Alert(why) => rec.alerts.push(why),
            PinCheck::Deny { code, why } => {
                extra_block.get_or_insert((code, why, "inspect:pin"));
            }
        }
        if pinning == PinAction::Block && j.inventory.has_changed_tools(site.endpoint) {
            extra_block = Some((
                CODE_DENIED,
                format!("server {} changed tool definitions since they were pinned; blocked until `mcpwatch pin accept`", site.endpoint),
                "inspect:pin",
            ));
        }
    }

    // Arguments: detect, redact or block per detector action; rewrite only in enforce mode.
    let mut modified = false;
    let mut content_block = false;
    let inspected = match msg.params_mut() {
        Some(params) if is_call => params.get_mut("arguments"),
        params => params,
    };
    if let Some(args) = inspected {
        let report = inspect_outgoing(j.gov, args, enforce);
        add_findings(rec, &report, "request");
        if enforce && report.redacted_total() > 0 {
            modified = true;
            rec.args_hash = Some(j.governance.hash_key().hash_json(args)); // the redacted form is what leaves
            rec.notes.push(format!("arguments redacted before forwarding ({} spans)", report.redacted_total()));
        }
        content_block = enforce && report.action == Some(mcpwatch_inspect::Action::Block);
    }

    let mut view = DecisionView {
        action: d.action.kind(),
        effective: d.effective,
        mode: d.mode,
        rules: d.matched_rules.clone(),
        reason: d.reason.clone(),
        shadow: d.shadow,
        approval: None,
    };
    if d.shadow && d.alert {
        rec.alerts.push(format!("shadow MCP server: {} is not in the policy registry", site.endpoint));
    }
    if d.alert && !d.shadow && d.effective == Effect::Forward && d.action != mcpwatch_policy::Action::Allow {
        rec.alerts.push(format!("policy would {} this call ({} mode): {}", d.action.label(), d.mode, d.reason));
    }
    let contact = j.gov.policy.contact().map(str::to_string);
    let data = |rules: &[String], decision: &str| serde_json::json!({ "mcpwatch": { "decision": decision, "rules": rules, "contact": contact } });
    let refuse = |code: i64, message: String, data: Value, retry_after_ms: Option<u64>, modified: bool| Governed {
        fate: Fate::Refuse { code, message, data, retry_after_ms },
        modified,
        held: false,
    };
    let block = |view: &mut DecisionView, rule: &str, reason: String| {
        view.action = ActionKind::Deny;
        view.effective = Effect::Block;
        view.rules.push(rule.to_string());
        view.reason = reason;
    };

    if let Some((code, message, rule)) = extra_block {
        if enforce {
            block(&mut view, rule, message.clone());
            rec.decision = Some(view);
            return refuse(code, format!("mcpwatch: {message}"), data(&[rule.to_string()], "deny"), None, modified);
        }
        rec.alerts.push(message);
    }
    if content_block {
        block(&mut view, "inspect:content", "the arguments contain data the policy blocks".into());
        rec.decision = Some(view);
        let message = "mcpwatch: the arguments contain data that must not leave this host (see `mcpwatch audit` for the detector ids)";
        return refuse(CODE_CONTENT_BLOCKED, message.into(), data(&["inspect:content".to_string()], "deny"), None, modified);
    }
    if let Some(gate) = &flow
        && d.effective != Effect::Block
    {
        match flows::apply(gate, &mut view, rec, contact.as_deref()) {
            flows::Outcome::Deny { message, data } => {
                rec.decision = Some(view);
                return refuse(CODE_DENIED, message, data, None, modified);
            }
            flows::Outcome::Hold | flows::Outcome::Pass => flows::commit(j, gate),
        }
    }
    let held = view.effective == Effect::Hold;
    rec.decision = Some(view);
    match d.effective {
        Effect::Forward | Effect::Hold => Governed { fate: Fate::Forward, modified, held },
        Effect::Block => {
            let rules = &d.matched_rules;
            match rate {
                Some(r) if !r.allowed => refuse(
                    CODE_RATE_LIMITED,
                    format!("mcpwatch: rate limit reached ({}); retry in {} s", rules.join(", "), r.retry_after_ms.div_ceil(1000)),
                    data(rules, "rate_limit"),
                    Some(r.retry_after_ms),
                    modified,
                ),
                _ => refuse(CODE_DENIED, format!("mcpwatch: {}", d.reason), data(rules, d.action.label()), None, modified),
            }
        }
    }
}

/// What call-time pinning says about one `tools/call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinCheck {
    Pass,
    Note(String),
    Alert(String),
    /// Deny in enforce mode (alert otherwise) with this JSON-RPC code.
    Deny { code: i64, why: String },
}

/// Call-time pinning for a `tools/call` of `tool` (the inventory's entry for the name,
/// `None` if no `tools/list` mcpwatch saw from this server had it). `listed`: a tools
/// list of this server was seen at all. A tool never listed is denied under `block`
/// (and under `hide` once a list was seen: it would not have been shown); a tool whose
/// definition changed without `mcpwatch pin accept` is denied under `hide`/`block`.
pub fn call_time_pin(name: &str, tool: Option<&mcpwatch_api::ToolEntry>, listed: bool, pinning: PinAction) -> PinCheck {
    let shown = mcpwatch_mcp::jsonrpc::first_chars(name, 128);
    match tool {
        None => {
            let why = format!("`{shown}` is in no tools/list result mcpwatch saw from this server, so its definition was never checked");
            match (pinning, listed) {
                (PinAction::Block, _) | (PinAction::Hide, true) => {
                    PinCheck::Deny { code: jsonrpc::INVALID_PARAMS, why: format!("Unknown tool: {shown} ({why}; pinning = {})", pin_label(pinning)) }
                }
                (PinAction::Hide, false) | (PinAction::Alert, true) => PinCheck::Alert(format!("call-time pinning: {why}")),
                (PinAction::Alert, false) => PinCheck::Note(format!("call-time pinning: {why} (no tools/list seen yet)")),
            }
        }
        Some(t) if t.changed || t.pinned_hash.as_deref().is_some_and(|h| h != t.hash) => {
            let why = format!("tool `{}` is called with a definition that changed since it was pinned and was not accepted (`mcpwatch pin accept`)", t.name);
            match pinning {
                PinAction::Alert => PinCheck::Alert(format!("call-time pinning: {why}")),
                PinAction::Hide | PinAction::Block => PinCheck::Deny { code: CODE_DENIED, why },
            }
        }
        Some(_) => PinCheck::Pass,
    }
}

fn pin_label(p: PinAction) -> &'static str {
    match p {
        PinAction::Alert => "alert",
        PinAction::Hide => "hide",
        PinAction::Block => "block",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_time_pinning() {
        let seen = mcpwatch_api::ToolEntry { name: "echo".into(), hash: "h1".into(), pinned_hash: Some("h1".into()), ..Default::default() };
        let changed = mcpwatch_api::ToolEntry { hash: "h2".into(), changed: true, ..seen.clone() };
        for p in [PinAction::Alert, PinAction::Hide, PinAction::Block] {
            assert_eq!(call_time_pin("echo", Some(&seen), true, p), PinCheck::Pass);
        }
        assert!(matches!(call_time_pin("echo", Some(&changed), true, PinAction::Alert), PinCheck::Alert(_)));
        assert!(matches!(call_time_pin("echo", Some(&changed), true, PinAction::Hide), PinCheck::Deny { code: CODE_DENIED, .. }));
        let PinCheck::Deny { code, why } = call_time_pin("__proto__", None, false, PinAction::Block) else { panic!() };
        assert_eq!(code, -32602);
        assert!(why.starts_with("Unknown tool: __proto__"), "{why}");
        assert!(matches!(call_time_pin("x", None, true, PinAction::Hide), PinCheck::Deny { .. }));
        assert!(matches!(call_time_pin("x", None, false, PinAction::Hide), PinCheck::Alert(_)));
        assert!(matches!(call_time_pin("x", None, true, PinAction::Alert), PinCheck::Alert(_)));
        assert!(matches!(call_time_pin("x", None, false, PinAction::Alert), PinCheck::Note(_)));
    }
}
