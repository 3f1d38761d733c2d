//! HTTP/1.1 upgrades: what a client may switch a watched connection to.
//!
//! Past a `101 Switching Protocols` the connection is spliced opaquely, so everything
//! after it would pass uninspected. An attacker inside the watched cgroup only has to pick
//! the protocol: `Upgrade: h2c` to a server that grants it turns every later request into
//! HTTP/2 frames mcpwatch never parses, and MCP over WebSocket carries calls in frames.
//! So an upgrade is decided here, before the request leaves (docs/protocols.md, "Upgrades"):
//!
//! - anything but a plain WebSocket handshake (`h2c`, `TLS/1.0`, a list of protocols the
//!   server could choose from) is never offered to the server: the Upgrade header (and
//!   the `Connection` tokens naming it) is dropped and the request goes out as ordinary
//!   HTTP/1.1, which the server answers as such. Upgrade is hop-by-hop, and a server may
//!   ignore it (RFC 9110 §7.8), so a client cannot tell this from a server that declined.
//! - a WebSocket handshake with MCP evidence (subprotocol `mcp`, MCP headers, or a
//!   destination where MCP was seen or the registry names a server) follows that server's
//!   mode: refused (403) in enforce mode, relayed with an alert in audit and warn mode.
//!   Without evidence the handshake goes on, minus `Sec-WebSocket-Extensions`, and what
//!   the client then sends is read by [`super::websocket`]: MCP found in its frames is
//!   refused or recorded the same way.
//! - a `101` is relayed only when it switches to the WebSocket that was asked for, with
//!   no extension turned on.

use http::header::{CONNECTION, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};
use mcpwatch_policy::Mode;

use super::body::{self, Body};
use super::relay::{governed_mode_resolved, strictest};
use super::scope::Scope;
use super::websocket::Watch;
use crate::state::{Counters, Shared};

const SEC_WEBSOCKET_EXTENSIONS: &str = "sec-websocket-extensions";

/// The WebSocket subprotocol MCP clients and servers name.
const MCP_SUBPROTOCOL: &str = "mcp";

/// Take the upgrade a request may make: `Some` only for a single-protocol WebSocket
/// handshake; any other Upgrade is removed from the request.
pub(super) fn prepare(req: &mut Request<Incoming>) -> Option<hyper::upgrade::OnUpgrade> {
    if !req.headers().contains_key(UPGRADE) {
        return None;
    }
    if is_websocket_handshake(req.headers()) {
        // Compression (permessage-deflate) would hide every payload from
        // `super::websocket`: never offered, so never negotiated.
        req.headers_mut().remove(SEC_WEBSOCKET_EXTENSIONS);
        return Some(hyper::upgrade::on(req));
    }
    let protocols = req.headers().get_all(UPGRADE).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(", ");
    tracing::debug!(upgrade = %protocols, "upgrade not offered to the server (only WebSocket is)");
    strip(req.headers_mut());
    None
}

/// One `Upgrade` header naming exactly `websocket`, and `Connection: upgrade`.
fn is_websocket_handshake(h: &HeaderMap) -> bool {
    let mut upgrades = h.get_all(UPGRADE).iter();
    let one = match (upgrades.next(), upgrades.next()) {
        (Some(v), None) => v,
        _ => return false,
    };
    one.to_str().is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket")) && connection_tokens(h).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim).filter(|t| !t.is_empty())
}

/// Drop the upgrade offer: `Upgrade`, `HTTP2-Settings`, and their `Connection` tokens
/// (other tokens, such as `close`, stay).
fn strip(h: &mut HeaderMap) {
    h.remove(UPGRADE);
    h.remove("http2-settings");
    let kept: Vec<String> = connection_tokens(h)
        .filter(|t| !t.eq_ignore_ascii_case("upgrade") && !t.eq_ignore_ascii_case("http2-settings"))
        .map(str::to_string)
        .collect();
    h.remove(CONNECTION);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join(", "))
    {
        h.insert(CONNECTION, v);
    }
}

