//! `cargo xtask demo`: the README's first command. Shows, on this machine and with real
//! software, what mcpwatch does: an unmodified MCP client (the official Python SDK) talks
//! to an MCP server; mcpwatchd, attached with eBPF to the client's cgroup, sits in the
//! path, applies the example policy, redacts what should not leak, and audits it all;
//! then the operator's view (`mcpwatch list`, `mcpwatch audit`).
//!
//! Why it is built like this: every verdict printed is derived from the response the
//! client actually got (and the audit record the daemon actually wrote), never assumed,
//! so the demo doubles as a smoke test: it exits non-zero when a step goes unexpectedly.
//! Everything it starts is stopped by PID and the child cgroup is removed, also on error
//! and Ctrl-C.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::cgroup::{self, ChildCgroup};
use crate::daemon::{self, Daemon, Upstream};
use crate::procs::{self, Proc};
use crate::setup;
use crate::util::{self, section, step};

/// Loopback address of the demo's MCP server (not 127.0.0.1: it looks like a remote host).
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Variables that would send the SDK's traffic to a proxy instead of the URL we give.
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// Options of `cargo xtask demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub setup: setup::SetupArgs,
    /// Skip `setup` and the build (use the binaries already in target/debug).
    #[arg(long)]
    pub no_build: bool,
    /// Run with this policy file instead of the daemon's embedded default policy
    /// (e.g. examples/policy.toml).
    #[arg(long)]
    pub policy: Option<PathBuf>,
}

/// The daemon's embedded default policy, the same text `mcpwatchd` compiles in.
const EMBEDDED_POLICY: &str = include_str!("../../daemon/default-policy.toml");

