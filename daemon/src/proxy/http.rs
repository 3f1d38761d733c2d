//! hyper glue: serve the client's connection as HTTP/1.1 or HTTP/2 and forward each request
//! over HTTP/1.1 to the original destination.
//!
//! HTTP/1.1: one upstream connection per client connection mirrors the client's own
//! keep-alive: the server sees the same connection pattern it would without us, except that
//! an upstream connection left idle when its client connection ends may be kept for the same
//! process's next connection to the same destination ([`pool`]). HTTP/2
//! (prior knowledge on plain TCP, or ALPN `h2` after TLS interception) multiplexes streams
//! that may be long-lived (SSE), so each request gets its own upstream HTTP/1.1 connection
//! (the first one reuses the connection opened before classification); the request is
//! rewritten to origin form with a `Host` taken from `:authority`. Either way the same
//! [`exchange::handle`] governs every request. If the server closes
//! its side (`Connection: close`), the next request reconnects to the same destination.
//! Host and all other header values are forwarded unchanged (servers check Host against DNS
//! rebinding); header names keep their case except on connections toward a destination
//! known to speak MCP ([`keep_header_case`], `[http] header_case`); upgrades (e.g.
//! WebSocket) are spliced byte-for-byte after the 101.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::ctx::ConnCtx;
use super::exchange;
use super::lifecycle::{self, FinSignals};
use super::forward::{tcp_reconnect, BoxIo, Drivers, Io, Reconnect, SharedUpstream, UpstreamConn};
use super::pool;
use crate::state::{Counters, Shared};
use crate::config::HeaderCase;

/// Concurrent HTTP/2 streams per client connection (each has its own upstream connection).
pub const H2_MAX_STREAMS: u32 = 8;

/// Which HTTP version the client speaks on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// Serve a plain TCP client connection. `keep`: the key under which its upstream stream is
/// kept for reuse when the client connection ends idle ([`pool`]; HTTP/1.1 only).
pub async fn serve(shared: Arc<Shared>, ctx: ConnCtx, client: TcpStream, upstream: TcpStream, proto: Proto, keep: Option<pool::Key>) {
    let reconnect = tcp_reconnect(&shared, ctx.origin.dst);
    match proto {
        Proto::Http1 => {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&client);
            match keep {
                Some(key) => {
                    let (io, handle) = pool::reclaimable(upstream);
                    serve_io_keeping(shared, ctx, client, Some(fd), Box::new(io), reconnect, Some((key, handle))).await
                }
                None => serve_io(shared, ctx, client, Some(fd), Box::new(upstream), reconnect).await,
            }
        }
        Proto::Http2 => serve_h2(shared, ctx, client, Box::new(upstream), reconnect).await,
    }
}

/// Serve HTTP/2 on any client stream; every request is governed by [`exchange::handle`] and
/// forwarded over its own upstream HTTP/1.1 connection.
pub async fn serve_h2(shared: Arc<Shared>, ctx: ConnCtx, client: impl Io, upstream: BoxIo, reconnect: Reconnect) {
    Counters::inc(&shared.counters.http2_connections);
    let dst = ctx.origin.dst;
    let first = Arc::new(std::sync::Mutex::new(Some(upstream)));
    let ctx = Arc::new(ctx);
    let (drivers, drive) = Drivers::new();
    let svc = {
        let shared = shared.clone();
        service_fn(move |req: Request<hyper::body::Incoming>| {
            let shared = shared.clone();
            let ctx = ctx.clone();
            let first = first.lock().map(|mut f| f.take()).unwrap_or(None);
            let up: SharedUpstream =
                Arc::new(Mutex::new(UpstreamConn::new(dst, first, reconnect.clone(), Arc::default(), drivers.clone())));
            async move {
                Counters::inc(&shared.counters.http_requests);
                Ok::<_, Infallible>(exchange::handle(shared, ctx, up, h2_to_h1(req)).await)
            }
        })
    };
    let served = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(TokioTimer::new())
        // Each stream holds its own upstream connection: keep the fan-out per admitted
        // client connection small (the per-process budget counts client connections).
        .max_concurrent_streams(H2_MAX_STREAMS)
        // Rapid Reset (CVE-2023-44487, threat case RE-004): a client that opens and cancels
        // streams faster than they are served gets GOAWAY ENHANCE_YOUR_CALM. These are h2's
        // defaults, stated here so that no later change loses them.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024))
        .serve_connection(TokioIo::new(client), svc);
    let mut drive = drive;
    let res = tokio::select! {
        biased;
        r = served => r,
        never = &mut drive => match never {},
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "HTTP/2 client connection ended with an error");
    }
}

/// An HTTP/2 request as an HTTP/1.1 server expects it: origin-form target, `Host` from
/// `:authority` (an explicit `Host` header wins, as RFC 9113 §8.3.1 allows both).
pub fn h2_to_h1<B>(mut req: Request<B>) -> Request<B> {
    if !req.headers().contains_key(http::header::HOST)
        && let Some(v) = req.uri().authority().and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(http::header::HOST, v);
    }
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    if let Ok(uri) = pq.parse() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_11;
    req
}

