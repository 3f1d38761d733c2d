//! Peeking the client's ClientHello without losing a byte.
//!
//! The proxy must read the ClientHello (SNI, ALPN) to decide between intercepting and passing
//! the connection through untouched, but once bytes are read from the socket they are gone. So
//! the socket is wrapped in a [`HelloStream`] that records everything read while
//! `tokio_rustls::LazyConfigAcceptor` parses the hello. Afterwards the [`Hello`] can either
//! continue the handshake with a leaf config ([`Hello::accept`]) or give back the raw socket plus
//! the exact bytes already read ([`Hello::into_passthrough`]) for a byte-identical relay.
//!
//! The whole read runs under one deadline, so a client dribbling its hello a byte at a time
//! (slowloris) is cut off when it expires, and the recording is capped so a hostile client
//! cannot make us buffer more than a maximal ClientHello.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{LazyConfigAcceptor, StartHandshake};

/// Most bytes we record while waiting for a ClientHello: a handshake message is at most 64 KiB
/// plus record headers; anything beyond that is not a ClientHello we want.
pub const MAX_HELLO_BYTES: usize = 80 * 1024;
/// Most ALPN protocols kept from a ClientHello.
const MAX_ALPN_KEPT: usize = 32;

/// The client-side stream once our handshake completed.
pub type ClientTlsStream<T = TcpStream> = tokio_rustls::server::TlsStream<HelloStream<T>>;

/// The client's TCP socket, recording what is read while the ClientHello is peeked and counting
/// what we write (used to tell "client hung up after seeing our certificate" from other EOFs).
#[derive(Debug)]
pub struct HelloStream<T = TcpStream> {
    tcp: T,
    record: Option<Vec<u8>>,
    written: u64,
}

impl<T> HelloStream<T> {
    fn new(tcp: T) -> HelloStream<T> {
        HelloStream {
            tcp,
            record: Some(Vec::with_capacity(2048)),
            written: 0,
        }
    }

    /// The underlying socket (peer address, socket options).
    pub fn get_ref(&self) -> &T {
        &self.tcp
    }

    /// Bytes written to the client through this wrapper since the handshake started.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    fn stop_recording(&mut self) {
        self.record = None;
        self.written = 0;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HelloStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
        if let Some(record) = &mut this.record {
            let new = &buf.filled()[before..];
            if record.len() + new.len() > MAX_HELLO_BYTES {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    HelloTooLarge,
                )));
            }
            record.extend_from_slice(new);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HelloStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.tcp).poll_write(cx, buf))?;
        this.written += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs))?;
        this.written += n as u64;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[derive(Debug)]
struct HelloTooLarge;

impl std::fmt::Display for HelloTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientHello larger than {MAX_HELLO_BYTES} bytes")
    }
}

impl std::error::Error for HelloTooLarge {}

/// Why no ClientHello could be read. Always the client's side.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("client: no complete ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("client: connection closed before a complete ClientHello ({received} bytes received)")]
    Truncated { received: usize },
    #[error("client: not TLS (first byte {first_byte:#04x})")]
    NotTls { first_byte: u8 },
    #[error("client: ClientHello larger than {MAX_HELLO_BYTES} bytes")]
    TooLarge,
    #[error("client: invalid ClientHello: {0}")]
    Invalid(rustls::Error),
    #[error("client: I/O error reading the ClientHello: {0}")]
    Io(io::Error),
}

/// Why the client's side of the handshake failed after we chose a config. Always the client's
/// side; [`crate::classify_client_abort`] tells whether it means "client does not trust our CA".
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("client: handshake did not finish within {0:?}")]
    Timeout(Duration),
    #[error("client: sent fatal alert {0:?}")]
    AlertReceived(rustls::AlertDescription),
    #[error("client: closed the connection mid-handshake after we sent {server_bytes} bytes")]
    Closed { server_bytes: u64 },
    #[error("client: TLS error: {0}")]
    Tls(rustls::Error),
    #[error("client: I/O error during the handshake: {0}")]
    Io(io::Error),
}

impl HandshakeError {
    fn from_io(e: io::Error, server_bytes: u64) -> HandshakeError {
        if let Some(tls) = rustls_error(&e) {
            return match tls {
                rustls::Error::AlertReceived(alert) => HandshakeError::AlertReceived(alert),
                other => HandshakeError::Tls(other),
            };
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => HandshakeError::Closed { server_bytes },
            _ => HandshakeError::Io(e),
        }
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if that is what it carries.
pub(crate) fn rustls_error(e: &io::Error) -> Option<rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
}

/// A parsed ClientHello with the connection parked right after it.
///
/// Consume it exactly one way: [`Hello::accept`] (terminate TLS with our leaf),
/// [`Hello::into_passthrough`] (relay untouched) or [`Hello::reject`] (fatal alert, close).
pub struct Hello<T = TcpStream> {
    start: StartHandshake<HelloStream<T>>,
    sni: Option<String>,
    alpn: Vec<Vec<u8>>,
    shares_cipher_suite: bool,
    handshake_timeout: Duration,
}

impl<T> std::fmt::Debug for Hello<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("sni", &self.sni)
            .field(
                "alpn",
                &self
                    .alpn
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<Vec<_>>(),
            )
            .field("recorded", &self.start.io.record.as_deref().map_or(0, <[u8]>::len))
            .finish_non_exhaustive()
    }
}

