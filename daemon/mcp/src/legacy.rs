//! The 2024-11-05 HTTP+SSE transport's `endpoint` event.
//!
//! Why this exists: in the legacy transport the client opens `GET <sse-url>`;
//! the server's first event is `event: endpoint` whose data is the URI the
//! client must POST its messages to (relative or absolute, usually carrying the
//! session id in the query: `sessionId` in the TypeScript SDK, `session_id` in
//! the Python SDK). Responses to those POSTs arrive as `message` events on the
//! GET stream, so the proxy must learn the POST path to tie both halves of one
//! conversation together.
//!
//! Resolution follows RFC 3986 section 5.2 against the path of the GET request,
//! with the WHATWG URL quirks clients actually apply for `http(s)` (`\` is `/`,
//! `%2e` is a dot segment). Nothing here panics on a hostile `data` string.

/// SSE event type that announces the POST endpoint.
pub const ENDPOINT_EVENT: &str = "endpoint";

/// Query parameter names that carry the legacy session id.
pub const SESSION_ID_PARAMS: [&str; 2] = ["sessionId", "session_id"];

const MAX_ENDPOINT_LEN: usize = 8 * 1024;

/// Scheme and authority of an absolute endpoint URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https` (lower-case); `None` for a network-path reference
    /// (`//host/path`), which keeps the SSE request's scheme.
    pub scheme: Option<String>,
    /// `host[:port]` exactly as written (may include `user@`).
    pub authority: String,
}

/// Where the client will POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostEndpoint {
    /// Set when the data named a scheme/authority. The proxy should check that
    /// it is the same server the SSE stream came from.
    pub origin: Option<Origin>,
    /// Absolute path, dot segments removed; never empty.
    pub path: String,
    /// Query without the `?`.
    pub query: Option<String>,
    /// Percent-decoded value of the first `sessionId` / `session_id` parameter.
    pub session_id: Option<String>,
}

impl PostEndpoint {
    /// `path?query`: the request-target of the client's POSTs.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

/// Why an `endpoint` event's data could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint event data is empty")]
    Empty,
    #[error("endpoint URI is {len} bytes, over the {MAX_ENDPOINT_LEN}-byte limit")]
    TooLong { len: usize },
    #[error("endpoint URI has a control or space character at byte {at}")]
    BadCharacter { at: usize },
    #[error("endpoint URI scheme {scheme:?} is not http or https")]
    UnsupportedScheme { scheme: String },
    #[error("endpoint URI has a scheme but no //authority")]
    MissingAuthority,
}

/// Resolve an `endpoint` event's `data` against the path (query allowed,
/// ignored) of the GET request that opened the SSE stream.
///
/// `"/messages?sessionId=a"`, `"messages?sessionId=a"` (relative to the SSE
/// path's directory), `"?sessionId=a"`, `"//host/m"` and
/// `"http://host:8000/messages/?session_id=a"` are all accepted.
pub fn parse_endpoint(data: &str, sse_path: &str) -> Result<PostEndpoint, EndpointError> {
    let data = data.trim_matches(|c: char| c.is_ascii_whitespace());
    if data.is_empty() {
        return Err(EndpointError::Empty);
    }
    if data.len() > MAX_ENDPOINT_LEN {
        return Err(EndpointError::TooLong { len: data.len() });
    }
    if let Some(at) = data.bytes().position(|b| b <= b' ' || b == 0x7f) {
        return Err(EndpointError::BadCharacter { at });
    }
    // Fragment never reaches the server.
    let data = data.split('#').next().unwrap_or("");

    let (origin, rest) = split_origin(data)?;
    let (raw_path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (rest, None),
    };
    let raw_path = raw_path.replace('\\', "/");

    let path = if origin.is_some() || raw_path.starts_with('/') {
        if raw_path.is_empty() { "/".to_owned() } else { remove_dot_segments(&raw_path) }
    } else {
        let base = base_path(sse_path);
        if raw_path.is_empty() {
            base
        } else {
            let dir = match base.rfind('/') {
                Some(i) => &base[..=i],
                None => "/",
            };
            remove_dot_segments(&format!("{dir}{raw_path}"))
        }
    };
    let session_id = query.as_deref().and_then(session_id_from_query);
    Ok(PostEndpoint { origin, path, query, session_id })
}

