//! Policy in the data path (issue 4), with real SDK clients and servers through eBPF.
//! Agents are told apart by their cgroup: two child cgroups of the watched one.

use std::path::{Path, PathBuf};

use mcpwatch_api::CallStatus;
use mcpwatch_tests::daemon::DaemonOpts;
use mcpwatch_tests::harness::Watched;
use mcpwatch_tests::peers::{self, Client, Peer};
use serde_json::{json, Value};

/// Child cgroups (removed before the parent).
struct Children(Vec<PathBuf>);

impl Children {
    fn make(parent: &Path, names: &[&str]) -> Children {
        Children(
            names
                .iter()
                .map(|n| {
                    let p = parent.join(n);
                    std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
                    p
                })
                .collect(),
        )
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir(p);
        }
    }
}

fn server() -> Peer {
    peers::python_server().ip([127, 0, 0, 2].into()).json_response().spawn()
}

fn start(test: &str, server: &Peer, policy: &str) -> Option<Watched> {
    let policy = policy.replace("{URL}", &server.url());
    Watched::start_with(test, DaemonOpts { ports: Some(server.addr().port().to_string()), policy: Some(policy), ..Default::default() })
}

fn call_error(out: &Value) -> (i64, String) {
    assert_eq!(out["ok"], false, "expected a refusal: {out}");
    (out["error"]["code"].as_i64().unwrap_or_default(), out["error"]["message"].as_str().unwrap_or_default().to_string())
}

fn recorded_tools(server: &Peer) -> Vec<String> {
    server.recorded_calls().iter().filter_map(|c| c["tool"].as_str().map(str::to_string)).collect()
}

const AGENTS: &str = r##"
version = 1
mode = "enforce"
shadow = "allow"
contact = "#mcp-governance"

[[server]]
name = "records"
url = "{URL}"

[[agent]]
name = "reader"
cgroup = "**/reader"
tools = ["echo", "lookup_*", "read_*"]

[[agent]]
name = "ops"
cgroup = "**/ops"

[[rule]]
id = "no-ssh"
tools = ["read_file"]
action = "deny"
message = "SSH keys stay on the host"
[[rule.when]]
pointer = "/path"
matches = '(^|/)\.ssh(/|$)'
"##;

