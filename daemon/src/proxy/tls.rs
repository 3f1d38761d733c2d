//! The TLS branch of the data path: intercept HTTPS to MCP servers, or pass it through untouched.
//!
//! Why a module of its own: terminating TLS is the one place where mcpwatch could make a
//! connection *less* safe than it was, so every decision about it sits here, in order:
//!
//! 1. read the ClientHello (SNI, ALPN) under one deadline, recording the bytes
//!    ([`mcpwatch_tls::read_client_hello`]); a hostile or truncated hello just closes;
//! 2. decide: the `[tls]` scope (never / always / default), the in-scope process list, the
//!    ALPN we can carry, and the distrust back-off for this process (pid + start time) and
//!    host;
//! 3. pass through: replay the recorded bytes upstream and relay, byte-identical: the client
//!    sees the upstream's own certificate;
//! 4. intercept ([`mcpwatch_tls::intercept`]): verified upstream TLS with the same server name
//!    first, and only then a leaf from the local CA for the client. The plaintext then runs
//!    through the same MCP-aware HTTP path as plain HTTP ([`super::http::serve_io`], or
//!    [`super::http::serve_h2`] when the client picked ALPN `h2`), with `https` endpoints and
//!    TLS details on every record.
//!
//! Failures are recorded, never papered over: an invalid upstream certificate becomes an audit
//! record (status `transport_error` with the reason and the presented certificate) and the
//! client's handshake fails with nothing forwarded; a client that rejects the mcpwatch CA is
//! remembered per process and host ([`mcpwatch_tls::DistrustTracker`]), reported by `mcpwatch status`, and
//! passed through for a back-off period so the agent keeps working, EXCEPT toward
//! destinations governed in enforce mode (registered with mode enforce, or a global enforce
//! policy), where it is refused and audited unless `tls.distrust = "pass_through"`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcpwatch_api::{AuditRecord, Endpoint, TlsDetails};
use mcpwatch_policy::Mode;
use mcpwatch_tls::{
    ClientProcess, Hello, InterceptError, Intercepted, ServerTarget, TlsAction, TlsError, TlsInfo, UpstreamTlsError,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::relay;
use super::ctx::ConnCtx;
use super::tunnel::{self, Rewind};
use super::forward::{BoxIo, ForwardError, Reconnect};
use super::http;
use super::upstream;
use crate::config::DistrustAction;
use crate::interception::{client_process, distrust_message};
use crate::state::{Counters, Shared};

/// Handles a connection whose first bytes look like a TLS record. Without a TLS runtime
/// (`[tls] enabled = false`) it is relayed untouched.
pub async fn handle(shared: Arc<Shared>, ctx: ConnCtx, client: TcpStream, upstream: TcpStream) {
    let Some(rt) = shared.tls.as_ref() else {
        Counters::inc(&shared.counters.passthrough);
        return relay::relay(&shared, client, upstream).await;
    };
    // The socket stays owned by the hello, then by the TLS stream served below.
    let client_fd = std::os::fd::AsRawFd::as_raw_fd(&client);
    let hello = match mcpwatch_tls::read_client_hello(client, rt.handshake_timeout()).await {
        Ok(h) => h,
        Err(e) => {
            // Nothing usable arrived; nothing was forwarded. The client gets a closed socket
            // (rustls already sent an alert where the hello was malformed).
            tracing::info!(conn = ctx.id, peer = %ctx.peer, dst = %ctx.origin.dst, error = %e, "no usable ClientHello; closing");
            return;
        }
    };
    let exe = process_label(&ctx);
    let sni = hello.sni().map(str::to_owned);
    let host = sni.clone().unwrap_or_else(|| ctx.ip_key().to_owned());
    let (action, why) = rt.decide(&hello, ctx.origin.process.as_deref(), ctx.origin.dst.ip(), &host, || tls_mode(&shared, &ctx, &host) == Mode::Enforce);
    tracing::debug!(conn = ctx.id, sni = ?hello.sni(), %host, ?action, why, "TLS connection");
    match action {
        TlsAction::PassThrough => {
            if !passes_toward_governed(&shared, &ctx, &host, sni.as_deref()).await {
                return;
            }
            Counters::inc(&shared.counters.passthrough);
            pass_through(&shared, hello, upstream, rt.handshake_timeout()).await;
        }
        TlsAction::Intercept => {
            let no_sni = ServerTarget::Ip(ctx.origin.dst.ip().to_canonical());
            let leg = Leg { client_fd: Some(client_fd), no_sni, tunnel: false };
            intercept(shared.clone(), ctx, hello, upstream, leg, Names { exe, host, sni }).await
        }
    }
}

/// TLS inside a `CONNECT` tunnel (`first`: the client's first bytes, already read; the
/// upstream is the proxy's tunnel). The same decision as on a socket, with the tunnel's host
/// standing in for the destination's address: an intercepted connection is served like any
/// other (verified TLS through the tunnel first, then a leaf for the client; no reconnect).
/// A hello whose SNI is outside the `[tls]` scope on a tunnel to a host inside it would
/// take that host out of inspection by the client's choice: it is recorded, and refused in
/// enforce mode. Other TLS that is not intercepted goes through
/// [`tunnel::passes_uninspected`]: refused in enforce mode toward a governed destination,
/// relayed as it came otherwise.
pub async fn in_tunnel(shared: Arc<Shared>, ctx: ConnCtx, first: Vec<u8>, client: BoxIo, server: BoxIo) {
    let Some(rt) = shared.tls.as_ref() else {
        if tunnel::passes_uninspected(&shared, &ctx, "TLS (interception is off)", Some(TlsDetails::default())) {
            tunnel::relay_rewound(&shared, first, client, server).await;
        }
        return;
    };
    let hello = match mcpwatch_tls::read_client_hello(Rewind::new(first, client), rt.handshake_timeout()).await {
        Ok(h) => h,
        Err(e) => {
            tracing::info!(conn = ctx.id, peer = %ctx.peer, dst = %ctx.origin.dst, error = %e, "no usable ClientHello inside a CONNECT tunnel; closing");
            return;
        }
    };
    let exe = process_label(&ctx);
    let sni = hello.sni().map(str::to_owned);
    let dst_ip = ctx.origin.dst.ip().to_canonical();
    let tunnel_host = ctx.tunnel_host.clone().unwrap_or_else(|| dst_ip.to_string());
    let host = sni.clone().unwrap_or_else(|| tunnel_host.clone());
    let (action, why) = rt.decide(&hello, ctx.origin.process.as_deref(), ctx.origin.dst.ip(), &host, || tls_mode(&shared, &ctx, &host) == Mode::Enforce);
    let tunnel_ip = tunnel_host.parse::<std::net::IpAddr>().ok();
    let tunnel_in_scope = match tunnel_ip {
        Some(ip) => rt.scope.decide_target(None, ip.to_canonical()),
        None => rt.scope.decide(Some(&tunnel_host)),
    } == TlsAction::Intercept;
    tracing::debug!(conn = ctx.id, sni = ?sni, %tunnel_host, ?action, why, "TLS inside a CONNECT tunnel");
    match action {
        TlsAction::Intercept => {
            let no_sni = match tunnel_ip {
                Some(ip) => ServerTarget::Ip(ip.to_canonical()),
                None => match mcpwatch_tls::validate_server_name(&tunnel_host) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::info!(conn = ctx.id, error = %e, "CONNECT host is not a server name; closing");
                        return;
                    }
                },
            };
            let leg = Leg { client_fd: None, no_sni, tunnel: true };
            intercept(shared.clone(), ctx, hello, server, leg, Names { exe, host, sni }).await;
        }
        TlsAction::PassThrough => {
            let sni_text = sni.as_deref().map_or_else(|| "no SNI".to_string(), |s| format!("SNI `{}`", s.chars().take(253).collect::<String>()));
            let details = Some(TlsDetails { sni, ..Default::default() });
            let passes = if tunnel_in_scope && why == "tls scope" {
                let mode = tls_mode(&shared, &ctx, &tunnel_host);
                let what = format!("TLS ({sni_text}, outside the [tls] scope)");
                tunnel::passes_uninspected_in(&shared, &ctx, mode, &what, "a host the scope intercepts", details)
            } else {
                tunnel::passes_uninspected(&shared, &ctx, &format!("TLS ({sni_text}), not intercepted,"), details)
            };
            if passes {
                let (client, recorded) = hello.into_passthrough();
                tunnel::relay_rewound(&shared, recorded, Box::new(client), server).await;
            }
        }
    }
}

