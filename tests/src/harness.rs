//! Test environments: a watched cgroup with a real daemon attached to it, raw TCP peers
//! that record what they receive, and small clients run inside the cgroup.
//!
//! eBPF tests need root and a cgroup2 mount; where either is missing,
//! [`Watched::start`] prints why and returns `None` so the test returns early. Any
//! other failure (verifier, attach) fails the test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpwatch_intercept::cgroup::TestCgroup;
use serde_json::Value;

use crate::daemon::{Daemon, DaemonOpts};

/// Why eBPF tests cannot run here, if they cannot.
pub fn ebpf_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root (eBPF attach needs CAP_BPF/CAP_NET_ADMIN)".into());
    }
    if let Err(e) = mcpwatch_intercept::cgroup::cgroup2_mount() {
        return Some(format!("no cgroup2 mount: {e}"));
    }
    None
}

/// A child cgroup with `mcpwatchd` attached to it.
pub struct Watched {
    // Field order: the daemon stops (links detach) before the cgroup is removed.
    pub daemon: Daemon,
    pub cg: TestCgroup,
}

impl Watched {
    /// Start a daemon intercepting `ports` for processes in a fresh child cgroup.
    pub fn start(test: &str, ports: &str) -> Option<Watched> {
        Self::start_with(test, DaemonOpts { ports: Some(ports.to_string()), ..Default::default() })
    }

    pub fn start_with(test: &str, mut opts: DaemonOpts) -> Option<Watched> {
        if let Some(why) = ebpf_unavailable() {
            eprintln!("SKIP {test}: {why}");
            return None;
        }
        let cg = TestCgroup::unique("mcpwatch-it").unwrap_or_else(|e| panic!("creating test cgroup: {e}"));
        opts.cgroup = Some(cg.path().to_path_buf());
        let daemon = Daemon::start(opts);
        Some(Watched { daemon, cg })
    }

    pub fn cgroup(&self) -> &Path {
        self.cg.path()
    }
}

/// What a [`RawServer`] saw on one connection.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub bytes: Vec<u8>,
    pub peer: Option<SocketAddr>,
}

/// A TCP server that records every byte it receives. Behaviour per connection:
/// optionally send a banner first (server-speaks-first), then either echo or answer a
/// fixed reply once `reply_after` bytes arrived.
pub struct RawServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

#[derive(Clone, Default)]
pub struct RawBehaviour {
    pub banner: Option<Vec<u8>>,
    pub echo: bool,
    /// Send this reply after the request's end is detected (HTTP: blank line +
    /// Content-Length), then close.
    pub http_reply: Option<Vec<u8>>,
    /// After `http_reply`, keep the connection and record what follows (a `101`).
    pub stay_open: bool,
}

impl RawServer {
    pub fn start(bind: &str, behaviour: RawBehaviour) -> RawServer {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { return };
                let seen = seen2.clone();
                let b = behaviour.clone();
                std::thread::spawn(move || {
                    let idx = {
                        let mut v = seen.lock().expect("lock");
                        v.push(Seen { bytes: Vec::new(), peer: s.peer_addr().ok() });
                        v.len() - 1
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                    if let Some(banner) = &b.banner {
                        let _ = s.write_all(banner);
                    }
                    let mut buf = [0u8; 65536];
                    let mut replied = false;
                    loop {
                        let n = match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let all = {
                            let mut v = seen.lock().expect("lock");
                            v[idx].bytes.extend_from_slice(&buf[..n]);
                            v[idx].bytes.clone()
                        };
                        if b.echo {
                            let _ = s.write_all(&buf[..n]);
                        }
                        if let Some(reply) = &b.http_reply
                            && !(b.stay_open && replied) && http_request_complete(&all)
                        {
                            let _ = s.write_all(reply);
                            if b.stay_open {
                                replied = true;
                                continue;
                            }
                            let _ = s.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                    }
                });
            }
        });
        RawServer { addr, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// A forward proxy on loopback that answers `CONNECT host:port` (what an agent with
/// `HTTPS_PROXY` set sends) by connecting there and relaying both ways: the proxy an agent
/// behind a corporate proxy talks to. `targets` records every `CONNECT` it served.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    pub targets: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    pub fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("addr");
        let targets = Arc::new(Mutex::new(Vec::new()));
        let seen = targets.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { return };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let _ = client.set_read_timeout(Some(Duration::from_secs(20)));
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match client.read(&mut b) {
                            Ok(1) if head.len() < 8192 => head.push(b[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let Some(target) = head.strip_prefix("CONNECT ").and_then(|r| r.split_whitespace().next()).map(str::to_string) else {
                        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
                        return;
                    };
                    seen.lock().expect("lock").push(target.clone());
                    let Ok(upstream) = TcpStream::connect(target.as_str()) else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
                        return;
                    };
                    if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").is_err() {
                        return;
                    }
                    let _ = client.set_read_timeout(None);
                    let (mut c2, mut u2) = (client.try_clone().expect("clone"), upstream.try_clone().expect("clone"));
                    let (mut c1, mut u1) = (client, upstream);
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c1, &mut u1);
                        let _ = u1.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut u2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
        ConnectProxy { addr, targets }
    }

    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().expect("lock").clone()
    }
}