/// The policy file the demo's daemon gets: the one asked for, else the embedded default
/// written into `dir` (passing it explicitly keeps `/etc/mcpwatch/policy.toml` out).
fn hermetic_policy(asked: Option<&Path>, dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = asked {
        return Ok(p.to_path_buf());
    }
    let path = dir.join("default-policy.toml");
    std::fs::write(&path, EMBEDDED_POLICY).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    if let Some(why) = cgroup::ebpf_unavailable() {
        bail!(
            "the demo attaches eBPF programs to a cgroup, which needs root and cgroup v2: {why}\n\
             run it as root, e.g. `sudo -E cargo xtask demo`"
        );
    }
    if !args.no_build {
        setup::run(&args.setup)?;
        section("building mcpwatchd and mcpwatch");
        util::run(util::cargo().args(["build", "-p", "mcpwatchd", "-p", "mcpwatch"]))?;
    }
    procs::catch_interrupts();
    let started = Instant::now();
    let bins = util::target_dir().join("debug");
    let daemon_bin = bins.join("mcpwatchd");
    let python = setup::venv_dir().join("bin").join("python");
    for p in [&daemon_bin, &bins.join("mcpwatch"), &python] {
        if !p.exists() {
            bail!(
                "{} is missing: run `cargo xtask demo` without --no-build",
                p.display()
            );
        }
    }
    let peers = util::repo_root().join("tests").join("peers").join("python");
    let scratch =
        Scratch(std::env::temp_dir().join(format!("mcpwatch-demo-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).context("creating the demo's scratch dir")?;

    section("mcpwatch demo");
    println!(
        "    An AI agent's MCP client talks to an MCP server. mcpwatchd watches one cgroup:\n\
         \x20   every TCP connect made inside it to the server's port is redirected (eBPF) to\n\
         \x20   mcpwatchd, which parses the MCP messages, applies the policy, redacts sensitive\n\
         \x20   data and writes an audit record, then forwards. The client is not configured in\n\
         \x20   any way: it dials the server's own address."
    );

    // 1. The watched cgroup, the server, the daemon.
    section("1. setting the stage");
    let cg = ChildCgroup::create("mcpwatch-demo")?;
    step(format!("watched cgroup:  {}", cg.path().display()));
    let port = procs::free_port_in(IpAddr::V4(SERVER_IP), 18000..=18999)?;
    let record = scratch.0.join("server-calls.jsonl");
    let server = start_server(&python, &peers, port, &record, &scratch.0)?;
    let url = format!("http://{SERVER_IP}:{port}/mcp");
    step(format!(
        "MCP server:      {url}  (official Python SDK, tests/peers/python/server.py, pid {})",
        server.pid()
    ));
    // Embedded defaults unless told otherwise: what a fresh install does. Hermetic: the
    // policy and config are always passed explicitly, so /etc/mcpwatch on this machine
    // never leaks into the demo.
    let policy = args.policy.as_deref();
    let daemon_dir = scratch.0.join("mcpwatchd");
    std::fs::create_dir_all(&daemon_dir).context("creating the daemon's dir")?;
    let explicit_policy = hermetic_policy(policy, &daemon_dir)?;
    let mut daemon = Daemon::start(&daemon::Opts {
        bin: &daemon_bin,
        upstream: Upstream::Watch {
            cgroup: cg.path(),
            ports: port.to_string(),
        },
        policy: Some(&explicit_policy),
        dir: &daemon_dir,
        log_filter: "info",
        // An empty config file: defaults, never /etc/mcpwatch/mcpwatchd.toml.
        config: Some(""),
    })?;
    step(format!(
        "mcpwatchd:       pid {}, watching that cgroup, port {port}",
        daemon.pid()
    ));
    match policy {
        Some(p) => step(format!("policy:          {}", p.display())),
        None => step(
            "policy:          the embedded default (daemon/default-policy.toml): denies reading\n\
             \x20                    credential files through tools, redacts secrets, SSNs and card\n\
             \x20                    numbers, alerts on servers that are not in a registry",
        ),
    }
    let status = daemon.status()?;
    step(format!(
        "status:          attached={} cgroup={} listen={}",
        status["attached"],
        status["cgroup"].as_str().unwrap_or("-"),
        status["listen"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default()
    ));
    if status["attached"] != true {
        bail!("mcpwatchd says interception is not attached: {status}");
    }

    // 2. The client session, inside the cgroup.
    let steps = vec![
        Step::list(),
        Step::call(
            "echo",
            json!({"text": "hello from inside the watched cgroup"}),
        ),
        Step::call("lookup_customer", json!({"customer_id": "c-42"})),
        Step::call("read_file", json!({"path": "/root/.ssh/id_rsa"})),
    ];
    section("2. running a real MCP client inside the watched cgroup");
    step(format!(
        "$ {} tests/peers/python/client.py --url {url}   (official Python SDK, moved into the cgroup before exec)",
        python.display()
    ));
    let run = run_client(&python, &peers, &url, &steps, cg.path(), &scratch.0)?;
    procs::check_interrupted()?;
    let connect = run.lines.first().cloned().unwrap_or(Value::Null);
    if connect["op"] != "connect" || connect["ok"] != true {
        bail!(
            "the client could not connect through mcpwatchd: {connect}\n--- client stderr ---\n{}\n--- mcpwatchd log ---\n{}",
            tail(&run.stderr, 20),
            daemon.log_tail(20)
        );
    }
    step(format!(
        "connected: server {} speaking MCP {}",
        connect["server"].as_str().unwrap_or("?"),
        connect["protocol_version"].as_str().unwrap_or("?")
    ));

    // The daemon's view of the same calls, to explain each verdict.
    let audit = audit_records(&daemon);
    let mut unexpected: Vec<String> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let line = run.lines.get(i + 1).cloned().unwrap_or(Value::Null);
        let outcome = judge(s, &line, true, &audit);
        section(format!("3.{} {}", i + 1, s.title).as_str());
        println!("    {}", s.why);
        println!("    sent      {}", s.sent());
        println!("    received  {}", outcome.received);
        println!("    verdict   {}", outcome.verdict);
        if let Some(u) = outcome.unexpected {
            println!("    UNEXPECTED: {u}");
            unexpected.push(format!("{}: {u}", s.title));
        }
    }
    if run.exit_code != Some(0) {
        unexpected.push(format!(
            "the client exited with {:?} (3 = a step failed below the protocol)\n{}",
            run.exit_code,
            tail(&run.stderr, 10)
        ));
    }

    section("4. what the server actually received");
    let received = recorded_tools(&record);
    println!(
        "    {} tools/call reached the server: {}",
        received.len(),
        if received.is_empty() {
            "none".to_string()
        } else {
            received.join(", ")
        }
    );
    let denied_reached = received.iter().any(|t| t == "read_file");
    if denied_reached {
        unexpected.push("read_file reached the server although the policy denies it".into());
    } else {
        println!("    read_file is not among them: the denied call never left mcpwatchd.");
    }

    section("5. the operator's view: mcpwatch list");
    // Hermetic: the inventory's configuration scan reads a home made here, never the
    // real ones. Its Cursor config names the network server above and a local stdio
    // server (the npm reference server), which is started now as the client would.
    let home = scratch.0.join("home");
    let stdio = start_stdio_server(&home, &url, &scratch.0);
    let home_arg = home.display().to_string();
    let listed = print_cli(&daemon, &["list", "--home", &home_arg], &mut unexpected);
    match &stdio {
        Ok((p, _)) => {
            let shown = listed.lines().any(|l| l.contains("everything") && l.contains("running"));
            if shown {
                println!(
                    "    The stdio server (pid {}) is in the inventory as running: found from the\n\
                     \x20   client's configuration and the process table. Its traffic never crosses the\n\
                     \x20   network; `mcpwatch wrap` puts it under the same policy.",
                    p.pid()
                );
            } else {
                unexpected.push("the configured, running stdio server is missing from mcpwatch list".into());
            }
        }
        Err(e) => println!("    (no stdio server shown: {e:#})"),
    }
    drop(stdio);
    if listed.contains("SHADOW") {
        println!(
            "    SHADOW: the server is not in the policy's [[server]] registry (matched by URL or\n\
             \x20   host and port); the policy's `shadow` setting decides whether such traffic is\n\
             \x20   allowed, alerted on or blocked."
        );
    }
    section("6. the operator's view: mcpwatch audit");
    print_cli(&daemon, &["audit"], &mut unexpected);
    let calls_audited = audit.iter().filter(|r| r["method"] == "tools/call").count();
    if calls_audited == 0 {
        unexpected.push(
            "no tools/call in mcpwatch audit: the client's calls did not go through mcpwatchd"
                .into(),
        );
    }

    section("7. cleaning up");
    step(format!(
        "mcpwatchd (pid {}): {}",
        daemon.pid(),
        daemon.stop()
    ));
    drop(server);
    drop(cg);
    let took = started.elapsed().as_secs_f64();
    if unexpected.is_empty() {
        section(format!("demo finished in {took:.1} s: every step behaved as expected").as_str());
        Ok(ExitCode::SUCCESS)
    } else {
        section(
            format!(
                "demo finished in {took:.1} s with {} unexpected result(s):",
                unexpected.len()
            )
            .as_str(),
        );
        for u in &unexpected {
            println!("    - {u}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// One scripted client step.
struct Step {
    title: &'static str,
    why: &'static str,
    tool: Option<&'static str>,
    arguments: Value,
}

impl Step {
    fn list() -> Step {
        Step {
            title: "list the server's tools",
            why: "tools/list: mcpwatchd records the server and its tool definitions in its inventory.",
            tool: None,
            arguments: Value::Null,
        }
    }

    fn call(tool: &'static str, arguments: Value) -> Step {
        let (title, why) = match tool {
            "echo" => (
                "an ordinary tool call",
                "echo returns its text: nothing to object to, so it should pass unchanged (and be audited).",
            ),
            "lookup_customer" => (
                "a tool result carrying personal data",
                "lookup_customer answers with a customer record holding an SSN, a card number and an email.",
            ),
            "read_file" => (
                "a call the policy forbids",
                "read_file asks the server for an SSH private key; the policy's rules deny that.",
            ),
            _ => ("a tool call", ""),
        };
        Step {
            title,
            why,
            tool: Some(tool),
            arguments,
        }
    }

    fn script(&self) -> Value {
        match self.tool {
            None => json!({"op": "list"}),
            Some(t) => json!({"op": "call", "tool": t, "arguments": self.arguments}),
        }
    }

    fn sent(&self) -> String {
        match self.tool {
            None => "tools/list".into(),
            Some(t) => format!("tools/call {t} {}", self.arguments),
        }
    }
}

/// What the demo says about one step.
struct Outcome {
    received: String,
    verdict: String,
    unexpected: Option<String>,
}

/// Derives the verdict of a step from the client's output line and the audit records.
fn judge(step: &Step, line: &Value, policy: bool, audit: &[Value]) -> Outcome {
    let Some(tool) = step.tool else {
        return match line["tools"].as_array() {
            Some(tools) if line["ok"] == true => {
                let names: Vec<&str> = tools.iter().filter_map(Value::as_str).collect();
                let unexpected =
                    (!names.contains(&"echo")).then(|| "echo is not listed".to_string());
                Outcome {
                    received: format!("{} tools: {}", names.len(), names.join(", ")),
                    verdict: "ok".into(),
                    unexpected,
                }
            }
            _ => Outcome {
                received: describe_error(line),
                verdict: "FAILED".into(),
                unexpected: Some(format!("tools/list failed: {line}")),
            },
        };
    };
    let record = audit
        .iter()
        .rev()
        .find(|r| r["method"] == "tools/call" && r["name"] == tool);
    if line["ok"] != true {
        let received = describe_error(line);
        let is_rpc = line["error"]["kind"] == "jsonrpc";
        let rules: Vec<String> = record
            .and_then(|r| r["decision"]["rules"].as_array())
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let verdict = if !is_rpc {
            "FAILED (transport error)".to_string()
        } else if let Some(rule) = rules.first() {
            format!("DENIED by policy rule {rule}")
        } else if let Some(rule) = rule_in_message(line["error"]["message"].as_str().unwrap_or(""))
        {
            format!("DENIED by policy rule {rule}")
        } else {
            format!("ERROR returned (JSON-RPC {})", line["error"]["code"])
        };
        let unexpected = if tool == "read_file" && policy && is_rpc {
            None
        } else {
            Some(format!("the call failed: {received}"))
        };
        return Outcome {
            received,
            verdict,
            unexpected,
        };
    }
    let text = line["text"].as_str().unwrap_or_default();
    let received = format!("\"{}\"", shorten(text, 160));
    let tokens = redaction_tokens(text);
    let findings: &[Value] = record
        .and_then(|r| r["findings"].as_array())
        .map_or(&[], Vec::as_slice);
    let described: Vec<String> = findings
        .iter()
        .map(|f| {
            format!(
                "{} x{} {}",
                f["detector"].as_str().unwrap_or("?"),
                f["count"],
                f["action"].as_str().unwrap_or("")
            )
        })
        .collect();
    let detected_only: Vec<&str> = findings
        .iter()
        .filter(|f| f["action"] == "audit")
        .filter_map(|f| f["detector"].as_str())
        .collect();
    let mut verdict = if !tokens.is_empty() {
        format!("REDACTED: {}", tokens.join(" "))
    } else if !detected_only.is_empty() {
        format!(
            "DETECTED but not redacted (the action in force for {} is audit)",
            detected_only.join(", ")
        )
    } else if looks_sensitive(text) {
        "ok, but personal data passed through uninspected".into()
    } else {
        "ok".into()
    };
    let findings = described;
    if !findings.is_empty() {
        verdict.push_str(&format!("   (audit: {})", findings.join(", ")));
    }
    let unexpected = match tool {
        "echo" => {
            let sent = step.arguments["text"].as_str().unwrap_or_default();
            (text != sent).then(|| format!("echo returned {text:?}, sent {sent:?}"))
        }
        "read_file" if policy => {
            Some("the policy should have denied reading ~/.ssh/id_rsa".into())
        }
        "lookup_customer" if text.contains("536-22-8741") || text.contains("4111 1111 1111 1111") => {
            Some("the SSN or card number reached the client unredacted".into())
        }
        _ => None,
    };
    Outcome {
        received,
        verdict,
        unexpected,
    }
}

fn describe_error(line: &Value) -> String {
    let e = &line["error"];
    match e["kind"].as_str() {
        Some("jsonrpc") => format!(
            "JSON-RPC error {}: {}",
            e["code"],
            shorten(e["message"].as_str().unwrap_or(""), 200)
        ),
        Some(kind) => format!(
            "{kind} error {}: {}",
            e["type"].as_str().unwrap_or(""),
            shorten(e["message"].as_str().unwrap_or(""), 200)
        ),
        None => format!("no answer ({line})"),
    }
}

/// `<SSN>`-style tokens in a text, in order of appearance, deduplicated.
fn redaction_tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let end = after.find('>').unwrap_or(after.len());
        let inner = &after[..end];
        let is_token = end < after.len()
            && !inner.is_empty()
            && inner.len() <= 40
            && inner.starts_with(|c: char| c.is_ascii_uppercase())
            && inner
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if is_token {
            let token = format!("<{inner}>");
            if !out.contains(&token) {
                out.push(token);
            }
            rest = &after[end + 1..];
        } else {
            rest = after;
        }
    }
    out
}

/// A crude check for the raw values the demo server returns (SSN-, card- or email-shaped).
fn looks_sensitive(text: &str) -> bool {
    let digits_run = |n: usize| {
        text.split(|c: char| !(c.is_ascii_digit() || c == '-' || c == ' '))
            .any(|chunk| chunk.chars().filter(char::is_ascii_digit).count() >= n)
    };
    text.contains('@') || digits_run(9)
}

/// The rule id in a denial message such as "... by policy rule `no-ssh-keys` ...".
fn rule_in_message(msg: &str) -> Option<String> {
    let lower = msg.to_ascii_lowercase();
    let at = lower.find("rule")?;
    let rest = msg.get(at + 4..)?;
    let rest = rest.trim_start_matches(['s', ' ', ':']);
    let id: String = rest
        .trim_start_matches(['`', '"', '\''])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        .collect();
    (!id.is_empty()).then_some(id)
}

fn shorten(s: &str, max: usize) -> String {
    let one_line = s.replace('\n', " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        format!("{}...", one_line.chars().take(max).collect::<String>())
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts the Python SDK server on `SERVER_IP:port` and waits for its `ready` line.
/// Write `home/.cursor/mcp.json` naming the demo's network server and a stdio server, and
/// start that stdio server (npm `@modelcontextprotocol/server-everything`, installed by
/// setup) with its stdin held open, as a client would. The process ends when the returned
/// `Proc` drops.
fn start_stdio_server(home: &Path, url: &str, scratch: &Path) -> anyhow::Result<(Proc, std::process::ChildStdin)> {
    let script = util::repo_root()
        .join("tests/peers/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if !script.exists() {
        bail!("{} is not installed (cargo xtask setup)", script.display());
    }
    let node = util::which("node").context("node is not installed")?;
    std::fs::create_dir_all(home.join(".cursor")).context("creating the demo home")?;
    let config = json!({
        "mcpServers": {
            "customer-records": { "url": url },
            "everything": { "command": node.display().to_string(), "args": [script.display().to_string(), "stdio"] },
        }
    });
    std::fs::write(home.join(".cursor/mcp.json"), serde_json::to_vec_pretty(&config)?)
        .context("writing the demo's Cursor config")?;
    let mut child = Command::new(&node)
        .arg(&script)
        .arg("stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.join("stdio-server.stderr")).context("creating the stdio server's stderr file")?)
        .spawn()
        .context("starting the stdio server")?;
    let stdin = child.stdin.take().context("the stdio server's stdin")?;
    let p = Proc::new(child, "stdio MCP server", Duration::from_secs(2));
    step(format!("stdio MCP server: pid {} (node server-everything, configured in {}/.cursor/mcp.json)", p.pid(), home.display()));
    Ok((p, stdin))
}

fn start_server(
    python: &Path,
    dir: &Path,
    port: u16,
    record: &Path,
    scratch: &Path,
) -> anyhow::Result<Proc> {
    let stdout_path = scratch.join("server.stdout");
    let stderr_path = scratch.join("server.stderr");
    let mut cmd = Command::new(python);
    cmd.arg(dir.join("server.py"))
        .args([
            "--host",
            &SERVER_IP.to_string(),
            "--port",
            &port.to_string(),
            "--record",
        ])
        .arg(record)
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).context("creating the server's stdout file")?)
        .stderr(std::fs::File::create(&stderr_path).context("creating the server's stderr file")?);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    let child = cmd.spawn().context("starting the Python MCP server")?;
    let mut server = Proc::new(child, "MCP server", Duration::from_secs(3));
    let addr = SocketAddr::new(IpAddr::V4(SERVER_IP), port);
    let start = Instant::now();
    loop {
        procs::check_interrupted()?;
        if let Some(st) = server.exited() {
            bail!(
                "the MCP server exited during start ({st}):\n{}",
                tail(
                    &std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                    20
                )
            );
        }
        let ready = std::fs::read_to_string(&stdout_path)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("ready "));
        if ready && std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        {
            return Ok(server);
        }
        if start.elapsed() > SERVER_START_TIMEOUT {
            bail!(
                "the MCP server was not ready after {SERVER_START_TIMEOUT:?}:\n{}",
                tail(
                    &std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                    20
                )
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct ClientRun {
    lines: Vec<Value>,
    exit_code: Option<i32>,
    stderr: String,
}

/// Runs the Python SDK client inside the cgroup with the steps as a script file.
fn run_client(
    python: &Path,
    dir: &Path,
    url: &str,
    steps: &[Step],
    cgroup: &Path,
    scratch: &Path,
) -> anyhow::Result<ClientRun> {
    let script = scratch.join("client-script.json");
    let script_json = Value::Array(steps.iter().map(Step::script).collect());
    std::fs::write(&script, script_json.to_string()).context("writing the client script")?;
    let stdout_path = scratch.join("client.stdout");
    let stderr_path = scratch.join("client.stderr");
    let mut cmd = Command::new(python);
    cmd.arg(dir.join("client.py"))
        .args([
            "--url",
            url,
            "--transport",
            "streamable",
            "--timeout",
            "20",
            "--script",
        ])
        .arg(&script)
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).context("creating the client's stdout file")?)
        .stderr(std::fs::File::create(&stderr_path).context("creating the client's stderr file")?);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cgroup::spawn_inside(&mut cmd, cgroup)?;
    let child = cmd.spawn().context("starting the Python MCP client")?;
    let mut client = Proc::new(child, "MCP client", Duration::from_secs(1));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = client.exited() {
            break st;
        }
        procs::check_interrupted()?;
        if start.elapsed() > CLIENT_TIMEOUT {
            let how = client.stop();
            bail!(
                "the MCP client did not finish in {CLIENT_TIMEOUT:?} ({how}):\n{}",
                tail(
                    &std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                    20
                )
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    client.stop();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let mut lines = Vec::new();
    for l in stdout.lines().filter(|l| !l.trim().is_empty()) {
        lines.push(
            serde_json::from_str(l)
                .with_context(|| format!("the client printed a non-JSON line {l:?}"))?,
        );
    }
    Ok(ClientRun {
        lines,
        exit_code: status.code(),
        stderr,
    })
}

/// `mcpwatch audit --json` records (newest 200), waiting briefly for the last
/// response to be completed. Empty if the CLI fails (reported by [`print_cli`]).
fn audit_records(daemon: &Daemon) -> Vec<Value> {
    let mut records = Vec::new();
    for _ in 0..20 {
        let Ok(out) = daemon.cli(&["audit", "--json", "--limit", "200"]) else {
            return records;
        };
        records = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        let open = records
            .iter()
            .any(|r| r["duration_us"].is_null() && r["kind"] == "request");
        if !open {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    records
}

/// Runs and prints `mcpwatch ARGS`; returns what it printed.
fn print_cli(daemon: &Daemon, args: &[&str], unexpected: &mut Vec<String>) -> String {
    println!(
        "    $ mcpwatch --socket {} {}",
        daemon.socket.display(),
        args.join(" ")
    );
    match daemon.cli(args) {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            print!("{text}");
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
                println!("    (mcpwatch failed: {err})");
                unexpected.push(format!("mcpwatch {} failed: {err}", args.join(" ")));
            }
            text
        }
        Err(e) => {
            unexpected.push(format!("mcpwatch {}: {e:#}", args.join(" ")));
            String::new()
        }
    }
}

/// Tool names the server recorded as received, in order.
fn recorded_tools(record: &Path) -> Vec<String> {
    let text = match std::fs::read_to_string(record) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
        Err(_) => String::new(),
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["tool"].as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod hermetic_tests {
    use super::*;

    #[test]
    fn the_demo_passes_the_embedded_default_explicitly() {
        let dir = std::env::temp_dir().join(format!("mcpwatch-demo-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = hermetic_policy(None, &dir).unwrap();
        assert!(!p.starts_with("/etc"), "{}", p.display());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), EMBEDDED_POLICY);
        let mine = Path::new("examples/policy.toml");
        assert_eq!(hermetic_policy(Some(mine), &dir).unwrap(), mine);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_redaction_tokens_but_not_markup() {
        assert_eq!(
            redaction_tokens("email <EMAIL>, SSN <SSN>, card <CARD>, again <SSN>"),
            ["<EMAIL>", "<SSN>", "<CARD>"]
        );
        assert!(redaction_tokens("a <b>tag</b> and 1 < 2 > 0").is_empty());
        assert!(redaction_tokens("unterminated <SSN").is_empty());
    }

    #[test]
    fn extracts_rule_ids_from_denial_messages() {
        assert_eq!(
            rule_in_message("denied by mcpwatch policy rule `no-ssh-keys`: reading SSH keys")
                .as_deref(),
            Some("no-ssh-keys")
        );
        assert_eq!(
            rule_in_message("Rule: agent:reader blocks it").as_deref(),
            Some("agent:reader")
        );
        assert_eq!(rule_in_message("access denied"), None);
    }

    #[test]
    fn verdicts_come_from_the_response() {
        let call = Step::call("lookup_customer", json!({"customer_id": "c-42"}));
        let redacted = json!({"op": "call", "ok": true, "text": "email <EMAIL>, SSN <SSN>"});
        let o = judge(&call, &redacted, true, &[]);
        assert_eq!(o.verdict, "REDACTED: <EMAIL> <SSN>");
        assert!(o.unexpected.is_none());
        let raw = json!({"op": "call", "ok": true, "text": "SSN 536-22-8741, jane@example.com"});
        assert!(
            judge(&call, &raw, true, &[])
                .verdict
                .contains("uninspected")
        );
        let audited = [json!({"method": "tools/call", "name": "lookup_customer",
            "findings": [{"detector": "pii.us_ssn", "count": 1, "action": "audit"}]})];
        let o = judge(&call, &raw, true, &audited);
        assert!(
            o.verdict.starts_with("DETECTED but not redacted"),
            "{}",
            o.verdict
        );
        assert!(o.verdict.contains("pii.us_ssn x1 audit"), "{}", o.verdict);

        let read = Step::call("read_file", json!({"path": "/root/.ssh/id_rsa"}));
        let denied = json!({"op": "call", "ok": false, "error": {"kind": "jsonrpc", "code": -32001, "message": "nope"}});
        let audit = [
            json!({"method": "tools/call", "name": "read_file", "decision": {"rules": ["no-ssh-keys"]}}),
        ];
        let o = judge(&read, &denied, true, &audit);
        assert_eq!(o.verdict, "DENIED by policy rule no-ssh-keys");
        assert!(o.unexpected.is_none());
        let allowed = json!({"op": "call", "ok": true, "text": "contents of /root/.ssh/id_rsa"});
        assert!(judge(&read, &allowed, true, &[]).unexpected.is_some());
        assert!(judge(&read, &allowed, false, &[]).unexpected.is_none());

        let echo = Step::call("echo", json!({"text": "hi"}));
        let wrong = json!({"op": "call", "ok": true, "text": "ho"});
        assert!(judge(&echo, &wrong, false, &[]).unexpected.is_some());
    }
}
