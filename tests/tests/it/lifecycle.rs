//! Connections end when either side ends: a client that goes away while a response streams
//! (an SSE GET stream, an SSE POST answer) must not leave the daemon holding its socket in
//! CLOSE-WAIT, nor the upstream connection (and with it the server's stream and session).
//!
//! Real SDK server (TypeScript, sessions and GET streams), real eBPF path; the clients are
//! raw sockets in the watched cgroup so the test decides exactly when they vanish (the
//! client process is killed by its PID). The daemon's sockets are read from
//! `/proc/<pid>/fd` joined to `/proc/<pid>/net/tcp{,6}`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcpwatch_tests::harness::{TCP_CLOSE_WAIT, TcpSock, Watched, tcp_sockets};
use mcpwatch_tests::peers;


/// A raw-socket client in the cgroup: initializes sessions, opens GET SSE streams and a POST
/// whose SSE answer it abandons, prints `ready` and then waits to be killed.
const CLIENT: &str = r#"
import json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
def req(method, body=None, headers=None, read_all=False):
    s = socket.create_connection((host, port))
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} /mcp HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json, text/event-stream\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    s.sendall(head.encode() + b"\r\n" + data)
    buf = b""
    s.settimeout(20)
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    head = buf.split(b"\r\n\r\n")[0].decode(errors="replace")
    return s, head
def session():
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "lifecycle", "version": "1"}}}
    s, head = req("POST", init)
    assert " 200 " in head.split("\r\n")[0], head
    sid = [l.split(":", 1)[1].strip() for l in head.split("\r\n") if l.lower().startswith("mcp-session-id:")][0]
    hdrs = {"mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
    n, nhead = req("POST", {"jsonrpc": "2.0", "method": "notifications/initialized"}, hdrs)
    assert " 202 " in nhead.split("\r\n")[0], nhead
    n.close()
    return s, hdrs
held = []
for i in range(3):
    s, hdrs = session()
    held.append(s)  # the initialize POST's SSE answer, never read to its end
    g, ghead = req("GET", None, hdrs)
    assert " 200 " in ghead.split("\r\n")[0] and "text/event-stream" in ghead.lower(), ghead
    held.append(g)
print("ready", flush=True)
time.sleep(600)
"#;

#[test]
fn abandoned_sse_streams_close_both_sides() {
    let server = peers::node_server().ip([127, 0, 0, 2].into()).spawn();
    let port = server.addr().port();
    let Some(w) = Watched::start("abandoned_sse_streams_close_both_sides", &port.to_string()) else { return };
    let pid = w.daemon.pid();

    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(CLIENT).arg(server.addr().ip().to_string()).arg(port.to_string());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    peers::move_into_cgroup(&mut cmd, w.cgroup());
    let mut child = cmd.spawn().expect("spawn client");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read client");
    if line.trim() != "ready" {
        let _ = child.kill();
        let out = child.wait_with_output().expect("client output");
        panic!("client did not get its streams: {line:?}\n{}", String::from_utf8_lossy(&out.stderr));
    }

    // The streams go through the daemon: it holds upstream connections for them.
    let upstream = |socks: &[TcpSock]| socks.iter().filter(|s| s.remote_port == port).count();
    let before = tcp_sockets(pid);
    assert!(upstream(&before) >= 3, "the daemon relays the GET streams: {before:?}");

    // The client vanishes (its sockets close with it).
    let _ = child.kill();
    let _ = child.wait();

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last;
    loop {
        last = tcp_sockets(pid);
        let close_wait = last.iter().filter(|s| s.state == TCP_CLOSE_WAIT).count();
        if close_wait == 0 && upstream(&last) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "20 s after the client left, the daemon still holds {close_wait} sockets in CLOSE-WAIT and {} upstream connections: {last:?}",
            upstream(&last)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