#[test]
fn deny_and_per_agent_tool_lists() {
    let server = server();
    let Some(w) = start("deny_and_per_agent_tool_lists", &server, AGENTS) else { return };
    let kids = Children::make(w.cgroup(), &["reader", "ops"]);

    // Allowed call passes.
    let out = Client::python(&server.url()).cgroup(&kids.0[0]).call("read_file", json!({"path": "/etc/hostname"})).run();
    assert_eq!(out.steps()[0]["ok"], true, "{:?}", out.lines);

    // Denied by rule: a JSON-RPC error with the same id; the server never sees it.
    let out = Client::python(&server.url()).cgroup(&kids.0[0]).call("read_file", json!({"path": "/root/.ssh/id_rsa"})).run();
    let (code, msg) = call_error(&out.steps()[0]);
    assert_eq!(code, -32001);
    assert!(msg.contains("SSH keys stay on the host"), "{msg}");
    assert!(!server.recorded_calls().iter().any(|c| c["arguments"]["path"] == "/root/.ssh/id_rsa"), "server saw the denied call");

    // Denied by the agent's tool list (reader may not delete).
    let out = Client::python(&server.url()).cgroup(&kids.0[0]).call("delete_records", json!({"table": "t"})).run();
    assert_eq!(call_error(&out.steps()[0]).0, -32001);
    assert!(!recorded_tools(&server).contains(&"delete_records".to_string()));

    // tools/list differs per agent.
    let reader = Client::python(&server.url()).cgroup(&kids.0[0]).list().run();
    let ops = Client::python(&server.url()).cgroup(&kids.0[1]).list().run();
    let names = |o: &peers::ClientOutput| o.steps()[0]["tools"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(names(&reader), vec!["echo", "lookup_customer", "read_file"]);
    assert!(names(&ops).contains(&"delete_records".to_string()) && names(&ops).len() == 5, "{:?}", names(&ops));

    // The audit explains each decision; --decision filters.
    let recs = w.daemon.wait_audit("deny records", |r| r.iter().filter(|x| x.decision.as_ref().is_some_and(|d| d.effective.as_str() == "block")).count() >= 2);
    let denied: Vec<_> = recs.iter().filter(|r| r.decision.as_ref().is_some_and(|d| d.action.as_str() == "deny")).collect();
    assert!(denied.iter().any(|r| r.decision.as_ref().unwrap().rules.contains(&"no-ssh".to_string())), "{denied:#?}");
    assert!(denied.iter().any(|r| r.decision.as_ref().unwrap().rules.iter().any(|x| x == "agent:reader")), "{denied:#?}");
    let cli = w.daemon.cli(&["audit", "--json", "--decision", "deny"]);
    let lines = String::from_utf8_lossy(&cli.stdout).lines().count();
    assert_eq!(lines, denied.len(), "{}", String::from_utf8_lossy(&cli.stdout));
    let list = w.daemon.list();
    assert_eq!(list[0].registered.as_deref(), Some("records"));
}

#[test]
fn rate_limit_trips_and_recovers() {
    let server = server();
    let policy = format!("{AGENTS}\n[[rule]]\nid = \"echo-rate\"\ntools = [\"echo\"]\naction = \"rate_limit\"\nrate = {{ count = 2, per = \"minute\", scope = \"tool\" }}\n");
    let Some(w) = start("rate_limit_trips_and_recovers", &server, &policy) else { return };
    let out = Client::python(&server.url()).cgroup(w.cgroup()).call("echo", json!({"text": "1"})).call("echo", json!({"text": "2"})).call("echo", json!({"text": "3"})).run();
    let steps = out.steps();
    assert_eq!(steps[0]["ok"], true);
    assert_eq!(steps[1]["ok"], true);
    let (code, msg) = call_error(&steps[2]);
    assert_eq!(code, -32002, "{msg}");
    assert_eq!(recorded_tools(&server).iter().filter(|t| *t == "echo").count(), 2, "the third call never reached the server");
    // The error says when to retry; after that, calls go through again.
    let secs: u64 = msg.split("retry in ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no retry hint: {msg}"));
    assert!((1..=30).contains(&secs), "{msg}");
    std::thread::sleep(std::time::Duration::from_millis(secs * 1000 + 300));
    let out = Client::python(&server.url()).cgroup(w.cgroup()).call("echo", json!({"text": "4"})).run();
    assert_eq!(out.steps()[0]["ok"], true, "{:?}", out.lines);
    let recs = w.daemon.audit();
    assert!(recs.iter().any(|r| r.decision.as_ref().is_some_and(|d| d.action.as_str() == "rate_limit" && d.effective.as_str() == "block")));
}

/// RE-007, an agent loop: the same call repeated within the window. A `scope = "call"`
/// limit stops the sixth identical call (arguments compared canonically) while a call with
/// other arguments goes on.
#[test]
fn an_agent_loop_of_identical_calls_is_stopped_and_other_calls_continue() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/threats.jsonl")).expect("threats.jsonl");
    let case: Value = text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|c| c["id"] == "RE-007").expect("RE-007");
    assert!(case["expected"]["details"].as_str().is_some_and(|d| d.contains("same tool + canonical args")), "{case}");
    let server = server();
    let policy = format!("{AGENTS}\n[[rule]]\nid = \"no-loops\"\naction = \"rate_limit\"\nrate = {{ count = 5, per = \"minute\", scope = \"call\" }}\n");
    let Some(w) = start("an_agent_loop_of_identical_calls_is_stopped_and_other_calls_continue", &server, &policy) else { return };
    let mut client = Client::python(&server.url()).cgroup(w.cgroup());
    for _ in 0..8 {
        client = client.call("echo", json!({"text": "Printer on floor 3 offline"}));
    }
    let out = client.call("echo", json!({"text": "Printer on floor 4 offline"})).run();
    let steps = out.steps();
    for (i, step) in steps.iter().enumerate().take(5) {
        assert_eq!(step["ok"], true, "identical call {i}: {step}");
    }
    for step in &steps[5..8] {
        let (code, msg) = call_error(step);
        assert_eq!(code, -32002, "{msg}");
        assert!(msg.contains("no-loops"), "{msg}");
    }
    assert_eq!(steps[8]["ok"], true, "a call with other arguments was stopped: {}", steps[8]);
    let texts = server.recorded_texts();
    assert_eq!(texts.iter().filter(|t| t.contains("floor 3")).count(), 5, "{texts:?}");
    assert_eq!(texts.iter().filter(|t| t.contains("floor 4")).count(), 1, "{texts:?}");
}

