//! JSON-RPC 2.0 envelopes as MCP uses them, parsed strictly from raw bytes.
//!
//! Why this exists: the proxy must decide on exactly the message the server will
//! execute. Lenient parsing on one hop and strict parsing on the other is how
//! policy gets bypassed (duplicate keys, comments, NaN, invalid UTF-8, batches
//! hiding a second call), so [`parse_body`] is deliberately strict:
//!
//! * the body must be UTF-8 (no lossy decoding) and RFC 8259 JSON (serde_json:
//!   no comments, trailing commas, NaN, leading BOM or trailing garbage);
//! * duplicate object keys are rejected at every depth;
//! * nesting deeper than [`Limits::max_depth`] is rejected without recursion
//!   blow-up; bodies and batches have size limits;
//! * every message must carry `"jsonrpc": "2.0"`, a string `method`, an id that
//!   is a string or a number (never `null` on requests: MCP forbids it), and
//!   exactly one of `method`, `result` or `error`.
//!
//! Nothing here panics on input: every failure is an [`Invalid`] value that says
//! what was wrong and which JSON-RPC error code a peer should receive.
//!
//! Cost: one pass over the bytes for UTF-8 validation plus one serde_json parse
//! into a [`serde_json::Value`] tree; no copies of the body are kept.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// JSON-RPC "Parse error": the body is not valid JSON (or not UTF-8).
pub const PARSE_ERROR: i64 = -32700;
/// Longest string request id a message may carry. Ids are keys of every table of pending
/// calls and id fates, and are copied into the records that wait for their answers; no
/// SDK sends more than a number or a UUID. Without a bound a peer's 16 MiB id was held,
/// several times over, for every call it left pending: memory a watched user chose.
pub const MAX_ID_BYTES: usize = 256;
/// Longest `method` a message may carry (MCP's longest is under 40 bytes): it is kept in
/// the record of every pending call.
pub const MAX_METHOD_BYTES: usize = 256;
/// Longest target a call may name (`params.name` of `tools/call` and `prompts/get`,
/// `params.uri` of `resources/read` and `(un)subscribe`): kept in the pending call's
/// record and the inventory. MCP asks tool names of at most 128 characters; a URI may be
/// a long path.
pub const MAX_TARGET_BYTES: usize = 4096;
/// JSON-RPC "Invalid Request": valid JSON, but not a valid JSON-RPC/MCP message.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC "Method not found".
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC "Invalid params" (also MCP's "Unknown tool" / resource not found).
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC "Internal error".
pub const INTERNAL_ERROR: i64 = -32603;
/// MCP 2026-07-28: HTTP routing headers (`Mcp-Method`, `Mcp-Name`,
/// `MCP-Protocol-Version`) missing, malformed or not matching the body (HTTP 400).
pub const HEADER_MISMATCH: i64 = -32020;
/// MCP 2026-07-28: the request needs a client capability it did not declare.
pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
/// MCP 2026-07-28: the request's protocol version is not supported.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// The standard JSON-RPC message text for a standard code (`"Parse error"`, ...),
/// or `"Server error"` for anything else.
pub fn standard_message(code: i64) -> &'static str {
    match code {
        PARSE_ERROR => "Parse error",
        INVALID_REQUEST => "Invalid Request",
        METHOD_NOT_FOUND => "Method not found",
        INVALID_PARAMS => "Invalid params",
        INTERNAL_ERROR => "Internal error",
        _ => "Server error",
    }
}

/// A JSON-RPC request id: a number or a string.
///
/// `Display` renders the id as JSON text (`1`, `"abc"`), the form stored in audit
/// records. `Eq` and `Hash` compare the JSON text; to match an answer to its call, or to
/// tell whether an id is already pending, compare [`Id::key`]s instead: `5` and `5.0` are
/// two `Id`s but one key, as a server reads them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Number(Number),
    String(String),
}

impl Id {
    /// The id as a JSON value.
    pub fn to_value(&self) -> Value {
        match self {
            Id::Number(n) => Value::Number(n.clone()),
            Id::String(s) => Value::String(s.clone()),
        }
    }

    /// `Some` for a number or string, `None` for anything else (including `null`).
    pub fn from_value(v: &Value) -> Option<Id> {
        match v {
            Value::Number(n) => Some(Id::Number(n.clone())),
            Value::String(s) => Some(Id::String(s.clone())),
            _ => None,
        }
    }
}

/// What a request id is matched by: the one key every table of pending calls and every
/// id-reuse check uses, on HTTP and on stdio.
///
/// A number is keyed by its value as a JavaScript peer reads it: `5`, `5.0`, `5e0` and
/// `-0`/`0` are one id to the TypeScript SDK, which answers them alike and lets a later
/// one take an earlier one's place. Keying them apart would let a client reuse a pending
/// id unnoticed (`5` then `5.0`), and would drop the answer `5` a server sends to a call
/// the client numbered `5.0`. Integers past 2^53 that differ only below a double's
/// precision share a key too: at worst a distinct id is refused as a reuse, never the
/// other way round. A string keeps its JSON quotes, so `"5"` never meets `5`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdKey(String);

impl IdKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Id {
    /// The key this id is matched by (see [`IdKey`]).
    pub fn key(&self) -> IdKey {
        IdKey(match self {
            Id::Number(n) => match n.as_f64() {
                Some(0.0) => "0".into(),
                Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
                Some(f) => format!("{f:?}"),
                None => n.to_string(),
            },
            Id::String(_) => self.to_string(),
        })
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Number(n) => write!(f, "{n}"),
            Id::String(s) => f.write_str(&serde_json::to_string(s).map_err(|_| fmt::Error)?),
        }
    }
}

impl From<i64> for Id {
    fn from(n: i64) -> Self {
        Id::Number(n.into())
    }
}

