//! Where an HTTP exchange belongs: the server endpoint, session, transport and
//! conversation keys of one request ([`Scope`]), the evidence that it is addressed to an
//! MCP server, and the header helpers both directions use.
//!
//! Why a module of its own: the request side (`exchange`) and the response side
//! (`responses`) both need a request's scope; kept here, neither imports the other's
//! internals (`exchange` hands a `Scope` to `responses::observe`, and that is the only
//! edge between them).

use std::sync::Arc;

use http::header::{CONTENT_TYPE, HOST};
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use hyper::Response;
use mcpwatch_api::{AuditRecord, CallStatus, Endpoint, MessageKind};
use mcpwatch_mcp::jsonrpc::Message;
use mcpwatch_policy::Mode;

use super::body::Body;
use super::ctx::{ConnCtx, TargetOwned};
use super::body::local_response;
use crate::record::write_closed;
use crate::govern::Site;
use crate::inventory::Sighting;
use crate::clock::now_ms;
use crate::state::Shared;

pub const H_SESSION: &str = "mcp-session-id";
pub const H_VERSION: &str = "mcp-protocol-version";
pub const H_METHOD: &str = "mcp-method";

pub(super) const C2S: &str = "client->server";
pub(super) const S2C: &str = "server->client";

/// Why a request is taken to be addressed to an MCP server before its body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Evidence {
    /// MCP headers (Mcp-Session-Id, MCP-Protocol-Version, Mcp-Method).
    Headers,
    /// A legacy HTTP+SSE message route announced by the server.
    Legacy,
    /// This endpoint (or this path at this socket address) carried MCP before.
    Endpoint,
    /// This socket address carried MCP before, on another path.
    Server,
}

impl Evidence {
    /// Evidence about this very endpoint, not just the server.
    pub(super) fn is_exact(self) -> bool {
        !matches!(self, Evidence::Server)
    }

    /// Seen carrying MCP (not merely claimed by the request's own headers).
    pub(super) fn is_seen_endpoint(self) -> bool {
        matches!(self, Evidence::Legacy | Evidence::Endpoint)
    }
}

/// Where an exchange belongs: server endpoint, session, transport, conversation keys.
#[derive(Debug, Clone)]
pub struct Scope {
    pub(super) ctx: Arc<ConnCtx>,
    pub(super) host: Option<String>,
    pub(super) http_method: String,
    pub(super) path: String,
    pub(super) path_and_query: String,
    pub(super) endpoint: String,
    pub(super) transport: &'static str,
    pub(super) session_id: Option<String>,
    pub(super) protocol_version: Option<String>,
    /// Correlation key for messages answered on another connection.
    pub(super) conversation: String,
    pub(super) legacy: bool,
    /// A plain-HTTP Host name that does not resolve to the remote destination
    /// ([`crate::hostproof`]): the endpoint is named by the address instead, and records
    /// say what the client claimed.
    pub(super) claimed_host: Option<String>,
    /// [`Scope::target`] and [`Scope::flow_session`], computed on first use: a request
    /// asks for them from several stages.
    target: std::sync::OnceLock<Arc<TargetOwned>>,
    flow_session: std::sync::OnceLock<Arc<str>>,
}