#[test]
fn rollout_modes_audit_warn_enforce() {
    for (mode, blocked, alerted) in [("audit", false, false), ("warn", false, true), ("enforce", true, false)] {
        let server = server();
        let policy = AGENTS.replace("mode = \"enforce\"", &format!("mode = \"{mode}\""));
        let Some(w) = start("rollout_modes_audit_warn_enforce", &server, &policy) else { return };
        let out = Client::python(&server.url()).cgroup(w.cgroup()).call("read_file", json!({"path": "/home/a/.ssh/id_ed25519"})).run();
        assert_eq!(out.steps()[0]["ok"] == false, blocked, "{mode}: {:?}", out.lines);
        assert_eq!(recorded_tools(&server).contains(&"read_file".to_string()), !blocked, "{mode}");
        let recs = w.daemon.wait_audit("read_file record", |r| r.iter().any(|x| x.name.as_deref() == Some("read_file") && x.status != CallStatus::Pending));
        let rec = recs.iter().find(|x| x.name.as_deref() == Some("read_file")).unwrap();
        let d = rec.decision.as_ref().expect("decision recorded");
        assert_eq!(d.action.as_str(), "deny", "{mode}");
        assert_eq!(d.mode.as_str(), mode);
        assert_eq!(d.effective.as_str(), if blocked { "block" } else { "forward" }, "{mode}");
        assert_eq!(!rec.alerts.is_empty(), alerted, "{mode}: {:?}", rec.alerts);
    }
}

#[test]
fn shadow_servers_alert_and_block() {
    for shadow in ["alert", "block"] {
        let server = server();
        // The registry names another server: this one is shadow.
        let policy = AGENTS.replace("shadow = \"allow\"", &format!("shadow = \"{shadow}\"")).replace("{URL}", "http://10.9.9.9:1/mcp");
        let Some(w) = start("shadow_servers_alert_and_block", &server, &policy) else { return };
        let out = Client::python(&server.url()).cgroup(w.cgroup()).call("echo", json!({"text": "shadow"})).try_run();
        let recs = w.daemon.wait_audit("shadow records", |r| r.iter().any(|x| x.decision.as_ref().is_some_and(|d| d.shadow)));
        assert!(w.daemon.list().iter().all(|s| s.registered.is_none()));
        if shadow == "alert" {
            assert_eq!(out.steps().last().unwrap()["text"], "shadow", "{:?}", out.lines);
            assert!(recs.iter().any(|r| r.alerts.iter().any(|a| a.contains("shadow"))), "{recs:#?}");
        } else {
            assert!(recorded_tools(&server).is_empty(), "nothing reaches a blocked shadow server");
            assert!(recs.iter().any(|r| r.decision.as_ref().is_some_and(|d| d.effective.as_str() == "block")));
        }
        let table = String::from_utf8_lossy(&w.daemon.cli(&["list"]).stdout).to_string();
        assert!(table.contains("SHADOW"), "{table}");
    }
}

const APPROVAL: &str = r#"
version = 1
mode = "enforce"
shadow = "allow"
approval_timeout_secs = 3

[[rule]]
id = "approve-deletes"
tools = ["delete_records"]
action = "require_approval"
message = "deleting records is irreversible"

# The agents here run as root, like the test that approves: name the approver, or
# mcpwatch refuses the answer as self-approval.
[approvals]
approvers = ["uid:0"]
"#;

