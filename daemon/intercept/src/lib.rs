//! eBPF interception for mcpwatch: the only crate that touches aya.
//!
//! [`Interceptor::attach`] loads `ebpf/mcpwatch.bpf.c` (compiled by `build.rs`),
//! fills its config, and attaches it to one cgroup v2 directory: every TCP
//! connect from that cgroup to an in-scope port is redirected to the daemon's
//! loopback listener. The daemon then asks [`Interceptor::lookup`] with the peer
//! address of the accepted connection to learn where the client was really
//! going and who it was.
//!
//! By default links are not pinned: they detach when the `Interceptor` drops or
//! the process dies (fail-open). With [`InterceptConfig::pin_dir`] the cgroup
//! (and tracepoint) links are pinned there ([`pins`]): they stay attached after the daemon is
//! gone, so in-scope connections keep being redirected to its dead port and are
//! refused (fail-closed), until a restarted daemon replaces them or
//! [`release_pins`] / [`Interceptor::release`] detaches them.
//!
//! [`cgroup`] and [`process`] need no eBPF and are used by the daemon and tests.

mod agents;
pub mod cgroup;
mod error;
mod maps;
pub mod pins;
mod ports;
pub mod process;
pub mod stdio;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, RawTracePoint, SockOps};
use aya::{Ebpf, EbpfLoader};

pub use agents::{
    AgentEvent, AgentFlags, AgentScope, AgentState, BUILTIN_AGENT_COMMS, MAX_AGENT_COMMS,
    MAX_AGENTS, MAX_COMM_LEN, MAX_PENDING,
};
pub use error::InterceptError;
pub use pins::{pin_dir_for, release_pins};
pub use ports::{PortScope, PortScopeError};

use agents::AgentMaps;
use maps::{RawComm, RawConfig, RawExec, RawOrigin, RawPeerKey};

/// The compiled eBPF object.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mcpwatch.bpf.o"));

/// Environment variable that must be `"1"` to attach to the cgroup2 root (all
/// processes of the host). The production systemd unit sets it; tests never do.
pub const ALLOW_ROOT_CGROUP_ENV: &str = "MCPWATCH_ALLOW_ROOT_CGROUP";

/// How long a connection's record stays resolvable after the client closed it,
/// so that a client which writes and closes before the daemon accepts can still
/// be resolved. Closed records older than this are dropped by [`Interceptor::lookup`]
/// and [`Interceptor::sweep`]; LRU eviction bounds everything else. Adjustable
/// with [`Interceptor::set_closed_grace`].
pub const CLOSED_GRACE: Duration = Duration::from_secs(2);

/// Bound of each connection map (LRU), as compiled into the eBPF object.
pub const MAX_CONNECTIONS: u32 = 65536;

/// What to intercept and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptConfig {
    /// cgroup v2 directory whose processes are intercepted (and their descendants').
    pub cgroup: PathBuf,
    /// The daemon listens on `127.0.0.1:listen_port` and `[::1]:listen_port`.
    pub listen_port: u16,
    /// Destination ports that are redirected.
    pub ports: PortScope,
    /// SO_MARK of the daemon's own upstream sockets; they are never redirected. 0 = none.
    pub mark: u32,
    /// The daemon's pid; its connects are never redirected. 0 = none.
    pub daemon_tgid: u32,
    /// Pin the cgroup and tracepoint links in this directory (on bpffs, created if missing) so
    /// they outlive the process: fail-closed. Links already pinned there (by a
    /// previous daemon) are replaced. `None`: not pinned, they detach with the
    /// `Interceptor` (fail-open).
    pub pin_dir: Option<PathBuf>,
    /// Agents (and their descendants) have every TCP port redirected ([`AgentScope`]).
    pub agents: AgentScope,
    /// Refuse UDP toward in-scope ports (every port for agents and `all`; port 53 only
    /// toward a host that is not in `dns_servers`): QUIC (HTTP/3) cannot be redirected,
    /// and refused, HTTP/3 clients fall back to TCP.
    pub refuse_udp: bool,
    /// The host's DNS resolvers: with `refuse_udp`, UDP port 53 stays open toward these
    /// only (a QUIC server on another host's port 53 would carry MCP past the proxy).
    /// Kept current with [`Interceptor::set_dns_servers`]; see [`resolv_conf_nameservers`].
    pub dns_servers: Vec<std::net::IpAddr>,
}

