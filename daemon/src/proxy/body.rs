//! HTTP body plumbing: one boxed body type, bounded collection, and a tap that lets the
//! proxy watch bytes stream past without buffering or delaying them.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame};
use http_body_util::{BodyExt, Empty, Full};
use http_body_util::combinators::UnsyncBoxBody;
use http::{Response, StatusCode};
use hyper::body::Incoming;

use crate::bodies::Lease;

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
    /// `json_like`: the part read could begin a JSON document
    /// ([`mcpwatch_mcp::integrity::may_be_json`]).
    TooLarge { rest: Body, json_like: bool },
    /// Reading stopped early because the first bytes cannot begin JSON: what was read
    /// and the unread rest, to stream on unchanged.
    NotJson(Body),
    /// The client's body broke off (connection closed, bad chunking): what arrived.
    Truncated { partial: Bytes, error: String },
    TimedOut { partial: Bytes },
    /// The daemon-wide budget for held bodies (`bodies`) could not take the next bytes:
    /// how many were read, and whether they could begin JSON.
    OverBudget { read: usize, json_like: bool },
}

pub async fn collect(body: Incoming, limit: usize, deadline: Duration) -> Collected {
    collect_with(body, limit, deadline, false, None).await
}

/// [`collect`], but stop as soon as the first bytes show the body cannot be JSON
/// (`stop_if_not_json`): such a body (an upload, a form) streams on undelayed. With a
/// `lease`, every byte held is taken from the daemon-wide budget first (`bodies`); the
/// caller keeps the lease as long as it keeps the bytes.
pub async fn collect_with(mut body: Incoming, limit: usize, deadline: Duration, stop_if_not_json: bool, mut lease: Option<&mut Lease>) -> Collected {
    enum Stop {
        Over,
        NotJson,
        Failed(String),
        Budget,
    }
    let mut buf = BytesMut::new();
    let read = async {
        loop {
            match body.frame().await {
                None => return None,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        // Taken up to the limit: past it the body is not held for
                        // inspection (413, or streamed on), so it must not turn into a 503.
                        if let Some(l) = lease.as_deref_mut()
                            && !l.grow(data.len().min(limit.saturating_sub(buf.len())))
                        {
                            return Some(Stop::Budget);
                        }
                        buf.extend_from_slice(&data);
                        if buf.len() > limit {
                            return Some(Stop::Over);
                        }
                        if stop_if_not_json && !mcpwatch_mcp::integrity::may_be_json(&buf) {
                            return Some(Stop::NotJson);
                        }
                    }
                }
                Some(Err(e)) => return Some(Stop::Failed(e.to_string())),
            }
        }
    };
    match tokio::time::timeout(deadline, read).await {
        Err(_) => Collected::TimedOut { partial: buf.freeze() },
        Ok(None) => Collected::Complete(buf.freeze()),
        Ok(Some(Stop::Failed(error))) => Collected::Truncated { partial: buf.freeze(), error },
        Ok(Some(Stop::Budget)) => Collected::OverBudget { read: buf.len(), json_like: mcpwatch_mcp::integrity::may_be_json(&buf) },
        Ok(Some(Stop::Over)) => {
            let json_like = mcpwatch_mcp::integrity::may_be_json(&buf);
            Collected::TooLarge { rest: read_then(vec![buf.freeze()], incoming(body)), json_like }
        }
        Ok(Some(Stop::NotJson)) => Collected::NotJson(read_then(vec![buf.freeze()], incoming(body))),
    }
}