/// TLS that is not intercepted, toward a destination where MCP was seen or a `[[server]]`
/// entry matches the address: whatever it carries is not inspected. A client could pick an
/// SNI the `[tls]` scope does not list (or none) to reach a server that answers any name.
/// So it is audited in every mode, and in enforce mode it is relayed only when the
/// destination proves the name: without SNI (or with an IP literal, no name a shared front
/// end could route by) it is refused like any opaque protocol; with a named SNI, mcpwatch
/// makes its own verified handshake for that name with the destination
/// ([`crate::interception::TlsRuntime::proves_name`]) and relays only if the certificate
/// verifies (a shared front end serving another site), refusing when it does not (the MCP
/// server answering whatever name it is asked for). `false`: refused.
async fn passes_toward_governed(shared: &Shared, ctx: &ConnCtx, host: &str, sni: Option<&str>) -> bool {
    let Some(mode) = relay::governed_mode_resolved(shared, ctx.origin.dst).await else { return true };
    let named = sni.filter(|s| s.parse::<std::net::IpAddr>().is_err());
    let (refused, verdict) = match (mode, named) {
        (Mode::Enforce, None) => (true, "refused (enforce mode)".to_string()),
        (Mode::Enforce, Some(name)) => match prove_name(shared, ctx.origin.dst, name).await {
            Ok(()) => (false, "relayed uninspected (the destination proved the name)".to_string()),
            Err(why) => (true, format!("refused (enforce mode): the destination did not prove the name: {why}")),
        },
        _ => (false, "relayed uninspected".to_string()),
    };
    let what = match sni {
        Some(s) => format!("TLS with SNI `{}`", s.chars().take(253).collect::<String>()),
        None => "TLS without SNI".to_string(),
    };
    let reason = format!("{what}, not intercepted, toward a governed MCP destination: {verdict}");
    tracing::warn!(conn = ctx.id, dst = %ctx.origin.dst, "{reason}");
    let mut rec = connection_record(shared, ctx, host, reason.clone());
    rec.tls = Some(TlsDetails { sni: sni.map(str::to_owned), ..Default::default() });
    crate::record::write_closed(shared, rec, mcpwatch_api::CallStatus::TransportError { reason });
    if refused {
        Counters::inc(&shared.counters.refused_protocol);
    }
    !refused
}

