//! Real MCP peers for the integration tests: spawn SDK servers (Python mcp 2.3.0, the
//! TypeScript SDK 1.32.2, rmcp, server-everything) on loopback, run SDK clients with a
//! script of steps, and read back what the servers actually received.
//!
//! Why: mcpwatch is only trustworthy if it is exercised by the SDKs people use, not by
//! hand-written JSON. Everything here is installed by `cargo xtask setup`; when a piece
//! is missing the helpers panic with the command that installs it. Every process is
//! owned by an RAII guard ([`Peer`]) or waited for ([`Client::run`]) and killed by PID,
//! never by name.
//!
//! ```no_run
//! use mcpwatch_tests::peers::{self, Client};
//! let server = peers::python_server().json_response().spawn();
//! let out = Client::python(&server.url()).list().call("echo", serde_json::json!({"text": "hi"})).run();
//! assert_eq!(out.steps()[1]["text"], "hi");
//! assert_eq!(server.recorded_calls()[0]["tool"], "echo");
//! ```

use std::ffi::CString;
use std::fs::File;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a server may take to print `ready` (Python imports are slow on a busy box).
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit for one client run, after which it is killed and the test panics.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// Proxy variables that would send SDK traffic somewhere else than the URL we give.
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// The repository root (parent of the `tests` crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `tests/peers` in the repository.
pub fn peers_dir() -> PathBuf {
    repo_root().join("tests").join("peers")
}

/// The Python of the peers' venv (`<repo>/.peers/venv/bin/python`).
pub fn venv_python() -> PathBuf {
    let py = repo_root()
        .join(".peers")
        .join("venv")
        .join("bin")
        .join("python");
    assert!(
        py.exists(),
        "{} is missing: run `cargo xtask setup`",
        py.display()
    );
    py
}

/// The `node` executable (from PATH).
pub fn node() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("node"))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => p,
        None => panic!("`node` is not on PATH: run `cargo xtask setup`"),
    }
}

/// The Node peers directory, checked to have its node_modules installed.
pub fn node_dir() -> PathBuf {
    let dir = peers_dir().join("node");
    let sdk = dir
        .join("node_modules")
        .join("@modelcontextprotocol")
        .join("sdk");
    assert!(
        sdk.exists(),
        "{} is missing: run `cargo xtask setup`",
        sdk.display()
    );
    dir
}

/// The rmcp peer binary: `MCPWATCH_PEER_RMCP`, else `<target>/release`, else `<target>/debug`,
/// where `<target>` is the target directory this test binary was built into.
pub fn rmcp_peer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MCPWATCH_PEER_RMCP") {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    // current_exe is <target>/<profile>/deps/<test>-<hash>.
    if let Some(target) = std::env::current_exe()
        .ok()
        .as_deref()
        .and_then(|e| e.ancestors().nth(3))
    {
        candidates.push(target.to_path_buf());
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t));
    }
    candidates.push(repo_root().join("target"));
    for target in &candidates {
        for profile in ["release", "debug"] {
            let bin = target.join(profile).join("mcpwatch-peer-rmcp");
            if bin.is_file() {
                return bin;
            }
        }
    }
    panic!(
        "mcpwatch-peer-rmcp not found under {}: run `cargo xtask setup`",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// A free TCP port on 127.0.0.1 (bound and released: another process could take it, so
/// prefer letting the peer bind port 0 where it can).
pub fn free_port() -> u16 {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A free TCP port on the given loopback address.
pub fn free_port_on(ip: IpAddr) -> u16 {
    assert!(ip.is_loopback(), "tests only listen on loopback, not {ip}");
    let l = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("binding {ip}:0: {e}"));
    l.local_addr()
        .unwrap_or_else(|e| panic!("local_addr of {ip}:0: {e}"))
        .port()
}

/// Makes `cmd` move itself into the cgroup `dir` (by writing "0" to `cgroup.procs`)
/// between fork and exec, so the process is in the cgroup before it makes any connection.
pub fn move_into_cgroup(cmd: &mut Command, dir: &Path) {
    let procs = dir.join("cgroup.procs");
    let path = CString::new(procs.as_os_str().as_bytes())
        .unwrap_or_else(|_| panic!("cgroup path {} contains a NUL byte", procs.display()));
    // SAFETY: the closure runs in the forked child before exec and only calls the
    // async-signal-safe `move_self_into` (open/write/close) on memory allocated before
    // the fork.
    unsafe {
        cmd.pre_exec(move || mcpwatch_intercept::cgroup::move_self_into(&path));
    }
}

/// Which server implementation a [`ServerBuilder`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// `tests/peers/python/server.py` (mcp 2.3.0 `MCPServer`; speaks 2026-07-28 and the 2025 handshake).
    Python,
    /// `tests/peers/node/server.mjs` (TS SDK 1.32.2; Streamable HTTP on /mcp and legacy SSE on /sse).
    Node,
    /// `mcpwatch-peer-rmcp` (rmcp; stateless JSON; tools echo and add only).
    Rmcp,
    /// `@modelcontextprotocol/server-everything` (TS SDK; its own tool set: echo takes `message`).
    Everything,
}

