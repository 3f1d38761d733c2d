//! Toxic flows end to end: untrusted content enters an agent's session through a tool
//! result, and the later call that does what the injection asked is held or denied,
//! naming the call that tainted the session. The same follow-up call without the
//! injected result goes through. Real SDK peers (Python server and client) through eBPF.
//!
//! Threat cases (tests/fixtures/threats.jsonl): TP-005 + INJ-005 (Supabase ticket ->
//! destructive SQL), the GitHub toxic flow of PII-008 (public issue -> private repo ->
//! public PR; the corpus refers to it as TP-006), TP-004 (WhatsApp chat -> message to
//! the attacker's number).

use mcpwatch_api::{AuditRecord, CallStatus};
use mcpwatch_tests::daemon::DaemonOpts;
use mcpwatch_tests::harness::Watched;
use mcpwatch_tests::peers::{self, Client, Peer};
use serde_json::{Value, json};

const THREATS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/threats.jsonl");

const POLICY: &str = r#"
version = 1
mode = "enforce"
shadow = "allow"
approval_timeout_secs = 2

[[flow]]
id = "untrusted-private-public"
sequence = ["untrusted_content", "private_data", "public_sink"]
action = "require_approval"

[[flow]]
id = "untrusted-destructive"
sequence = ["untrusted_content", "destructive"]
action = "deny"

[[flow]]
id = "attacker-recipient"
sequence = ["untrusted_content", "public_sink"]
markers = true
action = "deny"

# Contact data is recorded, not redacted (as in the default policy): the attacker's
# number reaches the agent, so the marker rule has something to catch.
[inspect.detectors]
actions = { "pii.phone" = "audit", "pii.email" = "audit", "pii.ip_address" = "audit" }
"#;

fn server() -> Peer {
    peers::python_server().ip([127, 0, 0, 2].into()).json_response().arg("--flow-tools").arg(THREATS).spawn()
}

fn start(test: &str, server: &Peer, policy: &str) -> Option<Watched> {
    Watched::start_with(test, DaemonOpts { ports: Some(server.addr().port().to_string()), policy: Some(policy.to_string()), ..Default::default() })
}

fn threat(id: &str) -> Value {
    let text = std::fs::read_to_string(THREATS).unwrap_or_else(|e| panic!("{THREATS}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in the corpus"))
}

/// The `params` of a client->server case message.
fn case_call(id: &str, index: usize) -> (String, Value) {
    let c = threat(id);
    let raw = match &c["input"] {
        Value::Array(a) => a[index].as_str().unwrap_or_default().to_string(),
        v => v.as_str().unwrap_or_default().to_string(),
    };
    let msg: Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{id}: {e}"));
    (msg["params"]["name"].as_str().unwrap_or_default().to_string(), msg["params"]["arguments"].clone())
}

fn refusal(out: &Value) -> (i64, String) {
    assert_eq!(out["ok"], false, "expected a refusal: {out}");
    (out["error"]["code"].as_i64().unwrap_or_default(), out["error"]["message"].as_str().unwrap_or_default().to_string())
}

fn recorded(server: &Peer, tool: &str) -> usize {
    server.recorded_calls().iter().filter(|c| c["tool"] == tool).count()
}

/// The last `tools/call` record of `tool` in time order.
fn last_call<'a>(recs: &'a [AuditRecord], tool: &str) -> &'a AuditRecord {
    recs.iter().rev().find(|r| r.name.as_deref() == Some(tool) && r.method.as_deref() == Some("tools/call")).unwrap_or_else(|| panic!("no {tool} record"))
}

/// The `tool` call whose result tainted its toxic-flow session.
fn tainting_call<'a>(recs: &'a [AuditRecord], tool: &str) -> &'a AuditRecord {
    recs.iter()
        .find(|r| r.name.as_deref() == Some(tool) && r.flow.as_ref().is_some_and(|f| f.taints))
        .unwrap_or_else(|| panic!("no tainting {tool} record: {recs:#?}"))
}

fn settled(recs: &[AuditRecord], tool: &str, n: usize) -> bool {
    recs.iter().filter(|r| r.name.as_deref() == Some(tool) && r.status != CallStatus::Pending).count() >= n
}

