//! `mcpwatch report`: the inventory, the audit trail's denied and redacted calls, changed tool
//! definitions and a coverage figure, as one self-contained HTML page (or JSON), for one host or
//! a fleet (`--merge DIR`).
//!
//! Why its own module: a report is read by people who do not run the CLI, often in a browser, so
//! it must stand alone (inline CSS and SVG, no script, no external asset) and every value in it
//! (server names, tool names, paths, reasons: attacker-controlled) is HTML-escaped here, in one
//! place ([`esc`]). The data comes from the live daemon and a local scan, from files written by
//! `list --json` / `scan --json` / `audit --json` (`--network`, `--scan`, `--audit`), or from
//! many hosts' files (`--merge`).

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use mcpwatch_api::{AuditFilter, AuditRecord, ServerEntry};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::Conn;
use crate::list::{self, ConfigEntry, INVENTORY_KIND, InvServer, Inventory, Standing};
use crate::table::sanitize;
use crate::{emit, now_ms};

/// Most tools drawn per server in the chart (the rest are summed up in the caption).
const CHART_TOOLS: usize = 15;
/// Most denied / redacted calls listed.
const MAX_LISTED: usize = 200;
/// How far back the audit trail is read for redacted calls (records, newest first).
const AUDIT_WINDOW: usize = 5000;
/// Largest input file `--merge` / `--network` / `--scan` / `--audit` reads.
const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Write the report as one self-contained HTML page to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Print the report data as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Fleet report from a directory of `list --format json` / `scan --json` / `list --json` files
    /// (one per host; each names its host, else the file name does).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["network", "scan", "audit", "no_scan", "policy", "home", "root"])]
    merge: Option<PathBuf>,
    /// Offline: the daemon's inventory from a `list --json` file instead of the socket.
    #[arg(long, value_name = "FILE")]
    network: Option<PathBuf>,
    /// Offline: configured servers from a `scan --json` file instead of a local scan.
    #[arg(long, value_name = "FILE")]
    scan: Option<PathBuf>,
    /// Offline: audit records from an `audit --json` (NDJSON) file instead of the socket.
    #[arg(long, value_name = "FILE")]
    audit: Option<PathBuf>,
    /// Host name to print (default: this host's, or the one the input files name).
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Do not scan client configurations.
    #[arg(long)]
    no_scan: bool,
    /// Policy file whose [[server]] registry classifies configured servers.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    scope: list::ScanScope,
}

/// Everything a report shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportData {
    pub kind: String,
    pub generated_ms: u64,
    pub hosts: Vec<Inventory>,
    /// The audit trail was available (denied/redacted lists are meaningful).
    pub audit: bool,
    pub denied: Vec<AuditRecord>,
    pub redacted: Vec<AuditRecord>,
    pub coverage: Coverage,
}

/// See docs/reports.md "Coverage".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Servers known from any source.
    pub known: usize,
    /// Of those, seen on the network by mcpwatchd (their calls pass a watched path).
    pub watched: usize,
    /// Configured (or running) and never seen: calls to them, if any, are invisible.
    pub unwatched: usize,
    /// `watched / known` in percent, `None` when nothing is known.
    pub percent: Option<f64>,
    /// Calls mcpwatchd saw.
    pub calls_seen: u64,
    /// Of those, calls to registered servers.
    pub calls_registered: u64,
    pub calls_registered_percent: Option<f64>,
}

fn percent(part: u64, whole: u64) -> Option<f64> {
    // Counts stay far below 2^52: the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    (whole > 0).then(|| (part as f64) * 100.0 / (whole as f64))
}

pub fn coverage(hosts: &[Inventory]) -> Coverage {
    let all = || hosts.iter().flat_map(|h| h.servers.iter());
    let known = all().count();
    let watched = all().filter(|s| s.seen).count();
    let calls_seen: u64 = all().map(|s| s.calls).sum();
    let calls_registered: u64 = all()
        .filter(|s| s.status == Standing::Registered)
        .map(|s| s.calls)
        .sum();
    Coverage {
        known,
        watched,
        unwatched: known - watched,
        percent: percent(watched as u64, known as u64),
        calls_seen,
        calls_registered,
        calls_registered_percent: percent(calls_registered, calls_seen),
    }
}

