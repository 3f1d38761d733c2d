//! Bad input at the HTTP and JSON-RPC layer: clear errors, nothing smuggled upstream,
//! everything recorded, the daemon keeps serving. Runs the daemon in static-upstream
//! mode (same proxy code, no eBPF) against a raw server that records every byte.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use mcpwatch_api::{AuditRecord, CallStatus, MessageKind};
use mcpwatch_tests::daemon::{Daemon, DaemonOpts};
use mcpwatch_tests::harness::{RawBehaviour, RawServer};
use serde_json::Value;

const OK_REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 36\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}";

struct Env {
    upstream: RawServer,
    daemon: Daemon,
}

impl Env {
    fn start(opts: DaemonOpts) -> Env {
        Env::with_reply(opts, OK_REPLY)
    }

    fn with_reply(opts: DaemonOpts, reply: &[u8]) -> Env {
        let upstream = RawServer::start("127.0.0.1:0", RawBehaviour { http_reply: Some(reply.to_vec()), ..Default::default() });
        let daemon = Daemon::start(DaemonOpts { static_upstream: Some(upstream.addr), ..opts });
        Env { upstream, daemon }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.daemon.port))
    }

    /// Send raw bytes, read the response until close or timeout.
    fn send(&self, bytes: &[u8]) -> String {
        mcpwatch_tests::harness::http_roundtrip(self.addr(), bytes, Duration::from_secs(10))
    }

    fn upstream_bytes(&self) -> String {
        self.upstream.seen().iter().map(|s| String::from_utf8_lossy(&s.bytes).into_owned()).collect()
    }
}


