//! End-to-end tests of the eBPF programs on the running kernel (we run as root).
//!
//! Each test makes its own child cgroup (never the root), its own "daemon"
//! listener (127.0.0.1:P and [::1]:P) and "real server" listener on loopback,
//! attaches an [`Interceptor`] to that cgroup and runs a small python3 client
//! inside it. The client prints what getpeername() returned, sends a line and
//! waits for a one-line reply, so we see where the connection really went.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::cgroup::TestCgroup;
use crate::{AgentScope, InterceptConfig, InterceptError, Interceptor, PortScope};

const MARK: u32 = 0x4d43;
const DEADLINE: Duration = Duration::from_secs(30);

/// The real python3 binary (not a pyenv shim), so the child's pid is python's.
fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is required by the intercept tests");
        assert!(out.status.success(), "python3 failed: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// connect(), print getpeername(), send a line, print the reply line; `count` times.
const CLIENT: &str = r#"
import socket, sys, os
fam = socket.AF_INET6 if sys.argv[1] == '6' else socket.AF_INET
host, port, mark, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if sys.argv[6] == 'wait':
    sys.stdin.readline()
for i in range(count):
    s = socket.socket(fam, socket.SOCK_STREAM)
    if mark:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    s.connect((host, port))
    p = s.getpeername()
    print("peer", p[0], p[1], flush=True)
    s.sendall(b"hello %d %d\n" % (os.getpid(), i))
    print("reply", s.makefile('rb').readline().decode().strip(), flush=True)
    s.close()
"#;

/// A child process killed (by pid, our own) if the test fails before reaping it.
struct Client(Option<Child>);

impl Client {
    fn spawn(
        cg: Option<&TestCgroup>,
        family: u8,
        host: &str,
        port: u16,
        mark: u32,
        count: u32,
    ) -> Client {
        Self::spawn_with(cg, (family, host, port, mark), count, false)
    }

    /// With `wait`, the client connects only after [`Client::go`].
    fn spawn_with(
        cg: Option<&TestCgroup>,
        (family, host, port, mark): (u8, &str, u16, u32),
        count: u32,
        wait: bool,
    ) -> Client {
        let mut cmd = Command::new(python());
        let wait = if wait { "wait" } else { "now" };
        cmd.args([
            "-c",
            CLIENT,
            &family.to_string(),
            host,
            &port.to_string(),
            &mark.to_string(),
            &count.to_string(),
            wait,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(cg) = cg {
            // SAFETY: the hook only performs async-signal-safe syscalls.
            unsafe { cmd.pre_exec(cg.pre_exec_hook()) };
        }
        Client(Some(cmd.spawn().expect("spawn python3 client")))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap()
    }

    fn go(&mut self) {
        let stdin = self.0.as_mut().and_then(|c| c.stdin.as_mut()).unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    fn exited(&mut self) -> bool {
        self.0
            .as_mut()
            .map(|c| c.try_wait().unwrap().is_some())
            .unwrap_or(true)
    }

    /// Waits for the client and returns its stdout lines; panics with stderr on failure.
    fn finish(mut self) -> Vec<String> {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "client failed: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.lines().map(str::to_string).collect()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The "daemon": listeners on 127.0.0.1:P and [::1]:P.
struct Daemon {
    v4: TcpListener,
    v6: TcpListener,
}

impl Daemon {
    fn bind() -> Daemon {
        for _ in 0..50 {
            let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let port = v4.local_addr().unwrap().port();
            if let Ok(v6) = TcpListener::bind((Ipv6Addr::LOCALHOST, port)) {
                return Daemon { v4, v6 };
            }
        }
        panic!("could not find a port free on both 127.0.0.1 and ::1");
    }

    fn port(&self) -> u16 {
        self.v4.local_addr().unwrap().port()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Daemon,
    Server,
}

/// Accepts the client's next connection on whichever listener gets it.
/// Without a client, the connection must already be queued.
fn accept(
    daemon: &Daemon,
    server: &TcpListener,
    mut client: Option<&mut Client>,
) -> (Side, TcpStream, SocketAddr) {
    let listeners = [
        (Side::Daemon, &daemon.v4),
        (Side::Daemon, &daemon.v6),
        (Side::Server, server),
    ];
    for (_, l) in &listeners {
        l.set_nonblocking(true).unwrap();
    }
    let start = Instant::now();
    loop {
        for (side, l) in &listeners {
            match l.accept() {
                Ok((s, peer)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(DEADLINE)).unwrap();
                    return (*side, s, peer);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
        }
        match client.as_deref_mut() {
            Some(c) => {
                if c.exited() {
                    let lines = Client(c.0.take()).finish();
                    panic!("client exited without connecting: {lines:?}");
                }
            }
            None => panic!("no connection was queued"),
        }
        assert!(start.elapsed() < DEADLINE, "no connection arrived");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One exchange on an accepted connection: read the client's line, optionally
/// look the peer up while the connection is open, reply.
fn serve(
    ic: Option<&Interceptor>,
    (side, stream, peer): (Side, TcpStream, SocketAddr),
) -> (Side, SocketAddr, Option<crate::Origin>, String) {
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    let origin = ic.and_then(|ic| ic.lookup(peer));
    (&stream).write_all(b"ok\n").unwrap();
    (side, peer, origin, line.trim().to_string())
}

fn config(cg: &TestCgroup, daemon: &Daemon, ports: PortScope) -> InterceptConfig {
    InterceptConfig {
        cgroup: cg.path().to_path_buf(),
        listen_port: daemon.port(),
        ports,
        mark: MARK,
        daemon_tgid: std::process::id(),
        pin_dir: None,
        agents: AgentScope::default(),
        refuse_udp: true,
        dns_servers: Vec::new(),
    }
}

fn only(port: u16) -> PortScope {
    PortScope::Ranges(vec![port..=port])
}

fn cgroup_id(cg: &TestCgroup) -> u64 {
    std::fs::metadata(cg.path()).unwrap().ino()
}

fn poll_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs one client connection to (host, port) and returns what the daemon or
/// server saw plus the client's printed lines.
struct Run {
    side: Side,
    peer: SocketAddr,
    origin: Option<crate::Origin>,
    line: String,
    printed: Vec<String>,
    pid: u32,
    proc_comm: String,
}

fn run_one(
    ic: Option<&Interceptor>,
    cg: Option<&TestCgroup>,
    daemon: &Daemon,
    server: &TcpListener,
    (family, host, port, mark): (u8, &str, u16, u32),
) -> Run {
    let mut client = Client::spawn(cg, family, host, port, mark, 1);
    let pid = client.pid();
    let conn = accept(daemon, server, Some(&mut client));
    // The client is blocked waiting for our reply: its /proc entry is current.
    let proc_comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim()
        .to_string();
    let (side, peer, origin, line) = serve(ic, conn);
    let printed = client.finish();
    Run {
        side,
        peer,
        origin,
        line,
        printed,
        pid,
        proc_comm,
    }
}

#[test]
fn ipv4_connect_is_redirected_and_resolvable() {
    let cg = TestCgroup::unique("mcpwatch-test-v4").unwrap();
    let daemon = Daemon::bind();
    let server = TcpListener::bind("127.0.0.3:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    let ic = Interceptor::attach(&config(&cg, &daemon, only(sport))).unwrap();
    assert_eq!(ic.cgroup(), cg.path().canonicalize().unwrap());

    let r = run_one(
        Some(&ic),
        Some(&cg),
        &daemon,
        &server,
        (4, "127.0.0.3", sport, 0),
    );
    assert_eq!(r.side, Side::Daemon, "connection went to the real server");
    assert_eq!(r.line, format!("hello {} 0", r.pid));
    assert_eq!(r.peer.ip(), Ipv4Addr::LOCALHOST);
    assert_eq!(
        r.printed,
        vec![format!("peer 127.0.0.3 {sport}"), "reply ok".to_string()]
    );

    let o = r.origin.expect("lookup(peer) found the connection");
    assert_eq!(o.dst, SocketAddr::from(([127, 0, 0, 3], sport)));
    assert_eq!((o.pid, o.tgid), (r.pid, r.pid));
    assert_eq!(
        (o.uid, o.gid),
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw()
        )
    );
    assert!(o.comm.starts_with("python"), "{}", o.comm);
    assert_eq!(o.comm, r.proc_comm);
    assert_eq!(o.cgroup_id, cgroup_id(&cg));
    assert_eq!(ic.exec_comm(r.pid).as_deref(), Some(r.proc_comm.as_str()));
    assert_eq!(ic.exec_ppid(r.pid), Some(std::process::id()));

    // The process has exited: describe() falls back to what eBPF captured.
    let info = crate::process::describe(&o, ic.exec_comm(r.pid));
    assert_eq!(
        (info.tgid, info.comm.as_str(), info.cgroup_id),
        (r.pid, r.proc_comm.as_str(), o.cgroup_id)
    );
}

#[test]
fn ipv6_connect_is_redirected_and_resolvable() {
    let cg = TestCgroup::unique("mcpwatch-test-v6").unwrap();
    let daemon = Daemon::bind();
    let server = TcpListener::bind("[::1]:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    let ic = Interceptor::attach(&config(&cg, &daemon, only(sport))).unwrap();

    let r = run_one(Some(&ic), Some(&cg), &daemon, &server, (6, "::1", sport, 0));
    assert_eq!(r.side, Side::Daemon);
    assert_eq!(
        r.peer.ip(),
        Ipv6Addr::LOCALHOST,
        "arrived on the daemon's [::1] listener"
    );
    assert_eq!(
        r.printed,
        vec![format!("peer ::1 {sport}"), "reply ok".to_string()]
    );
    let o = r.origin.expect("lookup(peer) found the connection");
    assert_eq!(o.dst, SocketAddr::from((Ipv6Addr::LOCALHOST, sport)));
    assert_eq!(o.tgid, r.pid);
    assert_eq!(o.cgroup_id, cgroup_id(&cg));
}

#[test]
fn v4_mapped_connect_from_ipv6_socket_is_redirected() {
    let cg = TestCgroup::unique("mcpwatch-test-mapped").unwrap();
    let daemon = Daemon::bind();
    let server = TcpListener::bind("127.0.0.3:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    let ic = Interceptor::attach(&config(&cg, &daemon, only(sport))).unwrap();
    ic.set_closed_grace(Duration::from_secs(3600)); // look it up again after the client closed

    let r = run_one(
        Some(&ic),
        Some(&cg),
        &daemon,
        &server,
        (6, "::ffff:127.0.0.3", sport, 0),
    );
    assert_eq!(r.side, Side::Daemon);
    assert!(
        r.peer.is_ipv4(),
        "a v4-mapped connection reaches the IPv4 listener: {}",
        r.peer
    );
    assert_eq!(
        r.printed,
        vec![
            format!("peer ::ffff:127.0.0.3 {sport}"),
            "reply ok".to_string()
        ]
    );
    let o = r
        .origin
        .expect("lookup(v4 peer) found the v4-mapped connection");
    assert_eq!(
        o.dst,
        SocketAddr::from(([127, 0, 0, 3], sport)),
        "v4-mapped dst is reported as IPv4"
    );
    // A daemon on a dual-stack socket would see the mapped form: same record.
    let std::net::IpAddr::V4(v4) = r.peer.ip() else {
        unreachable!()
    };
    let mapped = SocketAddr::from((v4.to_ipv6_mapped(), r.peer.port()));
    assert_eq!(ic.lookup(mapped), Some(o.clone()));
    assert_eq!(ic.lookup(r.peer), Some(o));
}

#[test]
fn outside_cgroup_marked_and_out_of_scope_connections_go_direct() {
    let cg = TestCgroup::unique("mcpwatch-test-direct").unwrap();
    let daemon = Daemon::bind();
    let server = TcpListener::bind("127.0.0.3:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    let other = TcpListener::bind("127.0.0.3:0").unwrap();
    let oport = other.local_addr().unwrap().port();
    let ic = Interceptor::attach(&config(&cg, &daemon, only(sport))).unwrap();

    // Not in the cgroup.
    let r = run_one(
        Some(&ic),
        None,
        &daemon,
        &server,
        (4, "127.0.0.3", sport, 0),
    );
    assert_eq!(
        r.side,
        Side::Server,
        "a process outside the cgroup was redirected"
    );
    assert_eq!(r.printed[0], format!("peer 127.0.0.3 {sport}"));
    assert_eq!(ic.lookup(r.peer), None);

    // In the cgroup but carrying the daemon's mark.
    let r = run_one(
        Some(&ic),
        Some(&cg),
        &daemon,
        &server,
        (4, "127.0.0.3", sport, MARK),
    );
    assert_eq!(
        r.side,
        Side::Server,
        "a socket with the daemon's mark was redirected"
    );
    // A different mark is redirected as usual.
    let r = run_one(
        Some(&ic),
        Some(&cg),
        &daemon,
        &server,
        (4, "127.0.0.3", sport, MARK + 1),
    );
    assert_eq!(r.side, Side::Daemon);

    // In the cgroup, port not in scope.
    let r = run_one(
        Some(&ic),
        Some(&cg),
        &daemon,
        &other,
        (4, "127.0.0.3", oport, 0),
    );
    assert_eq!(r.side, Side::Server, "an out-of-scope port was redirected");
    assert_eq!(r.printed[0], format!("peer 127.0.0.3 {oport}"));

    // The same for IPv6.
    let server6 = TcpListener::bind("[::1]:0").unwrap();
    let r = run_one(
        Some(&ic),
        Some(&cg),
        &daemon,
        &server6,
        (6, "::1", server6.local_addr().unwrap().port(), 0),
    );
    assert_eq!(
        r.side,
        Side::Server,
        "an out-of-scope IPv6 port was redirected"
    );
}

#[test]
fn daemon_process_itself_goes_direct_even_inside_the_cgroup() {
    let cg = TestCgroup::unique("mcpwatch-test-self").unwrap();
    let daemon = Daemon::bind();
    let server = TcpListener::bind("127.0.0.3:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    let mut cfg = config(&cg, &daemon, only(sport));
    let mut client = Client::spawn_with(Some(&cg), (4, "127.0.0.3", sport, 0), 1, true);
    cfg.daemon_tgid = client.pid(); // pretend the client is the daemon
    let ic = Interceptor::attach(&cfg).unwrap();
    client.go();
    let (side, ..) = serve(Some(&ic), accept(&daemon, &server, Some(&mut client)));
    assert_eq!(
        side,
        Side::Server,
        "the daemon's own connect was redirected"
    );
    client.finish();
    // Any other process in the cgroup is redirected.
    let r = run_one(
        Some(&ic),
        Some(&cg),
        &daemon,
        &server,
        (4, "127.0.0.3", sport, 0),
    );
    assert_eq!(r.side, Side::Daemon);
}

#[test]
fn all_ports_scope_redirects_any_port_but_not_the_listener_itself() {
    let cg = TestCgroup::unique("mcpwatch-test-all").unwrap();
    let daemon = Daemon::bind();
    let server = TcpListener::bind("127.0.0.3:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    let ic = Interceptor::attach(&config(&cg, &daemon, PortScope::All)).unwrap();
    let r = run_one(
        Some(&ic),
        Some(&cg),
        &daemon,
        &server,
        (4, "127.0.0.3", sport, 0),
    );
    assert_eq!(r.side, Side::Daemon);
    assert_eq!(
        r.origin.map(|o| o.dst),
        Some(SocketAddr::from(([127, 0, 0, 3], sport)))
    );
    // Connecting to the daemon listener directly is not recorded as a redirect.
    let r = run_one(
        Some(&ic),
        Some(&cg),
        &daemon,
        &server,
        (4, "127.0.0.1", daemon.port(), 0),
    );
    assert_eq!(r.side, Side::Daemon);
    assert_eq!(r.origin, None);
    let r = run_one(
        Some(&ic),
        Some(&cg),
        &daemon,
        &server,
        (6, "::1", daemon.port(), 0),
    );
    assert_eq!(r.side, Side::Daemon);
    assert_eq!(r.origin, None);
}

#[test]
fn records_are_dropped_after_close_and_maps_stay_bounded() {
    const N: u32 = 200;
    let cg = TestCgroup::unique("mcpwatch-test-churn").unwrap();
    let daemon = Daemon::bind();
    let server = TcpListener::bind("127.0.0.3:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    let ic = Interceptor::attach(&config(&cg, &daemon, only(sport))).unwrap();
    ic.set_closed_grace(Duration::from_millis(100));

    let mut client = Client::spawn(Some(&cg), 4, "127.0.0.3", sport, 0, N);
    let mut peers = Vec::new();
    for i in 0..N {
        let (side, peer, origin, line) =
            serve(Some(&ic), accept(&daemon, &server, Some(&mut client)));
        assert_eq!(side, Side::Daemon, "connection {i}");
        assert_eq!(line, format!("hello {} {i}", client.pid()));
        assert_eq!(
            origin.map(|o| o.dst),
            Some(SocketAddr::from(([127, 0, 0, 3], sport))),
            "connection {i}"
        );
        peers.push(peer);
    }
    let printed = client.finish();
    assert_eq!(printed.len(), 2 * N as usize);

    poll_until("cookie entries deleted on close", || {
        ic.map_sizes().by_cookie == 0
    });
    poll_until("closed peer entries swept after the grace period", || {
        ic.sweep();
        ic.map_sizes().by_peer == 0
    });
    assert!(peers.iter().all(|p| ic.lookup(*p).is_none()));
    assert!(ic.map_sizes().execs <= crate::MAX_CONNECTIONS as usize);
}

/// A client in a fresh test cgroup that connects to 127.0.0.3:<port>, sends `bye`,
/// closes and exits before the daemon accepts; returns what the test needs to accept it.
/// The interceptor keeps closed records for an hour.
fn client_closed_before_accept(name: &str) -> (TestCgroup, Daemon, TcpListener, u16, Interceptor) {
    let cg = TestCgroup::unique(name).unwrap();
    let daemon = Daemon::bind();
    let server = TcpListener::bind("127.0.0.3:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    let ic = Interceptor::attach(&config(&cg, &daemon, only(sport))).unwrap();
    ic.set_closed_grace(Duration::from_secs(3600));
    let mut cmd = Command::new(python());
    cmd.args([
        "-c",
        "import socket,sys; s=socket.create_connection(('127.0.0.3', int(sys.argv[1]))); s.sendall(b'bye\\n'); s.close()",
        &sport.to_string(),
    ]);
    // SAFETY: the hook only performs async-signal-safe syscalls.
    unsafe { cmd.pre_exec(cg.pre_exec_hook()) };
    assert!(cmd.status().unwrap().success());
    poll_until("the client's socket reached CLOSE", || ic.map_sizes().by_cookie == 0);
    (cg, daemon, server, sport, ic)
}

/// The daemon's accept consumes the record: a later socket that reuses the client's
/// address and port and connects to the daemon directly (no redirect, so no record of
/// its own) cannot claim the first client's process and destination.
#[test]
fn an_accepted_connection_is_resolved_once() {
    let (_cg, daemon, server, sport, ic) = client_closed_before_accept("mcpwatch-test-take");
    let (side, _stream, peer) = accept(&daemon, &server, None);
    assert_eq!(side, Side::Daemon);
    assert_eq!(ic.take(peer).map(|o| o.dst), Some(SocketAddr::from(([127, 0, 0, 3], sport))));
    assert_eq!(ic.take(peer), None, "a second claim on the same peer address resolved");
    assert_eq!(ic.lookup(peer), None);
    assert_eq!(ic.map_sizes().by_peer, 0);
}

#[test]
fn a_client_that_closes_before_accept_is_still_resolvable() {
    // Connect, send, close without waiting; we accept only after it has exited.
    let (_cg, daemon, server, sport, ic) = client_closed_before_accept("mcpwatch-test-early");

    let (side, stream, peer) = accept(&daemon, &server, None);
    assert_eq!(side, Side::Daemon);
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    assert_eq!(line, "bye\n");
    assert_eq!(
        ic.lookup(peer).map(|o| o.dst),
        Some(SocketAddr::from(([127, 0, 0, 3], sport)))
    );
    // With a zero grace the closed record is gone.
    ic.set_closed_grace(Duration::ZERO);
    poll_until("expired record dropped by lookup", || {
        ic.lookup(peer).is_none()
    });
    assert_eq!(ic.map_sizes().by_peer, 0);
}

#[test]
fn dropping_the_interceptor_detaches() {
    let cg = TestCgroup::unique("mcpwatch-test-drop").unwrap();
    let daemon = Daemon::bind();
    let server = TcpListener::bind("127.0.0.3:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    let ic = Interceptor::attach(&config(&cg, &daemon, only(sport))).unwrap();
    let r = run_one(
        Some(&ic),
        Some(&cg),
        &daemon,
        &server,
        (4, "127.0.0.3", sport, 0),
    );
    assert_eq!(r.side, Side::Daemon);
    drop(ic);
    let r = run_one(
        None,
        Some(&cg),
        &daemon,
        &server,
        (4, "127.0.0.3", sport, 0),
    );
    assert_eq!(
        r.side,
        Side::Server,
        "still redirected after the Interceptor was dropped"
    );
    assert_eq!(r.printed[0], format!("peer 127.0.0.3 {sport}"));
    // And the cgroup can be attached again (Single mode: nothing left behind).
    let ic = Interceptor::attach(&config(&cg, &daemon, only(sport))).unwrap();
    let r = run_one(
        Some(&ic),
        Some(&cg),
        &daemon,
        &server,
        (4, "127.0.0.3", sport, 0),
    );
    assert_eq!(r.side, Side::Daemon);
}

#[test]
fn refuses_the_root_cgroup_and_non_cgroups() {
    assert_ne!(
        std::env::var(crate::ALLOW_ROOT_CGROUP_ENV).as_deref(),
        Ok("1"),
        "run the tests without {} set: this test must never attach to the root cgroup",
        crate::ALLOW_ROOT_CGROUP_ENV
    );
    let daemon = Daemon::bind();
    let mount = crate::cgroup::cgroup2_mount().unwrap();
    let cfg = |cgroup: std::path::PathBuf| InterceptConfig {
        cgroup,
        listen_port: daemon.port(),
        ports: PortScope::All,
        mark: MARK,
        daemon_tgid: std::process::id(),
        pin_dir: None,
        agents: AgentScope::default(),
        refuse_udp: false,
        dns_servers: Vec::new(),
    };
    for root in [
        mount.clone(),
        mount.join("."),
        mount.join("..").join(mount.file_name().unwrap()),
    ] {
        match Interceptor::attach(&cfg(root.clone())) {
            Err(e @ InterceptError::RootCgroupRefused { .. }) => {
                assert!(e.to_string().contains(crate::ALLOW_ROOT_CGROUP_ENV), "{e}")
            }
            other => panic!(
                "{}: expected RootCgroupRefused, got {other:?}",
                root.display()
            ),
        }
    }
    let tmp = std::env::temp_dir();
    assert!(matches!(
        Interceptor::attach(&cfg(tmp)),
        Err(InterceptError::NotCgroup2 { .. })
    ));
    assert!(matches!(
        Interceptor::attach(&cfg(mount.join("mcpwatch-test-does-not-exist"))),
        Err(InterceptError::CgroupNotFound { .. })
    ));
    let cg = TestCgroup::unique("mcpwatch-test-cfg").unwrap();
    let mut bad = cfg(cg.path().to_path_buf());
    bad.listen_port = 0;
    assert!(matches!(
        Interceptor::attach(&bad),
        Err(InterceptError::Config(_))
    ));
}

/// Whether a TCP connect from a fresh process (in `cg`, if any) to (host, port)
/// is accepted by someone ("connected") or refused ("refused").
fn connect_outcome(cg: Option<&TestCgroup>, host: &str, port: u16) -> String {
    let mut cmd = Command::new(python());
    cmd.args([
        "-c",
        "import socket, sys\n\
         try:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10); print('connected')\n\
         except ConnectionRefusedError:\n    print('refused')\n",
        host,
        &port.to_string(),
    ]);
    if let Some(cg) = cg {
        // SAFETY: the hook only performs async-signal-safe syscalls.
        unsafe { cmd.pre_exec(cg.pre_exec_hook()) };
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// File names in a pin directory, sorted.
fn pin_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

const PINNED: [&str; 11] = [
    "connect4",
    "connect6",
    "getpeername4",
    "getpeername6",
    "process_exec",
    "process_exit",
    "process_fork",
    "sendmsg4",
    "sendmsg6",
    "sock_ops",
    "task_rename",
];

#[test]
fn pinned_links_outlive_the_interceptor_and_refuse_until_released() {
    let fs = crate::pins::TestBpfFs::unique("mcpwatch-test-bpffs").unwrap();
    let cg = TestCgroup::unique("mcpwatch-test-pin").unwrap();
    let daemon = Daemon::bind();
    let server = TcpListener::bind("127.0.0.3:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    let dir = fs.path().join("pins");
    let mut cfg = config(&cg, &daemon, only(sport));
    cfg.pin_dir = Some(dir.clone());
    let ic = Interceptor::attach(&cfg).unwrap();
    assert_eq!(ic.pin_dir(), Some(dir.as_path()));
    assert_eq!(pin_names(&dir), PINNED);
    let r = run_one(
        Some(&ic),
        Some(&cg),
        &daemon,
        &server,
        (4, "127.0.0.3", sport, 0),
    );
    assert_eq!(r.side, Side::Daemon);
    assert!(r.origin.is_some());

    // The daemon "dies": its links stay, connections still go to its port...
    drop(ic);
    let r = run_one(
        None,
        Some(&cg),
        &daemon,
        &server,
        (4, "127.0.0.3", sport, 0),
    );
    assert_eq!(
        r.side,
        Side::Daemon,
        "pinned links detached with the Interceptor"
    );
    assert_eq!(
        r.printed[0],
        format!("peer 127.0.0.3 {sport}"),
        "getpeername still rewritten"
    );
    // ...where nobody listens any more: refused, never direct.
    let dport = daemon.port();
    drop(daemon);
    assert_eq!(connect_outcome(Some(&cg), "127.0.0.3", sport), "refused");
    assert_eq!(
        connect_outcome(Some(&cg), "::ffff:127.0.0.3", sport),
        "refused",
        "IPv6 sockets too"
    );
    assert_eq!(
        connect_outcome(None, "::ffff:127.0.0.3", sport),
        "connected"
    );
    assert_eq!(
        connect_outcome(None, "127.0.0.3", sport),
        "connected",
        "outside the cgroup: unaffected"
    );
    assert_eq!(connect_outcome(Some(&cg), "127.0.0.1", dport), "refused");

    // The probes that got through queued on the server: drop them.
    server.set_nonblocking(true).unwrap();
    while server.accept().is_ok() {}

    // Deliberate release: direct again, nothing left in bpffs.
    assert_eq!(crate::release_pins(&dir).unwrap(), PINNED.len());
    assert!(!dir.exists());
    assert_eq!(crate::release_pins(&dir).unwrap(), 0, "idempotent");
    let other = Daemon::bind();
    let r = run_one(None, Some(&cg), &other, &server, (4, "127.0.0.3", sport, 0));
    assert_eq!(r.side, Side::Server, "still redirected after release_pins");
}

#[test]
fn reattach_replaces_pinned_links_and_release_detaches() {
    let fs = crate::pins::TestBpfFs::unique("mcpwatch-test-bpffs").unwrap();
    let cg = TestCgroup::unique("mcpwatch-test-repin").unwrap();
    let server = TcpListener::bind("127.0.0.3:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    let dir = fs.path().join("pins");
    let first = Daemon::bind();
    let mut cfg = config(&cg, &first, only(sport));
    cfg.pin_dir = Some(dir.clone());
    drop(Interceptor::attach(&cfg).unwrap()); // a daemon that died; pins remain
    // A crash in the middle of an earlier replacement left a temporary pin.
    std::fs::rename(dir.join("connect6"), dir.join("connect6-new-1")).unwrap();

    // The restarted daemon (another port) replaces them: connections reach it,
    // not the first one, and it can resolve them.
    let second = Daemon::bind();
    cfg.listen_port = second.port();
    let ic = Interceptor::attach(&cfg).unwrap();
    assert_eq!(pin_names(&dir), PINNED, "exactly one pin per program");
    for (family, host) in [(4, "127.0.0.3"), (6, "::ffff:127.0.0.3")] {
        let r = run_one(
            Some(&ic),
            Some(&cg),
            &second,
            &server,
            (family, host, sport, 0),
        );
        assert_eq!(r.side, Side::Daemon);
        assert_eq!(
            r.origin.map(|o| o.dst),
            Some(SocketAddr::from(([127, 0, 0, 3], sport)))
        );
    }
    for l in [&first.v4, &first.v6] {
        l.set_nonblocking(true).unwrap();
        assert!(
            l.accept().is_err(),
            "a replaced link still redirected to the old port"
        );
    }
    // The old links are gone from the kernel too: a second drop/attach cycle
    // still sees a single redirect (connections would otherwise hit `first`).
    drop(ic);
    let third = Daemon::bind();
    cfg.listen_port = third.port();
    let ic = Interceptor::attach(&cfg).unwrap();
    let r = run_one(
        Some(&ic),
        Some(&cg),
        &third,
        &server,
        (4, "127.0.0.3", sport, 0),
    );
    assert_eq!(r.side, Side::Daemon);
    assert!(r.origin.is_some());

    assert_eq!(ic.release().unwrap(), PINNED.len());
    assert!(!dir.exists(), "release removes the pin dir");
    let r = run_one(None, Some(&cg), &third, &server, (4, "127.0.0.3", sport, 0));
    assert_eq!(r.side, Side::Server, "still redirected after release()");
}

#[test]
fn pinning_outside_bpffs_fails_before_attaching_anything() {
    let cg = TestCgroup::unique("mcpwatch-test-nopin").unwrap();
    let daemon = Daemon::bind();
    let server = TcpListener::bind("127.0.0.3:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    let mut cfg = config(&cg, &daemon, only(sport));
    let dir = std::env::temp_dir().join(format!("mcpwatch-test-nopin-{}", std::process::id()));
    cfg.pin_dir = Some(dir.clone());
    match Interceptor::attach(&cfg) {
        Err(e @ InterceptError::NotBpfFs { .. }) => {
            assert!(e.to_string().contains(&dir.display().to_string()), "{e}")
        }
        other => panic!("expected NotBpfFs, got {other:?}"),
    }
    assert!(!dir.exists());
    let r = run_one(
        None,
        Some(&cg),
        &daemon,
        &server,
        (4, "127.0.0.3", sport, 0),
    );
    assert_eq!(
        r.side,
        Side::Server,
        "a failed attach left a program behind"
    );
    // Unpinned interception on the same cgroup is unaffected.
    let ic = Interceptor::attach(&config(&cg, &daemon, only(sport))).unwrap();
    assert_eq!(ic.pin_dir(), None);
    assert_eq!(ic.release().unwrap(), 0);
}

#[test]
fn dropping_the_test_bpffs_detaches_whatever_is_still_pinned_in_it() {
    let cg = TestCgroup::unique("mcpwatch-test-bpffs-drop").unwrap();
    let daemon = Daemon::bind();
    let server = TcpListener::bind("127.0.0.3:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    let fs = crate::pins::TestBpfFs::unique("mcpwatch-test-bpffs").unwrap();
    let mut cfg = config(&cg, &daemon, only(sport));
    cfg.pin_dir = Some(fs.path().join("left-behind"));
    drop(Interceptor::attach(&cfg).unwrap());
    let r = run_one(
        None,
        Some(&cg),
        &daemon,
        &server,
        (4, "127.0.0.3", sport, 0),
    );
    assert_eq!(r.side, Side::Daemon, "pinned");
    drop(fs); // what a failing test's guard does
    let r = run_one(
        None,
        Some(&cg),
        &daemon,
        &server,
        (4, "127.0.0.3", sport, 0),
    );
    assert_eq!(
        r.side,
        Side::Server,
        "unmounting the test bpffs left links attached"
    );
}

/// A symlink to python3 named `name`: exec through it gives the process that comm.
fn python_named(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(python(), &link).unwrap();
    link
}

/// A cgroup, a "daemon", a real server (its port never in the port scope) and an
/// interceptor with agent scope on.
fn agent_setup(
    name: &str,
    comms: &[&str],
    classify: bool,
) -> (TestCgroup, Daemon, TcpListener, u16, Interceptor) {
    let cg = TestCgroup::unique(name).unwrap();
    let daemon = Daemon::bind();
    let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = server.local_addr().unwrap().port();
    let cfg = InterceptConfig {
        agents: AgentScope {
            enabled: true,
            comms: comms.iter().map(|c| c.to_string()).collect(),
            classify,
        },
        ..config(&cg, &daemon, only(1))
    };
    let ic = Interceptor::attach(&cfg).unwrap();
    (cg, daemon, server, port, ic)
}

/// Runs `CLIENT` (one connection to 127.0.0.1:port) with `program` in `cg`; with
/// `via_child`, `program` runs the client as a subprocess with the real python3.
fn spawn_program(cg: &TestCgroup, program: &std::path::Path, port: u16, via_child: bool) -> Client {
    let mut cmd = Command::new(program);
    let args = ["4", "127.0.0.1", &port.to_string(), "0", "1", "now"].map(str::to_string);
    if via_child {
        let script = format!(
            "import subprocess, sys\nr = subprocess.run([{:?}, '-c', sys.argv[1]] + sys.argv[2:])\nsys.exit(r.returncode)",
            python()
        );
        cmd.arg("-c").arg(script).arg(CLIENT).args(&args);
    } else {
        cmd.arg("-c").arg(CLIENT).args(&args);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: the hook only performs async-signal-safe syscalls.
    unsafe { cmd.pre_exec(cg.pre_exec_hook()) };
    Client(Some(cmd.spawn().expect("spawn agent client")))
}

#[test]
fn agents_and_their_children_have_every_port_redirected() {
    let (cg, daemon, server, port, ic) = agent_setup("mcpw-agents", &["mcpw-agent-t"], false);
    let tmp = tempfile_dir();
    let agent = python_named(&tmp, "mcpw-agent-t");

    // The agent itself: its comm is in agent_comms, matched in the kernel at exec.
    let mut c = spawn_program(&cg, &agent, port, false);
    let pid = c.pid();
    let (side, _, origin, _) = serve(Some(&ic), accept(&daemon, &server, Some(&mut c)));
    assert_eq!(side, Side::Daemon, "agent on an unlisted port goes to the daemon");
    assert_eq!(origin.unwrap().dst, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    c.finish();
    // Its entry leaves with the process.
    assert_eq!(ic.agent_state(pid), crate::AgentState::Unknown);

    // A child the agent runs with another binary (comm python3): inherited at fork.
    let mut c = spawn_program(&cg, &agent, port, true);
    let (side, _, origin, _) = serve(Some(&ic), accept(&daemon, &server, Some(&mut c)));
    assert_eq!(side, Side::Daemon, "the agent's child goes to the daemon");
    let o = origin.unwrap();
    assert_ne!(o.tgid, c.pid(), "the connection came from the child");
    assert_eq!(o.comm, "python3");
    c.finish();

    // Not an agent: the port scope alone applies, so it goes direct.
    let mut c = Client::spawn(Some(&cg), 4, "127.0.0.1", port, 0, 1);
    let (side, ..) = serve(Some(&ic), accept(&daemon, &server, Some(&mut c)));
    assert_eq!(side, Side::Server, "a non-agent on an unlisted port goes direct");
    c.finish();
    assert_eq!(ic.agent_count(), 0, "every agent exited");
}

#[test]
fn pending_execs_are_redirected_until_classified() {
    let (cg, daemon, server, port, ic) = agent_setup("mcpw-pending", &[], true);

    for (classified_agent, want) in [(true, Side::Daemon), (false, Side::Server)] {
        let mut c = Client::spawn_with(Some(&cg), (4, "127.0.0.1", port, 0), 1, true);
        let pid = c.pid();
        // The exec was announced to user space and the process is pending meanwhile.
        let start = Instant::now();
        while !ic.agent_events(4096).iter().any(|e| e.tgid == pid) {
            assert!(start.elapsed() < DEADLINE, "no exec event for {pid}");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(matches!(ic.agent_state(pid), crate::AgentState::Pending { .. }), "{:?}", ic.agent_state(pid));
        if classified_agent {
            ic.mark_agent(pid, crate::AgentFlags::POLICY, 0).unwrap();
            assert!(ic.is_agent(pid));
        } else {
            ic.clear_pending(pid);
            assert_eq!(ic.agent_state(pid), crate::AgentState::Unknown);
        }
        c.go();
        let (side, ..) = serve(Some(&ic), accept(&daemon, &server, Some(&mut c)));
        assert_eq!(side, want, "classified as agent: {classified_agent}");
        c.finish();
    }

    // With classification off, execs are not pending.
    ic.set_classify(false).unwrap();
    let mut c = Client::spawn_with(Some(&cg), (4, "127.0.0.1", port, 0), 1, true);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(ic.agent_state(c.pid()), crate::AgentState::Unknown);
    c.go();
    let (side, ..) = serve(Some(&ic), accept(&daemon, &server, Some(&mut c)));
    assert_eq!(side, Side::Server);
    let dead = c.pid();
    c.finish();

    // Marked after its exit (the exit hook ran first): pruned, not leaked.
    ic.mark_agent(dead, crate::AgentFlags::POLICY, 0).unwrap();
    assert!(ic.is_agent(dead));
    assert_eq!(ic.prune_dead_agents(), 1);
    assert_eq!(ic.agent_state(dead), crate::AgentState::Unknown);
}

/// A fresh temp directory, removed on drop.
struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> TempDir {
    let dir = std::env::temp_dir().join(format!("mcpw-agent-{}-{}", std::process::id(), crate::monotonic_ns()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

#[test]
fn renaming_to_an_agent_name_makes_an_agent() {
    let (cg, daemon, server, port, ic) = agent_setup("mcpw-rename", &["mcpw-agent-t"], false);
    // Like Node's process.title: prctl(PR_SET_NAME) after exec, then connect.
    let wrap = "import ctypes, sys\nctypes.CDLL(None).prctl(15, b'mcpw-agent-t', 0, 0, 0)\nexec(sys.argv.pop(1))";
    let mut cmd = Command::new(python());
    cmd.args(["-c", wrap, CLIENT, "4", "127.0.0.1", &port.to_string(), "0", "1", "now"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the hook only performs async-signal-safe syscalls.
    unsafe { cmd.pre_exec(cg.pre_exec_hook()) };
    let mut c = Client(Some(cmd.spawn().expect("spawn renaming client")));
    let (side, _, origin, _) = serve(Some(&ic), accept(&daemon, &server, Some(&mut c)));
    assert_eq!(side, Side::Daemon, "a process renamed to an agent name is an agent");
    assert_eq!(origin.unwrap().comm, "mcpw-agent-t");
    c.finish();
}

#[test]
fn pinned_agent_tracking_outlives_the_interceptor() {
    let fs = crate::pins::TestBpfFs::unique("mcpwatch-test-bpffs-agents").unwrap();
    let (cg, daemon, server, port, ic) = agent_setup("mcpw-agents-pin", &["mcpw-agent-t"], false);
    drop(ic);
    let cfg = InterceptConfig {
        pin_dir: Some(fs.path().join("pins")),
        agents: AgentScope { enabled: true, comms: vec!["mcpw-agent-t".into()], classify: false },
        ..config(&cg, &daemon, only(1))
    };
    let ic = Interceptor::attach(&cfg).unwrap();
    // The daemon "dies" and its listener with it: the pinned hooks keep tracking, so a
    // child the agent forks now is still redirected (to nobody: refused), never direct.
    drop(ic);
    drop(daemon);
    let tmp = tempfile_dir();
    let agent = python_named(&tmp, "mcpw-agent-t");
    let mut c = spawn_program(&cg, &agent, port, true);
    let out = c.0.take().unwrap().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("ConnectionRefused"), "{stderr}");
    server.set_nonblocking(true).unwrap();
    assert!(server.accept().is_err(), "the agent's child connected directly");
    crate::release_pins(&fs.path().join("pins")).unwrap();
}

/// What a process does with UDP toward `port` on loopback (v4 and v6): connect() then
/// send, and sendto() on an unconnected socket; each step prints `sent` or the errno name.
fn udp_outcome(cg: Option<&TestCgroup>, port: u16) -> Vec<String> {
    let mut cmd = Command::new(python());
    cmd.args([
        "-c",
        "import errno, socket, sys\n\
         port = int(sys.argv[1])\n\
         def step(f):\n    try:\n        f(); return 'sent'\n    except OSError as e:\n        return errno.errorcode.get(e.errno, str(e.errno))\n\
         out = []\n\
         for fam, host in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):\n    c = socket.socket(fam, socket.SOCK_DGRAM)\n    out.append(step(lambda: (c.connect((host, port)), c.send(b'quic'))))\n    u = socket.socket(fam, socket.SOCK_DGRAM)\n    out.append(step(lambda: u.sendto(b'quic', (host, port))))\n\
         print(' '.join(out))\n",
        &port.to_string(),
    ]);
    if let Some(cg) = cg {
        // SAFETY: the hook only performs async-signal-safe syscalls.
        unsafe { cmd.pre_exec(cg.pre_exec_hook()) };
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().split_whitespace().map(str::to_string).collect()
}

/// QUIC (HTTP/3) cannot be redirected to the daemon: UDP from the watched cgroup toward
/// an in-scope port is refused (connect and unconnected sends, IPv4 and IPv6) and
/// counted; DNS, out-of-scope ports and processes outside the cgroup are untouched; with
/// `refuse_udp` off nothing is refused.
#[test]
fn udp_toward_in_scope_ports_is_refused_so_http3_falls_back_to_tcp() {
    let cg = TestCgroup::unique("mcpwatch-test-udp").unwrap();
    let daemon = Daemon::bind();
    let scoped = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ic = Interceptor::attach(&config(&cg, &daemon, PortScope::Ranges(vec![53..=53, scoped..=scoped]))).unwrap();
    let refused = vec!["EPERM".to_string(); 4];
    let sent = vec!["sent".to_string(); 4];
    assert_eq!(udp_outcome(Some(&cg), scoped), refused, "UDP to an in-scope port from the cgroup");
    assert_eq!(ic.udp_refused(), 4);
    // Port 53 is open toward the host's resolvers only: elsewhere it could carry QUIC.
    assert_eq!(udp_outcome(Some(&cg), 53), refused, "port 53 toward an address that is no resolver");
    assert_eq!(ic.udp_refused(), 8);
    ic.set_dns_servers(&["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]).unwrap();
    assert_eq!(udp_outcome(Some(&cg), 53), sent, "DNS toward the resolvers");
    ic.set_dns_servers(&["::1".parse().unwrap()]).unwrap();
    assert_eq!(udp_outcome(Some(&cg), 53), vec!["EPERM", "EPERM", "sent", "sent"], "127.0.0.1 is no resolver any more");
    assert_eq!(ic.udp_refused(), 10);
    assert_eq!(udp_outcome(Some(&cg), other), sent, "an out-of-scope port");
    assert_eq!(udp_outcome(None, scoped), sent, "a process outside the cgroup");
    assert_eq!(ic.udp_refused(), 10);
    drop(ic);
    let ic = Interceptor::attach(&InterceptConfig { refuse_udp: false, ..config(&cg, &daemon, PortScope::Ranges(vec![scoped..=scoped])) }).unwrap();
    assert_eq!(udp_outcome(Some(&cg), scoped), sent, "refuse_udp off");
    assert_eq!(ic.udp_refused(), 0);
}

#[test]
fn resolvers_are_the_nameserver_lines_of_resolv_conf() {
    let text = "# generated\nsearch example.com\nnameserver 10.255.255.53\nnameserver  fe80::1%eth0\nnameserver 127.0.0.53 # stub\nnameserver 10.255.255.53\nnameserver not-an-ip\noptions edns0\n";
    let got: Vec<String> = crate::resolv_conf_nameservers(text).iter().map(ToString::to_string).collect();
    assert_eq!(got, ["10.255.255.53", "fe80::1", "127.0.0.53"]);
    let many: String = (0..100).map(|i| format!("nameserver 10.0.0.{i}\n")).collect();
    assert_eq!(crate::resolv_conf_nameservers(&many).len(), crate::MAX_DNS_SERVERS);
}
