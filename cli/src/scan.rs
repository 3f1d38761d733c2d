//! `mcpwatch scan`: a one-shot, daemon-free scan of the MCP client configurations on this host,
//! rendered as a table, JSON, CSV, Markdown or SARIF.
//!
//! Why in the CLI: the scan needs no daemon and no privileges beyond reading files (run it as
//! root to see every home), so it belongs with the operator's tools, and fleet scripts and CI use
//! its exit status: 0 clean, 1 something shadow, risky or unreadable, 2 on error. The discovery
//! itself lives in `mcpwatch-discover`; this module only parses flags and renders. Every value it
//! prints was redacted there; this module adds terminal/CSV/Markdown escaping of the text that
//! other users control (server names, paths).

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use mcpwatch_discover::{Environment, FileError, Options, Report, Risk, RiskFlag, Server};
use serde_json::{Value, json};

use crate::emit;
use crate::table::{Column, Table, sanitize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
    Md,
    Sarif,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Scan only this home directory (repeatable) instead of every home under /home and /root.
    /// Without --root, system-wide managed files are then not read.
    #[arg(long, value_name = "DIR")]
    home: Vec<PathBuf>,
    /// Filesystem root to scan below (homes, /etc managed files, recorded project paths).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Also walk this directory for project files (.mcp.json, .vscode/mcp.json, ...); repeatable.
    #[arg(long, value_name = "DIR")]
    path: Vec<PathBuf>,
    /// How deep --path walks go (node_modules, .git and hidden directories are skipped).
    #[arg(long, value_name = "N", default_value_t = 6)]
    max_depth: usize,
    /// Policy file whose [[server]] registry tells registered servers from shadow ones.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Parse the `--policy` file, if any (its [[server]] registry classifies servers).
pub fn load_policy(path: Option<&std::path::Path>) -> Result<Option<mcpwatch_policy::Policy>> {
    let Some(p) = path else { return Ok(None) };
    let src = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    mcpwatch_policy::parse(&src, &p.display().to_string())
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{}", e.render()))
}

/// Run the scan and print it. Exit 1 when something is shadow, risky or unreadable.
pub fn run(args: &ScanArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let policy = load_policy(args.policy.as_deref())?;
    for d in args.home.iter().chain(&args.path).chain(&args.root) {
        if !d.is_dir() {
            anyhow::bail!("{} is not a directory", d.display());
        }
    }
    let opts = Options {
        root: args.root.clone().unwrap_or_else(|| PathBuf::from("/")),
        homes: (!args.home.is_empty()).then(|| args.home.clone()),
        system: args.home.is_empty() || args.root.is_some(),
        paths: args.path.clone(),
        max_depth: args.max_depth,
        env: Environment::from_process(),
    };
    let report = mcpwatch_discover::scan(&opts, policy.as_ref());
    let format = if args.json { Format::Json } else { args.format };
    let text = match format {
        Format::Table => table(&report),
        Format::Json => {
            let mut t = serde_json::to_string_pretty(&json_doc(&report))?;
            t.push('\n');
            t
        }
        Format::Csv => csv(&report),
        Format::Md => markdown(&report),
        Format::Sarif => {
            let mut t = serde_json::to_string_pretty(&sarif(&report))?;
            t.push('\n');
            t
        }
    };
    emit(out, &text)?;
    Ok(if report.needs_attention() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// What was launched: `command args...` for stdio (the bridge URL is in the args), else the URL.
fn launch(s: &Server) -> String {
    match &s.command {
        Some(c) => {
            let mut t = c.clone();
            for a in &s.args {
                t.push(' ');
                t.push_str(a);
            }
            t
        }
        None => s.url.clone().unwrap_or_default(),
    }
}

fn location(file: &std::path::Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", file.display()),
        None => file.display().to_string(),
    }
}

fn pids(s: &Server) -> String {
    let p: Vec<String> = s.pids.iter().map(u32::to_string).collect();
    if p.is_empty() {
        "-".into()
    } else {
        p.join(",")
    }
}

fn risk_ids(s: &Server) -> String {
    let mut ids: Vec<&str> = s.risks.iter().map(|r| r.flag.id()).collect();
    ids.dedup();
    ids.join(",")
}

fn summary(r: &Report) -> String {
    format!(
        "{} servers in {} files ({} homes, {} projects): {} shadow, {} risky, {} unreadable files",
        r.servers.len(),
        r.files_scanned,
        r.homes_scanned,
        r.projects_scanned,
        r.shadow_count(),
        r.risky_count(),
        r.errors.len()
    )
}

fn error_line(e: &FileError) -> String {
    let pos = match (e.line, e.column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    };
    format!("{}{pos}: {} ({})", e.file.display(), e.message, e.client)
}

/// One line per risk of every risky server, under `heading`; empty when nothing is risky.
fn findings(r: &Report, heading: &str, line: impl Fn(&Server, &Risk) -> String) -> String {
    let mut out = String::new();
    for s in &r.servers {
        for risk in &s.risks {
            if out.is_empty() {
                out.push_str(heading);
            }
            out.push_str(&line(s, risk));
            out.push('\n');
        }
    }
    out
}

fn table(r: &Report) -> String {
    let mut t = Table::new(vec![
        Column::left("CLIENT", 0, 14),
        Column::left("SCOPE", 0, 8),
        Column::left("OWNER", 0, 12),
        Column::left("NAME", 0, 24),
        Column::left("TRANSPORT", 0, 9),
        Column::left("LAUNCH", 0, 60),
        Column::left("REGISTRY", 0, 16),
        Column::left("PIDS", 0, 16),
        Column::left("RISKS", 0, 48),
        Column::left("FILE", 0, 200),
    ]);
    let rows: Vec<Vec<String>> = r
        .servers
        .iter()
        .map(|s| {
            vec![
                s.client.to_string(),
                s.scope.as_str().to_string(),
                sanitize(&s.owner),
                sanitize(&s.name) + if s.enabled { "" } else { " (off)" },
                s.transport.as_str().to_string(),
                sanitize(&launch(s)),
                sanitize(s.registry.label()),
                pids(s),
                risk_ids(s),
                sanitize(&location(&s.file, s.line)),
            ]
        })
        .collect();
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("No MCP servers found in client configurations.\n");
    } else {
        t.fit(&rows);
        out.push_str(&t.render(&rows));
    }
    // Shadow servers are marked in the REGISTRY column; the reasons are in --json and SARIF.
    out.push_str(&findings(r, "\nFindings:\n", |s, risk| {
        let at = location(&s.file, s.line);
        sanitize(&format!(
            "  {} [{}] {}: {at}",
            s.name, risk.flag, risk.detail
        ))
    }));
    if !r.errors.is_empty() {
        out.push_str("\nUnreadable files (scan went on):\n");
        for e in &r.errors {
            let _ = writeln!(out, "  {}", sanitize(&error_line(e)));
        }
    }
    let _ = writeln!(out, "\n{}", summary(r));
    out
}

fn json_doc(r: &Report) -> Value {
    json!({
        "version": 1,
        "host": crate::list::hostname(),
        "summary": {
            "servers": r.servers.len(),
            "files_scanned": r.files_scanned,
            "homes_scanned": r.homes_scanned,
            "projects_scanned": r.projects_scanned,
            "shadow": r.shadow_count(),
            "bypass": r.bypass_count(),
            "risky": r.risky_count(),
            "unreadable": r.errors.len(),
            "unwrapped": r.unwrapped_count(),
        },
        "servers": r.servers,
        "errors": r.errors,
    })
}

/// One CSV cell: quoted when needed; a leading `= + - @` is neutralised (spreadsheet formulas).
pub(crate) fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv(r: &Report) -> String {
    let mut out = String::from(
        "client,scope,owner,name,transport,command,args,url,env,headers,enabled,launch_hash,registry,risks,file,line,project,pids\n",
    );
    for s in &r.servers {
        let cells = [
            s.client.to_string(),
            s.scope.as_str().to_string(),
            s.owner.clone(),
            s.name.clone(),
            s.transport.as_str().to_string(),
            s.command.clone().unwrap_or_default(),
            serde_json::to_string(&s.args).unwrap_or_default(),
            s.url.clone().unwrap_or_default(),
            s.env.join(";"),
            s.headers.join(";"),
            s.enabled.to_string(),
            s.launch_hash.clone(),
            match &s.registry {
                mcpwatch_discover::Registry::Unchecked => String::new(),
                mcpwatch_discover::Registry::Registered { name } => format!("registered:{name}"),
                mcpwatch_discover::Registry::Shadow { .. } => "shadow".into(),
                mcpwatch_discover::Registry::Bypass { gateway, .. } => format!("bypass:{gateway}"),
            },
            risk_ids(s).replace(',', ";"),
            s.file.to_string_lossy().into_owned(),
            s.line.map(|l| l.to_string()).unwrap_or_default(),
            s.project
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            s.pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(";"),
        ];
        let row: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// Markdown table cell: escaped pipes, no line breaks, no HTML, controls made visible.
pub(crate) fn md(s: &str) -> String {
    sanitize(s)
        .replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('`', "\\`")
}

fn markdown(r: &Report) -> String {
    let mut out = String::from("# MCP servers on this host\n\n");
    let _ = writeln!(out, "{}\n", summary(r));
    out.push_str(
        "| client | scope | owner | name | transport | launch | registry | risks | file |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for s in &r.servers {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.client,
            s.scope.as_str(),
            md(&s.owner),
            md(&s.name),
            s.transport.as_str(),
            md(&launch(s)),
            md(s.registry.label()),
            risk_ids(s),
            md(&location(&s.file, s.line)),
        );
    }
    out.push_str(&findings(r, "\n## Findings\n\n", |s, risk| {
        let at = location(&s.file, s.line);
        format!(
            "- **{}** `{}`: {} ({})",
            md(&s.name),
            risk.flag,
            md(&risk.detail),
            md(&at)
        )
    }));
    if !r.errors.is_empty() {
        out.push_str("\n## Unreadable files\n\n");
        for e in &r.errors {
            let _ = writeln!(out, "- {}", md(&error_line(e)));
        }
    }
    out
}

const SHADOW_RULE: &str = "shadow-server";
const UNREADABLE_RULE: &str = "unreadable-config";
const BYPASS_RULE: &str = "gateway-bypass";
/// A stdio server launched without `mcpwatch wrap` (a note: observed at best, never enforced).
const UNWRAPPED_RULE: &str = "unwrapped-stdio";

fn level(flag: RiskFlag) -> &'static str {
    match flag {
        RiskFlag::PlaintextSecret
        | RiskFlag::WorldReadableSecret
        | RiskFlag::VulnerableVersion
        | RiskFlag::ContainerHostAccess => "error",
        _ => "warning",
    }
}

/// `file://` URI with everything but unreserved characters and `/` percent-encoded.
fn file_uri(p: &std::path::Path) -> String {
    let mut out = String::from("file://");
    for b in p.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn sarif_location(file: &std::path::Path, line: Option<usize>, column: Option<usize>) -> Value {
    let mut region = serde_json::Map::new();
    if let Some(l) = line {
        region.insert("startLine".into(), json!(l));
        if let Some(c) = column {
            region.insert("startColumn".into(), json!(c));
        }
    }
    let mut phys = json!({ "artifactLocation": { "uri": file_uri(file) } });
    if !region.is_empty() {
        phys["region"] = Value::Object(region);
    }
    json!([{ "physicalLocation": phys }])
}

/// SARIF 2.1.0: one rule per risk flag, plus shadow servers, gateway bypasses and unreadable files.
fn sarif(r: &Report) -> Value {
    let mut rules: Vec<Value> = RiskFlag::ALL
        .iter()
        .map(|f| {
            json!({
                "id": f.id(),
                "shortDescription": { "text": f.id().replace('-', " ") },
                "fullDescription": { "text": f.description() },
                "defaultConfiguration": { "level": level(*f) },
            })
        })
        .collect();
    rules.push(json!({
        "id": SHADOW_RULE,
        "shortDescription": { "text": "shadow server" },
        "fullDescription": { "text": "The server matches no [[server]] entry of the policy's registry." },
        "defaultConfiguration": { "level": "warning" },
    }));
    rules.push(json!({
        "id": BYPASS_RULE,
        "shortDescription": { "text": "gateway bypass" },
        "fullDescription": { "text": "A remote server whose host a [[gateway]] of the policy fronts is reached directly, around the gateway." },
        "defaultConfiguration": { "level": "error" },
    }));
    rules.push(json!({
        "id": UNREADABLE_RULE,
        "shortDescription": { "text": "unreadable config" },
        "fullDescription": { "text": "A client configuration file could not be read or parsed; its servers are unknown." },
        "defaultConfiguration": { "level": "warning" },
    }));
    rules.push(json!({
        "id": UNWRAPPED_RULE,
        "shortDescription": { "text": "unwrapped stdio server" },
        "fullDescription": { "text": "A stdio server the client launches directly, not through `mcpwatch wrap --`: mcpwatch can observe it but not enforce policy on it (`mcpwatch wrap --install`)." },
        "defaultConfiguration": { "level": "note" },
    }));
    let index = |id: &str| {
        RiskFlag::ALL
            .iter()
            .position(|f| f.id() == id)
            .unwrap_or(match id {
                SHADOW_RULE => RiskFlag::ALL.len(),
                BYPASS_RULE => RiskFlag::ALL.len() + 1,
                UNREADABLE_RULE => RiskFlag::ALL.len() + 2,
                _ => RiskFlag::ALL.len() + 3,
            })
    };
    let mut results = Vec::new();
    for s in &r.servers {
        for risk in &s.risks {
            results.push(json!({
                "ruleId": risk.flag.id(),
                "ruleIndex": index(risk.flag.id()),
                "level": level(risk.flag),
                "message": { "text": format!("{} ({}, {}): {}", s.name, s.client, s.scope.as_str(), risk.detail) },
                "locations": sarif_location(&s.file, s.line, None),
                "partialFingerprints": { "launchHash/v1": s.launch_hash },
            }));
        }
        if s.wrapped == Some(false) {
            results.push(json!({
                "ruleId": UNWRAPPED_RULE,
                "ruleIndex": index(UNWRAPPED_RULE),
                "level": "note",
                "message": { "text": format!("{} ({}, {}): stdio server not launched through `mcpwatch wrap`", s.name, s.client, s.scope.as_str()) },
                "locations": sarif_location(&s.file, s.line, None),
                "partialFingerprints": { "launchHash/v1": s.launch_hash },
            }));
        }
        let ungoverned = match &s.registry {
            mcpwatch_discover::Registry::Shadow { reason } => Some((SHADOW_RULE, reason)),
            mcpwatch_discover::Registry::Bypass { reason, .. } => Some((BYPASS_RULE, reason)),
            _ => None,
        };
        if let Some((rule, reason)) = ungoverned {
            results.push(json!({
                "ruleId": rule,
                "ruleIndex": index(rule),
                "level": "warning",
                "message": { "text": format!("{} ({}, {}): {}", s.name, s.client, s.scope.as_str(), reason) },
                "locations": sarif_location(&s.file, s.line, None),
                "partialFingerprints": { "launchHash/v1": s.launch_hash },
            }));
        }
    }
    for e in &r.errors {
        results.push(json!({
            "ruleId": UNREADABLE_RULE,
            "ruleIndex": index(UNREADABLE_RULE),
            "level": "warning",
            "message": { "text": format!("{} ({})", e.message, e.client) },
            "locations": sarif_location(&e.file, e.line, e.column),
        }));
    }
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "mcpwatch",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_formula_safe() {
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("=cmd()"), "'=cmd()");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn markdown_cells_cannot_break_the_table() {
        assert_eq!(md("a|b<script>"), "a\\|b&lt;script&gt;");
        assert_eq!(md("x\ny"), "x\\\\ny");
    }

    #[test]
    fn file_uris_are_percent_encoded() {
        assert_eq!(
            file_uri(std::path::Path::new("/a b/c#d")),
            "file:///a%20b/c%23d"
        );
    }
}
