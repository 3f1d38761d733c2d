//! "Close every bypass", connection level: an attacker in the watched cgroup must not get a
//! denied `tools/call` executed unaudited by how it opens, times or frames the connection
//! (slow first byte, leading empty lines, HTTP/2 prior knowledge), by making one process
//! distrust the mcpwatch CA, or by starving the daemon of connection slots.
//!
//! Real servers: the rmcp peer (hyper: accepts leading CRLF and serves h2c, like rmcp
//! production servers) and the Python SDK over HTTPS. Each scenario fails on the code before
//! the fix (see the comment on each).

use std::path::{Path, PathBuf};
use std::time::Duration;

use mcpwatch_api::{AuditRecord, CallStatus};
use mcpwatch_tests::daemon::{Daemon, DaemonOpts};
use mcpwatch_tests::harness::{py, Watched};
use mcpwatch_tests::peers::{self, Client, Peer};
use mcpwatch_tests::tls::{self, CertKind, TestPki};
use serde_json::{json, Value};

const DENY_ECHO: &str = r##"
version = 1
mode = "enforce"
shadow = "allow"

[[server]]
name = "peer"
url = "{URL}"

[[rule]]
id = "no-echo"
tools = ["echo"]
action = "deny"
message = "echo is denied here"
"##;

fn rmcp() -> Peer {
    peers::rmcp_server().ip([127, 0, 0, 2].into()).spawn()
}

fn start(test: &str, server: &Peer, url: &str, config: Option<String>) -> Option<Watched> {
    let policy = DENY_ECHO.replace("{URL}", url);
    Watched::start_with(
        test,
        DaemonOpts { ports: Some(server.addr().port().to_string()), policy: Some(policy), config, ..Default::default() },
    )
}

fn echo_body(text: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": text}}}).to_string()
}

/// A raw HTTP/1.1 tools/call from a process in `cgroup`: connect, wait `delay` seconds, send
/// `prefix` + the request, read to EOF. Returns what came back (lossy text) or the error.
fn raw_call(cgroup: &Path, server: &Peer, delay: f64, prefix: &str, text: &str) -> String {
    raw_call_to(cgroup, &server.addr().ip().to_string(), server.addr().port(), delay, prefix, text)
}

/// [`raw_call`] toward `ip:port` as the client dials it (which may differ from where the
/// server listens: `0.0.0.0` reaches loopback, and the Host then names 127.0.0.1).
fn raw_call_to(cgroup: &Path, ip: &str, port: u16, delay: f64, prefix: &str, text: &str) -> String {
    let body = echo_body(text);
    let host = if ip == "0.0.0.0" { "127.0.0.1" } else { ip };
    let req = format!(
        "{prefix}POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let script = format!(
        r#"
import json, socket, time
s = socket.create_connection(("{ip}", {port}), timeout=20)
time.sleep({delay})
s.sendall(bytes.fromhex("{hex}"))
got = b""
try:
    while True:
        c = s.recv(65536)
        if not c: break
        got += c
except Exception as e:
    got += ("<<" + repr(e) + ">>").encode()
print(json.dumps({{"got": got.decode("latin-1")}}))
"#,
        hex = mcpwatch_tests::harness::hex(req.as_bytes()),
    );
    py(Some(cgroup), &script)["got"].as_str().unwrap_or_default().to_string()
}

/// A connect to `0.0.0.0:PORT` reaches the server listening on `127.0.0.1:PORT` (the
/// kernel connects the unspecified address to loopback). Old code named the endpoint
/// `http://0.0.0.0:PORT/mcp`: a shadow server, so a rule scoped to the registered
/// `127.0.0.1` server did not apply and the denied call ran.
#[test]
fn the_unspecified_address_is_the_local_server_it_reaches() {
    let server = peers::rmcp_server().ip([127, 0, 0, 1].into()).spawn();
    let port = server.addr().port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let policy = DENY_ECHO.replace("{URL}", &url).replace("tools = [\"echo\"]", "servers = [\"peer\"]\ntools = [\"echo\"]");
    let Some(w) = Watched::start_with(
        "the_unspecified_address_is_the_local_server_it_reaches",
        DaemonOpts { ports: Some(port.to_string()), policy: Some(policy), ..Default::default() },
    ) else {
        return;
    };
    let resp = raw_call_to(w.cgroup(), "0.0.0.0", port, 0.0, "", "zero-alias");
    assert_denied(&resp, "zero-alias");
    let recs = w.daemon.wait_audit("the denied call's record", denied_echo_record);
    assert!(recs.iter().any(|r| r.name.as_deref() == Some("echo") && r.server == url), "named as the registered server: {recs:#?}");
}

