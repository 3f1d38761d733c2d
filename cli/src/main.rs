//! `mcpwatch`: the operator's view of mcpwatchd (inventory, audit trail, status).
//!
//! Why a separate, thin binary: it must run as an unprivileged member of the `mcpwatch`
//! group and never link the daemon (aya, sled, hyper). It only speaks the control
//! protocol from `mcpwatch_api` over the daemon's Unix socket.
//!
//! Exit codes: 0 on success (also when stdout is closed early, as in
//! `mcpwatch audit | head -1`), 1 when `audit verify` finds the trail tampered with or
//! `scan` finds something shadow, risky or unreadable, 2 on any error, including usage
//! errors.

mod ca;
mod client;
mod follow;
mod govern;
mod list;
mod report;
mod scan;
mod table;
mod view;
mod wrap;
mod wrap_install;

use std::fmt;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use mcpwatch_api::{AuditFilter, AuditRecord, DEFAULT_CONTROL_SOCKET, Request, Response};

use crate::client::Conn;
use crate::table::Table;

#[derive(Debug, Parser)]
#[command(
    name = "mcpwatch",
    version,
    about = "Inspect what mcpwatchd sees: MCP servers on this host, the audit trail, daemon status."
)]
struct Cli {
    /// Path of mcpwatchd's control socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "MCPWATCH_SOCKET",
        default_value = DEFAULT_CONTROL_SOCKET
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every MCP server on this host, merged: seen on the network (daemon) and configured in
    /// client files (scan); status registered / shadow / running / configured-only.
    List(list::ListArgs),
    /// A report people read: `--html FILE` (one self-contained page) or `--json`; `--merge DIR`
    /// joins many hosts' `list --format json` / `scan --json` files into one fleet report.
    Report(report::ReportArgs),
    /// Audited MCP messages: who called which tool on which server, and how it went.
    Audit(AuditArgs),
    /// Daemon health: failure mode, interception, listeners, counters, warnings.
    Status {
        /// Print the status as a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The local CA for TLS interception: show, export, install into the trust store, rotate.
    Ca(ca::CaArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(hide = true)]
    Completions {
        shell: clap_complete::Shell,
    },
    /// Calls held for a human's approval.
    Pending {
        #[arg(long)]
        json: bool,
    },
    /// Let a held call through (once).
    Approve { id: String },
    /// Refuse a held call.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Check a policy file (offline) or reload the daemon's policy.
    #[command(subcommand)]
    Policy(govern::PolicyCmd),
    /// Tool-definition pins (rug-pull protection).
    #[command(subcommand)]
    Pin(govern::PinCmd),
    /// Run the detectors on a JSON-RPC message offline and print what they find.
    Inspect(govern::InspectArgs),
    /// Scan MCP client configurations on this host (no daemon): servers, risks, shadow servers.
    /// Exit status 1 when something is shadow, risky or unreadable.
    Scan(scan::ScanArgs),
    /// Run a stdio MCP server under the daemon's policy: `mcpwatch wrap -- CMD ARGS...`.
    /// `--install [CLIENT]` / `--uninstall` rewrite client configurations to launch
    /// their stdio servers this way.
    Wrap(wrap::WrapArgs),
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AuditArgs {
    #[command(subcommand)]
    action: Option<AuditAction>,
    /// Keep printing records as they arrive, until interrupted. When mcpwatchd restarts,
    /// reconnect and continue after the last record printed (no duplicates).
    #[arg(long, short = 'f')]
    follow: bool,
    /// With --follow: how long to keep trying to reconnect when the daemon goes away
    /// (0 ends the follow when the stream closes).
    #[arg(long, value_name = "DURATION", value_parser = parse_since, default_value = "5m", requires = "follow")]
    reconnect: Duration,
    /// Only records from this long ago onwards, e.g. 30s, 10m, 1h, 2days.
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    since: Option<Duration>,
    /// Only servers whose endpoint or host contains this text.
    #[arg(long, value_name = "S")]
    server: Option<String>,
    /// Only messages about this tool, resource or prompt (exact name).
    #[arg(long, value_name = "T")]
    tool: Option<String>,
    /// Only calls with this policy decision: deny, allow, require_approval, rate_limit,
    /// or what happened: block, forward, hold.
    #[arg(long, value_name = "D", value_parser = clap::builder::PossibleValuesParser::new(mcpwatch_api::DECISION_WORDS))]
    decision: Option<String>,
    /// Only one agent session: an MCP session id, or a flow session key
    /// (`ENDPOINT#SESSION`); the text output ends with the session's taint chain.
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// Show the newest N matching records (0 for all).
    #[arg(long, value_name = "N", default_value_t = 50)]
    limit: usize,
    /// One JSON object per record and line (NDJSON).
    #[arg(long)]
    json: bool,
}


#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Check every record against the store's hash chain; exit 1 naming the first record
    /// that was changed, removed, forged or reordered.
    Verify {
        /// Print the report as a JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn parse_since(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 10m, 1h, 2days)"))
}

/// A failed write to stdout, kept apart from socket errors so that a closed pipe
/// (`| head`) can end the program quietly.
#[derive(Debug)]
struct StdoutError(io::Error);

impl fmt::Display for StdoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "writing to stdout: {}", self.0)
    }
}