impl From<u64> for Id {
    fn from(n: u64) -> Self {
        Id::Number(n.into())
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Self {
        Id::String(s.to_owned())
    }
}

impl From<String> for Id {
    fn from(s: String) -> Self {
        Id::String(s)
    }
}

/// One JSON-RPC 2.0 message, already validated.
///
/// Payloads (`params`, `result`, `data`) are kept as parsed JSON so the proxy can
/// inspect or rewrite them and re-serialise with [`Message::to_value`].
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A call that expects a response.
    Request { id: Id, method: String, params: Option<Value> },
    /// A call without an id: no response will come.
    Notification { method: String, params: Option<Value> },
    /// A successful response.
    Response { id: Id, result: Value },
    /// An error response. `id` is `None` when the peer sent `null` or no id
    /// (it could not tell which request failed).
    Error { id: Option<Id>, code: i64, message: String, data: Option<Value> },
}

impl Message {
    /// The message as a JSON-RPC 2.0 object.
    pub fn to_value(&self) -> Value {
        self.clone().into_value()
    }

    /// [`Message::to_value`], moving the payload instead of copying it.
    pub fn into_value(self) -> Value {
        let mut m = Map::new();
        m.insert("jsonrpc".into(), Value::String("2.0".into()));
        match self {
            Message::Request { id, method, params } => {
                m.insert("id".into(), id.to_value());
                m.insert("method".into(), Value::String(method));
                if let Some(p) = params {
                    m.insert("params".into(), p);
                }
            }
            Message::Notification { method, params } => {
                m.insert("method".into(), Value::String(method));
                if let Some(p) = params {
                    m.insert("params".into(), p);
                }
            }
            Message::Response { id, result } => {
                m.insert("id".into(), id.to_value());
                m.insert("result".into(), result);
            }
            Message::Error { id, code, message, data } => {
                m.insert("id".into(), id.as_ref().map_or(Value::Null, Id::to_value));
                m.insert("error".into(), error_object(code, &message, data));
            }
        }
        Value::Object(m)
    }

    /// Compact JSON text of [`Message::to_value`].
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }
}

/// Why a body (or one batch element) is not an acceptable JSON-RPC message.
///
/// [`Invalid::code`] is the JSON-RPC error code to answer with: `-32700` for
/// byte/JSON-level problems, `-32600` for valid JSON that is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("body is empty")]
    Empty,
    #[error("body is not valid UTF-8 (first bad byte at offset {valid_up_to})")]
    NotUtf8 { valid_up_to: usize },
    #[error("JSON syntax error at line {line} column {column}: {reason}")]
    Syntax { line: usize, column: usize, reason: String },
    #[error("JSON ends early (truncated) at line {line} column {column}")]
    Truncated { line: usize, column: usize },
    #[error("JSON nests deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("body is {len} bytes, over the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("duplicate key {key:?} at line {line} column {column}")]
    DuplicateKey { key: String, line: usize, column: usize },
    #[error("batch is empty")]
    EmptyBatch,
    #[error("batch has {len} elements, over the limit of {limit}")]
    BatchTooLarge { len: usize, limit: usize },
    #[error("not a JSON object")]
    NotAnObject,
    #[error("missing \"jsonrpc\": \"2.0\"")]
    MissingJsonrpc,
    #[error("\"jsonrpc\" is {found}, not \"2.0\"")]
    WrongJsonrpc { found: String },
    #[error("\"method\" is not a string")]
    MethodNotString,
    #[error("\"id\" is null (MCP forbids null ids on requests and results)")]
    NullId,
    #[error("\"id\" is {found}, not a string or number")]
    BadId { found: &'static str },
    #[error("\"params\" is {found}, not an object or array")]
    BadParams { found: &'static str },
    #[error("\"error\" is not an object with an integer \"code\" and a string \"message\"")]
    BadErrorObject,
    #[error("message has both {first:?} and {second:?}")]
    Ambiguous { first: &'static str, second: &'static str },
    #[error("message has none of \"method\", \"result\", \"error\"")]
    NotAMessage,
    #[error("response has no \"id\"")]
    MissingId,
    #[error("{what} is {len} bytes, over the {limit}-byte limit")]
    TooLong { what: &'static str, len: usize, limit: usize },
    #[error("key {key:?} is {of:?} to servers that match keys regardless of case (Go's encoding/json); MCP spells it {of:?}")]
    CaseVariantKey { key: String, of: &'static str },
}

/// A JSON object key as servers that match keys regardless of case read it: Go's
/// `encoding/json` (mcp-go, typed tool handlers of the Go SDK) takes `NAME`, `Name` and
/// `ſ`-for-`s` spellings for a struct field `name`, the last one winning. Folded as
/// Unicode simple case folding does (`bytes.EqualFold`): lower case, with the letters
/// whose lower case is not their fold mapped first. Borrowed when the key is already
/// folded (lower-case ASCII: nearly every key).
pub fn fold_key(key: &str) -> std::borrow::Cow<'_, str> {
    if key.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        return std::borrow::Cow::Borrowed(key);
    }
    std::borrow::Cow::Owned(folded_chars(key).collect())
}

/// The characters of `key` folded (see [`fold_key`]), without allocating.
fn folded_chars(key: &str) -> impl Iterator<Item = char> + '_ {
    key.chars().flat_map(|c| {
        let c = match c {
            '\u{17f}' => 's',
            '\u{3c2}' => '\u{3c3}',
            '\u{b5}' => '\u{3bc}',
            '\u{3d0}' => '\u{3b2}',
            '\u{3d1}' => '\u{3b8}',
            '\u{3d5}' => '\u{3c6}',
            '\u{3d6}' => '\u{3c0}',
            '\u{3f0}' => '\u{3ba}',
            '\u{3f1}' => '\u{3c1}',
            '\u{3f5}' => '\u{3b5}',
            '\u{1e9e}' => '\u{df}',
            '\u{1fbe}' | '\u{345}' => '\u{3b9}',
            '\u{1e9b}' => '\u{1e61}',
            '\u{1c80}' => '\u{432}',
            '\u{1c81}' => '\u{434}',
            '\u{1c82}' => '\u{43e}',
            '\u{1c83}' => '\u{441}',
            '\u{1c84}' | '\u{1c85}' => '\u{442}',
            '\u{1c86}' => '\u{44a}',
            '\u{1c87}' => '\u{463}',
            '\u{1c88}' => '\u{a64b}',
            c => c,
        };
        // `İ` is a class of its own to simple folding; its full lower case is two
        // characters (`i` and a combining dot) that would meet `i\u{307}`.
        let one = (c == '\u{130}').then_some(c);
        one.into_iter().chain(c.to_lowercase().filter(move |_| one.is_none()))
    })
}