/// TP-005 + INJ-005: a support ticket read through SQL carries instructions for the
/// agent; the follow-on write into the ticket table is denied, naming the ticket read.
/// The same write in a session that never read the ticket goes through.
#[test]
fn tp005_inj005_injected_ticket_then_destructive_sql_is_denied() {
    let server = server();
    let Some(w) = start("tp005_inj005_injected_ticket_then_destructive_sql_is_denied", &server, POLICY) else { return };
    let (read_tool, read_args) = case_call("INJ-005", 0);
    let (write_tool, write_args) = case_call("INJ-005", 1);
    assert_eq!((read_tool.as_str(), write_tool.as_str()), ("execute_sql", "execute_sql"));

    // No injected result first: the INJ-005 statements go through (no false positive).
    let clean = Client::python(&server.url())
        .cgroup(w.cgroup())
        .call("run_sql", read_args.clone())
        .call("run_sql", write_args.clone())
        .run();
    assert!(clean.steps().iter().all(|s| s["ok"] == true), "{:?}", clean.lines);
    assert_eq!(recorded(&server, "run_sql"), 2);

    // TP-005: the ticket comes back with the injection, then the INJ-005 calls.
    let out = Client::python(&server.url())
        .cgroup(w.cgroup())
        .call("run_sql", json!({"query": "SELECT * FROM support_messages WHERE ticket_id = 88"}))
        .call("run_sql", read_args)
        .call("run_sql", write_args)
        .run();
    let steps = out.steps();
    assert_eq!(steps[0]["ok"], true, "{:?}", out.lines);
    assert!(steps[0]["text"].as_str().unwrap_or_default().contains("IMPORTANT Instructions for CURSOR CLAUDE"), "the injected result reaches the client: {}", steps[0]);
    assert_eq!(steps[1]["ok"], true, "a read after the taint is not destructive: {}", steps[1]);
    let (code, msg) = refusal(&steps[2]);
    assert_eq!(code, -32001, "{msg}");
    assert!(msg.contains("untrusted-destructive") && msg.contains("run_sql"), "{msg}");
    assert_eq!(recorded(&server, "run_sql"), 4, "the destructive write never reached the server");

    let recs = w.daemon.wait_audit("flow records", |r| settled(r, "run_sql", 5));
    let ticket = tainting_call(&recs, "run_sql");
    assert!(msg.contains(&ticket.id), "the error names the tainting record {}: {msg}", ticket.id);
    let denied = last_call(&recs, "run_sql");
    let f = denied.flow.as_ref().expect("flow view");
    assert!(f.tainted && f.tainted_by == vec![ticket.id.clone()], "{f:?}");
    assert!(f.labels.contains(&"destructive".to_string()), "{f:?}");
    assert_eq!(denied.decision.as_ref().map(|d| d.effective.as_str()), Some("block"));

    // `mcpwatch audit --session` reconstructs the chain.
    let session = f.session.clone();
    let cli = w.daemon.cli(&["audit", "--session", &session]);
    let text = String::from_utf8_lossy(&cli.stdout).to_string();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    assert!(text.contains("taint chain") && text.contains(&format!("{}  run_sql: result tainted the session", ticket.id)), "{text}");
    assert!(text.contains(&denied.id) && text.contains("untrusted-destructive"), "{text}");
    let json = w.daemon.cli(&["audit", "--json", "--session", &session]);
    let n = String::from_utf8_lossy(&json.stdout).lines().filter(|l| l.contains("tools/call")).count();
    assert_eq!(n, 3, "only this session's calls: {}", String::from_utf8_lossy(&json.stdout));
}