/// The call was answered by mcpwatch's policy, not executed by the server.
fn assert_denied(resp: &str, text: &str) {
    assert!(resp.contains("-32001") && resp.contains("echo is denied here"), "expected the policy's refusal, got: {resp}");
    assert!(!resp.contains(&format!("\"text\":\"{text}\"")), "the server executed the denied call: {resp}");
}

fn denied_echo_record(recs: &[AuditRecord]) -> bool {
    recs.iter().any(|r| {
        r.method.as_deref() == Some("tools/call")
            && r.name.as_deref() == Some("echo")
            && r.decision.as_ref().is_some_and(|d| d.effective.as_str() == "block")
    })
}

#[test]
fn slow_first_byte_is_still_governed() {
    // Old code: after `peek_timeout` (500 ms by default) the sniffer gave up and relayed
    // opaquely, so the call reached rmcp and was executed without a record.
    let server = rmcp();
    let Some(w) = start("slow_first_byte_is_still_governed", &server, &server.url(), None) else { return };
    let resp = raw_call(w.cgroup(), &server, 0.7, "", "slow-bypass");
    assert_denied(&resp, "slow-bypass");
    let resp = raw_call(w.cgroup(), &server, 2.0, "", "slower-bypass");
    assert_denied(&resp, "slower-bypass");
    w.daemon.wait_audit("two denied echo calls", |r| r.iter().filter(|x| x.name.as_deref() == Some("echo")).count() >= 2 && denied_echo_record(r));
}

#[test]
fn silent_client_is_closed_not_relayed() {
    // A client that says nothing past the deadline is closed: its late request finds the
    // connection gone. Old code: relayed opaquely, the server executed the late request.
    let server = rmcp();
    let config = "[limits]\npeek_timeout_ms = 1500\n".to_string();
    let Some(w) = start("silent_client_is_closed_not_relayed", &server, &server.url(), Some(config)) else { return };
    let resp = raw_call(w.cgroup(), &server, 3.0, "", "silent-bypass");
    assert!(!resp.contains("silent-bypass"), "a silent connection was relayed: {resp}");
    assert!(!resp.contains("HTTP/1.1 200"), "{resp}");
    assert!(w.daemon.status().counts.closed_silent >= 1);
}

#[test]
fn leading_empty_line_is_governed() {
    // Old code: "\r\n" is not a method prefix, so the connection was relayed opaquely; rmcp
    // (hyper) skips the empty line and executed the call.
    let server = rmcp();
    let Some(w) = start("leading_empty_line_is_governed", &server, &server.url(), None) else { return };
    let resp = raw_call(w.cgroup(), &server, 0.0, "\r\n", "crlf-bypass");
    assert_denied(&resp, "crlf-bypass");
    let resp = raw_call(w.cgroup(), &server, 0.0, "\r\n\r\n\n", "crlf3-bypass");
    assert_denied(&resp, "crlf3-bypass");
    let recs = w.daemon.wait_audit("denied echo after empty lines", denied_echo_record);
    assert!(recs.iter().all(|r| r.name.as_deref() != Some("echo") || r.decision.as_ref().is_some_and(|d| d.effective.as_str() == "block")), "{recs:#?}");
}

/// `curl --http2-prior-knowledge` POST of `body` from a process in `cgroup`; stdout + stderr.
fn h2_post(cgroup: &Path, url: &str, body: &str) -> String {
    h2_post_with(cgroup, url, body, false)
}

