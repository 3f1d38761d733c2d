//! One stream wrapper for "watch what is read, pass everything else through".
//!
//! Why a module of its own: the relay's idle tracking ([`super::relay::Tracked`]), the raw
//! request log ([`super::headlog::LoggedIo`]) and the upstream's FIN hand-over
//! ([`super::lifecycle::FinIo`]) all wrap a stream and differ only in what happens around a
//! read; the write side is plain delegation, written once here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a [`Hooked`] stream does around each read.
pub trait ReadHook {
    /// Before the inner stream is read (may act on the stream, e.g. shut its sending side).
    fn before_read<S: AsyncWrite + Unpin>(&mut self, _inner: Pin<&mut S>, _cx: &mut Context<'_>) {}
    /// After a read that returned bytes.
    fn on_read(&mut self, _bytes: &[u8]) {}
    /// After a write that took `n > 0` bytes.
    fn on_write(&mut self, _n: usize) {}
    /// After a flush that completed.
    fn on_flush(&mut self) {}
}

/// A stream with a [`ReadHook`]; writes go straight to the inner stream.
pub struct Hooked<S, H> {
    inner: S,
    hook: H,
}

impl<S, H> Hooked<S, H> {
    pub fn new(inner: S, hook: H) -> Self {
        Hooked { inner, hook }
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin, H: ReadHook + Unpin> AsyncRead for Hooked<S, H> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.hook.before_read(Pin::new(&mut this.inner), cx);
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                this.hook.on_read(new);
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin, H: ReadHook + Unpin> AsyncWrite for Hooked<S, H> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &res
            && *n > 0
        {
            this.hook.on_write(*n);
        }
        res
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &res
            && *n > 0
        {
            this.hook.on_write(*n);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = &res {
            this.hook.on_flush();
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