/// A body read to its end before its response head goes out, when it ends within `hold`
/// bytes: hyper then gives the client an exact `Content-Length`, as the server did,
/// instead of re-framing the answer as chunked. For answers mcpwatch holds whole anyway
/// (a JSON body is inspected, and perhaps rewritten, before any byte of it is
/// delivered), so nothing reaches the client later than it would have. A body that goes
/// past `hold` before its end (an oversized answer passed on uninspected) or carries
/// trailers or an error goes on as it comes: what was read first, then the rest.
pub async fn settle(mut body: Body, hold: usize) -> Body {
    let mut held: Vec<Bytes> = Vec::new();
    let mut bytes = 0usize;
    loop {
        match body.frame().await {
            None => {
                return match held.len() {
                    0 => empty(),
                    1 => full(held.pop().unwrap_or_default()),
                    _ => full(held.concat()),
                };
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    bytes += data.len();
                    held.push(data);
                    if bytes > hold {
                        return read_then(held, body);
                    }
                }
                Err(other) => return Held::new(held, Some(Ok(other)), Some(body)).boxed_unsync(),
            },
            Some(Err(e)) => return Held::new(held, Some(Err(e)), None).boxed_unsync(),
        }
    }
}

/// `read` (data already taken from a body), then the rest of that body.
fn read_then(read: Vec<Bytes>, rest: Body) -> Body {
    Held::new(read, None, Some(rest)).boxed_unsync()
}

/// Frames already read, then the rest of the body (none after an error).
struct Held {
    frames: std::collections::VecDeque<Result<Frame<Bytes>, BoxError>>,
    rest: Option<Body>,
}

impl Held {
    /// The data `read`, then `last` (a non-data frame or the error that stopped the
    /// read), then `rest`.
    fn new(read: Vec<Bytes>, last: Option<Result<Frame<Bytes>, BoxError>>, rest: Option<Body>) -> Held {
        Held { frames: read.into_iter().map(|d| Ok(Frame::data(d))).chain(last).collect(), rest }
    }
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.frames.pop_front() {
            return Poll::Ready(Some(f));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }
}

/// How a transformed body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Complete,
    Error(String),
    /// The body was dropped before its end (the client went away).
    Dropped,
}

/// Sees a response body chunk by chunk and decides what the client gets.
pub trait Transformer: Send + Unpin + 'static {
    /// Bytes to send now for this chunk (may be empty: the transformer is holding
    /// them until a message is complete).
    fn chunk(&mut self, data: &[u8]) -> Bytes;
    /// Bytes still to send when the body ends; called exactly once.
    fn finish(&mut self, how: End) -> Bytes;
    /// After a chunk: stop here (the transformer has sent its last bytes; the rest of
    /// the upstream body is dropped, which closes it).
    fn aborted(&self) -> bool {
        false
    }
}

/// A body whose bytes pass through a [`Transformer`]. A transformer that changes
/// nothing yields the original bytes as soon as each message is complete.
pub struct Transform<T: Transformer> {
    inner: Body,
    t: Option<T>,
    done: bool,
}

impl<T: Transformer> Transform<T> {
    pub fn new(inner: Body, t: T) -> Self {
        Transform { inner, t: Some(t), done: false }
    }

    fn finish(&mut self, how: End) -> Bytes {
        self.done = true;
        match self.t.take() {
            Some(mut t) => t.finish(how),
            None => Bytes::new(),
        }
    }
}

impl<T: Transformer> HttpBody for Transform<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = match this.t.as_mut() {
                            Some(t) => t.chunk(&data),
                            None => data,
                        };
                        if this.t.as_ref().is_some_and(|t| t.aborted()) {
                            let tail = this.finish(End::Error("aborted by mcpwatch".into()));
                            this.inner = empty();
                            let mut all = out.to_vec();
                            all.extend_from_slice(&tail);
                            return Poll::Ready((!all.is_empty()).then(|| Ok(Frame::data(Bytes::from(all)))));
                        }
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                Poll::Ready(None) => {
                    let out = this.finish(End::Complete);
                    return Poll::Ready((!out.is_empty()).then(|| Ok(Frame::data(out))));
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "upstream body failed mid-stream");
                    let _ = this.finish(End::Error(e.to_string()));
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl<T: Transformer> Drop for Transform<T> {
    fn drop(&mut self) {
        if let Some(mut t) = self.t.take() {
            let _ = t.finish(End::Dropped);
        }
    }
}

/// A response the proxy itself produces (gateway errors, refusals).
pub fn local_response(status: StatusCode, content_type: &str, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}