/// Do two keys fold alike (one key to a case-blind server, see [`fold_key`])?
pub fn same_folded(a: &str, b: &str) -> bool {
    folded_chars(a).eq(folded_chars(b))
}

/// Keys of a message, and of its `params`, that mcpwatch reads to judge it: one spelled
/// otherwise that a case-blind server takes for them is refused, or mcpwatch would judge
/// one thing and such a server run another (`{"name":"a","NAME":"b"}` runs `b` there;
/// `{"ID":7,..}` is a call there, a notification here). Deeper keys are not refused for
/// their spelling (an argument map may hold `PATH` and `path`, environment variables):
/// argument conditions see every key a case-blind server could read for theirs
/// (`mcpwatch_policy`), and the detectors scan every value.
const ENVELOPE_KEYS: [&str; 6] = ["jsonrpc", "id", "method", "params", "result", "error"];
const PARAMS_KEYS: [&str; 8] = ["name", "arguments", "uri", "_meta", "cursor", "requestId", "protocolVersion", "progressToken"];

fn case_variant(obj: &Map<String, Value>, known: &[&'static str]) -> Option<Invalid> {
    obj.keys().find_map(|k| {
        // Nearly every key is ASCII, which folds as ASCII does (`requestid` is
        // `requestId` to such a server too); most lengths differ from every known key's.
        let ascii = k.is_ascii();
        let variant = |want: &&&str| {
            if ascii {
                want.len() == k.len() && want.eq_ignore_ascii_case(k) && **want != k.as_str()
            } else {
                want.len() <= k.len() && folded_chars(want).eq(folded_chars(k))
            }
        };
        known.iter().find(variant).map(|of| Invalid::CaseVariantKey { key: clip(k, 64).to_owned(), of })
    })
}

impl Invalid {
    /// The JSON-RPC error code a peer should receive for this problem.
    pub fn code(&self) -> i64 {
        match self {
            Invalid::Empty
            | Invalid::NotUtf8 { .. }
            | Invalid::Syntax { .. }
            | Invalid::Truncated { .. }
            | Invalid::TooDeep { .. } => PARSE_ERROR,
            _ => INVALID_REQUEST,
        }
    }

    /// True for problems below JSON (bytes, syntax, depth, size), false when
    /// the JSON was fine but the message was not.
    pub fn is_parse_error(&self) -> bool {
        self.code() == PARSE_ERROR
    }

    /// The JSON-RPC error response for this problem (`id: null`, as JSON-RPC
    /// requires when the id could not be determined), e.g.
    /// `{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request: duplicate key ..."}}`.
    pub fn error_response(&self) -> Value {
        let msg = format!("{}: {}", standard_message(self.code()), self);
        error_response(None, self.code(), &msg, None)
    }
}

/// The outcome of [`parse_body`].
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// One message (the normal case).
    Single(Message),
    /// A JSON array of messages (JSON-RPC batch; MCP allowed it only in
    /// 2025-03-26). Each element is validated on its own.
    Batch(Vec<Result<Message, Invalid>>),
    /// Nothing usable: the whole body is rejected.
    Invalid(Invalid),
}

impl Parsed {
    /// The valid messages, in order (none for `Invalid`).
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        let (single, batch): (Option<&Message>, &[Result<Message, Invalid>]) = match self {
            Parsed::Single(m) => (Some(m), &[]),
            Parsed::Batch(items) => (None, items.as_slice()),
            Parsed::Invalid(_) => (None, &[]),
        };
        single.into_iter().chain(batch.iter().filter_map(|r| r.as_ref().ok()))
    }

    /// The first problem: the whole-body error or the first bad batch element.
    pub fn first_invalid(&self) -> Option<&Invalid> {
        match self {
            Parsed::Single(_) => None,
            Parsed::Batch(items) => items.iter().find_map(|r| r.as_ref().err()),
            Parsed::Invalid(e) => Some(e),
        }
    }

    pub fn is_batch(&self) -> bool {
        matches!(self, Parsed::Batch(_))
    }
}

/// Bounds applied by [`parse_body_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bodies longer than this are rejected before parsing ([`Invalid::TooLarge`]).
    pub max_bytes: usize,
    /// Maximum nesting of arrays/objects, counting the outer message object as 1.
    /// Clamped to 1..=100 (serde_json's own recursion guard sits at 128).
    pub max_depth: usize,
    /// Maximum elements in a batch ([`Invalid::BatchTooLarge`]).
    pub max_batch: usize,
}

impl Default for Limits {
    /// 16 MiB, depth 64, 100 batch elements.
    fn default() -> Self {
        Limits { max_bytes: 16 * 1024 * 1024, max_depth: 64, max_batch: 100 }
    }
}

/// Parse an HTTP body, SSE `data` or stdio line with [`Limits::default`].
pub fn parse_body(bytes: &[u8]) -> Parsed {
    parse_body_with(bytes, &Limits::default())
}

/// Parse with explicit limits. Never panics; never allocates more than a
/// constant factor of `bytes.len()`.
pub fn parse_body_with(bytes: &[u8], limits: &Limits) -> Parsed {
    if bytes.len() > limits.max_bytes {
        return Parsed::Invalid(Invalid::TooLarge { len: bytes.len(), limit: limits.max_bytes });
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => return Parsed::Invalid(Invalid::NotUtf8 { valid_up_to: e.valid_up_to() }),
    };
    if bytes.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
        return Parsed::Invalid(Invalid::Empty);
    }
    let value = match strict(serde_json::Deserializer::from_str(text), limits.max_depth) {
        Ok(v) => v,
        Err(e) => return Parsed::Invalid(e),
    };
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Parsed::Invalid(Invalid::EmptyBatch);
            }
            if items.len() > limits.max_batch {
                return Parsed::Invalid(Invalid::BatchTooLarge {
                    len: items.len(),
                    limit: limits.max_batch,
                });
            }
            Parsed::Batch(items.into_iter().map(message_from_value).collect())
        }
        other => match message_from_value(other) {
            Ok(m) => Parsed::Single(m),
            Err(e) => Parsed::Invalid(e),
        },
    }
}

