//! End to end through eBPF: real SDK clients in a watched cgroup, real servers on
//! loopback, the daemon in between.

use std::net::SocketAddr;

use mcpwatch_api::{CallStatus, MessageKind};
use mcpwatch_tests::daemon::{Daemon, DaemonOpts};
use mcpwatch_tests::harness::{self, RawBehaviour, RawServer, Watched};
use mcpwatch_tests::peers::{self, Client};
use serde_json::json;

fn call_record<'a>(recs: &'a [mcpwatch_api::AuditRecord], tool: &str) -> Option<&'a mcpwatch_api::AuditRecord> {
    recs.iter().find(|r| r.method.as_deref() == Some("tools/call") && r.name.as_deref() == Some(tool) && r.status != CallStatus::Pending)
}

#[test]
fn python_sdk_streamable_http_json_responses() {
    let server = peers::python_server().ip([127, 0, 0, 2].into()).json_response().spawn();
    let Some(w) = Watched::start("python_sdk_streamable_http_json_responses", &server.addr().port().to_string()) else { return };
    let out = Client::python(&server.url()).cgroup(w.cgroup()).list().call("echo", json!({"text": "through mcpwatch"})).run();
    assert_eq!(out.steps()[1]["text"], "through mcpwatch", "{:?}", out.lines);
    assert_eq!(server.recorded_calls()[0]["tool"], "echo");

    let recs = w.daemon.wait_audit("the echo call completed", |r| call_record(r, "echo").is_some());
    let rec = call_record(&recs, "echo").expect("echo record");
    assert_eq!(rec.status, CallStatus::Ok, "{rec:?}");
    assert_eq!(rec.dst, server.addr().to_string());
    assert_eq!(rec.direction, "client->server");
    assert!(rec.args_hash.is_some() && rec.result_hash.is_some(), "{rec:?}");
    let p = rec.process.as_ref().expect("process identity");
    assert!(p.exe.as_deref().unwrap_or_default().contains("python"), "{p:?}");
    assert!(p.cgroup_path.as_deref().unwrap_or_default().contains("mcpwatch-it"), "{p:?}");
    assert_eq!(p.uid, 0);
    // Records are written before forwarding: every message of the session is there.
    assert!(recs.iter().any(|r| r.method.as_deref() == Some("tools/list") && r.status == CallStatus::Ok));

    let servers = w.daemon.list();
    let s = servers.iter().find(|s| s.dst == server.addr().to_string()).expect("server in inventory");
    assert_eq!(s.server_name.as_deref(), Some("mcpwatch-peer-python"));
    for t in ["echo", "add", "lookup_customer"] {
        assert!(s.tools.iter().any(|x| x.name == t && x.hash.len() == 64), "{t} missing: {:?}", s.tools);
    }
    assert_eq!(s.call_count, 1);
    assert!(s.clients.iter().any(|c| c.exe.as_deref().unwrap_or_default().contains("python")), "{:?}", s.clients);
}

#[test]
fn python_sdk_streamable_http_sse_responses() {
    let server = peers::python_server().ip([127, 0, 0, 2].into()).spawn();
    let Some(w) = Watched::start("python_sdk_streamable_http_sse_responses", &server.addr().port().to_string()) else { return };
    let out = Client::python(&server.url()).cgroup(w.cgroup()).call("add", json!({"a": 20, "b": 22})).run();
    assert_eq!(out.steps()[0]["text"], "42", "{:?}", out.lines);
    let recs = w.daemon.wait_audit("add completed", |r| call_record(r, "add").is_some());
    let rec = call_record(&recs, "add").expect("add record");
    assert_eq!(rec.status, CallStatus::Ok);
    // The Python SDK 2.x speaks the stateless 2026-07-28 revision by default.
    assert!(recs.iter().any(|r| r.method.as_deref() == Some("server/discover")), "{recs:#?}");
}

