//! HTTPS through mcpwatchd: real SDK clients and real HTTPS MCP servers on loopback, TLS
//! terminated with the daemon's local CA and re-established, verified, to the upstream
//! (issue 3). Upstream certificates come from a test-only CA the daemon is configured to trust.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mcpwatch_api::{AuditRecord, CallStatus, MessageKind};
use mcpwatch_tests::daemon::{Daemon, DaemonOpts};
use mcpwatch_tests::harness::{self, RawBehaviour, RawServer, Watched};
use mcpwatch_tests::peers::{self, Client, HostCheck};
use mcpwatch_tests::tls::{self, hello, CertKind, TestPki};
use serde_json::{json, Value};

fn call_record<'a>(recs: &'a [AuditRecord], tool: &str) -> Option<&'a AuditRecord> {
    recs.iter().find(|r| r.method.as_deref() == Some("tools/call") && r.name.as_deref() == Some(tool) && r.status != CallStatus::Pending)
}

/// Asserts an intercepted call was audited with its tool, its arguments' hash (the hash of
/// what the server actually received) and the TLS details of the verified upstream.
fn assert_intercepted_call(recs: &[AuditRecord], tool: &str, received: &Value, url: &str, upstream: &tls::ServerCert, state_dir: &Path) {
    let rec = call_record(recs, tool).unwrap_or_else(|| panic!("no completed {tool} record: {recs:#?}"));
    assert_eq!(rec.status, CallStatus::Ok, "{rec:?}");
    assert_eq!(rec.scheme, "https");
    assert_eq!(rec.server, url);
    // Keyed with the host's key (never a plain sha256 an attacker could brute-force).
    let key = std::fs::read(state_dir.join("hash.key")).expect("hash.key");
    let expected = mcpwatch_mcp::keyed::HashKey::new(&key).hash_json(&received["arguments"]);
    assert_eq!(rec.args_hash.as_deref(), Some(expected.as_str()), "{rec:?}");
    assert!(rec.result_hash.is_some(), "{rec:?}");
    let t = rec.tls.as_ref().unwrap_or_else(|| panic!("no TLS details: {rec:?}"));
    assert_eq!(t.sni.as_deref(), Some("localhost"));
    assert_eq!(t.upstream_fingerprint.as_deref(), Some(tls::fingerprint(&upstream.der).as_str()));
    assert!(t.upstream_issuer.as_deref().unwrap_or_default().contains(tls::UPSTREAM_CA_CN), "{t:?}");
    assert_eq!(t.client_version.as_deref(), Some("TLSv1.3"), "{t:?}");
    assert!(t.upstream_version.as_deref().unwrap_or_default().starts_with("TLSv1."), "{t:?}");
    assert!(!t.insecure);
    // Every record of this server came over TLS.
    assert!(recs.iter().filter(|r| r.server == url).all(|r| r.scheme == "https" && r.tls.is_some()), "{recs:#?}");
}

#[test]
fn python_sdk_over_https_is_intercepted_and_audited() {
    let pki = TestPki::new();
    let cert = pki.server_cert(CertKind::Valid, "localhost");
    let server = tls::https(peers::python_server().json_response(), &cert).spawn();
    let port = server.addr().port();
    let config = tls::tls_config(&pki, "always = [\"localhost\"]");
    let Some(w) = Watched::start_with("python_sdk_over_https_is_intercepted_and_audited", DaemonOpts { ports: Some(port.to_string()), config: Some(config), ..Default::default() }) else { return };
    let url = tls::https_url("localhost", &server);
    let out = Client::python(&url)
        .env("SSL_CERT_FILE", tls::daemon_ca(&w.daemon).display().to_string())
        .cgroup(w.cgroup())
        .list()
        .call("echo", json!({"text": "through TLS"}))
        .run();
    assert_eq!(out.steps()[1]["text"], "through TLS", "{:?}", out.lines);
    let calls = server.recorded_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["tool"], "echo");

    let recs = w.daemon.wait_audit("the echo call over TLS", |r| call_record(r, "echo").is_some());
    assert_intercepted_call(&recs, "echo", &calls[0], &url, &cert, &w.daemon.state_dir);
    let p = call_record(&recs, "echo").and_then(|r| r.process.as_ref()).expect("process identity");
    assert!(p.exe.as_deref().unwrap_or_default().contains("python"), "{p:?}");

    let s = w.daemon.list().into_iter().find(|s| s.endpoint == url).unwrap_or_else(|| panic!("{url} not in the inventory"));
    assert_eq!(s.server_name.as_deref(), Some("mcpwatch-peer-python"));
    assert!(s.tools.iter().any(|t| t.name == "echo" && t.hash.len() == 64), "{:?}", s.tools);
    assert_eq!(s.call_count, 1);
    assert!(s.alerts.iter().all(|a| !a.contains("TLS")), "{:?}", s.alerts);
    assert!(w.daemon.status().warnings.iter().all(|x| !x.contains("TLS not inspectable")));
}