/// Cheap pre-check before buffering a whole body: is the first significant byte
/// `[` (a batch)? Lets the proxy refuse batches early for eras that forbid them.
pub fn looks_like_batch(prefix: &[u8]) -> bool {
    prefix.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n')) == Some(&b'[')
}

/// Validate one parsed JSON value as a JSON-RPC 2.0 message.
pub fn message_from_value(value: Value) -> Result<Message, Invalid> {
    let Value::Object(mut obj) = value else {
        return Err(Invalid::NotAnObject);
    };
    message_from_object(&mut obj)
}

/// [`message_from_value`] without copying the payload: on success the message's
/// `params` or `result` is moved out of `value` (its other members stay); on error
/// `value` is untouched. [`put_back`] restores the value from the (possibly rewritten)
/// message. For the response path, where a server's answer is judged and usually passed
/// on as the bytes it came in.
pub fn take_message(value: &mut Value) -> Result<Message, Invalid> {
    match value {
        Value::Object(obj) => message_from_object(obj),
        _ => Err(Invalid::NotAnObject),
    }
}

/// Undo [`take_message`]: move the message's payload back into `value`, keeping the
/// members the message does not model. A response rewritten into an error (mcpwatch
/// blocked it) loses `result` and gains `error`.
pub fn put_back(value: &mut Value, msg: Message) {
    let Value::Object(obj) = value else {
        *value = msg.into_value();
        return;
    };
    match msg {
        Message::Request { params, .. } | Message::Notification { params, .. } => {
            if let Some(p) = params {
                obj.insert("params".into(), p);
            }
        }
        Message::Response { result, .. } => {
            obj.insert("result".into(), result);
        }
        Message::Error { code, message, data, .. } => {
            if !obj.contains_key("error") {
                obj.remove("result");
                obj.insert("error".into(), error_object(code, &message, data));
            }
        }
    }
}

/// The checks of [`message_from_value`]; members are removed only once the message is
/// known to be valid, so an error leaves `obj` as it was.
fn message_from_object(obj: &mut Map<String, Value>) -> Result<Message, Invalid> {
    if let Some(e) = case_variant(obj, &ENVELOPE_KEYS) {
        return Err(e);
    }
    if let Some(Value::Object(params)) = obj.get("params")
        && let Some(e) = case_variant(params, &PARAMS_KEYS)
    {
        return Err(e);
    }
    match obj.get("jsonrpc") {
        None => return Err(Invalid::MissingJsonrpc),
        Some(Value::String(s)) if s == "2.0" => {}
        Some(other) => return Err(Invalid::WrongJsonrpc { found: short_json(other) }),
    }
    let has_method = obj.contains_key("method");
    let has_result = obj.contains_key("result");
    let has_error = obj.contains_key("error");
    if has_method && has_result {
        return Err(Invalid::Ambiguous { first: "method", second: "result" });
    }
    if has_method && has_error {
        return Err(Invalid::Ambiguous { first: "method", second: "error" });
    }
    if has_result && has_error {
        return Err(Invalid::Ambiguous { first: "result", second: "error" });
    }

    if has_method {
        let method = match obj.get("method") {
            Some(Value::String(s)) if s.len() > MAX_METHOD_BYTES => return Err(Invalid::TooLong { what: "\"method\"", len: s.len(), limit: MAX_METHOD_BYTES }),
            Some(Value::String(s)) => s.clone(),
            _ => return Err(Invalid::MethodNotString),
        };
        match obj.get("params") {
            None | Some(Value::Object(_) | Value::Array(_)) => {}
            Some(other) => return Err(Invalid::BadParams { found: type_name(other) }),
        }
        if let Some(field) = crate::message::target_field(&method)
            && let Some(Value::String(target)) = obj.get("params").and_then(|p| p.get(field))
            && target.len() > MAX_TARGET_BYTES
        {
            let what = if field == "uri" { "\"params.uri\"" } else { "\"params.name\"" };
            return Err(Invalid::TooLong { what, len: target.len(), limit: MAX_TARGET_BYTES });
        }
        let id = match obj.get("id") {
            None => None,
            Some(v) => Some(request_id(v)?),
        };
        let params = obj.remove("params");
        return Ok(match id {
            None => Message::Notification { method, params },
            Some(id) => Message::Request { id, method, params },
        });
    }
    if has_result {
        let id = match obj.get("id") {
            None => return Err(Invalid::MissingId),
            Some(v) => request_id(v)?,
        };
        let result = obj.remove("result").unwrap_or(Value::Null);
        return Ok(Message::Response { id, result });
    }
    if has_error {
        let id = match obj.get("id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(request_id(v)?),
        };
        let Some(Value::Object(err)) = obj.get("error") else {
            return Err(Invalid::BadErrorObject);
        };
        let code = match err.get("code") {
            Some(Value::Number(n)) => n.as_i64().ok_or(Invalid::BadErrorObject)?,
            _ => return Err(Invalid::BadErrorObject),
        };
        let message = match err.get("message") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(Invalid::BadErrorObject),
        };
        // Errors are small: copied, so the server's error object stays as sent.
        let data = err.get("data").cloned();
        return Ok(Message::Error { id, code, message, data });
    }
    Err(Invalid::NotAMessage)
}

