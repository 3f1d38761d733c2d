//! Upstream keep-alive (`proxy::pool`), real eBPF path: a process that opens a new
//! connection per call reuses one upstream connection; another process never gets it; an
//! idle kept connection the server closes, or one kept past `limits.upstream_keepalive_ms`,
//! is closed by the daemon (nothing left in CLOSE-WAIT) and the next call dials afresh.
//!
//! The server is a small keep-alive HTTP/1.1 server in this process that numbers its
//! connections and says, in each answer, which connection carried the request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcpwatch_tests::daemon::DaemonOpts;
use mcpwatch_tests::harness::{self, TCP_CLOSE_WAIT, Watched, tcp_sockets};
use serde_json::Value;

/// Keep-alive HTTP server: answers every request on a connection with
/// `{"jsonrpc":"2.0","id":<id>,"result":{"conn":<n>}}`; closes a connection idle for
/// `close_idle_after` (if any).
struct KeepAliveServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Per request: (connection number, `Connection` header the server received).
    requests: Arc<Mutex<Vec<(usize, Option<String>)>>>,
}

impl KeepAliveServer {
    fn start(ip: &str, close_idle_after: Option<Duration>) -> KeepAliveServer {
        let listener = TcpListener::bind(format!("{ip}:0")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (acc, reqs) = (accepted.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { return };
                let n = acc.fetch_add(1, Ordering::SeqCst) + 1;
                let reqs = reqs.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(close_idle_after.unwrap_or(Duration::from_secs(30))));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 65536];
                    loop {
                        let got = match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => k,
                        };
                        buf.extend_from_slice(&chunk[..got]);
                        while harness::http_request_complete(&buf) {
                            let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
                            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                            let header = |name: &str| {
                                head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string()))
                            };
                            let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                            let body: Value = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
                            reqs.lock().expect("lock").push((n, header("connection")));
                            buf.drain(..head_end + len);
                            let answer = serde_json::json!({"jsonrpc": "2.0", "id": body["id"], "result": {"conn": n}}).to_string();
                            let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}", answer.len());
                            if s.write_all(resp.as_bytes()).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        KeepAliveServer { addr, accepted, requests }
    }
}

/// `calls` MCP `tools/call`s from one Python process in the cgroup, each on a new
/// connection that asks `Connection: close`, `pause_ms` apart; prints the connection
/// number each answer names.
fn client(w: &Watched, addr: SocketAddr, calls: usize, pause_ms: u64) -> Vec<u64> {
    let script = format!(
        r#"
import json, socket, time
out = []
for i in range({calls}):
    s = socket.create_connection(("{ip}", {port}))
    body = json.dumps({{"jsonrpc": "2.0", "id": i + 1, "method": "tools/call", "params": {{"name": "echo", "arguments": {{"text": "hi"}}}}}}).encode()
    s.sendall(b"POST /mcp HTTP/1.1\r\nHost: {ip}:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    s.settimeout(20)
    buf = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        buf += c
    s.close()
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], buf
    if b"chunked" in head.lower():
        body = b""
        while True:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            body, rest = body + rest[:n], rest[n + 2:]
        rest = body
    out.append(json.loads(rest)["result"]["conn"])
    time.sleep({pause_ms} / 1000)
print(json.dumps(out))
"#,
        ip = addr.ip(),
        port = addr.port(),
    );
    let v = harness::py(Some(w.cgroup()), &script);
    v.as_array().expect("list").iter().map(|x| x.as_u64().expect("conn number")).collect()
}

fn upstream_sockets(w: &Watched, server: SocketAddr) -> Vec<harness::TcpSock> {
    tcp_sockets(w.daemon.pid()).into_iter().filter(|s| s.remote_port == server.port()).collect()
}

/// Waits until the daemon holds no socket to `server` (and none in CLOSE-WAIT).
fn wait_no_upstream(w: &Watched, server: SocketAddr, within: Duration, why: &str) {
    let deadline = Instant::now() + within;
    loop {
        let socks = upstream_sockets(w, server);
        if socks.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{why}: the daemon still holds {socks:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn new_connections_of_one_process_reuse_one_upstream_connection_and_others_never_do() {
    let server = KeepAliveServer::start("127.0.0.2", None);
    let opts = DaemonOpts { ports: Some(server.addr.port().to_string()), config: Some("[limits]\nupstream_keepalive_ms = 1500\n".into()), ..Default::default() };
    let Some(w) = Watched::start_with("new_connections_of_one_process_reuse_one_upstream_connection", opts) else { return };

    // Five calls, five client connections, each asking Connection: close.
    let conns = client(&w, server.addr, 5, 20);
    assert_eq!(conns.len(), 5);
    let distinct: std::collections::BTreeSet<_> = conns.iter().collect();
    assert!(distinct.len() <= 2, "five connections of one process should share the kept upstream connection: {conns:?}");
    assert!(server.accepted.load(Ordering::SeqCst) <= 2, "server accepted {}", server.accepted.load(Ordering::SeqCst));
    // Connection: close stayed with the client's own connection.
    let reqs = server.requests.lock().expect("lock").clone();
    assert!(reqs.iter().all(|(_, c)| c.is_none()), "{reqs:?}");
    let st = w.daemon.status();
    assert!(st.counts.upstream_reused >= 3, "{:?}", st.counts);
    // Every call was governed and audited as before.
    let recs = w.daemon.wait_audit("five calls", |r| r.iter().filter(|r| r.method.as_deref() == Some("tools/call") && r.status == mcpwatch_api::CallStatus::Ok).count() >= 5);
    assert!(recs.iter().filter(|r| r.method.as_deref() == Some("tools/call")).all(|r| r.process.is_some()));

    // Another process: its first call never lands on the first process's connection.
    let kept: std::collections::BTreeSet<u64> = conns.iter().copied().collect();
    let other = client(&w, server.addr, 1, 0);
    assert!(!kept.contains(&other[0]), "another process got connection {} of {conns:?}", other[0]);

    // Past upstream_keepalive_ms the kept connections are closed.
    wait_no_upstream(&w, server.addr, Duration::from_secs(8), "1.5 s after the last call");
}

#[test]
fn a_kept_connection_the_server_closes_is_dropped_and_the_next_call_dials_again() {
    // The server closes connections idle for 300 ms; the daemon keeps them 10 s.
    let server = KeepAliveServer::start("127.0.0.2", Some(Duration::from_millis(300)));
    let opts = DaemonOpts { ports: Some(server.addr.port().to_string()), config: Some("[limits]\nupstream_keepalive_ms = 10000\n".into()), ..Default::default() };
    let Some(w) = Watched::start_with("a_kept_connection_the_server_closes_is_dropped", opts) else { return };
    let first = client(&w, server.addr, 1, 0);
    // The server closes the kept connection: the daemon closes its side (no CLOSE-WAIT).
    std::thread::sleep(Duration::from_millis(600));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let socks = upstream_sockets(&w, server.addr);
        if socks.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon still holds {socks:?} (CLOSE-WAIT: {})", socks.iter().any(|s| s.state == TCP_CLOSE_WAIT));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The next call works, over a new connection.
    let second = client(&w, server.addr, 1, 0);
    assert_ne!(first, second, "a closed connection was not reused");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}
