//! Governance bypasses an agent inside the watched cgroup could use, closed: approving
//! its own held call, brute-forcing short secrets from unsalted audit hashes, secrets
//! on its command line landing in the store (and a world-readable store), and `..`
//! games against path rules. Real daemon, real SDK peers, real eBPF where the process
//! identity matters.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mcpwatch_api::{AuditRecord, CallStatus};
use mcpwatch_mcp::canonical::{canonical_json, sha256_hex};
use mcpwatch_mcp::keyed::HashKey;
use mcpwatch_tests::daemon::{bin, Daemon, DaemonOpts};
use mcpwatch_tests::harness::Watched;
use mcpwatch_tests::peers::{self, Client, Peer};
use serde_json::{json, Value};

/// `nobody` / `nogroup` on Debian and Ubuntu: an operator account that is not the
/// agent's (the agents in these tests run as root).
const NOBODY: u32 = 65534;

fn server() -> Peer {
    peers::python_server().ip([127, 0, 0, 2].into()).json_response().spawn()
}

/// A watched daemon whose control socket also admits `nogroup` (so `nobody` can answer).
fn start(test: &str, server: &Peer, policy: &str) -> Option<Watched> {
    let w = Watched::start_with(
        test,
        DaemonOpts {
            ports: Some(server.addr().port().to_string()),
            policy: Some(policy.to_string()),
            config: Some("control_group = \"nogroup\"\n".into()),
            ..Default::default()
        },
    )?;
    // The harness keeps the socket in a private temp dir: let `nobody` reach it.
    let dir = w.daemon.socket.parent().expect("socket dir");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).expect("chmod socket dir");
    Some(w)
}

/// Run `mcpwatch` as `uid` (root when `None`), inside `cgroup` when given.
fn cli_as(d: &Daemon, uid: Option<u32>, cgroup: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("mcpwatch"));
    cmd.arg("--socket").arg(&d.socket).args(args).stdin(Stdio::null());
    // Into the cgroup first (root may write cgroup.procs), then drop to `uid`.
    if let Some(cg) = cgroup {
        peers::move_into_cgroup(&mut cmd, cg);
    }
    if let Some(uid) = uid {
        // SAFETY: runs between fork and exec; only async-signal-safe syscalls.
        unsafe {
            cmd.pre_exec(move || {
                let id = |e: nix::Error| std::io::Error::from_raw_os_error(e as i32);
                nix::unistd::setgroups(&[]).map_err(id)?;
                nix::unistd::setgid(nix::unistd::Gid::from_raw(uid)).map_err(id)?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).map_err(id)
            });
        }
    }
    cmd.output().expect("run mcpwatch")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A `delete_records` call from the agent (root, inside the watched cgroup), held.
fn held_call(w: &Watched, server: &Peer) -> (std::thread::JoinHandle<peers::ClientOutput>, String) {
    let (url, cg) = (server.url(), w.cgroup().to_path_buf());
    let t = std::thread::spawn(move || Client::python(&url).cgroup(&cg).timeout(Duration::from_secs(30)).call("delete_records", json!({"table": "orders"})).run());
    let held = w.daemon.wait_pending(1);
    (t, held[0].id.clone())
}

fn approval_outcome(d: &Daemon) -> String {
    let recs = d.wait_audit("an approval outcome", |r| r.iter().any(|x| x.decision.as_ref().is_some_and(|d| d.approval.is_some())));
    recs.iter().find_map(|x| x.decision.as_ref().and_then(|d| d.approval.clone())).unwrap_or_default()
}

const APPROVAL: &str = r#"
version = 1
mode = "enforce"
shadow = "allow"
approval_timeout_secs = 20

[[rule]]
id = "approve-deletes"
tools = ["delete_records"]
action = "require_approval"
"#;

