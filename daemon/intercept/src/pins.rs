//! Pinned cgroup links: interception that outlives the daemon (fail-closed).
//!
//! Why it exists: a link that is not pinned detaches when the daemon's process
//! dies, and the watched processes then connect directly, unobserved. In
//! fail-closed mode the daemon pins its cgroup links in a bpf filesystem
//! directory instead: after a crash (or a deliberate stop) the programs stay
//! attached and keep redirecting in-scope connections to the daemon's loopback
//! port, where nobody listens, so they are refused (`ECONNREFUSED`) rather than
//! sent unobserved.
//!
//! Layout: one directory per watched cgroup ([`pin_dir_for`]), holding one
//! pinned link per cgroup program, named after the program (`connect4`,
//! `connect6`, `getpeername4`, `getpeername6`, `sendmsg4`, `sendmsg6`, `sock_ops`). A restarted daemon
//! replaces them ([`crate::Interceptor::attach`]); [`release_pins`] detaches
//! them for good. The exec tracepoint is bookkeeping only and is never pinned.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use aya::programs::links::{FdLink, LinkInfo, LinkType, PinnedLink};

use crate::InterceptError;

/// `f_type` of a bpf filesystem (`BPF_FS_MAGIC` in `linux/magic.h`).
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The conventional bpffs mount and the default base of mcpwatch's pins.
pub const DEFAULT_PIN_BASE: &str = "/sys/fs/bpf/mcpwatch";

/// At most this many entries are read from a pin directory (we write five).
const MAX_PIN_ENTRIES: usize = 64;

/// Longest pin directory name we produce (NAME_MAX is 255).
const MAX_NAME: usize = 200;

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path contains a NUL byte"))?;
    // SAFETY: statfs writes into a zeroed, properly sized struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// The pin directory for `cgroup` under `base`: one file name derived from the
/// cgroup's path relative to the cgroup2 mount (`/agents/a` → `%2Fagents%2Fa`),
/// so two cgroups never share a directory. A cgroup that no longer exists is
/// named by the path as given (so its pins can still be released).
pub fn pin_dir_for(base: &Path, cgroup: &Path) -> Result<PathBuf, InterceptError> {
    let mount = crate::cgroup::cgroup2_mount()?;
    let mount = mount.canonicalize().unwrap_or(mount);
    let path = cgroup
        .canonicalize()
        .unwrap_or_else(|_| cgroup.to_path_buf());
    let rel = path
        .strip_prefix(&mount)
        .map_err(|_| InterceptError::NotCgroup2 {
            path: path.clone(),
            mount: mount.clone(),
        })?;
    Ok(base.join(pin_name(rel)))
}

