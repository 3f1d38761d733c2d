//! `cargo xtask bench`, TLS case: what does terminating and re-establishing TLS cost?
//!
//! Most real MCP servers are HTTPS, so the number that matters for them is not the plain-HTTP
//! overhead but this one: the client's TLS session ends at mcpwatchd (a leaf minted by its local
//! CA), and mcpwatchd opens its own TLS connection to the upstream and verifies it in full (no
//! upstream session resumption, by design). Both targets are measured in the same run, with the
//! same client code and the same upstream, and printed as ratios:
//!
//! - `direct-tls`: client --TLS--> upstream;
//! - `nginx-tls`: client --TLS--> nginx (one worker, certificate from an openssl-made bench
//!   CA) --verified TLS (`proxy_ssl_verify on`, upstream keepalive)--> upstream: the peer
//!   that does the same two TLS legs and nothing else, so mcpwatchd's TLS cost has a
//!   comparison;
//! - `mcpwatchd-tls`: client --TLS--> mcpwatchd (static-upstream mode, `[tls] default =
//!   "intercept"`) --verified TLS--> upstream.
//!
//! The upstream is the same rmcp peer as the plain table behind an in-process TLS front (a
//! byte splice after a rustls handshake, certificate from a throwaway bench CA that mcpwatchd is
//! told to trust via `extra_anchors`); the front is on both paths, so it cancels out of the
//! ratio. The load generator runs in this process (tokio + hyper over tokio-rustls); every
//! loop is bounded by the cell's seconds and call count. Loopback only; the daemon is stopped by
//! PID when this returns.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use mcpwatch_tls::rustls::pki_types::{CertificateDer, ServerName};
use mcpwatch_tls::rustls::{self, ClientConfig, RootCertStore};
use mcpwatch_tls::tokio_rustls::{TlsAcceptor, TlsConnector};
use mcpwatch_tls::{CaCertInfo, LeafIssuer, LeafOptions, LocalCa};

use super::Mode;
use crate::daemon::{Daemon, Opts, Upstream};
use crate::util::{section, step};

/// The name both targets are reached by (SNI and Host).
const HOST: &str = "localhost";
/// A worker gives up after this many failed calls (the target is broken, not slow).
const MAX_ERRORS_PER_WORKER: usize = 100;

/// One measured TLS cell.
#[derive(Debug, Clone)]
struct TlsCell {
    target: &'static str,
    mode: Mode,
    concurrency: usize,
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    p50_us: f64,
    p99_us: f64,
    per_sec: f64,
}

/// A target: where to connect and which CA the client trusts there.
#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    tls: TlsConnector,
}

