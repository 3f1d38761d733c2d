//! Is a body MCP, and may a server's message reach the client?
//!
//! Why this exists: a proxy that decides "is this MCP?" from headers or from what it
//! has seen before can be walked around: an attacker inside the watched host sends a
//! JSON-RPC message with another `Content-Type`, without the `jsonrpc` member, or in
//! UTF-16 to a lenient server, and it is never inspected. [`body_shape`] looks at the
//! bytes themselves. On the way back, a server can answer an id mcpwatch refused, an
//! id the client never sent, or a message with both `result` and `error` (which a
//! client may read either way); [`judge_server_message`] says which messages are
//! dropped. Both are pure, total functions (fuzz targets).

use serde_json::Value;

use crate::jsonrpc::{self, Id, Message, Parsed};

/// Methods of the MCP protocol (any revision).
pub fn is_mcp_method(m: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "tools/", "resources/", "prompts/", "notifications/", "completion/", "logging/", "sampling/", "roots/",
        "elicitation/", "tasks/", "server/",
    ];
    m == "initialize" || m == "ping" || PREFIXES.iter().any(|p| m.starts_with(p))
}

/// What a request body is, judged from its bytes alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyShape {
    /// Valid JSON-RPC carrying at least one MCP method.
    McpMessage,
    /// A valid JSON-RPC envelope without an MCP method (a reply to a server request,
    /// or another JSON-RPC protocol).
    JsonRpc,
    /// Not a valid envelope, but a lenient server would take it as MCP: an object (or
    /// array of objects) with a `jsonrpc` member or an MCP `method`, or such a body in
    /// a non-UTF-8 encoding (UTF-16/32, a byte-order mark) that `json.loads` accepts.
    McpShaped,
    /// JSON, but nothing JSON-RPC about it.
    OtherJson,
    /// Not JSON.
    NotJson,
}

impl BodyShape {
    /// Would a lenient MCP server act on it as a message?
    pub fn is_mcp(self) -> bool {
        matches!(self, BodyShape::McpMessage | BodyShape::McpShaped)
    }
}

/// Classify a request body.
pub fn body_shape(bytes: &[u8]) -> BodyShape {
    match jsonrpc::parse_body(bytes) {
        p @ (Parsed::Single(_) | Parsed::Batch(_)) => {
            if p.messages().any(|m| m.method().is_some_and(is_mcp_method)) {
                return BodyShape::McpMessage;
            }
            if matches!(&p, Parsed::Single(_)) || p.messages().next().is_some() {
                return BodyShape::JsonRpc;
            }
        }
        Parsed::Invalid(_) => {}
    }
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return if rpc_shaped(&v) { BodyShape::McpShaped } else { BodyShape::OtherJson };
    }
    // A message with bytes after it (`{..}x`, `{..}{..}`): Jackson, as the Java SDK's
    // mapper is set by default, reads the first value and ignores the rest.
    if let Some(Ok(v)) = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>().next()
        && rpc_shaped(&v)
    {
        return BodyShape::McpShaped;
    }
    // What lenient servers read besides: other encodings (`json.loads`), invalid UTF-8
    // as U+FFFD (Express' body-parser decodes so), lone surrogate escapes (JSON.parse and
    // `json.loads` take them; serde_json does not).
    let text = match reencoded(bytes) {
        Some(text) => text,
        None => String::from_utf8_lossy(bytes).into_owned(),
    };
    let text = text.trim_start_matches('\u{feff}');
    // Every lenient reading takes the first value only: bytes after a message (which
    // Jackson ignores) must not make one of these readings fail.
    let parsed = first_value(text).or_else(|e| match without_lone_surrogates(text) {
        Some(fixed) => first_value(&fixed),
        None => Err(e),
    });
    // Then what serde_json refuses but servers take: numbers out of f64's range (`1e400`
    // is Infinity to JSON.parse and to pydantic), NaN and ±Infinity (Python), nesting
    // past serde_json's 128 levels (JSON.parse and jiter go deeper). The skeleton keeps
    // the structure and keys and stands `0` for every number, `null` for deep subtrees.
    let parsed = parsed.or_else(|e| {
        let fixed = without_lone_surrogates(text);
        match skeleton(fixed.as_deref().unwrap_or(text)) {
            Some(s) => first_value(&s),
            None => Err(e),
        }
    });
    match parsed {
        Ok(v) if rpc_shaped(&v) => BodyShape::McpShaped,
        Ok(_) => BodyShape::OtherJson,
        Err(_) => BodyShape::NotJson,
    }
}

