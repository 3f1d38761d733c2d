//! Protocol eras, version and routing headers, and the request checks that
//! depend on them.
//!
//! Why this exists: what is legal on the wire depends on the revision in use,
//! and version confusion is an attack (a client claiming 2025-03-26 to get a
//! batch past single-message policy). Three eras matter to the proxy:
//!
//! * [`Era::Legacy2024`]: 2024-11-05 HTTP+SSE transport (GET stream with an
//!   `endpoint` event, POSTs answered `202`, responses as SSE `message` events;
//!   see [`crate::legacy`]). Only the proxy can tell this era (from the
//!   transport), so it constructs it itself.
//! * [`Era::Stateful`]: Streamable HTTP with an `initialize` handshake and
//!   `Mcp-Session-Id` (2025-03-26, 2025-06-18, 2025-11-25). Batches only in
//!   2025-03-26; from 2025-06-18 every request after the handshake carries
//!   `MCP-Protocol-Version` (absent header => assume 2025-03-26).
//! * [`Era::Stateless2026`]: 2026-07-28. No `initialize`, no session id; the
//!   client may start with `server/discover`; every request carries
//!   `params._meta["io.modelcontextprotocol/protocolVersion"]` plus the
//!   `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers, which must
//!   match the body (`-32020` HeaderMismatch otherwise). Clients that support
//!   both (Python SDK 2.x) fall back to `initialize` when `server/discover` is
//!   refused, so the era is decided per request, not per server.
//!
//! Header names are lower-case constants (usable with
//! `http::HeaderName::from_static`); HTTP header names are case-insensitive.

use base64::Engine;
use serde_json::{Value, json};

use crate::jsonrpc::{
    HEADER_MISMATCH, INVALID_PARAMS, INVALID_REQUEST, Id, Message, Parsed, UNSUPPORTED_PROTOCOL_VERSION, clip,
    error_response, standard_message,
};

pub const HEADER_PROTOCOL_VERSION: &str = "mcp-protocol-version";
pub const HEADER_SESSION_ID: &str = "mcp-session-id";
/// 2026-07-28: the JSON-RPC method of the body.
pub const HEADER_METHOD: &str = "mcp-method";
/// 2026-07-28: the body's tool/prompt name or resource URI (possibly
/// `=?base64?...?=`-encoded, see [`decode_header_value`]).
pub const HEADER_NAME: &str = "mcp-name";
pub const HEADER_LAST_EVENT_ID: &str = "last-event-id";

pub const V2024_11_05: &str = "2024-11-05";
pub const V2025_03_26: &str = "2025-03-26";
pub const V2025_06_18: &str = "2025-06-18";
pub const V2025_11_25: &str = "2025-11-25";
pub const V2026_07_28: &str = "2026-07-28";
/// Every revision this crate understands, oldest first.
pub const KNOWN_VERSIONS: [&str; 5] = [V2024_11_05, V2025_03_26, V2025_06_18, V2025_11_25, V2026_07_28];
/// What a Streamable HTTP server assumes when `MCP-Protocol-Version` is absent.
pub const DEFAULT_STATEFUL_VERSION: &str = V2025_03_26;

pub fn is_known_version(v: &str) -> bool {
    KNOWN_VERSIONS.contains(&v)
}

/// Which protocol family a request/conversation uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Era {
    /// 2024-11-05 HTTP+SSE transport.
    Legacy2024,
    /// Streamable HTTP with `initialize` and sessions.
    Stateful { version: String },
    /// 2026-07-28 and later: stateless.
    Stateless2026 { version: String },
}

impl Era {
    /// The era implied by a version string used over Streamable HTTP:
    /// `YYYY-MM-DD` dates from 2026-07-28 on are stateless, anything else stateful.
    pub fn for_version(v: &str) -> Era {
        let date_like = v.len() == 10
            && v.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
        if date_like && v >= V2026_07_28 {
            Era::Stateless2026 { version: v.to_owned() }
        } else {
            Era::Stateful { version: v.to_owned() }
        }
    }