#[test]
fn self_approval_is_refused_from_the_agents_uid_and_from_inside_the_watched_cgroup() {
    let server = server();
    let Some(w) = start("self_approval_is_refused", &server, APPROVAL) else { return };
    let (t, id) = held_call(&w, &server);

    // The agent's uid (root here), even from outside the watched cgroup.
    let out = cli_as(&w.daemon, None, None, &["approve", &id]);
    assert_eq!(out.status.code(), Some(2), "self-approval must fail: {}", stderr(&out));
    assert!(stderr(&out).contains("refused") && stderr(&out).contains("self-approval"), "{}", stderr(&out));

    // Another uid, but a process inside the watched cgroup.
    let out = cli_as(&w.daemon, Some(NOBODY), Some(w.cgroup()), &["approve", &id]);
    assert_eq!(out.status.code(), Some(2), "approval from the watched cgroup must fail: {}", stderr(&out));
    assert!(stderr(&out).contains("inside the watched cgroup"), "{}", stderr(&out));
    // Nor may it deny another agent's call.
    let out = cli_as(&w.daemon, Some(NOBODY), Some(w.cgroup()), &["deny", &id]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // Accepting changed tool definitions is an operator's decision too: an agent inside
    // the watched cgroup cannot accept its own server's rug pull.
    let out = cli_as(&w.daemon, Some(NOBODY), Some(w.cgroup()), &["pin", "accept", &server.url()]);
    assert_eq!(out.status.code(), Some(2), "pin accept from the watched cgroup must fail: {}", stderr(&out));
    assert!(stderr(&out).contains("inside the watched cgroup") && stderr(&out).contains("stay pinned"), "{}", stderr(&out));
    let out = cli_as(&w.daemon, Some(NOBODY), None, &["pin", "accept", &server.url()]);
    assert!(out.status.success(), "an operator outside the cgroup may accept: {}", stderr(&out));

    // Nothing was forwarded and the call is still waiting.
    assert!(server.recorded_calls().is_empty());
    assert_eq!(w.daemon.wait_pending(1)[0].id, id);

    // An operator: another uid, outside the watched cgroup.
    let out = cli_as(&w.daemon, Some(NOBODY), None, &["approve", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let res = t.join().unwrap();
    assert_eq!(res.steps()[0]["ok"], true, "{:?}", res.lines);
    assert_eq!(server.recorded_calls().len(), 1);
    let outcome = approval_outcome(&w.daemon);
    assert!(outcome.starts_with("approved by uid 65534 (nobody), pid "), "{outcome}");
    assert!(outcome.contains(&format!("exe {}", bin("mcpwatch").display())), "{outcome}");
}

#[test]
fn named_approver_is_accepted_and_recorded_with_uid_user_pid_exe() {
    let server = server();
    let policy = format!("{APPROVAL}\n[approvals]\napprovers = [\"user:nobody\"]\n");
    let Some(w) = start("named_approver_is_accepted", &server, &policy) else { return };
    let (t, id) = held_call(&w, &server);

    // Not named: refused, even root outside the watched cgroup.
    let out = cli_as(&w.daemon, None, None, &["approve", &id]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not among the policy's approvers (user:nobody)"), "{}", stderr(&out));

    // Named: accepted (the operator chose this account; here from inside the scope).
    let out = cli_as(&w.daemon, Some(NOBODY), Some(w.cgroup()), &["approve", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let res = t.join().unwrap();
    assert_eq!(res.steps()[0]["ok"], true, "{:?}", res.lines);
    let outcome = approval_outcome(&w.daemon);
    let pid_part = outcome.split(", pid ").nth(1).and_then(|r| r.split(',').next()).unwrap_or_default();
    assert!(pid_part.parse::<u32>().is_ok_and(|p| p > 1), "pid recorded: {outcome}");
    assert!(outcome.starts_with("approved by uid 65534 (nobody), pid "), "{outcome}");
    assert!(outcome.contains(&format!("exe {}", bin("mcpwatch").display())), "{outcome}");
}

/// Audit mode: arguments go out (and are hashed) as sent.
const AUDIT_ONLY: &str = "version = 1\nmode = \"audit\"\nshadow = \"allow\"\n";

fn static_daemon(server: &Peer, state_dir: Option<PathBuf>, policy: &str) -> Daemon {
    Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), state_dir, policy: Some(policy.to_string()), ..Default::default() })
}

fn echo_hash(d: &Daemon, text: &str) -> String {
    let url = format!("http://127.0.0.1:{}/mcp", d.port);
    Client::python(&url).call("echo", json!({ "text": text })).run();
    let recs = d.wait_audit("the echo call", |r| r.iter().any(|x| x.name.as_deref() == Some("echo") && x.status == CallStatus::Ok));
    let rec: &AuditRecord = recs.iter().find(|x| x.name.as_deref() == Some("echo")).expect("echo record");
    assert!(rec.result_hash.is_some(), "{rec:?}");
    rec.args_hash.clone().expect("args_hash")
}

#[test]
fn args_hash_is_keyed_per_host_and_stable_across_restarts() {
    let server = peers::python_server().json_response().host_check(peers::HostCheck::Off).spawn();
    let ssn = "078051120";
    let canonical = canonical_json(&json!({ "text": ssn }));
    let keep = tempfile::tempdir().expect("tempdir");
    let state = keep.path().join("state");

    let mut a = static_daemon(&server, Some(state.clone()), AUDIT_ONLY);
    let h1 = echo_hash(&a, ssn);
    // Not the plain sha256 the old code stored (which a 10^9 loop reverses).
    assert_ne!(h1, sha256_hex(canonical.as_bytes()));
    // It is the HMAC under the host key the daemon keeps in its state dir: without
    // that key, enumerating SSNs gives nothing to compare with.
    let key = std::fs::read(state.join("hash.key")).expect("hash.key");
    assert_eq!(key.len(), 32);
    assert_eq!(h1, HashKey::new(&key).hex_mac(canonical.as_bytes()));
    assert_ne!(h1, HashKey::new(&[0u8; 32]).hex_mac(canonical.as_bytes()));

    // Another host (state dir): another hash for the same arguments.
    let b = static_daemon(&server, None, AUDIT_ONLY);
    assert_ne!(echo_hash(&b, ssn), h1);

    // Same host after a restart: the same hash (correlation and pinning keep working).
    a.terminate();
    drop(a);
    let a2 = static_daemon(&server, Some(state), AUDIT_ONLY);
    let recs = a2.audit();
    assert!(recs.iter().any(|r| r.args_hash.as_deref() == Some(h1.as_str())), "old record still there");
    let url = format!("http://127.0.0.1:{}/mcp", a2.port);
    Client::python(&url).call("echo", json!({ "text": ssn })).run();
    a2.wait_audit("the same hash after restart", |r| r.iter().filter(|x| x.args_hash.as_deref() == Some(h1.as_str())).count() == 2);
}

#[test]
fn redacted_arguments_are_hashed_in_their_redacted_form() {
    let server = peers::python_server().json_response().host_check(peers::HostCheck::Off).spawn();
    let d = static_daemon(&server, None, "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n");
    let h = echo_hash(&d, "my SSN is 372-81-4419");
    // What left the host is the redacted text; the hash is of that.
    let sent = server.recorded_calls()[0]["arguments"]["text"].as_str().unwrap_or_default().to_string();
    assert!(!sent.contains("372-81-4419"), "{sent}");
    let key = std::fs::read(d.state_dir.join("hash.key")).expect("hash.key");
    assert_eq!(h, HashKey::new(&key).hex_mac(canonical_json(&json!({ "text": sent })).as_bytes()));
}

/// Every file under `dir`, recursively (symlinks not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let e = e.expect("dir entry");
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            }
            out.push(e.path());
        }
    }
    out
}