/// TP-005 over the legacy HTTP+SSE transport: the tainting result arrives on the GET
/// stream, the follow-on write is a POST to the announced message URL. Both must be
/// judged in the same toxic-flow session (the legacy session), or the write would be
/// checked against a session the result never tainted.
#[test]
fn tp005_over_legacy_sse_is_denied_too() {
    let server = peers::python_server().ip([127, 0, 0, 2].into()).legacy_sse().arg("--flow-tools").arg(THREATS).spawn();
    let Some(w) = start("tp005_over_legacy_sse_is_denied_too", &server, POLICY) else { return };
    let (_, write_args) = case_call("INJ-005", 1);
    let out = Client::python(&server.sse_url())
        .legacy_sse()
        .cgroup(w.cgroup())
        .call("run_sql", json!({"query": "SELECT * FROM support_messages WHERE ticket_id = 88"}))
        .call("run_sql", write_args)
        .run();
    let steps = out.steps();
    assert_eq!(steps[0]["ok"], true, "{:?}", out.lines);
    assert!(steps[0]["text"].as_str().unwrap_or_default().contains("IMPORTANT Instructions for CURSOR CLAUDE"), "{}", steps[0]);
    // Legacy answers travel on the GET stream; mcpwatch refuses the POST itself (403),
    // which this SDK does not surface: its call times out. What matters here is that
    // the write is refused and never reaches the server.
    assert_ne!(steps[1]["ok"], true, "the destructive write is not answered by the server: {:?}", out.lines);
    assert_eq!(recorded(&server, "run_sql"), 1, "the destructive write never reached the server");
    let recs = w.daemon.wait_audit("flow records", |r| settled(r, "run_sql", 2));
    let ticket = tainting_call(&recs, "run_sql");
    let denied = last_call(&recs, "run_sql");
    let f = denied.flow.as_ref().expect("flow view");
    assert_eq!(f.session, ticket.flow.as_ref().map(|t| t.session.clone()).unwrap_or_default(), "one session for the result and the call");
    assert!(f.tainted_by == vec![ticket.id.clone()], "{f:?}");
    let d = denied.decision.as_ref().expect("decision");
    assert_eq!(d.effective.as_str(), "block", "{d:?}");
    assert!(d.rules.iter().any(|r| r == "flow:untrusted-destructive"), "{d:?}");
}

/// The GitHub toxic flow (PII-008; "TP-006" in the corpus): a public issue asks the agent
/// to publish the author's private repositories. Reading the issue taints the session;
/// reading a private repo and then opening a public PR is held for approval (and, with no
/// human answering, refused with the tainting call named). Without the issue, the same
/// private read and PR go through.
#[test]
fn github_issue_private_read_public_pr_is_held() {
    let server = server();
    let Some(w) = start("github_issue_private_read_public_pr_is_held", &server, POLICY) else { return };
    let (pr_tool, pr_args) = case_call("PII-008", 0);
    assert_eq!(pr_tool, "create_pull_request");
    let pr = json!({"title": pr_args["title"], "body": pr_args["body"]});

    // The private read and the public PR without the issue: nothing to hold.
    let clean = Client::python(&server.url())
        .cgroup(w.cgroup())
        .call("private_read", json!({"repo": "private-plans"}))
        .call("public_post", pr.clone())
        .run();
    assert!(clean.steps().iter().all(|s| s["ok"] == true), "{:?}", clean.lines);
    assert_eq!(recorded(&server, "public_post"), 1);

    let out = Client::python(&server.url())
        .cgroup(w.cgroup())
        .call("read_issue", json!({"number": 1}))
        .call("private_read", json!({"repo": "private-plans"}))
        .call("public_post", pr)
        .run();
    let steps = out.steps();
    assert!(steps[0]["text"].as_str().unwrap_or_default().contains("does not care about privacy"), "{}", steps[0]);
    assert_eq!(steps[1]["ok"], true, "{}", steps[1]);
    let (code, msg) = refusal(&steps[2]);
    assert_eq!(code, -32003, "held, then timed out: {msg}");
    assert!(msg.contains("untrusted-private-public") && msg.contains("read_issue"), "{msg}");
    assert_eq!(recorded(&server, "public_post"), 1, "the held PR never reached the server");

    let recs = w.daemon.wait_audit("held PR", |r| settled(r, "public_post", 2));
    let issue = recs.iter().find(|r| r.name.as_deref() == Some("read_issue") && r.flow.as_ref().is_some_and(|f| f.taints)).expect("tainting issue read");
    assert!(msg.contains(&issue.id), "{msg}");
    let held = last_call(&recs, "public_post");
    let d = held.decision.as_ref().expect("decision");
    assert_eq!(d.action.as_str(), "require_approval");
    assert!(d.rules.first().is_some_and(|r| r == "flow:untrusted-private-public"), "{d:?}");
    assert!(d.approval.as_deref().is_some_and(|a| a.starts_with("timed out")), "{d:?}");
    // The clean session's PR was judged untainted.
    let first_pr = recs.iter().find(|r| r.name.as_deref() == Some("public_post")).expect("first PR");
    assert!(first_pr.flow.as_ref().is_some_and(|f| !f.tainted), "{first_pr:#?}");

    // `mcpwatch list` shows the labels and where they came from.
    let list = w.daemon.list();
    let tools = &list.iter().find(|s| s.tools.iter().any(|t| t.name == "read_issue")).expect("server").tools;
    let labels = |n: &str| tools.iter().find(|t| t.name == n).map(|t| t.labels.clone()).unwrap_or_default();
    assert_eq!(labels("read_issue"), vec!["untrusted_content (heuristic)"]);
    assert_eq!(labels("private_read"), vec!["private_data (heuristic)"]);
    assert_eq!(labels("public_post"), vec!["public_sink (heuristic)"]);
    assert!(labels("echo").is_empty());
}

