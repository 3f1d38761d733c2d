//! Bypasses of the HTTP exchange found by an attacker inside the watched cgroup
//! ("Close every bypass"): MCP sent without a JSON Content-Type or padded past the
//! inspection limit, forged server answers, hijacked sessions, DNS rebinding and
//! cross-origin requests to loopback servers, and calls to tools mcpwatch never saw.
//!
//! Where the attack needs a lenient or hostile server (the SDK servers refuse a wrong
//! Content-Type and never forge answers), a raw TCP server that records every byte
//! plays it; everything else runs against the SDK peers.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mcpwatch_api::{AuditRecord, CallStatus};
use mcpwatch_tests::daemon::{Daemon, DaemonOpts};
use mcpwatch_tests::harness::{self, RawBehaviour, RawServer, Watched};
use mcpwatch_tests::peers::{self, Client, HostCheck};
use serde_json::{json, Value};

const DENY_DELETES: &str = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n[[rule]]\nid = \"no-deletes\"\ntools = [\"delete_records\"]\naction = \"deny\"\n";
const OK_REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 36\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}";
const DELETE_CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_records","arguments":{"table":"orders"}}}"#;

/// A daemon in static-upstream mode in front of a raw server that records every byte.
struct Lenient {
    upstream: RawServer,
    daemon: Daemon,
}

impl Lenient {
    fn start(policy: &str, config: Option<&str>, reply: &[u8]) -> Lenient {
        let upstream = RawServer::start("127.0.0.1:0", RawBehaviour { http_reply: Some(reply.to_vec()), ..Default::default() });
        let daemon = Daemon::start(DaemonOpts { static_upstream: Some(upstream.addr), policy: Some(policy.into()), config: config.map(str::to_string), ..Default::default() });
        Lenient { upstream, daemon }
    }

    fn send(&self, bytes: &[u8]) -> String {
        send(SocketAddr::from(([127, 0, 0, 1], self.daemon.port)), bytes)
    }

    fn upstream_bytes(&self) -> String {
        self.upstream.seen().iter().map(|s| String::from_utf8_lossy(&s.bytes).into_owned()).collect()
    }
}

fn send(addr: SocketAddr, bytes: &[u8]) -> String {
    harness::http_roundtrip(addr, bytes, Duration::from_secs(15))
}

fn request(method: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!("{method} {path} HTTP/1.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
    v.extend_from_slice(body);
    v
}

fn status(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn alerts(recs: &[AuditRecord]) -> Vec<String> {
    recs.iter().flat_map(|r| r.alerts.iter().cloned()).collect()
}

fn threat_case(id: &str) -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/threats.jsonl")).expect("threats.jsonl");
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|c| c["id"] == id).unwrap_or_else(|| panic!("case {id} missing"))
}