    /// The protocol version (`2024-11-05` for the legacy transport).
    pub fn version(&self) -> &str {
        match self {
            Era::Legacy2024 => V2024_11_05,
            Era::Stateful { version } | Era::Stateless2026 { version } => version,
        }
    }

    /// JSON-RPC batches are legal only in 2025-03-26.
    pub fn allows_batch(&self) -> bool {
        matches!(self, Era::Stateful { version } if version == V2025_03_26)
    }

    /// Legacy (`sessionId` query) and stateful (`Mcp-Session-Id`) eras have sessions.
    pub fn has_sessions(&self) -> bool {
        !self.is_stateless()
    }

    pub fn is_stateless(&self) -> bool {
        matches!(self, Era::Stateless2026 { .. })
    }

    /// Transport label as used in audit records: `sse` or `streamable-http`.
    pub fn transport(&self) -> &'static str {
        match self {
            Era::Legacy2024 => "sse",
            _ => "streamable-http",
        }
    }
}

/// The MCP-relevant request headers, borrowed from whatever header map the
/// proxy uses. Absent (or non-UTF-8) headers are `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderSignals<'a> {
    pub protocol_version: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub method: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl<'a> HeaderSignals<'a> {
    /// Build from a lookup by lower-case header name, e.g.
    /// `HeaderSignals::from_lookup(|n| req.headers().get(n).and_then(|v| v.to_str().ok()))`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<&'a str>) -> Self {
        let get = |n: &str| lookup(n).map(str::trim);
        HeaderSignals {
            protocol_version: get(HEADER_PROTOCOL_VERSION),
            session_id: get(HEADER_SESSION_ID),
            method: get(HEADER_METHOD),
            name: get(HEADER_NAME),
        }
    }
}

/// Decode an MCP header value: plain values as-is, `=?base64?<std b64>?=`
/// sentinel values to their UTF-8 text. `None` if the sentinel is malformed.
pub fn decode_header_value(v: &str) -> Option<String> {
    match v.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")) {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            String::from_utf8(bytes).ok()
        }
        None => Some(v.to_owned()),
    }
}

/// Best guess of the era of one request from its headers and (first) message.
/// `None` when nothing says (a header-less, non-lifecycle POST: legacy
/// 2024-11-05 or 2025-03-26; the proxy's knowledge of the conversation decides).
///
/// Order: body `_meta` protocol version (stateless); `server/discover`
/// (stateless); `initialize` (stateful, with the *proposed* version: update
/// it from the response's `protocolVersion`); `MCP-Protocol-Version` header;
/// `Mcp-Session-Id` (stateful 2025-03-26); `Mcp-Method` (stateless).
pub fn detect_era(headers: &HeaderSignals<'_>, first: Option<&Message>) -> Option<Era> {
    if let Some(m) = first.filter(|m| !m.is_reply()) {
        if let Some(v) = meta_version(m) {
            return Some(Era::Stateless2026 { version: v.to_owned() });
        }
        if m.is_discover() {
            let v = headers.protocol_version.unwrap_or(V2026_07_28);
            return Some(Era::Stateless2026 { version: v.to_owned() });
        }
        if m.is_initialize() {
            let v = m.declared_protocol_version().unwrap_or(DEFAULT_STATEFUL_VERSION);
            return Some(Era::Stateful { version: v.to_owned() });
        }
    }
    if let Some(v) = headers.protocol_version {
        return Some(Era::for_version(v));
    }
    if headers.session_id.is_some() {
        return Some(Era::Stateful { version: DEFAULT_STATEFUL_VERSION.to_owned() });
    }
    if headers.method.is_some() {
        return Some(Era::Stateless2026 { version: V2026_07_28.to_owned() });
    }
    None
}

