//! Relayed bytes move socket → pipe → socket inside the kernel (`splice(2)`), never
//! through a user-space buffer.
//!
//! Why: a relayed connection (an agent's non-HTTP traffic, a TLS connection passed
//! through) is pure copying. With `copy_bidirectional` every byte crosses into mcpwatchd
//! and back out (two copies, two syscalls per 8 KiB); with a pipe per direction the
//! kernel moves page references, 64 KiB per call, and the daemon holds no buffer for it.
//!
//! Semantics match `tokio::io::copy_bidirectional`: each direction runs until its source
//! reaches EOF, then the destination's write side is shut (a half-close is passed on)
//! while the other direction goes on; an error on either ends both. Readiness comes from
//! tokio (`TcpStream::try_io`), so a direction waits without a thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes asked of one `splice` call, and the capacity asked for each pipe (64 KiB by
/// default; pages are only taken while bytes are in flight).
const CHUNK: usize = 256 * 1024;

/// A pipe for one direction; both ends close when dropped.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two fds into the array on success; we own them after.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created by pipe2 and are owned by nobody else.
        let pipe = unsafe { Pipe { read: OwnedFd::from_raw_fd(fds[0]), write: OwnedFd::from_raw_fd(fds[1]) } };
        // Best effort: over the per-user pipe quota the kernel keeps the default size.
        // SAFETY: F_SETPIPE_SZ on a pipe fd we own.
        let _ = unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        Ok(pipe)
    }
}

/// One non-blocking `splice` of up to `len` bytes from `from` to `to`.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain fds, null offsets (neither side is a file with a position to use).
    let n = unsafe {
        libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE)
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// The two pipes of a relay, one per direction.
pub struct Pipes(Pipe, Pipe);

impl Pipes {
    /// Fails when the process is out of descriptors; the caller then relays the ordinary way.
    pub fn new() -> io::Result<Pipes> {
        Ok(Pipes(Pipe::new()?, Pipe::new()?))
    }
}

/// Relay both ways between two connected TCP sockets until both directions ended or one
/// failed (then the other is dropped, as `copy_bidirectional` does). `moved` is called
/// after every read that moved bytes (idle tracking).
pub async fn relay(a: &TcpStream, b: &TcpStream, pipes: &Pipes, moved: impl Fn() + Clone) {
    if let Err(e) = tokio::try_join!(one_way(a, b, &pipes.0, moved.clone()), one_way(b, a, &pipes.1, moved)) {
        tracing::debug!(error = %e, "spliced relay ended with an error");
    }
}

/// `from` → pipe → `to` until `from` reaches EOF (then `to`'s write side is shut).
async fn one_way(from: &TcpStream, to: &TcpStream, pipe: &Pipe, moved: impl Fn()) -> io::Result<()> {
    let (pr, pw) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
    loop {
        from.readable().await?;
        let n = match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pw, CHUNK)) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // The other side learns nothing more is coming from this one.
                let _ = shutdown_write(to);
                return Err(e);
            }
        };
        if n == 0 {
            return shutdown_write(to);
        }
        moved();
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || splice(pr, to.as_raw_fd(), left)) {
                Ok(w) => left -= w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    // SAFETY: shutdown on a socket fd we borrow; it does not close the fd.
    if unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_WR) } != 0 {
        let e = io::Error::last_os_error();
        // The peer already went away: nothing left to tell it.
        if e.raw_os_error() != Some(libc::ENOTCONN) {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    #[tokio::test]
    async fn relays_large_payloads_both_ways_and_passes_half_closes_on() {
        // client <-> (c_in | relay | u_out) <-> server
        let (mut client, c_in) = pair().await;
        let (u_out, mut server) = pair().await;
        let reads = Arc::new(AtomicUsize::new(0));
        let r = reads.clone();
        let pipes = Pipes::new().expect("pipes");
        let relay = tokio::spawn(async move { relay(&c_in, &u_out, &pipes, move || { r.fetch_add(1, Ordering::Relaxed); }).await });
        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let client_side = async move {
            let (mut rd, mut wr) = client.split();
            let send = async { wr.write_all(&up2).await.expect("client write"); wr.shutdown().await.expect("client FIN") };
            let mut got = Vec::new();
            let recv = async { rd.read_to_end(&mut got).await.expect("client read") };
            tokio::join!(send, recv);
            got
        };
        let server_side = async move {
            // The server reads the client's whole stream (its FIN arrives), then answers:
            // a half-closed connection still carries the other direction.
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.expect("server read");
            server.write_all(&down2).await.expect("server write");
            server.shutdown().await.expect("server FIN");
            got
        };
        let (client_got, server_got) = tokio::join!(client_side, server_side);
        assert_eq!(server_got.len(), up.len());
        assert!(server_got == up, "upstream bytes differ");
        assert!(client_got == down, "downstream bytes differ");
        relay.await.expect("relay task");
        assert!(reads.load(Ordering::Relaxed) >= 2, "activity seen on each direction");
    }

    #[tokio::test]
    async fn a_reset_on_one_side_ends_the_relay() {
        let (client, c_in) = pair().await;
        let (u_out, mut server) = pair().await;
        let pipes = Pipes::new().expect("pipes");
        let relay = tokio::spawn(async move { relay(&c_in, &u_out, &pipes, || {}).await });
        // SO_LINGER 0 then close: an RST instead of a FIN (a zero linger never blocks the
        // drop, which is what the deprecation warns of).
        #[allow(deprecated)]
        client.set_linger(Some(std::time::Duration::ZERO)).expect("linger");
        drop(client);
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), server.read(&mut buf)).await.expect("server sees the end").unwrap_or(0);
        assert_eq!(n, 0);
        tokio::time::timeout(std::time::Duration::from_secs(5), relay).await.expect("relay ends").expect("task");
    }
}
