//! `mcpwatch wrap`: enforcing on stdio servers through the daemon's gate.
//!
//! A real Python SDK client launches the real Python SDK server over stdio, through
//! `mcpwatch wrap --`, exactly as a configured client would; the decisions come from a
//! real mcpwatchd (static upstream mode, no eBPF needed). Also: the failure modes when
//! the daemon is down, and the gate socket's own protocol boundary (no control
//! requests, identity from SO_PEERCRED only).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mcpwatch_api::{AuditRecord, CallStatus};
use mcpwatch_tests::daemon::{bin, Daemon, DaemonOpts};
use mcpwatch_tests::peers::{peers_dir, venv_python};
use serde_json::Value;

const POLICY: &str = r#"
version = 1
mode = "enforce"
default = "allow"

[[rule]]
id = "no-delete"
action = "deny"
tools = ["delete_records"]
message = "deleting records is not allowed"

[inspect.detectors]
default_action = "redact"
"#;

fn daemon(failure_mode: Option<&'static str>) -> Daemon {
    Daemon::start(DaemonOpts {
        static_upstream: Some("127.0.0.1:9".parse().unwrap()),
        policy: Some(POLICY.to_string()),
        failure_mode,
        ..Default::default()
    })
}

/// The stdio server command, run through `mcpwatch wrap` with `wrap_args`.
fn wrapped_server(wrap_args: &[&str], record: &Path) -> Vec<String> {
    let mut cmd: Vec<String> = vec![bin("mcpwatch").display().to_string()];
    cmd.extend(wrap_args.iter().map(|s| s.to_string()));
    cmd.push("--".into());
    cmd.push(venv_python().display().to_string());
    cmd.push(peers_dir().join("python").join("wrap_stdio_server.py").display().to_string());
    cmd.push("--record".into());
    cmd.push(record.display().to_string());
    cmd
}

/// Run the Python SDK stdio client (bounded in time); returns its output and pid.
fn run_client(steps: &[&str], server: &[String], env: &[(&str, &str)]) -> (Output, u32) {
    let mut cmd = Command::new(venv_python());
    cmd.arg(peers_dir().join("python").join("wrap_stdio_client.py")).arg("--timeout").arg("20").args(steps).arg("--").args(server);
    cmd.envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the python stdio client");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().expect("wait client").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("stdio client did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child.wait_with_output().expect("client output"), pid)
}

fn steps(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn recorded(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn call<'a>(records: &'a [AuditRecord], tool: &str) -> &'a AuditRecord {
    records
        .iter()
        .find(|r| r.method.as_deref() == Some("tools/call") && r.name.as_deref() == Some(tool) && r.direction == "client->server")
        .unwrap_or_else(|| panic!("no audit record for tools/call {tool}: {records:#?}"))
}

