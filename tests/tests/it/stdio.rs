//! Stdio MCP servers end to end: with `[scope] stdio = true`, a server that an MCP
//! client (an agent by command name) launches over pipes appears in the daemon's
//! inventory with its command line and tools, and its tool calls are audited as
//! transport `stdio`, observed, without any wrapper. A process outside the watched set
//! (not launched by a client) speaking the same JSON-RPC is not captured.
//!
//! On the old code none of this exists: no stdio capture, so no `stdio:` server in
//! `list` and no `transport = "stdio"` record; every positive assertion fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcpwatch_api::{AuditRecord, CallStatus, ServerEntry};
use mcpwatch_tests::daemon::DaemonOpts;
use mcpwatch_tests::harness::Watched;
use mcpwatch_tests::peers;
use serde_json::Value;

/// The client's command name makes it an agent; the built-in names are off so the test
/// runner's own ancestry (maybe an AI agent) does not count.
const CONFIG: &str = "[scope]\nbuiltin_agents = false\nagent_comms = [\"mcpw-stdio-cl\"]\nstdio = true\n";

/// The Python SDK's stdio client: launches argv[1..], initializes, lists tools, calls
/// `echo`, prints one JSON line.
const CLIENT: &str = r#"
import json, sys, anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

async def main():
    params = StdioServerParameters(command=sys.argv[1], args=sys.argv[2:], cwd=None)
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            init = await s.initialize()
            tools = await s.list_tools()
            res = await s.call_tool("echo", {"message" if sys.argv[-1].endswith("everything") else "text": "stdio-hi"})
            print(json.dumps({"server": init.server_info.name, "tools": [t.name for t in tools.tools], "echo": res.content[0].text}))

anyio.run(main)
"#;

fn start(test: &str) -> Option<Watched> {
    Watched::start_with(test, DaemonOpts { config: Some(CONFIG.into()), ..Default::default() })
}

