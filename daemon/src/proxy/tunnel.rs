//! `CONNECT` through a watched port: an agent behind an HTTP forward proxy.
//!
//! A client with `HTTPS_PROXY` set opens a tunnel (`CONNECT host:port`) through the proxy and
//! speaks to the server inside it. Without this module the proxy's `200` reached the client
//! and the tunnel was dead: nothing behind a forward proxy on a watched port worked. A
//! tunnel spliced blindly would be worse: a way around everything mcpwatch inspects. So:
//!
//! - a tunnel toward a destination the registry names (`[[server]]` at that host and port)
//!   or where MCP was seen is recorded and opened, carrying that destination's mode inside
//!   (`ConnCtx::tunnel_mode`);
//! - once the proxy answered `2xx`, what the client sends inside is served as on a fresh
//!   connection (`ConnCtx::serve_tunnel`, which is `conn::serve_tunnel`): plain HTTP/1 or
//!   HTTP/2 is served and governed, named by the tunnel's destination;
//! - TLS inside a tunnel gets the decision TLS gets on a socket (`tls::in_tunnel`), the
//!   tunnel's host standing in for the destination: intercepted (verified TLS to the server
//!   through the tunnel, a leaf for the client, then the HTTP path) or passed through; a
//!   hello naming a host outside the `[tls]` scope on a tunnel to a host inside it is
//!   recorded and refused in enforce mode;
//! - what cannot be inspected inside a tunnel to a governed destination (TLS that is not
//!   intercepted, a protocol that is neither HTTP nor TLS) is recorded, and refused in
//!   enforce mode ([`passes_uninspected`]), as on a direct connection; toward other
//!   destinations it is relayed;
//! - the tunnel's upstream is the proxy's connection: when it ends, so do the tunnel's
//!   requests (no reconnect).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::request::Parts;
use http::StatusCode;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mcpwatch_api::{CallStatus, TlsDetails};
use mcpwatch_policy::Mode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::body::{self, Body};
use super::ctx::ConnCtx;
use super::forward::{BoxIo, ForwardError, Reconnect, SharedUpstream};
use super::relay::strictest;
use super::scope::Scope;
use crate::resolve::Origin;
use crate::state::{Counters, Shared};