fn post(body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut v = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{extra_headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

/// Decode a Python `b'...'` literal (the escapes the cases file uses).
fn python_bytes_literal(lit: &str) -> Vec<u8> {
    let inner = lit.strip_prefix("b'").and_then(|s| s.strip_suffix('\'')).expect("b'...' literal");
    let b = inner.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'x' => {
                    out.push(u8::from_str_radix(&inner[i + 2..i + 4], 16).expect("hex escape"));
                    i += 4;
                    continue;
                }
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                other => out.push(other),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn status_line(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn jsonrpc_error_code(resp: &str) -> Option<i64> {
    let body = resp.split("\r\n\r\n").nth(1)?;
    let v: Value = serde_json::from_str(body).ok()?;
    v["error"]["code"].as_i64()
}

#[test]
fn malformed_json_rpc_is_answered_per_spec_and_recorded() {
    let env = Env::start(DaemonOpts::default());
    let cases: &[(&[u8], i64)] = &[
        (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",", -32700), // truncated JSON
        (b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"read\xff\xfe\"}}", -32700), // invalid UTF-8
        (b"{\"jsonrpc\":\"1.0\",\"id\":3,\"method\":\"tools/list\"}", -32600),
        (b"[]", -32600),
    ];
    for (body, code) in cases {
        let resp = env.send(&post(body, "MCP-Protocol-Version: 2025-11-25\r\n"));
        assert_eq!(status_line(&resp), 400, "{resp}");
        assert_eq!(jsonrpc_error_code(&resp), Some(*code), "{resp}");
    }
    assert_eq!(env.upstream_bytes(), "", "nothing malformed was forwarded");
    let recs = env.daemon.wait_audit("4 rejected records", |r| r.len() >= 4);
    for r in &recs {
        assert!(matches!(r.status, CallStatus::JsonrpcError { .. }), "{r:?}");
        assert!(r.notes.iter().any(|n| n.contains("not forwarded")), "{r:?}");
    }
    assert!(recs.iter().any(|r| r.kind == MessageKind::Invalid));
    // Still serving: a good request goes through.
    let ok = env.send(&post(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, ""));
    assert_eq!(status_line(&ok), 200, "{ok}");
    assert!(env.upstream_bytes().contains("tools/list"));
}

#[test]
fn truncated_body_is_recorded_and_not_forwarded() {
    let env = Env::start(DaemonOpts::default());
    {
        let mut s = TcpStream::connect(env.addr()).unwrap();
        s.write_all(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nMcp-Session-Id: abc\r\nContent-Length: 500\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,").unwrap();
        // Close mid-body.
    }
    let recs = env.daemon.wait_audit("truncated record", |r| r.iter().any(|x| x.kind == MessageKind::Invalid));
    let r = recs.iter().find(|x| x.kind == MessageKind::Invalid).unwrap();
    assert!(matches!(&r.status, CallStatus::TransportError { reason } if reason.contains("truncated")), "{r:?}");
    assert_eq!(env.upstream_bytes(), "");
    assert!(env.daemon.status().pid > 0, "daemon alive");
}

#[test]
fn oversized_mcp_body_gets_413_and_is_recorded() {
    let env = Env::start(DaemonOpts { config: Some("[limits]\nmax_body_bytes = 65536\n".into()), ..Default::default() });
    let big = format!(r#"{{"jsonrpc":"2.0","id":16,"method":"tools/call","params":{{"name":"summarize","arguments":{{"text":"{}"}}}}}}"#, "A".repeat(200_000));
    let resp = env.send(&post(big.as_bytes(), "MCP-Protocol-Version: 2025-11-25\r\n"));
    assert_eq!(status_line(&resp), 413, "{}", &resp[..resp.len().min(300)]);
    assert!(resp.contains("max_body_bytes"), "the error says which limit");
    assert_eq!(env.upstream_bytes(), "");
    env.daemon.wait_audit("413 record", |r| r.iter().any(|x| matches!(&x.status, CallStatus::TransportError { reason } if reason.contains("413"))));
}

#[test]
fn slow_client_body_is_cut_off_with_408() {
    let env = Env::start(DaemonOpts { config: Some("[limits]\nbody_timeout_ms = 300\n".into()), ..Default::default() });
    let mut s = TcpStream::connect(env.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nMCP-Protocol-Version: 2025-11-25\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert_eq!(status_line(&out), 408, "{out}");
    assert_eq!(env.upstream_bytes(), "");
}

/// Bodies held for inspection share one daemon-wide budget. Slow clients each holding an
/// almost-complete body could otherwise make mcpwatchd hold gigabytes (2048 connections
/// per uid of 4 MiB each) until the OOM killer took it, and a killed daemon in
/// `failure_mode = "open"` governs nothing: a bypass by memory. Past the budget a body is
/// refused with 503 (recorded, never forwarded); once the holder goes, bodies pass again.
/// One user holds at most half the budget (here every body is one user's: static mode
/// knows no process), so this client meets 100,000 of 200,000 bytes.
#[test]
fn held_request_bodies_share_a_daemon_wide_budget() {
    let config = "[limits]\nmax_body_bytes = 65536\nmax_buffered_body_bytes = 200000\nbody_timeout_ms = 30000\n";
    let env = Env::start(DaemonOpts { config: Some(config.into()), ..Default::default() });
    let call = |id: u32, pad: usize| {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#, "B".repeat(pad))
    };
    // A slow client: the first 60,000 bytes of a longer body, then nothing.
    let slow = post(call(1, 60_000).as_bytes(), "MCP-Protocol-Version: 2025-11-25\r\n");
    let body_at = slow.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut holder = TcpStream::connect(env.addr()).unwrap();
    holder.write_all(&slow[..body_at + 60_000]).unwrap();
    // The daemon reads what the client sent at once (loopback): give it a moment.
    std::thread::sleep(Duration::from_millis(800));
    let second = call(2, 50_000);
    let resp = env.send(&post(second.as_bytes(), "MCP-Protocol-Version: 2025-11-25\r\n"));
    assert_eq!(status_line(&resp), 503, "{}", &resp[..resp.len().min(300)]);
    assert!(resp.contains("max_buffered_body_bytes") && resp.to_ascii_lowercase().contains("retry-after: 1"), "{resp}");
    assert!(!env.upstream_bytes().contains("\"id\":2"), "the refused body was forwarded");
    env.daemon.wait_audit("the 503's record", |r| r.iter().any(|x| matches!(&x.status, CallStatus::TransportError { reason } if reason.contains("budget"))));
    let warnings = env.daemon.status().warnings;
    assert!(warnings.iter().any(|w| w.contains("max_buffered_body_bytes")), "mcpwatch status says so: {warnings:?}");
    // The holder goes: its share comes back, and the same call passes.
    drop(holder);
    let mut passed = String::new();
    for _ in 0..50 {
        passed = env.send(&post(call(3, 50_000).as_bytes(), "MCP-Protocol-Version: 2025-11-25\r\n"));
        if status_line(&passed) == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status_line(&passed), 200, "{}", &passed[..passed.len().min(300)]);
    assert!(env.upstream_bytes().contains("\"id\":3"), "the call after the holder left was forwarded");
}

/// The protocol_abuse cases of tests/fixtures/threats.jsonl that arrive as HTTP bytes or
/// JSON bodies: each must be refused with its expected status/code and nothing of it may
/// reach the server.
#[test]
fn threat_cases_protocol_abuse() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/threats.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let env = Env::start(DaemonOpts::default());
    let mut covered = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: Value = serde_json::from_str(line).expect("case json");
        let id = case["id"].as_str().unwrap().to_string();
        if !matches!(id.as_str(), "PA-001" | "PA-002" | "PA-004" | "PA-005" | "PA-007" | "PA-008" | "PA-010" | "PA-011") {
            continue;
        }
        let inputs: Vec<Vec<u8>> = match &case["input"] {
            Value::String(s) if s.starts_with("POST ") => vec![s.as_bytes().to_vec()],
            Value::String(s) => vec![post(s.as_bytes(), "MCP-Protocol-Version: 2025-11-25\r\n")],
            Value::Object(o) if o.get("encoding").and_then(Value::as_str) == Some("python-bytes-literal") => {
                vec![post(&python_bytes_literal(o["bytes"].as_str().unwrap()), "MCP-Protocol-Version: 2025-11-25\r\n")]
            }
            Value::Array(items) => items.iter().map(|i| post(i.as_str().unwrap().as_bytes(), "MCP-Protocol-Version: 2025-11-25\r\n")).collect(),
            other => panic!("{id}: unexpected input {other}"),
        };
        let expected = &case["expected"]["error"];
        for (i, input) in inputs.iter().enumerate() {
            let before = env.upstream_bytes();
            let resp = env.send(input);
            let status = status_line(&resp);
            let refused = (400..500).contains(&status) || (status == 200 && jsonrpc_error_code(&resp).is_some());
            assert!(refused, "{id}[{i}]: expected a refusal (4xx or a JSON-RPC error), got {resp}");
            if let Some(want) = expected["http_status"].as_u64() {
                assert_eq!(status as u64, want, "{id}[{i}]: {resp}");
            }
            let want_code = match &expected["jsonrpc"] {
                Value::Object(o) => o.get("code").and_then(Value::as_i64),
                Value::Array(a) => a.get(i).and_then(|o| o["code"].as_i64()),
                _ => None,
            };
            if let Some(code) = want_code {
                assert_eq!(jsonrpc_error_code(&resp), Some(code), "{id}[{i}]: {resp}");
            }
            assert_eq!(env.upstream_bytes(), before, "{id}[{i}]: bytes reached the server");
        }
        covered.push(id);
    }
    assert_eq!(covered.len(), 8, "cases found: {covered:?}");
}

/// The `auth` cases of tests/fixtures/threats.jsonl that concern the wire: unsafe OAuth
/// metadata is not delivered (502), CSRF and token passthrough are refused before the
/// server, and the false-positive trap passes unchanged.
#[test]
fn threat_cases_auth() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/threats.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut covered = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: Value = serde_json::from_str(line).expect("case json");
        let id = case["id"].as_str().unwrap().to_string();
        let input = case["input"].as_str().unwrap_or_default();
        match id.as_str() {
            // A server answers its OAuth metadata with something a client must not follow.
            "AU-001" | "AU-002" | "AU-010" => {
                let (reply, meta_path) = if id == "AU-010" {
                    let json = input.split("returns ---\r\n").nth(1).expect("AU-010 json");
                    (format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}", json.len()), "/.well-known/oauth-protected-resource")
                } else {
                    (input.to_string(), "/.well-known/oauth-authorization-server")
                };
                let env = Env::with_reply(DaemonOpts::default(), reply.as_bytes());
                let resp = env.send(format!("GET {meta_path} HTTP/1.1\r\nHost: mcp.vendor.example\r\n\r\n").as_bytes());
                assert_eq!(status_line(&resp), 502, "{id}: {resp}");
                assert!(!resp.contains("$(") && !resp.contains("file:") && !resp.contains("169.254"), "{id}: hostile values leaked to the client: {resp}");
                env.daemon.wait_audit("alert record", |r| r.iter().any(|x| x.alerts.iter().any(|a| a.contains("OAuth metadata"))));
            }
            "AU-004" | "AU-005" => {
                let env = Env::start(DaemonOpts::default());
                let resp = env.send(input.as_bytes());
                let want = if id == "AU-004" { 415 } else { 401 };
                assert_eq!(status_line(&resp), want, "{id}: {resp}");
                assert_eq!(env.upstream_bytes(), "", "{id}: forwarded");
                env.daemon.wait_audit("alert record", |r| r.iter().any(|x| !x.alerts.is_empty()));
            }
            "AU-011" => {
                let env = Env::start(DaemonOpts::default());
                let resp = env.send(input.as_bytes());
                assert_eq!(status_line(&resp), 200, "{id}: {resp}");
                let seen = env.upstream_bytes();
                let body = input.split("\r\n\r\n").nth(1).unwrap();
                assert!(seen.ends_with(body) && seen.contains("Mcp-Session-Id: 1868a90c"), "{id}: not forwarded unchanged: {seen}");
            }
            _ => continue,
        }
        covered.push(id);
    }
    assert_eq!(covered.len(), 6, "{covered:?}");
}

fn case_ids(category: &str) -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/threats.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|c| c["category"] == category)
        .map(|c| c["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// RE-001: 100,000 levels of nesting are refused without a stack overflow.
/// RE-002: an 8.8 MB batch is refused before parsing (413); nothing reaches the server.
#[test]
fn threat_cases_deep_nesting_and_huge_batch() {
    let ids = case_ids("resource_exhaustion");
    assert!(ids.contains(&"RE-001".to_string()) && ids.contains(&"RE-002".to_string()), "{ids:?}");
    let env = Env::start(DaemonOpts::default());
    let deep = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"x":{}{}}}}}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    let resp = env.send(&post(deep.as_bytes(), "MCP-Protocol-Version: 2025-11-25\r\n"));
    assert_eq!(status_line(&resp), 400, "{}", &resp[..resp.len().min(300)]);
    assert_eq!(jsonrpc_error_code(&resp), Some(-32700));
    let batch = format!(
        "[{}]",
        (0..100_000).map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"search","arguments":{{"q":"a"}}}}}}"#)).collect::<Vec<_>>().join(",")
    );
    let resp = env.send(&post(batch.as_bytes(), "MCP-Protocol-Version: 2025-03-26\r\n"));
    assert_eq!(status_line(&resp), 413, "{}", &resp[..resp.len().min(300)]);
    assert_eq!(env.upstream_bytes(), "");
    assert!(env.daemon.status().pid > 0, "daemon still serving");
}

