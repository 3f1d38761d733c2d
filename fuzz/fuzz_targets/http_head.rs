//! Fuzz target: the raw request-head check that refuses request smuggling
//! (`mcpwatchd::proxy::headlog`: Content-Length together with Transfer-Encoding).
//!
//! hyper hides the evidence (it drops Content-Length when Transfer-Encoding is present),
//! so the daemon re-finds each request's head in the raw bytes it read, pairing heads
//! with hyper's requests by their order on the connection (`proxy::exchange` asks once
//! per request, first thing). The input is the byte stream a client sends on one connection.
//! This target walks it request by request the way an HTTP/1.1 server does (httparse for
//! heads, Content-Length or chunked bodies, stopping where hyper would answer 400 or where
//! the model is unsure) and checks, for every request hyper would hand to the service:
//! `framing_of()`, asked in request order, says "ambiguous" exactly when that request carries
//! both headers. A miss is a smuggled request that is forwarded instead of refused.
#![no_main]

use std::pin::Pin;
use std::str::FromStr as _;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use mcpwatchd::proxy::headlog::{Framing, HeadLog, LoggedIo};
use tokio::io::{AsyncRead, ReadBuf};

/// hyper's default limit on request headers.
const MAX_HEADERS: usize = 100;
const MAX_REQUESTS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let log = HeadLog::default();
    read_all(data, &log);
    let mut pos = 0;
    for _ in 0..MAX_REQUESTS {
        let Some(req) = next_request(&data[pos..]) else { break };
        let got = log.framing_of().unwrap_or_default();
        // The bypass property: a CL+TE request is always seen. The other way round, the
        // head log may only err on the closed side: a stream it cannot follow (`lost`)
        // is refused, never a clean request called ambiguous for its own headers.
        assert!(
            got.is_ambiguous() == req.framing.is_ambiguous() || (got.lost && !req.framing.is_ambiguous()),
            "request {:?} (at byte {pos}) has {:?}, the head log says {got:?}; stream {:?}",
            req.line,
            req.framing,
            String::from_utf8_lossy(data)
        );
        if req.framing.is_ambiguous() {
            break; // refused with `Connection: close`
        }
        let Some(len) = req.len else { break };
        pos += len;
    }
});

/// Reads `data` through [`LoggedIo`] as the daemon's HTTP server would, in 4 KiB reads.
fn read_all(data: &[u8], log: &HeadLog) {
    // A cursor: the wrapper's streams are read-write (it may shut the write side).
    let mut io = LoggedIo::new(std::io::Cursor::new(data.to_vec()), log.clone());
    let mut cx = Context::from_waker(Waker::noop());
    let mut chunk = [0u8; 4096];
    loop {
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut io).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
            _ => return,
        }
    }
}

struct Request {
    /// The request line as `proxy::exchange` renders it from hyper's parsed request.
    line: String,
    framing: Framing,
    /// Head plus body length, `None` when the model cannot tell where the next request starts.
    len: Option<usize>,
}

/// The next request hyper would pass to the service, or `None` where hyper would refuse
/// the bytes (400) or wait for more.
fn next_request(bytes: &[u8]) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let method = http::Method::from_bytes(req.method?.as_bytes()).ok()?;
    let uri = http::Uri::from_str(req.path?).ok()?;
    let version = match req.version? {
        0 => http::Version::HTTP_10,
        1 => http::Version::HTTP_11,
        _ => return None,
    };
    let mut framing = Framing::default();
    let mut lengths = Vec::new();
    let mut chunked = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            framing.content_length_headers += 1;
            let v = std::str::from_utf8(h.value).ok()?.trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None; // hyper: 400
            }
            lengths.push(v.parse::<usize>().ok()?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            framing.transfer_encoding = true;
            let v = std::str::from_utf8(h.value).ok()?;
            chunked = v.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    let line = format!("{method} {uri} {version:?}");
    if framing.is_ambiguous() {
        return Some(Request { line, framing, len: None });
    }
    if framing.transfer_encoding && !chunked {
        return None; // hyper: 400 for a request body that is not chunked-last
    }
    let body_len = if chunked {
        chunked_len(&bytes[head_len..])
    } else if let Some(&first) = lengths.first() {
        lengths.iter().all(|&l| l == first).then_some(first)?;
        (bytes.len() - head_len >= first).then_some(first)
    } else {
        Some(0)
    };
    Some(Request { line, framing, len: body_len.map(|b| head_len + b) })
}

/// Length of a complete chunked body as hyper's decoder reads it (hyper 1.x
/// `proto/h1/decode.rs`, written here independently of the head log's port), `None`
/// where hyper answers with an error or the model is unsure. Note httparse's
/// `parse_chunk_size` is laxer than hyper (it lets a bare LF into an extension), so it
/// is not the model.
fn chunked_len(bytes: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let digits = bytes[pos..].iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return None;
        }
        let mut size: u64 = 0;
        for &b in &bytes[pos..pos + digits] {
            size = size.checked_mul(16)?.checked_add(u64::from(char::from(b).to_digit(16)?))?;
        }
        pos += digits;
        pos += bytes[pos..].iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
        if bytes.get(pos) == Some(&b';') {
            let ext = bytes[pos..].iter().position(|b| *b == b'\r')?;
            if bytes[pos..pos + ext].contains(&b'\n') || ext > 1024 {
                return None;
            }
            pos += ext;
        }
        if bytes.get(pos..pos + 2)? != b"\r\n" {
            return None;
        }
        pos += 2;
        if size == 0 {
            return trailers_len(&bytes[pos..]).map(|t| pos + t);
        }
        pos = pos.checked_add(usize::try_from(size).ok()?)?;
        if bytes.get(pos..pos + 2)? != b"\r\n" {
            return None;
        }
        pos += 2;
    }
}

/// Trailer lines after the last chunk: each runs to a CR (a bare LF is part of the
/// line) and needs an LF after it; an empty line ends them. hyper then parses them with
/// httparse and refuses the body when they are not valid headers.
fn trailers_len(bytes: &[u8]) -> Option<usize> {
    let mut pos = 0;
    let mut lines = 0;
    loop {
        let cr = bytes[pos..].iter().position(|b| *b == b'\r')?;
        pos += cr;
        if bytes.get(pos + 1) != Some(&b'\n') {
            return None;
        }
        pos += 2;
        if cr == 0 {
            break;
        }
        lines += 1;
    }
    if lines > 0 {
        if lines >= MAX_HEADERS || pos > 8 * 1024 {
            return None;
        }
        let mut headers = vec![httparse::EMPTY_HEADER; lines];
        let Ok(httparse::Status::Complete((_, parsed))) = httparse::parse_headers(&bytes[..pos], &mut headers) else { return None };
        for h in parsed.iter() {
            http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
            http::HeaderValue::from_bytes(h.value).ok()?;
        }
    }
    Some(pos)
}
