//! One accepted connection: resolve, admit, connect upstream, classify, dispatch.
//!
//! Why a module of its own: this is where a connection is either governed (HTTP/1.x, HTTP/2,
//! TLS) or relayed untouched, so it is the first thing an attacker in the watched cgroup aims
//! at. The rule: a connection is relayed opaquely only when it is POSITIVELY something else
//! (the server spoke first, or the client's first bytes cannot start an HTTP request, an HTTP/2
//! preface or a TLS record). A slow or silent client never becomes "opaque": it waits, bounded
//! by `limits.peek_timeout`, after which the connection is CLOSED. Toward a destination the
//! policy governs (it has spoken MCP, or it is registered), anything that is not HTTP or TLS
//! follows the destination's mode: refused and audited in enforce mode, audited and relayed
//! otherwise.
//!
//! [`classify`] is pure (no I/O) and public so it can be fuzzed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mcpwatch_api::CallStatus;
use mcpwatch_policy::Mode;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::relay::{governed_mode, relay};
use super::{http, pool, upstream};
use super::ctx::ConnCtx;
use super::forward::BoxIo;
use super::tunnel::Rewind;
use crate::record;
use crate::resolve::Resolve;
use crate::state::{Counters, Shared};

/// How many client bytes the classifier looks at, at most. A prefix this long that is still
/// undecided (empty lines or one long token) goes to the HTTP parser, which rejects what it
/// cannot parse: undecided bytes are never relayed.
pub const PEEK_WINDOW: usize = 1024;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first client bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    /// Not enough bytes to tell yet (an empty prefix, a method still being typed, part of the
    /// HTTP/2 preface, a lone TLS content-type byte).
    NeedMore,
    /// An HTTP/1.x request: `token SP`, possibly after empty lines (RFC 9112 §2.2), or an
    /// undecided prefix as long as [`PEEK_WINDOW`] (the HTTP parser decides).
    Http1,
    /// The HTTP/2 prior-knowledge preface.
    Http2,
    /// A TLS handshake record (`0x16 0x03`).
    Tls,
    /// Positively not HTTP, HTTP/2 or TLS.
    NotHttp(NotHttp),
}

/// Why bytes are not HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotHttp {
    /// An SSH identification string (`SSH-`).
    Ssh,
    /// A first byte no HTTP request, HTTP/2 preface or TLS handshake starts with (binary
    /// protocols, TLS records other than a handshake, whitespace other than empty lines).
    Binary,
    /// A token not followed by a space (e.g. `SSH-2.0-x\r\n`, Redis `*1\r\n`).
    NoRequestLine,
}

/// The longest method token still classified as a possible HTTP request line.
pub const MAX_METHOD_LEN: usize = 24;

/// RFC 9110 `tchar`: the characters of an HTTP method token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Classify the first client bytes. Pure; never panics; looks at most at [`PEEK_WINDOW`] bytes.
pub fn classify(buf: &[u8]) -> Classification {
    let buf = &buf[..buf.len().min(PEEK_WINDOW)];
    let full = buf.len() >= PEEK_WINDOW;
    // Empty lines before a request line are ignored by HTTP/1 servers (httparse, llhttp):
    // a superset (any run of CR and LF) is skipped; the parser rejects what it does not take.
    let start = buf.iter().position(|b| *b != b'\r' && *b != b'\n');
    let Some(start) = start else {
        return if full { Classification::Http1 } else { Classification::NeedMore };
    };
    let rest = &buf[start..];
    if start == 0 {
        if rest[0] == 0x16 {
            return match rest.get(1) {
                None => Classification::NeedMore,
                Some(3) => Classification::Tls,
                Some(_) => Classification::NotHttp(NotHttp::Binary),
            };
        }
        if rest.starts_with(H2_PREFACE) {
            return Classification::Http2;
        }
        if H2_PREFACE.starts_with(rest) {
            return Classification::NeedMore;
        }
        if rest.starts_with(b"SSH-") {
            return Classification::NotHttp(NotHttp::Ssh);
        }
        if b"SSH-".starts_with(rest) {
            return Classification::NeedMore;
        }
    }
    // Other control bytes and whitespace before the method are skipped by lenient servers
    // too (Netty's decoder skips every ISO control or whitespace byte; Python's
    // http.server strips the line): `" POST /mcp HTTP/1.1"` is a request there. Such a
    // prefix is HTTP when a method an MCP server acts on follows it (hyper then refuses
    // the request: nothing is relayed), undecided while only such bytes have come, and
    // HTTP again when they fill the window (as empty lines do: to the parser, never relayed).
    if is_junk(rest[0]) {
        let Some(text) = rest.iter().position(|b| !is_junk(*b)) else {
            return if full { Classification::Http1 } else { Classification::NeedMore };
        };
        return after_junk(&rest[text..], full);
    }
    request_line(rest, full)
}

