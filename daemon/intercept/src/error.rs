//! Why interception could not be set up, phrased for an operator: which step
//! failed (cgroup, load, verifier, attach, map), on what, and the kernel's answer
//! (including the verifier log when the verifier rejected a program).

use std::io;
use std::path::{Path, PathBuf};

use aya::programs::ProgramError;
use aya::{EbpfError, maps::MapError};

use crate::cgroup::CgroupError;

#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("cgroup {path} not found: {source}")]
    CgroupNotFound {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a cgroup v2 directory (the cgroup2 hierarchy is mounted at {mount})")]
    NotCgroup2 { path: PathBuf, mount: PathBuf },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(
        "refusing to attach to the cgroup2 root {path}: that intercepts every process on the host; \
         set {env}=1 to allow it (the systemd unit does)",
        env = crate::ALLOW_ROOT_CGROUP_ENV
    )]
    RootCgroupRefused { path: PathBuf },
    #[error("invalid interception config: {0}")]
    Config(String),
    #[error("permission denied while {what} (needs root or CAP_BPF + CAP_NET_ADMIN): {source}")]
    Permission {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] EbpfError),
    #[error("the kernel verifier rejected eBPF program {program} ({errno}); verifier log:\n{log}")]
    Verifier {
        program: &'static str,
        errno: io::Error,
        log: String,
    },
    #[error("loading eBPF program {program} failed: {source}")]
    ProgramLoad {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching eBPF program {program} to {target} failed: {source}")]
    Attach {
        program: &'static str,
        target: String,
        #[source]
        source: ProgramError,
    },
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "pin dir {path} is not on a bpf filesystem ({checked} is not bpffs); \
         mount one with `mount -t bpf bpf /sys/fs/bpf` or choose a pin dir on bpffs"
    )]
    NotBpfFs { path: PathBuf, checked: PathBuf },
    #[error("pin dir {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a pinned mcpwatch link ({reason}); refusing to touch it")]
    NotAPin { path: PathBuf, reason: String },
    #[error("pinning a link at {path} failed: {reason}")]
    Pin { path: PathBuf, reason: String },
    #[error("internal: the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("internal: the eBPF object has no map {0}")]
    MissingMap(&'static str),
}

/// The first `io::Error` in a source chain, if it is EPERM/EACCES.
fn permission_error(mut err: &(dyn std::error::Error + 'static)) -> Option<io::Error> {
    loop {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return (io.kind() == io::ErrorKind::PermissionDenied)
                .then(|| io::Error::from_raw_os_error(io.raw_os_error().unwrap_or(libc::EPERM)));
        }
        err = err.source()?;
    }
}

impl InterceptError {
    pub(crate) fn load(e: EbpfError) -> Self {
        match permission_error(&e) {
            Some(source) => InterceptError::Permission {
                what: "loading the eBPF object (creating maps)".into(),
                source,
            },
            None => InterceptError::Load(e),
        }
    }

    pub(crate) fn program_load(program: &'static str, e: ProgramError) -> Self {
        match e {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => {
                let log = verifier_log.to_string();
                if io_error.raw_os_error() == Some(libc::EPERM) && log.trim().is_empty() {
                    InterceptError::Permission {
                        what: format!("loading eBPF program {program}"),
                        source: io_error,
                    }
                } else {
                    InterceptError::Verifier {
                        program,
                        errno: io_error,
                        log,
                    }
                }
            }
            e => InterceptError::ProgramLoad { program, source: e },
        }
    }

    pub(crate) fn attach(program: &'static str, cgroup: &Path, e: ProgramError) -> Self {
        let target = if program == crate::EXEC_PROGRAM {
            format!("raw tracepoint {}", crate::EXEC_TRACEPOINT)
        } else {
            format!("cgroup {}", cgroup.display())
        };
        match permission_error(&e) {
            Some(source) => InterceptError::Permission {
                what: format!("attaching {program} to {target}"),
                source,
            },
            None => InterceptError::Attach {
                program,
                target,
                source: e,
            },
        }
    }
}
