//! Fuzz target: JSON-RPC parsing of MCP bodies (`mcpwatch_mcp::jsonrpc`), the messages'
//! accessors the proxy decides on, and `validate_params`.
//!
//! Properties:
//! - no input panics the parser or any accessor;
//! - what the proxy forwards means what it inspected: every accepted message (single or
//!   batch element) re-serialised with `to_json` parses back to the same message, and
//!   its target name, arguments hash and params verdict are unchanged;
//! - batch and single paths agree: a batch element's message is what the same object
//!   parses to on its own;
//! - rejection codes are JSON-RPC's (-32700 below JSON, -32600 above);
//! - the depth limit holds for everything accepted;
//! - the cheap batch pre-check agrees with the parse;
//! - `integrity::body_shape` (with its lenient re-reads: other encodings, U+FFFD, lone
//!   surrogates) never panics, and calls what parses with an MCP method MCP.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpwatch_mcp::jsonrpc::{Limits, Message, Parsed, looks_like_batch, parse_body_with};
use mcpwatch_mcp::keyed::HashKey;
use serde_json::Value;

/// Small limits so the fuzzer reaches the depth and batch-size edges.
const LIMITS: Limits = Limits { max_bytes: 1 << 16, max_depth: 8, max_batch: 4 };

fuzz_target!(|data: &[u8]| {
    let shape = mcpwatch_mcp::integrity::body_shape(data);
    let parsed = parse_body_with(data, &LIMITS);
    if parsed.messages().any(|m| m.method().is_some_and(mcpwatch_mcp::integrity::is_mcp_method)) {
        assert!(shape.is_mcp(), "{shape:?} for a body with an MCP method");
    }
    if let Some(invalid) = parsed.first_invalid() {
        assert!(matches!(invalid.code(), -32700 | -32600), "{invalid:?} has code {}", invalid.code());
        let _ = invalid.error_response().to_string();
    }
    match &parsed {
        Parsed::Single(m) => check_message(m),
        Parsed::Batch(items) => {
            assert!(looks_like_batch(data), "batch parsed from a body not starting with [: {data:?}");
            assert!(!items.is_empty() && items.len() <= LIMITS.max_batch);
            for m in items.iter().flatten() {
                check_message(m);
            }
        }
        Parsed::Invalid(_) => {}
    }
    if matches!(parsed, Parsed::Single(_)) {
        assert!(!looks_like_batch(data), "single message from a body starting with [");
    }
});

fn check_message(m: &Message) {
    let value = m.to_value();
    assert!(depth(&value) <= LIMITS.max_depth, "accepted {} levels deep", depth(&value));
    let text = m.to_json();
    let again = match parse_body_with(text.as_bytes(), &Limits { max_bytes: usize::MAX, ..LIMITS }) {
        Parsed::Single(again) => again,
        other => panic!("{text} re-parses as {other:?}, not as the message {m:?}"),
    };
    assert_eq!(&again, m, "{text} re-parses to another message");
    assert_eq!(again.method(), m.method());
    assert_eq!(again.id(), m.id());
    assert_eq!(again.target_name(), m.target_name(), "{text}");
    let key = HashKey::new(b"fuzz");
    assert_eq!(again.args_hash(&key), m.args_hash(&key), "{text}");
    assert_eq!(again.result_hash(&key), m.result_hash(&key), "{text}");
    assert_eq!(again.validate_params().is_ok(), m.validate_params().is_ok(), "{text}");
    assert_eq!(again.declared_protocol_version(), m.declared_protocol_version());
    let _ = (m.arguments(), m.meta(), m.error_code(), m.is_tools_call(), m.is_initialize());
    if let Some(id) = m.id() {
        let _ = id.to_string();
    }
}

/// Nesting depth of arrays and objects (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