fn read_capped(p: &Path) -> Result<String> {
    let len = std::fs::metadata(p)
        .with_context(|| format!("cannot read {}", p.display()))?
        .len();
    if len > MAX_INPUT_BYTES {
        anyhow::bail!(
            "{} is larger than {} MiB",
            p.display(),
            MAX_INPUT_BYTES >> 20
        );
    }
    std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
}

/// Configured servers of a `scan --json` document, and the host it names.
fn scan_doc(v: &Value, what: &str) -> Result<(Vec<ConfigEntry>, Option<String>)> {
    let servers = v
        .get("servers")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    let entries: Vec<ConfigEntry> = serde_json::from_value(servers)
        .with_context(|| format!("{what}: not `mcpwatch scan --json` output"))?;
    Ok((
        entries,
        v.get("host").and_then(Value::as_str).map(str::to_string),
    ))
}

/// One host's inventory from one file of any kind `list`/`scan` write.
fn host_file(p: &Path) -> Result<Inventory> {
    let what = p.display().to_string();
    let v: Value =
        serde_json::from_str(&read_capped(p)?).with_context(|| format!("{what}: not JSON"))?;
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if v.get("kind").and_then(Value::as_str) == Some(INVENTORY_KIND) {
        return serde_json::from_value(v)
            .with_context(|| format!("{what}: bad `list --format json` document"));
    }
    if v.is_array() {
        let servers: Vec<ServerEntry> = serde_json::from_value(v)
            .with_context(|| format!("{what}: not `mcpwatch list --json` output"))?;
        let mut inv = list::merge(&stem, now_ms(), Some(&servers), None);
        list::apply_gateways(&mut inv, None);
        return Ok(inv);
    }
    let (entries, host) = scan_doc(&v, &what)?;
    let mut inv = list::merge(&host.unwrap_or(stem), now_ms(), None, Some(&entries));
    // A scan's own registry verdicts (bypass included) are in its entries; the note
    // says when no gateway could be checked here.
    list::apply_gateways(&mut inv, None);
    Ok(inv)
}

fn merge_dir(dir: &Path) -> Result<Vec<Inventory>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        anyhow::bail!("no *.json files in {}", dir.display());
    }
    let mut hosts: Vec<Inventory> = Vec::new();
    for f in &files {
        let inv = host_file(f)?;
        // A host's scan and list files land in one inventory: merge by host name.
        match hosts.iter_mut().find(|h| h.host == inv.host) {
            Some(h) => combine(h, inv),
            None => hosts.push(inv),
        }
    }
    Ok(hosts)
}

/// Fold `b` (same host) into `a`: servers with the same id are one server.
fn combine(a: &mut Inventory, b: Inventory) {
    a.network |= b.network;
    a.scanned |= b.scanned;
    for s in b.servers {
        match a.servers.iter_mut().find(|x| x.id == s.id) {
            Some(x) if !x.seen && s.seen => *x = s,
            Some(_) => {}
            None => a.servers.push(s),
        }
    }
    // Notes of a missing source no longer hold once the other file supplied it.
    let (network, scanned) = (a.network, a.scanned);
    a.notes
        .retain(|n| !(network && n == list::NO_NETWORK_NOTE || scanned && n == list::NO_SCAN_NOTE));
    a.servers.sort_by(|x, y| {
        x.status
            .cmp(&y.status)
            .then(y.calls.cmp(&x.calls))
            .then(x.id.cmp(&y.id))
    });
}

fn audit_lists(records: Vec<AuditRecord>) -> (Vec<AuditRecord>, Vec<AuditRecord>) {
    let denied: Vec<AuditRecord> = records
        .iter()
        .filter(|r| r.decision.as_ref().is_some_and(|d| d.action == mcpwatch_api::ActionKind::Deny))
        .cloned()
        .collect();
    let redacted: Vec<AuditRecord> = records
        .into_iter()
        .filter(|r| r.findings.iter().any(|f| f.action == "redact"))
        .collect();
    let newest = |mut v: Vec<AuditRecord>| {
        v.sort_by_key(|r| std::cmp::Reverse(r.ts_ms));
        v.truncate(MAX_LISTED);
        v
    };
    (newest(denied), newest(redacted))
}

