//! Agent scope end to end: an agent (a built-in MCP client name, or a policy `[[agent]]`
//! pattern) and its descendants have every TCP connection redirected, so an MCP server on
//! a port outside the configured port list is governed for them; other processes in the
//! same cgroup keep the port scope. The port list here is `1`: nothing the tests use is in
//! it, so with port-only scope (the old behaviour) every assertion about interception fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mcpwatch_api::{AuditRecord, CallStatus};
use mcpwatch_tests::daemon::DaemonOpts;
use mcpwatch_tests::harness::{RawBehaviour, RawServer, Watched};
use mcpwatch_tests::peers::{self, Client, Peer};
use serde_json::{json, Value};

/// The test server's port is never in this list.
const PORTS: &str = "1";

const POLICY: &str = r##"
version = 1
mode = "enforce"
shadow = "allow"

[[agent]]
name = "scripted"
exe = "**/mcpw-agent-sh"

[[rule]]
id = "no-deletes"
tools = ["delete_records"]
action = "deny"
message = "agents may not delete records"
"##;

/// Built-in names off, one extra name: tests that assert a process is NOT an agent must
/// not depend on what the test runner descends from (run under an AI agent, every test
/// process would be that agent's descendant).
const NO_BUILTINS: &str = "[scope]\nbuiltin_agents = false\nagent_comms = [\"mcpw-agent-t\"]\n";

fn start(test: &str, config: Option<&str>) -> Option<Watched> {
    Watched::start_with(
        test,
        DaemonOpts {
            ports: Some(PORTS.into()),
            policy: Some(POLICY.into()),
            config: config.map(str::to_string),
            ..Default::default()
        },
    )
}

/// An MCP server on 127.0.0.2 with an OS-assigned port (not in [`PORTS`]).
fn server() -> Peer {
    let s = peers::python_server().ip([127, 0, 0, 2].into()).json_response().spawn();
    assert_ne!(s.addr().port(), 1);
    s
}

/// A private directory for renamed binaries, removed on drop.
struct Bin(tempfile::TempDir);

impl Bin {
    fn new() -> Bin {
        Bin(tempfile::Builder::new().prefix("mcpwatch-scope-").tempdir().expect("tempdir"))
    }

    /// A symlink named `name` to `target`: exec through it gives the process that comm.
    fn link(&self, name: &str, target: &Path) -> PathBuf {
        let p = self.0.path().join(name);
        std::os::unix::fs::symlink(target, &p).expect("symlink");
        p
    }

    /// A copy of `target` named `name`: its exe path (`/proc/<pid>/exe`) is the copy.
    fn copy(&self, name: &str, target: &Path) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::copy(target, &p).expect("copy binary");
        p
    }
}

