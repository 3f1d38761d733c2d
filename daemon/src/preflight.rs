//! Start-up checks an operator can act on, run before the daemon changes anything.
//!
//! Why a module of its own: the common ways a start fails (the port is taken, the
//! cgroup does not exist, the daemon lacks the capabilities to load eBPF, no bpf
//! filesystem for fail-closed pins, a state dir it cannot write) used to surface as a
//! raw OS error, sometimes twice, and only after the daemon had created its CA and store.
//! Each check here returns ONE line naming the cause and the fix, and runs before any
//! file, key or link is created, so a failed start leaves the host as it was.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// One failed check: the one-line message printed on stderr.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PreflightError(pub String);

fn fail<T>(msg: String) -> Result<T, PreflightError> {
    Err(PreflightError(msg))
}

/// The watched cgroup exists and is a directory on the cgroup2 hierarchy.
pub fn cgroup(cgroup: &Path) -> Result<(), PreflightError> {
    match std::fs::metadata(cgroup) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return fail(format!("cgroup {} is not a directory: set `cgroup` in the config (or --cgroup) to a cgroup v2 directory under /sys/fs/cgroup", cgroup.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(format!("cgroup {} does not exist: create it (mkdir {}) or set `cgroup` in the config (or --cgroup) to an existing cgroup v2 directory", cgroup.display(), cgroup.display()))
        }
        Err(e) => return fail(format!("cgroup {} cannot be read ({}): check the path and the daemon's permissions", cgroup.display(), os_msg(&e))),
    }
    match mcpwatch_intercept::cgroup::cgroup2_mount() {
        Ok(mount) => {
            let mount = mount.canonicalize().unwrap_or(mount);
            let path = cgroup.canonicalize().unwrap_or_else(|_| cgroup.to_path_buf());
            if !path.starts_with(&mount) {
                return fail(format!("{} is not on the cgroup v2 hierarchy (mounted at {}): point `cgroup`/--cgroup at a directory under it", cgroup.display(), mount.display()));
            }
            Ok(())
        }
        Err(_) => Err(no_cgroup2()),
    }
}

/// No cgroup2 mount at all (nothing to attach to).
pub fn no_cgroup2() -> PreflightError {
    PreflightError("no cgroup v2 (unified) hierarchy is mounted: mount it (mount -t cgroup2 none /sys/fs/cgroup) or boot with systemd.unified_cgroup_hierarchy=1".into())
}

/// Capability numbers from `linux/capability.h`.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set from `/proc/self/status` (`None` if unreadable).
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The daemon can load and attach eBPF: it holds CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN.
pub fn bpf_permission() -> Result<(), PreflightError> {
    let Some(caps) = effective_caps() else { return Ok(()) };
    // Kernels before 5.8 have no CAP_BPF/CAP_PERFMON: CAP_SYS_ADMIN covers them there.
    if caps & (1u64 << CAP_SYS_ADMIN) != 0 {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"), (CAP_NET_ADMIN, "CAP_NET_ADMIN")]
        .into_iter()
        .filter(|(bit, _)| caps & (1u64 << bit) == 0)
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fail(format!(
        "no permission to load eBPF (missing {}): run as root or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (AmbientCapabilities= in the systemd unit)",
        missing.join(", ")
    ))
}

/// Fail-closed pins need a bpf filesystem at (an ancestor of) `pin_base`.
pub fn bpffs(pin_base: &Path) -> Result<(), PreflightError> {
    let mut p: Option<&Path> = Some(pin_base);
    while let Some(dir) = p {
        if dir.exists() {
            return match mcpwatch_intercept::pins::is_bpffs(dir) {
                Ok(true) => Ok(()),
                _ => fail(format!(
                    "failure_mode = closed pins the eBPF links under {} but no bpf filesystem is mounted there: mount one (mount -t bpf bpf /sys/fs/bpf), set `pin_dir`/--pin-dir to a directory on bpffs, or use failure_mode = open",
                    pin_base.display()
                )),
            };
        }
        p = dir.parent();
    }
    fail(format!("pin dir {} has no existing ancestor: set `pin_dir`/--pin-dir to a directory on bpffs", pin_base.display()))
}

/// The state dir exists or can be created, and the daemon can write in it. Creates the
/// directory (0700) when missing: that is the check.
pub fn state_dir(dir: &Path) -> Result<(), PreflightError> {
    let fix = "fix the path (`state_dir`/--state-dir) or its ownership (chown it to the daemon's user; the systemd unit's StateDirectory= does this)";
    if let Err(e) = crate::startup::prepare_state_dir(dir) {
        let os = match &e {
            crate::startup::StartupError::Io { source, .. } => os_msg(source),
            other => other.to_string(),
        };
        return fail(format!("state dir {} is not usable ({os}): {fix}", dir.display()));
    }
    let probe: PathBuf = dir.join(format!(".write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => fail(format!("state dir {} is not writable ({}): {fix}", dir.display(), os_msg(&e))),
    }
}

/// Bind the proxy's listeners. An IPv6 address that cannot be bound is skipped (IPv6
/// may be disabled); any other failure is one line naming the port.
pub async fn listeners(addrs: &[SocketAddr]) -> Result<Vec<tokio::net::TcpListener>, PreflightError> {
    let mut out = Vec::new();
    for &addr in addrs {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => out.push(l),
            Err(e) if addr.is_ipv6() && e.kind() != std::io::ErrorKind::AddrInUse => {
                tracing::warn!(%addr, error = %e, "cannot listen on IPv6 loopback")
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return fail(format!(
                    "port {} on {} is already in use (another mcpwatchd? `ss -ltnp 'sport = :{}'` shows who): stop it or set `listen_port`/--listen-port to a free port",
                    addr.port(),
                    addr.ip(),
                    addr.port()
                ))
            }
            Err(e) => return fail(format!("cannot listen on {addr} ({}): set `listen_port`/--listen-port to a port the daemon may bind", os_msg(&e))),
        }
    }
    Ok(out)
}

/// The OS message without Rust's " (os error N)" suffix.
fn os_msg(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
