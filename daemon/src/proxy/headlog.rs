//! The raw bytes of request heads, as the client sent them.
//!
//! hyper resolves ambiguous framing itself (Transfer-Encoding wins over Content-Length,
//! per RFC 9112) and hides the evidence: the Content-Length header is gone from the
//! parsed request. A request carrying both is a smuggling attempt and must be refused,
//! so the client stream is wrapped in [`LoggedIo`], which keeps a bounded window of the
//! most recent bytes read, and [`HeadLog::framing_of`] re-parses the head of each
//! request from those bytes.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes kept at most; a request head is far smaller (hyper's own limit is ~400 KiB of
/// headers, but MCP clients send a few hundred bytes).
const WINDOW: usize = 64 * 1024;

#[derive(Clone, Default)]
pub struct HeadLog(Arc<Mutex<Vec<u8>>>);

impl std::fmt::Debug for HeadLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeadLog")
    }
}

/// What the raw head says about body framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Framing {
    pub content_length_headers: usize,
    pub transfer_encoding: bool,
}

impl Framing {
    pub fn is_ambiguous(&self) -> bool {
        self.transfer_encoding && self.content_length_headers > 0
    }
}

impl HeadLog {
    fn push(&self, bytes: &[u8]) {
        if let Ok(mut buf) = self.0.lock() {
            buf.extend_from_slice(bytes);
            if buf.len() > WINDOW {
                let excess = buf.len() - WINDOW;
                buf.drain(..excess);
            }
        }
    }

    /// Find the head that starts with `request_line` (e.g. `POST /mcp HTTP/1.1`), report
    /// its framing headers, and forget everything up to its end.
    pub fn framing_of(&self, request_line: &[u8]) -> Option<Framing> {
        let mut buf = self.0.lock().ok()?;
        let start = find(&buf, request_line)?;
        let end = find(&buf[start..], b"\r\n\r\n").map(|e| start + e + 4)?;
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = req.parse(&buf[start..end]).ok()?.is_complete();
        let mut f = Framing::default();
        if parsed {
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    f.content_length_headers += 1;
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    f.transfer_encoding = true;
                }
            }
        }
        buf.drain(..end);
        parsed.then_some(f)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A stream that copies what is read into a [`HeadLog`].
pub struct LoggedIo<T> {
    inner: T,
    log: HeadLog,
}

impl<T> LoggedIo<T> {
    pub fn new(inner: T, log: HeadLog) -> Self {
        LoggedIo { inner, log }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LoggedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                self.log.push(new);
            }
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LoggedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cl_te_in_the_raw_head() {
        let log = HeadLog::default();
        log.push(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        let f = log.framing_of(b"POST /mcp HTTP/1.1").unwrap();
        assert!(f.is_ambiguous());
    }

    #[test]
    fn consecutive_heads_are_told_apart() {
        let log = HeadLog::default();
        log.push(b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert_eq!(log.framing_of(b"POST /a HTTP/1.1"), Some(Framing { content_length_headers: 1, transfer_encoding: false }));
        assert_eq!(log.framing_of(b"POST /a HTTP/1.1"), Some(Framing { content_length_headers: 0, transfer_encoding: true }));
        assert_eq!(log.framing_of(b"POST /a HTTP/1.1"), None);
    }

    #[test]
    fn window_is_bounded() {
        let log = HeadLog::default();
        for _ in 0..100 {
            log.push(&[b'x'; 4096]);
        }
        assert!(log.0.lock().unwrap().len() <= WINDOW);
    }
}
