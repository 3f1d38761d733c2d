//! Where did an accepted connection want to go, and who opened it?
//!
//! The proxy never talks to eBPF directly: it asks a [`Resolve`] implementation. In
//! production that is [`BpfResolver`] (the `connect` hook's record, looked up by the
//! client's address, completed from `/proc`); tests and benchmarks that run without
//! root use [`StaticResolver`], which sends every connection to one upstream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcpwatch_api::ProcessInfo;
use mcpwatch_intercept::Interceptor;

/// The original destination of a redirected connection and the process behind it.
#[derive(Debug, Clone)]
pub struct Origin {
    pub dst: SocketAddr,
    pub process: Option<Arc<ProcessInfo>>,
    /// Why `process` may not describe the process that connected (it exited, or exec'd,
    /// before `/proc` was read): `process` then holds what the connect hook saw and is
    /// not matched to agents by what `/proc` said. Toward an enforced server its calls
    /// are refused (`proxy::exchange`).
    pub unverified: Option<&'static str>,
}

pub trait Resolve: Send + Sync + 'static {
    /// `peer` is the accepted connection's remote address, `local` the listener side.
    fn resolve(&self, peer: SocketAddr, local: SocketAddr) -> Option<Origin>;
}

/// Sends every connection to one fixed upstream (reverse-proxy mode, tests, bench).
pub struct StaticResolver {
    pub dst: SocketAddr,
}

impl Resolve for StaticResolver {
    fn resolve(&self, _peer: SocketAddr, _local: SocketAddr) -> Option<Origin> {
        Some(Origin { dst: self.dst, process: None, unverified: None })
    }
}

/// What happens to a process description before anything sees it.
pub type Sanitize = Arc<dyn Fn(&mut ProcessInfo) + Send + Sync>;

/// The `[audit] cmdline` setting as a [`Sanitize`]: `redacted` runs every argument
/// through the detectors of the policy in force (`Inspector::redact_argv`), `off`
/// drops the command line, `full` keeps it.
pub fn cmdline_filter(shared: Arc<crate::state::Shared>) -> Sanitize {
    use crate::config::CmdlineMode;
    Arc::new(move |p: &mut ProcessInfo| match shared.config.audit_cmdline {
        CmdlineMode::Full => {}
        CmdlineMode::Off => p.cmdline.clear(),
        CmdlineMode::Redacted => p.cmdline = shared.governance.current().inspector.redact_argv(&p.cmdline),
    })
}

/// Resolves through the eBPF maps and describes the process from `/proc`.
///
/// Process descriptions are cached for a short time (bounded), because an agent opens
/// many connections and walking `/proc` ancestry each time is wasteful. An entry is
/// keyed by what the `connect` hook read of the process image, not by its pid alone:
/// tgid, start time and last exec. A pid is reused within seconds on a host with a
/// small `pid_max` (32768 here), and a process can exec another program: either way the
/// new image must not be judged as the agent described before it (its exe, unit and
/// ancestry are what `[[agent]]` rules match on). Without a start time from the hook,
/// nothing is cached.
pub struct BpfResolver {
    interceptor: Interceptor,
    cache: Mutex<ProcessCache>,
    sanitize: Option<Sanitize>,
}

/// What names one process image: (tgid, start_ns, exec_ns) from the `connect` hook.
type Image = (u32, u64, u64);

struct ProcessCache {
    entries: std::collections::HashMap<u32, (Instant, Image, Arc<ProcessInfo>)>,
    capacity: usize,
    ttl: Duration,
}

impl ProcessCache {
    fn get(&mut self, image: Image, now: Instant) -> Option<Arc<ProcessInfo>> {
        match self.entries.get(&image.0) {
            // `put` never stores an image without a start time, so none matches one.
            Some((at, seen, info)) if *seen == image && now.duration_since(*at) < self.ttl => Some(info.clone()),
            _ => None,
        }
    }

    fn put(&mut self, image: Image, now: Instant, info: Arc<ProcessInfo>) {
        if image.1 == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            let ttl = self.ttl;
            self.entries.retain(|_, (at, _, _)| now.duration_since(*at) < ttl);
            if self.entries.len() >= self.capacity {
                // Still full of fresh entries: drop the oldest.
                if let Some(oldest) = self.entries.iter().min_by_key(|(_, (at, _, _))| *at).map(|(k, _)| *k) {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries.insert(image.0, (now, image, info));
    }
}

impl BpfResolver {
    pub fn new(interceptor: Interceptor) -> Self {
        BpfResolver {
            interceptor,
            cache: Mutex::new(ProcessCache {
                entries: Default::default(),
                capacity: 1024,
                ttl: Duration::from_secs(5),
            }),
            sanitize: None,
        }
    }

    /// Apply `f` to every process description (before it is cached or returned).
    pub fn with_sanitizer(mut self, f: Sanitize) -> Self {
        self.sanitize = Some(f);
        self
    }

    pub fn interceptor(&self) -> &Interceptor {
        &self.interceptor
    }

    /// Drop records of connections closed longer than the grace period. The eBPF maps
    /// are LRU-bounded anyway; sweeping keeps lookups exact under churn.
    pub async fn sweep_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            let n = self.interceptor.sweep();
            if n > 0 {
                tracing::trace!(swept = n, "closed connection records dropped");
            }
        }
    }
}

/// Where the host's resolvers are listed.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The host's DNS resolvers: the `nameserver` lines of [`RESOLV_CONF`], or, when it has
/// none or cannot be read, the local machine (127.0.0.1 and ::1), as the C library then
/// uses (resolv.conf(5)).
pub fn host_dns_servers() -> Vec<std::net::IpAddr> {
    dns_servers_from(std::fs::read_to_string(RESOLV_CONF).ok().as_deref())
}