/// The legacy session id in a query string (`a=1&sessionId=xyz`), percent- and
/// `+`-decoded like the SDKs' form parsers do.
pub fn session_id_from_query(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        SESSION_ID_PARAMS.contains(&k).then(|| form_decode(v))
    })
}

fn split_origin(data: &str) -> Result<(Option<Origin>, &str), EndpointError> {
    if let Some(after) = data.strip_prefix("//") {
        let (auth, rest) = split_authority(after);
        return Ok((Some(Origin { scheme: None, authority: auth.to_owned() }), rest));
    }
    // A scheme is ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) before the first ':'
    // that comes before any '/', '?'.
    let stop = data.find(['/', '?']).unwrap_or(data.len());
    if let Some(colon) = data[..stop].find(':') {
        let scheme = &data[..colon];
        let valid = scheme.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if valid {
            let lower = scheme.to_ascii_lowercase();
            if lower != "http" && lower != "https" {
                return Err(EndpointError::UnsupportedScheme { scheme: scheme.to_owned() });
            }
            let after = &data[colon + 1..];
            let after = after.strip_prefix("//").or_else(|| after.strip_prefix("\\\\"));
            let Some(after) = after else {
                return Err(EndpointError::MissingAuthority);
            };
            let (auth, rest) = split_authority(after);
            if auth.is_empty() {
                return Err(EndpointError::MissingAuthority);
            }
            return Ok((Some(Origin { scheme: Some(lower), authority: auth.to_owned() }), rest));
        }
    }
    Ok((None, data))
}