/// Item 1: MCP is judged by its body. A tools/call the policy denies, sent with another
/// Content-Type, another method, another encoding, without the `jsonrpc` member or
/// padded past `max_body_bytes`, to an endpoint mcpwatch never saw, never reaches a
/// lenient server. Non-MCP uploads and JSON still pass.
#[test]
fn mcp_without_json_content_type_or_padded_is_refused() {
    let env = Lenient::start(DENY_DELETES, Some("[limits]\nmax_body_bytes = 65536\n"), OK_REPLY);
    let host = "Host: 127.0.0.1\r\n";
    let call = DELETE_CALL.as_bytes();
    let utf16: Vec<u8> = DELETE_CALL.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let no_jsonrpc = br#"{"id":7,"method":"tools/call","params":{"name":"delete_records","arguments":{"table":"orders"}}}"#;
    let padded = format!(r#"{{"pad":"{}","jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"delete_records","arguments":{{"table":"orders"}}}}}}"#, "A".repeat(200_000));
    let spaces = format!("{}{DELETE_CALL}", " ".repeat(200_000));
    let utf7_call = DELETE_CALL.replace("delete_records", "delete+AF8-records");
    // RE-008: a huge string argument, here without any MCP header.
    assert_eq!(threat_case("RE-008")["expected"]["error"]["http_status"], 413);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("octet-stream", request("POST", "/mcp", &format!("{host}Content-Type: application/octet-stream\r\n"), call), 415),
        ("no content type", request("POST", "/mcp", host, call), 415),
        ("PUT", request("PUT", "/mcp", &format!("{host}Content-Type: application/json\r\n"), call), 405),
        ("UTF-16 body", request("POST", "/other", &format!("{host}Content-Type: application/json\r\n"), &utf16), 400),
        ("no jsonrpc member", request("POST", "/fresh", &format!("{host}Content-Type: application/json\r\n"), no_jsonrpc), 400),
        ("padding first (RE-008 shape)", request("POST", "/new", &format!("{host}Content-Type: application/json\r\n"), padded.as_bytes()), 413),
        ("whitespace padding, octet-stream", request("POST", "/new2", &format!("{host}Content-Type: application/octet-stream\r\n"), spaces.as_bytes()), 413),
        // A server joins the two headers ("identity, gzip") and inflates.
        ("identity, then gzip", request("POST", "/enc", &format!("{host}Content-Type: application/json\r\nContent-Encoding: identity\r\nContent-Encoding: gzip\r\n"), call), 415),
        // Express decodes `charset=utf-7` before JSON.parse: `ech+AG8-` is `echo` there.
        ("charset utf-7", request("POST", "/u7", &format!("{host}Content-Type: application/json; charset=utf-7\r\n"), utf7_call.as_bytes()), 415),
        ("charset utf-7, quoted, second value", request("POST", "/u7b", &format!("{host}Content-Type: application/json\r\nContent-Type: application/json;Charset=\"UTF-7\"\r\n"), utf7_call.as_bytes()), 415),
    ];
    for (what, bytes, want) in &cases {
        let resp = env.send(bytes);
        assert_eq!(status(&resp), *want, "{what}: {}", &resp[..resp.len().min(300)]);
        let upstream = env.upstream_bytes();
        assert!(!upstream.contains("delete_records") && !upstream.contains("delete+AF8-records"), "{what}: the denied call reached the server");
    }
    let recs = env.daemon.wait_audit("refusal records", |r| r.len() >= cases.len());
    let all = alerts(&recs);
    assert!(all.iter().any(|a| a.contains("Content-Type application/octet-stream")), "{all:?}");
    assert!(all.iter().any(|a| a.contains("HTTP PUT")), "{all:?}");
    assert!(recs.iter().any(|r| matches!(&r.status, CallStatus::TransportError { reason } if reason.starts_with("413"))), "{recs:#?}");

    // Not MCP: a binary upload past the limit and a small JSON document pass unchanged.
    let upload: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8 | 0x80).collect();
    let resp = env.send(&request("POST", "/upload", &format!("{host}Content-Type: application/octet-stream\r\n"), &upload));
    assert_eq!(status(&resp), 200, "{resp}");
    let seen = env.upstream.seen();
    assert!(seen.iter().any(|s| s.bytes.ends_with(&upload)), "upload not forwarded intact");
    let resp = env.send(&request("POST", "/api/orders", &format!("{host}Content-Type: application/json\r\n"), br#"{"order":7}"#));
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(env.upstream_bytes().contains(r#"{"order":7}"#));

    // Once /mcp is known as MCP, a body that is not JSON-RPC is refused there.
    let resp = env.send(&request("POST", "/mcp", &format!("{host}Content-Type: application/json; charset=UTF-8\r\n"), br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#));
    assert_eq!(status(&resp), 200, "UTF-8 named as the charset is UTF-8: {resp}");
    let resp = env.send(&request("POST", "/mcp", &format!("{host}Content-Type: application/x-msgpack\r\n"), b"\x83\xa7jsonrpc\xa32.0"));
    assert_eq!(status(&resp), 415, "{resp}");
    assert!(!env.upstream_bytes().contains("msgpack"), "non-JSON body reached a known MCP endpoint");
}

/// A request line after a space or control bytes, or split by VT/FF: Netty (under
/// Spring AI and Quarkus MCP servers) skips the prefix and splits on those, so each is a
/// request there. Old code took them for "not HTTP" and relayed them raw: a denied call
/// ran with no record. Now they go to the HTTP parser, which refuses them.
#[test]
fn a_request_line_a_lenient_server_reads_is_never_relayed_raw() {
    let env = Lenient::start(DENY_DELETES, None, OK_REPLY);
    let tail = format!("Host: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{DELETE_CALL}", DELETE_CALL.len());
    for line in [" POST /mcp HTTP/1.1\r\n", "\x0bPOST /mcp HTTP/1.1\r\n", "\x00\x00POST /mcp HTTP/1.1\r\n", "POST\x0b/mcp\x0bHTTP/1.1\r\n", "POST\x0c/mcp HTTP/1.1\r\n"] {
        let resp = env.send(format!("{line}{tail}").as_bytes());
        assert!(!resp.contains("\"result\""), "{line:?}: answered by the server: {resp}");
        assert_eq!(env.upstream_bytes(), "", "{line:?}: relayed to the server");
    }
}

/// Send `bytes` on a new connection and read until `until` appears (or the peer stops);
/// the connection stays open with the caller.
fn open_until(addr: SocketAddr, bytes: &[u8], until: &str) -> (std::net::TcpStream, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(bytes).expect("send");
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    while !String::from_utf8_lossy(&got).contains(until) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    (s, String::from_utf8_lossy(&got).into_owned())
}

/// The parked legacy calls are bounded (`max_pending_calls`, host-wide). Past the bound the
/// oldest was pushed out, and its id was then free to reuse while the server still worked
/// on it (its answer taken for the new call's). A POST past the bound is refused (503,
/// recorded); the parked call keeps its id. One user holds at most half the table (here
/// every call is one user's: static mode knows no process), so the bound this client
/// meets is 4 of `max_pending_calls = 8`.
#[test]
fn a_legacy_call_past_the_pending_bound_is_refused_not_parked_over_another() {
    let reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\nevent: endpoint\ndata: /messages/?session_id=abc\n\n";
    let upstream = RawServer::start("127.0.0.1:0", RawBehaviour { http_reply: Some(reply.to_vec()), stay_open: true, ..Default::default() });
    let policy = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n";
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(upstream.addr), policy: Some(policy.into()), config: Some("[limits]\nmax_pending_calls = 8\n".into()), ..Default::default() });
    let addr = SocketAddr::from(([127, 0, 0, 1], daemon.port));
    let (_stream, got) = open_until(addr, b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n", "session_id=abc");
    assert!(got.contains("/messages/?session_id=abc"), "{got}");
    let post = |id: u32, tool: &str| {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#);
        format!("POST /messages/?session_id=abc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    };
    let mut held = Vec::new();
    for id in 1..=4 {
        let (c, got) = open_until(addr, post(id, "read_issue").as_bytes(), "\r\n\r\n");
        assert!(got.starts_with("HTTP/1.1 2"), "call {id} is forwarded: {got}");
        held.push(c);
    }
    let (_c, got) = open_until(addr, post(5, "echo").as_bytes(), "later");
    assert!(got.starts_with("HTTP/1.1 503") && got.contains("too many calls"), "the call past the bound is refused: {got}");
    let (_c, got) = open_until(addr, post(1, "echo").as_bytes(), "}");
    assert!(got.contains("-32600") && got.contains("already used"), "id 1 is still pending: {got}");
    let seen: String = upstream.seen().iter().map(|s| String::from_utf8_lossy(&s.bytes).into_owned()).collect();
    assert!(!seen.contains("\"id\":5"), "the refused call never reached the server");
    assert_eq!(seen.matches("\"id\":1,").count(), 1, "only the first id 1 reached the server");
    daemon.wait_audit("the refused call's record", |r| r.iter().any(|x| x.jsonrpc_id.as_deref() == Some("5") && matches!(&x.status, CallStatus::TransportError { reason } if reason.contains("too many pending calls"))));
}

/// Over legacy HTTP+SSE an answer comes on the GET stream and is matched to the parked
/// request by id. A second request under an id still pending took the first one's place:
/// the first request's answer (say, untrusted content) was then judged as the second's
/// (a harmless tool), and the session's taint was laundered. Refused now.
#[test]
fn a_pending_legacy_request_id_cannot_be_reused() {
    let reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\nevent: endpoint\ndata: /messages/?session_id=abc\n\n";
    let upstream = RawServer::start("127.0.0.1:0", RawBehaviour { http_reply: Some(reply.to_vec()), stay_open: true, ..Default::default() });
    let policy = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n";
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(upstream.addr), policy: Some(policy.into()), ..Default::default() });
    let addr = SocketAddr::from(([127, 0, 0, 1], daemon.port));
    let open = |bytes: &[u8], until: &str| open_until(addr, bytes, until);
    // The stream announces the message URL (and stays open: no answer ever comes).
    let (_stream, got) = open(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n", "session_id=abc");
    assert!(got.contains("/messages/?session_id=abc"), "{got}");
    let call = |tool: &str| format!(r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#);
    let post = |body: &str| {
        format!("POST /messages/?session_id=abc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    };
    let (_first, got) = open(post(&call("read_issue")).as_bytes(), "\r\n\r\n");
    assert!(got.starts_with("HTTP/1.1 2"), "the first call is forwarded: {got}");
    let (_second, got) = open(post(&call("echo")).as_bytes(), "}");
    assert!(got.contains("-32600") && got.contains("already used"), "the reused id is refused: {got}");
    let forwarded: usize = upstream.seen().iter().filter(|s| String::from_utf8_lossy(&s.bytes).contains("\"id\":5")).count();
    assert_eq!(forwarded, 1, "only the first request with id 5 reached the server");
    let recs = daemon.wait_audit("the refusal's record", |r| alerts(r).iter().any(|a| a.contains("request id reused")));
    assert!(recs.iter().any(|r| r.name.as_deref() == Some("echo") && matches!(r.status, CallStatus::JsonrpcError { code: -32600, .. })), "{recs:#?}");
}

/// A result padded past `max_body_bytes` (the client picks the size: an `echo` of a long
/// argument) cannot be inspected. Toward an enforced server it is not delivered, whatever
/// the failure mode; before, in the default `failure_mode = "open"`, it reached the
/// client unredacted with only a note.
#[test]
fn an_answer_too_large_to_inspect_is_not_delivered_in_enforce_mode() {
    let text = format!("{} SSN 536-22-8741", "A".repeat(100_000));
    let answer = format!(r#"{{"jsonrpc":"2.0","id":8,"result":{{"content":[{{"type":"text","text":"{text}"}}]}}}}"#);
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
    let env = Lenient::start(DENY_DELETES, Some("[limits]\nmax_body_bytes = 65536\n"), reply.as_bytes());
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-big\r\n";
    let echo = br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;
    let resp = env.send(&request("POST", "/mcp", headers, echo));
    assert!(!resp.contains("536-22-8741") && !resp.contains("AAAAAAAAAA"), "the uninspected answer reached the client: {}", &resp[..resp.len().min(400)]);
    assert!(resp.contains("max_body_bytes"), "the client is told why: {}", &resp[..resp.len().min(400)]);
    env.daemon.wait_audit("the aborted call's record", |r| r.iter().any(|x| matches!(&x.status, CallStatus::TransportError { reason } if reason.contains("larger than limits.max_body_bytes"))));
}

/// A JSON answer held for inspection takes from the body budget too, charged to the
/// client's uid: a watched user's own slow server could otherwise make the daemon hold
/// `max_body_bytes` per connection without bound. While a slow request body holds most of
/// this client's share, an answer that does not fit is not held: toward an enforced
/// server it is not delivered (the client is told why) and the call is recorded.
#[test]
fn an_answer_past_the_body_budget_is_not_delivered_in_enforce_mode() {
    let text = format!("{} SSN 536-22-8741", "A".repeat(20_000));
    let answer = format!(r#"{{"jsonrpc":"2.0","id":8,"result":{{"content":[{{"type":"text","text":"{text}"}}]}}}}"#);
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
    // One uid's share: 65,536 bytes (static mode: every client is one uid).
    let config = "[limits]\nmax_body_bytes = 65536\nmax_buffered_body_bytes = 131072\nbody_timeout_ms = 30000\n";
    let env = Lenient::start(DENY_DELETES, Some(config), reply.as_bytes());
    let addr = SocketAddr::from(([127, 0, 0, 1], env.daemon.port));
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-budget\r\n";
    // The holder: 60,000 bytes of a longer body, never finished.
    let mut holder = std::net::TcpStream::connect(addr).expect("connect");
    holder.write_all(format!("POST /mcp HTTP/1.1\r\n{headers}Content-Length: 60001\r\n\r\n").as_bytes()).expect("head");
    holder.write_all(format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"{}", "h".repeat(59_930)).as_bytes()[..60_000].as_ref()).expect("body");
    std::thread::sleep(Duration::from_millis(800));
    let echo = br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;
    let resp = env.send(&request("POST", "/mcp", headers, echo));
    assert!(!resp.contains("536-22-8741") && !resp.contains("AAAAAAAAAA"), "the uninspected answer reached the client: {}", &resp[..resp.len().min(400)]);
    assert!(resp.contains("max_buffered_body_bytes"), "the client is told why: {}", &resp[..resp.len().min(400)]);
    env.daemon.wait_audit("the aborted call's record", |r| r.iter().any(|x| matches!(&x.status, CallStatus::TransportError { reason } if reason.contains("max_buffered_body_bytes"))));
    drop(holder);
}

/// A server-sent event is held until it is whole (to be inspected before any of it is
/// delivered), up to `max_sse_event_bytes` (8 MiB) per stream. A watched user's own server
/// that starts events and never ends them made the daemon hold that much per connection,
/// times the connections a uid may open, outside the body budget. The waiting event now
/// holds its bytes from the budget, charged to the client's uid: a stream whose event does
/// not fit is cut off (the client is told why, the call recorded), never delivered
/// uninspected.
#[test]
fn a_server_event_waiting_to_be_whole_takes_from_the_body_budget() {
    // Each answer: an event of ~40,000 bytes of its data, never finished (the server stays
    // open). Held twice (the bytes as they came and the parser's copy): 80,000 to 131,072
    // bytes a stream, as their buffers grow.
    let partial = format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"{} SSN 536-22-8741", "A".repeat(40_000));
    let upstream = RawServer::start("127.0.0.1:0", RawBehaviour { http_reply: Some(partial.into_bytes()), stay_open: true, ..Default::default() });
    // One uid's share: 131,072 bytes (static mode: every client is one uid); one waiting
    // event fits, two do not.
    let config = "[limits]\nmax_body_bytes = 65536\nmax_buffered_body_bytes = 262144\n";
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(upstream.addr), policy: Some(DENY_DELETES.into()), config: Some(config.into()), ..Default::default() });
    let addr = SocketAddr::from(([127, 0, 0, 1], daemon.port));
    let call = |id: u32| {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"x"}}}}}}"#);
        format!("POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-sse-{id}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    };
    let (_first, got) = open_until(addr, call(1).as_bytes(), "\r\n\r\n");
    assert!(got.starts_with("HTTP/1.1 200") && got.contains("text/event-stream"), "the first stream is open: {got}");
    // Let the first stream's event arrive and wait.
    std::thread::sleep(Duration::from_millis(500));
    let (_second, got) = open_until(addr, call(2).as_bytes(), "max_buffered_body_bytes");
    assert!(got.contains("max_buffered_body_bytes"), "the second stream is cut off, its client told why: {}", &got[..got.len().min(600)]);
    assert!(!got.contains("536-22-8741") && !got.contains("AAAAAAAAAA"), "nothing of the uninspected event reached the client: {}", &got[..got.len().min(600)]);
    daemon.wait_audit("the cut-off call's record", |r| {
        r.iter().any(|x| x.jsonrpc_id.as_deref() == Some("2") && matches!(&x.status, CallStatus::TransportError { reason } if reason.contains("max_buffered_body_bytes")))
    });
}

/// Go's `encoding/json` (mcp-go; typed handlers of the Go SDK) matches keys regardless of
/// case, the last one winning, and Jackson (the Java SDK) ignores bytes after the first
/// value. mcpwatch judged `name` where such a server ran `NAME`, took a call with `ID` for
/// a notification (never judged), and forwarded an all-capitals call or one with trailing
/// bytes as "not MCP", with no record. Each is refused now, before it reaches the server.
#[test]
fn calls_a_case_blind_or_trailing_tolerant_server_reads_otherwise_are_refused() {
    let env = Lenient::start(DENY_DELETES, None, OK_REPLY);
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n";
    for (what, body) in [
        ("a second name", r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{},"NAME":"delete_records"}}"#),
        ("an id in capitals", r#"{"jsonrpc":"2.0","ID":7,"method":"tools/call","params":{"name":"delete_records","arguments":{}}}"#),
        ("every key in capitals", r#"{"JSONRPC":"2.0","ID":7,"METHOD":"tools/call","PARAMS":{"NAME":"delete_records","ARGUMENTS":{}}}"#),
        ("bytes after the message", r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_records","arguments":{}}}x"#),
    ] {
        let resp = env.send(&request("POST", "/mcp", headers, body.as_bytes()));
        assert!(status(&resp) >= 400 || resp.contains("-32600") || resp.contains("-32700"), "{what}: refused: {resp}");
    }
    let upstream = env.upstream_bytes();
    assert!(!upstream.contains("delete_records"), "a call the server would run as delete_records reached it: {upstream}");
    // On the record, each with why.
    env.daemon.wait_audit("the refusals", |r| r.iter().filter(|x| x.notes.iter().chain(&x.alerts).any(|n| n.contains("regardless of case") || n.contains("trailing") || n.contains("syntax"))).count() >= 4);
}

/// A client's notifications carry text of its choosing to the server (a progress or log
/// message, a cancellation reason) as a call's arguments do, and were passed on unscanned:
/// a channel around the detectors. They are inspected now, redacted in enforce mode.
#[test]
fn a_clients_notification_is_inspected_like_arguments() {
    let policy = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n[inspect.detectors]\ndefault_action = \"redact\"\n";
    let env = Lenient::start(policy, None, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-notify\r\n";
    let note = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1,"message":"SSN 536-22-8741"}}"#;
    let resp = env.send(&request("POST", "/mcp", headers, note));
    assert!(resp.starts_with("HTTP/1.1 202"), "forwarded: {resp}");
    let upstream = env.upstream_bytes();
    assert!(upstream.contains("notifications/progress") && !upstream.contains("536-22-8741"), "the SSN reached the server: {upstream}");
    assert!(upstream.contains("<US_SSN>"), "redacted in place: {upstream}");
    env.daemon.wait_audit("the notification's findings", |r| r.iter().any(|x| x.method.as_deref() == Some("notifications/progress") && !x.findings.is_empty()));
}

/// A server replays answers on a resumed stream (`Last-Event-ID`, the SDKs' event
/// stores): the replayed answer's call was completed already, so no waiting call took
/// it and it reached the client with no inspection and no record. Now it is judged by
/// its shape (here a `tools/call` result: redacted) and recorded with an alert.
#[test]
fn an_answer_replayed_on_a_resumed_stream_is_inspected() {
    let events = "event: message\nid: 1\ndata: {\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"SSN 536-22-8741\"}]}}\n\n";
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n{events}");
    let policy = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n[inspect.detectors]\ndefault_action = \"redact\"\n";
    let env = Lenient::start(policy, None, reply.as_bytes());
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-replay\r\nMCP-Protocol-Version: 2025-11-25\r\n";
    let echo = br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;
    let resp = env.send(&request("POST", "/mcp", headers, echo));
    assert!(resp.contains("<US_SSN>") && !resp.contains("536-22-8741"), "the answer on the POST stream is redacted: {resp}");
    // The client resumes: the server replays the answer on a GET.
    let resp = env.send(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nMcp-Session-Id: s-replay\r\nMCP-Protocol-Version: 2025-11-25\r\nLast-Event-ID: 0\r\nConnection: close\r\n\r\n");
    assert!(resp.contains("<US_SSN>") && !resp.contains("536-22-8741"), "the replayed answer reached the client unredacted: {resp}");
    env.daemon.wait_audit("the replay's record", |r| alerts(r).iter().any(|a| a.contains("answer to no waiting call")));
}

/// Streamable HTTP: a request id reused in a session (MCP forbids it; the TypeScript SDK
/// re-points the id to the newer stream, so the first call's answer arrived on the second
/// POST and was judged as that call's, a `tools/list` unscanned), or twice in one batch,
/// is refused before it reaches the server.
#[test]
fn a_request_id_cannot_be_reused_in_a_session_or_a_batch() {
    let env = Lenient::start(DENY_DELETES, None, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-ids\r\n";
    let call = |id: &str, tool: &str| format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#);
    let first = env.send(&request("POST", "/mcp", headers, call("9", "read_issue").as_bytes()));
    assert!(first.starts_with("HTTP/1.1 202"), "{first}");
    let again = env.send(&request("POST", "/mcp", headers, call("9", "echo").as_bytes()));
    assert!(again.contains("-32600") && again.contains("already used"), "{again}");
    // Once more (the refusal must not make the id look unsent), and as `9.0` and `9e0`,
    // which are 9 to the TypeScript SDK.
    for same in ["9", "9.0", "9e0"] {
        let again = env.send(&request("POST", "/mcp", headers, call(same, "echo").as_bytes()));
        assert!(again.contains("-32600") && again.contains("already used"), "{same}: {again}");
    }
    let batch = format!("[{},{}]", call("11", "echo"), call("11.0", "read_issue"));
    env.send(&request("POST", "/mcp", "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-batch\r\n", batch.as_bytes()));
    env.daemon.wait_audit("the refusals' records", |r| alerts(r).iter().filter(|a| a.contains("request id reused")).count() >= 5);
    let upstream = env.upstream_bytes();
    assert_eq!(upstream.matches("\"id\":9").count(), 1, "only the first id 9 reached the server: {upstream}");
    assert_eq!(upstream.matches("\"id\":11").count(), 1, "only one id 11 reached the server: {upstream}");
}

/// The fates of ids are bounded (`max_pending_calls`, host-wide), so enough other calls
/// (a flood, or just a busy host) forget that an id was sent. A call still waiting for its
/// answer keeps its id in use all the same: reusing it is refused, however many ids came
/// between.
#[test]
fn an_id_in_flight_cannot_be_reused_after_its_fate_is_forgotten() {
    reuse_after_the_fates_are_forgotten(false);
}

/// The same when the client went away from its call: the server still works on it (and
/// the TypeScript SDK would send its answer to the stream of a new call with that id),
/// so the id stays in use.
#[test]
fn an_id_stays_in_use_after_its_client_went_away() {
    reuse_after_the_fates_are_forgotten(true);
}

fn reuse_after_the_fates_are_forgotten(client_leaves: bool) {
    use std::net::{TcpListener, TcpStream};
    // The server holds the call with id 9 open (an SSE stream of log notifications that
    // does not end for 30 s) and answers everything else at once.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = c.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).into_owned();
                    let Some(end) = text.find("\r\n\r\n") else { continue };
                    let len = text[..end].lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))).unwrap_or(0);
                    if got.len() < end + 4 + len {
                        continue;
                    }
                    seen.lock().unwrap().push_str(&text);
                    if text.contains("\"id\":9,") {
                        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n");
                        for _ in 0..150 {
                            let note = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":\"info\",\"data\":\"x\"}}\n\n";
                            if c.write_all(note).is_err() {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    } else {
                        let _ = c.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
                    }
                    return;
                }
            });
        }
    });
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(upstream), policy: Some(DENY_DELETES.into()), config: Some("[limits]\nmax_pending_calls = 8\n".into()), ..Default::default() });
    let addr = SocketAddr::from(([127, 0, 0, 1], daemon.port));
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-flight\r\n";
    let call = |id: &str, tool: &str| request("POST", "/mcp", headers, format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#).as_bytes());
    // Call 9 waits for its answer on a connection the client keeps (or drops).
    let mut waiting = TcpStream::connect(addr).unwrap();
    waiting.write_all(&call("9", "read_issue")).unwrap();
    let t0 = std::time::Instant::now();
    while !seen.lock().unwrap().contains("\"id\":9,") {
        assert!(t0.elapsed() < Duration::from_secs(15), "call 9 never reached the server");
        std::thread::sleep(Duration::from_millis(20));
    }
    if client_leaves {
        waiting.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let _ = waiting.read(&mut [0u8; 256]);
        let _ = waiting.shutdown(std::net::Shutdown::Both);
        // The daemon notices at its next write toward the client (a notification every 200 ms).
        std::thread::sleep(Duration::from_millis(800));
    }
    // More ids than the daemon remembers fates for.
    for i in 100..120 {
        let resp = send(addr, &call(&i.to_string(), "echo"));
        assert_eq!(status(&resp), 202, "{resp}");
    }
    let again = send(addr, &call("9", "echo"));
    assert!(again.contains("-32600") && again.contains("already used"), "the id in flight was reused: {again}");
    assert_eq!(seen.lock().unwrap().matches("\"id\":9,").count(), 1, "only the first id 9 reached the server");
    drop(waiting);
}

