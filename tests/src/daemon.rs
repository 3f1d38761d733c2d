//! A real `mcpwatchd` process for tests: temp state dir, private control socket, its
//! own listen port, optionally attached to a test cgroup.
//!
//! The binaries are found next to the test executable (`target/<profile>/`), so run
//! `cargo build --bins` first; `cargo xtask test` does.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mcpwatch_api::{AuditFilter, AuditRecord, Request, Response, ServerEntry, Status};

/// `target/<profile>/<name>`, next to the running test binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: run `cargo build --workspace --bins` (or `cargo xtask test`)", p.display());
    p
}

/// A free TCP port on both 127.0.0.1 and [::1].
pub fn free_dual_port() -> u16 {
    for _ in 0..50 {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind v4");
        let port = v4.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free dual-stack loopback port");
}

#[derive(Debug, Clone, Default)]
pub struct DaemonOpts {
    /// Attach eBPF to this cgroup (None: static upstream mode, no eBPF).
    pub cgroup: Option<PathBuf>,
    pub static_upstream: Option<SocketAddr>,
    pub ports: Option<String>,
    pub failure_mode: Option<&'static str>,
    /// Reuse a state dir (restart tests).
    pub state_dir: Option<PathBuf>,
    pub config: Option<String>,
    pub extra_args: Vec<String>,
    /// Run the daemon itself inside this cgroup (loop-avoidance tests).
    pub run_in_cgroup: Option<PathBuf>,
    /// Policy file contents (written to the daemon's temp dir and passed as --policy).
    pub policy: Option<String>,
    /// Run the daemon as this uid/gid with exactly these capabilities (names as in a
    /// systemd unit, e.g. `CAP_BPF`) as bounding, inheritable and ambient sets, and
    /// no_new_privs: how the systemd unit runs it. The temp dir is handed to that uid.
    pub run_as: Option<RunAs>,
    /// Extra environment variables for the daemon (e.g. NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub caps: Vec<String>,
}

pub struct Daemon {
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(opts: DaemonOpts) -> Daemon {
        let tmp = tempfile::Builder::new().prefix("mcpwatch-it-").tempdir().expect("tempdir");
        let state_dir = opts.state_dir.clone().unwrap_or_else(|| tmp.path().join("state"));
        let socket = tmp.path().join("control.sock");
        let log = tmp.path().join("mcpwatchd.log");
        let port = free_dual_port();
        let mut cmd = match &opts.run_as {
            None => Command::new(bin("mcpwatchd")),
            Some(r) => {
                std::os::unix::fs::chown(tmp.path(), Some(r.uid), Some(r.gid)).expect("chown temp dir");
                let caps = r.caps.iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase())).collect::<Vec<_>>().join(",");
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", r.uid)).arg(format!("--regid={}", r.gid)).arg("--clear-groups").arg("--no-new-privs")
                    .arg(format!("--inh-caps=-all,{caps}")).arg(format!("--ambient-caps=-all,{caps}"))
                    .arg(format!("--bounding-set=-all,{caps}")).arg("--").arg(bin("mcpwatchd"));
                c
            }
        };
        cmd.arg("--state-dir").arg(&state_dir)
            .arg("--control-socket").arg(&socket)
            .arg("--listen-port").arg(port.to_string());
        if let Some(c) = &opts.cgroup {
            cmd.arg("--cgroup").arg(c);
        }
        if let Some(u) = opts.static_upstream {
            cmd.arg("--static-upstream").arg(u.to_string());
        }
        if let Some(p) = &opts.ports {
            cmd.arg("--ports").arg(p);
        }
        if let Some(f) = opts.failure_mode {
            cmd.arg("--failure-mode").arg(f);
        }
        if let Some(cfg) = &opts.config {
            let path = tmp.path().join("mcpwatchd.toml");
            std::fs::write(&path, cfg).expect("write config");
            cmd.arg("--config").arg(path);
        }
        if let Some(policy) = &opts.policy {
            let path = tmp.path().join("policy.toml");
            std::fs::write(&path, policy).expect("write policy");
            cmd.arg("--policy").arg(path);
        }
        cmd.args(&opts.extra_args);
        cmd.envs(opts.env.iter().cloned());
        if let Some(cg) = &opts.run_in_cgroup {
            crate::peers::move_into_cgroup(&mut cmd, cg);
        }
        let logf = std::fs::File::create(&log).expect("log file");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(logf)
            .env("MCPWATCH_LOG", "mcpwatchd=debug,info");
        let child = cmd.spawn().expect("spawn mcpwatchd");
        let mut d = Daemon { child: Some(child), _tmp: Some(tmp), state_dir, socket, port, log };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(st)) = child.try_wait()
            {
                panic!("mcpwatchd exited during start ({st}):\n{}", self.log_text());
            }
            if let Ok(Response::Status(_)) = self.try_request(&Request::Status) {
                return;
            }
            assert!(Instant::now() < deadline, "mcpwatchd not ready after 30s:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn try_request(&self, req: &Request) -> std::io::Result<Response> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let line = mcpwatch_api::wire::encode(req).map_err(std::io::Error::other)?;
        s.write_all(&line)?;
        let mut r = BufReader::new(s);
        // A large audit answer comes in parts (`AuditPart`s, then `Audit`): merged here.
        let mut parts: Vec<mcpwatch_api::AuditRecord> = Vec::new();
        loop {
            let mut buf = String::new();
            r.read_line(&mut buf)?;
            match mcpwatch_api::wire::decode(buf.as_bytes()).map_err(std::io::Error::other)? {
                Response::AuditPart { records } => parts.extend(records),
                Response::Audit { records } if !parts.is_empty() => {
                    parts.extend(records);
                    return Ok(Response::Audit { records: parts });
                }
                other => return Ok(other),
            }
        }
    }

    pub fn request(&self, req: &Request) -> Response {
        self.try_request(req).unwrap_or_else(|e| panic!("control request {req:?} failed: {e}\n{}", self.log_text()))
    }

    pub fn status(&self) -> Status {
        match self.request(&Request::Status) {
            Response::Status(s) => s,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn list(&self) -> Vec<ServerEntry> {
        match self.request(&Request::List) {
            Response::List { servers } => servers,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn audit(&self) -> Vec<AuditRecord> {
        match self.request(&Request::Audit { filter: AuditFilter { limit: Some(10_000), ..Default::default() } }) {
            Response::Audit { records } => records,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Poll the audit log until `pred` holds for the records (all of them), or panic.
    pub fn wait_audit(&self, what: &str, pred: impl Fn(&[AuditRecord]) -> bool) -> Vec<AuditRecord> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let recs = self.audit();
            if pred(&recs) {
                return recs;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; records:\n{}\nlog:\n{}", serde_json::to_string_pretty(&recs).unwrap_or_default(), self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run the `mcpwatch` CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("mcpwatch")).arg("--socket").arg(&self.socket).args(args).output().expect("run mcpwatch")
    }

    fn signal(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM)
    }

    /// SIGKILL and wait.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGKILL)
    }

    /// Path of the policy file passed with `DaemonOpts::policy`.
    pub fn policy_path(&self) -> PathBuf {
        self._tmp.as_ref().map(|t| t.path().join("policy.toml")).unwrap_or_default()
    }

    /// Wait until `mcpwatch pending` shows `n` held calls; returns them.
    pub fn wait_pending(&self, n: usize) -> Vec<mcpwatch_api::HeldCall> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Response::Pending { calls } = self.request(&Request::Pending)
                && calls.len() >= n
            {
                return calls;
            }
            assert!(Instant::now() < deadline, "no held call after 20s:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Keep the state dir alive past this daemon (restart tests).
    pub fn keep_state(&mut self) -> tempfile::TempDir {
        self._tmp.take().expect("state tempdir")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(10));
        }
    }
}

/// Stop a child this test started, by its PID: SIGTERM, then SIGKILL after `grace`.
pub fn stop_child(child: &mut Child, grace: Duration) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A file of a state dir as someone who knows the audit store's layout reads it: its bytes,
/// then what every compressed chunk in it holds. The store keeps record chunks as LZ4
/// blocks (`\0mwc\x02`, the encoding's length, the block's length, the block;
/// docs/audit-store.md), so a search of the raw bytes alone would not see inside them.
pub fn readable_bytes(bytes: &[u8]) -> Vec<u8> {
    const MAGIC_LZ4: &[u8] = b"\0mwc\x02";
    let mut out = bytes.to_vec();
    let mut at = 0;
    while let Some(i) = bytes[at..].windows(MAGIC_LZ4.len()).position(|w| w == MAGIC_LZ4) {
        let start = at + i + MAGIC_LZ4.len();
        at = start;
        let Some(header) = bytes.get(start..start + 8) else { break };
        let raw = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let packed = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if raw > 1 << 20 {
            continue;
        }
        if let Some(block) = bytes.get(start + 8..start + 8 + packed)
            && let Ok(plain) = lz4_flex::block::decompress(block, raw)
        {
            out.extend_from_slice(&plain);
        }
    }
    out
}