/// Runs `program args...` in `cgroup` and returns its stdout lines as JSON (the SDK
/// client scripts print one JSON object per step); panics with stderr on failure.
fn run_json(cgroup: &Path, program: &Path, args: &[String]) -> Vec<Value> {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(peers::peers_dir()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "NO_PROXY", "no_proxy"] {
        cmd.env_remove(var);
    }
    peers::move_into_cgroup(&mut cmd, cgroup);
    let out = cmd.output().unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stdout}\n--- stderr ---\n{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Arguments of the SDK client scripts: connect to `url`, call echo then delete_records.
fn client_args(script: &Path, steps_file: &Path, url: &str) -> Vec<String> {
    let steps = json!([
        {"op": "call", "tool": "echo", "arguments": {"text": "from an agent"}},
        {"op": "call", "tool": "delete_records", "arguments": {"table": "customers"}},
    ]);
    std::fs::write(steps_file, steps.to_string()).expect("write steps");
    [script.to_str().unwrap(), "--url", url, "--transport", "streamable", "--timeout", "60", "--script", steps_file.to_str().unwrap()]
        .map(str::to_string)
        .to_vec()
}

fn delete_calls(server: &Peer) -> usize {
    server.recorded_calls().iter().filter(|c| c["tool"] == "delete_records").count()
}

fn denied_delete(recs: &[AuditRecord]) -> Option<&AuditRecord> {
    recs.iter().find(|r| {
        r.name.as_deref() == Some("delete_records") && r.decision.as_ref().is_some_and(|d| d.effective.as_str() == "block")
    })
}

/// Asserts the client's steps: echo answered, delete refused by the policy.
fn assert_echo_then_denied(lines: &[Value]) {
    let steps: Vec<&Value> = lines.iter().filter(|l| l["op"] == "call").collect();
    assert_eq!(steps.len(), 2, "{lines:?}");
    assert_eq!(steps[0]["text"], "from an agent", "{lines:?}");
    assert_eq!(steps[1]["ok"], false, "the delete was not refused: {lines:?}");
    assert!(steps[1]["error"]["message"].as_str().unwrap_or_default().contains("agents may not delete records"), "{lines:?}");
}

#[test]
fn builtin_agent_name_is_governed_on_an_unlisted_port() {
    let server = server();
    let Some(w) = start("builtin_agent_name_is_governed_on_an_unlisted_port", None) else { return };
    let bin = Bin::new();
    // Node running the TypeScript SDK client under a built-in agent name.
    let claude = bin.link("claude", &peers::node());
    let steps = bin.0.path().join("steps.json");
    let lines = run_json(w.cgroup(), &claude, &client_args(&peers::node_dir().join("client.mjs"), &steps, &server.url()));
    assert_echo_then_denied(&lines);
    assert_eq!(delete_calls(&server), 0, "the server saw the denied call");

    let recs = w.daemon.wait_audit("the denied delete", |r| denied_delete(r).is_some());
    let rec = denied_delete(&recs).expect("denied delete record");
    assert_eq!(rec.dst, server.addr().to_string());
    assert_eq!(rec.process.as_ref().map(|p| p.comm.as_str()), Some("claude"), "{rec:?}");
    assert!(recs.iter().any(|r| r.name.as_deref() == Some("echo") && r.status == CallStatus::Ok), "{recs:#?}");
}

#[test]
fn policy_agent_descendant_is_governed_and_other_processes_keep_port_scope() {
    let server = server();
    let Some(w) = start("policy_agent_descendant_is_governed_and_other_processes_keep_port_scope", Some(NO_BUILTINS)) else { return };
    let bin = Bin::new();
    // The agent: a shell whose exe matches the policy's `exe = "**/mcpw-agent-sh"`; it
    // runs the Python SDK client as a child process (fork + exec of another binary).
    let agent = bin.copy("mcpw-agent-sh", Path::new("/bin/sh"));
    let steps = bin.0.path().join("steps.json");
    let mut args = vec!["-c".to_string(), "\"$0\" \"$@\"; exit $?".to_string(), peers::venv_python().display().to_string()];
    args.extend(client_args(&peers::peers_dir().join("python").join("client.py"), &steps, &server.url()));
    let lines = run_json(w.cgroup(), &agent, &args);
    assert_echo_then_denied(&lines);
    assert_eq!(delete_calls(&server), 0, "the server saw the denied call");
    let recs = w.daemon.wait_audit("the child's denied delete", |r| denied_delete(r).is_some());
    let rec = denied_delete(&recs).expect("denied delete record");
    let p = rec.process.as_ref().expect("process");
    assert!(p.exe.as_deref().unwrap_or_default().contains("python"), "the connection came from the child: {p:?}");
    assert!(p.ancestry.iter().any(|a| a.comm == "mcpw-agent-sh"), "{p:?}");

    // Not an agent, same cgroup, same port: direct to the server, so the policy does not
    // apply and the daemon records nothing of it.
    let before = w.daemon.audit().len();
    let out = Client::python(&server.url()).cgroup(w.cgroup()).call("delete_records", json!({"table": "direct"})).run();
    assert_eq!(out.steps()[0]["ok"], true, "a non-agent is not governed on an unlisted port: {:?}", out.lines);
    assert_eq!(delete_calls(&server), 1);
    std::thread::sleep(Duration::from_millis(300));
    let recs = w.daemon.audit();
    assert_eq!(recs.len(), before, "the non-agent went through the daemon: {:#?}", &recs[before..]);
}

/// Connects to `addr`, reads the server's banner (server speaks first), uploads a payload
/// and reads the echo; prints hashes and the local port it used.
const OPAQUE: &str = r#"
import hashlib, json, os, socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=20)
local = s.getsockname()[1]
banner = b""
while not banner.endswith(b"\n"):
    chunk = s.recv(1)
    if not chunk:
        break
    banner += chunk
payload = os.urandom(1 << 20)
# Send from a thread while reading the echo, so neither side blocks on a full buffer.
threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
got = b""
while len(got) < len(payload):
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
s.close()
print(json.dumps({"local": local, "banner": banner.decode(), "sent": hashlib.sha256(payload).hexdigest(),
                  "echoed": hashlib.sha256(got).hexdigest(), "len": len(got)}))
"#;

#[test]
fn agent_non_mcp_traffic_is_relayed_byte_identically() {
    let raw = RawServer::start("127.0.0.1:0", RawBehaviour { banner: Some(b"220 raw-db ready\n".to_vec()), echo: true, ..Default::default() });
    let Some(w) = start("agent_non_mcp_traffic_is_relayed_byte_identically", Some(NO_BUILTINS)) else { return };
    let bin = Bin::new();
    let python = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().expect("python3");
    let python = PathBuf::from(String::from_utf8_lossy(&python.stdout).trim());
    let agent = bin.link("mcpw-agent-t", &python);
    let port = raw.addr.port().to_string();
    let out = run_json(w.cgroup(), &agent, &["-c".into(), OPAQUE.into(), "127.0.0.1".into(), port.clone()]);
    let v = &out[0];
    assert_eq!(v["banner"], "220 raw-db ready\n", "{v}");
    assert_eq!(v["len"], 1 << 20, "{v}");
    assert_eq!(v["sent"], v["echoed"], "the upload came back changed: {v}");
    let seen = raw.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].bytes.len(), 1 << 20);
    // Relayed by the daemon: the server's peer is the daemon's socket, not the client's.
    let peer_port = seen[0].peer.expect("peer").port();
    assert_ne!(u64::from(peer_port), v["local"].as_u64().unwrap_or_default(), "the agent's connection went direct");

    // The same program under a name that is not an agent goes direct.
    let plain = bin.link("not-an-agent", &python);
    let out = run_json(w.cgroup(), &plain, &["-c".into(), OPAQUE.into(), "127.0.0.1".into(), port]);
    let out = &out[0];
    assert_eq!(out["sent"], out["echoed"], "{out}");
    let seen = raw.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(u64::from(seen[1].peer.expect("peer").port()), out["local"].as_u64().unwrap_or_default(), "a non-agent was redirected");
}