fn audit_call(socket: &Path, filter: AuditFilter) -> Result<Vec<AuditRecord>> {
    let mut all = Vec::new();
    Conn::audit(socket, filter, |records| {
        all.extend(records);
        Ok(())
    })?;
    Ok(all)
}

fn gather(socket: &Path, args: &ReportArgs) -> Result<ReportData> {
    let offline = args.network.is_some() || args.scan.is_some() || args.audit.is_some();
    let (hosts, records) = if let Some(dir) = &args.merge {
        (merge_dir(dir)?, None)
    } else if offline {
        let network: Option<Vec<ServerEntry>> =
            match &args.network {
                Some(p) => Some(serde_json::from_str(&read_capped(p)?).with_context(|| {
                    format!("{}: not `mcpwatch list --json` output", p.display())
                })?),
                None => None,
            };
        let (configs, scan_host) = match &args.scan {
            Some(p) => {
                let v: Value = serde_json::from_str(&read_capped(p)?)
                    .with_context(|| format!("{}: not JSON", p.display()))?;
                let (c, h) = scan_doc(&v, &p.display().to_string())?;
                (Some(c), h)
            }
            None => (None, None),
        };
        let records = match &args.audit {
            Some(p) => {
                let text = read_capped(p)?;
                let mut v = Vec::new();
                for (i, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    v.push(serde_json::from_str::<AuditRecord>(line).with_context(|| {
                        format!("{}:{}: not an audit record", p.display(), i + 1)
                    })?);
                }
                Some(v)
            }
            None => None,
        };
        let host = args
            .host
            .clone()
            .or(scan_host)
            .unwrap_or_else(list::hostname);
        let policy = crate::scan::load_policy(args.policy.as_deref())?;
        let mut inv = list::merge(&host, now_ms(), network.as_deref(), configs.as_deref());
        list::apply_gateways(&mut inv, policy.as_ref());
        (vec![inv], records)
    } else {
        let mut inv = list::build(socket, args.no_scan, args.policy.as_deref(), &args.scope)?;
        if let Some(h) = &args.host {
            inv.host = h.clone();
        }
        let records = if inv.network {
            let mut r = audit_call(
                socket,
                AuditFilter {
                    decision: Some("deny".into()),
                    limit: Some(MAX_LISTED),
                    ..Default::default()
                },
            )?;
            r.extend(
                audit_call(
                    socket,
                    AuditFilter {
                        limit: Some(AUDIT_WINDOW),
                        ..Default::default()
                    },
                )?
                .into_iter()
                .filter(|x| x.decision.as_ref().is_none_or(|d| d.action != mcpwatch_api::ActionKind::Deny)),
            );
            Some(r)
        } else {
            None
        };
        (vec![inv], records)
    };
    let audit = records.is_some();
    let (denied, redacted) = audit_lists(records.unwrap_or_default());
    Ok(ReportData {
        kind: "mcpwatch-report".into(),
        generated_ms: now_ms(),
        coverage: coverage(&hosts),
        hosts,
        audit,
        denied,
        redacted,
    })
}

pub fn run(socket: &Path, args: &ReportArgs, out: &mut dyn Write) -> Result<()> {
    if args.html.is_none() && !args.json {
        anyhow::bail!("say what to write: --html FILE and/or --json");
    }
    let data = gather(socket, args)?;
    if let Some(path) = &args.html {
        std::fs::write(path, html(&data))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        emit(out, &format!("{}\n", serde_json::to_string_pretty(&data)?))?;
    }
    Ok(())
}

/// HTML-escape untrusted text (also for attribute values), after making control and bidi
/// characters visible so they cannot reorder what the reader sees.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in sanitize(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn pct(p: Option<f64>) -> String {
    p.map_or_else(|| "n/a".into(), |p| format!("{p:.0}%"))
}