#[test]
fn approval_approve_deny_timeout_and_replay() {
    let server = server();
    let Some(w) = start("approval_approve_deny_timeout_and_replay", &server, APPROVAL) else { return };
    let url = server.url();
    let cg = w.cgroup().to_path_buf();
    let run = move |table: &str| {
        let (url, cg, table) = (url.clone(), cg.clone(), table.to_string());
        std::thread::spawn(move || Client::python(&url).cgroup(&cg).timeout(std::time::Duration::from_secs(30)).call("delete_records", json!({"table": table})).run())
    };

    // Approve: the held call goes through once.
    let t = run("orders");
    let held = w.daemon.wait_pending(1);
    assert_eq!(held[0].tool.as_deref(), Some("delete_records"));
    assert_eq!(held[0].arguments, Some(json!({"table": "orders"})));
    let out = w.daemon.cli(&["approve", &held[0].id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let res = t.join().unwrap();
    assert_eq!(res.steps()[0]["ok"], true, "{:?}", res.lines);
    assert_eq!(server.recorded_calls().len(), 1);
    // Single use: approving again fails.
    assert_eq!(w.daemon.cli(&["approve", &held[0].id]).status.code(), Some(2));

    // Replay with changed arguments: held again, not covered by the earlier approval.
    let t = run("customers");
    let held2 = w.daemon.wait_pending(1);
    assert_ne!(held2[0].id, held[0].id);
    assert_eq!(held2[0].arguments, Some(json!({"table": "customers"})));
    assert_ne!(held2[0].args_hash, held[0].args_hash);
    // Deny with a reason: the client gets the error, the server nothing.
    assert!(w.daemon.cli(&["deny", &held2[0].id, "--reason", "not during business hours"]).status.success());
    let res = t.join().unwrap();
    let (code, msg) = call_error(&res.steps()[0]);
    assert_eq!(code, -32003);
    assert!(msg.contains("not during business hours"), "{msg}");
    assert_eq!(server.recorded_calls().len(), 1);

    // Nobody answers: denied after approval_timeout_secs.
    let t = run("orders");
    w.daemon.wait_pending(1);
    let res = t.join().unwrap();
    let (code, msg) = call_error(&res.steps()[0]);
    assert_eq!(code, -32003);
    assert!(msg.contains("none came within 3 s"), "{msg}");
    assert_eq!(server.recorded_calls().len(), 1);

    // A reload while a call is held: the call is denied, not left for an approval given
    // under a policy that may no longer hold it (or may deny it outright).
    let t = run("orders");
    let held3 = w.daemon.wait_pending(1);
    let out = w.daemon.cli(&["policy", "reload"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 call(s) held for approval were denied"), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let res = t.join().unwrap();
    let (code, msg) = call_error(&res.steps()[0]);
    assert_eq!(code, -32003);
    assert!(msg.contains("policy was reloaded"), "{msg}");
    assert_eq!(w.daemon.cli(&["approve", &held3[0].id]).status.code(), Some(2), "nothing left to approve");
    assert_eq!(server.recorded_calls().len(), 1);

    let recs = w.daemon.wait_audit("four approval outcomes", |r| r.iter().filter(|x| x.decision.as_ref().and_then(|d| d.approval.as_ref()).is_some()).count() == 4);
    let outcomes: Vec<String> = recs.iter().filter_map(|x| x.decision.as_ref().and_then(|d| d.approval.clone())).collect();
    assert!(outcomes[0].starts_with("approved by uid 0"), "{outcomes:?}");
    assert!(outcomes[1].starts_with("denied by uid 0"), "{outcomes:?}");
    assert!(outcomes[2].starts_with("timed out"), "{outcomes:?}");
    assert!(outcomes[3].starts_with("denied by mcpwatch") && outcomes[3].contains("reloaded"), "{outcomes:?}");
}

#[test]
fn policy_typos_are_rejected_and_reload_keeps_the_old_policy() {
    let server = server();
    let Some(w) = start("policy_typos_are_rejected_and_reload_keeps_the_old_policy", &server, AGENTS) else { return };
    // `mcpwatch policy check` points at the typo.
    let bad = AGENTS.replace("action = \"deny\"", "acton = \"deny\"");
    let bad_path = w.daemon.policy_path().with_file_name("bad.toml");
    std::fs::write(&bad_path, &bad).unwrap();
    let out = w.daemon.cli(&["policy", "check", bad_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = bad.lines().position(|l| l.starts_with("acton")).unwrap() + 1;
    assert!(err.contains(&format!("bad.toml:{line}:1")), "{err}");
    assert!(err.contains("acton"), "{err}");

    // The daemon's own file gets the typo; reload is rejected; the old policy still denies.
    std::fs::write(w.daemon.policy_path(), &bad).unwrap();
    let out = w.daemon.cli(&["policy", "reload"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stdout));
    let st = w.daemon.status();
    assert!(st.policy_error.as_deref().unwrap_or_default().contains(&format!(":{line}:1")), "{st:?}");
    let out = Client::python(&server.url()).cgroup(w.cgroup()).call("read_file", json!({"path": "/root/.ssh/id_rsa"})).run();
    assert_eq!(call_error(&out.steps()[0]).0, -32001, "old policy still in force");

    // Fixed file + SIGHUP: the new policy (no rule) lets the call through.
    std::fs::write(w.daemon.policy_path(), "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n").unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(w.daemon.pid() as i32), nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while w.daemon.status().policy_error.is_some() {
        assert!(std::time::Instant::now() < deadline, "SIGHUP reload did not happen");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = Client::python(&server.url()).cgroup(w.cgroup()).call("read_file", json!({"path": "/root/.ssh/id_rsa"})).run();
    assert_eq!(out.steps()[0]["ok"], true, "{:?}", out.lines);
}
