//! The whole intercept sequence in one call, so the proxy's per-connection task stays small.
//!
//! Order matters and is the point of this module:
//!
//! 1. refuse a client that shares no cipher suite with us (legacy TLS) before touching upstream;
//! 2. connect and verify the upstream with the client's server name (SNI, or the destination IP
//!    when it sent none), offering only the client's ALPN protocols we can carry;
//! 3. if that fails, send the client a fatal alert and stop: no leaf is minted, so an invalid
//!    upstream certificate is never laundered into one the client trusts;
//! 4. otherwise fetch/mint the leaf offering exactly the ALPN the upstream chose, and finish the
//!    client's handshake; a failure there is classified for distrust back-off.

use std::sync::Arc;

use rustls::AlertDescription;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::distrust::{DistrustReason, classify_client_abort};
use crate::hello::{ClientTlsStream, HandshakeError, Hello};
use crate::leaf::{LeafIssuer, ServerTarget, validate_server_name};
use crate::upstream::{UpstreamCert, UpstreamTls, UpstreamTlsError, UpstreamTlsStream};
use crate::{Side, TlsError, version_name};

/// Both legs of an intercepted connection, handshakes complete.
pub struct Intercepted<C = TcpStream, U = TcpStream> {
    /// Our TLS server side, talking to the client (plaintext in and out).
    pub client: ClientTlsStream<C>,
    /// Our TLS client side, talking to the original destination.
    pub upstream: UpstreamTlsStream<U>,
    /// What the audit and inventory record about the TLS layer.
    pub info: TlsInfo,
}

impl<C, U> std::fmt::Debug for Intercepted<C, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercepted")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// TLS details of an intercepted connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsInfo {
    /// The SNI the client sent (None: absent or an IP literal).
    pub sni: Option<String>,
    /// The name the upstream certificate was verified for and our leaf was issued for.
    pub server_name: String,
    /// The ALPN protocols the client offered.
    pub client_alpn: Vec<Vec<u8>>,
    /// The protocol negotiated on both legs (None: no ALPN; speak HTTP/1.1).
    pub alpn: Option<Vec<u8>>,
    /// Version negotiated with the client.
    pub client_version: String,
    /// The upstream leg: certificate, version, insecure override.
    pub upstream: UpstreamCert,
}

/// Why interception failed, by side. In every case the client connection is closed (after a
/// fatal alert where we still could send one) and nothing was forwarded.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// The client's server name is unusable (hostile SNI); alert `unrecognised_name`.
    #[error("client: {0}")]
    BadName(TlsError),
    /// The client offers only cipher suites we do not implement (TLS < 1.2, RC4, 3DES...);
    /// alert `handshake_failure`, upstream never contacted.
    #[error("client: no cipher suite in common (legacy TLS client)")]
    LegacyClient,
    /// The upstream connection or its certificate failed; alert `handshake_failure`, no leaf.
    #[error("{0}")]
    Upstream(UpstreamTlsError),
    /// We failed (leaf minting, socket state); alert `internal_error`.
    #[error("internal: {0}")]
    Internal(String),
    /// The client's handshake with our leaf failed; `distrust` says whether it looks like the
    /// client does not trust the mcpwatch CA.
    #[error("client: {error} (server name {server_name})")]
    Client {
        server_name: String,
        error: HandshakeError,
        distrust: Option<DistrustReason>,
    },
}

impl InterceptError {
    /// Which side failed.
    pub fn side(&self) -> Side {
        match self {
            InterceptError::BadName(_)
            | InterceptError::LegacyClient
            | InterceptError::Client { .. } => Side::Client,
            InterceptError::Upstream(e) => e.side(),
            InterceptError::Internal(_) => Side::Internal,
        }
    }

    /// The distrust classification, for [`crate::DistrustTracker::record`].
    pub fn distrust(&self) -> Option<DistrustReason> {
        match self {
            InterceptError::Client { distrust, .. } => *distrust,
            _ => None,
        }
    }
}

