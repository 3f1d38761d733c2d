//! Does a plain-HTTP `Host` name its real destination?
//!
//! A server's identity (registry entry, inventory, tool pins, sessions, flows) is its
//! endpoint, and the endpoint's host comes from the request. Over TLS that name is
//! proven: mcpwatch's own verified handshake with the destination checks it (and a
//! `Host` that differs from the SNI is refused). Over plain HTTP nothing proves it: a
//! client inside the cgroup could connect to any address and write the name of a
//! registered server in `Host`, and be judged by that server's rules (`shadow = "block"`
//! and agents' `servers` lists undone). So toward a remote address a name counts only
//! when the daemon's own resolver maps it to that address; otherwise the endpoint is
//! named by the address, as the connection really goes.
//!
//! The same proofs say which addresses a server registered by name answers at, so that
//! it is governed there too ([`crate::proxy::relay::governed_mode_resolved`]). There a
//! missing proof is the unsafe answer (the connection would be relayed ungoverned), so a
//! lookup that did not finish says [`Proof::Unknown`], which that caller governs, and
//! the registry's names are looked up in a lane of their own
//! ([`HostProofs::check_registered`]): names a client chooses (a `Host` header, whose
//! DNS the client's owner may make as slow as it likes) can take every turn of the other
//! lane and never delay them. A registry name is resolved once per TTL, whatever the
//! destination (a client connecting to ever new addresses costs no lookups), and an
//! unfinished lookup is remembered for [`HostProofs::UNKNOWN_TTL`], so a name whose DNS
//! hangs governs connections at once instead of making each wait out the deadline.
//!
//! Lookups are cached per (address, name): proofs for [`HostProofs::PROVEN_TTL`],
//! failures for the shorter [`HostProofs::REFUSED_TTL`]; an unfinished lookup is not
//! cached. A flood of names costs at most [`HostProofs::MAX_LOOKUPS`] resolver threads at
//! a time (a turn is held until `getaddrinfo` returns, not until the caller's deadline),
//! and never a name it did not prove: a request that waits past [`HostProofs::DEADLINE`]
//! is named by its address.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a lookup said about a name toward an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// The name resolves to the destination.
    Proven,
    /// It does not (or the resolver failed): the name is a claim only.
    Unproven,
    /// The lookup did not finish within [`HostProofs::DEADLINE`]: nothing is known, and
    /// nothing is cached. Not a proof of the name; not a proof against it either.
    Unknown,
}

/// Cached DNS proofs that names resolve to destinations (see the module doc).
pub struct HostProofs {
    seen: Mutex<HashMap<(IpAddr, String), (Instant, Proof)>>,
    /// Turns to run `getaddrinfo`, held until it returns: a caller that gives up at the
    /// deadline does not free its turn while the lookup still occupies a blocking thread
    /// (the pool the audit store's fsyncs run on).
    lookups: std::sync::Arc<tokio::sync::Semaphore>,
    /// The same for the policy registry's names, which only the operator chooses.
    registered: std::sync::Arc<tokio::sync::Semaphore>,
    /// A registry name → what it resolved to, whatever the destination: each name is
    /// looked up once per TTL, not once per new address a client connects to.
    names: Mutex<HashMap<String, (Instant, Resolved)>>,
}

/// What a registry name's last lookup said.
#[derive(Clone)]
enum Resolved {
    Addrs(Vec<IpAddr>),
    Failed,
    /// Past the deadline: asked again after [`HostProofs::UNKNOWN_TTL`].
    Unfinished,
}

impl HostProofs {
    /// How long a name that resolved to the destination stays proven.
    pub const PROVEN_TTL: Duration = Duration::from_secs(300);
    /// How long a failed proof is remembered before the name is looked up again.
    pub const REFUSED_TTL: Duration = Duration::from_secs(30);
    /// Most (address, name) pairs remembered.
    pub const CAPACITY: usize = 4096;
    /// Most lookups in flight; more wait for a turn within the deadline.
    pub const MAX_LOOKUPS: usize = 16;
    /// How long an unfinished lookup of a registry name is remembered: connections in the
    /// meantime are governed at once instead of each waiting out the deadline.
    pub const UNKNOWN_TTL: Duration = Duration::from_secs(10);
    /// A lookup that takes longer proves nothing.
    pub const DEADLINE: Duration = Duration::from_secs(2);