impl Scope {
    /// `claimed_host` is the Host name when it did not prove to name the destination
    /// ([`unproven_host`]).
    pub(super) fn new(shared: &Shared, ctx: &Arc<ConnCtx>, parts: &Parts, claimed_host: Option<String>) -> Scope {
        let host_header = parts.headers.get(HOST).and_then(|v| v.to_str().ok()).map(str::to_string);
        let dst = ctx.origin.dst;
        let path = parts.uri.path().to_string();
        let path_and_query = parts.uri.path_and_query().map_or_else(|| path.clone(), |p| p.as_str().to_string());
        let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        if let Some(route) = shared.sessions.legacy_route(&dst, host_header.as_deref().unwrap_or_default(), &path_and_query) {
            return Scope {
                ctx: ctx.clone(),
                host: host_header,
                http_method: parts.method.as_str().to_owned(),
                path,
                path_and_query,
                endpoint: route.endpoint.clone(),
                transport: "sse",
                session_id: route.session_id.clone(),
                protocol_version: header(H_VERSION),
                conversation: route.conversation,
                legacy: true,
                claimed_host,
                target: std::sync::OnceLock::new(),
                flow_session: std::sync::OnceLock::new(),
            };
        }
        // The endpoint is an identity (inventory, tool pins, registry, sessions, flows):
        // spelled as servers route it, so `/%6Dcp` or `MCP.example.` is not another server.
        // Plain HTTP to a loopback address is named by that address: every local alias
        // (`localhost`, `x.localhost`, the host's name, the IP itself) reaches the same
        // socket, and `auth::host_fit` refuses any other name toward MCP. Plain HTTP to a
        // remote address whose Host does not resolve there is named by that address too.
        let endpoint = ctx.endpoint_memo.endpoint(host_header.as_deref(), &path, claimed_host.is_some(), || {
            let host_key = if ctx.tls.is_none() && (dst.ip().to_canonical().is_loopback() || claimed_host.is_some()) {
                ctx.ip_key().to_owned()
            } else {
                // No Host (HTTP/2 without `:authority`, HTTP/1.1 without `Host`): the
                // verified TLS server name, which the interception proved, names the
                // server; only without either does the address.
                let sni = ctx.tls.as_ref().and_then(|t| t.sni.as_deref());
                let host_only = host_header.as_deref().map(strip_port).or_else(|| sni.map(str::to_string)).unwrap_or_else(|| dst.ip().to_string());
                mcpwatch_policy::canonical_host(&host_only)
            };
            Endpoint::key_of(ctx.scheme, &host_key, dst.port(), &mcpwatch_policy::canonical_request_path(&path))
        });
        let session_id = header(H_SESSION);
        let protocol_version = header(H_VERSION)
            .or_else(|| session_id.as_deref().and_then(|s| shared.sessions.version(&endpoint, s)));
        let conversation = format!("{endpoint}#{}", session_id.as_deref().unwrap_or("-"));
        Scope {
            ctx: ctx.clone(),
            host: host_header,
            http_method: parts.method.as_str().to_owned(),
            path,
            path_and_query,
            endpoint,
            transport: "streamable-http",
            session_id,
            protocol_version,
            conversation,
            legacy: false,
            claimed_host,
            target: std::sync::OnceLock::new(),
            flow_session: std::sync::OnceLock::new(),
        }
    }

    /// The toxic-flow session a message belongs to: the MCP session id where there is
    /// one, else the client process (tgid and comm) talking to this endpoint.
    pub(super) fn flow_session(&self) -> &str {
        self.flow_session.get_or_init(|| {
            self.ctx.endpoint_memo.flow_session(&self.endpoint, self.session_id.as_deref(), || match (&self.session_id, self.ctx.origin.process.as_deref()) {
                (Some(s), _) => format!("{}#{}", self.endpoint, mcpwatch_mcp::jsonrpc::first_chars(s, 128)),
                (None, Some(p)) => crate::govern::flows::process_session(&self.endpoint, p),
                (None, None) => format!("{}#conn:{}", self.endpoint, self.ctx.dst_key()),
            })
        })
    }

    /// The exchange turned out to belong to a legacy HTTP+SSE session (its stream named
    /// the POST endpoint): later stages see that session.
    pub(super) fn adopt_legacy(&mut self, conversation: String, session_id: Option<String>) {
        self.legacy = true;
        self.transport = "sse";
        self.conversation = conversation;
        self.session_id = session_id;
        self.flow_session = std::sync::OnceLock::new();
    }

