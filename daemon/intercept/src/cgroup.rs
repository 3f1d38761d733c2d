//! cgroup v2 plumbing without eBPF: where the unified hierarchy is mounted, which
//! cgroup a process is in, and a disposable child cgroup for tests.
//!
//! Why it exists: the interceptor attaches to a cgroup directory, the daemon
//! reports cgroup paths of clients, and every eBPF test must run its clients in
//! a child cgroup of its own (never the root, see `HELPER_RULES.md`). None of
//! that needs aya, so the daemon and the integration tests use it directly.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Why the cgroup2 hierarchy or a cgroup could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading /proc/mounts: {0}")]
    Mounts(#[source] io::Error),
    #[error("no cgroup2 filesystem is mounted (no line with fstype cgroup2 in /proc/mounts)")]
    NotMounted,
    #[error("creating cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("moving pid {pid} into cgroup {path}: {source}")]
    AddPid {
        pid: u32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Mount point of the cgroup2 (unified) hierarchy, from `/proc/mounts`.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?;
    parse_cgroup2_mount(&mounts).ok_or(CgroupError::NotMounted)
}

fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
    })
}

/// `/proc/mounts` escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path of `pid` (e.g. `/user.slice/user-1000.slice/session-2.scope`),
/// from the `0::` line of `/proc/<pid>/cgroup`; `None` if the process is gone.
pub fn cgroup_path_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    parse_proc_cgroup(&text)
}

fn parse_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
}

/// Moves the calling process into the cgroup whose `cgroup.procs` file is `procs`
/// by writing `"0"` to it. Async-signal-safe (only `open`, `write`, `close`), so it
/// may run in a `pre_exec` hook between `fork` and `exec`; build `procs` before
/// forking (see [`TestCgroup::pre_exec_hook`]).
pub fn move_self_into(procs: &CStr) -> io::Result<()> {
    // SAFETY: plain syscalls on a valid NUL-terminated path and a 1-byte buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = (n != 1).then(io::Error::last_os_error);
        libc::close(fd);
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

static NEXT_TEST_CGROUP: AtomicU32 = AtomicU32::new(0);

/// A child cgroup of the cgroup2 root, removed on drop.
///
/// On drop, any process still inside is moved back to the cgroup the creating
/// process is in (where test clients come from), then the directory is removed.
/// Drop never panics; failures are reported on stderr.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
    procs: CString,
}

impl TestCgroup {
    /// Creates `<cgroup2 mount>/<name>`. Fails if it already exists.
    pub fn create(name: &str) -> Result<Self, CgroupError> {
        let path = cgroup2_mount()?.join(name);
        std::fs::create_dir(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        let procs =
            CString::new(path.join("cgroup.procs").as_os_str().as_bytes()).map_err(|_| {
                CgroupError::Create {
                    path: path.clone(),
                    source: io::Error::other("path contains a NUL byte"),
                }
            })?;
        Ok(TestCgroup { path, procs })
    }

    /// Creates `<cgroup2 mount>/<prefix>-<pid>-<n>`, unique within this machine.
    pub fn unique(prefix: &str) -> Result<Self, CgroupError> {
        let n = NEXT_TEST_CGROUP.fetch_add(1, Ordering::Relaxed);
        Self::create(&format!("{prefix}-{}-{n}", std::process::id()))
    }

    /// The cgroup directory (what [`crate::InterceptConfig::cgroup`] takes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its `cgroup.procs` file, NUL-terminated, for [`move_self_into`].
    pub fn procs_file(&self) -> &CStr {
        &self.procs
    }

    /// Moves an existing process into this cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string()).map_err(|source| {
            CgroupError::AddPid {
                pid,
                path: self.path.clone(),
                source,
            }
        })
    }

    /// Pids currently in this cgroup.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// A hook for `std::os::unix::process::CommandExt::pre_exec` that moves the
    /// child into this cgroup before it execs.
    pub fn pre_exec_hook(&self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let procs = self.procs.clone();
        move || move_self_into(&procs)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let mount = cgroup2_mount().ok();
        // Where the leftovers go: the creator's own cgroup, else the parent.
        let home = cgroup_path_of(std::process::id())
            .zip(mount.as_ref())
            .map(|(rel, m)| m.join(rel.trim_start_matches('/')))
            .filter(|p| p != &self.path && p.is_dir())
            .or_else(|| self.path.parent().map(Path::to_path_buf));
        for attempt in 0..100 {
            if let Some(home) = &home {
                for pid in self.pids() {
                    // The process may exit meanwhile; the retry loop covers that.
                    let _ = std::fs::write(home.join("cgroup.procs"), pid.to_string());
                }
            }
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if attempt == 99 => {
                    eprintln!(
                        "mcpwatch: could not remove test cgroup {}: {e}",
                        self.path.display()
                    );
                }
                // EBUSY while exiting processes are still accounted to it.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_among_mounts() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      cgroup2 /sys/fs/cgroup/my\\040unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(
            parse_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/my unified"))
        );
        assert_eq!(parse_cgroup2_mount("sysfs /sys sysfs rw 0 0\n"), None);
        assert_eq!(parse_cgroup2_mount(""), None);
        // The real machine has one (design.md: verified).
        let real = cgroup2_mount().unwrap();
        assert!(real.join("cgroup.procs").exists(), "{}", real.display());
    }

    #[test]
    fn unescapes_only_valid_octal() {
        assert_eq!(unescape_mount_path(r"a\040b\134c"), r"a b\c");
        assert_eq!(unescape_mount_path(r"a\0"), r"a\0");
        assert_eq!(unescape_mount_path(r"a\999"), r"a\999");
        assert_eq!(unescape_mount_path(r"\777"), r"\777"); // 511 is not a byte
    }

    #[test]
    fn reads_the_unified_line() {
        let text = "4:memory:/x\n0::/user.slice/app.scope\n";
        assert_eq!(
            parse_proc_cgroup(text).as_deref(),
            Some("/user.slice/app.scope")
        );
        assert_eq!(parse_proc_cgroup("4:memory:/x\n"), None);
        assert!(cgroup_path_of(std::process::id()).is_some_and(|p| p.starts_with('/')));
        assert_eq!(cgroup_path_of(u32::MAX), None);
    }

    #[test]
    fn test_cgroup_moves_children_and_cleans_up() {
        use std::os::unix::process::CommandExt;
        let cg = TestCgroup::unique("mcpwatch-test-cg").unwrap();
        let path = cg.path().to_path_buf();
        assert!(path.is_dir());
        let mut cmd = std::process::Command::new("/bin/sleep");
        cmd.arg("30");
        // SAFETY: the hook only performs async-signal-safe syscalls.
        unsafe { cmd.pre_exec(cg.pre_exec_hook()) };
        let mut child = cmd.spawn().unwrap();
        let rel = cgroup_path_of(child.id()).unwrap();
        assert!(
            path.ends_with(rel.trim_start_matches('/')),
            "{rel} vs {}",
            path.display()
        );
        assert_eq!(cg.pids(), vec![child.id()]);
        drop(cg); // the child is still running: it must be moved out, then rmdir
        assert!(!path.exists());
        assert_ne!(cgroup_path_of(child.id()).unwrap(), rel);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