/// A request the proxy must refuse before forwarding: answer with
/// `http_status` and [`Rejection::error_response`] as the body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (HTTP {http_status}, JSON-RPC {code})")]
pub struct Rejection {
    pub http_status: u16,
    pub code: i64,
    pub message: String,
    /// The offending request's id when known (single requests), else `None`.
    pub id: Option<Id>,
    /// Error `data` (e.g. `{"requested":..,"supported":[..]}` for -32022).
    pub data: Option<Box<Value>>,
}

impl Rejection {
    fn new(http_status: u16, code: i64, detail: impl std::fmt::Display, id: Option<&Id>) -> Self {
        Rejection {
            http_status,
            code,
            message: format!("{}: {detail}", standard_message_or(code)),
            id: id.cloned(),
            data: None,
        }
    }

    /// The JSON-RPC error response body.
    pub fn error_response(&self) -> Value {
        error_response(self.id.as_ref(), self.code, &self.message, self.data.as_deref().cloned())
    }
}

fn standard_message_or(code: i64) -> &'static str {
    match code {
        HEADER_MISMATCH => "Header mismatch",
        UNSUPPORTED_PROTOCOL_VERSION => "Unsupported protocol version",
        c => standard_message(c),
    }
}

/// Protocol checks on one client->server POST body, independent of policy.
///
/// `known` is the era the proxy already established for this conversation
/// (the legacy transport, or the version *negotiated* in the `initialize`
/// response), `None` if it has none. Returns the era to use for this request
/// (`None` = undetermined: legacy or 2025-03-26 without headers) or why to
/// refuse it:
///
/// * unparseable body or invalid envelope (any batch element included) ->
///   400 with -32700/-32600;
/// * `MCP-Protocol-Version` not a known revision -> 400 (-32022 for clients
///   speaking 2026-07-28 `_meta`, else -32600); a header contradicting the
///   negotiated version or the body's `_meta` version -> 400;
/// * a batch where the era forbids it (everything but 2025-03-26, when the
///   era is known), or a batch containing `initialize` -> 400 -32600. Batches
///   of an undetermined era pass: the proxy must apply policy per element;
/// * routing headers that disagree with the body (`Mcp-Method` vs method,
///   `Mcp-Name` vs [`Message::target_name`], undecodable `Mcp-Name`) -> 400
///   -32020. Absent routing headers are not refused here;
/// * [`Message::validate_params`] failure -> -32602 with the request id
///   (HTTP 200 for requests, 400 for notifications).
pub fn check_request(
    headers: &HeaderSignals<'_>,
    parsed: &Parsed,
    known: Option<&Era>,
) -> Result<Option<Era>, Rejection> {
    let messages: Vec<&Message> = match parsed {
        Parsed::Invalid(e) => return Err(Rejection::new(400, e.code(), e, None)),
        Parsed::Single(m) => vec![m],
        Parsed::Batch(items) => {
            if let Some(e) = parsed.first_invalid() {
                return Err(Rejection::new(400, e.code(), format!("batch element: {e}"), None));
            }
            items.iter().filter_map(|r| r.as_ref().ok()).collect()
        }
    };
    let single_id = match parsed {
        Parsed::Single(m) => m.id(),
        _ => None,
    };
    let first = messages.first().copied();
    let body_meta_version = first.and_then(meta_version);

    if let Some(v) = headers.protocol_version {
        if !is_known_version(v) {
            let v = clip(v, 64);
            let r = if body_meta_version.is_some() {
                let mut r = Rejection::new(400, UNSUPPORTED_PROTOCOL_VERSION, format!("MCP-Protocol-Version {v:?}"), single_id);
                r.data = Some(Box::new(json!({ "requested": v, "supported": KNOWN_VERSIONS })));
                r
            } else {
                Rejection::new(400, INVALID_REQUEST, format!("unsupported MCP-Protocol-Version {v:?}"), single_id)
            };
            return Err(r);
        }
        if let Some(mv) = body_meta_version
            && mv != v {
                return Err(Rejection::new(
                    400,
                    HEADER_MISMATCH,
                    format!("MCP-Protocol-Version {v:?} but _meta protocolVersion {:?}", clip(mv, 64)),
                    single_id,
                ));
            }
        if let Some(Era::Stateful { version }) = known
            && version != v && !first.is_some_and(Message::is_initialize) {
                return Err(Rejection::new(
                    400,
                    INVALID_REQUEST,
                    format!("MCP-Protocol-Version {v:?} differs from the negotiated {version:?}"),
                    single_id,
                ));
            }
    }

    let era = match known {
        Some(k) if !first.is_some_and(|m| m.is_initialize() || m.is_discover() || meta_version(m).is_some()) => {
            Some(k.clone())
        }
        _ => detect_era(headers, first).or_else(|| known.cloned()),
    };

    if let Parsed::Batch(_) = parsed {
        if let Some(e) = era.as_ref().filter(|e| !e.allows_batch()) {
            return Err(Rejection::new(
                400,
                INVALID_REQUEST,
                format!("JSON-RPC batches are not allowed in protocol {}", e.version()),
                None,
            ));
        }
        if messages.iter().any(|m| m.is_initialize()) {
            return Err(Rejection::new(400, INVALID_REQUEST, "initialize must not be part of a batch", None));
        }
        if headers.method.is_some() || headers.name.is_some() {
            return Err(Rejection::new(400, HEADER_MISMATCH, "routing headers on a batch", None));
        }
    }

    if let Parsed::Single(m) = parsed {
        if let Some(hm) = headers.method
            && m.method() != Some(hm) {
                return Err(Rejection::new(
                    400,
                    HEADER_MISMATCH,
                    format!("Mcp-Method {:?} but body method {:?}", clip(hm, 64), clip(m.method().unwrap_or(""), 64)),
                    m.id(),
                ));
            }
        if let Some(hn) = headers.name {
            let decoded = decode_header_value(hn);
            if decoded.is_none() || decoded.as_deref() != m.target_name() {
                return Err(Rejection::new(
                    400,
                    HEADER_MISMATCH,
                    "Mcp-Name does not match the body's name/uri",
                    m.id(),
                ));
            }
        }
    }

    for m in &messages {
        if let Err(e) = m.validate_params() {
            let status = if m.is_request() { 200 } else { 400 };
            return Err(Rejection::new(status, INVALID_PARAMS, e, m.id()));
        }
    }
    Ok(era)
}

