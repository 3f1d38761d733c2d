//! Audit to the SIEM and Prometheus metrics, against real receivers where they exist.
//!
//! rsyslog and Prometheus are the real Debian packages, started by `mcpwatch_tests::siem`
//! on loopback. No Splunk and no Grafana Loki are available on this machine (Debian's
//! `loki` package is unrelated genetics software), so the HEC and Loki sinks are checked
//! against a recording HTTP receiver in this file that decodes their wire formats.
//! Every sink test makes calls while the receiver is DOWN, brings it up, and checks that
//! it got exactly the records in the store: no gap, no duplicate (by count and by id),
//! including across a daemon restart.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use mcpwatch_tests::daemon::{Daemon, DaemonOpts};
use mcpwatch_tests::peers::{self, Client, Peer};
use mcpwatch_tests::siem::{self, Prometheus, Receiver, Rsyslog, wait_for};
use serde_json::{Value, json};

/// Fast polling so the tests stay short (production defaults are seconds).
const FAST: &str = "[sinks]\npoll_interval_ms = 100\nmin_age_ms = 300\nsettle_ms = 2000\nmax_retry_ms = 300\ntimeout_ms = 2000\n";

fn server() -> Peer {
    peers::python_server().json_response().host_check(peers::HostCheck::Off).spawn()
}

fn daemon(server: &Peer, state: &Path, config: String) -> Daemon {
    Daemon::start(DaemonOpts { static_upstream: Some(server.addr()), state_dir: Some(state.to_path_buf()), config: Some(config), ..Default::default() })
}

/// `n` tool calls through the daemon with the official Python SDK client.
fn calls(d: &Daemon, tag: &str, n: usize) {
    let url = format!("http://127.0.0.1:{}/mcp", d.port);
    let mut c = Client::python(&url);
    for i in 0..n {
        c = c.call("echo", json!({"text": format!("{tag} {i}")}));
    }
    let out = c.run();
    assert!(out.steps().iter().all(|s| s["ok"] == true), "{:?}", out.lines);
}

fn store_ids(d: &Daemon) -> BTreeSet<String> {
    d.audit().into_iter().map(|r| r.id).collect()
}