/// A byte lenient HTTP/1 servers skip before the request line: ASCII control bytes and
/// whitespace (CR and LF are handled as empty lines before this is asked).
fn is_junk(b: u8) -> bool {
    b <= b' ' || b == 0x7f
}

/// After a prefix of [`is_junk`] bytes: HTTP if a method MCP servers act on follows
/// (case-insensitive, then a separator), undecided while the bytes could still become
/// one, otherwise not HTTP (as any other first byte below `!` always was).
fn after_junk(rest: &[u8], full: bool) -> Classification {
    const METHODS: [&[u8]; 5] = [b"POST", b"GET", b"DELETE", b"PUT", b"PATCH"];
    for m in METHODS {
        let n = rest.len().min(m.len());
        if rest[..n].eq_ignore_ascii_case(&m[..n]) {
            return match rest.get(m.len()) {
                // Cut by the window's end: to the parser, never relayed.
                None if full => Classification::Http1,
                None => Classification::NeedMore,
                Some(&b) if is_sep(b) => Classification::Http1,
                Some(_) => continue,
            };
        }
    }
    Classification::NotHttp(NotHttp::Binary)
}

/// A separator between the parts of a request line to the most lenient parser (Netty:
/// SP, HTAB, VT, FF, CR): a superset, so no request line a server splits goes unseen.
fn is_sep(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x0b | 0x0c | b'\r')
}

/// `method SP target SP HTTP/` with lenient separators (runs of [`is_sep`]), case-insensitive
/// version: a superset of what HTTP/1 parsers accept, so nothing a server would take as a
/// request is ever relayed. Text protocols whose first line merely contains a space
/// (`get key`, `over ipv6`) are not HTTP.
fn request_line(rest: &[u8], full: bool) -> Classification {
    let more = if full { Classification::Http1 } else { Classification::NeedMore };
    let not_http = Classification::NotHttp(NotHttp::NoRequestLine);
    let method = rest.iter().take_while(|b| is_tchar(**b)).count();
    // A method token longer than any method an MCP server serves (they act on POST, GET
    // and DELETE; servers reject or 405 unknown methods) is not waited on: a client that
    // sends a long alphanumeric frame and waits for the answer (a nonce, a binary-safe
    // text protocol) would otherwise hang until the peek window fills.
    if method > MAX_METHOD_LEN {
        return not_http;
    }
    match rest.get(method) {
        None => return more,
        Some(_) if method == 0 => return Classification::NotHttp(NotHttp::Binary),
        Some(&b) if !is_sep(b) => return not_http,
        Some(_) => {}
    }
    let mut i = method + rest[method..].iter().take_while(|b| is_sep(**b)).count();
    let target = rest[i..].iter().take_while(|b| **b > b' ' && **b != 0x7f).count();
    i += target;
    match rest.get(i) {
        None => return more,
        Some(_) if target == 0 => return not_http,
        Some(&b) if !is_sep(b) => return not_http,
        Some(_) => {}
    }
    i += rest[i..].iter().take_while(|b| is_sep(**b)).count();
    let version = &rest[i..];
    let want = b"HTTP/";
    let n = version.len().min(want.len());
    if !version[..n].eq_ignore_ascii_case(&want[..n]) {
        return not_http;
    }
    if n < want.len() { more } else { Classification::Http1 }
}