/// Ids are used per server session, not per endpoint spelling: the endpoint carries the
/// path (and, toward remote servers, the client's spelling of the host), and a server
/// that serves one session table on any path (or under two names) reads `/mcp` and
/// `/other` with one session id as one session. An id used on one was reusable on the
/// other.
#[test]
fn an_id_used_in_a_session_is_used_under_every_spelling_of_its_endpoint() {
    let env = Lenient::start(DENY_DELETES, None, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-paths\r\n";
    let call = |tool: &str| format!(r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#);
    let first = env.send(&request("POST", "/mcp", headers, call("read_issue").as_bytes()));
    assert_eq!(status(&first), 202, "{first}");
    let again = env.send(&request("POST", "/other", headers, call("echo").as_bytes()));
    assert!(again.contains("-32600") && again.contains("already used"), "the id was reused under another path: {again}");
    assert_eq!(env.upstream_bytes().matches("\"id\":9").count(), 1);
}

/// A call held for a human keeps its id in use while it waits: a request reusing the id
/// meanwhile was forwarded at once (it was not yet sent, so not yet "used"), and the held
/// call, once approved, went out under the same id, so one answer could be taken for the
/// other's. Refused now.
#[test]
fn an_id_held_for_approval_cannot_be_reused_meanwhile() {
    let policy = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\napproval_timeout_secs = 3\n[[rule]]\nid = \"approve-deletes\"\ntools = [\"delete_records\"]\naction = \"require_approval\"\n";
    let env = std::sync::Arc::new(Lenient::start(policy, None, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"));
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-held\r\n";
    let call = |tool: &str| request("POST", "/mcp", headers, format!(r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#).as_bytes());
    let held = {
        let (env, bytes) = (env.clone(), call("delete_records"));
        std::thread::spawn(move || env.send(&bytes))
    };
    env.daemon.wait_pending(1);
    let again = env.send(&call("echo"));
    assert!(again.contains("-32600") && again.contains("already used"), "the held call's id was reused: {again}");
    let first = held.join().unwrap();
    assert!(first.contains("-32") && !first.contains("already used"), "the held call timed out, refused: {first}");
    assert!(!env.upstream_bytes().contains("\"id\":9"), "nothing with id 9 reached the server: {}", env.upstream_bytes());
}

/// A batch waits for its held calls inline, and its other messages were judged by the
/// policy in force then: a reload meanwhile that denies them let them through after the
/// wait. The batch is refused now, to be sent again and judged by the new policy.
#[test]
fn a_batch_waiting_for_approval_is_not_forwarded_after_a_reload() {
    let policy = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\napproval_timeout_secs = 20\n[[rule]]\nid = \"approve-deletes\"\ntools = [\"delete_records\"]\naction = \"require_approval\"\n";
    let env = std::sync::Arc::new(Lenient::start(policy, None, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"));
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-reload\r\n";
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"now-denied"}}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_records","arguments":{}}}]"#;
    let held = {
        let (env, bytes) = (env.clone(), request("POST", "/mcp", headers, batch.as_bytes()));
        std::thread::spawn(move || env.send(&bytes))
    };
    env.daemon.wait_pending(1);
    std::fs::write(env.daemon.policy_path(), format!("{policy}[[rule]]\nid = \"no-echo\"\ntools = [\"echo\"]\naction = \"deny\"\n")).unwrap();
    let out = env.daemon.cli(&["policy", "reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer = held.join().unwrap();
    assert!(answer.contains("policy was reloaded"), "the batch is refused, said why: {answer}");
    assert!(!env.upstream_bytes().contains("now-denied"), "a call the new policy denies reached the server: {}", env.upstream_bytes());
}

/// Two requests with one id sent at the same moment on two connections: the reuse check
/// and the mark that makes the id used were two steps, so both could pass (21 of 300
/// pairs reached the server twice). The id is claimed in one step now.
#[test]
fn two_requests_racing_with_one_id_never_both_reach_the_server() {
    let env = Lenient::start(DENY_DELETES, None, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
    let addr = SocketAddr::from(([127, 0, 0, 1], env.daemon.port));
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-race\r\n";
    let ids = 1000..1300u32;
    for id in ids.clone() {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{}}}}}}"#);
        let req = request("POST", "/mcp", headers, body.as_bytes());
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (req, barrier) = (req.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    barrier.wait();
                    s.write_all(&req).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        out.extend_from_slice(&buf[..n]);
                        if String::from_utf8_lossy(&out).contains("\r\n\r\n") {
                            break;
                        }
                    }
                })
            })
            .collect();
        for r in racers {
            r.join().unwrap();
        }
    }
    let t0 = std::time::Instant::now();
    while !env.upstream_bytes().contains("\"id\":1299,") && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let up = env.upstream_bytes();
    let twice: Vec<u32> = ids.clone().filter(|id| up.matches(&format!("\"id\":{id},")).count() > 1).collect();
    assert!(twice.is_empty(), "ids forwarded twice: {twice:?}");
    let once = ids.filter(|id| up.contains(&format!("\"id\":{id},"))).count();
    assert_eq!(once, 300, "every id reached the server once");
}

