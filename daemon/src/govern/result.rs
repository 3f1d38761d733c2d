//! Judging a server's answer to a call: pin and scan a `tools/list` (poisoned or
//! changed tools are flagged, stripped or hidden, and tools this client may not call are
//! filtered out), scan `initialize` instructions, inspect a result (detect, redact,
//! block), alert on instructions aimed at the agent, and let a result taint its toxic-
//! flow session. The same for every transport.

use mcpwatch_api::AuditRecord;
use mcpwatch_mcp::jsonrpc::Message;
use mcpwatch_inspect::poison::{self, Severity};
use mcpwatch_policy::{PinAction, PoisonAction, Subject};
use serde_json::Value;

use super::{add_findings, flows, Judge, Site, CODE_CONTENT_BLOCKED};
use crate::inventory::PinOutcome;
use crate::clock::now_ms;

/// Govern the answer `msg` (a server's response) to the call `rec` records.
/// `first_page`: the call asked for the first page of a paginated list. True if `msg`
/// was rewritten (redacted, filtered, or replaced by an error when inspection blocks it).
pub fn result(j: Judge<'_>, site: &Site<'_>, rec: &mut AuditRecord, first_page: bool, msg: &mut Message) -> bool {
    let Message::Response { id, result } = msg else { return false };
    let enforce = j.enforce(site);
    let method = rec.method.as_deref().unwrap_or_default();
    let (listing, initialize, no_result_scan, tools_call) =
        (method == "tools/list", method == "initialize", matches!(method, "tools/list" | "initialize" | "server/discover"), method == "tools/call");
    let mut changed = false;
    if listing {
        changed |= tools_list(j, site, rec, first_page, result, enforce);
    }
    if initialize
        && let Some(text) = result.get("instructions").and_then(Value::as_str)
    {
        let r = poison::scan_instructions(text);
        if r.severity >= Severity::Medium {
            let alert = format!("server instructions carry hidden-instruction signals (score {})", r.score);
            j.inventory.add_alert(site.endpoint, alert.clone());
            rec.alerts.push(alert);
        }
    }
    if no_result_scan {
        return changed;
    }
    // Results: detectors (redact in enforce), instructions aimed at the agent (alert).
    // Instructions aimed at the agent are judged on what the server sent: after
    // redaction our own placeholders (`<SECRET>`) would read as hidden tags.
    let flows_on = tools_call && !j.gov.policy.flows().is_empty();
    let injection = j.gov.policy.inspect().result_injection;
    let scan = (injection || flows_on).then(|| poison::scan_result(result));
    // The flow table sees the result as the server sent it (its markers, whether it
    // taints), before redaction rewrites it in place: no copy is kept. A result blocked
    // below still counts: the session is judged as if its agent had read it, the
    // stricter of the two readings.
    if flows_on {
        flows::observe_result(j, site, rec, result, scan.as_ref().map(|r| r.severity));
    }
    let report = j.gov.inspect(result, enforce);
    add_findings(rec, &report, "response");
    if enforce && report.redacted_total() > 0 {
        changed = true;
        rec.notes.push(format!("result redacted before the client saw it ({} spans)", report.redacted_total()));
    }
    if enforce && report.action == Some(mcpwatch_inspect::Action::Block) {
        let message = "mcpwatch: the result contains data the policy blocks; it was not delivered".to_string();
        *msg = Message::Error { id: Some(id.clone()), code: CODE_CONTENT_BLOCKED, message, data: None };
        rec.notes.push("result blocked by inspection".into());
        return true;
    }
    if let Some(r) = &scan
        && injection
        && r.severity >= Severity::Medium
    {
        let kinds: Vec<String> = r.signals.iter().take(4).map(|s| format!("{:?}", s.kind)).collect();
        rec.alerts.push(format!("tool result contains instructions aimed at the agent (score {}: {})", r.score, kinds.join(", ")));
    }
    changed
}

/// Pin, scan and filter a `tools/list` result.
fn tools_list(j: Judge<'_>, site: &Site<'_>, rec: &mut AuditRecord, first_page: bool, result: &mut Value, enforce: bool) -> bool {
    let Some(tools) = result.get("tools").and_then(Value::as_array) else { return false };
    let settings = j.gov.policy.inspect();
    let (sights, poisoned) = crate::inventory::tool_sights(tools, crate::inventory::poison_floor(settings.poisoning_min_severity));
    let last_page = result.get("nextCursor").is_none_or(Value::is_null);
    let outcomes = j.inventory.observe_tools(site.endpoint, &sights, first_page, last_page, now_ms());

    let mut hide: Vec<(String, String)> = Vec::new();
    for (name, score) in &poisoned {
        let alert = format!("tool `{}` looks poisoned (score {score})", crate::record::clip(name));
        j.inventory.add_alert(site.endpoint, alert.clone());
        rec.alerts.push(alert);
        if settings.poisoning == PoisonAction::Strip {
            hide.push((name.clone(), format!("poisoned tool definition (score {score})")));
        }
    }
    for (name, outcome) in &outcomes {
        if let PinOutcome::Changed(diff) = outcome {
            let alert = format!("tool `{}` changed since it was pinned: {}", crate::record::clip(name), diff.first().cloned().unwrap_or_default());
            j.inventory.add_alert(site.endpoint, alert.clone());
            rec.alerts.push(alert);
            if settings.pinning == PinAction::Hide {
                hide.push((name.clone(), "definition changed since it was pinned; `mcpwatch pin accept` to trust it".into()));
            }
        }
    }
    if !enforce {
        return false;
    }
    // Record what is hidden (calls to these tools are denied in enforce mode).
    let marks: Vec<(String, Option<String>)> =
        sights.iter().map(|s| (s.name.clone(), hide.iter().find(|(n, _)| *n == s.name).map(|(_, w)| w.clone()))).collect();
    j.inventory.set_hidden(site.endpoint, &marks);

    // Filter: hidden tools, and tools this agent may not call.
    let subject = Subject { process: site.process };
    let Some(list) = result.get_mut("tools").and_then(Value::as_array_mut) else { return false };
    let before = list.len();
    list.retain(|t| {
        let Some(name) = t.get("name").and_then(Value::as_str) else { return true };
        !hide.iter().any(|(n, _)| n == name) && j.gov.policy.tool_visible(&subject, &site.target, name)
    });
    let removed = before - list.len();
    if removed > 0 {
        rec.notes.push(format!("tools/list filtered: {removed} of {before} tools hidden from this client"));
    }
    removed > 0
}