/// How the wait for the first bytes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    Client(Classification),
    /// The upstream sent bytes before the client said anything decisive.
    ServerFirst,
    /// The client closed (or half-closed) without sending anything decisive.
    ClientClosed,
    /// Nobody said anything decisive within `limits.peek_timeout`.
    Silent,
    Error,
}

pub async fn handle(shared: Arc<Shared>, resolver: Arc<dyn Resolve>, client: TcpStream, peer: SocketAddr, global: tokio::sync::OwnedSemaphorePermit) {
    let local = match client.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let Some(origin) = resolver.resolve(peer, local) else {
        Counters::inc(&shared.counters.connections_unresolved);
        tracing::warn!(%peer, "no original destination for connection; closing it");
        return;
    };
    if is_self(&shared, origin.dst) {
        tracing::warn!(%peer, dst = %origin.dst, "connection to the daemon's own listener; closing it");
        return;
    }
    // Fair share: one process (or one uid) cannot hold every connection slot.
    let _ticket = match shared.admission.admit(origin.process.as_deref(), global) {
        Ok(t) => t,
        Err(refusal) => {
            Counters::inc(shared.counters.refused(refusal));
            tracing::info!(%peer, dst = %origin.dst, ?refusal, "connection limit reached; closing");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let limits = &shared.config.limits;
    let mut ctx = ConnCtx::new(shared.next_conn_id(), peer, origin);
    ctx.serve_tunnel = Some(serve_tunnel);
    let keep = pool::Key::of(ctx.origin.dst, ctx.owner(), limits.upstream_keepalive);
    // Connect before reading anything: a server-speaks-first protocol must see its
    // client connected as if nobody were in between. Unless this process keeps an idle
    // connection to this destination: it answered HTTP, it does not speak first.
    let eager = if keep.as_ref().is_some_and(pool::has) {
        None
    } else {
        let Some(s) = dial(&shared, ctx.origin.dst, peer).await else { return };
        Some(s)
    };
    let kind = sniff(&client, eager.as_ref(), limits.peek_timeout).await;
    tracing::debug!(conn = ctx.id, %peer, dst = %ctx.origin.dst, ?kind, reused = eager.is_none(), "connection");
    let upstream = match kind {
        Sniffed::Silent | Sniffed::Client(Classification::NeedMore) => {
            Counters::inc(&shared.counters.closed_silent);
            tracing::info!(conn = ctx.id, %peer, "no first bytes within {:?}; closing (never relayed)", limits.peek_timeout);
            return;
        }
        Sniffed::Error => return,
        _ => match eager {
            Some(s) => s,
            None => {
                let Some(s) = kept_or_dialled(&shared, ctx.origin.dst, peer, kind, keep.as_ref()).await else { return };
                s
            }
        },
    };
    match kind {
        Sniffed::Client(Classification::Http1) => http::serve(shared, ctx, client, upstream, http::Proto::Http1, keep).await,
        Sniffed::Client(Classification::Http2) => http::serve(shared, ctx, client, upstream, http::Proto::Http2, None).await,
        Sniffed::Client(Classification::Tls) => super::tls::handle(shared, ctx, client, upstream).await,
        Sniffed::Client(Classification::NotHttp(why)) => opaque(shared, ctx, client, upstream, not_http_text(why)).await,
        Sniffed::ServerFirst => opaque(shared, ctx, client, upstream, "the server speaking first").await,
        Sniffed::ClientClosed => {
            // Nothing from the client can follow its FIN, and what is queued is no complete
            // request line: relaying governs nothing away.
            Counters::inc(&shared.counters.passthrough);
            relay(&shared, client, upstream).await
        }
        // Closed above, before any upstream was taken.
        Sniffed::Silent | Sniffed::Client(Classification::NeedMore) | Sniffed::Error => {}
    }
}

/// A new upstream connection to `dst`; `None` (logged) when it cannot be opened.
async fn dial(shared: &Shared, dst: SocketAddr, peer: SocketAddr) -> Option<TcpStream> {
    match upstream::connect(dst, shared.config.mark, shared.config.limits.connect_timeout).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::info!(%peer, error = %e, "upstream connect failed; closing client");
            None
        }
    }
}

