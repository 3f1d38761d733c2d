//! Table test over tests/fixtures/threats.jsonl.
//!
//! Every `protocol_abuse` case is either checked here (it is a parsing or
//! protocol-validation question this crate answers) or listed in
//! `NEEDS_PROXY` with the reason; a new case in the file that is in neither
//! list fails the test so someone decides where it belongs. Parsing-level
//! `resource_exhaustion` cases are checked too. Finally every input of every
//! case is fed through the parsers and accessors to show none of them panics.

use mcpwatch_mcp::jsonrpc::{INVALID_PARAMS, INVALID_REQUEST, Invalid, PARSE_ERROR, looks_like_batch};
use mcpwatch_mcp::message::methods;
use mcpwatch_mcp::session::{Era, HeaderSignals, check_request};
use mcpwatch_mcp::sse::SseParser;
use mcpwatch_mcp::{Parsed, parse_body, server_info};
use serde_json::Value;

const CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/threats.jsonl");

/// protocol_abuse cases that are not parsing questions, and who handles them.
const NEEDS_PROXY: &[(&str, &str)] = &[
    ("PA-005", "HTTP/1.1 framing: Content-Length + Transfer-Encoding -> 400 and close (hyper/proxy)"),
    ("PA-007", "HTTP/1.1 framing: conflicting duplicate Content-Length -> 400 (hyper/proxy)"),
    ("PA-013", "unknown tool vs the pinned tools/list -> -32602 'Unknown tool' (proxy + inventory/policy)"),
];

fn load() -> Vec<Value> {
    let text = std::fs::read_to_string(CASES).unwrap_or_else(|e| panic!("cannot read {CASES}: {e}"));
    let cases: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{CASES} line {}: {e}", i + 1)))
        .collect();
    assert!(cases.len() > 10, "suspiciously few cases in {CASES}");
    cases
}

fn case<'a>(cases: &'a [Value], id: &str) -> &'a Value {
    cases.iter().find(|c| c["id"] == id).unwrap_or_else(|| panic!("case {id} missing from {CASES}"))
}

/// Split a raw HTTP/1.1 request into lower-cased headers and body.
fn http_request(raw: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP request has a header/body separator");
    let headers = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (headers, body.as_bytes().to_vec())
}

fn signals(headers: &[(String, String)]) -> HeaderSignals<'_> {
    HeaderSignals::from_lookup(|n| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()))
}

/// Decode a Python bytes literal `b'...'` (escapes \xNN \\ \' \" \n \r \t \0).
fn python_bytes(lit: &str) -> Vec<u8> {
    let inner = lit
        .strip_prefix("b'")
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| lit.strip_prefix("b\"").and_then(|s| s.strip_suffix('"')))
        .unwrap_or_else(|| panic!("not a bytes literal: {lit}"));
    let b = inner.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'x' => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).expect("hex escape");
                    out.push(u8::from_str_radix(hex, 16).expect("hex digits"));
                    i += 4;
                    continue;
                }
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'0' => out.push(0),
                other => out.push(other),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn expected_code(c: &Value) -> i64 {
    c["expected"]["error"]["jsonrpc"]["code"].as_i64().unwrap_or_else(|| panic!("{}: no expected code", c["id"]))
}