/// Which MCP HTTP transport an endpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Streamable HTTP (POST /mcp).
    #[default]
    Streamable,
    /// The legacy HTTP+SSE transport (GET /sse, POST /messages).
    Sse,
}

impl Transport {
    fn arg(self) -> &'static str {
        match self {
            Transport::Streamable => "streamable",
            Transport::Sse => "sse",
        }
    }
}

/// Host/Origin (DNS-rebinding) checks of the Python and Node servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostCheck {
    /// The SDK default: checked only when bound to 127.0.0.1/localhost/::1
    /// (Python answers a bad Host with 421, Node with 403).
    #[default]
    Auto,
    /// Checked against the bound IP, whatever it is.
    Strict,
    /// Never checked.
    Off,
}

/// Configures and spawns a server peer. Start from [`python_server`], [`node_server`],
/// [`rmcp_server`] or [`everything_server`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    kind: ServerKind,
    ip: Ipv4Addr,
    transport: Transport,
    json_response: bool,
    stateless: bool,
    host_check: HostCheck,
    cgroup: Option<PathBuf>,
    /// Run inside this network namespace ([`crate::harness::Netns`]).
    netns: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// A Python SDK server (records every tools/call).
pub fn python_server() -> ServerBuilder {
    ServerBuilder::new(ServerKind::Python)
}

/// A TypeScript SDK server (records every tools/call).
pub fn node_server() -> ServerBuilder {
    ServerBuilder::new(ServerKind::Node)
}

/// The rmcp server (no recording).
pub fn rmcp_server() -> ServerBuilder {
    ServerBuilder::new(ServerKind::Rmcp)
}

/// The reference server-everything (no recording; port chosen with [`free_port_on`]).
pub fn everything_server() -> ServerBuilder {
    ServerBuilder::new(ServerKind::Everything)
}