/// `"/" + rel`, with every byte outside `[A-Za-z0-9_-]` percent-encoded (bpffs
/// refuses names with a `.`); over-long names are cut and suffixed with a stable
/// hash of the whole path.
fn pin_name(rel: &Path) -> String {
    let mut full = b"/".to_vec();
    full.extend_from_slice(rel.as_os_str().as_bytes());
    let mut name = String::new();
    for &b in &full {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    if name.len() > MAX_NAME {
        // FNV-1a: stable across builds (the name must survive upgrades).
        let hash = full.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        name.truncate(MAX_NAME - 17);
        name.push_str(&format!("~{hash:016x}"));
    }
    name
}

/// Checks that `dir` is (or can be created) on a bpf filesystem and creates it.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), InterceptError> {
    if !dir.is_absolute() {
        return Err(InterceptError::Config(format!(
            "pin dir {} must be an absolute path",
            dir.display()
        )));
    }
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let on_bpffs = is_bpffs(existing).map_err(|source| InterceptError::PinDir {
        path: existing.to_path_buf(),
        source,
    })?;
    if !on_bpffs {
        return Err(InterceptError::NotBpfFs {
            path: dir.to_path_buf(),
            checked: existing.to_path_buf(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| InterceptError::PinDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// Every link pinned in `dir` (none if it does not exist), opened: holding the fd
/// keeps a link attached even after its pin file is removed.
pub(crate) fn open_pins(dir: &Path) -> Result<Vec<(PathBuf, FdLink)>, InterceptError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(InterceptError::PinDir {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| InterceptError::PinDir {
            path: dir.to_path_buf(),
            source,
        })?;
        if paths.len() == MAX_PIN_ENTRIES {
            return Err(InterceptError::NotAPin {
                path: dir.to_path_buf(),
                reason: format!(
                    "more than {MAX_PIN_ENTRIES} entries; not an mcpwatch pin directory"
                ),
            });
        }
        paths.push(entry.path());
    }
    paths.sort();
    let mut links = Vec::with_capacity(paths.len());
    for path in paths {
        let link = open_link(&path)?;
        links.push((path, link));
    }
    Ok(links)
}

/// Opens one pinned link and checks it is a cgroup or raw tracepoint link.
fn open_link(path: &Path) -> Result<FdLink, InterceptError> {
    if path.is_dir() {
        return Err(InterceptError::NotAPin {
            path: path.to_path_buf(),
            reason: "a directory".into(),
        });
    }
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(InterceptError::NotAPin {
            path: path.to_path_buf(),
            reason: "the name contains a NUL byte".into(),
        });
    }
    let link: FdLink = PinnedLink::from_pin(path)
        .map_err(|e| InterceptError::NotAPin {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .into();
    let kind = link
        .info()
        .and_then(|i: LinkInfo| i.link_type())
        .map_err(|e| InterceptError::NotAPin {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    // Cgroup links (the redirect) and raw tracepoint links (exec/fork/exit/rename
    // bookkeeping of agent scope).
    if kind != LinkType::Cgroup && kind != LinkType::RawTracePoint {
        return Err(InterceptError::NotAPin {
            path: path.to_path_buf(),
            reason: format!("a {kind:?} link, not a cgroup or raw tracepoint link"),
        });
    }
    Ok(link)
}

/// Removes a pin file; a missing one is fine.
pub(crate) fn unpin(path: &Path) -> Result<(), InterceptError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(InterceptError::PinDir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Pins `new` links in `dir` under their program names, replacing whatever was
/// pinned there (`old`, opened by [`open_pins`] before the new programs were
/// attached). Each name is swapped atomically (pin under a temporary name, then
/// rename over the old pin), so at every instant each name pins a link. The old
/// links detach when their fds drop at the end; stale extra pins are removed.
pub(crate) fn replace(
    dir: &Path,
    new: Vec<(&'static str, FdLink)>,
    old: Vec<(PathBuf, FdLink)>,
) -> Result<Vec<(PathBuf, FdLink)>, InterceptError> {
    let mut kept = Vec::with_capacity(new.len());
    for (name, link) in new {
        // No `.`: bpffs refuses names containing one.
        let tmp = dir.join(format!("{name}-new-{}", std::process::id()));
        unpin(&tmp)?; // a leftover from a crashed attach of a pid-reusing daemon
        let pinned = link.pin(&tmp).map_err(|e| InterceptError::Pin {
            path: tmp.clone(),
            reason: e.to_string(),
        })?;
        let path = dir.join(name);
        if let Err(source) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(InterceptError::PinDir { path, source });
        }
        kept.push((path, FdLink::from(pinned)));
    }
    for (path, link) in old {
        if !kept.iter().any(|(p, _)| p == &path) {
            unpin(&path)?;
        }
        drop(link); // last reference: the old link detaches now
    }
    Ok(kept)
}

/// Detaches every link pinned in `pin_dir` and removes the pins and the
/// directory; returns how many links were released. A missing directory
/// releases nothing. Links still held open by a running daemon stay attached
/// until that daemon exits (then nothing pins them and they detach).
pub fn release_pins(pin_dir: &Path) -> Result<usize, InterceptError> {
    let links = open_pins(pin_dir)?;
    let n = links.len();
    for (path, link) in links {
        unpin(&path)?;
        drop(link);
    }
    remove_dir(pin_dir)?;
    Ok(n)
}

pub(crate) fn remove_dir(dir: &Path) -> Result<(), InterceptError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(InterceptError::PinDir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

static NEXT_TEST_BPFFS: AtomicU32 = AtomicU32::new(0);

/// A private bpf filesystem mounted on a temporary directory, for tests of
/// pinned links. On drop every pin directory in it is released, the
/// filesystem is unmounted (which drops anything still pinned in it) and the
/// mount point removed: a failing test leaves nothing attached. Drop never
/// panics; failures are reported on stderr.
#[derive(Debug)]
pub struct TestBpfFs {
    path: PathBuf,
}

impl TestBpfFs {
    /// Mounts a fresh bpffs instance at `<tmp>/<prefix>-<pid>-<n>` (needs root).
    pub fn unique(prefix: &str) -> io::Result<Self> {
        let n = NEXT_TEST_BPFFS.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir(&path)?;
        let target = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            let _ = std::fs::remove_dir(&path);
            return Err(err);
        }
        Ok(TestBpfFs { path })
    }

    /// The mount point (a bpffs directory).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestBpfFs {
    fn drop(&mut self) {
        // Release the pins explicitly first, deepest directories first (also
        // reports what was left behind).
        let mut dirs = Vec::new();
        let mut todo = vec![(self.path.clone(), 0usize)];
        while let Some((dir, depth)) = todo.pop() {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten().take(MAX_PIN_ENTRIES) {
                    if e.path().is_dir() && depth < 8 {
                        todo.push((e.path(), depth + 1));
                    }
                }
            }
            dirs.push((depth, dir));
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (depth, dir) in dirs {
            if depth == 0 {
                continue; // the mount point itself: unmounted below
            }
            match release_pins(&dir) {
                Ok(0) => {}
                Ok(n) => eprintln!("mcpwatch: released {n} test pins left in {}", dir.display()),
                Err(err) => eprintln!("mcpwatch: releasing test pins in {}: {err}", dir.display()),
            }
        }
        let Ok(target) = CString::new(self.path.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: NUL-terminated path. MNT_DETACH as a fallback if something is busy.
        let rc = unsafe { libc::umount2(target.as_ptr(), 0) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            eprintln!(
                "mcpwatch: unmounting test bpffs {}: {err}",
                self.path.display()
            );
            // SAFETY: as above.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        if let Err(e) = std::fs::remove_dir(&self.path) {
            eprintln!("mcpwatch: removing {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_are_file_names_and_injective() {
        assert_eq!(pin_name(Path::new("")), "%2F");
        assert_eq!(pin_name(Path::new("agents")), "%2Fagents");
        assert_eq!(pin_name(Path::new("a/b")), "%2Fa%2Fb");
        assert_eq!(pin_name(Path::new("a%2Fb")), "%2Fa%252Fb");
        assert_eq!(pin_name(Path::new("x y")), "%2Fx%20y");
        assert_eq!(
            pin_name(Path::new("user.slice/app-1_2")),
            "%2Fuser%2Eslice%2Fapp-1_2"
        );
        let long = "d/".repeat(200);
        let n = pin_name(Path::new(&long));
        assert!(n.len() <= MAX_NAME && !n.contains('/'), "{n}");
        let other = pin_name(Path::new(&format!("{long}x")));
        assert_ne!(n, other, "long names keep a hash of the whole path");
        assert_eq!(n, pin_name(Path::new(&long)), "stable");
    }

    #[test]
    fn pin_dir_is_per_cgroup_under_the_base() {
        let mount = crate::cgroup::cgroup2_mount().unwrap();
        let base = Path::new("/sys/fs/bpf/mcpwatch");
        assert_eq!(
            pin_dir_for(base, &mount.join("agents")).unwrap(),
            base.join("%2Fagents")
        );
        assert_eq!(pin_dir_for(base, &mount).unwrap(), base.join("%2F"));
        assert!(matches!(
            pin_dir_for(base, Path::new("/tmp/not-a-cgroup")),
            Err(InterceptError::NotCgroup2 { .. })
        ));
    }

    #[test]
    fn release_of_a_missing_dir_releases_nothing() {
        let dir = std::env::temp_dir().join(format!("mcpwatch-no-pins-{}", std::process::id()));
        assert_eq!(release_pins(&dir).unwrap(), 0);
        assert!(!dir.exists());
    }

    #[test]
    fn pin_dirs_must_be_on_bpffs() {
        let tmp = std::env::temp_dir();
        assert!(!is_bpffs(&tmp).unwrap());
        let err = prepare_dir(&tmp.join("mcpwatch-pins-nowhere")).unwrap_err();
        assert!(matches!(err, InterceptError::NotBpfFs { .. }), "{err}");
        assert!(err.to_string().contains("mount -t bpf"), "{err}");
        assert!(!tmp.join("mcpwatch-pins-nowhere").exists());
        assert!(matches!(
            prepare_dir(Path::new("relative/pins")),
            Err(InterceptError::Config(_))
        ));
        let fs = TestBpfFs::unique("mcpwatch-test-bpffs").unwrap();
        assert!(is_bpffs(fs.path()).unwrap());
        let dir = fs.path().join("a").join("b");
        prepare_dir(&dir).unwrap();
        assert!(dir.is_dir() && is_bpffs(&dir).unwrap());
        let mount = fs.path().to_path_buf();
        drop(fs);
        assert!(!mount.exists(), "the test mount is removed on drop");
    }
}
