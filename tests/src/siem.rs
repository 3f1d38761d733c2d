//! Real SIEM-side components for the sink and metrics tests: rsyslog and Prometheus
//! (Debian packages, installed by `cargo xtask setup`), started as non-daemons with
//! their own config in a temp dir, on loopback, on OS-picked ports, and stopped by PID
//! on drop. Plus a small HTTP receiver for the protocols whose real server is not
//! available here (Splunk HEC, Grafana Loki), and a plain HTTP GET for their APIs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::peers::free_port;

/// Stop a child we started: SIGTERM, then SIGKILL after 5 s.
fn stop_child(child: &mut Child) {
    crate::daemon::stop_child(child, Duration::from_secs(5));
}

/// Poll `ready` until it holds; panic with the child's stderr log if it exits first or
/// `secs` pass.
fn wait_ready(child: &mut Child, log: &Path, what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited ({st}): {}", log_text());
        }
        if ready() {
            return;
        }
        assert!(Instant::now() < deadline, "{what} not ready after {secs} s: {}", log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Is `name` on PATH (or in /usr/sbin)? Tests fail with a setup hint when it is not.
pub fn require_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/usr/bin"]) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed: run `cargo xtask setup` (it installs the Debian packages rsyslog, rsyslog-gnutls and prometheus)");
}

/// rsyslogd with imtcp on a loopback port, writing every message it receives to a file
/// as `<facility>|<severity>|<app-name>|<structured-data>|<msg>` lines.
pub struct Rsyslog {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
    pub out: PathBuf,
    log: PathBuf,
}

impl Rsyslog {
    /// Start on `port` (pick one with [`free_port`]); returns once the port accepts.
    pub fn start(port: u16) -> Rsyslog {
        Rsyslog::start_with(port, None)
    }

    /// Syslog over TLS (RFC 5425, rsyslog's gtls driver) with this certificate and key.
    pub fn start_tls(port: u16, cert: &Path, key: &Path) -> Rsyslog {
        Rsyslog::start_with(port, Some((cert, key)))
    }

    fn start_with(port: u16, tls: Option<(&Path, &Path)>) -> Rsyslog {
        let bin = require_tool("rsyslogd");
        let dir = tempfile::Builder::new().prefix("mcpwatch-rsyslog-").tempdir().expect("tempdir");
        let out = dir.path().join("messages.log");
        let conf = dir.path().join("rsyslog.conf");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).expect("work dir");
        let (tls_global, tls_module) = match tls {
            None => (String::new(), String::new()),
            Some((cert, key)) => (
                // gtls wants a CA file even when it does not authenticate clients.
                format!(
                    " defaultNetstreamDriver=\"gtls\" defaultNetstreamDriverCAFile=\"{cert}\" defaultNetstreamDriverCertFile=\"{cert}\" defaultNetstreamDriverKeyFile=\"{key}\"",
                    cert = cert.display(),
                    key = key.display()
                ),
                " streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=\"anon\"".to_string(),
            ),
        };
        std::fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{work}\" maxMessageSize=\"64k\"{tls_global})\n\
                 module(load=\"imtcp\"{tls_module})\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
                 template(name=\"fields\" type=\"string\" string=\"%syslogfacility-text%|%syslogseverity-text%|%app-name%|%structured-data%|%msg%\\n\")\n\
                 *.* action(type=\"omfile\" file=\"{out}\" template=\"fields\")\n",
                work = work.display(),
                out = out.display(),
            ),
        )
        .expect("write rsyslog.conf");
        let log = dir.path().join("rsyslogd.stderr");
        let child = Command::new(bin)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn rsyslogd");
        let mut r = Rsyslog { child, _dir: dir, port, out, log };
        wait_ready(&mut r.child, &r.log, "rsyslogd", 15, || TcpStream::connect(("127.0.0.1", port)).is_ok());
        r
    }

    /// Lines written so far.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out).unwrap_or_default().lines().map(str::to_string).collect()
    }

    pub fn stop(mut self) {
        stop_child(&mut self.child);
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Prometheus scraping one target every second, with its own TSDB in a temp dir.
pub struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    pub fn start(target: SocketAddr) -> Prometheus {
        let bin = require_tool("prometheus");
        let dir = tempfile::Builder::new().prefix("mcpwatch-prometheus-").tempdir().expect("tempdir");
        let conf = dir.path().join("prometheus.yml");
        std::fs::write(
            &conf,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: mcpwatch\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = dir.path().join("prometheus.stderr");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn prometheus");
        let mut p = Prometheus { child, _dir: dir, addr, log };
        wait_ready(&mut p.child, &p.log, "prometheus", 30, || http_get(addr, "/-/ready").is_some_and(|(s, _)| s == 200));
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/api/v1/query` result vector (`data.result`), or `None` on any error.
    pub fn query(&self, promql: &str) -> Option<Vec<serde_json::Value>> {
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={}", url_encode(promql)))?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        v["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Percent-encode a query parameter value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// A one-shot HTTP/1.0 GET (no chunked answers); `(status, body)` or `None` when the
/// connection fails.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, buf[end + 4..].to_vec()))
}

/// One request a [`Receiver`] accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 collector on a fixed loopback port that records every request and
/// answers `status`. It can be stopped and started again on the same port (a receiver
/// that is down, then back).
pub struct Receiver {
    pub port: u16,
    pub got: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    pub fn start(port: u16, status: u16) -> Receiver {
        Receiver::start_sharing(port, status, Arc::new(Mutex::new(Vec::new())))
    }

    /// Start on `port`, appending to an existing request log.
    pub fn start_sharing(port: u16, status: u16, got: Arc<Mutex<Vec<Received>>>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (got2, stop2) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        if let Some(r) = read_request(s, status) {
                            got2.lock().expect("lock").push(r);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Receiver { port, got, stop, thread: Some(thread) }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// Close the listening socket (connections are then refused).
    pub fn stop(mut self) -> Arc<Mutex<Vec<Received>>> {
        self.halt();
        self.got.clone()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.halt();
    }
}

fn read_request(mut s: TcpStream, status: u16) -> Option<Received> {
    s.set_nonblocking(false).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if crate::harness::http_request_complete(&buf) {
            break;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers = lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let reason = if status < 300 { "OK" } else { "Error" };
    let _ = s.write_all(format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
    Some(Received { method, path, headers, body: buf[end + 4..].to_vec() })
}

/// Poll `f` until it returns `Some`, or panic with `what` after `secs`.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