/// A JSON-RPC error response object:
/// `{"jsonrpc":"2.0","id":<id or null>,"error":{"code":..,"message":..,"data"?:..}}`.
pub fn error_response(id: Option<&Id>, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), Value::String("2.0".into()));
    m.insert("id".into(), id.map_or(Value::Null, Id::to_value));
    m.insert("error".into(), error_object(code, message, data));
    Value::Object(m)
}

fn error_object(code: i64, message: &str, data: Option<Value>) -> Value {
    let mut e = Map::new();
    e.insert("code".into(), Value::Number(code.into()));
    e.insert("message".into(), Value::String(message.to_owned()));
    if let Some(d) = data {
        e.insert("data".into(), d);
    }
    Value::Object(e)
}

fn request_id(v: &Value) -> Result<Id, Invalid> {
    match v {
        Value::Null => Err(Invalid::NullId),
        Value::String(s) if s.len() > MAX_ID_BYTES => Err(Invalid::TooLong { what: "\"id\"", len: s.len(), limit: MAX_ID_BYTES }),
        other => Id::from_value(other).ok_or(Invalid::BadId { found: type_name(other) }),
    }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// JSON text of a value, cut to 32 bytes for error messages.
fn short_json(v: &Value) -> String {
    let s = v.to_string();
    let c = clip(&s, 32);
    if c.len() < s.len() { format!("{c}...") } else { s }
}

/// The first `n` chars of `s` (all of it if shorter), borrowed: what
/// `s.chars().take(n).collect::<String>()` makes, without building it char by char.
pub fn first_chars(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(at, _)| &s[..at])
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---------------------------------------------------------------------------
// Strict JSON: serde_json's parser with a visitor that rejects duplicate keys
// and bounds depth. The reason for a rejection is passed out through a Cell so
// nothing depends on the wording of serde_json's error messages.

#[derive(Debug, Clone)]
enum Strict {
    Duplicate(String),
    TooDeep,
}

#[derive(Clone, Copy)]
struct StrictSeed<'a> {
    depth: usize,
    max_depth: usize,
    reason: &'a Cell<Option<Strict>>,
}