/// Does `dst` answer as `name`? A remembered proof, else a verified handshake of mcpwatch's
/// own on a new connection.
async fn prove_name(shared: &Shared, dst: SocketAddr, name: &str) -> Result<(), String> {
    let Some(rt) = shared.tls.as_ref() else { return Err("TLS interception is disabled".into()) };
    if rt.proofs.proven(dst, name, Instant::now()) {
        return Ok(());
    }
    let tcp = upstream::connect(dst, shared.config.mark, shared.config.limits.connect_timeout).await.map_err(|e| e.to_string())?;
    rt.proves_name(dst, name, tcp).await
}

/// Replays the recorded hello upstream and relays both ways, untouched.
async fn pass_through(shared: &Shared, hello: Hello, mut upstream: TcpStream, deadline: Duration) {
    let (client, recorded) = hello.into_passthrough();
    match tokio::time::timeout(deadline, upstream.write_all(&recorded)).await {
        Ok(Ok(())) => relay::relay(shared, client, upstream).await,
        Ok(Err(e)) => tracing::info!(error = %e, "upstream closed before the ClientHello was replayed"),
        Err(_) => tracing::info!("upstream did not take the replayed ClientHello within {deadline:?}"),
    }
}

/// Who and where, for records and the distrust tracker.
struct Names {
    exe: String,
    /// The SNI, else the destination IP.
    host: String,
    sni: Option<String>,
}

/// What an intercepted connection's legs are, beyond their streams.
struct Leg {
    /// The client's socket, when the client stream is one (framing checks read its queue).
    client_fd: Option<std::os::fd::RawFd>,
    /// The name the upstream is verified against when the client sent no SNI.
    no_sni: ServerTarget,
    /// The upstream is a proxy's `CONNECT` tunnel: it cannot be dialled again.
    tunnel: bool,
}