/// Answer a `CONNECT`: gate it, forward it, and on `2xx` serve what the client sends inside.
pub(super) async fn open(shared: Arc<Shared>, ctx: Arc<ConnCtx>, scope: Scope, up: SharedUpstream, parts: Parts, client: OnUpgrade) -> Response<Body> {
    let Some((host, port)) = parts.uri.authority().map(|a| (a.host().trim_start_matches('[').trim_end_matches(']').to_string(), a.port_u16().unwrap_or(443))) else {
        return body::local_response(StatusCode::BAD_REQUEST, "text/plain", "mcpwatch: CONNECT without host:port\n".to_string());
    };
    let Some(serve_tunnel) = ctx.serve_tunnel else {
        return body::local_response(StatusCode::BAD_GATEWAY, "text/plain", "mcpwatch: CONNECT is not served on this connection\n".to_string());
    };
    let dst = destination(&host, port).await;
    // A tunnel to a governed destination opens: what the client sends inside is governed
    // as on a direct connection, and what cannot be inspected there is refused in enforce
    // mode (`passes_uninspected`). Refusing the tunnel itself would cut an agent behind a
    // forward proxy off from every server it may call, from its second connection on once
    // MCP was seen there.
    let mode = tunnel_mode(&shared, &host, port, dst).await;
    if let Some(mode) = mode {
        let note = format!(
            "CONNECT tunnel to {host}:{port}, a governed MCP destination ({} mode), through a forward proxy: opened; what the client sends inside is governed, and what mcpwatch cannot inspect there is {}",
            mode.as_str(),
            if mode == Mode::Enforce { "refused" } else { "relayed and recorded" }
        );
        tracing::info!(conn = ctx.id, "{note}");
        scope.note_forwarded(&shared, note);
    }
    let req = Request::from_parts(parts, body::empty());
    let mut resp = match up.lock().await.send(req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "CONNECT through the proxy failed");
            return body::local_response(StatusCode::BAD_GATEWAY, "text/plain", format!("mcpwatch: {e}\n"));
        }
    };
    if !resp.status().is_success() {
        return resp.map(body::incoming);
    }
    let server = hyper::upgrade::on(&mut resp);
    let mut inner = ConnCtx::new(ctx.id, ctx.peer, Origin { dst, process: ctx.origin.process.clone(), unverified: ctx.origin.unverified });
    inner.serve_tunnel = Some(serve_tunnel);
    inner.tunnel_host = Some(host);
    inner.tunnel_mode = mode;
    tokio::spawn(async move {
        match tokio::try_join!(client, server) {
            Ok((c, s)) => serve_tunnel(shared, inner, Box::new(TokioIo::new(c)), Box::new(TokioIo::new(s))).await,
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    resp.map(|_| body::empty())
}

/// The address the tunnel leads to, as the proxy would resolve it (an unspecified address
/// when the name does not resolve here: then no `Host` is proven against it).
async fn destination(host: &str, port: u16) -> SocketAddr {
    if let Ok(ip) = host.parse::<IpAddr>() {
        // `[::ffff:10.1.2.3]` is 10.1.2.3: named as a direct connection names it, or the
        // server seen at the IPv4 address would be an ungoverned one here.
        return crate::resolve::local_alias_resolved(SocketAddr::new(ip.to_canonical(), port));
    }
    let lookup = tokio::time::timeout(crate::hostproof::HostProofs::DEADLINE, tokio::net::lookup_host((host, port)));
    match lookup.await {
        Ok(Ok(mut addrs)) => addrs.next().unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
        _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
    }
}

/// The strictest mode of what the tunnel's destination is known as: a registry entry at
/// `host:port`, or at the address (by address, or by a registered name the resolver
/// maps there), or an address where MCP was seen. `None`: not governed.
async fn tunnel_mode(shared: &Shared, host: &str, port: u16, dst: SocketAddr) -> Option<Mode> {
    let loaded = shared.governance.current();
    let registered = loaded.policy.server_at(host, port).map(|s| s.mode.unwrap_or(loaded.policy.mode()));
    let seen = if dst.ip().is_unspecified() { None } else { super::relay::governed_mode_resolved(shared, dst).await };
    match (registered, seen) {
        (Some(a), b) => Some(strictest(b, a)),
        (None, b) => b,
    }
}

/// Bytes inside a tunnel that mcpwatch cannot inspect (`what`: TLS it does not intercept,
/// a protocol that is neither HTTP nor TLS) toward a governed destination
/// (`ctx.tunnel_mode`): recorded in every mode, refused in enforce mode, as they are on a
/// direct connection. `tls`: the TLS facts known (the hello's SNI). `true`: relay them.
pub(super) fn passes_uninspected(shared: &Shared, ctx: &ConnCtx, what: &str, tls: Option<TlsDetails>) -> bool {
    match ctx.tunnel_mode {
        Some(mode) => passes_uninspected_in(shared, ctx, mode, what, "a governed MCP destination", tls),
        None => true,
    }
}

/// [`passes_uninspected`] under `mode`, for a tunnel whose host is `whose` (why its
/// contents should have been inspected): recorded, counted and refused in enforce mode.
pub(super) fn passes_uninspected_in(shared: &Shared, ctx: &ConnCtx, mode: Mode, what: &str, whose: &str, tls: Option<TlsDetails>) -> bool {
    let enforce = mode == Mode::Enforce;
    let host = ctx.tunnel_host.clone().unwrap_or_else(|| ctx.ip_key().to_owned());
    let reason = format!(
        "{what} inside a CONNECT tunnel to {host}:{}, {whose}: {}",
        ctx.origin.dst.port(),
        if enforce { "refused (enforce mode)" } else { "relayed uninspected" }
    );
    tracing::warn!(conn = ctx.id, "{reason}");
    let (scheme, transport) = if tls.is_some() { ("https", "tls") } else { ("http", "tcp") };
    let mut rec = crate::record::connection(shared, &ctx.origin, scheme, transport, &host, &reason);
    rec.tls = tls;
    crate::record::write_closed(shared, rec, CallStatus::TransportError { reason });
    if enforce {
        Counters::inc(&shared.counters.refused_protocol);
    }
    !enforce
}

/// The tunnel's upstream is the proxy's connection: when it ends there is no dialling it
/// again (a new connection to the destination would not go through the proxy).
pub(super) fn no_reconnect(dst: SocketAddr) -> Reconnect {
    Arc::new(move || Box::pin(async move { Err::<BoxIo, _>(ForwardError::Reconnect { dst, reason: "the proxy's tunnel ended".into() }) }))
}

/// Relays a tunnel both ways, the client's already-read bytes first.
pub(super) async fn relay_rewound(shared: &Shared, first: Vec<u8>, client: BoxIo, mut server: BoxIo) {
    Counters::inc(&shared.counters.passthrough);
    let mut client = Rewind::new(first, client);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// The client's first bytes (read to classify them), then the rest of its stream.
pub(super) struct Rewind<T> {
    first: Bytes,
    io: T,
}

impl<T> Rewind<T> {
    pub(super) fn new(first: Vec<u8>, io: T) -> Rewind<T> {
        Rewind { first: Bytes::from(first), io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first[..n]);
            self.first.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