#[test]
fn node_sdk_over_https_is_intercepted_and_audited() {
    let pki = TestPki::new();
    let cert = pki.server_cert(CertKind::Valid, "localhost");
    let server = tls::https(peers::node_server(), &cert).spawn();
    let port = server.addr().port();
    let config = tls::tls_config(&pki, "always = [\"localhost\"]");
    let Some(w) = Watched::start_with("node_sdk_over_https_is_intercepted_and_audited", DaemonOpts { ports: Some(port.to_string()), config: Some(config), ..Default::default() }) else { return };
    let url = tls::https_url("localhost", &server);
    let out = Client::node(&url)
        .env("NODE_EXTRA_CA_CERTS", tls::daemon_ca(&w.daemon).display().to_string())
        .cgroup(w.cgroup())
        .list()
        .call("add", json!({"a": 40, "b": 2}))
        .run();
    assert_eq!(out.steps()[1]["text"], "42", "{:?}", out.lines);
    let calls = server.recorded_calls();
    assert_eq!(calls.len(), 1);

    let recs = w.daemon.wait_audit("the add call over TLS", |r| call_record(r, "add").is_some());
    assert_intercepted_call(&recs, "add", &calls[0], &url, &cert, &w.daemon.state_dir);
    let call = call_record(&recs, "add").expect("add");
    assert!(call.session_id.is_some(), "sessions tracked over TLS: {call:?}");
    assert!(call.process.as_ref().and_then(|p| p.exe.as_deref()).unwrap_or_default().ends_with("node"), "{call:?}");
    let s = w.daemon.list().into_iter().find(|s| s.endpoint == url).expect("inventory entry");
    assert_eq!(s.server_name.as_deref(), Some("mcpwatch-peer-node"));
    assert!(s.tools.iter().any(|t| t.name == "add"), "{:?}", s.tools);
}

#[test]
fn client_that_distrusts_the_ca_fails_is_reported_and_is_not_passed_through() {
    let pki = TestPki::new();
    let cert = pki.server_cert(CertKind::Valid, "localhost");
    let server = tls::https(peers::python_server().json_response(), &cert).spawn();
    let port = server.addr().port();
    let config = tls::tls_config(&pki, "always = [\"localhost\"]\ndistrust_backoff_secs = 600");
    let Some(w) = Watched::start_with("client_that_distrusts_the_ca_fails_is_reported_and_is_not_passed_through", DaemonOpts { ports: Some(port.to_string()), config: Some(config), ..Default::default() }) else { return };
    let url = tls::https_url("localhost", &server);

    // Trusts the upstream's CA only, not mcpwatch's: the intercepted handshake fails.
    let out = Client::python(&url).env("SSL_CERT_FILE", pki.ca_pem.display().to_string()).cgroup(w.cgroup()).list().try_run();
    assert_eq!(out.exit_code, Some(2), "handshake must fail: {:?}\n{}", out.lines, out.stderr);
    assert!(server.recorded_calls().is_empty());

    let warning = w
        .daemon
        .status()
        .warnings
        .into_iter()
        .find(|x| x.contains("TLS not inspectable: client") && x.contains("does not trust the mcpwatch CA for localhost"))
        .unwrap_or_else(|| panic!("no distrust warning in status:\n{}", w.daemon.log_text()));
    assert!(warning.contains("python"), "{warning}");
    let text = String::from_utf8_lossy(&w.daemon.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("TLS not inspectable"), "{text}");
    let origin = format!("https://localhost:{port}");
    let entry = w.daemon.list().into_iter().find(|s| s.endpoint == origin).expect("inventory entry for the host");
    assert!(entry.alerts.iter().any(|a| a.contains("does not trust the mcpwatch CA")), "{:?}", entry.alerts);
    let recs = w.daemon.wait_audit("distrust record", |r| r.iter().any(|x| x.server == origin));
    let rec = recs.iter().find(|x| x.server == origin).expect("record");
    assert_eq!(rec.kind, MessageKind::Invalid);
    assert!(matches!(&rec.status, CallStatus::TransportError { reason } if reason.contains("does not trust the mcpwatch CA")), "{rec:?}");
    // TLS connection records are begun like message records: they name their host.
    crate::record::assert_host_stamp(rec);

    // The back-off is per process (pid + start time) and host, and the default policy enforces:
    // the next process of the same executable is intercepted again (and fails again), never
    // passed through uninspected. Same-process pass-through (`tls.distrust = "pass_through"`)
    // is covered in `bypass_conn`.
    let out = Client::python(&url).env("SSL_CERT_FILE", pki.ca_pem.display().to_string()).cgroup(w.cgroup()).call("echo", json!({"text": "uninspected"})).try_run();
    assert_eq!(out.exit_code, Some(2), "not passed through: {:?}\n{}", out.lines, out.stderr);
    assert!(server.recorded_calls().is_empty());
    assert!(call_record(&w.daemon.audit(), "echo").is_none());
}

