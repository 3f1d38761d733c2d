//! The bench's load generator as a process of its own: `xtask bench-worker` (hidden).
//!
//! Why a process: to measure mcpwatchd on its real path, the client's connects must be
//! redirected by the eBPF programs, which only see processes inside the watched cgroup.
//! So every cell (target x mode x concurrency) runs in a fresh worker: outside any cgroup
//! for the baselines, moved into the child cgroup (before exec) for the eBPF target. All
//! targets share the same client code, and one JSON line carries the results back.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::{Cell, Mode, check_answer, load};

/// Arguments of `xtask bench-worker`: one measured cell, printed as one JSON line.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// MCP endpoint, `http://HOST:PORT/mcp` (the path is ignored: calls go to /mcp).
    #[arg(long)]
    pub url: String,
    #[arg(long, value_enum)]
    pub mode: Mode,
    #[arg(long)]
    pub concurrency: usize,
    #[arg(long)]
    pub seconds: f64,
    #[arg(long)]
    pub max_calls: usize,
    /// Discarded warm-up before measuring (connection pools, caches, CPU frequency).
    #[arg(long, default_value_t = 300)]
    pub warmup_ms: u64,
}

/// The worker's stdout line.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    per_sec: f64,
}

/// `xtask bench-worker`: check one answer, warm up, measure, print one JSON line.
pub fn run(args: &WorkerArgs) -> anyhow::Result<()> {
    let addr = addr_of_url(&args.url)?;
    let seconds = args.seconds.clamp(0.1, super::MAX_SECONDS);
    let max_calls = args.max_calls.clamp(1, super::MAX_CALLS);
    let concurrency = args.concurrency.clamp(1, super::MAX_CONCURRENCY);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the load generator runtime")?;
    rt.block_on(check_answer(addr))
        .with_context(|| format!("{} does not answer MCP tools/call", args.url))?;
    let warmup = Duration::from_millis(args.warmup_ms.min(2_000));
    let _ = rt.block_on(load(addr, args.mode, concurrency, warmup, 1_000));
    let cell = rt.block_on(load(
        addr,
        args.mode,
        concurrency,
        Duration::from_secs_f64(seconds),
        max_calls,
    ));
    let report = Report {
        ok: cell.ok,
        errors: cell.errors,
        first_error: cell.first_error,
        p50_us: cell.p50_us,
        p99_us: cell.p99_us,
        max_us: cell.max_us,
        per_sec: cell.per_sec,
    };
    println!(
        "{}",
        serde_json::to_string(&report).context("encoding the report")?
    );
    Ok(())
}

/// `http://HOST:PORT/...` -> the socket address (loopback only: the bench never leaves it).
fn addr_of_url(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs are supported"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("{url}: bad host:port"))?
        .next()
        .with_context(|| format!("{url}: no address"))?;
    if !addr.ip().is_loopback() {
        bail!("{url}: the bench only talks to loopback addresses");
    }
    Ok(addr)
}

/// `xtask bench-worker` for one cell against `addr`, stdout piped (see [`report_of`]).
fn worker_command(addr: SocketAddr, mode: Mode, concurrency: usize, seconds: f64, max_calls: usize) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("finding the xtask executable")?;
    let mut cmd = Command::new(&exe);
    cmd.arg("bench-worker")
        .arg("--url")
        .arg(format!("http://{addr}/mcp"))
        .arg("--mode")
        .arg(mode.label())
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .arg("--seconds")
        .arg(seconds.to_string())
        .arg("--max-calls")
        .arg(max_calls.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(cmd)
}

/// Starts a worker from [`worker_command`] (inside `cgroup` if given), waits for it and
/// reads its report line.
fn report_of(cmd: &mut Command, cgroup: Option<&Path>) -> anyhow::Result<Report> {
    if let Some(cg) = cgroup {
        crate::cgroup::spawn_inside(cmd, cg)?;
    }
    let child = cmd.spawn().with_context(|| format!("starting the bench worker {}", cmd.get_program().to_string_lossy()))?;
    // Bounded by the worker's own limits (its seconds + warm-up + check); no extra timer.
    let start = Instant::now();
    let out = child
        .wait_with_output()
        .context("waiting for the bench worker")?;
    crate::procs::check_interrupted()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "bench worker failed ({}) after {:.1} s: {}",
            out.status,
            start.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("bench worker printed {line:?}, not a report"))
}

/// Runs one cell in a fresh worker process (this executable), inside `cgroup` if given.
pub(super) fn run_cell(
    target: &'static str,
    addr: SocketAddr,
    mode: Mode,
    concurrency: usize,
    seconds: f64,
    max_calls: usize,
    cgroup: Option<&Path>,
) -> anyhow::Result<Cell> {
    let mut cmd = worker_command(addr, mode, concurrency, seconds, max_calls)?;
    let r = report_of(&mut cmd, cgroup)?;
    Ok(Cell {
        target,
        mode,
        concurrency,
        ok: r.ok,
        errors: r.errors,
        first_error: r.first_error,
        p50_us: r.p50_us,
        p99_us: r.p99_us,
        max_us: r.max_us,
        per_sec: r.per_sec,
        cpu_us: None,
    })
}

/// Exactly `calls` keep-alive calls from one client (inside `cgroup` if given), with no
/// timed warm-up (every call the worker makes is one the caller counts: `bench
/// --instructions`). Fails unless all are answered.
pub(super) fn run_counted(addr: SocketAddr, calls: usize, cgroup: Option<&Path>) -> anyhow::Result<()> {
    let mut cmd = worker_command(addr, Mode::KeepAlive, 1, 600.0, calls)?;
    cmd.args(["--warmup-ms", "0"]);
    let r = report_of(&mut cmd, cgroup)?;
    if r.ok < calls {
        bail!("only {} of {calls} calls were answered (first error: {:?})", r.ok, r.first_error);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_urls_are_loopback_http() {
        assert_eq!(
            addr_of_url("http://127.0.0.1:8080/mcp").expect("ok"),
            SocketAddr::from(([127, 0, 0, 1], 8080))
        );
        assert_eq!(
            addr_of_url("http://[::1]:9/").expect("ok"),
            "[::1]:9".parse::<SocketAddr>().expect("addr")
        );
        assert!(addr_of_url("https://127.0.0.1:1/mcp").is_err());
        assert!(addr_of_url("http://10.0.0.1:80/mcp").is_err());
        assert!(addr_of_url("http://127.0.0.1/mcp").is_err());
    }

    #[test]
    fn worker_arguments_parse() {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            w: WorkerArgs,
        }
        let p = <P as clap::Parser>::try_parse_from([
            "w",
            "--url",
            "http://127.0.0.1:1/mcp",
            "--mode",
            "newconn",
            "--concurrency",
            "8",
            "--seconds",
            "0.5",
            "--max-calls",
            "10",
        ])
        .expect("parses");
        assert_eq!(p.w.mode, Mode::NewConn);
        assert_eq!(p.w.concurrency, 8);
        assert_eq!(p.w.warmup_ms, 300);
    }
}