/// The first JSON value of `text`, whatever follows it.
fn first_value(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::Deserializer::from_str(text).into_iter::<Value>().next().unwrap_or_else(|| serde_json::from_str::<Value>(text))
}

/// Containers deeper than this are cut from a [`skeleton`] (the envelope a server acts on
/// is at the top, or one level down in a batch).
const SKELETON_DEPTH: usize = 16;

/// `text` as JSON serde_json reads, for telling the shape of a lenient document: every
/// number (whatever its range), `NaN`, `Infinity` and `-Infinity` written `0`, every
/// container below [`SKELETON_DEPTH`] written `null`, strings and keys as they are.
/// `None` when a token is not JSON even to a lenient reader.
fn skeleton(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len().min(1 << 16));
    let (mut i, mut depth) = (0usize, 0usize);
    // While cutting a deep subtree: the depth its container opened at.
    let mut cut: Option<usize> = None;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                if i >= b.len() {
                    return None;
                }
                i += 1;
                if cut.is_none() {
                    out.push_str(&text[start..i]);
                }
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if cut.is_none() {
                    if depth > SKELETON_DEPTH {
                        cut = Some(depth);
                        out.push_str("null");
                    } else {
                        out.push(char::from(c));
                    }
                }
            }
            b'}' | b']' => {
                if cut == Some(depth) {
                    cut = None;
                } else if cut.is_none() {
                    out.push(char::from(c));
                }
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    // The first top-level value is whole: what follows it is not read.
                    return Some(out);
                }
            }
            b',' | b':' | b' ' | b'\t' | b'\n' | b'\r' => {
                if cut.is_none() {
                    out.push(char::from(c));
                }
            }
            _ => {
                let start = i;
                while i < b.len() && !matches!(b[i], b',' | b':' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'{' | b'[') {
                    i += 1;
                }
                let word = &text[start..i];
                let literal = matches!(word, "true" | "false" | "null");
                let number = matches!(word, "NaN" | "Infinity" | "-Infinity" | "+Infinity")
                    || (word.starts_with(|ch: char| ch == '-' || ch.is_ascii_digit())
                        && word.bytes().all(|ch| ch.is_ascii_digit() || matches!(ch, b'-' | b'+' | b'.' | b'e' | b'E')));
                if !literal && !number {
                    return None;
                }
                if cut.is_none() {
                    out.push_str(if literal { word } else { "0" });
                }
                continue;
            }
        }
        i += 1;
    }
    (depth == 0).then_some(out)
}

