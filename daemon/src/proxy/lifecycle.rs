//! A proxied HTTP/1 connection ends when either side ends.
//!
//! Why a module of its own: hyper serves the client with `half_close(true)` (a client that
//! shuts down its sending side after a request still gets the answer), so while a response
//! streams (an SSE GET stream, a POST answered with SSE) hyper does not read the client and
//! never notices that the client is gone. Without this, every abandoned stream kept the
//! client socket in CLOSE-WAIT and the upstream connection (and the server's session) open
//! until the daemon stopped.
//!
//! The fix is what a direct connection does: the client's FIN is passed on. [`watch_client`]
//! polls the client socket's TCP state (cheap: one `getsockopt` per tick, only while the
//! connection lives) and, once the client has sent FIN or reset, asks the current upstream
//! stream to shut down its sending side ([`FinSignal::request`]). [`FinIo`] does that from
//! inside the task that drives the upstream connection, so TLS upstreams send close_notify
//! first. The server then decides, as it would directly: SDK servers end the stream and
//! close, the response body ends, hyper finishes and drops the client socket. The other
//! direction needs nothing extra: an upstream that closes ends the response body, and a
//! dropped response body drops the upstream connection.

use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::AsyncWrite;

use super::hooked::{Hooked, ReadHook};

/// How often the client socket's state is looked at while the connection lives.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Linux TCP states (include/net/tcp_states.h).
const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;

/// The kernel's TCP state of a socket, if it can be read.
fn tcp_state(fd: RawFd) -> Option<u8> {
    // SAFETY: getsockopt writes at most `len` bytes into a zeroed, properly sized tcp_info;
    // an fd that is not a TCP socket only makes it fail.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut libc::tcp_info).cast(), &mut len) };
    (rc == 0).then_some(info.tcpi_state)
}

/// The peer has sent FIN (CLOSE-WAIT): nothing more will arrive after what is queued.
pub fn half_closed(fd: RawFd) -> bool {
    tcp_state(fd) == Some(TCP_CLOSE_WAIT)
}

/// The peer has sent FIN (CLOSE-WAIT) or the connection was reset (CLOSE).
pub fn peer_gone(fd: RawFd) -> bool {
    matches!(tcp_state(fd), Some(TCP_CLOSE_WAIT | TCP_CLOSE))
}

/// Resolves once the client socket `fd` has received FIN or a reset. `fd` must stay owned by
/// the connection being served for as long as this future is polled (the caller selects it
/// against that connection's future, which owns the socket).
pub async fn watch_client(fd: RawFd) {
    let mut tick = tokio::time::interval_at(next_on_grid(tokio::time::Instant::now()), WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if peer_gone(fd) {
            return;
        }
    }
}

/// The first tick of a connection's watch: the next multiple of [`WATCH_INTERVAL`] since a
/// fixed origin, not `WATCH_INTERVAL` from now. Connections opened in the same interval then
/// share their timers' deadline: a timer earlier than every other makes tokio wake its own
/// driver (an eventfd write and one more epoll_wait); one at an existing deadline does not.
/// A new connection's first look comes within one interval, as before.
fn next_on_grid(now: tokio::time::Instant) -> tokio::time::Instant {
    static ORIGIN: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| now);
    let step = WATCH_INTERVAL.as_millis().max(1);
    let since = now.saturating_duration_since(origin).as_millis();
    let steps = since / step + 1;
    origin + Duration::from_millis(u64::try_from(steps * step).unwrap_or(u64::MAX))
}

/// "Shut down your sending side": set by the connection's watcher, acted on by [`FinIo`].
#[derive(Debug, Default)]
pub struct FinSignal {
    requested: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl FinSignal {
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().ok().and_then(|mut w| w.take()) {
            w.wake();
        }
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    fn register(&self, waker: &Waker) {
        if let Ok(mut w) = self.waker.lock() {
            match w.as_ref() {
                Some(old) if old.will_wake(waker) => {}
                _ => *w = Some(waker.clone()),
            }
        }
    }
}

/// The upstream streams of one client connection: each new upstream stream gets its own
/// signal (a stream opened after the client's FIN is not shut down by it: it carries a
/// request the client sent before its FIN). At most [`FinSignals::MAX`] live signals are
/// kept; dead ones are pruned on insert.
#[derive(Debug, Default)]
pub struct FinSignals {
    live: Mutex<Vec<std::sync::Weak<FinSignal>>>,
}

impl FinSignals {
    /// HTTP/1 has one upstream stream at a time; a few more cover reconnects in flight.
    pub const MAX: usize = 16;

    /// A signal for a new upstream stream.
    pub fn register(&self) -> Arc<FinSignal> {
        let sig = Arc::new(FinSignal::default());
        if let Ok(mut live) = self.live.lock() {
            live.retain(|w| w.strong_count() > 0);
            if live.len() >= Self::MAX {
                live.remove(0);
            }
            live.push(Arc::downgrade(&sig));
        }
        sig
    }