/// The `nameserver` addresses of a resolv.conf text (at most 64; IPv6 zone ids dropped).
pub fn resolv_conf_nameservers(text: &str) -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = Vec::new();
    for line in text.lines().take(1024) {
        let mut f = line.split_whitespace();
        if f.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = f.next().map(|a| a.split('%').next().unwrap_or(a)) else { continue };
        if let Ok(ip) = addr.parse::<std::net::IpAddr>()
            && !out.contains(&ip) && out.len() < MAX_DNS_SERVERS
        {
            out.push(ip);
        }
    }
    out
}

/// Most resolver addresses the kernel side holds (`MCPW_MAX_DNS_SERVERS`).
pub const MAX_DNS_SERVERS: usize = 64;

/// Where an intercepted connection was going and who opened it, as seen by the
/// connect hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Original destination; IPv4 for IPv4 sockets and for v4-mapped IPv6 destinations.
    pub dst: SocketAddr,
    /// Thread that called connect().
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Name of the thread that called connect().
    pub comm: String,
    pub cgroup_id: u64,
    /// When the process started (its thread group leader's `start_boottime`, ns after
    /// boot); 0 if the kernel did not say.
    pub start_ns: u64,
    /// When the process last exec'd, as the exec tracepoint saw it since attach
    /// (`bpf_ktime_get_ns()`); 0 if not seen.
    pub exec_ns: u64,
}

/// Entry counts of the maps, for status output and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// Redirected sockets not yet closed (keyed by socket cookie).
    pub by_cookie: usize,
    /// Established redirected connections, including closed ones in their grace period.
    pub by_peer: usize,
    /// Remembered execs.
    pub execs: usize,
}

struct Maps {
    by_cookie: HashMap<MapData, u64, RawOrigin>,
    by_peer: HashMap<MapData, RawPeerKey, RawOrigin>,
    execs: HashMap<MapData, u32, RawExec>,
    udp_refused: aya::maps::PerCpuArray<MapData, u64>,
    dns_servers: HashMap<MapData, [u8; 16], u8>,
}

/// Attached interception programs. Dropping it detaches them, unless they are
/// pinned ([`InterceptConfig::pin_dir`]): pinned links stay attached until
/// [`Interceptor::release`] or [`release_pins`].
pub struct Interceptor {
    cgroup: PathBuf,
    /// The pin directory and our pinned links (fds held: they stay attached while
    /// we run even if someone removes the pins).
    pins: Option<(PathBuf, Vec<(PathBuf, FdLink)>)>,
    closed_grace_ns: AtomicU64,
    maps: Mutex<Maps>,
    agents: Mutex<AgentMaps>,
    // Owns the programs and their links; dropped last so maps stay valid meanwhile.
    _ebpf: Mutex<Ebpf>,
}

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interceptor")
            .field("cgroup", &self.cgroup)
            .field("pin_dir", &self.pin_dir())
            .finish_non_exhaustive()
    }
}

const CGROUP_SOCK_ADDR_PROGRAMS: [&str; 6] =
    ["getpeername4", "getpeername6", "connect4", "connect6", "sendmsg4", "sendmsg6"];
const SOCK_OPS_PROGRAM: &str = "sock_ops";
const EXEC_PROGRAM: &str = "process_exec";
const EXEC_TRACEPOINT: &str = "sched_process_exec";
/// Agent tracking: (program, raw tracepoint). Attached host-wide like the exec hook.
const AGENT_TRACEPOINTS: [(&str, &str); 3] = [
    ("process_fork", "sched_process_fork"),
    ("process_exit", "sched_process_exit"),
    ("task_rename", "task_rename"),
];