impl StrictSeed<'_> {
    fn fail<E: de::Error>(&self, why: Strict) -> E {
        self.reason.set(Some(why));
        E::custom("strict JSON violation")
    }

    fn nested(&self) -> Self {
        StrictSeed { depth: self.depth + 1, ..*self }
    }
}

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth >= self.max_depth {
            return Err(self.fail(Strict::TooDeep));
        }
        let inner = self.nested();
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth >= self.max_depth {
            return Err(self.fail(Strict::TooDeep));
        }
        let inner = self.nested();
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(self.fail(Strict::Duplicate(clip(&key, 64).to_owned())));
            }
            let v = map.next_value_seed(inner)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Strict RFC 8259 parse of UTF-8 JSON text into a `Value` (duplicate keys and
/// excessive depth rejected). Exposed for other pure crates that read JSON
/// from untrusted sources.
pub fn parse_strict(bytes: &[u8], max_depth: usize) -> Result<Value, Invalid> {
    // Text already known to be UTF-8 is read as `str`: serde_json then does not validate
    // every string again (32 per tools/call exchange, ~2.7 k instructions). Other bytes take
    // the byte reader, which fails on them exactly where it always did.
    match std::str::from_utf8(bytes) {
        Ok(text) => strict(serde_json::Deserializer::from_str(text), max_depth),
        Err(_) => strict(serde_json::Deserializer::from_slice(bytes), max_depth),
    }
}

fn strict<'de, R: serde_json::de::Read<'de>>(mut de: serde_json::Deserializer<R>, max_depth: usize) -> Result<Value, Invalid> {
    let max_depth = max_depth.clamp(1, 100);
    let reason = Cell::new(None);
    let seed = StrictSeed { depth: 0, max_depth, reason: &reason };
    let result = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match result {
        Ok(v) => Ok(v),
        Err(e) => Err(match reason.take() {
            Some(Strict::Duplicate(key)) => {
                Invalid::DuplicateKey { key, line: e.line(), column: e.column() }
            }
            Some(Strict::TooDeep) => Invalid::TooDeep { limit: max_depth },
            None if syntax_reason(&e) == "recursion limit exceeded" => Invalid::TooDeep { limit: max_depth },
            None => match e.classify() {
                serde_json::error::Category::Eof => {
                    Invalid::Truncated { line: e.line(), column: e.column() }
                }
                _ => Invalid::Syntax { line: e.line(), column: e.column(), reason: syntax_reason(&e) },
            },
        }),
    }
}

/// serde_json's message without its " at line L column C" suffix.
fn syntax_reason(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn single(body: &str) -> Message {
        match parse_body(body.as_bytes()) {
            Parsed::Single(m) => m,
            other => panic!("expected a single message for {body}, got {other:?}"),
        }
    }

    fn key_of(json: &str) -> IdKey {
        Id::from_value(&serde_json::from_str(json).unwrap()).unwrap().key()
    }

    /// Go's `encoding/json` (mcp-go, typed handlers of the Go SDK) matches keys
    /// regardless of case, the last one winning: a message whose envelope or params
    /// mcpwatch would read one way and such a server another is refused.
    #[test]
    fn keys_a_case_blind_server_reads_otherwise_are_refused() {
        let invalid = |body: &str| match parse_body(body.as_bytes()) {
            Parsed::Invalid(e) => e,
            other => panic!("accepted {body}: {other:?}"),
        };
        // Judged as `allowed`, run as `denied`.
        let e = invalid(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"allowed","arguments":{},"NAME":"denied"}}"#);
        assert_eq!(e, Invalid::CaseVariantKey { key: "NAME".into(), of: "name" });
        // A notification to mcpwatch, a call to Go.
        let e = invalid(r#"{"jsonrpc":"2.0","ID":7,"method":"tools/call","params":{"name":"denied"}}"#);
        assert_eq!(e, Invalid::CaseVariantKey { key: "ID".into(), of: "id" });
        assert_eq!(e.code(), INVALID_REQUEST);
        // Folded letters other than ASCII: `ſ` is `s`, the Kelvin sign is `k`.
        let e = invalid("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"x\",\"argument\u{17f}\":{}}}");
        assert_eq!(e, Invalid::CaseVariantKey { key: "argument\u{17f}".into(), of: "arguments" });
        // Lower case is a variant of a camelCase key.
        let e = invalid(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestid":3}}"#);
        assert_eq!(e, Invalid::CaseVariantKey { key: "requestid".into(), of: "requestId" });
        // In a batch too.
        let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","Arguments":{}}}]"#;
        match parse_body(batch.as_bytes()) {
            Parsed::Batch(items) => assert!(matches!(&items[0], Err(Invalid::CaseVariantKey { of: "arguments", .. })), "{items:?}"),
            other => panic!("{other:?}"),
        }
        // Deeper keys keep their spelling: argument maps may hold `PATH` and `path`.
        single(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"env","arguments":{"vars":{"PATH":"/bin","path":"x"},"Table":"a","table":"b"}}}"#);
        // camelCase keys are fine.
        single(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","clientInfo":{"name":"c","version":"1"},"capabilities":{}}}"#);
        assert_eq!(fold_key("name"), "name");
        assert_eq!(fold_key("NaMe\u{17f}"), "names");
        assert!(same_folded("\u{212a}ey", "KEY"));
    }

    /// Ids, methods and targets are kept in the records and keys of pending calls: a
    /// peer's long one is refused, not held for as long as the call waits.
    #[test]
    fn long_ids_methods_and_targets_are_refused() {
        let invalid = |body: String| match parse_body(body.as_bytes()) {
            Parsed::Single(m) => panic!("accepted: {m:?}"),
            Parsed::Invalid(e) => e,
            other => panic!("{other:?}"),
        };
        let long = |n: usize| "x".repeat(n);
        let at = single(&format!(r#"{{"jsonrpc":"2.0","id":"{}","method":"m"}}"#, long(MAX_ID_BYTES)));
        assert_eq!(at.id().map(|i| i.to_string().len()), Some(MAX_ID_BYTES + 2), "an id at the limit is taken");
        for body in [
            format!(r#"{{"jsonrpc":"2.0","id":"{}","method":"m"}}"#, long(MAX_ID_BYTES + 1)),
            format!(r#"{{"jsonrpc":"2.0","id":"{}","result":{{}}}}"#, long(MAX_ID_BYTES + 1)),
            format!(r#"{{"jsonrpc":"2.0","id":"{}","error":{{"code":1,"message":"m"}}}}"#, long(MAX_ID_BYTES + 1)),
        ] {
            assert_eq!(invalid(body), Invalid::TooLong { what: "\"id\"", len: MAX_ID_BYTES + 1, limit: MAX_ID_BYTES });
        }
        let e = invalid(format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{}"}}"#, long(MAX_METHOD_BYTES + 1)));
        assert!(matches!(e, Invalid::TooLong { what: "\"method\"", .. }), "{e:?}");
        let e = invalid(format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{}"}}}}"#, long(MAX_TARGET_BYTES + 1)));
        assert!(matches!(e, Invalid::TooLong { what: "\"params.name\"", .. }), "{e:?}");
        let e = invalid(format!(r#"{{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{{"uri":"{}"}}}}"#, long(MAX_TARGET_BYTES + 1)));
        assert!(matches!(e, Invalid::TooLong { what: "\"params.uri\"", .. }), "{e:?}");
        assert_eq!(e.code(), INVALID_REQUEST);
        // Other methods' `name` is no target: not bounded here.
        single(&format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"name":"{}"}}}}"#, long(MAX_TARGET_BYTES + 1)));
    }

    #[test]
    fn ids_a_server_answers_alike_share_a_key() {
        for same in ["5.0", "5e0", "50e-1", "5.000"] {
            assert_eq!(key_of(same), key_of("5"), "{same} is 5 to a JavaScript peer");
        }
        assert_eq!(key_of("-0"), key_of("0"));
        assert_eq!(key_of("-0.0"), key_of("0"));
        assert_eq!(key_of("9007199254740993"), key_of("9007199254740992"), "past 2^53 a double cannot tell them apart");
        assert_ne!(key_of("5"), key_of("6"));
        assert_ne!(key_of("5.5"), key_of("5"));
        assert_ne!(key_of("-5"), key_of("5"));
        assert_ne!(key_of("\"5\""), key_of("5"), "a string is never a number");
        assert_ne!(key_of("\"5.0\""), key_of("\"5\""), "strings match exactly");
        assert_eq!(key_of("18446744073709551615"), key_of("1.8446744073709552e19"));
    }

    fn invalid(body: &[u8]) -> Invalid {
        match parse_body(body) {
            Parsed::Invalid(e) => e,
            other => panic!("expected invalid for {:?}, got {other:?}", String::from_utf8_lossy(body)),
        }
    }

    #[test]
    fn request_notification_response_error() {
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#),
            Message::Request { id: Id::from(1i64), method: "tools/list".into(), params: Some(json!({})) }
        );
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Message::Notification { method: "notifications/initialized".into(), params: None }
        );
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","id":"a","result":{"tools":[]}}"#),
            Message::Response { id: Id::from("a"), result: json!({"tools": []}) }
        );
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#),
            Message::Error { id: None, code: -32700, message: "Parse error".into(), data: None }
        );
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","id":4,"error":{"code":-32602,"message":"Unknown tool","data":{"x":1}}}"#),
            Message::Error {
                id: Some(Id::from(4i64)),
                code: -32602,
                message: "Unknown tool".into(),
                data: Some(json!({"x": 1}))
            }
        );
        // Error without id at all is accepted (id could not be determined).
        assert!(matches!(
            single(r#"{"jsonrpc":"2.0","error":{"code":1,"message":"m"}}"#),
            Message::Error { id: None, .. }
        ));
    }

    #[test]
    fn ids_numbers_strings_null_and_bad() {
        let id = |body: &str| match single(body) {
            Message::Request { id, .. } => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(id(r#"{"jsonrpc":"2.0","id":0,"method":"m"}"#).to_string(), "0");
        assert_eq!(id(r#"{"jsonrpc":"2.0","id":-7,"method":"m"}"#).to_string(), "-7");
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","id":18446744073709551615,"method":"m"}"#).to_string(),
            "18446744073709551615"
        );
        assert_eq!(id(r#"{"jsonrpc":"2.0","id":1.5,"method":"m"}"#).to_string(), "1.5");
        assert_eq!(id(r#"{"jsonrpc":"2.0","id":"abc","method":"m"}"#).to_string(), r#""abc""#);
        assert_eq!(id(r#"{"jsonrpc":"2.0","id":"q\"x","method":"m"}"#).to_string(), r#""q\"x""#);
        assert_eq!(id(r#"{"jsonrpc":"2.0","id":"","method":"m"}"#).to_string(), r#""""#);
        // 1 and "1" are different ids.
        assert_ne!(Id::from(1i64), Id::from("1"));

        assert_eq!(invalid(br#"{"jsonrpc":"2.0","id":null,"method":"m"}"#), Invalid::NullId);
        assert_eq!(invalid(br#"{"jsonrpc":"2.0","id":null,"result":{}}"#), Invalid::NullId);
        assert_eq!(invalid(br#"{"jsonrpc":"2.0","id":{"x":1},"method":"m"}"#), Invalid::BadId {
            found: "an object"
        });
        assert_eq!(invalid(br#"{"jsonrpc":"2.0","id":true,"method":"m"}"#), Invalid::BadId {
            found: "a boolean"
        });
        assert_eq!(invalid(br#"{"jsonrpc":"2.0","id":[1],"result":1}"#), Invalid::BadId {
            found: "an array"
        });
        assert_eq!(invalid(br#"{"jsonrpc":"2.0","result":{}}"#), Invalid::MissingId);
    }

    #[test]
    fn envelope_errors() {
        assert_eq!(invalid(br#"{"jsonrpc":"1.0","id":1,"method":"m"}"#), Invalid::WrongJsonrpc {
            found: r#""1.0""#.into()
        });
        assert_eq!(invalid(br#"{"jsonrpc":2.0,"id":1,"method":"m"}"#), Invalid::WrongJsonrpc {
            found: "2.0".into()
        });
        assert_eq!(invalid(br#"{"jsonrpc":"1.0"}"#).code(), INVALID_REQUEST);
        assert_eq!(invalid(br#"{"id":1,"method":"m"}"#), Invalid::MissingJsonrpc);
        assert_eq!(invalid(br#"{"jsonrpc":"2.0","id":1,"method":5}"#), Invalid::MethodNotString);
        assert_eq!(invalid(br#"{"jsonrpc":"2.0","id":1,"method":"m","params":"x"}"#), Invalid::BadParams {
            found: "a string"
        });
        assert_eq!(invalid(br#"{"jsonrpc":"2.0","id":1,"method":"m","result":1}"#), Invalid::Ambiguous {
            first: "method",
            second: "result"
        });
        assert_eq!(
            invalid(br#"{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"x"}}"#),
            Invalid::Ambiguous { first: "result", second: "error" }
        );
        assert_eq!(invalid(br#"{"jsonrpc":"2.0","id":1}"#), Invalid::NotAMessage);
        assert_eq!(invalid(br#"{"jsonrpc":"2.0","id":1,"error":"boom"}"#), Invalid::BadErrorObject);
        assert_eq!(
            invalid(br#"{"jsonrpc":"2.0","id":1,"error":{"code":1.5,"message":"x"}}"#),
            Invalid::BadErrorObject
        );
        assert_eq!(invalid(br#"{"jsonrpc":"2.0","id":1,"error":{"code":1}}"#), Invalid::BadErrorObject);
        assert_eq!(invalid(b"42"), Invalid::NotAnObject);
        assert_eq!(invalid(b"\"x\""), Invalid::NotAnObject);
        // Positional params are JSON-RPC-valid (MCP-level checks live in `message`).
        assert!(matches!(
            single(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":[1]}"#),
            Message::Request { params: Some(Value::Array(_)), .. }
        ));
    }

    #[test]
    fn byte_and_syntax_errors() {
        assert_eq!(invalid(b""), Invalid::Empty);
        assert_eq!(invalid(b" \r\n\t"), Invalid::Empty);
        assert_eq!(invalid(b"{\"a\":\"\xff\"}"), Invalid::NotUtf8 { valid_up_to: 6 });
        assert_eq!(invalid(b"{\"a\":\"\xc0\xaf\"}").code(), PARSE_ERROR);
        // Truncated at various points.
        for body in [&br#"{"jsonrpc":"2.0","id":1,"#[..], br#"{"jsonrpc":"2.0","id":1,"method":"m""#, b"[", b"{"]
        {
            assert!(matches!(invalid(body), Invalid::Truncated { .. }), "{:?}", String::from_utf8_lossy(body));
        }
        match invalid(b"{\n  \"a\": tru }") {
            Invalid::Syntax { line, column, .. } => {
                assert_eq!(line, 2);
                assert!(column >= 8, "column {column}");
            }
            other => panic!("{other:?}"),
        }
        // Trailing garbage, comments, trailing commas, NaN, BOM: all syntax errors.
        for body in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"m"} {"#[..],
            br#"{"jsonrpc":"2.0",/*x*/"id":1,"method":"m"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"m",}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":NaN}}"#,
            b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\"}",
            br#"{'jsonrpc':'2.0'}"#,
        ] {
            let e = invalid(body);
            assert!(matches!(e, Invalid::Syntax { .. }), "{:?} -> {e:?}", String::from_utf8_lossy(body));
            assert_eq!(e.code(), PARSE_ERROR);
        }
    }

    #[test]
    fn duplicate_keys_rejected_at_any_depth() {
        let e = invalid(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a","name":"b"}}"#);
        assert!(matches!(&e, Invalid::DuplicateKey { key, .. } if key == "name"), "{e:?}");
        assert_eq!(e.code(), INVALID_REQUEST);
        let e = invalid(br#"{"jsonrpc":"2.0","id":1,"id":2,"method":"m"}"#);
        assert!(matches!(&e, Invalid::DuplicateKey { key, .. } if key == "id"));
        let e = invalid(br#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":[{"x":1,"y":{"z":1,"z":2}}]}}"#);
        assert!(matches!(&e, Invalid::DuplicateKey { key, .. } if key == "z"));
        // Same key in sibling objects is fine.
        single(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":{"k":1},"b":{"k":1}}}"#);
        // Escaped spelling of the same key is the same key.
        let e = invalid(br#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"name":1,"na\u006de":2}}"#);
        assert!(matches!(&e, Invalid::DuplicateKey { key, .. } if key == "name"));
    }

    #[test]
    fn depth_limit_without_stack_overflow() {
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"x":{}{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(invalid(deep.as_bytes()), Invalid::TooDeep { limit: 64 });
        let deep_obj = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{}1{}}}"#, r#"{"a":"#.repeat(5000), "}".repeat(5000));
        assert_eq!(invalid(deep_obj.as_bytes()), Invalid::TooDeep { limit: 64 });
        // Exactly at the limit is fine: message(1) + params(2) + 62 arrays = 64.
        let ok = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"x":{}{}}}}}"#, "[".repeat(62), "]".repeat(62));
        single(&ok);
        let over = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"x":{}{}}}}}"#, "[".repeat(63), "]".repeat(63));
        assert_eq!(invalid(over.as_bytes()), Invalid::TooDeep { limit: 64 });
        // Limits above serde_json's own guard are clamped, still classified as TooDeep.
        let lim = Limits { max_depth: 10_000, ..Limits::default() };
        assert_eq!(parse_body_with(deep.as_bytes(), &lim), Parsed::Invalid(Invalid::TooDeep { limit: 100 }));
    }

    #[test]
    fn batches() {
        match parse_body(br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"n"}]"#) {
            Parsed::Batch(items) => {
                assert_eq!(items.len(), 2);
                assert!(matches!(&items[0], Ok(Message::Request { method, .. }) if method == "a"));
                assert!(matches!(&items[1], Ok(Message::Notification { method, .. }) if method == "n"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(invalid(b"[]"), Invalid::EmptyBatch);
        assert_eq!(invalid(b" [ ] "), Invalid::EmptyBatch);
        let mixed = parse_body(
            br#"[{"jsonrpc":"2.0","id":1,"method":"a"},1,{"jsonrpc":"1.0","id":2,"method":"b"},{"jsonrpc":"2.0","id":null,"method":"c"},{"jsonrpc":"2.0","id":3,"result":{}}]"#,
        );
        match &mixed {
            Parsed::Batch(items) => {
                assert_eq!(items.len(), 5);
                assert!(items[0].is_ok());
                assert_eq!(items[1], Err(Invalid::NotAnObject));
                assert_eq!(items[2], Err(Invalid::WrongJsonrpc { found: r#""1.0""#.into() }));
                assert_eq!(items[3], Err(Invalid::NullId));
                assert!(matches!(items[4], Ok(Message::Response { .. })));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(mixed.messages().count(), 2);
        assert_eq!(mixed.first_invalid(), Some(&Invalid::NotAnObject));
        // A duplicate key anywhere rejects the whole batch (cannot split it safely).
        assert!(matches!(
            invalid(br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","id":2,"id":3,"method":"b"}]"#),
            Invalid::DuplicateKey { .. }
        ));
        let big = format!("[{}]", vec![r#"{"jsonrpc":"2.0","method":"n"}"#; 101].join(","));
        assert_eq!(invalid(big.as_bytes()), Invalid::BatchTooLarge { len: 101, limit: 100 });
        assert!(looks_like_batch(b"  \r\n [{"));
        assert!(!looks_like_batch(b" {\"a\":[1]}"));
        assert!(!looks_like_batch(b""));
    }

    #[test]
    fn size_limit_checked_before_parsing() {
        let lim = Limits { max_bytes: 10, ..Limits::default() };
        assert_eq!(
            parse_body_with(b"{\"jsonrpc\": \"2.0\"", &lim),
            Parsed::Invalid(Invalid::TooLarge { len: 17, limit: 10 })
        );
    }

    #[test]
    fn error_response_shape() {
        let v = error_response(Some(&Id::from("x")), INVALID_PARAMS, "Unknown tool: t", None);
        assert_eq!(v, json!({"jsonrpc":"2.0","id":"x","error":{"code":-32602,"message":"Unknown tool: t"}}));
        // Objects are maps sorted by key (serde_json without `preserve_order`).
        assert_eq!(v.to_string(), r#"{"error":{"code":-32602,"message":"Unknown tool: t"},"id":"x","jsonrpc":"2.0"}"#);
        let v = error_response(None, PARSE_ERROR, "Parse error", Some(json!({"at": 3})));
        assert_eq!(v, json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error","data":{"at":3}}}));
        let v = Invalid::DuplicateKey { key: "name".into(), line: 1, column: 2 }.error_response();
        assert_eq!(v["error"]["code"], json!(-32600));
        assert_eq!(v["id"], Value::Null);
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.starts_with("Invalid Request: duplicate key")));
        assert_eq!(Invalid::Empty.error_response()["error"]["code"], json!(-32700));
    }

    #[test]
    fn to_value_round_trips() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":1}}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#,
            r#"{"jsonrpc":"2.0","id":"r","result":{"content":[]}}"#,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"m","data":[1]}}"#,
        ] {
            let m = single(body);
            let text = m.to_json();
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), serde_json::from_str::<Value>(body).unwrap(), "{text}");
            assert_eq!(single(&m.to_json()), m);
        }
    }

    #[test]
    fn first_chars_is_chars_take_collect() {
        for s in ["", "a", "abc", "é€😀x", "ÿÿÿÿ"] {
            for n in 0..6 {
                assert_eq!(first_chars(s, n), s.chars().take(n).collect::<String>(), "{s:?} {n}");
            }
        }
    }
}