#[test]
fn argv_secrets_never_reach_the_store() {
    let server = server();
    let Some(w) = Watched::start_with(
        "argv_secrets_never_reach_the_store",
        DaemonOpts { ports: Some(server.addr().port().to_string()), policy: Some(AUDIT_ONLY.into()), ..Default::default() },
    ) else {
        return;
    };
    const TOKEN: &str = "Zq8vPl2mXk4rT9wBplanted";
    const PASSWORD: &str = "hunter2-Planted-Pw!";
    const MARKER: &str = "argv-marker-0c1d2e";
    // An agent started with secrets on its command line (python3 -c SCRIPT ARGS...).
    let script = r#"
import json, sys, urllib.request
url = sys.argv[1]
def post(body, sid=None):
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if sid:
        h["Mcp-Session-Id"] = sid
        h["MCP-Protocol-Version"] = "2025-06-18"
    r = urllib.request.urlopen(urllib.request.Request(url, json.dumps(body).encode(), h), timeout=20)
    return r.headers.get("mcp-session-id"), r.read().decode()
sid, _ = post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "argv-agent", "version": "1"}}})
post({"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
_, out = post({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}, sid)
print(json.dumps({"ok": True, "out": out}))
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script, &server.url(), &format!("--token={TOKEN}"), "--password", PASSWORD, &format!("--label={MARKER}")]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    peers::move_into_cgroup(&mut cmd, w.cgroup());
    let out = cmd.output().expect("run the agent");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"ok\": true"), "{}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    let recs = w.daemon.wait_audit("the agent's call", |r| r.iter().any(|x| x.name.as_deref() == Some("echo") && x.status == CallStatus::Ok));

    // The record keeps the command line, redacted.
    let rec = recs.iter().find(|x| x.name.as_deref() == Some("echo")).expect("echo record");
    let argv = rec.process.as_ref().map(|p| p.cmdline.join(" ")).unwrap_or_default();
    assert!(argv.contains(MARKER), "harmless arguments stay: {argv}");
    assert!(argv.contains("--token=<") && argv.contains("--password <"), "{argv}");
    // Let the store settle, then search every byte of it.
    w.daemon.audit();
    std::thread::sleep(Duration::from_millis(700));
    let mut marker_seen = false;
    for f in files_under(&w.daemon.state_dir) {
        if !f.is_file() {
            continue;
        }
        // Compressed audit chunks are read as well as the raw bytes.
        let bytes = mcpwatch_tests::daemon::readable_bytes(&std::fs::read(&f).unwrap_or_default());
        let has = |needle: &str| bytes.windows(needle.len()).any(|x| x == needle.as_bytes());
        assert!(!has(TOKEN) && !has(PASSWORD), "argv secret written to {}", f.display());
        marker_seen |= has(MARKER);
    }
    assert!(marker_seen, "the command line is in the store (so the search above can find argv text)");
}