impl ServerBuilder {
    fn new(kind: ServerKind) -> Self {
        Self {
            kind,
            ip: Ipv4Addr::LOCALHOST,
            transport: Transport::Streamable,
            json_response: false,
            stateless: false,
            host_check: HostCheck::Auto,
            cgroup: None,
            netns: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Listen on this loopback address (e.g. 127.0.0.23) instead of 127.0.0.1.
    pub fn ip(mut self, ip: Ipv4Addr) -> Self {
        assert!(ip.is_loopback(), "tests only listen on loopback, not {ip}");
        self.ip = ip;
        self
    }

    /// Listen on the namespace side of `ns`: a server at an address off loopback (a
    /// "remote" server), reached through the namespace's veth pair.
    pub fn in_netns(mut self, ns: &crate::harness::Netns) -> Self {
        self.ip = ns.ns_ip;
        self.netns = Some(ns.name.clone());
        self
    }

    /// Serve the legacy HTTP+SSE transport (Python, Everything); the Node server always
    /// serves both, so this only changes what [`Peer::url`] returns for it.
    pub fn legacy_sse(mut self) -> Self {
        self.transport = Transport::Sse;
        self
    }

    /// JSON response bodies instead of SSE (Python, Node; rmcp always answers JSON).
    pub fn json_response(mut self) -> Self {
        self.json_response = true;
        self
    }

    /// No Mcp-Session-Id for handshake-era clients (Python, Node).
    pub fn stateless(mut self) -> Self {
        self.stateless = true;
        self
    }

    /// Host header checking (Python, Node; rmcp: `Off` means `--any-host`).
    pub fn host_check(mut self, check: HostCheck) -> Self {
        self.host_check = check;
        self
    }

    /// Start the server inside this cgroup (v2 directory).
    pub fn cgroup(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cgroup = Some(dir.into());
        self
    }

    /// Extra command-line argument for the server.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Extra environment variable for the server.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the server and waits until it accepts connections; panics with its stderr
    /// if it exits or does not come up in time.
    pub fn spawn(self) -> Peer {
        let dir = tempfile::Builder::new()
            .prefix("mcpwatch-peer-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir for the peer: {e}"));
        let record = dir.path().join("calls.jsonl");
        let ip = self.ip.to_string();
        let host_check = match self.host_check {
            HostCheck::Auto => "auto",
            HostCheck::Strict => "strict",
            HostCheck::Off => "off",
        };
        let mut fixed_port = None;
        let mut cmd = match self.kind {
            ServerKind::Python => {
                let mut c = Command::new(venv_python());
                c.arg(peers_dir().join("python").join("server.py"));
                c.args([
                    "--host",
                    &ip,
                    "--port",
                    "0",
                    "--transport",
                    self.transport.arg(),
                ]);
                c.args(["--host-check", host_check, "--record"])
                    .arg(&record);
                c.env("PYTHONUNBUFFERED", "1");
                c
            }
            ServerKind::Node => {
                let mut c = Command::new(node());
                c.arg(node_dir().join("server.mjs"));
                c.args([
                    "--host",
                    &ip,
                    "--port",
                    "0",
                    "--host-check",
                    host_check,
                    "--record",
                ])
                .arg(&record);
                c
            }
            ServerKind::Rmcp => {
                assert_eq!(
                    self.transport,
                    Transport::Streamable,
                    "the rmcp peer serves Streamable HTTP only"
                );
                let mut c = Command::new(rmcp_peer_bin());
                c.arg("--listen").arg(format!("{ip}:0"));
                if self.host_check == HostCheck::Off {
                    c.arg("--any-host");
                }
                c
            }
            ServerKind::Everything => {
                let port = free_port_on(IpAddr::V4(self.ip));
                fixed_port = Some(port);
                let dir = node_dir();
                let mut c = Command::new(node());
                // server-everything calls app.listen(PORT) (all interfaces): the preload pins
                // it to our loopback address.
                c.arg("--import").arg(dir.join("loopback.mjs"));
                c.arg(
                    dir.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
                );
                c.arg(if self.transport == Transport::Sse {
                    "sse"
                } else {
                    "streamableHttp"
                });
                c.env("PORT", port.to_string())
                    .env("MCPWATCH_PEER_HOST", &ip);
                c
            }
        };
        if self.json_response {
            cmd.arg("--json-response");
        }
        if self.stateless {
            cmd.arg("--stateless");
        }
        cmd.args(&self.args);
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(ns) = &self.netns {
            let mut wrapped = Command::new("ip");
            wrapped.args(["netns", "exec", ns]).arg(cmd.get_program()).args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => wrapped.env(k, v),
                    None => wrapped.env_remove(k),
                };
            }
            cmd = wrapped;
        }
        if let Some(cg) = &self.cgroup {
            move_into_cgroup(&mut cmd, cg);
        }
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        cmd.current_dir(peers_dir())
            .stdin(Stdio::null())
            .stdout(log_file(&stdout_path))
            .stderr(log_file(&stderr_path));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {:?} server {:?}: {e}", self.kind, cmd));
        let mut peer = Peer {
            child,
            kind: self.kind,
            addr: SocketAddr::new(IpAddr::V4(self.ip), fixed_port.unwrap_or(0)),
            transport: self.transport,
            record: matches!(self.kind, ServerKind::Python | ServerKind::Node).then_some(record),
            stdout_path,
            stderr_path,
            _dir: dir,
        };
        peer.wait_ready(fixed_port.is_none());
        peer
    }
}

fn log_file(path: &Path) -> File {
    File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()))
}

