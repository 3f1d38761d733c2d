//! The local CA's lifecycle (issue 11): rotation while mcpwatchd runs, with the old CA trusted
//! side by side until withdrawn, and X.509 name constraints limiting the CA to the intercepted
//! hosts. Every verdict comes from a real verifier: the Python MCP SDK and Python `ssl`
//! (OpenSSL), `openssl verify`, curl, Node's `tls`, over the intercepted TLS path.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mcpwatch_tests::daemon::{Daemon, DaemonOpts};
use mcpwatch_tests::harness::{self, Watched};
use mcpwatch_tests::peers::{self, Client};
use mcpwatch_tests::tls::{self, CertKind, TestPki};
use serde_json::json;

/// `mcpwatch ca ARGS --state-dir <daemon's> --root <root>`; panics unless it succeeds.
fn ca_cmd(d: &Daemon, root: &Path, args: &[&str]) -> String {
    let state = d.state_dir.display().to_string();
    let root = root.display().to_string();
    let mut a = vec!["ca"];
    a.extend_from_slice(args);
    a.extend(["--state-dir", state.as_str(), "--root", root.as_str()]);
    let out = d.cli(&a);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "mcpwatch {a:?} failed:\n{text}\n{}", d.log_text());
    text
}

/// A filesystem root with a Debian-style anchor directory (`ca install --root`).
fn fake_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("root");
    std::fs::create_dir_all(root.path().join("usr/local/share/ca-certificates")).expect("mkdir");
    root
}

fn anchor(root: &Path) -> PathBuf {
    root.join("usr/local/share/ca-certificates/mcpwatch-ca.crt")
}

/// The DER of every certificate in a PEM file.
fn pem_ders(path: &Path) -> Vec<Vec<u8>> {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    x509_parser::pem::Pem::iter_from_buffer(&pem).filter_map(Result::ok).filter(|p| p.label == "CERTIFICATE").map(|p| p.contents).collect()
}

/// `der` as PEM text (via `openssl x509`).
fn der_to_pem(der: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-inform", "DER"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().expect("stdin").write_all(der).expect("write der");
    let out = child.wait_with_output().expect("openssl output");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("pem")
}

fn write_pem(dir: &Path, name: &str, ders: &[&[u8]]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, ders.iter().map(|d| der_to_pem(d)).collect::<String>()).expect("write pem");
    path
}

/// `openssl verify -CAfile ca leaf`: Ok, or OpenSSL's complaint.
fn openssl_verify(ca: &Path, leaf: &Path) -> Result<(), String> {
    let out = Command::new("openssl").arg("verify").arg("-CAfile").arg(ca).arg(leaf).output().expect("openssl verify");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(()) } else { Err(text) }
}

/// Every file under `dir` (recursively) whose bytes hold the certificate `der`, as DER or PEM.
fn files_holding(dir: &Path, der: &[u8]) -> Vec<PathBuf> {
    let pem_body: String = der_to_pem(der).lines().filter(|l| !l.starts_with("-----")).collect();
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                // Compressed audit chunks are read as well as the raw bytes.
                let bytes = mcpwatch_tests::daemon::readable_bytes(&bytes);
                let flat: String = String::from_utf8_lossy(&bytes).lines().collect();
                if bytes.windows(der.len()).any(|w| w == der) || flat.contains(&pem_body) {
                    found.push(p);
                }
            }
        }
    }
    found
}