/// Run the client script as `program` (a link to the venv's python) in the cgroup.
fn run_client(cgroup: &Path, program: &Path, dir: &Path, server: &[String]) -> Value {
    let script = dir.join("client.py");
    std::fs::write(&script, CLIENT).expect("write client");
    let mut cmd = Command::new(program);
    cmd.arg(&script).args(server).current_dir(peers::peers_dir().join("node")).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.env("npm_config_offline", "true").env("NO_UPDATE_NOTIFIER", "1").env("PYTHONPATH", site_packages());
    peers::move_into_cgroup(&mut cmd, cgroup);
    let out = cmd.output().unwrap_or_else(|e| panic!("run client: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed ({}):\n{stdout}\n--- stderr ---\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().rfind(|l| l.starts_with('{')).unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("client output not JSON ({e}): {stdout}"))
}

/// The venv's site-packages: a renamed link to its python does not find the venv.
fn site_packages() -> PathBuf {
    let lib = peers::venv_python().parent().and_then(Path::parent).expect("venv root").join("lib");
    let py = std::fs::read_dir(&lib).expect("venv lib").filter_map(Result::ok).find(|e| e.file_name().to_string_lossy().starts_with("python")).expect("venv lib/python3.*");
    py.path().join("site-packages")
}

fn link(dir: &Path, name: &str, target: &Path) -> PathBuf {
    let p = dir.join(name);
    std::os::unix::fs::symlink(target, &p).expect("symlink");
    p
}

fn python_server() -> Vec<String> {
    vec![peers::venv_python().display().to_string(), peers::peers_dir().join("python").join("server.py").display().to_string(), "--transport".into(), "stdio".into()]
}

fn stdio_servers(list: &[ServerEntry]) -> Vec<&ServerEntry> {
    list.iter().filter(|s| s.transport == "stdio").collect()
}

/// Poll `mcpwatch list` until `pred` holds (the capture thread is asynchronous).
fn wait_list(w: &Watched, what: &str, pred: impl Fn(&[ServerEntry]) -> bool) -> Vec<ServerEntry> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = w.daemon.list();
        if pred(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {list:#?}\n--- daemon log ---\n{}", w.daemon.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stdio_echo(recs: &[AuditRecord]) -> Option<&AuditRecord> {
    recs.iter().find(|r| r.transport == "stdio" && r.name.as_deref() == Some("echo") && r.status == CallStatus::Ok)
}

#[test]
fn stdio_python_sdk_server_is_inventoried_and_audited() {
    let Some(w) = start("stdio_python_sdk_server_is_inventoried_and_audited") else { return };
    let dir = tempfile::Builder::new().prefix("mcpwatch-stdio-").tempdir().expect("tempdir");
    let client = link(dir.path(), "mcpw-stdio-cl", &peers::venv_python());
    let out = run_client(w.cgroup(), &client, dir.path(), &python_server());
    assert_eq!(out["echo"], "stdio-hi", "{out}");

    let list = wait_list(&w, "the stdio server with its tools", |l| stdio_servers(l).iter().any(|s| s.tools.iter().any(|t| t.name == "echo") && s.call_count >= 1));
    let s = stdio_servers(&list).into_iter().find(|s| s.tools.iter().any(|t| t.name == "echo")).expect("stdio server");
    assert!(s.endpoint.starts_with("stdio:"), "{s:?}");
    assert!(s.command.iter().any(|a| a.ends_with("server.py")), "command line kept: {s:?}");
    assert_eq!(s.server_name.as_deref(), out["server"].as_str(), "{s:?}");
    assert!(s.tools.iter().all(|t| t.pinned_hash.is_some()), "tools pinned: {s:?}");
    assert!(s.clients.iter().any(|c| c.comm == "mcpw-stdio-cl"), "client attributed: {s:?}");

    let recs = w.daemon.wait_audit("the stdio echo call", |r| stdio_echo(r).is_some());
    let rec = stdio_echo(&recs).expect("stdio echo record");
    assert_eq!(rec.server, s.endpoint);
    assert!(rec.notes.iter().any(|n| n.starts_with("observed on stdio")), "{rec:?}");
    assert_eq!(rec.process.as_ref().map(|p| p.comm.as_str()), Some("mcpw-stdio-cl"), "{rec:?}");
    assert!(rec.args_hash.is_some(), "{rec:?}");
    // Coverage: this call was only observed, so not every call seen was governed.
    let cov = w.daemon.status().coverage.expect("status carries coverage");
    assert!(cov.calls_observed_only >= 1 && cov.calls_governed < cov.calls_seen, "{cov:?}");
}

#[test]
fn stdio_npx_server_everything_is_inventoried_and_audited() {
    let Some(w) = start("stdio_npx_server_everything_is_inventoried_and_audited") else { return };
    let _ = peers::node_dir();
    let dir = tempfile::Builder::new().prefix("mcpwatch-stdio-").tempdir().expect("tempdir");
    let client = link(dir.path(), "mcpw-stdio-cl", &peers::venv_python());
    let server = vec!["npx".to_string(), "--offline".into(), "-y".into(), "@modelcontextprotocol/server-everything".into()];
    let out = run_client(w.cgroup(), &client, dir.path(), &server);
    assert!(out["echo"].as_str().is_some_and(|e| e.contains("stdio-hi")), "{out}");

    let list = wait_list(&w, "server-everything in the inventory", |l| stdio_servers(l).iter().any(|s| s.tools.iter().any(|t| t.name == "echo") && s.call_count >= 1));
    let s = stdio_servers(&list).into_iter().find(|s| s.tools.iter().any(|t| t.name == "echo")).expect("stdio server");
    assert!(s.command.iter().any(|a| a.contains("everything")), "command line kept: {s:?}");
    // Keyed by launch identity, looked through npx and node: the key `[[server]] package`
    // registers and `mcpwatch list` joins configured entries on.
    assert!(s.endpoint.starts_with("stdio://npm:") && s.endpoint.contains("everything"), "{}", s.endpoint);
    assert!(s.tools.len() > 3, "{s:?}");
    let recs = w.daemon.wait_audit("the stdio echo call", |r| stdio_echo(r).is_some());
    assert_eq!(stdio_echo(&recs).map(|r| r.server.as_str()), Some(s.endpoint.as_str()));
}

#[test]
fn stdio_process_outside_the_watched_set_is_not_captured() {
    let Some(w) = start("stdio_process_outside_the_watched_set_is_not_captured") else { return };
    let dir = tempfile::Builder::new().prefix("mcpwatch-stdio-").tempdir().expect("tempdir");
    // The same SDK client and server, but the client is not an agent: its comm is not
    // in the agent list, so neither it nor its child is watched.
    let plain = link(dir.path(), "mcpw-plain", &peers::venv_python());
    let out = run_client(w.cgroup(), &plain, dir.path(), &python_server());
    assert_eq!(out["echo"], "stdio-hi", "{out}");
    // Then a watched run: once its server shows up, the capture thread has caught up,
    // and the unwatched run must have left nothing.
    let client = link(dir.path(), "mcpw-stdio-cl", &peers::venv_python());
    run_client(w.cgroup(), &client, dir.path(), &python_server());
    wait_list(&w, "the watched server", |l| stdio_servers(l).iter().any(|s| s.call_count >= 1));
    std::thread::sleep(Duration::from_millis(300));
    let list = w.daemon.list();
    let s = stdio_servers(&list);
    assert_eq!(s.len(), 1, "only the watched run's server: {s:#?}");
    assert_eq!(s[0].call_count, 1, "the unwatched call was not counted: {:#?}", s[0]);
    assert!(s[0].clients.iter().all(|c| c.comm == "mcpw-stdio-cl"), "{:#?}", s[0]);
    let recs = w.daemon.audit();
    assert_eq!(recs.iter().filter(|r| r.transport == "stdio").count(), 1, "{recs:#?}");
}
