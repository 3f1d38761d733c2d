//! HTTP body plumbing: one boxed body type, bounded collection, and a tap that lets the
//! proxy watch bytes stream past without buffering or delaying them.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn incoming(b: Incoming) -> Body {
    b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

/// Result of reading a request body under a size limit and a deadline.
pub enum Collected {
    Complete(Bytes),
    /// Over the limit: what was read so far and the unread rest, to forward unchanged.
    TooLarge(Body),
    /// The client's body broke off (connection closed, bad chunking): what arrived.
    Truncated { partial: Bytes, error: String },
    TimedOut { partial: Bytes },
}

pub async fn collect(mut body: Incoming, limit: usize, deadline: Duration) -> Collected {
    let mut buf = BytesMut::new();
    let read = async {
        loop {
            match body.frame().await {
                None => return None,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                        if buf.len() > limit {
                            return Some(Ok(()));
                        }
                    }
                }
                Some(Err(e)) => return Some(Err(e.to_string())),
            }
        }
    };
    match tokio::time::timeout(deadline, read).await {
        Err(_) => Collected::TimedOut { partial: buf.freeze() },
        Ok(None) => Collected::Complete(buf.freeze()),
        Ok(Some(Err(error))) => Collected::Truncated { partial: buf.freeze(), error },
        Ok(Some(Ok(()))) => Collected::TooLarge(Prefixed { prefix: Some(buf.freeze()), rest: body }.boxed_unsync()),
    }
}

/// Already-read bytes followed by the rest of an incoming body.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: Incoming,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.rest).poll_frame(cx).map_err(|e| Box::new(e) as BoxError)
    }
}

/// How a tapped body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Complete,
    Error(String),
    /// The body was dropped before its end (the client went away).
    Dropped,
}

/// Sees each data chunk of a tapped body, then its end, exactly once.
pub trait Observer: Send + 'static {
    fn data(&mut self, chunk: &[u8]);
    fn end(&mut self, how: End);
}

/// Passes every frame through untouched and at once, showing data to an observer.
pub struct Tap<O: Observer> {
    inner: Body,
    observer: Option<O>,
}

impl<O: Observer> Tap<O> {
    pub fn new(inner: Body, observer: O) -> Self {
        let mut tap = Tap { inner, observer: Some(observer) };
        // An empty body (e.g. 202 Accepted) is never polled at all.
        if tap.inner.is_end_stream() {
            tap.finish(End::Complete);
        }
        tap
    }

    fn finish(&mut self, how: End) {
        if let Some(mut o) = self.observer.take() {
            o.end(how);
        }
    }
}

impl<O: Observer + Unpin> HttpBody for Tap<O> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(o)) = (frame.data_ref(), this.observer.as_mut()) {
                    o.data(data);
                }
                // hyper stops polling once a body reports its end (e.g. Content-Length
                // reached), so the end must be seen here, not only on `None`.
                if this.inner.is_end_stream() {
                    this.finish(End::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(End::Error(e.to_string()));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish(End::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<O: Observer> Drop for Tap<O> {
    fn drop(&mut self) {
        if let Some(mut o) = self.observer.take() {
            o.end(End::Dropped);
        }
    }
}