#[test]
fn state_dir_and_files_are_private_under_umask_022() {
    let server = peers::python_server().json_response().host_check(peers::HostCheck::Off).spawn();
    // The daemon inherits this process's umask at spawn.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let d = static_daemon(&server, None, AUDIT_ONLY);
    nix::sys::stat::umask(old);
    echo_hash(&d, "fill the store");
    d.audit();
    let mode = |p: &Path| std::fs::symlink_metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&d.state_dir), 0o700, "state dir");
    let all = files_under(&d.state_dir);
    assert!(all.iter().any(|p| p.ends_with("hash.key")), "{all:?}");
    assert!(all.len() >= 4, "store, CA and key files: {all:?}");
    for p in all {
        let ft = std::fs::symlink_metadata(&p).expect("metadata").file_type();
        if ft.is_dir() {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
        } else if ft.is_file() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        } else {
            assert!(ft.is_symlink() || ft.is_socket(), "{}", p.display());
        }
    }
}

const PATHS: &str = r#"
version = 1
mode = "enforce"
shadow = "allow"

[[rule]]
id = "no-traversal"
tools = ["read_file"]
action = "deny"
message = "path leaves the working directory"
[[rule.when]]
pointer = "/path"
matches = '(^|/)\.\.(/|$)'

[[rule]]
id = "no-etc"
tools = ["read_file"]
action = "deny"
message = "nothing under /etc"
[[rule.when]]
pointer = "/path"
matches = '^/etc(/|$)'
"#;

