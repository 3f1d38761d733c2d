//! The bench's mcpwatchd targets: the real path (eBPF attached to a child cgroup, the
//! load generator inside it, connects to the backend redirected to the daemon), the same
//! with `[audit] sync = "per_call"` (each call waits for an fsync of its record instead of
//! the default group commit) and with the example policy, and static-upstream mode (no eBPF) to tell the
//! proxy's cost from the redirect's.
//!
//! Why separate targets: "mcpwatchd costs X" is only useful when it says which part
//! costs it. All three use the release binaries and the same worker client as the
//! baselines.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use super::{Env, Started};
use crate::cgroup::{self, ChildCgroup};
use crate::daemon::{self, Daemon, Upstream};
use crate::util;

/// A started mcpwatchd target. Field order matters: the daemon stops (its eBPF links
/// detach) before the cgroup is removed.
pub(super) struct Running {
    pub daemon: Daemon,
    pub cgroup: Option<ChildCgroup>,
    /// Where the worker sends calls: the backend itself (redirected) or the daemon's listener.
    pub addr: SocketAddr,
}

fn daemon_bin() -> PathBuf {
    util::target_dir().join("release").join("mcpwatchd")
}

fn missing_bin() -> Option<Started> {
    let bin = daemon_bin();
    (!bin.exists()).then(|| {
        Started::Skipped(format!(
            "{} is not built (cargo build --release -p mcpwatchd -p mcpwatch)",
            bin.display()
        ))
    })
}

/// `mcpwatchd --static-upstream BACKEND`: the proxy alone, no eBPF.
pub(super) fn start_static(env: &Env<'_>) -> anyhow::Result<Started> {
    if let Some(skip) = missing_bin() {
        return Ok(skip);
    }
    start_static_with(env, "mcpwatchd-static", daemon_bin())
}

/// Where `mcpwatchd-base` finds the baseline build it compares with.
pub(super) const BASE_ENV: &str = "MCPWATCH_BENCH_BASE";

/// The static target on another build of mcpwatchd (`$MCPWATCH_BENCH_BASE`), so a change
/// is measured against the build before it in the same run, minutes apart instead of
/// hours: this machine's speed drifts by a third between runs.
pub(super) fn start_static_base(env: &Env<'_>) -> anyhow::Result<Started> {
    match std::env::var_os(BASE_ENV).map(PathBuf::from) {
        Some(bin) if bin.is_file() => start_static_with(env, "mcpwatchd-base", bin),
        Some(bin) => Ok(Started::Skipped(format!("{BASE_ENV}={} is not a file", bin.display()))),
        None => Ok(Started::Skipped(format!("set {BASE_ENV} to another build's mcpwatchd binary to compare with it"))),
    }
}

fn start_static_with(env: &Env<'_>, name: &str, bin: PathBuf) -> anyhow::Result<Started> {
    let dir = env.scratch.join(name);
    std::fs::create_dir_all(&dir).context("creating the daemon's scratch dir")?;
    let daemon = Daemon::start(&daemon::Opts {
        bin: &bin,
        upstream: Upstream::Static(env.backend),
        policy: None,
        dir: &dir,
        log_filter: "info",
        config: None,
    })?;
    let addr = daemon.listen;
    Ok(Started::Daemon(Running {
        daemon,
        cgroup: None,
        addr,
    }))
}

/// The real path: eBPF on a child cgroup, ports = the backend's port.
pub(super) fn start_watched(env: &Env<'_>) -> anyhow::Result<Started> {
    start_ebpf(env, "mcpwatchd", None, None)
}

/// The real path with `[audit] sync = "per_call"`: what waiting for the fsync costs.
pub(super) fn start_watched_percall(env: &Env<'_>) -> anyhow::Result<Started> {
    start_ebpf(env, "mcpwatchd-percall", None, Some("[audit]\nsync = \"per_call\"\n"))
}

/// The real path with the content detectors off: what inspection adds end to end.
pub(super) fn start_watched_noinspect(env: &Env<'_>) -> anyhow::Result<Started> {
    let policy = util::repo_root().join("xtask").join("assets").join("policy-noinspect.toml");
    start_ebpf(env, "mcpwatchd-noinspect", Some(policy), None)
}

/// The real path with `--policy examples/policy.toml` (skipped when the binary has no
/// `--policy` flag).
pub(super) fn start_watched_policy(env: &Env<'_>) -> anyhow::Result<Started> {
    if let Some(skip) = missing_bin() {
        return Ok(skip);
    }
    if !daemon::supports_flag(&daemon_bin(), "--policy") {
        return Ok(Started::Skipped(
            "this mcpwatchd has no --policy flag (mcpwatchd --help)".into(),
        ));
    }
    let policy = util::repo_root().join("examples").join("policy.toml");
    start_ebpf(env, "mcpwatchd-policy", Some(policy), None)
}

fn start_ebpf(
    env: &Env<'_>,
    name: &str,
    policy: Option<PathBuf>,
    config: Option<&str>,
) -> anyhow::Result<Started> {
    if let Some(skip) = missing_bin() {
        return Ok(skip);
    }
    if let Some(why) = cgroup::ebpf_unavailable() {
        return Ok(Started::Skipped(format!(
            "eBPF interception unavailable: {why}"
        )));
    }
    let dir = env.scratch.join(name);
    std::fs::create_dir_all(&dir).context("creating the daemon's scratch dir")?;
    let cg = ChildCgroup::create("mcpwatch-bench")?;
    util::step(format!("watched cgroup {}", cg.path().display()));
    let bin = daemon_bin();
    let started = Daemon::start(&daemon::Opts {
        bin: &bin,
        upstream: Upstream::Watch {
            cgroup: cg.path(),
            ports: env.backend.port().to_string(),
        },
        policy: policy.as_deref(),
        dir: &dir,
        log_filter: "info",
        config,
    });
    let daemon = match started {
        Ok(d) => d,
        // Attach refused (verifier, kernel, permissions): skip this target only.
        Err(e) => return Ok(Started::Skipped(format!("mcpwatchd did not start: {e:#}"))),
    };
    Ok(Started::Daemon(Running {
        daemon,
        cgroup: Some(cg),
        addr: env.backend,
    }))
}

impl Running {
    /// The cgroup the worker must run in (eBPF targets).
    pub fn client_cgroup(&self) -> Option<&std::path::Path> {
        self.cgroup.as_ref().map(ChildCgroup::path)
    }

    /// The daemon's counters, from `mcpwatch status --json`: (connections, MCP messages,
    /// audit records, the policy in force), to prove the calls went through it.
    pub fn counts(&self) -> anyhow::Result<(u64, u64, u64, u64, String)> {
        let s = self.daemon.status()?;
        let n = |k: &str| s["counts"][k].as_u64().unwrap_or(0);
        let policy = s["policy"].as_str().unwrap_or("(not reported)").to_owned();
        Ok((
            n("connections"),
            n("mcp_messages"),
            n("audit_records"),
            n("upstream_reused"),
            policy,
        ))
    }
}
