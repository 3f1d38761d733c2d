//! Upstream keep-alive: an idle plain HTTP/1.1 connection to a server is kept for the same
//! process's next connection to the same destination.
//!
//! Why: an agent that opens a connection per call (or asks `Connection: close`) otherwise
//! costs a TCP handshake and a teardown toward the server on every call, in the daemon and
//! in the server. nginx keeps upstream connections (`keepalive`) for the same reason.
//! Measured (`cargo xtask bench`, real eBPF path, one client opening a connection per
//! call): the daemon's CPU per call fell from 330 to 240-260 µs and its p50 from 445 to
//! 360-400 µs (nginx, which keeps upstream connections too: 255 µs).
//!
//! The rules, because this is where one client's connection could become another's:
//! - **Keyed by destination and owning process** (tgid, start time, uid: [`Owner`]). A
//!   connection one process used is never handed to another; servers may tie state to a
//!   connection (connection-bound authentication, per-connection quotas). No process known
//!   (a static upstream): nothing is kept.
//! - **Only an idle connection goes back**: hyper has no request in flight on it and the
//!   server did not ask to close, it is the first (and only) upstream stream of its client
//!   connection, its sending side was never shut down, and the socket holds no unread
//!   byte and no EOF ([`clean`]).
//! - **Bounded in time and count**: while kept, a watcher task holds it; bytes or EOF from
//!   the server, or `limits.upstream_keepalive_ms` passing, close it (no socket left in
//!   CLOSE-WAIT, none kept longer than that). At most [`MAX_PER_KEY`] per key and
//!   [`MAX_PER_THREAD`] per proxy thread; the oldest goes first.
//! - **Per proxy thread** (a thread-local): a kept socket and its watcher stay on the
//!   thread whose reactor it is registered with; connections placed there reuse it.
//! - A destination with a kept connection has answered HTTP: the next connection to it is
//!   not connected eagerly before its client speaks (`conn`), since a server that speaks
//!   first is not what it is. Whatever the client then sends that is not plain HTTP/1 is
//!   dialled fresh, as before.
//! - `Connection: close` on a request over a keepable connection is hop-by-hop (RFC 9110
//!   §7.6.1) and is not passed upstream (`forward`); the client's own connection still
//!   closes after its answer, as it asked.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::session::Owner;

/// Idle connections kept per destination and process.
pub const MAX_PER_KEY: usize = 8;
/// Idle connections kept per proxy thread, all keys together.
pub const MAX_PER_THREAD: usize = 256;

/// Whose and where to: connections are only ever reused under the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub dst: SocketAddr,
    pub owner: Owner,
}

impl Key {
    /// The key of a connection from `owner` to `dst`; `None` (nothing kept) when the owner
    /// is unknown or keeping is off (`keep` zero).
    pub fn of(dst: SocketAddr, owner: Option<&Owner>, keep: Duration) -> Option<Key> {
        if keep.is_zero() {
            return None;
        }
        owner.map(|o| Key { dst, owner: o.clone() })
    }
}

/// Asks a kept connection's watcher for its socket.
type Request = oneshot::Sender<TcpStream>;

struct Entry {
    take: oneshot::Sender<Request>,
    /// Order of keeping, thread-wide: the lowest goes first when the thread is full.
    seq: u64,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<Key, Vec<Entry>>,
    total: usize,
    seq: u64,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

impl Pool {
    /// Forgets entries whose watcher has closed its socket.
    fn prune(&mut self, key: &Key) {
        if let Some(v) = self.idle.get_mut(key) {
            let before = v.len();
            v.retain(|e| !e.take.is_closed());
            self.total -= before - v.len();
            if v.is_empty() {
                self.idle.remove(key);
            }
        }
    }

    /// Drops the oldest entry of the thread (its watcher then closes the socket).
    fn evict_oldest(&mut self) {
        let oldest = self.idle.iter().filter_map(|(k, v)| v.first().map(|e| (e.seq, k.clone()))).min_by_key(|(s, _)| *s);
        if let Some((_, k)) = oldest
            && let Some(v) = self.idle.get_mut(&k)
        {
            v.remove(0);
            self.total -= 1;
            if v.is_empty() {
                self.idle.remove(&k);
            }
        }
    }

    fn pop(&mut self, key: &Key) -> Option<Entry> {
        let v = self.idle.get_mut(key)?;
        let e = v.pop();
        if v.is_empty() {
            self.idle.remove(key);
        }
        if e.is_some() {
            self.total -= 1;
        }
        e
    }
}

/// Whether this thread keeps a live connection under `key`.
pub fn has(key: &Key) -> bool {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.prune(key);
        p.idle.contains_key(key)
    })
}

