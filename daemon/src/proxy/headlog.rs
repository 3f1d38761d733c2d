//! The framing of each request head, as the client sent it.
//!
//! hyper resolves ambiguous framing itself (Transfer-Encoding wins over Content-Length,
//! per RFC 9112) and hides the evidence: the Content-Length header is gone from the
//! parsed request. A request carrying both is a smuggling attempt and must be refused,
//! so the client stream is wrapped in [`LoggedIo`], which follows the byte stream the way
//! an HTTP/1.1 server does: heads parsed in stream order with httparse (the parser hyper
//! uses, so bare-LF heads and leading empty lines are read alike), bodies skipped by
//! their Content-Length, chunked bodies and trailers decoded byte for byte as hyper's
//! decoder reads them ([`Chunk`]: where a bare LF ends a line for one parser and not
//! the other, a trailer can hide a head or show a false one). Each head's framing is queued, and
//! [`HeadLog::framing_of`] hands them out in order, one per request hyper delivers.
//!
//! Nothing here searches the bytes for text: a copy of a request line inside a body, a
//! fragment hyper drops from the target, or a head ending in bare LFs cannot make it
//! read the wrong head (the fuzz target `http_head` checks exactly that). When the
//! stream cannot be followed (a malformed chunk, an upgrade, an oversized head), every
//! later request is reported ambiguous and refused: fail closed, never guess.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};


/// Largest head followed (hyper's own read buffer is ~400 KiB).
const MAX_HEAD: usize = 512 * 1024;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 8 * 1024;
/// Heads read ahead of the requests hyper delivered (pipelining); past this the
/// stream is given up on (fail closed).
const MAX_QUEUED: usize = 1024;

#[derive(Clone, Default)]
pub struct HeadLog(Arc<Mutex<Tracker>>);

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
    /// The stream could not be followed up to this request: its framing is unknown.
    pub lost: bool,
}

impl Framing {
    pub fn is_ambiguous(&self) -> bool {
        self.lost || (self.transfer_encoding && self.content_length_headers > 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Head,
    Body(u64),
    Chunked(Chunk),
    /// Given up on: every later request is ambiguous.
    Lost,
}

/// Where a chunked body is, byte for byte as hyper's `ChunkedState` decoder reads it
/// (hyper 1.x `proto/h1/decode.rs`). Any byte hyper refuses loses the stream: hyper
/// then ends the connection, and nothing after it may be paired with a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting the first hex digit of a chunk size.
    Start,
    Size(u64),
    /// Blanks after the size: no more digits may follow.
    SizeLws(u64),
    /// `;ext` up to CR; the count bounds its length.
    Extension(u64, usize),
    /// CR seen, LF must follow.
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// Inside a trailer line (any byte but CR, bare LF included, as hyper reads it).
    Trailer(usize),
    TrailerLf,
    /// After the last chunk or a trailer line: CR ends the body, anything else starts a trailer.
    EndCr,
    EndLf,
}

impl Chunk {
    /// The state after `b`, `None` where hyper answers with an error.
    fn step(self, b: u8) -> Option<State> {
        use Chunk::*;
        let hex = |b: u8| char::from(b).to_digit(16).map(u64::from);
        let next = match (self, b) {
            (Start, b) => Size(hex(b)?),
            (Size(n) | SizeLws(n), b'\t' | b' ') => SizeLws(n),
            (Size(n) | SizeLws(n), b';') => Extension(n, 0),
            (Size(n) | SizeLws(n) | Extension(n, _), b'\r') => SizeLf(n),
            (Size(n), b) => Size(n.checked_mul(16)?.checked_add(hex(b)?)?),
            (Extension(..), b'\n') => return None,
            (Extension(n, len), _) if len < MAX_LINE => Extension(n, len + 1),
            (SizeLf(0), b'\n') => EndCr,
            (SizeLf(n), b'\n') => Data(n),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Start,
            (Trailer(_), b'\r') => TrailerLf,
            (Trailer(len), _) if len < MAX_LINE => Trailer(len + 1),
            (TrailerLf, b'\n') => EndCr,
            (EndCr, b'\r') => EndLf,
            (EndCr, _) => Trailer(1),
            (EndLf, b'\n') => return Some(State::Head),
            _ => return None,
        };
        Some(State::Chunked(next))
    }
}

/// Follows one connection's request stream.
#[derive(Debug, Default)]
pub struct Tracker {
    state: State,
    /// Bytes read but not yet consumed by the state machine.
    buf: Vec<u8>,
    queue: VecDeque<Framing>,
}

impl Tracker {
    fn lose(&mut self) {
        self.state = State::Lost;
        self.buf = Vec::new();
    }

