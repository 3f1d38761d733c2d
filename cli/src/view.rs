//! What each command shows: inventory, audit and status turned into table rows and text.
//!
//! Why separate from `table`: this module decides *what* a column says (relative
//! times, durations, byte counts, process labels); `table` decides how it fits the
//! terminal. Everything here is a pure function of the daemon's answer and "now", so
//! it is unit-tested without a socket.

use std::time::{Duration, UNIX_EPOCH};

use mcpwatch_api::{AuditRecord, FailureMode, MessageKind, Status};

use crate::table::{Column, sanitize};

/// Printed instead of an empty inventory table.
pub const EMPTY_INVENTORY: &str =
    "No MCP servers seen yet: mcpwatchd adds a server when a client on this host talks to it.";
/// Printed instead of an empty audit table (not in `--follow`, which waits for more).
pub const EMPTY_AUDIT: &str = "No audit records match.";

/// Audit columns. The minimums keep `--follow` output aligned for rows that arrive
/// after the header was printed.
pub fn audit_columns() -> Vec<Column> {
    vec![
        Column::left("TIME", 12, 23),
        Column::left("PROCESS", 16, 28),
        Column::left("SERVER", 32, 48),
        Column::left("METHOD", 10, 26),
        Column::left("NAME", 8, 28),
        Column::left("STATUS", 7, 24),
        Column::left("DECISION", 8, 24),
        Column::right("DURATION", 8, 9),
        Column::right("BYTES", 9, 13),
    ]
}

/// One audit table row. `time_only` drops the date from TIME even for other days (used
/// once `--follow` has fixed a narrow TIME column).
pub fn audit_row(r: &AuditRecord, now_ms: u64, time_only: bool) -> Vec<String> {
    let process = match &r.process {
        Some(p) => {
            let name = p.exe.as_deref().map(basename).unwrap_or(p.comm.as_str());
            format!("{name} ({})", p.tgid)
        }
        None => "?".into(),
    };
    let method = match (&r.method, r.kind) {
        (Some(m), _) => m.clone(),
        (None, MessageKind::Invalid) => "(invalid)".into(),
        (None, _) => "-".into(),
    };
    [
        if time_only {
            clock(r.ts_ms, r.ts_ms)
        } else {
            clock(r.ts_ms, now_ms)
        },
        process,
        r.server.clone(),
        method,
        r.name.clone().unwrap_or_else(|| "-".into()),
        r.status.label(),
        decision(r),
        r.duration_us.map_or_else(|| "-".into(), duration_us),
        format!("{}/{}", bytes(r.request_bytes), bytes(r.response_bytes)),
    ]
    .iter()
    .map(|c| sanitize(c))
    .collect()
}

/// `deny (no-ssh-keys)`, `redacted 2`, `alert`, or `-`.
fn decision(r: &AuditRecord) -> String {
    let mut parts = Vec::new();
    if let Some(d) = &r.decision
        && (d.action != mcpwatch_api::ActionKind::Allow || d.effective != mcpwatch_api::Effect::Forward)
    {
        let rule = d.rules.first().map(|x| format!(" ({x})")).unwrap_or_default();
        let what = match (d.action.as_str(), d.effective.as_str()) {
            (a, "forward") => format!("{a}→forwarded"),
            (a, _) => a.to_string(),
        };
        parts.push(format!("{what}{rule}"));
    }
    let redacted: u32 = r.findings.iter().filter(|f| f.action == "redact").map(|f| f.count).sum();
    if redacted > 0 {
        parts.push(format!("redacted {redacted}"));
    }
    if !r.alerts.is_empty() {
        parts.push("alert".into());
    }
    if parts.is_empty() { "-".into() } else { parts.join(", ") }
}