impl std::error::Error for StdoutError {}

fn emit(out: &mut dyn Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes())
        .map_err(|e| StdoutError(e).into())
}

fn flush(out: &mut dyn Write) -> Result<()> {
    out.flush().map_err(|e| StdoutError(e).into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The relay owns stdin/stdout (no buffered, locked stdout here).
    if let Command::Wrap(args) = &cli.command {
        return wrap::run(&cli.socket, args).unwrap_or_else(|e| {
            let _ = writeln!(io::stderr(), "mcpwatch wrap: {e:#}");
            ExitCode::from(2)
        });
    }
    let mut out = BufWriter::new(io::stdout().lock());
    let result = run(&cli, &mut out).and_then(|code| flush(&mut out).map(|()| code));
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(StdoutError(io)) = e.downcast_ref::<StdoutError>()
                && io.kind() == io::ErrorKind::BrokenPipe
            {
                return ExitCode::SUCCESS;
            }
            // Whatever was printed before the error goes out first.
            let _ = out.flush();
            let _ = writeln!(io::stderr(), "mcpwatch: {e:#}");
            if e.downcast_ref::<Tampered>().is_some() {
                return ExitCode::from(1);
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli, out: &mut dyn Write) -> Result<ExitCode> {
    let done = match &cli.command {
        Command::List(args) => list::run(&cli.socket, args, out),
        Command::Report(args) => report::run(&cli.socket, args, out),
        Command::Audit(args) => audit(&cli.socket, args, out),
        Command::Status { json } => status(&cli.socket, *json, out),
        Command::Ca(args) => ca::run(args, &cli.socket, out),
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut <Cli as clap::CommandFactory>::command(), "mcpwatch", &mut buf);
            out.write_all(&buf).map_err(|e| StdoutError(e).into())
        }
        Command::Pending { json } => govern::pending(&cli.socket, *json, out),
        Command::Approve { id } => govern::approve(&cli.socket, id, out),
        Command::Deny { id, reason } => govern::deny(&cli.socket, id, reason.clone(), out),
        Command::Policy(cmd) => govern::policy(&cli.socket, cmd, out),
        Command::Pin(cmd) => govern::pin(&cli.socket, cmd, out),
        Command::Inspect(args) => govern::inspect(args, out),
        Command::Scan(args) => return scan::run(args, out),
        Command::Wrap(args) => return wrap::run(&cli.socket, args),
    };
    done.map(|()| ExitCode::SUCCESS)
}

fn status(socket: &Path, json: bool, out: &mut dyn Write) -> Result<()> {
    let status = match Conn::call(socket, &Request::Status)? {
        Response::Status(s) => s,
        other => return Err(unexpected("status", &other)),
    };
    if json {
        let mut text = serde_json::to_string_pretty(&status)?;
        text.push('\n');
        emit(out, &text)
    } else {
        emit(out, &view::status_text(&status))
    }
}

/// `audit verify` found problems: reported on stdout already, exit 1.
#[derive(Debug)]
struct Tampered(String);

impl fmt::Display for Tampered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Tampered {}

