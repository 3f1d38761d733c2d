//! Where bytes go unparsed: the byte relay (closed when idle, tracked by [`Activity`]), and
//! the rollout mode of a destination, which decides whether unparsed bytes toward it may be relayed at all.
//!
//! Why a module of its own: `conn` relays what is positively not HTTP/TLS and `tls`
//! relays what it passes through; both use this, and `conn` calls `tls`, so neither may
//! hold it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mcpwatch_api::Endpoint;
use mcpwatch_policy::Mode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::state::{Counters, Shared};

/// The mode governing `dst`, when the policy governs it: it has spoken MCP (the inventory
/// knows it; the strictest mode of its endpoints) or a registry entry matches its address
/// (`host`/`url` patterns on the IP, path `/`). `None`: an ungoverned destination.
pub fn governed_mode(shared: &Shared, dst: SocketAddr) -> Option<Mode> {
    let loaded = shared.governance.current();
    let dst_key = dst.to_string();
    let endpoints = shared.inventory.endpoints_at(&dst_key);
    let mut mode: Option<Mode> = None;
    // MCP passed here, but its endpoints were pushed out of memory (a flood of new
    // destinations): governed, by the strictest mode any endpoint could have had.
    if endpoints.is_empty() && shared.inventory.dst_forgotten(&dst_key) {
        mode = Some(loaded.strictest_mode());
    }
    for e in &endpoints {
        let Some(ep) = Endpoint::parse(e) else { continue };
        let target = mcpwatch_policy::Target { endpoint: e, host: &ep.host, port: ep.port, path: ep.path_or_root() };
        let m = loaded.inspect_mode(&target);
        mode = Some(strictest(mode, m));
    }
    // Whatever path the entry names: it is the server at this address either way.
    let ip = dst.ip().to_canonical().to_string();
    if let Some(def) = loaded.policy.server_at(&ip, dst.port()) {
        mode = Some(strictest(mode, def.mode.unwrap_or(loaded.policy.mode())));
    }
    mode
}

/// [`governed_mode`], and also a `[[server]]` entry named by a host name that the daemon's
/// resolver maps to `dst` (cached, [`crate::hostproof::HostProofs`]): a server registered
/// by name is governed at every address it answers at, not only where mcpwatch has seen
/// it speak MCP. Toward its other address, with a name outside the `[tls]` scope (or
/// none), TLS was relayed uninspected and unrecorded. At most [`MAX_NAMED_LOOKUPS`]
/// entries are looked up per connection.
pub async fn governed_mode_resolved(shared: &Shared, dst: SocketAddr) -> Option<Mode> {
    let mut mode = governed_mode(shared, dst);
    let loaded = shared.governance.current();
    let named = loaded.policy.servers().iter().filter_map(|d| Some((d, d.host_name()?))).filter(|(_, (_, port))| port.is_none_or(|p| p == dst.port()));
    // Looked up together: a first contact waits for the slowest name, not for their sum.
    let ip = dst.ip().to_canonical();
    let proofs = futures_util::future::join_all(named.take(MAX_NAMED_LOOKUPS).map(|(def, (host, _))| async move { (def, shared.host_proofs.check_registered(ip, host).await) })).await;
    for (def, proof) in proofs {
        // A lookup that did not finish may be the registered server's address: governed.
        // Otherwise whoever could slow the resolver down would choose the relay.
        if matches!(proof, crate::hostproof::Proof::Proven | crate::hostproof::Proof::Unknown) {
            mode = Some(strictest(mode, def.mode.unwrap_or(loaded.policy.mode())));
        }
    }
    mode
}

/// Registry entries looked up by name for one connection ([`governed_mode_resolved`]).
pub const MAX_NAMED_LOOKUPS: usize = 64;

/// The stricter of two modes (`None`: only `b`).
pub fn strictest(a: Option<Mode>, b: Mode) -> Mode {
    match a {
        Some(a) if a.rank() >= b.rank() => a,
        _ => b,
    }
}

/// Byte-for-byte relay both ways until both sides are done, or nothing moved for
/// `limits.idle_timeout` (then both are closed). The bytes move in the kernel
/// ([`super::splice`]); without pipes (out of descriptors) through [`relay_io`].
pub async fn relay(shared: &Shared, mut client: TcpStream, mut upstream: TcpStream) {
    let pipes = match super::splice::Pipes::new() {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "no pipes for a spliced relay; copying");
            return relay_io(shared, client, upstream).await;
        }
    };
    let idle = shared.config.limits.idle_timeout;
    let activity = Activity::default();
    let act = activity.clone();
    let copy = super::splice::relay(&client, &upstream, &pipes, move || act.touch());
    if idle.is_zero() {
        return copy.await;
    }
    let idled = tokio::select! {
        () = copy => false,
        _ = activity.idle_for(idle) => true,
    };
    if idled {
        Counters::inc(&shared.counters.closed_idle);
        tracing::debug!("relay idle for {idle:?}; closing both sides");
        let _ = client.shutdown().await;
        let _ = upstream.shutdown().await;
    }
}

/// [`relay`] over any streams (a TLS pass-through relays the raw socket after replaying the hello).
pub async fn relay_io<A, B>(shared: &Shared, client: A, upstream: B)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let idle = shared.config.limits.idle_timeout;
    let activity = Activity::default();
    let mut client = Tracked::new(client, activity.clone());
    let mut upstream = Tracked::new(upstream, activity.clone());
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    if idle.is_zero() {
        if let Err(e) = copy.await {
            tracing::debug!(error = %e, "relay ended with an error");
        }
        return;
    }
    tokio::select! {
        r = copy => if let Err(e) = r {
            tracing::debug!(error = %e, "relay ended with an error");
        },
        _ = activity.idle_for(idle) => {
            Counters::inc(&shared.counters.closed_idle);
            tracing::debug!("relay idle for {idle:?}; closing both sides");
            let _ = client.get_mut().shutdown().await;
            let _ = upstream.get_mut().shutdown().await;
        }
    }
}

/// Last activity of a relay (either direction), milliseconds since an origin.
#[derive(Debug, Clone)]
pub struct Activity {
    origin: tokio::time::Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity { origin: tokio::time::Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.origin.elapsed().saturating_sub(last);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}

/// A relayed stream that refreshes its [`Activity`] on every read that moved bytes.
pub type Tracked<S> = super::hooked::Hooked<S, Activity>;

impl super::hooked::ReadHook for Activity {
    fn on_read(&mut self, _bytes: &[u8]) {
        self.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_tracking() {
        let act = Activity::default();
        act.touch();
        let t0 = tokio::time::Instant::now();
        act.idle_for(Duration::from_millis(200)).await;
        assert!(t0.elapsed() >= Duration::from_millis(200));
    }
}
