//! MCP-level accessors on [`Message`]: which method, which tool/resource/prompt,
//! which arguments, and stable hashes of them.
//!
//! Why this exists: policy, audit and inventory all ask the same questions of a
//! message ("which tool is called, with what?") and must get the same answer.
//! Accessors never coerce types: a tool name that is not a JSON string is no
//! name at all (`None`), never its stringified form (`["delete_file"]` must not
//! match an allow-list entry), and [`Message::validate_params`] reports it as
//! an invalid-params error (-32602).

use serde_json::{Map, Value};

use crate::keyed::HashKey;
use crate::jsonrpc::{INVALID_PARAMS, Id, Message, type_name};

/// How many strings within strings a server may decode as JSON: the Python SDK `json.loads`
/// a string argument for any parameter not typed `str` (`pre_parse_json`), and what it
/// decodes may hold such a string again. The policy's argument conditions and the
/// detectors read that deep, so what a rule sees, the detectors see.
pub const EMBEDDED_JSON_DEPTH: usize = 3;

/// The one-byte test before any decoding: the trimmed string starts like a JSON array or
/// object (ordinary strings cost nothing more).
pub fn may_embed_json(s: &str) -> bool {
    matches!(s.trim_start().as_bytes().first(), Some(b'[' | b'{'))
}

/// `s` as the JSON array or object a server that decodes string arguments reads it as, if
/// it is one (trimmed, parsed with serde_json; a bare number or string stays text, as
/// `pre_parse_json` leaves it).
pub fn embedded_json(s: &str) -> Option<Value> {
    if !may_embed_json(s) {
        return None;
    }
    serde_json::from_str::<Value>(s.trim()).ok().filter(|v| v.is_array() || v.is_object())
}

/// Method names the proxy cares about.
pub mod methods {
    pub const INITIALIZE: &str = "initialize";
    pub const INITIALIZED: &str = "notifications/initialized";
    /// 2026-07-28: stateless capability discovery, sent before anything else.
    pub const SERVER_DISCOVER: &str = "server/discover";
    pub const PING: &str = "ping";
    pub const TOOLS_LIST: &str = "tools/list";
    pub const TOOLS_CALL: &str = "tools/call";
    pub const RESOURCES_LIST: &str = "resources/list";
    pub const RESOURCES_TEMPLATES_LIST: &str = "resources/templates/list";
    pub const RESOURCES_READ: &str = "resources/read";
    pub const RESOURCES_SUBSCRIBE: &str = "resources/subscribe";
    pub const RESOURCES_UNSUBSCRIBE: &str = "resources/unsubscribe";
    pub const PROMPTS_LIST: &str = "prompts/list";
    pub const PROMPTS_GET: &str = "prompts/get";
    pub const COMPLETION_COMPLETE: &str = "completion/complete";
    /// 2026-07-28: long-lived POST stream replacing resources/subscribe and GET.
    pub const SUBSCRIPTIONS_LISTEN: &str = "subscriptions/listen";
    pub const CANCELLED: &str = "notifications/cancelled";
    pub const PROGRESS: &str = "notifications/progress";
    pub const TOOLS_LIST_CHANGED: &str = "notifications/tools/list_changed";
}

/// `_meta` keys of the 2026-07-28 revision (every request carries them).
pub mod meta {
    pub const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
    pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
    pub const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
}