fn audit_verify(socket: &Path, json: bool, out: &mut dyn Write) -> Result<()> {
    let report = match Conn::call(socket, &Request::AuditVerify)? {
        Response::Verify(r) => r,
        other => return Err(unexpected("audit verify", &other)),
    };
    if json {
        emit(out, &format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        let mut text = format!(
            "{} records, {} chain entries, head {} at entry {}\n",
            report.records, report.chain_entries, report.head, report.head_seq
        );
        for p in report.problems.iter().take(20) {
            text.push_str(&format!("  {}\n", table::sanitize(&p.to_string())));
        }
        if report.problems.len() > 20 {
            text.push_str(&format!("  ... and {} more\n", report.problems.len() - 20));
        }
        text.push_str(if report.ok() { "audit trail intact\n" } else { "AUDIT TRAIL TAMPERED WITH\n" });
        emit(out, &text)?;
    }
    match report.problems.first() {
        None => Ok(()),
        Some(first) => Err(Tampered(format!("audit trail tampered with: first at {}", first.position())).into()),
    }
}

fn audit(socket: &Path, args: &AuditArgs, out: &mut dyn Write) -> Result<()> {
    if let Some(AuditAction::Verify { json }) = &args.action {
        return audit_verify(socket, *json, out);
    }
    let now = now_ms();
    let filter = AuditFilter {
        since_ms: args
            .since
            .map(|d| now.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
        server: args.server.clone(),
        tool: args.tool.clone(),
        limit: (args.limit > 0).then_some(args.limit),
        decision: args.decision.clone(),
        session: args.session.clone(),
    };
    let mut printer = RecordPrinter::new(args.json);

    if !args.follow {
        // Printed part by part as the daemon sends them: a full dump never sits in memory
        // (only `--session`, whose taint chain needs every record, keeps them).
        let mut printed = 0usize;
        let mut kept = Vec::new();
        Conn::audit(socket, filter, |records| {
            printed += records.len();
            if !records.is_empty() {
                printer.batch(&records, out)?;
            }
            if args.session.is_some() {
                kept.extend(records);
            }
            Ok(())
        })?;
        if printed == 0 && !args.json {
            return emit(out, &format!("{}\n", view::EMPTY_AUDIT));
        }
        if args.session.is_some() && !args.json {
            emit(out, &view::taint_chain(&kept))?;
        }
        return Ok(());
    }

    follow::follow(socket, filter, args.reconnect, |records| {
        printer.batch(records, out)?;
        // Followers want each record as it arrives, not when a buffer fills.
        flush(out)
    })
}

/// Prints records as a table (header once, widths fixed after the first batch so
/// streamed rows stay aligned) or as NDJSON.
struct RecordPrinter {
    json: bool,
    table: Option<Table>,
    /// Set once the TIME column was fixed too narrow for a date (see `batch`).
    time_only: bool,
}

/// Width of a dated TIME cell, `YYYY-MM-DD HH:MM:SS.mmm`.
const DATE_TIME_WIDTH: usize = 23;

impl RecordPrinter {
    fn new(json: bool) -> RecordPrinter {
        RecordPrinter {
            json,
            table: None,
            time_only: false,
        }
    }

    fn batch(&mut self, records: &[AuditRecord], out: &mut dyn Write) -> Result<()> {
        if self.json {
            for r in records {
                let mut line = serde_json::to_string(r)?;
                line.push('\n');
                emit(out, &line)?;
            }
            return Ok(());
        }
        let now = now_ms();
        let rows: Vec<Vec<String>> = records
            .iter()
            .map(|r| view::audit_row(r, now, self.time_only))
            .collect();
        if self.table.is_none() {
            let mut t = Table::new(view::audit_columns());
            t.fit(&rows);
            emit(out, &format!("{}\n", t.header()))?;
            // Later rows must fit the widths fixed now: if no date fitted in TIME, later
            // rows show the time of day only rather than a cut-off date.
            self.time_only = t.widths().first().is_some_and(|w| *w < DATE_TIME_WIDTH);
            self.table = Some(t);
        }
        if let Some(table) = &self.table {
            for row in &rows {
                emit(out, &format!("{}\n", table.row(row)))?;
            }
        }
        Ok(())
    }
}

fn unexpected(request: &str, resp: &Response) -> anyhow::Error {
    let kind = match resp {
        Response::Status(_) => "status",
        Response::List { .. } => "list",
        Response::Audit { .. } => "audit",
        Response::AuditPart { .. } => "audit part",
        Response::Record { .. } => "record",
        Response::Pending { .. } => "pending",
        Response::Done { .. } => "done",
        Response::Error { .. } => "error",
        Response::Verify(_) => "verify",
        Response::Ca(_) => "ca",
    };
    anyhow::anyhow!("mcpwatchd answered the {request} request with an unexpected `{kind}` response")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn audit_defaults_and_flags() {
        let cli = Cli::try_parse_from(["mcpwatch", "audit"]).expect("parse");
        let Command::Audit(a) = cli.command else {
            panic!("expected audit")
        };
        assert_eq!(
            (a.limit, a.follow, a.json, a.since),
            (50, false, false, None)
        );

        let cli = Cli::try_parse_from([
            "mcpwatch",
            "audit",
            "--follow",
            "--since",
            "10m",
            "--server",
            "example",
            "--tool",
            "add",
            "--limit",
            "5",
            "--json",
            "--socket",
            "/tmp/x.sock",
        ])
        .expect("parse");
        assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
        let Command::Audit(a) = cli.command else {
            panic!("expected audit")
        };
        assert!(a.follow && a.json);
        assert_eq!(a.since, Some(Duration::from_secs(600)));
        assert_eq!(
            (a.server.as_deref(), a.tool.as_deref(), a.limit),
            (Some("example"), Some("add"), 5)
        );
    }

    #[test]
    fn bad_duration_is_a_usage_error() {
        let err =
            Cli::try_parse_from(["mcpwatch", "audit", "--since", "soon"]).expect_err("must fail");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("examples: 30s"), "{err}");
    }

    #[test]
    fn global_socket_flag_works_before_the_subcommand() {
        let cli =
            Cli::try_parse_from(["mcpwatch", "--socket", "/s", "list", "--json"]).expect("parse");
        assert_eq!(cli.socket, PathBuf::from("/s"));
        assert!(matches!(cli.command, Command::List(ref a) if a.json));
    }
}
