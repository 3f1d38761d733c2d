//! Opening the daemon's own connections to the original destination.
//!
//! Every upstream socket carries the daemon's `SO_MARK`, which the eBPF `connect` hooks
//! skip, so the daemon's traffic is never redirected back to itself (the hooks also skip
//! the daemon's tgid; the mark covers helper processes and tests run under root).

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {dst}: connect timed out after {timeout:?}")]
    Timeout { dst: SocketAddr, timeout: Duration },
    #[error("upstream {dst}: {source}")]
    Io { dst: SocketAddr, source: std::io::Error },
}

pub async fn connect(dst: SocketAddr, mark: u32, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    let io = |source| UpstreamError::Io { dst, source };
    let sock = if dst.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(io)?;
    if let Err(e) = nix::sys::socket::setsockopt(&sock.as_fd(), nix::sys::socket::sockopt::Mark, &mark) {
        // Without CAP_NET_ADMIN (tests without root) the mark cannot be set; the tgid
        // check in the hooks still protects the daemon itself.
        tracing::debug!(error = %e, "SO_MARK not set on upstream socket");
    }
    let stream = tokio::time::timeout(timeout, sock.connect(dst))
        .await
        .map_err(|_| UpstreamError::Timeout { dst, timeout })?
        .map_err(io)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