/// A hostile server labels a JSON answer both JSON and event stream: the Python SDK reads
/// JSON (it looks at how the value starts; httpx joins two headers), mcpwatch took it for
/// an event stream with no events and passed it on unread: the SSN reached the client
/// unredacted. Such an answer is not inspectable: not delivered in enforce mode, recorded.
#[test]
fn an_answer_typed_two_ways_is_not_delivered_uninspected() {
    let body = r#"{"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"SSN 536-22-8741"}]}}"#;
    for types in ["Content-Type: application/json; x=\"text/event-stream\"\r\n", "Content-Type: application/json\r\nContent-Type: text/event-stream\r\n"] {
        let reply = format!("HTTP/1.1 200 OK\r\n{types}Content-Length: {}\r\n\r\n{body}", body.len());
        let env = Lenient::start(DENY_DELETES, None, reply.as_bytes());
        let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n";
        let call = br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;
        let resp = env.send(&request("POST", "/mcp", headers, call));
        assert!(!resp.contains("536-22-8741"), "{types:?}: the answer went out uninspected: {resp}");
        assert_eq!(status(&resp), 502, "{types:?}: {resp}");
        env.daemon.wait_audit("the call's record", |r| alerts(r).iter().any(|a| a.contains("Content-Type clients read two ways")));
    }
    // One type, said once: inspected (and redacted) as ever.
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let env = Lenient::start(DENY_DELETES, None, reply.as_bytes());
    let resp = env.send(&request("POST", "/mcp", "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n", br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#));
    assert!(resp.contains("<US_SSN>") && !resp.contains("536-22-8741"), "{resp}");
}

/// A JSON answer the server cuts short (it closes before its Content-Length) was never
/// read as a whole, so never inspected; its bytes went to the client as they were, which
/// a tolerant reader takes. Toward an enforced server nothing of it is delivered.
#[test]
fn an_answer_cut_short_is_not_delivered_uninspected_in_enforce_mode() {
    let body = r#"{"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"SSN 536-22-8741"}]}}"#;
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len() + 400);
    let env = Lenient::start(DENY_DELETES, None, reply.as_bytes());
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n";
    let call = br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;
    let resp = env.send(&request("POST", "/mcp", headers, call));
    assert!(!resp.contains("536-22-8741"), "the cut-short answer went out uninspected: {resp}");
    env.daemon.wait_audit("the call's record", |r| r.iter().any(|x| x.jsonrpc_id.as_deref() == Some("5") && matches!(x.status, CallStatus::TransportError { .. })));
}

/// A client that numbers a call `5.0` gets the answer a JavaScript server writes as `5`:
/// the answer is matched to its call by the id's value, not dropped as an answer to an id
/// the client never sent.
#[test]
fn an_answer_is_matched_to_its_call_by_the_ids_value() {
    let body = r#"{"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"ANSWER-5"}]}}"#;
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let env = Lenient::start(DENY_DELETES, None, reply.as_bytes());
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-five\r\n";
    let call = br#"{"jsonrpc":"2.0","id":5.0,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;
    let resp = env.send(&request("POST", "/mcp", headers, call));
    assert!(resp.contains("ANSWER-5"), "the answer reached the client: {resp}");
    let recs = env.daemon.wait_audit("the call's record", |r| r.iter().any(|r| r.jsonrpc_id.as_deref() == Some("5.0") && r.status == CallStatus::Ok));
    assert!(alerts(&recs).iter().all(|a| !a.contains("server message") && !a.contains("no waiting call")), "{:?}", alerts(&recs));
}

/// Two Host headers: the daemon names the server by one, a front end may route by the
/// other. Refused (400) and recorded, never forwarded.
#[test]
fn a_request_with_two_host_headers_is_refused() {
    let env = Lenient::start(DENY_DELETES, None, OK_REPLY);
    let echo = br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;
    let headers = "Host: 127.0.0.1\r\nHost: admin.internal\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n";
    let resp = env.send(&request("POST", "/mcp", headers, echo));
    assert_eq!(status(&resp), 400, "{resp}");
    assert_eq!(env.upstream_bytes(), "", "forwarded");
    let recs = env.daemon.wait_audit("the refusal's record", |r| r.iter().any(|r| matches!(&r.status, CallStatus::TransportError { reason } if reason.contains("duplicate Host"))));
    assert!(!recs.is_empty());
    // One Host is served as ever.
    let resp = env.send(&request("POST", "/mcp", "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n", echo));
    assert_eq!(status(&resp), 200, "{resp}");
}

/// A client's JSON-RPC answer to an id no watched server request carried still leaves
/// the host with data: it is recorded (kind `invalid`, its keyed hash, an alert), not
/// forwarded unseen.
#[test]
fn a_client_answer_to_nothing_is_recorded() {
    let env = Lenient::start(DENY_DELETES, None, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-9\r\nMCP-Protocol-Version: 2025-06-18\r\n";
    let answer = br#"{"jsonrpc":"2.0","id":"srv-99","result":{"content":[{"type":"text","text":"EXFIL-PAYLOAD"}]}}"#;
    let resp = env.send(&request("POST", "/mcp", headers, answer));
    assert_eq!(status(&resp), 202, "{resp}");
    let recs = env.daemon.wait_audit("the answer's record", |r| alerts(r).iter().any(|a| a.contains("client answer to id \"srv-99\"")));
    let rec = recs.iter().find(|r| r.jsonrpc_id.as_deref() == Some("\"srv-99\"")).expect("the record");
    assert!(rec.result_hash.is_some(), "{rec:#?}");
    assert!(!serde_json::to_string(rec).unwrap().contains("EXFIL-PAYLOAD"), "the record holds a hash, not the data");
}

const HOSTILE_EVENTS: &str = concat!(
    "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"FAKE-DELETE-OK\"}]}}\n\n",
    "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":99,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"UNSENT-ID\"}]}}\n\n",
    "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":\"info\",\"data\":\"LEGIT-NOTE\"}}\n\n",
    "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"srv-1\",\"method\":\"roots/list\",\"params\":{\"tag\":\"LEGIT-REQUEST\"}}\n\n",
    "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"BOTH-RESULT\"}]},\"error\":{\"code\":1,\"message\":\"BOTH-ERROR\"}}\n\n",
    "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"REAL-8\"}]}}\n\n",
);

/// Item 2: a server answer that reuses the id of a request mcpwatch blocked, answers
/// an id the client never sent, or carries both `result` and `error` is dropped and
/// alerted, in a POST's SSE response, a JSON response and the GET stream; the server's
/// own requests and notifications pass.
#[test]
fn forged_server_answers_are_dropped() {
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n{HOSTILE_EVENTS}");
    let env = Lenient::start(DENY_DELETES, None, reply.as_bytes());
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-1\r\nMCP-Protocol-Version: 2025-06-18\r\n";
    // id 7 is denied by mcpwatch: the server never gets it.
    let resp = env.send(&request("POST", "/mcp", headers, DELETE_CALL.as_bytes()));
    assert!(resp.contains("-32001"), "{resp}");
    assert_eq!(env.upstream_bytes(), "");
    // id 8 is forwarded; the server answers it along with forged answers.
    let echo = br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;
    let resp = env.send(&request("POST", "/mcp", headers, echo));
    for forged in ["FAKE-DELETE-OK", "UNSENT-ID", "BOTH-RESULT", "BOTH-ERROR"] {
        assert!(!resp.contains(forged), "{forged} reached the client:\n{resp}");
    }
    for legit in ["LEGIT-NOTE", "LEGIT-REQUEST", "REAL-8"] {
        assert!(resp.contains(legit), "{legit} missing:\n{resp}");
    }
    // The GET stream: the same forged answers are dropped there too.
    let resp = env.send(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nMcp-Session-Id: s-1\r\nConnection: close\r\n\r\n");
    assert!(resp.contains("LEGIT-REQUEST") && resp.contains("LEGIT-NOTE"), "{resp}");
    for forged in ["FAKE-DELETE-OK", "UNSENT-ID", "BOTH-RESULT"] {
        assert!(!resp.contains(forged), "{forged} reached the client on the GET stream:\n{resp}");
    }
    // A GET that does not say it accepts events (the legacy SSE transport streams to it
    // all the same): watched by what the server sends, not by what the client asked.
    // Old code left it unwatched: forged answers, unredacted results, unrecorded requests.
    let resp = env.send(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    assert!(resp.contains("LEGIT-REQUEST") && resp.contains("LEGIT-NOTE"), "{resp}");
    for forged in ["FAKE-DELETE-OK", "UNSENT-ID", "BOTH-RESULT"] {
        assert!(!resp.contains(forged), "{forged} reached the client on a GET stream it did not ask events of:\n{resp}");
    }
    let recs = env.daemon.wait_audit("dropped answers", |r| alerts(r).iter().filter(|a| a.starts_with("server message dropped")).count() >= 9);
    let all = alerts(&recs);
    assert!(all.iter().any(|a| a.contains("a request mcpwatch refused")), "{all:?}");
    assert!(all.iter().any(|a| a.contains("never sent")), "{all:?}");
    assert!(all.iter().any(|a| a.contains("result") && a.contains("error")), "{all:?}");

    // A JSON response answering an id never sent: the client gets an error for its own
    // request instead.
    let forged = br#"{"jsonrpc":"2.0","id":99,"result":{"content":[{"type":"text","text":"UNSENT-JSON"}]}}"#;
    let reply = [format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", forged.len()).as_bytes(), forged].concat();
    let env = Lenient::start(DENY_DELETES, None, &reply);
    let resp = env.send(&request("POST", "/mcp", headers, echo));
    assert!(!resp.contains("UNSENT-JSON"), "{resp}");
    assert!(resp.contains(r#""id":8"#) && resp.contains("integrity"), "{resp}");
}

/// Item 3: a session id is bound to the process that opened it; another process in
/// the watched cgroup presenting it is refused (403) and audited, the owner is served.
#[test]
fn another_process_cannot_use_a_session_it_did_not_open() {
    let server = peers::python_server().ip([127, 0, 0, 2].into()).json_response().spawn();
    let Some(w) = Watched::start_with("another_process_cannot_use_a_session_it_did_not_open", DaemonOpts { ports: Some(server.addr().port().to_string()), policy: Some("version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n".into()), ..Default::default() }) else { return };
    let (ip, port) = (server.addr().ip().to_string(), server.addr().port());
    let prelude = format!(
        r#"
import http.client, json, sys
IP, PORT = "{ip}", {port}
H = {{"Host": f"{{IP}}:{{PORT}}", "Content-Type": "application/json", "Accept": "application/json, text/event-stream"}}
def post(body, extra={{}}):
    c = http.client.HTTPConnection(IP, PORT, timeout=20)
    c.request("POST", "/mcp", json.dumps(body), {{**H, **extra}})
    r = c.getresponse()
    return r.status, r.getheader("mcp-session-id"), r.read().decode()
def open_session():
    st, sid, _ = post({{"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {{"protocolVersion": "2025-06-18", "capabilities": {{}}, "clientInfo": {{"name": "t", "version": "1"}}}}}})
    assert st == 200 and sid, (st, sid)
    post({{"jsonrpc": "2.0", "method": "notifications/initialized"}}, {{"mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}})
    return sid
def call(sid, text):
    st, _, body = post({{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {{"name": "echo", "arguments": {{"text": text}}}}}}, {{"mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}})
    return st, body
"#
    );
    // The owner opens a session and uses it.
    let owner = harness::py(Some(w.cgroup()), &format!("{prelude}\nsid = open_session()\nst, body = call(sid, 'owner')\nprint(json.dumps({{'sid': sid, 'status': st}}))"));
    assert_eq!(owner["status"], 200, "{owner}");
    let sid = owner["sid"].as_str().unwrap().to_string();
    // Another process presents it.
    let thief = harness::py(Some(w.cgroup()), &format!("{prelude}\nst, body = call({sid:?}, 'thief')\nprint(json.dumps({{'status': st, 'body': body}}))"));
    assert_eq!(thief["status"], 403, "{thief}");
    let texts = server.recorded_texts();
    assert_eq!(texts, vec!["owner"], "the hijacked call reached the server");
    let recs = w.daemon.wait_audit("hijack alert", |r| alerts(r).iter().any(|a| a.contains("session hijack")));
    assert!(alerts(&recs).iter().any(|a| a.contains(&sid[..8])), "{:?}", alerts(&recs));
}

/// Item 4: DNS rebinding (a non-local Host toward a loopback server) and a foreign
/// web page's Origin are refused (403) in enforce mode and audited in every mode, POSTs
/// and GETs alike (the MCP Inspector CVE-2025-49596 class: a browser-borne GET to a
/// local SSE endpoint with a command in the query).
#[test]
fn rebinding_and_foreign_origins_to_loopback_servers_are_refused() {
    // A server without its own DNS-rebinding protection, like the vulnerable Inspector.
    let server = peers::python_server().json_response().stateless().host_check(HostCheck::Off).spawn();
    let policy = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n";
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), policy: Some(policy.into()), ..Default::default() });
    let addr = SocketAddr::from(([127, 0, 0, 1], daemon.port));
    let call = |text: &str| format!(r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}"}}}}}}"#);
    let json_headers = "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n";
    let port = server.addr().port();
    let cases = [
        ("rebinding", format!("Host: attacker.example:{port}\r\n"), "rebound"),
        ("foreign origin", format!("Host: 127.0.0.1:{port}\r\nOrigin: https://news-site.example\r\n"), "cross-origin"),
        ("null origin", format!("Host: localhost:{port}\r\nOrigin: null\r\n"), "sandboxed"),
        ("IP literal of another host", format!("Host: 127.0.0.9:{port}\r\n"), "misdirected"),
    ];
    for (what, extra, text) in &cases {
        let resp = send(addr, &request("POST", "/mcp", &format!("{extra}{json_headers}"), call(text).as_bytes()));
        assert_eq!(status(&resp), 403, "{what}: {resp}");
    }
    // A local client with a fitting Host and no Origin (AU-011 style) is served.
    let resp = send(addr, &request("POST", "/mcp", &format!("Host: 127.0.0.1:{port}\r\n{json_headers}"), call("local").as_bytes()));
    assert_eq!(status(&resp), 200, "{resp}");
    let texts = server.recorded_texts();
    assert_eq!(texts, vec!["local"], "a refused request reached the server");
    let recs = daemon.wait_audit("host alerts", |r| alerts(r).len() >= cases.len());
    let all = alerts(&recs);
    assert!(all.iter().any(|a| a.contains("DNS rebinding")) && all.iter().any(|a| a.contains("Origin `https://news-site.example`")), "{all:?}");

    // The browser-borne GET to a local SSE endpoint (CVE-2025-49596), against a server
    // that records every byte, in enforce and in audit mode.
    let get = b"GET /sse?transportType=stdio&command=touch&args=%2Ftmp%2Fpwned HTTP/1.1\r\nHost: localhost:6277\r\nAccept: text/event-stream\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n";
    let sse = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nevent: endpoint\ndata: /message?sessionId=1\n\n";
    for (mode, refused) in [("enforce", true), ("audit", false)] {
        let env = Lenient::start(&format!("version = 1\nmode = \"{mode}\"\nshadow = \"allow\"\n"), None, sse);
        let resp = env.send(get);
        assert_eq!(status(&resp) == 403, refused, "{mode}: {resp}");
        assert_eq!(env.upstream_bytes().contains("command=touch"), !refused, "{mode}");
        let recs = env.daemon.wait_audit("origin alert", |r| alerts(r).iter().any(|a| a.contains("evil.example")));
        assert!(recs.iter().any(|r| r.http_method == "GET" && r.path.contains("command=touch")), "{mode}: {recs:#?}");
    }
}

/// Item 5 and PA-013: a tools/call of a tool that was in no tools/list mcpwatch saw
/// from the server is denied under `pinning = "block"` (the server never sees it) and
/// alerted under `pinning = "alert"`; listed tools work.
#[test]
fn calls_to_tools_mcpwatch_never_saw_follow_the_pinning_policy() {
    let case = threat_case("PA-013");
    let input: Value = serde_json::from_str(case["input"].as_str().unwrap()).unwrap();
    let (tool, args) = (input["params"]["name"].as_str().unwrap(), input["params"]["arguments"].clone());
    let want = case["expected"]["error"]["jsonrpc"].clone();

    let server = peers::python_server().json_response().spawn();
    let block = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n[inspect]\npinning = \"block\"\n";
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), policy: Some(block.into()), ..Default::default() });
    let url = format!("http://127.0.0.1:{}/mcp", daemon.port);
    let out = Client::python(&url).call(tool, args.clone()).list().call("echo", json!({"text": "listed"})).run();
    let steps = out.steps();
    assert_eq!(steps[0]["ok"], false, "{:?}", out.lines);
    assert_eq!(steps[0]["error"]["code"], want["code"], "{:?}", steps[0]);
    assert!(steps[0]["error"]["message"].as_str().unwrap_or_default().contains(want["message"].as_str().unwrap()), "{:?}", steps[0]);
    assert_eq!(steps[2]["text"], "listed", "{:?}", out.lines);
    let tools: Vec<String> = server.recorded_calls().iter().filter_map(|c| c["tool"].as_str().map(str::to_string)).collect();
    assert_eq!(tools, vec!["echo"], "the unlisted tool reached the server");

    // Alert mode: the call goes through, the record says why it is suspicious.
    let server = peers::python_server().json_response().spawn();
    let alert = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n[inspect]\npinning = \"alert\"\n";
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), policy: Some(alert.into()), ..Default::default() });
    let url = format!("http://127.0.0.1:{}/mcp", daemon.port);
    let _ = Client::python(&url).list().call(tool, args).try_run();
    let recs = daemon.wait_audit("pin alert", |r| r.iter().any(|x| x.name.as_deref() == Some(tool) && x.status != CallStatus::Pending));
    let rec = recs.iter().find(|x| x.name.as_deref() == Some(tool)).unwrap();
    assert!(rec.alerts.iter().any(|a| a.contains("call-time pinning")), "{rec:#?}");
}

/// A server that answers `tools/list` with `lists[0]` the first time and `lists[1]`
/// after, answers every `tools/call` with a text result, and records the tool names
/// it was called with.
struct ChangingServer {
    addr: SocketAddr,
    calls: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ChangingServer {
    fn start(lists: [Value; 2]) -> ChangingServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = calls.clone();
        std::thread::spawn(move || {
            let mut served = 0usize;
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { return };
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                while !harness::http_request_complete(&buf) {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| &buf[i + 4..]).unwrap_or_default();
                let req: Value = serde_json::from_slice(body).unwrap_or_default();
                let result = match req["method"].as_str() {
                    Some("tools/list") => {
                        served += 1;
                        lists[(served - 1).min(1)].clone()
                    }
                    Some("tools/call") => {
                        let name = req["params"]["name"].as_str().unwrap_or_default().to_string();
                        seen.lock().unwrap().push(name.clone());
                        json!({"content": [{"type": "text", "text": format!("ran {name}")}]})
                    }
                    _ => json!({}),
                };
                let reply = json!({"jsonrpc": "2.0", "id": req["id"], "result": result}).to_string();
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len());
            }
        });
        ChangingServer { addr, calls }
    }
}

/// RP-005: a tool that first appears in a later tools/list (here after a list_changed)
/// is not trusted on first use: under `pinning = "hide"` it is withheld and calls to it
/// are denied until an operator accepts it; the tools pinned first keep working.
#[test]
fn threat_case_rp005_new_tool_mid_session_is_held_back() {
    let case = threat_case("RP-005");
    let later: Value = serde_json::from_str(case["input"][1].as_str().unwrap()).unwrap();
    let later = later["result"].clone();
    let mut first = later.clone();
    first["tools"].as_array_mut().unwrap().retain(|t| t["name"] != "run_shell");
    let server = ChangingServer::start([first, later]);
    let policy = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n[inspect]\npinning = \"hide\"\n";
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(server.addr), policy: Some(policy.into()), ..Default::default() });
    let addr = SocketAddr::from(([127, 0, 0, 1], daemon.port));
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n";
    let post = |body: String| send(addr, &request("POST", "/mcp", headers, body.as_bytes()));
    let list = || post(json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}).to_string());
    let call = |name: &str| post(json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {"name": name, "arguments": {"cmd": "id"}}}).to_string());

    assert!(list().contains("search_docs"));
    let second = list();
    assert!(second.contains("search_docs") && !second.contains("run_shell"), "the new tool reached the client: {second}");
    let resp = call("run_shell");
    assert!(resp.contains("-32001") && !resp.contains("ran run_shell"), "{resp}");
    assert!(call("search_docs").contains("ran search_docs"));
    assert_eq!(*server.calls.lock().unwrap(), vec!["search_docs"], "the unapproved tool was called");
    let entry = daemon.list().into_iter().next().expect("inventory entry");
    assert!(entry.alerts.iter().any(|a| a.contains("run_shell")), "{:?}", entry.alerts);

    // An operator accepts it: listed and callable from now on.
    let out = daemon.cli(&["pin", "accept", &entry.endpoint, "run_shell"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(list().contains("run_shell"));
    assert!(call("run_shell").contains("ran run_shell"));
}

/// A gzip-compressed MCP message with `Content-Type: application/json` is inflated and
/// executed by the TypeScript SDK server (`express.json()` inflates by default) but is
/// opaque to inspection: refused (415) in enforce mode, never forwarded.
#[test]
fn compressed_mcp_bodies_are_refused() {
    let server = peers::node_server().json_response().stateless().spawn();
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), policy: Some(DENY_DELETES.into()), ..Default::default() });
    let addr = SocketAddr::from(([127, 0, 0, 1], daemon.port));
    let gz = harness::py(None, &format!("import gzip, json\nprint(json.dumps({{'hex': gzip.compress({DELETE_CALL:?}.encode()).hex()}}))"));
    let body = harness::unhex(gz["hex"].as_str().unwrap());
    let headers = format!("Host: 127.0.0.1:{}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Encoding: gzip\r\n", server.addr().port());
    let resp = send(addr, &request("POST", "/mcp", &headers, &body));
    assert_eq!(status(&resp), 415, "{resp}");
    assert!(server.recorded_calls().is_empty(), "the compressed call reached the server: {:?}", server.recorded_calls());
    let recs = daemon.wait_audit("encoding alert", |r| alerts(r).iter().any(|a| a.contains("Content-Encoding `gzip`")));
    assert!(!recs.is_empty());
}