/// Wait until the receiver holds exactly the store's records, then check for duplicates.
fn assert_exactly_the_store(d: &Daemon, what: &str, received: impl Fn() -> Vec<String>) -> BTreeSet<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let want = loop {
        let want = store_ids(d);
        let got: BTreeSet<String> = received().into_iter().collect();
        if !want.is_empty() && got == want {
            break want;
        }
        if std::time::Instant::now() > deadline {
            let log = d.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!("{what} did not catch up in 30 s:\nmissing {:?}\nextra {:?}\nlog tail (newest first):\n{}", want.difference(&got).collect::<Vec<_>>(), got.difference(&want).collect::<Vec<_>>(), tail.join("\n"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let got = received();
    assert_eq!(got.len(), want.len(), "{what}: duplicates delivered: {} events for {} records", got.len(), want.len());
    want
}

fn wait_log(d: &Daemon, needle: &str) {
    wait_for(&format!("daemon log line {needle:?}"), 20, || d.log_text().contains(needle).then_some(()));
}

/// The sink's cursor file is there, 0600. The daemon writes it once `send` returned (an
/// fsynced temp file renamed into place), which can be a moment after the receiver
/// already shows the batch: waited for, bounded.
fn assert_cursor_0600(state: &Path, sink: &str) {
    let p = state.join("sinks").join(format!("{sink}.cursor"));
    let meta = wait_for(&format!("{} to be written", p.display()), 20, || std::fs::metadata(&p).ok());
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", p.display());
}

fn assert_event_shape(ev: &Value) {
    assert_eq!(ev["event_schema"], 1, "{ev}");
    assert_eq!(ev["schema"], 1, "{ev}");
    assert!(ev["hostname"].as_str().is_some_and(|h| !h.is_empty()), "{ev}");
    let host_id = ev["host_id"].as_str().unwrap_or_default();
    assert!(host_id.len() == 32 && host_id.bytes().all(|b| b.is_ascii_hexdigit()), "{ev}");
    assert_eq!(ev["id"].as_str().map(str::len), Some(26), "{ev}");
    assert!(ev["server"].as_str().is_some_and(|s| s.contains("127.0.0.1")), "{ev}");
}

#[test]
fn syslog_sink_to_real_rsyslog_catches_up_after_it_was_down_and_across_a_restart() {
    let server = server();
    let state = tempfile::tempdir().expect("state");
    let port = peers::free_port();
    let config = format!("{FAST}[sinks.syslog]\naddress = \"127.0.0.1:{port}\"\nfacility = \"local3\"\n");
    let mut d = daemon(&server, state.path(), config.clone());

    // rsyslog is not running: the calls still work, the sink fails and keeps the records.
    calls(&d, "while rsyslog is down", 3);
    wait_log(&d, "audit sink failed");

    let rsyslog = Rsyslog::start(port);
    let first = assert_exactly_the_store(&d, "rsyslog", || rsyslog_ids(&rsyslog));
    for line in rsyslog.lines() {
        let mut f = line.splitn(5, '|');
        let (fac, sev, app, sd, msg) = (f.next(), f.next(), f.next(), f.next(), f.next());
        assert_eq!(fac, Some("local3"), "{line}");
        assert!(matches!(sev, Some("notice" | "warning")), "{line}");
        assert_eq!(app, Some("mcpwatch"), "{line}");
        let ev: Value = serde_json::from_str(msg.unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_event_shape(&ev);
        assert!(sd.is_some_and(|s| s.starts_with("[mcpwatch@32473") && s.contains(ev["id"].as_str().unwrap_or("?"))), "{line}");
    }
    assert_cursor_0600(state.path(), "syslog");

    // A restart resumes after the cursor: the new records arrive, the old ones not again.
    d.terminate();
    let d = daemon(&server, state.path(), config);
    calls(&d, "after restart", 2);
    let all = assert_exactly_the_store(&d, "rsyslog after restart", || rsyslog_ids(&rsyslog));
    assert!(all.is_superset(&first) && all.len() > first.len(), "new records after the restart: {first:?} then {all:?}");
    rsyslog.stop();
}

/// Ids of the events rsyslog wrote (`facility|severity|app|sd|msg` lines).
fn rsyslog_ids(r: &Rsyslog) -> Vec<String> {
    r.lines()
        .iter()
        .filter_map(|l| l.splitn(5, '|').nth(4).and_then(|m| serde_json::from_str::<Value>(m).ok()))
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn syslog_over_tls_verifies_the_relay_and_catches_up_once_it_is_trusted() {
    let server = server();
    let state = tempfile::tempdir().expect("state");
    let pki = mcpwatch_tests::tls::TestPki::new();
    let good = pki.server_cert(mcpwatch_tests::tls::CertKind::Valid, "syslog.mcpwatch.test");
    let wrong = pki.server_cert(mcpwatch_tests::tls::CertKind::WrongName, "syslog.mcpwatch.test");
    let port = peers::free_port();
    let config = format!(
        "{FAST}[sinks.syslog]\naddress = \"127.0.0.1:{port}\"\ntls = true\nca_file = \"{}\"\nserver_name = \"syslog.mcpwatch.test\"\n",
        pki.ca_pem.display()
    );
    let d = daemon(&server, state.path(), config);

    // A relay whose certificate names another host gets nothing.
    let impostor = Rsyslog::start_tls(port, &wrong.cert, &wrong.key);
    calls(&d, "tls", 2);
    wait_for("a refused certificate", 20, || d.log_text().lines().any(|l| l.contains("audit sink failed") && l.contains("certificate")).then_some(()));
    assert!(rsyslog_ids(&impostor).is_empty(), "records reached a relay with the wrong name: {:?}", impostor.lines());
    impostor.stop();

    let relay = Rsyslog::start_tls(port, &good.cert, &good.key);
    assert_exactly_the_store(&d, "rsyslog over TLS", || rsyslog_ids(&relay));
    relay.stop();
}

fn hec_ids(reqs: &[siem::Received]) -> Vec<String> {
    reqs.iter()
        .filter(|r| r.path == "/services/collector/event")
        .flat_map(|r| String::from_utf8_lossy(&r.body).lines().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter_map(|v| v["event"]["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn hec_sink_retries_refusals_and_outages_without_gap_or_duplicate() {
    // No Splunk here: the receiver below speaks the HEC request shape.
    let server = server();
    let state = tempfile::tempdir().expect("state");
    let token = state.path().join("hec.token");
    std::fs::write(&token, "11111111-2222-3333-4444-555555555555\n").expect("token");
    let port = peers::free_port();
    let config = format!("{FAST}[sinks.hec]\nurl = \"http://127.0.0.1:{port}\"\ntoken_file = \"{}\"\nindex = \"mcp\"\n", token.display());
    let d = daemon(&server, state.path(), config);

    // Down (connection refused) during the first calls.
    calls(&d, "hec down", 2);
    wait_log(&d, "audit sink failed");
    // Up but refusing (503): nothing counts as delivered.
    let refusing = Receiver::start(port, 503);
    wait_for("a refused batch", 20, || (!refusing.requests().is_empty()).then_some(()));
    let log = refusing.stop();
    calls(&d, "hec down again", 1);
    // Only batches answered 200 count: the refused ones are in the log before `up` starts.
    let n_refused = log.lock().expect("lock").len();
    let up = Receiver::start_sharing(port, 200, log);
    let accepted = || hec_ids(&up.requests()[n_refused..]);
    assert_exactly_the_store(&d, "HEC receiver", accepted);
    let reqs = up.requests();
    let r = &reqs[n_refused];
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("authorization"), Some("Splunk 11111111-2222-3333-4444-555555555555"));
    let first: Value = serde_json::from_slice(r.body.split(|b| *b == b'\n').next().unwrap_or_default()).expect("HEC event JSON");
    assert_eq!(first["sourcetype"], "mcpwatch:audit");
    assert_eq!(first["index"], "mcp");
    assert!(first["time"].as_f64().is_some_and(|t| t > 1.6e9), "{first}");
    assert_event_shape(&first["event"]);
    assert_cursor_0600(state.path(), "hec");
}

/// nginx (Debian's, a real TLS server) terminating TLS on `port` with `cert` and proxying
/// to a plain [`Receiver`] on `backend`: an HTTPS collector. Stopped (by PID) on drop.
struct NginxTls {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl NginxTls {
    fn start(port: u16, cert: &mcpwatch_tests::tls::ServerCert, backend: u16) -> NginxTls {
        let nginx = siem::require_tool("nginx");
        let dir = tempfile::Builder::new().prefix("mcpwatch-nginx-").tempdir().expect("tempdir");
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 64; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             server {{\n  listen 127.0.0.1:{port} ssl;\n  ssl_certificate {};\n  ssl_certificate_key {};\n\
             location / {{ proxy_pass http://127.0.0.1:{backend}; proxy_http_version 1.1; }}\n }}\n}}\n",
            cert.cert.display(),
            cert.key.display()
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("nginx.conf");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start nginx");
        wait_for("nginx listening", 10, || std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()));
        NginxTls { child, _dir: dir }
    }
}

impl Drop for NginxTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn hec_over_https_verifies_the_collector_and_catches_up_once_it_is_trusted() {
    // The HTTPS collector is real nginx terminating TLS in front of the HEC-shaped receiver.
    let server = server();
    let state = tempfile::tempdir().expect("state");
    let token = state.path().join("hec.token");
    std::fs::write(&token, "aaaaaaaa-2222-3333-4444-555555555555\n").expect("token");
    let pki = mcpwatch_tests::tls::TestPki::new();
    let good = pki.server_cert(mcpwatch_tests::tls::CertKind::Valid, "localhost");
    let wrong = pki.server_cert(mcpwatch_tests::tls::CertKind::WrongName, "localhost");
    let (tls_port, plain_port) = (peers::free_port(), peers::free_port());
    let receiver = Receiver::start(plain_port, 200);
    let config = format!(
        "{FAST}[sinks.hec]\nurl = \"https://localhost:{tls_port}\"\nca_file = \"{}\"\ntoken_file = \"{}\"\n",
        pki.ca_pem.display(),
        token.display()
    );
    let d = daemon(&server, state.path(), config);

    // A collector whose certificate names another host gets nothing.
    let impostor = NginxTls::start(tls_port, &wrong, plain_port);
    calls(&d, "https", 2);
    wait_for("a refused certificate", 20, || {
        d.log_text().lines().any(|l| l.contains("audit sink failed") && l.contains("certificate")).then_some(())
    });
    assert!(hec_ids(&receiver.requests()).is_empty(), "records reached a collector with the wrong name");
    drop(impostor);

    let trusted = NginxTls::start(tls_port, &good, plain_port);
    assert_exactly_the_store(&d, "HEC over HTTPS", || hec_ids(&receiver.requests()));
    let reqs = receiver.requests();
    assert_eq!(reqs[0].header("authorization"), Some("Splunk aaaaaaaa-2222-3333-4444-555555555555"));
    drop(trusted);
}

#[test]
fn loki_sink_pushes_streams_and_catches_up_after_an_outage() {
    // No Grafana Loki here: the receiver below decodes the push API's JSON body.
    let server = server();
    let state = tempfile::tempdir().expect("state");
    let port = peers::free_port();
    let config = format!("{FAST}[sinks.loki]\nurl = \"http://127.0.0.1:{port}\"\nlabels = {{ env = \"test\" }}\ntenant = \"sec\"\n");
    let d = daemon(&server, state.path(), config);
    calls(&d, "loki down", 3);
    wait_log(&d, "audit sink failed");
    let loki = Receiver::start(port, 204);
    let entries = || -> Vec<(String, Value, Value)> {
        loki.requests()
            .iter()
            .filter(|r| r.path == "/loki/api/v1/push")
            .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .flat_map(|v| {
                let streams = v["streams"].as_array().cloned().unwrap_or_default();
                streams.into_iter().flat_map(|s| {
                    let labels = s["stream"].clone();
                    s["values"].as_array().cloned().unwrap_or_default().into_iter().map(move |pair| {
                        let line: Value = serde_json::from_str(pair[1].as_str().unwrap_or("null")).unwrap_or(Value::Null);
                        (pair[0].as_str().unwrap_or_default().to_string(), labels.clone(), line)
                    })
                })
            })
            .collect()
    };
    assert_exactly_the_store(&d, "Loki receiver", || entries().into_iter().filter_map(|(_, _, l)| l["id"].as_str().map(str::to_string)).collect());
    let all = entries();
    let stamps: Vec<u128> = all.iter().map(|(ns, _, _)| ns.parse().expect("nanosecond timestamp string")).collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "timestamps strictly increase with the record id: {stamps:?}");
    for (_, labels, line) in &all {
        assert_eq!(labels["job"], "mcpwatch");
        assert_eq!(labels["env"], "test");
        assert!(labels["host"].is_string());
        assert_eq!(labels.as_object().map(|o| o.len()), Some(3), "no per-record labels: {labels}");
        assert_event_shape(line);
    }
    assert!(loki.requests().iter().all(|r| r.header("x-scope-orgid") == Some("sec")));
}

fn file_ids(path: &Path) -> Vec<String> {
    let mut files: Vec<_> = (1..=5).rev().map(|n| path.with_extension(format!("jsonl.{n}"))).collect();
    files.push(path.to_path_buf());
    files
        .iter()
        .flat_map(|p| std::fs::read_to_string(p).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn file_sink_catches_up_and_never_writes_a_record_twice_even_if_the_cursor_is_lost() {
    let server = server();
    let state = tempfile::tempdir().expect("state");
    let out = state.path().join("siem").join("audit.jsonl");
    let config = format!("{FAST}[sinks.file]\npath = \"{}\"\nmax_bytes = 4096\nkeep = 5\n", out.display());
    // "Down": a directory squats at the file's path, so appends fail.
    std::fs::create_dir_all(&out).expect("squat");
    let mut d = daemon(&server, state.path(), config.clone());
    // Enough records to pass 4 KiB whatever their completions' timing: two calls' worth
    // sat near the limit and once (fresh-clone CI, under load) stayed below it.
    calls(&d, "file down", 4);
    wait_log(&d, "audit sink failed");
    std::fs::remove_dir(&out).expect("unsquat");
    assert_exactly_the_store(&d, "JSON-lines file", || file_ids(&out));
    assert!(out.with_extension("jsonl.1").exists(), "4 KiB files rotate");

    // A crash between the write and the cursor update: the batch comes again, the file
    // sink skips what it already wrote.
    d.terminate();
    std::fs::remove_file(state.path().join("sinks").join("file.cursor")).expect("cursor existed");
    let d = daemon(&server, state.path(), config);
    calls(&d, "file after restart", 1);
    assert_exactly_the_store(&d, "JSON-lines file after restart", || file_ids(&out));
}

#[test]
fn metrics_scraped_by_real_prometheus_match_the_audit_records() {
    let server = server();
    let state = tempfile::tempdir().expect("state");
    let mport = peers::free_port();
    let hec_port = peers::free_port();
    let token = state.path().join("hec.token");
    std::fs::write(&token, "t0k3n").expect("token");
    // A HEC sink that stays down, with a backlog bound of 1: its alert must show.
    let config = format!(
        "{FAST}max_backlog = 1\n[sinks.hec]\nurl = \"http://127.0.0.1:{hec_port}\"\ntoken_file = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n",
        token.display()
    );
    let d = daemon(&server, state.path(), config);
    let target: std::net::SocketAddr = format!("127.0.0.1:{mport}").parse().expect("addr");
    calls(&d, "metrics", 4);
    wait_log(&d, "audit sink backlog exceeded");

    // The scraped text passes promtool's checks.
    let (status, text) = siem::http_get(target, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    let text = String::from_utf8(text).expect("utf-8");
    let mut check = Command::new(siem::require_tool("promtool")).args(["check", "metrics"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("promtool");
    std::io::Write::write_all(check.stdin.as_mut().expect("stdin"), text.as_bytes()).expect("feed promtool");
    let checked = check.wait_with_output().expect("promtool");
    assert!(checked.status.success(), "promtool check metrics:\n{}{}\n{text}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert_eq!(siem::http_get(target, "/nope").map(|r| r.0), Some(404));

    // What the records say, computed here from the store.
    let records = d.audit();
    let mut by_tool: HashMap<(String, String), u64> = HashMap::new();
    for r in records.iter().filter(|r| r.status != mcpwatch_api::CallStatus::Pending && r.name.as_deref() == Some("echo")) {
        let decision = r.decision.as_ref().map_or("none".to_string(), |x| x.effective.to_string());
        *by_tool.entry(("echo".into(), decision)).or_default() += 1;
    }
    assert_eq!(by_tool.values().sum::<u64>(), 4, "{by_tool:?}");
    let shadow = records.iter().filter(|r| r.status != mcpwatch_api::CallStatus::Pending && r.decision.as_ref().is_some_and(|x| x.shadow)).count();

    let prom = Prometheus::start(target);
    let value = |q: &str| -> Option<f64> {
        let res = prom.query(q)?;
        res.first()?["value"][1].as_str()?.parse().ok()
    };
    for ((tool, decision), n) in &by_tool {
        let q = format!("sum(mcpwatch_calls_total{{tool=\"{tool}\",decision=\"{decision}\",method=\"tools/call\"}})");
        let got = wait_for(&format!("Prometheus to scrape {q}"), 30, || value(&q));
        assert_eq!(got, *n as f64, "{q}");
    }
    let got = wait_for("shadow calls", 30, || value("sum(mcpwatch_shadow_calls_total)").or((shadow == 0).then_some(0.0)));
    assert_eq!(got, shadow as f64);
    let n_lat = wait_for("latency histogram", 30, || value("sum(mcpwatch_call_duration_seconds_count)"));
    assert!(n_lat >= 4.0, "{n_lat}");
    let p99 = wait_for("p99 latency", 30, || value("histogram_quantile(0.99, sum by (le) (mcpwatch_call_duration_seconds_bucket))"));
    assert!(p99 > 0.0 && p99 <= 60.0, "{p99}");
    assert_eq!(wait_for("backlog alert", 30, || value("mcpwatch_sink_backlog_exceeded{sink=\"hec\"}")), 1.0);
    assert!(wait_for("sink errors", 30, || value("mcpwatch_sink_errors_total{sink=\"hec\"}")) >= 1.0);
    assert!(wait_for("sink backlog", 30, || value("mcpwatch_sink_backlog{sink=\"hec\"}")) >= 2.0);
    assert_eq!(wait_for("audit write errors", 30, || value("mcpwatch_audit_write_errors_total")), 0.0);
    assert_eq!(wait_for("held calls", 30, || value("mcpwatch_held_calls")), 0.0);
    assert_eq!(wait_for("scrape health", 30, || value("up{job=\"mcpwatch\"}")), 1.0, "{}", prom.log_text());
}