/// Reads the client's ClientHello from `tcp`, all of it within `deadline`.
///
/// The SNI is as rustls parsed it: lower-cased, and `None` when absent or an IP literal (RFC 6066
/// forbids IPs there; the caller uses the original destination address instead). A name rustls
/// finds syntactically invalid fails here with [`HelloError::Invalid`] (after rustls sent the
/// client an `illegal_parameter` alert).
pub async fn read_client_hello<T: AsyncRead + AsyncWrite + Unpin>(tcp: T, deadline: Duration) -> Result<Hello<T>, HelloError> {
    let mut acceptor = LazyConfigAcceptor::new(Acceptor::default(), HelloStream::new(tcp));
    let result = tokio::time::timeout(deadline, &mut acceptor).await;
    let start = match result {
        Err(_) => return Err(HelloError::Timeout(deadline)),
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            let recorded = acceptor
                .take_io()
                .and_then(|io| io.record)
                .unwrap_or_default();
            return Err(classify_hello_error(e, &recorded));
        }
    };
    let hello = start.client_hello();
    let sni = hello.server_name().map(str::to_owned);
    let alpn = hello
        .alpn()
        .map(|protocols| protocols.take(MAX_ALPN_KEPT).map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    let ours = crate::provider();
    let shares_cipher_suite = hello
        .cipher_suites()
        .iter()
        .any(|offered| ours.cipher_suites.iter().any(|s| s.suite() == *offered));
    Ok(Hello {
        start,
        sni,
        alpn,
        shares_cipher_suite,
        handshake_timeout: deadline,
    })
}

fn classify_hello_error(e: io::Error, recorded: &[u8]) -> HelloError {
    if e.get_ref().is_some_and(|inner| inner.is::<HelloTooLarge>()) {
        return HelloError::TooLarge;
    }
    if let Some(&first_byte) = recorded.first() {
        // 0x16 = handshake record; anything else at the start is not a TLS client.
        if first_byte != 0x16 {
            return HelloError::NotTls { first_byte };
        }
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return HelloError::Truncated {
            received: recorded.len(),
        };
    }
    match rustls_error(&e) {
        Some(tls) => HelloError::Invalid(tls),
        None => HelloError::Io(e),
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Hello<T> {
    /// The server name the client asked for (lower-case), if it sent a DNS name.
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// The ALPN protocols the client offered, in its preference order (empty if none).
    pub fn alpn(&self) -> &[Vec<u8>] {
        &self.alpn
    }

    /// Whether the client offers at least one cipher suite we implement (TLS 1.2/1.3 AEAD
    /// suites). A legacy client (TLS 1.0, RC4/3DES only) does not, and can never complete an
    /// intercepted handshake.
    pub fn shares_cipher_suite(&self) -> bool {
        self.shares_cipher_suite
    }

    /// Exactly the bytes read from the client so far (the ClientHello and anything after it).
    pub fn recorded(&self) -> &[u8] {
        self.start.io.record.as_deref().unwrap_or_default()
    }

    /// The client's socket (peer address etc.).
    pub fn tcp(&self) -> &T {
        &self.start.io.tcp
    }

    /// The deadline the hello was read under; [`Hello::accept`] gives the rest of the handshake
    /// the same budget.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Gives up on TLS termination: returns the raw socket and every byte already read from it,
    /// which the caller writes to the upstream first to relay the connection byte-identical.
    /// Nothing has been written to the client.
    pub fn into_passthrough(self) -> (T, Vec<u8>) {
        let StartHandshake { io, .. } = self.start;
        (io.tcp, io.record.unwrap_or_default())
    }

    /// Completes the client's handshake with `config` (normally from
    /// [`crate::LeafIssuer::server_config_for`]), within [`Hello::handshake_timeout`].
    pub async fn accept(
        self,
        config: Arc<ServerConfig>,
    ) -> Result<ClientTlsStream<T>, HandshakeError> {
        let Hello {
            mut start,
            handshake_timeout,
            ..
        } = self;
        start.io.stop_recording();
        let handshake = start.into_stream(config).into_fallible();
        match tokio::time::timeout(handshake_timeout, handshake).await {
            Err(_) => Err(HandshakeError::Timeout(handshake_timeout)),
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err((e, io))) => Err(HandshakeError::from_io(e, io.bytes_written())),
        }
    }

    /// Refuses the connection: sends the client a fatal `alert` in a plaintext TLS record (valid
    /// before any ServerHello) and closes. Bounded by a short timeout; errors are ignored because
    /// the connection is being dropped anyway.
    pub async fn reject(self, alert: rustls::AlertDescription) {
        let (mut tcp, _) = self.into_passthrough();
        let record = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, u8::from(alert)];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            tcp.write_all(&record).await?;
            tcp.shutdown().await
        })
        .await;
    }
}