/// Runs the intercept sequence (see the module docs) for a peeked `hello`, using `upstream_tcp`
/// already connected to the original destination.
pub async fn intercept(
    hello: Hello,
    upstream_tcp: TcpStream,
    issuer: &LeafIssuer,
    upstream: &UpstreamTls,
) -> Result<Intercepted, InterceptError> {
    intercept_serving(hello, upstream_tcp, issuer, upstream, &[]).await
}

/// [`intercept`], also offering the client the protocols in `also_serve` (e.g. `h2`, which the
/// proxy serves itself and forwards as HTTP/1.1) after the one the upstream selected. The
/// leaf's ALPN list keeps the upstream's choice first, so a client offering both keeps that.
pub async fn intercept_serving(
    hello: Hello,
    upstream_tcp: TcpStream,
    issuer: &LeafIssuer,
    upstream: &UpstreamTls,
    also_serve: &[Vec<u8>],
) -> Result<Intercepted, InterceptError> {
    let no_sni = match upstream_tcp.peer_addr() {
        Ok(addr) => ServerTarget::Ip(addr.ip().to_canonical()),
        Err(e) => {
            hello.reject(AlertDescription::InternalError).await;
            return Err(InterceptError::Internal(format!(
                "upstream socket has no peer address: {e}"
            )));
        }
    };
    intercept_over(hello, upstream_tcp, no_sni, issuer, upstream, also_serve).await
}

/// [`intercept_serving`] over any streams: `upstream_io` already leads to the server (a
/// socket, or a proxy's `CONNECT` tunnel), and `no_sni` is the name the upstream is
/// verified against when the client sent no SNI (the destination's address for a socket,
/// the tunnel's host for a tunnel).
pub async fn intercept_over<C, U>(
    hello: Hello<C>,
    upstream_io: U,
    no_sni: ServerTarget,
    issuer: &LeafIssuer,
    upstream: &UpstreamTls,
    also_serve: &[Vec<u8>],
) -> Result<Intercepted<C, U>, InterceptError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    if !hello.shares_cipher_suite() {
        hello.reject(AlertDescription::HandshakeFailure).await;
        return Err(InterceptError::LegacyClient);
    }
    let target = match hello.sni() {
        Some(sni) => match validate_server_name(sni) {
            Ok(t) => t,
            Err(e) => {
                hello.reject(AlertDescription::UnrecognisedName).await;
                return Err(InterceptError::BadName(e));
            }
        },
        None => no_sni,
    };

    let offer = upstream.filter_alpn(hello.alpn());
    let (upstream_stream, upstream_info) = match upstream
        .connect_target(upstream_io, &target, &offer)
        .await
    {
        Ok(ok) => ok,
        Err(e) => {
            tracing::info!(server = %target, error = %e, "upstream TLS refused; failing the client handshake, no leaf minted");
            hello.reject(AlertDescription::HandshakeFailure).await;
            return Err(InterceptError::Upstream(e));
        }
    };

    let mut leaf_alpn: Vec<Vec<u8>> = upstream_info.alpn.iter().cloned().collect();
    for p in also_serve {
        if hello.alpn().contains(p) && !leaf_alpn.contains(p) {
            leaf_alpn.push(p.clone());
        }
    }
    let config: Arc<rustls::ServerConfig> =
        match issuer.server_config_for_target(&target, &leaf_alpn) {
            Ok(c) => c,
            Err(e) => {
                hello.reject(AlertDescription::InternalError).await;
                return Err(InterceptError::Internal(e.to_string()));
            }
        };

    let sni = hello.sni().map(str::to_owned);
    let client_alpn = hello.alpn().to_vec();
    match hello.accept(config).await {
        Ok(client) => {
            let (_, conn) = client.get_ref();
            let info = TlsInfo {
                sni,
                server_name: target.to_string(),
                client_alpn,
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                client_version: version_name(conn.protocol_version()),
                upstream: upstream_info,
            };
            Ok(Intercepted {
                client,
                upstream: upstream_stream,
                info,
            })
        }
        Err(error) => {
            let distrust = classify_client_abort(&error);
            Err(InterceptError::Client {
                server_name: target.to_string(),
                error,
                distrust,
            })
        }
    }
}