/// The client in a watched cgroup sends `payload` (already containing a ClientHello) over a
/// plain socket and reports what came back and what the server's peer address was.
const RAW_TLS_CLIENT: &str = r#"
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
payload = sys.stdin.buffer.read()
s = socket.create_connection((host, port), timeout=20)
s.sendall(payload)
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    chunk = s.recv(65536)
    if not chunk: break
    got += chunk
print(json.dumps({"got": got.hex()}))
"#;

#[test]
fn pass_through_host_is_byte_identical_and_keeps_its_certificate() {
    let pki = TestPki::new();
    let cert = pki.server_cert(CertKind::Valid, "localhost");
    let server = tls::https(peers::python_server().json_response(), &cert).spawn();
    let echo = RawServer::start("127.0.0.1:0", RawBehaviour { echo: true, ..Default::default() });
    let ports = format!("{},{}", server.addr().port(), echo.addr.port());
    // Intercept by default, but never this host.
    let config = tls::tls_config(&pki, "default = \"intercept\"\nnever = [\"localhost\"]");
    let Some(w) = Watched::start_with("pass_through_host_is_byte_identical_and_keeps_its_certificate", DaemonOpts { ports: Some(ports), config: Some(config), ..Default::default() }) else { return };

    // The client sees the upstream's own certificate (it trusts only the test CA).
    let probe = tls::ssl_probe(Some(w.cgroup()), "127.0.0.1", server.addr().port(), "localhost", &pki.ca_pem, b"");
    assert_eq!(probe["ok"], true, "{probe}");
    assert_eq!(harness::unhex(probe["cert"].as_str().unwrap()), cert.der, "client saw the upstream certificate");
    let out = Client::python(&tls::https_url("localhost", &server)).env("SSL_CERT_FILE", pki.ca_pem.display().to_string()).cgroup(w.cgroup()).call("echo", json!({"text": "private"})).run();
    assert_eq!(out.steps()[0]["text"], "private");
    assert_eq!(server.recorded_calls().len(), 1);

    // Byte-identical: the replayed ClientHello and everything after it reach the server as sent.
    let mut payload = hello::client_hello(Some(b"localhost"));
    payload.extend((0..=255u8).cycle().take(100_000));
    let script = format!("import sys; sys.argv=['c', '127.0.0.1', '{}']\n{RAW_TLS_CLIENT}", echo.addr.port());
    let r = harness::py_stdin(Some(w.cgroup()), &script, &payload);
    assert_eq!(harness::unhex(r["got"].as_str().unwrap()), payload, "echoed byte-identical");
    assert_eq!(echo.seen().len(), 1);
    assert_eq!(echo.seen()[0].bytes, payload, "server received exactly the client's bytes");

    assert!(w.daemon.audit().is_empty(), "nothing inspected: {:#?}", w.daemon.audit());
    let st = w.daemon.status();
    assert!(st.counts.passthrough >= 3, "{st:?}");
    assert_eq!(st.counts.mcp_messages, 0);
}

/// The `tls` threat cases with a broken upstream certificate (TLS-001 self-signed, TLS-002
/// expired), plus a certificate for another name.
fn invalid_upstream_cases() -> Vec<(String, CertKind, &'static str)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/threats.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("threat corpus {path}: {e}"));
    let mut cases = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let c: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("bad case line {line}: {e}"));
        let Some(up) = c["input"].get("upstream_cert") else { continue };
        assert_eq!(c["expected"]["action"], "block", "{c}");
        let id = c["id"].as_str().expect("id").to_string();
        if up["self_signed"] == true {
            cases.push((id, CertKind::SelfSigned, "self-signed"));
        } else if let Some(after) = up["notAfter"].as_str() {
            let ts = x509_time(after);
            cases.push((id, CertKind::Expired { not_after_unix: ts }, "expired"));
        } else {
            panic!("upstream_cert case {id} not understood: {up}");
        }
    }
    assert!(cases.iter().any(|c| c.0 == "TLS-001") && cases.iter().any(|c| c.0 == "TLS-002"), "{cases:?}");
    cases.push(("wrong-name".into(), CertKind::WrongName, "not valid for the server name"));
    cases
}

