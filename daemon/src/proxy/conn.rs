//! One accepted connection: resolve, connect upstream, sniff, dispatch.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::{http, upstream};
use crate::resolve::{Origin, Resolve};
use crate::state::{Counters, Shared};

/// What the first client bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Http,
    Tls,
    /// Anything else, including a client that stays silent or a server that speaks first.
    Opaque,
}

const HTTP_METHODS: &[&[u8]] = &[
    b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"TRACE ",
];

/// Classify a prefix. `None`: not enough bytes yet to tell.
pub fn classify(buf: &[u8]) -> Option<Sniffed> {
    if buf.is_empty() {
        return None;
    }
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Sniffed::Tls),
            Some(_) => Some(Sniffed::Opaque),
        };
    }
    let mut undecided = false;
    for m in HTTP_METHODS {
        if buf.len() >= m.len() {
            if buf.starts_with(m) {
                return Some(Sniffed::Http);
            }
        } else if m.starts_with(buf) {
            undecided = true;
        }
    }
    if undecided { None } else { Some(Sniffed::Opaque) }
}

/// Per-connection facts every exchange needs.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    pub id: u64,
    pub peer: SocketAddr,
    pub origin: Origin,
    pub scheme: &'static str,
    /// Raw request heads of an HTTP connection (framing checks).
    pub head_log: Option<super::headlog::HeadLog>,
    /// Set when mcpwatch terminated TLS for this connection (`scheme` is then `https`).
    pub tls: Option<Arc<mcpwatch_api::TlsDetails>>,
}

pub async fn handle(shared: Arc<Shared>, resolver: Arc<dyn super::super::resolve::Resolve>, client: TcpStream, peer: SocketAddr) {
    let local = match client.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let Some(origin) = resolve(&*resolver, peer, local) else {
        Counters::inc(&shared.counters.connections_unresolved);
        tracing::warn!(%peer, "no original destination for connection; closing it");
        return;
    };
    if is_self(&shared, origin.dst) {
        tracing::warn!(%peer, dst = %origin.dst, "connection to the daemon's own listener; closing it");
        return;
    }
    let _ = client.set_nodelay(true);
    let limits = &shared.config.limits;
    // Connect before reading anything: a server-speaks-first protocol must see its
    // client connected as if nobody were in between.
    let upstream = match upstream::connect(origin.dst, shared.config.mark, limits.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%peer, error = %e, "upstream connect failed; closing client");
            return;
        }
    };
    let kind = sniff(&client, &upstream, limits.peek_timeout).await;
    let ctx = ConnCtx { id: shared.next_conn_id(), peer, origin, scheme: "http", head_log: None, tls: None };
    tracing::debug!(conn = ctx.id, %peer, dst = %ctx.origin.dst, ?kind, "connection");
    match kind {
        Some(Sniffed::Http) => http::serve(shared, ctx, client, upstream).await,
        Some(Sniffed::Tls) => super::tls::handle(shared, ctx, client, upstream).await,
        Some(Sniffed::Opaque) => {
            Counters::inc(&shared.counters.passthrough);
            relay(client, upstream).await;
        }
        None => {} // client closed before sending anything
    }
}

fn resolve(resolver: &dyn Resolve, peer: SocketAddr, local: SocketAddr) -> Option<Origin> {
    resolver.resolve(peer, local)
}

fn is_self(shared: &Shared, dst: SocketAddr) -> bool {
    dst.ip().is_loopback() && dst.port() == shared.config.listen_port
}

/// Wait for enough client bytes to classify, the server speaking first, or the deadline.
/// `None` when the client closed without sending anything.
async fn sniff(client: &TcpStream, upstream: &TcpStream, deadline: Duration) -> Option<Sniffed> {
    let mut buf = [0u8; 16];
    let sleep = tokio::time::sleep(deadline);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            r = client.peek(&mut buf) => match r {
                Ok(0) => {
                    // Closed by the client; anything the server wants to say still
                    // deserves relaying (half-close), so treat as opaque unless idle.
                    return Some(Sniffed::Opaque);
                }
                Ok(n) => match classify(&buf[..n]) {
                    Some(k) => return Some(k),
                    // A prefix of a method: wait a little for more bytes.
                    None => tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                        _ = &mut sleep => return Some(Sniffed::Opaque),
                    },
                },
                Err(_) => return None,
            },
            _ = upstream.readable() => return Some(Sniffed::Opaque),
            _ = &mut sleep => return Some(Sniffed::Opaque),
        }
    }
}

/// Byte-for-byte relay both ways until both sides are done.
pub async fn relay(mut client: TcpStream, mut upstream: TcpStream) {
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "relay ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(classify(b"POST /mcp HTTP/1.1"), Some(Sniffed::Http));
        assert_eq!(classify(b"GET / HTTP/1.1"), Some(Sniffed::Http));
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b"OPTIONS"), None);
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Sniffed::Opaque));
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02]), Some(Sniffed::Tls));
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(b"PRI * HTTP/2.0"), Some(Sniffed::Opaque));
        assert_eq!(classify(b"\x00\x00"), Some(Sniffed::Opaque));
    }
}