/// PA-005 hidden behind a chunk trailer: `X: a` ended by a bare LF and then CRLF is one
/// trailer line to hyper, so the `GET /x` line after it is a trailer too. The head log
/// once split trailers at bare LFs, saw `GET /x` as a second request, and handed its
/// clean framing to the CL+TE request hyper delivered next: the smuggled request was
/// forwarded. Pipelined on one connection, the second request is refused.
#[test]
fn cl_te_after_a_bare_lf_trailer_is_refused() {
    let env = Lenient::start(DENY_DELETES, None, OK_REPLY);
    let host = "Host: 127.0.0.1\r\nContent-Type: application/json\r\n";
    let body = r#"{"jsonrpc":"2.0","id":8,"method":"tools/list","params":{"smuggled":"marker-8b1f"}}"#;
    let mut stream = format!("POST /api/orders HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\nb\r\n{{\"order\":7}}\r\n0\r\nX: a\n\r\nGET /x HTTP/1.1\r\n\r\n").into_bytes();
    stream.extend_from_slice(
        format!("POST /mcp HTTP/1.1\r\n{host}Content-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).as_bytes(),
    );
    let mut s = std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], env.daemon.port))).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    s.write_all(&stream).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    let statuses: Vec<u16> = out.match_indices("HTTP/1.1 ").filter_map(|(i, _)| out[i + 9..].get(..3)?.parse().ok()).collect();
    assert_eq!(statuses.first(), Some(&200), "the first request is clean: {out}");
    assert!(statuses.get(1).is_some_and(|s| (400..500).contains(s)), "the CL+TE request was not refused: {out}");
    assert!(env.upstream_bytes().contains(r#"{"order":7}"#), "the clean request was forwarded");
    assert!(!env.upstream_bytes().contains("marker-8b1f"), "the smuggled request reached the server: {}", env.upstream_bytes());
}

/// Protocol choice: past a `101` the connection is spliced and nothing is inspected.
/// `Upgrade: h2c` is never offered to the server (it goes out as plain HTTP/1.1, and
/// later requests on the connection are still parsed and governed), a server that
/// switches unasked gets a 502, and a WebSocket handshake that says it carries MCP is
/// refused in enforce mode before any byte reaches the server. A WebSocket without MCP
/// evidence (a browser-automation socket, say) is still relayed.
#[test]
fn upgrades_cannot_carry_calls_past_inspection() {
    // h2c: stripped, answered as HTTP/1.1, and the connection stays governed.
    let env = Lenient::start(DENY_DELETES, None, OK_REPLY);
    let addr = SocketAddr::from(([127, 0, 0, 1], env.daemon.port));
    let mut stream = b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n".to_vec();
    stream.extend_from_slice(&request("POST", "/mcp", "Host: 127.0.0.1\r\nContent-Type: application/json\r\n", DELETE_CALL.as_bytes()));
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    s.write_all(&stream).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "the h2c request is answered as HTTP/1.1: {out}");
    let seen = env.upstream_bytes().to_ascii_lowercase();
    assert!(seen.contains("get /mcp http/1.1"), "{seen}");
    assert!(!seen.contains("upgrade") && !seen.contains("http2-settings"), "the upgrade was offered to the server: {seen}");
    assert!(!seen.contains("delete_records"), "the call after the h2c offer was not governed: {seen}");
    assert!(out.matches("HTTP/1.1 ").count() == 2 && out.contains(r#"denied by policy rule \"no-deletes\""#), "the call after the h2c offer is denied on the same connection: {out}");

    // A server that switches protocols on its own is not relayed.
    let env = Lenient::start(DENY_DELETES, None, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
    let resp = env.send(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
    assert_eq!(status(&resp), 502, "{resp}");

    // MCP over WebSocket in enforce mode: refused, audited, never forwarded.
    let ws_reply: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    let env = Lenient::start(DENY_DELETES, None, ws_reply);
    let handshake = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n").into_bytes()
    };
    let resp = env.send(&handshake("/ws", "Sec-WebSocket-Protocol: mcp\r\n"));
    assert_eq!(status(&resp), 403, "{resp}");
    assert!(!env.upstream_bytes().contains("/ws"), "the MCP WebSocket handshake reached the server");
    let recs = env.daemon.wait_audit("websocket refusal", |r| alerts(r).iter().any(|a| a.contains("MCP over WebSocket")));
    assert!(alerts(&recs).iter().any(|a| a.contains("subprotocol `mcp`") && a.contains("refused (enforce mode)")), "{:?}", alerts(&recs));
    assert!(env.daemon.status().counts.refused_protocol >= 1);

    // Without MCP evidence, a WebSocket is relayed as before.
    let resp = env.send(&handshake("/devtools/browser", ""));
    assert_eq!(status(&resp), 101, "{resp}");
    assert!(env.upstream_bytes().contains("GET /devtools/browser"), "{}", env.upstream_bytes());
}

/// Framing choice, the server's side: an answer in a Content-Encoding mcpwatch did not ask
/// for cannot be read (nothing in it redacted, pinned or checked). mcpwatch asks for
/// `identity` whatever the client accepts; a server that compresses anyway is not
/// delivered in enforce mode and is delivered with an alert in audit mode.
#[test]
fn an_answer_mcpwatch_cannot_read_is_not_delivered_in_enforce_mode() {
    // Not real gzip: mcpwatch never decodes it, and a client would (with the secret inside).
    let body = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03compressed-secret";
    let mut reply = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    reply.extend_from_slice(body);
    let echo = br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nAccept-Encoding: gzip, deflate, br\r\n";
    for (mode, delivered) in [("enforce", false), ("audit", true)] {
        let env = Lenient::start(&DENY_DELETES.replace("mode = \"enforce\"", &format!("mode = \"{mode}\"")), None, &reply);
        let resp = env.send(&request("POST", "/mcp", headers, echo));
        let seen = env.upstream_bytes().to_ascii_lowercase();
        assert!(seen.contains("accept-encoding: identity") && !seen.contains("gzip"), "{mode}: compression was offered to the server: {seen}");
        assert_eq!(status(&resp) == 200 && resp.contains("compressed-secret"), delivered, "{mode}: {resp}");
        if !delivered {
            assert_eq!(status(&resp), 502, "{resp}");
        }
        let recs = env.daemon.wait_audit("the echo record", |r| r.iter().any(|r| r.name.as_deref() == Some("echo") && r.status != CallStatus::Pending));
        let rec = recs.iter().find(|r| r.name.as_deref() == Some("echo")).expect("record");
        assert!(rec.alerts.iter().any(|a| a.contains("Content-Encoding `gzip`")), "{mode}: {:?}", rec.alerts);
        assert_eq!(matches!(rec.status, CallStatus::TransportError { .. }), !delivered, "{mode}: {:?}", rec.status);
    }
}

/// Parsing differences, the server's side: an answer mcpwatch could not parse went to the
/// client uninspected, and MCP clients read more than serde_json does. fetch's `json()`
/// skips a byte-order mark, fetch and httpx decode invalid UTF-8 as U+FFFD, and
/// JSON.parse takes a lone surrogate escape. A malicious server used any of them to pass
/// an SSN unredacted. Now answers are read as clients read them, and what still cannot be
/// read is not delivered in enforce mode.
#[test]
fn an_answer_clients_read_but_serde_does_not_is_not_a_way_past_inspection() {
    const SSN: &str = "536-22-8741";
    let policy = |mode: &str| format!("version = 1\nmode = \"{mode}\"\nshadow = \"allow\"\n[inspect.detectors]\ndefault_action = \"redact\"\n");
    let result = |text: &[u8]| {
        let mut v = br#"{"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"SSN "#.to_vec();
        v.extend_from_slice(SSN.as_bytes());
        v.extend_from_slice(text);
        v.extend_from_slice(br#""}]}}"#);
        v
    };
    let reply = |content_type: &str, body: &[u8]| {
        let mut r = format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        r
    };
    let sse = |data: &[u8]| {
        let mut v = b"event: message\ndata: ".to_vec();
        v.extend_from_slice(data);
        v.extend_from_slice(b"\n\n");
        v
    };
    let bom = [b"\xef\xbb\xbf".as_slice(), &result(b"")].concat();
    let echo = br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;
    let headers = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n";
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("a byte-order mark", "enforce", reply("application/json", &bom)),
        ("invalid UTF-8 in a JSON body", "enforce", reply("application/json", &result(b" \xff"))),
        ("invalid UTF-8 in an SSE event", "enforce", reply("text/event-stream", &sse(&result(b" \xff")))),
        ("a lone surrogate", "enforce", reply("application/json", &result(br" \ud800"))),
    ];
    for (what, mode, reply) in cases {
        let env = Lenient::start(&policy(mode), None, &reply);
        let resp = env.send(&request("POST", "/mcp", headers, echo));
        assert!(!resp.contains(SSN), "{what}: the SSN reached the client: {resp}");
        let recs = env.daemon.wait_audit("the echo record", |r| r.iter().any(|r| r.name.as_deref() == Some("echo") && r.status != CallStatus::Pending));
        let rec = recs.iter().find(|r| r.name.as_deref() == Some("echo")).expect("record");
        if what == "a lone surrogate" {
            assert!(resp.contains("not delivered"), "{what}: {resp}");
            assert!(rec.alerts.iter().any(|a| a.contains("not valid JSON") && a.contains("not delivered")), "{what}: {:?}", rec.alerts);
        } else {
            assert!(resp.contains("<US_SSN>"), "{what}: not redacted: {resp}");
            assert!(rec.findings.iter().any(|f| f.detector == "pii.us_ssn" && f.direction == "response"), "{what}: {:?}", rec.findings);
        }
    }
    // In audit mode what cannot be read is delivered, with the alert on its call's record.
    let env = Lenient::start(&policy("audit"), None, &reply("application/json", &result(br" \ud800")));
    let resp = env.send(&request("POST", "/mcp", headers, echo));
    assert!(resp.contains(SSN), "audit mode changes nothing: {resp}");
    let recs = env.daemon.wait_audit("the echo record", |r| r.iter().any(|r| r.name.as_deref() == Some("echo") && r.status != CallStatus::Pending));
    assert!(alerts(&recs).iter().any(|a| a.contains("not valid JSON") && a.contains("delivered uninspected")), "{:?}", alerts(&recs));
}

/// Parsing differences, the client's side: a body serde_json cannot parse was "JSON but
/// not MCP" toward a server with no MCP evidence yet, and forwarded. The TypeScript SDK's
/// Express server (body-parser, then JSON.parse) takes a lone surrogate escape and decodes
/// invalid UTF-8 as U+FFFD, so a denied call carrying either ran. Now such a body is taken
/// for MCP and refused by the envelope check.
#[test]
fn a_body_servers_read_but_serde_does_not_is_not_a_way_past_the_policy() {
    let server = peers::node_server().json_response().stateless().spawn();
    let port = server.addr().port();
    let surrogate = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_records","arguments":{"table":"orders\ud800"}}}"#.to_vec();
    let mut invalid = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_records","arguments":{"table":"orders"#.to_vec();
    invalid.extend_from_slice(b"\xff\"}}}");
    let headers = format!("Host: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n");
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), policy: Some(DENY_DELETES.into()), ..Default::default() });
    // Numbers past f64 (Infinity to JSON.parse) and nesting past serde_json's 128 levels.
    let huge = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_records","arguments":{"table":"orders"},"_meta":{"x":1e400}}}"#.to_vec();
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"delete_records","arguments":{{"table":"orders"}},"_meta":{{"x":{}1{}}}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    )
    .into_bytes();
    for (what, body) in [("a lone surrogate", surrogate), ("invalid UTF-8", invalid), ("a number out of range", huge), ("200 levels of nesting", deep)] {
        // Nothing in between: the server runs it.
        let direct = send(server.addr(), &request("POST", "/mcp", &headers, &body));
        assert!(direct.contains("deleted 42 records"), "{what}: the SDK server no longer takes it; the test needs another variant: {direct}");
        let calls_before = server.recorded_lines().len();
        let resp = send(SocketAddr::from(([127, 0, 0, 1], daemon.port)), &request("POST", "/mcp", &headers, &body));
        assert!(!resp.contains("deleted 42 records") && status(&resp) >= 400, "{what}: {resp}");
        assert_eq!(server.recorded_lines().len(), calls_before, "{what}: the call reached the server: {:?}", server.recorded_lines());
    }
}

/// A client frame with a zero mask (legal, RFC 6455 §5.3), so the payload is readable
/// in what the upstream saw.
fn ws_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Open a WebSocket through the daemon (no subprotocol, no MCP header: nothing says MCP)
/// and send `frames`; what the client read back (the 101 and any close frame).
fn ws_session(env: &Lenient, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], env.daemon.port))).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(b"GET /socket HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n").expect("handshake");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).expect("read the handshake answer");
        assert!(n > 0, "closed during the handshake: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    for f in frames {
        if s.write_all(f).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = s.read_to_end(&mut out);
    out
}

/// The close code of the first close frame the server side sent after the 101.
fn close_code(answer: &[u8]) -> Option<u16> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let rest = &answer[end..];
    (rest.first() == Some(&0x88) && rest.len() >= 4).then(|| u16::from_be_bytes([rest[2], rest[3]]))
}