/// `mcpwatch status`, human form: failure mode and interception first.
pub fn status_text(s: &Status) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        out.push_str(&format!("{label:<15} {}\n", sanitize(value)));
    };
    let uptime = humantime::format_duration(Duration::from_secs(s.uptime_secs)).to_string();
    line(
        "mcpwatchd",
        &format!("{} (pid {}), up {uptime}", s.version, s.pid),
    );
    let failure = match s.failure_mode {
        FailureMode::Open => "OPEN: if mcpwatchd cannot do its job, MCP traffic flows UNOBSERVED",
        FailureMode::Closed => "CLOSED: if mcpwatchd cannot do its job, MCP traffic is REFUSED",
    };
    line("FAILURE MODE", failure);
    if let (FailureMode::Closed, Some(dir)) = (s.failure_mode, &s.pinned_at) {
        line(
            "",
            &format!(
                "while mcpwatchd is down, MCP connections from the watched cgroup are REFUSED \
                 (pinned at {dir}; release with `mcpwatchd --release-pins`)"
            ),
        );
    }
    let interception = if s.attached {
        match &s.cgroup {
            Some(cg) => format!("attached to cgroup {cg}"),
            None => "attached".to_string(),
        }
    } else {
        format!(
            "NOT ATTACHED: {}",
            s.attach_error
                .as_deref()
                .unwrap_or("no reason given (proxy-only mode?)")
        )
    };
    line("interception", &interception);
    line(
        "listen",
        &if s.listen.is_empty() {
            "-".into()
        } else {
            s.listen.join(", ")
        },
    );
    line("ports", if s.ports.is_empty() { "-" } else { &s.ports });
    line("control socket", &s.control_socket);
    line("state dir", &s.state_dir);
    let c = &s.counts;
    line(
        "connections",
        &format!(
            "{} ({} unresolved), {} passthrough",
            c.connections, c.connections_unresolved, c.passthrough
        ),
    );
    line(
        "traffic",
        &format!(
            "{} HTTP requests, {} MCP messages",
            c.http_requests, c.mcp_messages
        ),
    );
    if c.upstream_kept > 0 || c.upstream_reused > 0 {
        line(
            "upstream reuse",
            &format!("{} idle upstream connections kept, {} client connections served over one (limits.upstream_keepalive_ms)", c.upstream_kept, c.upstream_reused),
        );
    }
    if c.udp_refused > 0 {
        line("udp refused", &format!("{} (QUIC/HTTP3 toward in-scope ports; clients fall back to TCP)", c.udp_refused));
    }
    line("servers", &c.servers.to_string());
    line(
        "audit",
        &format!(
            "{} records, {} write errors, {}",
            c.audit_records,
            c.audit_write_errors,
            match &s.audit_durability {
                Some(d) => d.as_str(),
                None if s.audit_sync => "flushed before forwarding",
                None => "flushed in batches (a crash can lose the newest records)",
            }
        ),
    );
    line("policy", s.policy.as_deref().unwrap_or("-"));
    if let Some(c) = &s.coverage {
        line("coverage", &coverage_text(c));
    }
    if let Some(ca) = &s.ca {
        for (label, value) in ca_lines(ca) {
            line(label, &value);
        }
    }
    if s.held_calls > 0 {
        line("held calls", &format!("{} waiting for approval (mcpwatch pending)", s.held_calls));
    }
    let mut warnings: Vec<String> = Vec::new();
    if let Some(e) = &s.policy_error {
        warnings.push(format!("last policy reload was REJECTED (previous policy still in force): {}", e.lines().next().unwrap_or_default()));
    }
    if c.audit_write_errors > 0 {
        warnings.push(format!("{} audit writes failed", c.audit_write_errors));
    }
    if c.audit_pruned_young > 0 {
        warnings.push(format!(
            "{} audit records less than 24 h old were removed to stay within the record/size budget (a flood may be pushing records out: raise [limits] max_audit_records or [audit] max_bytes, and keep a sink)",
            c.audit_pruned_young
        ));
    }
    if s.failure_mode == FailureMode::Closed && s.attached && s.pinned_at.is_none() {
        warnings.push("failure mode is closed but the eBPF links are not pinned: if mcpwatchd dies, connections go direct".into());
    }
    warnings.extend(s.warnings.iter().cloned());
    if warnings.is_empty() {
        out.push_str("warnings        none\n");
    } else {
        out.push_str(&format!("WARNINGS ({})\n", warnings.len()));
        for w in &warnings {
            out.push_str(&format!("  ! {}\n", sanitize(w)));
        }
    }
    out
}