#[test]
fn ca_rotates_without_restart_and_withdraw_untrusts_the_old_ca() {
    let pki = TestPki::new();
    let cert = pki.server_cert(CertKind::Valid, "localhost");
    let server = tls::https(peers::python_server().json_response(), &cert).spawn();
    let port = server.addr().port();
    let config = tls::tls_config(&pki, "always = [\"localhost\"]\nrotation_overlap_days = 0");
    let Some(w) = Watched::start_with("ca_rotates_without_restart_and_withdraw_untrusts_the_old_ca", DaemonOpts { ports: Some(port.to_string()), config: Some(config), ..Default::default() }) else { return };
    let d = &w.daemon;
    let url = tls::https_url("localhost", &server);
    let root = fake_root();
    let work = tempfile::tempdir().expect("work dir");
    let pid_before = d.pid();

    // (a) Before rotation: a client trusting the installed anchor (the old CA alone) works.
    ca_cmd(d, root.path(), &["install"]);
    let old_der = tls::pem_file_der(&tls::daemon_ca(d));
    let old_only = write_pem(work.path(), "old-only.pem", &[&old_der]);
    assert_eq!(pem_ders(&anchor(root.path())), vec![old_der.clone()]);
    let out = Client::python(&url).env("SSL_CERT_FILE", old_only.display().to_string()).cgroup(w.cgroup()).call("echo", json!({"text": "before"})).run();
    assert_eq!(out.steps()[0]["text"], "before", "{:?}", out.lines);
    let probe = tls::ssl_probe(Some(w.cgroup()), "127.0.0.1", port, "localhost", &old_only, b"");
    assert_eq!(probe["ok"], true, "{probe}");

    // A connection established before the rotation (leaf from the old CA) stays usable after.
    let mut held = held_connection(w.cgroup(), port, &old_only);

    // (b) Rotate while the daemon runs: the published anchor becomes the bundle (new + old).
    let text = ca_cmd(d, root.path(), &["rotate"]);
    assert!(text.contains("rotated the local CA") && text.contains("published the bundle (2 certificate(s))"), "{text}");
    assert_eq!(d.pid(), pid_before, "no restart");
    assert!(d.try_request(&mcpwatch_api::Request::Status).is_ok(), "daemon still answers");
    let new_der = tls::pem_file_der(&tls::daemon_ca(d));
    assert_ne!(new_der, old_der, "a new CA");
    let (new_spki, _) = tls::spki_and_subject(&new_der);
    let (old_spki, _) = tls::spki_and_subject(&old_der);
    assert_ne!(new_spki, old_spki, "a new key");
    let bundle = anchor(root.path());
    assert_eq!(pem_ders(&bundle), vec![new_der.clone(), old_der.clone()], "published bundle: new, then old");
    assert_eq!(pem_ders(&d.state_dir.join("ca/bundle.pem")), vec![new_der.clone(), old_der.clone()]);
    assert!(!std::fs::read_to_string(&bundle).expect("bundle").contains("PRIVATE"), "never a key");

    // A client trusting the bundle works, and its leaf is signed by the NEW CA.
    let out = Client::python(&url).env("SSL_CERT_FILE", bundle.display().to_string()).cgroup(w.cgroup()).call("echo", json!({"text": "after"})).run();
    assert_eq!(out.steps()[0]["text"], "after", "{:?}", out.lines);
    let probe = tls::ssl_probe(Some(w.cgroup()), "127.0.0.1", port, "localhost", &bundle, b"");
    assert_eq!(probe["ok"], true, "{probe}");
    let leaf = write_pem(work.path(), "leaf.pem", &[&harness::unhex(probe["cert"].as_str().expect("cert"))]);
    let new_only = write_pem(work.path(), "new-only.pem", &[&new_der]);
    openssl_verify(&new_only, &leaf).expect("the leaf chains to the new CA");
    assert!(openssl_verify(&old_only, &leaf).is_err(), "the leaf is not from the old CA");
    assert_eq!(held.finish(), "HTTP/1.1 200 OK", "the connection opened before the rotation still works");
    // A client trusting only the OLD anchor now fails on new connections: the switch happened.
    let probe = tls::ssl_probe(Some(w.cgroup()), "127.0.0.1", port, "localhost", &old_only, b"");
    assert_eq!(probe["ok"], false, "{probe}");
    assert!(probe["error"].as_str().unwrap_or_default().contains("CERTIFICATE_VERIFY_FAILED"), "{probe}");

    // Both CAs are shown, the withdrawal is pending.
    let st = d.status();
    let ca = st.ca.expect("CA in status");
    assert_eq!(ca.current.fingerprint_sha256, tls::fingerprint(&new_der));
    assert_eq!(ca.retired.len(), 1);
    assert_eq!(ca.retired[0].cert.fingerprint_sha256, tls::fingerprint(&old_der));
    assert_eq!(ca.retired[0].withdraw_after_unix, None, "rotation_overlap_days = 0: only `ca withdraw`");
    let status_text = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(status_text.contains("previous CA") && status_text.contains("WITHDRAWAL PENDING") && status_text.contains(&tls::fingerprint(&old_der)), "{status_text}");
    let show = ca_cmd(d, root.path(), &["show"]);
    assert!(show.contains(&tls::fingerprint(&new_der)) && show.contains(&tls::fingerprint(&old_der)) && show.contains("WITHDRAWAL PENDING"), "{show}");

    // (c) Withdraw: the bundle holds the new CA alone, calls keep working, the old CA is in no
    // trust store the tool wrote and no file of the state dir.
    let text = ca_cmd(d, root.path(), &["withdraw"]);
    assert!(text.contains("withdrew 1 previous CA(s)") && text.contains("no trust store holds the withdrawn CA"), "{text}");
    assert_eq!(pem_ders(&bundle), vec![new_der.clone()]);
    assert_eq!(pem_ders(&d.state_dir.join("ca/bundle.pem")), vec![new_der.clone()]);
    let out = Client::python(&url).env("SSL_CERT_FILE", bundle.display().to_string()).cgroup(w.cgroup()).call("echo", json!({"text": "withdrawn"})).run();
    assert_eq!(out.steps()[0]["text"], "withdrawn", "{:?}", out.lines);
    assert_eq!(files_holding(root.path(), &old_der), Vec::<PathBuf>::new(), "old CA left in a trust store");
    assert_eq!(files_holding(&d.state_dir, &old_der), Vec::<PathBuf>::new(), "old CA left in the state dir");
    assert!(d.status().ca.expect("ca").retired.is_empty());
    assert_eq!(server.recorded_calls().len(), 3, "every call reached the server once");
}