    /// This exchange as the govern stage sees it.
    pub(super) fn site<'a>(&'a self, target: &'a TargetOwned, flow_session: &'a str) -> Site<'a> {
        Site { endpoint: &self.endpoint, target: target.as_policy(), process: self.ctx.origin.process.as_deref(), flow_session }
    }

    /// Host, port and path of the server endpoint, for policy matching.
    pub(super) fn target(&self) -> &TargetOwned {
        self.target.get_or_init(|| {
            self.ctx.endpoint_memo.target(&self.endpoint, &self.path, || {
                let (host, port, path) = match Endpoint::parse(&self.endpoint) {
                    Some(e) => {
                        let path = e.path_or_root().to_string();
                        (e.host, e.port, path)
                    }
                    None => (self.ctx.origin.dst.ip().to_string(), self.ctx.origin.dst.port(), self.path.clone()),
                };
                TargetOwned { endpoint: self.endpoint.clone(), host, port, path }
            })
        })
    }

    /// What says this request goes to an MCP server, before its body is understood.
    /// Known endpoints are looked up by the real destination as well as by endpoint
    /// key, since the key's host comes from the client's Host header.
    pub(super) fn evidence(&self, shared: &Shared, headers: &HeaderMap) -> Option<Evidence> {
        let dst = self.ctx.dst_key();
        if self.legacy {
            Some(Evidence::Legacy)
        } else if shared.inventory.contains(&self.endpoint) || shared.inventory.knows_dst_path(dst, &self.path) {
            Some(Evidence::Endpoint)
        } else if has_mcp_headers(headers) {
            Some(Evidence::Headers)
        } else if shared.inventory.knows_dst(dst) {
            Some(Evidence::Server)
        } else {
            None
        }
    }

    /// Where request ids are claimed and their fates kept. For a Streamable HTTP session:
    /// the real destination and the session id as a server may look it up
    /// ([`crate::session::session_key`]), not the conversation, whose endpoint carries the
    /// client's spelling of the host: `Host: mcp.example` and `Host: <its address>` (both
    /// proven), or two names of one certificate, reach one session on the server, and an
    /// id used under one spelling must be used under the other. Otherwise (legacy SSE,
    /// no session) the conversation.
    pub(super) fn id_space(&self) -> std::borrow::Cow<'_, str> {
        match (&self.session_id, self.legacy) {
            (Some(s), false) => std::borrow::Cow::Owned(format!("{}#{}", self.ctx.dst_key(), crate::session::session_key(s))),
            _ => std::borrow::Cow::Borrowed(&self.conversation),
        }
    }

    /// Does this server's rollout mode (registry `mode`, else the policy's) enforce?
    pub(super) fn enforce(&self, shared: &Shared) -> bool {
        shared.governance.current().inspect_mode(&self.target().as_policy()) == Mode::Enforce
    }

    /// [`Scope::enforce`] for what cannot be inspected at all
    /// ([`crate::governance::Loaded::uninspectable_mode`]).
    pub(super) fn enforce_uninspectable(&self, shared: &Shared) -> bool {
        shared.governance.current().uninspectable_mode(&self.target().as_policy()) == Mode::Enforce
    }

    /// Answer a request mcpwatch refuses at the HTTP layer: a closed record with the
    /// alert, and `status` with `message` to the client.
    pub(super) fn refuse(&self, shared: &Shared, status: StatusCode, alert: String, message: &str) -> Response<Body> {
        let mut rec = self.record(shared, MessageKind::Invalid, C2S, None, 0);
        rec.alerts.push(alert);
        rec.notes.push("refused by mcpwatch; not forwarded".into());
        write_closed(shared, rec, CallStatus::TransportError { reason: format!("{} refused by mcpwatch", status.as_u16()) });
        local_response(status, "text/plain", format!("{message}\n"))
    }

    /// Record an alert about a request that is forwarded anyway (audit/warn mode).
    pub(super) fn alert_forwarded(&self, shared: &Shared, alert: String) {
        let mut rec = self.record(shared, MessageKind::Invalid, C2S, None, 0);
        rec.alerts.push(alert);
        write_closed(shared, rec, CallStatus::Sent);
    }

    /// Record a note about a request that is forwarded (nothing suspicious in it).
    pub(super) fn note_forwarded(&self, shared: &Shared, note: String) {
        let mut rec = self.record(shared, MessageKind::Invalid, C2S, None, 0);
        rec.notes.push(note);
        write_closed(shared, rec, CallStatus::Sent);
    }

    pub(super) fn record(&self, shared: &Shared, kind: MessageKind, direction: &str, msg: Option<&Message>, bytes: u64) -> AuditRecord {
        let mut rec = AuditRecord {
            process: self.ctx.origin.process.clone(),
            dst: self.ctx.dst_key().to_owned(),
            host: self.host.clone(),
            scheme: self.ctx.scheme.to_string(),
            http_method: self.http_method.clone(),
            path: self.path_and_query.clone(),
            server: self.endpoint.clone(),
            transport: self.transport.to_string(),
            session_id: self.session_id.clone(),
            protocol_version: self.protocol_version.clone(),
            tls: self.ctx.tls.as_deref().cloned(),
            ..crate::record::message(shared, kind, direction, msg, bytes)
        };
        if let Some(name) = &self.claimed_host {
            self.note_claimed_host(shared, name, &mut rec);
        }
        rec
    }

    /// The Host named a place the connection does not go: noted on every record, and
    /// an alert when the name is a registered server's (the client claimed its rules).
    fn note_claimed_host(&self, shared: &Shared, name: &str, rec: &mut AuditRecord) {
        let dst = self.ctx.origin.dst.ip().to_canonical();
        let why = format!("Host `{name}` does not resolve to the destination {dst}; the server is named by its address");
        let claimed = TargetOwned {
            endpoint: String::new(),
            host: mcpwatch_policy::canonical_host(name),
            port: self.ctx.origin.dst.port(),
            path: self.target().path.clone(),
        };
        match shared.governance.current().policy.server_for(&claimed.as_policy()) {
            Some(s) => rec.alerts.push(format!("{why} (registered server `{}` impersonated)", s.name)),
            None => rec.notes.push(why),
        }
    }

    /// A body that claimed to be MCP but could not be used: record it, closed.
    pub(super) fn record_invalid(&self, shared: &Shared, bytes: u64, why: &str, status: CallStatus) {
        let mut rec = self.record(shared, MessageKind::Invalid, C2S, None, bytes);
        rec.notes.push(why.to_string());
        write_closed(shared, rec, status);
    }

    pub(super) fn record_session_delete(&self, shared: &Shared, status: StatusCode) {
        let mut rec = self.record(shared, MessageKind::Notification, C2S, None, 0);
        rec.notes.push("session terminated by the client (HTTP DELETE)".into());
        write_closed(shared, rec, if status.is_success() { CallStatus::Ok } else { http_failure(status) });
        if let Some(s) = &self.session_id {
            shared.sessions.end_session(&self.endpoint, s);
            if status.is_success() {
                shared.sessions.unbind_session(self.ctx.dst_key(), s);
            }
        }
    }

    pub(super) fn sighting<'a>(&'a self, method: Option<&'a str>, name: Option<&'a str>) -> Sighting<'a> {
        Sighting {
            endpoint: &self.endpoint,
            dst: "",
            transport: self.transport,
            process: self.ctx.origin.process.as_deref(),
            method,
            name,
            now_ms: now_ms(),
        }
    }
}