/// Protocol choice: a WebSocket whose handshake says nothing about MCP, toward a server
/// mcpwatch never saw. Before, it was spliced byte for byte, so a denied call sent as a
/// frame reached the server unrecorded. Now the client's frames are read: a message that
/// is MCP closes the socket (1008) in enforce mode before it is forwarded, and is recorded
/// (and forwarded) in audit mode; compression is never negotiated and a compressed frame
/// closes the socket; other messages (a browser-automation command) still go through.
#[test]
fn mcp_over_a_websocket_is_found_by_its_frames() {
    let ws_reply = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    let open = |policy: &str, reply: &[u8]| {
        let upstream = RawServer::start("127.0.0.1:0", RawBehaviour { http_reply: Some(reply.to_vec()), stay_open: true, ..Default::default() });
        let config = Some("[limits]\nmax_body_bytes = 4096\nbody_timeout_ms = 1500\n".to_string());
        let daemon = Daemon::start(DaemonOpts { static_upstream: Some(upstream.addr), policy: Some(policy.into()), config, ..Default::default() });
        Lenient { upstream, daemon }
    };
    let cdp = br#"{"id":1,"method":"Page.navigate","params":{"url":"about:blank"}}"#;
    let call = DELETE_CALL.as_bytes();
    let (head, tail) = call.split_at(40);

    // Enforce: a browser command passes, then the call (in two fragments, a ping between)
    // is refused and never forwarded.
    let env = open(DENY_DELETES, ws_reply);
    let answer = ws_session(&env, &[ws_frame(true, 1, cdp), ws_frame(false, 1, head), ws_frame(true, 9, b"hi"), ws_frame(true, 0, tail)]);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert_eq!(close_code(&answer), Some(1008), "the client is told why: {text}");
    let seen = env.upstream_bytes();
    assert!(!seen.to_ascii_lowercase().contains("sec-websocket-extensions"), "compression was offered to the server: {seen}");
    assert!(seen.contains("Page.navigate"), "a non-MCP message was not relayed: {seen}");
    assert!(!seen.contains("delete_records") && !seen.contains(r#""method":"tools/call""#), "the denied call reached the server over a WebSocket: {seen}");
    let recs = env.daemon.wait_audit("the refused WebSocket message", |r| r.iter().any(|r| r.name.as_deref() == Some("delete_records")));
    let rec = recs.iter().find(|r| r.name.as_deref() == Some("delete_records")).expect("record");
    assert_eq!((rec.transport.as_str(), rec.method.as_deref()), ("websocket", Some("tools/call")));
    assert!(rec.alerts.iter().any(|a| a.contains("MCP over WebSocket") && a.contains("enforce mode")), "{:?}", rec.alerts);
    assert!(matches!(rec.status, CallStatus::TransportError { .. }), "{:?}", rec.status);
    assert!(!recs.iter().any(|r| r.method.as_deref() == Some("Page.navigate")), "a non-MCP message was recorded");

    // An audit-mode policy with a rule that enforces itself: MCP over a WebSocket, where
    // no rule is judged, is refused as in enforce mode (it was relayed: the rule undone).
    let enforced_rule = "version = 1\nmode = \"audit\"\nshadow = \"allow\"\n[[rule]]\nid = \"no-deletes\"\ntools = [\"delete_records\"]\naction = \"deny\"\nmode = \"enforce\"\n";
    let env = open(enforced_rule, ws_reply);
    let answer = ws_session(&env, &[ws_frame(true, 1, call)]);
    assert_eq!(close_code(&answer), Some(1008), "{}", String::from_utf8_lossy(&answer));
    assert!(!env.upstream_bytes().contains("delete_records"), "the call reached the server past an enforced rule: {}", env.upstream_bytes());

    // A compressed frame (RSV1) cannot be read: closed with 1002, not forwarded.
    let env = open(DENY_DELETES, ws_reply);
    let mut compressed = ws_frame(true, 1, call);
    compressed[0] |= 0x40;
    let answer = ws_session(&env, &[compressed]);
    assert_eq!(close_code(&answer), Some(1002), "{}", String::from_utf8_lossy(&answer));
    assert!(!env.upstream_bytes().contains("delete_records"), "a compressed frame was forwarded");

    // Past max_body_bytes: a binary message streams on whole, one that may be JSON (the
    // call padded) is refused with 1009.
    let env = open(DENY_DELETES, ws_reply);
    let mut png = b"\x89PNG\r\n".to_vec();
    png.resize(6000, b'p');
    png.extend_from_slice(b"end-of-image");
    let padded = format!(r#"{{"pad":"{}","jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"delete_records","arguments":{{}}}}}}"#, "A".repeat(8000));
    let answer = ws_session(&env, &[ws_frame(false, 2, &png[..3000]), ws_frame(true, 0, &png[3000..]), ws_frame(true, 1, padded.as_bytes())]);
    assert_eq!(close_code(&answer), Some(1009), "{}", String::from_utf8_lossy(&answer));
    // Whitespace first: the visible prefix proves nothing (as for a POST body).
    let env2 = open(DENY_DELETES, ws_reply);
    let spaces = format!("{}{DELETE_CALL}", " ".repeat(8000));
    assert_eq!(close_code(&ws_session(&env2, &[ws_frame(true, 1, spaces.as_bytes())])), Some(1009));
    assert!(!env2.upstream_bytes().contains("delete_records"), "the space-padded call was forwarded");
    let seen = env.upstream_bytes();
    assert!(seen.contains("end-of-image") && seen.matches('p').count() >= 5990, "a large binary message was not relayed whole");
    assert!(!seen.contains("delete_records") && !seen.contains("AAAAAAAA"), "the padded call was forwarded");

    // A message never finished: held at most body_timeout, then the socket is closed.
    let env = open(DENY_DELETES, ws_reply);
    let mut s = std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], env.daemon.port))).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(b"GET /socket HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").expect("handshake");
    s.write_all(&ws_frame(false, 1, head)).expect("first fragment");
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert_eq!(close_code(&answer), Some(1008), "{}", String::from_utf8_lossy(&answer));
    assert!(started.elapsed() < Duration::from_secs(8), "held for {:?}", started.elapsed());
    assert!(!env.upstream_bytes().contains("tools/call"), "an unfinished message was forwarded");

    // A server that turns compression on anyway is not relayed.
    let env = open(DENY_DELETES, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n");
    let answer = String::from_utf8_lossy(&ws_session(&env, &[])).into_owned();
    assert_eq!(status(&answer), 502, "{answer}");

    // Audit mode: the call goes on, and its record was written first.
    let env = open(&DENY_DELETES.replace("mode = \"enforce\"", "mode = \"audit\""), ws_reply);
    let answer = ws_session(&env, &[ws_frame(true, 2, &png), ws_frame(true, 1, call)]);
    assert_eq!(close_code(&answer), None, "{}", String::from_utf8_lossy(&answer));
    let recs = env.daemon.wait_audit("the relayed WebSocket call", |r| r.iter().any(|r| r.name.as_deref() == Some("delete_records")));
    let rec = recs.iter().find(|r| r.name.as_deref() == Some("delete_records")).expect("record");
    assert_eq!(rec.transport, "websocket");
    assert_eq!(rec.status, CallStatus::Sent);
    assert!(rec.alerts.iter().any(|a| a.contains("MCP over WebSocket") && a.contains("relayed")), "{:?}", rec.alerts);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(env.upstream_bytes().contains("end-of-image") && env.upstream_bytes().contains("delete_records")) {
        assert!(std::time::Instant::now() < deadline, "the audited call was not relayed: {}", env.upstream_bytes());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// WebSocket messages held for inspection take from the same daemon-wide budget as
/// request bodies: slow sockets each holding an unfinished message up to
/// `max_body_bytes` could otherwise grow the daemon without bound (2048 sockets per uid).
/// Past the budget the socket is closed with 1013 and its message never forwarded; once
/// the holder goes, messages pass again.
#[test]
fn websocket_messages_held_for_inspection_share_the_body_budget() {
    let ws_reply = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    let upstream = RawServer::start("127.0.0.1:0", RawBehaviour { http_reply: Some(ws_reply.to_vec()), stay_open: true, ..Default::default() });
    // One uid's share is half of 8192; a held message takes twice its payload.
    let config = Some("[limits]\nmax_body_bytes = 4096\nmax_buffered_body_bytes = 8192\nbody_timeout_ms = 30000\n".to_string());
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(upstream.addr), policy: Some(DENY_DELETES.into()), config, ..Default::default() });
    let env = Lenient { upstream, daemon };
    // The holder: the first 1,500 bytes of a message, never finished.
    let mut holder = std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], env.daemon.port))).expect("connect");
    holder.write_all(b"GET /socket HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").expect("handshake");
    let first = format!(r#"{{"id":1,"method":"Page.navigate","params":{{"url":"{}"#, "h".repeat(1460));
    holder.write_all(&ws_frame(false, 1, first.as_bytes())).expect("first fragment");
    std::thread::sleep(Duration::from_millis(800));
    let message = |n: u32| format!(r#"{{"id":{n},"method":"Page.navigate","params":{{"url":"{}"}}}}"#, "m".repeat(1150));
    let answer = ws_session(&env, &[ws_frame(true, 1, message(2).as_bytes())]);
    assert_eq!(close_code(&answer), Some(1013), "{}", String::from_utf8_lossy(&answer));
    assert!(!env.upstream_bytes().contains(r#""id":2,"#), "the refused message was forwarded");
    env.daemon.wait_audit("the refusal's record", |r| r.iter().any(|x| x.alerts.iter().any(|a| a.contains("max_buffered_body_bytes"))));
    // The holder goes: its share comes back.
    drop(holder);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = ws_session(&env, &[ws_frame(true, 1, message(3).as_bytes())]);
        if close_code(&answer).is_none() && env.upstream_bytes().contains(r#""id":3,"#) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no message passed after the holder left: {}", String::from_utf8_lossy(&answer));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Identity by path and Host: a server registered by its URL keeps its rules when the
/// client spells the endpoint another way the server still routes. uvicorn decodes `%6D`
/// before Starlette routes, so `POST /%6Dcp` reaches the Python SDK's `/mcp`; and toward a
/// loopback address every local alias (`127.0.0.1`, `LOCALHOST`, `x.localhost`) reaches
/// the server registered as `localhost`. Before, the daemon matched the registry on the
/// raw path and Host, took the server for a shadow one, and a rule scoped to it
/// (`servers = ["records"]`) did not apply.
#[test]
fn a_path_or_host_variant_does_not_shed_the_servers_rules() {
    let server = peers::python_server().json_response().stateless().spawn();
    let port = server.addr().port();
    let policy = format!(
        "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n[[server]]\nname = \"records\"\nurl = \"http://localhost:{port}/mcp\"\n[[rule]]\nid = \"no-deletes-on-records\"\nservers = [\"records\"]\ntools = [\"delete_records\"]\naction = \"deny\"\n"
    );
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), policy: Some(policy), ..Default::default() });
    let addr = SocketAddr::from(([127, 0, 0, 1], daemon.port));
    let headers = |host: &str| format!("Host: {host}:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n");
    // The variant reaches the tool when nothing is in between: the attack is real.
    let direct = send(server.addr(), &request("POST", "/%6Dcp", &headers("127.0.0.1"), br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"routed"}}}"#));
    assert!(direct.contains("routed"), "uvicorn no longer routes /%6Dcp to /mcp; the test needs another variant: {direct}");
    for (host, path) in [("localhost", "/mcp"), ("localhost", "/%6Dcp"), ("localhost", "/MCP"), ("localhost", "//mcp"), ("localhost", "/mcp/"), ("127.0.0.1", "/mcp"), ("LOCALHOST", "/mcp"), ("x.localhost", "/m%63p")] {
        let resp = send(addr, &request("POST", path, &headers(host), DELETE_CALL.as_bytes()));
        assert!(resp.contains("no-deletes-on-records"), "Host {host}, {path}: not denied by the server's rule: {resp}");
    }
    assert!(!server.recorded_calls().iter().any(|c| c.to_string().contains("delete_records")), "a delete reached the server: {:?}", server.recorded_calls());
}

/// Session identity over legacy HTTP+SSE: the Python SDK finds a legacy session with
/// `UUID(hex=...)` on a Starlette-decoded query, so the announced
/// `/messages/?session_id=<hex>` can be spelled in upper case, as a hyphenated UUID,
/// with an encoded name or path, or after a decoy `session_id` (Starlette takes the
/// last). A process that did not open the session (a forked child here: same cgroup,
/// another tgid) is refused on every spelling, before the server sees the call.
#[test]
fn a_legacy_session_cannot_be_taken_by_spelling_its_id_another_way() {
    let server = peers::python_server().ip([127, 0, 0, 2].into()).legacy_sse().spawn();
    let Some(w) = Watched::start_with("a_legacy_session_cannot_be_taken_by_spelling_its_id_another_way", DaemonOpts { ports: Some(server.addr().port().to_string()), policy: Some("version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n".into()), ..Default::default() }) else { return };
    let (ip, port) = (server.addr().ip().to_string(), server.addr().port());
    let script = format!(
        r#"
import http.client, json, os, socket, uuid
IP, PORT = "{ip}", {port}
HOST = f"{{IP}}:{{PORT}}"
s = socket.create_connection((IP, PORT), timeout=20)
s.sendall(f"GET /sse HTTP/1.1\r\nHost: {{HOST}}\r\nAccept: text/event-stream\r\n\r\n".encode())
buf = b""
while b"session_id=" not in buf or not buf.split(b"session_id=", 1)[1].count(b"\n"):
    chunk = s.recv(4096)
    if not chunk:
        break
    buf += chunk
endpoint = [l for l in buf.decode().splitlines() if "session_id=" in l][0].split("data:", 1)[1].strip()
sid = endpoint.split("session_id=", 1)[1]
def post(path, body):
    c = http.client.HTTPConnection(IP, PORT, timeout=20)
    c.request("POST", path, json.dumps(body), {{"Host": HOST, "Content-Type": "application/json"}})
    r = c.getresponse()
    r.read()
    return r.status
owner = post(endpoint, {{"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {{"protocolVersion": "2024-11-05", "capabilities": {{}}, "clientInfo": {{"name": "t", "version": "1"}}}}}})
rd, wr = os.pipe()
pid = os.fork()
if pid == 0:
    call = lambda text: {{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {{"name": "echo", "arguments": {{"text": text}}}}}}
    variants = {{
        "exact": endpoint,
        "upper": f"/messages/?session_id={{sid.upper()}}",
        "hyphens": f"/messages/?session_id={{uuid.UUID(hex=sid)}}",
        "encoded-name": f"/messages/?session%5Fid={{sid}}",
        "encoded-path": f"/%6Dessages/?session_id={{sid}}",
        "decoy-first": f"/messages/?session_id={{uuid.uuid4().hex}}&session_id={{sid}}",
    }}
    out = {{k: post(v, call("thief-" + k)) for k, v in variants.items()}}
    os.write(wr, json.dumps(out).encode())
    os._exit(0)
os.close(wr)
os.waitpid(pid, 0)
print(json.dumps({{"owner": owner, "sid": sid, "thief": json.loads(os.read(rd, 65536))}}))
"#
    );
    let out = harness::py(Some(w.cgroup()), &script);
    assert_eq!(out["owner"], 202, "{out}");
    for (spelling, status) in out["thief"].as_object().expect("thief statuses") {
        let want: &[u64] = if spelling == "decoy-first" { &[400, 403] } else { &[403] };
        assert!(status.as_u64().is_some_and(|s| want.contains(&s)), "{spelling}: {status} ({out})");
    }
    let texts = server.recorded_texts();
    assert!(!texts.iter().any(|t| t.starts_with("thief")), "a hijacked call reached the server: {texts:?}");
    let recs = w.daemon.wait_audit("hijack alerts", |r| alerts(r).iter().filter(|a| a.contains("session hijack") || a.contains("different legacy sessions")).count() >= 6);
    assert!(!recs.is_empty());
}

/// Tool pins are kept per endpoint, so the endpoint is spelled as the server routes it:
/// after `tools/list` at `/mcp`, a call to an unlisted tool through `/%6Dcp` (the same
/// endpoint to uvicorn) is the unlisted call it is (denied under `hide`), not a call to a
/// server whose list was never seen (only alerted under `hide`).
#[test]
fn pins_hold_for_every_spelling_of_the_endpoint() {
    let case = threat_case("PA-013");
    let input: Value = serde_json::from_str(case["input"].as_str().unwrap()).unwrap();
    let tool = input["params"]["name"].as_str().unwrap();
    let server = peers::python_server().json_response().stateless().spawn();
    let hide = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n[inspect]\npinning = \"hide\"\n";
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), policy: Some(hide.into()), ..Default::default() });
    let port = server.addr().port();
    let out = Client::python(&format!("http://127.0.0.1:{}/mcp", daemon.port)).list().run();
    assert!(out.steps()[0]["tools"].as_array().is_some_and(|t| !t.is_empty()), "{:?}", out.lines);
    let headers = format!("Host: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n");
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": input["params"].clone()}).to_string();
    for path in ["/%6Dcp", "/MCP/"] {
        let resp = send(SocketAddr::from(([127, 0, 0, 1], daemon.port)), &request("POST", path, &headers, call.as_bytes()));
        assert!(resp.contains("-32602") && resp.contains(tool), "{path}: not refused as an unlisted tool: {resp}");
    }
    let tools: Vec<String> = server.recorded_calls().iter().filter_map(|c| c["tool"].as_str().map(str::to_string)).collect();
    assert!(!tools.iter().any(|t| t == tool), "the unlisted tool reached the server: {tools:?}");
}

/// Legacy HTTP+SSE routes cannot be flooded out. A legacy client's POSTs are attributed
/// to their server through the route its stream announced; before, the route table kept
/// the last 4096 announcements whatever their streams did, so a client that opened and
/// closed streams in a loop pushed its own live route out, and its POSTs were then judged
/// as a shadow endpoint at `/messages/`, where a rule scoped to the registered server does
/// not apply. Now a route lives exactly as long as its stream, and when
/// `limits.max_legacy_streams` streams are open a new one is ended before it announces a
/// message URL.
#[test]
fn legacy_routes_cannot_be_flooded_out() {
    const STREAMS: usize = 4;
    let server = peers::python_server().legacy_sse().spawn();
    let port = server.addr().port();
    let policy = format!(
        "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n[[server]]\nname = \"legacy\"\nurl = \"http://127.0.0.1:{port}/sse\"\n[[rule]]\nid = \"no-deletes-on-legacy\"\nservers = [\"legacy\"]\ntools = [\"delete_records\"]\naction = \"deny\"\n"
    );
    let daemon = Daemon::start(DaemonOpts {
        static_upstream: Some(server.addr()),
        policy: Some(policy),
        config: Some(format!("[limits]\nmax_legacy_streams = {STREAMS}\n")),
        ..Default::default()
    });
    let script = format!(
        r#"
import http.client, json, socket, time
DAEMON, HOST = {daemon}, "127.0.0.1:{port}"
def open_stream():
    s = socket.create_connection(("127.0.0.1", DAEMON), timeout=20)
    s.sendall(f"GET /sse HTTP/1.1\r\nHost: {{HOST}}\r\nAccept: text/event-stream\r\n\r\n".encode())
    buf = b""
    while b"session_id=" not in buf or not buf.split(b"session_id=", 1)[1].count(b"\n"):
        chunk = s.recv(4096)
        buf += chunk
        if not chunk or buf.endswith(b"\r\n0\r\n\r\n"):
            return s, None  # closed, or the chunked body ended with no endpoint event
    return s, [l for l in buf.decode().splitlines() if "session_id=" in l][0].split("data:", 1)[1].strip()
def post(path, body):
    c = http.client.HTTPConnection("127.0.0.1", DAEMON, timeout=20)
    c.request("POST", path, json.dumps(body), {{"Host": HOST, "Content-Type": "application/json"}})
    r = c.getresponse()
    r.read()
    return r.status
mine, endpoint = open_stream()
init = post(endpoint, {{"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {{"protocolVersion": "2024-11-05", "capabilities": {{}}, "clientInfo": {{"name": "t", "version": "1"}}}}}})
post(endpoint, {{"jsonrpc": "2.0", "method": "notifications/initialized"}})
# The flood: streams opened and closed in a loop, many more than the table holds.
flood = 0
for _ in range({flood}):
    for _ in range(50):  # the daemon sees a close a moment later; until then the table may be full
        s, e = open_stream()
        s.close()
        if e is not None:
            break
        time.sleep(0.1)
    flood += e is not None
time.sleep(0.3)
delete = post(endpoint, {{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {{"name": "delete_records", "arguments": {{"table": "orders"}}}}}})
echo = post(endpoint, {{"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {{"name": "echo", "arguments": {{"text": "still-routed"}}}}}})
# Fill the table with open streams: the one beyond it never learns a message URL.
held = [open_stream() for _ in range({more})]
extra, extra_endpoint = open_stream()
for s, _ in held:
    s.close()
extra.close()
time.sleep(0.3)
after, after_endpoint = open_stream()
after.close()
mine.close()
print(json.dumps({{"init": init, "flood": flood, "delete": delete, "echo": echo, "held": [e is not None for _, e in held], "extra": extra_endpoint, "after": after_endpoint}}))
"#,
        daemon = daemon.port,
        flood = STREAMS * 4,
        more = STREAMS - 1,
    );
    let out = harness::py(None, &script);
    assert!(out["init"].as_u64().is_some_and(|s| s < 300), "{out}");
    assert_eq!(out["flood"], (STREAMS * 4) as u64, "every stream opened in turn got its URL: {out}");
    assert_eq!(out["delete"], 403, "after the flood, the delete on the live session was not judged as the registered server's: {out}");
    assert!(out["echo"].as_u64().is_some_and(|s| s < 300), "{out}");
    assert!(out["held"].as_array().is_some_and(|h| h.iter().all(|e| e == true)), "{out}");
    assert!(out["extra"].is_null(), "a stream beyond limits.max_legacy_streams learned a message URL: {out}");
    assert!(out["after"].is_string(), "closed streams did not free their routes: {out}");
    let tools: Vec<String> = server.recorded_calls().iter().filter_map(|c| c["tool"].as_str().map(str::to_string)).collect();
    assert!(tools.iter().any(|t| t == "echo"), "{tools:?}");
    assert!(!tools.iter().any(|t| t == "delete_records"), "the delete reached the server: {tools:?}");
    let recs = daemon.wait_audit("legacy stream refusal", |r| alerts(r).iter().any(|a| a.contains("legacy HTTP+SSE stream refused")));
    assert!(alerts(&recs).iter().any(|a| a.contains("max_legacy_streams = 4")), "{:?}", alerts(&recs));
}

/// Identity by Host over plain HTTP: a client inside the cgroup connects to a remote
/// address and writes a registered server's name in `Host`. That name does not resolve
/// to the address, so it does not name the server: the server is named by its address
/// (here shadow, and `shadow = "block"` denies the call), with an alert naming the
/// server it impersonated. Before, the call was judged as the registered server's and
/// forwarded. A `[[server]]` written with the address matches it whatever Host claims.
/// The "remote" server runs in a network namespace of its own (198.18.0.0/15).
#[test]
fn a_host_header_does_not_make_a_remote_address_a_registered_server() {
    let ns = match harness::Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIP a_host_header_does_not_make_a_remote_address_a_registered_server: {why}");
            return;
        }
    };
    let server = peers::python_server().in_netns(&ns).json_response().stateless().spawn();
    let remote = server.addr();
    assert!(!remote.ip().is_loopback(), "{remote}");
    let call = |text: &str| format!(r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}"}}}}}}"#);
    let post = |daemon: &Daemon, host: &str, text: &str| {
        let headers = format!("Host: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n");
        send(SocketAddr::from(([127, 0, 0, 1], daemon.port)), &request("POST", "/mcp", &headers, call(text).as_bytes()))
    };
    let echoed = || server.recorded_texts();
    let by_address = format!("http://{remote}/mcp");
    let claimed = format!("mcp.trusted.example:{}", remote.port());

    // Registered by name only: the claimed name is not this address.
    let by_name = "version = 1\nmode = \"enforce\"\nshadow = \"block\"\n[[server]]\nname = \"trusted\"\nhost = \"mcp.trusted.example\"\n";
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(remote), policy: Some(by_name.into()), ..Default::default() });
    let resp = post(&daemon, &claimed, "impersonated");
    assert!(resp.contains("\"error\"") && resp.contains("policy:shadow") && resp.contains(&by_address), "{resp}");
    assert!(echoed().is_empty(), "a call claiming a registered name reached an unregistered address: {:?}", echoed());
    let recs = daemon.wait_audit("impersonation alert", |r| alerts(r).iter().any(|a| a.contains("impersonated")));
    let call_rec = recs.iter().find(|r| r.method.as_deref() == Some("tools/call")).unwrap_or_else(|| panic!("{recs:#?}"));
    assert_eq!(call_rec.server, by_address, "{call_rec:#?}");
    let decision = call_rec.decision.as_ref().unwrap_or_else(|| panic!("{call_rec:#?}"));
    assert!(decision.shadow && decision.rules.iter().any(|r| r == "policy:shadow"), "{decision:?}");
    assert!(alerts(&recs).iter().any(|a| a.contains("mcp.trusted.example") && a.contains("`trusted`")), "{:?}", alerts(&recs));
    drop(daemon);

    // Registered by address: that entry governs, whatever name the client wrote.
    let by_addr = format!("version = 1\nmode = \"enforce\"\nshadow = \"block\"\n[[server]]\nname = \"remote\"\nurl = \"{by_address}\"\n");
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(remote), policy: Some(by_addr), ..Default::default() });
    let resp = post(&daemon, &remote.to_string(), "literal");
    assert_eq!(status(&resp), 200, "{resp}");
    let resp = post(&daemon, &claimed, "claimed");
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(echoed(), vec!["literal", "claimed"]);
    let recs = daemon.wait_audit("two calls", |r| r.iter().filter(|r| r.method.as_deref() == Some("tools/call")).count() >= 2);
    for r in recs.iter().filter(|r| r.method.as_deref() == Some("tools/call")) {
        assert_eq!(r.server, by_address, "{r:#?}");
        assert!(!r.decision.as_ref().is_some_and(|d| d.shadow), "{r:#?}");
    }
    let claimed_rec = recs.iter().find(|r| r.host.as_deref() == Some(claimed.as_str()) && r.method.as_deref() == Some("tools/call")).unwrap_or_else(|| panic!("{recs:#?}"));
    assert!(claimed_rec.notes.iter().any(|n| n.contains("does not resolve")), "{claimed_rec:#?}");
    drop(server);
    drop(ns);
}

/// Protocol choice through an HTTP forward proxy (an agent with `HTTPS_PROXY` set, the proxy
/// on a watched port). Before, the proxy's `200` reached the client and the tunnel was dead;
/// now what the client sends inside is served as on a fresh connection: plain HTTP is
/// governed (a denied call is answered by mcpwatch and never reaches the proxy), also on a
/// second tunnel once MCP was seen there; TLS toward a host not governed goes on as it is;
/// inside a tunnel to a registered MCP server, in enforce mode, what mcpwatch cannot
/// inspect is refused.
#[test]
fn a_connect_tunnel_is_governed_inside() {
    let proxy_with = |policy: &str, config: Option<String>| {
        let upstream = RawServer::start("127.0.0.1:0", RawBehaviour { http_reply: Some(b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec()), stay_open: true, ..Default::default() });
        let daemon = Daemon::start(DaemonOpts { static_upstream: Some(upstream.addr), policy: Some(policy.into()), config, ..Default::default() });
        Lenient { upstream, daemon }
    };
    let proxy = |policy: &str| proxy_with(policy, None);
    let tunnel = |env: &Lenient, target: &str| {
        let mut s = std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], env.daemon.port))).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).expect("CONNECT");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).expect("read the CONNECT answer"), 1, "closed: {}", String::from_utf8_lossy(&head));
            head.push(b[0]);
        }
        (s, String::from_utf8_lossy(&head).into_owned())
    };
    let wait_upstream = |env: &Lenient, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !env.upstream_bytes().contains(what) {
            assert!(std::time::Instant::now() < deadline, "{what:?} never went through the tunnel: {}", env.upstream_bytes());
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // The tunnel is closed by mcpwatch (EOF or reset) before anything comes back.
    let assert_closed = |s: &mut std::net::TcpStream, what: &str| {
        let mut rest = [0u8; 64];
        match s.read(&mut rest) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{what}: the tunnel stayed open: {other:?}"),
        }
    };

    // Plain HTTP inside: governed.
    let env = proxy(DENY_DELETES);
    let (mut s, head) = tunnel(&env, "127.0.0.1:9");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let headers = "Host: 127.0.0.1:9\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n";
    let body = DELETE_CALL.as_bytes();
    s.write_all(&format!("POST /mcp HTTP/1.1\r\n{headers}Content-Length: {}\r\n\r\n", body.len()).into_bytes()).expect("write");
    s.write_all(body).expect("write");
    let mut answer = vec![0u8; 4096];
    let n = s.read(&mut answer).expect("the denial comes back through the tunnel");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.contains("no-deletes"), "{answer}");
    let echo = br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"text":"through the tunnel"}}}"#;
    s.write_all(&format!("POST /mcp HTTP/1.1\r\n{headers}Content-Length: {}\r\n\r\n", echo.len()).into_bytes()).expect("write");
    s.write_all(echo).expect("write");
    wait_upstream(&env, "through the tunnel");
    assert!(!env.upstream_bytes().contains("delete_records"), "the denied call reached the proxy: {}", env.upstream_bytes());
    let recs = env.daemon.wait_audit("the tunnel's calls", |r| r.iter().any(|r| r.name.as_deref() == Some("echo")) && r.iter().any(|r| r.name.as_deref() == Some("delete_records")));
    assert!(recs.iter().any(|r| r.name.as_deref() == Some("echo") && r.dst == "127.0.0.1:9"), "named by the tunnel's destination: {recs:#?}");

    // A second tunnel to that destination, where MCP has now been seen: it opens (an agent
    // behind a forward proxy reconnects), and what it carries is governed again.
    let (mut s, head) = tunnel(&env, "127.0.0.1:9");
    assert!(head.starts_with("HTTP/1.1 200"), "a tunnel to a destination where MCP was seen was refused: {head}");
    s.write_all(&format!("POST /mcp HTTP/1.1\r\n{headers}Content-Length: {}\r\n\r\n", body.len()).into_bytes()).expect("write");
    s.write_all(body).expect("write");
    let mut again = vec![0u8; 4096];
    let n = s.read(&mut again).expect("the denial comes back through the second tunnel");
    let again = String::from_utf8_lossy(&again[..n]);
    assert!(again.contains("no-deletes"), "{again}");
    assert!(!env.upstream_bytes().contains("delete_records"), "the denied call reached the proxy: {}", env.upstream_bytes());
    let recs = env.daemon.audit();
    assert!(recs.iter().any(|r| r.notes.iter().any(|n| n.contains("CONNECT tunnel to 127.0.0.1:9") && n.contains("enforce mode"))), "the tunnel to a governed destination is recorded: {recs:#?}");
    // The same destination spelled as a v4-mapped IPv6 address is the same destination:
    // what cannot be inspected inside is refused. (It was looked up as
    // `[::ffff:127.0.0.1]:9`, where no MCP had been seen, and relayed with no record.)
    let (mut s, head) = tunnel(&env, "[::ffff:127.0.0.1]:9");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"{\x00\x01mapped-binary-inside").expect("write");
    assert_closed(&mut s, "non-HTTP inside a tunnel to the v4-mapped spelling");
    assert!(!env.upstream_bytes().contains("mapped-binary-inside"), "relayed: {}", env.upstream_bytes());


    // A TLS record that is no ClientHello: closed, as on a direct connection; nothing of
    // it reaches the proxy.
    let env = proxy(DENY_DELETES);
    let (mut s, head) = tunnel(&env, "127.0.0.1:9443");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"\x16\x03\x01\x00\x05hello-tls-bytes").expect("write");
    let mut rest = [0u8; 64];
    let closed = loop {
        match s.read(&mut rest) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    assert!(closed, "the tunnel stayed open after a record that is no ClientHello");
    assert!(!env.upstream_bytes().contains("hello-tls-bytes"), "{}", env.upstream_bytes());

    // A tunnel to a registered MCP server, in enforce mode: it opens, but what mcpwatch
    // cannot inspect inside it (here a binary protocol, then TLS it does not intercept)
    // is refused and recorded, and never reaches the proxy.
    let env = proxy(&format!("{DENY_DELETES}[[server]]\nname = \"records\"\nurl = \"https://mcp.records.test:8443/mcp\"\n"));
    let (mut s, head) = tunnel(&env, "mcp.records.test:8443");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"\x00\x01binary-inside").expect("write");
    assert_closed(&mut s, "opaque bytes inside a tunnel to a registered server");
    let (mut s, head) = tunnel(&env, "mcp.records.test:8443");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(&mcpwatch_tests::tls::hello::client_hello(Some(b"mcp.records.test"))).expect("write");
    assert_closed(&mut s, "TLS that is not intercepted inside a tunnel to a registered server");
    let refused = |r: &AuditRecord, what: &str| matches!(&r.status, CallStatus::TransportError { reason } if reason.contains(what) && reason.contains("mcp.records.test:8443") && reason.contains("refused (enforce mode)"));
    let recs = env.daemon.wait_audit("the refused bytes inside the tunnels", |r| r.iter().any(|r| refused(r, "no HTTP request")) && r.iter().any(|r| refused(r, "TLS (SNI")));
    let tls_rec = recs.iter().find(|r| refused(r, "TLS (SNI")).expect("the TLS record");
    assert_eq!(tls_rec.tls.as_ref().and_then(|t| t.sni.as_deref()), Some("mcp.records.test"), "{tls_rec:#?}");
    let upstream = env.upstream_bytes();
    assert!(!upstream.contains("binary-inside") && !upstream.contains("\u{16}\u{3}"), "bytes inside the tunnels reached the proxy: {upstream:?}");

    // TLS inside a tunnel to a host the [tls] scope intercepts, with a hello naming a host
    // outside it: the client's choice of SNI would take the host out of inspection, so in
    // enforce mode the tunnel is closed and recorded, the hello never reaching the proxy.
    // (A hello naming the host itself is intercepted: see
    // `tls_inside_a_connect_tunnel_is_intercepted_and_governed`.)
    let pki = mcpwatch_tests::tls::TestPki::new();
    let config = mcpwatch_tests::tls::tls_config(&pki, "always = [\"mcp.intercepted.test\"]");
    let (target, sni) = ("mcp.intercepted.test:9443", "elsewhere.test");
    let env = proxy_with(DENY_DELETES, Some(config.clone()));
    let (mut s, head) = tunnel(&env, target);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let hello = mcpwatch_tests::tls::hello::client_hello(Some(sni.as_bytes()));
    let (a, b) = hello.split_at(hello.len() / 2);
    s.write_all(a).expect("write");
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b).expect("write");
    assert_closed(&mut s, &format!("TLS to {target} with SNI {sni}"));
    let recs = env.daemon.wait_audit("the refused TLS inside a tunnel", |r| r.iter().any(|r| matches!(&r.status, CallStatus::TransportError { reason } if reason.contains("inside a CONNECT tunnel"))));
    let reason = recs.iter().find_map(|r| match &r.status { CallStatus::TransportError { reason } if reason.contains("CONNECT") => Some(reason.clone()), _ => None }).expect("a reason");
    assert!(reason.contains(sni) && reason.contains("refused (enforce mode)"), "{reason}");
    assert!(!env.upstream_bytes().contains(sni), "the hello reached the proxy: {}", env.upstream_bytes());
    // ... and toward a host it does not intercept, TLS goes on as it is.
    let env = proxy_with(DENY_DELETES, Some(config));
    let (mut s, _) = tunnel(&env, "127.0.0.1:9443");
    s.write_all(&mcpwatch_tests::tls::hello::client_hello(Some(b"passes.test"))).expect("write");
    wait_upstream(&env, "passes.test");
}