/// A TLS connection (through the daemon, from the watched cgroup) opened now and used later.
struct Held {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Held {
    /// Sends an MCP `initialize` over the held connection; returns the HTTP status line.
    fn finish(&mut self) -> String {
        self.child.stdin.take().expect("stdin").write_all(b"go\n").expect("go");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("status line");
        let _ = self.child.wait();
        line.trim().to_string()
    }
}

fn held_connection(cgroup: &Path, port: u16, cafile: &Path) -> Held {
    let script = format!(
        r#"
import json, socket, ssl, sys
ctx = ssl.create_default_context(cafile={cafile:?})
s = ctx.wrap_socket(socket.create_connection(("localhost", {port}), timeout=20), server_hostname="localhost")
print("ready", flush=True)
sys.stdin.readline()
body = json.dumps({{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {{"protocolVersion": "2025-03-26", "capabilities": {{}}, "clientInfo": {{"name": "held", "version": "1"}}}}}}).encode()
s.sendall(b"POST /mcp HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
got = b""
while b"\r\n" not in got:
    chunk = s.recv(4096)
    if not chunk: break
    got += chunk
print(got.split(b"\r\n")[0].decode(), flush=True)
"#,
        cafile = cafile.display().to_string()
    );
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    peers::move_into_cgroup(&mut cmd, cgroup);
    let mut child = cmd.spawn().expect("python3");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready line");
    assert_eq!(line.trim(), "ready", "the held connection's handshake failed");
    Held { child, out }
}

/// Rotation is an operator's decision: refused from inside the watched cgroup.
#[test]
fn ca_rotate_from_inside_the_watched_cgroup_is_refused() {
    let pki = TestPki::new();
    let config = tls::tls_config(&pki, "always = [\"localhost\"]");
    let Some(w) = Watched::start_with("ca_rotate_from_inside_the_watched_cgroup_is_refused", DaemonOpts { ports: Some("9".into()), config: Some(config), ..Default::default() }) else { return };
    let before = tls::pem_file_der(&tls::daemon_ca(&w.daemon));
    let mut cmd = Command::new(mcpwatch_tests::daemon::bin("mcpwatch"));
    cmd.arg("--socket").arg(&w.daemon.socket).args(["ca", "rotate", "--root", "/nonexistent-root"]);
    peers::move_into_cgroup(&mut cmd, w.cgroup());
    let out = cmd.output().expect("mcpwatch");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("refused") && text.contains("watched cgroup"), "{text}");
    assert_eq!(tls::pem_file_der(&tls::daemon_ca(&w.daemon)), before, "the CA is unchanged");
    assert!(w.daemon.status().ca.expect("ca").retired.is_empty());
}

/// A restart mid-overlap: the new CA signs, the old one is still listed and in the bundle; a
/// changed `[tls] always` list re-issues the CA (a rotation with overlap) at the next start.
#[test]
fn ca_survives_restart_mid_overlap_and_scope_change_reissues() {
    let pki = TestPki::new();
    let cert = pki.server_cert(CertKind::Valid, "localhost");
    let server = tls::https(peers::python_server().json_response(), &cert).spawn();
    let state = tempfile::tempdir().expect("state");
    let start = |always: &str| {
        Daemon::start(DaemonOpts {
            static_upstream: Some(server.addr()),
            state_dir: Some(state.path().join("s")),
            config: Some(tls::tls_config(&pki, &format!("always = {always}"))),
            ..Default::default()
        })
    };
    let mut d = start("[\"localhost\"]");
    let root = fake_root();
    let first = tls::pem_file_der(&tls::daemon_ca(&d));
    ca_cmd(&d, root.path(), &["rotate"]);
    let second = tls::pem_file_der(&tls::daemon_ca(&d));
    d.terminate();

    let mut d = start("[\"localhost\"]");
    let ca = d.status().ca.expect("ca");
    assert_eq!(ca.current.fingerprint_sha256, tls::fingerprint(&second), "the new CA signs after restart");
    assert_eq!(ca.retired.len(), 1, "the old CA is still listed");
    assert_eq!(ca.retired[0].cert.fingerprint_sha256, tls::fingerprint(&first));
    assert!(ca.retired[0].withdraw_after_unix.is_some(), "default overlap: withdrawn automatically");
    let bundle = d.state_dir.join("ca/bundle.pem");
    assert_eq!(pem_ders(&bundle), vec![second.clone(), first.clone()]);
    let probe = tls::ssl_probe(None, "127.0.0.1", d.port, "localhost", &bundle, b"");
    assert_eq!(probe["ok"], true, "{probe}");
    let work = tempfile::tempdir().expect("work");
    let leaf = write_pem(work.path(), "leaf.pem", &[&harness::unhex(probe["cert"].as_str().expect("cert"))]);
    openssl_verify(&write_pem(work.path(), "second.pem", &[&second]), &leaf).expect("leaf from the new CA");
    d.terminate();

    // Another host is intercepted now: the constraints change, so the CA is re-issued.
    let d = start("[\"localhost\", \"*.mcp.internal\"]");
    let ca = d.status().ca.expect("ca");
    let third = tls::pem_file_der(&tls::daemon_ca(&d));
    assert_ne!(third, second, "re-issued for the new scope");
    assert!(ca.name_constraints.contains("DNS mcp.internal") && ca.name_constraints.contains("DNS localhost"), "{ca:?}");
    assert_eq!(ca.retired.len(), 2, "{ca:?}");
    assert!(ca.retired.iter().any(|r| r.cert.fingerprint_sha256 == tls::fingerprint(&second) && r.reason.contains("scope")), "{ca:?}");
    assert!(d.log_text().contains("re-issued because the [tls] scope changed"), "{}", d.log_text());
    let probe = tls::ssl_probe(None, "127.0.0.1", d.port, "localhost", &d.state_dir.join("ca/bundle.pem"), b"");
    assert_eq!(probe["ok"], true, "{probe}");
}

/// A TLS server serving `cert`/`key` on loopback until killed; answers each connection with a
/// tiny HTTP response. Returns the child and its port.
fn tls_server(cert: &Path, key: &Path) -> (std::process::Child, u16) {
    let script = r#"
import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(16)
print(ls.getsockname()[1], flush=True)
def serve(c):
    try:
        s = ctx.wrap_socket(c, server_side=True)
        s.recv(4096)
        s.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        s.close()
    except Exception:
        c.close()
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
    let mut child = Command::new("python3").arg("-c").arg(script).arg(cert).arg(key).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("python3 server");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("port line");
    let port = line.trim().parse().unwrap_or_else(|_| panic!("no port from the TLS server: {line:?}"));
    (child, port)
}

/// Each real verifier's verdict on `name` served at `port`, trusting only `ca`.
fn verdicts(ca: &Path, name: &str, port: u16) -> Vec<(&'static str, Result<(), String>)> {
    let python = harness::py_stdin(
        None,
        &format!(
            "import json, socket, ssl\nctx = ssl.create_default_context(cafile={ca:?})\ntry:\n    s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port}), timeout=10), server_hostname={name:?})\n    print(json.dumps({{'ok': True}}))\nexcept Exception as e:\n    print(json.dumps({{'ok': False, 'error': str(e)}}))\n",
            ca = ca.display().to_string()
        ),
        b"",
    );
    let python = if python["ok"] == true { Ok(()) } else { Err(python["error"].to_string()) };
    let host = if name.parse::<std::net::IpAddr>().is_ok() { name.to_string() } else { format!("{name}:{port}:127.0.0.1") };
    let mut curl = Command::new("curl");
    curl.arg("-sS").arg("--max-time").arg("10").arg("--cacert").arg(ca);
    if name.parse::<std::net::IpAddr>().is_err() {
        curl.arg("--resolve").arg(&host);
    }
    let out = curl.arg(format!("https://{name}:{port}/")).output().expect("curl");
    let curl = if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) };
    let node_js = format!(
        "const tls=require('tls'),fs=require('fs');const s=tls.connect({{host:'127.0.0.1',port:{port},servername:{sni},ca:fs.readFileSync({ca:?}),checkServerIdentity:(h,c)=>tls.checkServerIdentity({name:?},c)}},()=>{{console.log('ok');s.end();}});s.on('error',e=>{{console.log('err '+e.code+' '+e.message);}});",
        sni = if name.parse::<std::net::IpAddr>().is_ok() { "undefined".to_string() } else { format!("{name:?}") },
        ca = ca.display().to_string()
    );
    let out = Command::new("node").arg("-e").arg(&node_js).output().expect("node");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let node = if text.trim() == "ok" { Ok(()) } else { Err(text) };
    vec![("python ssl", python), ("curl", curl), ("node tls", node)]
}