/// `text` with every `\u` escape of an unpaired surrogate (inside JSON strings) written
/// as `\ufffd`, or `None` when there is none. Only escapes are looked at: a string's
/// characters themselves are already valid (they come from a Rust `str`).
fn without_lone_surrogates(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let hex = |at: usize| -> Option<u16> { b.get(at..at + 4).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u16::from_str_radix(h, 16).ok()) };
    let escape_at = |at: usize| -> Option<u16> { (b.get(at) == Some(&b'\\') && b.get(at + 1) == Some(&b'u')).then(|| hex(at + 2)).flatten() };
    let mut lone: Vec<usize> = Vec::new();
    let (mut i, mut in_string) = (0, false);
    while i < b.len() {
        match b[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                if let Some(u) = escape_at(i) {
                    if (0xd800..0xdc00).contains(&u) && escape_at(i + 6).is_some_and(|l| (0xdc00..0xe000).contains(&l)) {
                        i += 12; // a pair
                        continue;
                    }
                    if (0xd800..0xe000).contains(&u) {
                        lone.push(i);
                    }
                    i += 6;
                    continue;
                }
                i += 2; // any other escape, `\\` and `\"` included
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if lone.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for at in lone {
        out.push_str(&text[from..at]);
        out.push_str("\\ufffd");
        from = at + 6;
    }
    out.push_str(&text[from..]);
    Some(out)
}

/// An object with `jsonrpc` or an MCP `method`, or an array holding one. Keys are
/// compared as case-blind servers read them (`jsonrpc::fold_key`): `{"JSONRPC":..,
/// "METHOD":"tools/call"}` is a call to mcp-go.
fn rpc_shaped(v: &Value) -> bool {
    let one = |o: &Value| {
        o.as_object().is_some_and(|m| {
            m.iter().any(|(k, v)| match &*jsonrpc::fold_key(k) {
                "jsonrpc" => true,
                "method" => v.as_str().is_some_and(is_mcp_method),
                _ => false,
            })
        })
    };
    match v {
        Value::Array(items) => items.iter().any(one),
        other => one(other),
    }
}

/// The text of a body in an encoding `json.loads(bytes)` detects (UTF-8 with BOM,
/// UTF-16 and UTF-32 with or without BOM), or `None` for anything else.
fn reencoded(b: &[u8]) -> Option<String> {
    if let Some(rest) = b.strip_prefix(b"\xef\xbb\xbf") {
        return std::str::from_utf8(rest).ok().map(str::to_string);
    }
    let utf32 = |le: bool, body: &[u8]| -> Option<String> {
        if !body.len().is_multiple_of(4) {
            return None;
        }
        body.chunks_exact(4)
            .map(|c| {
                let n = if le { u32::from_le_bytes([c[0], c[1], c[2], c[3]]) } else { u32::from_be_bytes([c[0], c[1], c[2], c[3]]) };
                char::from_u32(n)
            })
            .collect()
    };
    let utf16 = |le: bool, body: &[u8]| -> Option<String> {
        if !body.len().is_multiple_of(2) {
            return None;
        }
        let units = body.chunks_exact(2).map(|c| if le { u16::from_le_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], c[1]]) });
        char::decode_utf16(units).collect::<Result<String, _>>().ok()
    };
    match b {
        [0xff, 0xfe, 0, 0, rest @ ..] => utf32(true, rest),
        [0, 0, 0xfe, 0xff, rest @ ..] => utf32(false, rest),
        [0xff, 0xfe, rest @ ..] => utf16(true, rest),
        [0xfe, 0xff, rest @ ..] => utf16(false, rest),
        [0, 0, 0, x, ..] if *x != 0 => utf32(false, b),
        [x, 0, 0, 0, ..] if *x != 0 => utf32(true, b),
        [0, x, ..] if *x != 0 => utf16(false, b),
        [x, 0, ..] if *x != 0 => utf16(true, b),
        _ => None,
    }
}

/// Could a body starting with `prefix` be JSON (the rest unseen)? True when the first
/// byte that is not JSON whitespace (after an optional UTF-8 byte-order mark) opens an
/// object or array, when there is no such byte yet (padding), or when the prefix looks
/// UTF-16/32 encoded.
pub fn may_be_json(prefix: &[u8]) -> bool {
    let p = prefix.strip_prefix(b"\xef\xbb\xbf").unwrap_or(prefix);
    if matches!(p, [0xff, 0xfe, ..] | [0xfe, 0xff, ..] | [0, ..] | [_, 0, ..]) {
        return true;
    }
    match p.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
        None => true,
        Some(b) => *b == b'{' || *b == b'[',
    }
}

/// What mcpwatch knows of a response id in its conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdState {
    /// A request with this id is waiting for its answer.
    Pending,
    /// The client sent a request with this id, forwarded and answered (or its stream
    /// broke): a late, resumed or repeated answer.
    Sent,
    /// mcpwatch answered a request with this id itself; the server never saw it.
    Refused,
    /// The client never sent this id here.
    Unknown,
}

/// Why a server message must not reach the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// Not a JSON-RPC message (includes `result` together with `error`, `method`
    /// together with `result`/`error`).
    Invalid(String),
    /// A response to an id mcpwatch refused: the server answers a call it never got.
    ReusesRefusedId(String),
    /// A response to an id this client never sent.
    UnknownId(String),
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DropReason::Invalid(why) => write!(f, "not a valid JSON-RPC message ({why})"),
            DropReason::ReusesRefusedId(id) => write!(f, "answers id {id}, a request mcpwatch refused and never forwarded"),
            DropReason::UnknownId(id) => write!(f, "answers id {id}, which this client never sent"),
        }
    }
}