#[test]
fn wrap_denies_redacts_and_audits_a_real_stdio_server() {
    let d = daemon(None);
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("calls.jsonl");
    let socket = d.socket.display().to_string();
    let server = wrapped_server(&["--socket", &socket, "wrap"], &record);
    let (out, client_pid) = run_client(
        &["list", "call", "echo", r#"{"text":"hi"}"#, "call", "delete_records", r#"{"table":"users"}"#, "call", "lookup_customer", r#"{"customer_id":"7"}"#],
        &server,
        &[],
    );
    let s = steps(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(s.len(), 5, "connect + 4 steps: {s:#?}\n{stderr}\n{}", d.log_text());
    assert_eq!(s[0]["server"], "mcpwatch-peer-python", "{s:#?}");
    // Allowed call passes.
    assert_eq!(s[2]["ok"], true, "{s:#?}");
    assert_eq!(s[2]["text"], "hi");
    // Denied call: a JSON-RPC error from mcpwatch, and the server never saw it.
    assert_eq!(s[3]["ok"], false, "{s:#?}");
    assert_eq!(s[3]["error"]["kind"], "jsonrpc");
    assert_eq!(s[3]["error"]["code"], -32001);
    assert!(s[3]["error"]["message"].as_str().unwrap().contains("deleting records is not allowed"), "{s:#?}");
    // Redacted result: the SSN and the card never reach the client.
    let text = s[4]["text"].as_str().unwrap();
    assert!(s[4]["ok"] == true && text.contains("customer 7"), "{s:#?}");
    assert!(!text.contains("536-22-8741") && !text.contains("4111"), "result not redacted: {text}");
    let seen: Vec<String> = recorded(&record).iter().map(|c| c["tool"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(seen, ["echo", "lookup_customer"], "the server received exactly the allowed calls");

    // Audit: one record per call, transport stdio, attributed to the client process.
    let records = d.wait_audit("the three stdio calls completed", |r| {
        ["echo", "delete_records", "lookup_customer"].iter().all(|t| {
            r.iter().any(|x| x.name.as_deref() == Some(*t) && x.direction == "client->server" && x.status != CallStatus::Pending)
        })
    });
    for tool in ["echo", "delete_records", "lookup_customer"] {
        let r = call(&records, tool);
        assert_eq!(r.transport, "stdio", "{r:#?}");
        let p = r.process.as_ref().unwrap_or_else(|| panic!("no process on {r:#?}"));
        assert_eq!(p.tgid, client_pid, "attributed to the client that launched the wrapper: {r:#?}");
        assert!(r.server.starts_with("stdio:"), "{r:#?}");
    }
    assert!(matches!(call(&records, "echo").status, CallStatus::Ok), "{records:#?}");
    let denied = call(&records, "delete_records");
    assert_eq!(denied.decision.as_ref().unwrap().effective, "block", "{denied:#?}");
    assert!(matches!(denied.status, CallStatus::JsonrpcError { code: -32001, .. }), "{denied:#?}");
    let redacted = call(&records, "lookup_customer");
    assert!(redacted.findings.iter().any(|f| f.direction == "response" && f.action == "redact"), "{redacted:#?}");

    // Inventory: the stdio server with its identity and pinned tools.
    let list = d.list();
    let entry = list.iter().find(|e| e.transport == "stdio").unwrap_or_else(|| panic!("no stdio server in the inventory: {list:#?}"));
    assert_eq!(entry.server_name.as_deref(), Some("mcpwatch-peer-python"));
    assert!(entry.endpoint.contains("wrap_stdio_server.py"), "command line in the key: {}", entry.endpoint);
    assert!(entry.tools.iter().any(|t| t.name == "echo" && !t.hash.is_empty()), "{entry:#?}");
    assert!(entry.clients.iter().any(|c| c.comm.contains("python")), "{entry:#?}");
}

#[test]
fn wrap_follows_the_failure_mode_when_the_daemon_is_down() {
    // Closed: the daemon published `closed` and stopped; the wrapper refuses and never
    // starts the server.
    let mut d = daemon(Some("closed"));
    let socket = d.socket.display().to_string();
    let mode_file = d.socket.with_file_name("failure-mode");
    assert_eq!(std::fs::read_to_string(&mode_file).unwrap().trim(), "closed");
    d.terminate();
    assert_eq!(std::fs::read_to_string(&mode_file).unwrap().trim(), "closed", "the failure-mode file outlives the daemon");
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("calls.jsonl");
    let server = wrapped_server(&["--socket", &socket, "wrap"], &record);
    let (out, _) = run_client(&["call", "echo", r#"{"text":"hi"}"#], &server, &[]);
    let s = steps(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(s[0]["ok"], false, "closed: the client must not get a session: {s:#?}\n{stderr}");
    assert!(s[0]["error"]["message"].as_str().unwrap_or_default().contains("failure mode is closed"), "{s:#?}");
    assert!(stderr.contains("failure mode closed"), "{stderr}");
    assert!(!record.exists(), "closed: the server was never started");

    // Open: relayed, unobserved, said once on stderr.
    let server = wrapped_server(&["--socket", &socket, "wrap", "--failure", "open"], &record);
    let (out, _) = run_client(&["call", "echo", r#"{"text":"hi"}"#], &server, &[]);
    let s = steps(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(s.len(), 2, "{s:#?}\n{stderr}");
    assert_eq!(s[1]["text"], "hi", "{s:#?}");
    assert_eq!(stderr.matches("UNOBSERVED").count(), 1, "one warning on stderr: {stderr}");
    assert_eq!(recorded(&record).len(), 1);
}

fn gate_line(stream: &mut UnixStream, reader: &mut BufReader<UnixStream>, line: &str) -> Option<Value> {
    stream.write_all(line.as_bytes()).unwrap();
    stream.write_all(b"\n").unwrap();
    let mut answer = String::new();
    match reader.read_line(&mut answer) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(serde_json::from_str(&answer).unwrap()),
    }
}

fn gate_conn(d: &Daemon) -> (UnixStream, BufReader<UnixStream>) {
    let s = UnixStream::connect(d.socket.with_file_name("gate.sock")).expect("connect to the gate socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

#[test]
fn gate_refuses_control_requests_and_takes_identity_from_the_kernel() {
    let d = daemon(None);
    let gate: PathBuf = d.socket.with_file_name("gate.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&gate).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o666, "wrapped servers run as any user");

    // Control requests are not gate requests: error, then the connection closes.
    for control in [r#"{"op":"status"}"#, r#"{"seq":1,"op":"approve","id":"x"}"#, r#"{"seq":1,"op":"pin_accept","server":"s"}"#] {
        let (mut s, mut r) = gate_conn(&d);
        let answer = gate_line(&mut s, &mut r, control).expect("an error answer");
        assert_eq!(answer["verdict"], "error", "{control}: {answer}");
        assert!(gate_line(&mut s, &mut r, r#"{"seq":2,"op":"open","command":["x"]}"#).is_none(), "{control}: connection closed after the error");
    }
    // Messages before `open` are refused too.
    let (mut s, mut r) = gate_conn(&d);
    let answer = gate_line(&mut s, &mut r, r#"{"seq":1,"op":"client","line":"{}"}"#).unwrap();
    assert_eq!(answer["verdict"], "error", "{answer}");

    // A forged identity in the messages is ignored; the kernel's is recorded.
    let (mut s, mut r) = gate_conn(&d);
    let opened = gate_line(&mut s, &mut r, r#"{"seq":1,"op":"open","command":["forged-server"],"pid":1,"uid":4242,"process":{"pid":1,"comm":"systemd"}}"#).unwrap();
    assert_eq!(opened["verdict"], "opened", "{opened}");
    let call = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"},"pid":1}}"#;
    let line = serde_json::json!({"seq": 2, "op": "client", "line": call, "pid": 1, "uid": 4242}).to_string();
    let verdict = gate_line(&mut s, &mut r, &line).unwrap();
    assert_eq!(verdict["verdict"], "forward", "{verdict}");
    let records = d.wait_audit("the forged call", |r| r.iter().any(|x| x.server == "stdio:forged-server" && x.name.as_deref() == Some("echo")));
    let rec = records.iter().find(|x| x.server == "stdio:forged-server" && x.name.as_deref() == Some("echo")).unwrap();
    let p = rec.process.as_ref().expect("process from SO_PEERCRED");
    assert_eq!(p.tgid, std::os::unix::process::parent_id(), "the wrapper's (this test's) parent: {rec:#?}");
    assert_eq!(p.uid, nix::unistd::getuid().as_raw(), "{rec:#?}");
    assert!(rec.notes.iter().any(|n| n.contains(&format!("wrapper pid {}", std::process::id()))), "{rec:#?}");
}
