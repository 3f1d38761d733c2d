//! Audit durability under load: SIGKILL the daemon while several clients are calling a
//! real server through it; every call a client got an answer for has its record after
//! the restart, and the hash chain still verifies.
//!
//! Static-upstream mode (the same proxy and store code, no eBPF), so it runs without
//! root. The count is bounded (at most `MAX_CALLS` answered per client) and so is the
//! time (`LOAD_SECS`); nothing here measures speed.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcpwatch_tests::daemon::{Daemon, DaemonOpts};
use mcpwatch_tests::peers;

const CLIENTS: usize = 4;
const MAX_CALLS: usize = 5_000;
const LOAD_SECS: u64 = 20;
/// Kill once this many calls were answered in all.
const KILL_AFTER: usize = 2_000;

fn call(id: &str, host: SocketAddr) -> Vec<u8> {
    let body = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":\"{id}\",\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\
         \"arguments\":{{\"text\":\"{id}\"}},\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\",\
         \"io.modelcontextprotocol/clientInfo\":{{\"name\":\"durability\",\"version\":\"0\"}},\
         \"io.modelcontextprotocol/clientCapabilities\":{{}}}}}}}}"
    );
    let mut v = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: echo\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body.as_bytes());
    v
}

/// One HTTP/1.1 response (Content-Length or chunked) off a kept-alive connection.
fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (mut len, mut chunked) = (0usize, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).map_err(std::io::Error::other)?;
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    }
    Ok((status, body))
}

#[test]
fn sigkill_under_load_loses_no_record_of_an_answered_call() {
    let server = peers::rmcp_server().spawn();
    let mut daemon = Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), ..Default::default() });
    let state = daemon.state_dir.clone();
    let _keep = daemon.keep_state();
    let proxy = SocketAddr::from(([127, 0, 0, 1], daemon.port));

    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let total = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(LOAD_SECS);
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (answered, total, stop, host) = (answered.clone(), total.clone(), stop.clone(), server.addr());
            std::thread::spawn(move || {
                let Ok(s) = TcpStream::connect(proxy) else { return };
                s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
                let mut w = s.try_clone().expect("clone");
                let mut r = BufReader::new(s);
                for n in 0..MAX_CALLS {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        return;
                    }
                    let id = format!("c{c}-{n}");
                    if w.write_all(&call(&id, host)).is_err() {
                        return;
                    }
                    // The daemon dies mid-call: that call was not answered.
                    let Ok((status, body)) = read_response(&mut r) else { return };
                    let text = String::from_utf8_lossy(&body);
                    assert_eq!(status, 200, "{text}");
                    assert!(text.contains("\"result\"") && text.contains(&id), "{text}");
                    answered.lock().expect("lock").push(id);
                    total.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    while total.load(Ordering::Relaxed) < KILL_AFTER && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Mid-load, with requests in flight on every connection.
    daemon.kill();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("client thread");
    }
    let answered = answered.lock().expect("lock").clone();
    assert!(answered.len() >= KILL_AFTER.min(1_000), "only {} calls answered before the kill", answered.len());

    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), state_dir: Some(state), ..Default::default() });
    let recorded: HashSet<String> = daemon
        .audit()
        .into_iter()
        .filter(|r| r.method.as_deref() == Some("tools/call"))
        .filter_map(|r| r.jsonrpc_id)
        .map(|id| id.trim_matches('"').to_string())
        .collect();
    let missing: Vec<_> = answered.iter().filter(|id| !recorded.contains(*id)).collect();
    assert!(missing.is_empty(), "{} of {} answered calls have no record after SIGKILL, e.g. {:?}", missing.len(), answered.len(), &missing[..missing.len().min(5)]);

    let v = daemon.cli(&["audit", "verify"]);
    assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
}
