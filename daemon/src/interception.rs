//! TLS interception's runtime, built once at start-up: the leaf issuer (the local CA that
//! signs now, and the leaf cache), verified upstream TLS (its anchors, never an mcpwatch CA),
//! the interception scope, the in-scope processes, and the per-process distrust tracker; with
//! the decision, per ClientHello, whether to intercept or pass through.
//!
//! Why a module of its own: the daemon-wide state ([`crate::state::Shared`]) holds it, the
//! proxy's TLS branch (`proxy::tls`, the per-connection handshake) and the CA lifecycle
//! ([`crate::ca`]) use it. Here, below all three, it imports neither the state nor the
//! proxy, so holding it creates no import loop; it is also where the CA directory is named.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcpwatch_api::ProcessInfo;
use mcpwatch_tls::{
    CaStore, ClientProcess, DistrustOptions, DistrustTracker, Hello, LeafIssuer, LeafOptions, LocalCa, TlsAction, TlsError,
    TlsScope, UpstreamOptions, UpstreamTls,
};

use crate::config::{Config, DistrustAction, TlsConfig};

/// Sub-directory of the state directory holding `ca.pem` and `ca.key`.
pub const CA_DIR: &str = "ca";

/// Where the CA lives for a state directory.
pub fn ca_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(CA_DIR)
}

/// Everything the TLS branch needs, built once at start-up. The CA that signs now is
/// `issuer.ca()`: it changes with `mcpwatch ca rotate`, so no copy of it is kept here.
pub struct TlsRuntime {
    pub issuer: LeafIssuer,
    pub upstream: UpstreamTls,
    pub scope: TlsScope,
    pub distrust: DistrustTracker,
    /// In-scope processes (exe path or comm); empty: all.
    processes: Vec<String>,
    handshake_timeout: Duration,
    /// Pass distrusting process/host pairs through while backed off.
    backoff: bool,
    /// Toward enforce-mode destinations: refuse distrusting clients, or pass them through.
    distrust_action: DistrustAction,
    /// Destinations that proved, by a verified handshake, that they are a server name.
    pub proofs: NameProofs,
}

/// (destination, server name) pairs whose destination presented a certificate that
/// verified for the name, for [`NameProofs::TTL`]. Only proofs are kept: a pair that
/// failed is probed again next time, so forgetting an entry (a flood of names fills the
/// table) costs a probe, never lets anything through unproven.
pub struct NameProofs {
    proven: std::sync::Mutex<std::collections::HashMap<(std::net::SocketAddr, String), Instant>>,
}

impl NameProofs {
    /// How long a proof holds.
    pub const TTL: Duration = Duration::from_secs(600);
    /// Most proofs held at once.
    pub const CAPACITY: usize = 1024;

    pub fn new() -> NameProofs {
        NameProofs { proven: std::sync::Mutex::new(std::collections::HashMap::new()) }
    }

    /// Did `dst` prove `name` less than [`NameProofs::TTL`] ago?
    pub fn proven(&self, dst: std::net::SocketAddr, name: &str, now: Instant) -> bool {
        let Ok(p) = self.proven.lock() else { return false };
        p.get(&(dst, name.to_ascii_lowercase())).is_some_and(|t| now.saturating_duration_since(*t) < Self::TTL)
    }

    /// `dst` just proved `name`.
    pub fn prove(&self, dst: std::net::SocketAddr, name: &str, now: Instant) {
        let Ok(mut p) = self.proven.lock() else { return };
        if p.len() >= Self::CAPACITY {
            p.retain(|_, t| now.saturating_duration_since(*t) < Self::TTL);
            if p.len() >= Self::CAPACITY {
                p.clear();
            }
        }
        p.insert((dst, name.to_ascii_lowercase()), now);
    }
}

impl Default for NameProofs {
    fn default() -> Self {
        NameProofs::new()
    }
}