/// A full HTTP/1.1 request with a Content-Length body (or none) has arrived.
pub fn http_request_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
        .unwrap_or(0);
    buf.len() >= end + 4 + len
}

/// Run a Python snippet (system python3) inside `cgroup` (if any); it must print one
/// JSON object as its last stdout line, which is returned.
pub fn py(cgroup: Option<&Path>, script: &str) -> Value {
    py_stdin(cgroup, script, b"")
}

/// [`py`] with `input` on the snippet's stdin (for payloads too large for argv).
pub fn py_stdin(cgroup: Option<&Path>, script: &str, input: &[u8]) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(cg) = cgroup {
        crate::peers::move_into_cgroup(&mut cmd, cg);
    }
    let mut child = cmd.spawn().expect("run python3");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("python3 output");
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("python snippet output not JSON ({e}): {stdout}\n--- stderr ---\n{}", String::from_utf8_lossy(&out.stderr))
    })
}

/// Hex of bytes, for carrying binary through a JSON line.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decode [`hex`].
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()).collect()
}

/// Send `bytes` over a plain TCP connection from this process and read until EOF.
pub fn tcp_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Send a raw HTTP request and read the response: until its Content-Length is met, the
/// last chunk of a chunked body, or the peer closing (`timeout` per read). A server may
/// answer (413) and close before a huge body is fully written; that is not an error.
pub fn http_roundtrip(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(timeout)).expect("timeout");
    if let Err(e) = s.write_all(bytes) {
        assert!(matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset), "write: {e}");
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if http_response_complete(&out) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A whole response: Content-Length satisfied, or the last chunk of a chunked body.
/// A response with neither ends when the peer closes.
pub fn http_response_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        return buf.ends_with(b"0\r\n\r\n");
    }
    head.contains("content-length:") && http_request_complete(buf)
}

/// One TCP socket a process holds an fd for: its remote port and kernel state
/// (`/proc/net/tcp` numbering: 0x01 ESTABLISHED, 0x08 CLOSE-WAIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSock {
    pub remote_port: u16,
    pub state: u8,
}

pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_CLOSE_WAIT: u8 = 0x08;

/// The TCP sockets `pid` holds open, from `/proc/<pid>/net/tcp{,6}` joined to its fds.
pub fn tcp_sockets(pid: u32) -> Vec<TcpSock> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            if let Ok(target) = std::fs::read_link(e.path()) {
                let t = target.to_string_lossy();
                if let Some(ino) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(ino.to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || !inodes.contains(f[9]) {
                continue;
            }
            let remote_port = f[2].rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok()).unwrap_or(0);
            let state = u8::from_str_radix(f[3], 16).unwrap_or(0);
            out.push(TcpSock { remote_port, state });
        }
    }
    out
}

/// A network namespace joined to this one by a veth pair: a destination off loopback
/// for tests that need a "remote" server, while every byte stays on this machine.
/// Addresses come from 198.18.0.0/15 (RFC 2544, benchmarking), one /30 per namespace:
/// the host side is `.1`, the namespace side `.2`. Removed (link and namespace) on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    link: String,
    pub host_ip: std::net::Ipv4Addr,
    pub ns_ip: std::net::Ipv4Addr,
}

impl Netns {
    /// Creates the namespace, or says why it cannot be made here (not root, no `ip`).
    pub fn create() -> Result<Netns, String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        if !nix::unistd::geteuid().is_root() {
            return Err("not running as root (creating a network namespace needs CAP_NET_ADMIN)".into());
        }
        // One /30 of the 32768 in 198.18.0.0/15, from the pid and a counter.
        let n = (std::process::id().wrapping_mul(8).wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))) % 32768;
        let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + n * 4;
        let ns = Netns {
            name: format!("mcpwit{n}"),
            link: format!("mcpwv{n}"),
            host_ip: std::net::Ipv4Addr::from(base + 1),
            ns_ip: std::net::Ipv4Addr::from(base + 2),
        };
        let peer = format!("{}p", ns.link);
        let (host_cidr, ns_cidr) = (format!("{}/30", ns.host_ip), format!("{}/30", ns.ns_ip));
        let steps: [&[&str]; 8] = [
            &["netns", "add", &ns.name],
            &["link", "add", &ns.link, "type", "veth", "peer", "name", &peer],
            &["link", "set", &peer, "netns", &ns.name],
            &["addr", "add", &host_cidr, "dev", &ns.link],
            &["link", "set", &ns.link, "up"],
            &["-n", &ns.name, "addr", "add", &ns_cidr, "dev", &peer],
            &["-n", &ns.name, "link", "set", &peer, "up"],
            &["-n", &ns.name, "link", "set", "lo", "up"],
        ];
        for args in steps {
            let out = Command::new("ip").args(args).output().map_err(|e| format!("running `ip`: {e}"))?;
            if !out.status.success() {
                // `ns` drops here and removes what was made.
                return Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        Ok(ns)
    }

    /// `program` run inside the namespace (`ip netns exec` execs it: the pid is the
    /// program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.link]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}