    /// Feed bytes in the order they were read.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.state == State::Lost {
            return;
        }
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            match self.state {
                State::Lost => return,
                State::Head => {
                    // RFC 9112 §2.2: empty lines before a request line are ignored.
                    let skip = rest.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
                    at += skip;
                    let rest = &self.buf[at..];
                    if rest.is_empty() {
                        break;
                    }
                    let mut headers = [httparse::EMPTY_HEADER; 128];
                    let mut req = httparse::Request::new(&mut headers);
                    match req.parse(rest) {
                        Ok(httparse::Status::Complete(len)) => {
                            let (framing, next) = framing_of_head(&req);
                            if self.queue.len() >= MAX_QUEUED {
                                return self.lose();
                            }
                            self.queue.push_back(framing);
                            at += len;
                            self.state = next;
                        }
                        Ok(httparse::Status::Partial) if rest.len() <= MAX_HEAD => break,
                        // Too large or malformed: hyper answers it with an error; what
                        // follows cannot be framed any more.
                        _ => return self.lose(),
                    }
                }
                State::Body(n) | State::Chunked(Chunk::Data(n)) => {
                    let take = rest.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    at += take;
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::Chunked(Chunk::DataCr),
                        (_, l) => State::Chunked(Chunk::Data(l)),
                    };
                    if left > 0 {
                        break;
                    }
                }
                State::Chunked(c) => {
                    let Some(&b) = rest.first() else { break };
                    at += 1;
                    match c.step(b) {
                        Some(next) => self.state = next,
                        None => return self.lose(),
                    }
                }
            }
        }
        self.buf.drain(..at);
    }

    /// The framing of the next request, in stream order. A request the stream did not
    /// show a head for (the tracker lost the stream, or disagrees with hyper) is
    /// reported as `lost`: refused rather than trusted.
    pub fn next(&mut self) -> Framing {
        self.queue.pop_front().unwrap_or(Framing { lost: true, ..Framing::default() })
    }
}

/// Framing headers of a parsed head, and where its body ends.
fn framing_of_head(req: &httparse::Request<'_, '_>) -> (Framing, State) {
    let mut f = Framing::default();
    let mut length: Option<u64> = None;
    let mut chunked_last = false;
    let mut upgrade = req.method.is_some_and(|m| m.eq_ignore_ascii_case("CONNECT"));
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            f.content_length_headers += 1;
            let v = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
            length = match (length, v) {
                (None, Some(v)) => Some(v),
                (Some(a), Some(b)) if a == b => Some(a),
                // Unparsable or conflicting lengths: hyper refuses the request; should it
                // ever not, the request is refused here (its body end is unknown).
                _ => {
                    f.lost = true;
                    length
                }
            };
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            f.transfer_encoding = true;
            chunked_last = h.value.rsplit(|b| *b == b',').next().is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            // Only a WebSocket is ever spliced (`proxy::upgrade` strips other offers, so
            // the stream stays HTTP/1 after them).
            upgrade |= h.value.trim_ascii().eq_ignore_ascii_case(b"websocket");
        }
    }
    let next = if f.is_ambiguous() || upgrade {
        // Refused (and the connection closed), or switching protocols: nothing after
        // this head is HTTP/1 we can frame.
        State::Lost
    } else if f.transfer_encoding {
        if chunked_last { State::Chunked(Chunk::Start) } else { State::Lost }
    } else {
        match length {
            Some(0) | None => State::Head,
            Some(n) => State::Body(n),
        }
    };
    (f, next)
}

impl HeadLog {
    fn push(&self, bytes: &[u8]) {
        if let Ok(mut t) = self.0.lock() {
            t.feed(bytes);
        }
    }

    /// The framing of the next request hyper delivers on this connection. Call it once
    /// per request, first thing, in the order requests arrive (`exchange::handle` does).
    /// The order, not the text, pairs them.
    pub fn framing_of(&self) -> Option<Framing> {
        let mut t = self.0.lock().ok()?;
        Some(t.next())
    }
}

/// A stream that copies what is read into a [`HeadLog`].
pub type LoggedIo<T> = super::hooked::Hooked<T, HeadLog>;