fn dns_servers_from(resolv_conf: Option<&str>) -> Vec<std::net::IpAddr> {
    let listed = resolv_conf.map(mcpwatch_intercept::resolv_conf_nameservers).unwrap_or_default();
    if listed.is_empty() {
        return vec![std::net::Ipv4Addr::LOCALHOST.into(), std::net::Ipv6Addr::LOCALHOST.into()];
    }
    listed
}

/// Every second: copy the kernel's count of refused UDP (`[scope] udp`) into the
/// counters, for `mcpwatch status`; and, given `resolv_conf` (the resolvers attached from
/// [`RESOLV_CONF`], when `[scope] dns_servers` is not set), keep the resolvers UDP port
/// 53 stays open toward in step with it (DHCP and network managers rewrite it).
pub async fn count_udp_refused(bpf: Arc<BpfResolver>, shared: Arc<crate::state::Shared>, mut resolv_conf: Option<Vec<std::net::IpAddr>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Some(attached) = resolv_conf.as_mut() {
            let now = host_dns_servers();
            if now != *attached {
                match bpf.interceptor().set_dns_servers(&now) {
                    Ok(()) => {
                        tracing::info!(resolvers = ?now, "DNS resolvers changed; UDP port 53 is open toward these only");
                        *attached = now;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot update the DNS resolvers UDP port 53 is open toward"),
                }
            }
        }
        let n = bpf.interceptor().udp_refused();
        let before = shared.counters.udp_refused.swap(n, std::sync::atomic::Ordering::Relaxed);
        if n > before {
            tracing::info!(refused = n - before, total = n, "UDP toward in-scope ports refused (QUIC/HTTP3 cannot be inspected; clients fall back to TCP)");
        }
    }
}

/// A connect to the unspecified address (`0.0.0.0`, `::`) reaches this host's loopback
/// (the kernel connects it to `127.0.0.1` / `::1`): named so, or the same local server
/// would be a second, unregistered one (a shadow the registry's rules skip) at
/// `0.0.0.0:PORT`.
pub fn local_alias_resolved(dst: SocketAddr) -> SocketAddr {
    match dst.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, dst.port())),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, dst.port())),
        _ => dst,
    }
}

impl Resolve for BpfResolver {
    fn resolve(&self, peer: SocketAddr, _local: SocketAddr) -> Option<Origin> {
        let mut origin = self.interceptor.take(peer)?;
        origin.dst = local_alias_resolved(origin.dst);
        let now = Instant::now();
        let image = (origin.tgid, origin.start_ns, origin.exec_ns);
        let cached = self.cache.lock().ok().and_then(|mut c| c.get(image, now)).filter(|p| p.uid == origin.uid);
        let fresh = cached.is_none();
        let mut info = match cached {
            // The cached description is per process; the thread is per call.
            Some(p) => ProcessInfo { pid: origin.pid, ..(*p).clone() },
            None => mcpwatch_intercept::process::describe(&origin, self.interceptor.exec_comm(origin.tgid)),
        };
        // Asked of every connection, once its description is in hand (a fresh one after
        // its reads: nothing changed since the connect, so they were of the process that
        // connected; a cached one is of the image at an earlier connect).
        let unverified = mcpwatch_intercept::process::changed_since_connect(&origin, self.interceptor.exec_ns(origin.tgid));
        if unverified.is_some() {
            // What `/proc` showed is another image's (or nothing): keep only what the
            // connect hook saw.
            info = ProcessInfo { comm: origin.comm.clone(), exe: None, cmdline: Vec::new(), cgroup_path: None, unit: None, ancestry: Vec::new(), agent: None, ..info };
        }
        if fresh && let Some(f) = &self.sanitize {
            f(&mut info);
        }
        let process = Arc::new(info);
        if fresh
            && unverified.is_none()
            && let Ok(mut c) = self.cache.lock()
        {
            c.put(image, now, process.clone());
        }
        Some(Origin { dst: origin.dst, process: Some(process), unverified })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_process_is_the_same_image_or_nothing() {
        let mut c = ProcessCache { entries: Default::default(), capacity: 4, ttl: Duration::from_secs(5) };
        let now = Instant::now();
        let agent = Arc::new(ProcessInfo { tgid: 42, exe: Some("/usr/bin/agent".into()), ..Default::default() });
        c.put((42, 1_000, 0), now, agent.clone());
        assert_eq!(c.get((42, 1_000, 0), now).as_deref(), Some(&*agent));
        // The pid reused by a process started later, or the same process after an exec.
        assert!(c.get((42, 2_000, 0), now).is_none());
        assert!(c.get((42, 1_000, 7), now).is_none());
        assert!(c.get((42, 1_000, 0), now + Duration::from_secs(6)).is_none());
        // Without a start time from the hook, nothing is cached.
        c.put((43, 0, 0), now, agent);
        assert!(c.get((43, 0, 0), now).is_none());
    }

    #[test]
    fn resolvers_default_to_the_local_machine_as_the_c_library_does() {
        let local: Vec<std::net::IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(dns_servers_from(None), local);
        assert_eq!(dns_servers_from(Some("search example.com\noptions edns0\n")), local);
        assert_eq!(dns_servers_from(Some("nameserver 127.0.0.53\n")), vec!["127.0.0.53".parse::<std::net::IpAddr>().unwrap()]);
    }
}