/// Close a record with the server's answer.
pub(super) fn http_failure(status: StatusCode) -> CallStatus {
    CallStatus::TransportError { reason: format!("HTTP {status}") }
}

/// Whether a header `name` contains `needle` (lowercase ASCII), ignoring ASCII case.
pub(super) fn header_has(h: &HeaderMap, name: http::header::HeaderName, needle: &str) -> bool {
    let needle = needle.as_bytes();
    h.get_all(name).iter().any(|v| v.to_str().is_ok_and(|s| contains_ignore_ascii_case(s.as_bytes(), needle)))
}

/// `hay` contains `needle` (lowercase ASCII), ignoring ASCII case. Each window is
/// compared only where its first byte matches: a request asks several of these of
/// headers like `Accept: application/json, text/event-stream`.
pub(super) fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else { return true };
    hay.windows(needle.len()).any(|w| w[0].to_ascii_lowercase() == first && w.eq_ignore_ascii_case(needle))
}

/// Ask for an answer mcpwatch can read: `Accept-Encoding: identity`. Clients accept gzip
/// by default (httpx, undici) and decode it themselves, so a server behind a compression
/// middleware would otherwise answer in bytes that redaction, tool pinning and the
/// integrity checks cannot read. Accept-Encoding only asks; [`content_coding`] is what
/// the answer is checked by.
pub(super) fn ask_identity(h: &mut HeaderMap) {
    h.insert(http::header::ACCEPT_ENCODING, http::HeaderValue::from_static("identity"));
}