/// `2015-04-12T23:59:59Z` → Unix seconds.
fn x509_time(s: &str) -> i64 {
    let (date, time) = s.trim_end_matches('Z').split_once('T').expect("date T time");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().expect("date")).collect();
    let t: Vec<i64> = time.split(':').map(|x| x.parse().expect("time")).collect();
    // Days from civil (Howard Hinnant).
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]
}

#[test]
fn invalid_upstream_certificates_fail_the_client_and_are_audited() {
    let pki = TestPki::new();
    let cases = invalid_upstream_cases();
    let servers: Vec<_> = cases
        .iter()
        .map(|(id, kind, _)| {
            let cert = pki.server_cert(*kind, "localhost");
            let server = tls::https(peers::python_server().json_response(), &cert).spawn();
            (id.clone(), cert, server)
        })
        .collect();
    // A self-signed server reached by IP is on the insecure list: it works, and says so.
    let insecure_cert = pki.server_cert(CertKind::SelfSigned, "127.0.0.1");
    let insecure = tls::https(peers::python_server().json_response().host_check(HostCheck::Off), &insecure_cert).spawn();
    let mut ports: Vec<String> = servers.iter().map(|s| s.2.addr().port().to_string()).collect();
    ports.push(insecure.addr().port().to_string());
    let config = tls::tls_config(&pki, "always = [\"localhost\", \"127.0.0.1\"]\ninsecure_hosts = [\"127.0.0.1\"]");
    let Some(w) = Watched::start_with("invalid_upstream_certificates_fail_the_client_and_are_audited", DaemonOpts { ports: Some(ports.join(",")), config: Some(config), ..Default::default() }) else { return };
    let ca = tls::daemon_ca(&w.daemon).display().to_string();

    for ((id, _, why), (_, cert, server)) in cases.iter().zip(&servers) {
        let out = Client::python(&tls::https_url("localhost", server)).env("SSL_CERT_FILE", &ca).cgroup(w.cgroup()).list().call("echo", json!({"text": "x"})).try_run();
        assert_eq!(out.exit_code, Some(2), "{id}: the client's connection must fail: {:?}", out.lines);
        assert!(server.recorded_calls().is_empty(), "{id}: nothing forwarded");
        let origin = format!("https://localhost:{}", server.addr().port());
        let recs = w.daemon.wait_audit(&format!("{id} refusal"), |r| r.iter().any(|x| x.server == origin));
        let rec = recs.iter().find(|x| x.server == origin).expect("record");
        assert_eq!(rec.kind, MessageKind::Invalid, "{id}");
        match &rec.status {
            CallStatus::TransportError { reason } => assert!(reason.contains(why), "{id}: {reason}"),
            other => panic!("{id}: {other:?}"),
        }
        let t = rec.tls.as_ref().expect("tls details");
        assert_eq!(t.sni.as_deref(), Some("localhost"));
        assert_eq!(t.upstream_fingerprint.as_deref(), Some(tls::fingerprint(&cert.der).as_str()), "{id}: the presented certificate is recorded");
        assert!(recs.iter().all(|x| x.server != origin || x.method.is_none()), "{id}: no MCP message recorded");
        let entry = w.daemon.list().into_iter().find(|s| s.endpoint == origin).expect("inventory");
        assert!(entry.alerts.iter().any(|a| a.contains("upstream certificate") && a.contains(why)), "{id}: {:?}", entry.alerts);
    }

    let url = format!("https://127.0.0.1:{}/mcp", insecure.addr().port());
    let out = Client::python(&url).env("SSL_CERT_FILE", &ca).cgroup(w.cgroup()).call("echo", json!({"text": "insecure"})).run();
    assert_eq!(out.steps()[0]["text"], "insecure");
    let recs = w.daemon.wait_audit("insecure call", |r| call_record(r, "echo").is_some());
    let t = call_record(&recs, "echo").and_then(|r| r.tls.clone()).expect("tls details");
    assert!(t.insecure, "the audit says the upstream was not verified: {t:?}");
    assert_eq!(t.sni, None, "IP literal: no SNI");
    assert_eq!(t.upstream_fingerprint.as_deref(), Some(tls::fingerprint(&insecure_cert.der).as_str()));
}

