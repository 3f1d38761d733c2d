//! Governance commands: held calls (`pending`, `approve`, `deny`), the policy
//! (`policy check`, `policy reload`), tool pins (`pin accept`) and offline content
//! inspection (`inspect`).
//!
//! `policy check` and `inspect` work without the daemon: they compile the policy /
//! run the detectors in-process (the pure `mcpwatch-policy` and `mcpwatch-inspect`
//! crates), so a security team can test a change before it is deployed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use mcpwatch_api::{Request, Response};

use crate::client::Conn;
use crate::{emit, now_ms, unexpected};

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file; errors show file, line and column. Exit 2 if invalid.
    Check { file: PathBuf },
    /// Ask the daemon to re-read its policy (same as SIGHUP). A broken file is rejected
    /// and the policy in force stays.
    Reload,
}

#[derive(Debug, Subcommand)]
pub enum PinCmd {
    /// Trust the current definition of a server's tools (all, or one).
    Accept {
        /// Endpoint (as in `mcpwatch list`) or a unique part of it.
        server: String,
        tool: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A JSON-RPC message (or any JSON) to scan; `-` for standard input.
    pub file: String,
    /// Policy whose `[inspect]` settings to use (default: built-in detector settings).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn pending(socket: &Path, json: bool, out: &mut dyn Write) -> Result<()> {
    let calls = match Conn::call(socket, &Request::Pending)? {
        Response::Pending { calls } => calls,
        other => return Err(unexpected("pending", &other)),
    };
    if json {
        return emit(out, &format!("{}\n", serde_json::to_string_pretty(&calls)?));
    }
    if calls.is_empty() {
        return emit(out, "no calls are waiting for approval\n");
    }
    let now = now_ms();
    for c in &calls {
        let who = c.process.as_ref().map_or_else(|| "?".to_string(), |p| p.label());
        let left = c.expires_ms.saturating_sub(now) / 1000;
        emit(
            out,
            &format!(
                "{id}  {tool} on {server}\n    by {who}{agent}, waiting {waited}s, expires in {left}s\n    rule {rules}: {reason}\n    arguments (masked): {args}\n    approve: mcpwatch approve {id}    deny: mcpwatch deny {id} --reason \"...\"\n",
                id = c.id,
                tool = c.tool.as_deref().unwrap_or(&c.method),
                server = c.server,
                agent = c.agent.as_deref().map(|a| format!(" (agent {a})")).unwrap_or_default(),
                waited = now.saturating_sub(c.held_since_ms) / 1000,
                rules = c.rules.join(", "),
                reason = c.reason,
                args = c.arguments.as_ref().map_or_else(|| "-".to_string(), |a| a.to_string()),
            ),
        )?;
    }
    Ok(())
}

fn done(socket: &Path, req: &Request, what: &str, out: &mut dyn Write) -> Result<()> {
    match Conn::call(socket, req)? {
        Response::Done { message } => emit(out, &format!("{message}\n")),
        Response::Error { message } => bail!("{message}"),
        other => Err(unexpected(what, &other)),
    }
}

pub fn approve(socket: &Path, id: &str, out: &mut dyn Write) -> Result<()> {
    done(socket, &Request::Approve { id: id.to_string() }, "approve", out)
}

pub fn deny(socket: &Path, id: &str, reason: Option<String>, out: &mut dyn Write) -> Result<()> {
    done(socket, &Request::Deny { id: id.to_string(), reason }, "deny", out)
}

pub fn policy(socket: &Path, cmd: &PolicyCmd, out: &mut dyn Write) -> Result<()> {
    match cmd {
        PolicyCmd::Reload => done(socket, &Request::PolicyReload, "policy reload", out),
        PolicyCmd::Check { file } => {
            let src = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            let name = file.display().to_string();
            let p = mcpwatch_policy::parse(&src, &name).map_err(|e| anyhow::anyhow!("{}", e.render()))?;
            emit(
                out,
                &format!(
                    "{name}: ok (mode {}, shadow {:?}, {} servers, {} agents, {} rules)\n",
                    p.mode(),
                    p.shadow(),
                    p.servers().len(),
                    p.agents().len(),
                    p.rules().len()
                ),
            )?;
            for w in p.warnings() {
                emit(out, &format!("{name}: warning: {w}\n"))?;
            }
            Ok(())
        }
    }
}

pub fn pin(socket: &Path, cmd: &PinCmd, out: &mut dyn Write) -> Result<()> {
    match cmd {
        PinCmd::Accept { server, tool } => done(socket, &Request::PinAccept { server: server.clone(), tool: tool.clone() }, "pin accept", out),
    }
}

pub fn inspect(args: &InspectArgs, out: &mut dyn Write) -> Result<()> {
    let text = if args.file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file))?
    };
    let mut value: serde_json::Value = serde_json::from_str(&text).context("input is not JSON")?;
    let settings = match &args.policy {
        Some(p) => {
            let src = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            mcpwatch_policy::parse(&src, &p.display().to_string()).map_err(|e| anyhow::anyhow!("{}", e.render()))?.inspect().clone()
        }
        None => mcpwatch_policy::InspectSettings::default(),
    };
    let inspector = mcpwatch_inspect::Inspector::new(&settings.detectors).map_err(|e| anyhow::anyhow!("{e}"))?;
    let findings = inspector.scan_json(&value);
    let mut redacted = value.clone();
    let report = inspector.redact_json(&mut redacted);
    // Tool poisoning: a tools/list result, a single tool definition, or a tool result.
    let tools: Vec<serde_json::Value> = value
        .pointer("/result/tools")
        .or_else(|| value.get("tools"))
        .and_then(|t| t.as_array().cloned())
        .or_else(|| value.get("inputSchema").map(|_| vec![value.clone()]))
        .unwrap_or_default();
    let names: Vec<&str> = tools.iter().filter_map(|t| t.get("name").and_then(|n| n.as_str())).collect();
    let others = mcpwatch_inspect::poison::OtherTools::new(&names);
    let poison: Vec<(String, mcpwatch_inspect::poison::PoisonReport)> = tools
        .iter()
        .map(|t| (t.get("name").and_then(|n| n.as_str()).unwrap_or("?").to_string(), mcpwatch_inspect::poison::scan_tool_with(t, &others)))
        .collect();
    let result_scan = value.get("result").map(mcpwatch_inspect::poison::scan_result);
    if args.json {
        let v = serde_json::json!({
            "findings": findings,
            "redaction": report,
            "redacted": redacted,
            "tools": poison.iter().map(|(n, r)| serde_json::json!({"name": n, "report": r})).collect::<Vec<_>>(),
            "result_injection": result_scan,
        });
        return emit(out, &format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    if findings.is_empty() {
        emit(out, "no PII or secrets found\n")?;
    }
    for f in &findings {
        emit(out, &format!("{:<24} at {}{} (confidence {:.2})\n", f.finding.detector, f.pointer, if f.in_key { " (key)" } else { "" }, f.finding.confidence))?;
    }
    for (name, r) in &poison {
        if r.score > 0 {
            emit(out, &format!("tool `{name}`: poisoning score {} ({:?})\n", r.score, r.severity))?;
            for s in &r.signals {
                emit(out, &format!("    {:?} at {}: {}\n", s.kind, s.pointer, s.excerpt))?;
            }
        }
    }
    if let Some(r) = result_scan.filter(|r| r.score > 0) {
        emit(out, &format!("result: instructions aimed at the agent, score {} ({:?})\n", r.score, r.severity))?;
    }
    if report.redacted_total() > 0 {
        value = redacted;
        emit(out, &format!("redacted message:\n{}\n", serde_json::to_string_pretty(&value)?))?;
    }
    Ok(())
}