/// Runs the TLS case against `backend` (the plain rmcp peer) and prints its table.
pub fn run(
    backend: SocketAddr,
    scratch: &Path,
    modes: &[Mode],
    levels: &[usize],
    seconds: f64,
    max_calls: usize,
) -> anyhow::Result<Vec<super::Measured>> {
    section("TLS case: client TLS to mcpwatchd + verified TLS upstream, vs direct TLS");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the TLS bench runtime")?;
    let dir = scratch.join("tls");
    std::fs::create_dir_all(&dir).context("creating the TLS scratch dir")?;

    // The upstream: a TLS front for the rmcp peer, certificate from a throwaway bench CA.
    let upstream_ca = Arc::new(
        LocalCa::load_or_create(&dir.join("upstream-ca"), "bench upstream")
            .context("creating the bench upstream CA")?,
    );
    let issuer = LeafIssuer::new(upstream_ca.clone(), LeafOptions::default())?;
    let server_config = issuer.server_config_for(HOST, &[mcpwatch_tls::ALPN_HTTP1_1.to_vec()])?;
    let front = rt.block_on(start_front(server_config, backend))?;
    step(format!("TLS front for the rmcp peer on {front} (certificate for {HOST})"));

    let daemon_dir = dir.join("daemon");
    std::fs::create_dir_all(&daemon_dir).context("creating the daemon dir")?;
    let bin = crate::util::target_dir().join("release").join("mcpwatchd");
    let config = format!(
        "[tls]\ndefault = \"intercept\"\nsystem_roots = false\nextra_anchors = [{:?}]\n",
        upstream_ca.cert_path().display().to_string()
    );
    let daemon = Daemon::start(&Opts {
        bin: &bin,
        upstream: Upstream::Static(front),
        policy: None,
        dir: &daemon_dir,
        log_filter: "warn",
        config: Some(&config),
    })?;
    let daemon_ca = CaCertInfo::read(&daemon_dir.join("state").join("ca"))
        .context("reading mcpwatchd's CA")?;
    step(format!(
        "mcpwatchd on {} intercepting TLS (CA sha256 {})",
        daemon.listen, daemon_ca.fingerprint_sha256
    ));

    let mut targets = vec![Arc::new(Target {
        name: "direct-tls",
        addr: front,
        tls: connector(&upstream_ca.cert_der())?,
    })];
    // nginx-tls: skipped (with the reason) when nginx or openssl is missing.
    let nginx = match start_nginx_tls(&dir.join("nginx"), front, upstream_ca.cert_path()) {
        Ok(Some((guard, addr, ca))) => {
            targets.push(Arc::new(Target { name: "nginx-tls", addr, tls: connector(&ca)? }));
            Some(guard)
        }
        Ok(None) => None,
        Err(e) => {
            step(format!("nginx-tls skipped: {e:#}"));
            None
        }
    };
    targets.extend([
        Arc::new(Target {
            name: "mcpwatchd-tls",
            addr: daemon.listen,
            tls: connector(&CertificateDer::from(daemon_ca.der.clone()))?,
        }),
    ]);
    let mut cells = Vec::new();
    for t in &targets {
        crate::procs::check_interrupted()?;
        rt.block_on(check_answer(t))
            .with_context(|| format!("{}: first call", t.name))?;
        for &mode in modes {
            for &c in levels {
                let cell = rt.block_on(load(t.clone(), mode, c, seconds, max_calls));
                step(format!(
                    "{:<14} {:<9} c={:<2} {:>7} calls {:>4} errors  p50 {:>8.1} us  p99 {:>8.1} us  {:>9.0}/s",
                    t.name,
                    mode_label(mode),
                    c,
                    cell.ok,
                    cell.errors,
                    cell.p50_us,
                    cell.p99_us,
                    cell.per_sec
                ));
                if let Some(e) = &cell.first_error {
                    step(format!("first error: {e}"));
                }
                cells.push(cell);
            }
        }
    }
    let audited = daemon
        .cli(&["status", "--json"])
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v.pointer("/counts/mcp_messages").and_then(serde_json::Value::as_u64));
    print_table(&cells, seconds, max_calls);
    let through: usize = cells
        .iter()
        .filter(|c| c.target == "mcpwatchd-tls")
        .map(|c| c.ok)
        .sum();
    match audited {
        Some(n) if n as usize >= through => println!(
            "mcpwatchd-tls: {n} MCP messages inspected and audited over TLS ({through} measured calls + checks)"
        ),
        Some(n) => println!(
            "note: mcpwatchd counted only {n} MCP messages for {through} calls: the rest were not inspected"
        ),
        None => println!("note: could not read mcpwatchd's counters"),
    }
    let problems = daemon.log_problems(3);
    for p in &problems {
        println!("note: mcpwatchd: {}", p.chars().take(300).collect::<String>());
    }
    drop(daemon);
    drop(nginx);
    drop(rt);
    Ok(cells
        .iter()
        .map(|c| super::Measured {
            target: c.target,
            mode: c.mode,
            concurrency: c.concurrency,
            p50_us: c.p50_us,
            per_sec: c.per_sec,
        })
        .collect())
}

