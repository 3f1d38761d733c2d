//! The upstream side of a proxied HTTP connection: one hyper HTTP/1.1 client connection
//! per client connection (reopened if the server closes it), its errors, and the
//! [`Drivers`] that poll it inside the client connection's own task.
//!
//! Why a module of its own: `exchange` forwards through it and `http` creates it; kept
//! apart from `http` (which calls `exchange`), neither imports the other.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::client::conn::http1 as client_http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

use super::body::Body;
use super::lifecycle::{self, FinSignals};
use super::upstream;
use crate::state::Shared;

/// Any byte stream hyper can run HTTP/1.1 over (plain TCP or TLS).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

pub type BoxIo = Box<dyn Io>;
type ConnectFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<BoxIo, ForwardError>> + Send>>;

/// Opens a fresh upstream stream to the same destination (after the server closed the
/// previous one). Plain TCP for `http`, TCP + verified TLS for `https`.
pub type Reconnect = Arc<dyn Fn() -> ConnectFuture + Send + Sync>;

/// A reconnector for plain TCP to `dst` with the daemon's mark.
pub fn tcp_reconnect(shared: &Shared, dst: std::net::SocketAddr) -> Reconnect {
    let mark = shared.config.mark;
    let timeout = shared.config.limits.connect_timeout;
    Arc::new(move || {
        Box::pin(async move {
            let s = upstream::connect(dst, mark, timeout).await?;
            Ok(Box::new(s) as BoxIo)
        })
    })
}

/// The upstream side of one proxied HTTP connection.
pub struct UpstreamConn {
    dst: std::net::SocketAddr,
    sender: Option<client_http1::SendRequest<Body>>,
    first: Option<BoxIo>,
    reconnect: Reconnect,
    /// Shuts the upstream's sending side when the client's has ended ([`lifecycle`]).
    fins: Arc<FinSignals>,
    /// Where the upstream connection's future goes to be driven: the client connection's
    /// own task (see [`Drive`]), not a task of its own.
    drivers: Drivers,
    /// The first stream may be kept for reuse ([`super::pool`]): `Connection: close` is not
    /// passed upstream.
    keepable: bool,
    /// Upstream HTTP connections opened so far (the first stream included).
    opened: u32,
    /// Requests (and their answers) keep their header names' case (`[http] header_case`).
    preserve_case: bool,
}

/// An upstream HTTP/1.1 connection's future (hyper's `Connection`), to be polled until
/// the connection ends.
type ConnDriver = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Hands upstream connection futures to the task that serves the client connection.
///
/// Why: with the upstream connection in a task of its own, every request and every
/// response crosses two tasks (often two worker threads: a futex wake-up each way); driven
/// in the client's task, the exchange and its upstream wake one task. The futures live as
/// long as the client connection is served and no longer.
#[derive(Clone)]
pub struct Drivers(tokio::sync::mpsc::UnboundedSender<ConnDriver>);

impl Drivers {
    /// A handle and the future that drives what is sent through it; the client connection's
    /// task selects on that future beside serving the client.
    pub fn new() -> (Drivers, Drive) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ConnDriver>();
        let drive = Box::pin(async move {
            use futures_util::StreamExt as _;
            let mut running = futures_util::stream::FuturesUnordered::new();
            let mut open = true;
            loop {
                tokio::select! {
                    next = rx.recv(), if open => match next {
                        Some(d) => running.push(d),
                        None => open = false,
                    },
                    Some(()) = running.next(), if !running.is_empty() => {}
                    else => std::future::pending::<()>().await,
                }
            }
        });
        (Drivers(tx), drive)
    }

    /// Drive `conn` in the client connection's task, or in a task of its own when that
    /// task has already ended.
    fn drive(&self, conn: ConnDriver) {
        if let Err(tokio::sync::mpsc::error::SendError(conn)) = self.0.send(conn) {
            tokio::spawn(conn);
        }
    }
}

