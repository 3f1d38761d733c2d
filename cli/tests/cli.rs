//! The built `mcpwatch` binary against a fake control socket: one thread plays
//! mcpwatchd, answers one request with canned response lines, and hands back the
//! request it received so tests can check what the CLI asked for.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use mcpwatch_api::{
    AuditFilter, AuditRecord, CallStatus, ClientUse, Counts, FailureMode, ProcessInfo, Request,
    Response, ServerEntry, Status, ToolEntry,
};

const BIN: &str = env!("CARGO_BIN_EXE_mcpwatch");

struct Fake {
    _dir: tempfile::TempDir,
    path: PathBuf,
    handle: JoinHandle<Request>,
}

impl Fake {
    /// Answers one connection with `lines` (each a full response line).
    fn lines(lines: Vec<String>) -> Fake {
        Fake::custom(move |mut stream| {
            for l in &lines {
                if stream.write_all(l.as_bytes()).is_err() {
                    break;
                }
            }
        })
    }

    fn responses(responses: Vec<Response>) -> Fake {
        Fake::lines(responses.iter().map(line).collect())
    }

    /// Reads the request, then lets `answer` write whatever it wants.
    fn custom(answer: impl FnOnce(UnixStream) + Send + 'static) -> Fake {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).expect("bind fake control socket");
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut req = String::new();
            reader.read_line(&mut req).expect("read request");
            assert!(
                req.ends_with('\n'),
                "request must be one newline-terminated line: {req:?}"
            );
            let req: Request = serde_json::from_str(&req).expect("request is a valid Request");
            answer(stream);
            req
        });
        Fake {
            _dir: dir,
            path,
            handle,
        }
    }

    fn request(self) -> Request {
        self.handle.join().expect("fake server thread")
    }
}

fn line(r: &Response) -> String {
    String::from_utf8(mcpwatch_api::wire::encode(r).expect("encode")).expect("utf8")
}

