//! Fuzz target: the connection sniffer that decides, from the first client bytes, whether
//! a redirected connection is HTTP (parsed and governed), TLS (maybe terminated) or
//! something else (relayed untouched or refused, never inspected).
//!
//! Properties, each checked on every prefix of the input (the daemon peeks a growing
//! prefix until the classifier decides):
//! - a decision never changes as more bytes arrive;
//! - a prefix as long as the daemon's peek window is always decided;
//! - `Http` only for a method token and a space (after empty lines, which HTTP/1 servers
//!   skip; SP or HTAB), `Tls` only for a handshake record header (0x16 0x03);
//! - the bypass property: bytes that an HTTP/1.x server parses as a complete request with
//!   a method an MCP server serves (httparse, the parser hyper uses, is the oracle) are
//!   never `Other`, because those bytes would reach the server uninspected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpwatchd::proxy::conn;

/// The classifier's answer, reduced to what the properties need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Tls,
    Other,
}

/// The one call to the classifier (adapt here when its signature changes); `None`: it
/// needs more bytes.
fn classify(prefix: &[u8]) -> Option<Kind> {
    match conn::classify(prefix) {
        conn::Classification::NeedMore => None,
        conn::Classification::Http1 | conn::Classification::Http2 => Some(Kind::Http),
        conn::Classification::Tls => Some(Kind::Tls),
        conn::Classification::NotHttp(_) => Some(Kind::Other),
    }
}

/// Bytes the daemon peeks at most before it must decide (`conn::sniff`'s buffer).
const PEEK: usize = conn::PEEK_WINDOW;

/// Methods an MCP server acts on (Streamable HTTP: POST, GET, DELETE) and their kin.
const SERVED: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(PEEK + 64)];
    let mut decided: Option<(usize, Kind)> = None;
    for n in 0..=data.len().min(PEEK) {
        let prefix = &data[..n];
        let got = classify(prefix);
        match (decided, got) {
            (Some((at, first)), now) => assert_eq!(
                now,
                Some(first),
                "decision for {prefix:?} changed: {first:?} at {at} bytes, {now:?} at {n}"
            ),
            (None, Some(kind)) => decided = Some((n, kind)),
            (None, None) => assert!(n < PEEK, "{n} bytes and still undecided: {prefix:?}"),
        }
        match got {
            Some(Kind::Http) if n < PEEK => assert!(is_request_line_start(prefix), "Http without a method: {prefix:?}"),
            Some(Kind::Tls) => assert!(prefix.starts_with(&[0x16, 0x03]), "Tls without 16 03: {prefix:?}"),
            _ => {}
        }
    }
    // What the daemon decides for this connection: the peek window.
    if classify(&data[..data.len().min(PEEK)]) == Some(Kind::Other) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(_)) = req.parse(data)
            && req.method.is_some_and(|m| SERVED.contains(&m))
        {
            panic!("an HTTP request a server accepts is not classified HTTP: {:?}", String::from_utf8_lossy(data));
        }
    }
});

/// Empty lines, then an RFC 9110 token, then a separator; or, after other control bytes
/// and whitespace (which lenient servers such as Netty skip), one of the methods MCP
/// servers act on, then a separator (or the window's end).
fn is_request_line_start(prefix: &[u8]) -> bool {
    // Separators as the most lenient parser splits (Netty: SP, HTAB, VT, FF, CR): wider
    // than RFC 9112 on purpose; hyper refuses what it cannot parse, nothing is relayed.
    let sep = |b: &u8| matches!(b, b' ' | b'\t' | 0x0b | 0x0c | b'\r');
    let rest = &prefix[prefix.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count()..];
    let junk = rest.iter().take_while(|&&b| b <= b' ' || b == 0x7f).count();
    if junk > 0 {
        let text = &rest[junk..];
        return ["POST", "GET", "DELETE", "PUT", "PATCH"].iter().any(|m| {
            text.len() >= m.len() && text[..m.len()].eq_ignore_ascii_case(m.as_bytes()) && text.get(m.len()).is_none_or(sep)
        });
    }
    let token = rest.iter().take_while(|&&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)).count();
    token > 0 && rest.get(token).is_some_and(sep)
}