impl super::hooked::ReadHook for HeadLog {
    fn on_read(&mut self, bytes: &[u8]) {
        self.push(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framings(stream: &[u8], n: usize) -> Vec<Framing> {
        let log = HeadLog::default();
        // Fed in small pieces: the framing must not depend on how reads split the stream.
        for piece in stream.chunks(7) {
            log.push(piece);
        }
        (0..n).map(|_| log.framing_of().expect("lock")).collect()
    }

    const CLEAN: Framing = Framing { content_length_headers: 1, transfer_encoding: false, lost: false };

    #[test]
    fn finds_cl_te_in_the_raw_head() {
        let f = framings(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 1);
        assert!(f[0].is_ambiguous());
    }

    #[test]
    fn consecutive_heads_are_told_apart_and_bodies_skipped() {
        let f = framings(
            b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-T: 1\r\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            4,
        );
        assert_eq!(f[0], CLEAN);
        assert_eq!(f[1], Framing { content_length_headers: 0, transfer_encoding: true, lost: false });
        assert_eq!(f[2], Framing::default());
        // A request hyper delivered that the stream had no head for: refused, not trusted.
        assert!(f[3].lost && f[3].is_ambiguous());
    }

    /// The three ways the old text search was fooled (fuzz seeds `known-bug-*`).
    #[test]
    fn a_request_line_in_a_body_a_fragment_or_bare_lf_heads_do_not_hide_cl_te() {
        // A clean copy of the next request line inside the previous body.
        let body = b"POST /mcp HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut s = format!("POST /mcp HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        s.extend_from_slice(body);
        s.extend_from_slice(b"POST /mcp HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        let f = framings(&s, 2);
        assert_eq!(f[0], CLEAN);
        assert!(f[1].is_ambiguous(), "{f:?}");
        // A fragment hyper drops from the target.
        let f = framings(b"POST /mcp#x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 1);
        assert!(f[0].is_ambiguous());
        // A previous head with bare LFs.
        let f = framings(b"GET / HTTP/1.1\nHost: x\n\nPOST /mcp HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 2);
        assert_eq!(f[0], Framing::default());
        assert!(f[1].is_ambiguous(), "{f:?}");
    }

    /// Chunked bodies end where hyper's decoder ends them, byte for byte. A tracker
    /// that split chunk lines or trailers at bare LFs saw a head inside what hyper reads
    /// as a trailer, and its queue then paired the next (CL+TE) request with that clean
    /// head: the smuggled request was forwarded.
    #[test]
    fn chunked_bodies_end_where_hyper_ends_them() {
        // `X: a\n` then CRLF is one trailer line to hyper, so the `GET /x` line is a
        // trailer too (httparse stops reading trailers at the first empty line).
        let f = framings(
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\r\nGET /x HTTP/1.1\r\n\r\nPOST /mcp HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            2,
        );
        assert_eq!(f[0], Framing { content_length_headers: 0, transfer_encoding: true, lost: false });
        assert!(f[1].is_ambiguous(), "the second request hyper delivers is the CL+TE one: {f:?}");
        // Blanks after the size and an extension are fine; a body chunk ends in CRLF.
        let f = framings(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2 ;x=y\r\n{}\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 2);
        assert_eq!(f[1], Framing::default());
        // What hyper refuses ends the connection there; nothing after it is trusted
        // (fuzz seed `regression-bare-lf-chunk-extension`: a bare LF inside a chunk extension).
        for s in [
            &b"v mp HTTP/1.1\nTransfer-Encoding:chunked\r\n\n0;\n\nP c HTTP/1.1\nsf:b\r\n\r\nT p HTTP/1.1\nTransfer-Encoding:\nContent-Length:5\neeh:\n\n"[..],
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\n\r\nGET /b HTTP/1.1\r\n\r\n",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n 2\r\n{}\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2 2\r\n{}\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        ] {
            let f = framings(s, 3);
            assert!(f[1].is_ambiguous() && f[2].is_ambiguous(), "{:?}: {f:?}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn malformed_streams_fail_closed() {
        for s in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\n\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        ] {
            let f = framings(s, 2);
            assert!(f[1].is_ambiguous(), "{:?}: {f:?}", String::from_utf8_lossy(s));
            let has = |h: &[u8]| s.windows(h.len()).any(|w| w.eq_ignore_ascii_case(h));
            if has(b"transfer-encoding") && has(b"content-length") {
                assert!(f[0].is_ambiguous(), "the head itself: {f:?}");
            }
        }
    }

    /// Only a WebSocket handshake may be spliced, so only it ends HTTP/1 on the stream;
    /// an `h2c` offer is stripped before the server sees it and the stream goes on.
    #[test]
    fn only_a_websocket_upgrade_ends_the_stream() {
        let f = framings(b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", 2);
        assert_eq!(f, [Framing::default(), CLEAN]);
        let f = framings(b"GET / HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", 2);
        assert!(f[1].lost, "{f:?}");
    }

    #[test]
    fn buffer_and_queue_are_bounded() {
        let log = HeadLog::default();
        for _ in 0..200 {
            log.push(&[b'x'; 4096]);
        }
        let t = log.0.lock().unwrap();
        assert_eq!(t.state, State::Lost);
        assert!(t.buf.len() <= MAX_HEAD + 4096);
    }
}