    pub fn new() -> HostProofs {
        HostProofs {
            seen: Mutex::new(HashMap::new()),
            lookups: std::sync::Arc::new(tokio::sync::Semaphore::new(Self::MAX_LOOKUPS)),
            registered: std::sync::Arc::new(tokio::sync::Semaphore::new(Self::MAX_LOOKUPS)),
            names: Mutex::new(HashMap::new()),
        }
    }

    /// Does `name` resolve to `dst`, by the system resolver?
    pub async fn check(&self, dst: IpAddr, name: &str) -> Proof {
        self.check_resolving(dst, name, &self.lookups, system_resolve).await
    }

    /// [`HostProofs::check`] for a name of the policy's server registry, in its own lane
    /// of lookup turns (see the module doc).
    pub async fn check_registered(&self, dst: IpAddr, name: &str) -> Proof {
        self.check_registered_with(dst, name, Instant::now(), system_resolve).await
    }

    /// [`HostProofs::check_registered`] with the clock and a blocking resolver given (tests).
    async fn check_registered_with<R>(&self, dst: IpAddr, name: &str, now: Instant, resolve: R) -> Proof
    where
        R: FnOnce(String) -> std::io::Result<Vec<IpAddr>> + Send + 'static,
    {
        let dst = dst.to_canonical();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let cached = self.names.lock().ok().and_then(|n| n.get(&name).cloned()).filter(|(at, r)| {
            let ttl = match r {
                Resolved::Addrs(_) => Self::PROVEN_TTL,
                Resolved::Failed => Self::REFUSED_TTL,
                Resolved::Unfinished => Self::UNKNOWN_TTL,
            };
            now.saturating_duration_since(*at) < ttl
        });
        let resolved = match cached {
            Some((_, r)) => r,
            None => {
                let lookup = lookup_in(self.registered.clone(), name.clone(), resolve);
                let r = match tokio::time::timeout(Self::DEADLINE, lookup).await {
                    Err(_) => Resolved::Unfinished,
                    Ok(Ok(addrs)) => Resolved::Addrs(addrs.into_iter().map(|a| a.to_canonical()).collect()),
                    Ok(Err(_)) => Resolved::Failed,
                };
                if let Ok(mut n) = self.names.lock() {
                    if n.len() >= Self::CAPACITY {
                        n.clear();
                    }
                    n.insert(name, (now, r.clone()));
                }
                r
            }
        };
        match resolved {
            Resolved::Addrs(addrs) if addrs.contains(&dst) => Proof::Proven,
            Resolved::Addrs(_) | Resolved::Failed => Proof::Unproven,
            Resolved::Unfinished => Proof::Unknown,
        }
    }

    /// [`HostProofs::check`] with a blocking `resolve` in place of `getaddrinfo`: run on a
    /// blocking thread, holding a turn of `lane` until it returns.
    async fn check_resolving<R>(&self, dst: IpAddr, name: &str, lane: &std::sync::Arc<tokio::sync::Semaphore>, resolve: R) -> Proof
    where
        R: FnOnce(String) -> std::io::Result<Vec<IpAddr>> + Send + 'static,
    {
        self.check_with(dst, name, Instant::now(), lookup_in(lane.clone(), name.to_string(), resolve)).await
    }

    /// [`HostProofs::check`] with the lookup given (tests resolve without DNS).
    pub async fn check_with<F>(&self, dst: IpAddr, name: &str, now: Instant, lookup: F) -> Proof
    where
        F: Future<Output = std::io::Result<Vec<IpAddr>>>,
    {
        let dst = dst.to_canonical();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(p) = self.cached(dst, &name, now) {
            return p;
        }
        let Ok(resolved) = tokio::time::timeout(Self::DEADLINE, lookup).await else { return Proof::Unknown };
        let proof = match resolved {
            Ok(addrs) if addrs.iter().any(|a| a.to_canonical() == dst) => Proof::Proven,
            _ => Proof::Unproven,
        };
        self.remember(dst, name, now, proof);
        proof
    }

    fn cached(&self, dst: IpAddr, name: &str, now: Instant) -> Option<Proof> {
        let seen = self.seen.lock().ok()?;
        let (at, proof) = seen.get(&(dst, name.to_string()))?;
        (now.saturating_duration_since(*at) < Self::ttl(*proof)).then_some(*proof)
    }

