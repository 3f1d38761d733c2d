//! Prometheus metrics: a text-format endpoint derived from the audit records and the
//! existing counters.
//!
//! Why it exists: operators watch mcpwatch with the Prometheus they already run. Nothing
//! here instruments the proxy: the numbers come from the record broadcast in `Shared`
//! (every record the proxy stores or completes), the daemon's `Counters`, the approval
//! queue and the sinks' stats. Off unless `[metrics] listen` is set; loopback (or a Unix
//! socket) unless `allow_remote = true`.
//!
//! Label cardinality is bounded: at most `max_series` distinct (server, method, tool)
//! sets; later ones are counted under `other`. Server/tool strings come from the
//! watched traffic (attacker-influenced), so they are also truncated and escaped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use mcpwatch_api::{AuditRecord, CallStatus};
use tokio::sync::broadcast;

use crate::config::MetricsListen;
use crate::sinks::SinkRegistry;
use crate::state::Shared;

/// Upper bounds (seconds) of the latency histogram.
const BUCKETS: [f64; 14] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Completed record ids remembered so an update of a counted record is not counted again.
const SEEN_IDS: usize = 65_536;
/// Most distinct servers in per-server series (latency, shadow).
const MAX_SERVERS: usize = 200;
/// Most distinct detector label sets.
const MAX_FINDING_SETS: usize = 256;
/// Longest label value kept.
const MAX_LABEL_CHARS: usize = 128;
const OTHER: &str = "other";

/// Admits label values up to a bound; later new ones become `other`.
#[derive(Default)]
struct Cap {
    admitted: HashSet<String>,
}

impl Cap {
    fn admit(&mut self, value: String, max: usize, overflow: &mut u64) -> String {
        if self.admitted.contains(&value) {
            return value;
        }
        if self.admitted.len() < max {
            self.admitted.insert(value.clone());
            return value;
        }
        *overflow += 1;
        OTHER.to_string()
    }
}

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Aggregates {
    /// (server, method, tool, decision, status) -> calls.
    calls: HashMap<(String, String, String, &'static str, &'static str), u64>,
    call_sets: Cap,
    latency: HashMap<String, Histogram>,
    servers: Cap,
    /// (detector, direction, action) -> hits.
    findings: HashMap<(String, String, String), u64>,
    finding_sets: Cap,
    shadow_calls: HashMap<String, u64>,
    shadow_servers: HashSet<String>,
    tls_failures: HashMap<&'static str, u64>,
    label_overflow: u64,
    seen: VecDeque<String>,
    seen_set: HashSet<String>,
}

/// The aggregator and renderer.
pub struct Metrics {
    agg: Mutex<Aggregates>,
    max_series: usize,
    dropped: AtomicU64,
}

impl Metrics {
    pub fn new(max_series: usize) -> Metrics {
        Metrics { agg: Mutex::new(Aggregates::default()), max_series, dropped: AtomicU64::new(0) }
    }