/// RE-005: a server that streams one event that never ends is cut off at the event
/// limit; the client gets a JSON-RPC error for its request, none of the flood, and
/// the daemon's memory stays bounded.
#[test]
fn threat_case_endless_server_event_is_cut_off() {
    assert!(case_ids("resource_exhaustion").contains(&"RE-005".to_string()));
    let mut reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"".to_vec();
    reply.extend(std::iter::repeat_n(b'A', 2_000_000));
    let env = Env::with_reply(DaemonOpts { config: Some("[limits]\nmax_sse_event_bytes = 65536\n".into()), ..Default::default() }, &reply);
    let body = br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"long_report","arguments":{}}}"#;
    let resp = env.send(&post(body, "MCP-Protocol-Version: 2025-11-25\r\nConnection: close\r\n"));
    assert!(resp.starts_with("HTTP/1.1 200"), "{}", &resp[..resp.len().min(200)]);
    assert!(!resp.contains("AAAAAAAA"), "the oversized event reached the client ({} bytes)", resp.len());
    assert!(resp.contains(r#""id":5"#) && resp.contains("max_sse_event_bytes"), "{resp}\n--- daemon log ---\n{}", env.daemon.log_text());
    let recs = env.daemon.wait_audit("aborted call", |r| r.iter().any(|x| matches!(&x.status, CallStatus::TransportError { reason } if reason.contains("max_sse_event_bytes"))));
    assert!(recs.iter().any(|r| !r.alerts.is_empty()));
}

/// RE-010: clients that reset the connection right after the first SSE byte, over and
/// over: the daemon keeps serving and does not leak file descriptors.
#[test]
fn threat_case_clients_aborting_mid_stream_leak_nothing() {
    assert!(case_ids("resource_exhaustion").contains(&"RE-010".to_string()));
    let reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":18,\"result\":{\"content\":[]}}\n\n";
    let env = Env::with_reply(DaemonOpts::default(), reply);
    let fds = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let body = br#"{"jsonrpc":"2.0","id":18,"method":"tools/call","params":{"name":"long_report","arguments":{"days":365}}}"#;
    let baseline = fds(env.daemon.pid());
    for _ in 0..300 {
        let mut s = TcpStream::connect(env.addr()).unwrap();
        s.write_all(&post(body, "MCP-Protocol-Version: 2025-11-25\r\n")).unwrap();
        let mut one = [0u8; 1];
        let _ = s.read(&mut one);
        // RST instead of FIN.
        socket_linger_zero(&s);
        drop(s);
    }
    // Still serving, and the connections are gone.
    let ok = env.send(&post(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, "Connection: close\r\n"));
    assert_eq!(status_line(&ok), 200, "{ok}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = fds(env.daemon.pid());
        if now <= baseline + 8 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "fd leak: {now} open, {baseline} before");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn socket_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a valid fd with a correctly sized struct.
    unsafe {
        libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), std::mem::size_of::<libc::linger>() as libc::socklen_t);
    }
}