fn meta_version(m: &Message) -> Option<&str> {
    if m.is_reply() {
        return None;
    }
    m.meta()?.get(crate::message::meta::PROTOCOL_VERSION)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::parse_body;

    fn hs<'a>(pairs: &[(&'a str, &'a str)]) -> HeaderSignals<'a> {
        let owned: Vec<(String, &'a str)> = pairs.iter().map(|(k, v)| (k.to_ascii_lowercase(), *v)).collect();
        HeaderSignals::from_lookup(|n| owned.iter().find(|(k, _)| k == n).map(|(_, v)| *v))
    }

    fn one(body: &str) -> Message {
        match parse_body(body.as_bytes()) {
            Parsed::Single(m) => m,
            other => panic!("{other:?}"),
        }
    }

    const DISCOVER: &str = r#"{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    const CALL_2026: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Oslo"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;

    #[test]
    fn era_detection() {
        let none = HeaderSignals::default();
        assert_eq!(detect_era(&none, Some(&one(DISCOVER))), Some(Era::Stateless2026 { version: "2026-07-28".into() }));
        assert_eq!(detect_era(&none, Some(&one(INIT))), Some(Era::Stateful { version: "2025-06-18".into() }));
        assert_eq!(detect_era(&none, Some(&one(CALL_2026))), Some(Era::Stateless2026 { version: "2026-07-28".into() }));
        assert_eq!(detect_era(&none, Some(&one(LIST))), None);
        assert_eq!(detect_era(&none, None), None);
        assert_eq!(
            detect_era(&hs(&[("MCP-Protocol-Version", "2025-11-25"), ("Mcp-Session-Id", "s")]), Some(&one(LIST))),
            Some(Era::Stateful { version: "2025-11-25".into() })
        );
        assert_eq!(
            detect_era(&hs(&[("Mcp-Session-Id", "s")]), Some(&one(LIST))),
            Some(Era::Stateful { version: "2025-03-26".into() })
        );
        assert_eq!(
            detect_era(&hs(&[("MCP-Protocol-Version", "2026-07-28")]), Some(&one(LIST))),
            Some(Era::Stateless2026 { version: "2026-07-28".into() })
        );
        assert_eq!(
            detect_era(&hs(&[("Mcp-Method", "tools/list")]), Some(&one(LIST))),
            Some(Era::Stateless2026 { version: "2026-07-28".into() })
        );
        // Python SDK 2.x fallback: discover refused, then initialize on the same server.
        let init_latest = one(r#"{"jsonrpc":"2.0","id":2,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"2"}}}"#);
        assert_eq!(detect_era(&none, Some(&init_latest)), Some(Era::Stateful { version: "2025-11-25".into() }));
        // A response the client POSTs back says nothing by itself.
        assert_eq!(detect_era(&none, Some(&one(r#"{"jsonrpc":"2.0","id":9,"result":{}}"#))), None);
    }

    #[test]
    fn era_properties() {
        assert!(Era::for_version("2025-03-26").allows_batch());
        for v in ["2024-11-05", "2025-06-18", "2025-11-25", "2026-07-28"] {
            assert!(!Era::for_version(v).allows_batch(), "{v}");
        }
        assert!(!Era::Legacy2024.allows_batch());
        assert!(Era::for_version("2026-07-28").is_stateless());
        assert!(Era::for_version("2027-01-01").is_stateless());
        assert!(!Era::for_version("zzzz").is_stateless());
        assert!(Era::Legacy2024.has_sessions());
        assert_eq!(Era::Legacy2024.version(), "2024-11-05");
        assert_eq!(Era::Legacy2024.transport(), "sse");
        assert_eq!(Era::for_version("2025-06-18").transport(), "streamable-http");
        assert!(is_known_version("2025-11-25") && !is_known_version("1999-01-01"));
    }

    #[test]
    fn header_value_sentinel() {
        assert_eq!(decode_header_value("get_weather").as_deref(), Some("get_weather"));
        assert_eq!(decode_header_value("=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=").as_deref(), Some("=?base64?literal?="));
        assert_eq!(decode_header_value("=?base64?w6l0w6k=?=").as_deref(), Some("été"));
        assert_eq!(decode_header_value("=?base64?***?="), None);
        assert_eq!(decode_header_value("=?base64?/w==?="), None, "not UTF-8");
    }

    #[test]
    fn check_accepts_normal_traffic() {
        let h = hs(&[("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "tools/call"), ("Mcp-Name", "get_weather")]);
        assert_eq!(check_request(&h, &parse_body(CALL_2026.as_bytes()), None), Ok(Some(Era::for_version("2026-07-28"))));
        let h = hs(&[("Mcp-Method", "tools/call"), ("Mcp-Name", "=?base64?Z2V0X3dlYXRoZXI=?=")]);
        assert!(check_request(&h, &parse_body(CALL_2026.as_bytes()), None).is_ok());
        assert_eq!(check_request(&HeaderSignals::default(), &parse_body(INIT.as_bytes()), None), Ok(Some(Era::for_version("2025-06-18"))));
        let known = Era::for_version("2025-06-18");
        let h = hs(&[("MCP-Protocol-Version", "2025-06-18"), ("Mcp-Session-Id", "abc")]);
        assert_eq!(check_request(&h, &parse_body(LIST.as_bytes()), Some(&known)), Ok(Some(known.clone())));
        // Legacy conversation: known era wins over header-less detection.
        assert_eq!(
            check_request(&HeaderSignals::default(), &parse_body(LIST.as_bytes()), Some(&Era::Legacy2024)),
            Ok(Some(Era::Legacy2024))
        );
        // Headers absent on a 2026 body are tolerated.
        assert!(check_request(&HeaderSignals::default(), &parse_body(CALL_2026.as_bytes()), None).is_ok());
    }

    #[test]
    fn check_rejections() {
        let none = HeaderSignals::default();
        let r = check_request(&none, &parse_body(b"{oops"), None).unwrap_err();
        assert_eq!((r.http_status, r.code), (400, -32700));
        assert_eq!(r.error_response()["id"], Value::Null);

        let batch = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/list"}]"#;
        let r = check_request(&hs(&[("MCP-Protocol-Version", "2025-06-18")]), &parse_body(batch), None).unwrap_err();
        assert_eq!((r.http_status, r.code), (400, -32600));
        assert!(check_request(&hs(&[("MCP-Protocol-Version", "2025-03-26")]), &parse_body(batch), None).is_ok());
        assert!(check_request(&none, &parse_body(batch), None).is_ok(), "undetermined era: per-element policy");
        assert!(check_request(&none, &parse_body(batch), Some(&Era::Legacy2024)).is_err());
        // Downgrade attempt inside a negotiated 2025-06-18 session.
        let r = check_request(&hs(&[("MCP-Protocol-Version", "2025-03-26")]), &parse_body(batch), Some(&Era::for_version("2025-06-18"))).unwrap_err();
        assert_eq!((r.http_status, r.code), (400, -32600));
        let init_batch = format!("[{INIT}]");
        let r = check_request(&none, &parse_body(init_batch.as_bytes()), None).unwrap_err();
        assert_eq!(r.code, -32600);
        let bad_batch = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":null,"method":"x"}]"#;
        assert_eq!(check_request(&none, &parse_body(bad_batch), None).unwrap_err().code, -32600);

        let r = check_request(&hs(&[("MCP-Protocol-Version", "1999-01-01")]), &parse_body(LIST.as_bytes()), None).unwrap_err();
        assert_eq!((r.http_status, r.code), (400, -32600));
        let r = check_request(&hs(&[("MCP-Protocol-Version", "2030-01-01")]), &parse_body(CALL_2026.as_bytes()), None).unwrap_err();
        assert_eq!((r.http_status, r.code), (400, -32022));
        assert_eq!(r.error_response()["error"]["data"]["requested"], json!("2030-01-01"));
        assert_eq!(r.id, Some(Id::from(2i64)));
        let r = check_request(&hs(&[("MCP-Protocol-Version", "2025-11-25")]), &parse_body(CALL_2026.as_bytes()), None).unwrap_err();
        assert_eq!(r.code, -32020);

        // Routing header vs body (confused deputy).
        for h in [
            hs(&[("Mcp-Method", "tools/list")]),
            hs(&[("Mcp-Method", "tools/call"), ("Mcp-Name", "read_file")]),
            hs(&[("Mcp-Method", "tools/call"), ("Mcp-Name", "=?base64?!!?=")]),
        ] {
            let r = check_request(&h, &parse_body(CALL_2026.as_bytes()), None).unwrap_err();
            assert_eq!((r.http_status, r.code, r.id.clone()), (400, -32020, Some(Id::from(2i64))), "{h:?}");
        }
        let r = check_request(&hs(&[("Mcp-Name", "x")]), &parse_body(LIST.as_bytes()), None).unwrap_err();
        assert_eq!(r.code, -32020);

        // Invalid params: JSON-RPC error with the id.
        let body = br#"{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":["delete_file"],"arguments":{}}}"#;
        let r = check_request(&none, &parse_body(body), None).unwrap_err();
        assert_eq!((r.http_status, r.code, r.id.clone()), (200, -32602, Some(Id::from(11i64))));
        assert_eq!(r.error_response()["id"], json!(11));
        let note = br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":[1]}"#;
        assert_eq!(check_request(&none, &parse_body(note), None).unwrap_err().http_status, 400);
    }
}
