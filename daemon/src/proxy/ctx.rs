//! The facts of one accepted connection that every later stage reads: its id, the
//! client's address, where it was really going and who sent it (`Origin`), the scheme,
//! and what TLS interception learned.
//!
//! Why a module of its own: `conn` creates a `ConnCtx`, and `http`, `exchange`, `scope`
//! and `tls` read it; defined here, none of them has to import `conn` (which
//! itself calls into `http` and `tls`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use super::forward::BoxIo;
use crate::resolve::Origin;
use crate::state::Shared;

/// Serves the connection a client opens inside a `CONNECT` tunnel (its side, then the
/// proxy's tunnel as the upstream), as on a fresh connection. It is `conn::serve_tunnel`:
/// `conn` sets it on every context it creates, so `tunnel` (reached from `exchange`) can
/// start a connection without importing `conn` and closing an import cycle.
pub type ServeTunnel = fn(Arc<Shared>, ConnCtx, BoxIo, BoxIo) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Per-connection facts every exchange needs.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    pub id: u64,
    pub peer: SocketAddr,
    pub origin: Origin,
    pub scheme: &'static str,
    /// Raw request heads of an HTTP/1 connection (framing checks).
    pub head_log: Option<super::headlog::HeadLog>,
    /// Set when mcpwatch terminated TLS for this connection (`scheme` is then `https`).
    pub tls: Option<Arc<mcpwatch_api::TlsDetails>>,
    /// The sending process as a session owner, read from `/proc` once per connection
    /// (every request asks: session ownership is checked on each).
    pub owner: std::sync::OnceLock<Option<crate::session::Owner>>,
    /// `origin.dst` as text (`ip:port`), made once per connection: records, the inventory's
    /// and sessions' maps are keyed by it, and several stages of every request ask.
    dst_key: std::sync::OnceLock<String>,
    /// `origin.dst`'s address in canonical form (an IPv4-mapped IPv6 address as IPv4),
    /// as text: the host of endpoints named by their address.
    ip_key: std::sync::OnceLock<String>,
    /// How a `CONNECT` tunnel's inner connection is served (`None`: tunnels are refused).
    pub serve_tunnel: Option<ServeTunnel>,
    /// Inside a `CONNECT` tunnel: the host the client asked the proxy for (`origin.dst` is
    /// that host as resolved here).
    pub tunnel_host: Option<String>,
    /// Inside a `CONNECT` tunnel to a governed MCP destination (a `[[server]]` at the
    /// tunnel's host and port, or an address where MCP was seen): that destination's mode.
    /// What cannot be inspected inside such a tunnel is refused in enforce mode
    /// (`tunnel::passes_uninspected`).
    pub tunnel_mode: Option<mcpwatch_policy::Mode>,
    /// The last request's endpoint key and what it was made from (`scope::Scope::new`).
    pub endpoint_memo: EndpointMemo,
}

/// The server an exchange is addressed to, as the policy matches it.
#[derive(Debug, Clone)]
pub struct TargetOwned {
    pub endpoint: String,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl TargetOwned {
    pub fn as_policy(&self) -> mcpwatch_policy::Target<'_> {
        mcpwatch_policy::Target { endpoint: &self.endpoint, host: &self.host, port: self.port, path: &self.path }
    }
}

/// What the last request on a connection worked out about its server: its endpoint key
/// (with the Host header, path and naming, by address or not, it was made from), its
/// policy target and its toxic-flow session. A keep-alive client names the same server
/// (and session) on every request: the canonical host and path, the target's parts and
/// the flow key are worked out once, not per request. One entry each per connection; a
/// request that differs replaces it.
#[derive(Debug, Default)]
pub struct EndpointMemo {
    /// Host header, path, naming -> endpoint key.
    endpoint: Last<(Option<String>, String, bool), String>,
    /// Endpoint key and path -> target.
    target: Last<(String, String), Arc<TargetOwned>>,
    /// Endpoint key and session id -> flow session.
    flow: Last<(String, Option<String>), Arc<str>>,
}

/// One remembered key and what was made from it.
#[derive(Debug)]
struct Last<K, V>(std::sync::Mutex<Option<(K, V)>>);

impl<K, V> Default for Last<K, V> {
    fn default() -> Last<K, V> {
        Last(std::sync::Mutex::new(None))
    }
}

impl<K, V: Clone> Last<K, V> {
    /// The remembered value if `same` says its key is this request's, else the key and
    /// value `make` makes, remembered in its place.
    fn get_or(&self, same: impl FnOnce(&K) -> bool, make: impl FnOnce() -> (K, V)) -> V {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, v)) = last.as_ref()
            && same(k)
        {
            return v.clone();
        }
        let (k, v) = make();
        *last = Some((k, v.clone()));
        v
    }
}

/// A copied context (a tunnel's inner connection) starts with no memo of its own.
impl Clone for EndpointMemo {
    fn clone(&self) -> EndpointMemo {
        EndpointMemo::default()
    }
}

