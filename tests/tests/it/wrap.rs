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

# Registered by what it launches, as the daemon reads the wrapped command line.
[[server]]
name = "stdio-peer"
command = "**/wrap_stdio_server.py"

[[rule]]
id = "no-delete"
action = "deny"
tools = ["delete_records"]
message = "deleting records is not allowed"

[inspect.detectors]
default_action = "redact"
"#;

fn daemon(failure_mode: Option<&'static str>) -> Daemon {
    daemon_with(POLICY, failure_mode)
}

fn daemon_with(policy: &str, failure_mode: Option<&'static str>) -> Daemon {
    Daemon::start(DaemonOpts {
        static_upstream: Some("127.0.0.1:9".parse().unwrap()),
        policy: Some(policy.to_string()),
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
        assert!(r.server.starts_with("stdio://script:"), "{r:#?}");
        assert!(r.notes.iter().any(|n| n.contains("--record")), "the command line is kept: {r:#?}");
    }
    assert!(matches!(call(&records, "echo").status, CallStatus::Ok), "{records:#?}");
    let denied = call(&records, "delete_records");
    assert_eq!(denied.decision.as_ref().unwrap().effective.as_str(), "block", "{denied:#?}");
    assert!(matches!(denied.status, CallStatus::JsonrpcError { code: -32001, .. }), "{denied:#?}");
    let redacted = call(&records, "lookup_customer");
    assert!(redacted.findings.iter().any(|f| f.direction == "response" && f.action == "redact"), "{redacted:#?}");

    // Inventory: the stdio server with its identity and pinned tools.
    let list = d.list();
    let entry = list.iter().find(|e| e.transport == "stdio").unwrap_or_else(|| panic!("no stdio server in the inventory: {list:#?}"));
    assert_eq!(entry.server_name.as_deref(), Some("mcpwatch-peer-python"));
    assert!(entry.endpoint.starts_with("stdio://script:") && entry.endpoint.ends_with("wrap_stdio_server.py"), "the launch in the key: {}", entry.endpoint);
    assert_eq!(entry.registered.as_deref(), Some("stdio-peer"), "registered by its command: {entry:#?}");
    assert!(entry.tools.iter().any(|t| t.name == "echo" && !t.hash.is_empty()), "{entry:#?}");
    assert!(entry.clients.iter().any(|c| c.comm.contains("python")), "{entry:#?}");
    // Coverage: every call went through the gate, none was only observed.
    let cov = d.status().coverage.expect("status carries coverage");
    assert!(cov.calls_seen >= 2 && cov.calls_observed_only == 0 && cov.governed_percent == Some(100.0), "{cov:?}");
}

#[test]
fn wrap_holds_a_stdio_call_until_a_human_approves_it() {
    let policy = format!(
        "{POLICY}\n[[rule]]\nid = \"approve-reads\"\ntools = [\"read_file\"]\naction = \"require_approval\"\n\n[approvals]\napprovers = [\"uid:0\"]\n"
    );
    let d = daemon_with(&policy, None);
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("calls.jsonl");
    let socket = d.socket.display().to_string();
    let server = wrapped_server(&["--socket", &socket, "wrap"], &record);
    let client = std::thread::spawn(move || run_client(&["call", "read_file", r#"{"path":"notes.txt"}"#], &server, &[]).0);
    let held = d.wait_pending(1);
    assert_eq!(held[0].tool.as_deref(), Some("read_file"));
    assert!(held[0].server.starts_with("stdio:"), "{held:?}");
    assert!(recorded(&record).is_empty(), "the server must not see a held call before approval");
    match d.request(&mcpwatch_api::Request::Approve { id: held[0].id.clone() }) {
        mcpwatch_api::Response::Done { .. } => {}
        other => panic!("approve: {other:?}"),
    }
    let out = client.join().unwrap();
    let s = steps(&out);
    assert_eq!(s[1]["ok"], true, "{s:#?}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(s[1]["text"].as_str().unwrap().contains("notes.txt"), "{s:#?}");
    assert_eq!(recorded(&record).len(), 1, "approved call reached the server once");
    let records = d.wait_audit("the approved call", |r| r.iter().any(|x| x.name.as_deref() == Some("read_file") && x.status == CallStatus::Ok));
    let rec = call(&records, "read_file");
    assert!(rec.decision.as_ref().unwrap().approval.as_deref().unwrap_or_default().starts_with("approved"), "{rec:#?}");
}

/// A policy whose one flow rule denies a destructive call (`delete_records`) after a
/// result of `untrusted` (labelled `untrusted_content`) in the same session.
fn untrusted_then_destructive(untrusted: &str) -> String {
    format!(
        r#"
version = 1
mode = "enforce"
default = "allow"

[[label]]
tools = ["{untrusted}"]
labels = ["untrusted_content"]

[[label]]
tools = ["delete_records"]
labels = ["destructive"]

[[flow]]
id = "untrusted-destructive"
sequence = ["untrusted_content", "destructive"]
action = "deny"
"#
    )
}

/// Toxic flows are judged on the stdio path exactly as on the network: a result of an
/// `untrusted_content` tool taints the session, and the destructive call it would lead to
/// is denied by the gate, naming the call that tainted it. (Before the govern stage was
/// shared, the gate had its own copy of the request checks without `[[flow]]` rules: the
/// same agent reached by stdio completed the flow the proxy would have stopped.)
#[test]
fn wrap_denies_a_toxic_flow_like_the_network_path() {
    let policy = untrusted_then_destructive("echo");
    let d = daemon_with(&policy, None);
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("calls.jsonl");
    let socket = d.socket.display().to_string();
    let server = wrapped_server(&["--socket", &socket, "wrap"], &record);
    let (out, client_pid) =
        run_client(&["call", "delete_records", r#"{"table":"a"}"#, "call", "echo", r#"{"text":"drop table users"}"#, "call", "delete_records", r#"{"table":"users"}"#], &server, &[]);
    let s = steps(&out);
    assert_eq!(s.len(), 4, "connect + 3 steps: {s:#?}\n{}\n{}", String::from_utf8_lossy(&out.stderr), d.log_text());
    assert_eq!(s[1]["ok"], true, "before any taint the destructive call is allowed: {s:#?}");
    assert_eq!(s[2]["ok"], true, "{s:#?}");
    assert_eq!(s[3]["ok"], false, "after the untrusted result the destructive call is denied: {s:#?}");
    assert_eq!(s[3]["error"]["code"], -32001, "{s:#?}");
    let seen: Vec<String> = recorded(&record).iter().map(|c| c["tool"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(seen, ["delete_records", "echo"], "the denied call never reached the server");

    let records = d.wait_audit("the three stdio calls completed", |r| {
        r.iter().filter(|x| x.method.as_deref() == Some("tools/call") && x.direction == "client->server" && x.status != CallStatus::Pending).count() >= 3
    });
    let denied = records
        .iter()
        .find(|r| r.name.as_deref() == Some("delete_records") && matches!(r.status, CallStatus::JsonrpcError { .. }))
        .unwrap_or_else(|| panic!("no denied delete_records record: {records:#?}"));
    let decision = denied.decision.as_ref().expect("decision");
    assert_eq!(decision.effective, mcpwatch_api::Effect::Block, "{denied:#?}");
    assert_eq!(decision.rules.first().map(String::as_str), Some("flow:untrusted-destructive"), "{denied:#?}");
    let flow = denied.flow.as_ref().unwrap_or_else(|| panic!("no flow view: {denied:#?}"));
    assert!(flow.tainted && !flow.tainted_by.is_empty(), "{flow:?}");
    assert!(flow.session.contains(&format!("#proc:{client_pid}:")), "the session is the client process: {flow:?}");
    let echo = records.iter().find(|r| r.name.as_deref() == Some("echo")).expect("echo record");
    assert!(echo.flow.as_ref().is_some_and(|f| f.taints), "the echo result tainted the session: {echo:#?}");
    assert_eq!(flow.tainted_by, vec![echo.id.clone()], "the refusal names the tainting call");
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

/// Send one line, read one answer; `None` once the daemon has closed the connection.
fn gate_line(stream: &mut UnixStream, reader: &mut BufReader<UnixStream>, line: &str) -> Option<Value> {
    if stream.write_all(format!("{line}\n").as_bytes()).is_err() {
        return None;
    }
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
    // What mcpwatch cannot read never reaches the server (a duplicate key could be read
    // differently there), and the server cannot answer an id the client never sent.
    let dup = r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"echo","name":"delete_records"}}"#;
    let verdict = gate_line(&mut s, &mut r, &serde_json::json!({"seq": 3, "op": "client", "line": dup}).to_string()).unwrap();
    assert_eq!(verdict["verdict"], "answer", "{verdict}");
    let forged_answer = r#"{"jsonrpc":"2.0","id":77,"result":{"content":[]}}"#;
    let verdict = gate_line(&mut s, &mut r, &serde_json::json!({"seq": 4, "op": "server", "line": forged_answer}).to_string()).unwrap();
    assert_eq!(verdict["verdict"], "drop", "{verdict}");
    let records = d.wait_audit("the forged call", |r| r.iter().any(|x| x.server == "stdio://binary:forged-server" && x.name.as_deref() == Some("echo")));
    let rec = records.iter().find(|x| x.server == "stdio://binary:forged-server" && x.name.as_deref() == Some("echo")).unwrap();
    let p = rec.process.as_ref().expect("process from SO_PEERCRED");
    assert_eq!(p.tgid, std::os::unix::process::parent_id(), "the wrapper's (this test's) parent: {rec:#?}");
    assert_eq!(p.uid, nix::unistd::getuid().as_raw(), "{rec:#?}");
    assert!(rec.notes.iter().any(|n| n.contains(&format!("wrapper pid {}", std::process::id()))), "{rec:#?}");
}

/// Every regular file below `dir`, relative path → bytes.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for (rel, bytes) in snapshot(from) {
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(dest, bytes).unwrap();
    }
}

fn mcpwatch(args: &[&str]) -> Output {
    Command::new(bin("mcpwatch")).args(args).stdin(Stdio::null()).output().expect("run mcpwatch")
}

/// Originals only (backups are new files beside them).
fn originals(snap: &std::collections::BTreeMap<PathBuf, Vec<u8>>) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    snap.iter().filter(|(p, _)| !p.to_string_lossy().ends_with(".mcpwatch-backup")).map(|(p, b)| (p.clone(), b.clone())).collect()
}

#[test]
fn wrap_install_is_idempotent_reversible_and_refuses_unparseable_files() {
    let fixtures = mcpwatch_tests::peers::repo_root().join("tests/fixtures/discovery");
    for tree in ["root", "clean"] {
        let original = snapshot(&fixtures.join(tree));
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join(tree);
        copy_tree(&fixtures.join(tree), &root);
        let r = root.display().to_string();
        let args = |verb: &str, extra: &[&str]| -> Vec<String> {
            let mut v = vec!["wrap".to_string(), verb.to_string(), "--all".to_string()];
            if tree == "root" {
                v.extend(["--root".to_string(), r.clone()]);
            } else {
                v.extend(["--home".to_string(), root.join("home").display().to_string()]);
            }
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let run = |a: Vec<String>| mcpwatch(&a.iter().map(String::as_str).collect::<Vec<_>>());

        let policy = fixtures.join("policy.toml").display().to_string();
        let standing = |v: &Value| -> Vec<(String, Value, Value)> {
            let mut out: Vec<_> = v["servers"].as_array().unwrap().iter().map(|s| (format!("{}#{}", s["file"], s["name"]), s["registry"].clone(), s["risks"].clone())).collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        };
        let before = standing(&serde_json::from_slice(&mcpwatch(&["scan", "--root", &r, "--json", "--policy", &policy]).stdout).unwrap());

        // --dry-run changes nothing and shows a diff.
        let dry = run(args("--install", &["--dry-run"]));
        assert_eq!(snapshot(&root), original, "{tree}: --dry-run wrote something");
        let dry_text = String::from_utf8_lossy(&dry.stdout).to_string();
        // The clean home has only a remote server: nothing to wrap there.
        let has_stdio = tree == "root";
        assert_eq!(dry_text.contains("\n+") && dry_text.contains("wrap"), has_stdio, "{tree}: {dry_text}");

        let first = run(args("--install", &[]));
        let out = String::from_utf8_lossy(&first.stdout).to_string();
        let after_one = snapshot(&root);
        assert_eq!(originals(&after_one) != original, has_stdio, "{tree}: {out}");
        let second = run(args("--install", &[]));
        assert_eq!(snapshot(&root), after_one, "{tree}: install twice differs from once: {}", String::from_utf8_lossy(&second.stdout));

        // Every changed file: a backup with the original bytes, and the new text parses
        // with the wrapped launch.
        for (rel, bytes) in originals(&after_one) {
            if original.get(&rel) != Some(&bytes) {
                let backup = PathBuf::from(format!("{}.mcpwatch-backup", root.join(&rel).display()));
                assert_eq!(std::fs::read(&backup).unwrap(), original[&rel], "{}", backup.display());
            }
        }

        if tree == "root" {
            // bob's file does not parse: named with line:column, never touched.
            let bob = PathBuf::from("home/bob/.cursor/mcp.json");
            assert_eq!(after_one[&bob], original[&bob]);
            assert!(out.contains(&format!("refused {}:", root.join(&bob).display())) && out.contains(":6:7"), "{out}");
            assert_eq!(first.status.code(), Some(1), "a refused file is an error: {out}");
            // The scan now sees wrapped servers, and still judges and registers what they
            // run: registry standing and risk flags are those of the unwrapped launch.
            let scan = mcpwatch(&["scan", "--root", &r, "--json", "--policy", &policy]);
            let v: Value = serde_json::from_slice(&scan.stdout).unwrap();
            assert_eq!(standing(&v), before, "wrapping changed a server's registry standing or risks");
            let cursor = v["servers"].as_array().unwrap().iter().find(|s| s["name"] == "filesystem").unwrap().clone();
            assert_eq!(cursor["wrapped"], true, "{cursor}");
            assert!(cursor["args"].as_array().unwrap().iter().any(|a| a == "wrap"), "{cursor}");
        }

        let undo_dry = run(args("--uninstall", &["--dry-run"]));
        assert_eq!(snapshot(&root), after_one, "{tree}: uninstall --dry-run wrote something");
        assert_eq!(String::from_utf8_lossy(&undo_dry.stdout).contains("\n-"), has_stdio, "{tree}");
        run(args("--uninstall", &[]));
        assert_eq!(originals(&snapshot(&root)), original, "{tree}: install + uninstall is not byte-identical");
    }
}

#[test]
fn scan_reports_stdio_servers_that_are_not_wrapped() {
    let root = mcpwatch_tests::peers::repo_root().join("tests/fixtures/discovery/root");
    let r = root.display().to_string();
    let scan = mcpwatch(&["scan", "--root", &r, "--json"]);
    let v: Value = serde_json::from_slice(&scan.stdout).unwrap();
    let servers = v["servers"].as_array().unwrap();
    let stdio = servers.iter().filter(|s| s["transport"] == "stdio").count();
    assert!(stdio > 0);
    assert_eq!(v["summary"]["unwrapped"], stdio, "no fixture is wrapped yet");
    assert!(servers.iter().filter(|s| s["transport"] != "stdio").all(|s| s["wrapped"].is_null()));
    let sarif = mcpwatch(&["scan", "--root", &r, "--format", "sarif"]);
    let v: Value = serde_json::from_slice(&sarif.stdout).unwrap();
    let run0 = &v["runs"][0];
    let rules = run0["tool"]["driver"]["rules"].as_array().unwrap();
    let idx = rules.iter().position(|x| x["id"] == "unwrapped-stdio").expect("an unwrapped-stdio rule");
    let notes: Vec<&Value> = run0["results"].as_array().unwrap().iter().filter(|x| x["ruleId"] == "unwrapped-stdio").collect();
    assert_eq!(notes.len(), stdio);
    assert!(notes.iter().all(|n| n["ruleIndex"] == idx && n["level"] == "note"));
}

#[test]
fn gate_never_lends_another_users_parent_identity() {
    // An unprivileged user's wrapper whose parent is root (here: this test; in an
    // attack, init after the wrapper orphaned itself) is attributed to itself.
    let d = daemon(None);
    let gate = d.socket.with_file_name("gate.sock");
    let script = r#"
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rwb")
def ask(m):
    f.write((json.dumps(m) + "\n").encode()); f.flush(); return json.loads(f.readline())
print(json.dumps(ask({"seq": 1, "op": "open", "command": ["nobody-server"], "uid": 0})))
call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
print(json.dumps(ask({"seq": 2, "op": "client", "line": json.dumps(call)})))
print(os.getpid(), flush=True)
"#;
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "/usr/bin/python3", "-c", script])
        .arg(&gate)
        .output()
        .expect("run setpriv");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let pid: u32 = text.lines().last().unwrap().trim().parse().unwrap();
    let records = d.wait_audit("nobody's call", |r| r.iter().any(|x| x.server == "stdio://binary:nobody-server" && x.name.as_deref() == Some("echo")));
    let rec = records.iter().find(|x| x.server == "stdio://binary:nobody-server" && x.name.as_deref() == Some("echo")).unwrap();
    let p = rec.process.as_ref().expect("process");
    assert_eq!((p.uid, p.tgid), (65534, pid), "attributed to the unprivileged wrapper, not its root parent: {rec:#?}");
}

#[test]
fn wrap_refuses_once_it_loses_the_daemon_in_closed_mode() {
    let mut d = daemon(Some("closed"));
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("calls.jsonl");
    let socket = d.socket.display().to_string();
    let cmd = wrapped_server(&["--socket", &socket, "wrap"], &record);
    let mut child = Command::new(&cmd[0]).args(&cmd[1..]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut to_wrap = child.stdin.take().unwrap();
    let from_wrap = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(from_wrap).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut send = move |v: Value| to_wrap.write_all(format!("{v}\n").as_bytes()).unwrap();
    let answer = |id: i64| -> Value {
        loop {
            let v = rx.recv_timeout(Duration::from_secs(30)).expect("an answer from the wrapper");
            if v["id"] == id {
                return v;
            }
        }
    };
    send(serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}));
    assert!(answer(1)["result"]["serverInfo"].is_object());
    send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "before"}}}));
    assert_eq!(answer(2)["result"]["content"][0]["text"], "before");

    d.kill();
    send(serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "after"}}}));
    let refused = answer(3);
    assert_eq!(refused["error"]["code"], -32005, "{refused}");
    drop(send);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lost the mcpwatch daemon") && stderr.contains("failure mode closed"), "{stderr}");
    let seen: Vec<Value> = recorded(&record);
    assert_eq!(seen.len(), 1, "only the call made while the daemon governed reached the server: {seen:?}");
}