/// The upstream for a client that was not dialled eagerly: its process's kept connection
/// when the client speaks plain HTTP/1, else a new one.
async fn kept_or_dialled(shared: &Shared, dst: SocketAddr, peer: SocketAddr, kind: Sniffed, keep: Option<&pool::Key>) -> Option<TcpStream> {
    if let (Sniffed::Client(Classification::Http1), Some(key)) = (kind, keep)
        && let Some(s) = pool::take(key).await
    {
        Counters::inc(&shared.counters.upstream_reused);
        return Some(s);
    }
    dial(shared, dst, peer).await
}

/// Serves what a client sends inside a `CONNECT` tunnel (the [`super::ctx::ServeTunnel`]
/// of every connection): its first bytes are classified as on a fresh connection; plain
/// HTTP/1 or HTTP/2 is served and governed, TLS goes to [`super::tls::in_tunnel`],
/// anything else is relayed (the tunnel's destination was gated before it opened). A client
/// silent for `limits.peek_timeout` is closed, nothing relayed.
pub fn serve_tunnel(shared: Arc<Shared>, ctx: ConnCtx, client: BoxIo, server: BoxIo) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(serve_tunnel_inner(shared, ctx, client, server))
}

async fn serve_tunnel_inner(shared: Arc<Shared>, ctx: ConnCtx, mut client: BoxIo, server: BoxIo) {
    let mut first = Vec::with_capacity(PEEK_WINDOW);
    let deadline = tokio::time::Instant::now() + shared.config.limits.peek_timeout;
    let kind = loop {
        let mut chunk = [0u8; 512];
        let room = (PEEK_WINDOW - first.len()).clamp(1, chunk.len());
        match tokio::time::timeout_at(deadline, client.read(&mut chunk[..room])).await {
            Ok(Ok(n)) if n > 0 => {
                first.extend_from_slice(&chunk[..n]);
                match classify(&first) {
                    Classification::NeedMore if first.len() < PEEK_WINDOW => continue,
                    Classification::NeedMore => break Some(Classification::Http1),
                    k => break Some(k),
                }
            }
            _ => break None,
        }
    };
    let no_reconnect = super::tunnel::no_reconnect(ctx.origin.dst);
    match kind {
        Some(Classification::Http1) => http::serve_io(shared, ctx, Rewind::new(first, client), None, server, no_reconnect).await,
        Some(Classification::Http2) => http::serve_h2(shared, ctx, Rewind::new(first, client), server, no_reconnect).await,
        Some(Classification::Tls) => super::tls::in_tunnel(shared, ctx, first, client, server).await,
        Some(Classification::NotHttp(why)) => {
            if super::tunnel::passes_uninspected(&shared, &ctx, not_http_text(why), None) {
                super::tunnel::relay_rewound(&shared, first, client, server).await
            }
        }
        // Silent or gone before a first byte: nothing was sent, nothing is relayed.
        None | Some(Classification::NeedMore) => Counters::inc(&shared.counters.closed_silent),
    }
}

/// What a connection that is not HTTP began with, for records.
fn not_http_text(why: NotHttp) -> &'static str {
    match why {
        NotHttp::Ssh => "an SSH identification",
        NotHttp::Binary => "bytes no HTTP request or TLS handshake starts with",
        NotHttp::NoRequestLine => "a first line that is not an HTTP request line",
    }
}

fn is_self(shared: &Shared, dst: SocketAddr) -> bool {
    dst.ip().is_loopback() && dst.port() == shared.config.listen_port
}

/// A connection that is not HTTP or TLS: relayed, unless its destination is governed in
/// enforce mode (then refused). Either way toward a governed destination it is audited.
async fn opaque(shared: Arc<Shared>, ctx: ConnCtx, client: TcpStream, upstream: TcpStream, what: &str) {
    if let Some(mode) = governed_mode(&shared, ctx.origin.dst) {
        let enforce = mode == Mode::Enforce;
        let verdict = if enforce { "refused (enforce mode)" } else { "relayed uninspected" };
        let reason = format!("not HTTP ({what}) toward a governed MCP destination: {verdict}");
        tracing::warn!(conn = ctx.id, dst = %ctx.origin.dst, "{reason}");
        let rec = record::connection(&shared, &ctx.origin, "http", "tcp", ctx.ip_key(), &reason);
        record::write_closed(&shared, rec, CallStatus::TransportError { reason });
        if enforce {
            Counters::inc(&shared.counters.refused_protocol);
            return;
        }
    }
    Counters::inc(&shared.counters.passthrough);
    relay(&shared, client, upstream).await
}