/// The future that polls the upstream connections handed to [`Drivers`]; it never ends, so
/// the client connection's task selects on it beside serving the client.
pub type Drive = std::pin::Pin<Box<dyn std::future::Future<Output = Infallible> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{0}")]
    Connect(#[from] upstream::UpstreamError),
    #[error("upstream {dst}: {reason}")]
    Reconnect { dst: std::net::SocketAddr, reason: String },
    #[error("upstream {dst}: HTTP handshake failed: {source}")]
    Handshake { dst: std::net::SocketAddr, source: hyper::Error },
    #[error("upstream {dst}: {source}")]
    Request { dst: std::net::SocketAddr, source: hyper::Error },
}

impl UpstreamConn {
    /// The upstream side of a client connection: `first` is the stream opened before the
    /// client was classified, `reconnect` opens the next one if the server closes it.
    pub fn new(dst: std::net::SocketAddr, first: Option<BoxIo>, reconnect: Reconnect, fins: Arc<FinSignals>, drivers: Drivers) -> UpstreamConn {
        UpstreamConn { dst, sender: None, first, reconnect, fins, drivers, keepable: false, opened: 0, preserve_case: false }
    }

    /// Write requests with their header names in the case the client wrote them
    /// (`[http] header_case`, decided per connection in `http`; hyper keeps that case beside
    /// each message's headers).
    pub fn preserve_header_case(&mut self, on: bool) {
        self.preserve_case = on;
    }

    /// The first stream may be kept for reuse when the client connection ends
    /// ([`super::pool`]): a request's `Connection: close` (hop-by-hop) stays with the client.
    pub fn keepable(&mut self) {
        self.keepable = true;
    }

    /// Idle over the first stream: no request in flight, the last answer read to its end,
    /// the server did not ask to close, and no other upstream stream was opened since.
    pub fn idle_on_first(&self) -> bool {
        self.opened == 1 && self.sender.as_ref().is_some_and(|s| s.is_ready() && !s.is_closed())
    }

    async fn sender(&mut self) -> Result<&mut client_http1::SendRequest<Body>, ForwardError> {
        let usable = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        if !usable {
            let stream = match self.first.take() {
                Some(s) => s,
                None => (self.reconnect)().await?,
            };
            let (sender, conn) = client_http1::Builder::new()
                .preserve_header_case(self.preserve_case)
                .title_case_headers(false)
                .handshake(TokioIo::new(lifecycle::fin_io(stream, self.fins.register())))
                .await
                .map_err(|source| ForwardError::Handshake { dst: self.dst, source })?;
            self.opened += 1;
            self.drivers.drive(Box::pin(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            }));
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("set above");
        sender.ready().await.map_err(|source| ForwardError::Request { dst: self.dst, source })?;
        Ok(sender)
    }

    /// Send one request upstream and return the response head + streaming body.
    pub async fn send(&mut self, mut req: Request<Body>) -> Result<Response<hyper::body::Incoming>, ForwardError> {
        let dst = self.dst;
        if self.keepable {
            drop_close(&mut req);
        }
        let sender = self.sender().await?;
        let _awaiting = crate::state::awaiting_upstream();
        sender.send_request(req).await.map_err(|source| ForwardError::Request { dst, source })
    }
}

pub type SharedUpstream = Arc<Mutex<UpstreamConn>>;

/// Removes `Connection: close` from an HTTP/1.1 request whose `Connection` says nothing
/// else (RFC 9110 §7.6.1: hop-by-hop, for the client's own connection). Any other option
/// (`upgrade`, ...) leaves the header as the client sent it.
fn drop_close(req: &mut Request<Body>) {
    if req.version() != http::Version::HTTP_11 {
        return;
    }
    let mut options = req.headers().get_all(http::header::CONNECTION).iter().peekable();
    if options.peek().is_none() {
        return;
    }
    let only_close = options.all(|v| v.to_str().is_ok_and(|v| v.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|t| t.eq_ignore_ascii_case("close"))));
    if only_close {
        req.headers_mut().remove(http::header::CONNECTION);
    }
}