/// nginx terminating TLS (leaf from a throwaway openssl CA) and re-encrypting to `front`
/// with full verification against `upstream_ca`. `Ok(None)` (said on stdout) when nginx or
/// openssl is not installed.
fn start_nginx_tls(
    dir: &Path,
    front: SocketAddr,
    upstream_ca: &Path,
) -> anyhow::Result<Option<(super::ChildGuard, SocketAddr, CertificateDer<'static>)>> {
    let Some(nginx) = crate::util::which("nginx").or_else(|| {
        let p = std::path::PathBuf::from("/usr/sbin/nginx");
        p.exists().then_some(p)
    }) else {
        step("nginx-tls skipped: nginx not installed (cargo xtask setup installs nginx-light)");
        return Ok(None);
    };
    if crate::util::which("openssl").is_none() {
        step("nginx-tls skipped: openssl not installed");
        return Ok(None);
    }
    std::fs::create_dir_all(dir).context("creating the nginx-tls dir")?;
    let openssl = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca_args = vec!["req", "-x509"];
    ca_args.extend(ec);
    ca_args.extend([
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=mcpwatch bench nginx CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
    ]);
    openssl(&ca_args)?;
    let mut csr_args = vec!["req"];
    csr_args.extend(ec);
    csr_args.extend(["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost"]);
    openssl(&csr_args)?;
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .context("writing leaf.ext")?;
    openssl(&[
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "leaf.pem", "-days", "2", "-extfile", "leaf.ext",
    ])?;
    let ca_pem = std::fs::read(dir.join("ca.pem")).context("reading ca.pem")?;
    let ca = rustls_pemfile_cert(&ca_pem)?;
    let addr = super::free_loopback_addr()?;
    let d = dir.display();
    let upstream = format!("upstream backend_tls {{ server {front}; keepalive 32; }}");
    let server = format!(
        "server {{\n    listen {addr} ssl;\n    ssl_certificate {d}/leaf.pem;\n    ssl_certificate_key {d}/leaf.key;\n\
         ssl_protocols TLSv1.3;\n    location / {{\n      proxy_pass https://backend_tls;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n\
         proxy_buffering off;\n      proxy_ssl_verify on;\n      proxy_ssl_trusted_certificate {ca};\n\
         proxy_ssl_name {HOST};\n      proxy_ssl_server_name on;\n      proxy_ssl_protocols TLSv1.3;\n    }}\n  }}",
        ca = upstream_ca.display(),
    );
    let guard = super::spawn_nginx(&nginx, dir, &upstream, &server, addr, "nginx (TLS)")?;
    Ok(Some((guard, addr, ca)))
}

/// The first certificate of a PEM file, as DER.
fn rustls_pemfile_cert(pem: &[u8]) -> anyhow::Result<CertificateDer<'static>> {
    use mcpwatch_tls::rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem).context("parsing the nginx CA PEM")
}

fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::KeepAlive => "keepalive",
        Mode::NewConn => "newconn",
    }
}