#[test]
fn protocol_abuse_cases() {
    let cases = load();
    let mut checked = Vec::new();
    for c in cases.iter().filter(|c| c["category"] == "protocol_abuse") {
        let id = c["id"].as_str().expect("case id");
        let input = &c["input"];
        match id {
            // Batch smuggling under a 2025-06-18 header: whole request refused.
            "PA-001" => {
                let (headers, body) = http_request(input.as_str().expect("http text"));
                let parsed = parse_body(&body);
                assert!(looks_like_batch(&body));
                assert!(matches!(parsed, Parsed::Batch(ref items) if items.len() == 2));
                let r = check_request(&signals(&headers), &parsed, None).expect_err("batch must be refused");
                let want = &c["expected"]["error"];
                assert_eq!(i64::from(r.http_status), want["http_status"].as_i64().unwrap_or(0), "{id}");
                assert_eq!(r.code, want["jsonrpc"]["code"].as_i64().unwrap_or(0), "{id}");
                assert_eq!(r.error_response()["id"], Value::Null, "{id}");
                assert!(r.message.starts_with(want["jsonrpc"]["message"].as_str().unwrap_or("?")), "{id}: {}", r.message);
                // Also refused inside a session that negotiated 2025-06-18 without a header.
                assert!(check_request(&HeaderSignals::default(), &parsed, Some(&Era::for_version("2025-06-18"))).is_err());
            }
            // Duplicate key: never evaluate one copy while the server reads another.
            "PA-002" => {
                let parsed = parse_body(input.as_str().expect("body").as_bytes());
                let Parsed::Invalid(e) = &parsed else { panic!("{id}: accepted {parsed:?}") };
                assert!(matches!(e, Invalid::DuplicateKey { key, .. } if key == "name"), "{id}: {e:?}");
                assert_eq!(e.code(), expected_code(c));
                let msg = e.error_response()["error"]["message"].as_str().unwrap_or("").to_owned();
                let want = c["expected"]["error"]["jsonrpc"]["message"].as_str().unwrap_or("?");
                assert!(msg.starts_with(want), "{id}: {msg:?} vs {want:?}");
            }
            // Invalid UTF-8 (overlong '/', stray 0xFF): parse error, no lossy decoding.
            "PA-004" => {
                let bytes = python_bytes(input["bytes"].as_str().expect("bytes literal"));
                assert!(bytes.windows(2).any(|w| w == [0xC0, 0xAF]), "{id}: decoder lost the overlong bytes");
                let parsed = parse_body(&bytes);
                let Parsed::Invalid(e) = &parsed else { panic!("{id}: accepted {parsed:?}") };
                assert!(matches!(e, Invalid::NotUtf8 { .. }), "{id}: {e:?}");
                assert_eq!(e.code(), expected_code(c));
                assert!(e.error_response()["error"]["message"].as_str().unwrap_or("").starts_with("Parse error"));
                // Same bytes inside an SSE event are flagged, not silently repaired.
                let mut sse = SseParser::default();
                let mut ev = b"data: ".to_vec();
                ev.extend_from_slice(&bytes);
                ev.extend_from_slice(b"\n\n");
                let evs = sse.push(&ev);
                assert!(evs.len() == 1 && evs[0].invalid_utf8, "{id}");
            }
            // Malformed envelopes: -32600 x3, then a non-string tool name -> -32602.
            "PA-008" => {
                let inputs = input.as_array().expect("list of bodies");
                let codes = c["expected"]["error"]["jsonrpc"].as_array().expect("list of codes");
                assert_eq!(inputs.len(), codes.len(), "{id}");
                for (body, want) in inputs.iter().zip(codes) {
                    let body = body.as_str().expect("body");
                    let parsed = parse_body(body.as_bytes());
                    let r = check_request(&HeaderSignals::default(), &parsed, None)
                        .expect_err(&format!("{id}: accepted {body}"));
                    assert_eq!(Some(r.code), want["code"].as_i64(), "{id}: {body} -> {r}");
                    if r.code == INVALID_PARAMS {
                        // The name is an array: it must not be usable as a name at all.
                        let Parsed::Single(m) = &parsed else { panic!("{id}") };
                        assert_eq!(m.target_name(), None);
                        assert_eq!(m.method(), Some(methods::TOOLS_CALL));
                    }
                }
            }
            // Unknown MCP-Protocol-Version: 400, do not guess.
            "PA-010" => {
                let (headers, body) = http_request(input.as_str().expect("http text"));
                let parsed = parse_body(&body);
                assert!(matches!(parsed, Parsed::Single(_)), "{id}: body itself is fine");
                let r = check_request(&signals(&headers), &parsed, None).expect_err("unknown version");
                assert_eq!(Some(i64::from(r.http_status)), c["expected"]["error"]["http_status"].as_i64(), "{id}");
                assert_eq!(r.code, INVALID_REQUEST);
            }
            // JSON5-isms: comments, trailing commas, NaN.
            "PA-011" => {
                for body in input.as_array().expect("list") {
                    let parsed = parse_body(body.as_str().expect("body").as_bytes());
                    let Parsed::Invalid(e) = &parsed else { panic!("{id}: accepted {body}") };
                    assert_eq!(e.code(), expected_code(c), "{id}: {body} -> {e}");
                    assert_eq!(e.code(), PARSE_ERROR);
                }
            }
            other => {
                let reason = NEEDS_PROXY.iter().find(|(pid, _)| *pid == other).map(|(_, r)| *r);
                assert!(reason.is_some(), "new protocol_abuse case {other}: check it here or list it in NEEDS_PROXY");
                if other == "PA-013" {
                    // What this crate contributes: the exact name reaches policy, unmangled.
                    let parsed = parse_body(input.as_str().expect("body").as_bytes());
                    let Parsed::Single(m) = &parsed else { panic!("{other}: {parsed:?}") };
                    assert_eq!(m.target_name(), Some("__proto__"));
                    assert_eq!(m.validate_params(), Ok(()));
                    assert_eq!(expected_code(c), INVALID_PARAMS);
                } else if let Some(raw) = input.as_str() {
                    // Whatever hyper hands over must still never parse as a valid message.
                    let parsed = parse_body(raw.as_bytes());
                    assert!(matches!(parsed, Parsed::Invalid(_)), "{other}: raw HTTP parsed as JSON-RPC");
                }
            }
        }
        checked.push(id.to_owned());
    }
    // The file still has the cases this test was written against.
    for id in ["PA-001", "PA-002", "PA-004", "PA-008", "PA-010", "PA-011"] {
        assert!(checked.iter().any(|c| c == id), "{id} no longer in {CASES}");
    }
}