/// The CA carries a critical NameConstraints extension limited to the intercepted hosts: a
/// leaf the SAME CA key signs for a listed host verifies, one for an unlisted host (or an IP)
/// is rejected by OpenSSL (`openssl verify`, Python, curl) and Node.
#[test]
fn ca_name_constraints_reject_unlisted_hosts_in_real_verifiers() {
    let d = Daemon::start(DaemonOpts {
        static_upstream: Some("127.0.0.1:9".parse().expect("addr")),
        config: Some("[tls]\nalways = [\"localhost\", \"*.mcp.internal\"]\n".into()),
        ..Default::default()
    });
    let ca_dir = d.state_dir.join("ca");
    let ca_pem = ca_dir.join("ca.pem");
    let ca_der = tls::pem_file_der(&ca_pem);
    let (_, parsed) = x509_parser::parse_x509_certificate(&ca_der).expect("CA parses");
    let ext = parsed
        .extensions()
        .iter()
        .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_NAME_CONSTRAINTS)
        .expect("the CA carries NameConstraints");
    assert!(ext.critical, "NameConstraints is critical");
    let st = d.status().ca.expect("ca");
    assert!(st.name_constraints.contains("DNS localhost") && st.name_constraints.contains("IP 0.0.0.0/0"), "{st:?}");

    // Leaves minted here with the CA's own key, straight from the state dir.
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).expect("ca.key")).expect("CA key");
    let issuer = rcgen::CertificateParams::from_ca_cert_der(&ca_der.clone().into()).expect("params").self_signed(&key).expect("issuer");
    let work = tempfile::tempdir().expect("work");
    let ca_copy = work.path().join("ca.pem");
    std::fs::copy(&ca_pem, &ca_copy).expect("copy CA");
    for (name, allowed) in [("localhost", true), ("a.mcp.internal", true), ("www.bank.example", false), ("127.0.0.1", false)] {
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&leaf_key, &issuer, &key).expect("sign leaf");
        let cert = work.path().join(format!("{name}.pem"));
        let keyf = work.path().join(format!("{name}.key"));
        std::fs::write(&cert, leaf.pem()).expect("leaf");
        std::fs::write(&keyf, leaf_key.serialize_pem()).expect("key");

        let verify = openssl_verify(&ca_copy, &cert);
        assert_eq!(verify.is_ok(), allowed, "openssl verify {name}: {verify:?}");
        if !allowed {
            assert!(verify.unwrap_err().contains("subtree violation"), "openssl names the constraint");
        }
        let (mut server, port) = tls_server(&cert, &keyf);
        let results = verdicts(&ca_copy, name, port);
        mcpwatch_tests::daemon::stop_child(&mut server, std::time::Duration::from_secs(2));
        for (who, got) in results {
            assert_eq!(got.is_ok(), allowed, "{who} on {name}: {got:?}");
        }
    }
}

/// "Intercept everything" cannot be constrained: the CA carries no extension and status says why.
#[test]
fn ca_intercepting_everything_is_unconstrained_and_says_so() {
    let d = Daemon::start(DaemonOpts {
        static_upstream: Some("127.0.0.1:9".parse().expect("addr")),
        config: Some("[tls]\ndefault = \"intercept\"\n".into()),
        ..Default::default()
    });
    let der = tls::pem_file_der(&tls::daemon_ca(&d));
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("CA parses");
    assert!(parsed.extensions().iter().all(|e| e.oid != x509_parser::oid_registry::OID_X509_EXT_NAME_CONSTRAINTS));
    let ca = d.status().ca.expect("ca");
    assert!(ca.unconstrained_reason.as_deref().unwrap_or_default().contains("no name constraint is possible"), "{ca:?}");
    let text = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("name constraints: none ([tls] default = \"intercept\""), "{text}");
}