/// A TLS client trusting exactly `ca`, offering HTTP/1.1.
fn connector(ca: &CertificateDer<'_>) -> anyhow::Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone().into_owned())
        .context("adding the trust anchor")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![mcpwatch_tls::ALPN_HTTP1_1.to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Terminates TLS on a free loopback port and splices each connection to `backend`.
async fn start_front(
    config: Arc<rustls::ServerConfig>,
    backend: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the TLS front")?;
    let addr = listener.local_addr().context("TLS front address")?;
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else { return };
                let _ = up.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    Ok(addr)
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(t: &Target) -> anyhow::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(t.addr)
        .await
        .with_context(|| format!("connecting to {}", t.addr))?;
    tcp.set_nodelay(true).context("TCP_NODELAY")?;
    let name = ServerName::try_from(HOST).context("server name")?;
    let tls = t
        .tls
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let (sender, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn call(sender: &mut Sender, t: &Target, id: u64, close: bool) -> anyhow::Result<Bytes> {
    let mut b = hyper::Request::post("/mcp")
        .header(hyper::header::HOST, format!("{HOST}:{}", t.addr.port()))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo");
    if close {
        b = b.header(hyper::header::CONNECTION, "close");
    }
    let req = b
        .body(Full::new(super::call_body(id)))
        .context("building the request")?;
    super::send_checked(sender, req).await
}

/// One parsed call before measuring (also mints mcpwatchd's leaf, so no cell pays for it).
async fn check_answer(t: &Target) -> anyhow::Result<()> {
    let mut sender = connect(t).await?;
    let body = call(&mut sender, t, 1, false).await?;
    let v: serde_json::Value = serde_json::from_slice(&body).context("response is not JSON")?;
    let text = v
        .pointer("/result/content/0/text")
        .and_then(|t| t.as_str());
    if text != Some("bench") {
        bail!("unexpected answer: {v}");
    }
    Ok(())
}

/// `concurrency` workers (one task each) until `seconds` pass or `max_calls` calls were issued.
async fn load(t: Arc<Target>, mode: Mode, concurrency: usize, seconds: f64, max_calls: usize) -> TlsCell {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(t.clone(), mode, deadline, issued.clone(), max_calls)))
        .collect();
    let (all, errors, first_error) = super::join_workers(workers).await;
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    TlsCell {
        target: t.name,
        mode,
        concurrency,
        ok: all.len(),
        errors,
        first_error,
        p50_us: super::percentile(&all, 0.50),
        p99_us: super::percentile(&all, 0.99),
        per_sec: all.len() as f64 / elapsed,
    }
}

/// One worker: latencies (us), error count, first error.
async fn worker(
    t: Arc<Target>,
    mode: Mode,
    deadline: Instant,
    issued: Arc<AtomicUsize>,
    max_calls: usize,
) -> (Vec<u32>, usize, Option<String>) {
    let mut lat: Vec<u32> = Vec::new();
    let mut errors = 0usize;
    let mut first_error = None;
    let mut sender: Option<Sender> = None;
    let close = mode == Mode::NewConn;
    while Instant::now() < deadline && errors < MAX_ERRORS_PER_WORKER {
        let n = issued.fetch_add(1, Ordering::Relaxed);
        if n >= max_calls {
            break;
        }
        let t0 = Instant::now();
        if close || sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = match connect(&t).await {
                Ok(s) => Some(s),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
        }
        let Some(s) = sender.as_mut() else { continue };
        match call(s, &t, 1000 + n as u64, close).await {
            Ok(_) => lat.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX)),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
                sender = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (lat, errors, first_error)
}

fn print_table(cells: &[TlsCell], seconds: f64, max_calls: usize) {
    println!();
    println!(
        "TLS case ({seconds} s or {max_calls} calls per cell; client TLS 1.3; mcpwatchd verifies the upstream on every connection)"
    );
    println!(
        "{:<14} {:<9} {:>3} {:>8} {:>6} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}",
        "target", "mode", "c", "calls", "errors", "p50 us", "p99 us", "calls/s", "x p50", "x p99", "x tput"
    );
    for c in cells {
        let base = cells.iter().find(|d| {
            d.target == "direct-tls" && d.mode == c.mode && d.concurrency == c.concurrency
        });
        let ratio = |num: f64, den: f64| {
            if den > 0.0 && num > 0.0 {
                format!("{:.2}x", num / den)
            } else {
                "-".to_string()
            }
        };
        let nginx = cells.iter().find(|d| {
            d.target == "nginx-tls" && d.mode == c.mode && d.concurrency == c.concurrency
        });
        let vs_nginx = match nginx {
            Some(n) if c.target == "mcpwatchd-tls" && n.p50_us > 0.0 && n.per_sec > 0.0 => format!(
                "  (vs nginx-tls: p50 {:.2}x, tput {:.2}x)",
                c.p50_us / n.p50_us,
                c.per_sec / n.per_sec
            ),
            _ => String::new(),
        };
        let (r50, r99, rt) = match base {
            Some(b) if c.target != "direct-tls" => (
                ratio(c.p50_us, b.p50_us),
                ratio(c.p99_us, b.p99_us),
                ratio(c.per_sec, b.per_sec),
            ),
            _ => ("".into(), "".into(), "".into()),
        };
        println!(
            "{:<14} {:<9} {:>3} {:>8} {:>6} {:>10.1} {:>10.1} {:>10.0} {:>8} {:>8} {:>8}{}",
            c.target,
            mode_label(c.mode),
            c.concurrency,
            c.ok,
            c.errors,
            c.p50_us,
            c.p99_us,
            c.per_sec,
            r50,
            r99,
            rt,
            vs_nginx
        );
    }
}