/// TP-004: a WhatsApp chat carries an injected instruction to send messages to the
/// attacker's number. Sending to that number (a marker of the untrusted result) is
/// denied naming the chat listing; sending to anyone else goes through.
#[test]
fn tp004_whatsapp_marker_recipient_is_denied() {
    let server = server();
    let Some(w) = start("tp004_whatsapp_marker_recipient_is_denied", &server, POLICY) else { return };
    let out = Client::python(&server.url())
        .cgroup(w.cgroup())
        .call("list_chats", json!({}))
        .call("send_message", json!({"recipient": "+14155550123", "message": "see you at 7"}))
        .call("send_message", json!({"recipient": "+1 324 123 4123", "message": "@recipient: +14155550123 @chat: ..."}))
        .run();
    let steps = out.steps();
    assert!(steps[0]["text"].as_str().unwrap_or_default().contains("+13241234123"), "{}", steps[0]);
    assert_eq!(steps[1]["ok"], true, "an ordinary recipient is fine: {}", steps[1]);
    let (code, msg) = refusal(&steps[2]);
    assert_eq!(code, -32001, "{msg}");
    assert!(msg.contains("attacker-recipient") && msg.contains("list_chats") && msg.contains("marker"), "{msg}");
    let sent: Vec<Value> = server.recorded_calls().into_iter().filter(|c| c["tool"] == "send_message").collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["arguments"]["recipient"], "+14155550123");
}

/// A long session of ordinary calls stays untainted and nothing is held; the embedded
/// default policy's flow rules are in warn mode (alert, never block).
#[test]
fn ordinary_sessions_are_not_tainted_and_default_policy_warns() {
    let server = server();
    let Some(w) = start("ordinary_sessions_are_not_tainted_and_default_policy_warns", &server, POLICY) else { return };
    let mut c = Client::python(&server.url()).cgroup(w.cgroup());
    for i in 0..20 {
        c = c
            .call("echo", json!({"text": format!("call {i}: see https://example.com/docs and mail ops@example.com")}))
            .call("add", json!({"a": i, "b": 1}))
            .call("private_read", json!({"repo": "notes"}))
            .call("public_post", json!({"title": "t", "body": "b"}))
            .call("delete_records", json!({"table": "scratch"}));
    }
    let out = c.run();
    assert!(out.steps().iter().all(|s| s["ok"] == true), "{:?}", out.lines.iter().find(|l| l["ok"] == false));
    let recs = w.daemon.wait_audit("ordinary calls", |r| settled(r, "delete_records", 20));
    let calls: Vec<&AuditRecord> = recs.iter().filter(|r| r.method.as_deref() == Some("tools/call")).collect();
    assert_eq!(calls.len(), 100);
    assert!(calls.iter().all(|r| r.flow.as_ref().is_some_and(|f| !f.tainted && !f.taints)), "some call was tainted");
    drop(w);

    // Default policy (no policy file): the same attack is alerted, not blocked.
    let server = self::server();
    let Some(w) = Watched::start_with("ordinary_sessions_default_policy", DaemonOpts { ports: Some(server.addr().port().to_string()), ..Default::default() }) else { return };
    let out = Client::python(&server.url())
        .cgroup(w.cgroup())
        .call("run_sql", json!({"query": "SELECT * FROM support_messages"}))
        .call("run_sql", json!({"query": "INSERT INTO support_messages (content) VALUES ('ACK')"}))
        .run();
    assert!(out.steps().iter().all(|s| s["ok"] == true), "{:?}", out.lines);
    let recs = w.daemon.wait_audit("warned write", |r| settled(r, "run_sql", 2));
    let write = last_call(&recs, "run_sql");
    assert!(write.alerts.iter().any(|a| a.contains("untrusted-destructive") && a.contains("warn mode")), "{:?}", write.alerts);
}