/// The verdict on one server→client message.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Deliver: a request or notification from the server, or a response mcpwatch
    /// can pair (`message` is the parsed form).
    Deliver(Message),
    Drop(DropReason),
}

/// Judge one server→client message. Requests (method and id) and notifications
/// (method, no id) are the server's own and always pass. A response or error must
/// answer an id the client sent here and mcpwatch forwarded; an error with a null id
/// (the server could not read a request) passes.
///
/// On [`Verdict::Deliver`] the message's payload (`result`, `params`) has moved out of
/// `v` rather than being copied ([`jsonrpc::take_message`]): put it back with
/// [`jsonrpc::put_back`] if the value is wanted again. On [`Verdict::Drop`] `v` is as
/// it came.
pub fn judge_server_message(v: &mut Value, id_state: impl FnOnce(&Id) -> IdState) -> Verdict {
    let msg = match jsonrpc::take_message(v) {
        Ok(m) => m,
        Err(e) => return Verdict::Drop(DropReason::Invalid(e.to_string())),
    };
    let id = match &msg {
        Message::Request { .. } | Message::Notification { .. } => return Verdict::Deliver(msg),
        Message::Error { id: None, .. } => return Verdict::Deliver(msg),
        Message::Response { id, .. } | Message::Error { id: Some(id), .. } => id.clone(),
    };
    let why = match id_state(&id) {
        IdState::Pending | IdState::Sent => return Verdict::Deliver(msg),
        IdState::Refused => DropReason::ReusesRefusedId(id.to_string()),
        IdState::Unknown => DropReason::UnknownId(id.to_string()),
    };
    jsonrpc::put_back(v, msg);
    Verdict::Drop(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes() {
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#;
        assert_eq!(body_shape(call), BodyShape::McpMessage);
        assert_eq!(body_shape(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#), BodyShape::JsonRpc);
        assert_eq!(body_shape(br#"{"jsonrpc":"2.0","id":1,"method":"eth_call"}"#), BodyShape::JsonRpc);
        assert_eq!(body_shape(br#"{"id":1,"method":"tools/call","params":{}}"#), BodyShape::McpShaped, "no jsonrpc member");
        assert_eq!(body_shape(br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#), BodyShape::McpShaped);
        assert_eq!(body_shape(br#"{"order":7,"method":"GET"}"#), BodyShape::OtherJson);
        // Keys as a case-blind server (Go's encoding/json) reads them.
        assert_eq!(body_shape(br#"{"JSONRPC":"2.0","ID":1,"METHOD":"tools/call","PARAMS":{"NAME":"x"}}"#), BodyShape::McpShaped);
        assert_eq!(body_shape(br#"{"Method":"tools/call","Id":1}"#), BodyShape::McpShaped);
        // Bytes after a message, which Jackson ignores by default.
        assert_eq!(body_shape(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}x"#), BodyShape::McpShaped);
        assert_eq!(body_shape(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}} {"a":1}"#), BodyShape::McpShaped);
        assert_eq!(body_shape(br#"{"order":7} trailing"#), BodyShape::OtherJson, "the first value is read");
        // Trailing bytes with what only lenient readers take: a lone surrogate, 1e400.
        assert_eq!(body_shape(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"\ud800"}}}x"#), BodyShape::McpShaped);
        assert_eq!(body_shape(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":1e400}}} trailing"#), BodyShape::McpShaped);
        let mut utf16 = vec![0xff, 0xfe];
        for u in r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}x"#.encode_utf16() {
            utf16.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(body_shape(&utf16), BodyShape::McpShaped, "UTF-16 with bytes after it");
        assert_eq!(body_shape(b"hello world"), BodyShape::NotJson);
        assert_eq!(body_shape(b""), BodyShape::NotJson);
        assert_eq!(body_shape(b"\xff\xd8\xff\xe0binary"), BodyShape::NotJson);
        let text = std::str::from_utf8(call).unwrap();
        let mut bom = b"\xef\xbb\xbf".to_vec();
        bom.extend_from_slice(call);
        assert_eq!(body_shape(&bom), BodyShape::McpShaped);
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert_eq!(body_shape(&le), BodyShape::McpShaped, "UTF-16LE");
        let be: Vec<u8> = [0xfe, 0xff].into_iter().chain(text.encode_utf16().flat_map(u16::to_be_bytes)).collect();
        assert_eq!(body_shape(&be), BodyShape::McpShaped, "UTF-16BE with BOM");
        let u32le: Vec<u8> = text.chars().flat_map(|c| (c as u32).to_le_bytes()).collect();
        assert_eq!(body_shape(&u32le), BodyShape::McpShaped, "UTF-32LE");
        assert!(body_shape(call).is_mcp() && !BodyShape::JsonRpc.is_mcp());
        // What Express (invalid UTF-8 as U+FFFD) and JSON.parse / json.loads (lone
        // surrogate escapes) read, serde_json does not.
        let invalid_utf8 = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"x\",\"arguments\":{\"a\":\"\xff\"}}}";
        assert_eq!(body_shape(invalid_utf8), BodyShape::McpShaped, "invalid UTF-8");
        for s in [r"\ud800", r"\udc00", r"\ud800\u0041", r"a\udbff"] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{{"a":"{s}"}}}}}}"#);
            assert_eq!(body_shape(body.as_bytes()), BodyShape::McpShaped, "lone surrogate {s}");
        }
        assert_eq!(body_shape(br#"{"a":"\\ud800","b":"\ud83d\ude00"}"#), BodyShape::OtherJson, "an escaped backslash and a pair are not lone");
        assert_eq!(without_lone_surrogates(r#"{"a":"\\ud800\ud83d\ude00"}"#), None);
        assert_eq!(without_lone_surrogates(r#"["\udc00x\ud800"]"#).as_deref(), Some(r#"["\ufffdx\ufffd"]"#));
    }

    #[test]
    fn what_lenient_parsers_read_beyond_serde_is_still_shaped() {
        let call = |extra: &str| format!(r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"x","_meta":{{"x":{extra}}}}}}}"#);
        // JSON.parse: 1e400 is Infinity; pydantic / json.loads: NaN, Infinity, -Infinity.
        for v in ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "[NaN, 1E+999]"] {
            assert_eq!(body_shape(call(v).as_bytes()), BodyShape::McpShaped, "{v}");
        }
        // Nesting past serde_json's 128 levels (JSON.parse has no limit).
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(body_shape(call(&deep).as_bytes()), BodyShape::McpShaped, "200 levels deep");
        let deep_batch = format!("[{},{}]", call("1"), deep);
        assert_eq!(body_shape(deep_batch.as_bytes()), BodyShape::McpShaped, "a batch with a deep member");
        // Not a message, however lenient the reading.
        assert_eq!(body_shape(format!(r#"{{"v":NaN,"d":{deep}}}"#).as_bytes()), BodyShape::OtherJson);
        for bad in ["{\"a\":nope}", "{\"a\":1", "{\"a\":\"open}"] {
            assert_eq!(body_shape(bad.as_bytes()), BodyShape::NotJson, "{bad}");
        }
        // The first value is read, as Jackson reads it; what follows is not.
        assert_eq!(body_shape(b"[1]]"), BodyShape::OtherJson);
        // Strings and keys stay as they are, escapes and brackets inside them included.
        assert_eq!(skeleton(r#"{"a\"[":[1.5e9,"]{"],"b":NaN}"#).as_deref(), Some(r#"{"a\"[":[0,"]{"],"b":0}"#));
    }

    #[test]
    fn json_prefixes() {
        assert!(may_be_json(b"  \n{\"a\""));
        assert!(may_be_json(b"["));
        assert!(may_be_json(b"      "), "padding only");
        assert!(may_be_json(b"\xef\xbb\xbf{"));
        assert!(may_be_json(b"{\0\"\0"), "UTF-16LE");
        assert!(!may_be_json(b"--boundary\r\n"));
        assert!(!may_be_json(b"\x89PNG"));
        assert!(!may_be_json(b"name=value"));
    }

    #[test]
    fn server_messages() {
        let pending = |_: &Id| IdState::Pending;
        assert!(matches!(judge_server_message(&mut json!({"jsonrpc":"2.0","id":1,"result":{}}), pending), Verdict::Deliver(_)));
        let mut both = json!({"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}});
        assert!(matches!(judge_server_message(&mut both, pending), Verdict::Drop(DropReason::Invalid(_))));
        let r = judge_server_message(&mut json!({"jsonrpc":"2.0","id":7,"result":{}}), |_| IdState::Refused);
        assert_eq!(r, Verdict::Drop(DropReason::ReusesRefusedId("7".into())));
        let r = judge_server_message(&mut json!({"jsonrpc":"2.0","id":"z","error":{"code":1,"message":"x"}}), |_| IdState::Unknown);
        assert_eq!(r, Verdict::Drop(DropReason::UnknownId("\"z\"".into())));
        assert!(matches!(judge_server_message(&mut json!({"jsonrpc":"2.0","id":2,"result":{}}), |_| IdState::Sent), Verdict::Deliver(_)));
        // The server's own requests and notifications pass whatever their id.
        let mut req = json!({"jsonrpc":"2.0","id":1,"method":"sampling/createMessage","params":{}});
        assert!(matches!(judge_server_message(&mut req, |_| IdState::Refused), Verdict::Deliver(_)));
        let mut note = json!({"jsonrpc":"2.0","method":"notifications/progress","params":{}});
        assert!(matches!(judge_server_message(&mut note, |_| IdState::Unknown), Verdict::Deliver(_)));
        // A parse error answered with a null id.
        let mut e = json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}});
        assert!(matches!(judge_server_message(&mut e, |_| IdState::Unknown), Verdict::Deliver(_)));
        assert!(matches!(judge_server_message(&mut json!([1]), pending), Verdict::Drop(_)));
    }

    #[test]
    fn judged_values_come_back_whole() {
        // Dropped: the value is as the server sent it (its id goes into the record).
        let sent = json!({"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hi"}]},"x-extra":1});
        let mut v = sent.clone();
        assert!(matches!(judge_server_message(&mut v, |_| IdState::Unknown), Verdict::Drop(_)));
        assert_eq!(v, sent);
        let mut bad = json!({"jsonrpc":"2.0","id":7,"method":5,"params":{"a":1}});
        let before = bad.clone();
        assert!(matches!(judge_server_message(&mut bad, |_| IdState::Pending), Verdict::Drop(DropReason::Invalid(_))));
        assert_eq!(bad, before, "an invalid message is not taken apart");
        // Delivered: the payload moved into the message; put back, the value is whole
        // again, members the message does not model included.
        let mut v = sent.clone();
        let Verdict::Deliver(msg) = judge_server_message(&mut v, |_| IdState::Pending) else { panic!("delivered") };
        assert_eq!(msg.result(), sent.get("result"));
        assert!(v.get("result").is_none(), "moved, not copied");
        jsonrpc::put_back(&mut v, msg);
        assert_eq!(v, sent);
        // A response rewritten into an error loses its result and keeps its id.
        let mut v = sent.clone();
        let Verdict::Deliver(msg) = judge_server_message(&mut v, |_| IdState::Pending) else { panic!("delivered") };
        let blocked = Message::Error { id: msg.id().cloned(), code: -32004, message: "blocked".into(), data: None };
        jsonrpc::put_back(&mut v, blocked);
        assert_eq!(v, json!({"jsonrpc":"2.0","id":7,"x-extra":1,"error":{"code":-32004,"message":"blocked"}}));
        // A server request: params move and come back.
        let req = json!({"jsonrpc":"2.0","id":1,"method":"sampling/createMessage","params":{"messages":[]}});
        let mut v = req.clone();
        let Verdict::Deliver(msg) = judge_server_message(&mut v, |_| IdState::Refused) else { panic!("delivered") };
        jsonrpc::put_back(&mut v, msg);
        assert_eq!(v, req);
    }
}