/// Wait for enough client bytes to classify, or the server speaking first. A client that
/// stays silent (or dribbles an undecidable prefix) is [`Sniffed::Silent`] after `deadline`.
async fn sniff(client: &TcpStream, upstream: Option<&TcpStream>, deadline: Duration) -> Sniffed {
    let mut buf = vec![0u8; PEEK_WINDOW];
    let sleep = tokio::time::sleep(deadline);
    tokio::pin!(sleep);
    // An undecided prefix is re-peeked with a growing pause (peek cannot wait for *more*).
    let mut pause = Duration::from_millis(2);
    loop {
        tokio::select! {
            biased;
            r = client.peek(&mut buf) => match r {
                Ok(0) => return Sniffed::ClientClosed,
                Ok(n) => match classify(&buf[..n]) {
                    // The client already sent FIN: no byte can complete the prefix, so
                    // relaying it governs nothing away (`over ipv6` + EOF to an echo server).
                    // Peeked again first: the rest and the FIN may have arrived together
                    // between the peek above and this check (a whole request, then).
                    Classification::NeedMore if peer_finished(client) => match client.peek(&mut buf).await {
                        Ok(n) if n > 0 && !matches!(classify(&buf[..n]), Classification::NeedMore) => return Sniffed::Client(classify(&buf[..n])),
                        Ok(_) => return Sniffed::ClientClosed,
                        Err(_) => return Sniffed::Error,
                    },
                    Classification::NeedMore => tokio::select! {
                        _ = tokio::time::sleep(pause) => pause = (pause * 2).min(Duration::from_millis(100)),
                        _ = &mut sleep => return Sniffed::Silent,
                    },
                    k => return Sniffed::Client(k),
                },
                Err(_) => return Sniffed::Error,
            },
            // No upstream yet (a kept connection waits for this client): nothing speaks first.
            Some(upstream) = async {
                let u = upstream?;
                let _ = u.readable().await;
                Some(u)
            }, if upstream.is_some() => {
                // Readable also on EOF/error: only real bytes count as speaking first.
                let mut one = [0u8; 1];
                match upstream.peek(&mut one).await {
                    Ok(1..) => return Sniffed::ServerFirst,
                    _ => return Sniffed::Error,
                }
            }
            _ = &mut sleep => return Sniffed::Silent,
        }
    }
}