/// A running server peer; killed (SIGKILL, by PID) and reaped on drop.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    kind: ServerKind,
    addr: SocketAddr,
    transport: Transport,
    record: Option<PathBuf>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// Which implementation this is.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The endpoint for the transport it was built with: `http://ADDR/mcp` or `http://ADDR/sse`.
    pub fn url(&self) -> String {
        match self.transport {
            Transport::Streamable => self.streamable_url(),
            Transport::Sse => self.sse_url(),
        }
    }

    /// `http://ADDR/mcp`.
    pub fn streamable_url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// `http://ADDR/sse` (legacy transport; Node always, Python/Everything with `legacy_sse()`).
    pub fn sse_url(&self) -> String {
        format!("http://{}/sse", self.addr)
    }

    /// Every tools/call the server received, in order, as `{"method","tool","arguments"}`
    /// (Python and Node servers; panics for the others).
    /// The `text` argument of every recorded tools/call that had one (`echo` calls), in
    /// order: what reached the server.
    pub fn recorded_texts(&self) -> Vec<String> {
        self.recorded_calls().iter().filter_map(|c| c["arguments"]["text"].as_str().map(str::to_string)).collect()
    }

    pub fn recorded_calls(&self) -> Vec<Value> {
        self.recorded_lines()
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record line {l:?}: {e}"))
            })
            .collect()
    }

    /// The lines of the server's call record as written (a call whose arguments JSON
    /// cannot hold, a lone surrogate say, is still counted).
    pub fn recorded_lines(&self) -> Vec<String> {
        let Some(path) = &self.record else {
            panic!("{:?} servers do not record tool calls", self.kind);
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
            Err(e) => panic!("reading {}: {e}", path.display()),
        };
        text.lines().map(str::to_string).collect()
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// What the server wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    fn wait_ready(&mut self, from_ready_line: bool) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{:?} server exited before it was ready ({status})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.kind,
                    self.stdout(),
                    self.stderr()
                );
            }
            if from_ready_line {
                let out = self.stdout();
                let ready = out
                    .lines()
                    .find_map(|l| l.strip_prefix("ready "))
                    .map(str::trim);
                if let Some(addr) = ready.and_then(|a| a.parse::<SocketAddr>().ok()) {
                    self.addr = addr;
                }
            }
            if self.addr.port() != 0
                && TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return;
            }
            if start.elapsed() > SERVER_START_TIMEOUT {
                panic!(
                    "{:?} server not ready after {SERVER_START_TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.kind,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which SDK a [`Client`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// `tests/peers/python/client.py` (mcp 2.3.0; negotiates 2026-07-28 when the server can).
    Python,
    /// `tests/peers/node/client.mjs` (TS SDK 1.32.2; always the 2025-11-25 handshake).
    Node,
}

/// One scripted client run: connect to `url`, run the steps, print a JSON line each.
#[derive(Debug, Clone)]
pub struct Client {
    kind: ClientKind,
    url: String,
    transport: Transport,
    mode: Option<String>,
    steps: Vec<Value>,
    env: Vec<(String, String)>,
    cgroup: Option<PathBuf>,
    timeout: Duration,
}

impl Client {
    /// A Python SDK client for `url`.
    pub fn python(url: &str) -> Self {
        Self::new(ClientKind::Python, url)
    }

    /// A TypeScript SDK client for `url`.
    pub fn node(url: &str) -> Self {
        Self::new(ClientKind::Node, url)
    }

    /// A client of the given kind for `url`.
    pub fn new(kind: ClientKind, url: &str) -> Self {
        Self {
            kind,
            url: url.to_owned(),
            transport: Transport::Streamable,
            mode: None,
            steps: Vec::new(),
            env: Vec::new(),
            cgroup: None,
            timeout: CLIENT_TIMEOUT,
        }
    }

    /// Use the legacy HTTP+SSE transport (`url` must then be the `/sse` endpoint).
    pub fn legacy_sse(mut self) -> Self {
        self.transport = Transport::Sse;
        self
    }

    /// Python: `auto` (default: probe 2026-07-28, fall back to initialize), `legacy`
    /// (2025-11-25 initialize handshake) or `2026-07-28`. Node ignores it.
    pub fn mode(mut self, mode: &str) -> Self {
        self.mode = Some(mode.to_owned());
        self
    }

    /// Step: list tools (output `{"op":"list","ok":true,"tools":[...sorted names]}`).
    pub fn list(mut self) -> Self {
        self.steps.push(serde_json::json!({"op": "list"}));
        self
    }

    /// Step: call a tool (output `{"op":"call","tool","ok","is_error","text","content","structured"}`
    /// or `{"op":"call","ok":false,"error":{"kind":"jsonrpc","code","message"}}`).
    pub fn call(mut self, tool: &str, arguments: Value) -> Self {
        self.steps
            .push(serde_json::json!({"op": "call", "tool": tool, "arguments": arguments}));
        self
    }

    /// Extra environment for the client (e.g. `SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Run the client inside this cgroup (v2 directory); it moves itself there before exec.
    pub fn cgroup(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cgroup = Some(dir.into());
        self
    }

    /// Optional cgroup, for callers that hold an `Option<PathBuf>`.
    pub fn maybe_cgroup(mut self, dir: Option<PathBuf>) -> Self {
        self.cgroup = dir;
        self
    }

    /// Kill the client and panic after this long (default 90 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the client; panics (with its stderr) unless it exited 0, i.e. unless every
    /// step got a protocol answer (a JSON-RPC error counts as an answer).
    pub fn run(&self) -> ClientOutput {
        let out = self.try_run();
        if out.exit_code != Some(0) {
            panic!(
                "{:?} client for {} exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.kind,
                self.url,
                out.exit_code,
                out.lines
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
                out.stderr
            );
        }
        out
    }

    /// Runs the client and returns its output whatever its exit code (for tests that
    /// expect a failure: 2 = could not connect, 3 = a step failed below the protocol).
    /// Panics only if it cannot be started, times out, or prints something not JSON.
    pub fn try_run(&self) -> ClientOutput {
        let dir = tempfile::Builder::new()
            .prefix("mcpwatch-client-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir for the client: {e}"));
        let script = dir.path().join("script.json");
        let steps = Value::Array(self.steps.clone());
        std::fs::write(&script, steps.to_string())
            .unwrap_or_else(|e| panic!("writing {}: {e}", script.display()));
        let mut cmd = match self.kind {
            ClientKind::Python => {
                let mut c = Command::new(venv_python());
                c.arg(peers_dir().join("python").join("client.py"))
                    .env("PYTHONUNBUFFERED", "1");
                c
            }
            ClientKind::Node => {
                let mut c = Command::new(node());
                c.arg(node_dir().join("client.mjs"));
                c
            }
        };
        cmd.args(["--url", &self.url, "--transport", self.transport.arg()]);
        if let Some(mode) = &self.mode {
            cmd.args(["--mode", mode]);
        }
        cmd.arg("--timeout")
            .arg(self.timeout.as_secs().max(1).to_string());
        cmd.arg("--script").arg(&script);
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(cg) = &self.cgroup {
            move_into_cgroup(&mut cmd, cg);
        }
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        cmd.current_dir(peers_dir())
            .stdin(Stdio::null())
            .stdout(log_file(&stdout_path))
            .stderr(log_file(&stderr_path));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {:?} client {:?}: {e}", self.kind, cmd));
        let start = Instant::now();
        // The SDK's own timeouts are per request; this bounds the whole run (+ start-up).
        let limit = self.timeout + Duration::from_secs(30);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{:?} client for {} did not finish in {limit:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        self.kind,
                        self.url,
                        std::fs::read_to_string(&stdout_path).unwrap_or_default(),
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for the {:?} client: {e}", self.kind),
            }
        };
        let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let lines = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!(
                        "{:?} client printed a non-JSON line {l:?}: {e}\n--- stderr ---\n{stderr}",
                        self.kind
                    )
                })
            })
            .collect();
        ClientOutput {
            lines,
            exit_code: status.code(),
            stderr,
        }
    }
}