impl EndpointMemo {
    /// The endpoint key for this Host header (`None`: none), path and `claimed` (the Host
    /// did not prove to name the destination): the last one if all three are the last
    /// request's, else what `make` makes. `make` must depend on nothing else that can
    /// change during the connection.
    pub fn endpoint(&self, host: Option<&str>, path: &str, claimed: bool, make: impl FnOnce() -> String) -> String {
        self.endpoint.get_or(
            |(h, p, c)| h.as_deref() == host && p == path && *c == claimed,
            || ((host.map(str::to_owned), path.to_owned(), claimed), make()),
        )
    }

    /// The policy target of `endpoint` reached at `path`: the last one if both are the
    /// last request's, else what `make` makes (which must depend on nothing else that can
    /// change during the connection).
    pub fn target(&self, endpoint: &str, path: &str, make: impl FnOnce() -> TargetOwned) -> Arc<TargetOwned> {
        self.target.get_or(|(e, p)| e == endpoint && p == path, || ((endpoint.to_owned(), path.to_owned()), Arc::new(make())))
    }

    /// The toxic-flow session of `endpoint` and `session` (the MCP session id, if any):
    /// the last one if both are the last request's, else what `make` makes (likewise).
    pub fn flow_session(&self, endpoint: &str, session: Option<&str>, make: impl FnOnce() -> String) -> Arc<str> {
        self.flow.get_or(|(e, s)| e == endpoint && s.as_deref() == session, || ((endpoint.to_owned(), session.map(str::to_owned)), make().into()))
    }
}

impl ConnCtx {
    pub fn new(id: u64, peer: SocketAddr, origin: Origin) -> ConnCtx {
        ConnCtx { id, peer, origin, scheme: "http", head_log: None, tls: None, owner: std::sync::OnceLock::new(), dst_key: std::sync::OnceLock::new(), ip_key: std::sync::OnceLock::new(), serve_tunnel: None, tunnel_host: None, tunnel_mode: None, endpoint_memo: EndpointMemo::default() }
    }

    /// The original destination as `ip:port` (see `dst_key`).
    pub fn dst_key(&self) -> &str {
        self.dst_key.get_or_init(|| self.origin.dst.to_string())
    }

    /// The original destination's address, canonical, as text (see `ip_key`).
    pub fn ip_key(&self) -> &str {
        self.ip_key.get_or_init(|| self.origin.dst.ip().to_canonical().to_string())
    }

    /// The process that sent this connection, as a session owner (`None`: unknown).
    pub fn owner(&self) -> Option<&crate::session::Owner> {
        self.owner.get_or_init(|| self.origin.process.as_deref().map(crate::session::Owner::of)).as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_memo_makes_a_key_once_per_distinct_request() {
        let memo = EndpointMemo::default();
        let made = std::cell::Cell::new(0);
        let get = |host: Option<&str>, path: &str, claimed: bool| {
            memo.endpoint(host, path, claimed, || {
                made.set(made.get() + 1);
                format!("{host:?}{path}{claimed}")
            })
        };
        assert_eq!(get(Some("a"), "/mcp", false), "Some(\"a\")/mcpfalse");
        assert_eq!(get(Some("a"), "/mcp", false), "Some(\"a\")/mcpfalse");
        assert_eq!(made.get(), 1, "the same request again is not worked out again");
        // Any of the three differing makes a new key (and replaces the memo).
        assert_eq!(get(Some("b"), "/mcp", false), "Some(\"b\")/mcpfalse");
        assert_eq!(get(None, "/mcp", false), "None/mcpfalse");
        assert_eq!(get(None, "/other", false), "None/otherfalse");
        assert_eq!(get(None, "/other", true), "None/othertrue");
        assert_eq!(get(Some("a"), "/mcp", false), "Some(\"a\")/mcpfalse");
        assert_eq!(made.get(), 6);
        // A copy starts empty.
        let copy = memo.clone();
        assert_eq!(copy.endpoint(Some("a"), "/mcp", false, || "fresh".into()), "fresh");
    }

    #[test]
    fn target_and_flow_memos_are_remade_when_endpoint_path_or_session_differ() {
        let memo = EndpointMemo::default();
        let made = std::cell::Cell::new(0);
        let target = |endpoint: &str, path: &str| {
            memo.target(endpoint, path, || {
                made.set(made.get() + 1);
                TargetOwned { endpoint: endpoint.into(), host: "h".into(), port: 1, path: path.into() }
            })
        };
        let a = target("http://a:1/mcp", "/mcp");
        assert!(Arc::ptr_eq(&a, &target("http://a:1/mcp", "/mcp")), "the same server again is the same target");
        assert_eq!(made.get(), 1);
        assert_eq!(target("http://b:1/mcp", "/mcp").endpoint, "http://b:1/mcp");
        assert_eq!(target("http://b:1/mcp", "/other").path, "/other");
        assert_eq!(made.get(), 3);
        let flow = |endpoint: &str, session: Option<&str>| memo.flow_session(endpoint, session, || format!("{endpoint}#{session:?}"));
        let f = flow("e", Some("s1"));
        assert!(Arc::ptr_eq(&f, &flow("e", Some("s1"))));
        assert_eq!(&*flow("e", Some("s2")), "e#Some(\"s2\")", "another session is another flow");
        assert_eq!(&*flow("e", None), "e#None");
        assert_eq!(&*flow("f", None), "f#None");
    }
}