impl Interceptor {
    /// Loads the programs, fills the config, and attaches them to `cfg.cgroup`.
    ///
    /// Refuses the cgroup2 root unless `MCPWATCH_ALLOW_ROOT_CGROUP=1`.
    ///
    /// With `cfg.pin_dir`, links pinned there by an earlier run (still attached
    /// after a crash or a fail-closed stop) are replaced: the new programs are
    /// attached first, then each pin is swapped to the new link and the old link
    /// detached. Until the swap both run; the old one redirects first, so a
    /// connection made in that instant reaches the new daemon unresolvable and is
    /// closed: never sent unobserved. If anything fails, the old pins stay.
    pub fn attach(cfg: &InterceptConfig) -> Result<Self, InterceptError> {
        let cgroup = check_cgroup(&cfg.cgroup)?;
        if cfg.listen_port == 0 {
            return Err(InterceptError::Config("listen_port must not be 0".into()));
        }
        if cfg.ports.contains(cfg.listen_port) && cfg.ports != PortScope::All {
            // Harmless (connects to the listener itself are skipped) but almost
            // certainly a configuration mistake worth reporting.
            tracing::warn!(
                port = cfg.listen_port,
                "the daemon's listen port is inside the intercepted port scope"
            );
        }

        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(InterceptError::load)?;
        fill_config(&mut ebpf, cfg, &cgroup)?;

        let cgroup_dir = File::open(&cgroup).map_err(|source| InterceptError::CgroupNotFound {
            path: cgroup.clone(),
            source,
        })?;
        // Open what an earlier run pinned before attaching anything: the fds keep
        // those links attached until the new ones have taken their pins.
        let old_pins = match &cfg.pin_dir {
            Some(dir) => {
                pins::prepare_dir(dir)?;
                pins::open_pins(dir)?
            }
            None => Vec::new(),
        };
        let pinning = cfg.pin_dir.is_some();
        let mut to_pin: Vec<(&'static str, FdLink)> = Vec::new();

        // Bookkeeping first (exec, sock_ops, getpeername), the redirect last:
        // no connection is redirected before its record can be completed.
        // Fail-closed pins the tracepoints too: while the daemon is down the agents
        // map keeps following fork and exit, so an agent's new children stay in scope.
        for (name, tracepoint) in std::iter::once((EXEC_PROGRAM, EXEC_TRACEPOINT)).chain(AGENT_TRACEPOINTS) {
            let prog: &mut RawTracePoint = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|e| InterceptError::program_load(name, e))?;
            let id = prog
                .attach(tracepoint)
                .map_err(|e| InterceptError::attach(name, &cgroup, e))?;
            if pinning {
                let link = prog.take_link(id).map_err(|e| take_error(name, e))?;
                to_pin.push((name, FdLink::from(link)));
            }
        }
        {
            let prog: &mut SockOps = program(&mut ebpf, SOCK_OPS_PROGRAM)?;
            prog.load()
                .map_err(|e| InterceptError::program_load(SOCK_OPS_PROGRAM, e))?;
            let id = prog
                .attach(&cgroup_dir, CgroupAttachMode::Single)
                .map_err(|e| InterceptError::attach(SOCK_OPS_PROGRAM, &cgroup, e))?;
            if pinning {
                let link = prog
                    .take_link(id)
                    .map_err(|e| take_error(SOCK_OPS_PROGRAM, e))?;
                let fd = FdLink::try_from(link).map_err(|e| take_error(SOCK_OPS_PROGRAM, e))?;
                to_pin.push((SOCK_OPS_PROGRAM, fd));
            }
        }
        for name in CGROUP_SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|e| InterceptError::program_load(name, e))?;
            let id = prog
                .attach(&cgroup_dir, CgroupAttachMode::Single)
                .map_err(|e| InterceptError::attach(name, &cgroup, e))?;
            if pinning {
                let link = prog.take_link(id).map_err(|e| take_error(name, e))?;
                let fd = FdLink::try_from(link).map_err(|e| take_error(name, e))?;
                to_pin.push((name, fd));
            }
        }
        let pins = match &cfg.pin_dir {
            Some(dir) => {
                let replaced = old_pins.len();
                let kept = pins::replace(dir, to_pin, old_pins)?;
                tracing::info!(pin_dir = %dir.display(), pinned = kept.len(), replaced, "interception links pinned: they stay attached (fail-closed) while mcpwatchd is down");
                Some((dir.clone(), kept))
            }
            None => None,
        };

        let maps = Maps {
            by_cookie: take_hash(&mut ebpf, "by_cookie")?,
            by_peer: take_hash(&mut ebpf, "by_peer")?,
            execs: take_hash(&mut ebpf, "execs")?,
            udp_refused: {
                let map = ebpf.take_map("udp_refused").ok_or(InterceptError::MissingMap("udp_refused"))?;
                aya::maps::PerCpuArray::try_from(map).map_err(|source| InterceptError::Map { map: "udp_refused", source })?
            },
            dns_servers: take_hash(&mut ebpf, "dns_servers")?,
        };
        let agent_maps = take_agent_maps(&mut ebpf)?;
        tracing::info!(cgroup = %cgroup.display(), listen_port = cfg.listen_port, ports = %cfg.ports, agent_scope = cfg.agents.enabled, "eBPF interception attached");
        let ic = Interceptor {
            cgroup,
            pins,
            closed_grace_ns: AtomicU64::new(duration_ns(CLOSED_GRACE)),
            maps: Mutex::new(maps),
            agents: Mutex::new(agent_maps),
            _ebpf: Mutex::new(ebpf),
        };
        ic.set_dns_servers(&cfg.dns_servers)?;
        Ok(ic)
    }

    /// Make `servers` (at most [`MAX_DNS_SERVERS`]) the resolvers UDP port 53 stays open
    /// toward, replacing the previous list.
    pub fn set_dns_servers(&self, servers: &[std::net::IpAddr]) -> Result<(), InterceptError> {
        let wanted: Vec<[u8; 16]> = servers.iter().take(MAX_DNS_SERVERS).map(|ip| maps::ip_key(*ip)).collect();
        let mut maps = self.lock_maps();
        let stale: Vec<[u8; 16]> = maps.dns_servers.keys().filter_map(Result::ok).filter(|k| !wanted.contains(k)).collect();
        let err = |source| InterceptError::Map { map: "dns_servers", source };
        for k in stale {
            maps.dns_servers.remove(&k).map_err(err)?;
        }
        for k in wanted {
            maps.dns_servers.insert(k, 1, 0).map_err(err)?;
        }
        Ok(())
    }

    /// The original destination and identity of an intercepted connection, by the
    /// peer address of the connection the daemon accepted. `None` if it was not
    /// intercepted (or closed more than [`CLOSED_GRACE`] ago, or was evicted).
    pub fn lookup(&self, peer: SocketAddr) -> Option<Origin> {
        self.find(peer, false)
    }

    /// [`Interceptor::lookup`] for the daemon's accept: the record is consumed, so it
    /// names exactly one accepted connection. A record left resolvable could be claimed
    /// by a later socket that reuses the client's address and port and connects to the
    /// daemon directly (not redirected, so no record of its own): it would be taken for
    /// the first process, toward the first destination.
    pub fn take(&self, peer: SocketAddr) -> Option<Origin> {
        self.find(peer, true)
    }

    /// The record of `peer`, unless it expired (then dropped); `consume` drops it anyway.
    fn find(&self, peer: SocketAddr, consume: bool) -> Option<Origin> {
        let key = maps::peer_key(peer);
        let mut maps = self.lock_maps();
        let raw = maps.by_peer.get(&key, 0).ok()?;
        let expired = expired(&raw, monotonic_ns(), self.closed_grace());
        if consume || expired {
            let _ = maps.by_peer.remove(&key);
        }
        (!expired).then(|| raw.to_origin())
    }

    /// UDP connects and sends refused since attach ([`InterceptConfig::refuse_udp`]).
    pub fn udp_refused(&self) -> u64 {
        let maps = self.lock_maps();
        maps.udp_refused.get(&0, 0).map_or(0, |per_cpu| per_cpu.iter().sum())
    }

    /// The comm a process had at its last exec, if seen since attach (also after
    /// it exited, until evicted).
    pub fn exec_comm(&self, tgid: u32) -> Option<String> {
        let maps = self.lock_maps();
        maps.execs
            .get(&tgid, 0)
            .ok()
            .map(|e| maps::comm_str(&e.comm))
    }

    /// When a process last exec'd (`bpf_ktime_get_ns()`), if seen since attach: what
    /// [`Origin::exec_ns`] is compared with to tell whether it exec'd since it connected.
    pub fn exec_ns(&self, tgid: u32) -> Option<u64> {
        let maps = self.lock_maps();
        maps.execs.get(&tgid, 0).ok().map(|e| e.ktime_ns)
    }

    /// The parent pid a process had at its last exec, if seen since attach.
    pub fn exec_ppid(&self, tgid: u32) -> Option<u32> {
        let maps = self.lock_maps();
        maps.execs
            .get(&tgid, 0)
            .ok()
            .map(|e| e.ppid)
            .filter(|p| *p != 0)
    }

    /// The cgroup the programs are attached to (canonical path).
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Where the cgroup links are pinned, if they are.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(|(dir, _)| dir.as_path())
    }

    /// Detaches everything, pinned links included, and removes the pins and the
    /// pin directory; returns how many pinned links were released (0 when not
    /// pinned). This is the deliberate "open the gate"; a plain drop keeps pins.
    pub fn release(mut self) -> Result<usize, InterceptError> {
        let Some((dir, links)) = self.pins.take() else {
            return Ok(0);
        };
        let n = links.len();
        for (path, link) in links {
            pins::unpin(&path)?;
            drop(link);
        }
        pins::remove_dir(&dir)?;
        Ok(n)
    }

    /// Drops records of connections closed more than [`CLOSED_GRACE`] ago; returns
    /// how many. Call it periodically (e.g. every few seconds): without it such
    /// records linger until LRU eviction, which is bounded but wasteful.
    pub fn sweep(&self) -> usize {
        let now = monotonic_ns();
        let grace = self.closed_grace();
        let mut maps = self.lock_maps();
        let stale: Vec<RawPeerKey> = maps
            .by_peer
            .iter()
            .take(MAX_CONNECTIONS as usize * 2)
            .filter_map(Result::ok)
            .filter(|(_, v)| expired(v, now, grace))
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0;
        for key in stale {
            // Re-check: the port may have been reused by a new connection meanwhile.
            if maps
                .by_peer
                .get(&key, 0)
                .is_ok_and(|v| expired(&v, now, grace))
                && maps.by_peer.remove(&key).is_ok()
            {
                removed += 1;
            }
        }
        removed
    }

    /// Changes how long closed connections stay resolvable (default [`CLOSED_GRACE`]).
    pub fn set_closed_grace(&self, grace: Duration) {
        self.closed_grace_ns
            .store(duration_ns(grace), Ordering::Relaxed);
    }

    fn closed_grace(&self) -> u64 {
        self.closed_grace_ns.load(Ordering::Relaxed)
    }

    /// Current entry counts of the maps (each bounded by [`MAX_CONNECTIONS`]).
    pub fn map_sizes(&self) -> MapSizes {
        let maps = self.lock_maps();
        let bound = MAX_CONNECTIONS as usize * 2;
        MapSizes {
            by_cookie: maps
                .by_cookie
                .keys()
                .take(bound)
                .filter(Result::is_ok)
                .count(),
            by_peer: maps
                .by_peer
                .keys()
                .take(bound)
                .filter(Result::is_ok)
                .count(),
            execs: maps.execs.keys().take(bound).filter(Result::is_ok).count(),
        }
    }

    fn lock_maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic while holding the lock cannot leave the kernel maps inconsistent.
        self.maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn expired(v: &RawOrigin, now_ns: u64, grace_ns: u64) -> bool {
    v.closed_ns != 0 && now_ns.saturating_sub(v.closed_ns) > grace_ns
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Resolves `path` and checks it is a cgroup2 directory we may attach to.
fn check_cgroup(path: &Path) -> Result<PathBuf, InterceptError> {
    let canonical = path
        .canonicalize()
        .map_err(|source| InterceptError::CgroupNotFound {
            path: path.to_path_buf(),
            source,
        })?;
    let mount = cgroup::cgroup2_mount()?;
    let mount = mount.canonicalize().unwrap_or(mount);
    if !canonical.starts_with(&mount) || !canonical.join("cgroup.procs").exists() {
        return Err(InterceptError::NotCgroup2 {
            path: canonical,
            mount,
        });
    }
    if canonical == mount && std::env::var(ALLOW_ROOT_CGROUP_ENV).as_deref() != Ok("1") {
        return Err(InterceptError::RootCgroupRefused { path: canonical });
    }
    Ok(canonical)
}

fn fill_config(ebpf: &mut Ebpf, cfg: &InterceptConfig, cgroup: &Path) -> Result<(), InterceptError> {
    let (watch_level, watch_cgid) = watched_cgroup_id(cgroup)?;
    let raw = RawConfig {
        listen_port: u32::from(cfg.listen_port),
        mark: cfg.mark,
        daemon_tgid: cfg.daemon_tgid,
        all_ports: u32::from(cfg.ports == PortScope::All),
        agents: u32::from(cfg.agents.enabled),
        classify: u32::from(cfg.agents.enabled && cfg.agents.classify),
        watch_level,
        refuse_udp: u32::from(cfg.refuse_udp),
        watch_cgid,
    };
    let map_err = |map: &'static str| move |source| InterceptError::Map { map, source };
    if cfg.agents.enabled {
        let map = ebpf
            .map_mut("agent_comms")
            .ok_or(InterceptError::MissingMap("agent_comms"))?;
        let mut comms: HashMap<&mut MapData, RawComm, u32> =
            HashMap::try_from(map).map_err(map_err("agent_comms"))?;
        agents::fill_comms(&mut comms, &cfg.agents.comms)?;
    }
    {
        let map = ebpf
            .map_mut("ports")
            .ok_or(InterceptError::MissingMap("ports"))?;
        let mut ports: Array<&mut MapData, u64> = Array::try_from(map).map_err(map_err("ports"))?;
        for (i, word) in cfg.ports.bitmap().iter().enumerate() {
            if *word != 0 {
                ports.set(i as u32, word, 0).map_err(map_err("ports"))?;
            }
        }
    }
    let map = ebpf
        .map_mut("config")
        .ok_or(InterceptError::MissingMap("config"))?;
    let mut config: Array<&mut MapData, RawConfig> =
        Array::try_from(map).map_err(map_err("config"))?;
    config.set(0, raw, 0).map_err(map_err("config"))?;
    Ok(())
}

/// (depth below the cgroup2 root, cgroup id) of the watched cgroup; the id of a cgroup2
/// directory is its inode number. The root itself is (0, 0): no filter.
fn watched_cgroup_id(cgroup: &Path) -> Result<(u32, u64), InterceptError> {
    use std::os::unix::fs::MetadataExt;
    let mount = cgroup::cgroup2_mount()?;
    let mount = mount.canonicalize().unwrap_or(mount);
    let Ok(rel) = cgroup.strip_prefix(&mount) else {
        return Err(InterceptError::NotCgroup2 { path: cgroup.to_path_buf(), mount });
    };
    let level = rel.components().count();
    if level == 0 {
        return Ok((0, 0));
    }
    let ino = std::fs::metadata(cgroup)
        .map_err(|source| InterceptError::CgroupNotFound { path: cgroup.to_path_buf(), source })?
        .ino();
    Ok((level as u32, ino))
}

fn take_agent_maps(ebpf: &mut Ebpf) -> Result<AgentMaps, InterceptError> {
    let config = ebpf
        .take_map("config")
        .ok_or(InterceptError::MissingMap("config"))?;
    let events = ebpf
        .take_map("events")
        .ok_or(InterceptError::MissingMap("events"))?;
    Ok(AgentMaps {
        config: Array::try_from(config).map_err(|source| InterceptError::Map { map: "config", source })?,
        agents: take_hash(ebpf, "agents")?,
        pending: take_hash(ebpf, "pending")?,
        events: aya::maps::RingBuf::try_from(events)
            .map_err(|source| InterceptError::Map { map: "events", source })?,
    })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, InterceptError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(InterceptError::MissingProgram(name))?;
    prog.try_into()
        .map_err(|e| InterceptError::program_load(name, e))
}

fn take_error(program: &'static str, e: impl std::fmt::Display) -> InterceptError {
    InterceptError::Pin {
        path: PathBuf::from(program),
        reason: format!("cannot take the link of {program} for pinning: {e}"),
    }
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, InterceptError> {
    let map = ebpf
        .take_map(name)
        .ok_or(InterceptError::MissingMap(name))?;
    HashMap::try_from(map).map_err(|source| InterceptError::Map { map: name, source })
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Interceptor>();
};

#[cfg(test)]
mod tests;
