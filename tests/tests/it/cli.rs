//! The `mcpwatch` CLI against a real daemon.

use mcpwatch_tests::daemon::{Daemon, DaemonOpts};
use mcpwatch_tests::peers::{self, Client};
use serde_json::{json, Value};

#[test]
fn list_audit_and_status_through_the_cli() {
    let server = peers::python_server().json_response().host_check(peers::HostCheck::Off).spawn();
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), ..Default::default() });
    let url = format!("http://127.0.0.1:{}/mcp", daemon.port);
    Client::python(&url).call("echo", json!({"text": "cli"})).call("add", json!({"a": 1, "b": 1})).run();
    daemon.wait_audit("two calls", |r| r.iter().filter(|x| x.method.as_deref() == Some("tools/call") && x.status == mcpwatch_api::CallStatus::Ok).count() == 2);

    let out = daemon.cli(&["list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).expect("list --json is JSON");
    let s = &list.as_array().expect("array")[0];
    assert_eq!(s["call_count"], 2);
    assert!(s["tools"].as_array().unwrap().iter().any(|t| t["name"] == "echo"));

    let out = daemon.cli(&["list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("mcpwatch-peer-python") && table.contains("SERVER"), "{table}");

    let out = daemon.cli(&["audit", "--json", "--tool", "add"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["name"], "add");
    assert_eq!(lines[0]["status"]["state"], "ok");

    let out = daemon.cli(&["audit", "--json", "--since", "1h", "--server", "nonexistent.example"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());

    let out = daemon.cli(&["status", "--json"]);
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["failure_mode"], "open");
    assert_eq!(st["attached"], false);

    // A missing daemon is a clear error with exit code 2.
    let out = std::process::Command::new(mcpwatch_tests::daemon::bin("mcpwatch")).args(["--socket", "/nonexistent/mcpwatch.sock", "status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach mcpwatchd"));
}