/// `streamed`: the body goes as DATA frames read from curl's stdin (`-T -`), with no
/// `content-length` header, as any streaming HTTP/2 client sends it.
fn h2_post_with(cgroup: &Path, url: &str, body: &str, streamed: bool) -> String {
    use std::io::Write as _;
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--http2-prior-knowledge", "-X", "POST", url])
        .args(["-H", "content-type: application/json", "-H", "accept: application/json, text/event-stream"]);
    if streamed {
        cmd.args(["-T", "-"]).stdin(std::process::Stdio::piped());
    } else {
        cmd.arg("--data-binary").arg(body);
    }
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    peers::move_into_cgroup(&mut cmd, cgroup);
    let mut child = cmd.spawn().expect("run curl");
    if streamed {
        let mut stdin = child.stdin.take().expect("curl's stdin");
        stdin.write_all(body.as_bytes()).expect("write the body to curl");
    }
    let out = child.wait_with_output().expect("wait for curl");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn http2_prior_knowledge_is_governed() {
    // Old code: the HTTP/2 preface was "opaque": relayed byte-for-byte to rmcp, which serves
    // h2c and executed the call.
    let server = rmcp();
    let Some(w) = start("http2_prior_knowledge_is_governed", &server, &server.url(), None) else { return };
    let resp = h2_post(w.cgroup(), &server.url(), &echo_body("h2-bypass"));
    assert_denied(&resp, "h2-bypass");
    let recs = w.daemon.wait_audit("denied echo over h2", denied_echo_record);
    assert!(recs.iter().any(|r| r.name.as_deref() == Some("echo") && r.server == server.url()), "{recs:#?}");
    // Allowed calls still work over h2 (governed, not refused).
    let add = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 2, "b": 3}}}).to_string();
    let out = h2_post(w.cgroup(), &server.url(), &add);
    assert!(out.contains("\"text\":\"5\""), "{out}");
    assert!(w.daemon.status().counts.http2_connections >= 2);
    // A body in DATA frames with no content-length (a streaming client): a body all the
    // same. Old code took the request for bodiless and streamed it upstream unread: the
    // denied call ran, with no record.
    let resp = h2_post_with(w.cgroup(), &server.url(), &echo_body("h2-streamed-bypass"), true);
    assert_denied(&resp, "h2-streamed-bypass");
    w.daemon.wait_audit("denied echo over h2 without content-length", |recs: &[AuditRecord]| {
        recs.iter().filter(|r| r.name.as_deref() == Some("echo") && r.decision.as_ref().is_some_and(|d| d.effective.as_str() == "block")).count() >= 2
    });
    let out = h2_post_with(w.cgroup(), &server.url(), &add, true);
    assert!(out.contains("\"text\":\"5\""), "streamed allowed call: {out}");
}

/// One process, two TLS handshakes toward `port` trusting only `cafile`, 1.5 s apart (the
/// daemon records the first rejection when the client's alert arrives).
fn tls_twice(cgroup: &Path, port: u16, cafile: &Path) -> Vec<Value> {
    let script = format!(
        r#"
import json, socket, ssl, time
out = []
for attempt in range(2):
    ctx = ssl.create_default_context(cafile={cafile:?})
    try:
        s = socket.create_connection(("127.0.0.1", {port}), timeout=20)
        t = ctx.wrap_socket(s, server_hostname="localhost")
        issuer = dict(x[0] for x in t.getpeercert().get("issuer", ()))
        out.append({{"ok": True, "issuer": issuer.get("commonName", "")}})
        t.close()
    except Exception as e:
        out.append({{"ok": False, "error": repr(e)}})
    time.sleep(1.5)
print(json.dumps({{"attempts": out}}))
"#,
        cafile = cafile.display().to_string(),
    );
    py(Some(cgroup), &script)["attempts"].as_array().cloned().unwrap_or_default()
}

fn https_daemon(test: &str, pki: &TestPki, server: &Peer, url: &str, extra: &str) -> Option<Watched> {
    let config = tls::tls_config(pki, &format!("always = [\"localhost\"]\ndistrust_backoff_secs = 600\n{extra}"));
    start(test, server, url, Some(config))
}

#[test]
fn tls_distrust_is_per_process_and_refused_in_enforce_mode() {
    let pki = TestPki::new();
    let cert = pki.server_cert(CertKind::Valid, "localhost");
    let server = tls::https(peers::python_server().json_response(), &cert).spawn();
    let url = tls::https_url("localhost", &server);
    let Some(w) = https_daemon("tls_distrust_is_per_process_and_refused_in_enforce_mode", &pki, &server, &url, "") else { return };

    // Process A (python3) trusts only the upstream's CA: both of its attempts fail. Old code:
    // the second was passed through for 900 s (uninspected, the upstream's certificate).
    let attempts = tls_twice(w.cgroup(), server.addr().port(), &pki.ca_pem);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(attempts.iter().all(|a| a["ok"] == false), "a distrusting client must be refused in enforce mode: {attempts:?}\n{}", w.daemon.log_text());
    let origin = format!("https://localhost:{}", server.addr().port());
    let recs = w.daemon.wait_audit("two distrust records", |r| r.iter().filter(|x| x.server == origin).count() >= 2);
    let rec = recs.iter().find(|x| x.server == origin).expect("record");
    assert!(matches!(&rec.status, CallStatus::TransportError { reason } if reason.contains("does not trust the mcpwatch CA")), "{rec:?}");
    assert!(rec.notes.iter().any(|n| n.contains("refused")), "{:?}", rec.notes);
    let st = w.daemon.status();
    assert!(st.counts.tls_distrust_refused >= 2, "{:?}", st.counts);
    assert!(st.warnings.iter().any(|x| x.contains("TLS not inspectable") && x.contains("REFUSED")), "{:?}", st.warnings);

    // Process B runs the same executable and trusts the mcpwatch CA: still intercepted, so the
    // denied call is refused and the server never sees it. Old code (back-off per executable):
    // passed through uninspected and executed.
    let out = Client::python(&url)
        .env("SSL_CERT_FILE", tls::daemon_ca(&w.daemon).display().to_string())
        .cgroup(w.cgroup())
        .call("echo", json!({"text": "per-exe-bypass"}))
        .run();
    assert_eq!(out.steps()[0]["ok"], false, "{:?}", out.lines);
    assert!(server.recorded_calls().is_empty(), "the server saw the denied call: {:?}", server.recorded_calls());
    w.daemon.wait_audit("denied echo over intercepted TLS", denied_echo_record);
}