    fn remember(&self, dst: IpAddr, name: String, now: Instant, proof: Proof) {
        let Ok(mut seen) = self.seen.lock() else { return };
        if seen.len() >= Self::CAPACITY {
            seen.retain(|_, (at, p)| now.saturating_duration_since(*at) < Self::ttl(*p));
            if seen.len() >= Self::CAPACITY {
                seen.clear();
            }
        }
        seen.insert((dst, name), (now, proof));
    }

    fn ttl(proof: Proof) -> Duration {
        match proof {
            Proof::Proven => Self::PROVEN_TTL,
            Proof::Unproven => Self::REFUSED_TTL,
            Proof::Unknown => Duration::ZERO,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// `resolve(host)` on a blocking thread, holding a turn of `lane` until it returns (not
/// until its caller gives up).
async fn lookup_in<R>(lane: std::sync::Arc<tokio::sync::Semaphore>, host: String, resolve: R) -> std::io::Result<Vec<IpAddr>>
where
    R: FnOnce(String) -> std::io::Result<Vec<IpAddr>> + Send + 'static,
{
    let turn = lane.acquire_owned().await.map_err(std::io::Error::other)?;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        resolve(host)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The system resolver (`getaddrinfo`), blocking.
fn system_resolve(host: String) -> std::io::Result<Vec<IpAddr>> {
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), 0)).map(|addrs| addrs.map(|a| a.ip()).collect())
}

impl Default for HostProofs {
    fn default() -> Self {
        HostProofs::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(ips: &[&str]) -> std::io::Result<Vec<IpAddr>> {
        Ok(ips.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[tokio::test]
    async fn a_name_counts_only_when_it_resolves_to_the_destination() {
        let p = HostProofs::new();
        let dst: IpAddr = "198.18.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(p.check_with(dst, "MCP.Example.", t0, async { answer(&["192.0.2.9", "198.18.0.2"]) }).await, Proof::Proven);
        // Cached: the lookup is not asked again within the TTL.
        let later = t0 + HostProofs::PROVEN_TTL / 2;
        assert_eq!(p.check_with(dst, "mcp.example", later, async { panic!("looked up again") }).await, Proof::Proven);
        // Another address under the same name is a claim only.
        let other: IpAddr = "198.18.0.6".parse().unwrap();
        assert_eq!(p.check_with(other, "mcp.example", t0, async { answer(&["198.18.0.2"]) }).await, Proof::Unproven);
        // A failing lookup proves nothing, and is asked again once its shorter TTL ends.
        assert_eq!(p.check_with(dst, "gone.example", t0, async { Err(std::io::Error::other("NXDOMAIN")) }).await, Proof::Unproven);
        assert_eq!(p.check_with(dst, "gone.example", t0 + HostProofs::REFUSED_TTL / 2, async { answer(&["198.18.0.2"]) }).await, Proof::Unproven);
        assert_eq!(p.check_with(dst, "gone.example", t0 + HostProofs::REFUSED_TTL, async { answer(&["198.18.0.2"]) }).await, Proof::Proven);
        // An IPv4-mapped destination is the IPv4 address.
        let mapped: IpAddr = "::ffff:198.18.0.2".parse().unwrap();
        assert_eq!(p.check_with(mapped, "mcp.example", later, async { panic!("looked up again") }).await, Proof::Proven);
        // A proof expires.
        assert_eq!(p.check_with(dst, "mcp.example", t0 + HostProofs::PROVEN_TTL, async { answer(&[]) }).await, Proof::Unproven);
    }

    /// A lookup its caller gave up on keeps its turn until the resolver returns: a flood
    /// of names never has more than `MAX_LOOKUPS` resolver threads at once. (Real time:
    /// tokio does not advance paused time while a blocking task runs; ~2 deadlines.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_turn_is_held_until_the_resolver_returns_not_until_the_deadline() {
        let p = std::sync::Arc::new(HostProofs::new());
        let dst: IpAddr = "198.18.0.2".parse().unwrap();
        let gate = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        // Opens the gate when dropped, on a failed assertion too: the hung resolver
        // threads end, and the runtime (which waits for them) can shut down.
        struct Opener(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);
        impl Drop for Opener {
            fn drop(&mut self) {
                let (open, cv) = &*self.0;
                *open.lock().unwrap_or_else(|p| p.into_inner()) = true;
                cv.notify_all();
            }
        }
        let opener = Opener(gate.clone());
        let mut callers = Vec::new();
        for i in 0..HostProofs::MAX_LOOKUPS {
            let (p, gate) = (p.clone(), gate.clone());
            callers.push(tokio::spawn(async move {
                p.check_resolving(dst, &format!("hung{i}.example"), &p.lookups, move |_| {
                    let (open, cv) = &*gate;
                    let _open = cv.wait_while(open.lock().unwrap(), |o| !*o).unwrap();
                    Ok(vec![dst])
                })
                .await
            }));
        }
        for c in callers {
            assert_eq!(c.await.unwrap(), Proof::Unknown, "a hung lookup past the deadline proves nothing");
        }
        // Their callers are gone, the resolver threads are not: no turn is free.
        assert_eq!(p.lookups.available_permits(), 0);
        assert_eq!(p.check_resolving(dst, "late.example", &p.lookups, move |_| Ok(vec![dst])).await, Proof::Unknown);
        // The registry's lane is not the clients' lane: its names are proven meanwhile.
        assert_eq!(p.check_registered_with(dst, "registered.example", std::time::Instant::now(), move |_| Ok(vec![dst])).await, Proof::Proven);
        drop(opener);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while p.lookups.available_permits() < HostProofs::MAX_LOOKUPS {
            assert!(std::time::Instant::now() < until, "turns not given back");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(p.check_resolving(dst, "late.example", &p.lookups, move |_| Ok(vec![dst])).await, Proof::Proven, "an unfinished lookup is not remembered");
        assert_eq!(p.check_resolving(dst, "fresh.example", &p.lookups, move |_| Ok(vec![dst])).await, Proof::Proven);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_resolver_proves_nothing_and_a_flood_stays_bounded() {
        let p = HostProofs::new();
        let dst: IpAddr = "198.18.0.2".parse().unwrap();
        let t0 = Instant::now();
        let slow = async {
            tokio::time::sleep(HostProofs::DEADLINE * 2).await;
            answer(&["198.18.0.2"])
        };
        assert_eq!(p.check_with(dst, "slow.example", t0, slow).await, Proof::Unknown);
        for i in 0..HostProofs::CAPACITY * 2 {
            p.check_with(dst, &format!("n{i}.example"), t0, async { answer(&[]) }).await;
        }
        assert!(p.len() <= HostProofs::CAPACITY, "{}", p.len());
    }

    /// A registry name is looked up once per TTL whatever the destination; an unfinished
    /// lookup is Unknown (governing) and remembered briefly, so a slow name does not make
    /// every connection wait out the deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registry_name_is_looked_up_once_per_ttl_and_an_unfinished_lookup_briefly() {
        let p = HostProofs::new();
        let (a, b): (IpAddr, IpAddr) = ("198.18.0.2".parse().unwrap(), "198.18.0.3".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(p.check_registered_with(a, "Reg.Example.", t0, move |_| Ok(vec![a])).await, Proof::Proven);
        let never = |_: String| -> std::io::Result<Vec<IpAddr>> { panic!("looked up again") };
        assert_eq!(p.check_registered_with(b, "reg.example", t0, never).await, Proof::Unproven, "another address, from the same answer");
        assert_eq!(p.check_registered_with(a, "reg.example", t0 + HostProofs::PROVEN_TTL / 2, never).await, Proof::Proven);
        // A lookup that hangs past the deadline: Unknown, and not asked again at once.
        // (Real time: tokio does not advance paused time while a blocking task runs.)
        let hang = |_: String| -> std::io::Result<Vec<IpAddr>> {
            std::thread::sleep(HostProofs::DEADLINE + std::time::Duration::from_millis(300));
            Ok(vec![])
        };
        assert_eq!(p.check_registered_with(a, "slow.example", t0, hang).await, Proof::Unknown);
        assert_eq!(p.check_registered_with(b, "slow.example", t0 + HostProofs::UNKNOWN_TTL / 2, never).await, Proof::Unknown);
    }
}