async fn intercept<C: super::forward::Io, U: super::forward::Io>(shared: Arc<Shared>, mut ctx: ConnCtx, hello: Hello<C>, upstream_io: U, leg: Leg, names: Names) {
    let Names { exe, host, .. } = &names;
    let Some(rt) = shared.tls.as_ref() else { return };
    let serve_h2 = [mcpwatch_tls::ALPN_H2.to_vec()];
    match mcpwatch_tls::intercept_over(hello, upstream_io, leg.no_sni, &rt.issuer, &rt.upstream, &serve_h2).await {
        Ok(Intercepted { client, upstream, info }) => {
            let reconnect = if leg.tunnel {
                super::tunnel::no_reconnect(ctx.origin.dst)
            } else {
                match tls_reconnect(&shared, ctx.origin.dst, &info) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(conn = ctx.id, error = %e, "internal: cannot rebuild the upstream server name; closing");
                        return;
                    }
                }
            };
            tracing::debug!(conn = ctx.id, server = %info.server_name, upstream = %info.upstream.cert.subject, "TLS intercepted");
            ctx.scheme = "https";
            ctx.tls = Some(Arc::new(details(&info)));
            if info.alpn.as_deref() == Some(mcpwatch_tls::ALPN_H2) {
                http::serve_h2(shared.clone(), ctx, client, Box::new(upstream) as BoxIo, reconnect).await;
            } else {
                http::serve_io(shared.clone(), ctx, client, leg.client_fd, Box::new(upstream) as BoxIo, reconnect).await;
            }
        }
        Err(InterceptError::Upstream(e)) => record_upstream_failure(&shared, &ctx, &names, &e),
        Err(e @ InterceptError::Client { distrust: Some(_), .. }) => {
            // Unattributed connections are remembered for the warning under pid 0, which
            // never backs off (`client_process` is `None` for them).
            let client = client_process(ctx.origin.process.as_deref()).unwrap_or(ClientProcess { pid: 0, start_ticks: 0 });
            rt.distrust.record(client, exe, host, Instant::now());
            let message = distrust_message(exe, host);
            let refused = rt.distrust_action() == DistrustAction::Refuse && tls_mode(&shared, &ctx, host) == Mode::Enforce;
            if refused {
                Counters::inc(&shared.counters.tls_distrust_refused);
            }
            tracing::warn!(conn = ctx.id, error = %e, refused, "{message}");
            record_distrust(&shared, &ctx, &names, &message, &e, refused);
        }
        Err(e @ InterceptError::Internal(_)) => {
            tracing::warn!(conn = ctx.id, %host, error = %e, "TLS interception failed; connection closed")
        }
        Err(e) => tracing::info!(conn = ctx.id, %host, error = %e, "client TLS handshake failed; connection closed"),
    }
}

/// A new upstream connection for the same destination and server name, verified again.
fn tls_reconnect(shared: &Arc<Shared>, dst: SocketAddr, info: &TlsInfo) -> Result<Reconnect, TlsError> {
    let target: ServerTarget = mcpwatch_tls::validate_server_name(&info.server_name)?;
    let alpn: Vec<Vec<u8>> = info.upstream.alpn.iter().cloned().collect();
    let shared = shared.clone();
    Ok(Arc::new(move || {
        let shared = shared.clone();
        let target = target.clone();
        let alpn = alpn.clone();
        Box::pin(async move {
            let limits = &shared.config.limits;
            let tcp = upstream::connect(dst, shared.config.mark, limits.connect_timeout).await?;
            let Some(rt) = shared.tls.as_ref() else {
                return Err(ForwardError::Reconnect { dst, reason: "TLS interception disabled".into() });
            };
            let (stream, _) = rt
                .upstream
                .connect_target(tcp, &target, &alpn)
                .await
                .map_err(|e| ForwardError::Reconnect { dst, reason: e.to_string() })?;
            Ok(Box::new(stream) as BoxIo)
        })
    }))
}

/// The audit view of an intercepted connection.
pub fn details(info: &TlsInfo) -> TlsDetails {
    let up = &info.upstream;
    TlsDetails {
        sni: info.sni.clone(),
        client_version: Some(info.client_version.clone()),
        upstream_version: Some(up.version.clone()),
        alpn: info.alpn.as_deref().map(|a| String::from_utf8_lossy(a).into_owned()),
        upstream_subject: Some(up.cert.subject.clone()),
        upstream_issuer: Some(up.cert.issuer.clone()),
        upstream_fingerprint: Some(up.cert.fingerprint_sha256.clone()),
        insecure: up.insecure,
        resumed: up.resumed,
    }
}