/// A held call whose client asked for progress gets `notifications/progress` on an SSE
/// stream while it waits, then the server's answer once approved. Its body counts
/// against the body budget until then: the stream's task holds it (before, the budget
/// was given back when the stream started, and a thousand held calls could hold GiBs).
#[test]
fn held_call_streams_progress_then_the_answer() {
    let policy = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\napproval_timeout_secs = 60\n[[rule]]\nid = \"approve-deletes\"\ntools = [\"delete_records\"]\naction = \"require_approval\"\n";
    let answer = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"ok":true}}"#;
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
    // One uid's share of the body budget: 65,536 bytes (static mode: every client is one).
    let config = "[limits]\nmax_body_bytes = 65536\nmax_buffered_body_bytes = 131072\n";
    let env = Env::with_reply(DaemonOpts { policy: Some(policy.into()), config: Some(config.into()), ..Default::default() }, reply.as_bytes());
    let body = format!(r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"delete_records","arguments":{{"table":"t","pad":"{}"}},"_meta":{{"progressToken":"p-1"}}}}}}"#, "p".repeat(40_000));
    let body = body.as_bytes();
    let mut s = TcpStream::connect(env.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&post(body, "MCP-Protocol-Version: 2025-11-25\r\nConnection: close\r\n")).unwrap();
    // The first progress notification arrives while the call is held.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("notifications/progress") {
        let n = s.read(&mut buf).expect("read progress");
        assert!(n > 0, "stream ended early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_string();
    assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains(r#""progressToken":"p-1""#), "{head}");
    assert_eq!(env.upstream_bytes(), "", "nothing forwarded while held");
    let other = |id: u32| {
        let b = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#, "o".repeat(30_000));
        env.send(&post(b.as_bytes(), "MCP-Protocol-Version: 2025-11-25\r\n"))
    };
    let refused = other(8);
    assert_eq!(status_line(&refused), 503, "the held body still counts: {}", &refused[..refused.len().min(300)]);
    let held = env.daemon.wait_pending(1);
    assert!(env.daemon.cli(&["approve", &held[0].id]).status.success());
    let _ = s.read_to_end(&mut got);
    let all = String::from_utf8_lossy(&got).to_string();
    assert!(all.contains(r#""id":7"#) && all.contains(r#""ok":true"#), "answer after approval: {all}\n--- daemon log ---\n{}", env.daemon.log_text());
    assert!(env.upstream_bytes().contains("delete_records"));
    // The held call is over: its share is back (its task ends just after the stream).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let passed = other(9);
        if status_line(&passed) == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", &passed[..passed.len().min(300)]);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An 8 MiB tmpfs for a daemon's state dir, unmounted when dropped (needs root).
struct Tmpfs(std::path::PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("fs");
        std::fs::create_dir(&mnt).expect("mkdir");
        let ok = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"]).arg(&mnt).status().expect("mount");
        assert!(ok.success(), "mount tmpfs");
        Tmpfs(mnt, dir)
    }

    /// Fill it, as any user able to write there could.
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.0.join("filler")).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A user who can fill the file system the audit store is on makes every record write
/// fail. Under the default `failure_mode = "open"` calls then went on unrecorded, a
/// failure the attacker caused at will. Toward an enforced server a call whose record
/// cannot be written is refused whatever the failure mode; toward a server in audit mode
/// the failure mode still decides (open: it goes on). Needs root (mount).
#[test]
fn a_full_audit_store_lets_no_call_through_unrecorded_toward_an_enforced_server() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP a_full_audit_store_lets_no_call_through_unrecorded_toward_an_enforced_server: needs root to mount a tmpfs");
        return;
    }
    let answer = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
    for (mode, refused) in [("enforce", true), ("audit", false)] {
        let fs = Tmpfs::mount();
        let policy = format!("version = 1\nmode = \"{mode}\"\nshadow = \"allow\"\n");
        let env = Env::with_reply(DaemonOpts { policy: Some(policy), state_dir: Some(fs.0.join("state")), ..Default::default() }, reply.as_bytes());
        fs.fill();
        // Calls until the store's writes fail (what was left of its pages, and the
        // journal's in-memory backlog, are used up), then one more.
        let big = "x".repeat(4096);
        let mut failed_at = None;
        for i in 0..3000 {
            let call = format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{big}"}}}}}}"#);
            let resp = env.send(&post(call.as_bytes(), "MCP-Protocol-Version: 2025-11-25\r\nConnection: close\r\n"));
            if env.daemon.status().counts.audit_write_errors > 0 {
                failed_at = Some((i, resp));
                break;
            }
        }
        let (i, _) = failed_at.unwrap_or_else(|| panic!("{mode}: the store never failed"));
        let last = r#"{"jsonrpc":"2.0","id":"after-the-failure","method":"tools/call","params":{"name":"echo","arguments":{"text":"LAST-CALL"}}}"#;
        let resp = env.send(&post(last.as_bytes(), "MCP-Protocol-Version: 2025-11-25\r\nConnection: close\r\n"));
        let forwarded = env.upstream_bytes().contains("LAST-CALL");
        if refused {
            assert!(!forwarded, "{mode}: forwarded although its record could not be written (store failed at call {i}): {resp}");
            assert!(resp.contains("audit store is unavailable"), "{mode}: {resp}");
        } else {
            assert!(forwarded, "{mode}: failure_mode open lets the call go toward a server in audit mode: {resp}");
        }
        drop(env);
        drop(fs);
    }
}

/// Issue 9's hole: a held call that streams progress used to return before the
/// audit-failure check and ignore `durable()`, so in fail-closed mode an approved call
/// could be forwarded unaudited. The store here sits on a small tmpfs that is filled
/// while the call waits: the approval's record cannot reach the disk, and the call must
/// not leave. Needs root (mount); skips with the reason otherwise.
#[test]
fn held_call_with_progress_is_not_forwarded_when_the_store_fails_in_closed_mode() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP held_call_with_progress_is_not_forwarded_when_the_store_fails_in_closed_mode: needs root to mount a tmpfs");
        return;
    }
    let fs = Tmpfs::mount();
    let mnt = fs.0.clone();

    let policy = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\napproval_timeout_secs = 60\n[approvals]\napprovers = [\"uid:0\"]\n[[rule]]\nid = \"approve-deletes\"\ntools = [\"delete_records\"]\naction = \"require_approval\"\n";
    let answer = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"ok":true}}"#;
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
    let env = Env::with_reply(
        DaemonOpts { policy: Some(policy.into()), failure_mode: Some("closed"), state_dir: Some(mnt.join("state")), ..Default::default() },
        reply.as_bytes(),
    );
    let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_records","arguments":{"table":"t"},"_meta":{"progressToken":"p-1"}}}"#;
    let mut s = TcpStream::connect(env.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&post(body, "MCP-Protocol-Version: 2025-11-25\r\nConnection: close\r\n")).unwrap();
    let held = env.daemon.wait_pending(1);
    fs.fill();
    // Other calls meanwhile use up what was left of the store's last page: from here on
    // its writes fail (they are refused themselves, fail-closed).
    let big = "x".repeat(4096);
    for i in 0..16 {
        let call = format!(r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{big}"}}}}}}"#, 100 + i);
        let resp = env.send(&post(call.as_bytes(), "MCP-Protocol-Version: 2025-11-25\r\nConnection: close\r\n"));
        if status_line(&resp) == 503 {
            break;
        }
    }
    assert!(env.daemon.cli(&["approve", &held[0].id]).status.success());
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let all = String::from_utf8_lossy(&got).to_string();
    assert!(!env.upstream_bytes().contains("delete_records"), "forwarded although its audit record could not be written:\n{all}\n{}", env.daemon.log_text());
    assert!(all.contains("audit store is unavailable") && all.contains(r#""id":7"#), "{all}\n--- daemon log ---\n{}", env.daemon.log_text());
    drop(env);
    drop(fs);
}

/// One HTTP/2 frame: 9-byte header (length, type, flags, stream) and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The frames of a byte stream from an HTTP/2 server: (type, flags, stream, payload).
fn h2_frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

/// RE-004, HTTP/2 Rapid Reset (CVE-2023-44487): a client that opens request streams and
/// cancels each at once (HEADERS then RST_STREAM, 100,000 times) is sent GOAWAY
/// ENHANCE_YOUR_CALM and cut off; the server behind sees few of those requests, and the
/// daemon keeps serving.
#[test]
fn h2_rapid_reset_is_cut_off() {
    assert!(case_ids("resource_exhaustion").contains(&"RE-004".to_string()));
    let env = Env::start(DaemonOpts::default());
    let authority = format!("127.0.0.1:{}", env.upstream.addr.port());
    // HPACK without the dynamic table: :method POST (static 3), :scheme http (static 6),
    // :path and :authority as literals without indexing on static names 4 and 1.
    let mut block = vec![0x83, 0x86, 0x04, 4];
    block.extend_from_slice(b"/mcp");
    block.extend_from_slice(&[0x01, authority.len() as u8]);
    block.extend_from_slice(authority.as_bytes());
    const STREAMS: u32 = 100_000;
    let mut burst = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    burst.extend(h2_frame(0x4, 0, 0, &[]));
    for i in 0..STREAMS {
        let stream = 2 * i + 1;
        burst.extend(h2_frame(0x1, 0x4, stream, &block)); // HEADERS, END_HEADERS
        burst.extend(h2_frame(0x3, 0, stream, &0x8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let mut s = TcpStream::connect(env.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let reader = {
        let mut s = s.try_clone().expect("clone");
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            got
        })
    };
    let written = s.write_all(&burst).is_ok();
    let got = reader.join().expect("reader");
    let frames = h2_frames(&got);
    let goaway = frames.iter().find(|f| f.0 == 0x7).unwrap_or_else(|| panic!("no GOAWAY (all written: {written}); frames: {:?}", frames.iter().map(|f| f.0).collect::<Vec<_>>()));
    let code = u32::from_be_bytes([goaway.3[4], goaway.3[5], goaway.3[6], goaway.3[7]]);
    assert_eq!(code, 0xb, "GOAWAY error code is not ENHANCE_YOUR_CALM");
    let requests = env.upstream.seen().iter().map(|c| String::from_utf8_lossy(&c.bytes).matches("POST /mcp").count()).sum::<usize>();
    assert!(requests < 100, "{requests} of the cancelled requests reached the server");
    // The daemon still serves.
    let resp = env.send(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 40\r\nConnection: close\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

/// An HTTP error page answering a call is text the client reads (the TypeScript SDK puts
/// the body into the error it raises, so the agent sees it): a debug page carrying a
/// cloud key is inspected like a result. Enforce (the default) redacts it; the call's
/// record has the finding and the HTTP failure. Before, such bodies passed uninspected.
#[test]
fn an_http_error_page_answering_a_call_is_inspected_and_redacted() {
    let key = "AKIAQYLPMN5HHHFPZAM2";
    let page = format!("<html><body><h1>Internal Server Error</h1><pre>boto3 failed: aws_access_key_id={key} region=eu-west-1</pre></body></html>");
    let reply = format!("HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\r\n{page}", page.len());
    let env = Env::with_reply(DaemonOpts::default(), reply.as_bytes());
    let body = br#"{"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"list_buckets","arguments":{}}}"#;
    let resp = env.send(&post(body, "MCP-Protocol-Version: 2025-11-25\r\nConnection: close\r\n"));
    assert_eq!(status_line(&resp), 500, "{resp}");
    assert!(resp.contains("Internal Server Error") && resp.contains("region=eu-west-1"), "the page was not passed on: {resp}");
    assert!(!resp.contains(key), "the key reached the client:\n{resp}\n--- daemon log ---\n{}", env.daemon.log_text());
    let recs = env.daemon.wait_audit("the call's record", |r| r.iter().any(|x| x.jsonrpc_id.as_deref() == Some("41") && x.status != CallStatus::Pending));
    let rec = recs.iter().find(|x| x.jsonrpc_id.as_deref() == Some("41")).expect("record");
    assert!(matches!(&rec.status, CallStatus::TransportError { reason } if reason.contains("500")), "{:?}", rec.status);
    assert!(rec.findings.iter().any(|f| f.direction == "response" && f.action == "redact"), "{:?}", rec.findings);
    assert!(rec.notes.iter().any(|n| n.contains("HTTP error body redacted")), "{:?}", rec.notes);
    assert!(!serde_json::to_string(rec).unwrap().contains(key), "the key is in the audit record");

    // A page with nothing to find goes on as the server sent it, framed by its length.
    let plain = "<html>upstream timed out</html>";
    let reply = format!("HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{plain}", plain.len());
    let env = Env::with_reply(DaemonOpts::default(), reply.as_bytes());
    let resp = env.send(&post(body, "MCP-Protocol-Version: 2025-11-25\r\nConnection: close\r\n"));
    assert_eq!(status_line(&resp), 504, "{resp}");
    assert!(resp.contains(plain) && !resp.contains("mcpwatch"), "{resp}");
    assert_eq!(content_length(&head_and_body(&resp).0), Some(plain.len()), "{resp}");
}

/// The head and body of a raw response; the head lowercased.
fn head_and_body(resp: &str) -> (String, &str) {
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response head: {resp}"));
    (head.to_ascii_lowercase(), body)
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok())
}

/// An answer mcpwatch holds whole to inspect (JSON, or text answering a call) reaches the
/// client framed by its exact length, as the server framed it: not re-framed as chunked.
/// Where a result was redacted, the length is the redacted body's. Before, every such
/// answer went out with `Transfer-Encoding: chunked`.
#[test]
fn an_answer_held_whole_keeps_an_exact_content_length_redacted_or_not() {
    let call = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"lookup","arguments":{}}}"#;
    let headers = "MCP-Protocol-Version: 2025-11-25\r\nConnection: close\r\n";

    let clean = r#"{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"three rows"}]}}"#;
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{clean}", clean.len());
    let env = Env::with_reply(DaemonOpts::default(), reply.as_bytes());
    let resp = env.send(&post(call, headers));
    let (head, body) = head_and_body(&resp);
    assert_eq!(status_line(&resp), 200, "{resp}");
    assert!(!head.contains("transfer-encoding"), "re-framed as chunked:\n{resp}");
    assert_eq!(content_length(&head), Some(clean.len()), "{resp}");
    assert_eq!(body, clean, "the unchanged answer was altered");

    let key = "AKIAQYLPMN5HHHFPZAM2";
    let secret = format!(r#"{{"jsonrpc":"2.0","id":3,"result":{{"content":[{{"type":"text","text":"aws_access_key_id={key} region=eu-west-1"}}]}}}}"#);
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{secret}", secret.len());
    let env = Env::with_reply(DaemonOpts::default(), reply.as_bytes());
    let resp = env.send(&post(call, headers));
    let (head, body) = head_and_body(&resp);
    assert!(!resp.contains(key), "the key reached the client:\n{resp}");
    assert!(body.contains("region=eu-west-1"), "the answer was not passed on: {resp}");
    assert!(!head.contains("transfer-encoding"), "re-framed as chunked:\n{resp}");
    assert_eq!(content_length(&head), Some(body.len()), "the length is not the redacted body's:\n{resp}");
    assert_ne!(body.len(), secret.len(), "nothing was redacted: {resp}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("the redacted answer is not JSON ({e}): {body}"));
    assert_eq!(v["id"], 3);
}

/// Header names (`[http] header_case`): under the default `auto` they keep their sender's
/// case until mcpwatch has seen MCP at the destination, and a connection opened after that
/// passes them lower-cased (as HTTP/2 carries them; names are case-insensitive, RFC 9110
/// §5.1), both ways: request to the server, answer to the client. `keep` and `lower` fix
/// it either way. Values are never touched.
#[test]
fn header_names_keep_their_case_until_the_destination_is_known_to_speak_mcp() {
    let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup","arguments":{}}}"#;
    let headers = "X-Trace-Token: AbC-123\r\nMCP-Protocol-Version: 2025-11-25\r\nConnection: close\r\n";
    let body = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Served-By: Node-7\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    // What the server got on the last connection, and what the client got back.
    let exchange = |env: &Env| {
        let resp = env.send(&post(call, headers));
        assert_eq!(status_line(&resp), 200, "{resp}");
        let seen = env.upstream.seen();
        let last = seen.last().expect("nothing reached the server");
        (String::from_utf8_lossy(&last.bytes).into_owned(), resp)
    };
    let kept = |(sent, resp): &(String, String)| {
        assert!(sent.contains("\r\nX-Trace-Token: AbC-123\r\n") && sent.contains("\r\nMCP-Protocol-Version: 2025-11-25\r\n"), "the request's header case was not kept:\n{sent}");
        assert!(resp.contains("\r\nX-Served-By: Node-7\r\n"), "the answer's header case was not kept:\n{resp}");
    };
    let lowered = |(sent, resp): &(String, String)| {
        assert!(sent.contains("\r\nx-trace-token: AbC-123\r\n") && sent.contains("\r\nmcp-protocol-version: 2025-11-25\r\n"), "the request's header names are not lower-cased (or a value changed):\n{sent}");
        assert!(resp.contains("\r\nx-served-by: Node-7\r\n"), "the answer's header names are not lower-cased (or a value changed):\n{resp}");
    };

    // The first call is recorded: its destination is known to speak MCP from then on.
    let answered = |r: &[AuditRecord]| r.iter().any(|x| x.method.as_deref() == Some("tools/call") && x.status != CallStatus::Pending);

    let env = Env::with_reply(DaemonOpts::default(), reply.as_bytes());
    kept(&exchange(&env));
    env.daemon.wait_audit("the first call", answered);
    lowered(&exchange(&env));

    let config = |case: &str| DaemonOpts { config: Some(format!("[http]\nheader_case = \"{case}\"\n")), ..Default::default() };
    let env = Env::with_reply(config("keep"), reply.as_bytes());
    kept(&exchange(&env));
    env.daemon.wait_audit("the first call", answered);
    kept(&exchange(&env));

    let env = Env::with_reply(config("lower"), reply.as_bytes());
    lowered(&exchange(&env));
}