/// A daemon in static-upstream mode in front of an HTTPS MCP server, intercepting everything,
/// with a short handshake deadline.
fn static_tls_daemon(pki: &TestPki, upstream: SocketAddr, extra: &str) -> Daemon {
    let config = tls::tls_config(pki, &format!("default = \"intercept\"\nhandshake_timeout_ms = 1000\n{extra}"));
    Daemon::start(DaemonOpts { static_upstream: Some(upstream), config: Some(config), ..Default::default() })
}

#[test]
fn hostile_client_hellos_never_crash_or_hang_the_daemon() {
    let pki = TestPki::new();
    let cert = pki.server_cert(CertKind::Valid, "localhost");
    let server = tls::https(peers::python_server().json_response().host_check(HostCheck::Off), &cert).spawn();
    let mut daemon = static_tls_daemon(&pki, server.addr(), "");
    let addr: SocketAddr = format!("127.0.0.1:{}", daemon.port).parse().unwrap();
    // Far above the 1 s deadline: reaching it means the daemon hung.
    let limit = std::time::Duration::from_secs(30);

    let label = vec![b'a'; 255];
    let mut long_labels = label.clone();
    long_labels.extend_from_slice(b".");
    long_labels.extend_from_slice(&label);
    let valid = hello::client_hello(Some(b"localhost"));
    let mut garbage = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    garbage.extend((0..64u8).map(|i| i.wrapping_mul(91) ^ 0xa5));
    let mut oversized_len = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    oversized_len.extend(vec![0x01; 200]);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("no SNI", hello::client_hello(None), true),
        ("IP literal SNI", hello::client_hello(Some(b"127.0.0.1")), true),
        ("255-byte label", hello::client_hello(Some(&label)), true),
        ("two 255-byte labels", hello::client_hello(Some(&long_labels)), true),
        ("NUL and spaces in SNI", hello::client_hello(Some(b"local\0host evil")), true),
        ("garbage after the record header", garbage, true),
        ("record length beyond what is sent", oversized_len.clone(), true),
        ("truncated hello, client then silent", valid[..valid.len() / 2].to_vec(), false),
        ("truncated hello, client closes", valid[..valid.len() / 2].to_vec(), true),
        ("header only, client silent", valid[..5].to_vec(), false),
        ("legacy TLS 1.0 RC4/3DES hello (TLS-008)", hello::legacy_client_hello(b"localhost"), true),
    ];
    for (name, bytes, half_close) in &cases {
        let end = tls::send_raw(addr, bytes, *half_close, limit);
        assert!(end.closed, "{name}: the daemon did not end the connection within {limit:?}");
        if name.contains("TLS-008") {
            // A fatal handshake_failure alert, and no leaf was ever shown.
            assert_eq!(end.received, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 40], "{name}");
        }
        // No ServerHello, so no certificate, for any of them (the upstream cannot prove a name
        // for the no-SNI and IP cases either: its certificate is for localhost).
        assert!(!end.received.windows(2).any(|w| w == [0x16, 0x03]), "{name}: unexpected handshake answer {:?}", end.received);
    }
    // Slowloris: one byte every 100 ms would take ~40 s; the 1 s deadline cuts it off.
    let sent = tls::slowloris(addr, &valid, std::time::Duration::from_millis(100));
    assert!(sent < valid.len(), "slowloris hello was never cut off ({sent} of {} bytes)", valid.len());

    // Still alive and still serving: status answers and a real client gets through.
    let st = daemon.status();
    assert!(st.counts.connections as usize > cases.len(), "{st:?}");
    let url = format!("https://localhost:{}/mcp", daemon.port);
    let out = Client::python(&url).env("SSL_CERT_FILE", tls::daemon_ca(&daemon).display().to_string()).call("echo", json!({"text": "still here"})).run();
    assert_eq!(out.steps()[0]["text"], "still here");
    assert!(server.recorded_calls().len() == 1, "only the real client's call reached the server");
    assert!(daemon.terminate().success(), "clean shutdown after hostile input:\n{}", daemon.log_text());
}

