//! Who made a connection: the process identity the daemon attaches to every record.

use serde::{Deserialize, Serialize};

/// Identity of the process that opened an intercepted connection, as captured by the
/// `connect` hook (pid, uid, comm, cgroup id) and completed from `/proc` by the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ProcessInfo {
    /// Thread id that called connect().
    pub pid: u32,
    /// Process id (thread-group id).
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    /// Name of the primary group (`gid`), resolved by the daemon like `user`; matched by
    /// policy `[[agent]] group = "..."`.
    pub group: Option<String>,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    pub cgroup_id: u64,
    pub cgroup_path: Option<String>,
    /// systemd unit (service or scope) derived from the cgroup path.
    pub unit: Option<String>,
    /// Parents, nearest first, up to the session leader.
    pub ancestry: Vec<Ancestor>,
    /// The process the call is attributed to: the process itself, or the nearest
    /// ancestor when the process is a launcher/bridge such as `mcp-remote` or `npx`.
    pub agent: Option<Ancestor>,
    /// When the process started, in clock ticks after boot (`/proc/<pid>/stat` field
    /// 22), as the `connect` hook read it: with `tgid` it names one process even after
    /// its pid is reused. Omitted when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ticks: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
}

impl ProcessInfo {
    /// Short label for tables: `exe (pid)` or `comm (pid)`.
    pub fn label(&self) -> String {
        let name = self
            .exe
            .as_deref()
            .unwrap_or(self.comm.as_str());
        format!("{name} ({})", self.tgid)
    }
}