#[test]
fn resource_exhaustion_parsing_cases() {
    let cases = load();

    // RE-001: 100,000 nested arrays -> parse error, no stack overflow.
    let c = case(&cases, "RE-001");
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"x":{}{}}}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    // The case's "bytes" (200081) is slightly off its own python expression
    // (200090, which this generator reproduces); only check the order of size.
    let stated = c["input"]["bytes"].as_u64().unwrap_or(0);
    assert!((deep.len() as u64).abs_diff(stated) < 100, "generator drifted from RE-001: {} vs {stated}", deep.len());
    let Parsed::Invalid(e) = parse_body(deep.as_bytes()) else { panic!("RE-001 accepted") };
    assert!(matches!(e, Invalid::TooDeep { .. }), "{e:?}");
    assert_eq!(e.code(), expected_code(c));
    // Objects too, and inside a server->client result.
    let deep_obj = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{}1{}}}"#, r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
    assert!(matches!(parse_body(deep_obj.as_bytes()), Parsed::Invalid(Invalid::TooDeep { .. })));

    // RE-002: 100,000-element batch -> refused early (first byte) and by the batch bound.
    let _ = case(&cases, "RE-002");
    let elems: Vec<String> = (0..100_000)
        .map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"search","arguments":{{"q":"a"}}}}}}"#))
        .collect();
    let batch = format!("[{}]", elems.join(","));
    assert!(looks_like_batch(&batch.as_bytes()[..16]));
    let parsed = parse_body(batch.as_bytes());
    assert!(matches!(parsed, Parsed::Invalid(Invalid::BatchTooLarge { len: 100_000, .. })), "{:?}", parsed.first_invalid());
    assert_eq!(check_request(&HeaderSignals::default(), &parsed, None).map_err(|r| r.http_status), Err(400));

    // RE-005: never-ending SSE line -> bounded, reported while the line is still open.
    let _ = case(&cases, "RE-005");
    let limit = 1024 * 1024;
    let mut p = SseParser::new(limit);
    let mut evs = p.push(b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"");
    let chunk = vec![b'A'; 64 * 1024];
    let mut pushed = 0usize;
    while pushed < 16 * limit {
        evs.extend(p.push(&chunk));
        pushed += chunk.len();
        assert!(p.buffered() <= limit, "SSE buffer grew past its bound");
    }
    assert_eq!(evs.len(), 1, "exactly one oversized report");
    assert!(evs[0].oversized && evs[0].data.is_empty());
    assert_eq!(evs[0].event_type(), "message");

    // RE-008: 50 MB argument -> refused by size before parsing.
    let c = case(&cases, "RE-008");
    let text = "A".repeat(50_000_000);
    let body = format!(r#"{{"jsonrpc":"2.0","id":16,"method":"tools/call","params":{{"name":"summarize","arguments":{{"text":"{text}"}}}}}}"#);
    let Parsed::Invalid(e) = parse_body(body.as_bytes()) else { panic!("RE-008 accepted") };
    assert!(matches!(e, Invalid::TooLarge { .. }), "{e:?}");
    assert_eq!(e.code(), INVALID_REQUEST, "{}", c["expected"]["error"]["stdio"]);
}

/// Every case input (messages, tool lists, raw HTTP, payload strings) through
/// every parser and accessor: nothing may panic, whatever the category.
#[test]
fn no_case_input_panics_any_parser() {
    let cases = load();
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    fn collect(v: &Value, out: &mut Vec<Vec<u8>>) {
        match v {
            Value::String(s) => {
                out.push(s.as_bytes().to_vec());
                if s.starts_with("b'") {
                    out.push(python_bytes(s));
                }
            }
            Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
            Value::Object(o) => {
                out.push(v.to_string().into_bytes());
                o.values().for_each(|x| collect(x, out));
            }
            _ => {}
        }
    }
    for c in &cases {
        collect(&c["input"], &mut inputs);
    }
    assert!(inputs.len() >= cases.len());
    let mut valid = 0;
    for bytes in &inputs {
        let parsed = parse_body(bytes);
        for m in parsed.messages() {
            valid += 1;
            let _ = (m.method(), m.id().map(ToString::to_string), m.target_name(), m.arguments());
            let key = mcpwatch_mcp::keyed::HashKey::new(b"k");
            let _ = (m.args_hash(&key), m.result_hash(&key), m.validate_params(), m.declared_protocol_version(), m.to_json());
            if let Some(r) = m.result() {
                let _ = (server_info::server_info(r), server_info::tools_list(r));
            }
        }
        let _ = check_request(&HeaderSignals::default(), &parsed, None);
        // As an SSE stream, whole and byte by byte: same events.
        let mut whole = SseParser::new(4096);
        let mut a = whole.push(bytes);
        a.extend(whole.finish());
        let mut bytewise = SseParser::new(4096);
        let mut b = Vec::new();
        for byte in bytes {
            b.extend(bytewise.push(std::slice::from_ref(byte)));
        }
        b.extend(bytewise.finish());
        assert_eq!(a, b);
        if let Ok(s) = std::str::from_utf8(bytes) {
            let _ = mcpwatch_mcp::legacy::parse_endpoint(s, "/sse");
        }
    }
    assert!(valid > 20, "expected many case inputs to be valid JSON-RPC, got {valid}");
}