/// An agent behind a forward proxy (`HTTPS_PROXY`) calling an HTTPS MCP server the `[tls]`
/// scope intercepts: the real Python SDK, through mcpwatchd on the proxy's port, to a real
/// CONNECT proxy in front of the real server. mcpwatch terminates the TLS inside the tunnel
/// (verifying the server through the tunnel first), so the calls are governed as on a direct
/// connection: the denied call is answered by mcpwatch and never reaches the server, the
/// allowed one is recorded as `https` with its TLS details. Before, TLS inside a tunnel could
/// only be relayed or refused.
#[test]
fn tls_inside_a_connect_tunnel_is_intercepted_and_governed() {
    use mcpwatch_tests::tls::{self, CertKind, TestPki};
    let pki = TestPki::new();
    let cert = pki.server_cert(CertKind::Valid, "localhost");
    let server = tls::https(peers::python_server().json_response().arg("--threat-tools"), &cert).spawn();
    let proxy = harness::ConnectProxy::start();
    let config = tls::tls_config(&pki, "always = [\"localhost\"]");
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(proxy.addr), policy: Some(DENY_DELETES.into()), config: Some(config), ..Default::default() });
    let url = tls::https_url("localhost", &server);
    let out = Client::python(&url)
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{}", daemon.port))
        .env("SSL_CERT_FILE", tls::daemon_ca(&daemon).display().to_string())
        .call("echo", json!({"text": "through the proxy"}))
        .call("delete_records", json!({"table": "orders"}))
        .try_run();
    let steps = out.steps();
    assert_eq!(steps.first().map(|s| &s["text"]), Some(&json!("through the proxy")), "{:?}\n{}", out.lines, out.stderr);
    assert_eq!(steps[1]["ok"], false, "the denied call went through: {}", steps[1]);
    assert!(proxy.targets().iter().any(|t| t == &format!("localhost:{}", server.addr().port())), "the calls went through the proxy: {:?}", proxy.targets());
    let calls = server.recorded_calls();
    assert!(calls.iter().all(|c| c["tool"] != "delete_records"), "the denied call reached the server: {calls:?}");
    assert!(calls.iter().any(|c| c["tool"] == "echo"), "{calls:?}");
    let recs = daemon.wait_audit("the calls through the tunnel", |r| r.iter().any(|r| r.name.as_deref() == Some("echo") && r.status == CallStatus::Ok) && r.iter().any(|r| r.name.as_deref() == Some("delete_records")));
    let echo = recs.iter().find(|r| r.name.as_deref() == Some("echo")).expect("echo");
    assert_eq!(echo.server, url, "{echo:#?}");
    assert_eq!(echo.scheme, "https");
    let tls_details = echo.tls.as_ref().expect("TLS details on the record");
    assert_eq!(tls_details.sni.as_deref(), Some("localhost"));
    assert!(tls_details.upstream_fingerprint.is_some(), "{tls_details:?}");
    let denied = recs.iter().find(|r| r.name.as_deref() == Some("delete_records")).expect("delete_records");
    assert!(denied.decision.as_ref().is_some_and(|d| d.rules.iter().any(|r| r == "no-deletes")), "{denied:#?}");

    // The agent starts again: MCP has been seen at the tunnel's destination, so it is
    // governed now, and its new tunnels still open (in enforce mode too) and are
    // intercepted as the first ones were.
    let again = Client::python(&url)
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{}", daemon.port))
        .env("SSL_CERT_FILE", tls::daemon_ca(&daemon).display().to_string())
        .call("echo", json!({"text": "after a restart"}))
        .try_run();
    assert_eq!(again.steps().first().map(|s| &s["text"]), Some(&json!("after a restart")), "{:?}\n{}", again.lines, again.stderr);
    daemon.wait_audit("the call of the second session", |r| r.iter().any(|r| r.name.as_deref() == Some("echo") && r.status == CallStatus::Ok && r.scheme == "https" && r.jsonrpc_id.is_some() && server.recorded_texts().iter().any(|t| t == "after a restart")));
}