const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;background:#f4f6f9}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b8c0cc}main{padding:18px 28px;max-width:1400px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:14px 18px;margin:0 0 18px}
h2{font-size:17px;margin:0 0 10px}.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:18px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:10px 16px;min-width:120px;border-top:4px solid #8a94a6}
.card b{display:block;font-size:26px}.card span{color:#5b6475;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.c-shadow{border-color:#d93025}.c-running{border-color:#e37400}.c-configured-only{border-color:#f2b600}.c-registered{border-color:#188038}.c-cov{border-color:#1a73e8}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e3e7ee;vertical-align:top}
th{background:#eef1f6;font-size:12px;text-transform:uppercase;letter-spacing:.03em}td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{font-weight:600;white-space:nowrap}.s-shadow{color:#d93025}.s-running{color:#b25900}.s-configured-only{color:#8a6d00}.s-registered{color:#188038}
.flag{display:inline-block;background:#fde7e6;color:#a52714;border-radius:3px;padding:0 5px;margin:1px;font-size:12px}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.muted{color:#6b7384}.note{background:#fff8e1;border-left:4px solid #f2b600;padding:6px 10px;margin:4px 0}
.charts{display:flex;flex-wrap:wrap;gap:18px}.chart-box{flex:1 1 420px}.chart-box h3{font-size:14px;margin:0 0 4px}
svg .bar{fill:#1a73e8}svg text{font:12px system-ui,sans-serif;fill:#1d2330}
";

fn card(out: &mut String, class: &str, id: &str, value: &str, label: &str) {
    let _ = write!(
        out,
        "<div class=\"card {class}\" id=\"{id}\"><b>{}</b><span>{}</span></div>",
        esc(value),
        esc(label)
    );
}

fn flags(s: &InvServer) -> String {
    let mut ids: Vec<&str> = s.risks.iter().map(|r| r.flag.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out: String = ids
        .iter()
        .map(|f| format!("<span class=\"flag\">{}</span>", esc(f)))
        .collect();
    // What the daemon found on the wire belongs next to what the scan found in files.
    for t in &s.tools {
        let what = if t.changed {
            "changed tool"
        } else if t.poisoning.is_some() {
            "suspicious tool"
        } else {
            continue;
        };
        let _ = write!(out, "<span class=\"flag\">{what}: {}</span>", esc(&t.name));
    }
    out
}

fn where_configured(s: &InvServer) -> String {
    s.configs
        .iter()
        .map(|c| {
            let line = c.line.map(|l| format!(":{l}")).unwrap_or_default();
            let off = if c.enabled { "" } else { " (disabled)" };
            format!(
                "<div class=\"mono\">{} {} <span class=\"muted\">{}{}{}</span></div>",
                esc(&c.client),
                esc(&c.scope),
                esc(&c.file),
                line,
                off
            )
        })
        .collect()
}

/// One horizontal bar chart of a server's tools by calls.
fn chart(out: &mut String, idx: usize, host: &str, s: &InvServer) {
    let mut tools: Vec<&mcpwatch_api::ToolEntry> = s.tools.iter().collect();
    tools.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.name.cmp(&b.name)));
    let shown = tools.len().min(CHART_TOOLS);
    let max = tools.first().map_or(1, |t| t.calls.max(1));
    let (label_w, bar_w, row_h) = (190u64, 300u64, 22u64);
    let height = row_h * shown as u64 + 6;
    let _ = write!(
        out,
        "<div class=\"chart-box\"><h3>{} <span class=\"muted\">{} calls{}</span></h3>",
        esc(&s.id),
        s.calls,
        if host.is_empty() {
            String::new()
        } else {
            format!(" · {}", esc(host))
        }
    );
    let _ = write!(
        out,
        "<svg class=\"chart\" id=\"chart-{idx}\" data-server=\"{}\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"calls per tool\">",
        esc(&s.id),
        label_w + bar_w + 60
    );
    for (i, t) in tools.iter().take(shown).enumerate() {
        let y = row_h * i as u64 + 3;
        let w = (t.calls * bar_w).div_ceil(max).max(u64::from(t.calls > 0));
        let name: String = t.name.chars().take(28).collect();
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><rect class=\"bar\" data-tool=\"{}\" data-calls=\"{}\" x=\"{label_w}\" y=\"{y}\" width=\"{w}\" height=\"{}\"><title>{}: {}</title></rect><text x=\"{}\" y=\"{}\">{}</text>",
            label_w - 6,
            y + 14,
            esc(&name),
            esc(&t.name),
            t.calls,
            row_h - 6,
            esc(&t.name),
            t.calls,
            label_w + w + 4,
            y + 14,
            t.calls
        );
    }
    out.push_str("</svg>");
    let attributed: u64 = tools.iter().map(|t| t.calls).sum();
    if s.calls > attributed {
        // The daemon counts a call per tool only for tools it has seen listed.
        let _ = write!(
            out,
            "<p class=\"muted unattributed\">{} calls to tools not listed when they were called</p>",
            s.calls - attributed
        );
    }
    if tools.len() > shown {
        let rest: u64 = tools[shown..].iter().map(|t| t.calls).sum();
        let _ = write!(
            out,
            "<p class=\"muted\">and {} more tools ({rest} calls)</p>",
            tools.len() - shown
        );
    }
    out.push_str("</div>");
}

/// A table of audit records, or why there is none (`audit`: the trail was read).
fn audit_table(
    out: &mut String,
    audit: bool,
    id: &str,
    records: &[AuditRecord],
    last: &str,
    cell: impl Fn(&AuditRecord) -> String,
) {
    if records.is_empty() {
        let why = if audit {
            "None."
        } else {
            "Unknown (no audit trail)."
        };
        let _ = write!(out, "<p class=\"muted\">{why}</p>");
        return;
    }
    let _ = write!(
        out,
        "<table id=\"{id}\"><thead><tr><th>Time (UTC)</th><th>Process</th><th>Server</th><th>Tool</th><th>{}</th></tr></thead><tbody>",
        esc(last)
    );
    for r in records {
        let process = r
            .process
            .as_ref()
            .map(|p| {
                format!(
                    "{} ({})",
                    p.exe
                        .as_deref()
                        .map(crate::view::basename)
                        .unwrap_or(&p.comm),
                    p.tgid
                )
            })
            .unwrap_or_else(|| "?".into());
        let _ = write!(
            out,
            "<tr><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&time(r.ts_ms)),
            esc(&process),
            esc(&r.server),
            esc(r.name.as_deref().unwrap_or("-")),
            cell(r)
        );
    }
    out.push_str("</tbody></table>");
}

/// The whole page.
pub fn html(d: &ReportData) -> String {
    let fleet = d.hosts.len() > 1;
    let mut all: Vec<(&str, &InvServer)> = d
        .hosts
        .iter()
        .flat_map(|h| h.servers.iter().map(move |s| (h.host.as_str(), s)))
        .collect();
    // Across hosts too: most alarming first, then busiest.
    all.sort_by(|(ha, a), (hb, b)| {
        a.status
            .cmp(&b.status)
            .then(b.calls.cmp(&a.calls))
            .then(ha.cmp(hb))
            .then(a.id.cmp(&b.id))
    });
    let count = |st: Standing| all.iter().filter(|(_, s)| s.status == st).count();
    let title = if fleet {
        format!("MCP fleet report: {} hosts", d.hosts.len())
    } else {
        format!(
            "MCP report: {}",
            d.hosts.first().map_or("", |h| h.host.as_str())
        )
    };
    let mut o = String::with_capacity(64 * 1024);
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
         <title>{}</title><style>{CSS}</style></head><body><header><h1 id=\"title\">{}</h1><p>Generated {} by mcpwatch {}</p></header><main>",
        esc(&title),
        esc(&title),
        esc(&time(d.generated_ms)),
        env!("CARGO_PKG_VERSION")
    );

    // Summary cards: the 10-second picture.
    o.push_str("<div class=\"cards\" id=\"summary\">");
    card(
        &mut o,
        "",
        "count-servers",
        &all.len().to_string(),
        "servers",
    );
    for st in Standing::ALL {
        card(
            &mut o,
            &format!("c-{}", st.id()),
            &format!("count-{}", st.id()),
            &count(st).to_string(),
            st.id(),
        );
    }
    let risky = all.iter().filter(|(_, s)| !s.risks.is_empty()).count();
    card(
        &mut o,
        "c-shadow",
        "count-risky",
        &risky.to_string(),
        "with risk flags",
    );
    let changed_n: usize = all.iter().map(|(_, s)| s.changed_tools().count()).sum();
    card(
        &mut o,
        "c-shadow",
        "count-changed",
        &changed_n.to_string(),
        "changed tools",
    );
    card(
        &mut o,
        "",
        "count-calls",
        &d.coverage.calls_seen.to_string(),
        "calls seen",
    );
    let audit_n = |n: usize| if d.audit { n.to_string() } else { "n/a".into() };
    card(
        &mut o,
        "c-shadow",
        "count-denied",
        &audit_n(d.denied.len()),
        "denied calls",
    );
    card(
        &mut o,
        "c-running",
        "count-redacted",
        &audit_n(d.redacted.len()),
        "redacted calls",
    );
    card(
        &mut o,
        "c-cov",
        "coverage-percent",
        &pct(d.coverage.percent),
        "coverage (servers watched)",
    );
    o.push_str("</div>");

    // Each note once, naming the hosts it applies to unless it applies to all.
    let mut by_note: Vec<(&str, Vec<&str>)> = Vec::new();
    for h in &d.hosts {
        for n in &h.notes {
            match by_note.iter_mut().find(|(t, _)| t == n) {
                Some((_, hs)) => hs.push(&h.host),
                None => by_note.push((n, vec![&h.host])),
            }
        }
    }
    let notes: Vec<String> = by_note
        .iter()
        .map(|(n, hs)| {
            if fleet && hs.len() < d.hosts.len() {
                format!("{}: {n}", hs.join(", "))
            } else {
                (*n).to_string()
            }
        })
        .collect();
    if !notes.is_empty() || !d.audit {
        o.push_str("<section id=\"notes\"><h2>What this report cannot see</h2>");
        for n in &notes {
            let _ = write!(o, "<div class=\"note\">{}</div>", esc(n));
        }
        if !d.audit {
            o.push_str("<div class=\"note\">no audit trail was given: denied and redacted calls are unknown</div>");
        }
        o.push_str("</section>");
    }

    if fleet {
        o.push_str("<section><h2>Hosts</h2><table id=\"hosts\"><thead><tr><th>Host</th><th>Servers</th><th>Shadow</th><th>Running</th><th>Configured only</th><th>Registered</th><th>Calls</th><th>Coverage</th><th>Sources</th></tr></thead><tbody>");
        for h in &d.hosts {
            let c = coverage(std::slice::from_ref(h));
            let sources = [(h.network, "network"), (h.scanned, "config")]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(" + ");
            let _ = write!(
                o,
                "<tr data-host=\"{}\"><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(&h.host),
                esc(&h.host),
                h.servers.len(),
                h.count(Standing::Shadow),
                h.count(Standing::Running),
                h.count(Standing::ConfiguredOnly),
                h.count(Standing::Registered),
                c.calls_seen,
                pct(c.percent),
                sources
            );
        }
        o.push_str("</tbody></table></section>");
    }

    // Servers by status.
    o.push_str("<section><h2>Servers by status</h2><table id=\"servers\"><thead><tr>");
    if fleet {
        o.push_str("<th>Host</th>");
    }
    o.push_str("<th>Status</th><th>Server</th><th>Name</th><th>Transport</th><th>Calls</th><th>Clients (users)</th><th>Flags</th><th>Configured in</th></tr></thead><tbody>");
    for (host, s) in &all {
        let _ = write!(
            o,
            "<tr data-status=\"{}\" data-server=\"{}\">",
            s.status.id(),
            esc(&s.id)
        );
        if fleet {
            let _ = write!(o, "<td>{}</td>", esc(host));
        }
        let users = if s.users.is_empty() {
            String::new()
        } else {
            format!(
                " <span class=\"muted\">({})</span>",
                esc(&s.users.join(", "))
            )
        };
        let _ = write!(
            o,
            "<td class=\"status s-{}\">{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}{}</td><td>{}</td><td>{}</td></tr>",
            s.status.id(),
            esc(&list::status_label(s)),
            esc(&s.id),
            esc(&s.name),
            esc(&s.transport),
            if s.seen {
                s.calls.to_string()
            } else {
                "–".into()
            },
            esc(&s.clients.join(", ")),
            users,
            flags(s),
            where_configured(s)
        );
    }
    o.push_str("</tbody></table></section>");

    // Risk flags, one row per flag and server.
    o.push_str("<section><h2>Risk flags</h2>");
    let risks: Vec<(&str, &InvServer, &list::RiskNote)> = all
        .iter()
        .flat_map(|(h, s)| s.risks.iter().map(move |r| (*h, *s, r)))
        .collect();
    if risks.is_empty() {
        o.push_str(
            "<p class=\"muted\" id=\"no-risks\">No risk flags in the scanned configurations.</p>",
        );
    } else {
        o.push_str("<table id=\"risks\"><thead><tr><th>Flag</th><th>Server</th><th>Detail</th></tr></thead><tbody>");
        for (h, s, r) in risks {
            let on = if fleet {
                format!(" <span class=\"muted\">on {}</span>", esc(h))
            } else {
                String::new()
            };
            let _ = write!(
                o,
                "<tr data-flag=\"{}\"><td><span class=\"flag\">{}</span></td><td><b>{}</b>{on}<div class=\"mono muted\">{}</div></td><td>{}</td></tr>",
                esc(&r.flag),
                esc(&r.flag),
                esc(&s.name),
                esc(&s.id),
                esc(&r.detail)
            );
        }
        o.push_str("</tbody></table>");
    }
    o.push_str("</section>");

    // Calls per tool.
    o.push_str("<section><h2>Top tools by calls</h2><div class=\"charts\" id=\"charts\">");
    let mut charted = 0;
    for (i, (h, s)) in all.iter().enumerate() {
        if s.seen && (s.calls > 0 || s.tools.iter().any(|t| t.calls > 0)) {
            chart(&mut o, i, if fleet { h } else { "" }, s);
            charted += 1;
        }
    }
    if charted == 0 {
        o.push_str("<p class=\"muted\">No tool calls seen.</p>");
    }
    o.push_str("</div></section>");

    // Denied and redacted calls.
    o.push_str("<section><h2>Denied calls</h2>");
    {
        audit_table(&mut o, d.audit, "denied", &d.denied, "Rule / reason", |r| {
            let dec = r.decision.clone().unwrap_or_default();
            format!(
                "<code>{}</code> {} <span class=\"muted\">({}, {})</span>",
                esc(&dec.rules.join(", ")),
                esc(&dec.reason),
                esc(dec.mode.as_str()),
                esc(dec.effective.as_str())
            )
        });
    }
    o.push_str("</section><section><h2>Redacted calls</h2>");
    {
        audit_table(&mut o, d.audit, "redacted", &d.redacted, "Detectors", |r| {
            r.findings
                .iter()
                .filter(|f| f.action == "redact")
                .map(|f| {
                    format!(
                        "<span class=\"flag\">{}</span> ×{} in {}",
                        esc(&f.detector),
                        f.count,
                        esc(&f.direction)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        });
    }
    o.push_str("</section>");

    // Changed tool definitions and alerts.
    o.push_str("<section><h2>Changed tool definitions</h2>");
    let changed: Vec<(&str, &InvServer, &mcpwatch_api::ToolEntry)> = all
        .iter()
        .flat_map(|(h, s)| s.changed_tools().map(move |t| (*h, *s, t)))
        .collect();
    if changed.is_empty() {
        o.push_str("<p class=\"muted\">No tool changed since it was pinned.</p>");
    } else {
        o.push_str("<table id=\"changed\"><thead><tr><th>Server</th><th>Tool</th><th>State</th><th>What changed</th></tr></thead><tbody>");
        for (_, s, t) in changed {
            let state = t
                .hidden
                .as_deref()
                .map_or_else(|| "changed".to_string(), |h| format!("hidden: {h}"));
            let diff: String = t
                .diff
                .iter()
                .map(|l| format!("<div class=\"mono\">{}</div>", esc(l)))
                .collect();
            let _ = write!(
                o,
                "<tr data-tool=\"{}\"><td class=\"mono\">{}</td><td><b>{}</b></td><td>{}</td><td>{diff}</td></tr>",
                esc(&t.name),
                esc(&s.id),
                esc(&t.name),
                esc(&state)
            );
        }
        o.push_str("</tbody></table>");
    }
    let alerts: Vec<(&InvServer, &String)> = all
        .iter()
        .flat_map(|(_, s)| s.alerts.iter().map(move |a| (*s, a)))
        .collect();
    if !alerts.is_empty() {
        o.push_str("<h2>Alerts</h2><ul id=\"alerts\">");
        for (s, a) in alerts {
            let _ = write!(
                o,
                "<li><span class=\"mono\">{}</span>: {}</li>",
                esc(&s.id),
                esc(a)
            );
        }
        o.push_str("</ul>");
    }
    o.push_str("</section>");

    // Coverage, with its definition.
    let c = &d.coverage;
    let _ = write!(
        o,
        "<section id=\"coverage\"><h2>Coverage</h2><p><b>{}</b> of known MCP servers are on a watched path: \
         <span id=\"cov-watched\">{}</span> seen by mcpwatch of <span id=\"cov-known\">{}</span> known \
         (<span id=\"cov-unwatched\">{}</span> configured but never seen).</p>\
         <p><b>{}</b> of the {} calls mcpwatch saw went to registered servers ({} calls).</p>\
         <p class=\"muted\">Calls to servers mcpwatch never saw (stdio servers, remote servers reached around the watched \
         cgroup) cannot be counted: the share of all MCP calls on the host that mcpwatch saw is unknown, and the server \
         coverage above is the measurable proxy. See docs/reports.md.</p></section>",
        pct(c.percent),
        c.watched,
        c.known,
        c.unwatched,
        pct(c.calls_registered_percent),
        c.calls_seen,
        c.calls_registered
    );
    o.push_str("</main></body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_quotes_and_bidi() {
        assert_eq!(
            esc("<img src=x onerror=\"a\">&'"),
            "&lt;img src=x onerror=&quot;a&quot;&gt;&amp;&#39;"
        );
        assert_eq!(esc("a\u{202e}b"), "a\\u{202e}b");
    }

    #[test]
    fn hostile_names_never_reach_the_page_as_markup() {
        let mut inv = list::merge(
            "h<b>",
            1,
            Some(&[ServerEntry {
                endpoint: "http://x:1/<script>".into(),
                server_name: Some("<script>alert(1)</script>".into()),
                call_count: 1,
                tools: vec![mcpwatch_api::ToolEntry {
                    name: "\"><svg onload=x>".into(),
                    calls: 1,
                    changed: true,
                    diff: vec!["<i>".into()],
                    ..Default::default()
                }],
                alerts: vec!["<iframe>".into()],
                ..Default::default()
            }]),
            None,
        );
        inv.notes.push("<b>note</b>".into());
        let d = ReportData {
            kind: "r".into(),
            generated_ms: 0,
            coverage: coverage(std::slice::from_ref(&inv)),
            hosts: vec![inv],
            audit: false,
            denied: vec![],
            redacted: vec![],
        };
        let page = html(&d);
        for bad in [
            "<script>",
            "<svg onload",
            "<iframe",
            "<i>",
            "<b>note",
            "h<b>",
        ] {
            assert!(!page.contains(bad), "{bad} unescaped");
        }
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn coverage_counts_watched_servers_and_registered_calls() {
        let net = [
            ServerEntry {
                endpoint: "http://a:1/".into(),
                registered: Some("a".into()),
                call_count: 3,
                ..Default::default()
            },
            ServerEntry {
                endpoint: "http://b:1/".into(),
                call_count: 1,
                ..Default::default()
            },
        ];
        let inv = list::merge("h", 1, Some(&net), None);
        let c = coverage(&[inv.clone(), inv]);
        assert_eq!(
            (c.known, c.watched, c.calls_seen, c.calls_registered),
            (4, 4, 8, 6)
        );
        assert_eq!(c.calls_registered_percent, Some(75.0));
    }
}