/// The peer half-closed (TCP state CLOSE_WAIT): nothing more will arrive after what is queued.
fn peer_finished(s: &TcpStream) -> bool {
    super::lifecycle::half_closed(std::os::fd::AsRawFd::as_raw_fd(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Classification::{Http1, Http2, NeedMore, Tls};
    use super::NotHttp as N;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(classify(b"POST /mcp HTTP/1.1"), Http1);
        assert_eq!(classify(b"GET / HTTP/1.1"), Http1);
        assert_eq!(classify(b"PO"), NeedMore);
        assert_eq!(classify(b"OPTIONS"), NeedMore);
        assert_eq!(classify(b""), NeedMore);
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.6 Ubuntu\r\n"), Classification::NotHttp(N::Ssh));
        assert_eq!(classify(b"SSH"), NeedMore);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02]), Tls);
        assert_eq!(classify(&[0x16]), NeedMore);
        assert_eq!(classify(&[0x16, 0x09]), Classification::NotHttp(N::Binary));
        assert_eq!(classify(b"\x00\x00"), NeedMore, "lenient servers skip control bytes: undecided until text comes");
        assert_eq!(classify(b"\x00\x00\x05hello"), Classification::NotHttp(N::Binary));
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Classification::NotHttp(N::NoRequestLine));
        // Netty skips leading control bytes and whitespace and splits on SP, HTAB, VT, FF
        // and CR: these are requests there, so HTTP here (hyper then refuses them).
        for lenient in [&b" POST /mcp HTTP/1.1"[..], b"\x0bPOST /mcp", b"\x00\x7f get /", b"POST\x0b/mcp\x0bHTTP/1.1", b"POST\x0c/mcp\rHTTP/1.1"] {
            assert_eq!(classify(lenient), Http1, "{lenient:?}");
        }
        assert_eq!(classify(b" PO"), NeedMore);
        assert_eq!(classify(b" hello"), Classification::NotHttp(N::Binary));
        assert_eq!(classify(b" GETX"), Classification::NotHttp(N::Binary));
        // Text protocols with a space in their first line are not HTTP.
        assert_eq!(classify(b"over ipv6"), NeedMore);
        assert_eq!(classify(b"over ipv6\n"), Classification::NotHttp(N::NoRequestLine));
        assert_eq!(classify(b"get key\r\n"), Classification::NotHttp(N::NoRequestLine));
        assert_eq!(classify(b"GET /"), NeedMore);
        assert_eq!(classify(b"GET / HT"), NeedMore);
        assert_eq!(classify(b"GET /  http/1.0\r\n"), Http1);
        assert_eq!(classify(b"POST\t/mcp\tHTTP/1.1"), Http1);
        assert_eq!(classify(b"GET /\r\n"), Classification::NotHttp(N::NoRequestLine));
    }

    #[test]
    fn leading_empty_lines_are_http() {
        assert_eq!(classify(b"\r\nPOST /mcp HTTP/1.1\r\n"), Http1);
        assert_eq!(classify(b"\n\r\n\r\nGET / HTTP/1.1"), Http1);
        assert_eq!(classify(b"\r\n"), NeedMore);
        assert_eq!(classify(b"\r\nPO"), NeedMore);
        // TLS and the HTTP/2 preface only count at the very start.
        assert_eq!(classify(b"\r\n\x16\x03\x01\x02\x00\x01\x00\x01\xfc"), Classification::NotHttp(N::Binary));
        // A window full of empty lines goes to the parser, never to a relay.
        assert_eq!(classify(&[b'\n'; PEEK_WINDOW]), Http1);
    }

    #[test]
    fn http2_prior_knowledge_and_extension_methods() {
        assert_eq!(classify(H2_PREFACE), Http2);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), NeedMore);
        assert_eq!(classify(b"PRI /mcp HTTP/1.1\r\n"), Http1);
        // Any method token is HTTP: servers decide which methods they route.
        assert_eq!(classify(b"FROB /mcp HTTP/1.1"), Http1);
        let long = [b'A'; PEEK_WINDOW + 10];
        assert_eq!(classify(&long[..MAX_METHOD_LEN]), NeedMore);
        assert_eq!(classify(&long[..MAX_METHOD_LEN + 1]), Classification::NotHttp(NotHttp::NoRequestLine));
        assert_eq!(classify(&long), Classification::NotHttp(NotHttp::NoRequestLine));
        // A client that sends a short frame of letters and waits for the answer is not
        // held until the peek window fills (the agent-scope request/response case).
        let mut frame = b"R".to_vec();
        frame.extend([b'q'; 64]);
        assert_eq!(classify(&frame), Classification::NotHttp(NotHttp::NoRequestLine));
        let mut served = b"DELETE".to_vec();
        served.extend([b' '; 1]);
        assert_ne!(classify(&served), Classification::NotHttp(NotHttp::NoRequestLine));
    }

    #[test]
    fn every_short_input_is_classified_without_panicking() {
        // Exhaustive over 2-byte inputs plus every 1-byte prefix of common starts.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let _ = classify(&[a, b]);
            }
        }
        // A slow client's prefixes never leave NeedMore for "not HTTP".
        let req = b"\r\nPOST /mcp HTTP/1.1\r\n";
        for n in 0..req.len() {
            assert!(matches!(classify(&req[..n]), NeedMore | Http1), "{n}: {:?}", classify(&req[..n]));
        }
        for n in 0..H2_PREFACE.len() {
            assert_eq!(classify(&H2_PREFACE[..n]), NeedMore, "{n}");
        }
    }
}