#[test]
fn ca_key_is_private_and_leaves_never_carry_the_ca_key() {
    let pki = TestPki::new();
    let cert = pki.server_cert(CertKind::Valid, "localhost");
    let server = tls::https(peers::python_server().json_response().host_check(HostCheck::Off), &cert).spawn();
    let mut daemon = static_tls_daemon(&pki, server.addr(), "");
    let ca_dir = daemon.state_dir.join("ca");
    let mode = |p: &Path| std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777;
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600, "CA key readable by its owner only");
    // Inside the 0700 state dir everything is the daemon's alone; agents get the
    // certificate from `mcpwatch ca export` / `ca install`, never from here.
    assert_eq!(mode(&ca_dir.join("ca.pem")), 0o600);
    assert_eq!(mode(&daemon.state_dir), 0o700);

    // The leaf the daemon presents chains to its CA for the name asked (Python verifies it
    // against ca.pem alone), has its own key, and is not a CA.
    let ca_pem = tls::daemon_ca(&daemon);
    let probe = tls::ssl_probe(None, "127.0.0.1", daemon.port, "localhost", &ca_pem, b"");
    assert_eq!(probe["ok"], true, "{probe}");
    let leaf = harness::unhex(probe["cert"].as_str().unwrap());
    let ca_der = tls::pem_file_der(&ca_pem);
    let (leaf_key, _) = tls::spki_and_subject(&leaf);
    let (ca_key, ca_subject) = tls::spki_and_subject(&ca_der);
    assert_ne!(leaf_key, ca_key, "the leaf must not use the CA key");
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).expect("leaf parses");
    assert_eq!(parsed.issuer().to_string(), ca_subject);
    assert!(!parsed.is_ca(), "a leaf is never a CA");
    let san = parsed.subject_alternative_name().expect("SAN ok").expect("SAN present");
    assert!(san.value.general_names.iter().any(|n| matches!(n, x509_parser::extensions::GeneralName::DNSName("localhost"))), "{san:?}");
    assert!(ca_subject.contains("mcpwatch local CA"), "{ca_subject}");
    // A name the upstream cannot prove (its certificate is for localhost) gets no leaf at all.
    let other = tls::ssl_probe(None, "127.0.0.1", daemon.port, "127.0.0.1", &ca_pem, b"");
    assert_eq!(other["ok"], false, "upstream has no certificate for 127.0.0.1: {other}");

    // The CLI reads the same CA without the daemon's help.
    let state = daemon.state_dir.display().to_string();
    let cli = |args: &[&str]| std::process::Command::new(mcpwatch_tests::daemon::bin("mcpwatch")).args(args).output().expect("run mcpwatch");
    let out = cli(&["ca", "show", "--json", "--state-dir", &state]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let show: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(show["fingerprint_sha256"], tls::fingerprint(&ca_der));
    assert!(show["subject"].as_str().unwrap_or_default().contains("mcpwatch local CA"), "{show}");
    let out = cli(&["ca", "export", "--format", "der", "--state-dir", &state]);
    assert_eq!(out.stdout, ca_der);
    let out = cli(&["ca", "export", "--state-dir", &state]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), std::fs::read_to_string(&ca_pem).unwrap());

    // The CA survives a restart unchanged (clients keep trusting it).
    let _keep = daemon.keep_state();
    let state_dir = daemon.state_dir.clone();
    daemon.terminate();
    let again = Daemon::start(DaemonOpts {
        static_upstream: Some(server.addr()),
        state_dir: Some(state_dir),
        config: Some(tls::tls_config(&pki, "default = \"intercept\"")),
        ..Default::default()
    });
    assert_eq!(tls::pem_file_der(&tls::daemon_ca(&again)), ca_der);
    // Rotation goes through the running daemon (no restart; `ca_rotate` covers it end to end):
    // a new CA signs, the old one stays in the bundle until withdrawn.
    let out = std::process::Command::new(mcpwatch_tests::daemon::bin("mcpwatch"))
        .args(["--socket", &again.socket.display().to_string(), "ca", "rotate", "--state-dir", &state, "--root", &state])
        .output()
        .expect("run mcpwatch");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(tls::pem_file_der(&tls::daemon_ca(&again)), ca_der);
    assert_eq!(again.status().ca.expect("ca").retired[0].cert.fingerprint_sha256, tls::fingerprint(&ca_der));
}