    /// Ask every live upstream stream to shut down its sending side.
    pub fn request_all(&self) {
        let live = self.live.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default();
        for sig in live.iter().filter_map(std::sync::Weak::upgrade) {
            sig.request();
        }
    }
}

/// An upstream stream that shuts down its sending side when its [`FinSignal`] is requested.
/// The shutdown happens before a read (the upstream connection's driver always polls for
/// reads while a response streams or the connection idles), so it runs in the task that
/// owns the stream.
pub type FinIo<T> = Hooked<T, FinHook>;

/// Build a [`FinIo`].
pub fn fin_io<T>(inner: T, signal: Arc<FinSignal>) -> FinIo<T> {
    Hooked::new(inner, FinHook { signal, shut: false, wrote: false, flushed: false })
}

/// The [`ReadHook`] of a [`FinIo`].
pub struct FinHook {
    signal: Arc<FinSignal>,
    shut: bool,
    /// A request has been written to this upstream stream ...
    wrote: bool,
    /// ... and flushed since its last write: nothing of the client's is in flight here.
    flushed: bool,
}

impl ReadHook for FinHook {
    fn on_write(&mut self, _n: usize) {
        self.wrote = true;
        self.flushed = false;
    }

    fn on_flush(&mut self) {
        self.flushed = true;
    }

    fn before_read<S: AsyncWrite + Unpin>(&mut self, inner: Pin<&mut S>, cx: &mut Context<'_>) {
        if self.shut {
            return;
        }
        // The client's FIN is passed on only once what it sent before it has left: a
        // client that half-closes right after its request (`nc -N`, a raw socket) must
        // not have the request cut off. Until then the next read poll checks again.
        if !self.signal.requested() || !self.wrote || !self.flushed {
            self.signal.register(cx.waker());
            return;
        }
        // Pending: the shutdown registered the waker; reading goes on meanwhile.
        if let Poll::Ready(r) = inner.poll_shutdown(cx) {
            if let Err(e) = r {
                tracing::debug!(error = %e, "upstream shutdown after client FIN");
            }
            self.shut = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn watch_ticks_share_a_grid_and_come_within_one_interval() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("rt");
        rt.block_on(async {
            let a = tokio::time::Instant::now();
            let first = next_on_grid(a);
            for ms in [0u64, 1, 7, 120, 249, 250, 251, 600] {
                let now = a + Duration::from_millis(ms);
                let next = next_on_grid(now);
                assert!(next > now && next <= now + WATCH_INTERVAL, "{ms} ms: {:?} after", next - now);
                let off = next.duration_since(first).as_millis() % WATCH_INTERVAL.as_millis();
                assert_eq!(off, 0, "{ms} ms: off the grid by {off} ms");
            }
            // Two connections within one interval share their first deadline.
            assert_eq!(next_on_grid(a + Duration::from_millis(10)), next_on_grid(a + Duration::from_millis(20)));
        });
    }

    #[tokio::test]
    async fn client_fin_is_seen_and_passed_upstream() {
        // client <-> (served) and (upstream) <-> server, over loopback.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = tokio::net::TcpStream::connect(l.local_addr().expect("addr")).await.expect("connect");
        let (served, _) = l.accept().await.expect("accept");
        let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = tokio::net::TcpStream::connect(l2.local_addr().expect("addr")).await.expect("connect");
        let (mut server, _) = l2.accept().await.expect("accept");

        let signals = FinSignals::default();
        let mut up = fin_io(upstream, signals.register());
        assert!(!peer_gone(served.as_raw_fd()));
        client.shutdown().await.expect("client FIN");
        tokio::time::timeout(Duration::from_secs(5), watch_client(served.as_raw_fd())).await.expect("FIN seen");
        signals.request_all();
        // Nothing of the client's has been forwarded yet: the FIN waits for it (a client
        // that half-closes right after its request must not have it cut off).
        let mut probe = [0u8; 1];
        assert!(tokio::time::timeout(Duration::from_millis(300), up.read(&mut probe)).await.is_err(), "no EOF, no data yet");
        let mut sbuf = [0u8; 8];
        assert!(tokio::time::timeout(Duration::from_millis(300), server.read(&mut sbuf)).await.is_err(), "the server must not see EOF before the request");
        // The request is forwarded and flushed; the upstream driver polls for reads: that is
        // where the FIN goes out, after the request.
        up.write_all(b"req").await.expect("forward");
        up.flush().await.expect("flush");
        let mut buf = [0u8; 8];
        let read = tokio::spawn(async move { up.read(&mut buf).await.map(|n| (n, up)) });
        let n = tokio::time::timeout(Duration::from_secs(5), server.read(&mut sbuf)).await.expect("request").expect("read");
        assert_eq!(&sbuf[..n], b"req", "the request arrives whole");
        let n = tokio::time::timeout(Duration::from_secs(5), server.read(&mut sbuf)).await.expect("server sees EOF").expect("read");
        assert_eq!(n, 0, "the server saw the client's FIN");
        // A server that honours half-close can still answer.
        server.write_all(b"late").await.expect("write");
        let (n, _up) = tokio::time::timeout(Duration::from_secs(5), read).await.expect("answer").expect("join").expect("read");
        assert_eq!(n, 4);
        drop(served);
    }
}