/// Last path component of an executable path.
/// `YYYY-MM-DD` of a Unix time in seconds.
fn day(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string().chars().take(10).collect()
}

/// The local CA's status lines: the CA signing now, what it may sign, and every previous CA
/// still trusted until withdrawn.
pub fn ca_lines(ca: &mcpwatch_api::CaStatus) -> Vec<(&'static str, String)> {
    let mut out = vec![(
        "local CA",
        format!("sha256 {}, expires {}", ca.current.fingerprint_sha256, day(ca.current.not_after_unix)),
    )];
    let constraints = match &ca.unconstrained_reason {
        Some(why) => format!("name constraints: none ({why})"),
        None => format!("name constraints: {}", ca.name_constraints),
    };
    out.push(("", constraints));
    for r in &ca.retired {
        let when = match r.withdraw_after_unix {
            Some(t) => format!("automatically on {}, or `mcpwatch ca withdraw`", day(t)),
            None => "`mcpwatch ca withdraw`".to_string(),
        };
        out.push((
            "previous CA",
            format!(
                "sha256 {}, expires {}, {} on {}: still trusted in the bundle; WITHDRAWAL PENDING ({when})",
                r.cert.fingerprint_sha256,
                day(r.cert.not_after_unix),
                r.reason,
                day(r.retired_at_unix)
            ),
        ));
    }
    out
}

pub fn basename(path: &str) -> &str {
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or(path)
}

/// "3s ago", "5m ago", "2h ago", "4d ago"; "-" for never; "just now" for the future
/// (clock skew) and for under a second.
pub fn relative(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "-".into();
    }
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0 => "just now".into(),
        1..60 => format!("{secs}s ago"),
        60..3_600 => format!("{}m ago", secs / 60),
        3_600..86_400 => format!("{}h ago", secs / 3_600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// `HH:MM:SS.mmm` (UTC) for today, `YYYY-MM-DD HH:MM:SS.mmm` for other days.
pub fn clock(ts_ms: u64, now_ms: u64) -> String {
    let stamp =
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ts_ms)).to_string();
    // "YYYY-MM-DDTHH:MM:SS.mmmZ"; anything else (years past 9999) is shown as is.
    if stamp.len() != 24 {
        return stamp;
    }
    if ts_ms / 86_400_000 == now_ms / 86_400_000 {
        stamp[11..23].to_string()
    } else {
        format!("{} {}", &stamp[..10], &stamp[11..23])
    }
}

/// `850µs`, `12.3ms`, `153ms`, `1.20s`, `12.3s`, `95s`.
pub fn duration_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..100_000 => format!("{:.1}ms", us as f64 / 1e3),
        100_000..1_000_000 => format!("{}ms", us / 1_000),
        1_000_000..10_000_000 => format!("{:.2}s", us as f64 / 1e6),
        10_000_000..100_000_000 => format!("{:.1}s", us as f64 / 1e6),
        _ => format!("{}s", us / 1_000_000),
    }
}

/// `512`, `1.2K`, `34K`, `5.6M`, `7.0G` (powers of 1024).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if n < 1024 {
        return n.to_string();
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1}{}", UNITS[unit])
    } else {
        format!("{v:.0}{}", UNITS[unit])
    }
}

