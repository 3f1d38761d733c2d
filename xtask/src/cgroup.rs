//! A disposable child cgroup for `bench` and `demo`: the place where the processes whose
//! connections mcpwatchd intercepts run.
//!
//! Why it exists: mcpwatchd's eBPF programs attach to a cgroup and redirect the connects of
//! every process in it. On a shared machine that must never be the root of the hierarchy,
//! only a child we create, hold, and remove afterwards (also on error and Ctrl-C: the
//! guard's `Drop` runs when `run` returns). xtask stays free of the daemon's crates (it is
//! the first thing built on a fresh machine), so this is plain std + libc.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Mount point of the cgroup2 (unified) hierarchy, from `/proc/mounts`.
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    parse_cgroup2_mount(&mounts)
        .context("no cgroup2 filesystem is mounted (no `cgroup2` line in /proc/mounts)")
}

fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        // Mount paths with spaces are octal-escaped; we do not need to support those.
        (fstype == "cgroup2" && !dir.contains('\\')).then(|| PathBuf::from(dir))
    })
}

/// Why eBPF interception cannot be demonstrated here, if it cannot.
pub fn ebpf_unavailable() -> Option<String> {
    if !crate::util::is_root() {
        return Some("not running as root (attaching eBPF needs CAP_BPF and CAP_NET_ADMIN)".into());
    }
    if let Err(e) = cgroup2_mount() {
        return Some(format!("{e:#}"));
    }
    None
}

/// `<cgroup2 mount>/<prefix>-<pid>`, removed on drop.
#[derive(Debug)]
pub struct ChildCgroup {
    path: PathBuf,
}

impl ChildCgroup {
    /// Creates the cgroup. Fails if it exists (another run of ours still holds it).
    pub fn create(prefix: &str) -> anyhow::Result<ChildCgroup> {
        let mount = cgroup2_mount()?;
        let name = format!("{prefix}-{}", std::process::id());
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("invalid cgroup name {name:?}");
        }
        let path = mount.join(&name);
        // Belt and braces: the eBPF programs must never see the root cgroup.
        if path == mount || path.parent() != Some(mount.as_path()) {
            bail!("refusing to use {} as a watched cgroup", path.display());
        }
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(ChildCgroup { path })
    }

    /// The cgroup directory (what `mcpwatchd --cgroup` takes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        // Leftover processes (only ours can be in it) go back to our own cgroup.
        let home = own_cgroup_dir().filter(|p| p != &self.path && p.is_dir());
        for attempt in 0..150 {
            if let Some(home) = &home {
                for pid in self.pids() {
                    let _ = std::fs::write(home.join("cgroup.procs"), pid.to_string());
                }
            }
            match std::fs::remove_dir(&self.path) {
                Ok(()) => {
                    println!("    removed cgroup {}", self.path.display());
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if attempt == 149 => {
                    eprintln!(
                        "xtask: could not remove cgroup {}: {e}",
                        self.path.display()
                    );
                }
                // EBUSY while exiting processes are still accounted to it.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// The cgroup2 directory this process is in.
fn own_cgroup_dir() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?.trim_end();
    let mount = cgroup2_mount().ok()?;
    Some(mount.join(rel.trim_start_matches('/')))
}

/// Makes `cmd` move itself into the cgroup `dir` (writing "0" to its `cgroup.procs`)
/// between fork and exec, so it is inside before it opens any connection.
pub fn spawn_inside(cmd: &mut Command, dir: &Path) -> anyhow::Result<()> {
    let procs = dir.join("cgroup.procs");
    let path = CString::new(procs.as_os_str().as_bytes())
        .with_context(|| format!("cgroup path {} contains a NUL byte", procs.display()))?;
    // SAFETY: the closure runs in the forked child before exec; it only calls the
    // async-signal-safe open/write/close on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_mount() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(
            parse_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(parse_cgroup2_mount("sysfs /sys sysfs rw 0 0\n"), None);
    }

    #[test]
    fn spawning_into_a_missing_cgroup_fails() {
        let dir = std::env::temp_dir().join(format!("xtask-no-cgroup-{}", std::process::id()));
        let mut cmd = Command::new("/bin/true");
        spawn_inside(&mut cmd, &dir).expect("hook installs");
        let err = cmd.spawn().expect_err("pre_exec must fail");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