#[test]
fn tls_distrust_pass_through_is_opt_in_and_per_process() {
    let pki = TestPki::new();
    let cert = pki.server_cert(CertKind::Valid, "localhost");
    let server = tls::https(peers::python_server().json_response(), &cert).spawn();
    let url = tls::https_url("localhost", &server);
    let Some(w) = https_daemon("tls_distrust_pass_through_is_opt_in_and_per_process", &pki, &server, &url, "distrust = \"pass_through\"") else { return };
    // With the operator's opt-in, the SAME process is passed through on its second attempt
    // (the agent keeps working) and sees the upstream's own certificate.
    let attempts = tls_twice(w.cgroup(), server.addr().port(), &pki.ca_pem);
    assert_eq!(attempts[0]["ok"], false, "{attempts:?}");
    assert_eq!(attempts[1]["ok"], true, "{attempts:?}\n{}", w.daemon.log_text());
    assert_eq!(attempts[1]["issuer"], tls::UPSTREAM_CA_CN);
    // Another process of the same executable that also distrusts the CA is not: its first
    // attempt is intercepted (and fails) again.
    let attempts = tls_twice(w.cgroup(), server.addr().port(), &pki.ca_pem);
    assert_eq!(attempts[0]["ok"], false, "back-off leaked to another process: {attempts:?}");
    let warnings = w.daemon.status().warnings;
    assert!(warnings.iter().any(|x| x.contains("(pid ") && x.contains("tls.distrust = pass_through")), "{warnings:?}");
}

/// Opens `n` idle connections from one process and holds them `hold` seconds; reports how
/// many the daemon closed.
fn flood_script(server: &Peer, n: usize, hold: f64) -> String {
    let addr = server.addr();
    format!(
        r#"
import json, socket, time
socks = []
for i in range({n}):
    try:
        socks.append(socket.create_connection(("{ip}", {port}), timeout=5))
    except Exception:
        pass
time.sleep({hold})
closed = 0
for s in socks:
    s.setblocking(False)
    try:
        if s.recv(1) == b"": closed += 1
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(json.dumps({{"opened": len(socks), "closed": closed}}))
"#,
        ip = addr.ip(),
        port = addr.port()
    )
}