/// The response's content coding, when it is one mcpwatch would have to decode to read
/// the body (anything but none or `identity`).
pub(super) fn content_coding(h: &HeaderMap) -> Option<String> {
    let codings: Vec<&str> = h
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("(not text)"))
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        .collect();
    (!codings.is_empty()).then(|| codings.join(", ").chars().take(64).collect())
}

/// A JSON Content-Type that names a character set other than UTF-8, or one that is not
/// text at all: what it names (for the refusal). Express' `express.json()` decodes any
/// `utf-*` charset it is given (iconv: `utf-7` too) before `JSON.parse`, so
/// `"name":"ech+AG8-"` is `echo` to the server while mcpwatch reads the bytes as UTF-8.
/// Every Content-Type value and every `charset` parameter in it counts.
pub(super) fn foreign_charset(h: &HeaderMap) -> Option<String> {
    for v in h.get_all(CONTENT_TYPE) {
        let raw = v.as_bytes();
        if !contains_ignore_ascii_case(raw, b"json") {
            continue;
        }
        let Ok(text) = std::str::from_utf8(raw) else { return Some("(not text)".into()) };
        for param in text.split(';').skip(1) {
            let Some((name, value)) = param.split_once('=') else { continue };
            if !name.trim().eq_ignore_ascii_case("charset") {
                continue;
            }
            let value = value.trim().trim_matches('"').trim();
            if !(value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")) {
                return Some(value.chars().take(32).collect());
            }
        }
    }
    None
}

pub(super) fn is_json(h: &HeaderMap) -> bool {
    header_has(h, CONTENT_TYPE, "json")
}

pub(super) fn is_sse(h: &HeaderMap) -> bool {
    header_has(h, CONTENT_TYPE, "text/event-stream")
}

pub(super) fn accepts_sse(h: &HeaderMap) -> bool {
    header_has(h, http::header::ACCEPT, "text/event-stream")
}

pub(super) fn has_mcp_headers(h: &HeaderMap) -> bool {
    h.contains_key(H_SESSION) || h.contains_key(H_VERSION) || h.contains_key(H_METHOD)
}

/// Does the request carry a body (a positive Content-Length, or chunked)?
pub(super) fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(http::header::TRANSFER_ENCODING)
        || h.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() != "0")
}