/// `exe`, else `comm`, else a placeholder: the distrust key and the name in warnings.
fn process_label(ctx: &ConnCtx) -> String {
    match ctx.origin.process.as_deref() {
        Some(p) => p.exe.clone().unwrap_or_else(|| p.comm.clone()),
        None => "(unknown process)".to_string(),
    }
}

/// A record for a TLS connection that never carried a message.
fn connection_record(shared: &Shared, ctx: &ConnCtx, host: &str, reason: String) -> AuditRecord {
    crate::record::connection(shared, &ctx.origin, "https", "tls", host, &reason)
}

/// The rollout mode of a TLS destination: a registered server's mode (by SNI host or by the
/// inventory's knowledge of the address), else the policy's.
fn tls_mode(shared: &Shared, ctx: &ConnCtx, host: &str) -> Mode {
    let loaded = shared.governance.current();
    let port = ctx.origin.dst.port();
    let key = Endpoint { scheme: "https".into(), host: host.to_string(), port, path: "/".into() }.key();
    let target = mcpwatch_policy::Target { endpoint: &key, host, port, path: "/" };
    let by_name = loaded.policy.server_for(&target).map(|d| d.mode.unwrap_or(loaded.policy.mode()));
    match (relay::governed_mode(shared, ctx.origin.dst), by_name) {
        (Some(a), Some(b)) => relay::strictest(Some(a), b),
        (Some(m), None) | (None, Some(m)) => m,
        (None, None) => loaded.policy.mode(),
    }
}

fn record_upstream_failure(shared: &Shared, ctx: &ConnCtx, names: &Names, e: &UpstreamTlsError) {
    let host = names.host.as_str();
    tracing::warn!(conn = ctx.id, %host, dst = %ctx.origin.dst, error = %e, "upstream TLS refused; client handshake failed, nothing forwarded");
    let mut rec = connection_record(shared, ctx, host, e.to_string());
    let mut tls = TlsDetails { sni: names.sni.clone(), ..Default::default() };
    if let UpstreamTlsError::Certificate { problem, presented, .. } = e {
        rec.notes.push(format!("upstream certificate refused ({problem}): no leaf minted, client handshake failed, nothing forwarded"));
        if let Some(cert) = presented {
            tls.upstream_subject = Some(cert.subject.clone());
            tls.upstream_issuer = Some(cert.issuer.clone());
            tls.upstream_fingerprint = Some(cert.fingerprint_sha256.clone());
        }
    } else {
        rec.notes.push("upstream TLS failed: client handshake failed, nothing forwarded".into());
    }
    rec.tls = Some(tls);
    let _ = shared.begin_record(&rec);
    let alert = match e {
        UpstreamTlsError::Certificate { problem, presented, .. } => format!(
            "TLS: upstream certificate for {host} refused ({problem}{}); connections fail",
            presented.as_ref().map(|c| format!(", presented sha256 {}", c.fingerprint_sha256)).unwrap_or_default()
        ),
        other => format!("TLS: upstream {host} failed: {other}"),
    };
    alert_inventory(shared, &rec.server, alert);
}

fn record_distrust(shared: &Shared, ctx: &ConnCtx, names: &Names, message: &str, e: &InterceptError, refused: bool) {
    let mut rec = connection_record(shared, ctx, &names.host, message.to_string());
    rec.notes.push(e.to_string());
    rec.notes.push(if refused {
        "refused: the destination is governed in enforce mode (tls.distrust = refuse); this client must trust the mcpwatch CA (`mcpwatch ca install`)".to_string()
    } else if client_process(ctx.origin.process.as_deref()).is_some() {
        "this process is passed through uninspected during the back-off (destination not enforced, or tls.distrust = pass_through)".to_string()
    } else {
        "unattributed connection: no back-off, it keeps failing".to_string()
    });
    rec.tls = Some(TlsDetails { sni: names.sni.clone(), ..Default::default() });
    let _ = shared.begin_record(&rec);
    alert_inventory(shared, &rec.server, message.to_string());
}