impl std::fmt::Debug for TlsRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRuntime")
            .field("ca", &self.issuer.ca().fingerprint_sha256())
            .field("scope", &self.scope)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl TlsRuntime {
    /// Loads (or creates, on first start) the CA in `<state_dir>/ca/` and builds the runtime.
    /// `hostname` names a newly created CA.
    pub fn build(config: &TlsConfig, state_dir: &Path, hostname: &str) -> Result<TlsRuntime, TlsError> {
        let dir = ca_dir(state_dir);
        let ca = Arc::new(LocalCa::load_or_create(&dir, hostname)?);
        // Every mcpwatch CA still published (the current one and those retired but not yet
        // withdrawn, as after a restart mid-rotation) is excluded as an upstream anchor.
        let ours = mcpwatch_tls::CaStore::new(&dir, hostname, None).trusted_ders()?;
        TlsRuntime::with_ca_excluding(config, ca, ours)
    }

    /// Builds the runtime around an already loaded CA.
    pub fn with_ca(config: &TlsConfig, ca: Arc<LocalCa>) -> Result<TlsRuntime, TlsError> {
        TlsRuntime::with_ca_excluding(config, ca, Vec::new())
    }

    /// [`TlsRuntime::with_ca`], never accepting any of `ours` (DER) as an upstream anchor
    /// besides `ca` itself.
    fn with_ca_excluding(config: &TlsConfig, ca: Arc<LocalCa>, mut ours: Vec<Vec<u8>>) -> Result<TlsRuntime, TlsError> {
        ours.push(ca.cert_der().to_vec());
        let validity = config.leaf_validity;
        let issuer = LeafIssuer::new(
            ca.clone(),
            LeafOptions { validity, cache_capacity: config.leaf_cache_size, ttl: validity / 4 },
        )?;
        let upstream = UpstreamTls::new(UpstreamOptions {
            extra_anchors_pem: config.extra_anchors.clone(),
            use_system_roots: config.system_roots,
            insecure_hosts: config.insecure_hosts.clone(),
            // Our own CAs are never valid upstream anchors, even after `mcpwatch ca install`.
            exclude_anchors_der: ours,
            carried_alpn: vec![mcpwatch_tls::ALPN_HTTP1_1.to_vec()],
            handshake_timeout: config.handshake_timeout,
            resumption_max_age: config.upstream_resumption,
        })?;
        let scope = TlsScope::from_config(&config.scope)?;
        let distrust = DistrustTracker::new(DistrustOptions {
            backoff: config.distrust_backoff,
            ..DistrustOptions::default()
        });
        Ok(TlsRuntime {
            issuer,
            upstream,
            scope,
            distrust,
            processes: config.processes.clone(),
            handshake_timeout: config.handshake_timeout,
            backoff: !config.distrust_backoff.is_zero(),
            distrust_action: config.distrust,
            proofs: NameProofs::new(),
        })
    }

    /// How long a client may take to send its ClientHello (and the upstream to take it).
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Does `dst` answer as `name`? A verified handshake for `name` with the destination
    /// (insecure-listed names included: only a certificate that really verified counts),
    /// remembered in [`TlsRuntime::proofs`]. `tcp` is a new connection to `dst`.
    pub async fn proves_name(&self, dst: std::net::SocketAddr, name: &str, tcp: tokio::net::TcpStream) -> Result<(), String> {
        match self.upstream.connect(tcp, name, &[]).await {
            Ok((_, cert)) if cert.overridden.is_none() => {
                self.proofs.prove(dst, name, Instant::now());
                Ok(())
            }
            Ok((_, cert)) => Err(format!("its certificate does not verify for `{name}` ({})", cert.overridden.map_or_else(String::new, |p| p.to_string()))),
            Err(e) => Err(e.to_string()),
        }
    }

    /// What happens to a client that distrusts the CA toward an enforce-mode destination.
    pub fn distrust_action(&self) -> DistrustAction {
        self.distrust_action
    }

    /// Operator warnings for `mcpwatch status`: one per process/host that rejected our CA.
    pub fn warnings(&self) -> Vec<String> {
        self.distrust
            .entries(Instant::now())
            .into_iter()
            .map(|e| {
                let mut w = format!(
                    "{} ({} rejection{}, last {}s ago)",
                    distrust_message(&format!("{} (pid {})", e.exe, e.pid), &e.host),
                    e.count,
                    if e.count == 1 { "" } else { "s" },
                    e.since_last.as_secs()
                );
                if !e.backoff_remaining.is_zero() {
                    match self.distrust_action {
                        DistrustAction::PassThrough => w.push_str(&format!(
                            "; this process is passed through uninspected for {}s more (tls.distrust = pass_through)",
                            e.backoff_remaining.as_secs()
                        )),
                        DistrustAction::Refuse => w.push_str(&format!(
                            "; REFUSED where the policy enforces, else passed through uninspected for {}s more",
                            e.backoff_remaining.as_secs()
                        )),
                    }
                }
                w.push_str("; see `mcpwatch ca install`");
                w
            })
            .collect()
    }

    /// What to do with this hello, and why (for the log). `enforced` says (lazily: it scans the
    /// inventory) whether the destination is governed in enforce mode.
    /// `process` sent the hello toward `dst`; `host` is its SNI, else `dst`.
    pub fn decide<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        hello: &Hello<T>,
        process: Option<&ProcessInfo>,
        dst: IpAddr,
        host: &str,
        enforced: impl Fn() -> bool,
    ) -> (TlsAction, &'static str) {
        if !self.processes.is_empty() {
            let p = process;
            let listed = p.is_some_and(|p| {
                self.processes.iter().any(|want| p.exe.as_deref() == Some(want.as_str()) || p.comm == *want)
            });
            if !listed {
                return (TlsAction::PassThrough, "process not in tls.processes");
            }
        }
        if self.scope.decide_target(hello.sni(), dst.to_canonical()) == TlsAction::PassThrough {
            return (TlsAction::PassThrough, "tls scope");
        }
        let served = |p: &Vec<u8>| p.as_slice() == mcpwatch_tls::ALPN_H2 || !self.upstream.filter_alpn(std::slice::from_ref(p)).is_empty();
        if !hello.alpn().is_empty() && !hello.alpn().iter().any(served) {
            if enforced() {
                return (TlsAction::Intercept, "client offers no ALPN protocol mcpwatch serves, destination enforced: intercepted without ALPN");
            }
            return (TlsAction::PassThrough, "client offers no ALPN protocol mcpwatch serves");
        }
        if self.backoff && !self.distrust.is_empty() {
            let backed_off = client_process(process).is_some_and(|c| self.distrust.is_backed_off(c, host, Instant::now()));
            if backed_off {
                if self.distrust_action == DistrustAction::Refuse && enforced() {
                    return (TlsAction::Intercept, "client does not trust the mcpwatch CA; destination enforced: not passed through");
                }
                return (TlsAction::PassThrough, "client does not trust the mcpwatch CA (back-off)");
            }
        }
        (TlsAction::Intercept, "in scope")
    }
}