fn wait_status(d: &Daemon, what: &str, pred: impl Fn(&mcpwatch_api::Status) -> bool) -> mcpwatch_api::Status {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = d.status();
        if pred(&st) {
            return st;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}: {st:?}\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_process_cannot_starve_the_others() {
    // Old code: one global semaphore (here 30), acquired before accept: the flooding process
    // held every slot and the other agent's call hung until the flood ended.
    let server = rmcp();
    let config = "[limits]\nmax_connections = 30\nmax_connections_per_process = 20\n".to_string();
    let Some(w) = start("one_process_cannot_starve_the_others", &server, &server.url(), Some(config)) else { return };
    let cg: PathBuf = w.cgroup().to_path_buf();
    let script = flood_script(&server, 40, 12.0);
    let flooder = std::thread::spawn(move || py(Some(&cg), &script));
    wait_status(&w.daemon, "per-process refusals", |s| s.counts.refused_process >= 1);

    // Another process (same uid, same cgroup) still gets its call through while the flood holds.
    let out = Client::python(&server.url()).cgroup(w.cgroup()).timeout(Duration::from_secs(10)).call("add", json!({"a": 2, "b": 3})).run();
    assert_eq!(out.steps()[0]["ok"], true, "{:?}\n{}", out.lines, w.daemon.log_text());

    let st = w.daemon.status();
    let warning = st
        .warnings
        .iter()
        .find(|x| x.contains("connection limit reached") && x.contains("max_connections_per_process = 20"))
        .unwrap_or_else(|| panic!("no limit warning: {:?}", st.warnings));
    assert!(warning.contains("python"), "{warning}");
    let text = String::from_utf8_lossy(&w.daemon.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("connection limit reached"), "{text}");

    let flood = flooder.join().expect("flooder");
    assert_eq!(flood["opened"], 40, "{flood}");
    assert!(flood["closed"].as_u64().unwrap_or(0) >= 20, "the over-limit connections are closed at once: {flood}");
}

#[test]
fn tls_client_offering_only_h2_is_intercepted_and_governed() {
    // Old code: ALPN offered http/1.1 only, and a client offering only `h2` was passed
    // through uninspected ("client offers no ALPN protocol mcpwatch carries").
    let pki = TestPki::new();
    let cert = pki.server_cert(CertKind::Valid, "localhost");
    let server = tls::https(peers::python_server().json_response(), &cert).spawn();
    let url = tls::https_url("localhost", &server);
    let Some(w) = https_daemon("tls_client_offering_only_h2_is_intercepted_and_governed", &pki, &server, &url, "") else { return };
    let mut cmd = std::process::Command::new("curl");
    // Over https, --http2-prior-knowledge makes curl offer ALPN h2 alone.
    cmd.args(["-sS", "--max-time", "20", "--http2-prior-knowledge", "-X", "POST", &url])
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", server.addr().port())])
        .arg("--cacert")
        .arg(tls::daemon_ca(&w.daemon))
        .args(["-H", "content-type: application/json", "-H", "accept: application/json, text/event-stream", "--data-binary"])
        .arg(echo_body("alpn-h2-bypass"));
    peers::move_into_cgroup(&mut cmd, w.cgroup());
    let out = cmd.output().expect("run curl");
    let resp = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_denied(&resp, "alpn-h2-bypass");
    assert!(server.recorded_calls().is_empty(), "{:?}", server.recorded_calls());
    let recs = w.daemon.wait_audit("denied echo over TLS h2", denied_echo_record);
    let rec = recs.iter().find(|r| r.name.as_deref() == Some("echo")).expect("echo record");
    assert_eq!(rec.tls.as_ref().and_then(|t| t.alpn.as_deref()), Some("h2"), "{rec:?}");
    assert!(w.daemon.status().counts.http2_connections >= 1);
}

#[test]
fn non_http_toward_a_governed_destination_is_refused_and_audited() {
    // Old code: anything that did not start with a known method was relayed byte-for-byte,
    // with no record, even toward a registered MCP server in enforce mode.
    let server = rmcp();
    let Some(w) = start("non_http_toward_a_governed_destination_is_refused_and_audited", &server, &server.url(), None) else { return };
    // The server is registered (and, after this call, known to the inventory).
    let out = Client::python(&server.url()).cgroup(w.cgroup()).call("add", json!({"a": 1, "b": 1})).run();
    assert_eq!(out.steps()[0]["ok"], true, "{:?}", out.lines);
    // A framing no HTTP parser takes as a request: refused before a byte reaches the server.
    let resp = raw_call(w.cgroup(), &server, 0.0, "{", "brace-bypass");
    assert!(!resp.contains("HTTP/1.1"), "the server answered a refused connection: {resp}");
    // A leading tab is skipped by lenient parsers (Netty): HTTP to mcpwatch, whose parser
    // refuses it; the server never sees it either.
    let resp = raw_call(w.cgroup(), &server, 0.0, "\t", "tab-bypass");
    assert!(resp.starts_with("HTTP/1.1 400") && !resp.contains("tab-bypass"), "{resp}");
    let recs = w.daemon.wait_audit("refusal record", |r| {
        r.iter().any(|x| matches!(&x.status, CallStatus::TransportError { reason } if reason.contains("not HTTP") && reason.contains("refused")))
    });
    let rec = recs.iter().find(|x| x.notes.is_empty() && matches!(&x.status, CallStatus::TransportError { reason } if reason.contains("not HTTP"))).expect("record");
    assert_eq!(rec.dst, server.addr().to_string());
    assert!(rec.process.is_some(), "{rec:?}");
    let st = w.daemon.status();
    assert!(st.counts.refused_protocol >= 1, "{:?}", st.counts);
    assert!(st.warnings.iter().any(|x| x.contains("not HTTP or TLS toward governed MCP destinations refused")), "{:?}", st.warnings);
}