#[test]
fn node_sdk_sessions_and_protocol_2025() {
    let server = peers::node_server().ip([127, 0, 0, 2].into()).spawn();
    let Some(w) = Watched::start("node_sdk_sessions_and_protocol_2025", &server.addr().port().to_string()) else { return };
    let out = Client::node(&server.url()).cgroup(w.cgroup()).list().call("echo", json!({"text": "node"})).run();
    assert_eq!(out.protocol_version(), "2025-11-25");
    assert_eq!(out.steps()[1]["text"], "node", "{:?}", out.lines);
    let recs = w.daemon.wait_audit("node echo completed", |r| call_record(r, "echo").is_some());
    let init = recs.iter().find(|r| r.method.as_deref() == Some("initialize")).expect("initialize record");
    assert_eq!(init.status, CallStatus::Ok);
    let call = call_record(&recs, "echo").expect("echo");
    assert!(call.session_id.is_some(), "session id tracked: {call:?}");
    assert_eq!(call.protocol_version.as_deref(), Some("2025-11-25"));
    assert!(recs.iter().any(|r| r.kind == MessageKind::Notification && r.method.as_deref() == Some("notifications/initialized") && r.status == CallStatus::Sent));
    let p = call.process.as_ref().expect("process");
    assert!(p.exe.as_deref().unwrap_or_default().ends_with("node"), "{p:?}");
    let s = w.daemon.list().into_iter().find(|s| s.dst == server.addr().to_string()).expect("inventory");
    assert_eq!(s.protocol_version.as_deref(), Some("2025-11-25"));
}

#[test]
fn legacy_http_sse_transport() {
    let server = peers::node_server().ip([127, 0, 0, 2].into()).legacy_sse().spawn();
    let Some(w) = Watched::start("legacy_http_sse_transport", &server.addr().port().to_string()) else { return };
    let out = Client::node(&server.sse_url()).legacy_sse().cgroup(w.cgroup()).call("add", json!({"a": 1, "b": 2})).run();
    assert_eq!(out.steps()[0]["text"], "3", "{:?}", out.lines);
    let recs = w.daemon.wait_audit("legacy add completed", |r| call_record(r, "add").is_some());
    let call = call_record(&recs, "add").expect("add");
    // The response came back on the GET stream and was matched to the POST.
    assert_eq!(call.status, CallStatus::Ok, "{call:?}");
    assert_eq!(call.transport, "sse");
    assert!(call.server.ends_with("/sse"), "{}", call.server);
    assert!(call.result_hash.is_some());
    let s = w.daemon.list().into_iter().find(|s| s.endpoint == call.server).expect("inventory");
    assert_eq!(s.transport, "sse");
}

/// A client that reports what it saw, as JSON: local address, getpeername, bytes.
const RAW_CLIENT: &str = r#"
import json, socket, sys, os
host, port, family, banner_len = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
payload = sys.stdin.buffer.read()
s = socket.socket(socket.AF_INET6 if family == "6" else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(20)
s.connect((host, port))
local = s.getsockname(); peer = s.getpeername()
banner = b""
while len(banner) < banner_len:
    chunk = s.recv(banner_len - len(banner))
    if not chunk: break
    banner += chunk
s.sendall(payload)
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    chunk = s.recv(65536)
    if not chunk: break
    got += chunk
print(json.dumps({"local": [local[0], local[1]], "peer": [peer[0], peer[1]], "banner": banner.hex(), "got": got.hex()}))
"#;

fn raw_client(cgroup: Option<&std::path::Path>, host: &str, port: u16, v6: bool, banner_len: usize, payload: &[u8]) -> serde_json::Value {
    let script = format!(
        "import sys; sys.argv=['c', {host:?}, '{port}', '{}', '{banner_len}']\n{RAW_CLIENT}",
        if v6 { "6" } else { "4" },
    );
    harness::py_stdin(cgroup, &script, payload)
}

#[test]
fn server_speaks_first_stream_passes_byte_identical() {
    let banner = b"SSH-2.0-mcpwatch-test\r\n".to_vec();
    let server = RawServer::start("127.0.0.3:0", RawBehaviour { banner: Some(banner.clone()), echo: true, ..Default::default() });
    let Some(w) = Watched::start("server_speaks_first_stream_passes_byte_identical", &server.addr.port().to_string()) else { return };
    let payload: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let r = raw_client(Some(w.cgroup()), "127.0.0.3", server.addr.port(), false, banner.len(), &payload);
    assert_eq!(harness::unhex(r["banner"].as_str().unwrap()), banner, "banner arrives before the client speaks");
    assert_eq!(harness::unhex(r["got"].as_str().unwrap()), payload, "echo byte-identical");
    // getpeername shows what the client dialled, not the daemon.
    assert_eq!(r["peer"], json!(["127.0.0.3", server.addr.port()]));
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].bytes, payload);
    // The server's peer is the daemon's upstream socket, not the client: it was redirected.
    let client_local: SocketAddr = format!("{}:{}", r["local"][0].as_str().unwrap(), r["local"][1]).parse().unwrap();
    assert_ne!(seen[0].peer, Some(client_local));
    let st = w.daemon.status();
    assert!(st.counts.connections >= 1 && st.counts.passthrough >= 1, "{st:?}");
    assert_eq!(st.counts.mcp_messages, 0);
}