/// `TLS not inspectable: client <exe> does not trust the mcpwatch CA for <host>`.
pub fn distrust_message(exe: &str, host: &str) -> String {
    format!("TLS not inspectable: client {exe} does not trust the mcpwatch CA for {host}")
}

/// The CA store of a daemon with TLS (held in `Shared`, so rotations and withdrawals are
/// serialised by one lock).
pub fn store_for(config: &Config, hostname: &str, tls: bool) -> Option<CaStore> {
    tls.then(|| CaStore::new(&ca_dir(&config.state_dir), hostname, config.tls.rotation_overlap))
}

/// The client process behind a connection (pid + start time), when it is attributed.
pub fn client_process(process: Option<&ProcessInfo>) -> Option<ClientProcess> {
    let p = process?;
    Some(ClientProcess { pid: p.tgid, start_ticks: start_ticks(p.tgid)? })
}

/// Start time of a process in clock ticks since boot (`/proc/<pid>/stat` field 22).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may contain spaces and parentheses: count fields after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a restart in the middle of a rotation, the published bundle holds the new and
    /// the retired CA; an admin who lists it as an upstream anchor (or installed it in the
    /// system store) must not make mcpwatch trust either of its own CAs upstream.
    #[test]
    fn retired_cas_are_never_upstream_anchors() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = tmp.path().join("state");
        let mut config = Config { state_dir: state.clone(), ..Config::default() };
        config.tls.system_roots = false;
        let other = Arc::new(LocalCa::load_or_create(&tmp.path().join("other"), "other").expect("other ca"));
        config.tls.extra_anchors = vec![other.cert_path().to_path_buf()];
        let first = TlsRuntime::build(&config.tls, &state, "unit-test").expect("first runtime");
        let store = mcpwatch_tls::CaStore::new(&ca_dir(&state), "unit-test", None);
        store.rotate(&first.issuer).expect("rotate");
        let bundle = tmp.path().join("bundle.pem");
        std::fs::write(&bundle, store.bundle_pem().expect("bundle")).expect("write bundle");
        config.tls.extra_anchors.insert(0, bundle);
        let restarted = TlsRuntime::build(&config.tls, &state, "unit-test").expect("restarted runtime");
        assert_eq!(restarted.upstream.anchor_count(), 1, "only the unrelated anchor; neither the new nor the retired mcpwatch CA");
    }

    /// A proof holds for its TTL, per destination and name (any case); a full table
    /// forgets proofs (each then costs a new probe), never the other way round.
    #[test]
    fn name_proofs_expire_and_a_flood_only_forgets_them() {
        let p = NameProofs::new();
        let dst: std::net::SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let t0 = Instant::now();
        assert!(!p.proven(dst, "mcp.example", t0));
        p.prove(dst, "MCP.example", t0);
        assert!(p.proven(dst, "mcp.example", t0 + NameProofs::TTL / 2));
        assert!(!p.proven(dst, "mcp.example", t0 + NameProofs::TTL));
        assert!(!p.proven("127.0.0.1:9443".parse().unwrap(), "mcp.example", t0));
        for i in 0..NameProofs::CAPACITY * 2 {
            p.prove(dst, &format!("n{i}.example"), t0);
        }
        assert!(p.proven.lock().unwrap().len() <= NameProofs::CAPACITY);
        assert!(!p.proven(dst, "unproven.example", t0));
    }
}