/// A kept connection under `key` (the most recently kept first), taken out of the pool.
pub async fn take(key: &Key) -> Option<TcpStream> {
    loop {
        let entry = POOL.with(|p| p.borrow_mut().pop(key))?;
        let (tx, rx) = oneshot::channel();
        if entry.take.send(tx).is_err() {
            continue;
        }
        // The watcher answers at once: with the socket, or (it found it unusable) not at all.
        if let Ok(s) = rx.await {
            return Some(s);
        }
    }
}

/// Keeps `stream` under `key` for at most `keep`. The caller checked that it is idle.
pub fn put(key: Key, stream: TcpStream, keep: Duration) {
    let (tx, rx) = oneshot::channel::<Request>();
    tokio::spawn(watch(stream, rx, keep));
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.prune(&key);
        if p.total >= MAX_PER_THREAD {
            p.evict_oldest();
        }
        p.seq += 1;
        let seq = p.seq;
        let full = {
            let v = p.idle.entry(key.clone()).or_default();
            let full = v.len() >= MAX_PER_KEY;
            if full {
                v.remove(0);
            }
            v.push(Entry { take: tx, seq });
            full
        };
        if !full {
            p.total += 1;
        }
    });
}

/// Holds a kept socket until it is asked for, the server closes it or sends bytes nobody
/// asked for, or `keep` passes; in all but the first case the socket is closed.
async fn watch(stream: TcpStream, mut asked: oneshot::Receiver<Request>, keep: Duration) {
    let expire = tokio::time::sleep(keep);
    tokio::pin!(expire);
    loop {
        tokio::select! {
            biased;
            r = &mut asked => {
                if let Ok(reply) = r
                    && clean(&stream)
                {
                    let _ = reply.send(stream);
                }
                return;
            }
            r = stream.readable() => {
                if r.is_err() {
                    return;
                }
                // Readiness can be stale (hyper's last read did not end in WouldBlock): only
                // a byte or an EOF in the socket ends the wait.
                match stream.try_io(Interest::READABLE, || peek_one(&stream)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    _ => return,
                }
            }
            () = &mut expire => return,
        }
    }
}