/// Serve HTTP/1.1 on any client stream, forwarding over `upstream` (and `reconnect`).
/// `client_fd` is the client's TCP socket under `client` (owned by it): once the client
/// has sent FIN or reset, the upstream's sending side is shut down too ([`lifecycle`]).
pub async fn serve_io(
    shared: Arc<Shared>,
    ctx: ConnCtx,
    client: impl Io,
    client_fd: Option<std::os::fd::RawFd>,
    upstream: BoxIo,
    reconnect: Reconnect,
) {
    serve_io_keeping(shared, ctx, client, client_fd, upstream, reconnect, None).await
}

/// Whether this connection passes header names in their sender's case (`[http]
/// header_case`): under `auto`, everywhere but toward a destination where MCP was seen.
/// Decided once per connection, before its first request: hyper's setting is per
/// connection. Names are case-insensitive, so no judgement depends on it.
fn keep_header_case(shared: &Shared, ctx: &ConnCtx) -> bool {
    match shared.config.http.header_case {
        HeaderCase::Keep => true,
        HeaderCase::Lower => false,
        HeaderCase::Auto => !shared.inventory.knows_dst(ctx.dst_key()),
    }
}

/// [`serve_io`], and when `keep` is given, its upstream socket goes to the [`pool`] at the
/// end if the upstream connection is idle then.
async fn serve_io_keeping(
    shared: Arc<Shared>,
    mut ctx: ConnCtx,
    client: impl Io,
    client_fd: Option<std::os::fd::RawFd>,
    upstream: BoxIo,
    reconnect: Reconnect,
    keep: Option<(pool::Key, pool::Reclaim)>,
) {
    let log = super::headlog::HeadLog::default();
    ctx.head_log = Some(log.clone());
    let client = super::headlog::LoggedIo::new(client, log);
    let fins: Arc<FinSignals> = Arc::default();
    let (drivers, drive) = Drivers::new();
    let mut conn = UpstreamConn::new(ctx.origin.dst, Some(upstream), reconnect, fins.clone(), drivers);
    let keep_case = keep_header_case(&shared, &ctx);
    conn.preserve_header_case(keep_case);
    if keep.is_some() {
        conn.keepable();
    }
    let up: SharedUpstream = Arc::new(Mutex::new(conn));
    let ctx_id = ctx.id;
    let ctx = Arc::new(ctx);
    let svc = {
        let shared = shared.clone();
        let up = up.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let ctx = ctx.clone();
            let up = up.clone();
            async move {
                Counters::inc(&shared.counters.http_requests);
                Ok::<_, Infallible>(exchange::handle(shared, ctx, up, req).await)
            }
        })
    };
    let res = server_http1::Builder::new()
        .preserve_header_case(keep_case)
        .title_case_headers(false)
        .keep_alive(true)
        // A transparent proxy adds nothing: no Date header the server did not send.
        .auto_date_header(false)
        // A client that half-closes after its request still gets its response.
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.limits.header_timeout)
        .serve_connection(TokioIo::new(client), svc)
        .with_upgrades();
    tokio::pin!(res);
    let mut drive = drive;
    // `client_fd` stays valid while `res` (which owns the client socket) is alive.
    let watch = async {
        match client_fd {
            Some(fd) => lifecycle::watch_client(fd).await,
            None => std::future::pending().await,
        }
    };
    let res = tokio::select! {
        biased;
        r = &mut res => r,
        never = &mut drive => match never {},
        () = watch => {
            tracing::debug!(conn = ctx_id, "client sent FIN or reset; passing it upstream");
            fins.request_all();
            tokio::select! {
                biased;
                r = &mut res => r,
                never = &mut drive => match never {},
            }
        }
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
    if let Some((key, handle)) = keep {
        keep_upstream(&shared, &up, &mut drive, key, handle);
    }
}

/// The client connection is over: its upstream socket goes to the [`pool`] if hyper's
/// connection over it is idle (see the rules there), else it closes as before.
fn keep_upstream(shared: &Shared, up: &SharedUpstream, drive: &mut super::forward::Drive, key: pool::Key, handle: pool::Reclaim) {
    use futures_util::FutureExt as _;
    let idle = |up: &SharedUpstream| up.try_lock().is_ok_and(|u| u.idle_on_first());
    // The answer's end may not have been seen by the upstream connection's future yet:
    // give it one turn (it never completes; `now_or_never` polls once).
    if !idle(up) {
        let _ = (&mut *drive).now_or_never();
        if !idle(up) {
            return;
        }
    }
    if let Some(stream) = handle.take()
        && pool::clean(&stream)
    {
        Counters::inc(&shared.counters.upstream_kept);
        pool::put(key, stream, shared.config.limits.upstream_keepalive);
    }
}