#[test]
fn non_mcp_http_passes_byte_identical() {
    let reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Upstream: raw\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_vec();
    let server = RawServer::start("127.0.0.3:0", RawBehaviour { http_reply: Some(reply.clone()), ..Default::default() });
    let Some(w) = Watched::start("non_mcp_http_passes_byte_identical", &server.addr.port().to_string()) else { return };
    let body = br#"{"order": 7, "items": ["a", "b"]}"#;
    let request = format!(
        "POST /api/orders?x=1 HTTP/1.1\r\nHost: shop.example:{}\r\nUser-Agent: curl/8.0\r\nX-Custom-Header: MiXeD\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        server.addr.port(),
        body.len(),
        std::str::from_utf8(body).unwrap()
    );
    let r = raw_client(Some(w.cgroup()), "127.0.0.3", server.addr.port(), false, 0, request.as_bytes());
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(String::from_utf8_lossy(&seen[0].bytes), request, "request reaches the server unchanged");
    assert_eq!(String::from_utf8_lossy(&harness::unhex(r["got"].as_str().unwrap())), String::from_utf8_lossy(&reply), "response reaches the client unchanged");
    let st = w.daemon.status();
    assert_eq!(st.counts.http_requests, 1, "{st:?}");
    assert_eq!(st.counts.mcp_messages, 0, "not MCP, not recorded");
    assert!(w.daemon.audit().is_empty());
}

#[test]
fn ipv6_and_v4_mapped_are_intercepted() {
    let v6 = RawServer::start("[::1]:0", RawBehaviour { echo: true, ..Default::default() });
    let v4 = RawServer::start("127.0.0.3:0", RawBehaviour { echo: true, ..Default::default() });
    let ports = format!("{},{}", v6.addr.port(), v4.addr.port());
    let Some(w) = Watched::start("ipv6_and_v4_mapped_are_intercepted", &ports) else { return };
    let r = raw_client(Some(w.cgroup()), "::1", v6.addr.port(), true, 0, b"over ipv6");
    assert_eq!(harness::unhex(r["got"].as_str().unwrap()), b"over ipv6");
    assert_eq!(r["peer"][0], "::1");
    assert_eq!(r["peer"][1], v6.addr.port());
    let r = raw_client(Some(w.cgroup()), "::ffff:127.0.0.3", v4.addr.port(), true, 0, b"v4-mapped");
    assert_eq!(harness::unhex(r["got"].as_str().unwrap()), b"v4-mapped");
    assert_eq!(r["peer"][0], "::ffff:127.0.0.3");
    assert_eq!(w.daemon.status().counts.connections, 2, "both went through the daemon");
    assert_eq!(w.daemon.status().counts.connections_unresolved, 0);
}

#[test]
fn processes_outside_the_cgroup_are_not_redirected() {
    let server = RawServer::start("127.0.0.3:0", RawBehaviour { echo: true, ..Default::default() });
    let Some(w) = Watched::start("processes_outside_the_cgroup_are_not_redirected", &server.addr.port().to_string()) else { return };
    let r = raw_client(None, "127.0.0.3", server.addr.port(), false, 0, b"direct");
    assert_eq!(harness::unhex(r["got"].as_str().unwrap()), b"direct");
    let client_local: SocketAddr = format!("{}:{}", r["local"][0].as_str().unwrap(), r["local"][1]).parse().unwrap();
    assert_eq!(server.seen()[0].peer, Some(client_local), "server sees the client itself");
    assert_eq!(w.daemon.status().counts.connections, 0);
}

#[test]
fn daemon_inside_the_cgroup_does_not_intercept_itself() {
    let server = peers::python_server().ip([127, 0, 0, 2].into()).json_response().spawn();
    if let Some(why) = harness::ebpf_unavailable() {
        eprintln!("SKIP daemon_inside_the_cgroup_does_not_intercept_itself: {why}");
        return;
    }
    let cg = mcpwatch_intercept::cgroup::TestCgroup::unique("mcpwatch-it-self").expect("cgroup");
    let daemon = Daemon::start(DaemonOpts {
        cgroup: Some(cg.path().to_path_buf()),
        run_in_cgroup: Some(cg.path().to_path_buf()),
        ports: Some("all".into()),
        ..Default::default()
    });
    let out = Client::python(&server.url()).cgroup(cg.path()).call("echo", json!({"text": "no loop"})).run();
    assert_eq!(out.steps()[0]["text"], "no loop", "{:?}", out.lines);
    let recs = daemon.wait_audit("echo", |r| call_record(r, "echo").is_some());
    assert_eq!(call_record(&recs, "echo").unwrap().status, CallStatus::Ok);
    // One client connection per HTTP connection; a loop would multiply them.
    let st = daemon.status();
    assert_eq!(st.counts.connections_unresolved, 0, "{st:?}");
    assert!(st.counts.connections <= 4, "{st:?}");
    drop(daemon);
}