#[test]
fn path_rules_match_normalised_paths() {
    let server = peers::python_server().json_response().host_check(peers::HostCheck::Off).spawn();
    let d = static_daemon(&server, None, PATHS);
    let url = format!("http://127.0.0.1:{}/mcp", d.port);
    let out = Client::python(&url)
        .call("read_file", json!({"path": "/tmp/../etc/passwd"}))
        .call("read_file", json!({"path": "//etc/shadow"}))
        .call("read_file", json!({"path": "docs/../README.md"}))
        .call("read_file", json!({"path": "docs/../../secret"}))
        .run();
    let steps = out.steps();
    for (i, rule) in [(0, "no-etc"), (1, "no-etc"), (3, "no-traversal")] {
        assert_eq!(steps[i]["ok"], false, "step {i} must be refused: {}", steps[i]);
        assert_eq!(steps[i]["error"]["code"], -32001, "{}", steps[i]);
        let recs = d.audit();
        assert!(recs.iter().any(|r| r.decision.as_ref().is_some_and(|x| x.rules.iter().any(|x| x == rule))), "{rule}");
    }
    assert_eq!(steps[2]["ok"], true, "an in-root `..` is not traversal: {}", steps[2]);
    let forwarded: Vec<Value> = server.recorded_calls().iter().map(|c| c["arguments"]["path"].clone()).collect();
    assert_eq!(forwarded, vec![json!("docs/../README.md")], "only the in-root path reached the server (as sent)");
}

/// Containment as an SRE writes it against normalised paths: absolute and outside the
/// project, relative and escaping it, or carrying a NUL.
const CONTAINMENT: &str = r#"
version = 1
mode = "enforce"
shadow = "allow"

[[rule]]
id = "outside-project"
tools = ["read_file"]
action = "deny"
[[rule.when]]
pointer = "/path"
matches = '^/'
[[rule.when]]
pointer = "/path"
not_matches = '^/home/alice/project(/|$)'

[[rule]]
id = "escapes-project"
tools = ["read_file"]
action = "deny"
[[rule.when]]
pointer = "/path"
matches = '^\.\.(/|$)'

[[rule]]
id = "no-nul"
tools = ["read_file"]
action = "deny"
[[rule.when]]
pointer = "/path"
matches = '\x00'
"#;

/// `params.arguments` of a threat case's message.
fn case_arguments(id: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/threats.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let case: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("threat case {id} missing"));
    let msg: Value = serde_json::from_str(case["input"]["message"].as_str().expect("message")).expect("message JSON");
    msg["params"]["arguments"].clone()
}

#[test]
fn traversal_threat_cases_are_blocked_on_the_normalised_path() {
    let server = peers::python_server().json_response().host_check(peers::HostCheck::Off).spawn();
    let d = static_daemon(&server, None, CONTAINMENT);
    let url = format!("http://127.0.0.1:{}/mcp", d.port);
    let cases = [("TR-001", "outside-project"), ("TR-002", "outside-project"), ("TR-007", "no-nul")];
    let mut client = Client::python(&url);
    for (id, _) in cases {
        client = client.call("read_file", case_arguments(id));
    }
    let out = client
        .call("read_file", json!({"path": "/home/alice/project/docs/../README.md"}))
        .call("read_file", json!({"path": "src/../../../etc/passwd"}))
        .run();
    let steps = out.steps();
    for (i, (id, rule)) in cases.iter().enumerate() {
        assert_eq!(steps[i]["ok"], false, "{id} must be blocked: {}", steps[i]);
        assert_eq!(steps[i]["error"]["code"], -32001, "{id}: {}", steps[i]);
        assert!(steps[i]["error"]["message"].as_str().unwrap_or_default().contains(rule) || d.audit().iter().any(|r| r.decision.as_ref().is_some_and(|x| x.rules.iter().any(|x| x == rule))), "{id}: {rule}");
    }
    assert_eq!(steps[3]["ok"], true, "inside the project: {}", steps[3]);
    assert_eq!(steps[4]["ok"], false, "relative escape: {}", steps[4]);
    let forwarded: Vec<Value> = server.recorded_calls().iter().map(|c| c["arguments"]["path"].clone()).collect();
    assert_eq!(forwarded, vec![json!("/home/alice/project/docs/../README.md")]);
}
