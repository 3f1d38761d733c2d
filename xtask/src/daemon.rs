//! Starting a real `mcpwatchd` for `bench` and `demo`: a private state dir, control
//! socket and listen port, either attached with eBPF to a child cgroup or in
//! static-upstream (reverse-proxy) mode; plus the `mcpwatch` CLI pointed at it.
//!
//! Why it exists: both commands must exercise the binaries an operator installs, with
//! the flags an operator uses, not an in-process proxy. Everything here is loopback
//! and torn down by PID.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::procs::{self, Proc};

/// How the daemon finds upstreams.
pub enum Upstream<'a> {
    /// eBPF attached to `cgroup`, redirecting connects to `ports`.
    Watch { cgroup: &'a Path, ports: String },
    /// No eBPF: every accepted connection goes to this address.
    Static(SocketAddr),
}

/// What to start.
pub struct Opts<'a> {
    /// The `mcpwatchd` binary.
    pub bin: &'a Path,
    pub upstream: Upstream<'a>,
    /// `--policy FILE` (pass only when [`supports_flag`] says the binary has it).
    pub policy: Option<&'a Path>,
    /// Private directory for state, socket and log (must exist).
    pub dir: &'a Path,
    /// `MCPWATCH_LOG` filter.
    pub log_filter: &'a str,
    /// Contents of a `--config` file, if any.
    pub config: Option<&'a str>,
}

/// A running daemon; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    proc: Proc,
    /// `127.0.0.1:<listen port>`.
    pub listen: SocketAddr,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// The `mcpwatch` CLI next to the daemon binary, if built.
    cli: Option<PathBuf>,
}

/// Whether `mcpwatchd --help` lists `flag` (features land while others work: detect them).
pub fn supports_flag(bin: &Path, flag: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
                .any(|w| w == flag)
        })
        .unwrap_or(false)
}

impl Daemon {
    pub fn start(opts: &Opts<'_>) -> anyhow::Result<Daemon> {
        if !opts.bin.exists() {
            bail!("{} is not built", opts.bin.display());
        }
        let port = procs::free_dual_port()?;
        let state = opts.dir.join("state");
        let socket = opts.dir.join("control.sock");
        let log = opts.dir.join("mcpwatchd.log");
        let mut cmd = Command::new(opts.bin);
        cmd.arg("--state-dir")
            .arg(&state)
            .arg("--control-socket")
            .arg(&socket)
            .arg("--listen-port")
            .arg(port.to_string());
        match &opts.upstream {
            Upstream::Watch { cgroup, ports } => {
                cmd.arg("--cgroup").arg(cgroup).arg("--ports").arg(ports);
            }
            Upstream::Static(addr) => {
                cmd.arg("--static-upstream").arg(addr.to_string());
            }
        }
        if let Some(p) = opts.policy {
            cmd.arg("--policy").arg(p);
        }
        if let Some(text) = opts.config {
            let path = opts.dir.join("mcpwatchd.toml");
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            cmd.arg("--config").arg(path);
        }
        let logf =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .env("MCPWATCH_LOG", opts.log_filter)
            // A log file, not a terminal: no colour codes.
            .env("NO_COLOR", "1");
        let shown = crate::util::describe(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", opts.bin.display()))?;
        let proc = Proc::new(child, "mcpwatchd", Duration::from_secs(5));
        let cli = opts
            .bin
            .parent()
            .map(|d| d.join("mcpwatch"))
            .filter(|p| p.exists());
        let mut d = Daemon {
            proc,
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            socket,
            log,
            cli,
        };
        crate::util::step(format!("$ {shown}"));
        d.wait_ready(Duration::from_secs(30))?;
        Ok(d)
    }

    /// Ready = the control socket accepts a connection (bound after the listeners and
    /// the eBPF attach).
    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            procs::check_interrupted()?;
            if let Some(st) = self.proc.exited() {
                bail!(
                    "mcpwatchd exited during start ({st}):\n{}",
                    self.log_tail(30)
                );
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!(
                    "mcpwatchd not ready after {limit:?}:\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Its log lines at WARN or ERROR level (colour codes removed), at most `max`.
    pub fn log_problems(&self, max: usize) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(strip_ansi)
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .take(max)
            .collect()
    }

    /// `mcpwatch --socket <ours> ARGS` (output captured).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let Some(cli) = &self.cli else {
            bail!("the mcpwatch CLI is not built next to mcpwatchd");
        };
        Command::new(cli)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", cli.display()))
    }

    /// `mcpwatch status --json`, parsed.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.cli(&["status", "--json"])?;
        if !out.status.success() {
            bail!(
                "mcpwatch status failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("mcpwatch status --json is not JSON")
    }

    /// Stops it now; says how it ended.
    pub fn stop(&mut self) -> String {
        self.proc.stop()
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colour_codes() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"),
            "2026  WARN x"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