#[test]
fn killing_the_daemon_detaches_and_restart_keeps_state() {
    let server = peers::python_server().ip([127, 0, 0, 2].into()).json_response().spawn();
    let echo = RawServer::start("127.0.0.3:0", RawBehaviour { echo: true, ..Default::default() });
    let ports = format!("{},{}", server.addr().port(), echo.addr.port());
    let Some(mut w) = Watched::start("killing_the_daemon_detaches_and_restart_keeps_state", &ports) else { return };
    let state = w.daemon.state_dir.clone();
    let _keep = w.daemon.keep_state();
    let restart = |w: &mut Watched| {
        w.daemon = Daemon::start(DaemonOpts { cgroup: Some(w.cgroup().to_path_buf()), ports: Some(ports.clone()), state_dir: Some(state.clone()), ..Default::default() });
        assert!(w.daemon.status().attached);
        // The hash chain survives a restart (and a SIGKILL): the trail verifies.
        let v = w.daemon.cli(&["audit", "verify"]);
        let text = String::from_utf8_lossy(&v.stdout).to_string();
        assert!(v.status.success() && text.contains("audit trail intact"), "{text}{}", String::from_utf8_lossy(&v.stderr));
    };
    let goes_direct = |w: &Watched, how: &str| {
        let before = echo.seen().len();
        let r = raw_client(Some(w.cgroup()), "127.0.0.3", echo.addr.port(), false, 0, b"after");
        assert_eq!(harness::unhex(r["got"].as_str().unwrap()), b"after");
        let local: SocketAddr = format!("{}:{}", r["local"][0].as_str().unwrap(), r["local"][1]).parse().unwrap();
        assert_eq!(echo.seen()[before].peer, Some(local), "after {how} the client connects directly");
    };

    // SIGTERM: clean shutdown flushes everything, including completions.
    Client::python(&server.url()).cgroup(w.cgroup()).call("echo", json!({"text": "before"})).run();
    w.daemon.wait_audit("first call", |r| call_record(r, "echo").is_some());
    w.daemon.terminate();
    goes_direct(&w, "SIGTERM");
    restart(&mut w);
    assert!(call_record(&w.daemon.audit(), "echo").is_some(), "audit survived SIGTERM");
    assert!(
        w.daemon.list().iter().any(|s| s.dst == server.addr().to_string() && s.tools.iter().any(|t| t.name == "echo")),
        "inventory survived SIGTERM"
    );

    // SIGKILL: every request forwarded before the kill has its record on disk
    // (journal write(2) before forwarding; the kernel keeps it); its completion may be lost.
    Client::python(&server.url()).cgroup(w.cgroup()).call("add", json!({"a": 2, "b": 2})).run();
    let n_before = w.daemon.audit().len();
    w.daemon.kill();
    goes_direct(&w, "SIGKILL");
    restart(&mut w);
    let recs = w.daemon.audit();
    assert!(recs.iter().any(|r| r.method.as_deref() == Some("tools/call") && r.name.as_deref() == Some("add")), "add record survived SIGKILL: {recs:#?}");
    assert!(recs.len() >= n_before, "{} records after restart, {n_before} before the kill", recs.len());
    assert!(w.daemon.list().iter().any(|s| s.dst == server.addr().to_string()), "inventory survived SIGKILL");
}