/// Adds `alert` to every inventory server under `origin` (`https://host:port`), or to an entry
/// for the origin itself when no MCP endpoint there has been seen yet (the failure happened
/// before any HTTP request, so the path is unknown).
fn alert_inventory(shared: &Shared, origin: &str, alert: String) {
    let prefix = format!("{origin}/");
    let endpoints: Vec<String> = shared
        .inventory
        .list()
        .into_iter()
        .map(|s| s.endpoint)
        .filter(|e| e.starts_with(&prefix))
        .collect();
    if endpoints.is_empty() {
        shared.inventory.add_alert(origin, alert);
    } else {
        for e in endpoints {
            shared.inventory.add_alert(&e, alert.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    //! The TLS branch through a real proxy (`proxy::run` with a static resolver, no root): an
    //! HTTPS upstream whose certificate comes from a test CA the daemon trusts, one from a CA
    //! it does not, and clients that do and do not trust the mcpwatch CA.

    use std::net::SocketAddr;
    use std::sync::Arc;

    use mcpwatch_api::{AuditFilter, AuditRecord, CallStatus};
    use mcpwatch_tls::rustls::pki_types::{CertificateDer, ServerName};
    use mcpwatch_tls::rustls::{self, ClientConfig, RootCertStore};
    use mcpwatch_tls::tokio_rustls::{TlsAcceptor, TlsConnector};
    use mcpwatch_tls::{LeafIssuer, LeafOptions, LocalCa};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::config::Config;
    use crate::interception::TlsRuntime;
    use crate::resolve::StaticResolver;

    const RESULT: &str = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hi over tls"}]}}"#;

    /// An HTTPS server presenting a leaf of `ca` for localhost; answers each request once.
    async fn upstream(ca: Arc<LocalCa>) -> SocketAddr {
        let issuer = LeafIssuer::new(ca, LeafOptions::default()).expect("issuer");
        let config = issuer.server_config_for("localhost", &[mcpwatch_tls::ALPN_HTTP1_1.to_vec()]).expect("config");
        let acceptor = TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !request_complete(&buf) {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{RESULT}",
                        RESULT.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    fn request_complete(buf: &[u8]) -> bool {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
            .unwrap_or(0);
        buf.len() >= end + 4 + len
    }

    /// A proxy in front of `dst`; stops when the returned sender is dropped.
    async fn proxy(shared: Arc<Shared>, dst: SocketAddr) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::proxy::run(shared, vec![listener], Arc::new(StaticResolver { dst }), async {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    fn connector(anchor: CertificateDer<'static>) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(anchor).expect("anchor");
        let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    /// One MCP tools/call over TLS; the response text, or the handshake/IO error.
    async fn call(addr: SocketAddr, anchor: CertificateDer<'static>) -> Result<(String, Vec<u8>), std::io::Error> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = connector(anchor).connect(name, tcp).await?;
        let presented = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
        let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;
        let req = format!(
            "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
             mcp-protocol-version: 2025-11-25\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        Ok((String::from_utf8_lossy(&out).into_owned(), presented))
    }

    fn records(shared: &Shared) -> Vec<AuditRecord> {
        shared.run_deferred();
        shared.store.query(&AuditFilter { limit: Some(1000), ..Default::default() }).expect("query")
    }

    /// The records once `done` holds for them (bounded): a refusal is recorded after the
    /// client's socket is already closed, and written behind by the group commit, so a
    /// client that has seen its failure cannot assume the record is in the store yet.
    async fn records_when(shared: &Shared, done: impl Fn(&[AuditRecord]) -> bool) -> Vec<AuditRecord> {
        let mut recs = records(shared);
        for _ in 0..200 {
            if done(&recs) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            recs = records(shared);
        }
        recs
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn intercepts_refuses_invalid_upstreams_and_reports_distrusting_clients() {
        // Fail, never hang, if a step waits forever.
        tokio::time::timeout(Duration::from_secs(60), scenario()).await.expect("the scenario hung");
    }

    async fn scenario() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let trusted = Arc::new(LocalCa::load_or_create(&tmp.path().join("up"), "upstream-test").expect("ca"));
        let untrusted = Arc::new(LocalCa::load_or_create(&tmp.path().join("rogue"), "rogue").expect("ca"));
        let good = upstream(trusted.clone()).await;
        let bad = upstream(untrusted).await;

        let mut config = Config { state_dir: tmp.path().join("state"), ..Config::default() };
        config.tls.scope.always = vec!["localhost".into()];
        config.tls.extra_anchors = vec![trusted.cert_path().to_path_buf()];
        config.tls.system_roots = false;
        config.tls.handshake_timeout = Duration::from_secs(5);
        let store = mcpwatch_audit::Store::open(&config.state_dir, mcpwatch_audit::StoreOptions::default()).expect("store");
        let rt = TlsRuntime::build(&config.tls, &config.state_dir, "unit-test").expect("tls runtime");
        let our_ca = rt.issuer.ca().cert_der();
        assert!(
            rt.upstream.anchor_count() == 1,
            "only the configured anchor; never our own CA: {}",
            rt.upstream.anchor_count()
        );
        let shared = Shared::with_tls(config, store, Some(rt));
        // The audit flusher `crate::run` starts next to the proxy (records are durable before
        // forwarding).
        let flusher = tokio::spawn(shared.clone().flush_forever());
        let (to_good, _stop_good) = proxy(shared.clone(), good).await;
        let (to_bad, _stop_bad) = proxy(shared.clone(), bad).await;
        // Intercepted: the client sees our leaf, the call is audited with TLS details.
        let (resp, presented) = call(to_good, our_ca.clone()).await.expect("intercepted call");
        assert!(resp.contains("hi over tls"), "{resp}");
        let ca_spki = shared.tls.as_ref().map(|t| t.issuer.ca().public_key_der()).unwrap_or_default();
        let (_, leaf) = x509_parser::parse_x509_certificate(&presented).expect("leaf parses");
        assert_ne!(leaf.public_key().raw, ca_spki.as_slice(), "the leaf has its own key");
        let recs = records(&shared);
        let rec = recs.iter().find(|r| r.method.as_deref() == Some("tools/call")).unwrap_or_else(|| panic!("{recs:#?}"));
        assert_eq!(rec.scheme, "https");
        assert_eq!(rec.server, format!("https://localhost:{}/mcp", good.port()));
        let t = rec.tls.as_ref().expect("tls details");
        assert_eq!(t.sni.as_deref(), Some("localhost"));
        assert!(t.upstream_issuer.as_deref().unwrap_or_default().contains("upstream-test"), "{t:?}");
        assert!(!t.insecure);
        // Upstream from an unknown CA: the client's handshake fails, the refusal is audited.
        assert!(call(to_bad, our_ca.clone()).await.is_err(), "no leaf for an invalid upstream");
        let origin = format!("https://localhost:{}", bad.port());
        let alerted = || shared.inventory.list().iter().any(|s| s.endpoint == origin && !s.alerts.is_empty());
        let recs = records_when(&shared, |r| r.iter().any(|r| r.server == origin) && alerted()).await;
        let rec = recs.iter().find(|r| r.server == origin).unwrap_or_else(|| panic!("{recs:#?}"));
        assert!(matches!(&rec.status, CallStatus::TransportError { reason } if reason.contains("unknown CA")), "{rec:?}");
        assert!(alerted(), "{:?}", shared.inventory.list());
        // A client trusting only the upstream's CA rejects our leaf: reported, then backed off
        // (passed through, so it sees and accepts the upstream's own certificate).
        assert!(call(to_good, trusted.cert_der()).await.is_err(), "distrusting client fails once");
        // The daemon sees the client's alert after the client already gave up: wait for it.
        let mut warnings = Vec::new();
        for _ in 0..200 {
            warnings = shared.tls.as_ref().map(|t| t.warnings()).unwrap_or_default();
            if !warnings.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(warnings.iter().any(|w| w.contains("TLS not inspectable") && w.contains("for localhost")), "{warnings:?}");
        assert!(crate::status(&shared, &[]).warnings.iter().any(|w| w.contains("TLS not inspectable")));
        // Unattributed (no process identity): never backed off, so it keeps failing rather
        // than being passed through uninspected (the back-off is per process, never global).
        let passthrough_before = shared.counts().passthrough;
        assert!(call(to_good, trusted.cert_der()).await.is_err(), "no back-off without a process identity");
        assert_eq!(shared.counts().passthrough, passthrough_before);
        flusher.abort();
    }
}