/// Enforce mode with every detector redacting (the SSN and AWS key below are the
/// detector tests' samples).
const REDACT_ALL: &str = "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n[inspect.detectors]\ndefault_action = \"redact\"\n";
const SAMPLE_SSN: &str = "536-22-8741";
const SAMPLE_AWS_KEY: &str = "AKIAQYLPMN5HHHFPZAM2";
const MCP_HEADERS: &str = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: s-json\r\nMCP-Protocol-Version: 2025-06-18\r\n";

/// The JSON body of each HTTP request the raw upstream received.
fn upstream_bodies(env: &Lenient) -> Vec<Value> {
    env.upstream.seen().iter().filter_map(|s| {
        let text = String::from_utf8_lossy(&s.bytes).into_owned();
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }).collect()
}

/// The Python SDK `json.loads` a string argument whose parameter is not typed `str`
/// (`pre_parse_json`): `"[\"\\u0041KIA…\"]"` reaches the tool as `["AKIA…"]`. The
/// detectors read only the text, where `\u0041KIA…` is no key and `\u0035\u0033\u0036-…`
/// no SSN, so both went to the server unredacted. Now a string holding a JSON array or
/// object is inspected as the value it decodes to as well, and redacted there: the
/// server decodes the redacted value.
#[test]
fn a_secret_escaped_inside_a_json_string_argument_is_redacted() {
    let env = Lenient::start(REDACT_ALL, None, OK_REPLY);
    // Literal backslash escapes inside the string arguments' text.
    let paths = format!(r#"["\u0041{}", "/srv/ok"]"#, &SAMPLE_AWS_KEY[1..]);
    let filter = format!(r#"{{"owner": "\u0035\u0033\u0036{}"}}"#, &SAMPLE_SSN[3..]);
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "read_files", "arguments": {"paths": paths, "filter": filter}}});
    let resp = env.send(&request("POST", "/mcp", MCP_HEADERS, call.to_string().as_bytes()));
    assert_eq!(status(&resp), 200, "{resp}");
    let sent = env.upstream_bytes();
    assert!(!sent.contains(&SAMPLE_AWS_KEY[1..]) && !sent.contains(&SAMPLE_SSN[3..]), "the escaped values reached the server: {sent}");
    let body = upstream_bodies(&env).into_iter().find(|b| b["id"] == 3).unwrap_or_else(|| panic!("the call was not forwarded: {sent}"));
    let args = &body["params"]["arguments"];
    // What the server decodes each string to is the redacted value.
    let decode = |v: &Value| serde_json::from_str::<Value>(v.as_str().unwrap_or_else(|| panic!("still a string: {v}"))).expect("still JSON");
    assert_eq!(decode(&args["paths"]), json!(["<AWS_ACCESS_KEY>", "/srv/ok"]));
    assert_eq!(decode(&args["filter"]), json!({"owner": "<US_SSN>"}));
    let recs = env.daemon.wait_audit("the call's record", |r| r.iter().any(|r| r.name.as_deref() == Some("read_files") && r.status != CallStatus::Pending));
    let rec = recs.iter().find(|r| r.name.as_deref() == Some("read_files")).expect("record");
    for detector in ["secret.aws_access_key", "pii.us_ssn"] {
        assert!(rec.findings.iter().any(|f| f.detector == detector && f.direction == "request" && f.action == "redact"), "{detector}: {:?}", rec.findings);
    }
    let json = serde_json::to_string(rec).unwrap();
    assert!(!json.contains(&SAMPLE_AWS_KEY[1..]) && !json.contains(&SAMPLE_SSN[3..]), "the record holds counts and hashes, not values");
}

/// A client's answer to a server's request (elicitation, sampling, roots) goes to the
/// server as arguments do, but the detectors never ran on it: a server only had to ask
/// for the data. Now the answer is inspected as arguments are: redacted before the
/// server sees it (or replaced by an error when a detector blocks), the findings on the
/// server request's record; an answer to an id no watched request carried likewise.
#[test]
fn a_client_answer_to_a_server_request_is_redacted() {
    // The server asks on the stream of a call's answer.
    let ask = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"srv-1\",\"method\":\"elicitation/create\",\"params\":{\"message\":\"Your SSN?\",\"requestedSchema\":{\"type\":\"object\",\"properties\":{\"ssn\":{\"type\":\"string\"}}}}}\n\n";
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n{ask}");
    let env = Lenient::start(REDACT_ALL, None, reply.as_bytes());
    let echo = br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;
    let resp = env.send(&request("POST", "/mcp", MCP_HEADERS, echo));
    assert!(resp.contains("elicitation/create"), "the server's request reached the client: {resp}");
    let answer = json!({"jsonrpc": "2.0", "id": "srv-1", "result": {"action": "accept", "content": {"ssn": SAMPLE_SSN, "note": format!("mine is {SAMPLE_SSN}")}}});
    env.send(&request("POST", "/mcp", MCP_HEADERS, answer.to_string().as_bytes()));
    let sent = env.upstream_bytes();
    assert!(!sent.contains(SAMPLE_SSN), "the SSN reached the server: {sent}");
    let body = upstream_bodies(&env).into_iter().find(|b| b["id"] == "srv-1").unwrap_or_else(|| panic!("the answer was not forwarded: {sent}"));
    assert_eq!(body["result"]["content"], json!({"ssn": "<US_SSN>", "note": "mine is <US_SSN>"}), "{body}");
    let recs = env.daemon.wait_audit("the server request's record", |r| {
        r.iter().any(|r| r.method.as_deref() == Some("elicitation/create") && !r.findings.is_empty())
    });
    let rec = recs.iter().find(|r| r.method.as_deref() == Some("elicitation/create") && !r.findings.is_empty()).expect("record");
    assert!(rec.findings.iter().any(|f| f.detector == "pii.us_ssn" && f.direction == "response" && f.action == "redact" && f.count == 2), "{:?}", rec.findings);
    assert!(rec.notes.iter().any(|n| n.contains("client answer redacted")), "{:?}", rec.notes);
    assert!(!serde_json::to_string(rec).unwrap().contains(SAMPLE_SSN));

    // An answer to an id no watched request carried, and an error's message: the same.
    let env = Lenient::start(REDACT_ALL, None, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
    let stray = json!({"jsonrpc": "2.0", "id": "srv-99", "result": {"content": [{"type": "text", "text": format!("SSN {SAMPLE_SSN}")}]}});
    let error = json!({"jsonrpc": "2.0", "id": "srv-98", "error": {"code": -1, "message": format!("no, {SAMPLE_SSN} is private"), "data": {"ssn": SAMPLE_SSN}}});
    for answer in [&stray, &error] {
        assert_eq!(status(&env.send(&request("POST", "/mcp", MCP_HEADERS, answer.to_string().as_bytes()))), 202);
    }
    let sent = env.upstream_bytes();
    assert!(!sent.contains(SAMPLE_SSN), "the SSN reached the server: {sent}");
    let bodies = upstream_bodies(&env);
    assert!(bodies.iter().any(|b| b["result"]["content"][0]["text"] == "SSN <US_SSN>"), "{bodies:?}");
    assert!(bodies.iter().any(|b| b["error"]["message"] == "no, <US_SSN> is private" && b["error"]["data"]["ssn"] == "<US_SSN>" && b["error"]["code"] == -1), "{bodies:?}");
    let recs = env.daemon.wait_audit("the answers' records", |r| r.iter().filter(|r| r.findings.iter().any(|f| f.detector == "pii.us_ssn")).count() >= 2);
    let stray_rec = recs.iter().find(|r| r.jsonrpc_id.as_deref() == Some("\"srv-99\"")).expect("the stray answer's record");
    assert!(stray_rec.alerts.iter().any(|a| a.contains("no watched server request")), "{stray_rec:#?}");

    // A detector that blocks: the server gets an error for its request, not the data.
    let block = format!("{REDACT_ALL}actions = {{ \"pii.us_ssn\" = \"block\" }}\n");
    let env = Lenient::start(&block, None, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status(&env.send(&request("POST", "/mcp", MCP_HEADERS, stray.to_string().as_bytes()))), 202);
    let sent = env.upstream_bytes();
    assert!(!sent.contains(SAMPLE_SSN) && !sent.contains("<US_SSN>"), "{sent}");
    let body = upstream_bodies(&env).into_iter().find(|b| b["id"] == "srv-99").unwrap_or_else(|| panic!("the server's request got no answer: {sent}"));
    assert_eq!(body["error"]["code"], -32004, "{body}");
    assert!(body.get("result").is_none(), "{body}");
}

/// The stdio gate (`mcpwatch wrap`) relays a client's answers to the server's requests
/// too: inspected there the same way, the rewritten line in the gate's verdict.
#[test]
fn the_gate_redacts_client_answers_too() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some("127.0.0.1:9".parse().unwrap()), policy: Some(REDACT_ALL.into()), ..Default::default() });
    let mut s = UnixStream::connect(daemon.socket.with_file_name("gate.sock")).expect("connect to the gate socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut ask = |line: Value| {
        s.write_all(format!("{line}\n").as_bytes()).expect("write");
        let mut answer = String::new();
        r.read_line(&mut answer).expect("a verdict");
        serde_json::from_str::<Value>(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
    };
    assert_eq!(ask(json!({"seq": 1, "op": "open", "command": ["answers-server"]}))["verdict"], "opened");
    let sampling = json!({"jsonrpc": "2.0", "id": "s1", "method": "sampling/createMessage", "params": {"messages": [], "maxTokens": 5}});
    assert_eq!(ask(json!({"seq": 2, "op": "server", "line": sampling.to_string()}))["verdict"], "forward");
    let answer = json!({"jsonrpc": "2.0", "id": "s1", "result": {"role": "assistant", "content": {"type": "text", "text": format!("SSN {SAMPLE_SSN}")}, "model": "m"}});
    let verdict = ask(json!({"seq": 3, "op": "client", "line": answer.to_string()}));
    assert_eq!(verdict["verdict"], "forward", "{verdict}");
    let line = verdict["line"].as_str().unwrap_or_else(|| panic!("the answer was not rewritten: {verdict}"));
    assert!(!line.contains(SAMPLE_SSN), "{line}");
    let sent: Value = serde_json::from_str(line).expect("a JSON-RPC line");
    assert_eq!(sent["result"]["content"]["text"], "SSN <US_SSN>", "{sent}");
    let recs = daemon.wait_audit("the sampling record", |r| r.iter().any(|x| x.method.as_deref() == Some("sampling/createMessage") && x.status == CallStatus::Ok));
    let rec = recs.iter().find(|x| x.method.as_deref() == Some("sampling/createMessage")).unwrap();
    assert!(rec.findings.iter().any(|f| f.detector == "pii.us_ssn" && f.direction == "response" && f.action == "redact"), "{rec:#?}");
}