/// TLS the `[tls]` scope does not intercept, toward a destination that carried MCP: the
/// client picks the SNI, so a name the scope does not list (or none) would reach a server
/// that answers any name, uninspected. It is audited, and in enforce mode it is relayed
/// only when the destination proves the name with a certificate that verifies for it (a
/// shared front end serving another site); a server answering a name it has no
/// certificate for, or no name at all, is refused before anything reaches it.
#[test]
fn unintercepted_tls_toward_a_governed_destination_is_audited_and_relayed_only_when_the_name_is_proven() {
    let pki = TestPki::new();
    let cert = pki.server_cert_for_names(&["localhost", "alias.mcpwatch.test"]);
    let server = tls::https(peers::python_server().json_response(), &cert).spawn();
    let config = tls::tls_config(&pki, "always = [\"localhost\"]\nhandshake_timeout_ms = 2000");
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), config: Some(config), policy: Some("version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n".into()), ..Default::default() });
    // An intercepted call makes the address a governed MCP destination.
    let out = Client::python(&format!("https://localhost:{}/mcp", daemon.port))
        .env("SSL_CERT_FILE", tls::daemon_ca(&daemon).display().to_string())
        .call("echo", json!({"text": "seen"}))
        .run();
    assert_eq!(out.steps()[0]["text"], "seen", "{:?}", out.lines);

    // A name the server has no certificate for: it would answer with its own, so the
    // call would pass uninspected. Refused.
    let unproven = tls::ssl_probe(None, "127.0.0.1", daemon.port, "unlisted.example", &pki.ca_pem, b"");
    assert!(unproven.get("cert").is_none() && unproven["error"].as_str().is_some_and(|e| !e.contains("ostname") && !e.contains("match")), "an unproven name reached the governed server: {unproven}");
    // A name the destination proves (its certificate verifies for it): relayed, and the
    // client verifies the server's own certificate.
    let proven = tls::ssl_probe(None, "127.0.0.1", daemon.port, "alias.mcpwatch.test", &pki.ca_pem, b"");
    assert_eq!(proven["cert"].as_str(), Some(harness::hex(&cert.der).as_str()), "the proven name was not relayed to the server: {proven}");
    // No SNI: refused before anything reaches the server.
    let no_sni = harness::py(
        None,
        &format!(
            "import json, socket, ssl\nctx = ssl.create_default_context()\nctx.check_hostname = False\nctx.verify_mode = ssl.CERT_NONE\nout = {{}}\ntry:\n    s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {}), timeout=10))\n    out['cert'] = s.getpeercert(binary_form=True).hex()\nexcept Exception as e:\n    out['error'] = '%s: %s' % (type(e).__name__, e)\nprint(json.dumps(out))",
            daemon.port
        ),
    );
    assert!(no_sni.get("cert").is_none(), "TLS without SNI reached the governed server: {no_sni}");
    let recs = daemon.wait_audit("pass-through records", |r| r.iter().filter(|x| matches!(&x.status, CallStatus::TransportError { reason } if reason.contains("toward a governed MCP destination"))).count() >= 3);
    let reasons: Vec<String> = recs.iter().filter_map(|r| match &r.status { CallStatus::TransportError { reason } => Some(reason.clone()), _ => None }).collect();
    assert!(reasons.iter().any(|r| r.contains("SNI `unlisted.example`") && r.contains("did not prove the name")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("SNI `alias.mcpwatch.test`") && r.contains("relayed uninspected (the destination proved the name)")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("without SNI") && r.contains("refused (enforce mode)")), "{reasons:?}");
    assert!(daemon.status().counts.refused_protocol >= 2);
}

/// A server registered by name is governed at an address where mcpwatch has not seen it
/// speak MCP yet: the resolver maps the name there. Before, TLS with a name outside the
/// `[tls]` scope (or none) toward that address was relayed uninspected and unrecorded
/// until the first intercepted call made the address known.
#[test]
fn tls_toward_a_server_registered_by_name_is_governed_before_it_is_seen() {
    let pki = TestPki::new();
    let cert = pki.server_cert_for_names(&["localhost", "alias.mcpwatch.test"]);
    let server = tls::https(peers::python_server().json_response(), &cert).spawn();
    let config = tls::tls_config(&pki, "always = [\"localhost\"]\nhandshake_timeout_ms = 2000");
    let policy = format!(
        "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n[[server]]\nname = \"files\"\nurl = \"https://localhost:{}/mcp\"\n",
        server.addr().port()
    );
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), config: Some(config), policy: Some(policy), ..Default::default() });
    // No call first: the inventory does not know the address.
    let unproven = tls::ssl_probe(None, "127.0.0.1", daemon.port, "unlisted.example", &pki.ca_pem, b"");
    assert!(unproven.get("cert").is_none() && unproven["error"].as_str().is_some_and(|e| !e.contains("ostname") && !e.contains("match")), "an unproven name reached the registered server: {unproven}");
    let recs = daemon.wait_audit("the refusal's record", |r| r.iter().any(|x| matches!(&x.status, CallStatus::TransportError { reason } if reason.contains("SNI `unlisted.example`") && reason.contains("did not prove the name"))));
    assert!(!recs.is_empty());
}