/// Over plain HTTP toward a remote address, the request's Host name when the daemon's
/// resolver does not map it to that address (an IP literal: when it is another
/// address). `None` when the name is proven, or not needed: TLS proves it, and loopback
/// destinations are named by their address anyway.
pub(super) async fn unproven_host(shared: &Shared, ctx: &ConnCtx, parts: &Parts) -> Option<String> {
    let dst = ctx.origin.dst.ip().to_canonical();
    if ctx.tls.is_some() || dst.is_loopback() {
        return None;
    }
    let name = strip_port(parts.headers.get(HOST)?.to_str().ok()?.trim());
    if name.is_empty() {
        return None;
    }
    let proof = match name.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.to_canonical() == dst => crate::hostproof::Proof::Proven,
        Ok(_) => crate::hostproof::Proof::Unproven,
        Err(_) => shared.host_proofs.check(dst, &name).await,
    };
    (proof != crate::hostproof::Proof::Proven).then(|| name.chars().take(253).collect())
}

/// RFC 9112 §3.2.2: a request in absolute form (`POST https://b.example/mcp`) is routed
/// by its target's authority whatever `Host` says, and a proxy must replace `Host` with
/// it. mcpwatch does so before anything reads `Host`: the server is judged by the name
/// it routes by, and a `Host` equal to the SNI cannot front for another name written in
/// the target (TLS-004). The target itself is forwarded as sent (a forward proxy upstream
/// needs it). `CONNECT` (authority form) is left alone.
pub(super) fn host_from_absolute_form<B>(req: &mut hyper::Request<B>) {
    if req.method() == http::Method::CONNECT {
        return;
    }
    let Some(a) = req.uri().authority() else { return };
    // Without any userinfo (`user:pass@`), which is not part of the host.
    let host = match a.port() {
        Some(p) => format!("{}:{}", a.host(), p.as_str()),
        None => a.host().to_string(),
    };
    if let Ok(v) = http::HeaderValue::from_str(&host) {
        req.headers_mut().insert(http::header::HOST, v);
    }
}

/// `host:port` / `[v6]:port` / `host` → host.
pub(super) fn strip_port(h: &str) -> String {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
        _ => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_after(method: &str, target: &str, host: &str) -> String {
        let mut req = hyper::Request::builder().method(method).uri(target).header(http::header::HOST, host).body(()).unwrap();
        host_from_absolute_form(&mut req);
        req.headers()[http::header::HOST].to_str().unwrap().to_string()
    }

    #[test]
    fn an_absolute_target_names_the_host() {
        assert_eq!(host_after("POST", "https://b.example/mcp", "a.example"), "b.example");
        assert_eq!(host_after("POST", "http://user:pw@b.example:8080/mcp", "a.example"), "b.example:8080");
        assert_eq!(host_after("POST", "http://[::1]:9/mcp", "a.example"), "[::1]:9");
        // Origin form and CONNECT keep their Host.
        assert_eq!(host_after("POST", "/mcp", "a.example"), "a.example");
        assert_eq!(host_after("CONNECT", "b.example:443", "a.example"), "a.example");
    }

    #[test]
    fn header_matching_ignores_case() {
        let mut h = HeaderMap::new();
        h.append(CONTENT_TYPE, http::HeaderValue::from_static("Application/JSON; charset=utf-8"));
        h.append(http::header::ACCEPT, http::HeaderValue::from_static("application/json"));
        h.append(http::header::ACCEPT, http::HeaderValue::from_static("TEXT/Event-Stream"));
        assert!(is_json(&h));
        assert!(!is_sse(&h));
        assert!(accepts_sse(&h), "the second Accept value counts");
        assert!(!header_has(&h, CONTENT_TYPE, "xml"));
        assert!(!header_has(&h, CONTENT_TYPE, "application/json; charset=utf-8; extra"), "longer than the value");
        // Against the plain definition, at every offset and case.
        for hay in ["", "j", "JSON", "xjsoN", "application/jso", "a/JsOn;x", "jjson", "jsojson"] {
            for needle in ["", "j", "json", "son"] {
                let plain = needle.is_empty() || hay.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()));
                assert_eq!(contains_ignore_ascii_case(hay.as_bytes(), needle.as_bytes()), plain, "{hay:?} {needle:?}");
            }
        }
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("127.0.0.2:8765"), "127.0.0.2");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("::1"), "::1");
    }

}