fn split_authority(s: &str) -> (&str, &str) {
    let end = s.find(['/', '?', '\\']).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

fn base_path(sse_path: &str) -> String {
    let p = sse_path.split(['?', '#']).next().unwrap_or("");
    if p.starts_with('/') { p.to_owned() } else { format!("/{p}") }
}

fn is_dot(seg: &str) -> bool {
    seg == "." || seg.eq_ignore_ascii_case("%2e")
}

fn is_dot_dot(seg: &str) -> bool {
    matches!(seg.len(), 2 | 4 | 6)
        && ["..", ".%2e", "%2e.", "%2e%2e"].iter().any(|d| seg.eq_ignore_ascii_case(d))
}

/// RFC 3986 5.2.4 for an absolute path (leading `/`).
fn remove_dot_segments(path: &str) -> String {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let n = parts.len();
    let mut out: Vec<&str> = Vec::with_capacity(n);
    for (i, seg) in parts.into_iter().enumerate() {
        let last = i + 1 == n;
        if is_dot(seg) {
            if last {
                out.push("");
            }
        } else if is_dot_dot(seg) {
            out.pop();
            if last {
                out.push("");
            }
        } else {
            out.push(seg);
        }
    }
    format!("/{}", out.join("/"))
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(_) => s.to_owned(),
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pq(data: &str, base: &str) -> String {
        parse_endpoint(data, base).map(|e| e.path_and_query()).unwrap_or_else(|e| panic!("{data}: {e}"))
    }

    #[test]
    fn typescript_sdk_relative_path() {
        let e = parse_endpoint("/messages?sessionId=0b1c-22", "/sse").unwrap();
        assert_eq!(e.path, "/messages");
        assert_eq!(e.query.as_deref(), Some("sessionId=0b1c-22"));
        assert_eq!(e.session_id.as_deref(), Some("0b1c-22"));
        assert_eq!(e.origin, None);
        assert_eq!(e.path_and_query(), "/messages?sessionId=0b1c-22");
    }

    #[test]
    fn python_sdk_absolute_uri() {
        let e = parse_endpoint("http://localhost:8000/messages/?session_id=1beded10f1764848be4e028989c149e8", "/sse").unwrap();
        assert_eq!(e.origin, Some(Origin { scheme: Some("http".into()), authority: "localhost:8000".into() }));
        assert_eq!(e.path_and_query(), "/messages/?session_id=1beded10f1764848be4e028989c149e8");
        assert_eq!(e.session_id.as_deref(), Some("1beded10f1764848be4e028989c149e8"));
        let e = parse_endpoint("HTTPS://Example.com", "/sse").unwrap();
        assert_eq!(e.origin.as_ref().and_then(|o| o.scheme.as_deref()), Some("https"));
        assert_eq!(e.path, "/");
    }

    #[test]
    fn relative_forms_resolve_against_sse_path() {
        assert_eq!(pq("messages?sessionId=a", "/mcp/sse"), "/mcp/messages?sessionId=a");
        assert_eq!(pq("messages?sessionId=a", "/mcp/sse/?x=1"), "/mcp/sse/messages?sessionId=a");
        assert_eq!(pq("../m?sessionId=a", "/a/b/sse"), "/a/m?sessionId=a");
        assert_eq!(pq("../../../../m", "/a/sse"), "/m");
        assert_eq!(pq("?sessionId=q", "/sse?old=1"), "/sse?sessionId=q");
        assert_eq!(pq("/a/./b/../c/", "/sse"), "/a/c/");
        assert_eq!(pq("/a/%2E%2e/b", "/sse"), "/b");
        assert_eq!(pq("/a\\..\\b", "/sse"), "/b");
        assert_eq!(pq("/m#frag", "/sse"), "/m");
        assert_eq!(pq("  /m?sessionId=a \r\n", "/sse"), "/m?sessionId=a");
        assert_eq!(pq("m", ""), "/m");
        let e = parse_endpoint("//other:9/p?sessionId=z", "/sse").unwrap();
        assert_eq!(e.origin, Some(Origin { scheme: None, authority: "other:9".into() }));
        assert_eq!(e.path_and_query(), "/p?sessionId=z");
        // A colon after the first slash is not a scheme.
        assert_eq!(pq("/x:y?sessionId=1", "/sse"), "/x:y?sessionId=1");
    }

    #[test]
    fn session_id_extraction() {
        assert_eq!(session_id_from_query("a=1&sessionId=x%2Fy&sessionId=z").as_deref(), Some("x/y"));
        assert_eq!(session_id_from_query("session_id=a+b").as_deref(), Some("a b"));
        assert_eq!(session_id_from_query("sessionid=nope"), None);
        assert_eq!(session_id_from_query("sessionId").as_deref(), Some(""));
        assert_eq!(session_id_from_query("sessionId=%zz%").as_deref(), Some("%zz%"));
        assert_eq!(session_id_from_query("sessionId=%ff").as_deref(), Some("%ff"), "non-UTF-8 stays raw");
        assert_eq!(parse_endpoint("/m", "/sse").unwrap().session_id, None);
    }

    #[test]
    fn rejects_bad_data() {
        assert_eq!(parse_endpoint("", "/sse"), Err(EndpointError::Empty));
        assert_eq!(parse_endpoint(" \n", "/sse"), Err(EndpointError::Empty));
        assert_eq!(parse_endpoint("/a b", "/sse"), Err(EndpointError::BadCharacter { at: 2 }));
        assert_eq!(parse_endpoint("/a\0", "/sse"), Err(EndpointError::BadCharacter { at: 2 }));
        assert_eq!(
            parse_endpoint("javascript:alert(1)", "/sse"),
            Err(EndpointError::UnsupportedScheme { scheme: "javascript".into() })
        );
        assert_eq!(
            parse_endpoint("file:///etc/passwd", "/sse"),
            Err(EndpointError::UnsupportedScheme { scheme: "file".into() })
        );
        assert_eq!(parse_endpoint("http:/x", "/sse"), Err(EndpointError::MissingAuthority));
        assert_eq!(parse_endpoint("http:///x", "/sse"), Err(EndpointError::MissingAuthority));
        let long = format!("/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert!(matches!(parse_endpoint(&long, "/sse"), Err(EndpointError::TooLong { .. })));
        // Arbitrary junk never panics.
        for junk in ["%", "?", "#", ":", "//", "a:b", "\u{1F600}", "/\u{FEFF}", "%2e%2", "..", "."] {
            let _ = parse_endpoint(junk, "/s");
        }
    }
}