/// Why a request's `params` do not fit the MCP schema for its method.
/// Always answered with JSON-RPC code -32602 ([`ParamsError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("params must be an object, got {found}")]
    NotAnObject { found: &'static str },
    #[error("params.{field} is required")]
    Missing { field: &'static str },
    #[error("params.{field} must be {expected}, got {found}")]
    WrongType { field: &'static str, expected: &'static str, found: &'static str },
}

impl ParamsError {
    pub fn code(&self) -> i64 {
        INVALID_PARAMS
    }
}

impl Message {
    /// The method of a request or notification.
    pub fn method(&self) -> Option<&str> {
        match self {
            Message::Request { method, .. } | Message::Notification { method, .. } => Some(method),
            _ => None,
        }
    }

    /// The id of a request, response or error (errors may have none).
    pub fn id(&self) -> Option<&Id> {
        match self {
            Message::Request { id, .. } | Message::Response { id, .. } => Some(id),
            Message::Error { id, .. } => id.as_ref(),
            Message::Notification { .. } => None,
        }
    }

    /// The `params` of a request or notification.
    pub fn params(&self) -> Option<&Value> {
        match self {
            Message::Request { params, .. } | Message::Notification { params, .. } => params.as_ref(),
            _ => None,
        }
    }

    /// The `params` of a request or notification, to rewrite in place (redaction).
    pub fn params_mut(&mut self) -> Option<&mut Value> {
        match self {
            Message::Request { params, .. } | Message::Notification { params, .. } => params.as_mut(),
            _ => None,
        }
    }

    /// The `result` of a successful response.
    pub fn result(&self) -> Option<&Value> {
        match self {
            Message::Response { result, .. } => Some(result),
            _ => None,
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(self, Message::Request { .. })
    }
    pub fn is_notification(&self) -> bool {
        matches!(self, Message::Notification { .. })
    }
    /// A response or an error response.
    pub fn is_reply(&self) -> bool {
        matches!(self, Message::Response { .. } | Message::Error { .. })
    }
    pub fn is_initialize(&self) -> bool {
        self.is_request() && self.method() == Some(methods::INITIALIZE)
    }
    pub fn is_initialized_notification(&self) -> bool {
        self.is_notification() && self.method() == Some(methods::INITIALIZED)
    }
    pub fn is_discover(&self) -> bool {
        self.is_request() && self.method() == Some(methods::SERVER_DISCOVER)
    }
    pub fn is_tools_call(&self) -> bool {
        self.is_request() && self.method() == Some(methods::TOOLS_CALL)
    }

    /// What the call is about, as a JSON string only (never stringified):
    /// `tools/call` and `prompts/get` -> `params.name`; `resources/read`,
    /// `resources/subscribe`, `resources/unsubscribe` -> `params.uri`.
    /// This is also what the 2026-07-28 `Mcp-Name` header must carry.
    pub fn target_name(&self) -> Option<&str> {
        let field = target_field(self.method()?)?;
        self.params_object()?.get(field)?.as_str()
    }

    /// `params.arguments` of `tools/call` and `prompts/get`.
    pub fn arguments(&self) -> Option<&Value> {
        match self.method()? {
            methods::TOOLS_CALL | methods::PROMPTS_GET => self.params_object()?.get("arguments"),
            _ => None,
        }
    }

    /// `params._meta`, when it is an object.
    pub fn meta(&self) -> Option<&Map<String, Value>> {
        self.params_object()?.get("_meta")?.as_object()
    }

    /// Keyed hash (HMAC-SHA256 under the host's `key`, hex) of the canonical JSON of
    /// [`Message::arguments`], or of the whole `params` when there are no arguments
    /// (`null` when there are no params). `None` for responses and errors. Keyed, so
    /// a short secret in the arguments cannot be recovered by brute force from the
    /// audit log; stable for one key, so calls still correlate.
    pub fn args_hash(&self, key: &HashKey) -> Option<String> {
        if !matches!(self, Message::Request { .. } | Message::Notification { .. }) {
            return None;
        }
        let v = self.arguments().or(self.params()).unwrap_or(&Value::Null);
        Some(key.hash_json(v))
    }

    /// Keyed hash (as [`Message::args_hash`]) of the canonical JSON of `result`
    /// (responses only).
    pub fn result_hash(&self, key: &HashKey) -> Option<String> {
        self.result().map(|r| key.hash_json(r))
    }

    /// The protocol version this message declares, if any:
    /// `initialize` request `params.protocolVersion`; any 2026-07-28 request's
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`; an
    /// `initialize` response's `result.protocolVersion`.
    pub fn declared_protocol_version(&self) -> Option<&str> {
        match self {
            Message::Request { .. } | Message::Notification { .. } => {
                if let Some(v) = self.meta().and_then(|m| m.get(meta::PROTOCOL_VERSION)).and_then(Value::as_str) {
                    return Some(v);
                }
                if self.is_initialize() {
                    return self.params_object()?.get("protocolVersion")?.as_str();
                }
                None
            }
            Message::Response { result, .. } => result.get("protocolVersion")?.as_str(),
            Message::Error { .. } => None,
        }
    }

    /// `(code, message)` of an error response.
    pub fn error_code(&self) -> Option<(i64, &str)> {
        match self {
            Message::Error { code, message, .. } => Some((*code, message)),
            _ => None,
        }
    }

    /// Check `params` against the MCP schema for the fields the proxy relies on:
    /// params (when present) is an object; `_meta` is an object; `tools/call`
    /// and `prompts/get` have a string `name` and an object `arguments` (if
    /// any); `resources/read|subscribe|unsubscribe` have a string `uri`;
    /// `initialize` has a string `protocolVersion`. Responses always pass.
    pub fn validate_params(&self) -> Result<(), ParamsError> {
        let Some(method) = self.method() else {
            return Ok(());
        };
        let params = match self.params() {
            None => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => return Err(ParamsError::NotAnObject { found: type_name(other) }),
        };
        if let Some(m) = params.and_then(|p| p.get("_meta"))
            && !m.is_object() {
                return Err(ParamsError::WrongType { field: "_meta", expected: "an object", found: type_name(m) });
            }
        let require_string = |field: &'static str| -> Result<(), ParamsError> {
            match params.and_then(|p| p.get(field)) {
                None => Err(ParamsError::Missing { field }),
                Some(Value::String(_)) => Ok(()),
                Some(other) => Err(ParamsError::WrongType { field, expected: "a string", found: type_name(other) }),
            }
        };
        match method {
            methods::TOOLS_CALL | methods::PROMPTS_GET => {
                require_string("name")?;
                match params.and_then(|p| p.get("arguments")) {
                    None | Some(Value::Object(_)) => Ok(()),
                    Some(other) => Err(ParamsError::WrongType {
                        field: "arguments",
                        expected: "an object",
                        found: type_name(other),
                    }),
                }
            }
            methods::RESOURCES_READ | methods::RESOURCES_SUBSCRIBE | methods::RESOURCES_UNSUBSCRIBE => {
                require_string("uri")
            }
            methods::INITIALIZE if self.is_request() => require_string("protocolVersion"),
            _ => Ok(()),
        }
    }

    fn params_object(&self) -> Option<&Map<String, Value>> {
        self.params()?.as_object()
    }
}

/// The params field naming the target of `method` (`name` or `uri`).
pub fn target_field(method: &str) -> Option<&'static str> {
    match method {
        methods::TOOLS_CALL | methods::PROMPTS_GET => Some("name"),
        methods::RESOURCES_READ | methods::RESOURCES_SUBSCRIBE | methods::RESOURCES_UNSUBSCRIBE => Some("uri"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::sha256_hex;
    use crate::keyed::HashKey;

    fn key() -> HashKey {
        HashKey::new(b"test key")
    }

    fn sha256_hex_keyed(b: &[u8]) -> String {
        key().hex_mac(b)
    }
    use crate::jsonrpc::{Parsed, parse_body};

    fn msg(body: &str) -> Message {
        match parse_body(body.as_bytes()) {
            Parsed::Single(m) => m,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn accessors_on_tools_call() {
        let m = msg(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/a","n":1},"_meta":{"progressToken":1}}}"#);
        assert_eq!(m.method(), Some("tools/call"));
        assert_eq!(m.id().map(ToString::to_string).as_deref(), Some("3"));
        assert_eq!(m.target_name(), Some("read_file"));
        assert_eq!(m.arguments(), Some(&serde_json::json!({"path": "/a", "n": 1})));
        assert!(m.is_tools_call() && m.is_request() && !m.is_reply());
        assert_eq!(m.args_hash(&key()), Some(sha256_hex_keyed(br#"{"n":1,"path":"/a"}"#)));
        assert_eq!(m.result_hash(&key()), None);
        assert!(m.meta().is_some_and(|x| x.contains_key("progressToken")));
        assert_eq!(m.validate_params(), Ok(()));
    }

    #[test]
    fn args_hash_ignores_key_order_and_falls_back_to_params() {
        let a = msg(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":1,"b":[1,2]}}}"#);
        let b = msg(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"arguments":{"b":[1,2],"a":1},"name":"t"}}"#);
        assert_eq!(a.args_hash(&key()), b.args_hash(&key()));
        let c = msg(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"arguments":{"b":[2,1],"a":1},"name":"t"}}"#);
        assert_ne!(a.args_hash(&key()), c.args_hash(&key()));
        let r = msg(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}"#);
        assert_eq!(r.args_hash(&key()), Some(sha256_hex_keyed(br#"{"uri":"file:///x"}"#)));
        assert_eq!(r.target_name(), Some("file:///x"));
        assert_eq!(r.arguments(), None);
        let n = msg(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        assert_eq!(n.args_hash(&key()), Some(sha256_hex_keyed(b"null")));
        let resp = msg(r#"{"jsonrpc":"2.0","id":1,"result":{"b":1,"a":2}}"#);
        assert_eq!(resp.args_hash(&key()), None);
        assert_eq!(resp.result_hash(&key()), Some(sha256_hex_keyed(br#"{"a":2,"b":1}"#)));
    }

    #[test]
    fn args_hash_is_keyed_not_plain_sha256() {
        // A 9-digit SSN: with a plain sha256 the hash alone gives it away in seconds.
        let m = msg(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"ssn":"123456789"}}}"#);
        let plain = sha256_hex(br#"{"ssn":"123456789"}"#);
        let a = m.args_hash(&HashKey::new(b"host a")).unwrap();
        let b = m.args_hash(&HashKey::new(b"host b")).unwrap();
        assert_ne!(a, plain);
        assert_ne!(a, b, "another host's key gives another hash");
        assert_eq!(m.args_hash(&HashKey::new(b"host a")).unwrap(), a, "stable for one key");
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn targets_of_each_method() {
        let t = |body: &str| msg(body).target_name().map(str::to_owned);
        assert_eq!(t(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p","arguments":{"x":"1"}}}"#).as_deref(), Some("p"));
        assert_eq!(t(r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"u"}}"#).as_deref(), Some("u"));
        assert_eq!(t(r#"{"jsonrpc":"2.0","id":1,"method":"resources/unsubscribe","params":{"uri":"u"}}"#).as_deref(), Some("u"));
        assert_eq!(t(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"name":"x"}}"#), None);
        // Non-string names are not names.
        assert_eq!(t(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["delete_file"]}}"#), None);
        assert_eq!(t(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#), None);
        assert_eq!(t(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#), None);
    }

    #[test]
    fn validate_params_cases() {
        let v = |body: &str| msg(body).validate_params();
        assert_eq!(
            v(r#"{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":["delete_file"],"arguments":{}}}"#),
            Err(ParamsError::WrongType { field: "name", expected: "a string", found: "an array" })
        );
        assert_eq!(v(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#), Err(ParamsError::Missing { field: "name" }));
        assert_eq!(v(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#), Err(ParamsError::Missing { field: "name" }));
        assert_eq!(
            v(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":[1]}}"#),
            Err(ParamsError::WrongType { field: "arguments", expected: "an object", found: "an array" })
        );
        assert_eq!(
            v(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":[1]}"#),
            Err(ParamsError::NotAnObject { found: "an array" })
        );
        assert_eq!(
            v(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":1}}"#),
            Err(ParamsError::WrongType { field: "_meta", expected: "an object", found: "a number" })
        );
        assert_eq!(v(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":null}}"#),
            Err(ParamsError::WrongType { field: "uri", expected: "a string", found: "null" }));
        assert_eq!(v(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"capabilities":{}}}"#),
            Err(ParamsError::Missing { field: "protocolVersion" }));
        assert_eq!(v(r#"{"jsonrpc":"2.0","id":1,"method":"vendor/x","params":{"name":1}}"#), Ok(()));
        assert_eq!(v(r#"{"jsonrpc":"2.0","id":1,"result":1}"#), Ok(()));
        assert_eq!(ParamsError::Missing { field: "name" }.code(), -32602);
    }

    #[test]
    fn lifecycle_predicates_and_versions() {
        let init = msg(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#);
        assert!(init.is_initialize() && !init.is_discover());
        assert_eq!(init.declared_protocol_version(), Some("2025-06-18"));
        let disc = msg(r#"{"jsonrpc":"2.0","id":"d","method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#);
        assert!(disc.is_discover() && !disc.is_initialize());
        assert_eq!(disc.declared_protocol_version(), Some("2026-07-28"));
        let ack = msg(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert!(ack.is_initialized_notification());
        assert_eq!(ack.declared_protocol_version(), None);
        let resp = msg(r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-03-26"}}"#);
        assert_eq!(resp.declared_protocol_version(), Some("2025-03-26"));
        let err = msg(r#"{"jsonrpc":"2.0","id":0,"error":{"code":-32601,"message":"Method not found"}}"#);
        assert_eq!(err.error_code(), Some((-32601, "Method not found")));
        assert_eq!(err.id(), Some(&Id::from(0i64)));
        assert!(err.is_reply());
    }
}