/// One byte of the socket, peeked without waiting: `Ok(0)` is EOF, `WouldBlock` nothing.
fn peek_one(s: &TcpStream) -> io::Result<usize> {
    let mut b = [0u8; 1];
    // SAFETY: recv writes at most one byte into `b`; the fd is the live socket of `s`.
    let n = unsafe { libc::recv(s.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Nothing unread and no EOF in the socket: the server has not closed it nor sent bytes
/// that would be read as the answer to the next request.
pub fn clean(s: &TcpStream) -> bool {
    matches!(peek_one(s), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The shared slot behind [`Reclaimable`] and [`Reclaim`].
struct Slot {
    stream: Mutex<Option<TcpStream>>,
    /// Its sending side was shut down (the client's FIN passed on): never kept.
    shut: AtomicBool,
}

/// The upstream socket as hyper uses it, which [`Reclaim::take`] can take back while
/// hyper's connection is idle. Dropped (hyper's connection ended), it closes the socket.
pub struct Reclaimable {
    slot: Arc<Slot>,
}

/// The proxy's handle on a [`Reclaimable`] socket.
pub struct Reclaim {
    slot: Arc<Slot>,
}

/// Wraps `stream` for hyper and returns the handle that can take it back.
pub fn reclaimable(stream: TcpStream) -> (Reclaimable, Reclaim) {
    let slot = Arc::new(Slot { stream: Mutex::new(Some(stream)), shut: AtomicBool::new(false) });
    (Reclaimable { slot: slot.clone() }, Reclaim { slot })
}

impl Reclaim {
    /// The socket, unless hyper's connection over it ended or its sending side was shut.
    /// Hyper's connection then sees EOF (and write errors) and ends.
    pub fn take(&self) -> Option<TcpStream> {
        if self.slot.shut.load(Ordering::Acquire) {
            return None;
        }
        self.slot.stream.lock().ok()?.take()
    }
}

impl Drop for Reclaimable {
    fn drop(&mut self) {
        if let Ok(mut s) = self.slot.stream.lock() {
            s.take();
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "upstream socket taken back for reuse")
}

impl Reclaimable {
    /// `io` on the socket; `taken` once [`Reclaim::take`] has it; an error if the slot's
    /// lock is poisoned.
    fn on_socket<R>(&self, taken: fn() -> io::Result<R>, io: impl FnOnce(Pin<&mut TcpStream>) -> Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match self.slot.stream.lock().as_deref_mut() {
            Ok(Some(s)) => io(Pin::new(s)),
            Ok(None) => Poll::Ready(taken()),
            Err(_) => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncRead for Reclaimable {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        // Taken: EOF, so hyper's idle connection ends quietly.
        self.on_socket(|| Ok(()), |s| s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Reclaimable {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.on_socket(|| Err(gone()), |s| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.on_socket(|| Err(gone()), |s| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.on_socket(|| Ok(()), |s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.slot.shut.store(true, Ordering::Release);
        self.on_socket(|| Ok(()), |s| s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn owner(tgid: u32) -> Owner {
        Owner { tgid, start_time: Some(1), uid: 1000 }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        (c, s)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn a_kept_socket_goes_only_to_its_own_key() {
        rt().block_on(async {
            let (c, mut s) = pair().await;
            let dst = s.local_addr().expect("addr");
            let mine = Key::of(dst, Some(&owner(10)), Duration::from_secs(5)).expect("key");
            let other = Key::of(dst, Some(&owner(11)), Duration::from_secs(5)).expect("key");
            assert!(Key::of(dst, None, Duration::from_secs(5)).is_none(), "no owner, nothing kept");
            assert!(Key::of(dst, Some(&owner(10)), Duration::ZERO).is_none(), "keeping off");
            put(mine.clone(), c, Duration::from_secs(5));
            assert!(has(&mine) && !has(&other));
            assert!(take(&other).await.is_none(), "another process never gets it");
            let mut got = take(&mine).await.expect("kept");
            assert!(!has(&mine), "taken out");
            got.write_all(b"x").await.expect("write");
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("read");
            assert_eq!(&b, b"x", "the same connection");
        });
    }

    #[test]
    fn a_socket_the_server_closed_or_wrote_on_is_dropped_not_reused() {
        rt().block_on(async {
            for server_sends in [false, true] {
                let (c, mut s) = pair().await;
                let key = Key::of(s.local_addr().expect("addr"), Some(&owner(20)), Duration::from_secs(5)).expect("key");
                put(key.clone(), c, Duration::from_secs(5));
                if server_sends {
                    s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.expect("stray bytes");
                } else {
                    s.shutdown().await.expect("FIN");
                }
                // The watcher notices and closes: the server reads EOF (or a reset: the
                // stray bytes were never read), the key empties.
                let mut b = [0u8; 8];
                let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.expect("closed");
                assert!(matches!(r, Ok(0)) || r.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset), "server_sends={server_sends}: {r:?}");
                assert!(take(&key).await.is_none(), "server_sends={server_sends}");
            }
        });
    }

    #[test]
    fn a_kept_socket_is_closed_when_its_time_is_up_and_the_thread_bound_holds() {
        rt().block_on(async {
            let (c, mut s) = pair().await;
            let key = Key::of(s.local_addr().expect("addr"), Some(&owner(30)), Duration::from_millis(100)).expect("key");
            put(key.clone(), c, Duration::from_millis(100));
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.expect("closed in time").expect("read");
            assert_eq!(n, 0);
            assert!(!has(&key));
            // Per key: the oldest goes once MAX_PER_KEY are kept.
            let mut servers = Vec::new();
            for _ in 0..MAX_PER_KEY + 2 {
                let (c, s) = pair().await;
                servers.push(s);
                put(key.clone(), c, Duration::from_secs(5));
            }
            let kept = POOL.with(|p| p.borrow().idle.get(&key).map_or(0, Vec::len));
            assert_eq!(kept, MAX_PER_KEY);
            let n = tokio::time::timeout(Duration::from_secs(5), servers[0].read(&mut b)).await.expect("oldest closed").expect("read");
            assert_eq!(n, 0, "the oldest went first");
        });
    }

    #[test]
    fn a_reclaimed_socket_leaves_hyper_an_eof_and_a_shut_one_is_never_reclaimed() {
        rt().block_on(async {
            let (c, _s) = pair().await;
            let (mut io, handle) = reclaimable(c);
            assert!(handle.take().is_some());
            let mut b = [0u8; 1];
            assert_eq!(io.read(&mut b).await.expect("read"), 0, "EOF once taken");
            assert!(io.write(b"x").await.is_err());
            let (c, _s) = pair().await;
            let (mut io, handle) = reclaimable(c);
            io.shutdown().await.expect("shutdown");
            assert!(handle.take().is_none(), "its sending side is shut");
            let (c, _s) = pair().await;
            let (io, handle) = reclaimable(c);
            drop(io);
            assert!(handle.take().is_none(), "hyper's connection ended: the socket closed with it");
        });
    }
}