fn mcpwatch(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--socket")
        .arg(socket)
        .env_remove("MCPWATCH_SOCKET")
        .output()
        .expect("run mcpwatch")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf8 stdout")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("utf8 stderr")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn server(n: u16) -> ServerEntry {
    ServerEntry {
        endpoint: format!("http://127.0.0.2:{}/mcp", 18000 + n),
        dst: format!("127.0.0.2:{}", 18000 + n),
        transport: "streamable-http".into(),
        first_seen_ms: now_ms() - 60_000,
        last_seen_ms: now_ms() - 3_000,
        server_name: Some(format!("demo-{n}")),
        server_version: Some("1.0.0".into()),
        protocol_version: Some("2025-11-25".into()),
        tools: vec![
            ToolEntry {
                name: "add".into(),
                hash: "aa".into(),
                first_seen_ms: 1,
                calls: 3,
                ..Default::default()
            },
            ToolEntry {
                name: "search".into(),
                hash: "bb".into(),
                first_seen_ms: 1,
                calls: 0,
                ..Default::default()
            },
        ],
        message_count: 10,
        call_count: 3,
        clients: vec![ClientUse {
            exe: Some("/usr/bin/python3".into()),
            comm: "python3".into(),
            uid: 1000,
            user: Some("alice".into()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn record(i: u64) -> AuditRecord {
    AuditRecord {
        schema: 1,
        id: format!("{:020}{:06}", 1_700_000_000_000u64 + i, 0),
        ts_ms: 1_700_000_000_000 + i,
        duration_us: Some(1_500),
        process: Some(std::sync::Arc::new(ProcessInfo {
            pid: 4242,
            tgid: 4242,
            comm: "node".into(),
            exe: Some("/usr/bin/node".into()),
            ..Default::default()
        })),
        dst: "127.0.0.2:18001".into(),
        server: "http://127.0.0.2:18001/mcp".into(),
        scheme: "http".into(),
        http_method: "POST".into(),
        path: "/mcp".into(),
        transport: "streamable-http".into(),
        direction: "client->server".into(),
        method: Some("tools/call".into()),
        name: Some(format!("tool_{i}")),
        status: CallStatus::Ok,
        request_bytes: 120,
        response_bytes: 300,
        ..Default::default()
    }
}

#[test]
fn list_json_prints_the_inventory_as_a_pretty_array() {
    let servers = vec![server(1), server(2)];
    let fake = Fake::responses(vec![Response::List {
        servers: servers.clone(),
    }]);
    let out = mcpwatch(&fake.path, &["list", "--json"]);
    assert_eq!(fake.request(), Request::List);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("[\n  {"), "not pretty: {text}");
    let parsed: Vec<ServerEntry> = serde_json::from_str(&text).expect("stdout is a JSON array");
    assert_eq!(parsed, servers);
}

#[test]
fn list_table_has_one_row_per_server() {
    let fake = Fake::responses(vec![Response::List {
        servers: vec![server(1), server(2)],
    }]);
    let out = mcpwatch(&fake.path, &["list", "--no-scan"]);
    fake.request();
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for h in [
        "SERVER",
        "TRANSPORT",
        "NAME/VERSION",
        "PROTOCOL",
        "TOOLS",
        "CALLS",
        "CLIENTS",
        "LAST SEEN",
    ] {
        assert!(lines[0].contains(h), "missing {h}: {}", lines[0]);
    }
    assert!(
        lines[1].starts_with("http://127.0.0.2:18001/mcp"),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("demo-1/1.0.0"), "{}", lines[1]);
    assert!(lines[1].contains("2: add, search"), "{}", lines[1]);
    assert!(lines[1].contains("python3 (alice)"), "{}", lines[1]);
    assert!(lines[1].ends_with("s ago"), "{}", lines[1]);
}

#[test]
fn empty_inventory_says_so() {
    let fake = Fake::responses(vec![Response::List { servers: vec![] }]);
    let out = mcpwatch(&fake.path, &["list", "--no-scan"]);
    fake.request();
    assert!(out.status.success());
    assert!(
        stdout(&out).starts_with("No MCP servers seen yet"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn audit_json_is_ndjson_and_sends_the_filter() {
    let records: Vec<AuditRecord> = (0..3).map(record).collect();
    let fake = Fake::responses(vec![Response::Audit {
        records: records.clone(),
    }]);
    let before = now_ms();
    let out = mcpwatch(
        &fake.path,
        &[
            "audit",
            "--json",
            "--since",
            "10m",
            "--server",
            "127.0.0.2",
            "--tool",
            "add",
            "--limit",
            "5",
        ],
    );
    let after = now_ms();
    let Request::Audit { filter } = fake.request() else {
        panic!("expected an audit request")
    };
    let since = filter.since_ms.expect("since_ms set");
    assert!(
        since >= before - 600_000 && since <= after - 600_000,
        "since_ms {since} not 10m before now"
    );
    assert_eq!(
        filter,
        AuditFilter {
            since_ms: Some(since),
            server: Some("127.0.0.2".into()),
            tool: Some("add".into()),
            limit: Some(5),
            decision: None,
            session: None,
        }
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let parsed: Vec<AuditRecord> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one record"))
        .collect();
    assert_eq!(parsed, records);
}

#[test]
fn audit_defaults_to_the_newest_fifty_and_prints_a_table() {
    let fake = Fake::responses(vec![Response::Audit {
        records: (0..2).map(record).collect(),
    }]);
    let out = mcpwatch(&fake.path, &["audit"]);
    assert_eq!(
        fake.request(),
        Request::Audit {
            filter: AuditFilter {
                limit: Some(50),
                ..Default::default()
            }
        }
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for h in [
        "TIME", "PROCESS", "SERVER", "METHOD", "NAME", "STATUS", "DURATION", "BYTES",
    ] {
        assert!(lines[0].contains(h), "missing {h}: {}", lines[0]);
    }
    assert!(lines[1].contains("node (4242)"), "{}", lines[1]);
    assert!(lines[1].contains("tools/call"), "{}", lines[1]);
    assert!(lines[2].contains("tool_1"), "{}", lines[2]);
    assert!(lines[2].contains("  1.5ms  "), "{}", lines[2]);
    assert!(lines[2].ends_with("  120/300"), "{}", lines[2]);
    // The records are from another day: TIME carries the date.
    assert!(
        lines[1].starts_with("2023-11-14 22:13:20.000  "),
        "{}",
        lines[1]
    );
}

#[test]
fn audit_limit_zero_means_everything() {
    let fake = Fake::responses(vec![Response::Audit { records: vec![] }]);
    let out = mcpwatch(&fake.path, &["audit", "--limit", "0"]);
    assert_eq!(
        fake.request(),
        Request::Audit {
            filter: AuditFilter::default()
        }
    );
    assert!(out.status.success());
    assert_eq!(stdout(&out), "No audit records match.\n");
}

#[test]
fn audit_follow_streams_until_the_daemon_closes() {
    let (a, b, c) = (record(1), record(2), record(3));
    let mut b_done = b.clone();
    b_done.status = CallStatus::JsonrpcError {
        code: -32000,
        message: "boom".into(),
    };
    let fake = Fake::responses(vec![
        Response::Audit {
            records: vec![a.clone()],
        },
        Response::Record { record: b.clone() },
        Response::Record { record: c.clone() },
        Response::Record {
            record: b_done.clone(),
        },
    ]);
    let out = mcpwatch(&fake.path, &["audit", "--follow", "--json", "--reconnect", "0s"]);
    assert_eq!(
        fake.request(),
        Request::AuditFollow {
            filter: AuditFilter {
                limit: Some(50),
                ..Default::default()
            }
        }
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let parsed: Vec<AuditRecord> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON line"))
        .collect();
    assert_eq!(parsed, vec![a, b, c, b_done]);
    assert!(
        stderr(&out).contains("closed the stream"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn audit_follow_table_prints_the_header_once() {
    let fake = Fake::responses(vec![
        Response::Audit { records: vec![] },
        Response::Record { record: record(1) },
        Response::Record { record: record(2) },
    ]);
    let out = mcpwatch(&fake.path, &["audit", "-f", "--reconnect", "0s"]);
    fake.request();
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("TIME"));
    // Rows that arrive after the header line up with it (columns counted in chars),
    // and a TIME column fixed narrow shows the time of day, not a cut-off date.
    let col = char_col(lines[0], "PROCESS");
    for l in &lines[1..] {
        assert_eq!(char_col(l, "node (4242)"), col, "{text}");
        assert_eq!(
            char_col(l, "http://127.0.0.2:18001/mcp"),
            char_col(lines[0], "SERVER"),
            "{text}"
        );
        assert!(l.starts_with("22:13:20.00"), "{text}");
        assert!(!l.contains('…'), "nothing truncated: {text}");
    }
}

fn char_col(line: &str, needle: &str) -> usize {
    let byte = line
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {line:?}"));
    line[..byte].chars().count()
}

#[test]
fn status_human_and_json() {
    let st = Status {
        version: "0.1.0".into(),
        pid: 77,
        uptime_secs: 65,
        failure_mode: FailureMode::Open,
        attached: true,
        cgroup: Some("/sys/fs/cgroup/unified/agents".into()),
        ports: "80,443".into(),
        listen: vec!["127.0.0.1:15001".into()],
        control_socket: "/run/mcpwatch/control.sock".into(),
        state_dir: "/var/lib/mcpwatch".into(),
        counts: Counts {
            connections: 5,
            audit_records: 9,
            servers: 2,
            ..Default::default()
        },
        warnings: vec!["node client distrusts the CA".into()],
        ..Default::default()
    };
    let fake = Fake::responses(vec![Response::Status(st.clone())]);
    let out = mcpwatch(&fake.path, &["status"]);
    assert_eq!(fake.request(), Request::Status);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("FAILURE MODE    OPEN"), "{text}");
    assert!(
        text.contains("attached to cgroup /sys/fs/cgroup/unified/agents"),
        "{text}"
    );
    assert!(text.contains("! node client distrusts the CA"), "{text}");

    let fake = Fake::responses(vec![Response::Status(st.clone())]);
    let out = mcpwatch(&fake.path, &["status", "--json"]);
    fake.request();
    assert!(out.status.success());
    let parsed: Status = serde_json::from_str(&stdout(&out)).expect("JSON status");
    assert_eq!(parsed, st);
}

#[test]
fn missing_socket_exits_2_with_a_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nope.sock");
    // `list --json` is the daemon's raw inventory: nothing to show without it (plain `list`
    // falls back to configured servers, see tests/report.rs).
    let out = mcpwatch(&path, &["list", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out),
        format!(
            "mcpwatch: cannot reach mcpwatchd at {}: No such file or directory \
             (is the daemon running? see `systemctl status mcpwatchd`)\n",
            path.display()
        )
    );
}

#[test]
fn refused_connection_exits_2_with_a_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).expect("bind")); // socket file left behind, nobody listening
    let out = mcpwatch(&path, &["status"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("Connection refused"), "{err}");
    assert!(err.contains("is the daemon running?"), "{err}");
}

#[test]
fn env_var_selects_the_socket() {
    let fake = Fake::responses(vec![Response::List { servers: vec![] }]);
    let out = Command::new(BIN)
        .args(["list", "--json"])
        .env("MCPWATCH_SOCKET", &fake.path)
        .output()
        .expect("run");
    assert_eq!(fake.request(), Request::List);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "[]\n");
}

#[test]
fn daemon_error_response_exits_2() {
    let fake = Fake::responses(vec![Response::Error {
        message: "audit store unavailable".into(),
    }]);
    let out = mcpwatch(&fake.path, &["audit"]);
    fake.request();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "mcpwatch: mcpwatchd: audit store unavailable\n"
    );
}

#[test]
fn daemon_error_during_follow_exits_2() {
    let fake = Fake::responses(vec![
        Response::Audit {
            records: vec![record(1)],
        },
        Response::Error {
            message: "store gone".into(),
        },
    ]);
    let out = mcpwatch(&fake.path, &["audit", "--follow", "--json"]);
    fake.request();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stdout(&out).lines().count(),
        1,
        "records before the error are still printed"
    );
    assert_eq!(stderr(&out), "mcpwatch: mcpwatchd: store gone\n");
}

#[test]
fn wrong_kind_of_answer_exits_2() {
    let fake = Fake::responses(vec![Response::Status(Status::default())]);
    let out = mcpwatch(&fake.path, &["list"]);
    fake.request();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unexpected `status` response"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn garbage_answer_exits_2() {
    let fake = Fake::lines(vec!["{\"kind\":\"list\",\"servers\":42}\n".into()]);
    let out = mcpwatch(&fake.path, &["list"]);
    fake.request();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("does not understand"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn hangup_without_answer_exits_2() {
    let fake = Fake::lines(vec![]);
    let out = mcpwatch(&fake.path, &["status"]);
    fake.request();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("closed the connection without answering"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = mcpwatch(&dir.path().join("s"), &["audit", "--since", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--since"), "{}", stderr(&out));
    let out = mcpwatch(&dir.path().join("s"), &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Runs mcpwatch with stdout piped, reads one line, closes the pipe, and returns the
/// exit status and stderr.
fn read_one_line_then_close(
    socket: &Path,
    args: &[&str],
) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--socket")
        .arg(socket)
        .env_remove("MCPWATCH_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    {
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        reader.read_line(&mut first).expect("first line");
    } // reader dropped: the read end of the pipe is closed
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    let status = child.wait().expect("wait");
    (status, first, err)
}

#[test]
fn broken_pipe_on_a_large_table_exits_0_silently() {
    // ~20k rows is megabytes of output: far more than a pipe buffer, so the CLI is
    // still writing when the reader goes away.
    let records: Vec<AuditRecord> = (0..20_000).map(record).collect();
    let fake = Fake::responses(vec![Response::Audit { records }]);
    let (status, first, err) = read_one_line_then_close(&fake.path, &["audit", "--limit", "0"]);
    fake.request();
    assert!(first.starts_with("TIME"), "{first}");
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert_eq!(err, "");
}

#[test]
fn broken_pipe_while_following_exits_0_silently() {
    // The fake daemon streams records until the CLI hangs up (bounded).
    let fake = Fake::custom(|mut stream| {
        let _ = stream.write_all(line(&Response::Audit { records: vec![] }).as_bytes());
        for i in 0..200_000 {
            if stream
                .write_all(line(&Response::Record { record: record(i) }).as_bytes())
                .is_err()
            {
                return;
            }
        }
    });
    let (status, first, err) =
        read_one_line_then_close(&fake.path, &["audit", "--follow", "--json"]);
    fake.request();
    let rec: AuditRecord = serde_json::from_str(&first).expect("first NDJSON line");
    assert_eq!(rec, record(0));
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert_eq!(err, "");
}

#[test]
fn audit_rejects_an_unknown_decision_instead_of_matching_nothing() {
    // No daemon is needed: the value is refused before any request is sent.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = mcpwatch(&dir.path().join("absent.sock"), &["audit", "--decision", "bogus"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("bogus") && err.contains("require_approval"), "{err}");
    assert!(!stdout(&out).contains("No audit records"), "{}", stdout(&out));
}

#[test]
fn audit_verify_exits_1_naming_the_first_tampered_record_and_0_when_intact() {
    use mcpwatch_api::{AuditProblem, AuditVerify};
    let report = |problems: Vec<AuditProblem>| AuditVerify {
        records: 3,
        chain_entries: 5,
        head: "ab".repeat(32),
        head_seq: 5,
        problems,
    };
    let fake = Fake::responses(vec![Response::Verify(report(vec![]))]);
    let out = mcpwatch(&fake.path, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("audit trail intact"), "{}", stdout(&out));
    assert_eq!(fake.request(), Request::AuditVerify);

    let fake = Fake::responses(vec![Response::Verify(report(vec![
        AuditProblem::Removed { id: "00000001700000000000000001".into() },
        AuditProblem::Changed { id: "00000001700000000000000002".into() },
    ]))]);
    let out = mcpwatch(&fake.path, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("record 00000001700000000000000001 was removed") && text.contains("00000001700000000000000002 was changed"), "{text}");
    assert!(stderr(&out).contains("first at 00000001700000000000000001"), "{}", stderr(&out));
}

#[test]
fn audit_answers_in_parts_are_printed_whole_and_in_order() {
    // A large answer comes as AuditPart lines, then Audit: every record is printed once.
    let records: Vec<AuditRecord> = (0..5).map(record).collect();
    let fake = Fake::responses(vec![
        Response::AuditPart { records: records[..2].to_vec() },
        Response::AuditPart { records: records[2..4].to_vec() },
        Response::Audit { records: records[4..].to_vec() },
    ]);
    let out = mcpwatch(&fake.path, &["audit", "--json", "--limit", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: Vec<String> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<AuditRecord>(l).expect("NDJSON record").id)
        .collect();
    assert_eq!(ids, records.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
}