/// The taint chain of one session (`mcpwatch audit --session`): which results tainted
/// it, and which later calls flow rules held or blocked, naming the tainting records.
pub fn taint_chain(records: &[AuditRecord]) -> String {
    let mut out = String::from("\ntaint chain:\n");
    let mut any = false;
    for r in records {
        let tool = sanitize(r.name.as_deref().unwrap_or("-"));
        let Some(f) = &r.flow else { continue };
        if f.taints {
            any = true;
            out.push_str(&format!("  {}  {tool}: result tainted the session\n", r.id));
        }
        let flow_rule = r.decision.as_ref().filter(|d| d.rules.iter().any(|x| x.starts_with("flow:")));
        if let Some(d) = flow_rule {
            any = true;
            out.push_str(&format!("  {}  {tool} [{}]: {} {}: {}\n", r.id, f.labels.join(","), d.action, d.effective, sanitize(&d.reason)));
        } else if f.tainted && !f.labels.is_empty() {
            out.push_str(&format!("  {}  {tool} [{}]: tainted by {}\n", r.id, f.labels.join(","), f.tainted_by.join(", ")));
        }
    }
    if !any {
        out.push_str("  (no untrusted content entered this session)\n");
    }
    out
}

/// `97.5 % of 400 tool calls governed (10 only observed on stdio)`.
pub fn coverage_text(c: &mcpwatch_api::Coverage) -> String {
    match c.governed_percent {
        None => "no tool calls seen yet".into(),
        Some(p) if c.calls_observed_only == 0 => format!("{p:.1} % of {} tool calls governed", c.calls_seen),
        Some(p) => format!(
            "{p:.1} % of {} tool calls governed ({} only observed on stdio: wrap those servers to govern them)",
            c.calls_seen, c.calls_observed_only
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpwatch_api::{CallStatus, Counts, ProcessInfo};

    const NOW: u64 = 1_700_000_000_000; // 2023-11-14T22:13:20Z

    #[test]
    fn taint_chain_names_the_tainting_record_and_the_blocked_call() {
        use mcpwatch_api::{DecisionView, FlowView};
        let flow = |tainted: bool, taints: bool, labels: &[&str]| FlowView {
            session: "s".into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            tainted,
            tainted_by: if tainted { vec!["r1".into()] } else { vec![] },
            taints,
        };
        let recs = vec![
            AuditRecord { id: "r0".into(), name: Some("echo".into()), flow: Some(flow(false, false, &[])), ..Default::default() },
            AuditRecord { id: "r1".into(), name: Some("read_issue".into()), flow: Some(flow(false, true, &["untrusted_content"])), ..Default::default() },
            AuditRecord { id: "r2".into(), name: Some("private_read".into()), flow: Some(flow(true, false, &["private_data"])), ..Default::default() },
            AuditRecord {
                id: "r3".into(),
                name: Some("public_post\x1b[2J".into()),
                flow: Some(flow(true, false, &["public_sink"])),
                decision: Some(DecisionView {
                    action: mcpwatch_api::ActionKind::RequireApproval,
                    effective: mcpwatch_api::Effect::Hold,
                    rules: vec!["flow:leak".into()],
                    reason: "flow rule `leak`".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        let text = taint_chain(&recs);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "taint chain:");
        assert_eq!(lines[2], "  r1  read_issue: result tainted the session");
        assert_eq!(lines[3], "  r2  private_read [private_data]: tainted by r1");
        assert!(lines[4].starts_with("  r3  public_post") && lines[4].ends_with("[public_sink]: require_approval hold: flow rule `leak`"), "{}", lines[4]);
        assert!(!text.contains('\x1b'), "escaped: {text:?}");
        assert!(taint_chain(&recs[..1]).contains("no untrusted content entered this session"));
    }

    #[test]
    fn relative_times() {
        assert_eq!(relative(NOW, 0), "-");
        assert_eq!(relative(NOW, NOW + 5_000), "just now");
        assert_eq!(relative(NOW, NOW - 999), "just now");
        assert_eq!(relative(NOW, NOW - 3_000), "3s ago");
        assert_eq!(relative(NOW, NOW - 61_000), "1m ago");
        assert_eq!(relative(NOW, NOW - 7_200_000), "2h ago");
        assert_eq!(relative(NOW, NOW - 3 * 86_400_000), "3d ago");
    }

    #[test]
    fn time_only_rows_drop_the_date() {
        let r = AuditRecord {
            ts_ms: NOW - 86_400_000,
            ..Default::default()
        };
        assert_eq!(audit_row(&r, NOW, false)[0], "2023-11-13 22:13:20.000");
        assert_eq!(audit_row(&r, NOW, true)[0], "22:13:20.000");
    }

    #[test]
    fn clock_shows_date_only_for_other_days() {
        assert_eq!(clock(NOW + 123, NOW), "22:13:20.123");
        assert_eq!(clock(NOW - 86_400_000, NOW), "2023-11-13 22:13:20.000");
    }

    #[test]
    fn durations_and_bytes() {
        assert_eq!(duration_us(850), "850µs");
        assert_eq!(duration_us(12_345), "12.3ms");
        assert_eq!(duration_us(153_000), "153ms");
        assert_eq!(duration_us(1_204_000), "1.20s");
        assert_eq!(duration_us(12_340_000), "12.3s");
        assert_eq!(duration_us(95_000_000), "95.0s");
        assert_eq!(duration_us(950_000_000), "950s");
        assert_eq!(bytes(512), "512");
        assert_eq!(bytes(1_229), "1.2K");
        assert_eq!(bytes(34 * 1024), "34K");
        assert_eq!(bytes(5 * 1024 * 1024 + 600 * 1024), "5.6M");
    }

    #[test]
    fn basenames() {
        assert_eq!(basename("/usr/bin/python3.12"), "python3.12");
        assert_eq!(basename("node"), "node");
        assert_eq!(basename("/opt/app/"), "app");
    }

    #[test]
    fn audit_row_contents() {
        let r = AuditRecord {
            ts_ms: NOW + 5,
            process: Some(std::sync::Arc::new(ProcessInfo {
                tgid: 4242,
                comm: "python3".into(),
                exe: Some("/usr/bin/python3.12".into()),
                ..Default::default()
            })),
            server: "http://127.0.0.2:8765/mcp".into(),
            method: Some("tools/call".into()),
            name: Some("add".into()),
            status: CallStatus::JsonrpcError {
                code: -32601,
                message: "no".into(),
            },
            duration_us: Some(1_500),
            request_bytes: 120,
            response_bytes: 2048,
            ..Default::default()
        };
        assert_eq!(
            audit_row(&r, NOW, false),
            vec![
                "22:13:20.005",
                "python3.12 (4242)",
                "http://127.0.0.2:8765/mcp",
                "tools/call",
                "add",
                "error -32601",
                "-",
                "1.5ms",
                "120/2.0K",
            ]
        );
        let invalid = AuditRecord {
            kind: MessageKind::Invalid,
            ts_ms: NOW,
            ..Default::default()
        };
        let row = audit_row(&invalid, NOW, false);
        assert_eq!(
            (
                row[1].as_str(),
                row[3].as_str(),
                row[5].as_str(),
                row[6].as_str()
            ),
            ("?", "(invalid)", "pending", "-")
        );
    }

    #[test]
    fn status_shows_both_cas_during_a_rotation_and_why_none_is_constrained() {
        let cert = |fp: &str| mcpwatch_api::CaCert { fingerprint_sha256: fp.into(), subject: "CN=x".into(), not_after_unix: 1_893_456_000 };
        let mut ca = mcpwatch_api::CaStatus {
            current: cert("AA:BB"),
            retired: vec![mcpwatch_api::RetiredCaCert { cert: cert("CC:DD"), retired_at_unix: 1_767_225_600, reason: "rotated".into(), withdraw_after_unix: Some(1_768_435_200) }],
            name_constraints: "permitted: DNS localhost".into(),
            unconstrained_reason: None,
            bundle_path: "/var/lib/mcpwatch/ca/bundle.pem".into(),
        };
        let text = status_text(&Status { ca: Some(ca.clone()), ..Default::default() });
        assert!(text.contains("local CA        sha256 AA:BB, expires 2030-01-01"), "{text}");
        assert!(text.contains("name constraints: permitted: DNS localhost"), "{text}");
        assert!(text.contains("previous CA     sha256 CC:DD") && text.contains("WITHDRAWAL PENDING (automatically on 2026-01-15"), "{text}");
        ca.retired.clear();
        ca.unconstrained_reason = Some("[tls] default = \"intercept\"".into());
        let text = status_text(&Status { ca: Some(ca), ..Default::default() });
        assert!(text.contains("name constraints: none ([tls] default = \"intercept\")") && !text.contains("previous CA"), "{text}");
    }

    #[test]
    fn status_puts_failure_mode_and_problems_up_front() {
        let s = Status {
            version: "0.1.0".into(),
            pid: 99,
            uptime_secs: 3_725,
            failure_mode: FailureMode::Closed,
            attached: false,
            attach_error: Some("cgroup v2 not mounted".into()),
            listen: vec!["127.0.0.1:15001".into()],
            ports: "80,443".into(),
            counts: Counts {
                audit_write_errors: 2,
                audit_records: 10,
                ..Default::default()
            },
            warnings: vec!["python client distrusts the CA".into()],
            ..Default::default()
        };
        let text = status_text(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "mcpwatchd       0.1.0 (pid 99), up 1h 2m 5s");
        assert!(
            lines[1].starts_with("FAILURE MODE    CLOSED"),
            "{}",
            lines[1]
        );
        assert_eq!(
            lines[2],
            "interception    NOT ATTACHED: cgroup v2 not mounted"
        );
        assert!(
            text.contains("audit           10 records, 2 write errors, flushed in batches"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "WARNINGS (2)\n  ! 2 audit writes failed\n  ! python client distrusts the CA\n"
            ),
            "{text}"
        );

        let ok = Status {
            attached: true,
            cgroup: Some("/sys/fs/cgroup/agents".into()),
            ..Default::default()
        };
        let text = status_text(&ok);
        assert!(text.contains("FAILURE MODE    OPEN"), "{text}");
        assert!(
            text.contains("interception    attached to cgroup /sys/fs/cgroup/agents\n"),
            "{text}"
        );
        assert!(text.ends_with("warnings        none\n"), "{text}");
        assert!(!text.contains("while mcpwatchd is down"), "{text}");

        let pinned = Status {
            failure_mode: FailureMode::Closed,
            attached: true,
            pinned_at: Some("/sys/fs/bpf/mcpwatch/%2Fagents".into()),
            ..Default::default()
        };
        let text = status_text(&pinned);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("FAILURE MODE    CLOSED"), "{text}");
        assert_eq!(
            lines[2],
            "                while mcpwatchd is down, MCP connections from the watched cgroup are REFUSED \
             (pinned at /sys/fs/bpf/mcpwatch/%2Fagents; release with `mcpwatchd --release-pins`)"
        );
        assert!(text.ends_with("warnings        none\n"), "{text}");
        let unpinned = Status { pinned_at: None, ..pinned };
        let text = status_text(&unpinned);
        assert!(!text.contains("while mcpwatchd is down"), "{text}");
        assert!(text.contains("! failure mode is closed but the eBPF links are not pinned"), "{text}");
    }

    #[test]
    fn coverage_reads_as_a_share_of_calls() {
        let c = mcpwatch_api::Coverage::from_counts(400, 10);
        assert_eq!((c.calls_governed, c.calls_observed_only), (390, 10));
        assert_eq!(coverage_text(&c), "97.5 % of 400 tool calls governed (10 only observed on stdio: wrap those servers to govern them)");
        assert_eq!(coverage_text(&mcpwatch_api::Coverage::from_counts(0, 0)), "no tool calls seen yet");
        assert_eq!(coverage_text(&mcpwatch_api::Coverage::from_counts(3, 0)), "100.0 % of 3 tool calls governed");
        assert_eq!(mcpwatch_api::Coverage::from_counts(2, 5).calls_governed, 0, "observed never exceeds seen");
    }
}