/// A call made through a bridge (`mcp-remote`) is attributed to the agent that
/// launched the bridge, with the ancestry recorded.
#[test]
fn calls_through_a_bridge_are_attributed_to_the_launching_agent() {
    let server = peers::node_server().ip([127, 0, 0, 2].into()).spawn();
    let Some(w) = Watched::start("calls_through_a_bridge_are_attributed_to_the_launching_agent", &server.addr().port().to_string()) else { return };
    let dir = tempfile::tempdir().unwrap();
    // The real Node SDK client, started under a name that says what it is: a bridge.
    let bridge = dir.path().join("mcp-remote.mjs");
    std::os::unix::fs::symlink(peers::node_dir().join("client.mjs"), &bridge).unwrap();
    let agent = format!(
        r#"
import json, os, subprocess
out = subprocess.run([{node:?}, {bridge:?}, "--url", {url:?}, "call", "echo", '{{"text": "via bridge"}}'], capture_output=True, text=True, timeout=60)
print(json.dumps({{"agent_pid": os.getpid(), "rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr[-2000:]}}))
"#,
        node = peers::node().display().to_string(),
        bridge = bridge.display().to_string(),
        url = server.url(),
    );
    // A real agent runs a script (`python3 -c` would itself count as a launcher).
    let script = dir.path().join("my_agent.py");
    std::fs::write(&script, agent).unwrap();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script);
    peers::move_into_cgroup(&mut cmd, w.cgroup());
    let out = cmd.output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["rc"], 0, "{r}");
    let agent_pid = r["agent_pid"].as_u64().unwrap() as u32;
    let recs = w.daemon.wait_audit("bridged call", |r| call_record(r, "echo").is_some());
    let p = call_record(&recs, "echo").unwrap().process.clone().expect("process");
    assert!(p.exe.as_deref().unwrap_or_default().ends_with("node"), "{p:?}");
    assert!(p.cmdline.iter().any(|a| a.contains("mcp-remote")), "{p:?}");
    assert_eq!(p.ancestry.first().map(|a| a.pid), Some(agent_pid), "parent recorded: {p:?}");
    let a = p.agent.clone().expect("agent");
    assert_eq!(a.pid, agent_pid, "attributed to the launching agent, not the bridge");
    assert!(a.comm.starts_with("python"), "{a:?}");
    // The inventory names the agent too.
    let s = w.daemon.list().into_iter().find(|s| s.dst == server.addr().to_string()).unwrap();
    assert!(s.clients.iter().any(|c| c.agent.as_deref().is_some_and(|x| x.contains("python"))), "{:?}", s.clients);
}

/// `mcpwatch audit --follow` streams records as calls happen.
#[test]
fn audit_follow_streams_new_records() {
    let server = peers::python_server().ip([127, 0, 0, 2].into()).json_response().spawn();
    let Some(w) = Watched::start("audit_follow_streams_new_records", &server.addr().port().to_string()) else { return };
    let mut follow = std::process::Command::new(mcpwatch_tests::daemon::bin("mcpwatch"))
        .arg("--socket").arg(&w.daemon.socket)
        .args(["audit", "--follow", "--json", "--tool", "add"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let done = v["status"]["state"] == "ok";
            lines.push(v);
            if done {
                break;
            }
        }
        lines
    });
    Client::python(&server.url()).cgroup(w.cgroup()).call("add", json!({"a": 40, "b": 2})).run();
    let lines = reader.join().unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    // The record arrives when written (pending) and again when completed (ok).
    assert!(lines.iter().all(|l| l["name"] == "add"), "{lines:?}");
    assert_eq!(lines.last().unwrap()["status"]["state"], "ok", "{lines:?}");
}

/// "connected" or "refused": a bare TCP connect from a fresh process (in `cgroup`, if any).
fn connect_outcome(cgroup: Option<&std::path::Path>, host: &str, port: u16) -> String {
    let script = format!(
        "import json, socket\ntry:\n    socket.create_connection(({host:?}, {port}), timeout=10).close(); r = 'connected'\n\
         except ConnectionRefusedError:\n    r = 'refused'\nprint(json.dumps(r))"
    );
    harness::py(cgroup, &script).as_str().expect("outcome").to_string()
}

/// Fail-closed means closed while mcpwatchd is down too: its links are pinned, so after
/// SIGKILL or SIGTERM connections from the watched cgroup are still redirected to its dead
/// port and refused, never sent unobserved. A restarted daemon replaces the pinned links;
/// `mcpwatchd --release-pins` opens the gate; an open-mode daemon releases leftovers.
#[test]
fn fail_closed_refuses_while_the_daemon_is_down_until_pins_are_released() {
    let test = "fail_closed_refuses_while_the_daemon_is_down_until_pins_are_released";
    let server = peers::python_server().ip([127, 0, 0, 2].into()).json_response().spawn();
    let echo = RawServer::start("127.0.0.3:0", RawBehaviour { echo: true, ..Default::default() });
    let probe = RawServer::start("127.0.0.3:0", RawBehaviour::default());
    let ports = format!("{},{},{}", server.addr().port(), echo.addr.port(), probe.addr.port());
    if let Some(why) = harness::ebpf_unavailable() {
        eprintln!("SKIP {test}: {why}");
        return;
    }
    // Declared before the daemon so it is dropped after it: whatever is still pinned is
    // released (and the private bpffs unmounted) even when an assertion fails.
    let bpffs = mcpwatch_intercept::pins::TestBpfFs::unique("mcpwatch-it-bpffs").expect("mount a test bpffs");
    let base = bpffs.path().join("pins");
    let opts = |cgroup: Option<&std::path::Path>, mode: &'static str, state: Option<std::path::PathBuf>| DaemonOpts {
        cgroup: cgroup.map(std::path::Path::to_path_buf),
        ports: Some(ports.clone()),
        failure_mode: Some(mode),
        state_dir: state,
        extra_args: vec!["--pin-dir".into(), base.display().to_string()],
        ..Default::default()
    };
    let Some(mut w) = Watched::start_with(test, opts(None, "closed", None)) else { return };
    let cg = w.cgroup().to_path_buf();
    let state = w.daemon.state_dir.clone();
    let _keep = w.daemon.keep_state();
    let pin_dir = mcpwatch_intercept::pin_dir_for(&base, &cg).expect("pin dir");
    let pins = || {
        let mut names: Vec<String> = std::fs::read_dir(&pin_dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    let all_pins = ["connect4", "connect6", "getpeername4", "getpeername6", "process_exec", "process_exit", "process_fork", "sendmsg4", "sendmsg6", "sock_ops", "task_rename"];
    let refused = |how: &str| {
        assert_eq!(connect_outcome(Some(&cg), "127.0.0.3", probe.addr.port()), "refused", "after {how}: in the cgroup");
        assert_eq!(connect_outcome(Some(&cg), "::ffff:127.0.0.3", probe.addr.port()), "refused", "after {how}: IPv6 socket");
        assert_eq!(connect_outcome(None, "127.0.0.3", probe.addr.port()), "connected", "after {how}: outside the cgroup");
        let sdk = Client::python(&server.url()).cgroup(&cg).call("echo", json!({"text": "unobserved?"})).try_run();
        assert_ne!(sdk.exit_code, Some(0), "after {how} an SDK call went through: {:?}", sdk.lines);
    };

    let st = w.daemon.status();
    assert!(st.attached, "{st:?}");
    assert_eq!(st.pinned_at.as_deref(), Some(pin_dir.to_str().unwrap()), "{st:?}");
    assert_eq!(pins(), all_pins);
    let text = String::from_utf8_lossy(&w.daemon.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("MCP connections from the watched cgroup are REFUSED (pinned at "), "{text}");

    let out = Client::python(&server.url()).cgroup(&cg).call("echo", json!({"text": "closed"})).run();
    assert_eq!(out.steps()[0]["text"], "closed", "{:?}", out.lines);
    w.daemon.wait_audit("echo call", |r| call_record(r, "echo").is_some());

    // SIGKILL: nothing in the cgroup reaches anything; the server saw one call only.
    w.daemon.kill();
    refused("SIGKILL");
    assert_eq!(server.recorded_calls().len(), 1, "a call reached the server while mcpwatchd was dead");
    assert_eq!(pins(), all_pins);

    // Restart on the same state and pin dir (another listen port): the pinned links are
    // replaced, calls work and are audited again.
    w.daemon = Daemon::start(opts(Some(&cg), "closed", Some(state.clone())));
    assert_eq!(w.daemon.status().pinned_at.as_deref(), Some(pin_dir.to_str().unwrap()));
    assert_eq!(pins(), all_pins, "replaced, not added");
    let out = Client::python(&server.url()).cgroup(&cg).call("add", json!({"a": 2, "b": 2})).run();
    assert_eq!(out.steps()[0]["text"], "4", "{:?}", out.lines);
    let recs = w.daemon.wait_audit("add call", |r| call_record(r, "add").is_some());
    assert!(call_record(&recs, "echo").is_some(), "audit survived the kill");

    // A clean stop keeps the gate shut too, and says how to open it.
    w.daemon.terminate();
    refused("SIGTERM");
    let log = w.daemon.log_text();
    assert!(log.contains("mcpwatchd --release-pins"), "{log}");

    // Release: the cgroup connects directly again; nothing stays pinned.
    let out = std::process::Command::new(mcpwatch_tests::daemon::bin("mcpwatchd"))
        .arg("--release-pins")
        .arg("--cgroup").arg(&cg)
        .arg("--pin-dir").arg(&base)
        .output()
        .expect("run mcpwatchd --release-pins");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("released 11 pinned links"), "{stdout}");
    assert!(!pin_dir.exists(), "pin dir left behind");
    let r = raw_client(Some(&cg), "127.0.0.3", echo.addr.port(), false, 0, b"direct");
    assert_eq!(harness::unhex(r["got"].as_str().unwrap()), b"direct");
    let local: SocketAddr = format!("{}:{}", r["local"][0].as_str().unwrap(), r["local"][1]).parse().unwrap();
    assert_eq!(echo.seen().last().and_then(|s| s.peer), Some(local), "after --release-pins the client connects directly");

    // Pins left by a fail-closed run are released by a daemon started in open mode.
    w.daemon = Daemon::start(opts(Some(&cg), "closed", Some(state.clone())));
    w.daemon.terminate();
    assert_eq!(pins(), all_pins);
    w.daemon = Daemon::start(opts(Some(&cg), "open", Some(state.clone())));
    assert_eq!(w.daemon.status().pinned_at, None);
    assert!(!pin_dir.exists(), "open mode left the fail-closed pins in place");
    w.daemon.terminate();
    assert_eq!(connect_outcome(Some(&cg), "127.0.0.3", probe.addr.port()), "connected", "open mode: direct after stop");
    drop(w);
    drop(bpffs);
}

/// HTTP/3 runs over UDP, which cannot be redirected: from the watched cgroup, a QUIC
/// datagram toward an in-scope port is refused (EPERM; HTTP/3 clients then fall back to
/// TCP), and so is one toward port 53 of a host that is not a configured resolver (QUIC
/// on port 53 would pass for DNS); DNS to the resolver is sent, and `mcpwatch status`
/// counts the refusals; TCP to the same port is still redirected and relayed.
#[test]
fn quic_toward_an_in_scope_port_is_refused_and_counted() {
    let echo = RawServer::start("127.0.0.3:0", RawBehaviour { echo: true, ..Default::default() });
    let port = echo.addr.port();
    let opts = DaemonOpts { ports: Some(format!("53,{port}")), config: Some("[scope]\ndns_servers = [\"127.0.0.3\"]\n".into()), ..Default::default() };
    let Some(w) = Watched::start_with("quic_toward_an_in_scope_port_is_refused_and_counted", opts) else { return };
    let out = harness::py(
        Some(w.cgroup()),
        &format!(
            "import errno, json, socket\n\
             def send(host, port):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    try:\n        s.sendto(b'\\xc0quic-initial', (host, port)); return 'sent'\n    except OSError as e:\n        return errno.errorcode.get(e.errno, str(e.errno))\n\
             print(json.dumps({{'quic': send('127.0.0.3', {port}), 'dns': send('127.0.0.3', 53), 'quic_on_53': send('127.0.0.4', 53)}}))"
        ),
    );
    assert_eq!(out["quic"], "EPERM", "{out}");
    assert_eq!(out["dns"], "sent", "{out}");
    assert_eq!(out["quic_on_53"], "EPERM", "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while w.daemon.status().counts.udp_refused < 1 {
        assert!(std::time::Instant::now() < deadline, "status never counted the refused datagram");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let cli = w.daemon.cli(&["status"]);
    assert!(String::from_utf8_lossy(&cli.stdout).contains("udp refused"), "{}", String::from_utf8_lossy(&cli.stdout));
    let r = raw_client(Some(w.cgroup()), "127.0.0.3", port, false, 0, b"over tcp");
    assert_eq!(harness::unhex(r["got"].as_str().unwrap()), b"over tcp");
}

/// A process described once is not taken for the same program after it exec'd another:
/// the daemon's process cache is keyed by the process image the `connect` hook saw
/// (tgid, start time, last exec), not by the pid alone. Keyed by pid, the second call
/// here (made by bash after `execv`, same pid, within the cache's 5 s) was recorded as
/// python's, with python's exe and command line: the identity `[[agent]]` rules match.
#[test]
fn a_process_that_execs_another_program_is_described_again() {
    let reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 36\r\nConnection: close\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}".to_vec();
    let server = RawServer::start("127.0.0.3:0", RawBehaviour { http_reply: Some(reply), ..Default::default() });
    let port = server.addr.port();
    let Some(w) = Watched::start("a_process_that_execs_another_program_is_described_again", &port.to_string()) else { return };
    let post = |tool: &str| {
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#);
        format!("POST /mcp HTTP/1.1\r\nHost: 127.0.0.3:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    };
    // python3 calls `first`, then becomes bash (same pid), which calls `second`.
    let bash = format!(
        "exec 3<>/dev/tcp/127.0.0.3/{port}; printf '%s' \"$REQ\" >&3; cat <&3 >/dev/null; echo done"
    );
    let script = format!(
        r#"import os, socket
s = socket.create_connection(("127.0.0.3", {port}))
s.sendall({first:?}.encode())
while s.recv(65536): pass
s.close()
os.environ["REQ"] = {second:?}
os.execv("/bin/bash", ["bash", "-c", {bash:?}])
"#,
        first = post("first"),
        second = post("second"),
    );
    let out = python_in(&w, &script);
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"), "{}", String::from_utf8_lossy(&out.stderr));
    let recs = w.daemon.wait_audit("both calls recorded", |r| call_record(r, "first").is_some() && call_record(r, "second").is_some());
    let first = call_record(&recs, "first").and_then(|r| r.process.clone()).expect("first call's process");
    let second = call_record(&recs, "second").and_then(|r| r.process.clone()).expect("second call's process");
    assert_eq!(first.tgid, second.tgid, "the same process made both calls");
    assert!(first.exe.as_deref().unwrap_or_default().contains("python"), "{first:?}");
    assert!(second.exe.as_deref().unwrap_or_default().ends_with("bash"), "after exec the process is bash: {second:?}");
    assert_eq!(second.comm, "bash", "{second:?}");
    // The hook read the start time: one process, one start, whatever it runs.
    assert!(first.start_ticks.is_some() && first.start_ticks == second.start_ticks, "{first:?} {second:?}");
}

/// A client that connects, sends its call and then becomes another program (or exits)
/// before the daemon reads it from `/proc` was judged as that program (or as nobody, so
/// no agent's rules applied). The daemon now checks, after reading, that the process is
/// still the image the `connect` hook saw (alive, same start, no exec since): toward an
/// enforced server a call from a process that changed is refused, and recorded. Here the
/// daemon is stopped (SIGSTOP) while the client connects, sends and execs `sleep`, so it
/// reads `/proc` only after the exec.
#[test]
fn a_client_that_execs_before_it_is_identified_is_refused_in_enforce_mode() {
    let reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 36\r\nConnection: close\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}".to_vec();
    let server = RawServer::start("127.0.0.3:0", RawBehaviour { http_reply: Some(reply), ..Default::default() });
    let port = server.addr.port();
    let opts = DaemonOpts { ports: Some(port.to_string()), policy: Some("version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n".into()), ..Default::default() };
    let Some(w) = Watched::start_with("a_client_that_execs_before_it_is_identified_is_refused_in_enforce_mode", opts) else { return };
    let post = |tool: &str| {
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#);
        format!("POST /mcp HTTP/1.1\r\nHost: 127.0.0.3:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    };
    let daemon_pid = w.daemon.pid();
    let script = format!(
        r#"import os, signal, socket
# An ordinary call first: identified, forwarded.
s = socket.create_connection(("127.0.0.3", {port}))
s.sendall({plain:?}.encode())
while s.recv(65536): pass
s.close()
os.kill({daemon_pid}, signal.SIGSTOP)
# Stopped for real (every thread), not just signalled: it must not accept meanwhile.
import glob, time
def stopped():
    states = []
    for f in glob.glob("/proc/{daemon_pid}/task/*/stat"):
        try:
            states.append(open(f).read().rsplit(")", 1)[1].split()[0])
        except OSError:
            pass
    return states and all(st in ("T", "t") for st in states)
while not stopped():
    time.sleep(0.005)
try:
    s = socket.create_connection(("127.0.0.3", {port}))
    s.sendall({changed:?}.encode())
    os.set_inheritable(s.fileno(), True)
finally:
    pid = os.fork()
    if pid == 0:
        import time
        time.sleep(0.5)
        os.kill({daemon_pid}, signal.SIGCONT)
        os._exit(0)
print("execing", flush=True)
os.execv("/bin/sleep", ["sleep", "3"])
"#,
        plain = post("plain_call"),
        changed = post("after_exec_call"),
    );
    let out = python_in(&w, &script);
    // Whatever happened, the daemon runs again.
    let _ = std::process::Command::new("kill").args(["-CONT", &daemon_pid.to_string()]).status();
    assert!(String::from_utf8_lossy(&out.stdout).contains("execing"), "{}", String::from_utf8_lossy(&out.stderr));
    let recs = w.daemon.wait_audit("the refusal", |r| r.iter().any(|x| x.alerts.iter().any(|a| a.contains("identity unverified"))));
    let refusal = recs.iter().find(|x| x.alerts.iter().any(|a| a.contains("identity unverified"))).unwrap();
    assert!(refusal.alerts.iter().any(|a| a.contains("ran another program")), "{refusal:#?}");
    assert!(call_record(&recs, "plain_call").is_some(), "the ordinary call was judged and forwarded");
    let seen: String = server.seen().iter().map(|s| String::from_utf8_lossy(&s.bytes).into_owned()).collect();
    assert!(seen.contains("plain_call"), "{seen}");
    assert!(!seen.contains("after_exec_call"), "the call of a process that changed reached the server: {seen}");
}

/// Runs a python3 script inside the watched cgroup; what it printed.
fn python_in(w: &Watched, script: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(script).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    peers::move_into_cgroup(&mut cmd, w.cgroup());
    cmd.output().expect("run python3")
}