/// `mcpwatch wrap -- <the Python SDK server>` driven by hand: raw bytes in, JSON answers
/// out (by a reader thread), so a test can write lines no SDK client would.
struct Wrapped {
    child: std::process::Child,
    to_wrap: std::process::ChildStdin,
    answers: std::sync::mpsc::Receiver<Value>,
}

impl Wrapped {
    fn start(cmd: &[String]) -> Wrapped {
        let mut child = Command::new(&cmd[0]).args(&cmd[1..]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let to_wrap = child.stdin.take().unwrap();
        let from_wrap = child.stdout.take().unwrap();
        let (tx, answers) = std::sync::mpsc::channel::<Value>();
        std::thread::spawn(move || {
            for line in BufReader::new(from_wrap).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut w = Wrapped { child, to_wrap, answers };
        w.send(serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}).to_string().as_bytes());
        assert!(w.answer(1)["result"]["serverInfo"].is_object());
        w.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        w
    }

    /// One line: `bytes` and the `\n` that ends it.
    fn send(&mut self, bytes: &[u8]) {
        self.to_wrap.write_all(bytes).and_then(|()| self.to_wrap.write_all(b"\n")).unwrap();
    }

    fn answer(&self, id: i64) -> Value {
        loop {
            let v = self.answers.recv_timeout(Duration::from_secs(30)).expect("an answer from the wrapper");
            if v["id"] == id {
                return v;
            }
        }
    }

    fn finish(self) -> Output {
        drop(self.to_wrap);
        self.child.wait_with_output().unwrap()
    }
}

/// JSON takes `\r` for whitespace, but the Python SDK reads stdio with universal newlines
/// and splits a line there: a denied call hidden behind `\r` as the value of an unknown
/// field of an allowed one was judged as the allowed call and run by the server. A line
/// with a `\r` anywhere but before its `\n` is now answered by mcpwatch and never
/// forwarded; `\r\n` line ends still work.
#[test]
fn wrap_refuses_a_line_a_carriage_return_would_split() {
    let d = daemon(None);
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("calls.jsonl");
    let socket = d.socket.display().to_string();
    let mut w = Wrapped::start(&wrapped_server(&["--socket", &socket, "wrap"], &record));
    let hidden = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_records","arguments":{"table":"users"}}}"#;
    let smuggler = format!("{{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"innocent\"}}}},\"x\":\r{hidden}\r}}");
    w.send(smuggler.as_bytes());
    let refused = w.answer(7);
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("carriage return"), "{refused}");
    // A CRLF line end is not a stray `\r`; its answer also means the server has read
    // everything sent before it.
    w.send(br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"text":"crlf"}}}"#.iter().chain(b"\r").copied().collect::<Vec<u8>>().as_slice());
    assert_eq!(w.answer(8)["result"]["content"][0]["text"], "crlf");
    let out = w.finish();
    let seen: Vec<String> = recorded(&record).iter().map(|c| c["tool"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(seen, ["echo"], "only the CRLF call reached the server: {seen:?}\n{}", String::from_utf8_lossy(&out.stderr));
    let records = d.wait_audit("the refused line", |r| r.iter().any(|x| x.alerts.iter().any(|a| a.contains("carriage return"))));
    let rec = records.iter().find(|x| x.alerts.iter().any(|a| a.contains("carriage return"))).unwrap();
    assert_eq!((rec.kind, rec.direction.as_str(), rec.jsonrpc_id.as_deref()), (mcpwatch_api::MessageKind::Invalid, "client->server", Some("7")), "{rec:#?}");
    assert!(matches!(rec.status, CallStatus::JsonrpcError { code: -32600, .. }), "{rec:#?}");
}

/// Open a gate session on a fresh connection, as a wrapper would.
/// A gate session for `command`, opened; the closure sends one line (`op` "client" or
/// "server") and returns the gate's verdict.
fn gate_asker(d: &Daemon, command: &str) -> impl FnMut(&str, Value) -> Value {
    let (mut s, mut r) = gate_session(d, command);
    let mut seq = 1;
    move |op: &str, line: Value| {
        seq += 1;
        gate_line(&mut s, &mut r, &serde_json::json!({"seq": seq, "op": op, "line": line.to_string()}).to_string()).expect("a verdict")
    }
}

fn gate_session(d: &Daemon, command: &str) -> (UnixStream, BufReader<UnixStream>) {
    let (mut s, mut r) = gate_conn(d);
    let open = serde_json::json!({"seq": 1, "op": "open", "command": [command]}).to_string();
    let opened = gate_line(&mut s, &mut r, &open).expect("an answer to open");
    assert_eq!(opened["verdict"], "opened", "{opened}");
    (s, r)
}

/// Connections held without `open` once used up their uid's 64 session slots, and a
/// dropped connection is what a dead daemon looks like: the next wrapper of that uid, in
/// failure mode open, ran its server unobserved. Now: unopened connections have their
/// own budget and are closed after 5 s, and a full budget is an explicit refusal the
/// wrapper obeys by not starting the server, whatever its failure mode.
#[test]
fn gate_exhaustion_never_lets_a_wrapper_run_unobserved() {
    let d = daemon(Some("open"));
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("calls.jsonl");
    let socket = d.socket.display().to_string();
    let server = wrapped_server(&["--socket", &socket, "wrap"], &record);
    let delete = ["call", "delete_records", r#"{"table":"users"}"#];

    // More connections than the uid's sessions (64), none of which opens.
    let held: Vec<UnixStream> = (0..72).map(|_| UnixStream::connect(d.socket.with_file_name("gate.sock")).unwrap()).collect();
    let (out, _) = run_client(&delete, &server, &[]);
    let s = steps(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("UNOBSERVED"), "{stderr}");
    assert!(!record.exists(), "the server must not run unobserved: {:?}", recorded(&record));
    assert_eq!(s[0]["ok"], false, "refused, not relayed: {s:#?}\n{stderr}");
    assert!(stderr.contains("refused the session"), "{stderr}");

    // They are closed when they do not open in time; then wrappers are governed again.
    for mut c in held {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut rest = Vec::new();
        assert!(std::io::Read::read_to_end(&mut c, &mut rest).is_ok(), "closed by the daemon, not left to time out here");
    }
    let (out, _) = run_client(&delete, &server, &[]);
    let s = steps(&out);
    assert_eq!(s[1]["error"]["code"], -32001, "governed: the rule denies it: {s:#?}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(recorded(&record).is_empty());

    // Sessions that did open fill the uid's budget: refused, said, and on the record,
    // even with --failure open.
    let _sessions: Vec<_> = (0..64).map(|i| gate_session(&d, &format!("filler-{i}"))).collect();
    let server = wrapped_server(&["--socket", &socket, "wrap", "--failure", "open"], &record);
    let (out, _) = run_client(&delete, &server, &[]);
    let s = steps(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(s[0]["ok"], false, "{s:#?}\n{stderr}");
    assert!(!stderr.contains("UNOBSERVED") && stderr.contains("too many wrapped servers"), "{stderr}");
    assert!(recorded(&record).is_empty());
    let records = d.wait_audit("the refused session", |r| r.iter().any(|x| x.alerts.iter().any(|a| a.contains("too many wrapped servers"))));
    let rec = records.iter().find(|x| x.alerts.iter().any(|a| a.contains("too many wrapped servers"))).unwrap();
    assert!(rec.server.ends_with("wrap_stdio_server.py") && rec.transport == "stdio", "{rec:#?}");
}

/// A gate line is up to 16 MiB and a uid may open 64 sessions: a wrapper that starts
/// lines and never ends them made the daemon hold a gigabyte per uid, as long as it liked.
/// The buffer a line is read into now holds its bytes from the body budget (one uid at
/// most half), and a line must be whole within `limits.body_timeout_ms` of its first byte.
/// A line the budget cannot hold is dropped and its wrapper told (the session goes on: a
/// closed session would leave a wrapper in failure mode open relaying unobserved); a line
/// not finished in time closes its connection.
#[test]
fn gate_lines_share_the_body_budget_and_must_end_in_time() {
    // An `open` is a command line: one of 300 KiB (decoded, empty arguments are ~8 times
    // their bytes) is refused.
    let defaults = daemon(None);
    let (mut o, mut ro) = gate_conn(&defaults);
    let args = vec![""; 100_000];
    let long_open = serde_json::json!({"seq": 1, "op": "open", "command": args}).to_string();
    // The daemon stops reading past the bound: the rest of the write may fail.
    let _ = o.write_all(format!("{long_open}\n").as_bytes());
    let mut refused = String::new();
    ro.read_line(&mut refused).expect("an answer to the long open");
    assert!(refused.contains("gate line longer than 262144 bytes"), "{refused}");

    let d = Daemon::start(DaemonOpts {
        static_upstream: Some("127.0.0.1:9".parse().unwrap()),
        policy: Some(POLICY.to_string()),
        // One uid's share: 131,072 bytes.
        config: Some("[limits]\nmax_body_bytes = 65536\nmax_buffered_body_bytes = 262144\nbody_timeout_ms = 3000\n".into()),
        ..Default::default()
    });
    let answer = |r: &mut BufReader<UnixStream>| {
        let mut line = String::new();
        r.read_line(&mut line).expect("an answer, not a read timeout");
        serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    // The holder: 60,000 bytes of a line (its buffer: 64 KiB), never finished.
    let (mut a, mut ra) = gate_session(&d, "holder-a");
    a.write_all(format!(r#"{{"seq":2,"op":"client","line":"{}"#, "a".repeat(60_000)).as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    // A second line of 100,000 bytes does not fit beside it: dropped, said under its seq.
    let (mut b, mut rb) = gate_session(&d, "holder-b");
    let call = |seq: u32, pad: usize| {
        let line = serde_json::json!({"jsonrpc":"2.0","id":seq,"method":"tools/call","params":{"name":"delete_records","arguments":{"pad":"b".repeat(pad)}}}).to_string();
        // As the wrapper writes it (`wire::encode`): `seq` first.
        format!("{{\"seq\":{seq},\"op\":\"client\",\"line\":{}}}\n", Value::String(line))
    };
    b.write_all(call(2, 100_000).as_bytes()).unwrap();
    let dropped = answer(&mut rb);
    assert_eq!((dropped["seq"].as_u64(), dropped["verdict"].as_str()), (Some(2), Some("drop")), "{dropped}");
    assert!(dropped.to_string().contains("max_buffered_body_bytes"), "told why: {dropped}");
    // The holder's line never ends: cut off once its time is up, its connection closed.
    let late = answer(&mut ra);
    assert!(late.to_string().contains("not finished within") && late.to_string().contains("body_timeout_ms"), "{late}");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    // The same session goes on, the budget given back: the same call is judged now.
    b.write_all(call(3, 100_000).as_bytes()).unwrap();
    let judged = answer(&mut rb);
    assert_eq!(judged["seq"].as_u64(), Some(3), "{judged}");
    assert!(judged.to_string().contains("-32001"), "judged by the policy (it denies delete_records), not refused for memory: {judged}");
    d.wait_audit("the dropped line's record", |r| r.iter().any(|x| x.alerts.iter().any(|a| a.contains("gate line not held")) && x.server.ends_with("holder-b")));
}

/// A client's answers to the server's own requests (sampling, elicitation, roots) carry
/// data to the server: they complete the server request's record, and one to an id no
/// server request carried through the gate is recorded with an alert, as on the network
/// path. (They were forwarded with no record at all.)
#[test]
fn gate_records_client_answers_to_server_requests() {
    let d = daemon(None);
    let mut ask = gate_asker(&d, "answers-server");
    let sampling = serde_json::json!({"jsonrpc": "2.0", "id": "s1", "method": "sampling/createMessage", "params": {"messages": [], "maxTokens": 5}});
    assert_eq!(ask("server", sampling)["verdict"], "forward");
    let answer = serde_json::json!({"jsonrpc": "2.0", "id": "s1", "result": {"role": "assistant", "content": {"type": "text", "text": "ok"}, "model": "m"}});
    assert_eq!(ask("client", answer)["verdict"], "forward");
    let stray = serde_json::json!({"jsonrpc": "2.0", "id": 99, "result": {"secret": "exfiltrated"}});
    assert_eq!(ask("client", stray)["verdict"], "forward");

    let records = d.wait_audit("both client answers", |r| {
        r.iter().any(|x| x.method.as_deref() == Some("sampling/createMessage") && x.status == CallStatus::Ok)
            && r.iter().any(|x| x.jsonrpc_id.as_deref() == Some("99") && x.direction == "client->server")
    });
    let asked = records.iter().find(|x| x.method.as_deref() == Some("sampling/createMessage")).unwrap();
    assert_eq!(asked.direction, "server->client", "{asked:#?}");
    assert!(asked.result_hash.is_some(), "the answer's keyed hash: {asked:#?}");
    let rec = records.iter().find(|x| x.jsonrpc_id.as_deref() == Some("99")).unwrap();
    assert_eq!(rec.kind, mcpwatch_api::MessageKind::Invalid, "{rec:#?}");
    assert!(rec.alerts.iter().any(|a| a.contains("client answer to id 99 that no watched server request carried")), "{rec:#?}");
    assert!(rec.result_hash.is_some(), "{rec:#?}");
}

/// The gate's pending calls are bounded per session. Past the bound it pushed the oldest
/// call out, so its id was free again while the server still worked on it: a
/// `tools/list` reusing it took the first call's answer, judged as a tool list (no
/// detectors), and a secret in a tool result went out unredacted. A call past the bound
/// is refused now; the pending call keeps its id and its answer is inspected.
#[test]
fn gate_refuses_calls_past_its_pending_bound_instead_of_forgetting_one() {
    let d = daemon(None);
    let mut ask = gate_asker(&d, "pending-bound");
    let token = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
    assert_eq!(ask("client", serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_file", "arguments": {}}}))["verdict"], "forward");
    let mut refused = 0;
    for i in 2..=1030 {
        let v = ask("client", serde_json::json!({"jsonrpc": "2.0", "id": i, "method": "ping"}));
        match v["verdict"].as_str() {
            Some("forward") => assert_eq!(refused, 0, "a call after a refusal was forwarded: {v}"),
            Some("answer") => {
                assert!(v["line"].as_str().unwrap().contains("too many calls pending"), "{v}");
                refused += 1;
            }
            _ => panic!("{v}"),
        }
    }
    assert!(refused >= 6, "calls past the bound are refused ({refused})");
    let v = ask("client", serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    assert_eq!(v["verdict"], "answer", "id 1 is still pending: {v}");
    let result = serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": format!("token {token}")}]}});
    let v = ask("server", result);
    assert_eq!(v["verdict"], "forward", "{v}");
    let line = v["line"].as_str().expect("the result was rewritten");
    assert!(!line.contains(token) && line.contains("<GITHUB_TOKEN>"), "the first call's result is redacted: {line}");
}

/// Calls the client cancels (`notifications/cancelled`; the server should not answer
/// them) leave the bound of pending calls, so a long session's cancellations never make
/// the gate refuse every call; a cancelled id stays in use, and a late answer to it is
/// still inspected.
#[test]
fn gate_cancelled_calls_do_not_fill_the_pending_bound() {
    let d = daemon(None);
    let mut ask = gate_asker(&d, "cancellations");
    for i in 1..=1100 {
        assert_eq!(ask("client", serde_json::json!({"jsonrpc": "2.0", "id": i, "method": "ping"}))["verdict"], "forward", "call {i}");
        let cancel = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": i, "reason": "timeout"}});
        assert_eq!(ask("client", cancel)["verdict"], "forward");
    }
    let v = ask("client", serde_json::json!({"jsonrpc": "2.0", "id": 1100, "method": "tools/list"}));
    assert_eq!(v["verdict"], "answer", "a cancelled id is still in use: {v}");
    let token = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
    let late = serde_json::json!({"jsonrpc": "2.0", "id": 1100, "result": {"content": [{"type": "text", "text": format!("late {token}")}]}});
    let v = ask("server", late);
    assert_eq!(v["verdict"], "forward", "{v}");
    assert!(v["line"].as_str().is_some_and(|l| !l.contains(token)), "the late answer is inspected: {v}");
}

/// Reusing the id of a call still waiting for its answer made the gate replace the
/// pending call: the first call's result was taken for the second's, so an untrusted
/// result could be attributed to a harmless tool and never taint the session. A request
/// whose id is pending is now refused (and recorded); the pending call keeps its answer.
#[test]
fn gate_refuses_a_request_reusing_a_pending_id() {
    let policy = untrusted_then_destructive("read_issue");
    let d = daemon_with(&policy, None);
    let mut ask = gate_asker(&d, "reused-ids");
    let call = |id: Value, tool: &str| serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {}}});
    assert_eq!(ask("client", call(5.into(), "read_issue"))["verdict"], "forward");
    for reused in [serde_json::json!(5), serde_json::json!(5.0)] {
        let v = ask("client", call(reused.clone(), "echo"));
        assert_eq!(v["verdict"], "answer", "{reused}: {v}");
        let err: Value = serde_json::from_str(v["line"].as_str().unwrap()).unwrap();
        assert_eq!(err["error"]["code"], -32600, "{err}");
    }
    let result = serde_json::json!({"jsonrpc": "2.0", "id": 5, "result": {"content": [{"type": "text", "text": "issue body"}]}});
    assert_eq!(ask("server", result)["verdict"], "forward");
    // The untrusted result tainted the session, so the destructive call is denied.
    let v = ask("client", call(6.into(), "delete_records"));
    assert_eq!(v["verdict"], "answer", "{v}");
    let err: Value = serde_json::from_str(v["line"].as_str().unwrap()).unwrap();
    assert_eq!(err["error"]["code"], -32001, "{err}");

    let records = d.wait_audit("the read_issue call completed", |r| r.iter().any(|x| x.name.as_deref() == Some("read_issue") && x.status == CallStatus::Ok));
    let read = records.iter().find(|x| x.name.as_deref() == Some("read_issue")).unwrap();
    assert!(read.flow.as_ref().is_some_and(|f| f.taints), "{read:#?}");
    let echoes: Vec<&AuditRecord> = records.iter().filter(|x| x.name.as_deref() == Some("echo")).collect();
    assert_eq!(echoes.len(), 2, "{records:#?}");
    for e in echoes {
        assert!(matches!(e.status, CallStatus::JsonrpcError { code: -32600, .. }), "{e:#?}");
        assert!(e.alerts.iter().any(|a| a.contains("already pending")), "{e:#?}");
    }
}