/// What a client run printed.
#[derive(Debug, Clone)]
pub struct ClientOutput {
    /// Every JSON line: first `{"op":"connect",...}`, then one per step.
    pub lines: Vec<Value>,
    /// Exit code (None if killed by a signal): 0 ok, 2 connect failed, 3 transport failure in a step.
    pub exit_code: Option<i32>,
    /// The client's stderr.
    pub stderr: String,
}

impl ClientOutput {
    /// The connect line (`{"op":"connect","ok",...,"protocol_version","server"}`); panics if absent.
    pub fn connect(&self) -> &Value {
        match self.lines.first() {
            Some(l) if l["op"] == "connect" => l,
            _ => panic!(
                "no connect line in client output: {:?}\n--- stderr ---\n{}",
                self.lines, self.stderr
            ),
        }
    }

    /// The protocol version the client negotiated.
    pub fn protocol_version(&self) -> &str {
        self.connect()["protocol_version"]
            .as_str()
            .unwrap_or_default()
    }

    /// The step lines (everything after the connect line).
    pub fn steps(&self) -> &[Value] {
        match self.lines.first() {
            Some(l) if l["op"] == "connect" => &self.lines[1..],
            _ => &self.lines,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every peer pair talks directly (no proxy): if these fail, a proxy test failing
    //! says nothing about mcpwatch.

    use std::io::{Read as _, Write as _};

    use serde_json::json;

    use super::*;

    fn assert_echo_session(out: &ClientOutput, server: &str, tools: &[&str]) {
        assert_eq!(out.connect()["ok"], true, "{:?}", out.lines);
        assert_eq!(out.connect()["server"], server);
        let steps = out.steps();
        assert_eq!(steps[0]["op"], "list");
        let listed: Vec<&str> = steps[0]["tools"]
            .as_array()
            .expect("tools array")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for t in tools {
            assert!(listed.contains(t), "{t} not in {listed:?}");
        }
        assert_eq!(steps[1]["ok"], true, "{:?}", steps[1]);
        assert_eq!(steps[1]["is_error"], false);
    }

    fn python_script(url: &str) -> Client {
        Client::python(url)
            .list()
            .call("echo", json!({"text": "hi there"}))
            .call("add", json!({"a": 2, "b": 40}))
            .call("lookup_customer", json!({"customer_id": "c-7"}))
    }

    #[test]
    fn python_client_and_python_server_with_sse_responses_speak_2026() {
        let server = python_server().spawn();
        let out = python_script(&server.url()).run();
        assert_echo_session(
            &out,
            "mcpwatch-peer-python",
            &[
                "echo",
                "add",
                "lookup_customer",
                "delete_records",
                "read_file",
            ],
        );
        assert_eq!(out.protocol_version(), "2026-07-28");
        let steps = out.steps();
        assert_eq!(steps[1]["text"], "hi there");
        assert_eq!(steps[2]["text"], "42");
        let pii = steps[3]["text"].as_str().expect("text");
        assert!(
            pii.contains("4111 1111 1111 1111")
                && pii.contains("536-22-8741")
                && pii.contains("@example.com"),
            "{pii}"
        );
        let calls = server.recorded_calls();
        let tools: Vec<&str> = calls.iter().filter_map(|c| c["tool"].as_str()).collect();
        assert_eq!(tools, ["echo", "add", "lookup_customer"]);
        assert_eq!(calls[1]["arguments"], json!({"a": 2, "b": 40}));
    }

    #[test]
    fn python_legacy_client_and_json_response_server_use_the_2025_handshake() {
        let server = python_server().json_response().spawn();
        let out = python_script(&server.url()).mode("legacy").run();
        assert_echo_session(&out, "mcpwatch-peer-python", &["echo"]);
        assert_eq!(out.protocol_version(), "2025-11-25");
        assert_eq!(server.recorded_calls().len(), 3);
    }

    #[test]
    fn python_client_and_python_server_over_legacy_sse_on_another_loopback_ip() {
        let server = python_server()
            .legacy_sse()
            .ip(Ipv4Addr::new(127, 0, 0, 23))
            .spawn();
        assert!(server.url().starts_with("http://127.0.0.23:") && server.url().ends_with("/sse"));
        let out = python_script(&server.url())
            .legacy_sse()
            .mode("legacy")
            .run();
        assert_echo_session(&out, "mcpwatch-peer-python", &["echo"]);
        assert_eq!(server.recorded_calls().len(), 3);
    }

    #[test]
    fn node_client_and_node_server_over_streamable_http_and_legacy_sse() {
        let server = node_server().spawn();
        let out = Client::node(&server.streamable_url())
            .list()
            .call("echo", json!({"text": "a"}))
            .call("delete_records", json!({"table": "users"}))
            .run();
        assert_echo_session(
            &out,
            "mcpwatch-peer-node",
            &["echo", "delete_records", "read_file"],
        );
        assert_eq!(out.protocol_version(), "2025-11-25");
        assert_eq!(out.steps()[2]["text"], "deleted 42 records from users");

        let out = Client::node(&server.sse_url())
            .legacy_sse()
            .list()
            .call("echo", json!({"text": "b"}))
            .run();
        assert_echo_session(&out, "mcpwatch-peer-node", &["echo"]);
        let calls = server.recorded_calls();
        let texts: Vec<&Value> = calls.iter().map(|c| &c["arguments"]).collect();
        assert_eq!(
            texts,
            [
                &json!({"text": "a"}),
                &json!({"table": "users"}),
                &json!({"text": "b"})
            ]
        );
    }

    #[test]
    fn node_client_and_python_server_and_back() {
        let py = python_server().spawn();
        let out = Client::node(&py.url())
            .list()
            .call("echo", json!({"text": "x"}))
            .run();
        assert_echo_session(&out, "mcpwatch-peer-python", &["echo"]);
        let node = node_server().json_response().stateless().spawn();
        let out = Client::python(&node.url())
            .list()
            .call("echo", json!({"text": "y"}))
            .run();
        assert_echo_session(&out, "mcpwatch-peer-node", &["echo"]);
        // The TS SDK server only knows the handshake era: the Python client falls back.
        assert_eq!(out.protocol_version(), "2025-11-25");
    }

    #[test]
    fn python_client_and_rmcp_server() {
        let server = rmcp_server().spawn();
        let out = Client::python(&server.url())
            .list()
            .call("echo", json!({"text": "r"}))
            .call("add", json!({"a": 1, "b": 2}))
            .run();
        assert_echo_session(&out, "mcpwatch-peer-rmcp", &["echo", "add"]);
        assert_eq!(out.protocol_version(), "2026-07-28");
        assert_eq!(out.steps()[1]["text"], "r");
        assert_eq!(out.steps()[2]["text"], "3");
    }

    #[test]
    fn node_client_and_server_everything() {
        let server = everything_server().ip(Ipv4Addr::new(127, 0, 0, 24)).spawn();
        let out = Client::node(&server.url())
            .list()
            .call("echo", json!({"message": "hello"}))
            .run();
        assert_echo_session(&out, "mcp-servers/everything", &["echo", "get-sum"]);
        assert_eq!(out.steps()[1]["text"], "Echo: hello");
    }

    #[test]
    fn client_reports_a_connect_failure_with_exit_code_2() {
        let port = free_port();
        let out = Client::python(&format!("http://127.0.0.1:{port}/mcp"))
            .list()
            .try_run();
        assert_eq!(out.exit_code, Some(2));
        assert_eq!(out.connect()["ok"], false);
        let out = Client::node(&format!("http://127.0.0.1:{port}/mcp"))
            .list()
            .try_run();
        assert_eq!(out.exit_code, Some(2));
        assert_eq!(out.connect()["ok"], false);
    }

    /// Sends a raw POST with a rewritten Host header and returns the status line.
    fn status_with_host(addr: SocketAddr, host: &str) -> String {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        write!(
            s,
            "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp.lines().next().unwrap_or_default().to_owned()
    }

    #[test]
    fn loopback_servers_reject_a_rewritten_host_header() {
        let py = python_server().spawn();
        assert!(
            status_with_host(py.addr(), "evil.example").contains(" 421 "),
            "python"
        );
        let node = node_server().spawn();
        assert!(
            status_with_host(node.addr(), "evil.example").contains(" 403 "),
            "node"
        );
        let rmcp = rmcp_server().spawn();
        assert!(
            !status_with_host(rmcp.addr(), "evil.example").contains(" 200 "),
            "rmcp"
        );
        // An unchanged Host passes.
        assert!(status_with_host(rmcp.addr(), &rmcp.addr().to_string()).contains(" 200 "));
    }

    #[test]
    fn free_port_is_bindable_on_loopback() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("free port binds");
    }

    #[test]
    fn cgroup_hook_fails_the_spawn_when_the_cgroup_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("/bin/true");
        move_into_cgroup(&mut cmd, &dir.path().join("no-such-cgroup"));
        let err = cmd.spawn().expect_err("pre_exec must fail");
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }
}