    /// Count a record once, when it is final (the store's update of a pending record
    /// arrives as a second broadcast of the same id).
    pub fn observe(&self, r: &AuditRecord) {
        if r.status == CallStatus::Pending {
            return;
        }
        let mut a = self.agg.lock().unwrap_or_else(|p| p.into_inner());
        if a.seen_set.contains(&r.id) {
            return;
        }
        if a.seen.len() >= SEEN_IDS
            && let Some(old) = a.seen.pop_front()
        {
            a.seen_set.remove(&old);
        }
        a.seen.push_back(r.id.clone());
        a.seen_set.insert(r.id.clone());
        let a = &mut *a;

        let server = label(&r.server);
        let method = label(r.method.as_deref().unwrap_or(""));
        let tool = label(r.name.as_deref().unwrap_or(""));
        let key = format!("{server}\u{0}{method}\u{0}{tool}");
        let (server_l, method_l, tool_l) = if a.call_sets.admit(key, self.max_series, &mut a.label_overflow) == OTHER {
            (OTHER.to_string(), OTHER.to_string(), OTHER.to_string())
        } else {
            (server.clone(), method, tool)
        };
        *a.calls.entry((server_l, method_l, tool_l, decision(r), status(&r.status))).or_default() += 1;

        let server_h = a.servers.admit(server, MAX_SERVERS, &mut a.label_overflow);
        if let Some(us) = r.duration_us {
            let h = a.latency.entry(server_h.clone()).or_default();
            let secs = us as f64 / 1e6;
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    h.buckets[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
        for f in &r.findings {
            let k = format!("{}\u{0}{}\u{0}{}", label(&f.detector), label(&f.direction), label(&f.action));
            let k = if a.finding_sets.admit(k.clone(), MAX_FINDING_SETS, &mut a.label_overflow) == OTHER {
                (OTHER.into(), OTHER.into(), OTHER.into())
            } else {
                (label(&f.detector), label(&f.direction), label(&f.action))
            };
            *a.findings.entry(k).or_default() += u64::from(f.count);
        }
        if r.decision.as_ref().is_some_and(|d| d.shadow) {
            *a.shadow_calls.entry(server_h).or_default() += 1;
            if a.shadow_servers.len() < 10 * MAX_SERVERS {
                a.shadow_servers.insert(label(&r.server));
            }
        }
        if let Some(reason) = tls_failure(r) {
            *a.tls_failures.entry(reason).or_default() += 1;
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, shared: &Shared, sinks: &SinkRegistry) -> String {
        let mut o = String::new();
        let c = &shared.counters;
        let g = |x: &AtomicU64| x.load(Ordering::Relaxed);
        for (name, help, v) in [
            ("mcpwatch_connections_total", "Connections accepted by the proxy.", g(&c.connections)),
            ("mcpwatch_http_requests_total", "HTTP requests parsed.", g(&c.http_requests)),
            ("mcpwatch_mcp_messages_total", "MCP messages seen.", g(&c.mcp_messages)),
            ("mcpwatch_passthrough_total", "Connections relayed without parsing.", g(&c.passthrough)),
            ("mcpwatch_audit_records_written_total", "Audit records written since start.", g(&c.audit_records)),
            ("mcpwatch_audit_write_errors_total", "Audit store write or flush failures.", g(&c.audit_write_errors)),
            ("mcpwatch_metrics_dropped_records_total", "Records the metrics task missed because it lagged (counts are low by this much).", self.dropped.load(Ordering::Relaxed)),
        ] {
            metric_header(&mut o, name, help, "counter");
            let _ = writeln!(o, "{name} {v}");
        }
        metric_header(&mut o, "mcpwatch_audit_records", "Records in the audit store.", "gauge");
        let _ = writeln!(o, "mcpwatch_audit_records {}", shared.store.record_count());
        metric_header(&mut o, "mcpwatch_audit_pruned_young_total", "Audit records removed by the record or size budget while less than 24 h old (a flood pushing records out).", "counter");
        let _ = writeln!(o, "mcpwatch_audit_pruned_young_total {}", shared.store.pruned_young());
        metric_header(&mut o, "mcpwatch_body_budget_refused_total", "Request bodies, WebSocket messages and answers refused because the budget for bodies held for inspection (daemon-wide, or the sender's uid's half) was spent.", "counter");
        let _ = writeln!(o, "mcpwatch_body_budget_refused_total {}", shared.bodies.refused());
        metric_header(&mut o, "mcpwatch_body_budget_held_bytes", "Bytes of request bodies, WebSocket messages and answers held for inspection now.", "gauge");
        let _ = writeln!(o, "mcpwatch_body_budget_held_bytes {}", shared.bodies.used());
        metric_header(&mut o, "mcpwatch_held_calls", "Calls waiting for approval.", "gauge");
        let _ = writeln!(o, "mcpwatch_held_calls {}", shared.approvals.list().len());
        metric_header(&mut o, "mcpwatch_servers", "Servers in the inventory.", "gauge");
        let _ = writeln!(o, "mcpwatch_servers {}", shared.inventory.len());

        let a = self.agg.lock().unwrap_or_else(|p| p.into_inner());
        metric_header(&mut o, "mcpwatch_calls_total", "MCP messages with a final status, by server, method, tool, decision and status.", "counter");
        let mut calls: Vec<_> = a.calls.iter().collect();
        calls.sort();
        for ((server, method, tool, decision, status), n) in calls {
            let _ = writeln!(o, "mcpwatch_calls_total{{server=\"{server}\",method=\"{method}\",tool=\"{tool}\",decision=\"{decision}\",status=\"{status}\"}} {n}");
        }
        metric_header(&mut o, "mcpwatch_call_duration_seconds", "Time from request to response as measured by mcpwatch, by server.", "histogram");
        let mut lat: Vec<_> = a.latency.iter().collect();
        lat.sort_by(|x, y| x.0.cmp(y.0));
        for (server, h) in lat {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(o, "mcpwatch_call_duration_seconds_bucket{{server=\"{server}\",le=\"{b}\"}} {}", h.buckets[i]);
            }
            let _ = writeln!(o, "mcpwatch_call_duration_seconds_bucket{{server=\"{server}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(o, "mcpwatch_call_duration_seconds_sum{{server=\"{server}\"}} {}", h.sum);
            let _ = writeln!(o, "mcpwatch_call_duration_seconds_count{{server=\"{server}\"}} {}", h.count);
        }
        metric_header(&mut o, "mcpwatch_findings_total", "Detector hits (redacted, blocked or audited), by detector, direction and action.", "counter");
        let mut f: Vec<_> = a.findings.iter().collect();
        f.sort();
        for ((det, dir, act), n) in f {
            let _ = writeln!(o, "mcpwatch_findings_total{{detector=\"{det}\",direction=\"{dir}\",action=\"{act}\"}} {n}");
        }
        metric_header(&mut o, "mcpwatch_shadow_calls_total", "Messages to servers not in the policy's registry, by server.", "counter");
        let mut s: Vec<_> = a.shadow_calls.iter().collect();
        s.sort();
        for (server, n) in s {
            let _ = writeln!(o, "mcpwatch_shadow_calls_total{{server=\"{server}\"}} {n}");
        }
        metric_header(&mut o, "mcpwatch_shadow_servers", "Distinct shadow servers seen since start.", "gauge");
        let _ = writeln!(o, "mcpwatch_shadow_servers {}", a.shadow_servers.len());
        metric_header(&mut o, "mcpwatch_tls_failures_total", "Intercepted TLS connections that failed, by reason.", "counter");
        let mut t: Vec<_> = a.tls_failures.iter().collect();
        t.sort();
        for (reason, n) in t {
            let _ = writeln!(o, "mcpwatch_tls_failures_total{{reason=\"{reason}\"}} {n}");
        }
        metric_header(&mut o, "mcpwatch_metrics_label_overflow_total", "Observations counted under label value \"other\" (cardinality bound).", "counter");
        let _ = writeln!(o, "mcpwatch_metrics_label_overflow_total {}", a.label_overflow);
        drop(a);

        for (name, help, kind) in [
            ("mcpwatch_sink_sent_total", "Records acknowledged by the sink's receiver.", "counter"),
            ("mcpwatch_sink_errors_total", "Failed batch deliveries (retried).", "counter"),
            ("mcpwatch_sink_backlog", "Records not yet shipped (counted up to max_backlog + 1).", "gauge"),
            ("mcpwatch_sink_backlog_exceeded", "1 while the backlog is above sinks.max_backlog.", "gauge"),
        ] {
            metric_header(&mut o, name, help, kind);
            for s in sinks {
                let v = match name {
                    "mcpwatch_sink_sent_total" => g(&s.sent),
                    "mcpwatch_sink_errors_total" => g(&s.errors),
                    "mcpwatch_sink_backlog" => g(&s.backlog),
                    _ => u64::from(s.backlog_exceeded.load(Ordering::Relaxed)),
                };
                let _ = writeln!(o, "{name}{{sink=\"{}\"}} {v}", s.name);
            }
        }
        o
    }
}

fn metric_header(o: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// A label value: truncated, with `\`, `"` and newlines escaped as the format requires.
fn label(v: &str) -> String {
    let mut out = String::new();
    for c in v.chars().take(MAX_LABEL_CHARS) {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn decision(r: &AuditRecord) -> &'static str {
    r.decision.as_ref().map_or("none", |d| d.effective.as_str())
}

fn status(s: &CallStatus) -> &'static str {
    match s {
        CallStatus::Pending => "pending",
        CallStatus::Ok => "ok",
        CallStatus::Sent => "sent",
        CallStatus::JsonrpcError { .. } => "jsonrpc_error",
        CallStatus::TransportError { .. } => "transport_error",
    }
}

/// Records of failed intercepted TLS connections (`transport = "tls"`), classified by
/// the note the TLS layer writes.
fn tls_failure(r: &AuditRecord) -> Option<&'static str> {
    if r.transport != "tls" || !matches!(r.status, CallStatus::TransportError { .. }) {
        return None;
    }
    let notes = r.notes.join(" ");
    Some(if notes.contains("upstream certificate refused") {
        "upstream_certificate"
    } else if notes.contains("upstream TLS failed") {
        "upstream_handshake"
    } else if notes.contains("client:") {
        // The client aborted our handshake (e.g. it does not trust the mcpwatch CA).
        "client_handshake"
    } else {
        "other"
    })
}

/// Feed `metrics` from the record broadcast until the daemon stops.
pub async fn follow(metrics: Arc<Metrics>, mut rx: broadcast::Receiver<Arc<AuditRecord>>) {
    loop {
        match rx.recv().await {
            Ok(r) => metrics.observe(&r),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                metrics.dropped.fetch_add(n, Ordering::Relaxed);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Bind the configured endpoint and serve `GET /metrics` until aborted.
pub async fn serve(listen: MetricsListen, shared: Arc<Shared>, metrics: Arc<Metrics>, sinks: Arc<SinkRegistry>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    let handler = move |shared: Arc<Shared>, metrics: Arc<Metrics>, sinks: Arc<SinkRegistry>| {
        hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (shared, metrics, sinks) = (shared.clone(), metrics.clone(), sinks.clone());
            async move {
                if req.method() == http::Method::GET && req.uri().path() == "/metrics" {
                    http::Response::builder()
                        .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
                        .body(Full::new(Bytes::from(metrics.render(&shared, &sinks))))
                } else {
                    http::Response::builder().status(404).body(Full::new(Bytes::from_static(b"not found; try /metrics\n")))
                }
            }
        })
    };
    macro_rules! accept_loop {
        ($listener:expr) => {{
            let listener = $listener;
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let Ok(permit) = limit.clone().try_acquire_owned() else { continue };
                    let svc = handler(shared.clone(), metrics.clone(), sinks.clone());
                    tokio::spawn(async move {
                        let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                        let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
                        drop(permit);
                    });
                }
            })
        }};
    }
    Ok(match listen {
        MetricsListen::Tcp(addr) => accept_loop!(tokio::net::TcpListener::bind(addr).await?),
        MetricsListen::Unix(path) => {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
            accept_loop!(l)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpwatch_api::{DecisionView, FindingCount};

    fn call(id: &str, server: &str, tool: &str) -> AuditRecord {
        AuditRecord {
            id: id.into(),
            server: server.into(),
            method: Some("tools/call".into()),
            name: Some(tool.into()),
            status: CallStatus::Ok,
            duration_us: Some(20_000),
            decision: Some(DecisionView { effective: mcpwatch_api::Effect::Forward, ..Default::default() }),
            ..Default::default()
        }
    }

    fn totals(m: &Metrics) -> HashMap<(String, String, String, &'static str, &'static str), u64> {
        m.agg.lock().unwrap().calls.clone()
    }

    #[test]
    fn each_record_counts_once_when_final() {
        let m = Metrics::new(10);
        let mut r = call("1", "http://a/mcp", "echo");
        r.status = CallStatus::Pending;
        m.observe(&r);
        assert!(totals(&m).is_empty(), "pending records are not counted yet");
        r.status = CallStatus::Ok;
        m.observe(&r);
        m.observe(&r);
        assert_eq!(totals(&m).values().sum::<u64>(), 1);
    }

    #[test]
    fn label_sets_are_capped_into_other() {
        let m = Metrics::new(2);
        for i in 0..5 {
            m.observe(&call(&i.to_string(), &format!("http://s{i}/mcp"), "t"));
        }
        let t = totals(&m);
        assert_eq!(t.len(), 3, "{t:?}");
        assert_eq!(t[&(OTHER.into(), OTHER.into(), OTHER.into(), "forward", "ok")], 3);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(label(&"x".repeat(500)).len(), MAX_LABEL_CHARS);
    }

    #[test]
    fn findings_shadow_and_latency_are_derived() {
        let m = Metrics::new(10);
        let mut r = call("1", "http://a/mcp", "echo");
        r.findings = vec![FindingCount { detector: "email".into(), direction: "request".into(), count: 2, action: "redact".into() }];
        r.decision.as_mut().unwrap().shadow = true;
        m.observe(&r);
        let a = m.agg.lock().unwrap();
        assert_eq!(a.findings[&("email".into(), "request".into(), "redact".into())], 2);
        assert_eq!(a.shadow_calls["http://a/mcp"], 1);
        let h = &a.latency["http://a/mcp"];
        assert_eq!((h.count, h.buckets[2], h.buckets[3]), (1, 0, 1), "20 ms falls in the 25 ms bucket");
    }

    #[test]
    fn tls_failures_are_classified_by_the_tls_layer_notes() {
        let failed = |note: &str| AuditRecord {
            transport: "tls".into(),
            status: CallStatus::TransportError { reason: "x".into() },
            notes: vec![note.into()],
            ..Default::default()
        };
        assert_eq!(tls_failure(&failed("upstream certificate refused (expired): no leaf minted")), Some("upstream_certificate"));
        assert_eq!(tls_failure(&failed("upstream TLS failed: client handshake failed, nothing forwarded")), Some("upstream_handshake"));
        assert_eq!(tls_failure(&failed("client: sent fatal alert UnknownCA")), Some("client_handshake"));
        assert_eq!(tls_failure(&AuditRecord { transport: "streamable-http".into(), ..failed("client: x") }), None);
    }

    #[tokio::test]
    async fn serves_on_a_unix_socket_and_404s_elsewhere() {
        use std::os::unix::fs::PermissionsExt as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let dir = tempfile::tempdir().unwrap();
        let store = mcpwatch_audit::Store::open(&dir.path().join("state"), Default::default()).unwrap();
        let shared = Shared::new(crate::config::Config::default(), store);
        let m = Arc::new(Metrics::new(10));
        m.observe(&call("1", "http://a/mcp", "echo"));
        let path = dir.path().join("metrics.sock");
        let task = serve(MetricsListen::Unix(path.clone()), shared, m, Arc::new(Vec::new())).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
        let get = |p: &'static str| {
            let path = path.clone();
            async move {
                let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
                s.write_all(format!("GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            }
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("mcpwatch_calls_total{server=\"http://a/mcp\",method=\"tools/call\",tool=\"echo\",decision=\"forward\",status=\"ok\"} 1"), "{ok}");
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }
}