/// Decide a WebSocket handshake before it is forwarded: `Some` is the refusal to send.
pub(super) async fn gate(shared: &Shared, scope: &Scope, parts: &Parts, dst: std::net::SocketAddr) -> Option<Response<Body>> {
    let subprotocol = parts
        .headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(MCP_SUBPROTOCOL));
    let governed = governed_mode_resolved(shared, dst).await;
    let why = if subprotocol {
        "subprotocol `mcp`"
    } else if governed.is_some() {
        "toward a governed MCP destination"
    } else if scope.evidence(shared, &parts.headers).is_some() {
        "toward an MCP endpoint"
    } else {
        return None;
    };
    let mode = strictest(governed, shared.governance.current().uninspectable_mode(&scope.target().as_policy()));
    if mode == Mode::Enforce {
        Counters::inc(&shared.counters.refused_protocol);
        let alert = format!("MCP over WebSocket ({why}) cannot be inspected: refused (enforce mode)");
        tracing::warn!(dst = %dst, "{alert}");
        return Some(scope.refuse(shared, StatusCode::FORBIDDEN, alert, "mcpwatch: MCP over WebSocket is not inspected; refused (enforce mode)"));
    }
    let alert = format!("MCP over WebSocket ({why}) cannot be inspected: relayed uninspected ({mode:?} mode)");
    tracing::warn!(dst = %dst, "{alert}");
    scope.alert_forwarded(shared, alert);
    None
}

/// The mode a WebSocket toward `dst` is judged in: the strictest of the destination's
/// and the request's.
pub(super) async fn mode(shared: &Shared, scope: &Scope, dst: std::net::SocketAddr) -> Mode {
    strictest(governed_mode_resolved(shared, dst).await, shared.governance.current().uninspectable_mode(&scope.target().as_policy()))
}

/// Answer a `101`: relay client and server through [`super::websocket`] once the server
/// switched to the WebSocket the client asked for (`client`) without an extension; any
/// other switch is not honoured (502), so a server cannot take a connection past
/// inspection by switching unasked or by compressing what it was not offered to.
pub(super) fn splice(client: Option<hyper::upgrade::OnUpgrade>, mut resp: Response<Incoming>, watch: Watch) -> Response<Body> {
    let websocket = resp.headers().get(UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let Some(client) = client.filter(|_| websocket) else {
        tracing::warn!("the server switched protocols without a WebSocket handshake asking for it; not relayed");
        return body::local_response(StatusCode::BAD_GATEWAY, "text/plain", "mcpwatch: the server switched to a protocol that was not asked for\n".to_string());
    };
    if resp.headers().contains_key(SEC_WEBSOCKET_EXTENSIONS) {
        tracing::warn!("the server turned on a WebSocket extension it was not offered; not relayed");
        return body::local_response(StatusCode::BAD_GATEWAY, "text/plain", "mcpwatch: the server turned on a WebSocket extension that was not offered\n".to_string());
    }
    let server = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        match tokio::try_join!(client, server) {
            Ok((c, s)) => super::websocket::relay(hyper_util::rt::TokioIo::new(c), hyper_util::rt::TokioIo::new(s), watch).await,
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    resp.map(|_| body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_a_plain_websocket_handshake_is_an_upgrade() {
        assert!(is_websocket_handshake(&headers(&[("upgrade", "WebSocket"), ("connection", "keep-alive, Upgrade")])));
        for h in [
            headers(&[("upgrade", "h2c"), ("connection", "Upgrade, HTTP2-Settings")]),
            headers(&[("upgrade", "websocket, h2c"), ("connection", "upgrade")]),
            headers(&[("upgrade", "websocket"), ("upgrade", "h2c"), ("connection", "upgrade")]),
            headers(&[("upgrade", "websocket")]),
        ] {
            assert!(!is_websocket_handshake(&h), "{h:?}");
        }
    }

    #[test]
    fn strip_keeps_other_connection_tokens() {
        let mut h = headers(&[("upgrade", "h2c"), ("http2-settings", "AAMAAABkAAQAAP__"), ("connection", "Upgrade, HTTP2-Settings, close")]);
        strip(&mut h);
        assert!(h.get(UPGRADE).is_none() && h.get("http2-settings").is_none());
        assert_eq!(h.get(CONNECTION).unwrap(), "close");
        let mut h = headers(&[("upgrade", "h2c"), ("connection", "Upgrade")]);
        strip(&mut h);
        assert!(h.get(CONNECTION).is_none());
    }
}