/// A request with no Host inside intercepted TLS (HTTP/1.1 without `Host`, HTTP/2 without
/// `:authority`) is named by the verified server name, not by the address: a server
/// registered by name keeps its rules. It was named by the address, a shadow server, and
/// a rule scoped to the registered server did not apply.
#[test]
fn a_request_without_host_is_named_by_the_tls_server_name() {
    let pki = TestPki::new();
    let cert = pki.server_cert_for_names(&["localhost", "alias.mcpwatch.test"]);
    let server = tls::https(peers::python_server().json_response().stateless(), &cert).spawn();
    let config = tls::tls_config(&pki, "always = [\"alias.mcpwatch.test\"]\nhandshake_timeout_ms = 2000");
    let policy = format!(
        "version = 1\nmode = \"enforce\"\nshadow = \"allow\"\n[[server]]\nname = \"files\"\nurl = \"https://alias.mcpwatch.test:{}/mcp\"\n[[rule]]\nid = \"no-echo-on-files\"\nservers = [\"files\"]\ntools = [\"echo\"]\naction = \"deny\"\n",
        server.addr().port()
    );
    let daemon = Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), config: Some(config), policy: Some(policy), ..Default::default() });
    let body = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hostless"}}}"#;
    let request = format!("POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let out = tls::ssl_probe(None, "127.0.0.1", daemon.port, "alias.mcpwatch.test", &tls::daemon_ca(&daemon), request.as_bytes());
    let got = String::from_utf8(harness::unhex(out["got"].as_str().unwrap_or_default())).unwrap_or_default();
    assert!(got.contains("no-echo-on-files"), "the registered server's rule did not apply: {out}\n{got}");
    assert!(!server.recorded_calls().iter().any(|c| c.to_string().contains("hostless")), "the denied call reached the server");
}

/// TLS-004, domain fronting: inside a TLS session for the intercepted name, a request
/// naming another server, in `Host` (the corpus' case) or in an absolute-form target
/// with a `Host` that matches the SNI, is answered 421 and audited; it never reaches the
/// server. A request for the SNI's own name, in either form, is served.
#[test]
fn tls_004_a_request_naming_another_server_than_the_sni_is_misdirected() {
    let case: Value = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/threats.jsonl"))
        .expect("threats.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|c| c["id"] == "TLS-004")
        .expect("TLS-004 in the corpus");
    assert_eq!(case["expected"]["error"]["http_status"], 421);
    let pki = TestPki::new();
    let cert = pki.server_cert(CertKind::Valid, "localhost");
    let server = tls::https(peers::python_server().json_response().stateless(), &cert).spawn();
    let daemon = static_tls_daemon(&pki, server.addr(), "");
    let ca = tls::daemon_ca(&daemon);
    // The corpus' request (its Host names another server), closed after one answer.
    let corpus = case["input"]["http"].as_str().expect("case http").replacen("\r\n", "\r\nConnection: close\r\n", 1);
    let port = server.addr().port();
    let request = |target: &str, host: &str, text: &str| {
        let body = format!(r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}"}}}}}}"#);
        format!("POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    };
    let over_tls = |payload: &str| -> String {
        let out = tls::ssl_probe(None, "127.0.0.1", daemon.port, "localhost", &ca, payload.as_bytes());
        assert_eq!(out["ok"], true, "{out}");
        String::from_utf8_lossy(&harness::unhex(out["got"].as_str().unwrap_or_default())).into_owned()
    };
    let fronted = [
        ("Host names another server", corpus),
        ("absolute-form target names another server", request("https://mcp.evil-tools.example/mcp", &format!("localhost:{port}"), "fronted")),
    ];
    for (what, payload) in &fronted {
        let resp = over_tls(payload);
        assert!(resp.starts_with("HTTP/1.1 421"), "{what}: {resp}");
        assert!(resp.contains("mcp.evil-tools.example"), "{what}: {resp}");
    }
    // The SNI's own name is served, in origin form; in absolute form it is forwarded as
    // sent (uvicorn, an origin server, answers 404 to a target it does not route).
    let resp = over_tls(&request("/mcp", &format!("localhost:{port}"), "origin"));
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let resp = over_tls(&request(&format!("https://localhost:{port}/mcp"), "elsewhere.example", "absolute"));
    assert!(resp.contains("server: uvicorn") && !resp.starts_with("HTTP/1.1 421"), "{resp}");
    let echoed = server.recorded_texts();
    assert_eq!(echoed, vec!["origin"], "a fronted call reached the server");
    let recs = daemon.wait_audit("two fronting records", |r| r.iter().filter(|x| x.alerts.iter().any(|a| a.contains("domain fronting"))).count() >= 2);
    assert!(recs.iter().any(|r| r.alerts.iter().any(|a| a.contains("mcp.evil-tools.example"))), "{recs:#?}");
}
